/* test_metrics.c - metrics.c: counters add, gauges set, histograms fill their buckets
 * cumulatively, label values are escaped and cut, a family stops growing past
 * AX_METRICS_MAX_SERIES (later label sets share an "other" series), and the error ring keeps
 * the newest AX_METRICS_ERRORS. */
#include "anthroxy_metrics.h"
#include "ax_test.h"

#include <stdio.h>
#include <string.h>

static char *render(const struct ax_metrics *m, struct ax_buf *b)
{
    ax_buf_init(b, 16u << 20);
    CHECK_INT(ax_metrics_render(m, b), 0);
    return b->data;
}

static void test_counters_and_gauges(void)
{
    struct ax_metrics *m = ax_metrics_new();
    struct ax_metric_labels l = {.route = "messages", .status = 200, .model = "m1"};
    struct ax_buf b;
    const char *t;

    ax_metrics_add(m, AX_M_REQUESTS, &l, 1);
    ax_metrics_add(m, AX_M_REQUESTS, &l, 1);
    ax_metrics_add(m, AX_M_REQUESTS, &l, -5); /* a counter never goes down */
    CHECK_INT(ax_metrics_get(m, AX_M_REQUESTS, &l), 2);
    l.status = 500;
    ax_metrics_add(m, AX_M_REQUESTS, &l, 1);
    ax_metrics_set(m, AX_M_CONNECTIONS, NULL, 7);
    ax_metrics_set(m, AX_M_CONNECTIONS, NULL, 3);
    CHECK_INT(ax_metrics_get(m, AX_M_CONNECTIONS, NULL), 3);
    t = render(m, &b);
    CHECK(strstr(t, "# TYPE anthroxy_requests_total counter\n") != NULL);
    CHECK(strstr(t,
                 "anthroxy_requests_total{route=\"messages\",status=\"200\",upstream=\"default\","
                 "model=\"m1\",arm=\"default\"} 2\n") != NULL);
    CHECK(strstr(t, "status=\"500\",upstream=\"default\",model=\"m1\",arm=\"default\"} 1\n") !=
          NULL);
    CHECK(strstr(t, "anthroxy_open_connections 3\n") != NULL);
    CHECK(strstr(t, "anthroxy_open_streams 0\n") != NULL); /* unlabelled: always one sample */
    ax_buf_free(&b);
    ax_metrics_free(m);
}

static void test_histogram(void)
{
    struct ax_metrics *m = ax_metrics_new();
    struct ax_buf b;
    const char *t;

    ax_metrics_add(m, AX_M_UPSTREAM_LATENCY, NULL, 0.003);
    ax_metrics_add(m, AX_M_UPSTREAM_LATENCY, NULL, 0.2);
    ax_metrics_add(m, AX_M_UPSTREAM_LATENCY, NULL, 1000); /* past the last bucket */
    CHECK_INT(ax_metrics_get(m, AX_M_UPSTREAM_LATENCY, NULL), 3);
    t = render(m, &b);
    CHECK(strstr(t,
                 "anthroxy_upstream_latency_seconds_bucket{upstream=\"default\",model=\"default\","
                 "arm=\"default\",le=\"0.005\"} 1\n") != NULL);
    CHECK(strstr(t, "arm=\"default\",le=\"0.1\"} 1\n") != NULL);
    CHECK(strstr(t, "arm=\"default\",le=\"0.25\"} 2\n") != NULL);
    CHECK(strstr(t, "arm=\"default\",le=\"600\"} 2\n") != NULL);
    CHECK(strstr(t, "arm=\"default\",le=\"+Inf\"} 3\n") != NULL);
    CHECK(strstr(t,
                 "anthroxy_upstream_latency_seconds_count{upstream=\"default\",model=\"default\","
                 "arm=\"default\"} 3\n") != NULL);
    CHECK(strstr(t, "anthroxy_upstream_latency_seconds_sum{upstream=\"default\",model=\"default\","
                    "arm=\"default\"} 1000.203\n") != NULL);
    ax_buf_free(&b);
    ax_metrics_free(m);
}

static void test_escaping_and_cap(void)
{
    struct ax_metrics *m = ax_metrics_new();
    struct ax_metric_labels l = {.model = "a\"b\\c\nd\x01\xff\xc3\xa9"};
    char name[32], longname[200];
    struct ax_buf b;
    const char *t;
    int i;

    ax_metrics_add(m, AX_M_TOKENS_IN, &l, 5);
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    l.model = longname;
    ax_metrics_add(m, AX_M_TOKENS_IN, &l, 1);
    t = render(m, &b);
    CHECK(strstr(t, "model=\"a\\\"b\\\\c\\nd??\xc3\xa9\"") != NULL);
    snprintf(name, sizeof(name), "model=\"%.10s", longname);
    CHECK(strstr(t, name) != NULL);
    CHECK(strstr(t, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"") != NULL);
    CHECK(strstr(t, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"") == NULL);
    ax_buf_free(&b);

    for (i = 0; i < AX_METRICS_MAX_SERIES + 50; i++) {
        snprintf(name, sizeof(name), "model-%d", i);
        l.model = name;
        ax_metrics_add(m, AX_M_TOKENS_OUT, &l, 1);
    }
    l.model = "model-0"; /* an early one keeps its own series */
    CHECK_INT(ax_metrics_get(m, AX_M_TOKENS_OUT, &l), 1);
    l.model = "other";
    l.upstream = "other";
    l.arm = "other";
    CHECK_INT(ax_metrics_get(m, AX_M_TOKENS_OUT, &l), 50);
    ax_metrics_free(m);
}

static void test_errors(void)
{
    struct ax_metrics *m = ax_metrics_new();
    const struct ax_metrics_error *e;
    char msg[32];
    int i;

    CHECK(ax_metrics_error_at(m, 0) == NULL);
    for (i = 0; i < AX_METRICS_ERRORS + 3; i++) {
        snprintf(msg, sizeof(msg), "error %d", i);
        ax_metrics_note_error(m, "req_x", 500 + i, "api_error", msg);
    }
    e = ax_metrics_error_at(m, 0);
    CHECK(e != NULL && strcmp(e->message, "error 34") == 0 && e->status == 534);
    e = ax_metrics_error_at(m, AX_METRICS_ERRORS - 1);
    CHECK(e != NULL && strcmp(e->message, "error 3") == 0);
    CHECK(ax_metrics_error_at(m, AX_METRICS_ERRORS) == NULL);
    ax_metrics_free(m);
}

int main(void)
{
    test_counters_and_gauges();
    test_histogram();
    test_escaping_and_cap();
    test_errors();
    return AX_TEST_DONE("test_metrics");
}
