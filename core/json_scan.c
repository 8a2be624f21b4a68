/* json_scan.c - the allocation-free JSON pull scanner (see anthroxy_json_scan.h).
 *
 * Split from stream.c, its one caller, which reads the usual chunks with it and hands anything
 * the scanner declines to cJSON. */
#include "anthroxy_json_scan.h"
#include "anthroxy_utf8.h"

#include <stdint.h>
#include <string.h>

#define SWAR_ONES 0x0101010101010101ull
#define SWAR_LOW7 0x7f7f7f7f7f7f7f7full

/* High bit set in exactly the zero bytes of x. */
static inline uint64_t swar_zero(uint64_t x)
{
    return ~(((x & SWAR_LOW7) + SWAR_LOW7) | x | SWAR_LOW7);
}

/* The first byte in [p, e) that is '"', '\\', a control byte or not ASCII, or e; eight bytes
 * a step (the text deltas are where the time goes). */
static const char *plain_run(const char *p, const char *e)
{
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t w, m;

    while (e - p >= 8) {
        memcpy(&w, p, 8);
        m = swar_zero(w ^ (SWAR_ONES * '"')) | swar_zero(w ^ (SWAR_ONES * '\\')) |
            swar_zero(w & (SWAR_ONES * 0xE0)) | (w & (SWAR_ONES * 0x80));
        if (m != 0)
            return p + (__builtin_ctzll(m) >> 3);
        p += 8;
    }
#endif
    while (p < e && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20 &&
           (unsigned char)*p < 0x80)
        p++;
    return p;
}

int ax_json_scan_string(struct ax_json_scan *l, const char **raw, size_t *len, int *plain)
{
    const char *p, *start;
    int esc = 0;

    ax_json_scan_ws(l);
    if (l->p >= l->e || *l->p != '"')
        return -1;
    start = p = l->p + 1;
    for (;;) {
        p = plain_run(p, l->e);
        if (p >= l->e || (unsigned char)*p < 0x20)
            return -1;
        if ((unsigned char)*p >= 0x80) {
            /* copied to the client as it is: only well-formed UTF-8 (else cJSON's path
             * repairs it) */
            int k = ax_utf8_check((const unsigned char *)p, (const unsigned char *)l->e);
            if (k < 0)
                return -1;
            p += k;
            continue;
        }
        if (*p == '"')
            break;
        if (p + 1 >= l->e || strchr("\"\\bfnrt", p[1]) == NULL || p[1] == '\0')
            return -1; /* \u and \/ would not come back byte-identical: cJSON path */
        esc = 1;
        p += 2;
    }
    *raw = start;
    *len = (size_t)(p - start);
    *plain = !esc;
    l->p = p + 1;
    return 0;
}

int ax_json_scan_number(struct ax_json_scan *l, int *is_int)
{
    const char *p = l->p;

    *is_int = 1;
    if (p < l->e && *p == '-')
        p++;
    if (p >= l->e || *p < '0' || *p > '9')
        return -1;
    if (*p == '0')
        p++;
    else
        while (p < l->e && *p >= '0' && *p <= '9')
            p++;
    if (p < l->e && *p == '.') {
        *is_int = 0;
        if (++p >= l->e || *p < '0' || *p > '9')
            return -1;
        while (p < l->e && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < l->e && (*p == 'e' || *p == 'E')) {
        *is_int = 0;
        p++;
        if (p < l->e && (*p == '+' || *p == '-'))
            p++;
        if (p >= l->e || *p < '0' || *p > '9')
            return -1;
        while (p < l->e && *p >= '0' && *p <= '9')
            p++;
    }
    l->p = p;
    return 0;
}

/* Walks a container's members or elements; `member` says whether keys come first. */
static int skip_container(struct ax_json_scan *l, int depth, char close, int member)
{
    const char *k;
    size_t kl;
    int plain;

    l->p++;
    ax_json_scan_ws(l);
    if (l->p < l->e && *l->p == close) {
        l->p++;
        return 0;
    }
    for (;;) {
        if (member &&
            (ax_json_scan_string(l, &k, &kl, &plain) < 0 || ax_json_scan_expect(l, ':') < 0))
            return -1;
        if (ax_json_scan_skip(l, depth + 1) < 0)
            return -1;
        ax_json_scan_ws(l);
        if (l->p >= l->e)
            return -1;
        if (*l->p == close) {
            l->p++;
            return 0;
        }
        if (*l->p++ != ',')
            return -1;
    }
}

int ax_json_scan_skip(struct ax_json_scan *l, int depth)
{
    const char *s;
    size_t n;
    int x;

    ax_json_scan_ws(l);
    if (l->p >= l->e || depth > AX_JSON_SCAN_DEPTH)
        return -1;
    switch (*l->p) {
    case '"':
        return ax_json_scan_string(l, &s, &n, &x);
    case '{':
        return skip_container(l, depth, '}', 1);
    case '[':
        return skip_container(l, depth, ']', 0);
    case 't':
        return ax_json_scan_literal(l, "true", 4);
    case 'f':
        return ax_json_scan_literal(l, "false", 5);
    case 'n':
        return ax_json_scan_literal(l, "null", 4);
    default:
        return ax_json_scan_number(l, &x);
    }
}

/* An "index" member's value: 1 with the integer's text from *num to l->p; 0 when the value is
 * not a number (the caller skips it); -1 for what only cJSON reads right: a fraction, an
 * exponent, -0. */
int ax_json_scan_index(struct ax_json_scan *l, const char **num)
{
    int is_int;

    ax_json_scan_ws(l);
    *num = l->p;
    if (l->p >= l->e || (*l->p != '-' && (*l->p < '0' || *l->p > '9')))
        return 0;
    if (ax_json_scan_number(l, &is_int) < 0 || !is_int || ((*num)[0] == '-' && (*num)[1] == '0'))
        return -1;
    return 1;
}