/* anthroxy_error.h - error codes and the client-visible error.
 *
 * Fallible functions return 0 or a negative AX_E* code. What the client must see travels
 * in struct ax_error, filled where the problem is found and rendered once, by
 * ax_http_send_error() or as an SSE `event: error` once a stream has started. */
#ifndef ANTHROXY_ERROR_H
#define ANTHROXY_ERROR_H

#include <stddef.h>

#define AX_ERRNO_MAP(X)                                                                            \
    X(NOMEM, -1, "out of memory")                                                                  \
    X(TOOBIG, -2, "over the configured limit")                                                     \
    X(INVAL, -3, "invalid argument or input")                                                      \
    X(BUSY, -4, "too many waiting")                                                                \
    X(IO, -5, "i/o error")                                                                         \
    X(CANCELED, -6, "canceled")                                                                    \
    X(TIMEDOUT, -7, "timed out")                                                                   \
    X(UPSTREAM, -8, "upstream error")                                                              \
    X(NOTFOUND, -9, "not found")                                                                   \
    X(LUA, -10, "policy error")                                                                    \
    X(AGAIN, -11, "try again")                                                                     \
    X(ADDRINUSE, -12, "address already in use")                                                    \
    X(ADDRNOTAVAIL, -13, "address not available")                                                  \
    X(ACCES, -14, "permission denied")

enum {
#define AX_ERRNO_DEF(name, val, msg) AX_E##name = (val),
    AX_ERRNO_MAP(AX_ERRNO_DEF)
#undef AX_ERRNO_DEF
};

const char *ax_strerror(int code);

/* Our code for a libuv error (UV_EADDRINUSE -> AX_EADDRINUSE, ...; AX_EIO when there is no
 * closer one); 0 stays 0. */
int ax_error_from_uv(int uv_code);

#define AX_ERROR_MSG_MAX 512

/* An error as the client sees it: HTTP status, Anthropic error type, message. */
struct ax_error {
    int status;       /* 0 while no error is set */
    const char *type; /* static string: "invalid_request_error", "api_error", ... */
    char message[AX_ERROR_MSG_MAX];
    int retry_after; /* seconds for a `retry-after` header, 0 for none */
    int code;        /* the AX_E* code the failing call returned */
};

/* Fills err (printf-style message) and returns AX_EINVAL, so call sites can
 * `return ax_error_set(err, 400, "invalid_request_error", "messages: expected ...");`. */
int ax_error_set(struct ax_error *err, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The same for a failure that is not bad input: fills err with code and returns code, e.g.
 * `return ax_error_set_code(err, ax_error_from_uv(rc), 500, "api_error", "cannot listen");`. */
int ax_error_set_code(struct ax_error *err, int code, int status, const char *type, const char *fmt,
                      ...) __attribute__((format(printf, 5, 6)));

/* The Anthropic error type for an HTTP status (400 invalid_request_error, 401
 * authentication_error, 403 permission_error, 404 not_found_error, 413 request_too_large,
 * 429 rate_limit_error, 529 overloaded_error, other 5xx api_error). */
const char *ax_error_type_for_status(int status);

/* The static string for type when it is one of Anthropic's error types, else NULL. */
const char *ax_error_type_known(const char *type);

#endif
