/* test_buf.c - buf.c, the bounded buffer: the cap holds for every way of appending (and a
 * refused append leaves the contents as they were), printf formats in place across growth,
 * the capacity never passes max + 1, and consume, reset, take and free do what they say. */
#include "anthroxy_buf.h"
#include "anthroxy_error.h"
#include "ax_test.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static void test_cap(void)
{
    struct ax_buf b;

    ax_buf_init(&b, 8);
    CHECK(b.data == NULL);
    CHECK_INT(b.len, 0);
    CHECK_INT(ax_buf_append(&b, "abcd", 4), 0);
    CHECK_INT(ax_buf_puts(&b, "efgh"), 0); /* exactly max */
    CHECK_INT(b.len, 8);
    CHECK_STR(b.data, "abcdefgh");
    CHECK_INT(ax_buf_append(&b, "i", 1), AX_ETOOBIG); /* one past */
    CHECK_INT(ax_buf_puts(&b, "i"), AX_ETOOBIG);
    CHECK_INT(ax_buf_printf(&b, "%d", 1), AX_ETOOBIG);
    CHECK_INT(b.len, 8); /* refused appends change nothing */
    CHECK_STR(b.data, "abcdefgh");
    CHECK(b.cap <= b.max + 1);
    CHECK_INT(ax_buf_reserve(&b, SIZE_MAX), AX_ETOOBIG); /* len + n would overflow */
    CHECK_INT(ax_buf_reserve(&b, 0), 0);
    ax_buf_free(&b);
    CHECK(b.data == NULL);
    CHECK_INT(b.max, 8); /* free keeps max */
    CHECK_INT(ax_buf_append(&b, "123456789", 9), AX_ETOOBIG);
    CHECK(b.data == NULL);
    ax_buf_free(&b);
}

static void test_printf_and_growth(void)
{
    struct ax_buf b;
    char want[1200];
    size_t i, last_cap = 0;
    int grew = 0;

    ax_buf_init(&b, 100000);
    want[0] = '\0';
    for (i = 0; i < 100; i++) {
        char piece[16];
        snprintf(piece, sizeof(piece), "[%zu:%s]", i, i % 2 ? "odd" : "ev");
        strcat(want, piece);
        CHECK_INT(ax_buf_printf(&b, "[%zu:%s]", i, i % 2 ? "odd" : "ev"), 0);
        CHECK_INT(b.len, strlen(want));
        CHECK(b.cap > b.len); /* room for the NUL */
        if (b.cap != last_cap && last_cap != 0)
            grew++;
        last_cap = b.cap;
    }
    CHECK_STR(b.data, want);
    CHECK(strlen(want) > 512);
    CHECK(grew >= 2); /* went past the first 256 bytes and kept growing */
    ax_buf_free(&b);

    /* growth stops at max + 1, not at the next power of two */
    ax_buf_init(&b, 300);
    CHECK_INT(ax_buf_reserve(&b, 290), 0);
    CHECK_INT(b.cap, 301);
    CHECK_INT(b.len, 0); /* reserve does not change len */
    ax_buf_free(&b);
}

static void test_consume_reset_take(void)
{
    struct ax_buf b;
    size_t cap, n = 99;
    char *p;

    ax_buf_init(&b, 64);
    CHECK_INT(ax_buf_puts(&b, "hello world"), 0);
    ax_buf_consume(&b, 6);
    CHECK_STR(b.data, "world");
    CHECK_INT(b.len, 5);
    ax_buf_consume(&b, 100); /* more than there is: empty */
    CHECK_INT(b.len, 0);
    CHECK_STR(b.data, "");

    CHECK_INT(ax_buf_puts(&b, "again"), 0);
    cap = b.cap;
    p = b.data;
    ax_buf_reset(&b);
    CHECK_INT(b.len, 0);
    CHECK(b.data == p); /* memory kept */
    CHECK_INT(b.cap, cap);
    CHECK_STR(b.data, "");

    CHECK_INT(ax_buf_puts(&b, "taken"), 0);
    p = ax_buf_take(&b, &n);
    CHECK_STR(p, "taken");
    CHECK_INT(n, 5);
    CHECK(b.data == NULL);
    CHECK_INT(b.len, 0);
    CHECK_INT(b.cap, 0);
    free(p);
    CHECK_INT(ax_buf_puts(&b, "fresh"), 0); /* usable after take */
    CHECK_STR(b.data, "fresh");
    ax_buf_free(&b);
}

int main(void)
{
    test_cap();
    test_printf_and_growth();
    test_consume_reset_take();
    return AX_TEST_DONE("test_buf");
}
