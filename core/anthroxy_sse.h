/* anthroxy_sse.h - incremental reader of a server-sent-events byte stream.
 *
 * Bytes may be split anywhere (inside a line, inside "\r\n", inside a UTF-8 sequence). Lines
 * end with "\n", "\r\n" or "\r"; a blank line dispatches the event; several `data:` lines are
 * joined with "\n" (the SSE spec); one space after the colon is dropped when present;
 * comments (": keep-alive") and the `id:` / `retry:` fields are ignored; `event:` names the
 * event. Any other line (no known field name) is skipped and counted in `garbage`, never
 * fatal. Payloads such as "[DONE]" are passed on as data: the reader knows no protocol.
 *
 * Memory: one bounded buffer holding the event's joined data and the partial line; data
 * that arrives whole inside one ax_sse_feed call is handed to the callback without copying.
 * The reader does no I/O. */
#ifndef ANTHROXY_SSE_H
#define ANTHROXY_SSE_H

#include <stddef.h>
#include <stdint.h>

#include "anthroxy_buf.h"

#define AX_SSE_EVENT_MAX 64 /* longer `event:` names are cut to this (never fatal) */

/* One dispatched event. `event` is the `event:` name (NUL-terminated) or NULL when the event
 * had none; data[0..len) is the joined data (not NUL-terminated, valid only during the
 * call). Return 0 to go on, or a negative AX_E* code to stop ax_sse_feed, which then returns
 * that code. */
typedef int (*ax_sse_event_fn)(const char *event, const char *data, size_t len, void *ud);

struct ax_sse {
    uint64_t garbage; /* lines with an unknown field name (read-only for callers) */
    uint64_t events;  /* events dispatched */
    /* private */
    struct ax_buf _buf; /* [0.._data_len) joined data, then the partial line */
    size_t _data_len;
    int _has_data; /* a data: line was seen (the data may still be empty) */
    int _cr;       /* the last byte fed was '\r': a '\n' next is part of it */
    int _started;  /* a line was completed (the BOM check is done) */
    size_t _max;
    const char *_ext; /* the data when it still lies in the caller's input */
    size_t _event_len;
    char _event[AX_SSE_EVENT_MAX + 1];
};

/* max_line_bytes bounds one line and also one event's joined data. */
void ax_sse_init(struct ax_sse *r, size_t max_line_bytes);
void ax_sse_free(struct ax_sse *r);

/* Feeds p[0..n), calling cb once per complete event, in order, synchronously. Returns 0;
 * AX_ETOOBIG when a line (or an event's data) exceeds max_line_bytes; AX_ENOMEM; or the
 * callback's negative code. After a non-zero return the reader's position in the stream
 * is lost: stop feeding it (free it, or ax_sse_init again for a new stream). */
int ax_sse_feed(struct ax_sse *r, const char *p, size_t n, ax_sse_event_fn cb, void *ud);

/* At the end of the stream: returns 1 when it ended mid-event (a partial line, or data not
 * yet dispatched by a blank line: that event is discarded, as the spec says), else 0. The
 * reader is left empty and may be fed a new stream. */
int ax_sse_finish(struct ax_sse *r);

#endif
