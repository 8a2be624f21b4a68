/* test_translate.c - translate_request.c and translate_response.c on fixture pairs in
 * tests/fixtures/translate/ (compared structurally), the recorded Claude Code requests, the
 * recorded llama-server error bodies, and the JSON-prefix repair. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_buf.h"
#include "anthroxy_ids.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_utf8.h"
#include "anthroxy_translate.h"
#include "ax_test.h"

#define TDIR AX_FIXTURES "/translate"

static cJSON *load_case(const char *name, const char *suffix)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s%s", TDIR, name, suffix);
    return ax_test_load_json(path);
}

static void print_diff(const char *what, const cJSON *got, const cJSON *want)
{
    char *g = cJSON_Print(got), *w = cJSON_Print(want);
    fprintf(stderr, "--- %s: got\n%s\n--- expected\n%s\n", what, g ? g : "(null)",
            w ? w : "(null)");
    cJSON_free(g);
    cJSON_free(w);
}

/* deterministic ids: prefix + "test" + a counter reset per case */
static int id_counter;
static void test_ids(char *out, size_t n, const char *prefix, void *ud)
{
    (void)ud;
    snprintf(out, n, "%stest%02d", prefix, ++id_counter);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Case names in TDIR that have a file ending in suffix, sorted. */
static size_t list_cases(const char *suffix, char ***out)
{
    DIR *d = opendir(TDIR);
    struct dirent *e;
    size_t n = 0, cap = 0, sl = strlen(suffix);
    char **names = NULL;

    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l <= sl || strcmp(e->d_name + l - sl, suffix) != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof(*names));
        }
        names[n] = malloc(l - sl + 1);
        memcpy(names[n], e->d_name, l - sl);
        names[n][l - sl] = '\0';
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_str);
    *out = names;
    return n;
}

static void free_names(char **names, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static void request_opts(const cJSON *o, struct ax_translate_opts *opts)
{
    const cJSON *v;

    memset(opts, 0, sizeof(*opts));
    if (o == NULL)
        return;
    v = cJSON_GetObjectItemCaseSensitive(o, "upstream_model");
    if (cJSON_IsString(v))
        opts->upstream_model = v->valuestring;
    opts->llama_server = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "llama_server"));
    opts->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "stream"));
    opts->forward_user_id = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "forward_user_id"));
}

static void test_request_fixtures(void)
{
    char **names;
    size_t n = list_cases(".anthropic.json", &names), i, errors = 0;

    CHECKF(n >= 40, "only %zu request fixtures", n);
    for (i = 0; i < n; i++) {
        cJSON *in = load_case(names[i], ".anthropic.json");
        cJSON *want = load_case(names[i], ".openai.json");
        cJSON *want_err = load_case(names[i], ".error.json");
        cJSON *o = load_case(names[i], ".opts.json"), *got = NULL;
        struct ax_translate_opts opts;
        struct ax_error err;
        int rc;

        memset(&err, 0, sizeof(err));
        request_opts(o, &opts);
        CHECKF(in != NULL && (want != NULL) != (want_err != NULL), "%s: fixture files", names[i]);
        if (in == NULL)
            goto next;
        rc = ax_translate_request(in, &opts, &got, &err);
        if (want_err != NULL) {
            const cJSON *msg = cJSON_GetObjectItemCaseSensitive(want_err, "message");
            errors++;
            CHECKF(rc == AX_EINVAL && got == NULL, "%s: rc %d", names[i], rc);
            CHECKF(err.status == 400 && err.type && strcmp(err.type, "invalid_request_error") == 0,
                   "%s: status %d type %s", names[i], err.status, err.type ? err.type : "-");
            CHECKF(cJSON_IsString(msg) && strcmp(err.message, msg->valuestring) == 0,
                   "%s: message '%s'", names[i], err.message);
        } else if (want != NULL) {
            CHECKF(rc == 0, "%s: rc %d (%s)", names[i], rc, err.message);
            if (rc == 0 && !cJSON_Compare(got, want, 1)) {
                print_diff(names[i], got, want);
                CHECKF(0, "%s: request differs", names[i]);
            }
        }
    next:
        cJSON_Delete(in);
        cJSON_Delete(want);
        cJSON_Delete(want_err);
        cJSON_Delete(o);
        cJSON_Delete(got);
    }
    CHECKF(errors >= 20, "only %zu error fixtures", errors);
    free_names(names, n);
}

static void test_response_fixtures(void)
{
    char **names;
    size_t n = list_cases(".openai-response.json", &names), i;

    CHECKF(n >= 15, "only %zu response fixtures", n);
    for (i = 0; i < n; i++) {
        cJSON *in = load_case(names[i], ".openai-response.json");
        cJSON *want = load_case(names[i], ".anthropic-response.json");
        cJSON *o = load_case(names[i], ".response-opts.json"), *got = NULL;
        struct ax_response_opts opts = {"claude-x", NULL, 1.0, 0, NULL, NULL, NULL, NULL};
        struct ax_error err;
        const cJSON *v;
        int rc;

        memset(&err, 0, sizeof(err));
        if (o != NULL) {
            if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "client_model")))
                opts.client_model = v->valuestring;
            opts.stop_sequences = cJSON_GetObjectItemCaseSensitive(o, "stop_sequences");
            if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "usage_scale")))
                opts.usage_scale = v->valuedouble;
            opts.reasoning_fallback =
                cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "reasoning_fallback"));
            opts.tools = cJSON_GetObjectItemCaseSensitive(o, "tools"); /* text tool calls */
        }
        CHECKF(in != NULL && want != NULL, "%s: fixture files", names[i]);
        if (in != NULL && want != NULL) {
            id_counter = 0;
            rc = ax_translate_response(in, &opts, &got, &err);
            CHECKF(rc == 0, "%s: rc %d (%s)", names[i], rc, err.message);
            if (rc == 0 && !cJSON_Compare(got, want, 1)) {
                print_diff(names[i], got, want);
                CHECKF(0, "%s: response differs", names[i]);
            }
        }
        cJSON_Delete(in);
        cJSON_Delete(want);
        cJSON_Delete(o);
        cJSON_Delete(got);
    }
    free_names(names, n);
}

static void test_response_errors(void)
{
    struct ax_response_opts opts = {"claude-x", NULL, 1.0, 0, NULL, NULL, NULL, NULL};
    struct ax_error err;
    cJSON *got = NULL, *in;
    int rc;

    in = cJSON_Parse("{\"choices\":[]}");
    memset(&err, 0, sizeof(err));
    rc = ax_translate_response(in, &opts, &got, &err);
    CHECK(rc < 0 && got == NULL && err.status == 502 && strcmp(err.type, "api_error") == 0);
    cJSON_Delete(in);
    in = cJSON_Parse("{\"choices\":[{\"index\":0,\"finish_reason\":\"stop\"}]}");
    rc = ax_translate_response(in, &opts, &got, &err);
    CHECK(rc < 0 && got == NULL && err.status == 502);
    cJSON_Delete(in);
}

/* ---- Claude Code's recorded requests -------------------------------------------------- */

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static int role_is(const cJSON *m, const char *role)
{
    const cJSON *r = get(m, "role");
    return cJSON_IsString(r) && strcmp(r->valuestring, role) == 0;
}

/* Does id name a tool call of assistant message a? */
static int has_call(const cJSON *a, const char *id)
{
    const cJSON *c;
    cJSON_ArrayForEach(c, get(a, "tool_calls"))
    {
        if (strcmp(get(c, "id")->valuestring, id) == 0)
            return 1;
    }
    return 0;
}

/* Roles in an order chat templates accept: one system message, first; tool messages right
 * after the assistant message that called them (every call answered, ids paired); user and
 * assistant alternating. */
static void check_template_order(const char *name, const cJSON *msgs)
{
    const cJSON *m, *assistant = NULL, *prev = NULL;
    int idx = 0, answered = 0;

    cJSON_ArrayForEach(m, msgs)
    {
        const cJSON *content = get(m, "content");
        CHECKF(cJSON_IsString(content) || cJSON_IsArray(content), "%s: message %d content", name,
               idx);
        if (role_is(m, "system")) {
            CHECKF(idx == 0, "%s: system message at %d", name, idx);
        } else if (role_is(m, "tool")) {
            const cJSON *id = get(m, "tool_call_id");
            CHECKF(assistant != NULL && prev != NULL &&
                       (prev == assistant || role_is(prev, "tool")),
                   "%s: tool message %d not right after its assistant message", name, idx);
            CHECKF(cJSON_IsString(id) && assistant && has_call(assistant, id->valuestring),
                   "%s: tool message %d has no matching call", name, idx);
            answered++;
        } else {
            CHECKF(role_is(m, "user") || role_is(m, "assistant"), "%s: role at %d", name, idx);
            if (assistant != NULL) /* the previous assistant's calls are all answered */
                CHECKF(answered == cJSON_GetArraySize(get(assistant, "tool_calls")),
                       "%s: %d answers for the calls before %d", name, answered, idx);
            CHECKF(prev == NULL || role_is(prev, "system") || role_is(prev, "tool") ||
                       !role_is(prev, get(m, "role")->valuestring),
                   "%s: two %s messages in a row at %d", name, get(m, "role")->valuestring, idx);
            assistant = role_is(m, "assistant") ? m : NULL;
            answered = 0;
        }
        prev = m;
        idx++;
    }
}

static void check_claude_code(const char *file)
{
    char path[512];
    struct ax_translate_opts opts = {"local-model", 1, 1, 0, 0, 0};
    struct ax_error err;
    cJSON *in, *out = NULL;
    const cJSON *t, *ft, *m, *so;
    char *printed;
    int rc, n_tools = 0, found_mid = 0;

    snprintf(path, sizeof(path), "%s/claude-code/%s", AX_FIXTURES, file);
    in = ax_test_load_json(path);
    CHECKF(in != NULL, "%s: load", file);
    if (in == NULL)
        return;
    memset(&err, 0, sizeof(err));
    rc = ax_translate_request(in, &opts, &out, &err);
    CHECKF(rc == 0, "%s: rc %d (%s)", file, rc, err.message);
    if (rc != 0) {
        cJSON_Delete(in);
        return;
    }
    CHECK(strcmp(get(out, "model")->valuestring, "local-model") == 0);
    /* every tool, parameters equal to its schema */
    ft = get(out, "tools")->child;
    cJSON_ArrayForEach(t, get(in, "tools"))
    {
        const cJSON *fn = get(ft, "function");
        n_tools++;
        CHECKF(ft != NULL && strcmp(get(ft, "type")->valuestring, "function") == 0, "%s", file);
        if (ft == NULL)
            break;
        CHECKF(strcmp(get(fn, "name")->valuestring, get(t, "name")->valuestring) == 0,
               "%s: tool %d name", file, n_tools);
        CHECKF(cJSON_Compare(get(fn, "parameters"), get(t, "input_schema"), 1),
               "%s: tool %s parameters", file, get(t, "name")->valuestring);
        ft = ft->next;
    }
    CHECKF(n_tools == 24 && ft == NULL, "%s: %d tools", file, n_tools);
    check_template_order(file, get(out, "messages"));
    /* the mid-conversation system text is kept, in a user turn */
    cJSON_ArrayForEach(m, get(in, "messages"))
    {
        if (role_is(m, "system")) {
            const char *text = get(m, "content")->valuestring;
            const cJSON *om;
            cJSON_ArrayForEach(om, get(out, "messages"))
            {
                const cJSON *c = get(om, "content");
                if (role_is(om, "user") && cJSON_IsString(c) && strstr(c->valuestring, text))
                    found_mid = 1;
            }
        }
    }
    CHECKF(found_mid, "%s: mid-conversation system text lost", file);
    so = get(out, "stream_options");
    CHECK(cJSON_IsTrue(get(out, "stream")) && cJSON_IsTrue(get(so, "include_usage")));
    CHECK(cJSON_IsTrue(get(get(out, "chat_template_kwargs"), "enable_thinking")));
    /* Claude Code's device and account ids are not forwarded by default */
    CHECK(get(out, "user") == NULL && get(get(in, "metadata"), "user_id") != NULL);
    CHECK(get(out, "max_tokens")->valuedouble == 64000);
    printed = cJSON_PrintUnformatted(out);
    /* on the wire, Claude Code's 2^53 - 1 bounds keep every digit (cJSON alone prints
     * 9.00719925474099e+15, which compares equal as a double) */
    CHECKF(strstr(printed, "\"maximum\":9007199254740991") != NULL &&
               strstr(printed, "e+15") == NULL,
           "%s: big integers changed on the wire", file);
    CHECKF(strstr(printed, "cache_control") == NULL, "%s: cache_control forwarded", file);
    CHECKF(strstr(printed, "context_management") == NULL &&
               strstr(printed, "output_config") == NULL,
           "%s: unknown fields forwarded", file);
    CHECKF(strstr(printed, "signature") == NULL && strstr(printed, "c3R1Yi1zaWduYXR1cmU=") == NULL,
           "%s: thinking signature forwarded", file);
    CHECKF(strstr(printed, "toolu_") == NULL, "%s: toolu_ prefix sent upstream", file);
    if (strcmp(file, "thinking-replay.json") == 0) {
        const cJSON *a = NULL;
        cJSON_ArrayForEach(m, get(out, "messages"))
        {
            if (role_is(m, "assistant"))
                a = m;
        }
        CHECK(a != NULL && cJSON_IsString(get(a, "reasoning_content")) &&
              strcmp(get(a, "reasoning_content")->valuestring, "I should call Write.") == 0);
        CHECK(a != NULL &&
              strcmp(get(get(a, "tool_calls")->child, "id")->valuestring, "stub4") == 0);
    }
    {
        /* Sharing the schemas with the Anthropic tree prints exactly the same request, and
         * deleting the shared result leaves the Anthropic tree whole. */
        struct ax_translate_opts sopts = opts;
        cJSON *shared = NULL;
        char *sp, *before = cJSON_PrintUnformatted(in), *after;
        sopts.share = 1;
        CHECKF(ax_translate_request(in, &sopts, &shared, &err) == 0, "%s: shared translate", file);
        sp = cJSON_PrintUnformatted(shared);
        CHECKF(sp != NULL && strcmp(sp, printed) == 0, "%s: shared output differs", file);
        cJSON_Delete(shared);
        after = cJSON_PrintUnformatted(in);
        CHECKF(before && after && strcmp(before, after) == 0, "%s: shared delete hurt input", file);
        cJSON_free(sp);
        cJSON_free(before);
        cJSON_free(after);
    }
    cJSON_free(printed);
    cJSON_Delete(out);
    cJSON_Delete(in);
}

/* ---- upstream errors ------------------------------------------------------------------ */

static void upstream_error_case(const char *what, int status, const char *body, int retry,
                                int want_status, const char *want_type, const char *want_msg,
                                int64_t want_n, int64_t want_m)
{
    struct ax_error err;
    int64_t n = -1, m = -1;

    memset(&err, 0, sizeof(err));
    ax_translate_upstream_error(status, body, body ? strlen(body) : 0, retry, &err, &n, &m);
    CHECKF(err.status == want_status, "%s: status %d", what, err.status);
    CHECKF(err.type != NULL && strcmp(err.type, want_type) == 0, "%s: type %s", what,
           err.type ? err.type : "-");
    CHECKF(strstr(err.message, want_msg) != NULL, "%s: message '%s'", what, err.message);
    CHECKF(n == want_n && m == want_m, "%s: n %lld m %lld", what, (long long)n, (long long)m);
    if (want_status == 429)
        CHECKF(err.retry_after == retry, "%s: retry_after %d", what, err.retry_after);
}

static void recorded_error(const char *file, int want_status, const char *want_type,
                           const char *want_msg, int64_t want_n, int64_t want_m)
{
    char path[512];
    cJSON *rec;
    char *body;

    snprintf(path, sizeof(path), "%s/llama-server/%s", AX_FIXTURES, file);
    rec = ax_test_load_json(path);
    CHECKF(rec != NULL, "%s: load", file);
    if (rec == NULL)
        return;
    body = cJSON_PrintUnformatted(get(rec, "body"));
    upstream_error_case(file, (int)get(rec, "status")->valuedouble, body, 0, want_status, want_type,
                        want_msg, want_n, want_m);
    cJSON_free(body);
    cJSON_Delete(rec);
}

/* An upstream error body that echoes the request's headers, or holds ill-formed UTF-8: the
 * client's message has no key and is well-formed UTF-8. */
static void test_upstream_error_hygiene(void)
{
    static const char *const bodies[] = {
        "{\"error\":{\"message\":\"invalid key in header Authorization: Bearer sk-up-SECRET1\"}}",
        "{\"error\":\"rejected\",\"request\":{\"headers\":{\"authorization\":\"Bearer "
        "sk-up-SECRET1\",\"x-api-key\":\"sk-up-SECRET1\"}}}",
        "<html>echo: Authorization: Bearer sk-up-SECRET1</html>",
        "{\"detail\":\"key sk-up-SECRET1 not allowed\"}"};
    struct ax_error err;
    int64_t n, m;
    size_t i;

    CHECK(ax_log_secret_add("sk-up-SECRET1") == 0); /* as ax_upstream_new registers its key */
    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        memset(&err, 0, sizeof(err));
        ax_translate_upstream_error(401, bodies[i], strlen(bodies[i]), 0, &err, &n, &m);
        CHECKF(strstr(err.message, "SECRET1") == NULL && (i == 1 || strstr(err.message, "***")),
               "body %zu: '%s'", i, err.message);
    }
    ax_log_secret_remove("sk-up-SECRET1");

    {
        const char *bad = "{\"error\":{\"message\":\"bad \xff\xfe byte \xed\xa0\x80 here\"}}";
        char big[1200];
        memset(&err, 0, sizeof(err));
        ax_translate_upstream_error(500, bad, strlen(bad), 0, &err, &n, &m);
        CHECKF(strcmp(err.message, "upstream returned HTTP 500: bad \xef\xbf\xbd\xef\xbf\xbd "
                                   "byte \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd here") == 0,
               "'%s'", err.message);
        /* a long message of two-byte characters, cut by the limit between two of them */
        strcpy(big, "{\"error\":\"");
        for (i = strlen(big); i < 1100; i += 2)
            memcpy(big + i, "\xc3\xa9", 2);
        strcpy(big + i, "\"}");
        memset(&err, 0, sizeof(err));
        ax_translate_upstream_error(500, big, strlen(big), 0, &err, &n, &m);
        CHECKF(ax_utf8_valid_prefix(err.message, strlen(err.message)) == strlen(err.message) &&
                   strlen(err.message) > 400,
               "%zu bytes", strlen(err.message));
    }
}

static void test_upstream_errors(void)
{
    static const char *const overflows[] = {"overflow_nonstream.json", "overflow_stream.json",
                                            "overflow_anthropic.json",
                                            "overflow_anthropic_stream.json"};
    size_t i;

    for (i = 0; i < sizeof(overflows) / sizeof(overflows[0]); i++)
        recorded_error(overflows[i], 400, "invalid_request_error",
                       "prompt is too long: 15076 tokens > 2048 maximum", 15076, 2048);
    recorded_error("error_bad_json.json", 400, "invalid_request_error",
                   "[json.exception.parse_error.101]", 0, 0);
    recorded_error("error_no_messages.json", 400, "invalid_request_error", "'messages' is required",
                   0, 0);
    recorded_error("error_tools_with_grammar.json", 400, "invalid_request_error",
                   "Cannot use custom grammar constraints with tools.", 0, 0);
    recorded_error("error_unknown_path.json", 404, "not_found_error", "File Not Found", 0, 0);

    upstream_error_case("vllm old", 400,
                        "{\"object\":\"error\",\"message\":\"This model's maximum context length "
                        "is 4096 tokens. However, you requested 5000 tokens (4500 in the "
                        "messages, 500 in the completion). Please reduce the length of the "
                        "messages or completion.\",\"type\":\"BadRequestError\",\"param\":null,"
                        "\"code\":400}",
                        0, 400, "invalid_request_error",
                        "prompt is too long: 4500 tokens > 4096 maximum", 4500, 4096);
    upstream_error_case("vllm max_tokens too big", 400,
                        "{\"object\":\"error\",\"message\":\"This model's maximum context length "
                        "is 4096 tokens. However, you requested 5000 tokens (3500 in the "
                        "messages, 1500 in the completion).\",\"type\":\"BadRequestError\","
                        "\"code\":400}",
                        0, 400, "invalid_request_error", "upstream returned HTTP 400: This model",
                        0, 0);
    upstream_error_case("vllm new", 400,
                        "{\"error\":{\"message\":\"This model's maximum context length is 32768 "
                        "tokens. However, your request has 40000 input tokens. Please reduce the "
                        "length of the input messages.\",\"type\":\"BadRequestError\",\"param\":"
                        "null,\"code\":400}}",
                        0, 400, "invalid_request_error",
                        "prompt is too long: 40000 tokens > 32768 maximum", 40000, 32768);
    upstream_error_case("llama old", 400,
                        "{\"error\":{\"code\":400,\"message\":\"request (9000 tokens) exceeds the "
                        "available context size (8192 tokens), try increasing it\",\"type\":"
                        "\"invalid_request_error\"}}",
                        0, 400, "invalid_request_error",
                        "prompt is too long: 9000 tokens > 8192 maximum", 9000, 8192);
    upstream_error_case("sglang", 400,
                        "{\"object\":\"error\",\"message\":\"The input (70000 tokens) is longer "
                        "than the model's context length (65536 tokens).\",\"type\":"
                        "\"BadRequestError\",\"code\":400}",
                        0, 400, "invalid_request_error",
                        "prompt is too long: 70000 tokens > 65536 maximum", 70000, 65536);
    upstream_error_case("429", 429, "{\"error\":{\"message\":\"slow down\"}}", 7, 429,
                        "rate_limit_error", "slow down", 0, 0);
    upstream_error_case("loading", 503,
                        "{\"error\":{\"code\":503,\"message\":\"Loading model\",\"type\":"
                        "\"unavailable_error\"}}",
                        0, 503, "api_error", "Loading model", 0, 0);
    upstream_error_case("401", 401, "{\"error\":\"bad key\"}", 0, 401, "authentication_error",
                        "bad key", 0, 0);
    upstream_error_case("403", 403, "{\"detail\":\"forbidden\"}", 0, 403, "permission_error",
                        "forbidden", 0, 0);
    upstream_error_case("422", 422, "{\"detail\":\"field required\"}", 0, 400,
                        "invalid_request_error", "field required", 0, 0);
    upstream_error_case("html 502", 502, "<html>\n<b>Bad Gateway</b></html>", 0, 502, "api_error",
                        "upstream returned HTTP 502: <html> <b>Bad Gateway", 0, 0);
    upstream_error_case("500", 500, "{\"error\":{\"message\":\"CUDA out of memory\"}}", 0, 500,
                        "api_error", "CUDA out of memory", 0, 0);
    upstream_error_case("template 500", 500,
                        "{\"error\":{\"code\":500,\"message\":\"Conversation roles must alternate "
                        "user/assistant/user/assistant/...\",\"type\":\"server_error\"}}",
                        0, 400, "invalid_request_error", "roles must alternate", 0, 0);
    upstream_error_case("no mmproj", 500,
                        "{\"error\":{\"code\":500,\"message\":\"image input is not supported - "
                        "hint: if this is unexpected, you may need to provide the mmproj\","
                        "\"type\":\"server_error\"}}",
                        0, 400, "invalid_request_error", "image input is not supported", 0, 0);
    upstream_error_case("empty body", 500, NULL, 0, 500, "api_error", "upstream returned HTTP 500",
                        0, 0);
    test_upstream_error_hygiene();
}

/* ---- helpers -------------------------------------------------------------------------- */

static void repair_case(const char *in, const char *want)
{
    struct ax_buf b;
    int rc;

    ax_buf_init(&b, 1 << 20);
    rc = ax__json_repair_prefix(in, strlen(in), &b);
    if (want == NULL)
        CHECKF(rc == AX_EINVAL, "repair '%s': rc %d '%s'", in, rc, b.data ? b.data : "");
    else
        CHECKF(rc == 0 && b.data && strcmp(b.data, want) == 0, "repair '%s': rc %d '%s'", in, rc,
               b.data ? b.data : "");
    ax_buf_free(&b);
}

static void test_repair(void)
{
    repair_case("{\n\"a\":2,\"b\"", "{\n\"a\":2}");
    repair_case("{", "{}");
    repair_case("{\"a", "{}");
    repair_case("{\"a\":\"unfinished str", "{}");
    repair_case("{\"a\":\"x\\\"y\",\"b\":tru", "{\"a\":\"x\\\"y\"}");
    repair_case("{\"a\":[1,2,{\"c\":null}", "{\"a\":[1,2,{\"c\":null}]}");
    repair_case("{\"a\":[1,2,3", "{\"a\":[1,2]}");
    repair_case("{\"a\":{}, ", "{\"a\":{}}");
    repair_case("[\"x\",", "[\"x\"]");
    repair_case("{\"a\":1}", "{\"a\":1}");
    repair_case("", NULL);
    repair_case("oops", NULL);
    repair_case("\"str", NULL);
}

static void test_usage_and_reasons(void)
{
    struct ax_usage u;
    cJSON *usage = cJSON_Parse("{\"prompt_tokens\":10,\"completion_tokens\":3,"
                               "\"prompt_tokens_details\":{\"cached_tokens\":99}}");
    cJSON *obj = cJSON_CreateObject();

    ax_usage_from_openai(usage, &u);
    CHECK(u.have == 1 && u.prompt_tokens == 10 && u.completion_tokens == 3 &&
          u.cached_tokens == 10); /* cached never exceeds the prompt */
    CHECK(ax_usage_add_anthropic(obj, &u, 1.0) == 0);
    CHECK(get(obj, "input_tokens")->valuedouble == 0 &&
          get(obj, "cache_read_input_tokens")->valuedouble == 10 &&
          get(obj, "output_tokens")->valuedouble == 3);
    ax_usage_from_openai(NULL, &u);
    CHECK(u.have == 0 && u.prompt_tokens == 0);
    CHECK(strcmp(ax_stop_reason_from_finish("stop", 0), "end_turn") == 0);
    CHECK(strcmp(ax_stop_reason_from_finish("length", 0), "max_tokens") == 0);
    CHECK(strcmp(ax_stop_reason_from_finish("tool_calls", 0), "tool_use") == 0);
    CHECK(strcmp(ax_stop_reason_from_finish("function_call", 0), "tool_use") == 0);
    CHECK(strcmp(ax_stop_reason_from_finish("stop", 1), "stop_sequence") == 0);
    CHECK(strcmp(ax_stop_reason_from_finish(NULL, 0), "end_turn") == 0);
    cJSON_Delete(usage);
    cJSON_Delete(obj);
}

/* The input tree is never modified, and translating twice gives the same tree. */
static void test_input_untouched(void)
{
    char path[512];
    struct ax_translate_opts opts = {NULL, 0, 0, 0, 0, 0};
    struct ax_error err;
    cJSON *in, *copy, *a = NULL, *b = NULL;

    snprintf(path, sizeof(path), "%s/claude-code/after-tool-call.json", AX_FIXTURES);
    in = ax_test_load_json(path);
    copy = cJSON_Duplicate(in, 1);
    CHECK(ax_translate_request(in, &opts, &a, &err) == 0);
    CHECK(ax_translate_request(in, &opts, &b, &err) == 0);
    CHECK(cJSON_Compare(in, copy, 1));
    CHECK(cJSON_Compare(a, b, 1));
    CHECK(strcmp(get(a, "model")->valuestring, "claude-opus-4-8") == 0);
    CHECK(get(a, "stream") == NULL && get(a, "reasoning_format") == NULL);
    cJSON_Delete(in);
    cJSON_Delete(copy);
    cJSON_Delete(a);
    cJSON_Delete(b);
}

/* A server that takes no tools: they go into the system prompt in the Hermes form, past calls
 * and results become text, and nothing of the tools protocol is left in the request. */
static void test_tools_as_text(void)
{
    const char *in =
        "{\"model\":\"m\",\"max_tokens\":10,\"system\":\"Be brief.\","
        "\"tools\":[{\"name\":\"Read\",\"description\":\"Read a file\",\"input_schema\":"
        "{\"type\":\"object\",\"properties\":{\"file_path\":{\"type\":\"string\"}}}}],"
        "\"tool_choice\":{\"type\":\"any\"},"
        "\"messages\":[{\"role\":\"user\",\"content\":\"read a.txt\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"Reading.\"},"
        "{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"Read\",\"input\":{\"file_path\":\"a.txt\"}},"
        "{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"Read\",\"input\":{\"file_path\":\"b.txt\"}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":\"A\"},"
        "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_2\",\"content\":\"B\"}]}]}";
    struct ax_translate_opts opts = {NULL, 1, 0, 0, 0, 1};
    struct ax_error err = {0};
    cJSON *a = cJSON_Parse(in), *o = NULL, *msgs, *m;
    const char *sys, *asst, *res;

    CHECK(a != NULL);
    CHECK_INT(ax_translate_request(a, &opts, &o, &err), 0);
    CHECK(o != NULL);
    if (o == NULL)
        goto done;
    CHECK(cJSON_GetObjectItem(o, "tools") == NULL);
    CHECK(cJSON_GetObjectItem(o, "tool_choice") == NULL);
    CHECK(cJSON_GetObjectItem(o, "parallel_tool_calls") == NULL);
    msgs = cJSON_GetObjectItem(o, "messages");
    CHECK_INT(cJSON_GetArraySize(msgs), 4); /* system, user, assistant, results */
    sys = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 0), "content"));
    CHECK(sys != NULL && strncmp(sys, "Be brief.\n\n# Tools", 18) == 0);
    CHECK(sys != NULL && strstr(sys, "<tools>\n{\"type\":\"function\",\"function\":{\"name\":\"Read\"") != NULL);
    CHECK(sys != NULL && strstr(sys, "You must call at least one function") != NULL);
    m = cJSON_GetArrayItem(msgs, 2);
    CHECK(cJSON_GetObjectItem(m, "tool_calls") == NULL);
    asst = cJSON_GetStringValue(cJSON_GetObjectItem(m, "content"));
    CHECK_STR(asst, "Reading.\n<tool_call>\n{\"name\": \"Read\", \"arguments\": {\"file_path\":\"a.txt\"}}\n"
                    "</tool_call>\n<tool_call>\n{\"name\": \"Read\", \"arguments\": "
                    "{\"file_path\":\"b.txt\"}}\n</tool_call>");
    m = cJSON_GetArrayItem(msgs, 3);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(m, "role")), "user");
    CHECK(cJSON_GetObjectItem(m, "tool_call_id") == NULL);
    res = cJSON_GetStringValue(cJSON_GetObjectItem(m, "content"));
    CHECK_STR(res, "<tool_response>\nA\n</tool_response>\n<tool_response>\nB\n</tool_response>");
done:
    cJSON_Delete(o);
    cJSON_Delete(a);
}

int main(void)
{
    ax_ids_set_source(test_ids, NULL);
    test_request_fixtures();
    test_response_fixtures();
    test_response_errors();
    check_claude_code("first-turn.json");
    check_claude_code("after-tool-call.json");
    check_claude_code("thinking-replay.json");
    test_upstream_errors();
    test_repair();
    test_usage_and_reasons();
    test_input_untouched();
    test_tools_as_text();
    ax_ids_set_source(NULL, NULL);
    return AX_TEST_DONE("test_translate");
}
