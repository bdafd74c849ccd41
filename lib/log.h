/* log: the client's log sink. Callers never pass secrets; see docs/configuration.md. */
#ifndef MAAS_LIB_LOG_H
#define MAAS_LIB_LOG_H

#include "error.h"

/* Where a client's lines go: set once when the client is made, read by any thread. */
typedef struct maas_log_sink {
    maas_log_level level;
    maas_log_cb cb;            /* NULL: stderr */
    void *payload;
} maas_log_sink;

void maas_log(const maas_log_sink *sink, maas_log_level level, const char *fmt, ...)
    MAAS_PRINTF(3, 4);
/* MAAS_LOG's value as a level; MAAS_LOG_OFF for unknown values. */
maas_log_level maas_log_level_from_env(void);

/* `c` is anything with a maas_log_sink named `log` (a maas_client). */
#define MAAS_DEBUG(c, ...) do { if ((c)->log.level >= MAAS_LOG_DEBUG) maas_log(&(c)->log, MAAS_LOG_DEBUG, __VA_ARGS__); } while (0)
#define MAAS_INFO(c, ...) do { if ((c)->log.level >= MAAS_LOG_INFO) maas_log(&(c)->log, MAAS_LOG_INFO, __VA_ARGS__); } while (0)
#define MAAS_WARN(c, ...) do { if ((c)->log.level >= MAAS_LOG_WARN) maas_log(&(c)->log, MAAS_LOG_WARN, __VA_ARGS__); } while (0)

#endif
