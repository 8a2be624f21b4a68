/* anthroxy_toolcall_text.h - tool calls that local models wrote as text, and their arguments.
 *
 * When the upstream's own tool-call parser misses, a call reaches us as text content. The
 * recogniser watches the text of one assistant turn, holds back what may be the start of a
 * call, and hands out events: text (release it now, unchanged) or a tool call. Formats, each
 * from its model's chat template (see toolcall_text.c):
 *   Hermes / Qwen 2.5  <tool_call>{"name":N,"arguments":{...}}</tool_call>
 *   Qwen3-Coder        <tool_call><function=N><parameter=K>V</parameter>...</function></tool_call>
 *   GLM 4.5 / 4.6      <tool_call>N\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>...</tool_call>
 *   Mistral            [TOOL_CALLS][{"name":N,"arguments":{...}},...]
 *                      [TOOL_CALLS]N[ARGS]{...}   (also N[CALL_ID]ID[ARGS]{...})
 *   Llama 3.x          <|python_tag|>{"name":N,"parameters":{...}}
 *                      {"name":N,"parameters":{...}} when it is the whole message
 *   DeepSeek V3 / R1   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>N
 *                      ```json\n{...}\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
 *                      (V3.1: <｜tool▁call▁begin｜>N<｜tool▁sep｜>{...}<｜tool▁call▁end｜>)
 *
 * Contract:
 *   - Only names of offered tools become calls. A block that is not a well-formed call to an
 *     offered tool (any of its calls, for the multi-call forms) is released as text, byte for
 *     byte. Concatenating every event's text (a call's text is the raw block it replaced)
 *     gives back exactly the bytes fed.
 *   - Text that cannot start a marker is released in the same feed call, one event per run.
 *     A possible marker start is held only until a byte rules it out; a recognised opener is
 *     held until its block ends, or until max_hold bytes are held: then it is all released as
 *     text and the recogniser looks for the next opener after it.
 *   - Arguments: JSON bodies go through ax_tool_args_parse (repair when strict parsing
 *     fails); Qwen3-Coder and GLM values, strings on the wire, are typed by the tool's
 *     input_schema (integer, number, boolean, null, array, object; strings stay strings).
 *     Every call is then checked with ax_tool_args_check; a failing call is still emitted,
 *     with the reason in ev->check_error.
 *   - No allocation and one table-driven scan per feed while no '<', '[' (or, at the very
 *     start of the message, '{') appears; with no tools offered, feed only forwards text.
 *
 * Memory: the struct, and up to max_hold held bytes. Not thread-safe; one per turn. */
#ifndef ANTHROXY_TOOLCALL_TEXT_H
#define ANTHROXY_TOOLCALL_TEXT_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "anthroxy_buf.h"

#define AX_TCTEXT_MAX_HOLD_DEFAULT ((size_t)1 << 20) /* bytes of one held block */
#define AX_TCTEXT_WHY_MAX 256

enum ax_tctext_kind { AX_TCTEXT_TEXT, AX_TCTEXT_CALL };

enum ax_tctext_format {
    AX_TCTEXT_NONE,
    AX_TCTEXT_HERMES,
    AX_TCTEXT_QWEN3_CODER,
    AX_TCTEXT_GLM,
    AX_TCTEXT_MISTRAL,
    AX_TCTEXT_LLAMA,      /* <|python_tag|> */
    AX_TCTEXT_LLAMA_BARE, /* the whole message is the call */
    AX_TCTEXT_DEEPSEEK
};

/* What ax_tool_args_repair changed (a bit set). */
#define AX_TOOL_ARGS_FIXED_COMMA 0x01   /* trailing comma before } or ] dropped */
#define AX_TOOL_ARGS_FIXED_CLOSE 0x02   /* missing closing brackets appended at the end */
#define AX_TOOL_ARGS_FIXED_CTRL 0x04    /* raw newline, tab, ... inside a string escaped */
#define AX_TOOL_ARGS_FIXED_PYTHON 0x08  /* True / False / None outside strings */
#define AX_TOOL_ARGS_FIXED_TRAILER 0x10 /* stray closing brackets after the object dropped */

struct ax_tctext_event {
    enum ax_tctext_kind kind;
    const char *text; /* TEXT: bytes to release. CALL: the raw block replaced (on the first
                         call of a block; later calls of the same block have len 0) */
    size_t len;
    /* CALL only, all valid during the callback only: */
    enum ax_tctext_format format;
    const char *name;       /* an offered tool's name */
    const char *id;         /* the id the model wrote (Mistral), else NULL */
    cJSON *input;           /* the arguments object; the callback may take it: set NULL */
    const char *input_json; /* compact JSON text of input, NUL-terminated */
    size_t input_len;
    unsigned repairs;        /* AX_TOOL_ARGS_FIXED_* applied to the JSON text */
    const char *check_error; /* NULL, or why the arguments do not fit input_schema */
};

/* Returns 0 to go on, or a negative AX_E* code that aborts feed/finish and is returned. */
typedef int (*ax_tctext_cb)(struct ax_tctext_event *ev, void *ud);

/* The tools, asked for only when a block is complete and its calls are matched (see
 * ax_tctext_set_tools_fn); the tree must stay alive until that feed or finish returns. */
typedef const cJSON *(*ax_tctext_tools_fn)(void *ud);

enum ax_tctext_state {
    AX_TCTEXT_S_START,    /* nothing but blanks yet: a bare JSON call is still possible */
    AX_TCTEXT_S_TEXT,     /* plain text; _hold may hold a partial opener */
    AX_TCTEXT_S_BLOCK,    /* inside a recognised opener's block */
    AX_TCTEXT_S_BARE_DONE /* a bare JSON object closed: only blanks may follow */
};

struct ax_tctext {
    /* read-only for callers */
    unsigned long calls;     /* calls emitted */
    unsigned long rejected;  /* complete blocks released as text (unknown name, bad body) */
    unsigned long overflows; /* blocks released as text at max_hold */
    unsigned repairs;        /* union of the repairs of the calls emitted */

    /* private */
    const cJSON *_tools;
    ax_tctext_tools_fn _tools_fn;
    void *_tools_ud;
    int _enabled;
    enum ax_tctext_state _state;
    enum ax_tctext_format _fmt; /* the open block's format family (by opener) */
    int _opener;                /* index of the opener in the block */
    size_t _body;               /* where the block's body starts in _hold */
    size_t _scanned;            /* bytes of _hold already searched for the block's end */
    int _depth, _in_str, _esc, _json_started; /* JSON extent of the body */
    int _mistral_phase;
    struct ax_buf _hold;
};

/* Prepares t. tools is the Anthropic request's "tools" array ({"name","input_schema"} each,
 * other entries ignored), borrowed: it must outlive t. NULL or empty disables recognition
 * (feed forwards text as is). max_hold 0 means AX_TCTEXT_MAX_HOLD_DEFAULT. */
void ax_tctext_init(struct ax_tctext *t, const cJSON *tools, size_t max_hold);
void ax_tctext_free(struct ax_tctext *t);

/* From now on the tools come from fn(ud), called when a block's calls are matched (NULL:
 * none offered, the block stays text); the state (what is held) is kept. For a caller that
 * keeps its tools in a compact form and builds the tree only when a call needs it. Only on a
 * recogniser that was enabled at init. */
void ax_tctext_set_tools_fn(struct ax_tctext *t, ax_tctext_tools_fn fn, void *ud);

/* One text delta. Calls cb zero or more times, before returning. Returns 0, or what cb
 * returned (t is then unusable but safe to free), or AX_ENOMEM. */
int ax_tctext_feed(struct ax_tctext *t, const char *s, size_t n, ax_tctext_cb cb, void *ud);

/* The turn's text ended: a held block is completed when it can be (a Hermes or Qwen3-Coder
 * call whose closing tag never came, a bare JSON message), else released as text. */
int ax_tctext_finish(struct ax_tctext *t, ax_tctext_cb cb, void *ud);

/* Repairs JSON argument text whose fix is unambiguous (see the AX_TOOL_ARGS_FIXED_* bits):
 * writes the repaired text to out (appending) and the bits to *what (may be NULL). Returns
 * 0, AX_EINVAL when the text is no object or needs more than these fixes (cut inside a
 * string, after a key, mismatched brackets, other trailing text), AX_ETOOBIG or AX_ENOMEM.
 * The result is not guaranteed to parse; ax_tool_args_parse checks that. */
int ax_tool_args_repair(const char *s, size_t n, struct ax_buf *out, unsigned *what);

/* Parses argument text as a JSON object: strictly first, then repaired. "" or blanks give {}.
 * Returns 0 with *out a new tree (the caller deletes it) and *what the repairs (0 when
 * strict parsing worked), AX_EINVAL when it is no object even repaired, or AX_ENOMEM. */
int ax_tool_args_parse(const char *s, size_t n, cJSON **out, unsigned *what);

/* Checks args against a JSON Schema subset: type (a name or a list), required, properties,
 * additionalProperties false, enum, items, nested to 16 levels; other keywords are ignored.
 * Returns 0, or AX_EINVAL with why (size n) saying what to change, naming the path, e.g.
 * `"file_path" is required (expected properties: "file_path", "content")`. A NULL or
 * non-object schema accepts everything. */
int ax_tool_args_check(const cJSON *args, const cJSON *schema, char *why, size_t n);

/* The same repairs applied as the text streams in (streamed native tool-call arguments):
 * fed argument text comes out at once, except a comma with the blanks after it (held until
 * the next byte says whether a closing bracket follows) and a bare word outside strings (held
 * until it ends, so True becomes true). Valid JSON comes out unchanged, byte for byte. At
 * finish, a held comma before the end is dropped and the open brackets closed, unless the text
 * was cut inside a string or right after a ':' (then nothing is added). Nesting past
 * AX_TOOL_ARGS_FIX_DEPTH stops the repairs: the rest passes through as it came. So does a
 * comma followed by more blanks than AX_TOOL_ARGS_FIX_HOLD holds: it is released as it came
 * (what a model writes never has that; the whole repair, ax_tool_args_repair, still drops it). */
#define AX_TOOL_ARGS_FIX_HOLD 16
#define AX_TOOL_ARGS_FIX_DEPTH 64
struct ax_tool_args_fixer {
    unsigned repairs; /* AX_TOOL_ARGS_FIXED_* applied so far (read-only) */
    /* private */
    char _stack[AX_TOOL_ARGS_FIX_DEPTH];
    int _depth, _in_str, _esc, _opened, _off;
    char _last;                        /* last significant byte outside strings */
    char _held[AX_TOOL_ARGS_FIX_HOLD]; /* a held comma and its blanks, or a held word */
    int _nheld, _held_word;
};
void ax_tool_args_fix_init(struct ax_tool_args_fixer *f);
/* Appends the repaired form of s[0..n) to out (possibly less: held bytes come later).
 * Returns 1 when exactly s[0..n) was appended (nothing held, nothing changed), 0 when
 * something else was, or AX_ETOOBIG / AX_ENOMEM. */
int ax_tool_args_fix_feed(struct ax_tool_args_fixer *f, const char *s, size_t n,
                          struct ax_buf *out);
/* Appends what the end of the arguments needs (held bytes, closing brackets); with repair 0
 * (an answer cut by max_tokens: the last value may be cut short too) only the held bytes, as
 * they came. Returns 0, AX_ETOOBIG or AX_ENOMEM. */
int ax_tool_args_fix_finish(struct ax_tool_args_fixer *f, struct ax_buf *out, int repair);

/* Bytes the recogniser holds back right now (a possible opener or an open block). */
size_t ax_tctext_held(const struct ax_tctext *t);

/* The tool named name[0..n) in tools (an Anthropic "tools" array), or NULL. */
const cJSON *ax_tctext_find_tool(const cJSON *tools, const char *name, size_t n);

#endif
