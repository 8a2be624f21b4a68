/* fuzz_request.c - libFuzzer target: a request body through what messages.c does before any
 * I/O (safe parse, translation to OpenAI, the estimator, printing) and an upstream answer
 * through the response translator and the upstream-error mapper. Nothing may crash, leak
 * or read out of bounds; errors are fine.
 *
 *   cmake -DAX_FUZZ=ON -DCMAKE_C_COMPILER=clang ... && build/tests/fuzz_request corpus/ */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_json.h"
#include "anthroxy_tokens.h"
#include "anthroxy_translate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    struct ax_error err = {0};
    struct ax_translate_opts to = {"m", (int)(size & 1), (int)(size & 2) != 0,
                                   (int)(size & 4) != 0};
    struct ax_response_opts ro = {"claude", NULL, 1.0, 0};
    struct ax_buf out;
    cJSON *j, *o = NULL, *r = NULL;
    int64_t n_prompt, n_ctx;

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    ax_translate_upstream_error(400 + (int)(size % 200), text, size, 0, &err, &n_prompt, &n_ctx);
    ax_buf_init(&out, 1u << 24);
    if ((j = ax_json_parse(text, size, &err)) != NULL) {
        (void)ax_tokens_request(j);
        if (ax_translate_request(j, &to, &o, &err) == 0)
            ax_json_print(o, &out);
        if (ax_translate_response(j, &ro, &r, &err) == 0)
            ax_json_print(r, &out);
        cJSON_Delete(o); /* before j: it may share nodes with it */
        cJSON_Delete(r);
        cJSON_Delete(j);
    }
    ax_buf_free(&out);
    free(text);
    return 0;
}
