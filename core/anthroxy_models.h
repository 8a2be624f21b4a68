/* anthroxy_models.h - which model and which context window a request gets: the configuration's
 * model map and window, else what the upstream probes learned, else a fallback. Read by the
 * pipeline (messages.c), the small endpoints (routes.c) and the policy engine's context. */
#ifndef ANTHROXY_MODELS_H
#define ANTHROXY_MODELS_H

#include <stdint.h>

#include "anthroxy_config.h"

struct ax_upstream;

/* The window when neither the configuration nor a probe gives one. */
#define AX_DEFAULT_CONTEXT_WINDOW 131072

/* The context window in force: configured, else probed per-slot n_ctx (or vLLM's
 * max_model_len), else AX_DEFAULT_CONTEXT_WINDOW. *source (when not NULL) names where it came
 * from: "config", the probe's endpoint, or "fallback". up may be NULL. */
int64_t ax_models_window(const struct ax_config *cfg, const struct ax_upstream *up,
                         const char **source);

/* The model name to send upstream for a client's model name (NULL: the default): the model
 * map, else the configured upstream model, else the probed one, else the client's own. */
const char *ax_models_upstream_name(const struct ax_config *cfg, const struct ax_upstream *up,
                                    const char *client_model);

#endif
