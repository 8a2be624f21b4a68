/* test_stream.c - the SSE reader and the streaming translator together, on recorded-style
 * upstream streams: tests/fixtures/streams/<case>.openai.sse in, <case>.anthropic.sse
 * expected byte for byte, at every split position of the input; every output is also
 * checked against the Anthropic event grammar. AX_UPDATE_FIXTURES=1 rewrites the expected
 * files (review the diff). */
#include "anthroxy_sse.h"
#include "anthroxy_stream.h"
#include "anthroxy_ids.h"
#include "anthroxy_json.h"
#include "anthroxy_utf8.h"
#include "ax_test.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- deterministic ids ---- */

static int id_counter;

static void test_ids(char *out, size_t n, const char *prefix, void *ud)
{
    (void)ud;
    snprintf(out, n, "%s%024d", prefix, ++id_counter);
}

/* ---- files ---- */

static void write_file(const char *path, const char *p, size_t n)
{
    FILE *f = fopen(path, "wb");

    if (f == NULL || fwrite(p, 1, n, f) != n)
        fprintf(stderr, "cannot write %s\n", path);
    if (f)
        fclose(f);
}

/* ---- the pipeline under test: reader -> translator ---- */

struct run {
    struct ax_stream st;
    struct ax_buf out;
    struct ax_error err;
    int failed; /* ax_stream_fail was called */
};

static int on_event(const char *event, const char *data, size_t len, void *ud)
{
    struct run *r = ud;
    int rc;

    (void)event;
    rc = ax_stream_feed(&r->st, data, len, &r->out, &r->err);
    if (rc == AX_EUPSTREAM) {
        r->failed = 1;
        return ax_stream_fail(&r->st, &r->err, &r->out) < 0 ? AX_ENOMEM : AX_ECANCELED;
    }
    return rc;
}

/* Runs input split at the given ascending offsets; returns the output (caller frees). */
static char *run_split(const char *in, size_t n, const size_t *cuts, int ncuts,
                       const struct ax_stream_opts *o, size_t *outlen, cJSON **summary)
{
    struct ax_sse rd;
    struct run r;
    size_t pos = 0;
    int i, rc = 0;

    id_counter = 0;
    memset(&r, 0, sizeof(r));
    ax_buf_init(&r.out, 1 << 24);
    ax_sse_init(&rd, 1 << 20);
    if (ax_stream_init(&r.st, o) < 0)
        abort();
    for (i = 0; i <= ncuts && rc == 0; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        rc = ax_sse_feed(&rd, in + pos, end - pos, on_event, &r);
        pos = end;
    }
    if (rc == 0 || rc == AX_ECANCELED) {
        ax_sse_finish(&rd);
        if (!r.failed && ax_stream_end(&r.st, &r.out, &r.err) == AX_EUPSTREAM)
            ax_stream_fail(&r.st, &r.err, &r.out);
    } else {
        fprintf(stderr, "feed failed: %s\n", ax_strerror(rc));
        ax_test_failures++;
    }
    if (summary != NULL)
        *summary = ax_stream_summary(&r.st);
    ax_sse_free(&rd);
    ax_stream_free(&r.st);
    if (r.out.data == NULL)
        r.out.data = calloc(1, 1);
    return ax_buf_take(&r.out, outlen);
}

/* ---- the Anthropic event grammar ---- */

/* message_start first (unless the stream failed before it), blocks with consecutive
 * indexes, started and stopped once, deltas matching their block's type, one open at a
 * time, thinking signed before its stop; ends with message_stop or error, nothing after. */
static void check_grammar(const char *name, const char *p, size_t n)
{
    const char *end = p + n;
    int started = 0, open = -1, next = 0, finished = 0, signed_ = 0;
    char open_type[16] = "";

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p)), *dl, *dnl;
        char ev[64];
        cJSON *d, *jidx;
        const char *type;
        int idx;

        if (nl == NULL || strncmp(p, "event: ", 7) != 0 || (size_t)(nl - p - 7) >= sizeof(ev)) {
            CHECKF(0, "%s: bad event line", name);
            return;
        }
        memcpy(ev, p + 7, (size_t)(nl - p - 7));
        ev[nl - p - 7] = '\0';
        dl = nl + 1;
        dnl = memchr(dl, '\n', (size_t)(end - dl));
        if (dnl == NULL || strncmp(dl, "data: ", 6) != 0 || dnl + 1 >= end || dnl[1] != '\n') {
            CHECKF(0, "%s: bad data line after %s", name, ev);
            return;
        }
        d = cJSON_ParseWithLength(dl + 6, (size_t)(dnl - dl - 6));
        CHECKF(d != NULL, "%s: %s data is not JSON", name, ev);
        type = d ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "type")) : NULL;
        CHECKF(type != NULL && strcmp(type, ev) == 0, "%s: event %s has type %s", name, ev,
               type ? type : "(none)");
        CHECKF(!finished, "%s: %s after the end", name, ev);
        jidx = d ? cJSON_GetObjectItemCaseSensitive(d, "index") : NULL;
        idx = cJSON_IsNumber(jidx) ? jidx->valueint : -1; /* no cast of NaN (no index) */
        if (strcmp(ev, "message_start") == 0) {
            CHECKF(!started, "%s: second message_start", name);
            started = 1;
        } else if (strcmp(ev, "ping") == 0) {
        } else if (strcmp(ev, "error") == 0) {
            CHECKF(open < 0, "%s: error with block %d open", name, open);
            finished = 1;
        } else {
            CHECKF(started, "%s: %s before message_start", name, ev);
        }
        if (strcmp(ev, "content_block_start") == 0) {
            const char *bt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(d, "content_block"), "type"));
            CHECKF(open < 0, "%s: block %d starts while %d open", name, idx, open);
            CHECKF(idx == next, "%s: block index %d, expected %d", name, idx, next);
            open = idx;
            next++;
            signed_ = 0;
            snprintf(open_type, sizeof(open_type), "%s", bt ? bt : "?");
        } else if (strcmp(ev, "content_block_delta") == 0) {
            const char *dt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(d, "delta"), "type"));
            CHECKF(idx == open, "%s: delta for %d while %d open", name, idx, open);
            dt = dt ? dt : "?";
            CHECKF(
                (strcmp(open_type, "text") == 0 && strcmp(dt, "text_delta") == 0) ||
                    (strcmp(open_type, "thinking") == 0 &&
                     (strcmp(dt, "thinking_delta") == 0 || strcmp(dt, "signature_delta") == 0)) ||
                    (strcmp(open_type, "tool_use") == 0 && strcmp(dt, "input_json_delta") == 0) ||
                    (strcmp(open_type, "compaction") == 0 && strcmp(dt, "compaction_delta") == 0),
                "%s: %s in a %s block", name, dt, open_type);
            if (strcmp(dt, "signature_delta") == 0)
                signed_ = 1;
        } else if (strcmp(ev, "content_block_stop") == 0) {
            CHECKF(idx == open, "%s: stop for %d while %d open", name, idx, open);
            CHECKF(strcmp(open_type, "thinking") != 0 || signed_, "%s: thinking unsigned", name);
            open = -1;
        } else if (strcmp(ev, "message_delta") == 0) {
            CHECKF(open < 0, "%s: message_delta with a block open", name);
        } else if (strcmp(ev, "message_stop") == 0) {
            finished = 1;
        }
        cJSON_Delete(d);
        p = dnl + 2;
    }
    CHECKF(finished, "%s: no message_stop or error at the end", name);
}

/* ---- the cases ---- */

struct scase {
    const char *name;    /* fixture base name */
    const char *variant; /* NULL, or a suffix of the expected file */
    int fallback;
    double scale;
    int stop_ug;     /* stop_sequences: ["UG"] */
    int full_splits; /* every split position (else a sample) */
    int tools;       /* offer the tools of tests/fixtures/toolcall_text/hermes.json */
};

static const struct scase cases[] = {
    {"text_only", NULL, 0, 0, 0, 1, 0},
    {"text_only", "scaled", 0, 0.5, 0, 0, 0},
    {"text_no_usage", NULL, 0, 0, 0, 1, 0},
    {"reasoning_then_text", NULL, 0, 0, 0, 1, 0},
    {"tool_5_fragments", NULL, 0, 0, 0, 1, 0},
    {"parallel_tools", NULL, 0, 0, 0, 1, 0},
    {"text_then_tool", NULL, 0, 0, 0, 1, 0},
    {"tool_then_text", NULL, 0, 0, 0, 1, 0},
    {"upstream_error", NULL, 0, 0, 0, 1, 0},
    {"truncated", NULL, 0, 0, 0, 1, 0},
    {"garbage_and_comments", NULL, 0, 0, 0, 1, 0},
    {"reasoning_only_fallback", NULL, 1, 0, 0, 1, 0},
    {"reasoning_only_fallback", "nofallback", 0, 0, 0, 0, 0},
    {"stop_sequence_vllm", NULL, 0, 0, 1, 1, 0},
    {"overflow_in_stream", NULL, 0, 0, 0, 1, 0},
    {"finish_without_done", NULL, 0, 0, 0, 1, 0},
    {"interleaved_tools", NULL, 0, 0, 0, 1, 0},
    {"llama_tools_required", NULL, 0, 0, 0, 1, 0},
    {"llama_tools_auto", NULL, 0, 0, 0, 0, 0},
    {"llama_tools_truncated", NULL, 0, 0, 0, 0, 0},
    {"bad_bytes", NULL, 0, 0, 0, 1, 0},
    {"text_call_hermes", NULL, 0, 0, 0, 1, 1},
    {"text_call_hermes", "notools", 0, 0, 0, 0, 0},
    {"text_call_qwen3", NULL, 0, 0, 0, 1, 1},
    {"text_then_tool", "tools", 0, 0, 0, 0, 1},
};

static cJSON *stop_ug;
static cJSON *fx_tools; /* the tools of toolcall_text/hermes.json */

static void case_opts(const struct scase *c, struct ax_stream_opts *o, int cjson)
{
    memset(o, 0, sizeof(*o));
    o->parse_with_cjson = cjson;
    o->model = "claude-test";
    o->input_estimate = 1234;
    o->usage_scale = c->scale;
    o->reasoning_fallback = c->fallback;
    o->stop_sequences = c->stop_ug ? stop_ug : NULL;
    o->tools = c->tools ? fx_tools : NULL;
}

/* cjson: 1 forces the cJSON chunk parser; both parsers must give the golden output. */
static void run_case(const struct scase *c, int update, int cjson)
{
    char path[512], name[128];
    struct ax_stream_opts o;
    char *in, *want, *got, *got2;
    size_t n, wn, gn, gn2, k, cuts[3];
    int mismatches = 0;

    snprintf(name, sizeof(name), "%s%s%s%s", c->name, c->variant ? "." : "",
             c->variant ? c->variant : "", cjson ? " (cJSON path)" : "");
    snprintf(path, sizeof(path), "%s/streams/%s.openai.sse", AX_FIXTURES, c->name);
    if ((in = ax_test_read_file(path, &n)) == NULL) {
        CHECKF(0, "%s: cannot read %s", name, path);
        return;
    }
    case_opts(c, &o, cjson);
    got = run_split(in, n, NULL, 0, &o, &gn, NULL);
    check_grammar(name, got, gn);
    /* whatever the upstream sent, the client gets well-formed UTF-8 */
    CHECKF(ax_utf8_valid_prefix(got, gn) == gn, "%s: ill-formed UTF-8 at byte %zu", name,
           ax_utf8_valid_prefix(got, gn));
    snprintf(path, sizeof(path), "%s/streams/%s%s%s.anthropic.sse", AX_FIXTURES, c->name,
             c->variant ? "." : "", c->variant ? c->variant : "");
    if (update)
        write_file(path, got, gn);
    want = ax_test_read_file(path, &wn);
    CHECKF(want != NULL && wn == gn && memcmp(want, got, gn) == 0, "%s: output differs from %s",
           name, path);

    /* every split position (one cut) for the full cases, every 7th for the others and for
     * the cJSON path (the lean path is what runs); three cuts close together every 7th;
     * then byte by byte */
    for (k = 1; k < n && mismatches < 3; k++) {
        int ncuts = 1;
        if ((!c->full_splits || cjson) && k % 7 != 0)
            continue;
        cuts[0] = k;
        if (k + 13 < n) {
            cuts[ncuts++] = k + 13;
            if (k + 14 < n)
                cuts[ncuts++] = k + 14;
        }
        got2 = run_split(in, n, cuts, 1, &o, &gn2, NULL);
        if (gn2 != gn || memcmp(got, got2, gn) != 0) {
            CHECKF(0, "%s: split at %zu gives different output", name, k);
            mismatches++;
        }
        free(got2);
        if (k % 7 != 0)
            continue;
        got2 = run_split(in, n, cuts, ncuts, &o, &gn2, NULL);
        if (gn2 != gn || memcmp(got, got2, gn) != 0) {
            CHECKF(0, "%s: splits at %zu.. give different output", name, k);
            mismatches++;
        }
        free(got2);
    }
    {
        size_t *all = malloc(n * sizeof(*all));
        for (k = 1; k < n; k++)
            all[k - 1] = k;
        got2 = run_split(in, n, all, (int)(n - 1), &o, &gn2, NULL);
        CHECKF(gn2 == gn && memcmp(got, got2, gn) == 0, "%s: byte-by-byte differs", name);
        free(got2);
        free(all);
    }
    free(in);
    free(want);
    free(got);
}

/* ---- the lean chunk parser against cJSON ---- */

static char *find(char *p, size_t n, const char *needle)
{
    size_t m = strlen(needle), i;

    for (i = 0; i + m <= n; i++)
        if (memcmp(p + i, needle, m) == 0)
            return p + i;
    return NULL;
}

static uint32_t rng_state = 12345;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* Feeds prefix chunks then payload to a fresh stream, parser chosen; output + codes. */
static void one_payload(const char *payload, size_t len, int cjson, struct ax_buf *out,
                        int *rc_feed, int *rc_end, uint64_t *garbage)
{
    struct ax_stream_opts o = {.model = "m", .input_estimate = 5, .parse_with_cjson = cjson};
    static const char pre[] = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}";
    struct ax_stream st;
    struct ax_error err;

    id_counter = 0;
    ax_buf_reset(out);
    memset(&err, 0, sizeof(err));
    ax_stream_init(&st, &o);
    ax_stream_feed(&st, pre, sizeof(pre) - 1, out, &err);
    *rc_feed = ax_stream_feed(&st, payload, len, out, &err);
    if (*rc_feed == AX_EUPSTREAM)
        ax_stream_fail(&st, &err, out);
    *rc_end = ax_stream_feed(&st, "[DONE]", 6, out, &err);
    if (*rc_end == 0)
        *rc_end = ax_stream_end(&st, out, &err);
    *garbage = st.garbage;
    ax_stream_free(&st);
}

static int compare_parsers(const char *payload, size_t len)
{
    struct ax_buf a, b;
    int fa, ea, fb, eb, same;
    uint64_t ga, gb;

    ax_buf_init(&a, 1 << 22);
    ax_buf_init(&b, 1 << 22);
    one_payload(payload, len, 0, &a, &fa, &ea, &ga);
    one_payload(payload, len, 1, &b, &fb, &eb, &gb);
    same = fa == fb && ea == eb && ga == gb && a.len == b.len &&
           (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
    if (!same)
        fprintf(stderr, "lean and cJSON parsers differ on: %.*s\n", (int)len, payload);
    ax_buf_free(&a);
    ax_buf_free(&b);
    return same;
}

static void test_lean_matches_cjson(void)
{
    static const char *const edge[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\\\"b\\\\c\\n\\t\\r\\b\\f\"}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\u00e9\\/\"}}]}",
        "{\"choices\":[{\"index\":1,\"delta\":{\"content\":\"other choice\"}}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"no index\"},\"index\":0.0}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"neg zero\"},\"index\":-0}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"null index\"},\"index\":null}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"a\",\"content\":\"b\"}}]}",
        "{\"choices\":[{\"delta\":{\"reasoning\":\"r\",\"reasoning_content\":\"rc\"}}]}",
        "{\"choices\":[{\"delta\":{\"reasoning_content\":\"\",\"reasoning\":\"r\"}}]}",
        "{\"choices\":[{\"delta\":{\"reasoning_content\":5,\"content\":null}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":null,\"content\":\"t\"}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[],\"content\":\"t\"}}]}",
        "{\"choices\":[{\"delta\":[1],\"finish_reason\":\"stop\"}]}",
        "{\"choices\":[1,\"x\",{\"delta\":{\"content\":\"c\"}}]}",
        "{\"choices\":{\"delta\":{\"content\":\"obj\"}}}",
        "{\"choices\":[],\"usage\":null,\"error\":null}",
        "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"stop_reason\":null}]}",
        "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"stop_reason\":\"x\"}]}",
        "{\"choices\":[{\"delta\":{},\"finish_reason\":\"\"}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"x\"}}]} ",
        "{\"choices\":[{\"delta\":{\"content\":\"x\"}}]}x",
        "{\"choices\":[{\"delta\":{\"content\":\"x\"}}],}",
        "{\"a\":[1e5,-2.5E-3,true,false,null,{\"b\":{}}],\"choices\":[{\"delta\":{\"content\":"
        "\"n\"}}]}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":\"ctl\x01\"}",
        "\xEF\xBB\xBF{\"choices\":[]}",
        "{\"error\":{\"message\":\"boom\"}}",
        "{\"choices\":[{\"delta\":{\"content\":\"caf\xC3\xA9 \xFF\"}}]}",
        "   {\"choices\":[{\"delta\":{\"content\":\"lead ws\"}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":"
        "{\"name\":\"f\",\"arguments\":\"{\\\"k\\\":\\n1\"}}]}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":5}}]}}]"
        "}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"a\",\"function\":{\"name\":\"f\"}},"
        "{\"id\":\"b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":1.5,\"function\":{\"name\":\"f\"}}]}}"
        "]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":\"0\",\"function\":{\"name\":\"f\"}}]"
        "}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":3000000000,\"function\":{\"name\":"
        "\"f\"}}]}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":null,\"id\":\"\"}]}}]"
        "}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":[1]}]}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[1]}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":{\"index\":0}}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\","
        "\"name\":\"g\"}}]}}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\"}},"
        "{\"index\":0,\"function\":{\"arguments\":\"{\\\"x\\\"\"}},{\"index\":0,\"function\":{"
        "\"arguments\":\":1}\"}}]}}]}",
    };
    static const char alphabet[] = "\"\\{}[],:0-1.eEnulltrf \x01\xC3";
    char buf[2048];
    size_t i, k, n;
    int bad = 0, m;
    struct ax_buf corpus;
    char path[512];

    for (i = 0; i < sizeof(edge) / sizeof(edge[0]); i++)
        if (!compare_parsers(edge[i], strlen(edge[i])))
            ax_test_failures++;
    /* mutations of every chunk of the fixtures: a byte replaced, inserted or dropped, the
     * payload cut short; the two parsers must agree on every one */
    ax_buf_init(&corpus, 1 << 24);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *in;
        size_t len;
        if (cases[i].variant != NULL)
            continue;
        snprintf(path, sizeof(path), "%s/streams/%s.openai.sse", AX_FIXTURES, cases[i].name);
        if ((in = ax_test_read_file(path, &len)) != NULL) {
            ax_buf_append(&corpus, in, len);
            free(in);
        }
    }
    for (k = 0; k + 6 < corpus.len && bad < 5;) {
        char *line = find(corpus.data + k, corpus.len - k, "data: {");
        char *end;
        if (line == NULL)
            break;
        line += 6;
        end = memchr(line, '\n', corpus.len - (size_t)(line - corpus.data));
        if (end == NULL)
            break;
        n = (size_t)(end - line);
        k = (size_t)(end - corpus.data);
        if (end > line && end[-1] == '\r')
            n--;
        if (n + 2 >= sizeof(buf))
            continue;
        for (m = 0; m < 40 && bad < 5; m++) {
            size_t len = n, pos;
            memcpy(buf, line, n);
            pos = rng() % n;
            switch (rng() % 4) {
            case 0:
                buf[pos] = alphabet[rng() % (sizeof(alphabet) - 1)];
                break;
            case 1:
                memmove(buf + pos + 1, buf + pos, n - pos);
                buf[pos] = alphabet[rng() % (sizeof(alphabet) - 1)];
                len++;
                break;
            case 2:
                memmove(buf + pos, buf + pos + 1, n - pos - 1);
                len--;
                break;
            default:
                len = pos;
                break;
            }
            if (!compare_parsers(buf, len)) {
                ax_test_failures++;
                bad++;
            }
        }
        if (!compare_parsers(line, n)) {
            ax_test_failures++;
            bad++;
        }
    }
    ax_buf_free(&corpus);
}

/* ---- targeted checks on top of the golden files ---- */

static char *run_text(const char *in, const struct ax_stream_opts *o, cJSON **summary)
{
    size_t n;
    return run_split(in, strlen(in), NULL, 0, o, &n, summary);
}

static void test_tool_arguments_not_lost(void)
{
    struct ax_stream_opts o = {.model = "m"};
    cJSON *sum = NULL, *blk, *input;
    char *out;
    const char *in =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a1\","
        "\"function\":{\"name\":\"Write\",\"arguments\":\"{\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
        "{\"arguments\":\"\\\"k\\\": [1, \"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
        "{\"arguments\":\"2]}\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n"
        "data: [DONE]\n\n";

    out = run_text(in, &o, &sum);
    CHECK(strstr(out, "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_a1\",\"name\":"
                      "\"Write\",\"input\":{}}") != NULL);
    CHECK(strstr(out, "\"partial_json\":\"{\"") != NULL);
    /* a comma ending a fragment waits for the next byte (a trailing comma is repaired) */
    CHECK(strstr(out, "\"partial_json\":\"\\\"k\\\": [1\"") != NULL);
    CHECK(strstr(out, "\"partial_json\":\", 2]}\"") != NULL);
    CHECK(strstr(out, "\"stop_reason\":\"tool_use\"") != NULL);
    CHECK(strstr(out, "\"type\":\"text\"") == NULL); /* no empty text block */
    blk = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(sum, "content"), 0);
    input = cJSON_GetObjectItemCaseSensitive(blk, "input");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(input, "k")) == 2);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(blk, "arguments_length")) == 13);
    CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(sum, "stop_reason")),
                 "tool_use") == 0);
    cJSON_Delete(sum);
    free(out);
}

static void test_name_after_arguments(void)
{
    /* a server that sends the id, then arguments, then the name: nothing is lost */
    struct ax_stream_opts o = {.model = "m"};
    char *out;
    const char *in =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"z\","
        "\"function\":{\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
        "{\"name\":\"f\",\"arguments\":\":1}\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n";

    out = run_text(in, &o, NULL);
    CHECK(strstr(out, "\"name\":\"f\"") != NULL);
    CHECK(strstr(out, "\"partial_json\":\"{\\\"a\\\":1}\"") != NULL);
    check_grammar("name_after_arguments", out, strlen(out));
    free(out);
}

static void test_context_management_and_compaction(void)
{
    /* what the context-management policies reported: a compaction block at index 0, the
     * answer's blocks after it, applied_edits in message_delta */
    struct ax_stream_opts o = {.model = "m",
                               .context_management = "{\"applied_edits\":[]}",
                               .compaction = 1,
                               .compaction_content = "the \"summary\"",
                               .compaction_usage = "{\"type\":\"compaction\",\"input_tokens\":9}"};
    struct ax_stream st;
    struct ax_buf out;
    char *txt;
    const char *in = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},"
                     "\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

    txt = run_text(in, &o, NULL);
    CHECK(strstr(txt, "\"index\":0,\"content_block\":{\"type\":\"compaction\"") != NULL);
    CHECK(strstr(txt, "{\"type\":\"compaction_delta\",\"content\":\"the \\\"summary\\\"\"") !=
          NULL);
    CHECK(strstr(txt, "\"index\":1,\"content_block\":{\"type\":\"text\"") != NULL);
    CHECK(strstr(txt, ",\"context_management\":{\"applied_edits\":[]}}") != NULL);
    CHECK(strstr(txt, "\"iterations\":[{\"type\":\"compaction\",\"input_tokens\":9},{") != NULL);
    CHECK(strstr(txt, "\"type\":\"message\"}]") != NULL);
    check_grammar("context_management", txt, strlen(txt));
    free(txt);

    /* pause_after_compaction: the block alone, stop_reason compaction; a failed one is null */
    o.compaction_content = NULL;
    ax_buf_init(&out, 1 << 20);
    CHECK(ax_stream_init(&st, &o) == 0);
    CHECK(ax_stream_end_paused(&st, &out) == 0);
    CHECK(strstr(out.data, "\"compaction_delta\",\"content\":null") != NULL);
    CHECK(strstr(out.data, "\"stop_reason\":\"compaction\"") != NULL);
    CHECK(strstr(out.data, "\"index\":1") == NULL);
    /* paused: no entry for an answer */
    CHECK(strstr(out.data, "\"iterations\":[{\"type\":\"compaction\",\"input_tokens\":9}]") !=
          NULL);
    CHECK(strstr(out.data, "event: message_stop") != NULL);
    ax_stream_free(&st);
    ax_buf_free(&out);
}

static void test_escaping(void)
{
    struct ax_stream_opts o = {.model = "m\"x", .message_id = "msg_fixed"};
    char *out;
    const char *in =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"q\\\"b\\\\ \\n\\t\\u0001"
        "\\u0000z</\\u00e9\"}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";

    out = run_text(in, &o, NULL);
    /* the escaped NUL does not cut the text short (it becomes U+FFFD) */
    CHECK(strstr(out, "\"text\":\"q\\\"b\\\\ \\n\\t\\u0001\xEF\xBF\xBDz</\xC3\xA9\"") != NULL);
    CHECK(strstr(out, "\"id\":\"msg_fixed\"") != NULL);
    CHECK(strstr(out, "\"model\":\"m\\\"x\"") != NULL);
    check_grammar("escaping", out, strlen(out));
    free(out);
}

static void test_begin_ping_then_chunks(void)
{
    struct ax_stream_opts o = {.model = "m", .input_estimate = 77};
    struct ax_stream st;
    struct ax_buf out;
    struct ax_error err;
    const char *c1 = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}";
    const char *c2 = "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}";
    size_t len1;

    id_counter = 0;
    ax_buf_init(&out, 1 << 20);
    CHECK(ax_stream_init(&st, &o) == 0);
    CHECK(ax_stream_begin(&st, &out) == 0);
    CHECK(ax_stream_ping(&out) == 0);
    len1 = out.len;
    CHECK(ax_stream_begin(&st, &out) == 0 && out.len == len1); /* idempotent */
    CHECK(strncmp(out.data, "event: message_start\n", 21) == 0);
    CHECK(strstr(out.data, "\"input_tokens\":77") != NULL);
    CHECK(strstr(out.data, "event: ping\ndata: {\"type\": \"ping\"}\n\n") != NULL);
    CHECK(strstr(out.data, "\"id\":\"msg_000000000000000000000001\"") != NULL);
    CHECK(ax_stream_feed(&st, c1, strlen(c1), &out, &err) == 0);
    CHECK(ax_stream_feed(&st, c2, strlen(c2), &out, &err) == 0);
    CHECK(ax_stream_end(&st, &out, &err) == 0);
    CHECK(st.state == AX_STREAM_ENDED);
    CHECK(strcmp(st.stop_reason, "end_turn") == 0);
    CHECK(st.output_estimate > 0);
    /* without upstream usage: the estimate, and the output estimate, in message_delta */
    CHECK(strstr(out.data, "\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{"
                           "\"input_tokens\":77") != NULL);
    check_grammar("begin_ping", out.data, out.len);
    len1 = out.len;
    CHECK(ax_stream_end(&st, &out, &err) == 0 && out.len == len1);  /* once */
    CHECK(ax_stream_fail(&st, NULL, &out) == 0 && out.len == len1); /* no error after end */
    CHECK(ax_stream_feed(&st, c1, strlen(c1), &out, &err) == 0 && out.len == len1);
    ax_stream_free(&st);
    ax_buf_free(&out);
}

static void test_truncated_is_not_end_turn(void)
{
    struct ax_stream_opts o = {.model = "m"};
    struct ax_stream st;
    struct ax_buf out;
    struct ax_error err;
    const char *c1 = "{\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}}]}";

    ax_buf_init(&out, 1 << 20);
    CHECK(ax_stream_init(&st, &o) == 0);
    CHECK(ax_stream_feed(&st, c1, strlen(c1), &out, &err) == 0);
    memset(&err, 0, sizeof(err));
    CHECK(ax_stream_end(&st, &out, &err) == AX_EUPSTREAM);
    CHECK(err.status == 502 && strcmp(err.type, "api_error") == 0);
    CHECK(strstr(out.data, "end_turn") == NULL && strstr(out.data, "message_delta") == NULL);
    CHECK(ax_stream_fail(&st, &err, &out) == 0);
    CHECK(strstr(out.data, "\"type\":\"signature_delta\"") != NULL);
    CHECK(strstr(out.data, "event: content_block_stop") != NULL);
    CHECK(strstr(out.data, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
                           "\"api_error\",\"message\":") != NULL);
    CHECK(strstr(out.data, "end_turn") == NULL);
    check_grammar("truncated_api", out.data, out.len);
    {
        cJSON *sum = ax_stream_summary(&st);
        CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(sum, "stop_reason")),
                     "error") == 0);
        cJSON_Delete(sum);
    }
    ax_stream_free(&st);
    ax_buf_free(&out);
}

static void test_out_limit_leaves_no_half_event(void)
{
    struct ax_stream_opts o = {.model = "m"};
    struct ax_stream st;
    struct ax_buf out;
    struct ax_error err;
    char chunk[512];
    size_t before;
    int rc = 0, i;

    ax_buf_init(&out, 700);
    CHECK(ax_stream_init(&st, &o) == 0);
    snprintf(chunk, sizeof(chunk), "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s\"}}]}",
             "0123456789012345678901234567890123456789");
    for (i = 0; i < 20 && rc == 0; i++) {
        before = out.len;
        rc = ax_stream_feed(&st, chunk, strlen(chunk), &out, &err);
    }
    CHECK(rc == AX_ETOOBIG);
    CHECK(out.len == before);
    CHECK(out.len >= 2 && memcmp(out.data + out.len - 2, "\n\n", 2) == 0);
    ax_stream_free(&st);
    ax_buf_free(&out);
}

static void test_garbage_counted(void)
{
    struct ax_stream_opts o = {.model = "m"};
    struct ax_stream st;
    struct ax_buf out;
    struct ax_error err;

    ax_buf_init(&out, 1 << 20);
    CHECK(ax_stream_init(&st, &o) == 0);
    CHECK(ax_stream_feed(&st, "nope", 4, &out, &err) == 0);
    CHECK(ax_stream_feed(&st, "{\"a\":1} x", 9, &out, &err) == 0); /* trailing garbage */
    CHECK(ax_stream_feed(&st, "[1]", 3, &out, &err) == 0);
    CHECK(st.garbage == 3);
    CHECK(out.len == 0); /* nothing emitted for garbage, not even message_start */
    ax_stream_free(&st);
    ax_buf_free(&out);
}

static void test_summary_inputs(void)
{
    /* a call without arguments has input {}; invalid arguments are flagged, not dropped */
    struct ax_stream_opts o = {.model = "m"};
    cJSON *sum = NULL, *content, *blk;
    char *out;
    const char *in =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\","
        "\"function\":{\"name\":\"noargs\",\"arguments\":\"\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\","
        "\"function\":{\"name\":\"bad\",\"arguments\":\"{\\\"x\\\": 1} junk\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n";

    out = run_text(in, &o, &sum);
    content = cJSON_GetObjectItemCaseSensitive(sum, "content");
    CHECK(cJSON_GetArraySize(content) == 2);
    blk = cJSON_GetArrayItem(content, 0);
    CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(blk, "input")));
    CHECK(cJSON_GetObjectItemCaseSensitive(blk, "input_error") == NULL);
    blk = cJSON_GetArrayItem(content, 1);
    CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "input_error")),
                 "invalid") == 0);
    CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "partial_json")),
                 "{\"x\": 1} junk") == 0);
    CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "id")), "toolu_b") ==
          0);
    cJSON_Delete(sum);
    free(out);
}

static void test_ollama_style_calls(void)
{
    /* whole calls in one chunk, no index, finish_reason "stop": two blocks, tool_use */
    struct ax_stream_opts o = {.model = "m"};
    char *out;
    const char *in =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
        "\"tool_calls\":[{\"id\":\"call_1\",\"function\":{\"name\":\"a\",\"arguments\":"
        "\"{\\\"x\\\":1}\"}},{\"id\":\"call_2\",\"function\":{\"name\":\"b\",\"arguments\":"
        "\"{}\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
        "data: [DONE]\n\n";

    out = run_text(in, &o, NULL);
    CHECK(strstr(out,
                 "\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_call_1\","
                 "\"name\":\"a\"") != NULL);
    CHECK(strstr(out,
                 "\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_call_2\","
                 "\"name\":\"b\"") != NULL);
    CHECK(strstr(out, "\"partial_json\":\"{\\\"x\\\":1}\"") != NULL);
    CHECK(strstr(out, "\"stop_reason\":\"tool_use\"") != NULL);
    CHECK(strstr(out, "\"type\":\"text\"") == NULL);
    check_grammar("ollama_style", out, strlen(out));
    free(out);
}

/* A call's first fragment without "arguments" (the lean parser's piece stays NULL): no
 * NULL + 0 in lean_decode (UBSan, tests/fuzz/regressions/fuzz_stream/tool-fragment-without-
 * arguments), and the call still gets its block and, with no arguments at all, "{}". */
static void test_fragment_without_arguments(void)
{
    struct ax_stream_opts o = {.model = "m"};
    char *out;
    const char *in = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
                     "\"id\":\"a\",\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}}]}\n\n"
                     "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":"
                     "\"tool_calls\"}]}\n\n"
                     "data: [DONE]\n\n";

    out = run_text(in, &o, NULL);
    CHECK(strstr(out, "\"type\":\"tool_use\",\"id\":\"toolu_a\",\"name\":\"f\"") != NULL);
    CHECK(strstr(out, "\"stop_reason\":\"tool_use\"") != NULL);
    check_grammar("fragment_without_arguments", out, strlen(out));
    free(out);
}

/* Random sequences of chunk kinds, randomly split: the output always follows the event
 * grammar (whatever the upstream does, the client sees a well-formed stream ending in
 * message_stop or error), and both chunk parsers agree. */
static void test_random_soup(void)
{
    static const char *const pool[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t\\n\\\"x\"}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"r\"}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"role\":\"assistant\"}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
        "{\"arguments\":\"\\\"k\\\":1\"}}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\","
        "\"function\":{\"name\":\"g\",\"arguments\":\"\"}}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":"
        "{\"arguments\":\"}\"}}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":2,\"id\":\"c\","
        "\"function\":{\"arguments\":\"[\"}}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}",
        "{\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}",
        "{\"error\":{\"code\":503,\"message\":\"busy\"}}",
        "not json",
        "[DONE]",
    };
    char stream[8192];
    int round, bad = 0;

    for (round = 0; round < 400 && bad < 3; round++) {
        size_t n = 0, cuts[4], gn, gn2;
        int k, count = 1 + (int)(rng() % 12), ncuts = 0;
        struct ax_stream_opts o = {.model = "m", .reasoning_fallback = (int)(rng() % 2)};
        char *got, *got2;

        for (k = 0; k < count; k++) {
            const char *c = pool[rng() % (sizeof(pool) / sizeof(pool[0]))];
            /* rarer: the error and [DONE] would end most rounds at once */
            if ((strncmp(c, "{\"error", 7) == 0 || c[0] == '[') && rng() % 4 != 0)
                continue;
            n += (size_t)snprintf(stream + n, sizeof(stream) - n, "data: %s\n\n", c);
        }
        if (rng() % 5 == 0 && n > 3)
            n -= 1 + rng() % 3; /* cut short */
        if (n == 0)
            continue;
        for (k = 0; k < 4; k++) {
            size_t c = 1 + rng() % n;
            if (c < n && (ncuts == 0 || c > cuts[ncuts - 1]))
                cuts[ncuts++] = c;
        }
        got = run_split(stream, n, cuts, ncuts, &o, &gn, NULL);
        check_grammar("soup", got, gn);
        o.parse_with_cjson = 1;
        got2 = run_split(stream, n, NULL, 0, &o, &gn2, NULL);
        if (gn != gn2 || memcmp(got, got2, gn) != 0) {
            fprintf(stderr, "%s:%d: soup round %d: parsers or splits differ\n%.*s\n", __FILE__,
                    __LINE__, round, (int)n, stream);
            ax_test_failures++;
            bad++;
        }
        free(got);
        free(got2);
    }
}

static void test_summary_budget(void)
{
    struct ax_stream_opts o = {.model = "m", .max_tool_args_bytes = 4};
    cJSON *sum = NULL, *blk;
    char *out;
    const char *in =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abc\"}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
        "\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n";

    out = run_text(in, &o, &sum);
    CHECK(strstr(out, "\"partial_json\":\"1}\"") != NULL); /* streamed even over budget */
    blk = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(sum, "content"), 0);
    CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "type")), "text") == 0);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(blk, "text_length")) == 3);
    blk = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(sum, "content"), 1);
    CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "input_error")),
                 "truncated") == 0);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(blk, "arguments_length")) == 7);
    cJSON_Delete(sum);
    free(out);
}

/* ---- tool calls written as text (tests/fixtures/toolcall_text/) ----
 *
 * Each fixture's text is the answer's content: sent as two content deltas split at every
 * character boundary, one delta per character, and three-character deltas with the SSE bytes
 * cut everywhere. The client must see the fixture's expected blocks: text blocks holding the
 * text runs, tool_use blocks whose partial_json parses to the expected input. */

#include <dirent.h>

struct tc_fixture {
    cJSON *fx;
    const cJSON *tools, *expect;
    const char *text;
    size_t n;
};

static void sse_content(struct ax_buf *b, const char *s, size_t n)
{
    cJSON *c = cJSON_CreateObject(), *ch = cJSON_AddArrayToObject(c, "choices");
    cJSON *one = cJSON_CreateObject(), *d;
    char *txt;

    cJSON_AddItemToArray(ch, one);
    cJSON_AddNumberToObject(one, "index", 0);
    d = cJSON_AddObjectToObject(one, "delta");
    ax_json_add_stringn(d, "content", s, n);
    txt = cJSON_PrintUnformatted(c);
    ax_buf_printf(b, "data: %s\n\n", txt);
    cJSON_free(txt);
    cJSON_Delete(c);
}

static void sse_end(struct ax_buf *b)
{
    ax_buf_puts(b, "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}"
                   "\n\ndata: [DONE]\n\n");
}

/* The blocks the client got, as the fixtures' "expect" says them; NULL on a malformed event. */
static cJSON *client_blocks(const char *out, size_t n, const char **stop)
{
    cJSON *blocks = cJSON_CreateArray(), *cur = NULL, *ev;
    struct ax_buf acc;
    const char *p = out, *e = out + n, *nl;
    int kind = 0; /* 1 text, 2 tool */

    *stop = NULL;
    ax_buf_init(&acc, 1 << 24);
    while (p < e && (p = strstr(p, "data: ")) != NULL) {
        const cJSON *ty, *d, *cb;
        p += 6;
        nl = strchr(p, '\n');
        ev = cJSON_ParseWithLength(p, (size_t)(nl - p));
        p = nl;
        ty = cJSON_GetObjectItemCaseSensitive(ev, "type");
        if (!cJSON_IsString(ty)) {
            cJSON_Delete(ev);
            continue;
        }
        if (strcmp(ty->valuestring, "content_block_start") == 0) {
            cb = cJSON_GetObjectItemCaseSensitive(ev, "content_block");
            ty = cJSON_GetObjectItemCaseSensitive(cb, "type");
            cur = cJSON_CreateObject();
            ax_buf_reset(&acc);
            kind = strcmp(ty->valuestring, "text") == 0 ? 1 : 2;
            if (kind == 2) {
                const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cb, "id"));
                CHECK(id != NULL && strncmp(id, "toolu_", 6) == 0);
                cJSON_AddStringToObject(
                    cur, "call",
                    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cb, "name")));
            }
        } else if (strcmp(ty->valuestring, "content_block_delta") == 0) {
            d = cJSON_GetObjectItemCaseSensitive(ev, "delta");
            const char *t = cJSON_GetStringValue(
                cJSON_GetObjectItemCaseSensitive(d, kind == 1 ? "text" : "partial_json"));
            CHECK(t != NULL);
            if (t != NULL)
                ax_buf_puts(&acc, t);
        } else if (strcmp(ty->valuestring, "content_block_stop") == 0 && cur != NULL) {
            if (kind == 1) {
                ax_json_add_stringn(cur, "text", acc.data ? acc.data : "", acc.len);
            } else {
                cJSON *in = cJSON_ParseWithLength(acc.data ? acc.data : "", acc.len);
                CHECKF(cJSON_IsObject(in), "partial_json %.*s", (int)acc.len, acc.data);
                cJSON_AddItemToObject(cur, "input", in ? in : cJSON_CreateNull());
            }
            cJSON_AddItemToArray(blocks, cur);
            cur = NULL;
        } else if (strcmp(ty->valuestring, "message_delta") == 0) {
            static char reason[32];
            d = cJSON_GetObjectItemCaseSensitive(ev, "delta");
            snprintf(reason, sizeof(reason), "%s",
                     cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "stop_reason")));
            *stop = reason;
        }
        cJSON_Delete(ev);
    }
    cJSON_Delete(cur);
    ax_buf_free(&acc);
    return blocks;
}

/* The fixture's expectation without what the stream does not show (ids, repairs, errors). */
static cJSON *expected_blocks(const cJSON *expect, int *calls, int *failures, int *repairs)
{
    cJSON *out = cJSON_CreateArray(), *e;
    const cJSON *x;

    *calls = *failures = *repairs = 0;
    cJSON_ArrayForEach(x, expect)
    {
        e = cJSON_CreateObject();
        if (cJSON_GetObjectItemCaseSensitive(x, "call") != NULL) {
            (*calls)++;
            *failures += cJSON_GetObjectItemCaseSensitive(x, "check_error") != NULL;
            *repairs += cJSON_GetObjectItemCaseSensitive(x, "repairs") != NULL;
            cJSON_AddItemToObject(e, "call",
                                  cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(x, "call"), 1));
            cJSON_AddItemToObject(e, "input",
                                  cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(x, "input"), 1));
        } else {
            cJSON_AddItemToObject(e, "text",
                                  cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(x, "text"), 1));
        }
        cJSON_AddItemToArray(out, e);
    }
    return out;
}

/* One stream: the text as deltas cut at cuts[] (character offsets in bytes), SSE bytes cut
 * at every sse_cut-th byte (0: not cut). Checks the blocks, stop reason and counters. */
static int tc_run(const struct tc_fixture *f, const char *file, const size_t *cuts, int ncuts,
                  size_t sse_step, int cjson, const cJSON *want, int calls, int failures,
                  int repairs, const char *how, size_t at)
{
    struct ax_stream_opts o;
    struct ax_buf in;
    struct ax_sse rd;
    struct run r;
    size_t pos = 0, *sc = NULL, nsc = 0, k, outlen;
    cJSON *got;
    const char *stop;
    char *out;
    int i, ok = 1;

    memset(&o, 0, sizeof(o));
    o.model = "m";
    o.tools = f->tools;
    o.parse_with_cjson = cjson;
    ax_buf_init(&in, 1 << 24);
    for (i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : f->n;
        if (end > pos)
            sse_content(&in, f->text + pos, end - pos);
        pos = end;
    }
    sse_end(&in);
    if (sse_step > 0) {
        sc = malloc(in.len * sizeof(*sc));
        for (k = sse_step; k < in.len; k += sse_step)
            sc[nsc++] = k;
    }
    /* run_split, keeping the counters */
    memset(&r, 0, sizeof(r));
    ax_buf_init(&r.out, 1 << 24);
    ax_sse_init(&rd, 1 << 20);
    ax_stream_init(&r.st, &o);
    pos = 0;
    for (k = 0; k <= nsc; k++) {
        size_t end = k < nsc ? sc[k] : in.len;
        ax_sse_feed(&rd, in.data + pos, end - pos, on_event, &r);
        pos = end;
    }
    ax_sse_finish(&rd);
    CHECK(ax_stream_end(&r.st, &r.out, &r.err) == 0);
    check_grammar(file, r.out.data, r.out.len);
    CHECKF(ax_utf8_valid_prefix(r.out.data, r.out.len) == r.out.len, "%s: UTF-8", file);
    got = client_blocks(r.out.data, r.out.len, &stop);
    if (!cJSON_Compare(got, want, 1)) {
        char *x = cJSON_PrintUnformatted(got), *y = cJSON_PrintUnformatted(want);
        fprintf(stderr, "%s (%s %zu%s):\n  got      %s\n  expected %s\n", file, how, at,
                cjson ? ", cJSON" : "", x, y);
        cJSON_free(x);
        cJSON_free(y);
        ax_test_failures++;
        ok = 0;
    }
    CHECKF(stop != NULL && strcmp(stop, calls > 0 ? "tool_use" : "end_turn") == 0, "%s: stop %s",
           file, stop ? stop : "(none)");
    CHECKF(r.st.tool_stats.text_calls == (unsigned)calls, "%s: %u text calls", file,
           r.st.tool_stats.text_calls);
    CHECKF(r.st.tool_stats.schema_failures == (unsigned)failures, "%s: %u failures", file,
           r.st.tool_stats.schema_failures);
    CHECKF((r.st.tool_stats.repaired > 0) == (repairs > 0), "%s: %u repaired", file,
           r.st.tool_stats.repaired);
    out = ax_buf_take(&r.out, &outlen);
    free(out);
    cJSON_Delete(got);
    ax_sse_free(&rd);
    ax_stream_free(&r.st);
    ax_buf_free(&in);
    free(sc);
    return ok;
}

static void test_text_call_fixture(const char *file)
{
    char path[512];
    struct tc_fixture f;
    size_t len, k, *every;
    char *raw;
    cJSON *want;
    int calls, failures, repairs, bad = 0, nev = 0;

    snprintf(path, sizeof(path), "%s/toolcall_text/%s", AX_FIXTURES, file);
    if ((raw = ax_test_read_file(path, &len)) == NULL) {
        CHECKF(0, "%s", path);
        return;
    }
    f.fx = cJSON_ParseWithLength(raw, len);
    free(raw);
    f.tools = cJSON_GetObjectItemCaseSensitive(f.fx, "tools");
    f.expect = cJSON_GetObjectItemCaseSensitive(f.fx, "expect");
    f.text = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(f.fx, "text"));
    f.n = f.text ? strlen(f.text) : 0;
    want = expected_blocks(f.expect, &calls, &failures, &repairs);
    tc_run(&f, file, NULL, 0, 0, 0, want, calls, failures, repairs, "whole", 0);
    tc_run(&f, file, NULL, 0, 0, 1, want, calls, failures, repairs, "whole", 0);
    /* two deltas, split at every character boundary (upstreams send whole characters) */
    for (k = 1; k < f.n && bad < 3; k++) {
        if (((unsigned char)f.text[k] & 0xC0) == 0x80)
            continue;
        bad += !tc_run(&f, file, &k, 1, 0, 0, want, calls, failures, repairs, "split at", k);
    }
    /* one delta per character, and three-character deltas with the SSE cut at every byte */
    every = calloc(f.n + 1, sizeof(*every));
    if (every == NULL)
        abort();
    for (k = 1; k < f.n; k++)
        if (((unsigned char)f.text[k] & 0xC0) != 0x80)
            every[nev++] = k;
    tc_run(&f, file, every, nev, 0, 0, want, calls, failures, repairs, "per character", 1);
    tc_run(&f, file, every, nev, 0, 1, want, calls, failures, repairs, "per character", 1);
    nev = 0;
    for (k = 3; k < f.n; k += 3) {
        while (k < f.n && ((unsigned char)f.text[k] & 0xC0) == 0x80)
            k++;
        if (k < f.n)
            every[nev++] = k;
    }
    tc_run(&f, file, every, nev, 1, 0, want, calls, failures, repairs, "sse bytewise", 3);
    free(every);
    cJSON_Delete(want);
    cJSON_Delete(f.fx);
}

static void test_text_calls(void)
{
    DIR *d = opendir(AX_FIXTURES "/toolcall_text");
    struct dirent *e;
    int count = 0;

    CHECK(d != NULL);
    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".json") == 0) {
            test_text_call_fixture(e->d_name);
            count++;
        }
    }
    closedir(d);
    CHECK(count >= 20);
}

/* The worked example of docs/translation.md, and when each piece goes out. */
static void test_text_call_doc_example(void)
{
    cJSON *tools = cJSON_Parse(
        "[{\"name\":\"Write\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"file_path\":"
        "{\"type\":\"string\"},\"content\":{\"type\":\"string\"}},\"required\":[\"file_path\","
        "\"content\"]}}]");
    const char *c1 =
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Writing it.\\n<tool_\"}}]}";
    const char *c2 =
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"call>\\n<function=Write>\\n"
        "<parameter=file_path>\\n/tmp/a.py\\n</parameter>\\n\"}}]}";
    const char *c3 = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"<parameter=content>\\n"
                     "print(1 < 2)\\n</parameter>\\n</function>\\n</tool_call>\"}}]}";
    const char *c4 = "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}";
    struct ax_stream_opts o = {.model = "m", .tools = tools};
    struct ax_stream st;
    struct ax_buf out;
    struct ax_error err;

    ax_buf_init(&out, 1 << 20);
    CHECK(ax_stream_init(&st, &o) == 0);
    CHECK(ax_stream_feed(&st, c1, strlen(c1), &out, &err) == 0);
    CHECK(strstr(out.data, "\"text_delta\",\"text\":\"Writing it.\\n\"}") != NULL);
    CHECK(strstr(out.data, "<tool_") == NULL); /* held: it may open a call */
    /* as messages.c does once the stream answers: the request's tree goes, st keeps text;
     * what is held stays held */
    CHECK(ax_stream_keep_tools_take(&st, tools) == 0);
    tools = NULL;
    CHECK(st._tools_json != NULL && strstr(st._tools_json, "\"name\":\"Write\"") != NULL);
    ax_buf_reset(&out);
    CHECK(ax_stream_feed(&st, c2, strlen(c2), &out, &err) == 0);
    CHECK(out.len == 0); /* inside the block: nothing yet */
    CHECK(ax_stream_feed(&st, c3, strlen(c3), &out, &err) == 0);
    CHECK(strstr(out.data, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\","
                           "\"index\":0}") == out.data); /* the text block closes first */
    CHECK(strstr(out.data,
                 "\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_") != NULL);
    CHECK(strstr(out.data, "\"name\":\"Write\",\"input\":{}}}") != NULL);
    CHECK(strstr(out.data,
                 "\"partial_json\":\"{\\\"file_path\\\":\\\"/tmp/a.py\\\",\\\"content\\\":"
                 "\\\"print(1 < 2)\\\"}\"}}") != NULL);
    CHECK(strstr(out.data, "\"index\":1}\n\n") != NULL); /* closed at once */
    ax_buf_reset(&out);
    CHECK(ax_stream_feed(&st, c4, strlen(c4), &out, &err) == 0);
    CHECK(ax_stream_end(&st, &out, &err) == 0);
    CHECK(strstr(out.data, "\"stop_reason\":\"tool_use\"") != NULL);
    CHECK_INT(st.tool_stats.text_calls, 1);
    CHECK_INT(st.tool_stats.schema_failures, 0);
    CHECK(st._tools_tree == NULL); /* parsed for the call, dropped after */
    ax_stream_free(&st);
    ax_buf_free(&out);
}

/* Native calls after the tools were kept as text: repaired, checked against the schema. */
static void test_native_checked_after_keep(void)
{
    const char *in = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
                     "\"id\":\"a1\",\"function\":{\"name\":\"Write\",\"arguments\":"
                     "\"{\\\"file_path\\\": \\\"/x\\\", \"}}]}}]}\n\n"
                     "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":"
                     "\"tool_calls\"}]}\n\ndata: [DONE]\n\n";
    cJSON *tools = cJSON_Parse(
        "[{\"name\":\"Write\",\"description\":\"Writes.\",\"input_schema\":{\"type\":\"object\","
        "\"properties\":{\"file_path\":{\"type\":\"string\",\"description\":\"where\"},"
        "\"description\":{\"type\":\"string\"},\"content\":{\"type\":\"string\"}},"
        "\"required\":[\"file_path\",\"content\"]}}]");
    struct ax_stream_opts o = {.model = "m", .tools = tools};
    struct ax_sse rd;
    struct run r;

    memset(&r, 0, sizeof(r));
    ax_buf_init(&r.out, 1 << 20);
    ax_sse_init(&rd, 1 << 16);
    CHECK(ax_stream_init(&r.st, &o) == 0);
    CHECK(ax_stream_keep_tools_take(&r.st, tools) == 0);
    /* descriptions dropped, a property named description kept */
    CHECK(strstr(r.st._tools_json, "Writes.") == NULL && strstr(r.st._tools_json, "where") == NULL);
    CHECK(strstr(r.st._tools_json, "\"description\":{\"type\":\"string\"}") != NULL);
    CHECK(ax_sse_feed(&rd, in, strlen(in), on_event, &r) == 0);
    CHECK(ax_stream_end(&r.st, &r.out, &r.err) == 0);
    /* the trailing comma held, then dropped; the brace closed: {"file_path": "/x" } */
    CHECK(strstr(r.out.data, "\"partial_json\":\"{\\\"file_path\\\": \\\"/x\\\"\"") != NULL);
    CHECK(strstr(r.out.data, "\"partial_json\":\" }\"") != NULL);
    CHECK_INT(r.st.tool_stats.repaired, 1);
    CHECK_INT(r.st.tool_stats.schema_failures, 1);
    CHECK(strstr(r.st.tool_stats.first_failure, "Write: ") == r.st.tool_stats.first_failure);
    ax_sse_free(&rd);
    ax_stream_free(&r.st);
    ax_buf_free(&r.out);
}

int main(void)
{
    const char *upd = getenv("AX_UPDATE_FIXTURES");
    size_t i;

    ax_ids_set_source(test_ids, NULL);
    stop_ug = cJSON_Parse("[\"UG\"]");
    {
        size_t n;
        char *raw = ax_test_read_file(AX_FIXTURES "/toolcall_text/hermes.json", &n);
        cJSON *fx = raw ? cJSON_ParseWithLength(raw, n) : NULL;
        fx_tools = cJSON_DetachItemFromObjectCaseSensitive(fx, "tools");
        CHECK(cJSON_IsArray(fx_tools));
        cJSON_Delete(fx);
        free(raw);
    }
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i], upd != NULL && upd[0] == '1', 0);
        run_case(&cases[i], 0, 1);
    }
    test_lean_matches_cjson();
    test_tool_arguments_not_lost();
    test_name_after_arguments();
    test_escaping();
    test_context_management_and_compaction();
    test_begin_ping_then_chunks();
    test_truncated_is_not_end_turn();
    test_out_limit_leaves_no_half_event();
    test_garbage_counted();
    test_summary_budget();
    test_summary_inputs();
    test_ollama_style_calls();
    test_fragment_without_arguments();
    test_random_soup();
    test_text_calls();
    test_text_call_doc_example();
    test_native_checked_after_keep();
    cJSON_Delete(stop_ug);
    cJSON_Delete(fx_tools);
    return AX_TEST_DONE("test_stream");
}
