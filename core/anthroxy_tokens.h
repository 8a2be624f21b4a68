/* anthroxy_tokens.h - the one raw token estimator, shared by the core and by Lua policies.
 *
 * No tokenizer is at hand, so the estimate mimics what BPE tokenizers of the cl100k /
 * Llama 3 / Qwen family do: text is cut into pre-tokens as their split patterns cut it
 * (letter runs with one leading space or symbol, digit runs, punctuation runs, whitespace
 * runs), and each pre-token costs what such vocabularies typically spend on it. The monitor
 * corrects the remaining per-model bias with the upstream's real prompt counts. All
 * functions are pure, allocate nothing and walk each node once. */
#ifndef ANTHROXY_TOKENS_H
#define ANTHROXY_TOKENS_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* Tokens of the UTF-8 text s[0..n):
 * - a run of Latin letters (split at lower-to-upper case changes, so camelCase counts as
 *   its words; accented letters U+00C0-U+036F belong to it): 1 token up to 10 letters,
 *   then 1 more per 8 (11-18: 2, 19-26: 3); one space or one symbol before it is free;
 * - letters of other alphabets (Greek, Cyrillic, Hebrew, Arabic, Indic, Thai): 1 per 2;
 * - CJK, kana, Hangul, emoji and other characters of 3 and 4 bytes: 1 each (as is an
 *   invalid byte); Latin-1 symbols and U+2000-U+2FFF (dashes, quotes, arrows) are symbols;
 * - a run of digits: 1 per 2 digits (Qwen splits every digit, Llama 3 groups three);
 * - a run of symbols: 1 per 3 characters (`":"`, `","`, `{"` are single tokens), and line
 *   ends right after it are free ("{\n");
 * - a whitespace run: 1 token (1 more per 16 characters), indentation after a line end 1
 *   more; a single space before a word or symbol merges into it.
 * Non-ASCII characters are classed by their UTF-8 lead byte alone. A table-driven
 * transducer, two bytes per step, no branch on the data: under half of cJSON's parse
 * time for the same bytes. Tuned so English prose comes out near 1.3 tokens per word and
 * JSON schemas and code near what cl100k-class tokenizers report; expect +-15 % on real
 * text. */
int64_t ax_tokens_text(const char *s, size_t n);

/* Tokens of a JSON value as it would be printed compactly (keys and strings through
 * ax_tokens_text, plus the punctuation between them), without printing it. */
int64_t ax_tokens_json(const cJSON *v);

/* Tokens of an image block's source: Anthropic's (and Qwen-VL's) w*h/750 from the
 * dimensions in a base64 PNG, GIF or JPEG header, after scaling to a 1568-pixel long edge,
 * at most AX_TOKENS_IMAGE_MAX; AX_TOKENS_IMAGE_MAX when the size cannot be read (URLs). */
#define AX_TOKENS_IMAGE_MAX 1600
int64_t ax_tokens_image(const cJSON *source);

/* Tokens of one Anthropic message: 4 for the role framing, plus its content: text,
 * tool_use (name, input JSON, 10 for the call framing), tool_result (its text and images, 6
 * for the framing), thinking text, images; redacted_thinking counts 0 (it is never sent). */
int64_t ax_tokens_message(const cJSON *msg);

/* Tokens of an Anthropic request's prompt: system (string or blocks) + every message + the
 * tools (name, description, input_schema JSON, 10 each, and 60 once for the template's
 * tool preamble) + 3 for the assistant's turn header. */
int64_t ax_tokens_request(const cJSON *req);

/* The parts of ax_tokens_request, which is their sum: the system prompt with the request's
 * fixed overhead, the tools array (pass tools itself, not the request), the messages. The
 * core keeps a session's tools estimate while the tools stay the same. */
int64_t ax_tokens_system(const cJSON *req);
int64_t ax_tokens_tools(const cJSON *tools);
int64_t ax_tokens_messages(const cJSON *req);

/* The part of ax_tokens_request that pruning cannot shrink: system, tools and the turn
 * header (ax_tokens_request minus the messages). When it alone exceeds the window, the
 * overflow error can say that the tools and system prompt do not fit. */
int64_t ax_tokens_fixed(const cJSON *req);

#endif
