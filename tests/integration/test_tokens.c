/*
 * Integration: the token cache under a misbehaving token endpoint (issue 8,
 * items 5, 7-11): a fetch slower than the token's lifetime, a tiny
 * expires_in, the one-request-per-second rate limit, a failed refresh while
 * the cached token is valid, one failed fetch shared by every waiter, and
 * cancellation and deadlines reaching into a token fetch. It links the
 * internal library to replace the cache's clock and to see its waiters.
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

#include "auth.h"
#include "clientdata.h"
#include "clock.h"
#include "harness.h"

static _Atomic int64_t fake_ms;
/* The test's emulator: stopped by the teardown too, so that a failed test
 * leaves no server behind (it would hold the test's output open). */
static emu e;

static int stop_emulator(void **state)
{
    (void)state;
    if (e.pid > 0)
        emu_stop(&e);
    return 0;
}

static int64_t fake_now(void *payload)
{
    (void)payload;
    return atomic_load(&fake_ms);
}

static void walk_to(int64_t at_ms)
{
    atomic_store(&fake_ms, 1000000 + at_ms);
}

static maas_client *client_with(const emu *server, int fake_clock, long deadline_ms, int retries,
                                maas_log_cb log_cb, void *log_payload)
{
    maas_client_options o;
    maas_client *c = NULL;
    emu_options(server, &o);
    o.idle_timeout_ms = 120000; /* only the clock under test may end a wait */
    o.token_timeout_ms = -1;    /* likewise: the token call's own 30 s bound (none here) */
    o.deadline_ms = deadline_ms;
    o.max_retries = retries ? retries : MAAS_RETRIES_OFF;
    o.retry_base_ms = 1;
    o.retry_after_max_ms = 60000;
    o.log_cb = log_cb;
    o.log_payload = log_payload;
    o.log_level = MAAS_LOG_WARN;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    if (fake_clock) {
        c->auth.now = fake_now;
        walk_to(0);
    }
    return c;
}

static void request_init(maas_request *r, const char *prompt)
{
    maas_request z = MAAS_REQUEST_INIT;
    *r = z;
    r->model = "mistralai/Mistral-7B-Instruct-v0.1";
    r->prompt = prompt;
    r->max_new_tokens = 5;
}

/* Poll a condition of the client (under the cache's lock), bounded. */
static int wait_auth(maas_client *c, int (*cond)(maas_auth *, long), long want, long timeout_ms)
{
    int64_t end = maas_now_ms() + timeout_ms;
    struct timespec ts = { 0, 2 * 1000000L };
    for (;;) {
        int ok;
        pthread_mutex_lock(&c->auth.lock);
        ok = cond(&c->auth, want);
        pthread_mutex_unlock(&c->auth.lock);
        if (ok)
            return 1;
        if (maas_now_ms() > end)
            return 0;
        nanosleep(&ts, NULL);
    }
}

static int waiters_are(maas_auth *a, long want)
{
    return a->waiters == (unsigned)want;
}

/* ---- a call run on a thread, given up on after a bound ----------------------- */

struct call {
    maas_client *c;
    maas_stream *s;
    maas_status st;
    int64_t ended;
    atomic_int done;
};

static void *do_authenticate(void *p)
{
    struct call *k = p;
    k->st = maas_client_authenticate(k->c);
    k->ended = maas_now_ms();
    atomic_store(&k->done, 1);
    return NULL;
}

static void *do_run(void *p)
{
    struct call *k = p;
    k->st = maas_stream_run(k->s, NULL, NULL, NULL);
    k->ended = maas_now_ms();
    atomic_store(&k->done, 1);
    return NULL;
}

static int wait_done(struct call *k, long timeout_ms)
{
    int64_t end = maas_now_ms() + timeout_ms;
    struct timespec ts = { 0, 5 * 1000000L };
    while (!atomic_load(&k->done) && maas_now_ms() < end)
        nanosleep(&ts, NULL);
    return atomic_load(&k->done);
}

/* ---- item 7: a slow fetch, a tiny expires_in, the rate limit --------------- */

static void test_fetch_slower_than_lifetime(void **state)
{
    /* The fetch takes 800 ms of a 1 s token: it is inside its refresh window
     * before it arrives. It must be used, not fetched again for ever. */
    static const char *const args[] = { "--token-lifetime", "1", "--token-delay-ms", "800", NULL };
    maas_client *c;
    struct call k;
    pthread_t t;
    (void)state;
    assert_int_equal(emu_start(&e, args), 0);
    c = client_with(&e, 0, 0, 2, NULL, NULL);
    memset(&k, 0, sizeof k);
    k.c = c;
    assert_int_equal(pthread_create(&t, NULL, do_authenticate, &k), 0);
    /* One fetch is 0.8 s; well past 60 s is a loop, never a slow machine. */
    if (!wait_done(&k, 60000))
        fail_msg("maas_client_authenticate did not return: %ld token requests so far",
                 emu_stat(&e, "token_requests"));
    pthread_join(t, NULL);
    assert_int_equal(k.st, MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 1);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static void test_fetch_longer_than_lifetime(void **state)
{
    /* The fetch outlasts the whole 1 s lifetime (counted from the request):
     * the token it brings is still the one to use, not a reason to ask again. */
    static const char *const args[] = { "--token-lifetime", "1", "--token-delay-ms", "1500", NULL };
    maas_client *c;
    struct call k;
    pthread_t t;
    (void)state;
    assert_int_equal(emu_start(&e, args), 0);
    c = client_with(&e, 0, 0, 2, NULL, NULL);
    memset(&k, 0, sizeof k);
    k.c = c;
    assert_int_equal(pthread_create(&t, NULL, do_authenticate, &k), 0);
    if (!wait_done(&k, 30000))
        fail_msg("maas_client_authenticate did not return: %ld token requests so far",
                 emu_stat(&e, "token_requests"));
    pthread_join(t, NULL);
    assert_int_equal(k.st, MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 1);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static void test_tiny_expires_in_has_a_floor(void **state)
{
    /* expires_in 1e-9: taken as the 1 s floor, refreshed after 0.75 s. */
    static const char *const args[] = { "--token-expires-in", "1e-9", NULL };
    maas_client *c;
    (void)state;
    assert_int_equal(emu_start(&e, args), 0);
    c = client_with(&e, 1, 0, 0, NULL, NULL);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    walk_to(500);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    walk_to(749);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 1);
    assert_true(maas_client_counter(c, MAAS_COUNTER_TOKEN_EXPIRES_IN_MS) > 0);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static void test_one_token_request_per_second(void **state)
{
    /* Every generation is refused with 401, every token request of a fetch
     * with 503 once: the server asks for a new token at every turn. The
     * client sends them at least 1 s apart all the same. */
    maas_client *c;
    maas_request r;
    int64_t t0, elapsed;
    long n;
    int i;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 0, 0, 2, NULL, NULL);
    request_init(&r, "Tell me a joke");
    t0 = maas_now_ms();
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_fault(&e, "/v1/maas/generatestream", "status=401", 100), 200);
    assert_int_equal(emu_fault(&e, "/oauth2/token", "status=503", 2), 200);
    for (i = 0; i < 3; i++)
        assert_int_equal(maas_generate(c, &r, NULL, NULL, NULL), MAAS_ERR_UNAUTHENTICATED);
    elapsed = maas_now_ms() - t0;
    n = emu_stat(&e, "token_requests");
    /* 1 + 3 replays + 2 retries of the first replay's fetch. */
    assert_int_equal(n, 6);
    /* n requests at least 1 s apart take at least n - 1 seconds. */
    if (elapsed < (n - 1) * 1000)
        fail_msg("%ld token requests in %lld ms", n, (long long)elapsed);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

/* ---- item 8: a failed refresh serves the cached token ---------------------- */

/* Until the rate limit would let a token request go (real time). */
static void wait_rate_limit(maas_client *c)
{
    struct timespec ts = { 0, 10 * 1000000L };
    int64_t last;
    pthread_mutex_lock(&c->auth.lock);
    last = c->auth.last_request_at;
    pthread_mutex_unlock(&c->auth.lock);
    while (maas_now_ms() <= last + MAAS_TOKEN_REQUEST_INTERVAL_MS)
        nanosleep(&ts, NULL);
}

struct warnings {
    pthread_mutex_t lock;
    int refresh_failed;
};

static void on_log(maas_log_level level, const char *message, void *payload)
{
    struct warnings *w = payload;
    if (level == MAAS_LOG_WARN && strstr(message, "using the cached token")) {
        pthread_mutex_lock(&w->lock);
        w->refresh_failed++;
        pthread_mutex_unlock(&w->lock);
    }
}

static void test_failed_refresh_serves_cached_token(void **state)
{
    maas_client *c;
    struct warnings w = { PTHREAD_MUTEX_INITIALIZER, 0 };
    int64_t end;
    uint64_t gen;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 0, on_log, &w);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    gen = c->auth.generation;
    assert_int_equal(emu_fault(&e, "/oauth2/token", "status=503", 1000), 200);
    /* Inside the refresh window (3300 s of 3600): the refresh fails, the
     * cached token is served, with a warning. */
    walk_to(3300 * 1000);
    /* Within a second of the last request the rate limit holds the refresh
     * back, and the cached token is served meanwhile. */
    end = maas_now_ms() + 20000;
    while (emu_stat(&e, "token_requests") < 2 && maas_now_ms() < end)
        assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    assert_int_equal(w.refresh_failed, 1);
    /* Not on every call: once the rate limit would allow a request, the
     * back-off (1 s on the cache's clock) still serves the cached token. */
    wait_rate_limit(c);
    walk_to(3300 * 1000 + 999);
    for (int i = 0; i < 20; i++)
        assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    /* After the back-off (1 s, then 2 s) it tries again, at most once a second. */
    walk_to(3300 * 1000 + 1000);
    end = maas_now_ms() + 20000;
    while (emu_stat(&e, "token_requests") < 3 && maas_now_ms() < end)
        assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 3);
    assert_int_equal(w.refresh_failed, 2);
    wait_rate_limit(c);
    walk_to(3300 * 1000 + 2999);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 3);
    assert_int_equal(c->auth.generation, gen);
    /* The endpoint is back: the next refresh installs a new token. */
    assert_int_equal(emu_post(&e, "/emulator/reset", NULL), 200);
    walk_to(3300 * 1000 + 3000);
    end = maas_now_ms() + 20000;
    while (c->auth.generation == gen && maas_now_ms() < end)
        assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(c->auth.generation, gen + 1);
    /* Once the cached token has expired, a failed fetch is the call's failure. */
    assert_int_equal(emu_fault(&e, "/oauth2/token", "status=503", 1000), 200);
    walk_to(3300 * 1000 + 3000 + 3600 * 1000);
    assert_int_equal(maas_client_authenticate(c), MAAS_ERR_UNAVAILABLE);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

/* ---- item 9: one fetch per outage, shared by every waiter -------------------- */

static void test_failed_fetch_is_shared(void **state)
{
    enum { N = 8 };
    maas_client *c;
    struct call k[N];
    pthread_t t[N];
    int i;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 0, NULL, NULL);
    /* A token cached, then expired: the case where each waiter used to
     * start a fetch of its own after the first one failed. */
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    walk_to(3600 * 1000);
    assert_int_equal(emu_fault(&e, "/oauth2/token", "status=503", 100), 200);
    assert_int_equal(emu_fault(&e, "/oauth2/token", "first-byte-delay=3000", 100), 200);
    memset(k, 0, sizeof k);
    for (i = 0; i < N; i++)
        k[i].c = c;
    assert_int_equal(pthread_create(&t[0], NULL, do_authenticate, &k[0]), 0);
    assert_int_equal(emu_wait_stat(&e, "token_requests", 2, 10000), 2);
    for (i = 1; i < N; i++)
        assert_int_equal(pthread_create(&t[i], NULL, do_authenticate, &k[i]), 0);
    assert_true(wait_auth(c, waiters_are, N - 1, 10000));
    for (i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(k[i].st, MAAS_ERR_UNAVAILABLE);
    }
    /* The first authentication and one failed request for all eight. */
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

/* ---- the lock of the cache is not held during a fetch ------------------------ */

static void test_cache_lock_free_during_fetch(void **state)
{
    maas_client *c;
    maas_request r;
    struct call k1, k2;
    pthread_t t1, t2;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 0, NULL, NULL);
    memset(&k1, 0, sizeof k1);
    memset(&k2, 0, sizeof k2);
    k2.c = c;
    request_init(&r, "Tell me a joke");
    assert_int_equal(maas_stream_open(&k1.s, c, &r), MAAS_OK);
    /* Inside the refresh window (3300 s of 3600), past the rate limit: k1's
     * first attempt refreshes, and the refresh takes 30 s. */
    walk_to(3300 * 1000);
    wait_rate_limit(c);
    assert_int_equal(emu_fault(&e, "/oauth2/token", "first-byte-delay=30000", 1), 200);
    assert_int_equal(pthread_create(&t1, NULL, do_run, &k1), 0);
    assert_int_equal(emu_wait_stat(&e, "token_requests", 2, 10000), 2);
    /* Meanwhile another thread is served the still-valid token at once: a
     * lock held for the request would keep it for the 30 s. */
    assert_int_equal(pthread_create(&t2, NULL, do_authenticate, &k2), 0);
    if (!wait_done(&k2, 5000))
        fail_msg("a valid token was not served while another thread fetched");
    pthread_join(t2, NULL);
    assert_int_equal(k2.st, MAAS_OK);
    assert_false(atomic_load(&k1.done));
    maas_stream_cancel(k1.s);
    pthread_join(t1, NULL);
    assert_int_equal(k1.st, MAAS_ERR_CANCELLED);
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    maas_stream_free(k1.s);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

/* ---- a 401 drops the token only if it is still the refused one -------------- */

static void test_reject_drops_only_the_refused_token(void **state)
{
    maas_client *c;
    uint64_t refused, current;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 0, NULL, NULL);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    refused = c->auth.generation;
    /* Another thread has replaced the token since (here: it expired). */
    walk_to(3600 * 1000);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    current = c->auth.generation;
    assert_true(current != refused);
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    /* The 401 to the old token leaves the new one in place. */
    maas_auth_reject(c, refused);
    assert_non_null(c->auth.header);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(c->auth.generation, current);
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    /* A 401 to the current token drops it. */
    maas_auth_reject(c, current);
    assert_null(c->auth.header);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

/* ---- no log line is written under the cache's lock ------------------------- */

struct lock_probe {
    maas_client *c;
    int lines, under_lock;
};

static void probe_lock(maas_log_level level, const char *message, void *payload)
{
    struct lock_probe *p = payload;
    (void)level;
    (void)message;
    /* One thread only in this test: a busy lock is this thread's own. */
    if (!p->c)
        return;
    p->lines++;
    if (pthread_mutex_trylock(&p->c->auth.lock) == 0)
        pthread_mutex_unlock(&p->c->auth.lock);
    else
        p->under_lock++;
}

static void test_no_log_line_under_the_cache_lock(void **state)
{
    maas_client *c;
    struct lock_probe p = { NULL, 0, 0 };
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 0, probe_lock, &p);
    p.c = c;
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    /* A failed refresh in the refresh window: the cached token is served,
     * with a warning, the one line the cache itself writes at this level. */
    assert_int_equal(emu_fault(&e, "/oauth2/token", "status=503", 1), 200);
    walk_to(3300 * 1000);
    wait_rate_limit(c);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    assert_true(p.lines >= 1);
    assert_int_equal(p.under_lock, 0);
    p.c = NULL;
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

/* ---- item 10: cancellation and deadlines reach into a token fetch ---------- */

/* Open a stream while the token is fresh, then expire it: its first attempt fetches. */
static maas_stream *open_then_expire(maas_client *c)
{
    maas_request r;
    maas_stream *s = NULL;
    request_init(&r, "Tell me a joke");
    assert_int_equal(maas_stream_open(&s, c, &r), MAAS_OK);
    walk_to(3600 * 1000);
    return s;
}

/* ---- a fetch its own thread gave up is not the waiters' failure ------------- */

static void test_waiter_fetches_after_abandoned_fetch(void **state)
{
    maas_client *c;
    struct call k1, k2;
    pthread_t t1, t2;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 0, NULL, NULL);
    memset(&k1, 0, sizeof k1);
    memset(&k2, 0, sizeof k2);
    k2.c = c;
    k1.s = open_then_expire(c);
    assert_int_equal(emu_fault(&e, "/oauth2/token", "first-byte-delay=30000", 1), 200);
    /* k1 fetches (30 s), k2 waits for that fetch; then k1 is cancelled. */
    assert_int_equal(pthread_create(&t1, NULL, do_run, &k1), 0);
    assert_int_equal(emu_wait_stat(&e, "token_requests", 2, 10000), 2);
    assert_int_equal(pthread_create(&t2, NULL, do_authenticate, &k2), 0);
    assert_true(wait_auth(c, waiters_are, 1, 10000));
    maas_stream_cancel(k1.s);
    pthread_join(t1, NULL);
    assert_int_equal(k1.st, MAAS_ERR_CANCELLED);
    /* The waiter, not cancelled, starts the next fetch and gets a token. */
    assert_true(wait_done(&k2, 20000));
    pthread_join(t2, NULL);
    assert_int_equal(k2.st, MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 3);
    maas_stream_free(k1.s);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static void test_cancel_during_own_fetch(void **state)
{
    maas_client *c;
    struct call k;
    pthread_t t;
    int64_t cancelled_at;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 2, NULL, NULL);
    memset(&k, 0, sizeof k);
    k.s = open_then_expire(c);
    /* The fetch takes 30 s: a cancel must not wait for it. */
    assert_int_equal(emu_fault(&e, "/oauth2/token", "first-byte-delay=30000", 1), 200);
    assert_int_equal(pthread_create(&t, NULL, do_run, &k), 0);
    assert_int_equal(emu_wait_stat(&e, "token_requests", 2, 10000), 2);
    cancelled_at = maas_now_ms();
    maas_stream_cancel(k.s);
    pthread_join(t, NULL);
    assert_int_equal(k.st, MAAS_ERR_CANCELLED);
    if (k.ended - cancelled_at > 5000)
        fail_msg("cancelled during a 30 s token fetch, returned after %lld ms",
                 (long long)(k.ended - cancelled_at));
    assert_int_equal(emu_stat(&e, "generate_requests"), 0);
    maas_stream_free(k.s);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static int fetching(maas_auth *a, long want)
{
    return a->fetching == want;
}

static void test_cancel_while_waiting_for_another_fetch(void **state)
{
    maas_client *c;
    struct call k1, k2;
    pthread_t t1, t2;
    maas_request r;
    int64_t cancelled_at;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 0, NULL, NULL);
    memset(&k1, 0, sizeof k1);
    memset(&k2, 0, sizeof k2);
    request_init(&r, "Tell me a joke");
    assert_int_equal(maas_stream_open(&k2.s, c, &r), MAAS_OK);
    k1.s = open_then_expire(c);
    assert_int_equal(emu_fault(&e, "/oauth2/token", "first-byte-delay=30000", 1), 200);
    /* k1 fetches (30 s), k2 waits for that fetch. */
    assert_int_equal(pthread_create(&t1, NULL, do_run, &k1), 0);
    assert_int_equal(emu_wait_stat(&e, "token_requests", 2, 10000), 2);
    assert_int_equal(pthread_create(&t2, NULL, do_run, &k2), 0);
    assert_true(wait_auth(c, waiters_are, 1, 10000));
    cancelled_at = maas_now_ms();
    maas_stream_cancel(k2.s);
    assert_true(wait_done(&k2, 20000));
    pthread_join(t2, NULL);
    assert_int_equal(k2.st, MAAS_ERR_CANCELLED);
    if (k2.ended - cancelled_at > 5000)
        fail_msg("cancelled while waiting for another thread's fetch, returned after %lld ms",
                 (long long)(k2.ended - cancelled_at));
    /* The other thread's fetch goes on: the cancel was not its own. */
    assert_true(wait_auth(c, fetching, 1, 0));
    assert_false(atomic_load(&k1.done));
    cancelled_at = maas_now_ms();
    maas_stream_cancel(k1.s);
    pthread_join(t1, NULL);
    assert_int_equal(k1.st, MAAS_ERR_CANCELLED);
    assert_true(k1.ended - cancelled_at < 5000);
    maas_stream_free(k1.s);
    maas_stream_free(k2.s);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static void test_cancel_during_fetch_backoff(void **state)
{
    maas_client *c;
    struct call k;
    pthread_t t;
    int64_t cancelled_at;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 2, NULL, NULL);
    memset(&k, 0, sizeof k);
    k.s = open_then_expire(c);
    /* A 503 asking for 30 s before the fetch's next attempt. */
    assert_int_equal(emu_fault(&e, "/oauth2/token", "status=503", 1), 200);
    assert_int_equal(emu_fault(&e, "/oauth2/token", "retry-after=30", 1), 200);
    assert_int_equal(pthread_create(&t, NULL, do_run, &k), 0);
    assert_int_equal(emu_wait_stat(&e, "token_requests", 2, 10000), 2);
    /* The answer reached the client once its retry is counted. */
    {
        int64_t end = maas_now_ms() + 10000;
        struct timespec ts = { 0, 2 * 1000000L };
        while (maas_client_counter(c, MAAS_COUNTER_RETRIES) < 1 && maas_now_ms() < end)
            nanosleep(&ts, NULL);
    }
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_RETRIES), 1);
    cancelled_at = maas_now_ms();
    maas_stream_cancel(k.s);
    pthread_join(t, NULL);
    assert_int_equal(k.st, MAAS_ERR_CANCELLED);
    if (k.ended - cancelled_at > 5000)
        fail_msg("cancelled in a 30 s backoff of a token fetch, returned after %lld ms",
                 (long long)(k.ended - cancelled_at));
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    maas_stream_free(k.s);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static void test_replay_fetch_within_stream_deadline(void **state)
{
    /* Item 5: the generation answers 401 after 5 s of a 6 s deadline; the
     * replay's token fetch (30 s) gets what is left, about 1 s, not 6 more. */
    maas_client *c;
    maas_request r;
    maas_stream *s = NULL;
    const maas_token *tok;
    int64_t t0, elapsed;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 0, 6000, 2, NULL, NULL);
    request_init(&r, "Tell me a joke");
    assert_int_equal(maas_stream_open(&s, c, &r), MAAS_OK);
    assert_int_equal(emu_fault(&e, "/v1/maas/generatestream", "first-byte-delay=5000", 1), 200);
    assert_int_equal(emu_fault(&e, "/v1/maas/generatestream", "status=401", 1), 200);
    assert_int_equal(emu_fault(&e, "/oauth2/token", "first-byte-delay=30000", 1), 200);
    t0 = maas_now_ms();
    assert_int_equal(maas_stream_next(s, &tok), MAAS_ERR_DEADLINE);
    elapsed = maas_now_ms() - t0;
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS), 1);
    if (elapsed > 9000)
        fail_msg("a 6 s deadline ended after %lld ms", (long long)elapsed);
    maas_stream_free(s);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

/* ---- item 11: the first attempt takes a fresh ticket ----------------------- */

static void test_first_attempt_takes_fresh_ticket(void **state)
{
    maas_client *c;
    maas_stream *s;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_with(&e, 1, 0, 0, NULL, NULL);
    /* Opened with a token that then expires, at the server and in the cache. */
    s = open_then_expire(c);
    assert_int_equal(emu_post(&e, "/emulator/expire-tokens", NULL), 200);
    assert_int_equal(maas_stream_run(s, NULL, NULL, NULL), MAAS_OK);
    /* A new token for the first attempt: no 401, no replay spent. */
    assert_int_equal(maas_stream_details(s)->attempts, 1);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS), 0);
    assert_int_equal(emu_stat(&e, "unauthorized"), 0);
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    maas_stream_free(s);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_fetch_slower_than_lifetime, stop_emulator),
        cmocka_unit_test_teardown(test_fetch_longer_than_lifetime, stop_emulator),
        cmocka_unit_test_teardown(test_tiny_expires_in_has_a_floor, stop_emulator),
        cmocka_unit_test_teardown(test_one_token_request_per_second, stop_emulator),
        cmocka_unit_test_teardown(test_failed_refresh_serves_cached_token, stop_emulator),
        cmocka_unit_test_teardown(test_failed_fetch_is_shared, stop_emulator),
        cmocka_unit_test_teardown(test_cache_lock_free_during_fetch, stop_emulator),
        cmocka_unit_test_teardown(test_reject_drops_only_the_refused_token, stop_emulator),
        cmocka_unit_test_teardown(test_no_log_line_under_the_cache_lock, stop_emulator),
        cmocka_unit_test_teardown(test_waiter_fetches_after_abandoned_fetch, stop_emulator),
        cmocka_unit_test_teardown(test_cancel_during_own_fetch, stop_emulator),
        cmocka_unit_test_teardown(test_cancel_while_waiting_for_another_fetch, stop_emulator),
        cmocka_unit_test_teardown(test_cancel_during_fetch_backoff, stop_emulator),
        cmocka_unit_test_teardown(test_replay_fetch_within_stream_deadline, stop_emulator),
        cmocka_unit_test_teardown(test_first_attempt_takes_fresh_ticket, stop_emulator),
    };
    return cmocka_run_group_tests_name("tokens", tests, NULL, NULL);
}
