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

/* One hook call's writes. */
struct ax__scope {
    uint64_t id;          /* 0: not open */
    int readonly;         /* writes raise (on_response) */
    struct ax__undo *log; /* undo log, in write order */
    size_t n_log, cap_log;
    struct ax__acache *cache; /* array child-pointer caches, keyed by array node */
    size_t cache_cap, cache_n;
    size_t *charge;       /* JSON bytes written by this scope are added here (may be NULL) */
    size_t charge_max;    /* ... and a write pushing *charge past this raises */
    size_t *charge_extra; /* counted against charge_max too (the request's Lua memory) */
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

/* Pushes ax.json.null. */
void ax__push_null(lua_State *L);

/* Adds the view/json functions to the table at the top of the stack (the anthroxy module):
 * json = {encode, decode, null, object, array, totable, type}, is_view, ipairs, pairs,
 * insert, remove, len. */
void ax__view_open_api(lua_State *L, struct ax__vstate *vs);

#endif
