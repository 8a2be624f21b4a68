/* test_http.c - http.c alone, with a fake on_request, over loopback TCP on one uv loop.
 *
 * A listener hands each connection to ax_http_accept; a raw client writes bytes and reads
 * what comes back. The fake handler answers "/sync..." at once, "/async..." from a timer,
 * keeps "/hold..." unanswered and answers "/keep..." but keeps a reference (as a request in
 * on_response does). Covered: pipelining in order and never from inside an answer, the
 * header and body caps (431, 413), a malformed request (400), a request that does not
 * arrive in time (408), Expect: 100-continue, keep-alive and its idle timeout,
 * Connection: close, a client that closes mid-answer, the graceful close of every
 * connection, and the registry's cancel of every live request. */
#include "anthroxy_buf.h"
#include "anthroxy_error.h"
#include "anthroxy_http.h"
#include "anthroxy_request.h"
#include "ax_test.h"

#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: required check failed: %s\n", __FILE__, __LINE__, #cond);      \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define KEEPALIVE_MS 200
#define MAX_HELD 8

static uv_loop_t *loop;
static uv_tcp_t listener;
static int port;
static struct ax_http_server hs;
static struct ax_req_registry reqs;

/* ---- the fake handler ---- */

static struct {
    int n_req;               /* on_request calls */
    char order[16][32];      /* their paths, in order */
    int answered_before[16]; /* answers sent when each arrived */
    int n_answered;
    int in_send;   /* inside one of our ax_http_respond calls */
    int reentered; /* on_request while in_send */
    int n_canceled;
    int n_closed; /* on_closed calls */
    int n_accepted;
    struct ax_req *held[MAX_HELD]; /* our references */
    int n_held;
    struct ax_req *async_q[MAX_HELD]; /* "/async" requests waiting for the timer */
    int n_async;
    uv_timer_t answer_timer;
} F;

static void fake_on_cancel(struct ax_req *req)
{
    (void)req;
    F.n_canceled++;
}

static void answer(struct ax_req *req, const char *body, size_t len)
{
    F.in_send = 1;
    CHECK(ax_http_respond(req, 200, "text/plain", NULL, body, len) == 0);
    F.in_send = 0;
    F.n_answered++;
}

static void on_answer_timer(uv_timer_t *t)
{
    struct ax_req *req;
    int i;

    (void)t;
    if (F.n_async == 0)
        return;
    req = F.async_q[0];
    for (i = 1; i < F.n_async; i++)
        F.async_q[i - 1] = F.async_q[i];
    F.n_async--;
    answer(req, req->path, strlen(req->path));
    ax_req_unref(req); /* ours, taken in on_request */
}

static void fake_on_request(struct ax_req *req, void *ud)
{
    CHECK(ud == &F);
    if (F.in_send)
        F.reentered++;
    if (F.n_req < 16) {
        snprintf(F.order[F.n_req], sizeof(F.order[0]), "%s", req->path);
        F.answered_before[F.n_req] = F.n_answered;
    }
    F.n_req++;
    if (strncmp(req->path, "/sync", 5) == 0) {
        answer(req, req->path, strlen(req->path));
    } else if (strcmp(req->path, "/echo") == 0) {
        answer(req, req->body.data ? req->body.data : "", req->body.len);
    } else if (strncmp(req->path, "/async", 6) == 0) {
        REQUIRE(F.n_async < MAX_HELD);
        ax_req_ref(req);
        F.async_q[F.n_async++] = req;
        uv_timer_start(&F.answer_timer, on_answer_timer, 5, 0);
    } else {
        REQUIRE(F.n_held < MAX_HELD);
        ax_req_ref(req);
        req->on_cancel = fake_on_cancel;
        F.held[F.n_held++] = req;
        if (strncmp(req->path, "/keep", 5) == 0)
            answer(req, "kept", 4);
    }
}

static int fake_on_headers(const struct ax_req *req, void *ud, struct ax_error *err)
{
    CHECK(ud == &F);
    CHECK(req->body.len == 0); /* nothing of the body read yet */
    if (strncmp(req->path, "/deny", 5) == 0)
        return ax_error_set(err, 401, "authentication_error", "invalid x-api-key");
    return 0;
}

static void fake_on_closed(void *ud)
{
    CHECK(ud == &F);
    F.n_closed++;
}

/* ---- the loop ---- */

static uv_timer_t guard;

static void on_guard(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until pred() holds; fails the test after 5 s. */
static int spin(int (*pred)(void))
{
    uint64_t deadline;

    uv_update_time(loop);
    deadline = uv_now(loop) + 5000;
    uv_timer_start(&guard, on_guard, 20, 20);
    while (!pred() && uv_now(loop) < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_timer_stop(&guard);
    if (!pred()) {
        fprintf(stderr, "spin: timed out\n");
        ax_test_failures++;
        return 0;
    }
    return 1;
}

static void on_connection(uv_stream_t *l, int status)
{
    REQUIRE(status == 0);
    F.n_accepted++;
    CHECK(ax_http_accept(&hs, l) == 0);
}

/* ---- the client ---- */

struct client {
    uv_tcp_t tcp;
    uv_connect_t conn;
    struct ax_buf in;
    int connected, eof, closed;
    int stay_on_eof; /* keep the socket open after the server's FIN (a lingering close) */
};

static struct client cl;

struct client_write {
    uv_write_t w;
    char data[];
};

static void on_client_written(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void client_send(const char *data, size_t len)
{
    struct client_write *cw = malloc(sizeof(*cw) + len);
    uv_buf_t b;

    REQUIRE(cw != NULL);
    memcpy(cw->data, data, len);
    b = uv_buf_init(cw->data, (unsigned int)len);
    REQUIRE(uv_write(&cw->w, (uv_stream_t *)&cl.tcp, &b, 1, on_client_written) == 0);
}

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    REQUIRE(ax_buf_reserve(&cl.in, 65536) == 0);
    buf->base = cl.in.data + cl.in.len;
    buf->len = cl.in.cap - cl.in.len - 1;
}

static void on_client_closed(uv_handle_t *h)
{
    (void)h;
    cl.closed = 1;
}

static void client_close(void)
{
    if (!uv_is_closing((uv_handle_t *)&cl.tcp))
        uv_close((uv_handle_t *)&cl.tcp, on_client_closed);
}

static void on_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)s;
    (void)buf;
    if (n < 0) {
        cl.eof = 1;
        if (!cl.stay_on_eof)
            client_close();
        return;
    }
    cl.in.len += (size_t)n;
    cl.in.data[cl.in.len] = '\0';
}

static void on_client_connected(uv_connect_t *c, int status)
{
    (void)c;
    REQUIRE(status == 0);
    cl.connected = 1;
    REQUIRE(uv_read_start((uv_stream_t *)&cl.tcp, on_client_alloc, on_client_read) == 0);
}

static int client_is_connected(void)
{
    return cl.connected && F.n_accepted > 0;
}

static int client_is_closed(void)
{
    return cl.closed;
}

static const char *until_text;

static int client_has_until(void)
{
    return cl.in.data != NULL && strstr(cl.in.data, until_text) != NULL;
}

/* Connects a fresh client and sends data (NULL: nothing yet). */
static void client_open(const char *data)
{
    struct sockaddr_in sa;

    ax_buf_free(&cl.in);
    memset(&cl, 0, sizeof(cl));
    ax_buf_init(&cl.in, 1 << 20);
    F.n_accepted = 0;
    REQUIRE(uv_ip4_addr("127.0.0.1", port, &sa) == 0);
    REQUIRE(uv_tcp_init(loop, &cl.tcp) == 0);
    REQUIRE(uv_tcp_connect(&cl.conn, &cl.tcp, (struct sockaddr *)&sa, on_client_connected) == 0);
    REQUIRE(spin(client_is_connected));
    if (data != NULL)
        client_send(data, strlen(data));
}

static int wait_for(const char *text)
{
    until_text = text;
    return spin(client_has_until);
}

/* Waits for the server to close the client's connection and for its on_closed. */
static int closed_target;

static int server_closed(void)
{
    return cl.closed && F.n_closed >= closed_target && hs.n_conns == 0;
}

static void wait_server_close(void)
{
    closed_target = F.n_closed + 1;
    spin(server_closed);
    CHECK(cl.eof);
    CHECK_INT(hs.n_conns, 0);
    CHECK_INT(hs.n_active, 0);
}

/* The offset of needle in the client's input, -1 when absent. */
static long pos_of(const char *needle)
{
    const char *p = cl.in.data ? strstr(cl.in.data, needle) : NULL;
    return p ? (long)(p - cl.in.data) : -1;
}

static int count_of(const char *needle)
{
    const char *p = cl.in.data;
    int n = 0;

    while (p && (p = strstr(p, needle)) != NULL) {
        n++;
        p += strlen(needle);
    }
    return n;
}

static void reset_fake(void)
{
    F.n_req = 0;
    F.n_answered = 0;
    F.reentered = 0;
    F.n_canceled = 0;
}

/* ---- the cases ---- */

static void test_pipelining(void)
{
    long a1, s2, a3;

    reset_fake();
    client_open("GET /async1 HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /sync2 HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /async3 HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_for("\r\n\r\n/async3");
    CHECK_INT(F.n_req, 3);
    CHECK_STR(F.order[0], "/async1");
    CHECK_STR(F.order[1], "/sync2");
    CHECK_STR(F.order[2], "/async3");
    /* each request reaches the handler only once the one before is answered */
    CHECK_INT(F.answered_before[0], 0);
    CHECK_INT(F.answered_before[1], 1);
    CHECK_INT(F.answered_before[2], 2);
    CHECK_INT(F.reentered, 0); /* never from inside an answer's send */
    CHECK_INT(count_of("HTTP/1.1 200 OK\r\n"), 3);
    a1 = pos_of("\r\n\r\n/async1");
    s2 = pos_of("\r\n\r\n/sync2");
    a3 = pos_of("\r\n\r\n/async3");
    CHECKF(a1 >= 0 && a1 < s2 && s2 < a3, "answers at %ld, %ld, %ld", a1, s2, a3);
    CHECK_INT(F.n_accepted, 1);
    CHECK_INT(hs.n_active, 0);
    client_close();
    spin(client_is_closed);
}

static void test_keepalive(void)
{
    uint64_t t0;

    reset_fake();
    client_open("GET /sync1 HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_for("\r\n\r\n/sync1");
    CHECK(pos_of("Connection: keep-alive\r\n") > 0);
    CHECK(pos_of("Content-Length: 6\r\n") > 0);
    CHECK(pos_of("request-id: req_") > 0);
    /* the same connection takes a second request later */
    client_send("GET /sync2 HTTP/1.1\r\nHost: t\r\n\r\n", 32);
    wait_for("\r\n\r\n/sync2");
    CHECK_INT(F.n_accepted, 1);
    CHECK_INT(F.n_req, 2);
    CHECK_INT(hs.n_conns, 1);
    /* then, idle, it is closed after the keep-alive timeout */
    uv_update_time(loop);
    t0 = uv_now(loop);
    wait_server_close();
    CHECKF(uv_now(loop) - t0 >= KEEPALIVE_MS - 20, "closed after %llu ms",
           (unsigned long long)(uv_now(loop) - t0));
}

static void test_connection_close(void)
{
    reset_fake();
    client_open("GET /sync HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                "GET /sync-never HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 200 OK\r\n") == 0);
    CHECK(pos_of("Connection: close\r\n") > 0);
    CHECK_INT(count_of("HTTP/1.1 "), 1);
    CHECK_INT(F.n_req, 1);

    /* HTTP/1.0 without keep-alive closes too */
    client_open("GET /sync10 HTTP/1.0\r\n\r\n");
    wait_server_close();
    CHECK(pos_of("Connection: close\r\n") > 0);
    CHECK(pos_of("\r\n\r\n/sync10") > 0);
}

static void test_caps(void)
{
    char big[2048];

    reset_fake();
    /* one header past max_header_bytes: 431, not dispatched, connection closed */
    memset(big, 'x', sizeof(big));
    big[sizeof(big) - 1] = '\0';
    client_open("GET /sync HTTP/1.1\r\nX-Big: ");
    client_send(big, strlen(big));
    client_send("\r\n\r\n", 4);
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 431 Request Header Fields Too Large\r\n") == 0);
    CHECK(pos_of("\"type\":\"invalid_request_error\"") > 0);
    CHECK(pos_of("Connection: close\r\n") > 0);
    CHECK_INT(F.n_req, 0);

    /* a declared body past max_body_bytes: 413 as soon as the headers are in */
    client_open("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n");
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 413 Payload Too Large\r\n") == 0);
    CHECK(pos_of("\"type\":\"request_too_large\"") > 0);
    CHECK_INT(F.n_req, 0);

    /* a chunked body that grows past it: 413 too */
    client_open("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                "41\r\n"
                "0123456789012345678901234567890123456789012345678901234567890123X\r\n"
                "0\r\n\r\n");
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 413 ") == 0);
    CHECK_INT(F.n_req, 0);

    /* a body at the cap is fine */
    client_open("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 64\r\nConnection: close\r\n\r\n"
                "0123456789012345678901234567890123456789012345678901234567890123");
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 200 OK\r\n") == 0);
    CHECK(pos_of("\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123") > 0);
    CHECK_INT(F.n_req, 1);
    CHECK(hs.n_errors >= 3);
}

static void test_malformed_and_late(void)
{
    reset_fake();
    client_open("NOT HTTP AT ALL\r\n\r\n");
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 400 Bad Request\r\n") == 0);
    CHECK(pos_of("malformed HTTP request") > 0);
    CHECK_INT(F.n_req, 0);

    /* half a request, then nothing: 408 once the keep-alive timeout has passed */
    client_open("GET /sync HTTP/1.1\r\nHost:");
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 408 Request Timeout\r\n") == 0);
    CHECK_INT(F.n_req, 0);
}

static void test_expect_continue(void)
{
    reset_fake();
    client_open("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                "Expect: 100-continue\r\n\r\n");
    wait_for("HTTP/1.1 100 Continue\r\n\r\n");
    CHECK_INT(F.n_req, 0);
    client_send("hello", 5);
    wait_for("\r\n\r\nhello");
    CHECK(pos_of("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n") == 0);
    CHECK_INT(F.n_req, 1);
    client_close();
    spin(client_is_closed);
}

static int one_held(void)
{
    return F.n_held == 1;
}

/* on_headers refuses before the body: 401 with no 100 Continue and no body awaited, closed. */
static void test_refused_on_headers(void)
{
    reset_fake();
    client_open("POST /deny HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n"
                "Expect: 100-continue\r\n\r\n");
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 401 Unauthorized\r\n") == 0);
    CHECK(pos_of("\"type\":\"authentication_error\"") > 0);
    CHECK(pos_of("100 Continue") < 0);
    CHECK(pos_of("Connection: close\r\n") > 0);
    CHECK_INT(F.n_req, 0);
}

static int client_saw_eof(void)
{
    return cl.eof;
}

static int server_all_closed(void)
{
    return hs.n_conns == 0 && hs._n_lingering == 0;
}

/* After an error answer to a message not read whole, the server shuts its side (the client
 * sees the answer, then EOF) but keeps reading and dropping what the client still sends,
 * rather than closing at once into a reset; it closes when the client does, or after 2 s. */
static void test_linger_after_refusal(void)
{
    char body[4000];

    reset_fake();
    memset(body, 'b', sizeof(body));
    client_open("POST /deny HTTP/1.1\r\nHost: t\r\nContent-Length: 60\r\n\r\n");
    cl.stay_on_eof = 1;
    REQUIRE(spin(client_saw_eof));
    CHECK(pos_of("HTTP/1.1 401 Unauthorized\r\n") == 0);
    CHECK_INT(hs.n_conns, 1);
    CHECK_INT(hs._n_lingering, 1);
    client_send(body, sizeof(body)); /* still sending its body: read and dropped */
    client_send(body, sizeof(body));
    client_close();
    spin(server_all_closed);
    CHECK_INT(F.n_req, 0);

    /* a client that never closes: the linger ends by itself */
    client_open("GET /sync HTTP/1.1\r\nHost: t\r\nX-Bad\r\n\r\n");
    cl.stay_on_eof = 1;
    REQUIRE(spin(client_saw_eof));
    CHECK(pos_of("HTTP/1.1 400 Bad Request\r\n") == 0);
    CHECK_INT(hs._n_lingering, 1);
    spin(server_all_closed);
    client_close();
    spin(client_is_closed);
}

/* Bodies buffered count against max_inflight_body_bytes until answered: 503 past it. */
static void test_inflight_body_budget(void)
{
    struct ax_req *req;

    reset_fake();
    hs.limits.max_inflight_body_bytes = 10;
    client_open("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n");
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 503 Service Unavailable\r\n") == 0);
    CHECK(pos_of("\"type\":\"overloaded_error\"") > 0);
    CHECK(pos_of("retry-after: 1\r\n") > 0);
    CHECK_INT(F.n_req, 0);
    client_open("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                "8\r\n01234567\r\n8\r\n01234567\r\n0\r\n\r\n");
    wait_server_close();
    CHECK(pos_of("HTTP/1.1 503 ") == 0);
    CHECK_INT(F.n_req, 0);
    CHECK(hs.body_bytes == 0);

    /* held: counted until answered */
    client_open("POST /hold HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabcdef");
    REQUIRE(spin(one_held));
    req = F.held[0];
    CHECK(hs.body_bytes == 6);
    CHECK(ax_http_respond(req, 200, "text/plain", NULL, "ok", 2) == 0);
    CHECK(hs.body_bytes == 0);
    F.n_held = 0;
    ax_req_unref(req);
    client_close();
    spin(client_is_closed);
    hs.limits.max_inflight_body_bytes = 0;
}

static int closed_reached(void)
{
    return F.n_closed >= closed_target;
}

static void test_client_closes_mid_answer(void)
{
    struct ax_req *req;

    reset_fake();
    client_open("GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    REQUIRE(spin(one_held));
    req = F.held[0];
    CHECK_INT(hs.n_active, 1);
    CHECK(req->conn != NULL);
    closed_target = F.n_closed + 1;
    client_close();
    spin(closed_reached);
    CHECK_INT(F.n_canceled, 1);
    CHECK(req->canceled);
    CHECK(req->conn == NULL);
    CHECK_INT(hs.n_active, 0);
    CHECK_INT(hs.n_conns, 0);
    CHECK(ax_http_respond(req, 200, "text/plain", NULL, "late", 4) == AX_ECANCELED);
    CHECK(ax_http_queued(req) == 0);
    F.n_held = 0;
    ax_req_unref(req);
}

static int two_held(void)
{
    return F.n_held == 2;
}

static void test_close_all_and_cancel_all(void)
{
    struct ax_req *kept, *held;
    int live;

    reset_fake();
    /* an answered request still referenced, as one in on_response is */
    client_open("GET /keep HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    wait_server_close();
    CHECK(pos_of("\r\n\r\nkept") > 0);
    REQUIRE(F.n_held == 1);
    kept = F.held[0];
    CHECK(!kept->canceled);

    /* a request being answered when every connection is closed gracefully */
    client_open("GET /hold2 HTTP/1.1\r\nHost: t\r\n\r\n");
    REQUIRE(spin(two_held));
    held = F.held[1];
    ax_http_close_all(&hs, 1);
    CHECK_INT(hs.n_conns, 1); /* busy: closed after its answer */
    CHECK_INT(F.n_canceled, 0);
    answer(held, "bye", 3);
    wait_server_close();
    CHECK(pos_of("Connection: close\r\n") > 0);
    CHECK(pos_of("\r\n\r\nbye") > 0);
    CHECK_INT(F.n_canceled, 0);

    /* the registry cancels what is still alive, answered or not */
    live = reqs.n;
    CHECK_INT(live, 2);
    ax_req_cancel_all(&reqs);
    CHECK_INT(F.n_canceled, 2);
    CHECK(kept->canceled && held->canceled);
    ax_req_unref(kept);
    ax_req_unref(held);
    F.n_held = 0;
    CHECK_INT(reqs.n, 0);
}

static int listener_closed;

static void on_listener_closed(uv_handle_t *h)
{
    (void)h;
    listener_closed = 1;
}

static int is_listener_closed(void)
{
    return listener_closed;
}

int main(void)
{
    static const struct ax_http_limits lim = {64, 1024, 16384, KEEPALIVE_MS, 2000, 0, 0, 0};
    const struct ax_http_callbacks cbs = {fake_on_request, fake_on_closed, &F, fake_on_headers};
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int namelen = sizeof(ss);

    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    ax_req_registry_init(&reqs);
    ax_http_server_init(&hs, loop, &lim, &cbs, &reqs);
    uv_timer_init(loop, &guard);
    uv_timer_init(loop, &F.answer_timer);
    REQUIRE(uv_ip4_addr("127.0.0.1", 0, &sa) == 0);
    REQUIRE(uv_tcp_init(loop, &listener) == 0);
    REQUIRE(uv_tcp_bind(&listener, (struct sockaddr *)&sa, 0) == 0);
    REQUIRE(uv_listen((uv_stream_t *)&listener, 16, on_connection) == 0);
    REQUIRE(uv_tcp_getsockname(&listener, (struct sockaddr *)&ss, &namelen) == 0);
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);

    test_pipelining();
    test_keepalive();
    test_connection_close();
    test_caps();
    test_malformed_and_late();
    test_expect_continue();
    test_refused_on_headers();
    test_linger_after_refusal();
    test_inflight_body_budget();
    test_client_closes_mid_answer();
    test_close_all_and_cancel_all(); /* last: the server drains from here on */

    CHECK_INT(hs.n_conns, 0);
    CHECK_INT(reqs.n, 0);
    uv_close((uv_handle_t *)&listener, on_listener_closed);
    spin(is_listener_closed);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_close((uv_handle_t *)&F.answer_timer, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    ax_buf_free(&cl.in);
    CHECK(uv_loop_close(loop) == 0);
    return AX_TEST_DONE("test_http");
}
