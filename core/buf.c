/* buf.c - the bounded buffer used for bodies, headers, SSE lines and write queues. */
#include "anthroxy_buf.h"
#include "anthroxy_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ax_buf_init(struct ax_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

int ax_buf_reserve(struct ax_buf *b, size_t n)
{
    size_t need, cap;
    char *p;

    if (n > b->max || b->len > b->max - n)
        return AX_ETOOBIG;
    need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    if ((p = realloc(b->data, cap)) == NULL)
        return AX_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int ax_buf_append(struct ax_buf *b, const void *p, size_t n)
{
    int rc;

    if ((rc = ax_buf_reserve(b, n)) < 0)
        return rc;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int ax_buf_puts(struct ax_buf *b, const char *s)
{
    return ax_buf_append(b, s, strlen(s));
}

int ax_buf_vprintf(struct ax_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    int n, rc;

    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return AX_EINVAL;
    if ((rc = ax_buf_reserve(b, (size_t)n)) < 0)
        return rc;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int ax_buf_printf(struct ax_buf *b, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = ax_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void ax_buf_consume(struct ax_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void ax_buf_reset(struct ax_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void ax_buf_free(struct ax_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

char *ax_buf_take(struct ax_buf *b, size_t *len)
{
    char *p = b->data;

    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}
