/* fuzz_sse.c - libFuzzer target: the SSE reader (sse.c) alone. The first byte picks a line
 * cap; the rest is fed twice, whole and then split at every byte-position step that byte
 * gives, and both feeds must dispatch the same events (names and data) with the same end
 * state, since bytes may be split anywhere. Seeds: tests/fixtures/streams/<x>.sse. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_buf.h"
#include "anthroxy_sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What one feed saw: every event as name NUL data, counted. */
struct seen {
    struct ax_buf log;
    uint64_t n;
};

static int on_event(const char *event, const char *d, size_t n, void *ud)
{
    struct seen *s = ud;

    if (event != NULL && strlen(event) > AX_SSE_EVENT_MAX)
        abort(); /* names are cut to the documented length */
    s->n++;
    if (ax_buf_printf(&s->log, "%s%c%zu:", event ? event : "-", 0, n) < 0 ||
        ax_buf_append(&s->log, d, n) < 0)
        return -1;
    return 0;
}

/* Feeds p[0..n) in pieces of step bytes (0: whole); returns the feed result. */
static int run(const char *p, size_t n, size_t max, size_t step, struct seen *s, int *mid)
{
    struct ax_sse r;
    size_t off = 0, k;
    int rc = 0;

    ax_sse_init(&r, max);
    ax_buf_init(&s->log, 1u << 26);
    s->n = 0;
    while (rc == 0 && off < n) {
        k = step == 0 || n - off < step ? n - off : step;
        rc = ax_sse_feed(&r, p + off, k, on_event, s);
        off += k;
    }
    *mid = rc == 0 ? ax_sse_finish(&r) : -1;
    if (rc == 0 && r.events != s->n)
        abort();
    ax_sse_free(&r);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct seen a, b;
    size_t max, step;
    int ra, rb, ma, mb;

    if (size < 1)
        return 0;
    max = (size_t)16 << (data[0] & 15); /* 16 bytes .. 512 KiB */
    step = 1 + (data[0] >> 4);
    ra = run((const char *)data + 1, size - 1, max, 0, &a, &ma);
    rb = run((const char *)data + 1, size - 1, max, step, &b, &mb);
    /* A cap hit may come at a different event when fed whole (data passed without a copy):
     * compare only when both feeds ran to the end. */
    if (ra == 0 && rb == 0 &&
        (ma != mb || a.n != b.n || a.log.len != b.log.len ||
         (a.log.len > 0 && memcmp(a.log.data, b.log.data, a.log.len) != 0)))
        abort(); /* the split changed what was read */
    ax_buf_free(&a.log);
    ax_buf_free(&b.log);
    return 0;
}
