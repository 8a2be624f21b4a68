/* main.c - the anthroxy executable: a thin main over the embedding API (anthroxy.h).
 *
 * Reads the configuration (config.c), runs one server on the default loop until
 * SIGINT/SIGTERM, reloads policies on SIGHUP, and dispatches the policy tools
 * (`anthroxy check`, `anthroxy test-lua`, implemented in policy.c). */
#include <limits.h> /* PATH_MAX */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anthroxy.h"
#include "anthroxy_log.h"
#include "anthroxy_policy.h"
#include "anthroxy_replay.h"

/* --workers: each extra worker is a server on its own loop and thread; the main thread's
 * signals reach it through its async handle. */
enum { WORKER_RELOAD = 1, WORKER_STOP = 2 };

struct worker {
    uv_loop_t loop;
    struct ax_server *srv;
    uv_async_t cmd;
    int pending; /* WORKER_* bits, set by the main thread (atomics) */
    uv_thread_t tid;
    int started;
};

struct app {
    struct ax_server *srv;
    uv_signal_t sigint, sigterm, sighup;
    uint64_t grace_ms;
    int stopping;
    struct worker *workers; /* n_workers - 1 of them: worker 0 is srv, on the main loop */
    int n_workers;
};

static void worker_on_stopped(struct ax_server *srv, void *ud)
{
    struct worker *w = ud;

    (void)srv;
    uv_close((uv_handle_t *)&w->cmd, NULL); /* the last handle: the worker's loop ends */
}

static void worker_on_cmd(uv_async_t *h)
{
    struct worker *w = h->data;
    int bits = __atomic_exchange_n(&w->pending, 0, __ATOMIC_ACQ_REL);

    if (bits & WORKER_RELOAD)
        ax_server_reload(w->srv);
    if (bits & WORKER_STOP)
        ax_server_stop(w->srv, worker_on_stopped, w);
}

static void workers_send(struct app *app, int bit)
{
    int i;

    for (i = 0; i < app->n_workers - 1; i++) {
        if (!app->workers[i].started)
            continue;
        __atomic_fetch_or(&app->workers[i].pending, bit, __ATOMIC_ACQ_REL);
        uv_async_send(&app->workers[i].cmd);
    }
}

static void worker_main(void *arg)
{
    struct worker *w = arg;

    uv_run(&w->loop, UV_RUN_DEFAULT);
}

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
        workers_send(app, WORKER_RELOAD);
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
    workers_send(app, WORKER_STOP);
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

/* Workers 1..N-1 on the port worker 0 bound (SO_REUSEPORT), sharing its session state.
 * Each is created and listens from this thread, then its loop runs on its own thread. */
static int workers_start(struct app *app, const struct ax_config *cfg)
{
    struct ax_config wcfg;
    struct ax_error err = {0};
    int i, rc;

    if ((rc = ax_server_share_sessions(app->srv, app->srv, 0)) < 0)
        return rc;
    if ((app->workers = calloc((size_t)cfg->workers - 1, sizeof(*app->workers))) == NULL)
        return AX_ENOMEM;
    app->n_workers = cfg->workers;
    if ((rc = ax_config_copy(&wcfg, cfg)) < 0)
        return rc;
    wcfg.port = ax_server_port(app->srv); /* port 0: the one worker 0 got */
    for (i = 0; i < cfg->workers - 1; i++) {
        struct worker *w = &app->workers[i];
        if ((rc = uv_loop_init(&w->loop)) < 0 ||
            (rc = ax_server_new(&w->loop, &wcfg, &w->srv, &err)) < 0 ||
            (rc = ax_server_share_sessions(w->srv, app->srv, i + 1)) < 0 ||
            (rc = uv_async_init(&w->loop, &w->cmd, worker_on_cmd)) < 0)
            break;
        w->cmd.data = w;
        if ((rc = ax_server_listen(w->srv, &err)) < 0) {
            fprintf(stderr, "anthroxy: worker %d: %s\n", i + 1, err.message);
            break;
        }
        if ((rc = uv_thread_create(&w->tid, worker_main, w)) < 0)
            break;
        w->started = 1;
    }
    ax_config_free(&wcfg);
    return rc < 0 ? rc : 0;
}

/* After the main loop: the workers stop on their own signal (workers_send), then end. */
static void workers_join(struct app *app)
{
    int i;

    for (i = 0; i < app->n_workers - 1; i++) {
        struct worker *w = &app->workers[i];
        if (!w->started)
            continue;
        uv_thread_join(&w->tid);
        ax_server_free(w->srv);
        if (uv_loop_close(&w->loop) < 0)
            AX_LOG_WARN(NULL, "worker %d: loop closed with handles still open", i + 1);
    }
    free(app->workers);
}

/* An installed anthroxy (cmake --install, the Debian package) finds its Lua beside itself:
 * PREFIX/bin/anthroxy takes PREFIX/share/anthroxy/{lua,policies} unless --lua-dir or
 * --policies say otherwise, so a prefix can be moved or chosen at install time. A build tree
 * has no such directory and keeps the paths fixed at build time (the source tree). Writes
 * PREFIX/share/anthroxy to out and returns 1 when it holds the runtime's Lua. */
static int installed_share(char *out, size_t cap)
{
    char exe[PATH_MAX], probe[PATH_MAX + 64], *slash;
    size_t n = sizeof(exe);
    int i;

    if (uv_exepath(exe, &n) != 0)
        return 0;
    for (i = 0; i < 2; i++) { /* PREFIX/bin/anthroxy -> PREFIX */
        if ((slash = strrchr(exe, '/')) == NULL)
            return 0;
        *slash = '\0';
    }
    if ((size_t)snprintf(out, cap, "%s/share/anthroxy", exe) >= cap)
        return 0;
    snprintf(probe, sizeof(probe), "%s/lua/anthroxy/chain.lua", out);
    return access(probe, R_OK) == 0;
}

static void use_installed_dirs(struct ax_config *cfg)
{
    char share[PATH_MAX + 32], path[PATH_MAX + 64];

    if (!installed_share(share, sizeof(share)))
        return;
    snprintf(path, sizeof(path), "%s/lua", share);
    if (cfg->lua_dir == NULL)
        cfg->lua_dir = strdup(path);
    snprintf(path, sizeof(path), "%s/policies/default.lua", share);
    if (cfg->policies_path == NULL && access(path, R_OK) == 0)
        cfg->policies_path = strdup(path);
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
    if (cfg->workers > 1 && (rc = workers_start(&app, cfg)) < 0) {
        fprintf(stderr, "anthroxy: cannot start the workers: %s\n", ax_strerror(rc));
        return 1;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    workers_join(&app);
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
    if (argc > 1 && strcmp(argv[1], "check") == 0) {
        char share[PATH_MAX + 32], lua[PATH_MAX + 64];
        if (getenv("ANTHROXY_LUA_DIR") == NULL && installed_share(share, sizeof(share))) {
            snprintf(lua, sizeof(lua), "%s/lua", share); /* check reads the environment */
            setenv("ANTHROXY_LUA_DIR", lua, 1);
        }
        return ax_policy_check_main(argc - 1, argv + 1);
    }
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
    use_installed_dirs(&cfg);
    ax_log_set_level((enum ax_log_level)cfg.log_level);
    ax_log_set_format(ax_log_format_parse(cfg.log_format ? cfg.log_format : "text"));
    ax_config_log(&cfg);
    /* ax_server_listen logs the address and warns loudly when it is not loopback and no
     * api key is set: embedders get the warning too */
    rc = run_server(&cfg);
    ax_config_free(&cfg);
    return rc;
}
