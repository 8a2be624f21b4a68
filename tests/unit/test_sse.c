/* test_sse.c - the incremental SSE reader: framing, fields, garbage, limits, callback
 * errors, and identical events at every split position of the input. */
#include "anthroxy_sse.h"
#include "anthroxy_error.h"
#include "ax_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Events are recorded as "name|data\x1e" (name "-" when none) into one string. */
struct rec {
    char buf[8192];
    size_t len;
    int n;
    int fail_at; /* return AX_ECANCELED from this event (1-based), 0 never */
};

static int on_event(const char *event, const char *data, size_t len, void *ud)
{
    struct rec *r = ud;
    int k;

    r->n++;
    k = snprintf(r->buf + r->len, sizeof(r->buf) - r->len, "%s|%.*s\x1e", event ? event : "-",
                 (int)len, data);
    if (k > 0 && (size_t)k < sizeof(r->buf) - r->len)
        r->len += (size_t)k;
    return r->fail_at == r->n ? AX_ECANCELED : 0;
}

/* Feeds s whole, returning the reader's result; events in r. */
static int feed_all(const char *s, size_t n, size_t max, struct rec *r, uint64_t *garbage, int *mid)
{
    struct ax_sse rd;
    int rc;

    memset(r, 0, sizeof(*r));
    ax_sse_init(&rd, max);
    rc = ax_sse_feed(&rd, s, n, on_event, r);
    if (garbage)
        *garbage = rd.garbage;
    if (mid)
        *mid = ax_sse_finish(&rd);
    ax_sse_free(&rd);
    return rc;
}

static int feed_cuts(const char *s, size_t n, const size_t *cuts, int ncuts, size_t max,
                     struct rec *r, uint64_t *garbage, int *mid)
{
    struct ax_sse rd;
    size_t pos = 0;
    int i, rc = 0;

    memset(r, 0, sizeof(*r));
    ax_sse_init(&rd, max);
    for (i = 0; i <= ncuts && rc == 0; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        rc = ax_sse_feed(&rd, s + pos, end - pos, on_event, r);
        pos = end;
    }
    if (garbage)
        *garbage = rd.garbage;
    if (mid)
        *mid = ax_sse_finish(&rd);
    ax_sse_free(&rd);
    return rc;
}

#define S(lit) lit, sizeof(lit) - 1

static void test_basic_fields(void)
{
    struct rec r;
    uint64_t g;
    int mid;

    CHECK(feed_all(S("data: {\"a\":1}\n\n"), 1024, &r, &g, &mid) == 0);
    CHECK(strcmp(r.buf, "-|{\"a\":1}\x1e") == 0 && g == 0 && mid == 0);

    /* data without the space; only one space is dropped */
    CHECK(feed_all(S("data:x\n\ndata:  y\n\n"), 1024, &r, NULL, NULL) == 0);
    CHECK(strcmp(r.buf, "-|x\x1e-| y\x1e") == 0);

    /* event names, reset after each dispatch */
    CHECK(feed_all(S("event: message_start\ndata: 1\n\ndata: 2\n\n"), 1024, &r, NULL, NULL) == 0);
    CHECK(strcmp(r.buf, "message_start|1\x1e-|2\x1e") == 0);

    /* several data lines joined with \n */
    CHECK(feed_all(S("data: a\ndata:b\ndata\n\n"), 1024, &r, NULL, NULL) == 0);
    CHECK(strcmp(r.buf, "-|a\nb\n\x1e") == 0);

    /* comments, id and retry are not garbage and dispatch nothing */
    CHECK(feed_all(S(": keep-alive\n\nid: 4\nretry: 10\n\n:\n"), 1024, &r, &g, &mid) == 0);
    CHECK(r.n == 0 && g == 0 && mid == 0);

    /* garbage lines are counted, skipped, and do not break the event around them */
    CHECK(feed_all(S("hello\ndata: 1\n{\"x\":2}\n\n"), 1024, &r, &g, NULL) == 0);
    CHECK(strcmp(r.buf, "-|1\x1e") == 0 && g == 2);

    /* an event with no data line is not dispatched; "data:" alone is an empty event */
    CHECK(feed_all(S("event: x\n\ndata:\n\n"), 1024, &r, NULL, NULL) == 0);
    CHECK(strcmp(r.buf, "-|\x1e") == 0);

    /* [DONE] is just data */
    CHECK(feed_all(S("data: [DONE]\n\n"), 1024, &r, NULL, NULL) == 0);
    CHECK(strcmp(r.buf, "-|[DONE]\x1e") == 0);

    /* a leading BOM is dropped */
    CHECK(feed_all(S("\xEF\xBB\xBF"
                     "data: b\n\n"),
                   1024, &r, &g, NULL) == 0);
    CHECK(strcmp(r.buf, "-|b\x1e") == 0 && g == 0);
}

static void test_line_endings(void)
{
    struct rec r;

    CHECK(feed_all(S("data: a\r\n\r\ndata: b\r\rdata: c\n\n"), 1024, &r, NULL, NULL) == 0);
    CHECK(strcmp(r.buf, "-|a\x1e-|b\x1e-|c\x1e") == 0);
    /* "\r\n" split across two feeds is one line end, not two (no spurious empty line) */
    {
        const char *s = "data: a\r\ndata: b\r\n\r\n";
        size_t cut = 8; /* between \r and \n */
        CHECK(feed_cuts(s, strlen(s), &cut, 1, 1024, &r, NULL, NULL) == 0);
        CHECK(strcmp(r.buf, "-|a\nb\x1e") == 0);
    }
}

static void test_finish(void)
{
    struct rec r;
    int mid;

    CHECK(feed_all(S("data: a\n\ndata: b"), 1024, &r, NULL, &mid) == 0);
    CHECK(r.n == 1 && mid == 1); /* partial line */
    CHECK(feed_all(S("data: a\n\ndata: b\n"), 1024, &r, NULL, &mid) == 0);
    CHECK(r.n == 1 && mid == 1); /* data not dispatched: discarded */
    CHECK(feed_all(S("data: a\n\n: c\n"), 1024, &r, NULL, &mid) == 0);
    CHECK(r.n == 1 && mid == 0);
    /* after finish the reader starts a new stream */
    {
        struct ax_sse rd;
        memset(&r, 0, sizeof(r));
        ax_sse_init(&rd, 64);
        CHECK(ax_sse_feed(&rd, S("data: half"), on_event, &r) == 0);
        CHECK(ax_sse_finish(&rd) == 1);
        CHECK(ax_sse_feed(&rd, S("data: new\n\n"), on_event, &r) == 0);
        CHECK(strcmp(r.buf, "-|new\x1e") == 0);
        ax_sse_free(&rd);
    }
}

static void test_limits(void)
{
    struct rec r;
    char big[200];
    struct ax_sse rd;

    memset(big, 'x', sizeof(big));
    memcpy(big, "data: ", 6);
    /* a complete long line in one feed */
    memcpy(big + 150, "\n\n", 2);
    CHECK(feed_all(big, 152, 100, &r, NULL, NULL) == AX_ETOOBIG);
    CHECK(r.n == 0);
    /* the same line arriving in pieces, never complete */
    memset(&r, 0, sizeof(r));
    ax_sse_init(&rd, 100);
    CHECK(ax_sse_feed(&rd, big, 60, on_event, &r) == 0);
    CHECK(ax_sse_feed(&rd, big + 60, 60, on_event, &r) == AX_ETOOBIG);
    ax_sse_free(&rd);
    /* exactly at the limit is fine */
    CHECK(feed_all(big, 100, 100, &r, NULL, NULL) == 0);
    /* joined data over the limit, each line under it */
    CHECK(feed_all(S("data: 0123456789012345678901234567890123456789\n"
                     "data: 0123456789012345678901234567890123456789\n\n"),
                   60, &r, NULL, NULL) == AX_ETOOBIG);
    CHECK(r.n == 0);
}

static void test_callback_error_stops(void)
{
    struct rec r;
    struct ax_sse rd;

    memset(&r, 0, sizeof(r));
    r.fail_at = 2;
    ax_sse_init(&rd, 1024);
    CHECK(ax_sse_feed(&rd, S("data: 1\n\ndata: 2\n\ndata: 3\n\n"), on_event, &r) == AX_ECANCELED);
    CHECK(r.n == 2); /* event 3 never delivered */
    ax_sse_free(&rd);
}

/* Every one- and two-cut split of a stream mixing everything gives the same events. */
static void test_every_split(void)
{
    static const char s[] = "\xEF\xBB\xBF: hi\r\n\r\n"
                            "event: a\r\ndata: {\"t\":\"caf\xC3\xA9 \xF0\x9F\x98\x80\"}\r\n\r\n"
                            "garbage line\n"
                            "data:x\ndata: y\r"
                            "\r"
                            "id: 1\nretry: 5\n"
                            "data: [DONE]\n\n"
                            "data: tail";
    size_t n = sizeof(s) - 1, i, j, cuts[2];
    struct rec want, got;
    uint64_t g0, g;
    int mid0, mid, bad = 0;

    CHECK(feed_all(s, n, 256, &want, &g0, &mid0) == 0);
    CHECK(strcmp(want.buf,
                 "a|{\"t\":\"caf\xC3\xA9 \xF0\x9F\x98\x80\"}\x1e-|x\ny\x1e-|[DONE]\x1e") == 0);
    CHECK(g0 == 1 && mid0 == 1);
    for (i = 1; i < n && bad < 3; i++) {
        for (j = i; j < n && bad < 3; j++) {
            cuts[0] = i;
            cuts[1] = j;
            if (feed_cuts(s, n, cuts, 2, 256, &got, &g, &mid) != 0 || got.len != want.len ||
                memcmp(got.buf, want.buf, want.len) != 0 || g != g0 || mid != mid0) {
                fprintf(stderr, "%s:%d: split at %zu,%zu differs\n", __FILE__, __LINE__, i, j);
                ax_test_failures++;
                bad++;
            }
        }
    }
    /* byte by byte */
    {
        struct ax_sse rd;
        memset(&got, 0, sizeof(got));
        ax_sse_init(&rd, 256);
        for (i = 0; i < n; i++)
            CHECK(ax_sse_feed(&rd, s + i, 1, on_event, &got) == 0);
        CHECK(got.len == want.len && memcmp(got.buf, want.buf, want.len) == 0);
        CHECK(rd.garbage == g0 && rd.events == 3 && ax_sse_finish(&rd) == 1);
        ax_sse_free(&rd);
    }
}

int main(void)
{
    test_basic_fields();
    test_line_endings();
    test_finish();
    test_limits();
    test_callback_error_stops();
    test_every_split();
    return AX_TEST_DONE("test_sse");
}
