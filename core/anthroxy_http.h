/* anthroxy_http.h - one HTTP/1.1 server connection: llhttp parsing, keep-alive, pipelined
 * requests answered in order, an ordered write queue with watermarks, chunked framing.
 *
 * The connection hands each complete message to the server (ax_server_dispatch) and parses
 * nothing more until that request's response is finished (ax_http_finish or an ax_http_respond
 * that completes it), so pipelined requests queue in the socket's input and answer in order.
 * A client that goes away cancels its requests (ax_req_cancel). */
#ifndef ANTHROXY_HTTP_H
#define ANTHROXY_HTTP_H

#include <stddef.h>
#include <uv.h>

#include "anthroxy_error.h"
#include "anthroxy_request.h"

struct ax_server;
struct ax_conn;

/* Accepts a connection from the listening stream; the connection owns itself from here. */
int ax_http_accept(struct ax_server *srv, uv_stream_t *listener);
/* Closes every connection of the server (server stop). Idle ones at once, busy ones after
 * their current response when graceful, or at once. */
void ax_http_close_all(struct ax_server *srv, int graceful);

/* Sends a complete response (status line, headers, body) and finishes the request.
 * extra_headers: NULL or "Name: value\r\n..." lines. */
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
