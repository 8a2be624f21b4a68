/* anthroxy_http.h - HTTP/1.1 server connections: llhttp parsing under caps, keep-alive,
 * pipelined requests answered in order, an ordered write queue with watermarks, chunked
 * framing.
 *
 * A leaf: whoever accepts (server.c) hands in callbacks and http.c calls nothing above it.
 * Each complete message goes to on_request, and the connection parses nothing more until
 * that request's response is finished (ax_http_respond and friends, or ax_http_stream_end),
 * so pipelined requests wait in the socket's input and answer in order. A client that goes
 * away cancels the request being answered (ax_req_cancel).
 *
 * Refusals end the connection: once an error is answered to a message that was not read to
 * its end (bad framing, a refused key, a connection cap, a request that did not arrive in
 * time), the connection shuts its sending side and reads and drops the client's input for a
 * moment (a lingering close, as nginx's), so that the client reads the answer instead of a
 * reset. */
#ifndef ANTHROXY_HTTP_H
#define ANTHROXY_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "anthroxy_error.h"
#include "anthroxy_list.h"
#include "anthroxy_request.h"

struct ax_conn;

/* Connections closing after an error answer at once (a lingering close each); past it they
 * close outright. An owner sizing descriptors keeps this many in reserve. */
#define AX_HTTP_LINGERING_MAX 64
#define AX_HTTP_ADDR_BUCKETS 256

/* The caps and timeouts of every connection (copied at init; struct ax_config's names). */
struct ax_http_limits {
    size_t max_body_bytes;            /* 413 past it */
    size_t max_header_bytes;          /* 431 past it (URL, names and values together) */
    size_t write_low_water;           /* on_drain once the write queue falls to this */
    uint64_t keepalive_timeout_ms;    /* idle, and a request's arrival from its first byte */
    uint64_t client_stall_timeout_ms; /* bytes queued and none written this long: cut off */
    size_t max_inflight_body_bytes;   /* request bodies buffered, all connections: 503 past it
                                         (0: no cap) */
    int max_connections;              /* open ones: past it a new one gets 503 and closes (0:
                                         no cap) */
    int max_connections_per_client;   /* open ones of one peer address: 429 past it (0: off) */
};

struct ax_http_callbacks {
    /* A complete request, in order per connection, called from the loop (a read, or the
     * parse of pipelined input that follows an answer), never from inside an ax_http_* call.
     * The callee answers it exactly once; the connection holds a reference until then. */
    void (*on_request)(struct ax_req *req, void *ud);
    /* A connection's handles have closed and its memory is gone (n_conns counted it out
     * when it began closing). May be NULL. */
    void (*on_closed)(void *ud);
    void *ud;
    /* A request's headers are complete, before any of its body is read (and before 100
     * Continue). Return 0 to go on, or a negative AX_E* code with err filled: err is the
     * answer, and the connection closes after it (the body is never read). May be NULL. */
    int (*on_headers)(const struct ax_req *req, void *ud, struct ax_error *err);
};

/* The connections accepted for one owner. Embedded by it (a plain struct: no handles of its
 * own, nothing to close); the owner reads the counters, the rest is http.c's. */
struct ax_http_server {
    uv_loop_t *loop;
    struct ax_http_limits limits;
    struct ax_http_callbacks cbs;
    struct ax_req_registry *reqs; /* where requests are listed; may be NULL */
    int n_conns;                  /* open connections, closing ones not counted */
    int n_active;                 /* requests being answered */
    uint64_t n_errors;            /* error answers sent (ax_http_send_error) */
    size_t body_bytes;            /* request body bytes buffered, counted until answered */
    uint64_t n_refused;           /* connections refused at accept by a connection cap */
    int _n_lingering;             /* closing after an error answer (counted in n_conns) */
    int _draining;                /* ax_http_close_all ran: answers say Connection: close */
    struct ax_list _conns;
    struct ax_list _addrs[AX_HTTP_ADDR_BUCKETS]; /* open connections per peer address */
};

void ax_http_server_init(struct ax_http_server *hs, uv_loop_t *loop,
                         const struct ax_http_limits *limits, const struct ax_http_callbacks *cbs,
                         struct ax_req_registry *reqs);
/* Accepts a connection from the listening stream; the connection owns itself from here.
 * Past max_connections it is answered 503 overloaded_error, past max_connections_per_client
 * 429 rate_limit_error (both with retry-after), and closed: told, never dropped silently. */
int ax_http_accept(struct ax_http_server *hs, uv_stream_t *listener);
/* Closes every connection (server stop). Idle ones at once, busy ones after their current
 * response when graceful, or at once (canceling their requests); from now on every answer
 * closes its connection. */
void ax_http_close_all(struct ax_http_server *hs, int graceful);

/* Sends a complete response (status line, headers, body) and finishes the request.
 * extra_headers: NULL or "Name: value\r\n..." lines. The connection's reference to req is
 * dropped here; the caller must hold its own to touch req afterwards. */
int ax_http_respond(struct ax_req *req, int status, const char *content_type,
                    const char *extra_headers, const char *body, size_t len);
/* The one place an ax_error becomes bytes: {"type":"error","error":{"type","message"}}. */
int ax_http_send_error(struct ax_req *req, const struct ax_error *err);
int ax_http_send_json(struct ax_req *req, int status, const cJSON *json);

/* A streamed response (chunked): begin, write any number of times, finish. */
int ax_http_stream_begin(struct ax_req *req, int status, const char *content_type,
                         const char *extra_headers);
int ax_http_stream_write(struct ax_req *req, const char *data, size_t len);
int ax_http_stream_end(struct ax_req *req);

/* Bytes queued for the socket and not yet written, for this request's connection. */
size_t ax_http_queued(const struct ax_req *req);

#endif
