/* anthroxy_request.h - one HTTP request's life, from parsed message to last byte written.
 *
 * struct ax_req is reference-counted: the connection, an upstream transfer, the policy
 * coroutine and timers each hold a reference taken before their async work starts and
 * dropped in its completion; only the last ax_req_unref frees it. ax_req_cancel only flags
 * and stops work (client gone, server stopping). */
#ifndef ANTHROXY_REQUEST_H
#define ANTHROXY_REQUEST_H

#include <stdint.h>
#include <uv.h>

#include <cjson/cJSON.h>

#include "anthroxy_buf.h"
#include "anthroxy_error.h"

struct ax_server;
struct ax_conn;
struct ax_session;
struct ax_policy_req;
struct ax_xfer;
struct ax_stream;
struct ax_sse;

struct ax_header {
    char *name; /* lower-cased */
    char *value;
};

enum ax_req_state {
    AX_REQ_PARSING,   /* headers/body still arriving */
    AX_REQ_ROUTED,    /* dispatched to a handler */
    AX_REQ_POLICY,    /* inside a policy hook */
    AX_REQ_UPSTREAM,  /* transfer running or queued */
    AX_REQ_STREAMING, /* committed 200 SSE response, events flowing */
    AX_REQ_DONE       /* response complete (or abandoned) */
};

struct ax_req {
    int refs;
    struct ax_server *srv;
    struct ax_conn *conn; /* NULL once the connection is gone */
    struct ax_req *next;  /* the connection's pipelined queue */
    enum ax_req_state state;
    char id[40];       /* "req_" + 24 base62: the request-id header */
    uint64_t start_ns; /* uv_hrtime() when the message was complete */

    /* the HTTP message */
    int method;  /* llhttp_method_t */
    char *path;  /* without the query */
    char *query; /* after '?', or NULL */
    struct ax_header *headers;
    int n_headers;
    struct ax_buf body;
    int keep_alive;
    int expect_continue;

    /* the response */
    int status; /* status sent, 0 before */
    int headers_sent;
    int chunked;  /* response framed with chunked encoding */
    int finished; /* last byte queued */
    int canceled;
    void (*on_drain)(struct ax_req *req);  /* write queue fell below the low watermark */
    void (*on_cancel)(struct ax_req *req); /* handler's cleanup when canceled */
    void *handler;                         /* the route handler's state (routes.c / messages.c) */
    void (*on_free)(struct ax_req *req);   /* frees handler with the request */
};

/* Header lookup by lower-case name; NULL when absent. */
const char *ax_req_header(const struct ax_req *req, const char *name);

struct ax_req *ax_req_new(struct ax_server *srv, struct ax_conn *conn, size_t max_body);
void ax_req_ref(struct ax_req *req);
void ax_req_unref(struct ax_req *req);
/* Flags the request canceled and calls its on_cancel once (idempotent). */
void ax_req_cancel(struct ax_req *req);

#endif
