/* fuzz_stream.c - libFuzzer target: upstream bytes through the SSE reader and the streaming
 * translator, then a normal end or a failure. Nothing may crash, leak or read out of bounds,
 * and every output must be whole events. Every other input offers tools, so text deltas go
 * through the text tool-call recogniser and arguments through the schema check. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_sse.h"
#include "anthroxy_stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct ctx {
    struct ax_stream st;
    struct ax_buf out;
    struct ax_error err;
};

static int on_event(const char *event, const char *d, size_t n, void *ud)
{
    struct ctx *c = ud;

    (void)event;
    return ax_stream_feed(&c->st, d, n, &c->out, &c->err);
}

static const char TOOLS[] =
    "[{\"name\":\"Read\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"file_path\":"
    "{\"type\":\"string\"},\"limit\":{\"type\":\"integer\"}},\"required\":[\"file_path\"]}},"
    "{\"name\":\"Write\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"content\":"
    "{\"type\":\"string\"}}}}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *tools = (size & 2) ? cJSON_Parse(TOOLS) : NULL;
    struct ax_stream_opts so;
    struct ax_sse r;
    struct ctx c;
    int rc;

    memset(&so, 0, sizeof(so));
    memset(&c, 0, sizeof(c));
    so.model = "claude";
    so.message_id = "msg_fuzz";
    so.reasoning_fallback = (int)(size & 1);
    so.tools = tools;
    if (ax_stream_init(&c.st, &so) < 0) {
        cJSON_Delete(tools);
        return 0;
    }
    ax_buf_init(&c.out, 1u << 24);
    ax_sse_init(&r, 1u << 20);
    /* two feeds, split in the middle, as the network would */
    rc = ax_sse_feed(&r, (const char *)data, size / 2, on_event, &c);
    if (rc == 0)
        rc = ax_sse_feed(&r, (const char *)data + size / 2, size - size / 2, on_event, &c);
    ax_sse_finish(&r);
    if (rc == 0 && ax_stream_end(&c.st, &c.out, &c.err) == 0) {
        cJSON *s = ax_stream_summary(&c.st);
        cJSON_Delete(s);
    } else {
        ax_stream_fail(&c.st, &c.err, &c.out);
    }
    if (c.out.len > 0 && (c.out.len < 2 || memcmp(c.out.data + c.out.len - 2, "\n\n", 2) != 0))
        abort(); /* output must end on an event boundary */
    ax_sse_free(&r);
    ax_stream_free(&c.st);
    ax_buf_free(&c.out);
    cJSON_Delete(tools);
    return 0;
}
