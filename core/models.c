/* models.c - which model and which context window a request gets (anthroxy_models.h). */
#include "anthroxy_models.h"
#include "anthroxy_upstream.h"

#include <stddef.h>

int64_t ax_models_window(const struct ax_config *cfg, const struct ax_upstream *up,
                         const char **source)
{
    const struct ax_upstream_info *info;

    if (cfg->context_window > 0) {
        if (source)
            *source = "config";
        return cfg->context_window;
    }
    info = up ? ax_upstream_info(up) : NULL;
    if (info && info->n_ctx > 0) {
        if (source)
            *source = info->n_ctx_source ? info->n_ctx_source : "upstream";
        return info->n_ctx;
    }
    if (source)
        *source = "fallback";
    return AX_DEFAULT_CONTEXT_WINDOW;
}

const char *ax_models_upstream_name(const struct ax_config *cfg, const struct ax_upstream *up,
                                    const char *client_model)
{
    const struct ax_upstream_info *info;
    const char *m;

    if (client_model && (m = ax_config_map_model(cfg, client_model)) != NULL)
        return m;
    if (cfg->upstream_model && *cfg->upstream_model)
        return cfg->upstream_model;
    info = up ? ax_upstream_info(up) : NULL;
    if (info && info->model_id[0])
        return info->model_id;
    /* Unknown yet: llama-server ignores the name; others need the probe to have run. */
    return client_model ? client_model : "default";
}
