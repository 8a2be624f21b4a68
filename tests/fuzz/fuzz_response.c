/* fuzz_response.c - libFuzzer target: an upstream answer through the response translator
 * (a chat.completion to an Anthropic message) and the same bytes as an error body through
 * the upstream-error mapper, whose result must be a client-facing status and type. Seeds:
 * tests/fixtures/translate/<x>.openai-response.json and the recorded llama-server answers.
 * Every other input offers tools: text content is scanned for tool calls, arguments
 * repaired and checked. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_json.h"
#include "anthroxy_translate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char TOOLS[] =
    "[{\"name\":\"Read\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"file_path\":"
    "{\"type\":\"string\"}},\"required\":[\"file_path\"]}},{\"name\":\"f\"}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ax_error err = {0};
    struct ax_toolcall_stats ts;
    cJSON *tools = (size & 16) ? cJSON_Parse(TOOLS) : NULL;
    struct ax_response_opts ro = {"claude", NULL, 1.0 + (double)(size & 3), (int)(size & 4) != 0,
                                  tools,    &ts,  NULL, NULL};
    struct ax_buf out;
    cJSON *j, *r = NULL;
    int64_t n_prompt = -1, n_ctx = -1;
    char *text; /* the parse edits in place; messages.c's body has a NUL */

    ax_translate_upstream_error(400 + (int)(size % 200), (const char *)data, size, (int)(size & 8),
                                &err, &n_prompt, &n_ctx);
    if (err.status < 400 || err.status > 599)
        abort(); /* an upstream error must map to an error status */
    memset(&err, 0, sizeof(err));
    if ((text = malloc(size + 1)) == NULL) {
        cJSON_Delete(tools);
        return 0;
    }
    memcpy(text, data, size);
    text[size] = '\0';
    ax_buf_init(&out, 1u << 24);
    if ((j = ax_json_parse(text, size, &err)) != NULL) {
        if (ax_translate_response(j, &ro, &r, &err) == 0)
            ax_json_print(r, &out);
        cJSON_Delete(r); /* before j: it may share nodes with it */
        cJSON_Delete(j);
    }
    ax_buf_free(&out);
    free(text);
    cJSON_Delete(tools);
    return 0;
}
