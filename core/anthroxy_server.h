/* anthroxy_server.h - the server object shared by the core's modules (not for embedders:
 * they use anthroxy.h). One per event loop; everything mutable hangs off it. */
#ifndef ANTHROXY_SERVER_H
#define ANTHROXY_SERVER_H

#include <stdint.h>
#include <uv.h>

#include "anthroxy.h"
#include "anthroxy_config.h"
#include "anthroxy_http.h"
#include "anthroxy_request.h"
#include "anthroxy_trim.h"

struct ax_upstream;
struct ax_fleet;
struct ax_monitor;
struct ax_session_share;
struct ax_state_redis;
struct ax_policy_engine;
struct ax_recorder;
struct ax_metrics;

struct ax_server {
    uv_loop_t *loop;
    struct ax_config cfg;
    uv_tcp_t listener;
    uv_timer_t timer; /* shutdown grace, session expiry */
    int listening;
    int stopping;
    int pending_closes;
    void (*on_stopped)(struct ax_server *, void *);
    void *on_stopped_ud;
    int bound_port;
    uint64_t started_ms;

    struct ax_http_server http;  /* the connections, their counters and error count */
    struct ax_req_registry reqs; /* every request alive, answered or not */
    struct ax_trim trim;         /* memory freed by requests goes back to the system */

    struct ax_fleet *fleet; /* the upstreams (fleet.c) */
    struct ax_upstream *up; /* the fleet's default member, for what has no request to route */
    struct ax_monitor *mon;
    struct ax_session_share *share; /* --workers: the state shared with the others, or NULL */
    int share_owner;                /* this server frees it */
    struct ax_state_redis *state;   /* --state: sessions in Redis, or NULL */
    int worker;                     /* its index among the workers (0 alone) */
    uint64_t tools_as_text;         /* fleet members (bit i) that refused `tools`: sent as text */
    struct ax_policy_engine *policies;
    struct ax_recorder *rec;        /* --record, else NULL */
    struct ax_exp_stats *exp_stats; /* per-arm figures, GET /v1/experiments */
    struct ax_metrics *metrics;     /* GET /metrics, the status page's recent errors */

    /* counters for /health and the log (errors: http.n_errors) */
    uint64_t n_requests;
};

#endif
