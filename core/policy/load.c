/* load.c - chain loading: generations, reload, the directory watch, --policy-set overrides.
 *
 * lua/anthroxy/chain.lua, run under pcall in a budgeted coroutine with the privileged host
 * functions below, turns a chain file into a generation (ref-counted: each request pins the
 * one current when it starts). A reload builds a new one and swaps it in only on success;
 * uv_fs_event watchers on the directories trigger it, debounced. Also the engine's status. */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

#include "anthroxy_experiment.h"
#include "anthroxy_log.h"

#define LOAD_BUDGET_FACTOR 10 /* a chain load may spend 10 hook budgets */
#define DEBOUNCE_MS 200

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

/* ---- generations ------------------------------------------------------------------------ */

static void gen_free(struct ax_policy_engine *eng, struct ax__gen *g)
{
    int i, h;
    for (i = 0; i < g->n; i++) {
        struct ax__gen_policy *p = &g->p[i];
        for (h = 0; h < AX_HOOK_COUNT; h++)
            ax__unref(eng->L, &p->fn_ref[h]);
        ax__unref(eng->L, &p->settings_ref);
        cJSON_Delete(p->settings);
        free(p->name);
        free(p->file);
    }
    free(g->p);
    for (i = 0; i < g->n_arms; i++)
        free(g->arms[i].name);
    free(g->arms);
    ax_experiment_free(g->exp);
    for (i = 0; i < g->n_files; i++)
        free(g->files[i]);
    free(g->files);
    ax__unref(eng->L, &g->loaded_ref);
    ax__unref(eng->L, &g->require_ref);
    if (g->refs >= 0 && g->id > 0)
        eng->gens_alive--;
    free(g);
}

void ax__gen_unref(struct ax_policy_engine *eng, struct ax__gen *g)
{
    if (g != NULL && --g->refs == 0)
        gen_free(eng, g);
}

/* Pushes a fresh sandbox environment for generation g (whose loaded table is at the top's
 * require closure): own globals over the shared read-only base. */
/* ---- host functions for chain.lua and testing.lua (privileged, never in a policy env) --- */

static int host_read(lua_State *L)
{
    char err[512];
    size_t len;
    char *text = ax__read_file(luaL_checkstring(L, 1), &len, err, sizeof(err));
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
        ax__push_newenv(L, eng, lua_upvalueindex(1));
    lua_setupvalue(L, -2, 1);
    return 1;
}

static int host_newenv(lua_State *L)
{
    ax__push_newenv(L, ax__engine_of(L), lua_upvalueindex(1));
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
void ax__push_host(lua_State *L, struct ax_policy_engine *eng, int require_idx)
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
void ax__push_runtime_module(lua_State *L, struct ax_policy_engine *eng, const char *file,
                             int require_idx)
{
    char path[4096], err[512];
    size_t len;
    char *text;

    require_idx = lua_absindex(L, require_idx);
    snprintf(path, sizeof(path), "%s/anthroxy/%s", eng->lua_dir, file);
    text = ax__read_file(path, &len, err, sizeof(err));
    if (text == NULL)
        luaL_error(L, "%s", err);
    lua_pushfstring(L, "@%s", path);
    if (luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t") != LUA_OK) {
        free(text);
        lua_error(L);
    }
    free(text);
    lua_remove(L, -2);
    ax__push_newenv(L, eng, require_idx);
    lua_setupvalue(L, -2, 1);
    lua_call(L, 0, 1);
}

/* ---- chain load --------------------------------------------------------------------------- */

struct load_ctx {
    struct ax_policy_engine *eng;
    struct ax__gen *g;
};

int ax__old_error_order(lua_State *L, int fn_idx)
{
    const char *name;
    int old;

    lua_pushvalue(L, fn_idx);        /* fn */
    name = lua_getlocal(L, NULL, 1); /* fn: parameters only, nothing pushed */
    old = name != NULL && (strcmp(name, "err") == 0 || strcmp(name, "error") == 0);
    lua_pop(L, 1);
    return old;
}

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
    p->name = ax__strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, -1, "file");
    p->file = ax__strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (p->name == NULL || p->file == NULL)
        luaL_error(L, "not enough memory");
    lua_getfield(L, -1, "module"); /* e, mod */
    for (h = 0; h < AX_HOOK_COUNT; h++) {
        if (lua_getfield(L, -1, ax__hook_names[h]) != LUA_TFUNCTION) {
            lua_pop(L, 1);
            continue;
        }
        if (h == AX_HOOK_UPSTREAM_ERROR && (p->old_error_order = ax__old_error_order(L, -1)))
            AX_LOG_WARN(NULL,
                        "policy %s (%s): on_upstream_error(err, req, ctx) is deprecated and "
                        "will stop working in the next release: declare "
                        "on_upstream_error(req, ctx, err), as the other hooks take (req, ctx)",
                        p->name, p->file);
        p->fn_ref[h] = luaL_ref(L, LUA_REGISTRYINDEX);
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

/* Pushes the experiment's arms for chain.lua's load_arms: { name, path } for a chain file,
 * { name, chain = { { policy path, key = value, ... } } } for an inline chain. May raise:
 * the experiment is already the generation's, freed with it. */
static void push_arms(lua_State *L, const struct ax_experiment *exp)
{
    int i, j;

    lua_createtable(L, exp->n_arms, 0); /* arms */
    for (i = 0; i < exp->n_arms; i++) {
        const struct ax_exp_arm *a = &exp->arms[i];
        lua_createtable(L, 0, 2); /* arms, arm */
        lua_pushstring(L, a->name);
        lua_setfield(L, -2, "name");
        if (a->chain_path != NULL) {
            lua_pushstring(L, a->chain_path);
            lua_setfield(L, -2, "path");
        } else {
            const cJSON *e;
            lua_newtable(L); /* arms, arm, chain */
            j = 0;
            cJSON_ArrayForEach(e, a->chain)
            {
                const cJSON *set = cJSON_GetObjectItemCaseSensitive(e, "settings");
                if (set != NULL)
                    ax__json_push_table(L, set); /* arms, arm, chain, entry */
                else
                    lua_newtable(L);
                lua_pushstring(L,
                               cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "policy")));
                lua_rawseti(L, -2, 1);   /* arms, arm, chain, entry */
                lua_rawseti(L, -2, ++j); /* arms, arm, chain */
            }
            lua_setfield(L, -2, "chain"); /* arms, arm */
        }
        lua_rawseti(L, -2, i + 1); /* arms */
    }
}

/* The generation's arms from load_arms's ranges (at the top), or one "default" arm. */
static void take_arms(lua_State *L, struct ax__gen *g)
{
    int i, h, n = g->exp ? (int)lua_rawlen(L, -1) : 1;

    if ((g->arms = calloc((size_t)n, sizeof(*g->arms))) == NULL)
        luaL_error(L, "not enough memory");
    for (i = 0; i < n; i++) {
        struct ax__gen_arm *a = &g->arms[i];
        g->n_arms = i + 1;
        if (g->exp == NULL) {
            a->name = ax__strdup(AX_EXP_DEFAULT_ARM);
            a->first = 0;
            a->end = g->n;
        } else {
            lua_rawgeti(L, -1, i + 1); /* ..., ranges, r */
            lua_getfield(L, -1, "name");
            a->name = ax__strdup(lua_tostring(L, -1));
            lua_getfield(L, -2, "first");
            a->first = (int)lua_tointeger(L, -1);
            lua_getfield(L, -3, "n");
            a->end = a->first + (int)lua_tointeger(L, -1);
            lua_pop(L, 4);
        }
        if (a->name == NULL)
            luaL_error(L, "not enough memory");
        for (h = 0; h < AX_HOOK_COUNT; h++) {
            int k;
            for (k = a->first; k < a->end && k < g->n; k++)
                if (g->p[k].fn_ref[h] != LUA_NOREF)
                    a->has_hook[h] = 1;
        }
    }
}

/* The directory chain names in an experiment resolve against after its own: the --policies
 * chain's (the shipped policies by default). */
static void policy_dir_of(const struct ax_policy_engine *eng, char *out, size_t n)
{
    const char *slash = strrchr(eng->chain_path, '/');
    if (slash == NULL)
        snprintf(out, n, ".");
    else
        snprintf(out, n, "%.*s", (int)(slash - eng->chain_path), eng->chain_path);
}

static int load_protected(lua_State *L)
{
    struct load_ctx *lc = lua_touserdata(L, 1);
    struct ax_policy_engine *eng = lc->eng;
    struct ax__gen *g = lc->g;
    struct ax__run_slot rs;
    lua_State *co;
    int status, nres, i, n, h, nargs = 2;

    lua_settop(L, 0);
    if (eng->exp_path != NULL) {
        char msg[1024], pdir[4096];
        policy_dir_of(eng, pdir, sizeof(pdir));
        if (ax_experiment_load(eng->exp_path, pdir, &g->exp, msg, sizeof(msg)) < 0)
            return luaL_error(L, "%s", msg);
    }
    ax__gen_make_require(L, eng, g);                                         /* require */
    ax__push_runtime_module(L, eng, "chain.lua", 1);                         /* require, M */
    if (lua_getfield(L, -1, g->exp ? "load_arms" : "load") != LUA_TFUNCTION) /* require, M, load */
        return luaL_error(L, "chain.lua: no load function");
    co = lua_newthread(L); /* require, M, load, co */
    lua_pushvalue(L, 3);
    ax__push_host(L, eng, 1);
    if (g->exp != NULL) {
        push_arms(L, g->exp);
        lua_pushstring(L, g->exp->path); /* ..., co, load, host, arms, path */
        nargs = 3;
    } else {
        lua_pushstring(L, eng->chain_path); /* ..., co, load, host, path */
    }
    lua_xmove(L, co, nargs + 1); /* require, M, load, co */
    memset(&rs, 0, sizeof(rs));
    rs.co = co;
    rs.budget = eng->budget * LOAD_BUDGET_FACTOR;
    rs.deadline = uv_hrtime() + eng->run_max_ns * LOAD_BUDGET_FACTOR;
    lua_sethook(co, ax__count_hook, LUA_MASKCOUNT, AX__HOOK_STEP);
    eng->cur_rs = &rs;
    status = lua_resume(co, L, nargs, &nres);
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
    lua_pop(L, 1);               /* ..., gen */
    lua_getfield(L, -1, "arms"); /* ..., gen, ranges|nil */
    take_arms(L, g);
    lua_pop(L, 1); /* ..., gen */
    lua_getfield(L, -1, "files");
    n = (int)lua_rawlen(L, -1);
    g->files = calloc((size_t)(n ? n : 1), sizeof(char *));
    if (g->files == NULL)
        return luaL_error(L, "not enough memory");
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, -1, i + 1);
        g->files[i] = ax__strdup(lua_tostring(L, -1));
        g->n_files = i + 1;
        lua_pop(L, 1);
    }
    return 0;
}

/* Compiles and validates the chain into a new generation and swaps it in. */
int ax__engine_load(struct ax_policy_engine *eng, char *err, size_t errn)
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
    ax__gen_unref(eng, old);
    ax_exp_stats_set_experiment(eng->stats, g->exp);
    return 0;
}

static int watch_all(struct ax_policy_engine *eng);

void ax_policy_engine_reload(struct ax_policy_engine *eng)
{
    char msg[1024];
    if (eng == NULL || eng->closing)
        return;
    if (ax__engine_load(eng, msg, sizeof(msg)) < 0) {
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
                eng->gen->exp ? eng->gen->exp->path : eng->chain_path, eng->gen->n);
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
        const char *ebase = eng->exp_path ? strrchr(eng->exp_path, '/') : NULL;
        if (strcmp(filename, base ? base + 1 : eng->chain_path) != 0 &&
            (eng->exp_path == NULL || strcmp(filename, ebase ? ebase + 1 : eng->exp_path) != 0))
            return; /* nor the chain or experiment file, whatever their names */
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
    d = ax__strdup(dir);
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
    if (eng->exp_path != NULL) { /* the experiment file's own directory, and its chains' */
        dir_of(eng->exp_path, d, sizeof(d));
        if ((r = watch_dir(eng, d)) < 0)
            rc = r;
    }
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
            char *v = ax__strdup(value);
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
    nk[eng->n_ov] = ax__strdup(name_dot_key);
    nv[eng->n_ov] = ax__strdup(value);
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
    return pr != NULL && pr->arm_p != NULL && hook < AX_HOOK_COUNT && pr->arm_p->has_hook[hook];
}

const struct ax_experiment *ax_policy_engine_experiment(const struct ax_policy_engine *eng)
{
    return eng != NULL && eng->gen != NULL ? eng->gen->exp : NULL;
}

int ax_policy_engine_has_arm(const struct ax_policy_engine *eng, const char *arm)
{
    int i;
    for (i = 0; eng != NULL && eng->gen != NULL && arm != NULL && i < eng->gen->n_arms; i++)
        if (strcmp(eng->gen->arms[i].name, arm) == 0)
            return 1;
    return 0;
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
    if (g && g->exp)
        cJSON_AddStringToObject(o, "experiment", g->exp->path);
    else
        cJSON_AddNullToObject(o, "experiment");
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
        if (g->exp != NULL) {
            int a;
            for (a = 0; a < g->n_arms; a++)
                if (i >= g->arms[a].first && i < g->arms[a].end)
                    cJSON_AddStringToObject(p, "arm", g->arms[a].name);
        }
        hooks = cJSON_AddArrayToObject(p, "hooks");
        for (h = 0; hooks && h < AX_HOOK_COUNT; h++)
            if (g->p[i].fn_ref[h] != LUA_NOREF)
                cJSON_AddItemToArray(hooks, cJSON_CreateString(ax__hook_names[h]));
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
    cJSON_AddItemToObject(o, "counters", ax_exp_stats_counters_json(eng->stats)); /* ax.count */
    return o;
}
