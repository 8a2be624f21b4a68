/* monitor.c - per-session context monitors: a chained hash table for O(1) lookup by key
 * and an LRU list (newest first) for idle expiry and eviction at the cap.
 *
 * messages.c finds a request's session here (ax_session_key, ax_monitor_get) and records
 * each turn's figures; the policy engine exposes the session to Lua as ctx.session; routes.c
 * renders /v1/context and counts for /health from the JSON built below; server.c expires
 * idle sessions from its sweep timer. The figures and thresholds follow the
 * seed's SessionMonitor; calibration, fingerprints and forced turns are ours. */
#include "anthroxy_monitor.h"
#include "anthroxy_hash.h"
#include "anthroxy_list.h"
#include "anthroxy_tokens.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The calibration is an exponential average weighted by size: each answer's real/estimate
 * ratio enters with the weight of its estimate, and the weight accumulated so far decays by
 * what that answer adds, at most a share CAL_ALPHA of it. Requests of similar size move the
 * factor as an EMA of weight CAL_ALPHA would (in the steady state the weight is est/CAL_ALPHA);
 * a 300-token side request (title, quota, a haiku call) next to 20,000-token turns moves it
 * by half a percent of its error and forgets almost nothing, so a burst of them cannot
 * either. Clamped to [CAL_MIN, CAL_MAX]: wide enough for a model whose tokens are a quarter or
 * four times the estimator's (a byte-level vocabulary, a big multilingual one). The factor
 * starts at 1 with the weight of a CAL_PRIOR-token answer, so that a session's first tiny
 * request (a probe, a title), whose real count is mostly the chat template's own tokens, cannot
 * set it alone. */
#define CAL_ALPHA 0.3
#define CAL_PRIOR 1024.0
#define CAL_MIN 0.25
#define CAL_MAX 4.0
#define CAL_MEASURED_MIN (1.0 / 16)
#define CAL_MEASURED_MAX 16.0

struct ax_monitor {
    struct ax_session **buckets;
    size_t n_buckets; /* a power of two */
    size_t count;
    size_t max_sessions;
    uint64_t ttl_ms;
    struct ax_list lru; /* newest first */
};

#define SESSION_OF(node) AX_LIST_ENTRY((node), struct ax_session, _lru)

/* Copies key into out[n]; one that does not fit (or reaches AX_SESSION_KEY_MAX) becomes
 * a prefix, '#' and the hash of the whole, so long keys neither collide nor overflow. */
static void key_copy(const char *key, size_t len, char *out, size_t n)
{
    size_t limit = n < AX_SESSION_KEY_MAX ? n : AX_SESSION_KEY_MAX, keep;

    if (n == 0)
        return;
    if (len < limit) {
        memcpy(out, key, len);
        out[len] = '\0';
        return;
    }
    if (limit < 18) { /* no room for the hash: plain truncation */
        memcpy(out, key, limit - 1);
        out[limit - 1] = '\0';
        return;
    }
    keep = limit - 18;
    memcpy(out, key, keep);
    snprintf(out + keep, 18, "#%016llx", (unsigned long long)ax_fnv1a(key, len, AX_FNV1A_INIT));
}

/* ---- session key ------------------------------------------------------------------ */

static int present(const char *s)
{
    return s != NULL && *s != '\0';
}

/* The session_id inside Claude Code's metadata.user_id, a JSON string such as
 * {"device_id":"...","account_uuid":"","session_id":"..."}; 1 when found. */
static int user_id_session(const char *uid, char *out, size_t n)
{
    const char *p = uid, *end = NULL;
    const cJSON *sid;
    cJSON *obj;
    int found = 0;

    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p != '{')
        return 0;
    if ((obj = cJSON_ParseWithLengthOpts(uid, strlen(uid), &end, 0)) == NULL)
        return 0;
    sid = cJSON_GetObjectItemCaseSensitive(obj, "session_id");
    if (cJSON_IsObject(obj) && cJSON_IsString(sid) && present(sid->valuestring)) {
        key_copy(sid->valuestring, strlen(sid->valuestring), out, n);
        found = 1;
    }
    cJSON_Delete(obj);
    return found;
}

void ax_session_key(const char *claude_code_session_hdr, const char *x_session_hdr,
                    const cJSON *body, char *out, size_t n)
{
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(body, "metadata");
    const cJSON *uid = cJSON_GetObjectItemCaseSensitive(meta, "user_id");
    const char *u = cJSON_IsString(uid) ? uid->valuestring : NULL;

    if (present(claude_code_session_hdr))
        key_copy(claude_code_session_hdr, strlen(claude_code_session_hdr), out, n);
    else if (present(u) && user_id_session(u, out, n) == 1)
        return;
    else if (present(x_session_hdr))
        key_copy(x_session_hdr, strlen(x_session_hdr), out, n);
    else if (present(u))
        key_copy(u, strlen(u), out, n);
    else
        key_copy("default", 7, out, n);
}

/* ---- table and LRU ---------------------------------------------------------------- */

struct ax_monitor *ax_monitor_new(int max_sessions, uint64_t ttl_ms)
{
    struct ax_monitor *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return NULL;
    ax_list_init(&m->lru);
    m->n_buckets = 16;
    if ((m->buckets = calloc(m->n_buckets, sizeof(*m->buckets))) == NULL) {
        free(m);
        return NULL;
    }
    m->max_sessions = max_sessions > 0 ? (size_t)max_sessions : 1;
    m->ttl_ms = ttl_ms;
    return m;
}

void ax_monitor_free(struct ax_monitor *m)
{
    struct ax_list *n, *next;

    if (m == NULL)
        return;
    AX_LIST_FOREACH_SAFE(n, next, &m->lru)
    free(SESSION_OF(n));
    free(m->buckets);
    free(m);
}

size_t ax_monitor_count(const struct ax_monitor *m)
{
    return m->count;
}

static void session_touch(struct ax_session *s, uint64_t now_ms)
{
    struct ax_monitor *m = s->_monitor;

    if (now_ms > s->last_seen_ms)
        s->last_seen_ms = now_ms;
    if (ax_list_first(&m->lru) != &s->_lru) {
        ax_list_unlink(&s->_lru);
        ax_list_push_front(&m->lru, &s->_lru);
    }
}

static void session_remove(struct ax_monitor *m, struct ax_session *s)
{
    struct ax_session **pp = &m->buckets[s->_hash & (m->n_buckets - 1)];

    while (*pp != s)
        pp = &(*pp)->_hnext;
    *pp = s->_hnext;
    ax_list_unlink(&s->_lru);
    m->count--;
    free(s);
}

/* Doubles the table when the chains would average more than one entry. */
static void table_grow(struct ax_monitor *m)
{
    size_t n = m->n_buckets * 2, i;
    struct ax_session **b, *s, *next;

    if ((b = calloc(n, sizeof(*b))) == NULL)
        return; /* longer chains, still correct */
    for (i = 0; i < m->n_buckets; i++) {
        for (s = m->buckets[i]; s != NULL; s = next) {
            next = s->_hnext;
            s->_hnext = b[s->_hash & (n - 1)];
            b[s->_hash & (n - 1)] = s;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = n;
}

static struct ax_session *lookup(const struct ax_monitor *m, const char *key, uint64_t h)
{
    struct ax_session *s;

    for (s = m->buckets[h & (m->n_buckets - 1)]; s != NULL; s = s->_hnext)
        if (s->_hash == h && strcmp(s->key, key) == 0)
            return s;
    return NULL;
}

struct ax_session *ax_monitor_find(struct ax_monitor *m, const char *key)
{
    char k[AX_SESSION_KEY_MAX];

    key_copy(key, strlen(key), k, sizeof(k));
    return lookup(m, k, ax_fnv1a(k, strlen(k), AX_FNV1A_INIT));
}

void ax_monitor_expire(struct ax_monitor *m, uint64_t now_ms)
{
    struct ax_session *s;
    struct ax_list *n, *newer;

    if (m->ttl_ms == 0)
        return;
    /* oldest first; everything newer than the first fresh session is fresh too */
    for (n = m->lru.prev; n != &m->lru; n = newer) {
        newer = n->prev;
        s = SESSION_OF(n);
        if (now_ms <= s->last_seen_ms || now_ms - s->last_seen_ms <= m->ttl_ms)
            break;
        if (s->refs == 0)
            session_remove(m, s);
    }
}

/* Makes room for one more: the least recently seen session nobody references goes. */
static void evict_for_one(struct ax_monitor *m)
{
    struct ax_list *n;

    while (m->count >= m->max_sessions) {
        for (n = m->lru.prev; n != &m->lru && SESSION_OF(n)->refs > 0; n = n->prev)
            ;
        if (n == &m->lru)
            return; /* all in use: go over the cap until some are released */
        session_remove(m, SESSION_OF(n));
    }
}

struct ax_session *ax_monitor_get(struct ax_monitor *m, const char *key, uint64_t now_ms)
{
    char k[AX_SESSION_KEY_MAX];
    struct ax_session *s;
    uint64_t h;
    size_t b;

    key_copy(key, strlen(key), k, sizeof(k));
    h = ax_fnv1a(k, strlen(k), AX_FNV1A_INIT);
    ax_monitor_expire(m, now_ms);
    if ((s = lookup(m, k, h)) != NULL) {
        s->refs++;
        session_touch(s, now_ms);
        return s;
    }
    evict_for_one(m);
    if ((s = calloc(1, sizeof(*s))) == NULL)
        return NULL;
    memcpy(s->key, k, sizeof(k));
    s->created_ms = s->last_seen_ms = now_ms;
    s->refs = 1;
    s->calibration = 1.0;
    s->calibration_weight = CAL_PRIOR;
    s->_monitor = m;
    s->_hash = h;
    if (m->count >= m->n_buckets)
        table_grow(m);
    b = h & (m->n_buckets - 1);
    s->_hnext = m->buckets[b];
    m->buckets[b] = s;
    ax_list_push_front(&m->lru, &s->_lru);
    m->count++;
    return s;
}

void ax_session_ref(struct ax_session *s)
{
    s->refs++;
}

void ax_session_unref(struct ax_session *s)
{
    if (s != NULL && s->refs > 0)
        s->refs--;
}

/* ---- recording -------------------------------------------------------------------- */

static void history_push(struct ax_session *s, int64_t v)
{
    if (s->n_history == AX_SESSION_HISTORY) {
        memmove(s->history, s->history + 1, (AX_SESSION_HISTORY - 1) * sizeof(s->history[0]));
        s->n_history--;
    }
    s->history[s->n_history++] = v;
}

void ax_session_record_request(struct ax_session *s, int64_t input_tokens, uint64_t now_ms)
{
    s->total_requests++;
    s->last_input_tokens = input_tokens;
    if (input_tokens > s->peak_input_tokens)
        s->peak_input_tokens = input_tokens;
    history_push(s, input_tokens);
    session_touch(s, now_ms);
}

static double clamp(double v, double lo, double hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

void ax_session_record_response(struct ax_session *s, int64_t estimated_prompt, int64_t real_prompt,
                                int64_t output_tokens)
{
    double real, est, ratio, w;

    s->last_output_tokens = output_tokens;
    if (real_prompt <= 0)
        return;
    s->last_input_tokens = real_prompt;
    if (real_prompt > s->peak_input_tokens)
        s->peak_input_tokens = real_prompt;
    if (s->n_history > 0)
        s->history[s->n_history - 1] = real_prompt;
    if (estimated_prompt <= 0)
        return;
    real = (double)real_prompt;
    est = (double)estimated_prompt;
    /* the error the factor known before this answer would have made: a forecast, not a fit */
    s->abs_err_raw_sum += fabs(est - real) / real;
    s->abs_err_cal_sum += fabs(est * s->calibration - real) / real;
    s->last_forecast = real / (est * s->calibration);
    ratio = clamp(real / est, CAL_MIN, CAL_MAX);
    s->calibration_weight += est - fmin(CAL_ALPHA * s->calibration_weight, est);
    w = est / s->calibration_weight;
    s->calibration = clamp(s->calibration + w * (ratio - s->calibration), CAL_MIN, CAL_MAX);
    s->last_ratio = ratio;
    s->n_calibration++;
    s->last_estimate = estimated_prompt;
    s->last_real_prompt = real_prompt;
}

int ax_session_estimate_off(const struct ax_session *s, double ratio)
{
    if (ratio <= 0 || s->n_calibration == 0)
        return 0;
    if (s->calibration <= CAL_MIN || s->calibration >= CAL_MAX)
        return 1;
    return s->last_forecast > 0 && fabs(s->last_forecast - 1.0) > ratio;
}

void ax_session_set_measured(struct ax_session *s, int64_t estimate, int64_t real)
{
    if (estimate <= 0 || real <= 0)
        return;
    s->calibration = clamp((double)real / (double)estimate, CAL_MEASURED_MIN, CAL_MEASURED_MAX);
    s->calibration_weight = (double)estimate / CAL_ALPHA; /* as if steady at this size */
    s->n_tokenized++;
}

void ax_session_note_tool_calls(struct ax_session *s, const uint64_t *fps, int n, int forced)
{
    int i;

    for (i = 0; i < n; i++) {
        if (s->n_fingerprints == AX_SESSION_FINGERPRINTS) {
            memmove(s->tool_fingerprints, s->tool_fingerprints + 1,
                    (AX_SESSION_FINGERPRINTS - 1) * sizeof(s->tool_fingerprints[0]));
            s->n_fingerprints--;
        }
        s->tool_fingerprints[s->n_fingerprints++] = fps[i];
    }
    s->forced_tool_turns = forced ? s->forced_tool_turns + 1 : 0;
}

int ax_session_fingerprint_count(const struct ax_session *s, uint64_t fp)
{
    int i, c = 0;

    for (i = 0; i < s->n_fingerprints; i++)
        c += s->tool_fingerprints[i] == fp;
    return c;
}

void ax_session_note_prune(struct ax_session *s)
{
    s->prune_count++;
}

void ax_session_note_overflow(struct ax_session *s)
{
    s->overflow_count++;
}

void ax_session_set_arm(struct ax_session *s, const char *arm)
{
    snprintf(s->arm, sizeof(s->arm), "%s", arm != NULL ? arm : "");
}

/* ---- derived figures -------------------------------------------------------------- */

int64_t ax_session_calibrated(const struct ax_session *s, int64_t estimate)
{
    return (int64_t)llround((double)estimate * s->calibration);
}

double ax_session_error_pct(const struct ax_session *s, int calibrated)
{
    if (s->n_calibration == 0)
        return -1;
    return 100.0 * (calibrated ? s->abs_err_cal_sum : s->abs_err_raw_sum) /
           (double)s->n_calibration;
}

double ax_session_utilization(const struct ax_session *s, int64_t context_window)
{
    if (context_window <= 0)
        return 0.0;
    return (double)s->last_input_tokens / (double)context_window;
}

const char *ax_session_warning(const struct ax_session *s, int64_t context_window)
{
    double u = ax_session_utilization(s, context_window);

    if (u >= 0.95)
        return "CRITICAL";
    if (u >= 0.85)
        return "HIGH";
    if (u >= 0.75)
        return "ELEVATED";
    return NULL;
}

int64_t ax_session_turns_remaining(const struct ax_session *s, int64_t context_window)
{
    double sum = 0, avg;
    int i, n = 0;

    if (context_window <= 0 || s->n_history < 2)
        return -1;
    for (i = 1; i < s->n_history; i++) {
        if (s->history[i] > s->history[i - 1]) {
            sum += (double)(s->history[i] - s->history[i - 1]);
            n++;
        }
    }
    if (n == 0)
        return -1;
    avg = sum / n;
    /* C's cast truncates toward zero, as the seed's int() does */
    int64_t turns = (int64_t)((double)(context_window - s->last_input_tokens) / avg);
    return turns > 0 ? turns : 0;
}

/* ---- JSON ------------------------------------------------------------------------- */

static double round_to(double v, double scale)
{
    return round(v * scale) / scale;
}

static int add_common(cJSON *o, const struct ax_session *s, int64_t cw)
{
    const char *w = ax_session_warning(s, cw);
    int64_t turns = ax_session_turns_remaining(s, cw);
    double u = ax_session_utilization(s, cw);
    char pct[32];

    snprintf(pct, sizeof(pct), "%.1f%%", u * 100.0);
    if (cJSON_AddStringToObject(o, "session", s->key) == NULL ||
        cJSON_AddStringToObject(o, "arm", s->arm) == NULL ||
        cJSON_AddStringToObject(o, "upstream", s->upstream) == NULL ||
        cJSON_AddNumberToObject(o, "context_window", (double)cw) == NULL ||
        cJSON_AddNumberToObject(o, "last_input_tokens", (double)s->last_input_tokens) == NULL ||
        cJSON_AddNumberToObject(o, "last_output_tokens", (double)s->last_output_tokens) == NULL ||
        cJSON_AddNumberToObject(o, "peak_input_tokens", (double)s->peak_input_tokens) == NULL ||
        cJSON_AddNumberToObject(o, "utilization", round_to(u, 1e4)) == NULL ||
        cJSON_AddStringToObject(o, "utilization_pct", pct) == NULL ||
        (w != NULL ? cJSON_AddStringToObject(o, "warning_level", w)
                   : cJSON_AddNullToObject(o, "warning_level")) == NULL ||
        (turns >= 0 ? cJSON_AddNumberToObject(o, "estimated_turns_remaining", (double)turns)
                    : cJSON_AddNullToObject(o, "estimated_turns_remaining")) == NULL ||
        cJSON_AddNumberToObject(o, "total_requests", (double)s->total_requests) == NULL ||
        cJSON_AddNumberToObject(o, "last_seen_ms", (double)s->last_seen_ms) == NULL)
        return -1;
    return 0;
}

static cJSON *calibration_json(const struct ax_session *s)
{
    cJSON *c = cJSON_CreateObject();
    double raw = ax_session_error_pct(s, 0), cal = ax_session_error_pct(s, 1);

    if (c == NULL)
        return NULL;
    if (cJSON_AddNumberToObject(c, "factor", round_to(s->calibration, 1e4)) == NULL ||
        cJSON_AddNumberToObject(c, "samples", (double)s->n_calibration) == NULL ||
        cJSON_AddNumberToObject(c, "tokenized", (double)s->n_tokenized) == NULL ||
        cJSON_AddNumberToObject(c, "last_forecast", round_to(s->last_forecast, 1e4)) == NULL ||
        cJSON_AddNumberToObject(c, "weight_tokens", round(s->calibration_weight)) == NULL ||
        cJSON_AddNumberToObject(c, "last_ratio", round_to(s->last_ratio, 1e4)) == NULL ||
        cJSON_AddNumberToObject(c, "last_estimate", (double)s->last_estimate) == NULL ||
        cJSON_AddNumberToObject(c, "last_real_prompt", (double)s->last_real_prompt) == NULL ||
        (raw >= 0 ? cJSON_AddNumberToObject(c, "mean_abs_error_pct_raw", round_to(raw, 100))
                  : cJSON_AddNullToObject(c, "mean_abs_error_pct_raw")) == NULL ||
        (cal >= 0 ? cJSON_AddNumberToObject(c, "mean_abs_error_pct_calibrated", round_to(cal, 100))
                  : cJSON_AddNullToObject(c, "mean_abs_error_pct_calibrated")) == NULL) {
        cJSON_Delete(c);
        return NULL;
    }
    return c;
}

cJSON *ax_session_to_json(const struct ax_session *s, int64_t context_window,
                          double prune_threshold)
{
    cJSON *o = cJSON_CreateObject(), *arr, *item;
    char hex[20];
    int i;

    if (o == NULL || add_common(o, s, context_window) < 0 ||
        cJSON_AddNumberToObject(o, "prune_count", (double)s->prune_count) == NULL ||
        cJSON_AddNumberToObject(o, "overflow_count", (double)s->overflow_count) == NULL ||
        cJSON_AddNumberToObject(o, "prune_threshold", prune_threshold) == NULL ||
        (arr = cJSON_AddArrayToObject(o, "recent_history")) == NULL)
        goto fail;
    for (i = s->n_history > 10 ? s->n_history - 10 : 0; i < s->n_history; i++)
        if ((item = cJSON_CreateNumber((double)s->history[i])) == NULL ||
            !cJSON_AddItemToArray(arr, item))
            goto fail;
    if (cJSON_AddNumberToObject(o, "forced_tool_turns", (double)s->forced_tool_turns) == NULL ||
        (arr = cJSON_AddArrayToObject(o, "recent_tool_fingerprints")) == NULL)
        goto fail;
    for (i = 0; i < s->n_fingerprints; i++) {
        /* hex: a uint64 does not survive a JSON number (a double) */
        snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)s->tool_fingerprints[i]);
        if ((item = cJSON_CreateString(hex)) == NULL || !cJSON_AddItemToArray(arr, item))
            goto fail;
    }
    if ((item = calibration_json(s)) == NULL)
        goto fail;
    cJSON_AddItemToObject(o, "calibration", item);
    if (cJSON_AddNumberToObject(o, "created_ms", (double)s->created_ms) == NULL)
        goto fail;
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

cJSON *ax_monitor_to_json(const struct ax_monitor *m, int64_t context_window,
                          double prune_threshold)
{
    cJSON *o = cJSON_CreateObject(), *arr, *item;
    const struct ax_session *s;
    const struct ax_list *n;

    if (o == NULL || cJSON_AddNumberToObject(o, "sessions", (double)m->count) == NULL ||
        cJSON_AddNumberToObject(o, "max_sessions", (double)m->max_sessions) == NULL ||
        cJSON_AddNumberToObject(o, "session_ttl_s", (double)m->ttl_ms / 1000.0) == NULL ||
        cJSON_AddNumberToObject(o, "context_window", (double)context_window) == NULL ||
        cJSON_AddNumberToObject(o, "prune_threshold", prune_threshold) == NULL ||
        (arr = cJSON_AddArrayToObject(o, "items")) == NULL)
        goto fail;
    AX_LIST_FOREACH(n, &m->lru)
    {
        s = SESSION_OF(n);
        if ((item = cJSON_CreateObject()) == NULL)
            goto fail;
        cJSON_AddItemToArray(arr, item);
        if (add_common(item, s, context_window) < 0)
            goto fail;
    }
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

/* ---- the tools estimate ---------------------------------------------------------------- */

/* A fingerprint of the tools' shape: names, and the lengths of every string and key below.
 * Agents send the same tools every turn; this costs a walk of the nodes, not of the text. */
static uint64_t shape_hash(const cJSON *n, uint64_t h)
{
    const cJSON *c;
    unsigned char type = (unsigned char)(n->type & 0xFF);
    uint32_t len;

    h = ax_fnv1a(&type, 1, h);
    if (n->string) {
        len = (uint32_t)strlen(n->string);
        h = ax_fnv1a(&len, sizeof(len), h);
    }
    if (cJSON_IsString(n) || cJSON_IsRaw(n)) {
        len = (uint32_t)strlen(n->valuestring);
        h = ax_fnv1a(&len, sizeof(len), h);
    }
    for (c = n->child; c != NULL; c = c->next)
        h = shape_hash(c, h);
    return h;
}

static uint64_t tools_fingerprint(const cJSON *tools)
{
    const cJSON *t, *name;
    uint64_t h = AX_FNV1A_INIT;

    cJSON_ArrayForEach(t, tools)
    {
        name = cJSON_GetObjectItemCaseSensitive(t, "name");
        if (cJSON_IsString(name))
            h = ax_fnv1a(name->valuestring, strlen(name->valuestring), h);
        h = shape_hash(t, h);
    }
    return h;
}

int64_t ax_session_tools_tokens(struct ax_session *s, const cJSON *tools)
{
    uint64_t fp;

    if (!cJSON_IsArray(tools) || tools->child == NULL)
        return ax_tokens_tools(tools);
    fp = tools_fingerprint(tools);
    if (fp == 0 || fp != s->tools_fp) {
        s->tools_tokens = ax_tokens_tools(tools);
        s->tools_fp = fp;
    }
    return s->tools_tokens;
}
