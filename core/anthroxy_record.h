/* anthroxy_record.h - `--record DIR`: every exchange of POST /v1/messages as one JSON line in
 * its session's file, written without ever blocking the loop (docs/recording.md is the
 * format).
 *
 * The pipeline (messages.c) opens one struct ax_rec per request with ax_rec_begin and feeds
 * it as the request goes: each policy's changes (ax_rec_trace, an ax_policy_req trace), the
 * upstream body exactly as sent, llama-server's timings, the error if any; ax_rec_finish
 * builds the line and queues it. Every ax_rec_* function accepts a NULL ax_rec (recording
 * off) and none can fail the request: a write error, a full disk or a cap loses the
 * recording only (the next line of that session is then a full snapshot).
 *
 * Client and upstream bodies are stored as byte deltas against one of the previous exchanges
 * of the same session (common head and tail kept, the middle written), so a Claude Code session
 * costs about its last request instead of the sum of all of them; a snapshot is written for
 * the first exchange of a file, after a lost line, and when the delta would be over half the
 * body (the client compacted). ax_rec_rebuild undoes a delta (replay uses it). */
#ifndef ANTHROXY_RECORD_H
#define ANTHROXY_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "anthroxy_error.h"
#include "anthroxy_policy.h"

struct ax_req;
struct ax_usage;
struct ax_recorder;
struct ax_rec;

/* Opens the recorder over dir (created if missing). max_file: bytes one session's file may
 * reach (later exchanges of that session are dropped); max_dir: bytes of all *.jsonl files in
 * dir (the least recently written sessions are removed first). The directory is scanned
 * synchronously: call at start-up only. Returns 0 or AX_EIO with err naming the directory. */
int ax_recorder_new(uv_loop_t *loop, const char *dir, uint64_t max_file, uint64_t max_dir,
                    struct ax_recorder **out, struct ax_error *err);

/* Stops accepting exchanges, lets the writes in flight finish, closes the files, then calls
 * on_closed (may be NULL) from the loop. Exchanges still open may finish later: they are
 * dropped, and the memory goes with the last of them. */
void ax_recorder_close(struct ax_recorder *r, void (*on_closed)(void *ud), void *ud);

/* Figures for tests and /health-like reporting: lines written, dropped, bytes written. */
struct ax_recorder_stats {
    uint64_t written, dropped, bytes, removed_files;
};
void ax_recorder_stats(const struct ax_recorder *r, struct ax_recorder_stats *st);

/* One exchange. Takes req's body (the client's bytes, left empty) and copies its headers
 * without authorization, x-api-key, proxy-authorization and cookie. arm may be NULL. Returns
 * NULL when r is NULL, closing, or out of memory. */
struct ax_rec *ax_rec_begin(struct ax_recorder *r, struct ax_req *req, const char *session,
                            const char *arm, uint64_t generation, int64_t context_window);

/* An ax_policy_trace_fn (ud: the ax_rec): one entry of "policy_changes" per hook that
 * changed something. */
void ax_rec_trace(void *ud, const char *policy, enum ax_hook hook, const cJSON *before,
                  const cJSON *after);

/* The OpenAI body exactly as sent (copied; a retry replaces the first and sets "retried"),
 * and the window of the upstream it goes to (0: keep the one given to ax_rec_begin). */
void ax_rec_upstream_request(struct ax_rec *x, const char *body, size_t len, int64_t window);
/* A streamed chunk's data: only llama-server's "timings" object is kept, the last one wins. */
void ax_rec_upstream_chunk(struct ax_rec *x, const char *data, size_t len);
/* A complete answer's "timings" object (copied; NULL: none). */
void ax_rec_timings(struct ax_rec *x, const cJSON *timings);
/* The error the client got (the first one wins). */
void ax_rec_error(struct ax_rec *x, const struct ax_error *err);

struct ax_rec_end {
    int upstream_status; /* 0: never answered */
    const struct ax_usage *usage;
    const cJSON *answer;      /* the message as the client got it, or NULL */
    double ttfb_ms, total_ms; /* < 0: not known */
    int canceled;
};
/* Builds the line, queues it and frees x. */
void ax_rec_finish(struct ax_rec *x, const struct ax_rec_end *end);

/* A delta's base is one of the session's last AX_REC_BASES bodies of its kind (client or
 * upstream), named by its hash. */
#define AX_REC_BASES 4

/* Undoes a body delta of the format ({"snapshot": s} or {"base", "head", "tail", "mid"})
 * against the previous bodies of its kind (prevs[i] may be NULL; hashes[i], when hashes is
 * not NULL, their FNV-1a, so that a reader hashes each body once). Returns a malloc'd
 * NUL-terminated copy and its length, or NULL when no previous body has the base's hash (a
 * line was lost) or the delta is malformed. */
char *ax_rec_rebuild(const cJSON *delta, char *const *prevs, const size_t *lens,
                     const uint64_t *hashes, int n, size_t *out_len);

/* What changed from before to after, as recorded in "policy_changes" and replay's report:
 * {"fields": [top-level keys other than messages that changed], "removed": [indexes in before],
 * "changed": [indexes in before], "added": [indexes in after], "masked": [tool_use ids whose
 * result changed]}, members present only when non-empty; NULL when nothing changed. Works on
 * Anthropic and OpenAI requests alike. */
cJSON *ax_rec_diff(const cJSON *before, const cJSON *after);

#endif
