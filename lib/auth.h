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
 */
#ifndef MAAS_LIB_AUTH_H
#define MAAS_LIB_AUTH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include "error.h"

struct maas_client;

/* A shorter expires_in (1e-9, say) is taken as this: never a fetch loop. */
#define MAAS_TOKEN_LIFETIME_FLOOR_MS 1000
/* At most one token request per this many ms per client, retries included. */
#define MAAS_TOKEN_REQUEST_INTERVAL_MS 1000
/* After a failed refresh (the cached token still valid): the first retry
 * after this, doubling on each failure up to the maximum. */
#define MAAS_TOKEN_REFRESH_BACKOFF_MS 1000
#define MAAS_TOKEN_REFRESH_BACKOFF_MAX_MS 30000
/* A waiter that can be cancelled looks at its flag at least this often
 * (maas_stream_cancel also wakes it at once). */
#define MAAS_AUTH_CANCEL_POLL_MS 20

typedef struct maas_auth {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    char *header;           /* "Authorization: <type> <token>"; NULL when none; wiped when dropped */
    uint64_t generation;    /* bumped each time a token is installed */
    int64_t refresh_at;     /* monotonic ms: fetch a new token from then on */
    int64_t expires_at;     /* monotonic ms: the token must not be used after */
    int fetching;           /* a fetch is in flight */
    uint64_t fetches_done;  /* bumped when a fetch ends, with its outcome below */
    maas_error_rec fetch_error; /* outcome of the last failed fetch */
    int fetch_abandoned;    /* the last fetch ended for its caller's own reason
                             * (cancelled, its deadline): not an outcome to share */
    int64_t last_request_at;/* real monotonic ms of the last token request sent, 0: none */
    int64_t retry_at;       /* after a failed refresh: no new fetch before (a->now clock) */
    unsigned refresh_failures; /* consecutive failed refreshes, for the back-off */
    unsigned waiters;       /* threads waiting for another's fetch (tests read it) */
    int is_static;
    int64_t (*now)(void *); /* the clock (tests inject one) */
    void *now_payload;
} maas_auth;

/* A copy of the header for one request, with the generation it came from. */
typedef struct maas_auth_ticket {
    char *header;
    uint64_t generation;
} maas_auth_ticket;

maas_status maas_auth_init(maas_auth *a, const char *static_token);
void maas_auth_cleanup(maas_auth *a);

/* A valid token for one request, fetching one if needed. */
maas_status maas_auth_acquire(struct maas_client *c, maas_auth_ticket *out, maas_error_rec *err);
/*
 * The same for a stream: every wait (its own fetch, another thread's, the
 * rate limit, a backoff) ends with MAAS_ERR_CANCELLED once *cancel is set
 * and with MAAS_ERR_DEADLINE at deadline_at (real monotonic ms, 0: none).
 */
maas_status maas_auth_acquire_for(struct maas_client *c, maas_auth_ticket *out,
                                  atomic_int *cancel, int64_t deadline_at, maas_error_rec *err);
/* Wake every thread waiting in the token cache (a cancellation). Takes no lock. */
void maas_auth_wake(struct maas_client *c);
/*
 * Sleep ms, woken by maas_auth_wake: CANCELLED once *cancel is set,
 * DEADLINE at deadline_at (0: none), else MAAS_OK.
 */
maas_status maas_auth_sleep(struct maas_client *c, int64_t ms, atomic_int *cancel,
                            int64_t deadline_at, maas_error_rec *err);
/* Wipe and free the ticket's copy. */
void maas_auth_release(maas_auth_ticket *t);
/* The API answered 401 to `generation`: drop that token if it is still current.
 * Returns nonzero when a replay with a new token makes sense (not a static token). */
int maas_auth_reject(struct maas_client *c, uint64_t generation);
/* ms until the cached token should be refreshed; 0 when there is none. */
int64_t maas_auth_remaining_ms(struct maas_client *c);

/* Overwrite memory the compiler may not optimise away. */
void maas_wipe(void *p, size_t n);
/* Wipe a NUL-terminated string and free it. */
void maas_wipe_free(char *s);

#endif
