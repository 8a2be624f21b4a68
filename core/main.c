/* main.c - the anthroxy executable: a thin main over the embedding API (anthroxy.h).
 *
 * Reads the configuration (config.c), runs one server on the default loop until
 * SIGINT/SIGTERM, reloads policies on SIGHUP, and dispatches the policy tools
 * (`anthroxy check`, `anthroxy test-lua`, implemented in policy.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anthroxy.h"
#include "anthroxy_log.h"
#include "anthroxy_policy.h"
#include "anthroxy_replay.h"

struct app {
    struct ax_server *srv;
    uv_signal_t sigint, sigterm, sighup;
    uint64_t grace_ms;
    int stopping;
};

static void app_on_stopped(struct ax_server *srv, void *ud)
{
    struct app *app = ud;

    (void)srv;
    /* the signal handles are all that keeps the loop alive now */
    uv_close((uv_handle_t *)&app->sigint, NULL);
    uv_close((uv_handle_t *)&app->sigterm, NULL);
    uv_close((uv_handle_t *)&app->sighup, NULL);
}

static void app_on_signal(uv_signal_t *sig, int signum)
{
    struct app *app = sig->data;

    if (signum == SIGHUP) {
        AX_LOG_INFO(NULL, "SIGHUP: reloading policies");
        ax_server_reload(app->srv);
        return;
    }
    if (app->stopping) {
        /* a second signal: the operator does not want to wait for the grace period */
        fprintf(stderr, "anthroxy: second %s, exiting now\n",
                signum == SIGINT ? "SIGINT" : "SIGTERM");
        _exit(128 + signum);
    }
    app->stopping = 1;
    AX_LOG_INFO(NULL, "%s: stopping (in-flight requests get %.1f s; signal again to exit now)",
                signum == SIGINT ? "SIGINT" : "SIGTERM", (double)app->grace_ms / 1000.0);
    ax_server_stop(app->srv, app_on_stopped, app);
}

static int signals_start(uv_loop_t *loop, struct app *app)
{
    uv_signal_t *sigs[] = {&app->sigint, &app->sigterm, &app->sighup};
    int nums[] = {SIGINT, SIGTERM, SIGHUP};
    int i, rc;

    for (i = 0; i < 3; i++) {
        if ((rc = uv_signal_init(loop, sigs[i])) < 0)
            return rc;
        sigs[i]->data = app;
        if ((rc = uv_signal_start(sigs[i], app_on_signal, nums[i])) < 0)
            return rc;
    }
    return 0;
}

static int run_server(struct ax_config *cfg)
{
    uv_loop_t *loop = uv_default_loop();
    struct ax_error err = {0};
    struct app app = {0};
    int rc;

    app.grace_ms = cfg->shutdown_grace_ms;
    if ((rc = ax_server_new(loop, cfg, &app.srv, &err)) < 0) {
        fprintf(stderr, "anthroxy: cannot create the server: %s\n",
                err.status != 0 ? err.message : ax_strerror(rc));
        return 1;
    }
    /* handlers before listening: whoever sees the port may signal us at once */
    if ((rc = signals_start(loop, &app)) < 0) {
        fprintf(stderr, "anthroxy: signals: %s\n", uv_strerror(rc));
        return 1;
    }
    if ((rc = ax_server_listen(app.srv, &err)) < 0) {
        fprintf(stderr, "anthroxy: cannot start: %s\n",
                err.status != 0 ? err.message : ax_strerror(rc));
        return 1; /* exiting: the loop and its handles go with the process */
    }
    uv_run(loop, UV_RUN_DEFAULT);
    ax_server_free(app.srv);
    if ((rc = uv_loop_close(loop)) < 0) {
        AX_LOG_WARN(NULL, "loop closed with handles still open: %s", uv_strerror(rc));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct ax_config cfg;
    struct ax_error err = {0};
    int help = 0, rc, i;

    /* libuv writes with write(2): a peer that closed must not kill the process */
    signal(SIGPIPE, SIG_IGN);

    /* subcommands get their own argv, argv[0] being the subcommand's name */
    if (argc > 1 && strcmp(argv[1], "check") == 0)
        return ax_policy_check_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "test-lua") == 0)
        return ax_policy_test_lua_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "replay") == 0)
        return ax_replay_main(argc - 1, argv + 1);

    /* --help and --version answer even when the environment holds a bad value */
    for (i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0 ||
            strcmp(argv[i], "--version") == 0)
            help = argv[i][2] == 'v' ? 2 : 1;
    ax_config_init(&cfg);
    if (help == 0 && ax_config_load(&cfg, argc, argv, &help, &err) < 0) {
        fprintf(stderr, "anthroxy: %s\n", err.message);
        ax_config_free(&cfg);
        return 1;
    }
    if (help != 0) {
        if (help == 2)
            printf("anthroxy %s\n", ANTHROXY_VERSION);
        else
            ax_config_usage(stdout);
        ax_config_free(&cfg);
        return 0;
    }
    ax_log_set_level((enum ax_log_level)cfg.log_level);
    ax_config_log(&cfg);
    /* ax_server_listen logs the address and warns loudly when it is not loopback and no
     * api key is set: embedders get the warning too */
    rc = run_server(&cfg);
    ax_config_free(&cfg);
    return rc;
}
