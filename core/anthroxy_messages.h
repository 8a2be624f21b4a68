/* anthroxy_messages.h - POST /v1/messages and /v1/messages/count_tokens.
 *
 * The pipeline of one request, as a state machine over callbacks: parse, find the session,
 * on_request (policies), translate, on_upstream_request, send upstream, then either a
 * complete answer (translate_response) or a stream (sse.c -> stream.c -> the connection's
 * write queue, with a first-byte hold, pings and backpressure), on_response, record. */
#ifndef ANTHROXY_MESSAGES_H
#define ANTHROXY_MESSAGES_H

#include "anthroxy_request.h"

struct ax_server;

/* Takes over req (answers it exactly once). count_only: /v1/messages/count_tokens.
 * The request may outlive its answer (on_response); ax_req_cancel (the client gone, or the
 * server's stop through the request registry) ends all its work and its hold on the
 * policy engine. */
void ax_messages_handle(struct ax_server *srv, struct ax_req *req, int count_only);

#endif
