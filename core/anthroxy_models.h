/* anthroxy_models.h - which model and which context window a request gets: the configuration's
 * model map and window, else what the upstream probes learned, else a fallback. Read by the
 * pipeline (messages.c), the small endpoints (routes.c) and the policy engine's context. */
#ifndef ANTHROXY_MODELS_H
#define ANTHROXY_MODELS_H

#include <cjson/cJSON.h>
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

/* One entry of GET /v1/models (and the answer of GET /v1/models/{id}): the Anthropic SDK's
 * ModelInfo with every field it requires (id, type "model", display_name, created_at,
 * capabilities, deprecated_at, lifecycle, line, max_input_tokens and max_tokens from the
 * window in force, retires_at) and, in the same object, the OpenAI listing's (object
 * "model", created, owned_by), so clients of either API read it. NULL when out of memory. */
cJSON *ax_models_info(const struct ax_config *cfg, const struct ax_upstream *up, const char *id);

#endif
