/* json.c - cJSON parsing with the safety checks cJSON lacks, typed getters and printing.
 * Used by the translators, routes and the policy view; see anthroxy_json.h. */
#define _GNU_SOURCE /* memmem */
#include "anthroxy_json.h"
#include "anthroxy_utf8.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Byte classes for the pre-parse scan: where a string starts or ends, an escape, and the
 * characters a number token is made of. A number starts only at '-' or a digit: the 'e' of
 * `true` and `false` must not count as one, or numbers and nodes fall out of step. */
enum { C_OTHER, C_QUOTE, C_BSLASH, C_NUM, C_NUM_START };
static unsigned char byte_class[256];

static void fill_byte_class(void)
{
    const char *p;

    for (p = "+.eE"; *p; p++)
        byte_class[(unsigned char)*p] = C_NUM;
    for (p = "-0123456789"; *p; p++)
        byte_class[(unsigned char)*p] = C_NUM_START;
    byte_class['\\'] = C_BSLASH;
    byte_class['"'] = C_QUOTE;
}

/* Once per process, whichever thread parses first (--workers runs one loop per thread). */
static void init_byte_class(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    pthread_once(&once, fill_byte_class);
}

/* True when the number token p[0..n) would not survive cJSON's round trip: an integer (no
 * fraction, no exponent) of 16 or more significant digits. Exact in a double is not enough:
 * cJSON prints 15 significant digits whenever they read back within its tolerance (about
 * two units at 2^53), so 9007199254740991 (Claude Code's schemas hold it) would come back
 * as 9007199254740990. */
static int number_is_long_integer(const char *p, size_t n)
{
    size_t i = 0, digits;

    if (i < n && p[i] == '-')
        i++;
    while (i < n && p[i] == '0')
        i++;
    for (digits = 0; i + digits < n; digits++)
        if (p[i + digits] < '0' || p[i + digits] > '9')
            return 0;
    return digits > 15;
}

/* Returns the end of the string whose opening quote is at p[i-1]. */
static size_t skip_string(const char *p, size_t n, size_t i)
{
    while (i < n) {
        unsigned char c = byte_class[(unsigned char)p[i]];
        if (c == C_QUOTE)
            return i + 1;
        i += c == C_BSLASH ? 2 : 1;
    }
    return n;
}

/* The value of the four hex digits at p, or -1. */
static long hex4(const char *p)
{
    long v = 0;
    int i;

    for (i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* At p[i] == '\\' inside a string: an escape that cJSON 1.7.15 mishandles is rewritten as
 * \uFFFD, in place (same length): \u0000 (cJSON cuts the string there) and a lone surrogate
 * (cJSON fails the whole parse; JSON.stringify writes one when a JavaScript client cut a
 * string between the halves of an emoji). Returns the bytes the escape takes. */
static size_t fix_escape(char *p, size_t n, size_t i)
{
    long v, w;

    if (i + 5 >= n || p[i + 1] != 'u' || (v = hex4(p + i + 2)) < 0)
        return 2;
    if (v >= 0xD800 && v <= 0xDBFF && i + 11 < n && p[i + 6] == '\\' && p[i + 7] == 'u' &&
        (w = hex4(p + i + 8)) >= 0xDC00 && w <= 0xDFFF)
        return 12; /* a well-formed pair */
    if (v == 0 || (v >= 0xD800 && v <= 0xDFFF))
        memcpy(p + i + 2, "FFFD", 4);
    return 6;
}

/* True when text holds an escape fix_escape may have to rewrite (\u0000, \uD800-\uDFFF),
 * or an escaped backslash before such letters: the careful scan then decides. memmem is far
 * cheaper than walking every byte, and most bodies have no \u at all. */
static int needs_prescan(const char *p, size_t n)
{
    const char *b, *e = p + n;

    while ((b = memmem(p, (size_t)(e - p), "\\u", 2)) != NULL) {
        if (e - b >= 6 && ((b[2] == '0' && b[3] == '0' && b[4] == '0' && b[5] == '0') ||
                           ((b[2] == 'd' || b[2] == 'D') &&
                            ((b[3] >= '8' && b[3] <= '9') || (b[3] >= 'a' && b[3] <= 'f') ||
                             (b[3] >= 'A' && b[3] <= 'F')))))
            return 1;
        p = b + 2;
    }
    return 0;
}

/* One pass before parsing: rewrites the escapes cJSON mishandles (fix_escape), in place,
 * and counts the number tokens that are long integers. */
static size_t prescan(char *p, size_t n)
{
    size_t i = 0, count = 0;

    init_byte_class();
    while (i < n) {
        unsigned char c = byte_class[(unsigned char)p[i]];
        if (c == C_QUOTE) {
            for (i++; i < n;) {
                unsigned char d = byte_class[(unsigned char)p[i]];
                if (d == C_QUOTE)
                    break;
                i += d == C_BSLASH ? fix_escape(p, n, i) : 1;
            }
            i++;
        } else if (c == C_NUM_START) {
            size_t s = i;
            while (i < n && byte_class[(unsigned char)p[i]] >= C_NUM)
                i++;
            if (i - s > 15)
                count += number_is_long_integer(p + s, i - s);
        } else {
            i++;
        }
    }
    return count;
}

struct numscan {
    const char *p;
    size_t n, i;
};

/* Returns the next number token in document order. */
static int next_number(struct numscan *s, const char **tok, size_t *len)
{
    while (s->i < s->n) {
        unsigned char c = byte_class[(unsigned char)s->p[s->i]];
        if (c == C_QUOTE) {
            s->i = skip_string(s->p, s->n, s->i + 1);
        } else if (c == C_NUM_START) {
            size_t st = s->i;
            while (s->i < s->n && byte_class[(unsigned char)s->p[s->i]] >= C_NUM)
                s->i++;
            *tok = s->p + st;
            *len = s->i - st;
            return 1;
        } else {
            s->i++;
        }
    }
    return 0;
}

/* cJSON keeps children in document order, so the k-th number node is the k-th number
 * token: long integers are turned into raw nodes holding their exact text. */
static int restore_long_numbers(cJSON *node, struct numscan *s)
{
    cJSON *c;

    if (cJSON_IsNumber(node) || cJSON_IsRaw(node)) {
        const char *tok;
        size_t len;
        char *raw;
        if (!next_number(s, &tok, &len))
            return AX_EINVAL;
        if (cJSON_IsRaw(node) || !number_is_long_integer(tok, len))
            return 0;
        if ((raw = cJSON_malloc(len + 1)) == NULL)
            return AX_ENOMEM;
        memcpy(raw, tok, len);
        raw[len] = '\0';
        node->type = cJSON_Raw | (node->type & cJSON_StringIsConst);
        node->valuestring = raw;
        return 0;
    }
    for (c = node->child; c != NULL; c = c->next) {
        int rc = restore_long_numbers(c, s);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* cJSON prints integers of 16 digits and more inexactly. Those up to 2^53 are exact in the
 * double, so they become raw nodes printed from it; returns how many lie beyond 2^53, whose
 * digits only the text still has (restore_long_numbers then scans for them). */
static int exact_long_integers(cJSON *node)
{
    cJSON *c;
    int beyond = 0;

    if (cJSON_IsNumber(node)) {
        double d = node->valuedouble, a = d < 0 ? -d : d;
        char buf[32], *raw;
        if (a < 1e15)
            return 0;
        if (a >= 9007199254740992.0)
            return 1;
        if (d != (double)(int64_t)d) /* a fraction: cJSON's %.17g keeps it */
            return 0;
        snprintf(buf, sizeof(buf), "%.0f", d);
        if ((raw = cJSON_malloc(strlen(buf) + 1)) == NULL)
            return 0;
        memcpy(raw, buf, strlen(buf) + 1);
        node->type = cJSON_Raw | (node->type & cJSON_StringIsConst);
        node->valuestring = raw;
        return 0;
    }
    for (c = node->child; c != NULL; c = c->next)
        beyond += exact_long_integers(c);
    return beyond;
}

/* A string cJSON copied as it was, ill-formed UTF-8 included: replaced by its repaired copy
 * (each ill-formed subpart U+FFFD). Returns 0 or AX_ENOMEM. */
static int repair_string(char **s)
{
    size_t n = strlen(*s), m;
    char *r;

    if (ax_utf8_valid_prefix(*s, n) == n)
        return 0;
    m = ax_utf8_repaired_len(*s, n);
    if ((r = cJSON_malloc(m + 1)) == NULL)
        return AX_ENOMEM;
    ax_utf8_repair(*s, n, r);
    r[m] = '\0';
    cJSON_free(*s);
    *s = r;
    return 0;
}

/* Every string value and key of the tree, repaired (only when the text held ill-formed UTF-8:
 * the check of the text is one pass, this walk the rare case). */
static int repair_strings(cJSON *node)
{
    cJSON *c;
    int rc;

    for (c = node; c != NULL; c = c->next) {
        if (c->string != NULL && !(c->type & cJSON_StringIsConst) &&
            (rc = repair_string(&c->string)) < 0)
            return rc;
        if (cJSON_IsString(c) && c->valuestring != NULL &&
            (rc = repair_string(&c->valuestring)) < 0)
            return rc;
        if (c->child != NULL && (rc = repair_strings(c->child)) < 0)
            return rc;
    }
    return 0;
}

int ax_json_needs_repair(const char *text, size_t len)
{
    return memchr(text, '\0', len) != NULL || needs_prescan(text, len) ||
           ax_utf8_valid_prefix(text, len) != len;
}

cJSON *ax_json_parse(char *text, size_t len, struct ax_error *err)
{
    const char *end = NULL;
    cJSON *root;
    size_t skip;

    init_byte_class();
    /* The careful scan (which must tell escaped backslashes from escapes) runs only when
     * such an escape appears at all. */
    if (needs_prescan(text, len))
        prescan(text, len);

    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (root == NULL) {
        size_t off = end && end >= text ? (size_t)(end - text) : 0;
        ax_error_set(err, 400, "invalid_request_error",
                     "invalid JSON in request body near byte %zu", off);
        return NULL;
    }
    /* cJSON takes a raw NUL inside a string as its end: the rest of the string would be
     * lost without an error. Raw NULs are not JSON anyway (only trailing ones are let be). */
    if (memchr(text, '\0', (size_t)(end - text)) != NULL) {
        size_t off = (size_t)((const char *)memchr(text, '\0', (size_t)(end - text)) - text);
        cJSON_Delete(root);
        ax_error_set(err, 400, "invalid_request_error",
                     "invalid JSON in request body: NUL byte at byte %zu", off);
        return NULL;
    }
    for (skip = (size_t)(end - text); skip < len; skip++) {
        char c = text[skip];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n' && c != '\0') {
            cJSON_Delete(root);
            ax_error_set(err, 400, "invalid_request_error",
                         "invalid JSON in request body: trailing data at byte %zu", skip);
            return NULL;
        }
    }
    /* Ill-formed UTF-8 inside strings (cJSON copies bytes as they are) would reach the
     * client's JSON and the upstream's: each ill-formed subpart becomes U+FFFD. */
    if (ax_utf8_valid_prefix(text, (size_t)(end - text)) != (size_t)(end - text) &&
        repair_strings(root) < 0) {
        cJSON_Delete(root);
        ax_error_set(err, 500, "api_error", "out of memory parsing JSON");
        return NULL;
    }
    if (exact_long_integers(root) > 0) {
        struct numscan s = {text, len, 0};
        if (restore_long_numbers(root, &s) < 0) {
            cJSON_Delete(root);
            ax_error_set(err, 500, "api_error", "out of memory parsing JSON");
            return NULL;
        }
    }
    return root;
}

int ax_json_print(const cJSON *item, struct ax_buf *out)
{
    char *s = cJSON_PrintUnformatted(item);
    int rc;

    if (s == NULL)
        return AX_ENOMEM;
    rc = ax_buf_puts(out, s);
    cJSON_free(s);
    return rc;
}

static const cJSON *get_present(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (v == NULL || cJSON_IsNull(v)) ? NULL : v;
}

static int wrong_type(struct ax_error *err, const char *where, const char *key, const char *what)
{
    if (where && *where)
        return ax_error_set(err, 400, "invalid_request_error", "%s.%s: expected %s", where, key,
                            what);
    return ax_error_set(err, 400, "invalid_request_error", "%s: expected %s", key, what);
}

int ax_json_get_string(const cJSON *obj, const char *key, const char *where, const char **out,
                       struct ax_error *err)
{
    const cJSON *v = get_present(obj, key);
    if (v == NULL)
        return 0;
    if (!cJSON_IsString(v))
        return wrong_type(err, where, key, "a string");
    *out = v->valuestring;
    return 1;
}

int ax_json_get_int(const cJSON *obj, const char *key, const char *where, int64_t *out,
                    struct ax_error *err)
{
    const cJSON *v = get_present(obj, key);
    double d;
    if (v == NULL)
        return 0;
    if (!cJSON_IsNumber(v))
        return wrong_type(err, where, key, "an integer");
    d = v->valuedouble;
    /* the range first: casting inf (1e999999) or 2^63 to int64_t is undefined */
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || d != (double)(int64_t)d)
        return wrong_type(err, where, key, "an integer");
    *out = (int64_t)d;
    return 1;
}

int ax_json_get_number(const cJSON *obj, const char *key, const char *where, double *out,
                       struct ax_error *err)
{
    const cJSON *v = get_present(obj, key);
    if (v == NULL)
        return 0;
    if (!cJSON_IsNumber(v))
        return wrong_type(err, where, key, "a number");
    *out = v->valuedouble;
    return 1;
}

int ax_json_get_bool(const cJSON *obj, const char *key, const char *where, int *out,
                     struct ax_error *err)
{
    const cJSON *v = get_present(obj, key);
    if (v == NULL)
        return 0;
    if (!cJSON_IsBool(v))
        return wrong_type(err, where, key, "a boolean");
    *out = cJSON_IsTrue(v);
    return 1;
}

int ax_json_get_array(const cJSON *obj, const char *key, const char *where, const cJSON **out,
                      struct ax_error *err)
{
    const cJSON *v = get_present(obj, key);
    if (v == NULL)
        return 0;
    if (!cJSON_IsArray(v))
        return wrong_type(err, where, key, "an array");
    *out = v;
    return 1;
}

int ax_json_get_object(const cJSON *obj, const char *key, const char *where, const cJSON **out,
                       struct ax_error *err)
{
    const cJSON *v = get_present(obj, key);
    if (v == NULL)
        return 0;
    if (!cJSON_IsObject(v))
        return wrong_type(err, where, key, "an object");
    *out = v;
    return 1;
}

/* s[0..n) and a NUL in a new malloc'ed block; NULL when out of memory. */
static char *copy_n(const char *s, size_t n)
{
    char *copy = malloc(n + 1);

    if (copy != NULL) {
        memcpy(copy, s, n);
        copy[n] = '\0';
    }
    return copy;
}

cJSON *ax_json_parse_const(const char *text, size_t len, struct ax_error *err)
{
    char *copy = copy_n(text, len);
    cJSON *v;

    if (copy == NULL) {
        ax_error_set_code(err, AX_ENOMEM, 500, "api_error", "out of memory");
        return NULL;
    }
    v = ax_json_parse(copy, len, err);
    free(copy);
    return v;
}

cJSON *ax_json_add_stringn(cJSON *obj, const char *key, const char *s, size_t n)
{
    char *copy = copy_n(s, n);
    cJSON *item;

    if (copy == NULL)
        return NULL;
    item = cJSON_CreateString(copy);
    free(copy);
    if (item == NULL || !cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return NULL;
    }
    return item;
}
