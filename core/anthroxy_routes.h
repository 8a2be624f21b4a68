/* anthroxy_routes.h - the router: a request's method and path choose its handler (the small
 * endpoints in routes.c, the /v1/messages pipeline in messages.c). */
#ifndef ANTHROXY_ROUTES_H
#define ANTHROXY_ROUTES_H

#include "anthroxy_request.h"

struct ax_server;

/* Takes over req, a complete request from http.c (server.c's on_request), and answers it
 * exactly once, now or later. */
void ax_routes_dispatch(struct ax_server *srv, struct ax_req *req);

#endif
