/* test_anthroxy.c - the embedding API (include/anthroxy.h) as an embedder uses it, nothing
 * else included: errors come back with their real code and a message (a second server on a
 * busy port gets AX_EADDRINUSE), an invalid configuration is refused by ax_server_new, and
 * two servers share one loop and stop cleanly. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy.h"
#include "ax_test.h"

/* a failed precondition makes the rest meaningless */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: required: %s (%s)\n", __FILE__, __LINE__, #cond, err.message); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static int stopped;

static void on_stopped(struct ax_server *srv, void *ud)
{
    (void)srv;
    (void)ud;
    stopped++;
}

static void new_config(struct ax_config *cfg, const char *port)
{
    struct ax_error err = {0};

    ax_config_init(cfg);
    CHECKF(ax_config_set(cfg, "port", port, &err) == 0, "%s", err.message);
    CHECKF(ax_config_set(cfg, "log-level", "ERROR", &err) == 0, "%s", err.message);
    /* nothing listens there: the probes fail at once, no real upstream needed */
    CHECKF(ax_config_set(cfg, "upstream", "http://127.0.0.1:9/v1", &err) == 0, "%s", err.message);
}

static void test_busy_port(void)
{
    uv_loop_t loop;
    struct ax_config c1, c2;
    struct ax_server *s1 = NULL, *s2 = NULL;
    struct ax_error err = {0};
    char port[16];
    int rc;

    REQUIRE(uv_loop_init(&loop) == 0);
    new_config(&c1, "0");
    REQUIRE(ax_server_new(&loop, &c1, &s1, &err) == 0);
    REQUIRE(ax_server_listen(s1, &err) == 0);
    snprintf(port, sizeof(port), "%d", ax_server_port(s1));

    new_config(&c2, port);
    REQUIRE(ax_server_new(&loop, &c2, &s2, &err) == 0);
    memset(&err, 0, sizeof(err));
    rc = ax_server_listen(s2, &err);
    CHECKF(rc == AX_EADDRINUSE, "listen on a busy port: %d (%s)", rc, ax_strerror(rc));
    CHECK(err.code == AX_EADDRINUSE);
    CHECKF(strstr(err.message, port) != NULL && strstr(err.message, "in use") != NULL, "%s",
           err.message);
    CHECK(strcmp(ax_strerror(AX_EADDRINUSE), "address already in use") == 0);

    ax_server_stop(s1, on_stopped, NULL);
    ax_server_stop(s2, on_stopped, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(stopped == 2);
    ax_server_free(s1);
    ax_server_free(s2);
    ax_config_free(&c1);
    ax_config_free(&c2);
    CHECK(uv_loop_close(&loop) == 0);
}

static void test_invalid_config(void)
{
    uv_loop_t loop;
    struct ax_config cfg;
    struct ax_server *srv = NULL;
    struct ax_error err = {0};

    REQUIRE(uv_loop_init(&loop) == 0);
    new_config(&cfg, "0");
    free(cfg.host); /* what an embedder writing the struct directly might do */
    cfg.host = NULL;
    CHECK(ax_server_new(&loop, &cfg, &srv, &err) == AX_EINVAL);
    CHECK(srv == NULL);
    CHECK(err.code == AX_EINVAL && err.status == 400);
    CHECKF(strstr(err.message, "host") != NULL, "%s", err.message);
    ax_config_free(&cfg);
    CHECK(uv_loop_close(&loop) == 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_busy_port();
    test_invalid_config();
    return AX_TEST_DONE("test_anthroxy");
}
