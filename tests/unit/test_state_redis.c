/* test_state_redis.c - state_redis.c against a fake Redis on loopback (a libuv server that
 * answers PING, GET and SET in RESP): bad URLs refused with the flag named; a refused
 * connect reported in the health JSON and pull/push not waiting; a GET answered in time
 * (a miss); a GET answered after the wait, once the session it was for is freed (the late
 * reply must touch nothing: ASan's build checks it); a stored snapshot read back into a
 * session, its local links kept. */
#include "anthroxy.h"
#include "anthroxy_monitor.h"
#include "anthroxy_state_redis.h"
#include "ax_test.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* ---- a fake Redis: PING +PONG, SET +OK, GET as set (or held back get_delay_ms) -------- */

struct fake {
    uv_loop_t *loop;
    uv_tcp_t server;
    uv_tcp_t client;
    int has_client;
    int port;
    uint64_t get_delay_ms; /* 0: answer at once */
    int silent;            /* answer nothing */
    char stored[4096];     /* the last SET's value, as a RESP bulk reply */
    size_t stored_len;
    int n_get, n_set, n_ping;
};

struct delayed {
    uv_timer_t timer;
    struct fake *f;
    char reply[4200];
    size_t len;
};

static void on_write_done(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void fake_send(struct fake *f, const char *p, size_t n)
{
    uv_write_t *w = malloc(sizeof(*w) + n);
    uv_buf_t b;

    memcpy(w + 1, p, n);
    b = uv_buf_init((char *)(w + 1), (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&f->client, &b, 1, on_write_done) != 0)
        free(w);
}

static void on_delayed_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_delayed(uv_timer_t *t)
{
    struct delayed *d = t->data;

    if (d->f->has_client)
        fake_send(d->f, d->reply, d->len);
    uv_close((uv_handle_t *)&d->timer, on_delayed_closed);
}

static void get_reply(struct fake *f, char *out, size_t *len)
{
    if (f->stored_len > 0) {
        memcpy(out, f->stored, f->stored_len);
        *len = f->stored_len;
    } else {
        memcpy(out, "$-1\r\n", 5);
        *len = 5;
    }
}

/* hiredis sends each command as *N\r\n$len\r\narg\r\n...: one read holds whole commands on
 * loopback at these sizes. */
static void fake_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct fake *f = s->data;
    const char *p = buf->base, *end = buf->base + (n > 0 ? n : 0);

    if (n < 0) {
        if (f->has_client) {
            f->has_client = 0;
            uv_close((uv_handle_t *)&f->client, NULL);
        }
        free(buf->base);
        return;
    }
    while (p < end && !f->silent) {
        const char *cmd = strstr(p, "\r\n$");
        const char *name;
        if (*p != '*' || cmd == NULL)
            break;
        name = strstr(cmd + 3, "\r\n") + 2;
        if (strncmp(name, "PING", 4) == 0) {
            f->n_ping++;
            fake_send(f, "+PONG\r\n", 7);
            p = name + 6;
        } else if (strncmp(name, "GET", 3) == 0) {
            const char *key = strstr(name + 5, "\r\n") + 2; /* past $len */
            char reply[4200];
            size_t len;
            f->n_get++;
            p = strstr(key, "\r\n") + 2;
            get_reply(f, reply, &len);
            if (f->get_delay_ms == 0) {
                fake_send(f, reply, len);
            } else {
                struct delayed *d = calloc(1, sizeof(*d));
                d->f = f;
                memcpy(d->reply, reply, len);
                d->len = len;
                uv_timer_init(f->loop, &d->timer);
                d->timer.data = d;
                uv_timer_start(&d->timer, on_delayed, f->get_delay_ms, 0);
            }
        } else if (strncmp(name, "SET", 3) == 0) {
            /* *5 or *3: SET, key, value[, PX, ms]; keep the value as a bulk reply */
            const char *q = strstr(name + 5, "\r\n") + 2, *vlen; /* the key */
            long vl;
            f->n_set++;
            q = strstr(q, "\r\n") + 2; /* past the key */
            vlen = q;                  /* $vl\r\n<value>\r\n */
            vl = strtol(vlen + 1, NULL, 10);
            q = strstr(vlen, "\r\n") + 2;
            if (vl > 0 && (size_t)vl + 32 < sizeof(f->stored)) {
                f->stored_len = (size_t)snprintf(f->stored, sizeof(f->stored), "$%ld\r\n", vl);
                memcpy(f->stored + f->stored_len, q, (size_t)vl);
                f->stored_len += (size_t)vl;
                memcpy(f->stored + f->stored_len, "\r\n", 2);
                f->stored_len += 2;
            }
            fake_send(f, "+OK\r\n", 5);
            break; /* the rest of this read: PX and its value */
        } else {
            break;
        }
    }
    free(buf->base);
}

static void fake_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    buf->base = calloc(1, hint + 1); /* NUL-terminated for the strstr of the parser */
    buf->len = hint;
}

static void fake_on_conn(uv_stream_t *srv, int status)
{
    struct fake *f = srv->data;

    if (status < 0 || f->has_client)
        return;
    uv_tcp_init(f->loop, &f->client);
    f->client.data = f;
    if (uv_accept(srv, (uv_stream_t *)&f->client) == 0) {
        f->has_client = 1;
        uv_read_start((uv_stream_t *)&f->client, fake_alloc, fake_on_read);
    }
}

static void fake_start(struct fake *f, uv_loop_t *loop)
{
    struct sockaddr_in a;
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    memset(f, 0, sizeof(*f));
    f->loop = loop;
    uv_tcp_init(loop, &f->server);
    f->server.data = f;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_bind(&f->server, (const struct sockaddr *)&a, 0);
    uv_listen((uv_stream_t *)&f->server, 8, fake_on_conn);
    uv_tcp_getsockname(&f->server, (struct sockaddr *)&ss, &len);
    f->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void fake_stop(struct fake *f)
{
    if (f->has_client) {
        f->has_client = 0;
        uv_close((uv_handle_t *)&f->client, NULL);
    }
    uv_close((uv_handle_t *)&f->server, NULL);
}

/* ---- helpers ------------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Runs the loop for ms (a timer keeps it alive). */
static void run_for(uv_loop_t *loop, uint64_t ms)
{
    uv_timer_t t;

    uv_timer_init(loop, &t);
    uv_timer_start(&t, on_tick, ms, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static int health_bool(const struct ax_state_redis *st, const char *name)
{
    cJSON *h = ax_state_redis_health(st);
    int v = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(h, name));
    cJSON_Delete(h);
    return v;
}

static double health_num(const struct ax_state_redis *st, const char *name)
{
    cJSON *h = ax_state_redis_health(st);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(h, name);
    double v = cJSON_IsNumber(n) ? n->valuedouble : -1;
    cJSON_Delete(h);
    return v;
}

static int closed;
static void on_closed(void *ud)
{
    (void)ud;
    closed++;
}

struct pulled {
    int calls, found;
};

static void on_pulled(void *ud, int found)
{
    struct pulled *p = ud;
    p->calls++;
    p->found = found;
}

/* ---- tests --------------------------------------------------------------------------- */

static void test_bad_urls(uv_loop_t *loop)
{
    static const char *const bad[] = {"http://127.0.0.1:6379",
                                      "redis://",
                                      "redis://h:0",
                                      "redis://127.0.0.1:70000",
                                      "redis://127.0.0.1:1/x",
                                      "redis://[::1",
                                      "redis://127.0.0.1:12ab",
                                      "redis://:@127.0.0.1:6379"};
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct ax_state_redis *st = NULL;
        struct ax_error err = {0};
        int rc = ax_state_redis_new(loop, bad[i], 20, 0, &st, &err);
        CHECKF(rc == AX_EINVAL, "%s: rc %d", bad[i], rc);
        CHECKF(strstr(err.message, "--state") != NULL, "%s: %s", bad[i], err.message);
        CHECK(st == NULL);
    }
}

static void test_refused(uv_loop_t *loop)
{
    struct fake f;
    struct ax_state_redis *st = NULL;
    struct ax_error err = {0};
    struct ax_session s;
    struct pulled p = {0, 0};
    char url[64];
    int port;
    cJSON *h;

    fake_start(&f, loop); /* a port that was free: taken and given back */
    port = f.port;
    fake_stop(&f);
    uv_run(loop, UV_RUN_NOWAIT);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/2", port);
    CHECK(ax_state_redis_new(loop, url, 20, 1000, &st, &err) == 0);
    if (st == NULL)
        return;
    run_for(loop, 300);
    CHECK(!health_bool(st, "connected"));
    CHECK(health_num(st, "errors") >= 1);
    h = ax_state_redis_health(st);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(h, "backend")->valuestring, "redis");
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(h, "url")->valuestring, url);
    CHECKF(strstr(cJSON_GetObjectItemCaseSensitive(h, "last_error")->valuestring, "refused"), "%s",
           cJSON_GetObjectItemCaseSensitive(h, "last_error")->valuestring);
    cJSON_Delete(h);
    memset(&s, 0, sizeof(s));
    strcpy(s.key, "k1");
    CHECK(ax_state_redis_pull(st, &s, on_pulled, &p) == AX_EAGAIN); /* nothing waits */
    ax_state_redis_push(st, &s);
    CHECK(health_num(st, "dropped") == 1);
    closed = 0;
    ax_state_redis_close(st, on_closed, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_INT(closed, 1);
    CHECK_INT(p.calls, 0);
}

static void test_roundtrip_and_late_reply(uv_loop_t *loop)
{
    struct fake f;
    struct ax_state_redis *st = NULL;
    struct ax_error err = {0};
    struct ax_session *s, *late, mine;
    struct pulled p = {0, 0}, pl = {0, 0};
    char url[64];

    fake_start(&f, loop);
    snprintf(url, sizeof(url), "redis://localhost:%d", f.port);
    CHECK(ax_state_redis_new(loop, url, 200, 60000, &st, &err) == 0);
    if (st == NULL)
        return;
    run_for(loop, 500);
    CHECK(health_bool(st, "connected"));
    CHECK_INT(f.n_ping, 1);

    /* a miss, answered in time */
    s = calloc(1, sizeof(*s));
    strcpy(s->key, "sess-1");
    s->total_requests = 3;
    CHECK(ax_state_redis_pull(st, s, on_pulled, &p) == 0);
    CHECK_INT(p.calls, 0); /* never from inside the call */
    run_for(loop, 250);
    CHECK_INT(p.calls, 1);
    CHECK_INT(p.found, 0);
    CHECK_INT(s->total_requests, 3);
    CHECK(health_num(st, "misses") == 1);

    /* a push, then a pull into another copy: the stored fields come back, the local
     * ones (references, times, links) stay */
    s->total_requests = 7;
    s->calibration = 1.75;
    strcpy(s->arm, "pinned");
    s->history[0] = 1234;
    s->n_history = 1;
    ax_state_redis_push(st, s);
    run_for(loop, 250);
    CHECK_INT(f.n_set, 1);
    memset(&mine, 0, sizeof(mine));
    strcpy(mine.key, "sess-1");
    mine.refs = 2;
    mine.created_ms = 99;
    mine._hash = 42;
    p.calls = 0;
    CHECK(ax_state_redis_pull(st, &mine, on_pulled, &p) == 0);
    run_for(loop, 250);
    CHECK_INT(p.calls, 1);
    CHECK_INT(p.found, 1);
    CHECK_INT(mine.total_requests, 7);
    CHECK(mine.calibration == 1.75);
    CHECK_STR(mine.arm, "pinned");
    CHECK_INT(mine.history[0], 1234);
    CHECK_INT(mine.refs, 2);
    CHECK_INT(mine.created_ms, 99);
    CHECK_INT(mine._hash, 42);
    free(s);

    /* the reply comes 600 ms late: the caller is told at 200 ms and frees its session; the
     * reply then finds nothing to write into */
    f.get_delay_ms = 600;
    late = calloc(1, sizeof(*late));
    strcpy(late->key, "sess-1");
    CHECK(ax_state_redis_pull(st, late, on_pulled, &pl) == 0);
    run_for(loop, 300);
    CHECK_INT(pl.calls, 1);
    CHECK_INT(pl.found, 0);
    CHECK(health_num(st, "timeouts") == 1);
    free(late); /* as a finished request frees its session */
    run_for(loop, 500);
    CHECK_INT(pl.calls, 1); /* told once only */
    CHECK(health_bool(st, "connected"));

    /* slow but answering: after three late fetches in a row, fetches are skipped (no wait)
     * for a second, then tried again */
    {
        struct ax_session tmp;
        int i;
        memset(&tmp, 0, sizeof(tmp));
        strcpy(tmp.key, "sess-1");
        for (i = 0; i < 2; i++) { /* the late one above was the first */
            pl.calls = 0;
            CHECK(ax_state_redis_pull(st, &tmp, on_pulled, &pl) == 0);
            run_for(loop, 300);
            CHECK_INT(pl.calls, 1);
        }
        CHECK(health_bool(st, "slow"));
        CHECK(ax_state_redis_pull(st, &tmp, on_pulled, &pl) == AX_EAGAIN);
        CHECK(health_num(st, "skipped") == 1);
        run_for(loop, 1100);
        CHECK(!health_bool(st, "slow"));
        f.get_delay_ms = 0;
        pl.calls = 0;
        CHECK(ax_state_redis_pull(st, &tmp, on_pulled, &pl) == 0);
        run_for(loop, 250);
        CHECK_INT(pl.calls, 1);
        CHECK_INT(pl.found, 1);
    }

    /* a Redis that answers nothing: the connection is dropped after 1 s, said in /health */
    f.silent = 1;
    ax_state_redis_push(st, &mine);
    run_for(loop, 1300);
    CHECK(!health_bool(st, "connected"));
    {
        cJSON *h = ax_state_redis_health(st);
        CHECKF(strstr(cJSON_GetObjectItemCaseSensitive(h, "last_error")->valuestring, "no reply"),
               "%s", cJSON_GetObjectItemCaseSensitive(h, "last_error")->valuestring);
        cJSON_Delete(h);
    }
    /* and it reconnects once Redis answers again (a new connection: the fake takes one) */
    f.silent = 0;
    if (f.has_client) {
        f.has_client = 0;
        uv_close((uv_handle_t *)&f.client, NULL);
    }
    run_for(loop, 1000);
    CHECK(health_bool(st, "connected"));

    closed = 0;
    ax_state_redis_close(st, on_closed, NULL);
    fake_stop(&f);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_INT(closed, 1);
}

int main(void)
{
    uv_loop_t loop;

    uv_loop_init(&loop);
    test_bad_urls(&loop);
    test_refused(&loop);
    test_roundtrip_and_late_reply(&loop);
    run_for(&loop, 10);
    CHECK(uv_loop_close(&loop) == 0);
    return AX_TEST_DONE("test_state_redis");
}
