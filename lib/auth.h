/*
 * auth: the OAuth2 client-credentials token cache.
 *
 * One token request per token lifetime per client: the token is refreshed
 * ahead of expiry (skew: 5 minutes, or a quarter of short lifetimes); while
 * one thread fetches, the others wait for its result, failure included (or
 * keep using the old token while it is still valid); a refresh that fails
 * while the token is still valid serves the cached token and is tried again
 * after a back-off; a 401 drops the token only if it is the one that failed.
 * Whatever the server says, lifetimes have a floor and the client sends at
 * most one token request per MAAS_TOKEN_REQUEST_INTERVAL_MS. A static token
 * (MAAS_TOKEN) is used as is.
 *
 * The cache decides when a token is needed; the request itself (Basic
 * credentials, retries) belongs to the calls layer above, which the client
 * installs as a->fetch: the cache never reaches the transport.
 */
#ifndef MAAS_LIB_AUTH_H
#define MAAS_LIB_AUTH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include "clientdata.h"
#include "error.h"


/* A shorter expires_in (1e-9, say) is taken as this: never a fetch loop. */
#define MAAS_TOKEN_LIFETIME_FLOOR_MS 1000
/* At most one token request per this many ms per client, retries included. */
#define MAAS_TOKEN_REQUEST_INTERVAL_MS 1000
/* After a failed refresh (the cached token still valid): the first retry
 * after this, doubling on each failure up to the maximum. */
#define MAAS_TOKEN_REFRESH_BACKOFF_MS 1000
#define MAAS_TOKEN_REFRESH_BACKOFF_MAX_MS 30000

/* A copy of the header for one request, with the generation it came from. */
typedef struct maas_auth_ticket {
    char *header;
    uint64_t generation;
} maas_auth_ticket;

/* The cache starts with no token (or the static one); the client then sets a->fetch. */
maas_status maas_auth_init(maas_auth *a, const char *static_token);
void maas_auth_cleanup(maas_auth *a);

/* A valid token for one request, fetching one if needed. */
maas_status maas_auth_acquire(struct maas_client *c, maas_auth_ticket *out, maas_error_rec *err);
/*
 * The same for a stream: every wait (its own fetch, another thread's, the
 * rate limit, a backoff) ends with MAAS_ERR_CANCELLED once *cancel is set
 * and with MAAS_ERR_DEADLINE at deadline_at (real monotonic ms, 0: none);
 * a fetch it makes is bounded as maas_call takes deadline_at (MAAS_UNBOUNDED:
 * by token_timeout_ms alone, for a fetch aside).
 */
maas_status maas_auth_acquire_for(struct maas_client *c, maas_auth_ticket *out,
                                  atomic_int *cancel, int64_t deadline_at, maas_error_rec *err);
/*
 * Never a wait, never the network (a maas_multi's streams): MAAS_OK with a
 * ticket when the cache holds a token that may be used now; MAAS_PENDING when
 * only a fetch can give one; MAAS_ERR_CONFIG when there is none and no
 * credentials to fetch one with. *refresh is set when the token served is due
 * for a refresh that no one has started: the caller has one fetched aside.
 */
maas_status maas_auth_try(struct maas_client *c, maas_auth_ticket *out, int *refresh,
                          maas_error_rec *err);
/* Wake every thread waiting in the token cache (a cancellation). Takes no lock. */
void maas_auth_wake(struct maas_client *c);
/*
 * Sleep ms, woken by maas_auth_wake: CANCELLED once *cancel is set,
 * DEADLINE at deadline_at (0: none), else MAAS_OK.
 */
maas_status maas_auth_sleep(struct maas_client *c, int64_t ms, atomic_int *cancel,
                            int64_t deadline_at, maas_error_rec *err);
/* Parse the token endpoint's answer into a header and a lifetime
 * (for the token request, which the calls layer sends). */
maas_status maas_auth_parse_token(const char *body, size_t len, char **header,
                                  int64_t *lifetime_ms, maas_error_rec *err);
/* Wipe and free the ticket's copy. */
void maas_auth_release(maas_auth_ticket *t);
/* The API answered 401 to `generation`: drop that token if it is still current.
 * Returns nonzero when a replay with a new token makes sense (not a static token). */
int maas_auth_reject(struct maas_client *c, uint64_t generation);
/* ms until the cached token should be refreshed; 0 when there is none. */
int64_t maas_auth_remaining_ms(struct maas_client *c);

#endif
