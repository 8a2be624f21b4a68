/* test_upstream.c - the upstream client against a tiny HTTP server on the same uv loop.
 *
 * The server reads one request at a time, records it, and answers by path: fixed JSON,
 * chunked SSE in timed pieces, 503, reset mid-body, held open, never answered, and
 * llama-server's /props, /slots and /v1/models (bodies from tests/fixtures/llama-server). */
#include "anthroxy_buf.h"
#include "anthroxy_error.h"
#include "anthroxy_log.h"
#include "anthroxy_upstream.h"
#include "ax_test.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* A check after which the test cannot go on meaningfully. */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: required check failed: %s\n", __FILE__, __LINE__, #cond);      \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* ---- the test server ---- */

#define SRV_MAX_REQ 64
#define SRV_MAX_CONN 32

struct srv_req {
    char method[16];
    char path[256];
    char *headers; /* the raw header block */
    char *body;
    size_t body_len;
};

struct srv;

struct srv_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct srv *srv;
    struct ax_buf in;
    int open;        /* not yet closing */
    int peer_closed; /* EOF or error from the client */
    int busy;        /* answering a request */
    int holding;     /* /hold: waiting for srv_release */
    int step;        /* SSE pieces sent */
    int pending_closes;
};

struct srv {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int closing, pending_closes;
    struct srv_req req[SRV_MAX_REQ];
    int nreq;
    struct srv_conn *conns[SRV_MAX_CONN];
    int nconn;
    int peer_closes;
    int sse_pieces_sent;
    int props_mode; /* 0 loading (503), 1 fixture /props, 2 /props without n_ctx, 3 404 */
};

#define SSE_PIECES 12
#define SSE_BIG 40000

/* The SSE answer, piece by piece; piece 5 is big so curl splits and reassembles it. */
static void sse_piece(int i, struct ax_buf *out)
{
    int k;

    ax_buf_reset(out);
    if (i == 5) {
        ax_buf_puts(out, "data: {\"big\":\"");
        for (k = 0; k < SSE_BIG; k++)
            ax_buf_append(out, &"abcdefghijklmnopqrstuvwxyz0123456789"[k % 36], 1);
        ax_buf_puts(out, "\"}\n\n");
    } else {
        ax_buf_printf(out, "data: {\"i\":%d,\"text\":\"piece %d\"}\n\n", i, i);
    }
}

static char *sse_expected(size_t *len)
{
    struct ax_buf all, one;
    int i;

    ax_buf_init(&all, 1 << 20);
    ax_buf_init(&one, 1 << 20);
    for (i = 0; i < SSE_PIECES; i++) {
        sse_piece(i, &one);
        ax_buf_append(&all, one.data, one.len);
    }
    ax_buf_free(&one);
    return ax_buf_take(&all, len);
}

static char *read_fixture_body(const char *name)
{
    char path[512];
    char *text, *out;
    cJSON *j;

    snprintf(path, sizeof(path), "%s/llama-server/%s", AX_FIXTURES, name);
    REQUIRE((text = ax_test_read_file(path, NULL)) != NULL);
    REQUIRE((j = cJSON_Parse(text)) != NULL);
    out = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "body"));
    cJSON_Delete(j);
    free(text);
    return out;
}

static void srv_on_write(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
    free(w);
}

static void srv_send(struct srv_conn *c, const char *p, size_t n)
{
    uv_write_t *w;
    uv_buf_t b;

    if (!c->open)
        return;
    w = malloc(sizeof(*w));
    w->data = malloc(n ? n : 1);
    memcpy(w->data, p, n);
    b = uv_buf_init(w->data, (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, srv_on_write) < 0) {
        free(w->data);
        free(w);
    }
}

static void srv_sendf(struct srv_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void srv_sendf(struct srv_conn *c, const char *fmt, ...)
{
    struct ax_buf b;
    va_list ap;

    ax_buf_init(&b, 1 << 22);
    va_start(ap, fmt);
    ax_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    srv_send(c, b.data, b.len);
    ax_buf_free(&b);
}

static void srv_send_json(struct srv_conn *c, int status, const char *extra, const char *body)
{
    srv_sendf(c,
              "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n%sContent-Length: %zu\r\n\r\n%s",
              status, extra, strlen(body), body);
    c->busy = 0;
}

static void srv_send_chunk(struct srv_conn *c, const char *p, size_t n)
{
    srv_sendf(c, "%zx\r\n", n);
    srv_send(c, p, n);
    srv_send(c, "\r\n", 2);
}

static void conn_on_close(uv_handle_t *h)
{
    struct srv_conn *c = h->data;

    if (--c->pending_closes == 0) {
        ax_buf_free(&c->in);
        free(c);
    }
}

static void srv_on_close(uv_handle_t *h)
{
    struct srv *s = h->data;

    s->pending_closes--;
}

static void conn_close(struct srv_conn *c, int reset)
{
    struct srv *s = c->srv;
    int i;

    if (!c->open)
        return;
    c->open = 0;
    for (i = 0; i < s->nconn; i++)
        if (s->conns[i] == c)
            s->conns[i] = NULL;
    c->pending_closes = 2;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_on_close);
    if (reset)
        uv_tcp_close_reset(&c->tcp, conn_on_close);
    else
        uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

static void sse_on_timer(uv_timer_t *t)
{
    struct srv_conn *c = t->data;
    struct ax_buf piece;

    ax_buf_init(&piece, 1 << 20);
    sse_piece(c->step++, &piece);
    srv_send_chunk(c, piece.data, piece.len);
    ax_buf_free(&piece);
    c->srv->sse_pieces_sent++;
    if (c->step == SSE_PIECES) {
        srv_send(c, "0\r\n\r\n", 5);
        c->busy = 0;
        return;
    }
    uv_timer_start(&c->timer, sse_on_timer, 3, 0);
}

static void reset_on_timer(uv_timer_t *t)
{
    conn_close(t->data, 1);
}

static void srv_answer(struct srv_conn *c, struct srv_req *r)
{
    struct srv *s = c->srv;
    const char *p = r->path;
    char *body;

    c->busy = 1;
    if (strcmp(p, "/v1/chat/completions") == 0 || strcmp(p, "/json") == 0) {
        char echo[128];
        snprintf(echo, sizeof(echo), "{\"ok\":true,\"got\":%zu}", r->body_len);
        srv_send_json(c, 200, "", echo);
    } else if (strcmp(p, "/health") == 0) {
        srv_send_json(c, 200, "", "{\"status\":\"ok\"}");
    } else if (strcmp(p, "/sse") == 0) {
        srv_sendf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n");
        c->step = 0;
        uv_timer_start(&c->timer, sse_on_timer, 3, 0);
    } else if (strcmp(p, "/503") == 0) {
        srv_send_json(c, 503, "Retry-After: 7\r\n",
                      "{\"error\":{\"code\":503,\"message\":\"Loading model\","
                      "\"type\":\"unavailable_error\"}}");
    } else if (strcmp(p, "/reset") == 0) {
        srv_sendf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n\r\n{\"partial\":\"");
        uv_timer_start(&c->timer, reset_on_timer, 20, 0);
    } else if (strcmp(p, "/hold") == 0) {
        srv_sendf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n");
        srv_send_chunk(c, "data: first\n\n", 13);
        c->holding = 1;
    } else if (strcmp(p, "/hang") == 0) {
        /* never answers */
    } else if (strcmp(p, "/props") == 0) {
        if (s->props_mode == 0) {
            srv_send_json(c, 503, "",
                          "{\"error\":{\"code\":503,\"message\":\"Loading model\","
                          "\"type\":\"unavailable_error\"}}");
        } else if (s->props_mode == 1) {
            body = read_fixture_body("props.json");
            srv_send_json(c, 200, "", body);
            free(body);
        } else if (s->props_mode == 2) {
            srv_send_json(c, 200, "", "{\"default_generation_settings\":{\"params\":{}}}");
        } else {
            srv_send_json(c, 404, "", "{\"error\":\"not found\"}");
        }
    } else if (strcmp(p, "/slots") == 0) {
        if (s->props_mode == 3) {
            srv_send_json(c, 404, "", "{}");
        } else {
            body = read_fixture_body("slots.json");
            srv_send_json(c, 200, "", body);
            free(body);
        }
    } else if (strcmp(p, "/v1/models") == 0) {
        if (s->props_mode == 0) {
            srv_send_json(c, 503, "", "{\"error\":{\"code\":503}}");
        } else if (s->props_mode == 3) {
            srv_send_json(c, 200, "",
                          "{\"object\":\"list\",\"data\":[{\"id\":\"qwen-vllm\","
                          "\"max_model_len\":32768}]}");
        } else {
            body = read_fixture_body("v1_models.json");
            srv_send_json(c, 200, "", body);
            free(body);
        }
    } else {
        srv_send_json(c, 404, "", "{\"error\":\"no such path\"}");
    }
}

/* Releases every held /hold answer (index -1) or the held one on the given connection. */
static void srv_release(struct srv *s, int which)
{
    int i, n = 0;
    struct srv_conn *c;

    for (i = 0; i < s->nconn; i++) {
        if ((c = s->conns[i]) == NULL || !c->holding)
            continue;
        if (which < 0 || n++ == which) {
            c->holding = 0;
            srv_send_chunk(c, "data: last\n\n", 12);
            srv_send(c, "0\r\n\r\n", 5);
            c->busy = 0;
            if (which >= 0)
                return;
        }
    }
}

static size_t header_content_length(const char *h, size_t n)
{
    size_t i;

    for (i = 0; i + 15 < n; i++)
        if ((i == 0 || h[i - 1] == '\n') && strncasecmp(h + i, "content-length:", 15) == 0)
            return (size_t)strtoul(h + i + 15, NULL, 10);
    return 0;
}

static void srv_try_parse(struct srv_conn *c)
{
    struct srv *s = c->srv;
    struct srv_req *r;
    char *end;
    size_t hlen, blen;

    while (!c->busy && c->in.len > 0) {
        if ((end = strstr(c->in.data, "\r\n\r\n")) == NULL)
            return;
        hlen = (size_t)(end - c->in.data) + 4;
        blen = header_content_length(c->in.data, hlen);
        if (c->in.len < hlen + blen)
            return;
        REQUIRE(s->nreq < SRV_MAX_REQ);
        r = &s->req[s->nreq++];
        sscanf(c->in.data, "%15s %255s", r->method, r->path);
        r->headers = malloc(hlen + 1);
        memcpy(r->headers, c->in.data, hlen);
        r->headers[hlen] = '\0';
        r->body = malloc(blen + 1);
        memcpy(r->body, c->in.data + hlen, blen);
        r->body[blen] = '\0';
        r->body_len = blen;
        ax_buf_consume(&c->in, hlen + blen);
        srv_answer(c, r);
    }
}

static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(hint);
    b->len = hint;
}

static void conn_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct srv_conn *c = st->data;

    if (n < 0) {
        c->peer_closed = 1;
        c->srv->peer_closes++;
        conn_close(c, 0);
    } else if (n > 0) {
        ax_buf_append(&c->in, b->base, (size_t)n);
        srv_try_parse(c);
    }
    free(b->base);
}

static void srv_on_conn(uv_stream_t *l, int status)
{
    struct srv *s = l->data;
    struct srv_conn *c;

    REQUIRE(status == 0);
    c = calloc(1, sizeof(*c));
    c->srv = s;
    c->open = 1;
    ax_buf_init(&c->in, 1 << 22);
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    REQUIRE(uv_accept(l, (uv_stream_t *)&c->tcp) == 0);
    REQUIRE(s->nconn < SRV_MAX_CONN);
    s->conns[s->nconn++] = c;
    uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read);
}

static void srv_start(struct srv *s, uv_loop_t *loop)
{
    struct sockaddr_in a;
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->props_mode = 1;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    uv_ip4_addr("127.0.0.1", 0, &a);
    REQUIRE(uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0) == 0);
    REQUIRE(uv_listen((uv_stream_t *)&s->listener, 64, srv_on_conn) == 0);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    s->pending_closes = 1;
}

static void srv_stop(struct srv *s)
{
    int i;

    for (i = 0; i < s->nconn; i++)
        if (s->conns[i] != NULL)
            conn_close(s->conns[i], 0);
    uv_close((uv_handle_t *)&s->listener, srv_on_close);
    for (i = 0; i < s->nreq; i++) {
        free(s->req[i].headers);
        free(s->req[i].body);
    }
}

static int srv_count_path(const struct srv *s, const char *path)
{
    int i, n = 0;

    for (i = 0; i < s->nreq; i++)
        n += strcmp(s->req[i].path, path) == 0;
    return n;
}

static int has_header(const char *headers, const char *name)
{
    size_t n = strlen(name);
    const char *p;

    for (p = strstr(headers, "\r\n"); p != NULL; p = strstr(p + 2, "\r\n"))
        if (strncasecmp(p + 2, name, n) == 0 && p[2 + n] == ':')
            return 1;
    return 0;
}

/* ---- loop helpers ---- */

static int watchdog_fired;

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    watchdog_fired = 1;
}

/* Runs the loop until *flag >= want, at most ms milliseconds; returns 1 when reached. */
static int run_until(uv_loop_t *loop, const int *flag, int want, uint64_t ms)
{
    uv_timer_t wd;

    watchdog_fired = 0;
    uv_timer_init(loop, &wd);
    uv_timer_start(&wd, on_watchdog, ms, 0);
    while (*flag < want && !watchdog_fired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&wd, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag >= want;
}

static int closed_count;

static void on_up_closed(void *ud)
{
    (void)ud;
    closed_count++;
}

static uv_loop_t *loop_new(void)
{
    uv_loop_t *loop = malloc(sizeof(*loop));

    REQUIRE(uv_loop_init(loop) == 0);
    return loop;
}

/* Closes the upstream and the server and checks the loop ends with nothing left open. */
static void finish(uv_loop_t *loop, struct ax_upstream *up, struct srv *s)
{
    int before = closed_count;

    if (up != NULL) {
        ax_upstream_close(up, on_up_closed, NULL);
        CHECK(run_until(loop, &closed_count, before + 1, 2000));
    }
    if (s != NULL)
        srv_stop(s);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(loop) == 0);
    free(loop);
}

static struct ax_upstream *up_new(uv_loop_t *loop, const struct srv *s, const char *suffix,
                                  struct ax_upstream_opts *o)
{
    static char url[128];
    struct ax_upstream *up = NULL;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", s != NULL ? s->port : 1, suffix);
    o->base_url = url;
    REQUIRE(ax_upstream_new(loop, o, &up) == 0);
    return up;
}

/* ---- a recording transfer ---- */

struct rec {
    struct ax_buf data;
    int status, retry_after, headers_calls, data_calls, done_calls, rc;
    int pause_every_other; /* return AX_EAGAIN on every other on_data */
    int resume_inside;     /* call ax_xfer_resume before returning AX_EAGAIN */
    int pauses;
    int pause_ms;       /* resume the first pause from a timer after this long */
    int cancel_on_data; /* cancel from inside the first on_data */
    int fail_headers;   /* on_headers returns AX_EINVAL */
    int fail_data;      /* on_data returns AX_EIO */
    int in_cancel;      /* set around an outside ax_xfer_cancel call */
    int done_inside_cancel;
    int done_inside_start;
    int in_start;
    int first_data_pieces; /* server pieces sent when the first bytes arrived */
    struct srv *srv;
    uv_timer_t resume_timer;
    int timer_init;
    struct ax_xfer *x;
    uint64_t done_at;
    uv_loop_t *loop;
};

static void rec_init(struct rec *r, uv_loop_t *loop, struct srv *s)
{
    memset(r, 0, sizeof(*r));
    ax_buf_init(&r->data, 1 << 22);
    r->loop = loop;
    r->srv = s;
    r->rc = 1;
}

static void rec_free(struct rec *r)
{
    ax_buf_free(&r->data);
    if (r->timer_init)
        uv_close((uv_handle_t *)&r->resume_timer, NULL);
}

static int rec_on_headers(struct ax_xfer *x, int status, int retry_after, void *ud)
{
    struct rec *r = ud;

    (void)x;
    r->headers_calls++;
    r->status = status;
    r->retry_after = retry_after;
    return r->fail_headers ? AX_EINVAL : 0;
}

static void rec_on_resume_timer(uv_timer_t *t)
{
    struct rec *r = t->data;

    ax_xfer_resume(r->x);
}

static int rec_on_data(struct ax_xfer *x, const char *p, size_t n, void *ud)
{
    struct rec *r = ud;

    r->x = x;
    if (r->data_calls++ == 0 && r->srv != NULL)
        r->first_data_pieces = r->srv->sse_pieces_sent;
    CHECK(r->headers_calls == 1); /* headers always come first */
    if (r->fail_data)
        return AX_EIO;
    if (r->cancel_on_data) {
        ax_xfer_cancel(x);
        ax_xfer_cancel(x); /* idempotent */
        return 0;
    }
    if (r->pause_every_other && r->data_calls % 2 == 1) {
        r->pauses++;
        if (r->resume_inside) {
            ax_xfer_resume(x);
        } else {
            if (!r->timer_init) {
                uv_timer_init(r->loop, &r->resume_timer);
                r->resume_timer.data = r;
                r->timer_init = 1;
            }
            uv_timer_start(&r->resume_timer, rec_on_resume_timer,
                           r->pauses == 1 ? (uint64_t)r->pause_ms : 0, 0);
        }
        return AX_EAGAIN;
    }
    CHECK(ax_buf_append(&r->data, p, n) == 0);
    return 0;
}

static void rec_on_done(struct ax_xfer *x, int rc, void *ud)
{
    struct rec *r = ud;

    (void)x;
    r->done_calls++;
    r->rc = rc;
    r->done_at = uv_now(r->loop);
    if (r->in_cancel)
        r->done_inside_cancel = 1;
    if (r->in_start)
        r->done_inside_start = 1;
}

static const struct ax_xfer_cbs rec_cbs = {rec_on_headers, rec_on_data, rec_on_done, NULL};

static struct ax_xfer *rec_start(struct ax_upstream *up, struct rec *r, const char *method,
                                 const char *path, const char *body, int *rc_out)
{
    struct ax_xfer_spec spec = {method, path, body, body ? strlen(body) : 0, 0, NULL};
    struct ax_xfer *x = NULL;
    int rc;

    r->in_start = 1;
    rc = ax_upstream_start(up, &spec, &rec_cbs, r, &x);
    r->in_start = 0;
    if (rc_out != NULL)
        *rc_out = rc;
    else
        CHECK(rc == 0);
    r->x = x;
    return x;
}

/* ---- tests ---- */

static void test_post_and_reuse(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct rec r1, r2;
    const char *body = "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    struct srv_req *q;

    srv_start(&s, loop);
    o.api_key = "sk-upstream-123";
    up = up_new(loop, &s, "/v1", &o);
    rec_init(&r1, loop, &s);
    rec_start(up, &r1, "POST", "/v1/chat/completions", body, NULL);
    CHECK(r1.done_calls == 0);
    CHECK(run_until(loop, &r1.done_calls, 1, 3000));
    CHECK(r1.done_inside_start == 0);
    CHECK(r1.rc == 0);
    CHECK(r1.status == 200);
    CHECK(r1.headers_calls == 1);
    CHECK(r1.data.len > 0 && strstr(r1.data.data, "\"ok\":true") != NULL);
    REQUIRE(s.nreq == 1);
    q = &s.req[0];
    CHECK(strcmp(q->method, "POST") == 0);
    CHECK(strcmp(q->path, "/v1/chat/completions") == 0);
    CHECK(q->body_len == strlen(body) && memcmp(q->body, body, q->body_len) == 0);
    CHECK(strstr(q->headers, "\r\nAuthorization: Bearer sk-upstream-123\r\n") != NULL);
    CHECK(strstr(q->headers, "\r\nContent-Type: application/json\r\n") != NULL);
    CHECK(!has_header(q->headers, "expect"));

    /* a body larger than curl's buffers arrives whole and unchanged */
    {
        struct rec r3;
        struct ax_buf big;
        int i;

        ax_buf_init(&big, 1 << 22);
        ax_buf_puts(&big, "{\"messages\":[");
        for (i = 0; i < 3000; i++)
            ax_buf_printf(&big, "%s{\"role\":\"user\",\"content\":\"message number %d\"}",
                          i ? "," : "", i);
        ax_buf_puts(&big, "]}");
        rec_init(&r3, loop, &s);
        rec_start(up, &r3, "POST", "/v1/chat/completions", big.data, NULL);
        CHECK(run_until(loop, &r3.done_calls, 1, 3000));
        CHECK(r3.rc == 0 && r3.status == 200);
        REQUIRE(s.nreq == 2);
        CHECK(s.req[1].body_len == big.len && memcmp(s.req[1].body, big.data, big.len) == 0);
        CHECK(big.len > 100000);
        ax_buf_free(&big);
        rec_free(&r3);
    }

    /* a third request goes over the same kept-alive connection */
    rec_init(&r2, loop, &s);
    rec_start(up, &r2, "GET", "/health", NULL, NULL);
    CHECK(run_until(loop, &r2.done_calls, 1, 3000));
    CHECK(r2.rc == 0 && r2.status == 200);
    CHECK(s.nreq == 3 && strcmp(s.req[2].method, "GET") == 0);
    CHECK(s.nconn == 1);
    finish(loop, up, &s);
    rec_free(&r1);
    rec_free(&r2);
}

static void test_paths(void)
{
    static const struct {
        const char *base, *root;
    } cases[] = {
        {"http://h:1/v1", "http://h:1"},
        {"http://h:1/v1/", "http://h:1"},
        {"http://h:1", "http://h:1"},
        {"http://h:1/", "http://h:1"},
        {"http://h:1/api/v1", "http://h:1/api"},
        {"http://h:1/v1/v1", "http://h:1/v1"}, /* only ONE trailing /v1 */
        {"http://h:1/v10", "http://h:1/v10"},
    };
    static const char *const suffixes[] = {"/v1", "/v1/", "", "/"};
    uv_loop_t *loop = loop_new();
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct srv s;
    struct rec r;
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        o.base_url = cases[i].base;
        REQUIRE(ax_upstream_new(loop, &o, &up) == 0);
        if (strcmp(ax_upstream_root(up), cases[i].root) != 0) {
            fprintf(stderr, "root of %s: got %s, want %s\n", cases[i].base, ax_upstream_root(up),
                    cases[i].root);
            ax_test_failures++;
        }
        ax_upstream_close(up, NULL, NULL);
    }
    o.base_url = "ftp://h/v1";
    CHECK(ax_upstream_new(loop, &o, &up) == AX_EINVAL);
    uv_run(loop, UV_RUN_DEFAULT);

    srv_start(&s, loop);
    for (i = 0; i < 4; i++) {
        up = up_new(loop, &s, suffixes[i], &o);
        rec_init(&r, loop, &s);
        rec_start(up, &r, "GET", "/health", NULL, NULL);
        CHECK(run_until(loop, &r.done_calls, 1, 3000));
        CHECK(r.rc == 0 && r.status == 200);
        CHECK(s.nreq == (int)i + 1 && strcmp(s.req[i].path, "/health") == 0);
        rec_free(&r);
        ax_upstream_close(up, NULL, NULL);
    }
    finish(loop, NULL, &s);
}

static void test_sse_incremental(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct rec r;
    size_t len;
    char *want = sse_expected(&len);

    srv_start(&s, loop);
    up = up_new(loop, &s, "/v1", &o);
    rec_init(&r, loop, &s);
    rec_start(up, &r, "POST", "/sse", "{}", NULL);
    CHECK(run_until(loop, &r.done_calls, 1, 5000));
    CHECK(r.rc == 0 && r.status == 200);
    CHECK(r.data_calls >= SSE_PIECES);       /* one or more per timed piece */
    CHECK(r.first_data_pieces < SSE_PIECES); /* bytes arrived before the answer ended */
    CHECK(r.data.len == len && memcmp(r.data.data, want, len) == 0);
    free(want);
    rec_free(&r);
    finish(loop, up, &s);
}

static void test_pause_resume(int resume_inside, int pause_ms)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct rec r;
    size_t len;
    char *want = sse_expected(&len);

    srv_start(&s, loop);
    o.idle_timeout_ms = 100; /* shorter than the pauses: a paused transfer is not idle */
    up = up_new(loop, &s, "/v1", &o);
    rec_init(&r, loop, &s);
    r.pause_every_other = 1;
    r.resume_inside = resume_inside;
    r.pause_ms = pause_ms;
    rec_start(up, &r, "POST", "/sse", "{}", NULL);
    CHECK(run_until(loop, &r.done_calls, 1, 10000));
    CHECK(r.rc == 0);
    /* curl hands over what it kept at a pause in one piece, so fewer calls than pieces */
    if (r.pauses < 3) {
        fprintf(stderr, "pause/resume (inside=%d, ms=%d): %d pauses in %d calls\n", resume_inside,
                pause_ms, r.pauses, r.data_calls);
        ax_test_failures++;
    }
    if (r.data.len != len || memcmp(r.data.data, want, len) != 0) {
        fprintf(stderr, "pause/resume (inside=%d): got %zu bytes, want %zu\n", resume_inside,
                r.data.len, len);
        ax_test_failures++;
    }
    free(want);
    rec_free(&r);
    finish(loop, up, &s);
}

static void test_cap_and_queue(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct ax_upstream_stats st;
    struct rec r[4];
    struct ax_xfer *x[4];
    int i, rc, done;

    srv_start(&s, loop);
    o.max_concurrent = 2;
    o.queue_max = 1;
    up = up_new(loop, &s, "/v1", &o);
    for (i = 0; i < 4; i++)
        rec_init(&r[i], loop, &s);
    for (i = 0; i < 3; i++)
        x[i] = rec_start(up, &r[i], "GET", "/hold", NULL, NULL);
    x[3] = rec_start(up, &r[3], "GET", "/hold", NULL, &rc);
    CHECK(rc == AX_EBUSY && x[3] == NULL);
    CHECK(run_until(loop, &s.nreq, 2, 3000));
    /* give the third a chance to (wrongly) get through */
    CHECK(run_until(loop, &r[0].data_calls, 1, 3000));
    CHECK(run_until(loop, &r[1].data_calls, 1, 3000));
    uv_run(loop, UV_RUN_NOWAIT);
    CHECK(s.nreq == 2);
    CHECK(!ax_xfer_queued(x[0]) && !ax_xfer_queued(x[1]) && ax_xfer_queued(x[2]));
    ax_upstream_stats(up, &st);
    CHECK(st.running == 2 && st.queued == 1);

    srv_release(&s, 0); /* the first finishes: the third starts */
    CHECK(run_until(loop, &s.nreq, 3, 3000));
    CHECK(r[0].done_calls == 1 && r[0].rc == 0);
    CHECK(r[2].done_calls == 0);
    ax_upstream_stats(up, &st);
    CHECK(st.running == 2 && st.queued == 0);
    CHECK(strcmp(s.req[2].path, "/hold") == 0);
    CHECK(run_until(loop, &r[2].data_calls, 1, 3000));
    srv_release(&s, -1);
    done = 0;
    for (i = 0; i < 3; i++) {
        CHECK(run_until(loop, &r[i].done_calls, 1, 3000));
        done += r[i].rc == 0;
    }
    CHECK(done == 3);
    CHECK(r[3].done_calls == 0);
    for (i = 0; i < 4; i++)
        rec_free(&r[i]);
    finish(loop, up, &s);
}

/* Many streams at once over many sockets, half of them pausing: every byte, in order. */
static void test_many(void)
{
    enum { N = 30 };
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct rec *r = calloc(N, sizeof(*r));
    size_t len;
    char *want = sse_expected(&len);
    int i, ok = 0;

    srv_start(&s, loop);
    o.max_concurrent = 20; /* 10 wait in the queue */
    o.queue_max = N;
    up = up_new(loop, &s, "/v1", &o);
    for (i = 0; i < N; i++) {
        rec_init(&r[i], loop, &s);
        r[i].pause_every_other = i % 2;
        rec_start(up, &r[i], "POST", "/sse", "{}", NULL);
    }
    for (i = 0; i < N; i++) {
        CHECK(run_until(loop, &r[i].done_calls, 1, 10000));
        ok += r[i].rc == 0 && r[i].data.len == len && memcmp(r[i].data.data, want, len) == 0;
    }
    CHECK(ok == N);
    CHECK(s.nconn <= 20); /* connections are reused, never more than the cap */
    for (i = 0; i < N; i++)
        rec_free(&r[i]);
    free(r);
    free(want);
    finish(loop, up, &s);
}

static void on_cancel_timer(uv_timer_t *t)
{
    struct rec *r = t->data;

    r->in_cancel = 1;
    ax_xfer_cancel(r->x);
    ax_xfer_cancel(r->x);
    r->in_cancel = 0;
}

static void test_cancel(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct rec r1, r2, r3, r4, r5;
    uv_timer_t t;

    srv_start(&s, loop);
    o.max_concurrent = 2;
    o.queue_max = 4;
    up = up_new(loop, &s, "/v1", &o);

    /* from inside on_data */
    rec_init(&r1, loop, &s);
    r1.cancel_on_data = 1;
    rec_start(up, &r1, "POST", "/hold", "{}", NULL);
    CHECK(run_until(loop, &r1.done_calls, 1, 3000));
    CHECK(r1.rc == AX_ECANCELED);
    CHECK(r1.data_calls == 1);
    CHECK(run_until(loop, &s.peer_closes, 1, 3000)); /* the server saw the connection close */

    /* from outside any callback (a timer), after the first bytes */
    rec_init(&r2, loop, &s);
    rec_start(up, &r2, "POST", "/hold", "{}", NULL);
    CHECK(run_until(loop, &r2.data_calls, 1, 3000));
    uv_timer_init(loop, &t);
    t.data = &r2;
    uv_timer_start(&t, on_cancel_timer, 1, 0);
    CHECK(run_until(loop, &r2.done_calls, 1, 3000));
    CHECK(r2.rc == AX_ECANCELED && r2.done_inside_cancel == 0);
    CHECK(run_until(loop, &s.peer_closes, 2, 3000));

    /* two running ones (the cap), and a queued one cancelled before it ever ran */
    rec_init(&r3, loop, &s);
    rec_init(&r4, loop, &s);
    rec_init(&r5, loop, &s);
    rec_start(up, &r3, "GET", "/hang", NULL, NULL);
    rec_start(up, &r4, "GET", "/hang", NULL, NULL);
    CHECK(run_until(loop, &s.nreq, 4, 3000));
    rec_start(up, &r5, "GET", "/hang", NULL, NULL);
    CHECK(ax_xfer_queued(r5.x));
    r5.in_cancel = 1;
    ax_xfer_cancel(r5.x);
    r5.in_cancel = 0;
    CHECK(r5.done_calls == 0);
    CHECK(run_until(loop, &r5.done_calls, 1, 3000));
    CHECK(r5.rc == AX_ECANCELED && r5.headers_calls == 0 && r5.done_inside_cancel == 0);
    CHECK(s.nreq == 4);
    ax_xfer_cancel(r4.x);
    ax_xfer_cancel(r3.x);
    CHECK(run_until(loop, &r4.done_calls, 1, 3000));
    CHECK(run_until(loop, &r3.done_calls, 1, 3000));
    CHECK(r3.rc == AX_ECANCELED && r4.rc == AX_ECANCELED);
    CHECK(run_until(loop, &s.peer_closes, 4, 3000));
    CHECK(s.nreq == 4);
    uv_close((uv_handle_t *)&t, NULL);
    rec_free(&r1);
    rec_free(&r2);
    rec_free(&r3);
    rec_free(&r4);
    rec_free(&r5);
    finish(loop, up, &s);
}

static void test_callback_errors(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct rec r1, r2, r3;

    srv_start(&s, loop);
    up = up_new(loop, &s, "/v1", &o);
    rec_init(&r1, loop, &s);
    r1.fail_headers = 1;
    rec_start(up, &r1, "GET", "/hold", NULL, NULL);
    CHECK(run_until(loop, &r1.done_calls, 1, 3000));
    CHECK(r1.rc == AX_EINVAL && r1.headers_calls == 1 && r1.data_calls == 0);

    rec_init(&r2, loop, &s);
    r2.fail_data = 1;
    rec_start(up, &r2, "GET", "/hold", NULL, NULL);
    CHECK(run_until(loop, &r2.done_calls, 1, 3000));
    CHECK(r2.rc == AX_EIO && r2.data_calls == 1);
    CHECK(run_until(loop, &s.peer_closes, 2, 3000));

    /* resume of a transfer that is not paused changes nothing */
    rec_init(&r3, loop, &s);
    rec_start(up, &r3, "POST", "/sse", "{}", NULL);
    ax_xfer_resume(r3.x);
    CHECK(run_until(loop, &r3.done_calls, 1, 5000));
    CHECK(r3.rc == 0 && r3.data.len > SSE_BIG);
    rec_free(&r1);
    rec_free(&r2);
    rec_free(&r3);
    finish(loop, up, &s);
}

static void test_timeouts(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct ax_xfer_spec spec = {"GET", "/hang", NULL, 0, 150, NULL};
    struct rec r1, r2;
    uint64_t t0;

    srv_start(&s, loop);
    o.idle_timeout_ms = 100;
    up = up_new(loop, &s, "/v1", &o);
    rec_init(&r1, loop, &s);
    t0 = uv_now(loop);
    rec_start(up, &r1, "GET", "/hang", NULL, NULL);
    CHECK(run_until(loop, &r1.done_calls, 1, 3000));
    CHECK(r1.rc == AX_ETIMEDOUT);
    CHECK(r1.done_at - t0 >= 100 && r1.done_at - t0 < 1000);
    ax_upstream_close(up, NULL, NULL);

    /* the per-transfer total timeout, no idle timeout */
    o.idle_timeout_ms = 0;
    up = up_new(loop, &s, "/v1", &o);
    rec_init(&r2, loop, &s);
    t0 = uv_now(loop);
    CHECK(ax_upstream_start(up, &spec, &rec_cbs, &r2, NULL) == 0);
    CHECK(run_until(loop, &r2.done_calls, 1, 3000));
    CHECK(r2.rc == AX_ETIMEDOUT);
    CHECK(r2.done_at - t0 >= 140 && r2.done_at - t0 < 1000);
    rec_free(&r1);
    rec_free(&r2);
    finish(loop, up, &s);
}

static void test_connect_retry(void)
{
    uv_loop_t *loop = loop_new();
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct ax_upstream_stats st;
    struct rec r;
    uv_tcp_t probe;
    struct sockaddr_in a;
    struct sockaddr_storage ss;
    int len = sizeof(ss), port;
    char url[64];
    uint64_t t0;

    /* a port that was just free: bind, read it, close */
    uv_tcp_init(loop, &probe);
    uv_ip4_addr("127.0.0.1", 0, &a);
    REQUIRE(uv_tcp_bind(&probe, (const struct sockaddr *)&a, 0) == 0);
    uv_tcp_getsockname(&probe, (struct sockaddr *)&ss, &len);
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&probe, NULL);
    uv_run(loop, UV_RUN_DEFAULT);

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", port);
    o.base_url = url;
    o.connect_retries = 2;
    o.retry_delay_ms = 30;
    REQUIRE(ax_upstream_new(loop, &o, &up) == 0);
    rec_init(&r, loop, NULL);
    t0 = uv_now(loop);
    rec_start(up, &r, "POST", "/v1/chat/completions", "{}", NULL);
    CHECK(run_until(loop, &r.done_calls, 1, 5000));
    CHECK(r.rc == AX_EUPSTREAM);
    CHECK(r.headers_calls == 0 && r.data_calls == 0);
    ax_upstream_stats(up, &st);
    CHECK(st.connect_retries == 2);
    CHECK(r.done_at - t0 >= 30 + 60); /* backoff doubled */
    rec_free(&r);
    finish(loop, up, NULL);
}

/* A listener with a full accept queue drops SYNs, so connecting hangs: the connect timeout
 * fires before any byte was sent, which is retried like a refused connection. */
static void test_connect_timeout(void)
{
    uv_loop_t *loop = loop_new();
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct ax_upstream_stats st;
    struct rec r;
    int l, fill[4];
    struct sockaddr_in a;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int port, i;
    char url[64];
    uint64_t t0;

    /* plain sockets: libuv would accept on its own and so drain the queue */
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE((l = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
    REQUIRE(bind(l, (struct sockaddr *)&a, sizeof(a)) == 0);
    REQUIRE(listen(l, 0) == 0);
    REQUIRE(getsockname(l, (struct sockaddr *)&ss, &len) == 0);
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    a.sin_port = htons((uint16_t)port);
    for (i = 0; i < 4; i++) {
        REQUIRE((fill[i] = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
        fcntl(fill[i], F_SETFL, O_NONBLOCK);
        connect(fill[i], (struct sockaddr *)&a, sizeof(a)); /* EINPROGRESS once full */
    }
    {
        /* a kernel that still completes handshakes cannot make connecting hang: skip */
        struct pollfd pfd = {fill[3], POLLOUT, 0};
        if (poll(&pfd, 1, 100) == 1) {
            fprintf(stderr, "test_connect_timeout: skipped (the backlog does not drop SYNs)\n");
            for (i = 0; i < 4; i++)
                close(fill[i]);
            close(l);
            uv_loop_close(loop);
            free(loop);
            return;
        }
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", port);
    o.base_url = url;
    o.connect_timeout_ms = 100;
    o.connect_retries = 1;
    o.retry_delay_ms = 10;
    REQUIRE(ax_upstream_new(loop, &o, &up) == 0);
    rec_init(&r, loop, NULL);
    t0 = uv_now(loop);
    rec_start(up, &r, "POST", "/v1/chat/completions", "{}", NULL);
    CHECK(run_until(loop, &r.done_calls, 1, 5000));
    CHECK(r.rc == AX_ETIMEDOUT);
    ax_upstream_stats(up, &st);
    CHECK(st.connect_retries == 1);
    CHECK(r.done_at - t0 >= 2 * 100 + 10);
    rec_free(&r);
    for (i = 0; i < 4; i++)
        close(fill[i]);
    close(l);
    finish(loop, up, NULL);
}

static void test_statuses_and_reset(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct rec r1, r2;

    srv_start(&s, loop);
    o.connect_retries = 3; /* never used after the request was sent */
    o.retry_delay_ms = 10;
    up = up_new(loop, &s, "", &o);
    rec_init(&r1, loop, &s);
    rec_start(up, &r1, "POST", "/503", "{}", NULL);
    CHECK(run_until(loop, &r1.done_calls, 1, 3000));
    CHECK(r1.rc == 0 && r1.status == 503 && r1.retry_after == 7);
    CHECK(r1.data.len > 0 && strstr(r1.data.data, "Loading model") != NULL);

    rec_init(&r2, loop, &s);
    rec_start(up, &r2, "POST", "/reset", "{}", NULL);
    CHECK(run_until(loop, &r2.done_calls, 1, 3000));
    CHECK(r2.rc == AX_EIO);
    CHECK(r2.status == 200 && r2.headers_calls == 1);
    CHECK(srv_count_path(&s, "/reset") == 1); /* not retried */
    rec_free(&r1);
    rec_free(&r2);
    finish(loop, up, &s);
}

struct fetched {
    int calls, rc, status;
    char body[256];
    size_t len;
};

static void on_fetched(int rc, int status, const char *body, size_t len, void *ud)
{
    struct fetched *f = ud;

    f->calls++;
    f->rc = rc;
    f->status = status;
    f->len = len;
    if (body != NULL)
        snprintf(f->body, sizeof(f->body), "%s", body);
    else
        f->body[0] = '\0';
}

static void test_fetch(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct fetched f1 = {0}, f2 = {0};
    cJSON *j;

    srv_start(&s, loop);
    up = up_new(loop, &s, "/v1/", &o);
    CHECK(ax_upstream_fetch(up, "GET", "/props", NULL, 0, 0, on_fetched, &f1, NULL) == 0);
    CHECK(f1.calls == 0);
    CHECK(run_until(loop, &f1.calls, 1, 3000));
    CHECK(f1.rc == 0 && f1.status == 200 && f1.len > 1000);
    ax_upstream_close(up, NULL, NULL);

    /* an answer over max_response_bytes */
    o.max_response_bytes = 100;
    up = up_new(loop, &s, "/v1/", &o);
    CHECK(ax_upstream_fetch(up, "GET", "/props", NULL, 0, 0, on_fetched, &f2, NULL) == 0);
    CHECK(run_until(loop, &f2.calls, 1, 3000));
    CHECK(f2.rc == AX_ETOOBIG && f2.len == 0);
    f2.calls = 0;
    CHECK(ax_upstream_fetch(up, "POST", "/json", "{\"a\":1}", 7, 0, on_fetched, &f2, NULL) == 0);
    CHECK(run_until(loop, &f2.calls, 1, 3000));
    CHECK(f2.rc == 0 && f2.status == 200);
    REQUIRE((j = cJSON_Parse(f2.body)) != NULL);
    CHECK(cJSON_GetObjectItemCaseSensitive(j, "got")->valueint == 7);
    cJSON_Delete(j);
    finish(loop, up, &s);
}

static int info_calls;

static void on_info(void *ud)
{
    (void)ud;
    info_calls++;
}

static void test_probe(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    const struct ax_upstream_info *in;
    int state_ok = 0, before, i;
    uint64_t probed;

    srv_start(&s, loop);
    s.props_mode = 0; /* loading */
    up = up_new(loop, &s, "/v1", &o);
    ax_upstream_on_info(up, on_info, NULL);
    in = ax_upstream_info(up);
    CHECK(in->state == AX_UP_UNKNOWN && in->n_ctx == 0 && in->model_id[0] == '\0');
    info_calls = 0;
    ax_upstream_probe_start(up, 50);
    CHECK(run_until(loop, &info_calls, 1, 3000));
    CHECK(in->state == AX_UP_LOADING);
    CHECK(in->n_ctx == 0 && in->n_ctx_source == NULL);

    /* still loading: re-probed at the interval, not frozen */
    before = srv_count_path(&s, "/props");
    probed = in->last_probe_ms;
    s.props_mode = 1;
    for (i = 0; i < 150 && !state_ok; i++) {
        int one = 0;
        run_until(loop, &one, 1, 20);
        state_ok = in->state == AX_UP_OK;
    }
    CHECK(state_ok);
    CHECK(srv_count_path(&s, "/props") > before);
    CHECK(in->last_probe_ms > probed);
    CHECK(in->n_ctx == 2048); /* the fixture's per-slot window */
    CHECK(in->n_ctx_source != NULL && strcmp(in->n_ctx_source, "props") == 0);
    CHECK(in->llama_server == 1);
    CHECK(strcmp(in->model_id, "tiny") == 0);
    CHECK(cJSON_IsArray(in->models) && cJSON_GetArraySize(in->models) == 1);
    CHECK(info_calls >= 2);

    /* once OK, slow: no more probes within a few intervals */
    before = srv_count_path(&s, "/props");
    {
        int never = 0;
        run_until(loop, &never, 1, 250);
    }
    CHECK(srv_count_path(&s, "/props") == before);

    /* /props without n_ctx: /slots gives it */
    s.props_mode = 2;
    ax_upstream_probe_now(up);
    before = info_calls;
    CHECK(run_until(loop, &info_calls, before + 1, 3000));
    CHECK(in->n_ctx == 2048 && strcmp(in->n_ctx_source, "slots") == 0);
    CHECK(srv_count_path(&s, "/slots") >= 1);

    /* not llama-server (vLLM-like): no /props, max_model_len from /v1/models */
    s.props_mode = 3;
    ax_upstream_probe_now(up);
    before = info_calls;
    CHECK(run_until(loop, &info_calls, before + 1, 3000));
    CHECK(in->state == AX_UP_OK && in->llama_server == 0);
    CHECK(strcmp(in->model_id, "qwen-vllm") == 0);
    CHECK(in->n_ctx == 32768 && strcmp(in->n_ctx_source, "models") == 0);
    finish(loop, up, &s);
}

static void test_probe_down(void)
{
    uv_loop_t *loop = loop_new();
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;

    o.base_url = "http://127.0.0.1:1/v1";
    o.connect_retries = 5; /* probes do not retry */
    o.retry_delay_ms = 1000;
    REQUIRE(ax_upstream_new(loop, &o, &up) == 0);
    ax_upstream_on_info(up, on_info, NULL);
    info_calls = 0;
    ax_upstream_probe_now(up);
    CHECK(run_until(loop, &info_calls, 1, 3000));
    CHECK(ax_upstream_info(up)->state == AX_UP_DOWN);
    finish(loop, up, NULL);
}

static void test_close_cancels(void)
{
    uv_loop_t *loop = loop_new();
    struct srv s;
    struct ax_upstream_opts o = {0};
    struct ax_upstream *up;
    struct rec r[3];
    struct ax_xfer_spec spec = {"GET", "/hold", NULL, 0, 0, NULL};
    int i, before = closed_count;

    srv_start(&s, loop);
    o.max_concurrent = 1;
    o.queue_max = 4;
    up = up_new(loop, &s, "/v1", &o);
    for (i = 0; i < 3; i++) {
        rec_init(&r[i], loop, &s);
        rec_start(up, &r[i], "GET", i == 0 ? "/hold" : "/hang", NULL, NULL);
    }
    ax_upstream_probe_start(up, 1000);
    CHECK(run_until(loop, &r[0].data_calls, 1, 3000));
    ax_upstream_close(up, on_up_closed, NULL);
    CHECK(ax_upstream_start(up, &spec, &rec_cbs, &r[0], NULL) == AX_ECANCELED);
    for (i = 0; i < 3; i++)
        CHECK(r[i].done_calls == 0);
    CHECK(run_until(loop, &closed_count, before + 1, 3000));
    for (i = 0; i < 3; i++) {
        CHECK(r[i].done_calls == 1 && r[i].rc == AX_ECANCELED);
        rec_free(&r[i]);
    }
    CHECK(run_until(loop, &s.peer_closes, 1, 3000));
    finish(loop, NULL, &s);
}

int main(void)
{
    if (getenv("AX_TEST_VERBOSE") == NULL)
        ax_log_set_level(AX_LOG_LVL_ERROR); /* the failures below are expected */
    test_paths();
    test_post_and_reuse();
    test_sse_incremental();
    test_pause_resume(0, 0);
    test_pause_resume(1, 0);
    test_pause_resume(0, 350); /* paused for longer than the idle timeout */
    test_cap_and_queue();
    test_many();
    test_cancel();
    test_callback_errors();
    test_timeouts();
    test_connect_retry();
    test_connect_timeout();
    test_statuses_and_reset();
    test_fetch();
    test_probe();
    test_probe_down();
    test_close_cancels();
    return AX_TEST_DONE("test_upstream");
}
