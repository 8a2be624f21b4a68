/* test_toolcall_text.c - the text tool-call recogniser on tests/fixtures/toolcall_text/, fed
 * whole, split at every byte and one byte at a time; hold-back timing; argument repair and
 * schema checks. */
#include "ax_test.h"

#include "anthroxy_buf.h"
#include "anthroxy_error.h"
#include "anthroxy_toolcall_text.h"
#include "anthroxy_translate.h"

#include <dirent.h>

#define FIXTURES AX_FIXTURES "/toolcall_text"

/* What the events said, normalised: adjacent text events merged (a split may cut text
 * anywhere), calls as {"call","input","id"?,"repairs"?,"check_error"?}. */
struct rec {
    cJSON *events;
    struct ax_buf text; /* the pending text run */
    struct ax_buf all;  /* every event's text, calls' raw text included */
    int fail_at;        /* return AX_EINVAL from the fail_at-th event (1-based), 0 never */
    int seen;
};

static void rec_flush(struct rec *r)
{
    cJSON *o;

    if (r->text.len == 0)
        return;
    o = cJSON_CreateObject();
    ax_json_add_stringn(o, "text", r->text.data, r->text.len);
    cJSON_AddItemToArray(r->events, o);
    ax_buf_reset(&r->text);
}

static int on_event(struct ax_tctext_event *ev, void *ud)
{
    struct rec *r = ud;
    cJSON *o;

    if (++r->seen == r->fail_at)
        return AX_EINVAL;
    ax_buf_append(&r->all, ev->text, ev->len);
    if (ev->kind == AX_TCTEXT_TEXT) {
        CHECK(ev->len > 0);
        ax_buf_append(&r->text, ev->text, ev->len);
        return 0;
    }
    rec_flush(r);
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "call", ev->name);
    if (ev->id != NULL)
        cJSON_AddStringToObject(o, "id", ev->id);
    /* take the tree, as translate_response.c will */
    cJSON_AddItemToObject(o, "input", ev->input);
    ev->input = NULL;
    if (ev->repairs)
        cJSON_AddNumberToObject(o, "repairs", ev->repairs);
    if (ev->check_error != NULL)
        cJSON_AddStringToObject(o, "check_error", ev->check_error);
    CHECK(ev->input_json != NULL && strlen(ev->input_json) == ev->input_len);
    cJSON_AddItemToArray(r->events, o);
    return 0;
}

static void rec_init(struct rec *r)
{
    memset(r, 0, sizeof(*r));
    r->events = cJSON_CreateArray();
    ax_buf_init(&r->text, 1 << 24);
    ax_buf_init(&r->all, 1 << 24);
}

static void rec_free(struct rec *r)
{
    cJSON_Delete(r->events);
    ax_buf_free(&r->text);
    ax_buf_free(&r->all);
}

/* Runs text through a recogniser fed in pieces: cuts[0..ncuts) are split offsets, or
 * bytewise feeds one byte at a time. Returns the normalised events (caller frees). */
static cJSON *run(const cJSON *tools, const char *text, size_t n, const size_t *cuts, int ncuts,
                  int bytewise, size_t max_hold, struct ax_buf *all)
{
    struct ax_tctext t;
    struct rec r;
    size_t at = 0, i;
    int k;
    cJSON *out;

    rec_init(&r);
    ax_tctext_init(&t, tools, max_hold);
    if (bytewise) {
        for (i = 0; i < n; i++)
            CHECK(ax_tctext_feed(&t, text + i, 1, on_event, &r) == 0);
    } else {
        for (k = 0; k <= ncuts; k++) {
            size_t to = k < ncuts ? cuts[k] : n;
            CHECK(ax_tctext_feed(&t, text + at, to - at, on_event, &r) == 0);
            at = to;
        }
    }
    CHECK(ax_tctext_finish(&t, on_event, &r) == 0);
    CHECK(t._hold.len == 0);
    rec_flush(&r);
    if (all != NULL) {
        ax_buf_reset(all);
        ax_buf_append(all, r.all.data, r.all.len);
    }
    ax_tctext_free(&t);
    out = r.events;
    r.events = NULL;
    rec_free(&r);
    return out;
}

static int same(const cJSON *a, const cJSON *b, const char *name, const char *how, size_t at)
{
    if (cJSON_Compare(a, b, 1))
        return 1;
    {
        char *x = cJSON_PrintUnformatted(a), *y = cJSON_PrintUnformatted(b);
        fprintf(stderr, "%s (%s %zu):\n  got      %s\n  expected %s\n", name, how, at, x, y);
        cJSON_free(x);
        cJSON_free(y);
    }
    ax_test_failures++;
    return 0;
}

static void test_fixture(const char *file)
{
    char path[512];
    size_t len, n, k;
    char *raw;
    cJSON *fx, *whole, *ev;
    const cJSON *tools, *text, *expect;
    struct ax_buf all;

    snprintf(path, sizeof(path), "%s/%s", FIXTURES, file);
    raw = ax_test_read_file(path, &len);
    CHECKF(raw != NULL, "%s", path);
    if (raw == NULL)
        return;
    fx = cJSON_ParseWithLength(raw, len);
    free(raw);
    tools = cJSON_GetObjectItemCaseSensitive(fx, "tools");
    text = cJSON_GetObjectItemCaseSensitive(fx, "text");
    expect = cJSON_GetObjectItemCaseSensitive(fx, "expect");
    CHECKF(cJSON_IsString(text) && cJSON_IsArray(expect), "%s", file);
    if (!cJSON_IsString(text) || !cJSON_IsArray(expect)) {
        cJSON_Delete(fx);
        return;
    }
    n = strlen(text->valuestring);
    ax_buf_init(&all, 1 << 24);
    whole = run(tools, text->valuestring, n, NULL, 0, 0, 0, &all);
    same(whole, expect, file, "whole", n);
    /* the events' text is the input, byte for byte */
    CHECKF(all.len == n && memcmp(all.data, text->valuestring, n) == 0, "%s: text not kept", file);
    for (k = 0; k <= n; k++) {
        ev = run(tools, text->valuestring, n, &k, 1, 0, 0, NULL);
        same(ev, whole, file, "split at", k);
        cJSON_Delete(ev);
    }
    ev = run(tools, text->valuestring, n, NULL, 0, 1, 0, &all);
    same(ev, whole, file, "bytewise", 1);
    CHECKF(all.len == n && memcmp(all.data, text->valuestring, n) == 0, "%s: bytewise", file);
    cJSON_Delete(ev);
    /* a cap smaller than the block: all text, unchanged */
    ev = run(tools, text->valuestring, n, NULL, 0, 1, 64, &all);
    CHECKF(all.len == n && memcmp(all.data, text->valuestring, n) == 0, "%s: capped", file);
    cJSON_Delete(ev);
    cJSON_Delete(whole);
    ax_buf_free(&all);
    cJSON_Delete(fx);
}

static void test_nonstream_fixture(const char *file);

static int test_fixtures(void)
{
    DIR *d = opendir(FIXTURES);
    struct dirent *e;
    int count = 0;

    CHECK(d != NULL);
    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".json") == 0) {
            test_fixture(e->d_name);
            test_nonstream_fixture(e->d_name);
            count++;
        }
    }
    closedir(d);
    CHECK(count >= 20);
    return count;
}

static cJSON *tools_one(void)
{
    return cJSON_Parse("[{\"name\":\"Read\",\"input_schema\":{\"type\":\"object\","
                       "\"properties\":{\"file_path\":{\"type\":\"string\"}}}}]");
}

/* Held back no longer than a marker needs; plain text goes out at once, with no allocation. */
static void test_holding(void)
{
    cJSON *tools = tools_one();
    struct ax_tctext t;
    struct rec r;

    rec_init(&r);
    ax_tctext_init(&t, tools, 0);
    CHECK(ax_tctext_feed(&t, "Hello there, plain text.", 24, on_event, &r) == 0);
    CHECK_INT(r.text.len, 24);
    CHECK(t._hold.data == NULL); /* the fast path allocated nothing */
    CHECK(ax_tctext_feed(&t, " a <tool", 8, on_event, &r) == 0);
    CHECK_INT(r.text.len, 27); /* " a " out, "<tool" held */
    CHECK(ax_tctext_feed(&t, "s>", 2, on_event, &r) == 0);
    CHECK_INT(r.text.len, 34); /* "<tools>" ruled out at 's' */
    CHECK(ax_tctext_feed(&t, " x[TOOL_CALLS]", 14, on_event, &r) == 0);
    CHECK_INT(r.text.len, 36);
    CHECK(ax_tctext_feed(&t, " see", 4, on_event, &r) == 0);
    CHECK_INT(r.text.len, 36); /* " see" could still be a name... */
    CHECK(ax_tctext_feed(&t, " ", 1, on_event, &r) == 0);
    CHECK_INT(r.text.len, 53); /* ...until a blank after it */
    CHECK(ax_tctext_feed(&t, "<tool_call", 10, on_event, &r) == 0);
    CHECK_INT(r.text.len, 53);
    CHECK(ax_tctext_finish(&t, on_event, &r) == 0); /* a prefix at the end is text */
    CHECK_INT(r.text.len, 63);
    ax_tctext_free(&t);
    rec_free(&r);

    /* no tools: text is forwarded, markers and all */
    rec_init(&r);
    ax_tctext_init(&t, NULL, 0);
    CHECK(ax_tctext_feed(&t, "<tool_call>{\"name\":\"Read\"}</tool_call>", 38, on_event, &r) == 0);
    CHECK_INT(r.text.len, 38);
    CHECK(ax_tctext_finish(&t, on_event, &r) == 0);
    ax_tctext_free(&t);
    rec_free(&r);

    /* a callback error aborts and is returned */
    rec_init(&r);
    r.fail_at = 1;
    ax_tctext_init(&t, tools, 0);
    CHECK(ax_tctext_feed(&t, "x<tool_call>", 12, on_event, &r) == AX_EINVAL);
    ax_tctext_free(&t);
    rec_free(&r);
    cJSON_Delete(tools);
}

static void repair_case(const char *in, const char *want, unsigned want_bits)
{
    struct ax_buf b;
    unsigned bits = 0;
    int rc;

    ax_buf_init(&b, 1 << 20);
    rc = ax_tool_args_repair(in, strlen(in), &b, &bits);
    if (want == NULL) {
        CHECKF(rc == AX_EINVAL, "%s: repaired to %s", in, b.data ? b.data : "");
    } else {
        CHECKF(rc == 0, "%s: rc %d", in, rc);
        CHECK_STR(b.len ? b.data : "", want);
        CHECKF(bits == want_bits, "%s: bits %u, expected %u", in, bits, want_bits);
    }
    ax_buf_free(&b);
}

static void test_repair(void)
{
    cJSON *v;
    unsigned w;

    repair_case("{\"a\": 1}", "{\"a\": 1}", 0);
    repair_case("{\"a\": 1,}", "{\"a\": 1}", AX_TOOL_ARGS_FIXED_COMMA);
    repair_case("{\"a\": [1, 2, ], }", "{\"a\": [1, 2 ] }", AX_TOOL_ARGS_FIXED_COMMA);
    repair_case("{\"a\": {\"b\": 1", "{\"a\": {\"b\": 1}}", AX_TOOL_ARGS_FIXED_CLOSE);
    repair_case("{\"a\": 1,", "{\"a\": 1}", AX_TOOL_ARGS_FIXED_COMMA | AX_TOOL_ARGS_FIXED_CLOSE);
    repair_case("{\"a\": \"x\ny\tz\"}", "{\"a\": \"x\\ny\\tz\"}", AX_TOOL_ARGS_FIXED_CTRL);
    repair_case("{\"a\": True, \"b\": False, \"c\": None, \"d\": \"True\"}",
                "{\"a\": true, \"b\": false, \"c\": null, \"d\": \"True\"}",
                AX_TOOL_ARGS_FIXED_PYTHON);
    repair_case("{\"a\": 1}}", "{\"a\": 1}", AX_TOOL_ARGS_FIXED_TRAILER);
    repair_case("  {\"a\": 1} \n", "{\"a\": 1}", 0);
    repair_case("{\"a\": \"cut", NULL, 0);         /* inside a string */
    repair_case("{\"a\":", NULL, 0);               /* after a key */
    repair_case("{\"a\": 1] ", NULL, 0);           /* mismatched */
    repair_case("{\"a\": 1} {\"b\": 2}", NULL, 0); /* a second value: ambiguous */
    repair_case("{\"a\": 1} thanks", NULL, 0);
    repair_case("hello", NULL, 0);
    repair_case("", NULL, 0);

    CHECK(ax_tool_args_parse("{\"a\": 1,}", 9, &v, &w) == 0 && w == AX_TOOL_ARGS_FIXED_COMMA);
    cJSON_Delete(v);
    CHECK(ax_tool_args_parse(" ", 1, &v, &w) == 0 && cJSON_IsObject(v) && v->child == NULL);
    cJSON_Delete(v);
    CHECK(ax_tool_args_parse("[1]", 3, &v, &w) == AX_EINVAL && v == NULL);
    CHECK(ax_tool_args_parse("{\"a\": tru}", 10, &v, &w) == AX_EINVAL);
    CHECK(ax_tool_args_parse("{\"a\": \"\\u0000\"}", 15, &v, &w) == 0);
    cJSON_Delete(v);
}

static void check_case(const char *args, const char *schema, const char *want)
{
    cJSON *a = cJSON_Parse(args), *s = cJSON_Parse(schema);
    char why[AX_TCTEXT_WHY_MAX];
    int rc = ax_tool_args_check(a, s, why, sizeof(why));

    if (want == NULL)
        CHECKF(rc == 0, "%s: %s", args, why);
    else {
        CHECKF(rc == AX_EINVAL, "%s: passed", args);
        CHECK_STR(why, want);
    }
    cJSON_Delete(a);
    cJSON_Delete(s);
}

static void test_check(void)
{
    const char *edit = "{\"type\":\"object\",\"properties\":{\"file_path\":{\"type\":\"string\"},"
                       "\"replace_all\":{\"type\":\"boolean\"},\"mode\":{\"enum\":[\"a\",\"b\"]},"
                       "\"n\":{\"type\":[\"integer\",\"null\"]},"
                       "\"edits\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
                       "\"properties\":{\"old\":{\"type\":\"string\"}},\"required\":[\"old\"]}}},"
                       "\"required\":[\"file_path\"],\"additionalProperties\":false}";

    check_case("{\"file_path\":\"/a\"}", edit, NULL);
    check_case("{\"file_path\":\"/a\",\"n\":null,\"edits\":[{\"old\":\"x\"}]}", edit, NULL);
    check_case("{}", edit,
               "missing required property \"file_path\" (expected properties: \"file_path\", "
               "\"replace_all\", \"mode\", \"n\", \"edits\")");
    check_case("{\"file_path\":3}", edit, "file_path: expected string, got a number");
    check_case("{\"file_path\":\"/a\",\"replace_all\":\"yes\"}", edit,
               "replace_all: expected boolean, got a string \"yes\"");
    check_case("{\"file_path\":\"/a\",\"mode\":\"c\"}", edit, "mode: must be one of \"a\", \"b\"");
    check_case("{\"file_path\":\"/a\",\"n\":1.5}", edit,
               "n: expected one of the types integer null, got a number");
    check_case("{\"file_path\":\"/a\",\"edits\":[{\"old\":\"x\"},{}]}", edit,
               "edits[1]: missing required property \"old\" (expected properties: \"old\")");
    check_case("{\"file\":\"/a\",\"file_path\":\"/a\"}", edit,
               "unknown property \"file\" (expected properties: \"file_path\", \"replace_all\", "
               "\"mode\", \"n\", \"edits\")");
    check_case("{\"x\":1}", "null", NULL);
    check_case("[1]", edit, "arguments must be a JSON object, got an array");
}

/* The streamed repairs: fed at every split point (and byte by byte), the output is want,
 * byte for byte, with want_bits. */
static void fix_case(const char *in, const char *want, unsigned want_bits)
{
    size_t n = strlen(in), k, i;
    struct ax_tool_args_fixer f;
    struct ax_buf b;
    int same_all;

    ax_buf_init(&b, 1 << 20);
    for (k = 0; k <= n + 1; k++) {
        ax_buf_reset(&b);
        ax_tool_args_fix_init(&f);
        same_all = 1;
        if (k <= n) { /* one split at k */
            same_all &= ax_tool_args_fix_feed(&f, in, k, &b) == 1;
            same_all &= ax_tool_args_fix_feed(&f, in + k, n - k, &b) == 1;
        } else { /* byte by byte */
            for (i = 0; i < n; i++)
                same_all &= ax_tool_args_fix_feed(&f, in + i, 1, &b) == 1;
        }
        CHECK(ax_tool_args_fix_finish(&f, &b, 1) == 0);
        CHECKF(b.len == strlen(want) && memcmp(b.data ? b.data : "", want, b.len) == 0,
               "%s split at %zu: %.*s, expected %s", in, k, (int)b.len, b.data ? b.data : "", want);
        CHECKF(f.repairs == want_bits, "%s: bits %u, expected %u", in, f.repairs, want_bits);
        if (want_bits == 0 && strcmp(in, want) == 0 && k == n) /* one piece: told unchanged */
            CHECKF(same_all, "%s: not reported unchanged", in);
    }
    ax_buf_free(&b);
}

static void test_fixer(void)
{
    struct ax_tool_args_fixer f;
    struct ax_buf b;

    fix_case("{\"a\": 1}", "{\"a\": 1}", 0);
    fix_case("{\"file_path\": \"/tmp/x, y\", \"content\": \"a,\\n}\\\"]\", \"n\": [1, 2, {}]}",
             "{\"file_path\": \"/tmp/x, y\", \"content\": \"a,\\n}\\\"]\", \"n\": [1, 2, {}]}", 0);
    fix_case("{\"a\": 1,}", "{\"a\": 1}", AX_TOOL_ARGS_FIXED_COMMA);
    fix_case("{\"a\": [1, 2, ], }", "{\"a\": [1, 2 ] }", AX_TOOL_ARGS_FIXED_COMMA);
    fix_case("{\"a\": {\"b\": 1", "{\"a\": {\"b\": 1}}", AX_TOOL_ARGS_FIXED_CLOSE);
    fix_case("{\"a\": 1,", "{\"a\": 1}", AX_TOOL_ARGS_FIXED_COMMA | AX_TOOL_ARGS_FIXED_CLOSE);
    fix_case("{\"a\": \"x\ny\tz\"}", "{\"a\": \"x\\ny\\tz\"}", AX_TOOL_ARGS_FIXED_CTRL);
    fix_case("{\"a\": True, \"b\": False, \"c\": None, \"d\": \"True\", \"e\": true}",
             "{\"a\": true, \"b\": false, \"c\": null, \"d\": \"True\", \"e\": true}",
             AX_TOOL_ARGS_FIXED_PYTHON);
    fix_case("{\"a\": 1}}", "{\"a\": 1}", AX_TOOL_ARGS_FIXED_TRAILER);
    fix_case("{\"a\": \"cut", "{\"a\": \"cut", 0); /* inside a string: nothing added */
    fix_case("{\"a\":", "{\"a\":", 0);             /* after a key */
    fix_case("", "", 0);

    /* cut by max_tokens: held bytes go out as they came, nothing is closed */
    ax_buf_init(&b, 1 << 10);
    ax_tool_args_fix_init(&f);
    CHECK(ax_tool_args_fix_feed(&f, "{\"a\": [1, Tr", 12, &b) == 0);
    CHECK(ax_tool_args_fix_finish(&f, &b, 0) == 0);
    CHECK_STR(b.data, "{\"a\": [1, Tr");
    CHECK(f.repairs == 0);
    ax_buf_free(&b);
}

/* The complete-answer translator: the fixture's text as message.content. */
static void test_nonstream_fixture(const char *file)
{
    char path[512];
    size_t len;
    char *raw;
    cJSON *fx, *oa, *msg, *got = NULL, *blk, *want;
    const cJSON *x, *tools, *expect;
    struct ax_toolcall_stats ts;
    struct ax_response_opts ro;
    struct ax_error err;
    int calls = 0, failures = 0;

    snprintf(path, sizeof(path), "%s/%s", FIXTURES, file);
    if ((raw = ax_test_read_file(path, &len)) == NULL)
        return;
    fx = cJSON_ParseWithLength(raw, len);
    free(raw);
    tools = cJSON_GetObjectItemCaseSensitive(fx, "tools");
    expect = cJSON_GetObjectItemCaseSensitive(fx, "expect");
    oa = cJSON_Parse("{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\"},"
                     "\"finish_reason\":\"stop\"}]}");
    msg = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(oa, "choices"), 0), "message");
    cJSON_AddItemToObject(msg, "content",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(fx, "text"), 1));
    memset(&ro, 0, sizeof(ro));
    ro.client_model = "m";
    ro.tools = tools;
    ro.stats = &ts;
    CHECKF(ax_translate_response(oa, &ro, &got, &err) == 0, "%s", file);
    /* the blocks, normalised as the fixture says them */
    want = cJSON_CreateArray();
    cJSON_ArrayForEach(x, expect)
    {
        cJSON *e = cJSON_CreateObject();
        if (cJSON_GetObjectItemCaseSensitive(x, "call") != NULL) {
            calls++;
            failures += cJSON_GetObjectItemCaseSensitive(x, "check_error") != NULL;
            cJSON_AddStringToObject(e, "type", "tool_use");
            cJSON_AddItemToObject(e, "name",
                                  cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(x, "call"), 1));
            cJSON_AddItemToObject(e, "input",
                                  cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(x, "input"), 1));
        } else {
            cJSON_AddStringToObject(e, "type", "text");
            cJSON_AddItemToObject(e, "text",
                                  cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(x, "text"), 1));
        }
        cJSON_AddItemToArray(want, e);
    }
    cJSON_ArrayForEach(blk, cJSON_GetObjectItemCaseSensitive(got, "content"))
    {
        cJSON *id = cJSON_DetachItemFromObjectCaseSensitive(blk, "id");
        if (id != NULL)
            CHECKF(strncmp(id->valuestring, "toolu_", 6) == 0, "%s: id %s", file, id->valuestring);
        cJSON_Delete(id);
    }
    same(cJSON_GetObjectItemCaseSensitive(got, "content"), want, file, "complete answer", 0);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(got, "stop_reason")),
              calls > 0 ? "tool_use" : "end_turn");
    CHECKF(ts.text_calls == (unsigned)calls && ts.schema_failures == (unsigned)failures,
           "%s: %u calls, %u failures", file, ts.text_calls, ts.schema_failures);
    CHECK((failures > 0) == (ts.first_failure[0] != '\0'));
    cJSON_Delete(want);
    cJSON_Delete(got);
    cJSON_Delete(oa);
    cJSON_Delete(fx);
}

/* Native tool calls of a complete answer: repaired, then checked; unrepairable ones as before. */
static void test_nonstream_native(void)
{
    const char *tools_json =
        "[{\"name\":\"Write\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"file_path\":"
        "{\"type\":\"string\"},\"content\":{\"type\":\"string\"}},\"required\":[\"file_path\","
        "\"content\"]}}]";
    const char *answer =
        "{\"choices\":[{\"index\":0,\"finish_reason\":\"tool_calls\",\"message\":{\"role\":"
        "\"assistant\",\"content\":null,\"tool_calls\":["
        "{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"Write\",\"arguments\":"
        "\"{\\\"file_path\\\": \\\"/a\\\", \\\"content\\\": \\\"x\\ny\\\",\"}},"
        "{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":\"Write\",\"arguments\":"
        "\"{\\\"file_path\\\": \\\"/b\\\"}\"}},"
        "{\"id\":\"c3\",\"type\":\"function\",\"function\":{\"name\":\"Write\",\"arguments\":"
        "\"{\\\"file_path\\\": nope}\"}}]}}]}";
    cJSON *tools = cJSON_Parse(tools_json), *oa = cJSON_Parse(answer), *got = NULL;
    const cJSON *c, *in;
    struct ax_toolcall_stats ts;
    struct ax_response_opts ro;
    struct ax_error err;

    memset(&ro, 0, sizeof(ro));
    ro.tools = tools;
    ro.stats = &ts;
    CHECK(tools != NULL && oa != NULL);
    CHECK(ax_translate_response(oa, &ro, &got, &err) == 0);
    c = cJSON_GetObjectItemCaseSensitive(got, "content");
    CHECK_INT(cJSON_GetArraySize(c), 3);
    in = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(c, 0), "input");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(in, "content")), "x\ny");
    CHECK_STR(
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(c, 1), "type")),
        "tool_use"); /* passed on, though content is missing */
    CHECK_STR(
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(c, 2), "type")),
        "text"); /* not repairable: the invalid-call text, as before */
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(got, "stop_reason")),
              "tool_use");
    CHECK_INT(ts.repaired, 1);
    CHECK_INT(ts.schema_failures, 1);
    CHECK_INT(ts.text_calls, 0);
    CHECKF(strstr(ts.first_failure, "Write: ") == ts.first_failure &&
               strstr(ts.first_failure, "\"content\"") != NULL,
           "%s", ts.first_failure);
    cJSON_Delete(got);
    cJSON_Delete(oa);
    cJSON_Delete(tools);
}

int main(void)
{
    int n = test_fixtures();

    printf("fixtures: %d\n", n);
    test_holding();
    test_repair();
    test_check();
    test_fixer();
    test_nonstream_native();
    return AX_TEST_DONE("test_toolcall_text");
}
