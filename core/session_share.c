/* session_share.c - the workers' shared session state (anthroxy_session_share.h): a chained
 * hash table of session snapshots under one uv_mutex. messages.c pulls a session's state into
 * its worker's monitor when a request starts and pushes it back when the request ends. */
#include "anthroxy_session_share.h"
#include "anthroxy_hash.h"
#include "anthroxy_monitor.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define SHARE_BUCKETS 4096

struct entry {
    struct ax_session st; /* a snapshot; its private links are never followed */
    uint64_t stamp;       /* push order, for eviction */
    struct entry *next;
};

struct ax_session_share {
    uv_mutex_t lock;
    struct entry *buckets[SHARE_BUCKETS];
    size_t count, max;
    uint64_t clock;
};

struct ax_session_share *ax_session_share_new(size_t max)
{
    struct ax_session_share *sh = calloc(1, sizeof(*sh));

    if (sh == NULL)
        return NULL;
    if (uv_mutex_init(&sh->lock) != 0) {
        free(sh);
        return NULL;
    }
    sh->max = max > 0 ? max : 1;
    return sh;
}

void ax_session_share_free(struct ax_session_share *sh)
{
    size_t i;

    if (sh == NULL)
        return;
    for (i = 0; i < SHARE_BUCKETS; i++) {
        struct entry *e = sh->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            free(e);
        }
    }
    uv_mutex_destroy(&sh->lock);
    free(sh);
}

static struct entry **slot_of(struct ax_session_share *sh, const char *key)
{
    struct entry **p = &sh->buckets[ax_fnv1a(key, strlen(key), AX_FNV1A_INIT) % SHARE_BUCKETS];

    while (*p != NULL && strcmp((*p)->st.key, key) != 0)
        p = &(*p)->next;
    return p;
}

int ax_session_share_pull(struct ax_session_share *sh, struct ax_session *s)
{
    struct ax_session keep = *s;
    struct entry **p;
    int found = 0;

    uv_mutex_lock(&sh->lock);
    if (*(p = slot_of(sh, s->key)) != NULL) {
        *s = (*p)->st;
        found = 1;
    }
    uv_mutex_unlock(&sh->lock);
    if (found) {
        /* what belongs to this worker's monitor stays its own */
        s->refs = keep.refs;
        s->created_ms = keep.created_ms < s->created_ms ? keep.created_ms : s->created_ms;
        s->last_seen_ms = keep.last_seen_ms > s->last_seen_ms ? keep.last_seen_ms : s->last_seen_ms;
        s->_monitor = keep._monitor;
        s->_hnext = keep._hnext;
        s->_lru = keep._lru;
    }
    return found;
}

/* Drops the least recently pushed entry (a scan: only when the table is full). */
static void evict_oldest(struct ax_session_share *sh)
{
    struct entry **oldest = NULL, **p, *e;
    size_t i;

    for (i = 0; i < SHARE_BUCKETS; i++)
        for (p = &sh->buckets[i]; *p != NULL; p = &(*p)->next)
            if (oldest == NULL || (*p)->stamp < (*oldest)->stamp)
                oldest = p;
    if (oldest == NULL)
        return;
    e = *oldest;
    *oldest = e->next;
    free(e);
    sh->count--;
}

void ax_session_share_push(struct ax_session_share *sh, const struct ax_session *s)
{
    struct entry **p, *e;

    uv_mutex_lock(&sh->lock);
    if (*(p = slot_of(sh, s->key)) == NULL) {
        if (sh->count >= sh->max) {
            evict_oldest(sh);
            p = slot_of(sh, s->key);
        }
        if ((e = calloc(1, sizeof(*e))) == NULL)
            goto done; /* the worker's own copy still holds the state */
        *p = e;
        sh->count++;
    }
    e = *p;
    {
        struct entry *next = e->next;
        e->st = *s;
        e->next = next;
    }
    e->stamp = ++sh->clock;
done:
    uv_mutex_unlock(&sh->lock);
}

size_t ax_session_share_count(struct ax_session_share *sh)
{
    size_t n;

    uv_mutex_lock(&sh->lock);
    n = sh->count;
    uv_mutex_unlock(&sh->lock);
    return n;
}
