/* anthroxy_metrics.h - the server's counters, gauges and fixed-bucket histograms, kept in memory
 * and rendered in Prometheus' text exposition format (version 0.0.4) on request.
 *
 * Families are fixed at build time (enum ax_metric, one table in metrics.c). Each declares which
 * labels it carries, from one set of dimensions (struct ax_metric_labels): adding a label to a
 * family is one bit in metrics.c's table, plus filling the field where it is counted. A label the
 * caller leaves NULL renders as "default" (the single upstream, the only arm); labels a family
 * does not declare are ignored. Values are escaped and cut (model names come from clients);
 * a family holds at most AX_METRICS_MAX_SERIES label sets, later ones are counted in one series
 * whose labels all read "other", so a client cannot grow our memory by inventing model names.
 *
 * A leaf: it calls nothing of the server. Gauges of state owned elsewhere (connections,
 * sessions, heap) are set by the caller just before rendering. Loop thread only. */
#ifndef ANTHROXY_METRICS_H
#define ANTHROXY_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "anthroxy_buf.h"

#define AX_METRICS_MAX_SERIES 256 /* label sets per family, then "other" */
#define AX_METRICS_LABEL_MAX 64   /* bytes of one label value, cut at a character */
#define AX_METRICS_ERRORS 32      /* recent errors kept for the status page */

enum ax_metric {
    AX_M_REQUESTS,          /* counter: requests answered, by route, status, upstream, model, arm */
    AX_M_DURATION,          /* histogram: request arrival to last byte, seconds */
    AX_M_TTFT,              /* histogram: request arrival to the first streamed byte, seconds */
    AX_M_UPSTREAM_LATENCY,  /* histogram: request sent upstream to its status line, seconds */
    AX_M_TOKENS_IN,         /* counter: prompt tokens the upstream reported */
    AX_M_TOKENS_OUT,        /* counter: completion tokens */
    AX_M_TOKENS_CACHED,     /* counter: prompt tokens served from the upstream's cache */
    AX_M_PRUNES,            /* counter: requests the pruning policy cut */
    AX_M_OVERFLOWS,         /* counter: context overflows the upstream reported */
    AX_M_RETRIES,           /* counter: requests sent again (on_upstream_error, connect retries) */
    AX_M_FAILOVERS,         /* counter: requests moved to another upstream */
    AX_M_POLICY_ERRORS,     /* counter: policy hook failures (mirrored from the engine) */
    AX_M_BUDGET_HITS,       /* counter: hooks stopped by the instruction budget (mirrored) */
    AX_M_CONNECTIONS,       /* gauge: open client connections */
    AX_M_STREAMS,           /* gauge: streamed answers in progress */
    AX_M_SESSIONS,          /* gauge: sessions the monitor holds */
    AX_M_HEAP,              /* gauge: heap in use, bytes */
    AX_M_UPSTREAM_UP,       /* gauge: 1 for the upstream's current state, 0 for the others */
    AX_M_UPSTREAM_RUNNING,  /* gauge: transfers holding an upstream slot */
    AX_M_UPSTREAM_QUEUED,   /* gauge: requests waiting for one */
    AX_M_POLICY_GENERATION, /* gauge: policy generation in force */
    AX_M__COUNT
};

/* The label dimensions; each family uses a subset (metrics.c). NULL: "default". */
struct ax_metric_labels {
    const char *route;    /* "messages", "count_tokens", "models", "health", ... */
    int status;           /* HTTP status answered (0: not used) */
    const char *upstream; /* the upstream's name */
    const char *model;    /* the model the client asked for */
    const char *arm;      /* the experiment arm */
    const char *state;    /* an upstream state: "ok", "loading", "down", "unknown" */
    const char *kind;     /* a retry's kind: "policy", "connect" */
};

struct ax_metrics;

/* Returns NULL when out of memory. */
struct ax_metrics *ax_metrics_new(void);
void ax_metrics_free(struct ax_metrics *m);

/* Counters: adds v (>= 0). Histograms: observes v. Gauges: adds v (may be negative). A label set
 * that cannot be stored (out of memory) is dropped silently: metrics never fail a request. */
void ax_metrics_add(struct ax_metrics *m, enum ax_metric id, const struct ax_metric_labels *l,
                    double v);
/* Gauges, and counters mirrored from a module that keeps its own count: sets the value. */
void ax_metrics_set(struct ax_metrics *m, enum ax_metric id, const struct ax_metric_labels *l,
                    double v);
/* The value of a counter or gauge series, or a histogram's count; 0 when absent (tests). */
double ax_metrics_get(const struct ax_metrics *m, enum ax_metric id,
                      const struct ax_metric_labels *l);

/* Appends every family in the text format to out. Returns 0, or AX_ETOOBIG / AX_ENOMEM. */
int ax_metrics_render(const struct ax_metrics *m, struct ax_buf *out);

/* ---- recent errors, for the status page ---- */

struct ax_metrics_error {
    uint64_t at_ms; /* wall clock, ms since the epoch */
    int status;
    char request_id[40];
    char type[32];
    char message[200]; /* cut at a character */
};

/* Keeps the last AX_METRICS_ERRORS errors in a ring (copied, cut to fit). */
void ax_metrics_note_error(struct ax_metrics *m, const char *request_id, int status,
                           const char *type, const char *message);
/* The i-th most recent error (0: the newest), or NULL past the last one. */
const struct ax_metrics_error *ax_metrics_error_at(const struct ax_metrics *m, int i);

#endif
