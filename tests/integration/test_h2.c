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

#include "harness.h"

extern char **environ;

static emu E;

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"
#define GEN_PATH "/v1/maas/generatestream"

/* ---- the front end ---------------------------------------------------------------- */

static struct front {
    pid_t pid;
    int port;
    char dir[64];
    char key[128], cert[128], log[128], errlog[128];
    char api[128], auth[128];
    long log_seen; /* bytes of the access log already read */
} F;

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int spawn_wait(const char *const *argv)
{
    pid_t pid;
    int status;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "test_h2: cannot run %s: %s\n", argv[0], strerror(rc));
        return -1;
    }
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "test_h2: %s failed\n", argv[0]);
        return -1;
    }
    return 0;
}

/* A loopback port nothing listens on now. */
static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int accepting(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* The port of an emulator URL ("http://127.0.0.1:PORT/..."). */
static int url_port(const char *url)
{
    const char *p = strrchr(url + strlen("http://"), ':');
    return p ? atoi(p + 1) : -1;
}

static int front_start(void)
{
    char frontend[64], api_backend[64], token_backend[80], accesslog[160], errorlog[160];
    int api_port = url_port(E.api), token_port = url_port(E.auth);
    snprintf(F.dir, sizeof F.dir, "/tmp/maas-h2-XXXXXX");
    if (!mkdtemp(F.dir))
        return -1;
    snprintf(F.key, sizeof F.key, "%s/key.pem", F.dir);
    snprintf(F.cert, sizeof F.cert, "%s/cert.pem", F.dir);
    snprintf(F.log, sizeof F.log, "%s/access.log", F.dir);
    snprintf(F.errlog, sizeof F.errlog, "%s/error.log", F.dir);
    {
        const char *const argv[] = { "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                     "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", F.key,
                                     "-out", F.cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                                     "-addext", "subjectAltName=IP:127.0.0.1", NULL };
        if (spawn_wait(argv))
            return -1;
    }
    F.port = free_port();
    if (F.port < 0 || api_port < 0 || token_port < 0)
        return -1;
    snprintf(frontend, sizeof frontend, "--frontend=127.0.0.1,%d", F.port);
    /* The API is the catch-all backend; the token endpoint is its own. */
    snprintf(api_backend, sizeof api_backend, "--backend=127.0.0.1,%d", api_port);
    snprintf(token_backend, sizeof token_backend, "--backend=127.0.0.1,%d;/oauth2/", token_port);
    snprintf(accesslog, sizeof accesslog, "--accesslog-file=%s", F.log);
    snprintf(errorlog, sizeof errorlog, "--errorlog-file=%s", F.errlog);
    {
        const char *nghttpx = getenv("MAAS_NGHTTPX");
        const char *const argv[] = {
            nghttpx && *nghttpx ? nghttpx : "nghttpx", frontend, api_backend, token_backend,
            "--workers=1", "--no-ocsp", accesslog, errorlog,
            "--accesslog-format=$remote_port $alpn $status $method $path",
            "--frontend-read-timeout=120s", "--backend-read-timeout=120s", F.key, F.cert, NULL
        };
        posix_spawn_file_actions_t fa;
        int rc;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        rc = posix_spawnp(&F.pid, argv[0], &fa, NULL, (char *const *)argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        if (rc != 0) {
            fprintf(stderr, "test_h2: cannot run %s (Debian package nghttp2-proxy): %s\n",
                    argv[0], strerror(rc));
            F.pid = 0;
            return -1;
        }
    }
    for (long end = now_ms() + 20000; now_ms() < end;) {
        struct timespec ts = { 0, 20 * 1000000L };
        int status;
        if (accepting(F.port))
            break;
        if (waitpid(F.pid, &status, WNOHANG) == F.pid) {
            fprintf(stderr, "test_h2: nghttpx exited at start (see %s)\n", F.errlog);
            F.pid = 0;
            return -1;
        }
        nanosleep(&ts, NULL);
    }
    if (!accepting(F.port))
        return -1;
    snprintf(F.api, sizeof F.api, "https://127.0.0.1:%d/v1/maas", F.port);
    snprintf(F.auth, sizeof F.auth, "https://127.0.0.1:%d/oauth2/token", F.port);
    return 0;
}

/*
 * SIGQUIT (nghttpx's graceful shutdown: it exits 0 once its connections
 * are closed; SIGTERM would kill it at once) and reap within 20 s: 0 for a
 * clean exit.
 */
static int front_stop(void)
{
    int status = 0, rc = 0;
    if (F.pid > 0) {
        struct timespec ts = { 0, 20 * 1000000L };
        long end = now_ms() + 20000;
        pid_t r;
        kill(F.pid, SIGQUIT);
        while ((r = waitpid(F.pid, &status, WNOHANG)) == 0 && now_ms() < end)
            nanosleep(&ts, NULL);
        if (r == 0) {
            fprintf(stderr, "test_h2: nghttpx still running 20 s after SIGQUIT\n");
            kill(F.pid, SIGKILL);
            waitpid(F.pid, &status, 0);
            rc = -1;
        } else if (r != F.pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
            rc = -1;
        }
        F.pid = 0;
    }
    if (F.dir[0]) {
        unlink(F.key);
        unlink(F.cert);
        unlink(F.log);
        unlink(F.errlog);
        rmdir(F.dir);
        F.dir[0] = '\0';
    }
    return rc;
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
    o.api_base_url = F.api;
    o.auth_url = F.auth;
    o.ca_bundle = F.cert;
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
    return front_start();
}

/* cmocka exits 0 after a failing group teardown: main() checks this. */
static int front_failed;

static int group_teardown(void **state)
{
    (void)state;
    if (front_stop() != 0) {
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
    if ((F.pid > 0 && front_stop() != 0) || front_failed)
        rc = rc ? rc : 1;
    return emu_suite_result(rc, &E);
}
