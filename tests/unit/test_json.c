/* test_json.c - core/json.c around cJSON 1.7.15's traps: escaped NULs, trailing garbage,
 * integers past 2^53, deep nesting; and the typed getters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_json.h"
#include "ax_test.h"

/* Parses a copy of text (ax_json_parse writes into its input). */
static cJSON *parse(const char *text, struct ax_error *err)
{
    size_t n = strlen(text);
    char *copy = malloc(n + 1);
    cJSON *v;

    memcpy(copy, text, n + 1);
    memset(err, 0, sizeof(*err));
    v = ax_json_parse(copy, n, err);
    free(copy);
    return v;
}

/* Parses text and prints it back compactly; "" on failure. */
static void roundtrip(const char *text, char *out, size_t cap)
{
    struct ax_error err;
    struct ax_buf b;
    cJSON *v = parse(text, &err);

    out[0] = '\0';
    if (v == NULL)
        return;
    ax_buf_init(&b, 1 << 20);
    if (ax_json_print(v, &b) == 0)
        snprintf(out, cap, "%s", b.data);
    ax_buf_free(&b);
    cJSON_Delete(v);
}

static void test_nul_escape(void)
{
    struct ax_error err;
    cJSON *v = parse("{\"a\":\"x\\u0000y\",\"k\\u0000\":1,\"b\":\"\\\\u0000\"}", &err);
    const cJSON *a, *b;

    CHECKF(v != NULL, "%s", err.message);
    if (v == NULL)
        return;
    a = cJSON_GetObjectItemCaseSensitive(v, "a");
    /* not cut at the NUL: the rest of the string survives, NUL -> U+FFFD */
    CHECKF(cJSON_IsString(a) && strcmp(a->valuestring, "x\xEF\xBF\xBDy") == 0, "'%s'",
           a ? a->valuestring : "");
    CHECK(cJSON_GetObjectItemCaseSensitive(v, "k\xEF\xBF\xBD") != NULL);
    /* an escaped backslash followed by the text u0000 is left alone */
    b = cJSON_GetObjectItemCaseSensitive(v, "b");
    CHECKF(cJSON_IsString(b) && strcmp(b->valuestring, "\\u0000") == 0, "'%s'",
           b ? b->valuestring : "");
    cJSON_Delete(v);
}

/* A raw NUL byte inside a string would cut it silently: rejected (json.c fix). */
static void test_raw_nul(void)
{
    static const char text[] = "{\"a\":\"x\0y\"}";
    char copy[sizeof(text)];
    struct ax_error err;
    cJSON *v;

    memcpy(copy, text, sizeof(text));
    memset(&err, 0, sizeof(err));
    v = ax_json_parse(copy, sizeof(text) - 1, &err);
    CHECKF(v == NULL && err.status == 400, "raw NUL accepted: '%s'",
           v ? cJSON_GetObjectItemCaseSensitive(v, "a")->valuestring : "");
    cJSON_Delete(v);
}

static void test_trailing_garbage(void)
{
    struct ax_error err;
    cJSON *v;

    v = parse("{\"a\":1} x", &err);
    CHECK(v == NULL && err.status == 400 && strcmp(err.type, "invalid_request_error") == 0);
    CHECKF(strstr(err.message, "trailing") != NULL, "'%s'", err.message);
    v = parse("{\"a\":1}{\"b\":2}", &err);
    CHECK(v == NULL && err.status == 400);
    v = parse("[1,2] ]", &err);
    CHECK(v == NULL && err.status == 400);
    v = parse("{\"a\":1} \r\n\t ", &err);
    CHECK(v != NULL);
    cJSON_Delete(v);
    v = parse("{\"a\":", &err);
    CHECK(v == NULL && err.status == 400 && strstr(err.message, "invalid JSON") != NULL);
    v = parse("", &err);
    CHECK(v == NULL && err.status == 400);
}

static void test_big_integers(void)
{
    char out[512];

    roundtrip("{\"n\":12345678901234567890}", out, sizeof(out));
    CHECKF(strcmp(out, "{\"n\":12345678901234567890}") == 0, "'%s'", out);
    roundtrip("[-98765432109876543210,1,2.5,9007199254740993,\"12345678901234567890\"]", out,
              sizeof(out));
    CHECKF(strcmp(out, "[-98765432109876543210,1,2.5,9007199254740993,"
                       "\"12345678901234567890\"]") == 0,
           "'%s'", out);
    /* a string holding an escaped quote and digits does not shift the numbers */
    roundtrip("{\"s\":\"a\\\"1234567890123456789\",\"x\":[3,{\"n\":11111111111111111111}]}", out,
              sizeof(out));
    CHECKF(strcmp(out, "{\"s\":\"a\\\"1234567890123456789\",\"x\":[3,{\"n\":"
                       "11111111111111111111}]}") == 0,
           "'%s'", out);
    /* 2^53 - 1 alone (Claude Code's schemas hold it): exact in a double, yet cJSON's own
     * printing keeps only 15 digits of it */
    roundtrip("{\"maximum\":9007199254740991}", out, sizeof(out));
    CHECKF(strcmp(out, "{\"maximum\":9007199254740991}") == 0, "'%s'", out);
    roundtrip("[9007199254740993]", out, sizeof(out));
    CHECKF(strcmp(out, "[9007199254740993]") == 0, "'%s'", out);
    /* the e of true and false is not a number: the long integer stays on its node */
    roundtrip("{\"a\":true,\"b\":false,\"c\":1e2,\"n\":12345678901234567890,\"m\":5}", out,
              sizeof(out));
    CHECKF(strcmp(out, "{\"a\":true,\"b\":false,\"c\":100,\"n\":12345678901234567890,"
                       "\"m\":5}") == 0,
           "'%s'", out);
    /* small and fractional numbers stay numbers */
    roundtrip("{\"a\":42,\"b\":0.5,\"c\":-7}", out, sizeof(out));
    CHECKF(strcmp(out, "{\"a\":42,\"b\":0.5,\"c\":-7}") == 0, "'%s'", out);
}

static char *nested(int depth)
{
    char *s = malloc((size_t)depth * 2 + 1);
    int i;
    for (i = 0; i < depth; i++) {
        s[i] = '[';
        s[depth * 2 - 1 - i] = ']';
    }
    s[depth * 2] = '\0';
    return s;
}

static void test_nesting(void)
{
    struct ax_error err;
    char *deep = nested(1001), *ok = nested(900);
    cJSON *v;

    v = parse(deep, &err);
    CHECK(v == NULL && err.status == 400 && strcmp(err.type, "invalid_request_error") == 0);
    v = parse(ok, &err);
    CHECK(v != NULL);
    cJSON_Delete(v);
    free(deep);
    free(ok);
}

static void test_getters(void)
{
    struct ax_error err;
    cJSON *v = parse("{\"s\":\"x\",\"i\":5,\"f\":1.5,\"b\":true,\"n\":null,\"a\":[],\"o\":{},"
                     "\"big\":12345678901234567890}",
                     &err);
    const char *s = NULL;
    int64_t i = 0;
    double d = 0;
    int b = 0, rc;
    const cJSON *a = NULL, *o = NULL;

    CHECK(ax_json_get_string(v, "s", "req", &s, &err) == 1 && strcmp(s, "x") == 0);
    CHECK(ax_json_get_int(v, "i", "req", &i, &err) == 1 && i == 5);
    CHECK(ax_json_get_number(v, "f", "req", &d, &err) == 1 && d == 1.5);
    CHECK(ax_json_get_bool(v, "b", "req", &b, &err) == 1 && b == 1);
    CHECK(ax_json_get_array(v, "a", "req", &a, &err) == 1 && cJSON_IsArray(a));
    CHECK(ax_json_get_object(v, "o", "req", &o, &err) == 1 && cJSON_IsObject(o));
    /* absent and null: 0, output untouched */
    s = "keep";
    CHECK(ax_json_get_string(v, "missing", "req", &s, &err) == 0 && strcmp(s, "keep") == 0);
    CHECK(ax_json_get_string(v, "n", "req", &s, &err) == 0 && strcmp(s, "keep") == 0);
    /* wrong types name the field */
    memset(&err, 0, sizeof(err));
    rc = ax_json_get_int(v, "f", "req", &i, &err);
    CHECKF(rc == AX_EINVAL && err.status == 400 &&
               strcmp(err.message, "req.f: expected an integer") == 0,
           "'%s'", err.message);
    rc = ax_json_get_string(v, "i", "", &s, &err);
    CHECKF(rc == AX_EINVAL && strcmp(err.message, "i: expected a string") == 0, "'%s'",
           err.message);
    rc = ax_json_get_int(v, "big", "", &i, &err);
    CHECK(rc == AX_EINVAL);
    rc = ax_json_get_bool(v, "s", "x.y", &b, &err);
    CHECKF(rc == AX_EINVAL && strcmp(err.message, "x.y.s: expected a boolean") == 0, "'%s'",
           err.message);
    CHECK(ax_json_get_array(v, "o", "", &a, &err) == AX_EINVAL);
    CHECK(ax_json_get_object(v, "a", "", &o, &err) == AX_EINVAL);
    cJSON_Delete(v);
}

static const char *str_at(const cJSON *v, const char *key)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(v, key);
    return cJSON_IsString(s) ? s->valuestring : "(none)";
}

/* Lone surrogate escapes (a JavaScript client cut a string between an emoji's halves) and
 * ill-formed UTF-8 bytes: parsed, each replaced by U+FFFD, so no string of the tree is
 * ill-formed. A well-formed pair, and an escaped backslash before "ud800", stay as they are. */
static void test_utf8_repair(void)
{
    struct ax_error err;
    cJSON *v = parse("{\"hi\":\"a\\ud83d\",\"lo\":\"\\uDE00b\",\"pair\":\"\\ud83d\\ude00\","
                     "\"two\":\"\\ud83d\\ud83d\\ude00\",\"lit\":\"\\\\ud800\"}",
                     &err);

    CHECKF(v != NULL, "%s", err.message);
    CHECK_STR(str_at(v, "hi"), "a\xef\xbf\xbd");
    CHECK_STR(str_at(v, "lo"), "\xef\xbf\xbd" "b");
    CHECK_STR(str_at(v, "pair"), "\xf0\x9f\x98\x80");
    CHECK_STR(str_at(v, "two"), "\xef\xbf\xbd\xf0\x9f\x98\x80");
    CHECK_STR(str_at(v, "lit"), "\\ud800");
    cJSON_Delete(v);

    /* raw bytes: an invalid byte, a truncated sequence, CESU-8 surrogates, an overlong '/' */
    v = parse("{\"v\":\"x\xffy\",\"t\":\"\xe2\x82\",\"c\":\"\xed\xa0\xbd\xed\xb8\x80\","
              "\"o\":\"\xc0\xaf\",\"k\xfe\":1,\"ok\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}",
              &err);
    CHECKF(v != NULL, "%s", err.message);
    CHECK_STR(str_at(v, "v"), "x\xef\xbf\xbdy");
    CHECK_STR(str_at(v, "t"), "\xef\xbf\xbd");
    CHECK_STR(str_at(v, "c"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    CHECK_STR(str_at(v, "o"), "\xef\xbf\xbd\xef\xbf\xbd");
    CHECK(cJSON_GetObjectItemCaseSensitive(v, "k\xef\xbf\xbd") != NULL);
    CHECK_STR(str_at(v, "ok"), "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    cJSON_Delete(v);
}

/* Numbers no integer type holds: 1e999999 parses as inf, 9.3e18 is past 2^63. Casting them to
 * int64_t is undefined behaviour (the sanitizer build runs float-cast-overflow): they must be
 * refused as "expected an integer" before any cast. */
static void test_huge_numbers(void)
{
    static const char *const keys[] = {"inf", "ninf", "big", "huge", "nbig"};
    struct ax_error err;
    cJSON *v = parse("{\"inf\":1e999999,\"ninf\":-1e999999,\"big\":9.3e18,\"huge\":1e300,"
                     "\"nbig\":-9.3e18,\"edge\":1e14}",
                     &err);
    int64_t i = 7;
    size_t k;

    CHECK(v != NULL);
    for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        memset(&err, 0, sizeof(err));
        CHECKF(ax_json_get_int(v, keys[k], "", &i, &err) == AX_EINVAL && i == 7 &&
                   strstr(err.message, "expected an integer") != NULL,
               "%s: '%s'", keys[k], err.message);
    }
    CHECK(ax_json_get_int(v, "edge", "", &i, &err) == 1 && i == 100000000000000LL);
    cJSON_Delete(v);
}

static void test_add_stringn(void)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *item = ax_json_add_stringn(o, "k", "abcdef", 3);
    CHECK(item != NULL &&
          strcmp(cJSON_GetObjectItemCaseSensitive(o, "k")->valuestring, "abc") == 0);
    cJSON_Delete(o);
}

static void test_print_limit(void)
{
    struct ax_error err;
    struct ax_buf b;
    cJSON *v = parse("{\"a\":\"0123456789\"}", &err);

    ax_buf_init(&b, 8);
    CHECK(ax_json_print(v, &b) == AX_ETOOBIG && b.len == 0);
    ax_buf_free(&b);
    cJSON_Delete(v);
}

int main(void)
{
    test_nul_escape();
    test_raw_nul();
    test_trailing_garbage();
    test_big_integers();
    test_nesting();
    test_getters();
    test_huge_numbers();
    test_utf8_repair();
    test_add_stringn();
    test_print_limit();
    return AX_TEST_DONE("test_json");
}
