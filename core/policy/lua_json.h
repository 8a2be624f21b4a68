/* lua_json.h - Lua <-> cJSON conversion and ax.json.* (lua_json.c).
 *
 * Internal to core/policy/ (the ax__ tier). Conversions may raise (they run inside hooks and
 * protected calls); a tree under construction is owned by a box userdata until the caller
 * takes it, so a raise leaks nothing. Views (view.h) convert as the node they show. */
#ifndef ANTHROXY_POLICY_LUA_JSON_H
#define ANTHROXY_POLICY_LUA_JSON_H

#include <stddef.h>

#include <cjson/cJSON.h>
#include <lua.h>

#define AX_JBOX_MT "anthroxy.jbox"

/* A tree being built or handed over; its __gc frees root unless the taker set it NULL. */
struct ax__jbox {
    cJSON *root;
};

enum ax__jkind { AX__JK_OBJECT = 1, AX__JK_ARRAY = 2 };

/* Registers the box metatable and the object/array marker tables in L's registry. */
void ax__json_init(lua_State *L);

/* Pushes the ax.json table: encode, decode, null, object, array, totable, type. */
void ax__json_open_api(lua_State *L);

/* Pushes ax.json.null. */
void ax__push_null(lua_State *L);

/* Pushes node as a plain Lua value (deep copy; tables marked object/array). May raise. */
void ax__json_push_table(lua_State *L, const cJSON *node);

/* Pushes a scalar node (false, true, null, number, string, raw) as its Lua value; nil for a
 * container. */
void ax__json_push_scalar(lua_State *L, const cJSON *n);

/* Converts the value at idx into a new tree held by a box pushed on the stack; hint is the
 * kind (enum ax__jkind) of a node it replaces, which an empty table takes; *bytes grows by
 * the tree's size. Raises on unconvertible values. */
struct ax__jbox *ax__json_convert(lua_State *L, int idx, int hint, size_t *bytes);

/* Returns the cJSON node for the value at idx: a valid view's node (borrowed), or a
 * conversion of a Lua value into a new tree owned by a box userdata pushed on the stack
 * (*boxed = 1; pop it when done, the box frees the tree). Raises on unconvertible values. */
const cJSON *ax__json_arg(lua_State *L, int idx, int *boxed);

/* Converts the Lua value at idx into a new cJSON tree the caller owns. Raises on failure (the
 * partial tree is freed by the garbage collector then). */
cJSON *ax__json_from_lua(lua_State *L, int idx);

#endif
