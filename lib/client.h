/* client: configuration, environment, lifecycle and counters of a maas_client. */
#ifndef MAAS_LIB_CLIENT_H
#define MAAS_LIB_CLIENT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include "auth.h"
#include "http.h"

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
    maas_log_level log_level;
    maas_log_cb log_cb;
    void *log_payload;

    maas_auth auth;
    maas_http http;
    int auth_ready, http_ready; /* what client_destroy must undo */

    /* The catalogue, fetched once, to resolve a request's model name. */
    pthread_mutex_t catalogue_lock;
    maas_model_list *catalogue;

    _Atomic uint64_t counters[MAAS_COUNTER_SLOTS];
};

static inline void maas_count(maas_client *c, maas_counter which, uint64_t n)
{
    atomic_fetch_add_explicit(&c->counters[which], n, memory_order_relaxed);
}

/* The client's catalogue (fetched on first use); NULL with err set on failure. */
const maas_model_list *maas_client_catalogue(maas_client *c, maas_error_rec *err);

#endif
