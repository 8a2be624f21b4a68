/* policy.c - the Lua policy engine: state, sandbox, generations, one coroutine per request.
 *
 * One lua_State per engine. A chain load (lua/anthroxy/chain.lua, run under pcall in a
 * budgeted coroutine) yields a generation; requests pin one and run each policy's hook in
 * their own coroutine, resumed here after the API's waiting calls (policy_api.c) complete.
 * Hooks edit a view (view.c) whose writes are committed or undone per hook. Also the
 * `anthroxy check` and `anthroxy test-lua` commands. */
#include "view.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "anthroxy.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_monitor.h"
#include "anthroxy_translate.h"
#include "anthroxy_upstream.h"

#define HOOK_STEP 1000            /* instructions between budget checks */
#define LOAD_BUDGET_FACTOR 10     /* a chain load may spend 10 hook budgets */
#define MAX_FILE_BYTES (4u << 20) /* a policy or chain file */
#define DEBOUNCE_MS 200
#define DEFAULT_WINDOW 131072

static const char *hook_names[AX_HOOK_COUNT] = {"on_request", "on_upstream_request", "on_response",
                                                "on_upstream_error"};
static char require_key;
static struct ax__run_slot killer_slot = {NULL, 0, 0, 1, 0, 0, 0, 0};

/* ---- small helpers --------------------------------------------------------------------- */

struct ax_policy_engine *ax__engine_of(lua_State *L)
{
    return *(struct ax_policy_engine **)lua_getextraspace(L);
}

const char *ax__req_policy_name(const struct ax_policy_req *pr)
{
    if (pr->gen != NULL && pr->idx >= 0 && pr->idx < pr->gen->n)
        return pr->gen->p[pr->idx].name;
    return "?";
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s ? s : "") + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s ? s : "", n);
    return d;
}

static int64_t wall_ms(void)
{
    uv_timeval64_t tv;
    if (uv_gettimeofday(&tv) != 0)
        return 0;
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void iso_time(int64_t ms, char *out, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* Reads a small file synchronously: used at load/reload only, never on a request's path. */
static char *read_file(const char *path, size_t *len, char *err, size_t errn)
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

/* Once the budget (or the memory cap) is spent, the request's own coroutine yields from
 * here: a pcall in the policy cannot catch a yield, and the engine then closes the
 * coroutine. Elsewhere (a coroutine of the policy's own, a non-yieldable C call) it raises,
 * again at every step, until control is back where it can yield. */
static void count_hook(lua_State *L, lua_Debug *ar)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    struct ax__run_slot *rs = eng->cur_rs;

    (void)ar;
    if (rs == NULL)
        return;
    rs->instr += HOOK_STEP;
    if (rs->instr <= rs->budget && !rs->budget_hit && !rs->mem_hit)
        return;
    if (!rs->mem_hit)
        rs->budget_hit = 1;
    if (L == rs->co && lua_isyieldable(L)) {
        lua_yield(L, 0);
        return;
    }
    luaL_error(L, rs->mem_hit ? "memory cap exceeded" : "instruction budget exceeded");
}

/* ---- generations ------------------------------------------------------------------------ */

static void unref(lua_State *L, int *ref)
{
    if (*ref != LUA_NOREF && *ref != LUA_REFNIL)
        luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    *ref = LUA_NOREF;
}

static void gen_free(struct ax_policy_engine *eng, struct ax__gen *g)
{
    int i, h;
    for (i = 0; i < g->n; i++) {
        struct ax__gen_policy *p = &g->p[i];
        for (h = 0; h < AX_HOOK_COUNT; h++)
            unref(eng->L, &p->fn_ref[h]);
        unref(eng->L, &p->settings_ref);
        cJSON_Delete(p->settings);
        free(p->name);
        free(p->file);
    }
    free(g->p);
    for (i = 0; i < g->n_files; i++)
        free(g->files[i]);
    free(g->files);
    unref(eng->L, &g->loaded_ref);
    unref(eng->L, &g->require_ref);
    if (g->refs >= 0 && g->id > 0)
        eng->gens_alive--;
    free(g);
}

static void gen_unref(struct ax_policy_engine *eng, struct ax__gen *g)
{
    if (g != NULL && --g->refs == 0)
        gen_free(eng, g);
}

/* Pushes a fresh sandbox environment for generation g (whose loaded table is at the top's
 * require closure): own globals over the shared read-only base. */
static void push_newenv(lua_State *L, struct ax_policy_engine *eng, int require_idx)
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
    text = read_file(path, &len, err, sizeof(err));
    if (text == NULL)
        return luaL_error(L, "require '%s': %s", name, err);
    lua_pushfstring(L, "@%s", path); /* name, chunkname */
    if (luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t") != LUA_OK) {
        free(text);
        return lua_error(L);
    }
    free(text);                                        /* name, chunkname, f */
    lua_rawgetp(L, lua_upvalueindex(1), &require_key); /* name, chunkname, f, require */
    push_newenv(L, eng, -1);                           /* ..., f, require, env */
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
static void gen_make_require(lua_State *L, struct ax_policy_engine *eng, struct ax__gen *g)
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

/* ---- host functions for chain.lua and testing.lua (privileged, never in a policy env) --- */

static int host_read(lua_State *L)
{
    char err[512];
    size_t len;
    char *text = read_file(luaL_checkstring(L, 1), &len, err, sizeof(err));
    if (text == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushlstring(L, text, len);
    free(text);
    return 1;
}

/* compile(text, chunkname [, env]) -> function | nil, err. Text only; env defaults to a new
 * sandbox environment of the generation (upvalue 1: its require). */
static int host_compile(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    const char *name = luaL_checkstring(L, 2);

    if (luaL_loadbufferx(L, text, len, name, "t") != LUA_OK) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    if (lua_istable(L, 3))
        lua_pushvalue(L, 3);
    else
        push_newenv(L, eng, lua_upvalueindex(1));
    lua_setupvalue(L, -2, 1);
    return 1;
}

static int host_newenv(lua_State *L)
{
    push_newenv(L, ax__engine_of(L), lua_upvalueindex(1));
    return 1;
}

static int host_getenv(lua_State *L)
{
    const char *v = getenv(luaL_checkstring(L, 1));
    if (v == NULL)
        lua_pushnil(L);
    else
        lua_pushstring(L, v);
    return 1;
}

static int host_log(lua_State *L)
{
    const char *lvl = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    int l = ax_log_level_parse(lvl);
    if (l < 0)
        l = AX_LOG_LVL_INFO;
    if (l >= (int)ax_log_level_current)
        ax_log_write((enum ax_log_level)l, NULL, "%s", msg);
    return 0;
}

/* Pushes the host table; require closure at require_idx. */
static void push_host(lua_State *L, struct ax_policy_engine *eng, int require_idx)
{
    int i;
    require_idx = lua_absindex(L, require_idx);
    lua_newtable(L); /* host */
    lua_pushcfunction(L, host_read);
    lua_setfield(L, -2, "read");
    lua_pushvalue(L, require_idx);
    lua_pushcclosure(L, host_compile, 1);
    lua_setfield(L, -2, "compile");
    lua_pushvalue(L, require_idx);
    lua_pushcclosure(L, host_newenv, 1);
    lua_setfield(L, -2, "newenv");
    lua_pushcfunction(L, host_getenv);
    lua_setfield(L, -2, "getenv");
    lua_pushcfunction(L, host_log);
    lua_setfield(L, -2, "log");
    lua_pushstring(L, eng->lua_dir);
    lua_setfield(L, -2, "lua_dir");
    lua_pushstring(L, AX_POLICY_DIR);
    lua_setfield(L, -2, "policy_dir");
    lua_newtable(L); /* host, ov */
    for (i = 0; i < eng->n_ov; i++) {
        lua_pushstring(L, eng->ov_vals[i]);
        lua_setfield(L, -2, eng->ov_keys[i]);
    }
    lua_setfield(L, -2, "overrides"); /* host */
}

/* Compiles <lua dir>/anthroxy/<file> in a sandbox env and calls it: pushes its result. */
static void push_runtime_module(lua_State *L, struct ax_policy_engine *eng, const char *file,
                                int require_idx)
{
    char path[4096], err[512];
    size_t len;
    char *text;

    require_idx = lua_absindex(L, require_idx);
    snprintf(path, sizeof(path), "%s/anthroxy/%s", eng->lua_dir, file);
    text = read_file(path, &len, err, sizeof(err));
    if (text == NULL)
        luaL_error(L, "%s", err);
    lua_pushfstring(L, "@%s", path);
    if (luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t") != LUA_OK) {
        free(text);
        lua_error(L);
    }
    free(text);
    lua_remove(L, -2);
    push_newenv(L, eng, require_idx);
    lua_setupvalue(L, -2, 1);
    lua_call(L, 0, 1);
}

/* ---- chain load --------------------------------------------------------------------------- */

struct load_ctx {
    struct ax_policy_engine *eng;
    struct ax__gen *g;
};

static int report_to_json(lua_State *L)
{
    cJSON **out = lua_touserdata(L, 2);
    *out = ax__json_from_lua(L, 1);
    return 0;
}

static void take_policy(lua_State *L, struct ax_policy_engine *eng, struct ax__gen_policy *p)
{
    int h;
    lua_getfield(L, -1, "name");
    p->name = xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, -1, "file");
    p->file = xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (p->name == NULL || p->file == NULL)
        luaL_error(L, "not enough memory");
    lua_getfield(L, -1, "module"); /* e, mod */
    for (h = 0; h < AX_HOOK_COUNT; h++) {
        if (lua_getfield(L, -1, hook_names[h]) == LUA_TFUNCTION)
            p->fn_ref[h] = luaL_ref(L, LUA_REGISTRYINDEX);
        else
            lua_pop(L, 1);
    }
    lua_pop(L, 1); /* e */
    lua_getfield(L, -1, "settings");
    p->settings_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "report"); /* e, report */
    lua_pushcfunction(L, report_to_json);
    lua_insert(L, -2); /* e, f, report */
    lua_pushlightuserdata(L, &p->settings);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) { /* e, err: settings JSON cannot hold */
        lua_pop(L, 1);
        p->settings = cJSON_CreateObject();
    }
    (void)eng;
}

static int load_protected(lua_State *L)
{
    struct load_ctx *lc = lua_touserdata(L, 1);
    struct ax_policy_engine *eng = lc->eng;
    struct ax__gen *g = lc->g;
    struct ax__run_slot rs;
    lua_State *co;
    int status, nres, i, n, h;

    lua_settop(L, 0);
    gen_make_require(L, eng, g);                      /* require */
    push_runtime_module(L, eng, "chain.lua", 1);      /* require, M */
    if (lua_getfield(L, -1, "load") != LUA_TFUNCTION) /* require, M, load */
        return luaL_error(L, "chain.lua: no load function");
    co = lua_newthread(L); /* require, M, load, co */
    lua_pushvalue(L, 3);
    push_host(L, eng, 1);
    lua_pushstring(L, eng->chain_path); /* ..., co, load, host, path */
    lua_xmove(L, co, 3);                /* require, M, load, co */
    memset(&rs, 0, sizeof(rs));
    rs.co = co;
    rs.budget = eng->budget * LOAD_BUDGET_FACTOR;
    lua_sethook(co, count_hook, LUA_MASKCOUNT, HOOK_STEP);
    eng->cur_rs = &rs;
    status = lua_resume(co, L, 2, &nres);
    eng->cur_rs = NULL;
    if (status == LUA_YIELD)
        return luaL_error(L, "%s: %s", eng->chain_path,
                          rs.budget_hit ? "instruction budget exceeded while loading"
                          : rs.mem_hit  ? "memory cap exceeded while loading"
                                        : "a policy yielded while loading");
    if (status != LUA_OK) {
        const char *msg = lua_tostring(co, -1);
        lua_pushstring(L, msg ? msg : "error object is not a string");
        return lua_error(L);
    }
    lua_xmove(co, L, 1);             /* ..., co, gen */
    lua_getfield(L, -1, "policies"); /* ..., gen, policies */
    n = (int)lua_rawlen(L, -1);
    g->p = calloc((size_t)(n ? n : 1), sizeof(*g->p));
    if (g->p == NULL)
        return luaL_error(L, "not enough memory");
    for (i = 0; i < n; i++) {
        for (h = 0; h < AX_HOOK_COUNT; h++)
            g->p[i].fn_ref[h] = LUA_NOREF;
        g->p[i].settings_ref = LUA_NOREF;
    }
    for (i = 0; i < n; i++) {
        g->n = i + 1;
        lua_rawgeti(L, -1, i + 1); /* ..., policies, e */
        take_policy(L, eng, &g->p[i]);
        lua_pop(L, 1);
        for (h = 0; h < AX_HOOK_COUNT; h++)
            if (g->p[i].fn_ref[h] != LUA_NOREF)
                g->has_hook[h] = 1;
    }
    lua_pop(L, 1); /* ..., gen */
    lua_getfield(L, -1, "files");
    n = (int)lua_rawlen(L, -1);
    g->files = calloc((size_t)(n ? n : 1), sizeof(char *));
    if (g->files == NULL)
        return luaL_error(L, "not enough memory");
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, -1, i + 1);
        g->files[i] = xstrdup(lua_tostring(L, -1));
        g->n_files = i + 1;
        lua_pop(L, 1);
    }
    return 0;
}

/* Compiles and validates the chain into a new generation and swaps it in. */
static int engine_load(struct ax_policy_engine *eng, char *err, size_t errn)
{
    struct ax__gen *g = calloc(1, sizeof(*g));
    struct load_ctx lc;
    struct ax__gen *old;
    int status;

    if (g == NULL) {
        snprintf(err, errn, "out of memory");
        return AX_ENOMEM;
    }
    g->loaded_ref = g->require_ref = LUA_NOREF;
    lc.eng = eng;
    lc.g = g;
    eng->protected_alloc = 1;
    lua_pushcfunction(eng->L, load_protected);
    lua_pushlightuserdata(eng->L, &lc);
    status = lua_pcall(eng->L, 1, 0, 0);
    eng->protected_alloc = 0;
    if (status != LUA_OK) {
        const char *m = lua_tostring(eng->L, -1);
        snprintf(err, errn, "%s", m ? m : "error loading the chain");
        lua_pop(eng->L, 1);
        gen_free(eng, g);
        lua_gc(eng->L, LUA_GCCOLLECT);
        return AX_ELUA;
    }
    g->id = ++eng->gen_counter;
    g->loaded_at_ms = wall_ms();
    g->refs = 1;
    eng->gens_alive++;
    old = eng->gen;
    eng->gen = g;
    gen_unref(eng, old);
    return 0;
}

/* ---- engine ------------------------------------------------------------------------------ */

static int sess_note(lua_State *L, const char *field, int reset)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, field);
    lua_pushinteger(L, reset ? 0 : lua_tointeger(L, -1) + 1);
    lua_setfield(L, 1, field);
    return 0;
}

static int sess_note_prune(lua_State *L)
{
    return sess_note(L, "prune_count", 0);
}

static int sess_note_overflow(lua_State *L)
{
    return sess_note(L, "overflow_count", 0);
}

static int sess_note_forced(lua_State *L)
{
    return sess_note(L, "forced_tool_turns", 0);
}

static int sess_reset_forced(lua_State *L)
{
    return sess_note(L, "forced_tool_turns", 1);
}

static int engine_setup(struct ax_policy_engine *eng)
{
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8}, {LUA_COLIBNAME, luaopen_coroutine},
        {LUA_OSLIBNAME, luaopen_os},     {NULL, NULL}};
    static const luaL_Reg sess[] = {{"note_prune", sess_note_prune},
                                    {"note_overflow", sess_note_overflow},
                                    {"note_forced_turn", sess_note_forced},
                                    {"reset_forced_turns", sess_reset_forced},
                                    {NULL, NULL}};
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
    lua_newtable(L); /* mt */
    lua_newtable(L); /* mt, methods */
    luaL_setfuncs(L, sess, 0);
    lua_setfield(L, -2, "__index"); /* mt */
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable"); /* shared by every request's ctx.session */
    eng->session_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

static void engine_destroy(struct ax_policy_engine *eng)
{
    int i;
    if (eng->gen != NULL)
        gen_unref(eng, eng->gen);
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
    free(eng);
}

static void engine_on_idle(uv_idle_t *h);

static int engine_create(const struct ax_policy_env *env, const char *chain, int test_mode,
                         struct ax_policy_engine **out)
{
    struct ax_policy_engine *eng = calloc(1, sizeof(*eng));
    const struct ax_config *cfg = env->cfg;

    if (eng == NULL)
        return AX_ENOMEM;
    eng->env = *env;
    eng->test_mode = test_mode;
    eng->mem_max = cfg && cfg->lua_mem_max ? cfg->lua_mem_max : (size_t)256 << 20;
    eng->req_mem_max = cfg && cfg->lua_req_mem_max ? cfg->lua_req_mem_max : (size_t)16 << 20;
    eng->budget = cfg && cfg->lua_instr_budget ? cfg->lua_instr_budget : 10000000;
    eng->chain_path = xstrdup(chain                       ? chain
                              : cfg && cfg->policies_path ? cfg->policies_path
                                                          : AX_POLICY_DIR "/default.lua");
    eng->lua_dir = xstrdup(cfg && cfg->lua_dir ? cfg->lua_dir : AX_LUA_DIR);
    if (eng->chain_path == NULL || eng->lua_dir == NULL || engine_setup(eng) < 0) {
        engine_destroy(eng);
        return AX_ENOMEM;
    }
    *out = eng;
    return 0;
}

static void engine_init_handles(struct ax_policy_engine *eng)
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
    if ((rc = engine_create(env, NULL, 0, &eng)) < 0)
        return ax_error_set(err, 500, "api_error", "policy engine: %s", ax_strerror(rc)), rc;
    if ((rc = engine_load(eng, msg, sizeof(msg))) < 0) {
        ax_error_set(err, 500, "api_error", "policy chain %s: %s", eng->chain_path, msg);
        AX_LOG_ERROR(NULL, "policies: %s", err->message);
        engine_destroy(eng);
        return AX_ELUA;
    }
    AX_LOG_INFO(NULL, "policies: generation %" PRIu64 " loaded from %s (%d policies)", eng->gen->id,
                eng->chain_path, eng->gen->n);
    engine_init_handles(eng);
    *out = eng;
    return 0;
}

static void engine_on_handle_closed(uv_handle_t *h)
{
    struct ax_policy_engine *eng = h->data;
    if (--eng->pending_closes == 0) {
        void (*cb)(void *) = eng->on_closed;
        void *ud = eng->on_closed_ud;
        engine_destroy(eng);
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
        engine_destroy(eng);
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

static int watch_all(struct ax_policy_engine *eng);

void ax_policy_engine_reload(struct ax_policy_engine *eng)
{
    char msg[1024];
    if (eng == NULL || eng->closing)
        return;
    if (engine_load(eng, msg, sizeof(msg)) < 0) {
        snprintf(eng->last_error, sizeof(eng->last_error), "%s", msg);
        eng->last_error_at_ms = wall_ms();
        eng->n_reload_errors++;
        AX_LOG_ERROR(NULL, "policies: reload failed, generation %" PRIu64 " stays: %s",
                     eng->gen->id, msg);
        return;
    }
    eng->last_error[0] = 0;
    eng->n_reloads++;
    if (eng->watching)
        watch_all(eng);
    AX_LOG_INFO(NULL, "policies: generation %" PRIu64 " loaded from %s (%d policies)", eng->gen->id,
                eng->chain_path, eng->gen->n);
}

static void engine_on_debounce(uv_timer_t *t)
{
    ax_policy_engine_reload(t->data);
}

static void engine_on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    struct ax_policy_engine *eng = h->data;
    size_t n = filename ? strlen(filename) : 0;
    (void)events;
    if (status < 0 || eng->closing)
        return;
    /* editors save through temporary files: only .lua names count, and a burst of events
     * becomes one reload */
    if (filename != NULL && (n < 4 || strcmp(filename + n - 4, ".lua") != 0)) {
        const char *base = strrchr(eng->chain_path, '/');
        if (strcmp(filename, base ? base + 1 : eng->chain_path) != 0)
            return; /* nor the chain file, whatever its name */
    }
    uv_timer_start(&eng->debounce, engine_on_debounce, DEBOUNCE_MS, 0);
}

static void dir_of(const char *path, char *out, size_t n)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(out, n, ".");
    else if (slash == path)
        snprintf(out, n, "/");
    else
        snprintf(out, n, "%.*s", (int)(slash - path), path);
}

/* Starts a watcher on dir unless one runs there already. */
static int watch_dir(struct ax_policy_engine *eng, const char *dir)
{
    uv_fs_event_t **nw, *w;
    char **nd, *d;
    int i;

    for (i = 0; i < eng->n_watch; i++)
        if (strcmp(eng->watch_dirs[i], dir) == 0)
            return 0;
    nw = realloc(eng->watch, sizeof(*nw) * (size_t)(eng->n_watch + 1));
    if (nw == NULL)
        return AX_ENOMEM;
    eng->watch = nw;
    nd = realloc(eng->watch_dirs, sizeof(*nd) * (size_t)(eng->n_watch + 1));
    if (nd == NULL)
        return AX_ENOMEM;
    eng->watch_dirs = nd;
    w = calloc(1, sizeof(*w));
    d = xstrdup(dir);
    if (w == NULL || d == NULL) {
        free(w);
        free(d);
        return AX_ENOMEM;
    }
    uv_fs_event_init(eng->env.loop, w);
    w->data = eng;
    uv_unref((uv_handle_t *)w); /* watching alone keeps no loop running */
    eng->watch[eng->n_watch] = w;
    eng->watch_dirs[eng->n_watch] = d;
    eng->n_watch++;
    if (uv_fs_event_start(w, engine_on_fs_event, dir, 0) < 0) {
        AX_LOG_WARN(NULL, "policies: cannot watch %s", dir);
        return AX_EIO;
    }
    AX_LOG_DEBUG(NULL, "policies: watching %s", dir);
    return 0;
}

/* Watches the directories of the chain, of its policy files and lua/anthroxy/; after a
 * reload, directories new to the chain are added (none are dropped: harmless). */
static int watch_all(struct ax_policy_engine *eng)
{
    char d[1024];
    int i, rc = 0, r;
    struct ax__gen *g = eng->gen;

    dir_of(eng->chain_path, d, sizeof(d));
    rc = watch_dir(eng, d);
    for (i = 0; i < g->n_files; i++) {
        dir_of(g->files[i], d, sizeof(d));
        if ((r = watch_dir(eng, d)) < 0)
            rc = r;
    }
    snprintf(d, sizeof(d), "%s/anthroxy", eng->lua_dir);
    if ((r = watch_dir(eng, d)) < 0)
        rc = r;
    return rc;
}

int ax_policy_engine_watch(struct ax_policy_engine *eng)
{
    if (!eng->handles_init || eng->closing)
        return AX_EINVAL;
    eng->watching = 1;
    return watch_all(eng);
}

int ax_policy_engine_set_override(struct ax_policy_engine *eng, const char *name_dot_key,
                                  const char *value)
{
    const char *dot = strchr(name_dot_key, '.');
    char **nk, **nv;
    int i;

    if (dot == NULL || dot == name_dot_key || dot[1] == 0 || value == NULL)
        return AX_EINVAL;
    for (i = 0; i < eng->n_ov; i++) {
        if (strcmp(eng->ov_keys[i], name_dot_key) == 0) {
            char *v = xstrdup(value);
            if (v == NULL)
                return AX_ENOMEM;
            free(eng->ov_vals[i]);
            eng->ov_vals[i] = v;
            return 0;
        }
    }
    nk = realloc(eng->ov_keys, sizeof(char *) * (size_t)(eng->n_ov + 1));
    if (nk == NULL)
        return AX_ENOMEM;
    eng->ov_keys = nk;
    nv = realloc(eng->ov_vals, sizeof(char *) * (size_t)(eng->n_ov + 1));
    if (nv == NULL)
        return AX_ENOMEM;
    eng->ov_vals = nv;
    nk[eng->n_ov] = xstrdup(name_dot_key);
    nv[eng->n_ov] = xstrdup(value);
    if (nk[eng->n_ov] == NULL || nv[eng->n_ov] == NULL) {
        free(nk[eng->n_ov]);
        free(nv[eng->n_ov]);
        return AX_ENOMEM;
    }
    eng->n_ov++;
    return 0;
}

uint64_t ax_policy_engine_generation(const struct ax_policy_engine *eng)
{
    return eng->gen ? eng->gen->id : 0;
}

int ax_policy_engine_has_hook(const struct ax_policy_engine *eng, enum ax_hook hook)
{
    return eng->gen != NULL && hook < AX_HOOK_COUNT && eng->gen->has_hook[hook];
}

int ax_policy_req_has_hook(const struct ax_policy_req *pr, enum ax_hook hook)
{
    return pr != NULL && pr->gen != NULL && hook < AX_HOOK_COUNT && pr->gen->has_hook[hook];
}

cJSON *ax_policy_engine_status(const struct ax_policy_engine *eng)
{
    cJSON *o = cJSON_CreateObject(), *arr, *files;
    const struct ax__gen *g = eng->gen;
    char ts[80];
    int i, h;

    if (o == NULL)
        return NULL;
    cJSON_AddNumberToObject(o, "generation", g ? (double)g->id : 0);
    iso_time(g ? g->loaded_at_ms : 0, ts, sizeof(ts));
    cJSON_AddStringToObject(o, "loaded_at", ts);
    cJSON_AddStringToObject(o, "chain", eng->chain_path);
    files = cJSON_AddArrayToObject(o, "files");
    for (i = 0; g && files && i < g->n_files; i++)
        cJSON_AddItemToArray(files, cJSON_CreateString(g->files[i]));
    arr = cJSON_AddArrayToObject(o, "policies");
    for (i = 0; g && arr && i < g->n; i++) {
        cJSON *p = cJSON_CreateObject(), *hooks;
        if (p == NULL)
            break;
        cJSON_AddItemToArray(arr, p);
        cJSON_AddStringToObject(p, "name", g->p[i].name);
        cJSON_AddStringToObject(p, "file", g->p[i].file);
        hooks = cJSON_AddArrayToObject(p, "hooks");
        for (h = 0; hooks && h < AX_HOOK_COUNT; h++)
            if (g->p[i].fn_ref[h] != LUA_NOREF)
                cJSON_AddItemToArray(hooks, cJSON_CreateString(hook_names[h]));
        if (g->p[i].settings != NULL)
            cJSON_AddItemToObject(p, "settings", cJSON_Duplicate(g->p[i].settings, 1));
    }
    if (eng->last_error[0]) {
        cJSON_AddStringToObject(o, "last_error", eng->last_error);
        iso_time(eng->last_error_at_ms, ts, sizeof(ts));
        cJSON_AddStringToObject(o, "last_error_at", ts);
    } else {
        cJSON_AddNullToObject(o, "last_error");
    }
    cJSON_AddNumberToObject(o, "errors", (double)eng->n_errors);
    cJSON_AddNumberToObject(o, "budget_kills", (double)eng->n_budget_kills);
    cJSON_AddNumberToObject(o, "memory_kills", (double)eng->n_memory_kills);
    cJSON_AddNumberToObject(o, "failures", (double)eng->n_failures);
    cJSON_AddNumberToObject(o, "reloads", (double)eng->n_reloads);
    cJSON_AddNumberToObject(o, "reload_errors", (double)eng->n_reload_errors);
    cJSON_AddNumberToObject(o, "lua_memory", (double)eng->mem_total);
    cJSON_AddNumberToObject(o, "requests_in_flight", eng->in_flight);
    cJSON_AddNumberToObject(o, "generations_alive", eng->gens_alive);
    return o;
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
    lua_sethook(co, count_hook, LUA_MASKCOUNT, HOOK_STEP);
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
    unref(eng->L, &pr->co_ref);
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
    setfield_int(L, "prune_count", s ? s->prune_count : 0);
    setfield_int(L, "overflow_count", s ? s->overflow_count : 0);
    setfield_int(L, "forced_tool_turns", s ? s->forced_tool_turns : 0);
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
    lua_pushstring(L, hook_names[pr->hook]);
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
    pr->eng = eng;
    pr->request_id = xstrdup(info->request_id);
    pr->session_id = xstrdup(info->session_id);
    pr->client_model = xstrdup(info->client_model);
    pr->user_agent = xstrdup(info->user_agent);
    pr->arm = xstrdup(info->arm && *info->arm ? info->arm : "default");
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

double ax_policy_req_report_scale(const struct ax_policy_req *pr)
{
    return pr->report_scale;
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

static const char *sess_fields[3] = {"prune_count", "overflow_count", "forced_tool_turns"};

static void enqueue_done(struct ax_policy_req *pr)
{
    struct ax_policy_engine *eng = pr->eng;
    pr->queued = 1;
    pr->qnext = NULL;
    pr->qprev = eng->done_tail;
    if (eng->done_tail != NULL)
        eng->done_tail->qnext = pr;
    else
        eng->done_head = pr;
    eng->done_tail = pr;
    if (!uv_is_active((uv_handle_t *)&eng->idle))
        uv_idle_start(&eng->idle, engine_on_idle);
}

static void dequeue_done(struct ax_policy_req *pr)
{
    struct ax_policy_engine *eng = pr->eng;
    if (!pr->queued)
        return;
    if (pr->qprev != NULL)
        pr->qprev->qnext = pr->qnext;
    else
        eng->done_head = pr->qnext;
    if (pr->qnext != NULL)
        pr->qnext->qprev = pr->qprev;
    else
        eng->done_tail = pr->qprev;
    pr->qnext = pr->qprev = NULL;
    pr->queued = 0;
}

static void engine_on_idle(uv_idle_t *h)
{
    struct ax_policy_engine *eng = h->data;
    struct ax_policy_req *pr;

    while ((pr = eng->done_head) != NULL) {
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

/* Pushes the hook's arguments on the coroutine; returns their count. */
static int hook_begin(struct ax_policy_req *pr)
{
    struct ax_policy_engine *eng = pr->eng;
    struct ax__gen_policy *p = &pr->gen->p[pr->idx];
    lua_State *L = eng->L, *co = pr->rs.co;
    int i;

    ax__scope_open(&eng->vs, &pr->scope, pr->hook == AX_HOOK_RESPONSE);
    pr->scope.charge = &pr->rs.json_mem;
    pr->scope.charge_extra = &pr->rs.mem;
    pr->scope.charge_max = eng->req_mem_max;
    pr->scope.charge_hit = &pr->rs.mem_hit;
    pr->scope.memo = pr->memo.root != NULL ? &pr->memo : NULL;
    pr->rs.instr = 0;
    pr->rs.budget = eng->budget;
    pr->rs.budget_hit = pr->rs.mem_hit = 0;
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
    for (i = 0; i < 3; i++)
        pr->saved_session[i] = ctx_session_int(L, sess_fields[i]);
    pr->saved_scale = pr->report_scale;
    lua_pop(L, 1);

    if (eng->trace != NULL)
        pr->before = cJSON_Duplicate(pr->tree, 1);
    lua_settop(co, 0);
    lua_rawgeti(co, LUA_REGISTRYINDEX, p->fn_ref[pr->hook]);
    if (pr->hook == AX_HOOK_UPSTREAM_ERROR) {
        if (pr->aux != NULL)
            ax__json_push_table(co, pr->aux);
        else
            lua_newtable(co);
    }
    ax__view_push(co, &eng->vs, &pr->scope, pr->tree);
    lua_rawgeti(co, LUA_REGISTRYINDEX, pr->ctx_ref);
    pr->in_hook = 1;
    return pr->hook == AX_HOOK_UPSTREAM_ERROR ? 3 : 2;
}

static void hook_commit(struct ax_policy_req *pr)
{
    struct ax_policy_engine *eng = pr->eng;
    lua_State *L = eng->L;
    int i;
    double scale;

    if (eng->trace != NULL && pr->before != NULL)
        eng->trace(eng->trace_ud, ax__req_policy_name(pr), pr->hook, pr->before, pr->tree);
    cJSON_Delete(pr->before);
    pr->before = NULL;
    ax__scope_commit(&pr->scope);
    lua_rawgeti(L, LUA_REGISTRYINDEX, pr->ctx_ref); /* ctx */
    for (i = 0; i < 3 && pr->session != NULL; i++) {
        int64_t v = ctx_session_int(L, sess_fields[i]);
        if (v == pr->saved_session[i])
            continue;
        if (i == 0)
            pr->session->prune_count = v;
        else if (i == 1)
            pr->session->overflow_count = v;
        else
            pr->session->forced_tool_turns = v;
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
        for (i = 0; i < 3; i++)
            setfield_int(L, sess_fields[i], pr->saved_session[i]);
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
                 hook_names[pr->hook], msg);
    thread_renew(pr);
    if (eng->env.cfg != NULL && eng->env.cfg->policy_fail_closed) {
        eng->n_failures++;
        pr->rc = AX_ELUA;
        ax_error_set(&pr->err, 500, "api_error", "policy %s failed in %s: %s", p->name,
                     hook_names[pr->hook], msg);
        run_finish(pr);
        return;
    }
    pr->idx++;
}

static int next_hook(struct ax_policy_req *pr)
{
    while (pr->idx < pr->gen->n && pr->gen->p[pr->idx].fn_ref[pr->hook] == LUA_NOREF)
        pr->idx++;
    return pr->idx < pr->gen->n;
}

static int resume(struct ax_policy_req *pr, int nargs, int *nres)
{
    struct ax_policy_engine *eng = pr->eng;
    int status;

    eng->cur = pr;
    eng->cur_rs = &pr->rs;
    eng->vs.cur = &pr->scope;
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
    pr->aux = aux;
    pr->done = done;
    pr->done_ud = ud;
    pr->idx = 0;
    pr->retry = 0;
    pr->rc = 0;
    memset(&pr->err, 0, sizeof(pr->err));
    /* the caller may have changed the tree between runs: estimates start afresh */
    ax__memo_reset(&pr->memo,
                   hook == AX_HOOK_REQUEST || hook == AX_HOOK_UPSTREAM_ERROR ? tree : NULL);
    if (pr->memo.root != NULL && pr->session != NULL) {
        /* the session knows its tools' estimate while they keep their shape */
        const cJSON *tools = cJSON_GetObjectItemCaseSensitive(tree, "tools");
        if (cJSON_IsArray(tools) && tools->child != NULL) {
            pr->memo.tools_tokens = 3 + ax_session_tools_tokens(pr->session, tools);
            pr->memo.tools_ok = 1;
        }
    }
    if (pr->gen->has_hook[hook])
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
    unref(eng->L, &pr->co_ref);
    unref(eng->L, &pr->ctx_ref);
    unref(eng->L, &pr->states_ref);
    gen_unref(eng, pr->gen);
    ax__memo_free(&pr->memo);
    free(pr->request_id);
    free(pr->session_id);
    free(pr->client_model);
    free(pr->user_agent);
    free(pr->arm);
    eng->in_flight--;
    free(pr);
}

/* ---- commands ------------------------------------------------------------------------------ */

/* host.run_hook(fn, hook, tree, aux, ctx) -> tree after, ret: one hook over a real view of
 * tree (a plain table), committed on success; the hook's error is re-raised. */
static int host_run_hook(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    const char *hook = luaL_checkstring(L, 2);
    struct ax__scope sc, *prev;
    cJSON *root;
    int boxed, status, nargs = 2;

    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 5);
    root = (cJSON *)ax__json_arg(L, 3, &boxed); /* 6: the box owning root */
    ax__scope_open(&eng->vs, &sc, strcmp(hook, "on_response") == 0);
    prev = eng->vs.cur;
    eng->vs.cur = &sc;
    lua_pushvalue(L, 1);
    if (strcmp(hook, "on_upstream_error") == 0) {
        lua_pushvalue(L, 4);
        nargs = 3;
    }
    ax__view_push(L, &eng->vs, &sc, root);
    lua_pushvalue(L, 5);
    status = lua_pcall(L, nargs, 1, 0); /* ..., box, ret|err */
    eng->vs.cur = prev;
    if (status != LUA_OK) {
        ax__scope_discard(&sc);
        return lua_error(L);
    }
    ax__scope_commit(&sc);
    ax__json_push_table(L, root); /* ..., box, ret, tree */
    lua_insert(L, -2);            /* ..., box, tree, ret */
    return 2;
}

static int host_where(lua_State *L)
{
    lua_Debug ar;
    int level = (int)luaL_optinteger(L, 1, 1);
    if (lua_getstack(L, level, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        lua_pushfstring(L, "%s:%d", ar.short_src, ar.currentline);
    else
        lua_pushliteral(L, "?");
    return 1;
}

static int host_traceback(lua_State *L)
{
    luaL_traceback(L, L, luaL_optstring(L, 1, ""), (int)luaL_optinteger(L, 2, 1));
    return 1;
}

static int host_stderr(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    fwrite(s, 1, n, stderr);
    return 0;
}

static int msgh_traceback(lua_State *L)
{
    const char *m = lua_tostring(L, 1);
    luaL_traceback(L, L, m ? m : luaL_tolstring(L, 1, NULL), 1);
    return 1;
}

static int test_protected(lua_State *L)
{
    struct ax_policy_engine *eng = lua_touserdata(L, 1);
    const char *file = lua_tostring(L, 2);
    char err[512];
    size_t len;
    char *text;
    int top;

    gen_make_require(L, eng, eng->gen);          /* eng, file, require (3) */
    push_runtime_module(L, eng, "chain.lua", 3); /* ..., chain (4) */
    push_host(L, eng, 3);                        /* ..., chain, host (5) */
    lua_pushcfunction(L, host_run_hook);
    lua_setfield(L, 5, "run_hook");
    lua_pushcfunction(L, host_where);
    lua_setfield(L, 5, "where");
    lua_pushcfunction(L, host_traceback);
    lua_setfield(L, 5, "traceback");
    lua_pushcfunction(L, host_stderr);
    lua_setfield(L, 5, "stderr");
    lua_getfield(L, LUA_REGISTRYINDEX, "anthroxy.set_fake");
    lua_setfield(L, 5, "set_fake");
    /* testing.lua gets (host, chain) as its chunk arguments */
    {
        char path[4096];
        snprintf(path, sizeof(path), "%s/anthroxy/testing.lua", eng->lua_dir);
        text = read_file(path, &len, err, sizeof(err));
        if (text == NULL)
            return luaL_error(L, "%s", err);
        lua_pushfstring(L, "@%s", path);
        if (luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t") != LUA_OK) {
            free(text);
            return lua_error(L);
        }
        free(text);
        lua_remove(L, -2); /* ..., host, f */
        push_newenv(L, eng, 3);
        lua_setupvalue(L, -2, 1);
        lua_pushvalue(L, 5);
        lua_pushvalue(L, 4);
        lua_call(L, 2, 1); /* ..., host, T (6) */
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->gen->loaded_ref);
    lua_pushvalue(L, 6);
    lua_setfield(L, -2, "anthroxy.testing");
    lua_pop(L, 1);
    text = read_file(file, &len, err, sizeof(err));
    if (text == NULL)
        return luaL_error(L, "%s", err);
    lua_pushcfunction(L, msgh_traceback); /* ..., T, msgh (7) */
    lua_pushfstring(L, "@%s", file);
    if (luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t") != LUA_OK) {
        free(text);
        return lua_error(L);
    }
    free(text);
    lua_remove(L, -2); /* ..., T, msgh, f */
    push_newenv(L, eng, 3);
    lua_setupvalue(L, -2, 1);
    top = lua_gettop(L);
    if (lua_pcall(L, 0, 0, top - 1) != LUA_OK)
        return lua_error(L);
    lua_getfield(L, 6, "failures");
    lua_call(L, 0, 1);
    lua_getfield(L, 6, "passed");
    lua_call(L, 0, 1);
    return 2;
}

int ax_policy_test_lua_main(int argc, char **argv)
{
    struct ax_config cfg;
    struct ax_policy_env env;
    struct ax_policy_engine *eng;
    int status, rc = 1;

    if (argc < 2) {
        fprintf(stderr, "usage: anthroxy test-lua FILE.lua\n");
        return 2;
    }
    ax_config_init(&cfg);
    memset(&env, 0, sizeof(env));
    env.cfg = &cfg;
    if (engine_create(&env, NULL, 1, &eng) < 0) {
        fprintf(stderr, "anthroxy test-lua: out of memory\n");
        ax_config_free(&cfg);
        return 1;
    }
    eng->gen = calloc(1, sizeof(*eng->gen));
    if (eng->gen == NULL)
        goto done;
    eng->gen->refs = 1;
    eng->gen->loaded_ref = eng->gen->require_ref = LUA_NOREF;
    eng->protected_alloc = 1;
    lua_pushcfunction(eng->L, test_protected);
    lua_pushlightuserdata(eng->L, eng);
    lua_pushstring(eng->L, argv[1]);
    status = lua_pcall(eng->L, 2, 2, 0);
    eng->protected_alloc = 0;
    if (status != LUA_OK) {
        const char *m = lua_tostring(eng->L, -1);
        fprintf(stderr, "%s\n", m ? m : "(error object is not a string)");
    } else {
        lua_Integer failed = lua_tointeger(eng->L, -2), passed = lua_tointeger(eng->L, -1);
        fprintf(stderr, "%s: %lld passed, %lld failed\n", argv[1], (long long)passed,
                (long long)failed);
        rc = failed > 0 ? 1 : 0;
    }
done:
    engine_destroy(eng);
    ax_config_free(&cfg);
    return rc;
}

/* ---- anthroxy check ------------------------------------------------------------------------- */

static const char *sample_request =
    "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":4096,\"stream\":true,"
    "\"system\":[{\"type\":\"text\",\"text\":\"You are a coding agent.\"}],"
    "\"tools\":[{\"name\":\"Read\",\"description\":\"Read a file\",\"input_schema\":"
    "{\"type\":\"object\",\"properties\":{\"file_path\":{\"type\":\"string\"}},"
    "\"required\":[\"file_path\"]}}],"
    "\"messages\":[{\"role\":\"user\",\"content\":\"What does main.c do?\"},"
    "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"toolu_1\","
    "\"name\":\"Read\",\"input\":{\"file_path\":\"main.c\"}}]},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\","
    "\"content\":\"int main(void) { return 0; }\"}]}]}";

struct check_state {
    struct ax_policy_engine *eng;
    int diff_ref;
    int done, rc;
    struct ax_error err;
};

static int check_diff_protected(lua_State *L)
{
    const cJSON *before = lua_touserdata(L, 1), *after = lua_touserdata(L, 2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, (int)lua_tointeger(L, 3)); /* M */
    lua_getfield(L, -1, "diff");
    ax__json_push_table(L, before);
    ax__json_push_table(L, after);
    lua_call(L, 2, 1);
    return 1;
}

static void check_trace(void *ud, const char *policy, enum ax_hook hook, const cJSON *before,
                        const cJSON *after)
{
    struct check_state *cs = ud;
    lua_State *L = cs->eng->L;
    lua_Integer i, n;

    printf("== %s %s\n", policy, hook_names[hook]);
    lua_pushcfunction(L, check_diff_protected);
    lua_pushlightuserdata(L, (void *)before);
    lua_pushlightuserdata(L, (void *)after);
    lua_pushinteger(L, cs->diff_ref);
    if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
        printf("   (diff failed: %s)\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return;
    }
    n = (lua_Integer)lua_rawlen(L, -1);
    if (n == 0)
        printf("   (no change)\n");
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        printf("   %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void check_on_done(struct ax_policy_req *pr, int rc, const struct ax_error *err, void *ud)
{
    struct check_state *cs = ud;
    (void)pr;
    cs->done = 1;
    cs->rc = rc;
    if (err != NULL)
        cs->err = *err;
}

static int check_load_diff(lua_State *L)
{
    struct ax_policy_engine *eng = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->gen->require_ref);
    push_runtime_module(L, eng, "diff.lua", -1);
    return 1;
}

static int check_run(struct check_state *cs, uv_loop_t *loop, struct ax_policy_req *pr,
                     enum ax_hook hook, cJSON *tree)
{
    cs->done = 0;
    if (ax_policy_req_run(pr, hook, tree, NULL, check_on_done, cs) < 0)
        return -1;
    uv_run(loop, UV_RUN_DEFAULT);
    if (!cs->done)
        return -1;
    if (cs->rc < 0) {
        fprintf(stderr, "anthroxy check: the request fails in %s: %d %s: %s\n", hook_names[hook],
                cs->err.status, cs->err.type ? cs->err.type : "", cs->err.message);
        return -1;
    }
    return 0;
}

int ax_policy_check_main(int argc, char **argv)
{
    struct ax_config cfg;
    struct ax_policy_env env;
    struct ax_policy_req_info info;
    struct ax_policy_req *pr = NULL;
    struct ax_translate_opts topts;
    struct check_state cs;
    struct ax_error err;
    uv_loop_t loop;
    cJSON *req = NULL, *oreq = NULL;
    char *body = NULL, msg[1024];
    size_t len;
    int rc = 1;

    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: anthroxy check CHAIN_OR_POLICY.lua [REQUEST.json]\n"
                        "Runs on_request and on_upstream_request on the request (a built-in "
                        "sample without one),\nno upstream involved, and prints what each "
                        "policy changed and the OpenAI request.\n");
        return 2;
    }
    memset(&cs, 0, sizeof(cs));
    memset(&err, 0, sizeof(err));
    ax_config_init(&cfg);
    if (ax_config_apply_env(&cfg, &err) < 0)
        fprintf(stderr, "anthroxy check: environment: %s (ignored)\n", err.message);
    ax_log_set_level(cfg.log_level >= AX_LOG_LVL_WARN ? (enum ax_log_level)cfg.log_level
                                                      : AX_LOG_LVL_WARN);
    uv_loop_init(&loop);
    memset(&env, 0, sizeof(env));
    env.loop = &loop;
    env.cfg = &cfg;
    if (engine_create(&env, argv[1], 0, &cs.eng) < 0)
        goto out;
    if (engine_load(cs.eng, msg, sizeof(msg)) < 0) {
        fprintf(stderr, "anthroxy check: %s: %s\n", argv[1], msg);
        goto out;
    }
    engine_init_handles(cs.eng);
    printf("chain %s: %d policies\n", argv[1], cs.eng->gen->n);
    cs.eng->protected_alloc = 1;
    lua_pushcfunction(cs.eng->L, check_load_diff);
    lua_pushlightuserdata(cs.eng->L, cs.eng);
    if (lua_pcall(cs.eng->L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "anthroxy check: diff.lua: %s\n", lua_tostring(cs.eng->L, -1));
        cs.eng->protected_alloc = 0;
        goto out;
    }
    cs.eng->protected_alloc = 0;
    cs.diff_ref = luaL_ref(cs.eng->L, LUA_REGISTRYINDEX);
    cs.eng->trace = check_trace;
    cs.eng->trace_ud = &cs;

    body = argc > 2 ? read_file(argv[2], &len, msg, sizeof(msg)) : xstrdup(sample_request);
    if (body == NULL) {
        fprintf(stderr, "anthroxy check: %s\n", msg);
        goto out;
    }
    if ((req = ax_json_parse(body, strlen(body), &err)) == NULL) {
        fprintf(stderr, "anthroxy check: %s: %s\n", argc > 2 ? argv[2] : "sample", err.message);
        goto out;
    }
    memset(&info, 0, sizeof(info));
    info.request_id = "req_check";
    info.session_id = "check";
    info.client_model = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "model"));
    info.user_agent = "anthroxy-check";
    info.stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "stream"));
    if (ax_policy_req_new(cs.eng, &info, &pr) < 0 ||
        check_run(&cs, &loop, pr, AX_HOOK_REQUEST, req) < 0)
        goto out;
    memset(&topts, 0, sizeof(topts));
    topts.upstream_model = cfg.upstream_model ? cfg.upstream_model : "upstream-model";
    topts.llama_server = 1;
    topts.stream = info.stream;
    if (ax_translate_request(req, &topts, &oreq, &err) < 0) {
        fprintf(stderr, "anthroxy check: translation fails: %d %s\n", err.status, err.message);
        goto out;
    }
    if (check_run(&cs, &loop, pr, AX_HOOK_UPSTREAM_REQUEST, oreq) < 0)
        goto out;
    {
        char *s = cJSON_Print(oreq);
        printf("== OpenAI request\n%s\n", s ? s : "(out of memory)");
        cJSON_free(s);
    }
    printf("== report_scale %.4g\n", ax_policy_req_report_scale(pr));
    rc = 0;
out:
    ax_policy_req_free(pr);
    cJSON_Delete(req);
    cJSON_Delete(oreq);
    free(body);
    if (cs.eng != NULL) {
        if (cs.diff_ref)
            luaL_unref(cs.eng->L, LUA_REGISTRYINDEX, cs.diff_ref);
        if (cs.eng->handles_init)
            ax_policy_engine_close(cs.eng, NULL, NULL);
        else
            engine_destroy(cs.eng);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    ax_config_free(&cfg);
    return rc;
}
