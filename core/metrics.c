/* metrics.c - counters, gauges and fixed-bucket histograms in memory, rendered in Prometheus'
 * text format for GET /metrics (routes.c), and the ring of recent errors the status page shows.
 * messages.c and routes.c count; nothing here calls back up. Debian ships no Prometheus client
 * library for C (prometheus-cpp is C++), and the format is a few lines of text. */
#include "anthroxy_metrics.h"
#include "anthroxy_utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

enum ml {
    ML_ROUTE = 1u << 0,
    ML_STATUS = 1u << 1,
    ML_UPSTREAM = 1u << 2,
    ML_MODEL = 1u << 3,
    ML_ARM = 1u << 4,
    ML_STATE = 1u << 5,
    ML_KIND = 1u << 6,
};

enum mtype { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM };

/* Seconds: from a cached prompt's few milliseconds to a long generation's minutes. */
static const double latency_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                         2.5,   5,    10,    30,   60,  120,  300, 600};
#define N_BUCKETS (sizeof(latency_buckets) / sizeof(latency_buckets[0]))

struct family {
    const char *name;
    enum mtype type;
    unsigned labels; /* enum ml bits: add one here to label a family by it */
    const char *help;
};

#define ML_REQ (ML_UPSTREAM | ML_MODEL | ML_ARM)

static const struct family families[AX_M__COUNT] = {
    [AX_M_REQUESTS] = {"anthroxy_requests_total", MT_COUNTER, ML_ROUTE | ML_STATUS | ML_REQ,
                       "Requests answered, by route, status, upstream, model and arm."},
    [AX_M_DURATION] = {"anthroxy_request_duration_seconds", MT_HISTOGRAM, ML_ROUTE | ML_REQ,
                       "Time from a request's arrival to its last byte."},
    [AX_M_TTFT] = {"anthroxy_time_to_first_token_seconds", MT_HISTOGRAM, ML_REQ,
                   "Time from a streamed request's arrival to the first byte of its answer."},
    [AX_M_UPSTREAM_LATENCY] = {"anthroxy_upstream_latency_seconds", MT_HISTOGRAM, ML_REQ,
                               "Time from sending a request upstream to its status line."},
    [AX_M_TOKENS_IN] = {"anthroxy_input_tokens_total", MT_COUNTER, ML_REQ,
                        "Prompt tokens the upstream reported."},
    [AX_M_TOKENS_OUT] = {"anthroxy_output_tokens_total", MT_COUNTER, ML_REQ,
                         "Completion tokens the upstream reported."},
    [AX_M_TOKENS_CACHED] = {"anthroxy_cached_tokens_total", MT_COUNTER, ML_REQ,
                            "Prompt tokens the upstream served from its prompt cache."},
    [AX_M_PRUNES] = {"anthroxy_prunes_total", MT_COUNTER, ML_REQ,
                     "Requests the pruning policy cut to fit the context window."},
    [AX_M_OVERFLOWS] = {"anthroxy_context_overflows_total", MT_COUNTER, ML_REQ,
                        "Context overflows the upstream reported."},
    [AX_M_RETRIES] = {"anthroxy_retries_total", MT_COUNTER, ML_UPSTREAM | ML_KIND,
                      "Requests sent upstream again: after on_upstream_error (policy) or a "
                      "failed connect (connect)."},
    [AX_M_FAILOVERS] = {"anthroxy_failovers_total", MT_COUNTER, ML_UPSTREAM,
                        "Requests moved from this upstream to another before their first byte."},
    [AX_M_POLICY_ERRORS] = {"anthroxy_policy_errors_total", MT_COUNTER, 0,
                            "Policy hook calls that failed (errors, budget, memory)."},
    [AX_M_BUDGET_HITS] = {"anthroxy_policy_budget_hits_total", MT_COUNTER, 0,
                          "Policy hook calls stopped by the instruction budget."},
    [AX_M_CONNECTIONS] = {"anthroxy_open_connections", MT_GAUGE, 0, "Open client connections."},
    [AX_M_STREAMS] = {"anthroxy_open_streams", MT_GAUGE, 0, "Streamed answers in progress."},
    [AX_M_SESSIONS] = {"anthroxy_sessions", MT_GAUGE, 0, "Sessions the monitor holds."},
    [AX_M_HEAP] = {"anthroxy_heap_in_use_bytes", MT_GAUGE, 0,
                   "Heap in use according to the allocator."},
    [AX_M_UPSTREAM_UP] = {"anthroxy_upstream_state", MT_GAUGE, ML_UPSTREAM | ML_STATE,
                          "1 for the upstream's current state (ok, loading, down, unknown)."},
    [AX_M_UPSTREAM_RUNNING] = {"anthroxy_upstream_running", MT_GAUGE, ML_UPSTREAM,
                               "Transfers holding an upstream slot."},
    [AX_M_UPSTREAM_QUEUED] = {"anthroxy_upstream_queued", MT_GAUGE, ML_UPSTREAM,
                              "Requests waiting for an upstream slot."},
    [AX_M_POLICY_GENERATION] = {"anthroxy_policy_generation", MT_GAUGE, 0,
                                "Policy generation in force (1 at start, +1 per reload)."},
};

struct series {
    char *labels; /* rendered: `route="messages",status="200"`, or "" */
    double value; /* counters, gauges; a histogram's sum */
    uint64_t count;
    uint64_t buckets[N_BUCKETS]; /* histograms, not cumulative */
};

struct fam_state {
    struct series *v;
    size_t n, cap;
};

struct ax_metrics {
    struct fam_state fam[AX_M__COUNT];
    struct ax_metrics_error errors[AX_METRICS_ERRORS];
    int n_errors, next_error;
};

struct ax_metrics *ax_metrics_new(void)
{
    return calloc(1, sizeof(struct ax_metrics));
}

void ax_metrics_free(struct ax_metrics *m)
{
    size_t i, j;

    if (m == NULL)
        return;
    for (i = 0; i < AX_M__COUNT; i++) {
        for (j = 0; j < m->fam[i].n; j++)
            free(m->fam[i].v[j].labels);
        free(m->fam[i].v);
    }
    free(m);
}

/* A label value as the text format wants it: \\, \" and \n escaped; other control bytes and
 * ill-formed UTF-8 become '?', so the output stays valid UTF-8; cut at a character. */
static size_t label_escape(const char *s, char *out, size_t cap)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + strlen(s);
    size_t n = 0, in = 0;
    int k;

    while (p < e && in < AX_METRICS_LABEL_MAX && n + 5 < cap) {
        if (*p >= 0x80 && (k = ax_utf8_check(p, e)) > 0) {
            if (in + (size_t)k > AX_METRICS_LABEL_MAX)
                break;
            memcpy(out + n, p, (size_t)k);
            n += (size_t)k;
            in += (size_t)k;
            p += k;
            continue;
        }
        if (*p == '\\' || *p == '"') {
            out[n++] = '\\';
            out[n++] = (char)*p;
        } else if (*p == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = *p >= 0x20 && *p < 0x7f ? (char)*p : '?';
        }
        in++;
        p++;
    }
    out[n] = '\0';
    return n;
}

/* Appends `,name="value"` (no comma first) to buf, escaped; snprintf-free: this runs
 * several times for every request. */
static void label_put(char *buf, size_t cap, size_t *n, const char *name, const char *value)
{
    size_t nl = strlen(name);

    if (*n + nl + 4 + AX_METRICS_LABEL_MAX * 2 + 1 >= cap)
        return;
    if (*n)
        buf[(*n)++] = ',';
    memcpy(buf + *n, name, nl);
    *n += nl;
    buf[(*n)++] = '=';
    buf[(*n)++] = '"';
    *n += label_escape(value ? value : "default", buf + *n, cap - *n - 1);
    buf[(*n)++] = '"';
    buf[*n] = '\0';
}

/* The family's label set rendered into buf; "other" for every value when other is set. */
static void labels_render(unsigned want, const struct ax_metric_labels *l, int other, char *buf,
                          size_t cap)
{
    static const struct ax_metric_labels none;
    char status[16];
    size_t n = 0;

    if (l == NULL)
        l = &none;
    if (want & ML_STATUS)
        snprintf(status, sizeof(status), "%d", l->status);
    buf[0] = '\0';
    if (want & ML_ROUTE)
        label_put(buf, cap, &n, "route", other ? "other" : l->route);
    if (want & ML_STATUS)
        label_put(buf, cap, &n, "status", other ? "other" : status);
    if (want & ML_UPSTREAM)
        label_put(buf, cap, &n, "upstream", other ? "other" : l->upstream);
    if (want & ML_MODEL)
        label_put(buf, cap, &n, "model", other ? "other" : l->model);
    if (want & ML_ARM)
        label_put(buf, cap, &n, "arm", other ? "other" : l->arm);
    if (want & ML_STATE)
        label_put(buf, cap, &n, "state", other ? "other" : l->state);
    if (want & ML_KIND)
        label_put(buf, cap, &n, "kind", other ? "other" : l->kind);
}

static struct series *series_find(const struct fam_state *fs, const char *labels)
{
    size_t i;

    for (i = 0; i < fs->n; i++)
        if (strcmp(fs->v[i].labels, labels) == 0)
            return &fs->v[i];
    return NULL;
}

/* The series of that label set, created when new; NULL when out of memory. */
static struct series *series_get(struct ax_metrics *m, enum ax_metric id,
                                 const struct ax_metric_labels *l)
{
    struct fam_state *fs = &m->fam[id];
    char labels[1024];
    struct series *s;

    labels_render(families[id].labels, l, 0, labels, sizeof(labels));
    if ((s = series_find(fs, labels)) != NULL)
        return s;
    if (fs->n >= AX_METRICS_MAX_SERIES) { /* one more slot, kept for "other" */
        labels_render(families[id].labels, l, 1, labels, sizeof(labels));
        if ((s = series_find(fs, labels)) != NULL)
            return s;
        if (fs->n > AX_METRICS_MAX_SERIES)
            return NULL;
    }
    if (fs->n == fs->cap) {
        size_t cap = fs->cap ? fs->cap * 2 : 4;
        struct series *v = realloc(fs->v, cap * sizeof(*v));
        if (v == NULL)
            return NULL;
        fs->v = v;
        fs->cap = cap;
    }
    s = &fs->v[fs->n];
    memset(s, 0, sizeof(*s));
    if ((s->labels = strdup(labels)) == NULL)
        return NULL;
    fs->n++;
    return s;
}

void ax_metrics_add(struct ax_metrics *m, enum ax_metric id, const struct ax_metric_labels *l,
                    double v)
{
    struct series *s;
    size_t i;

    if (m == NULL || id >= AX_M__COUNT || !isfinite(v) || (s = series_get(m, id, l)) == NULL)
        return;
    if (families[id].type == MT_COUNTER && v < 0)
        return;
    s->value += v;
    s->count++;
    if (families[id].type != MT_HISTOGRAM)
        return;
    for (i = 0; i < N_BUCKETS; i++) {
        if (v <= latency_buckets[i]) {
            s->buckets[i]++;
            break;
        }
    }
}

void ax_metrics_set(struct ax_metrics *m, enum ax_metric id, const struct ax_metric_labels *l,
                    double v)
{
    struct series *s;

    if (m == NULL || id >= AX_M__COUNT || families[id].type == MT_HISTOGRAM || !isfinite(v) ||
        (s = series_get(m, id, l)) == NULL)
        return;
    s->value = v;
}

double ax_metrics_get(const struct ax_metrics *m, enum ax_metric id,
                      const struct ax_metric_labels *l)
{
    char labels[1024];
    const struct series *s;

    if (m == NULL || id >= AX_M__COUNT)
        return 0;
    labels_render(families[id].labels, l, 0, labels, sizeof(labels));
    if ((s = series_find(&m->fam[id], labels)) == NULL)
        return 0;
    return families[id].type == MT_HISTOGRAM ? (double)s->count : s->value;
}

/* Integers print as integers; %.17g would print 1e+15 style beyond 2^53 anyway. */
static int put_value(struct ax_buf *out, double v)
{
    if (v == floor(v) && fabs(v) < 9e15)
        return ax_buf_printf(out, "%.0f\n", v);
    return ax_buf_printf(out, "%.9g\n", v);
}

static int render_histogram(const char *name, const struct series *s, struct ax_buf *out)
{
    const char *sep = s->labels[0] ? "," : "";
    uint64_t cum = 0;
    size_t i;
    int rc = 0;

    for (i = 0; i < N_BUCKETS && rc == 0; i++) {
        cum += s->buckets[i];
        rc = ax_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, s->labels, sep,
                           latency_buckets[i], (unsigned long long)cum);
    }
    if (rc == 0)
        rc = ax_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, s->labels, sep,
                           (unsigned long long)s->count);
    if (rc == 0)
        rc = ax_buf_printf(out, "%s_sum%s%s%s ", name, s->labels[0] ? "{" : "", s->labels,
                           s->labels[0] ? "}" : "");
    if (rc == 0)
        rc = put_value(out, s->value);
    if (rc == 0)
        rc = ax_buf_printf(out, "%s_count%s%s%s %llu\n", name, s->labels[0] ? "{" : "", s->labels,
                           s->labels[0] ? "}" : "", (unsigned long long)s->count);
    return rc;
}

int ax_metrics_render(const struct ax_metrics *m, struct ax_buf *out)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    size_t i, j;
    int rc = 0;

    for (i = 0; i < AX_M__COUNT && rc == 0; i++) {
        const struct family *f = &families[i];
        const struct fam_state *fs = &m->fam[i];
        rc = ax_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                           type_names[f->type]);
        /* an unlabelled family always has its one sample, 0 until counted */
        if (rc == 0 && fs->n == 0 && f->labels == 0) {
            static const struct series zero = {.labels = ""};
            rc = f->type == MT_HISTOGRAM ? render_histogram(f->name, &zero, out)
                                         : ax_buf_printf(out, "%s 0\n", f->name);
        }
        for (j = 0; j < fs->n && rc == 0; j++) {
            const struct series *s = &fs->v[j];
            if (f->type == MT_HISTOGRAM) {
                rc = render_histogram(f->name, s, out);
                continue;
            }
            rc = ax_buf_printf(out, "%s%s%s%s ", f->name, s->labels[0] ? "{" : "", s->labels,
                               s->labels[0] ? "}" : "");
            if (rc == 0)
                rc = put_value(out, s->value);
        }
    }
    return rc;
}

/* ---- recent errors ---- */

static void copy_cut(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strlen(src) : 0;

    if (n >= cap)
        n = ax_utf8_trim_partial(src, cap - 1);
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

void ax_metrics_note_error(struct ax_metrics *m, const char *request_id, int status,
                           const char *type, const char *message)
{
    struct ax_metrics_error *e;
    struct timeval tv;

    if (m == NULL)
        return;
    e = &m->errors[m->next_error];
    m->next_error = (m->next_error + 1) % AX_METRICS_ERRORS;
    if (m->n_errors < AX_METRICS_ERRORS)
        m->n_errors++;
    gettimeofday(&tv, NULL);
    e->at_ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    e->status = status;
    copy_cut(e->request_id, sizeof(e->request_id), request_id);
    copy_cut(e->type, sizeof(e->type), type);
    copy_cut(e->message, sizeof(e->message), message);
}

const struct ax_metrics_error *ax_metrics_error_at(const struct ax_metrics *m, int i)
{
    if (m == NULL || i < 0 || i >= m->n_errors)
        return NULL;
    return &m->errors[(m->next_error - 1 - i + 2 * AX_METRICS_ERRORS) % AX_METRICS_ERRORS];
}
