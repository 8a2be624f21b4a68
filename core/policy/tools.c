/* tools.c - the `anthroxy check` and `anthroxy test-lua` commands.
 *
 * Both build an engine of their own through internal.h's entries (ax__engine_create,
 * ax__engine_load, ax__engine_pcall): check runs a chain's request hooks over a sample and
 * prints each policy's diff; test-lua runs a test file with lua/anthroxy/testing.lua, whose
 * host.run_hook runs one hook over a real view. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "anthroxy_experiment.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_translate.h"

/* ---- commands ------------------------------------------------------------------------------ */

/* host.run_hook(fn, hook, tree, aux, ctx) -> tree after, ret (on_route: ret, model): one hook
 * over a real view of tree (a plain table), committed on success; the hook's error is
 * re-raised. */
static int host_run_hook(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    const char *hook = luaL_checkstring(L, 2);
    struct ax__scope sc, *prev;
    cJSON *root;
    int boxed, status, nargs = 2, old_order = 0;
    int route = strcmp(hook, "on_route") == 0, nres = route ? 2 : 1;

    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 5);
    root = (cJSON *)ax__json_arg(L, 3, &boxed); /* 6: the box owning root */
    ax__scope_open(&eng->vs, &sc, strcmp(hook, "on_response") == 0 || route);
    prev = eng->vs.cur;
    eng->vs.cur = &sc;
    if (strcmp(hook, "on_upstream_error") == 0)
        old_order = ax__old_error_order(L, 1);
    lua_pushvalue(L, 1);
    if (old_order) /* the deprecated (err, req, ctx), as run.c passes it */
        lua_pushvalue(L, 4);
    ax__view_push(L, &eng->vs, &sc, root);
    lua_pushvalue(L, 5);
    if (strcmp(hook, "on_upstream_error") == 0 || route) {
        if (!old_order)
            lua_pushvalue(L, 4); /* err, or on_route's fleet */
        nargs = 3;
    }
    status = lua_pcall(L, nargs, nres, 0); /* ..., box, ret(s)|err */
    eng->vs.cur = prev;
    if (status != LUA_OK) {
        ax__scope_discard(&sc);
        return lua_error(L);
    }
    ax__scope_commit(&sc);
    ax__json_push_table(L, root); /* ..., box, ret(s), tree */
    lua_insert(L, -1 - nres);     /* ..., box, tree, ret(s) */
    return 1 + nres;
}

/* host.counters() -> { arm = { policy = { name = n } } }: what ax.count added so far */
static int host_counters(lua_State *L)
{
    struct ax_policy_engine *eng = ax__engine_of(L);
    cJSON *c = ax_exp_stats_counters_json(eng->stats);

    if (c == NULL)
        return luaL_error(L, "not enough memory");
    ax__json_push_table(L, c);
    cJSON_Delete(c);
    return 1;
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

    ax__gen_make_require(L, eng, eng->gen);          /* eng, file, require (3) */
    ax__push_runtime_module(L, eng, "chain.lua", 3); /* ..., chain (4) */
    ax__push_host(L, eng, 3);                        /* ..., chain, host (5) */
    lua_pushcfunction(L, host_run_hook);
    lua_setfield(L, 5, "run_hook");
    lua_pushcfunction(L, host_where);
    lua_setfield(L, 5, "where");
    lua_pushcfunction(L, host_counters);
    lua_setfield(L, 5, "counters");
    lua_pushcfunction(L, host_traceback);
    lua_setfield(L, 5, "traceback");
    lua_pushcfunction(L, host_stderr);
    lua_setfield(L, 5, "stderr");
    lua_getfield(L, LUA_REGISTRYINDEX, "anthroxy.set_fake");
    lua_setfield(L, 5, "set_fake");
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->session_mt_ref); /* T.session: the real methods */
    lua_setfield(L, 5, "session_mt");
    ax__session_push_counters(L);
    lua_setfield(L, 5, "session_counters");
    /* testing.lua gets (host, chain) as its chunk arguments */
    {
        char path[4096];
        snprintf(path, sizeof(path), "%s/anthroxy/testing.lua", eng->lua_dir);
        text = ax__read_file(path, &len, err, sizeof(err));
        if (text == NULL)
            return luaL_error(L, "%s", err);
        lua_pushfstring(L, "@%s", path);
        if (luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t") != LUA_OK) {
            free(text);
            return lua_error(L);
        }
        free(text);
        lua_remove(L, -2); /* ..., host, f */
        ax__push_newenv(L, eng, 3);
        lua_setupvalue(L, -2, 1);
        lua_pushvalue(L, 5);
        lua_pushvalue(L, 4);
        lua_call(L, 2, 1); /* ..., host, T (6) */
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->gen->loaded_ref);
    lua_pushvalue(L, 6);
    lua_setfield(L, -2, "anthroxy.testing");
    lua_pop(L, 1);
    text = ax__read_file(file, &len, err, sizeof(err));
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
    ax__push_newenv(L, eng, 3);
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
    if (ax__engine_create(&env, NULL, 1, &eng) < 0) {
        fprintf(stderr, "anthroxy test-lua: out of memory\n");
        ax_config_free(&cfg);
        return 1;
    }
    eng->gen = calloc(1, sizeof(*eng->gen));
    if (eng->gen == NULL)
        goto done;
    eng->gen->refs = 1;
    eng->gen->loaded_ref = eng->gen->require_ref = LUA_NOREF;
    lua_pushcfunction(eng->L, test_protected);
    lua_pushlightuserdata(eng->L, eng);
    lua_pushstring(eng->L, argv[1]);
    status = ax__engine_pcall(eng, 2, 2);
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
    ax__engine_destroy(eng);
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

    printf("== %s %s\n", policy, ax__hook_names[hook]);
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
    ax__push_runtime_module(L, eng, "diff.lua", -1);
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
        fprintf(stderr, "anthroxy check: the request fails in %s: %d %s: %s\n",
                ax__hook_names[hook], cs->err.status, cs->err.type ? cs->err.type : "",
                cs->err.message);
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
    if (ax__engine_create(&env, argv[1], 0, &cs.eng) < 0)
        goto out;
    if (ax__engine_load(cs.eng, msg, sizeof(msg)) < 0) {
        fprintf(stderr, "anthroxy check: %s: %s\n", argv[1], msg);
        goto out;
    }
    ax__engine_init_handles(cs.eng);
    printf("chain %s: %d policies\n", argv[1], cs.eng->gen->n);
    lua_pushcfunction(cs.eng->L, check_load_diff);
    lua_pushlightuserdata(cs.eng->L, cs.eng);
    if (ax__engine_pcall(cs.eng, 1, 1) != LUA_OK) {
        fprintf(stderr, "anthroxy check: diff.lua: %s\n", lua_tostring(cs.eng->L, -1));
        goto out;
    }
    cs.diff_ref = luaL_ref(cs.eng->L, LUA_REGISTRYINDEX);
    cs.eng->trace = check_trace;
    cs.eng->trace_ud = &cs;

    body = argc > 2 ? ax__read_file(argv[2], &len, msg, sizeof(msg)) : ax__strdup(sample_request);
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
            ax__engine_destroy(cs.eng);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    ax_config_free(&cfg);
    return rc;
}
