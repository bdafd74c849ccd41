/*
 * stream: the state of one generation and the engine that advances it, for
 * stream.c (the blocking iterator) and for whoever schedules streams without
 * blocking, through maas_stream_sched (multi.c: many streams on one thread).
 */
#ifndef MAAS_LIB_STREAM_H
#define MAAS_LIB_STREAM_H

#include <stdatomic.h>
#include <stdint.h>

#include "auth.h"
#include "clientdata.h"
#include "error.h"
#include "http.h"
#include "ndjson.h"

/* The body of a non-200 answer kept for its error message. */
#define ERROR_BODY_MAX (64 * 1024)


typedef enum stream_state {
    S_NEW,           /* opened, no attempt yet */
    S_RUNNING,       /* an attempt is under way */
    S_BACKOFF,       /* waiting until wake_at before the next attempt */
    S_WAIT_CATALOGUE,/* a multi's stream: the catalogue is being fetched aside */
    S_WAIT_TOKEN,    /* a multi's stream: a token is being fetched aside */
    S_FINAL_PENDING, /* the final message's token was handed out; MAAS_DONE is next */
    S_DONE,
    S_FAILED
} stream_state;

struct maas_stream;

/* What a multi's stream asks its scheduler to fetch aside (never in its loop). */
typedef enum maas_need {
    MAAS_NEED_CATALOGUE, /* the stream waits for it (S_WAIT_CATALOGUE) */
    MAAS_NEED_TOKEN,     /* the stream waits for it (S_WAIT_TOKEN) */
    MAAS_NEED_REFRESH    /* no one waits: the token served is due for a refresh */
} maas_need;

/*
 * What a stream tells whoever schedules it without blocking (a maas_multi):
 * the scheduler sets s->sched and s->sched_data when it takes the stream, and
 * the stream calls these, never its scheduler by name.
 */
typedef struct maas_stream_sched {
    void (*ready)(struct maas_stream *s);     /* bytes arrived (inside libcurl): advance it soon */
    void (*track)(struct maas_stream *s);     /* its clocks changed (maas_stream_next_deadline) */
    void (*cancelled)(struct maas_stream *s); /* maas_stream_cancel, from any thread */
    void (*forget)(struct maas_stream *s);    /* it is being freed: drop every reference */
    /* Fetch it aside and hand it over (maas_stream_*_ready) on the stream's
     * thread; MAAS_OK, or why the fetch could not even start. */
    maas_status (*need)(struct maas_stream *s, maas_need what);
} maas_stream_sched;

struct maas_stream {
    maas_client *c;
    maas_xfer x;
    atomic_int cancel;
    stream_state state;

    char *url;
    char *body;
    size_t body_len;
    struct curl_slist *headers;  /* the fixed ones; the token is added per attempt */
    struct curl_slist *auth;     /* this attempt's token node, wiped when dropped */
    maas_auth_ticket ticket;
    int ticket_ready;            /* ticket was fetched aside for the next attempt */
    struct json_t *pending_body; /* S_WAIT_CATALOGUE: the body but for its model */
    char *model_name;            /* ... and the model it names */

    maas_ndjson dec;
    maas_http_meta meta;
    long http_status;
    int headers_done;            /* the header block ended: a failure now cuts the body */
    int line_has_text;           /* the line being received holds more than blanks */
    char *error_body;
    size_t error_len;
    maas_status write_status;    /* a decoder failure seen while receiving */

    unsigned attempts, retries;
    int replayed;
    int sent;                    /* the current attempt reached the network */
    int64_t wake_at;             /* S_BACKOFF: monotonic ms of the next attempt */
    size_t tokens;               /* delivered to the caller */
    maas_token token;

    maas_details details;
    char *final_text;            /* the final message's token text, kept past the decoder */
    char *finish_name;
    char *generated_text;
    char request_id[MAAS_REQUEST_ID_MAX];

    maas_error_rec err;

    /* A scheduled stream: its own easy handle in the scheduler's multi handle,
     * the callbacks it was added with, and the scheduler's bookkeeping. */
    const maas_stream_sched *sched;         /* NULL: the caller drives it (maas_stream_next) */
    void *sched_data;                       /* the scheduler's own */
    maas_channel own;
    maas_token_cb on_token;
    maas_details_cb on_details;
    maas_done_cb on_done;
    void *payload;
    struct maas_stream *prev, *next;        /* the scheduler's streams, until freed */
    struct maas_stream *rprev, *rnext;      /* the scheduler's ready list */
    int ready;
    int details_reported;                   /* on_details was called */
    int finished;                           /* on_done was called */
    size_t heap_index;                      /* position in the scheduler's timer heap, or SIZE_MAX */

    /* Monotonic seconds, for the timings of maas_details. */
    double t_start;                         /* the first attempt started */
    double t_first;                         /* the first token was decoded; 0: none yet */
};

/*
 * Validate the request, resolve the model, build the body, take a token. With
 * defer (a multi's stream), nothing waits on the network: the model is
 * resolved later when the catalogue is not at hand, and the token is taken by
 * the first attempt (the scheduler starts the deadline: x.deadline_at).
 */
maas_status maas_stream_create(maas_stream **out, maas_client *c, const maas_request *r,
                               int defer, maas_error_rec *err);
/* What was fetched aside has come (st, and err when it failed): a waiting
 * stream is ready to advance again (or has failed). Others are left alone. */
void maas_stream_catalogue_ready(maas_stream *s, maas_status st, const maas_error_rec *err);
void maas_stream_token_ready(maas_stream *s, maas_status st, const maas_auth_ticket *t,
                             const maas_error_rec *err);
/*
 * The engine: the next token (MAAS_OK), the end (MAAS_DONE), a failure, or,
 * when !block, MAAS_PENDING. A multi stream is only ever advanced with
 * block = 0 by its multi.
 */
maas_status maas_stream_advance(maas_stream *s, const maas_token **out, int block);
/* The earliest moment a clock of the stream may fire (INT64_MAX: none). */
int64_t maas_stream_next_deadline(const maas_stream *s);
/* A finished multi stream's transfer is over (or was given up): its connection may be kept. */
int maas_stream_settled(maas_stream *s);
/* Mark the stream failed with `st` (err already describes it); returns st. */
maas_status maas_stream_fail(maas_stream *s, maas_status st);
/* Release what the current attempt holds (the easy handle leaves its multi). */
void maas_stream_drop_attempt(maas_stream *s);

#endif
