/* replay_internal.h - between replay.c (running the recordings through the arms) and
 * replay_report.c (the figures into report.json, turns.csv and report.html). */
#ifndef ANTHROXY_REPLAY_INTERNAL_H
#define ANTHROXY_REPLAY_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "anthroxy_config.h"

struct ax_experiment;
struct ax_exp_arm;
struct ax_policy_engine;
struct ax_monitor;
struct ax_upstream;

#define RP_MAX_PATHS 256

/* One recorded exchange, its bodies rebuilt. */
struct rp_turn {
    char *body; /* the client's request, byte for byte */
    size_t len;
    char *up; /* the upstream request as recorded, or NULL */
    size_t up_len;
    int have_usage;
    int64_t prompt, cached, completion, window;
    int64_t est_client; /* raw estimate of the client's request; 0: not yet */
    int64_t raw_up;     /* raw estimate of the recorded upstream request; 0: not yet, -1: none */
    cJSON *response;    /* the answer the client got, or NULL */
    char tool[128];     /* its first tool_use's name, "" for none */
    char *tool_input;   /* and input, printed */
};

struct rp_session {
    char *key, *file;
    struct rp_turn *turns;
    int n_turns, cap_turns;
};

/* The parts of an upstream request in template order, for the common prefix of two. */
struct rp_prefix {
    uint64_t tools_hash;
    int64_t tools_tok, total; /* raw text estimates */
    char **msg;
    size_t *len;
    int64_t *tok;
    int n;
    cJSON *tools; /* a copy, to compare the next turn's with (turns only) */
};

/* One arm's walk through one session. */
struct rp_state {
    struct rp_prefix prev;
    int64_t prev_sent;
    double factor; /* the last calibration the recording gave */
};

struct rp_run;

struct rp_arm {
    const struct ax_exp_arm *arm;
    struct rp_run *run;
    char chain[4096];
    struct ax_config cfg;
    struct ax_policy_engine *eng;
    struct ax_monitor *mon;
};

/* One turn of one session through one arm: the figures. */
struct rp_row {
    int session, turn, arm;
    int64_t client_tokens;  /* calibrated estimate of the request as the client sent it */
    int64_t sent_tokens;    /* sent upstream: calibrated estimate, or the upstream's count */
    int64_t removed_tokens; /* by the policies (calibrated) */
    int64_t prefix_tokens;  /* shared with the previous upstream request of this arm */
    int64_t prev_tokens;    /* the previous turn's sent_tokens (0 on the first) */
    int64_t window;
    int removed_msgs, masked; /* messages removed, tool results masked */
    int fits, pairs_ok, cache_break, failed;
    int overflows, retried; /* offline: over the window, and on_upstream_error's retry */
    char error[600];
    cJSON *what; /* [{"policy", "changes": ax_rec_diff}] of on_request, or NULL */
    /* --upstream */
    int have_up, up_error, up_status;
    int64_t up_prompt, up_cached;
    double up_prompt_ms;
    int tool_agree; /* 1/0; -1: the recorded answer called no tool, or no upstream */
};

struct rp_run {
    uv_loop_t loop;
    struct ax_experiment *exp;
    struct rp_arm *arms;
    int n_arms;
    struct ax_upstream *up;
    const char *upstream, *out_dir, *lua_dir, *dump_dir, *exp_path;
    const char *paths[RP_MAX_PATHS];
    int n_paths;
    int64_t window, window_now;
    int max_tokens;
    int tty;
    struct rp_session *sessions;
    int n_sessions, cap_sessions;
    struct rp_row *rows;
    int64_t n_rows;
    double elapsed_s;
};

/* Writes out_dir/report.json, turns.csv and report.html (plots through gnuplot when it is
 * installed). Returns 0 or -1 (a file could not be written; said on stderr). */
int ax__replay_report(struct rp_run *run);

#endif
