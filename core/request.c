/* request.c - struct ax_req: creation, references, cancel. The pipeline of a
 * /v1/messages request lives in messages.c; small routes in routes.c. */
#include "anthroxy_ids.h"
#include "anthroxy_log.h"
#include "anthroxy_request.h"

#include <stdlib.h>

struct ax_req *ax_req_new(struct ax_server *srv, struct ax_conn *conn, size_t max_body)
{
    struct ax_req *req = calloc(1, sizeof(*req));

    if (req == NULL)
        return NULL;
    req->refs = 1;
    req->srv = srv;
    req->conn = conn;
    req->state = AX_REQ_PARSING;
    req->start_ns = uv_hrtime();
    ax_id_make(req->id, sizeof(req->id), "req_");
    ax_buf_init(&req->body, max_body);
    return req;
}

const char *ax_req_id(const struct ax_req *req)
{
    return req ? req->id : NULL;
}

void ax_req_ref(struct ax_req *req)
{
    req->refs++;
}

void ax_req_unref(struct ax_req *req)
{
    int i;

    if (--req->refs > 0)
        return;
    if (req->on_free)
        req->on_free(req);
    for (i = 0; i < req->n_headers; i++) {
        free(req->headers[i].name);
        free(req->headers[i].value);
    }
    free(req->headers);
    free(req->path);
    free(req->query);
    ax_buf_free(&req->body);
    free(req);
}

void ax_req_cancel(struct ax_req *req)
{
    if (req->canceled)
        return;
    req->canceled = 1;
    if (req->on_cancel) {
        void (*cb)(struct ax_req *) = req->on_cancel;
        req->on_cancel = NULL;
        cb(req);
    }
}
