/* routes.c - dispatch by method and path (server.c hands it each request http.c parsed),
 * inbound keys, and the small endpoints: HEAD /, GET /health, GET /v1/models,
 * GET /v1/context. POST /v1/messages and /v1/messages/count_tokens go to messages.c. */
#include "anthroxy_http.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_models.h"
#include "anthroxy_messages.h"
#include "anthroxy_monitor.h"
#include "anthroxy_policy.h"
#include "anthroxy_routes.h"
#include "anthroxy_server.h"
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

static cJSON *model_entry(const char *id, const char *display)
{
    cJSON *m = cJSON_CreateObject();

    cJSON_AddStringToObject(m, "type", "model");
    cJSON_AddStringToObject(m, "id", id);
    cJSON_AddStringToObject(m, "display_name", display ? display : id);
    cJSON_AddStringToObject(m, "created_at", "2025-01-01T00:00:00Z");
    return m;
}

static void route_models(struct ax_server *srv, struct ax_req *req)
{
    const struct ax_upstream_info *info = ax_upstream_info(srv->up);
    cJSON *root = cJSON_CreateObject(), *data = cJSON_AddArrayToObject(root, "data"), *m;
    size_t i;

    if (info->models) {
        cJSON_ArrayForEach(m, info->models)
        {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
            if (cJSON_IsString(id))
                cJSON_AddItemToArray(data, model_entry(id->valuestring, NULL));
        }
    } else if (srv->cfg.upstream_model) {
        cJSON_AddItemToArray(data, model_entry(srv->cfg.upstream_model, NULL));
    }
    for (i = 0; i < sizeof(claude_models) / sizeof(claude_models[0]); i++)
        cJSON_AddItemToArray(data, model_entry(claude_models[i], NULL));
    for (i = 0; i < srv->cfg.n_model_map; i++)
        if (!strchr(srv->cfg.model_map[i].from, '*'))
            cJSON_AddItemToArray(data, model_entry(srv->cfg.model_map[i].from, NULL));
    cJSON_AddBoolToObject(root, "has_more", 0);
    m = cJSON_GetArrayItem(data, 0);
    cJSON_AddStringToObject(root, "first_id",
                            cJSON_GetObjectItemCaseSensitive(m, "id")->valuestring);
    m = cJSON_GetArrayItem(data, cJSON_GetArraySize(data) - 1);
    cJSON_AddStringToObject(root, "last_id",
                            cJSON_GetObjectItemCaseSensitive(m, "id")->valuestring);
    ax_http_send_json(req, 200, root);
    cJSON_Delete(root);
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
    int status = info->state == AX_UP_OK ? 200 : 503;

    cJSON_AddStringToObject(root, "status", status == 200 ? "ok" : "degraded");
    cJSON_AddStringToObject(root, "proxy", "ok");
    if (!authorized(srv, req)) {
        ax_http_send_json(req, status, root);
        cJSON_Delete(root);
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

static void route_context(struct ax_server *srv, struct ax_req *req)
{
    char key[256];
    int64_t win = ax_models_window(&srv->cfg, srv->up, NULL);
    cJSON *root;
    int q = query_param(req->query, "session", key, sizeof(key));

    if (q < 0) {
        send_errorf(req, 400, "invalid_request_error", "session: not a valid session key");
        return;
    }
    if (q > 0) {
        struct ax_session *s = ax_monitor_find(srv->mon, key);
        if (s == NULL) {
            send_errorf(req, 404, "not_found_error", "no such session");
            return;
        }
        root = ax_session_to_json(s, win, srv->cfg.prune_threshold);
    } else {
        root = ax_monitor_to_json(srv->mon, win, srv->cfg.prune_threshold);
    }
    ax_http_send_json(req, 200, root);
    cJSON_Delete(root);
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
    return ax_error_set(err, 401, "authentication_error", "invalid x-api-key");
}

void ax_routes_dispatch(struct ax_server *srv, struct ax_req *req)
{
    char buf[512];
    const char *path = normalise_path(req->path ? req->path : "/", buf, sizeof(buf));
    int get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    int post = req->method == HTTP_POST;

    srv->n_requests++;
    if (strcmp(path, "/") == 0 && get) {
        ax_http_respond(req, 200, "text/plain; charset=utf-8", NULL, "anthroxy\n", 9);
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
    } else if (strcmp(path, "/v1/context") == 0) {
        if (!get)
            send_errorf(req, 405, "invalid_request_error", "method not allowed: use GET");
        else
            route_context(srv, req);
    } else {
        snprintf(buf, sizeof(buf), "not found: %.200s", req->path ? req->path : "/");
        send_errorf(req, 404, "not_found_error", buf);
    }
}
