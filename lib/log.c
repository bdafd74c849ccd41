#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

maas_log_level maas_log_level_from_env(void)
{
    const char *v = getenv("MAAS_LOG");
    if (!v || !*v)
        return MAAS_LOG_OFF;
    if (!strcasecmp(v, "debug"))
        return MAAS_LOG_DEBUG;
    if (!strcasecmp(v, "info"))
        return MAAS_LOG_INFO;
    if (!strcasecmp(v, "warn") || !strcasecmp(v, "warning"))
        return MAAS_LOG_WARN;
    return MAAS_LOG_OFF;
}

static const char *level_name(maas_log_level l)
{
    switch (l) {
    case MAAS_LOG_DEBUG: return "debug";
    case MAAS_LOG_INFO: return "info";
    case MAAS_LOG_WARN: return "warn";
    case MAAS_LOG_OFF: break;
    }
    return "";
}

void maas_log(const maas_log_sink *sink, maas_log_level level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    if (!sink || level > sink->level || level == MAAS_LOG_OFF)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (sink->cb) {
        sink->cb(level, line, sink->payload);
        return;
    }
    /* One fprintf per line so that lines from several threads do not interleave. */
    fprintf(stderr, "libmaas %s: %s\n", level_name(level), line);
}
