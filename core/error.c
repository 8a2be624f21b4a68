/* error.c - AX_E* names, libuv codes mapped to ours, the client-visible struct ax_error, and
 * Anthropic's error types (the one list of them). */
#include "anthroxy_error.h"
#include "anthroxy_utf8.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

const char *ax_strerror(int code)
{
    switch (code) {
#define AX_STRERROR_CASE(name, val, msg)                                                           \
    case AX_E##name:                                                                               \
        return msg;
        AX_ERRNO_MAP(AX_STRERROR_CASE)
#undef AX_STRERROR_CASE
    case 0:
        return "success";
    default:
        return "unknown error";
    }
}

int ax_error_from_uv(int uv_code)
{
    switch (uv_code) {
    case 0:
        return 0;
    case UV_EADDRINUSE:
        return AX_EADDRINUSE;
    case UV_EADDRNOTAVAIL:
        return AX_EADDRNOTAVAIL;
    case UV_EACCES:
    case UV_EPERM:
        return AX_EACCES;
    case UV_ENOMEM:
    case UV_ENOBUFS:
        return AX_ENOMEM;
    case UV_EINVAL:
        return AX_EINVAL;
    case UV_ETIMEDOUT:
        return AX_ETIMEDOUT;
    case UV_ECANCELED:
        return AX_ECANCELED;
    case UV_EAGAIN:
        return AX_EAGAIN;
    case UV_ENOENT:
        return AX_ENOTFOUND;
    default:
        return AX_EIO;
    }
}

static void error_fill(struct ax_error *err, int code, int status, const char *type,
                       const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

static void error_fill(struct ax_error *err, int code, int status, const char *type,
                       const char *fmt, va_list ap)
{
    err->status = status;
    err->type = type ? type : ax_error_type_for_status(status);
    err->code = code;
    /* a message cut by the limit is cut between characters: it goes into the client's JSON */
    if (vsnprintf(err->message, sizeof(err->message), fmt, ap) >= (int)sizeof(err->message))
        err->message[ax_utf8_trim_partial(err->message, sizeof(err->message) - 1)] = '\0';
}

int ax_error_set(struct ax_error *err, int status, const char *type, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return AX_EINVAL;
    va_start(ap, fmt);
    error_fill(err, AX_EINVAL, status, type, fmt, ap);
    va_end(ap);
    return AX_EINVAL;
}

int ax_error_set_code(struct ax_error *err, int code, int status, const char *type, const char *fmt,
                      ...)
{
    va_list ap;

    if (err == NULL)
        return code;
    va_start(ap, fmt);
    error_fill(err, code, status, type, fmt, ap);
    va_end(ap);
    return code;
}

const char *ax_error_type_for_status(int status)
{
    switch (status) {
    case 400:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
    case 405:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 529:
        return "overloaded_error";
    default:
        return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

const char *ax_error_type_known(const char *type)
{
    static const char *const types[] = {
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
        "request_too_large",     "rate_limit_error",     "api_error",        "overloaded_error"};
    size_t i;

    for (i = 0; type != NULL && i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(type, types[i]) == 0)
            return types[i];
    return NULL;
}
