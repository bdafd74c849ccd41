/*
 * Integration: many streams on one thread (maas_multi), driven both by
 * perform/poll and through the socket/timer callbacks of an event loop,
 * against the emulator: every stream completes with the right text and
 * status, clocks and retries work without blocking, cancellation and freeing
 * mid-flight leave nothing behind.
 */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "loop.h"
#include "harness.h"

static emu E;

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"

struct one {
    char text[4096];
    size_t len;
    size_t tokens;
    char generated[4096];
    size_t generated_len;
    int details;
    int done;
    maas_status status;
    int cancel_after;
    int free_in_done;
    int cancel_in_details;
    maas_stream *cancel_self_in_details; /* maas_stream_cancel it from on_details */
    maas_stream *cancel_on_token;         /* maas_stream_cancel it from the first on_token */
    int cancelled_on_token;
    int foreign; /* callbacks run on another thread than the driving one, or inside maas_multi_add */
    long last_ms, max_gap_ms; /* engine_now_ms() of the last token; the longest wait between two */
    long done_ms;             /* engine_now_ms() when on_done ran */
    char message[256];        /* maas_stream_error()'s message, kept by on_done */
    pthread_t own_driver;     /* with has_own_driver: the thread driving this stream's multi */
    int has_own_driver;
};

/* The thread that drives every multi of these tests. */
static pthread_t driver;
/* Set while add() is inside maas_multi_add, where no stream callback may run. */
static int in_add;

static void on_driver(struct one *o)
{
    if (o->has_own_driver ? !pthread_equal(pthread_self(), o->own_driver)
                          : !pthread_equal(pthread_self(), driver) || in_add)
        o->foreign++;
}

static int on_token(const maas_token *t, void *p)
{
    struct one *o = p;
    on_driver(o);
    {
        long now = engine_now_ms();
        if (o->last_ms && now - o->last_ms > o->max_gap_ms)
            o->max_gap_ms = now - o->last_ms;
        o->last_ms = now;
    }
    o->tokens++;
    if (o->cancel_on_token && !o->cancelled_on_token) {
        maas_stream_cancel(o->cancel_on_token);
        o->cancelled_on_token = 1;
    }
    if (!t->special && o->len + t->text_len < sizeof o->text) {
        memcpy(o->text + o->len, t->text, t->text_len);
        o->len += t->text_len;
    }
    return o->cancel_after && (int)o->tokens >= o->cancel_after;
}

static int on_details(const maas_details *d, void *p)
{
    struct one *o = p;
    on_driver(o);
    o->details++;
    o->generated_len = d->generated_text_len < sizeof o->generated ? d->generated_text_len : 0;
    memcpy(o->generated, d->generated_text, o->generated_len);
    if (o->cancel_self_in_details)
        maas_stream_cancel(o->cancel_self_in_details);
    return o->cancel_in_details;
}

static void on_done(maas_stream *s, maas_status st, void *p)
{
    struct one *o = p;
    on_driver(o);
    o->done++;
    o->done_ms = engine_now_ms();
    o->status = st;
    {
        const maas_error *e = maas_stream_error(s); /* NULL after a success */
        snprintf(o->message, sizeof o->message, "%s", e ? e->message : "");
    }
    if (o->free_in_done)
        maas_stream_free(s);
}

static maas_client *client_with(long idle_ms, long deadline_ms, int retries)
{
    maas_client_options o;
    maas_client *c = NULL;
    emu_options(&E, &o);
    o.idle_timeout_ms = idle_ms;
    o.deadline_ms = deadline_ms;
    o.max_retries = retries;
    o.retry_base_ms = 10;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    return c;
}

static maas_stream *add(maas_multi *m, const char *prompt, int max_tokens, struct one *o)
{
    maas_request r = MAAS_REQUEST_INIT;
    maas_stream *s = NULL;
    r.model = MISTRAL;
    r.prompt = prompt;
    r.max_new_tokens = max_tokens;
    in_add = 1;
    assert_int_equal(maas_multi_add(&s, m, &r, on_token, on_details, on_done, o), MAAS_OK);
    in_add = 0;
    assert_non_null(s);
    return s;
}

/* The client's catalogue fetched (a blocking call does it). */
static void warm_catalogue(maas_client *c)
{
    maas_request r = MAAS_REQUEST_INIT;
    char *text = NULL;
    size_t len = 0;
    r.model = MISTRAL;
    r.prompt = "Tell me a joke";
    r.max_new_tokens = 1;
    assert_int_equal(maas_generate_text(&text, &len, c, &r), MAAS_OK);
    free(text);
}

/* Drive with perform/poll until every stream is done (bounded, to catch hangs). */
static void run_poll(maas_multi *m)
{
    size_t running = 1;
    int rounds = 0;
    assert_int_equal(maas_multi_perform(m, &running), MAAS_OK);
    while (running > 0) {
        assert_int_equal(maas_multi_poll(m, 1000, &running), MAAS_OK);
        assert_true(++rounds < 100000);
    }
}

static void finish(maas_client *c)
{
    maas_client_free(c);
    /* Through a front end the emulator counts nghttpx's connections. */
    if (!E.front)
        assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
}

static int reset(void **state)
{
    (void)state;
    return emu_post(&E, "/emulator/reset", NULL) == 200 ? 0 : -1;
}

/* ---- perform / poll ------------------------------------------------------------- */

static void test_many_streams_poll(void **state)
{
    enum { N = 64 };
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    maas_stream *s[N];
    struct one *o = calloc(N, sizeof *o);
    char prompt[64];
    int i;
    (void)state;
    assert_non_null(o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    for (i = 0; i < N; i++) {
        snprintf(prompt, sizeof prompt, "stream %d [[fault:delay=5]]", i);
        s[i] = add(m, prompt, 20, &o[i]);
    }
    run_poll(m);
    for (i = 0; i < N; i++) {
        assert_int_equal(o[i].done, 1);
        assert_int_equal(o[i].status, MAAS_OK);
        assert_int_equal(o[i].details, 1);
        assert_int_equal(o[i].foreign, 0); /* none inside a later maas_multi_add */
        assert_int_equal(o[i].tokens, 20);
        assert_int_equal(o[i].len, o[i].generated_len);
        assert_memory_equal(o[i].text, o[i].generated, o[i].len);
        assert_non_null(maas_stream_details(s[i]));
        assert_int_equal(maas_stream_details(s[i])->attempts, 1);
        maas_stream_free(s[i]);
    }
    assert_int_equal(emu_stat(&E, "generations"), N);
    assert_int_equal(emu_stat(&E, "token_requests"), 1);
    assert_int_equal(emu_stat(&E, "models_requests"), 1); /* the catalogue, once per client */
    maas_multi_free(m);
    free(o);
    finish(c);
}

static void test_sequential_streams_reuse_connections(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct one o[3];
    int i;
    (void)state;
    memset(o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    for (i = 0; i < 3; i++) {
        o[i].free_in_done = 1; /* freeing a stream in its own on_done is allowed */
        /* The end of each response comes 200 ms after its final message: the
         * multi must wait for it, or the connection is lost with the transfer. */
        add(m, "Tell me a joke [[fault:end-delay=200]]", 5, &o[i]);
        run_poll(m);
        assert_int_equal(o[i].status, MAAS_OK);
    }
    /* One for the token (pooled channel), one kept by the multi for all three streams. */
    assert_int_equal(emu_stat(&E, "connections_opened"), 2);
    maas_multi_free(m);
    finish(c);
}

static void test_faults_in_a_multi(void **state)
{
    maas_client *c = client_with(400, 0, 2);
    maas_multi *m = NULL;
    struct one o[5];
    maas_stream *s[5];
    (void)state;
    memset(o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    /* The next two requests get a 503, whichever streams send them: two
     * retries on backoff timers, and every stream still ends as its fault says. */
    assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "status=503", 2), 200);
    s[0] = add(m, "Tell me a joke", 5, &o[0]);
    s[1] = add(m, "Tell me [[fault:error-after=3]]", 10, &o[1]);
    s[2] = add(m, "Tell me [[fault:drop-after=4]]", 10, &o[2]);
    s[3] = add(m, "Tell me [[fault:stall-after=2]]", 10, &o[3]); /* idle clock */
    s[4] = add(m, "Tell me [[fault:malformed-after=1]]", 10, &o[4]);
    run_poll(m);
    assert_int_equal(o[0].status, MAAS_OK);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_RETRIES), 2);
    assert_int_equal(o[1].status, MAAS_ERR_STREAM);
    assert_int_equal(o[1].tokens, 3);
    assert_int_equal(maas_stream_error(s[1])->grpc_code, 14);
    assert_int_equal(o[2].status, MAAS_ERR_TRUNCATED);
    assert_int_equal(o[2].tokens, 4);
    assert_int_equal(o[3].status, MAAS_ERR_IDLE_TIMEOUT);
    assert_int_equal(o[3].tokens, 2);
    assert_int_equal(o[4].status, MAAS_ERR_PROTOCOL);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(o[i].done, 1);
        maas_stream_free(s[i]);
    }
    maas_multi_free(m);
    finish(c);
}

/* B's on_done: when it ran, and A (waiting on its backoff) is cancelled. */
struct backoff_pair {
    struct one a, b;
    maas_stream *sa;
    struct timespec b_done;
};

static void on_done_b(maas_stream *s, maas_status st, void *p)
{
    struct backoff_pair *k = (struct backoff_pair *)((char *)p - offsetof(struct backoff_pair, b));
    on_done(s, st, p);
    clock_gettime(CLOCK_MONOTONIC, &k->b_done);
    maas_stream_cancel(k->sa);
}

static void test_backoff_does_not_block_the_multi(void **state)
{
    maas_client_options opt;
    maas_client *c = NULL;
    maas_multi *m = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    struct backoff_pair k;
    maas_stream *sb = NULL;
    struct timespec t0;
    long b_ms;
    (void)state;
    memset(&k, 0, sizeof k);
    emu_options(&E, &opt);
    opt.max_retries = 1;
    opt.retry_base_ms = 20000; /* A's backoff: at least 15 s (jitter takes off at most a quarter) */
    opt.retry_max_ms = 20000;
    assert_int_equal(maas_client_new(&c, &opt), MAAS_OK);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    k.sa = add(m, "Tell me [[fault:status=503]]", 10, &k.a);
    r.model = MISTRAL;
    r.prompt = "Tell me a joke [[fault:delay=20]]";
    r.max_new_tokens = 10;
    assert_int_equal(maas_multi_add(&sb, m, &r, on_token, on_details, on_done_b, &k.b), MAAS_OK);
    run_poll(m);
    /* B streamed to its end while A waited: the backoff is a clock of the multi,
     * not a sleep. A blocking sleep would hold B back for 15 s or more. */
    assert_int_equal(k.b.status, MAAS_OK);
    assert_int_equal(k.b.tokens, 10);
    b_ms = (k.b_done.tv_sec - t0.tv_sec) * 1000 + (k.b_done.tv_nsec - t0.tv_nsec) / 1000000;
    if (b_ms >= 10000)
        fail_msg("the other stream ended after %ld ms: held up by the backoff", b_ms);
    /* A was waiting on its backoff (one attempt made) when B's on_done cancelled it. */
    assert_int_equal(k.a.status, MAAS_ERR_CANCELLED);
    assert_int_equal(maas_stream_error(k.sa)->attempts, 1);
    assert_int_equal(emu_stat(&E, "generate_requests"), 2);
    maas_stream_free(k.sa);
    maas_stream_free(sb);
    maas_multi_free(m);
    finish(c);
}

static void test_deadline_in_a_multi(void **state)
{
    maas_client *c = client_with(0, 300, 0);
    maas_multi *m = NULL;
    struct one o;
    maas_stream *s;
    (void)state;
    memset(&o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    s = add(m, "Tell me [[fault:delay=50]]", 100, &o);
    run_poll(m);
    assert_int_equal(o.status, MAAS_ERR_DEADLINE);
    assert_true(o.tokens > 0 && o.tokens < 100);
    maas_stream_free(s);
    maas_multi_free(m);
    finish(c);
}

static void test_cancel_from_callback(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct one o[2];
    maas_stream *s[2];
    (void)state;
    memset(o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    o[0].cancel_after = 3;
    s[0] = add(m, "Tell me [[fault:coalesce]]", 30, &o[0]);
    s[1] = add(m, "Tell me a joke", 30, &o[1]);
    run_poll(m);
    /* All 30 tokens arrive in one write, yet none is handed out after the cancel. */
    assert_int_equal(o[0].status, MAAS_ERR_CANCELLED);
    assert_int_equal(o[0].tokens, 3);
    assert_int_equal(o[0].details, 0);
    assert_string_equal(maas_stream_error(s[0])->message, "cancelled by the token callback");
    assert_int_equal(o[1].status, MAAS_OK); /* the other stream is untouched */
    maas_stream_free(s[0]);
    maas_stream_free(s[1]);
    maas_multi_free(m);
    finish(c);
}

static void *cancel_thread(void *p)
{
    maas_stream_cancel(p);
    return NULL;
}

static void test_cancel_from_another_thread(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct one o;
    maas_stream *s;
    pthread_t t;
    (void)state;
    memset(&o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    s = add(m, "Tell me [[fault:stall-after=1]]", 10, &o);
    assert_int_equal(pthread_create(&t, NULL, cancel_thread, s), 0);
    run_poll(m); /* a poll blocked on the stall is woken by the cancel */
    pthread_join(t, NULL);
    assert_int_equal(o.status, MAAS_ERR_CANCELLED);
    /* on_done once, on the thread that drives the multi, not the cancelling one. */
    assert_int_equal(o.done, 1);
    assert_int_equal(o.foreign, 0);
    maas_stream_free(s);
    maas_multi_free(m);
    finish(c);
}

static void test_free_multi_with_running_streams(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct one o[2];
    maas_stream *s[2];
    const maas_token *t;
    size_t tokens[2];
    (void)state;
    memset(o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    s[0] = add(m, "Tell me [[fault:stall-after=1]]", 10, &o[0]);
    s[1] = add(m, "Tell me [[fault:delay=100]]", 10, &o[1]);
    /* Both streams running: each has delivered its first token, and neither is done. */
    {
        int rounds = 0;
        while ((o[0].tokens < 1 || o[1].tokens < 1) && ++rounds < 300)
            assert_int_equal(maas_multi_poll(m, 100, NULL), MAAS_OK);
        assert_true(o[0].tokens >= 1 && o[1].tokens >= 1);
        assert_int_equal(o[0].done + o[1].done, 0);
    }
    tokens[0] = o[0].tokens;
    tokens[1] = o[1].tokens;
    maas_multi_free(m);
    /* The streams outlive their multi as failed handles; no callback ran for them. */
    assert_int_equal(o[0].done + o[1].done, 0);
    assert_int_equal(maas_stream_error(s[0])->status, MAAS_ERR_CANCELLED);
    assert_int_equal(maas_stream_next(s[1], &t), MAAS_ERR_CANCELLED);
    maas_stream_cancel(s[0]); /* harmless */
    maas_stream_free(s[0]);
    maas_stream_free(s[1]);
    /* Nor after the multi is gone: not on the calls above, not on the frees. */
    assert_int_equal(o[0].done + o[1].done + o[0].details + o[1].details, 0);
    assert_int_equal(o[0].tokens, tokens[0]);
    assert_int_equal(o[1].tokens, tokens[1]);
    finish(c);
}

static void test_misuse(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    maas_stream *s = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    struct one o;
    const maas_token *t;
    (void)state;
    memset(&o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    /* A bad request fails at once, with no callback. */
    r.model = MISTRAL;
    r.prompt = "x";
    assert_int_equal(maas_multi_add(&s, m, &r, on_token, on_details, on_done, &o),
                     MAAS_ERR_INVALID_ARGUMENT);
    assert_null(s);
    assert_int_equal(o.done, 0);
    s = add(m, "Tell me a joke", 3, &o);
    /* A multi's stream is driven by its multi only. */
    assert_int_equal(maas_stream_next(s, &t), MAAS_ERR_INVALID_ARGUMENT);
    assert_int_equal(maas_multi_socket_action(NULL, 0, 0, NULL), MAAS_ERR_INVALID_ARGUMENT);
    /* socket_action belongs to event-loop mode, and the mode is fixed once streams were added. */
    assert_int_equal(maas_multi_socket_action(m, MAAS_SOCKET_TIMEOUT, 0, NULL),
                     MAAS_ERR_INVALID_ARGUMENT);
    run_poll(m);
    assert_int_equal(o.status, MAAS_OK);
    maas_stream_free(s);
    maas_multi_free(m);
    maas_multi_free(NULL);
    finish(c);
}

/* ---- an application's event loop (engines.c) ---- */

static void run_loop(maas_multi *m, struct engine_loop *l)
{
    size_t running = 1;
    int rounds = 0;
    while (running > 0) {
        assert_true(++rounds < 1000000);
        engine_loop_turn(m, l, 1000, &running);
    }
}

static void test_event_loop(void **state)
{
    enum { N = 100 };
    /* The stalled stream's idle clock: long enough for 100 busy streams on one
     * thread under valgrind on a loaded machine never to trip theirs. */
    maas_client *c = client_with(3000, 0, 2);
    maas_multi *m = NULL;
    struct engine_loop *l = calloc(1, sizeof *l);
    struct one *o = calloc(N + 1, sizeof *o);
    maas_stream *s[N + 1];
    char prompt[64];
    int i;
    (void)state;
    assert_non_null(l);
    assert_non_null(o);
    engine_loop_init(l);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    assert_int_equal(maas_multi_set_callbacks(m, engine_loop_socket, engine_loop_timer, l), MAAS_OK);
    /* perform/poll belong to the other mode. */
    assert_int_equal(maas_multi_perform(m, NULL), MAAS_ERR_INVALID_ARGUMENT);
    for (i = 0; i < N; i++) {
        snprintf(prompt, sizeof prompt, "loop %d [[fault:delay=3]]", i);
        s[i] = add(m, prompt, 15, &o[i]);
    }
    /* One that trips its idle clock: the timer callback must carry it. */
    s[N] = add(m, "Tell me [[fault:stall-after=1]]", 15, &o[N]);
    run_loop(m, l);
    for (i = 0; i < N; i++) {
        assert_int_equal(o[i].status, MAAS_OK);
        assert_int_equal(o[i].tokens, 15);
        assert_memory_equal(o[i].text, o[i].generated, o[i].len);
        maas_stream_free(s[i]);
    }
    assert_int_equal(o[N].status, MAAS_ERR_IDLE_TIMEOUT);
    maas_stream_free(s[N]);
    assert_true(l->socket_calls > 0 && l->timer_calls > 0);
    maas_multi_free(m);
    assert_int_equal(l->nfds, 0); /* every socket was handed back */
    free(o);
    engine_loop_free(l);
    free(l);
    finish(c);
}

struct loop_cancel {
    maas_stream *s;
};

static void *cancel_later(void *p)
{
    struct loop_cancel *k = p;
    maas_stream_cancel(k->s);
    return NULL;
}

static void test_event_loop_cross_thread_cancel(void **state)
{
    maas_client *c = client_with(0, 0, 0); /* idle clock 60 s: only the cancel can end it soon */
    maas_multi *m = NULL;
    struct engine_loop *l = calloc(1, sizeof *l);
    struct one o;
    struct loop_cancel k;
    pthread_t t;
    (void)state;
    assert_non_null(l);
    memset(&o, 0, sizeof o);
    engine_loop_init(l);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    assert_int_equal(maas_multi_set_callbacks(m, engine_loop_socket, engine_loop_timer, l), MAAS_OK);
    /* The multi's wake-up pipe is the first socket the loop watches. */
    assert_int_equal(l->nfds, 1);
    assert_int_equal(maas_multi_set_callbacks(m, engine_loop_socket, engine_loop_timer, l),
                     MAAS_ERR_INVALID_ARGUMENT);
    k.s = add(m, "Tell me [[fault:stall-after=1]]", 10, &o);
    assert_int_equal(pthread_create(&t, NULL, cancel_later, &k), 0);
    run_loop(m, l); /* blocked in poll(2) on the stall until the pipe wakes it */
    pthread_join(t, NULL);
    assert_int_equal(o.status, MAAS_ERR_CANCELLED);
    assert_int_equal(o.done, 1);
    assert_int_equal(o.foreign, 0);
    maas_stream_free(k.s);
    maas_multi_free(m);
    assert_int_equal(l->nfds, 0);
    engine_loop_free(l);
    free(l);
    finish(c);
}

/* A socket callback that refuses: every socket (refuse_from 0), or every
 * one after the first (the wake-up pipe accepted, the streams' refused). */
struct refusing {
    int calls, refuse_from;
};

static int refusing_socket(int fd, int what, void *payload, void *socket_payload)
{
    struct refusing *r = payload;
    (void)fd;
    (void)socket_payload;
    if (what == MAAS_POLL_REMOVE)
        return 0;
    return r->calls++ >= r->refuse_from ? -1 : 0;
}

static int idle_timer(long timeout_ms, void *payload)
{
    (void)timeout_ms;
    (void)payload;
    return 0;
}

static void test_event_loop_refusals(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct refusing r = { 0, 0 };
    struct one o;
    maas_stream *s;
    maas_status st = MAAS_OK;
    size_t running = 1;
    int rounds = 0;
    (void)state;
    memset(&o, 0, sizeof o);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    /* The wake-up pipe refused: the call fails and the multi stays in
     * perform/poll mode, as if it had not been called. */
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    assert_int_equal(maas_multi_set_callbacks(m, refusing_socket, idle_timer, &r),
                     MAAS_ERR_INVALID_ARGUMENT);
    assert_string_equal(maas_last_error()->message, "the socket callback refused the wake-up pipe");
    assert_int_equal(r.calls, 1);
    s = add(m, "Tell me a joke", 5, &o);
    run_poll(m);
    assert_int_equal(o.status, MAAS_OK);
    maas_stream_free(s);
    /* Once a stream was added, even one freed since, the mode is fixed. */
    r.refuse_from = 100;
    assert_int_equal(maas_multi_set_callbacks(m, refusing_socket, idle_timer, &r),
                     MAAS_ERR_INVALID_ARGUMENT);
    assert_string_equal(maas_last_error()->message,
                        "set the callbacks once, before adding any stream");
    maas_multi_free(m);
    /* A stream's socket refused: libcurl gives up the multi, and every later
     * maas_multi_socket_action fails too. */
    memset(&o, 0, sizeof o);
    r.calls = 0;
    r.refuse_from = 1;
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    assert_int_equal(maas_multi_set_callbacks(m, refusing_socket, idle_timer, &r), MAAS_OK);
    s = add(m, "Tell me a joke", 5, &o);
    while (st == MAAS_OK && running > 0 && ++rounds < 1000)
        st = maas_multi_socket_action(m, MAAS_SOCKET_TIMEOUT, 0, &running);
    assert_int_equal(st, MAAS_ERR_INVALID_ARGUMENT);
    assert_string_equal(maas_last_error()->message,
                        "the socket callback returned nonzero: the multi is aborted");
    assert_int_equal(maas_multi_socket_action(m, MAAS_SOCKET_TIMEOUT, 0, &running),
                     MAAS_ERR_INVALID_ARGUMENT);
    assert_string_equal(maas_last_error()->message,
                        "the socket callback returned nonzero: the multi is aborted");
    maas_multi_free(m);
    maas_stream_free(s);
    finish(c);
}

/* A socket callback that calls back into the multi: refused, not run. */
struct recursing {
    maas_multi *m;
    int tried;
    maas_status st;
    char message[128];
};

static int recursing_socket(int fd, int what, void *payload, void *socket_payload)
{
    struct recursing *r = payload;
    (void)fd;
    (void)socket_payload;
    if (what != MAAS_POLL_REMOVE && r->m && !r->tried) {
        r->tried = 1;
        r->st = maas_multi_socket_action(r->m, MAAS_SOCKET_TIMEOUT, 0, NULL);
        snprintf(r->message, sizeof r->message, "%s", maas_last_error()->message);
    }
    return 0;
}

static void test_socket_callback_cannot_drive(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct recursing r;
    struct one o;
    maas_stream *s;
    int rounds = 0;
    (void)state;
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    /* The catalogue and the token at hand: the stream's first transfer
     * starts inside maas_multi_add, not after a fetch aside. */
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    warm_catalogue(c);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    assert_int_equal(maas_multi_set_callbacks(m, recursing_socket, idle_timer, &r), MAAS_OK);
    r.m = m; /* not for the wake-up pipe, reported inside maas_multi_set_callbacks */
    s = add(m, "Tell me a joke", 5, &o);
    while (!r.tried && ++rounds < 1000)
        assert_int_equal(maas_multi_socket_action(m, MAAS_SOCKET_TIMEOUT, 0, NULL), MAAS_OK);
    assert_true(r.tried);
    assert_int_equal(r.st, MAAS_ERR_INVALID_ARGUMENT);
    assert_string_equal(r.message, "called from inside a socket or timer callback");
    maas_stream_free(s);
    maas_multi_free(m);
    finish(c);
}

static void test_free_running_stream_leaves_the_count(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct one o[2];
    maas_stream *s[2];
    size_t running = 0;
    int rounds = 0;
    (void)state;
    memset(o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    s[0] = add(m, "Tell me [[fault:stall-after=1]]", 10, &o[0]);
    s[1] = add(m, "Tell me [[fault:stall-after=1]]", 10, &o[1]);
    while ((o[0].tokens < 1 || o[1].tokens < 1) && ++rounds < 300)
        assert_int_equal(maas_multi_poll(m, 100, &running), MAAS_OK);
    assert_int_equal(running, 2);
    /* Freed while it runs: out of the count at once, and no on_done. */
    maas_stream_free(s[0]);
    assert_int_equal(maas_multi_perform(m, &running), MAAS_OK);
    assert_int_equal(running, 1);
    assert_int_equal(o[0].done, 0);
    maas_stream_cancel(s[1]);
    run_poll(m);
    assert_int_equal(o[1].done, 1);
    assert_int_equal(o[1].status, MAAS_ERR_CANCELLED);
    assert_int_equal(o[0].done, 0);
    maas_stream_free(s[1]);
    maas_multi_free(m);
    finish(c);
}

static void test_cancel_from_details_callback(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct one o;
    maas_stream *s;
    (void)state;
    memset(&o, 0, sizeof o);
    o.cancel_in_details = 1;
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    s = add(m, "Tell me a joke", 5, &o);
    run_poll(m);
    /* Every token delivered, the details too, and yet a cancelled stream. */
    assert_int_equal(o.tokens, 5);
    assert_int_equal(o.details, 1);
    assert_int_equal(o.done, 1);
    assert_int_equal(o.status, MAAS_ERR_CANCELLED);
    assert_string_equal(maas_stream_error(s)->message, "cancelled by the details callback");
    maas_stream_free(s);
    maas_multi_free(m);
    finish(c);
}

static void test_cancel_after_final_message(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct one o;
    maas_stream *s;
    (void)state;
    memset(&o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    s = add(m, "Tell me a joke", 5, &o);
    o.cancel_self_in_details = s;
    run_poll(m);
    /* The final message had arrived: the stream ends normally. */
    assert_int_equal(o.details, 1);
    assert_int_equal(o.done, 1);
    assert_int_equal(o.status, MAAS_OK);
    assert_non_null(maas_stream_details(s));
    maas_stream_free(s);
    maas_multi_free(m);
    finish(c);
}

static void test_timer_told_again_after_early_call(void **state)
{
    maas_client *c = client_with(500, 0, 0);
    maas_multi *m = NULL;
    struct engine_loop *l = calloc(1, sizeof *l);
    struct one o;
    maas_stream *s;
    size_t running = 1;
    int rounds = 0, told;
    (void)state;
    assert_non_null(l);
    memset(&o, 0, sizeof o);
    engine_loop_init(l);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    assert_int_equal(maas_multi_set_callbacks(m, engine_loop_socket, engine_loop_timer, l), MAAS_OK);
    s = add(m, "Tell me [[fault:stall-after=1]]", 10, &o);
    /* Drive until the stream stalls after its first token, its idle clock in the timer. */
    while (!(o.tokens >= 1 && engine_loop_timer_left(l) > 100) && running > 0 && ++rounds < 100000)
        engine_loop_turn(m, l, 1000, &running);
    assert_true(o.tokens >= 1 && engine_loop_timer_left(l) > 100);
    /* The loop takes the timer as fired before its time: the call is
     * harmless, and the multi tells the same timer again. */
    told = l->timer_calls;
    l->timer_ms = -1;
    assert_int_equal(maas_multi_socket_action(m, MAAS_SOCKET_TIMEOUT, 0, &running), MAAS_OK);
    assert_int_equal(running, 1);
    assert_int_equal(o.done, 0);
    assert_true(l->timer_calls > told);
    assert_true(l->timer_ms > 0);
    run_loop(m, l);
    assert_int_equal(o.status, MAAS_ERR_IDLE_TIMEOUT);
    maas_stream_free(s);
    maas_multi_free(m);
    engine_loop_free(l);
    free(l);
    finish(c);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *wake_multi(void *p)
{
    maas_multi_wakeup(p);
    return NULL;
}

static void test_wakeup_from_another_thread(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct engine_loop *l = calloc(1, sizeof *l);
    pthread_t t;
    int64_t t0;
    size_t running = 0;
    int n;
    (void)state;
    assert_non_null(l);
    /* perform/poll: a poll of 10 s with nothing to do ends at the wake-up. */
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    t0 = mono_ms();
    assert_int_equal(pthread_create(&t, NULL, wake_multi, m), 0);
    assert_int_equal(maas_multi_poll(m, 10000, &running), MAAS_OK);
    pthread_join(t, NULL);
    if (mono_ms() - t0 > 5000)
        fail_msg("maas_multi_wakeup did not end a 10 s poll (%lld ms)",
                 (long long)(mono_ms() - t0));
    maas_multi_free(m);
    /* Event-loop mode: the loop, blocked on the wake-up pipe alone, sees it
     * readable; the multi empties it. */
    engine_loop_init(l);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    assert_int_equal(maas_multi_set_callbacks(m, engine_loop_socket, engine_loop_timer, l), MAAS_OK);
    assert_int_equal(l->nfds, 1);
    assert_int_equal(pthread_create(&t, NULL, wake_multi, m), 0);
    n = poll(l->fds, 1, 10000);
    pthread_join(t, NULL);
    assert_int_equal(n, 1);
    assert_true(l->fds[0].revents & POLLIN);
    assert_int_equal(maas_multi_socket_action(m, l->fds[0].fd, MAAS_POLL_IN, &running), MAAS_OK);
    assert_int_equal(poll(l->fds, 1, 0), 0);
    maas_multi_free(m);
    assert_int_equal(l->nfds, 0);
    engine_loop_free(l);
    free(l);
    finish(c);
}

/* maas_multi_assign: the pointer comes back with the socket's later calls. */
struct assigning {
    struct engine_loop l; /* first: the loop's callbacks take it */
    maas_multi *m;
    int pipe_fd, stream_fd;
    int pipe_tag, stream_tag;
    int stream_tagged_calls;
    void *pipe_removed_with;
};

static int assigning_socket(int fd, int what, void *payload, void *socket_payload)
{
    struct assigning *a = payload;
    if (a->pipe_fd < 0) {
        a->pipe_fd = fd; /* the first socket reported: the wake-up pipe */
    } else if (fd == a->pipe_fd) {
        if (what == MAAS_POLL_REMOVE)
            a->pipe_removed_with = socket_payload;
    } else if (a->stream_fd < 0 && what != MAAS_POLL_REMOVE) {
        a->stream_fd = fd;
        assert_int_equal(maas_multi_assign(a->m, fd, &a->stream_tag), MAAS_OK);
    } else if (fd == a->stream_fd && socket_payload == &a->stream_tag) {
        a->stream_tagged_calls++;
    }
    return engine_loop_socket(fd, what, &a->l, socket_payload);
}

static void test_assign_hands_back_the_pointer(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    struct assigning *a = calloc(1, sizeof *a);
    struct one o;
    maas_stream *s;
    (void)state;
    assert_non_null(a);
    memset(&o, 0, sizeof o);
    engine_loop_init(&a->l);
    a->pipe_fd = a->stream_fd = -1;
    assert_int_equal(maas_multi_new(&a->m, c), MAAS_OK);
    assert_int_equal(maas_multi_set_callbacks(a->m, assigning_socket, engine_loop_timer, a), MAAS_OK);
    assert_true(a->pipe_fd >= 0);
    assert_int_equal(maas_multi_assign(a->m, a->pipe_fd, &a->pipe_tag), MAAS_OK);
    s = add(a->m, "Tell me a joke", 5, &o);
    run_loop(a->m, &a->l);
    assert_int_equal(o.status, MAAS_OK);
    maas_stream_free(s);
    maas_multi_free(a->m);
    /* The stream's socket came back with its pointer; the pipe's REMOVE too. */
    assert_true(a->stream_fd >= 0);
    assert_true(a->stream_tagged_calls >= 1);
    assert_ptr_equal(a->pipe_removed_with, &a->pipe_tag);
    engine_loop_free(&a->l);
    free(a);
    finish(c);
}

static void test_cancel_from_a_callback_acted_on_at_once(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = NULL;
    struct one o[2];
    maas_stream *s[2];
    size_t running = 2;
    int rounds = 0;
    (void)state;
    memset(o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    /* s[1] stalls after a token; s[0]'s first token, a little later, cancels it. */
    s[1] = add(m, "Tell me [[fault:stall-after=1]]", 10, &o[1]);
    s[0] = add(m, "Tell me [[fault:first-byte-delay=300]]", 5, &o[0]);
    o[0].cancel_on_token = s[1];
    assert_int_equal(maas_multi_perform(m, &running), MAAS_OK);
    while (!o[0].cancelled_on_token && running > 0 && ++rounds < 1000)
        assert_int_equal(maas_multi_poll(m, 1000, &running), MAAS_OK);
    assert_true(o[0].cancelled_on_token);
    /* Acted on before the call that ran the callback returned. */
    assert_int_equal(o[1].done, 1);
    assert_int_equal(o[1].status, MAAS_ERR_CANCELLED);
    run_poll(m);
    assert_int_equal(o[0].status, MAAS_OK);
    maas_stream_free(s[0]);
    maas_stream_free(s[1]);
    maas_multi_free(m);
    finish(c);
}

static void test_poll_wakes_for_a_backoff(void **state)
{
    maas_client *c = client_with(0, 0, 2);
    maas_multi *m = NULL;
    struct one o;
    maas_stream *s;
    size_t running = 1;
    int rounds = 0;
    (void)state;
    memset(&o, 0, sizeof o);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    /* One 503, then a retry after a short backoff: while it waits, libcurl
     * has no transfer and no timer; only the multi's clock ends the poll. */
    assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "status=503", 1), 200);
    s = add(m, "Tell me a joke", 5, &o);
    assert_int_equal(maas_multi_perform(m, &running), MAAS_OK);
    while (running > 0 && ++rounds < 1000) {
        int64_t t0 = mono_ms();
        assert_int_equal(maas_multi_poll(m, 10000, &running), MAAS_OK);
        if (mono_ms() - t0 > 5000)
            fail_msg("a poll of 10 s outlived the multi's next clock (%lld ms)",
                     (long long)(mono_ms() - t0));
    }
    assert_int_equal(o.status, MAAS_OK);
    assert_int_equal(maas_stream_details(s)->attempts, 2);
    maas_stream_free(s);
    maas_multi_free(m);
    finish(c);
}

static int group_setup(void **state)
{
    (void)state;
    return emu_start(&E, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    return emu_stop(&E);
}


/* ---- nothing a multi does waits on the network ------------------------------------ */

/*
 * One turn of the application's loop: by maas_multi_poll, or by the event
 * loop. Both wait at most 100 ms for a socket or the wake-up, so a turn that
 * takes far longer was spent inside the library.
 */
static long turn(maas_multi *m, struct engine_loop *l, size_t *running)
{
    long t0 = engine_now_ms();
    if (l)
        engine_loop_turn(m, l, 100, running);
    else
        assert_int_equal(maas_multi_poll(m, 100, running), MAAS_OK);
    return engine_now_ms() - t0;
}

static maas_multi *new_multi(maas_client *c, struct engine_loop *l)
{
    maas_multi *m = NULL;
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    if (l) {
        engine_loop_init(l);
        assert_int_equal(maas_multi_set_callbacks(m, engine_loop_socket, engine_loop_timer, l),
                         MAAS_OK);
    }
    return m;
}

/* Free the multi; in event-loop mode every socket must have been handed back. */
static void free_multi(maas_multi *m, struct engine_loop *l)
{
    maas_multi_free(m);
    if (l) {
        assert_int_equal(l->nfds, 0);
        engine_loop_free(l);
    }
}

/* Turns until no stream runs, within 20 s of `since` (a stream that no one
 * tells of what it waits for would wait for ever); the longest turn is kept. */
static void drive_to_end(maas_multi *m, struct engine_loop *l, size_t *running, long since,
                         long *longest)
{
    int rounds = 0;
    while (*running > 0) {
        long took;
        assert_true(++rounds < 100000);
        assert_true(engine_now_ms() - since < 20000);
        took = turn(m, l, running);
        if (took > *longest)
            *longest = took;
    }
}

static maas_stream *timed_add(maas_multi *m, const char *prompt, int max_tokens, struct one *o,
                              long *longest)
{
    long t0 = engine_now_ms();
    maas_stream *s = add(m, prompt, max_tokens, o);
    if (engine_now_ms() - t0 > *longest)
        *longest = engine_now_ms() - t0;
    return s;
}

/*
 * A 401 in the middle of a busy multi: the replay needs a new token, which the
 * token endpoint gives only after 2 s. The stream waits for it in the multi
 * while its neighbour keeps flowing; a stream added meanwhile waits for the
 * same fetch; no call into the multi takes more than a fraction of the 2 s.
 */
static void token_fetch_aside(int event)
{
    maas_client *c = client_with(0, 0, 0);
    struct engine_loop l;
    maas_multi *m;
    struct one a, b, d;
    maas_stream *sa, *sb, *sd;
    size_t running = 1;
    long longest = 0, t0, tokens_before;
    int rounds = 0;

    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&d, 0, sizeof d);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    warm_catalogue(c);
    tokens_before = emu_stat(&E, "token_requests");
    m = new_multi(c, event ? &l : NULL);
    /* 40 tokens 50 ms apart: two seconds of flow, under way before the faults are queued. */
    sa = timed_add(m, "Tell me a joke [[fault:delay=50]] [[fault:tokens=40]]", 40, &a, &longest);
    while (a.tokens == 0) {
        assert_true(++rounds < 10000);
        turn(m, event ? &l : NULL, &running);
    }
    assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "status=401", 1), 200);
    assert_int_equal(emu_fault(&E, "/oauth2/token", "first-byte-delay=2000", 1), 200);
    t0 = engine_now_ms();
    sb = timed_add(m, "Tell me a joke", 5, &b, &longest);
    /* B's 401 has dropped the token: a stream added now has none at hand either. */
    while (maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS) == 0) {
        assert_true(++rounds < 10000);
        turn(m, event ? &l : NULL, &running);
    }
    sd = timed_add(m, "Tell me a joke", 5, &d, &longest);
    drive_to_end(m, event ? &l : NULL, &running, t0, &longest);
    assert_int_equal(a.status, MAAS_OK);
    assert_int_equal(a.tokens, 40);
    assert_int_equal(b.status, MAAS_OK);
    assert_int_equal(b.tokens, 5);
    assert_int_equal(d.status, MAAS_OK);
    assert_int_equal(d.tokens, 5);
    /* The slow fetch really was in the way, and was made once for both. */
    assert_true(engine_now_ms() - t0 >= 1900);
    assert_int_equal(emu_stat(&E, "token_requests") - tokens_before, 1);
    /* Nothing waited for it but the streams that needed it. */
    print_message("longest call into the multi: %ld ms; longest gap in the busy stream: %ld ms\n",
                  longest, a.max_gap_ms);
    assert_true(longest < 1000);
    assert_true(a.max_gap_ms < 1000);
    assert_int_equal(a.foreign + b.foreign + d.foreign, 0);
    maas_stream_free(sa);
    maas_stream_free(sb);
    maas_stream_free(sd);
    free_multi(m, event ? &l : NULL);
    finish(c);
}

/* One thread driving its own multi of two streams on a shared client. */
struct driven {
    maas_client *c;
    struct one o[2];
    maas_status add_st, poll_st;
    long longest;   /* the longest call into its multi, ms */
    int stuck;      /* its streams did not end within 20 s */
};

static void *drive_own_multi(void *p)
{
    struct driven *d = p;
    maas_multi *m = NULL;
    maas_stream *s[2] = { NULL, NULL };
    size_t running = 2;
    long start = engine_now_ms();
    int i;
    if ((d->add_st = maas_multi_new(&m, d->c)) != MAAS_OK)
        return NULL;
    for (i = 0; i < 2 && d->add_st == MAAS_OK; i++) {
        maas_request r = MAAS_REQUEST_INIT;
        long t0 = engine_now_ms();
        r.model = MISTRAL;
        r.prompt = "Tell me a joke";
        r.max_new_tokens = 5;
        d->o[i].own_driver = pthread_self();
        d->o[i].has_own_driver = 1;
        d->add_st = maas_multi_add(&s[i], m, &r, on_token, on_details, on_done, &d->o[i]);
        if (engine_now_ms() - t0 > d->longest)
            d->longest = engine_now_ms() - t0;
    }
    while (d->add_st == MAAS_OK && running > 0 && !(d->stuck = engine_now_ms() - start > 20000)) {
        long t0 = engine_now_ms();
        if ((d->poll_st = maas_multi_poll(m, 100, &running)) != MAAS_OK)
            break;
        if (engine_now_ms() - t0 > d->longest)
            d->longest = engine_now_ms() - t0;
    }
    for (i = 0; i < 2; i++)
        maas_stream_free(s[i]);
    maas_multi_free(m);
    return NULL;
}

/*
 * Four multis, each driven by a thread of its own, on one new client: their
 * fetchers share the client's token cache and catalogue, so one slow token
 * request (1 s) and one catalogue request serve all eight streams, and no
 * thread's calls into its multi wait for them.
 */
static void test_multis_on_threads_share_one_fetch(void **state)
{
    enum { T = 4 };
    maas_client *c = client_with(0, 0, 0);
    struct driven *d = calloc(T, sizeof *d);
    pthread_t t[T];
    int i, j;
    (void)state;
    assert_non_null(d);
    assert_int_equal(emu_fault(&E, "/oauth2/token", "first-byte-delay=1000", 1), 200);
    for (i = 0; i < T; i++) {
        d[i].c = c;
        assert_int_equal(pthread_create(&t[i], NULL, drive_own_multi, &d[i]), 0);
    }
    for (i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    for (i = 0; i < T; i++) {
        if (d[i].add_st != MAAS_OK || d[i].poll_st != MAAS_OK || d[i].stuck)
            fail_msg("thread %d: add %s, poll %s%s", i, maas_status_name(d[i].add_st),
                     maas_status_name(d[i].poll_st), d[i].stuck ? ", stuck" : "");
        for (j = 0; j < 2; j++)
            if (d[i].o[j].status != MAAS_OK || d[i].o[j].tokens != 5 || d[i].o[j].done != 1 ||
                d[i].o[j].foreign)
                fail_msg("thread %d, stream %d: %s, %zu tokens, %d on_done, %d callbacks off "
                         "its thread: %s", i, j, maas_status_name(d[i].o[j].status),
                         d[i].o[j].tokens, d[i].o[j].done, d[i].o[j].foreign,
                         d[i].o[j].message);
        print_message("thread %d: longest call into its multi %ld ms\n", i, d[i].longest);
        assert_true(d[i].longest < 1000);
    }
    assert_int_equal(emu_stat(&E, "token_requests"), 1);
    assert_int_equal(emu_stat(&E, "models_requests"), 1);
    free(d);
    finish(c);
}

static void test_token_fetched_aside_poll(void **state)
{
    (void)state;
    token_fetch_aside(0);
}

static void test_token_fetched_aside_event(void **state)
{
    (void)state;
    token_fetch_aside(1);
}

/*
 * A token endpoint that refuses after a second, and three streams that need a
 * token: those of a new client (no catalogue, no token: they wait for the
 * catalogue, whose request needs the token), or those of a warm client whose
 * token the API refuses (each gets a 401 and waits for the replay's token).
 * maas_multi_add returns at once, one token request is made for all of them,
 * and its failure ends each with its status.
 */
static void failed_fetch_aside(int event, int warm)
{
    enum { N = 3 };
    maas_client *c = client_with(0, 0, 0);
    struct engine_loop l;
    maas_multi *m;
    struct one o[N];
    maas_stream *s[N];
    size_t running = N;
    long longest = 0, tokens_before, start;
    int i;

    memset(o, 0, sizeof o);
    if (warm) {
        assert_int_equal(maas_client_authenticate(c), MAAS_OK);
        warm_catalogue(c);
        assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "status=401", N), 200);
    }
    tokens_before = emu_stat(&E, "token_requests");
    /* Faults queued together fall on the same (next) request. */
    assert_int_equal(emu_fault(&E, "/oauth2/token", "first-byte-delay=1000", 1), 200);
    assert_int_equal(emu_fault(&E, "/oauth2/token", "status=400", 1), 200);
    m = new_multi(c, event ? &l : NULL);
    start = engine_now_ms();
    for (i = 0; i < N; i++)
        s[i] = timed_add(m, "Tell me a joke", 5, &o[i], &longest);
    drive_to_end(m, event ? &l : NULL, &running, start, &longest);
    for (i = 0; i < N; i++) {
        assert_int_equal(o[i].done, 1);
        assert_int_equal(o[i].status, MAAS_ERR_AUTH);
        assert_int_equal(o[i].tokens, 0);
        assert_string_equal(o[i].message, o[0].message);
        maas_stream_free(s[i]);
    }
    assert_int_equal(emu_stat(&E, "token_requests") - tokens_before, 1);
    print_message("longest call into the multi: %ld ms (\"%s\")\n", longest, o[0].message);
    assert_true(longest < 700);
    free_multi(m, event ? &l : NULL);
    finish(c);
}

static void test_failed_fetch_aside_ends_every_waiter_poll(void **state)
{
    (void)state;
    failed_fetch_aside(0, 0);
    failed_fetch_aside(0, 1);
}

static void test_failed_fetch_aside_ends_every_waiter_event(void **state)
{
    (void)state;
    failed_fetch_aside(1, 0);
    failed_fetch_aside(1, 1);
}

/* Freeing a multi whose fetch aside is still waiting for the token endpoint
 * cuts it short: maas_multi_free does not wait for the network either. */
static void test_free_multi_during_fetch_aside(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = new_multi(c, NULL);
    struct one o;
    maas_stream *s;
    long t0;
    (void)state;
    memset(&o, 0, sizeof o);
    assert_int_equal(emu_fault(&E, "/oauth2/token", "no-answer", 1), 200);
    s = add(m, "Tell me a joke", 5, &o);
    assert_int_equal(maas_multi_perform(m, NULL), MAAS_OK);
    /* The fetch is under way once the token endpoint has the request. */
    while (emu_stat(&E, "token_requests") == 0)
        assert_int_equal(maas_multi_poll(m, 10, NULL), MAAS_OK);
    t0 = engine_now_ms();
    maas_multi_free(m);
    print_message("maas_multi_free took %ld ms\n", engine_now_ms() - t0);
    assert_true(engine_now_ms() - t0 < 1000);
    assert_int_equal(o.done, 0); /* no callback after (or during) maas_multi_free */
    assert_int_equal(maas_stream_error(s)->status, MAAS_ERR_CANCELLED);
    maas_stream_free(s);
    finish(c);
}

/* A stream waiting for what is fetched aside (here the catalogue, whose
 * request waits for the token) keeps its clocks: its deadline ends the wait,
 * and so does a cancellation, while the fetch goes on. The fetch itself is
 * not cut at the first stream's deadline, which would fail later streams
 * early. */
static void test_wait_aside_keeps_deadline_and_cancel(void **state)
{
    maas_client *c = client_with(0, 600, 0);
    maas_multi *m = new_multi(c, NULL);
    struct one o[3];
    maas_stream *s[3];
    size_t running = 2;
    long t0, t2, longest = 0;
    (void)state;
    memset(o, 0, sizeof o);
    assert_int_equal(emu_fault(&E, "/oauth2/token", "no-answer", 1), 200);
    t0 = engine_now_ms();
    s[0] = add(m, "Tell me a joke", 5, &o[0]);
    s[1] = add(m, "Tell me a joke", 5, &o[1]);
    maas_stream_cancel(s[1]);
    /* A third stream joins the wait 300 ms later: it has its own 600 ms. */
    while (engine_now_ms() - t0 < 300)
        turn(m, NULL, &running);
    t2 = engine_now_ms();
    s[2] = add(m, "Tell me a joke", 5, &o[2]);
    running++;
    drive_to_end(m, NULL, &running, t0, &longest);
    assert_int_equal(o[1].status, MAAS_ERR_CANCELLED);
    assert_int_equal(o[0].status, MAAS_ERR_DEADLINE);
    assert_string_equal(o[0].message,
                        "the 600 ms deadline expired waiting for the model catalogue");
    assert_true(o[0].done_ms - t0 >= 590);
    assert_int_equal(o[2].status, MAAS_ERR_DEADLINE);
    print_message("the later stream ended after %ld ms\n", o[2].done_ms - t2);
    assert_true(o[2].done_ms - t2 >= 590);
    maas_stream_free(s[0]);
    maas_stream_free(s[1]);
    maas_stream_free(s[2]);
    maas_multi_free(m);
    finish(c);
}

/* A stream's whole answer waits unread in its socket when another stream is
 * added: maas_multi_add must not read it, nor run any callback. */
static void test_no_callback_inside_add(void **state)
{
    maas_client *c = client_with(0, 0, 0);
    maas_multi *m = new_multi(c, NULL);
    struct one a, b;
    maas_stream *sa, *sb;
    size_t running = 1;
    long t0 = engine_now_ms(), longest = 0;
    (void)state;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    warm_catalogue(c);
    sa = add(m, "Tell me a joke [[fault:first-byte-delay=300]]", 5, &a);
    /* Drive only until the server has the request; it answers 300 ms later. */
    while (emu_stat(&E, "generate_requests") < 2) { /* warm_catalogue's, then A's */
        assert_true(engine_now_ms() - t0 < 20000);
        assert_int_equal(maas_multi_poll(m, 10, &running), MAAS_OK);
    }
    assert_int_equal(a.tokens, 0);
    /* Now the answer is made (generations) and whole sent (no stream active),
     * and nothing reads it. */
    while (emu_stat(&E, "generations") < 2 || emu_stat(&E, "streams_active") > 0)
        assert_true(engine_now_ms() - t0 < 20000);
    sb = add(m, "Tell me a joke", 5, &b);
    assert_int_equal(a.done + a.tokens + a.foreign, 0);
    running = 2;
    drive_to_end(m, NULL, &running, t0, &longest);
    assert_int_equal(a.status, MAAS_OK);
    assert_int_equal(a.tokens, 5);
    assert_int_equal(b.status, MAAS_OK);
    assert_int_equal(a.foreign + b.foreign, 0);
    maas_stream_free(sa);
    maas_stream_free(sb);
    free_multi(m, NULL);
    finish(c);
}

int main(void)
{
    /* What means nothing through a front end (docs/testing.md). */
    static const char *const left_out[] = {
        "test_sequential_streams_reuse_connections",
        "test_faults_in_a_multi",
        "test_no_callback_inside_add",
    };
    static const char *const why[] = {
        "counts the emulator's connections, which through the front are nghttpx's pooled ones",
        "the emulator's cut reaches the client as nghttpx's RST_STREAM, "
        "before which 0 to all of the tokens sent arrive",
        "needs the whole answer unread in the client's socket; "
        "through the front the emulator sees nghttpx read it",
    };
    struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_many_streams_poll, reset),
        cmocka_unit_test_setup(test_sequential_streams_reuse_connections, reset),
        cmocka_unit_test_setup(test_faults_in_a_multi, reset),
        cmocka_unit_test_setup(test_deadline_in_a_multi, reset),
        cmocka_unit_test_setup(test_backoff_does_not_block_the_multi, reset),
        cmocka_unit_test_setup(test_cancel_from_callback, reset),
        cmocka_unit_test_setup(test_cancel_from_another_thread, reset),
        cmocka_unit_test_setup(test_free_multi_with_running_streams, reset),
        cmocka_unit_test_setup(test_misuse, reset),
        cmocka_unit_test_setup(test_event_loop, reset),
        cmocka_unit_test_setup(test_event_loop_cross_thread_cancel, reset),
        cmocka_unit_test_setup(test_event_loop_refusals, reset),
        cmocka_unit_test_setup(test_socket_callback_cannot_drive, reset),
        cmocka_unit_test_setup(test_free_running_stream_leaves_the_count, reset),
        cmocka_unit_test_setup(test_cancel_from_details_callback, reset),
        cmocka_unit_test_setup(test_cancel_after_final_message, reset),
        cmocka_unit_test_setup(test_timer_told_again_after_early_call, reset),
        cmocka_unit_test_setup(test_wakeup_from_another_thread, reset),
        cmocka_unit_test_setup(test_assign_hands_back_the_pointer, reset),
        cmocka_unit_test_setup(test_cancel_from_a_callback_acted_on_at_once, reset),
        cmocka_unit_test_setup(test_poll_wakes_for_a_backoff, reset),
        cmocka_unit_test_setup(test_token_fetched_aside_poll, reset),
        cmocka_unit_test_setup(test_token_fetched_aside_event, reset),
        cmocka_unit_test_setup(test_failed_fetch_aside_ends_every_waiter_poll, reset),
        cmocka_unit_test_setup(test_failed_fetch_aside_ends_every_waiter_event, reset),
        cmocka_unit_test_setup(test_free_multi_during_fetch_aside, reset),
        cmocka_unit_test_setup(test_wait_aside_keeps_deadline_and_cancel, reset),
        cmocka_unit_test_setup(test_no_callback_inside_add, reset),
        cmocka_unit_test_setup(test_multis_on_threads_share_one_fetch, reset),
    };
    driver = pthread_self();
    int n = emu_leave_out_through_front(tests, sizeof tests / sizeof tests[0], left_out, why,
                                        sizeof left_out / sizeof left_out[0]);
    if (n < 0)
        return 1;
    /* cmocka ignores a failing teardown: the emulator's exit status is checked here. */
    return emu_suite_result(_cmocka_run_group_tests(emu_through_front() ? "multi over h2"
                                                                          : "multi",
                                                    tests, (size_t)n, group_setup,
                                                    group_teardown),
                            &E);
}
