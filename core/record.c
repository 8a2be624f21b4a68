/* record.c - `--record DIR`: one JSON Lines file per session, one line per exchange
 * (anthroxy_record.h; docs/recording.md is the format). messages.c feeds an ax_rec as the
 * request goes and finishes it; this file builds the line (bodies as byte deltas against the
 * session's previous exchange), queues it on the session's file and writes with uv_fs_*,
 * one write in flight per file. Caps per file and for the directory; every failure drops
 * recording, never a request. */
#include "anthroxy_record.h"
#include "anthroxy_buf.h"
#include "anthroxy_hash.h"
#include "anthroxy_json.h"
#include "anthroxy_list.h"
#include "anthroxy_log.h"
#include "anthroxy_request.h"
#include "anthroxy_translate.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define REC_MAX_OPEN 64                   /* session files kept open at once */
#define REC_QUEUE_MAX (64u * 1024 * 1024) /* bytes waiting for the disk, all files */
#define REC_PATH_MAX 4096
#define REC_BASES AX_REC_BASES

/* The last bodies of a session, the bases a delta may name: Claude Code interleaves side
 * requests (titles, quota checks) with the conversation, so the previous body alone would
 * often be the wrong base. */
struct rec_ring {
    char *b[REC_BASES];
    size_t n[REC_BASES];
    int next;
};

/* A file of the directory, known from the start-up scan or created since. */
struct rec_entry {
    struct ax_list link; /* r->entries, least recently written first */
    char *name;
    uint64_t bytes;
    struct rec_file *open; /* its writer, or NULL */
};

/* A session's writer: the previous bodies (delta bases), the queue, the descriptor. */
struct rec_file {
    struct ax_list link; /* r->files, least recently used first */
    struct ax_recorder *r;
    struct rec_entry *entry;
    char *key;
    struct rec_ring bodies, ups; /* empty: the next line is a snapshot */
    struct ax_buf queue;         /* lines waiting */
    char *inflight;              /* the lines being written */
    size_t inflight_len;
    uv_fs_t fs;
    uv_file fd;
    int busy;    /* an fs request is in flight */
    int full;    /* hit the per-file cap: later lines are dropped */
    int closing; /* evicted or recorder closing: free once idle */
};

struct ax_recorder {
    uv_loop_t *loop;
    char *dir;
    uint64_t max_file, max_dir, total, queued;
    struct ax_list entries, files;
    int n_open, refs, closing;
    void (*on_closed)(void *ud);
    void *on_closed_ud;
    struct ax_recorder_stats st;
};

struct ax_rec {
    struct ax_recorder *r;
    char *session, *arm, *request_id;
    uint64_t generation;
    int64_t context_window;
    char time[40];
    char *body;
    size_t body_len;
    cJSON *headers, *changes, *timings, *error;
    char *up;
    size_t up_len;
    int retried;
};

static void file_write_next(struct rec_file *f);

static void ring_clear(struct rec_ring *g)
{
    int i;
    for (i = 0; i < REC_BASES; i++) {
        free(g->b[i]);
        g->b[i] = NULL;
        g->n[i] = 0;
    }
    g->next = 0;
}

/* Takes body. */
static void ring_push(struct rec_ring *g, char *body, size_t n)
{
    free(g->b[g->next]);
    g->b[g->next] = body;
    g->n[g->next] = n;
    g->next = (g->next + 1) % REC_BASES;
}

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- the directory ------------------------------------------------------------------- */

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static int by_mtime(const void *a, const void *b)
{
    const struct timespec *x = &((const struct stat *)a)->st_mtim;
    const struct timespec *y = &((const struct stat *)b)->st_mtim;
    if (x->tv_sec != y->tv_sec)
        return x->tv_sec < y->tv_sec ? -1 : 1;
    return (x->tv_nsec > y->tv_nsec) - (x->tv_nsec < y->tv_nsec);
}

static struct rec_entry *entry_add(struct ax_recorder *r, const char *name, uint64_t bytes)
{
    struct rec_entry *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->name = dupn(name, strlen(name))) == NULL) {
        free(e);
        return NULL;
    }
    e->bytes = bytes;
    r->total += bytes;
    ax_list_push_back(&r->entries, &e->link);
    return e;
}

static void entry_free(struct ax_recorder *r, struct rec_entry *e)
{
    r->total -= e->bytes;
    ax_list_unlink(&e->link);
    free(e->name);
    free(e);
}

/* Start-up only: lists the *.jsonl files, oldest first. */
static int scan_dir(struct ax_recorder *r)
{
    uv_fs_t req;
    uv_dirent_t ent;
    struct {
        struct stat st; /* first: by_mtime compares it */
        char name[256];
    } *found = NULL, *grown;
    size_t n = 0, cap = 0, i;
    int rc;

    if ((rc = uv_fs_scandir(NULL, &req, r->dir, 0, NULL)) < 0)
        return rc;
    while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
        char path[REC_PATH_MAX];
        if (ent.type != UV_DIRENT_FILE || !ends_with(ent.name, ".jsonl") ||
            strlen(ent.name) >= sizeof(found->name))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            if ((grown = realloc(found, cap * sizeof(*found))) == NULL)
                break;
            found = grown;
        }
        snprintf(path, sizeof(path), "%s/%s", r->dir, ent.name);
        if (stat(path, &found[n].st) < 0)
            continue;
        snprintf(found[n].name, sizeof(found[n].name), "%s", ent.name);
        n++;
    }
    uv_fs_req_cleanup(&req);
    if (n > 0)
        qsort(found, n, sizeof(*found), by_mtime);
    for (i = 0; i < n; i++)
        entry_add(r, found[i].name, (uint64_t)found[i].st.st_size);
    free(found);
    return 0;
}

static void on_unlinked(uv_fs_t *req)
{
    uv_fs_req_cleanup(req);
    free(req);
}

/* Makes room for `need` more bytes under the directory cap by removing the least recently
 * written files no writer holds. Returns 0, or -1 when the room cannot be made. */
static int make_room(struct ax_recorder *r, uint64_t need)
{
    struct ax_list *it, *next;

    for (it = r->entries.next; it != &r->entries && r->total + r->queued + need > r->max_dir;
         it = next) {
        struct rec_entry *e = AX_LIST_ENTRY(it, struct rec_entry, link);
        char path[REC_PATH_MAX];
        uv_fs_t *req;
        next = it->next;
        if (e->open != NULL)
            continue;
        snprintf(path, sizeof(path), "%s/%s", r->dir, e->name);
        if ((req = malloc(sizeof(*req))) != NULL &&
            uv_fs_unlink(r->loop, req, path, on_unlinked) < 0)
            free(req);
        AX_LOG_INFO(NULL, "record: removed %s (%llu bytes) under the directory cap", e->name,
                    (unsigned long long)e->bytes);
        r->st.removed_files++;
        entry_free(r, e);
    }
    return r->total + r->queued + need > r->max_dir ? -1 : 0;
}

/* ---- session files ------------------------------------------------------------------- */

static void recorder_maybe_free(struct ax_recorder *r);

static void file_free(struct rec_file *f)
{
    struct ax_recorder *r = f->r;

    ax_list_unlink(&f->link);
    r->n_open--;
    if (f->entry && f->entry->open == f)
        f->entry->open = NULL;
    r->queued -= f->queue.len;
    ax_buf_free(&f->queue);
    ring_clear(&f->bodies);
    ring_clear(&f->ups);
    free(f->key);
    free(f);
    recorder_maybe_free(r);
}

static void on_file_closed(uv_fs_t *req)
{
    struct rec_file *f = req->data;
    uv_fs_req_cleanup(req);
    f->busy = 0;
    f->fd = -1;
    file_free(f);
}

/* Once its queue is written: closes the descriptor, then frees the writer. */
static void file_retire(struct rec_file *f)
{
    f->closing = 1;
    if (f->busy)
        return; /* file_write_next comes back here */
    if (f->queue.len > 0) {
        file_write_next(f);
        if (f->busy)
            return;
        f->r->queued -= f->queue.len; /* could not even start: lost */
        ax_buf_reset(&f->queue);
    }
    if (f->fd >= 0) {
        f->busy = 1;
        if (uv_fs_close(f->r->loop, &f->fs, f->fd, on_file_closed) == 0)
            return;
        f->busy = 0;
    }
    file_free(f);
}

static void file_lost(struct rec_file *f, const char *what, int rc)
{
    AX_LOG_WARN(NULL, "record: %s %s: %s (this session's recording loses lines)", what,
                f->entry ? f->entry->name : f->key, uv_strerror(rc));
    f->r->st.dropped++;
    ring_clear(&f->bodies); /* the next line must stand alone */
    ring_clear(&f->ups);
}

static void on_written(uv_fs_t *req)
{
    struct rec_file *f = req->data;
    ssize_t n = req->result;

    uv_fs_req_cleanup(req);
    f->busy = 0;
    f->r->queued -= f->inflight_len;
    if (n < 0 || (size_t)n < f->inflight_len) {
        /* ENOSPC or a short write: what reached the disk is a torn line; readers skip it */
        file_lost(f, "write", n < 0 ? (int)n : UV_ENOSPC);
        if (f->entry && n > 0) {
            f->entry->bytes += (uint64_t)n;
            f->r->total += (uint64_t)n;
        }
    } else if (f->entry) {
        f->entry->bytes += (uint64_t)n;
        f->r->total += (uint64_t)n;
        f->r->st.bytes += (uint64_t)n;
    }
    free(f->inflight);
    f->inflight = NULL;
    f->inflight_len = 0;
    file_write_next(f);
}

static void on_opened(uv_fs_t *req)
{
    struct rec_file *f = req->data;
    ssize_t fd = req->result;

    uv_fs_req_cleanup(req);
    f->busy = 0;
    if (fd < 0) {
        file_lost(f, "open", (int)fd);
        f->r->queued -= f->queue.len;
        ax_buf_reset(&f->queue);
    } else {
        f->fd = (uv_file)fd;
    }
    file_write_next(f);
}

static void file_write_next(struct rec_file *f)
{
    char path[REC_PATH_MAX];
    uv_buf_t b;

    if (f->busy)
        return;
    if (f->queue.len == 0) {
        if (f->closing)
            file_retire(f);
        return;
    }
    f->busy = 1;
    f->fs.data = f;
    if (f->fd < 0) {
        snprintf(path, sizeof(path), "%s/%s", f->r->dir, f->entry->name);
        if (uv_fs_open(f->r->loop, &f->fs, path, O_WRONLY | O_CREAT | O_APPEND, 0600, on_opened) <
            0)
            f->busy = 0;
        return;
    }
    f->inflight = ax_buf_take(&f->queue, &f->inflight_len);
    b = uv_buf_init(f->inflight, (unsigned)f->inflight_len);
    if (uv_fs_write(f->r->loop, &f->fs, f->fd, &b, 1, -1, on_written) < 0) {
        f->busy = 0;
        f->r->queued -= f->inflight_len;
        free(f->inflight);
        f->inflight = NULL;
        f->inflight_len = 0;
    }
}

/* The file name: the session key's safe characters and a hash of the whole key. */
static void file_name(const char *key, char *out, size_t n)
{
    char safe[100];
    size_t i, j = 0;

    for (i = 0; key[i] && j < sizeof(safe) - 1; i++) {
        char c = key[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '.' || c == '_';
        safe[j++] = ok ? c : '_';
    }
    safe[j] = '\0';
    snprintf(out, n, "%s-%08llx.jsonl", safe,
             (unsigned long long)(ax_fnv1a(key, strlen(key), AX_FNV1A_INIT) & 0xffffffffu));
}

static struct rec_file *file_get(struct ax_recorder *r, const char *key)
{
    struct ax_list *it;
    struct rec_file *f;
    char name[160];

    AX_LIST_FOREACH(it, &r->files)
    {
        f = AX_LIST_ENTRY(it, struct rec_file, link);
        if (!f->closing && strcmp(f->key, key) == 0) {
            ax_list_unlink(&f->link); /* most recently used last */
            ax_list_push_back(&r->files, &f->link);
            return f;
        }
    }
    if (r->n_open >= REC_MAX_OPEN) /* the least recently used goes; its session restarts */
        AX_LIST_FOREACH(it, &r->files)
        {
            f = AX_LIST_ENTRY(it, struct rec_file, link);
            if (!f->closing) {
                file_retire(f);
                break;
            }
        }
    if ((f = calloc(1, sizeof(*f))) == NULL || (f->key = dupn(key, strlen(key))) == NULL) {
        free(f);
        return NULL;
    }
    f->r = r;
    f->fd = -1;
    ax_buf_init(&f->queue, REC_QUEUE_MAX);
    file_name(key, name, sizeof(name));
    AX_LIST_FOREACH(it, &r->entries)
    {
        struct rec_entry *e = AX_LIST_ENTRY(it, struct rec_entry, link);
        if (strcmp(e->name, name) == 0) { /* a retiring writer may still hold it */
            f->entry = e;
            break;
        }
    }
    if (f->entry == NULL && (f->entry = entry_add(r, name, 0)) == NULL) {
        free(f->key);
        free(f);
        return NULL;
    }
    f->entry->open = f;
    r->n_open++;
    ax_list_push_back(&r->files, &f->link);
    return f;
}

/* ---- the recorder -------------------------------------------------------------------- */

int ax_recorder_new(uv_loop_t *loop, const char *dir, uint64_t max_file, uint64_t max_dir,
                    struct ax_recorder **out, struct ax_error *err)
{
    struct ax_recorder *r = calloc(1, sizeof(*r));
    uv_fs_t req;
    int rc;

    if (r == NULL || (r->dir = dupn(dir, strlen(dir))) == NULL) {
        free(r);
        return ax_error_set_code(err, AX_ENOMEM, 500, "api_error", "out of memory");
    }
    r->loop = loop;
    r->max_file = max_file;
    r->max_dir = max_dir;
    r->refs = 1;
    ax_list_init(&r->entries);
    ax_list_init(&r->files);
    rc = uv_fs_mkdir(NULL, &req, dir, 0700, NULL);
    uv_fs_req_cleanup(&req);
    if ((rc < 0 && rc != UV_EEXIST) || (rc = scan_dir(r)) < 0) {
        ax_error_set_code(err, AX_EIO, 500, "api_error", "--record %s: %s", dir, uv_strerror(rc));
        free(r->dir);
        free(r);
        return AX_EIO;
    }
    AX_LOG_INFO(NULL, "recording exchanges to %s (%llu bytes there already)", dir,
                (unsigned long long)r->total);
    *out = r;
    return 0;
}

static void recorder_maybe_free(struct ax_recorder *r)
{
    if (!r->closing || r->n_open > 0)
        return;
    if (r->on_closed) {
        void (*cb)(void *) = r->on_closed;
        r->on_closed = NULL;
        cb(r->on_closed_ud);
    }
    if (r->refs > 0)
        return;
    while (!ax_list_empty(&r->entries))
        entry_free(r, AX_LIST_ENTRY(r->entries.next, struct rec_entry, link));
    free(r->dir);
    free(r);
}

static void recorder_unref(struct ax_recorder *r)
{
    if (--r->refs == 0)
        recorder_maybe_free(r);
}

void ax_recorder_close(struct ax_recorder *r, void (*on_closed)(void *ud), void *ud)
{
    struct ax_list *it, *next;

    r->closing = 1;
    r->on_closed = on_closed;
    r->on_closed_ud = ud;
    for (it = r->files.next; it != &r->files; it = next) {
        next = it->next;
        file_retire(AX_LIST_ENTRY(it, struct rec_file, link));
    }
    recorder_unref(r); /* the owner's, held across the loop, which may free the last writer */
}

void ax_recorder_stats(const struct ax_recorder *r, struct ax_recorder_stats *st)
{
    *st = r->st;
}

/* ---- one exchange -------------------------------------------------------------------- */

static void iso_now(char *out, size_t n)
{
    uv_timeval64_t tv;
    struct tm tm;
    time_t t;

    uv_gettimeofday(&tv);
    t = (time_t)tv.tv_sec;
    gmtime_r(&t, &tm);
    snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", (tm.tm_year + 1900) % 10000,
             (tm.tm_mon + 1) % 100, tm.tm_mday % 100, tm.tm_hour % 100, tm.tm_min % 100,
             tm.tm_sec % 100, (int)(tv.tv_usec / 1000) % 1000);
}

static int secret_header(const char *name)
{
    return strcmp(name, "authorization") == 0 || strcmp(name, "x-api-key") == 0 ||
           strcmp(name, "proxy-authorization") == 0 || strcmp(name, "cookie") == 0;
}

static void rec_free(struct ax_rec *x)
{
    struct ax_recorder *r = x->r;

    free(x->session);
    free(x->arm);
    free(x->request_id);
    free(x->body);
    free(x->up);
    cJSON_Delete(x->headers);
    cJSON_Delete(x->changes);
    cJSON_Delete(x->timings);
    cJSON_Delete(x->error);
    free(x);
    recorder_unref(r);
}

struct ax_rec *ax_rec_begin(struct ax_recorder *r, struct ax_req *req, const char *session,
                            const char *arm, uint64_t generation, int64_t context_window)
{
    struct ax_rec *x;
    int i;

    if (r == NULL || r->closing || (x = calloc(1, sizeof(*x))) == NULL)
        return NULL;
    r->refs++;
    x->r = r;
    x->generation = generation;
    x->context_window = context_window;
    iso_now(x->time, sizeof(x->time));
    x->session = dupn(session, strlen(session));
    x->arm = arm ? dupn(arm, strlen(arm)) : NULL;
    x->request_id = dupn(req->id, strlen(req->id));
    x->headers = cJSON_CreateObject();
    for (i = 0; i < req->n_headers && x->headers; i++)
        if (!secret_header(req->headers[i].name))
            cJSON_AddStringToObject(x->headers, req->headers[i].name, req->headers[i].value);
    x->body = ax_buf_take(&req->body, &x->body_len);
    if (x->session == NULL || x->request_id == NULL || x->headers == NULL ||
        (arm && x->arm == NULL)) {
        rec_free(x);
        return NULL;
    }
    if (x->body == NULL && (x->body = dupn("", 0)) == NULL) {
        rec_free(x);
        return NULL;
    }
    return x;
}

void ax_rec_trace(void *ud, const char *policy, enum ax_hook hook, const cJSON *before,
                  const cJSON *after)
{
    static const char *const names[AX_HOOK_COUNT] = {"on_request", "on_upstream_request",
                                                     "on_response", "on_upstream_error"};
    struct ax_rec *x = ud;
    cJSON *d, *e;

    if (x == NULL || (d = ax_rec_diff(before, after)) == NULL)
        return;
    if (x->changes == NULL && (x->changes = cJSON_CreateArray()) == NULL) {
        cJSON_Delete(d);
        return;
    }
    e = cJSON_CreateObject();
    cJSON_AddItemToArray(x->changes, e);
    cJSON_AddStringToObject(e, "policy", policy ? policy : "?");
    cJSON_AddStringToObject(e, "hook", names[hook]);
    cJSON_AddItemToObject(e, "changes", d);
}

void ax_rec_upstream_request(struct ax_rec *x, const char *body, size_t len, int64_t window)
{
    if (x == NULL)
        return;
    if (window > 0) /* the upstream the request went to (several with a fleet) */
        x->context_window = window;
    if (x->up != NULL)
        x->retried = 1;
    free(x->up);
    x->up = dupn(body ? body : "", body ? len : 0);
    x->up_len = x->up ? len : 0;
}

void ax_rec_timings(struct ax_rec *x, const cJSON *timings)
{
    if (x == NULL || !cJSON_IsObject(timings))
        return;
    cJSON_Delete(x->timings);
    x->timings = cJSON_Duplicate(timings, 1);
}

static int contains(const char *p, size_t n, const char *word)
{
    size_t w = strlen(word);
    const char *q;

    while (n >= w && (q = memchr(p, word[0], n - w + 1)) != NULL) {
        if (memcmp(q, word, w) == 0)
            return 1;
        n -= (size_t)(q - p) + 1;
        p = q + 1;
    }
    return 0;
}

void ax_rec_upstream_chunk(struct ax_rec *x, const char *data, size_t len)
{
    cJSON *j;

    /* llama-server puts timings on the last chunk only: parse just the chunks naming it */
    if (x == NULL || len < 10 || !contains(data, len, "\"timings\""))
        return;
    if ((j = cJSON_ParseWithLength(data, len)) != NULL)
        ax_rec_timings(x, cJSON_GetObjectItemCaseSensitive(j, "timings"));
    cJSON_Delete(j);
}

void ax_rec_error(struct ax_rec *x, const struct ax_error *err)
{
    if (x == NULL || err == NULL || x->error != NULL)
        return;
    if ((x->error = cJSON_CreateObject()) == NULL)
        return;
    cJSON_AddNumberToObject(x->error, "status", err->status);
    cJSON_AddStringToObject(x->error, "type", err->type ? err->type : "api_error");
    cJSON_AddStringToObject(x->error, "message", err->message);
}

/* ---- deltas -------------------------------------------------------------------------- */

static void hex64(uint64_t h, char out[17])
{
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* {"snapshot": cur}, or {"base": hash of prev, "head": n, "tail": m, "mid": cur[n..len-m]}
 * where head and tail are the bytes cur shares with prev at its start and end. The cut
 * points never split a UTF-8 sequence, so mid is text on its own. */
static void common_ends(const char *prev, size_t plen, const char *cur, size_t clen, size_t *hp,
                        size_t *tp)
{
    size_t head = 0, tail = 0, lim = plen < clen ? plen : clen;

    while (head < lim && prev[head] == cur[head])
        head++;
    while (head > 0 && head < clen && ((unsigned char)cur[head] & 0xC0) == 0x80)
        head--;
    lim -= head;
    while (tail < lim && prev[plen - 1 - tail] == cur[clen - 1 - tail])
        tail++;
    while (tail > 0 && ((unsigned char)cur[clen - tail] & 0xC0) == 0x80)
        tail--;
    *hp = head;
    *tp = tail;
}

static cJSON *delta_new(const struct rec_ring *g, const char *cur, size_t clen)
{
    size_t head = 0, tail = 0, mid, h, t;
    const char *prev = NULL;
    size_t plen = 0;
    cJSON *d = cJSON_CreateObject();
    char hx[17], *m;
    int i;

    if (d == NULL)
        return NULL;
    for (i = 0; i < REC_BASES; i++) { /* the base sharing the most */
        if (g->b[i] == NULL)
            continue;
        common_ends(g->b[i], g->n[i], cur, clen, &h, &t);
        if (prev == NULL || h + t > head + tail) {
            prev = g->b[i];
            plen = g->n[i];
            head = h;
            tail = t;
        }
    }
    mid = clen - head - tail;
    if (prev == NULL || mid * 2 > clen) { /* the prefix changed: stand alone */
        cJSON_AddItemToObject(d, "snapshot", cJSON_CreateString(cur));
        return d;
    }
    hex64(ax_fnv1a(prev, plen, AX_FNV1A_INIT), hx);
    cJSON_AddStringToObject(d, "base", hx);
    cJSON_AddNumberToObject(d, "head", (double)head);
    cJSON_AddNumberToObject(d, "tail", (double)tail);
    if ((m = dupn(cur + head, mid)) != NULL) {
        cJSON_AddItemToObject(d, "mid", cJSON_CreateString(m));
        free(m);
    }
    return d;
}

char *ax_rec_rebuild(const cJSON *delta, char *const *prevs, const size_t *lens,
                     const uint64_t *hashes, int n, size_t *out_len)
{
    const cJSON *snap = cJSON_GetObjectItemCaseSensitive(delta, "snapshot");
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(delta, "base");
    const cJSON *head = cJSON_GetObjectItemCaseSensitive(delta, "head");
    const cJSON *tail = cJSON_GetObjectItemCaseSensitive(delta, "tail");
    const cJSON *mid = cJSON_GetObjectItemCaseSensitive(delta, "mid");
    size_t h, t, m, prev_len = 0;
    const char *prev = NULL;
    char hx[17], *out;
    int i;

    if (cJSON_IsString(snap)) {
        *out_len = strlen(snap->valuestring);
        return dupn(snap->valuestring, *out_len);
    }
    if (!cJSON_IsString(base) || !cJSON_IsNumber(head) || !cJSON_IsNumber(tail) ||
        !cJSON_IsString(mid) || head->valuedouble < 0 || tail->valuedouble < 0)
        return NULL;
    for (i = 0; i < n && prev == NULL; i++) {
        if (prevs[i] == NULL)
            continue;
        hex64(hashes ? hashes[i] : ax_fnv1a(prevs[i], lens[i], AX_FNV1A_INIT), hx);
        if (strcmp(hx, base->valuestring) == 0) {
            prev = prevs[i];
            prev_len = lens[i];
        }
    }
    h = (size_t)head->valuedouble;
    t = (size_t)tail->valuedouble;
    if (prev == NULL || h + t > prev_len)
        return NULL;
    m = strlen(mid->valuestring);
    if ((out = malloc(h + m + t + 1)) == NULL)
        return NULL;
    memcpy(out, prev, h);
    memcpy(out + h, mid->valuestring, m);
    memcpy(out + h + m, prev + prev_len - t, t);
    out[h + m + t] = '\0';
    *out_len = h + m + t;
    return out;
}

/* ---- what a policy changed ----------------------------------------------------------- */

static uint64_t hash_json(const cJSON *v)
{
    char *s = cJSON_PrintUnformatted(v);
    uint64_t h = s ? ax_fnv1a(s, strlen(s), AX_FNV1A_INIT) : 0;
    cJSON_free(s);
    return h;
}

static void add_index(cJSON *o, const char *key, int i)
{
    cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    if (a == NULL)
        a = cJSON_AddArrayToObject(o, key);
    cJSON_AddItemToArray(a, cJSON_CreateNumber(i));
}

/* The tool results in msg, keyed by tool_use id: Anthropic tool_result blocks, or an OpenAI
 * role "tool" message. Calls fn(id, block) for each. */
static void each_result(const cJSON *msg, void (*fn)(const char *, const cJSON *, void *), void *ud)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "content"), *b;
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "tool_call_id"));

    if (id != NULL) {
        fn(id, msg, ud);
        return;
    }
    cJSON_ArrayForEach(b, c)
    {
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "type"));
        const char *u = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "tool_use_id"));
        if (t && u && strcmp(t, "tool_result") == 0)
            fn(u, b, ud);
    }
}

struct mask_scan {
    const cJSON *other; /* the message after the change */
    const char *id;
    const cJSON *found;
    cJSON *out;
};

static void find_result(const char *id, const cJSON *blk, void *ud)
{
    struct mask_scan *ms = ud;
    if (strcmp(id, ms->id) == 0)
        ms->found = blk;
}

static void check_masked(const char *id, const cJSON *blk, void *ud)
{
    struct mask_scan *ms = ud, inner;

    memset(&inner, 0, sizeof(inner));
    inner.id = id;
    each_result(ms->other, find_result, &inner);
    if (inner.found != NULL && hash_json(inner.found) != hash_json(blk)) {
        cJSON *a = cJSON_GetObjectItemCaseSensitive(ms->out, "masked");
        if (a == NULL)
            a = cJSON_AddArrayToObject(ms->out, "masked");
        cJSON_AddItemToArray(a, cJSON_CreateString(id));
    }
}

/* Messages: common head and tail by hash; in between, the same count pairs up as changed,
 * otherwise each later message is looked for in order among the earlier ones. */
static void diff_messages(const cJSON *a, const cJSON *b, cJSON *out)
{
    int na = cJSON_GetArraySize(a), nb = cJSON_GetArraySize(b), i, j, p = 0, s = 0;
    uint64_t *ha = calloc((size_t)na + 1, sizeof(*ha)), *hb = calloc((size_t)nb + 1, sizeof(*hb));
    const cJSON **ea = calloc((size_t)na + 1, sizeof(*ea)),
                **eb = calloc((size_t)nb + 1, sizeof(*eb)), *it;

    if (ha == NULL || hb == NULL || ea == NULL || eb == NULL)
        goto done;
    i = 0;
    cJSON_ArrayForEach(it, a)
    {
        ea[i++] = it;
    }
    i = 0;
    cJSON_ArrayForEach(it, b)
    {
        eb[i++] = it;
    }
    /* the common head and tail by comparing trees (no printing: most messages are equal),
     * then hashes for the middle only */
    while (p < na && p < nb && cJSON_Compare(ea[p], eb[p], 1))
        p++;
    while (s < na - p && s < nb - p && cJSON_Compare(ea[na - 1 - s], eb[nb - 1 - s], 1))
        s++;
    for (i = p; i < na - s; i++)
        ha[i] = hash_json(ea[i]);
    for (i = p; i < nb - s; i++)
        hb[i] = hash_json(eb[i]);
    if (na - p - s == nb - p - s) {
        for (i = p; i < na - s; i++) {
            struct mask_scan ms = {eb[i], NULL, NULL, out};
            add_index(out, "changed", i);
            each_result(ea[i], check_masked, &ms);
        }
        goto done;
    }
    for (i = p, j = p; j < nb - s; j++) {
        int k = i;
        while (k < na - s && ha[k] != hb[j])
            k++;
        if (k == na - s) {
            add_index(out, "added", j);
            continue;
        }
        for (; i < k; i++)
            add_index(out, "removed", i);
        i = k + 1;
    }
    for (; i < na - s; i++)
        add_index(out, "removed", i);
done:
    free(ha);
    free(hb);
    free(ea);
    free(eb);
}

cJSON *ax_rec_diff(const cJSON *before, const cJSON *after)
{
    cJSON *out = cJSON_CreateObject(), *fields = NULL;
    const cJSON *it;

    if (out == NULL)
        return NULL;
    cJSON_ArrayForEach(it, before)
    {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(after, it->string);
        if (it->string == NULL || strcmp(it->string, "messages") == 0)
            continue;
        if (o == NULL || !cJSON_Compare(o, it, 1)) {
            if (fields == NULL)
                fields = cJSON_AddArrayToObject(out, "fields");
            cJSON_AddItemToArray(fields, cJSON_CreateString(it->string));
        }
    }
    cJSON_ArrayForEach(it, after)
    {
        if (it->string == NULL || cJSON_GetObjectItemCaseSensitive(before, it->string) != NULL)
            continue;
        if (fields == NULL)
            fields = cJSON_AddArrayToObject(out, "fields");
        cJSON_AddItemToArray(fields, cJSON_CreateString(it->string));
    }
    diff_messages(cJSON_GetObjectItemCaseSensitive(before, "messages"),
                  cJSON_GetObjectItemCaseSensitive(after, "messages"), out);
    if (out->child == NULL) {
        cJSON_Delete(out);
        return NULL;
    }
    return out;
}

/* ---- the line ------------------------------------------------------------------------ */

static cJSON *usage_json(const struct ax_usage *u)
{
    cJSON *o;
    if (u == NULL || !u->have || (o = cJSON_CreateObject()) == NULL)
        return cJSON_CreateNull();
    cJSON_AddNumberToObject(o, "prompt_tokens", (double)u->prompt_tokens);
    cJSON_AddNumberToObject(o, "cached_tokens", (double)u->cached_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", (double)u->completion_tokens);
    return o;
}

static void add_ms(cJSON *o, const char *k, double ms)
{
    if (ms < 0)
        cJSON_AddNullToObject(o, k);
    else
        cJSON_AddNumberToObject(o, k, (double)llround(ms * 1000) / 1000);
}

static cJSON *build_line(struct ax_rec *x, struct rec_file *f, const struct ax_rec_end *end)
{
    cJSON *o = cJSON_CreateObject();

    if (o == NULL)
        return NULL;
    cJSON_AddNumberToObject(o, "v", 1);
    cJSON_AddStringToObject(o, "time", x->time);
    cJSON_AddStringToObject(o, "request_id", x->request_id);
    cJSON_AddStringToObject(o, "session", x->session);
    if (x->arm)
        cJSON_AddStringToObject(o, "arm", x->arm);
    else
        cJSON_AddNullToObject(o, "arm");
    cJSON_AddNumberToObject(o, "generation", (double)x->generation);
    cJSON_AddNumberToObject(o, "context_window", (double)x->context_window);
    cJSON_AddItemToObject(o, "headers", x->headers);
    x->headers = NULL;
    cJSON_AddItemToObject(o, "request", delta_new(&f->bodies, x->body, x->body_len));
    if (x->changes) {
        cJSON_AddItemToObject(o, "policy_changes", x->changes);
        x->changes = NULL;
    } else {
        cJSON_AddArrayToObject(o, "policy_changes");
    }
    if (x->up)
        cJSON_AddItemToObject(o, "upstream_request", delta_new(&f->ups, x->up, x->up_len));
    else
        cJSON_AddNullToObject(o, "upstream_request");
    cJSON_AddBoolToObject(o, "retried", x->retried);
    if (end->upstream_status > 0)
        cJSON_AddNumberToObject(o, "upstream_status", end->upstream_status);
    else
        cJSON_AddNullToObject(o, "upstream_status");
    cJSON_AddItemToObject(o, "usage", usage_json(end->usage));
    if (x->timings) {
        cJSON_AddItemToObject(o, "timings", x->timings);
        x->timings = NULL;
    } else {
        cJSON_AddNullToObject(o, "timings");
    }
    add_ms(o, "ttfb_ms", end->ttfb_ms);
    add_ms(o, "total_ms", end->total_ms);
    if (end->answer)
        cJSON_AddItemToObject(o, "response", cJSON_Duplicate(end->answer, 1));
    else
        cJSON_AddNullToObject(o, "response");
    if (x->error == NULL && end->canceled) {
        struct ax_error e = {0};
        ax_error_set(&e, 499, "canceled", "the client went away");
        ax_rec_error(x, &e);
    }
    if (x->error) {
        cJSON_AddItemToObject(o, "error", x->error);
        x->error = NULL;
    } else {
        cJSON_AddNullToObject(o, "error");
    }
    return o;
}

/* The bodies of this line become the bases of the next. */
static void keep_bases(struct rec_file *f, struct ax_rec *x)
{
    ring_push(&f->bodies, x->body, x->body_len);
    x->body = NULL;
    if (x->up) {
        ring_push(&f->ups, x->up, x->up_len);
        x->up = NULL;
    }
}

void ax_rec_finish(struct ax_rec *x, const struct ax_rec_end *end)
{
    struct ax_recorder *r;
    struct rec_file *f;
    struct ax_buf line;
    cJSON *o;

    if (x == NULL)
        return;
    r = x->r;
    if (r->closing || (f = file_get(r, x->session)) == NULL || f->full) {
        r->st.dropped++;
        rec_free(x);
        return;
    }
    ax_buf_init(&line, (size_t)-1 / 2);
    if ((o = build_line(x, f, end)) == NULL || ax_json_print(o, &line) < 0 ||
        ax_buf_append(&line, "\n", 1) < 0) {
        cJSON_Delete(o);
        ax_buf_free(&line);
        r->st.dropped++;
        rec_free(x);
        return;
    }
    cJSON_Delete(o);
    if (f->entry->bytes + f->inflight_len + f->queue.len + line.len > r->max_file) {
        AX_LOG_WARN(NULL,
                    "record: %s reached the per-file cap (%llu bytes): later exchanges "
                    "of session %s are not recorded",
                    f->entry->name, (unsigned long long)r->max_file, f->key);
        f->full = 1;
    } else if (make_room(r, line.len) < 0 || ax_buf_append(&f->queue, line.data, line.len) < 0) {
        file_lost(f, "queue", UV_ENOSPC);
    } else {
        r->queued += line.len;
        r->st.written++;
        keep_bases(f, x);
        file_write_next(f);
    }
    if (f->full)
        r->st.dropped++;
    ax_buf_free(&line);
    rec_free(x);
}
