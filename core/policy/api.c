/* api.c - the `anthroxy` Lua module.
 *
 * Estimates (tokens.c), logging stamped with request id and policy, ax.fail, and the calls
 * that yield the request's coroutine (sleep, tokenize, complete), resumed by run.c when
 * their timer or upstream fetch completes. The view and JSON helpers come from view.c and
 * lua_json.c; the sandbox they run in is engine.c's. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "anthroxy.h"
#include "anthroxy_experiment.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_monitor.h"
#include "anthroxy_tokens.h"
#include "anthroxy_upstream.h"

enum { PEND_SLEEP, PEND_TOKENIZE, PEND_COMPLETE };

static char fakes_key;

/* ---- estimates ----------------------------------------------------------------------- */

/* The calibration factor in ctx.session (ctx a table at idx), 1.0 when it has none usable. */
static double ctx_calibration(lua_State *L, int idx)
{
    double c = 1.0;
    if (lua_getfield(L, idx, "session") == LUA_TTABLE &&
        lua_getfield(L, -1, "calibration") == LUA_TNUMBER) {
        c = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return c > 0 && isfinite(c) ? c : 1.0;
}

/* Pushes the estimate t, calibrated for the session when a ctx table is at ctx_idx: the same
 * figure as ax.calibrated(t, ctx). */
static int push_estimate(lua_State *L, int64_t t, int ctx_idx)
{
    if (lua_istable(L, ctx_idx))
        t = (int64_t)floor((double)t * ctx_calibration(L, ctx_idx) + 0.5);
    lua_pushinteger(L, t);
    return 1;
}

static int l_tokens(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    ax__charge(L, n / 64);
    return push_estimate(L, ax_tokens_text(s, n), 2);
}

enum est_kind { EST_MESSAGE, EST_REQUEST, EST_SYSTEM, EST_TOOLS };

/* ax.<kind>_tokens(value [, ctx]): the request's own messages and root go through its memo
 * (view.h), anything else is estimated afresh. */
static int tokens_of(lua_State *L, enum est_kind kind)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    struct ax_policy_req *pr = eng->cur;
    struct ax__tokmemo *m = pr != NULL && pr->memo.root != NULL ? &pr->memo : NULL;
    int want_depth = kind == EST_MESSAGE ? 2 : 0;
    cJSON *node, *field;
    const cJSON *n;
    int boxed, depth;

    luaL_checkany(L, 1);
    if (m != NULL && ax__view_info(L, 1, &node, &depth, &field) && depth == want_depth &&
        (depth == 0 ? node == m->root
                    : field == cJSON_GetObjectItemCaseSensitive(m->root, "messages"))) {
        switch (kind) {
        case EST_MESSAGE:
            return push_estimate(L, ax__memo_message(m, node), 2);
        case EST_REQUEST:
            return push_estimate(L, ax__memo_request(m, node), 2);
        case EST_SYSTEM:
            return push_estimate(L, ax__memo_system(m, node), 2);
        case EST_TOOLS:
            return push_estimate(L, ax__memo_tools(m, node), 2);
        }
    }
    n = ax__json_arg(L, 1, &boxed);
    switch (kind) {
    case EST_MESSAGE:
        return push_estimate(L, ax_tokens_message(n), 2);
    case EST_REQUEST:
        return push_estimate(L, ax_tokens_request(n), 2);
    case EST_SYSTEM:
        return push_estimate(L, ax_tokens_system(n), 2);
    default:
        return push_estimate(L, ax_tokens_tools(cJSON_GetObjectItemCaseSensitive(n, "tools")), 2);
    }
}

static int l_message_tokens(lua_State *L)
{
    return tokens_of(L, EST_MESSAGE);
}

static int l_request_tokens(lua_State *L)
{
    return tokens_of(L, EST_REQUEST);
}

static int l_system_tokens(lua_State *L)
{
    return tokens_of(L, EST_SYSTEM);
}

static int l_tools_tokens(lua_State *L)
{
    return tokens_of(L, EST_TOOLS);
}

static int l_calibrated(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    double n = luaL_checknumber(L, 1), c = 1.0;

    if (lua_istable(L, 2))
        c = ctx_calibration(L, 2);
    else if (eng->cur != NULL && eng->cur->session != NULL)
        c = eng->cur->session->calibration;
    if (!(c > 0) || !isfinite(c))
        c = 1.0;
    lua_pushinteger(L, (lua_Integer)floor(n * c + 0.5));
    return 1;
}

/* ---- logging ------------------------------------------------------------------------- */

static const char *log_message(lua_State *L)
{
    int n = lua_gettop(L);
    if (n > 1) {
        lua_getglobal(L, "string"); /* the real library, not the sandbox's */
        lua_getfield(L, -1, "format");
        lua_remove(L, -2);
        lua_insert(L, 1);
        lua_call(L, n, 1);
        return lua_tostring(L, -1);
    }
    return luaL_tolstring(L, 1, NULL);
}

static void log_emit(lua_State *L, enum ax_log_level lvl, const char *msg)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    struct ax_policy_req *pr = eng->cur;
    ax_log_write(lvl, pr ? pr->request_id : NULL, "policy %s: %s",
                 pr ? ax__req_policy_name(pr) : "(load)", msg);
}

static int log_at(lua_State *L, enum ax_log_level lvl)
{
    if ((int)lvl < (int)ax_log_level_current)
        return 0;
    luaL_checkany(L, 1);
    log_emit(L, lvl, log_message(L));
    return 0;
}

static int l_log_debug(lua_State *L)
{
    return log_at(L, AX_LOG_LVL_DEBUG);
}

static int l_log_info(lua_State *L)
{
    return log_at(L, AX_LOG_LVL_INFO);
}

static int l_log_warn(lua_State *L)
{
    return log_at(L, AX_LOG_LVL_WARN);
}

static int l_log_error(lua_State *L)
{
    return log_at(L, AX_LOG_LVL_ERROR);
}

int ax__api_print(lua_State *L)
{
    luaL_Buffer b;
    int i, n = lua_gettop(L);

    if (AX_LOG_LVL_INFO < ax_log_level_current)
        return 0;
    luaL_buffinit(L, &b);
    for (i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    log_emit(L, AX_LOG_LVL_INFO, lua_tostring(L, -1));
    return 0;
}

/* ---- ax.fail ------------------------------------------------------------------------- */

static int l_fail(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    lua_Integer status = luaL_checkinteger(L, 1);
    const char *type = luaL_optstring(L, 2, NULL);
    const char *msg = luaL_optstring(L, 3, "rejected by policy");

    luaL_argcheck(L, status >= 400 && status <= 599, 1, "status must be 4xx or 5xx");
    lua_createtable(L, 0, 1); /* e */
    lua_createtable(L, 0, 3); /* e, f */
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushstring(L, type ? type : ax_error_type_for_status((int)status));
    lua_setfield(L, -2, "type");
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "message");
    lua_setfield(L, -2, "fail"); /* e */
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->fail_mt_ref);
    lua_setmetatable(L, -2);
    return lua_error(L);
}

int ax__is_fail(lua_State *L, int idx, struct ax_error *err)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    int is;

    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx) || !lua_getmetatable(L, idx))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->fail_mt_ref);
    is = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!is)
        return 0;
    lua_getfield(L, idx, "fail");
    lua_getfield(L, -1, "status");
    lua_getfield(L, -2, "type");
    lua_getfield(L, -3, "message");
    ax_error_set(err, (int)lua_tointeger(L, -3), "invalid_request_error", "%s",
                 lua_tostring(L, -1) ? lua_tostring(L, -1) : "rejected by policy");
    /* keep the policy's type only when it is one of Anthropic's (error.c's static strings) */
    err->type = ax_error_type_known(lua_tostring(L, -2));
    if (err->type == NULL)
        err->type = ax_error_type_for_status(err->status);
    lua_pop(L, 4);
    return 1;
}

/* ---- calls that yield ---------------------------------------------------------------- */

static struct ax_policy_req *own_request(lua_State *L, struct ax_policy_engine *eng,
                                         const char *what)
{
    struct ax_policy_req *pr = eng->cur;
    if (pr == NULL || L != pr->rs.co)
        luaL_error(L,
                   "%s must run on the request's coroutine (in a hook, not at load time "
                   "nor inside a coroutine of the policy's own)",
                   what);
    if (!lua_isyieldable(L))
        luaL_error(L,
                   "%s: attempt to yield across a C-call boundary (table.sort comparator, "
                   "gsub callback, metamethod or require?)",
                   what);
    return pr;
}

static int call_fake(lua_State *L, const char *name)
{
    int n = lua_gettop(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &fakes_key);
    if (!lua_istable(L, -1) || lua_getfield(L, -1, name) != LUA_TFUNCTION) {
        lua_pushnil(L);
        lua_pushstring(L, "no upstream in tests");
        return 2;
    }
    lua_insert(L, 1);
    lua_settop(L, n + 1);
    lua_call(L, n, 2);
    return 2;
}

static void sleep_on_timer(uv_timer_t *t)
{
    struct ax__pend *p = t->data;
    struct ax_policy_req *pr = p->pr;
    ax__pend_release(p);
    if (pr != NULL)
        ax__req_wake(pr, 0);
}

static int l_sleep(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    lua_Integer ms = luaL_checkinteger(L, 1);
    struct ax_policy_req *pr;
    struct ax__pend *p;

    if (eng->test_mode)
        return 0;
    pr = own_request(L, eng, "ax.sleep");
    if (ms > 0 && (uint64_t)ms > eng->sleep_max_ms - pr->slept_ms)
        return luaL_error(L,
                          "ax.sleep: %I ms would take this hook call past its bound "
                          "(--lua-sleep-max, %I ms in all)",
                          ms, (lua_Integer)eng->sleep_max_ms);
    pr->slept_ms += ms > 0 ? (uint64_t)ms : 0;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return luaL_error(L, "not enough memory");
    p->kind = PEND_SLEEP;
    p->pr = pr;
    uv_timer_init(eng->env.loop, &p->timer);
    p->timer.data = p;
    p->has_timer = 1;
    uv_timer_start(&p->timer, sleep_on_timer, (uint64_t)(ms > 0 ? ms : 0), 0);
    ax__req_park(pr, p);
    return lua_yield(L, 0);
}

static void pend_free_now(struct ax__pend *p)
{
    cJSON_free(p->body);
    free(p);
}

static void tokenize_on_done(int rc, int status, const char *body, size_t len, void *ud)
{
    struct ax__pend *p = ud;
    struct ax_policy_req *pr = p->pr;
    lua_State *co;
    cJSON *j = NULL;
    const cJSON *toks;

    if (pr == NULL) {
        pend_free_now(p);
        return;
    }
    co = pr->rs.co;
    if (rc == 0 && status == 200)
        j = cJSON_ParseWithLength(body, len);
    toks = j ? cJSON_GetObjectItemCaseSensitive(j, "tokens") : NULL;
    if (cJSON_IsArray(toks)) {
        lua_pushinteger(co, cJSON_GetArraySize(toks));
        lua_pushnil(co);
    } else {
        lua_pushnil(co);
        lua_pushfstring(co, "tokenize failed: %s (status %d)",
                        rc < 0 ? ax_strerror(rc) : "bad answer", status);
    }
    cJSON_Delete(j);
    pend_free_now(p);
    pr->pend = NULL;
    ax__req_wake(pr, 2);
}

static void complete_on_done(int rc, int status, const char *body, size_t len, void *ud)
{
    struct ax__pend *p = ud;
    struct ax_policy_req *pr = p->pr;
    lua_State *co;
    cJSON *j = NULL;

    if (pr == NULL) {
        pend_free_now(p);
        return;
    }
    co = pr->rs.co;
    if (rc == 0 && status == 200)
        j = cJSON_ParseWithLength(body, len);
    if (j != NULL) {
        /* converted to Lua in complete_k, on the coroutine (protected, charged) */
        void **box = lua_newuserdatauv(co, sizeof(void *), 0);
        *box = j;
        luaL_setmetatable(co, AX_JBOX_MT);
        lua_pushnil(co);
    } else {
        lua_pushnil(co);
        if (rc < 0)
            lua_pushfstring(co, "completion failed: %s", ax_strerror(rc));
        else
            lua_pushfstring(co, "completion failed: status %d: %s", status, body ? body : "");
    }
    pend_free_now(p);
    pr->pend = NULL;
    ax__req_wake(pr, 2);
}

static int complete_k(lua_State *L, int status, lua_KContext kctx)
{
    void **box = luaL_testudata(L, 1, AX_JBOX_MT);
    (void)status;
    (void)kctx;
    if (box == NULL || *box == NULL) {
        lua_settop(L, 2);
        return 2;
    }
    ax__json_push_table(L, *box);
    cJSON_Delete(*box);
    *box = NULL;
    return 1;
}

static int start_fetch(lua_State *L, struct ax_policy_engine *eng, struct ax_policy_req *pr,
                       int kind, const char *path, char *body, ax_fetch_cb cb)
{
    struct ax__pend *p = calloc(1, sizeof(*p));
    int rc;

    if (p == NULL) {
        cJSON_free(body);
        return luaL_error(L, "not enough memory");
    }
    p->kind = kind;
    p->pr = pr;
    p->body = body;
    rc = ax_upstream_fetch(eng->env.up, "POST", path, body, strlen(body), 0, cb, p, &p->xfer);
    if (rc < 0) {
        pend_free_now(p);
        lua_pushnil(L);
        lua_pushfstring(L, "upstream: %s", ax_strerror(rc));
        return -1;
    }
    ax__req_park(pr, p);
    return 0;
}

static int l_tokenize(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    struct ax_policy_req *pr;
    cJSON *o;
    char *body;

    luaL_checkstring(L, 1);
    if (eng->test_mode)
        return call_fake(L, "tokenize");
    if (eng->env.up == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "no upstream");
        return 2;
    }
    pr = own_request(L, eng, "ax.tokenize");
    o = cJSON_CreateObject();
    if (o == NULL || cJSON_AddStringToObject(o, "content", lua_tostring(L, 1)) == NULL ||
        (body = cJSON_PrintUnformatted(o)) == NULL) {
        cJSON_Delete(o);
        return luaL_error(L, "not enough memory");
    }
    cJSON_Delete(o);
    if (start_fetch(L, eng, pr, PEND_TOKENIZE, "/tokenize", body, tokenize_on_done) < 0)
        return 2;
    lua_settop(L, 0);
    return lua_yield(L, 0);
}

static int l_complete(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    struct ax_policy_req *pr;
    const cJSON *arg;
    cJSON *req;
    char *body;
    int boxed;

    luaL_checkany(L, 1);
    if (eng->test_mode)
        return call_fake(L, "complete");
    if (eng->env.up == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "no upstream");
        return 2;
    }
    pr = own_request(L, eng, "ax.complete");
    arg = ax__json_arg(L, 1, &boxed);
    if (!cJSON_IsObject(arg))
        return luaL_error(L, "ax.complete: expected an OpenAI request object");
    req = cJSON_Duplicate(arg, 1);
    if (req == NULL)
        return luaL_error(L, "not enough memory");
    cJSON_DeleteItemFromObjectCaseSensitive(req, "stream");
    cJSON_DeleteItemFromObjectCaseSensitive(req, "stream_options");
    cJSON_AddFalseToObject(req, "stream");
    if (!cJSON_HasObjectItem(req, "model")) {
        const char *m = eng->env.upstream_model ? eng->env.upstream_model(eng->env.ud) : NULL;
        cJSON_AddStringToObject(req, "model", m && *m ? m : "default");
    }
    body = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (body == NULL)
        return luaL_error(L, "not enough memory");
    if (start_fetch(L, eng, pr, PEND_COMPLETE, "/v1/chat/completions", body, complete_on_done) < 0)
        return 2;
    lua_settop(L, 0);
    return lua_yieldk(L, 0, 0, complete_k);
}

/* ---- misc ---------------------------------------------------------------------------- */

static int l_now_ms(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    if (eng->env.loop != NULL)
        lua_pushinteger(L, (lua_Integer)uv_now(eng->env.loop));
    else
        lua_pushinteger(L, (lua_Integer)(uv_hrtime() / 1000000));
    return 1;
}

static int ro_newindex(lua_State *L)
{
    return luaL_error(L, "attempt to modify a read-only table (field '%s')",
                      lua_tostring(L, 2) ? lua_tostring(L, 2) : "?");
}

/* the proxy's iterator: the raw table stays an upvalue, never handed out */
static int ro_next(lua_State *L)
{
    lua_settop(L, 2);
    if (lua_next(L, lua_upvalueindex(1)))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int ro_pairs(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, ro_next, 1);
    lua_pushvalue(L, 1); /* the proxy */
    lua_pushnil(L);
    return 3;
}

static int ro_len(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
    return 1;
}

void ax__make_readonly(lua_State *L)
{
    lua_newtable(L);                /* t, proxy */
    lua_createtable(L, 0, 5);       /* t, proxy, mt */
    lua_pushvalue(L, -3);           /* t, proxy, mt, t */
    lua_setfield(L, -2, "__index"); /* t, proxy, mt */
    lua_pushcfunction(L, ro_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, ro_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, ro_len, 1);
    lua_setfield(L, -2, "__len");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable"); /* t, proxy, mt */
    lua_setmetatable(L, -2);            /* t, proxy */
    lua_remove(L, -2);                  /* proxy */
}

/* ax.count(name [, delta]) -> total: a named counter of the calling policy in the request's
 * arm (GET /v1/experiments, /health). Counts are kept even when the hook fails later. */
static int l_count(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    struct ax_policy_req *pr = eng->cur;
    const char *name = luaL_checkstring(L, 1);
    lua_Number delta = luaL_optnumber(L, 2, 1);
    double total = 0;
    int rc;

    if (pr == NULL && !eng->test_mode)
        return luaL_error(L, "ax.count: only inside a hook");
    /* `anthroxy test-lua` runs hooks without a request: T.counters() reads them back */
    rc = ax_exp_stats_count(eng->stats, pr ? pr->arm : AX_EXP_DEFAULT_ARM,
                            pr ? ax__req_policy_name(pr) : "test", name, delta, &total);
    if (rc == AX_EINVAL)
        return luaL_error(L,
                          "ax.count: the name must have 1 to %d characters and delta be a "
                          "finite number",
                          AX_EXP_COUNTER_NAME_MAX - 1);
    if (rc < 0) { /* too many counters: counting is not worth failing a request over */
        lua_pushnil(L);
        lua_pushfstring(L, "ax.count: %s (at most %d counters per arm)", ax_strerror(rc),
                        AX_EXP_COUNTERS_MAX);
        return 2;
    }
    lua_pushnumber(L, total);
    return 1;
}

static int l_set_fake(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &fakes_key);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &fakes_key);
    }
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_settable(L, -3);
    return 0;
}

void ax__api_open(lua_State *L, struct ax_policy_engine *eng)
{
    static const luaL_Reg funcs[] = {{"tokens", l_tokens},
                                     {"message_tokens", l_message_tokens},
                                     {"request_tokens", l_request_tokens},
                                     {"system_tokens", l_system_tokens},
                                     {"tools_tokens", l_tools_tokens},
                                     {"calibrated", l_calibrated},
                                     {"fail", l_fail},
                                     {"sleep", l_sleep},
                                     {"tokenize", l_tokenize},
                                     {"complete", l_complete},
                                     {"now_ms", l_now_ms},
                                     {"count", l_count},
                                     {NULL, NULL}};
    static const luaL_Reg logf[] = {{"debug", l_log_debug},
                                    {"info", l_log_info},
                                    {"warn", l_log_warn},
                                    {"error", l_log_error},
                                    {NULL, NULL}};

    if (eng->api_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, eng->api_ref);
        return;
    }
    lua_newtable(L); /* M */
    luaL_setfuncs(L, funcs, 0);
    ax__view_open_api(L, &eng->vs); /* M (json, insert, remove, ...) */
    lua_getfield(L, -1, "json");    /* M, json */
    ax__make_readonly(L);
    lua_setfield(L, -2, "json"); /* M */
    lua_newtable(L);             /* M, log */
    luaL_setfuncs(L, logf, 0);
    ax__make_readonly(L);
    lua_setfield(L, -2, "log"); /* M */
    lua_pushliteral(L, ANTHROXY_VERSION);
    lua_setfield(L, -2, "version");
    ax__make_readonly(L); /* ax */
    lua_pushvalue(L, -1);
    eng->api_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    /* ax.fail's error objects */
    lua_newtable(L);
    lua_pushliteral(L, "anthroxy.fail");
    lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    eng->fail_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    /* test hook for fakes: registered in the registry, handed to testing.lua only */
    lua_pushcfunction(L, l_set_fake);
    lua_setfield(L, LUA_REGISTRYINDEX, "anthroxy.set_fake");
}
