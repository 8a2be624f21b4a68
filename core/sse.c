/* sse.c - incremental server-sent-events reader for upstream bodies (see anthroxy_sse.h).
 *
 * Fed by the upstream transfer's data callback; its events go to stream.c. The common case,
 * "data: {...}\n\n" arriving whole, is dispatched straight from the caller's bytes; only a
 * line or an event cut by a read boundary is copied into the one bounded buffer, which
 * holds the event's joined data followed by the partial line. */
#include "anthroxy_sse.h"
#include "anthroxy_error.h"

#include <string.h>

void ax_sse_init(struct ax_sse *r, size_t max_line_bytes)
{
    memset(r, 0, sizeof(*r));
    r->_max = max_line_bytes;
    /* data (<= max) + '\n' + a partial line (<= max) */
    ax_buf_init(&r->_buf, 2 * max_line_bytes + 1);
}

void ax_sse_free(struct ax_sse *r)
{
    ax_buf_free(&r->_buf);
    r->_ext = NULL;
}

static void reset_event(struct ax_sse *r)
{
    r->_buf.len = 0;
    r->_data_len = 0;
    r->_has_data = 0;
    r->_ext = NULL;
    r->_event_len = 0;
}

/* Moves data still lying in the caller's input into the buffer (it must survive the call,
 * or more is about to be joined to it). The buffer holds nothing else at that point. */
static int flush_ext(struct ax_sse *r)
{
    int rc;

    if (r->_ext == NULL)
        return 0;
    r->_buf.len = 0;
    if ((rc = ax_buf_append(&r->_buf, r->_ext, r->_data_len)) < 0)
        return rc;
    r->_ext = NULL;
    return 0;
}

static int dispatch(struct ax_sse *r, ax_sse_event_fn cb, void *ud)
{
    const char *data;
    int rc = 0;

    if (r->_has_data) {
        data = r->_ext != NULL ? r->_ext : (r->_buf.data != NULL ? r->_buf.data : "");
        r->_event[r->_event_len] = '\0';
        r->events++;
        rc = cb(r->_event_len > 0 ? r->_event : NULL, data, r->_data_len, ud);
    }
    reset_event(r);
    return rc;
}

/* Adds one data: value. `in_buf`: line (and so val) lies in the buffer after the data. */
static int add_data(struct ax_sse *r, const char *val, size_t vlen, int in_buf)
{
    char *b;
    int rc;

    if (r->_has_data && r->_data_len + 1 + vlen > r->_max)
        return AX_ETOOBIG;
    if (!r->_has_data) {
        r->_has_data = 1;
        r->_data_len = vlen;
        if (!in_buf) {
            r->_ext = val; /* zero-copy until the feed returns */
            return 0;
        }
        memmove(r->_buf.data, val, vlen);
        r->_buf.len = vlen;
        return 0;
    }
    if (in_buf) {
        /* the line follows the data in the buffer: val starts at least 5 bytes later */
        b = r->_buf.data;
        memmove(b + r->_data_len + 1, val, vlen);
        b[r->_data_len] = '\n';
        r->_data_len += 1 + vlen;
        r->_buf.len = r->_data_len;
        return 0;
    }
    if ((rc = flush_ext(r)) < 0 || (rc = ax_buf_append(&r->_buf, "\n", 1)) < 0 ||
        (rc = ax_buf_append(&r->_buf, val, vlen)) < 0)
        return rc;
    r->_data_len = r->_buf.len;
    return 0;
}

static int field_is(const char *f, size_t flen, const char *name, size_t nlen)
{
    return flen == nlen && memcmp(f, name, nlen) == 0;
}

/* One complete line, without its terminator. */
static int on_line(struct ax_sse *r, const char *line, size_t len, int in_buf, ax_sse_event_fn cb,
                   void *ud)
{
    const char *colon, *val;
    size_t flen, vlen;
    int rc = 0;

    if (!r->_started) {
        r->_started = 1;
        if (len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) { /* a BOM, as the spec allows */
            line += 3;
            len -= 3;
        }
    }
    if (len == 0)
        return dispatch(r, cb, ud);
    if (line[0] == ':')
        goto done; /* comment: ": keep-alive" */
    colon = memchr(line, ':', len);
    flen = colon != NULL ? (size_t)(colon - line) : len;
    val = colon != NULL ? colon + 1 : line + len;
    vlen = len - (size_t)(val - line);
    if (vlen > 0 && val[0] == ' ') {
        val++;
        vlen--;
    }
    if (field_is(line, flen, "data", 4)) {
        return add_data(r, val, vlen, in_buf); /* leaves the buffer as it must be */
    } else if (field_is(line, flen, "event", 5)) {
        r->_event_len = vlen < AX_SSE_EVENT_MAX ? vlen : AX_SSE_EVENT_MAX;
        memcpy(r->_event, val, r->_event_len);
    } else if (!field_is(line, flen, "id", 2) && !field_is(line, flen, "retry", 5)) {
        r->garbage++;
    }
done:
    if (in_buf)
        r->_buf.len = r->_data_len; /* drop the line, keep the data */
    return rc;
}

/* Index of the first '\r' or '\n' in p[0..n), or n. */
static size_t find_eol(const char *p, size_t n)
{
    const char *nl = memchr(p, '\n', n);
    size_t lim = nl != NULL ? (size_t)(nl - p) : n;
    const char *cr = memchr(p, '\r', lim);

    return cr != NULL ? (size_t)(cr - p) : lim;
}

int ax_sse_feed(struct ax_sse *r, const char *p, size_t n, ax_sse_event_fn cb, void *ud)
{
    size_t i = 0, e, part;
    int rc = 0;

    while (i < n) {
        if (r->_cr) {
            r->_cr = 0;
            if (p[i] == '\n') { /* the rest of a split "\r\n" */
                i++;
                continue;
            }
        }
        e = i + find_eol(p + i, n - i);
        /* partial line already buffered (none while the data lies in the input) */
        part = r->_ext != NULL ? 0 : r->_buf.len - r->_data_len;
        if (part + (e - i) > r->_max) {
            rc = AX_ETOOBIG;
            goto fail;
        }
        if (e == n) { /* no end of line yet: keep the tail */
            if ((rc = flush_ext(r)) < 0 || (rc = ax_buf_append(&r->_buf, p + i, n - i)) < 0)
                goto fail;
            return 0;
        }
        if (part > 0) {
            if ((rc = ax_buf_append(&r->_buf, p + i, e - i)) < 0)
                goto fail;
            rc = on_line(r, r->_buf.data + r->_data_len, r->_buf.len - r->_data_len, 1, cb, ud);
        } else {
            rc = on_line(r, p + i, e - i, 0, cb, ud);
        }
        if (rc < 0)
            goto fail;
        i = e + 1;
        if (p[e] == '\r') {
            if (i < n) {
                if (p[i] == '\n')
                    i++;
            } else {
                r->_cr = 1;
            }
        }
    }
    if ((rc = flush_ext(r)) < 0) /* data must outlive the caller's bytes */
        goto fail;
    return 0;
fail:
    r->_ext = NULL;
    return rc;
}

int ax_sse_finish(struct ax_sse *r)
{
    int mid = r->_has_data || r->_buf.len > r->_data_len || r->_event_len > 0;

    reset_event(r);
    r->_cr = 0;
    r->_started = 0;
    return mid;
}
