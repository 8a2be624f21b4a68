/* replay.c - `anthroxy replay`: every recorded client request (core/record.c's files),
 * session by session and in order, through each arm's chain in a policy engine of its own,
 * with a session monitor per arm fed as the live proxy would have fed it. Per turn and arm:
 * tokens sent and removed (and what), whether the request fits the window, whether tool
 * pairs stayed intact, and the prefix a prompt cache could reuse from the previous turn; with
 * --upstream, the upstream's own counts. The figures go to replay_report.c, which writes the
 * report. A command-line tool: it owns its loop and may read files synchronously. */
#include "anthroxy_replay.h"
#include "anthroxy_experiment.h"
#include "anthroxy_hash.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_monitor.h"
#include "anthroxy_policy.h"
#include "anthroxy_record.h"
#include "anthroxy_tokens.h"
#include "anthroxy_translate.h"
#include "anthroxy_upstream.h"
#include "replay_internal.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RP_MAX_LINE (512u * 1024 * 1024)

/* ---- reading recordings -------------------------------------------------------------- */

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL, *grown;
    size_t cap = 0, n = 0, got;

    if (f == NULL)
        return NULL;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            if (cap > RP_MAX_LINE * 2u || (grown = realloc(buf, cap)) == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = grown;
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int64_t num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

/* The first tool_use of an Anthropic message: name and printed input. */
static void first_tool_use(const cJSON *msg, char *name, size_t n, char **input)
{
    const cJSON *b;

    name[0] = '\0';
    *input = NULL;
    cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(msg, "content"))
    {
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "type"));
        const char *nm = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "name"));
        if (t && nm && strcmp(t, "tool_use") == 0) {
            snprintf(name, n, "%s", nm);
            *input = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(b, "input"));
            return;
        }
    }
}

static struct rp_session *session_for(struct rp_run *run, const char *key, const char *file)
{
    struct rp_session *s, *grown;
    int i;

    for (i = run->n_sessions - 1; i >= 0; i--)
        if (strcmp(run->sessions[i].key, key) == 0)
            return &run->sessions[i];
    if (run->n_sessions == run->cap_sessions) {
        int cap = run->cap_sessions ? run->cap_sessions * 2 : 64;
        if ((grown = realloc(run->sessions, (size_t)cap * sizeof(*grown))) == NULL)
            return NULL;
        run->sessions = grown;
        run->cap_sessions = cap;
    }
    s = &run->sessions[run->n_sessions++];
    memset(s, 0, sizeof(*s));
    s->key = strdup(key);
    s->file = strdup(file);
    return s;
}

static struct rp_turn *turn_add(struct rp_session *s)
{
    struct rp_turn *grown;

    if (s->n_turns == s->cap_turns) {
        int cap = s->cap_turns ? s->cap_turns * 2 : 16;
        if ((grown = realloc(s->turns, (size_t)cap * sizeof(*grown))) == NULL)
            return NULL;
        s->turns = grown;
        s->cap_turns = cap;
    }
    memset(&s->turns[s->n_turns], 0, sizeof(s->turns[0]));
    return &s->turns[s->n_turns++];
}

struct ring {
    char *b[AX_REC_BASES];
    size_t n[AX_REC_BASES];
    uint64_t h[AX_REC_BASES];
    int next;
};

static void ring_push(struct ring *g, const char *p, size_t n)
{
    char *c = malloc(n + 1);
    if (c == NULL)
        return;
    memcpy(c, p, n);
    c[n] = '\0';
    free(g->b[g->next]);
    g->b[g->next] = c;
    g->n[g->next] = n;
    g->h[g->next] = ax_fnv1a(c, n, AX_FNV1A_INIT);
    g->next = (g->next + 1) % AX_REC_BASES;
}

static void ring_free(struct ring *g)
{
    int i;
    for (i = 0; i < AX_REC_BASES; i++)
        free(g->b[i]);
    memset(g, 0, sizeof(*g));
}

/* --dump-requests DIR: each rebuilt client request as DIR/SSSS-TTTT.json (session and
 * turn numbers from 0, in the order replayed), byte for byte what the client sent. */
static void dump_request(struct rp_run *run, int si, int ti, const char *body, size_t n)
{
    char path[4200];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%04d-%04d.json", run->dump_dir, si, ti);
    if ((f = fopen(path, "wb")) == NULL || fwrite(body, 1, n, f) != n)
        fprintf(stderr, "anthroxy replay: cannot write %s\n", path);
    if (f != NULL)
        fclose(f);
}

/* One recording file: every line whose bodies rebuild becomes a turn of its session. */
static int load_file(struct rp_run *run, const char *path)
{
    size_t len, n;
    char *text = read_all(path, &len), *line, *end;
    struct ring bodies, ups;
    int lines = 0, bad = 0;

    if (text == NULL) {
        fprintf(stderr, "anthroxy replay: cannot read %s\n", path);
        return -1;
    }
    memset(&bodies, 0, sizeof(bodies));
    memset(&ups, 0, sizeof(ups));
    for (line = text; line < text + len; line = end + 1) {
        cJSON *j, *resp;
        struct rp_session *s;
        struct rp_turn *t;
        const char *key;
        char *body, *up = NULL;
        size_t up_len = 0;

        if ((end = memchr(line, '\n', (size_t)(text + len - line))) == NULL)
            end = text + len;
        if (end == line)
            continue;
        lines++;
        if ((j = cJSON_ParseWithLength(line, (size_t)(end - line))) == NULL) {
            bad++; /* a torn line (a full disk): its session goes on from the next snapshot */
            continue;
        }
        body = ax_rec_rebuild(cJSON_GetObjectItemCaseSensitive(j, "request"), bodies.b, bodies.n,
                              bodies.h, AX_REC_BASES, &n);
        key = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "session"));
        if (body == NULL || key == NULL) {
            bad++;
            free(body);
            cJSON_Delete(j);
            continue;
        }
        ring_push(&bodies, body, n);
        if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "upstream_request")) &&
            (up = ax_rec_rebuild(cJSON_GetObjectItemCaseSensitive(j, "upstream_request"), ups.b,
                                 ups.n, ups.h, AX_REC_BASES, &up_len)) != NULL)
            ring_push(&ups, up, up_len);
        if ((s = session_for(run, key, path)) == NULL || (t = turn_add(s)) == NULL) {
            free(body);
            free(up);
            cJSON_Delete(j);
            break;
        }
        t->body = body;
        t->len = n;
        if (run->dump_dir != NULL)
            dump_request(run, (int)(s - run->sessions), s->n_turns - 1, body, n);
        t->up = up;
        t->up_len = up_len;
        {
            const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
            t->have_usage = cJSON_IsObject(u);
            t->prompt = num(u, "prompt_tokens");
            t->cached = num(u, "cached_tokens");
            t->completion = num(u, "completion_tokens");
        }
        t->window = num(j, "context_window");
        resp = cJSON_DetachItemFromObjectCaseSensitive(j, "response");
        if (cJSON_IsObject(resp)) {
            t->response = resp;
            first_tool_use(resp, t->tool, sizeof(t->tool), &t->tool_input);
        } else {
            cJSON_Delete(resp);
        }
        cJSON_Delete(j);
    }
    ring_free(&bodies);
    ring_free(&ups);
    free(text);
    if (bad > 0)
        fprintf(stderr, "anthroxy replay: %s: %d of %d lines skipped (torn or without base)\n",
                path, bad, lines);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A file, or every *.jsonl of a directory in name order. */
static int load_path(struct rp_run *run, const char *path)
{
    struct stat st;
    DIR *d;
    struct dirent *e;
    char **names = NULL, **grown, full[4096];
    size_t n = 0, cap = 0, i;
    int rc = 0;

    if (stat(path, &st) < 0) {
        fprintf(stderr, "anthroxy replay: %s: no such file or directory\n", path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return load_file(run, path);
    if ((d = opendir(path)) == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l < 7 || strcmp(e->d_name + l - 6, ".jsonl") != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            if ((grown = realloc(names, cap * sizeof(*names))) == NULL)
                break;
            names = grown;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n > 0)
        qsort(names, n, sizeof(*names), by_name);
    for (i = 0; i < n; i++) {
        snprintf(full, sizeof(full), "%s/%s", path, names[i]);
        if (rc == 0)
            rc = load_file(run, full);
        free(names[i]);
    }
    free(names);
    return rc;
}

/* ---- the arms ------------------------------------------------------------------------ */

static int64_t arm_window(void *ud)
{
    struct rp_arm *a = ud;
    return a->run->window_now;
}

static int arm_open(struct rp_run *run, struct rp_arm *a, const struct ax_exp_arm *ea)
{
    struct ax_policy_env env;
    struct ax_error err = {0};

    a->arm = ea;
    a->run = run;
    snprintf(a->chain, sizeof(a->chain), "%s", ea->chain_path ? ea->chain_path : "inline chain");
    /* the engine loads every arm's chain from the experiment file, as the live proxy does, and
     * a request runs the one its ctx.arm names; one engine (and monitor) per arm keeps each
     * arm's Lua state and sessions to itself */
    ax_config_init(&a->cfg);
    a->cfg.experiment_path = strdup(run->exp_path);
    if (run->lua_dir) {
        free(a->cfg.lua_dir);
        a->cfg.lua_dir = strdup(run->lua_dir);
    }
    if ((a->mon = ax_monitor_new(1 << 20, 0)) == NULL)
        return -1;
    memset(&env, 0, sizeof(env));
    env.loop = &run->loop;
    env.cfg = &a->cfg;
    env.up = run->up;
    env.mon = a->mon;
    env.context_window = arm_window;
    env.ud = a;
    if (ax_policy_engine_new(&env, &a->eng, &err) < 0) {
        fprintf(stderr, "anthroxy replay: arm %s: %s\n", ea->name, err.message);
        return -1;
    }
    return 0;
}

/* ---- one turn through one arm -------------------------------------------------------- */

struct hook_wait {
    int done, rc;
    struct ax_error err;
};

static void on_hook_done(struct ax_policy_req *pr, int rc, const struct ax_error *err, void *ud)
{
    struct hook_wait *w = ud;
    (void)pr;
    w->done = 1;
    w->rc = rc;
    if (err)
        w->err = *err;
}

/* Runs one hook of the arm's chain to its end. Returns 0, 1 (on_upstream_error: retry), or -1
 * with err. */
static int run_hook_aux(struct rp_run *run, struct ax_policy_req *pr, enum ax_hook hook,
                        cJSON *tree, const cJSON *aux, struct ax_error *err)
{
    struct hook_wait w;

    memset(&w, 0, sizeof(w));
    if (!ax_policy_req_has_hook(pr, hook))
        return 0;
    if (ax_policy_req_run(pr, hook, tree, aux, on_hook_done, &w) < 0)
        return ax_error_set(err, 500, "api_error", "policy engine unavailable");
    while (!w.done)
        uv_run(&run->loop, UV_RUN_ONCE);
    if (w.rc < 0) {
        *err = w.err;
        if (err->status == 0)
            ax_error_set(err, 500, "api_error", "policy failed");
        return -1;
    }
    return w.rc;
}

static int run_hook(struct rp_run *run, struct ax_policy_req *pr, enum ax_hook hook, cJSON *tree,
                    struct ax_error *err)
{
    return run_hook_aux(run, pr, hook, tree, NULL, err) < 0 ? -1 : 0;
}

/* Offline, a request over the window is what the upstream would refuse: the chain's
 * on_upstream_error gets llama-server's overflow numbers, as messages.c gives them, and may
 * have the request sent again (once). Returns 1 for a retry. */
static int overflow_retry(struct rp_run *run, struct ax_policy_req *pr, cJSON *body,
                          int64_t n_prompt, int64_t n_ctx, struct ax_error *err)
{
    cJSON *aux = cJSON_CreateObject();
    char msg[160];
    int rc;

    if (aux == NULL)
        return 0;
    snprintf(msg, sizeof(msg),
             "the request exceeds the available context size (%lld tokens > %lld)",
             (long long)n_prompt, (long long)n_ctx);
    cJSON_AddNumberToObject(aux, "status", 400);
    cJSON_AddNumberToObject(aux, "upstream_status", 400);
    cJSON_AddStringToObject(aux, "type", "invalid_request_error");
    cJSON_AddStringToObject(aux, "message", msg);
    cJSON_AddNumberToObject(aux, "n_prompt_tokens", (double)n_prompt);
    cJSON_AddNumberToObject(aux, "n_ctx", (double)n_ctx);
    rc = run_hook_aux(run, pr, AX_HOOK_UPSTREAM_ERROR, body, aux, err);
    cJSON_Delete(aux);
    return rc == 1;
}

/* What the on_request hooks removed or masked, merged over the policies. */
static void on_trace(void *ud, const char *policy, enum ax_hook hook, const cJSON *before,
                     const cJSON *after)
{
    struct rp_row *row = ud;
    cJSON *d, *e;

    if ((hook != AX_HOOK_REQUEST && hook != AX_HOOK_UPSTREAM_ERROR) ||
        (d = ax_rec_diff(before, after)) == NULL)
        return;
    if (row->what == NULL)
        row->what = cJSON_CreateArray();
    e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "policy", policy ? policy : "?");
    cJSON_AddStringToObject(e, "hook",
                            hook == AX_HOOK_REQUEST ? "on_request" : "on_upstream_error");
    cJSON_AddItemToObject(e, "changes", d);
    cJSON_AddItemToArray(row->what, e);
    row->removed_msgs += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(d, "removed"));
    row->masked += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(d, "masked"));
}

/* Every tool_use answered by a tool_result in the next message, every result asked for. */
static int pairs_intact(const cJSON *body)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages"), *m, *b, *b2;

    cJSON_ArrayForEach(m, msgs)
    {
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "role"));
        const cJSON *next = m->next;
        int is_asst = role && strcmp(role, "assistant") == 0;
        cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(m, "content"))
        {
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "type"));
            const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                b, t && strcmp(t, "tool_use") == 0 ? "id" : "tool_use_id"));
            const cJSON *other = NULL;
            int found = 0;
            if (t == NULL || id == NULL)
                continue;
            if (is_asst && strcmp(t, "tool_use") == 0) {
                other = next; /* its result comes in the next message */
                if (other == NULL)
                    continue; /* the last message: the answer is still to come */
            } else if (strcmp(t, "tool_result") == 0) {
                other = m->prev != NULL && m != msgs->child ? m->prev : NULL;
                if (other == NULL)
                    return 0;
            } else {
                continue;
            }
            cJSON_ArrayForEach(b2, cJSON_GetObjectItemCaseSensitive(other, "content"))
            {
                const char *k = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                    b2, strcmp(t, "tool_use") == 0 ? "tool_use_id" : "id"));
                if (k && strcmp(k, id) == 0)
                    found = 1;
            }
            if (!found)
                return 0;
        }
    }
    return 1;
}

static void prefix_free(struct rp_prefix *p)
{
    int i;
    for (i = 0; i < p->n; i++)
        free(p->msg[i]);
    free(p->msg);
    free(p->len);
    free(p->tok);
    cJSON_Delete(p->tools);
    memset(p, 0, sizeof(*p));
}

/* The parts of an OpenAI request in the order a chat template renders them: the tools (in
 * the system prompt), then each message; raw text estimates of each. */
static void prefix_of(const cJSON *oreq, struct rp_prefix *p, struct rp_prefix *prev)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(oreq, "messages"), *m;
    const cJSON *tnode = cJSON_GetObjectItemCaseSensitive(oreq, "tools");
    int n = cJSON_GetArraySize(msgs), i = 0;

    memset(p, 0, sizeof(*p));
    /* the previous turn's estimates of what did not change: the same tools (compared as
     * trees, cheaper than printing Claude Code's 50 KB of them again) and messages */
    if (prev != NULL && prev->tools != NULL && tnode != NULL &&
        cJSON_Compare(tnode, prev->tools, 1)) {
        p->tools_hash = prev->tools_hash;
        p->tools_tok = prev->tools_tok;
        p->tools = prev->tools; /* moves to this turn */
        prev->tools = NULL;
    } else {
        char *tools = cJSON_PrintUnformatted(tnode);
        p->tools_hash = tools ? ax_fnv1a(tools, strlen(tools), AX_FNV1A_INIT) : 0;
        p->tools_tok = tools ? ax_tokens_text(tools, strlen(tools)) : 0;
        cJSON_free(tools);
        if (prev != NULL && tnode != NULL)
            p->tools = cJSON_Duplicate(tnode, 1);
    }
    p->msg = calloc((size_t)n + 1, sizeof(*p->msg));
    p->len = calloc((size_t)n + 1, sizeof(*p->len));
    p->tok = calloc((size_t)n + 1, sizeof(*p->tok));
    if (p->msg == NULL || p->len == NULL || p->tok == NULL)
        return;
    p->total = p->tools_tok;
    cJSON_ArrayForEach(m, msgs)
    {
        p->msg[i] = cJSON_PrintUnformatted(m);
        p->len[i] = p->msg[i] ? strlen(p->msg[i]) : 0;
        if (prev != NULL && i < prev->n && prev->len[i] == p->len[i] && p->msg[i] &&
            memcmp(prev->msg[i], p->msg[i], p->len[i]) == 0)
            p->tok[i] = prev->tok[i];
        else
            p->tok[i] = p->msg[i] ? ax_tokens_text(p->msg[i], p->len[i]) : 0;
        p->total += p->tok[i];
        i++;
    }
    p->n = i;
}

/* Raw tokens of the longest common prefix of two requests' rendered parts. */
static int64_t prefix_common(const struct rp_prefix *a, const struct rp_prefix *b)
{
    int64_t t;
    int i;
    size_t k = 0;

    if (a->n == 0 || a->tools_hash != b->tools_hash)
        return 0;
    t = a->tools_tok;
    for (i = 0; i < a->n && i < b->n; i++) {
        if (a->len[i] == b->len[i] && memcmp(a->msg[i], b->msg[i], a->len[i]) == 0) {
            t += a->tok[i];
            continue;
        }
        while (k < a->len[i] && k < b->len[i] && a->msg[i][k] == b->msg[i][k])
            k++;
        return t + ax_tokens_text(b->msg[i], k);
    }
    return t;
}

struct fetch_wait {
    int done, rc, status;
    cJSON *body;
};

static void on_fetched(int rc, int status, const char *body, size_t len, void *ud)
{
    struct fetch_wait *w = ud;
    w->done = 1;
    w->rc = rc;
    w->status = status;
    if (rc == 0 && body != NULL)
        w->body = cJSON_ParseWithLength(body, len);
}

/* Sends the arm's request for real, with a small max_tokens and without streaming. */
static void send_upstream(struct rp_run *run, cJSON *oreq, const struct rp_turn *t,
                          struct rp_row *row)
{
    struct fetch_wait w;
    struct ax_buf b;
    const cJSON *usage, *tm, *calls, *fn;

    cJSON_DeleteItemFromObjectCaseSensitive(oreq, "stream");
    cJSON_DeleteItemFromObjectCaseSensitive(oreq, "stream_options");
    cJSON_DeleteItemFromObjectCaseSensitive(oreq, "max_tokens");
    cJSON_DeleteItemFromObjectCaseSensitive(oreq, "max_completion_tokens");
    cJSON_AddNumberToObject(oreq, "max_tokens", run->max_tokens);
    ax_buf_init(&b, (size_t)-1 / 2);
    memset(&w, 0, sizeof(w));
    if (ax_json_print(oreq, &b) < 0 ||
        ax_upstream_fetch(run->up, "POST", "/v1/chat/completions", b.data, b.len, 0, on_fetched, &w,
                          NULL) < 0) {
        ax_buf_free(&b);
        row->up_error = 1;
        return;
    }
    while (!w.done)
        uv_run(&run->loop, UV_RUN_ONCE);
    ax_buf_free(&b);
    if (w.rc < 0 || w.status != 200 || w.body == NULL) {
        row->up_error = 1;
        row->up_status = w.status;
        cJSON_Delete(w.body);
        return;
    }
    row->have_up = 1;
    row->up_status = 200;
    usage = cJSON_GetObjectItemCaseSensitive(w.body, "usage");
    row->up_prompt = num(usage, "prompt_tokens");
    row->up_cached =
        num(cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens_details"), "cached_tokens");
    tm = cJSON_GetObjectItemCaseSensitive(w.body, "timings");
    row->up_prompt_ms = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(tm, "prompt_ms"))
                            ? cJSON_GetObjectItemCaseSensitive(tm, "prompt_ms")->valuedouble
                            : -1;
    if (row->up_cached == 0 && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(tm, "cache_n")))
        row->up_cached = num(tm, "cache_n");
    row->tool_agree = -1;
    if (t->tool[0]) {
        calls = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(w.body, "choices"), 0),
                "message"),
            "tool_calls");
        fn = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(calls, 0), "function");
        row->tool_agree = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fn, "name")) &&
                          strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fn, "name")),
                                 t->tool) == 0;
    }
    cJSON_Delete(w.body);
}

/* Raw text estimate of a printed OpenAI request, as the recording's calibration base. */
static int64_t up_estimate(const char *text, size_t len)
{
    char *copy;
    cJSON *j;
    struct ax_error err = {0};
    struct rp_prefix p;
    int64_t t;

    if (text == NULL || (copy = malloc(len + 1)) == NULL)
        return 0;
    memcpy(copy, text, len + 1);
    j = ax_json_parse(copy, len, &err);
    free(copy);
    if (j == NULL)
        return 0;
    prefix_of(j, &p, NULL);
    t = p.total;
    prefix_free(&p);
    cJSON_Delete(j);
    return t;
}

/* The answer's tool calls into the monitor, as messages.c's record_turn notes them (the
 * same fingerprint: name and printed input), with whether the request forced a tool. */
static void note_tool_calls(struct ax_session *sess, const cJSON *body, const cJSON *resp)
{
    const cJSON *tct = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(body, "tool_choice"), "type");
    const cJSON *blk;
    uint64_t fps[16];
    int n = 0, forced = cJSON_IsString(tct) && (strcmp(tct->valuestring, "any") == 0 ||
                                                strcmp(tct->valuestring, "tool") == 0);

    cJSON_ArrayForEach(blk, cJSON_GetObjectItemCaseSensitive(resp, "content"))
    {
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "type"));
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "name"));
        char *in;
        uint64_t h;
        if (type == NULL || strcmp(type, "tool_use") != 0 || n >= 16)
            continue;
        h = ax_fnv1a(name ? name : "", name ? strlen(name) : 0, AX_FNV1A_INIT);
        if ((in = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(blk, "input"))) != NULL) {
            h = ax_fnv1a(in, strlen(in), h);
            cJSON_free(in);
        }
        fps[n++] = h;
    }
    ax_session_note_tool_calls(sess, fps, n, forced);
}

static int64_t client_estimate(const cJSON *client, const struct ax_translate_opts *to)
{
    struct ax_translate_opts o = *to;
    struct ax_error err = {0};
    struct rp_prefix p;
    cJSON *oreq = NULL;
    int64_t t;

    o.share = 1; /* only printed */
    if (ax_translate_request(client, &o, &oreq, &err) < 0)
        return -1;
    prefix_of(oreq, &p, NULL);
    t = p.total;
    prefix_free(&p);
    cJSON_Delete(oreq);
    return t;
}

static void replay_turn(struct rp_run *run, struct rp_arm *a, struct rp_session *s, int ti,
                        struct rp_state *st, struct rp_row *row)
{
    struct rp_turn *t = &s->turns[ti];
    struct ax_policy_req_info info;
    struct ax_policy_req *pr = NULL;
    struct ax_translate_opts to;
    struct ax_error err = {0};
    struct ax_session *sess;
    struct rp_prefix pfx;
    cJSON *body = NULL, *oreq = NULL, *client = NULL;
    char *copy = malloc(t->len + 1);
    int64_t est_client, est_sent, raw_up;
    double factor;
    const char *model;

    row->tool_agree = -1;
    row->window = run->window > 0 ? run->window : t->window > 0 ? t->window : 131072;
    run->window_now = row->window;
    if (copy == NULL)
        goto fail;
    memcpy(copy, t->body, t->len + 1);
    body = ax_json_parse(copy, t->len, &err); /* the tree holds its own copies */
    free(copy);
    if (body == NULL)
        goto fail;
    if (t->est_client == 0) /* the first arm keeps the client's request as sent */
        client = cJSON_Duplicate(body, 1);
    sess = ax_monitor_get(a->mon, s->key, (uint64_t)ti * 1000);
    memset(&info, 0, sizeof(info));
    info.request_id = "req_replay";
    info.session_id = s->key;
    info.client_model = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(body, "model"));
    info.user_agent = "anthroxy-replay";
    info.arm = a->arm->name;
    info.stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "stream"));
    info.session = sess;
    if (ax_policy_req_new(a->eng, &info, &pr) < 0) {
        ax_session_unref(sess);
        goto fail;
    }
    ax_policy_req_set_trace(pr, on_trace, row);
    if (run_hook(run, pr, AX_HOOK_REQUEST, body, &err) < 0)
        goto fail_sess;
    model = NULL;
    if (t->up != NULL) { /* the model the recording sent upstream */
        const char *mk = strstr(t->up, "\"model\":\"");
        static char mbuf[256];
        if (mk != NULL) {
            size_t i = 0;
            for (mk += 9; *mk && *mk != '"' && i < sizeof(mbuf) - 1; mk++)
                mbuf[i++] = *mk;
            mbuf[i] = '\0';
            model = mbuf;
        }
    }
    memset(&to, 0, sizeof(to));
    to.upstream_model = model ? model : "replay";
    to.llama_server = 1;
    to.stream = info.stream;
    if (t->raw_up == 0) /* once per turn, whatever the number of arms */
        t->raw_up = t->up ? up_estimate(t->up, t->up_len) : -1;
    raw_up = t->raw_up;
    factor = t->have_usage && t->prompt > 0 && raw_up > 0 ? (double)t->prompt / (double)raw_up
             : st->factor > 0                             ? st->factor
                                                          : 1.0;
    st->factor = factor;
    for (;;) {
        if (ax_translate_request(body, &to, &oreq, &err) < 0)
            goto fail_sess;
        if (run_hook(run, pr, AX_HOOK_UPSTREAM_REQUEST, oreq, &err) < 0)
            goto fail_sess;
        /* the figures: raw estimates, calibrated by what the recording's upstream counted */
        prefix_of(oreq, &pfx, &st->prev);
        row->sent_tokens = (int64_t)llround((double)pfx.total * factor);
        if (run->up != NULL || row->retried || row->sent_tokens <= row->window)
            break;
        ax_session_note_overflow(sess);
        row->overflows++;
        if (!overflow_retry(run, pr, body, row->sent_tokens, row->window, &err))
            break;
        row->retried = 1;
        prefix_free(&pfx);
        cJSON_Delete(oreq);
        oreq = NULL;
    }
    if (t->est_client == 0) /* the same for every arm: the client's request, translated as is */
        t->est_client = client != NULL ? client_estimate(client, &to) : -1;
    est_client = t->est_client;
    est_sent = ax_tokens_request(body);
    row->client_tokens = (int64_t)llround((double)est_client * factor);
    row->removed_tokens = row->client_tokens - row->sent_tokens;
    row->prefix_tokens =
        st->prev.n > 0 ? (int64_t)llround((double)prefix_common(&st->prev, &pfx) * factor) : 0;
    row->prev_tokens = st->prev_sent;
    if (run->up != NULL) {
        send_upstream(run, oreq, t, row);
        if (row->have_up)
            row->sent_tokens = row->up_prompt;
    }
    row->fits = row->sent_tokens <= row->window;
    row->pairs_ok = pairs_intact(body);
    row->cache_break = st->prev.n > 0 && row->prefix_tokens * 10 < st->prev_sent * 9;
    prefix_free(&st->prev);
    st->prev = pfx;
    st->prev_sent = row->sent_tokens;

    /* the monitor, fed as messages.c feeds it */
    ax_session_record_request(sess, ax_session_calibrated(sess, est_sent), (uint64_t)ti * 1000);
    ax_session_record_response(sess, est_sent, row->sent_tokens, t->completion);
    if (!row->fits && row->overflows == 0)
        ax_session_note_overflow(sess);
    if (t->response != NULL) {
        cJSON *resp = cJSON_Duplicate(t->response, 1);
        note_tool_calls(sess, body, t->response);
        run_hook(run, pr, AX_HOOK_RESPONSE, resp, &err);
        cJSON_Delete(resp);
    }
    ax_policy_req_free(pr);
    ax_session_unref(sess);
    cJSON_Delete(body);
    cJSON_Delete(oreq);
    cJSON_Delete(client);
    return;
fail_sess:
    ax_policy_req_free(pr);
    ax_session_unref(sess);
fail:
    row->failed = 1;
    snprintf(row->error, sizeof(row->error), "%d %s", err.status, err.message);
    cJSON_Delete(body);
    cJSON_Delete(oreq);
    cJSON_Delete(client);
}

/* ---- the command --------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: anthroxy replay --experiment FILE [--arms a,b] [--window N]\n"
               "                      [--upstream URL] [--max-tokens N] [--lua-dir DIR]\n"
               "                      [--dump-requests DIR] --out DIR RECORDING...\n"
               "Re-runs every recorded request (--record files, or directories of them) "
               "through each arm's chain\nand writes DIR/report.json, DIR/turns.csv and "
               "DIR/report.html (docs/experiments.md).\n");
}

static int arm_selected(const char *list, const char *name)
{
    const char *p = list;
    size_t n = strlen(name);

    if (list == NULL)
        return 1;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && strncmp(p, name, n) == 0)
            return 1;
        if (e == NULL)
            break;
        p = e + 1;
    }
    return 0;
}

static void progress(struct rp_run *run, int done, uint64_t t0, int final)
{
    double s = (double)(uv_hrtime() - t0) / 1e9;
    if (!run->tty && !final)
        return;
    fprintf(stderr, "%ssessions %d/%d, %lld turns, %.0f turns/s%s", run->tty ? "\r" : "", done,
            run->n_sessions, (long long)run->n_rows, s > 0 ? (double)run->n_rows / s : 0.0,
            final ? "\n" : "");
}

static int parse_args(struct rp_run *run, int argc, char **argv, char **exp_path, char **arms)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (a[0] != '-' || a[1] != '-') {
            run->paths[run->n_paths++] = argv[i];
            if (run->n_paths == RP_MAX_PATHS)
                return -1;
            continue;
        }
        if (v == NULL)
            return -1;
        if (strcmp(a, "--experiment") == 0)
            *exp_path = argv[++i];
        else if (strcmp(a, "--arms") == 0)
            *arms = argv[++i];
        else if (strcmp(a, "--window") == 0)
            run->window = strtoll(argv[++i], NULL, 10);
        else if (strcmp(a, "--upstream") == 0)
            run->upstream = argv[++i];
        else if (strcmp(a, "--max-tokens") == 0)
            run->max_tokens = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(a, "--out") == 0)
            run->out_dir = argv[++i];
        else if (strcmp(a, "--lua-dir") == 0)
            run->lua_dir = argv[++i];
        else if (strcmp(a, "--dump-requests") == 0)
            run->dump_dir = argv[++i];
        else
            return -1;
    }
    return *exp_path && run->out_dir && run->n_paths > 0 && run->max_tokens > 0 && run->window >= 0
               ? 0
               : -1;
}

static int open_arms(struct rp_run *run, const char *arms)
{
    int i;

    for (i = 0; i < run->exp->n_arms; i++)
        if (arm_selected(arms, run->exp->arms[i].name))
            run->n_arms++;
    if (run->n_arms == 0) {
        char names[512];
        ax_experiment_arm_names(run->exp, names, sizeof(names));
        fprintf(stderr, "anthroxy replay: --arms %s: no such arm (the experiment has %s)\n", arms,
                names);
        return -1;
    }
    run->arms = calloc((size_t)run->n_arms, sizeof(*run->arms));
    run->n_arms = 0;
    for (i = 0; i < run->exp->n_arms && run->arms; i++)
        if (arm_selected(arms, run->exp->arms[i].name) &&
            arm_open(run, &run->arms[run->n_arms++], &run->exp->arms[i]) < 0)
            return -1;
    return run->arms ? 0 : -1;
}

static int replay_all(struct rp_run *run)
{
    uint64_t t0 = uv_hrtime();
    int si, ai, ti, total = 0;

    for (si = 0; si < run->n_sessions; si++)
        total += run->sessions[si].n_turns;
    if ((run->rows = calloc((size_t)total * (size_t)run->n_arms + 1, sizeof(*run->rows))) == NULL)
        return -1;
    /* arm by arm within a session: with --upstream, each arm's turns follow one another as
     * they would in a live session, so the server's prompt cache sees that arm alone */
    for (si = 0; si < run->n_sessions; si++) {
        struct rp_session *s = &run->sessions[si];
        for (ai = 0; ai < run->n_arms; ai++) {
            struct rp_state st;
            memset(&st, 0, sizeof(st));
            for (ti = 0; ti < s->n_turns; ti++) {
                struct rp_row *row = &run->rows[run->n_rows++];
                row->session = si;
                row->turn = ti;
                row->arm = ai;
                replay_turn(run, &run->arms[ai], s, ti, &st, row);
            }
            prefix_free(&st.prev);
        }
        progress(run, si + 1, t0, 0);
    }
    run->elapsed_s = (double)(uv_hrtime() - t0) / 1e9;
    progress(run, run->n_sessions, t0, 1);
    return 0;
}

static void run_free(struct rp_run *run)
{
    int i, j;

    for (i = 0; i < run->n_arms; i++) {
        struct rp_arm *a = &run->arms[i];
        if (a->eng)
            ax_policy_engine_close(a->eng, NULL, NULL);
        if (a->mon)
            ax_monitor_free(a->mon);
        ax_config_free(&a->cfg);
    }
    if (run->up)
        ax_upstream_close(run->up, NULL, NULL);
    uv_run(&run->loop, UV_RUN_DEFAULT);
    uv_loop_close(&run->loop);
    for (i = 0; i < run->n_sessions; i++) {
        struct rp_session *s = &run->sessions[i];
        for (j = 0; j < s->n_turns; j++) {
            free(s->turns[j].body);
            free(s->turns[j].up);
            free(s->turns[j].tool_input);
            cJSON_Delete(s->turns[j].response);
        }
        free(s->turns);
        free(s->key);
        free(s->file);
    }
    for (i = 0; i < run->n_rows; i++)
        cJSON_Delete(run->rows[i].what);
    free(run->rows);
    free(run->sessions);
    free(run->arms);
    if (run->exp)
        ax_experiment_free(run->exp);
}

int ax_replay_main(int argc, char **argv)
{
    struct rp_run run;
    char *exp_path = NULL, *arms = NULL, err[1024];

    int rc = 1, i;

    memset(&run, 0, sizeof(run));
    run.max_tokens = 16;
    run.tty = isatty(2);
    if ((i = parse_args(&run, argc, argv, &exp_path, &arms)) != 0) {
        if (i < 0)
            usage(stderr);
        return i < 0 ? 2 : 0;
    }
    ax_log_set_level(AX_LOG_LVL_ERROR); /* the policies' own notes would drown the progress */
    uv_loop_init(&run.loop);
    mkdir(run.out_dir, 0755);
    if (run.dump_dir != NULL)
        mkdir(run.dump_dir, 0755);
    run.exp_path = exp_path;
    if (ax_experiment_load(exp_path, AX_POLICY_DIR, &run.exp, err, sizeof(err)) < 0) {
        fprintf(stderr, "anthroxy replay: %s\n", err);
        goto done;
    }
    if (run.upstream) {
        struct ax_upstream_opts uo;
        memset(&uo, 0, sizeof(uo));
        uo.base_url = run.upstream;
        uo.max_concurrent = 1;
        uo.connect_timeout_ms = 10000;
        uo.idle_timeout_ms = 600000;
        if (ax_upstream_new(&run.loop, &uo, &run.up) < 0) {
            fprintf(stderr, "anthroxy replay: --upstream %s: not a usable URL\n", run.upstream);
            goto done;
        }
    }
    if (open_arms(&run, arms) < 0)
        goto done;
    for (i = 0; i < run.n_paths; i++)
        if (load_path(&run, run.paths[i]) < 0)
            goto done;
    if (run.n_sessions == 0) {
        fprintf(stderr, "anthroxy replay: no recorded exchange in the given recordings\n");
        goto done;
    }
    if (replay_all(&run) < 0 || ax__replay_report(&run) < 0)
        goto done;
    rc = 0;
done:
    run_free(&run);
    return rc;
}
