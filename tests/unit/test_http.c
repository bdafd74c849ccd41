/* Unit tests of the transport's pure parts: status mapping, Retry-After, retry policy. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "call.h"
#include "clientdata.h"
#include "http.h"

static maas_status map(long http, const char *body, maas_endpoint ep, maas_error_rec *e)
{
    maas_error_clear(e);
    return maas_http_status_error(http, body, body ? strlen(body) : 0, ep, e);
}

static void test_wrapped_error_body(void **state)
{
    maas_error_rec e;
    (void)state;
    assert_int_equal(map(400, "{\"error\":{\"code\":3,\"message\":\"invalid GenerateRequestParams."
                              "MaxNewTokens: value must be inside range [1, 2048)\",\"details\":[]}}",
                         MAAS_EP_GENERATE, &e),
                     MAAS_ERR_INVALID_REQUEST);
    assert_int_equal(e.pub.http_status, 400);
    assert_int_equal(e.pub.grpc_code, 3);
    assert_non_null(strstr(e.message, "MaxNewTokens"));
}

static void test_bare_status_body(void **state)
{
    maas_error_rec e;
    (void)state;
    assert_int_equal(map(503, "{\"code\":14,\"message\":\"sorry, we are at maximum capacity. Please "
                              "come back later\",\"details\":[{\"@type\":\"type.googleapis.com/"
                              "google.protobuf.StringValue\",\"value\":\"abc-123\"}]}",
                         MAAS_EP_GENERATE, &e),
                     MAAS_ERR_UNAVAILABLE);
    assert_int_equal(e.pub.grpc_code, 14);
    assert_string_equal(e.request_id, "abc-123");
}

static void test_unknown_product(void **state)
{
    maas_error_rec e;
    (void)state;
    assert_int_equal(map(400, "{\"error\":{\"code\":3,\"message\":\"validation error: can't find "
                              "requested product\",\"details\":[]}}",
                         MAAS_EP_GENERATE, &e),
                     MAAS_ERR_UNKNOWN_MODEL);
    assert_int_equal(map(404, "{\"error\":{\"code\":5,\"message\":\"the requested model is not "
                              "supported\"}}",
                         MAAS_EP_GENERATE, &e),
                     MAAS_ERR_UNKNOWN_MODEL);
    /* A 404 without a gRPC NotFound is a wrong URL, not a wrong model; so is
     * any 404 from the catalogue or the token endpoint. */
    assert_int_equal(map(404, "not found", MAAS_EP_GENERATE, &e), MAAS_ERR_HTTP);
    assert_int_equal(map(404, "{\"code\":5,\"message\":\"Not Found\"}", MAAS_EP_MODELS, &e),
                     MAAS_ERR_HTTP);
    assert_int_equal(map(404, "{\"code\":5,\"message\":\"Not Found\"}", MAAS_EP_TOKEN, &e),
                     MAAS_ERR_HTTP);
    assert_int_equal(map(400, "{\"code\":3,\"message\":\"can't find requested product\"}",
                         MAAS_EP_MODELS, &e),
                     MAAS_ERR_INVALID_REQUEST);
}

static void test_status_classes(void **state)
{
    maas_error_rec e;
    (void)state;
    assert_int_equal(map(401, "{\"code\":16,\"message\":\"x\"}", MAAS_EP_GENERATE, &e), MAAS_ERR_UNAUTHENTICATED);
    assert_int_equal(map(403, "", MAAS_EP_GENERATE, &e), MAAS_ERR_PERMISSION_DENIED);
    assert_int_equal(map(429, "", MAAS_EP_GENERATE, &e), MAAS_ERR_RATE_LIMITED);
    assert_int_equal(map(500, "", MAAS_EP_GENERATE, &e), MAAS_ERR_SERVER);
    assert_string_equal(e.message, "HTTP 500 from the server");
    assert_int_equal(map(502, NULL, MAAS_EP_GENERATE, &e), MAAS_ERR_SERVER);
    assert_int_equal(map(504, "", MAAS_EP_GENERATE, &e), MAAS_ERR_SERVER);
    assert_int_equal(map(415, "Invalid Content-type", MAAS_EP_GENERATE, &e), MAAS_ERR_HTTP);
    assert_string_equal(e.message, "Invalid Content-type");
    assert_int_equal(map(302, "", MAAS_EP_GENERATE, &e), MAAS_ERR_HTTP);
}

static void test_token_endpoint(void **state)
{
    maas_error_rec e;
    (void)state;
    assert_int_equal(map(401, "{\"error\":\"invalid_client\"}", MAAS_EP_TOKEN, &e), MAAS_ERR_AUTH);
    assert_string_equal(e.message, "invalid_client");
    assert_int_equal(map(400, "{\"error\":\"unsupported_grant_type\",\"error_description\":\"no\"}",
                         MAAS_EP_TOKEN, &e),
                     MAAS_ERR_AUTH);
    assert_string_equal(e.message, "unsupported_grant_type: no");
    assert_int_equal(map(503, "", MAAS_EP_TOKEN, &e), MAAS_ERR_UNAVAILABLE);
    assert_non_null(strstr(e.message, "token endpoint"));
}

static void test_retry_after(void **state)
{
    (void)state;
    assert_true(maas_http_parse_retry_after("7", 0) == 7.0);
    assert_true(maas_http_parse_retry_after("0", 0) == 0.0);
    assert_true(maas_http_parse_retry_after("1.5", 0) == 1.5);
    assert_true(maas_http_parse_retry_after("", 0) < 0);
    assert_true(maas_http_parse_retry_after(NULL, 0) < 0);
    assert_true(maas_http_parse_retry_after("7x", 0) < 0);
    assert_true(maas_http_parse_retry_after("-3", 0) < 0);
    assert_true(maas_http_parse_retry_after("soon", 0) < 0);
    /* An HTTP date: 784111777 is Sun, 06 Nov 1994 08:49:37 GMT. */
    assert_true(maas_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 - 30) ==
                30.0);
    assert_true(maas_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 + 30) ==
                0.0);
}

/* X-RateLimit-Reset: delta seconds, a Unix time or a duration; anything else is -1. */
static void test_rate_limit_reset(void **state)
{
    (void)state;
    assert_true(maas_http_parse_rate_reset("30", 1000) == 30.0);
    assert_true(maas_http_parse_rate_reset("0.5", 1000) == 0.5);
    assert_true(maas_http_parse_rate_reset("1700000060", 1700000000) == 60.0);
    assert_true(maas_http_parse_rate_reset("1700000000", 1700000060) == 0.0);
    assert_true(maas_http_parse_rate_reset("6m0s", 0) == 360.0);
    assert_true(maas_http_parse_rate_reset("1h2m3s", 0) == 3723.0);
    assert_true(maas_http_parse_rate_reset("250ms", 0) == 0.25);
    assert_true(maas_http_parse_rate_reset("1.5s", 0) == 1.5);
    assert_true(maas_http_parse_rate_reset("", 0) < 0);
    assert_true(maas_http_parse_rate_reset(NULL, 0) < 0);
    assert_true(maas_http_parse_rate_reset("-1", 0) < 0);
    assert_true(maas_http_parse_rate_reset("soon", 0) < 0);
    assert_true(maas_http_parse_rate_reset("5x", 0) < 0);
    assert_true(maas_http_parse_rate_reset("5m-3s", 0) < 0);
}

/* The header callback: X-RateLimit-* in any case, reset by a new status line. */
static void test_rate_limit_headers(void **state)
{
    maas_http_meta m;
    char h1[] = "x-ratelimit-limit: 100\r\n", h2[] = "X-RATELIMIT-REMAINING:  7 \r\n",
         h3[] = "X-RateLimit-Reset: 12\r\n", h4[] = "X-RateLimit-Limit: many\r\n",
         st[] = "HTTP/1.1 200 OK\r\n";
    (void)state;
    maas_http_meta_init(&m);
    maas_http_header_cb(h1, 1, strlen(h1), &m);
    maas_http_header_cb(h2, 1, strlen(h2), &m);
    maas_http_header_cb(h3, 1, strlen(h3), &m);
    assert_int_equal(m.rl_limit, 100);
    assert_int_equal(m.rl_remaining, 7);
    assert_true(m.rl_reset == 12.0);
    maas_http_header_cb(h4, 1, strlen(h4), &m);
    assert_int_equal(m.rl_limit, -1);
    maas_http_header_cb(st, 1, strlen(st), &m);
    assert_int_equal(m.rl_remaining, -1);
    assert_true(m.rl_reset == -1.0);
}

static void test_retry_worth(void **state)
{
    maas_error_rec e;
    (void)state;
    maas_error_clear(&e);
    e.pub.status = MAAS_ERR_CONNECT;
    assert_true(maas_retry_worth(&e));
    e.pub.status = MAAS_ERR_NETWORK;
    assert_true(maas_retry_worth(&e));
    e.pub.status = MAAS_ERR_SERVER;
    e.pub.http_status = 501;
    assert_false(maas_retry_worth(&e));
    e.pub.http_status = 502;
    assert_true(maas_retry_worth(&e));
    e.pub.status = MAAS_ERR_INVALID_REQUEST;
    assert_false(maas_retry_worth(&e));
    e.pub.status = MAAS_ERR_TLS;
    assert_false(maas_retry_worth(&e));
}

static void test_retry_delay(void **state)
{
    maas_client c;
    maas_error_rec e;
    int i;
    (void)state;
    memset(&c, 0, sizeof c);
    c.max_retries = 5;
    c.retry_base_ms = 500;
    c.retry_max_ms = 8000;
    c.retry_after_max_ms = 30000;
    maas_error_clear(&e);
    for (i = 0; i < 100; i++) {
        /* 0.5 s doubling, capped at 8 s, times a factor in [0.75, 1]. */
        int64_t d1 = maas_retry_delay_ms(&c, 1, &e), d3 = maas_retry_delay_ms(&c, 3, &e),
                d5 = maas_retry_delay_ms(&c, 5, &e);
        assert_true(d1 >= 375 && d1 <= 500);
        assert_true(d3 >= 1500 && d3 <= 2000);
        assert_true(d5 >= 6000 && d5 <= 8000);
    }
    assert_int_equal(maas_retry_delay_ms(&c, 6, &e), -1);
    e.pub.retry_after = 12;
    assert_int_equal(maas_retry_delay_ms(&c, 1, &e), 12000);
    e.pub.retry_after = 3600;
    assert_int_equal(maas_retry_delay_ms(&c, 1, &e), 30000);
    c.max_retries = 0;
    assert_int_equal(maas_retry_delay_ms(&c, 1, &e), -1);
}

static void test_strerror_covers_every_status(void **state)
{
    int s;
    (void)state;
    for (s = MAAS_OK; s <= MAAS_ERR_PROXY; s++) {
        assert_string_not_equal(maas_strerror((maas_status)s), "unknown status");
        assert_string_not_equal(maas_status_name((maas_status)s), "MAAS_ERR_UNKNOWN");
    }
    assert_string_equal(maas_strerror((maas_status)999), "unknown status");
    assert_string_equal(maas_status_name(MAAS_ERR_TRUNCATED), "MAAS_ERR_TRUNCATED");
}

static void test_error_record_cuts_on_utf8_boundary(void **state)
{
    maas_error_rec e;
    char big[2 * MAAS_MSG_TEXT_MAX];
    size_t i;
    (void)state;
    /* "é" is two bytes: a cut at an odd length must not leave half of one. */
    for (i = 0; i + 1 < sizeof big; i += 2) {
        big[i] = (char)0xc3;
        big[i + 1] = (char)0xa9;
    }
    big[sizeof big - 1] = '\0';
    maas_error_clear(&e);
    maas_error_set(&e, MAAS_ERR_SERVER, "x%s", big);
    assert_true(strlen(e.message) < MAAS_MSG_TEXT_MAX);
    assert_int_equal((strlen(e.message) - 1) % 2, 0);
    /* Escaped newlines take two bytes each, so the record fills up inside
     * the text, at a point of its own: still between two characters. */
    maas_error_set(&e, MAAS_ERR_SERVER, "\n\n\n%s", big);
    assert_true(strlen(e.message) < MAAS_MSG_TEXT_MAX);
    assert_memory_equal(e.message, "\\n\\n\\n", 6);
    assert_int_equal(strlen(e.message) % 2, 0);
    assert_int_equal((unsigned char)e.message[strlen(e.message) - 1], 0xa9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wrapped_error_body),
        cmocka_unit_test(test_bare_status_body),
        cmocka_unit_test(test_unknown_product),
        cmocka_unit_test(test_status_classes),
        cmocka_unit_test(test_token_endpoint),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_rate_limit_reset),
        cmocka_unit_test(test_rate_limit_headers),
        cmocka_unit_test(test_retry_worth),
        cmocka_unit_test(test_retry_delay),
        cmocka_unit_test(test_strerror_covers_every_status),
        cmocka_unit_test(test_error_record_cuts_on_utf8_boundary),
    };
    return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
