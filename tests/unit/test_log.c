/* test_log.c - core/log.c: lines that cannot be forged (control bytes and ill-formed UTF-8
 * escaped in the one place lines are formatted) and secrets that never reach them
 * (ax_redact: URL credentials, Authorization values, api keys, registered secrets). */
#include "ax_test.h"

#include "anthroxy_log.h"
#include "anthroxy_utf8.h"

#include <unistd.h>

static char *redacted(const char *in)
{
    static char buf[1024];

    snprintf(buf, sizeof(buf), "%s", in);
    buf[ax_redact(buf, strlen(buf))] = '\0';
    return buf;
}

static void test_redact(void)
{
    CHECK_STR(redacted("GET http://user:pa55@host:8080/v1 failed"),
              "GET http://***@host:8080/v1 failed");
    CHECK_STR(redacted("https://tok@h/x"), "https://***@h/x");
    CHECK_STR(redacted("http://host/a@b"), "http://host/a@b"); /* '@' in the path: no userinfo */
    CHECK_STR(redacted("Authorization: Bearer sk-live-123456\r\nHost: x"),
              "Authorization: Bearer ***\r\nHost: x");
    CHECK_STR(redacted("{\"headers\":{\"authorization\":\"Bearer sk-abcdef\",\"x\":1}}"),
              "{\"headers\":{\"authorization\":\"Bearer ***\",\"x\":1}}");
    CHECK_STR(redacted("authorization=Basic dXNlcjpwYXNz"), "authorization=Basic ***");
    CHECK_STR(redacted("bad header \\\"Authorization: Bearer sk-9876543\\\" seen"),
              "bad header \\\"Authorization: Bearer ***\\\" seen");
    CHECK_STR(redacted("the key Bearer sk-0123456789 was refused"),
              "the key Bearer *** was refused");
    CHECK_STR(redacted("the bearer of bad news"), "the bearer of bad news");
    CHECK_STR(redacted("x-api-key: abc123xyz"), "x-api-key: ***");
    CHECK_STR(redacted("{\"x-api-key\": \"k1\", \"api_key\":\"sekrit\"}"),
              "{\"x-api-key\": \"**\", \"api_key\":\"***\"}");
    CHECK_STR(redacted("config api-key = [\"***\",\"***\"] (flag)"),
              "config api-key = [\"***\",\"***\"] (flag)");
    CHECK_STR(redacted("nothing to see"), "nothing to see");

    /* registered secrets, wherever they are */
    CHECK(ax_log_secret_add("hunter2-upstream") == 0);
    CHECK(ax_log_secret_add("abc") == 0); /* too short: not registered, words stay */
    CHECK_STR(redacted("echo: hunter2-upstream and hunter2-upstream"), "echo: *** and ***");
    CHECK_STR(redacted("abc"), "abc");
    ax_log_secret_remove("hunter2-upstream");
    CHECK_STR(redacted("hunter2-upstream"), "hunter2-upstream");

    {
        char out[64];
        CHECK_STR(ax_redact_url("http://u:p@127.0.0.1:8080/v1", out, sizeof(out)),
                  "http://***@127.0.0.1:8080/v1");
        CHECK_STR(ax_redact_url("http://127.0.0.1:8080/v1", out, sizeof(out)),
                  "http://127.0.0.1:8080/v1");
    }
}

static void test_escape(void)
{
    char out[256];
    size_t n;

    n = ax_log_escape("a\nb\r\tc\x01\x7f", 8, out, sizeof(out));
    CHECK_STR(out, "a\\nb\\r\\tc\\x01\\x7f");
    CHECK_INT(n, strlen(out));
    /* well-formed UTF-8 stays, each ill-formed byte is \xNN */
    ax_log_escape("caf\xc3\xa9 \xff \xed\xa0\x80", 11, out, sizeof(out));
    CHECK_STR(out, "caf\xc3\xa9 \\xff \\xed\\xa0\\x80");
    /* cut at an escape boundary, never inside one */
    n = ax_log_escape("\n\n\n", 3, out, 6);
    CHECK_STR(out, "\\n\\n");
    CHECK_INT(n, 4);
}

/* Runs fn with stderr redirected to a file; returns what it wrote. */
static char *capture(void (*fn)(void))
{
    static char buf[16384];
    char path[] = "/tmp/test_log_XXXXXX";
    int fd = mkstemp(path), saved = dup(2);
    ssize_t n;

    fflush(stderr);
    dup2(fd, 2);
    fn();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    lseek(fd, 0, SEEK_SET);
    n = read(fd, buf, sizeof(buf) - 1);
    buf[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(path);
    return buf;
}

static void write_forged(void)
{
    /* a client's model name holding a forged line */
    AX_LOG_INFO(NULL, "request model '%s' session '%s'",
                "m\n2026-01-01T00:00:00.000Z ERROR [req_x] forged", "s\r\x1b[31m");
}

static void write_secret(void)
{
    AX_LOG_WARN(NULL, "upstream answered 401: %s",
                "{\"error\":\"bad key\",\"headers\":{\"Authorization\":\"Bearer sk-live-0123\"}}");
}

static void write_long(void)
{
    char big[AX_LOG_LINE_MAX + 100];
    size_t i;

    for (i = 0; i + 2 < sizeof(big); i += 2)
        memcpy(big + i, "\xc3\xa9", 2); /* é, cut by the limit somewhere */
    big[i] = '\0';
    AX_LOG_INFO(NULL, "x%s", big);
}

static void test_write(void)
{
    char *out = capture(write_forged);
    const char *nl = strchr(out, '\n');

    CHECKF(nl != NULL && nl[1] == '\0', "one line: %s", out);
    CHECKF(strstr(out, "m\\n2026-01-01T00:00:00.000Z ERROR [req_x] forged") != NULL, "%s", out);
    CHECKF(strstr(out, "s\\r\\x1b[31m") != NULL, "%s", out);

    out = capture(write_secret);
    CHECKF(strstr(out, "sk-live") == NULL && strstr(out, "Bearer ***") != NULL, "%s", out);

    out = capture(write_long);
    CHECK(ax_utf8_valid_prefix(out, strlen(out)) == strlen(out));
    CHECK(strchr(out, '\n') == out + strlen(out) - 1);
}

static void write_fields(void)
{
    struct ax_log_field f[] = {
        AX_LOG_STR("model", "a\nb\"c\\\x01\xff\xc3\xa9"),
        AX_LOG_STR("session", NULL),
        AX_LOG_INT("status", 200),
        AX_LOG_NUM("total_ms", 12.34),
        AX_LOG_STR("key", "Bearer sk-live-0123456"),
    };
    AX_LOG_FIELDS(AX_LOG_LVL_INFO, NULL, "messages", f, 5);
}

/* --log-format json: each line parses (cJSON), the fields are members, secrets redacted;
 * text keeps the summary's key=value form. */
static void test_json(void)
{
    const cJSON *v;
    cJSON *o;
    char *out;

    ax_log_set_format(AX_LOG_FMT_JSON);
    out = capture(write_forged);
    CHECKF(strchr(out, '\n') == out + strlen(out) - 1, "one line: %s", out);
    o = cJSON_Parse(out);
    CHECKF(o != NULL, "not JSON: %s", out);
    v = cJSON_GetObjectItemCaseSensitive(o, "msg");
    CHECK(cJSON_IsString(v) &&
          strstr(v->valuestring, "'m\n2026-01-01T00:00:00.000Z ERROR") != NULL);
    CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(o, "time")));
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "level")), "INFO");
    cJSON_Delete(o);

    out = capture(write_fields);
    o = cJSON_Parse(out);
    CHECKF(o != NULL, "not JSON: %s", out);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "msg")), "messages");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "model")),
              "a\nb\"c\\\x01\xef\xbf\xbd\xc3\xa9"); /* the bad byte as U+FFFD */
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "session")), "-");
    CHECK_INT(cJSON_GetObjectItemCaseSensitive(o, "status")->valuedouble, 200);
    CHECK(cJSON_GetObjectItemCaseSensitive(o, "total_ms")->valuedouble == 12.3);
    CHECKF(strstr(out, "sk-live") == NULL, "%s", out);
    cJSON_Delete(o);

    out = capture(write_long);
    o = cJSON_Parse(out);
    CHECKF(o != NULL, "a cut line is still JSON: %.80s", out);
    cJSON_Delete(o);

    ax_log_set_format(AX_LOG_FMT_TEXT);
    out = capture(write_fields);
    CHECKF(strstr(out, " INFO  messages model=a\\nb\"c\\\\x01\\xff\xc3\xa9 session=- status=200 "
                       "total_ms=12.3 key=Bearer ***\n") != NULL,
           "%s", out);
    CHECK(ax_log_format_parse("JSON") == AX_LOG_FMT_JSON);
    CHECK(ax_log_format_parse("xml") == -1);
}

int main(void)
{
    test_redact();
    test_escape();
    test_write();
    test_json();
    return AX_TEST_DONE("test_log");
}
