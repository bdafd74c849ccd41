/*
 * Integration: per-stream timings in maas_details and the rate-limit
 * headers (X-RateLimit-Limit/Remaining/Reset, Retry-After) of an answer,
 * read from a stream's details and from maas_error, against maas-emulator's
 * `delay`, `first-byte-delay`, `rate-limit` and `retry-after` faults.
 *
 * Timing assertions are lower bounds the server's own pauses impose (a
 * loaded machine only makes them larger) and orderings, never "within N ms".
 */
#include <math.h>
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

static emu E;

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"
#define MODELS_PATH "/v1/maas/models"

static maas_client *client(void)
{
    maas_client_options o;
    maas_client *c = NULL;
    emu_options(&E, &o);
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    return c;
}

static void finish(maas_client *c)
{
    maas_client_free(c);
    assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
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

static int reset(void **state)
{
    (void)state;
    return emu_post(&E, "/emulator/reset", NULL) == 200 ? 0 : -1;
}

struct seen {
    size_t tokens;
    int got;
    maas_details d;
};

static int count_token(const maas_token *t, void *p)
{
    (void)t;
    ((struct seen *)p)->tokens++;
    return 0;
}

static int keep_details(const maas_details *d, void *p)
{
    struct seen *s = p;
    s->d = *d;
    s->got = 1;
    return 0;
}

static maas_status run(maas_client *c, const char *prompt, int max_tokens, struct seen *s)
{
    maas_request r = MAAS_REQUEST_INIT;
    r.model = MISTRAL;
    r.prompt = prompt;
    r.max_new_tokens = max_tokens;
    memset(s, 0, sizeof *s);
    return maas_generate(c, &r, count_token, keep_details, s);
}

/* ---- timings ------------------------------------------------------------------ */

/*
 * 5 tokens 200 ms apart after a 300 ms wait for the answer. The server may
 * hold a token back until its next write (a chunk goes out with the next
 * one), so the client sees the first token up to one pause late: the bounds
 * allow that one pause and no more.
 */
static void test_timings_follow_the_server(void **state)
{
    maas_client *c = client();
    struct seen s;
    (void)state;
    assert_int_equal(run(c, "Tell me a joke [[fault:delay=200]] [[fault:first-byte-delay=300]]"
                            " [[fault:tokens=5]]", 0, &s), MAAS_OK);
    assert_true(s.got);
    assert_true(s.tokens >= 5);
    if (getenv("MAAS_TEST_VERBOSE"))
        print_message("%zu tokens, ttft %.3f s, total %.3f s, %.2f tokens/s\n", s.tokens,
                      s.d.time_to_first_token, s.d.total_time, s.d.tokens_per_second);
    /* The first token cannot come before the answer does. The emulator's
     * timers count whole milliseconds from a truncated clock, so its 300 ms
     * may end up to 1 ms early: allow that, and no more. */
    if (!(s.d.time_to_first_token >= 0.3 - 0.002))
        fail_msg("time to first token %.3f s, total %.3f s, %zu tokens: the server waited 0.3 s",
                 s.d.time_to_first_token, s.d.total_time, s.tokens);
    /* The final message follows the answer by (tokens - 1) pauses. */
    assert_true(s.d.total_time >= 0.3 + 0.2 * (double)(s.tokens - 1) - 0.01);
    /* At least (tokens - 2) pauses separate the first token seen from the last. */
    assert_true(s.d.total_time - s.d.time_to_first_token >= 0.2 * (double)(s.tokens - 2) - 0.01);
    /* So the rate is bounded above, and there is one. */
    assert_true(s.d.tokens_per_second > 0.0);
    assert_true(s.d.tokens_per_second <=
                (double)(s.tokens - 1) / (0.2 * (double)(s.tokens - 2)) * 1.02);
    /* The rate is what the two times say. */
    assert_true(fabs(s.d.tokens_per_second * (s.d.total_time - s.d.time_to_first_token) -
                     (double)(s.tokens - 1)) < 1e-6 * (double)s.tokens + 1e-9);
    finish(c);
}

/* A generation of one token (the final message's): TTFT is the total, no rate. */
static void test_timings_single_token(void **state)
{
    maas_client *c = client();
    struct seen s;
    (void)state;
    assert_int_equal(run(c, "Tell me a joke [[fault:first-byte-delay=200]]", 1, &s), MAAS_OK);
    assert_int_equal(s.tokens, 1);
    if (!(s.d.time_to_first_token >= 0.2 - 0.002)) /* the emulator's whole-ms timers */
        fail_msg("time to first token %.3f s, total %.3f s: the server waited 0.2 s",
                 s.d.time_to_first_token, s.d.total_time);
    assert_true(s.d.total_time >= s.d.time_to_first_token);
    assert_true(s.d.tokens_per_second == 0.0);
    finish(c);
}

/* The pull iterator and the details it hands out carry the same fields. */
static void test_timings_pull_iterator(void **state)
{
    maas_client *c = client();
    maas_stream *st = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    const maas_token *t;
    const maas_details *d;
    maas_status rc;
    size_t n = 0;
    (void)state;
    r.model = MISTRAL;
    r.prompt = "Tell me a joke [[fault:delay=100]] [[fault:tokens=3]]";
    assert_int_equal(maas_stream_open(&st, c, &r), MAAS_OK);
    while ((rc = maas_stream_next(st, &t)) == MAAS_OK)
        n++;
    assert_int_equal(rc, MAAS_DONE);
    d = maas_stream_details(st);
    assert_non_null(d);
    assert_true(n >= 3);
    assert_true(d->time_to_first_token >= 0.0);
    assert_true(d->total_time >= 0.1 * (double)(n - 1) - 0.01);
    assert_true(d->total_time - d->time_to_first_token >= 0.1 * (double)(n - 2) - 0.01);
    assert_true(d->tokens_per_second > 0.0 &&
                d->tokens_per_second <= (double)(n - 1) / (0.1 * (double)(n - 2)) * 1.02);
    maas_stream_free(st);
    finish(c);
}

/* ---- rate-limit headers ------------------------------------------------------- */

static void test_rate_limit_in_details(void **state)
{
    maas_client *c = client();
    struct seen s;
    (void)state;
    assert_int_equal(run(c, "Tell me a joke [[fault:rate-limit=100,97,30]] [[fault:retry-after=4]]",
                         5, &s), MAAS_OK);
    assert_int_equal(s.d.rate_limit_limit, 100);
    assert_int_equal(s.d.rate_limit_remaining, 97);
    assert_true(fabs(s.d.rate_limit_reset - 30.0) < 1e-9);
    assert_true(fabs(s.d.retry_after - 4.0) < 1e-9);
    finish(c);
}

static void test_no_rate_limit_headers(void **state)
{
    maas_client *c = client();
    struct seen s;
    (void)state;
    assert_int_equal(run(c, "Tell me a joke", 5, &s), MAAS_OK);
    assert_int_equal(s.d.rate_limit_limit, -1);
    assert_int_equal(s.d.rate_limit_remaining, -1);
    assert_true(s.d.rate_limit_reset == -1.0);
    assert_true(s.d.retry_after == -1.0);
    finish(c);
}

/* A 429 with the headers: maas_last_error() and maas_stream_error() have them. */
static void test_rate_limit_in_error(void **state)
{
    maas_client *c = client();
    struct seen s;
    const maas_error *e;
    maas_stream *st = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    const maas_token *t;
    (void)state;
    assert_int_equal(run(c, "Tell me a joke [[fault:status=429]] [[fault:rate-limit=60,0,1m30s]]"
                            " [[fault:retry-after=12]]", 5, &s), MAAS_ERR_RATE_LIMITED);
    e = maas_last_error();
    assert_int_equal(e->http_status, 429);
    assert_int_equal(e->rate_limit_limit, 60);
    assert_int_equal(e->rate_limit_remaining, 0);
    assert_true(fabs(e->rate_limit_reset - 90.0) < 1e-9);
    assert_true(fabs(e->retry_after - 12.0) < 1e-9);

    r.model = MISTRAL;
    r.prompt = "Tell me a joke [[fault:status=503]] [[fault:rate-limit=10,3,250ms]]";
    assert_int_equal(maas_stream_open(&st, c, &r), MAAS_OK);
    assert_int_equal(maas_stream_next(st, &t), MAAS_ERR_UNAVAILABLE);
    e = maas_stream_error(st);
    assert_non_null(e);
    assert_int_equal(e->rate_limit_limit, 10);
    assert_int_equal(e->rate_limit_remaining, 3);
    assert_true(fabs(e->rate_limit_reset - 0.25) < 1e-9);
    assert_true(e->retry_after == -1.0);
    maas_stream_free(st);
    finish(c);
}

/* A stream cut after its 200: the error still reports the answer's headers. */
static void test_rate_limit_after_cut(void **state)
{
    maas_client *c = client();
    struct seen s;
    const maas_error *e;
    (void)state;
    assert_int_equal(run(c, "Tell me a joke [[fault:truncate-after=2]] [[fault:rate-limit=5,4,]]",
                         10, &s), MAAS_ERR_TRUNCATED);
    e = maas_last_error();
    assert_int_equal(e->rate_limit_limit, 5);
    assert_int_equal(e->rate_limit_remaining, 4);
    assert_true(e->rate_limit_reset == -1.0);
    finish(c);
}

/* The other endpoints' failures (maas_call) report them too. */
static void test_rate_limit_on_models(void **state)
{
    maas_client *c = client();
    maas_model_list *l = NULL;
    const maas_error *e;
    char reset[64];
    (void)state;
    /* A Unix time as the reset: read as seconds from now. */
    snprintf(reset, sizeof reset, "rate-limit=1000,999,%ld", (long)time(NULL) + 3600);
    assert_int_equal(emu_fault(&E, MODELS_PATH, "status=429", 1), 200);
    assert_int_equal(emu_fault(&E, MODELS_PATH, reset, 1), 200);
    assert_int_equal(maas_models_list(&l, c), MAAS_ERR_RATE_LIMITED);
    e = maas_last_error();
    assert_int_equal(e->rate_limit_limit, 1000);
    assert_int_equal(e->rate_limit_remaining, 999);
    assert_true(e->rate_limit_reset > 3500.0 && e->rate_limit_reset <= 3600.0);
    finish(c);
}

/* Values that are not numbers are "absent", never a made-up number. */
static void test_rate_limit_garbage(void **state)
{
    maas_client *c = client();
    struct seen s;
    (void)state;
    assert_int_equal(run(c, "Tell me a joke [[fault:rate-limit=lots,-3,soon]]", 5, &s), MAAS_OK);
    assert_int_equal(s.d.rate_limit_limit, -1);
    assert_int_equal(s.d.rate_limit_remaining, -1);
    assert_true(s.d.rate_limit_reset == -1.0);
    finish(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_timings_follow_the_server, reset),
        cmocka_unit_test_setup(test_timings_single_token, reset),
        cmocka_unit_test_setup(test_timings_pull_iterator, reset),
        cmocka_unit_test_setup(test_rate_limit_in_details, reset),
        cmocka_unit_test_setup(test_no_rate_limit_headers, reset),
        cmocka_unit_test_setup(test_rate_limit_in_error, reset),
        cmocka_unit_test_setup(test_rate_limit_after_cut, reset),
        cmocka_unit_test_setup(test_rate_limit_on_models, reset),
        cmocka_unit_test_setup(test_rate_limit_garbage, reset),
    };
    return cmocka_run_group_tests_name("timings", tests, group_setup, group_teardown);
}
