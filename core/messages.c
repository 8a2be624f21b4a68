/* messages.c - the pipeline of POST /v1/messages (and count_tokens): parse, session,
 * on_request, translate, on_upstream_request, upstream transfer, then a complete answer or
 * a stream (first-byte hold, pings, backpressure), on_upstream_error's one retry,
 * on_response, monitor, summary log line. Every step that waits holds a request reference
 * and drops it in its completion, canceled or not. */
#include "anthroxy_experiment.h"
#include "anthroxy_fleet.h"
#include "anthroxy_hash.h"
#include "anthroxy_http.h"
#include "anthroxy_ids.h"
#include "anthroxy_json.h"
#include "anthroxy_log.h"
#include "anthroxy_models.h"
#include "anthroxy_messages.h"
#include "anthroxy_metrics.h"
#include "anthroxy_monitor.h"
#include "anthroxy_policy.h"
#include "anthroxy_record.h"
#include "anthroxy_server.h"
#include "anthroxy_session_share.h"
#include "anthroxy_state_redis.h"
#include "anthroxy_sse.h"
#include "anthroxy_stream.h"
#include "anthroxy_tokens.h"
#include "anthroxy_translate.h"
#include "anthroxy_upstream.h"

#include <llhttp.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AX_SSE_MAX_LINE (8 * 1024 * 1024)
#define AX_STREAM_OUT_MAX (4 * 1024 * 1024)
#define AX_ERROR_BODY_MAX (1024 * 1024)

/* What the client has been sent, which decides what each callback may still do. Policy
 * runs, transfers and timers come and go within a state (a retry after on_upstream_error
 * may follow a committed stream); each holds a request reference of its own. */
enum msg_state {
    MSG_PENDING,   /* nothing sent yet: a failure is an error answer */
    MSG_STREAMING, /* 200 and message_start sent: a failure is an SSE error event */
    MSG_ANSWERED,  /* the answer is complete; on_response may still run */
    MSG_CANCELED   /* the client went away or the server stops: nothing more is sent */
};

struct msg {
    struct ax_req *req;
    struct ax_server *srv;
    enum msg_state state;
    int count_only;
    int stream;
    int retried;
    int stream_failed; /* the upstream reported an error inside the stream */
    int hooks_running; /* a policy hook holds a reference */
    int timer_open;
    cJSON *body;           /* the Anthropic request (after on_request) */
    cJSON *oreq;           /* the OpenAI request */
    cJSON *final;          /* the answer as the client got it (or the stream's summary) */
    cJSON *shadow;         /* count_tokens: a copy the policies may change (and is dropped) */
    cJSON *stops;          /* stop_sequences, kept when the request is released mid-stream */
    cJSON *tools;          /* a complete answer's: the request's tools, kept past the 200 for
                              the text tool calls and schema checks of translate_response.c */
    cJSON *cm;             /* the answer's context_management ({"applied_edits":[...]}) */
    cJSON *compaction;     /* the compaction block the answer opens with, or NULL */
    cJSON *c_iter;         /* its usage.iterations entry (the summary call's usage), or NULL */
    int paused;            /* pause_after_compaction: the answer is that block alone */
    int client_cm;         /* the client sent context_management */
    int count_edited;      /* count_tokens of the request as context management edited it */
    int64_t count_cleared; /* the input tokens those edits cleared */
    int forced;            /* the request forced a tool call (tool_choice any or tool) */
    struct ax_buf obody;   /* its text, alive until curl is done with it (on_body_done) */
    int body_done;         /* curl will not read obody again */
    size_t body_len;       /* of the client's body: what the trees cost, roughly */
    int measuring;         /* counting the prompt with the upstream before the policies run */
    char model[256];       /* as the client named it */
    const char *upstream_model;
    char session_key[128];
    struct ax_session *session;
    struct ax_policy_req *preq;
    struct ax_xfer *xfer;
    /* the upstream of this attempt (fleet.c's choice) and what was tried before it */
    struct ax_upstream *up;
    struct ax_route route;
    cJSON *route_view;    /* on_route's third argument, alive while the hook runs */
    int failovers;        /* attempts moved to another replica before the first byte */
    int tools_text_tried; /* sent again with the tools as text (resend_tools_as_text) */
    int budget_denied;    /* a failover the retry budget refused */
    int fed;              /* stream bytes reached the translator: no failover any more */
    int up_status;
    int retry_after;
    struct ax_buf resp; /* a complete answer, or an error body */
    struct ax_sse sse;
    struct ax_stream st;
    int st_ready;
    struct ax_buf out;  /* Anthropic events waiting to be written */
    uv_timer_t timer;   /* first-byte hold, then pings */
    int64_t est_prompt; /* our estimate of the prompt sent (raw, uncalibrated) */
    double scale;       /* report_scale from the policies */
    int n_messages, n_tools;
    uint64_t t_sent_ns, t_first_ns, t_data_ns;
    int64_t prunes0, overflows0; /* the session's counts when the request came (metrics) */
    struct ax_usage usage;
    struct ax_error err;
    struct ax_rec *rx; /* --record: this exchange, else NULL (record.c) */

    /* the experiment's view of the request (figures for GET /v1/experiments) */
    char arm[AX_ARM_NAME_MAX]; /* "" until chosen */
    int64_t client_est;        /* estimate of the request as the client sent it */
    int overflows, tool_calls, tool_errors;
    uint64_t t_content_ns; /* the first byte of a 200 answer's content (time to first token) */
};

static void msg_fail(struct msg *m, const struct ax_error *err);
static void msg_begin(struct msg *m);
static void on_state_pulled(void *ud, int found);
static void msg_send_upstream(struct msg *m);
static void count_request(struct msg *m, int status, double up_ms, double total_ms,
                          const char *upstream);
static void run_on_response(struct msg *m, cJSON *resp);
static void add_iterations(struct msg *m, cJSON *resp);

/* ---- life cycle -------------------------------------------------------------------- */

/* The recording's line is written as the request goes: everything is known by now. */
static void record_finish(struct msg *m)
{
    struct ax_rec_end end = {m->up_status, &m->usage, m->final, -1, -1, 0};

    if (m->t_first_ns)
        end.ttfb_ms = (double)(m->t_first_ns - m->t_sent_ns) / 1e6;
    end.total_ms = (double)(uv_hrtime() - m->req->start_ns) / 1e6;
    end.canceled = m->state == MSG_CANCELED;
    ax_rec_finish(m->rx, &end);
}

/* Roughly what the request's trees and texts cost (a parsed tree is about three times its
 * text), for ax_trim_released. */
static size_t request_memory(const struct msg *m)
{
    return (m->body != NULL ? 3 * m->body_len : 0) + m->obody.cap;
}

static void msg_free(struct msg *m)
{
    if (m->rx)
        record_finish(m);
    ax_trim_released(&m->srv->trim, request_memory(m));
    if (m->preq)
        ax_policy_req_free(m->preq);
    if (m->session && m->srv->share) /* --workers: the other workers see this turn */
        ax_session_share_push(m->srv->share, m->session);
    if (m->session && m->srv->state) /* --state: the other instances too (never waited on) */
        ax_state_redis_push(m->srv->state, m->session);
    if (m->session)
        ax_session_unref(m->session);
    cJSON_Delete(m->body);
    cJSON_Delete(m->oreq);
    cJSON_Delete(m->final);
    cJSON_Delete(m->shadow);
    cJSON_Delete(m->stops);
    cJSON_Delete(m->tools);
    cJSON_Delete(m->route_view);
    cJSON_Delete(m->cm);
    cJSON_Delete(m->compaction);
    cJSON_Delete(m->c_iter);
    ax_buf_free(&m->obody);
    ax_buf_free(&m->resp);
    ax_buf_free(&m->out);
    ax_sse_free(&m->sse);
    if (m->st_ready)
        ax_stream_free(&m->st);
    free(m);
}

static void on_req_free(struct ax_req *req)
{
    msg_free(req->handler);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct msg *m = h->data;
    ax_req_unref(m->req);
}

static void close_timer(struct msg *m)
{
    if (m->timer_open) {
        m->timer_open = 0;
        uv_close((uv_handle_t *)&m->timer, on_timer_closed);
    }
}

static void open_timer(struct msg *m)
{
    if (m->timer_open)
        return;
    uv_timer_init(m->srv->loop, &m->timer);
    m->timer.data = m;
    m->timer_open = 1;
    ax_req_ref(m->req); /* dropped in on_timer_closed */
}

/* The client went away, or the server stops (request.c's registry cancels every request,
 * answered ones still in on_response too): stop all work and let go of the policy engine,
 * which closes after this. The caller holds a reference across the call. */
static void on_cancel(struct ax_req *req)
{
    struct msg *m = req->handler;

    AX_LOG_INFO(req, "client went away: canceling");
    if (m->state == MSG_PENDING || m->state == MSG_STREAMING)
        count_request(m, 499, -1, (double)(uv_hrtime() - req->start_ns) / 1e6, /* nginx's */
                      m->up ? ax_fleet_name(m->srv->fleet, m->route.idx) : "-");
    m->state = MSG_CANCELED;
    if (m->xfer)
        ax_xfer_cancel(m->xfer); /* on_done follows with AX_ECANCELED */
    if (m->preq) {
        ax_policy_req_free(m->preq); /* cancels a running hook: its done callback won't run */
        m->preq = NULL;
        if (m->hooks_running) {
            m->hooks_running = 0;
            ax_req_unref(req); /* the hook's reference */
        }
    }
    close_timer(m);
}

static void msg_fail(struct msg *m, const struct ax_error *err);

/* The server's grace period is over: a stream gets its event: error, a request waiting for
 * the upstream its error answer, before the connection closes (request.c's registry). */
static void on_abort(struct ax_req *req, const struct ax_error *err)
{
    struct msg *m = req->handler;

    if (m->state != MSG_STREAMING && !(m->state == MSG_PENDING && m->xfer != NULL))
        return;
    msg_fail(m, err);
    if (m->xfer)
        ax_xfer_cancel(m->xfer); /* on_done follows and finds the request answered */
}

/* The request's figures for its arm, once, with the summary line. */
static void record_figures(struct msg *m, int status, double total_ms)
{
    struct ax_exp_turn t;

    if (m->count_only || m->arm[0] == 0)
        return;
    memset(&t, 0, sizeof(t));
    t.arm = m->arm;
    t.status = status;
    t.client_tokens = m->client_est; /* -1: not measured (no experiment) */
    t.sent_estimate = m->est_prompt ? m->est_prompt : m->client_est;
    t.have_usage = m->usage.have;
    t.prompt_tokens = m->usage.prompt_tokens;
    t.cached_tokens = m->usage.cached_tokens;
    t.output_tokens = m->usage.completion_tokens;
    t.overflows = m->overflows;
    t.prompt_too_long = status == 400 && strncmp(m->err.message, "prompt is too long", 18) == 0;
    t.retried = m->retried;
    t.ttft_ms = m->t_content_ns ? (double)(m->t_content_ns - m->req->start_ns) / 1e6 : -1.0;
    t.total_ms = total_ms;
    t.tool_calls = m->tool_calls;
    t.tool_errors = m->tool_errors;
    ax_exp_stats_record(m->srv->exp_stats, &t);
}

/* The request's figures into /metrics, once, where its summary line is written. */
static void count_request(struct msg *m, int status, double up_ms, double total_ms,
                          const char *upstream)
{
    struct ax_metrics *mx = m->srv->metrics;
    struct ax_metric_labels l = {0};

    l.route = m->count_only ? "count_tokens" : "messages";
    l.status = status;
    l.model = m->model;
    l.upstream = upstream;
    l.arm = m->arm[0] ? m->arm : "default";
    ax_metrics_add(mx, AX_M_REQUESTS, &l, 1);
    ax_metrics_add(mx, AX_M_DURATION, &l, total_ms / 1e3);
    if (m->count_only)
        return;
    if (up_ms >= 0)
        ax_metrics_add(mx, AX_M_UPSTREAM_LATENCY, &l, up_ms / 1e3);
    if (m->stream && m->t_data_ns)
        ax_metrics_add(mx, AX_M_TTFT, &l, (double)(m->t_data_ns - m->req->start_ns) / 1e9);
    ax_metrics_add(mx, AX_M_TOKENS_IN, &l, (double)m->usage.prompt_tokens);
    ax_metrics_add(mx, AX_M_TOKENS_OUT, &l, (double)m->usage.completion_tokens);
    ax_metrics_add(mx, AX_M_TOKENS_CACHED, &l, (double)m->usage.cached_tokens);
    if (m->session && m->session->prune_count > m->prunes0)
        ax_metrics_add(mx, AX_M_PRUNES, &l, (double)(m->session->prune_count - m->prunes0));
    if (m->session && m->session->overflow_count > m->overflows0)
        ax_metrics_add(mx, AX_M_OVERFLOWS, &l,
                       (double)(m->session->overflow_count - m->overflows0));
    if (m->failovers)
        ax_metrics_add(mx, AX_M_FAILOVERS, &l, m->failovers);
    l.kind = "policy";
    if (m->retried)
        ax_metrics_add(mx, AX_M_RETRIES, &l, 1);
}

static void log_summary(struct msg *m, int status)
{
    double up_ms = m->t_first_ns ? (double)(m->t_first_ns - m->t_sent_ns) / 1e6 : -1.0;
    double total_ms = (double)(uv_hrtime() - m->req->start_ns) / 1e6;

    const char *upstream = m->up ? ax_fleet_name(m->srv->fleet, m->route.idx) : "-";
    struct ax_log_field f[] = {
        AX_LOG_STR("model", m->model),
        AX_LOG_STR("upstream_model", m->upstream_model),
        AX_LOG_STR("session", m->session_key),
        AX_LOG_STR("arm", m->arm[0] ? m->arm : "-"),
        AX_LOG_INT("messages", m->n_messages),
        AX_LOG_INT("tools", m->n_tools),
        AX_LOG_INT("stream", m->stream),
        AX_LOG_INT("status", status),
        AX_LOG_NUM("first_byte_ms", up_ms),
        AX_LOG_NUM("total_ms", total_ms),
        AX_LOG_INT("est_prompt", m->est_prompt),
        AX_LOG_INT("prompt", m->usage.prompt_tokens),
        AX_LOG_INT("cached", m->usage.cached_tokens),
        AX_LOG_INT("output", m->usage.completion_tokens),
        AX_LOG_STR("upstream", upstream),
        AX_LOG_STR("route", m->route.why[0] ? m->route.why : "-"),
        AX_LOG_INT("retried", 1),  /* only when it was */
        AX_LOG_INT("failover", 1), /* only when it was */
    };
    int n_f = (int)(sizeof(f) / sizeof(f[0])) - 2;

    if (m->retried)
        f[n_f++] = f[sizeof(f) / sizeof(f[0]) - 2];
    if (m->failovers)
        f[n_f++] = f[sizeof(f) / sizeof(f[0]) - 1];
    if (m->session && m->up) /* where the session's prefix is cached now (/v1/context) */
        snprintf(m->session->upstream, sizeof(m->session->upstream), "%s", upstream);
    count_request(m, status, up_ms, total_ms, upstream);
    AX_LOG_FIELDS(AX_LOG_LVL_INFO, m->req, m->count_only ? "count_tokens" : "messages", f, n_f);
    record_figures(m, status, total_ms);
}

/* ---- errors ------------------------------------------------------------------------ */

static void flush_out(struct msg *m)
{
    if (m->out.len > 0) {
        ax_http_stream_write(m->req, m->out.data, m->out.len);
        ax_buf_reset(&m->out);
    }
}

/* The answer goes out now: the state moves first, so that a cancel from a failing write
 * (which moves it to MSG_CANCELED) is not undone. */
static void answering(struct msg *m)
{
    m->state = MSG_ANSWERED;
    close_timer(m);
}

static void msg_fail(struct msg *m, const struct ax_error *err)
{
    enum msg_state was = m->state;

    if (was == MSG_ANSWERED || was == MSG_CANCELED)
        return;
    answering(m);
    ax_rec_error(m->rx, err);
    if (err != &m->err)
        m->err = *err; /* the figures read what the client got */
    AX_LOG_INFO(m->req, "error %d %s: %s", err->status, err->type, err->message);
    ax_metrics_note_error(m->srv->metrics, m->req->id, err->status, err->type, err->message);
    log_summary(m, err->status);
    if (was == MSG_STREAMING) {
        ax_stream_fail(&m->st, err, &m->out);
        flush_out(m);
        ax_http_stream_end(m->req);
    } else {
        ax_http_send_error(m->req, err);
    }
}

/* Appends why no other replica was tried, when a fleet had one. */
static void note_no_failover(struct msg *m, struct ax_error *err)
{
    size_t len = strlen(err->message);

    if (m->budget_denied && len + 1 < sizeof(err->message))
        snprintf(err->message + len, sizeof(err->message) - len,
                 " (retry budget exhausted: not failing over to another replica)");
}

static void fail_transfer(struct msg *m, int rc)
{
    struct ax_error err = {0};

    switch (rc) {
    case AX_ETIMEDOUT:
        if (!m->stream && m->srv->cfg.nonstream_timeout_ms > 0 &&
            uv_hrtime() - m->t_sent_ns >= m->srv->cfg.nonstream_timeout_ms * 1000000ull)
            ax_error_set(&err, 504, "api_error",
                         "upstream did not finish within %.0f s (nonstream-timeout): stream the "
                         "request for longer answers",
                         (double)m->srv->cfg.nonstream_timeout_ms / 1000.0);
        else
            ax_error_set(&err, 504, "api_error", "upstream timed out");
        break;
    case AX_EUPSTREAM:
        if (ax_fleet_count(m->srv->fleet) > 1 && m->up)
            ax_error_set(&err, 529, "overloaded_error", "upstream %s unreachable at %s",
                         ax_fleet_name(m->srv->fleet, m->route.idx), ax_upstream_root(m->up));
        else
            ax_error_set(&err, 529, "overloaded_error",
                         "upstream unreachable at %s after %d retries", m->srv->cfg.upstream_base,
                         m->srv->cfg.connect_retries);
        break;
    case AX_EBUSY:
        ax_error_set(&err, 529, "overloaded_error",
                     "too many requests waiting for an upstream slot");
        break;
    case AX_ETOOBIG:
        ax_error_set(&err, 502, "api_error", "upstream answer over the configured limit");
        break;
    default:
        ax_error_set(&err, 502, "api_error", "upstream connection failed: %s", ax_strerror(rc));
        break;
    }
    note_no_failover(m, &err);
    msg_fail(m, &err);
}

/* ---- policies ---------------------------------------------------------------------- */

static int run_hook(struct msg *m, enum ax_hook hook, cJSON *tree, const cJSON *aux,
                    ax_policy_done_fn done)
{
    int rc;

    ax_req_ref(m->req);
    m->hooks_running = 1;
    if ((rc = ax_policy_req_run(m->preq, hook, tree, aux, done, m)) < 0) {
        m->hooks_running = 0;
        ax_req_unref(m->req);
    }
    return rc;
}

/* Common prologue of hook completions: returns 1 when the pipeline should go on. */
static int hook_finished(struct msg *m, int rc, const struct ax_error *err)
{
    m->hooks_running = 0;
    if (m->state == MSG_ANSWERED || m->state == MSG_CANCELED)
        return 0;
    if (rc < 0) {
        struct ax_error e = {0};
        if (err && err->status)
            e = *err;
        else
            ax_error_set(&e, 500, "api_error", "policy failed");
        msg_fail(m, &e);
        return 0;
    }
    return 1;
}

static void on_response_done(struct ax_policy_req *pr, int rc, const struct ax_error *err, void *ud)
{
    struct msg *m = ud;

    (void)pr;
    (void)err;
    m->hooks_running = 0;
    if (rc < 0)
        AX_LOG_DEBUG(m->req, "on_response failed: %s", err ? err->message : "");
    ax_req_unref(m->req);
}

/* The tool-call decisions of the translation: one log line, and ctx.tool_calls. */
static void note_tool_stats(struct msg *m, const struct ax_toolcall_stats *ts)
{
    if (ts->text_calls || ts->repaired || ts->schema_failures)
        AX_LOG_INFO(m->req,
                    "decision tool_calls: text_calls=%u repaired=%u schema_failures=%u%s%s%s",
                    ts->text_calls, ts->repaired, ts->schema_failures,
                    ts->schema_failures ? " (passed on; first: " : "", ts->first_failure,
                    ts->schema_failures ? ")" : "");
    if (m->preq != NULL)
        ax_policy_req_set_tool_stats(m->preq, ts->text_calls, ts->repaired, ts->schema_failures,
                                     ts->first_failure);
}

static void run_on_response(struct msg *m, cJSON *resp)
{
    if (resp == NULL || m->state != MSG_ANSWERED)
        return;
    if (!ax_policy_engine_has_hook(m->srv->policies, AX_HOOK_RESPONSE))
        return;
    if (run_hook(m, AX_HOOK_RESPONSE, resp, NULL, on_response_done) < 0)
        AX_LOG_DEBUG(m->req, "on_response could not run");
}

/* ---- completion -------------------------------------------------------------------- */

/* The raw prompt estimate (ax_tokens_request), with the session's tools estimate reused while
 * the tools are unchanged: they are most of an agent's request and the same every turn. */
static int64_t estimate_prompt(struct msg *m)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(m->body, "tools");

    if (m->session == NULL)
        return ax_tokens_request(m->body);
    return ax_tokens_system(m->body) + ax_session_tools_tokens(m->session, tools) +
           ax_tokens_messages(m->body);
}

/* Records the turn in the monitor: real prompt size, calibration, tool-call fingerprints. */
static void record_turn(struct msg *m, const cJSON *resp)
{
    uint64_t fps[16];
    int n = 0;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(resp, "content"), *blk;

    if (m->session == NULL)
        return;
    if (m->usage.have)
        ax_session_record_response(m->session, m->est_prompt, m->usage.prompt_tokens,
                                   m->usage.completion_tokens);
    cJSON_ArrayForEach(blk, content)
    {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(blk, "type");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(blk, "name");
        const cJSON *input = cJSON_GetObjectItemCaseSensitive(blk, "input");
        char *in;
        uint64_t h;
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "tool_use") != 0)
            continue;
        m->tool_calls++;
        if (n >= 16)
            continue;
        h = ax_fnv1a(name && cJSON_IsString(name) ? name->valuestring : "",
                     name && cJSON_IsString(name) ? strlen(name->valuestring) : 0, AX_FNV1A_INIT);
        if ((in = cJSON_PrintUnformatted(input)) != NULL) {
            h = ax_fnv1a(in, strlen(in), h);
            cJSON_free(in);
        }
        fps[n++] = h;
    }
    ax_session_note_tool_calls(m->session, fps, n, m->forced);
}

/* After the answer went out (answering() came first). */
static void finish_ok(struct msg *m, cJSON *resp, int status)
{
    m->final = resp; /* freed with m: on_response reads it after the client has it */
    record_turn(m, resp);
    log_summary(m, status);
    run_on_response(m, resp);
}

static void complete_nonstream(struct msg *m)
{
    struct ax_error err = {0};
    struct ax_response_opts ro;
    struct ax_toolcall_stats ts;
    cJSON *oresp, *resp = NULL;

    if ((oresp = ax_json_parse(m->resp.data ? m->resp.data : "", m->resp.len, &err)) == NULL) {
        ax_error_set(&err, 502, "api_error", "upstream answered with invalid JSON");
        msg_fail(m, &err);
        return;
    }
    ax_usage_from_openai(cJSON_GetObjectItemCaseSensitive(oresp, "usage"), &m->usage);
    ax_rec_timings(m->rx, cJSON_GetObjectItemCaseSensitive(oresp, "timings"));
    memset(&ro, 0, sizeof(ro));
    ro.client_model = m->model;
    ro.stop_sequences = m->stops; /* the request itself was released at the 200 */
    ro.usage_scale = m->scale;
    ro.reasoning_fallback = m->srv->cfg.reasoning_fallback;
    ro.tools = m->body ? cJSON_GetObjectItemCaseSensitive(m->body, "tools") : m->tools;
    ro.stats = &ts;
    memset(&ts, 0, sizeof(ts));
    ro.compaction = m->compaction;
    ro.context_management = m->cm;
    if (ax_translate_response(oresp, &ro, &resp, &err) < 0) {
        cJSON_Delete(oresp);
        if (err.status == 0)
            ax_error_set(&err, 502, "api_error", "could not translate the upstream answer");
        msg_fail(m, &err);
        return;
    }
    cJSON_Delete(oresp);
    add_iterations(m, resp);
    answering(m);
    ax_http_send_json(m->req, 200, resp);
    note_tool_stats(m, &ts);
    finish_ok(m, resp, 200);
}

static void complete_stream(struct msg *m)
{
    struct ax_error err = {0};
    cJSON *summary;

    if (ax_sse_finish(&m->sse))
        AX_LOG_DEBUG(m->req, "upstream stream ended mid-event");
    if (ax_stream_end(&m->st, &m->out, &err) < 0) {
        msg_fail(m, &err);
        return;
    }
    m->usage = m->st.usage;
    answering(m);
    flush_out(m);
    ax_http_stream_end(m->req);
    summary = ax_stream_summary(&m->st);
    note_tool_stats(m, &m->st.tool_stats);
    finish_ok(m, summary, 200);
}

static void on_upstream_error_done(struct ax_policy_req *pr, int rc, const struct ax_error *err,
                                   void *ud)
{
    struct msg *m = ud;

    (void)pr;
    if (hook_finished(m, rc, err)) {
        if (rc == 1) {
            AX_LOG_INFO(m->req, "policy asked to retry after the upstream error");
            m->retried = 1;
            msg_send_upstream(m);
        } else {
            msg_fail(m, &m->err);
        }
    }
    ax_req_unref(m->req);
}

/* When the tools and system prompt alone (nearly) fill the window, no pruning can help:
 * say so in the overflow error, so the operator raises the server's context. */
static void note_fixed_part(struct msg *m, int64_t n_prompt, int64_t n_ctx)
{
    int64_t est = ax_tokens_request(m->body), fixed = ax_tokens_fixed(m->body);
    size_t len = strlen(m->err.message);

    if (est > 0 && n_prompt > 0)
        fixed = fixed * n_prompt / est; /* scaled by the upstream's real count */
    if (fixed * 10 < n_ctx * 9 || len + 1 >= sizeof(m->err.message))
        return;
    snprintf(m->err.message + len, sizeof(m->err.message) - len,
             " (the tools and system prompt alone take about %lld tokens of the %lld-token "
             "window: raise the model server's context size, or lower its parallel slots)",
             (long long)fixed, (long long)n_ctx);
}

/* llama-server without --jinja refuses any request with tools (500 "tools param requires
 * --jinja flag"): from now on that upstream gets them as text (tools_as_text.c), and this
 * request is sent again so. 1 when it was. */
static int resend_tools_as_text(struct msg *m)
{
    const cJSON *tools = m->body ? cJSON_GetObjectItemCaseSensitive(m->body, "tools") : NULL;
    size_t i = m->route.idx;

    if (m->up_status != 500 || m->tools_text_tried || i >= 64 || !cJSON_IsArray(tools) ||
        tools->child == NULL || m->resp.data == NULL || strstr(m->resp.data, "--jinja") == NULL)
        return 0;
    m->tools_text_tried = 1;
    if (!(m->srv->tools_as_text >> i & 1))
        AX_LOG_WARN(m->req,
                    "upstream %s takes no tools (llama-server without --jinja): tools go to it "
                    "as text in the system prompt from now on (start it with --jinja for "
                    "native tool calls)",
                    ax_fleet_name(m->srv->fleet, i));
    m->srv->tools_as_text |= (uint64_t)1 << i;
    msg_send_upstream(m);
    return 1;
}

/* A non-2xx upstream answer: map it, and give on_upstream_error one chance to retry. */
static void handle_upstream_status(struct msg *m)
{
    int64_t n_prompt = 0, n_ctx = 0;
    cJSON *aux;

    if (resend_tools_as_text(m))
        return;

    memset(&m->err, 0, sizeof(m->err));
    ax_translate_upstream_error(m->up_status, m->resp.data ? m->resp.data : "", m->resp.len,
                                m->retry_after, &m->err, &n_prompt, &n_ctx);
    AX_LOG_WARN(m->req, "upstream answered %d: %.300s", m->up_status,
                m->resp.data ? m->resp.data : "");
    if (n_ctx > 0)
        m->overflows++;
    if (n_ctx > 0 && m->session)
        ax_session_note_overflow(m->session);
    if (n_ctx > 0 && m->body != NULL)
        note_fixed_part(m, n_prompt, n_ctx);
    note_no_failover(m, &m->err);
    if (m->retried || !ax_policy_engine_has_hook(m->srv->policies, AX_HOOK_UPSTREAM_ERROR)) {
        msg_fail(m, &m->err);
        return;
    }
    aux = cJSON_CreateObject();
    cJSON_AddNumberToObject(aux, "status", m->err.status);
    cJSON_AddNumberToObject(aux, "upstream_status", m->up_status);
    cJSON_AddStringToObject(aux, "type", m->err.type);
    cJSON_AddStringToObject(aux, "message", m->err.message);
    if (n_ctx > 0) {
        cJSON_AddNumberToObject(aux, "n_prompt_tokens", (double)n_prompt);
        cJSON_AddNumberToObject(aux, "n_ctx", (double)n_ctx);
    }
    if (run_hook(m, AX_HOOK_UPSTREAM_ERROR, m->body, aux, on_upstream_error_done) < 0)
        msg_fail(m, &m->err);
    cJSON_Delete(aux); /* the engine copies what it needs before returning */
}

/* ---- the upstream transfer --------------------------------------------------------- */

static void on_ping(uv_timer_t *t)
{
    struct msg *m = t->data;

    if (m->state != MSG_STREAMING)
        return;
    ax_stream_ping(&m->out);
    flush_out(m);
}

/* Sends 200, message_start and a first ping; errors from now on are SSE events. */
static void commit_stream(struct msg *m)
{
    if (m->state != MSG_PENDING)
        return;
    m->state = MSG_STREAMING;
    ax_http_stream_begin(m->req, 200, "text/event-stream; charset=utf-8",
                         "Cache-Control: no-cache\r\n");
    ax_stream_begin(&m->st, &m->out);
    ax_stream_ping(&m->out);
    flush_out(m);
    if (m->timer_open && m->srv->cfg.ping_interval_ms > 0)
        uv_timer_start(&m->timer, on_ping, m->srv->cfg.ping_interval_ms,
                       m->srv->cfg.ping_interval_ms);
}

static void on_hold_over(uv_timer_t *t)
{
    commit_stream(t->data);
}

/* The printed body goes once the request is released and curl is done with it, which
 * upstream.c says (on_body_done): an upstream may answer before it has read it all, and
 * curl would then still be reading it. */
static void release_obody(struct msg *m)
{
    if (m->body != NULL || !m->body_done || m->obody.cap == 0)
        return;
    ax_trim_released(&m->srv->trim, m->obody.cap);
    ax_buf_free(&m->obody);
}

static void on_body_done(struct ax_xfer *x, void *ud)
{
    struct msg *m = ud;

    (void)x;
    m->body_done = 1;
    release_obody(m);
}

/* Once the upstream answers 200 the request is of no more use: no retry can follow (only an
 * error status gets on_upstream_error), and on_response sees the answer, not the request.
 * Dropping the trees, and the printed body once curl is done with it, keeps a held
 * request's memory to the translator, the reader and curl's buffers, whatever the size of
 * the conversation; the freed memory goes back to the system (ax_trim_released). */
static void release_request(struct msg *m)
{
    if (m->body == NULL)
        return;
    ax_trim_released(&m->srv->trim, request_memory(m) - m->obody.cap);
    m->stops = cJSON_DetachItemFromObjectCaseSensitive(m->body, "stop_sequences");
    cJSON_Delete(m->oreq); /* may share nodes with body: never read after this */
    m->oreq = NULL;
    if (!m->stream)
        m->tools = cJSON_DetachItemFromObjectCaseSensitive(m->body, "tools");
    else if (m->st_ready &&
             ax_stream_keep_tools_take(
                 &m->st, cJSON_DetachItemFromObjectCaseSensitive(m->body, "tools")) < 0)
        AX_LOG_WARN(m->req, "out of memory keeping the tools: text tool calls stay text");
    cJSON_Delete(m->body);
    m->body = NULL;
    release_obody(m);
}

static int on_headers(struct ax_xfer *x, int status, int retry_after, void *ud)
{
    struct msg *m = ud;

    (void)x;
    m->up_status = status;
    m->retry_after = retry_after;
    m->t_first_ns = uv_hrtime();
    if (m->state == MSG_CANCELED)
        return AX_ECANCELED;
    if (status == 200) {
        if (m->stream)
            commit_stream(m);
        release_request(m);
    }
    return 0;
}

static int on_sse_event(const char *event, const char *data, size_t len, void *ud)
{
    struct msg *m = ud;
    int rc;

    (void)event;
    ax_rec_upstream_chunk(m->rx, data, len);
    rc = ax_stream_feed(&m->st, data, len, &m->out, &m->err);
    if (rc == AX_EUPSTREAM)
        m->stream_failed = 1;
    return rc;
}

static void on_drain(struct ax_req *req)
{
    struct msg *m = req->handler;

    req->on_drain = NULL;
    if (m->xfer)
        ax_xfer_resume(m->xfer);
}

static int on_data(struct ax_xfer *x, const char *p, size_t n, void *ud)
{
    struct msg *m = ud;
    int rc;

    (void)x;
    if (m->state == MSG_CANCELED)
        return AX_ECANCELED;
    if (m->up_status == 200 && m->t_content_ns == 0)
        m->t_content_ns = uv_hrtime();
    if (m->up_status != 200 || !m->stream) {
        size_t max = m->up_status == 200 ? m->srv->cfg.max_response_bytes : AX_ERROR_BODY_MAX;
        if (m->resp.len + n > max)
            return m->up_status == 200 ? AX_ETOOBIG : 0; /* error bodies: keep the head */
        return ax_buf_append(&m->resp, p, n) < 0 ? AX_ENOMEM : 0;
    }
    /* Decide to pause before feeding anything: a paused callback has consumed nothing. */
    if (ax_http_queued(m->req) > m->srv->cfg.write_high_water) {
        m->req->on_drain = on_drain;
        return AX_EAGAIN;
    }
    m->fed = 1;
    if (m->t_data_ns == 0)
        m->t_data_ns = uv_hrtime();
    rc = ax_sse_feed(&m->sse, p, n, on_sse_event, m);
    flush_out(m);
    if (m->timer_open && m->srv->cfg.ping_interval_ms > 0)
        uv_timer_again(&m->timer); /* pings only while the upstream is silent */
    if (rc < 0 && !m->stream_failed) {
        ax_error_set(&m->err, 502, "api_error", "upstream stream unreadable: %s", ax_strerror(rc));
        m->stream_failed = 1;
    }
    return rc < 0 ? rc : 0;
}

static int pick_route(struct msg *m, struct ax_error *err);

/* Whether this attempt failed before the upstream's first byte in a way another replica may
 * not share: refused or unreachable, reset or timed out before the headers, 502/503/504
 * (a llama-server loading its model answers 503). */
static int failed_early(const struct msg *m, int rc)
{
    if (rc == AX_EUPSTREAM || ((rc == AX_EIO || rc == AX_ETIMEDOUT) && m->up_status == 0))
        return 1;
    return rc == 0 && (m->up_status == 502 || m->up_status == 503 || m->up_status == 504);
}

/* Tells the fleet how the attempt went; moves the request to another replica when it failed
 * early, nothing reached the client's translator and the retry budget allows. Returns 1 when
 * a new attempt started (or failed on its own). */
static int failover(struct msg *m, int rc)
{
    struct ax_fleet *fl = m->srv->fleet;
    uint64_t now = uv_now(m->srv->loop);
    struct ax_route saved = m->route;
    struct ax_error err = {0};

    if (rc == AX_ECANCELED || m->up == NULL)
        return 0;
    if (!failed_early(m, rc)) {
        if (rc == 0 && m->up_status < 500)
            ax_fleet_report(fl, m->route.idx, 1, now);
        return 0;
    }
    ax_fleet_report(fl, m->route.idx, 0, now);
    if (m->fed || m->body == NULL || m->stream_failed || ax_fleet_count(fl) < 2)
        return 0;
    if (pick_route(m, &err) < 0) {
        m->route = saved; /* no other replica: the error names the one that failed */
        m->up = ax_fleet_upstream(fl, saved.idx);
        return 0;
    }
    if (!ax_fleet_retry_take(fl, now)) {
        m->budget_denied = 1;
        m->route = saved;
        m->up = ax_fleet_upstream(fl, saved.idx);
        return 0;
    }
    AX_LOG_WARN(m->req,
                "upstream %s failed before its first byte (%s, status %d): failing over to %s",
                ax_fleet_name(fl, saved.idx), rc < 0 ? ax_strerror(rc) : "answered", m->up_status,
                ax_fleet_name(fl, m->route.idx));
    m->failovers++;
    msg_send_upstream(m);
    return 1;
}

static void on_done(struct ax_xfer *x, int rc, void *ud)
{
    struct msg *m = ud;

    (void)x;
    m->xfer = NULL;
    switch (m->state) {
    case MSG_PENDING:
    case MSG_STREAMING:
        break;
    case MSG_ANSWERED:
    case MSG_CANCELED:
        ax_req_unref(m->req);
        return;
    }
    if (failover(m, rc)) {
        ax_req_unref(m->req);
        return;
    }
    if (m->stream_failed)
        msg_fail(m, &m->err);
    else if (rc < 0)
        fail_transfer(m, rc);
    else if (m->up_status != 200)
        handle_upstream_status(m);
    else if (m->stream)
        complete_stream(m);
    else
        complete_nonstream(m);
    ax_req_unref(m->req);
}

static const struct ax_xfer_cbs xfer_cbs = {on_headers, on_data, on_done, on_body_done};

static void start_transfer(struct msg *m)
{
    struct ax_xfer_spec spec;
    int rc;

    memset(&spec, 0, sizeof(spec));
    spec.method = "POST";
    spec.path = "/v1/chat/completions";
    spec.body = m->obody.data;
    spec.body_len = m->obody.len;
    spec.request_id = m->req->id; /* the client's request-id, so both logs join on it */
    /* A non-streaming answer trickled out never trips the idle timeout: bound the whole. */
    if (!m->stream && m->srv->cfg.nonstream_timeout_ms > 0 &&
        (m->srv->cfg.total_timeout_ms == 0 ||
         m->srv->cfg.nonstream_timeout_ms < m->srv->cfg.total_timeout_ms))
        spec.total_timeout_ms = m->srv->cfg.nonstream_timeout_ms;
    m->up_status = 0;
    m->body_done = 0;
    ax_buf_reset(&m->resp);
    m->t_sent_ns = uv_hrtime();
    m->t_first_ns = 0;
    ax_req_ref(m->req);
    if ((rc = ax_upstream_start(m->up, &spec, &xfer_cbs, m, &m->xfer)) < 0) {
        m->xfer = NULL;
        ax_req_unref(m->req);
        fail_transfer(m, rc);
        return;
    }
    if (m->stream && m->state == MSG_PENDING) {
        open_timer(m);
        uv_timer_start(&m->timer, on_hold_over, m->srv->cfg.first_byte_hold_ms,
                       m->srv->cfg.ping_interval_ms);
    }
}

/* Prints the OpenAI request once and starts the transfer. */
static void send_translated(struct msg *m)
{
    ax_buf_reset(&m->obody);
    if (ax_json_print(m->oreq, &m->obody) < 0) {
        struct ax_error e = {0};
        ax_error_set(&e, 500, "api_error", "out of memory printing the upstream request");
        msg_fail(m, &e);
        return;
    }
    AX_LOG_DEBUG(m->req, "upstream request: %zu bytes", m->obody.len);
    ax_rec_upstream_request(m->rx, m->obody.data, m->obody.len,
                            m->up ? ax_models_window(&m->srv->cfg, m->up, NULL) : 0);
    /* Printed: the OpenAI tree is of no more use (a retry translates the request again). It
     * refers to the Anthropic tree's schemas when shared, so that one stays whole. */
    cJSON_Delete(m->oreq);
    m->oreq = NULL;
    start_transfer(m);
}

static void on_upstream_request_done(struct ax_policy_req *pr, int rc, const struct ax_error *err,
                                     void *ud)
{
    struct msg *m = ud;

    (void)pr;
    if (hook_finished(m, rc, err))
        send_translated(m);
    ax_req_unref(m->req);
}

/* Translate, on_upstream_request, send. Also the retry path after on_upstream_error. */
/* Initialises m->st, with what the context-management policies reported. */
static int stream_init(struct msg *m, struct ax_stream_opts *so)
{
    struct ax_error err = {0};
    char *cm = m->cm ? cJSON_PrintUnformatted(m->cm) : NULL, *iter = NULL;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m->compaction, "content");
    int rc = 0;

    so->context_management = cm;
    so->compaction = m->compaction != NULL;
    so->compaction_content = cJSON_IsString(content) ? content->valuestring : NULL;
    if (m->c_iter && (iter = cJSON_PrintUnformatted(m->c_iter)) == NULL)
        rc = AX_ENOMEM;
    so->compaction_usage = iter;
    if (rc == 0)
        rc = (m->cm && cm == NULL) ? AX_ENOMEM : ax_stream_init(&m->st, so);
    cJSON_free(cm);
    cJSON_free(iter);
    if (rc < 0) {
        ax_error_set(&err, 500, "api_error", "out of memory");
        msg_fail(m, &err);
        return rc;
    }
    m->st_ready = 1;
    return 0;
}

/* pause_after_compaction: the answer is the compaction block alone, stop_reason
 * "compaction"; the client sends the conversation again, compacted, to go on. */
static void answer_paused(struct msg *m)
{
    cJSON *resp = cJSON_CreateObject(), *usage;
    char id[64];

    if (m->stream) {
        commit_stream(m);
        ax_stream_end_paused(&m->st, &m->out);
        answering(m);
        flush_out(m);
        ax_http_stream_end(m->req);
        finish_ok(m, ax_stream_summary(&m->st), 200);
        cJSON_Delete(resp);
        return;
    }
    ax_id_make(id, sizeof(id), "msg_");
    cJSON_AddStringToObject(resp, "id", id);
    cJSON_AddStringToObject(resp, "type", "message");
    cJSON_AddStringToObject(resp, "role", "assistant");
    cJSON_AddStringToObject(resp, "model", m->model);
    cJSON_AddItemToObject(resp, "content", cJSON_CreateArray());
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(resp, "content"),
                         cJSON_Duplicate(m->compaction, 1));
    cJSON_AddStringToObject(resp, "stop_reason", "compaction");
    cJSON_AddNullToObject(resp, "stop_sequence");
    usage = cJSON_AddObjectToObject(resp, "usage");
    ax_usage_add_anthropic(usage, &m->usage, m->scale);
    if (m->cm)
        cJSON_AddItemToObject(resp, "context_management", cJSON_Duplicate(m->cm, 1));
    add_iterations(m, resp);
    answering(m);
    ax_http_send_json(m->req, 200, resp);
    finish_ok(m, resp, 200);
}

static void msg_send_upstream(struct msg *m)
{
    struct ax_translate_opts to;
    struct ax_error err = {0};

    m->upstream_model = m->route.upstream_model;
    memset(&to, 0, sizeof(to));
    to.upstream_model = m->upstream_model;
    to.llama_server = ax_fleet_llama_server(m->srv->fleet, m->route.idx);
    to.stream = m->stream;
    to.forward_user_id = m->srv->cfg.forward_user_id;
    to.tools_as_text = m->route.idx < 64 && (m->srv->tools_as_text >> m->route.idx & 1);
    /* Without an on_upstream_request hook nothing edits the OpenAI tree before it is
     * printed, so it can share the tool schemas with the Anthropic tree instead of copying
     * them (most of Claude Code's 80 KB). */
    to.share = !ax_policy_engine_has_hook(m->srv->policies, AX_HOOK_UPSTREAM_REQUEST);
    cJSON_Delete(m->oreq);
    m->oreq = NULL;
    if (ax_translate_request(m->body, &to, &m->oreq, &err) < 0) {
        msg_fail(m, &err);
        return;
    }
    m->est_prompt = estimate_prompt(m);
    {
        const cJSON *tct = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(m->body, "tool_choice"), "type");
        m->forced = cJSON_IsString(tct) &&
                    (strcmp(tct->valuestring, "any") == 0 || strcmp(tct->valuestring, "tool") == 0);
    }
    if (m->session && !m->retried && !m->failovers) /* a retry is the same turn */
        ax_session_record_request(m->session, ax_session_calibrated(m->session, m->est_prompt),
                                  uv_now(m->srv->loop));
    if (m->stream && !m->st_ready) {
        struct ax_stream_opts so;
        memset(&so, 0, sizeof(so));
        so.model = m->model;
        so.input_estimate =
            m->session ? ax_session_calibrated(m->session, m->est_prompt) : m->est_prompt;
        so.usage_scale = m->scale;
        so.reasoning_fallback = m->srv->cfg.reasoning_fallback;
        so.stop_sequences = cJSON_GetObjectItemCaseSensitive(m->body, "stop_sequences");
        so.tools = cJSON_GetObjectItemCaseSensitive(m->body, "tools");
        if (stream_init(m, &so) < 0)
            return;
    } else if (m->stream) { /* a retry: its policy may have replaced the tools */
        ax_stream_set_tools(&m->st, cJSON_GetObjectItemCaseSensitive(m->body, "tools"));
    }
    if (m->paused) {
        answer_paused(m);
        return;
    }
    if (!ax_policy_req_has_hook(m->preq, AX_HOOK_UPSTREAM_REQUEST)) {
        send_translated(m); /* no hook to wait a loop turn for */
        return;
    }
    if (run_hook(m, AX_HOOK_UPSTREAM_REQUEST, m->oreq, NULL, on_upstream_request_done) < 0) {
        ax_error_set(&err, 500, "api_error", "policy engine unavailable");
        msg_fail(m, &err);
    }
}

/* ---- count_tokens ------------------------------------------------------------------ */

static void answer_count(struct msg *m, int64_t n, const char *how)
{
    char body[128];
    int len;
    int64_t scaled = (int64_t)llround((double)n * m->scale);
    int64_t original = (int64_t)llround((double)(n + m->count_cleared) * m->scale);

    answering(m);
    m->usage.prompt_tokens = n;
    if (m->count_edited)
        len = snprintf(body, sizeof(body),
                       "{\"input_tokens\":%lld,\"context_management\":"
                       "{\"original_input_tokens\":%lld}}",
                       (long long)scaled, (long long)original);
    else
        len = snprintf(body, sizeof(body), "{\"input_tokens\":%lld}", (long long)scaled);
    AX_LOG_DEBUG(m->req, "count_tokens: %lld (%s), reported %lld", (long long)n, how,
                 (long long)scaled);
    log_summary(m, 200);
    ax_http_respond(m->req, 200, "application/json", NULL, body, (size_t)len);
}

static void msg_start(struct msg *m);

/* Below this estimate a prompt is not worth a round trip: nothing to prune there. */
#define AX_MEASURE_MIN_TOKENS 1024

/* The prompt was counted by the upstream (n > 0), or could not be (n <= 0: the estimate
 * stands): this turn's factor is the real ratio, so proactive pruning fires at its
 * threshold even when the estimator is far off for this model. */
static void measured(struct msg *m, int64_t n)
{
    int64_t est = estimate_prompt(m);

    m->measuring = 0;
    memset(&m->route, 0, sizeof(m->route)); /* the real pick starts afresh, after on_route */
    m->up = NULL;
    cJSON_Delete(m->oreq); /* translated again after on_request */
    m->oreq = NULL;
    ax_buf_reset(&m->obody);
    if (n > 0 && m->session != NULL) {
        ax_session_set_measured(m->session, est, n);
        AX_LOG_INFO(m->req,
                    "prompt counted with the upstream's /tokenize: %lld tokens for an "
                    "estimate of %lld (factor %.3f)",
                    (long long)n, (long long)est, m->session->calibration);
    } else {
        AX_LOG_INFO(m->req, "the upstream could not count the prompt: the estimate stands");
    }
    msg_start(m);
}

/* Is this prompt worth counting with the upstream before the policies decide on it? Only
 * llama-server has /tokenize and /apply-template, and only a session whose estimate was
 * off (at the clamp, or wrong by more than tokenize_off_ratio on the last turn). */
static int want_measure(struct msg *m)
{
    /* the estimate walks the whole conversation: only once the cheap tests passed */
    return m->session != NULL && m->srv->cfg.tokenize_off_ratio > 0 &&
           ax_upstream_info(m->srv->up)->llama_server &&
           ax_session_estimate_off(m->session, m->srv->cfg.tokenize_off_ratio) &&
           estimate_prompt(m) >= AX_MEASURE_MIN_TOKENS;
}

static void count_by_estimate(struct msg *m)
{
    if (m->measuring) {
        measured(m, -1);
        return;
    }
    int64_t n = estimate_prompt(m);
    if (m->session)
        n = ax_session_calibrated(m->session, n);
    answer_count(m, n, "estimate");
}

/* count_tokens waits for the upstream as any request would; a count before the policies is
 * a refinement, bounded by tokenize_timeout (each of the two calls). */
static uint64_t count_timeout(const struct msg *m)
{
    return m->measuring ? m->srv->cfg.tokenize_timeout_ms : 30000;
}

static void on_tokenized(int rc, int status, const char *body, size_t len, void *ud)
{
    struct msg *m = ud;
    cJSON *j = NULL, *toks;

    m->xfer = NULL;
    if (m->state == MSG_PENDING) {
        if (rc == 0 && status == 200 && (j = cJSON_ParseWithLength(body, len)) != NULL &&
            cJSON_IsArray(toks = cJSON_GetObjectItemCaseSensitive(j, "tokens"))) {
            if (m->measuring)
                measured(m, cJSON_GetArraySize(toks));
            else
                answer_count(m, cJSON_GetArraySize(toks), "upstream /tokenize");
        } else {
            count_by_estimate(m);
        }
    }
    cJSON_Delete(j);
    ax_req_unref(m->req);
}

static void on_templated(int rc, int status, const char *body, size_t len, void *ud)
{
    struct msg *m = ud;
    cJSON *j = NULL, *prompt, *tok = NULL;

    m->xfer = NULL;
    if (m->state != MSG_PENDING)
        goto done;
    if (rc != 0 || status != 200 || (j = cJSON_ParseWithLength(body, len)) == NULL ||
        !cJSON_IsString(prompt = cJSON_GetObjectItemCaseSensitive(j, "prompt"))) {
        count_by_estimate(m);
        goto done;
    }
    tok = cJSON_CreateObject();
    cJSON_AddItemToObject(tok, "content", cJSON_DetachItemViaPointer(j, prompt));
    ax_buf_reset(&m->obody);
    ax_json_print(tok, &m->obody);
    ax_req_ref(m->req);
    if (ax_upstream_fetch(m->up, "POST", "/tokenize", m->obody.data, m->obody.len, count_timeout(m),
                          on_tokenized, m, &m->xfer) < 0) {
        ax_req_unref(m->req);
        count_by_estimate(m);
    }
done:
    cJSON_Delete(j);
    cJSON_Delete(tok);
    ax_req_unref(m->req);
}

/* Exact where the upstream can tell: llama-server renders the prompt with its own chat
 * template (/apply-template) and counts it (/tokenize); tools and tool results count. */
static void count_tokens(struct msg *m)
{
    struct ax_translate_opts to;
    struct ax_error err = {0};
    cJSON *tpl;
    int llama;

    if (m->measuring) {
        /* a refinement before the policies: the default upstream counts, and the request's
         * own pick (after on_route, with its load and affinity) is still to come */
        m->up = m->srv->up;
        llama = ax_upstream_info(m->up)->llama_server;
    } else if (pick_route(m, &err) < 0) {
        msg_fail(m, &err);
        return;
    } else {
        llama = ax_fleet_llama_server(m->srv->fleet, m->route.idx);
    }
    memset(&to, 0, sizeof(to));
    to.upstream_model = m->route.upstream_model;
    to.llama_server = llama;
    to.share = 1; /* only printed */
    if (ax_translate_request(m->body, &to, &m->oreq, &err) < 0) {
        if (m->measuring)
            measured(m, -1); /* the error is the policies' to fix, or answered after them */
        else
            msg_fail(m, &err);
        return;
    }
    if (!llama) {
        count_by_estimate(m);
        return;
    }
    tpl = cJSON_CreateObject();
    cJSON_AddItemReferenceToObject(tpl, "messages",
                                   cJSON_GetObjectItemCaseSensitive(m->oreq, "messages"));
    if (cJSON_GetObjectItemCaseSensitive(m->oreq, "tools"))
        cJSON_AddItemReferenceToObject(tpl, "tools",
                                       cJSON_GetObjectItemCaseSensitive(m->oreq, "tools"));
    ax_buf_reset(&m->obody);
    ax_json_print(tpl, &m->obody);
    cJSON_Delete(tpl);
    ax_req_ref(m->req);
    if (ax_upstream_fetch(m->up, "POST", "/apply-template", m->obody.data, m->obody.len,
                          count_timeout(m), on_templated, m, &m->xfer) < 0) {
        ax_req_unref(m->req);
        count_by_estimate(m);
    }
}

/* ---- entry ------------------------------------------------------------------------- */

/* Until the first probe of the upstream answered, the upstream model is not known (and
 * vLLM, Ollama and others reject a claude-... name): wait for it, briefly. */
#define AX_PROBE_WAIT_MS 5000
#define AX_PROBE_POLL_MS 20

static int probe_pending(const struct msg *m)
{
    return ax_fleet_probes_pending(m->srv->fleet);
}

/* ---- the upstream's choice ---------------------------------------------------------- */

/* Asks the fleet for a member (m->route.tried excluded): by the names on_route chose, else
 * by model. Returns 0 with m->up set, or < 0 (err filled unless no replica is left). */
static int pick_route(struct msg *m, struct ax_error *err)
{
    struct ax_route_req rq;
    const char *const *names = NULL;
    const char *model = NULL;
    int rc;

    memset(&rq, 0, sizeof(rq));
    rq.client_model = m->model;
    rq.session_key = m->session_key;
    rq.request_id = m->req->id;
    if (m->preq && ax_policy_req_route(m->preq, &names, &model) > 0) {
        rq.names = names;
        rq.model = model;
    }
    if ((rc = ax_fleet_route(m->srv->fleet, &rq, &m->route, err)) < 0)
        return rc;
    m->up = ax_fleet_upstream(m->srv->fleet, m->route.idx);
    return 0;
}

static void send_routed(struct msg *m)
{
    struct ax_error err = {0};

    if (pick_route(m, &err) < 0) {
        if (err.status == 0)
            ax_error_set(&err, 503, "overloaded_error", "no upstream serves model %s", m->model);
        msg_fail(m, &err);
        return;
    }
    msg_send_upstream(m);
}

static void on_route_done(struct ax_policy_req *pr, int rc, const struct ax_error *err, void *ud)
{
    struct msg *m = ud;

    (void)pr;
    cJSON_Delete(m->route_view);
    m->route_view = NULL;
    if (hook_finished(m, rc, err))
        send_routed(m);
    ax_req_unref(m->req);
}

/* on_route (when a policy has one) over the request and the fleet's state, then the pick. */
static void route_and_send(struct msg *m)
{
    struct ax_error err = {0};

    if (m->preq == NULL || !ax_policy_req_has_hook(m->preq, AX_HOOK_ROUTE)) {
        send_routed(m);
        return;
    }
    m->route_view = ax_fleet_route_view(m->srv->fleet, uv_now(m->srv->loop));
    if (m->route_view == NULL ||
        run_hook(m, AX_HOOK_ROUTE, m->body, m->route_view, on_route_done) < 0) {
        ax_error_set(&err, 500, "api_error", "policy engine unavailable");
        msg_fail(m, &err);
    }
}

static void on_probe_poll(uv_timer_t *t)
{
    struct msg *m = t->data;

    if (m->state != MSG_PENDING)
        return;
    if (probe_pending(m) && uv_now(m->srv->loop) - m->srv->started_ms < AX_PROBE_WAIT_MS)
        return;
    uv_timer_stop(t);
    route_and_send(m);
}

/* What the context-management policies did (policies/context_editing.lua, compaction.lua):
 * they leave it under context_management in the request, which translation never sends
 * upstream. The answer reports context_management when the client sent one or an edit
 * applied; a compaction block opens the answer (the top-level `compaction` parameter
 * gets one without context_management). */
/* The usage.iterations entry of a compaction from the usage the policy saw for its summary
 * call ({input_tokens, output_tokens}), or NULL without one. */
static cJSON *compaction_iteration(const cJSON *u)
{
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(u, "input_tokens");
    const cJSON *out = cJSON_GetObjectItemCaseSensitive(u, "output_tokens");
    cJSON *it;

    if (!cJSON_IsNumber(in) || !cJSON_IsNumber(out) || (it = cJSON_CreateObject()) == NULL)
        return NULL;
    cJSON_AddStringToObject(it, "type", "compaction");
    cJSON_AddNumberToObject(it, "input_tokens", in->valuedouble);
    cJSON_AddNumberToObject(it, "output_tokens", out->valuedouble);
    cJSON_AddNumberToObject(it, "cache_creation_input_tokens", 0);
    cJSON_AddNumberToObject(it, "cache_read_input_tokens", 0);
    cJSON_AddNullToObject(it, "cache_creation");
    return it;
}

/* usage.iterations of a complete answer: the compaction's entry, then the answer's own
 * (whose figures are the top-level ones; a paused answer has none). */
static void add_iterations(struct msg *m, cJSON *resp)
{
    cJSON *usage = cJSON_GetObjectItemCaseSensitive(resp, "usage"), *its, *own, *f;

    if (m->c_iter == NULL || !cJSON_IsObject(usage) ||
        (its = cJSON_AddArrayToObject(usage, "iterations")) == NULL)
        return;
    cJSON_AddItemToArray(its, cJSON_Duplicate(m->c_iter, 1));
    if (m->paused || (own = cJSON_CreateObject()) == NULL)
        return;
    cJSON_AddStringToObject(own, "type", "message");
    cJSON_ArrayForEach(f, usage)
    {
        if (cJSON_IsNumber(f))
            cJSON_AddNumberToObject(own, f->string, f->valuedouble);
    }
    cJSON_AddItemToArray(its, own);
}

static void take_reports(struct msg *m)
{
    cJSON *cm = cJSON_GetObjectItemCaseSensitive(m->body, "context_management");
    cJSON *edits, *comp, *content, *blk;

    if (!cJSON_IsObject(cm))
        return;
    edits = cJSON_DetachItemFromObjectCaseSensitive(cm, "applied_edits");
    if (!cJSON_IsArray(edits)) {
        cJSON_Delete(edits);
        edits = cJSON_CreateArray();
    }
    if (edits == NULL || (!m->client_cm && edits->child == NULL) ||
        (m->cm = cJSON_CreateObject()) == NULL)
        cJSON_Delete(edits); /* nothing to tell a client that did not ask */
    else
        cJSON_AddItemToObject(m->cm, "applied_edits", edits);
    comp = cJSON_DetachItemFromObjectCaseSensitive(cm, "compaction");
    if (cJSON_IsObject(comp) && (blk = cJSON_CreateObject()) != NULL) {
        content = cJSON_GetObjectItemCaseSensitive(comp, "content");
        cJSON_AddStringToObject(blk, "type", "compaction");
        if (cJSON_IsString(content) && content->valuestring[0])
            cJSON_AddStringToObject(blk, "content", content->valuestring);
        else
            cJSON_AddNullToObject(blk, "content"); /* a failed summary */
        cJSON_AddNullToObject(blk, "encrypted_content");
        m->compaction = blk;
        m->paused = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(comp, "pause"));
        m->c_iter = compaction_iteration(cJSON_GetObjectItemCaseSensitive(comp, "usage"));
    }
    cJSON_Delete(comp);
}

static void wait_for_probe(struct msg *m)
{
    take_reports(m);
    if (!probe_pending(m)) {
        route_and_send(m);
        return;
    }
    AX_LOG_DEBUG(m->req, "waiting for the first upstream probe");
    open_timer(m);
    uv_timer_start(&m->timer, on_probe_poll, AX_PROBE_POLL_MS, AX_PROBE_POLL_MS);
}

static void on_request_done(struct ax_policy_req *pr, int rc, const struct ax_error *err, void *ud)
{
    struct msg *m = ud;

    if (hook_finished(m, rc, err)) {
        m->scale = ax_policy_req_report_scale(pr);
        if (m->scale <= 0)
            m->scale = 1.0;
        wait_for_probe(m);
    }
    ax_req_unref(m->req);
}

/* The client asked for context management: the count is of the request as the edits left
 * it (the shadow the policies ran on), and of the original as that plus what they cleared. */
static void take_count_edits(struct msg *m)
{
    cJSON *cm = cJSON_GetObjectItemCaseSensitive(m->shadow, "context_management"), *e, *body;
    const cJSON *edits = cJSON_GetObjectItemCaseSensitive(cm, "applied_edits");

    m->count_edited = 1;
    cJSON_ArrayForEach(e, edits)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "cleared_input_tokens");
        if (cJSON_IsNumber(t) && t->valuedouble > 0)
            m->count_cleared += (int64_t)t->valuedouble;
    }
    if (cJSON_IsArray(edits) && edits->child) {
        body = m->body;
        m->body = m->shadow;
        m->shadow = body;
    }
}

static void on_count_request_done(struct ax_policy_req *pr, int rc, const struct ax_error *err,
                                  void *ud)
{
    struct msg *m = ud;

    (void)err;
    m->hooks_running = 0;
    if (m->state == MSG_PENDING) {
        double scale = rc >= 0 ? ax_policy_req_report_scale(pr) : 1.0;
        m->scale = scale > 0 ? scale : 1.0;
        if (rc >= 0 &&
            cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(m->body, "context_management")))
            take_count_edits(m);
        cJSON_Delete(m->shadow);
        m->shadow = NULL;
        count_tokens(m);
    }
    ax_req_unref(m->req);
}

/* Checks what the policies rely on before they run; translation checks the rest. */
static int check_basics(struct msg *m, struct ax_error *err)
{
    const cJSON *msgs, *model;
    cJSON *cm;
    int stream = 0, rc;

    if (!cJSON_IsObject(m->body))
        return ax_error_set(err, 400, "invalid_request_error",
                            "request body: expected a JSON object");
    model = cJSON_GetObjectItemCaseSensitive(m->body, "model");
    if (!cJSON_IsString(model) || model->valuestring[0] == '\0')
        return ax_error_set(err, 400, "invalid_request_error",
                            "model: expected a non-empty string");
    snprintf(m->model, sizeof(m->model), "%s", model->valuestring);
    if ((rc = ax_json_get_array(m->body, "messages", "", &msgs, err)) < 0)
        return rc;
    if (rc == 0 || msgs->child == NULL)
        return ax_error_set(err, 400, "invalid_request_error",
                            "messages: expected a non-empty array");
    m->n_messages = cJSON_GetArraySize(msgs);
    m->n_tools = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(m->body, "tools"));
    if ((rc = ax_json_get_bool(m->body, "stream", "", &stream, err)) < 0)
        return rc;
    m->stream = stream && !m->count_only;
    /* ours to write (take_reports): a client cannot report edits that were not made */
    cm = cJSON_GetObjectItemCaseSensitive(m->body, "context_management");
    if (cJSON_IsObject(cm)) {
        m->client_cm = 1;
        cJSON_DeleteItemFromObjectCaseSensitive(cm, "applied_edits");
        cJSON_DeleteItemFromObjectCaseSensitive(cm, "compaction");
    }
    return 0;
}

/* tool_result blocks marked is_error in the client's last message: this turn's own, since
 * the earlier ones were counted with the turns that brought them. */
static int count_tool_errors(const cJSON *body)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages"), *content, *blk;
    int n = 0;

    if (msgs == NULL || msgs->child == NULL) /* cJSON: child->prev is the tail */
        return 0;
    content = cJSON_GetObjectItemCaseSensitive(msgs->child->prev, "content");
    cJSON_ArrayForEach(blk, content)
    {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(blk, "type");
        if (cJSON_IsString(type) && strcmp(type->valuestring, "tool_result") == 0 &&
            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(blk, "is_error")))
            n++;
    }
    return n;
}

/* The arm this request runs: the x-anthroxy-arm header's (a 400 naming the arms when there
 * is none of that name), else the session's while its arm exists, else the one the hash of
 * the experiment's name and the session key picks by weight (a session whose arm a reload
 * removed moves so, logged). Every answer from now on says which. */
static int choose_arm(struct msg *m, struct ax_error *err)
{
    const struct ax_experiment *exp = ax_policy_engine_experiment(m->srv->policies);
    const char *want = ax_req_header(m->req, "x-anthroxy-arm");
    struct ax_session *s = m->session;
    char names[512];

    if (want != NULL) {
        if (!ax_policy_engine_has_arm(m->srv->policies, want)) {
            ax_experiment_arm_names(exp, names, sizeof(names));
            return ax_error_set(err, 400, "invalid_request_error",
                                "x-anthroxy-arm: no arm named '%.64s' (the arms are: %s)", want,
                                names);
        }
        snprintf(m->arm, sizeof(m->arm), "%s", want);
    } else if (exp == NULL) {
        snprintf(m->arm, sizeof(m->arm), "%s", AX_EXP_DEFAULT_ARM);
    } else if (s != NULL && s->arm[0] && ax_experiment_find(exp, s->arm) != NULL) {
        snprintf(m->arm, sizeof(m->arm), "%s", s->arm);
    } else {
        snprintf(m->arm, sizeof(m->arm), "%s", ax_experiment_assign(exp, m->session_key)->name);
        if (s != NULL && s->arm[0])
            AX_LOG_INFO(m->req, "session %s: its arm %s is gone from experiment %s, moved to %s",
                        m->session_key, s->arm, exp->name, m->arm);
    }
    /* the session's arm is its first (an override only sets it for a session without one) */
    if (s != NULL && strcmp(s->arm, m->arm) != 0 && (want == NULL || s->arm[0] == 0)) {
        ax_session_set_arm(s, m->arm);
        ax_exp_stats_session(m->srv->exp_stats, m->arm);
    }
    snprintf(m->req->resp_headers, sizeof(m->req->resp_headers), "anthroxy-arm: %s\r\n", m->arm);
    return 0;
}

void ax_messages_handle(struct ax_server *srv, struct ax_req *req, int count_only)
{
    struct msg *m = calloc(1, sizeof(*m));
    struct ax_error err = {0};

    if (m == NULL) {
        ax_error_set(&err, 500, "api_error", "out of memory");
        ax_http_send_error(req, &err);
        return;
    }
    m->req = req;
    m->srv = srv;
    m->count_only = count_only;
    m->scale = 1.0;
    ax_buf_init(&m->obody, (size_t)-1 / 2);
    ax_buf_init(&m->resp, srv->cfg.max_response_bytes);
    ax_buf_init(&m->out, AX_STREAM_OUT_MAX);
    ax_sse_init(&m->sse, AX_SSE_MAX_LINE);
    req->handler = m;
    req->on_cancel = on_cancel;
    req->on_abort = on_abort;
    req->on_free = on_req_free;
    snprintf(m->session_key, sizeof(m->session_key), "-");

    m->body_len = req->body.len;
    m->body = ax_json_parse(req->body.data ? req->body.data : "", req->body.len, &err);
    if (m->body == NULL || check_basics(m, &err) < 0) {
        msg_fail(m, &err);
        return;
    }
    ax_session_key(ax_req_header(req, "x-claude-code-session-id"),
                   ax_req_header(req, "x-session-id"), m->body, m->session_key,
                   sizeof(m->session_key));
    m->session = ax_monitor_get(srv->mon, m->session_key, uv_now(srv->loop));
    if (m->session && srv->share) /* --workers: what the others recorded */
        ax_session_share_pull(srv->share, m->session);
    if (m->session && srv->state) { /* --state: what the other instances recorded */
        ax_req_ref(req);            /* dropped in on_state_pulled, within --state-wait */
        if (ax_state_redis_pull(srv->state, m->session, on_state_pulled, m) == 0)
            return;
        ax_req_unref(req); /* not connected: the local state serves */
    }
    msg_begin(m);
}

/* The session's state from Redis, or none in time: the request goes on either way. */
static void on_state_pulled(void *ud, int found)
{
    struct msg *m = ud;
    struct ax_req *req = m->req;

    (void)found;
    if (m->state != MSG_CANCELED)
        msg_begin(m);
    ax_req_unref(req);
}

/* The session is known: its arm, the recording, then the policies. */
static void msg_begin(struct msg *m)
{
    struct ax_server *srv = m->srv;
    struct ax_req *req = m->req;
    struct ax_error err = {0};
    int count_only = m->count_only;

    if (choose_arm(m, &err) < 0) {
        ax_buf_free(&req->body);
        msg_fail(m, &err);
        return;
    }
    if (srv->rec && !count_only) /* takes the client's bytes; the arm only in an experiment */
        m->rx = ax_rec_begin(srv->rec, req, m->session_key,
                             ax_policy_engine_experiment(srv->policies) ? m->arm : NULL,
                             ax_policy_engine_generation(srv->policies),
                             ax_models_window(&srv->cfg, srv->up, NULL));
    ax_buf_free(&req->body); /* the tree holds its own copies */
    if (!count_only) {
        /* before the policies: what the client sent. One more walk of the conversation
         * (~0.2 ms for Claude Code's), paid only when an experiment compares arms. */
        if (ax_policy_engine_experiment(srv->policies) != NULL)
            m->client_est = estimate_prompt(m);
        else
            m->client_est = -1;
        m->tool_errors = count_tool_errors(m->body);
    }
    if (m->session) {
        m->prunes0 = m->session->prune_count;
        m->overflows0 = m->session->overflow_count;
    }
    if (!count_only && want_measure(m)) {
        m->measuring = 1;
        count_tokens(m); /* then msg_start, from measured() */
        return;
    }
    msg_start(m);
}

/* The policies, then the upstream. */
static void msg_start(struct msg *m)
{
    struct ax_server *srv = m->srv;
    struct ax_req *req = m->req;
    struct ax_policy_req_info info;
    struct ax_error err = {0};
    int count_only = m->count_only;

    memset(&info, 0, sizeof(info));
    info.request_id = req->id;
    info.session_id = m->session_key;
    info.client_model = m->model;
    info.user_agent = ax_req_header(req, "user-agent");
    info.anthropic_beta = ax_req_header(req, "anthropic-beta");
    info.count_only = count_only;
    info.arm = m->arm;
    info.stream = m->stream;
    info.session = m->session;
    if (count_only) {
        /* The policies run on a copy, for their report_scale only: the count is of what the
         * client sent, never of a pruned request. */
        if (ax_policy_req_new(srv->policies, &info, &m->preq) < 0 ||
            !ax_policy_req_has_hook(m->preq, AX_HOOK_REQUEST) ||
            (m->shadow = cJSON_Duplicate(m->body, 1)) == NULL ||
            run_hook(m, AX_HOOK_REQUEST, m->shadow, NULL, on_count_request_done) < 0)
            count_tokens(m);
        return;
    }
    if (ax_policy_req_new(srv->policies, &info, &m->preq) == 0 && m->rx)
        ax_policy_req_set_trace(m->preq, ax_rec_trace, m->rx);
    if (m->preq != NULL && !ax_policy_req_has_hook(m->preq, AX_HOOK_REQUEST)) {
        wait_for_probe(m); /* no hook to wait a loop turn for */
        return;
    }
    if (m->preq == NULL || run_hook(m, AX_HOOK_REQUEST, m->body, NULL, on_request_done) < 0) {
        ax_error_set(&err, 500, "api_error", "policy engine unavailable");
        msg_fail(m, &err);
    }
}
