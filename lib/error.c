#include <stdio.h>
#include <string.h>

#include "error.h"

static _Thread_local maas_error_rec tls_error;
static _Thread_local int tls_has_error;

const char *maas_strerror(maas_status status)
{
    /* No default: the compiler flags a status added without a text. */
    switch (status) {
    case MAAS_OK: return "success";
    case MAAS_DONE: return "stream finished";
    case MAAS_ERR_INVALID_ARGUMENT: return "invalid argument";
    case MAAS_ERR_NO_MEMORY: return "out of memory";
    case MAAS_ERR_CONFIG: return "configuration error";
    case MAAS_ERR_OPTIONS_VERSION: return "unsupported options version";
    case MAAS_ERR_CONNECT: return "could not connect";
    case MAAS_ERR_TLS: return "TLS error";
    case MAAS_ERR_CONNECT_TIMEOUT: return "connect timeout";
    case MAAS_ERR_IDLE_TIMEOUT: return "idle timeout";
    case MAAS_ERR_DEADLINE: return "deadline exceeded";
    case MAAS_ERR_NETWORK: return "network error";
    case MAAS_ERR_AUTH: return "authentication failed";
    case MAAS_ERR_UNAUTHENTICATED: return "unauthenticated";
    case MAAS_ERR_PERMISSION_DENIED: return "permission denied";
    case MAAS_ERR_INVALID_REQUEST: return "invalid request";
    case MAAS_ERR_UNKNOWN_MODEL: return "unknown model";
    case MAAS_ERR_RATE_LIMITED: return "rate limited";
    case MAAS_ERR_UNAVAILABLE: return "service unavailable";
    case MAAS_ERR_SERVER: return "server error";
    case MAAS_ERR_HTTP: return "unexpected HTTP status";
    case MAAS_ERR_STREAM: return "error in stream";
    case MAAS_ERR_TRUNCATED: return "stream truncated";
    case MAAS_ERR_PROTOCOL: return "protocol error";
    case MAAS_ERR_LINE_TOO_LONG: return "line too long";
    case MAAS_ERR_CANCELLED: return "cancelled";
    case MAAS_ERR_INTERNAL: return "internal error";
    case MAAS_ERR_PROXY: return "proxy error";
    case MAAS_ERR_TEXT_TOO_LONG: return "generated text too long";
    }
    return "unknown status";
}

const char *maas_status_name(maas_status status)
{
    switch (status) {
#define NAME(s) case s: return #s;
    NAME(MAAS_OK)
    NAME(MAAS_DONE)
    NAME(MAAS_ERR_INVALID_ARGUMENT)
    NAME(MAAS_ERR_NO_MEMORY)
    NAME(MAAS_ERR_CONFIG)
    NAME(MAAS_ERR_OPTIONS_VERSION)
    NAME(MAAS_ERR_CONNECT)
    NAME(MAAS_ERR_TLS)
    NAME(MAAS_ERR_CONNECT_TIMEOUT)
    NAME(MAAS_ERR_IDLE_TIMEOUT)
    NAME(MAAS_ERR_DEADLINE)
    NAME(MAAS_ERR_NETWORK)
    NAME(MAAS_ERR_AUTH)
    NAME(MAAS_ERR_UNAUTHENTICATED)
    NAME(MAAS_ERR_PERMISSION_DENIED)
    NAME(MAAS_ERR_INVALID_REQUEST)
    NAME(MAAS_ERR_UNKNOWN_MODEL)
    NAME(MAAS_ERR_RATE_LIMITED)
    NAME(MAAS_ERR_UNAVAILABLE)
    NAME(MAAS_ERR_SERVER)
    NAME(MAAS_ERR_HTTP)
    NAME(MAAS_ERR_STREAM)
    NAME(MAAS_ERR_TRUNCATED)
    NAME(MAAS_ERR_PROTOCOL)
    NAME(MAAS_ERR_LINE_TOO_LONG)
    NAME(MAAS_ERR_CANCELLED)
    NAME(MAAS_ERR_INTERNAL)
    NAME(MAAS_ERR_PROXY)
    NAME(MAAS_ERR_TEXT_TOO_LONG)
#undef NAME
    }
    return "MAAS_ERR_UNKNOWN";
}

void maas_error_clear(maas_error_rec *e)
{
    e->message[0] = '\0';
    e->request_id[0] = '\0';
    e->pub.status = MAAS_OK;
    e->pub.http_status = 0;
    e->pub.grpc_code = -1;
    e->pub.message = e->message;
    e->pub.request_id = e->request_id;
    e->pub.attempts = 0;
    e->pub.retry_after = -1.0;
    e->pub.rate_limit_limit = -1;
    e->pub.rate_limit_remaining = -1;
    e->pub.rate_limit_reset = -1.0;
}

maas_status maas_error_vset(maas_error_rec *e, maas_status st, const char *fmt, va_list ap)
{
    char tmp[MAAS_MSG_TEXT_MAX];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof tmp)
        n = (int)sizeof tmp - 1;
    /* Every message may carry network text (a server's message, a stream's
     * error line): escape it here, the one way into a record, so that it
     * can reach a terminal or a log line without acting on either. */
    maas_copy_printable(e->message, sizeof e->message, tmp, (size_t)n);
    e->pub.status = st;
    e->pub.message = e->message;
    e->pub.request_id = e->request_id;
    return st;
}

maas_status maas_error_set(maas_error_rec *e, maas_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    maas_error_vset(e, st, fmt, ap);
    va_end(ap);
    return st;
}

void maas_error_set_request_id(maas_error_rec *e, const char *id)
{
    if (id && *id)
        maas_copy_printable(e->request_id, sizeof e->request_id, id, strlen(id));
}

void maas_error_copy(maas_error_rec *dst, const maas_error_rec *src)
{
    if (dst == src)
        return;
    memcpy(dst, src, sizeof *dst);
    dst->pub.message = dst->message;
    dst->pub.request_id = dst->request_id;
}

maas_status maas_error_publish(const maas_error_rec *e)
{
    maas_error_copy(&tls_error, e);
    tls_has_error = 1;
    return e->pub.status;
}

maas_status maas_fail(maas_status st, const char *fmt, ...)
{
    va_list ap;
    maas_error_clear(&tls_error);
    va_start(ap, fmt);
    maas_error_vset(&tls_error, st, fmt, ap);
    va_end(ap);
    tls_has_error = 1;
    return st;
}

const maas_error *maas_last_error(void)
{
    return tls_has_error ? &tls_error.pub : NULL;
}
