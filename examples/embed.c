/* embed.c - anthroxy embedded in another program: defaults, one server, the caller's loop.
 * Stops on SIGINT. Built by CMake so the embedding API cannot rot. */
#include <signal.h>
#include <stdio.h>

#include "anthroxy.h"

static void on_sigint(uv_signal_t *sig, int signum)
{
    (void)signum;
    ax_server_stop(sig->data, NULL, NULL);
    uv_close((uv_handle_t *)sig, NULL);
}

int main(void)
{
    uv_loop_t *loop = uv_default_loop();
    struct ax_config cfg;
    struct ax_server *srv = NULL;
    struct ax_error err = {0};
    uv_signal_t sig;

    signal(SIGPIPE, SIG_IGN); /* libuv writes with write(2): a closed peer must not kill us */
    ax_config_init(&cfg);
    /* by name, so /health shows the port as set by the API rather than "default" */
    if (ax_config_set(&cfg, "port", "4001", &err) < 0 ||
        ax_server_new(loop, &cfg, &srv, &err) < 0 || ax_server_listen(srv, &err) < 0) {
        fprintf(stderr, "embed: %s (%s)\n", err.message, ax_strerror(err.code));
        return 1; /* exiting: the loop and its handles go with the process */
    }
    uv_signal_init(loop, &sig);
    sig.data = srv;
    uv_signal_start(&sig, on_sigint, SIGINT);
    uv_run(loop, UV_RUN_DEFAULT);
    ax_server_free(srv);
    ax_config_free(&cfg);
    return uv_loop_close(loop) == 0 ? 0 : 1;
}
