/* log.c - one line per event on stderr, with level and request id, and what keeps a line
 * honest: every message is redacted (ax_redact: URL credentials, Authorization values, api
 * keys, the registered secrets) and escaped (control bytes and ill-formed UTF-8 as \xNN) in
 * ax_log_write, the one place lines are formatted, so no field can forge a line or leak a key.
 * translate_response.c and routes.c use the same redaction for what reaches a client. */
#include "anthroxy_log.h"
#include "anthroxy_utf8.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

enum ax_log_level ax_log_level_current = AX_LOG_LVL_INFO;

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

void ax_log_write(enum ax_log_level lvl, const char *req_id, const char *fmt, ...)
{
    char msg[AX_LOG_LINE_MAX], line[AX_LOG_LINE_MAX * 2];
    struct timeval tv;
    struct tm tm;
    size_t n, len;
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
    len = ax_redact(msg, strnlen(msg, len));  /* a %c of NUL ends it, as it would a %s */

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03dZ %-5s ", (int)(tv.tv_usec / 1000),
                          ax_log_level_name(lvl));
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
