/* fuzz_request.c - libFuzzer target: a request body through what messages.c does before any
 * I/O: the safe parse, the estimator, the translation to OpenAI (the option bits taken from
 * the input's size) and printing. Nothing may crash, leak or read out of bounds; errors are
 * fine. Seeds: tests/fixtures/translate/<x>.anthropic.json and the Claude Code captures. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_json.h"
#include "anthroxy_tokens.h"
#include "anthroxy_translate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ax_error err = {0};
    struct ax_translate_opts to = {"m", (int)(size & 1), (int)(size & 2) != 0,
                                   (int)(size & 4) != 0, 0, (int)(size & 8) != 0};
    struct ax_buf out;
    cJSON *j, *o = NULL;

    char *text = malloc(size + 1); /* the parse edits in place; messages.c's body has a NUL */

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    ax_buf_init(&out, 1u << 24);
    if ((j = ax_json_parse(text, size, &err)) != NULL) {
        (void)ax_tokens_request(j);
        if (ax_translate_request(j, &to, &o, &err) == 0)
            ax_json_print(o, &out);
        cJSON_Delete(o); /* before j: it may share nodes with it */
        cJSON_Delete(j);
    }
    ax_buf_free(&out);
    free(text);
    return 0;
}
