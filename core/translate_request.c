/* translate_request.c - Anthropic Messages request -> OpenAI chat.completions request.
 *
 * One pass over the Anthropic tree, validating as it goes, building a new OpenAI tree (the
 * input is never modified). messages.c calls it after the policy chain's on_request (and
 * again for /v1/messages/count_tokens and on a retry after on_upstream_error); the chain's
 * on_upstream_request edits what it builds, json.c prints it once. The `check` tool of the
 * policy engine runs it too.
 *
 * Message shaping (what chat templates of local models accept):
 * - system: the top-level `system` (string or text blocks) and any role:"system" message
 *   that comes before the first user/assistant message become ONE leading system message.
 * - A role:"system" message later in `messages` (Claude Code's mid-conversation system
 *   message) is carried in a user turn, wrapped in <system-reminder> tags: appended to the
 *   user message just before it, or else put at the front of the next user message (or,
 *   when none follows, a user message of its own). Merging it into the leading system
 *   message would also keep the text, but it would change the prompt's prefix, and
 *   llama-server then re-processes the whole prompt instead of reusing its cache.
 * - Consecutive Anthropic messages of one role merge into one OpenAI message (Anthropic
 *   merges them too; templates that insist on alternation reject the split).
 * - An assistant turn is ONE message: its text blocks joined, `reasoning_content` from its
 *   thinking blocks (llama-server renders it for templates that show reasoning;
 *   redacted_thinking and signatures are dropped), all its tool_use blocks as `tool_calls`,
 *   and content "" (not null) when it has only tool calls, as llama-server itself answers.
 * - A user turn's tool_result blocks become role:"tool" messages first, in order, directly
 *   after the assistant message; then one user message with the turn's text and images.
 *   Tool messages carry text only (few templates render images there): an image inside a
 *   tool_result is replaced by a note and sent, in order, at the start of that user message.
 *   `is_error` prefixes the tool text with "Error: " (OpenAI has no error flag).
 *   A tool_result whose id is not a tool call of the assistant message just before becomes
 *   user text ("[tool result for <id>] ...") so templates never see an orphan tool message.
 * - Text-only user content is sent as one string (blocks joined by a blank line); content
 *   with images as a parts array (text and image_url parts in order).
 * - document and search_result blocks (in user turns and tool results) are sent as their
 *   text; a PDF or other binary document as a one-line note, never a 400, since a rejected
 *   block in the history would fail every later request of the conversation.
 * - The tool set follows the conversation: a tool with defer_loading is not offered until
 *   a tool_reference names it (in a tool_result, a tool search result or a tool change);
 *   tool_addition / tool_removal blocks change the set from their point on, and the upstream
 *   gets the set in effect at the end (templates list tools once, before the conversation);
 *   tool calls of a removed tool still render. A tool_reference renders as "Tool loaded: X".
 *   Anthropic's server-side tool search, MCP tool references and container uploads cannot
 *   be expressed: 400 naming the field.
 * - Anthropic's server-side blocks in history (server_tool_use, web_search_tool_result, the
 *   MCP connector's, ...) become short notes with their JSON; a compaction block its summary
 *   (null: nothing); fallback nothing; any other unknown type is a 400 naming it.
 * - Tool ids: a leading "toolu_" is stripped (ax_tool_id_to_upstream, ids.c), so an upstream
 *   id given to the client as "toolu_" + id comes back exactly as the upstream made it.
 *
 * Knobs: thinking {enabled|adaptive} -> chat_template_kwargs.enable_thinking:true,
 * {disabled} -> false (the Qwen3-style switch llama-server and vLLM both pass to the
 * template). Against llama-server we also send reasoning_format:"deepseek", so reasoning
 * comes back in `reasoning_content` whatever the server's --reasoning-format is ("deepseek"
 * rather than "auto" because older builds do not know "auto"). */
#include "anthroxy_translate.h"

#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "anthroxy_buf.h"
#include "anthroxy_ids.h"
#include "anthroxy_json.h"

#define TEXT_MAX ((size_t)1 << 30) /* the body cap bounds it long before */
#define JOIN "\n\n"
#define SYS_OPEN "<system-reminder>\n"
#define SYS_CLOSE "\n</system-reminder>"
#define ERR_PREFIX "Error: "
#define TOOL_IMAGE_NOTE "[image: attached in the next message]"

enum open_kind { OPEN_NONE, OPEN_USER, OPEN_ASSISTANT, OPEN_TOOL };

struct treq {
    const struct ax_translate_opts *opts;
    struct ax_error *err;
    cJSON *msgs;           /* output messages (owned by the output root) */
    enum open_kind open;   /* the message being built, not yet in msgs */
    int started;           /* a user or assistant message was seen */
    struct ax_buf sys;     /* leading system text */
    struct ax_buf pending; /* mid-conversation system text waiting for a user message */
    /* OPEN_USER */
    cJSON *parts; /* text and image_url parts */
    int has_image;
    /* OPEN_ASSISTANT */
    struct ax_buf text, reasoning;
    int have_text, have_reasoning;
    cJSON *tool_calls; /* NULL until the first tool_use */
    /* the tool_calls of the last assistant message flushed (owned by msgs) */
    const cJSON *last_calls;
    /* images from tool_results of the current user turn */
    cJSON *tool_images;
    struct ax_buf scratch;
    /* the tool set as the conversation changes it (deferred tools, tool changes) */
    struct tool_entry *tset;
    int n_tset, cap_tset;
};

/* One tool the request can offer: from `tools` (index >= 0) or added by value in a
 * tool_addition block (index -1). */
struct tool_entry {
    const char *name;
    const cJSON *def;
    int index;
    int active;
};

static int bad(struct treq *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct treq *t, const char *fmt, ...)
{
    char msg[AX_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return ax_error_set(t->err, 400, "invalid_request_error", "%s", msg);
}

static int nomem(struct treq *t)
{
    ax_error_set(t->err, 500, "api_error", "out of memory translating the request");
    return AX_ENOMEM;
}

/* ---- the tool set: defer_loading, tool_reference, tool_addition, tool_removal ----- */

static struct tool_entry *tset_find(struct treq *t, const char *name)
{
    int i;
    for (i = 0; i < t->n_tset; i++)
        if (strcmp(t->tset[i].name, name) == 0)
            return &t->tset[i];
    return NULL;
}

static int tset_add(struct treq *t, const char *name, const cJSON *def, int index, int active)
{
    struct tool_entry *e;

    if ((e = tset_find(t, name)) != NULL) { /* a definition by value replaces the entry */
        e->def = def;
        e->index = index;
        e->active = active;
        return 0;
    }
    if (t->n_tset == t->cap_tset) {
        int cap = t->cap_tset ? 2 * t->cap_tset : 32;
        struct tool_entry *n = realloc(t->tset, (size_t)cap * sizeof(*n));
        if (n == NULL)
            return nomem(t);
        t->tset = n;
        t->cap_tset = cap;
    }
    e = &t->tset[t->n_tset++];
    e->name = name;
    e->def = def;
    e->index = index;
    e->active = active;
    return 0;
}

/* The request's tools: all in effect but those with defer_loading, which wait for a
 * reference. Malformed entries are skipped here and reported by build_tools. */
static int tset_init(struct treq *t, const cJSON *req)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools"), *tool;
    int i = 0, rc;

    if (!cJSON_IsArray(tools))
        return 0;
    cJSON_ArrayForEach(tool, tools)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(tool, "name");
        const cJSON *dl = cJSON_GetObjectItemCaseSensitive(tool, "defer_loading");
        if (dl != NULL && !cJSON_IsBool(dl) && !cJSON_IsNull(dl))
            return bad(t, "tools.%d.defer_loading: expected a boolean", i);
        if (cJSON_IsObject(tool) && cJSON_IsString(name) && name->valuestring[0] &&
            (rc = tset_add(t, name->valuestring, tool, i, !cJSON_IsTrue(dl))) < 0)
            return rc;
        i++;
    }
    return 0;
}

/* A tool_reference (in a tool result, a tool search result or a tool change) loads a
 * deferred tool from then on. */
static int tset_reference(struct treq *t, const cJSON *ref, const char *key, const char *where)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(ref, key);
    struct tool_entry *e;

    if (!cJSON_IsString(name) || name->valuestring[0] == '\0')
        return bad(t, "%s.%s: expected a non-empty string", where, key);
    if ((e = tset_find(t, name->valuestring)) == NULL)
        return bad(t, "%s.%s: no tool named '%s' in tools", where, key, name->valuestring);
    e->active = 1;
    return 0;
}

/* tool_addition / tool_removal: the tool set changes from this point of the conversation
 * on; the upstream gets the set in effect at the end (chat templates list the tools once,
 * before the conversation), and history using a removed tool still renders. */
static int tset_change(struct treq *t, const cJSON *blk, const char *ty, const char *where)
{
    const cJSON *tool = cJSON_GetObjectItemCaseSensitive(blk, "tool"), *tt, *def, *name;
    int add = strcmp(ty, "tool_addition") == 0;
    char w[160];

    snprintf(w, sizeof(w), "%s.tool", where);
    if (!cJSON_IsObject(tool) ||
        !cJSON_IsString(tt = cJSON_GetObjectItemCaseSensitive(tool, "type")))
        return bad(t, "%s: expected an object with a type", w);
    if (strcmp(tt->valuestring, "tool_reference") == 0) {
        struct tool_entry *e;
        int rc = tset_reference(t, tool, "name", w);
        if (rc < 0)
            return rc;
        e = tset_find(t, cJSON_GetObjectItemCaseSensitive(tool, "name")->valuestring);
        e->active = add;
        return 0;
    }
    if (add && strcmp(tt->valuestring, "tool_definition") == 0) {
        def = cJSON_GetObjectItemCaseSensitive(tool, "definition");
        name = cJSON_GetObjectItemCaseSensitive(def, "name");
        if (!cJSON_IsObject(def))
            return bad(t, "%s.definition: expected a tool object", w);
        if (!cJSON_IsString(name) || name->valuestring[0] == '\0')
            return bad(t, "%s.definition.name: expected a non-empty string", w);
        if (cJSON_GetObjectItemCaseSensitive(def, "input_schema") != NULL &&
            !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(def, "input_schema")))
            return bad(t, "%s.definition.input_schema: expected an object", w);
        return tset_add(t, name->valuestring, def, -1, 1);
    }
    if (strcmp(tt->valuestring, "mcp_tool_reference") == 0 ||
        strcmp(tt->valuestring, "mcp_toolset_reference") == 0)
        return bad(t,
                   "%s.type: '%s' names a tool of Anthropic's MCP connector, which an "
                   "OpenAI upstream cannot reach; declare the tool in tools instead",
                   w, tt->valuestring);
    return bad(t, "%s.type: unknown tool change type '%s'", w, tt->valuestring);
}

/* Appends s after a blank line when b already has text; empty strings add nothing. */
static int buf_join(struct ax_buf *b, int *have, const char *s)
{
    int rc;
    if (*s == '\0')
        return 0;
    if (*have && (rc = ax_buf_append(b, JOIN, sizeof(JOIN) - 1)) < 0)
        return rc;
    *have = 1;
    return ax_buf_puts(b, s);
}

/* ---- building messages ------------------------------------------------------------- */

static cJSON *new_msg(const char *role)
{
    cJSON *m = cJSON_CreateObject();
    if (m && cJSON_AddStringToObject(m, "role", role) == NULL) {
        cJSON_Delete(m);
        return NULL;
    }
    return m;
}

/* Parts that are all text become one string: every template accepts that. */
static int flush_user(struct treq *t)
{
    cJSON *m = new_msg("user"), *p, *content;
    int have = 0;

    if (m == NULL)
        return AX_ENOMEM;
    if (t->has_image) {
        content = t->parts;
        t->parts = NULL;
    } else {
        ax_buf_reset(&t->scratch);
        cJSON_ArrayForEach(p, t->parts)
        {
            const cJSON *tx = cJSON_GetObjectItemCaseSensitive(p, "text");
            if (buf_join(&t->scratch, &have, tx->valuestring) < 0)
                goto fail;
        }
        content = cJSON_CreateString(t->scratch.data ? t->scratch.data : "");
        cJSON_Delete(t->parts);
        t->parts = NULL;
    }
    if (content == NULL || !cJSON_AddItemToObject(m, "content", content)) {
        cJSON_Delete(content);
        goto fail;
    }
    t->has_image = 0;
    cJSON_AddItemToArray(t->msgs, m);
    return 0;
fail:
    cJSON_Delete(m);
    return AX_ENOMEM;
}

static int flush_assistant(struct treq *t)
{
    cJSON *m = new_msg("assistant");

    if (m == NULL)
        return AX_ENOMEM;
    if (cJSON_AddStringToObject(m, "content", t->have_text ? t->text.data : "") == NULL)
        goto fail;
    if (t->have_reasoning &&
        cJSON_AddStringToObject(m, "reasoning_content", t->reasoning.data) == NULL)
        goto fail;
    if (t->tool_calls != NULL) {
        if (!cJSON_AddItemToObject(m, "tool_calls", t->tool_calls))
            goto fail; /* still ours: freed with the translator's state */
        t->last_calls = t->tool_calls;
        t->tool_calls = NULL;
    } else {
        t->last_calls = NULL;
    }
    ax_buf_reset(&t->text);
    ax_buf_reset(&t->reasoning);
    t->have_text = t->have_reasoning = 0;
    cJSON_AddItemToArray(t->msgs, m);
    return 0;
fail:
    cJSON_Delete(m);
    return AX_ENOMEM;
}

/* Puts the open message into msgs. last_calls (what tool messages may answer) lives from
 * an assistant message's flush to the next user message's. */
static int flush_open(struct treq *t)
{
    int rc = 0;
    if (t->open == OPEN_USER) {
        rc = flush_user(t);
        t->last_calls = NULL;
    } else if (t->open == OPEN_ASSISTANT) {
        rc = flush_assistant(t);
    }
    t->open = OPEN_NONE;
    return rc;
}

static int add_text_part(struct treq *t, const char *s)
{
    cJSON *p = cJSON_CreateObject();
    if (p == NULL || cJSON_AddStringToObject(p, "type", "text") == NULL ||
        cJSON_AddStringToObject(p, "text", s) == NULL) {
        cJSON_Delete(p);
        return AX_ENOMEM;
    }
    cJSON_AddItemToArray(t->parts, p);
    return 0;
}

/* Opens (or keeps open) the user message; pending system text goes first. */
static int open_user(struct treq *t)
{
    int rc;

    if (t->open == OPEN_USER)
        return 0;
    if ((rc = flush_open(t)) < 0)
        return rc;
    if ((t->parts = cJSON_CreateArray()) == NULL)
        return AX_ENOMEM;
    t->open = OPEN_USER;
    t->has_image = 0;
    if (t->pending.len > 0) {
        rc = add_text_part(t, t->pending.data);
        ax_buf_reset(&t->pending);
    }
    return rc;
}

static int open_assistant(struct treq *t)
{
    int rc;

    if (t->open == OPEN_ASSISTANT)
        return 0;
    if ((rc = flush_open(t)) < 0)
        return rc;
    t->open = OPEN_ASSISTANT;
    return 0;
}

/* ---- blocks ------------------------------------------------------------------------- */

static int block_text(struct treq *t, const cJSON *blk, const char *where, const char **out)
{
    const cJSON *tx = cJSON_GetObjectItemCaseSensitive(blk, "text");
    if (!cJSON_IsString(tx))
        return bad(t, "%s.text: expected a string", where);
    *out = tx->valuestring;
    return 0;
}

/* image block -> {"type":"image_url","image_url":{"url":...}} */
static int image_part(struct treq *t, const cJSON *blk, const char *where, cJSON **out)
{
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(blk, "source"), *ty, *v;
    cJSON *part = NULL, *iu;
    struct ax_buf b;
    const char *url;

    if (!cJSON_IsObject(src))
        return bad(t, "%s.source: expected an object", where);
    ty = cJSON_GetObjectItemCaseSensitive(src, "type");
    if (!cJSON_IsString(ty))
        return bad(t, "%s.source.type: expected a string", where);
    ax_buf_init(&b, TEXT_MAX);
    if (strcmp(ty->valuestring, "base64") == 0) {
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(src, "media_type");
        v = cJSON_GetObjectItemCaseSensitive(src, "data");
        if (!cJSON_IsString(mt))
            return bad(t, "%s.source.media_type: expected a string", where);
        if (!cJSON_IsString(v))
            return bad(t, "%s.source.data: expected a string", where);
        if (ax_buf_printf(&b, "data:%s;base64,", mt->valuestring) < 0 ||
            ax_buf_puts(&b, v->valuestring) < 0)
            goto fail;
        url = b.data;
    } else if (strcmp(ty->valuestring, "url") == 0) {
        v = cJSON_GetObjectItemCaseSensitive(src, "url");
        if (!cJSON_IsString(v))
            return bad(t, "%s.source.url: expected a string", where);
        url = v->valuestring;
    } else {
        return bad(t, "%s.source.type: unsupported image source '%s'", where, ty->valuestring);
    }
    if ((part = cJSON_CreateObject()) == NULL ||
        cJSON_AddStringToObject(part, "type", "image_url") == NULL ||
        (iu = cJSON_AddObjectToObject(part, "image_url")) == NULL ||
        cJSON_AddStringToObject(iu, "url", url) == NULL)
        goto fail;
    ax_buf_free(&b);
    *out = part;
    return 0;
fail:
    ax_buf_free(&b);
    cJSON_Delete(part);
    return nomem(t);
}

static const char *block_type(struct treq *t, const cJSON *blk, const char *where, int *rc)
{
    const cJSON *ty;
    if (!cJSON_IsObject(blk)) {
        *rc = bad(t, "%s: expected an object", where);
        return NULL;
    }
    ty = cJSON_GetObjectItemCaseSensitive(blk, "type");
    if (!cJSON_IsString(ty)) {
        *rc = bad(t, "%s.type: expected a string", where);
        return NULL;
    }
    *rc = 0;
    return ty->valuestring;
}

/* Text of a string-or-text-blocks value (system, role:"system" content) into b. */
static int text_or_blocks(struct treq *t, const cJSON *v, const char *where, struct ax_buf *b,
                          int *have)
{
    const cJSON *blk;
    char w[128];
    int i = 0, rc;

    if (cJSON_IsString(v))
        return buf_join(b, have, v->valuestring) < 0 ? nomem(t) : 0;
    if (!cJSON_IsArray(v))
        return bad(t, "%s: expected a string or an array of text blocks", where);
    cJSON_ArrayForEach(blk, v)
    {
        const char *ty, *tx = "";
        snprintf(w, sizeof(w), "%s.%d", where, i++);
        if ((ty = block_type(t, blk, w, &rc)) == NULL)
            return rc;
        if (strcmp(ty, "text") != 0)
            return bad(t, "%s.type: expected 'text', got '%s'", w, ty);
        if ((rc = block_text(t, blk, w, &tx)) < 0)
            return rc;
        if (buf_join(b, have, tx) < 0)
            return nomem(t);
    }
    return 0;
}

/* A document or search_result block as text into out. Text documents (a `text` source, or
 * a `content` source of text blocks) and search results keep their text; a PDF or any
 * other binary document becomes a one-line note: a 400 here would stick to the
 * conversation for good (every later request carries it), so it is never one. */
static int doc_text(struct treq *t, const cJSON *blk, const char *ty, const char *where,
                    struct ax_buf *out)
{
    const cJSON *title = cJSON_GetObjectItemCaseSensitive(blk, "title");
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(blk, "source"), *body, *st, *b;
    int have = 0, rc;

    if (cJSON_IsString(title) && (rc = buf_join(out, &have, title->valuestring)) < 0)
        return nomem(t);
    if (strcmp(ty, "search_result") == 0) {
        if (cJSON_IsString(src) &&
            ax_buf_printf(out, "%s%s", have ? "\n" : "", src->valuestring) < 0)
            return nomem(t);
        have = have || cJSON_IsString(src);
        body = cJSON_GetObjectItemCaseSensitive(blk, "content");
    } else {
        if (!cJSON_IsObject(src))
            return bad(t, "%s.source: expected an object", where);
        st = cJSON_GetObjectItemCaseSensitive(src, "type");
        if (cJSON_IsString(st) && strcmp(st->valuestring, "text") == 0)
            body = cJSON_GetObjectItemCaseSensitive(src, "data");
        else if (cJSON_IsString(st) && strcmp(st->valuestring, "content") == 0)
            body = cJSON_GetObjectItemCaseSensitive(src, "content");
        else
            return ax_buf_printf(out,
                                 "%s[document omitted: %s documents cannot be sent to this "
                                 "model]",
                                 have ? "\n" : "",
                                 cJSON_IsString(st) ? st->valuestring : "such") < 0
                       ? nomem(t)
                       : 0;
    }
    if (cJSON_IsString(body))
        return buf_join(out, &have, body->valuestring) < 0 ? nomem(t) : 0;
    cJSON_ArrayForEach(b, body)
    {
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(b, "text");
        if (cJSON_IsString(tx) && buf_join(out, &have, tx->valuestring) < 0)
            return nomem(t);
    }
    return 0;
}

/* A compaction block that reached translation (policies/compaction.lua normally replaces
 * the history before it with its summary): its summary as text; content null (a failed
 * compaction) is a no-op, "". */
static int compaction_text(struct treq *t, const cJSON *blk, const char *where, const char **out)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(blk, "content");

    *out = "";
    if (c == NULL || cJSON_IsNull(c))
        return 0;
    if (!cJSON_IsString(c))
        return bad(t, "%s.content: expected a string or null", where);
    *out = c->valuestring;
    return 0;
}

#define NOTE_MAX 2000 /* bytes of a server block's JSON kept in its note */

/* Anthropic's server-side blocks (its own tools' calls and results, the MCP connector's
 * calls, results and listings): nothing here ran them and the upstream has none of those
 * tools, but what they said is part of the conversation, so each goes as a short note. */
static int is_server_block(const char *ty)
{
    static const char *const types[] = {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "advisor_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "mcp_tool_listing",
    };
    size_t i;
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(ty, types[i]) == 0)
            return 1;
    return 0;
}

/* The note for a server block into t->scratch ("" for none); a tool search result also
 * loads the deferred tools it found. Blocks that only carry metadata (fallback) give "";
 * container_upload, a file in Anthropic's container, is refused. */
static int other_block(struct treq *t, const cJSON *blk, const char *ty, const char *where,
                       int *handled)
{
    char *js;
    int rc;

    *handled = 1;
    ax_buf_reset(&t->scratch);
    if (strcmp(ty, "fallback") == 0)
        return 0; /* which model served an earlier turn: nothing to show the model */
    if (strcmp(ty, "container_upload") == 0)
        return bad(t,
                   "%s.type: 'container_upload' refers to a file in Anthropic's code "
                   "execution container, which an OpenAI upstream cannot read",
                   where);
    if (!is_server_block(ty)) {
        *handled = 0;
        return 0;
    }
    if (strcmp(ty, "tool_search_tool_result") == 0) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(blk, "content");
        const cJSON *refs = cJSON_GetObjectItemCaseSensitive(content, "tool_references");
        const cJSON *r;
        char w[160];
        int i = 0;
        if (!cJSON_IsObject(content))
            return bad(t, "%s.content: expected an object", where);
        if (refs != NULL && !cJSON_IsArray(refs))
            return bad(t, "%s.content.tool_references: expected an array", where);
        cJSON_ArrayForEach(r, refs)
        {
            snprintf(w, sizeof(w), "%s.content.tool_references.%d", where, i++);
            if ((rc = tset_reference(t, r, "tool_name", w)) < 0)
                return rc;
            if (ax_buf_printf(&t->scratch, "%sTool loaded: %s", i > 1 ? "\n" : "",
                              cJSON_GetObjectItemCaseSensitive(r, "tool_name")->valuestring) < 0)
                return nomem(t);
        }
        return 0;
    }
    if ((js = cJSON_PrintUnformatted(blk)) == NULL)
        return nomem(t);
    rc = ax_buf_printf(&t->scratch, "[%s: %.*s%s]", ty, NOTE_MAX, js,
                       strlen(js) > NOTE_MAX ? " ..." : "");
    cJSON_free(js);
    return rc < 0 ? nomem(t) : 0;
}

static int is_doc_block(const char *ty)
{
    return strcmp(ty, "document") == 0 || strcmp(ty, "search_result") == 0;
}

/* ---- tool results ------------------------------------------------------------------- */

static int call_is_pending(const struct treq *t, const char *id)
{
    const cJSON *c;
    if (t->last_calls == NULL || (t->open != OPEN_NONE && t->open != OPEN_TOOL))
        return 0;
    cJSON_ArrayForEach(c, t->last_calls)
    {
        const cJSON *cid = cJSON_GetObjectItemCaseSensitive(c, "id");
        if (cJSON_IsString(cid) && strcmp(cid->valuestring, id) == 0)
            return 1;
    }
    return 0;
}

/* The text of a tool_result's content into t->scratch; its images go to t->tool_images. */
static int tool_result_text(struct treq *t, const cJSON *content, const char *where)
{
    const cJSON *blk;
    char w[128];
    int i = 0, have = 0, rc;

    if (content == NULL || cJSON_IsNull(content))
        return 0;
    if (cJSON_IsString(content))
        return ax_buf_puts(&t->scratch, content->valuestring) < 0 ? nomem(t) : 0;
    if (!cJSON_IsArray(content))
        return bad(t, "%s.content: expected a string or an array of blocks", where);
    cJSON_ArrayForEach(blk, content)
    {
        const char *ty, *tx = "";
        if (snprintf(w, sizeof(w), "%s.content.%d", where, i++) >= (int)sizeof(w))
            w[sizeof(w) - 1] = '\0'; /* a field path cut short is still readable */
        if ((ty = block_type(t, blk, w, &rc)) == NULL)
            return rc;
        if (strcmp(ty, "text") == 0) {
            if ((rc = block_text(t, blk, w, &tx)) < 0)
                return rc;
        } else if (strcmp(ty, "image") == 0) {
            cJSON *part;
            if ((rc = image_part(t, blk, w, &part)) < 0)
                return rc;
            if (t->tool_images == NULL && (t->tool_images = cJSON_CreateArray()) == NULL) {
                cJSON_Delete(part);
                return nomem(t);
            }
            cJSON_AddItemToArray(t->tool_images, part);
            tx = TOOL_IMAGE_NOTE;
        } else if (is_doc_block(ty)) {
            struct ax_buf d;
            ax_buf_init(&d, TEXT_MAX);
            rc = doc_text(t, blk, ty, w, &d);
            if (rc == 0 && d.len > 0 && buf_join(&t->scratch, &have, d.data) < 0)
                rc = nomem(t);
            ax_buf_free(&d);
            if (rc < 0)
                return rc;
            continue;
        } else if (strcmp(ty, "tool_reference") == 0) {
            /* what a client-side tool search returns: the tool is loaded from now on */
            if ((rc = tset_reference(t, blk, "tool_name", w)) < 0)
                return rc;
            if (buf_join(&t->scratch, &have, "Tool loaded: ") < 0 ||
                ax_buf_puts(&t->scratch,
                            cJSON_GetObjectItemCaseSensitive(blk, "tool_name")->valuestring) < 0)
                return nomem(t);
            continue;
        } else {
            return bad(t, "%s.type: unknown block type '%s' in a tool_result", w, ty);
        }
        if (buf_join(&t->scratch, &have, tx) < 0)
            return nomem(t);
    }
    return 0;
}

static int tool_result(struct treq *t, const cJSON *blk, const char *where)
{
    const cJSON *idv = cJSON_GetObjectItemCaseSensitive(blk, "tool_use_id");
    const cJSON *ie = cJSON_GetObjectItemCaseSensitive(blk, "is_error");
    const char *id;
    cJSON *m;
    int rc;

    if (!cJSON_IsString(idv) || idv->valuestring[0] == '\0')
        return bad(t, "%s.tool_use_id: expected a non-empty string", where);
    if (ie != NULL && !cJSON_IsBool(ie) && !cJSON_IsNull(ie))
        return bad(t, "%s.is_error: expected a boolean", where);
    id = ax_tool_id_to_upstream(idv->valuestring);
    ax_buf_reset(&t->scratch);
    if (cJSON_IsTrue(ie) && ax_buf_puts(&t->scratch, ERR_PREFIX) < 0)
        return nomem(t);
    if ((rc = tool_result_text(t, cJSON_GetObjectItemCaseSensitive(blk, "content"), where)) < 0)
        return rc;
    if (!call_is_pending(t, id)) {
        /* orphan: keep its text as user text rather than send a tool message no
         * template can place */
        struct ax_buf b;
        ax_buf_init(&b, TEXT_MAX);
        rc = ax_buf_printf(&b, "[tool result for %s]\n%s", idv->valuestring,
                           t->scratch.data ? t->scratch.data : "");
        if (rc == 0 && (rc = open_user(t)) == 0)
            rc = add_text_part(t, b.data);
        ax_buf_free(&b);
        return rc < 0 ? nomem(t) : 0;
    }
    if ((m = new_msg("tool")) == NULL || cJSON_AddStringToObject(m, "tool_call_id", id) == NULL ||
        cJSON_AddStringToObject(m, "content", t->scratch.data ? t->scratch.data : "") == NULL) {
        cJSON_Delete(m);
        return nomem(t);
    }
    cJSON_AddItemToArray(t->msgs, m);
    t->open = OPEN_TOOL;
    return 0;
}

/* ---- messages ----------------------------------------------------------------------- */

static int user_blocks(struct treq *t, const cJSON *content, const char *where)
{
    const cJSON *blk;
    char w[128];
    int i, rc;

    /* pass 1: tool results, directly after the assistant message */
    i = 0;
    cJSON_ArrayForEach(blk, content)
    {
        const char *ty;
        snprintf(w, sizeof(w), "%s.%d", where, i++);
        if ((ty = block_type(t, blk, w, &rc)) == NULL)
            return rc;
        if (strcmp(ty, "tool_result") == 0 && (rc = tool_result(t, blk, w)) < 0)
            return rc;
    }
    if (t->tool_images != NULL) {
        cJSON *p, *next;
        if ((rc = open_user(t)) < 0)
            return nomem(t);
        for (p = t->tool_images->child; p != NULL; p = next) {
            next = p->next;
            cJSON_AddItemToArray(t->parts, cJSON_DetachItemViaPointer(t->tool_images, p));
        }
        t->has_image = 1;
        cJSON_Delete(t->tool_images);
        t->tool_images = NULL;
    }
    /* pass 2: the rest, in order */
    i = 0;
    cJSON_ArrayForEach(blk, content)
    {
        const char *ty = cJSON_GetObjectItemCaseSensitive(blk, "type")->valuestring, *tx = "";
        snprintf(w, sizeof(w), "%s.%d", where, i++);
        if (strcmp(ty, "tool_result") == 0) {
            continue;
        } else if (strcmp(ty, "text") == 0) {
            if ((rc = block_text(t, blk, w, &tx)) < 0)
                return rc;
            if (open_user(t) < 0 || (tx[0] != '\0' && add_text_part(t, tx) < 0))
                return nomem(t);
        } else if (strcmp(ty, "image") == 0) {
            cJSON *part;
            if ((rc = image_part(t, blk, w, &part)) < 0)
                return rc;
            if (open_user(t) < 0) {
                cJSON_Delete(part);
                return nomem(t);
            }
            cJSON_AddItemToArray(t->parts, part);
            t->has_image = 1;
        } else if (is_doc_block(ty)) {
            struct ax_buf d;
            ax_buf_init(&d, TEXT_MAX);
            rc = doc_text(t, blk, ty, w, &d);
            if (rc == 0 && d.len > 0 && (open_user(t) < 0 || add_text_part(t, d.data) < 0))
                rc = nomem(t);
            ax_buf_free(&d);
            if (rc < 0)
                return rc;
        } else if (strcmp(ty, "thinking") == 0 || strcmp(ty, "redacted_thinking") == 0) {
            continue; /* meaningless in a user turn; never sent */
        } else if (strcmp(ty, "compaction") == 0) {
            if ((rc = compaction_text(t, blk, w, &tx)) < 0)
                return rc;
            if (tx[0] != '\0' && (open_user(t) < 0 || add_text_part(t, tx) < 0))
                return nomem(t);
        } else if (strcmp(ty, "tool_addition") == 0 || strcmp(ty, "tool_removal") == 0) {
            if ((rc = tset_change(t, blk, ty, w)) < 0)
                return rc;
        } else if (strcmp(ty, "tool_reference") == 0) {
            if ((rc = tset_reference(t, blk, "tool_name", w)) < 0)
                return rc;
        } else {
            int handled;
            if ((rc = other_block(t, blk, ty, w, &handled)) < 0)
                return rc;
            if (!handled)
                return bad(t, "%s.type: unknown block type '%s'", w, ty);
            if (t->scratch.len > 0 && (open_user(t) < 0 || add_text_part(t, t->scratch.data) < 0))
                return nomem(t);
        }
    }
    return 0;
}

static int tool_use(struct treq *t, const cJSON *blk, const char *where)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(blk, "id");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(blk, "name");
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(blk, "input");
    cJSON *call = NULL, *fn;
    char *args = NULL;

    if (!cJSON_IsString(id) || id->valuestring[0] == '\0')
        return bad(t, "%s.id: expected a non-empty string", where);
    if (!cJSON_IsString(name) || name->valuestring[0] == '\0')
        return bad(t, "%s.name: expected a non-empty string", where);
    if (input != NULL && !cJSON_IsObject(input) && !cJSON_IsNull(input))
        return bad(t, "%s.input: expected an object", where);
    if (t->tool_calls == NULL && (t->tool_calls = cJSON_CreateArray()) == NULL)
        return nomem(t);
    if (cJSON_IsObject(input) && (args = cJSON_PrintUnformatted(input)) == NULL)
        return nomem(t);
    if ((call = cJSON_CreateObject()) == NULL ||
        cJSON_AddStringToObject(call, "id", ax_tool_id_to_upstream(id->valuestring)) == NULL ||
        cJSON_AddStringToObject(call, "type", "function") == NULL ||
        (fn = cJSON_AddObjectToObject(call, "function")) == NULL ||
        cJSON_AddStringToObject(fn, "name", name->valuestring) == NULL ||
        cJSON_AddStringToObject(fn, "arguments", args ? args : "{}") == NULL) {
        cJSON_free(args);
        cJSON_Delete(call);
        return nomem(t);
    }
    cJSON_free(args);
    cJSON_AddItemToArray(t->tool_calls, call);
    return 0;
}

static int assistant_blocks(struct treq *t, const cJSON *content, const char *where)
{
    const cJSON *blk;
    char w[128];
    int i = 0, rc;

    if (cJSON_IsString(content)) {
        if (content->valuestring[0] != '\0' &&
            buf_join(&t->text, &t->have_text, content->valuestring) < 0)
            return nomem(t);
        return 0;
    }
    cJSON_ArrayForEach(blk, content)
    {
        const char *ty, *tx = "";
        snprintf(w, sizeof(w), "%s.%d", where, i++);
        if ((ty = block_type(t, blk, w, &rc)) == NULL)
            return rc;
        if (strcmp(ty, "text") == 0) {
            if ((rc = block_text(t, blk, w, &tx)) < 0)
                return rc;
            if (tx[0] != '\0' && buf_join(&t->text, &t->have_text, tx) < 0)
                return nomem(t);
        } else if (strcmp(ty, "tool_use") == 0) {
            if ((rc = tool_use(t, blk, w)) < 0)
                return rc;
        } else if (strcmp(ty, "thinking") == 0) {
            const cJSON *th = cJSON_GetObjectItemCaseSensitive(blk, "thinking");
            if (th != NULL && !cJSON_IsString(th))
                return bad(t, "%s.thinking: expected a string", w);
            if (th != NULL && th->valuestring[0] != '\0' &&
                buf_join(&t->reasoning, &t->have_reasoning, th->valuestring) < 0)
                return nomem(t);
        } else if (strcmp(ty, "redacted_thinking") == 0) {
            continue; /* opaque to anyone but Anthropic */
        } else if (strcmp(ty, "compaction") == 0) {
            if ((rc = compaction_text(t, blk, w, &tx)) < 0)
                return rc;
            if (tx[0] != '\0' && buf_join(&t->text, &t->have_text, tx) < 0)
                return nomem(t);
        } else if (strcmp(ty, "tool_addition") == 0 || strcmp(ty, "tool_removal") == 0) {
            if ((rc = tset_change(t, blk, ty, w)) < 0)
                return rc;
        } else {
            int handled;
            if ((rc = other_block(t, blk, ty, w, &handled)) < 0)
                return rc;
            if (!handled)
                return bad(t, "%s.type: unknown block type '%s'", w, ty);
            if (t->scratch.len > 0 && buf_join(&t->text, &t->have_text, t->scratch.data) < 0)
                return nomem(t);
        }
    }
    return 0;
}

/* A role:"system" message: see the file comment for where its text goes. */
static int system_message(struct treq *t, const cJSON *content, const char *where)
{
    struct ax_buf b;
    int have = 0, rc;

    if (!t->started) {
        int h = t->sys.len > 0;
        return text_or_blocks(t, content, where, &t->sys, &h);
    }
    ax_buf_init(&b, TEXT_MAX);
    if ((rc = ax_buf_puts(&b, SYS_OPEN)) < 0 ||
        (rc = text_or_blocks(t, content, where, &b, &have)) < 0 || !have ||
        (rc = ax_buf_puts(&b, SYS_CLOSE)) < 0)
        goto done; /* an empty system message adds nothing */
    if (t->open == OPEN_USER) {
        rc = add_text_part(t, b.data);
    } else {
        if (t->pending.len > 0)
            rc = ax_buf_append(&t->pending, JOIN, sizeof(JOIN) - 1);
        if (rc == 0)
            rc = ax_buf_append(&t->pending, b.data, b.len);
    }
done:
    ax_buf_free(&b);
    if (rc < 0 && rc != AX_EINVAL)
        return nomem(t);
    return rc;
}

static int one_message(struct treq *t, const cJSON *m, int idx)
{
    const cJSON *role, *content;
    char where[64];
    int rc;

    snprintf(where, sizeof(where), "messages.%d", idx);
    if (!cJSON_IsObject(m))
        return bad(t, "%s: expected an object", where);
    role = cJSON_GetObjectItemCaseSensitive(m, "role");
    content = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!cJSON_IsString(role))
        return bad(t, "%s.role: expected \"user\", \"assistant\" or \"system\"", where);
    snprintf(where, sizeof(where), "messages.%d.content", idx);
    if (strcmp(role->valuestring, "system") == 0)
        return system_message(t, content, where);
    if (!cJSON_IsString(content) && !cJSON_IsArray(content))
        return bad(t, "%s: expected a string or an array of blocks", where);
    if (strcmp(role->valuestring, "user") == 0) {
        t->started = 1;
        if (t->open == OPEN_ASSISTANT && flush_open(t) < 0) /* sets last_calls */
            return nomem(t);
        if (cJSON_IsString(content)) {
            if ((rc = open_user(t)) < 0 || (rc = add_text_part(t, content->valuestring)) < 0)
                return nomem(t);
            return 0;
        }
        if (content->child == NULL) /* empty turn: keep the alternation */
            return open_user(t) < 0 ? nomem(t) : 0;
        return user_blocks(t, content, where);
    }
    if (strcmp(role->valuestring, "assistant") == 0) {
        t->started = 1;
        if (open_assistant(t) < 0)
            return nomem(t);
        return assistant_blocks(t, content, where);
    }
    snprintf(where, sizeof(where), "messages.%d.role", idx);
    return bad(t, "%s: expected \"user\", \"assistant\" or \"system\", got '%s'", where,
               role->valuestring);
}

static int build_messages(struct treq *t, const cJSON *req, cJSON *out)
{
    const cJSON *system = cJSON_GetObjectItemCaseSensitive(req, "system");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages"), *m;
    cJSON *sysmsg;
    int idx = 0, rc, have = 0;

    if (!cJSON_IsArray(msgs) || msgs->child == NULL)
        return bad(t, "messages: expected a non-empty array");
    if (system != NULL && !cJSON_IsNull(system) &&
        (rc = text_or_blocks(t, system, "system", &t->sys, &have)) < 0)
        return rc;
    if ((t->msgs = cJSON_AddArrayToObject(out, "messages")) == NULL)
        return nomem(t);
    cJSON_ArrayForEach(m, msgs)
    {
        if ((rc = one_message(t, m, idx++)) < 0)
            return rc;
    }
    if (!t->started)
        return bad(t, "messages: expected at least one user or assistant message");
    if (t->pending.len > 0 && (rc = open_user(t)) < 0)
        return nomem(t);
    if (flush_open(t) < 0)
        return nomem(t);
    if (t->sys.len > 0) {
        if ((sysmsg = new_msg("system")) == NULL ||
            cJSON_AddStringToObject(sysmsg, "content", t->sys.data) == NULL) {
            cJSON_Delete(sysmsg);
            return nomem(t);
        }
        cJSON_InsertItemInArray(t->msgs, 0, sysmsg);
    }
    return 0;
}

/* ---- tools and knobs ---------------------------------------------------------------- */

static int add_tool(struct treq *t, cJSON *arr, const cJSON *tool)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(tool, "name");
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(tool, "description");
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(tool, "input_schema");
    cJSON *ft, *fn, *params;

    if ((ft = cJSON_CreateObject()) == NULL)
        return nomem(t);
    cJSON_AddItemToArray(arr, ft);
    if (cJSON_AddStringToObject(ft, "type", "function") == NULL ||
        (fn = cJSON_AddObjectToObject(ft, "function")) == NULL ||
        cJSON_AddStringToObject(fn, "name", name->valuestring) == NULL)
        return nomem(t);
    if (cJSON_IsString(desc) &&
        !(t->opts->share ? cJSON_AddItemToObject(fn, "description",
                                                 cJSON_CreateStringReference(desc->valuestring))
                         : cJSON_AddStringToObject(fn, "description", desc->valuestring) != NULL))
        return nomem(t);
    if (schema != NULL)
        params = t->opts->share ? cJSON_CreateObjectReference(schema->child)
                                : cJSON_Duplicate(schema, 1);
    else
        params = cJSON_Parse("{\"type\":\"object\",\"properties\":{}}");
    if (params == NULL || !cJSON_AddItemToObject(fn, "parameters", params)) {
        cJSON_Delete(params);
        return nomem(t);
    }
    return 0;
}

/* Checks one tool; returns 1 when it is a function tool to send, 0 to skip it. */
static int check_tool(struct treq *t, const cJSON *tool, int i, int *rc)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(tool, "name");
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(tool, "type");
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(tool, "description");
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(tool, "input_schema");
    char w[48];

    *rc = 0;
    snprintf(w, sizeof(w), "tools.%d", i);
    if (!cJSON_IsObject(tool))
        return *rc = bad(t, "%s: expected an object", w);
    if (!cJSON_IsString(name) || name->valuestring[0] == '\0')
        return *rc = bad(t, "%s.name: expected a non-empty string", w);
    if (desc != NULL && !cJSON_IsString(desc) && !cJSON_IsNull(desc))
        return *rc = bad(t, "%s.description: expected a string", w);
    if (schema != NULL && !cJSON_IsObject(schema))
        return *rc = bad(t, "%s.input_schema: expected an object", w);
    if (cJSON_IsString(ty) && strncmp(ty->valuestring, "tool_search_tool_", 17) == 0)
        return *rc = bad(t,
                         "%s.type: '%s' is Anthropic's server-side tool search, which cannot "
                         "run against an OpenAI upstream; give the client a tool search of its "
                         "own that returns tool_reference blocks (as Claude Code's ToolSearch "
                         "does), or send the tools without defer_loading",
                         w, ty->valuestring);
    /* Anthropic's server tools (web_search_...) have a type and no schema: nothing here
     * can run them, so they are not offered to the model. */
    if (ty != NULL && (!cJSON_IsString(ty) || strcmp(ty->valuestring, "custom") != 0) &&
        schema == NULL)
        return 0;
    return 1;
}

struct choice {
    const char *mode; /* "auto", "required", "none", or NULL when absent */
    const char *name; /* the named tool */
    int no_parallel;
};

static int parse_tool_choice(struct treq *t, const cJSON *tc, struct choice *c)
{
    const cJSON *ty, *name, *dp;

    memset(c, 0, sizeof(*c));
    if (tc == NULL || cJSON_IsNull(tc))
        return 0;
    if (!cJSON_IsObject(tc))
        return bad(t, "tool_choice: expected an object");
    ty = cJSON_GetObjectItemCaseSensitive(tc, "type");
    if (!cJSON_IsString(ty))
        return bad(t, "tool_choice.type: expected a string");
    dp = cJSON_GetObjectItemCaseSensitive(tc, "disable_parallel_tool_use");
    if (dp != NULL && !cJSON_IsBool(dp))
        return bad(t, "tool_choice.disable_parallel_tool_use: expected a boolean");
    c->no_parallel = cJSON_IsTrue(dp);
    if (strcmp(ty->valuestring, "auto") == 0) {
        c->mode = "auto";
    } else if (strcmp(ty->valuestring, "any") == 0) {
        c->mode = "required";
    } else if (strcmp(ty->valuestring, "none") == 0) {
        c->mode = "none";
    } else if (strcmp(ty->valuestring, "tool") == 0) {
        name = cJSON_GetObjectItemCaseSensitive(tc, "name");
        if (!cJSON_IsString(name) || name->valuestring[0] == '\0')
            return bad(t, "tool_choice.name: expected a non-empty string");
        c->mode = "required";
        c->name = name->valuestring;
    } else {
        return bad(t, "tool_choice.type: unknown type '%s'", ty->valuestring);
    }
    return 0;
}

/* Whether a tool-set entry goes upstream: in effect, and a function tool. */
static int entry_sends(struct treq *t, const struct tool_entry *e, int *rc)
{
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(e->def, "type");

    *rc = 0;
    if (!e->active)
        return 0;
    if (e->index >= 0)
        return check_tool(t, e->def, e->index, rc);
    return !(ty != NULL && (!cJSON_IsString(ty) || strcmp(ty->valuestring, "custom") != 0) &&
             cJSON_GetObjectItemCaseSensitive(e->def, "input_schema") == NULL);
}

static int build_tools(struct treq *t, const cJSON *req, cJSON *out)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools"), *tool;
    struct tool_entry *named = NULL;
    struct choice c;
    cJSON *arr;
    int i = 0, rc, n = 0;

    if ((rc = parse_tool_choice(t, cJSON_GetObjectItemCaseSensitive(req, "tool_choice"), &c)) < 0)
        return rc;
    if (tools != NULL && !cJSON_IsNull(tools) && !cJSON_IsArray(tools))
        return bad(t, "tools: expected an array");
    cJSON_ArrayForEach(tool, tools)
    {
        check_tool(t, tool, i++, &rc);
        if (rc < 0)
            return rc;
    }
    /* a tool the client forces is offered, deferred or not */
    if (c.name != NULL && (named = tset_find(t, c.name)) != NULL)
        named->active = 1;
    for (i = 0; i < t->n_tset; i++) {
        int send = entry_sends(t, &t->tset[i], &rc);
        if (rc < 0)
            return rc;
        if (!send && &t->tset[i] == named)
            named = NULL;
        n += send;
    }
    if (c.name != NULL && named == NULL)
        return bad(t, "tool_choice.name: no tool named '%s' in tools", c.name);
    if (n == 0)
        return 0; /* no tools: a tool_choice alone is rejected by OpenAI servers */
    if ((arr = cJSON_AddArrayToObject(out, "tools")) == NULL)
        return nomem(t);
    for (i = 0; i < t->n_tset; i++) {
        const struct tool_entry *e = &t->tset[i];
        if (!entry_sends(t, e, &rc))
            continue;
        /* llama-server ignores a named tool_choice: offer only that tool, required */
        if (c.name != NULL && t->opts->llama_server && strcmp(e->name, c.name) != 0)
            continue;
        if ((rc = add_tool(t, arr, e->def)) < 0)
            return rc;
    }
    if (c.name != NULL && !t->opts->llama_server) {
        cJSON *o = cJSON_CreateObject(), *fn;
        if (o == NULL || !cJSON_AddItemToObject(out, "tool_choice", o) ||
            cJSON_AddStringToObject(o, "type", "function") == NULL ||
            (fn = cJSON_AddObjectToObject(o, "function")) == NULL ||
            cJSON_AddStringToObject(fn, "name", c.name) == NULL)
            return nomem(t);
    } else if (c.mode != NULL && cJSON_AddStringToObject(out, "tool_choice", c.mode) == NULL) {
        return nomem(t);
    }
    if (c.no_parallel && cJSON_AddFalseToObject(out, "parallel_tool_calls") == NULL)
        return nomem(t);
    return 0;
}

static int copy_number(struct treq *t, const cJSON *req, const char *key, cJSON *out, int integer)
{
    double d;
    int64_t i;
    int rc = integer ? ax_json_get_int(req, key, "", &i, t->err)
                     : ax_json_get_number(req, key, "", &d, t->err);
    if (rc <= 0)
        return rc;
    if (integer)
        d = (double)i;
    return cJSON_AddNumberToObject(out, key, d) == NULL ? nomem(t) : 0;
}

static int build_knobs(struct treq *t, const cJSON *req, cJSON *out)
{
    const cJSON *stops = NULL, *meta = NULL, *thinking = NULL, *s, *v;
    int64_t max_tokens;
    int rc, on = -1, stream;

    if ((rc = ax_json_get_int(req, "max_tokens", "", &max_tokens, t->err)) < 0)
        return rc;
    if (rc > 0) {
        if (max_tokens < 1)
            return bad(t, "max_tokens: expected a positive integer");
        if (cJSON_AddNumberToObject(out, "max_tokens", (double)max_tokens) == NULL)
            return nomem(t);
    }
    if ((rc = copy_number(t, req, "temperature", out, 0)) < 0 ||
        (rc = copy_number(t, req, "top_p", out, 0)) < 0 ||
        (rc = copy_number(t, req, "top_k", out, 1)) < 0)
        return rc;
    if ((rc = ax_json_get_bool(req, "stream", "", &stream, t->err)) < 0)
        return rc;
    if ((rc = ax_json_get_array(req, "stop_sequences", "", &stops, t->err)) < 0)
        return rc;
    if (stops != NULL && stops->child != NULL) {
        int i = 0;
        char w[48];
        cJSON_ArrayForEach(s, stops)
        {
            snprintf(w, sizeof(w), "stop_sequences.%d", i++);
            if (!cJSON_IsString(s))
                return bad(t, "%s: expected a string", w);
        }
        if ((v = cJSON_Duplicate(stops, 1)) == NULL ||
            !cJSON_AddItemToObject(out, "stop", (cJSON *)v)) {
            cJSON_Delete((cJSON *)v);
            return nomem(t);
        }
    }
    if ((rc = ax_json_get_object(req, "metadata", "", &meta, t->err)) < 0)
        return rc;
    if (meta != NULL) {
        const char *uid = NULL;
        if ((rc = ax_json_get_string(meta, "user_id", "metadata", &uid, t->err)) < 0)
            return rc;
        /* Claude Code's user_id holds its device and account ids: not for the upstream's
         * logs unless the operator asks */
        if (uid != NULL && t->opts->forward_user_id &&
            cJSON_AddStringToObject(out, "user", uid) == NULL)
            return nomem(t);
    }
    if ((rc = ax_json_get_object(req, "thinking", "", &thinking, t->err)) < 0)
        return rc;
    if (thinking != NULL) {
        const char *ty = NULL;
        if ((rc = ax_json_get_string(thinking, "type", "thinking", &ty, t->err)) < 0)
            return rc;
        if (ty && (strcmp(ty, "enabled") == 0 || strcmp(ty, "adaptive") == 0))
            on = 1;
        else if (ty && strcmp(ty, "disabled") == 0)
            on = 0;
    }
    if (on >= 0) {
        cJSON *kw = cJSON_AddObjectToObject(out, "chat_template_kwargs");
        if (kw == NULL || cJSON_AddBoolToObject(kw, "enable_thinking", on) == NULL)
            return nomem(t);
    }
    if (t->opts->llama_server &&
        cJSON_AddStringToObject(out, "reasoning_format", "deepseek") == NULL)
        return nomem(t);
    if (t->opts->stream) {
        cJSON *so;
        if (cJSON_AddTrueToObject(out, "stream") == NULL ||
            (so = cJSON_AddObjectToObject(out, "stream_options")) == NULL ||
            cJSON_AddTrueToObject(so, "include_usage") == NULL)
            return nomem(t);
    }
    return 0;
}

int ax_translate_request(const cJSON *anthropic, const struct ax_translate_opts *opts, cJSON **out,
                         struct ax_error *err)
{
    struct treq t;
    const char *model = NULL;
    cJSON *o = NULL;
    int rc;

    *out = NULL;
    memset(&t, 0, sizeof(t));
    t.opts = opts;
    t.err = err;
    ax_buf_init(&t.sys, TEXT_MAX);
    ax_buf_init(&t.pending, TEXT_MAX);
    ax_buf_init(&t.text, TEXT_MAX);
    ax_buf_init(&t.reasoning, TEXT_MAX);
    ax_buf_init(&t.scratch, TEXT_MAX);
    if (!cJSON_IsObject(anthropic)) {
        rc = ax_error_set(err, 400, "invalid_request_error", "body: expected a JSON object");
        goto done;
    }
    if ((rc = ax_json_get_string(anthropic, "model", "", &model, err)) < 0)
        goto done;
    if (opts->upstream_model != NULL)
        model = opts->upstream_model;
    if ((o = cJSON_CreateObject()) == NULL) {
        rc = nomem(&t);
        goto done;
    }
    if (model != NULL && cJSON_AddStringToObject(o, "model", model) == NULL) {
        rc = nomem(&t);
        goto done;
    }
    if ((rc = tset_init(&t, anthropic)) < 0 || (rc = build_messages(&t, anthropic, o)) < 0 ||
        (rc = build_tools(&t, anthropic, o)) < 0 || (rc = build_knobs(&t, anthropic, o)) < 0)
        goto done;
    if (opts->tools_as_text && (rc = ax_tools_as_text(o)) < 0) {
        rc = nomem(&t);
        goto done;
    }
    *out = o;
    o = NULL;
    rc = 0;
done:
    cJSON_Delete(o);
    cJSON_Delete(t.parts);
    cJSON_Delete(t.tool_calls);
    cJSON_Delete(t.tool_images);
    free(t.tset);
    ax_buf_free(&t.sys);
    ax_buf_free(&t.pending);
    ax_buf_free(&t.text);
    ax_buf_free(&t.reasoning);
    ax_buf_free(&t.scratch);
    return rc;
}
