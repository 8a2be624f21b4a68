/* engine.c - the policy engine's Lua state: allocator, instruction budget, sandbox, life.
 *
 * One lua_State per engine, its memory charged to the running coroutine (internal.h's run
 * slot) and capped; a count hook stops a hook past its budget. Policies run in sandbox
 * environments over a shared read-only base, with a per-generation `require`. load.c
 * compiles chains into generations, run.c runs requests, api.c is the `anthroxy` module. */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "anthroxy_experiment.h"
#include "anthroxy_log.h"

#define MAX_FILE_BYTES (4u << 20) /* a policy or chain file */

const char *const ax__hook_names[AX_HOOK_COUNT] = {"on_request", "on_upstream_request",
                                                   "on_response", "on_upstream_error", "on_route"};
static char require_key;

/* ---- small helpers --------------------------------------------------------------------- */

struct ax_policy_engine *ax__engine_of(lua_State *L)
{
    return *(struct ax_policy_engine **)lua_getextraspace(L);
}

const char *ax__req_policy_name(const struct ax_policy_req *pr)
{
    if (pr->gen != NULL && pr->idx >= 0 && pr->idx < pr->gen->n) /* any arm's */
        return pr->gen->p[pr->idx].name;
    return "?";
}

char *ax__strdup(const char *s)
{
    size_t n = strlen(s ? s : "") + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s ? s : "", n);
    return d;
}

/* Reads a small file synchronously: used at load/reload only, never on a request's path. */
char *ax__read_file(const char *path, size_t *len, char *err, size_t errn)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;

    if (f == NULL) {
        snprintf(err, errn, "%s: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        size_t got;
        if (n + 4096 + 1 > cap) {
            char *nb;
            cap = cap ? cap * 2 : 8192;
            if (cap > MAX_FILE_BYTES + 1) {
                snprintf(err, errn, "%s: larger than %u bytes", path, MAX_FILE_BYTES);
                goto fail;
            }
            nb = realloc(buf, cap);
            if (nb == NULL) {
                snprintf(err, errn, "%s: out of memory", path);
                goto fail;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(err, errn, "%s: read error", path);
        goto fail;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

/* ---- allocator and instruction budget ---------------------------------------------------- */

/* Charges the running coroutine (cur_rs) and the whole state; fails only inside protected
 * calls or resumes (elsewhere a failure would reach the panic function), never a free or a
 * shrink. */
static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct ax_policy_engine *eng = ud;
    struct ax__run_slot *rs = eng->cur_rs;
    size_t old = ptr != NULL ? osize : 0;
    void *np;

    if (nsize == 0) {
        free(ptr);
        eng->mem_total = eng->mem_total > old ? eng->mem_total - old : 0;
        if (rs != NULL)
            rs->mem = rs->mem > old ? rs->mem - old : 0;
        return NULL;
    }
    if (nsize > old && (rs != NULL || eng->protected_alloc)) {
        size_t grow = nsize - old;
        if (eng->mem_max && eng->mem_total + grow > eng->mem_max) {
            if (rs != NULL)
                rs->mem_hit = 1;
            return NULL;
        }
        if (rs != NULL && rs->mem_max && rs->mem + rs->json_mem + grow > rs->mem_max) {
            rs->mem_hit = 1;
            return NULL;
        }
        if (rs != NULL)
            rs->instr += grow >> 6; /* copying: a .. b, s:upper() in a loop; the hook checks */
    }
    np = realloc(ptr, nsize);
    if (np == NULL)
        return nsize <= old ? ptr : NULL;
    if (nsize >= old) {
        eng->mem_total += nsize - old;
        if (rs != NULL)
            rs->mem += nsize - old;
    } else {
        eng->mem_total -= old - nsize;
        if (rs != NULL)
            rs->mem = rs->mem > old - nsize ? rs->mem - (old - nsize) : 0;
    }
    return np;
}

static int run_over(struct ax__run_slot *rs)
{
    if (rs->budget_hit || rs->mem_hit)
        return 1;
    if (rs->deadline != 0 && uv_hrtime() > rs->deadline)
        return rs->wall_hit = rs->budget_hit = 1;
    if (rs->instr > rs->budget)
        return rs->budget_hit = 1;
    return 0;
}

static const char *run_over_message(const struct ax__run_slot *rs)
{
    return rs->mem_hit    ? "memory cap exceeded"
           : rs->wall_hit ? "wall-clock bound exceeded"
                          : "instruction budget exceeded";
}

/* Once the budget, the wall-clock bound or the memory cap is spent, the request's own
 * coroutine yields from here: a pcall in the policy cannot catch a yield, and the engine
 * then closes the coroutine. Elsewhere (a coroutine of the policy's own, a non-yieldable C
 * call) it raises, again at every step, and the sandbox's pcall, xpcall and coroutine
 * functions let that error through (ax__run_killed), until control is back where it can
 * yield or at the resume. */
void ax__count_hook(lua_State *L, lua_Debug *ar)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    struct ax__run_slot *rs = eng->cur_rs;

    (void)ar;
    if (rs == NULL)
        return;
    rs->instr += AX__HOOK_STEP;
    if (!run_over(rs))
        return;
    if (L == rs->co && lua_isyieldable(L)) {
        lua_yield(L, 0);
        return;
    }
    luaL_error(L, "%s", run_over_message(rs));
}

void ax__charge(lua_State *L, uint64_t n)
{
    struct ax__run_slot *rs = ax__engine_of(L)->cur_rs;
    uint64_t before;

    if (rs == NULL)
        return;
    before = rs->instr;
    rs->instr += n;
    if (rs->instr > rs->budget || rs->budget_hit || rs->mem_hit ||
        ((before ^ rs->instr) >> 14 && run_over(rs))) {
        if (!rs->mem_hit)
            rs->budget_hit = 1;
        luaL_error(L, "%s", run_over_message(rs));
    }
}

int ax__run_killed(lua_State *L)
{
    struct ax__run_slot *rs = ax__engine_of(L)->cur_rs;
    return rs != NULL && (rs->budget_hit || rs->mem_hit);
}

/* ---- generations ------------------------------------------------------------------------ */

void ax__unref(lua_State *L, int *ref)
{
    if (*ref != LUA_NOREF && *ref != LUA_REFNIL)
        luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    *ref = LUA_NOREF;
}

void ax__push_newenv(lua_State *L, struct ax_policy_engine *eng, int require_idx)
{
    require_idx = lua_absindex(L, require_idx);
    lua_newtable(L);                                  /* env */
    lua_createtable(L, 0, 2);                         /* env, mt */
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->base_ref); /* env, mt, base */
    lua_setfield(L, -2, "__index");                   /* env, mt */
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2); /* env */
    lua_pushvalue(L, require_idx);
    lua_setfield(L, -2, "require");
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "_G");
}

/* require(name), per generation: upvalue 1 is that generation's package.loaded. Only
 * "anthroxy" and "anthroxy.<module>" from <lua dir>/anthroxy/, loaded once per generation,
 * and never from inside a hook (files are read synchronously). */
static int l_require(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    const char *name = luaL_checkstring(L, 1);
    const char *mod;
    char path[4096], err[512];
    size_t len;
    char *text;

    lua_settop(L, 1);
    if (lua_getfield(L, lua_upvalueindex(1), name) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    if (strncmp(name, "anthroxy.", 9) != 0 || name[9] == 0 ||
        strspn(name + 9, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(name + 9))
        return luaL_error(L,
                          "module '%s' is not available in the policy sandbox (only "
                          "'anthroxy' and 'anthroxy.<name>')",
                          name);
    if (eng->cur != NULL)
        return luaL_error(L, "require '%s' inside a hook: require at the top of the file", name);
    mod = name + 9;
    snprintf(path, sizeof(path), "%s/anthroxy/%s.lua", eng->lua_dir, mod);
    text = ax__read_file(path, &len, err, sizeof(err));
    if (text == NULL)
        return luaL_error(L, "require '%s': %s", name, err);
    lua_pushfstring(L, "@%s", path); /* name, chunkname */
    if (luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t") != LUA_OK) {
        free(text);
        return lua_error(L);
    }
    free(text);                                        /* name, chunkname, f */
    lua_rawgetp(L, lua_upvalueindex(1), &require_key); /* name, chunkname, f, require */
    ax__push_newenv(L, eng, -1);                       /* ..., f, require, env */
    lua_remove(L, -2);                                 /* ..., f, env */
    lua_setupvalue(L, -2, 1);                          /* ..., f */
    lua_pushstring(L, name);
    lua_call(L, 1, 1); /* name, chunkname, result */
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, lua_upvalueindex(1), name);
    return 1;
}

/* Creates g's package.loaded and require; leaves the require closure on the stack. */
void ax__gen_make_require(lua_State *L, struct ax_policy_engine *eng, struct ax__gen *g)
{
    lua_newtable(L);                   /* loaded */
    ax__api_open(L, eng);              /* loaded, ax */
    lua_setfield(L, -2, "anthroxy");   /* loaded */
    lua_pushvalue(L, -1);              /* loaded, loaded */
    lua_pushcclosure(L, l_require, 1); /* loaded, require */
    lua_pushvalue(L, -1);
    lua_rawsetp(L, -3, &require_key); /* loaded, require */
    lua_pushvalue(L, -1);
    g->require_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_insert(L, -2);                              /* require, loaded */
    g->loaded_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* require */
}

/* ---- sandbox ----------------------------------------------------------------------------- */

/* `load` in the sandbox: text only; without env, into a fresh sandbox environment over the
 * read-only base, its metatable locked. */
static int l_sandbox_load(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, "=(load)");
    int has_env = !lua_isnone(L, 4);

    if (luaL_loadbufferx(L, s, len, name, "t") != LUA_OK) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    if (has_env) {
        lua_pushvalue(L, 4);
    } else {
        lua_newtable(L); /* f, env */
        lua_createtable(L, 0, 2);
        lua_rawgeti(L, LUA_REGISTRYINDEX, ax__engine_of(L)->base_ref); /* the proxy */
        lua_setfield(L, -2, "__index");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_setmetatable(L, -2); /* f, env */
    }
    lua_setupvalue(L, -2, 1); /* f */
    return 1;
}

/* setmetatable without finalizers: a __gc runs inside the collector, where no hook counts
 * (Lua marks an object for finalization only when its metatable has __gc as it is set, so
 * checking here is enough). __close runs in hooked code and stays. */
static int sb_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (t == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "__gc metamethods are not available in the policy sandbox");
        lua_pop(L, 1);
    }
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

/* pcall and xpcall as Lua's, except that a hook being stopped is not caught */
static int pcall_k(lua_State *L, int status, lua_KContext extra)
{
    if (status != LUA_OK && status != LUA_YIELD) {
        if (ax__run_killed(L))
            return lua_error(L);
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - (int)extra;
}

static int sb_pcall(lua_State *L)
{
    int status;
    luaL_checkany(L, 1);
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, pcall_k);
    return pcall_k(L, status, 0);
}

static int sb_xpcall(lua_State *L)
{
    int status, n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2); /* f, msgh, true, f, args... */
    status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, pcall_k);
    return pcall_k(L, status, 2);
}

static void hook_thread(lua_State *co)
{
    if (co != NULL)
        lua_sethook(co, ax__count_hook, LUA_MASKCOUNT, AX__HOOK_STEP);
}

enum wrap_kind {
    W_CO_CREATE,
    W_CO_WRAP,
    W_CO_RESUME, /* and close: both answer false, err */
    W_CONCAT,
    W_INSERT,
    W_REMOVE,
    W_MOVE,
    W_SORT,
    W_REP,
    W_BYTES, /* work linear in the string at 1 (utf8.len, ...) */
};

static uint64_t span(lua_Integer i, lua_Integer j)
{
    uint64_t n;
    if (j < i)
        return 1;
    n = (uint64_t)((lua_Unsigned)j - (lua_Unsigned)i) + 1;
    return n != 0 ? n : UINT64_MAX;
}

/* What the C function about to run will do, in instructions. */
static uint64_t wrap_cost(lua_State *L, enum wrap_kind kind, int n)
{
    size_t l, lsep;
    lua_Integer len, k;

    if (kind >= W_CONCAT && kind <= W_SORT && lua_type(L, 1) != LUA_TTABLE)
        return 1; /* the function raises its own error */
    switch (kind) {
    case W_CONCAT:
        k = luaL_optinteger(L, 3, 1);
        return span(k, lua_isnoneornil(L, 4) ? luaL_len(L, 1) : luaL_checkinteger(L, 4));
    case W_INSERT:
        return n == 3 ? span(luaL_checkinteger(L, 2), luaL_len(L, 1) + 1) : 1;
    case W_REMOVE:
        len = luaL_len(L, 1);
        return span(luaL_optinteger(L, 2, len), len);
    case W_MOVE:
        return span(luaL_checkinteger(L, 2), luaL_checkinteger(L, 3));
    case W_SORT: {
        uint64_t c = 1, m;
        len = luaL_len(L, 1);
        if (len <= 1)
            return 1;
        for (m = (uint64_t)len; m > 1; m >>= 1)
            c++;
        return (uint64_t)len * c;
    }
    case W_REP:
        luaL_checklstring(L, 1, &l);
        k = luaL_checkinteger(L, 2);
        luaL_optlstring(L, 3, "", &lsep);
        return k > 0 ? (uint64_t)k / 16 + 1 : 1;
    case W_BYTES:
        return lua_type(L, 1) == LUA_TSTRING ? lua_rawlen(L, 1) / 64 + 1 : 1;
    default:
        return 1;
    }
}

/* A library function charged for its C work first (upvalue 1: the function, 2: its kind).
 * string.rep of nothing is answered here: Lua's would loop n times. */
static int sb_wrapped(lua_State *L)
{
    enum wrap_kind kind = (enum wrap_kind)lua_tointeger(L, lua_upvalueindex(2));
    int n = lua_gettop(L);

    if (kind >= W_CONCAT) {
        uint64_t cost = wrap_cost(L, kind, n);
        if (kind == W_REP &&
            (lua_tointeger(L, 2) <= 0 || lua_rawlen(L, 1) + (n >= 3 ? lua_rawlen(L, 3) : 0) == 0)) {
            lua_pushliteral(L, "");
            return 1;
        }
        ax__charge(L, cost);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    switch (kind) {
    case W_CO_CREATE:
        hook_thread(lua_tothread(L, 1));
        break;
    case W_CO_WRAP:
        if (lua_getupvalue(L, 1, 1) != NULL) { /* the wrapped coroutine */
            hook_thread(lua_tothread(L, -1));
            lua_pop(L, 1);
        }
        break;
    case W_CO_RESUME:
        if (!lua_toboolean(L, 1) && ax__run_killed(L))
            return lua_error(L); /* the error object is at the top */
        break;
    default:
        break;
    }
    return lua_gettop(L);
}

/* Pushes a copy of the global library name, with fields of wraps wrapped. */
static void push_lib_copy(lua_State *L, const char *name, const char *const *wraps,
                          const enum wrap_kind *kinds)
{
    int i;
    lua_newtable(L);
    lua_getglobal(L, name); /* copy, lib */
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_settable(L, -5);
    }
    lua_pop(L, 1); /* copy */
    for (i = 0; wraps != NULL && wraps[i] != NULL; i++) {
        lua_getfield(L, -1, wraps[i]);
        lua_pushinteger(L, kinds[i]);
        lua_pushcclosure(L, sb_wrapped, 2);
        lua_setfield(L, -2, wraps[i]);
    }
}

void ax__sandbox_base(lua_State *L, struct ax_policy_engine *eng)
{
    static const char *copied[] = {"assert", "error",    "ipairs",       "next",     "pairs",
                                   "select", "tonumber", "tostring",     "type",     "rawequal",
                                   "rawget", "rawlen",   "getmetatable", "_VERSION", NULL};
    static const char *const str_w[] = {"rep", NULL};
    static const enum wrap_kind str_k[] = {W_REP};
    static const char *const tab_w[] = {"concat", "insert", "remove", "move", "sort", NULL};
    static const enum wrap_kind tab_k[] = {W_CONCAT, W_INSERT, W_REMOVE, W_MOVE, W_SORT};
    static const char *const utf_w[] = {"len", "offset", "codepoint", NULL};
    static const enum wrap_kind utf_k[] = {W_BYTES, W_BYTES, W_BYTES};
    static const char *const co_w[] = {"create", "wrap", "resume", "close", NULL};
    static const enum wrap_kind co_k[] = {W_CO_CREATE, W_CO_WRAP, W_CO_RESUME, W_CO_RESUME};
    static const char *osf[] = {"time", "clock", "date", NULL};
    int i;

    (void)eng;
    lua_newtable(L); /* base */
    for (i = 0; copied[i] != NULL; i++) {
        lua_getglobal(L, copied[i]);
        lua_setfield(L, -2, copied[i]);
    }
    lua_pushcfunction(L, sb_pcall);
    lua_setfield(L, -2, "pcall");
    lua_pushcfunction(L, sb_xpcall);
    lua_setfield(L, -2, "xpcall");
    lua_pushcfunction(L, sb_setmetatable);
    lua_setfield(L, -2, "setmetatable");

    /* string: without dump, with the budgeted matcher; it is also what s:method() finds,
     * through the string metatable (locked), so the raw copy is never reachable */
    push_lib_copy(L, "string", str_w, str_k); /* base, string */
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    ax__match_open(L);
    lua_pushliteral(L, "");
    if (lua_getmetatable(L, -1)) { /* base, string, "", mt */
        lua_pushvalue(L, -3);
        lua_setfield(L, -2, "__index");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    ax__make_readonly(L);
    lua_setfield(L, -2, "string");
    push_lib_copy(L, "table", tab_w, tab_k);
    ax__make_readonly(L);
    lua_setfield(L, -2, "table");
    push_lib_copy(L, "math", NULL, NULL);
    ax__make_readonly(L);
    lua_setfield(L, -2, "math");
    push_lib_copy(L, "utf8", utf_w, utf_k);
    ax__make_readonly(L);
    lua_setfield(L, -2, "utf8");
    push_lib_copy(L, "coroutine", co_w, co_k);
    ax__make_readonly(L);
    lua_setfield(L, -2, "coroutine");

    lua_getglobal(L, "os"); /* base, os */
    lua_newtable(L);        /* base, os, safe */
    for (i = 0; osf[i] != NULL; i++) {
        lua_getfield(L, -2, osf[i]);
        lua_setfield(L, -2, osf[i]);
    }
    lua_remove(L, -2);
    ax__make_readonly(L);
    lua_setfield(L, -2, "os"); /* base */
    lua_pushcfunction(L, ax__api_print);
    lua_setfield(L, -2, "print");
    lua_pushcfunction(L, l_sandbox_load);
    lua_setfield(L, -2, "load");

    /* base itself read-only: policies' environments index it */
    ax__make_readonly(L);
}

/* ---- engine ------------------------------------------------------------------------------ */

static int engine_setup(struct ax_policy_engine *eng)
{
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8}, {LUA_COLIBNAME, luaopen_coroutine},
        {LUA_OSLIBNAME, luaopen_os},     {NULL, NULL}};
    const luaL_Reg *lib;
    lua_State *L = lua_newstate(l_alloc, eng);

    if (L == NULL)
        return AX_ENOMEM;
    eng->L = L;
    *(struct ax_policy_engine **)lua_getextraspace(L) = eng;
    eng->api_ref = eng->base_ref = eng->fail_mt_ref = eng->session_mt_ref = LUA_NOREF;
    for (lib = libs; lib->func != NULL; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    ax__view_init(L, &eng->vs);
    ax__api_open(L, eng);
    lua_pop(L, 1);
    ax__sandbox_base(L, eng);
    eng->base_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ax__session_setup(eng);
    return 0;
}

void ax__engine_destroy(struct ax_policy_engine *eng)
{
    int i;
    if (eng->gen != NULL)
        ax__gen_unref(eng, eng->gen);
    eng->gen = NULL;
    if (eng->L != NULL)
        lua_close(eng->L);
    for (i = 0; i < eng->n_ov; i++) {
        free(eng->ov_keys[i]);
        free(eng->ov_vals[i]);
    }
    free(eng->ov_keys);
    free(eng->ov_vals);
    for (i = 0; i < eng->n_watch; i++) {
        free(eng->watch[i]);
        free(eng->watch_dirs[i]);
    }
    free(eng->watch);
    free(eng->watch_dirs);
    free(eng->chain_path);
    free(eng->lua_dir);
    free(eng->exp_path);
    ax_exp_stats_free(eng->own_stats);
    free(eng);
}

int ax__engine_create(const struct ax_policy_env *env, const char *chain, int test_mode,
                      struct ax_policy_engine **out)
{
    struct ax_policy_engine *eng = calloc(1, sizeof(*eng));
    const struct ax_config *cfg = env->cfg;

    if (eng == NULL)
        return AX_ENOMEM;
    eng->env = *env;
    ax_list_init(&eng->done);
    eng->test_mode = test_mode;
    eng->mem_max = cfg && cfg->lua_mem_max ? cfg->lua_mem_max : (size_t)256 << 20;
    eng->req_mem_max = cfg && cfg->lua_req_mem_max ? cfg->lua_req_mem_max : (size_t)16 << 20;
    eng->budget = cfg && cfg->lua_instr_budget ? cfg->lua_instr_budget : 10000000;
    eng->run_max_ns = (cfg && cfg->lua_run_max_ms ? cfg->lua_run_max_ms : 1000) * 1000000;
    eng->sleep_max_ms = cfg && cfg->lua_sleep_max_ms ? cfg->lua_sleep_max_ms : 30000;
    eng->chain_path = ax__strdup(chain                       ? chain
                                 : cfg && cfg->policies_path ? cfg->policies_path
                                                             : AX_POLICY_DIR "/default.lua");
    eng->lua_dir = ax__strdup(cfg && cfg->lua_dir ? cfg->lua_dir : AX_LUA_DIR);
    eng->stats = env->stats;
    if (cfg && cfg->experiment_path && !test_mode &&
        (eng->exp_path = ax__strdup(cfg->experiment_path)) == NULL) {
        ax__engine_destroy(eng);
        return AX_ENOMEM;
    }
    if (eng->stats == NULL && ax_exp_stats_new(&eng->own_stats) == 0)
        eng->stats = eng->own_stats;
    if (eng->chain_path == NULL || eng->lua_dir == NULL || eng->stats == NULL ||
        engine_setup(eng) < 0) {
        ax__engine_destroy(eng);
        return AX_ENOMEM;
    }
    *out = eng;
    return 0;
}

void ax__engine_init_handles(struct ax_policy_engine *eng)
{
    if (eng->env.loop == NULL)
        return;
    uv_idle_init(eng->env.loop, &eng->idle);
    eng->idle.data = eng;
    uv_timer_init(eng->env.loop, &eng->debounce);
    uv_unref((uv_handle_t *)&eng->debounce);
    eng->debounce.data = eng;
    eng->handles_init = 1;
}

int ax_policy_engine_new(const struct ax_policy_env *env, struct ax_policy_engine **out,
                         struct ax_error *err)
{
    struct ax_policy_engine *eng;
    char msg[1024];
    int rc;

    *out = NULL;
    if ((rc = ax__engine_create(env, NULL, 0, &eng)) < 0)
        return ax_error_set(err, 500, "api_error", "policy engine: %s", ax_strerror(rc)), rc;
    if ((rc = ax__engine_load(eng, msg, sizeof(msg))) < 0) {
        ax_error_set(err, 500, "api_error", "%s %s: %s",
                     eng->exp_path ? "experiment" : "policy chain",
                     eng->exp_path ? eng->exp_path : eng->chain_path, msg);
        AX_LOG_ERROR(NULL, "policies: %s", err->message);
        ax__engine_destroy(eng);
        return AX_ELUA;
    }
    AX_LOG_INFO(NULL, "policies: generation %" PRIu64 " loaded from %s (%d policies)", eng->gen->id,
                eng->chain_path, eng->gen->n);
    ax__engine_init_handles(eng);
    *out = eng;
    return 0;
}

static void engine_on_handle_closed(uv_handle_t *h)
{
    struct ax_policy_engine *eng = h->data;
    if (--eng->pending_closes == 0) {
        void (*cb)(void *) = eng->on_closed;
        void *ud = eng->on_closed_ud;
        ax__engine_destroy(eng);
        if (cb != NULL)
            cb(ud);
    }
}

void ax_policy_engine_close(struct ax_policy_engine *eng, void (*on_closed)(void *ud), void *ud)
{
    int i;
    if (eng == NULL || eng->closing)
        return;
    eng->closing = 1;
    eng->on_closed = on_closed;
    eng->on_closed_ud = ud;
    if (!eng->handles_init) {
        ax__engine_destroy(eng);
        if (on_closed != NULL)
            on_closed(ud);
        return;
    }
    eng->pending_closes = 2 + eng->n_watch;
    uv_close((uv_handle_t *)&eng->idle, engine_on_handle_closed);
    uv_close((uv_handle_t *)&eng->debounce, engine_on_handle_closed);
    for (i = 0; i < eng->n_watch; i++)
        uv_close((uv_handle_t *)eng->watch[i], engine_on_handle_closed);
}

void ax_policy_engine_free(struct ax_policy_engine *eng)
{
    ax_policy_engine_close(eng, NULL, NULL);
}

int ax__engine_pcall(struct ax_policy_engine *eng, int nargs, int nres)
{
    int status;
    eng->protected_alloc = 1;
    status = lua_pcall(eng->L, nargs, nres, 0);
    eng->protected_alloc = 0;
    return status;
}
