/* tokens.c - the raw token estimator (see anthroxy_tokens.h for the rules and their why).
 * Used by routes.c (count_tokens without an upstream tokenizer), monitor.c and the Lua API
 * (anthroxy.tokens, message_tokens, request_tokens). One pass over each string, one visit
 * per JSON node: no printing, no allocation. */
#include "anthroxy_tokens.h"

#include <pthread.h>
#include <string.h>

/* ---- text: a transducer over byte classes ------------------------------------------- */

/* Byte classes. Non-ASCII characters are classed by their UTF-8 lead byte (continuation
 * bytes change nothing): C3-CD Latin letters (U+00C0-U+036F), C2 Latin-1 symbols and E2
 * general punctuation and symbols count as punctuation, CE-DF and E0-E1 letters of other
 * alphabets, E3-F4 (CJK, kana, Hangul, emoji, ...) and invalid bytes one token each. */
enum cls { C_LO, C_UP, C_DG, C_SP, C_NL, C_PU, C_LAT, C_OTH, C_WIDE, C_CONT, NCLS };

/* States. A Latin letter run is counted by its position k in the current piece (LL: the
 * last letter was lower case, LU: upper case; a piece restarts at a lower-to-upper change):
 * entering k = 1 costs the piece's first token, entering k = 11 one more, and k cycles
 * 11..18 so every 8 letters past 10 cost another. Other states follow the rules of
 * anthroxy_tokens.h; a cost is charged on the transition, which gives one character of
 * look-ahead (a lone space or symbol is free when a word follows). */
enum {
    S_START = 0,
    S_LL1 = 1,          /* S_LL1 .. S_LL1 + 17 */
    S_LU1 = S_LL1 + 18, /* S_LU1 .. S_LU1 + 17 */
    S_O1 = S_LU1 + 18,  /* other alphabets: 1 token per 2 letters */
    S_O2,
    S_PA, /* the first symbol of a punctuation run */
    S_P2,
    S_P3,
    S_P1C, /* the 4th, 7th, ... symbol: one more token */
    S_PN,  /* line ends right after symbols: free */
    S_D1,  /* digits: 1 token per 2 */
    S_D2,
    S_W,             /* after a wide character */
    S_S1,            /* S_S1 .. S_S1 + 16: k spaces (no line end yet) */
    S_N = S_S1 + 17, /* a whitespace run holding a line end */
    S_NS1,           /* S_NS1 .. S_NS1 + 16: k spaces after the line end */
    NSTATES = S_NS1 + 17
};

/* One byte: next state << 2 | cost (0-3). Two bytes: next state << 3 | cost (0-6). */
static uint16_t step1[NSTATES][16];
static uint16_t step2[NSTATES][NCLS * NCLS];
static unsigned char byte_cls[256];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static int letter_pos(int s)
{
    if (s >= S_LL1 && s < S_LU1)
        return s - S_LL1 + 1;
    if (s >= S_LU1 && s < S_O1)
        return s - S_LU1 + 1;
    return 0;
}

static int is_space_state(int s)
{
    return s >= S_S1 && s < S_N;
}

static int is_nl_state(int s)
{
    return s >= S_N && s < NSTATES;
}

static int is_punct_state(int s)
{
    return s == S_PA || s == S_P2 || s == S_P3 || s == S_P1C;
}

/* Next Latin position after k: 1..18, then 11..18 again. */
static int next_pos(int k)
{
    return k >= 18 ? 11 : k + 1;
}

/* The transition of state s on class c: *next and the tokens it completes. */
static void transition(int s, int c, int *next, int *cost)
{
    int k = letter_pos(s), nk;

    /* a lone symbol right before a word merges into it: the word's first token is free */
    int word_start = s == S_PA ? 0 : 1;

    switch (c) {
    case C_LO:
    case C_LAT:
        if (k) {
            nk = next_pos(k);
            *next = S_LL1 + nk - 1, *cost = nk == 11;
        } else {
            *next = S_LL1, *cost = word_start;
        }
        break;
    case C_UP:
        if (k && s < S_LU1) {
            *next = S_LU1, *cost = 1; /* camelCase: a new piece */
        } else if (k) {
            nk = next_pos(k);
            *next = S_LU1 + nk - 1, *cost = nk == 11;
        } else {
            *next = S_LU1, *cost = word_start;
        }
        break;
    case C_OTH:
        if (s == S_O1)
            *next = S_O2, *cost = 0;
        else
            *next = S_O1, *cost = word_start;
        break;
    case C_DG:
        if (s == S_D1)
            *next = S_D2, *cost = 0;
        else /* a lone space before a digit is a token of its own */
            *next = S_D1, *cost = 1 + (s == S_S1);
        break;
    case C_WIDE:
        *next = S_W, *cost = 1;
        break;
    case C_PU:
        if (s == S_PA)
            *next = S_P2, *cost = 0;
        else if (s == S_P2)
            *next = S_P3, *cost = 0;
        else if (s == S_P3)
            *next = S_P1C, *cost = 1;
        else if (s == S_P1C)
            *next = S_P2, *cost = 0;
        else
            *next = S_PA, *cost = 1;
        break;
    case C_SP:
        /* the run's token is charged at its 2nd space (and every 16 more); a single
         * space is charged only if a digit or the end follows */
        if (is_space_state(s)) {
            nk = s - S_S1 + 1 >= 17 ? 2 : s - S_S1 + 2;
            *next = S_S1 + nk - 1, *cost = nk == 2;
        } else if (is_nl_state(s)) {
            nk = s == S_N ? 1 : (s - S_NS1 + 1 >= 17 ? 2 : s - S_NS1 + 2);
            *next = S_NS1 + nk - 1, *cost = nk == 2; /* indentation */
        } else {
            *next = S_S1, *cost = 0;
        }
        break;
    case C_NL:
        if (is_punct_state(s) || s == S_PN)
            *next = S_PN, *cost = 0; /* "{\n", ".\n" */
        else if (is_nl_state(s))
            *next = S_N, *cost = 0;
        else
            *next = S_N, *cost = !(is_space_state(s) && s != S_S1); /* run charged yet? */
        break;
    default: /* C_CONT: the character goes on */
        *next = s, *cost = 0;
        break;
    }
}

static int byte_class(int b)
{
    if (b >= 'a' && b <= 'z')
        return C_LO;
    if (b >= 'A' && b <= 'Z')
        return C_UP;
    if (b >= '0' && b <= '9')
        return C_DG;
    if (b == ' ' || b == '\t')
        return C_SP;
    if (b == '\n' || b == '\r')
        return C_NL;
    if (b < 0x80)
        return C_PU;
    if (b < 0xC0)
        return C_CONT;
    if (b == 0xC2 || b == 0xE2)
        return C_PU;
    if (b >= 0xC3 && b <= 0xCD)
        return C_LAT;
    if ((b >= 0xCE && b <= 0xDF) || b == 0xE0 || b == 0xE1)
        return C_OTH;
    return C_WIDE; /* E3-F4, and the invalid C0, C1, F5-FF */
}

static void tables_init(void)
{
    int s, a, b;

    for (b = 0; b < 256; b++)
        byte_cls[b] = (unsigned char)byte_class(b);
    for (s = 0; s < NSTATES; s++)
        for (a = 0; a < NCLS; a++) {
            int next, cost;
            transition(s, a, &next, &cost);
            step1[s][a] = (uint16_t)(next << 2 | cost);
        }
    for (s = 0; s < NSTATES; s++)
        for (a = 0; a < NCLS; a++)
            for (b = 0; b < NCLS; b++) {
                unsigned e1 = step1[s][a], e2 = step1[e1 >> 2][b];
                step2[s][a * NCLS + b] = (uint16_t)((e2 >> 2) << 3 | ((e1 & 3) + (e2 & 3)));
            }
}

/* Two bytes per table look-up: the only serial dependency is the state, so the loop runs
 * at a few cycles per byte with no data-dependent branch. */
int64_t ax_tokens_text(const char *text, size_t n)
{
    const unsigned char *p = (const unsigned char *)text, *end = p + n;
    const unsigned char *cls = byte_cls;
    unsigned st = S_START, e;
    int64_t tok = 0;

    pthread_once(&tables_once, tables_init);
    for (; end - p >= 2; p += 2) {
        e = step2[st][cls[p[0]] * NCLS + cls[p[1]]];
        tok += e & 7;
        st = e >> 3;
    }
    if (p < end) {
        e = step1[st][cls[*p]];
        tok += e & 3;
        st = e >> 2;
    }
    return tok + (st == S_S1); /* a lone space at the end */
}

static int64_t str_tokens(const char *s)
{
    return s ? ax_tokens_text(s, strlen(s)) : 0;
}

static int64_t number_tokens(double d)
{
    int64_t digits = 1;
    double a = d < 0 ? -d : d;

    if (!(a < 1e15) || a != (double)(int64_t)a) /* range before the cast: inf, 2^63 */
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

/* A document's source as translate_request.c sends it: the text of a text or content
 * source, a one-line note for a PDF or other binary. */
static int64_t doc_source_tokens(const cJSON *src)
{
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(src, "type");

    if (cJSON_IsString(ty) && strcmp(ty->valuestring, "text") == 0)
        return ax_tokens_json(cJSON_GetObjectItemCaseSensitive(src, "data"));
    if (cJSON_IsString(ty) && strcmp(ty->valuestring, "content") == 0)
        return blocks_tokens(cJSON_GetObjectItemCaseSensitive(src, "content"));
    return 12;
}

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
    if (strcmp(t, "document") == 0)
        return ax_tokens_json(cJSON_GetObjectItemCaseSensitive(blk, "title")) +
               doc_source_tokens(cJSON_GetObjectItemCaseSensitive(blk, "source"));
    if (strcmp(t, "search_result") == 0)
        return ax_tokens_json(cJSON_GetObjectItemCaseSensitive(blk, "title")) +
               ax_tokens_json(cJSON_GetObjectItemCaseSensitive(blk, "source")) +
               blocks_tokens(cJSON_GetObjectItemCaseSensitive(blk, "content"));
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

int64_t ax_tokens_tools(const cJSON *tools)
{
    const cJSON *x;
    int64_t tok = 0;

    if (cJSON_IsArray(tools) && tools->child != NULL) {
        tok += 60;
        cJSON_ArrayForEach(x, tools)
        {
            /* defer_loading: not sent upstream until a tool_reference loads it
             * (translate_request.c), so not part of the prompt until then */
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "defer_loading")))
                continue;
            tok += 10 + ax_tokens_json(cJSON_GetObjectItemCaseSensitive(x, "name")) +
                   ax_tokens_json(cJSON_GetObjectItemCaseSensitive(x, "description")) +
                   ax_tokens_json(cJSON_GetObjectItemCaseSensitive(x, "input_schema"));
        }
    }
    return tok;
}

int64_t ax_tokens_system(const cJSON *req)
{
    const cJSON *sys = cJSON_GetObjectItemCaseSensitive(req, "system");

    return 3 + (cJSON_IsString(sys) || cJSON_IsArray(sys) ? 4 + blocks_tokens(sys) : 0);
}

int64_t ax_tokens_fixed(const cJSON *req)
{
    return ax_tokens_system(req) + ax_tokens_tools(cJSON_GetObjectItemCaseSensitive(req, "tools"));
}

int64_t ax_tokens_messages(const cJSON *req)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages"), *x;
    int64_t tok = 0;

    cJSON_ArrayForEach(x, msgs)
    {
        tok += ax_tokens_message(x);
    }
    return tok;
}

int64_t ax_tokens_request(const cJSON *req)
{
    return ax_tokens_fixed(req) + ax_tokens_messages(req);
}
