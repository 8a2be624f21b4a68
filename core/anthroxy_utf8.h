/* anthroxy_utf8.h - UTF-8 well-formedness, header-only: checks that cost one pass and no
 * allocation, for the parsers (json.c, json_scan.c), the stream writer (stream.c) and the
 * log (log.c).
 *
 * Well-formed is Unicode's Table 3-7: no overlong forms, no surrogates (U+D800-U+DFFF, the
 * CESU-8 bytes ED A0..BF), nothing past U+10FFFF, no truncated sequence. An ill-formed
 * sequence is replaced by one U+FFFD per maximal subpart (Unicode's "substitution of maximal
 * subparts", as WHATWG's decoder and ICU do): `E0 A0 41` is U+FFFD then `A`. */
#ifndef ANTHROXY_UTF8_H
#define ANTHROXY_UTF8_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define AX_UTF8_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */

/* At p (p < e, *p >= 0x80): the length (2-4) of the well-formed sequence starting there,
 * or minus the length (1-3) of its maximal ill-formed subpart. */
static inline int ax_utf8_check(const unsigned char *p, const unsigned char *e)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    int n, i;

    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4;
    else
        return -1; /* a continuation byte, C0, C1, F5..FF */
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F; /* no surrogates */
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F; /* nothing past U+10FFFF */
    for (i = 1; i < n; i++) {
        if (p + i >= e || p[i] < lo || p[i] > hi)
            return -i;
        lo = 0x80;
        hi = 0xBF;
    }
    return n;
}

/* The length of the longest well-formed prefix of s[0..n): n when all of it is. ASCII goes
 * eight bytes a step. */
static inline size_t ax_utf8_valid_prefix(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    uint64_t w;
    int k;

    while (p < e) {
        while (e - p >= 8) {
            memcpy(&w, p, 8);
            if (w & 0x8080808080808080ull)
                break;
            p += 8;
        }
        while (p < e && *p < 0x80)
            p++;
        if (p >= e)
            break;
        if ((k = ax_utf8_check(p, e)) < 0)
            return (size_t)(p - (const unsigned char *)s);
        p += k;
    }
    return n;
}

/* The size of s[0..n) once each ill-formed subpart is replaced by U+FFFD. */
static inline size_t ax_utf8_repaired_len(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    size_t len = 0;
    int k;

    while (p < e) {
        if (*p < 0x80) {
            p++;
            len++;
        } else if ((k = ax_utf8_check(p, e)) > 0) {
            p += k;
            len += (size_t)k;
        } else {
            p += -k;
            len += 3;
        }
    }
    return len;
}

/* Writes s[0..n) to d with each ill-formed subpart replaced by U+FFFD; d has room for
 * ax_utf8_repaired_len(s, n) bytes. Returns the bytes written. */
static inline size_t ax_utf8_repair(const char *s, size_t n, char *d)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    char *d0 = d;
    int k;

    while (p < e) {
        if (*p < 0x80) {
            *d++ = (char)*p++;
        } else if ((k = ax_utf8_check(p, e)) > 0) {
            memcpy(d, p, (size_t)k);
            d += k;
            p += k;
        } else {
            memcpy(d, AX_UTF8_REPLACEMENT, 3);
            d += 3;
            p += -k;
        }
    }
    return (size_t)(d - d0);
}

/* Repairs the C string s in place within cap bytes (its NUL included): ill-formed subparts
 * become U+FFFD, and what no longer fits is cut at a character boundary. For short,
 * bounded texts (error messages). */
static inline void ax_utf8_repair_cstr(char *s, size_t cap)
{
    char tmp[1024];
    const unsigned char *p = (const unsigned char *)s, *e;
    size_t n = strlen(s), m = 0;
    int k;

    if (cap == 0 || ax_utf8_valid_prefix(s, n) == n)
        return;
    if (cap > sizeof(tmp))
        cap = sizeof(tmp);
    for (e = p + n; p < e; p += k < 0 ? -k : k) {
        k = *p < 0x80 ? 1 : ax_utf8_check(p, e);
        if (m + (k > 0 ? (size_t)k : 3) + 1 > cap)
            break;
        if (k > 0)
            memcpy(tmp + m, p, (size_t)k);
        else
            memcpy(tmp + m, AX_UTF8_REPLACEMENT, 3);
        m += k > 0 ? (size_t)k : 3;
    }
    memcpy(s, tmp, m);
    s[m] = '\0';
}

/* The length of s[0..n) without a sequence truncated at its end (a cut made by a byte
 * limit): where to cut so that a well-formed text stays well-formed. */
static inline size_t ax_utf8_trim_partial(const char *s, size_t n)
{
    size_t i = n, back = 0;

    while (i > 0 && back < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i > 0 && (unsigned char)s[i - 1] >= 0xC0 &&
        ax_utf8_check((const unsigned char *)s + i - 1, (const unsigned char *)s + n) < 0)
        return i - 1;
    return n;
}

#endif
