/* test_config.c - config.c: defaults, precedence with sources, the seed's environment,
 * value syntax, errors naming key and value, --help, redaction, model map. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anthroxy_config.h"
#include "anthroxy_log.h"
#include "ax_test.h"

extern char **environ;

#define SRC(cfg, name) ax_config_source_name(ax_config_source_of((cfg), (name)))

/* Removes every variable config.c reads, so the caller's environment cannot leak in. */
static void clear_env(void)
{
    char name[128];
    int again = 1;

    while (again) {
        char **e;
        again = 0;
        for (e = environ; *e != NULL; e++) {
            const char *eq = strchr(*e, '=');
            size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
            if (n < sizeof(name) &&
                (strncmp(*e, "ANTHROXY_", 9) == 0 || strncmp(*e, "PROXY_", 6) == 0 ||
                 strncmp(*e, "LLAMA_CPP_BASE", 14) == 0)) {
                memcpy(name, *e, n);
                name[n] = '\0';
                unsetenv(name);
                again = 1; /* environ changed under us: rescan */
                break;
            }
        }
    }
}

static char *write_temp(const char *text)
{
    static char paths[8][64];
    static int next;
    char *p = paths[next++ % 8];
    FILE *f;
    int fd;

    snprintf(p, 64, "/tmp/ax_test_config_XXXXXX");
    fd = mkstemp(p);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        perror("mkstemp");
        exit(2);
    }
    fputs(text, f);
    fclose(f);
    return p;
}

static int args(struct ax_config *cfg, struct ax_error *err, int *help, const char *a1,
                const char *a2, const char *a3, const char *a4)
{
    char *argv[6] = {"anthroxy", (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    int argc = 1;

    while (argc < 5 && argv[argc] != NULL)
        argc++;
    memset(err, 0, sizeof(*err));
    return ax_config_parse_args(cfg, argc, argv, help, err);
}

static void test_defaults(void)
{
    struct ax_config c;

    ax_config_init(&c);
    CHECK_STR(c.host, "127.0.0.1");
    CHECK(c.port == 4000);
    CHECK(c.n_api_keys == 0);
    CHECK_STR(c.upstream_base, "http://127.0.0.1:8080/v1");
    CHECK(c.upstream_model == NULL);
    CHECK(c.max_upstream == 20);
    CHECK(c.upstream_queue_max == 1024);
    CHECK(c.connect_timeout_ms == 10000);
    CHECK(c.read_timeout_ms == 600000);
    CHECK(c.total_timeout_ms == 0);
    CHECK(c.connect_retries == 2);
    CHECK(c.retry_delay_ms == 500);
    CHECK(c.context_window == 0);
    CHECK(fabs(c.prune_threshold - 0.75) < 1e-12);
    CHECK(c.max_body_bytes == 32u * 1024 * 1024);
    CHECK(c.max_header_bytes == 64u * 1024);
    CHECK(c.max_response_bytes == 64u * 1024 * 1024);
    CHECK(c.write_high_water == 64u * 1024);
    CHECK(c.write_low_water == 16u * 1024);
    CHECK(c.client_stall_timeout_ms == 60000);
    CHECK(c.keepalive_timeout_ms == 75000);
    CHECK(c.shutdown_grace_ms == 10000);
    CHECK(c.ping_interval_ms == 10000);
    CHECK(c.first_byte_hold_ms == 2000);
    CHECK(c.reasoning_fallback == 0);
    CHECK(c.forward_user_id == 0); /* Claude Code's device and account ids stay here */
    CHECK(c.policies_path == NULL && c.lua_dir == NULL);
    CHECK(c.lua_mem_max == 256u * 1024 * 1024);
    CHECK(c.lua_req_mem_max == 16u * 1024 * 1024);
    CHECK(c.lua_instr_budget == 10000000);
    CHECK(c.policy_fail_closed == 0);
    CHECK(c.max_sessions == 1024);
    CHECK(c.session_ttl_ms == 6ull * 3600 * 1000);
    CHECK(c.log_level == AX_LOG_LVL_INFO);
    CHECK_STR(SRC(&c, "port"), "default");
    CHECK_STR(SRC(&c, "log-level"), "default");
    CHECK(ax_config_source_of(&c, "no-such-key") == -1);
    ax_config_free(&c);
}

/* default < file < env < flag, each value with its source; ANTHROXY_* beats the seed name. */
static void test_precedence(void)
{
    struct ax_config c;
    struct ax_error err = {0};
    const char *file = write_temp("# a comment\n"
                                  "\n"
                                  "port = 5000\n"
                                  "max-upstream = 5\n"
                                  "read_timeout = 30\n"
                                  "  context-window=1000  \n"
                                  "upstream-model = \"qwen3 coder\"\n"
                                  "host = 127.0.0.2\n");
    char *argv[] = {"anthroxy", "--config", (char *)file, "--port", "7000", NULL};
    int help = -1;

    clear_env();
    setenv("PROXY_PORT", "6000", 1);
    setenv("PROXY_MAX_CONNECTIONS", "7", 1);
    setenv("PROXY_READ_TIMEOUT", "50", 1);
    setenv("ANTHROXY_READ_TIMEOUT", "40", 1);
    setenv("PROXY_HOST", "", 1); /* empty: unset */
    ax_config_init(&c);
    CHECK(ax_config_load(&c, 5, argv, &help, &err) == 0);
    if (err.status != 0)
        fprintf(stderr, "  error: %s\n", err.message);
    CHECK(help == 0);
    CHECK(c.port == 7000);
    CHECK_STR(SRC(&c, "port"), "flag");
    CHECK(c.max_upstream == 7);
    CHECK_STR(SRC(&c, "max-upstream"), "env");
    CHECK(c.read_timeout_ms == 40000);
    CHECK_STR(SRC(&c, "read-timeout"), "env");
    CHECK(c.context_window == 1000);
    CHECK_STR(SRC(&c, "context-window"), "file");
    CHECK_STR(c.upstream_model, "qwen3 coder");
    CHECK_STR(c.host, "127.0.0.2");
    CHECK_STR(SRC(&c, "host"), "file");
    CHECK_STR(SRC(&c, "config"), "flag");
    CHECK_STR(c.config_path, file);
    CHECK(c.connect_retries == 2);
    CHECK_STR(SRC(&c, "connect-retries"), "default");
    ax_config_free(&c);

    /* the config file named by the environment instead */
    clear_env();
    setenv("ANTHROXY_CONFIG", file, 1);
    ax_config_init(&c);
    CHECK(ax_config_load(&c, 1, argv, NULL, &err) == 0);
    CHECK(c.port == 5000);
    CHECK_STR(SRC(&c, "port"), "file");
    CHECK_STR(SRC(&c, "config"), "env");
    ax_config_free(&c);
    clear_env();
    unlink(file);
}

/* Each of the seed's variables lands in its field, marked "env". */
static void test_seed_env(void)
{
    struct ax_config c;
    struct ax_error err = {0};

    clear_env();
    setenv("LLAMA_CPP_BASE", "http://10.0.0.5:8081", 1);
    setenv("PROXY_PORT", "4100", 1);
    setenv("PROXY_HOST", "0.0.0.0", 1);
    setenv("PROXY_LOG_LEVEL", "warning", 1);
    setenv("PROXY_READ_TIMEOUT", "12.5", 1);
    setenv("PROXY_MAX_CONNECTIONS", "3", 1);
    setenv("PROXY_CONTEXT_WINDOW", "32768", 1);
    setenv("PROXY_CONTEXT_PRUNE_THRESHOLD", "0.6", 1);
    ax_config_init(&c);
    CHECK(ax_config_apply_env(&c, &err) == 0);
    CHECK_STR(c.upstream_base, "http://10.0.0.5:8081");
    CHECK_STR(SRC(&c, "upstream"), "env");
    CHECK(c.port == 4100);
    CHECK_STR(c.host, "0.0.0.0");
    CHECK(c.log_level == AX_LOG_LVL_WARN);
    CHECK(c.read_timeout_ms == 12500);
    CHECK(c.max_upstream == 3);
    CHECK(c.context_window == 32768);
    CHECK(fabs(c.prune_threshold - 0.6) < 1e-12);
    CHECK_STR(SRC(&c, "prune-threshold"), "env");
    ax_config_free(&c);

    /* every setting also has ANTHROXY_<NAME> */
    clear_env();
    setenv("ANTHROXY_PING_INTERVAL", "0.25", 1);
    setenv("ANTHROXY_UPSTREAM", "https://api.example/v1", 1);
    setenv("ANTHROXY_REASONING_FALLBACK", "yes", 1);
    setenv("ANTHROXY_MAX_BODY_BYTES", "1M", 1);
    setenv("ANTHROXY_SESSION_TTL", "2h", 1);
    setenv("LLAMA_CPP_BASE", "http://ignored:1", 1);
    ax_config_init(&c);
    CHECK(ax_config_apply_env(&c, &err) == 0);
    CHECK(c.ping_interval_ms == 250);
    CHECK_STR(c.upstream_base, "https://api.example/v1");
    CHECK(c.reasoning_fallback == 1);
    CHECK(c.max_body_bytes == 1048576);
    CHECK(c.session_ttl_ms == 7200000);
    ax_config_free(&c);
    clear_env();
}

static void test_value_syntax(void)
{
    struct ax_config c;
    struct ax_error err;
    int help = 0;

    ax_config_init(&c);
    CHECK(args(&c, &err, &help, "--port=123", "--retry-delay", "0.25", NULL) == 0);
    CHECK(c.port == 123 && c.retry_delay_ms == 250);
    CHECK(args(&c, &err, &help, "--connect-timeout", "250ms", "--total-timeout=2m", NULL) == 0);
    CHECK(c.connect_timeout_ms == 250 && c.total_timeout_ms == 120000);
    CHECK(args(&c, &err, &help, "--max-body-bytes", "1.5M", "--max-header-bytes=8K", NULL) == 0);
    CHECK(c.max_body_bytes == 1572864 && c.max_header_bytes == 8192);
    CHECK(args(&c, &err, &help, "--lua-mem-max", "2G", "--write-high-water", "100000") == 0);
    CHECK(c.lua_mem_max == 2147483648ull && c.write_high_water == 100000);
    CHECK(args(&c, &err, &help, "--reasoning-fallback", "--policy-fail-closed", NULL, NULL) == 0);
    CHECK(c.reasoning_fallback == 1 && c.policy_fail_closed == 1);
    CHECK(args(&c, &err, &help, "--no-reasoning-fallback", "--policy-fail-closed=off", NULL,
               NULL) == 0);
    CHECK(c.reasoning_fallback == 0 && c.policy_fail_closed == 0);
    CHECK(args(&c, &err, &help, "--upstream-model", "", NULL, NULL) == 0);
    CHECK(c.upstream_model == NULL);
    CHECK(args(&c, &err, &help, "--log-level", "debug", NULL, NULL) == 0);
    CHECK(c.log_level == AX_LOG_LVL_DEBUG);
    CHECK(args(&c, &err, &help, "--port", "0", NULL, NULL) == 0 && c.port == 0);
    CHECK(help == 0);
    CHECK(args(&c, &err, &help, "--help", NULL, NULL, NULL) == 0 && help == 1);
    CHECK(args(&c, &err, &help, "--version", NULL, NULL, NULL) == 0 && help == 2);
    CHECK_STR(SRC(&c, "port"), "flag");
    ax_config_free(&c);
}

/* A rejected value: the call fails and the message names where, the key and the value. */
static void expect_bad(const char *a1, const char *a2, const char *needle1, const char *needle2,
                       int line)
{
    struct ax_config c;
    struct ax_error err;

    ax_config_init(&c);
    if (args(&c, &err, NULL, a1, a2, NULL, NULL) == 0) {
        fprintf(stderr, "%s:%d: %s %s accepted\n", __FILE__, line, a1, a2 ? a2 : "");
        ax_test_failures++;
    } else if (strstr(err.message, needle1) == NULL ||
               (needle2 != NULL && strstr(err.message, needle2) == NULL)) {
        fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"/\"%s\"\n", __FILE__, line, err.message,
                needle1, needle2 ? needle2 : "");
        ax_test_failures++;
    }
    ax_config_free(&c);
}

static void test_bad_values(void)
{
    struct ax_config c;
    struct ax_error err = {0};
    const char *file;

    expect_bad("--port", "abc", "--port: invalid value \"abc\" for port", NULL, __LINE__);
    expect_bad("--port=70000", NULL, "70000", "port", __LINE__);
    expect_bad("--prune-threshold", "1.5", "1.5", "prune-threshold", __LINE__);
    expect_bad("--read-timeout", "-1", "\"-1\"", "read-timeout", __LINE__);
    expect_bad("--read-timeout", "soon", "\"soon\"", "read-timeout", __LINE__);
    expect_bad("--max-body-bytes", "12Q", "\"12Q\"", "max-body-bytes", __LINE__);
    expect_bad("--max-sessions", "0", "\"0\"", "max-sessions", __LINE__);
    expect_bad("--max-upstream", "2.5", "\"2.5\"", "max-upstream", __LINE__);
    expect_bad("--log-level", "LOUD", "\"LOUD\"", "log-level", __LINE__);
    expect_bad("--reasoning-fallback=maybe", NULL, "\"maybe\"", "reasoning-fallback", __LINE__);
    expect_bad("--model-map", "nothing", "\"nothing\"", "FROM=TO", __LINE__);
    expect_bad("--model-map", "=x", "\"=x\"", "model-map", __LINE__);
    expect_bad("--frobnicate", "1", "unknown flag --frobnicate", NULL, __LINE__);
    expect_bad("--no-port", NULL, "unknown flag --no-port", NULL, __LINE__);
    expect_bad("--port", NULL, "--port: missing value", NULL, __LINE__);
    expect_bad("stray", NULL, "unexpected argument \"stray\"", NULL, __LINE__);
    /* a secret is never echoed back, even a malformed one */
    expect_bad("--api-key", " ", "***", "api-key", __LINE__);

    clear_env();
    setenv("PROXY_PORT", "4x", 1);
    ax_config_init(&c);
    CHECK(ax_config_apply_env(&c, &err) < 0);
    CHECK(strstr(err.message, "PROXY_PORT") != NULL && strstr(err.message, "\"4x\"") != NULL &&
          strstr(err.message, "port") != NULL);
    ax_config_free(&c);
    clear_env();

    file = write_temp("port = 1\nbogus-key = 3\n");
    ax_config_init(&c);
    CHECK(ax_config_load_file(&c, file, &err) < 0);
    CHECK(strstr(err.message, ":2:") != NULL && strstr(err.message, "bogus-key") != NULL);
    ax_config_free(&c);
    unlink(file);

    file = write_temp("ping-interval = never\n");
    ax_config_init(&c);
    CHECK(ax_config_load_file(&c, file, &err) < 0);
    CHECK(strstr(err.message, ":1:") != NULL && strstr(err.message, "ping-interval") != NULL &&
          strstr(err.message, "\"never\"") != NULL);
    ax_config_free(&c);
    unlink(file);

    ax_config_init(&c);
    CHECK(ax_config_load_file(&c, "/nonexistent/anthroxy.conf", &err) < 0);
    CHECK(strstr(err.message, "/nonexistent/anthroxy.conf") != NULL);
    ax_config_free(&c);

    /* cross-field validation */
    ax_config_init(&c);
    CHECK(ax_config_validate(&c, &err) == 0);
    c.write_low_water = c.write_high_water;
    CHECK(ax_config_validate(&c, &err) < 0 && strstr(err.message, "write-low-water") != NULL);
    ax_config_free(&c);
    /* an embedder's direct assignment is range-checked too */
    ax_config_init(&c);
    c.port = 70000;
    CHECK(ax_config_validate(&c, &err) < 0 && strstr(err.message, "port: 70000") != NULL);
    c.port = 0;
    c.prune_threshold = 0;
    CHECK(ax_config_validate(&c, &err) < 0 && strstr(err.message, "prune-threshold") != NULL);
    c.prune_threshold = 0.5;
    c.ping_interval_ms = 0;
    CHECK(ax_config_validate(&c, &err) < 0 && strstr(err.message, "ping-interval") != NULL);
    c.ping_interval_ms = 1000;
    CHECK(ax_config_validate(&c, &err) == 0);
    ax_config_free(&c);
    ax_config_init(&c);
    CHECK(args(&c, &err, NULL, "--upstream", "ftp://x", NULL, NULL) == 0);
    CHECK(ax_config_validate(&c, &err) < 0 && strstr(err.message, "ftp://x") != NULL);
    ax_config_free(&c);
}

static char *capture_usage(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    ax_config_usage(f);
    fclose(f);
    return text;
}

/* --help names every setting the JSON knows, and every flag of the brief. */
static void test_help(void)
{
    static const char *const required[] = {"host",
                                           "port",
                                           "api-key",
                                           "api-key-file",
                                           "upstream",
                                           "upstream-api-key",
                                           "upstream-model",
                                           "model-map",
                                           "max-upstream",
                                           "upstream-queue-max",
                                           "connect-timeout",
                                           "read-timeout",
                                           "total-timeout",
                                           "connect-retries",
                                           "retry-delay",
                                           "context-window",
                                           "prune-threshold",
                                           "max-body-bytes",
                                           "max-header-bytes",
                                           "max-response-bytes",
                                           "write-high-water",
                                           "write-low-water",
                                           "client-stall-timeout",
                                           "keepalive-timeout",
                                           "shutdown-grace",
                                           "ping-interval",
                                           "first-byte-hold",
                                           "reasoning-fallback",
                                           "forward-user-id",
                                           "policies",
                                           "lua-dir",
                                           "lua-mem-max",
                                           "lua-req-mem-max",
                                           "lua-instr-budget",
                                           "policy-fail-closed",
                                           "max-sessions",
                                           "session-ttl",
                                           "log-level",
                                           "config"};
    struct ax_config c;
    char *usage = capture_usage(), flag[80];
    cJSON *json, *item;
    size_t i;

    ax_config_init(&c);
    json = ax_config_to_json(&c);
    CHECK(json != NULL);
    for (i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (cJSON_GetObjectItemCaseSensitive(json, required[i]) == NULL) {
            fprintf(stderr, "%s:%d: setting %s missing\n", __FILE__, __LINE__, required[i]);
            ax_test_failures++;
        }
    }
    cJSON_ArrayForEach(item, json)
    {
        snprintf(flag, sizeof(flag), "--%s ", item->string);
        if (strstr(usage, flag) == NULL) {
            snprintf(flag, sizeof(flag), "--[no-]%s ", item->string);
            if (strstr(usage, flag) == NULL) {
                fprintf(stderr, "%s:%d: --help lacks --%s\n", __FILE__, __LINE__, item->string);
                ax_test_failures++;
            }
        }
    }
    CHECK(strstr(usage, "PROXY_CONTEXT_PRUNE_THRESHOLD") != NULL);
    CHECK(strstr(usage, "ANTHROXY_PING_INTERVAL") != NULL);
    CHECK(strstr(usage, "LLAMA_CPP_BASE") != NULL);
    CHECK(strstr(usage, "--help") != NULL && strstr(usage, "--version") != NULL);
    cJSON_Delete(json);
    free(usage);
    ax_config_free(&c);
}

static void test_model_map(void)
{
    struct ax_config c;
    struct ax_error err;
    char *argv[] = {"anthroxy",
                    "--model-map",
                    "claude*=general",
                    "--model-map",
                    "claude-3-5-haiku*=small",
                    "--model-map=claude-sonnet-4 = big",
                    NULL};

    ax_config_init(&c);
    CHECK(ax_config_map_model(&c, "claude-sonnet-4") == NULL);
    CHECK(ax_config_parse_args(&c, 6, argv, NULL, &err) == 0);
    CHECK(c.n_model_map == 3);
    CHECK_STR(ax_config_map_model(&c, "claude-sonnet-4"), "big"); /* exact beats a prefix */
    CHECK_STR(ax_config_map_model(&c, "claude-3-5-haiku-20241022"), "general"); /* first wins */
    CHECK_STR(ax_config_map_model(&c, "claude-opus-4"), "general");
    CHECK(ax_config_map_model(&c, "gpt-4o") == NULL);
    CHECK(ax_config_map_model(&c, "claud") == NULL);
    CHECK(ax_config_map_model(&c, NULL) == NULL);
    ax_config_free(&c);

    clear_env();
    setenv("ANTHROXY_MODEL_MAP", "a=b, c*=d ,", 1);
    ax_config_init(&c);
    CHECK(ax_config_apply_env(&c, &err) == 0);
    CHECK(c.n_model_map == 2);
    CHECK_STR(ax_config_map_model(&c, "a"), "b");
    CHECK(ax_config_map_model(&c, "ab") == NULL);
    CHECK_STR(ax_config_map_model(&c, "cat"), "d");
    CHECK_STR(ax_config_map_model(&c, "c"), "d");
    /* a flag replaces the environment's list instead of adding to it */
    CHECK(args(&c, &err, NULL, "--model-map", "x=y", NULL, NULL) == 0);
    CHECK(c.n_model_map == 1 && ax_config_map_model(&c, "a") == NULL);
    CHECK_STR(SRC(&c, "model-map"), "flag");
    ax_config_free(&c);
    clear_env();
}

static void test_api_keys_and_redaction(void)
{
    struct ax_config c, copy;
    struct ax_error err = {0};
    const char *keyfile = write_temp("# operators\nfile-key-1\n\n  file-key-2  \n");
    char *argv[] = {"anthroxy",
                    "--api-key",
                    "flag-key-1",
                    "--api-key=flag-key-2",
                    "--upstream-api-key",
                    "up-secret",
                    "--api-key-file",
                    (char *)keyfile,
                    NULL};
    cJSON *json;
    char *text;

    clear_env();
    setenv("ANTHROXY_API_KEY", "env-key-1, env-key-2", 1);
    ax_config_init(&c);
    CHECK(ax_config_apply_env(&c, &err) == 0);
    CHECK(c.n_api_keys == 2);
    CHECK(c.n_api_keys == 2 && strcmp(c.api_keys[1], "env-key-2") == 0);
    ax_config_free(&c);

    ax_config_init(&c);
    CHECK(ax_config_load(&c, 8, argv, NULL, &err) == 0);
    /* the flags replace the env keys; the key file adds to them */
    CHECK(c.n_api_keys == 4);
    if (c.n_api_keys == 4) {
        CHECK_STR(c.api_keys[0], "flag-key-1");
        CHECK_STR(c.api_keys[1], "flag-key-2");
        CHECK_STR(c.api_keys[2], "file-key-1");
        CHECK_STR(c.api_keys[3], "file-key-2");
    }
    CHECK_STR(SRC(&c, "api-key"), "flag");

    json = ax_config_to_json(&c);
    text = cJSON_PrintUnformatted(json);
    CHECK(text != NULL && strstr(text, "key-1") == NULL && strstr(text, "up-secret") == NULL);
    CHECK(text != NULL && strstr(text, "\"api-key\":{\"value\":[\"***\",\"***\",\"***\",\"***\"],"
                                       "\"source\":\"flag\"}") != NULL);
    CHECK(text != NULL &&
          strstr(text, "\"upstream-api-key\":{\"value\":\"***\",\"source\":\"flag\"}") != NULL);
    CHECK(text != NULL &&
          strstr(text, "\"read-timeout\":{\"value\":600,\"source\":\"default\"}") != NULL);
    cJSON_free(text);
    cJSON_Delete(json);

    /* the start-up log: one line per setting, no secret */
    {
        char buf[16384];
        FILE *tmp = tmpfile();
        int saved = dup(2);
        size_t n;
        fflush(stderr);
        dup2(fileno(tmp), 2);
        ax_config_log(&c);
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
        rewind(tmp);
        n = fread(buf, 1, sizeof(buf) - 1, tmp);
        buf[n] = '\0';
        fclose(tmp);
        CHECK(strstr(buf, "config port = 4000 (default)") != NULL);
        CHECK(strstr(buf, "config upstream-api-key = \"***\" (flag)") != NULL);
        CHECK(strstr(buf, "up-secret") == NULL && strstr(buf, "flag-key") == NULL);
    }

    /* a deep copy outlives its source */
    CHECK(ax_config_copy(&copy, &c) == 0);
    ax_config_free(&c);
    CHECK(copy.n_api_keys == 4 && strcmp(copy.api_keys[3], "file-key-2") == 0);
    CHECK_STR(copy.upstream_api_key, "up-secret");
    CHECK_STR(copy.host, "127.0.0.1");
    CHECK_STR(SRC(&copy, "upstream-api-key"), "flag");
    ax_config_free(&copy);
    unlink(keyfile);
    clear_env();
}

/* Credentials in the upstream URL never show: not in the JSON of /health, not in the
 * start-up log, not in an error message. */
static void test_url_credentials(void)
{
    struct ax_config c;
    struct ax_error err = {0};
    char *argv[] = {"anthroxy", "--upstream", "http://user:pa55word@10.0.0.9:8080/v1", NULL};
    char *bad[] = {"anthroxy", "--upstream", "ftp://user:pa55word@10.0.0.9/v1", NULL};
    cJSON *json;
    char *text, buf[16384];

    clear_env();
    ax_config_init(&c);
    CHECK(ax_config_load(&c, 3, argv, NULL, &err) == 0);
    CHECK_STR(c.upstream_base, "http://user:pa55word@10.0.0.9:8080/v1"); /* used as given */
    json = ax_config_to_json(&c);
    text = cJSON_PrintUnformatted(json);
    CHECKF(text != NULL && strstr(text, "pa55word") == NULL &&
               strstr(text, "\"upstream\":{\"value\":\"http://***@10.0.0.9:8080/v1\"") != NULL,
           "%s", text);
    cJSON_free(text);
    cJSON_Delete(json);
    {
        FILE *tmp = tmpfile();
        int saved = dup(2);
        size_t n;
        fflush(stderr);
        dup2(fileno(tmp), 2);
        ax_config_log(&c);
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
        rewind(tmp);
        n = fread(buf, 1, sizeof(buf) - 1, tmp);
        buf[n] = '\0';
        fclose(tmp);
        CHECKF(strstr(buf, "pa55word") == NULL &&
                   strstr(buf, "config upstream = \"http://***@10.0.0.9:8080/v1\" (flag)") != NULL,
               "%s", buf);
    }
    ax_config_free(&c);

    ax_config_init(&c);
    CHECK(ax_config_load(&c, 3, bad, NULL, &err) < 0);
    CHECKF(strstr(err.message, "pa55word") == NULL && strstr(err.message, "ftp://***@") != NULL,
           "%s", err.message);
    ax_config_free(&c);
}

/* The seed's knob given three ways: flags > env > file > defaults, as for every setting. */
static void test_seed_precedence(void)
{
    struct ax_config c;
    struct ax_error err = {0};
    const char *file = write_temp("prune-threshold = 0.5\n");
    char *argv[] = {"anthroxy", "--config", (char *)file, "--prune-threshold", "0.3", NULL};

    clear_env();
    setenv("PROXY_CONTEXT_PRUNE_THRESHOLD", "0.9", 1);
    ax_config_init(&c);
    CHECK(ax_config_load(&c, 5, argv, NULL, &err) == 0);
    CHECK(fabs(c.prune_threshold - 0.3) < 1e-12);
    CHECK_STR(SRC(&c, "prune-threshold"), "flag");
    ax_config_free(&c);
    ax_config_init(&c);
    CHECK(ax_config_load(&c, 3, argv, NULL, &err) == 0); /* no flag: the environment */
    CHECK(fabs(c.prune_threshold - 0.9) < 1e-12);
    CHECK_STR(SRC(&c, "prune-threshold"), "env");
    ax_config_free(&c);
    clear_env();
    ax_config_init(&c);
    CHECK(ax_config_load(&c, 3, argv, NULL, &err) == 0); /* nor env: the file */
    CHECK(fabs(c.prune_threshold - 0.5) < 1e-12);
    CHECK_STR(SRC(&c, "prune-threshold"), "file");
    ax_config_free(&c);
    unlink(file);
}

/* A file's repeatable keys accumulate; --key form and underscores are accepted. */
static void test_file_format(void)
{
    struct ax_config c;
    struct ax_error err = {0};
    const char *file = write_temp("model-map = claude-3-5-haiku* = small\n"
                                  "model_map = claude* = big\n"
                                  "--reasoning-fallback = on\n"
                                  "api-key = 'k1'\n"
                                  "   # indented comment\n"
                                  "LOG_LEVEL = error\n");

    ax_config_init(&c);
    CHECK(ax_config_load_file(&c, file, &err) == 0);
    if (err.status != 0)
        fprintf(stderr, "  error: %s\n", err.message);
    CHECK(c.n_model_map == 2);
    CHECK_STR(ax_config_map_model(&c, "claude-3-5-haiku-latest"), "small");
    CHECK_STR(ax_config_map_model(&c, "claude-opus"), "big");
    CHECK(c.reasoning_fallback == 1);
    CHECK(c.n_api_keys == 1 && strcmp(c.api_keys[0], "k1") == 0);
    CHECK(c.log_level == AX_LOG_LVL_ERROR);
    CHECK_STR(SRC(&c, "model-map"), "file");
    ax_config_free(&c);
    unlink(file);
}

/* ax_config_set: by name, its source recorded as "api"; bad names and values rejected with
 * a message, the setting unchanged. */
static void test_config_set(void)
{
    struct ax_config c;
    struct ax_error err = {0};

    ax_config_init(&c);
    CHECK_STR(SRC(&c, "port"), "default");
    CHECK(ax_config_set(&c, "port", "4001", &err) == 0);
    CHECK_INT(c.port, 4001);
    CHECK_STR(SRC(&c, "port"), "api");
    CHECK(ax_config_set(&c, "MAX_UPSTREAM", "7", &err) == 0); /* as the file accepts names */
    CHECK_INT(c.max_upstream, 7);
    CHECK_STR(SRC(&c, "max-upstream"), "api");
    CHECK(ax_config_set(&c, "model-map", "a=b,c*=d", &err) == 0);
    CHECK_STR(ax_config_map_model(&c, "c-1"), "d");
    CHECK_STR(SRC(&c, "model-map"), "api");

    memset(&err, 0, sizeof(err));
    CHECK(ax_config_set(&c, "no-such-setting", "1", &err) == AX_EINVAL);
    CHECK(err.status == 400 && strstr(err.message, "no-such-setting") != NULL);
    memset(&err, 0, sizeof(err));
    CHECK(ax_config_set(&c, "port", "http", &err) == AX_EINVAL);
    CHECKF(strstr(err.message, "port") != NULL && strstr(err.message, "\"http\"") != NULL, "%s",
           err.message);
    CHECK_INT(c.port, 4001); /* unchanged */
    CHECK_STR(SRC(&c, "port"), "api");
    CHECK(ax_config_set(&c, "config", "/etc/x", &err) == AX_EINVAL); /* only a source names it */
    CHECK(ax_config_set(&c, "port", NULL, &err) == AX_EINVAL);
    ax_config_free(&c);
}

int main(void)
{
    test_defaults();
    test_precedence();
    test_seed_precedence();
    test_url_credentials();
    test_seed_env();
    test_value_syntax();
    test_bad_values();
    test_help();
    test_model_map();
    test_api_keys_and_redaction();
    test_file_format();
    test_config_set();
    return AX_TEST_DONE("test_config");
}
