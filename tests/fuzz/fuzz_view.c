/* fuzz_view.c - libFuzzer target: the policy view (core/policy/view.c) under random edits.
 *
 * Input: one byte n, then n bytes of edit script, then a JSON request (the tree). A Lua
 * driver walks the tree through views and, per script byte pair, descends, ascends, reads,
 * assigns (scalars, tables, nil, another view: a subtree moved or copied), inserts and
 * removes, each in a pcall (errors are fine). Then, from the last script byte:
 * - the token memo must agree with a fresh estimate of the edited tree;
 * - discard must give back exactly the tree as it was (printed byte for byte), or commit
 *   must leave a well-linked tree that prints and parses;
 * - a view kept from the closed scope must raise, never touch memory.
 * Op 9 is ax.pairs over a view, and value kind 5 a member's view (both once steered around
 * while their faults were open; regressions/fuzz_view keeps the inputs).
 * Seeds: tests/fixtures/translate/<x>.anthropic.json behind a few script bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "anthroxy_tokens.h"
#include "view.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char driver[] =
    "local ax, root, ops = ...\n"
    "local stack, i = {root}, 1\n"
    "local names = {'messages','content','role','text','type','system','tools','model',\n"
    "  'max_tokens','input','tool_use_id','x',''}\n"
    "local function byte() local b = ops:byte(i) or 0; i = i + 1; return b end\n"
    "local function keys(v) local t = {} for k in pairs(v) do t[#t+1] = k end return t end\n"
    "local function key(v, b)\n"
    "  local ks = keys(v)\n"
    "  if b % 4 == 3 or #ks == 0 then\n"
    "    if #ks > 0 and ks[1] == 1 then return #ks + 1 - (b >> 6) end\n"
    "    return names[b % #names + 1]\n"
    "  end\n"
    "  return ks[b % #ks + 1]\n"
    "end\n"
    "local function value(b)\n"
    "  local k = b % 9\n"
    "  if k == 0 then return b elseif k == 1 then return 's' .. b\n"
    "  elseif k == 2 then return {type = 'text', text = ('t'):rep(b)}\n"
    "  elseif k == 3 then return {b, 'x', {b}} elseif k == 4 then return b % 2 == 0\n"
    "  elseif k == 5 then return stack[b % #stack + 1]\n"
    "  elseif k == 6 then return root elseif k == 7 then return {} end\n"
    "  return b / 3\n"
    "end\n"
    "while i <= #ops do\n"
    "  local op, a = byte() % 10, byte()\n"
    "  local cur = stack[#stack]\n"
    "  pcall(function()\n"
    "    if op == 0 then local c = cur[key(cur, a)]; if ax.is_view(c) then stack[#stack+1] = c end\n"
    "    elseif op == 1 then if #stack > 1 then stack[#stack] = nil end\n"
    "    elseif op == 2 then cur[key(cur, a)] = value(a >> 2)\n"
    "    elseif op == 3 then ax.insert(cur, value(a))\n"
    "    elseif op == 4 then ax.insert(cur, 1 + a % 3, value(a >> 2))\n"
    "    elseif op == 5 then if a % 2 == 0 then ax.remove(cur) else ax.remove(cur, 1 + (a >> 1) % 4) end\n"
    "    elseif op == 6 then cur[key(cur, a)] = nil\n"
    "    elseif op == 7 then local n = 0 for _, v in ax.ipairs(cur) do n = n + 1 end\n"
    "      assert(n <= #cur); tostring(cur); local _ = ax.json and ax.json.encode and ax.json.encode(cur)\n"
    "    elseif op == 8 then local r = stack[1]['messages']; if ax.is_view(r) then stack = {root, r} end\n"
    "    else for k, v in ax.pairs(cur) do local _ = v end end\n"
    "  end)\n"
    "end\n"
    "return stack[#stack]\n";

/* Every child's prev/next links agree, as cJSON's own functions rely on. */
static void check_links(const cJSON *n, int depth)
{
    const cJSON *c, *last = NULL;

    if (depth > 10000)
        abort();
    for (c = n->child; c != NULL; c = c->next) {
        if (c != n->child && c->prev != last)
            abort();
        if ((n->type & 0xff) == cJSON_Object && c->string == NULL)
            abort();
        check_links(c, depth + 1);
        last = c;
    }
    if (n->child != NULL && n->child->prev != last)
        abort();
}

static int stale_probe(lua_State *L)
{
    lua_getfield(L, 1, "messages"); /* must raise: the view's scope has ended */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ax__vstate vs = {0};
    struct ax__scope sc;
    struct ax__tokmemo memo;
    size_t nops, charged = 0;
    cJSON *root;
    char *before = NULL, *after;
    lua_State *L;
    int commit;

    if (size < 1)
        return 0;
    nops = data[0] < size - 1 ? data[0] : size - 1;
    if ((root = cJSON_ParseWithLength((const char *)data + 1 + nops, size - 1 - nops)) == NULL)
        return 0;
    if ((!cJSON_IsObject(root) && !cJSON_IsArray(root)) || /* hooks get objects */
        (before = cJSON_PrintUnformatted(root)) == NULL || (L = luaL_newstate()) == NULL) {
        free(before);
        cJSON_Delete(root);
        return 0;
    }
    commit = nops > 0 && (data[nops] & 1);
    luaL_openlibs(L);
    ax__view_init(L, &vs);
    memset(&sc, 0, sizeof(sc));
    memset(&memo, 0, sizeof(memo));
    ax__memo_reset(&memo, root);
    ax__scope_open(&vs, &sc, 0);
    sc.memo = &memo;
    /* As the server does (--lua-req-mem-max): writes are charged, so a script that doubles
     * the tree by assigning it into itself is refused, not an out-of-memory. 1 MiB rather
     * than the server's 16: the same paths, and the fuzzer's runs stay fast. */
    sc.charge = &charged;
    sc.charge_max = 1u << 20;
    vs.cur = &sc;
    if (luaL_loadbuffer(L, driver, sizeof(driver) - 1, "driver") != LUA_OK)
        abort();
    lua_newtable(L);
    ax__view_open_api(L, &vs);
    ax__view_push(L, &vs, &sc, root);
    lua_pushlstring(L, (const char *)data + 1, nops);
    if (lua_pcall(L, 3, 1, 0) != LUA_OK)
        abort(); /* every edit runs in a pcall */
    if (ax__memo_request(&memo, root) != ax_tokens_request(root))
        abort(); /* the memo forgot a write */
    vs.cur = NULL;
    if (commit)
        ax__scope_commit(&sc);
    else
        ax__scope_discard(&sc);
    check_links(root, 0);
    if ((after = cJSON_PrintUnformatted(root)) == NULL)
        abort();
    if (!commit && strcmp(before, after) != 0)
        abort(); /* discard did not restore the tree */
    if (commit) {
        cJSON *again = cJSON_Parse(after);
        if (again == NULL)
            abort();
        cJSON_Delete(again);
    }
    lua_pushcfunction(L, stale_probe);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 0, 0) == LUA_OK)
        abort(); /* a view outlived its scope */
    lua_close(L);
    ax__memo_free(&memo);
    free(before);
    free(after);
    cJSON_Delete(root);
    return 0;
}
