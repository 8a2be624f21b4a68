/* fleet.c - the upstreams a server fronts and the choice of one per request
 * (anthroxy_fleet.h): the members (one upstream.c client and probe each), model routing,
 * session affinity by rendezvous hashing under a bounded-load rule, health from the probes
 * and from live failures, and the fleet-wide retry budget. server.c builds it; messages.c
 * asks it for a member per attempt and reports back how the attempt went. */
#include "anthroxy_fleet.h"
#include "anthroxy_hash.h"
#include "anthroxy_log.h"
#include "anthroxy_upstream.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

/* As upstream.c's: the fleet belongs to no request. */
#define FLEET_LOG(lvl, ...)                                                                        \
    do {                                                                                           \
        if ((lvl) >= ax_log_level_current)                                                         \
            ax_log_write((lvl), NULL, __VA_ARGS__);                                                \
    } while (0)

#define DOWN_BACKOFF_MIN_MS 1000
#define DOWN_BACKOFF_MAX_MS 30000

enum balance { BAL_AFFINITY, BAL_ROUND_ROBIN, BAL_LEAST_LOADED };

struct member {
    struct ax_fleet *fleet;
    size_t idx;
    const char *name;   /* borrowed from cfg, or "default" */
    const char *kind;   /* borrowed from cfg, or NULL */
    const char *models; /* borrowed from cfg ('|'-separated), or NULL: discovered */
    const char *model;  /* the fleet of one's --upstream-model, or NULL */
    int max;
    struct ax_upstream *up;
    uint64_t down_until; /* live failures put it out until then (uv_now ms) */
    int fails;           /* consecutive live failures */
    uint64_t n_chosen;   /* requests routed to it */
    uint64_t n_failures; /* live failures ever */
};

struct ax_fleet {
    const struct ax_config *cfg;
    struct member m[AX_FLEET_MAX];
    size_t n;
    enum balance balance;
    uint64_t rr;           /* round-robin cursor */
    double budget;         /* failovers earned */
    uint64_t window_start; /* retry_min's one-second window */
    int window_used;
    uint64_t retries, retries_denied;
    int pending_closes;
    void (*on_closed)(void *ud);
    void *on_closed_ud;
    void (*on_info)(void *ud, size_t i);
    void *on_info_ud;
};

/* ---- members ----------------------------------------------------------------------- */

static int member_init(struct ax_fleet *f, uv_loop_t *loop, const struct ax_upstream_decl *d,
                       struct ax_error *err)
{
    const struct ax_config *cfg = f->cfg;
    struct member *mb = &f->m[f->n];
    struct ax_upstream_opts uo;
    int rc;

    memset(mb, 0, sizeof(*mb));
    mb->fleet = f;
    mb->idx = f->n;
    memset(&uo, 0, sizeof(uo));
    if (d != NULL) {
        mb->name = d->name;
        mb->kind = d->kind;
        mb->models = d->models;
        mb->max = d->max > 0 ? d->max : cfg->max_upstream;
        uo.base_url = d->url;
        uo.api_key = d->key;
        /* with replicas to fail over to, a refused connect moves on at once instead of
         * waiting out the connect retries on a server that is gone */
        uo.connect_retries = cfg->n_upstreams > 1 ? 0 : cfg->connect_retries;
    } else {
        mb->name = "default";
        mb->model = cfg->upstream_model;
        mb->max = cfg->max_upstream;
        uo.base_url = cfg->upstream_base;
        uo.api_key = cfg->upstream_api_key;
        uo.connect_retries = cfg->connect_retries;
    }
    uo.max_concurrent = mb->max;
    uo.queue_max = cfg->upstream_queue_max;
    uo.connect_timeout_ms = cfg->connect_timeout_ms;
    uo.idle_timeout_ms = cfg->read_timeout_ms;
    uo.total_timeout_ms = cfg->total_timeout_ms;
    uo.retry_delay_ms = cfg->retry_delay_ms;
    uo.max_response_bytes = cfg->max_response_bytes;
    if ((rc = ax_upstream_new(loop, &uo, &mb->up)) < 0) {
        char url[512];
        return ax_error_set_code(err, rc, 500, "api_error", "upstream %s (%s): %s", mb->name,
                                 ax_redact_url(uo.base_url, url, sizeof(url)), ax_strerror(rc));
    }
    f->n++;
    return 0;
}

int ax_fleet_new(uv_loop_t *loop, const struct ax_config *cfg, struct ax_fleet **out,
                 struct ax_error *err)
{
    struct ax_fleet *f = calloc(1, sizeof(*f));
    size_t i;
    int rc = 0;

    if (f == NULL)
        return ax_error_set_code(err, AX_ENOMEM, 500, "api_error", "out of memory");
    f->cfg = cfg;
    f->budget = cfg->retry_min;
    if (cfg->route_balance && strcmp(cfg->route_balance, "round-robin") == 0)
        f->balance = BAL_ROUND_ROBIN;
    else if (cfg->route_balance && strcmp(cfg->route_balance, "least-loaded") == 0)
        f->balance = BAL_LEAST_LOADED;
    if (cfg->n_upstreams > AX_FLEET_MAX) {
        free(f);
        return ax_error_set(err, 400, "invalid_request_error", "upstream: %zu declared, at most %d",
                            cfg->n_upstreams, AX_FLEET_MAX);
    }
    if (cfg->n_upstreams == 0)
        rc = member_init(f, loop, NULL, err);
    for (i = 0; i < cfg->n_upstreams && rc == 0; i++)
        rc = member_init(f, loop, &cfg->upstreams[i], err);
    if (rc < 0) {
        for (i = 0; i < f->n; i++)
            ax_upstream_close(f->m[i].up, NULL, NULL);
        free(f);
        return rc;
    }
    *out = f;
    return 0;
}

static void on_member_closed(void *ud)
{
    struct ax_fleet *f = ud;

    if (--f->pending_closes > 0)
        return;
    if (f->on_closed)
        f->on_closed(f->on_closed_ud);
    free(f);
}

void ax_fleet_close(struct ax_fleet *f, void (*on_closed)(void *ud), void *ud)
{
    size_t i, n = f->n;

    f->on_closed = on_closed;
    f->on_closed_ud = ud;
    f->pending_closes = (int)n;
    for (i = 0; i < n; i++)
        ax_upstream_close(f->m[i].up, on_member_closed, f);
}

static void member_on_info(void *ud)
{
    struct member *mb = ud;
    struct ax_fleet *f = mb->fleet;

    if (ax_upstream_info(mb->up)->state == AX_UP_OK && mb->down_until != 0) {
        mb->down_until = 0; /* the probe found it back: no need to wait out the backoff */
        mb->fails = 0;
    }
    if (f->on_info)
        f->on_info(f->on_info_ud, mb->idx);
}

void ax_fleet_probe_start(struct ax_fleet *f, uint64_t interval_ms,
                          void (*on_info)(void *ud, size_t i), void *ud)
{
    size_t i;

    f->on_info = on_info;
    f->on_info_ud = ud;
    for (i = 0; i < f->n; i++) {
        ax_upstream_on_info(f->m[i].up, member_on_info, &f->m[i]);
        ax_upstream_probe_start(f->m[i].up, interval_ms);
    }
}

int ax_fleet_probes_pending(const struct ax_fleet *f)
{
    size_t i;

    for (i = 0; i < f->n; i++)
        if (ax_upstream_info(f->m[i].up)->last_probe_ms == 0 && f->m[i].models == NULL &&
            f->m[i].model == NULL)
            return 1;
    return 0;
}

size_t ax_fleet_count(const struct ax_fleet *f)
{
    return f->n;
}

struct ax_upstream *ax_fleet_upstream(const struct ax_fleet *f, size_t i)
{
    return i < f->n ? f->m[i].up : NULL;
}

const char *ax_fleet_name(const struct ax_fleet *f, size_t i)
{
    return i < f->n ? f->m[i].name : "";
}

const char *ax_fleet_kind(const struct ax_fleet *f, size_t i)
{
    return i < f->n && f->m[i].kind ? f->m[i].kind : "auto";
}

int ax_fleet_llama_server(const struct ax_fleet *f, size_t i)
{
    const struct member *mb = &f->m[i];

    if (mb->kind != NULL)
        return strcmp(mb->kind, "llama-server") == 0;
    return ax_upstream_info(mb->up)->llama_server;
}

/* ---- health ------------------------------------------------------------------------ */

static int member_load(const struct member *mb)
{
    struct ax_upstream_stats st;

    ax_upstream_stats(mb->up, &st);
    return st.running + st.queued;
}

/* Eligible for new requests: not down by probe, not loading, not within a failure backoff. */
static int member_healthy(const struct member *mb, uint64_t now)
{
    int state = ax_upstream_info(mb->up)->state;

    return state != AX_UP_DOWN && state != AX_UP_LOADING && now >= mb->down_until;
}

void ax_fleet_report(struct ax_fleet *f, size_t i, int ok, uint64_t now_ms)
{
    struct member *mb;
    uint64_t backoff;

    if (i >= f->n)
        return;
    mb = &f->m[i];
    if (ok) {
        mb->fails = 0;
        mb->down_until = 0;
        return;
    }
    mb->n_failures++;
    if (mb->fails < 16)
        mb->fails++;
    backoff = (uint64_t)DOWN_BACKOFF_MIN_MS << (mb->fails - 1);
    if (backoff > DOWN_BACKOFF_MAX_MS)
        backoff = DOWN_BACKOFF_MAX_MS;
    mb->down_until = now_ms + backoff;
    if (f->n > 1)
        ax_log_write(AX_LOG_LVL_WARN, NULL,
                     "fleet: upstream %s failed (%d in a row): out for %llu ms", mb->name,
                     mb->fails, (unsigned long long)backoff);
    ax_upstream_probe_now(mb->up); /* the probe tells when it is back */
}

int ax_fleet_retry_take(struct ax_fleet *f, uint64_t now_ms)
{
    if (now_ms - f->window_start >= 1000 || f->window_start == 0) {
        f->window_start = now_ms ? now_ms : 1;
        f->window_used = 0;
    }
    if (f->window_used < f->cfg->retry_min) {
        f->window_used++;
        f->retries++;
        return 1;
    }
    if (f->budget >= 1.0) {
        f->budget -= 1.0;
        f->retries++;
        return 1;
    }
    f->retries_denied++;
    return 0;
}

/* ---- routing ----------------------------------------------------------------------- */

static int find_member(const struct ax_fleet *f, const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < f->n; i++)
        if (strlen(f->m[i].name) == len && memcmp(f->m[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

/* The first plain id of a '|'-separated declared list (no pattern characters). */
static int first_declared(const char *models, char *out, size_t n)
{
    const char *p = models;

    while (p && *p) {
        size_t len = strcspn(p, "|");
        if (len > 0 && len < n && strcspn(p, "*?[") >= len) {
            memcpy(out, p, len);
            out[len] = '\0';
            return 1;
        }
        p += len;
        if (*p == '|')
            p++;
    }
    return 0;
}

/* Whether the member serves model: a declared id or pattern, else an id of its /v1/models
 * (Ollama lists "name:latest" where clients may say "name"). */
static int member_serves(const struct member *mb, const char *model)
{
    const struct ax_upstream_info *info;
    const cJSON *e;
    size_t mlen = strlen(model);
    char pat[256];

    if (mb->models != NULL) {
        const char *p = mb->models;
        while (*p) {
            size_t len = strcspn(p, "|");
            if (len > 0 && len < sizeof(pat)) {
                memcpy(pat, p, len);
                pat[len] = '\0';
                if (fnmatch(pat, model, 0) == 0)
                    return 1;
            }
            p += len;
            if (*p == '|')
                p++;
        }
        return 0;
    }
    if (mb->model != NULL && strcmp(mb->model, model) == 0)
        return 1;
    info = ax_upstream_info(mb->up);
    cJSON_ArrayForEach(e, info->models)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (!cJSON_IsString(id))
            continue;
        if (strcmp(id->valuestring, model) == 0 || (strncmp(id->valuestring, model, mlen) == 0 &&
                                                    strcmp(id->valuestring + mlen, ":latest") == 0))
            return 1;
    }
    return 0;
}

/* The member's own model: declared first id, --upstream-model, the probed first id. */
static void member_default_model(const struct member *mb, const char *client, char *out, size_t n)
{
    const struct ax_upstream_info *info = ax_upstream_info(mb->up);

    if (mb->models && first_declared(mb->models, out, n))
        return;
    if (mb->model && *mb->model)
        snprintf(out, n, "%s", mb->model);
    else if (info->model_id[0])
        snprintf(out, n, "%s", info->model_id);
    else /* unknown yet: llama-server ignores the name; others need the probe to have run */
        snprintf(out, n, "%s", client ? client : "default");
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* Rendezvous (highest random weight) score of key on a member: every key ranks the members
 * in its own order, so removing one moves only the keys that ranked it first. */
static uint64_t hrw_score(const char *key, const struct member *mb)
{
    uint64_t h = ax_fnv1a(key, strlen(key), AX_FNV1A_INIT);

    h = ax_fnv1a("\0", 1, h);
    return mix64(ax_fnv1a(mb->name, strlen(mb->name), h));
}

/* Among candidate members cand[0..n) (all untried), picks one. */
static size_t pick(struct ax_fleet *f, const size_t *cand, size_t n, const char *key,
                   int has_session, char *why, size_t why_n)
{
    size_t order[AX_FLEET_MAX], i, j, least = cand[0], least_i = 0;
    uint64_t score[AX_FLEET_MAX], sorted[AX_FLEET_MAX];
    int total = 0, load[AX_FLEET_MAX], least_load = -1;
    double bound;

    if (n == 1) {
        snprintf(why, why_n, "only");
        return cand[0];
    }
    for (i = 0; i < n; i++) {
        load[i] = member_load(&f->m[cand[i]]);
        total += load[i];
        score[i] = hrw_score(key, &f->m[cand[i]]);
        /* ties go by the key's rendezvous order, so idle replicas share requests that
         * carry no session (their key is the request id) */
        if (least_load < 0 || load[i] < least_load ||
            (load[i] == least_load && score[i] > score[least_i])) {
            least_load = load[i];
            least = cand[i];
            least_i = i;
        }
    }
    if (f->balance == BAL_ROUND_ROBIN) {
        snprintf(why, why_n, "round-robin");
        return cand[f->rr++ % n];
    }
    if (f->balance == BAL_LEAST_LOADED || !has_session) {
        snprintf(why, why_n, "least-loaded");
        return least;
    }
    /* this session's own order of the replicas (insertion sort, n is small) */
    for (i = 0; i < n; i++) {
        uint64_t s = score[i];
        for (j = i; j > 0 && sorted[j - 1] < s; j--) {
            sorted[j] = sorted[j - 1];
            order[j] = order[j - 1];
        }
        sorted[j] = s;
        order[j] = i;
    }
    /* bounded load: skip a replica whose load is over c * mean + 1 */
    bound = f->cfg->affinity_load_factor * ((double)total / (double)n) + 1.0;
    for (j = 0; j < n; j++) {
        if ((double)load[order[j]] <= bound) {
            snprintf(why, why_n, j == 0 ? "affinity" : "moved");
            return cand[order[j]];
        }
    }
    snprintf(why, why_n, "least-loaded");
    return least;
}

/* Parses a model-map target: "MODEL", "MODEL@UPSTREAM" or "@UPSTREAM". */
static void split_target(const char *t, char *model, size_t mn, const char **up, size_t *up_len)
{
    const char *at = strrchr(t, '@');

    *up = NULL;
    *up_len = 0;
    if (at == NULL) {
        snprintf(model, mn, "%s", t);
        return;
    }
    snprintf(model, mn, "%.*s", (int)(at - t), t);
    *up = at + 1;
    *up_len = strlen(at + 1);
}

static int map_exact(const struct ax_config *cfg, const char *client_model)
{
    size_t i;

    for (i = 0; i < cfg->n_model_map; i++)
        if (strcmp(cfg->model_map[i].from, client_model) == 0)
            return 1;
    return 0;
}

int ax_fleet_route(struct ax_fleet *f, const struct ax_route_req *rq, struct ax_route *out,
                   struct ax_error *err)
{
    const struct ax_config *cfg = f->cfg;
    uint64_t now = uv_now(ax__upstream_loop(f->m[0].up));
    size_t cand[AX_FLEET_MAX], n = 0, healthy[AX_FLEET_MAX], nh = 0, i, chosen;
    uint64_t named = 0;
    char model[256] = "";
    const char *target = rq->client_model ? ax_config_map_model(cfg, rq->client_model) : NULL;
    const char *key = rq->session_key;
    int has_session = key != NULL && *key && strcmp(key, "default") != 0 && strcmp(key, "-") != 0;
    int first = out->tried == 0;

    if (target != NULL && f->n > 1 && !map_exact(cfg, rq->client_model)) {
        /* a name some upstream serves as the client wrote it beats the map's patterns
         * (Ollama names, a router-mode llama-server's models) */
        for (i = 0; i < f->n; i++)
            if (member_serves(&f->m[i], rq->client_model))
                target = NULL;
    }
    if (rq->names != NULL && rq->names[0] != NULL) {
        for (i = 0; rq->names[i] != NULL; i++) {
            int k = find_member(f, rq->names[i], strlen(rq->names[i]));
            if (k < 0)
                FLEET_LOG(AX_LOG_LVL_WARN, "on_route chose an unknown upstream '%s'", rq->names[i]);
            else
                named |= 1ull << k;
        }
        if (named == 0)
            return ax_error_set(err, 500, "api_error",
                                "on_route chose no declared upstream (first: '%s')", rq->names[0]);
        if (rq->model && *rq->model)
            snprintf(model, sizeof(model), "%s", rq->model);
    } else if (target != NULL) {
        const char *up;
        size_t up_len;
        int k;
        split_target(target, model, sizeof(model), &up, &up_len);
        if (up != NULL) {
            if ((k = find_member(f, up, up_len)) < 0)
                return ax_error_set(err, 500, "api_error", "model-map names no upstream '%.*s'",
                                    (int)up_len, up);
            named = 1ull << k;
        }
    }
    if (f->n == 1 && named == 0 && target == NULL && !(rq->names && rq->names[0])) {
        /* the fleet of one, as before: --upstream-model, the probed id, the client's */
        if (out->tried & 1)
            return AX_ENOTFOUND;
        out->idx = 0;
        member_default_model(&f->m[0], rq->client_model, out->upstream_model,
                             sizeof(out->upstream_model));
        out->tried |= 1;
        snprintf(out->why, sizeof(out->why), "only");
        f->m[0].n_chosen++;
        if (first)
            f->budget += cfg->retry_budget;
        return 0;
    }
    if (named == 0 && !model[0] && rq->client_model) {
        /* no map: the client's own name, if some member serves it (Ollama, router mode) */
        for (i = 0; i < f->n; i++)
            if (member_serves(&f->m[i], rq->client_model))
                snprintf(model, sizeof(model), "%s", rq->client_model);
    }
    for (i = 0; i < f->n; i++) {
        const struct member *mb = &f->m[i];
        if (named != 0 ? !(named & (1ull << i)) : (!model[0] || !member_serves(mb, model)))
            continue;
        cand[n++] = i;
    }
    if (n == 0 && model[0] && named == 0) {
        /* mapped to a model nobody lists (yet): members that declare nothing may serve it */
        for (i = 0; i < f->n; i++)
            if (f->m[i].models == NULL &&
                (f->n == 1 || ax_upstream_info(f->m[i].up)->models == NULL))
                cand[n++] = i;
    }
    if (n == 0) {
        /* the default: the replicas of the first upstream's own model */
        char dm[256];
        member_default_model(&f->m[0], rq->client_model, dm, sizeof(dm));
        for (i = 0; i < f->n; i++)
            if (i == 0 || member_serves(&f->m[i], dm) ||
                (f->m[i].models == NULL && ax_upstream_info(f->m[i].up)->models == NULL))
                cand[n++] = i; /* unprobed members may be replicas too */
        if (!model[0])         /* a mapped model nobody lists is still sent as mapped */
            snprintf(model, sizeof(model), "%s", dm);
    }
    /* drop those tried; prefer the healthy */
    for (i = 0, nh = 0; i < n; i++)
        if (!(out->tried & (1ull << cand[i])))
            healthy[nh++] = cand[i];
    n = nh;
    memcpy(cand, healthy, n * sizeof(cand[0]));
    if (n == 0)
        return AX_ENOTFOUND;
    for (i = 0, nh = 0; i < n; i++)
        if (member_healthy(&f->m[cand[i]], now))
            healthy[nh++] = cand[i];
    if (nh == 0) {
        /* all down: still try one (the least recently failed), so the client hears why */
        size_t b = cand[0];
        for (i = 1; i < n; i++)
            if (f->m[cand[i]].down_until < f->m[b].down_until)
                b = cand[i];
        healthy[nh++] = b;
    }
    chosen = pick(f, healthy, nh, has_session ? key : (rq->request_id ? rq->request_id : ""),
                  has_session, out->why, sizeof(out->why));
    out->idx = chosen;
    if (model[0])
        snprintf(out->upstream_model, sizeof(out->upstream_model), "%s", model);
    else
        member_default_model(&f->m[chosen], rq->client_model, out->upstream_model,
                             sizeof(out->upstream_model));
    out->tried |= 1ull << chosen;
    f->m[chosen].n_chosen++;
    if (first) {
        f->budget += cfg->retry_budget;
        if (f->budget > 10.0 + cfg->retry_min)
            f->budget = 10.0 + cfg->retry_min;
    }
    return 0;
}

/* ---- views ------------------------------------------------------------------------- */

static cJSON *member_models_json(const struct member *mb)
{
    cJSON *arr = cJSON_CreateArray();
    const struct ax_upstream_info *info = ax_upstream_info(mb->up);
    const cJSON *e;

    if (mb->models != NULL) {
        const char *p = mb->models;
        while (*p) {
            size_t len = strcspn(p, "|");
            if (len > 0) {
                char buf[256];
                snprintf(buf, sizeof(buf), "%.*s", (int)len, p);
                cJSON_AddItemToArray(arr, cJSON_CreateString(buf));
            }
            p += len;
            if (*p == '|')
                p++;
        }
        return arr;
    }
    if (mb->model)
        cJSON_AddItemToArray(arr, cJSON_CreateString(mb->model));
    cJSON_ArrayForEach(e, info->models)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (cJSON_IsString(id))
            cJSON_AddItemToArray(arr, cJSON_CreateString(id->valuestring));
    }
    return arr;
}

cJSON *ax_fleet_health(const struct ax_fleet *f, uint64_t now_ms, int *healthy_out)
{
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "upstreams");
    static const char *const bal[] = {"affinity", "round-robin", "least-loaded"};
    char url[512];
    size_t i;
    int healthy = 0;

    for (i = 0; i < f->n; i++) {
        const struct member *mb = &f->m[i];
        const struct ax_upstream_info *info = ax_upstream_info(mb->up);
        struct ax_upstream_stats st;
        cJSON *e = cJSON_CreateObject();
        int ok = member_healthy(mb, now_ms);

        ax_upstream_stats(mb->up, &st);
        healthy += ok;
        cJSON_AddItemToArray(arr, e);
        cJSON_AddStringToObject(e, "name", mb->name);
        cJSON_AddStringToObject(e, "url",
                                ax_redact_url(ax_upstream_root(mb->up), url, sizeof(url)));
        cJSON_AddStringToObject(e, "kind", mb->kind ? mb->kind : "auto");
        cJSON_AddStringToObject(
            e, "state", now_ms < mb->down_until ? "down" : ax_upstream_state_name(info->state));
        cJSON_AddBoolToObject(e, "healthy", ok);
        cJSON_AddNumberToObject(e, "load", st.running + st.queued);
        cJSON_AddNumberToObject(e, "running", st.running);
        cJSON_AddNumberToObject(e, "queued", st.queued);
        cJSON_AddNumberToObject(e, "max", mb->max);
        cJSON_AddItemToObject(e, "models", member_models_json(mb));
        cJSON_AddBoolToObject(e, "llama_server", ax_fleet_llama_server(f, i));
        cJSON_AddNumberToObject(e, "n_ctx", (double)info->n_ctx);
        cJSON_AddNumberToObject(e, "requests", (double)mb->n_chosen);
        cJSON_AddNumberToObject(e, "failures", (double)mb->n_failures);
        cJSON_AddNumberToObject(e, "down_for_ms",
                                now_ms < mb->down_until ? (double)(mb->down_until - now_ms) : 0);
    }
    cJSON_AddStringToObject(root, "balance", bal[f->balance]);
    cJSON_AddNumberToObject(root, "retries", (double)f->retries);
    cJSON_AddNumberToObject(root, "retries_denied", (double)f->retries_denied);
    if (healthy_out)
        *healthy_out = healthy;
    return root;
}

cJSON *ax_fleet_route_view(const struct ax_fleet *f, uint64_t now_ms)
{
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "upstreams");
    size_t i;

    for (i = 0; i < f->n; i++) {
        const struct member *mb = &f->m[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddItemToArray(arr, e);
        cJSON_AddStringToObject(e, "name", mb->name);
        cJSON_AddStringToObject(e, "kind", mb->kind ? mb->kind : "auto");
        cJSON_AddStringToObject(e, "state",
                                ax_upstream_state_name(ax_upstream_info(mb->up)->state));
        cJSON_AddBoolToObject(e, "healthy", member_healthy(mb, now_ms));
        cJSON_AddNumberToObject(e, "load", member_load(mb));
        cJSON_AddNumberToObject(e, "max", mb->max);
        cJSON_AddItemToObject(e, "models", member_models_json(mb));
    }
    return root;
}
