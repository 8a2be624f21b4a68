/* internal.h - the policy engine's private structs and the calls between its files.
 *
 * Only the files of core/policy/ include this; everything outside the folder goes through
 * anthroxy_policy.h. engine.c owns the state (allocator, budget, sandbox), load.c the
 * generations, run.c the per-request runs, api.c the `anthroxy` module, tools.c the
 * commands; view.h and lua_json.h are the view's and the conversions' own contracts. */
#ifndef ANTHROXY_POLICY_INTERNAL_H
#define ANTHROXY_POLICY_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <lua.h>

#include <uv.h>

#include "anthroxy_error.h"
#include "anthroxy_experiment.h"
#include "anthroxy_list.h"
#include "anthroxy_policy.h"
#include "lua_json.h"
#include "view.h"

#define AX__SESS_COUNTERS_MAX 8 /* writable ctx.session counters (run.c's table) */

/* What a running coroutine is charged with: instructions and memory of one hook call (or of
 * a chain load). The engine points cur_rs at the one running. */
struct ax__run_slot {
    lua_State *co;
    uint64_t instr, budget;
    uint64_t deadline; /* uv_hrtime() past which the run is stopped; 0: none */
    int budget_hit, wall_hit;
    size_t mem, json_mem, mem_max;
    int mem_hit;
};

/* A waiting API call (ax.sleep, ax.tokenize, ax.complete); outlives a cancelled request. */
struct ax__pend {
    struct ax_policy_req *pr; /* NULL once the request gave up on it */
    uv_timer_t timer;
    int has_timer;
    struct ax_xfer *xfer;
    char *body; /* kept alive for the upstream fetch */
    int kind;
};

struct ax__gen_policy {
    char *name, *file;
    int fn_ref[AX_HOOK_COUNT]; /* LUA_NOREF when absent */
    int settings_ref;          /* read-only proxy */
    int old_error_order;       /* on_upstream_error(err, req, ctx): deprecated, see load.c */
    cJSON *settings;           /* {key: {value, source}} for status */
};

/* One arm's chain: policies [first, end) of the generation's flat list. Without an
 * experiment, one arm "default" holds them all. */
struct ax__gen_arm {
    char *name;
    int first, end;
    int has_hook[AX_HOOK_COUNT];
};

struct ax__gen {
    int refs;
    uint64_t id;
    int64_t loaded_at_ms; /* wall clock */
    struct ax__gen_policy *p;
    int n;
    int loaded_ref; /* this generation's package.loaded */
    int require_ref;
    char **files;
    int n_files;
    int has_hook[AX_HOOK_COUNT]; /* in any arm */
    struct ax__gen_arm *arms;
    int n_arms;
    struct ax_experiment *exp; /* the experiment file this generation loaded, or NULL */
};

struct ax_policy_engine {
    struct ax_policy_env env;
    lua_State *L;
    struct ax__vstate vs;
    int test_mode; /* `anthroxy test-lua`: no loop; ax.sleep returns at once, fakes answer */

    size_t mem_total, mem_max, req_mem_max;
    struct ax__run_slot *cur_rs; /* charged now, or NULL */
    struct ax_policy_req *cur;   /* request whose coroutine runs now, or NULL */
    int protected_alloc;         /* inside a protected call: allocations may fail */
    uint64_t budget;
    uint64_t run_max_ns, sleep_max_ms; /* wall clock: one resume, ax.sleep per hook call */

    char *chain_path, *lua_dir;
    char *exp_path;                         /* --experiment, or NULL */
    struct ax_exp_stats *stats, *own_stats; /* ax.count: env's, else own_stats */
    struct ax__gen *gen;                    /* in force */
    struct ax__gen *building;
    uint64_t gen_counter;
    int api_ref, base_ref, fail_mt_ref, session_mt_ref;
    char **ov_keys, **ov_vals;
    int n_ov;

    char last_error[1024];
    int64_t last_error_at_ms;
    uint64_t n_errors, n_budget_kills, n_memory_kills, n_failures, n_reloads, n_reload_errors;
    int in_flight;
    int gens_alive; /* the one in force plus older ones still pinned by requests */

    uv_idle_t idle;      /* runs deferred done callbacks */
    struct ax_list done; /* requests whose done callback is deferred (done_link) */
    uv_timer_t debounce;
    uv_fs_event_t **watch; /* one per directory, each its own allocation */
    char **watch_dirs;
    int n_watch, watching;
    int handles_init, pending_closes, closing;
    void (*on_closed)(void *ud);
    void *on_closed_ud;

    /* `anthroxy check`: called after each successful hook with the tree before and after */
    void (*trace)(void *ud, const char *policy, enum ax_hook hook, const cJSON *before,
                  const cJSON *after);
    void *trace_ud;
};

struct ax_policy_req {
    struct ax_policy_engine *eng;
    struct ax__gen *gen;
    struct ax__run_slot rs;
    int co_ref, ctx_ref, states_ref;
    char *request_id, *session_id, *client_model, *user_agent, *arm;
    int stream;
    struct ax_session *session;
    double report_scale;
    const struct ax__gen_arm *arm_p; /* the arm's range in gen */

    /* the run in progress */
    int running, in_hook, cancelled, queued;
    enum ax_hook hook;
    cJSON *tree;
    const cJSON *aux;
    cJSON *aux_own;           /* aux's copy: later policies' hooks read it after a wait */
    cJSON *before;            /* trace only */
    ax_policy_trace_fn trace; /* per request (record, replay); eng->trace is `check`'s */
    void *trace_ud;
    ax_policy_done_fn done;
    void *done_ud;
    int idx;   /* policy index in gen */
    int retry; /* AX_HOOK_UPSTREAM_ERROR: some policy returned true */
    /* AX_HOOK_ROUTE: the first policy's choice (n_route 0: none yet) */
    char *route_names[AX_ROUTE_MAX_NAMES + 1]; /* NULL-terminated */
    int n_route;
    char *route_model;
    int rc;
    struct ax_error err;
    struct ax__scope scope;
    struct ax__tokmemo memo; /* estimates of this run's tree (AX_HOOK_REQUEST, ..._ERROR) */
    struct ax__pend *pend;
    uint64_t slept_ms;                            /* ax.sleep asked for in this hook call */
    int64_t saved_session[AX__SESS_COUNTERS_MAX]; /* run.c's session counters at hook start */
    double saved_scale;
    struct ax_list done_link; /* on eng->done while queued */
};

#define AX__HOOK_STEP 1000 /* instructions between budget checks */

extern const char *const ax__hook_names[AX_HOOK_COUNT]; /* "on_request", ... */

/* ---- engine.c ---------------------------------------------------------------------------- */

struct ax_policy_engine *ax__engine_of(lua_State *L);
/* A new engine for chain (NULL: cfg's, else the shipped default) with its Lua state set up
 * and no generation; test_mode is `anthroxy test-lua`'s (no loop, faked upstream calls). */
int ax__engine_create(const struct ax_policy_env *env, const char *chain, int test_mode,
                      struct ax_policy_engine **out);
/* Frees an engine whose uv handles were never initialised or are closed. */
void ax__engine_destroy(struct ax_policy_engine *eng);
/* The deferral idle and the debounce timer (nothing without a loop). */
void ax__engine_init_handles(struct ax_policy_engine *eng);
/* lua_pcall on the main state with allocations allowed to fail (a protected call). */
int ax__engine_pcall(struct ax_policy_engine *eng, int nargs, int nres);
/* The instruction-count hook every budgeted coroutine gets (AX__HOOK_STEP). */
void ax__count_hook(lua_State *L, lua_Debug *ar);
/* Charges n instructions of work done in C to the running hook; past its budget (or its
 * wall-clock bound) raises the budget error. Nothing outside a run. */
void ax__charge(lua_State *L, uint64_t n);
/* Whether the running hook is being stopped (budget, wall clock or memory cap): the
 * sandbox's pcall and coroutine.resume then let the error through. */
int ax__run_killed(lua_State *L);
void ax__unref(lua_State *L, int *ref); /* luaL_unref unless NOREF; leaves LUA_NOREF */
char *ax__strdup(const char *s);        /* NULL reads as "" */
/* Reads a small file synchronously: load and reload only, never on a request's path. */
char *ax__read_file(const char *path, size_t *len, char *err, size_t errn);
/* Pushes a fresh sandbox environment whose require is the closure at require_idx. */
void ax__push_newenv(lua_State *L, struct ax_policy_engine *eng, int require_idx);
/* Creates g's package.loaded and require; leaves the require closure on the stack. */
void ax__gen_make_require(lua_State *L, struct ax_policy_engine *eng, struct ax__gen *g);

/* ---- match.c ----------------------------------------------------------------------------- */

/* Sets find, match, gmatch and gsub (budgeted Lua patterns) in the table at the top. */
void ax__match_open(lua_State *L);

/* ---- load.c ------------------------------------------------------------------------------ */

/* Compiles and validates the chain into a new generation and swaps it in; err says why not. */
int ax__engine_load(struct ax_policy_engine *eng, char *err, size_t errn);
void ax__gen_unref(struct ax_policy_engine *eng, struct ax__gen *g);
/* Whether the function at fn_idx is an on_upstream_error of the deprecated (err, req, ctx)
 * order: its first parameter is named err or error. The order of 0.1; it keeps working,
 * with a warning at load, for one release. */
int ax__old_error_order(lua_State *L, int fn_idx);
/* Pushes the privileged host table for chain.lua / testing.lua (require at require_idx). */
void ax__push_host(lua_State *L, struct ax_policy_engine *eng, int require_idx);
/* Compiles <lua dir>/anthroxy/<file> in a sandbox env, calls it and pushes its result. */
void ax__push_runtime_module(lua_State *L, struct ax_policy_engine *eng, const char *file,
                             int require_idx);

/* ---- run.c ------------------------------------------------------------------------------- */

const char *ax__req_policy_name(const struct ax_policy_req *pr);
/* Parks the running request on p (the caller then yields) / resumes it with nargs values
 * pushed on its coroutine. */
void ax__req_park(struct ax_policy_req *pr, struct ax__pend *p);
void ax__req_wake(struct ax_policy_req *pr, int nargs);
void ax__pend_release(struct ax__pend *p); /* frees p once its handles are closed */
/* Registers ctx.session's metatable (its counter methods) in eng->session_mt_ref. */
void ax__session_setup(struct ax_policy_engine *eng);
/* Pushes the names of the writable session counters, as an array (for testing.lua). */
void ax__session_push_counters(lua_State *L);

/* ---- api.c ------------------------------------------------------------------------------- */

/* Pushes the `anthroxy` module table (built once per state). */
void ax__api_open(lua_State *L, struct ax_policy_engine *eng);
/* Whether the value at idx is an ax.fail error object; fills err from it when it is. */
int ax__is_fail(lua_State *L, int idx, struct ax_error *err);
/* Replaces the table at the top with a read-only proxy of it. */
void ax__make_readonly(lua_State *L);
/* The sandbox's print: one INFO line stamped with the request and policy. */
int ax__api_print(lua_State *L);
/* Builds the shared read-only sandbox base (engine.c); pushes it. */
void ax__sandbox_base(lua_State *L, struct ax_policy_engine *eng);

#endif
