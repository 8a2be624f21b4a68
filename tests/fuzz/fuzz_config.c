/* fuzz_config.c - libFuzzer target: a config file (KEY = VALUE lines) through
 * ax_config_load_file, then what start-up does with the result: validate, copy, the /health
 * view (ax_config_to_json) and the model map. Bad lines are errors, never crashes or leaks;
 * a file that loads must copy and print. The api-key-file is never opened here. Seeds:
 * tests/fuzz/seeds/fuzz_config/. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anthroxy_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ax_config cfg, copy;
    struct ax_error err = {0};
    cJSON *j;
    FILE *f;
    char *s;

    if (path[0] == '\0')
        snprintf(path, sizeof(path), "/tmp/ax-fuzz-config.%ld", (long)getpid());
    if ((f = fopen(path, "w")) == NULL)
        return 0;
    if (size > 0 && fwrite(data, 1, size, f) != size) {
        fclose(f);
        return 0;
    }
    fclose(f);
    ax_config_init(&cfg);
    if (ax_config_load_file(&cfg, path, &err) == 0) {
        memset(&err, 0, sizeof(err));
        (void)ax_config_validate(&cfg, &err);
        if (ax_config_copy(&copy, &cfg) == 0) {
            if ((j = ax_config_to_json(&copy)) == NULL)
                abort();
            if ((s = cJSON_PrintUnformatted(j)) == NULL)
                abort();
            free(s);
            cJSON_Delete(j);
            (void)ax_config_map_model(&copy, "claude-sonnet-4-5");
            (void)ax_config_map_model(&copy, "");
            ax_config_free(&copy);
        }
    } else if (err.status == 0) {
        abort(); /* a failure says why */
    }
    ax_config_free(&cfg);
    return 0;
}
