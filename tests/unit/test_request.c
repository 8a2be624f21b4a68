/* test_request.c - request.c alone: a new request is listed in its registry with one
 * reference and a "req_" id, only the last unref frees it (on_free first, then it leaves the
 * registry), ax_req_cancel flags and calls on_cancel exactly once, header lookup, and
 * ax_req_cancel_all cancels every live request, including when one cancel frees another. */
#include "anthroxy_request.h"
#include "ax_test.h"

#include <stdlib.h>
#include <string.h>

static int n_freed, n_canceled, reg_n_at_free;
static struct ax_req *drop_on_cancel; /* a reference the next on_cancel drops */

static void on_free(struct ax_req *req)
{
    n_freed++;
    reg_n_at_free = req->_registry ? req->_registry->n : -1;
}

static void on_cancel(struct ax_req *req)
{
    n_canceled++;
    CHECK(req->canceled); /* flagged before the hook runs */
    if (drop_on_cancel != NULL) {
        struct ax_req *other = drop_on_cancel;
        drop_on_cancel = NULL;
        ax_req_unref(other);
    }
}

static void test_refs(void)
{
    struct ax_req_registry reg;
    struct ax_req *req;

    ax_req_registry_init(&reg);
    CHECK_INT(reg.n, 0);
    req = ax_req_new(&reg, NULL, 1024);
    CHECK(req != NULL);
    CHECK_INT(req->refs, 1);
    CHECK_INT(reg.n, 1);
    CHECK(strncmp(req->id, "req_", 4) == 0);
    CHECK_INT(strlen(req->id), 28);
    CHECK_INT(req->body.max, 1024);
    CHECK(req->start_ns > 0);
    req->on_free = on_free;

    ax_req_ref(req);
    ax_req_ref(req);
    ax_req_unref(req);
    ax_req_unref(req);
    CHECK_INT(n_freed, 0);
    CHECK_INT(reg.n, 1);
    n_freed = 0;
    ax_req_unref(req); /* the last one */
    CHECK_INT(n_freed, 1);
    CHECK_INT(reg_n_at_free, 1); /* on_free runs while still listed */
    CHECK_INT(reg.n, 0);
    CHECK(reg.live.next == &reg.live);

    /* unregistered */
    req = ax_req_new(NULL, NULL, 16);
    CHECK(req != NULL && req->_registry == NULL);
    ax_req_unref(req);
}

static void test_headers(void)
{
    struct ax_req *req = ax_req_new(NULL, NULL, 16);

    req->n_headers = 2;
    req->headers = calloc(2, sizeof(*req->headers));
    req->headers[0].name = strdup("x-api-key");
    req->headers[0].value = strdup("k1");
    req->headers[1].name = strdup("user-agent");
    req->headers[1].value = strdup("test/1");
    CHECK_STR(ax_req_header(req, "x-api-key"), "k1");
    CHECK_STR(ax_req_header(req, "user-agent"), "test/1");
    CHECK(ax_req_header(req, "X-Api-Key") == NULL); /* names are stored lower-case */
    CHECK(ax_req_header(req, "x-api") == NULL);
    ax_req_unref(req); /* frees the headers (ASan would tell) */
}

static void test_cancel_once(void)
{
    struct ax_req *req = ax_req_new(NULL, NULL, 16);

    n_canceled = 0;
    req->on_cancel = on_cancel;
    CHECK(!req->canceled);
    ax_req_cancel(req);
    CHECK(req->canceled);
    CHECK_INT(n_canceled, 1);
    CHECK(req->on_cancel == NULL);
    ax_req_cancel(req);
    CHECK_INT(n_canceled, 1);
    req->on_cancel = on_cancel; /* even a hook set again: a canceled request stays canceled */
    ax_req_cancel(req);
    CHECK_INT(n_canceled, 1);
    ax_req_unref(req);

    req = ax_req_new(NULL, NULL, 16); /* no hook: just the flag */
    ax_req_cancel(req);
    CHECK(req->canceled);
    ax_req_unref(req);
}

static void test_cancel_all(void)
{
    struct ax_req_registry reg;
    struct ax_req *r[4];
    int i;

    ax_req_registry_init(&reg);
    for (i = 0; i < 4; i++) {
        r[i] = ax_req_new(&reg, NULL, 16);
        r[i]->on_cancel = on_cancel;
        r[i]->on_free = on_free;
    }
    CHECK_INT(reg.n, 4);
    ax_req_ref(r[1]);      /* an extra reference, which r[0]'s cancel drops */
    drop_on_cancel = r[1]; /* r[1] keeps the test's */
    n_canceled = n_freed = 0;
    ax_req_cancel(r[3]); /* already canceled: not again */
    CHECK_INT(n_canceled, 1);

    ax_req_cancel_all(&reg);
    CHECK_INT(n_canceled, 4); /* r[0], r[1], r[2] now, r[3] before */
    for (i = 0; i < 4; i++)
        CHECK(r[i]->canceled);
    CHECK_INT(n_freed, 0); /* cancel_all only cancels; holders still hold */
    CHECK_INT(reg.n, 4);
    for (i = 0; i < 4; i++)
        ax_req_unref(r[i]);
    CHECK_INT(n_freed, 4);
    CHECK_INT(reg.n, 0);
}

/* A cancel that frees the next request in the registry: the walk must not touch it. */
static void test_cancel_all_frees_next(void)
{
    struct ax_req_registry reg;
    struct ax_req *a, *b, *c;

    ax_req_registry_init(&reg);
    a = ax_req_new(&reg, NULL, 16);
    b = ax_req_new(&reg, NULL, 16);
    c = ax_req_new(&reg, NULL, 16);
    a->on_cancel = b->on_cancel = c->on_cancel = on_cancel;
    b->on_free = on_free;
    n_canceled = n_freed = 0;
    drop_on_cancel = b; /* a's cancel drops b's only reference */
    ax_req_cancel_all(&reg);
    CHECK_INT(n_freed, 1);
    CHECK_INT(n_canceled, 2); /* a and c; b was gone before its turn */
    CHECK(a->canceled && c->canceled);
    CHECK_INT(reg.n, 2);
    ax_req_unref(a);
    ax_req_unref(c);
    CHECK_INT(reg.n, 0);
}

int main(void)
{
    test_refs();
    test_headers();
    test_cancel_once();
    test_cancel_all();
    test_cancel_all_frees_next();
    return AX_TEST_DONE("test_request");
}
