/* log.c - one line per event on stderr, with level and request id. */
#include "anthroxy_log.h"

#include <stdarg.h>
#include <stdio.h>
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

void ax_log_write(enum ax_log_level lvl, const char *req_id, const char *fmt, ...)
{
    char line[4096];
    struct timeval tv;
    struct tm tm;
    size_t n;
    va_list ap;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03dZ %-5s ", (int)(tv.tv_usec / 1000),
                          ax_log_level_name(lvl));
    if (req_id != NULL)
        n += (size_t)snprintf(line + n, sizeof(line) - n, "[%s] ", req_id);
    if (n < sizeof(line)) {
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        va_end(ap);
    }
    fprintf(stderr, "%s\n", line);
}
