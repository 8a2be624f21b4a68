/* test_policy.c - the policy engine on a real loop: concurrency of yielding hooks, budget
 * and memory kills, failed hooks leave the request untouched, ax.fail, sandbox, stale
 * views, session write-back, hot reload by generation, cancel. Policies live in
 * tests/fixtures/policy/; chains are written to a temporary directory per test. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "anthroxy_config.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_monitor.h"
#include "anthroxy_experiment.h"
#include "anthroxy_policy.h"
#include "anthroxy_upstream.h"
#include "ax_test.h"

#define FIX AX_FIXTURES "/policy/"

struct env {
    uv_loop_t loop;
    struct ax_config cfg;
    struct ax_policy_engine *eng;
    char dir[256];
    char dir2[256]; /* another temporary directory of the test's, removed with dir */
    char chain[300];
};

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static uint64_t setup_run_max_ms; /* --lua-run-max for the next setup; 0: the default */

static int setup(struct env *e, const char *chain_text, uint64_t budget, size_t req_mem)
{
    struct ax_policy_env pe;
    struct ax_error err;
    int rc;

    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/ax_test_policy_XXXXXX");
    if (mkdtemp(e->dir) == NULL) {
        perror("mkdtemp");
        exit(2);
    }
    snprintf(e->chain, sizeof(e->chain), "%s/chain.lua", e->dir);
    write_file(e->chain, chain_text);
    uv_loop_init(&e->loop);
    ax_config_init(&e->cfg);
    free(e->cfg.policies_path);
    e->cfg.policies_path = strdup(e->chain);
    if (budget)
        e->cfg.lua_instr_budget = budget;
    if (req_mem)
        e->cfg.lua_req_mem_max = req_mem;
    if (setup_run_max_ms)
        e->cfg.lua_run_max_ms = setup_run_max_ms;
    memset(&pe, 0, sizeof(pe));
    pe.loop = &e->loop;
    pe.cfg = &e->cfg;
    memset(&err, 0, sizeof(err));
    rc = ax_policy_engine_new(&pe, &e->eng, &err);
    if (rc < 0)
        fprintf(stderr, "engine_new: %s\n", err.message);
    return rc;
}

static void teardown(struct env *e)
{
    char cmd[600];
    if (e->eng != NULL)
        ax_policy_engine_close(e->eng, NULL, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&e->loop) == 0);
    ax_config_free(&e->cfg);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", e->dir, e->dir2);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", e->dir);
}

struct job {
    struct ax_policy_req *pr;
    cJSON *tree;
    int done, rc, order;
    struct ax_error err;
};

static int done_counter;

static void on_done(struct ax_policy_req *pr, int rc, const struct ax_error *err, void *ud)
{
    struct job *j = ud;
    (void)pr;
    j->done++;
    j->rc = rc;
    if (err != NULL)
        j->err = *err;
    j->order = done_counter++;
}

static void job_start(struct env *e, struct job *j, enum ax_hook hook, const char *json,
                      const cJSON *aux, struct ax_session *s)
{
    struct ax_policy_req_info info;
    memset(j, 0, sizeof(*j));
    memset(&info, 0, sizeof(info));
    info.request_id = "req_test";
    info.session_id = "sess";
    info.client_model = "claude-test";
    info.user_agent = "claude-cli/2.1.197";
    info.session = s;
    j->tree = cJSON_Parse(json);
    CHECK(j->tree != NULL);
    CHECK(ax_policy_req_new(e->eng, &info, &j->pr) == 0);
    CHECK(ax_policy_req_run(j->pr, hook, j->tree, aux, on_done, j) == 0);
    CHECK(j->done == 0); /* never before run returns */
}

static void job_free(struct job *j)
{
    ax_policy_req_free(j->pr);
    cJSON_Delete(j->tree);
}

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static int is_true(const cJSON *o, const char *k)
{
    return cJSON_IsTrue(get(o, k));
}

static void run_one(struct env *e, struct job *j, enum ax_hook hook, const char *json)
{
    job_start(e, j, hook, json, NULL, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK(j->done == 1);
}

static const char *behave_chain = "return {\n"
                                  "  { '" FIX "behave.lua' },\n"
                                  "  { '" FIX "marker.lua', tag = 'g1' },\n"
                                  "}\n";

#define REQ(act)                                                                                   \
    "{\"act\":\"" act "\",\"model\":\"m\",\"metadata\":{\"user_id\":\"u\"},"                       \
    "\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}"

/* A policy sleeping in ax.sleep does not hold up 200 other requests. */
static void test_sleep_concurrency(void)
{
    struct env e;
    struct job *jobs = calloc(201, sizeof(*jobs));
    int i, others_before = 1;

    CHECK(setup(&e, behave_chain, 0, 0) == 0);
    done_counter = 0;
    job_start(&e, &jobs[0], AX_HOOK_REQUEST, "{\"act\":\"sleep\",\"sleep_ms\":40,\"messages\":[]}",
              NULL, NULL);
    for (i = 1; i <= 200; i++)
        job_start(&e, &jobs[i], AX_HOOK_REQUEST, "{\"act\":\"settings\",\"messages\":[]}", NULL,
                  NULL);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    for (i = 0; i <= 200; i++) {
        CHECK(jobs[i].done == 1);
        CHECK(jobs[i].rc == 0);
        CHECK(is_true(jobs[i].tree, "marked"));
        if (i > 0 && jobs[i].order > jobs[0].order)
            others_before = 0;
    }
    CHECK(others_before);
    CHECK(jobs[0].order == 200);
    CHECK(is_true(jobs[0].tree, "slept"));
    CHECK(cJSON_IsString(get(jobs[1].tree, "greeting")) &&
          strcmp(get(jobs[1].tree, "greeting")->valuestring, "hi") == 0);
    CHECK(is_true(jobs[1].tree, "settings_readonly"));
    for (i = 0; i <= 200; i++)
        job_free(&jobs[i]);
    free(jobs);
    teardown(&e);
}

/* A failed hook leaves the request exactly as before; the next policy still runs. */
static void check_unchanged_and_marked(struct job *j, const char *act)
{
    cJSON *expect = cJSON_Parse(REQ("x"));
    cJSON_ReplaceItemInObjectCaseSensitive(expect, "act", cJSON_CreateString(act));
    cJSON_AddTrueToObject(expect, "marked");
    cJSON_AddStringToObject(expect, "generation_marker", "g1");
    CHECK(j->done == 1);
    CHECK(j->rc == 0);
    CHECK(cJSON_Compare(j->tree, expect, 1));
    if (!cJSON_Compare(j->tree, expect, 1)) {
        char *s = cJSON_PrintUnformatted(j->tree);
        fprintf(stderr, "  %s: got %s\n", act, s);
        free(s);
    }
    cJSON_Delete(expect);
}

static uint64_t status_num(struct env *e, const char *k)
{
    cJSON *st = ax_policy_engine_status(e->eng);
    uint64_t v = (uint64_t)cJSON_GetNumberValue(get(st, k));
    cJSON_Delete(st);
    return v;
}

static void test_failures_discarded(void)
{
    struct env e;
    struct job j;

    CHECK(setup(&e, behave_chain, 2000000, 4u << 20) == 0);

    run_one(&e, &j, AX_HOOK_REQUEST, REQ("loop"));
    check_unchanged_and_marked(&j, "loop");
    job_free(&j);
    CHECK(status_num(&e, "budget_kills") == 1);

    run_one(&e, &j, AX_HOOK_REQUEST, REQ("pcall_loop"));
    check_unchanged_and_marked(&j, "pcall_loop");
    job_free(&j);
    CHECK(status_num(&e, "budget_kills") == 2);

    /* the loop runs inside a coroutine of the policy's own, whose errors it catches */
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("coroutine_loop"));
    check_unchanged_and_marked(&j, "coroutine_loop");
    job_free(&j);
    CHECK(status_num(&e, "budget_kills") == 3);

    run_one(&e, &j, AX_HOOK_REQUEST, REQ("error_half"));
    check_unchanged_and_marked(&j, "error_half");
    job_free(&j);

    run_one(&e, &j, AX_HOOK_REQUEST, REQ("hog_lua"));
    check_unchanged_and_marked(&j, "hog_lua");
    job_free(&j);

    run_one(&e, &j, AX_HOOK_REQUEST, REQ("hog_json"));
    check_unchanged_and_marked(&j, "hog_json");
    job_free(&j);

    run_one(&e, &j, AX_HOOK_REQUEST, REQ("hog_caught"));
    check_unchanged_and_marked(&j, "hog_caught");
    job_free(&j);
    CHECK(status_num(&e, "memory_kills") >= 3);
    CHECK(status_num(&e, "errors") == 7);

    /* the state still serves requests normally afterwards */
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("settings"));
    CHECK(is_true(j.tree, "marked"));
    CHECK(is_true(j.tree, "settings_readonly"));
    job_free(&j);
    teardown(&e);
}

static void test_fail_closed_and_ax_fail(void)
{
    struct env e;
    struct job j;

    CHECK(setup(&e, behave_chain, 0, 0) == 0);
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("fail"));
    CHECK(j.rc < 0);
    CHECK(j.err.status == 413);
    CHECK(strcmp(j.err.type, "request_too_large") == 0);
    CHECK(strstr(j.err.message, "too big for this policy") != NULL);
    CHECK(get(j.tree, "marked") == NULL); /* the chain stopped */
    job_free(&j);
    ax_policy_engine_close(e.eng, NULL, NULL);
    e.eng = NULL;

    {
        struct ax_policy_env pe;
        struct ax_error err;
        memset(&pe, 0, sizeof(pe));
        pe.loop = &e.loop;
        pe.cfg = &e.cfg;
        e.cfg.policy_fail_closed = 1;
        CHECK(ax_policy_engine_new(&pe, &e.eng, &err) == 0);
    }
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("error_half"));
    CHECK(j.rc < 0);
    CHECK(j.err.status == 500);
    CHECK(strstr(j.err.message, "boom halfway") != NULL);
    CHECK(strstr(j.err.message, "behave.lua:") != NULL); /* file and line */
    CHECK(get(j.tree, "half") == NULL);
    job_free(&j);
    teardown(&e);
}

static void test_sandbox(void)
{
    struct env e;
    struct job j;
    const cJSON *sb, *it;

    CHECK(setup(&e, behave_chain, 0, 0) == 0);
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("sandbox"));
    sb = get(j.tree, "sandbox");
    CHECK(cJSON_IsObject(sb));
    CHECK(cJSON_GetArraySize(sb) >= 27);
    cJSON_ArrayForEach(it, sb)
    {
        if (!cJSON_IsTrue(it)) {
            fprintf(stderr, "  sandbox probe %s is not true\n", it->string);
            ax_test_failures++;
        }
    }
    job_free(&j);

    run_one(&e, &j, AX_HOOK_REQUEST, REQ("nested_yield"));
    CHECK(cJSON_IsFalse(get(j.tree, "nested_ok")));
    CHECK(strstr(cJSON_GetStringValue(get(j.tree, "nested_err")), "request's coroutine") != NULL);
    job_free(&j);

    /* the token memo agrees with fresh estimates through every kind of write, and a
     * following hook (memo kept across policies) still agrees */
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("memo"));
    CHECK(cJSON_GetArraySize(get(j.tree, "memo_bad")) == 0);
    if (cJSON_GetArraySize(get(j.tree, "memo_bad")) != 0) {
        char *p = cJSON_PrintUnformatted(get(j.tree, "memo_bad"));
        fprintf(stderr, "  memo: %s\n", p);
        free(p);
    }
    job_free(&j);

    /* no upstream: ax.tokenize answers nil, err without yielding forever */
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("tokenize"));
    CHECK(cJSON_IsNull(get(j.tree, "tok_n")));
    CHECK(cJSON_IsString(get(j.tree, "tok_err")));
    job_free(&j);
    teardown(&e);
}

/* Issue 13: policy code that used to hold the loop (minutes, or for ever) is stopped within
 * its budget or its wall-clock bound, counted, and the request goes on unchanged through the
 * next policy. Prints the time each held the loop. */
static void test_sandbox_holds(void)
{
    static const struct {
        const char *act;
        char kind; /* 'b': budget (or wall-clock) kill, 'm': memory, 'e': plain error */
    } cases[] = {
        {"pattern_backtrack", 'b'}, {"pattern_lazy", 'b'}, {"pattern_gsub", 'b'},
        {"plain_find", 'b'},        {"concat_meta", 'b'},  {"move_nils", 'b'},
        {"insert_front", 'b'},      {"sort_pcall", 'b'},   {"own_coroutine_pcall", 'b'},
        {"resume_loop", 'b'},       {"xpcall_loop", 'b'},  {"close_loop", 'b'},
        {"copy_loop", 'b'},         {"long_compare", 'b'}, {"hog_caught", 'm'},
        {"gc_loop", 'e'},           {"sleep_long", 'e'},
    };
    struct env e;
    struct job j;
    size_t i;

    setup_run_max_ms = 500; /* the bound that stops them under ASan, where all is slower */
    CHECK(setup(&e, behave_chain, 0, 0) == 0);
    setup_run_max_ms = 0;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t b0 = status_num(&e, "budget_kills"), m0 = status_num(&e, "memory_kills");
        uint64_t e0 = status_num(&e, "errors"), t0 = uv_hrtime(), ms, kills;
        char req[256];

        snprintf(req, sizeof(req), REQ("%s"), cases[i].act);
        run_one(&e, &j, AX_HOOK_REQUEST, req);
        ms = (uv_hrtime() - t0) / 1000000;
        fprintf(stderr, "  sandbox_holds: %-20s held the loop %4llu ms\n", cases[i].act,
                (unsigned long long)ms);
        check_unchanged_and_marked(&j, cases[i].act);
        CHECK(ms < 1500);
        CHECK(status_num(&e, "errors") == e0 + 1);
        /* a kill by the wall clock counts as a budget kill: under ASan the memory hog may
         * meet it before its cap */
        kills = status_num(&e, "budget_kills") - b0 + status_num(&e, "memory_kills") - m0;
        CHECK(kills == (cases[i].kind != 'e'));
        if (cases[i].kind == 'b')
            CHECK(status_num(&e, "budget_kills") == b0 + 1);
        if (kills != (cases[i].kind != 'e'))
            fprintf(stderr, "  %s: not the expected kind of failure\n", cases[i].act);
        job_free(&j);
    }
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("settings")); /* and the state still serves */
    CHECK(is_true(j.tree, "marked"));
    CHECK(is_true(j.tree, "settings_readonly"));
    job_free(&j);
    teardown(&e);
}

/* A view kept in ctx.state is dead in the next hook; the response view is read-only;
 * on_upstream_error can ask for a retry. */
static void test_hooks(void)
{
    struct env e;
    struct job j;
    cJSON *oreq, *aux;

    CHECK(setup(&e, behave_chain, 0, 0) == 0);
    job_start(&e, &j, AX_HOOK_REQUEST, REQ("stash"), NULL, NULL);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(is_true(j.tree, "stashed"));
    oreq = cJSON_Parse("{\"model\":\"m\",\"messages\":[]}");
    CHECK(ax_policy_req_run(j.pr, AX_HOOK_UPSTREAM_REQUEST, oreq, NULL, on_done, &j) == 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(j.done == 2);
    CHECK(cJSON_IsFalse(get(oreq, "stale_ok")));
    CHECK(strstr(cJSON_GetStringValue(get(oreq, "stale_err")), "outside its hook") != NULL);
    cJSON_Delete(oreq);

    oreq = cJSON_Parse("{\"act\":\"write_response\",\"content\":[]}");
    CHECK(ax_policy_req_run(j.pr, AX_HOOK_RESPONSE, oreq, NULL, on_done, &j) == 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(j.done == 3 && j.rc == 0);
    CHECK(get(oreq, "x") == NULL);
    cJSON_Delete(oreq);

    aux = cJSON_Parse("{\"status\":400,\"type\":\"invalid_request_error\",\"message\":\"m\","
                      "\"n_prompt_tokens\":9000,\"n_ctx\":8192}");
    CHECK(ax_policy_req_run(j.pr, AX_HOOK_UPSTREAM_ERROR, j.tree, aux, on_done, &j) == 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(j.done == 4);
    CHECK(j.rc == 1);
    CHECK(cJSON_GetNumberValue(get(j.tree, "retried_with")) == 8192);
    cJSON_Delete(aux);

    aux = cJSON_Parse("{\"status\":500,\"type\":\"api_error\",\"message\":\"m\"}");
    CHECK(ax_policy_req_run(j.pr, AX_HOOK_UPSTREAM_ERROR, j.tree, aux, on_done, &j) == 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(j.done == 5 && j.rc == 0);
    cJSON_Delete(aux);
    job_free(&j);
    teardown(&e);
}

static void test_session(void)
{
    struct env e;
    struct job j;
    struct ax_monitor *m = ax_monitor_new(8, 0);
    struct ax_session *s = ax_monitor_get(m, "sess", 1);

    CHECK(setup(&e, behave_chain, 0, 0) == 0);
    ax_session_record_request(s, 1000, 2);
    job_start(&e, &j, AX_HOOK_REQUEST, REQ("session"), NULL, s);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(j.rc == 0);
    CHECK(s->prune_count == 1);
    CHECK(s->forced_tool_turns == 2);
    CHECK(ax_policy_req_report_scale(j.pr) == 2.5);
    CHECK(cJSON_GetNumberValue(get(j.tree, "session_seen")) == 1);
    job_free(&j);

    job_start(&e, &j, AX_HOOK_REQUEST, REQ("session_then_error"), NULL, s);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(s->prune_count == 1); /* the failed hook's note is discarded */
    CHECK(ax_policy_req_report_scale(j.pr) == 1.0);
    job_free(&j);
    teardown(&e);
    ax_session_unref(s);
    ax_monitor_free(m);
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
}

/* Turns the loop (watchers and debounce timer are unreferenced: a guard timer keeps it
 * going) until the engine reaches generation gen, at most 3 s. */
static void wait_generation(struct env *e, uint64_t gen)
{
    uv_timer_t guard;
    uint64_t t0 = uv_now(&e->loop);
    uv_timer_init(&e->loop, &guard);
    uv_timer_start(&guard, on_guard, 50, 50);
    while (ax_policy_engine_generation(e->eng) < gen && uv_now(&e->loop) - t0 < 3000)
        uv_run(&e->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&e->loop, UV_RUN_NOWAIT);
    CHECK(ax_policy_engine_generation(e->eng) == gen);
}

static void write_version(const char *path, int v)
{
    char text[512];
    snprintf(text, sizeof(text),
             "local ax = require 'anthroxy'\n"
             "local M = { name = 'version' }\n"
             "function M.on_request(req)\n"
             "  if req.sleep_ms then ax.sleep(req.sleep_ms) end\n"
             "  req.version = %d\n"
             "end\n"
             "return M\n",
             v);
    write_file(path, text);
}

static int version_of(const struct job *j)
{
    return (int)cJSON_GetNumberValue(get(j->tree, "version"));
}

/* Reload swaps generations; a request in flight finishes on the one it pinned; a broken
 * file keeps the old generation and records the error. */
static void test_reload(void)
{
    struct env e;
    struct job a, b;
    char vpath[400], *bad;
    cJSON *st;

    {
        char d[256];
        snprintf(d, sizeof(d), "/tmp/ax_test_policy_XXXXXX");
        CHECK(mkdtemp(d) != NULL);
        snprintf(vpath, sizeof(vpath), "%s/version.lua", d);
        write_version(vpath, 1);
        char chain[600];
        snprintf(chain, sizeof(chain), "return { { '%s' } }\n", vpath);
        CHECK(setup(&e, chain, 0, 0) == 0);
        /* the policy file lives in its own directory, removed by teardown */
        snprintf(e.dir2, sizeof(e.dir2), "%s", d);
    }
    CHECK(ax_policy_engine_generation(e.eng) == 1);
    run_one(&e, &a, AX_HOOK_REQUEST, "{\"messages\":[]}");
    CHECK(version_of(&a) == 1);
    job_free(&a);

    /* A pins generation 1 and parks in ax.sleep; the file changes; B sees version 2 */
    job_start(&e, &a, AX_HOOK_REQUEST, "{\"sleep_ms\":30,\"messages\":[]}", NULL, NULL);
    write_version(vpath, 2);
    ax_policy_engine_reload(e.eng);
    CHECK(ax_policy_engine_generation(e.eng) == 2);
    job_start(&e, &b, AX_HOOK_REQUEST, "{\"messages\":[]}", NULL, NULL);
    CHECK(status_num(&e, "generations_alive") == 2); /* A still pins generation 1 */
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(a.done == 1 && b.done == 1);
    CHECK(version_of(&a) == 1);
    CHECK(version_of(&b) == 2);
    job_free(&a);
    CHECK(status_num(&e, "generations_alive") == 1); /* freed with its last request */
    job_free(&b);

    /* a syntax error keeps generation 2 */
    bad = ax_test_read_file(FIX "syntax_error.lua", NULL);
    CHECK(bad != NULL);
    write_file(vpath, bad ? bad : "");
    free(bad);
    ax_policy_engine_reload(e.eng);
    CHECK(ax_policy_engine_generation(e.eng) == 2);
    st = ax_policy_engine_status(e.eng);
    CHECK(cJSON_IsString(get(st, "last_error")));
    CHECK(strstr(cJSON_GetStringValue(get(st, "last_error")), "version.lua") != NULL);
    cJSON_Delete(st);
    run_one(&e, &a, AX_HOOK_REQUEST, "{\"messages\":[]}");
    CHECK(version_of(&a) == 2);
    job_free(&a);

    /* the watcher: a saved file reloads by itself (debounced) */
    CHECK(ax_policy_engine_watch(e.eng) == 0);
    write_version(vpath, 4);
    {
        /* the watchers and the debounce timer are unreferenced: a guard timer keeps the
         * loop turning while we wait */
        uv_timer_t guard;
        uint64_t t0 = uv_now(&e.loop);
        uv_timer_init(&e.loop, &guard);
        uv_timer_start(&guard, on_guard, 50, 50);
        while (ax_policy_engine_generation(e.eng) == 2 && uv_now(&e.loop) - t0 < 3000)
            uv_run(&e.loop, UV_RUN_ONCE);
        uv_close((uv_handle_t *)&guard, NULL);
    }
    CHECK(ax_policy_engine_generation(e.eng) == 3);
    run_one(&e, &a, AX_HOOK_REQUEST, "{\"messages\":[]}");
    CHECK(version_of(&a) == 4);
    job_free(&a);

    /* the chain moves to a policy in a new directory: that one is watched from then on */
    {
        char d2[300], v2[400], chain[600];
        snprintf(d2, sizeof(d2), "%s/sub", e.dir);
        CHECK(mkdir(d2, 0700) == 0);
        snprintf(v2, sizeof(v2), "%s/version.lua", d2);
        write_version(v2, 5);
        snprintf(chain, sizeof(chain), "return { { 'sub/version.lua' } }\n");
        write_file(e.chain, chain);
        wait_generation(&e, 4);
        run_one(&e, &a, AX_HOOK_REQUEST, "{\"messages\":[]}");
        CHECK(version_of(&a) == 5);
        job_free(&a);
        write_version(v2, 6);
        wait_generation(&e, 5);
        run_one(&e, &a, AX_HOOK_REQUEST, "{\"messages\":[]}");
        CHECK(version_of(&a) == 6);
        job_free(&a);
    }
    teardown(&e);
}

/* A cancelled request parked in ax.sleep is never resumed and done never runs. */
static void test_cancel(void)
{
    struct env e;
    struct job j;

    CHECK(setup(&e, behave_chain, 0, 0) == 0);
    job_start(&e, &j, AX_HOOK_REQUEST, "{\"act\":\"sleep\",\"sleep_ms\":20,\"messages\":[]}", NULL,
              NULL);
    uv_run(&e.loop, UV_RUN_NOWAIT);
    ax_policy_req_cancel(j.pr);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(j.done == 0);
    CHECK(get(j.tree, "slept") == NULL);
    job_free(&j);

    /* cancelled with its done already deferred: not called either */
    job_start(&e, &j, AX_HOOK_REQUEST, REQ("settings"), NULL, NULL);
    ax_policy_req_cancel(j.pr);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(j.done == 0);
    job_free(&j);
    teardown(&e);
}

/* ---- ax.tokenize / ax.complete against a tiny upstream on the same loop ---------------- */

struct mini {
    uv_tcp_t srv;
    int port, n_req, n_closed;
    char last_path[64];
    char last_body[2048];
};

struct mconn {
    uv_tcp_t tcp;
    struct mini *m;
    char buf[16384];
    size_t len;
    uv_write_t wr;
    char resp[1024];
};

static void mconn_on_close(uv_handle_t *h)
{
    struct mconn *c = h->data;
    c->m->n_closed++;
    free(c);
}

static void mconn_on_written(uv_write_t *w, int status)
{
    struct mconn *c = w->data;
    (void)status;
    uv_close((uv_handle_t *)&c->tcp, mconn_on_close);
}

static void mconn_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    struct mconn *c = h->data;
    (void)sz;
    b->base = c->buf + c->len;
    b->len = sizeof(c->buf) - c->len - 1;
}

static char *find_nocase(char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i;
        for (i = 0; i < n && hay[i] && (hay[i] | 0x20) == (needle[i] | 0x20); i++)
            ;
        if (i == n)
            return hay;
    }
    return NULL;
}

static void mconn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct mconn *c = s->data;
    char *hdr_end, *cl, *body;
    const char *json;
    size_t need;
    uv_buf_t out;

    (void)b;
    if (n < 0) {
        uv_close((uv_handle_t *)s, mconn_on_close);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = 0;
    if ((hdr_end = strstr(c->buf, "\r\n\r\n")) == NULL)
        return;
    body = hdr_end + 4;
    cl = find_nocase(c->buf, "content-length:");
    need = cl ? (size_t)atoi(cl + 15) : 0;
    if ((size_t)(c->buf + c->len - body) < need)
        return;
    c->m->n_req++;
    sscanf(c->buf, "%*s %63s", c->m->last_path);
    snprintf(c->m->last_body, sizeof(c->m->last_body), "%.*s", (int)need, body);
    if (strstr(body, "hang") != NULL)
        return; /* never answers: the client cancels */
    if (strcmp(c->m->last_path, "/tokenize") == 0)
        json = "{\"tokens\":[1,2,3]}";
    else
        json = "{\"id\":\"c1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,"
               "\"message\":{\"role\":\"assistant\",\"content\":\"a summary\"},"
               "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,"
               "\"completion_tokens\":2}}";
    snprintf(c->resp, sizeof(c->resp),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n%s",
             strlen(json), json);
    out = uv_buf_init(c->resp, (unsigned)strlen(c->resp));
    c->wr.data = c;
    uv_read_stop(s);
    uv_write(&c->wr, s, &out, 1, mconn_on_written);
}

static void mini_on_conn(uv_stream_t *srv, int status)
{
    struct mini *m = srv->data;
    struct mconn *c = calloc(1, sizeof(*c));
    (void)status;
    c->m = m;
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) == 0)
        uv_read_start((uv_stream_t *)&c->tcp, mconn_alloc, mconn_on_read);
    else
        uv_close((uv_handle_t *)&c->tcp, mconn_on_close);
}

static void mini_start(uv_loop_t *loop, struct mini *m)
{
    struct sockaddr_in a;
    struct sockaddr_storage got;
    int len = sizeof(got);
    memset(m, 0, sizeof(*m));
    uv_tcp_init(loop, &m->srv);
    m->srv.data = m;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_bind(&m->srv, (const struct sockaddr *)&a, 0);
    uv_listen((uv_stream_t *)&m->srv, 16, mini_on_conn);
    uv_tcp_getsockname(&m->srv, (struct sockaddr *)&got, &len);
    m->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
}

static const char *test_model(void *ud)
{
    (void)ud;
    return "test-model";
}

static int up_closed;

static void on_up_closed(void *ud)
{
    (void)ud;
    up_closed = 1;
}

static void test_upstream_calls(void)
{
    struct env e;
    struct job j;
    struct mini m;
    struct ax_upstream *up = NULL;
    struct ax_upstream_opts uo;
    struct ax_policy_env pe;
    struct ax_error err;
    char base[64];

    CHECK(setup(&e, behave_chain, 0, 0) == 0);
    ax_policy_engine_close(e.eng, NULL, NULL); /* again, with an upstream */
    e.eng = NULL;
    mini_start(&e.loop, &m);
    snprintf(base, sizeof(base), "http://127.0.0.1:%d/v1", m.port);
    memset(&uo, 0, sizeof(uo));
    uo.base_url = base;
    uo.max_concurrent = 4;
    uo.queue_max = 16;
    uo.connect_timeout_ms = 2000;
    uo.total_timeout_ms = 5000;
    CHECK(ax_upstream_new(&e.loop, &uo, &up) == 0);
    memset(&pe, 0, sizeof(pe));
    pe.loop = &e.loop;
    pe.cfg = &e.cfg;
    pe.up = up;
    pe.upstream_model = test_model;
    CHECK(ax_policy_engine_new(&pe, &e.eng, &err) == 0);

    job_start(&e, &j, AX_HOOK_REQUEST, REQ("tokenize"), NULL, NULL);
    while (!j.done)
        uv_run(&e.loop, UV_RUN_ONCE);
    CHECK(cJSON_GetNumberValue(get(j.tree, "tok_n")) == 3);
    CHECK(cJSON_IsNull(get(j.tree, "tok_err")));
    CHECK(strcmp(m.last_path, "/tokenize") == 0);
    CHECK(strstr(m.last_body, "\"content\":\"hello world\"") != NULL);
    job_free(&j);

    job_start(&e, &j, AX_HOOK_REQUEST, REQ("complete"), NULL, NULL);
    while (!j.done)
        uv_run(&e.loop, UV_RUN_ONCE);
    CHECK(cJSON_IsString(get(j.tree, "completion")) &&
          strcmp(get(j.tree, "completion")->valuestring, "a summary") == 0);
    CHECK(strcmp(m.last_path, "/v1/chat/completions") == 0);
    CHECK(strstr(m.last_body, "\"stream\":false") != NULL);
    CHECK(strstr(m.last_body, "\"model\":\"test-model\"") != NULL);
    job_free(&j);

    /* cancelled while parked in ax.complete: the transfer is aborted, done never runs */
    job_start(&e, &j, AX_HOOK_REQUEST, "{\"act\":\"complete\",\"prompt\":\"hang\",\"messages\":[]}",
              NULL, NULL);
    {
        int before = m.n_req;
        while (m.n_req == before)
            uv_run(&e.loop, UV_RUN_ONCE);
    }
    ax_policy_req_cancel(j.pr);
    {
        int closed = m.n_closed;
        while (m.n_closed == closed)
            uv_run(&e.loop, UV_RUN_ONCE); /* the server sees the connection close */
    }
    CHECK(j.done == 0);
    job_free(&j);

    ax_upstream_close(up, on_up_closed, NULL);
    uv_close((uv_handle_t *)&m.srv, NULL);
    teardown(&e);
    CHECK(up_closed);
}

static const char *setting_source(struct env *e, const char *policy, const char *key, char *value,
                                  size_t n)
{
    static char src[64];
    cJSON *st = ax_policy_engine_status(e->eng), *p;
    src[0] = value[0] = 0;
    cJSON_ArrayForEach(p, get(st, "policies"))
    {
        const cJSON *k;
        if (strcmp(cJSON_GetStringValue(get(p, "name")), policy) != 0)
            continue;
        k = get(get(p, "settings"), key);
        snprintf(src, sizeof(src), "%s", cJSON_GetStringValue(get(k, "source")));
        if (cJSON_IsString(get(k, "value")))
            snprintf(value, n, "%s", get(k, "value")->valuestring);
    }
    cJSON_Delete(st);
    return src;
}

/* defaults < chain < ANTHROXY_POLICY_<NAME>_<KEY> < --policy-set, with sources */
static void test_settings(void)
{
    struct env e;
    struct job j;
    char v[64];

    setenv("ANTHROXY_POLICY_MARKER_TAG", "from-env", 1);
    CHECK(setup(&e, behave_chain, 0, 0) == 0);
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("settings"));
    CHECK(strcmp(cJSON_GetStringValue(get(j.tree, "generation_marker")), "from-env") == 0);
    CHECK(strcmp(cJSON_GetStringValue(get(j.tree, "greeting")), "hi") == 0); /* default */
    job_free(&j);
    CHECK(strcmp(setting_source(&e, "marker", "tag", v, sizeof(v)),
                 "env ANTHROXY_POLICY_MARKER_TAG") == 0);
    CHECK(strcmp(setting_source(&e, "behave", "greeting", v, sizeof(v)), "default") == 0);

    CHECK(ax_policy_engine_set_override(e.eng, "marker.tag", "from-flag") == 0);
    CHECK(ax_policy_engine_set_override(e.eng, "behave.greeting", "hello") == 0);
    CHECK(ax_policy_engine_set_override(e.eng, "nodot", "x") < 0);
    ax_policy_engine_reload(e.eng);
    run_one(&e, &j, AX_HOOK_REQUEST, REQ("settings"));
    CHECK(strcmp(cJSON_GetStringValue(get(j.tree, "generation_marker")), "from-flag") == 0);
    CHECK(strcmp(cJSON_GetStringValue(get(j.tree, "greeting")), "hello") == 0);
    job_free(&j);
    CHECK(strcmp(setting_source(&e, "marker", "tag", v, sizeof(v)), "flag --policy-set") == 0);
    CHECK(strcmp(v, "from-flag") == 0);
    unsetenv("ANTHROXY_POLICY_MARKER_TAG");
    teardown(&e);
}

/* Many requests at once, mixing sleeps, failures, budget kills and fail(), with cancels and
 * reloads while they are parked: every request not cancelled completes exactly once, none
 * that was cancelled completes, and the loop closes with nothing left on it. */
static void on_soak_timer(uv_timer_t *t);

struct soak {
    struct env *e;
    struct job *jobs;
    char *cancelled; /* per job: cancelled before it completed */
    int n, next_cancel, reloads;
    uv_timer_t timer;
};

static void on_soak_timer(uv_timer_t *t)
{
    struct soak *s = t->data;
    int i;
    /* cancel a few parked requests, reload now and then */
    for (i = 0; i < 5 && s->next_cancel < s->n; i++, s->next_cancel += 7)
        if (!s->jobs[s->next_cancel].done) {
            ax_policy_req_cancel(s->jobs[s->next_cancel].pr);
            s->cancelled[s->next_cancel] = 1;
        }
    if (s->reloads++ < 5)
        ax_policy_engine_reload(s->e->eng);
    else
        uv_timer_stop(t);
}

static void test_soak(void)
{
    static const char *acts[] = {"sleep", "settings", "error_half", "loop", "fail", "sleep"};
    struct env e;
    struct soak s;
    int i, cancelled = 0, completed = 0, bad = 0;
    char json[128];

    CHECK(setup(&e, behave_chain, 200000, 0) == 0);
    memset(&s, 0, sizeof(s));
    s.e = &e;
    s.n = 600;
    s.jobs = calloc((size_t)s.n, sizeof(*s.jobs));
    s.cancelled = calloc((size_t)s.n, 1);
    s.next_cancel = 3;
    for (i = 0; i < s.n; i++) {
        snprintf(json, sizeof(json), "{\"act\":\"%s\",\"sleep_ms\":%d,\"messages\":[]}",
                 acts[i % 6], 1 + (i * 7) % 20);
        job_start(&e, &s.jobs[i], AX_HOOK_REQUEST, json, NULL, NULL);
    }
    uv_timer_init(&e.loop, &s.timer);
    s.timer.data = &s;
    uv_timer_start(&s.timer, on_soak_timer, 2, 3);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    for (i = 0; i < s.n; i++) {
        struct job *j = &s.jobs[i];
        int is_cancelled = s.cancelled[i];
        if (j->done != (is_cancelled ? 0 : 1))
            bad++;
        if (is_cancelled)
            cancelled++;
        else
            completed++;
        if (j->done == 1 && strcmp(acts[i % 6], "fail") == 0 && j->rc >= 0)
            bad++;
        if (j->done == 1 && strcmp(acts[i % 6], "sleep") == 0 && !is_true(j->tree, "slept"))
            bad++;
        job_free(j);
    }
    CHECK(bad == 0);
    CHECK(cancelled > 0);
    CHECK(completed + cancelled == s.n);
    CHECK(status_num(&e, "requests_in_flight") == 0);
    CHECK(status_num(&e, "generations_alive") == 1);
    uv_close((uv_handle_t *)&s.timer, NULL);
    free(s.jobs);
    free(s.cancelled);
    teardown(&e);
}

/* Runs `anthroxy check argv...` with stdout captured into out; returns its exit status. */
static int run_check(int argc, char **argv, char *out, size_t n)
{
    char path[] = "/tmp/ax_test_check_XXXXXX";
    int fd = mkstemp(path), saved, rc;
    FILE *f;
    size_t got;

    fflush(stdout);
    saved = dup(1);
    dup2(fd, 1);
    rc = ax_policy_check_main(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    close(fd);
    f = fopen(path, "rb");
    got = f ? fread(out, 1, n - 1, f) : 0;
    out[got] = 0;
    if (f)
        fclose(f);
    unlink(path);
    return rc;
}

/* `anthroxy check`: each policy's changes (diff.lua) and the OpenAI request */
static void test_check(void)
{
    struct env e;
    static char out[65536];
    char req[400], *argv[3];

    CHECK(setup(&e, behave_chain, 0, 0) == 0); /* for its directory and chain file */
    ax_policy_engine_close(e.eng, NULL, NULL);
    e.eng = NULL;
    snprintf(req, sizeof(req), "%s/req.json", e.dir);
    write_file(req, "{\"act\":\"settings\",\"model\":\"m\",\"max_tokens\":10,"
                    "\"messages\":[{\"role\":\"user\",\"content\":\"hello\"},"
                    "{\"role\":\"assistant\",\"content\":\"hi\"},"
                    "{\"role\":\"user\",\"content\":\"more\"}]}");
    argv[0] = "check";
    argv[1] = e.chain;
    argv[2] = req;
    CHECK(run_check(3, argv, out, sizeof(out)) == 0);
    CHECK(strstr(out, "== behave on_request") != NULL);
    CHECK(strstr(out, "+ greeting: \"hi\"") != NULL);
    CHECK(strstr(out, "+ settings_readonly: true") != NULL);
    CHECK(strstr(out, "== marker on_request") != NULL);
    CHECK(strstr(out, "+ marked: true") != NULL);
    CHECK(strstr(out, "== OpenAI request") != NULL);
    CHECK(strstr(out, "\"content\":\t\"more\"") != NULL);

    /* a removed message shows as one removal, not as every later message changing */
    write_file(e.chain, "return { { 'cut.lua' } }\n");
    {
        char cut[400];
        snprintf(cut, sizeof(cut), "%s/cut.lua", e.dir);
        write_file(cut, "local ax = require 'anthroxy'\n"
                        "return { on_request = function(req) ax.remove(req.messages, 1)\n"
                        "  req.messages[1].content = 'HI' end }\n");
    }
    CHECK(run_check(3, argv, out, sizeof(out)) == 0);
    CHECK(strstr(out, "- messages.0: {\"content\":\"hello\",\"role\":\"user\"}") != NULL ||
          strstr(out, "- messages.0: {\"role\":\"user\",\"content\":\"hello\"}") != NULL);
    CHECK(strstr(out, "~ messages.0.content: \"hi\" -> \"HI\"") != NULL);
    CHECK(strstr(out, "messages.1") == NULL);
    if (strstr(out, "~ messages.0.content") == NULL)
        fprintf(stderr, "%s\n", out);

    /* ax.fail: the check says how the request fails, exit status 1 */
    write_file(e.chain, "return { { '" FIX "behave.lua' } }\n");
    write_file(req, REQ("fail"));
    CHECK(run_check(3, argv, out, sizeof(out)) == 1);
    teardown(&e);
}

static void test_bad_chain(void)
{
    struct env e;
    CHECK(setup(&e, "return { { 'nonexistent_policy' } }\n", 0, 0) < 0);
    CHECK(e.eng == NULL);
    teardown(&e);
    CHECK(setup(&e, "return { { '" FIX "syntax_error.lua' } }\n", 0, 0) < 0);
    teardown(&e);
    CHECK(setup(&e, "return { { 'x', } \n", 0, 0) < 0);
    teardown(&e);
    CHECK(setup(&e, "local M = {}\nreturn { { '" FIX "marker.lua' } }\n", 0, 0) == 0);
    teardown(&e);
}

/* Per-arm chains in one generation: each request runs its arm's policies only, with
 * ctx.arm; an unknown arm is refused; has_hook is per arm; ax.count lands in the arm. */
static void test_arms(void)
{
    struct env e;
    struct job j;
    struct ax_policy_req_info info;
    struct ax_policy_req *pr = NULL;
    struct ax_exp_stats *st = NULL;
    struct ax_policy_env pe;
    struct ax_error err = {0};
    char exp[400], arm_policy[400];
    cJSON *c;
    int i;

    CHECK(setup(&e, "return { { '" FIX "marker.lua', tag = 'plain' } }\n", 0, 0) == 0);
    ax_policy_engine_close(e.eng, NULL, NULL); /* again, with an experiment */
    uv_run(&e.loop, UV_RUN_DEFAULT);
    snprintf(arm_policy, sizeof(arm_policy), "%s/armtag.lua", e.dir);
    write_file(arm_policy, "local ax = require 'anthroxy'\n"
                           "return { name = 'armtag', on_request = function(req, ctx)\n"
                           "  req.arm_seen = ctx.arm; ax.count('seen', 2) end,\n"
                           "  on_upstream_request = function(o, ctx) o.up = ctx.arm end }\n");
    snprintf(exp, sizeof(exp), "%s/exp.lua", e.dir);
    write_file(exp,
               "return { name = 'arms', arms = {\n"
               "  { name = 'a', chain = 'chain.lua' },\n"
               "  { name = 'b', chain = { { 'armtag' }, { '" FIX "marker.lua', tag = 'b' } } },"
               "\n} }\n");
    free(e.cfg.experiment_path);
    e.cfg.experiment_path = strdup(exp);
    CHECK(ax_exp_stats_new(&st) == 0);
    memset(&pe, 0, sizeof(pe));
    pe.loop = &e.loop;
    pe.cfg = &e.cfg;
    pe.stats = st;
    CHECK(ax_policy_engine_new(&pe, &e.eng, &err) == 0);
    CHECKF(e.eng != NULL, "%s", err.message);
    if (e.eng == NULL)
        goto done;
    CHECK(ax_policy_engine_experiment(e.eng) != NULL);
    CHECK(ax_policy_engine_has_arm(e.eng, "a") && ax_policy_engine_has_arm(e.eng, "b"));
    CHECK(!ax_policy_engine_has_arm(e.eng, "default"));
    for (i = 0; i < 2; i++) {
        const char *arm = i == 0 ? "a" : "b";
        memset(&j, 0, sizeof(j));
        memset(&info, 0, sizeof(info));
        info.request_id = "req_arm";
        info.session_id = "s";
        info.client_model = "m";
        info.user_agent = "";
        info.arm = arm;
        j.tree = cJSON_Parse(REQ("none"));
        CHECK(ax_policy_req_new(e.eng, &info, &j.pr) == 0);
        CHECK(ax_policy_req_has_hook(j.pr, AX_HOOK_UPSTREAM_REQUEST) == (i == 1));
        CHECK(ax_policy_req_run(j.pr, AX_HOOK_REQUEST, j.tree, NULL, on_done, &j) == 0);
        uv_run(&e.loop, UV_RUN_DEFAULT);
        CHECK(j.done == 1 && j.rc == 0);
        CHECK_STR(cJSON_GetStringValue(get(j.tree, "generation_marker")),
                  arm[0] == 'a' ? "plain" : "b");
        if (i == 0)
            CHECK(get(j.tree, "arm_seen") == NULL); /* b's policy did not run in a */
        else
            CHECK_STR(cJSON_GetStringValue(get(j.tree, "arm_seen")), "b");
        job_free(&j);
    }
    memset(&info, 0, sizeof(info));
    info.request_id = info.session_id = info.client_model = info.user_agent = "x";
    info.arm = "nope";
    CHECK(ax_policy_req_new(e.eng, &info, &pr) == AX_EINVAL && pr == NULL);
    c = ax_exp_stats_counters_json(st);
    CHECK(cJSON_GetNumberValue(get(get(get(c, "b"), "armtag"), "seen")) == 2);
    CHECK(get(c, "a") == NULL);
    cJSON_Delete(c);
    /* a broken arm keeps the whole generation in force */
    write_file(exp, "return { name = 'arms', arms = { { name = 'a', chain = 'missing' } } }\n");
    ax_policy_engine_reload(e.eng);
    CHECK(ax_policy_engine_has_arm(e.eng, "b"));
    c = ax_policy_engine_status(e.eng);
    CHECK(strstr(cJSON_GetStringValue(get(c, "last_error")),
                 "arms[1].chain: no chain file 'missing'"));
    cJSON_Delete(c);
done:
    teardown(&e);
    ax_exp_stats_free(st);
}

int main(void)
{
    ax_log_set_level(AX_LOG_LVL_ERROR);
    test_arms();
    test_sleep_concurrency();
    test_failures_discarded();
    test_fail_closed_and_ax_fail();
    test_sandbox();
    test_sandbox_holds();
    test_hooks();
    test_session();
    test_reload();
    test_cancel();
    test_upstream_calls();
    test_settings();
    test_check();
    test_soak();
    test_bad_chain();
    return AX_TEST_DONE("test_policy");
}
