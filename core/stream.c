/* stream.c - OpenAI chat.completion.chunk payloads -> Anthropic Messages SSE events.
 *
 * Fed by the request's upstream data path (messages.c: sse.c dispatches each payload here);
 * its bytes go to the connection's write queue. Pure: no I/O, no timers. Events are written
 * by hand with a small JSON string escaper; chunks are read by a lean allocation-free
 * scanner, or by cJSON when the scanner declines. Usage and stop reasons come from
 * translate_response.c's helpers, token estimates from tokens.c, so the complete and
 * streamed paths report alike. */
#include "anthroxy_stream.h"
#include "anthroxy_hash.h"
#include "anthroxy_ids.h"
#include "anthroxy_json.h"
#include "anthroxy_json_scan.h"
#include "anthroxy_tokens.h"
#include "anthroxy_toolcall_text.h"
#include "anthroxy_utf8.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_ARGS_BUDGET ((size_t)1 << 20)
#define DEFAULT_FALLBACK_MAX ((size_t)256 << 10)
#define PENDING_ARGS_MAX ((size_t)16 << 20) /* arguments held before a call's name arrives */
#define SCRATCH_KEEP ((size_t)16 << 10)     /* decoding scratch kept between chunks */
#define TEXT_CALL_INDEX INT_MIN             /* the tool record of a text call: no upstream index */

struct ax__stream_tool {
    int index; /* the upstream's tool_calls[].index */
    int block; /* Anthropic block index, -1 until the block is opened */
    int closed;
    int truncated; /* args no longer holds the whole argument text */
    int text_call; /* recognised in text: its arguments went out whole, already checked */
    struct ax_tool_args_fixer fix; /* repairs native argument text as it streams */
    char *id;                      /* "toolu_..." */
    char *name;
    struct ax_buf args; /* argument text: kept for the summary, pending before opening */
    size_t args_len;    /* argument bytes seen in all */
    uint64_t hash;      /* FNV-1a 64 of all argument bytes */
};

struct ax__stream_rec { /* one content block, for the summary */
    int kind;           /* enum ax_stream_block */
    int tool;           /* tool record, for tool_use */
    size_t length;      /* bytes of text or thinking */
};

/* ---- output helpers: hand-written event framing ---- */

#define PUT_LIT(o, s) ax_buf_append((o), (s), sizeof(s) - 1)

static int put_i64(struct ax_buf *o, int64_t v)
{
    char tmp[24];
    char *p = tmp + sizeof(tmp);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    return ax_buf_append(o, p, (size_t)(tmp + sizeof(tmp) - p));
}

static inline int needs_escape(unsigned char c)
{
    return c < 0x20 || c == '"' || c == '\\';
}

static char *put_escape(char *d, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";

    *d++ = '\\';
    switch (c) {
    case '"':
        *d++ = '"';
        break;
    case '\\':
        *d++ = '\\';
        break;
    case '\n':
        *d++ = 'n';
        break;
    case '\r':
        *d++ = 'r';
        break;
    case '\t':
        *d++ = 't';
        break;
    case '\b':
        *d++ = 'b';
        break;
    case '\f':
        *d++ = 'f';
        break;
    default:
        *d++ = 'u';
        *d++ = '0';
        *d++ = '0';
        *d++ = hex[c >> 4];
        *d++ = hex[c & 15];
    }
    return d;
}

/* The rare string holding ill-formed UTF-8 (a policy's text, say: what comes from parsers is
 * well-formed already): byte by byte, each ill-formed subpart U+FFFD. */
static char *put_repaired(char *d, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    int k;

    while (p < e) {
        if (*p >= 0x80) {
            if ((k = ax_utf8_check(p, e)) > 0) {
                memcpy(d, p, (size_t)k);
                d += k;
                p += k;
            } else {
                memcpy(d, AX_UTF8_REPLACEMENT, 3);
                d += 3;
                p += -k;
            }
        } else if (needs_escape(*p)) {
            d = put_escape(d, *p++);
        } else {
            *d++ = (char)*p++;
        }
    }
    return d;
}

/* Appends s[0..n) as a JSON string literal, quotes included. One pass to size the result
 * (checking the UTF-8 as it goes), one to copy runs of plain bytes (the usual case: no escape
 * at all). Well-formed UTF-8 passes through as it was; ill-formed becomes U+FFFD, so the
 * client's JSON is well-formed whatever the text. */
static int put_str(struct ax_buf *o, const char *s, size_t n)
{
    size_t i, extra = 0, run;
    char *d;
    int rc, k, bad = 0;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            k = ax_utf8_check((const unsigned char *)s + i, (const unsigned char *)s + n);
            if (k < 0) {
                bad = 1;
                extra += (size_t)(3 + k); /* U+FFFD for 1-3 bytes */
                k = -k;
            }
            i += (size_t)k - 1;
        } else if (needs_escape(c)) {
            extra += (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' ||
                      c == '\f')
                         ? 1
                         : 5;
        }
    }
    if ((rc = ax_buf_reserve(o, n + extra + 2)) < 0)
        return rc;
    d = o->data + o->len;
    *d++ = '"';
    if (bad) {
        d = put_repaired(d, s, n);
    } else if (extra == 0) {
        memcpy(d, s, n);
        d += n;
    } else {
        for (i = 0; i < n;) {
            for (run = i; run < n && !needs_escape((unsigned char)s[run]); run++)
                ;
            memcpy(d, s + i, run - i);
            d += run - i;
            if (run == n)
                break;
            d = put_escape(d, (unsigned char)s[run]);
            i = run + 1;
        }
    }
    *d++ = '"';
    o->len = (size_t)(d - o->data);
    o->data[o->len] = '\0';
    return 0;
}

static int put_cstr_or_null(struct ax_buf *o, const char *s)
{
    return s != NULL ? put_str(o, s, strlen(s)) : PUT_LIT(o, "null");
}

/* Anthropic usage members via the shared mapping (translate_response.c). */
static int put_usage(struct ax_buf *o, const struct ax_usage *u, double scale)
{
    cJSON *obj = cJSON_CreateObject();
    int rc = AX_ENOMEM;

    if (obj != NULL && ax_usage_add_anthropic(obj, u, scale) == 0)
        rc = ax_json_print(obj, o);
    cJSON_Delete(obj);
    return rc;
}

/* message_delta's usage: put_usage's, with usage.iterations when a compaction ran (its
 * entry, then the answer's own, whose figures are the top-level ones). */
static int put_final_usage(struct ax_buf *o, const struct ax_usage *u, double scale,
                           const char *c_iter, int answered)
{
    cJSON *obj, *its, *msg;
    int rc = AX_ENOMEM;

    if (c_iter == NULL)
        return put_usage(o, u, scale);
    obj = cJSON_CreateObject();
    if (obj != NULL && ax_usage_add_anthropic(obj, u, scale) == 0 &&
        (its = cJSON_AddArrayToObject(obj, "iterations")) != NULL &&
        cJSON_AddItemToArray(its, cJSON_Parse(c_iter))) {
        if (!answered) /* paused after the compaction: no answer of its own */
            rc = ax_json_print(obj, o);
        else if ((msg = cJSON_CreateObject()) != NULL && cJSON_AddItemToArray(its, msg) &&
                 ax_usage_add_anthropic(msg, u, scale) == 0 &&
                 cJSON_AddStringToObject(msg, "type", "message") != NULL)
            rc = ax_json_print(obj, o);
    }
    cJSON_Delete(obj);
    return rc;
}

/* The usage to report: the upstream's when it sent some, else the estimates. */
static void current_usage(const struct ax_stream *st, struct ax_usage *u, int with_output)
{
    if (st->usage.have) {
        *u = st->usage;
    } else {
        memset(u, 0, sizeof(*u));
        u->prompt_tokens = st->_input_estimate;
        u->completion_tokens = st->output_estimate;
        u->have = 1;
    }
    if (!with_output)
        u->completion_tokens = 0;
}

/* A failed call leaves no half event behind. */
static void rollback(struct ax_buf *out, size_t mark, int rc)
{
    if ((rc == AX_ETOOBIG || rc == AX_ENOMEM) && out->len > mark) {
        out->len = mark;
        out->data[mark] = '\0';
    }
}

/* ---- init / free ---- */

int ax_stream_init(struct ax_stream *st, const struct ax_stream_opts *o)
{
    memset(st, 0, sizeof(*st));
    st->_model = strdup(o->model != NULL ? o->model : "");
    if (st->_model == NULL)
        return AX_ENOMEM;
    if (o->message_id != NULL)
        snprintf(st->id, sizeof(st->id), "%s", o->message_id);
    else
        ax_id_make(st->id, sizeof(st->id), "msg_");
    st->_input_estimate = o->input_estimate;
    st->_scale = o->usage_scale > 0 ? o->usage_scale : 1.0;
    st->_fallback = o->reasoning_fallback;
    st->_stop_sequences = o->stop_sequences;
    st->_args_budget = o->max_tool_args_bytes ? o->max_tool_args_bytes : DEFAULT_ARGS_BUDGET;
    st->_last_tool = -1;
    st->_cjson_only = o->parse_with_cjson;
    st->_has_compaction = o->compaction;
    if ((o->context_management && (st->_cm = strdup(o->context_management)) == NULL) ||
        (o->compaction_content && (st->_compaction = strdup(o->compaction_content)) == NULL) ||
        (o->compaction_usage && (st->_c_iter = strdup(o->compaction_usage)) == NULL)) {
        ax_stream_free(st);
        return AX_ENOMEM;
    }
    ax_buf_init(&st->_scratch, (size_t)1 << 30); /* bounded by the payload in practice */
    ax_buf_init(&st->_fixed, (size_t)1 << 30);   /* at most 6 times one fragment */
    ax_buf_init(&st->_run, AX_TCTEXT_MAX_HOLD_DEFAULT + ((size_t)1 << 30)); /* hold + a delta */
    ax_tctext_init(&st->_tct, NULL, 0);
    ax_stream_set_tools(st, o->tools);
    ax_buf_init(&st->_reasoning,
                o->max_fallback_bytes ? o->max_fallback_bytes : DEFAULT_FALLBACK_MAX);
    return 0;
}

/* Drops the "description" keywords of a schema (not properties named so: Bash has one). */
static void strip_descriptions(cJSON *schema, int depth)
{
    static const char *const lists[] = {"anyOf", "oneOf", "allOf"};
    cJSON *c, *p;
    size_t i;

    if (!cJSON_IsObject(schema) || depth > 16)
        return;
    if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(schema, "description")))
        cJSON_DeleteItemFromObjectCaseSensitive(schema, "description");
    if (!cJSON_IsObject(p = cJSON_GetObjectItemCaseSensitive(schema, "properties")))
        p = NULL;
    cJSON_ArrayForEach(c, p)
    {
        strip_descriptions(c, depth + 1);
    }
    strip_descriptions(cJSON_GetObjectItemCaseSensitive(schema, "items"), depth + 1);
    for (i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        if (!cJSON_IsArray(p = cJSON_GetObjectItemCaseSensitive(schema, lists[i])))
            continue;
        cJSON_ArrayForEach(c, p)
        {
            strip_descriptions(c, depth + 1);
        }
    }
}

/* The tools once kept as text: parsed when a call needs them, dropped when the feed, end or
 * fail call that needed them returns (tools_drop), never inside it (the recogniser may still
 * hold pointers into the tree). */
static const cJSON *stream_tools(void *ud)
{
    struct ax_stream *st = ud;

    if (st->_offered != NULL || st->_tools_json == NULL)
        return st->_offered;
    if (st->_tools_tree == NULL)
        st->_tools_tree = cJSON_ParseWithLength(st->_tools_json, st->_tools_json_len);
    return st->_tools_tree; /* NULL when out of memory: the calls stay text */
}

static void tools_drop(struct ax_stream *st)
{
    cJSON_Delete(st->_tools_tree);
    st->_tools_tree = NULL;
}

int ax_stream_keep_tools_take(struct ax_stream *st, cJSON *tools)
{
    cJSON *t;
    char *text;

    if (!st->_tct_on || tools == NULL) {
        cJSON_Delete(tools);
        st->_offered = NULL;
        st->_tct_on = 0;
        return 0;
    }
    cJSON_ArrayForEach(t, tools)
    {
        cJSON_DeleteItemFromObjectCaseSensitive(t, "description");
        strip_descriptions(cJSON_GetObjectItemCaseSensitive(t, "input_schema"), 0);
    }
    text = cJSON_PrintUnformatted(tools);
    cJSON_Delete(tools);
    st->_offered = NULL; /* the caller's tree is going away */
    if (text == NULL) {
        st->_tct_on = 0; /* out of memory: text passes as it came */
        ax_tctext_free(&st->_tct);
        ax_tctext_init(&st->_tct, NULL, 0);
        return AX_ENOMEM;
    }
    st->_tools_json = text;
    st->_tools_json_len = strlen(text);
    ax_tctext_set_tools_fn(&st->_tct, stream_tools, st);
    return 0;
}

void ax_stream_set_tools(struct ax_stream *st, const cJSON *tools)
{
    st->_offered = cJSON_IsArray(tools) && tools->child != NULL ? tools : NULL;
    st->_tct_on = st->_offered != NULL;
    ax_tctext_free(&st->_tct);
    ax_tctext_init(&st->_tct, st->_offered, 0);
}

void ax_stream_free(struct ax_stream *st)
{
    int i;

    for (i = 0; i < st->_n_tools; i++) {
        free(st->_tools[i].id);
        free(st->_tools[i].name);
        ax_buf_free(&st->_tools[i].args);
    }
    free(st->_tools);
    free(st->_recs);
    free(st->_model);
    free(st->_cm);
    free(st->_compaction);
    free(st->_c_iter);
    st->_c_iter = NULL;
    ax_buf_free(&st->_reasoning);
    ax_buf_free(&st->_scratch);
    ax_buf_free(&st->_fixed);
    ax_buf_free(&st->_run);
    ax_tctext_free(&st->_tct);
    tools_drop(st);
    cJSON_free(st->_tools_json);
    st->_tools_json = NULL;
    st->_cm = st->_compaction = NULL;
    st->_tools = NULL;
    st->_recs = NULL;
    st->_model = NULL;
    st->_n_tools = st->_cap_tools = st->_cap_recs = 0;
}

/* ---- events ---- */

static int emit_message_start(struct ax_stream *st, struct ax_buf *o)
{
    struct ax_usage u;
    int rc;

    current_usage(st, &u, 0);
    if ((rc = PUT_LIT(o, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":"
                         "{\"id\":")) < 0 ||
        (rc = put_cstr_or_null(o, st->id)) < 0 ||
        (rc = PUT_LIT(o, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":")) < 0 ||
        (rc = put_cstr_or_null(o, st->_model)) < 0 ||
        (rc = PUT_LIT(o, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
                         "\"usage\":")) < 0 ||
        (rc = put_usage(o, &u, st->_scale)) < 0)
        return rc;
    return PUT_LIT(o, "}}\n\n");
}

static void record_block(struct ax_stream *st, int index, int kind, int tool);

/* The compaction block (context management) the policies made: whole, before the answer. */
static int emit_compaction(struct ax_stream *st, struct ax_buf *o)
{
    int rc;

    if ((rc = PUT_LIT(o, "event: content_block_start\ndata: {\"type\":\"content_block_start\","
                         "\"index\":0,\"content_block\":{\"type\":\"compaction\","
                         "\"content\":null,\"encrypted_content\":null}}\n\n"
                         "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                         "\"index\":0,\"delta\":{\"type\":\"compaction_delta\",\"content\":")) <
            0 ||
        (rc = put_cstr_or_null(o, st->_compaction)) < 0 ||
        (rc = PUT_LIT(o, ",\"encrypted_content\":null}}\n\n"
                         "event: content_block_stop\ndata: {\"type\":\"content_block_stop\","
                         "\"index\":0}\n\n")) < 0)
        return rc;
    record_block(st, 0, AX_STREAM_BLOCK_NONE, -1); /* not in the summary */
    st->_n_blocks = 1;
    return 0;
}

int ax_stream_begin(struct ax_stream *st, struct ax_buf *out)
{
    size_t mark = out->len;
    int rc;

    if (st->state != AX_STREAM_NEW)
        return 0;
    if ((rc = emit_message_start(st, out)) < 0 ||
        (st->_has_compaction && (rc = emit_compaction(st, out)) < 0)) {
        rollback(out, mark, rc);
        return rc;
    }
    st->state = AX_STREAM_STARTED;
    return 0;
}

static int put_delta_head(struct ax_buf *o, int index)
{
    int rc;

    if ((rc = PUT_LIT(o, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                         "\"index\":")) < 0 ||
        (rc = put_i64(o, index)) < 0)
        return rc;
    return PUT_LIT(o, ",\"delta\":{\"type\":");
}

/* A piece of streamed text: s[0..n) decoded, and, when the lean parser found it, raw[0..
 * rawlen) the literal's inside as it came, already a valid JSON string body that escapes
 * exactly as put_str would (only \" \\ \b \f \n \r \t), so it is copied, not re-escaped. */
struct piece {
    const char *s, *raw;
    size_t n, rawlen;
};

static int emit_delta(struct ax_stream *st, struct ax_buf *o, const char *kind_and_key, size_t klen,
                      const char *s, size_t n)
{
    int rc;

    if ((rc = put_delta_head(o, st->_n_blocks - 1)) < 0 ||
        (rc = ax_buf_append(o, kind_and_key, klen)) < 0 || (rc = put_str(o, s, n)) < 0)
        return rc;
    return PUT_LIT(o, "}}\n\n");
}

static int emit_piece(struct ax_stream *st, struct ax_buf *o, const char *kind_and_key, size_t klen,
                      const struct piece *pc)
{
    int rc;

    if (pc->raw == NULL)
        return emit_delta(st, o, kind_and_key, klen, pc->s, pc->n);
    if ((rc = put_delta_head(o, st->_n_blocks - 1)) < 0 ||
        (rc = ax_buf_reserve(o, klen + pc->rawlen + 6)) < 0)
        return rc;
    memcpy(o->data + o->len, kind_and_key, klen);
    o->len += klen;
    o->data[o->len++] = '"';
    memcpy(o->data + o->len, pc->raw, pc->rawlen);
    o->len += pc->rawlen;
    memcpy(o->data + o->len, "\"}}\n\n", 5);
    o->len += 5;
    o->data[o->len] = '\0';
    return 0;
}

#define EMIT_DELTA(st, o, kk, s, n) emit_delta((st), (o), (kk), sizeof(kk) - 1, (s), (n))
#define EMIT_PIECE(st, o, kk, pc) emit_piece((st), (o), (kk), sizeof(kk) - 1, (pc))

static int emit_block_stop(struct ax_buf *o, int index)
{
    int rc;

    if ((rc = PUT_LIT(o, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\","
                         "\"index\":")) < 0 ||
        (rc = put_i64(o, index)) < 0)
        return rc;
    return PUT_LIT(o, "}\n\n");
}

static int end_tool_args(struct ax_stream *st, struct ax_buf *o, struct ax__stream_tool *t);

static int close_block(struct ax_stream *st, struct ax_buf *o)
{
    int rc;

    switch (st->_open) {
    case AX_STREAM_BLOCK_NONE:
        return 0;
    case AX_STREAM_BLOCK_THINKING:
        /* Claude Code keeps the block and sends it back only when it has a signature */
        if ((rc = EMIT_DELTA(st, o, "\"signature_delta\",\"signature\":", AX_THINKING_SIGNATURE,
                             sizeof(AX_THINKING_SIGNATURE) - 1)) < 0)
            return rc;
        break;
    case AX_STREAM_BLOCK_TOOL:
        if ((rc = end_tool_args(st, o, &st->_tools[st->_open_tool])) < 0)
            return rc;
        st->_tools[st->_open_tool].closed = 1;
        break;
    case AX_STREAM_BLOCK_TEXT:
        break;
    }
    if ((rc = emit_block_stop(o, st->_n_blocks - 1)) < 0)
        return rc;
    st->_open = AX_STREAM_BLOCK_NONE;
    return 0;
}

static void record_block(struct ax_stream *st, int index, int kind, int tool)
{
    struct ax__stream_rec *r;
    int cap;

    if (index >= st->_cap_recs) {
        cap = st->_cap_recs ? st->_cap_recs * 2 : 8;
        if (cap > AX_STREAM_MAX_BLOCKS)
            cap = AX_STREAM_MAX_BLOCKS;
        if (index >= cap || (r = realloc(st->_recs, (size_t)cap * sizeof(*r))) == NULL) {
            st->_recs_omitted++; /* only the summary loses the record */
            return;
        }
        st->_recs = r;
        st->_cap_recs = cap;
    }
    st->_recs[index].kind = kind;
    st->_recs[index].tool = tool;
    st->_recs[index].length = 0;
}

static void count_block_bytes(struct ax_stream *st, size_t n)
{
    int i = st->_n_blocks - 1;

    if (i >= 0 && i < st->_cap_recs)
        st->_recs[i].length += n;
}

/* Closes the open block and opens a new one of the given kind at the next index. */
static int open_block(struct ax_stream *st, struct ax_buf *o, enum ax_stream_block kind, int tool)
{
    struct ax__stream_tool *t;
    int rc, index;

    if ((rc = close_block(st, o)) < 0)
        return rc;
    index = st->_n_blocks;
    if ((rc = PUT_LIT(o, "event: content_block_start\ndata: {\"type\":\"content_block_start\","
                         "\"index\":")) < 0 ||
        (rc = put_i64(o, index)) < 0)
        return rc;
    switch (kind) {
    case AX_STREAM_BLOCK_THINKING:
        rc = PUT_LIT(o, ",\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\","
                        "\"signature\":\"\"}}\n\n");
        break;
    case AX_STREAM_BLOCK_TEXT:
        rc = PUT_LIT(o, ",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        break;
    case AX_STREAM_BLOCK_TOOL:
        t = &st->_tools[tool];
        if ((rc = PUT_LIT(o, ",\"content_block\":{\"type\":\"tool_use\",\"id\":")) < 0 ||
            (rc = put_cstr_or_null(o, t->id)) < 0 || (rc = PUT_LIT(o, ",\"name\":")) < 0 ||
            (rc = put_cstr_or_null(o, t->name != NULL ? t->name : "")) < 0)
            return rc;
        rc = PUT_LIT(o, ",\"input\":{}}}\n\n");
        t->block = index;
        break;
    case AX_STREAM_BLOCK_NONE:
        rc = AX_EINVAL;
        break;
    }
    if (rc < 0)
        return rc;
    st->_n_blocks++;
    st->_open = kind;
    st->_open_tool = tool;
    record_block(st, index, kind, tool);
    return 0;
}

/* ---- translation of one chunk ---- */

static int tct_flush(struct ax_stream *st, struct ax_buf *o);

static int on_reasoning(struct ax_stream *st, struct ax_buf *o, const struct piece *pc)
{
    int rc;

    if ((rc = tct_flush(st, o)) < 0)
        return rc;
    if (st->_open != AX_STREAM_BLOCK_THINKING &&
        (rc = open_block(st, o, AX_STREAM_BLOCK_THINKING, -1)) < 0)
        return rc;
    if ((rc = EMIT_PIECE(st, o, "\"thinking_delta\",\"thinking\":", pc)) < 0)
        return rc;
    st->_saw_reasoning = 1;
    count_block_bytes(st, pc->n);
    st->output_estimate += ax_tokens_text(pc->s, pc->n);
    if (st->_fallback && !st->_saw_text && st->_n_tools == 0) {
        size_t room = st->_reasoning.max - st->_reasoning.len;
        ax_buf_append(&st->_reasoning, pc->s, pc->n < room ? pc->n : room); /* bounded */
    }
    return 0;
}

static int put_text(struct ax_stream *st, struct ax_buf *o, const struct piece *pc)
{
    int rc;

    if (st->_open != AX_STREAM_BLOCK_TEXT && (rc = open_block(st, o, AX_STREAM_BLOCK_TEXT, -1)) < 0)
        return rc;
    if ((rc = EMIT_PIECE(st, o, "\"text_delta\",\"text\":", pc)) < 0)
        return rc;
    if (!st->_saw_text) {
        st->_saw_text = 1;
        ax_buf_free(&st->_reasoning); /* the fallback can no longer apply */
    }
    count_block_bytes(st, pc->n);
    st->output_estimate += ax_tokens_text(pc->s, pc->n);
    return 0;
}

static int fail_upstream(struct ax_error *err, const char *msg)
{
    ax_error_set(err, 502, "api_error", "%s", msg);
    return AX_EUPSTREAM;
}

static struct ax__stream_tool *find_tool(struct ax_stream *st, int index)
{
    int i;

    for (i = st->_n_tools - 1; i >= 0; i--) /* the newest call is the usual target */
        if (st->_tools[i].index == index)
            return &st->_tools[i];
    return NULL;
}

static struct ax__stream_tool *add_tool(struct ax_stream *st, int index)
{
    struct ax__stream_tool *t;
    int cap;

    if (st->_n_tools == st->_cap_tools) {
        cap = st->_cap_tools ? st->_cap_tools * 2 : 4;
        if ((t = realloc(st->_tools, (size_t)cap * sizeof(*t))) == NULL)
            return NULL;
        st->_tools = t;
        st->_cap_tools = cap;
    }
    t = &st->_tools[st->_n_tools++];
    memset(t, 0, sizeof(*t));
    t->index = index;
    t->block = -1;
    t->hash = AX_FNV1A_INIT;
    ax_buf_init(&t->args, PENDING_ARGS_MAX);
    if (st->_fallback)
        ax_buf_free(&st->_reasoning);
    return t;
}

/* The client's id for an upstream tool call (ids.c has the rule), malloc'ed. */
static char *tool_id(const char *upstream_id, size_t n)
{
    char gen[64];
    char *s;
    size_t pre;

    if (upstream_id == NULL || n == 0) {
        ax_tool_id_make(gen, sizeof(gen));
        return strdup(gen);
    }
    pre = ax_tool_id_prefix_len(upstream_id, n);
    if ((s = malloc(pre + n + 1)) == NULL)
        return NULL;
    memcpy(s, AX_TOOL_ID_PREFIX, pre);
    memcpy(s + pre, upstream_id, n);
    s[pre + n] = '\0';
    return s;
}

static int same_id(const char *ours, const char *upstream_id, size_t n)
{
    ours += ax_tool_id_prefix_len(upstream_id, n);
    return strlen(ours) == n && memcmp(ours, upstream_id, n) == 0;
}

/* Keeps argument text for the summary (within the stream's budget) and hashes it all. */
static void keep_args(struct ax_stream *st, struct ax__stream_tool *t, const char *s, size_t n)
{
    t->hash = ax_fnv1a(s, n, t->hash);
    t->args_len += n;
    if (t->truncated)
        return;
    if (n > st->_args_budget || ax_buf_append(&t->args, s, n) < 0) {
        t->truncated = 1;
        return;
    }
    st->_args_budget -= n;
}

/* Sends the repaired argument text in st->_fixed, and keeps it for the summary. */
static int put_fixed_args(struct ax_stream *st, struct ax_buf *o, struct ax__stream_tool *t)
{
    int rc;

    if (st->_fixed.len == 0)
        return 0;
    if ((rc = EMIT_DELTA(st, o, "\"input_json_delta\",\"partial_json\":", st->_fixed.data,
                         st->_fixed.len)) < 0)
        return rc;
    keep_args(st, t, st->_fixed.data, st->_fixed.len);
    return 0;
}

/* Opens the call's block and streams the argument text held until its name arrived. */
static int open_tool(struct ax_stream *st, struct ax_buf *o, struct ax__stream_tool *t)
{
    size_t held = t->args.len;
    int rc;

    if (t->id == NULL && (t->id = tool_id(NULL, 0)) == NULL)
        return AX_ENOMEM;
    if ((rc = open_block(st, o, AX_STREAM_BLOCK_TOOL, (int)(t - st->_tools))) < 0)
        return rc;
    if (held == 0)
        return 0;
    ax_buf_reset(&st->_fixed);
    if ((rc = ax_tool_args_fix_feed(&t->fix, t->args.data, held, &st->_fixed)) < 0)
        return rc;
    st->output_estimate += ax_tokens_text(t->args.data, held);
    ax_buf_reset(&t->args); /* from now on it keeps what the client got, for the summary */
    return put_fixed_args(st, o, t);
}

/* A piece of native argument text, repaired as it streams: unchanged (the usual case) it is
 * copied as it came. */
static int put_args(struct ax_stream *st, struct ax_buf *o, struct ax__stream_tool *t,
                    const struct piece *a)
{
    int rc;

    ax_buf_reset(&st->_fixed);
    if ((rc = ax_tool_args_fix_feed(&t->fix, a->s, a->n, &st->_fixed)) < 0)
        return rc;
    st->output_estimate += ax_tokens_text(a->s, a->n);
    if (rc == 0)
        return put_fixed_args(st, o, t);
    if ((rc = EMIT_PIECE(st, o, "\"input_json_delta\",\"partial_json\":", a)) < 0)
        return rc;
    keep_args(st, t, a->s, a->n);
    return 0;
}

/* Checks a finished call against its tool's input_schema (when tools were offered) and counts
 * a failure: the call still goes to the client, whose tool reports the error to the model. */
static void check_call(struct ax_stream *st, const struct ax__stream_tool *t)
{
    const cJSON *tool;
    char why[AX_TCTEXT_WHY_MAX];
    cJSON *args = NULL;

    if (!st->_tct_on || t->truncated || t->name == NULL ||
        (tool = ax_tctext_find_tool(stream_tools(st), t->name, strlen(t->name))) == NULL)
        return;
    if (ax_tool_args_parse(t->args.data ? t->args.data : "", t->args.len, &args, NULL) < 0)
        ax_toolcall_stats_fail(&st->tool_stats, t->name, "the arguments are not a JSON object");
    else if (ax_tool_args_check(args, cJSON_GetObjectItemCaseSensitive(tool, "input_schema"), why,
                                sizeof(why)) < 0)
        ax_toolcall_stats_fail(&st->tool_stats, t->name, why);
    cJSON_Delete(args);
}

/* The native call's block is closing: what its arguments' end needs (held bytes, closing
 * brackets) goes out first; then the schema check. */
static int end_tool_args(struct ax_stream *st, struct ax_buf *o, struct ax__stream_tool *t)
{
    int rc;

    if (t->text_call || t->closed)
        return 0;
    ax_buf_reset(&st->_fixed);
    if ((rc = ax_tool_args_fix_finish(&t->fix, &st->_fixed,
                                      strcmp(st->finish_reason, "length") != 0)) < 0 ||
        (rc = put_fixed_args(st, o, t)) < 0)
        return rc;
    if (t->fix.repairs)
        st->tool_stats.repaired++;
    check_call(st, t);
    return 0;
}

/* ---- tool calls written as text ---- */

/* The text events of one feed are joined before they go out: the recogniser may cut a run
 * anywhere (inside a character, when a possible marker is ruled out at its second byte), and
 * each text_delta must be well-formed UTF-8 on its own. */
struct tct_ud {
    struct ax_stream *st;
    struct ax_buf *o;
    const struct piece *pc; /* the delta being fed, NULL when flushing */
    int whole;              /* the one text event so far was all of pc */
};

static int tct_text_out(struct tct_ud *u)
{
    struct ax_stream *st = u->st;
    struct piece p = {st->_run.data, NULL, st->_run.len, 0};
    int rc;

    if (u->whole) {
        u->whole = 0;
        return put_text(st, u->o, u->pc); /* unchanged: the literal is copied as it came */
    }
    if (st->_run.len == 0)
        return 0;
    rc = put_text(st, u->o, &p);
    ax_buf_reset(&st->_run);
    return rc;
}

/* A recognised call: its own tool_use block, the arguments in one delta, closed at once. */
static int put_text_call(struct ax_stream *st, struct ax_buf *o, struct ax_tctext_event *ev)
{
    struct ax__stream_tool *t;
    struct piece raw = {ev->text, NULL, ev->len, 0};
    int rc;

    if (st->_n_tools >= AX_STREAM_MAX_TOOLS)
        return ev->len > 0 ? put_text(st, o, &raw) : 0; /* too many: it stays text */
    if ((t = add_tool(st, TEXT_CALL_INDEX)) == NULL)
        return AX_ENOMEM;
    t->text_call = 1;
    if ((t->name = strdup(ev->name)) == NULL)
        return AX_ENOMEM;
    if ((rc = open_tool(st, o, t)) < 0 ||
        (rc = EMIT_DELTA(st, o, "\"input_json_delta\",\"partial_json\":", ev->input_json,
                         ev->input_len)) < 0)
        return rc;
    keep_args(st, t, ev->input_json, ev->input_len);
    st->output_estimate += ax_tokens_text(ev->text, ev->len);
    st->tool_stats.text_calls++;
    if (ev->repairs)
        st->tool_stats.repaired++;
    if (ev->check_error != NULL)
        ax_toolcall_stats_fail(&st->tool_stats, ev->name, ev->check_error);
    return close_block(st, o);
}

static int tct_on_event(struct ax_tctext_event *ev, void *ud)
{
    struct tct_ud *u = ud;
    int rc;

    if (ev->kind == AX_TCTEXT_CALL)
        return (rc = tct_text_out(u)) < 0 ? rc : put_text_call(u->st, u->o, ev);
    if (u->pc != NULL && ev->text == u->pc->s && ev->len == u->pc->n && u->st->_run.len == 0) {
        u->whole = 1; /* the usual case: nothing held, nothing recognised */
        return 0;
    }
    return ax_buf_append(&u->st->_run, ev->text, ev->len);
}

static int on_text(struct ax_stream *st, struct ax_buf *o, const struct piece *pc)
{
    struct tct_ud u = {st, o, pc, 0};
    int rc;

    if (!st->_tct_on)
        return put_text(st, o, pc);
    if ((rc = ax_tctext_feed(&st->_tct, pc->s, pc->n, tct_on_event, &u)) < 0)
        return rc;
    return tct_text_out(&u);
}

/* The text ended (finish), or something other than text comes (reasoning, a native call):
 * what the recogniser holds is completed or released first, so blocks keep their order. */
static int tct_finish(struct ax_stream *st, struct ax_buf *o)
{
    struct tct_ud u = {st, o, NULL, 0};
    int rc;

    if ((rc = ax_tctext_finish(&st->_tct, tct_on_event, &u)) < 0)
        return rc;
    return tct_text_out(&u);
}

static int tct_flush(struct ax_stream *st, struct ax_buf *o)
{
    if (!st->_tct_on || ax_tctext_held(&st->_tct) == 0)
        return 0;
    return tct_finish(st, o);
}

/* One tool_calls[] entry, read by either parser. Strings are decoded; absent members (or
 * members of the wrong type) are NULL, empty strings count as absent except arguments. */
struct frag {
    int has_index, index;
    const char *id, *name;
    size_t id_len, name_len;
    struct piece args; /* args.s NULL when absent */
};

/* Index of the call a fragment belongs to. Without an index (some servers) a new id starts
 * a new call and anything else continues the last one. */
static int fragment_index(const struct ax_stream *st, const struct frag *f)
{
    const struct ax__stream_tool *last;

    if (f->has_index)
        return f->index;
    if (st->_last_tool < 0)
        return 0;
    last = &st->_tools[st->_last_tool];
    if (f->id != NULL && last->id != NULL && !same_id(last->id, f->id, f->id_len))
        return last->index + 1;
    return last->index;
}

static int on_tool_fragment(struct ax_stream *st, struct ax_buf *o, const struct frag *f,
                            struct ax_error *err)
{
    const struct piece *a = &f->args;
    struct ax__stream_tool *t;
    int index, rc;

    if ((rc = tct_flush(st, o)) < 0)
        return rc;
    index = fragment_index(st, f);
    if ((t = find_tool(st, index)) == NULL) {
        if (st->_n_tools >= AX_STREAM_MAX_TOOLS)
            return fail_upstream(err, "upstream sent too many tool calls in one turn");
        if ((t = add_tool(st, index)) == NULL)
            return AX_ENOMEM;
    }
    st->_last_tool = (int)(t - st->_tools);
    if (t->block < 0) {
        if (t->id == NULL && f->id != NULL && (t->id = tool_id(f->id, f->id_len)) == NULL)
            return AX_ENOMEM;
        if (t->name == NULL && f->name != NULL && (t->name = strndup(f->name, f->name_len)) == NULL)
            return AX_ENOMEM;
        if (a->n > 0 && ax_buf_append(&t->args, a->s, a->n) < 0)
            return fail_upstream(err, "upstream tool call arguments before its name over "
                                      "the limit");
        return t->name != NULL ? open_tool(st, o, t) : 0; /* else held for the name */
    }
    if (a->n == 0)
        return 0;
    if (t->closed || st->_open != AX_STREAM_BLOCK_TOOL || &st->_tools[st->_open_tool] != t)
        return fail_upstream(err, "upstream interleaved the arguments of parallel tool calls");
    return put_args(st, o, t, a);
}

/* The cJSON path's reading of a tool_calls[] entry. */
static void frag_from_cjson(const cJSON *tc, struct frag *f)
{
    const cJSON *jidx = cJSON_GetObjectItemCaseSensitive(tc, "index");
    const cJSON *jid = cJSON_GetObjectItemCaseSensitive(tc, "id");
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
    const cJSON *jname = cJSON_GetObjectItemCaseSensitive(fn, "name");
    const cJSON *jargs = cJSON_GetObjectItemCaseSensitive(fn, "arguments");

    memset(f, 0, sizeof(*f));
    if (cJSON_IsNumber(jidx)) {
        f->has_index = 1;
        f->index = jidx->valueint;
    }
    if (cJSON_IsString(jid) && jid->valuestring[0] != '\0') {
        f->id = jid->valuestring;
        f->id_len = strlen(f->id);
    }
    if (cJSON_IsString(jname) && jname->valuestring[0] != '\0') {
        f->name = jname->valuestring;
        f->name_len = strlen(f->name);
    }
    if (cJSON_IsString(jargs)) {
        f->args.s = jargs->valuestring;
        f->args.n = strlen(f->args.s);
    }
}

static const char *delta_string(const cJSON *delta, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(delta, key);

    return cJSON_IsString(v) && v->valuestring[0] != '\0' ? v->valuestring : NULL;
}

/* One choice: reasoning, then text, then tool calls, in that order within a chunk. */
static int on_choice(struct ax_stream *st, struct ax_buf *o, const cJSON *choice,
                     struct ax_error *err)
{
    const cJSON *delta = cJSON_GetObjectItemCaseSensitive(choice, "delta");
    const cJSON *finish = cJSON_GetObjectItemCaseSensitive(choice, "finish_reason");
    const cJSON *tcs, *tc;
    struct piece pc = {NULL, NULL, 0, 0};
    int rc;

    if (cJSON_IsObject(delta)) {
        if ((pc.s = delta_string(delta, "reasoning_content")) != NULL ||
            (pc.s = delta_string(delta, "reasoning")) != NULL) {
            pc.n = strlen(pc.s);
            if ((rc = on_reasoning(st, o, &pc)) < 0)
                return rc;
        }
        if ((pc.s = delta_string(delta, "content")) != NULL) {
            pc.n = strlen(pc.s);
            if ((rc = on_text(st, o, &pc)) < 0)
                return rc;
        }
        tcs = cJSON_GetObjectItemCaseSensitive(delta, "tool_calls");
        cJSON_ArrayForEach(tc, tcs)
        {
            struct frag f;
            if (!cJSON_IsObject(tc))
                continue;
            frag_from_cjson(tc, &f);
            if ((rc = on_tool_fragment(st, o, &f, err)) < 0)
                return rc;
        }
    }
    if (cJSON_IsString(finish) && finish->valuestring[0] != '\0') {
        snprintf(st->finish_reason, sizeof(st->finish_reason), "%s", finish->valuestring);
        st->saw_finish = 1;
        /* the matched stop string, when the server names it (vLLM, SGLang) */
        st->stop_sequence = ax_matched_stop_sequence(choice, st->_stop_sequences);
    }
    return 0;
}

/* An error object inside the stream ({"error":{...}}, llama-server and vLLM send one and
 * end the stream): mapped like an error body, with its code as the status when it has one. */
static int on_upstream_error(const cJSON *root, const char *data, size_t len, struct ax_error *err)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
    int64_t n_prompt = 0, n_ctx = 0;
    int status = 500;

    if (cJSON_IsNumber(code) && code->valuedouble >= 400 && code->valuedouble < 600)
        status = code->valueint;
    ax_translate_upstream_error(status, data, len, 0, err, &n_prompt, &n_ctx);
    return AX_EUPSTREAM;
}

static cJSON *parse_chunk(const char *data, size_t len)
{
    const char *end = NULL;
    cJSON *root;
    char *copy;
    size_t i, n = len;
    struct ax_error perr;

    /* cJSON 1.7.15 cuts a string at an escaped NUL, fails on a lone surrogate escape and
     * copies ill-formed UTF-8 as it is: the rare chunk holding one goes through json.c's
     * repairing parser instead (on a copy: the payload is the caller's), so its text reaches
     * the client with U+FFFD rather than being dropped or passed on ill-formed. A raw NUL
     * becomes an ill-formed byte first, so it too is carried as U+FFFD. */
    if (ax_json_needs_repair(data, len)) {
        if ((copy = malloc(len + 1)) == NULL)
            return NULL;
        memcpy(copy, data, len);
        copy[len] = '\0';
        while (n > 0 && copy[n - 1] == '\0')
            n--;
        for (i = 0; i < n; i++)
            if (copy[i] == '\0')
                copy[i] = (char)0xFF;
        root = ax_json_parse(copy, n, &perr);
        free(copy);
        return root;
    }
    root = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    if (root == NULL)
        return NULL;
    while (end < data + len && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
        end++;
    if (end != data + len) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* ---- the lean path: most chunks without cJSON ----
 *
 * Nearly every chunk is one text or reasoning delta; parsing it into a cJSON tree costs a
 * dozen allocations. The pull scanner of json_scan.c validates the whole payload as strict
 * JSON without allocating, and the member callbacks below pull out choices[].{index,
 * delta.{content, reasoning_content, reasoning, tool_calls[].{index, id, function.{name,
 * arguments}}}, finish_reason}. It gives up (and the cJSON path takes the chunk, from scratch) on
 * anything else it would have to interpret: more than a few choices or tool fragments, a non-null
 * usage, error or stop-string member, a \u or \/ escape anywhere, raw control bytes, duplicate keys
 * that matter, deep nesting, a non-integer index. So when it accepts, cJSON would have accepted the
 * same text and read the same values: both paths emit identical bytes (the tests run every fixture
 * both ways). */

#define LEAN_CHOICES 2
#define LEAN_FRAGS 4

struct lean_choice {
    struct piece text, reasoning;
    struct frag frags[LEAN_FRAGS];
    int n_frags;
    const char *finish;
    size_t finish_len;
    int skip; /* index present and not 0 (or not a number) */
};

/* A string member the translator reads: non-strings and "" count as absent, as in
 * delta_string(); a second occurrence gives up (cJSON would take the first). */
static int lean_text(struct ax_json_scan *l, struct piece *pc, int *seen)
{
    int plain;

    if ((*seen)++)
        return -1;
    ax_json_scan_ws(l);
    if (l->p < l->e && *l->p == '"') {
        if (ax_json_scan_string(l, &pc->raw, &pc->rawlen, &plain) < 0)
            return -1;
        if (pc->rawlen == 0)
            pc->raw = NULL;
        else if (plain) {
            pc->s = pc->raw;
            pc->n = pc->rawlen;
        }
        return 0;
    }
    return ax_json_scan_skip(l, 2);
}

/* An identifier-like string member (id, name): plain text only; "" counts as absent. */
static int lean_name(struct ax_json_scan *l, const char **out, size_t *len, int *seen)
{
    const char *raw;
    size_t n;
    int plain;

    if ((*seen)++)
        return -1;
    ax_json_scan_ws(l);
    if (l->p < l->e && *l->p == '"') {
        if (ax_json_scan_string(l, &raw, &n, &plain) < 0 || !plain)
            return -1;
        if (n > 0) {
            *out = raw;
            *len = n;
        }
        return 0;
    }
    return ax_json_scan_skip(l, 5);
}

struct lean_fn {
    struct frag *f;
    int seen_name, seen_args;
};

static int lean_fn_member(struct ax_json_scan *l, const char *k, size_t kl, void *ud)
{
    struct lean_fn *fn = ud;
    int plain;

    if (AX_JSON_KEY_IS(k, kl, "name"))
        return lean_name(l, &fn->f->name, &fn->f->name_len, &fn->seen_name);
    if (AX_JSON_KEY_IS(k, kl, "arguments")) {
        struct piece *a = &fn->f->args;
        if (fn->seen_args++)
            return -1;
        ax_json_scan_ws(l);
        if (l->p < l->e && *l->p == '"') {
            if (ax_json_scan_string(l, &a->raw, &a->rawlen, &plain) < 0)
                return -1;
            if (plain) {
                a->s = a->raw;
                a->n = a->rawlen;
            }
            return 0;
        }
        return ax_json_scan_skip(l, 5);
    }
    return ax_json_scan_skip(l, 5);
}

struct lean_tc {
    struct frag *f;
    int seen_index, seen_id, seen_fn;
};

static int lean_tc_member(struct ax_json_scan *l, const char *k, size_t kl, void *ud)
{
    struct lean_tc *tc = ud;
    const char *num;
    int rc;

    if (AX_JSON_KEY_IS(k, kl, "index")) {
        if (tc->seen_index++ || (rc = ax_json_scan_index(l, &num)) < 0)
            return -1;
        if (rc == 0)
            return ax_json_scan_skip(l, 4); /* not a number: no index */
        if (l->p - num > 9)
            return -1; /* big: cJSON's reading, not ours */
        tc->f->has_index = 1;
        tc->f->index = atoi(num);
        return 0;
    }
    if (AX_JSON_KEY_IS(k, kl, "id"))
        return lean_name(l, &tc->f->id, &tc->f->id_len, &tc->seen_id);
    if (AX_JSON_KEY_IS(k, kl, "function")) {
        struct lean_fn fn = {tc->f, 0, 0};
        if (tc->seen_fn++)
            return -1;
        if (ax_json_scan_null(l))
            return 0;
        return ax_json_scan_object(l, lean_fn_member, &fn);
    }
    return ax_json_scan_skip(l, 4);
}

static int lean_tool_call(struct ax_json_scan *l, void *ud)
{
    struct lean_choice *c = ud;
    struct lean_tc tc;

    if (c->n_frags == LEAN_FRAGS)
        return -1;
    memset(&tc, 0, sizeof(tc));
    tc.f = &c->frags[c->n_frags++];
    memset(tc.f, 0, sizeof(*tc.f));
    return ax_json_scan_object(l, lean_tc_member, &tc);
}

/* delta.tool_calls: null, or an array of objects. */
static int lean_tool_calls(struct ax_json_scan *l, struct lean_choice *c)
{
    if (ax_json_scan_null(l))
        return 0;
    return ax_json_scan_array(l, lean_tool_call, c);
}

struct lean_delta {
    struct lean_choice *c;
    int seen_content, seen_rc, seen_r, seen_tools;
};

static int lean_delta_member(struct ax_json_scan *l, const char *k, size_t kl, void *ud)
{
    struct lean_delta *d = ud;
    struct piece rc = {NULL, NULL, 0, 0};

    if (AX_JSON_KEY_IS(k, kl, "content"))
        return lean_text(l, &d->c->text, &d->seen_content);
    if (AX_JSON_KEY_IS(k, kl, "reasoning_content")) {
        if (lean_text(l, &rc, &d->seen_rc) < 0)
            return -1;
        if (rc.raw != NULL)
            d->c->reasoning = rc; /* preferred over "reasoning", whatever the order */
        return 0;
    }
    if (AX_JSON_KEY_IS(k, kl, "reasoning")) {
        if (lean_text(l, &rc, &d->seen_r) < 0)
            return -1;
        if (rc.raw != NULL && d->c->reasoning.raw == NULL)
            d->c->reasoning = rc; /* only when reasoning_content gave none */
        return 0;
    }
    if (AX_JSON_KEY_IS(k, kl, "tool_calls"))
        return d->seen_tools++ ? -1 : lean_tool_calls(l, d->c);
    return ax_json_scan_skip(l, 3);
}

struct lean_ch {
    struct lean_choice *c;
    int seen_index, seen_delta, seen_finish;
};

static int lean_choice_member(struct ax_json_scan *l, const char *k, size_t kl, void *ud)
{
    struct lean_ch *ch = ud;
    int plain, rc;
    const char *num;

    if (AX_JSON_KEY_IS(k, kl, "index")) {
        if (ch->seen_index++ || (rc = ax_json_scan_index(l, &num)) < 0)
            return -1; /* -0 is 0 to cJSON: leave such oddities to it */
        if (rc == 0) {
            ch->c->skip = 1; /* an index that is not a number: not the answer */
            return ax_json_scan_skip(l, 2);
        }
        ch->c->skip = !(l->p - num == 1 && *num == '0');
        return 0;
    }
    if (AX_JSON_KEY_IS(k, kl, "delta")) {
        struct lean_delta d = {ch->c, 0, 0, 0, 0};
        if (ch->seen_delta++)
            return -1;
        ax_json_scan_ws(l);
        if (l->p < l->e && *l->p == '{')
            return ax_json_scan_object(l, lean_delta_member, &d);
        return ax_json_scan_skip(l, 2);
    }
    if (AX_JSON_KEY_IS(k, kl, "finish_reason")) {
        if (ch->seen_finish++)
            return -1;
        ax_json_scan_ws(l);
        if (l->p < l->e && *l->p == '"') {
            if (ax_json_scan_string(l, &ch->c->finish, &ch->c->finish_len, &plain) < 0 || !plain)
                return -1;
            return 0;
        }
        return ax_json_scan_skip(l, 2);
    }
    if (AX_JSON_KEY_IS(k, kl, "stop_reason") || AX_JSON_KEY_IS(k, kl, "matched_stop") ||
        AX_JSON_KEY_IS(k, kl, "stopping_word"))
        return ax_json_scan_null(l) ? 0 : -1;
    return ax_json_scan_skip(l, 2);
}

struct lean_root {
    struct lean_choice choices[LEAN_CHOICES];
    int n;
    int seen_choices;
};

static int lean_choice(struct ax_json_scan *l, void *ud)
{
    struct lean_root *r = ud;
    struct lean_ch ch;

    ax_json_scan_ws(l);
    if (l->p >= l->e || *l->p != '{' || r->n == LEAN_CHOICES)
        return -1; /* not an object: leave it to cJSON */
    memset(&r->choices[r->n], 0, sizeof(r->choices[0]));
    memset(&ch, 0, sizeof(ch));
    ch.c = &r->choices[r->n++];
    return ax_json_scan_object(l, lean_choice_member, &ch);
}

static int lean_root_member(struct ax_json_scan *l, const char *k, size_t kl, void *ud)
{
    struct lean_root *r = ud;

    if (AX_JSON_KEY_IS(k, kl, "choices"))
        return r->seen_choices++ ? -1 : ax_json_scan_array(l, lean_choice, r);
    if (AX_JSON_KEY_IS(k, kl, "usage") || AX_JSON_KEY_IS(k, kl, "error"))
        return ax_json_scan_null(l) ? 0 : -1;
    return ax_json_scan_skip(l, 1);
}

/* Decodes the simple escapes of pc->raw into the stream's scratch buffer. */
static int lean_decode(struct ax_stream *st, struct piece *pc)
{
    const char *r = pc->raw, *end;
    char *d;
    int rc;

    if (pc->raw == NULL || pc->s != NULL)
        return 0; /* before any arithmetic: NULL + 0 is undefined */
    end = pc->raw + pc->rawlen;
    ax_buf_reset(&st->_scratch);
    if ((rc = ax_buf_reserve(&st->_scratch, pc->rawlen)) < 0)
        return rc;
    d = st->_scratch.data;
    while (r < end) {
        if (*r != '\\') {
            *d++ = *r++;
            continue;
        }
        switch (r[1]) {
        case 'b':
            *d++ = '\b';
            break;
        case 'f':
            *d++ = '\f';
            break;
        case 'n':
            *d++ = '\n';
            break;
        case 'r':
            *d++ = '\r';
            break;
        case 't':
            *d++ = '\t';
            break;
        default:
            *d++ = r[1];
            break; /* '"' or '\\' */
        }
        r += 2;
    }
    pc->s = st->_scratch.data;
    pc->n = (size_t)(d - st->_scratch.data);
    return 0;
}

/* Returns 1 when the chunk was translated here (*rc set), 0 to hand it to cJSON. */
static int lean_chunk(struct ax_stream *st, const char *data, size_t len, struct ax_buf *out,
                      struct ax_error *err, int *rc)
{
    struct ax_json_scan l = {data, data + len};
    struct lean_root root;
    struct lean_choice *c;
    int i, k;

    root.n = 0;
    root.seen_choices = 0;
    if (ax_json_scan_object(&l, lean_root_member, &root) < 0)
        return 0;
    ax_json_scan_ws(&l);
    if (l.p != l.e)
        return 0;
    if ((*rc = ax_stream_begin(st, out)) < 0)
        return 1;
    for (i = 0; i < root.n; i++) {
        c = &root.choices[i];
        if (c->skip)
            continue;
        if (c->reasoning.raw != NULL && ((*rc = lean_decode(st, &c->reasoning)) < 0 ||
                                         (*rc = on_reasoning(st, out, &c->reasoning)) < 0))
            return 1;
        if (c->text.raw != NULL &&
            ((*rc = lean_decode(st, &c->text)) < 0 || (*rc = on_text(st, out, &c->text)) < 0))
            return 1;
        for (k = 0; k < c->n_frags; k++)
            if ((*rc = lean_decode(st, &c->frags[k].args)) < 0 ||
                (*rc = on_tool_fragment(st, out, &c->frags[k], err)) < 0)
                return 1;
        if (c->finish != NULL && c->finish_len > 0) {
            snprintf(st->finish_reason, sizeof(st->finish_reason), "%.*s", (int)c->finish_len,
                     c->finish);
            st->saw_finish = 1;
            st->stop_sequence = NULL; /* no stop-string member: nothing matched */
        }
    }
    if (st->_scratch.cap > SCRATCH_KEEP)
        ax_buf_free(&st->_scratch); /* a rare huge escaped string: do not keep it */
    if (st->_fixed.cap > SCRATCH_KEEP)
        ax_buf_free(&st->_fixed);
    if (st->_run.cap > SCRATCH_KEEP)
        ax_buf_free(&st->_run);
    *rc = 0;
    return 1;
}

static int feed_chunk(struct ax_stream *st, const char *data, size_t len, struct ax_buf *out,
                      struct ax_error *err)
{
    const cJSON *choices, *choice, *usage, *idx, *e;
    cJSON *root;
    int rc = 0;

    if (!st->_cjson_only && lean_chunk(st, data, len, out, err, &rc))
        return rc;
    if ((root = parse_chunk(data, len)) == NULL || !cJSON_IsObject(root)) {
        st->garbage++; /* a garbage data line: skipped, never fatal */
        cJSON_Delete(root);
        return 0;
    }
    e = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (e != NULL && !cJSON_IsNull(e)) {
        rc = on_upstream_error(root, data, len, err);
        goto done;
    }
    if ((rc = ax_stream_begin(st, out)) < 0)
        goto done;
    usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (cJSON_IsObject(usage)) /* the include_usage chunk (choices: []), or vLLM's
                                  continuous usage: the last one wins */
        ax_usage_from_openai(usage, &st->usage);
    choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    cJSON_ArrayForEach(choice, choices)
    {
        idx = cJSON_GetObjectItemCaseSensitive(choice, "index");
        if (idx != NULL && (!cJSON_IsNumber(idx) || idx->valueint != 0))
            continue; /* n > 1: only the first choice is the answer */
        if ((rc = on_choice(st, out, choice, err)) < 0)
            goto done;
    }
done:
    cJSON_Delete(root);
    return rc;
}

int ax_stream_feed(struct ax_stream *st, const char *data, size_t len, struct ax_buf *out,
                   struct ax_error *err)
{
    size_t mark = out->len;
    int rc;

    if (st->state == AX_STREAM_ENDED || st->state == AX_STREAM_FAILED)
        return 0;
    st->chunks++;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        st->saw_done = 1;
        return 0;
    }
    rc = feed_chunk(st, data, len, out, err);
    tools_drop(st);
    rollback(out, mark, rc);
    return rc;
}

/* Calls still waiting for their name when the stream ends get a block anyway, with an
 * empty name, so no argument text is lost. */
static int flush_unopened_tools(struct ax_stream *st, struct ax_buf *o)
{
    int i, rc;

    for (i = 0; i < st->_n_tools; i++)
        if (st->_tools[i].block < 0 && (rc = open_tool(st, o, &st->_tools[i])) < 0)
            return rc;
    return 0;
}

/* As translate_response.c decides for complete answers. */
static const char *final_stop_reason(const struct ax_stream *st)
{
    const char *reason = ax_stop_reason_from_finish(
        st->finish_reason[0] != '\0' ? st->finish_reason : "stop", st->stop_sequence != NULL);

    if (strcmp(reason, "end_turn") == 0 && st->_n_tools > 0)
        return "tool_use"; /* some servers say "stop" next to tool calls */
    if (strcmp(reason, "tool_use") == 0 && st->_n_tools == 0)
        return "end_turn";
    return reason;
}

static int emit_end(struct ax_stream *st, struct ax_buf *o)
{
    struct ax_usage u;
    int rc;

    if ((rc = ax_stream_begin(st, o)) < 0 || (st->_tct_on && (rc = tct_finish(st, o)) < 0) ||
        (rc = flush_unopened_tools(st, o)) < 0)
        return rc;
    if (st->_fallback && st->_saw_reasoning && !st->_saw_text && st->_n_tools == 0 &&
        st->_reasoning.len > 0) {
        if ((rc = open_block(st, o, AX_STREAM_BLOCK_TEXT, -1)) < 0 ||
            (rc = EMIT_DELTA(st, o, "\"text_delta\",\"text\":", st->_reasoning.data,
                             st->_reasoning.len)) < 0)
            return rc;
        count_block_bytes(st, st->_reasoning.len);
    }
    if ((rc = close_block(st, o)) < 0)
        return rc;
    st->stop_reason = st->_paused ? "compaction" : final_stop_reason(st);
    if (strcmp(st->stop_reason, "stop_sequence") != 0)
        st->stop_sequence = NULL;
    current_usage(st, &u, 1);
    if ((rc = PUT_LIT(o, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":"
                         "{\"stop_reason\":")) < 0 ||
        (rc = put_cstr_or_null(o, st->stop_reason)) < 0 ||
        (rc = PUT_LIT(o, ",\"stop_sequence\":")) < 0 ||
        (rc = put_cstr_or_null(o, st->stop_sequence)) < 0 ||
        (rc = PUT_LIT(o, "},\"usage\":")) < 0 ||
        (rc = put_final_usage(o, &u, st->_scale, st->_c_iter, !st->_paused)) < 0)
        return rc;
    if (st->_cm && ((rc = PUT_LIT(o, ",\"context_management\":")) < 0 ||
                    (rc = ax_buf_append(o, st->_cm, strlen(st->_cm))) < 0))
        return rc;
    return PUT_LIT(o, "}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
}

int ax_stream_end(struct ax_stream *st, struct ax_buf *out, struct ax_error *err)
{
    size_t mark = out->len;
    int rc;

    if (st->state == AX_STREAM_ENDED || st->state == AX_STREAM_FAILED)
        return 0;
    if (!st->saw_finish && !st->saw_done) {
        ax_error_set(err, 502, "api_error",
                     "upstream stream ended before the model finished its answer");
        return AX_EUPSTREAM;
    }
    rc = emit_end(st, out);
    tools_drop(st);
    if (rc < 0) {
        rollback(out, mark, rc);
        return rc;
    }
    st->state = AX_STREAM_ENDED;
    ax_buf_free(&st->_reasoning);
    return 0;
}

int ax_stream_end_paused(struct ax_stream *st, struct ax_buf *out)
{
    struct ax_error err = {0};

    st->_paused = 1;
    st->saw_finish = 1;
    return ax_stream_end(st, out, &err);
}

int ax_stream_fail(struct ax_stream *st, const struct ax_error *err, struct ax_buf *out)
{
    const char *type = "api_error", *msg = "upstream stream failed";
    size_t mark = out->len;
    int rc;

    if (st->state == AX_STREAM_ENDED || st->state == AX_STREAM_FAILED)
        return 0;
    if (err != NULL && err->type != NULL && err->message[0] != '\0') {
        type = err->type;
        msg = err->message;
    }
    rc = close_block(st, out);
    tools_drop(st);
    if (rc < 0 ||
        (rc = PUT_LIT(out, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":")) < 0 ||
        (rc = put_str(out, type, strlen(type))) < 0 || (rc = PUT_LIT(out, ",\"message\":")) < 0 ||
        (rc = put_str(out, msg, strlen(msg))) < 0 || (rc = PUT_LIT(out, "}}\n\n")) < 0) {
        rollback(out, mark, rc);
        return rc;
    }
    st->state = AX_STREAM_FAILED;
    st->stop_reason = NULL;
    ax_buf_free(&st->_reasoning);
    return 0;
}

int ax_stream_ping(struct ax_buf *out)
{
    return PUT_LIT(out, "event: ping\ndata: {\"type\": \"ping\"}\n\n");
}

/* ---- summary ---- */

static int blank(const char *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
            return 0;
    return 1;
}

static int add_tool_summary(cJSON *content, const struct ax__stream_tool *t)
{
    cJSON *blk = cJSON_CreateObject(), *input = NULL;
    const char *why = NULL;
    char hash[17];

    if (blk == NULL || !cJSON_AddItemToArray(content, blk))
        return cJSON_Delete(blk), AX_ENOMEM;
    if (t->truncated) {
        why = "truncated";
    } else if (!blank(t->args.data, t->args.len)) { /* no arguments at all: {} */
        struct ax_error perr;
        char *copy = malloc(t->args.len + 1);
        if (copy == NULL)
            return AX_ENOMEM;
        memcpy(copy, t->args.data, t->args.len);
        copy[t->args.len] = '\0';
        input = ax_json_parse(copy, t->args.len, &perr); /* the checked parser */
        free(copy);
        if (!cJSON_IsObject(input)) {
            cJSON_Delete(input);
            input = NULL;
            why = "invalid";
        }
    }
    if (input == NULL)
        input = cJSON_CreateObject();
    snprintf(hash, sizeof(hash), "%016llx", (unsigned long long)t->hash);
    if (cJSON_AddStringToObject(blk, "type", "tool_use") == NULL ||
        cJSON_AddStringToObject(blk, "id", t->id != NULL ? t->id : "") == NULL ||
        cJSON_AddStringToObject(blk, "name", t->name != NULL ? t->name : "") == NULL ||
        input == NULL || !cJSON_AddItemToObject(blk, "input", input))
        return cJSON_Delete(input), AX_ENOMEM;
    if (why != NULL &&
        (cJSON_AddStringToObject(blk, "input_error", why) == NULL ||
         ax_json_add_stringn(blk, "partial_json", t->args.data != NULL ? t->args.data : "",
                             t->args.len) == NULL))
        return AX_ENOMEM;
    if (cJSON_AddNumberToObject(blk, "arguments_length", (double)t->args_len) == NULL ||
        cJSON_AddStringToObject(blk, "arguments_hash", hash) == NULL)
        return AX_ENOMEM;
    return 0;
}

static int add_block_summary(const struct ax_stream *st, cJSON *content,
                             const struct ax__stream_rec *r)
{
    cJSON *blk;
    int text = r->kind == AX_STREAM_BLOCK_TEXT;

    if (r->kind == AX_STREAM_BLOCK_TOOL)
        return add_tool_summary(content, &st->_tools[r->tool]);
    if (r->kind == AX_STREAM_BLOCK_NONE)
        return 0; /* the compaction block */
    if ((blk = cJSON_CreateObject()) == NULL || !cJSON_AddItemToArray(content, blk))
        return cJSON_Delete(blk), AX_ENOMEM;
    if (cJSON_AddStringToObject(blk, "type", text ? "text" : "thinking") == NULL ||
        cJSON_AddNumberToObject(blk, text ? "text_length" : "thinking_length", (double)r->length) ==
            NULL)
        return AX_ENOMEM;
    return 0;
}

cJSON *ax_stream_summary(const struct ax_stream *st)
{
    cJSON *root = cJSON_CreateObject(), *content, *usage, *meta;
    struct ax_usage u;
    const char *stop = st->state == AX_STREAM_FAILED ? "error" : st->stop_reason;
    int i, n;

    if (root == NULL)
        return NULL;
    current_usage(st, &u, 1);
    if (cJSON_AddStringToObject(root, "id", st->id) == NULL ||
        cJSON_AddStringToObject(root, "type", "message") == NULL ||
        cJSON_AddStringToObject(root, "role", "assistant") == NULL ||
        cJSON_AddStringToObject(root, "model", st->_model != NULL ? st->_model : "") == NULL ||
        (stop != NULL ? cJSON_AddStringToObject(root, "stop_reason", stop)
                      : cJSON_AddNullToObject(root, "stop_reason")) == NULL ||
        (st->stop_sequence != NULL
             ? cJSON_AddStringToObject(root, "stop_sequence", st->stop_sequence)
             : cJSON_AddNullToObject(root, "stop_sequence")) == NULL ||
        (usage = cJSON_AddObjectToObject(root, "usage")) == NULL ||
        ax_usage_add_anthropic(usage, &u, st->_scale) < 0 ||
        (content = cJSON_AddArrayToObject(root, "content")) == NULL)
        goto fail;
    n = st->_n_blocks < st->_cap_recs ? st->_n_blocks : st->_cap_recs;
    for (i = 0; i < n; i++)
        if (add_block_summary(st, content, &st->_recs[i]) < 0)
            goto fail;
    if ((meta = cJSON_AddObjectToObject(root, "anthroxy")) == NULL ||
        cJSON_AddNumberToObject(meta, "chunks", (double)st->chunks) == NULL ||
        cJSON_AddNumberToObject(meta, "garbage", (double)st->garbage) == NULL ||
        cJSON_AddNumberToObject(meta, "output_estimate", (double)st->output_estimate) == NULL ||
        cJSON_AddNumberToObject(meta, "blocks_omitted", (double)st->_recs_omitted) == NULL)
        goto fail;
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}
