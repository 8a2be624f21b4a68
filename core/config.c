/* config.c - every setting, driven by one descriptor table.
 *
 * The table below is the single list of settings: defaults (written in the syntax a user
 * would type, and parsed by the same code), the config file, the environment, flags,
 * --help, the JSON for /health and the start-up log all walk it. docs/configuration.md
 * mirrors it; the precedence is default < file < env < flag. */
#include "anthroxy_config.h"
#include "anthroxy_log.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum opt_type {
    OPT_STR,      /* char *; an empty value means unset (NULL) */
    OPT_INT,      /* int */
    OPT_I64,      /* int64_t */
    OPT_U64,      /* uint64_t count */
    OPT_SIZE,     /* size_t bytes, suffixes K/M/G (powers of 1024) */
    OPT_SECS,     /* uint64_t milliseconds, written as seconds ("0.5", "90s", "250ms", "6h") */
    OPT_DOUBLE,   /* double */
    OPT_BOOL,     /* int 0/1 */
    OPT_LEVEL,    /* int, enum ax_log_level */
    OPT_KEYS,     /* api_keys / n_api_keys, repeatable */
    OPT_MAP,      /* model_map / n_model_map, repeatable */
    OPT_UPSTREAM, /* upstream_base (a URL), or upstreams / n_upstreams (NAME=URL,...) */
};

#define OPT_SECRET 1u
#define OPT_URL 2u /* may hold credentials (http://user:pass@host): masked wherever shown */

struct opt {
    const char *name;     /* flag without "--"; also the file key and ANTHROXY_<NAME> */
    const char *seed_env; /* the seed's variable, or NULL */
    enum opt_type type;
    size_t off;      /* of the field in struct ax_config */
    const char *def; /* default as a user would write it; NULL: unset */
    double min, max; /* numbers only; OPT_SECS in seconds */
    unsigned flags;
    const char *metavar; /* for --help */
    const char *help;
};

#define F(field) offsetof(struct ax_config, field)
#define BIG 1e15

static const struct opt opts[] = {
    {"host", "PROXY_HOST", OPT_STR, F(host), "127.0.0.1", 0, 0, 0, "ADDR",
     "address to listen on (0.0.0.0 or :: expose the proxy to the network)"},
    {"port", "PROXY_PORT", OPT_INT, F(port), "4000", 0, 65535, 0, "PORT",
     "port to listen on; 0 picks a free one"},
    {"api-key", NULL, OPT_KEYS, F(api_keys), NULL, 0, 0, OPT_SECRET, "KEY",
     "inbound key clients must send (x-api-key or Authorization: Bearer); repeatable, "
     "comma-separated in the environment; none: no authentication"},
    {"api-key-file", NULL, OPT_STR, F(api_key_file), NULL, 0, 0, 0, "PATH",
     "file of inbound keys, one per line, '#' comments; added to --api-key"},
    {"upstream", "LLAMA_CPP_BASE", OPT_UPSTREAM, F(upstream_base), "http://127.0.0.1:8080/v1", 0, 0,
     OPT_URL, "URL|SPEC",
     "OpenAI-compatible base URL (a trailing /v1 is optional): the fleet of one; or SPEC, "
     "NAME=URL[,kind=K][,models=A|B][,max=N][,key=KEY], one upstream of a fleet, repeatable "
     "(';'-separated in the environment): kind llama-server, "
     "vllm, ollama, sglang, lmstudio or openai, the models it serves ('|'-separated ids or "
     "patterns; unset: its /v1/models), its concurrency cap and key"},
    {"route-balance", NULL, OPT_STR, F(route_balance), "affinity", 0, 0, 0, "HOW",
     "among replicas of a model: affinity (a session sticks to one, by rendezvous hashing, "
     "unless it is far busier), round-robin or least-loaded"},
    {"affinity-load-factor", NULL, OPT_DOUBLE, F(affinity_load_factor), "1.5", 1, 1000, 0, "C",
     "a session leaves its replica while that one's load exceeds C * mean load + 1"},
    {"retry-budget", NULL, OPT_DOUBLE, F(retry_budget), "0.1", 0, 1, 0, "F",
     "failovers to another replica (before the first byte) per request, fleet-wide"},
    {"retry-min", NULL, OPT_INT, F(retry_min), "3", 0, 100000, 0, "N",
     "failovers allowed per second whatever the budget"},
    {"workers", NULL, OPT_INT, F(workers), "1", 1, 64, 0, "N",
     "event loops, one thread each, accepting on the same port (SO_REUSEPORT), each with its "
     "own policy state; sessions are shared between them"},
    {"upstream-api-key", NULL, OPT_STR, F(upstream_api_key), NULL, 0, 0, OPT_SECRET, "KEY",
     "sent upstream as Authorization: Bearer"},
    {"upstream-model", NULL, OPT_STR, F(upstream_model), NULL, 0, 0, 0, "MODEL",
     "model id sent upstream; unset: the first id the upstream lists at /v1/models"},
    {"model-map", NULL, OPT_MAP, F(model_map), NULL, 0, 0, 0, "FROM=TO",
     "client model name (or prefix ending in '*'; '*' alone: the default) to upstream model "
     "id, to MODEL@UPSTREAM or to @UPSTREAM (that upstream's own model); repeatable, "
     "comma-separated in the environment; exact names win, then the first matching prefix"},
    {"policy-set", NULL, OPT_MAP, F(policy_sets), NULL, 0, 0, 0, "NAME.KEY=VALUE",
     "a policy setting over the chain's and the environment's (repeatable)"},
    {"max-upstream", "PROXY_MAX_CONNECTIONS", OPT_INT, F(max_upstream), "20", 1, 100000, 0, "N",
     "concurrent upstream transfers"},
    {"upstream-queue-max", NULL, OPT_INT, F(upstream_queue_max), "1024", 0, 10000000, 0, "N",
     "requests waiting for a transfer slot before 529 overloaded_error"},
    {"connect-timeout", NULL, OPT_SECS, F(connect_timeout_ms), "10", 0.001, 3600, 0, "SEC",
     "upstream connect timeout"},
    {"read-timeout", "PROXY_READ_TIMEOUT", OPT_SECS, F(read_timeout_ms), "600", 0.001, 86400, 0,
     "SEC", "upstream idle read timeout (no byte for this long)"},
    {"total-timeout", NULL, OPT_SECS, F(total_timeout_ms), "0", 0, 604800, 0, "SEC",
     "whole upstream transfer; 0: no limit"},
    {"connect-retries", NULL, OPT_INT, F(connect_retries), "2", 0, 100, 0, "N",
     "retries after a failed connect (never after the request was sent)"},
    {"retry-delay", NULL, OPT_SECS, F(retry_delay_ms), "0.5", 0, 3600, 0, "SEC",
     "delay before the first connect retry, doubled for each next one"},
    {"context-window", "PROXY_CONTEXT_WINDOW", OPT_I64, F(context_window), "0", 0, 1e9, 0, "N",
     "context window in tokens; 0: probe /props, then /slots, else 131072"},
    {"prune-threshold", "PROXY_CONTEXT_PRUNE_THRESHOLD", OPT_DOUBLE, F(prune_threshold), "0.75",
     0.01, 1, 0, "F", "fraction of the window at which the pruning policy acts"},
    {"max-body-bytes", NULL, OPT_SIZE, F(max_body_bytes), "32M", 1, BIG, 0, "BYTES",
     "largest request body (413 request_too_large beyond)"},
    {"max-header-bytes", NULL, OPT_SIZE, F(max_header_bytes), "64K", 1024, BIG, 0, "BYTES",
     "largest request header block"},
    {"max-response-bytes", NULL, OPT_SIZE, F(max_response_bytes), "64M", 1, BIG, 0, "BYTES",
     "largest complete (non-streaming) upstream answer"},
    {"write-high-water", NULL, OPT_SIZE, F(write_high_water), "64K", 1, BIG, 0, "BYTES",
     "pause the upstream transfer past this many bytes queued for the client"},
    {"write-low-water", NULL, OPT_SIZE, F(write_low_water), "16K", 0, BIG, 0, "BYTES",
     "resume it below this many (must be under --write-high-water)"},
    {"client-stall-timeout", NULL, OPT_SECS, F(client_stall_timeout_ms), "60", 0.001, 86400, 0,
     "SEC", "cut off a client that makes no write progress this long"},
    {"keepalive-timeout", NULL, OPT_SECS, F(keepalive_timeout_ms), "75", 0.001, 86400, 0, "SEC",
     "close an idle keep-alive connection after this long"},
    {"shutdown-grace", NULL, OPT_SECS, F(shutdown_grace_ms), "10", 0, 3600, 0, "SEC",
     "on SIGINT/SIGTERM, let in-flight requests finish this long, then cancel them"},
    {"max-inflight-body-bytes", NULL, OPT_SIZE, F(max_inflight_body_bytes), "256M", 1, BIG, 0,
     "BYTES", "request bodies buffered at once, all connections (503 overloaded_error beyond)"},
    /* issue 13: connection caps and the non-streaming bound (one block) */
    {"max-connections", NULL, OPT_INT, F(max_connections), "4096", 1, 10000000, 0, "N",
     "open client connections; past it a new one is answered 503 overloaded_error and closed "
     "(lowered at start to fit the descriptor limit, ulimit -n)"},
    {"max-connections-per-client", NULL, OPT_INT, F(max_connections_per_client), "0", 0, 10000000,
     0, "N",
     "open connections from one client address (429 rate_limit_error past it); 0: no limit"},
    {"nonstream-timeout", NULL, OPT_SECS, F(nonstream_timeout_ms), "600", 0, 604800, 0, "SEC",
     "whole upstream transfer of a non-streaming request (504 past it); 0: no limit"},
    {"tokenize-off-ratio", NULL, OPT_DOUBLE, F(tokenize_off_ratio), "0.25", 0, 100, 0, "F",
     "count a prompt with llama-server's /tokenize before the policies decide to prune when "
     "the session's factor is at its clamp or was off by more than this share on the last "
     "turn; 0: never"},
    {"tokenize-timeout", NULL, OPT_SECS, F(tokenize_timeout_ms), "2", 0.001, 600, 0, "SEC",
     "longest wait for that count; past it the estimate is used"},
    {"ping-interval", NULL, OPT_SECS, F(ping_interval_ms), "10", 0.01, 3600, 0, "SEC",
     "send event: ping on a stream silent this long"},
    {"first-byte-hold", NULL, OPT_SECS, F(first_byte_hold_ms), "2", 0, 600, 0, "SEC",
     "wait this long for the upstream status before answering 200 to a stream"},
    {"reasoning-fallback", NULL, OPT_BOOL, F(reasoning_fallback), "false", 0, 0, 0, NULL,
     "an answer with reasoning but no text and no tool call: emit the reasoning as text"},
    {"forward-user-id", NULL, OPT_BOOL, F(forward_user_id), "false", 0, 0, 0, NULL,
     "send the client's metadata.user_id upstream as `user` (Claude Code puts its device and "
     "account ids there); off: never sent"},
    {"policies", NULL, OPT_STR, F(policies_path), NULL, 0, 0, 0, "PATH",
     "policy chain file; unset: default.lua in the shipped policy directory"},
    {"experiment", NULL, OPT_STR, F(experiment_path), NULL, 0, 0, 0, "FILE",
     "A/B experiment file: arms, each with a weight and its own chain (docs/experiments.md); "
     "unset: one chain for everyone"},
    {"lua-dir", NULL, OPT_STR, F(lua_dir), NULL, 0, 0, 0, "DIR",
     "the runtime's Lua directory; unset: the one fixed at build time"},
    {"lua-mem-max", NULL, OPT_SIZE, F(lua_mem_max), "256M", 1048576, BIG, 0, "BYTES",
     "memory cap of all policies together"},
    {"lua-req-mem-max", NULL, OPT_SIZE, F(lua_req_mem_max), "16M", 65536, BIG, 0, "BYTES",
     "memory cap of the policies of one request"},
    {"lua-instr-budget", NULL, OPT_U64, F(lua_instr_budget), "10000000", 1000, 1e12, 0, "N",
     "Lua instructions one hook call may run"},
    {"lua-run-max", NULL, OPT_SECS, F(lua_run_max_ms), "1", 0.01, 3600, 0, "SEC",
     "wall-clock time a hook call may hold the loop between waits"},
    {"lua-sleep-max", NULL, OPT_SECS, F(lua_sleep_max_ms), "30", 0.001, 86400, 0, "SEC",
     "time one hook call may spend in ax.sleep, all its calls together"},
    {"policy-fail-closed", NULL, OPT_BOOL, F(policy_fail_closed), "false", 0, 0, 0, NULL,
     "a failing policy fails the request (default: it is skipped and logged)"},
    {"max-sessions", NULL, OPT_INT, F(max_sessions), "1024", 1, 10000000, 0, "N",
     "sessions the monitor keeps; the least recently seen idle one is evicted"},
    {"session-ttl", NULL, OPT_SECS, F(session_ttl_ms), "21600", 0, 31536000, 0, "SEC",
     "forget a session idle this long; 0: never"},
    {"record", NULL, OPT_STR, F(record_dir), NULL, 0, 0, 0, "DIR",
     "record every exchange to DIR, one JSON Lines file per session (docs/recording.md); "
     "unset: off"},
    {"record-max-file-bytes", NULL, OPT_SIZE, F(record_max_file_bytes), "256M", 4096, BIG, 0,
     "BYTES", "largest recording of one session; later exchanges of it are not recorded"},
    {"record-max-dir-bytes", NULL, OPT_SIZE, F(record_max_dir_bytes), "4G", 4096, BIG, 0, "BYTES",
     "all recordings together; the least recently written sessions are removed first"},
    /* issue 12: session state in Redis, shared by several instances (core/state_redis.c) */
    {"state", NULL, OPT_STR, F(state_url), NULL, 0, 0, 0, "URL",
     "keep session monitors and experiment arms in Redis "
     "(redis://[[USER]:PASSWORD@]HOST:PORT/DB), shared by every instance pointed at it; unset: "
     "in this process only"},
    {"state-wait", NULL, OPT_SECS, F(state_wait_ms), "0.02", 0.001, 10, 0, "SEC",
     "longest a request waits for its session's state from Redis; past it the local state "
     "serves"},
    {"log-level", "PROXY_LOG_LEVEL", OPT_LEVEL, F(log_level), "INFO", 0, 0, 0, "LEVEL",
     "DEBUG, INFO, WARNING or ERROR"},
    {"log-format", NULL, OPT_STR, F(log_format), "text", 0, 0, 0, "FORMAT",
     "text (one readable line an event) or json (one JSON object a line, for log shippers)"},
    {"config", NULL, OPT_STR, F(config_path), NULL, 0, 0, 0, "FILE",
     "read settings from FILE (KEY = VALUE lines), below the environment and flags"},
};

#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

_Static_assert(sizeof(opts) / sizeof(opts[0]) <= AX_CONFIG_MAX_KEYS, "raise AX_CONFIG_MAX_KEYS");

static const char *const source_names[] = {"default", "file", "env", "flag", "api"};

const char *ax_config_source_name(int source)
{
    return source >= 0 && source <= AX_SRC_API ? source_names[source] : "?";
}

static int opt_find(const char *name, size_t len)
{
    size_t i, j;

    for (i = 0; i < N_OPTS; i++) {
        const char *o = opts[i].name;
        for (j = 0; j < len && o[j] != '\0'; j++) {
            char c = name[j] == '_' ? '-' : (char)tolower((unsigned char)name[j]);
            if (c != o[j])
                break;
        }
        if (j == len && o[j] == '\0')
            return (int)i;
    }
    return -1;
}

int ax_config_source_of(const struct ax_config *cfg, const char *name)
{
    int i = opt_find(name, strlen(name));
    return i < 0 ? -1 : cfg->source[i];
}

#define FIELD(cfg, o, T) ((T *)(void *)((char *)(cfg) + (o)->off))

/* ---- list settings ---------------------------------------------------------------- */

static void keys_clear(struct ax_config *cfg)
{
    size_t i;

    for (i = 0; i < cfg->n_api_keys; i++)
        free(cfg->api_keys[i]);
    free(cfg->api_keys);
    cfg->api_keys = NULL;
    cfg->n_api_keys = 0;
}

static int keys_add(struct ax_config *cfg, const char *key, size_t len)
{
    char **v = realloc(cfg->api_keys, (cfg->n_api_keys + 1) * sizeof(*v));
    if (v == NULL)
        return AX_ENOMEM;
    cfg->api_keys = v;
    if ((v[cfg->n_api_keys] = strndup(key, len)) == NULL)
        return AX_ENOMEM;
    cfg->n_api_keys++;
    return 0;
}

/* The two FROM=TO lists: --model-map and --policy-set. */
struct mapref {
    struct ax_model_map **v;
    size_t *n;
};

static struct mapref map_of(struct ax_config *cfg, size_t off)
{
    struct mapref r = {&cfg->model_map, &cfg->n_model_map};

    if (off == offsetof(struct ax_config, policy_sets)) {
        r.v = &cfg->policy_sets;
        r.n = &cfg->n_policy_sets;
    }
    return r;
}

static void map_clear(struct mapref m)
{
    size_t i;

    for (i = 0; i < *m.n; i++) {
        free((*m.v)[i].from);
        free((*m.v)[i].to);
    }
    free(*m.v);
    *m.v = NULL;
    *m.n = 0;
}

static int map_add(struct mapref m, const char *from, size_t flen, const char *to, size_t tlen)
{
    struct ax_model_map *v = realloc(*m.v, (*m.n + 1) * sizeof(*v));
    if (v == NULL)
        return AX_ENOMEM;
    *m.v = v;
    v += *m.n;
    v->from = strndup(from, flen);
    v->to = strndup(to, tlen);
    if (v->from == NULL || v->to == NULL) {
        free(v->from);
        free(v->to);
        return AX_ENOMEM;
    }
    (*m.n)++;
    return 0;
}

static size_t trim(const char **s, size_t len)
{
    while (len > 0 && isspace((unsigned char)**s)) {
        (*s)++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)(*s)[len - 1]))
        len--;
    return len;
}

/* One item of a list value: an api key, or FROM=TO. */
static int list_add_one(struct ax_config *cfg, const struct opt *o, const char *p, size_t len,
                        const char **why)
{
    const char *eq, *to;
    size_t flen;

    len = trim(&p, len);
    if (len == 0) {
        *why = "expected a non-empty value";
        return AX_EINVAL;
    }
    if (o->type == OPT_KEYS)
        return keys_add(cfg, p, len);
    eq = memchr(p, '=', len);
    if (eq == NULL) {
        *why = "expected FROM=TO";
        return AX_EINVAL;
    }
    to = eq + 1;
    flen = trim(&p, (size_t)(eq - p));
    len = trim(&to, len - (size_t)(to - p));
    if (flen == 0 || len == 0) {
        *why = "expected FROM=TO with both names non-empty";
        return AX_EINVAL;
    }
    return map_add(map_of(cfg, o->off), p, flen, to, len);
}

/* A higher source replaces the list of a lower one; items from one source accumulate.
 * `split` takes comma-separated items (the environment). */
static int list_set(struct ax_config *cfg, int idx, const char *val, enum ax_config_source src,
                    int split, const char **why)
{
    const struct opt *o = &opts[idx];
    const char *p = val, *comma;
    int rc;

    if (cfg->source[idx] != src) {
        if (o->type == OPT_KEYS)
            keys_clear(cfg);
        else
            map_clear(map_of(cfg, o->off));
    }
    cfg->source[idx] = (unsigned char)src;
    if (!split)
        return list_add_one(cfg, o, p, strlen(p), why);
    for (;;) {
        comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        const char *q = p;
        if (trim(&q, len) > 0 && (rc = list_add_one(cfg, o, p, len, why)) < 0)
            return rc;
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

static int parse_integer(const char *s, double *out);

/* ---- the fleet's upstreams ------------------------------------------------------------ */

static const char *const upstream_kinds[] = {"llama-server", "vllm",     "ollama",
                                             "sglang",       "lmstudio", "openai"};

static void decl_free(struct ax_upstream_decl *d)
{
    free(d->name);
    free(d->url);
    free(d->kind);
    free(d->key);
    free(d->models);
}

static void upstreams_clear(struct ax_config *cfg)
{
    size_t i;

    for (i = 0; i < cfg->n_upstreams; i++)
        decl_free(&cfg->upstreams[i]);
    free(cfg->upstreams);
    cfg->upstreams = NULL;
    cfg->n_upstreams = 0;
}

static int decl_push(struct ax_config *cfg, const struct ax_upstream_decl *d)
{
    struct ax_upstream_decl *v = realloc(cfg->upstreams, (cfg->n_upstreams + 1) * sizeof(*v));
    struct ax_upstream_decl *n;

    if (v == NULL)
        return AX_ENOMEM;
    cfg->upstreams = v;
    n = &v[cfg->n_upstreams];
    memset(n, 0, sizeof(*n));
    n->max = d->max;
    if ((n->name = strdup(d->name)) == NULL || (n->url = strdup(d->url)) == NULL ||
        (d->kind && (n->kind = strdup(d->kind)) == NULL) ||
        (d->key && (n->key = strdup(d->key)) == NULL) ||
        (d->models && (n->models = strdup(d->models)) == NULL)) {
        decl_free(n);
        return AX_ENOMEM;
    }
    cfg->n_upstreams++;
    return 0;
}

static int name_ok(const char *p, size_t len)
{
    size_t i;

    if (len == 0 || len > 63)
        return 0;
    for (i = 0; i < len; i++)
        if (!isalnum((unsigned char)p[i]) && p[i] != '-' && p[i] != '_' && p[i] != '.')
            return 0;
    return 1;
}

/* NAME=URL,key=value,...: 1 when v has that shape (a plain URL is not), else 0. */
static int is_named_upstream(const char *v)
{
    const char *eq = strchr(v, '=');

    return eq != NULL && name_ok(v, (size_t)(eq - v)) &&
           (strncasecmp(eq + 1, "http://", 7) == 0 || strncasecmp(eq + 1, "https://", 8) == 0);
}

/* One named upstream; the attributes are comma-separated key=value pairs after the URL. */
static int upstream_add(struct ax_config *cfg, const char *val, const char **why)
{
    struct ax_upstream_decl d;
    char *copy = strdup(val), *save = NULL, *tok, *eq;
    int rc = AX_EINVAL;
    double v;

    if (copy == NULL)
        return AX_ENOMEM;
    memset(&d, 0, sizeof(d));
    eq = strchr(copy, '=');
    *eq = '\0';
    d.name = copy;
    d.url = strtok_r(eq + 1, ",", &save);
    while ((tok = strtok_r(NULL, ",", &save)) != NULL) {
        const char *k = tok;
        size_t klen;
        if ((eq = strchr(tok, '=')) == NULL) {
            *why = "expected key=value after the URL (kind, models, max, key)";
            goto done;
        }
        *eq = '\0';
        klen = trim(&k, strlen(k));
        if (klen == 4 && strncmp(k, "kind", 4) == 0)
            d.kind = eq + 1;
        else if (klen == 6 && strncmp(k, "models", 6) == 0)
            d.models = eq + 1;
        else if (klen == 3 && strncmp(k, "key", 3) == 0)
            d.key = eq + 1;
        else if (klen == 3 && strncmp(k, "max", 3) == 0) {
            if (parse_integer(eq + 1, &v) < 0 || v < 1 || v > 100000) {
                *why = "max: expected an integer from 1 to 100000";
                goto done;
            }
            d.max = (int)v;
        } else {
            *why = "unknown attribute (expected kind, models, max or key)";
            goto done;
        }
    }
    if (d.kind != NULL) {
        size_t i;
        for (i = 0; i < sizeof(upstream_kinds) / sizeof(upstream_kinds[0]); i++)
            if (strcmp(d.kind, upstream_kinds[i]) == 0)
                break;
        if (i == sizeof(upstream_kinds) / sizeof(upstream_kinds[0])) {
            *why = "kind: expected llama-server, vllm, ollama, sglang, lmstudio or openai";
            goto done;
        }
    }
    if (d.models != NULL && *d.models == '\0')
        d.models = NULL;
    if (d.key != NULL && *d.key == '\0')
        d.key = NULL;
    if ((rc = decl_push(cfg, &d)) == 0 && cfg->n_upstreams == 1) {
        /* the first named upstream is the default one, whose URL the rest of the core
         * (logs, /health's upstream object) shows */
        char *u = strdup(d.url);
        if (u == NULL)
            rc = AX_ENOMEM;
        else {
            free(cfg->upstream_base);
            cfg->upstream_base = u;
        }
    }
done:
    free(copy);
    return rc;
}

/* A plain URL is the fleet of one (it replaces any named upstreams); NAME=URL,... adds one.
 * As for lists, a higher source replaces what lower ones gave. */
static int upstream_set(struct ax_config *cfg, int idx, const char *val, enum ax_config_source src,
                        int split, const char **why)
{
    const char *p = val;
    char item[2048];
    int rc;

    if (cfg->source[idx] != src)
        upstreams_clear(cfg);
    cfg->source[idx] = (unsigned char)src;
    for (;;) {
        size_t len = split ? strcspn(p, "; \t\n") : strlen(p);
        const char *q = p;
        size_t tl = trim(&q, len);
        if (tl >= sizeof(item)) {
            *why = "too long";
            return AX_EINVAL;
        }
        if (tl > 0) {
            memcpy(item, q, tl);
            item[tl] = '\0';
            if (is_named_upstream(item)) {
                if ((rc = upstream_add(cfg, item, why)) < 0)
                    return rc;
            } else {
                char *u = strdup(item);
                if (u == NULL)
                    return AX_ENOMEM;
                upstreams_clear(cfg);
                free(cfg->upstream_base);
                cfg->upstream_base = u;
            }
        }
        if (!split || p[len] == '\0')
            return 0;
        p += len + 1;
    }
}

/* ---- scalar parsing ----------------------------------------------------------------- */

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    size_t i;

    for (i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return *out = 1, 0;
        if (strcasecmp(s, no[i]) == 0)
            return *out = 0, 0;
    }
    return AX_EINVAL;
}

/* A decimal number followed by an optional unit from `units` (case-insensitive);
 * *out = number * multiplier. */
struct unit {
    const char *suffix;
    double mult;
};

static int parse_scaled(const char *s, const struct unit *units, double *out)
{
    char *end;
    double v;

    while (isspace((unsigned char)*s))
        s++;
    if (*s == '\0' || *s == '-' || *s == '+')
        return AX_EINVAL;
    errno = 0;
    v = strtod(s, &end);
    if (end == s || errno != 0 || !isfinite(v))
        return AX_EINVAL;
    while (isspace((unsigned char)*end))
        end++;
    for (; units->suffix != NULL; units++) {
        if (strcasecmp(end, units->suffix) == 0) {
            *out = v * units->mult;
            return 0;
        }
    }
    return AX_EINVAL;
}

static const struct unit plain_units[] = {{"", 1}, {NULL, 0}};
static const struct unit size_units[] = {{"", 1},
                                         {"b", 1},
                                         {"k", 1024.0},
                                         {"kb", 1024.0},
                                         {"kib", 1024.0},
                                         {"m", 1048576.0},
                                         {"mb", 1048576.0},
                                         {"mib", 1048576.0},
                                         {"g", 1073741824.0},
                                         {"gb", 1073741824.0},
                                         {"gib", 1073741824.0},
                                         {NULL, 0}};
static const struct unit sec_units[] = {{"", 1},     {"s", 1},    {"ms", 0.001}, {"m", 60},
                                        {"min", 60}, {"h", 3600}, {NULL, 0}};

/* Integers: a plain decimal with no fraction (doubles hold every value we accept). */
static int parse_integer(const char *s, double *out)
{
    char *end;
    long long v;

    while (isspace((unsigned char)*s))
        s++;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (end == s || errno != 0)
        return AX_EINVAL;
    while (isspace((unsigned char)*end))
        end++;
    if (*end != '\0')
        return AX_EINVAL;
    *out = (double)v;
    return 0;
}

static const char *expect_text(const struct opt *o, char *buf, size_t n)
{
    switch (o->type) {
    case OPT_INT:
    case OPT_I64:
    case OPT_U64:
        snprintf(buf, n, "expected an integer from %.0f to %.0f", o->min, o->max);
        break;
    case OPT_SIZE:
        snprintf(buf, n, "expected a size in bytes (suffix K, M or G allowed) from %.0f", o->min);
        break;
    case OPT_SECS:
        snprintf(buf, n, "expected seconds (decimals allowed, or a ms/s/m/h suffix) from %g to %g",
                 o->min, o->max);
        break;
    case OPT_DOUBLE:
        snprintf(buf, n, "expected a number from %g to %g", o->min, o->max);
        break;
    case OPT_BOOL:
        snprintf(buf, n, "expected true or false");
        break;
    case OPT_LEVEL:
        snprintf(buf, n, "expected DEBUG, INFO, WARNING or ERROR");
        break;
    default:
        snprintf(buf, n, "invalid");
    }
    return buf;
}

static int scalar_set(struct ax_config *cfg, const struct opt *o, const char *val)
{
    double v;
    int rc, b;

    switch (o->type) {
    case OPT_UPSTREAM: /* the default URL; opt_set takes the list forms */
    case OPT_STR: {
        char *dup = NULL;
        if (*val != '\0' && (dup = strdup(val)) == NULL)
            return AX_ENOMEM;
        free(*FIELD(cfg, o, char *));
        *FIELD(cfg, o, char *) = dup;
        return 0;
    }
    case OPT_BOOL:
        if ((rc = parse_bool(val, &b)) < 0)
            return rc;
        *FIELD(cfg, o, int) = b;
        return 0;
    case OPT_LEVEL:
        if ((b = ax_log_level_parse(val)) < 0)
            return AX_EINVAL;
        *FIELD(cfg, o, int) = b;
        return 0;
    case OPT_INT:
    case OPT_I64:
    case OPT_U64:
        rc = parse_integer(val, &v);
        break;
    case OPT_SIZE:
        if ((rc = parse_scaled(val, size_units, &v)) == 0)
            v = floor(v);
        break;
    case OPT_SECS:
        rc = parse_scaled(val, sec_units, &v);
        break;
    default:
        rc = parse_scaled(val, plain_units, &v);
    }
    if (rc < 0 || v < o->min || v > o->max)
        return AX_EINVAL;
    switch (o->type) {
    case OPT_INT:
        *FIELD(cfg, o, int) = (int)v;
        break;
    case OPT_I64:
        *FIELD(cfg, o, int64_t) = (int64_t)v;
        break;
    case OPT_U64:
        *FIELD(cfg, o, uint64_t) = (uint64_t)v;
        break;
    case OPT_SIZE:
        *FIELD(cfg, o, size_t) = (size_t)v;
        break;
    case OPT_SECS:
        *FIELD(cfg, o, uint64_t) = (uint64_t)llround(v * 1000.0);
        break;
    default:
        *FIELD(cfg, o, double) = v;
    }
    return 0;
}

/* A value as /health, the log and error messages may show it: secrets as "***", credentials
 * in URLs masked. */
static const char *shown_value(const struct opt *o, const char *val, char *buf, size_t n)
{
    if (o->flags & OPT_SECRET)
        return "***";
    if (o->type == OPT_UPSTREAM && strstr(val, "key=") != NULL) {
        /* NAME=URL,...,key=KEY: the key never shows, even in a malformed value */
        const char *k = strstr(val, "key=");
        snprintf(buf, n, "%.*skey=***", (int)(k - val), val);
        return buf;
    }
    if (o->flags & OPT_URL)
        return ax_redact_url(val, buf, n);
    return val;
}

/* Sets opts[idx] from text. `where` names the source in errors ("--port", "PROXY_PORT",
 * "anthroxy.conf:3"). */
static int opt_set(struct ax_config *cfg, int idx, const char *val, enum ax_config_source src,
                   int split, const char *where, struct ax_error *err)
{
    const struct opt *o = &opts[idx];
    const char *why = NULL;
    char buf[160], masked[256];
    int rc;

    if (o->type == OPT_KEYS || o->type == OPT_MAP)
        rc = list_set(cfg, idx, val, src, split, &why);
    else if (o->type == OPT_UPSTREAM)
        rc = upstream_set(cfg, idx, val, src, split, &why);
    else if ((rc = scalar_set(cfg, o, val)) == 0)
        cfg->source[idx] = (unsigned char)src;
    if (rc == AX_ENOMEM)
        return ax_error_set(err, 500, "api_error", "%s: out of memory", where), AX_ENOMEM;
    if (rc < 0) {
        if (why == NULL)
            why = expect_text(o, buf, sizeof(buf));
        /* never echo a secret back, not even a malformed one */
        ax_error_set(err, 400, "invalid_request_error", "%s: invalid value \"%s\" for %s: %s",
                     where, shown_value(o, val, masked, sizeof(masked)), o->name, why);
        return AX_EINVAL;
    }
    return 0;
}

int ax_config_set(struct ax_config *cfg, const char *name, const char *value, struct ax_error *err)
{
    int idx = name != NULL ? opt_find(name, strlen(name)) : -1;

    if (idx < 0 || strcmp(opts[idx].name, "config") == 0)
        return ax_error_set(err, 400, "invalid_request_error", "unknown setting \"%s\"",
                            name != NULL ? name : "(null)");
    if (value == NULL)
        return ax_error_set(err, 400, "invalid_request_error", "%s: missing value", name);
    return opt_set(cfg, idx, value, AX_SRC_API, 1, name, err);
}

/* ---- life cycle ------------------------------------------------------------------- */

void ax_config_init(struct ax_config *cfg)
{
    size_t i;

    memset(cfg, 0, sizeof(*cfg));
    for (i = 0; i < N_OPTS; i++) {
        if (opts[i].def != NULL)
            (void)scalar_set(cfg, &opts[i], opts[i].def); /* table defaults always parse */
        cfg->source[i] = AX_SRC_DEFAULT;
    }
}

void ax_config_free(struct ax_config *cfg)
{
    size_t i;

    keys_clear(cfg);
    map_clear(map_of(cfg, F(model_map)));
    map_clear(map_of(cfg, F(policy_sets)));
    upstreams_clear(cfg);
    for (i = 0; i < N_OPTS; i++) {
        if (opts[i].type == OPT_STR || opts[i].type == OPT_UPSTREAM) {
            free(*FIELD(cfg, &opts[i], char *));
            *FIELD(cfg, &opts[i], char *) = NULL;
        }
    }
}

int ax_config_copy(struct ax_config *dst, const struct ax_config *src)
{
    size_t i;

    *dst = *src;
    dst->api_keys = NULL;
    dst->n_api_keys = 0;
    dst->model_map = NULL;
    dst->n_model_map = 0;
    dst->policy_sets = NULL;
    dst->n_policy_sets = 0;
    dst->upstreams = NULL;
    dst->n_upstreams = 0;
    for (i = 0; i < N_OPTS; i++)
        if (opts[i].type == OPT_STR || opts[i].type == OPT_UPSTREAM)
            *FIELD(dst, &opts[i], char *) = NULL;
    for (i = 0; i < src->n_upstreams; i++)
        if (decl_push(dst, &src->upstreams[i]) < 0)
            goto fail;
    for (i = 0; i < N_OPTS; i++) {
        const char *s = opts[i].type == OPT_STR || opts[i].type == OPT_UPSTREAM
                            ? *FIELD(src, &opts[i], char *const)
                            : NULL;
        if (s != NULL && (*FIELD(dst, &opts[i], char *) = strdup(s)) == NULL)
            goto fail;
    }
    for (i = 0; i < src->n_api_keys; i++)
        if (keys_add(dst, src->api_keys[i], strlen(src->api_keys[i])) < 0)
            goto fail;
    for (i = 0; i < src->n_model_map; i++) {
        const struct ax_model_map *m = &src->model_map[i];
        if (map_add(map_of(dst, F(model_map)), m->from, strlen(m->from), m->to, strlen(m->to)) < 0)
            goto fail;
    }
    for (i = 0; i < src->n_policy_sets; i++) {
        const struct ax_model_map *m = &src->policy_sets[i];
        if (map_add(map_of(dst, F(policy_sets)), m->from, strlen(m->from), m->to, strlen(m->to)) <
            0)
            goto fail;
    }
    return 0;
fail:
    ax_config_free(dst);
    return AX_ENOMEM;
}

/* ---- sources ---------------------------------------------------------------------- */

static char *strip_quotes(char *v)
{
    size_t len = strlen(v);

    if (len >= 2 && ((v[0] == '"' && v[len - 1] == '"') || (v[0] == '\'' && v[len - 1] == '\''))) {
        v[len - 1] = '\0';
        return v + 1;
    }
    return v;
}

static int file_line(struct ax_config *cfg, char *line, const char *where, struct ax_error *err)
{
    const char *key = line;
    char *eq, *val;
    size_t klen;
    int idx;

    while (isspace((unsigned char)*key))
        key++;
    if (*key == '\0' || *key == '#')
        return 0;
    if ((eq = strchr(key, '=')) == NULL)
        return ax_error_set(err, 400, "invalid_request_error", "%s: expected KEY = VALUE", where);
    klen = trim(&key, (size_t)(eq - key));
    if (klen > 2 && key[0] == '-' && key[1] == '-') {
        key += 2;
        klen -= 2;
    }
    idx = opt_find(key, klen);
    if (idx < 0 || strcmp(opts[idx].name, "config") == 0)
        return ax_error_set(err, 400, "invalid_request_error", "%s: unknown setting \"%.*s\"",
                            where, (int)klen, key);
    val = eq + 1;
    while (isspace((unsigned char)*val))
        val++;
    klen = strlen(val);
    while (klen > 0 && isspace((unsigned char)val[klen - 1]))
        val[--klen] = '\0';
    return opt_set(cfg, idx, strip_quotes(val), AX_SRC_FILE, 0, where, err);
}

int ax_config_load_file(struct ax_config *cfg, const char *path, struct ax_error *err)
{
    FILE *f = fopen(path, "r");
    char *line = NULL, where[256];
    size_t cap = 0;
    int lineno = 0, rc = 0;

    if (f == NULL) {
        ax_error_set(err, 500, "api_error", "config file %s: %s", path, strerror(errno));
        return AX_EIO;
    }
    while (rc == 0 && getline(&line, &cap, f) >= 0) {
        snprintf(where, sizeof(where), "%s:%d", path, ++lineno);
        rc = file_line(cfg, line, where, err);
    }
    if (rc == 0 && ferror(f)) {
        ax_error_set(err, 500, "api_error", "config file %s: read error", path);
        rc = AX_EIO;
    }
    free(line);
    fclose(f);
    return rc;
}

static void env_name(const struct opt *o, char *out, size_t n)
{
    size_t i, j = (size_t)snprintf(out, n, "ANTHROXY_");

    for (i = 0; o->name[i] != '\0' && j + 1 < n; i++, j++)
        out[j] = o->name[i] == '-' ? '_' : (char)toupper((unsigned char)o->name[i]);
    out[j] = '\0';
}

int ax_config_apply_env(struct ax_config *cfg, struct ax_error *err)
{
    char name[64];
    const char *v, *used;
    size_t i;
    int rc;

    for (i = 0; i < N_OPTS; i++) {
        env_name(&opts[i], name, sizeof(name));
        used = name;
        v = getenv(name);
        if ((v == NULL || *v == '\0') && opts[i].seed_env != NULL) {
            used = opts[i].seed_env;
            v = getenv(used);
        }
        if (v == NULL || *v == '\0')
            continue;
        if ((rc = opt_set(cfg, (int)i, v, AX_SRC_ENV, 1, used, err)) < 0)
            return rc;
    }
    return 0;
}

/* Walks argv[1..argc). With apply == 0 only finds --config (and checks nothing else). */
static int args_walk(struct ax_config *cfg, int argc, char **argv, int apply, int *want_help,
                     const char **config_path, struct ax_error *err)
{
    char where[96];
    int i, idx, neg, rc;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *name, *eq, *val;
        size_t len;

        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0 || strcmp(a, "--version") == 0) {
            if (want_help != NULL)
                *want_help = a[2] == 'v' ? 2 : 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0')
            return ax_error_set(err, 400, "invalid_request_error",
                                "unexpected argument \"%s\" (see --help)", a);
        name = a + 2;
        eq = strchr(name, '=');
        len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        neg = 0;
        idx = opt_find(name, len);
        if (idx < 0 && len > 3 && strncmp(name, "no-", 3) == 0) {
            idx = opt_find(name + 3, len - 3);
            neg = 1;
            if (idx >= 0 && opts[idx].type != OPT_BOOL)
                idx = -1;
        }
        if (idx < 0)
            return ax_error_set(err, 400, "invalid_request_error",
                                "unknown flag --%.*s (see --help)", (int)len, name);
        snprintf(where, sizeof(where), "--%s", opts[idx].name);
        if (opts[idx].type == OPT_BOOL && eq == NULL) {
            val = neg ? "false" : "true";
        } else if (neg) {
            return ax_error_set(err, 400, "invalid_request_error", "--no-%s takes no value",
                                opts[idx].name);
        } else if (eq != NULL) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            return ax_error_set(err, 400, "invalid_request_error", "%s: missing value", where);
        }
        if (config_path != NULL && strcmp(opts[idx].name, "config") == 0)
            *config_path = val;
        if (apply && (rc = opt_set(cfg, idx, val, AX_SRC_FLAG, 0, where, err)) < 0)
            return rc;
    }
    return 0;
}

int ax_config_parse_args(struct ax_config *cfg, int argc, char **argv, int *want_help,
                         struct ax_error *err)
{
    return args_walk(cfg, argc, argv, 1, want_help, NULL, err);
}

int ax_config_load_key_file(struct ax_config *cfg, struct ax_error *err)
{
    FILE *f;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;

    if (cfg->api_key_file == NULL)
        return 0;
    if ((f = fopen(cfg->api_key_file, "r")) == NULL) {
        ax_error_set(err, 500, "api_error", "api-key-file %s: %s", cfg->api_key_file,
                     strerror(errno));
        return AX_EIO;
    }
    while (rc == 0 && (n = getline(&line, &cap, f)) >= 0) {
        const char *p = line;
        size_t len = trim(&p, (size_t)n);
        if (len > 0 && *p != '#' && (rc = keys_add(cfg, p, len)) < 0)
            ax_error_set(err, 500, "api_error", "api-key-file: out of memory");
    }
    free(line);
    fclose(f);
    return rc;
}

int ax_config_load(struct ax_config *cfg, int argc, char **argv, int *want_help,
                   struct ax_error *err)
{
    const char *path = NULL;
    int rc, help = 0;

    /* The file sits below env and flags, yet a flag names it: find it first. The env and
     * flag passes below then record config_path with its real source. */
    if ((rc = args_walk(cfg, argc, argv, 0, NULL, &path, err)) < 0)
        return rc;
    if (path == NULL && (path = getenv("ANTHROXY_CONFIG")) != NULL && *path == '\0')
        path = NULL;
    if (path != NULL && (rc = ax_config_load_file(cfg, path, err)) < 0)
        return rc;
    if ((rc = ax_config_apply_env(cfg, err)) < 0 ||
        (rc = ax_config_parse_args(cfg, argc, argv, &help, err)) < 0)
        return rc;
    if (want_help != NULL)
        *want_help = help;
    if (help != 0) /* --help and --version work with an incomplete configuration */
        return 0;
    if ((rc = ax_config_load_key_file(cfg, err)) < 0)
        return rc;
    return ax_config_validate(cfg, err);
}

/* A numeric field's value in the table's unit (seconds for OPT_SECS); 0 when not numeric. */
static int opt_number(const struct ax_config *cfg, const struct opt *o, double *out)
{
    switch (o->type) {
    case OPT_INT:
        *out = *FIELD(cfg, o, const int);
        return 1;
    case OPT_I64:
        *out = (double)*FIELD(cfg, o, const int64_t);
        return 1;
    case OPT_U64:
        *out = (double)*FIELD(cfg, o, const uint64_t);
        return 1;
    case OPT_SIZE:
        *out = (double)*FIELD(cfg, o, const size_t);
        return 1;
    case OPT_SECS:
        *out = (double)*FIELD(cfg, o, const uint64_t) / 1000.0;
        return 1;
    case OPT_DOUBLE:
        *out = *FIELD(cfg, o, const double);
        return 1;
    default:
        return 0;
    }
}

/* Named upstreams: http(s) URLs, unique names; MODEL@NAME targets of --model-map name one;
 * route-balance is one of three. */
static int validate_fleet(const struct ax_config *cfg, struct ax_error *err)
{
    const char *rb = cfg->route_balance;
    char buf[256];
    size_t i, j;

    if (rb != NULL && strcmp(rb, "affinity") != 0 && strcmp(rb, "round-robin") != 0 &&
        strcmp(rb, "least-loaded") != 0)
        return ax_error_set(err, 400, "invalid_request_error",
                            "route-balance: invalid value \"%s\": expected affinity, "
                            "round-robin or least-loaded",
                            rb);
    for (i = 0; i < cfg->n_upstreams; i++) {
        const struct ax_upstream_decl *d = &cfg->upstreams[i];
        if (d->name == NULL || !name_ok(d->name, strlen(d->name)))
            return ax_error_set(err, 400, "invalid_request_error",
                                "upstream: invalid name \"%s\": expected letters, digits, '-', "
                                "'_' or '.'",
                                d->name ? d->name : "");
        if (d->url == NULL ||
            (strncasecmp(d->url, "http://", 7) != 0 && strncasecmp(d->url, "https://", 8) != 0))
            return ax_error_set(err, 400, "invalid_request_error",
                                "upstream %s: invalid URL \"%s\": expected http:// or https://",
                                d->name, d->url ? ax_redact_url(d->url, buf, sizeof(buf)) : "");
        for (j = 0; j < i; j++)
            if (strcmp(cfg->upstreams[j].name, d->name) == 0)
                return ax_error_set(err, 400, "invalid_request_error",
                                    "upstream: the name \"%s\" is declared twice", d->name);
    }
    for (i = 0; i < cfg->n_model_map; i++) {
        const char *at = strrchr(cfg->model_map[i].to, '@');
        int found = 0;
        if (at == NULL)
            continue;
        if (cfg->n_upstreams == 0)
            found = strcmp(at + 1, "default") == 0;
        for (j = 0; j < cfg->n_upstreams && !found; j++)
            found = strcmp(cfg->upstreams[j].name, at + 1) == 0;
        if (!found)
            return ax_error_set(err, 400, "invalid_request_error",
                                "model-map: %s=%s names no declared upstream \"%s\"",
                                cfg->model_map[i].from, cfg->model_map[i].to, at + 1);
    }
    return 0;
}

int ax_config_validate(const struct ax_config *cfg, struct ax_error *err)
{
    const char *u = cfg->upstream_base;
    char buf[160];
    double v;
    size_t i;
    int rc;

    /* values set through the table are in range already; embedders set fields directly */
    for (i = 0; i < N_OPTS; i++) {
        if (opt_number(cfg, &opts[i], &v) && !(v >= opts[i].min && v <= opts[i].max))
            return ax_error_set(err, 400, "invalid_request_error", "%s: %g out of range: %s",
                                opts[i].name, v, expect_text(&opts[i], buf, sizeof(buf)));
    }
    if (cfg->log_level < AX_LOG_LVL_DEBUG || cfg->log_level > AX_LOG_LVL_ERROR)
        return ax_error_set(err, 400, "invalid_request_error", "log-level: %d out of range",
                            cfg->log_level);
    if (cfg->log_format != NULL && ax_log_format_parse(cfg->log_format) < 0)
        return ax_error_set(err, 400, "invalid_request_error",
                            "log-format: invalid value \"%.40s\": expected text or json",
                            cfg->log_format);
    if (cfg->host == NULL)
        return ax_error_set(err, 400, "invalid_request_error", "host: must not be empty");
    if (u == NULL || (strncasecmp(u, "http://", 7) != 0 && strncasecmp(u, "https://", 8) != 0))
        return ax_error_set(err, 400, "invalid_request_error",
                            "upstream: invalid value \"%s\": expected an http:// or https:// URL",
                            u != NULL ? ax_redact_url(u, buf, sizeof(buf)) : "");
    if ((rc = validate_fleet(cfg, err)) < 0)
        return rc;
    if (cfg->write_low_water >= cfg->write_high_water)
        return ax_error_set(err, 400, "invalid_request_error",
                            "write-low-water: %zu must be below write-high-water (%zu)",
                            cfg->write_low_water, cfg->write_high_water);
    if (cfg->lua_req_mem_max > cfg->lua_mem_max)
        return ax_error_set(err, 400, "invalid_request_error",
                            "lua-req-mem-max: %zu must not exceed lua-mem-max (%zu)",
                            cfg->lua_req_mem_max, cfg->lua_mem_max);
    return 0;
}

/* ---- output ----------------------------------------------------------------------- */

static cJSON *opt_value_json(const struct ax_config *cfg, const struct opt *o)
{
    cJSON *arr;
    size_t i;

    switch (o->type) {
    case OPT_STR: {
        const char *s = *FIELD(cfg, o, char *const);
        char buf[1024];
        if (s == NULL)
            return cJSON_CreateNull();
        return cJSON_CreateString(shown_value(o, s, buf, sizeof(buf)));
    }
    case OPT_INT:
        return cJSON_CreateNumber(*FIELD(cfg, o, const int));
    case OPT_I64:
        return cJSON_CreateNumber((double)*FIELD(cfg, o, const int64_t));
    case OPT_U64:
        return cJSON_CreateNumber((double)*FIELD(cfg, o, const uint64_t));
    case OPT_SIZE:
        return cJSON_CreateNumber((double)*FIELD(cfg, o, const size_t));
    case OPT_SECS:
        return cJSON_CreateNumber((double)*FIELD(cfg, o, const uint64_t) / 1000.0);
    case OPT_DOUBLE:
        return cJSON_CreateNumber(*FIELD(cfg, o, const double));
    case OPT_BOOL:
        return cJSON_CreateBool(*FIELD(cfg, o, const int));
    case OPT_LEVEL:
        return cJSON_CreateString(ax_log_level_name(*FIELD(cfg, o, const int)));
    case OPT_KEYS:
        if ((arr = cJSON_CreateArray()) == NULL)
            return NULL;
        for (i = 0; i < cfg->n_api_keys; i++)
            cJSON_AddItemToArray(arr, cJSON_CreateString("***"));
        return arr;
    case OPT_UPSTREAM: {
        char buf[1024];
        if (cfg->n_upstreams == 0) {
            const char *u = *FIELD(cfg, o, char *const);
            return u ? cJSON_CreateString(ax_redact_url(u, buf, sizeof(buf))) : cJSON_CreateNull();
        }
        if ((arr = cJSON_CreateArray()) == NULL)
            return NULL;
        for (i = 0; i < cfg->n_upstreams; i++) {
            const struct ax_upstream_decl *d = &cfg->upstreams[i];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddItemToArray(arr, e);
            cJSON_AddStringToObject(e, "name", d->name);
            cJSON_AddStringToObject(e, "url", ax_redact_url(d->url, buf, sizeof(buf)));
            if (d->kind)
                cJSON_AddStringToObject(e, "kind", d->kind);
            if (d->models)
                cJSON_AddStringToObject(e, "models", d->models);
            if (d->max)
                cJSON_AddNumberToObject(e, "max", d->max);
            if (d->key)
                cJSON_AddStringToObject(e, "key", "***");
        }
        return arr;
    }
    case OPT_MAP: {
        struct mapref m = map_of((struct ax_config *)cfg, o->off);
        if ((arr = cJSON_CreateObject()) == NULL)
            return NULL;
        for (i = 0; i < *m.n; i++)
            cJSON_AddStringToObject(arr, (*m.v)[i].from, (*m.v)[i].to);
        return arr;
    }
    }
    return NULL;
}

cJSON *ax_config_to_json(const struct ax_config *cfg)
{
    cJSON *root = cJSON_CreateObject(), *item, *val;
    size_t i;

    if (root == NULL)
        return NULL;
    for (i = 0; i < N_OPTS; i++) {
        if ((item = cJSON_CreateObject()) == NULL)
            goto fail;
        cJSON_AddItemToObject(root, opts[i].name, item);
        if ((val = opt_value_json(cfg, &opts[i])) == NULL)
            goto fail;
        cJSON_AddItemToObject(item, "value", val);
        if (cJSON_AddStringToObject(item, "source", ax_config_source_name(cfg->source[i])) == NULL)
            goto fail;
    }
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}

void ax_config_log(const struct ax_config *cfg)
{
    size_t i;

    if (AX_LOG_LVL_INFO < ax_log_level_current)
        return;
    for (i = 0; i < N_OPTS; i++) {
        cJSON *v = opt_value_json(cfg, &opts[i]);
        char *text = v != NULL ? cJSON_PrintUnformatted(v) : NULL;
        /* no request here: ax_log_write directly keeps config.c free of request.c */
        ax_log_write(AX_LOG_LVL_INFO, NULL, "config %s = %s (%s)", opts[i].name,
                     text != NULL ? text : "?", ax_config_source_name(cfg->source[i]));
        cJSON_free(text);
        cJSON_Delete(v);
    }
}

/* Prints text word-wrapped to 100 columns, continuation lines under column `indent`. */
static void print_wrapped(FILE *out, const char *text, int col, int indent)
{
    const char *p = text;

    while (*p != '\0') {
        size_t len = strcspn(p, " ");
        if (col > indent && col + 1 + (int)len > 100) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            fputc(' ', out);
            col++;
        }
        fprintf(out, "%.*s", (int)len, p);
        col += (int)len;
        p += len;
        while (*p == ' ')
            p++;
    }
    fputc('\n', out);
}

void ax_config_usage(FILE *out)
{
    char env[64], flag[64], line[256];
    size_t i;

    fprintf(out, "usage: anthroxy [flags]\n"
                 "       anthroxy check POLICY_OR_CHAIN [REQUEST.json]\n"
                 "       anthroxy test-lua FILE\n"
                 "       anthroxy replay --experiment FILE --out DIR RECORDING... (--help)\n\n"
                 "Precedence, lowest first: defaults, --config file, environment, flags.\n"
                 "Seconds take decimals or a ms/s/m/h suffix; sizes take K/M/G.\n\n"
                 "flags:\n");
    for (i = 0; i < N_OPTS; i++) {
        const struct opt *o = &opts[i];
        if (o->type == OPT_BOOL)
            snprintf(flag, sizeof(flag), "--[no-]%s", o->name);
        else
            snprintf(flag, sizeof(flag), "--%s %s", o->name, o->metavar);
        env_name(o, env, sizeof(env));
        fprintf(out, "  %-28s ", flag);
        print_wrapped(out, o->help, 31, 31);
        snprintf(line, sizeof(line), "(default: %s; env: %s%s%s)", o->def != NULL ? o->def : "none",
                 env, o->seed_env != NULL ? ", " : "", o->seed_env != NULL ? o->seed_env : "");
        fprintf(out, "%31s", "");
        print_wrapped(out, line, 31, 31);
    }
    fprintf(out, "  %-28s %s\n  %-28s %s\n", "--help", "this text", "--version",
            "print the version");
}

/* ---- model names ------------------------------------------------------------------ */

const char *ax_config_map_model(const struct ax_config *cfg, const char *client_model)
{
    size_t i, len;

    if (client_model == NULL)
        return NULL;
    for (i = 0; i < cfg->n_model_map; i++)
        if (strcmp(cfg->model_map[i].from, client_model) == 0)
            return cfg->model_map[i].to;
    for (i = 0; i < cfg->n_model_map; i++) {
        const char *from = cfg->model_map[i].from;
        len = strlen(from);
        if (len > 0 && from[len - 1] == '*' && strncmp(from, client_model, len - 1) == 0)
            return cfg->model_map[i].to;
    }
    return NULL;
}
