/* anthroxy_session_share.h - the session monitors' state shared by the workers of one
 * process (--workers N). Each worker keeps its own monitor (monitor.c, single-threaded as
 * before); a request copies its session's state in from this store when it starts and back
 * out when it ends, under one mutex: two short critical sections per request, none on the
 * streaming path. Concurrent requests of one session on two workers: the last to end wins
 * (a counter may miss one increment; the calibration is an average anyway). */
#ifndef ANTHROXY_SESSION_SHARE_H
#define ANTHROXY_SESSION_SHARE_H

#include <stddef.h>

struct ax_session;
struct ax_session_share;

/* max: entries kept (the least recently pushed beyond it are dropped). NULL: no memory. */
struct ax_session_share *ax_session_share_new(size_t max);
void ax_session_share_free(struct ax_session_share *sh);
/* Copies the stored state of s->key into s (its key, references and monitor links kept);
 * nothing when the store has none. Returns 1 when copied. Any thread. */
int ax_session_share_pull(struct ax_session_share *sh, struct ax_session *s);
/* Stores s's state under its key. Any thread. */
void ax_session_share_push(struct ax_session_share *sh, const struct ax_session *s);
size_t ax_session_share_count(struct ax_session_share *sh);

#endif
