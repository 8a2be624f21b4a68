/* anthroxy_config.h - every setting and limit, in one struct.
 *
 * Precedence, lowest first: built-in defaults (ax_config_init), a config file
 * (ax_config_load_file), environment variables (ax_config_apply_env: the seed's PROXY_*
 * and LLAMA_CPP_BASE names plus ANTHROXY_*), then command-line flags
 * (ax_config_parse_args). Each value remembers where it came from, for the start-up log
 * and /health. docs/configuration.md documents every field. */
#ifndef ANTHROXY_CONFIG_H
#define ANTHROXY_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "anthroxy_error.h"

struct ax_model_map {
    char *from; /* client model name, or a prefix ending in '*' ("claude-3-5-haiku*") */
    char *to;   /* upstream model id */
};

/* One upstream of a fleet: --upstream NAME=URL[,kind=K][,models=A|B][,max=N][,key=KEY]. */
struct ax_upstream_decl {
    char *name;   /* "gpu0": in /health, the logs, --model-map's MODEL@NAME and on_route */
    char *url;    /* OpenAI-compatible base URL, as --upstream takes it */
    char *kind;   /* "llama-server", "vllm", "ollama", "sglang", "lmstudio", "openai"; NULL: auto */
    char *key;    /* sent as Authorization: Bearer; NULL: none */
    char *models; /* '|'-separated model ids or fnmatch patterns it serves; NULL: discovered
                     from its /v1/models. The first plain id is its default model. */
    int max;      /* concurrent transfers; 0: --max-upstream */
};

/* where a value came from; AX_SRC_API: ax_config_set, by an embedding program */
enum ax_config_source { AX_SRC_DEFAULT, AX_SRC_FILE, AX_SRC_ENV, AX_SRC_FLAG, AX_SRC_API };

#define AX_CONFIG_MAX_KEYS 64

struct ax_config {
    /* listening */
    char *host;      /* "127.0.0.1" */
    int port;        /* 4000; 0 picks a free port (tests) */
    char **api_keys; /* inbound keys; none = no auth */
    size_t n_api_keys;
    char *api_key_file; /* one key per line, '#' comments */

    /* upstream */
    char *upstream_base;    /* "http://127.0.0.1:8080/v1"; a trailing /v1 is optional */
    char *upstream_api_key; /* sent as Authorization: Bearer */
    char *upstream_model;   /* NULL: the first id the upstream lists at /v1/models */
    struct ax_model_map *model_map;
    size_t n_model_map;
    /* the fleet (core/fleet.c): named upstreams; none: the fleet of one, upstream_base
     * (named "default", with upstream_api_key, upstream_model and max_upstream) */
    struct ax_upstream_decl *upstreams;
    size_t n_upstreams;
    char *route_balance;         /* "affinity" (rendezvous + bounded load), "round-robin",
                                    "least-loaded" */
    double affinity_load_factor; /* c in "move when load > c * mean + 1" (1.5) */
    double retry_budget;         /* failovers per request, fleet-wide (0.1) */
    int retry_min;               /* failovers always allowed per second on top (3) */
    int workers;                 /* event loops (threads) sharing the port (1) */
    int max_upstream;            /* concurrent upstream transfers (PROXY_MAX_CONNECTIONS, 20) */
    int upstream_queue_max;      /* requests waiting for a transfer slot before 529 (1024) */
    uint64_t connect_timeout_ms; /* 10000 */
    uint64_t read_timeout_ms;    /* idle read timeout (PROXY_READ_TIMEOUT, 600 s) */
    uint64_t total_timeout_ms;   /* whole transfer; 0 = none */
    int connect_retries;         /* 2: retries after a failed connect, never after */
    uint64_t retry_delay_ms;     /* 500, doubled each retry */

    /* context */
    int64_t context_window; /* 0: probe /props, then /slots, else 131072 */
    double prune_threshold; /* 0.75 (for the pruning policy) */

    /* limits */
    size_t max_body_bytes;            /* 32 MiB */
    size_t max_header_bytes;          /* 64 KiB */
    size_t max_response_bytes;        /* a complete upstream answer: 64 MiB */
    size_t write_high_water;          /* pause the upstream past this many queued bytes: 64 KiB */
    size_t write_low_water;           /* resume below: 16 KiB */
    uint64_t client_stall_timeout_ms; /* no write progress this long: cut off (60 s) */
    uint64_t keepalive_timeout_ms;    /* idle keep-alive connection (75 s) */
    uint64_t shutdown_grace_ms;       /* finish in-flight requests on SIGTERM (10 s) */
    size_t max_inflight_body_bytes;   /* request bodies buffered at once: 503 past (256 MiB) */
    int max_connections;              /* open client connections: 503 past (4096, fitted to
                                         the descriptor limit at start) */
    int max_connections_per_client;   /* the same per client address: 429 past; 0: off (0) */
    uint64_t nonstream_timeout_ms;    /* a non-streaming request's whole transfer (600 s) */
    double tokenize_off_ratio;        /* /tokenize the prompt when the estimate is off (0.25) */
    uint64_t tokenize_timeout_ms;     /* the wait for that count, then the estimate (2 s) */

    /* streaming */
    uint64_t ping_interval_ms;   /* 10000 */
    uint64_t first_byte_hold_ms; /* wait this long for the upstream status before 200 (2000) */
    int reasoning_fallback;      /* reasoning but no text and no tool call: emit it as text (0) */
    int forward_user_id;         /* send metadata.user_id upstream as `user` (0: never) */

    /* policies */
    char *policies_path;              /* chain file; NULL: <policy dir>/default.lua */
    char *experiment_path;            /* --experiment: arms and their chains; NULL: none */
    char *lua_dir;                    /* runtime Lua; NULL: the built-in AX_LUA_DIR */
    size_t lua_mem_max;               /* all policies together: 256 MiB */
    size_t lua_req_mem_max;           /* one request: 16 MiB */
    uint64_t lua_instr_budget;        /* per hook call: 10,000,000 instructions */
    uint64_t lua_run_max_ms;          /* one hook call's work between waits, wall clock: 1 s */
    uint64_t lua_sleep_max_ms;        /* ax.sleep per hook call, all calls together: 30 s */
    int policy_fail_closed;           /* a failing policy fails the request (0: skip it) */
    struct ax_model_map *policy_sets; /* --policy-set NAME.KEY=VALUE, over chain and env */
    size_t n_policy_sets;

    /* sessions */
    int max_sessions;        /* 1024 */
    uint64_t session_ttl_ms; /* 6 h */

    /* recording (core/record.c) */
    char *record_dir;             /* --record: NULL = off */
    size_t record_max_file_bytes; /* one session's file: 256 MiB */
    size_t record_max_dir_bytes;  /* the whole directory: 4 GiB */

    /* session state in Redis (core/state_redis.c) */
    char *state_url;        /* --state redis://HOST:PORT/DB: NULL = this process only */
    uint64_t state_wait_ms; /* the bounded wait for a session's state (20 ms) */

    /* logging */
    int log_level;    /* enum ax_log_level; PROXY_LOG_LEVEL */
    char *log_format; /* "text" (NULL too) or "json": one object a line */

    /* the config file read (--config, ANTHROXY_CONFIG); NULL: none */
    char *config_path;

    unsigned char source[AX_CONFIG_MAX_KEYS]; /* enum ax_config_source per key (config.c) */
};

/* Sets every field to its built-in default (the sources all AX_SRC_DEFAULT). */
void ax_config_init(struct ax_config *cfg);

/* Sets one setting by its name (as in the config file: "port", "upstream", "max-body-bytes";
 * '_' for '-' and any case accepted) from its text form, as the environment would (lists
 * comma-separated), and records AX_SRC_API as its source, so /health and the start-up log
 * say who set it. Returns 0, or AX_EINVAL (unknown name, bad value: err names both) or
 * AX_ENOMEM; on failure the setting keeps its value. Validate the whole with
 * ax_config_validate (ax_server_new does). */
int ax_config_set(struct ax_config *cfg, const char *name, const char *value, struct ax_error *err);
void ax_config_free(struct ax_config *cfg);
/* All sources in order on an initialised cfg: the file named by --config (else by
 * ANTHROXY_CONFIG), the environment, the flags in argv[1..argc), then the keys of
 * api_key_file, then ax_config_validate. *want_help as for ax_config_parse_args (the other
 * sources are still applied, so --help can show effective values). Errors name the
 * source and the key: "--port: invalid value \"x\" for port: expected ...". Returns 0 or
 * AX_EINVAL / AX_EIO / AX_ENOMEM with err filled. */
int ax_config_load(struct ax_config *cfg, int argc, char **argv, int *want_help,
                   struct ax_error *err);
/* KEY = VALUE lines (the long flag names without "--", '-' or '_'; whole-line '#'
 * comments; values optionally in double quotes; a repeatable key may appear on several
 * lines). An unknown key is an error naming path and line. */
int ax_config_load_file(struct ax_config *cfg, const char *path, struct ax_error *err);
/* ANTHROXY_<NAME> for every setting, and the seed's names (LLAMA_CPP_BASE, PROXY_*);
 * ANTHROXY_* wins where both are set. Empty variables count as unset. */
int ax_config_apply_env(struct ax_config *cfg, struct ax_error *err);
/* Parses flags from argv[1..argc) (argv[0] is the program). `--name value`,
 * `--name=value`, `--flag` / `--no-flag` for booleans. Sets *want_help to 1 for --help or
 * -h, 2 for --version (want_help may be NULL). Non-flag arguments are an error. A
 * repeatable setting (--api-key, --model-map) given by a source replaces what lower
 * sources gave; repeated within one source, it accumulates. */
int ax_config_parse_args(struct ax_config *cfg, int argc, char **argv, int *want_help,
                         struct ax_error *err);
/* Appends the keys of cfg->api_key_file (one per line, '#' comments, blank lines skipped)
 * to cfg->api_keys. No file set: nothing to do. */
int ax_config_load_key_file(struct ax_config *cfg, struct ax_error *err);
/* Cross-field checks (write_low_water < write_high_water, an http(s) upstream, ...). */
int ax_config_validate(const struct ax_config *cfg, struct ax_error *err);
/* --help: every flag with its value syntax, meaning, default and environment names. */
void ax_config_usage(FILE *out);
/* Where a setting's value came from ("port", "api-key", ...); -1 for an unknown name. */
int ax_config_source_of(const struct ax_config *cfg, const char *name);
const char *ax_config_source_name(int source); /* "default", "file", "env", "flag" */
/* {"name": {"value": ..., "source": "default|file|env|flag"}, ...}; secrets as "***". */
cJSON *ax_config_to_json(const struct ax_config *cfg);
/* One INFO line per setting with its source, secrets redacted. */
void ax_config_log(const struct ax_config *cfg);
/* Deep copy (the server keeps its own). */
int ax_config_copy(struct ax_config *dst, const struct ax_config *src);
/* Resolves a client model name through model_map; NULL when nothing matches. */
const char *ax_config_map_model(const struct ax_config *cfg, const char *client_model);

#endif
