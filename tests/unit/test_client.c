/* Unit tests of client configuration, errors and logging: no network involved. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "clientdata.h"

static void clear_env(void)
{
    static const char *const vars[] = { "MAAS_CLIENT_ID", "MAAS_CLIENT_SECRET", "MAAS_CLOUD_ACCOUNT",
                                        "MAAS_API_BASE_URL", "MAAS_AUTH_URL", "MAAS_TOKEN",
                                        "MAAS_CA_BUNDLE", "MAAS_LOG", "MAAS_HTTP_VERSION" };
    size_t i;
    for (i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

static void test_version(void **state)
{
    (void)state;
    assert_string_equal(maas_version(), MAAS_VERSION_STRING);
    assert_true(MAAS_VERSION_NUM == ((MAAS_VERSION_MAJOR << 16) | (MAAS_VERSION_MINOR << 8) |
                                     MAAS_VERSION_PATCH));
}

static void test_options_init(void **state)
{
    maas_client_options o;
    (void)state;
    memset(&o, 0x5a, sizeof o);
    assert_int_equal(maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION), MAAS_OK);
    assert_int_equal(o.version, MAAS_CLIENT_OPTIONS_VERSION);
    assert_null(o.client_id);
    assert_int_equal(o.connect_timeout_ms, 0);
    assert_int_equal(o.insecure_skip_tls_verify, 0);
    assert_int_equal(maas_client_options_init(&o, 0), MAAS_ERR_OPTIONS_VERSION);
    assert_int_equal(maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION + 1),
                     MAAS_ERR_OPTIONS_VERSION);
    assert_non_null(strstr(maas_last_error()->message, "version"));
    assert_int_equal(maas_client_options_init(NULL, 1), MAAS_ERR_INVALID_ARGUMENT);
}

static void test_static_initialisers(void **state)
{
    maas_client_options o = MAAS_CLIENT_OPTIONS_INIT;
    maas_request r = MAAS_REQUEST_INIT;
    (void)state;
    assert_int_equal(o.version, MAAS_CLIENT_OPTIONS_VERSION);
    assert_null(o.token);
    assert_int_equal(r.version, MAAS_REQUEST_VERSION);
    assert_null(r.prompt);
    assert_true(r.temperature == 0.0);
}

static void test_options_from_env(void **state)
{
    maas_client_options o;
    (void)state;
    clear_env();
    setenv("MAAS_CLIENT_ID", "id", 1);
    setenv("MAAS_CLIENT_SECRET", "secret", 1);
    setenv("MAAS_CLOUD_ACCOUNT", "", 1); /* empty counts as unset */
    setenv("MAAS_API_BASE_URL", "http://127.0.0.1:9/v1/maas", 1);
    setenv("MAAS_LOG", "DEBUG", 1);
    assert_int_equal(maas_client_options_from_env(&o, MAAS_CLIENT_OPTIONS_VERSION), MAAS_OK);
    assert_string_equal(o.client_id, "id");
    assert_string_equal(o.client_secret, "secret");
    assert_null(o.cloud_account);
    assert_string_equal(o.api_base_url, "http://127.0.0.1:9/v1/maas");
    assert_null(o.auth_url);
    assert_null(o.token);
    assert_int_equal(o.log_level, MAAS_LOG_DEBUG);
    assert_int_equal(o.insecure_skip_tls_verify, 0); /* no variable can turn TLS checks off */
    setenv("MAAS_LOG", "warn", 1);
    assert_int_equal(maas_client_options_from_env(&o, MAAS_CLIENT_OPTIONS_VERSION), MAAS_OK);
    assert_int_equal(o.log_level, MAAS_LOG_WARN);
    setenv("MAAS_LOG", "loud", 1);
    assert_int_equal(maas_client_options_from_env(&o, MAAS_CLIENT_OPTIONS_VERSION), MAAS_OK);
    assert_int_equal(o.log_level, MAAS_LOG_OFF);
    assert_int_equal(maas_client_options_from_env(&o, 7), MAAS_ERR_OPTIONS_VERSION);
    /* MAAS_HTTP_VERSION: the three spellings, and anything else left for
     * maas_client_new to refuse by name. */
    assert_int_equal(o.http_version, MAAS_HTTP_AUTO);
    setenv("MAAS_HTTP_VERSION", "1.1", 1);
    assert_int_equal(maas_client_options_from_env(&o, MAAS_CLIENT_OPTIONS_VERSION), MAAS_OK);
    assert_int_equal(o.http_version, MAAS_HTTP_1_1);
    setenv("MAAS_HTTP_VERSION", "2", 1);
    assert_int_equal(maas_client_options_from_env(&o, MAAS_CLIENT_OPTIONS_VERSION), MAAS_OK);
    assert_int_equal(o.http_version, MAAS_HTTP_2);
    setenv("MAAS_HTTP_VERSION", "auto", 1);
    assert_int_equal(maas_client_options_from_env(&o, MAAS_CLIENT_OPTIONS_VERSION), MAAS_OK);
    assert_int_equal(o.http_version, MAAS_HTTP_AUTO);
    setenv("MAAS_HTTP_VERSION", "3", 1);
    setenv("MAAS_CLIENT_ID", "id", 1);
    setenv("MAAS_CLIENT_SECRET", "secret", 1);
    setenv("MAAS_CLOUD_ACCOUNT", "1", 1);
    {
        maas_client *c = NULL;
        assert_int_equal(maas_client_new(&c, NULL), MAAS_ERR_CONFIG);
        assert_null(c);
        assert_non_null(strstr(maas_last_error()->message, "MAAS_HTTP_VERSION"));
    }
    clear_env();
}

static maas_status make(maas_client_options *o, maas_client **c)
{
    *c = (maas_client *)o; /* must be reset to NULL on failure */
    return maas_client_new(c, o);
}

static void base(maas_client_options *o)
{
    maas_client_options_init(o, MAAS_CLIENT_OPTIONS_VERSION);
    o->client_id = "id";
    o->client_secret = "secret";
    o->api_base_url = "http://127.0.0.1:9/v1/maas/";
    o->auth_url = "http://127.0.0.1:9/oauth2/token";
}

static void test_client_new_checks(void **state)
{
    maas_client_options o;
    maas_client *c;
    (void)state;
    clear_env();

    base(&o);
    o.client_secret = NULL;
    assert_int_equal(make(&o, &c), MAAS_ERR_CONFIG);
    assert_null(c);
    assert_non_null(strstr(maas_last_error()->message, "MAAS_CLIENT_SECRET"));

    base(&o);
    o.api_base_url = "ftp://example";
    assert_int_equal(make(&o, &c), MAAS_ERR_CONFIG);
    assert_non_null(strstr(maas_last_error()->message, "api_base_url"));

    base(&o);
    o.cloud_account = "123\n456";
    assert_int_equal(make(&o, &c), MAAS_ERR_CONFIG);
    assert_non_null(strstr(maas_last_error()->message, "cloud_account"));

    base(&o);
    o.client_secret = "s3cr\r\nX-Evil: 1";
    assert_int_equal(make(&o, &c), MAAS_ERR_CONFIG);
    /* The message names the field, never its value. */
    assert_null(strstr(maas_last_error()->message, "s3cr"));

    base(&o);
    o.user_agent_suffix = "x\r\nX-Evil: 1";
    assert_int_equal(make(&o, &c), MAAS_ERR_CONFIG);
    base(&o);
    o.user_agent_suffix = "0123456789012345678901234567890123456789012345678901234567890123456789";
    assert_int_equal(make(&o, &c), MAAS_ERR_CONFIG);

    base(&o);
    o.max_retries = -2;
    assert_int_equal(make(&o, &c), MAAS_ERR_INVALID_ARGUMENT);

    base(&o);
    o.http_version = MAAS_HTTP_2 + 1;
    assert_int_equal(make(&o, &c), MAAS_ERR_CONFIG);
    assert_non_null(strstr(maas_last_error()->message, "http_version"));
    base(&o);
    o.http_version = -1;
    assert_int_equal(make(&o, &c), MAAS_ERR_CONFIG);

    base(&o);
    o.version = 0;
    assert_int_equal(make(&o, &c), MAAS_ERR_OPTIONS_VERSION);

    assert_int_equal(maas_client_new(NULL, &o), MAAS_ERR_INVALID_ARGUMENT);
}

static void test_client_defaults(void **state)
{
    maas_client_options o;
    maas_client *c;
    (void)state;
    base(&o);
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    /* The base URL loses its trailing slash; zero fields take the defaults. */
    assert_string_equal(c->api_base_url, "http://127.0.0.1:9/v1/maas");
    assert_int_equal(c->connect_timeout_ms, MAAS_DEFAULT_CONNECT_TIMEOUT_MS);
    assert_int_equal(c->idle_timeout_ms, MAAS_DEFAULT_IDLE_TIMEOUT_MS);
    assert_int_equal(c->deadline_ms, 0);
    assert_int_equal(c->max_retries, MAAS_DEFAULT_MAX_RETRIES);
    assert_int_equal(c->max_line_bytes, MAAS_DEFAULT_MAX_LINE_BYTES);
    assert_int_equal(c->insecure, 0);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REQUESTS), 0);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_EXPIRES_IN_MS), 0);
    assert_int_equal(maas_client_counter(c, (maas_counter)999), 0);
    maas_client_free(c);

    base(&o);
    o.max_retries = MAAS_RETRIES_OFF;
    o.idle_timeout_ms = -1;
    o.deadline_ms = 2500;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(c->max_retries, 0);
    assert_true(c->idle_timeout_ms < 0);
    assert_int_equal(c->deadline_ms, 2500);
    maas_client_free(c);

    /* A static token needs no client id or secret. */
    maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION);
    o.token = "abc";
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_string_equal(c->auth.header, "Authorization: Bearer abc");
    maas_client_free(c);
    o.token = "Bearer xyz"; /* what the guide's get_auth_token returns, used as is */
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_string_equal(c->auth.header, "Authorization: Bearer xyz");
    maas_client_free(c);

    maas_client_free(NULL);
    maas_free(NULL);
    assert_int_equal(maas_client_counter(NULL, MAAS_COUNTER_RETRIES), 0);
}

static void test_client_from_env(void **state)
{
    maas_client *c = NULL;
    (void)state;
    clear_env();
    assert_int_equal(maas_client_new(&c, NULL), MAAS_ERR_CONFIG);
    setenv("MAAS_TOKEN", "tok", 1);
    setenv("MAAS_API_BASE_URL", "http://127.0.0.1:9/x", 1);
    assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
    assert_string_equal(c->api_base_url, "http://127.0.0.1:9/x");
    assert_string_equal(c->auth_url, MAAS_DEFAULT_AUTH_URL);
    maas_client_free(c);
    clear_env();
}

struct log_capture {
    int lines;
    int leaked;
};

static void capture(maas_log_level level, const char *message, void *payload)
{
    struct log_capture *lc = payload;
    (void)level;
    lc->lines++;
    if (strstr(message, "top-secret-value") || strchr(message, '\n'))
        lc->leaked++;
}

static void test_log_callback(void **state)
{
    maas_client_options o;
    maas_client *c;
    struct log_capture lc = { 0, 0 };
    (void)state;
    base(&o);
    o.client_secret = "top-secret-value";
    o.log_level = MAAS_LOG_DEBUG;
    o.log_cb = capture;
    o.log_payload = &lc;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    maas_client_free(c);
    assert_true(lc.lines >= 1);
    assert_int_equal(lc.leaked, 0);
}

static void *fail_in_thread(void *arg)
{
    (void)arg;
    maas_client_options_init(NULL, 1);
    return (void *)maas_last_error();
}

static void test_last_error_is_per_thread(void **state)
{
    pthread_t t;
    void *theirs;
    maas_client_options o;
    (void)state;
    assert_int_equal(maas_client_options_init(&o, 99), MAAS_ERR_OPTIONS_VERSION);
    assert_int_equal(pthread_create(&t, NULL, fail_in_thread, NULL), 0);
    pthread_join(t, &theirs);
    /* The other thread's failure did not overwrite this thread's record. */
    assert_int_equal(maas_last_error()->status, MAAS_ERR_OPTIONS_VERSION);
    assert_ptr_not_equal(theirs, maas_last_error());
}

/* The service compares temperature as a float32: what rounds to 1.0f is refused before
 * anything is sent; what stays below it passes the check and goes on to the (refused)
 * connection. */
static maas_status generate_with_temperature(double temperature)
{
    maas_client_options o;
    maas_client *c = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    maas_status st;
    clear_env();
    assert_int_equal(maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION), MAAS_OK);
    o.token = "static-token";
    o.cloud_account = "123456789012";
    o.api_base_url = "http://127.0.0.1:1/v1";
    o.auth_url = "http://127.0.0.1:1/token";
    o.max_retries = 0;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    r.model = "m";
    r.prompt = "Tell me a joke";
    r.max_new_tokens = 5;
    r.temperature = temperature;
    st = maas_generate(c, &r, NULL, NULL, NULL);
    maas_client_free(c);
    return st;
}

static void test_temperature_as_float32(void **state)
{
    (void)state;
    assert_int_equal(generate_with_temperature(0.99999999), MAAS_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(maas_last_error()->message, "temperature"));
    assert_int_equal(generate_with_temperature(1.0), MAAS_ERR_INVALID_ARGUMENT);
    assert_int_equal(generate_with_temperature(-0.1), MAAS_ERR_INVALID_ARGUMENT);
    /* 0.9999999 is 0.99999988f: valid, so the call goes on to the network. */
    assert_int_not_equal(generate_with_temperature(0.9999999), MAAS_ERR_INVALID_ARGUMENT);
    assert_int_not_equal(generate_with_temperature(0.0), MAAS_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_options_init),
        cmocka_unit_test(test_static_initialisers),
        cmocka_unit_test(test_options_from_env),
        cmocka_unit_test(test_client_new_checks),
        cmocka_unit_test(test_client_defaults),
        cmocka_unit_test(test_client_from_env),
        cmocka_unit_test(test_log_callback),
        cmocka_unit_test(test_last_error_is_per_thread),
        cmocka_unit_test(test_temperature_as_float32),
    };
    return cmocka_run_group_tests_name("client", tests, NULL, NULL);
}
