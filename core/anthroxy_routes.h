/* anthroxy_routes.h - the router: a request's method and path choose its handler (the small
 * endpoints in routes.c, the /v1/messages pipeline in messages.c). */
#ifndef ANTHROXY_ROUTES_H
#define ANTHROXY_ROUTES_H

#include "anthroxy_error.h"
#include "anthroxy_request.h"

struct ax_server;

/* Takes over req, a complete request from http.c (server.c's on_request), and answers it
 * exactly once, now or later. */
void ax_routes_dispatch(struct ax_server *srv, struct ax_req *req);
/* The inbound key check, on the headers alone (server.c's on_headers, before any body is
 * read): 0 when req may go on, else a negative code with err the 401 to answer. */
int ax_routes_check_key(struct ax_server *srv, const struct ax_req *req, struct ax_error *err);

#endif
