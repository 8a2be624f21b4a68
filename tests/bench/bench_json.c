/* bench_json.c - the reference figure for issue 3's CPU target: what cJSON alone needs to
 * parse and print Claude Code's ~80 KB request, and what anthroxy's own request-side work
 * (safe parse, translate, estimate, print) costs on the same body, in one run.
 *
 *   build/tests/bench_json [iterations] [fixture.json] [cjson|anthroxy]
 *
 * Runs under valgrind --tool=callgrind with a small iteration count too; the third argument
 * runs one side only, so that callgrind counts its instructions alone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anthroxy_json.h"
#include "anthroxy_tokens.h"
#include "anthroxy_translate.h"
#include "ax_test.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 2000, i;
    const char *path = argc > 2 ? argv[2] : AX_FIXTURES "/claude-code/first-turn.json";
    size_t len;
    char *text = ax_test_read_file(path, &len), *work;
    struct ax_translate_opts to = {"tiny", 1, 0, 1}; /* shared schemas, as messages.c */
    struct ax_buf out;
    const char *only = argc > 3 ? argv[3] : "";
    double t0, t_cjson = 0, t_ax = 0;
    int64_t sink = 0;

    if (text == NULL) {
        fprintf(stderr, "cannot read %s\n", path);
        return 1;
    }
    work = malloc(len + 1);
    ax_buf_init(&out, 64u << 20);

    t0 = now_s();
    for (i = 0; i < iters && strcmp(only, "anthroxy") != 0; i++) {
        cJSON *j = cJSON_ParseWithLength(text, len);
        char *s = cJSON_PrintUnformatted(j);
        sink += (int64_t)strlen(s);
        cJSON_free(s);
        cJSON_Delete(j);
    }
    t_cjson = (now_s() - t0) / iters;

    t0 = now_s();
    for (i = 0; i < iters && strcmp(only, "cjson") != 0; i++) {
        struct ax_error err = {0};
        cJSON *j, *o = NULL;
        memcpy(work, text, len + 1);
        j = ax_json_parse(work, len, &err);
        if (j == NULL || ax_translate_request(j, &to, &o, &err) < 0) {
            fprintf(stderr, "translate failed: %s\n", err.message);
            return 1;
        }
        sink += ax_tokens_request(j);
        ax_buf_reset(&out);
        ax_json_print(o, &out);
        sink += (int64_t)out.len;
        cJSON_Delete(o);
        cJSON_Delete(j);
    }
    t_ax = (now_s() - t0) / iters;

    printf("body: %s (%zu bytes), %d iterations\n", path, len, iters);
    printf("cJSON parse+print:                         %8.1f us/request\n", t_cjson * 1e6);
    printf("anthroxy parse+translate+estimate+print:   %8.1f us/request (%.2fx cJSON)\n",
           t_ax * 1e6, t_cjson > 0 ? t_ax / t_cjson : 0.0);
    printf("(sink %lld)\n", (long long)sink);
    ax_buf_free(&out);
    free(work);
    free(text);
    return 0;
}
