/*
 * auth: the OAuth2 client-credentials token cache.
 *
 * One token request per token lifetime per client: the token is refreshed
 * ahead of expiry (skew: 5 minutes, or a quarter of short lifetimes); while
 * one thread fetches, the others wait for its result (or keep using the old
 * token while it is still valid); a 401 drops the token only if it is the
 * one that failed. A static token (MAAS_TOKEN) is used as is.
 */
#ifndef MAAS_LIB_AUTH_H
#define MAAS_LIB_AUTH_H

#include <pthread.h>
#include <stdint.h>
#include "error.h"

struct maas_client;

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
