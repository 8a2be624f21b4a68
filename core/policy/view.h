/* anthroxy_view.h - the request view (view.c) and the policy engine's shared internals.
 *
 * Internal to policy.c, policy_api.c and view.c (the ax__ tier). A view is a userdata over
 * a cJSON node, valid only while the hook scope it was made in is the active one. Writes go
 * straight into the cJSON tree; each one records in the scope's undo log what it replaced,
 * so commit only frees the replaced nodes and discard undoes the log backwards. Nodes taken
 * out of the tree are kept (not freed) until the scope ends, so every view made in a scope
 * points at live memory for the whole scope. */
#ifndef ANTHROXY_VIEW_H
#define ANTHROXY_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <lua.h>

#define AX_VIEW_MT "anthroxy.view"
#define AX_JBOX_MT "anthroxy.jbox"

struct ax__undo;
struct ax__acache;

/* Token estimates of one request's messages, kept while they do not change, so that the
 * policies of a chain estimating the same conversation walk it once. Keyed by message node;
 * a write through a view under a message forgets that message, one under system or tools
 * (or to those members) forgets that part; freeing nodes (commit, discard) forgets all. */
struct ax__memo_entry {
    const cJSON *msg;
    int64_t tokens;
};
struct ax__tokmemo {
    const cJSON *root; /* the tree the entries belong to */
    struct ax__memo_entry *e;
    size_t cap, n;
    int64_t sys_tokens, tools_tokens; /* ax_tokens_request of {system} / {tools} alone */
    int sys_ok, tools_ok;
    uint64_t hits, misses;
};
void ax__memo_reset(struct ax__tokmemo *m, const cJSON *root);
void ax__memo_free(struct ax__tokmemo *m);
/* ax_tokens_message(msg) / ax_tokens_request(req), through the memo when they are the
 * memo's root and one of its messages. */
int64_t ax__memo_message(struct ax__tokmemo *m, const cJSON *msg);
int64_t ax__memo_request(struct ax__tokmemo *m, const cJSON *req);

/* One hook call's writes. */
struct ax__scope {
    uint64_t id;          /* 0: not open */
    int readonly;         /* writes raise (on_response) */
    struct ax__undo *log; /* undo log, in write order */
    size_t n_log, cap_log;
    struct ax__acache *cache; /* array child-pointer caches, keyed by array node */
    size_t cache_cap, cache_n;
    size_t *charge;           /* JSON bytes written by this scope are added here (may be NULL) */
    size_t charge_max;        /* ... and a write pushing *charge past this raises */
    size_t *charge_extra;     /* counted against charge_max too (the request's Lua memory) */
    int *charge_hit;          /* set to 1 when a write is refused for the cap (may be NULL) */
    struct ax__tokmemo *memo; /* told about every write (may be NULL) */
};

/* Per lua_State view state; every view function gets it as upvalue 1. */
struct ax__vstate {
    struct ax__scope *cur; /* the scope whose views are valid now, or NULL */
    uint64_t next_id;
};

/* Registers the view and box metatables and the marker tables in L's registry. */
void ax__view_init(lua_State *L, struct ax__vstate *vs);

/* Opens a scope (fresh id) / ends it: commit frees what the writes replaced, discard undoes
 * every write (the tree is then exactly as when the scope opened). Both free the caches and
 * the log and leave the scope closed (id 0). Neither touches vs->cur. */
void ax__scope_open(struct ax__vstate *vs, struct ax__scope *sc, int readonly);
void ax__scope_commit(struct ax__scope *sc);
void ax__scope_discard(struct ax__scope *sc);

/* Pushes a view of node, bound to scope sc (which must be open). */
void ax__view_push(lua_State *L, struct ax__vstate *vs, struct ax__scope *sc, cJSON *node);

/* Pushes node as a plain Lua value (deep copy; tables marked object/array). May raise. */
void ax__json_push_table(lua_State *L, const cJSON *node);

/* Returns the cJSON node for the value at idx: a valid view's node (borrowed), or a
 * conversion of a Lua value into a new tree owned by a box userdata pushed on the stack
 * (*boxed = 1; pop it when done, the box frees the tree). Raises on unconvertible values. */
const cJSON *ax__json_arg(lua_State *L, int idx, int *boxed);

/* Converts the Lua value at idx into a new cJSON tree the caller owns. Raises on failure (the
 * partial tree is freed by the garbage collector then). */
cJSON *ax__json_from_lua(lua_State *L, int idx);

/* For the view at idx: its node, depth below the root (0 = the root) and, at depth >= 1,
 * the root's member it lives under. Returns 0 when idx is not a valid view. */
int ax__view_info(lua_State *L, int idx, cJSON **node, int *depth, cJSON **field);

/* Pushes ax.json.null. */
void ax__push_null(lua_State *L);

/* Adds the view/json functions to the table at the top of the stack (the anthroxy module):
 * json = {encode, decode, null, object, array, totable, type}, is_view, ipairs, pairs,
 * insert, remove, len. */
void ax__view_open_api(lua_State *L, struct ax__vstate *vs);

/* ---- engine internals shared by policy.c and policy_api.c ------------------------------ */

#include <uv.h>

#include "anthroxy_error.h"
#include "anthroxy_policy.h"

/* What a running coroutine is charged with: instructions and memory of one hook call (or of
 * a chain load). The engine points cur_rs at the one running. */
struct ax__run_slot {
    lua_State *co;
    uint64_t instr, budget;
    int budget_hit;
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
    cJSON *settings;           /* {key: {value, source}} for status */
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
    int has_hook[AX_HOOK_COUNT];
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

    char *chain_path, *lua_dir;
    struct ax__gen *gen; /* in force */
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

    uv_idle_t idle; /* runs deferred done callbacks */
    struct ax_policy_req *done_head, *done_tail;
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

    /* the run in progress */
    int running, in_hook, cancelled, queued;
    enum ax_hook hook;
    cJSON *tree;
    const cJSON *aux;
    cJSON *before; /* trace only */
    ax_policy_done_fn done;
    void *done_ud;
    int idx;   /* policy index in gen */
    int retry; /* AX_HOOK_UPSTREAM_ERROR: some policy returned true */
    int rc;
    struct ax_error err;
    struct ax__scope scope;
    struct ax__tokmemo memo; /* estimates of this run's tree (AX_HOOK_REQUEST, ..._ERROR) */
    struct ax__pend *pend;
    int64_t saved_session[3]; /* prune_count, overflow_count, forced_tool_turns at hook start */
    double saved_scale;
    struct ax_policy_req *qnext, *qprev;
};

/* policy.c */
struct ax_policy_engine *ax__engine_of(lua_State *L);
const char *ax__req_policy_name(const struct ax_policy_req *pr);
/* Parks the running request on p (the caller then yields) / resumes it with nargs values
 * pushed on its coroutine. */
void ax__req_park(struct ax_policy_req *pr, struct ax__pend *p);
void ax__req_wake(struct ax_policy_req *pr, int nargs);
void ax__pend_release(struct ax__pend *p); /* frees p once its handles are closed */

/* policy_api.c: pushes the `anthroxy` module table (built once per state) */
void ax__api_open(lua_State *L, struct ax_policy_engine *eng);
/* Builds the shared read-only sandbox base; pushes it. */
void ax__sandbox_base(lua_State *L, struct ax_policy_engine *eng);
/* Pushes ax.fail's error-object metatable (to recognise the object). */
int ax__is_fail(lua_State *L, int idx, struct ax_error *err);

#endif
