/* error.c - AX_E* names and the client-visible struct ax_error. */
#include "anthroxy_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

int ax_error_set(struct ax_error *err, int status, const char *type, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return AX_EINVAL;
    err->status = status;
    err->type = type ? type : ax_error_type_for_status(status);
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return AX_EINVAL;
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
