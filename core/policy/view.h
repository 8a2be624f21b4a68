/* view.h - the request view (view.c): its scopes, undo log and per-run token memo.
 *
 * Internal to core/policy/ (the ax__ tier). A view is a userdata over
 * a cJSON node, valid only while the hook scope it was made in is the active one. Writes go
 * straight into the cJSON tree; each one records in the scope's undo log what it replaced,
 * so commit only frees the replaced nodes and discard undoes the log backwards. Nodes taken
 * out of the tree are kept (not freed) until the scope ends, so every view made in a scope
 * points at live memory for the whole scope. */
#ifndef ANTHROXY_POLICY_VIEW_H
#define ANTHROXY_POLICY_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <lua.h>

#define AX_VIEW_MT "anthroxy.view"

struct ax__undo;
struct ax__acache;

/* Token estimates of one request's messages, kept while they do not change, so that the
 * policies of a chain estimating the same conversation walk it once. Keyed by message node;
 * a write through a view under a message forgets that message, one under system or tools
 * (or to those members) forgets that part; freeing nodes (commit, discard) forgets all. */
struct ax__memo_entry {
    const cJSON *msg;
    int64_t tokens;
};
struct ax__tokmemo {
    const cJSON *root; /* the tree the entries belong to */
    struct ax__memo_entry *e;
    size_t cap, n;
    int64_t sys_tokens, tools_tokens; /* ax_tokens_request of {system} / {tools} alone */
    int sys_ok, tools_ok;
    uint64_t hits, misses;
};
void ax__memo_reset(struct ax__tokmemo *m, const cJSON *root);
void ax__memo_free(struct ax__tokmemo *m);
/* ax_tokens_message(msg) / ax_tokens_request(req), through the memo when they are the
 * memo's root and one of its messages. */
int64_t ax__memo_message(struct ax__tokmemo *m, const cJSON *msg);
int64_t ax__memo_request(struct ax__tokmemo *m, const cJSON *req);
/* ax_tokens_system(req) / ax_tokens_tools(req.tools), the fixed parts of ax__memo_request,
 * through the memo when req is its root. */
int64_t ax__memo_system(struct ax__tokmemo *m, const cJSON *req);
int64_t ax__memo_tools(struct ax__tokmemo *m, const cJSON *req);

/* One hook call's writes. */
struct ax__scope {
    uint64_t id;          /* 0: not open */
    int readonly;         /* writes raise (on_response) */
    struct ax__undo *log; /* undo log, in write order */
    size_t n_log, cap_log;
    struct ax__acache *cache; /* array child-pointer caches, keyed by array node */
    size_t cache_cap, cache_n;
    size_t *charge;           /* JSON bytes written by this scope are added here (may be NULL) */
    size_t charge_max;        /* ... and a write pushing *charge past this raises */
    size_t *charge_extra;     /* counted against charge_max too (the request's Lua memory) */
    int *charge_hit;          /* set to 1 when a write is refused for the cap (may be NULL) */
    struct ax__tokmemo *memo; /* told about every write (may be NULL) */
};

/* Per lua_State view state; every view function gets it as upvalue 1. */
struct ax__vstate {
    struct ax__scope *cur; /* the scope whose views are valid now, or NULL */
    uint64_t next_id;
};

/* Registers the view metatable, and lua_json's box and marker tables, in L's registry. */
void ax__view_init(lua_State *L, struct ax__vstate *vs);

/* Opens a scope (fresh id) / ends it: commit frees what the writes replaced, discard undoes
 * every write (the tree is then exactly as when the scope opened). Both free the caches and
 * the log and leave the scope closed (id 0). Neither touches vs->cur. */
void ax__scope_open(struct ax__vstate *vs, struct ax__scope *sc, int readonly);
void ax__scope_commit(struct ax__scope *sc);
void ax__scope_discard(struct ax__scope *sc);

/* Pushes a view of node, bound to scope sc (which must be open). */
void ax__view_push(lua_State *L, struct ax__vstate *vs, struct ax__scope *sc, cJSON *node);

/* For the view at idx: its node, depth below the root (0 = the root) and, at depth >= 1,
 * the root's member it lives under. Returns 0 when idx is not a valid view. */
int ax__view_info(lua_State *L, int idx, cJSON **node, int *depth, cJSON **field);

/* For the value at idx: the node of a view (raising when the view is stale), or NULL when it
 * is not a view. */
cJSON *ax__view_node(lua_State *L, int idx);

/* Adds the view functions to the table at the top of the stack (the anthroxy module):
 * is_view, ipairs, pairs, insert, remove, len, and json (lua_json.h's ax.json). */
void ax__view_open_api(lua_State *L, struct ax__vstate *vs);

#endif
