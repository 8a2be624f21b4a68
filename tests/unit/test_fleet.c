/* test_fleet.c - core/fleet.c without servers: the fleet declaration parsed from flags,
 * rendezvous affinity (stable; adding or removing a replica moves only its share), routing
 * by model map, declared patterns and names, health backoff after live failures, the retry
 * budget, round-robin. No member is probed, so every one counts as healthy until reported. */
#include "ax_test.h"

#include "anthroxy_config.h"
#include "anthroxy_fleet.h"

#include <uv.h>

#define N_SESSIONS 2000

static void fleet_cfg(struct ax_config *cfg, const char *const *ups, size_t n, const char *extra[])
{
    struct ax_error err = {0};
    char *argv[32];
    int argc = 0;
    size_t i;

    ax_config_init(cfg);
    argv[argc++] = "anthroxy";
    for (i = 0; i < n; i++) {
        argv[argc++] = "--upstream";
        argv[argc++] = (char *)ups[i];
    }
    for (i = 0; extra && extra[i]; i++)
        argv[argc++] = (char *)extra[i];
    CHECKF(ax_config_parse_args(cfg, argc, argv, NULL, &err) == 0, "%s", err.message);
    CHECKF(ax_config_validate(cfg, &err) == 0, "%s", err.message);
}

static struct ax_fleet *fleet_new(uv_loop_t *loop, const struct ax_config *cfg)
{
    struct ax_fleet *f = NULL;
    struct ax_error err = {0};

    CHECKF(ax_fleet_new(loop, cfg, &f, &err) == 0, "%s", err.message);
    return f;
}

static void fleet_free(uv_loop_t *loop, struct ax_fleet *f, struct ax_config *cfg)
{
    ax_fleet_close(f, NULL, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    ax_config_free(cfg);
}

/* The member each session key lands on (its name's first letter). */
static void place(struct ax_fleet *f, const char *model, char *out)
{
    char key[32];
    int i;

    for (i = 0; i < N_SESSIONS; i++) {
        struct ax_route r;
        struct ax_route_req rq;
        struct ax_error err = {0};
        memset(&r, 0, sizeof(r));
        memset(&rq, 0, sizeof(rq));
        snprintf(key, sizeof(key), "session-%d", i);
        rq.client_model = model;
        rq.session_key = key;
        CHECK(ax_fleet_route(f, &rq, &r, &err) == 0);
        out[i] = ax_fleet_name(f, r.idx)[0];
    }
}

static void test_rendezvous(uv_loop_t *loop)
{
    static const char *const three[] = {"a=http://127.0.0.1:1/v1", "b=http://127.0.0.1:2/v1",
                                        "c=http://127.0.0.1:3/v1"};
    static const char *const four[] = {"a=http://127.0.0.1:1/v1", "b=http://127.0.0.1:2/v1",
                                       "c=http://127.0.0.1:3/v1", "d=http://127.0.0.1:4/v1"};
    static const char *const two[] = {"a=http://127.0.0.1:1/v1", "c=http://127.0.0.1:3/v1"};
    static char p3[N_SESSIONS], p3again[N_SESSIONS], p4[N_SESSIONS], p2[N_SESSIONS];
    struct ax_config cfg;
    struct ax_fleet *f;
    int i, count[4] = {0}, moved = 0, to_d = 0;

    fleet_cfg(&cfg, three, 3, NULL);
    CHECK(cfg.n_upstreams == 3);
    CHECK_STR(cfg.upstream_base, "http://127.0.0.1:1/v1"); /* the first is the default */
    f = fleet_new(loop, &cfg);
    place(f, "m", p3);
    place(f, "m", p3again);
    CHECK(memcmp(p3, p3again, sizeof(p3)) == 0); /* stable */
    for (i = 0; i < N_SESSIONS; i++)
        count[p3[i] - 'a']++;
    for (i = 0; i < 3; i++) /* spread: each near a third */
        CHECKF(count[i] > N_SESSIONS / 3 - 150 && count[i] < N_SESSIONS / 3 + 150, "%c: %d",
               'a' + i, count[i]);
    fleet_free(loop, f, &cfg);

    /* adding d moves only sessions onto d, about a quarter */
    fleet_cfg(&cfg, four, 4, NULL);
    f = fleet_new(loop, &cfg);
    place(f, "m", p4);
    for (i = 0; i < N_SESSIONS; i++) {
        if (p4[i] != p3[i]) {
            moved++;
            to_d += p4[i] == 'd';
        }
    }
    CHECKF(moved == to_d, "%d moved, %d of them to d", moved, to_d);
    CHECKF(moved > N_SESSIONS / 4 - 150 && moved < N_SESSIONS / 4 + 150, "%d moved", moved);
    fleet_free(loop, f, &cfg);

    /* removing b moves only b's sessions */
    fleet_cfg(&cfg, two, 2, NULL);
    f = fleet_new(loop, &cfg);
    place(f, "m", p2);
    for (i = 0; i < N_SESSIONS; i++)
        if (p3[i] != 'b')
            CHECKF(p2[i] == p3[i], "session %d moved from %c to %c", i, p3[i], p2[i]);
    fleet_free(loop, f, &cfg);
}

static struct ax_route route(struct ax_fleet *f, const char *model, const char *key, int *rc)
{
    struct ax_route r;
    struct ax_route_req rq;
    struct ax_error err = {0};

    memset(&r, 0, sizeof(r));
    memset(&rq, 0, sizeof(rq));
    rq.client_model = model;
    rq.session_key = key;
    *rc = ax_fleet_route(f, &rq, &r, &err);
    return r;
}

static void test_models(uv_loop_t *loop)
{
    static const char *const ups[] = {"big=http://127.0.0.1:1/v1,models=qwen3-coder,max=8",
                                      "big2=http://127.0.0.1:2/v1,models=qwen3-coder",
                                      "small=http://127.0.0.1:3/v1,models=qwen3-4b|phi-*"};
    const char *extra[] = {"--model-map", "claude-3-5-haiku*=qwen3-4b", "--model-map",
                           "claude-opus*=special@big2", NULL};
    struct ax_config cfg;
    struct ax_fleet *f;
    struct ax_route r;
    int rc;

    fleet_cfg(&cfg, ups, 3, extra);
    CHECK(cfg.upstreams[0].max == 8);
    CHECK_STR(cfg.upstreams[2].models, "qwen3-4b|phi-*");
    f = fleet_new(loop, &cfg);
    r = route(f, "claude-3-5-haiku-2024", "s1", &rc);
    CHECK(rc == 0);
    CHECK_STR(ax_fleet_name(f, r.idx), "small");
    CHECK_STR(r.upstream_model, "qwen3-4b");
    r = route(f, "phi-4", "s1", &rc); /* a declared pattern, the client's name passed */
    CHECK_STR(ax_fleet_name(f, r.idx), "small");
    CHECK_STR(r.upstream_model, "phi-4");
    r = route(f, "claude-opus-4", "s1", &rc);
    CHECK_STR(ax_fleet_name(f, r.idx), "big2");
    CHECK_STR(r.upstream_model, "special");
    /* unmapped, unserved: the replicas of the first upstream's default model */
    r = route(f, "claude-sonnet-4-5", "s1", &rc);
    CHECK(r.idx == 0 || r.idx == 1);
    CHECK_STR(r.upstream_model, "qwen3-coder");
    /* a failover excludes what was tried, then runs out */
    {
        struct ax_route_req rq;
        struct ax_error err = {0};
        size_t first = r.idx;
        memset(&rq, 0, sizeof(rq));
        rq.client_model = "claude-sonnet-4-5";
        rq.session_key = "s1";
        CHECK(ax_fleet_route(f, &rq, &r, &err) == 0);
        CHECK(r.idx != first && r.idx <= 1);
        CHECK(ax_fleet_route(f, &rq, &r, &err) == AX_ENOTFOUND);
    }
    /* names (as on_route gives them) win over the model; unknown ones are an error */
    {
        const char *names[] = {"nope", "small", NULL}, *bad[] = {"nope", NULL};
        struct ax_route_req rq;
        struct ax_error err = {0};
        memset(&r, 0, sizeof(r));
        memset(&rq, 0, sizeof(rq));
        rq.client_model = "claude-sonnet-4-5";
        rq.names = names;
        CHECK(ax_fleet_route(f, &rq, &r, &err) == 0);
        CHECK_STR(ax_fleet_name(f, r.idx), "small");
        CHECK_STR(r.upstream_model, "qwen3-4b"); /* its own default model */
        memset(&r, 0, sizeof(r));
        rq.names = bad;
        CHECK(ax_fleet_route(f, &rq, &r, &err) == AX_EINVAL);
        CHECK(err.status == 500 && strstr(err.message, "nope") != NULL);
    }
    fleet_free(loop, f, &cfg);
}

static void test_health_and_budget(uv_loop_t *loop)
{
    static const char *const ups[] = {"a=http://127.0.0.1:1/v1", "b=http://127.0.0.1:2/v1"};
    const char *extra[] = {"--retry-budget", "0.1", "--retry-min", "0", NULL};
    struct ax_config cfg;
    struct ax_fleet *f;
    struct ax_route r;
    size_t home;
    int rc, i, allowed = 0, healthy = -1;
    cJSON *h;

    fleet_cfg(&cfg, ups, 2, extra);
    f = fleet_new(loop, &cfg);
    r = route(f, "m", "sticky", &rc);
    home = r.idx;
    /* a live failure puts the session's replica out: it moves, then comes back */
    ax_fleet_report(f, home, 0, uv_now(loop));
    r = route(f, "m", "sticky", &rc);
    CHECK(r.idx != home);
    h = ax_fleet_health(f, uv_now(loop), &healthy);
    CHECK(healthy == 1);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(
                  cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(h, "upstreams"), (int)home),
                  "state")
                  ->valuestring,
              "down");
    cJSON_Delete(h);
    ax_fleet_report(f, home, 1, uv_now(loop));
    r = route(f, "m", "sticky", &rc);
    CHECK(r.idx == home);
    /* both out: one is still tried */
    ax_fleet_report(f, 0, 0, uv_now(loop));
    ax_fleet_report(f, 1, 0, uv_now(loop));
    r = route(f, "m", "sticky", &rc);
    CHECK(rc == 0);
    /* the budget: 0.1 per routed request (about 4 routed so far) */
    for (i = 0; i < 30; i++)
        route(f, "m", "x", &rc);
    while (ax_fleet_retry_take(f, uv_now(loop)))
        allowed++;
    CHECKF(allowed == 3, "%d failovers allowed after 34 requests", allowed);
    route(f, "m", "x", &rc); /* 0.1 more: not a whole failover yet */
    CHECK(ax_fleet_retry_take(f, uv_now(loop)) == 0);
    fleet_free(loop, f, &cfg);
}

static void test_round_robin_and_one(uv_loop_t *loop)
{
    static const char *const ups[] = {"a=http://127.0.0.1:1/v1", "b=http://127.0.0.1:2/v1"};
    const char *extra[] = {"--route-balance", "round-robin", NULL};
    struct ax_config cfg;
    struct ax_fleet *f;
    struct ax_route r;
    size_t prev;
    int rc, i;

    fleet_cfg(&cfg, ups, 2, extra);
    f = fleet_new(loop, &cfg);
    prev = route(f, "m", "same", &rc).idx;
    for (i = 0; i < 5; i++) {
        r = route(f, "m", "same", &rc);
        CHECK(r.idx != prev);
        prev = r.idx;
    }
    fleet_free(loop, f, &cfg);

    /* no session: idle replicas share the requests by request id */
    fleet_cfg(&cfg, ups, 2, NULL);
    f = fleet_new(loop, &cfg);
    {
        int seen[2] = {0};
        char id[32];
        for (i = 0; i < 200; i++) {
            struct ax_route_req rq;
            struct ax_error err = {0};
            memset(&r, 0, sizeof(r));
            memset(&rq, 0, sizeof(rq));
            snprintf(id, sizeof(id), "req_%d", i);
            rq.client_model = "m";
            rq.session_key = "default";
            rq.request_id = id;
            CHECK(ax_fleet_route(f, &rq, &r, &err) == 0);
            CHECK_STR(r.why, "least-loaded");
            seen[r.idx]++;
        }
        CHECKF(seen[0] > 60 && seen[1] > 60, "%d / %d", seen[0], seen[1]);
    }
    fleet_free(loop, f, &cfg);

    /* the fleet of one: a plain URL, "default", the client's name until probed */
    fleet_cfg(&cfg, (const char *const[]){"http://127.0.0.1:9/v1"}, 1, NULL);
    CHECK(cfg.n_upstreams == 0);
    f = fleet_new(loop, &cfg);
    CHECK(ax_fleet_count(f) == 1);
    CHECK_STR(ax_fleet_name(f, 0), "default");
    r = route(f, "claude-x", "s", &rc);
    CHECK(rc == 0 && r.idx == 0);
    CHECK_STR(r.upstream_model, "claude-x");
    fleet_free(loop, f, &cfg);

    /* a plain URL from a higher source replaces named ones; ';' separates in the env */
    {
        struct ax_error err = {0};
        ax_config_init(&cfg);
        CHECK(ax_config_set(&cfg, "upstream", "a=http://h:1/v1,kind=vllm; b=http://h:2/v1", &err) ==
              0);
        CHECK(cfg.n_upstreams == 2);
        CHECK_STR(cfg.upstreams[0].kind, "vllm");
        CHECK_STR(cfg.upstreams[1].name, "b");
        {
            char *argv[] = {"anthroxy", "--upstream", "http://solo:8080/v1"};
            CHECK(ax_config_parse_args(&cfg, 3, argv, NULL, &err) == 0);
        }
        CHECK(cfg.n_upstreams == 0);
        CHECK_STR(cfg.upstream_base, "http://solo:8080/v1");
        CHECK(ax_config_set(&cfg, "upstream", "a=http://h:1/v1,max=0", &err) == AX_EINVAL);
        CHECK(strstr(err.message, "max") != NULL);
        ax_config_free(&cfg);
    }
}

int main(void)
{
    uv_loop_t loop;

    uv_loop_init(&loop);
    test_rendezvous(&loop);
    test_models(&loop);
    test_health_and_budget(&loop);
    test_round_robin_and_one(&loop);
    CHECK(uv_loop_close(&loop) == 0);
    return AX_TEST_DONE("test_fleet");
}
