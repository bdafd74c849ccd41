/*
 * Threads: one client shared by 16 threads, each running 50 streams against
 * the emulator with a 2-second token lifetime and injected 401s, 429s and
 * dropped connections. Every stream must end with the status its fault
 * implies, every delivered text must equal what the server generated, and
 * the token endpoint must see at most one request per lifetime plus one
 * per injected 401. Run under ThreadSanitizer by scripts/test.
 */
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

#include "harness.h"

#define THREADS 16
#define STREAMS 50
#define TOKENS 20

static emu E;
static maas_client *C;

enum kind { PLAIN, RATE_LIMITED, DROPPED, REFUSED, KINDS };

static enum kind kind_of(int thread, int i)
{
    switch ((thread * 7 + i) % 10) {
    case 3: return RATE_LIMITED;
    case 5: return DROPPED;
    case 8: return REFUSED;
    default: return PLAIN;
    }
}

struct result {
    int failures;
    char first_failure[256];
    int count[KINDS];
};

struct text {
    char buf[8192];
    size_t len;
    size_t tokens;
    char generated[8192];
    size_t generated_len;
};

static int on_token(const maas_token *t, void *p)
{
    struct text *x = p;
    x->tokens++;
    if (!t->special && x->len + t->text_len < sizeof x->buf) {
        memcpy(x->buf + x->len, t->text, t->text_len);
        x->len += t->text_len;
    }
    return 0;
}

static int on_details(const maas_details *d, void *p)
{
    struct text *x = p;
    x->generated_len = d->generated_text_len < sizeof x->generated ? d->generated_text_len : 0;
    memcpy(x->generated, d->generated_text, x->generated_len);
    return 0;
}

static void failure(struct result *r, const char *fmt, ...)
{
    va_list ap;
    if (r->failures++ == 0) {
        va_start(ap, fmt);
        vsnprintf(r->first_failure, sizeof r->first_failure, fmt, ap);
        va_end(ap);
    }
}

static void *worker(void *arg)
{
    int thread = (int)(intptr_t)arg, i;
    struct result *r = calloc(1, sizeof *r);
    static const char *const faults[KINDS] = { "", " [[fault:status=429]]",
                                               " [[fault:drop-after=3]]",
                                               " [[fault:status=401]]" };
    static const maas_status want[KINDS] = { MAAS_OK, MAAS_ERR_RATE_LIMITED, MAAS_ERR_TRUNCATED,
                                             MAAS_ERR_UNAUTHENTICATED };
    if (!r)
        return NULL;
    for (i = 0; i < STREAMS; i++) {
        enum kind k = kind_of(thread, i);
        maas_request req = MAAS_REQUEST_INIT;
        struct text *x = calloc(1, sizeof *x);
        char prompt[128];
        maas_status st;
        if (!x) {
            failure(r, "out of memory");
            break;
        }
        /* 5 ms between tokens: the run spans several 2 s token lifetimes.
         * Through a front end the emulator's cut becomes nghttpx's
         * RST_STREAM, which discards what nghttpx has not yet forwarded:
         * 20 ms lets it forward each token before the cut reaches it, as
         * in the fault table (test_faults.c). */
        snprintf(prompt, sizeof prompt, "thread %d stream %d [[fault:delay=%d]]%s", thread, i,
                 k == DROPPED && E.front ? 20 : 5, faults[k]);
        req.model = "mistralai/Mistral-7B-Instruct-v0.1";
        req.prompt = prompt;
        req.max_new_tokens = TOKENS;
        st = maas_generate(C, &req, on_token, on_details, x);
        r->count[k]++;
        if (st != want[k])
            failure(r, "%s: %s, want %s (%s)", prompt, maas_status_name(st),
                    maas_status_name(want[k]), maas_last_error() ? maas_last_error()->message : "");
        else if (k == PLAIN && (x->tokens != TOKENS || x->len != x->generated_len ||
                                memcmp(x->buf, x->generated, x->len) != 0))
            failure(r, "%s: the delivered text differs from the generated text", prompt);
        else if (k == DROPPED && x->tokens != 3)
            failure(r, "%s: %zu tokens before the cut, want 3", prompt, x->tokens);
        free(x);
    }
    return r;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_shared_client_under_faults(void **state)
{
    static const char *const args[] = { "--token-lifetime", "2", NULL };
    maas_client_options o;
    pthread_t th[THREADS];
    int t, failures = 0, refused = 0;
    double start, elapsed;
    long token_requests, lifetimes;
    (void)state;

    assert_int_equal(emu_start(&E, args), 0);
    emu_options(&E, &o);
    o.retry_base_ms = 5;
    o.retry_max_ms = 20;
    assert_int_equal(maas_client_new(&C, &o), MAAS_OK);

    start = now_s();
    for (t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t), 0);
    for (t = 0; t < THREADS; t++) {
        void *res;
        struct result *r;
        pthread_join(th[t], &res);
        r = res;
        assert_non_null(r);
        if (r->failures)
            fprintf(stderr, "thread %d: %d failures, first: %s\n", t, r->failures,
                    r->first_failure);
        failures += r->failures;
        refused += r->count[REFUSED];
        free(r);
    }
    elapsed = now_s() - start;
    assert_int_equal(failures, 0);

    /* A 2 s token is refreshed after 1.5 s: one request per 1.5 s elapsed,
     * one for the start, and one per stream whose token was refused. */
    token_requests = emu_stat(&E, "token_requests");
    lifetimes = (long)(elapsed / 1.5) + 1;
    fprintf(stderr, "%d streams in %.2f s: %ld token requests (bound %ld + %d refused)\n",
            THREADS * STREAMS, elapsed, token_requests, lifetimes, refused);
    /* A 2 s token cannot serve streams for longer than 2 s: at least one
     * request per 2 s elapsed, and never fewer than one. */
    assert_true(token_requests >= 1);
    assert_true(token_requests >= (long)(elapsed / 2.0));
    assert_true(token_requests <= lifetimes + refused);
    assert_int_equal((long)maas_client_counter(C, MAAS_COUNTER_TOKEN_REQUESTS), token_requests);

    maas_client_free(C);
    /* Through a front end the emulator counts nghttpx's connections. */
    if (!E.front)
        assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
    assert_int_equal(emu_stop(&E), 0);
}

struct auth_arg {
    pthread_barrier_t *barrier;
    maas_status st;
};

static void *authenticate(void *p)
{
    struct auth_arg *a = p;
    pthread_barrier_wait(a->barrier);
    a->st = maas_client_authenticate(C);
    return NULL;
}

static void test_one_fetch_in_flight(void **state)
{
    /* The token endpoint answers after 300 ms: every thread arrives while the
     * first one's fetch is in flight, and all of them wait for it. */
    static const char *const args[] = { "--token-delay-ms", "300", NULL };
    maas_client_options o;
    pthread_t th[THREADS];
    struct auth_arg a[THREADS];
    pthread_barrier_t barrier;
    int t;
    (void)state;
    assert_int_equal(emu_start(&E, args), 0);
    emu_options(&E, &o);
    assert_int_equal(maas_client_new(&C, &o), MAAS_OK);
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (t = 0; t < THREADS; t++) {
        a[t].barrier = &barrier;
        assert_int_equal(pthread_create(&th[t], NULL, authenticate, &a[t]), 0);
    }
    for (t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(a[t].st, MAAS_OK);
    }
    pthread_barrier_destroy(&barrier);
    assert_int_equal(emu_stat(&E, "token_requests"), 1);
    maas_client_free(C);
    assert_int_equal(emu_stop(&E), 0);
}

struct open_arg {
    pthread_barrier_t *barrier;
    maas_stream *s;
    maas_status st;
};

static void *open_by_name(void *p)
{
    struct open_arg *a = p;
    maas_request req = MAAS_REQUEST_INIT;
    req.model = "mistralai/Mistral-7B-Instruct-v0.1";
    req.prompt = "Tell me a joke";
    req.max_new_tokens = 5;
    pthread_barrier_wait(a->barrier);
    a->st = maas_stream_open(&a->s, C, &req);
    return NULL;
}

static void test_one_catalogue_fetch_in_flight(void **state)
{
    /* Every thread names its model by name, so each needs the catalogue. The
     * first GET /models answers after 500 ms, the later ones at once: a thread
     * that fetched on its own instead of waiting would be a second request. */
    maas_client_options o;
    pthread_t th[THREADS];
    struct open_arg a[THREADS];
    pthread_barrier_t barrier;
    int t;
    (void)state;
    assert_int_equal(emu_start(&E, NULL), 0);
    emu_options(&E, &o);
    assert_int_equal(maas_client_new(&C, &o), MAAS_OK);
    assert_int_equal(maas_client_authenticate(C), MAAS_OK);
    assert_int_equal(emu_fault(&E, "/v1/maas/models", "first-byte-delay=500", 1), 200);
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (t = 0; t < THREADS; t++) {
        a[t].barrier = &barrier;
        a[t].s = NULL;
        assert_int_equal(pthread_create(&th[t], NULL, open_by_name, &a[t]), 0);
    }
    for (t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(a[t].st, MAAS_OK);
        maas_stream_free(a[t].s);
    }
    pthread_barrier_destroy(&barrier);
    assert_int_equal(emu_stat(&E, "models_requests"), 1);
    maas_client_free(C);
    assert_int_equal(emu_stop(&E), 0);
}

static void test_failed_catalogue_fetch_tried_again(void **state)
{
    /* The first GET /models fails after 500 ms while the other threads wait
     * for it; the next waiting thread asks again, and that one serves all. */
    maas_client_options o;
    pthread_t th[THREADS];
    struct open_arg a[THREADS];
    pthread_barrier_t barrier;
    int t, failed = 0;
    (void)state;
    assert_int_equal(emu_start(&E, NULL), 0);
    emu_options(&E, &o);
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&C, &o), MAAS_OK);
    assert_int_equal(maas_client_authenticate(C), MAAS_OK);
    assert_int_equal(emu_fault(&E, "/v1/maas/models", "first-byte-delay=500", 1), 200);
    assert_int_equal(emu_fault(&E, "/v1/maas/models", "status=503", 1), 200);
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (t = 0; t < THREADS; t++) {
        a[t].barrier = &barrier;
        a[t].s = NULL;
        assert_int_equal(pthread_create(&th[t], NULL, open_by_name, &a[t]), 0);
    }
    for (t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        if (a[t].st == MAAS_ERR_UNAVAILABLE)
            failed++;
        else
            assert_int_equal(a[t].st, MAAS_OK);
        maas_stream_free(a[t].s);
    }
    pthread_barrier_destroy(&barrier);
    assert_int_equal(failed, 1);
    assert_int_equal(emu_stat(&E, "models_requests"), 2);
    maas_client_free(C);
    assert_int_equal(emu_stop(&E), 0);
}

static void test_sixteen_idle_channels_kept(void **state)
{
    /* 20 streams held open at once take 20 channels, each with its own
     * connection; given back, 16 wait in the pool with their connections
     * and the other 4 are closed. */
    enum { N_STREAMS = 20 };
    maas_client_options o;
    maas_request req = MAAS_REQUEST_INIT;
    maas_stream *s[N_STREAMS];
    int i;
    (void)state;
    assert_int_equal(emu_start(&E, NULL), 0);
    emu_options(&E, &o);
    assert_int_equal(maas_client_new(&C, &o), MAAS_OK);
    req.model = "mistralai/Mistral-7B-Instruct-v0.1";
    req.prompt = "Tell me a joke";
    req.max_new_tokens = 5;
    for (i = 0; i < N_STREAMS; i++)
        assert_int_equal(maas_stream_open(&s[i], C, &req), MAAS_OK);
    for (i = 0; i < N_STREAMS; i++)
        assert_int_equal(maas_stream_run(s[i], NULL, NULL, NULL), MAAS_OK);
    /* Counted at the API's listener: the token endpoint has its own. */
    assert_int_equal(emu_wait_api_connections(&E, N_STREAMS, 5000), N_STREAMS);
    for (i = 0; i < N_STREAMS; i++)
        maas_stream_free(s[i]);
    assert_int_equal(emu_wait_api_connections(&E, 16, 3000), 16);
    maas_client_free(C);
    assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
    assert_int_equal(emu_stop(&E), 0);
}

int main(void)
{
    static const char *const left_out[] = { "test_sixteen_idle_channels_kept" };
    static const char *const why[] = {
        "counts the emulator's connections per channel, which through the front are nghttpx's",
    };
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_fetch_in_flight),
        cmocka_unit_test(test_one_catalogue_fetch_in_flight),
        cmocka_unit_test(test_failed_catalogue_fetch_tried_again),
        cmocka_unit_test(test_sixteen_idle_channels_kept),
        cmocka_unit_test(test_shared_client_under_faults),
    };
    int n = emu_leave_out_through_front(tests, sizeof tests / sizeof tests[0], left_out, why,
                                        sizeof left_out / sizeof left_out[0]);
    if (n < 0)
        return 1;
    return _cmocka_run_group_tests(emu_through_front() ? "stress over h2" : "stress", tests,
                                   (size_t)n, NULL, NULL);
}
