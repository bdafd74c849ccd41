/*
 * clientdata: the data of a maas_client and of the modules' shared state
 * inside it, and nothing else. No module's functions are declared here, so
 * every layer from the transport up may include it without depending on the
 * modules above it (the client's lifecycle, in client.c, sits on top).
 * Each block says which module owns it; only that module writes it.
 */
#ifndef MAAS_LIB_CLIENTDATA_H
#define MAAS_LIB_CLIENTDATA_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <curl/curl.h>
#include "error.h"
#include "log.h"

/* ---- owned by the transport (http.c) ---------------------------------- */

/*
 * A channel is a multi handle and an easy handle used by one transfer at a
 * time. Idle channels wait in the client's pool with their keep-alive
 * connections in the multi handle's cache: libcurl does not support sharing
 * a connection cache between concurrent threads, so connections are reused
 * by handing whole channels from call to call instead.
 */
typedef struct maas_channel {
    CURLM *multi;
    CURL *easy;
    struct maas_channel *next;
} maas_channel;

#define MAAS_CHANNEL_POOL_MAX 16

typedef struct maas_http {
    CURLSH *share;           /* DNS cache and TLS sessions, shared by all threads */
    pthread_mutex_t locks[CURL_LOCK_DATA_LAST];
    pthread_mutex_t pool_lock;
    maas_channel *pool;      /* idle channels */
    unsigned pooled;
    char user_agent[160];
    atomic_int api_h2;       /* the API host's last answer came over HTTP/2 */
} maas_http;

/* ---- owned by the hub (hub.c) ------------------------------------------ */

/* The shared multi handle of blocking streams over HTTP/2. */
typedef struct maas_hub {
    pthread_mutex_t lock;
    pthread_cond_t cond;     /* the multi handle free, for those that want it */
    CURLM *multi;            /* made on first use */
    int driving;             /* a thread is inside libcurl with the multi handle */
    unsigned want;           /* threads waiting to add or remove a transfer */
    struct maas_xfer *xfers; /* the transfers on it, to find a finished one's */
} maas_hub;

/* ---- owned by the token cache (auth.c) -------------------------------- */

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
    /* The token request itself (the calls layer's, installed by the client):
     * the cache decides when to ask, never how. */
    maas_status (*fetch)(struct maas_client *c, char **header, int64_t *lifetime_ms,
                         atomic_int *cancel, int64_t deadline_at, int64_t *last_request_at,
                         maas_error_rec *err);
    void *now_payload;
} maas_auth;

/* ---- the client (client.c sets it up; the others read the options) ---- */

#define MAAS_COUNTER_SLOTS 5

struct maas_client {
    char *client_id;
    char *client_secret;       /* wiped when freed */
    char *cloud_account;
    char *api_base_url;        /* without a trailing '/' */
    char *auth_url;
    char *ca_bundle;
    char *proxy;               /* NULL: libcurl's environment; "": none; wiped when freed */
    char *proxy_ca_bundle;     /* NULL: ca_bundle */
    long connect_timeout_ms;
    long idle_timeout_ms;      /* <= 0: none */
    long deadline_ms;          /* <= 0: none */
    int max_retries;           /* 0: none */
    long retry_base_ms, retry_max_ms, retry_after_max_ms;
    long token_refresh_skew_ms;
    size_t max_line_bytes;
    long token_timeout_ms;     /* whole token call; 0: none */
    long models_timeout_ms;    /* whole GET /models; 0: none */
    size_t max_text_bytes;     /* maas_generate_text()'s cap */
    int insecure;
    int http_version; /* a maas_http_version */
    maas_log_sink log;

    maas_auth auth;
    maas_http http;
    maas_hub hub;
    int auth_ready, http_ready, hub_ready; /* what client_destroy must undo */

    /* The catalogue (models.c), fetched once, to resolve a request's model
     * name: set once under catalogue_lock (one fetch at a time), read
     * without it (a multi's add must not wait behind a fetch). */
    pthread_mutex_t catalogue_lock;
    maas_model_list *_Atomic catalogue;

    _Atomic uint64_t counters[MAAS_COUNTER_SLOTS];
};

/* Any thread, any layer: the counters are relaxed atomics. */
static inline void maas_count(maas_client *c, maas_counter which, uint64_t n)
{
    atomic_fetch_add_explicit(&c->counters[which], n, memory_order_relaxed);
}

#endif
