/* tools_as_text.c - an OpenAI request with tools, rewritten for a server that takes none
 * (llama-server without --jinja answers any request with `tools` "tools param requires
 * --jinja flag"). The tools go into the system prompt in the Hermes / Qwen 2.5 form, as
 * those models' own chat templates write them; past calls become <tool_call> text in the
 * assistant's content and tool results <tool_response> text in a user turn. The model then
 * answers with <tool_call> text, which toolcall_text.c turns back into tool_use blocks, so
 * the client sees real tool calls either way. */
#include "anthroxy_buf.h"
#include "anthroxy_error.h"
#include "anthroxy_translate.h"

#include <cjson/cJSON.h>
#include <string.h>

#define TOOLS_HEAD                                                                                 \
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"             \
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
#define TOOLS_TAIL                                                                                 \
    "\n</tools>\n\nFor each function call, return a json object with function name and "           \
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "                 \
    "<function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
#define TOOLS_MUST "\n\nYou must call at least one function in this answer."

static int put_json(struct ax_buf *b, const cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    int rc;

    if (s == NULL)
        return AX_ENOMEM;
    rc = ax_buf_append(b, s, strlen(s));
    cJSON_free(s);
    return rc;
}

/* The text of a content (a string, or text parts); other parts are left out. */
static int put_content(struct ax_buf *b, const cJSON *content)
{
    const cJSON *p;
    int rc = 0;

    if (cJSON_IsString(content))
        return ax_buf_puts(b, content->valuestring);
    cJSON_ArrayForEach(p, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (cJSON_IsString(t) && (rc = ax_buf_puts(b, t->valuestring)) < 0)
            return rc;
    }
    return rc;
}

/* Replaces m's "content" with the buffer's text. */
static int set_content(cJSON *m, const struct ax_buf *b)
{
    cJSON *s = cJSON_CreateString(b->data ? b->data : "");

    if (s == NULL)
        return AX_ENOMEM;
    if (cJSON_GetObjectItemCaseSensitive(m, "content") != NULL)
        cJSON_ReplaceItemInObjectCaseSensitive(m, "content", s);
    else
        cJSON_AddItemToObject(m, "content", s);
    return 0;
}

/* The system text with the tools block after it. */
static int system_with_tools(cJSON *msgs, const cJSON *tools, int must)
{
    cJSON *first = cJSON_GetArrayItem(msgs, 0), *sys;
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(first, "role");
    const cJSON *t;
    struct ax_buf b;
    int rc = 0, has = cJSON_IsString(role) && strcmp(role->valuestring, "system") == 0;

    ax_buf_init(&b, (size_t)1 << 30);
    if (has && (rc = put_content(&b, cJSON_GetObjectItemCaseSensitive(first, "content"))) == 0 &&
        b.len > 0)
        rc = ax_buf_puts(&b, "\n\n");
    if (rc == 0)
        rc = ax_buf_puts(&b, TOOLS_HEAD);
    cJSON_ArrayForEach(t, tools)
    {
        if (rc == 0)
            rc = ax_buf_puts(&b, "\n");
        if (rc == 0)
            rc = put_json(&b, t); /* {"type":"function","function":{name,description,parameters}} */
    }
    if (rc == 0)
        rc = ax_buf_puts(&b, TOOLS_TAIL);
    if (rc == 0 && must)
        rc = ax_buf_puts(&b, TOOLS_MUST);
    if (rc == 0 && b.data == NULL)
        rc = AX_ENOMEM;
    if (rc == 0 && has) {
        rc = set_content(first, &b);
    } else if (rc == 0) {
        if ((sys = cJSON_CreateObject()) == NULL ||
            cJSON_AddStringToObject(sys, "role", "system") == NULL ||
            cJSON_AddStringToObject(sys, "content", b.data) == NULL ||
            !cJSON_InsertItemInArray(msgs, 0, sys)) {
            cJSON_Delete(sys);
            rc = AX_ENOMEM;
        }
    }
    ax_buf_free(&b);
    return rc;
}

/* An assistant message's tool_calls appended to its content as <tool_call> text. */
static int calls_as_text(cJSON *m)
{
    cJSON *calls = cJSON_DetachItemFromObjectCaseSensitive(m, "tool_calls");
    const cJSON *c;
    struct ax_buf b;
    int rc;

    if (calls == NULL)
        return 0;
    ax_buf_init(&b, (size_t)1 << 30);
    rc = put_content(&b, cJSON_GetObjectItemCaseSensitive(m, "content"));
    cJSON_ArrayForEach(c, calls)
    {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        cJSON *parsed = cJSON_IsString(args) ? cJSON_Parse(args->valuestring) : NULL;
        if (!cJSON_IsString(name))
            continue;
        if (rc == 0 && b.len > 0)
            rc = ax_buf_puts(&b, "\n");
        if (rc == 0)
            rc = ax_buf_puts(&b, "<tool_call>\n{\"name\": ");
        if (rc == 0)
            rc = put_json(&b, name);
        if (rc == 0)
            rc = ax_buf_puts(&b, ", \"arguments\": ");
        if (rc == 0)
            rc = parsed ? put_json(&b, parsed) : ax_buf_puts(&b, "{}");
        if (rc == 0)
            rc = ax_buf_puts(&b, "}\n</tool_call>");
        cJSON_Delete(parsed);
    }
    if (rc == 0)
        rc = set_content(m, &b);
    ax_buf_free(&b);
    cJSON_Delete(calls);
    return rc;
}

static int is_role(const cJSON *m, const char *role)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
    return cJSON_IsString(r) && strcmp(r->valuestring, role) == 0;
}

/* Consecutive role:"tool" messages from `at` on become one user message of <tool_response>
 * texts (as Qwen's template renders them), in place of `at`. */
static int results_as_text(cJSON *msgs, cJSON *at)
{
    struct ax_buf b;
    cJSON *m = at, *next;
    int rc = 0;

    ax_buf_init(&b, (size_t)1 << 30);
    while (rc == 0 && m != NULL && is_role(m, "tool")) {
        if (b.len > 0)
            rc = ax_buf_puts(&b, "\n");
        if (rc == 0)
            rc = ax_buf_puts(&b, "<tool_response>\n");
        if (rc == 0)
            rc = put_content(&b, cJSON_GetObjectItemCaseSensitive(m, "content"));
        if (rc == 0)
            rc = ax_buf_puts(&b, "\n</tool_response>");
        next = m->next;
        if (m != at)
            cJSON_Delete(cJSON_DetachItemViaPointer(msgs, m));
        m = next;
    }
    if (rc == 0 && b.data == NULL)
        rc = AX_ENOMEM;
    if (rc == 0) {
        cJSON_DeleteItemFromObjectCaseSensitive(at, "tool_call_id");
        cJSON_DeleteItemFromObjectCaseSensitive(at, "name");
        cJSON_ReplaceItemInObjectCaseSensitive(at, "role", cJSON_CreateString("user"));
        rc = set_content(at, &b);
    }
    ax_buf_free(&b);
    return rc;
}

int ax_tools_as_text(cJSON *oreq)
{
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(oreq, "messages");
    cJSON *tools = cJSON_DetachItemFromObjectCaseSensitive(oreq, "tools");
    cJSON *choice = cJSON_DetachItemFromObjectCaseSensitive(oreq, "tool_choice"), *m;
    int rc = 0, must = cJSON_IsObject(choice) ||
                       (cJSON_IsString(choice) && strcmp(choice->valuestring, "required") == 0);

    cJSON_DeleteItemFromObjectCaseSensitive(oreq, "parallel_tool_calls");
    if (!cJSON_IsArray(msgs)) {
        rc = AX_EINVAL;
        goto done;
    }
    for (m = msgs->child; rc == 0 && m != NULL; m = m->next) {
        if (is_role(m, "assistant"))
            rc = calls_as_text(m);
        else if (is_role(m, "tool"))
            rc = results_as_text(msgs, m);
    }
    if (rc == 0 && cJSON_IsArray(tools) && tools->child != NULL)
        rc = system_with_tools(msgs, tools, must);
done:
    cJSON_Delete(tools);
    cJSON_Delete(choice);
    return rc;
}
