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
struct ax_monitor;
struct ax_policy_engine;

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

    struct ax_upstream *up;
    struct ax_monitor *mon;
    struct ax_policy_engine *policies;

    /* counters for /health and the log (errors: http.n_errors) */
    uint64_t n_requests;
};

#endif
