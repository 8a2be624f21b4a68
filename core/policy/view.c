/* view.c - the request view: a Lua userdata over a cJSON node, and the per-run token memo.
 *
 * Reads convert only what they touch; writes go straight into the tree and log what they
 * replaced (view.h), so commit frees the replaced nodes and discard undoes the log. Values
 * convert through lua_json.c; run.c opens and closes the scopes; api.c adds these functions
 * to `anthroxy`. */
#include "view.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "anthroxy_tokens.h"
#include "lua_json.h"

#define CACHE_MIN 8 /* arrays indexed past this position get a child-pointer cache */

enum undo_kind { U_REPLACE, U_INSERT, U_REMOVE };

struct ax__undo {
    enum undo_kind kind;
    cJSON *parent;
    cJSON *a; /* REPLACE: old node; INSERT: the new node; REMOVE: the removed node */
    cJSON *b; /* REPLACE: the new node; REMOVE: the sibling it followed (NULL: was first) */
};

struct ax__acache {
    const cJSON *arr; /* NULL: free slot */
    cJSON **items;    /* NULL: stale, rebuild on next use */
    int n;
};

struct view {
    cJSON *node;
    uint64_t scope_id;
    int depth;     /* 0: the hook's root */
    cJSON *field;  /* depth >= 1: the root's member it lives under */
    cJSON *anchor; /* depth >= 2: the element of that member it lives under (a message) */
};

static char vs_key;

/* ---- cJSON list surgery (the prev of the first child points at the last one) ---------- */

static void list_replace(cJSON *parent, cJSON *old, cJSON *nw)
{
    nw->next = old->next;
    nw->prev = old->prev == old ? nw : old->prev;
    if (old == parent->child)
        parent->child = nw;
    else
        old->prev->next = nw;
    if (old->next != NULL)
        old->next->prev = nw;
    else
        parent->child->prev = nw;
    old->next = old->prev = NULL;
}

static void list_insert_after(cJSON *parent, cJSON *prev, cJSON *item)
{
    if (prev == NULL) {
        if (parent->child == NULL) {
            item->prev = item;
            item->next = NULL;
        } else {
            item->next = parent->child;
            item->prev = parent->child->prev;
            parent->child->prev = item;
        }
        parent->child = item;
        return;
    }
    item->prev = prev;
    item->next = prev->next;
    if (prev->next != NULL)
        prev->next->prev = item;
    else
        parent->child->prev = item;
    prev->next = item;
}

static cJSON *prev_sibling(const cJSON *parent, cJSON *item)
{
    return item == parent->child ? NULL : item->prev;
}

/* ---- array caches --------------------------------------------------------------------- */

static struct ax__acache *cache_slot(struct ax__scope *sc, const cJSON *arr, int create)
{
    size_t i, mask;

    if (sc->cache_cap == 0) {
        if (!create)
            return NULL;
        sc->cache = calloc(8, sizeof(*sc->cache));
        if (sc->cache == NULL)
            return NULL;
        sc->cache_cap = 8;
    } else if (create && (sc->cache_n + 1) * 2 > sc->cache_cap) {
        struct ax__acache *old = sc->cache, *nc;
        size_t j, oldcap = sc->cache_cap;
        nc = calloc(oldcap * 2, sizeof(*nc));
        if (nc == NULL)
            return NULL;
        sc->cache = nc;
        sc->cache_cap = oldcap * 2;
        for (j = 0; j < oldcap; j++) {
            if (old[j].arr == NULL)
                continue;
            mask = sc->cache_cap - 1;
            for (i = ((uintptr_t)old[j].arr >> 4) & mask; nc[i].arr != NULL; i = (i + 1) & mask)
                ;
            nc[i] = old[j];
        }
        free(old);
    }
    mask = sc->cache_cap - 1;
    for (i = ((uintptr_t)arr >> 4) & mask; sc->cache[i].arr != NULL; i = (i + 1) & mask)
        if (sc->cache[i].arr == arr)
            return &sc->cache[i];
    if (!create)
        return NULL;
    sc->cache[i].arr = arr;
    sc->cache[i].items = NULL;
    sc->cache[i].n = 0;
    sc->cache_n++;
    return &sc->cache[i];
}

static void cache_invalidate(struct ax__scope *sc, const cJSON *arr)
{
    struct ax__acache *c = cache_slot(sc, arr, 0);
    if (c != NULL) {
        free(c->items);
        c->items = NULL;
    }
}

/* A valid cache for arr, built on demand; NULL when memory is short (callers walk). */
static struct ax__acache *cache_get(struct ax__scope *sc, const cJSON *arr)
{
    struct ax__acache *c = cache_slot(sc, arr, 1);
    const cJSON *it;
    int n = 0;

    if (c == NULL)
        return NULL;
    if (c->items != NULL)
        return c;
    for (it = arr->child; it != NULL; it = it->next)
        n++;
    c->items = malloc(sizeof(cJSON *) * (size_t)(n > 0 ? n : 1));
    if (c->items == NULL)
        return NULL;
    c->n = 0;
    for (it = arr->child; it != NULL; it = it->next)
        c->items[c->n++] = (cJSON *)it;
    return c;
}

static void cache_free(struct ax__scope *sc)
{
    size_t i;
    for (i = 0; i < sc->cache_cap; i++)
        free(sc->cache[i].items);
    free(sc->cache);
    sc->cache = NULL;
    sc->cache_cap = sc->cache_n = 0;
}

static int array_len(struct ax__scope *sc, const cJSON *arr)
{
    struct ax__acache *c = cache_slot(sc, arr, 0);
    const cJSON *it;
    int n = 0;

    if (c != NULL && c->items != NULL)
        return c->n;
    for (it = arr->child; it != NULL; it = it->next)
        n++;
    if (n > CACHE_MIN * 2)
        cache_get(sc, arr);
    return n;
}

static cJSON *array_get(struct ax__scope *sc, const cJSON *arr, lua_Integer i)
{
    cJSON *it;
    struct ax__acache *c;

    if (i < 1)
        return NULL;
    if (i > CACHE_MIN && (c = cache_get(sc, arr)) != NULL)
        return i <= c->n ? c->items[i - 1] : NULL;
    for (it = arr->child; it != NULL && --i > 0; it = it->next)
        ;
    return it;
}

/* ---- token memo --------------------------------------------------------------------------- */

void ax__memo_reset(struct ax__tokmemo *m, const cJSON *root)
{
    m->root = root;
    m->n = 0;
    if (m->e != NULL)
        memset(m->e, 0, m->cap * sizeof(*m->e));
    m->sys_ok = m->tools_ok = 0;
}

void ax__memo_free(struct ax__tokmemo *m)
{
    free(m->e);
    memset(m, 0, sizeof(*m));
}

static struct ax__memo_entry *memo_slot(struct ax__tokmemo *m, const cJSON *msg, int create)
{
    size_t i, mask;
    if (m->cap == 0 || (create && (m->n + 1) * 2 > m->cap)) {
        size_t j, ncap = m->cap ? m->cap * 2 : 64;
        struct ax__memo_entry *ne, *old = m->e;
        if (!create)
            return NULL;
        ne = calloc(ncap, sizeof(*ne));
        if (ne == NULL)
            return NULL;
        for (j = 0; j < m->cap; j++) {
            if (old[j].msg == NULL)
                continue;
            for (i = ((uintptr_t)old[j].msg >> 4) & (ncap - 1); ne[i].msg != NULL;
                 i = (i + 1) & (ncap - 1))
                ;
            ne[i] = old[j];
        }
        free(old);
        m->e = ne;
        m->cap = ncap;
    }
    mask = m->cap - 1;
    for (i = ((uintptr_t)msg >> 4) & mask; m->e[i].msg != NULL; i = (i + 1) & mask)
        if (m->e[i].msg == msg)
            return &m->e[i];
    if (!create)
        return NULL;
    m->e[i].msg = msg;
    m->e[i].tokens = -1;
    m->n++;
    return &m->e[i];
}

/* Open addressing without tombstones: forgetting marks the value stale instead. */
static void memo_forget(struct ax__tokmemo *m, const cJSON *msg)
{
    struct ax__memo_entry *e = memo_slot(m, msg, 0);
    if (e != NULL)
        e->tokens = -1;
}

static void memo_clear(struct ax__tokmemo *m)
{
    if (m != NULL)
        ax__memo_reset(m, m->root);
}

int64_t ax__memo_message(struct ax__tokmemo *m, const cJSON *msg)
{
    struct ax__memo_entry *e = memo_slot(m, msg, 1);
    if (e == NULL)
        return ax_tokens_message(msg);
    if (e->tokens >= 0) {
        m->hits++;
        return e->tokens;
    }
    m->misses++;
    e->tokens = ax_tokens_message(msg);
    return e->tokens;
}

/* ax_tokens_request of a request holding only its member `name`: a shallow copy of that
 * member in a stack object (nothing is allocated or modified). */
static int64_t part_tokens(const cJSON *req, const char *name)
{
    cJSON obj, part;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(req, name);

    memset(&obj, 0, sizeof(obj));
    obj.type = cJSON_Object;
    if (it != NULL) {
        part = *it;
        part.string = (char *)name;
        part.next = NULL;
        part.prev = &part;
        obj.child = &part;
    }
    return ax_tokens_request(&obj);
}

/* ax_tokens_system(req) (the system prompt and the request's fixed 3), kept in the memo. */
int64_t ax__memo_system(struct ax__tokmemo *m, const cJSON *req)
{
    if (req != m->root)
        return ax_tokens_system(req);
    if (!m->sys_ok) {
        m->sys_tokens = part_tokens(req, "system");
        m->sys_ok = 1;
    }
    return m->sys_tokens;
}

/* ax_tokens_tools(req.tools); the memo keeps it with the request's 3 (the session's tools
 * estimate may have filled it, see run.c). */
int64_t ax__memo_tools(struct ax__tokmemo *m, const cJSON *req)
{
    if (req != m->root)
        return ax_tokens_tools(cJSON_GetObjectItemCaseSensitive(req, "tools"));
    if (!m->tools_ok) {
        m->tools_tokens = part_tokens(req, "tools");
        m->tools_ok = 1;
    }
    return m->tools_tokens - part_tokens(req, "");
}

/* ax_tokens_request is 3 + system + messages + tools: the system part carries the 3. */
int64_t ax__memo_request(struct ax__tokmemo *m, const cJSON *req)
{
    const cJSON *msgs, *x;
    int64_t tok;

    if (req != m->root)
        return ax_tokens_request(req);
    tok = ax__memo_system(m, req) + ax__memo_tools(m, req);
    msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    cJSON_ArrayForEach(x, msgs)
    {
        tok += ax__memo_message(m, x);
    }
    return tok;
}

/* A write through view v; key is the member written when v is the root. */
static void memo_note_write(struct ax__scope *sc, const struct view *v, const char *key)
{
    struct ax__tokmemo *m = sc->memo;
    const cJSON *root;
    if (m == NULL)
        return;
    root = m->root;
    if (v->depth == 0) {
        /* messages replaced whole keep their nodes until commit: nothing to forget */
        if (key != NULL && strcmp(key, "system") == 0)
            m->sys_ok = 0;
        else if (key != NULL && strcmp(key, "tools") == 0)
            m->tools_ok = 0;
        return;
    }
    if (v->field == cJSON_GetObjectItemCaseSensitive(root, "messages")) {
        if (v->depth >= 2)
            memo_forget(m, v->anchor);
    } else if (v->field == cJSON_GetObjectItemCaseSensitive(root, "system")) {
        m->sys_ok = 0;
    } else if (v->field == cJSON_GetObjectItemCaseSensitive(root, "tools")) {
        m->tools_ok = 0;
    }
}

/* ---- scopes and the undo log ---------------------------------------------------------- */

void ax__scope_open(struct ax__vstate *vs, struct ax__scope *sc, int readonly)
{
    memset(sc, 0, sizeof(*sc));
    sc->id = ++vs->next_id;
    sc->readonly = readonly;
}

static void scope_end(struct ax__scope *sc)
{
    free(sc->log);
    sc->log = NULL;
    sc->n_log = sc->cap_log = 0;
    cache_free(sc);
    sc->id = 0;
}

void ax__scope_commit(struct ax__scope *sc)
{
    size_t i;
    int freed = 0;
    for (i = 0; i < sc->n_log; i++) {
        struct ax__undo *u = &sc->log[i];
        if (u->kind == U_REPLACE || u->kind == U_REMOVE) {
            cJSON_Delete(u->a);
            freed = 1;
        }
    }
    if (freed) /* a freed message's address may come back as another message */
        memo_clear(sc->memo);
    scope_end(sc);
}

void ax__scope_discard(struct ax__scope *sc)
{
    size_t i = sc->n_log;
    if (i > 0)
        memo_clear(sc->memo);
    while (i-- > 0) {
        struct ax__undo *u = &sc->log[i];
        switch (u->kind) {
        case U_REPLACE:
            list_replace(u->parent, u->b, u->a);
            cJSON_Delete(u->b);
            break;
        case U_INSERT:
            cJSON_Delete(cJSON_DetachItemViaPointer(u->parent, u->a));
            break;
        case U_REMOVE:
            list_insert_after(u->parent, u->b, u->a);
            break;
        }
    }
    scope_end(sc);
}

/* Makes room for one more log entry; raises when memory is short (nothing changed yet). */
static void log_reserve(lua_State *L, struct ax__scope *sc)
{
    if (sc->n_log == sc->cap_log) {
        size_t nc = sc->cap_log ? sc->cap_log * 2 : 16;
        struct ax__undo *nl = realloc(sc->log, nc * sizeof(*nl));
        if (nl == NULL)
            luaL_error(L, "not enough memory");
        sc->log = nl;
        sc->cap_log = nc;
    }
}

static void log_add(struct ax__scope *sc, enum undo_kind k, cJSON *parent, cJSON *a, cJSON *b)
{
    struct ax__undo *u = &sc->log[sc->n_log++];
    u->kind = k;
    u->parent = parent;
    u->a = a;
    u->b = b;
}

static void charge(lua_State *L, struct ax__scope *sc, size_t bytes)
{
    size_t extra;
    if (sc->charge == NULL)
        return;
    extra = sc->charge_extra ? *sc->charge_extra : 0;
    if (sc->charge_max && *sc->charge + bytes + extra > sc->charge_max) {
        if (sc->charge_hit != NULL)
            *sc->charge_hit = 1;
        luaL_error(L, "not enough memory (request memory cap: %I bytes)",
                   (LUAI_UACINT)sc->charge_max);
    }
    *sc->charge += bytes;
}

/* ---- views ------------------------------------------------------------------------------ */

static void check_views_valid(lua_State *L, int idx);

static struct ax__vstate *vstate(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

static struct view *test_view(lua_State *L, int idx)
{
    return luaL_testudata(L, idx, AX_VIEW_MT);
}

static struct view *valid_view(lua_State *L, struct ax__vstate *vs, int idx)
{
    struct view *v = luaL_checkudata(L, idx, AX_VIEW_MT);
    if (vs->cur == NULL || vs->cur->id != v->scope_id)
        luaL_error(L, "view used outside its hook (keep ax.json.totable copies across hooks)");
    return v;
}

static cJSON *nomem(lua_State *L)
{
    luaL_error(L, "not enough memory");
    return NULL;
}

void ax__view_push(lua_State *L, struct ax__vstate *vs, struct ax__scope *sc, cJSON *node)
{
    struct view *v = lua_newuserdatauv(L, sizeof(*v), 0);
    (void)vs;
    v->node = node;
    v->scope_id = sc->id;
    v->depth = 0;
    v->field = v->anchor = NULL;
    luaL_setmetatable(L, AX_VIEW_MT);
}

/* Pushes child n of view parent: a view for containers, a Lua value otherwise. */
static void push_value(lua_State *L, const struct view *parent, cJSON *n)
{
    struct view *v;
    if (!cJSON_IsArray(n) && !cJSON_IsObject(n)) {
        ax__json_push_scalar(L, n);
        return;
    }
    v = lua_newuserdatauv(L, sizeof(*v), 0);
    v->node = n;
    v->scope_id = parent->scope_id;
    v->depth = parent->depth + 1;
    v->field = v->depth == 1 ? n : parent->field;
    v->anchor = v->depth == 2 ? n : parent->anchor;
    luaL_setmetatable(L, AX_VIEW_MT);
}

int ax__view_info(lua_State *L, int idx, cJSON **node, int *depth, cJSON **field)
{
    struct view *v = test_view(L, idx);
    if (v == NULL)
        return 0;
    check_views_valid(L, idx);
    *node = v->node;
    *depth = v->depth;
    *field = v->field;
    return 1;
}

/* ---- view metamethods --------------------------------------------------------------------- */

/* A view inside a value being converted must belong to the active scope too. */
static void check_views_valid(lua_State *L, int idx)
{
    struct view *v = test_view(L, idx);
    struct ax__vstate *vs;
    if (v == NULL)
        return;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &vs_key); /* the vstate, registered at init */
    vs = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (vs == NULL || vs->cur == NULL || vs->cur->id != v->scope_id)
        luaL_error(L, "view used outside its hook (keep ax.json.totable copies across hooks)");
}

cJSON *ax__view_node(lua_State *L, int idx)
{
    struct view *v = test_view(L, idx);
    if (v == NULL)
        return NULL;
    check_views_valid(L, idx);
    return v->node;
}

static int view_index(lua_State *L)
{
    struct ax__vstate *vs = vstate(L);
    struct view *v = valid_view(L, vs, 1);
    cJSON *child = NULL;

    if (cJSON_IsObject(v->node)) {
        if (lua_type(L, 2) == LUA_TSTRING)
            child = cJSON_GetObjectItemCaseSensitive(v->node, lua_tostring(L, 2));
    } else if (lua_type(L, 2) == LUA_TNUMBER) {
        int isnum;
        lua_Integer i = lua_tointegerx(L, 2, &isnum);
        if (isnum)
            child = array_get(vs->cur, v->node, i);
    }
    if (child == NULL)
        return lua_pushnil(L), 1;
    push_value(L, v, child);
    return 1;
}

static int node_kind(const cJSON *n)
{
    return cJSON_IsArray(n) ? AX__JK_ARRAY : cJSON_IsObject(n) ? AX__JK_OBJECT : 0;
}

static cJSON *convert_value(lua_State *L, struct ax__scope *sc, int idx, int hint)
{
    size_t bytes = 0;
    cJSON *n;
    struct ax__jbox *b =
        ax__json_convert(L, idx, hint, &bytes); /* the box owns it until it is in */

    charge(L, sc, bytes);
    log_reserve(L, sc);
    n = b->root;
    b->root = NULL;
    lua_pop(L, 1);
    if (n->string != NULL) { /* a copy of a member view keeps its key (cJSON_Duplicate) */
        if (!(n->type & cJSON_StringIsConst))
            cJSON_free(n->string);
        n->string = NULL;
        n->type &= ~cJSON_StringIsConst;
    }
    return n;
}

static void check_writable(lua_State *L, struct ax__scope *sc)
{
    if (sc->readonly)
        luaL_error(L, "the view is read-only in this hook");
}

static void set_key(lua_State *L, struct ax__scope *sc, cJSON *obj, const char *key, int vidx)
{
    cJSON *old = cJSON_GetObjectItemCaseSensitive(obj, key);
    cJSON *nw;

    if (lua_isnil(L, vidx)) {
        if (old == NULL)
            return;
        log_reserve(L, sc);
        log_add(sc, U_REMOVE, obj, old, prev_sibling(obj, old));
        cJSON_DetachItemViaPointer(obj, old);
        return;
    }
    nw = convert_value(L, sc, vidx, old ? node_kind(old) : 0);
    if (old == NULL) {
        if (!cJSON_AddItemToObject(obj, key, nw)) {
            cJSON_Delete(nw);
            nomem(L);
        }
        log_add(sc, U_INSERT, obj, nw, NULL);
        return;
    }
    nw->string = cJSON_malloc(strlen(key) + 1);
    if (nw->string == NULL) {
        cJSON_Delete(nw);
        nomem(L);
    }
    memcpy(nw->string, key, strlen(key) + 1);
    list_replace(obj, old, nw);
    log_add(sc, U_REPLACE, obj, old, nw);
}

static void append_item(lua_State *L, struct ax__scope *sc, cJSON *arr, int vidx)
{
    struct ax__acache *c;
    cJSON *nw = convert_value(L, sc, vidx, 0);

    c = cache_slot(sc, arr, 0);
    if (c != NULL && c->items != NULL) {
        cJSON **ni = realloc(c->items, sizeof(cJSON *) * (size_t)(c->n + 1));
        if (ni == NULL) {
            free(c->items);
            c->items = NULL;
        } else {
            c->items = ni;
            c->items[c->n++] = nw;
        }
    }
    cJSON_AddItemToArray(arr, nw);
    log_add(sc, U_INSERT, arr, nw, NULL);
}

static void remove_item(lua_State *L, struct ax__scope *sc, cJSON *arr, cJSON *it)
{
    log_reserve(L, sc);
    cache_invalidate(sc, arr);
    log_add(sc, U_REMOVE, arr, it, prev_sibling(arr, it));
    cJSON_DetachItemViaPointer(arr, it);
}

static void set_index(lua_State *L, struct ax__scope *sc, cJSON *arr, lua_Integer i, int vidx)
{
    int n = array_len(sc, arr);
    cJSON *old, *nw;
    struct ax__acache *c;

    if (i < 1 || i > (lua_Integer)n + 1)
        luaL_error(L, "array index %I out of range (length %d)", (LUAI_UACINT)i, n);
    if (lua_isnil(L, vidx)) {
        if (i == n + 1)
            return;
        if (i != n)
            luaL_error(L, "cannot assign nil to element %I of %d: use ax.remove", (LUAI_UACINT)i,
                       n);
        remove_item(L, sc, arr, array_get(sc, arr, i));
        return;
    }
    if (i == n + 1) {
        append_item(L, sc, arr, vidx);
        return;
    }
    old = array_get(sc, arr, i);
    nw = convert_value(L, sc, vidx, node_kind(old));
    list_replace(arr, old, nw);
    c = cache_slot(sc, arr, 0);
    if (c != NULL && c->items != NULL && i <= c->n)
        c->items[i - 1] = nw;
    log_add(sc, U_REPLACE, arr, old, nw);
}

static int view_newindex(lua_State *L)
{
    struct ax__vstate *vs = vstate(L);
    struct view *v = valid_view(L, vs, 1);

    check_writable(L, vs->cur);
    memo_note_write(vs->cur, v, lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL);
    if (cJSON_IsObject(v->node)) {
        size_t len;
        const char *key;
        if (lua_type(L, 2) != LUA_TSTRING)
            return luaL_error(L, "object keys are strings (got %s)", luaL_typename(L, 2));
        key = lua_tolstring(L, 2, &len);
        if (strlen(key) != len)
            return luaL_error(L, "object key holds a NUL byte");
        set_key(L, vs->cur, v->node, key, 3);
    } else {
        int isnum;
        lua_Integer i = lua_tointegerx(L, 2, &isnum);
        if (!isnum)
            return luaL_error(L, "array index must be an integer (got %s)", luaL_typename(L, 2));
        set_index(L, vs->cur, v->node, i, 3);
    }
    return 0;
}

static int view_len(lua_State *L)
{
    struct ax__vstate *vs = vstate(L);
    struct view *v = valid_view(L, vs, 1);
    lua_pushinteger(L, cJSON_IsArray(v->node) ? array_len(vs->cur, v->node) : 0);
    return 1;
}

static int view_eq(lua_State *L)
{
    struct view *a = test_view(L, 1), *b = test_view(L, 2);
    lua_pushboolean(L, a != NULL && b != NULL && a->node == b->node);
    return 1;
}

static int view_tostring(lua_State *L)
{
    struct ax__vstate *vs = vstate(L);
    struct view *v = luaL_checkudata(L, 1, AX_VIEW_MT);
    if (vs->cur == NULL || vs->cur->id != v->scope_id) /* its node may be gone */
        lua_pushfstring(L, "anthroxy.view(stale): %p", (void *)v);
    else
        lua_pushfstring(L, "anthroxy.view(%s): %p", cJSON_IsArray(v->node) ? "array" : "object",
                        (void *)v);
    return 1;
}

/* pairs iterator: upvalues vs, next node (light userdata or nil = first), index. */
static int view_pairs_next(lua_State *L)
{
    struct ax__vstate *vs = vstate(L);
    struct view *v = valid_view(L, vs, 1);
    cJSON *n;
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(3));

    if (lua_isnil(L, lua_upvalueindex(2)))
        n = i == 0 ? v->node->child : NULL;
    else
        n = lua_touserdata(L, lua_upvalueindex(2));
    if (n == NULL)
        return lua_pushnil(L), 1;
    if (n->next != NULL)
        lua_pushlightuserdata(L, n->next);
    else
        lua_pushnil(L);
    lua_replace(L, lua_upvalueindex(2));
    lua_pushinteger(L, i + 1);
    lua_replace(L, lua_upvalueindex(3));
    if (cJSON_IsArray(v->node))
        lua_pushinteger(L, i + 1);
    else
        lua_pushstring(L, n->string ? n->string : "");
    push_value(L, v, n);
    return 2;
}

static int view_pairs(lua_State *L)
{
    struct ax__vstate *vs = vstate(L);
    valid_view(L, vs, 1);
    lua_pushlightuserdata(L, vs);
    lua_pushnil(L);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, view_pairs_next, 3);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* ---- module functions ------------------------------------------------------------------- */

static int l_is_view(lua_State *L)
{
    lua_pushboolean(L, test_view(L, 1) != NULL);
    return 1;
}

static int ipairs_aux(lua_State *L)
{
    lua_Integer i = luaL_checkinteger(L, 2);
    i = luaL_intop(+, i, 1);
    lua_pushinteger(L, i);
    return lua_geti(L, 1, i) == LUA_TNIL ? 1 : 2;
}

static int l_ipairs(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_pushcfunction(L, ipairs_aux);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 0);
    return 3;
}

static int next_aux(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int l_pairs(lua_State *L)
{
    if (test_view(L, 1) != NULL) { /* view_pairs reads vs from upvalue 1: ours is the same */
        lua_settop(L, 1);
        return view_pairs(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushcfunction(L, next_aux);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static int l_len(lua_State *L)
{
    lua_len(L, 1);
    return 1;
}

static int l_insert(lua_State *L)
{
    struct ax__vstate *vs = vstate(L);
    int nargs = lua_gettop(L);
    struct view *v = test_view(L, 1);
    lua_Integer n, pos;

    if (nargs != 2 && nargs != 3)
        return luaL_error(L, "wrong number of arguments to 'insert'");
    if (v == NULL) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_len(L, 1);
        n = lua_tointeger(L, -1);
        lua_pop(L, 1);
        pos = nargs == 3 ? luaL_checkinteger(L, 2) : n + 1;
        luaL_argcheck(L, pos >= 1 && pos <= n + 1, 2, "position out of bounds");
        for (lua_Integer i = n; i >= pos; i--) {
            lua_geti(L, 1, i);
            lua_seti(L, 1, i + 1);
        }
        lua_pushvalue(L, nargs);
        lua_seti(L, 1, pos);
        return 0;
    }
    valid_view(L, vs, 1);
    check_writable(L, vs->cur);
    memo_note_write(vs->cur, v, NULL);
    if (!cJSON_IsArray(v->node))
        return luaL_error(L, "ax.insert: not an array");
    n = array_len(vs->cur, v->node);
    pos = nargs == 3 ? luaL_checkinteger(L, 2) : n + 1;
    luaL_argcheck(L, pos >= 1 && pos <= n + 1, 2, "position out of bounds");
    if (lua_isnil(L, nargs))
        return luaL_error(L, "ax.insert: cannot insert nil (use ax.json.null)");
    if (pos == n + 1) {
        append_item(L, vs->cur, v->node, nargs);
    } else {
        cJSON *at = array_get(vs->cur, v->node, pos);
        cJSON *nw = convert_value(L, vs->cur, nargs, 0);
        cache_invalidate(vs->cur, v->node);
        list_insert_after(v->node, prev_sibling(v->node, at), nw);
        log_add(vs->cur, U_INSERT, v->node, nw, NULL);
    }
    return 0;
}

static int l_remove(lua_State *L)
{
    struct ax__vstate *vs = vstate(L);
    struct view *v = test_view(L, 1);
    lua_Integer n, pos;
    cJSON *it;

    if (v == NULL) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_len(L, 1);
        n = lua_tointeger(L, -1);
        lua_pop(L, 1);
        pos = luaL_optinteger(L, 2, n);
        if (n == 0 && lua_isnoneornil(L, 2))
            return 0;
        luaL_argcheck(L, pos >= 1 && pos <= n, 2, "position out of bounds");
        lua_geti(L, 1, pos); /* result */
        for (; pos < n; pos++) {
            lua_geti(L, 1, pos + 1);
            lua_seti(L, 1, pos);
        }
        lua_pushnil(L);
        lua_seti(L, 1, n);
        return 1;
    }
    valid_view(L, vs, 1);
    check_writable(L, vs->cur);
    memo_note_write(vs->cur, v, NULL);
    if (!cJSON_IsArray(v->node))
        return luaL_error(L, "ax.remove: not an array");
    n = array_len(vs->cur, v->node);
    if (n == 0 && lua_isnoneornil(L, 2))
        return 0;
    pos = luaL_optinteger(L, 2, n);
    luaL_argcheck(L, pos >= 1 && pos <= n, 2, "position out of bounds");
    it = array_get(vs->cur, v->node, pos);
    remove_item(L, vs->cur, v->node, it);
    push_value(L, v, it); /* still valid: removed nodes live until the scope ends */
    return 1;
}

void ax__view_open_api(lua_State *L, struct ax__vstate *vs)
{
    static const luaL_Reg top[] = {
        {"is_view", l_is_view}, {"ipairs", l_ipairs}, {"pairs", l_pairs}, {"insert", l_insert},
        {"remove", l_remove},   {"len", l_len},       {NULL, NULL}};

    lua_pushlightuserdata(L, vs); /* M, vs */
    luaL_setfuncs(L, top, 1);     /* M */
    ax__json_open_api(L);         /* M, json */
    lua_setfield(L, -2, "json");  /* M */
}

void ax__view_init(lua_State *L, struct ax__vstate *vs)
{
    static const luaL_Reg mt[] = {{"__index", view_index},
                                  {"__newindex", view_newindex},
                                  {"__len", view_len},
                                  {"__pairs", view_pairs},
                                  {"__eq", view_eq},
                                  {"__tostring", view_tostring},
                                  {NULL, NULL}};

    luaL_newmetatable(L, AX_VIEW_MT);   /* mt */
    lua_pushlightuserdata(L, vs);       /* mt, vs */
    luaL_setfuncs(L, mt, 1);            /* mt */
    lua_pushboolean(L, 0);              /* mt, false */
    lua_setfield(L, -2, "__metatable"); /* mt */
    lua_pop(L, 1);                      /* (empty) */

    ax__json_init(L); /* boxes and the object/array markers the conversions use */

    /* the vstate, for conversions that meet a view outside a view metamethod */
    lua_pushlightuserdata(L, vs);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &vs_key);
}
