/* anthroxy_stream.h - the streaming translator: OpenAI chat.completion.chunk payloads in,
 * Anthropic Messages SSE events out.
 *
 * Pure: bytes in, bytes out, no I/O, no timers. Each call appends complete events
 * ("event: NAME\ndata: {...}\n\n") to a struct ax_buf the caller owns; a call that fails
 * with AX_ETOOBIG or AX_ENOMEM leaves out as it was before the call (no half event).
 *
 * Event sequence produced:
 *   message_start (ax_stream_begin; idempotent, may come long before the first chunk, with
 *     pings after it), then content blocks opened lazily in arrival order with consecutive
 *     indexes, one open at a time (as Anthropic's API does), each closed exactly once:
 *   - thinking, from delta.reasoning_content (or delta.reasoning): thinking_delta events,
 *     then a signature_delta carrying AX_THINKING_SIGNATURE before content_block_stop;
 *   - text, from delta.content (null or "" opens nothing, so a pure tool-call turn has no
 *     empty text block in front);
 *   - tool_use, from delta.tool_calls[]: the block opens when the call's name is known, as
 *     {"type":"tool_use","id":"toolu_"+upstream id,"name":...,"input":{}}, then every piece
 *     of argument text goes out as input_json_delta, the first fragment's "{" included.
 *     Parallel calls are routed by their `index`, each its own block. Upstream servers send
 *     them one after the other; a fragment for a call whose block was already closed
 *     (interleaved calls) cannot be delivered in Anthropic's order, so feed fails with
 *     AX_EUPSTREAM rather than lose argument text;
 *   - tool_use, from a tool call the model wrote as text (anthroxy_toolcall_text.h: Hermes,
 *     Qwen3-Coder, GLM, Mistral, Llama, DeepSeek) to a tool in opts->tools: the recogniser
 *     holds back text that may start a call only as long as the marker needs (it is
 *     released unchanged otherwise); a recognised call becomes content_block_start with a
 *     new "toolu_" id (ids.c), one input_json_delta with the whole arguments (typed by the
 *     schema), content_block_stop, at the place of the text it replaced. A reasoning or
 *     native tool-call delta first releases (or completes) what is held;
 *   native argument text goes through ax_tool_args_fix_* as it streams: valid JSON passes
 *   unchanged; a trailing comma, raw control byte in a string, Python literal or missing
 *   closing brackets at the end of the call are repaired (a comma or bare word is held the
 *   few bytes needed to decide);
 *   then message_delta {stop_reason, stop_sequence, usage} and message_stop (ax_stream_end),
 *   or, on failure, content_block_stop for the open block and `event: error`
 *   (ax_stream_fail): never a quiet end_turn.
 *
 * Usage: the upstream's figures when it sent a `usage` object (the last one wins):
 * input_tokens = prompt - cached and cache_read_input_tokens = cached, both scaled by
 * usage_scale, and output_tokens (via ax_usage_add_anthropic). Without upstream usage,
 * input_tokens is opts->input_estimate (scaled) and output_tokens the shared estimator
 * (ax_tokens_text) over the text of every content, reasoning and argument delta.
 * message_start carries the estimate (or the upstream usage if already known).
 *
 * stop_reason: as for complete answers (translate_response.c): ax_stop_reason_from_finish
 * of the finish_reason ("stop" when only [DONE] came), with the matched stop string when the
 * server names it (ax_matched_stop_sequence: vLLM's choices[].stop_reason, SGLang's
 * matched_stop, stopping_word, when it is one of opts->stop_sequences). llama-server's
 * OpenAI endpoint does not say (tests/fixtures/llama-server/chat_stop_seq.json: a plain
 * "stop"), so that is end_turn with stop_sequence null. A turn with tool calls that
 * finished with "stop" (Ollama) reports tool_use; "tool_calls" without any call, end_turn.
 *
 * Input: each payload is parsed whole. A lean scanner (no allocation) reads the usual
 * chunks (text, reasoning and tool-call deltas, finish_reason) and copies their string
 * literals to the output as they came (only escapes that put_str would write the same way
 * are accepted, so no decode/re-encode is needed); anything unusual (usage,
 * error, \u escapes, odd types or duplicates) goes to cJSON, and both give identical
 * bytes (tests/unit/test_stream.c checks it on every fixture and on mutated chunks). Only
 * the choice with index 0 is translated (n > 1 is not supported). A payload that is not a
 * JSON object is skipped and counted in `garbage`, never fatal.
 *
 * Memory per stream: this struct, one small record per tool call and per content block
 * (for the summary), the tool calls' argument text up to max_tool_args_bytes in all, and a
 * scratch buffer as large as the largest escaped string of one chunk; streamed text is only
 * counted, except the reasoning kept for reasoning_fallback while no text or tool call has
 * appeared (bounded by max_fallback_bytes). With tools offered, also the text the recogniser
 * holds back (at most one block, AX_TCTEXT_MAX_HOLD_DEFAULT) and, once the request is
 * dropped, the tools as compact text (ax_stream_keep_tools_take). */
#ifndef ANTHROXY_STREAM_H
#define ANTHROXY_STREAM_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "anthroxy_buf.h"
#include "anthroxy_error.h"
#include "anthroxy_toolcall_text.h"
#include "anthroxy_translate.h"

#define AX_STREAM_MAX_TOOLS 512   /* tool calls in one turn: more fails the stream */
#define AX_STREAM_MAX_BLOCKS 1024 /* content blocks recorded for the summary */

struct ax_stream_opts {
    const char *model;              /* the model name the client asked for (copied) */
    const char *message_id;         /* NULL: ax_id_make(..., "msg_") (copied) */
    int64_t input_estimate;         /* prompt tokens until the upstream says (real scale) */
    double usage_scale;             /* scales reported input/cache tokens; 0 means 1.0 */
    int reasoning_fallback;         /* reasoning but no text and no tool call: repeat the
                                       reasoning as a text block at the end (the seed did) */
    const cJSON *stop_sequences;    /* the request's stop_sequences, borrowed: must outlive st */
    size_t max_tool_args_bytes;     /* argument text kept for the summary; 0: 1 MiB */
    size_t max_fallback_bytes;      /* reasoning kept for the fallback; 0: 256 KiB */
    int parse_with_cjson;           /* tests and benchmarks: skip the lean chunk parser */
    const cJSON *tools;             /* the request's tools (Anthropic "tools"), borrowed: must
                                       outlive st. Text tool calls to these are recognised in the
                                       text deltas; every call is checked against its
                                       input_schema. NULL or empty: text passes as it came */
    const char *context_management; /* JSON text for message_delta's context_management
                                       ({"applied_edits":[...]}), copied; NULL: none */
    int compaction;                 /* open the answer with a compaction block at index 0 */
    const char *compaction_content; /* its summary, copied; NULL: a failed one (null) */
    const char *compaction_usage;   /* JSON text of the compaction's usage.iterations entry
                                       (copied): message_delta's usage then carries
                                       iterations [it, the answer's]; NULL: none */
};

enum ax_stream_state { AX_STREAM_NEW, AX_STREAM_STARTED, AX_STREAM_ENDED, AX_STREAM_FAILED };

enum ax_stream_block {
    AX_STREAM_BLOCK_NONE,
    AX_STREAM_BLOCK_THINKING,
    AX_STREAM_BLOCK_TEXT,
    AX_STREAM_BLOCK_TOOL
};

struct ax__stream_tool;
struct ax__stream_rec;

struct ax_stream {
    /* read-only for callers */
    enum ax_stream_state state;
    uint64_t chunks;           /* payloads fed, [DONE] included */
    uint64_t garbage;          /* payloads that were not JSON objects: skipped */
    int saw_done;              /* "[DONE]" was fed: the caller may end the stream now */
    int saw_finish;            /* a finish_reason arrived */
    struct ax_usage usage;     /* the upstream's last usage object (usage.have) */
    int64_t output_estimate;   /* ax_tokens_text over the streamed text */
    char id[64];               /* the message id */
    char finish_reason[32];    /* as the upstream sent it, "" before */
    const char *stop_reason;   /* static string once ended, else NULL */
    const char *stop_sequence; /* the matched stop string (in opts.stop_sequences) or NULL */
    struct ax_toolcall_stats tool_stats; /* text calls, repairs, schema failures so far */

    /* private */
    char *_model;
    int64_t _input_estimate;
    double _scale;
    int _fallback;
    const cJSON *_stop_sequences;
    size_t _args_budget;        /* argument bytes the summary may still keep */
    enum ax_stream_block _open; /* the open block's kind */
    int _open_tool;             /* its tool record when a tool_use block */
    int _n_blocks;              /* blocks opened so far = the next index */
    int _saw_text, _saw_reasoning;
    struct ax__stream_tool *_tools;
    int _n_tools, _cap_tools;
    int _last_tool; /* tool record that got the last fragment, -1 */
    struct ax__stream_rec *_recs;
    int _cap_recs;
    uint64_t _recs_omitted;
    struct ax_buf _reasoning; /* kept for the fallback only */
    struct ax_buf _scratch;   /* decoded text of the chunk in hand (lean parser) */
    struct ax_buf _fixed;     /* repaired argument text of the fragment in hand */
    struct ax_buf _run;       /* text released by the recogniser in one feed, joined */
    int _cjson_only;
    const cJSON *_offered; /* opts.tools when it has entries, else NULL (also once kept) */
    char *_tools_json;     /* ax_stream_keep_tools_take's compact copy, or NULL */
    size_t _tools_json_len;
    cJSON *_tools_tree; /* parsed from _tools_json while a call needs it */
    int _tct_on;        /* text tool calls are recognised */
    struct ax_tctext _tct;
    char *_cm;         /* context_management JSON text, or NULL */
    char *_compaction; /* the compaction block's content, when _has_compaction */
    int _has_compaction;
    int _paused;   /* ended after the compaction block (pause_after_compaction) */
    char *_c_iter; /* compaction_usage, or NULL */
};

/* Prepares st (no output). Returns 0 or AX_ENOMEM. */
int ax_stream_init(struct ax_stream *st, const struct ax_stream_opts *o);
void ax_stream_free(struct ax_stream *st);

/* Points st at the request's tools again (opts.tools, borrowed), for a retry whose policy may
 * have replaced them. Only before the first ax_stream_feed. */
void ax_stream_set_tools(struct ax_stream *st, const cJSON *tools);

/* The request's tools are about to be freed (messages.c drops the request once the stream
 * answers): st takes the detached "tools" array (NULL allowed) and keeps it as compact text
 * without descriptions, parsing it back only while a call is matched or checked, so a stream
 * keeps about 1/7 of the tree's memory (Claude Code's tools: ~8 KB). Returns 0, or AX_ENOMEM
 * (then calls written as text stay text). */
int ax_stream_keep_tools_take(struct ax_stream *st, cJSON *tools);

/* Emits message_start once (and the compaction block, when opts asked for one); later calls
 * do nothing. Returns 0, AX_ETOOBIG or AX_ENOMEM. */
int ax_stream_begin(struct ax_stream *st, struct ax_buf *out);

/* One SSE data payload of the upstream (a chunk's JSON text, or "[DONE]"), translated into
 * zero or more events (message_start first if not yet sent). Returns:
 *   0 - translated; also for a payload that is not a JSON object (a garbage data line):
 *       skipped and counted in st->garbage, never fatal;
 *   AX_EUPSTREAM - the upstream reported an error inside the stream ({"error":{...}}, mapped
 *       by ax_translate_upstream_error, a context overflow included), or sent interleaved
 *       or too many tool calls: err is filled; call ax_stream_fail(st, err, out) next;
 *   AX_ETOOBIG / AX_ENOMEM - out could not take the events.
 * Payloads fed after the stream ended or failed are ignored. */
int ax_stream_feed(struct ax_stream *st, const char *data, size_t len, struct ax_buf *out,
                   struct ax_error *err);

/* The upstream finished normally ([DONE], or EOF after a finish_reason): closes the open
 * block and emits message_delta and message_stop. When the upstream ended without a
 * finish_reason and without [DONE] (a truncated stream) nothing is emitted: returns
 * AX_EUPSTREAM with err filled (502 api_error) so the caller calls ax_stream_fail. Returns 0
 * (also when already ended or failed), AX_EUPSTREAM, AX_ETOOBIG or AX_ENOMEM. */
int ax_stream_end(struct ax_stream *st, struct ax_buf *out, struct ax_error *err);

/* pause_after_compaction: ends the answer after the compaction block (message_start and
 * the block if not yet sent), with stop_reason "compaction"; no upstream is involved.
 * Returns 0, AX_ETOOBIG or AX_ENOMEM. */
int ax_stream_end_paused(struct ax_stream *st, struct ax_buf *out);

/* The turn failed after the response started: closes the open block, then emits
 * `event: error` with err's type and message (api_error "upstream stream failed" when err
 * is NULL or empty). No message_start is sent if none was. Does nothing once ended or
 * failed. Returns 0, AX_ETOOBIG or AX_ENOMEM. */
int ax_stream_fail(struct ax_stream *st, const struct ax_error *err, struct ax_buf *out);

/* Appends "event: ping\ndata: {"type": "ping"}\n\n". */
int ax_stream_ping(struct ax_buf *out);

/* What the turn produced, for on_response and the monitor, as a new tree the caller frees
 * (NULL on allocation failure). Anthropic-message-shaped:
 *   {"id","type":"message","role":"assistant","model",
 *    "stop_reason": string or null (null until ended; "error" once failed),
 *    "stop_sequence": string or null,
 *    "usage": {...as in message_delta...},
 *    "content": [ {"type":"thinking","thinking_length":BYTES},
 *                 {"type":"text","text_length":BYTES},
 *                 {"type":"tool_use","id","name","input":{parsed arguments},
 *                  "arguments_length":BYTES,"arguments_hash":"<16 hex: FNV-1a 64>"} ...],
 *    "anthroxy": {"chunks","garbage","output_estimate","blocks_omitted"}}
 * in block order. A tool_use without argument text (or only blanks) has "input": {}; one
 * whose arguments were not kept whole (over the budget) or do not parse as a JSON object
 * has "input": {} and "input_error": "truncated" or "invalid" (the kept text then goes in
 * "partial_json"). Text itself is never kept: lengths only. */
cJSON *ax_stream_summary(const struct ax_stream *st);

#endif
