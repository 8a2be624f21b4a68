/* anthroxy_buf.h - the bounded growable buffer.
 *
 * Every growable buffer in anthroxy is an ax_buf whose maximum is fixed at init (as curl's
 * dynbuf): appending past it fails with AX_ETOOBIG and leaves the contents unchanged. */
#ifndef ANTHROXY_BUF_H
#define ANTHROXY_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct ax_buf {
    char *data; /* NUL-terminated when non-NULL (the NUL is not counted in len) */
    size_t len;
    size_t cap;
    size_t max; /* largest len allowed */
};

void ax_buf_init(struct ax_buf *b, size_t max);
/* Returns 0, AX_ETOOBIG (len would exceed max) or AX_ENOMEM. */
int ax_buf_append(struct ax_buf *b, const void *p, size_t n);
int ax_buf_puts(struct ax_buf *b, const char *s);
int ax_buf_printf(struct ax_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int ax_buf_vprintf(struct ax_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Ensures room for n more bytes without changing len. */
int ax_buf_reserve(struct ax_buf *b, size_t n);
/* Drops the first n bytes (consumed input), keeping the rest. */
void ax_buf_consume(struct ax_buf *b, size_t n);
void ax_buf_reset(struct ax_buf *b); /* len = 0, memory kept */
void ax_buf_free(struct ax_buf *b);  /* memory released, max kept */
/* Hands the memory over (caller frees with free()); the buffer is left empty. */
char *ax_buf_take(struct ax_buf *b, size_t *len);

#endif
