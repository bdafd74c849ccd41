/*
 * Integration: every wait has a clock, and each clock fires, in every engine
 * (maas_generate, maas_stream_next, a multi driven by perform/poll, a multi
 * driven by an event loop's socket and timer callbacks), against servers
 * that misbehave the way real ones do: silent after the request or after
 * the headers, blank-line or interim-1xx keep-alives, a slow reader of a
 * large request, a trickled /models body, a token endpoint that never
 * answers, an endless stream. docs/reliability.md lists the clocks.
 *
 * Timing bounds are wide on purpose (a clock of 1 s must fire within 1 s ..
 * 20 s): they hold under valgrind on a loaded machine, and a clock that
 * never fires still fails them. An alarm ends the program if a wait that
 * should be bounded is not.
 */
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engines.h"
#include "harness.h"
#include "rawserver.h"

static emu E;
static maas_model_list *CATALOGUE; /* from the emulator, for requests sent to a raw server */

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"
#define UPPER_MS 20000L            /* "well before": a clock that works ends long before this */
#define WATCHDOG_S 90              /* a blocking call still running then never ends */

static long now_ms(void)
{
    return engine_now_ms();
}

/*
 * A call that no clock ends would hang the suite: the watchdog ends the
 * program instead, saying which call it was.
 */
static const char *watched = "";

static void watchdog_fired(int sig)
{
    static const char head[] = "\nFAILED: still running after the watchdog's 90 s: ";
    ssize_t w;
    (void)sig;
    w = write(2, head, sizeof head - 1);
    w = write(2, watched, strlen(watched));
    w = write(2, "\n", 1);
    (void)w;
    _exit(3);
}

static void watch(const char *what)
{
    watched = what;
    signal(SIGALRM, watchdog_fired);
    alarm(WATCHDOG_S);
}

static void unwatch(void)
{
    alarm(0);
}

/* ---- the engines (engines.c) ------------------------------------------------------------- */

/* One generation through engine `e`, under the watchdog. */
static void run(enum engine e, maas_client *c, const maas_request *r, struct outcome *o)
{
    watch(engine_name[e]);
    engine_run(e, c, r, NULL, o);
    unwatch();
}

/* The clock fired: its status, its words, not before it and well before UPPER_MS. */
static void expect_clock(enum engine e, const struct outcome *o, maas_status want,
                         const char *words, long clock_ms)
{
    if (o->st != want || !strstr(o->message, words) || o->ms < clock_ms || o->ms > UPPER_MS)
        fail_msg("%s: %s \"%s\" after %ld ms; expected %s \"...%s...\" within %ld .. %ld ms",
                 engine_name[e], maas_status_name(o->st), o->message, o->ms,
                 maas_status_name(want), words, clock_ms, UPPER_MS);
}

/* ---- clients ------------------------------------------------------------------------------ */

static maas_client *emu_client(long idle_ms, long deadline_ms, int retries)
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

/* A client whose generations go to a raw server (a static token, the emulator's catalogue). */
static maas_client *raw_client(const rawserver *s, long idle_ms)
{
    maas_client_options o;
    maas_client *c = NULL;
    char api[128];
    snprintf(api, sizeof api, "%s/v1/maas", rawserver_url(s));
    maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION);
    o.token = "static-token";
    o.cloud_account = "123456789012";
    o.api_base_url = api;
    o.idle_timeout_ms = idle_ms;
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    return c;
}

static maas_request request(const char *prompt)
{
    maas_request r = MAAS_REQUEST_INIT;
    r.model = MISTRAL;
    r.prompt = prompt;
    r.max_new_tokens = 10;
    return r;
}

static int reset(void **state)
{
    (void)state;
    unwatch(); /* a failed test may have left its watchdog set */
    return emu_post(&E, "/emulator/reset", NULL) == 200 ? 0 : -1;
}

/* ---- item: the idle clock runs from the request, in every engine -------------------------- */

/* The server takes the request and sends nothing at all. */
static void test_idle_silent_server(void **state)
{
    maas_client *c = emu_client(1000, 0, MAAS_RETRIES_OFF);
    maas_request r = request("silent [[fault:no-answer]]");
    struct outcome o;
    (void)state;
    for (int e = 0; e < ENGINES; e++) {
        run((enum engine)e, c, &r, &o);
        expect_clock((enum engine)e, &o, MAAS_ERR_IDLE_TIMEOUT, "no message from the server for 1000 ms",
                     1000);
    }
    maas_client_free(c);
}

/* The status line and headers, then nothing. */
static void test_idle_silent_after_headers(void **state)
{
    maas_client *c = emu_client(1000, 0, MAAS_RETRIES_OFF);
    maas_request r = request("headers only [[fault:silent-after-headers]]");
    struct outcome o;
    (void)state;
    for (int e = 0; e < ENGINES; e++) {
        run((enum engine)e, c, &r, &o);
        expect_clock((enum engine)e, &o, MAAS_ERR_IDLE_TIMEOUT, "no message from the server for 1000 ms",
                     1000);
        assert_int_equal(o.tokens, 0);
    }
    maas_client_free(c);
}

/* A retry (after a 503) and a 401 replay arm the clock again. */
static void test_idle_on_retry_and_replay(void **state)
{
    maas_client *c = emu_client(1000, 0, 1);
    maas_request r = request("again [[fault:silent-after-headers]]");
    struct outcome o;
    (void)state;
    for (int e = 0; e < ENGINES; e++) {
        assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "status=503", 1), 200);
        run((enum engine)e, c, &r, &o);
        expect_clock((enum engine)e, &o, MAAS_ERR_IDLE_TIMEOUT, "no message from the server", 1000);
        assert_int_equal(o.attempts, 2);
        assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "expire-token", 1), 200);
        run((enum engine)e, c, &r, &o);
        expect_clock((enum engine)e, &o, MAAS_ERR_IDLE_TIMEOUT, "no message from the server", 1000);
        assert_int_equal(o.attempts, 3); /* 401, the replay, its retry after the idle clock */
    }
    /* The second run of each engine was a replay (a 401 is not retried). */
    if (maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS) != ENGINES)
        fail_msg("%llu replays, expected %d",
                 (unsigned long long)maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS), ENGINES);
    maas_client_free(c);
}

/* ---- item: keep-alives are not messages ----------------------------------------------------- */

/* Interim answers ("HTTP/1.1 102 Processing") every 300 ms, never a final one. */
static void test_interim_1xx_keepalives(void **state)
{
    rawserver *s = rawserver_start(RAW_INTERIM_1XX);
    maas_client *c;
    maas_request r = MAAS_REQUEST_INIT;
    struct outcome o;
    (void)state;
    assert_non_null(s);
    c = raw_client(s, 1000);
    r.model_info = maas_model_list_find(CATALOGUE, MISTRAL);
    assert_non_null(r.model_info);
    r.prompt = "keep-alive";
    for (int e = 0; e < ENGINES; e++) {
        long before = rawserver_requests(s);
        run((enum engine)e, c, &r, &o);
        /* A keep-alive every 300 ms never restarts a clock of 1000 ms. */
        expect_clock((enum engine)e, &o, MAAS_ERR_IDLE_TIMEOUT, "no message from the server for 1000 ms",
                     1000);
        assert_int_equal(rawserver_requests(s) - before, 1);
    }
    maas_client_free(c);
    assert_int_equal(rawserver_wait_open(s, 0, 5000), 0);
    rawserver_stop(s);
}

/* A 200 stream of bare newlines, one every 300 ms, never a message. */
static void test_blank_line_keepalives(void **state)
{
    maas_client *c = emu_client(1000, 0, MAAS_RETRIES_OFF);
    maas_request r = request("blank keep-alives [[fault:keepalive-blank=300]]");
    struct outcome o;
    (void)state;
    for (int e = 0; e < ENGINES; e++) {
        run((enum engine)e, c, &r, &o);
        expect_clock((enum engine)e, &o, MAAS_ERR_IDLE_TIMEOUT, "no message from the server for 1000 ms",
                     1000);
        assert_int_equal(o.tokens, 0);
    }
    assert_int_equal(emu_stat(&E, "generate_requests"), ENGINES);
    maas_client_free(c);
}

/* Blank lines between real messages still let the stream finish. */
static void test_blank_lines_between_messages(void **state)
{
    maas_client *c = emu_client(1000, 0, MAAS_RETRIES_OFF);
    maas_request r = request("blanks [[fault:blank-lines]] [[fault:delay=50]]");
    struct outcome o;
    (void)state;
    for (int e = 0; e < ENGINES; e++) {
        run((enum engine)e, c, &r, &o);
        if (o.st != MAAS_OK)
            fail_msg("%s: %s %s", engine_name[e], maas_status_name(o.st), o.message);
        assert_int_equal(o.tokens, 10);
    }
    maas_client_free(c);
}

/* ---- item: the upload is not idleness -------------------------------------------------------- */

static void test_slow_upload_is_not_idle(void **state)
{
    enum { PROMPT = 4 * 1024 * 1024 };
    rawserver *s = rawserver_start(RAW_SLOW_READ);
    maas_client *c;
    maas_request r = MAAS_REQUEST_INIT;
    struct outcome o;
    char *prompt = malloc(PROMPT + 1);
    (void)state;
    assert_non_null(s);
    assert_non_null(prompt);
    memset(prompt, 'p', PROMPT);
    prompt[PROMPT] = '\0';
    c = raw_client(s, 1000);
    r.model_info = maas_model_list_find(CATALOGUE, MISTRAL);
    r.prompt = prompt;
    for (int e = 0; e < ENGINES; e++) {
        run((enum engine)e, c, &r, &o);
        if (o.st != MAAS_OK)
            fail_msg("%s: %s \"%s\" after %ld ms", engine_name[e], maas_status_name(o.st),
                     o.message, o.ms);
        assert_int_equal(o.tokens, 1);
        /* Else the upload fitted in socket buffers and proved nothing. */
        if (o.ms < 1500)
            fail_msg("%s: the upload took only %ld ms, not longer than the idle clock",
                     engine_name[e], o.ms);
    }
    maas_client_free(c);
    rawserver_stop(s);
    free(prompt);
}

/* An upload that stops moving is bounded all the same, and said to be the upload. */
static void test_stalled_upload(void **state)
{
    enum { PROMPT = 4 * 1024 * 1024 };
    rawserver *s = rawserver_start(RAW_NO_READ);
    maas_client *c;
    maas_request r = MAAS_REQUEST_INIT;
    struct outcome o;
    char *prompt = malloc(PROMPT + 1);
    (void)state;
    assert_non_null(s);
    assert_non_null(prompt);
    memset(prompt, 'q', PROMPT);
    prompt[PROMPT] = '\0';
    c = raw_client(s, 1000);
    r.model_info = maas_model_list_find(CATALOGUE, MISTRAL);
    r.prompt = prompt;
    for (int e = 0; e < ENGINES; e++) {
        run((enum engine)e, c, &r, &o);
        expect_clock((enum engine)e, &o, MAAS_ERR_IDLE_TIMEOUT,
                     "the request body made no progress for 1000 ms", 1000);
    }
    maas_client_free(c);
    rawserver_stop(s);
    free(prompt);
}

/* ---- item: bounded bodies have a bound in time ------------------------------------------------ */

static maas_client *call_client(long token_ms, long models_ms, long deadline_ms)
{
    maas_client_options o;
    maas_client *c = NULL;
    emu_options(&E, &o);
    o.token_timeout_ms = token_ms;
    o.models_timeout_ms = models_ms;
    o.deadline_ms = deadline_ms;
    o.retry_base_ms = 10;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    return c;
}

static void expect_call(maas_status st, long ms, const char *words, long clock_ms)
{
    const maas_error *e = maas_last_error();
    const char *msg = e ? e->message : "";
    if (st != MAAS_ERR_DEADLINE || !strstr(msg, words) || ms < clock_ms || ms > UPPER_MS)
        fail_msg("%s \"%s\" after %ld ms; expected MAAS_ERR_DEADLINE \"...%s...\" within %ld .. %ld ms",
                 maas_status_name(st), msg, ms, words, clock_ms, UPPER_MS);
}

/* A catalogue trickled a byte a second: each byte restarts the idle clock, the call's own does not. */
static void test_models_trickle(void **state)
{
    maas_client *c = call_client(0, 2000, 0);
    maas_model_list *list = NULL;
    maas_status st;
    long start;
    (void)state;
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_fault(&E, "/v1/maas/models", "drip=1000", 10), 200);
    start = now_ms();
    watch("maas_models_list, models_timeout_ms 2000");
    st = maas_models_list(&list, c);
    unwatch();
    expect_call(st, now_ms() - start, "the 2000 ms deadline of GET /models expired", 2000);
    assert_null(list);
    maas_client_free(c);

    /* The caller's own deadline, when shorter, bounds it instead. */
    c = call_client(0, 0, 1500);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    start = now_ms();
    watch("maas_models_list, deadline_ms 1500");
    st = maas_models_list(&list, c);
    unwatch();
    expect_call(st, now_ms() - start, "the 1500 ms deadline of GET /models expired", 1500);
    maas_client_free(c);

    /* An idle clock of 1 s, a byte every 200 ms, one attempt: each byte
     * restarts the idle clock, so the call's own 2.5 s clock ends it. */
    {
        maas_client_options o;
        emu_options(&E, &o);
        o.idle_timeout_ms = 1000;
        o.models_timeout_ms = 2500;
        o.max_retries = MAAS_RETRIES_OFF; /* an idle timeout would be retried until the 2.5 s */
        assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    }
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(emu_fault(&E, "/v1/maas/models", "drip=200", 10), 200);
    start = now_ms();
    watch("maas_models_list, idle_timeout_ms 1000, a byte every 200 ms");
    st = maas_models_list(&list, c);
    unwatch();
    expect_call(st, now_ms() - start, "the 2500 ms deadline of GET /models expired", 2500);
    maas_client_free(c);
}

/* A token endpoint that takes the request and never answers costs the token clock, once. */
static void test_token_endpoint_never_answers(void **state)
{
    maas_client *c = call_client(2000, 0, 0);
    maas_status st;
    long start;
    (void)state;
    assert_int_equal(emu_fault(&E, "/oauth2/token", "no-answer", 3), 200);
    start = now_ms();
    watch("maas_client_authenticate, token_timeout_ms 2000");
    st = maas_client_authenticate(c);
    unwatch();
    expect_call(st, now_ms() - start, "the 2000 ms deadline of the token request expired", 2000);
    maas_client_free(c);
}

/* ---- item: a multi never spins ------------------------------------------------------------------ */

/* A logger that takes its time on the retry line: the time between the
 * deadline check and the wake-up's computation. */
static void slow_logger(maas_log_level level, const char *message, void *payload)
{
    (void)level;
    (void)payload;
    if (strstr(message, "; retry 1 in "))
        usleep(5000 * 1000);
}

static void test_backoff_measured_once(void **state)
{
    maas_client_options opts;
    maas_client *c = NULL;
    maas_request r = request("backoff");
    struct outcome o;
    (void)state;
    emu_options(&E, &opts);
    opts.deadline_ms = 8000;
    opts.max_retries = 1;
    opts.log_level = MAAS_LOG_INFO;
    opts.log_cb = slow_logger;
    assert_int_equal(maas_client_new(&c, &opts), MAAS_OK);
    for (int e = 0; e < ENGINES; e++) {
        /* 503 with Retry-After: 4 s: the retry is due at 4 s, inside the 8 s
         * deadline, whatever the logger costs. */
        assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "status=503", 1), 200);
        assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "retry-after=4", 1), 200);
        run((enum engine)e, c, &r, &o);
        if (o.st != MAAS_OK || o.ms > UPPER_MS)
            fail_msg("%s: %s \"%s\" after %ld ms; expected the retry to succeed",
                     engine_name[e], maas_status_name(o.st), o.message, o.ms);
        assert_int_equal(o.tokens, 10);
    }
    maas_client_free(c);
}

/* ---- item: the deadline reaches the server ------------------------------------------------------ */

static void test_grpc_timeout_header(void **state)
{
    maas_client *c = emu_client(0, 45000, 0);
    maas_request r = request("deadline on the wire");
    struct outcome o;
    char value[64];
    (void)state;
    for (int e = 0; e < ENGINES; e++) {
        long ms = -1;
        char unit = 0;
        run((enum engine)e, c, &r, &o);
        assert_int_equal(o.st, MAAS_OK);
        emu_stat_string(&E, "last_grpc_timeout", value, sizeof value);
        /* What is left of 45 s, in milliseconds, at most 8 digits. */
        if (sscanf(value, "%ld%c", &ms, &unit) != 2 || unit != 'm' || strlen(value) > 9 ||
            ms <= 45000 - UPPER_MS || ms > 45000)
            fail_msg("%s: Grpc-Timeout \"%s\"", engine_name[e], value);
    }
    maas_client_free(c);
    /* Past 8 digits of milliseconds, seconds; past 8 digits of seconds, hours. */
    {
        static const struct { long deadline; char unit; long lo, hi; } big[] = {
            { 200000000L, 'S', 200000 - UPPER_MS / 1000, 200001 },
            { 400000000000L, 'H', 111111, 111112 },
        };
        for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
            long v = -1;
            char unit = 0;
            c = emu_client(0, big[i].deadline, 0);
            run(BLOCKING, c, &r, &o);
            assert_int_equal(o.st, MAAS_OK);
            emu_stat_string(&E, "last_grpc_timeout", value, sizeof value);
            if (sscanf(value, "%ld%c", &v, &unit) != 2 || unit != big[i].unit || strlen(value) > 9 ||
                v < big[i].lo || v > big[i].hi)
                fail_msg("deadline %ld ms: Grpc-Timeout \"%s\"", big[i].deadline, value);
            maas_client_free(c);
        }
    }
    /* No deadline, no header. */
    c = emu_client(0, 0, 0);
    run(BLOCKING, c, &r, &o);
    assert_int_equal(o.st, MAAS_OK);
    emu_stat_string(&E, "last_grpc_timeout", value, sizeof value);
    assert_string_equal(value, "");
    maas_client_free(c);
}

/* ---- item: maas_generate_text() collects a bounded amount ------------------------------------- */

static void test_generate_text_caps(void **state)
{
    maas_client_options opts;
    maas_client *c = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    char *text = (char *)1;
    size_t len = 1;
    maas_status st;
    (void)state;
    emu_options(&E, &opts);
    opts.max_text_bytes = 4096;
    opts.deadline_ms = 60000; /* a backstop only: the caps end these streams */
    assert_int_equal(maas_client_new(&c, &opts), MAAS_OK);
    watch("maas_generate_text");
    r.model = MISTRAL;
    /* Ten million tokens as fast as the socket takes them. */
    r.prompt = "endless [[fault:tokens=10000000]] [[fault:coalesce]]";
    r.max_new_tokens = 2047;
    st = maas_generate_text(&text, &len, c, &r);
    assert_int_equal(st, MAAS_ERR_TEXT_TOO_LONG);
    assert_non_null(strstr(maas_last_error()->message, "max_text_bytes (4096 bytes)"));
    assert_null(text);
    assert_int_equal(len, 0);

    /* More tokens than max_new_tokens (and the final one) is a broken server. */
    r.max_new_tokens = 8;
    st = maas_generate_text(&text, &len, c, &r);
    assert_int_equal(st, MAAS_ERR_PROTOCOL);
    assert_non_null(strstr(maas_last_error()->message, "more than max_new_tokens (8)"));
    assert_null(text);

    /* Exactly max_new_tokens is fine, and so is text up to the cap. */
    r.prompt = "just right [[fault:tokens=8]]";
    st = maas_generate_text(&text, &len, c, &r);
    assert_int_equal(st, MAAS_OK);
    assert_true(len > 0 && len <= 4096);
    unwatch();
    maas_free(text);
    maas_client_free(c);
}

/* ---- setup ------------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    maas_client *c = NULL;
    maas_client_options o;
    (void)state;
    if (emu_start(&E, NULL))
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
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_idle_silent_server, reset),
        cmocka_unit_test_setup(test_idle_silent_after_headers, reset),
        cmocka_unit_test_setup(test_idle_on_retry_and_replay, reset),
        cmocka_unit_test_setup(test_blank_line_keepalives, reset),
        cmocka_unit_test_setup(test_interim_1xx_keepalives, reset),
        cmocka_unit_test_setup(test_blank_lines_between_messages, reset),
        cmocka_unit_test_setup(test_slow_upload_is_not_idle, reset),
        cmocka_unit_test_setup(test_stalled_upload, reset),
        cmocka_unit_test_setup(test_models_trickle, reset),
        cmocka_unit_test_setup(test_token_endpoint_never_answers, reset),
        cmocka_unit_test_setup(test_backoff_measured_once, reset),
        cmocka_unit_test_setup(test_grpc_timeout_header, reset),
        cmocka_unit_test_setup(test_generate_text_caps, reset),
    };
    return cmocka_run_group_tests_name("clocks", tests, group_setup, group_teardown);
}
