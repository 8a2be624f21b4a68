/* upstream.c - the upstream client: libcurl's multi interface driven by the libuv loop.
 *
 * One uv_poll per socket curl opens (curl_multi_assign), one uv_timer for curl's timeout,
 * one uv_idle for work that must not run inside curl's callbacks (resume, cancel, on_done),
 * a per-transfer uv_timer for the idle timeout and connect-retry backoff, and a concurrency
 * cap with a FIFO queue. messages.c streams chat completions through it, routes.c and the
 * policy engine fetch, probe.c polls the server's facts; nothing here knows the shape of a
 * request or an answer. */
#include "anthroxy_upstream.h"
#include "anthroxy_buf.h"
#include "anthroxy_error.h"
#include "anthroxy_list.h"
#include "anthroxy_log.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Logged without a request id: a transfer does not know which request owns it. Calls
 * ax_log_write directly so this file does not depend on request.c. */
#define UP_LOG(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((lvl) >= ax_log_level_current)                                                         \
            ax_log_write((lvl), NULL, __VA_ARGS__);                                                \
    } while (0)

#define UP_DEFAULT_CONCURRENT 64
#define UP_DEFAULT_FETCH_MAX (8u * 1024 * 1024)

enum xfer_state {
    XS_QUEUED,  /* in up->queue (or up->launchq for probes), no easy handle in the multi */
    XS_RUNNING, /* easy handle added to the multi */
    XS_BACKOFF, /* connect failed; x->timer relaunches it */
    XS_DONE     /* in up->done, on_done pending or running; then freed */
};

struct ax_xfer {
    struct ax_upstream *up;
    enum xfer_state state;
    CURL *easy;
    uv_timer_t timer; /* idle timeout while running, backoff while waiting to retry */
    char *method;
    char *path;
    const char *body; /* the caller's; NULL once on_body_done said curl is done with it */
    size_t body_len;
    size_t body_off; /* what curl has read of it (the read callback) */
    int body_read;   /* curl has read it whole */
    uint64_t total_timeout_ms;
    struct ax_xfer_cbs cbs;
    void *ud;

    int bypass;      /* probe: not subject to the concurrency cap */
    int has_slot;    /* counted in up->running */
    int attempt;     /* connect retries done */
    int status;      /* HTTP status once headers are complete */
    int retry_after; /* seconds, from Retry-After */
    int headers_done;
    int paused;             /* the write callback returned CURL_WRITEFUNC_PAUSE */
    int want_resume;        /* ax_xfer_resume since the last on_data */
    int abort_rc;           /* nonzero: abort with this rc (cancel, idle timeout, callback error) */
    int rc;                 /* the rc on_done gets */
    uint64_t last_activity; /* uv_now of the last header or body bytes */
    char errbuf[CURL_ERROR_SIZE];
    /* X-Request-Id: one list node of our own in front of the shared headers, so that
     * tagging a transfer allocates nothing (curl only reads the list) */
    struct curl_slist id_hdr;
    char id_line[64];

    struct ax_list link;      /* on up->queue, up->launchq or up->done */
    struct ax_list all_link;  /* on up->all */
    struct ax_list pend_link; /* on up->pend */
};

struct up_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct ax_upstream *up;
    struct ax_list link; /* on up->socks */
};

struct ax_upstream {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer;
    uv_idle_t idle;
    struct curl_slist *headers;
    char *root;
    char *base_url;
    struct ax_upstream_opts opts;

    struct ax_list queue;   /* FIFO of transfers waiting for a slot */
    struct ax_list launchq; /* probe transfers waiting to be added (never capped) */
    struct ax_list done;    /* finished, on_done pending */
    struct ax_list all;     /* every live transfer */
    struct ax_list pend;    /* aborts and resumes to do outside curl */
    struct ax_list socks;
    int running, queued;
    int in_curl;  /* depth of calls into curl that may run our callbacks */
    int curl_due; /* curl asked for a 0 ms timeout: socket_action from the idle pass */
    int nlive;    /* transfers not yet freed */
    int nhandles; /* uv handles not yet closed */
    int closing, finishing;
    void (*on_closed)(void *ud);
    void *closed_ud;
    struct ax_upstream_stats stats;

    void *attached; /* the probe (ax__upstream_attach), or NULL */
    void (*attached_on_close)(void *obj);
};

static void up_schedule(struct ax_upstream *up);
static void up_flush(struct ax_upstream *up);
static void up_maybe_finish(struct ax_upstream *up);
static void xfer_finish(struct ax_xfer *x, int rc);

/* ---- small lists ---- */

#define XFER_OF(node, member) AX_LIST_ENTRY((node), struct ax_xfer, member)

static struct ax_xfer *xlist_pop(struct ax_list *l)
{
    struct ax_list *n = ax_list_first(l);

    if (n == NULL)
        return NULL;
    ax_list_unlink(n);
    return XFER_OF(n, link);
}

static void pend_push(struct ax_xfer *x)
{
    if (ax_list_linked(&x->pend_link))
        return;
    ax_list_push_back(&x->up->pend, &x->pend_link);
    up_schedule(x->up);
}

/* ---- handle bookkeeping ---- */

/* Frees up and what it owns, then tells ax_upstream_close's caller (if there was one). Also
 * the failure path of ax_upstream_new, which has no handles open yet. */
static void up_free(struct ax_upstream *up)
{
    void (*cb)(void *) = up->on_closed;
    void *ud = up->closed_ud;

    curl_slist_free_all(up->headers);
    free(up->root);
    free(up->base_url);
    ax_log_secret_remove(up->opts.api_key);
    free((char *)up->opts.api_key);
    free(up);
    curl_global_cleanup();
    if (cb != NULL)
        cb(ud);
}

static void up_handle_closed(struct ax_upstream *up)
{
    if (--up->nhandles == 0 && up->finishing)
        up_free(up);
}

static void up_on_handle_close(uv_handle_t *h)
{
    up_handle_closed(h->data);
}

/* ---- curl <-> libuv glue (as curl's docs/examples/multi-uv.c) ---- */

static void xfer_on_timer(uv_timer_t *t);

static void up_reap(struct ax_upstream *up);

static void sock_on_close(uv_handle_t *h)
{
    struct up_sock *s = h->data;
    struct ax_upstream *up = s->up;

    free(s);
    up_handle_closed(up);
}

static void sock_close(struct up_sock *s)
{
    ax_list_unlink(&s->link);
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_on_close);
}

static void sock_on_poll(uv_poll_t *p, int status, int events)
{
    struct up_sock *s = p->data;
    struct ax_upstream *up = s->up;
    int flags = 0, running;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    up->in_curl++;
    curl_multi_socket_action(up->multi, s->fd, flags, &running);
    up->in_curl--;
    up_reap(up);
    up_flush(up);
}

static int up_on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct ax_upstream *up = userp;
    struct up_sock *s = socketp;
    int events = 0;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            curl_multi_assign(up->multi, fd, NULL);
            sock_close(s);
        }
        return 0;
    }
    if (s == NULL) {
        if ((s = calloc(1, sizeof(*s))) == NULL)
            return -1;
        if (uv_poll_init_socket(up->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        up->nhandles++;
        s->fd = fd;
        s->up = up;
        s->poll.data = s;
        ax_list_push_front(&up->socks, &s->link);
        curl_multi_assign(up->multi, fd, s);
    }
    if (what != CURL_POLL_IN)
        events |= UV_WRITABLE;
    if (what != CURL_POLL_OUT)
        events |= UV_READABLE;
    uv_poll_start(&s->poll, events, sock_on_poll);
    return 0;
}

static void up_on_curl_timer(uv_timer_t *t)
{
    struct ax_upstream *up = t->data;
    int running;

    up->in_curl++;
    curl_multi_socket_action(up->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    up->in_curl--;
    up_reap(up);
    up_flush(up);
}

static int up_on_curl_timeout(CURLM *multi, long timeout_ms, void *userp)
{
    struct ax_upstream *up = userp;

    (void)multi;
    uv_timer_stop(&up->curl_timer);
    if (timeout_ms < 0)
        return 0;
    /* 0 means "call socket_action now", but we are inside curl: multi-uv.c arms 1 ms, which
     * delays every new transfer by a millisecond. The idle handle runs it on the next loop
     * pass instead, after I/O has had its turn, so curl asking again cannot starve it. */
    if (timeout_ms == 0) {
        up->curl_due = 1;
        up_schedule(up);
    } else {
        uv_timer_start(&up->curl_timer, up_on_curl_timer, (uint64_t)timeout_ms, 0);
    }
    return 0;
}

/* ---- transfer callbacks (inside curl: report and return) ---- */

/* Curl never reads the body again once it has read it whole and a response has begun: it
 * re-sends (rewinding through xfer_on_seek) only on a reused connection that died before
 * answering. From then the caller may free it; on_body_done tells it, once. */
static void xfer_body_maybe_done(struct ax_xfer *x)
{
    if (!x->body_read || !x->headers_done || x->body == NULL)
        return;
    x->body = NULL; /* never touched again, whatever the caller does with it */
    if (x->cbs.on_body_done != NULL)
        x->cbs.on_body_done(x, x->ud);
}

static size_t xfer_on_read(char *buf, size_t size, size_t nitems, void *ud)
{
    struct ax_xfer *x = ud;
    size_t n = size * nitems;

    if (x->abort_rc != 0 || x->body == NULL)
        return CURL_READFUNC_ABORT;
    if (n > x->body_len - x->body_off)
        n = x->body_len - x->body_off;
    memcpy(buf, x->body + x->body_off, n);
    x->body_off += n;
    if (x->body_off == x->body_len && !x->body_read) {
        x->body_read = 1;
        xfer_body_maybe_done(x); /* an upstream that answered before reading it all */
    }
    return n;
}

static int xfer_on_seek(void *ud, curl_off_t offset, int origin)
{
    struct ax_xfer *x = ud;

    if (origin != SEEK_SET || x->body == NULL || offset < 0 || (size_t)offset > x->body_len)
        return CURL_SEEKFUNC_CANTSEEK;
    x->body_off = (size_t)offset;
    x->body_read = x->body_off == x->body_len;
    return CURL_SEEKFUNC_OK;
}

static void xfer_deliver_headers(struct ax_xfer *x)
{
    long code = 0;
    int rc;

    curl_off_t retry_after = 0;

    x->headers_done = 1;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    x->status = (int)code;
    /* curl parses Retry-After itself, delta-seconds and HTTP-date alike */
    if (curl_easy_getinfo(x->easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK)
        x->retry_after = retry_after > 86400 ? 86400 : retry_after < 0 ? 0 : (int)retry_after;
    if (x->cbs.on_headers == NULL) {
        xfer_body_maybe_done(x);
        return;
    }
    rc = x->cbs.on_headers(x, x->status, x->retry_after, x->ud);
    if (rc < 0 && x->abort_rc == 0)
        x->abort_rc = rc;
    if (x->abort_rc == 0)
        xfer_body_maybe_done(x);
}

static size_t xfer_on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct ax_xfer *x = ud;
    size_t n = size * nmemb;
    long code = 0;

    if (x->abort_rc != 0)
        return 0;
    x->last_activity = uv_now(x->up->loop);
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        x->retry_after = 0; /* a new response (after a 1xx) */
    } else if ((n == 2 && p[0] == '\r') || (n == 1 && p[0] == '\n')) {
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200 && !x->headers_done) {
            xfer_deliver_headers(x);
            if (x->abort_rc != 0)
                return 0;
        }
    }
    return n;
}

/* curl may call this from inside curl_easy_pause(CONT) (with the bytes it kept when we
 * paused), so it only reads and writes the transfer's own flags. */
static size_t xfer_on_write(char *p, size_t size, size_t nmemb, void *ud)
{
    struct ax_xfer *x = ud;
    size_t n = size * nmemb;
    int rc;

    if (x->abort_rc != 0)
        return 0;
    if (!x->headers_done) {
        xfer_deliver_headers(x);
        if (x->abort_rc != 0)
            return 0;
    }
    x->last_activity = uv_now(x->up->loop);
    if (n == 0 || x->cbs.on_data == NULL)
        return n;
    x->want_resume = 0;
    rc = x->cbs.on_data(x, p, n, x->ud);
    if (x->abort_rc != 0) /* cancelled from inside on_data */
        return 0;
    if (rc == AX_EAGAIN) {
        x->paused = 1;
        if (x->want_resume)
            pend_push(x);
        return CURL_WRITEFUNC_PAUSE;
    }
    if (rc < 0) {
        x->abort_rc = rc; /* on_done reports the callback's own reason */
        return 0;
    }
    return n;
}

/* ---- transfer life cycle (outside curl's callbacks) ---- */

static int xfer_setup(struct ax_xfer *x)
{
    struct ax_upstream *up = x->up;
    struct ax_buf url;
    uint64_t total = x->total_timeout_ms ? x->total_timeout_ms : up->opts.total_timeout_ms;
    CURL *e;
    int rc;

    if ((e = curl_easy_init()) == NULL)
        return AX_ENOMEM;
    ax_buf_init(&url, 64 * 1024);
    if ((rc = ax_buf_puts(&url, up->root)) < 0 || (rc = ax_buf_puts(&url, x->path)) < 0) {
        ax_buf_free(&url);
        curl_easy_cleanup(e);
        return rc;
    }
    x->easy = e;
    curl_easy_setopt(e, CURLOPT_URL, url.data); /* curl copies it */
    ax_buf_free(&url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L); /* prompt processing can take minutes */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->id_line[0] ? &x->id_hdr : up->headers);
    /* curl's smallest upload buffer (the default is 64 KiB): bounded memory per stream */
    curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, xfer_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, xfer_on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    if (up->opts.connect_timeout_ms)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)up->opts.connect_timeout_ms);
    if (total)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)total);
    if (strcmp(x->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        if (x->body != NULL) {
            /* The body is the caller's, alive until on_body_done or on_done: no copy. Read
             * through a callback, not CURLOPT_POSTFIELDS, so that we know when curl is done
             * with it (a held stream frees its request early). */
            x->body_off = 0;
            x->body_read = 0;
            curl_easy_setopt(e, CURLOPT_POST, 1L);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body_len);
            curl_easy_setopt(e, CURLOPT_READFUNCTION, xfer_on_read);
            curl_easy_setopt(e, CURLOPT_READDATA, x);
            curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, xfer_on_seek);
            curl_easy_setopt(e, CURLOPT_SEEKDATA, x);
        } else {
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
        }
        if (strcmp(x->method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, x->method);
    }
    return 0;
}

static void xfer_arm_idle(struct ax_xfer *x)
{
    if (x->up->opts.idle_timeout_ms)
        uv_timer_start(&x->timer, xfer_on_timer, x->up->opts.idle_timeout_ms, 0);
}

static void xfer_launch(struct ax_xfer *x)
{
    struct ax_upstream *up = x->up;
    int rc;

    if (x->easy == NULL && (rc = xfer_setup(x)) < 0) {
        xfer_finish(x, rc);
        return;
    }
    x->headers_done = 0;
    x->status = 0;
    x->retry_after = 0;
    x->paused = 0;
    x->errbuf[0] = '\0';
    if (curl_multi_add_handle(up->multi, x->easy) != CURLM_OK) {
        xfer_finish(x, AX_ENOMEM);
        return;
    }
    if (x->attempt == 0)
        up->stats.started++;
    x->state = XS_RUNNING;
    x->last_activity = uv_now(up->loop);
    xfer_arm_idle(x);
}

/* Removes x from wherever it is, releases its slot and queues its on_done. Never called
 * from inside curl's callbacks. */
static void xfer_finish(struct ax_xfer *x, int rc)
{
    struct ax_upstream *up = x->up;

    switch (x->state) {
    case XS_QUEUED:
        ax_list_unlink(&x->link);
        if (!x->bypass)
            up->queued--;
        break;
    case XS_RUNNING:
        curl_multi_remove_handle(up->multi, x->easy);
        break;
    case XS_DONE:
        return;
    default:
        break;
    }
    if (x->has_slot) {
        x->has_slot = 0;
        up->running--;
    }
    uv_timer_stop(&x->timer);
    x->state = XS_DONE;
    x->rc = rc;
    if (rc != 0 && rc != AX_ECANCELED) {
        up->stats.failed++;
        if (x->bypass)
            UP_LOG(AX_LOG_LVL_DEBUG, "upstream: probe %s %s: %s%s%s", x->method, x->path,
                   ax_strerror(rc), x->errbuf[0] ? ": " : "", x->errbuf);
        else
            UP_LOG(AX_LOG_LVL_WARN, "upstream: %s %s failed: %s%s%s", x->method, x->path,
                   ax_strerror(rc), x->errbuf[0] ? ": " : "", x->errbuf);
    }
    ax_list_push_back(&up->done, &x->link);
}

static void xfer_on_close(uv_handle_t *h)
{
    struct ax_xfer *x = h->data;
    struct ax_upstream *up = x->up;

    free(x->method);
    free(x->path);
    free(x);
    up->nlive--;
    up_handle_closed(up);
    up_maybe_finish(up);
}

static void xfer_release(struct ax_xfer *x)
{
    ax_list_unlink(&x->pend_link);
    if (x->easy != NULL)
        curl_easy_cleanup(x->easy);
    x->easy = NULL;
    ax_list_unlink(&x->all_link);
    uv_close((uv_handle_t *)&x->timer, xfer_on_close);
}

static void xfer_on_timer(uv_timer_t *t)
{
    struct ax_xfer *x = t->data;
    struct ax_upstream *up = x->up;
    uint64_t now = uv_now(up->loop), idle = up->opts.idle_timeout_ms, quiet;

    if (x->state == XS_BACKOFF) {
        xfer_launch(x);
    } else if (x->state == XS_RUNNING && idle) {
        quiet = now - x->last_activity;
        if (x->paused) /* the stall is the client's, not the upstream's */
            uv_timer_start(&x->timer, xfer_on_timer, idle, 0);
        else if (quiet >= idle) {
            snprintf(x->errbuf, sizeof(x->errbuf), "no data for %llu ms",
                     (unsigned long long)quiet);
            xfer_finish(x, AX_ETIMEDOUT);
        } else
            uv_timer_start(&x->timer, xfer_on_timer, idle - quiet, 0);
    }
    up_flush(up);
}

/* A failure before any byte of the request was sent: safe to retry. */
static int xfer_connect_failed(struct ax_xfer *x, CURLcode code)
{
    curl_off_t connect_us = 0, total_us = 0;
    long req_size = 0;
    uint64_t total = x->total_timeout_ms ? x->total_timeout_ms : x->up->opts.total_timeout_ms;

    if (code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST)
        return 1;
    if (code != CURLE_OPERATION_TIMEDOUT)
        return 0;
    curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
    curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &req_size);
    curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME_T, &total_us);
    if (connect_us != 0 || req_size != 0)
        return 0;
    /* the total timeout, not the connect timeout, ran out: retrying cannot help */
    return !(total && (uint64_t)total_us / 1000 + 5 >= total);
}

static int xfer_map_curl(CURLcode code)
{
    switch (code) {
    case CURLE_OK:
        return 0;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return AX_EUPSTREAM;
    case CURLE_OPERATION_TIMEDOUT:
        return AX_ETIMEDOUT;
    case CURLE_OUT_OF_MEMORY:
        return AX_ENOMEM;
    default:
        return AX_EIO; /* reset, truncated, nothing received, ... */
    }
}

static void xfer_on_curl_done(struct ax_xfer *x, CURLcode code)
{
    struct ax_upstream *up = x->up;
    uint64_t delay;

    if (x->abort_rc != 0) {
        xfer_finish(x, x->abort_rc);
        return;
    }
    if (code != CURLE_OK && !up->closing && !x->bypass && x->attempt < up->opts.connect_retries &&
        xfer_connect_failed(x, code)) {
        curl_multi_remove_handle(up->multi, x->easy);
        delay = up->opts.retry_delay_ms << (x->attempt < 20 ? x->attempt : 20);
        x->attempt++;
        up->stats.connect_retries++;
        UP_LOG(AX_LOG_LVL_WARN, "upstream: %s %s: %s; retry %d/%d in %llu ms", x->method, x->path,
               x->errbuf[0] ? x->errbuf : curl_easy_strerror(code), x->attempt,
               up->opts.connect_retries, (unsigned long long)delay);
        x->state = XS_BACKOFF;
        uv_timer_start(&x->timer, xfer_on_timer, delay, 0);
        return;
    }
    if (code != CURLE_OK && x->errbuf[0] == '\0')
        snprintf(x->errbuf, sizeof(x->errbuf), "%s", curl_easy_strerror(code));
    xfer_finish(x, xfer_map_curl(code));
}

/* Reads curl's finished transfers; only here (after curl_multi_socket_action returned)
 * are handles removed. */
static void up_reap(struct ax_upstream *up)
{
    CURLMsg *m;
    int left;
    char *priv;
    struct ax_xfer *x;

    while ((m = curl_multi_info_read(up->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        if ((x = (struct ax_xfer *)priv) != NULL)
            xfer_on_curl_done(x, m->data.result);
    }
}

static void up_dispatch(struct ax_upstream *up)
{
    struct ax_xfer *x;
    int cap = up->opts.max_concurrent;

    while ((x = xlist_pop(&up->launchq)) != NULL)
        xfer_launch(x);
    while (up->running < cap && (x = xlist_pop(&up->queue)) != NULL) {
        up->queued--;
        x->has_slot = 1;
        up->running++;
        xfer_launch(x);
    }
}

/* Dispatches waiting transfers and runs pending on_done callbacks. Runs only from the
 * loop, never inside curl or inside one of our public calls. */
static void up_flush(struct ax_upstream *up)
{
    struct ax_xfer *x;

    if (up->in_curl)
        return;
    if (!up->closing)
        up_dispatch(up);
    while ((x = xlist_pop(&up->done)) != NULL) {
        if (x->cbs.on_done != NULL)
            x->cbs.on_done(x, x->rc, x->ud);
        xfer_release(x);
    }
}

static void up_unpause(struct ax_xfer *x)
{
    struct ax_upstream *up = x->up;
    CURLcode code;

    x->paused = 0;
    x->want_resume = 0;
    x->last_activity = uv_now(up->loop);
    up->in_curl++;
    /* May call xfer_on_write with the bytes kept at the pause; it may pause again. */
    code = curl_easy_pause(x->easy, CURLPAUSE_CONT);
    up->in_curl--;
    if (x->abort_rc != 0)
        xfer_finish(x, x->abort_rc);
    else if (code != CURLE_OK) {
        snprintf(x->errbuf, sizeof(x->errbuf), "resume: %s", curl_easy_strerror(code));
        xfer_finish(x, AX_EIO);
    }
}

static void up_on_idle(uv_idle_t *h)
{
    struct ax_upstream *up = h->data;
    struct ax_list *n;
    struct ax_xfer *x;
    int running;

    if (up->curl_due && !up->finishing) {
        up->curl_due = 0;
        up->in_curl++;
        curl_multi_socket_action(up->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        up->in_curl--;
    }
    while ((n = ax_list_first(&up->pend)) != NULL) {
        x = XFER_OF(n, pend_link);
        ax_list_unlink(n);
        if (x->state == XS_DONE)
            continue;
        if (x->abort_rc != 0)
            xfer_finish(x, x->abort_rc);
        else if (x->state == XS_RUNNING && x->paused && x->want_resume)
            up_unpause(x);
    }
    up_reap(up);
    up_flush(up);
    if (ax_list_empty(&up->pend) && ax_list_empty(&up->done) && !up->curl_due)
        uv_idle_stop(&up->idle);
    up_maybe_finish(up);
}

static void up_schedule(struct ax_upstream *up)
{
    if (!up->finishing)
        uv_idle_start(&up->idle, up_on_idle);
}

/* ---- public API ---- */

static char *derive_root(const char *base)
{
    size_t n = strlen(base);
    char *root;

    while (n > 0 && base[n - 1] == '/')
        n--;
    if (n >= 3 && memcmp(base + n - 3, "/v1", 3) == 0)
        n -= 3;
    while (n > 0 && base[n - 1] == '/')
        n--;
    if ((root = malloc(n + 1)) == NULL)
        return NULL;
    memcpy(root, base, n);
    root[n] = '\0';
    return root;
}

static int up_build_headers(struct ax_upstream *up)
{
    static const char *const fixed[] = {
        "Content-Type: application/json", "Accept: application/json, text/event-stream",
        "Expect:", /* no 100-continue round trip */
    };
    struct curl_slist *l = NULL, *n;
    struct ax_buf auth;
    size_t i;
    int rc = 0;

    for (i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if ((n = curl_slist_append(l, fixed[i])) == NULL)
            goto fail;
        l = n;
    }
    if (up->opts.api_key != NULL && up->opts.api_key[0] != '\0') {
        ax_buf_init(&auth, 64 * 1024);
        if ((rc = ax_buf_printf(&auth, "Authorization: Bearer %s", up->opts.api_key)) == 0)
            n = curl_slist_append(l, auth.data);
        ax_buf_free(&auth);
        if (rc < 0 || n == NULL)
            goto fail;
        l = n;
    }
    up->headers = l;
    return 0;
fail:
    curl_slist_free_all(l);
    return rc < 0 ? rc : AX_ENOMEM;
}

int ax_upstream_new(uv_loop_t *loop, const struct ax_upstream_opts *o, struct ax_upstream **out)
{
    struct ax_upstream *up;
    int rc = AX_ENOMEM;

    *out = NULL;
    if (o == NULL || o->base_url == NULL ||
        (strncmp(o->base_url, "http://", 7) != 0 && strncmp(o->base_url, "https://", 8) != 0))
        return AX_EINVAL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return AX_ENOMEM;
    if ((up = calloc(1, sizeof(*up))) == NULL) {
        curl_global_cleanup();
        return AX_ENOMEM;
    }
    up->loop = loop;
    up->opts = *o;
    up->opts.api_key = NULL;
    if (up->opts.max_concurrent <= 0)
        up->opts.max_concurrent = UP_DEFAULT_CONCURRENT;
    if (up->opts.queue_max < 0)
        up->opts.queue_max = 0;
    if (up->opts.connect_retries < 0)
        up->opts.connect_retries = 0;
    if (up->opts.max_response_bytes == 0)
        up->opts.max_response_bytes = UP_DEFAULT_FETCH_MAX;
    ax_list_init(&up->queue);
    ax_list_init(&up->launchq);
    ax_list_init(&up->done);
    ax_list_init(&up->all);
    ax_list_init(&up->pend);
    ax_list_init(&up->socks);
    if ((up->base_url = strdup(o->base_url)) == NULL ||
        (up->root = derive_root(o->base_url)) == NULL)
        goto fail;
    if (o->api_key != NULL && (up->opts.api_key = strdup(o->api_key)) == NULL)
        goto fail;
    up->opts.base_url = up->base_url;
    if ((rc = up_build_headers(up)) < 0)
        goto fail;
    rc = AX_ENOMEM;
    if ((up->multi = curl_multi_init()) == NULL)
        goto fail;
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, up_on_socket);
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETDATA, up);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, up_on_curl_timeout);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERDATA, up);
    /* Room for every capped transfer plus the probes; keep that many idle connections. */
    curl_multi_setopt(up->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)up->opts.max_concurrent + 4);
    curl_multi_setopt(up->multi, CURLMOPT_MAXCONNECTS, (long)up->opts.max_concurrent + 4);
    uv_timer_init(loop, &up->curl_timer);
    uv_idle_init(loop, &up->idle);
    up->curl_timer.data = up->idle.data = up;
    up->nhandles = 2;
    /* an upstream that echoes the request's headers back in an error body must not show the
     * key to the client or the log: both go through ax_redact */
    if (ax_log_secret_add(up->opts.api_key) < 0)
        UP_LOG(AX_LOG_LVL_WARN, "upstream: too many keys to redact from logs");
    *out = up;
    return 0;
fail:
    up_free(up); /* on_closed is still NULL: nobody is told */
    return rc;
}

const char *ax_upstream_root(const struct ax_upstream *up)
{
    return up->root;
}

static void up_maybe_finish(struct ax_upstream *up)
{
    struct ax_list *n;

    if (!up->closing || up->finishing || up->nlive > 0 || up->in_curl)
        return;
    up->finishing = 1;
    uv_idle_stop(&up->idle);
    /* May report CURL_POLL_REMOVE for cached connections (closing their polls). */
    curl_multi_cleanup(up->multi);
    up->multi = NULL;
    while ((n = ax_list_first(&up->socks)) != NULL)
        sock_close(AX_LIST_ENTRY(n, struct up_sock, link));
    uv_close((uv_handle_t *)&up->curl_timer, up_on_handle_close);
    uv_close((uv_handle_t *)&up->idle, up_on_handle_close);
}

void ax_upstream_close(struct ax_upstream *up, void (*on_closed)(void *ud), void *ud)
{
    struct ax_list *n;

    if (up->closing)
        return;
    up->closing = 1;
    up->on_closed = on_closed;
    up->closed_ud = ud;
    if (up->attached != NULL)
        up->attached_on_close(up->attached);
    AX_LIST_FOREACH(n, &up->all)
    ax_xfer_cancel(XFER_OF(n, all_link));
    up_schedule(up);
}

/* bypass: a probe, which neither counts against the cap nor waits in the queue */
static int upstream_start(struct ax_upstream *up, const struct ax_xfer_spec *spec,
                          const struct ax_xfer_cbs *cbs, void *ud, int bypass, struct ax_xfer **out)
{
    struct ax_xfer *x;

    if (out != NULL)
        *out = NULL;
    if (up->closing)
        return AX_ECANCELED;
    if (spec == NULL || cbs == NULL || spec->method == NULL || spec->path == NULL ||
        spec->path[0] != '/' || (spec->body == NULL && spec->body_len != 0))
        return AX_EINVAL;
    if (!bypass && up->running + up->queued >= up->opts.max_concurrent + up->opts.queue_max)
        return AX_EBUSY;
    if ((x = calloc(1, sizeof(*x))) == NULL)
        return AX_ENOMEM;
    if ((x->method = strdup(spec->method)) == NULL || (x->path = strdup(spec->path)) == NULL) {
        free(x->method);
        free(x);
        return AX_ENOMEM;
    }
    x->up = up;
    x->body = spec->body;
    x->body_len = spec->body_len;
    x->total_timeout_ms = spec->total_timeout_ms;
    if (spec->request_id != NULL && spec->request_id[0] != '\0') {
        snprintf(x->id_line, sizeof(x->id_line), "X-Request-Id: %.40s", spec->request_id);
        x->id_hdr.data = x->id_line;
        x->id_hdr.next = up->headers;
    }
    x->cbs = *cbs;
    x->ud = ud;
    x->bypass = bypass;
    uv_timer_init(up->loop, &x->timer);
    x->timer.data = x;
    up->nhandles++;
    up->nlive++;
    ax_list_init(&x->pend_link);
    ax_list_push_front(&up->all, &x->all_link);
    x->state = XS_QUEUED;
    if (bypass) {
        ax_list_push_back(&up->launchq, &x->link);
    } else {
        ax_list_push_back(&up->queue, &x->link);
        up->queued++;
    }
    if (out != NULL)
        *out = x;
    if (up->in_curl) {
        up_schedule(up); /* curl refuses new handles from inside its callbacks */
    } else {
        up_dispatch(up);
        if (!ax_list_empty(&up->done)) /* a launch failed: on_done must come from the loop */
            up_schedule(up);
    }
    return 0;
}

int ax_upstream_start(struct ax_upstream *up, const struct ax_xfer_spec *spec,
                      const struct ax_xfer_cbs *cbs, void *ud, struct ax_xfer **out)
{
    return upstream_start(up, spec, cbs, ud, 0, out);
}

void ax_xfer_resume(struct ax_xfer *x)
{
    if (x == NULL || x->state == XS_DONE || x->abort_rc != 0)
        return;
    x->want_resume = 1;
    if (x->paused)
        pend_push(x);
    /* not paused yet: inside on_data before it returns AX_EAGAIN; xfer_on_write queues it */
}

void ax_xfer_cancel(struct ax_xfer *x)
{
    if (x == NULL || x->state == XS_DONE || x->abort_rc != 0)
        return;
    x->abort_rc = AX_ECANCELED;
    pend_push(x);
}

int ax_xfer_status(const struct ax_xfer *x)
{
    return x->status;
}

int ax_xfer_queued(const struct ax_xfer *x)
{
    return x->state == XS_QUEUED;
}

void ax_upstream_stats(const struct ax_upstream *up, struct ax_upstream_stats *out)
{
    *out = up->stats;
    out->running = up->running;
    out->queued = up->queued;
}

/* ---- buffered fetch ---- */

struct fetch {
    struct ax_buf body;
    ax_fetch_cb cb;
    void *ud;
    int rc;
};

static int fetch_on_data(struct ax_xfer *x, const char *p, size_t n, void *ud)
{
    struct fetch *f = ud;
    int rc;

    (void)x;
    if ((rc = ax_buf_append(&f->body, p, n)) < 0) {
        f->rc = rc;
        return rc;
    }
    return 0;
}

static void fetch_on_done(struct ax_xfer *x, int rc, void *ud)
{
    struct fetch *f = ud;

    if (f->rc != 0)
        rc = f->rc;
    if (rc < 0)
        f->cb(rc, x->status, NULL, 0, f->ud);
    else
        f->cb(0, x->status, f->body.data != NULL ? f->body.data : "", f->body.len, f->ud);
    ax_buf_free(&f->body);
    free(f);
}

static int fetch_start(struct ax_upstream *up, const char *method, const char *path,
                       const char *body, size_t body_len, uint64_t timeout_ms, size_t max,
                       ax_fetch_cb cb, void *ud, int bypass, struct ax_xfer **out)
{
    static const struct ax_xfer_cbs cbs = {NULL, fetch_on_data, fetch_on_done, NULL};
    struct ax_xfer_spec spec = {method, path, body, body_len, timeout_ms, NULL};
    struct fetch *f;
    int rc;

    if (cb == NULL)
        return AX_EINVAL;
    if ((f = calloc(1, sizeof(*f))) == NULL)
        return AX_ENOMEM;
    ax_buf_init(&f->body, max);
    f->cb = cb;
    f->ud = ud;
    if ((rc = upstream_start(up, &spec, &cbs, f, bypass, out)) < 0)
        free(f);
    return rc;
}

int ax_upstream_fetch(struct ax_upstream *up, const char *method, const char *path,
                      const char *body, size_t body_len, uint64_t timeout_ms, ax_fetch_cb cb,
                      void *ud, struct ax_xfer **out)
{
    return fetch_start(up, method, path, body, body_len, timeout_ms, up->opts.max_response_bytes,
                       cb, ud, 0, out);
}

/* ---- for probe.c ---- */

int ax__upstream_fetch_bypass(struct ax_upstream *up, const char *path, uint64_t timeout_ms,
                              size_t max, ax_fetch_cb cb, void *ud, struct ax_xfer **out)
{
    return fetch_start(up, "GET", path, NULL, 0, timeout_ms, max, cb, ud, 1, out);
}

uv_loop_t *ax__upstream_loop(const struct ax_upstream *up)
{
    return up->loop;
}

void ax__upstream_attach(struct ax_upstream *up, void *obj, void (*on_close)(void *obj))
{
    up->attached = obj;
    up->attached_on_close = on_close;
    up->nhandles++; /* released by ax__upstream_detached */
}

void *ax__upstream_attached(const struct ax_upstream *up)
{
    return up->attached;
}

void ax__upstream_detached(struct ax_upstream *up)
{
    up->attached = NULL;
    up_handle_closed(up);
}
