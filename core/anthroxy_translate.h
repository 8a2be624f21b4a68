/* anthroxy_translate.h - Anthropic Messages <-> OpenAI Chat Completions, complete answers.
 *
 * Pure tree-to-tree code: no I/O, no libuv. The streaming direction lives in stream.c and
 * shares ax_usage and ax_stop_reason_from_finish with this module. */
#ifndef ANTHROXY_TRANSLATE_H
#define ANTHROXY_TRANSLATE_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "anthroxy_error.h"

struct ax_usage {
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    int have;
};

/* Fills u from an OpenAI `usage` object (prompt_tokens, completion_tokens,
 * prompt_tokens_details.cached_tokens). u->have = 1 when usage was present. */
void ax_usage_from_openai(const cJSON *usage, struct ax_usage *u);

/* Adds Anthropic usage members to obj: input_tokens = prompt - cached (scaled by `scale`,
 * rounded, scale 1.0 = real numbers), cache_read_input_tokens = cached (scaled too),
 * output_tokens = completion. Returns 0 or AX_ENOMEM. */
int ax_usage_add_anthropic(cJSON *obj, const struct ax_usage *u, double scale);

/* finish_reason -> stop_reason ("stop"->"end_turn", "length"->"max_tokens",
 * "tool_calls"/"function_call"->"tool_use", a matched stop string -> "stop_sequence"). */
const char *ax_stop_reason_from_finish(const char *finish_reason, int matched_stop_sequence);

struct ax_translate_opts {
    const char *upstream_model; /* model sent upstream (already mapped by the caller) */
    int llama_server;           /* upstream is llama-server: named tool_choice workaround */
    int stream;                 /* set stream:true and stream_options.include_usage */
    int share;                  /* the result may point into the Anthropic tree (tool schemas
                                   and descriptions as cJSON references) instead of copying:
                                   only when nothing edits the result and the Anthropic tree
                                   outlives it (printing it is fine) */
    int forward_user_id;        /* send metadata.user_id as `user` (--forward-user-id); off:
                                   Claude Code's device and account ids stay here */
    int tools_as_text;          /* the server takes no `tools` (llama-server without --jinja):
                                   ax_tools_as_text the result */
};

/* Rewrites an OpenAI request for a server that takes no tools (tools_as_text.c): the tools
 * into the system prompt in the Hermes form, past tool_calls into <tool_call> text, tool
 * results into user turns of <tool_response> text; tools, tool_choice and
 * parallel_tool_calls removed. The model's <tool_call> answers come back as tool_use through
 * toolcall_text.c. Returns 0, AX_ENOMEM, or AX_EINVAL without a messages array. */
int ax_tools_as_text(cJSON *oreq);

/* Anthropic request -> new OpenAI chat.completions request. Validates as it goes: on bad
 * input returns AX_EINVAL with err = 400 invalid_request_error naming the field
 * ("messages.3.content.0.type: unknown block type 'foo'"); AX_ENOMEM with a 500. The input
 * is not modified; unknown fields are tolerated and not forwarded. The rules, in short
 * (the whole list opens translate_request.c):
 * - one leading system message (top-level system + role:"system" messages before the first
 *   turn); a later role:"system" message goes into a user turn inside <system-reminder>
 *   tags, so the prompt's prefix (and llama-server's cache of it) stays stable;
 * - one assistant message per turn: text, `reasoning_content` from thinking blocks
 *   (redacted_thinking and signatures dropped), all `tool_calls`, content "" if no text;
 * - tool_result blocks -> role:"tool" messages right after it, in order, text only
 *   ("Error: " prefix for is_error; images move to the user message that follows); then
 *   the turn's text and images as one user message; an orphan tool_result becomes text;
 *   documents and search results become text (a PDF a one-line note);
 * - tool ids lose a leading "toolu_"; tools -> function tools (parameters = a deep copy of
 *   input_schema); server tools without a schema are not offered;
 * - defer_loading tools are offered once a tool_reference names them; tool_addition and
 *   tool_removal blocks change the tools offered (the set in effect at the end is sent);
 *   server tool search, MCP references and container_upload are refused (400);
 * - Anthropic server-side blocks in history become notes, compaction blocks their summary;
 * - tool_choice auto/any/none -> auto/required/none, tool -> the named function, or with
 *   opts->llama_server only that tool and "required"; dropped when no tool is sent;
 * - thinking enabled/adaptive/disabled -> chat_template_kwargs.enable_thinking true/false,
 *   and reasoning_format:"deepseek" when opts->llama_server;
 * - max_tokens, temperature, top_p, top_k, stop_sequences -> stop; metadata.user_id -> user
 *   only with opts->forward_user_id (it is still type-checked without);
 *   opts->stream adds stream:true and stream_options.include_usage:true. */
int ax_translate_request(const cJSON *anthropic, const struct ax_translate_opts *opts, cJSON **out,
                         struct ax_error *err);

/* What the response translators did to tool calls, for the log and the policies
 * (ctx.tool_calls in on_response): calls recognised in text content, calls whose arguments
 * needed a repair (ax_tool_args_repair's fixes), and calls passed on although their
 * arguments fail the tool's input_schema (the client reports the error to the model). */
#define AX_TOOLCALL_WHY_MAX 320
struct ax_toolcall_stats {
    unsigned text_calls, repaired, schema_failures;
    char first_failure[AX_TOOLCALL_WHY_MAX]; /* "NAME: why" of the first failure, or "" */
};

/* Counts a schema failure of the call to name (why from ax_tool_args_check). */
void ax_toolcall_stats_fail(struct ax_toolcall_stats *s, const char *name, const char *why);

struct ax_response_opts {
    const char *client_model;        /* the model name the client asked for: goes in "model" */
    const cJSON *stop_sequences;     /* the request's stop_sequences (array or NULL) */
    double usage_scale;              /* 1.0 normally; compaction steering scales input tokens */
    int reasoning_fallback;          /* reasoning but no text and no tool call: repeat the
                                        reasoning as a text block at the end (as stream.c does) */
    const cJSON *tools;              /* the request's tools (Anthropic), borrowed: text tool calls
                                        to these are recognised, calls checked against their
                                        input_schema; NULL: neither */
    struct ax_toolcall_stats *stats; /* filled when not NULL */
    const cJSON *compaction;         /* a compaction block to open the content with (copied) */
    const cJSON *context_management; /* the answer's context_management (copied), or NULL */
};

/* The signature of thinking blocks made from upstream reasoning. It only has to be a
 * non-empty opaque string: clients (Claude Code) send it back and the request translator
 * drops it. */
#define AX_THINKING_SIGNATURE "anthroxy-reasoning"

/* Where a truncated call keeps arguments that could not be repaired (see below). */
#define AX_RAW_ARGUMENTS_KEY "_raw_arguments"
/* printf format (tool name), followed by the raw arguments: the text block an invalid call
 * becomes. */
#define AX_INVALID_CALL_TEXT "Tool call to %s was not made: its arguments are not valid JSON:\n"

/* Complete OpenAI chat.completion -> new Anthropic message (id "msg_..." from ax_id_make).
 * Content order: a thinking block from `reasoning_content` (or vLLM's `reasoning`) first,
 * then the text, then one tool_use per tool call ("toolu_" + the upstream id, unless it
 * already starts with "toolu_"; a new id when the upstream gave none). "content": [] when
 * nothing was produced; "model" is opts->client_model.
 *
 * Tool-call arguments, a string of JSON, become the block's `input`:
 * - an object: as is; empty or blank arguments: {} (a call without arguments);
 * - anything else when finish_reason is "length" (cut by max_tokens): the tool_use is kept
 *   with the longest well-formed prefix of the arguments, brackets closed
 *   ({"a":2,"b" -> {"a":2}), or, when there is none, {AX_RAW_ARGUMENTS_KEY: "<text>"};
 *   stop_reason stays max_tokens, so clients do not run it;
 * - anything else otherwise: no tool_use; a text block AX_INVALID_CALL_TEXT + the raw text
 *   keeps the model's output visible, and stop_reason is end_turn when no call is left.
 * stop_reason: finish_reason mapped by ax_stop_reason_from_finish; "stop" with tool calls is
 * tool_use; stop_sequence when the choice names the matched string (vLLM's `stop_reason`,
 * SGLang's `matched_stop`, `stopping_word`) and it is one of opts->stop_sequences. llama-
 * server's chat endpoint does not report it (tests/fixtures/llama-server/chat_stop_seq.json),
 * so there the answer is end_turn with stop_sequence null. Usage as ax_usage_add_anthropic
 * with opts->usage_scale. Errors: 502 api_error when there is no choices[0].message. */
int ax_translate_response(const cJSON *openai, const struct ax_response_opts *opts, cJSON **out,
                          struct ax_error *err);

/* Upstream non-2xx status + body (OpenAI-shaped, llama-server's or vLLM's) -> client error.
 * Maps statuses to Anthropic types, passes retry_after (seconds, 0 none) for 429,
 * recognises context overflow (llama-server `exceed_context_size_error` with
 * n_prompt_tokens/n_ctx; vLLM "maximum context length is M tokens ... N tokens") as
 * 400 invalid_request_error "prompt is too long: N tokens > M maximum", and llama-server's
 * deterministic request-parse 500s ("[json.exception..." etc.) as 400. Fills *n_prompt and
 * *n_ctx when it was an overflow (else leaves them 0). Never fails.
 * Details: the message is "upstream returned HTTP <status>: <the upstream's message>" (its
 * error.message, a string `error`, FastAPI's `detail`, else the body's printable start).
 * Statuses: 400, 401, 403, 404, 413, 429 kept; 422 -> 400; other 4xx -> 400; 5xx kept as
 * api_error (a loading llama-server's 503 included; clients retry them). retry_after is
 * passed on for 429 and 5xx. Overflow is also recognised in SGLang's words
 * and in older llama-server messages without the numeric fields; a vLLM answer whose prompt
 * share fits (max_tokens is what does not) is not an overflow: compaction would not help.
 * An overflow without numbers says "prompt is too long: the request exceeds the
 * upstream's context window". */
void ax_translate_upstream_error(int status, const char *body, size_t len, int retry_after,
                                 struct ax_error *err, int64_t *n_prompt, int64_t *n_ctx);

/* The request's stop sequence that ended this choice, when the upstream names it (see
 * ax_translate_response); NULL otherwise. Shared with stream.c. */
const char *ax_matched_stop_sequence(const cJSON *choice, const cJSON *stop_sequences);

/* For core files only: cuts s[0..n) to its longest well-formed JSON prefix ending just after
 * an opening bracket or a complete value, and appends it with its open brackets closed to
 * out. Returns 0, AX_EINVAL (no such prefix) or AX_ENOMEM/AX_ETOOBIG. */
struct ax_buf;
int ax__json_repair_prefix(const char *s, size_t n, struct ax_buf *out);

#endif
