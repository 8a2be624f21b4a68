/* lua_json.c - Lua <-> cJSON conversion and ax.json.* (encode, decode, object, array, ...).
 *
 * Plain tables convert by their keys: string keys make an object, 1..n an array, an empty
 * table takes the type of the node it replaces (else an object); ax.json.object/array mark a
 * table's type for good. A view converts as the node it shows. Trees being built live in a
 * box userdata, so a conversion that raises leaks nothing. view.c writes through these. */
#include "lua_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "anthroxy_json.h"
#include "view.h"

#define MAX_DEPTH 200

static char obj_mt_key, arr_mt_key, null_key;

/* ---- Lua -> cJSON ----------------------------------------------------------------------- */

void ax__push_null(lua_State *L)
{
    lua_pushlightuserdata(L, &null_key);
}

static int is_null(lua_State *L, int idx)
{
    return lua_islightuserdata(L, idx) && lua_touserdata(L, idx) == &null_key;
}

static size_t tree_bytes(const cJSON *n)
{
    size_t b = sizeof(cJSON);
    const cJSON *c;
    if (n->string != NULL)
        b += strlen(n->string) + 1;
    if (n->valuestring != NULL)
        b += strlen(n->valuestring) + 1;
    for (c = n->child; c != NULL; c = c->next)
        b += tree_bytes(c);
    return b;
}

static int marker_kind(lua_State *L, int idx)
{
    int kind = 0;
    if (!lua_getmetatable(L, idx))
        return 0;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &obj_mt_key);
    if (lua_rawequal(L, -1, -2))
        kind = AX__JK_OBJECT;
    lua_pop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &arr_mt_key);
    if (lua_rawequal(L, -1, -2))
        kind = AX__JK_ARRAY;
    lua_pop(L, 2);
    return kind;
}

/* Object or array for the table at idx (absolute). */
static int table_kind(lua_State *L, int idx, int hint)
{
    lua_Integer n_int = 0, max = 0;
    lua_Integer n_str = 0;
    int kind = marker_kind(L, idx);

    if (kind)
        return kind;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            n_str++;
        } else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
            n_int++;
            if (lua_tointeger(L, -1) > max)
                max = lua_tointeger(L, -1);
        } else {
            return luaL_error(L, "cannot convert a table with a %s key to JSON",
                              luaL_typename(L, -1));
        }
    }
    if (n_int == 0 && n_str == 0)
        return hint ? hint : AX__JK_OBJECT;
    if (n_str == 0 && max == n_int)
        return AX__JK_ARRAY;
    if (n_int == 0)
        return AX__JK_OBJECT;
    return luaL_error(L, "cannot convert a table mixing array and object keys to JSON");
}

static cJSON *nomem(lua_State *L)
{
    luaL_error(L, "not enough memory");
    return NULL;
}

static void fill(lua_State *L, int idx, cJSON *node, int kind, int depth, size_t *bytes);

/* Creates the node for the value at idx (absolute); containers come back empty with *kind
 * set, to be attached before fill() so a raise leaves nothing unreachable. */
static cJSON *make_node(lua_State *L, int idx, int hint, int *kind, size_t *bytes)
{
    cJSON *n = NULL;
    *kind = 0;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        n = cJSON_CreateBool(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            lua_Integer i = lua_tointeger(L, idx);
            if (i > (1LL << 53) || i < -(1LL << 53)) {
                char buf[32];
                snprintf(buf, sizeof(buf), "%lld", (long long)i);
                n = cJSON_CreateRaw(buf);
            } else {
                n = cJSON_CreateNumber((double)i);
            }
        } else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d))
                luaL_error(L, "cannot convert %f to JSON", d);
            n = cJSON_CreateNumber(d);
        }
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (memchr(s, 0, len) != NULL)
            luaL_error(L, "cannot convert a string holding a NUL byte to JSON");
        n = cJSON_CreateString(s);
        *bytes += len + 1;
        break;
    }
    case LUA_TLIGHTUSERDATA:
        if (!is_null(L, idx))
            luaL_error(L, "cannot convert a light userdata to JSON");
        n = cJSON_CreateNull();
        break;
    case LUA_TUSERDATA: {
        cJSON *vn = ax__view_node(L, idx);
        if (vn == NULL)
            luaL_error(L, "cannot convert a userdata to JSON");
        n = cJSON_Duplicate(vn, 1);
        if (n != NULL)
            *bytes += tree_bytes(n);
        break;
    }
    case LUA_TTABLE:
        *kind = table_kind(L, idx, hint);
        n = *kind == AX__JK_ARRAY ? cJSON_CreateArray() : cJSON_CreateObject();
        break;
    default:
        luaL_error(L, "cannot convert a %s to JSON", luaL_typename(L, idx));
    }
    if (n == NULL)
        return nomem(L);
    *bytes += sizeof(cJSON);
    return n;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void fill_child(lua_State *L, cJSON *node, const char *key, int depth, size_t *bytes)
{
    int kind, top = lua_gettop(L);
    cJSON *c = make_node(L, top, 0, &kind, bytes);
    if (key != NULL) {
        if (!cJSON_AddItemToObject(node, key, c)) {
            cJSON_Delete(c);
            nomem(L);
        }
        *bytes += strlen(key) + 1;
    } else if (!cJSON_AddItemToArray(node, c)) {
        cJSON_Delete(c);
        nomem(L);
    }
    if (kind)
        fill(L, top, c, kind, depth + 1, bytes);
}

static void fill(lua_State *L, int idx, cJSON *node, int kind, int depth, size_t *bytes)
{
    if (depth > MAX_DEPTH)
        luaL_error(L, "cannot convert to JSON: nesting over %d (a cycle?)", MAX_DEPTH);
    luaL_checkstack(L, 6, "JSON conversion");
    if (kind == AX__JK_ARRAY) {
        lua_Integer i, n = (lua_Integer)lua_rawlen(L, idx);
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i); /* v */
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                break;
            }
            fill_child(L, node, NULL, depth, bytes);
            lua_pop(L, 1);
        }
        return;
    }
    {
        size_t nk = 0, cap = 0, i, len;
        const char **keys;
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            lua_pop(L, 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "cannot convert an object with a %s key to JSON",
                           luaL_typename(L, -1));
            if (strlen(lua_tolstring(L, -1, &len)) != len)
                luaL_error(L, "cannot convert an object key holding a NUL byte to JSON");
            cap++;
        }
        /* key array in a userdata: collected even if a conversion below raises */
        keys = lua_newuserdatauv(L, sizeof(char *) * (cap ? cap : 1), 0); /* keys */
        lua_pushnil(L);                                                   /* keys, nil */
        while (lua_next(L, idx) != 0) {                                   /* keys, k, v */
            lua_pop(L, 1);                                                /* keys, k */
            if (nk < cap)
                keys[nk++] = lua_tostring(L, -1); /* kept alive: a key of the table */
        }
        qsort(keys, nk, sizeof(*keys), cmp_str);
        for (i = 0; i < nk; i++) {
            lua_getfield(L, idx, keys[i]); /* keys, v */
            fill_child(L, node, keys[i], depth, bytes);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
}

static int jbox_gc(lua_State *L)
{
    struct ax__jbox *b = lua_touserdata(L, 1);
    if (b->root != NULL)
        cJSON_Delete(b->root);
    b->root = NULL;
    return 0;
}

static struct ax__jbox *push_box(lua_State *L)
{
    struct ax__jbox *b = lua_newuserdatauv(L, sizeof(*b), 0);
    b->root = NULL;
    luaL_setmetatable(L, AX_JBOX_MT);
    return b;
}

/* Converts the value at idx into a new tree held by a box pushed on the stack (the box frees
 * it unless the caller takes it); hint is the type of a node it replaces. */
struct ax__jbox *ax__json_convert(lua_State *L, int idx, int hint, size_t *bytes)
{
    int kind;
    struct ax__jbox *b;

    idx = lua_absindex(L, idx);
    b = push_box(L);
    b->root = make_node(L, idx, hint, &kind, bytes);
    if (kind)
        fill(L, idx, b->root, kind, 1, bytes);
    return b;
}

cJSON *ax__json_from_lua(lua_State *L, int idx)
{
    size_t bytes = 0;
    struct ax__jbox *b = ax__json_convert(L, idx, 0, &bytes);
    cJSON *n = b->root;
    b->root = NULL;
    lua_pop(L, 1);
    return n;
}

const cJSON *ax__json_arg(lua_State *L, int idx, int *boxed)
{
    cJSON *vn = ax__view_node(L, idx);
    size_t bytes = 0;

    *boxed = 0;
    if (vn != NULL)
        return vn;
    *boxed = 1;
    return ax__json_convert(L, idx, 0, &bytes)->root;
}

/* ---- cJSON -> Lua ----------------------------------------------------------------------- */

static void push_number(lua_State *L, double d)
{
    if (d >= -9.2e18 && d <= 9.2e18 && (double)(lua_Integer)d == d)
        lua_pushinteger(L, (lua_Integer)d);
    else
        lua_pushnumber(L, d);
}

static void push_raw(lua_State *L, const char *s)
{
    if (s == NULL || lua_stringtonumber(L, s) == 0)
        lua_pushstring(L, s ? s : "");
}

void ax__json_push_scalar(lua_State *L, const cJSON *n)
{
    switch (n->type & 0xFF) {
    case cJSON_False:
        lua_pushboolean(L, 0);
        break;
    case cJSON_True:
        lua_pushboolean(L, 1);
        break;
    case cJSON_NULL:
        ax__push_null(L);
        break;
    case cJSON_Number:
        push_number(L, n->valuedouble);
        break;
    case cJSON_String:
        lua_pushstring(L, n->valuestring ? n->valuestring : "");
        break;
    case cJSON_Raw:
        push_raw(L, n->valuestring);
        break;
    default:
        lua_pushnil(L);
    }
}

static void push_table_rec(lua_State *L, const cJSON *node, int depth)
{
    const cJSON *c;
    lua_Integer i = 0;

    if (!cJSON_IsArray(node) && !cJSON_IsObject(node)) {
        ax__json_push_scalar(L, node);
        return;
    }
    if (depth > 1000)
        luaL_error(L, "JSON nesting too deep");
    luaL_checkstack(L, 4, "JSON conversion");
    lua_createtable(L, cJSON_IsArray(node) ? 4 : 0, cJSON_IsObject(node) ? 4 : 0); /* t */
    lua_rawgetp(L, LUA_REGISTRYINDEX, cJSON_IsArray(node) ? &arr_mt_key : &obj_mt_key);
    lua_setmetatable(L, -2);
    for (c = node->child; c != NULL; c = c->next) {
        push_table_rec(L, c, depth + 1); /* t, v */
        if (cJSON_IsArray(node))
            lua_rawseti(L, -2, ++i);
        else
            lua_setfield(L, -2, c->string ? c->string : "");
    }
}

void ax__json_push_table(lua_State *L, const cJSON *node)
{
    push_table_rec(L, node, 0);
}

static int l_encode(lua_State *L)
{
    int boxed;
    const cJSON *n;
    char *s;

    luaL_checkany(L, 1);
    n = ax__json_arg(L, 1, &boxed);
    s = cJSON_PrintUnformatted(n);
    if (s == NULL)
        return luaL_error(L, "not enough memory");
    lua_pushstring(L, s);
    cJSON_free(s);
    return 1;
}

static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char *copy = lua_newuserdatauv(L, len + 1, 0); /* mutable copy, collected */
    struct ax_error err;
    struct ax__jbox *b;

    memcpy(copy, s, len);
    copy[len] = 0;
    b = push_box(L);
    b->root = ax_json_parse(copy, len, &err);
    if (b->root == NULL)
        return luaL_error(L, "ax.json.decode: %s", err.message);
    ax__json_push_table(L, b->root);
    cJSON_Delete(b->root);
    b->root = NULL;
    return 1;
}

static int mark(lua_State *L, void *key)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, key);
    lua_setmetatable(L, 1);
    return 1;
}

static int l_object(lua_State *L)
{
    return mark(L, &obj_mt_key);
}

static int l_array(lua_State *L)
{
    return mark(L, &arr_mt_key);
}

static int l_totable(lua_State *L)
{
    cJSON *vn = ax__view_node(L, 1);
    if (vn == NULL) {
        lua_settop(L, 1);
        return 1;
    }
    ax__json_push_table(L, vn);
    return 1;
}

static int l_type(lua_State *L)
{
    const char *t = NULL;
    cJSON *vn;
    switch (lua_type(L, 1)) {
    case LUA_TSTRING:
        t = "string";
        break;
    case LUA_TNUMBER:
        t = "number";
        break;
    case LUA_TBOOLEAN:
        t = "boolean";
        break;
    case LUA_TLIGHTUSERDATA:
        t = is_null(L, 1) ? "null" : NULL;
        break;
    case LUA_TUSERDATA:
        vn = ax__view_node(L, 1);
        t = vn == NULL ? NULL : cJSON_IsArray(vn) ? "array" : "object";
        break;
    case LUA_TTABLE: {
        int k = marker_kind(L, 1);
        if (!k)
            k = lua_rawlen(L, 1) > 0 ? AX__JK_ARRAY : AX__JK_OBJECT;
        t = k == AX__JK_ARRAY ? "array" : "object";
        break;
    }
    default:
        break;
    }
    if (t == NULL)
        lua_pushnil(L);
    else
        lua_pushstring(L, t);
    return 1;
}

void ax__json_open_api(lua_State *L)
{
    static const luaL_Reg json[] = {
        {"encode", l_encode},   {"decode", l_decode}, {"object", l_object}, {"array", l_array},
        {"totable", l_totable}, {"type", l_type},     {NULL, NULL}};

    lua_newtable(L);             /* json */
    luaL_setfuncs(L, json, 0);   /* json */
    ax__push_null(L);            /* json, null */
    lua_setfield(L, -2, "null"); /* json */
}

void ax__json_init(lua_State *L)
{
    luaL_newmetatable(L, AX_JBOX_MT); /* bmt */
    lua_pushcfunction(L, jbox_gc);    /* bmt, gc */
    lua_setfield(L, -2, "__gc");      /* bmt */
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);

    /* the marker metatables are shared by every policy: protected, so that none can change
     * them (getmetatable answers the name; a marked table keeps its marker) */
    lua_newtable(L); /* omt */
    lua_pushliteral(L, "json.object");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "json.object");
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &obj_mt_key);
    lua_newtable(L); /* amt */
    lua_pushliteral(L, "json.array");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "json.array");
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &arr_mt_key);
}
