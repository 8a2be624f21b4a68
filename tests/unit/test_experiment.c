/* test_experiment.c - experiment.c: the experiment file (arms, chain files and inline chains,
 * every way a file can be wrong), sticky assignment by weight, the per-arm figures. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anthroxy_error.h"
#include "anthroxy_experiment.h"
#include "ax_test.h"

#ifndef AX_SOURCE_DIR
#define AX_SOURCE_DIR "."
#endif
#define POLICY_DIR AX_SOURCE_DIR "/policies"

static char tmpdir[256];

static const char *write_tmp(const char *name, const char *text)
{
    static char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_load_ok(void)
{
    struct ax_experiment *exp = NULL;
    char err[1024] = "";
    const char *path;
    const cJSON *e;
    cJSON *j;
    char *text;

    write_tmp("local.lua", "return { { \"max_tokens\", floor = 1 } }\n");
    path = write_tmp("exp.lua", "local keep = 2 + 3\n"
                                "return { name = \"mvp\", arms = {\n"
                                "  { name = \"prune\", weight = 1, chain = \"default.lua\" },\n"
                                "  { name = \"local\", weight = 2.5, chain = \"local\" },\n"
                                "  { name = \"masking\", chain = { {\"max_tokens\", floor = 16384, "
                                "deep = { a = {1, 2}, b = true } }, \"prune\" } } } }\n");
    CHECKF(ax_experiment_load(path, POLICY_DIR, &exp, err, sizeof(err)) == 0, "%s", err);
    if (exp == NULL)
        return;
    CHECK_STR(exp->name, "mvp");
    CHECK_INT(exp->n_arms, 3);
    CHECK(fabs(exp->total_weight - 4.5) < 1e-9);
    CHECK_STR(exp->arms[0].name, "prune");
    CHECK_STR(exp->arms[0].chain_path, POLICY_DIR "/default.lua"); /* not beside exp.lua */
    CHECK(strstr(exp->arms[1].chain_path, tmpdir) == exp->arms[1].chain_path); /* beside it */
    CHECK(exp->arms[2].weight == 1.0);                                         /* default */
    CHECK(exp->arms[2].chain_path == NULL && cJSON_GetArraySize(exp->arms[2].chain) == 2);
    e = cJSON_GetArrayItem(exp->arms[2].chain, 0);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "policy")),
              POLICY_DIR "/max_tokens.lua");
    text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(e, "settings"));
    CHECK(strstr(text, "\"floor\":16384") && strstr(text, "\"a\":[1,2]") &&
          strstr(text, "\"b\":true"));
    CHECK(strstr(text, "max_tokens") == NULL); /* the name is not a setting */
    cJSON_free(text);
    CHECK(ax_experiment_find(exp, "local") == &exp->arms[1]);
    CHECK(ax_experiment_find(exp, "nope") == NULL);
    ax_experiment_arm_names(exp, err, sizeof(err));
    CHECK_STR(err, "prune, local, masking");
    j = ax_experiment_to_json(exp);
    text = cJSON_PrintUnformatted(j);
    CHECK(strstr(text, "\"name\":\"mvp\"") && strstr(text, "\"weight\":2.5"));
    cJSON_free(text);
    cJSON_Delete(j);
    ax_experiment_free(exp);
}

struct bad_case {
    const char *text, *expect;
};

static void test_load_errors(void)
{
    static const struct bad_case cases[] = {
        {"return {", "expected"},
        {"return 3", "an experiment returns"},
        {"return { arms = { { name = \"a\", chain = \"default\" } } }", "name: expected"},
        {"return { name = \"x\" }", "arms: expected a non-empty list"},
        {"return { name = \"x\", arms = {} }", "arms: expected a non-empty list"},
        {"return { name = \"x\", arms = { { name = \"a b\", chain = \"default\" } } }",
         "arms[1].name"},
        {"return { name = \"x\", arms = { { name = \"a\", chain = \"default\" }, { name = \"a\", "
         "chain = \"default\" } } }",
         "'a' is already arms[1]'s"},
        {"return { name = \"x\", arms = { { name = \"a\", weight = -1, chain = \"default\" } } }",
         "arms[1].weight: expected a number >= 0"},
        {"return { name = \"x\", arms = { { name = \"a\", weight = \"heavy\", chain = "
         "\"default\" } } }",
         "arms[1].weight"},
        {"return { name = \"x\", arms = { { name = \"a\", weight = 0, chain = \"default\" } } }",
         "weights add up to 0"},
        {"return { name = \"x\", arms = { { name = \"a\", chain = \"no_such_chain\" } } }",
         "arms[1].chain: no chain file 'no_such_chain'"},
        {"return { name = \"x\", arms = { { name = \"a\" } } }", "arms[1].chain: expected"},
        {"return { name = \"x\", arms = { { name = \"a\", chain = { { \"no_such_policy\" } } } } }",
         "arms[1].chain[1]: no policy 'no_such_policy'"},
        {"return { name = \"x\", arms = { { name = \"a\", chain = { { keep = 5 } } } } }",
         "arms[1].chain[1]: expected"},
        {"return { name = \"x\", arms = { { name = \"a\", chain = { { \"prune\", f = function() "
         "end } } } "
         "} }",
         "not data"},
        {"while true do end", "instruction budget"},
        {"local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 100) .. i end", "memory"},
        {"return io.open('/etc/passwd')", "io"},
        {"return { name = \"x\", arms = { \"a\" } }", "arms[1]: expected"},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ax_experiment *exp = (struct ax_experiment *)1;
        char err[1024] = "";
        const char *path = write_tmp("bad.lua", cases[i].text);
        int rc = ax_experiment_load(path, POLICY_DIR, &exp, err, sizeof(err));
        CHECKF(rc < 0 && exp == NULL, "case %zu loaded", i);
        CHECKF(strstr(err, cases[i].expect) != NULL, "case %zu: '%s' lacks '%s'", i, err,
               cases[i].expect);
        CHECKF(strstr(err, "bad.lua") != NULL, "case %zu: '%s' does not name the file", i, err);
    }
    {
        struct ax_experiment *exp = NULL;
        char err[256];
        CHECK(ax_experiment_load("/nonexistent/x.lua", POLICY_DIR, &exp, err, sizeof(err)) ==
              AX_EIO);
        CHECK(strstr(err, "/nonexistent/x.lua") != NULL);
    }
}

static void test_assign(void)
{
    struct ax_experiment *exp = NULL, *exp2 = NULL;
    char err[1024], key[64];
    int counts[3] = {0, 0, 0}, i, same = 0;
    const char *path =
        write_tmp("split.lua", "return { name = \"split\", arms = {\n"
                               "  { name = \"a\", weight = 1, chain = \"default\" },\n"
                               "  { name = \"b\", weight = 3, chain = \"default\" },\n"
                               "  { name = \"off\", weight = 0, chain = \"default\" } } }\n");

    CHECKF(ax_experiment_load(path, POLICY_DIR, &exp, err, sizeof(err)) == 0, "%s", err);
    CHECKF(ax_experiment_load(path, POLICY_DIR, &exp2, err, sizeof(err)) == 0, "%s", err);
    if (exp == NULL || exp2 == NULL)
        return;
    for (i = 0; i < 20000; i++) {
        const struct ax_exp_arm *a;
        snprintf(key, sizeof(key), "session-%d", i);
        a = ax_experiment_assign(exp, key);
        counts[a - exp->arms]++;
        /* another load (another process, another machine): the same arm */
        same += strcmp(ax_experiment_assign(exp2, key)->name, a->name) == 0;
    }
    CHECK_INT(same, 20000);
    CHECK_INT(counts[2], 0); /* weight 0: only through the header */
    CHECKF(fabs(counts[0] / 20000.0 - 0.25) < 0.02, "a got %d of 20000", counts[0]);
    /* a known key's arm is part of the contract (same on every machine, every release) */
    CHECK_STR(ax_experiment_assign(exp, "fixed-key")->name,
              ax_experiment_assign(exp2, "fixed-key")->name);
    free(exp2->name); /* another experiment name reshuffles */
    exp2->name = strdup("split-2");
    for (i = 0, same = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "session-%d", i);
        same += ax_experiment_assign(exp, key) - exp->arms ==
                ax_experiment_assign(exp2, key) - exp2->arms;
    }
    CHECKF(same < 900, "%d of 1000 kept their arm under another experiment name", same);
    ax_experiment_free(exp);
    ax_experiment_free(exp2);
}

static double num(const cJSON *o, const char *path)
{
    char buf[128], *save = NULL, *part;
    const cJSON *cur = o;

    snprintf(buf, sizeof(buf), "%s", path);
    for (part = strtok_r(buf, ".", &save); part && cur; part = strtok_r(NULL, ".", &save))
        cur = cJSON_GetObjectItemCaseSensitive(cur, part);
    return cJSON_IsNumber(cur) ? cur->valuedouble : NAN;
}

static void test_stats(void)
{
    struct ax_exp_stats *st = NULL;
    struct ax_experiment *exp = NULL;
    struct ax_exp_turn t;
    char err[1024], name[80];
    double total = 0;
    const cJSON *arm;
    cJSON *j;
    int i;
    const char *path = write_tmp("st.lua", "return { name = \"st\", arms = {\n"
                                           "  { name = \"a\", chain = \"default\" },\n"
                                           "  { name = \"b\", chain = \"default\" } } }\n");

    CHECK(ax_exp_stats_new(&st) == 0);
    CHECKF(ax_experiment_load(path, POLICY_DIR, &exp, err, sizeof(err)) == 0, "%s", err);
    ax_exp_stats_set_experiment(st, exp);
    ax_exp_stats_session(st, "a");
    for (i = 1; i <= 100; i++) {
        memset(&t, 0, sizeof(t));
        t.arm = "a";
        t.status = i == 100 ? 400 : 200;
        t.client_tokens = 1000;
        t.sent_estimate = 600;
        t.have_usage = i != 100;
        t.prompt_tokens = 500;
        t.cached_tokens = 400;
        t.output_tokens = 10;
        t.overflows = i == 100;
        t.prompt_too_long = i == 100;
        t.tool_calls = 2;
        t.tool_errors = i % 10 == 0;
        t.ttft_ms = i;
        t.total_ms = 10.0 * i;
        ax_exp_stats_record(st, &t);
    }
    CHECK(ax_exp_stats_count(st, "a", "prune", "moves", 2, &total) == 0 && total == 2);
    CHECK(ax_exp_stats_count(st, "a", "prune", "moves", 1.5, &total) == 0 && total == 3.5);
    CHECK(ax_exp_stats_count(st, "b", "prune", "moves", 1, &total) == 0 && total == 1);
    CHECK(ax_exp_stats_count(st, "a", "prune", "", 1, &total) == AX_EINVAL);
    CHECK(ax_exp_stats_count(st, "a", "prune", "x", NAN, &total) == AX_EINVAL);
    for (i = 0; i < AX_EXP_COUNTERS_MAX - 1; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        CHECK(ax_exp_stats_count(st, "b", "p", name, 1, &total) == 0);
    }
    CHECK(ax_exp_stats_count(st, "b", "p", "one-too-many", 1, &total) == AX_ETOOBIG);
    j = ax_exp_stats_to_json(st, exp);
    arm = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "arms"), 0);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(arm, "name")), "a");
    CHECK(num(arm, "requests") == 100 && num(arm, "sessions") == 1 && num(arm, "errors") == 1);
    CHECK(num(arm, "turns_per_session") == 100);
    CHECK(num(arm, "tokens.client_estimate") == 100000);
    CHECK(num(arm, "tokens.removed_by_policies") == 40000);
    CHECK(num(arm, "tokens.upstream_prompt") == 99 * 500);
    CHECK(fabs(num(arm, "cache_reuse") - 0.8) < 1e-9);
    CHECK(num(arm, "overflows") == 1 && num(arm, "prompt_too_long") == 1);
    CHECK(num(arm, "tool_calls") == 200 && num(arm, "tool_errors") == 10);
    CHECK(num(arm, "ttft_ms.p50") == 50 && num(arm, "ttft_ms.p95") == 95);
    CHECK(num(arm, "total_ms.p95") == 950);
    CHECK(num(arm, "counters.prune.moves") == 3.5);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                  cJSON_GetObjectItemCaseSensitive(j, "experiment"), "name")),
              "st");
    cJSON_Delete(j);

    /* a reload without arm b: b stays listed, inactive; another experiment starts afresh */
    exp->n_arms = 1;
    ax_exp_stats_set_experiment(st, exp);
    exp->n_arms = 2;
    j = ax_exp_stats_to_json(st, exp);
    arm = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "arms"), 1);
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(arm, "active")));
    CHECK(num(arm, "counters.prune.moves") == 1);
    cJSON_Delete(j);
    ax_exp_stats_set_experiment(st, NULL);
    j = ax_exp_stats_to_json(st, NULL);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "experiment")));
    CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "arms")), 1);
    arm = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "arms"), 0);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(arm, "name")), "default");
    CHECK(num(arm, "requests") == 0);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(arm, "tokens"), "client_estimate"))); /* not measured */
    cJSON_Delete(j);
    ax_experiment_free(exp);
    ax_exp_stats_free(st);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ax_test_experiment.XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    test_load_ok();
    test_load_errors();
    test_assign();
    test_stats();
    {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return AX_TEST_DONE("test_experiment");
}
