/* log.c - one line per event on stderr, with level and request id, and what keeps a line
 * honest: every message is redacted (ax_redact: URL credentials, Authorization values, api
 * keys, the registered secrets) and escaped (control bytes and ill-formed UTF-8 as \xNN) in
 * ax_log_write, the one place lines are formatted, so no field can forge a line or leak a key.
 * translate_response.c and routes.c use the same redaction for what reaches a client. */
#include "anthroxy_log.h"
#include "anthroxy_utf8.h"

#include <ctype.h>
#include <pthread.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

enum ax_log_level ax_log_level_current = AX_LOG_LVL_INFO;
static int log_format = AX_LOG_FMT_TEXT;

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

int ax_log_level_parse(const char *name)
{
    if (name == NULL)
        return -1;
    if (strcasecmp(name, "DEBUG") == 0 || strcasecmp(name, "TRACE") == 0)
        return AX_LOG_LVL_DEBUG;
    if (strcasecmp(name, "INFO") == 0)
        return AX_LOG_LVL_INFO;
    if (strcasecmp(name, "WARN") == 0 || strcasecmp(name, "WARNING") == 0)
        return AX_LOG_LVL_WARN;
    if (strcasecmp(name, "ERROR") == 0 || strcasecmp(name, "CRITICAL") == 0)
        return AX_LOG_LVL_ERROR;
    return -1;
}

const char *ax_log_level_name(enum ax_log_level lvl)
{
    return lvl <= AX_LOG_LVL_ERROR ? level_names[lvl] : "?";
}

void ax_log_set_level(enum ax_log_level lvl)
{
    ax_log_level_current = lvl;
}

int ax_log_format_parse(const char *name)
{
    if (name != NULL && strcasecmp(name, "text") == 0)
        return AX_LOG_FMT_TEXT;
    if (name != NULL && strcasecmp(name, "json") == 0)
        return AX_LOG_FMT_JSON;
    return -1;
}

void ax_log_set_format(int fmt)
{
    log_format = fmt == AX_LOG_FMT_JSON ? AX_LOG_FMT_JSON : AX_LOG_FMT_TEXT;
}

/* ---- secrets ---------------------------------------------------------------------- */

/* Process-wide, like the log itself: a server registers its upstream key while it lives. */
static char *secrets[AX_LOG_MAX_SECRETS];
static int n_secrets;
/* --workers: servers on other threads add and remove their keys while this one logs */
static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;

int ax_log_secret_add(const char *secret)
{
    int rc = 0;

    if (secret == NULL || strlen(secret) < AX_LOG_SECRET_MIN)
        return 0;
    pthread_mutex_lock(&secrets_lock);
    if (n_secrets == AX_LOG_MAX_SECRETS)
        rc = AX_ETOOBIG;
    else if ((secrets[n_secrets] = strdup(secret)) == NULL)
        rc = AX_ENOMEM;
    else
        n_secrets++;
    pthread_mutex_unlock(&secrets_lock);
    return rc;
}

void ax_log_secret_remove(const char *secret)
{
    int i;

    if (secret == NULL)
        return;
    pthread_mutex_lock(&secrets_lock);
    for (i = 0; i < n_secrets; i++) {
        if (strcmp(secrets[i], secret) == 0) {
            free(secrets[i]);
            secrets[i] = secrets[--n_secrets];
            secrets[n_secrets] = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&secrets_lock);
}

/* ---- redaction -------------------------------------------------------------------- */

#define MASK "***"

/* Replaces s[at..at+len) of the n-byte text with the mask (never longer than what it
 * replaces: a value under 3 bytes becomes as many stars). Returns the new length. */
static size_t mask_span(char *s, size_t n, size_t at, size_t len)
{
    size_t m = len < 3 ? len : 3;

    memset(s + at, '*', m);
    memmove(s + at + m, s + at + len, n - at - len);
    return n - len + m;
}

static const char *find_ci(const char *s, size_t n, const char *lit, size_t from)
{
    size_t l = strlen(lit), i;

    for (i = from; i + l <= n; i++)
        if (tolower((unsigned char)s[i]) == lit[0] && strncasecmp(s + i, lit, l) == 0)
            return s + i;
    return NULL;
}

static int token_char(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' ||
           c == '=';
}

/* A header or JSON member value: up to a quote, comma, semicolon, ampersand or line end. */
static int value_char(unsigned char c)
{
    return c >= 0x20 && c != '"' && c != '\'' && c != ',' && c != ';' && c != '&' && c != '}' &&
           c != ']' && c != '\\';
}

/* The USER:PASS of scheme://USER:PASS@host becomes "***". */
static size_t redact_userinfo(char *s, size_t n)
{
    size_t i = 0, j;
    const char *p;

    while ((p = find_ci(s, n, "://", i)) != NULL) {
        i = (size_t)(p - s) + 3;
        for (j = i; j < n && strchr("/?#@ \t\r\n\"'<>\\", s[j]) == NULL; j++)
            ;
        if (j < n && s[j] == '@' && j > i && !(j - i == 3 && memcmp(s + i, MASK, 3) == 0)) {
            n = mask_span(s, n, i, j - i);
            i += 3;
        }
    }
    return n;
}

/* `name` then separators (quotes, ':' or '=', blanks), then the value: masked, except for
 * an auth scheme word in front of it (Bearer, Basic), which stays readable. */
static size_t redact_named(char *s, size_t n, const char *name, int scheme)
{
    size_t i = 0, j, v;
    const char *p;

    while ((p = find_ci(s, n, name, i)) != NULL) {
        j = (size_t)(p - s) + strlen(name);
        i = j;
        while (j < n && (s[j] == '"' || s[j] == '\'' || s[j] == ' ' || s[j] == '\t'))
            j++;
        if (j >= n || (s[j] != ':' && s[j] != '='))
            continue;
        j++;
        while (j < n && (s[j] == '"' || s[j] == '\'' || s[j] == ' ' || s[j] == '\t' ||
                         (s[j] == '\\' && j + 1 < n && s[j + 1] == '"')))
            j += s[j] == '\\' ? 2 : 1;
        if (scheme) { /* keep "Bearer " / "Basic " */
            for (v = j; v < n && isalpha((unsigned char)s[v]); v++)
                ;
            if (v < n && v > j && s[v] == ' ') {
                while (v < n && s[v] == ' ')
                    v++;
                j = v;
            }
        }
        if (j < n && (s[j] == '[' || s[j] == '{'))
            continue; /* a list or an object (the start-up log's "api-key = [...]") */
        for (v = j; v < n && value_char((unsigned char)s[v]); v++)
            ;
        while (v > j && (s[v - 1] == ' ' || s[v - 1] == '\t'))
            v--;
        if (v > j && !(v - j == 3 && memcmp(s + j, MASK, 3) == 0))
            n = mask_span(s, n, j, v - j);
        i = j;
    }
    return n;
}

/* "Bearer <token>" anywhere (an echoed header in prose): tokens of 6 bytes and more, so
 * "the bearer of" stays. */
static size_t redact_bearer(char *s, size_t n)
{
    size_t i = 0, j, v;
    const char *p;

    while ((p = find_ci(s, n, "bearer", i)) != NULL) {
        j = (size_t)(p - s) + 6;
        i = j;
        if (j >= n || (s[j] != ' ' && s[j] != '\t'))
            continue;
        while (j < n && (s[j] == ' ' || s[j] == '\t'))
            j++;
        for (v = j; v < n && token_char((unsigned char)s[v]); v++)
            ;
        if (v - j >= 6 && !(v - j == 3 && memcmp(s + j, MASK, 3) == 0)) {
            n = mask_span(s, n, j, v - j);
            i = j + 3;
        }
    }
    return n;
}

static size_t redact_secret(char *s, size_t n, const char *secret)
{
    size_t l = strlen(secret), i = 0;

    while (i + l <= n) {
        const char *p = memchr(s + i, secret[0], n - i - l + 1);
        if (p == NULL)
            break;
        i = (size_t)(p - s);
        if (memcmp(p, secret, l) == 0) {
            n = mask_span(s, n, i, l);
            i += 3;
        } else {
            i++;
        }
    }
    return n;
}

size_t ax_redact(char *s, size_t n)
{
    static const char *const named[] = {"x-api-key", "api-key",  "api_key",
                                        "apikey",    "password", "secret"};
    size_t k;
    int i;

    pthread_mutex_lock(&secrets_lock);
    for (i = 0; i < n_secrets; i++)
        n = redact_secret(s, n, secrets[i]);
    pthread_mutex_unlock(&secrets_lock);
    n = redact_userinfo(s, n);
    n = redact_named(s, n, "authorization", 1);
    n = redact_bearer(s, n);
    for (k = 0; k < sizeof(named) / sizeof(named[0]); k++)
        n = redact_named(s, n, named[k], 0);
    return n;
}

void ax_redact_cstr(char *s)
{
    s[ax_redact(s, strlen(s))] = '\0';
}

const char *ax_redact_url(const char *url, char *out, size_t cap)
{
    size_t n;

    if (url == NULL || cap == 0)
        return url;
    n = (size_t)snprintf(out, cap, "%s", url);
    if (n >= cap)
        n = cap - 1;
    out[redact_userinfo(out, n)] = '\0';
    return out;
}

/* ---- lines -------------------------------------------------------------------------- */

size_t ax_log_escape(const char *s, size_t n, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    size_t m = 0;
    int k;

    if (cap == 0)
        return 0;
    while (p < e) {
        unsigned char c = *p;
        char esc[4];
        size_t w;
        if (c >= 0x20 && c < 0x7f) {
            esc[0] = (char)c;
            w = 1;
        } else if (c >= 0x80 && (k = ax_utf8_check(p, e)) > 0) {
            if (m + (size_t)k + 1 > cap)
                break;
            memcpy(out + m, p, (size_t)k);
            m += (size_t)k;
            p += k;
            continue;
        } else {
            esc[0] = '\\';
            w = 2;
            if (c == '\n')
                esc[1] = 'n';
            else if (c == '\r')
                esc[1] = 'r';
            else if (c == '\t')
                esc[1] = 't';
            else {
                esc[1] = 'x';
                esc[2] = hex[c >> 4];
                esc[3] = hex[c & 15];
                w = 4;
            }
        }
        if (m + w + 1 > cap)
            break;
        memcpy(out + m, esc, w);
        m += w;
        p++;
    }
    out[m] = '\0';
    return m;
}

/* s[0..n) as the inside of a JSON string, to out[cap] (NUL-terminated, cut at an escape or
 * character boundary): well-formed UTF-8 as is, '"' and '\\' escaped, control bytes as \n,
 * \r, \t or \u00XX, ill-formed bytes as \ufffd. Returns the bytes written. */
static size_t json_escape(const char *s, size_t n, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    size_t m = 0;
    int k;

    if (cap == 0)
        return 0;
    while (p < e) {
        unsigned char c = *p;
        char esc[8];
        size_t w = 2;
        if (c >= 0x80 && (k = ax_utf8_check(p, e)) > 0) {
            if (m + (size_t)k + 1 > cap)
                break;
            memcpy(out + m, p, (size_t)k);
            m += (size_t)k;
            p += k;
            continue;
        }
        esc[0] = '\\';
        if (c >= 0x80) {
            memcpy(esc, "\\ufffd", 6);
            w = 6;
        } else if (c == '"' || c == '\\') {
            esc[1] = (char)c;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            w = 6;
        } else {
            esc[0] = (char)c;
            w = 1;
        }
        if (m + w + 1 > cap)
            break;
        memcpy(out + m, esc, w);
        m += w;
        p++;
    }
    out[m] = '\0';
    return m;
}

static size_t stamp(char *line, size_t cap)
{
    struct timeval tv;
    struct tm tm;
    size_t n;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    return n + (size_t)snprintf(line + n, cap - n, ".%03dZ", (int)(tv.tv_usec / 1000));
}

/* A JSON string member ,"key":"value" with value redacted and escaped; cut to fit. */
static size_t json_member(char *line, size_t n, size_t cap, const char *key, const char *v,
                          size_t len)
{
    char val[AX_LOG_LINE_MAX];

    if (len >= sizeof(val))
        len = ax_utf8_trim_partial(v, sizeof(val) - 1);
    memcpy(val, v, len);
    len = ax_redact(val, len);
    if (n + strlen(key) + 8 >= cap)
        return n;
    n += (size_t)snprintf(line + n, cap - n, ",\"%s\":\"", key);
    n += json_escape(val, len, line + n, cap - n - 3);
    line[n++] = '"';
    return n;
}

/* One JSON line: the stamp, level, request id, msg, then the fields. */
static void write_json(enum ax_log_level lvl, const char *req_id, const char *msg, size_t len,
                       const struct ax_log_field *f, int nf)
{
    char line[AX_LOG_LINE_MAX * 3], ts[40];
    size_t n, cap = sizeof(line) - 3;
    int i;

    stamp(ts, sizeof(ts));
    n = (size_t)snprintf(line, cap, "{\"time\":\"%s\",\"level\":\"%s\"", ts,
                         ax_log_level_name(lvl));
    if (req_id != NULL)
        n = json_member(line, n, cap, "request_id", req_id, strnlen(req_id, 64));
    n = json_member(line, n, cap, "msg", msg, len);
    for (i = 0; i < nf && n + 64 < cap; i++) {
        if (f[i].type == AX_LF_STR)
            n = json_member(line, n, cap, f[i].key, f[i].s ? f[i].s : "-",
                            f[i].s ? strlen(f[i].s) : 1);
        else if (f[i].type == AX_LF_INT)
            n += (size_t)snprintf(line + n, cap - n, ",\"%s\":%lld", f[i].key, f[i].i);
        else if (isfinite(f[i].d))
            n += (size_t)snprintf(line + n, cap - n, ",\"%s\":%.1f", f[i].key, f[i].d);
        else
            n += (size_t)snprintf(line + n, cap - n, ",\"%s\":null", f[i].key);
    }
    line[n++] = '}';
    line[n++] = '\n';
    fwrite(line, 1, n, stderr);
}

/* One text line from an already formatted message (redacted and escaped here). */
static void write_text(enum ax_log_level lvl, const char *req_id, char *msg, size_t len)
{
    char line[AX_LOG_LINE_MAX * 2];
    size_t n;

    len = ax_redact(msg, len);
    n = stamp(line, sizeof(line));
    n += (size_t)snprintf(line + n, sizeof(line) - n, " %-5s ", ax_log_level_name(lvl));
    if (req_id != NULL) {
        line[n++] = '[';
        n += ax_log_escape(req_id, strnlen(req_id, 64), line + n, 200);
        line[n++] = ']';
        line[n++] = ' ';
    }
    n += ax_log_escape(msg, len, line + n, sizeof(line) - n - 1);
    line[n++] = '\n';
    fwrite(line, 1, n, stderr);
}

void ax_log_fields(enum ax_log_level lvl, const char *req_id, const char *msg,
                   const struct ax_log_field *f, int nf)
{
    char text[AX_LOG_LINE_MAX];
    size_t n;
    int i, r;

    if (log_format == AX_LOG_FMT_JSON) {
        write_json(lvl, req_id, msg, strlen(msg), f, nf);
        return;
    }
    r = snprintf(text, sizeof(text), "%s", msg);
    n = r < 0 ? 0 : (size_t)r < sizeof(text) ? (size_t)r : sizeof(text) - 1;
    for (i = 0; i < nf && n + 1 < sizeof(text); i++) {
        if (f[i].type == AX_LF_STR)
            r = snprintf(text + n, sizeof(text) - n, " %s=%s", f[i].key, f[i].s ? f[i].s : "-");
        else if (f[i].type == AX_LF_INT)
            r = snprintf(text + n, sizeof(text) - n, " %s=%lld", f[i].key, f[i].i);
        else
            r = snprintf(text + n, sizeof(text) - n, " %s=%.1f", f[i].key, f[i].d);
        if (r < 0)
            break;
        n = n + (size_t)r < sizeof(text) ? n + (size_t)r : sizeof(text) - 1;
    }
    if (n == sizeof(text) - 1)
        n = ax_utf8_trim_partial(text, n);
    write_text(lvl, req_id, text, strnlen(text, n));
}

void ax_log_write(enum ax_log_level lvl, const char *req_id, const char *fmt, ...)
{
    char msg[AX_LOG_LINE_MAX];
    size_t len;
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r < 0)
        r = 0;
    len = (size_t)r < sizeof(msg) ? (size_t)r : sizeof(msg) - 1;
    if ((size_t)r > len)
        len = ax_utf8_trim_partial(msg, len); /* cut by the limit, not by the writer */
    len = strnlen(msg, len);                  /* a %c of NUL ends it, as it would a %s */
    if (log_format == AX_LOG_FMT_JSON)
        write_json(lvl, req_id, msg, len, NULL, 0); /* json_member redacts */
    else
        write_text(lvl, req_id, msg, len);
}
