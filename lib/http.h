/*
 * http: the libcurl transport. Easy handles configured one way for every
 * request (TLS verification, CA bundle, User-Agent, keep-alive, connect
 * clock, a share handle so that connections, DNS and TLS sessions are
 * reused across the calls and threads of one client), the transfer driver
 * with the idle and deadline clocks and cancellation, the mapping of curl
 * failures and HTTP statuses onto maas_status. One attempt at a time:
 * retries and credentials are the calls layer's (call.c); the transport
 * knows nothing of tokens.
 */
#ifndef MAAS_LIB_HTTP_H
#define MAAS_LIB_HTTP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <curl/curl.h>
#include "clientdata.h"
#include "error.h"

struct maas_client;
struct maas_xfer;

/*
 * Another way to drive a transfer, given by a layer above (the hub's, for
 * blocking streams that share HTTP/2 connections across threads). `takes`
 * says whether it drives this attempt; if so its other functions replace
 * the transfer's own multi handle for it.
 */
typedef struct maas_xfer_driver {
    int (*takes)(const struct maas_xfer *x);
    maas_status (*start)(struct maas_xfer *x, maas_error_rec *err);
    maas_status (*step)(struct maas_xfer *x, maas_error_rec *err);
    void (*finish)(struct maas_xfer *x);
    void (*wakeup)(struct maas_xfer *x); /* from any thread, for the transfer's whole life */
} maas_xfer_driver;

maas_status maas_http_init(struct maas_client *c, maas_error_rec *err);
void maas_http_cleanup(maas_http *h);

/* Set the client's common options on an easy handle (after a reset). */
maas_status maas_http_setup(struct maas_client *c, CURL *easy, char *errbuf, maas_error_rec *err);

/* Headers every API request carries, plus `auth_header` (may be NULL). */
struct curl_slist *maas_http_headers(const char *auth_header, int json_body);
/* Free a header list after wiping it (it may hold a token). */
void maas_http_headers_free(struct curl_slist *h);

/* What a header callback learns of a response. */
typedef struct maas_http_meta {
    double retry_after;      /* seconds, -1 when absent */
    long rl_limit;           /* X-RateLimit-Limit, -1 when absent */
    long rl_remaining;       /* X-RateLimit-Remaining, -1 when absent */
    double rl_reset;         /* X-RateLimit-Reset in seconds from now, -1 when absent */
} maas_http_meta;
/* Every field "absent". */
void maas_http_meta_init(maas_http_meta *m);
/* Copy what the response said into a failure's record. */
void maas_http_meta_to_error(const maas_http_meta *m, maas_error_rec *err);
/* Seconds from an X-RateLimit-Reset value (delta seconds, a Unix time, or a
 * duration such as "1m30s" or "250ms"); -1 if unusable. */
double maas_http_parse_rate_reset(const char *value, time_t now);
size_t maas_http_header_cb(char *data, size_t size, size_t n, void *meta);

/*
 * One transfer driven on its own multi handle, with the clocks a request
 * has: connect (curl's), idle (gap between activity marks) and deadline.
 */
typedef struct maas_xfer {
    struct maas_client *client;
    maas_channel *ch;
    CURL *easy;              /* ch->easy, once set up for a request */
    int external;            /* ch belongs to a maas_multi stream: never pooled */
    int added;
    int done;
    CURLcode result;
    int64_t deadline_at;     /* monotonic ms, 0 for none */
    int64_t idle_ms;         /* <= 0 for none */
    int64_t idle_since;      /* monotonic ms of the last activity mark */
    int connected;           /* the connection is up: the idle clock runs */
    int64_t up_seen;         /* request body bytes sent so far: progress restarts the idle clock */
    int sending;             /* the request body is not all sent yet */
    long deadline_ms;        /* the deadline's length, for its message (0: the client's) */
    const char *deadline_what; /* what the deadline bounds, for its message (NULL: a stream) */
    /* Called (inside libcurl) when the idle clock starts: a multi's stream must
     * enter its clock heap then, or a silent server holds it for ever. */
    void (*on_armed)(void *payload);
    void *armed_payload;
    atomic_int *cancel;      /* may be NULL */
    unsigned long marks;     /* maas_xfer_mark() calls: a step that saw one returns at once */
    int poll_ms;             /* > 0: look at *cancel this often (nothing wakes this channel) */
    char errbuf[CURL_ERROR_SIZE];
    /* Where libcurl's body and headers go: set before maas_xfer_start, which
     * installs them (directly, or behind the hub's queue). */
    curl_write_callback write_fn;
    void *write_data;
    curl_write_callback header_fn;
    void *header_data;
    int api_host;            /* a request to the API host: its protocol is remembered */
    const maas_xfer_driver *driver; /* may drive its attempts instead (NULL: none) */
    /* On the hub (hub.c): what its driver hands over, under hub->lock. */
    maas_hub *hub;           /* this attempt runs on the client's shared multi handle */
    struct maas_xfer *hub_next;
    char *inbox;             /* queued header and body records, in arrival order */
    size_t inbox_len, inbox_cap;
    char *spare;             /* the other buffer, swapped with inbox to hand over */
    size_t spare_cap;
    int hub_done;            /* libcurl finished the transfer (hub_result) ... */
    CURLcode hub_result;
    int hub_removed;         /* ... and the driver took it off the multi handle */
    int hub_overflow;        /* the transfer was cut: 1 more than MAAS_HUB_BACKLOG_MAX
                              * waited, 2 no memory to keep it */
    int hub_connected;       /* the prerequest callback ran */
    int hub_progress;        /* hub_ulnow / hub_ultotal changed */
    curl_off_t hub_ulnow, hub_ultotal;
    pthread_cond_t hub_cond; /* news for this transfer: only its thread waits on it ... */
    int hub_cond_live;       /* ... while the attempt is on the hub */
    int hub_waiting;         /* its thread waits on hub_cond */
} maas_xfer;

/*
 * Connections a multi handle opens to the API host once it is known to
 * speak HTTP/2 (a multi's, the hub's): streams beyond what they carry at
 * once (the server's SETTINGS_MAX_CONCURRENT_STREAMS each, commonly 100)
 * wait for a free stream slot instead of opening connection after
 * connection. Never over HTTP/1.1, where it would queue streams.
 */
#define MAAS_MAX_HOST_CONNECTIONS 16

/* The cap above for a multi handle whose transfers go to the API host, as
 * the client knows it now (none until the API host has answered over h2). */
void maas_http_cap_connections(struct maas_client *c, CURLM *multi);

/* What the progress and prerequest callbacks do, on the transfer's own thread. */
void maas_xfer_progress(maas_xfer *x, curl_off_t ultotal, curl_off_t ulnow);
void maas_xfer_connected(maas_xfer *x);
/* How long the next wait may last, or an expired clock's status. */
maas_status maas_xfer_next_wait(const maas_xfer *x, int64_t *wait_ms, maas_error_rec *err);
/* The transfer's version of HTTP, learned for the client when it is the API host's. */
void maas_xfer_learn_protocol(maas_xfer *x);

/* Take a channel from the pool (or make one). The clocks come from the client. */
maas_status maas_xfer_init(maas_xfer *x, struct maas_client *c, atomic_int *cancel,
                           maas_error_rec *err);
/* For a maas_multi stream: its own channel (the multi's handle and the stream's easy handle). */
void maas_xfer_init_external(maas_xfer *x, struct maas_client *c, atomic_int *cancel,
                             maas_channel *ch);
/* Give the channel back (a channel whose transfer was cut loses its connection). */
void maas_xfer_cleanup(maas_xfer *x);
/* Reset the easy handle with the client's options, for one attempt. */
maas_status maas_xfer_prepare(maas_xfer *x, maas_error_rec *err);
/* Start the attempt prepared on x->easy and its idle clock. */
maas_status maas_xfer_start(maas_xfer *x, maas_error_rec *err);
/* End the attempt: remove the easy handle from the multi handle, count connections. */
void maas_xfer_finish(maas_xfer *x);
/* Restart the idle clock (a message, or the caller gave control back). */
void maas_xfer_mark(maas_xfer *x);
/*
 * Drive the transfer once, waiting up to the nearer clock for activity.
 * MAAS_OK: call again (check x->done). Errors: CANCELLED, IDLE_TIMEOUT,
 * DEADLINE, INTERNAL (err filled).
 */
maas_status maas_xfer_step(maas_xfer *x, maas_error_rec *err);
/* Without waiting: has a clock expired (IDLE_TIMEOUT, DEADLINE) or the transfer been cancelled? */
maas_status maas_xfer_check(maas_xfer *x, maas_error_rec *err);
/* Sleep `ms`, cut short by cancellation or the deadline (returns CANCELLED / DEADLINE). */
maas_status maas_xfer_sleep(maas_xfer *x, int64_t ms, maas_error_rec *err);
/* Wake a maas_xfer_step() blocked in another thread. */
void maas_xfer_wakeup(maas_xfer *x);

/* Map a finished transfer's CURLcode (not CURLE_OK) onto a status in err. */
maas_status maas_http_curl_error(const maas_xfer *x, CURLcode rc, maas_error_rec *err);

/* Which endpoint answered: the same HTTP status means different things. */
typedef enum maas_endpoint {
    MAAS_EP_TOKEN,    /* 400/401/403 are refused credentials */
    MAAS_EP_MODELS,
    MAAS_EP_GENERATE  /* 404 NotFound and "can't find requested product" name the model */
} maas_endpoint;

/*
 * Map a non-2xx HTTP response onto a status in err, taking the server's
 * message, gRPC code and request id from the body (any of its shapes).
 */
maas_status maas_http_status_error(long http_status, const char *body, size_t len,
                                   maas_endpoint ep, maas_error_rec *err);

/* Seconds from a Retry-After value (delta-seconds or an HTTP date); -1 if unusable. */
double maas_http_parse_retry_after(const char *value, time_t now);

/* One whole request with a bounded body, as the token endpoint and /models need. */
typedef struct maas_fetch {
    const char *url;
    const char *post_body;    /* NULL: GET */
    size_t post_len;
    struct curl_slist *headers;
    size_t max_body;          /* larger answers fail with MAAS_ERR_PROTOCOL */
    maas_endpoint endpoint;
    int64_t deadline_at;      /* monotonic ms for the whole call, 0: none (set by maas_call) */
    long deadline_ms;         /* its length, for its message */
    /* A token fetch for a stream: cancellable, and within the stream's deadline
     * (maas_call keeps the nearer of deadline_at and the client's; with
     * MAAS_UNBOUNDED, a fetch aside, neither: only the call's own timeout). */
    atomic_int *cancel;       /* may be NULL */
    int64_t min_interval_ms;  /* > 0: attempts at least this far apart ... */
    int64_t *last_request_at; /* ... and from this one (in/out, 0: none) */
} maas_fetch;

typedef struct maas_response {
    long status;
    char *body;               /* NUL-terminated; free() it */
    size_t len;
    maas_http_meta meta;
} maas_response;

/* One attempt: HTTP errors are not failures here (look at out->status). */
maas_status maas_http_fetch(struct maas_client *c, const maas_fetch *f, maas_response *out,
                            maas_error_rec *err);

void maas_response_free(maas_response *r);

#endif
