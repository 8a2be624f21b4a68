/* translate_response.c - OpenAI chat.completion -> Anthropic message, and upstream error
 * statuses and bodies -> struct ax_error.
 *
 * messages.c calls it once a complete (non-streaming) answer is in, and for any upstream
 * status that is not 2xx; stream.c shares the usage and stop-reason helpers; tool ids follow
 * ids.c's rule. The rules for tool-call arguments that are not valid JSON are in
 * anthroxy_translate.h. With the request's tools given, tool calls the model wrote as text
 * become tool_use blocks (toolcall_text.c recognises them), native arguments get the same
 * repairs, and every call is checked against its tool's input_schema. */
#include "anthroxy_translate.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_buf.h"
#include "anthroxy_ids.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_toolcall_text.h"
#include "anthroxy_utf8.h"

#define SCRATCH_MAX ((size_t)1 << 30)

/* ---- usage and stop reason ---------------------------------------------------------- */

static int64_t num_or_zero(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 9.0e15)
        return 0;
    return (int64_t)v->valuedouble;
}

void ax_usage_from_openai(const cJSON *usage, struct ax_usage *u)
{
    const cJSON *det;

    memset(u, 0, sizeof(*u));
    if (!cJSON_IsObject(usage))
        return;
    u->have = 1;
    u->prompt_tokens = num_or_zero(usage, "prompt_tokens");
    u->completion_tokens = num_or_zero(usage, "completion_tokens");
    det = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens_details");
    if (cJSON_IsObject(det))
        u->cached_tokens = num_or_zero(det, "cached_tokens");
    if (u->cached_tokens > u->prompt_tokens)
        u->cached_tokens = u->prompt_tokens;
}

static double scaled(int64_t v, double scale)
{
    if (scale == 1.0 || !(scale > 0))
        return (double)v;
    return floor((double)v * scale + 0.5);
}

int ax_usage_add_anthropic(cJSON *obj, const struct ax_usage *u, double scale)
{
    int64_t input = u->prompt_tokens - u->cached_tokens;

    if (input < 0)
        input = 0;
    if (cJSON_AddNumberToObject(obj, "input_tokens", scaled(input, scale)) == NULL ||
        cJSON_AddNumberToObject(obj, "cache_creation_input_tokens", 0) == NULL ||
        cJSON_AddNumberToObject(obj, "cache_read_input_tokens", scaled(u->cached_tokens, scale)) ==
            NULL ||
        cJSON_AddNumberToObject(obj, "output_tokens", (double)u->completion_tokens) == NULL)
        return AX_ENOMEM;
    return 0;
}

const char *ax_stop_reason_from_finish(const char *finish_reason, int matched_stop_sequence)
{
    if (matched_stop_sequence)
        return "stop_sequence";
    if (finish_reason == NULL)
        return "end_turn";
    if (strcmp(finish_reason, "length") == 0)
        return "max_tokens";
    if (strcmp(finish_reason, "tool_calls") == 0 || strcmp(finish_reason, "function_call") == 0)
        return "tool_use";
    if (strcmp(finish_reason, "content_filter") == 0)
        return "refusal";
    return "end_turn";
}

const char *ax_matched_stop_sequence(const cJSON *choice, const cJSON *stop_sequences)
{
    static const char *const keys[] = {"stop_reason", "matched_stop", "stopping_word"};
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(choice, "finish_reason"), *s;
    size_t k;

    if (!cJSON_IsArray(stop_sequences) || !cJSON_IsString(fr) ||
        strcmp(fr->valuestring, "stop") != 0)
        return NULL;
    for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(choice, keys[k]);
        if (!cJSON_IsString(v) || v->valuestring[0] == '\0')
            continue;
        cJSON_ArrayForEach(s, stop_sequences)
        {
            if (cJSON_IsString(s) && strcmp(s->valuestring, v->valuestring) == 0)
                return s->valuestring;
        }
    }
    return NULL;
}

/* ---- tool-call arguments ------------------------------------------------------------ */

/* Cuts text at the last point where everything before it is a well-formed prefix of an
 * object or array (just after an opening bracket or a complete value, never after a key,
 * ':' or ','), then closes the open brackets. Writes the result to out. Returns 0, or
 * AX_EINVAL when no such prefix exists (not a container, garbage before any value). */
int ax__json_repair_prefix(const char *s, size_t n, struct ax_buf *out)
{
    char *stack = malloc(n + 1), *state = malloc(n + 1);
    size_t i = 0, depth = 0, cut = 0, cut_depth = 0;
    int rc = AX_EINVAL, have_cut = 0;

    if (stack == NULL || state == NULL) {
        rc = AX_ENOMEM;
        goto done;
    }
    while (i < n) {
        char c = s[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            i++;
        } else if (c == '{' || c == '[') {
            if (depth > 0 && state[depth - 1] != 'v' && state[depth - 1] != 'a')
                break;
            stack[depth] = c;
            state[depth++] = c == '{' ? 'k' : 'a';
            cut = ++i, cut_depth = depth, have_cut = 1;
        } else if (c == '}' || c == ']') {
            if (depth == 0 || stack[depth - 1] != (c == '}' ? '{' : '['))
                break;
            depth--;
            if (depth > 0 && state[depth - 1] == 'v')
                state[depth - 1] = 'n';
            cut = ++i, cut_depth = depth;
            if (depth == 0)
                break;
        } else if (c == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != '"')
                j += s[j] == '\\' ? 2 : 1;
            if (j >= n || depth == 0)
                break; /* unterminated string */
            i = j + 1;
            if (state[depth - 1] == 'k') {
                state[depth - 1] = 'c';
            } else if (state[depth - 1] == 'v' || state[depth - 1] == 'a') {
                if (state[depth - 1] == 'v')
                    state[depth - 1] = 'n';
                cut = i, cut_depth = depth;
            } else {
                break;
            }
        } else if (c == ':') {
            if (depth == 0 || state[depth - 1] != 'c')
                break;
            state[depth - 1] = 'v';
            i++;
        } else if (c == ',') {
            if (depth == 0 || (state[depth - 1] != 'n' && state[depth - 1] != 'a'))
                break;
            if (state[depth - 1] == 'n')
                state[depth - 1] = 'k';
            i++;
        } else if (strchr("-0123456789tfn", c) != NULL) {
            size_t j = i;
            while (j < n && strchr("+-.0123456789eEtruefalsn", s[j]) != NULL)
                j++;
            if (j >= n || depth == 0 || (state[depth - 1] != 'v' && state[depth - 1] != 'a'))
                break; /* a number or literal at the very end may be cut short */
            if (state[depth - 1] == 'v')
                state[depth - 1] = 'n';
            i = j;
            cut = i, cut_depth = depth;
        } else {
            break;
        }
    }
    if (!have_cut)
        goto done;
    /* the brackets below cut_depth are unchanged since the cut (see above) */
    if ((rc = ax_buf_append(out, s, cut)) < 0)
        goto done;
    while (cut_depth > 0) {
        char closer = stack[--cut_depth] == '{' ? '}' : ']';
        if ((rc = ax_buf_append(out, &closer, 1)) < 0)
            goto done;
    }
    rc = 0;
done:
    free(stack);
    free(state);
    return rc;
}

/* Parses text as a JSON object; NULL when it is not one. */
static cJSON *parse_object(const char *text, size_t n)
{
    cJSON *v = ax_json_parse_const(text, n, NULL);

    if (v != NULL && !cJSON_IsObject(v)) {
        cJSON_Delete(v);
        v = NULL;
    }
    return v;
}

static int only_space(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n')
            return 0;
    return 1;
}

void ax_toolcall_stats_fail(struct ax_toolcall_stats *s, const char *name, const char *why)
{
    if (s->schema_failures++ == 0)
        snprintf(s->first_failure, sizeof(s->first_failure), "%s: %s", name, why);
}

/* ---- the message -------------------------------------------------------------------- */

struct tresp {
    cJSON *content;
    int truncated; /* finish_reason "length" */
    int n_tool_use;
    struct ax_buf scratch;
    const cJSON *tools;             /* offered tools with at least one entry, else NULL */
    struct ax_toolcall_stats stats; /* copied to opts->stats at the end */
};

static cJSON *add_block(cJSON *content, const char *type, const char *key, const char *text)
{
    cJSON *b = cJSON_CreateObject();
    if (b == NULL || !cJSON_AddItemToArray(content, b)) {
        cJSON_Delete(b);
        return NULL;
    }
    if (cJSON_AddStringToObject(b, "type", type) == NULL ||
        cJSON_AddStringToObject(b, key, text) == NULL)
        return NULL;
    return b;
}

static int add_thinking(struct tresp *r, const cJSON *msg)
{
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(msg, "reasoning_content");
    cJSON *b;

    if (!cJSON_IsString(rc) || rc->valuestring[0] == '\0')
        rc = cJSON_GetObjectItemCaseSensitive(msg, "reasoning"); /* newer vLLM */
    if (!cJSON_IsString(rc) || rc->valuestring[0] == '\0')
        return 0;
    if ((b = add_block(r->content, "thinking", "thinking", rc->valuestring)) == NULL)
        return AX_ENOMEM;
    return cJSON_AddStringToObject(b, "signature", AX_THINKING_SIGNATURE) ? 0 : AX_ENOMEM;
}

static int add_tool_use(struct tresp *r, const char *id, const char *name, cJSON *input);

/* The text of the answer, scanned whole for tool calls written as text: runs of text
 * between calls are one text block each. */
struct text_scan {
    struct tresp *r;
    struct ax_buf run; /* the text since the last call */
};

static int scan_flush(struct text_scan *ts)
{
    cJSON *b;

    if (ts->run.len == 0)
        return 0;
    if ((b = cJSON_CreateObject()) == NULL || !cJSON_AddItemToArray(ts->r->content, b)) {
        cJSON_Delete(b);
        return AX_ENOMEM;
    }
    if (cJSON_AddStringToObject(b, "type", "text") == NULL ||
        ax_json_add_stringn(b, "text", ts->run.data, ts->run.len) == NULL)
        return AX_ENOMEM;
    ax_buf_reset(&ts->run);
    return 0;
}

static int scan_on_event(struct ax_tctext_event *ev, void *ud)
{
    struct text_scan *ts = ud;
    cJSON *input;
    int rc;

    if (ev->kind == AX_TCTEXT_TEXT)
        return ax_buf_append(&ts->run, ev->text, ev->len);
    if ((rc = scan_flush(ts)) < 0)
        return rc;
    input = ev->input; /* taken */
    ev->input = NULL;
    ts->r->stats.text_calls++;
    if (ev->repairs)
        ts->r->stats.repaired++;
    if (ev->check_error != NULL)
        ax_toolcall_stats_fail(&ts->r->stats, ev->name, ev->check_error);
    return add_tool_use(ts->r, NULL, ev->name, input);
}

static int add_text_scanned(struct tresp *r, const char *text, size_t n)
{
    struct text_scan ts = {r, {0}};
    struct ax_tctext t;
    int rc;

    ax_buf_init(&ts.run, n + 1);
    ax_tctext_init(&t, r->tools, n + 64); /* the whole text may be one block */
    if ((rc = ax_tctext_feed(&t, text, n, scan_on_event, &ts)) == 0 &&
        (rc = ax_tctext_finish(&t, scan_on_event, &ts)) == 0)
        rc = scan_flush(&ts);
    ax_tctext_free(&t);
    ax_buf_free(&ts.run);
    return rc < 0 ? AX_ENOMEM : 0;
}

static int add_text(struct tresp *r, const cJSON *msg)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "content"), *p;

    if (cJSON_IsString(c)) {
        if (!c->valuestring[0])
            return 0;
        if (r->tools != NULL)
            return add_text_scanned(r, c->valuestring, strlen(c->valuestring));
        return add_block(r->content, "text", "text", c->valuestring) ? 0 : AX_ENOMEM;
    }
    if (!cJSON_IsArray(c))
        return 0;
    ax_buf_reset(&r->scratch);
    cJSON_ArrayForEach(p, c) /* some servers answer with parts */
    {
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (cJSON_IsString(tx) && ax_buf_puts(&r->scratch, tx->valuestring) < 0)
            return AX_ENOMEM;
    }
    if (!r->scratch.len)
        return 0;
    if (r->tools != NULL)
        return add_text_scanned(r, r->scratch.data, r->scratch.len);
    return add_block(r->content, "text", "text", r->scratch.data) ? 0 : AX_ENOMEM;
}

static int add_tool_use(struct tresp *r, const char *id, const char *name, cJSON *input)
{
    cJSON *b = cJSON_CreateObject();
    char idbuf[160];

    if (b == NULL || !cJSON_AddItemToArray(r->content, b)) {
        cJSON_Delete(b);
        cJSON_Delete(input);
        return AX_ENOMEM;
    }
    if (id == NULL || id[0] == '\0')
        ax_tool_id_make(idbuf, sizeof(idbuf));
    else
        snprintf(idbuf, sizeof(idbuf), "%.*s%s", (int)ax_tool_id_prefix_len(id, strlen(id)),
                 AX_TOOL_ID_PREFIX, id);
    if (cJSON_AddStringToObject(b, "type", "tool_use") == NULL ||
        cJSON_AddStringToObject(b, "id", idbuf) == NULL ||
        cJSON_AddStringToObject(b, "name", name) == NULL ||
        !cJSON_AddItemToObject(b, "input", input)) {
        cJSON_Delete(input);
        return AX_ENOMEM;
    }
    r->n_tool_use++;
    return 0;
}

/* Argument text as an object: strictly, else with the unambiguous repairs (counted). */
static cJSON *parse_repaired(struct tresp *r, const char *raw)
{
    unsigned what = 0;
    cJSON *input;

    if (ax_tool_args_parse(raw, strlen(raw), &input, &what) < 0)
        return NULL;
    if (what != 0)
        r->stats.repaired++;
    return input;
}

/* A call to an offered tool whose arguments fail its input_schema is counted, not dropped. */
static void check_call(struct tresp *r, const char *name, const cJSON *input)
{
    const cJSON *tool;
    char why[AX_TCTEXT_WHY_MAX];

    if (r->tools == NULL || (tool = ax_tctext_find_tool(r->tools, name, strlen(name))) == NULL)
        return;
    if (ax_tool_args_check(input, cJSON_GetObjectItemCaseSensitive(tool, "input_schema"), why,
                           sizeof(why)) < 0)
        ax_toolcall_stats_fail(&r->stats, name, why);
}

/* One OpenAI tool call; see anthroxy_translate.h for the invalid-arguments rules. */
static int one_tool_call(struct tresp *r, const cJSON *call)
{
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
    const cJSON *idv = cJSON_GetObjectItemCaseSensitive(call, "id");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
    const char *id = cJSON_IsString(idv) ? idv->valuestring : NULL;
    const char *raw;
    cJSON *input;
    int rc;

    if (!cJSON_IsString(name) || name->valuestring[0] == '\0')
        return 0; /* nothing a client could run; an empty name is never a real call */
    if (cJSON_IsObject(args))
        return (input = cJSON_Duplicate(args, 1)) ? add_tool_use(r, id, name->valuestring, input)
                                                  : AX_ENOMEM;
    raw = cJSON_IsString(args) ? args->valuestring : "";
    if (only_space(raw)) {
        input = cJSON_CreateObject(); /* a call without arguments */
    } else if ((input = r->truncated ? parse_object(raw, strlen(raw)) : parse_repaired(r, raw)) ==
                   NULL &&
               r->truncated) { /* cut by max_tokens: the prefix rule below, not a repair */
        ax_buf_reset(&r->scratch);
        rc = ax__json_repair_prefix(raw, strlen(raw), &r->scratch);
        if (rc == 0)
            input = parse_object(r->scratch.data, r->scratch.len);
        if (input == NULL) {
            if ((input = cJSON_CreateObject()) == NULL ||
                cJSON_AddStringToObject(input, AX_RAW_ARGUMENTS_KEY, raw) == NULL) {
                cJSON_Delete(input);
                return AX_ENOMEM;
            }
        }
    } else if (input == NULL) {
        ax_buf_reset(&r->scratch);
        if (ax_buf_printf(&r->scratch, AX_INVALID_CALL_TEXT "%s", name->valuestring, raw) < 0)
            return AX_ENOMEM;
        return add_block(r->content, "text", "text", r->scratch.data) ? 0 : AX_ENOMEM;
    }
    if (input == NULL)
        return AX_ENOMEM;
    check_call(r, name->valuestring, input);
    return add_tool_use(r, id, name->valuestring, input);
}

/* The seed's reasoning fallback: a turn that only reasoned (no text, no tool call) also
 * gets its reasoning as a text block, for clients that show text only. */
static int add_reasoning_fallback(struct tresp *r)
{
    const cJSON *only = r->content->child;
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(only, "type");

    if (only == NULL || only->next != NULL || strcmp(ty->valuestring, "thinking") != 0)
        return 0;
    return add_block(r->content, "text", "text",
                     cJSON_GetObjectItemCaseSensitive(only, "thinking")->valuestring)
               ? 0
               : AX_ENOMEM;
}

static int fill_message(cJSON *m, const cJSON *openai, const cJSON *choice,
                        const struct ax_response_opts *opts, struct tresp *r)
{
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(choice, "message");
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(choice, "finish_reason");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(openai, "model");
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls"), *call;
    const char *finish = cJSON_IsString(fr) ? fr->valuestring : NULL, *stop_seq, *reason;
    struct ax_usage u;
    cJSON *usage;
    char id[64];

    r->truncated = finish != NULL && strcmp(finish, "length") == 0;
    ax_id_make(id, sizeof(id), "msg_");
    if (cJSON_AddStringToObject(m, "id", id) == NULL ||
        cJSON_AddStringToObject(m, "type", "message") == NULL ||
        cJSON_AddStringToObject(m, "role", "assistant") == NULL)
        return AX_ENOMEM;
    if (opts->client_model != NULL || cJSON_IsString(model)) {
        if (!cJSON_AddStringToObject(m, "model",
                                     opts->client_model ? opts->client_model : model->valuestring))
            return AX_ENOMEM;
    }
    if ((r->content = cJSON_AddArrayToObject(m, "content")) == NULL)
        return AX_ENOMEM;
    if (opts->compaction && !cJSON_AddItemToArray(r->content, cJSON_Duplicate(opts->compaction, 1)))
        return AX_ENOMEM;
    if (add_thinking(r, msg) < 0 || add_text(r, msg) < 0)
        return AX_ENOMEM;
    cJSON_ArrayForEach(call, calls)
    {
        if (one_tool_call(r, call) < 0)
            return AX_ENOMEM;
    }
    if (opts->reasoning_fallback && add_reasoning_fallback(r) < 0)
        return AX_ENOMEM;
    stop_seq = ax_matched_stop_sequence(choice, opts->stop_sequences);
    reason = ax_stop_reason_from_finish(finish, stop_seq != NULL);
    if (strcmp(reason, "end_turn") == 0 && r->n_tool_use > 0)
        reason = "tool_use"; /* some servers say "stop" next to tool calls */
    else if (strcmp(reason, "tool_use") == 0 && r->n_tool_use == 0)
        reason = "end_turn"; /* every call was unusable and became text */
    if (cJSON_AddStringToObject(m, "stop_reason", reason) == NULL)
        return AX_ENOMEM;
    if ((stop_seq ? cJSON_AddStringToObject(m, "stop_sequence", stop_seq)
                  : cJSON_AddNullToObject(m, "stop_sequence")) == NULL)
        return AX_ENOMEM;
    ax_usage_from_openai(cJSON_GetObjectItemCaseSensitive(openai, "usage"), &u);
    if ((usage = cJSON_AddObjectToObject(m, "usage")) == NULL)
        return AX_ENOMEM;
    if (opts->context_management &&
        !cJSON_AddItemToObject(m, "context_management",
                               cJSON_Duplicate(opts->context_management, 1)))
        return AX_ENOMEM;
    return ax_usage_add_anthropic(usage, &u, opts->usage_scale);
}

int ax_translate_response(const cJSON *openai, const struct ax_response_opts *opts, cJSON **out,
                          struct ax_error *err)
{
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(openai, "choices");
    const cJSON *choice = cJSON_IsArray(choices) ? choices->child : NULL;
    struct tresp r;
    cJSON *m = NULL;
    int rc;

    *out = NULL;
    memset(&r, 0, sizeof(r));
    ax_buf_init(&r.scratch, SCRATCH_MAX);
    if (cJSON_IsArray(opts->tools) && opts->tools->child != NULL)
        r.tools = opts->tools;
    if (!cJSON_IsObject(openai) || !cJSON_IsObject(choice) ||
        !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(choice, "message"))) {
        rc =
            ax_error_set(err, 502, "api_error", "upstream answer has no choices[0].message object");
        goto done;
    }
    if ((m = cJSON_CreateObject()) == NULL ||
        (rc = fill_message(m, openai, choice, opts, &r)) < 0) {
        rc = AX_ENOMEM;
        ax_error_set(err, 500, "api_error", "out of memory translating the response");
        goto done;
    }
    *out = m;
    m = NULL;
    rc = 0;
    if (opts->stats != NULL)
        *opts->stats = r.stats;
done:
    cJSON_Delete(m);
    ax_buf_free(&r.scratch);
    return rc;
}

/* ---- upstream errors ---------------------------------------------------------------- */

/* find_ci is a GNU extension. */
static const char *find_ci(const char *s, const char *pat)
{
    size_t n = strlen(pat);
    for (; *s; s++) {
        size_t i = 0;
        while (i < n && s[i] && tolower((unsigned char)s[i]) == tolower((unsigned char)pat[i]))
            i++;
        if (i == n)
            return s;
    }
    return NULL;
}

/* Finds pat (case-insensitive) in s and reads the integer that follows it, skipping spaces
 * and an opening parenthesis. Returns a pointer after the number, or NULL. */
static const char *num_after(const char *s, const char *pat, int64_t *out)
{
    const char *p = find_ci(s, pat);
    char *end;
    long long v;

    if (p == NULL)
        return NULL;
    p += strlen(pat);
    while (*p == ' ' || *p == '(')
        p++;
    if (*p < '0' || *p > '9')
        return NULL;
    v = strtoll(p, &end, 10);
    *out = v;
    return end;
}

/* Context overflow in the words of llama-server and vLLM. Returns 1 and fills n, m (0 when
 * the body says overflow without numbers). */
static int parse_overflow(const cJSON *eobj, const char *msg, int64_t *n, int64_t *m)
{
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(eobj, "type");
    const char *p;
    int64_t a = 0, b = 0;

    if (cJSON_IsString(ty) && strcmp(ty->valuestring, "exceed_context_size_error") == 0) {
        *n = num_or_zero(eobj, "n_prompt_tokens");
        *m = num_or_zero(eobj, "n_ctx");
        if ((*n == 0 || *m == 0) &&
            !(num_after(msg, "request", n) && num_after(msg, "context size", m)))
            *n = *m = 0;
        return 1;
    }
    /* llama-server builds without the numeric fields */
    if (num_after(msg, "request", &a) && num_after(msg, "exceeds the available context size", &b))
        goto found;
    if ((p = num_after(msg, "maximum context length is", &b)) != NULL) {
        /* vLLM / OpenAI. "you requested T tokens (N in the messages, K in the completion)"
         * counts max_tokens too: only the prompt's share says whether the prompt fits; when
         * it does, the fault is max_tokens and compaction would not help. */
        int share = find_ci(p, "in the messages") != NULL && num_after(p, "tokens (", &a);
        if (!share && !num_after(p, "has", &a) && !num_after(p, "resulted in", &a) &&
            !num_after(p, "requested", &a))
            return 0;
        if (a >= b)
            goto found;
        return 0;
    }
    if (num_after(msg, "input prompt", &a) && num_after(msg, "limit of", &b))
        goto found;
    if (num_after(msg, "total length", &a) && num_after(msg, "context length", &b))
        goto found;
    /* SGLang: "The input (N tokens) is longer than the model's context length (M tokens)." */
    if (num_after(msg, "the input", &a) && num_after(msg, "context length", &b) && a >= b)
        goto found;
    return 0;
found:
    *n = a;
    *m = b;
    return 1;
}

/* llama-server answers some deterministic request-parse failures with 500: retrying them
 * cannot help, so the client must see a 400. */
static int is_parse_failure(const char *msg)
{
    static const char *const pats[] = {
        "[json.exception",
        "jinja",
        "chat template",
        "must alternate",
        "failed to parse",
        "unsupported content",
        "expected 'content'",
        "invalid tool_choice",
        "image input is not supported", /* no mmproj loaded: an image can never pass */
        "prefill is incompatible",
        "assistant messages at the end"};
    size_t i;

    for (i = 0; i < sizeof(pats) / sizeof(pats[0]); i++)
        if (find_ci(msg, pats[i]) != NULL)
            return 1;
    return 0;
}

static int client_status(int status)
{
    switch (status) {
    case 400:
    case 401:
    case 403:
    case 404:
    case 413:
    case 429:
        return status;
    case 422:
        return 400; /* vLLM's validation errors */
    default:
        /* 5xx keep their status as api_error (a loading llama-server's 503 included): the
         * client retries them. 529 is kept for an upstream we cannot reach at all. */
        if (status >= 500 && status <= 599)
            return status;
        return status >= 400 ? 400 : 502;
    }
}

void ax_translate_upstream_error(int status, const char *body, size_t len, int retry_after,
                                 struct ax_error *err, int64_t *n_prompt, int64_t *n_ctx)
{
    cJSON *root = body && len ? cJSON_ParseWithLength(body, len) : NULL;
    const cJSON *eobj = root, *mv;
    const char *msg = NULL;
    char text[256];
    int64_t n = 0, m = 0;
    int cs = client_status(status);

    *n_prompt = 0;
    *n_ctx = 0;
    if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "error")))
        eobj = cJSON_GetObjectItemCaseSensitive(root, "error");
    mv = cJSON_GetObjectItemCaseSensitive(eobj, "message");
    if (!cJSON_IsString(mv))
        mv = cJSON_GetObjectItemCaseSensitive(root, "error"); /* {"error": "text"} */
    if (!cJSON_IsString(mv))
        mv = cJSON_GetObjectItemCaseSensitive(root, "detail"); /* FastAPI */
    /* Redacted before it is cut to fit: an upstream that echoes the request's headers
     * (Authorization: Bearer <the upstream key>) must not show them to the client, nor a
     * prefix of them. */
    if (cJSON_IsString(mv)) {
        ax_redact_cstr(mv->valuestring); /* our own parse: ours to edit */
        msg = mv->valuestring;
    } else {
        char raw[4096];
        size_t i, k = 0, rn = body != NULL ? (len < sizeof(raw) ? len : sizeof(raw)) : 0;
        if (rn > 0)
            memcpy(raw, body, rn);
        rn = ax_redact(raw, rn);
        for (i = 0; i < rn && k + 1 < sizeof(text); i++)
            text[k++] = (raw[i] >= 0x20 && raw[i] < 0x7f) ? raw[i] : ' ';
        text[k] = '\0';
        msg = text;
    }
    if ((status == 400 || status == 413 || status == 422 || status == 500) &&
        parse_overflow(eobj, msg, &n, &m)) {
        *n_prompt = n;
        *n_ctx = m;
        if (n > 0 && m > 0)
            ax_error_set(err, 400, "invalid_request_error",
                         "prompt is too long: %lld tokens > %lld maximum", (long long)n,
                         (long long)m);
        else
            ax_error_set(err, 400, "invalid_request_error",
                         "prompt is too long: the request exceeds the upstream's context window");
        goto done;
    }
    if (status == 500 && is_parse_failure(msg)) {
        ax_error_set(err, 400, "invalid_request_error", "upstream rejected the request: %s", msg);
        goto done;
    }
    if (msg[0] == '\0')
        ax_error_set(err, cs, ax_error_type_for_status(cs), "upstream returned HTTP %d", status);
    else
        ax_error_set(err, cs, ax_error_type_for_status(cs), "upstream returned HTTP %d: %s", status,
                     msg);
    if (cs == 429 || cs >= 500)
        err->retry_after = retry_after > 0 ? retry_after : 0;
done:
    /* the upstream's text goes into the client's JSON: ill-formed UTF-8 (or a character cut
     * by the message limit) becomes U+FFFD */
    ax_utf8_repair_cstr(err->message, sizeof(err->message));
    cJSON_Delete(root);
}
