/* anthroxy_json_scan.h - a strict JSON pull scanner that never allocates.
 *
 * The scanner walks text in place: strings come back as pointers into it (their inside, escapes
 * left as they are), numbers are validated and skipped, containers are walked by callbacks that
 * consume each member or element. Every function returns 0 (or the documented positive value)
 * with the cursor past what it read, or -1 on anything that is not strict JSON, or that the
 * caller asked to give up on (\u and \/ escapes, raw control bytes, ill-formed UTF-8,
 * nesting past AX_JSON_SCAN_DEPTH): the caller then falls back to a real parser. stream.c reads the
 * usual chat.completion.chunk payloads with it. */
#ifndef ANTHROXY_JSON_SCAN_H
#define ANTHROXY_JSON_SCAN_H

#include <stddef.h>
#include <string.h>

#define AX_JSON_SCAN_DEPTH 32

/* The cursor: p the next byte to read, e the end of the text. */
struct ax_json_scan {
    const char *p, *e;
};

/* kl bytes at k equal the string literal lit */
#define AX_JSON_KEY_IS(k, kl, lit) ((kl) == sizeof(lit) - 1 && memcmp((k), (lit), (kl)) == 0)

static inline void ax_json_scan_ws(struct ax_json_scan *l)
{
    while (l->p < l->e && (*l->p == ' ' || *l->p == '\n' || *l->p == '\r' || *l->p == '\t'))
        l->p++;
}

static inline int ax_json_scan_expect(struct ax_json_scan *l, char c)
{
    ax_json_scan_ws(l);
    if (l->p >= l->e || *l->p != c)
        return -1;
    l->p++;
    return 0;
}

static inline int ax_json_scan_literal(struct ax_json_scan *l, const char *lit, size_t n)
{
    if ((size_t)(l->e - l->p) < n || memcmp(l->p, lit, n) != 0)
        return -1;
    l->p += n;
    return 0;
}

static inline int ax_json_scan_null(struct ax_json_scan *l)
{
    ax_json_scan_ws(l);
    return ax_json_scan_literal(l, "null", 4) == 0;
}

/* Just after an opening bracket: consumes close and returns 1 when the container is empty. */
static inline int ax_json_scan_empty(struct ax_json_scan *l, char close)
{
    ax_json_scan_ws(l);
    if (l->p < l->e && *l->p == close) {
        l->p++;
        return 1;
    }
    return 0;
}

/* After an element or member: consumes close (1, the container ends) or a comma (0, another
 * follows); anything else is -1. */
static inline int ax_json_scan_next(struct ax_json_scan *l, char close)
{
    ax_json_scan_ws(l);
    if (l->p >= l->e)
        return -1;
    if (*l->p == close) {
        l->p++;
        return 1;
    }
    return *l->p++ == ',' ? 0 : -1;
}

/* A string: raw[0..len) is its inside; *plain says it holds no escape at all. Only the
 * escapes \" \\ \b \f \n \r \t are accepted, and only well-formed UTF-8 (checked in the same
 * pass). */
int ax_json_scan_string(struct ax_json_scan *l, const char **raw, size_t *len, int *plain);

/* A number (no leading whitespace); *is_int says it has no fraction or exponent. */
int ax_json_scan_number(struct ax_json_scan *l, int *is_int);

/* Skips one value of any type; depth is the nesting so far. */
int ax_json_scan_skip(struct ax_json_scan *l, int depth);

/* Iterates an object: calls fn for each member with l at its value; fn consumes it. Inline,
 * so that the compiler specialises it for each callback on the per-chunk path (as it did when
 * the scanner lived in stream.c): a call through a pointer per member costs ~4 % per chunk. */
typedef int (*ax_json_scan_member_cb)(struct ax_json_scan *l, const char *k, size_t kl, void *ud);
static inline int ax_json_scan_object(struct ax_json_scan *l, ax_json_scan_member_cb fn, void *ud)
{
    const char *k;
    size_t kl;
    int plain, rc;

    if (ax_json_scan_expect(l, '{') < 0)
        return -1;
    if (ax_json_scan_empty(l, '}'))
        return 0;
    do {
        if (ax_json_scan_string(l, &k, &kl, &plain) < 0 || ax_json_scan_expect(l, ':') < 0 ||
            fn(l, k, kl, ud) < 0)
            return -1;
    } while ((rc = ax_json_scan_next(l, '}')) == 0);
    return rc < 0 ? -1 : 0;
}

/* Iterates an array: calls fn for each element with l at it; fn consumes it. */
typedef int (*ax_json_scan_elem_cb)(struct ax_json_scan *l, void *ud);
static inline int ax_json_scan_array(struct ax_json_scan *l, ax_json_scan_elem_cb fn, void *ud)
{
    int rc;

    if (ax_json_scan_expect(l, '[') < 0)
        return -1;
    if (ax_json_scan_empty(l, ']'))
        return 0;
    do {
        if (fn(l, ud) < 0)
            return -1;
    } while ((rc = ax_json_scan_next(l, ']')) == 0);
    return rc < 0 ? -1 : 0;
}

/* An "index" member's value: 1 with the integer's text from *num to l->p; 0 when the value is
 * not a number (the caller skips it); -1 for what only a real parser reads right: a fraction,
 * an exponent, -0. */
int ax_json_scan_index(struct ax_json_scan *l, const char **num);

#endif
