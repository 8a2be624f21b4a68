/* anthroxy_request.h - one HTTP request's life, from parsed message to last byte written.
 *
 * struct ax_req is reference-counted: the connection, an upstream transfer, the policy
 * coroutine and timers each hold a reference taken before their async work starts and
 * dropped in its completion; only the last ax_req_unref frees it. ax_req_cancel only flags
 * and stops work (client gone, server stopping).
 *
 * A registry lists the requests alive (from ax_req_new to the last unref), whatever holds
 * them: stopping the server cancels each (ax_req_cancel_all) without knowing its handler. */
#ifndef ANTHROXY_REQUEST_H
#define ANTHROXY_REQUEST_H

#include <stdint.h>
#include <uv.h>

#include <cjson/cJSON.h>

#include "anthroxy_buf.h"
#include "anthroxy_error.h"
#include "anthroxy_list.h"

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

/* The requests alive; embedded by its owner (the server), initialised before the first
 * ax_req_new that names it. */
struct ax_req_registry {
    struct ax_list live; /* of struct ax_req, by _link */
    int n;
};

struct ax_req {
    int refs;
    struct ax_list _link;              /* in the registry */
    struct ax_req_registry *_registry; /* NULL: not registered */
    struct ax_conn *conn; /* NULL once the connection is gone (http.c's, opaque to others) */
    char id[40];          /* "req_" + 24 base62: the request-id header */
    uint64_t start_ns;    /* uv_hrtime() when the message was complete */

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
    char resp_headers[96]; /* "Name: value\r\n" lines every answer carries (the handler's:
                              messages.c's anthroxy-arm), "" for none */
    int status;            /* status sent, 0 before */
    int headers_sent;
    int chunked;  /* response framed with chunked encoding */
    int finished; /* last byte queued */
    int canceled;
    void (*on_drain)(struct ax_req *req);  /* write queue fell below the low watermark */
    void (*on_cancel)(struct ax_req *req); /* handler's cleanup when canceled */
    /* The server stops: end the answer now with err (a stream's event: error), if the
     * handler can; may be NULL (ax_req_abort_all). */
    void (*on_abort)(struct ax_req *req, const struct ax_error *err);
    void *handler;                       /* the route handler's state (routes.c / messages.c) */
    void (*on_free)(struct ax_req *req); /* frees handler with the request */
};

/* Header lookup by lower-case name; NULL when absent. */
const char *ax_req_header(const struct ax_req *req, const char *name);

/* A request with one reference (the caller's), listed in reg unless reg is NULL. */
struct ax_req *ax_req_new(struct ax_req_registry *reg, struct ax_conn *conn, size_t max_body);
void ax_req_ref(struct ax_req *req);
void ax_req_unref(struct ax_req *req);
/* Flags the request canceled and calls its on_cancel once (idempotent). */
void ax_req_cancel(struct ax_req *req);

void ax_req_registry_init(struct ax_req_registry *reg);
/* Cancels every request of reg (server stop). Each stays alive until its holders let go:
 * on_cancel must release what the request holds of shared engines (policy runs). */
void ax_req_cancel_all(struct ax_req_registry *reg);
/* Calls on_abort once for every request of reg that is not yet finished (the shutdown grace
 * period is over): handlers end their answers with err before the connections close. */
void ax_req_abort_all(struct ax_req_registry *reg, const struct ax_error *err);

#endif
