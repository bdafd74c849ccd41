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
        cmocka_unit_test_setup(test_blocking_calls_over_h2, reset),
        cmocka_unit_test_setup(test_cancel_one_stream_keeps_the_others, reset),
        cmocka_unit_test_setup(test_idle_clock_of_one_stream, reset),
        cmocka_unit_test_setup(test_replay_and_retry_over_h2, reset),
    };
    int rc = cmocka_run_group_tests_name("h2", tests, group_setup, group_teardown);
    if ((F.pid > 0 && front_stop(&F) != 0) || front_failed)
        rc = rc ? rc : 1;
    return emu_suite_result(rc, &E);
}
