/*
 * call: the layer above the transport and the token cache. A call is
 * attempts with retries under one deadline, with the client's token in an
 * Authorization header and one replay after a 401; streams (stream.c) make
 * their own attempts but share the retry policy below.
 */
#ifndef MAAS_LIB_CALL_H
#define MAAS_LIB_CALL_H

#include <stdatomic.h>
#include <stdint.h>
#include "auth.h"
#include "error.h"
#include "http.h"

struct maas_client;

/* Is a failure worth another attempt (nothing having reached the caller)? */
int maas_retry_worth(const maas_error_rec *err);
/* Delay before retry number `retry` (1-based), honouring Retry-After; -1: no more retries. */
int64_t maas_retry_delay_ms(const struct maas_client *c, unsigned retry, const maas_error_rec *err);

/*
 * A whole call: attempts with retries and backoff under one deadline (the
 * client's, from the start of the call, or f->deadline_at if nearer; none
 * but the call's own timeout when f->deadline_at is MAAS_UNBOUNDED), and (with_auth) the
 * client's token in an Authorization header, replayed once with a new token
 * after a 401. MAAS_OK only for a 2xx answer, whose body is in out.
 * f->headers are the call's own headers (the token is added per attempt).
 */
maas_status maas_call(struct maas_client *c, const maas_fetch *f, int with_auth, maas_response *out,
                      maas_error_rec *err);
/*
 * The token request: POST the client credentials to the token endpoint (with
 * retries, at most one request per *last_request_at + the rate limit) and
 * parse the answer. The token cache's fetch hook; wipes what held a secret.
 */
maas_status maas_call_token(struct maas_client *c, char **header, int64_t *lifetime_ms,
                            atomic_int *cancel, int64_t deadline_at, int64_t *last_request_at,
                            maas_error_rec *err);

#endif
