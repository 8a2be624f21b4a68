/* test_view.c - the request view (core/policy/view.c) on a bare Lua state: reads, writes, commit,
 * discard restoring the exact tree, `{}` keeping the replaced node's type, explicit
 * constructors, array operations and the child-pointer cache, views dead after their
 * scope, conversions. Each case runs a Lua chunk `local req = ...` over a view. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "anthroxy_json.h"
#include "policy/view.h"
#include "ax_test.h"

/* ax_json_parse keeps integers above 2^53 exact, as the server's parser does */
static cJSON *parse(const char *text)
{
    struct ax_error err;
    char *copy = strdup(text);
    cJSON *j = ax_json_parse(copy, strlen(copy), &err);
    free(copy);
    return j;
}

static lua_State *L;
static struct ax__vstate vs;
static char last_error[1024];

/* Runs code over a view of tree in a fresh scope; commit (1) or discard (0) afterwards,
 * whatever the outcome when the chunk fails (discard). Returns 1 when the chunk ran. */
static int run(cJSON *tree, const char *code, int commit)
{
    struct ax__scope sc;
    int ok;

    last_error[0] = 0;
    if (luaL_loadstring(L, code) != LUA_OK) {
        snprintf(last_error, sizeof(last_error), "%s", lua_tostring(L, -1));
        fprintf(stderr, "compile: %s\n", last_error);
        lua_pop(L, 1);
        ax_test_failures++;
        return 0;
    }
    ax__scope_open(&vs, &sc, 0);
    vs.cur = &sc;
    ax__view_push(L, &vs, &sc, tree);
    ok = lua_pcall(L, 1, 0, 0) == LUA_OK;
    if (!ok) {
        snprintf(last_error, sizeof(last_error), "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    vs.cur = NULL;
    if (ok && commit)
        ax__scope_commit(&sc);
    else
        ax__scope_discard(&sc);
    return ok;
}

static int run_ok(cJSON *tree, const char *code)
{
    int ok = run(tree, code, 1);
    if (!ok)
        fprintf(stderr, "  chunk failed: %s\n", last_error);
    return ok;
}

static int same_json(const cJSON *a, const char *text)
{
    cJSON *b = parse(text);
    char *pa = cJSON_PrintUnformatted(a), *pb = cJSON_PrintUnformatted(b);
    int eq = pa && pb && strcmp(pa, pb) == 0;
    if (!eq)
        fprintf(stderr, "  got      %s\n  expected %s\n", pa, pb);
    free(pa);
    free(pb);
    cJSON_Delete(b);
    return eq;
}

static const char *base_json =
    "{\"model\":\"m\",\"max_tokens\":1024,\"temperature\":0.5,\"stream\":false,"
    "\"stop_sequences\":null,\"metadata\":{\"user_id\":\"u\"},"
    "\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
    "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"b\"}]},"
    "{\"role\":\"user\",\"content\":\"c\"}],"
    "\"tools\":[{\"name\":\"T\",\"input_schema\":{\"type\":\"object\",\"properties\":{}}}]}";

static void test_reads(void)
{
    cJSON *t = parse(base_json);
    CHECK(run_ok(t,
                 "local req = ...\n"
                 "assert(req.model == 'm')\n"
                 "assert(math.type(req.max_tokens) == 'integer' and req.max_tokens == 1024)\n"
                 "assert(req.temperature == 0.5)\n"
                 "assert(req.stream == false)\n"
                 "assert(req.stop_sequences == ax.json.null)\n"
                 "assert(req.nothing == nil)\n"
                 "assert(#req.messages == 3)\n"
                 "assert(req.messages[2].content[1].text == 'b')\n"
                 "assert(req.messages[4] == nil and req.messages[0] == nil)\n"
                 "assert(req.messages.x == nil and req[1] == nil)\n"
                 "assert(ax.json.type(req) == 'object')\n"
                 "assert(ax.json.type(req.messages) == 'array')\n"
                 "assert(ax.json.type(req.stop_sequences) == 'null')\n"
                 "assert(ax.is_view(req) and not ax.is_view({}))\n"
                 "assert(req.messages[1] == req.messages[1])\n"
                 "local keys = {}\n"
                 "for k in pairs(req) do keys[#keys + 1] = k end\n"
                 "assert(table.concat(keys, ',') == "
                 "'model,max_tokens,temperature,stream,stop_sequences,metadata,messages,tools')\n"
                 "local n = 0\n"
                 "for i, m in ipairs(req.messages) do n = n + 1; assert(m.role) end\n"
                 "assert(n == 3)\n"
                 "n = 0\n"
                 "for i, m in ax.ipairs(req.messages) do n = n + i end\n"
                 "assert(n == 6)\n"
                 "local t = ax.json.totable(req.messages[2])\n"
                 "assert(not ax.is_view(t) and t.content[1].text == 'b')\n"
                 "assert(ax.json.encode(req.metadata) == '{\"user_id\":\"u\"}')\n"));
    CHECK(same_json(t, base_json)); /* reading changes nothing */
    cJSON_Delete(t);
}

static void test_writes_commit(void)
{
    cJSON *t = parse(base_json);
    CHECK(run_ok(t, "local req = ...\n"
                    "req.max_tokens = 4096\n"
                    "req.temperature = nil\n"
                    "req.tool_choice = { type = 'any' }\n"
                    "req.messages[1].content = 'A'\n"
                    "req.messages[#req.messages + 1] = { role = 'assistant', content = 'd' }\n"
                    "ax.insert(req.messages[2].content, 1, { type = 'text', text = 'first' })\n"
                    "local gone = ax.remove(req.messages, 3)\n"
                    "assert(gone.content == 'c')\n"
                    "req.tools[1].input_schema.properties = {}\n"
                    "req.metadata = ax.json.object()\n"
                    "req.stop_sequences = ax.json.array()\n"
                    "assert(req.max_tokens == 4096 and req.temperature == nil)\n"
                    "assert(#req.messages == 3)\n"));
    CHECK(same_json(t,
                    "{\"model\":\"m\",\"max_tokens\":4096,\"stream\":false,"
                    "\"stop_sequences\":[],\"metadata\":{},"
                    "\"messages\":[{\"role\":\"user\",\"content\":\"A\"},"
                    "{\"role\":\"assistant\",\"content\":[{\"text\":\"first\",\"type\":\"text\"},"
                    "{\"type\":\"text\",\"text\":\"b\"}]},"
                    "{\"content\":\"d\",\"role\":\"assistant\"}],"
                    "\"tools\":[{\"name\":\"T\",\"input_schema\":{\"type\":\"object\","
                    "\"properties\":{}}}],\"tool_choice\":{\"type\":\"any\"}}"));
    cJSON_Delete(t);
}

/* Every kind of write, then an error: the tree is exactly as before. */
static void test_discard(void)
{
    cJSON *t = parse(base_json);
    CHECK(!run(t,
               "local req = ...\n"
               "local m2 = req.messages[2]\n"
               "req.max_tokens = 1\n"
               "req.temperature = nil\n"
               "req.new = { a = { 1, 2, 3 } }\n"
               "req.new.a[2] = 'x'\n"
               "ax.insert(req.messages, 1, { role = 'user', content = 'z' })\n"
               "ax.remove(req.messages, 3)\n"
               "m2.content[1].text = 'changed after removal'\n"
               "req.messages[1] = req.messages[2]\n"
               "req.messages[#req.messages] = nil\n"
               "req.tools = ax.json.array()\n"
               "req.metadata.user_id = nil\n"
               "req.metadata.extra = true\n"
               "error('stop here')\n",
               1));
    CHECK(strstr(last_error, "stop here") != NULL);
    CHECK(same_json(t, base_json));
    /* discard of a successful chunk too */
    CHECK(run(t, "local req = ...\nreq.model = 'other'\nax.remove(req.messages, 1)\n", 0));
    CHECK(same_json(t, base_json));
    cJSON_Delete(t);
}

static void test_types_kept(void)
{
    cJSON *t = parse("{\"o\":{\"k\":1},\"a\":[1,2],\"s\":\"x\"}");
    CHECK(run_ok(t, "local req = ...\nreq.o = {}\nreq.a = {}\nreq.s = {}\nreq.n = {}\n"
                    "req.e = ax.json.array()\nreq.f = ax.json.object({})\n"));
    CHECK(same_json(t, "{\"o\":{},\"a\":[],\"s\":{},\"n\":{},\"e\":[],\"f\":{}}"));
    cJSON_Delete(t);
}

static void test_array_ops(void)
{
    cJSON *t = parse("{\"a\":[]}");
    /* 100 elements: indexes past 8 go through the child-pointer cache, which must follow
     * every insertion, removal and replacement */
    CHECK(run_ok(t, "local req = ...\nlocal a = req.a\n"
                    "for i = 1, 100 do a[#a + 1] = i end\n"
                    "assert(#a == 100 and a[50] == 50 and a[100] == 100)\n"
                    "ax.insert(a, 10, 'ins')\n"
                    "assert(a[10] == 'ins' and a[11] == 10 and a[51] == 50 and #a == 101)\n"
                    "assert(ax.remove(a, 10) == 'ins' and a[10] == 10 and #a == 100)\n"
                    "a[60] = 'sixty'\n"
                    "assert(a[60] == 'sixty' and a[61] == 61)\n"
                    "a[#a] = nil\n"
                    "assert(#a == 99 and a[99] == 99)\n"
                    "assert(not pcall(function() a[50] = nil end))\n"
                    "assert(not pcall(function() a[200] = 1 end))\n"
                    "assert(not pcall(function() a.x = 1 end))\n"
                    "table.insert(a, 1, 0)\n"
                    "assert(a[1] == 0 and a[2] == 1 and #a == 100)\n"
                    "assert(table.remove(a, 1) == 0 and #a == 99)\n"
                    "assert(ax.remove(a) == 99 and #a == 98)\n"
                    "local s = 0\nfor _, v in ipairs(a) do if math.type(v) == 'integer' then "
                    "s = s + v end end\n"
                    "assert(s == 98 * 99 // 2 - 60)\n"));
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(t, "a")) == 98);
    cJSON_Delete(t);
}

static void test_copies_and_conversions(void)
{
    cJSON *t = parse("{\"m\":[{\"x\":1}],\"big\":12345678901234567890}");
    CHECK(run_ok(t, "local req = ...\n"
                    "req.c = req.m[1]\n" /* a view assigned: deep copy */
                    "req.c.x = 2\n"
                    "assert(req.m[1].x == 1)\n"
                    "req.i = 9007199254740993\n" /* > 2^53: kept exactly */
                    "req.f = 0.25\n"
                    "assert(not pcall(function() req.bad = function() end end))\n"
                    "assert(not pcall(function() req.bad = { 1, 2, x = 3 } end))\n"
                    "assert(not pcall(function() req.bad = 0/0 end))\n"
                    "local cyc = {}; cyc.self = cyc\n"
                    "assert(not pcall(function() req.bad = cyc end))\n"
                    "assert(req.bad == nil)\n"
                    "local d = ax.json.decode('{\"a\":[],\"b\":{},\"n\":null}')\n"
                    "assert(ax.json.type(d.a) == 'array' and ax.json.type(d.b) == 'object')\n"
                    "assert(d.n == ax.json.null)\n"
                    "assert(ax.json.encode(d) == '{\"a\":[],\"b\":{},\"n\":null}')\n"
                    "assert(not pcall(ax.json.decode, '{\"a\":1} x'))\n"));
    CHECK(same_json(t, "{\"m\":[{\"x\":1}],\"big\":12345678901234567890,\"c\":{\"x\":2},"
                       "\"i\":9007199254740993,\"f\":0.25}"));
    cJSON_Delete(t);
}

/* ax.pairs over a view iterates it as pairs() does (it crashed: view_pairs called without
 * its upvalue), and over a plain table; replacing a member with a copy of a member view
 * neither leaks the copy's old key (ASan) nor keeps it. */
static void test_ax_pairs_and_member_copies(void)
{
    cJSON *t = parse("{\"a\":{\"k\":1},\"b\":2,\"l\":[3,4]}");
    CHECK(run_ok(t, "local req = ...\n"
                    "local n, s = 0, 0\n"
                    "for k, v in ax.pairs(req.l) do n = n + 1; s = s + k * v end\n"
                    "assert(n == 2 and s == 3 + 8)\n"
                    "local ks = {}\n"
                    "for k in ax.pairs(req) do ks[#ks + 1] = k end\n"
                    "assert(table.concat(ks, ',') == 'a,b,l')\n"
                    "local m = 0\n"
                    "for k, v in ax.pairs({x = 1}) do m = m + v end\n"
                    "assert(m == 1)\n"
                    "assert(not pcall(ax.pairs, 5))\n"
                    "req.b = req.a\n"    /* replace: the copy carried the key "a" */
                    "req.l[1] = req.a\n" /* into an array: no key at all */
                    "req.a.k = req.a\n"  /* a member replaced with a copy of its parent */
                    "for k in pairs(req) do assert(k == 'a' or k == 'b' or k == 'l') end\n"));
    CHECK(same_json(t, "{\"a\":{\"k\":{\"k\":1}},\"b\":{\"k\":1},\"l\":[{\"k\":1},4]}"));
    CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(t, "l"), 0)->string == NULL);
    cJSON_Delete(t);
}

/* A view kept past its scope raises instead of touching freed memory. */
static void test_stale_view(void)
{
    cJSON *t = parse(base_json);
    CHECK(run_ok(t, "local req = ...\nstale = req.messages\nstale_root = req\n"));
    cJSON_Delete(t);
    t = parse(base_json);
    CHECK(!run(t, "return #stale", 1));
    CHECK(strstr(last_error, "outside its hook") != NULL);
    CHECK(!run(t, "return stale_root.model", 1));
    CHECK(!run(t, "stale_root.model = 'x'", 1));
    CHECK(!run(t, "local req = ...\nreq.x = stale", 1));
    CHECK(strstr(last_error, "outside its hook") != NULL);
    CHECK(!run(t, "return ax.json.type(stale)", 1));
    CHECK(!run(t, "return ax.json.totable(stale)", 1));
    CHECK(!run(t, "return ax.json.encode(stale)", 1));
    CHECK(!run(t, "for k in pairs(stale_root) do end", 1));
    CHECK(run(t, "assert(tostring(stale):find('stale'))", 1));
    CHECK(same_json(t, base_json));
    cJSON_Delete(t);
}

static void test_readonly(void)
{
    cJSON *t = parse(base_json);
    struct ax__scope sc;
    ax__scope_open(&vs, &sc, 1);
    vs.cur = &sc;
    luaL_loadstring(L, "local r = ...\nassert(r.model == 'm')\nr.model = 'x'");
    ax__view_push(L, &vs, &sc, t);
    CHECK(lua_pcall(L, 1, 0, 0) != LUA_OK);
    CHECK(strstr(lua_tostring(L, -1), "read-only") != NULL);
    lua_pop(L, 1);
    vs.cur = NULL;
    ax__scope_discard(&sc);
    CHECK(same_json(t, base_json));
    cJSON_Delete(t);
}

int main(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    ax__view_init(L, &vs);
    lua_newtable(L);
    ax__view_open_api(L, &vs);
    lua_setglobal(L, "ax");

    test_reads();
    test_writes_commit();
    test_discard();
    test_types_kept();
    test_array_ops();
    test_copies_and_conversions();
    test_ax_pairs_and_member_copies();
    test_stale_view();
    test_readonly();

    lua_close(L);
    return AX_TEST_DONE("test_view");
}
