/* anthroxy_probe.h - the upstream's facts, polled in the background over the transfer API:
 * whether it answers, its per-slot context window, whether it is llama-server, its models.
 * probe.c is the only code that knows the shapes of /props, /slots and /v1/models. */
#ifndef ANTHROXY_PROBE_H
#define ANTHROXY_PROBE_H

#include <cjson/cJSON.h>
#include <stdint.h>

struct ax_upstream;

/* The upstream's facts, probed in the background. */
enum ax_upstream_state {
    AX_UP_UNKNOWN = 0, /* not probed yet */
    AX_UP_OK,          /* answers */
    AX_UP_LOADING,     /* 503 from llama-server while it loads the model */
    AX_UP_DOWN         /* unreachable, or answers 5xx otherwise */
};

struct ax_upstream_info {
    int state;                /* enum ax_upstream_state */
    int64_t n_ctx;            /* per-slot context: /props default_generation_settings.n_ctx,
                                 else /slots[0].n_ctx, else /v1/models data[0].max_model_len
                                 (vLLM), else 0 (unknown). Kept while down or loading. */
    const char *n_ctx_source; /* "props", "slots", "models", or NULL (static strings) */
    int llama_server;         /* /props answered like llama-server */
    char model_id[256];       /* first id from GET /v1/models data[], "" unknown */
    cJSON *models;            /* the upstream's /v1/models "data" array (owned by up, replaced
                                 by each probe that reads it: do not keep it), or NULL */
    uint64_t last_probe_ms;   /* uv_now of the last completed probe, 0 never */
};

/* Starts background probing: a probe now, then every interval_ms (0: 2000) while state != OK
 * or (llama-server) n_ctx is unknown; once OK, re-probes slowly (60 s). A probe is GET
 * /props (503: LOADING, other 5xx or unreachable: DOWN, and stop), then GET /slots when
 * /props gave no n_ctx, then GET /v1/models (5xx there decides the state too). Probe
 * transfers bypass the concurrency cap and never retry; their failures log at DEBUG, state
 * changes at INFO/WARN. */
void ax_upstream_probe_start(struct ax_upstream *up, uint64_t interval_ms);
/* Probes now (no effect while a probe runs). Works without probe_start too. */
void ax_upstream_probe_now(struct ax_upstream *up);
const struct ax_upstream_info *ax_upstream_info(const struct ax_upstream *up);
/* Optional hook, run from the loop after a probe changed state, n_ctx or model_id. */
void ax_upstream_on_info(struct ax_upstream *up, void (*cb)(void *ud), void *ud);

/* "unknown", "ok", "loading", "down" (for /health and the logs); "unknown" for other values. */
const char *ax_upstream_state_name(int state);

#endif
