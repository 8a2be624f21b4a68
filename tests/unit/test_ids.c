/* test_ids.c - ids.c: the shape of generated ids (prefix + 24 base62), a buffer too small
 * gets an empty string, an injected source replaces the generator and NULL restores it, and
 * the tool-id rule (ax_tool_id_*), the one place the "toolu_" prefix is added and removed. */
#include "anthroxy_ids.h"
#include "ax_test.h"

#include <string.h>

static int is_base62(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= 'a' && s[i] <= 'z')))
            return 0;
    return 1;
}

static void test_make(void)
{
    char a[64], b[64], small[29];
    int i, same = 0;

    ax_id_make(a, sizeof(a), "msg_");
    CHECK_INT(strlen(a), 4 + 24);
    CHECK(strncmp(a, "msg_", 4) == 0);
    CHECK(is_base62(a + 4, 24));
    for (i = 0; i < 100; i++) {
        ax_id_make(b, sizeof(b), "msg_");
        same += strcmp(a, b) == 0;
    }
    CHECK_INT(same, 0);

    ax_id_make(a, 29, "req_"); /* exactly enough: 4 + 24 + NUL */
    CHECK_INT(strlen(a), 28);
    memset(small, 'x', sizeof(small));
    ax_id_make(small, 28, "req_"); /* one short */
    CHECK_INT(small[0], '\0');
}

static int source_calls;

static void fixed_source(char *out, size_t n, const char *prefix, void *ud)
{
    source_calls++;
    snprintf(out, n, "%s%s", prefix, (const char *)ud);
}

static void test_source(void)
{
    char a[64];

    ax_ids_set_source(fixed_source, "000000000000000000000042");
    ax_id_make(a, sizeof(a), "msg_");
    CHECK_STR(a, "msg_000000000000000000000042");
    ax_tool_id_make(a, sizeof(a));
    CHECK_STR(a, "toolu_000000000000000000000042");
    CHECK_INT(source_calls, 2);
    ax_ids_set_source(NULL, NULL);
    ax_id_make(a, sizeof(a), "msg_");
    CHECK_INT(source_calls, 2);
    CHECK(strcmp(a, "msg_000000000000000000000042") != 0);
    CHECK(is_base62(a + 4, 24));
}

static void test_tool_id_rule(void)
{
    char a[64];

    CHECK_INT(AX_TOOL_ID_PREFIX_LEN, strlen(AX_TOOL_ID_PREFIX));
    /* upstream -> client: the prefix is added unless already there */
    CHECK_INT(ax_tool_id_prefix_len("call_abc", 8), AX_TOOL_ID_PREFIX_LEN);
    CHECK_INT(ax_tool_id_prefix_len("toolu_abc", 9), 0);
    CHECK_INT(ax_tool_id_prefix_len("toolu_", 6), 0);
    CHECK_INT(ax_tool_id_prefix_len("toolu", 5), AX_TOOL_ID_PREFIX_LEN);
    CHECK_INT(ax_tool_id_prefix_len("toolu_abc", 5), AX_TOOL_ID_PREFIX_LEN); /* only n counts */
    CHECK_INT(ax_tool_id_prefix_len("TOOLU_abc", 9), AX_TOOL_ID_PREFIX_LEN); /* case matters */
    CHECK_INT(ax_tool_id_prefix_len("", 0), AX_TOOL_ID_PREFIX_LEN);

    /* client -> upstream: one leading prefix is removed */
    CHECK_STR(ax_tool_id_to_upstream("toolu_call_abc"), "call_abc");
    CHECK_STR(ax_tool_id_to_upstream("call_abc"), "call_abc");
    CHECK_STR(ax_tool_id_to_upstream("toolu_toolu_x"), "toolu_x");
    CHECK_STR(ax_tool_id_to_upstream("toolu"), "toolu");
    /* round trip of an upstream id without the prefix */
    snprintf(a, sizeof(a), "%.*s%s", (int)ax_tool_id_prefix_len("call_7", 6), AX_TOOL_ID_PREFIX,
             "call_7");
    CHECK_STR(a, "toolu_call_7");
    CHECK_STR(ax_tool_id_to_upstream(a), "call_7");

    ax_tool_id_make(a, sizeof(a));
    CHECK_INT(strlen(a), AX_TOOL_ID_PREFIX_LEN + 24);
    CHECK(strncmp(a, AX_TOOL_ID_PREFIX, AX_TOOL_ID_PREFIX_LEN) == 0);
    CHECK(is_base62(a + AX_TOOL_ID_PREFIX_LEN, 24));
    ax_tool_id_make(a, 30); /* n >= 31 needed */
    CHECK_INT(a[0], '\0');
}

int main(void)
{
    test_make();
    test_source();
    test_tool_id_rule();
    return AX_TEST_DONE("test_ids");
}
