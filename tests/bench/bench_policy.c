/* bench_policy.c - CPU per request of the policy chain, against no policies, in one run.
 *
 * Workload: tests/fixtures/claude-code/after-tool-call.json. Per request: parse, on_request,
 * translate, on_upstream_request, print (what the server does before sending upstream).
 * Variants: no engine at all; an engine with an empty chain (the per-request fixed cost);
 * the default chain (policies/default.lua). Prints microseconds per request and the ratio.
 * Usage: bench_policy [N] [CHAIN] [none|empty|chain]: with a variant, runs only that one
 * (for instruction counts: `perf stat -e instructions` or callgrind, stable on a busy
 * machine where times are not). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "anthroxy_config.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_policy.h"
#include "anthroxy_translate.h"
#include "ax_test.h"

static char *fixture;
static size_t fixture_len;

static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int done_flag;

static void on_done(struct ax_policy_req *pr, int rc, const struct ax_error *err, void *ud)
{
    (void)pr;
    (void)err;
    (void)ud;
    done_flag = rc < 0 ? -1 : 1;
}

static int run_hook(uv_loop_t *loop, struct ax_policy_req *pr, enum ax_hook h, cJSON *tree)
{
    done_flag = 0;
    if (ax_policy_req_run(pr, h, tree, NULL, on_done, NULL) < 0)
        return -1;
    uv_run(loop, UV_RUN_DEFAULT);
    return done_flag == 1 ? 0 : -1;
}

/* One request; eng may be NULL (no policies). Returns the printed size or -1. */
static long one_request(uv_loop_t *loop, struct ax_policy_engine *eng)
{
    char *copy = malloc(fixture_len + 1);
    struct ax_error err;
    struct ax_policy_req *pr = NULL;
    struct ax_policy_req_info info;
    struct ax_translate_opts opts;
    struct ax_buf out;
    cJSON *req, *oreq = NULL;
    long n = -1;

    memcpy(copy, fixture, fixture_len + 1);
    req = ax_json_parse(copy, fixture_len, &err);
    if (req == NULL)
        goto done;
    if (eng != NULL) {
        memset(&info, 0, sizeof(info));
        info.request_id = "req_bench";
        info.session_id = "bench";
        info.client_model = "claude-sonnet-4-5";
        info.user_agent = "claude-cli/2.1.197 (external, cli)";
        info.stream = 1;
        if (ax_policy_req_new(eng, &info, &pr) < 0 || run_hook(loop, pr, AX_HOOK_REQUEST, req) < 0)
            goto done;
    }
    memset(&opts, 0, sizeof(opts));
    opts.upstream_model = "qwen";
    opts.llama_server = 1;
    opts.stream = 1;
    if (ax_translate_request(req, &opts, &oreq, &err) < 0)
        goto done;
    if (pr != NULL && run_hook(loop, pr, AX_HOOK_UPSTREAM_REQUEST, oreq) < 0)
        goto done;
    ax_buf_init(&out, 64u << 20);
    if (ax_json_print(oreq, &out) == 0)
        n = (long)out.len;
    ax_buf_free(&out);
done:
    ax_policy_req_free(pr);
    cJSON_Delete(req);
    cJSON_Delete(oreq);
    free(copy);
    return n;
}

static double measure(uv_loop_t *loop, struct ax_policy_engine *eng, int n, long *size)
{
    double t0;
    int i;
    for (i = 0; i < n / 10 + 1; i++) /* warm-up */
        *size = one_request(loop, eng);
    t0 = cpu_us();
    for (i = 0; i < n; i++)
        *size = one_request(loop, eng);
    return (cpu_us() - t0) / n;
}

static struct ax_policy_engine *engine(uv_loop_t *loop, struct ax_config *cfg, const char *chain)
{
    struct ax_policy_env env;
    struct ax_policy_engine *eng;
    struct ax_error err;
    memset(&env, 0, sizeof(env));
    env.loop = loop;
    env.cfg = cfg;
    free(cfg->policies_path);
    cfg->policies_path = strdup(chain);
    if (ax_policy_engine_new(&env, &eng, &err) < 0) {
        fprintf(stderr, "%s: %s\n", chain, err.message);
        exit(1);
    }
    return eng;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    const char *chain = argc > 2 ? argv[2] : AX_POLICY_DIR "/default.lua";
    const char *empty_path = "/tmp/ax_bench_empty_chain.lua";
    struct ax_config cfg;
    struct ax_policy_engine *def, *empty;
    uv_loop_t loop;
    double t_none, t_empty, t_chain;
    long s_none, s_empty, s_chain;
    FILE *f;

    fixture = ax_test_read_file(AX_FIXTURES "/claude-code/after-tool-call.json", &fixture_len);
    if (fixture == NULL)
        return perror("fixture"), 1;
    f = fopen(empty_path, "w");
    fputs("return {}\n", f);
    fclose(f);

    ax_log_set_level(AX_LOG_LVL_ERROR);
    uv_loop_init(&loop);
    ax_config_init(&cfg);
    cfg.context_window = 131072;
    def = engine(&loop, &cfg, chain);
    empty = engine(&loop, &cfg, empty_path);

    if (argc > 3) {
        struct ax_policy_engine *which = strcmp(argv[3], "chain") == 0   ? def
                                         : strcmp(argv[3], "empty") == 0 ? empty
                                                                         : NULL;
        printf("%s: %.1f us/request\n", argv[3], measure(&loop, which, n, &s_none));
        goto out;
    }
    t_none = measure(&loop, NULL, n, &s_none);
    t_empty = measure(&loop, empty, n, &s_empty);
    t_chain = measure(&loop, def, n, &s_chain);
    printf("workload: after-tool-call.json (%zu bytes), %d requests each\n", fixture_len, n);
    printf("no policies:   %8.1f us/request (OpenAI body %ld bytes)\n", t_none, s_none);
    printf("empty chain:   %8.1f us/request (%+.1f%%)\n", t_empty,
           100.0 * (t_empty - t_none) / t_none);
    printf("default chain: %8.1f us/request (%+.1f%%, body %ld bytes)\n", t_chain,
           100.0 * (t_chain - t_none) / t_none, s_chain);
    printf("ratio chain/none: %.3f\n", t_chain / t_none);
    {
        cJSON *st = ax_policy_engine_status(def);
        printf("Lua memory after %d requests of the default chain: %.0f KiB\n", n + n / 10 + 1,
               cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(st, "lua_memory")) / 1024);
        cJSON_Delete(st);
    }
out:
    ax_policy_engine_close(def, NULL, NULL);
    ax_policy_engine_close(empty, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    ax_config_free(&cfg);
    free(fixture);
    remove(empty_path);
    return 0;
}
