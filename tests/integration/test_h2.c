/*
 * Integration: HTTP/2 through a real front end. nghttpx (Debian's
 * nghttp2-proxy) terminates TLS with ALPN h2 and http/1.1 in front of
 * maas-emulator, as the service's front end does, and logs each request
 * with the client's port and the protocol negotiated; the assertions read
 * that log, the proxy's view, not the library's.
 *
 * - concurrent streams of one multi share one h2 connection;
 * - MAAS_HTTP_1_1 keeps to HTTP/1.1 (one connection per concurrent stream);
 * - the blocking calls speak h2 too;
 * - per-stream behaviour holds on a shared connection: a cancelled stream
 *   is reset while its neighbours finish, a silent stream's idle clock
 *   fires while its neighbours flow, a 401 is replayed and a 503 retried.
 *
 * The test makes a self-signed certificate with the openssl command in a
 * temporary directory, starts nghttpx on a free loopback port, and stops
 * and reaps it at the end (its exit status checked). Without nghttpx or
 * openssl it fails and says so: scripts/deps installs both.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "front.h"
#include "harness.h"

static emu E;

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"
#define GEN_PATH "/v1/maas/generatestream"

static front F;

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the front end's access log --------------------------------------------------- */

struct seen {
    int requests;  /* matching requests since the mark */
    int h2, h1;    /* of which negotiated h2, http/1.1 */
    int ports[256];
    int nports;    /* distinct client ports among them */
};

static void log_mark(void)
{
    FILE *f = fopen(F.log, "r");
    F.log_seen = 0;
    if (f) {
        fseek(f, 0, SEEK_END);
        F.log_seen = ftell(f);
        fclose(f);
    }
}

/* Requests for `path` logged since the mark (format "$remote_port $alpn $status $method $path"). */
static void log_read(const char *path, struct seen *s)
{
    char line[1024];
    FILE *f = fopen(F.log, "r");
    memset(s, 0, sizeof *s);
    if (!f)
        return;
    fseek(f, F.log_seen, SEEK_SET);
    while (fgets(line, sizeof line, f)) {
        int port, status, i;
        char alpn[32], method[16], p[512];
        if (sscanf(line, "%d %31s %d %15s %511s", &port, alpn, &status, method, p) != 5 ||
            strcmp(p, path))
            continue;
        s->requests++;
        s->h2 += !strcmp(alpn, "h2");
        s->h1 += !strcmp(alpn, "http/1.1");
        for (i = 0; i < s->nports && s->ports[i] != port; i++)
            ;
        if (i == s->nports && s->nports < 256)
            s->ports[s->nports++] = port;
    }
    fclose(f);
}

/* Wait (the log is written as each request ends) until `want` requests for `path`. */
static void log_wait(const char *path, int want, struct seen *s)
{
    struct timespec ts = { 0, 20 * 1000000L };
    long end = now_ms() + 10000;
    for (log_read(path, s); s->requests < want && now_ms() < end; log_read(path, s))
        nanosleep(&ts, NULL);
}

/* ---- clients and streams ------------------------------------------------------------ */

static maas_client *client(int http_version, long idle_ms, int retries)
{
    maas_client_options o;
    maas_client *c = NULL;
    emu_options(&E, &o);
    front_options(&F, &o);
    o.http_version = http_version;
    o.idle_timeout_ms = idle_ms;
    o.max_retries = retries;
    o.retry_base_ms = 10;
    if (maas_client_new(&c, &o) != MAAS_OK)
        fail_msg("maas_client_new: %s", maas_last_error()->message);
    return c;
}

struct one {
    maas_status st;
    size_t tokens;
    size_t cancel_at;
    int done;
    char message[256];
};

static int on_token(const maas_token *t, void *p)
{
    struct one *o = p;
    (void)t;
    o->tokens++;
    return o->cancel_at && o->tokens >= o->cancel_at;
}

static void on_done(maas_stream *s, maas_status st, void *p)
{
    struct one *o = p;
    o->st = st;
    o->done = 1;
    if (st != MAAS_OK)
        snprintf(o->message, sizeof o->message, "%s", maas_stream_error(s)->message);
}

/* Run `n` streams of `prompts[i]` (max_tokens[i]) on one multi to their end. */
static void run_multi(maas_client *c, int n, const char *const *prompts, const int *max_tokens,
                      struct one *o)
{
    maas_multi *m = NULL;
    maas_stream *s[64];
    size_t running = 1;
    long end = now_ms() + 60000;
    int i;
    assert_true(n <= 64);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    for (i = 0; i < n; i++) {
        maas_request r = MAAS_REQUEST_INIT;
        r.model = MISTRAL;
        r.prompt = prompts[i];
        r.max_new_tokens = max_tokens[i];
        if (maas_multi_add(&s[i], m, &r, on_token, NULL, on_done, &o[i]) != MAAS_OK)
            fail_msg("maas_multi_add: %s", maas_last_error()->message);
    }
    while (running > 0 && now_ms() < end) {
        long t = maas_multi_timeout(m);
        assert_int_equal(maas_multi_poll(m, (int)(t < 0 || t > 1000 ? 1000 : t), &running),
                         MAAS_OK);
    }
    for (i = 0; i < n; i++) {
        if (!o[i].done)
            fail_msg("stream %d never ended", i);
        maas_stream_free(s[i]);
    }
    maas_multi_free(m);
}

static int reset(void **state)
{
    (void)state;
    log_mark();
    return emu_post(&E, "/emulator/reset", NULL) == 200 ? 0 : -1;
}

/* ---- the tests ---------------------------------------------------------------------- */

/* 20 concurrent streams of one multi: all h2, over one connection. */
static void test_streams_share_one_h2_connection(void **state)
{
    enum { N = 20 };
    maas_client *c = client(MAAS_HTTP_AUTO, 0, 0);
    const char *prompts[N];
    int max_tokens[N], i;
    struct one o[N];
    struct seen s;
    (void)state;
    memset(o, 0, sizeof o);
    for (i = 0; i < N; i++) {
        prompts[i] = "Tell me a story [[fault:delay=20]]";
        max_tokens[i] = 20;
    }
    run_multi(c, N, prompts, max_tokens, o);
    for (i = 0; i < N; i++) {
        if (o[i].st != MAAS_OK || o[i].tokens != 20)
            fail_msg("stream %d: %s, %zu tokens: %s", i, maas_status_name(o[i].st), o[i].tokens,
                     o[i].message);
    }
    log_wait(GEN_PATH, N, &s);
    if (s.requests != N || s.h2 != N || s.nports != 1)
        fail_msg("the front end saw %d generations, %d over h2, from %d client ports (wanted "
                 "%d, %d, 1)", s.requests, s.h2, s.nports, N, N);
    /* The library's own count: the token endpoint's connection and the streams' one. */
    assert_true(maas_client_counter(c, MAAS_COUNTER_CONNECTIONS) <= 3);
    maas_client_free(c);
}

/* Streams flowing at once in the cap test: from the first token to on_done. */
static int ACTIVE, MAX_ACTIVE;

static int cap_token(const maas_token *t, void *p)
{
    struct one *o = p;
    if (o->tokens++ == 0 && ++ACTIVE > MAX_ACTIVE)
        MAX_ACTIVE = ACTIVE;
    (void)t;
    return 0;
}

static void cap_done(maas_stream *s, maas_status st, void *p)
{
    struct one *o = p;
    if (o->tokens)
        ACTIVE--;
    on_done(s, st, p);
}

/*
 * A server that takes one stream per connection: each flowing stream then
 * holds a connection of its own, and once the client knows the API host
 * speaks h2 a multi opens no more than MAAS_MAX_HOST_CONNECTIONS (16) of
 * them; the other streams wait for one, and all complete.
 */
static void test_connection_cap(void **state)
{
    enum { N = 24 };
    front one;
    maas_client_options opts;
    maas_client *c = NULL;
    maas_model_list *l = NULL;
    maas_multi *m = NULL;
    maas_stream *s[N];
    struct one o[N];
    size_t running = N;
    long end;
    int i;
    (void)state;
    memset(&one, 0, sizeof one);
    one.max_streams = 1;
    assert_int_equal(front_start(&one, &E), 0);
    emu_options(&E, &opts);
    front_options(&one, &opts);
    /* Retries on: before the server's SETTINGS arrive libcurl may open a
     * second stream on a connection, which the server refuses
     * (REFUSED_STREAM): a failure before the first token, retried. */
    opts.max_retries = 2;
    opts.retry_base_ms = 10;
    assert_int_equal(maas_client_new(&c, &opts), MAAS_OK);
    /* The catalogue, over h2: from here on the client knows the API host speaks it. */
    assert_int_equal(maas_models_list(&l, c), MAAS_OK);
    maas_model_list_free(l);
    memset(o, 0, sizeof o);
    ACTIVE = MAX_ACTIVE = 0;
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    for (i = 0; i < N; i++) {
        maas_request r = MAAS_REQUEST_INIT;
        r.model = MISTRAL;
        r.prompt = "capped stream [[fault:delay=50]]";
        r.max_new_tokens = 10;
        assert_int_equal(maas_multi_add(&s[i], m, &r, cap_token, NULL, cap_done, &o[i]), MAAS_OK);
    }
    end = now_ms() + 60000;
    while (running > 0 && now_ms() < end)
        assert_int_equal(maas_multi_poll(m, 100, &running), MAAS_OK);
    for (i = 0; i < N; i++) {
        if (o[i].st != MAAS_OK || !o[i].done)
            fail_msg("stream %d: %s: %s", i, maas_status_name(o[i].st), o[i].message);
        maas_stream_free(s[i]);
    }
    print_message("%d streams, one per connection: at most %d flowing at once\n", N, MAX_ACTIVE);
    assert_int_equal(ACTIVE, 0);
    assert_true(MAX_ACTIVE <= 16);
    assert_true(MAX_ACTIVE > 1); /* they did run side by side, on several connections */
    maas_multi_free(m);
    maas_client_free(c);
    assert_int_equal(front_stop(&one), 0);
    assert_true(one.requests > N && one.h2_requests == one.requests);
}

/* MAAS_HTTP_1_1: HTTP/1.1 only, so concurrent streams need connections of their own. */
static void test_http1_1_on_request(void **state)
{
    enum { N = 4 };
    maas_client *c = client(MAAS_HTTP_1_1, 0, 0);
    const char *prompts[N];
    int max_tokens[N], i;
    struct one o[N];
    struct seen s;
    (void)state;
    memset(o, 0, sizeof o);
    for (i = 0; i < N; i++) {
        prompts[i] = "Tell me a story [[fault:delay=50]]";
        max_tokens[i] = 10;
    }
    run_multi(c, N, prompts, max_tokens, o);
    for (i = 0; i < N; i++)
        assert_int_equal(o[i].st, MAAS_OK);
    log_wait(GEN_PATH, N, &s);
    if (s.requests != N || s.h1 != N || s.nports != N)
        fail_msg("the front end saw %d generations, %d over http/1.1, from %d client ports "
                 "(wanted %d, %d, %d)", s.requests, s.h1, s.nports, N, N, N);
    maas_client_free(c);
}

/* The blocking calls negotiate h2 as well; one after the other they reuse its connection. */
static void test_blocking_calls_over_h2(void **state)
{
    maas_client *c = client(MAAS_HTTP_AUTO, 0, 0);
    maas_model_list *l = NULL;
    struct seen s;
    int i;
    (void)state;
    assert_int_equal(maas_models_list(&l, c), MAAS_OK);
    maas_model_list_free(l);
    for (i = 0; i < 3; i++) {
        maas_request r = MAAS_REQUEST_INIT;
        char *text = NULL;
        size_t len = 0;
        r.model = MISTRAL;
        r.prompt = "Tell me a joke";
        r.max_new_tokens = 5;
        if (maas_generate_text(&text, &len, c, &r) != MAAS_OK)
            fail_msg("maas_generate_text: %s", maas_last_error()->message);
        maas_free(text);
    }
    log_wait(GEN_PATH, 3, &s);
    if (s.requests != 3 || s.h2 != 3 || s.nports != 1)
        fail_msg("the front end saw %d generations, %d over h2, from %d ports (wanted 3, 3, 1)",
                 s.requests, s.h2, s.nports);
    log_wait("/oauth2/token", 1, &s);
    assert_int_equal(s.h2, 1);
    maas_client_free(c);
}

/* ---- blocking calls on many threads: one shared h2 connection ---------- */

/* One thread's blocking stream: the callback API or the pull iterator. */
struct worker {
    maas_client *c;
    const char *prompt;
    int max_tokens;
    int pull;                 /* maas_stream_next rather than maas_generate */
    size_t hold_after;        /* pull: after this many tokens, wait for *release */
    pthread_mutex_t *lock;
    pthread_cond_t *cond;
    int *release;
    maas_stream *stream;      /* pull: set once open, for a cancel from elsewhere */
    int *opened;
    maas_status st;
    size_t tokens;
    int foreign;              /* tokens seen on another thread than the caller's */
    pthread_t self;
    char text[4096];
    size_t len;
    char message[256];
};

static void keep(struct worker *w, const maas_token *t)
{
    if (!pthread_equal(pthread_self(), w->self))
        w->foreign++;
    if (w->len + t->text_len < sizeof w->text) {
        memcpy(w->text + w->len, t->text, t->text_len);
        w->len += t->text_len;
    }
    w->tokens++;
}

static int worker_token(const maas_token *t, void *p)
{
    keep(p, t);
    return 0;
}

static void *worker_main(void *p)
{
    struct worker *w = p;
    maas_request r = MAAS_REQUEST_INIT;
    w->self = pthread_self();
    r.model = MISTRAL;
    r.prompt = w->prompt;
    r.max_new_tokens = w->max_tokens;
    if (!w->pull) {
        w->st = maas_generate(w->c, &r, worker_token, NULL, w);
    } else {
        maas_stream *s = NULL;
        const maas_token *t;
        w->st = maas_stream_open(&s, w->c, &r);
        pthread_mutex_lock(w->lock);
        w->stream = s;
        if (w->opened)
            *w->opened = 1;
        pthread_cond_broadcast(w->cond);
        pthread_mutex_unlock(w->lock);
        while (w->st == MAAS_OK && (w->st = maas_stream_next(s, &t)) == MAAS_OK) {
            keep(w, t);
            if (w->hold_after && w->tokens == w->hold_after) {
                /* Hold control, as a caller busy elsewhere would, while the
                 * other threads' streams run on the shared connection. */
                pthread_mutex_lock(w->lock);
                while (!*w->release)
                    pthread_cond_wait(w->cond, w->lock);
                pthread_mutex_unlock(w->lock);
            }
        }
        if (w->st == MAAS_DONE)
            w->st = MAAS_OK;
        pthread_mutex_lock(w->lock);
        w->stream = NULL;
        pthread_mutex_unlock(w->lock);
        maas_stream_free(s);
    }
    if (w->st != MAAS_OK)
        snprintf(w->message, sizeof w->message, "%s", maas_last_error()->message);
    return NULL;
}

/* Each of w[first..n) ended well with the reference's tokens, on its own thread. */
static void workers_check(const struct worker *w, int n, int first, const struct worker *ref)
{
    int i;
    for (i = first; i < n; i++) {
        if (w[i].st != MAAS_OK || w[i].tokens != ref->tokens || w[i].foreign ||
            w[i].len != ref->len || memcmp(w[i].text, ref->text, ref->len))
            fail_msg("thread %d (%s): %s, %zu tokens (wanted %zu), %d on another thread, text "
                     "\"%.*s\": %s", i, w[i].pull ? "pull" : "callback",
                     maas_status_name(w[i].st), w[i].tokens, ref->tokens, w[i].foreign,
                     (int)w[i].len, w[i].text, w[i].message);
    }
}

/* What a prompt gets, from one blocking call on this thread (which also teaches the client h2). */
static void reference(maas_client *c, const char *prompt, int max_tokens, struct worker *ref)
{
    memset(ref, 0, sizeof *ref);
    ref->c = c;
    ref->prompt = prompt;
    ref->max_tokens = max_tokens;
    worker_main(ref);
    if (ref->st != MAAS_OK || ref->tokens < 2)
        fail_msg("the reference call: %s, %zu tokens: %s", maas_status_name(ref->st),
                 ref->tokens, ref->message);
}

/* The workers' common state, and the threads that run them. */
struct crew {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int release;
    struct worker w[8];
    pthread_t t[8];
    int joined[8];
    int n;
};

static void crew_start(struct crew *k, maas_client *c, int n, const char *const *prompts,
                       int max_tokens)
{
    int i;
    assert_true(n <= 8);
    k->n = n;
    for (i = 0; i < n; i++) {
        k->w[i].c = c;
        k->w[i].prompt = prompts[i];
        k->w[i].max_tokens = max_tokens;
        k->w[i].lock = &k->lock;
        k->w[i].cond = &k->cond;
        k->w[i].release = &k->release;
        assert_int_equal(pthread_create(&k->t[i], NULL, worker_main, &k->w[i]), 0);
    }
}

static void crew_join(struct crew *k, int from, int to)
{
    int i;
    for (i = from; i < to; i++)
        if (!k->joined[i]) {
            pthread_join(k->t[i], NULL);
            k->joined[i] = 1;
        }
}

/* Join w[from..to) within `ms` in all; 0 if one is still running then. */
static int crew_join_within(struct crew *k, int from, int to, long ms)
{
    struct timespec until;
    int i;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    for (i = from; i < to; i++) {
        if (!k->joined[i] && pthread_timedjoin_np(k->t[i], NULL, &until) != 0)
            return 0;
        k->joined[i] = 1;
    }
    return 1;
}

static void crew_release(struct crew *k)
{
    pthread_mutex_lock(&k->lock);
    k->release = 1;
    pthread_cond_broadcast(&k->cond);
    pthread_mutex_unlock(&k->lock);
}

static struct crew *crew_new(void)
{
    struct crew *k = calloc(1, sizeof *k);
    assert_non_null(k);
    pthread_mutex_init(&k->lock, NULL);
    pthread_cond_init(&k->cond, NULL);
    return k;
}

static void crew_free(struct crew *k)
{
    pthread_mutex_destroy(&k->lock);
    pthread_cond_destroy(&k->cond);
    free(k);
}

/* Every generation since the mark came over h2 through one client port. */
static void assert_one_h2_connection(int requests)
{
    struct seen s;
    log_wait(GEN_PATH, requests, &s);
    if (s.requests != requests || s.h2 != requests || s.nports != 1)
        fail_msg("the front end saw %d generations, %d over h2, from %d client ports (wanted "
                 "%d, %d, 1)", s.requests, s.h2, s.nports, requests, requests);
}

/* The end of a crew's case: w[first..n) as the reference, every stream over
 * one h2 connection; then the crew and the client go. */
static void crew_finish(struct crew *k, maas_client *c, int first, const struct worker *ref)
{
    workers_check(k->w, k->n, first, ref);
    assert_one_h2_connection(k->n);
    crew_free(k);
    maas_client_free(c);
}

/*
 * Blocking calls on 8 threads at once, half by callback and half pulled,
 * ride one h2 connection: libcurl multiplexes only within one multi handle,
 * so they share the client's. Each token reaches its own caller's thread.
 */
static void test_threads_share_one_h2_connection(void **state)
{
    enum { N = 8 };
    maas_client *c = client(MAAS_HTTP_AUTO, 0, 0);
    const char *prompts[N];
    struct crew *k = crew_new();
    struct worker ref;
    long overlap;
    int i;
    (void)state;
    for (i = 0; i < N; i++) {
        prompts[i] = "Tell me a story [[fault:delay=50]]";
        k->w[i].pull = i % 2;
    }
    reference(c, prompts[0], 30, &ref);
    log_mark();
    crew_start(k, c, N, prompts, 30);
    /* The streams overlap: the emulator has them all at once. */
    overlap = emu_wait_stat(&E, "streams_active", N, 10000);
    crew_join(k, 0, N);
    assert_int_equal(overlap, N);
    crew_finish(k, c, 0, &ref);
}

/*
 * A pulled stream whose caller holds control after 3 tokens does not hold
 * back the other threads' streams on its connection: they finish while it
 * waits, and it then reads the rest of its own, in order.
 */
static void test_held_pull_stream_does_not_stall_others(void **state)
{
    enum { N = 4 };
    maas_client *c = client(MAAS_HTTP_AUTO, 1000, MAAS_RETRIES_OFF);
    const char *prompts[N];
    struct crew *k = crew_new();
    struct worker ref;
    int i;
    (void)state;
    for (i = 0; i < N; i++)
        prompts[i] = "Tell me a story [[fault:delay=10]][[fault:tokens=150]]";
    k->w[0].pull = 1;
    k->w[0].hold_after = 3;
    reference(c, prompts[0], 150, &ref);
    log_mark();
    crew_start(k, c, N, prompts, 150);
    /* The others end (joined) while the first still holds after its third token. */
    if (!crew_join_within(k, 1, N, 20000)) {
        /* Let everything end before failing: the client cannot be freed under them. */
        crew_release(k);
        crew_join(k, 0, N);
        fail_msg("the other threads' streams did not end while one caller held its stream");
    }
    pthread_mutex_lock(&k->lock);
    assert_int_equal(k->w[0].tokens, 3);
    pthread_mutex_unlock(&k->lock);
    workers_check(k->w, N, 1, &ref);
    /* Its stream ended at the server meanwhile: the rest waited in the client,
     * and its idle clock (1 s) counts only while it waits for the server. */
    assert_int_equal(emu_wait_stat(&E, "streams_active", 0, 10000), 0);
    crew_release(k);
    crew_join(k, 0, 1);
    crew_finish(k, c, 0, &ref);
}

/*
 * The bound on what may wait for a held stream: an h2 stream cannot be held
 * back alone, so a caller that holds control while another thread's stream
 * keeps the connection busy has its bytes kept, up to 64 MiB; past that its
 * stream is cut with a message that says why, and the other one is unharmed.
 */
static void test_held_stream_backlog_is_bounded(void **state)
{
    maas_client *c = client(MAAS_HTTP_AUTO, 0, MAAS_RETRIES_OFF);
    const char *prompts[2] = { "Tell me [[fault:tokens=600000]][[fault:coalesce]]",
                               "Tell me [[fault:tokens=450000]][[fault:coalesce]]" };
    struct crew *k = crew_new();
    struct worker ref;
    (void)state;
    reference(c, "Tell me a joke", 5, &ref); /* learn h2 */
    log_mark();
    k->w[0].pull = 1;
    k->w[0].hold_after = 1;
    crew_start(k, c, 2, prompts, 5);
    crew_join(k, 1, 2);
    if (k->w[1].st != MAAS_OK || k->w[1].tokens < 450000 || k->w[1].foreign)
        fail_msg("the busy stream: %s after %zu tokens: %s", maas_status_name(k->w[1].st),
                 k->w[1].tokens, k->w[1].message);
    crew_release(k);
    crew_join(k, 0, 1);
    if (k->w[0].st != MAAS_ERR_TRUNCATED || !strstr(k->w[0].message, "more than 64 MiB") ||
        k->w[0].tokens < 2 || k->w[0].tokens >= 600000)
        fail_msg("the held stream: %s after %zu tokens: %s", maas_status_name(k->w[0].st),
                 k->w[0].tokens, k->w[0].message);
    assert_one_h2_connection(2);
    crew_free(k);
    maas_client_free(c);
}

/* One thread's stream cancelled from another thread is reset; the others finish. */
static void test_cancel_one_thread_keeps_the_others(void **state)
{
    enum { N = 4 };
    maas_client *c = client(MAAS_HTTP_AUTO, 0, 0);
    const char *prompts[N];
    struct crew *k = crew_new();
    struct worker ref;
    int i;
    (void)state;
    for (i = 0; i < N; i++)
        prompts[i] = "Tell me a story [[fault:delay=50]]";
    k->w[0].pull = 1;
    reference(c, prompts[0], 30, &ref);
    log_mark();
    crew_start(k, c, N, prompts, 30);
    assert_int_equal(emu_wait_stat(&E, "streams_active", N, 10000), N);
    pthread_mutex_lock(&k->lock);
    assert_non_null(k->w[0].stream);
    maas_stream_cancel(k->w[0].stream);
    pthread_mutex_unlock(&k->lock);
    crew_join(k, 0, N);
    assert_int_equal(k->w[0].st, MAAS_ERR_CANCELLED);
    assert_true(k->w[0].tokens < 30);
    /* The reset reached the emulator through the front end. */
    assert_int_equal(emu_wait_stat(&E, "streams_active", 0, 5000), 0);
    crew_finish(k, c, 1, &ref);
}

/* A silent stream's idle clock fires on its thread while the others' flow on the connection. */
static void test_idle_clock_of_one_thread(void **state)
{
    enum { N = 4 };
    maas_client *c = client(MAAS_HTTP_AUTO, 1000, MAAS_RETRIES_OFF);
    const char *prompts[N] = { "Tell me a story [[fault:stall-after=2]]",
                               "Tell me a story [[fault:delay=50]]",
                               "Tell me a story [[fault:delay=50]]",
                               "Tell me a story [[fault:delay=50]]" };
    struct crew *k = crew_new();
    struct worker ref;
    (void)state;
    k->w[0].pull = 1;
    reference(c, prompts[1], 50, &ref);
    log_mark();
    crew_start(k, c, N, prompts, 50);
    crew_join(k, 0, N);
    if (k->w[0].st != MAAS_ERR_IDLE_TIMEOUT || k->w[0].tokens != 2)
        fail_msg("the stalled stream: %s after %zu tokens: %s", maas_status_name(k->w[0].st),
                 k->w[0].tokens, k->w[0].message);
    crew_finish(k, c, 1, &ref);
}

/* One stream cancelled after 3 tokens is reset; its neighbours on the connection finish. */
static void test_cancel_one_stream_keeps_the_others(void **state)
{
    enum { N = 5 };
    maas_client *c = client(MAAS_HTTP_AUTO, 0, 0);
    const char *prompts[N];
    int max_tokens[N], i;
    struct one o[N];
    struct seen s;
    (void)state;
    memset(o, 0, sizeof o);
    for (i = 0; i < N; i++) {
        prompts[i] = "Tell me a story [[fault:delay=20]]";
        max_tokens[i] = 30;
    }
    o[0].cancel_at = 3;
    run_multi(c, N, prompts, max_tokens, o);
    assert_int_equal(o[0].st, MAAS_ERR_CANCELLED);
    assert_int_equal(o[0].tokens, 3);
    for (i = 1; i < N; i++) {
        if (o[i].st != MAAS_OK || o[i].tokens != 30)
            fail_msg("stream %d: %s, %zu tokens: %s", i, maas_status_name(o[i].st), o[i].tokens,
                     o[i].message);
    }
    log_wait(GEN_PATH, N, &s);
    assert_int_equal(s.nports, 1);
    assert_int_equal(s.h2, N);
    /* The emulator saw the cancelled stream go: the reset reached it through the front end. */
    assert_int_equal(emu_wait_stat(&E, "streams_active", 0, 5000), 0);
    maas_client_free(c);
}

/* A silent stream's idle clock fires while its neighbours on the same connection flow. */
static void test_idle_clock_of_one_stream(void **state)
{
    enum { N = 4 };
    maas_client *c = client(MAAS_HTTP_AUTO, 1000, MAAS_RETRIES_OFF);
    const char *prompts[N] = { "Tell me [[fault:stall-after=2]]", "Tell me a story [[fault:delay=50]]",
                               "Tell me a story [[fault:delay=50]]",
                               "Tell me a story [[fault:delay=50]]" };
    int max_tokens[N] = { 10, 60, 60, 60 }, i;
    struct one o[N];
    struct seen s;
    (void)state;
    memset(o, 0, sizeof o);
    run_multi(c, N, prompts, max_tokens, o);
    assert_int_equal(o[0].st, MAAS_ERR_IDLE_TIMEOUT);
    assert_int_equal(o[0].tokens, 2);
    for (i = 1; i < N; i++) {
        if (o[i].st != MAAS_OK || o[i].tokens != 60)
            fail_msg("stream %d: %s, %zu tokens: %s", i, maas_status_name(o[i].st), o[i].tokens,
                     o[i].message);
    }
    log_wait(GEN_PATH, N, &s);
    assert_int_equal(s.nports, 1);
    maas_client_free(c);
}

/*
 * Streams of one multi that go wrong on a shared h2 connection: one
 * truncated (a clean end without the final message), one whose server
 * drops the connection behind the proxy mid-stream (the proxy resets that
 * h2 stream), one hostile with a line that never ends. Each fails with its
 * own status; the four others, on the same connection, finish whole.
 */
static void test_failing_streams_leave_their_neighbours(void **state)
{
    enum { N = 7 };
    maas_client_options opts;
    maas_client *c = NULL;
    const char *prompts[N] = { "cut short [[fault:truncate-after=3]]",
                               "dropped [[fault:drop-after=3]][[fault:delay=20]]",
                               "hostile [[fault:endless-line]]" };
    int max_tokens[N], i;
    struct one o[N];
    struct seen s;
    (void)state;
    memset(o, 0, sizeof o);
    for (i = 0; i < N; i++) {
        max_tokens[i] = 20;
        if (i >= 3)
            prompts[i] = "neighbour [[fault:delay=20]][[fault:tokens=20]]";
    }
    emu_options(&E, &opts);
    front_options(&F, &opts);
    opts.max_retries = MAAS_RETRIES_OFF;
    opts.max_line_bytes = 64 * 1024;
    assert_int_equal(maas_client_new(&c, &opts), MAAS_OK);
    run_multi(c, N, prompts, max_tokens, o);
    if (o[0].st != MAAS_ERR_TRUNCATED || o[0].tokens != 3)
        fail_msg("the truncated stream: %s after %zu tokens", maas_status_name(o[0].st),
                 o[0].tokens);
    /* The proxy turns the backend's drop into a reset of this h2 stream:
     * after its headers (TRUNCATED) or before (NETWORK), with at most the
     * tokens sent before the drop. */
    print_message("a stream dropped behind the proxy: %s after %zu tokens: %s\n",
                  maas_status_name(o[1].st), o[1].tokens, o[1].message);
    assert_true(o[1].st == MAAS_ERR_TRUNCATED || o[1].st == MAAS_ERR_NETWORK);
    assert_true(o[1].tokens <= 3);
    assert_int_equal(o[2].st, MAAS_ERR_LINE_TOO_LONG);
    for (i = 3; i < N; i++)
        if (o[i].st != MAAS_OK || o[i].tokens != 20)
            fail_msg("neighbour %d: %s after %zu tokens: %s", i, maas_status_name(o[i].st),
                     o[i].tokens, o[i].message);
    log_wait(GEN_PATH, N, &s);
    if (s.h2 != s.requests || s.nports != 1)
        fail_msg("the front end saw %d generations, %d over h2, from %d client ports (wanted "
                 "all over h2 from 1)", s.requests, s.h2, s.nports);
    maas_client_free(c);
}

/*
 * A 401 to one stream is replayed with a new token, then a 503 to another is
 * retried, on h2 (two rounds: faults queued together would fall on one
 * request).
 */
static void test_replay_and_retry_over_h2(void **state)
{
    enum { N = 3 };
    maas_client *c = client(MAAS_HTTP_AUTO, 0, 2);
    const char *prompts[N] = { "Tell me a joke", "Tell me a joke", "Tell me a joke" };
    int max_tokens[N] = { 5, 5, 5 }, i, round;
    struct seen s;
    (void)state;
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    for (round = 0; round < 2; round++) {
        struct one o[N];
        memset(o, 0, sizeof o);
        assert_int_equal(emu_fault(&E, GEN_PATH, round ? "status=503" : "status=401", 1), 200);
        run_multi(c, N, prompts, max_tokens, o);
        for (i = 0; i < N; i++) {
            if (o[i].st != MAAS_OK || o[i].tokens != 5)
                fail_msg("round %d, stream %d: %s, %zu tokens: %s", round, i,
                         maas_status_name(o[i].st), o[i].tokens, o[i].message);
        }
    }
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS), 1);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_RETRIES), 1);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REQUESTS), 2);
    log_wait(GEN_PATH, 2 * N + 2, &s);
    assert_int_equal(s.requests, 2 * N + 2);
    assert_int_equal(s.h2, 2 * N + 2);
    maas_client_free(c);
}

static int group_setup(void **state)
{
    (void)state;
    if (emu_start(&E, NULL) != 0)
        return -1;
    return front_start(&F, &E);
}

/* cmocka exits 0 after a failing group teardown: main() checks this. */
static int front_failed;

static int group_teardown(void **state)
{
    (void)state;
    if (front_stop(&F) != 0) {
        fprintf(stderr, "test_h2: nghttpx did not exit cleanly\n");
        front_failed = 1;
    }
    return emu_stop(&E);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_streams_share_one_h2_connection, reset),
        cmocka_unit_test_setup(test_http1_1_on_request, reset),
        cmocka_unit_test_setup(test_connection_cap, reset),
        cmocka_unit_test_setup(test_blocking_calls_over_h2, reset),
        cmocka_unit_test_setup(test_cancel_one_stream_keeps_the_others, reset),
        cmocka_unit_test_setup(test_idle_clock_of_one_stream, reset),
        cmocka_unit_test_setup(test_replay_and_retry_over_h2, reset),
        cmocka_unit_test_setup(test_failing_streams_leave_their_neighbours, reset),
        cmocka_unit_test_setup(test_threads_share_one_h2_connection, reset),
        cmocka_unit_test_setup(test_held_pull_stream_does_not_stall_others, reset),
        cmocka_unit_test_setup(test_held_stream_backlog_is_bounded, reset),
        cmocka_unit_test_setup(test_cancel_one_thread_keeps_the_others, reset),
        cmocka_unit_test_setup(test_idle_clock_of_one_thread, reset),
    };
    int rc = cmocka_run_group_tests_name("h2", tests, group_setup, group_teardown);
    if ((F.pid > 0 && front_stop(&F) != 0) || front_failed)
        rc = rc ? rc : 1;
    return emu_suite_result(rc, &E);
}
