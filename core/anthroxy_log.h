/* anthroxy_log.h - levelled logging stamped with the request id.
 *
 * AX_LOG_INFO(req_or_NULL, fmt, ...) writes one line to stderr:
 *   2026-11-29T15:38:35.123Z INFO  [req_0123abcd] message
 * `req` is a `const struct ax_req *` or NULL; only its id is read (ax_req_id()). Secrets
 * (authorization, x-api-key, upstream and inbound keys) are never passed to these macros. */
#ifndef ANTHROXY_LOG_H
#define ANTHROXY_LOG_H

enum ax_log_level { AX_LOG_LVL_DEBUG, AX_LOG_LVL_INFO, AX_LOG_LVL_WARN, AX_LOG_LVL_ERROR };

struct ax_req;

extern enum ax_log_level ax_log_level_current;

/* Parses DEBUG/INFO/WARNING/WARN/ERROR/CRITICAL (any case); returns -1 when unknown. */
int ax_log_level_parse(const char *name);
const char *ax_log_level_name(enum ax_log_level lvl);
void ax_log_set_level(enum ax_log_level lvl);

/* The request id for log prefixes; defined in request.c (returns NULL for NULL). */
const char *ax_req_id(const struct ax_req *req);

void ax_log_write(enum ax_log_level lvl, const char *req_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define AX_LOG_AT(lvl, req, ...)                                                                   \
    do {                                                                                           \
        if ((lvl) >= ax_log_level_current)                                                         \
            ax_log_write((lvl), ax_req_id(req), __VA_ARGS__);                                      \
    } while (0)
#define AX_LOG_DEBUG(req, ...) AX_LOG_AT(AX_LOG_LVL_DEBUG, req, __VA_ARGS__)
#define AX_LOG_INFO(req, ...) AX_LOG_AT(AX_LOG_LVL_INFO, req, __VA_ARGS__)
#define AX_LOG_WARN(req, ...) AX_LOG_AT(AX_LOG_LVL_WARN, req, __VA_ARGS__)
#define AX_LOG_ERROR(req, ...) AX_LOG_AT(AX_LOG_LVL_ERROR, req, __VA_ARGS__)

#endif
