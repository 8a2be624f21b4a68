/* run.c - one request's runs: its coroutine, ctx, and each policy's hook in chain order.
 *
 * A run walks the pinned generation's policies; each hook gets a view of the tree (view.c)
 * in a fresh scope, committed when the hook returns and undone when it fails. Calls that
 * wait (api.c) park the coroutine; their completion wakes it here. done callbacks are
 * deferred to a uv_idle so they never run inside ax_policy_req_run. */
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "anthroxy_log.h"
#include "anthroxy_monitor.h"
#include "anthroxy_upstream.h"

#define DEFAULT_WINDOW 131072

static _Thread_local struct ax__run_slot killer_slot = {.budget_hit = 1}; /* per worker thread */

/* ---- session counters ------------------------------------------------------------------ */

/* The session counters policies may write, as ctx.session.<name> or through its methods:
 * filled from the monitor before each hook, written back to it when the hook succeeds and put
 * back when it fails. A new counter is one line here (and its int64_t in struct ax_session). */
static const struct sess_counter {
    const char *name;        /* ctx.session field */
    const char *note, *zero; /* methods adding 1 / setting 0 (NULL: none) */
    size_t off;              /* its int64_t in struct ax_session */
} sess_counters[] = {
    {"prune_count", "note_prune", NULL, offsetof(struct ax_session, prune_count)},
    {"overflow_count", "note_overflow", NULL, offsetof(struct ax_session, overflow_count)},
    {"forced_tool_turns", "note_forced_turn", "reset_forced_turns",
     offsetof(struct ax_session, forced_tool_turns)},
    {"tool_retries", "note_tool_retry", NULL, offsetof(struct ax_session, tool_retries)},
    {"thinking_runaways", "note_thinking_runaway", "reset_thinking_runaways",
     offsetof(struct ax_session, thinking_runaways)},
};
#define N_SESS_COUNTERS (sizeof(sess_counters) / sizeof(sess_counters[0]))
_Static_assert(N_SESS_COUNTERS <= AX__SESS_COUNTERS_MAX, "raise AX__SESS_COUNTERS_MAX");

static int64_t *sess_counter(struct ax_session *s, size_t i)
{
    return (int64_t *)(void *)((char *)s + sess_counters[i].off);
}

/* session:note_x() / session:reset_x(): upvalues are the field and whether to zero it. */
static int sess_method(lua_State *L)
{
    const char *field = lua_tostring(L, lua_upvalueindex(1));
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, field);
    lua_pushinteger(L, lua_toboolean(L, lua_upvalueindex(2)) ? 0 : lua_tointeger(L, -1) + 1);
    lua_setfield(L, 1, field);
    return 0;
}

void ax__session_setup(struct ax_policy_engine *eng)
{
    lua_State *L = eng->L;
    size_t i;

    lua_newtable(L); /* mt */
    lua_newtable(L); /* mt, methods */
    for (i = 0; i < N_SESS_COUNTERS; i++) {
        const char *m[2] = {sess_counters[i].note, sess_counters[i].zero};
        int k;
        for (k = 0; k < 2; k++) {
            if (m[k] == NULL)
                continue;
            lua_pushstring(L, sess_counters[i].name); /* mt, methods, field */
            lua_pushboolean(L, k);                    /* mt, methods, field, zero */
            lua_pushcclosure(L, sess_method, 2);      /* mt, methods, f */
            lua_setfield(L, -2, m[k]);                /* mt, methods */
        }
    }
    lua_setfield(L, -2, "__index"); /* mt */
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable"); /* shared by every request's ctx.session */
    eng->session_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void ax__session_push_counters(lua_State *L)
{
    size_t i;
    lua_createtable(L, (int)N_SESS_COUNTERS, 0);
    for (i = 0; i < N_SESS_COUNTERS; i++) {
        lua_pushstring(L, sess_counters[i].name);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

/* ---- requests ------------------------------------------------------------------------------- */

static int64_t context_window(const struct ax_policy_engine *eng)
{
    int64_t w = 0;
    if (eng->env.context_window != NULL)
        w = eng->env.context_window(eng->env.ud);
    if (w <= 0 && eng->env.cfg != NULL)
        w = eng->env.cfg->context_window;
    return w > 0 ? w : DEFAULT_WINDOW;
}

static lua_State *new_thread(struct ax_policy_engine *eng, int *ref)
{
    lua_State *co = lua_newthread(eng->L);
    lua_sethook(co, ax__count_hook, LUA_MASKCOUNT, AX__HOOK_STEP);
    *ref = luaL_ref(eng->L, LUA_REGISTRYINDEX);
    return co;
}

/* Closes the request's coroutine (to-be-closed variables run, under a slot that stops any
 * loop at once) and gives the request a fresh one. */
static void thread_renew(struct ax_policy_req *pr)
{
    struct ax_policy_engine *eng = pr->eng;
    struct ax__run_slot *saved = eng->cur_rs;

    eng->cur_rs = &killer_slot;
    lua_resetthread(pr->rs.co); /* Lua 5.4.4: one argument */
    eng->cur_rs = saved;
    ax__unref(eng->L, &pr->co_ref);
    pr->rs.co = new_thread(eng, &pr->co_ref);
}

static void setfield_int(lua_State *L, const char *k, int64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

/* Refreshes ctx.session (table at the top) from the monitor. */
static void session_fill(struct ax_policy_req *pr, int64_t window)
{
    lua_State *L = pr->eng->L;
    const struct ax_session *s = pr->session;
    const char *warn = s ? ax_session_warning(s, window) : NULL;
    int i;

    lua_pushstring(L, s ? s->key : (pr->session_id ? pr->session_id : ""));
    lua_setfield(L, -2, "key");
    setfield_int(L, "total_requests", s ? s->total_requests : 0);
    setfield_int(L, "last_input_tokens", s ? s->last_input_tokens : 0);
    setfield_int(L, "last_output_tokens", s ? s->last_output_tokens : 0);
    setfield_int(L, "peak_input_tokens", s ? s->peak_input_tokens : 0);
    for (i = 0; i < (int)N_SESS_COUNTERS; i++)
        setfield_int(L, sess_counters[i].name, s ? *sess_counter(pr->session, (size_t)i) : 0);
    lua_createtable(L, s ? s->n_history : 0, 0);
    for (i = 0; s && i < s->n_history; i++) {
        lua_pushinteger(L, s->history[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "history");
    lua_createtable(L, s ? s->n_fingerprints : 0, 0);
    for (i = 0; s && i < s->n_fingerprints; i++) {
        char hex[17];
        snprintf(hex, sizeof(hex), "%016" PRIx64, s->tool_fingerprints[i]);
        lua_pushstring(L, hex);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "tool_fingerprints");
    lua_pushnumber(L, s ? s->calibration : 1.0);
    lua_setfield(L, -2, "calibration");
    lua_pushnumber(L, s ? ax_session_utilization(s, window) : 0.0);
    lua_setfield(L, -2, "utilization");
    lua_pushstring(L, warn ? warn : "NORMAL");
    lua_setfield(L, -2, "warning_level");
    setfield_int(L, "turns_remaining", s ? ax_session_turns_remaining(s, window) : -1);
}

static void ctx_refresh(struct ax_policy_req *pr)
{
    lua_State *L = pr->eng->L;
    int64_t window = context_window(pr->eng);

    lua_rawgeti(L, LUA_REGISTRYINDEX, pr->ctx_ref); /* ctx */
    setfield_int(L, "context_window", window);
    lua_pushstring(L, ax__hook_names[pr->hook]);
    lua_setfield(L, -2, "hook");
    lua_getfield(L, -1, "session"); /* ctx, session */
    session_fill(pr, window);
    lua_pop(L, 2);
}

int ax_policy_req_new(struct ax_policy_engine *eng, const struct ax_policy_req_info *info,
                      struct ax_policy_req **out)
{
    struct ax_policy_req *pr = calloc(1, sizeof(*pr));
    lua_State *L = eng->L;

    *out = NULL;
    if (pr == NULL)
        return AX_ENOMEM;
    if (eng->gen->n_arms == 0) {
        free(pr);
        return AX_EINVAL;
    }
    pr->arm_p = &eng->gen->arms[0]; /* no arm named: the first (the only one without experiment) */
    if (info->arm != NULL && *info->arm) {
        int i;
        for (i = 0, pr->arm_p = NULL; i < eng->gen->n_arms && pr->arm_p == NULL; i++)
            if (strcmp(eng->gen->arms[i].name, info->arm) == 0)
                pr->arm_p = &eng->gen->arms[i];
        if (pr->arm_p == NULL) {
            free(pr);
            return AX_EINVAL;
        }
    }
    pr->eng = eng;
    pr->request_id = ax__strdup(info->request_id);
    pr->session_id = ax__strdup(info->session_id);
    pr->client_model = ax__strdup(info->client_model);
    pr->user_agent = ax__strdup(info->user_agent);
    pr->arm = ax__strdup(pr->arm_p->name);
    if (!pr->request_id || !pr->session_id || !pr->client_model || !pr->user_agent || !pr->arm) {
        free(pr->request_id);
        free(pr->session_id);
        free(pr->client_model);
        free(pr->user_agent);
        free(pr->arm);
        free(pr);
        return AX_ENOMEM;
    }
    pr->stream = info->stream;
    pr->session = info->session;
    pr->report_scale = 1.0;
    ax_list_init(&pr->done_link);
    pr->gen = eng->gen;
    pr->gen->refs++;
    pr->rs.co = new_thread(eng, &pr->co_ref);

    lua_createtable(L, 0, 24); /* ctx */
    lua_pushstring(L, pr->request_id);
    lua_setfield(L, -2, "request_id");
    lua_pushstring(L, pr->session_id);
    lua_setfield(L, -2, "session_id");
    lua_pushstring(L, pr->client_model);
    lua_setfield(L, -2, "model");
    if (eng->env.upstream_model != NULL) {
        /* the server's upstream model (what model profiles match); a --model-map entry for
         * the client's name shows only in on_upstream_request's oreq.model */
        const char *um = eng->env.upstream_model(eng->env.ud);
        lua_pushstring(L, um != NULL && *um ? um : pr->client_model);
    } else {
        lua_pushstring(L, pr->client_model);
    }
    lua_setfield(L, -2, "upstream_model");
    lua_pushstring(L, pr->arm);
    lua_setfield(L, -2, "arm");
    lua_pushboolean(L, pr->stream);
    lua_setfield(L, -2, "stream");
    lua_pushstring(L, pr->user_agent);
    lua_setfield(L, -2, "user_agent");
    if (info->anthropic_beta != NULL) {
        lua_pushstring(L, info->anthropic_beta);
        lua_setfield(L, -2, "anthropic_beta");
    }
    lua_pushboolean(L, info->count_only);
    lua_setfield(L, -2, "count_only");
    lua_pushnumber(L, eng->env.cfg ? eng->env.cfg->prune_threshold : 0.75);
    lua_setfield(L, -2, "prune_threshold");
    lua_pushnumber(L, 1.0);
    lua_setfield(L, -2, "report_scale");
    lua_createtable(L, 0, 20); /* ctx, session (sized for session_fill's fields) */
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->session_mt_ref);
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "session"); /* ctx */
    pr->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    pr->states_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    eng->in_flight++;
    *out = pr;
    return 0;
}

void ax_policy_req_set_tool_stats(struct ax_policy_req *pr, unsigned text_calls, unsigned repaired,
                                  unsigned schema_failures, const char *first_failure)
{
    lua_State *L = pr->eng->L;

    lua_rawgeti(L, LUA_REGISTRYINDEX, pr->ctx_ref); /* ctx */
    lua_createtable(L, 0, 4);                       /* ctx, tc */
    setfield_int(L, "text_calls", text_calls);
    setfield_int(L, "repaired", repaired);
    setfield_int(L, "schema_failures", schema_failures);
    if (first_failure != NULL && first_failure[0] != '\0') {
        lua_pushstring(L, first_failure);     /* ctx, tc, why */
        lua_setfield(L, -2, "first_failure"); /* ctx, tc */
    }
    lua_setfield(L, -2, "tool_calls"); /* ctx */
    lua_pop(L, 1);                     /* (empty) */
}

double ax_policy_req_report_scale(const struct ax_policy_req *pr)
{
    return pr->report_scale;
}

void ax_policy_req_set_trace(struct ax_policy_req *pr, ax_policy_trace_fn fn, void *ud)
{
    pr->trace = fn;
    pr->trace_ud = ud;
}

/* Reads ctx.<field> as an integer (the ctx table is at the top of the main stack). */
static int64_t ctx_session_int(lua_State *L, const char *field)
{
    int64_t v;
    lua_getfield(L, -1, "session");
    lua_getfield(L, -1, field);
    v = (int64_t)lua_tointeger(L, -1);
    lua_pop(L, 2);
    return v;
}

static void run_on_idle(uv_idle_t *h);

static void enqueue_done(struct ax_policy_req *pr)
{
    struct ax_policy_engine *eng = pr->eng;
    pr->queued = 1;
    ax_list_push_back(&eng->done, &pr->done_link);
    if (!uv_is_active((uv_handle_t *)&eng->idle))
        uv_idle_start(&eng->idle, run_on_idle);
}

static void dequeue_done(struct ax_policy_req *pr)
{
    if (!pr->queued)
        return;
    ax_list_unlink(&pr->done_link);
    pr->queued = 0;
}

/* Runs the deferred done callbacks, oldest first. */
static void run_on_idle(uv_idle_t *h)
{
    struct ax_policy_engine *eng = h->data;
    struct ax_list *n;

    while ((n = ax_list_first(&eng->done)) != NULL) {
        struct ax_policy_req *pr = AX_LIST_ENTRY(n, struct ax_policy_req, done_link);
        ax_policy_done_fn done = pr->done;
        void *ud = pr->done_ud;
        struct ax_error e = pr->err;
        int rc = pr->rc;
        dequeue_done(pr);
        pr->running = 0;
        if (rc == 0 && pr->hook == AX_HOOK_UPSTREAM_ERROR && pr->retry)
            rc = 1;
        done(pr, rc, &e, ud); /* may free pr or start its next run */
    }
    uv_idle_stop(h);
}

static void run_finish(struct ax_policy_req *pr)
{
    enqueue_done(pr);
}

/* on_upstream_error's err table (a plain copy of aux). */
static void push_error_arg(struct ax_policy_req *pr, lua_State *co)
{
    if (pr->aux != NULL)
        ax__json_push_table(co, pr->aux);
    else
        lua_newtable(co);
}

/* Pushes the hook's arguments on the coroutine; returns their count. */
static int hook_begin(struct ax_policy_req *pr)
{
    struct ax_policy_engine *eng = pr->eng;
    struct ax__gen_policy *p = &pr->gen->p[pr->idx];
    lua_State *L = eng->L, *co = pr->rs.co;
    int i;

    ax__scope_open(&eng->vs, &pr->scope, pr->hook == AX_HOOK_RESPONSE || pr->hook == AX_HOOK_ROUTE);
    pr->scope.charge = &pr->rs.json_mem;
    pr->scope.charge_extra = &pr->rs.mem;
    pr->scope.charge_max = eng->req_mem_max;
    pr->scope.charge_hit = &pr->rs.mem_hit;
    pr->scope.memo = pr->memo.root != NULL ? &pr->memo : NULL;
    pr->rs.instr = 0;
    pr->rs.budget = eng->budget;
    pr->rs.budget_hit = pr->rs.mem_hit = pr->rs.wall_hit = 0;
    pr->slept_ms = 0;
    pr->rs.mem = pr->rs.json_mem = 0;
    pr->rs.mem_max = eng->req_mem_max;

    lua_rawgeti(L, LUA_REGISTRYINDEX, pr->ctx_ref);      /* ctx */
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->settings_ref);  /* ctx, settings */
    lua_setfield(L, -2, "settings");                     /* ctx */
    lua_rawgeti(L, LUA_REGISTRYINDEX, pr->states_ref);   /* ctx, states */
    if (lua_rawgeti(L, -1, pr->idx + 1) != LUA_TTABLE) { /* ctx, states, st */
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawseti(L, -3, pr->idx + 1);
    }
    lua_setfield(L, -3, "state"); /* ctx, states */
    lua_pop(L, 1);                /* ctx */
    for (i = 0; i < (int)N_SESS_COUNTERS; i++)
        pr->saved_session[i] = ctx_session_int(L, sess_counters[i].name);
    pr->saved_scale = pr->report_scale;
    lua_pop(L, 1);

    if (eng->trace != NULL || pr->trace != NULL)
        pr->before = cJSON_Duplicate(pr->tree, 1);
    lua_settop(co, 0);
    lua_rawgeti(co, LUA_REGISTRYINDEX, p->fn_ref[pr->hook]);
    if (pr->hook == AX_HOOK_UPSTREAM_ERROR && p->old_error_order)
        push_error_arg(pr, co); /* the deprecated (err, req, ctx) */
    ax__view_push(co, &eng->vs, &pr->scope, pr->tree);
    lua_rawgeti(co, LUA_REGISTRYINDEX, pr->ctx_ref);
    if ((pr->hook == AX_HOOK_UPSTREAM_ERROR && !p->old_error_order) || pr->hook == AX_HOOK_ROUTE)
        push_error_arg(pr, co); /* (req, ctx, err), or (req, ctx, fleet) */
    pr->in_hook = 1;
    return pr->hook == AX_HOOK_UPSTREAM_ERROR || pr->hook == AX_HOOK_ROUTE ? 3 : 2;
}

static void hook_commit(struct ax_policy_req *pr)
{
    struct ax_policy_engine *eng = pr->eng;
    lua_State *L = eng->L;
    int i;
    double scale;

    if (eng->trace != NULL && pr->before != NULL)
        eng->trace(eng->trace_ud, ax__req_policy_name(pr), pr->hook, pr->before, pr->tree);
    if (pr->trace != NULL && pr->before != NULL)
        pr->trace(pr->trace_ud, ax__req_policy_name(pr), pr->hook, pr->before, pr->tree);
    cJSON_Delete(pr->before);
    pr->before = NULL;
    ax__scope_commit(&pr->scope);
    lua_rawgeti(L, LUA_REGISTRYINDEX, pr->ctx_ref); /* ctx */
    for (i = 0; i < (int)N_SESS_COUNTERS && pr->session != NULL; i++) {
        int64_t v = ctx_session_int(L, sess_counters[i].name);
        if (v != pr->saved_session[i])
            *sess_counter(pr->session, (size_t)i) = v;
    }
    lua_getfield(L, -1, "report_scale");
    scale = lua_tonumber(L, -1);
    lua_pop(L, 2);
    if (scale > 0 && isfinite(scale))
        pr->report_scale = scale;
}

/* Undoes what the failed hook did to the tree, ctx.session and ctx.report_scale. */
static void hook_discard(struct ax_policy_req *pr)
{
    lua_State *L = pr->eng->L;
    int i;

    cJSON_Delete(pr->before);
    pr->before = NULL;
    ax__scope_discard(&pr->scope);
    lua_rawgeti(L, LUA_REGISTRYINDEX, pr->ctx_ref); /* ctx */
    lua_getfield(L, -1, "session");                 /* ctx, session */
    if (lua_istable(L, -1))
        for (i = 0; i < (int)N_SESS_COUNTERS; i++)
            setfield_int(L, sess_counters[i].name, pr->saved_session[i]);
    lua_pop(L, 1);
    lua_pushnumber(L, pr->saved_scale);
    lua_setfield(L, -2, "report_scale");
    lua_pop(L, 1);
}

static void where_of(lua_State *co, char *out, size_t n)
{
    lua_Debug ar;
    int level;
    out[0] = 0;
    for (level = 0; lua_getstack(co, level, &ar); level++) {
        if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0) {
            snprintf(out, n, " at %s:%d", ar.short_src, ar.currentline);
            return;
        }
    }
}

enum fail_kind { FK_ERROR, FK_BUDGET, FK_MEMORY };

static void route_clear(struct ax_policy_req *pr)
{
    int i;

    for (i = 0; i < pr->n_route; i++) {
        free(pr->route_names[i]);
        pr->route_names[i] = NULL;
    }
    pr->n_route = 0;
    free(pr->route_model);
    pr->route_model = NULL;
}

static void route_add(struct ax_policy_req *pr, lua_State *co, int idx)
{
    size_t len;
    const char *s;

    if (pr->n_route >= AX_ROUTE_MAX_NAMES || lua_type(co, idx) != LUA_TSTRING)
        return;
    s = lua_tolstring(co, idx, &len);
    if (len == 0 || len > 255 || strlen(s) != len)
        return;
    if ((pr->route_names[pr->n_route] = strdup(s)) != NULL)
        pr->n_route++;
}

/* on_route's results: a name or a list of names, then optionally the upstream model. Other
 * values (nil, numbers, empty strings) choose nothing: the next policy may. Runs on the
 * coroutine after it returned, outside any hook budget; reads with raw access only. */
static void route_take(struct ax_policy_req *pr, lua_State *co, int nres)
{
    int first = lua_gettop(co) - nres + 1;
    lua_Integer i;

    if (lua_type(co, first) == LUA_TSTRING) {
        route_add(pr, co, first);
    } else if (lua_type(co, first) == LUA_TTABLE) {
        lua_checkstack(co, 2);
        for (i = 1; i <= AX_ROUTE_MAX_NAMES; i++) {
            lua_rawgeti(co, first, i); /* ..., name */
            route_add(pr, co, -1);
            lua_pop(co, 1); /* ... */
        }
    }
    if (pr->n_route > 0 && nres > 1 && lua_type(co, first + 1) == LUA_TSTRING) {
        const char *m = lua_tostring(co, first + 1);
        if (*m != '\0' && strlen(m) < 256)
            pr->route_model = strdup(m);
    }
}

int ax_policy_req_route(const struct ax_policy_req *pr, const char *const **names,
                        const char **model)
{
    if (names)
        *names = (const char *const *)pr->route_names;
    if (model)
        *model = pr->route_model;
    return pr->n_route;
}

static void hook_end(struct ax_policy_req *pr, int status, int nres)
{
    struct ax_policy_engine *eng = pr->eng;
    struct ax__gen_policy *p = &pr->gen->p[pr->idx];
    lua_State *co = pr->rs.co;
    char msg[768], where[320];
    enum fail_kind kind = FK_ERROR;

    pr->in_hook = 0;
    if (status == LUA_OK && !pr->rs.mem_hit) {
        if (pr->hook == AX_HOOK_UPSTREAM_ERROR && nres > 0 && lua_isboolean(co, -nres) &&
            lua_toboolean(co, -nres)) /* exactly true: anything else is no retry */
            pr->retry = 1;
        if (pr->hook == AX_HOOK_ROUTE && nres > 0 && pr->n_route == 0)
            route_take(pr, co, nres);
        lua_settop(co, 0);
        hook_commit(pr);
        pr->idx++;
        return;
    }
    hook_discard(pr);
    where[0] = 0;
    if (status == LUA_YIELD || status == LUA_OK) {
        where_of(co, where, sizeof(where));
        if (pr->rs.mem_hit) {
            kind = FK_MEMORY;
            snprintf(msg, sizeof(msg), "memory cap exceeded (%zu bytes per hook call)%s",
                     eng->req_mem_max, where);
        } else if (pr->rs.wall_hit) {
            kind = FK_BUDGET;
            snprintf(msg, sizeof(msg), "wall-clock bound exceeded (%" PRIu64 " ms)%s",
                     eng->run_max_ns / 1000000, where);
        } else if (pr->rs.budget_hit) {
            kind = FK_BUDGET;
            snprintf(msg, sizeof(msg), "instruction budget exceeded (%" PRIu64 ")%s", eng->budget,
                     where);
        } else {
            snprintf(msg, sizeof(msg),
                     "yielded outside the anthroxy API (coroutine.yield "
                     "in a hook?)%s",
                     where);
        }
    } else if (ax__is_fail(co, -1, &pr->err)) {
        AX_LOG_INFO(NULL, "[%s] policy %s rejected the request: %d %s", pr->request_id, p->name,
                    pr->err.status, pr->err.message);
        thread_renew(pr);
        pr->rc = AX_EINVAL;
        run_finish(pr);
        return;
    } else {
        const char *m = lua_tostring(co, -1);
        if (status == LUA_ERRMEM || pr->rs.mem_hit)
            kind = FK_MEMORY;
        else if (pr->rs.budget_hit) /* raised where it could not yield */
            kind = FK_BUDGET;
        snprintf(msg, sizeof(msg), "%s", m ? m : "(error object is not a string)");
    }
    eng->n_errors++;
    if (kind == FK_BUDGET)
        eng->n_budget_kills++;
    else if (kind == FK_MEMORY)
        eng->n_memory_kills++;
    ax_log_write(AX_LOG_LVL_WARN, pr->request_id, "policy %s (%s) %s failed: %s", p->name, p->file,
                 ax__hook_names[pr->hook], msg);
    thread_renew(pr);
    if (eng->env.cfg != NULL && eng->env.cfg->policy_fail_closed) {
        eng->n_failures++;
        pr->rc = AX_ELUA;
        ax_error_set(&pr->err, 500, "api_error", "policy %s failed in %s: %s", p->name,
                     ax__hook_names[pr->hook], msg);
        run_finish(pr);
        return;
    }
    pr->idx++;
}

static int next_hook(struct ax_policy_req *pr)
{
    while (pr->idx < pr->arm_p->end && pr->gen->p[pr->idx].fn_ref[pr->hook] == LUA_NOREF)
        pr->idx++;
    return pr->idx < pr->arm_p->end;
}

static int resume(struct ax_policy_req *pr, int nargs, int *nres)
{
    struct ax_policy_engine *eng = pr->eng;
    int status;

    eng->cur = pr;
    eng->cur_rs = &pr->rs;
    eng->vs.cur = &pr->scope;
    pr->rs.deadline = uv_hrtime() + eng->run_max_ns; /* each stretch between waits */
    status = lua_resume(pr->rs.co, NULL, nargs, nres);
    eng->cur = NULL;
    eng->cur_rs = NULL;
    eng->vs.cur = NULL;
    return status;
}

static void run_step(struct ax_policy_req *pr, int nargs)
{
    int status, nres;

    for (;;) {
        if (!pr->in_hook) {
            if (!next_hook(pr)) {
                run_finish(pr);
                return;
            }
            nargs = hook_begin(pr);
        }
        status = resume(pr, nargs, &nres);
        nargs = 0;
        if (status == LUA_YIELD && pr->pend != NULL && !pr->rs.budget_hit && !pr->rs.mem_hit)
            return; /* parked until its call completes */
        if (status == LUA_YIELD && pr->pend != NULL) {
            ax__pend_release(pr->pend);
            pr->pend = NULL;
        }
        hook_end(pr, status, nres);
        if (pr->queued)
            return;
    }
}

void ax__req_park(struct ax_policy_req *pr, struct ax__pend *p)
{
    pr->pend = p;
}

void ax__req_wake(struct ax_policy_req *pr, int nargs)
{
    pr->pend = NULL;
    run_step(pr, nargs);
}

static void pend_on_close(uv_handle_t *h)
{
    struct ax__pend *p = h->data;
    cJSON_free(p->body);
    free(p);
}

void ax__pend_release(struct ax__pend *p)
{
    p->pr = NULL;
    if (p->has_timer) {
        uv_timer_stop(&p->timer);
        uv_close((uv_handle_t *)&p->timer, pend_on_close);
        p->has_timer = 0;
    } else if (p->xfer != NULL) {
        ax_xfer_cancel(p->xfer); /* its callback frees p */
    }
}

int ax_policy_req_run(struct ax_policy_req *pr, enum ax_hook hook, cJSON *tree, const cJSON *aux,
                      ax_policy_done_fn done, void *ud)
{
    if (pr->running)
        return AX_EBUSY;
    if (pr->cancelled || !pr->eng->handles_init || tree == NULL || hook >= AX_HOOK_COUNT)
        return AX_EINVAL;
    pr->running = 1;
    pr->hook = hook;
    pr->tree = tree;
    cJSON_Delete(pr->aux_own);
    pr->aux_own = aux != NULL ? cJSON_Duplicate(aux, 1) : NULL;
    if (aux != NULL && pr->aux_own == NULL) {
        pr->running = 0;
        return AX_ENOMEM;
    }
    pr->aux = pr->aux_own;
    pr->done = done;
    pr->done_ud = ud;
    pr->idx = pr->arm_p->first;
    pr->retry = 0;
    if (hook == AX_HOOK_ROUTE)
        route_clear(pr);
    pr->rc = 0;
    memset(&pr->err, 0, sizeof(pr->err));
    /* the caller may have changed the tree between runs: estimates start afresh */
    ax__memo_reset(&pr->memo, hook == AX_HOOK_REQUEST || hook == AX_HOOK_UPSTREAM_ERROR ||
                                      hook == AX_HOOK_ROUTE
                                  ? tree
                                  : NULL);
    if (pr->memo.root != NULL && pr->session != NULL) {
        /* the session knows its tools' estimate while they keep their shape */
        const cJSON *tools = cJSON_GetObjectItemCaseSensitive(tree, "tools");
        if (cJSON_IsArray(tools) && tools->child != NULL) {
            pr->memo.tools_tokens = 3 + ax_session_tools_tokens(pr->session, tools);
            pr->memo.tools_ok = 1;
        }
    }
    if (pr->arm_p->has_hook[hook])
        ctx_refresh(pr);
    run_step(pr, 0);
    return 0;
}

void ax_policy_req_cancel(struct ax_policy_req *pr)
{
    if (pr == NULL || pr->cancelled)
        return;
    pr->cancelled = 1;
    dequeue_done(pr);
    if (pr->pend != NULL) {
        ax__pend_release(pr->pend);
        pr->pend = NULL;
    }
    if (pr->in_hook) {
        hook_discard(pr);
        thread_renew(pr);
        pr->in_hook = 0;
    }
    pr->running = 0;
}

void ax_policy_req_free(struct ax_policy_req *pr)
{
    struct ax_policy_engine *eng;
    if (pr == NULL)
        return;
    eng = pr->eng;
    ax_policy_req_cancel(pr);
    ax__unref(eng->L, &pr->co_ref);
    ax__unref(eng->L, &pr->ctx_ref);
    ax__unref(eng->L, &pr->states_ref);
    ax__gen_unref(eng, pr->gen);
    ax__memo_free(&pr->memo);
    route_clear(pr);
    cJSON_Delete(pr->aux_own);
    free(pr->request_id);
    free(pr->session_id);
    free(pr->client_model);
    free(pr->user_agent);
    free(pr->arm);
    eng->in_flight--;
    free(pr);
}
