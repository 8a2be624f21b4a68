/* probe.c - the upstream's facts, polled in the background: GET /props (llama-server's
 * settings and state), /slots (its per-slot context) and /v1/models (the model ids, vLLM's
 * max_model_len). The only code that knows those answers' shapes; it calls down into
 * upstream.c's transfer API and reports up through the on_info hook. server.c starts it,
 * routes.c (/health, /v1/models) and messages.c read what it found. */
#include "anthroxy_probe.h"
#include "anthroxy_log.h"
#include "anthroxy_upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* As upstream.c's: the probe belongs to no request. */
#define UP_LOG(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((lvl) >= ax_log_level_current)                                                         \
            ax_log_write((lvl), NULL, __VA_ARGS__);                                                \
    } while (0)

#define PROBE_TIMEOUT_MS 10000
#define PROBE_SLOW_MS 60000
#define PROBE_DOWN_MAX_MS 30000
#define PROBE_MAX_BYTES (4u * 1024 * 1024)

enum probe_step { PROBE_IDLE, PROBE_PROPS, PROBE_SLOTS, PROBE_MODELS };

struct probe {
    struct ax_upstream *up;
    uv_timer_t timer; /* the next probe */
    struct ax_upstream_info info;
    enum probe_step step;
    struct ax_xfer *xfer;
    uint64_t interval_ms; /* 0: probe_start not called */
    int state;            /* state the running probe has found so far */
    int64_t n_ctx;
    const char *n_ctx_source;
    int llama;
    char old_model[256];
    int down_streak; /* probes in a row that found it down: the next one backs off */
    int closing;
    void (*on_info)(void *ud);
    void *on_info_ud;
};

static void probe_step_start(struct probe *p, enum probe_step step);
static void probe_now(struct probe *p);
static void probe_close_timer(struct probe *p);

const char *ax_upstream_state_name(int state)
{
    switch (state) {
    case AX_UP_OK:
        return "ok";
    case AX_UP_LOADING:
        return "loading";
    case AX_UP_DOWN:
        return "down";
    default:
        return "unknown";
    }
}

static int64_t json_positive_int(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 1e15)
        return 0;
    return (int64_t)v->valuedouble;
}

/* Parses a fetched body (NUL-terminated by the fetch): NULL when it is not exactly one JSON
 * value, trailing whitespace allowed. */
static cJSON *probe_parse(const char *body, size_t len)
{
    return cJSON_ParseWithLengthOpts(body, len + 1, NULL, 1);
}

static void probe_state_from_status(struct probe *p, int rc, int status)
{
    if (rc < 0)
        p->state = AX_UP_DOWN;
    else if (status == 503)
        p->state = AX_UP_LOADING; /* llama-server while it loads the model */
    else if (status >= 500)
        p->state = AX_UP_DOWN;
    else
        p->state = AX_UP_OK;
}

static void probe_on_props(struct probe *p, int status, const char *body, size_t len)
{
    cJSON *j;
    const cJSON *dgs;

    if (status != 200 || (j = probe_parse(body, len)) == NULL)
        return;
    dgs = cJSON_GetObjectItemCaseSensitive(j, "default_generation_settings");
    if (cJSON_IsObject(dgs)) {
        p->llama = 1;
        if ((p->n_ctx = json_positive_int(dgs, "n_ctx")) > 0)
            p->n_ctx_source = "props";
    }
    cJSON_Delete(j);
}

static void probe_on_slots(struct probe *p, int status, const char *body, size_t len)
{
    cJSON *j;
    const cJSON *s0;

    if (status != 200 || (j = probe_parse(body, len)) == NULL)
        return;
    if (cJSON_IsArray(j) && (s0 = j->child) != NULL && cJSON_IsObject(s0) &&
        (p->n_ctx = json_positive_int(s0, "n_ctx")) > 0)
        p->n_ctx_source = "slots";
    cJSON_Delete(j);
}

static void probe_on_models(struct probe *p, int status, const char *body, size_t len)
{
    cJSON *j, *data;
    const cJSON *m0, *id;

    if (status != 200 || (j = probe_parse(body, len)) == NULL)
        return;
    data = cJSON_DetachItemFromObjectCaseSensitive(j, "data");
    cJSON_Delete(j);
    if (!cJSON_IsArray(data)) {
        cJSON_Delete(data);
        return;
    }
    m0 = data->child;
    id = cJSON_GetObjectItemCaseSensitive(m0, "id");
    if (cJSON_IsString(id) && id->valuestring != NULL)
        snprintf(p->info.model_id, sizeof(p->info.model_id), "%s", id->valuestring);
    else
        p->info.model_id[0] = '\0';
    /* vLLM reports the context per sequence here; llama-server and Ollama answered above */
    if (p->n_ctx == 0 && m0 != NULL && (p->n_ctx = json_positive_int(m0, "max_model_len")) > 0)
        p->n_ctx_source = "models";
    cJSON_Delete(p->info.models);
    p->info.models = data;
}

static void probe_on_timer(uv_timer_t *t)
{
    probe_now(t->data);
}

static void probe_finish(struct probe *p)
{
    struct ax_upstream_info *in = &p->info;
    int changed;
    uint64_t next;

    changed = in->state != p->state || in->n_ctx != p->n_ctx ||
              (in->n_ctx_source != p->n_ctx_source && p->n_ctx > 0) ||
              in->llama_server != p->llama || strcmp(in->model_id, p->old_model) != 0;
    if (in->state != p->state)
        UP_LOG(p->state == AX_UP_OK ? AX_LOG_LVL_INFO : AX_LOG_LVL_WARN, "upstream: %s is %s",
               ax_upstream_root(p->up), ax_upstream_state_name(p->state));
    if (in->n_ctx != p->n_ctx && p->n_ctx > 0)
        UP_LOG(AX_LOG_LVL_INFO, "upstream: context window n_ctx=%lld (from /%s)",
               (long long)p->n_ctx, p->n_ctx_source);
    in->state = p->state;
    /* a server that is down or loading keeps the last n_ctx it reported */
    if (p->n_ctx > 0 || in->state == AX_UP_OK) {
        in->n_ctx = p->n_ctx;
        in->n_ctx_source = p->n_ctx > 0 ? p->n_ctx_source : NULL;
        in->llama_server = p->llama;
    }
    in->last_probe_ms = uv_now(p->timer.loop);
    p->step = PROBE_IDLE;
    if (p->interval_ms && !p->closing) {
        /* fast while down, loading or (llama-server) without a context size */
        next = p->interval_ms;
        if (in->state == AX_UP_OK && (in->n_ctx > 0 || !in->llama_server))
            next = PROBE_SLOW_MS;
        /* down: back off (2, 4, 8, 16 s, then every 30 s), so a dead server of a fleet is
         * not polled hard; a live failure (ax_upstream_probe_now) still probes at once */
        p->down_streak = in->state == AX_UP_DOWN ? p->down_streak + 1 : 0;
        if (p->down_streak > 1) {
            int shift = p->down_streak - 1 < 4 ? p->down_streak - 1 : 4;
            next = p->interval_ms << shift;
            if (next > PROBE_DOWN_MAX_MS)
                next = PROBE_DOWN_MAX_MS;
        }
        uv_timer_start(&p->timer, probe_on_timer, next, 0);
    }
    if (changed && p->on_info != NULL)
        p->on_info(p->on_info_ud);
}

static void probe_on_fetch(int rc, int status, const char *body, size_t len, void *ud)
{
    struct probe *p = ud;

    p->xfer = NULL;
    if (p->closing) {
        p->step = PROBE_IDLE;
        probe_close_timer(p); /* the transfer was the last thing waited for */
        return;
    }
    switch (p->step) {
    case PROBE_PROPS:
        probe_state_from_status(p, rc, status);
        if (p->state != AX_UP_OK) {
            probe_finish(p);
            return;
        }
        probe_on_props(p, status, body, len);
        probe_step_start(p, p->n_ctx > 0 ? PROBE_MODELS : PROBE_SLOTS);
        return;
    case PROBE_SLOTS:
        if (rc == 0)
            probe_on_slots(p, status, body, len);
        probe_step_start(p, PROBE_MODELS);
        return;
    case PROBE_MODELS:
        if (rc == 0 && status >= 500)
            probe_state_from_status(p, rc, status);
        else if (rc == 0)
            probe_on_models(p, status, body, len);
        probe_finish(p);
        return;
    default:
        return;
    }
}

static void probe_step_start(struct probe *p, enum probe_step step)
{
    static const char *const paths[] = {NULL, "/props", "/slots", "/v1/models"};
    int rc;

    p->step = step;
    rc = ax__upstream_fetch_bypass(p->up, paths[step], PROBE_TIMEOUT_MS, PROBE_MAX_BYTES,
                                   probe_on_fetch, p, &p->xfer);
    if (rc < 0) {
        /* out of memory or closing: try again at the next interval */
        if (step == PROBE_PROPS)
            p->state = AX_UP_DOWN;
        p->step = PROBE_IDLE;
        if (p->interval_ms && !p->closing)
            uv_timer_start(&p->timer, probe_on_timer, p->interval_ms, 0);
    }
}

static void probe_now(struct probe *p)
{
    if (p->closing || p->step != PROBE_IDLE)
        return;
    uv_timer_stop(&p->timer);
    p->state = AX_UP_UNKNOWN;
    p->n_ctx = 0;
    p->n_ctx_source = NULL;
    p->llama = 0;
    snprintf(p->old_model, sizeof(p->old_model), "%s", p->info.model_id);
    probe_step_start(p, PROBE_PROPS);
}

/* ---- life cycle: the probe rides on the upstream client and closes with it ---- */

static void probe_on_close(uv_handle_t *h)
{
    struct probe *p = h->data;
    struct ax_upstream *up = p->up;

    cJSON_Delete(p->info.models);
    free(p);
    ax__upstream_detached(up);
}

static void probe_close_timer(struct probe *p)
{
    uv_close((uv_handle_t *)&p->timer, probe_on_close);
}

/* From ax_upstream_close, which cancels our transfer next: its callback ends the close. */
static void probe_on_upstream_close(void *obj)
{
    struct probe *p = obj;

    p->closing = 1;
    uv_timer_stop(&p->timer);
    if (p->xfer == NULL)
        probe_close_timer(p);
}

/* The probe of up, created on first use; NULL when out of memory. */
static struct probe *probe_of(struct ax_upstream *up)
{
    struct probe *p = ax__upstream_attached(up);

    if (p != NULL)
        return p;
    if ((p = calloc(1, sizeof(*p))) == NULL) {
        UP_LOG(AX_LOG_LVL_ERROR, "upstream: probe: out of memory");
        return NULL;
    }
    p->up = up;
    uv_timer_init(ax__upstream_loop(up), &p->timer);
    p->timer.data = p;
    ax__upstream_attach(up, p, probe_on_upstream_close);
    return p;
}

void ax_upstream_probe_now(struct ax_upstream *up)
{
    struct probe *p = probe_of(up);

    if (p != NULL)
        probe_now(p);
}

void ax_upstream_probe_start(struct ax_upstream *up, uint64_t interval_ms)
{
    struct probe *p = probe_of(up);

    if (p == NULL)
        return;
    p->interval_ms = interval_ms ? interval_ms : 2000;
    probe_now(p);
}

const struct ax_upstream_info *ax_upstream_info(const struct ax_upstream *up)
{
    static const struct ax_upstream_info never_probed; /* all zero: AX_UP_UNKNOWN */
    const struct probe *p = ax__upstream_attached(up);

    return p != NULL ? &p->info : &never_probed;
}

void ax_upstream_on_info(struct ax_upstream *up, void (*cb)(void *ud), void *ud)
{
    struct probe *p = probe_of(up);

    if (p == NULL)
        return;
    p->on_info = cb;
    p->on_info_ud = ud;
}
