/*
 * Integration: one table of faults, every engine. Each row is a server
 * misbehaving (hostile content, an HTTP status, a 401 to replay, an error
 * line before the first token, a stream cut or abandoned) and what the
 * consumer must see: the status, words of the message, the number of tokens,
 * the HTTP status and gRPC code, the attempts, and whether the stream's
 * connection is closed. Every row runs through maas_generate, the pull
 * iterator, a multi driven by maas_multi_poll and a multi driven by an event
 * loop (engines.c): a fault is added once and tested on every path. The two
 * blocking engines run it once more beside a neighbour: another thread
 * streaming a healthy answer on the same client, which must not notice.
 * Over HTTP/2 the two share one connection (the client's hub, lib/hub.c),
 * so the fault's stream is reset or cut beside a stream that keeps going.
 *
 * The connection check runs while the client (and the multi) is alive:
 * maas_client_free closes everything, so checking after it proves nothing.
 * Requests name their model by catalogue entry, so that the only API
 * connection is the stream's own (the token endpoint is another listener).
 *
 * With MAAS_TEST_FRONT=h2 the same table runs over HTTP/2, through nghttpx
 * in front of the emulator (harness.h): every per-stream behaviour must hold
 * there as on HTTP/1.1. The emulator then sees the front end's backend
 * connections and its choices, not the client's (nghttpx may read an
 * abandoned response to its end to keep its backend connection), so the
 * connections are checked on the direct run only.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engines.h"
#include "harness.h"

static emu E;
static maas_model_list *CATALOGUE;

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"
#define GEN_PATH "/v1/maas/generatestream"
#define IDLE_MS 2000L
#define LINE_CAP 65536

/*
 * The stream's connection after the run: closed (it was abandoned half-read,
 * or the server closed it), kept for reuse (the answer was read whole), or
 * either (an error line ends the stream while its last bytes may or may not
 * have arrived: both are right, a half-read connection is not, and the
 * emulator's streams_active tells that apart).
 */
enum conn { CLOSED, KEPT, EITHER };

struct fault_case {
    const char *name;      /* the cmocka test's name (MAAS_TEST_FILTER) */
    const char *directive; /* appended to the prompt: "[[fault:...]]", or "" */
    const char *queued;    /* queued once on the generate path (NULL: none) */
    int retries;           /* max_retries: MAAS_RETRIES_OFF or a count */
    int max_tokens;
    size_t stop_after;     /* the consumer gives up after this many tokens */
    int free_running;      /* ... by freeing the running stream */
    maas_status want;
    const char *words;     /* in the message (NULL: not checked) */
    long tokens;           /* tokens handed out */
    int http_status;       /* of the failure (0: not checked) */
    int grpc_code;         /* of the failure (0: not checked) */
    unsigned attempts;     /* of the failure, or API requests of a success */
    enum conn conn;
    unsigned replays;      /* MAAS_COUNTER_TOKEN_REPLAYS afterwards */
};

#define OFF MAAS_RETRIES_OFF

static const struct fault_case cases[] = {
    /* The clean stream, as a reference for the others. */
    { "clean", "", NULL, OFF, 10, 0, 0, MAAS_OK, NULL, 10, 0, 0, 1, KEPT, 0 },

    /* ---- the server says "error" ---- */
    /* Before any token it is the service at capacity: retried (2 retries here). */
    { "error-line-before-the-first-token", "[[fault:error-after=0]]", NULL, 2, 10, 0, 0,
      MAAS_ERR_STREAM, "maximum capacity", 0, 200, 14, 3, EITHER, 0 },
    { "error-line-after-3-tokens", "[[fault:error-after=3]]", NULL, 2, 10, 0, 0,
      MAAS_ERR_STREAM, "maximum capacity", 3, 200, 14, 1, EITHER, 0 },

    /* ---- HTTP statuses, retries off ---- */
    { "http-400", NULL, "status=400", OFF, 10, 0, 0, MAAS_ERR_INVALID_REQUEST,
      "rejected by maas-emulator fault", 0, 400, 3, 1, KEPT, 0 },
    { "http-403", NULL, "status=403", OFF, 10, 0, 0, MAAS_ERR_PERMISSION_DENIED,
      "permission denied", 0, 403, 7, 1, KEPT, 0 },
    { "http-404", NULL, "status=404", OFF, 10, 0, 0, MAAS_ERR_UNKNOWN_MODEL, "not supported", 0,
      404, 5, 1, KEPT, 0 },
    { "http-429", NULL, "status=429", OFF, 10, 0, 0, MAAS_ERR_RATE_LIMITED, "rate limit", 0, 429,
      8, 1, KEPT, 0 },
    { "http-500", NULL, "status=500", OFF, 10, 0, 0, MAAS_ERR_SERVER, "internal error", 0, 500,
      13, 1, KEPT, 0 },
    { "http-503", NULL, "status=503", OFF, 10, 0, 0, MAAS_ERR_UNAVAILABLE, "maximum capacity", 0,
      503, 14, 1, KEPT, 0 },

    /* ---- retried, then fine ---- */
    { "http-503-retried", NULL, "status=503", 2, 10, 0, 0, MAAS_OK, NULL, 10, 0, 0, 2, KEPT, 0 },
    { "dropped-before-the-answer-retried", NULL, "drop-after=0", 2, 10, 0, 0, MAAS_OK, NULL, 10,
      0, 0, 2, KEPT, 0 },

    /* ---- a 401: a fresh token, the request replayed once ---- */
    { "401-replayed-with-a-fresh-token", NULL, "status=401", OFF, 10, 0, 0, MAAS_OK, NULL, 10, 0,
      0, 2, KEPT, 1 },
    { "token-expired-under-the-stream-replayed", NULL, "expire-token", OFF, 10, 0, 0, MAAS_OK,
      NULL, 10, 0, 0, 2, KEPT, 1 },

    /* ---- cut streams ---- */
    /* Tokens 20 ms apart: a front end forwards each before the cut reaches it. */
    { "dropped-after-4-tokens", "[[fault:drop-after=4]][[fault:delay=20]]", NULL, 2, 10, 0, 0, MAAS_ERR_TRUNCATED,
      NULL, 4, 200, 0, 1, CLOSED, 0 },
    { "ended-without-the-final-message", "[[fault:truncate-after=4]]", NULL, 2, 10, 0, 0,
      MAAS_ERR_TRUNCATED, NULL, 4, 200, 0, 1, KEPT, 0 },

    /*
     * ---- hostile content: found while the stream still runs (its tokens
     * come 50 ms apart), so the connection is abandoned half-read: closed ----
     */
    { "a-line-that-is-not-json", "[[fault:malformed-after=1]][[fault:delay=50]]", NULL, 2, 10, 0, 0,
      MAAS_ERR_PROTOCOL, "invalid JSON", 1, 200, 0, 1, CLOSED, 0 },
    { "invalid-utf8", "[[fault:invalid-utf8]][[fault:delay=50]]", NULL, 2, 10, 0, 0, MAAS_ERR_PROTOCOL,
      "unable to decode byte 0xc3", 1, 200, 0, 1, CLOSED, 0 },
    { "a-nul-byte", "[[fault:nul-byte]][[fault:delay=50]]", NULL, 2, 10, 0, 0, MAAS_ERR_PROTOCOL,
      "control character 0x0", 1, 200, 0, 1, CLOSED, 0 },
    { "a-token-id-out-of-range", "[[fault:bad-value=id:4294967296]][[fault:delay=50]]", NULL, 2, 5, 0, 0,
      MAAS_ERR_PROTOCOL, "token.id", 1, 200, 0, 1, CLOSED, 0 },
    { "a-wrong-type", "[[fault:wrong-type=text]][[fault:delay=50]]", NULL, 2, 10, 0, 0, MAAS_ERR_PROTOCOL,
      "token.text is not a string", 1, 200, 0, 1, CLOSED, 0 },
    { "nesting-beyond-the-limit", "[[fault:deep-nesting=3000]][[fault:delay=50]]", NULL, 2, 5, 0, 0,
      MAAS_ERR_PROTOCOL, "maximum parsing depth", 1, 200, 0, 1, CLOSED, 0 },
    { "a-line-over-the-cap", "[[fault:long-line=1048576]]", NULL, 2, 10, 0, 0,
      MAAS_ERR_LINE_TOO_LONG, "exceeds the 65536-byte limit", 1, 200, 0, 1, CLOSED, 0 },
    { "a-line-that-never-ends", "[[fault:endless-line]]", NULL, 2, 10, 0, 0,
      MAAS_ERR_LINE_TOO_LONG, "exceeds the 65536-byte limit", 1, 200, 0, 1, CLOSED, 0 },

    /* ---- the consumer gives up: nothing more is handed out, the connection closes ---- */
    { "cancelled-after-3-tokens", "[[fault:delay=20]]", NULL, 2, 100, 3, 0, MAAS_ERR_CANCELLED,
      NULL, 3, 0, 0, 0, CLOSED, 0 },
    { "freed-while-running-after-3-tokens", "[[fault:delay=20]]", NULL, 2, 100, 3, 1,
      MAAS_ERR_CANCELLED, NULL, 3, 0, 0, 0, CLOSED, 0 },
};

/* ---- the neighbour: a healthy stream on another thread of the same client -------------- */

struct neighbour {
    maas_client *c;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t tokens;         /* read so far */
    size_t tokens_at_stop; /* when told to stop */
    int stop;
    maas_status st;        /* MAAS_OK: it read on after the stop and ended it itself */
    char message[256];
};

/* The running test's neighbour, ended by the teardown if the test failed
 * (it is static: a failed test leaves run_case's frame behind). */
static struct neighbour NEIGHBOUR, *LIVE_NEIGHBOUR;

static void *neighbour_main(void *p)
{
    struct neighbour *n = p;
    maas_request r = MAAS_REQUEST_INIT;
    maas_stream *s = NULL;
    const maas_token *t;
    maas_status st;
    r.model_info = maas_model_list_find(CATALOGUE, MISTRAL);
    r.prompt = "Tell me a story [[fault:delay=20]]";
    r.max_new_tokens = 2000; /* 40 s: longer than any row */
    st = maas_stream_open(&s, n->c, &r);
    while (st == MAAS_OK && (st = maas_stream_next(s, &t)) == MAAS_OK) {
        int enough;
        pthread_mutex_lock(&n->lock);
        n->tokens++;
        /* Three more tokens after the row's end: the stream still flows. */
        enough = n->stop && n->tokens >= n->tokens_at_stop + 3;
        pthread_cond_broadcast(&n->cond);
        pthread_mutex_unlock(&n->lock);
        if (enough)
            break;
    }
    if (st != MAAS_OK)
        snprintf(n->message, sizeof n->message, "%s", maas_last_error()->message);
    maas_stream_free(s);
    pthread_mutex_lock(&n->lock);
    n->st = st;
    pthread_mutex_unlock(&n->lock);
    return NULL;
}

/* Start it, and wait for its first token: its request is made before the row's fault is queued. */
static void neighbour_start(struct neighbour *n, maas_client *c)
{
    struct timespec until;
    memset(n, 0, sizeof *n);
    n->c = c;
    pthread_mutex_init(&n->lock, NULL);
    pthread_cond_init(&n->cond, NULL);
    assert_int_equal(pthread_create(&n->thread, NULL, neighbour_main, n), 0);
    LIVE_NEIGHBOUR = n;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&n->lock);
    while (n->tokens == 0 && pthread_cond_timedwait(&n->cond, &n->lock, &until) == 0)
        ;
    pthread_mutex_unlock(&n->lock);
    assert_true(n->tokens > 0);
}

static void neighbour_end(struct neighbour *n)
{
    pthread_mutex_lock(&n->lock);
    n->tokens_at_stop = n->tokens;
    n->stop = 1;
    pthread_mutex_unlock(&n->lock);
    pthread_join(n->thread, NULL);
    pthread_mutex_destroy(&n->lock);
    pthread_cond_destroy(&n->cond);
    LIVE_NEIGHBOUR = NULL;
}

/* Tell it to read three more tokens and end; it must have been unharmed. */
static void neighbour_stop(struct neighbour *n, const char *row, const char *engine)
{
    neighbour_end(n);
    if (n->st != MAAS_OK || n->tokens < n->tokens_at_stop + 3)
        fail_msg("%s, %s beside a neighbour: the neighbour ended with %s after %zu tokens "
                 "(%zu at the row's end): %s", row, engine, maas_status_name(n->st), n->tokens,
                 n->tokens_at_stop, n->message);
}

/* ---- the checks ------------------------------------------------------------------------- */

struct check {
    const struct fault_case *fc;
    maas_client *client;
    int neighbour;  /* a neighbour's stream runs on: its connection and stream count too */
    char why[256];
    int bad;
};

/*
 * With the client and the multi still alive: no stream is still being
 * served, and the stream's connection is closed or kept as the row says.
 */
static void check_connections(enum engine e, const struct outcome *o, void *arg)
{
    struct check *k = arg;
    long want = (k->fc->conn == CLOSED ? 0 : 1) + k->neighbour;
    if (E.front)
        return;
    long streams = emu_wait_stat(&E, "streams_active", k->neighbour, 5000);
    long api = emu_wait_api_connections(&E, want, k->fc->conn == EITHER ? 0 : 5000);
    (void)o;
    if (k->fc->conn == EITHER && api == k->neighbour)
        want = k->neighbour;
    if (api != want || streams != k->neighbour) {
        snprintf(k->why, sizeof k->why,
                 "%s: %ld connections to the API open, %ld streams served (wanted %ld, %d)",
                 engine_name[e], api, streams, want, k->neighbour);
        k->bad = 1;
    }
}

/* The client of the running test, freed by the teardown if the test failed. */
static maas_client *LIVE;

static maas_client *client_for(int retries)
{
    maas_client_options o;
    maas_client *c = NULL;
    emu_options(&E, &o);
    o.idle_timeout_ms = IDLE_MS;
    o.max_retries = retries;
    o.retry_base_ms = 10;
    o.max_line_bytes = LINE_CAP;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    return c;
}

/* The client's counters before the row's stream (a neighbour's requests are not the row's). */
struct base {
    uint64_t api_requests, replays, connections, token_requests;
};

static void expect(enum engine e, const struct fault_case *fc, const struct outcome *o,
                   maas_client *c, const struct base *b, int neighbour)
{
    char en[64];
    snprintf(en, sizeof en, "%s%s", engine_name[e], neighbour ? " beside a neighbour" : "");
    if (o->st != fc->want)
        fail_msg("%s, %s: %s \"%s\", expected %s", fc->name, en, maas_status_name(o->st),
                 o->message, maas_status_name(fc->want));
    if (fc->words && !strstr(o->message, fc->words))
        fail_msg("%s, %s: \"%s\" does not say \"%s\"", fc->name, en, o->message, fc->words);
    if ((long)o->tokens != fc->tokens)
        fail_msg("%s, %s: %zu tokens, expected %ld", fc->name, en, o->tokens, fc->tokens);
    if (fc->want == MAAS_OK) {
        if (!o->got_details)
            fail_msg("%s, %s: no final message", fc->name, en);
        if (maas_client_counter(c, MAAS_COUNTER_API_REQUESTS) - b->api_requests != fc->attempts)
            fail_msg("%s, %s: %llu API requests, expected %u", fc->name, en,
                     (unsigned long long)(maas_client_counter(c, MAAS_COUNTER_API_REQUESTS) -
                                          b->api_requests),
                     fc->attempts);
    } else {
        if (o->got_details)
            fail_msg("%s, %s: a final message after a failure", fc->name, en);
        if (fc->http_status && o->http_status != fc->http_status)
            fail_msg("%s, %s: HTTP %d, expected %d", fc->name, en, o->http_status,
                     fc->http_status);
        if (fc->grpc_code && o->grpc_code != fc->grpc_code)
            fail_msg("%s, %s: gRPC code %d, expected %d", fc->name, en, o->grpc_code,
                     fc->grpc_code);
        if (fc->attempts && o->attempts != fc->attempts)
            fail_msg("%s, %s: %u attempts, expected %u", fc->name, en, o->attempts,
                     fc->attempts);
    }
    if (maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS) - b->replays != fc->replays)
        fail_msg("%s, %s: %llu 401 replays, expected %u", fc->name, en,
                 (unsigned long long)(maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS) -
                                      b->replays),
                 fc->replays);
    /* Every clock here is IDLE_MS: a run that took far longer waited on nothing. */
    if (o->ms > 10 * IDLE_MS)
        fail_msg("%s, %s: took %ld ms", fc->name, en, o->ms);
}

static void run_case(const struct fault_case *fc, enum engine e, int with_neighbour)
{
    char prompt[256];
    maas_request r = MAAS_REQUEST_INIT;
    struct outcome o;
    struct check k;
    struct engine_job job;
    struct neighbour *n = &NEIGHBOUR;
    struct base b;
    maas_client *c = LIVE = client_for(fc->retries);

    /* A token before the fault is queued: a queued fault hits the next API request. */
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    if (E.front) {
        /* The catalogue from the API host tells the client it speaks h2, so
         * that the blocking engines' streams run on the hub, as a program's
         * do after its first catalogue request. */
        maas_model_list *l = NULL;
        assert_int_equal(maas_models_list(&l, c), MAAS_OK);
        maas_model_list_free(l);
    }
    if (with_neighbour)
        neighbour_start(n, c);
    b.api_requests = maas_client_counter(c, MAAS_COUNTER_API_REQUESTS);
    b.replays = maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS);
    b.connections = maas_client_counter(c, MAAS_COUNTER_CONNECTIONS);
    b.token_requests = maas_client_counter(c, MAAS_COUNTER_TOKEN_REQUESTS);
    if (fc->queued)
        assert_int_equal(emu_fault(&E, GEN_PATH, fc->queued, 1), 200);
    snprintf(prompt, sizeof prompt, "Tell me a story %s", fc->directive ? fc->directive : "");
    r.model_info = maas_model_list_find(CATALOGUE, MISTRAL);
    assert_non_null(r.model_info);
    r.prompt = prompt;
    r.max_new_tokens = fc->max_tokens;

    memset(&k, 0, sizeof k);
    k.fc = fc;
    k.client = c;
    k.neighbour = with_neighbour;
    memset(&job, 0, sizeof job);
    job.stop_after = fc->stop_after;
    job.free_running = fc->free_running;
    job.before_teardown = check_connections;
    job.arg = &k;
    engine_run(e, c, &r, &job, &o);
    if (getenv("MAAS_TEST_VERBOSE"))
        print_message("%-40s %-18s%s -> %-26s %3zu tokens %5ld ms: %s\n", fc->name,
                      engine_name[e], with_neighbour ? " +neighbour" : "",
                      maas_status_name(o.st), o.tokens, o.ms, o.message);
    /* Over h2 the row's stream rode the neighbour's connection (the hub's):
     * without the hub it would have opened one, as the neighbour holds the
     * pooled one. A token request of the row may open one (the pool's). */
    if (with_neighbour && E.front &&
        maas_client_counter(c, MAAS_COUNTER_CONNECTIONS) - b.connections >
            maas_client_counter(c, MAAS_COUNTER_TOKEN_REQUESTS) - b.token_requests)
        fail_msg("%s, %s beside a neighbour: the stream opened %llu connections of its own",
                 fc->name, engine_name[e],
                 (unsigned long long)(maas_client_counter(c, MAAS_COUNTER_CONNECTIONS) -
                                      b.connections));
    if (with_neighbour)
        neighbour_stop(n, fc->name, engine_name[e]);
    expect(e, fc, &o, c, &b, with_neighbour);
    if (k.bad)
        fail_msg("%s: %s", fc->name, k.why);
    maas_client_free(c);
    LIVE = NULL;
    if (!E.front)
        assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
}

static int free_live(void **state)
{
    (void)state;
    if (LIVE_NEIGHBOUR)
        neighbour_end(LIVE_NEIGHBOUR);
    maas_client_free(LIVE);
    LIVE = NULL;
    return 0;
}

static int reset(void **state)
{
    (void)state;
    return emu_post(&E, "/emulator/reset", NULL) == 200 ? 0 : -1;
}

/* One cmocka test per row, each running the row through every engine, then
 * through the blocking ones beside a neighbour. */
static void test_row(void **state)
{
    const struct fault_case *fc = *state;
    for (int e = 0; e < ENGINES; e++) {
        assert_int_equal(reset(NULL), 0);
        run_case(fc, (enum engine)e, 0);
    }
    for (int e = BLOCKING; e <= PULL; e++) {
        assert_int_equal(reset(NULL), 0);
        run_case(fc, (enum engine)e, 1);
    }
}

static int group_setup(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    (void)state;
    if (emu_start(&E, NULL) != 0)
        return -1;
    emu_options(&E, &o);
    if (maas_client_new(&c, &o) != MAAS_OK || maas_models_list(&CATALOGUE, c) != MAAS_OK)
        return -1;
    maas_client_free(c);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    maas_model_list_free(CATALOGUE);
    return emu_stop(&E);
}

int main(void)
{
    enum { N = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[N];
    int rc;
    for (size_t i = 0; i < N; i++) {
        tests[i] = (struct CMUnitTest){ cases[i].name, test_row, NULL, free_live,
                                        (void *)&cases[i] };
    }
    rc = cmocka_run_group_tests_name(emu_through_front() ? "faults over h2" : "faults", tests,
                                     group_setup, group_teardown);
    return emu_suite_result(rc, &E);
}
