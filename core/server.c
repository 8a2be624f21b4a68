/* server.c - the embedding API: a server on the caller's loop, its listener, the wiring of
 * http.c's connections to the router (routes.c) and of upstream, monitor and policy engine,
 * and the graceful stop, which cancels what is left through request.c's registry. */
#include "anthroxy.h"
#include "anthroxy_experiment.h"
#include "anthroxy_fleet.h"
#include "anthroxy_http.h"
#include "anthroxy_log.h"
#include "anthroxy_metrics.h"
#include "anthroxy_models.h"
#include "anthroxy_monitor.h"
#include "anthroxy_policy.h"
#include "anthroxy_record.h"
#include "anthroxy_routes.h"
#include "anthroxy_server.h"
#include "anthroxy_session_share.h"
#include "anthroxy_state_redis.h"
#include "anthroxy_upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <string.h>
#include <sys/resource.h>

#ifndef SO_REUSEPORT /* Linux's, hidden by _POSIX_C_SOURCE */
#define SO_REUSEPORT 15
#endif
#ifndef SOCK_CLOEXEC
#define SOCK_CLOEXEC 02000000
#endif

#define AX_SESSION_SWEEP_MS 60000
#define AX_SHUTDOWN_FLUSH_MS 1000 /* after the grace period, for the last error events */
#define AX_PROBE_INTERVAL_MS 2000
/* Claude Code's fixed prefix (24 tools and its system prompt) is about 20k tokens. */
#define AX_CLAUDE_CODE_PREFIX_TOKENS 20000
#define AX_CLAUDE_CODE_HEADROOM 8192
/* Descriptors kept back from client connections, besides one per upstream slot: curl's
 * spare connections and probes, the loop's own, policy files, the log, and the lingering
 * closes of refused connections (AX_HTTP_LINGERING_MAX). */
#define AX_FD_RESERVE (32 + AX_HTTP_LINGERING_MAX)

static int64_t engine_context_window(void *ud)
{
    const struct ax_server *srv = ud;

    return ax_models_window(&srv->cfg, srv->up, NULL);
}

static const char *engine_upstream_model(void *ud)
{
    const struct ax_server *srv = ud;

    return ax_models_upstream_name(&srv->cfg, srv->up, NULL);
}

/* Logs what a member's probe learned, and warns when the window is too small. */
static void on_upstream_info(void *ud, size_t i)
{
    struct ax_server *srv = ud;
    struct ax_upstream *up = ax_fleet_upstream(srv->fleet, i);
    const struct ax_upstream_info *info = ax_upstream_info(up);
    const char *src;
    int64_t win = ax_models_window(&srv->cfg, up, &src);

    AX_LOG_INFO(NULL, "upstream %s (%s): state %s, model '%s', context window %lld (%s)%s",
                ax_fleet_name(srv->fleet, i), ax_upstream_root(up),
                ax_upstream_state_name(info->state), info->model_id, (long long)win, src,
                info->llama_server ? ", llama-server" : "");
    if (win < AX_CLAUDE_CODE_PREFIX_TOKENS + AX_CLAUDE_CODE_HEADROOM)
        AX_LOG_WARN(NULL,
                    "context window %lld is below Claude Code's fixed prefix (~%d tokens of "
                    "tools and system prompt) plus headroom: raise the server's context (-c) "
                    "or lower its slot count (-np)",
                    (long long)win, AX_CLAUDE_CODE_PREFIX_TOKENS);
}

static void finish_stop(struct ax_server *srv);

static void server_on_request(struct ax_req *req, void *ud)
{
    ax_routes_dispatch(ud, req);
}

static int server_on_headers(const struct ax_req *req, void *ud, struct ax_error *err)
{
    return ax_routes_check_key(ud, req, err);
}

/* max_connections, lowered to leave AX_FD_RESERVE descriptors and one per upstream slot
 * below the process's limit: at the cap a new connection can still be accepted and told
 * 503, where at the descriptor limit it could only be dropped (libuv's EMFILE fallback). */
static int connection_cap(const struct ax_config *cfg)
{
    struct rlimit rl;
    long room;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return cfg->max_connections;
    room = (long)rl.rlim_cur - AX_FD_RESERVE - cfg->max_upstream;
    if (room >= cfg->max_connections)
        return cfg->max_connections;
    if (room < 1)
        room = 1;
    AX_LOG_WARN(NULL,
                "max-connections %d lowered to %ld to fit the descriptor limit (ulimit -n %llu, "
                "%d kept for upstream slots and the server): raise ulimit -n for more",
                cfg->max_connections, room, (unsigned long long)rl.rlim_cur,
                AX_FD_RESERVE + cfg->max_upstream);
    return (int)room;
}

/* A connection is gone: a stopping server finishes once the last one is. */
static void server_on_conn_closed(void *ud)
{
    struct ax_server *srv = ud;

    if (srv->stopping == 1 && srv->http.n_conns == 0 && srv->listener.data == NULL)
        finish_stop(srv);
}

static void on_sweep(uv_timer_t *t)
{
    struct ax_server *srv = t->data;

    if (srv->stopping)
        return;
    ax_monitor_expire(srv->mon, uv_now(srv->loop));
#ifdef __GLIBC__
    /* A burst of large requests leaves freed memory inside glibc's heap; hand it back. */
    malloc_trim(0);
#endif
}

int ax_server_new(uv_loop_t *loop, const struct ax_config *cfg, struct ax_server **out,
                  struct ax_error *err)
{
    struct ax_server *srv = calloc(1, sizeof(*srv));
    struct ax_http_limits lim;
    struct ax_http_callbacks hcb = {server_on_request, server_on_conn_closed, NULL, NULL};
    struct ax_error verr = {0};
    int rc;

    if (srv == NULL)
        return ax_error_set_code(err, AX_ENOMEM, 500, "api_error", "out of memory");
    srv->loop = loop;
    if (ax_config_validate(cfg, &verr) < 0) {
        AX_LOG_ERROR(NULL, "invalid configuration: %s", verr.message);
        free(srv);
        return ax_error_set(err, 400, "invalid_request_error", "invalid configuration: %s",
                            verr.message);
    }
    if ((rc = ax_config_copy(&srv->cfg, cfg)) < 0) {
        ax_error_set_code(err, rc, 500, "api_error", "configuration: %s", ax_strerror(rc));
        goto fail;
    }
    ax_req_registry_init(&srv->reqs);
    lim.max_body_bytes = srv->cfg.max_body_bytes;
    lim.max_header_bytes = srv->cfg.max_header_bytes;
    lim.write_low_water = srv->cfg.write_low_water;
    lim.keepalive_timeout_ms = srv->cfg.keepalive_timeout_ms;
    lim.client_stall_timeout_ms = srv->cfg.client_stall_timeout_ms;
    lim.max_inflight_body_bytes = srv->cfg.max_inflight_body_bytes;
    lim.max_connections = connection_cap(&srv->cfg);
    lim.max_connections_per_client = srv->cfg.max_connections_per_client;
    hcb.ud = srv;
    hcb.on_headers = server_on_headers;
    ax_http_server_init(&srv->http, loop, &lim, &hcb, &srv->reqs);
    if ((rc = ax_fleet_new(loop, &srv->cfg, &srv->fleet, err)) < 0)
        goto fail;
    srv->up = ax_fleet_upstream(srv->fleet, 0);
    if ((srv->mon = ax_monitor_new(srv->cfg.max_sessions, srv->cfg.session_ttl_ms)) == NULL ||
        ax_exp_stats_new(&srv->exp_stats) < 0 || (srv->metrics = ax_metrics_new()) == NULL) {
        rc = ax_error_set_code(err, AX_ENOMEM, 500, "api_error", "out of memory");
        goto fail;
    }
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    uv_timer_init(loop, &srv->timer);
    srv->timer.data = srv;
    ax_trim_init(&srv->trim, loop);
    srv->pending_closes = 0;
    *out = srv;
    return 0;
fail:
    if (srv->mon)
        ax_monitor_free(srv->mon);
    ax_exp_stats_free(srv->exp_stats);
    if (srv->fleet)
        ax_fleet_close(srv->fleet, NULL, NULL);
    ax_metrics_free(srv->metrics);
    ax_config_free(&srv->cfg);
    free(srv);
    return rc;
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct ax_server *srv = listener->data;

    if (status < 0) {
        /* EMFILE past the reserve: libuv has accepted and dropped the waiting ones */
        AX_LOG_WARN(NULL, "accept failed: %s (%d connections open)", uv_strerror(status),
                    srv->http.n_conns);
        return;
    }
    if (srv->stopping)
        return;
    if (ax_http_accept(&srv->http, listener) < 0)
        AX_LOG_WARN(NULL, "could not accept a connection");
}

/* The address to listen on: host as a numeric address, or a name resolved at start-up
 * ("localhost"), blocking being fine before the loop runs. Of several results, the first that
 * can be bound wins (::1 may be unusable where IPv6 is off). Returns 0 or fills err. */
static int listen_address(struct ax_server *srv, struct sockaddr_storage *ss, struct ax_error *err)
{
    struct addrinfo hints, *ai;
    uv_getaddrinfo_t req;
    char port[16];
    int rc, fd, last = UV_EADDRNOTAVAIL;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%d", srv->cfg.port);
    if ((rc = uv_getaddrinfo(srv->loop, &req, NULL, srv->cfg.host, port, &hints)) < 0)
        return ax_error_set_code(err, ax_error_from_uv(rc), 500, "api_error",
                                 "invalid listen address '%s': %s", srv->cfg.host, uv_strerror(rc));
    for (ai = req.addrinfo; ai != NULL; ai = ai->ai_next) {
        if ((fd = socket(ai->ai_family, SOCK_STREAM, 0)) < 0) {
            last = uv_translate_sys_error(errno);
            continue;
        }
        rc = bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : uv_translate_sys_error(errno);
        close(fd);
        if (rc == 0 || rc == UV_EADDRINUSE || rc == UV_EACCES) {
            memcpy(ss, ai->ai_addr, ai->ai_addrlen);
            uv_freeaddrinfo(req.addrinfo);
            return 0; /* in use or forbidden: uv_tcp_bind reports it */
        }
        last = rc;
    }
    uv_freeaddrinfo(req.addrinfo);
    return ax_error_set_code(err, ax_error_from_uv(last), 500, "api_error",
                             "cannot listen on %s:%d: %s", srv->cfg.host, srv->cfg.port,
                             uv_strerror(last));
}

/* Workers share the port: each binds its own socket with SO_REUSEPORT and the kernel
 * spreads the connections (libuv 1.44 has no flag for it: set it on a socket we create and
 * hand to uv_tcp_open). Returns 0 or a libuv error code. */
static int bind_reuseport(struct ax_server *srv, const struct sockaddr_storage *ss)
{
    int fd, one = 1, rc;
    socklen_t len =
        ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);

    if ((fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return uv_translate_sys_error(errno);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)ss, len) < 0) {
        rc = uv_translate_sys_error(errno);
        close(fd);
        return rc;
    }
    if ((rc = uv_tcp_open(&srv->listener, fd)) < 0)
        close(fd);
    return rc;
}

int ax_server_listen(struct ax_server *srv, struct ax_error *err)
{
    struct sockaddr_storage ss;
    struct ax_policy_env env;
    char ip[INET6_ADDRSTRLEN], url[512];
    int namelen = sizeof(ss), rc, v6, loopback;
    const char *host = srv->cfg.host;

    if ((rc = listen_address(srv, &ss, err)) < 0)
        return rc;
    if ((rc = srv->cfg.workers > 1 ? bind_reuseport(srv, &ss)
                                   : uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection)) < 0)
        return ax_error_set_code(err, ax_error_from_uv(rc), 500, "api_error",
                                 "cannot listen on %s:%d: %s", host, srv->cfg.port,
                                 uv_strerror(rc));
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &namelen);
    v6 = ss.ss_family == AF_INET6;
    srv->bound_port =
        ntohs(v6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
    /* what is really bound, not what was asked: "::" is every interface, not [::1] */
    if (v6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
    else
        uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
    loopback = v6 ? IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr)
                  : (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    srv->listening = 1;

    memset(&env, 0, sizeof(env));
    env.loop = srv->loop;
    env.cfg = &srv->cfg;
    env.up = srv->up;
    env.mon = srv->mon;
    env.stats = srv->exp_stats;
    env.context_window = engine_context_window;
    env.upstream_model = engine_upstream_model;
    env.ud = srv;
    if (ax_policy_engine_new(&env, &srv->policies, err) < 0)
        return AX_EINVAL;
    if (srv->cfg.n_policy_sets > 0) {
        size_t i;
        for (i = 0; i < srv->cfg.n_policy_sets; i++)
            if (ax_policy_engine_set_override(srv->policies, srv->cfg.policy_sets[i].from,
                                              srv->cfg.policy_sets[i].to) < 0)
                return ax_error_set(err, 500, "api_error",
                                    "--policy-set %s: expected NAME.KEY=VALUE",
                                    srv->cfg.policy_sets[i].from);
        ax_policy_engine_reload(srv->policies); /* overrides apply from the next generation */
    }
    ax_policy_engine_watch(srv->policies);
    if (srv->cfg.record_dir != NULL &&
        ax_recorder_new(srv->loop, srv->cfg.record_dir, srv->cfg.record_max_file_bytes,
                        srv->cfg.record_max_dir_bytes, &srv->rec, err) < 0)
        return AX_EIO;

    if (srv->cfg.state_url != NULL && /* --state: connects in the background */
        ax_state_redis_new(srv->loop, srv->cfg.state_url, srv->cfg.state_wait_ms,
                           srv->cfg.session_ttl_ms, &srv->state, err) < 0)
        return AX_EINVAL;

    ax_fleet_probe_start(srv->fleet, AX_PROBE_INTERVAL_MS, on_upstream_info, srv);
    uv_timer_start(&srv->timer, on_sweep, AX_SESSION_SWEEP_MS, AX_SESSION_SWEEP_MS);
    srv->started_ms = uv_now(srv->loop);
    if (!loopback && srv->cfg.n_api_keys == 0)
        AX_LOG_WARN(NULL,
                    "*** listening on %s without an API key: anyone who can reach this "
                    "address can use the model. Set --api-key or listen on 127.0.0.1 ***",
                    ip);
    AX_LOG_INFO(NULL, "anthroxy %s listening on http://%s%s%s:%d%s (upstream %s)", ANTHROXY_VERSION,
                v6 ? "[" : "", ip, v6 ? "]" : "", srv->bound_port,
                strcmp(ip, "::") == 0 || strcmp(ip, "0.0.0.0") == 0 ? " (every interface)" : "",
                ax_redact_url(srv->cfg.upstream_base, url, sizeof(url)));
    return 0;
}

int ax_server_port(const struct ax_server *srv)
{
    return srv->bound_port;
}

uv_loop_t *ax_server_loop(const struct ax_server *srv)
{
    return srv->loop;
}

void ax_server_reload(struct ax_server *srv)
{
    if (srv->policies)
        ax_policy_engine_reload(srv->policies);
}

static void on_part_closed(struct ax_server *srv)
{
    if (--srv->pending_closes == 0 && srv->on_stopped)
        srv->on_stopped(srv, srv->on_stopped_ud);
}

static void on_handle_closed(uv_handle_t *h)
{
    on_part_closed(h->data);
}

static void on_component_closed(void *ud)
{
    on_part_closed(ud);
}

/* Everything in flight is over: close what the server owns. */
static void finish_stop(struct ax_server *srv)
{
    if (srv->stopping == 2)
        return;
    srv->stopping = 2;
    uv_timer_stop(&srv->timer);
    ax_req_cancel_all(&srv->reqs); /* before the engine closes: nothing may hold it */
    srv->pending_closes = 3;       /* timer, trim timer, upstream */
    if (srv->policies)
        srv->pending_closes++;
    if (srv->rec)
        srv->pending_closes++;
    if (srv->state)
        srv->pending_closes++;
    uv_close((uv_handle_t *)&srv->timer, on_handle_closed);
    if (srv->rec) {
        ax_recorder_close(srv->rec, on_component_closed, srv); /* frees it once all let go */
        srv->rec = NULL;
    }
    if (srv->state) { /* after the cancels: what still waits for Redis ends now */
        ax_state_redis_close(srv->state, on_component_closed, srv);
        srv->state = NULL;
    }
    ax_trim_close(&srv->trim, on_component_closed, srv);
    ax_fleet_close(srv->fleet, on_component_closed, srv);
    srv->fleet = NULL;
    srv->up = NULL;
    if (srv->policies) {
        ax_policy_engine_close(srv->policies, on_component_closed, srv); /* frees it too */
        srv->policies = NULL;
    }
    AX_LOG_INFO(NULL, "stopped");
}

static void on_flush_over(uv_timer_t *t)
{
    struct ax_server *srv = t->data;

    AX_LOG_WARN(NULL, "shutdown: closing %d connection(s) left", srv->http.n_conns);
    ax_http_close_all(&srv->http, 0);
}

/* Streams still open get their event: error (overloaded_error) and the connections close
 * once those last bytes are written, or AX_SHUTDOWN_FLUSH_MS later at the latest. */
static void on_grace_over(uv_timer_t *t)
{
    struct ax_server *srv = t->data;
    struct ax_error err = {0};

    AX_LOG_WARN(NULL, "shutdown grace period over: ending %d request(s)", srv->http.n_active);
    ax_error_set(&err, 503, "overloaded_error", "the server is shutting down");
    ax_req_abort_all(&srv->reqs, &err);
    uv_timer_start(&srv->timer, on_flush_over, AX_SHUTDOWN_FLUSH_MS, 0);
    ax_http_close_all(&srv->http, 1); /* may finish the stop, which stops the timer */
}

static void on_listener_closed(uv_handle_t *h)
{
    struct ax_server *srv = h->data;

    srv->listener.data = NULL;
    if (srv->http.n_conns == 0)
        finish_stop(srv);
}

void ax_server_stop(struct ax_server *srv, void (*on_stopped)(struct ax_server *, void *), void *ud)
{
    if (srv->stopping)
        return;
    srv->stopping = 1;
    srv->on_stopped = on_stopped;
    srv->on_stopped_ud = ud;
    AX_LOG_INFO(NULL, "stopping: %d connection(s), %d request(s) in flight", srv->http.n_conns,
                srv->http.n_active);
    uv_timer_stop(&srv->timer);
    uv_timer_start(&srv->timer, on_grace_over, srv->cfg.shutdown_grace_ms, 0);
    ax_http_close_all(&srv->http, 1);
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

int ax_server_share_sessions(struct ax_server *srv, struct ax_server *first, int index)
{
    if (first->share == NULL) {
        if ((first->share = ax_session_share_new((size_t)first->cfg.max_sessions)) == NULL)
            return AX_ENOMEM;
        first->share_owner = 1;
    }
    srv->share = first->share;
    srv->worker = index;
    return 0;
}

void ax_server_free(struct ax_server *srv)
{
    if (srv == NULL)
        return;
    if (srv->share_owner)
        ax_session_share_free(srv->share);
    if (srv->mon)
        ax_monitor_free(srv->mon);
    ax_exp_stats_free(srv->exp_stats);
    ax_metrics_free(srv->metrics);
    ax_config_free(&srv->cfg);
    free(srv);
}
