/* anthroxy_upstream.h - the upstream client: libcurl multi driven by the libuv loop.
 *
 * One struct ax_upstream per model server: a CURLM (connection reuse, keep-alive), one
 * uv_poll per socket, one uv_timer for curl's timeout, one uv_idle for work deferred out of
 * curl's callbacks (and curl's 0 ms timeouts), a uv_timer per transfer (idle timeout,
 * retry backoff), and a concurrency cap with a FIFO wait queue. The background probe of the
 * server's facts is probe.c's (anthroxy_probe.h, included at the end).
 * Everything runs on the loop thread; no call blocks. */
#ifndef ANTHROXY_UPSTREAM_H
#define ANTHROXY_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "anthroxy_error.h"

struct ax_upstream; /* one per server: a CURLM, its polls and timer, a slot queue */
struct ax_xfer;     /* one transfer */

struct ax_upstream_opts {
    const char *base_url; /* "http://127.0.0.1:8080/v1" or without /v1 (copied) */
    const char *api_key;  /* NULL/"" or sent as Authorization: Bearer key (copied) */
    int max_concurrent;   /* running transfers (<= 0: 64); more wait in a FIFO */
    int queue_max;        /* waiting transfers beyond which start fails AX_EBUSY (< 0: 0) */
    /* 0 = none for each. idle: no byte from the upstream for this long, counted from the
     * start of each attempt, so it covers waiting for the response headers too (llama-server
     * sends nothing while it processes the prompt: make it generous); a paused transfer is
     * never idle. total: curl's CURLOPT_TIMEOUT_MS per attempt, also while paused. */
    uint64_t connect_timeout_ms, idle_timeout_ms, total_timeout_ms;
    /* Retries after a connect failure only (refused, unresolvable, connect timeout: nothing
     * of the request was sent), never after; probes never retry. */
    int connect_retries;
    uint64_t retry_delay_ms;   /* first delay, doubled each retry */
    size_t max_response_bytes; /* for ax_upstream_fetch (0: 8 MiB) */
};

/* Creates the client on loop. opts is copied (strings too). Returns 0, AX_EINVAL (no or bad
 * base_url) or AX_ENOMEM. */
int ax_upstream_new(uv_loop_t *loop, const struct ax_upstream_opts *o, struct ax_upstream **out);

/* Cancels every transfer (queued or running: their on_done run with AX_ECANCELED, from the
 * loop), stops the probes, closes every handle; on_closed (may be NULL) runs from the loop
 * when all are closed, then the memory is freed. No other call on up after this one. */
void ax_upstream_close(struct ax_upstream *up, void (*on_closed)(void *ud), void *ud);

/* The server root the paths are appended to: base_url with ONE trailing "/v1" (and
 * trailing slashes) removed, e.g. "http://127.0.0.1:8080". */
const char *ax_upstream_root(const struct ax_upstream *up);

/* path is from the server root: "/v1/chat/completions", "/props", "/slots", "/tokenize",
 * "/apply-template", "/v1/models", "/health". */
struct ax_xfer_spec {
    const char *method; /* "GET" or "POST" */
    const char *path;   /* copied */
    const char *body;   /* POST body (JSON), NOT copied: the caller keeps it alive and
                           unchanged until on_body_done runs or on_done returns */
    size_t body_len;
    uint64_t total_timeout_ms; /* override, 0 = the default */
    const char *request_id;    /* sent as X-Request-Id (copied; cut at 40 bytes); may be NULL */
};

struct ax_xfer_cbs {
    /* Once, when the status line and headers are complete (before any on_data). status is
     * the HTTP status; retry_after is the Retry-After seconds or 0. Return <0 to abort
     * (on_done then gets that code). May be NULL. */
    int (*on_headers)(struct ax_xfer *x, int status, int retry_after, void *ud);
    /* Response body bytes, incrementally. Return 0 when consumed, AX_EAGAIN to pause
     * (NOTHING of p was consumed: the same bytes come again after ax_xfer_resume), or < 0 to
     * abort the transfer (on_done then gets that code, e.g. AX_ETOOBIG or AX_ECANCELED). A paused
     * transfer is not subject to the idle timeout (the stall is the client's); the total timeout
     * still applies. May be NULL (bytes dropped). */
    int (*on_data)(struct ax_xfer *x, const char *p, size_t n, void *ud);
    /* Exactly once, from the loop, never from inside ax_upstream_start or ax_xfer_cancel:
     * rc 0 (complete response, whatever the status), AX_ETIMEDOUT (connect timeout after
     * the retries, idle or total timeout), AX_EUPSTREAM (refused or unresolvable after the
     * retries: the caller answers 529), AX_EIO (reset/truncated after the request was sent),
     * AX_ECANCELED (ax_xfer_cancel, ax_upstream_close), or the code on_headers/on_data
     * returned to abort. The transfer is freed when on_done returns. */
    void (*on_done)(struct ax_xfer *x, int rc, void *ud);
    /* At most once, before on_done: curl has read the whole body and the response has begun
     * (after on_headers returns, or from the read that took the last byte when the upstream
     * answered first), so the body is never read again and the caller may free it. Curl
     * re-sends a body only on a reused connection that died before answering. May be NULL. */
    void (*on_body_done)(struct ax_xfer *x, void *ud);
};

/* Starts (or queues, when max_concurrent transfers run) a transfer. Returns 0 or AX_EBUSY
 * (queue full) / AX_ENOMEM / AX_EINVAL (bad spec) / AX_ECANCELED (upstream closing); on
 * failure no callback ever runs. cbs is copied. *out (may be NULL) stays valid until
 * on_done returns. */
int ax_upstream_start(struct ax_upstream *up, const struct ax_xfer_spec *spec,
                      const struct ax_xfer_cbs *cbs, void *ud, struct ax_xfer **out);

/* Resumes a transfer paused by on_data returning AX_EAGAIN. Safe to call from anywhere,
 * including write-completion callbacks and on_data itself: the real
 * curl_easy_pause(CURLPAUSE_CONT) runs later from the loop (an idle callback), never from
 * inside curl's callbacks; on_data may then run from inside it with the kept bytes. No effect on a
 * transfer that is not paused or already finished. */
void ax_xfer_resume(struct ax_xfer *x);

/* Aborts (the upstream connection is closed, so the model server stops generating);
 * on_done runs later from the loop with AX_ECANCELED. Idempotent; safe from inside this
 * transfer's own callbacks; no effect once on_done has been scheduled with another rc. */
void ax_xfer_cancel(struct ax_xfer *x);

/* The HTTP status once headers arrived, else 0. */
int ax_xfer_status(const struct ax_xfer *x);

/* 1 while the transfer waits in the queue for a slot, else 0. */
int ax_xfer_queued(const struct ax_xfer *x);

/* A buffered request: cb(rc, status, body, len, ud), exactly once, from the loop. body is
 * NUL-terminated, valid only during cb, and NULL when rc < 0. An answer longer than
 * max_response_bytes ends the transfer with AX_ETOOBIG. timeout_ms 0 = the default total
 * timeout. body is not copied (kept alive by the caller until cb). Returns as
 * ax_upstream_start; *out may be passed to ax_xfer_cancel until cb runs. */
typedef void (*ax_fetch_cb)(int rc, int status, const char *body, size_t len, void *ud);
int ax_upstream_fetch(struct ax_upstream *up, const char *method, const char *path,
                      const char *body, size_t body_len, uint64_t timeout_ms, ax_fetch_cb cb,
                      void *ud, struct ax_xfer **out /* may be NULL */);

/* Counters, for /health and tests. */
struct ax_upstream_stats {
    int running;              /* transfers holding a slot now */
    int queued;               /* waiting for one */
    uint64_t started;         /* transfers ever started (queued ones once they got a slot) */
    uint64_t connect_retries; /* connect retries performed */
    uint64_t failed;          /* on_done with rc != 0 and != AX_ECANCELED */
};
void ax_upstream_stats(const struct ax_upstream *up, struct ax_upstream_stats *out);

/* ---- for probe.c, which polls the server over the transfer API (ax__: core only) ---- */

/* A GET that bypasses the concurrency cap and the queue and never retries; buffered as
 * ax_upstream_fetch, with its own answer limit. Failures log at DEBUG. */
int ax__upstream_fetch_bypass(struct ax_upstream *up, const char *path, uint64_t timeout_ms,
                              size_t max, ax_fetch_cb cb, void *ud, struct ax_xfer **out);
uv_loop_t *ax__upstream_loop(const struct ax_upstream *up);
/* One object that lives as long as up and holds handles on its loop (the probe). up calls
 * on_close(obj) once, from ax_upstream_close, before cancelling the transfers; obj then closes
 * its handles and calls ax__upstream_detached, and up is freed only after that. */
void ax__upstream_attach(struct ax_upstream *up, void *obj, void (*on_close)(void *obj));
void *ax__upstream_attached(const struct ax_upstream *up);
void ax__upstream_detached(struct ax_upstream *up);

/* The probe's API (probe.c) comes with this header, so callers need one include. */
#include "anthroxy_probe.h"

#endif
