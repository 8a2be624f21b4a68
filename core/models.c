/* models.c - which model and which context window a request gets (anthroxy_models.h). */
#include "anthroxy_models.h"
#include "anthroxy_upstream.h"

#include <stddef.h>
#include <string.h>

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

/* What a model behind anthroxy can do, in ModelCapabilities' shape: the context editing
 * and compaction the shipped policies emulate, thinking (enable_thinking); nothing that
 * needs Anthropic's servers (batches, citations, server tools, code execution). Images
 * and PDFs depend on the upstream model, which no probe reports: not claimed. */
static const char capabilities_json[] =
    "{\"batch\":{\"supported\":false},\"citations\":{\"supported\":false},"
    "\"code_execution\":{\"supported\":false},"
    "\"context_management\":{\"supported\":true,"
    "\"clear_thinking_20251015\":{\"supported\":true},"
    "\"clear_tool_uses_20250919\":{\"supported\":true},"
    "\"compact_20260112\":{\"supported\":true}},"
    "\"effort\":{\"supported\":false,\"low\":{\"supported\":false},"
    "\"medium\":{\"supported\":false},\"high\":{\"supported\":false},"
    "\"max\":{\"supported\":false},\"xhigh\":null},"
    "\"image_input\":{\"supported\":false},\"pdf_input\":{\"supported\":false},"
    "\"server_tools\":{\"supported\":false,\"code_execution\":{\"supported\":false},"
    "\"web_search\":{\"supported\":false}},"
    "\"structured_outputs\":{\"supported\":false},"
    "\"thinking\":{\"supported\":true,\"types\":{\"adaptive\":{\"supported\":true},"
    "\"between_tools\":{\"supported\":true},\"disabled\":{\"supported\":true},"
    "\"enabled\":{\"supported\":true}}}}";

/* ModelLine of a claude-... alias, else null. */
static const char *model_line(const char *id)
{
    static const char *const lines[] = {"haiku", "sonnet", "opus"};
    size_t i;

    if (strncmp(id, "claude", 6) != 0)
        return NULL;
    for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        if (strstr(id, lines[i]) != NULL)
            return lines[i];
    return NULL;
}

cJSON *ax_models_info(const struct ax_config *cfg, const struct ax_upstream *up, const char *id)
{
    int64_t win = ax_models_window(cfg, up, NULL);
    const char *line = model_line(id);
    cJSON *m = cJSON_CreateObject(), *caps = cJSON_Parse(capabilities_json);

    if (m == NULL || caps == NULL || !cJSON_AddItemToObject(m, "capabilities", caps)) {
        cJSON_Delete(caps);
        goto fail;
    }
    if (cJSON_AddStringToObject(m, "type", "model") == NULL ||
        cJSON_AddStringToObject(m, "id", id) == NULL ||
        cJSON_AddStringToObject(m, "display_name", id) == NULL ||
        cJSON_AddStringToObject(m, "created_at", "2025-01-01T00:00:00Z") == NULL ||
        cJSON_AddNullToObject(m, "deprecated_at") == NULL ||
        cJSON_AddStringToObject(m, "lifecycle", "active") == NULL ||
        (line ? cJSON_AddStringToObject(m, "line", line) : cJSON_AddNullToObject(m, "line")) ==
            NULL ||
        /* the window is the whole context: the prompt may take all of it, and so may the
         * answer (llama-server's n_predict and vLLM's limits are the window's) */
        cJSON_AddNumberToObject(m, "max_input_tokens", (double)win) == NULL ||
        cJSON_AddNumberToObject(m, "max_tokens", (double)win) == NULL ||
        cJSON_AddNullToObject(m, "retires_at") == NULL ||
        cJSON_AddStringToObject(m, "object", "model") == NULL ||
        cJSON_AddNumberToObject(m, "created", 1735689600) == NULL ||
        cJSON_AddStringToObject(m, "owned_by", "anthroxy") == NULL)
        goto fail;
    return m;
fail:
    cJSON_Delete(m);
    return NULL;
}
