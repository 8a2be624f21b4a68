/* state_redis.c - session state in Redis (anthroxy_state_redis.h): one hiredis async
 * connection on the loop (its libuv adapter), GET at a request's start with a bounded wait,
 * SET ... PX ttl at its end, reconnects with backoff, a stalled Redis dropped.
 *
 * Lifetimes: a fetch is a small object of ours, not the request's. When the wait is over it
 * is answered (found 0) and its caller forgotten; hiredis still holds it until the reply or
 * the disconnect comes (hiredis calls every pending callback, with a NULL reply when the
 * connection goes), and only then is it freed. So a late reply touches nothing of a request
 * that may be gone. */
#include "anthroxy_state_redis.h"
#include "anthroxy.h"
#include "anthroxy_list.h"
#include "anthroxy_log.h"
#include "anthroxy_monitor.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <netdb.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define STATE_KEY_PREFIX "anthroxy:session:"
#define STATE_MAGIC 0x41585331u   /* "AXS1" */
#define STATE_WATCH_MS 100        /* reconnect and stall checks */
#define STATE_STALL_MS 1000       /* commands waiting this long without a reply: reconnect */
#define STATE_BACKOFF_MIN_MS 100  /* first reconnect delay, doubled each failure... */
#define STATE_BACKOFF_MAX_MS 2000 /* ...up to this */
#define STATE_SLOW_AFTER 3        /* fetches late in a row: Redis is slow... */
#define STATE_SLOW_SKIP_MS 1000   /* ...and fetches are skipped this long */
#define STATE_MAX_PENDING 4096    /* commands in flight; beyond, fetches and writes are skipped */

/* What is stored: the session's public fields, up to its private links. */
#define STATE_BYTES offsetof(struct ax_session, _monitor)

struct blob {
    uint32_t magic, size; /* STATE_MAGIC, STATE_BYTES: another layout is ignored */
    unsigned char st[STATE_BYTES];
};

struct fetch {
    struct ax_state_redis *st;
    struct ax_list link;  /* on st->waiting while its caller waits */
    struct ax_session *s; /* NULL once answered */
    ax_state_pulled_cb cb;
    void *ud;
    uint64_t deadline;
};

struct ax_state_redis {
    uv_loop_t *loop;
    char url[320], host[256], addr[64];
    int port, db;
    char user[128], pass[256]; /* redis://[USER:]PASS@...: AUTH on connect; "" none */
    uint64_t wait_ms, ttl_ms;
    redisAsyncContext *ctx; /* NULL while disconnected */
    int connected;
    int warned;  /* the outage is logged */
    int refused; /* Redis answered PING with an error (a password wanted or wrong) */
    int closing;
    int pending;              /* commands sent, reply not yet in */
    uint64_t last_progress;   /* uv_now of the last reply (or of the first pending command) */
    uint64_t reconnect_at;    /* 0: none scheduled */
    uint64_t connect_started; /* uv_now when the connect began */
    uint64_t backoff_ms;
    struct ax_list waiting; /* fetches, oldest (first deadline) first */
    uv_timer_t wait_timer;  /* the first waiting fetch's deadline */
    uv_timer_t watch_timer; /* reconnects, stalls */
    int pending_closes;
    void (*on_closed)(void *);
    void *on_closed_ud;
    /* for /health */
    uint64_t errors, hits, misses, timeouts, writes, dropped, skipped;
    int late_in_row;     /* fetches in a row that outlived their wait */
    uint64_t skip_until; /* a slow Redis: fetches skipped until then (uv_now) */
    char last_error[160];
};

static void state_connect(struct ax_state_redis *st);
static void on_wait(uv_timer_t *t);
static void on_ping_reply(redisAsyncContext *ac, void *r, void *priv);
static int send_command(struct ax_state_redis *st, redisCallbackFn *fn, void *priv, const char *fmt,
                        ...);

static void note_error(struct ax_state_redis *st, const char *what, const char *detail)
{
    st->errors++;
    snprintf(st->last_error, sizeof(st->last_error), "%s%s%s", what, detail ? ": " : "",
             detail ? detail : "");
    if (!st->connected && !st->warned && !st->closing) { /* once per outage */
        st->warned = 1;
        AX_LOG_WARN(NULL, "state: %s unavailable (%s): serving from local state, retrying", st->url,
                    st->last_error);
    }
}

/* ---- connection ---------------------------------------------------------------------- */

/* A reply (or NULL for a connection that went) came in on ac: counts only for the current
 * connection, a dropped one's callbacks coming after a new one may be up. */
static void reply_in(struct ax_state_redis *st, const redisAsyncContext *ac)
{
    if (ac == st->ctx && st->pending > 0)
        st->pending--;
    st->last_progress = uv_now(st->loop);
}

static void schedule_reconnect(struct ax_state_redis *st)
{
    if (st->closing)
        return;
    st->reconnect_at = uv_now(st->loop) + st->backoff_ms;
    st->backoff_ms =
        st->backoff_ms * 2 > STATE_BACKOFF_MAX_MS ? STATE_BACKOFF_MAX_MS : st->backoff_ms * 2;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct ax_state_redis *st = ac->data;

    if (status != REDIS_OK) {
        /* hiredis frees the context after this; its pending callbacks get NULL */
        if (st->ctx == ac) {
            st->ctx = NULL;
            st->connected = 0;
        }
        note_error(st, "connect", ac->errstr);
        AX_LOG_DEBUG(NULL, "state: cannot connect to %s: %s", st->url, ac->errstr);
        schedule_reconnect(st);
        return;
    }
    /* connected once Redis answers: a stopped Redis still completes the TCP handshake */
    if (send_command(st, on_ping_reply, NULL, "PING") < 0)
        note_error(st, "ping", ac->errstr);
}

static void on_ping_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct ax_state_redis *st = ac->data;
    redisReply *reply = r;

    (void)priv;
    reply_in(st, ac);
    if (reply == NULL || st->ctx != ac)
        return;                             /* the connection went */
    if (reply->type == REDIS_REPLY_ERROR) { /* NOAUTH, WRONGPASS...: dropped at the next check */
        note_error(st, "redis", reply->str);
        AX_LOG_WARN(NULL, "state: %s refused us: %s", st->url, reply->str);
        st->refused = 1;
        return;
    }
    st->connected = 1;
    st->warned = 0;
    st->backoff_ms = STATE_BACKOFF_MIN_MS;
    AX_LOG_INFO(NULL, "state: connected to %s", st->url);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct ax_state_redis *st = ac->data;

    if (st->ctx == ac) {
        st->ctx = NULL;
        st->connected = 0;
    }
    if (st->closing)
        return;
    st->warned = 1; /* said below */
    if (status != REDIS_OK || ac->err)
        note_error(st, "connection lost", ac->errstr[0] ? ac->errstr : NULL);
    AX_LOG_WARN(NULL, "state: lost %s (%s): serving from local state, reconnecting", st->url,
                ac->errstr[0] ? ac->errstr : "closed");
    schedule_reconnect(st);
}

/* Replies of SELECT and SET: only their errors matter. */
static void on_plain_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct ax_state_redis *st = ac->data;
    redisReply *reply = r;

    (void)priv;
    reply_in(st, ac);
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        note_error(st, "redis", reply->str);
        AX_LOG_WARN(NULL, "state: %s answered an error: %s", st->url, reply->str);
    }
}

static int send_command(struct ax_state_redis *st, redisCallbackFn *fn, void *priv, const char *fmt,
                        ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = redisvAsyncCommand(st->ctx, fn, priv, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK)
        return AX_EIO;
    if (st->pending++ == 0)
        st->last_progress = uv_now(st->loop);
    return 0;
}

static void state_connect(struct ax_state_redis *st)
{
    redisAsyncContext *ac;

    st->reconnect_at = 0;
    if ((ac = redisAsyncConnect(st->addr, st->port)) == NULL) {
        note_error(st, "connect", "out of memory");
        schedule_reconnect(st);
        return;
    }
    if (ac->err) {
        note_error(st, "connect", ac->errstr);
        redisAsyncFree(ac);
        schedule_reconnect(st);
        return;
    }
    ac->data = st;
    if (redisLibuvAttach(ac, st->loop) != REDIS_OK) {
        note_error(st, "connect", "cannot attach to the loop");
        redisAsyncFree(ac);
        schedule_reconnect(st);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    st->ctx = ac;
    st->pending = 0;
    st->connect_started = uv_now(st->loop);
    st->refused = 0;
    if (st->pass[0] &&
        (st->user[0] ? send_command(st, on_plain_reply, NULL, "AUTH %s %s", st->user, st->pass)
                     : send_command(st, on_plain_reply, NULL, "AUTH %s", st->pass)) < 0)
        note_error(st, "auth", ac->errstr);
    if (st->db != 0 && send_command(st, on_plain_reply, NULL, "SELECT %d", st->db) < 0)
        note_error(st, "select", ac->errstr);
}

/* Drops the connection: every pending callback runs now with a NULL reply, then
 * on_disconnect. Never from inside a hiredis callback. */
static void drop_connection(struct ax_state_redis *st)
{
    redisAsyncContext *ac = st->ctx;

    if (ac == NULL)
        return;
    redisAsyncFree(ac);
    if (st->ctx == ac) { /* not connected yet: no on_disconnect */
        st->ctx = NULL;
        st->connected = 0;
        schedule_reconnect(st);
    }
    st->pending = 0;
}

static void on_watch(uv_timer_t *t)
{
    struct ax_state_redis *st = t->data;
    uint64_t now = uv_now(st->loop);

    if (st->ctx == NULL && st->reconnect_at != 0 && now >= st->reconnect_at) {
        state_connect(st);
        return;
    }
    if (st->ctx != NULL && !st->connected) {
        /* hiredis's libuv adapter drops a poll error, a refused connect among them: read
         * the socket's error here */
        int e = 0;
        socklen_t len = sizeof(e);
        if (getsockopt(st->ctx->c.fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e != 0) {
            note_error(st, "connect", strerror(e));
            drop_connection(st);
            return;
        }
        if (st->refused || now - st->connect_started > STATE_STALL_MS) {
            if (!st->refused)
                note_error(st, "connect", "no answer within 1 s");
            drop_connection(st);
            return;
        }
    }
    if (st->ctx != NULL && st->pending > 0 && now - st->last_progress > STATE_STALL_MS) {
        note_error(st, "no reply", "Redis answered nothing for 1 s");
        AX_LOG_WARN(NULL, "state: %s answered nothing for %d ms: reconnecting", st->url,
                    STATE_STALL_MS);
        drop_connection(st);
    }
}

/* ---- fetches ----------------------------------------------------------------------- */

/* Tells the caller (once) and forgets it; the fetch itself lives on until its reply. */
static void fetch_answer(struct fetch *f, int found)
{
    ax_state_pulled_cb cb = f->cb;
    void *ud = f->ud;

    ax_list_unlink(&f->link);
    f->s = NULL;
    f->cb = NULL;
    f->ud = NULL;
    if (cb)
        cb(ud, found);
}

static void arm_wait_timer(struct ax_state_redis *st)
{
    struct fetch *f;
    uint64_t now = uv_now(st->loop);

    if (ax_list_empty(&st->waiting)) {
        uv_timer_stop(&st->wait_timer);
        return;
    }
    f = AX_LIST_ENTRY(st->waiting.next, struct fetch, link);
    uv_timer_start(&st->wait_timer, on_wait, f->deadline > now ? f->deadline - now : 1, 0);
}

/* Copies a stored snapshot into s, keeping what belongs to this instance's monitor. */
static int apply_blob(struct ax_session *s, const redisReply *r)
{
    const struct blob *b;
    struct ax_session keep = *s;

    if (r == NULL || r->type != REDIS_REPLY_STRING || (size_t)r->len != sizeof(struct blob))
        return 0;
    b = (const struct blob *)(const void *)r->str;
    if (b->magic != STATE_MAGIC || b->size != STATE_BYTES)
        return 0;
    memcpy(s, b->st, STATE_BYTES);
    if (strncmp(s->key, keep.key, sizeof(s->key)) != 0) { /* another session's: keep ours */
        *s = keep;
        return 0;
    }
    /* this loop's clock and references: another instance's times mean nothing here */
    s->created_ms = keep.created_ms;
    s->last_seen_ms = keep.last_seen_ms;
    s->refs = keep.refs;
    s->_monitor = keep._monitor;
    s->_hnext = keep._hnext;
    s->_lru = keep._lru;
    s->_hash = keep._hash;
    return 1;
}

static void on_get_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct fetch *f = priv;
    struct ax_state_redis *st = f->st;
    redisReply *reply = r;
    int found = 0;

    reply_in(st, ac);
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
        note_error(st, "redis", reply->str);
    if (f->s != NULL) { /* its caller still waits */
        found = apply_blob(f->s, reply);
        st->late_in_row = 0;
        if (found)
            st->hits++;
        else
            st->misses++;
        fetch_answer(f, found);
        arm_wait_timer(st);
    }
    free(f);
}

static void on_wait(uv_timer_t *t)
{
    struct ax_state_redis *st = t->data;
    uint64_t now = uv_now(st->loop);

    while (!ax_list_empty(&st->waiting)) {
        struct fetch *f = AX_LIST_ENTRY(st->waiting.next, struct fetch, link);
        if (f->deadline > now)
            break;
        st->timeouts++;
        if (++st->late_in_row >= STATE_SLOW_AFTER && st->skip_until <= now) {
            /* slow but answering: the stall check won't drop it, so stop paying the wait */
            st->skip_until = now + STATE_SLOW_SKIP_MS;
            st->late_in_row = STATE_SLOW_AFTER - 1; /* one more late fetch skips again */
            note_error(st, "slow", "fetches outlived the wait: skipped for 1 s");
        }
        fetch_answer(f, 0); /* the reply, when it comes, frees f */
    }
    arm_wait_timer(st);
}

static void state_key(const struct ax_session *s, char *out, size_t n)
{
    snprintf(out, n, STATE_KEY_PREFIX "%s", s->key);
}

int ax_state_redis_pull(struct ax_state_redis *st, struct ax_session *s, ax_state_pulled_cb cb,
                        void *ud)
{
    struct fetch *f;
    char key[sizeof(STATE_KEY_PREFIX) + AX_SESSION_KEY_MAX];

    if (!st->connected || st->ctx == NULL || st->closing || st->pending >= STATE_MAX_PENDING)
        return AX_EAGAIN;
    if (st->skip_until > uv_now(st->loop)) {
        st->skipped++;
        return AX_EAGAIN;
    }
    if ((f = calloc(1, sizeof(*f))) == NULL)
        return AX_ENOMEM;
    state_key(s, key, sizeof(key));
    f->st = st;
    f->s = s;
    f->cb = cb;
    f->ud = ud;
    f->deadline = uv_now(st->loop) + st->wait_ms;
    if (send_command(st, on_get_reply, f, "GET %s", key) < 0) {
        free(f);
        return AX_EAGAIN;
    }
    ax_list_push_back(&st->waiting, &f->link);
    if (st->waiting.next == &f->link)
        arm_wait_timer(st);
    return 0;
}

void ax_state_redis_push(struct ax_state_redis *st, const struct ax_session *s)
{
    struct blob b;
    char key[sizeof(STATE_KEY_PREFIX) + AX_SESSION_KEY_MAX];
    int rc;

    if (!st->connected || st->ctx == NULL || st->closing || st->pending >= STATE_MAX_PENDING) {
        st->dropped++;
        return;
    }
    memset(&b, 0, sizeof(b));
    b.magic = STATE_MAGIC;
    b.size = STATE_BYTES;
    memcpy(b.st, s, STATE_BYTES);
    state_key(s, key, sizeof(key));
    if (st->ttl_ms > 0)
        rc = send_command(st, on_plain_reply, NULL, "SET %s %b PX %llu", key, (const char *)&b,
                          sizeof(b), (unsigned long long)st->ttl_ms);
    else
        rc = send_command(st, on_plain_reply, NULL, "SET %s %b", key, (const char *)&b, sizeof(b));
    if (rc < 0)
        st->dropped++;
    else
        st->writes++;
}

/* ---- life cycle -------------------------------------------------------------------- */

/* redis://HOST[:PORT][/DB]; HOST may be [v6]. Returns 0 or fills err. */
static int parse_url(struct ax_state_redis *st, const char *url, struct ax_error *err)
{
    const char *p, *end;
    char *stop;
    size_t n;
    long v;

    if (strncmp(url, "redis://", 8) != 0)
        return ax_error_set(err, 400, "invalid_request_error",
                            "--state: expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]");
    p = url + 8;
    {
        /* USER:PASS@ or :PASS@ or PASS@ before the host (Redis's URL form) */
        const char *at = strchr(p, '@'), *slash = strchr(p, '/');
        if (at != NULL && (slash == NULL || at < slash)) {
            const char *colon = memchr(p, ':', (size_t)(at - p));
            const char *pw = colon ? colon + 1 : p;
            size_t ul = colon ? (size_t)(colon - p) : 0, pl = (size_t)(at - pw);
            if (ul >= sizeof(st->user) || pl >= sizeof(st->pass) || pl == 0)
                goto bad;
            memcpy(st->user, p, ul);
            st->user[ul] = 0;
            memcpy(st->pass, pw, pl);
            st->pass[pl] = 0;
            p = at + 1;
        }
    }
    if (*p == '[') {
        if ((end = strchr(p, ']')) == NULL)
            goto bad;
        n = (size_t)(end - p - 1);
        if (n == 0 || n >= sizeof(st->host))
            goto bad;
        memcpy(st->host, p + 1, n);
        st->host[n] = 0;
        p = end + 1;
    } else {
        n = strcspn(p, ":/");
        if (n == 0 || n >= sizeof(st->host))
            goto bad;
        memcpy(st->host, p, n);
        st->host[n] = 0;
        p += n;
    }
    st->port = 6379;
    st->db = 0;
    if (*p == ':') {
        v = strtol(p + 1, &stop, 10);
        if (stop == p + 1 || v < 1 || v > 65535)
            goto bad;
        st->port = (int)v;
        p = stop;
    }
    if (*p == '/' && p[1] != 0) {
        v = strtol(p + 1, &stop, 10);
        if (stop == p + 1 || *stop != 0 || v < 0 || v > 1000000)
            goto bad;
        st->db = (int)v;
    } else if (*p == '/' || *p == 0) {
        /* no database: 0 */
    } else {
        goto bad;
    }
    return 0;
bad: /* the URL is not echoed: it may hold a password */
    return ax_error_set(err, 400, "invalid_request_error",
                        "--state: expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (port "
                        "1-65535, DB a number)");
}

/* The host's first address, once at start-up (hiredis would resolve at every reconnect,
 * blocking the loop). */
static int resolve_host(struct ax_state_redis *st, struct ax_error *err)
{
    struct addrinfo hints, *ai = NULL;
    int rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if ((rc = getaddrinfo(st->host, NULL, &hints, &ai)) != 0 || ai == NULL)
        return ax_error_set(err, 400, "invalid_request_error", "--state: cannot resolve '%s': %s",
                            st->host, gai_strerror(rc));
    rc = getnameinfo(ai->ai_addr, ai->ai_addrlen, st->addr, sizeof(st->addr), NULL, 0,
                     NI_NUMERICHOST);
    freeaddrinfo(ai);
    if (rc != 0)
        return ax_error_set(err, 400, "invalid_request_error", "--state: cannot resolve '%s'",
                            st->host);
    return 0;
}

int ax_state_redis_new(uv_loop_t *loop, const char *url, uint64_t wait_ms, uint64_t ttl_ms,
                       struct ax_state_redis **out, struct ax_error *err)
{
    struct ax_state_redis *st = calloc(1, sizeof(*st));

    if (st == NULL)
        return ax_error_set_code(err, AX_ENOMEM, 500, "api_error", "out of memory");
    if (parse_url(st, url, err) < 0 || resolve_host(st, err) < 0) {
        free(st);
        return AX_EINVAL;
    }
    if (st->pass[0])
        ax_log_secret_add(st->pass); /* never in a log line, whatever quotes it */
    snprintf(st->url, sizeof(st->url), "redis://%s:%d/%d", st->host, st->port, st->db);
    st->loop = loop;
    st->wait_ms = wait_ms > 0 ? wait_ms : 1;
    st->ttl_ms = ttl_ms;
    st->backoff_ms = STATE_BACKOFF_MIN_MS;
    ax_list_init(&st->waiting);
    uv_timer_init(loop, &st->wait_timer);
    st->wait_timer.data = st;
    uv_timer_init(loop, &st->watch_timer);
    st->watch_timer.data = st;
    uv_timer_start(&st->watch_timer, on_watch, STATE_WATCH_MS, STATE_WATCH_MS);
    state_connect(st);
    AX_LOG_INFO(NULL, "state: sessions shared through %s (wait %llu ms)", st->url,
                (unsigned long long)st->wait_ms);
    *out = st;
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct ax_state_redis *st = h->data;

    if (--st->pending_closes == 0) {
        void (*cb)(void *) = st->on_closed;
        void *ud = st->on_closed_ud;
        if (st->pass[0])
            ax_log_secret_remove(st->pass);
        free(st);
        if (cb)
            cb(ud);
    }
}

void ax_state_redis_close(struct ax_state_redis *st, void (*cb)(void *), void *ud)
{
    st->closing = 1;
    st->on_closed = cb;
    st->on_closed_ud = ud;
    while (!ax_list_empty(&st->waiting))
        fetch_answer(AX_LIST_ENTRY(st->waiting.next, struct fetch, link), 0);
    drop_connection(st); /* the replies still due free their fetches now */
    st->pending_closes = 2;
    uv_close((uv_handle_t *)&st->wait_timer, on_timer_closed);
    uv_close((uv_handle_t *)&st->watch_timer, on_timer_closed);
}

cJSON *ax_state_redis_health(const struct ax_state_redis *st)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddStringToObject(o, "backend", "redis");
    cJSON_AddStringToObject(o, "url", st->url);
    cJSON_AddBoolToObject(o, "connected", st->connected);
    cJSON_AddNumberToObject(o, "errors", (double)st->errors);
    if (st->last_error[0])
        cJSON_AddStringToObject(o, "last_error", st->last_error);
    else
        cJSON_AddNullToObject(o, "last_error");
    cJSON_AddNumberToObject(o, "wait_ms", (double)st->wait_ms);
    cJSON_AddNumberToObject(o, "hits", (double)st->hits);
    cJSON_AddNumberToObject(o, "misses", (double)st->misses);
    cJSON_AddNumberToObject(o, "timeouts", (double)st->timeouts);
    cJSON_AddNumberToObject(o, "writes", (double)st->writes);
    cJSON_AddNumberToObject(o, "dropped", (double)st->dropped);
    cJSON_AddNumberToObject(o, "skipped", (double)st->skipped);
    cJSON_AddBoolToObject(o, "slow", st->skip_until > uv_now(st->loop));
    return o;
}
