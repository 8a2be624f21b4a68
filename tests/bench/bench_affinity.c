/* bench_affinity.c - what routing costs per request (core/fleet.c), and what --workers'
 * shared session state costs (session_share.c): ax_fleet_route with affinity over a two- and
 * an eight-replica fleet, session keys like Claude Code's, and a pull plus a push of a session,
 * against the request-side work of the ~80 KB Claude Code request (W2) in the same run
 * (parse, estimate, translate, print, as bench_json measures it). Prints microseconds per
 * call and the share of W2.
 *
 *   build/tests/bench_affinity [routes] [w2-iterations] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "anthroxy_fleet.h"
#include "anthroxy_json.h"
#include "anthroxy_monitor.h"
#include "anthroxy_session_share.h"
#include "anthroxy_tokens.h"
#include "anthroxy_translate.h"
#include "ax_test.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double w2_cost(int iters)
{
    const char *path = AX_FIXTURES "/claude-code/first-turn.json";
    size_t len;
    char *text = ax_test_read_file(path, &len), *work;
    struct ax_translate_opts to = {"tiny", 1, 0, 1};
    struct ax_buf out;
    double t0;
    int i;

    if (text == NULL)
        return -1;
    work = malloc(len + 1);
    ax_buf_init(&out, 64u << 20);
    t0 = now_s();
    for (i = 0; i < iters; i++) {
        struct ax_error err = {0};
        cJSON *j, *o = NULL;
        memcpy(work, text, len + 1);
        j = ax_json_parse(work, len, &err);
        (void)ax_tokens_request(j);
        ax_translate_request(j, &to, &o, &err);
        ax_buf_reset(&out);
        ax_json_print(o, &out);
        cJSON_Delete(o);
        cJSON_Delete(j);
    }
    t0 = (now_s() - t0) / iters;
    ax_buf_free(&out);
    free(work);
    free(text);
    return t0;
}

static double route_cost(uv_loop_t *loop, int n_up, int iters)
{
    struct ax_config cfg;
    struct ax_fleet *f;
    struct ax_error err = {0};
    char specs[8][64], key[64], *argv[20];
    int argc = 0, i;
    double t0;
    uint64_t sink = 0;

    ax_config_init(&cfg);
    argv[argc++] = "anthroxy";
    for (i = 0; i < n_up; i++) {
        snprintf(specs[i], sizeof(specs[i]), "gpu%d=http://127.0.0.1:%d/v1,models=qwen3-coder", i,
                 8080 + i);
        argv[argc++] = "--upstream";
        argv[argc++] = specs[i];
    }
    argv[argc++] = "--model-map";
    argv[argc++] = "*=qwen3-coder";
    if (ax_config_parse_args(&cfg, argc, argv, NULL, &err) < 0 ||
        ax_fleet_new(loop, &cfg, &f, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        exit(1);
    }
    t0 = now_s();
    for (i = 0; i < iters; i++) {
        struct ax_route r;
        struct ax_route_req rq;
        memset(&r, 0, sizeof(r));
        memset(&rq, 0, sizeof(rq));
        snprintf(key, sizeof(key), "3f1c2a9e-%04d-4c1b-9d7e-5a6b7c8d9e0f", i % 1000);
        rq.client_model = "claude-sonnet-4-5-20250929";
        rq.session_key = key;
        if (ax_fleet_route(f, &rq, &r, &err) == 0)
            sink += r.idx;
    }
    t0 = (now_s() - t0) / iters;
    ax_fleet_close(f, NULL, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    ax_config_free(&cfg);
    if (sink == (uint64_t)-1)
        puts("");
    return t0;
}

/* --workers: a request's two touches of the shared session state (pull at its start, push
 * at its end) over 1,000 sessions. */
static double share_cost(int iters)
{
    struct ax_session_share *sh = ax_session_share_new(1024);
    struct ax_monitor *mon = ax_monitor_new(1024, 0);
    char key[64];
    double t0;
    int i;

    for (i = 0; i < 1000; i++) {
        struct ax_session *s;
        snprintf(key, sizeof(key), "3f1c2a9e-%04d-4c1b-9d7e-5a6b7c8d9e0f", i);
        s = ax_monitor_get(mon, key, 1);
        ax_session_share_push(sh, s);
        ax_session_unref(s);
    }
    t0 = now_s();
    for (i = 0; i < iters; i++) {
        struct ax_session *s;
        snprintf(key, sizeof(key), "3f1c2a9e-%04d-4c1b-9d7e-5a6b7c8d9e0f", i % 1000);
        s = ax_monitor_find(mon, key);
        ax_session_share_pull(sh, s);
        s->total_requests++;
        ax_session_share_push(sh, s);
    }
    t0 = (now_s() - t0) / iters;
    ax_monitor_free(mon);
    ax_session_share_free(sh);
    return t0;
}

int main(int argc, char **argv)
{
    int routes = argc > 1 ? atoi(argv[1]) : 200000, w2 = argc > 2 ? atoi(argv[2]) : 300;
    uv_loop_t loop;
    double r2, r8, base;

    uv_loop_init(&loop);
    base = w2_cost(w2);
    r2 = route_cost(&loop, 2, routes);
    r8 = route_cost(&loop, 8, routes);
    printf("W2 request-side work: %.1f us\n", base * 1e6);
    printf("route, 2 replicas:    %.3f us (%.3f %% of W2)\n", r2 * 1e6, 100 * r2 / base);
    printf("route, 8 replicas:    %.3f us (%.3f %% of W2)\n", r8 * 1e6, 100 * r8 / base);
    {
        double sh = share_cost(routes);
        printf("shared session pull+push (--workers): %.3f us (%.3f %% of W2)\n", sh * 1e6,
               100 * sh / base);
    }
    uv_loop_close(&loop);
    return 0;
}
