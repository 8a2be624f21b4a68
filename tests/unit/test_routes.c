/* test_routes.c - routes.c's ax_routes_dispatch, reached as every request reaches it: a real
 * server (ax_server_new, listening on a free loopback port, upstream where nothing listens)
 * hands each request http.c parsed to the router. A blocking client sends one request per
 * connection (Connection: close) while the test runs the loop until the answer is whole.
 *
 * Covered: HEAD / and GET /, the "/anthropic" prefix and a trailing slash, 404 naming the
 * path, 405 per route, /health without a key, the inbound keys (x-api-key or Bearer, every
 * configured key, a prefix, an extension and a case change of a key refused with 401),
 * /v1/messages and count_tokens reaching messages.c (a body that is not JSON: its 400),
 * /v1/models, /v1/context and its session parameter, and the request counter. */
#include "anthroxy.h"
#include "anthroxy_server.h"
#include "ax_test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: required: %s (%s)\n", __FILE__, __LINE__, #cond, err.message); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define KEY1 "sk-test-0123456789"
#define KEY2 "second-key"

static uv_loop_t loop;
static struct ax_server *srv;
static char answer[65536];
static size_t answer_len;

/* Sends raw (a whole request, Connection: close) and returns the answer's status, the
 * answer itself in `answer`. -1 when no answer came within 5 s. */
static int send_raw(const char *raw)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), status = -1;
    uint64_t deadline = uv_hrtime() + 5000000000ull;
    size_t off = 0, len = strlen(raw);

    answer_len = 0;
    answer[0] = '\0';
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)ax_server_port(srv));
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("connect");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    while (uv_hrtime() < deadline) {
        ssize_t n;
        if (off < len) {
            n = send(fd, raw + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        n = recv(fd, answer + answer_len, sizeof(answer) - 1 - answer_len, MSG_DONTWAIT);
        if (n > 0) {
            answer_len += (size_t)n;
            answer[answer_len] = '\0';
        } else if (n == 0) {
            break; /* the server closed: the answer is whole */
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            break;
        } else {
            uv_sleep(1);
        }
    }
    close(fd);
    if (sscanf(answer, "HTTP/1.1 %d", &status) != 1)
        status = -1;
    return status;
}

/* A request with the given method, path, extra header lines and body. */
static int req(const char *method, const char *path, const char *headers, const char *body)
{
    char raw[4096];

    snprintf(raw, sizeof(raw),
             "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n%s",
             method, path, headers ? headers : "", body ? strlen(body) : (size_t)0,
             body ? body : "");
    return send_raw(raw);
}

static const char *body_of(void)
{
    const char *p = strstr(answer, "\r\n\r\n");
    return p ? p + 4 : "";
}

#define AUTH "x-api-key: " KEY1 "\r\n"

static void test_root_and_paths(void)
{
    uint64_t before = srv->n_requests;

    CHECK_INT(req("GET", "/", NULL, NULL), 200);
    CHECK_STR(body_of(), "anthroxy\n");
    CHECK_INT(req("GET", "/", "Accept: text/html,application/xhtml+xml\r\n", NULL), 200);
    CHECK(strncmp(body_of(), "<!doctype html>", 15) == 0); /* a browser: the status page */
    CHECK(strstr(answer, "text/html") != NULL);
    CHECK_INT(req("HEAD", "/", NULL, NULL), 200);
    CHECK_STR(body_of(), ""); /* HEAD: no body */
    CHECK(strstr(answer, "Content-Length: 9") != NULL || strstr(answer, "content-length: 9"));
    CHECK_INT(req("POST", "/", AUTH, NULL), 404); /* / answers only GET and HEAD */
    CHECK_INT(req("GET", "/nowhere?x=1", AUTH, NULL), 404);
    CHECK(strstr(body_of(), "\"not_found_error\"") != NULL);
    CHECK(strstr(body_of(), "not found: /nowhere") != NULL);
    CHECK(strstr(body_of(), "x=1") == NULL); /* the query is not the path */
    CHECK_INT(req("GET", "/anthropic/v1/models", AUTH, NULL), 200);
    CHECK_INT(req("GET", "/v1/models/", AUTH, NULL), 200); /* trailing slash */
    CHECK_INT(req("GET", "/anthropic/v1/models/", AUTH, NULL), 200);
    CHECK_INT(req("GET", "/anthropicv1/models", AUTH, NULL), 404); /* the prefix is a segment */
    CHECK_INT(req("GET", "/v1/models?limit=5", AUTH, NULL), 200);  /* query ignored */
    CHECK_INT(srv->n_requests - before, 10);
}

static void test_methods(void)
{
    CHECK_INT(req("GET", "/v1/messages", AUTH, NULL), 405);
    CHECK(strstr(body_of(), "use POST") != NULL);
    CHECK(strstr(body_of(), "\"invalid_request_error\"") != NULL);
    CHECK_INT(req("GET", "/v1/messages/count_tokens", AUTH, NULL), 405);
    CHECK_INT(req("POST", "/v1/models", AUTH, "{}"), 405);
    CHECK(strstr(body_of(), "use GET") != NULL);
    CHECK_INT(req("DELETE", "/v1/context", AUTH, NULL), 405);
    CHECK_INT(req("POST", "/health", NULL, "{}"), 405);
    CHECK_INT(req("HEAD", "/v1/models", AUTH, NULL), 200); /* HEAD goes where GET goes */
}

static void test_keys(void)
{
    /* /, /health and their 405 come before the key check */
    /* the test's upstream is unreachable: degraded, 503 (load balancers read the status) */
    CHECK_INT(req("GET", "/health", NULL, NULL), 503);
    /* without a key: liveness only, no configuration, upstream or heap figures */
    CHECK(strstr(body_of(), "\"status\"") != NULL);
    CHECK(strstr(body_of(), "\"upstream\"") == NULL);
    CHECK_INT(req("GET", "/health", "x-api-key: " KEY1 "\r\n", NULL), 503);
    CHECK(strstr(body_of(), "\"upstream\"") != NULL);
    CHECK_INT(req("GET", "/v1/health", NULL, NULL), 503);

    CHECK_INT(req("GET", "/v1/models", NULL, NULL), 401);
    CHECK(strstr(body_of(), "\"authentication_error\"") != NULL);
    CHECK_INT(req("POST", "/v1/messages", NULL, "{}"), 401);
    CHECK_INT(req("GET", "/nowhere", NULL, NULL), 401);     /* no key, no map of the paths */
    CHECK_INT(req("GET", "/v1/messages", NULL, NULL), 401); /* the key before the method */
    CHECK_INT(req("GET", "/v1/models", "x-api-key: " KEY2 "\r\n", NULL), 200); /* any key */
    CHECK_INT(req("GET", "/v1/models", "Authorization: Bearer " KEY1 "\r\n", NULL), 200);
    CHECK_INT(req("GET", "/v1/models", "Authorization: bearer " KEY2 "\r\n", NULL), 200);
    CHECK_INT(req("GET", "/v1/models", "Authorization: Basic " KEY1 "\r\n", NULL), 401);
    CHECK_INT(req("GET", "/v1/models", "Authorization: " KEY1 "\r\n", NULL), 401);
    /* near misses: constant-time compare must still compare all of it */
    CHECK_INT(req("GET", "/v1/models", "x-api-key: sk-test-012345678\r\n", NULL), 401);
    CHECK_INT(req("GET", "/v1/models", "x-api-key: " KEY1 "0\r\n", NULL), 401);
    CHECK_INT(req("GET", "/v1/models", "x-api-key: SK-TEST-0123456789\r\n", NULL), 401);
    CHECK_INT(req("GET", "/v1/models", "x-api-key: sk-test-0123456788\r\n", NULL), 401);
    CHECK_INT(req("GET", "/v1/models", "x-api-key: \r\n", NULL), 401);
    CHECK_INT(req("GET", "/v1/models", "x-api-key: " KEY1 KEY2 "\r\n", NULL), 401);
    /* x-api-key wins over Authorization when both are sent */
    CHECK_INT(
        req("GET", "/v1/models", "x-api-key: wrong\r\nAuthorization: Bearer " KEY1 "\r\n", NULL),
        401);
}

static void test_handlers(void)
{
    /* messages.c answers: a body that is not JSON is its 400, not the router's 404 */
    CHECK_INT(req("POST", "/v1/messages", AUTH, "not json"), 400);
    CHECK(strstr(body_of(), "invalid JSON") != NULL);
    CHECK_INT(req("POST", "/anthropic/v1/messages/count_tokens", AUTH, "not json"), 400);
    CHECK(strstr(body_of(), "invalid JSON") != NULL);

    CHECK_INT(req("GET", "/v1/models", AUTH, NULL), 200);
    CHECK(strstr(body_of(), "\"claude-sonnet-4-5\"") != NULL);
    CHECK(strstr(body_of(), "\"has_more\":false") != NULL);
    CHECK(strstr(body_of(), "\"first_id\"") != NULL);

    CHECK_INT(req("GET", "/v1/context", AUTH, NULL), 200);
    CHECK(body_of()[0] == '{');
    CHECK_INT(req("GET", "/v1/context?session=no-such-session", AUTH, NULL), 404);
    CHECK(strstr(body_of(), "no such session") != NULL);
    CHECK_INT(req("GET", "/v1/context?session=a%00b", AUTH, NULL), 400); /* a NUL */
}

static void on_stopped(struct ax_server *s, void *ud)
{
    (void)s;
    *(int *)ud = 1;
}

int main(void)
{
    struct ax_config cfg;
    struct ax_error err = {0};
    int stopped = 0;

    signal(SIGPIPE, SIG_IGN);
    REQUIRE(uv_loop_init(&loop) == 0);
    ax_config_init(&cfg);
    REQUIRE(ax_config_set(&cfg, "port", "0", &err) == 0);
    REQUIRE(ax_config_set(&cfg, "log-level", "ERROR", &err) == 0);
    REQUIRE(ax_config_set(&cfg, "upstream", "http://127.0.0.1:9/v1", &err) == 0);
    REQUIRE(ax_config_set(&cfg, "api-key", KEY1 "," KEY2, &err) == 0);
    REQUIRE(ax_config_set(&cfg, "policies", AX_SOURCE_DIR "/policies/default.lua", &err) == 0);
    REQUIRE(ax_config_set(&cfg, "lua-dir", AX_SOURCE_DIR "/lua", &err) == 0);
    REQUIRE(ax_server_new(&loop, &cfg, &srv, &err) == 0);
    REQUIRE(ax_server_listen(srv, &err) == 0);
    REQUIRE(srv->cfg.n_api_keys == 2);

    test_root_and_paths();
    test_methods();
    test_keys();
    test_handlers();

    ax_server_stop(srv, on_stopped, &stopped);
    while (!stopped && uv_run(&loop, UV_RUN_ONCE) != 0)
        ;
    CHECK(stopped);
    ax_server_free(srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
    ax_config_free(&cfg);
    return AX_TEST_DONE("test_routes");
}
