/* anthroxy_state_redis.h - the session monitors' state kept in Redis (--state
 * redis://HOST:PORT/DB), so several anthroxy instances (behind HAProxy or nginx) serve the
 * same sessions and any one can take over a session whose instance died.
 *
 * Each instance keeps its own monitor (monitor.c) as before; a request fetches its session's
 * snapshot from Redis when it starts, with a bounded wait (--state-wait), and writes it back
 * when it ends, never waiting for that write. Redis down, slow or answering late: the local
 * state serves, and /health says so (ax_state_redis_health). One connection per event loop,
 * through hiredis's libuv adapter; reconnects with backoff. The snapshot is the session's
 * public fields (counters, window history, calibration, the experiment arm) as one binary
 * value, tagged with a layout version: instances of one build share it, an instance of
 * another layout ignores it (and overwrites it). Keys expire with the session TTL. */
#ifndef ANTHROXY_STATE_REDIS_H
#define ANTHROXY_STATE_REDIS_H

#include <stdint.h>
#include <uv.h>

#include <cjson/cJSON.h>

struct ax_error;
struct ax_session;
struct ax_state_redis;

/* The end of a fetch: found is 1 when the stored state was copied into the session, 0 when
 * there was none, Redis failed or did not answer within the wait (the session is then as it
 * was). Runs exactly once, from the loop, within the wait. */
typedef void (*ax_state_pulled_cb)(void *ud, int found);

/* url: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (HOST a name resolved now, or an address;
 * a password is sent with AUTH on each connect and registered as a log secret). wait_ms: the
 * longest a fetch holds a request; ttl_ms: the keys' lifetime (0: none). Connects in the
 * background: a Redis that is not there yet is not an error. Returns 0, or AX_EINVAL with err
 * naming what is wrong in url. */
int ax_state_redis_new(uv_loop_t *loop, const char *url, uint64_t wait_ms, uint64_t ttl_ms,
                       struct ax_state_redis **out, struct ax_error *err);
/* Cancels what waits (each fetch ends with found 0), drops the connection and frees st once
 * its handles are closed; then cb(ud). */
void ax_state_redis_close(struct ax_state_redis *st, void (*cb)(void *), void *ud);

/* Fetches s's state: returns 0 and cb(ud, found) follows (s must stay alive until then;
 * after cb nothing touches s or ud, whenever Redis answers), or AX_EAGAIN when not connected,
 * too many commands wait, or Redis is slow (three fetches in a row outlived the wait: then
 * fetches are skipped for a second), and then cb never runs. */
int ax_state_redis_pull(struct ax_state_redis *st, struct ax_session *s, ax_state_pulled_cb cb,
                        void *ud);
/* Stores s's state (a copy is taken now); never waits, silently dropped when not connected. */
void ax_state_redis_push(struct ax_state_redis *st, const struct ax_session *s);

/* {"backend":"redis","url","connected","errors","last_error","wait_ms","hits","misses",
 * "timeouts","writes","dropped","skipped","slow"} for /health. */
cJSON *ax_state_redis_health(const struct ax_state_redis *st);

#endif
