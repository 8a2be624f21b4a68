/* toolcall_text.c - tool calls written as text by local models, and argument repair/checks.
 *
 * stream.c feeds it each text delta of a turn and translate_response.c a whole message's
 * text; both turn its call events into tool_use blocks. The markers follow the models'
 * published chat templates and the parsers that read them (llama.cpp common/chat.cpp,
 * vLLM's tool_parsers: hermes, qwen3coder, glm4_moe, mistral, llama3_json, deepseekv3/v31).
 * Recognition is a byte-driven state machine over one held buffer; parsing (and allocation)
 * only happens once a block is complete. The argument repairs exist twice: whole
 * (ax_tool_args_repair, for complete answers and text calls) and streamed
 * (ax_tool_args_fix_*, for native argument fragments stream.c cannot take back). */
#include "anthroxy_toolcall_text.h"
#include "anthroxy_error.h"
#include "anthroxy_json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIT(s) (s), (sizeof(s) - 1)
#define MAX_BLOCK_CALLS 128
#define MAX_NAME 256
#define REPAIR_DEPTH AX_TOOL_ARGS_FIX_DEPTH /* as the streaming fixer: both stop past it */
#define CHECK_DEPTH 16

/* ---- small helpers ------------------------------------------------------------------ */

static int is_blank(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.' || c >= 0x80;
}

static const char *find(const char *s, size_t n, const char *pat, size_t pn)
{
    const char *p = s, *e = s + n;

    while (pn > 0 && (size_t)(e - p) >= pn &&
           (p = memchr(p, pat[0], (size_t)(e - p) - pn + 1)) != NULL) {
        if (memcmp(p, pat, pn) == 0)
            return p;
        p++;
    }
    return NULL;
}

static void trim(const char **s, size_t *n)
{
    while (*n > 0 && is_blank((unsigned char)**s))
        (*s)++, (*n)--;
    while (*n > 0 && is_blank((unsigned char)(*s)[*n - 1]))
        (*n)--;
}

static int starts(const char *s, size_t n, const char *lit, size_t ln)
{
    return n >= ln && memcmp(s, lit, ln) == 0;
}

/* ---- argument repair ---------------------------------------------------------------- */

static int put_ctrl(struct ax_buf *o, unsigned char c)
{
    char esc[8];

    switch (c) {
    case '\n':
        return ax_buf_append(o, LIT("\\n"));
    case '\t':
        return ax_buf_append(o, LIT("\\t"));
    case '\r':
        return ax_buf_append(o, LIT("\\r"));
    case '\b':
        return ax_buf_append(o, LIT("\\b"));
    case '\f':
        return ax_buf_append(o, LIT("\\f"));
    default:
        snprintf(esc, sizeof(esc), "\\u%04x", c);
        return ax_buf_append(o, esc, 6);
    }
}

struct repair {
    struct ax_buf *o;
    char stack[REPAIR_DEPTH];
    int depth;
    char last;    /* last significant byte written outside strings */
    size_t comma; /* offset in o of the last comma written */
    unsigned what;
};

/* A closing bracket: a comma right before it is dropped (the blanks after it are kept). */
static int repair_close(struct repair *r, char c)
{
    struct ax_buf *o = r->o;

    if (r->depth == 0 || r->stack[r->depth - 1] != (c == '}' ? '{' : '['))
        return AX_EINVAL;
    if (r->last == ',') {
        memmove(o->data + r->comma, o->data + r->comma + 1, o->len - r->comma - 1);
        o->data[--o->len] = '\0';
        r->what |= AX_TOOL_ARGS_FIXED_COMMA;
    }
    r->depth--;
    r->last = c;
    return ax_buf_append(o, &c, 1);
}

/* A bare word outside strings: Python's literals become JSON's, others are copied for the
 * parser to judge. Returns the bytes read. */
static size_t repair_word(struct repair *r, const char *s, size_t n, int *rc)
{
    static const struct {
        const char *py, *json;
        size_t n;
    } lits[] = {{"True", "true", 4}, {"False", "false", 5}, {"None", "null", 4}};
    size_t k = 0, i;

    while (k < n && ((s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z')))
        k++;
    r->last = 'w';
    for (i = 0; i < sizeof(lits) / sizeof(lits[0]); i++) {
        if (k == lits[i].n && memcmp(s, lits[i].py, k) == 0) {
            r->what |= AX_TOOL_ARGS_FIXED_PYTHON;
            *rc = ax_buf_append(r->o, lits[i].json, k);
            return k;
        }
    }
    *rc = ax_buf_append(r->o, s, k);
    return k;
}

int ax_tool_args_repair(const char *s, size_t n, struct ax_buf *out, unsigned *what)
{
    struct repair r;
    size_t i, start = out->len;
    int in_str = 0, esc = 0, rc = 0, opened = 0;

    memset(&r, 0, sizeof(r));
    r.o = out;
    trim(&s, &n);
    if (n == 0 || (s[0] != '{' && s[0] != '['))
        return AX_EINVAL;
    for (i = 0; i < n && rc == 0; i++) {
        unsigned char c = (unsigned char)s[i];
        if (in_str) {
            if (esc)
                esc = 0, rc = ax_buf_append(out, &s[i], 1);
            else if (c == '\\')
                esc = 1, rc = ax_buf_append(out, &s[i], 1);
            else if (c == '"')
                in_str = 0, r.last = '"', rc = ax_buf_append(out, &s[i], 1);
            else if (c < 0x20)
                r.what |= AX_TOOL_ARGS_FIXED_CTRL, rc = put_ctrl(out, c);
            else
                rc = ax_buf_append(out, &s[i], 1);
            continue;
        }
        if (opened && r.depth == 0) { /* after the value: blanks and stray closers only */
            if (c == '}' || c == ']')
                r.what |= AX_TOOL_ARGS_FIXED_TRAILER;
            else if (!is_blank(c))
                rc = AX_EINVAL;
            continue;
        }
        if (c == '"') {
            in_str = 1;
            rc = ax_buf_append(out, &s[i], 1);
        } else if (c == '{' || c == '[') {
            if (r.depth == REPAIR_DEPTH)
                rc = AX_EINVAL;
            else
                r.stack[r.depth++] = (char)c, opened = 1, r.last = (char)c,
                rc = ax_buf_append(out, &s[i], 1);
        } else if (c == '}' || c == ']') {
            rc = repair_close(&r, (char)c);
        } else if (c == ',') {
            r.comma = out->len, r.last = ',', rc = ax_buf_append(out, &s[i], 1);
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            i += repair_word(&r, s + i, n - i, &rc) - 1;
        } else {
            if (!is_blank(c))
                r.last = (char)c;
            rc = ax_buf_append(out, &s[i], 1);
        }
    }
    if (rc == 0 && in_str)
        rc = AX_EINVAL; /* cut inside a string: where it ended is anyone's guess */
    if (rc == 0 && r.depth > 0) {
        if (r.last == ':')
            rc = AX_EINVAL;
        while (rc == 0 && r.depth > 0) {
            rc = repair_close(&r, r.stack[r.depth - 1] == '{' ? '}' : ']');
            r.what |= AX_TOOL_ARGS_FIXED_CLOSE;
        }
    }
    if (rc < 0) {
        out->len = start;
        if (out->data != NULL)
            out->data[start] = '\0';
        return rc;
    }
    if (what != NULL)
        *what = r.what;
    return 0;
}

/* ---- argument repair, streamed ---------------------------------------------------- */

void ax_tool_args_fix_init(struct ax_tool_args_fixer *f)
{
    memset(f, 0, sizeof(*f));
}

static int is_letter(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Releases a held word: Python's literals become JSON's. */
static int fix_word(struct ax_tool_args_fixer *f, struct ax_buf *o)
{
    static const struct {
        const char *py, *json;
        int n;
    } lits[] = {{"True", "true", 4}, {"False", "false", 5}, {"None", "null", 4}};
    size_t i;
    int n = f->_nheld;

    f->_nheld = f->_held_word = 0;
    f->_last = 'w';
    for (i = 0; i < sizeof(lits) / sizeof(lits[0]); i++)
        if (n == lits[i].n && memcmp(f->_held, lits[i].py, (size_t)n) == 0) {
            f->repairs |= AX_TOOL_ARGS_FIXED_PYTHON;
            return ax_buf_append(o, lits[i].json, (size_t)n);
        }
    return ax_buf_append(o, f->_held, (size_t)n);
}

/* Releases held bytes: a word, or a comma (dropped when drop_comma) and its blanks. */
static int fix_release(struct ax_tool_args_fixer *f, struct ax_buf *o, int drop_comma)
{
    int n = f->_nheld;

    if (n == 0)
        return 0;
    if (f->_held_word)
        return fix_word(f, o);
    f->_nheld = 0;
    if (drop_comma) {
        f->repairs |= AX_TOOL_ARGS_FIXED_COMMA;
        return ax_buf_append(o, f->_held + 1, (size_t)n - 1);
    }
    return ax_buf_append(o, f->_held, (size_t)n);
}

/* One byte outside strings. Returns 0 or an AX_E* code; *same cleared when the output is
 * not the input byte. */
static int fix_byte(struct ax_tool_args_fixer *f, unsigned char c, struct ax_buf *o, int *same)
{
    char b = (char)c;
    int rc;

    if (f->_nheld > 0) {
        if (f->_held_word && is_letter(c) && f->_nheld < (int)sizeof(f->_held))
            return f->_held[f->_nheld++] = b, 0;
        if (!f->_held_word && is_blank(c) && f->_nheld < (int)sizeof(f->_held))
            return f->_held[f->_nheld++] = b, 0;
        if ((rc = fix_release(f, o, !f->_held_word && (c == '}' || c == ']'))) < 0)
            return rc;
    }
    if (f->_opened && f->_depth == 0 && (c == '}' || c == ']')) {
        f->repairs |= AX_TOOL_ARGS_FIXED_TRAILER; /* a stray closer after the value */
        *same = 0;
        return 0;
    }
    if (c == ',' || is_letter(c)) {
        f->_held[0] = b;
        f->_nheld = 1;
        f->_held_word = c != ',';
        if (c == ',')
            f->_last = ',';
        return 0;
    }
    if (c == '"') {
        f->_in_str = 1;
    } else if (c == '{' || c == '[') {
        if (f->_depth == AX_TOOL_ARGS_FIX_DEPTH)
            f->_off = 1; /* too deep: pass the rest through */
        else
            f->_stack[f->_depth++] = b, f->_opened = 1;
    } else if ((c == '}' || c == ']') && f->_depth > 0) {
        f->_depth--;
    }
    if (!is_blank(c))
        f->_last = b;
    return ax_buf_append(o, &b, 1);
}

/* Bytes outside strings that the fixer looks at: the rest (digits, ':', '.', blanks...) are
 * copied in runs. */
static const unsigned char fix_special[256] = {
    ['"'] = 1, [','] = 1, ['{'] = 1, ['}'] = 1, ['['] = 1, [']'] = 1, ['a'] = 1, ['b'] = 1,
    ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1,
    ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
    ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1};

int ax_tool_args_fix_feed(struct ax_tool_args_fixer *f, const char *s, size_t n, struct ax_buf *out)
{
    size_t i, start = out->len;
    int rc = 0, same = f->_nheld == 0;

    for (i = 0; i < n && rc == 0; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t j = i;
        if (f->_off) {
            rc = ax_buf_append(out, s + i, n - i);
            break;
        }
        if (f->_in_str && !f->_esc) /* a run of string bytes and whole escapes, at once */
            while (j < n && s[j] != '"' && (unsigned char)s[j] >= 0x20 &&
                   (s[j] != '\\' || j + 1 < n))
                j += s[j] == '\\' ? 2 : 1;
        else if (!f->_in_str && f->_nheld == 0)
            while (j < n && !fix_special[(unsigned char)s[j]])
                j++;
        if (j > i) {
            size_t k = j;
            while (!f->_in_str && k > i && is_blank((unsigned char)s[k - 1]))
                k--;
            if (!f->_in_str && k > i)
                f->_last = s[k - 1]; /* a ':' before the cut matters at finish */
            rc = ax_buf_append(out, s + i, j - i);
            i = j - 1;
            continue;
        }
        if (!f->_in_str) {
            rc = fix_byte(f, c, out, &same);
        } else if (f->_esc) {
            f->_esc = 0;
            rc = ax_buf_append(out, s + i, 1);
        } else if (c == '\\') {
            f->_esc = 1;
            rc = ax_buf_append(out, s + i, 1);
        } else if (c == '"') {
            f->_in_str = 0;
            f->_last = '"';
            rc = ax_buf_append(out, s + i, 1);
        } else if (c < 0x20) {
            f->repairs |= AX_TOOL_ARGS_FIXED_CTRL;
            same = 0;
            rc = put_ctrl(out, c);
        } else {
            rc = ax_buf_append(out, s + i, 1);
        }
    }
    if (rc < 0)
        return rc;
    return same && f->_nheld == 0 && out->len - start == n &&
           (n == 0 || memcmp(out->data + start, s, n) == 0);
}

int ax_tool_args_fix_finish(struct ax_tool_args_fixer *f, struct ax_buf *out, int repair)
{
    int rc, cut = f->_in_str || f->_off || !repair;

    if (!repair && f->_nheld > 0) { /* as it came, Python words included */
        rc = ax_buf_append(out, f->_held, (size_t)f->_nheld);
        f->_nheld = 0;
        return rc;
    }
    if (f->_nheld > 0 && f->_held_word && (rc = fix_word(f, out)) < 0)
        return rc;
    if (f->_nheld > 0 && (rc = fix_release(f, out, !cut && f->_depth > 0)) < 0)
        return rc;
    if (cut || f->_depth == 0 || f->_last == ':')
        return 0; /* cut in a string or after a key: where it ended is anyone's guess */
    while (f->_depth > 0) {
        char closer = f->_stack[--f->_depth] == '{' ? '}' : ']';
        if ((rc = ax_buf_append(out, &closer, 1)) < 0)
            return rc;
        f->repairs |= AX_TOOL_ARGS_FIXED_CLOSE;
    }
    return 0;
}

void ax_tctext_set_tools_fn(struct ax_tctext *t, ax_tctext_tools_fn fn, void *ud)
{
    t->_tools = NULL;
    t->_tools_fn = fn;
    t->_tools_ud = ud;
}

size_t ax_tctext_held(const struct ax_tctext *t)
{
    return t->_hold.len;
}

/* Parses s[0..n) as one JSON value of any type (a private copy: ax_json_parse writes). */
static cJSON *parse_value(const char *s, size_t n)
{
    struct ax_error err;
    char *copy = malloc(n + 1);
    cJSON *v;

    if (copy == NULL)
        return NULL;
    memcpy(copy, s, n);
    copy[n] = '\0';
    v = n > 0 ? ax_json_parse(copy, n, &err) : NULL;
    free(copy);
    return v;
}

/* A value strictly, then repaired when it is a container; NULL when neither works. */
static cJSON *parse_value_repaired(const char *s, size_t n, unsigned *what)
{
    struct ax_buf b;
    cJSON *v;

    *what = 0;
    if ((v = parse_value(s, n)) != NULL)
        return v;
    ax_buf_init(&b, (n + 16) * 6);
    if (ax_tool_args_repair(s, n, &b, what) == 0 && b.len > 0)
        v = parse_value(b.data, b.len);
    ax_buf_free(&b);
    return v;
}

int ax_tool_args_parse(const char *s, size_t n, cJSON **out, unsigned *what)
{
    unsigned w = 0;
    cJSON *v;

    *out = NULL;
    trim(&s, &n);
    if (n == 0) {
        v = cJSON_CreateObject();
    } else {
        v = parse_value_repaired(s, n, &w);
        if (v != NULL && !cJSON_IsObject(v)) {
            cJSON_Delete(v);
            return AX_EINVAL;
        }
        if (v == NULL)
            return AX_EINVAL; /* (an allocation failure reads the same: rare, harmless) */
    }
    if (v == NULL)
        return AX_ENOMEM;
    *out = v;
    if (what != NULL)
        *what = w;
    return 0;
}

/* ---- schema checks ------------------------------------------------------------------ */

static int type_is(const cJSON *v, const char *t)
{
    if (strcmp(t, "string") == 0)
        return cJSON_IsString(v);
    if (strcmp(t, "integer") == 0)
        return cJSON_IsRaw(v) || (cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
                                  floor(v->valuedouble) == v->valuedouble);
    if (strcmp(t, "number") == 0)
        return cJSON_IsNumber(v) || cJSON_IsRaw(v);
    if (strcmp(t, "boolean") == 0)
        return cJSON_IsBool(v);
    if (strcmp(t, "object") == 0)
        return cJSON_IsObject(v);
    if (strcmp(t, "array") == 0)
        return cJSON_IsArray(v);
    if (strcmp(t, "null") == 0)
        return cJSON_IsNull(v);
    return 1; /* a type we do not know: not ours to judge */
}

static const char *kind_of(const cJSON *v)
{
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsNumber(v) || cJSON_IsRaw(v))
        return "a number";
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsObject(v))
        return "an object";
    return "null";
}

/* Appends printf-style text to why[0..n) after what it holds. */
static void why_add(char *why, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void why_add(char *why, size_t n, const char *fmt, ...)
{
    size_t l = strnlen(why, n);
    va_list ap;

    if (l + 1 >= n)
        return;
    va_start(ap, fmt);
    vsnprintf(why + l, n - l, fmt, ap);
    va_end(ap);
}

static void why_path(char *why, size_t n, const char *path)
{
    why[0] = '\0';
    if (path[0] != '\0')
        why_add(why, n, "%s: ", path);
}

static void why_props(char *why, size_t n, const cJSON *props)
{
    const cJSON *p;
    int k = 0;

    if (!cJSON_IsObject(props) || props->child == NULL)
        return;
    why_add(why, n, " (expected properties:");
    cJSON_ArrayForEach(p, props)
    {
        if (k++ == 12) {
            why_add(why, n, " ...");
            break;
        }
        why_add(why, n, "%s \"%s\"", k > 1 ? "," : "", p->string);
    }
    why_add(why, n, ")");
}

static int check_type(const cJSON *v, const cJSON *ty, const char *path, char *why, size_t n)
{
    const cJSON *t;

    if (cJSON_IsString(ty)) {
        if (type_is(v, ty->valuestring))
            return 0;
        why_path(why, n, path);
        why_add(why, n, "expected %s, got %s", ty->valuestring, kind_of(v));
    } else if (cJSON_IsArray(ty) && ty->child != NULL) {
        cJSON_ArrayForEach(t, ty)
        {
            if (!cJSON_IsString(t) || type_is(v, t->valuestring))
                return 0;
        }
        why_path(why, n, path);
        why_add(why, n, "expected one of the types");
        cJSON_ArrayForEach(t, ty) why_add(why, n, " %s", t->valuestring);
        why_add(why, n, ", got %s", kind_of(v));
    } else {
        return 0;
    }
    if (cJSON_IsString(v))
        why_add(why, n, " \"%.40s%s\"", v->valuestring, strlen(v->valuestring) > 40 ? "..." : "");
    return AX_EINVAL;
}

static int check_enum(const cJSON *v, const cJSON *en, const char *path, char *why, size_t n)
{
    const cJSON *e;
    char *s;
    int k = 0;

    if (!cJSON_IsArray(en) || en->child == NULL)
        return 0;
    cJSON_ArrayForEach(e, en)
    {
        if (cJSON_Compare(v, e, 1))
            return 0;
    }
    why_path(why, n, path);
    why_add(why, n, "must be one of");
    cJSON_ArrayForEach(e, en)
    {
        if (k++ == 12) {
            why_add(why, n, " ...");
            break;
        }
        if ((s = cJSON_PrintUnformatted(e)) != NULL) {
            why_add(why, n, "%s %.60s", k > 1 ? "," : "", s);
            cJSON_free(s);
        }
    }
    return AX_EINVAL;
}

static int check_node(const cJSON *v, const cJSON *schema, char *path, size_t plen, char *why,
                      size_t n, int depth);

static int check_object(const cJSON *v, const cJSON *schema, char *path, size_t plen, char *why,
                        size_t n, int depth)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(schema, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(schema, "additionalProperties");
    const cJSON *r, *m;
    size_t l = strlen(path);
    int rc;

    cJSON_ArrayForEach(r, req)
    {
        if (cJSON_IsString(r) && !cJSON_HasObjectItem(v, r->valuestring)) {
            why_path(why, n, path);
            why_add(why, n, "missing required property \"%s\"", r->valuestring);
            why_props(why, n, props);
            return AX_EINVAL;
        }
    }
    cJSON_ArrayForEach(m, v)
    {
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(props, m->string);
        if (ps == NULL) {
            if (cJSON_IsFalse(addl)) {
                why_path(why, n, path);
                why_add(why, n, "unknown property \"%s\"", m->string);
                why_props(why, n, props);
                return AX_EINVAL;
            }
            continue;
        }
        snprintf(path + l, plen - l, "%s%s", l ? "." : "", m->string);
        rc = check_node(m, ps, path, plen, why, n, depth + 1);
        path[l] = '\0';
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int check_node(const cJSON *v, const cJSON *schema, char *path, size_t plen, char *why,
                      size_t n, int depth)
{
    const cJSON *items, *e;
    size_t l = strlen(path);
    int rc, i = 0;

    if (!cJSON_IsObject(schema) || depth > CHECK_DEPTH)
        return 0;
    if ((rc = check_type(v, cJSON_GetObjectItemCaseSensitive(schema, "type"), path, why, n)) < 0 ||
        (rc = check_enum(v, cJSON_GetObjectItemCaseSensitive(schema, "enum"), path, why, n)) < 0)
        return rc;
    if (cJSON_IsObject(v))
        return check_object(v, schema, path, plen, why, n, depth);
    items = cJSON_GetObjectItemCaseSensitive(schema, "items");
    if (!cJSON_IsArray(v) || !cJSON_IsObject(items))
        return 0;
    cJSON_ArrayForEach(e, v)
    {
        snprintf(path + l, plen - l, "[%d]", i++);
        rc = check_node(e, items, path, plen, why, n, depth + 1);
        path[l] = '\0';
        if (rc < 0)
            return rc;
    }
    return 0;
}

int ax_tool_args_check(const cJSON *args, const cJSON *schema, char *why, size_t n)
{
    char path[256] = "";
    char dummy[8];

    if (why == NULL || n == 0)
        why = dummy, n = sizeof(dummy);
    why[0] = '\0';
    if (!cJSON_IsObject(args)) {
        snprintf(why, n, "arguments must be a JSON object, got %s", kind_of(args));
        return AX_EINVAL;
    }
    return check_node(args, schema, path, sizeof(path), why, n, 0);
}

const cJSON *ax_tctext_find_tool(const cJSON *tools, const char *name, size_t n)
{
    const cJSON *t, *nm;

    cJSON_ArrayForEach(t, tools)
    {
        nm = cJSON_GetObjectItemCaseSensitive(t, "name");
        if (cJSON_IsString(nm) && strlen(nm->valuestring) == n &&
            memcmp(nm->valuestring, name, n) == 0)
            return t;
    }
    return NULL;
}

/* ---- typing string values by schema (Qwen3-Coder, GLM) ------------------------------ */

static const cJSON *prop_schema(const cJSON *tool, const char *key)
{
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(tool, "input_schema");
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(sc, "properties"),
                                            key);
}

/* v[0..n) as the type name says, or NULL when it does not read as one. */
static cJSON *as_type(const char *v, size_t n, const char *t, unsigned *what)
{
    cJSON *j;
    unsigned w = 0;

    if (strcmp(t, "string") == 0)
        return NULL;
    trim(&v, &n);
    if (strcmp(t, "boolean") == 0 || strcmp(t, "null") == 0) {
        if ((n == 4 && (memcmp(v, "true", 4) == 0 || memcmp(v, "True", 4) == 0)))
            return strcmp(t, "boolean") == 0 ? cJSON_CreateTrue() : NULL;
        if ((n == 5 && (memcmp(v, "false", 5) == 0 || memcmp(v, "False", 5) == 0)))
            return strcmp(t, "boolean") == 0 ? cJSON_CreateFalse() : NULL;
        if (n == 4 && (memcmp(v, "null", 4) == 0 || memcmp(v, "None", 4) == 0))
            return strcmp(t, "null") == 0 ? cJSON_CreateNull() : NULL;
        return NULL;
    }
    if ((j = parse_value_repaired(v, n, &w)) == NULL)
        return NULL;
    if (type_is(j, t) && strcmp(t, "null") != 0) {
        *what |= w;
        return j;
    }
    cJSON_Delete(j);
    return NULL;
}

/* A parameter's value, string on the wire: typed by the property's schema; without one,
 * guess says to read it as JSON when it parses (GLM's template writes non-strings with
 * tojson) and keep the string otherwise (Qwen3-Coder's parser does). */
static cJSON *typed_value(const char *v, size_t n, const cJSON *ps, int guess, unsigned *what)
{
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(ps, "type"), *t;
    cJSON *j = NULL;
    unsigned w = 0;

    if (cJSON_IsString(ty)) {
        j = as_type(v, n, ty->valuestring, what);
    } else if (cJSON_IsArray(ty)) {
        cJSON_ArrayForEach(t, ty)
        {
            if (cJSON_IsString(t) && (j = as_type(v, n, t->valuestring, what)) != NULL)
                break;
        }
    } else if (guess) {
        const char *s = v;
        size_t k = n;
        trim(&s, &k);
        if ((j = parse_value_repaired(s, k, &w)) != NULL)
            *what |= w;
    }
    return j; /* NULL: keep the string */
}

/* Adds key = value (typed) to args; the value text is copied. */
static int add_param(cJSON *args, const cJSON *tool, const char *k, size_t kn, const char *v,
                     size_t vn, int guess, unsigned *what)
{
    char key[MAX_NAME + 1];
    cJSON *j;

    if (kn == 0 || kn > MAX_NAME)
        return AX_EINVAL;
    memcpy(key, k, kn);
    key[kn] = '\0';
    j = typed_value(v, vn, prop_schema(tool, key), guess, what);
    if (j == NULL) {
        char *copy = strndup(v, vn);
        if (copy == NULL || memchr(v, '\0', vn) != NULL) {
            free(copy);
            return copy == NULL ? AX_ENOMEM : AX_EINVAL;
        }
        j = cJSON_CreateString(copy);
        free(copy);
    }
    if (j == NULL)
        return AX_ENOMEM;
    cJSON_DeleteItemFromObjectCaseSensitive(args, key); /* the last one wins */
    if (!cJSON_AddItemToObject(args, key, j)) {
        cJSON_Delete(j);
        return AX_ENOMEM;
    }
    return 0;
}

/* ---- the calls of one block --------------------------------------------------------- */

struct call {
    const cJSON *tool;
    char *id;
    cJSON *input;
    unsigned repairs;
};

struct calls {
    const cJSON *tools;
    struct call v[MAX_BLOCK_CALLS];
    int n;
};

static void calls_free(struct calls *c)
{
    int i;

    for (i = 0; i < c->n; i++) {
        free(c->v[i].id);
        cJSON_Delete(c->v[i].input);
    }
    c->n = 0;
}

/* Claims a slot for a call to name[0..n); AX_EINVAL when no offered tool has that name. */
static struct call *call_add(struct calls *c, const char *name, size_t n)
{
    const cJSON *tool;

    trim(&name, &n);
    if (c->n == MAX_BLOCK_CALLS || (tool = ax_tctext_find_tool(c->tools, name, n)) == NULL)
        return NULL;
    memset(&c->v[c->n], 0, sizeof(c->v[0]));
    c->v[c->n].tool = tool;
    return &c->v[c->n++];
}

/* Arguments given as JSON text. */
static int call_json_args(struct call *k, const char *s, size_t n)
{
    return ax_tool_args_parse(s, n, &k->input, &k->repairs);
}

/* {"name":N,"arguments"|"parameters":{...} or "{...}", "id"?}: Hermes, Mistral, Llama. */
static int call_from_object(struct calls *c, const cJSON *o, int bare)
{
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(o, "name"), *m;
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(o, "arguments");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    struct call *k;

    if (args == NULL)
        args = cJSON_GetObjectItemCaseSensitive(o, "parameters");
    if (!cJSON_IsObject(o) || !cJSON_IsString(nm))
        return AX_EINVAL;
    if (bare) { /* a whole message of JSON: only a call's own keys, arguments present */
        if (args == NULL)
            return AX_EINVAL;
        cJSON_ArrayForEach(m, o)
        {
            if (strcmp(m->string, "name") && strcmp(m->string, "arguments") &&
                strcmp(m->string, "parameters") && strcmp(m->string, "type") &&
                strcmp(m->string, "id"))
                return AX_EINVAL;
        }
    }
    if ((k = call_add(c, nm->valuestring, strlen(nm->valuestring))) == NULL)
        return AX_EINVAL;
    if (cJSON_IsString(id) && id->valuestring[0] && (k->id = strdup(id->valuestring)) == NULL)
        return AX_ENOMEM;
    if (args == NULL || cJSON_IsNull(args))
        return (k->input = cJSON_CreateObject()) != NULL ? 0 : AX_ENOMEM;
    if (cJSON_IsObject(args))
        return (k->input = cJSON_Duplicate(args, 1)) != NULL ? 0 : AX_ENOMEM;
    if (cJSON_IsString(args))
        return call_json_args(k, args->valuestring, strlen(args->valuestring));
    return AX_EINVAL;
}

static int parse_json_call(struct calls *c, const char *s, size_t n, int bare)
{
    unsigned w = 0;
    cJSON *o;
    int rc;

    trim(&s, &n);
    if (n == 0 || s[0] != '{' || (o = parse_value_repaired(s, n, &w)) == NULL)
        return AX_EINVAL;
    rc = call_from_object(c, o, bare);
    if (rc == 0)
        c->v[c->n - 1].repairs |= w;
    cJSON_Delete(o);
    return rc;
}

/* <function=N><parameter=K>\nV\n</parameter>...</function> (Qwen3-Coder). As vLLM's
 * parser, one newline after the opening and before the closing tag is not part of V, and a
 * missing </parameter> ends at the next <parameter= or </function>. */
static int parse_qwen3(struct calls *c, const char *s, size_t n)
{
    const char *e = s + n, *gt, *end, *p;
    struct call *k;

    trim(&s, &n);
    e = s + n;
    if (!starts(s, n, LIT("<function=")) || (gt = memchr(s, '>', n)) == NULL)
        return AX_EINVAL;
    if ((k = call_add(c, s + 10, (size_t)(gt - s - 10))) == NULL)
        return AX_EINVAL;
    if ((k->input = cJSON_CreateObject()) == NULL)
        return AX_ENOMEM;
    for (p = gt + 1;;) {
        const char *key, *v, *q;
        size_t vn;
        int rc;
        while (p < e && is_blank((unsigned char)*p))
            p++;
        if (p == e || starts(p, (size_t)(e - p), LIT("</function>")))
            break;
        if (!starts(p, (size_t)(e - p), LIT("<parameter=")) ||
            (gt = memchr(p, '>', (size_t)(e - p))) == NULL)
            return AX_EINVAL;
        key = p + 11;
        v = gt + 1;
        end = e;
        if ((q = find(v, (size_t)(e - v), LIT("</parameter>"))) != NULL)
            end = q;
        if ((q = find(v, (size_t)(end - v), LIT("<parameter="))) != NULL)
            end = q;
        if ((q = find(v, (size_t)(end - v), LIT("</function>"))) != NULL)
            end = q;
        vn = (size_t)(end - v);
        if (vn > 0 && v[0] == '\n')
            v++, vn--;
        if (vn > 0 && v[vn - 1] == '\n')
            vn--;
        if ((rc = add_param(k->input, k->tool, key, (size_t)(gt - key), v, vn, 0, &k->repairs)) < 0)
            return rc;
        p = end;
        if (starts(p, (size_t)(e - p), LIT("</parameter>")))
            p += 12;
    }
    return 0;
}

/* N\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>... (GLM 4.5/4.6/4.7: keys and values
 * stripped, as vLLM's glm4_moe parser). */
static int parse_glm(struct calls *c, const char *s, size_t n)
{
    const char *e, *p, *q, *name_end, *k, *v;
    struct call *call;
    int rc;

    trim(&s, &n);
    e = s + n;
    name_end = find(s, n, LIT("<arg_key>"));
    if (name_end == NULL)
        name_end = e;
    for (p = s; p < name_end && !is_blank((unsigned char)*p); p++)
        if (!is_name_char((unsigned char)*p))
            return AX_EINVAL;
    for (q = p; q < name_end; q++)
        if (!is_blank((unsigned char)*q))
            return AX_EINVAL; /* a name is one word */
    if ((call = call_add(c, s, (size_t)(p - s))) == NULL)
        return AX_EINVAL;
    if ((call->input = cJSON_CreateObject()) == NULL)
        return AX_ENOMEM;
    for (p = name_end; p < e;) {
        size_t kn, vn;
        if (!starts(p, (size_t)(e - p), LIT("<arg_key>")))
            return AX_EINVAL;
        k = p + 9;
        if ((q = find(k, (size_t)(e - k), LIT("</arg_key>"))) == NULL)
            return AX_EINVAL;
        kn = (size_t)(q - k);
        for (p = q + 10; p < e && is_blank((unsigned char)*p); p++)
            ;
        if (!starts(p, (size_t)(e - p), LIT("<arg_value>")))
            return AX_EINVAL;
        v = p + 11;
        if ((q = find(v, (size_t)(e - v), LIT("</arg_value>"))) == NULL)
            return AX_EINVAL;
        vn = (size_t)(q - v);
        trim(&k, &kn);
        trim(&v, &vn);
        if ((rc = add_param(call->input, call->tool, k, kn, v, vn, 1, &call->repairs)) < 0)
            return rc;
        for (p = q + 12; p < e && is_blank((unsigned char)*p); p++)
            ;
    }
    return 0;
}

/* The body of <tool_call>...</tool_call>: Hermes JSON, Qwen3-Coder XML or GLM keys. */
static int parse_tag(struct calls *c, const char *s, size_t n)
{
    trim(&s, &n);
    if (n > 0 && s[0] == '{')
        return parse_json_call(c, s, n, 0);
    if (starts(s, n, LIT("<function=")))
        return parse_qwen3(c, s, n);
    return parse_glm(c, s, n);
}

/* After [TOOL_CALLS]: a JSON list (or one object), or N[ARGS]{...} / N[CALL_ID]ID[ARGS]{...}. */
static int parse_mistral(struct calls *c, const char *s, size_t n)
{
    const char *a, *id;
    struct call *k;
    cJSON *list, *o;
    unsigned w = 0;
    int rc = 0;

    trim(&s, &n);
    if (n > 0 && s[0] == '[') {
        if ((list = parse_value_repaired(s, n, &w)) == NULL || !cJSON_IsArray(list) ||
            list->child == NULL) {
            cJSON_Delete(list);
            return AX_EINVAL;
        }
        cJSON_ArrayForEach(o, list)
        {
            if ((rc = call_from_object(c, o, 0)) < 0)
                break;
            c->v[c->n - 1].repairs |= w;
        }
        cJSON_Delete(list);
        return rc;
    }
    if (n > 0 && s[0] == '{')
        return parse_json_call(c, s, n, 0);
    if ((a = find(s, n, LIT("[ARGS]"))) == NULL)
        return AX_EINVAL;
    id = find(s, (size_t)(a - s), LIT("[CALL_ID]"));
    if ((k = call_add(c, s, (size_t)((id ? id : a) - s))) == NULL)
        return AX_EINVAL;
    if (id != NULL && (k->id = strndup(id + 9, (size_t)(a - id - 9))) == NULL)
        return AX_ENOMEM;
    a += 6;
    return call_json_args(k, a, (size_t)(s + n - a));
}

#define DS_CALL_BEGIN                                                                              \
    "<\xef\xbd\x9ctool\xe2\x96\x81"                                                                \
    "call\xe2\x96\x81"                                                                             \
    "begin\xef\xbd\x9c>"
#define DS_CALL_END                                                                                \
    "<\xef\xbd\x9ctool\xe2\x96\x81"                                                                \
    "call\xe2\x96\x81"                                                                             \
    "end\xef\xbd\x9c>"
#define DS_SEP "<\xef\xbd\x9ctool\xe2\x96\x81sep\xef\xbd\x9c>"
#define DS_CALLS_BEGIN                                                                             \
    "<\xef\xbd\x9ctool\xe2\x96\x81"                                                                \
    "calls\xe2\x96\x81"                                                                            \
    "begin\xef\xbd\x9c>"
#define DS_CALLS_END                                                                               \
    "<\xef\xbd\x9ctool\xe2\x96\x81"                                                                \
    "calls\xe2\x96\x81"                                                                            \
    "end\xef\xbd\x9c>"

/* One DeepSeek call between call_begin and call_end: R1/V3 "function<sep>N\n```json\n{}\n```"
 * or V3.1 "N<sep>{}". */
static int parse_deepseek_call(struct calls *c, const char *s, size_t n)
{
    const char *sep = find(s, n, LIT(DS_SEP)), *a, *e = s + n, *nl, *f;
    const char *pre = s;
    size_t pn;
    struct call *k;

    if (sep == NULL)
        return AX_EINVAL;
    pn = (size_t)(sep - s);
    trim(&pre, &pn);
    a = sep + sizeof(DS_SEP) - 1;
    if (pn == 8 && memcmp(pre, "function", 8) == 0 && (nl = memchr(a, '\n', (size_t)(e - a))) &&
        (f = find(nl, (size_t)(e - nl), LIT("```"))) != NULL) {
        if ((k = call_add(c, a, (size_t)(nl - a))) == NULL)
            return AX_EINVAL;
        f += 3;
        if (starts(f, (size_t)(e - f), LIT("json")))
            f += 4;
        while (e > f && is_blank((unsigned char)e[-1]))
            e--;
        if ((size_t)(e - f) >= 3 && memcmp(e - 3, "```", 3) == 0)
            e -= 3;
        return call_json_args(k, f, (size_t)(e - f));
    }
    if ((k = call_add(c, pre, pn)) == NULL)
        return AX_EINVAL;
    return call_json_args(k, a, (size_t)(e - a));
}

static int parse_deepseek(struct calls *c, const char *s, size_t n)
{
    const char *p = s, *e = s + n, *b, *q;
    int rc;

    for (;;) {
        while (p < e && is_blank((unsigned char)*p))
            p++;
        if (p == e)
            return c->n > 0 ? 0 : AX_EINVAL;
        if (!starts(p, (size_t)(e - p), LIT(DS_CALL_BEGIN)))
            return AX_EINVAL;
        b = p + sizeof(DS_CALL_BEGIN) - 1;
        if ((q = find(b, (size_t)(e - b), LIT(DS_CALL_END))) == NULL)
            return AX_EINVAL; /* cut: the arguments may be too */
        if ((rc = parse_deepseek_call(c, b, (size_t)(q - b))) < 0)
            return rc;
        p = q + sizeof(DS_CALL_END) - 1;
    }
}

/* ---- recognition -------------------------------------------------------------------- */

enum family { FAM_TAG, FAM_PYTAG, FAM_MISTRAL, FAM_DEEPSEEK, FAM_BARE };

static const struct opener {
    const char *s, *close;
    size_t n, close_n;
    enum family fam;
} openers[] = {
    {"<tool_call>", "</tool_call>", 11, 12, FAM_TAG},
    {"<|python_tag|>", NULL, 14, 0, FAM_PYTAG},
    {"[TOOL_CALLS]", NULL, 12, 0, FAM_MISTRAL},
    {DS_CALLS_BEGIN, DS_CALLS_END, sizeof(DS_CALLS_BEGIN) - 1, sizeof(DS_CALLS_END) - 1,
     FAM_DEEPSEEK},
};
#define N_OPENERS ((int)(sizeof(openers) / sizeof(openers[0])))
#define OPENER_BARE N_OPENERS

/* Bytes that may start an opener: '<' and '['. */
static const unsigned char trigger[256] = {['<'] = 1, ['['] = 1};

/* -2: no opener starts with s[0..n); -1: a proper prefix of one; else the opener's index. */
static int match_opener(const char *s, size_t n)
{
    int i, partial = 0;

    for (i = 0; i < N_OPENERS; i++) {
        size_t m = n < openers[i].n ? n : openers[i].n;
        if (memcmp(s, openers[i].s, m) != 0)
            continue;
        if (n >= openers[i].n)
            return i;
        partial = 1;
    }
    return partial ? -1 : -2;
}

static int emit_text(const char *s, size_t n, ax_tctext_cb cb, void *ud)
{
    struct ax_tctext_event ev;

    if (n == 0)
        return 0;
    memset(&ev, 0, sizeof(ev));
    ev.kind = AX_TCTEXT_TEXT;
    ev.text = s;
    ev.len = n;
    return cb(&ev, ud);
}

void ax_tctext_init(struct ax_tctext *t, const cJSON *tools, size_t max_hold)
{
    memset(t, 0, sizeof(*t));
    t->_tools = tools;
    t->_enabled = cJSON_IsArray(tools) && tools->child != NULL;
    t->_state = AX_TCTEXT_S_START;
    if (max_hold == 0)
        max_hold = AX_TCTEXT_MAX_HOLD_DEFAULT;
    ax_buf_init(&t->_hold, max_hold < 64 ? 64 : max_hold); /* room for the longest opener */
}

void ax_tctext_free(struct ax_tctext *t)
{
    ax_buf_free(&t->_hold);
}

static void hold_drop(struct ax_tctext *t)
{
    ax_buf_reset(&t->_hold);
}

/* Releases the whole hold as text. */
static int release(struct ax_tctext *t, ax_tctext_cb cb, void *ud)
{
    int rc = emit_text(t->_hold.data, t->_hold.len, cb, ud);
    hold_drop(t);
    return rc;
}

static enum ax_tctext_format format_of(int opener, const char *body, size_t n)
{
    switch (opener < N_OPENERS ? openers[opener].fam : FAM_BARE) {
    case FAM_TAG:
        trim(&body, &n);
        return n && body[0] == '{'                  ? AX_TCTEXT_HERMES
               : starts(body, n, LIT("<function=")) ? AX_TCTEXT_QWEN3_CODER
                                                    : AX_TCTEXT_GLM;
    case FAM_PYTAG:
        return AX_TCTEXT_LLAMA;
    case FAM_MISTRAL:
        return AX_TCTEXT_MISTRAL;
    case FAM_DEEPSEEK:
        return AX_TCTEXT_DEEPSEEK;
    default:
        return AX_TCTEXT_LLAMA_BARE;
    }
}

/* Emits the calls of a parsed block; the block's raw text goes with the first. */
static int emit_calls(struct ax_tctext *t, struct calls *c, const char *raw, size_t raw_len,
                      enum ax_tctext_format fmt, ax_tctext_cb cb, void *ud)
{
    char why[AX_TCTEXT_WHY_MAX];
    int i, rc = 0;

    for (i = 0; i < c->n && rc == 0; i++) {
        struct ax_tctext_event ev;
        struct call *k = &c->v[i];
        char *json = cJSON_PrintUnformatted(k->input);
        const cJSON *sc = cJSON_GetObjectItemCaseSensitive(k->tool, "input_schema");
        if (json == NULL)
            return AX_ENOMEM;
        memset(&ev, 0, sizeof(ev));
        ev.kind = AX_TCTEXT_CALL;
        ev.text = raw;
        ev.len = i == 0 ? raw_len : 0;
        ev.format = fmt;
        ev.name = cJSON_GetObjectItemCaseSensitive(k->tool, "name")->valuestring;
        ev.id = k->id;
        ev.input = k->input;
        ev.input_json = json;
        ev.input_len = strlen(json);
        ev.repairs = k->repairs;
        ev.check_error = ax_tool_args_check(k->input, sc, why, sizeof(why)) < 0 ? why : NULL;
        rc = cb(&ev, ud);
        k->input = ev.input; /* NULL when the callback took it */
        cJSON_free(json);
        t->calls++;
        t->repairs |= k->repairs;
    }
    return rc;
}

/* The held block _hold[0..end) is complete (or the turn ended): parse it and emit its calls,
 * or release it as text. The hold is emptied. */
static int block_finish(struct ax_tctext *t, size_t end, ax_tctext_cb cb, void *ud)
{
    const struct opener *op = t->_opener < N_OPENERS ? &openers[t->_opener] : NULL;
    const char *body = t->_hold.data + t->_body;
    size_t bn = end - t->_body;
    struct calls c;
    enum ax_tctext_format fmt;
    int rc;

    if (op != NULL && op->close != NULL && bn >= op->close_n &&
        memcmp(body + bn - op->close_n, op->close, op->close_n) == 0)
        bn -= op->close_n;
    c.tools = t->_tools_fn != NULL ? t->_tools_fn(t->_tools_ud) : t->_tools;
    c.n = 0;
    fmt = format_of(t->_opener, body, bn);
    switch (op ? op->fam : FAM_BARE) {
    case FAM_TAG:
        rc = parse_tag(&c, body, bn);
        break;
    case FAM_PYTAG:
        rc = parse_json_call(&c, body, bn, 0);
        break;
    case FAM_MISTRAL:
        rc = parse_mistral(&c, body, bn);
        break;
    case FAM_DEEPSEEK:
        rc = parse_deepseek(&c, body, bn);
        break;
    default:
        rc = parse_json_call(&c, body, bn, 1);
        break;
    }
    if (rc == AX_ENOMEM) {
        calls_free(&c);
        return rc;
    }
    if (rc < 0 || c.n == 0) {
        calls_free(&c);
        t->rejected++;
        rc = emit_text(t->_hold.data, end, cb, ud);
    } else {
        rc = emit_calls(t, &c, t->_hold.data, end, fmt, cb, ud);
        calls_free(&c);
    }
    ax_buf_consume(&t->_hold, end);
    t->_state = AX_TCTEXT_S_TEXT;
    return rc;
}

static void enter_block(struct ax_tctext *t, int opener, size_t body)
{
    t->_state = AX_TCTEXT_S_BLOCK;
    t->_opener = opener;
    t->_body = body;
    t->_scanned = body;
    t->_depth = t->_in_str = t->_esc = t->_json_started = 0;
    t->_mistral_phase = 0;
}

/* One byte of a JSON value's extent. Returns 1 when the value just closed. */
static int extent_byte(struct ax_tctext *t, unsigned char c)
{
    if (t->_in_str) {
        if (t->_esc)
            t->_esc = 0;
        else if (c == '\\')
            t->_esc = 1;
        else if (c == '"')
            t->_in_str = 0;
        return 0;
    }
    if (c == '"')
        t->_in_str = 1;
    else if (c == '{' || c == '[')
        t->_depth++;
    else if ((c == '}' || c == ']') && --t->_depth == 0)
        return 1;
    return 0;
}

enum progress { P_MORE, P_DONE, P_REJECT };

/* Mistral after [TOOL_CALLS]: phase 0 blanks, 1 the name (up to [ARGS]), 2 blanks before
 * the arguments, 3 inside JSON. */
static enum progress mistral_byte(struct ax_tctext *t, size_t i)
{
    unsigned char c = (unsigned char)t->_hold.data[i];

    switch (t->_mistral_phase) {
    case 0:
        if (is_blank(c))
            return P_MORE;
        if (c == '[' || c == '{') {
            t->_mistral_phase = 3;
            return extent_byte(t, c) ? P_DONE : P_MORE;
        }
        t->_mistral_phase = 1;
        /* fall through */
    case 1:
        if (!is_name_char(c) && c != '[' && c != ']')
            return P_REJECT;
        if (i + 1 - t->_body > MAX_NAME + 64)
            return P_REJECT;
        if (i + 1 >= t->_body + 6 && memcmp(t->_hold.data + i - 5, "[ARGS]", 6) == 0)
            t->_mistral_phase = 2;
        return P_MORE;
    case 2:
        if (is_blank(c))
            return P_MORE;
        if (c != '{')
            return P_REJECT;
        t->_mistral_phase = 3;
        /* fall through */
    default:
        return extent_byte(t, c) ? P_DONE : P_MORE;
    }
}

/* A byte of a JSON-bodied block (python_tag, bare): blanks, then one object. The bare form
 * also gives up as soon as the first key cannot be "name" or "type". */
static enum progress json_block_byte(struct ax_tctext *t, size_t i)
{
    unsigned char c = (unsigned char)t->_hold.data[i];

    if (!t->_json_started) {
        if (is_blank(c))
            return P_MORE;
        if (c != '{')
            return P_REJECT;
        t->_json_started = 1;
        t->_mistral_phase = (int)i + 1; /* bare: where the first key starts */
        return extent_byte(t, c) ? P_DONE : P_MORE;
    }
    if (t->_opener == OPENER_BARE && t->_mistral_phase >= 0) {
        const char *k = t->_hold.data + t->_mistral_phase;
        size_t kn = i + 1 - (size_t)t->_mistral_phase;
        while (kn > 0 && is_blank((unsigned char)*k))
            k++, kn--;
        if (kn >= 6)
            t->_mistral_phase = -1; /* settled below */
        if (kn > 0 && memcmp(k, "\"name\"", kn < 6 ? kn : 6) != 0 &&
            memcmp(k, "\"type\"", kn < 6 ? kn : 6) != 0)
            return P_REJECT;
    }
    return extent_byte(t, c) ? P_DONE : P_MORE;
}

/* Scans the held bytes not yet looked at. *end is the block's end when P_DONE, the offending
 * byte's offset when P_REJECT. */
static enum progress block_scan(struct ax_tctext *t, size_t *end)
{
    const struct opener *op = t->_opener < N_OPENERS ? &openers[t->_opener] : NULL;
    const char *h = t->_hold.data;
    size_t i, from;
    enum progress p;

    if (op != NULL && op->close != NULL) {
        const char *q;
        /* the first non-blank byte of the body says whether this can be a call at all */
        for (i = t->_scanned; i < t->_hold.len && !t->_json_started; i++) {
            if (is_blank((unsigned char)h[i]))
                continue;
            t->_json_started = 1;
            if (h[i] != '{' && h[i] != '<' && !is_name_char((unsigned char)h[i])) {
                *end = i;
                return P_REJECT;
            }
        }
        from = t->_scanned >= t->_body + op->close_n ? t->_scanned - op->close_n + 1 : t->_body;
        t->_scanned = t->_hold.len;
        if ((q = find(h + from, t->_hold.len - from, op->close, op->close_n)) == NULL)
            return P_MORE;
        *end = (size_t)(q - h) + op->close_n;
        return P_DONE;
    }
    for (i = t->_scanned; i < t->_hold.len; i++) {
        p = op != NULL && op->fam == FAM_MISTRAL ? mistral_byte(t, i) : json_block_byte(t, i);
        if (p != P_MORE) {
            *end = p == P_DONE ? i + 1 : i;
            t->_scanned = i + 1;
            return p;
        }
    }
    t->_scanned = t->_hold.len;
    return P_MORE;
}

/* Resolves a hold that starts with a trigger byte (state TEXT): releases what cannot be an
 * opener, enters a block when one is complete, else waits. */
static int text_resolve(struct ax_tctext *t, ax_tctext_cb cb, void *ud)
{
    int rc, m;

    while (t->_hold.len > 0) {
        size_t j = 0;
        while (j < t->_hold.len && !trigger[(unsigned char)t->_hold.data[j]])
            j++;
        if (j > 0) {
            if ((rc = emit_text(t->_hold.data, j, cb, ud)) < 0)
                return rc;
            ax_buf_consume(&t->_hold, j);
            continue;
        }
        if ((m = match_opener(t->_hold.data, t->_hold.len)) == -1)
            return 0;
        if (m >= 0) {
            /* no opener holds another, so a complete one ends the hold */
            enter_block(t, m, openers[m].n);
            return 0;
        }
        if ((rc = emit_text(t->_hold.data, 1, cb, ud)) < 0)
            return rc;
        ax_buf_consume(&t->_hold, 1);
    }
    return 0;
}

static int feed_start(struct ax_tctext *t, const char *s, size_t n, size_t *used, ax_tctext_cb cb,
                      void *ud)
{
    size_t i = 0;

    while (i < n && is_blank((unsigned char)s[i]))
        i++;
    if (i == n || s[i] == '{') {
        size_t take = i == n ? n : i + 1;
        if (ax_buf_append(&t->_hold, s, take) < 0) { /* blanks over the cap: plain text */
            t->_state = AX_TCTEXT_S_TEXT;
            *used = 0;
            return release(t, cb, ud);
        }
        *used = take;
        if (i < n) {
            enter_block(t, OPENER_BARE, 0);
            t->_json_started = 0;
            return 0;
        }
        return 0;
    }
    *used = 0; /* the blanks in s go out as text, from the fast path */
    t->_state = AX_TCTEXT_S_TEXT;
    return release(t, cb, ud);
}

static int feed_text(struct ax_tctext *t, const char *s, size_t n, size_t *used, ax_tctext_cb cb,
                     void *ud)
{
    size_t i = 0;
    int rc;

    if (t->_hold.len == 0) {
        while (i < n && !trigger[(unsigned char)s[i]]) /* the fast path */
            i++;
        if (i > 0) {
            *used = i;
            return emit_text(s, i, cb, ud);
        }
    }
    *used = 1;
    if ((rc = ax_buf_append(&t->_hold, s, 1)) < 0)
        return rc;
    return text_resolve(t, cb, ud);
}

static int feed_block(struct ax_tctext *t, const char *s, size_t n, size_t *used, ax_tctext_cb cb,
                      void *ud)
{
    size_t room = t->_hold.max - t->_hold.len, take = n < room ? n : room, old = t->_hold.len;
    size_t end = 0;
    enum progress p;
    int rc;

    if ((rc = ax_buf_append(&t->_hold, s, take)) < 0)
        return rc;
    p = block_scan(t, &end);
    if (p == P_MORE) {
        *used = take;
        if (take < n || t->_hold.len == t->_hold.max) { /* over the cap: it was text */
            t->overflows++;
            t->_state = AX_TCTEXT_S_TEXT;
            return release(t, cb, ud);
        }
        return 0;
    }
    if (end < old)
        end = old;     /* (cannot happen: ends and rejects are found in new bytes) */
    *used = end - old; /* bytes of s that belong to the block (or precede the reject) */
    t->_hold.len = end;
    t->_hold.data[end] = '\0';
    if (p == P_REJECT) {
        t->rejected++;
        t->_state = AX_TCTEXT_S_TEXT;
        return release(t, cb, ud);
    }
    if (t->_opener == OPENER_BARE) {
        t->_state = AX_TCTEXT_S_BARE_DONE;
        return 0;
    }
    return block_finish(t, end, cb, ud);
}

static int feed_bare_done(struct ax_tctext *t, const char *s, size_t n, size_t *used,
                          ax_tctext_cb cb, void *ud)
{
    size_t i = 0;

    while (i < n && is_blank((unsigned char)s[i]))
        i++;
    if (i == n && ax_buf_append(&t->_hold, s, n) == 0) {
        *used = n;
        return 0;
    }
    *used = 0; /* more than the call: the message is text */
    t->rejected++;
    t->_state = AX_TCTEXT_S_TEXT;
    return release(t, cb, ud);
}

int ax_tctext_feed(struct ax_tctext *t, const char *s, size_t n, ax_tctext_cb cb, void *ud)
{
    size_t used;
    int rc = 0;

    if (!t->_enabled)
        return emit_text(s, n, cb, ud);
    while (n > 0 && rc == 0) {
        used = 0;
        switch (t->_state) {
        case AX_TCTEXT_S_START:
            rc = feed_start(t, s, n, &used, cb, ud);
            break;
        case AX_TCTEXT_S_TEXT:
            rc = feed_text(t, s, n, &used, cb, ud);
            break;
        case AX_TCTEXT_S_BLOCK:
            rc = feed_block(t, s, n, &used, cb, ud);
            break;
        case AX_TCTEXT_S_BARE_DONE:
            rc = feed_bare_done(t, s, n, &used, cb, ud);
            break;
        }
        s += used;
        n -= used;
    }
    return rc;
}

int ax_tctext_finish(struct ax_tctext *t, ax_tctext_cb cb, void *ud)
{
    int rc = 0;

    switch (t->_state) {
    case AX_TCTEXT_S_BLOCK:
    case AX_TCTEXT_S_BARE_DONE:
        rc = block_finish(t, t->_hold.len, cb, ud);
        break;
    default:
        rc = release(t, cb, ud);
        break;
    }
    hold_drop(t);
    t->_state = AX_TCTEXT_S_START;
    return rc;
}
