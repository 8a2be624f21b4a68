/* bench_metrics.c - what counting one /v1/messages request costs: the same calls as
 * messages.c's count_request (one request counter, three histograms, three token counters,
 * every label set already present), over a family holding a few models, N times (argument 1,
 * default 1000000). Prints ns per request; compare with the W2 request's CPU time
 * (bench_json, tests/bench/e2e.sh) for the share metrics take. Also times one render. */
#include "anthroxy_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    static const char *const models[] = {"claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-5",
                                         "qwen3-coder"};
    long n = argc > 1 ? atol(argv[1]) : 1000000, i;
    struct ax_metrics *m = ax_metrics_new();
    struct ax_metric_labels l = {.route = "messages", .status = 200};
    struct ax_buf out;
    double t0, t1;

    for (i = 0; i < n; i++) {
        if (i == 4)
            t0 = now_s();
        l.model = models[i % 4];
        ax_metrics_add(m, AX_M_REQUESTS, &l, 1);
        ax_metrics_add(m, AX_M_DURATION, &l, 1.5);
        ax_metrics_add(m, AX_M_UPSTREAM_LATENCY, &l, 0.2);
        ax_metrics_add(m, AX_M_TTFT, &l, 0.3);
        ax_metrics_add(m, AX_M_TOKENS_IN, &l, 21000);
        ax_metrics_add(m, AX_M_TOKENS_OUT, &l, 300);
        ax_metrics_add(m, AX_M_TOKENS_CACHED, &l, 20000);
    }
    t1 = now_s();
    printf("count one request: %.0f ns (%ld requests)\n", (t1 - t0) * 1e9 / (double)(n - 4), n);
    ax_buf_init(&out, 64u << 20);
    t0 = now_s();
    ax_metrics_render(m, &out);
    t1 = now_s();
    printf("render: %.1f us, %zu bytes\n", (t1 - t0) * 1e6, out.len);
    ax_buf_free(&out);
    ax_metrics_free(m);
    return 0;
}
