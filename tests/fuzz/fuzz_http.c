/* fuzz_http.c - libFuzzer target: the HTTP glue (http.c: llhttp under the header and body
 * caps, keep-alive, pipelining, the write queue, chunked framing) driven through its public
 * API, as tests/unit/test_http.c runs it: a loopback listener hands each connection to
 * ax_http_accept, and a fake on_request answers at once (echo), from a timer (an error), or
 * streamed in chunks ("/s..."). The input's first byte chooses where the bytes are split and
 * whether the client half-closes or resets; the rest is what the client sends.
 *
 * Checked: no crash, leak or bad read (ASan), every connection closes and every request is
 * freed once the client is gone (nothing left in the registry), and within a bound: a
 * connection the server never lets go is a finding. Seeds: tests/fuzz/seeds/fuzz_http/. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "anthroxy_error.h"
#include "anthroxy_http.h"
#include "anthroxy_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ASYNC 64

static uv_loop_t loop;
static uv_tcp_t listener;
static struct sockaddr_in addr;
static struct ax_http_server hs;
static struct ax_req_registry reqs;
static uv_timer_t answer_timer;
static struct ax_req *async_q[MAX_ASYNC];
static int n_async, n_accepted, n_closed, ready;

static void on_answer_timer(uv_timer_t *t)
{
    struct ax_error err = {0};
    int i, n = n_async;

    (void)t;
    n_async = 0;
    for (i = 0; i < n; i++) {
        if (!async_q[i]->canceled) {
            ax_error_set(&err, 400, "invalid_request_error", "fuzz: %s", async_q[i]->path);
            (void)ax_http_send_error(async_q[i], &err);
        }
        ax_req_unref(async_q[i]);
    }
}

static void fake_on_request(struct ax_req *req, void *ud)
{
    const char *body = req->body.data ? req->body.data : "";
    size_t i, step;

    (void)ud;
    if (strncmp(req->path, "/a", 2) == 0 && n_async < MAX_ASYNC) {
        ax_req_ref(req);
        async_q[n_async++] = req;
        uv_timer_start(&answer_timer, on_answer_timer, 0, 0);
    } else if (strncmp(req->path, "/s", 2) == 0) {
        if (ax_http_stream_begin(req, 200, "text/event-stream", "X-Fuzz: 1\r\n") < 0)
            return;
        step = req->body.len / 4 + 1;
        for (i = 0; i < req->body.len; i += step)
            (void)ax_http_stream_write(req, body + i,
                                       req->body.len - i < step ? req->body.len - i : step);
        (void)ax_http_stream_end(req);
    } else {
        (void)ax_http_respond(req, 200, "text/plain", NULL, body, req->body.len);
    }
}

static void fake_on_closed(void *ud)
{
    (void)ud;
    n_closed++;
}

static void on_connection(uv_stream_t *l, int status)
{
    if (status == 0 && ax_http_accept(&hs, l) == 0)
        n_accepted++;
}

static void setup(void)
{
    struct ax_http_limits lim = {65536, 8192, 4096, 200, 200};
    struct ax_http_callbacks cbs = {fake_on_request, fake_on_closed, NULL};
    int len = sizeof(addr);

    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    uv_timer_init(&loop, &answer_timer);
    ax_req_registry_init(&reqs);
    ax_http_server_init(&hs, &loop, &lim, &cbs, &reqs);
    uv_tcp_init(&loop, &listener);
    uv_ip4_addr("127.0.0.1", 0, &addr);
    if (uv_tcp_bind(&listener, (const struct sockaddr *)&addr, 0) != 0 ||
        uv_listen((uv_stream_t *)&listener, 64, on_connection) != 0 ||
        uv_tcp_getsockname(&listener, (struct sockaddr *)&addr, &len) != 0)
        abort();
    ready = 1;
}

/* Runs the loop without blocking and reads what the server sent; returns 1 once the server
 * closed its side (EOF or reset). */
static int pump(int fd)
{
    char buf[65536];
    ssize_t n;

    uv_run(&loop, UV_RUN_NOWAIT);
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0)
        ;
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct linger lg = {1, 0};
    size_t split, off = 0;
    uint64_t deadline;
    int fd, mode, accepted;

    if (size < 1)
        return 0;
    if (!ready)
        setup();
    mode = data[0] & 3; /* 0, 1: half-close; 2: close; 3: reset */
    split = 1 + (data[0] >> 2) * (size / 64 + 1);
    data++;
    size--;
    if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
        return 0;
    if (connect(fd, (const struct sockaddr *)&addr, sizeof(addr)) != 0) {
        close(fd);
        return 0;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    accepted = n_accepted + 1;
    while (n_accepted < accepted)
        uv_run(&loop, UV_RUN_ONCE);
    while (off < size) {
        size_t k = size - off < split ? size - off : split;
        ssize_t w = send(fd, data + off, k, MSG_NOSIGNAL);

        if (w < 0 && errno != EAGAIN)
            break;
        if (w > 0)
            off += (size_t)w;
        if (pump(fd))
            break;
    }
    if (mode <= 1) {
        shutdown(fd, SHUT_WR);
        uv_update_time(&loop);
        deadline = uv_now(&loop) + 2000;
        while (!pump(fd) && uv_now(&loop) < deadline)
            uv_update_time(&loop);
    } else if (mode == 3) {
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(fd);
    uv_update_time(&loop);
    deadline = uv_now(&loop) + 2000;
    while ((hs.n_conns > 0 || n_closed < n_accepted || n_async > 0) && uv_now(&loop) < deadline) {
        uv_run(&loop, UV_RUN_NOWAIT);
        uv_update_time(&loop);
    }
    if (hs.n_conns > 0 || n_closed < n_accepted)
        abort(); /* a connection outlived its client by 2 s */
    if (reqs.n != 0)
        abort(); /* a request outlived its connection */
    return 0;
}
