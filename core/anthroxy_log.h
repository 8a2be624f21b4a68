/* anthroxy_log.h - levelled logging stamped with the request id, and the redaction that
 * keeps secrets out of logs and relayed upstream text.
 *
 * AX_LOG_INFO(req_or_NULL, fmt, ...) writes one line to stderr:
 *   2026-11-29T15:38:35.123Z INFO  [req_0123abcd] message
 * `req` is a `const struct ax_req *` or NULL; only its id is read (ax_req_id()). Secrets
 * (authorization, x-api-key, upstream and inbound keys) are never passed to these macros;
 * should one slip in (an upstream body that echoes its headers), ax_log_write redacts the
 * formatted message with ax_redact. It then escapes it: control bytes as \n, \r, \t or \xNN,
 * ill-formed UTF-8 bytes as \xNN; well-formed UTF-8 and backslashes stay as they are. So a
 * field holding a newline cannot forge a line, and a line is always well-formed UTF-8 without
 * control bytes (what a JSON log format needs to stay valid whatever the input). A message
 * over AX_LOG_LINE_MAX bytes is cut at a character boundary. */
#ifndef ANTHROXY_LOG_H
#define ANTHROXY_LOG_H

#include <stddef.h>

#include "anthroxy_error.h"

#define AX_LOG_LINE_MAX 4096  /* bytes of one formatted message, before escaping */
#define AX_LOG_MAX_SECRETS 32 /* registered secrets (ax_log_secret_add) */
#define AX_LOG_SECRET_MIN 4   /* shorter ones are not registered: they would mask words */

enum ax_log_level { AX_LOG_LVL_DEBUG, AX_LOG_LVL_INFO, AX_LOG_LVL_WARN, AX_LOG_LVL_ERROR };

/* --log-format: text lines as above, or one JSON object a line,
 *   {"time":"2026-11-29T15:38:35.123Z","level":"INFO","request_id":"req_..","msg":"..."}
 * (request_id only with a request), with a summary's fields as members of their own
 * (ax_log_fields). Strings are redacted, then JSON-escaped: control bytes as \n, \t or
 * \u00XX, ill-formed UTF-8 bytes as \ufffd, so each line parses whatever the input. */
enum ax_log_format { AX_LOG_FMT_TEXT, AX_LOG_FMT_JSON };

struct ax_req;

extern enum ax_log_level ax_log_level_current;

/* Parses DEBUG/INFO/WARNING/WARN/ERROR/CRITICAL (any case); returns -1 when unknown. */
int ax_log_level_parse(const char *name);
const char *ax_log_level_name(enum ax_log_level lvl);
void ax_log_set_level(enum ax_log_level lvl);
/* "text" or "json" (any case); -1 when unknown. */
int ax_log_format_parse(const char *name);
void ax_log_set_format(int fmt); /* enum ax_log_format; process-wide, like the level */

/* The request id for log prefixes; defined in request.c (returns NULL for NULL). */
const char *ax_req_id(const struct ax_req *req);

/* Registers a secret (the upstream key) that ax_redact masks wherever it appears; copied.
 * Registrations count: remove as often as added. Returns 0 (also for NULL or a secret under
 * AX_LOG_SECRET_MIN bytes, which is not registered), AX_ETOOBIG or AX_ENOMEM. Loop thread
 * only, as is all logging. */
int ax_log_secret_add(const char *secret);
void ax_log_secret_remove(const char *secret);

/* Redacts s[0..n) in place and returns its new length (never longer; no NUL is added):
 * - registered secrets -> "***";
 * - URL credentials: the USER:PASS of scheme://USER:PASS@host -> "***";
 * - the value after "authorization" and ':' or '=' (a header or a JSON member, any case),
 *   an auth scheme word kept: "Authorization: Bearer ***";
 * - "Bearer <token>" anywhere, for tokens of 6 bytes or more;
 * - the values of x-api-key, api-key, api_key, apikey, password and secret (':' or '=').
 * A value ends at a quote, comma, semicolon, ampersand, bracket, backslash or control byte.
 * Values under 3 bytes become as many stars. */
size_t ax_redact(char *s, size_t n);
/* ax_redact on a C string. */
void ax_redact_cstr(char *s);
/* url with its credentials masked ("http://u:p@h/v1" gives "http://" "***@h/v1"), into out[cap]
 * (cut to fit); returns out, or url when it is NULL. For /health, the start-up log and error
 * messages. */
const char *ax_redact_url(const char *url, char *out, size_t cap);

/* Writes s[0..n) escaped as log lines are (see above) to out[cap], NUL-terminated, cut at an
 * escape or character boundary when it does not fit. Returns the bytes written. */
size_t ax_log_escape(const char *s, size_t n, char *out, size_t cap);

void ax_log_write(enum ax_log_level lvl, const char *req_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One field of a structured event (a summary line): text renders key=value, json a member. */
enum ax_log_field_type { AX_LF_STR, AX_LF_INT, AX_LF_NUM };
struct ax_log_field {
    const char *key; /* a literal: [a-z_]+ */
    enum ax_log_field_type type;
    const char *s; /* AX_LF_STR; NULL renders as "-" */
    long long i;   /* AX_LF_INT */
    double d;      /* AX_LF_NUM, printed with one decimal ("%.1f"; not finite: null / -) */
};
#define AX_LOG_STR(k, v)                                                                           \
    {                                                                                              \
        (k), AX_LF_STR, (v), 0, 0                                                                  \
    }
#define AX_LOG_INT(k, v)                                                                           \
    {                                                                                              \
        (k), AX_LF_INT, NULL, (long long)(v), 0                                                    \
    }
#define AX_LOG_NUM(k, v)                                                                           \
    {                                                                                              \
        (k), AX_LF_NUM, NULL, 0, (double)(v)                                                       \
    }

/* An event named msg with n fields: text "msg k=v k=v ...", json {"msg":msg,"k":v,...}. */
void ax_log_fields(enum ax_log_level lvl, const char *req_id, const char *msg,
                   const struct ax_log_field *f, int n);

#define AX_LOG_AT(lvl, req, ...)                                                                   \
    do {                                                                                           \
        if ((lvl) >= ax_log_level_current)                                                         \
            ax_log_write((lvl), ax_req_id(req), __VA_ARGS__);                                      \
    } while (0)
#define AX_LOG_DEBUG(req, ...) AX_LOG_AT(AX_LOG_LVL_DEBUG, req, __VA_ARGS__)
#define AX_LOG_INFO(req, ...) AX_LOG_AT(AX_LOG_LVL_INFO, req, __VA_ARGS__)
#define AX_LOG_WARN(req, ...) AX_LOG_AT(AX_LOG_LVL_WARN, req, __VA_ARGS__)
#define AX_LOG_ERROR(req, ...) AX_LOG_AT(AX_LOG_LVL_ERROR, req, __VA_ARGS__)
#define AX_LOG_FIELDS(lvl, req, msg, f, n)                                                         \
    do {                                                                                           \
        if ((lvl) >= ax_log_level_current)                                                         \
            ax_log_fields((lvl), ax_req_id(req), (msg), (f), (n));                                 \
    } while (0)

#endif
