/* http.c - HTTP/1.1 server connections, as h2o's http1.c: reads into llhttp under caps,
 * pauses after each message so pipelined requests answer in order, keeps an ordered write
 * queue with watermarks, frames chunked responses, and turns an ax_error into bytes
 * (ax_http_send_error). A leaf: each complete request goes up through the on_request
 * callback of whoever accepted (server.c wires in routes.c's dispatcher). */
#include "anthroxy_hash.h"
#include "anthroxy_http.h"
#include "anthroxy_log.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define AX_MAX_HEADERS 100
#define AX_MAX_PENDING_INPUT (1024 * 1024) /* unparsed pipelined input before read stops */
/* A lingering close: the answer is out and our side shut; the client's input is read and
 * dropped until it closes too, for this long or this many bytes at most. */
#define AX_LINGER_MS 2000
#define AX_LINGER_MAX_BYTES (4 * 1024 * 1024)
#define AX_RETRY_AFTER_S 1

/* Open connections of one peer address (max_connections_per_client). */
struct addr_count {
    struct ax_list link; /* in hs->_addrs[hash] */
    int n;
    size_t len;
    unsigned char key[17]; /* the family, then the address */
};

struct ax_conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* keep-alive idle, or write stall while bytes are queued */
    uv_idle_t resume; /* parses pipelined input on the loop turn after an answer */
    uv_shutdown_t shutdown;
    int pending_closes;
    int closing;
    int reading;
    int in_parse; /* inside conn_parse: its loop goes on once the handler returns */
    int close_after_write;
    int linger;    /* an error answer to a message not read whole: linger once it is out */
    int lingering; /* our side shut; input dropped until the client closes or time is up */
    size_t discarded;
    struct ax_http_server *hs;
    struct ax_list link;     /* in hs->_conns */
    struct addr_count *addr; /* counted there while open and not lingering; may be NULL */

    llhttp_t parser;
    struct ax_buf in;      /* received but not yet parsed */
    struct ax_req *cur;    /* the message being parsed */
    struct ax_req *active; /* the request being answered; parsing waits for it */
    struct ax_buf field, value;
    int value_started;
    size_t header_bytes;
    struct ax_error perr; /* what a parse failure answers */

    uint64_t msg_start_ms;     /* when the message being received began */
    size_t queued;             /* bytes handed to uv_write and not yet written */
    uint64_t last_progress_ms; /* the client last took bytes (or bytes began to wait) */
    size_t progress_mark;      /* the socket's write queue size at last_progress_ms */
    size_t body_counted;       /* this connection's share of hs->body_bytes */
};

struct conn_write {
    uv_write_t w;
    struct ax_conn *conn;
    size_t len;
    char data[];
};

static llhttp_settings_t parser_settings;
static int parser_settings_ready;

static void conn_parse(struct ax_conn *c);
static void conn_on_resume(uv_idle_t *h);
static void conn_close(struct ax_conn *c);
static void conn_end(struct ax_conn *c);
static void conn_arm_timer(struct ax_conn *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* ---- the server's connections ------------------------------------------------------ */

void ax_http_server_init(struct ax_http_server *hs, uv_loop_t *loop,
                         const struct ax_http_limits *limits, const struct ax_http_callbacks *cbs,
                         struct ax_req_registry *reqs)
{
    memset(hs, 0, sizeof(*hs));
    hs->loop = loop;
    hs->limits = *limits;
    hs->cbs = *cbs;
    hs->reqs = reqs;
    ax_list_init(&hs->_conns);
    for (size_t i = 0; i < AX_HTTP_ADDR_BUCKETS; i++)
        ax_list_init(&hs->_addrs[i]);
}

/* ---- per-address counts -------------------------------------------------------------- */

/* The count of the connection's peer address, created at 0; NULL when not kept (the cap is
 * off, the peer has no IP address, or no memory: the connection is then not counted). */
static struct addr_count *addr_find(struct ax_http_server *hs, uv_tcp_t *tcp)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    unsigned char key[17];
    size_t klen;
    struct ax_list *bucket, *n;
    struct addr_count *a;

    if (hs->limits.max_connections_per_client <= 0 ||
        uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) < 0)
        return NULL;
    key[0] = (unsigned char)ss.ss_family;
    if (ss.ss_family == AF_INET) {
        memcpy(key + 1, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        klen = 5;
    } else if (ss.ss_family == AF_INET6) {
        memcpy(key + 1, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        klen = 17;
    } else {
        return NULL;
    }
    bucket = &hs->_addrs[ax_fnv1a(key, klen, AX_FNV1A_INIT) % AX_HTTP_ADDR_BUCKETS];
    AX_LIST_FOREACH(n, bucket)
    {
        a = AX_LIST_ENTRY(n, struct addr_count, link);
        if (a->len == klen && memcmp(a->key, key, klen) == 0)
            return a;
    }
    if ((a = calloc(1, sizeof(*a))) == NULL)
        return NULL;
    a->len = klen;
    memcpy(a->key, key, klen);
    ax_list_push_front(bucket, &a->link);
    return a;
}

static void addr_put(struct addr_count *a)
{
    if (a->n <= 0) {
        ax_list_unlink(&a->link);
        free(a);
    }
}

/* The connection no longer counts for its address (closing, or lingering). */
static void addr_release(struct ax_conn *c)
{
    struct addr_count *a = c->addr;

    if (a == NULL)
        return;
    c->addr = NULL;
    a->n--;
    addr_put(a);
}

size_t ax_http_queued(const struct ax_req *req)
{
    return req->conn ? req->conn->queued : 0;
}

/* ---- parser callbacks ---------------------------------------------------------------- */

static int fail_parse(llhttp_t *p, int status, const char *type, const char *msg)
{
    struct ax_conn *c = p->data;
    ax_error_set(&c->perr, status, type, "%s", msg);
    llhttp_set_error_reason(p, msg);
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
    struct ax_conn *c = p->data;

    c->cur = ax_req_new(c->hs->reqs, c, c->hs->limits.max_body_bytes);
    if (c->cur == NULL)
        return fail_parse(p, 500, "api_error", "out of memory");
    c->header_bytes = 0;
    c->value_started = 0;
    c->msg_start_ms = uv_now(c->hs->loop);
    ax_buf_reset(&c->field);
    ax_buf_reset(&c->value);
    return 0;
}

static int count_header_bytes(llhttp_t *p, size_t n)
{
    struct ax_conn *c = p->data;

    c->header_bytes += n;
    if (c->header_bytes > c->hs->limits.max_header_bytes)
        return fail_parse(p, 431, "invalid_request_error",
                          "request headers over the configured limit");
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct ax_conn *c = p->data;

    if (count_header_bytes(p, n) != 0)
        return HPE_USER;
    return ax_buf_append(&c->field, at, n) == 0 ? 0 : fail_parse(p, 414, NULL, "URL too long");
}

static int on_url_complete(llhttp_t *p)
{
    struct ax_conn *c = p->data;
    struct ax_req *r = c->cur;
    char *q;

    r->path = strndup(c->field.data ? c->field.data : "/", c->field.len ? c->field.len : 1);
    if (r->path == NULL)
        return fail_parse(p, 500, "api_error", "out of memory");
    if ((q = strchr(r->path, '?')) != NULL) {
        *q = '\0';
        r->query = strdup(q + 1);
    }
    ax_buf_reset(&c->field);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct ax_conn *c = p->data;

    if (count_header_bytes(p, n) != 0)
        return HPE_USER;
    return ax_buf_append(&c->field, at, n) == 0 ? 0 : fail_parse(p, 431, NULL, "header too large");
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct ax_conn *c = p->data;

    if (count_header_bytes(p, n) != 0)
        return HPE_USER;
    c->value_started = 1;
    return ax_buf_append(&c->value, at, n) == 0 ? 0 : fail_parse(p, 431, NULL, "header too large");
}

static int on_header_value_complete(llhttp_t *p)
{
    struct ax_conn *c = p->data;
    struct ax_req *r = c->cur;
    struct ax_header *h;
    size_t i;

    if (r->n_headers >= AX_MAX_HEADERS)
        return fail_parse(p, 431, "invalid_request_error", "too many request headers");
    if (r->n_headers % 16 == 0) {
        h = realloc(r->headers, sizeof(*h) * (size_t)(r->n_headers + 16));
        if (h == NULL)
            return fail_parse(p, 500, "api_error", "out of memory");
        r->headers = h;
    }
    h = &r->headers[r->n_headers];
    h->name = strndup(c->field.data ? c->field.data : "", c->field.len);
    h->value = strndup(c->value.data ? c->value.data : "", c->value.len);
    if (h->name == NULL || h->value == NULL) {
        free(h->name);
        free(h->value);
        return fail_parse(p, 500, "api_error", "out of memory");
    }
    for (i = 0; h->name[i]; i++)
        if (h->name[i] >= 'A' && h->name[i] <= 'Z')
            h->name[i] = (char)(h->name[i] - 'A' + 'a');
    r->n_headers++;
    ax_buf_reset(&c->field);
    ax_buf_reset(&c->value);
    return 0;
}

/* Whether n more body bytes would take the bodies buffered past max_inflight_body_bytes. */
static int body_over_budget(const struct ax_conn *c, size_t n)
{
    size_t max = c->hs->limits.max_inflight_body_bytes;

    return max > 0 && (c->hs->body_bytes > max || n > max - c->hs->body_bytes);
}

static int fail_body_budget(llhttp_t *p)
{
    struct ax_conn *c = p->data;
    int rc = fail_parse(p, 503, "overloaded_error",
                        "too many request bodies in flight (max_inflight_body_bytes): retry later");
    c->perr.retry_after = 1;
    return rc;
}

/* The request's body no longer counts against the in-flight budget (answered, or gone). */
static void conn_release_body(struct ax_conn *c)
{
    c->hs->body_bytes -= c->body_counted;
    c->body_counted = 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct ax_conn *c = p->data;
    struct ax_req *r = c->cur;
    const char *expect = ax_req_header(r, "expect");

    r->method = p->method;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > r->body.max)
        return fail_parse(p, 413, "request_too_large",
                          "request body over the configured limit (max_body_bytes)");
    /* The key before any body: a refused request never has its body buffered. */
    if (c->hs->cbs.on_headers != NULL) {
        struct ax_error err = {0};
        if (c->hs->cbs.on_headers(r, c->hs->cbs.ud, &err) < 0) {
            c->perr = err;
            if (c->perr.status == 0)
                ax_error_set(&c->perr, 400, "invalid_request_error", "request refused");
            llhttp_set_error_reason(p, "refused");
            return HPE_USER;
        }
    }
    /* The body's memory grows as bytes arrive (never Content-Length up front), and all
     * bodies buffered together stay under max_inflight_body_bytes. */
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0 &&
        body_over_budget(c, (size_t)p->content_length))
        return fail_body_budget(p);
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
        r->expect_continue = 1;
        uv_try_write((uv_stream_t *)&c->tcp, &b, 1); /* best effort: the client proceeds
                                                         after its own timeout anyway */
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct ax_conn *c = p->data;

    if (body_over_budget(c, n))
        return fail_body_budget(p);
    if (ax_buf_append(&c->cur->body, at, n) < 0)
        return fail_parse(p, 413, "request_too_large",
                          "request body over the configured limit (max_body_bytes)");
    c->body_counted += n;
    c->hs->body_bytes += n;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct ax_conn *c = p->data;

    c->cur->keep_alive = llhttp_should_keep_alive(p);
    /* Pause: the next pipelined message is parsed only when this one is answered. */
    return HPE_PAUSED;
}

static void init_parser_settings(void)
{
    if (parser_settings_ready)
        return;
    llhttp_settings_init(&parser_settings);
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_url_complete = on_url_complete;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_header_value_complete = on_header_value_complete;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;
    parser_settings_ready = 1;
}

/* ---- writing ------------------------------------------------------------------------ */

static void on_write_done(uv_write_t *w, int status)
{
    struct conn_write *cw = (struct conn_write *)w;
    struct ax_conn *c = cw->conn;

    c->queued -= cw->len;
    free(cw);
    if (status < 0) {
        AX_LOG_DEBUG(c->active, "client write failed: %s", uv_strerror(status));
        conn_close(c);
        return;
    }
    c->last_progress_ms = uv_now(c->hs->loop);
    c->progress_mark = c->tcp.write_queue_size;
    if (c->closing)
        return;
    if (c->active && c->active->on_drain && c->queued <= c->hs->limits.write_low_water)
        c->active->on_drain(c->active);
    if (c->queued == 0 && c->close_after_write) {
        conn_end(c);
        return;
    }
    conn_arm_timer(c);
}

/* Writes bufs in order: as much as the socket takes now, the rest copied into one queued
 * write. Returns 0, or AX_ECANCELED when the connection is closing. */
static int conn_write(struct ax_conn *c, uv_buf_t *bufs, unsigned int nbufs)
{
    size_t total = 0, done = 0, off;
    struct conn_write *cw;
    unsigned int i;
    int n;

    if (c->closing || c->lingering)
        return AX_ECANCELED;
    for (i = 0; i < nbufs; i++)
        total += bufs[i].len;
    if (total == 0)
        return 0;
    if (c->queued == 0) {
        n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
        if (n > 0)
            done = (size_t)n;
        else if (n < 0 && n != UV_EAGAIN) {
            conn_close(c);
            return AX_ECANCELED;
        }
        if (done == total) {
            c->last_progress_ms = uv_now(c->hs->loop);
            return 0;
        }
    }
    cw = malloc(sizeof(*cw) + total - done);
    if (cw == NULL) {
        conn_close(c);
        return AX_ENOMEM;
    }
    cw->conn = c;
    cw->len = total - done;
    off = 0;
    for (i = 0; i < nbufs; i++) {
        size_t len = bufs[i].len, skip = 0;
        if (done >= len) {
            done -= len;
            continue;
        }
        skip = done;
        done = 0;
        memcpy(cw->data + off, bufs[i].base + skip, len - skip);
        off += len - skip;
    }
    {
        uv_buf_t b = uv_buf_init(cw->data, (unsigned int)cw->len);
        int rc = uv_write(&cw->w, (uv_stream_t *)&c->tcp, &b, 1, on_write_done);
        if (rc < 0) {
            free(cw);
            conn_close(c);
            return AX_ECANCELED;
        }
    }
    if (c->queued == 0) {
        c->last_progress_ms = uv_now(c->hs->loop);
        c->progress_mark = c->tcp.write_queue_size;
    }
    c->queued += cw->len;
    if (c->queued == cw->len)
        conn_arm_timer(c); /* the queue began now; later writes leave the stall clock alone */
    return 0;
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 529:
        return "Overloaded";
    default:
        return status < 400 ? "OK" : "Error";
    }
}

static int write_head(struct ax_req *req, int status, const char *content_type, const char *extra,
                      long long content_length, const char *body, size_t body_len)
{
    struct ax_conn *c = req->conn;
    char head[1024];
    int n, keep = req->keep_alive && !c->hs->_draining;
    uv_buf_t bufs[3];
    unsigned int nb = 0;

    n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n", status, status_text(status));
    if (content_type)
        n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Type: %s\r\n", content_type);
    if (content_length >= 0)
        n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Length: %lld\r\n",
                      content_length);
    else
        n += snprintf(head + n, sizeof(head) - (size_t)n, "Transfer-Encoding: chunked\r\n");
    n += snprintf(head + n, sizeof(head) - (size_t)n, "request-id: %s\r\n%sConnection: %s\r\n",
                  req->id, req->resp_headers, keep ? "keep-alive" : "close");
    if ((size_t)n >= sizeof(head))
        return AX_EINVAL;
    if (!keep) {
        req->keep_alive = 0;
    }
    bufs[nb++] = uv_buf_init(head, (unsigned int)n);
    if (extra && *extra)
        bufs[nb++] = uv_buf_init((char *)extra, (unsigned int)strlen(extra));
    /* the blank line goes with the body so that small answers take one write */
    {
        static char crlf[] = "\r\n";
        bufs[nb++] = uv_buf_init(crlf, 2);
    }
    req->status = status;
    req->headers_sent = 1;
    if (body_len > 0 && req->method != HTTP_HEAD) {
        uv_buf_t all[4];
        unsigned int i;
        for (i = 0; i < nb; i++)
            all[i] = bufs[i];
        all[nb] = uv_buf_init((char *)body, (unsigned int)body_len);
        return conn_write(c, all, nb + 1);
    }
    return conn_write(c, bufs, nb);
}

/* The response is complete: release the connection for the next pipelined request. That
 * one is parsed from the loop (conn_on_resume), never from inside this answer's send, or
 * by conn_parse's own loop once the handler it called returns. */
static void finish(struct ax_req *req)
{
    struct ax_conn *c = req->conn;

    req->finished = 1;
    if (c == NULL)
        return;
    if (c->active == req) {
        c->active = NULL;
        c->hs->n_active--;
        req->conn = NULL;
        conn_release_body(c);
        if (!req->keep_alive || c->hs->_draining) {
            c->close_after_write = 1;
            if (c->queued == 0)
                conn_end(c);
        } else if (!c->in_parse && c->in.len > 0) {
            uv_idle_start(&c->resume, conn_on_resume);
        }
        conn_arm_timer(c);
        ax_req_unref(req);
    }
}

int ax_http_respond(struct ax_req *req, int status, const char *content_type,
                    const char *extra_headers, const char *body, size_t len)
{
    int rc;

    if (req->conn == NULL || req->headers_sent)
        return AX_ECANCELED;
    /* A failed write closes the connection, which drops its reference: req may have had no
     * other (a parse failure's answer), so hold one across the send. */
    ax_req_ref(req);
    rc = write_head(req, status, content_type, extra_headers, (long long)len, body, len);
    finish(req);
    ax_req_unref(req);
    return rc;
}

int ax_http_send_json(struct ax_req *req, int status, const cJSON *json)
{
    char *s = cJSON_PrintUnformatted(json);
    int rc;

    if (s == NULL)
        return AX_ENOMEM;
    rc = ax_http_respond(req, status, "application/json", NULL, s, strlen(s));
    cJSON_free(s);
    return rc;
}

int ax_http_send_error(struct ax_req *req, const struct ax_error *err)
{
    static const char fallback[] =
        "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"out of memory\"}}";
    char extra[64] = "", *body = NULL;
    int status = err->status ? err->status : 500, rc;
    const char *type = err->type ? err->type : ax_error_type_for_status(status);
    cJSON *root = cJSON_CreateObject(), *e;

    if (root != NULL && cJSON_AddStringToObject(root, "type", "error") != NULL &&
        (e = cJSON_AddObjectToObject(root, "error")) != NULL &&
        cJSON_AddStringToObject(e, "type", type) != NULL &&
        cJSON_AddStringToObject(e, "message", err->message) != NULL)
        body = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (err->retry_after > 0)
        snprintf(extra, sizeof(extra), "retry-after: %d\r\n", err->retry_after);
    if (req->conn)
        req->conn->hs->n_errors++;
    rc = ax_http_respond(req, status, "application/json", extra, body ? body : fallback,
                         body ? strlen(body) : sizeof(fallback) - 1);
    cJSON_free(body);
    return rc;
}

int ax_http_stream_begin(struct ax_req *req, int status, const char *content_type,
                         const char *extra_headers)
{
    if (req->conn == NULL || req->headers_sent)
        return AX_ECANCELED;
    req->chunked = 1;
    return write_head(req, status, content_type, extra_headers, -1, NULL, 0);
}

int ax_http_stream_write(struct ax_req *req, const char *data, size_t len)
{
    char size[24];
    uv_buf_t bufs[3];
    static char crlf[] = "\r\n";

    if (req->conn == NULL || !req->chunked || req->finished)
        return AX_ECANCELED;
    if (len == 0)
        return 0;
    bufs[0] = uv_buf_init(size, (unsigned int)snprintf(size, sizeof(size), "%zx\r\n", len));
    bufs[1] = uv_buf_init((char *)data, (unsigned int)len);
    bufs[2] = uv_buf_init(crlf, 2);
    return conn_write(req->conn, bufs, 3);
}

int ax_http_stream_end(struct ax_req *req)
{
    static char last[] = "0\r\n\r\n";
    uv_buf_t b = uv_buf_init(last, 5);
    int rc;

    if (req->conn == NULL || !req->chunked || req->finished)
        return AX_ECANCELED;
    ax_req_ref(req); /* as in ax_http_respond: a failed write may drop the connection's */
    rc = conn_write(req->conn, &b, 1);
    finish(req);
    ax_req_unref(req);
    return rc;
}

/* ---- the connection ------------------------------------------------------------------ */

static void conn_parse_failed(struct ax_conn *c, llhttp_errno_t e);

static void on_timer(uv_timer_t *t)
{
    struct ax_conn *c = t->data;

    if (c->lingering) {
        conn_close(c);
        return;
    }
    if (c->queued > 0) {
        if (c->tcp.write_queue_size < c->progress_mark) {
            /* the client took part of a queued write: progress, though no write completed */
            c->last_progress_ms = uv_now(c->hs->loop);
            c->progress_mark = c->tcp.write_queue_size;
            conn_arm_timer(c);
            return;
        }
        AX_LOG_WARN(c->active, "client made no write progress for %llu ms: cutting it off",
                    (unsigned long long)c->hs->limits.client_stall_timeout_ms);
    } else if (c->cur != NULL && c->active == NULL) {
        /* A request that never finishes arriving (a slow or stuck client) gets an answer
         * and the connection closes, rather than holding it for ever. */
        ax_error_set(&c->perr, 408, "invalid_request_error",
                     "the request did not arrive whole within %llu ms",
                     (unsigned long long)c->hs->limits.keepalive_timeout_ms);
        conn_parse_failed(c, HPE_USER);
        return;
    }
    conn_close(c);
}

/* Idle keep-alive: close after keepalive_timeout. A request arriving: it must be whole within
 * keepalive_timeout of its first byte. Bytes queued: close when the client has taken no bytes
 * for client_stall_timeout. A request in progress with nothing queued: no timer (the upstream
 * may think for minutes; pings keep streams alive). */
static void conn_arm_timer(struct ax_conn *c)
{
    const struct ax_http_limits *lim = &c->hs->limits;
    uint64_t ms = 0, now, spent;

    if (c->closing || c->lingering)
        return;
    if (c->queued > 0) {
        /* measured from the last bytes the client took, not from the last write queued
         * (pings queue writes too), and counting while the upstream is paused */
        now = uv_now(c->hs->loop);
        spent = now - c->last_progress_ms;
        ms = spent < lim->client_stall_timeout_ms ? lim->client_stall_timeout_ms - spent : 1;
    } else if (c->active == NULL && c->cur != NULL) {
        now = uv_now(c->hs->loop);
        spent = now - c->msg_start_ms;
        ms = spent < lim->keepalive_timeout_ms ? lim->keepalive_timeout_ms - spent : 1;
    } else if (c->active == NULL) {
        ms = lim->keepalive_timeout_ms;
    }
    if (ms > 0)
        uv_timer_start(&c->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&c->timer);
}

static void conn_free(struct ax_conn *c)
{
    if (c->cur)
        ax_req_unref(c->cur);
    ax_buf_free(&c->in);
    ax_buf_free(&c->field);
    ax_buf_free(&c->value);
    free(c);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct ax_conn *c = h->data;
    struct ax_http_callbacks cbs = c->hs->cbs;

    if (--c->pending_closes == 0) {
        conn_free(c);
        if (cbs.on_closed)
            cbs.on_closed(cbs.ud);
    }
}

static void conn_close(struct ax_conn *c)
{
    struct ax_req *active;

    if (c->closing)
        return;
    c->closing = 1;
    conn_release_body(c);
    addr_release(c);
    if (c->lingering)
        c->hs->_n_lingering--;
    if ((active = c->active) != NULL) {
        c->active = NULL;
        c->hs->n_active--;
        active->conn = NULL;
        ax_req_cancel(active);
        ax_req_unref(active);
    }
    ax_list_unlink(&c->link);
    c->hs->n_conns--;
    c->pending_closes = 3;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->resume, on_conn_handle_closed);
}

static void on_shutdown(uv_shutdown_t *sd, int status)
{
    struct ax_conn *c = sd->data;

    if (status < 0 && status != UV_ECANCELED)
        conn_close(c); /* the peer is gone already */
}

/* The answer is out: shut our side and drop what the client still sends, until it closes
 * or the linger is over. Closing with unread input would send a reset, and the client could
 * lose the answer before reading it. */
static void conn_linger(struct ax_conn *c)
{
    if (c->closing || c->lingering)
        return;
    if (c->hs->_n_lingering >= AX_HTTP_LINGERING_MAX || c->hs->_draining) {
        conn_close(c);
        return;
    }
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    c->lingering = 1;
    c->hs->_n_lingering++;
    addr_release(c);
    uv_idle_stop(&c->resume);
    ax_buf_free(&c->in);
    if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = 1;
    uv_timer_start(&c->timer, on_timer, AX_LINGER_MS, 0);
}

/* The last answer of the connection is out. */
static void conn_end(struct ax_conn *c)
{
    if (c->linger)
        conn_linger(c);
    else
        conn_close(c);
}

/* Answers a parse failure (or a refusal): the message is unusable, so close after the
 * answer, lingering since the client may still be sending it. */
static void conn_parse_failed(struct ax_conn *c, llhttp_errno_t e)
{
    struct ax_req *r = c->cur;

    if (c->perr.status == 0)
        ax_error_set(&c->perr, 400, "invalid_request_error", "malformed HTTP request: %s",
                     llhttp_get_error_reason(&c->parser) ? llhttp_get_error_reason(&c->parser)
                                                         : llhttp_errno_name(e));
    if (r == NULL) {
        r = ax_req_new(c->hs->reqs, c, 0);
        if (r == NULL) {
            conn_close(c);
            return;
        }
    }
    c->cur = NULL;
    r->keep_alive = 0;
    c->linger = 1;
    c->active = r;
    c->hs->n_active++;
    AX_LOG_INFO(r, "bad request: %s", c->perr.message);
    ax_http_send_error(r, &c->perr);
}

/* Parses buffered input until a message is complete (then hands it to on_request) or input
 * runs out. Parsing waits while a request is being answered; a request answered before
 * on_request returns lets the loop go on to the next one. */
static void conn_parse(struct ax_conn *c)
{
    c->in_parse = 1;
    while (!c->closing && !c->lingering && c->active == NULL && c->in.len > 0) {
        llhttp_errno_t e = llhttp_execute(&c->parser, c->in.data, c->in.len);
        struct ax_req *r;
        size_t used;
        if (e == HPE_OK) {
            ax_buf_free(&c->in); /* all parsed: hold no read buffer while idle or answering */
            break;
        }
        if (e != HPE_PAUSED) {
            conn_parse_failed(c, e);
            break;
        }
        used = (size_t)(llhttp_get_error_pos(&c->parser) - c->in.data);
        if (used >= c->in.len)
            ax_buf_free(&c->in);
        else
            ax_buf_consume(&c->in, used);
        llhttp_resume(&c->parser);
        c->active = r = c->cur;
        c->cur = NULL;
        c->hs->n_active++;
        uv_timer_stop(&c->timer);
        ax_req_ref(r); /* the handler may answer at once: r outlives the call */
        c->hs->cbs.on_request(r, c->hs->cbs.ud);
        ax_req_unref(r);
    }
    c->in_parse = 0;
    if (!c->closing && !c->lingering) {
        if (!c->reading && c->in.len < AX_MAX_PENDING_INPUT &&
            uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
        conn_arm_timer(c);
    }
}

static void conn_on_resume(uv_idle_t *h)
{
    struct ax_conn *c = h->data;

    uv_idle_stop(h);
    if (!c->closing && !c->lingering && c->active == NULL)
        conn_parse(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct ax_conn *c = h->data;

    (void)suggested;
    if (c->lingering)
        ax_buf_reset(&c->in); /* dropped: one buffer, reused */
    if (ax_buf_reserve(&c->in, 65536) < 0) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = c->in.data + c->in.len;
    buf->len = c->in.cap - c->in.len - 1;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct ax_conn *c = s->data;

    (void)buf;
    if (n < 0) {
        if (n != UV_EOF)
            AX_LOG_DEBUG(c->active, "client read error: %s", uv_strerror((int)n));
        conn_close(c);
        return;
    }
    if (n == 0)
        return;
    if (c->lingering) {
        c->discarded += (size_t)n;
        if (c->discarded > AX_LINGER_MAX_BYTES)
            conn_close(c);
        return;
    }
    c->in.len += (size_t)n;
    c->in.data[c->in.len] = '\0';
    if (c->active == NULL) {
        conn_parse(c);
    } else if (c->in.len >= AX_MAX_PENDING_INPUT) {
        uv_read_stop(s); /* too much pipelined input: let TCP push back */
        c->reading = 0;
    }
}

/* Why a new connection is refused (in perr), or 0 to admit it, counted in its address. */
static int conn_admit(struct ax_conn *c)
{
    struct ax_http_server *hs = c->hs;
    const struct ax_http_limits *lim = &hs->limits;
    struct addr_count *a;

    /* c is counted in n_conns already; lingering ones are on their way out */
    if (lim->max_connections > 0 && hs->n_conns - 1 - hs->_n_lingering >= lim->max_connections)
        return ax_error_set(&c->perr, 503, "overloaded_error",
                            "too many connections (max_connections %d): retry later",
                            lim->max_connections);
    if ((a = addr_find(hs, &c->tcp)) != NULL) {
        if (a->n >= lim->max_connections_per_client) {
            addr_put(a); /* freed if just created for this one */
            return ax_error_set(&c->perr, 429, "rate_limit_error",
                                "too many connections from this address "
                                "(max_connections_per_client %d): retry later",
                                lim->max_connections_per_client);
        }
        a->n++;
        c->addr = a;
    }
    return 0;
}

int ax_http_accept(struct ax_http_server *hs, uv_stream_t *listener)
{
    struct ax_conn *c = calloc(1, sizeof(*c));
    int rc;

    if (c == NULL)
        return AX_ENOMEM;
    init_parser_settings();
    c->hs = hs;
    ax_buf_init(&c->in, AX_MAX_PENDING_INPUT + 65536);
    ax_buf_init(&c->field, hs->limits.max_header_bytes);
    ax_buf_init(&c->value, hs->limits.max_header_bytes);
    uv_tcp_init(hs->loop, &c->tcp);
    uv_timer_init(hs->loop, &c->timer);
    uv_idle_init(hs->loop, &c->resume);
    c->tcp.data = c;
    c->timer.data = c;
    c->resume.data = c;
    ax_list_push_front(&hs->_conns, &c->link);
    hs->n_conns++;
    if ((rc = uv_accept(listener, (uv_stream_t *)&c->tcp)) < 0) {
        conn_close(c);
        return AX_EIO;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    if (conn_admit(c) < 0) {
        /* Answered rather than dropped, so the client knows to come back later. */
        c->perr.retry_after = AX_RETRY_AFTER_S;
        hs->n_refused++;
        conn_parse_failed(c, HPE_USER);
        return 0;
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        conn_close(c);
        return AX_EIO;
    }
    c->reading = 1;
    conn_arm_timer(c);
    return 0;
}

void ax_http_close_all(struct ax_http_server *hs, int graceful)
{
    struct ax_list *n, *next;

    hs->_draining = 1;
    AX_LIST_FOREACH_SAFE(n, next, &hs->_conns)
    {
        struct ax_conn *c = AX_LIST_ENTRY(n, struct ax_conn, link);
        if (!graceful || (c->active == NULL && c->queued == 0))
            conn_close(c);
        else
            c->close_after_write = 1;
    }
}
