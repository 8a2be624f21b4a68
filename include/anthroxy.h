/* anthroxy.h - the embedding API (umbrella header).
 *
 * A C program embeds the proxy in a few lines:
 *
 *     struct ax_config cfg;
 *     struct ax_server *srv = NULL;
 *     struct ax_error err = {0};
 *     ax_config_init(&cfg);                     // defaults; then env, file, flags if wanted
 *     ax_config_set(&cfg, "port", "4001", &err); // recorded as set by the API
 *     signal(SIGPIPE, SIG_IGN);                 // libuv writes with write(2)
 *     if (ax_server_new(loop, &cfg, &srv, &err) == 0 && ax_server_listen(srv, &err) == 0)
 *         uv_run(loop, UV_RUN_DEFAULT);         // until ax_server_stop() completes
 *     else
 *         fprintf(stderr, "%s\n", err.message); // err.code: AX_EADDRINUSE, ...
 *     ax_server_free(srv);
 *     ax_config_free(&cfg);
 *
 * Everything runs on the caller's loop thread; the server keeps no global state, so two
 * servers may share a process or a loop. */
#ifndef ANTHROXY_H
#define ANTHROXY_H

#include <uv.h>

#include "anthroxy_config.h"
#include "anthroxy_error.h"

#define ANTHROXY_VERSION "0.1.0"

struct ax_server;

/* Creates a server on loop with a private copy of cfg (validated first). Returns 0, or an AX_E*
 * code with err (may be NULL) saying why: AX_EINVAL for an invalid configuration, AX_ENOMEM. */
int ax_server_new(uv_loop_t *loop, const struct ax_config *cfg, struct ax_server **out,
                  struct ax_error *err);

/* Binds and listens on cfg->host:cfg->port, starts the upstream probes and the policy
 * engine. Fills err on failure and returns its code: AX_EADDRINUSE, AX_EADDRNOTAVAIL or
 * AX_EACCES from the bind, AX_EINVAL for a bad address or a policy chain that does not
 * compile. */
int ax_server_listen(struct ax_server *srv, struct ax_error *err);

/* The port actually bound (useful with port 0). */
int ax_server_port(const struct ax_server *srv);

/* Graceful stop: stop accepting, let in-flight requests finish within
 * cfg->shutdown_grace_ms, then cancel the rest and close every handle. on_stopped runs
 * from the loop once nothing of the server is left on it; uv_run then returns. */
void ax_server_stop(struct ax_server *srv, void (*on_stopped)(struct ax_server *, void *),
                    void *ud);

/* Reloads the policy chain (as SIGHUP does). */
void ax_server_reload(struct ax_server *srv);

/* Frees a server that is stopped (or never listened). */
void ax_server_free(struct ax_server *srv);

uv_loop_t *ax_server_loop(const struct ax_server *srv);

/* Workers (--workers N): srv, on its own loop and thread, shares first's session state (the
 * monitors' windows, calibration, history, counters), created on first use. Call before
 * ax_server_listen of srv, from the thread that created both; index numbers srv for /health
 * (first is worker 0). first owns the shared state: free it last. Returns 0 or AX_ENOMEM. */
int ax_server_share_sessions(struct ax_server *srv, struct ax_server *first, int index);

#endif
