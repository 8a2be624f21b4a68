/* anthroxy_policy.h - the Lua policy engine: chain generations, one coroutine per request.
 *
 * One lua_State per engine (per loop). A chain file lists policy modules; a loaded chain is a
 * "generation" (ref-counted); each request pins the generation current when it starts and
 * finishes on it even if a reload swaps in a newer one. Hooks run inside the request's own
 * coroutine over a copy-on-write view of the cJSON tree; a hook that succeeds commits its
 * writes into the tree, one that fails (error, instruction budget, memory cap) changes
 * nothing. docs/policies.md is the Lua-side contract. Everything runs on the loop thread. */
#ifndef ANTHROXY_POLICY_H
#define ANTHROXY_POLICY_H

#include <stdint.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "anthroxy_config.h"
#include "anthroxy_error.h"

struct ax_policy_engine;
struct ax_policy_req;
struct ax_upstream;   /* core/anthroxy_upstream.h */
struct ax_monitor;    /* core/anthroxy_monitor.h */
struct ax_session;    /* core/anthroxy_monitor.h */
struct ax_exp_stats;  /* core/anthroxy_experiment.h */
struct ax_experiment; /* core/anthroxy_experiment.h */

enum ax_hook {
    AX_HOOK_REQUEST,          /* on_request(req, ctx): the Anthropic request, writable */
    AX_HOOK_UPSTREAM_REQUEST, /* on_upstream_request(oreq, ctx): the OpenAI request */
    AX_HOOK_RESPONSE,         /* on_response(resp, ctx): the final Anthropic message, read-only */
    AX_HOOK_UPSTREAM_ERROR,   /* on_upstream_error(err, req, ctx): may edit req, return true */
    AX_HOOK_ROUTE             /* on_route(req, ctx, fleet): read-only; returns upstream name(s) */
};
#define AX_HOOK_COUNT 5

struct ax_policy_env {
    uv_loop_t *loop;
    const struct ax_config *cfg;             /* policies_path, lua_dir, budgets, fail-closed;
                                                borrowed, must outlive the engine */
    struct ax_upstream *up;                  /* for ax.tokenize / ax.complete (may be NULL) */
    struct ax_monitor *mon;                  /* may be NULL */
    int64_t (*context_window)(void *ud);     /* current window (configured or probed); may be
                                                NULL: cfg->context_window, else 131072 */
    const char *(*upstream_model)(void *ud); /* model for ax.complete requests; may be NULL */
    struct ax_exp_stats *stats;              /* ax.count's counters; borrowed, may be NULL
                                                (the engine then keeps its own) */
    void *ud;
};

/* Creates the Lua state and loads the chain (cfg->policies_path, else AX_POLICY_DIR
 * "/default.lua"; the runtime Lua from cfg->lua_dir, else AX_LUA_DIR). Fails with AX_ELUA and
 * err (500 api_error naming file and line) when the chain does not compile or validate.
 * Chain files are read synchronously here: this runs at start-up, off the request path. */
int ax_policy_engine_new(const struct ax_policy_env *env, struct ax_policy_engine **out,
                         struct ax_error *err);

/* Closes the engine's uv handles (fs watchers, debounce timer, deferral handles) and frees
 * everything from the loop once they are closed; on_closed (may be NULL) runs then. Requests
 * still alive must have been cancelled/freed before. */
void ax_policy_engine_close(struct ax_policy_engine *eng, void (*on_closed)(void *ud), void *ud);

/* Same as ax_policy_engine_close(eng, NULL, NULL): the memory goes once the loop has run the
 * close callbacks (uv_run after this call). */
void ax_policy_engine_free(struct ax_policy_engine *eng);

/* Watches the chain's directory, every policy file's directory and the lua dir with
 * uv_fs_event (editors save by rename, so directories, not files); changes are debounced
 * (200 ms) and trigger ax_policy_engine_reload. Returns 0 or AX_EIO. */
int ax_policy_engine_watch(struct ax_policy_engine *eng);

/* Recompiles the chain under pcall into a new generation and swaps it in; on failure the
 * current generation stays and last_error records why. Reload is rare (SIGHUP, a saved
 * file): the files are small and read synchronously, outside any request callback.
 * Requests in flight keep the generation they pinned. */
void ax_policy_engine_reload(struct ax_policy_engine *eng);

/* "name.key" = value (parsed as number, true/false, else string): the highest precedence
 * (above environment and chain). Takes effect at the next load: call ax_policy_engine_reload()
 * after the last override. Returns 0, AX_EINVAL (no dot, empty part) or AX_ENOMEM. */
int ax_policy_engine_set_override(struct ax_policy_engine *eng, const char *name_dot_key,
                                  const char *value);

/* {"generation": n, "loaded_at": "ISO-8601", "chain": path, "files": [..],
 *  "policies": [{"name", "file", "hooks": [..], "settings": {..}}],
 *  "last_error": string|null, "last_error_at": ..., "errors": n, "budget_kills": n,
 *  "memory_kills": n, "failures": n, "lua_memory": bytes, "requests_in_flight": n}.
 * Caller owns the result. */
cJSON *ax_policy_engine_status(const struct ax_policy_engine *eng);

/* The experiment of the generation in force (borrowed: valid until the next reload, so use
 * it within the callback that asked), or NULL when none is set. */
const struct ax_experiment *ax_policy_engine_experiment(const struct ax_policy_engine *eng);

/* Whether the generation in force has an arm of that name ("default" without experiment). */
int ax_policy_engine_has_arm(const struct ax_policy_engine *eng, const char *arm);

/* Generation number now in force (1 after _new, +1 per successful reload). */
uint64_t ax_policy_engine_generation(const struct ax_policy_engine *eng);

/* True when the generation in force has at least one hook of that kind (lets the caller skip
 * work, e.g. building the on_response summary). */
int ax_policy_engine_has_hook(const struct ax_policy_engine *eng, enum ax_hook hook);

struct ax_policy_req_info {
    const char *request_id, *session_id, *client_model, *user_agent, *arm;
    const char *anthropic_beta; /* the anthropic-beta header (ctx.anthropic_beta), or NULL */
    int stream;
    int count_only;             /* count_tokens: the policies run on a copy, for report_scale
                                   only (ctx.count_only) */
    struct ax_session *session; /* referenced by the caller for the request's life; may be NULL
                                   (ctx.session is then a detached, zeroed table) */
};

/* Creates the per-request state: pins the current generation, a fresh coroutine and ctx;
 * the request runs info->arm's chain (NULL or "": the first arm, "default" without an
 * experiment). The strings in info are copied. Returns 0, AX_EINVAL (no arm of that name in
 * the generation in force) or AX_ENOMEM. */
int ax_policy_req_new(struct ax_policy_engine *eng, const struct ax_policy_req_info *info,
                      struct ax_policy_req **out);

typedef void (*ax_policy_done_fn)(struct ax_policy_req *pr, int rc, const struct ax_error *err,
                                  void *ud);

/* Runs that hook of every policy in chain order, each over a view of *tree (committed into
 * the cJSON tree in place when that policy's hook succeeds; the root pointer never changes).
 * For AX_HOOK_UPSTREAM_ERROR, tree is the Anthropic request and aux the error object
 * ({status, type, message, n_prompt_tokens?, n_ctx?}; copied: the caller may free it once
 * this returns); rc 1 = some policy returned true:
 * retry with the changed tree. For AX_HOOK_RESPONSE the tree is read-only (writes raise).
 * rc 0 ok, rc < 0: fail the request with err (ax.fail, or a policy error when fail-closed).
 * done runs exactly once and NEVER before this function returns (deferred with a uv check
 * when nothing yields). A request with no hooks of that kind still completes through done.
 * tree must stay alive and untouched by the caller until done. Only one run at a time per
 * request: returns AX_EBUSY if one is in progress (done is then not called). */
int ax_policy_req_run(struct ax_policy_req *pr, enum ax_hook hook, cJSON *tree, const cJSON *aux,
                      ax_policy_done_fn done, void *ud);

/* What the answer's translation did to tool calls, for the hooks that run next (on_response):
 * ctx.tool_calls = {text_calls = N, repaired = N, schema_failures = N, first_failure = "NAME:
 * why" or nil}. Loop thread, between runs. */
void ax_policy_req_set_tool_stats(struct ax_policy_req *pr, unsigned text_calls, unsigned repaired,
                                  unsigned schema_failures, const char *first_failure);

/* ctx.report_scale as policies left it (1.0 by default). */
/* Whether the generation this request pinned has that hook: without one, a caller may go on
 * at once instead of running (and waiting a loop turn for) an empty chain. */
int ax_policy_req_has_hook(const struct ax_policy_req *pr, enum ax_hook hook);

double ax_policy_req_report_scale(const struct ax_policy_req *pr);

/* Called after each hook of each policy that succeeded, with the tree before (a copy) and
 * after it; the copy is made only while a trace is set, so it costs nothing otherwise.
 * `--record` and `anthroxy replay` use it to say what each policy changed. */
typedef void (*ax_policy_trace_fn)(void *ud, const char *policy, enum ax_hook hook,
                                   const cJSON *before, const cJSON *after);
void ax_policy_req_set_trace(struct ax_policy_req *pr, ax_policy_trace_fn fn, void *ud);

/* What on_route decided in the last AX_HOOK_ROUTE run: the first policy returning a string
 * or a list of strings wins (an optional second result, a string, is the upstream model).
 * Returns the number of names (0: no policy chose; the fleet routes by model), each
 * borrowed until the next run or free; *model (may be NULL) gets the model or NULL. */
#define AX_ROUTE_MAX_NAMES 8
int ax_policy_req_route(const struct ax_policy_req *pr, const char *const **names,
                        const char **model);

/* Cancel: a parked coroutine is closed, never resumed; done is NOT called afterwards (also
 * when the run's done was already deferred). The request may then only be freed. */
void ax_policy_req_cancel(struct ax_policy_req *pr);

/* Frees the request (cancelling a run in progress first) and unpins its generation. */
void ax_policy_req_free(struct ax_policy_req *pr);

/* `anthroxy check CHAIN_OR_POLICY [REQUEST.json]`: compiles the chain, runs on_request and
 * on_upstream_request on a sample (or the given) request with no upstream, prints the OpenAI
 * request and what each policy changed. Returns the process exit code. */
int ax_policy_check_main(int argc, char **argv);

/* `anthroxy test-lua FILE.lua`: runs a Lua test file in the real sandbox with
 * lua/anthroxy/testing.lua; exit 0 on success, 1 with file:line messages on failure. */
int ax_policy_test_lua_main(int argc, char **argv);

#endif
