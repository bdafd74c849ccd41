/*
 * error: status names and the error records behind maas_last_error() and
 * maas_stream_error(). Records use fixed buffers so that out-of-memory and
 * every other failure can be reported without allocating.
 */
#ifndef MAAS_LIB_ERROR_H
#define MAAS_LIB_ERROR_H

#include <stdarg.h>
#include "maas/maas.h"
#include "message.h"

typedef struct maas_error_rec {
    maas_error pub;                       /* pub.message/request_id point into the buffers */
    char message[MAAS_MSG_TEXT_MAX];
    char request_id[MAAS_REQUEST_ID_MAX];
} maas_error_rec;

#if defined(__GNUC__)
#define MAAS_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MAAS_PRINTF(f, a)
#endif

/* Reset to "no failure" (status MAAS_OK, grpc -1, retry_after -1). */
void maas_error_clear(maas_error_rec *e);

/* Record a failure with a formatted message; returns st. Keeps http/grpc/request id. */
maas_status maas_error_set(maas_error_rec *e, maas_status st, const char *fmt, ...) MAAS_PRINTF(3, 4);
maas_status maas_error_vset(maas_error_rec *e, maas_status st, const char *fmt, va_list ap)
    MAAS_PRINTF(3, 0);

void maas_error_set_request_id(maas_error_rec *e, const char *id);
void maas_error_copy(maas_error_rec *dst, const maas_error_rec *src);

/* Make `e` this thread's last error (a copy); returns its status. */
maas_status maas_error_publish(const maas_error_rec *e);

/* Shorthand: record a failure with only a message as this thread's last error. */
maas_status maas_fail(maas_status st, const char *fmt, ...) MAAS_PRINTF(2, 3);

/* Not yet, and no wait was made: a stream advanced without blocking has
 * nothing to hand out until more bytes, the end of the transfer, a clock or a
 * fetch done aside; the token cache has no token without a fetch. Internal:
 * never returned to callers of the public API. */
#define MAAS_PENDING ((maas_status)1000)

#endif
