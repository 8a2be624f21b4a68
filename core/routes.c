/* routes.c - dispatch by method and path (server.c hands it each request http.c parsed),
 * inbound keys, and the small endpoints: HEAD /, GET /health, GET /v1/models,
 * GET /v1/context, and (in "seeing it run") GET /metrics, GET / (the status page) and
 * GET /v1/status (its data). POST /v1/messages and /v1/messages/count_tokens go to
 * messages.c. */
#include "anthroxy_experiment.h"
#include "anthroxy_fleet.h"
#include "anthroxy_http.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_models.h"
#include "anthroxy_messages.h"
#include "anthroxy_metrics.h"
#include "anthroxy_monitor.h"
#include "anthroxy_policy.h"
#include "anthroxy_routes.h"
#include "anthroxy_server.h"
#include "anthroxy_session_share.h"
#include "anthroxy_state_redis.h"
#include "anthroxy_upstream.h"

#include <curl/curl.h>
#include <llhttp.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Model names Claude Code and the SDKs ask for; listed so clients that check find them. */
static const char *const claude_models[] = {
    "claude-opus-4-5",           "claude-sonnet-4-5",      "claude-haiku-4-5",
    "claude-sonnet-4-20250514",  "claude-opus-4-20250514", "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-20241022",
};

/* Constant-time comparison: the time taken does not depend on where the strings differ. */
static int key_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), i, n = la > lb ? la : lb;
    unsigned char diff = (unsigned char)(la != lb);

    for (i = 0; i < n; i++) {
        unsigned char ca = i < la ? (unsigned char)a[i] : 0;
        unsigned char cb = i < lb ? (unsigned char)b[i] : 0;
        diff |= (unsigned char)(ca ^ cb);
    }
    return diff == 0;
}

static int authorized(const struct ax_server *srv, const struct ax_req *req)
{
    const char *key = ax_req_header(req, "x-api-key");
    const char *auth = ax_req_header(req, "authorization");
    size_t i;
    int ok = 0;

    if (srv->cfg.n_api_keys == 0)
        return 1;
    if (key == NULL && auth != NULL && strncasecmp(auth, "Bearer ", 7) == 0)
        key = auth + 7;
    if (key == NULL)
        return 0;
    for (i = 0; i < srv->cfg.n_api_keys; i++)
        ok |= key_equal(key, srv->cfg.api_keys[i]); /* no early exit */
    return ok;
}

static int send_errorf(struct ax_req *req, int status, const char *type, const char *msg)
{
    struct ax_error err = {0};

    ax_error_set(&err, status, type, "%s", msg);
    return ax_http_send_error(req, &err);
}

/* The ids GET /v1/models lists, in order, without duplicates: the upstream's models (else
 * the configured upstream model), the Claude names clients ask for, the model map's names. */
static cJSON *model_ids(const struct ax_server *srv)
{
    cJSON *ids = cJSON_CreateArray(), *m, *e;
    const char *add[64];
    size_t n = 0, i, k;

    if (ids == NULL)
        return NULL;
    for (k = 0; k < ax_fleet_count(srv->fleet); k++) { /* every upstream's, merged */
        const struct ax_upstream_info *info = ax_upstream_info(ax_fleet_upstream(srv->fleet, k));
        cJSON_ArrayForEach(m, info->models)
        {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
            if (cJSON_IsString(id) && n < 32)
                add[n++] = id->valuestring;
        }
    }
    if (n == 0 && srv->cfg.upstream_model && *srv->cfg.upstream_model) {
        add[n++] = srv->cfg.upstream_model;
    }
    for (i = 0; i < sizeof(claude_models) / sizeof(claude_models[0]); i++)
        add[n++] = claude_models[i];
    for (i = 0; i < srv->cfg.n_model_map && n < sizeof(add) / sizeof(add[0]); i++)
        if (!strchr(srv->cfg.model_map[i].from, '*'))
            add[n++] = srv->cfg.model_map[i].from;
    for (i = 0; i < n; i++) {
        int dup = 0;
        cJSON_ArrayForEach(e, ids) dup |= strcmp(e->valuestring, add[i]) == 0;
        if (!dup)
            cJSON_AddItemToArray(ids, cJSON_CreateString(add[i]));
    }
    return ids;
}

static int query_param(const char *query, const char *name, char *out, size_t n);

/* A query parameter's value (see query_param), or NULL when absent or unreadable. */
static const char *query_value(const struct ax_req *req, const char *key, char *buf, size_t n)
{
    return query_param(req->query, key, buf, n) == 1 ? buf : NULL;
}

static int index_of(const cJSON *ids, const char *id)
{
    const cJSON *e;
    int i = 0;

    cJSON_ArrayForEach(e, ids)
    {
        if (strcmp(e->valuestring, id) == 0)
            return i;
        i++;
    }
    return -1;
}

/* GET /v1/models: the Anthropic page (data, has_more, first_id, last_id; limit, after_id,
 * before_id) whose entries are also OpenAI's (object "list" at the top). Without
 * anthropic-version or a limit, every model in one page, as OpenAI clients expect. */
static void route_models(struct ax_server *srv, struct ax_req *req)
{
    cJSON *ids = model_ids(srv), *root = cJSON_CreateObject(), *data, *e;
    char lim[32], after[256], before[256];
    const char *ls = query_value(req, "limit", lim, sizeof(lim));
    const char *a = query_value(req, "after_id", after, sizeof(after));
    const char *b = query_value(req, "before_id", before, sizeof(before));
    int n = cJSON_GetArraySize(ids), from = 0, to, limit = n, i = 0;
    char *endp = NULL;

    if (ls != NULL) {
        long v = strtol(ls, &endp, 10);
        if (*ls == '\0' || *endp != '\0' || v < 1 || v > 1000) {
            send_errorf(req, 400, "invalid_request_error", "limit: expected an integer 1..1000");
            goto done;
        }
        limit = (int)v;
    } else if (ax_req_header(req, "anthropic-version") != NULL) {
        limit = 20; /* Anthropic's default page */
    }
    if ((a && index_of(ids, a) < 0) || (b && index_of(ids, b) < 0)) {
        send_errorf(req, 400, "invalid_request_error",
                    a && index_of(ids, a) < 0 ? "after_id: no such model"
                                              : "before_id: no such model");
        goto done;
    }
    to = n;
    if (a)
        from = index_of(ids, a) + 1;
    if (b) {
        to = index_of(ids, b);
        if (!a && to - from > limit)
            from = to - limit;
    }
    if (to - from > limit)
        to = from + limit;
    cJSON_AddStringToObject(root, "object", "list");
    data = cJSON_AddArrayToObject(root, "data");
    cJSON_ArrayForEach(e, ids)
    {
        if (i >= from && i < to)
            cJSON_AddItemToArray(data, ax_models_info(&srv->cfg, srv->up, e->valuestring));
        i++;
    }
    cJSON_AddBoolToObject(root, "has_more", b ? from > 0 : to < n);
    if (to > from) {
        cJSON_AddStringToObject(root, "first_id", cJSON_GetArrayItem(ids, from)->valuestring);
        cJSON_AddStringToObject(root, "last_id", cJSON_GetArrayItem(ids, to - 1)->valuestring);
    } else {
        cJSON_AddNullToObject(root, "first_id");
        cJSON_AddNullToObject(root, "last_id");
    }
    ax_http_send_json(req, 200, root);
done:
    cJSON_Delete(root);
    cJSON_Delete(ids);
}

/* GET /v1/models/{id} (the id %-decoded; llama-server's ids are file paths, slashes and
 * all): a model the listing has, or any name the model map sends somewhere
 * (a client may ask for any Claude name: the proxy serves it); else 404. */
static void route_model_one(struct ax_server *srv, struct ax_req *req, const char *id)
{
    cJSON *ids = model_ids(srv), *m;
    char buf[300];

    if (*id == '\0' || (index_of(ids, id) < 0 && ax_config_map_model(&srv->cfg, id) == NULL &&
                        strncmp(id, "claude-", 7) != 0)) {
        snprintf(buf, sizeof(buf), "model: %.200s not found", id);
        send_errorf(req, 404, "not_found_error", buf);
    } else if ((m = ax_models_info(&srv->cfg, srv->up, id)) == NULL) {
        send_errorf(req, 500, "api_error", "out of memory");
    } else {
        ax_http_send_json(req, 200, m);
        cJSON_Delete(m);
    }
    cJSON_Delete(ids);
}

/* For /health's warning: the configured listen address is loopback. */
static int health_host_is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 ||
           strcasecmp(host, "localhost") == 0;
}

/* GET /health: 200 while the upstream is up, 503 otherwise (a load balancer or `curl -f` reads
 * the status, not the body). With inbound keys set, a request without a valid key gets
 * liveness only ({"status","proxy"}): the details (configuration, upstream URL, policy
 * errors, heap figures) are for those holding a key. */
static void route_health(struct ax_server *srv, struct ax_req *req)
{
    const struct ax_upstream_info *info = ax_upstream_info(srv->up);
    struct ax_upstream_stats st;
    cJSON *root = cJSON_CreateObject(), *up, *cw, *warn;
    const char *src;
    char url[1024];
    int64_t win = ax_models_window(&srv->cfg, srv->up, &src);
    int status = info->state == AX_UP_OK ? 200 : 503, healthy = 0;
    cJSON *fleet = ax_fleet_health(srv->fleet, uv_now(srv->loop), &healthy);

    /* a fleet serves while any member does; its "upstreams" list says which */
    if (ax_fleet_count(srv->fleet) > 1)
        status = healthy > 0 ? 200 : 503;

    cJSON_AddStringToObject(root, "status", status == 200 ? "ok" : "degraded");
    cJSON_AddStringToObject(root, "proxy", "ok");
    if (!authorized(srv, req)) {
        ax_http_send_json(req, status, root);
        cJSON_Delete(root);
        cJSON_Delete(fleet);
        return;
    }
    ax_upstream_stats(srv->up, &st);
    cJSON_AddStringToObject(root, "version", ANTHROXY_VERSION);
    up = cJSON_AddObjectToObject(root, "upstream");
    cJSON_AddStringToObject(up, "state", ax_upstream_state_name(info->state));
    cJSON_AddStringToObject(up, "url", ax_redact_url(srv->cfg.upstream_base, url, sizeof(url)));
    cJSON_AddStringToObject(up, "model", ax_models_upstream_name(&srv->cfg, srv->up, NULL));
    cJSON_AddBoolToObject(up, "llama_server", info->llama_server);
    cJSON_AddNumberToObject(up, "n_ctx", (double)info->n_ctx);
    cJSON_AddNumberToObject(up, "running", st.running);
    cJSON_AddNumberToObject(up, "queued", st.queued);
    cJSON_AddItemToObject(root, "upstreams", cJSON_DetachItemFromObject(fleet, "upstreams"));
    cJSON_AddItemToObject(root, "routing", fleet);
    cw = cJSON_AddObjectToObject(root, "context_window");
    cJSON_AddNumberToObject(cw, "value", (double)win);
    cJSON_AddStringToObject(cw, "source", src);
    warn = cJSON_AddArrayToObject(root, "warnings");
    if (win < 28192)
        cJSON_AddItemToArray(
            warn, cJSON_CreateString("context window below Claude Code's fixed prefix "
                                     "(~20k tokens of tools and system prompt) plus headroom"));
    if (srv->cfg.n_api_keys == 0 && !health_host_is_loopback(srv->cfg.host))
        cJSON_AddItemToArray(warn, cJSON_CreateString("listening beyond loopback without a key"));
    cJSON_AddNumberToObject(root, "requests", (double)srv->n_requests);
    cJSON_AddNumberToObject(root, "errors", (double)srv->http.n_errors);
    cJSON_AddNumberToObject(root, "connections", srv->http.n_conns);
    cJSON_AddNumberToObject(root, "connections_max", srv->http.limits.max_connections);
    cJSON_AddNumberToObject(root, "connections_refused", (double)srv->http.n_refused);
    cJSON_AddNumberToObject(root, "sessions", (double)ax_monitor_count(srv->mon));
    cJSON_AddNumberToObject(root, "workers", srv->cfg.workers);
    cJSON_AddNumberToObject(root, "worker", srv->worker);
    if (srv->state) /* --state: the Redis connection */
        cJSON_AddItemToObject(root, "state", ax_state_redis_health(srv->state));
    if (srv->share)
        cJSON_AddNumberToObject(root, "shared_sessions",
                                (double)ax_session_share_count(srv->share));
#ifdef __GLIBC__
    {
        /* the allocator's view: what is in use, apart from what it keeps for reuse */
        struct mallinfo2 mi = mallinfo2();
        cJSON_AddNumberToObject(root, "heap_in_use_bytes", (double)mi.uordblks);
        cJSON_AddNumberToObject(root, "heap_free_bytes", (double)mi.fordblks);
    }
#endif
    cJSON_AddNumberToObject(root, "uptime_s",
                            (double)(uv_now(srv->loop) - srv->started_ms) / 1000.0);
    if (srv->policies)
        cJSON_AddItemToObject(root, "policies", ax_policy_engine_status(srv->policies));
    cJSON_AddItemToObject(root, "config", ax_config_to_json(&srv->cfg));
    ax_http_send_json(req, status, root);
    cJSON_Delete(root);
}

/* The %-decoded value of parameter name in a query string, into out (curl decodes). Returns
 * 1 when present, 0 when absent, -1 when present but too long or holding a NUL. */
static int query_param(const char *query, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = query;

    while (p && *p) {
        if (strncmp(p, name, nl) == 0 && p[nl] == '=') {
            const char *v = p + nl + 1;
            size_t len = strcspn(v, "&");
            int outlen = 0;
            char *dec = curl_easy_unescape(NULL, v, (int)len, &outlen);
            int ok = dec != NULL && outlen >= 0 && (size_t)outlen < n &&
                     memchr(dec, '\0', (size_t)outlen) == NULL;
            if (ok) {
                memcpy(out, dec, (size_t)outlen);
                out[outlen] = '\0';
            }
            curl_free(dec);
            return ok ? 1 : -1;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return 0;
}

/* One session: this process's copy, or remote's (--state: Redis's) when that has seen more
 * turns (another instance served the latest). */
static void context_send_session(struct ax_server *srv, struct ax_req *req, const char *key,
                                 const struct ax_session *remote)
{
    int64_t win = ax_models_window(&srv->cfg, srv->up, NULL);
    struct ax_session *s = ax_monitor_find(srv->mon, key), *held = NULL;
    cJSON *root;

    if (srv->share && strlen(key) < sizeof(((struct ax_session *)0)->key)) {
        /* --workers: the session may have been served by another worker only */
        struct ax_session probe;
        memset(&probe, 0, sizeof(probe));
        memcpy(probe.key, key, strlen(key) + 1);
        if (ax_session_share_pull(srv->share, &probe) &&
            (s = held = ax_monitor_get(srv->mon, key, uv_now(srv->loop))) != NULL)
            ax_session_share_pull(srv->share, s);
    }
    if (remote != NULL && (s == NULL || remote->total_requests > s->total_requests)) {
        struct ax_session shown = *remote; /* with this loop's clock, when it knows the session */
        if (s != NULL) {
            shown.created_ms = s->created_ms;
            shown.last_seen_ms = s->last_seen_ms;
        }
        root = ax_session_to_json(&shown, win, srv->cfg.prune_threshold);
    } else if (s != NULL)
        root = ax_session_to_json(s, win, srv->cfg.prune_threshold);
    else
        root = NULL;
    if (held)
        ax_session_unref(held);
    if (root == NULL) {
        send_errorf(req, 404, "not_found_error", "no such session");
        return;
    }
    ax_http_send_json(req, 200, root);
    cJSON_Delete(root);
}

/* --state: the session as Redis has it, fetched with the requests' bounded wait. */
struct context_fetch {
    struct ax_server *srv;
    struct ax_req *req;
    struct ax_session remote;
};

static void context_on_pulled(void *ud, int found)
{
    struct context_fetch *f = ud;
    struct ax_req *req = f->req;

    if (!req->canceled)
        context_send_session(f->srv, req, f->remote.key, found ? &f->remote : NULL);
    free(f);
    ax_req_unref(req);
}

static void route_context(struct ax_server *srv, struct ax_req *req)
{
    char key[256];
    int64_t win = ax_models_window(&srv->cfg, srv->up, NULL);
    cJSON *root;
    int q = query_param(req->query, "session", key, sizeof(key));
    struct context_fetch *f;

    if (q < 0) {
        send_errorf(req, 400, "invalid_request_error", "session: not a valid session key");
        return;
    }
    if (q == 0) {
        root = ax_monitor_to_json(srv->mon, win, srv->cfg.prune_threshold);
        ax_http_send_json(req, 200, root);
        cJSON_Delete(root);
        return;
    }
    if (srv->state && strlen(key) < sizeof(f->remote.key) && (f = calloc(1, sizeof(*f))) != NULL) {
        f->srv = srv;
        f->req = req;
        memcpy(f->remote.key, key, strlen(key) + 1);
        ax_req_ref(req); /* dropped in context_on_pulled */
        if (ax_state_redis_pull(srv->state, &f->remote, context_on_pulled, f) == 0)
            return;
        ax_req_unref(req);
        free(f); /* not connected: this process's copy */
    }
    context_send_session(srv, req, key, NULL);
}

/* GET /v1/experiments: the experiment in force and each arm's figures (experiment.c). */
static void route_experiments(struct ax_server *srv, struct ax_req *req)
{
    cJSON *root = ax_exp_stats_to_json(srv->exp_stats, ax_policy_engine_experiment(srv->policies));

    if (root == NULL) {
        send_errorf(req, 500, "api_error", "out of memory");
        return;
    }
    cJSON_AddNumberToObject(root, "generation", (double)ax_policy_engine_generation(srv->policies));
    ax_http_send_json(req, 200, root);
    cJSON_Delete(root);
}

/* ---- seeing it run: /metrics, the status page and its data ------------------------------ */

extern const char ax_status_html[]; /* status.html, embedded at build time (CMakeLists.txt) */
extern const size_t ax_status_html_len;

/* The metric's route label for a path (the whole set is fixed: paths do not make series). */
static const char *route_label(const char *path)
{
    static const char *const known[][2] = {
        {"/v1/messages", "messages"}, {"/v1/messages/count_tokens", "count_tokens"},
        {"/v1/models", "models"},     {"/health", "health"},
        {"/v1/health", "health"},     {"/v1/context", "context"},
        {"/metrics", "metrics"},      {"/", "status"},
        {"/v1/status", "status"},
    };
    size_t i;

    for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(path, known[i][0]) == 0)
            return known[i][1];
    return "other";
}

static void count_route(struct ax_server *srv, const char *path, int status)
{
    struct ax_metric_labels l = {0};

    l.route = route_label(path);
    l.status = status;
    l.model = "-"; /* not a model request */
    ax_metrics_add(srv->metrics, AX_M_REQUESTS, &l, 1);
}

static int count_streams(const struct ax_server *srv)
{
    const struct ax_list *n;
    int k = 0;

    AX_LIST_FOREACH(n, &srv->reqs.live)
    {
        const struct ax_req *r = AX_LIST_ENTRY(n, struct ax_req, _link);
        k += r->chunked && !r->finished && !r->canceled;
    }
    return k;
}

/* The gauges of state other modules own, and the counters they keep themselves. */
static void metrics_collect(struct ax_server *srv)
{
    static const int states[] = {AX_UP_UNKNOWN, AX_UP_OK, AX_UP_LOADING, AX_UP_DOWN};
    struct ax_metrics *mx = srv->metrics;
    struct ax_metric_labels l = {0};
    struct ax_upstream_stats st;
    uint64_t connect_retries = 0;
    cJSON *ps;
    size_t i, u;

    ax_metrics_set(mx, AX_M_CONNECTIONS, NULL, srv->http.n_conns);
    ax_metrics_set(mx, AX_M_STREAMS, NULL, count_streams(srv));
    ax_metrics_set(mx, AX_M_SESSIONS, NULL, (double)ax_monitor_count(srv->mon));
#ifdef __GLIBC__
    ax_metrics_set(mx, AX_M_HEAP, NULL, (double)mallinfo2().uordblks);
#endif
    for (u = 0; u < ax_fleet_count(srv->fleet); u++) { /* each upstream of the fleet */
        struct ax_upstream *up = ax_fleet_upstream(srv->fleet, u);
        const struct ax_upstream_info *info = ax_upstream_info(up);
        l.upstream = ax_fleet_name(srv->fleet, u);
        ax_upstream_stats(up, &st);
        connect_retries += st.connect_retries;
        for (i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
            l.state = ax_upstream_state_name(states[i]);
            ax_metrics_set(mx, AX_M_UPSTREAM_UP, &l, info->state == states[i]);
        }
        l.state = NULL;
        ax_metrics_set(mx, AX_M_UPSTREAM_RUNNING, &l, st.running);
        ax_metrics_set(mx, AX_M_UPSTREAM_QUEUED, &l, st.queued);
        ax_metrics_add(mx, AX_M_FAILOVERS, &l, 0); /* the series exists before the first */
    }
    l.upstream = NULL;
    st.connect_retries = connect_retries;
    l.kind = "connect";
    ax_metrics_set(mx, AX_M_RETRIES, &l, (double)st.connect_retries);
    l.kind = "policy";
    ax_metrics_add(mx, AX_M_RETRIES, &l, 0);
    if (srv->policies && (ps = ax_policy_engine_status(srv->policies)) != NULL) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(ps, "errors");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(ps, "budget_kills");
        ax_metrics_set(mx, AX_M_POLICY_ERRORS, NULL, cJSON_IsNumber(e) ? e->valuedouble : 0);
        ax_metrics_set(mx, AX_M_BUDGET_HITS, NULL, cJSON_IsNumber(b) ? b->valuedouble : 0);
        cJSON_Delete(ps);
        ax_metrics_set(mx, AX_M_POLICY_GENERATION, NULL,
                       (double)ax_policy_engine_generation(srv->policies));
    }
}

static void route_metrics(struct ax_server *srv, struct ax_req *req)
{
    struct ax_buf out;

    metrics_collect(srv);
    ax_buf_init(&out, 64u << 20);
    if (ax_metrics_render(srv->metrics, &out) < 0) {
        ax_buf_free(&out);
        send_errorf(req, 500, "api_error", "out of memory rendering the metrics");
        return;
    }
    ax_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL,
                    out.data ? out.data : "", out.len);
    ax_buf_free(&out);
}

static cJSON *status_upstreams(struct ax_server *srv)
{
    cJSON *h = ax_fleet_health(srv->fleet, uv_now(srv->loop), NULL);
    cJSON *arr = h ? cJSON_DetachItemFromObjectCaseSensitive(h, "upstreams") : NULL;

    cJSON_Delete(h);
    return arr ? arr : cJSON_CreateArray();
}

static cJSON *status_errors(const struct ax_server *srv)
{
    cJSON *arr = cJSON_CreateArray();
    const struct ax_metrics_error *e;
    int i;

    for (i = 0; (e = ax_metrics_error_at(srv->metrics, i)) != NULL; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(arr, o);
        cJSON_AddNumberToObject(o, "at_ms", (double)e->at_ms);
        cJSON_AddNumberToObject(o, "status", e->status);
        cJSON_AddStringToObject(o, "request_id", e->request_id);
        cJSON_AddStringToObject(o, "type", e->type);
        cJSON_AddStringToObject(o, "message", e->message);
    }
    return arr;
}

/* GET /v1/status: what the status page shows, in one answer. */
static void route_status(struct ax_server *srv, struct ax_req *req)
{
    int64_t win = ax_models_window(&srv->cfg, srv->up, NULL);
    cJSON *root = cJSON_CreateObject(), *exp, *stats;
    const struct ax_experiment *xp;

    cJSON_AddStringToObject(root, "version", ANTHROXY_VERSION);
    cJSON_AddNumberToObject(root, "uptime_s",
                            (double)(uv_now(srv->loop) - srv->started_ms) / 1000.0);
    cJSON_AddNumberToObject(root, "requests", (double)srv->n_requests);
    cJSON_AddNumberToObject(root, "connections", srv->http.n_conns);
    cJSON_AddNumberToObject(root, "streams", count_streams(srv));
    cJSON_AddItemToObject(root, "upstreams", status_upstreams(srv));
    cJSON_AddItemToObject(root, "sessions",
                          ax_monitor_to_json(srv->mon, win, srv->cfg.prune_threshold));
    if (srv->policies)
        cJSON_AddItemToObject(root, "policies", ax_policy_engine_status(srv->policies));
    exp =
        cJSON_AddObjectToObject(root, "experiment"); /* no experiment: no arms, the page says so */
    if (exp && (xp = ax_policy_engine_experiment(srv->policies)) != NULL &&
        (stats = ax_exp_stats_to_json(srv->exp_stats, xp)) != NULL) {
        cJSON_AddStringToObject(exp, "name", xp->name);
        cJSON_AddItemToObject(exp, "arms", cJSON_DetachItemFromObjectCaseSensitive(stats, "arms"));
        cJSON_Delete(stats);
    } else if (exp) {
        cJSON_AddNullToObject(exp, "name");
        cJSON_AddArrayToObject(exp, "arms");
    }
    cJSON_AddItemToObject(root, "errors", status_errors(srv));
    ax_http_send_json(req, 200, root);
    cJSON_Delete(root);
}

/* GET / from a browser (Accept: text/html): the status page, a shell with no data (it fetches
 * /v1/status with the key the browser holds), so it is served without a key. HEAD / and
 * every other GET / (Claude Code's probe, curl, scripts) get the same "anthroxy" as before. */
static void route_root(struct ax_req *req)
{
    const char *accept = ax_req_header(req, "accept");

    if (req->method == HTTP_HEAD || accept == NULL || strstr(accept, "text/html") == NULL)
        ax_http_respond(req, 200, "text/plain; charset=utf-8", NULL, "anthroxy\n", 9);
    else
        ax_http_respond(req, 200, "text/html; charset=utf-8",
                        "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                        "Content-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; "
                        "style-src 'unsafe-inline'\r\n",
                        ax_status_html, ax_status_html_len);
}

/* Strips the optional "/anthropic" prefix and a trailing slash. */
static const char *normalise_path(const char *path, char *buf, size_t n)
{
    size_t len;

    if (strncmp(path, "/anthropic/", 11) == 0)
        path += 10;
    len = strlen(path);
    if (len > 1 && len < n && path[len - 1] == '/') {
        memcpy(buf, path, len - 1);
        buf[len - 1] = '\0';
        return buf;
    }
    return path;
}

int ax_routes_check_key(struct ax_server *srv, const struct ax_req *req, struct ax_error *err)
{
    char buf[512];
    const char *path = normalise_path(req->path ? req->path : "/", buf, sizeof(buf));

    /* liveness stays open (its details are checked again in route_health) */
    if (strcmp(path, "/") == 0 || strcmp(path, "/health") == 0 || strcmp(path, "/v1/health") == 0)
        return 0;
    if (authorized(srv, req))
        return 0;
    srv->n_requests++;
    count_route(srv, path, 401);
    return ax_error_set(err, 401, "authentication_error", "invalid x-api-key");
}

static void dispatch(struct ax_server *srv, struct ax_req *req, const char *path)
{
    char buf[512];
    int get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    int post = req->method == HTTP_POST;

    if (strcmp(path, "/") == 0 && get) {
        route_root(req);
        return;
    }
    if (strcmp(path, "/health") == 0 || strcmp(path, "/v1/health") == 0) {
        if (!get) {
            send_errorf(req, 405, "invalid_request_error", "method not allowed");
            return;
        }
        route_health(srv, req);
        return;
    }
    if (!authorized(srv, req)) {
        send_errorf(req, 401, "authentication_error", "invalid x-api-key");
        return;
    }
    if (strcmp(path, "/v1/messages") == 0) {
        if (!post)
            send_errorf(req, 405, "invalid_request_error", "method not allowed: use POST");
        else
            ax_messages_handle(srv, req, 0);
    } else if (strcmp(path, "/v1/messages/count_tokens") == 0) {
        if (!post)
            send_errorf(req, 405, "invalid_request_error", "method not allowed: use POST");
        else
            ax_messages_handle(srv, req, 1);
    } else if (strcmp(path, "/v1/models") == 0) {
        if (!get)
            send_errorf(req, 405, "invalid_request_error", "method not allowed: use GET");
        else
            route_models(srv, req);
    } else if (strncmp(path, "/v1/models/", 11) == 0) {
        char id[256];
        int outlen = 0;
        char *u = curl_easy_unescape(NULL, path + 11, 0, &outlen);
        snprintf(id, sizeof(id), "%s", u ? u : "");
        curl_free(u);
        if (!get)
            send_errorf(req, 405, "invalid_request_error", "method not allowed: use GET");
        else
            route_model_one(srv, req, id);
    } else if (strcmp(path, "/v1/context") == 0) {
        if (!get)
            send_errorf(req, 405, "invalid_request_error", "method not allowed: use GET");
        else
            route_context(srv, req);
    } else if (strcmp(path, "/v1/experiments") == 0) {
        if (!get)
            send_errorf(req, 405, "invalid_request_error", "method not allowed: use GET");
        else
            route_experiments(srv, req);
    } else if (strcmp(path, "/metrics") == 0 || strcmp(path, "/v1/status") == 0) {
        if (!get)
            send_errorf(req, 405, "invalid_request_error", "method not allowed: use GET");
        else if (path[1] == 'm')
            route_metrics(srv, req);
        else
            route_status(srv, req);
    } else {
        snprintf(buf, sizeof(buf), "not found: %.200s", req->path ? req->path : "/");
        send_errorf(req, 404, "not_found_error", buf);
    }
}

void ax_routes_dispatch(struct ax_server *srv, struct ax_req *req)
{
    char buf[512];
    const char *path = normalise_path(req->path ? req->path : "/", buf, sizeof(buf));

    srv->n_requests++;
    ax_req_ref(req); /* to read the status once answered */
    dispatch(srv, req, path);
    if (req->handler == NULL && req->status != 0) /* messages.c counts its own */
        count_route(srv, path, req->status);
    ax_req_unref(req);
}
