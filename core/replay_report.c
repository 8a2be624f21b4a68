/* replay_report.c - the figures of `anthroxy replay` (replay.c) into DIR/turns.csv (one row
 * per session, turn and arm), DIR/report.json (everything) and DIR/report.html: one
 * self-contained page with per-arm tables (means over sessions, 95 % bootstrap intervals,
 * differences to the first arm) and plots drawn by gnuplot as SVG and inlined. Without
 * gnuplot the page says how to install it and keeps the tables. */
#include "anthroxy_buf.h"
#include "anthroxy_experiment.h"
#include "anthroxy_json.h"
#include "replay_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define RP_BOOT 2000 /* bootstrap resamples */

/* ---- per-session figures ------------------------------------------------------------- */

enum metric {
    M_SENT,        /* tokens sent upstream, all turns */
    M_CONTEXT,     /* mean tokens per request */
    M_REMOVED,     /* tokens the policies removed, all turns */
    M_REUSE,       /* prefix a prompt cache could reuse / tokens sent, turns 2.. */
    M_BREAKS,      /* turns whose prefix fell under 90 % of the previous request */
    M_FITS,        /* share of turns that fit the window */
    M_PAIRS,       /* share of turns with every tool pair intact */
    M_MASKED,      /* tool results masked, all turns */
    M_REFUSED,     /* share of turns the chain refused (ax.fail: "prompt is too long"...) */
    M_UP_CACHED,   /* --upstream: cached_tokens / prompt_tokens */
    M_UP_PROMPTMS, /* --upstream: prompt processing, ms per turn */
    M_UP_AGREE,    /* --upstream: first tool call agrees with the recorded one */
    M_COUNT
};

static const struct {
    const char *key, *label;
    int upstream, pct;
} metrics[M_COUNT] = {
    {"tokens_sent", "tokens sent (per session)", 0, 0},
    {"context_mean", "context per request (tokens)", 0, 0},
    {"tokens_removed", "tokens removed (per session)", 0, 0},
    {"prefix_reuse", "prefix cache reuse", 0, 1},
    {"cache_breaks", "cache breaks (per session)", 0, 0},
    {"fits_window", "requests within the window", 0, 1},
    {"pairs_intact", "tool pairs intact", 0, 1},
    {"tool_results_masked", "tool results masked (per session)", 0, 0},
    {"refused", "requests the chain refused (not counted above)", 0, 1},
    {"upstream_cached_ratio", "upstream cached_tokens / prompt_tokens", 1, 1},
    {"upstream_prompt_ms", "upstream prompt processing (ms per request)", 1, 0},
    {"tool_call_agreement", "first tool call agrees with the recording", 1, 1},
};

/* vals[(session * n_arms + arm) * M_COUNT + metric]; NAN where not defined */
static double *session_figures(const struct rp_run *run)
{
    size_t n = (size_t)run->n_sessions * (size_t)run->n_arms;
    double *v = calloc(n * M_COUNT + 1, sizeof(*v));
    double *acc = calloc(n * 16 + 1, sizeof(*acc));
    int64_t i;
    size_t k;

    if (v == NULL || acc == NULL) {
        free(v);
        free(acc);
        return NULL;
    }
    for (i = 0; i < run->n_rows; i++) {
        const struct rp_row *r = &run->rows[i];
        double *a = &acc[((size_t)r->session * (size_t)run->n_arms + (size_t)r->arm) * 16];
        a[0] += 1;
        if (r->failed)
            continue;
        a[1] += 1;
        a[2] += (double)r->sent_tokens;
        a[3] += (double)r->removed_tokens;
        if (r->turn > 0) {
            a[4] += (double)r->prefix_tokens;
            a[5] += (double)r->sent_tokens;
        }
        a[6] += r->cache_break;
        a[7] += r->fits;
        a[8] += r->pairs_ok;
        a[9] += r->masked;
        if (r->have_up) {
            a[10] += (double)r->up_cached;
            a[11] += (double)r->up_prompt;
            if (r->up_prompt_ms >= 0) {
                a[12] += r->up_prompt_ms;
                a[13] += 1;
            }
        }
        if (r->tool_agree >= 0) {
            a[14] += r->tool_agree;
            a[15] += 1;
        }
    }
    for (k = 0; k < n; k++) {
        double *a = &acc[k * 16], *o = &v[k * M_COUNT];
        int ok = a[1] > 0;
        o[M_SENT] = ok ? a[2] : NAN;
        o[M_CONTEXT] = ok ? a[2] / a[1] : NAN;
        o[M_REMOVED] = ok ? a[3] : NAN;
        o[M_REUSE] = a[5] > 0 ? a[4] / a[5] : NAN;
        o[M_BREAKS] = ok ? a[6] : NAN;
        o[M_FITS] = ok ? a[7] / a[1] : NAN;
        o[M_PAIRS] = ok ? a[8] / a[1] : NAN;
        o[M_MASKED] = ok ? a[9] : NAN;
        o[M_REFUSED] = a[0] > 0 ? (a[0] - a[1]) / a[0] : NAN;
        o[M_UP_CACHED] = a[11] > 0 ? a[10] / a[11] : NAN;
        o[M_UP_PROMPTMS] = a[13] > 0 ? a[12] / a[13] : NAN;
        o[M_UP_AGREE] = a[15] > 0 ? a[14] / a[15] : NAN;
    }
    free(acc);
    return v;
}

/* ---- statistics ---------------------------------------------------------------------- */

struct ci {
    double mean, lo, hi;
    int n;
};

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Mean of x[0..n) (NANs skipped) and the percentile bootstrap's 95 % interval. */
static struct ci bootstrap(const double *x, int n)
{
    struct ci c = {NAN, NAN, NAN, 0};
    double *d = malloc(((size_t)n + 1) * sizeof(*d)), *means, sum = 0;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int i, m = 0, b;

    if (d == NULL)
        return c;
    for (i = 0; i < n; i++)
        if (!isnan(x[i])) {
            d[m++] = x[i];
            sum += x[i];
        }
    c.n = m;
    if (m == 0 || (means = malloc(RP_BOOT * sizeof(*means))) == NULL) {
        free(d);
        return c;
    }
    c.mean = sum / m;
    for (b = 0; b < RP_BOOT; b++) {
        double s = 0;
        for (i = 0; i < m; i++)
            s += d[rng_next(&seed) % (uint64_t)m];
        means[b] = s / m;
    }
    qsort(means, RP_BOOT, sizeof(*means), cmp_double);
    c.lo = means[(int)(0.025 * RP_BOOT)];
    c.hi = means[(int)(0.975 * RP_BOOT) - 1];
    free(means);
    free(d);
    return c;
}

/* Over sessions: metric of arm (diff_to >= 0: minus that arm's, session by session). */
static struct ci arm_ci(const struct rp_run *run, const double *v, int arm, int metric, int diff_to)
{
    double *x = malloc(((size_t)run->n_sessions + 1) * sizeof(*x));
    struct ci c = {NAN, NAN, NAN, 0};
    int s;

    if (x == NULL)
        return c;
    for (s = 0; s < run->n_sessions; s++) {
        double a = v[((size_t)s * (size_t)run->n_arms + (size_t)arm) * M_COUNT + (size_t)metric];
        double b =
            diff_to >= 0
                ? v[((size_t)s * (size_t)run->n_arms + (size_t)diff_to) * M_COUNT + (size_t)metric]
                : 0;
        x[s] = a - b;
    }
    c = bootstrap(x, run->n_sessions);
    free(x);
    return c;
}

static cJSON *ci_json(struct ci c)
{
    cJSON *o = cJSON_CreateObject();
    if (isnan(c.mean)) {
        cJSON_AddNullToObject(o, "mean");
        cJSON_AddNullToObject(o, "ci95");
    } else {
        cJSON *a = cJSON_AddArrayToObject(o, "ci95");
        cJSON_AddNumberToObject(o, "mean", c.mean);
        cJSON_AddItemToArray(a, cJSON_CreateNumber(c.lo));
        cJSON_AddItemToArray(a, cJSON_CreateNumber(c.hi));
    }
    cJSON_AddNumberToObject(o, "sessions", c.n);
    return o;
}

/* ---- files --------------------------------------------------------------------------- */

static int write_file(const char *dir, const char *name, const char *data, size_t len)
{
    char path[8192];
    FILE *f;
    int ok;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if ((f = fopen(path, "wb")) == NULL) {
        fprintf(stderr, "anthroxy replay: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    ok = fwrite(data, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    if (!ok)
        fprintf(stderr, "anthroxy replay: cannot write %s\n", path);
    return ok ? 0 : -1;
}

static const char *arm_name(const struct rp_run *run, int i)
{
    return run->arms[i].arm->name;
}

static void csv_field(struct ax_buf *b, const char *s)
{
    ax_buf_puts(b, "\"");
    for (; *s; s++) {
        if (*s == '"')
            ax_buf_puts(b, "\"\"");
        else
            ax_buf_append(b, s, 1);
    }
    ax_buf_puts(b, "\"");
}

static int write_csv(const struct rp_run *run)
{
    struct ax_buf b;
    int64_t i;
    int rc;

    ax_buf_init(&b, (size_t)-1 / 2);
    ax_buf_puts(&b, "session,file,turn,arm,client_tokens,sent_tokens,removed_tokens,"
                    "removed_messages,masked_tool_results,window,fits_window,pairs_intact,"
                    "prefix_tokens,prefix_ratio,cache_break,failed,upstream_prompt_tokens,"
                    "upstream_cached_tokens,upstream_prompt_ms,tool_agree,overflowed,retried\n");
    for (i = 0; i < run->n_rows; i++) {
        const struct rp_row *r = &run->rows[i];
        const struct rp_session *s = &run->sessions[r->session];
        csv_field(&b, s->key);
        ax_buf_puts(&b, ",");
        csv_field(&b, s->file);
        ax_buf_printf(&b, ",%d,", r->turn);
        csv_field(&b, arm_name(run, r->arm));
        ax_buf_printf(&b, ",%lld,%lld,%lld,%d,%d,%lld,%d,%d,%lld,", (long long)r->client_tokens,
                      (long long)r->sent_tokens, (long long)r->removed_tokens, r->removed_msgs,
                      r->masked, (long long)r->window, r->fits, r->pairs_ok,
                      (long long)r->prefix_tokens);
        if (r->turn > 0 && r->sent_tokens > 0)
            ax_buf_printf(&b, "%.4f", (double)r->prefix_tokens / (double)r->sent_tokens);
        ax_buf_printf(&b, ",%d,%d,", r->cache_break, r->failed);
        if (r->have_up)
            ax_buf_printf(&b, "%lld,%lld,%.3f", (long long)r->up_prompt, (long long)r->up_cached,
                          r->up_prompt_ms);
        else
            ax_buf_puts(&b, ",,");
        ax_buf_puts(&b, ",");
        if (r->tool_agree >= 0)
            ax_buf_printf(&b, "%d", r->tool_agree);
        ax_buf_printf(&b, ",%d,%d\n", r->overflows > 0, r->retried);
    }
    rc = write_file(run->out_dir, "turns.csv", b.data ? b.data : "", b.len);
    ax_buf_free(&b);
    return rc;
}

static cJSON *summary_json(const struct rp_run *run, const double *v, int diff)
{
    cJSON *o = cJSON_CreateObject();
    int a, m;

    for (a = diff ? 1 : 0; a < run->n_arms; a++) {
        cJSON *arm = cJSON_AddObjectToObject(o, arm_name(run, a));
        for (m = 0; m < M_COUNT; m++)
            if (!metrics[m].upstream || run->up != NULL)
                cJSON_AddItemToObject(arm, metrics[m].key,
                                      ci_json(arm_ci(run, v, a, m, diff ? 0 : -1)));
    }
    return o;
}

static cJSON *row_json(const struct rp_run *run, const struct rp_row *r)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddStringToObject(o, "session", run->sessions[r->session].key);
    cJSON_AddNumberToObject(o, "turn", r->turn);
    cJSON_AddStringToObject(o, "arm", arm_name(run, r->arm));
    if (r->failed) {
        cJSON_AddStringToObject(o, "error", r->error);
        return o;
    }
    cJSON_AddNumberToObject(o, "client_tokens", (double)r->client_tokens);
    cJSON_AddNumberToObject(o, "sent_tokens", (double)r->sent_tokens);
    cJSON_AddNumberToObject(o, "removed_tokens", (double)r->removed_tokens);
    cJSON_AddNumberToObject(o, "removed_messages", r->removed_msgs);
    cJSON_AddNumberToObject(o, "masked_tool_results", r->masked);
    cJSON_AddItemToObject(o, "what", r->what ? cJSON_Duplicate(r->what, 1) : cJSON_CreateArray());
    cJSON_AddNumberToObject(o, "window", (double)r->window);
    cJSON_AddBoolToObject(o, "fits_window", r->fits);
    cJSON_AddBoolToObject(o, "pairs_intact", r->pairs_ok);
    cJSON_AddNumberToObject(o, "prefix_tokens", (double)r->prefix_tokens);
    cJSON_AddBoolToObject(o, "cache_break", r->cache_break);
    cJSON_AddBoolToObject(o, "overflowed", r->overflows > 0); /* over the window as first sent */
    cJSON_AddBoolToObject(o, "retried", r->retried); /* on_upstream_error had it sent again */
    if (run->up != NULL) {
        cJSON *u = cJSON_AddObjectToObject(o, "upstream");
        if (r->have_up) {
            cJSON_AddNumberToObject(u, "prompt_tokens", (double)r->up_prompt);
            cJSON_AddNumberToObject(u, "cached_tokens", (double)r->up_cached);
            cJSON_AddNumberToObject(u, "prompt_ms", r->up_prompt_ms);
        } else {
            cJSON_AddNumberToObject(u, "status", r->up_status);
        }
        if (r->tool_agree >= 0)
            cJSON_AddBoolToObject(u, "tool_agree", r->tool_agree);
    }
    return o;
}

static int best_arm(const struct rp_run *run, const double *v, int metric, int highest, int *clear);

static cJSON *verdict_json(const struct rp_run *run, const double *v, int metric, int highest)
{
    int clear, a = best_arm(run, v, metric, highest, &clear);
    cJSON *o = cJSON_CreateObject();

    if (a < 0)
        return o;
    cJSON_AddStringToObject(o, "arm", arm_name(run, a));
    cJSON_AddBoolToObject(o, "separated", clear); /* every paired interval excludes 0 */
    return o;
}

static int write_json(const struct rp_run *run, const double *v)
{
    cJSON *o = cJSON_CreateObject(), *arms, *sess, *rows;
    struct ax_buf b;
    int64_t i;
    int s, a, m, rc;

    cJSON_AddStringToObject(o, "experiment", run->exp->name);
    arms = cJSON_AddArrayToObject(o, "arms");
    for (a = 0; a < run->n_arms; a++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "name", arm_name(run, a));
        cJSON_AddStringToObject(x, "chain", run->arms[a].chain);
        cJSON_AddItemToArray(arms, x);
    }
    if (run->window > 0)
        cJSON_AddNumberToObject(o, "window", (double)run->window);
    else
        cJSON_AddStringToObject(o, "window", "recorded");
    if (run->upstream)
        cJSON_AddStringToObject(o, "upstream", run->upstream);
    else
        cJSON_AddNullToObject(o, "upstream");
    cJSON_AddStringToObject(o, "token_counts",
                            run->up ? "upstream prompt_tokens"
                                    : "estimates calibrated by the recording");
    cJSON_AddNumberToObject(o, "sessions", run->n_sessions);
    cJSON_AddNumberToObject(o, "turns", run->n_arms ? (double)run->n_rows / run->n_arms : 0);
    cJSON_AddNumberToObject(o, "elapsed_s", run->elapsed_s);
    cJSON_AddNumberToObject(o, "turns_per_s",
                            run->elapsed_s > 0 ? (double)run->n_rows / run->elapsed_s : 0);
    cJSON_AddItemToObject(o, "summary", summary_json(run, v, 0));
    if (run->n_arms > 1) {
        cJSON *vd = cJSON_AddObjectToObject(o, "verdict");
        cJSON_AddItemToObject(vd, "fewest_tokens_sent", verdict_json(run, v, M_SENT, 0));
        cJSON_AddItemToObject(vd, "most_prefix_reuse", verdict_json(run, v, M_REUSE, 1));
        cJSON_AddStringToObject(o, "baseline", arm_name(run, 0));
        cJSON_AddItemToObject(o, "difference_to_baseline", summary_json(run, v, 1));
    }
    sess = cJSON_AddArrayToObject(o, "per_session");
    for (s = 0; s < run->n_sessions; s++) {
        cJSON *x = cJSON_CreateObject(), *ar = cJSON_AddObjectToObject(x, "arms");
        cJSON_AddStringToObject(x, "session", run->sessions[s].key);
        cJSON_AddStringToObject(x, "file", run->sessions[s].file);
        cJSON_AddNumberToObject(x, "turns", run->sessions[s].n_turns);
        for (a = 0; a < run->n_arms; a++) {
            cJSON *y = cJSON_AddObjectToObject(ar, arm_name(run, a));
            for (m = 0; m < M_COUNT; m++) {
                double val = v[((size_t)s * (size_t)run->n_arms + (size_t)a) * M_COUNT + (size_t)m];
                if (metrics[m].upstream && run->up == NULL)
                    continue;
                if (isnan(val))
                    cJSON_AddNullToObject(y, metrics[m].key);
                else
                    cJSON_AddNumberToObject(y, metrics[m].key, val);
            }
        }
        cJSON_AddItemToArray(sess, x);
    }
    rows = cJSON_AddArrayToObject(o, "turns_detail");
    for (i = 0; i < run->n_rows; i++)
        cJSON_AddItemToArray(rows, row_json(run, &run->rows[i]));
    ax_buf_init(&b, (size_t)-1 / 2);
    rc = ax_json_print(o, &b) < 0 ? -1 : write_file(run->out_dir, "report.json", b.data, b.len);
    ax_buf_free(&b);
    cJSON_Delete(o);
    return rc;
}

/* ---- plots --------------------------------------------------------------------------- */

enum series { S_CONTEXT, S_CUMUL, S_REUSE, S_BREAKS, S_OVERFLOWS, S_COUNT };

/* Per turn index and arm, over the sessions that reached that turn: mean context, mean
 * cumulative tokens, mean reuse; counts of cache breaks and overflows. */
static int write_plot_data(const struct rp_run *run, const char *dir, int *max_turn)
{
    int a, t, nt = 0, k;
    size_t cells;
    double *sum, *cnt, *cum;
    int64_t i;
    static const char *const names[S_COUNT] = {"context.dat", "cumulative.dat", "reuse.dat",
                                               "breaks.dat", "overflows.dat"};
    int rc = 0;

    for (i = 0; i < run->n_rows; i++)
        if (run->rows[i].turn + 1 > nt)
            nt = run->rows[i].turn + 1;
    *max_turn = nt;
    cells = (size_t)nt * (size_t)run->n_arms * S_COUNT;
    sum = calloc(cells + 1, sizeof(*sum));
    cnt = calloc(cells + 1, sizeof(*cnt));
    cum = calloc((size_t)run->n_sessions * (size_t)run->n_arms + 1, sizeof(*cum));
    if (sum == NULL || cnt == NULL || cum == NULL) {
        free(sum);
        free(cnt);
        free(cum);
        return -1;
    }
#define CELL(t, a, s) ((((size_t)(t) * (size_t)run->n_arms) + (size_t)(a)) * S_COUNT + (s))
    for (i = 0; i < run->n_rows; i++) {
        const struct rp_row *r = &run->rows[i];
        double *c = &cum[(size_t)r->session * (size_t)run->n_arms + (size_t)r->arm];
        if (r->failed)
            continue;
        *c += (double)r->sent_tokens;
        sum[CELL(r->turn, r->arm, S_CONTEXT)] += (double)r->sent_tokens;
        cnt[CELL(r->turn, r->arm, S_CONTEXT)] += 1;
        sum[CELL(r->turn, r->arm, S_CUMUL)] += *c;
        cnt[CELL(r->turn, r->arm, S_CUMUL)] += 1;
        if (r->turn > 0 && r->sent_tokens > 0) {
            sum[CELL(r->turn, r->arm, S_REUSE)] +=
                (double)r->prefix_tokens / (double)r->sent_tokens;
            cnt[CELL(r->turn, r->arm, S_REUSE)] += 1;
        }
        sum[CELL(r->turn, r->arm, S_BREAKS)] += r->cache_break;
        cnt[CELL(r->turn, r->arm, S_BREAKS)] = 1;
        sum[CELL(r->turn, r->arm, S_OVERFLOWS)] += r->overflows > 0 || !r->fits;
        cnt[CELL(r->turn, r->arm, S_OVERFLOWS)] = 1;
    }
    for (k = 0; k < S_COUNT && rc == 0; k++) {
        struct ax_buf b;
        ax_buf_init(&b, (size_t)-1 / 2);
        ax_buf_puts(&b, "turn");
        for (a = 0; a < run->n_arms; a++)
            ax_buf_printf(&b, " \"%s\"", arm_name(run, a));
        ax_buf_puts(&b, "\n");
        for (t = 0; t < nt; t++) {
            ax_buf_printf(&b, "%d", t + 1);
            for (a = 0; a < run->n_arms; a++) {
                double n = cnt[CELL(t, a, k)];
                if (n > 0)
                    ax_buf_printf(&b, " %.6g", sum[CELL(t, a, k)] / (k >= S_BREAKS ? 1 : n));
                else
                    ax_buf_puts(&b, " NaN");
            }
            ax_buf_puts(&b, "\n");
        }
        rc = write_file(dir, names[k], b.data, b.len);
        ax_buf_free(&b);
    }
#undef CELL
    free(sum);
    free(cnt);
    free(cum);
    return rc;
}

#define GP_SCRIPT                                                                                  \
    "set terminal svg size 760,340 dynamic noenhanced font 'sans,11' background '#ffffff'\n"       \
    "set datafile missing 'NaN'\n"                                                                 \
    "set key outside right top autotitle columnhead\n"                                             \
    "set grid ytics lc rgb '#dddddd'\n"                                                            \
    "set xlabel 'turn'\n"                                                                          \
    "set output 'context.svg'\n"                                                                   \
    "set title 'Context sent per request (tokens, mean over sessions)'\n"                          \
    "plot for [i=2:%d] 'context.dat' using 1:i with linespoints pt 7 ps 0.5 lw 2\n"                \
    "set output 'cumulative.svg'\n"                                                                \
    "set title 'Cumulative tokens sent (mean over sessions)'\n"                                    \
    "plot for [i=2:%d] 'cumulative.dat' using 1:i with linespoints pt 7 ps 0.5 lw 2\n"             \
    "set output 'reuse.svg'\n"                                                                     \
    "set title 'Prefix a prompt cache could reuse from the previous request (share)'\n"            \
    "set yrange [0:1.05]\n"                                                                        \
    "plot for [i=2:%d] 'reuse.dat' using 1:i with linespoints pt 7 ps 0.5 lw 2\n"                  \
    "set autoscale y\n"                                                                            \
    "set yrange [0:*]\n"                                                                           \
    "set output 'events.svg'\n"                                                                    \
    "set title 'Events per turn: cache breaks (prune moves), overflows (dashed)'\n"                \
    "plot for [i=2:%d] 'breaks.dat' using 1:i with linespoints pt 7 lw 2 title "                   \
    "columnhead(i).' breaks', for [i=2:%d] 'overflows.dat' using 1:i with linespoints dt 2 pt "    \
    "6 lw 2 title columnhead(i).' overflows'\n"

/* Runs gnuplot in dir on plots.gp. Returns 0, 1 when gnuplot is not installed, -1 when it
 * failed. */
static int run_gnuplot(const char *dir)
{
    char *argv[] = {"gnuplot", "plots.gp", NULL};
    char cwd[4096];
    pid_t pid;
    int status, rc;

    posix_spawn_file_actions_t fa;

    if (getcwd(cwd, sizeof(cwd)) == NULL || chdir(dir) < 0)
        return -1;
    /* its warnings (an all-zero series) go to plots/gnuplot.log, not over the progress */
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, "gnuplot.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    rc = posix_spawnp(&pid, "gnuplot", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (chdir(cwd) < 0)
        return -1;
    if (rc == ENOENT)
        return 1;
    if (rc != 0 || waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void html_escape(struct ax_buf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<':
            ax_buf_puts(b, "&lt;");
            break;
        case '>':
            ax_buf_puts(b, "&gt;");
            break;
        case '&':
            ax_buf_puts(b, "&amp;");
            break;
        case '"':
            ax_buf_puts(b, "&quot;");
            break;
        default:
            ax_buf_append(b, s, 1);
        }
    }
}

/* An SVG file of dir, without its XML prolog, inlined into b. */
static int inline_svg(struct ax_buf *b, const char *dir, const char *name)
{
    char path[8192], *text, *start;
    FILE *f;
    long n;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if ((f = fopen(path, "rb")) == NULL)
        return -1;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n <= 0 || (text = malloc((size_t)n + 1)) == NULL) {
        fclose(f);
        return -1;
    }
    n = (long)fread(text, 1, (size_t)n, f);
    fclose(f);
    text[n] = '\0';
    start = strstr(text, "<svg");
    if (start == NULL) {
        free(text);
        return -1;
    }
    ax_buf_puts(b, "<figure>");
    ax_buf_puts(b, start);
    ax_buf_puts(b, "</figure>\n");
    free(text);
    return 0;
}

static void fmt_value(struct ax_buf *b, double v, int pct)
{
    if (isnan(v))
        ax_buf_puts(b, "–");
    else if (pct)
        ax_buf_printf(b, "%.1f %%", v * 100);
    else if (fabs(v) >= 100)
        ax_buf_printf(b, "%.0f", v);
    else
        ax_buf_printf(b, "%.2f", v);
}

/* The arm with the lowest (or highest) mean of a figure, and whether its paired difference
 * to every other arm keeps the same sign across its whole interval. */
static int best_arm(const struct rp_run *run, const double *v, int metric, int highest, int *clear)
{
    int a, best = -1;
    double bv = 0;

    for (a = 0; a < run->n_arms; a++) {
        struct ci c = arm_ci(run, v, a, metric, -1);
        if (!isnan(c.mean) && (best < 0 || (highest ? c.mean > bv : c.mean < bv))) {
            best = a;
            bv = c.mean;
        }
    }
    *clear = best >= 0 && run->n_arms > 1;
    for (a = 0; a < run->n_arms && best >= 0; a++) {
        struct ci d;
        if (a == best)
            continue;
        d = arm_ci(run, v, best, metric, a);
        /* one session resamples to itself: its interval is a point, not evidence */
        if (isnan(d.mean) || d.n < 2 || (highest ? d.lo <= 0 : d.hi >= 0))
            *clear = 0;
    }
    return best;
}

static void html_verdict(struct ax_buf *b, const struct rp_run *run, const double *v)
{
    static const struct {
        int metric, highest;
        const char *what;
    } q[] = {{M_SENT, 0, "Fewest tokens sent"}, {M_REUSE, 1, "Most prefix-cache reuse"}};
    size_t i;

    if (run->n_arms < 2)
        return;
    ax_buf_puts(b, "<ul class=\"verdict\">\n");
    for (i = 0; i < sizeof(q) / sizeof(q[0]); i++) {
        int clear, a = best_arm(run, v, q[i].metric, q[i].highest, &clear);
        struct ci c;
        if (a < 0)
            continue;
        c = arm_ci(run, v, a, q[i].metric, -1);
        ax_buf_printf(b, "<li>%s: <b>", q[i].what);
        html_escape(b, arm_name(run, a));
        ax_buf_puts(b, "</b> (");
        fmt_value(b, c.mean, metrics[q[i].metric].pct);
        ax_buf_puts(b, " [");
        fmt_value(b, c.lo, metrics[q[i].metric].pct);
        ax_buf_puts(b, ", ");
        fmt_value(b, c.hi, metrics[q[i].metric].pct);
        ax_buf_printf(b, "]), %s.</li>\n",
                      clear ? "ahead of every other arm across the paired intervals"
                            : "but the paired intervals do not separate it from every other arm");
    }
    ax_buf_puts(b, "</ul>\n");
}

static void html_table(struct ax_buf *b, const struct rp_run *run, const double *v, int diff)
{
    int a, m;

    ax_buf_puts(b, "<table><tr><th>figure</th>");
    for (a = diff ? 1 : 0; a < run->n_arms; a++) {
        ax_buf_puts(b, "<th>");
        html_escape(b, arm_name(run, a));
        if (diff) {
            ax_buf_puts(b, " − ");
            html_escape(b, arm_name(run, 0));
        }
        ax_buf_puts(b, "</th>");
    }
    ax_buf_puts(b, "</tr>\n");
    for (m = 0; m < M_COUNT; m++) {
        if (metrics[m].upstream && run->up == NULL)
            continue;
        ax_buf_printf(b, "<tr><td>%s</td>", metrics[m].label);
        for (a = diff ? 1 : 0; a < run->n_arms; a++) {
            struct ci c = arm_ci(run, v, a, m, diff ? 0 : -1);
            ax_buf_puts(b, "<td>");
            fmt_value(b, c.mean, metrics[m].pct);
            if (!isnan(c.mean)) {
                ax_buf_puts(b, " <small>[");
                fmt_value(b, c.lo, metrics[m].pct);
                ax_buf_puts(b, ", ");
                fmt_value(b, c.hi, metrics[m].pct);
                ax_buf_puts(b, "]</small>");
            }
            ax_buf_puts(b, "</td>");
        }
        ax_buf_puts(b, "</tr>\n");
    }
    ax_buf_puts(b, "</table>\n");
}

static int write_html(const struct rp_run *run, const double *v, const char *plot_dir, int plots)
{
    static const char *const svgs[] = {"context.svg", "cumulative.svg", "reuse.svg", "events.svg"};
    struct ax_buf b;
    size_t i;
    int rc;

    ax_buf_init(&b, (size_t)-1 / 2);
    ax_buf_puts(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                    "<title>anthroxy replay: ");
    html_escape(&b, run->exp->name);
    ax_buf_puts(
        &b,
        "</title><style>body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "th{background:#f3f3f3}small{color:#666}figure{margin:1em 0}"
        ".note{background:#fff6d5;padding:1em;border:1px solid #e6c200}</style></head><body>\n");
    ax_buf_puts(&b, "<h1>Replay of experiment ");
    html_escape(&b, run->exp->name);
    ax_buf_printf(&b,
                  "</h1>\n<p>%d sessions, %lld turns per arm, %d arms; window: ", run->n_sessions,
                  (long long)(run->n_arms ? run->n_rows / run->n_arms : 0), run->n_arms);
    if (run->window > 0)
        ax_buf_printf(&b, "%lld tokens", (long long)run->window);
    else
        ax_buf_puts(&b, "as recorded");
    ax_buf_puts(&b, "; token counts: ");
    if (run->up) {
        ax_buf_puts(&b, "the upstream's prompt_tokens (");
        html_escape(&b, run->upstream);
        ax_buf_puts(&b, ")");
    } else {
        ax_buf_puts(&b, "estimates calibrated by the recorded prompt_tokens");
    }
    ax_buf_printf(&b, ". Replayed in %.2f s.</p>\n", run->elapsed_s);
    html_verdict(&b, run, v);
    ax_buf_puts(&b, "<h2>Per arm</h2><p>Means over sessions, with 95 % bootstrap intervals "
                    "(resampling sessions).</p>\n");
    html_table(&b, run, v, 0);
    if (run->n_arms > 1) {
        ax_buf_puts(&b, "<h2>Difference to the first arm</h2><p>Session by session (paired); an "
                        "interval that excludes 0 is a difference these sessions show.</p>\n");
        html_table(&b, run, v, 1);
    }
    ax_buf_puts(&b, "<h2>Plots</h2>\n");
    if (plots == 0) {
        for (i = 0; i < sizeof(svgs) / sizeof(svgs[0]); i++)
            inline_svg(&b, plot_dir, svgs[i]);
    } else {
        ax_buf_printf(&b,
                      "<p class=\"note\">%s Install it with <code>sudo apt-get install "
                      "gnuplot-nox</code> (or run <code>scripts/setup.sh</code>'s "
                      "<code>ax_setup_packages</code>), then replay again. The tables above "
                      "and turns.csv hold every figure.</p>\n",
                      plots == 1 ? "The plots need gnuplot, which is not installed."
                                 : "gnuplot failed to draw the plots.");
    }
    ax_buf_puts(&b, "<h2>Arms</h2><ul>\n");
    for (i = 0; i < (size_t)run->n_arms; i++) {
        ax_buf_puts(&b, "<li><b>");
        html_escape(&b, arm_name(run, (int)i));
        ax_buf_puts(&b, "</b>: ");
        html_escape(&b, run->arms[i].chain);
        ax_buf_puts(&b, "</li>\n");
    }
    ax_buf_puts(&b, "</ul><p>Every figure per turn: turns.csv; everything: report.json "
                    "(docs/experiments.md).</p></body></html>\n");
    rc = write_file(run->out_dir, "report.html", b.data, b.len);
    ax_buf_free(&b);
    return rc;
}

int ax__replay_report(struct rp_run *run)
{
    double *v = session_figures(run);
    char plot_dir[4096], script[4096];
    int rc = -1, plots = -1, nt, n = run->n_arms + 1;

    if (v == NULL)
        return -1;
    snprintf(plot_dir, sizeof(plot_dir), "%s/plots", run->out_dir);
    mkdir(plot_dir, 0755);
    if (write_csv(run) < 0 || write_json(run, v) < 0)
        goto done;
    if (write_plot_data(run, plot_dir, &nt) == 0) {
        int len = snprintf(script, sizeof(script), GP_SCRIPT, n, n, n, n, n);
        if (len > 0 && (size_t)len < sizeof(script) &&
            write_file(plot_dir, "plots.gp", script, (size_t)len) == 0)
            plots = run_gnuplot(plot_dir);
    }
    if (plots == 1)
        fprintf(stderr, "anthroxy replay: gnuplot is not installed: report.html has the tables "
                        "only (sudo apt-get install gnuplot-nox)\n");
    else if (plots < 0)
        fprintf(stderr,
                "anthroxy replay: gnuplot failed (%s/gnuplot.log): report.html has the "
                "tables only\n",
                plot_dir);
    rc = write_html(run, v, plot_dir, plots);
    if (rc == 0)
        fprintf(stderr, "anthroxy replay: wrote %s/report.html, report.json, turns.csv\n",
                run->out_dir);
done:
    free(v);
    return rc;
}
