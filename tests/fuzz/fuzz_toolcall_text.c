/* fuzz_toolcall_text.c - libFuzzer target: model text through the text tool-call recogniser,
 * fed whole and in pieces, plus argument repair and checks on the same bytes.
 *
 * Invariants (abort on breach): the events' text (a call's raw block included) is the input
 * byte for byte; a split feed gives the same events as a whole one; every call names an
 * offered tool and its input_json parses back to input; held bytes stay under the cap. The
 * streamed argument fixer gives the same bytes fed whole or in pieces, leaves valid JSON
 * (without raw control bytes) unchanged, and agrees with ax_tool_args_repair whenever that
 * repairs the text into an object. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_toolcall_text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP 4096

static const char TOOLS[] =
    "[{\"name\":\"Read\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"file_path\":"
    "{\"type\":\"string\"},\"limit\":{\"type\":\"integer\"}},\"required\":[\"file_path\"],"
    "\"additionalProperties\":false}},{\"name\":\"Bash\",\"input_schema\":{\"type\":\"object\","
    "\"properties\":{\"command\":{\"type\":\"string\"},\"bg\":{\"type\":\"boolean\"},"
    "\"env\":{\"type\":\"object\"},\"args\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
    "\"mode\":{\"enum\":[\"a\",\"b\"]}}}},{\"name\":\"x\"}]";

struct rec {
    struct ax_buf all;   /* every event's text */
    struct ax_buf trace; /* a rendering of the events, texts merged */
    int last_text;
};

static int on_event(struct ax_tctext_event *ev, void *ud)
{
    struct rec *r = ud;
    cJSON *back;

    if (ax_buf_append(&r->all, ev->text, ev->len) < 0)
        abort();
    if (ev->kind == AX_TCTEXT_TEXT) {
        if (ev->len == 0)
            abort();
        if (!r->last_text)
            ax_buf_append(&r->trace, "T:", 2);
        ax_buf_append(&r->trace, ev->text, ev->len);
        r->last_text = 1;
        return 0;
    }
    r->last_text = 0;
    if (ev->name == NULL || ev->input == NULL || ev->input_json == NULL ||
        strlen(ev->input_json) != ev->input_len || !cJSON_IsObject(ev->input))
        abort();
    if ((back = cJSON_ParseWithLength(ev->input_json, ev->input_len)) == NULL)
        abort();
    if (!cJSON_Compare(back, ev->input, 1))
        abort();
    cJSON_Delete(back);
    ax_buf_printf(&r->trace, "\nC:%s:%s:%s\n", ev->name, ev->input_json,
                  ev->check_error ? ev->check_error : "");
    return 0;
}

static void run(const cJSON *tools, const char *s, size_t n, size_t step, struct rec *r)
{
    struct ax_tctext t;
    size_t at;

    ax_buf_init(&r->all, 1u << 24);
    ax_buf_init(&r->trace, 1u << 26);
    r->last_text = 0;
    ax_tctext_init(&t, tools, CAP);
    for (at = 0; at < n; at += step) {
        size_t k = n - at < step ? n - at : step;
        if (ax_tctext_feed(&t, s + at, k, on_event, r) != 0)
            abort();
        if (t._hold.len > CAP)
            abort();
    }
    if (ax_tctext_finish(&t, on_event, r) != 0)
        abort();
    if (r->all.len != n || (n > 0 && memcmp(r->all.data, s, n) != 0))
        abort();
    ax_tctext_free(&t);
}

/* The fixer over s[0..n) in pieces of step bytes; the result in out. */
static void fix(const char *s, size_t n, size_t step, struct ax_buf *out)
{
    struct ax_tool_args_fixer f;
    size_t at;

    ax_tool_args_fix_init(&f);
    for (at = 0; at < n; at += step)
        if (ax_tool_args_fix_feed(&f, s + at, n - at < step ? n - at : step, out) < 0)
            abort();
    if (ax_tool_args_fix_finish(&f, out, 1) < 0)
        abort();
}

static int has_ctrl(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20)
            return 1;
    return 0;
}

/* A comma followed by more blanks than the streaming fixer holds: there it is released as it
 * came (documented at AX_TOOL_ARGS_FIX_HOLD), so the whole repair may differ. */
static int long_blank_run_after_comma(const char *s, size_t n)
{
    size_t i, k;

    for (i = 0; i < n; i++) {
        if (s[i] != ',')
            continue;
        for (k = i + 1; k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n' || s[k] == '\r');)
            k++;
        if (k - i >= AX_TOOL_ARGS_FIX_HOLD)
            return 1;
    }
    return 0;
}

static void check_fixer(const char *s, size_t n, size_t step)
{
    struct ax_buf a, b, rep;
    const char *end = NULL;
    cJSON *v, *x, *y;
    unsigned what;

    ax_buf_init(&a, 1u << 24);
    ax_buf_init(&b, 1u << 24);
    ax_buf_init(&rep, 1u << 24);
    fix(s, n, n > 0 ? n : 1, &a);
    fix(s, n, step, &b);
    if (a.len != b.len || (a.len > 0 && memcmp(a.data, b.data, a.len) != 0))
        abort();
    v = cJSON_ParseWithLengthOpts(s, n, &end, 0);
    if (v != NULL && end == s + n && !has_ctrl(s, n) &&
        (a.len != n || (n > 0 && memcmp(a.data, s, n) != 0)))
        abort(); /* valid JSON comes out unchanged */
    cJSON_Delete(v);
    x = ax_tool_args_repair(s, n, &rep, &what) == 0 && rep.len > 0
            ? cJSON_ParseWithLength(rep.data, rep.len)
            : NULL;
    if (cJSON_IsObject(x) && !long_blank_run_after_comma(s, n)) {
        /* printed, not cJSON_Compare: that fails on duplicate keys */
        char *px = cJSON_PrintUnformatted(x), *py = NULL;
        y = a.len > 0 ? cJSON_ParseWithLength(a.data, a.len) : NULL;
        if (y == NULL || px == NULL || (py = cJSON_PrintUnformatted(y)) == NULL ||
            strcmp(px, py) != 0)
            abort();
        cJSON_free(px);
        cJSON_free(py);
        cJSON_Delete(y);
    }
    cJSON_Delete(x);
    ax_buf_free(&a);
    ax_buf_free(&b);
    ax_buf_free(&rep);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *tools = cJSON_Parse(TOOLS), *args = NULL;
    const char *s = (const char *)data;
    struct rec whole, split;
    struct ax_buf rep;
    unsigned what;
    char why[AX_TCTEXT_WHY_MAX];
    size_t step = size > 0 ? (size_t)data[0] % 7 + 1 : 1;

    if (tools == NULL)
        return 0;
    run(tools, s, size, size > 0 ? size : 1, &whole);
    run(tools, s, size, step, &split);
    if (whole.trace.len != split.trace.len ||
        (whole.trace.len > 0 && memcmp(whole.trace.data, split.trace.data, whole.trace.len)))
        abort();
    ax_buf_free(&whole.all);
    ax_buf_free(&whole.trace);
    ax_buf_free(&split.all);
    ax_buf_free(&split.trace);

    check_fixer(s, size, step);
    ax_buf_init(&rep, 1u << 24);
    ax_tool_args_repair(s, size, &rep, &what);
    ax_buf_free(&rep);
    if (ax_tool_args_parse(s, size, &args, &what) == 0) {
        ax_tool_args_check(args, cJSON_GetObjectItemCaseSensitive(tools->child, "input_schema"),
                           why, sizeof(why));
        cJSON_Delete(args);
    }
    cJSON_Delete(tools);
    return 0;
}
