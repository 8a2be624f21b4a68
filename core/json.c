/* json.c - cJSON parsing with the safety checks cJSON lacks, typed getters and printing.
 * Used by the translators, routes and the policy view; see anthroxy_json.h. */
#include "anthroxy_json.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Replaces escaped NULs inside strings with U+FFFD, in place (same length). */
static void neutralise_nul_escapes(char *p, size_t n)
{
    size_t i;
    int in_str = 0;

    for (i = 0; i < n; i++) {
        char c = p[i];
        if (!in_str) {
            if (c == '"')
                in_str = 1;
            continue;
        }
        if (c == '"') {
            in_str = 0;
        } else if (c == '\\' && i + 1 < n) {
            if (p[i + 1] == 'u' && i + 5 < n && memcmp(p + i + 2, "0000", 4) == 0)
                memcpy(p + i + 2, "FFFD", 4);
            i++; /* skip the escaped character */
        }
    }
}

/* True when the number token at p[0..n) would not survive a double round trip: an integer
 * (no fraction, no exponent) with more than 15 significant digits. */
static int number_is_long_integer(const char *p, size_t n)
{
    size_t i = 0, digits = 0;

    if (i < n && p[i] == '-')
        i++;
    while (i < n && p[i] == '0')
        i++;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        digits++;
    }
    return digits > 15;
}

/* Scans for number tokens outside strings; returns how many are long integers. */
static size_t count_long_numbers(const char *p, size_t n)
{
    size_t i = 0, count = 0;

    while (i < n) {
        char c = p[i];
        if (c == '"') {
            for (i++; i < n && p[i] != '"'; i++)
                if (p[i] == '\\')
                    i++;
            i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t s = i;
            while (i < n && strchr("+-0123456789.eE", p[i]) != NULL)
                i++;
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
        char c = s->p[s->i];
        if (c == '"') {
            for (s->i++; s->i < s->n && s->p[s->i] != '"'; s->i++)
                if (s->p[s->i] == '\\')
                    s->i++;
            s->i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t st = s->i;
            while (s->i < s->n && strchr("+-0123456789.eE", s->p[s->i]) != NULL)
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

    if (cJSON_IsNumber(node)) {
        const char *tok;
        size_t len;
        char *raw;
        if (!next_number(s, &tok, &len))
            return AX_EINVAL;
        if (!number_is_long_integer(tok, len))
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

cJSON *ax_json_parse(char *text, size_t len, struct ax_error *err)
{
    const char *end = NULL;
    cJSON *root;
    size_t skip;

    neutralise_nul_escapes(text, len);
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
    if (count_long_numbers(text, len) > 0) {
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
    if (d != (double)(int64_t)d || d > 9007199254740992.0 || d < -9007199254740992.0)
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

cJSON *ax_json_add_stringn(cJSON *obj, const char *key, const char *s, size_t n)
{
    char *copy = malloc(n + 1);
    cJSON *item;

    if (copy == NULL)
        return NULL;
    memcpy(copy, s, n);
    copy[n] = '\0';
    item = cJSON_CreateString(copy);
    free(copy);
    if (item == NULL || !cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return NULL;
    }
    return item;
}
