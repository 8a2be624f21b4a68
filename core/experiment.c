/* experiment.c - the experiment file, sticky arm assignment, per-arm figures.
 *
 * The file is evaluated in a throwaway Lua state (string/table/math only, capped in
 * instructions and memory) and turned into C structs; the policy engine (core/policy/load.c)
 * then loads each arm's chain. The figures are plain counters and two bounded windows of
 * latencies per arm, recorded by messages.c and printed by routes.c. */
#include "anthroxy_experiment.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "anthroxy_error.h"
#include "anthroxy_hash.h"

#define EXP_INSTR_MAX 1000000         /* evaluating the file: a data file needs few */
#define EXP_MEM_MAX (8 * 1024 * 1024) /* and little memory */
#define EXP_FILE_MAX (1024 * 1024)
#define EXP_WINDOW 1024 /* latency samples kept per arm (the most recent) */

/* ---- loading ----------------------------------------------------------------------------- */

struct exp_lua {
    size_t mem;
};

static void *exp_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct exp_lua *el = ud;
    size_t old = ptr ? osize : 0;
    void *p;

    if (nsize == 0) {
        el->mem -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old && el->mem + (nsize - old) > EXP_MEM_MAX)
        return NULL;
    if ((p = realloc(ptr, nsize)) == NULL)
        return NULL;
    el->mem = el->mem - old + nsize;
    return p;
}

static void exp_count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    luaL_error(L, "instruction budget exceeded (an experiment file is data)");
}

static char *read_file(const char *path, char *err, size_t errn)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;

    if (f == NULL) {
        snprintf(err, errn, "%s: cannot open", path);
        return NULL;
    }
    buf = malloc(EXP_FILE_MAX + 1);
    if (buf == NULL) {
        fclose(f);
        snprintf(err, errn, "out of memory");
        return NULL;
    }
    n = fread(buf, 1, EXP_FILE_MAX + 1, f);
    fclose(f);
    if (n > EXP_FILE_MAX) {
        free(buf);
        snprintf(err, errn, "%s: over %d bytes", path, EXP_FILE_MAX);
        return NULL;
    }
    buf[n] = 0;
    return buf;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* ref ("x", "x.lua", "sub/x.lua" or "/abs/x.lua") against dir1, then dir2; NULL if neither. */
static char *resolve(const char *ref, const char *dir1, const char *dir2)
{
    const char *dirs[2] = {dir1, dir2};
    size_t n = strlen(ref);
    int has_ext = n > 4 && strcmp(ref + n - 4, ".lua") == 0, i;
    char buf[4096];

    if (ref[0] == '/')
        return file_exists(ref) ? strdup(ref) : NULL;
    for (i = 0; i < 2; i++) {
        if (dirs[i] == NULL)
            continue;
        snprintf(buf, sizeof(buf), "%s/%s%s", dirs[i], ref, has_ext ? "" : ".lua");
        if (file_exists(buf))
            return strdup(buf);
    }
    return NULL;
}

static int valid_arm_name(const char *s)
{
    size_t i, n = strlen(s);
    if (n == 0 || n >= AX_ARM_NAME_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

struct load_state {
    const char *path, *dir, *policy_dir;
    struct ax_experiment *exp;
    char *err;
    size_t errn;
};

static void add_value(lua_State *L, int idx, int depth, cJSON *parent, const char *key);

static void attach(cJSON *parent, const char *key, cJSON *item)
{
    if (key)
        cJSON_AddItemToObject(parent, key, item);
    else
        cJSON_AddItemToArray(parent, item);
}

/* A Lua table as JSON: an array when it is a sequence, else an object with string keys. */
static void add_table(lua_State *L, int idx, int depth, cJSON *parent, const char *key)
{
    cJSON *out;
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx), k = 0, i;

    if (depth > 20)
        luaL_error(L, "settings nested too deep");
    lua_pushnil(L);
    while (lua_next(L, idx)) { /* count keys: a sequence has exactly n */
        k++;
        lua_pop(L, 1);
    }
    out = n > 0 && k == n ? cJSON_CreateArray() : cJSON_CreateObject();
    if (out == NULL)
        luaL_error(L, "not enough memory");
    attach(parent, key, out); /* owned by the tree before anything below may raise */
    if (n > 0 && k == n) {
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            add_value(L, lua_gettop(L), depth + 1, out, NULL);
            lua_pop(L, 1);
        }
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "settings: keys must be strings");
        add_value(L, lua_gettop(L), depth + 1, out, lua_tostring(L, -2));
        lua_pop(L, 1);
    }
}

/* Adds the value at idx to parent (under key, or appended when key is NULL): settings are
 * data (numbers, strings, booleans, tables of them). Runs under the load's pcall; every node
 * is in the experiment's tree before anything can raise, so nothing leaks. */
static void add_value(lua_State *L, int idx, int depth, cJSON *parent, const char *key)
{
    cJSON *v = NULL;

    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        v = cJSON_CreateBool(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        v = cJSON_CreateNumber(lua_tonumber(L, idx));
        break;
    case LUA_TSTRING:
        v = cJSON_CreateString(lua_tostring(L, idx));
        break;
    case LUA_TTABLE:
        add_table(L, idx, depth, parent, key);
        return;
    default:
        luaL_error(L, "settings: a %s is not data (numbers, strings, booleans, tables)",
                   luaL_typename(L, idx));
    }
    if (v == NULL)
        luaL_error(L, "not enough memory");
    attach(parent, key, v);
}

/* One inline chain entry at the top: "name" or { "name", key = value, ... }. */
static int inline_entry(lua_State *L, struct load_state *ls, int arm, int i, cJSON *chain)
{
    cJSON *e, *settings;
    const char *ref;
    char *path;

    if (lua_type(L, -1) == LUA_TSTRING) {
        lua_newtable(L);
        lua_pushvalue(L, -2);
        lua_rawseti(L, -2, 1);
        lua_remove(L, -2);
    }
    if (!lua_istable(L, -1) || lua_rawgeti(L, -1, 1) != LUA_TSTRING) {
        snprintf(ls->err, ls->errn,
                 "%s: arms[%d].chain[%d]: expected \"policy\" or { \"policy\", "
                 "key = value, ... }",
                 ls->path, arm, i);
        lua_pop(L, 1);
        return AX_EINVAL;
    }
    ref = lua_tostring(L, -1);
    if ((path = resolve(ref, ls->dir, ls->policy_dir)) == NULL) {
        snprintf(ls->err, ls->errn, "%s: arms[%d].chain[%d]: no policy '%s' in %s or %s", ls->path,
                 arm, i, ref, ls->dir, ls->policy_dir ? ls->policy_dir : "-");
        lua_pop(L, 1);
        return AX_EINVAL;
    }
    lua_pop(L, 1);
    e = cJSON_CreateObject();
    cJSON_AddItemToArray(chain, e);
    cJSON_AddStringToObject(e, "policy", path);
    free(path);
    settings = cJSON_AddObjectToObject(e, "settings");
    lua_pushnil(L);
    while (settings && lua_next(L, -2)) { /* entry, k, v */
        if (lua_type(L, -2) == LUA_TSTRING)
            add_value(L, lua_gettop(L), 0, settings, lua_tostring(L, -2));
        lua_pop(L, 1);
    }
    return 0;
}

static int arm_chain(lua_State *L, struct load_state *ls, int i, struct ax_exp_arm *a)
{
    int t = lua_getfield(L, -1, "chain"), j, n, rc;

    if (t == LUA_TSTRING) {
        const char *ref = lua_tostring(L, -1);
        if ((a->chain_path = resolve(ref, ls->dir, ls->policy_dir)) == NULL) {
            snprintf(ls->err, ls->errn, "%s: arms[%d].chain: no chain file '%s' in %s or %s",
                     ls->path, i, ref, ls->dir, ls->policy_dir ? ls->policy_dir : "-");
            return AX_EINVAL;
        }
        lua_pop(L, 1);
        return 0;
    }
    if (t != LUA_TTABLE || (n = (int)lua_rawlen(L, -1)) == 0) {
        snprintf(ls->err, ls->errn,
                 "%s: arms[%d].chain: expected a chain file name or a "
                 "non-empty list of policies",
                 ls->path, i);
        return AX_EINVAL;
    }
    if ((a->chain = cJSON_CreateArray()) == NULL)
        return AX_ENOMEM;
    for (j = 1; j <= n; j++) {
        lua_rawgeti(L, -1, j);
        if ((rc = inline_entry(L, ls, i, j, a->chain)) < 0)
            return rc;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

static int one_arm(lua_State *L, struct load_state *ls, int i, struct ax_exp_arm *a)
{
    const char *name;
    int j;

    if (!lua_istable(L, -1)) {
        snprintf(ls->err, ls->errn,
                 "%s: arms[%d]: expected { name = ..., weight = ..., chain = "
                 "... }",
                 ls->path, i);
        return AX_EINVAL;
    }
    lua_getfield(L, -1, "name");
    name = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    if (!valid_arm_name(name)) {
        snprintf(ls->err, ls->errn,
                 "%s: arms[%d].name: expected 1 to %d letters, digits or "
                 "_ - .",
                 ls->path, i, AX_ARM_NAME_MAX - 1);
        return AX_EINVAL;
    }
    snprintf(a->name, sizeof(a->name), "%s", name);
    lua_pop(L, 1);
    for (j = 0; j < i - 1; j++)
        if (strcmp(ls->exp->arms[j].name, a->name) == 0) {
            snprintf(ls->err, ls->errn, "%s: arms[%d].name: '%s' is already arms[%d]'s", ls->path,
                     i, a->name, j + 1);
            return AX_EINVAL;
        }
    a->weight = 1;
    if (lua_getfield(L, -1, "weight") != LUA_TNIL) {
        if (!lua_isnumber(L, -1) || !(lua_tonumber(L, -1) >= 0) || !isfinite(lua_tonumber(L, -1))) {
            snprintf(ls->err, ls->errn, "%s: arms[%d].weight: expected a number >= 0", ls->path, i);
            return AX_EINVAL;
        }
        a->weight = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return arm_chain(L, ls, i, a);
}

static int load_protected(lua_State *L)
{
    struct load_state *ls = lua_touserdata(L, 1);
    struct ax_experiment *exp = ls->exp;
    int i, n, rc;

    lua_settop(L, 2); /* ls, result */
    if (!lua_istable(L, 2)) {
        snprintf(ls->err, ls->errn, "%s: an experiment returns { name = ..., arms = { ... } }",
                 ls->path);
        lua_pushinteger(L, AX_EINVAL);
        return 1;
    }
    lua_getfield(L, 2, "name");
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
        snprintf(ls->err, ls->errn, "%s: name: expected a non-empty string", ls->path);
        lua_pushinteger(L, AX_EINVAL);
        return 1;
    }
    if ((exp->name = strdup(lua_tostring(L, -1))) == NULL)
        return luaL_error(L, "not enough memory");
    lua_pop(L, 1);
    if (lua_getfield(L, 2, "arms") != LUA_TTABLE || (n = (int)lua_rawlen(L, -1)) == 0) {
        snprintf(ls->err, ls->errn, "%s: arms: expected a non-empty list of arms", ls->path);
        lua_pushinteger(L, AX_EINVAL);
        return 1;
    }
    if ((exp->arms = calloc((size_t)n, sizeof(*exp->arms))) == NULL)
        return luaL_error(L, "not enough memory");
    for (i = 1; i <= n; i++) {
        exp->n_arms = i;
        lua_rawgeti(L, -1, i);
        if ((rc = one_arm(L, ls, i, &exp->arms[i - 1])) < 0) {
            lua_pushinteger(L, rc);
            return 1;
        }
        lua_settop(L, 3);
        exp->total_weight += exp->arms[i - 1].weight;
    }
    if (!(exp->total_weight > 0)) {
        snprintf(ls->err, ls->errn, "%s: arms: the weights add up to 0", ls->path);
        lua_pushinteger(L, AX_EINVAL);
        return 1;
    }
    lua_pushinteger(L, 0);
    return 1;
}

/* The sandbox the file runs in: pure functions only. */
static void push_env(lua_State *L)
{
    static const char *const keep[] = {"pairs",  "ipairs", "tostring", "tonumber", "type",
                                       "select", "error",  "assert",   "next",     NULL};
    int i;

    lua_newtable(L); /* env */
    for (i = 0; keep[i]; i++) {
        lua_getglobal(L, keep[i]);
        lua_setfield(L, -2, keep[i]);
    }
    lua_getglobal(L, "string");
    lua_setfield(L, -2, "string");
    lua_getglobal(L, "table");
    lua_setfield(L, -2, "table");
    lua_getglobal(L, "math");
    lua_setfield(L, -2, "math");
}

static int eval_file(lua_State *L, struct load_state *ls, const char *text)
{
    char chunk[600];
    int rc;

    snprintf(chunk, sizeof(chunk), "@%s", ls->path);
    if (luaL_loadbufferx(L, text, strlen(text), chunk, "t") != LUA_OK) {
        snprintf(ls->err, ls->errn, "%s", lua_tostring(L, -1));
        return AX_EINVAL;
    }
    push_env(L);
    lua_setupvalue(L, -2, 1);
    lua_sethook(L, exp_count_hook, LUA_MASKCOUNT, EXP_INSTR_MAX);
    if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        if (m != NULL && strstr(m, ls->path) != NULL)
            snprintf(ls->err, ls->errn, "%s", m);
        else
            snprintf(ls->err, ls->errn, "%s: %s", ls->path, m ? m : "error running the file");
        return AX_EINVAL;
    }
    lua_sethook(L, NULL, 0, 0);
    lua_pushcfunction(L, load_protected); /* result, f */
    lua_insert(L, -2);                    /* f, result */
    lua_pushlightuserdata(L, ls);         /* f, result, ls */
    lua_insert(L, -2);                    /* f, ls, result */
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        snprintf(ls->err, ls->errn, "%s: %s", ls->path, m ? m : "invalid experiment");
        return AX_EINVAL;
    }
    rc = (int)lua_tointeger(L, -1);
    return rc;
}

int ax_experiment_load(const char *path, const char *policy_dir, struct ax_experiment **out,
                       char *err, size_t errn)
{
    struct exp_lua el = {0};
    struct load_state ls;
    struct ax_experiment *exp = NULL;
    char dir[4096], *text = NULL, *slash;
    lua_State *L = NULL;
    int rc;

    *out = NULL;
    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    if ((text = read_file(path, err, errn)) == NULL)
        return AX_EIO;
    if ((exp = calloc(1, sizeof(*exp))) == NULL || (exp->path = strdup(path)) == NULL ||
        (L = lua_newstate(exp_alloc, &el)) == NULL) {
        snprintf(err, errn, "out of memory");
        rc = AX_ENOMEM;
        goto fail;
    }
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    lua_settop(L, 0);
    memset(&ls, 0, sizeof(ls));
    ls.path = path;
    ls.dir = dir;
    ls.policy_dir = policy_dir;
    ls.exp = exp;
    ls.err = err;
    ls.errn = errn;
    if ((rc = eval_file(L, &ls, text)) < 0)
        goto fail;
    lua_close(L);
    free(text);
    *out = exp;
    return 0;
fail:
    if (L != NULL)
        lua_close(L);
    free(text);
    ax_experiment_free(exp);
    return rc;
}

void ax_experiment_free(struct ax_experiment *exp)
{
    int i;

    if (exp == NULL)
        return;
    for (i = 0; i < exp->n_arms; i++) {
        free(exp->arms[i].chain_path);
        cJSON_Delete(exp->arms[i].chain);
    }
    free(exp->arms);
    free(exp->name);
    free(exp->path);
    free(exp);
}

const struct ax_exp_arm *ax_experiment_find(const struct ax_experiment *exp, const char *name)
{
    int i;

    if (exp == NULL || name == NULL)
        return NULL;
    for (i = 0; i < exp->n_arms; i++)
        if (strcmp(exp->arms[i].name, name) == 0)
            return &exp->arms[i];
    return NULL;
}

/* FNV-1a spreads its last bytes poorly into the high bits: murmur3's finaliser mixes them. */
static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

const struct ax_exp_arm *ax_experiment_assign(const struct ax_experiment *exp, const char *key)
{
    uint64_t h;
    double u, acc = 0;
    int i, last = -1;

    if (exp == NULL || exp->n_arms == 0)
        return NULL;
    h = ax_fnv1a(exp->name, strlen(exp->name), AX_FNV1A_INIT);
    h = ax_fnv1a("\n", 1, h);
    h = mix64(ax_fnv1a(key ? key : "", key ? strlen(key) : 0, h));
    u = (double)(h >> 11) * (1.0 / 9007199254740992.0) * exp->total_weight; /* [0, total) */
    for (i = 0; i < exp->n_arms; i++) {
        if (exp->arms[i].weight <= 0)
            continue;
        acc += exp->arms[i].weight;
        last = i;
        if (u < acc)
            return &exp->arms[i];
    }
    return last >= 0 ? &exp->arms[last] : &exp->arms[0]; /* rounding at the very top */
}

void ax_experiment_arm_names(const struct ax_experiment *exp, char *out, size_t n)
{
    size_t len = 0;
    int i;

    if (n == 0)
        return;
    out[0] = 0;
    if (exp == NULL) {
        snprintf(out, n, "%s", AX_EXP_DEFAULT_ARM);
        return;
    }
    for (i = 0; i < exp->n_arms && len < n; i++) {
        int w = snprintf(out + len, n - len, "%s%s", i ? ", " : "", exp->arms[i].name);
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

cJSON *ax_experiment_to_json(const struct ax_experiment *exp)
{
    cJSON *o = cJSON_CreateObject(), *arms;
    int i;

    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "name", exp->name);
    cJSON_AddStringToObject(o, "file", exp->path);
    arms = cJSON_AddArrayToObject(o, "arms");
    for (i = 0; arms && i < exp->n_arms; i++) {
        const struct ax_exp_arm *a = &exp->arms[i];
        cJSON *ao = cJSON_CreateObject();
        if (ao == NULL)
            break;
        cJSON_AddItemToArray(arms, ao);
        cJSON_AddStringToObject(ao, "name", a->name);
        cJSON_AddNumberToObject(ao, "weight", a->weight);
        if (a->chain_path)
            cJSON_AddStringToObject(ao, "chain", a->chain_path);
        else
            cJSON_AddItemToObject(ao, "chain", cJSON_Duplicate(a->chain, 1));
    }
    return o;
}

/* ---- per-arm figures --------------------------------------------------------------------- */

struct exp_counter {
    char policy[AX_EXP_COUNTER_NAME_MAX], name[AX_EXP_COUNTER_NAME_MAX];
    double value;
};

struct exp_window { /* the most recent EXP_WINDOW samples */
    double v[EXP_WINDOW];
    int n, next;
};

struct arm_stats {
    char name[AX_ARM_NAME_MAX];
    int active;
    double weight;
    int64_t sessions, requests, errors, with_usage, measured;
    int64_t client_tokens, sent_estimate, removed, added, prompt_tokens, cached_tokens,
        output_tokens;
    int64_t overflows, prompt_too_long, retries, tool_calls, tool_errors;
    struct exp_window ttft, total;
    struct exp_counter *counters;
    int n_counters;
};

struct ax_exp_stats {
    char *experiment; /* the name the figures belong to; NULL: none */
    struct arm_stats **arms;
    int n_arms;
};

int ax_exp_stats_new(struct ax_exp_stats **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : AX_ENOMEM;
}

static void arms_clear(struct ax_exp_stats *st)
{
    int i;
    for (i = 0; i < st->n_arms; i++) {
        free(st->arms[i]->counters);
        free(st->arms[i]);
    }
    free(st->arms);
    st->arms = NULL;
    st->n_arms = 0;
}

void ax_exp_stats_free(struct ax_exp_stats *st)
{
    if (st == NULL)
        return;
    arms_clear(st);
    free(st->experiment);
    free(st);
}

/* The arm's figures, created on first use (NULL only when out of memory). */
static struct arm_stats *arm_get(struct ax_exp_stats *st, const char *name)
{
    struct arm_stats **na, *a;
    int i;

    if (name == NULL || *name == 0)
        name = AX_EXP_DEFAULT_ARM;
    for (i = 0; i < st->n_arms; i++)
        if (strcmp(st->arms[i]->name, name) == 0)
            return st->arms[i];
    if ((a = calloc(1, sizeof(*a))) == NULL)
        return NULL;
    if ((na = realloc(st->arms, sizeof(*na) * (size_t)(st->n_arms + 1))) == NULL) {
        free(a);
        return NULL;
    }
    st->arms = na;
    snprintf(a->name, sizeof(a->name), "%s", name);
    st->arms[st->n_arms++] = a;
    return a;
}

void ax_exp_stats_set_experiment(struct ax_exp_stats *st, const struct ax_experiment *exp)
{
    const char *name = exp ? exp->name : NULL;
    int i;

    if ((name == NULL) != (st->experiment == NULL) || (name && strcmp(name, st->experiment) != 0)) {
        arms_clear(st); /* another experiment: its figures start afresh */
        free(st->experiment);
        st->experiment = name ? strdup(name) : NULL;
    }
    for (i = 0; i < st->n_arms; i++)
        st->arms[i]->active = 0;
    if (exp == NULL) {
        struct arm_stats *a = arm_get(st, AX_EXP_DEFAULT_ARM);
        if (a) {
            a->active = 1;
            a->weight = 1;
        }
        return;
    }
    for (i = 0; i < exp->n_arms; i++) {
        struct arm_stats *a = arm_get(st, exp->arms[i].name);
        if (a) {
            a->active = 1;
            a->weight = exp->arms[i].weight;
        }
    }
}

void ax_exp_stats_session(struct ax_exp_stats *st, const char *arm)
{
    struct arm_stats *a = arm_get(st, arm);
    if (a)
        a->sessions++;
}

static void window_add(struct exp_window *w, double v)
{
    w->v[w->next] = v;
    w->next = (w->next + 1) % EXP_WINDOW;
    if (w->n < EXP_WINDOW)
        w->n++;
}

void ax_exp_stats_record(struct ax_exp_stats *st, const struct ax_exp_turn *t)
{
    struct arm_stats *a = arm_get(st, t->arm);

    if (a == NULL)
        return;
    a->requests++;
    if (t->status >= 400)
        a->errors++;
    if (t->client_tokens >= 0) {
        a->measured++;
        a->client_tokens += t->client_tokens;
        a->sent_estimate += t->sent_estimate;
        if (t->sent_estimate < t->client_tokens) /* per request: a grown one hides no removal */
            a->removed += t->client_tokens - t->sent_estimate;
        else
            a->added += t->sent_estimate - t->client_tokens;
    }
    if (t->have_usage) {
        a->with_usage++;
        a->prompt_tokens += t->prompt_tokens;
        a->cached_tokens += t->cached_tokens;
        a->output_tokens += t->output_tokens;
    }
    a->overflows += t->overflows;
    a->prompt_too_long += t->prompt_too_long != 0;
    a->retries += t->retried != 0;
    a->tool_calls += t->tool_calls;
    a->tool_errors += t->tool_errors;
    if (t->ttft_ms >= 0)
        window_add(&a->ttft, t->ttft_ms);
    if (t->total_ms >= 0)
        window_add(&a->total, t->total_ms);
}

int ax_exp_stats_count(struct ax_exp_stats *st, const char *arm, const char *policy,
                       const char *name, double delta, double *total)
{
    struct arm_stats *a;
    struct exp_counter *nc;
    size_t n = name ? strlen(name) : 0;
    int i;

    if (n == 0 || n >= AX_EXP_COUNTER_NAME_MAX || !isfinite(delta))
        return AX_EINVAL;
    if (policy == NULL || *policy == 0)
        policy = "?";
    if ((a = arm_get(st, arm)) == NULL)
        return AX_ENOMEM;
    for (i = 0; i < a->n_counters; i++)
        if (strcmp(a->counters[i].name, name) == 0 &&
            strncmp(a->counters[i].policy, policy, AX_EXP_COUNTER_NAME_MAX - 1) == 0) {
            a->counters[i].value += delta;
            *total = a->counters[i].value;
            return 0;
        }
    if (a->n_counters >= AX_EXP_COUNTERS_MAX)
        return AX_ETOOBIG;
    if ((nc = realloc(a->counters, sizeof(*nc) * (size_t)(a->n_counters + 1))) == NULL)
        return AX_ENOMEM;
    a->counters = nc;
    nc = &a->counters[a->n_counters++];
    snprintf(nc->policy, sizeof(nc->policy), "%s", policy);
    snprintf(nc->name, sizeof(nc->name), "%s", name);
    nc->value = delta;
    *total = delta;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* {"n", "p50", "p95"} over the window (nearest rank), nulls when empty. */
static cJSON *window_json(const struct exp_window *w)
{
    cJSON *o = cJSON_CreateObject();
    double sorted[EXP_WINDOW];

    if (o == NULL)
        return NULL;
    cJSON_AddNumberToObject(o, "n", w->n);
    if (w->n == 0) {
        cJSON_AddNullToObject(o, "p50");
        cJSON_AddNullToObject(o, "p95");
        return o;
    }
    memcpy(sorted, w->v, sizeof(double) * (size_t)w->n);
    qsort(sorted, (size_t)w->n, sizeof(double), cmp_double);
    cJSON_AddNumberToObject(o, "p50", sorted[(int)ceil(0.50 * w->n) - 1]);
    cJSON_AddNumberToObject(o, "p95", sorted[(int)ceil(0.95 * w->n) - 1]);
    return o;
}

static cJSON *counters_json(const struct arm_stats *a)
{
    cJSON *o = cJSON_CreateObject();
    int i;

    for (i = 0; o && i < a->n_counters; i++) {
        const struct exp_counter *c = &a->counters[i];
        cJSON *p = cJSON_GetObjectItemCaseSensitive(o, c->policy);
        if (p == NULL)
            p = cJSON_AddObjectToObject(o, c->policy);
        if (p)
            cJSON_AddNumberToObject(p, c->name, c->value);
    }
    return o;
}

static cJSON *arm_json(const struct arm_stats *a)
{
    cJSON *o = cJSON_CreateObject(), *tok;

    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "name", a->name);
    cJSON_AddBoolToObject(o, "active", a->active);
    cJSON_AddNumberToObject(o, "weight", a->weight);
    cJSON_AddNumberToObject(o, "sessions", (double)a->sessions);
    cJSON_AddNumberToObject(o, "requests", (double)a->requests);
    cJSON_AddNumberToObject(o, "errors", (double)a->errors);
    cJSON_AddNumberToObject(o, "turns_per_session",
                            a->sessions ? (double)a->requests / (double)a->sessions : 0);
    tok = cJSON_AddObjectToObject(o, "tokens");
    if (tok) {
        static const char *const est[] = {"client_estimate", "sent_estimate", "removed_by_policies",
                                          "added_by_policies"};
        const int64_t v[] = {a->client_tokens, a->sent_estimate, a->removed, a->added};
        int k;
        for (k = 0; k < 4; k++) /* null: never measured (no experiment) */
            if (a->measured > 0)
                cJSON_AddNumberToObject(tok, est[k], (double)v[k]);
            else
                cJSON_AddNullToObject(tok, est[k]);
        cJSON_AddNumberToObject(tok, "upstream_prompt", (double)a->prompt_tokens);
        cJSON_AddNumberToObject(tok, "cached", (double)a->cached_tokens);
        cJSON_AddNumberToObject(tok, "output", (double)a->output_tokens);
    }
    cJSON_AddNumberToObject(o, "requests_with_usage", (double)a->with_usage);
    if (a->prompt_tokens > 0)
        cJSON_AddNumberToObject(o, "cache_reuse",
                                (double)a->cached_tokens / (double)a->prompt_tokens);
    else
        cJSON_AddNullToObject(o, "cache_reuse");
    cJSON_AddNumberToObject(o, "overflows", (double)a->overflows);
    cJSON_AddNumberToObject(o, "prompt_too_long", (double)a->prompt_too_long);
    cJSON_AddNumberToObject(o, "retries", (double)a->retries);
    cJSON_AddNumberToObject(o, "tool_calls", (double)a->tool_calls);
    cJSON_AddNumberToObject(o, "tool_errors", (double)a->tool_errors);
    cJSON_AddItemToObject(o, "ttft_ms", window_json(&a->ttft));
    cJSON_AddItemToObject(o, "total_ms", window_json(&a->total));
    cJSON_AddItemToObject(o, "counters", counters_json(a));
    return o;
}

cJSON *ax_exp_stats_to_json(const struct ax_exp_stats *st, const struct ax_experiment *exp)
{
    cJSON *o = cJSON_CreateObject(), *arms;
    int i;

    if (o == NULL)
        return NULL;
    if (exp)
        cJSON_AddItemToObject(o, "experiment", ax_experiment_to_json(exp));
    else
        cJSON_AddNullToObject(o, "experiment");
    cJSON_AddNumberToObject(o, "latency_window", EXP_WINDOW);
    arms = cJSON_AddArrayToObject(o, "arms");
    for (i = 0; arms && i < st->n_arms; i++)
        cJSON_AddItemToArray(arms, arm_json(st->arms[i]));
    return o;
}

cJSON *ax_exp_stats_counters_json(const struct ax_exp_stats *st)
{
    cJSON *o = cJSON_CreateObject();
    int i;

    for (i = 0; o && i < st->n_arms; i++)
        if (st->arms[i]->n_counters > 0)
            cJSON_AddItemToObject(o, st->arms[i]->name, counters_json(st->arms[i]));
    return o;
}
