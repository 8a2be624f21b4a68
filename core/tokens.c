/* tokens.c - the raw token estimator (see anthroxy_tokens.h for the rules and their why).
 * Used by routes.c (count_tokens without an upstream tokenizer), monitor.c and the Lua API
 * (anthroxy.tokens, message_tokens, request_tokens). One pass over each string, one visit
 * per JSON node: no printing, no allocation. */
#include "anthroxy_tokens.h"

#include <string.h>

enum cls {
    K_LOWER, /* ASCII a-z, Latin-1 and Latin Extended letters */
    K_UPPER, /* ASCII A-Z (camelCase boundaries) */
    K_OTHER, /* letters of other alphabets */
    K_WIDE,  /* CJK, kana, Hangul, emoji, symbols, invalid bytes: one token each */
    K_DIGIT,
    K_SPACE, /* space, tab */
    K_NL,    /* \r, \n */
    K_PUNCT, /* ASCII punctuation, general punctuation (dashes, quotes) */
};

#define IS_LETTER(k) ((k) <= K_OTHER)

/* clang-format off */
static const unsigned char ascii_cls[128] = {
#define P K_PUNCT
    /* 0x00-0x1f: controls count as punctuation, \t as space, \n \r as newline */
    P, P, P, P, P, P, P, P, P, K_SPACE, K_NL, P, P, K_NL, P, P,
    P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P,
    K_SPACE, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P,
    K_DIGIT, K_DIGIT, K_DIGIT, K_DIGIT, K_DIGIT, K_DIGIT, K_DIGIT, K_DIGIT, K_DIGIT, K_DIGIT,
    P, P, P, P, P, P,
    P, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER,
    K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER,
    K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, K_UPPER, P, P, P, P, P,
    P, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER,
    K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER,
    K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, K_LOWER, P, P, P, P, P,
#undef P
};
/* clang-format on */

static enum cls cls_of_cp(uint32_t cp)
{
    if (cp < 0xC0)
        return cp < 0xA0 ? K_WIDE : K_PUNCT; /* C1 controls; Latin-1 symbols */
    if (cp < 0x2B0)
        return (cp == 0xD7 || cp == 0xF7) ? K_PUNCT : K_LOWER;
    if (cp < 0x1E00)
        return K_OTHER;
    if (cp < 0x1F00)
        return K_LOWER; /* Latin Extended Additional (Vietnamese) */
    if (cp < 0x2000)
        return K_OTHER; /* Greek Extended */
    if (cp < 0x2070)
        return K_PUNCT; /* general punctuation: dashes, quotes, ellipsis */
    return K_WIDE;
}

/* Class and byte length of the character at s[i]. */
static inline enum cls cls_at(const unsigned char *s, size_t n, size_t i, size_t *len)
{
    unsigned char c = s[i];
    uint32_t cp;
    size_t k, need;

    if (c < 0x80) {
        *len = 1;
        return (enum cls)ascii_cls[c];
    }
    if (c >= 0xF0 && c < 0xF8)
        need = 4, cp = c & 0x07;
    else if (c >= 0xE0)
        need = c < 0xF0 ? 3 : 1, cp = c & 0x0F;
    else if (c >= 0xC2)
        need = 2, cp = c & 0x1F;
    else
        need = 1, cp = 0xFFFD;
    if (need == 1 || i + need > n) {
        *len = 1;
        return K_WIDE;
    }
    for (k = 1; k < need; k++) {
        if ((s[i + k] & 0xC0) != 0x80) {
            *len = 1;
            return K_WIDE;
        }
        cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    *len = need;
    return cls_of_cp(cp);
}

/* Common words up to 10 letters are single tokens in 100k+ vocabularies; longer (rarer)
 * words and identifiers split about every 8 letters. */
static inline int64_t latin_piece(size_t letters)
{
    return letters == 0 ? 0 : letters <= 10 ? 1 : (int64_t)((letters + 5) / 8);
}

/* A letter run from i: camelCase pieces of Latin letters, other letters at half rate. */
static size_t letter_run(const unsigned char *s, size_t n, size_t i, int64_t *tok)
{
    size_t latin = 0, other = 0, len;
    enum cls prev = K_PUNCT, k;

    while (i < n) {
        k = cls_at(s, n, i, &len);
        if (!IS_LETTER(k))
            break;
        if (k == K_OTHER) {
            other++;
        } else {
            if (k == K_UPPER && prev == K_LOWER && latin > 0) {
                *tok += latin_piece(latin);
                latin = 0;
            }
            latin++;
        }
        prev = k;
        i += len;
    }
    *tok += latin_piece(latin) + (int64_t)((other + 1) / 2);
    return i;
}

/* One run starting at s[i], any character: the general (slower) path, taken for text
 * that starts with a non-ASCII character. Returns the index after the run. */
static size_t step_generic(const unsigned char *s, size_t n, size_t i, int64_t *tokp)
{
    int64_t tok = 0;
    size_t j, len, nlen;
    enum cls k = cls_at(s, n, i, &len), next;

    switch (k) {
    case K_LOWER:
    case K_UPPER:
    case K_OTHER:
        i = letter_run(s, n, i, &tok);
        break;
    case K_DIGIT:
        for (j = i; j < n && s[j] >= '0' && s[j] <= '9'; j++)
            ;
        tok += (int64_t)((j - i + 1) / 2);
        i = j;
        break;
    case K_WIDE:
        tok++;
        i += len;
        break;
    case K_SPACE:
    case K_NL: {
        size_t spaces = 0, total = 0;
        int newline = 0;
        for (j = i; j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r'); j++) {
            total++;
            if (s[j] == '\n' || s[j] == '\r') {
                newline = 1;
                spaces = 0;
            } else {
                spaces++;
            }
        }
        i = j;
        if (i >= n) {
            tok += 1 + (int64_t)(total / 16);
            break;
        }
        next = cls_at(s, n, i, &nlen);
        /* the last space before a word or symbol merges into it */
        if (spaces == 1 && next != K_DIGIT)
            total--, spaces = 0;
        if (newline)
            tok += 1 + (int64_t)(total / 16) + (spaces > 1);
        else if (total > 0)
            tok += 1 + (int64_t)((total - 1) / 16);
        break;
    }
    case K_PUNCT: {
        size_t run = 0;
        for (j = i; j < n;) {
            if (cls_at(s, n, j, &nlen) != K_PUNCT)
                break;
            run++;
            j += nlen;
        }
        if (run == 1 && j < n && IS_LETTER(cls_at(s, n, j, &nlen))) {
            i = j; /* a lone symbol before a word merges into it */
            break;
        }
        tok += (int64_t)((run + 2) / 3);
        while (j < n && (s[j] == '\n' || s[j] == '\r'))
            j++; /* "{\n", ".\n": BPE keeps line ends with the symbol */
        i = j;
        break;
    }
    }
    *tokp += tok;
    return i;
}

/* Classes of all 256 byte values for the fast path: ASCII as ascii_cls, every byte of a
 * multi-byte character K_HIGH (handled by step_generic). */
#define K_HIGH 8
static unsigned char byte_cls[256];
static int byte_cls_ready;

static void byte_cls_init(void)
{
    int c;
    for (c = 0; c < 256; c++)
        byte_cls[c] = c < 0x80 ? ascii_cls[c] : K_HIGH;
    byte_cls_ready = 1; /* idempotent: a racing second init writes the same bytes */
}

/* The ASCII fast path: tight pointer loops per run over byte_cls; anything non-ASCII goes
 * through step_generic. The same rules as step_generic. */
int64_t ax_tokens_text(const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text, *p = s, *end = s + n, *st;
    const unsigned char *T = byte_cls;
    int64_t tok = 0;

    if (!byte_cls_ready)
        byte_cls_init();
    while (p < end) {
        switch (T[*p]) {
        case K_LOWER:
        case K_UPPER:
            st = p++;
            for (;;) {
                while (p < end && T[*p] == K_LOWER)
                    p++;
                if (p < end && T[*p] == K_UPPER) {
                    if (T[p[-1]] == K_LOWER) { /* camelCase boundary */
                        tok += latin_piece((size_t)(p - st));
                        st = p;
                    }
                    p++;
                    continue;
                }
                break;
            }
            tok += latin_piece((size_t)(p - st));
            if (p < end && *p >= 0x80) /* "café": the rest of the word */
                p = s + step_generic(s, n, (size_t)(p - s), &tok);
            break;
        case K_DIGIT:
            st = p;
            while (p < end && T[*p] == K_DIGIT)
                p++;
            tok += (int64_t)((p - st + 1) / 2);
            break;
        case K_SPACE:
            /* the common case: one space before a word or symbol, merged into it */
            if (p + 1 < end && *p == ' ' && (T[p[1]] <= K_UPPER || T[p[1]] == K_PUNCT)) {
                p++;
                break;
            }
            p = s + step_generic(s, n, (size_t)(p - s), &tok);
            break;
        case K_PUNCT:
            st = p;
            while (p < end && T[*p] == K_PUNCT)
                p++;
            if (p < end && *p >= 0x80) { /* the run or the word goes on past ASCII */
                p = s + step_generic(s, n, (size_t)(st - s), &tok);
                break;
            }
            if (p - st == 1 && p < end && T[*p] <= K_UPPER)
                break; /* a lone symbol before a word merges into it */
            tok += (int64_t)((p - st + 2) / 3);
            while (p < end && (*p == '\n' || *p == '\r'))
                p++;
            break;
        default: /* newlines, non-ASCII */
            p = s + step_generic(s, n, (size_t)(p - s), &tok);
            break;
        }
    }
    return tok;
}

static int64_t str_tokens(const char *s)
{
    return s ? ax_tokens_text(s, strlen(s)) : 0;
}

static int64_t number_tokens(double d)
{
    int64_t digits = 1;
    double a = d < 0 ? -d : d;

    if (a != (double)(int64_t)a || a >= 1e15)
        return 3;
    while (a >= 10) {
        a /= 10;
        digits++;
    }
    return (digits + 1) / 2;
}

int64_t ax_tokens_json(const cJSON *v)
{
    const cJSON *c;
    int64_t tok;

    if (v == NULL)
        return 0;
    if (cJSON_IsString(v))
        return str_tokens(v->valuestring);
    if (cJSON_IsNumber(v))
        return number_tokens(v->valuedouble);
    if (cJSON_IsRaw(v))
        return v->valuestring ? (int64_t)((strlen(v->valuestring) + 1) / 2) : 1;
    if (cJSON_IsArray(v)) {
        tok = 1;
        for (c = v->child; c != NULL; c = c->next)
            tok += 1 + ax_tokens_json(c);
        return tok;
    }
    if (cJSON_IsObject(v)) {
        /* {"key":value,...}: `{"`, `":`, `,"` and the close are about two per member */
        tok = 1;
        for (c = v->child; c != NULL; c = c->next)
            tok += 2 + str_tokens(c->string) + ax_tokens_json(c);
        return tok;
    }
    return 1; /* true, false, null */
}

/* ---- images ------------------------------------------------------------------------- */

static int b64_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Byte idx of base64 data d[0..n) decoded, or -1. Random access: headers only. */
static int b64_byte(const char *d, size_t n, size_t idx)
{
    size_t g = idx / 3 * 4;
    int a, b, c, e;
    unsigned v;

    if (g + 4 > n)
        return -1;
    a = b64_val(d[g]), b = b64_val(d[g + 1]);
    c = d[g + 2] == '=' ? 0 : b64_val(d[g + 2]);
    e = d[g + 3] == '=' ? 0 : b64_val(d[g + 3]);
    if (a < 0 || b < 0 || c < 0 || e < 0)
        return -1;
    v = (unsigned)a << 18 | (unsigned)b << 12 | (unsigned)c << 6 | (unsigned)e;
    return (int)((v >> (8 * (2 - idx % 3))) & 0xFF);
}

static long be16(const char *d, size_t n, size_t i)
{
    int a = b64_byte(d, n, i), b = b64_byte(d, n, i + 1);
    return a < 0 || b < 0 ? -1 : (long)a << 8 | b;
}

static long le16(const char *d, size_t n, size_t i)
{
    int a = b64_byte(d, n, i), b = b64_byte(d, n, i + 1);
    return a < 0 || b < 0 ? -1 : (long)b << 8 | a;
}

static long le24(const char *d, size_t n, size_t i)
{
    long lo = le16(d, n, i);
    int hi = b64_byte(d, n, i + 2);
    return lo < 0 || hi < 0 ? -1 : (long)hi << 16 | lo;
}

static int jpeg_size(const char *d, size_t n, long *w, long *h)
{
    size_t pos = 2;
    int seg;

    for (seg = 0; seg < 64; seg++) {
        int ff = b64_byte(d, n, pos), m = b64_byte(d, n, pos + 1);
        long len;
        if (ff != 0xFF || m < 0)
            return 0;
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            *h = be16(d, n, pos + 5);
            *w = be16(d, n, pos + 7);
            return *w > 0 && *h > 0;
        }
        if ((len = be16(d, n, pos + 2)) < 2)
            return 0;
        pos += 2 + (size_t)len;
    }
    return 0;
}

static int image_size(const char *d, size_t n, long *w, long *h)
{
    int b0 = b64_byte(d, n, 0), b1 = b64_byte(d, n, 1);

    if (b0 == 0x89 && b1 == 'P') { /* PNG: IHDR width, height (big-endian 32) */
        long wh = be16(d, n, 16), wl = be16(d, n, 18), hh = be16(d, n, 20), hl = be16(d, n, 22);
        if (wh < 0 || wl < 0 || hh < 0 || hl < 0 || wh > 0x7FFF || hh > 0x7FFF)
            return 0;
        *w = wh << 16 | wl;
        *h = hh << 16 | hl;
        return *w > 0 && *h > 0;
    }
    if (b0 == 'G' && b1 == 'I') { /* GIF */
        *w = le16(d, n, 6);
        *h = le16(d, n, 8);
        return *w > 0 && *h > 0;
    }
    if (b0 == 0xFF && b1 == 0xD8)
        return jpeg_size(d, n, w, h);
    if (b0 == 'R' && b64_byte(d, n, 8) == 'W' && b64_byte(d, n, 12) == 'V') { /* WebP */
        int kind = b64_byte(d, n, 15);
        if (kind == 'X') {
            *w = le24(d, n, 24) + 1;
            *h = le24(d, n, 27) + 1;
        } else if (kind == ' ') {
            long w16 = le16(d, n, 26), h16 = le16(d, n, 28);
            if (w16 < 0 || h16 < 0)
                return 0;
            *w = w16 & 0x3FFF;
            *h = h16 & 0x3FFF;
        } else if (kind == 'L') {
            long v = le24(d, n, 21), b3 = b64_byte(d, n, 24);
            if (v < 0 || b3 < 0)
                return 0;
            *w = (v & 0x3FFF) + 1;
            *h = ((v >> 14) | (b3 << 10)) & 0x3FFF;
            *h += 1;
        } else {
            return 0;
        }
        return *w > 0 && *h > 0;
    }
    return 0;
}

int64_t ax_tokens_image(const cJSON *source)
{
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(source, "type");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(source, "data");
    long w, h;
    double fw, fh, t;

    if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "base64") != 0 || !cJSON_IsString(data))
        return AX_TOKENS_IMAGE_MAX;
    if (!image_size(data->valuestring, strlen(data->valuestring), &w, &h))
        return AX_TOKENS_IMAGE_MAX;
    fw = (double)w, fh = (double)h;
    if (fw > 1568 || fh > 1568) {
        double scale = 1568 / (fw > fh ? fw : fh);
        fw *= scale, fh *= scale;
    }
    t = fw * fh / 750 + 0.999;
    if (t < 1)
        t = 1;
    return t > AX_TOKENS_IMAGE_MAX ? AX_TOKENS_IMAGE_MAX : (int64_t)t;
}

/* ---- messages and requests ---------------------------------------------------------- */

static int64_t blocks_tokens(const cJSON *content);

static int64_t block_tokens(const cJSON *blk)
{
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(blk, "type");
    const char *t = cJSON_IsString(ty) ? ty->valuestring : "";

    if (strcmp(t, "text") == 0)
        return ax_tokens_json(cJSON_GetObjectItemCaseSensitive(blk, "text"));
    if (strcmp(t, "tool_use") == 0)
        return 10 + ax_tokens_json(cJSON_GetObjectItemCaseSensitive(blk, "name")) +
               ax_tokens_json(cJSON_GetObjectItemCaseSensitive(blk, "input"));
    if (strcmp(t, "tool_result") == 0)
        return 6 + blocks_tokens(cJSON_GetObjectItemCaseSensitive(blk, "content"));
    if (strcmp(t, "thinking") == 0)
        return ax_tokens_json(cJSON_GetObjectItemCaseSensitive(blk, "thinking"));
    if (strcmp(t, "image") == 0)
        return ax_tokens_image(cJSON_GetObjectItemCaseSensitive(blk, "source"));
    if (strcmp(t, "document") == 0) {
        const cJSON *src = cJSON_GetObjectItemCaseSensitive(blk, "source");
        return ax_tokens_json(cJSON_GetObjectItemCaseSensitive(src, "data"));
    }
    return 0; /* redacted_thinking and the unknown: not sent */
}

/* A content value: a string or an array of blocks. */
static int64_t blocks_tokens(const cJSON *content)
{
    const cJSON *b;
    int64_t tok = 0;

    if (cJSON_IsString(content))
        return str_tokens(content->valuestring);
    cJSON_ArrayForEach(b, content)
    {
        tok += block_tokens(b);
    }
    return tok;
}

int64_t ax_tokens_message(const cJSON *msg)
{
    if (!cJSON_IsObject(msg))
        return 0;
    return 4 + blocks_tokens(cJSON_GetObjectItemCaseSensitive(msg, "content"));
}

int64_t ax_tokens_request(const cJSON *req)
{
    const cJSON *sys = cJSON_GetObjectItemCaseSensitive(req, "system");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools"), *x;
    int64_t tok = 3;

    if (cJSON_IsString(sys) || cJSON_IsArray(sys))
        tok += 4 + blocks_tokens(sys);
    cJSON_ArrayForEach(x, msgs)
    {
        tok += ax_tokens_message(x);
    }
    if (cJSON_IsArray(tools) && tools->child != NULL) {
        tok += 60;
        cJSON_ArrayForEach(x, tools)
        {
            tok += 10 + ax_tokens_json(cJSON_GetObjectItemCaseSensitive(x, "name")) +
                   ax_tokens_json(cJSON_GetObjectItemCaseSensitive(x, "description")) +
                   ax_tokens_json(cJSON_GetObjectItemCaseSensitive(x, "input_schema"));
        }
    }
    return tok;
}
