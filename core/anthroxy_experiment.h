/* anthroxy_experiment.h - A/B experiments: the experiment file, sticky arm assignment, and
 * the per-arm figures behind GET /v1/experiments.
 *
 * An experiment file is a Lua file returning { name = "...", arms = { { name, weight, chain },
 * ... } }; `chain` names a chain file (resolved against the experiment file's directory, then
 * the policies directory) or is an inline chain of the same form as policies/default.lua. It
 * is evaluated in a small Lua state of its own (no libraries beyond string/table/math, an
 * instruction and memory cap): it is data, not a policy. The policy engine loads each arm's
 * chain into one generation (core/policy/load.c) when cfg->experiment_path is set; a request
 * runs one arm's chain by naming it in ax_policy_req_info.arm. A tool that replays recorded
 * requests through every arm (`anthroxy replay`) loads the file here to list the arms, builds
 * one engine with the same path, and runs each request once per arm name.
 *
 * The figures are a leaf too: messages.c records a turn, the policy engine adds ax.count
 * counters, routes.c prints them. Everything runs on the loop thread; nothing here reads a
 * clock or does I/O except ax_experiment_load, which reads the file synchronously (start-up
 * and reload only, never on a request's path). */
#ifndef ANTHROXY_EXPERIMENT_H
#define ANTHROXY_EXPERIMENT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define AX_ARM_NAME_MAX 32 /* with the NUL: fits ax_session.arm */
#define AX_EXP_DEFAULT_ARM "default"

struct ax_exp_arm {
    char name[AX_ARM_NAME_MAX];
    double weight;    /* >= 0; an arm of weight 0 is reached only through the header */
    char *chain_path; /* a chain file, resolved to a path that exists; NULL when inline */
    cJSON *chain;     /* inline chain: [{"policy": path, "settings": {..}}], else NULL */
};

struct ax_experiment {
    char *name;
    char *path; /* the experiment file */
    struct ax_exp_arm *arms;
    int n_arms;
    double total_weight; /* > 0 */
};

/* Reads and validates an experiment file. Chain names resolve against the file's directory,
 * then policy_dir (the --policies chain's directory, or the shipped policies). Returns 0 and
 * *out (caller frees with ax_experiment_free), or AX_EINVAL / AX_EIO / AX_ENOMEM with err
 * naming the file and what is wrong ("arms[2].weight: expected a number >= 0"). */
int ax_experiment_load(const char *path, const char *policy_dir, struct ax_experiment **out,
                       char *err, size_t errn);
void ax_experiment_free(struct ax_experiment *exp);

/* The arm of that name, or NULL. */
const struct ax_exp_arm *ax_experiment_find(const struct ax_experiment *exp, const char *name);

/* The arm a session key lands in: a hash of the experiment's name and the key, by weight.
 * The same key always gets the same arm for the same names and weights, on any machine. */
const struct ax_exp_arm *ax_experiment_assign(const struct ax_experiment *exp, const char *key);

/* "a, b, c" into out (truncated to n): for error messages. */
void ax_experiment_arm_names(const struct ax_experiment *exp, char *out, size_t n);

/* {"name", "file", "arms": [{"name", "weight", "chain": path | [..]}]}; caller owns it. */
cJSON *ax_experiment_to_json(const struct ax_experiment *exp);

/* ---- per-arm figures ------------------------------------------------------------------- */

struct ax_exp_stats;

/* One answered /v1/messages request, as messages.c saw it. */
struct ax_exp_turn {
    const char *arm;
    int status;            /* HTTP status the client got (200 for a stream that began) */
    int64_t client_tokens; /* estimate of the request as the client sent it; -1: not measured */
    int64_t sent_estimate; /* estimate of the request after the policies (same estimator) */
    int have_usage;        /* the upstream reported usage: */
    int64_t prompt_tokens; /*   its real prompt_tokens */
    int64_t cached_tokens; /*   prompt_tokens_details.cached_tokens (or timings.cache_n) */
    int64_t output_tokens; /*   completion_tokens */
    int overflows;         /* upstream context-overflow answers during this request */
    int prompt_too_long;   /* the client got "prompt is too long" */
    int retried;           /* on_upstream_error had it sent again */
    double ttft_ms;        /* request start to first upstream content byte; < 0: none */
    double total_ms;       /* request start to the end of the answer */
    int tool_calls;        /* tool_use blocks in the answer */
    int tool_errors;       /* tool_result blocks with is_error in the client's last turn */
};

int ax_exp_stats_new(struct ax_exp_stats **out);
void ax_exp_stats_free(struct ax_exp_stats *st);

/* The experiment in force changed (NULL: none, one arm "default"): arms it lists become
 * active; arms it dropped stay listed, inactive, with their figures. A different experiment
 * name starts the figures afresh. */
void ax_exp_stats_set_experiment(struct ax_exp_stats *st, const struct ax_experiment *exp);

/* A session entered an arm (first seen, or moved there). */
void ax_exp_stats_session(struct ax_exp_stats *st, const char *arm);
void ax_exp_stats_record(struct ax_exp_stats *st, const struct ax_exp_turn *t);

#define AX_EXP_COUNTER_NAME_MAX 64
#define AX_EXP_COUNTERS_MAX 256 /* per arm: a policy cannot grow memory without bound */

/* ax.count: adds delta to the counter (arm, policy, name); *total gets the new value.
 * Returns 0, AX_EINVAL (empty or too long name) or AX_ETOOBIG (too many counters). */
int ax_exp_stats_count(struct ax_exp_stats *st, const char *arm, const char *policy,
                       const char *name, double delta, double *total);

/* {"experiment": ax_experiment_to_json | null, "arms": [{figures...}]}; caller owns it. */
cJSON *ax_exp_stats_to_json(const struct ax_exp_stats *st, const struct ax_experiment *exp);

/* {"arm": {"policy": {"counter": n}}} for /health; caller owns it. */
cJSON *ax_exp_stats_counters_json(const struct ax_exp_stats *st);

#endif
