/* bench_stream.c - the SSE reader and the streaming translator on a long in-memory stream.
 *
 * Builds a llama-server-shaped stream (every chunk with its id, created, model,
 * system_fingerprint and object, as the real server sends them): reasoning deltas, text
 * deltas, a tool call in many fragments, two parallel calls, the finish and usage chunks
 * and [DONE]; then runs reader + translator over it N times (argument 1, default 200), fed
 * in 16 KiB reads as curl hands them over, the output drained as a write queue would.
 * Prints chunks per second on one core and ns per chunk; a second argument "cjson" forces
 * the cJSON chunk parser (for comparison), "tools" offers Claude Code's Write, Read and Bash
 * (text tool-call recognition and schema checks on). For instruction counts:
 *   valgrind --tool=callgrind ./bench_stream 3 [cjson] [tools] */
#include "anthroxy_sse.h"
#include "anthroxy_stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define READ_SIZE 16384

static const char *words[] = {"The",          " quick", " brown", " fox", " jumps", " over",
                              " the",         " lazy",  " dog",   ".",    "\n",     " \"quoted\"",
                              " caf\xC3\xA9", " 42",    ",",      " and"};

static void add_chunk(struct ax_buf *b, const char *delta_json, const char *finish)
{
    ax_buf_printf(b,
                  "data: {\"choices\":[{\"finish_reason\":%s,\"index\":0,\"delta\":%s}],"
                  "\"created\":1795499365,\"id\":\"chatcmpl-E3rXqPPRzcnwSRUCge0mLb1Jeit69eWd\","
                  "\"model\":\"tiny\",\"system_fingerprint\":\"b10587-3f545becc\","
                  "\"object\":\"chat.completion.chunk\"}\n\n",
                  finish, delta_json);
}

/* A JSON string literal's inside for w (the words need only " escaped). */
static const char *esc(const char *w, char *tmp, size_t n)
{
    size_t k = 0;

    for (; *w && k + 3 < n; w++) {
        if (*w == '"' || *w == '\\')
            tmp[k++] = '\\';
        if (*w == '\n') {
            tmp[k++] = '\\';
            tmp[k++] = 'n';
            continue;
        }
        tmp[k++] = *w;
    }
    tmp[k] = '\0';
    return tmp;
}

static size_t build_stream(struct ax_buf *b, int scale)
{
    char delta[256], tmp[64];
    size_t chunks = 0;
    int i, c;

    add_chunk(b, "{\"role\":\"assistant\",\"content\":null}", "null");
    chunks++;
    for (i = 0; i < 1000 * scale; i++, chunks++) {
        snprintf(delta, sizeof(delta), "{\"reasoning_content\":\"%s\"}",
                 esc(words[i % 16], tmp, sizeof(tmp)));
        add_chunk(b, delta, "null");
    }
    for (i = 0; i < 2000 * scale; i++, chunks++) {
        snprintf(delta, sizeof(delta), "{\"content\":\"%s\"}",
                 esc(words[(i * 7) % 16], tmp, sizeof(tmp)));
        add_chunk(b, delta, "null");
    }
    for (c = 0; c < 3; c++) {
        snprintf(delta, sizeof(delta),
                 "{\"tool_calls\":[{\"index\":%d,\"id\":\"ptcfmtYQf3SrD9JwygoNi1GeebrGswp%d\","
                 "\"type\":\"function\",\"function\":{\"name\":\"Write\",\"arguments\":\"{\"}}]}",
                 c, c);
        add_chunk(b, delta, "null");
        chunks++;
        for (i = 0; i < (c == 0 ? 1000 : 100) * scale; i++, chunks++) {
            snprintf(delta, sizeof(delta),
                     "{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":\"%s\"}}]}", c,
                     i == 0 ? "\\\"content\\\": \\\"" : "ab\\\\n");
            add_chunk(b, delta, "null");
        }
        snprintf(delta, sizeof(delta),
                 "{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":\"\\\"}\"}}]}", c);
        add_chunk(b, delta, "null");
        chunks++;
    }
    add_chunk(b, "{}", "\"tool_calls\"");
    ax_buf_printf(b, "data: {\"choices\":[],\"created\":1795499368,\"id\":\"chatcmpl-x\","
                     "\"model\":\"tiny\",\"object\":\"chat.completion.chunk\",\"usage\":"
                     "{\"completion_tokens\":4200,\"prompt_tokens\":101,\"total_tokens\":4301,"
                     "\"prompt_tokens_details\":{\"cached_tokens\":100}}}\n\ndata: [DONE]\n\n");
    return chunks + 3;
}

struct ctx {
    struct ax_stream st;
    struct ax_buf out;
    struct ax_error err;
    size_t out_total;
};

static int on_event(const char *event, const char *data, size_t len, void *ud)
{
    struct ctx *c = ud;
    int rc;

    (void)event;
    rc = ax_stream_feed(&c->st, data, len, &c->out, &c->err);
    if (c->out.len > 65536) { /* the write queue drains */
        c->out_total += c->out.len;
        ax_buf_reset(&c->out);
    }
    return rc;
}

static int use_cjson;
static cJSON *tools;

static const char TOOLS_JSON[] =
    "[{\"name\":\"Write\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"file_path\":"
    "{\"type\":\"string\"},\"content\":{\"type\":\"string\"}},\"required\":[\"file_path\","
    "\"content\"],\"additionalProperties\":false}},"
    "{\"name\":\"Read\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"file_path\":"
    "{\"type\":\"string\"},\"offset\":{\"type\":\"integer\"},\"limit\":{\"type\":"
    "\"integer\"}},\"required\":[\"file_path\"]}},"
    "{\"name\":\"Bash\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"command\":"
    "{\"type\":\"string\"},\"timeout\":{\"type\":\"number\"}},\"required\":[\"command\"]}}]";

static int run_once(const char *in, size_t n, size_t *out_bytes)
{
    struct ax_stream_opts o = {.model = "claude-sonnet-4-5",
                               .input_estimate = 100,
                               .parse_with_cjson = use_cjson,
                               .tools = tools};
    struct ax_sse rd;
    struct ctx c;
    size_t pos;
    int rc = 0;

    memset(&c, 0, sizeof(c));
    ax_buf_init(&c.out, 1 << 20);
    ax_sse_init(&rd, 1 << 20);
    if (ax_stream_init(&c.st, &o) < 0)
        return AX_ENOMEM;
    ax_stream_begin(&c.st, &c.out);
    for (pos = 0; pos < n && rc == 0; pos += READ_SIZE)
        rc = ax_sse_feed(&rd, in + pos, n - pos < READ_SIZE ? n - pos : READ_SIZE, on_event, &c);
    if (rc == 0)
        rc = ax_stream_end(&c.st, &c.out, &c.err);
    *out_bytes = c.out_total + c.out.len;
    ax_sse_free(&rd);
    ax_stream_free(&c.st);
    ax_buf_free(&c.out);
    return rc;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 200, i;
    struct ax_buf in;
    struct timespec t0, t1;
    size_t chunks, out_bytes = 0;
    double secs;

    if (iters <= 0)
        iters = 1;
    for (i = 2; i < argc; i++) {
        if (strcmp(argv[i], "cjson") == 0)
            use_cjson = 1;
        else if (strcmp(argv[i], "tools") == 0)
            tools = cJSON_Parse(TOOLS_JSON);
    }
    ax_buf_init(&in, (size_t)1 << 30);
    chunks = build_stream(&in, 1);
    if (run_once(in.data, in.len, &out_bytes) != 0) { /* warm-up, and a sanity check */
        fprintf(stderr, "bench_stream: the stream did not translate\n");
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < iters; i++)
        run_once(in.data, in.len, &out_bytes);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("sizeof(struct ax_stream) %zu, sizeof(struct ax_sse) %zu\n", sizeof(struct ax_stream),
           sizeof(struct ax_sse));
    printf("stream: %zu chunks, %zu bytes in, %zu bytes out; %d runs in %.3f s\n", chunks, in.len,
           out_bytes, iters, secs);
    printf("%s parser%s: %.0f chunks/s on one core, %.0f ns/chunk, %.1f MB/s in\n",
           use_cjson ? "cJSON" : "lean", tools ? ", tools offered" : "",
           (double)chunks * iters / secs, secs * 1e9 / ((double)chunks * iters),
           (double)in.len * iters / secs / 1e6);
    ax_buf_free(&in);
    cJSON_Delete(tools);
    return 0;
}
