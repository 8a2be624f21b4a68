/* anthroxy_trim.h - hands memory freed in bursts back to the system (glibc's malloc_trim),
 * so that RSS follows the memory in use: ~200 concurrent 80 KB requests leave their freed
 * trees as holes between live chunks, which glibc keeps until trimmed.
 *
 * A leaf owned by the server (struct ax_server's trim): whoever frees large transient memory
 * says how much with ax_trim_released; past 1 MiB freed, a trim runs at once, or at most
 * every 100 ms while a burst goes on (a trim costs ~1 ms at a large heap). */
#ifndef ANTHROXY_TRIM_H
#define ANTHROXY_TRIM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct ax_trim {
    uv_timer_t _timer;
    uv_loop_t *_loop;
    size_t _released; /* freed since the last trim */
    uint64_t _last_ms;
    int _closing;
    void (*_on_closed)(void *ud);
    void *_ud;
    uint64_t n_trims; /* trims run, for tests and /health */
};

void ax_trim_init(struct ax_trim *t, uv_loop_t *loop);
/* bytes of large transient memory were just freed. */
void ax_trim_released(struct ax_trim *t, size_t bytes);
/* Closes the timer; on_closed(ud) runs from the loop once it is closed. No other call after. */
void ax_trim_close(struct ax_trim *t, void (*on_closed)(void *ud), void *ud);

#endif
