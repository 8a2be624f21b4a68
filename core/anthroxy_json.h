/* anthroxy_json.h - cJSON set-up, safe parsing, typed getters, printing.
 *
 * Parsing takes an explicit length, rejects trailing garbage, neutralises escaped NULs
 * (cJSON 1.7.15 silently cuts a string at `\u0000`) and keeps integers too large for a
 * double exactly (they become cJSON_Raw nodes that print verbatim). */
#ifndef ANTHROXY_JSON_H
#define ANTHROXY_JSON_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "anthroxy_buf.h"
#include "anthroxy_error.h"

/* Parses text[0..len). The text is modified in place: each escaped `\u0000` and each lone
 * surrogate escape (`\ud83d` without its low half) inside a string becomes `\uFFFD` (the
 * replacement character), of the same length; a well-formed pair stays. Ill-formed UTF-8
 * inside strings and keys becomes U+FFFD in the tree (one per maximal ill-formed subpart), so
 * every string of the result is well-formed UTF-8 whatever the input. A raw NUL byte before the
 * end is refused (only trailing ones are let be). On failure returns NULL and fills err with a
 * 400 invalid_request_error naming the byte offset. */
cJSON *ax_json_parse(char *text, size_t len, struct ax_error *err);
/* ax_json_parse of a copy, for text the caller cannot let be modified (err may be NULL). */
cJSON *ax_json_parse_const(const char *text, size_t len, struct ax_error *err);

/* 1 when ax_json_parse would read text[0..len) otherwise than plain cJSON does (a raw NUL, an
 * escape it rewrites, ill-formed UTF-8), else 0: for callers that parse a borrowed buffer
 * with cJSON and copy it for ax_json_parse only then. One pass, no allocation. */
int ax_json_needs_repair(const char *text, size_t len);

/* Appends the compact JSON text of item to out. Returns 0, AX_ETOOBIG or AX_ENOMEM. */
int ax_json_print(const cJSON *item, struct ax_buf *out);

/* Typed getters. Each returns 0 when the field is absent (leaving *out untouched), 1 when
 * present with the right type, or fills err with a 400 naming `where.key` and returns
 * AX_EINVAL when present with the wrong type. JSON null counts as absent. */
int ax_json_get_string(const cJSON *obj, const char *key, const char *where, const char **out,
                       struct ax_error *err);
int ax_json_get_int(const cJSON *obj, const char *key, const char *where, int64_t *out,
                    struct ax_error *err);
int ax_json_get_number(const cJSON *obj, const char *key, const char *where, double *out,
                       struct ax_error *err);
int ax_json_get_bool(const cJSON *obj, const char *key, const char *where, int *out,
                     struct ax_error *err);
int ax_json_get_array(const cJSON *obj, const char *key, const char *where, const cJSON **out,
                      struct ax_error *err);
int ax_json_get_object(const cJSON *obj, const char *key, const char *where, const cJSON **out,
                       struct ax_error *err);

/* Adds a string member with an explicit length (the value may hold NUL-free binary-safe
 * text only). Returns the new node or NULL on allocation failure. */
cJSON *ax_json_add_stringn(cJSON *obj, const char *key, const char *s, size_t n);

#endif
