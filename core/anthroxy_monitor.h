/* anthroxy_monitor.h - per-session context monitors.
 *
 * A session is what one client conversation looks like to us: its token usage over time,
 * counters the policies keep, recent tool calls, and a per-session calibration of the raw
 * token estimate against the upstream's real prompt_tokens. Sessions live in a monitor
 * (one per server, owned by the loop thread: no locks), found by key in O(1), expired
 * after an idle TTL and capped in number, the least recently seen unreferenced session
 * going first. Time is always a parameter: nothing here reads a clock. Pass a monotonic
 * time (uv_now): the LRU order, which expiry walks from its old end, assumes it never goes
 * backwards. */
#ifndef ANTHROXY_MONITOR_H
#define ANTHROXY_MONITOR_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "anthroxy_list.h"

#define AX_SESSION_KEY_MAX 128
#define AX_SESSION_HISTORY 50
#define AX_SESSION_FINGERPRINTS 16

struct ax_monitor;

/* Fields are readable by everyone; update them through the functions below. */
struct ax_session {
    char key[AX_SESSION_KEY_MAX]; /* NUL-terminated; see ax_session_key for long keys */
    char arm[32];                 /* A/B arm, "" until set */
    char upstream[32];            /* the fleet member that served its last request, or "" */
    uint64_t created_ms, last_seen_ms;
    int refs;
    int64_t total_requests, last_input_tokens, last_output_tokens, peak_input_tokens;
    int64_t history[AX_SESSION_HISTORY]; /* input tokens per request, oldest first */
    int n_history;
    int64_t prune_count, overflow_count;
    int64_t forced_tool_turns; /* consecutive turns whose tool choice was forced */
    int64_t tool_retries;      /* tool calls retried by the tool_retry policy */
    int64_t thinking_runaways; /* consecutive answers that spent max_tokens thinking */
    uint64_t tool_fingerprints[AX_SESSION_FINGERPRINTS]; /* recent tool calls, oldest first */
    int n_fingerprints;
    double calibration;   /* real / estimate, a size-weighted exponential average (see
                           * ax_session_record_response), in [0.25, 4.0]; 1.0 until measured */
    uint64_t tools_fp;    /* the last request's tools (a cheap shape fingerprint) ... */
    int64_t tools_tokens; /* ... and their raw estimate, reused while they stay the same */

    /* calibration bookkeeping (reported by ax_session_to_json) */
    int64_t last_estimate;     /* raw estimate of the last measured prompt */
    int64_t last_real_prompt;  /* the upstream's prompt_tokens for it */
    int64_t n_calibration;     /* responses that carried a real prompt count */
    double calibration_weight; /* decayed sum of the estimates behind the factor */
    double last_ratio;         /* real / estimate of the last measured prompt (clamped) */
    double last_forecast;      /* real / calibrated estimate of the last answer's prompt (0:
                                  none yet): how far off the factor was on the last turn */
    int64_t n_tokenized;       /* prompts counted with the upstream's /tokenize */
    double abs_err_raw_sum;    /* sum of |raw estimate - real| / real */
    double abs_err_cal_sum;    /* sum of |calibrated estimate - real| / real, using the
                                * factor known before that response (an honest forecast) */

    /* private to monitor.c */
    struct ax_monitor *_monitor;
    struct ax_session *_hnext; /* hash chain */
    struct ax_list _lru;       /* the monitor's LRU list, newest first */
    uint64_t _hash;
};

/* A monitor for at most max_sessions sessions (more only while every one of them is
 * referenced), each forgotten ttl_ms after it was last seen (0: never). NULL on ENOMEM. */
struct ax_monitor *ax_monitor_new(int max_sessions, uint64_t ttl_ms);
/* Frees every session, referenced or not. */
void ax_monitor_free(struct ax_monitor *m);

/* Session key, first present of: x-claude-code-session-id header; the session_id in
 * metadata.user_id when that is a JSON string holding an object with session_id;
 * x-session-id header; metadata.user_id as is; else "default". Writes into out (NUL-
 * terminated). A key of AX_SESSION_KEY_MAX bytes or more, or one longer than n - 1, is
 * shortened to a prefix plus '#' and a 16-hex-digit hash of the whole, so distinct long
 * keys stay distinct. Headers may be NULL; empty values count as absent. */
void ax_session_key(const char *claude_code_session_hdr, const char *x_session_hdr,
                    const cJSON *body, char *out, size_t n);

/* Finds or creates the session (evicting the least recently seen unreferenced session
 * when at the cap, and expiring idle ones); takes a reference and marks it seen at now_ms.
 * NULL only on ENOMEM. */
struct ax_session *ax_monitor_get(struct ax_monitor *m, const char *key, uint64_t now_ms);
/* Looks up without creating, touching or referencing. */
struct ax_session *ax_monitor_find(struct ax_monitor *m, const char *key);
void ax_session_ref(struct ax_session *s);
/* Drops a reference; the session stays (until expired or evicted at refs == 0). */
void ax_session_unref(struct ax_session *s);

/* An outgoing request of input_tokens (calibrated estimate): counts it, updates last,
 * peak and history, marks the session seen. */
void ax_session_record_request(struct ax_session *s, int64_t input_tokens, uint64_t now_ms);
/* A finished response. estimated_prompt is the RAW (uncalibrated) estimate of the prompt
 * that was sent, real_prompt the upstream's prompt_tokens (<= 0: unknown). With both, the
 * calibration is updated and the real count replaces the estimate in last_input_tokens,
 * the newest history entry and the peak. The update is weighted by size: the ratio enters
 * with weight estimated_prompt against the weight of those before, which decays by at most
 * estimated_prompt (and at most 30 %), so small side requests barely move a factor learnt
 * from large turns. */
void ax_session_record_response(struct ax_session *s, int64_t estimated_prompt, int64_t real_prompt,
                                int64_t output_tokens);
/* The tool calls of a response (fps: n fingerprints, appended to the recent ones), and
 * whether that turn's tool choice was forced: forced increments forced_tool_turns, not
 * forced resets it to 0. */
void ax_session_note_tool_calls(struct ax_session *s, const uint64_t *fps, int n, int forced);
/* How many of the recent fingerprints equal fp. */
int ax_session_fingerprint_count(const struct ax_session *s, uint64_t fp);
void ax_session_note_prune(struct ax_session *s);
void ax_session_note_overflow(struct ax_session *s);
void ax_session_set_arm(struct ax_session *s, const char *arm);

/* estimate * calibration, rounded. */
/* ax_tokens_tools(tools), kept in the session while the tools keep their shape (names and
 * the lengths of every string below them): agents send the same ~70 KB of tools every turn,
 * and walking their shape costs far less than estimating their text. */
int64_t ax_session_tools_tokens(struct ax_session *s, const cJSON *tools);
int64_t ax_session_calibrated(const struct ax_session *s, int64_t estimate);
/* Whether the session's estimate cannot be trusted for this turn: its factor is at a clamp,
 * or on the last turn the calibrated estimate was off by more than ratio (0.25: a quarter)
 * of the real count. Then the prompt is worth counting with the upstream (/tokenize). */
int ax_session_estimate_off(const struct ax_session *s, double ratio);
/* The upstream counted real tokens for a prompt estimated at estimate: this turn's factor is
 * that ratio (beyond the clamp if need be, within 1/16..16), weighted as one such answer. */
void ax_session_set_measured(struct ax_session *s, int64_t estimate, int64_t real);
/* Mean absolute error of the estimate in percent, raw and calibrated; -1 before any
 * measurement. */
double ax_session_error_pct(const struct ax_session *s, int calibrated);

/* As the seed computes them: last_input_tokens / context_window (0 when the window is
 * unknown); "CRITICAL" >= 0.95, "HIGH" >= 0.85, "ELEVATED" >= 0.75, else NULL; turns left
 * at the average positive growth of the history, -1 when unknown. */
double ax_session_utilization(const struct ax_session *s, int64_t context_window);
const char *ax_session_warning(const struct ax_session *s, int64_t context_window);
int64_t ax_session_turns_remaining(const struct ax_session *s, int64_t context_window);

/* The seed's /v1/context fields, plus session, arm, calibration and tool-call state. */
cJSON *ax_session_to_json(const struct ax_session *s, int64_t context_window,
                          double prune_threshold);
/* Counts and one short entry per session, most recently seen first. */
cJSON *ax_monitor_to_json(const struct ax_monitor *m, int64_t context_window,
                          double prune_threshold);

/* Forgets sessions idle for more than the TTL (now_ms - last_seen_ms > ttl) with refs 0. */
void ax_monitor_expire(struct ax_monitor *m, uint64_t now_ms);
size_t ax_monitor_count(const struct ax_monitor *m);

#endif
