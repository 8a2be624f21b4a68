/* request.c - struct ax_req: creation, header lookup, references, cancel, and the registry
 * of live requests that a stopping server cancels. The connection that parses a request is
 * http.c's; the pipeline of a /v1/messages request lives in messages.c, small routes in
 * routes.c. */
#include "anthroxy_ids.h"
#include "anthroxy_log.h"
#include "anthroxy_request.h"

#include <stdlib.h>
#include <string.h>

void ax_req_registry_init(struct ax_req_registry *reg)
{
    ax_list_init(&reg->live);
    reg->n = 0;
}

struct ax_req *ax_req_new(struct ax_req_registry *reg, struct ax_conn *conn, size_t max_body)
{
    struct ax_req *req = calloc(1, sizeof(*req));

    if (req == NULL)
        return NULL;
    req->refs = 1;
    req->conn = conn;
    ax_list_init(&req->_link);
    if ((req->_registry = reg) != NULL) {
        ax_list_push_back(&reg->live, &req->_link);
        reg->n++;
    }
    req->start_ns = uv_hrtime();
    ax_id_make(req->id, sizeof(req->id), "req_");
    ax_buf_init(&req->body, max_body);
    return req;
}

const char *ax_req_id(const struct ax_req *req)
{
    return req ? req->id : NULL;
}

const char *ax_req_header(const struct ax_req *req, const char *name)
{
    int i;

    for (i = 0; i < req->n_headers; i++)
        if (strcmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
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
    if (req->_registry != NULL) {
        ax_list_unlink(&req->_link);
        req->_registry->n--;
    }
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

void ax_req_cancel_all(struct ax_req_registry *reg)
{
    struct ax_list *n, *next;

    for (n = reg->live.next; n != &reg->live; n = next) {
        struct ax_req *req = AX_LIST_ENTRY(n, struct ax_req, _link);
        ax_req_ref(req); /* req stays listed, so its link stays valid, until we let go */
        ax_req_cancel(req);
        next = n->next; /* read after the cancel: it may have freed others */
        ax_req_unref(req);
    }
}

void ax_req_abort_all(struct ax_req_registry *reg, const struct ax_error *err)
{
    struct ax_list *n, *next;

    for (n = reg->live.next; n != &reg->live; n = next) {
        struct ax_req *req = AX_LIST_ENTRY(n, struct ax_req, _link);
        void (*cb)(struct ax_req *, const struct ax_error *) = req->on_abort;
        ax_req_ref(req); /* as in ax_req_cancel_all */
        if (cb != NULL && !req->finished && !req->canceled) {
            req->on_abort = NULL;
            cb(req, err);
        }
        next = n->next;
        ax_req_unref(req);
    }
}
