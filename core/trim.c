/* trim.c - malloc_trim after bursts of freed request memory, at most every 100 ms, so that
 * held streams cost their heap in RSS rather than the holes the requests before them left.
 * Called down into by messages.c (a request released its trees); server.c owns the state. */
#include "anthroxy_trim.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#define AX_TRIM_MIN_BYTES (1024 * 1024)
#define AX_TRIM_INTERVAL_MS 100

void ax_trim_init(struct ax_trim *t, uv_loop_t *loop)
{
    t->_loop = loop;
    t->_released = 0;
    t->_last_ms = 0;
    t->_closing = 0;
    t->n_trims = 0;
    uv_timer_init(loop, &t->_timer);
    t->_timer.data = t;
}

static void trim_now(struct ax_trim *t)
{
    t->_released = 0;
    t->_last_ms = uv_now(t->_loop);
    t->n_trims++;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static void trim_on_timer(uv_timer_t *h)
{
    trim_now(h->data);
}

void ax_trim_released(struct ax_trim *t, size_t bytes)
{
    uint64_t since;

    t->_released += bytes;
    if (t->_released < AX_TRIM_MIN_BYTES || t->_closing || uv_is_active((uv_handle_t *)&t->_timer))
        return;
    since = uv_now(t->_loop) - t->_last_ms;
    if (since >= AX_TRIM_INTERVAL_MS)
        trim_now(t); /* at once: a lone big request is trimmed as soon as it is released */
    else
        uv_timer_start(&t->_timer, trim_on_timer, AX_TRIM_INTERVAL_MS - since, 0);
}

static void trim_on_closed(uv_handle_t *h)
{
    struct ax_trim *t = h->data;

    if (t->_on_closed != NULL)
        t->_on_closed(t->_ud);
}

void ax_trim_close(struct ax_trim *t, void (*on_closed)(void *ud), void *ud)
{
    t->_closing = 1;
    t->_on_closed = on_closed;
    t->_ud = ud;
    uv_close((uv_handle_t *)&t->_timer, trim_on_closed);
}
