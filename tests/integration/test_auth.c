/*
 * Integration: the token cache against the emulator's token endpoint, with
 * the cache's clock replaced so that lifetimes are walked exactly, without
 * waiting for them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <pthread.h>
#include <time.h>

#include "auth.h"
#include "clientdata.h"
#include "clock.h"
#include "harness.h"

static int64_t fake_ms;

static int64_t fake_now(void *payload)
{
    (void)payload;
    return fake_ms;
}

static maas_client *client_on(const emu *e)
{
    maas_client_options o;
    maas_client *c = NULL;
    emu_options(e, &o);
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    c->auth.now = fake_now;
    fake_ms = 1000000;
    return c;
}

/* Token requests the client has made after authenticating at `at_ms` past the start. */
static uint64_t requests_at(maas_client *c, int64_t at_ms)
{
    struct timespec ts = { 0, 10 * 1000000L };
    int64_t last;
    /* The cache's clock is walked; the rate limit (one token request a
     * second) runs on the real one: let it open, so that only the walked
     * clock decides whether a request is due. */
    pthread_mutex_lock(&c->auth.lock);
    last = c->auth.last_request_at;
    pthread_mutex_unlock(&c->auth.lock);
    while (last && maas_now_ms() <= last + MAAS_TOKEN_REQUEST_INTERVAL_MS)
        nanosleep(&ts, NULL);
    fake_ms = 1000000 + at_ms;
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    return maas_client_counter(c, MAAS_COUNTER_TOKEN_REQUESTS);
}

static void test_one_hour_token(void **state)
{
    emu e;
    maas_client *c;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_on(&e);
    assert_int_equal(requests_at(c, 0), 1);
    /* expires_in 3600 s, refreshed 5 minutes ahead: at 3300 s. */
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_EXPIRES_IN_MS), 3300 * 1000);
    assert_int_equal(requests_at(c, 1), 1);
    assert_int_equal(requests_at(c, 3300 * 1000 - 1), 1);
    assert_int_equal(requests_at(c, 3300 * 1000), 2);
    /* The new token counts its lifetime from its own request. */
    assert_int_equal(requests_at(c, 6600 * 1000 - 1), 2);
    assert_int_equal(requests_at(c, 6600 * 1000), 3);
    assert_int_equal(emu_stat(&e, "token_requests"), 3);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static void test_short_lifetime(void **state)
{
    static const char *const args[] = { "--token-lifetime", "2", NULL };
    emu e;
    maas_client *c;
    (void)state;
    assert_int_equal(emu_start(&e, args), 0);
    c = client_on(&e);
    /* A 2 s token: 5 minutes of skew would refresh it at once; a quarter (0.5 s) is kept. */
    assert_int_equal(requests_at(c, 0), 1);
    assert_int_equal(requests_at(c, 1499), 1);
    assert_int_equal(requests_at(c, 1500), 2);
    /* Ten lifetimes, one request each. */
    for (int i = 1; i <= 10; i++)
        assert_int_equal(requests_at(c, 1500 + i * 1500), (uint64_t)(2 + i));
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static void test_failed_fetch_is_reported_and_retried_later(void **state)
{
    emu e;
    maas_client *c;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_on(&e);
    c->max_retries = 0;
    assert_int_equal(emu_fault(&e, "/oauth2/token", "status=503", 1), 200);
    assert_int_equal(maas_client_authenticate(c), MAAS_ERR_UNAVAILABLE);
    assert_int_equal(maas_last_error()->http_status, 503);
    /* No token was cached from the failure: the next call asks again, and succeeds. */
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

static void test_garbage_token_answer(void **state)
{
    emu e;
    maas_client *c;
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    c = client_on(&e);
    /* The token endpoint cut mid-answer: a network failure, retried, then fine. */
    assert_int_equal(emu_fault(&e, "/oauth2/token", "drop-after=5", 1), 200);
    c->retry_base_ms = 1;
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_stat(&e, "token_requests"), 2);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

/*
 * The token endpoint and the API are two listeners, as the service has two
 * hosts: a token URL aimed at the API's port, or an API URL aimed at the
 * token endpoint's, is a 404, so no test can pass by using the wrong one.
 */
static void test_two_listeners(void **state)
{
    emu e;
    maas_client_options o;
    maas_client *c = NULL;
    maas_model_list *l = NULL;
    char wrong_auth[300], wrong_api[300];
    (void)state;
    assert_int_equal(emu_start(&e, NULL), 0);
    assert_string_not_equal(e.api, e.auth);

    snprintf(wrong_auth, sizeof wrong_auth, "%s/oauth2/token", e.root);
    emu_options(&e, &o);
    o.auth_url = wrong_auth;
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_not_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(maas_last_error()->http_status, 404);
    maas_client_free(c);
    assert_int_equal(emu_stat(&e, "token_requests"), 0);

    /* The API's paths on the token endpoint's port. */
    snprintf(wrong_api, sizeof wrong_api, "%.*s/v1/maas",
             (int)(strstr(e.auth, "/oauth2/token") - e.auth), e.auth);
    emu_options(&e, &o);
    o.api_base_url = wrong_api;
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_not_equal(maas_models_list(&l, c), MAAS_OK);
    assert_int_equal(maas_last_error()->http_status, 404);
    assert_int_equal(emu_stat(&e, "token_requests"), 1);
    assert_int_equal(emu_stat(&e, "models_requests"), 0);
    maas_client_free(c);
    assert_int_equal(emu_stop(&e), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_hour_token),
        cmocka_unit_test(test_short_lifetime),
        cmocka_unit_test(test_failed_fetch_is_reported_and_retried_later),
        cmocka_unit_test(test_garbage_token_answer),
        cmocka_unit_test(test_two_listeners),
    };
    return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
