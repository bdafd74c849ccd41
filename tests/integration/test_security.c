/*
 * Integration: what docs/security.md promises against a hostile network,
 * server and environment, on loopback only.
 *
 *   - an http:// URL to a host that is not loopback is refused unless the
 *     caller opts in (option or environment);
 *   - text from the server (an API error's message and request id, a token
 *     endpoint's error_description, an error line in a stream) reaches
 *     maas_last_error() and the log escaped: no control character, no
 *     forged log line;
 *   - one response header over libcurl's 100 KiB cap is a protocol error;
 *   - HTTP Basic carries the form-urlencoded id and secret (RFC 6749 2.3.1),
 *     and the emulator decodes them the same way;
 *   - a request body over the service's 16 MiB cap is refused unsent;
 *   - invalid UTF-8 in the cloud account is a configuration error;
 *   - a connect failure names the endpoint; TLS to a plain-HTTP port says so.
 *
 * A "canned" server below answers every request to a path with a fixed raw
 * HTTP response and remembers the last Authorization header it saw.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

/* ---- canned server -------------------------------------------------------- */

#define CANNED_MAX 4

typedef struct canned {
    int fd;
    int port;
    pthread_t thread;
    pthread_mutex_t lock;
    const char *path[CANNED_MAX];
    const char *response[CANNED_MAX];
    size_t response_len[CANNED_MAX];
    char authorization[512];
    long requests;
    char base[64];
    const char *greeting; /* set: written at once on every connection, then
                             read until the client leaves (a plain-text
                             server that a TLS client meets first) */
} canned;

static void canned_answer(canned *c, int fd)
{
    char req[65536];
    size_t used = 0;
    char *end, *p;
    long clen = 0;
    const char *resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    size_t resp_len = strlen(resp), sent = 0;
    int i;

    for (;;) {
        ssize_t r = recv(fd, req + used, sizeof req - 1 - used, 0);
        if (r <= 0)
            return;
        used += (size_t)r;
        req[used] = '\0';
        if ((end = strstr(req, "\r\n\r\n")) != NULL)
            break;
        if (used == sizeof req - 1)
            return;
    }
    if ((p = strcasestr(req, "\r\nContent-Length:")) != NULL && p < end)
        clen = strtol(p + 17, NULL, 10);
    /* Read the body away (it may be larger than the buffer). */
    {
        long have = (long)(used - (size_t)(end + 4 - req));
        char sink[4096];
        while (have < clen) {
            ssize_t r = recv(fd, sink, sizeof sink, 0);
            if (r <= 0)
                break;
            have += r;
        }
    }
    pthread_mutex_lock(&c->lock);
    c->requests++;
    if ((p = strcasestr(req, "\r\nAuthorization:")) != NULL && p < end) {
        size_t n = strcspn(p + 16, "\r\n");
        p += 16;
        while (*p == ' ' && n) {
            p++;
            n--;
        }
        if (n >= sizeof c->authorization)
            n = sizeof c->authorization - 1;
        memcpy(c->authorization, p, n);
        c->authorization[n] = '\0';
    }
    for (i = 0; i < CANNED_MAX; i++) {
        size_t k = c->path[i] ? strlen(c->path[i]) : 0;
        const char *path = strchr(req, ' ');
        if (k && path && !strncmp(path + 1, c->path[i], k) && path[1 + k] == ' ') {
            resp = c->response[i];
            resp_len = c->response_len[i];
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    while (sent < resp_len) {
        ssize_t w = send(fd, resp + sent, resp_len - sent, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        sent += (size_t)w;
    }
}

static void *canned_main(void *arg)
{
    canned *c = arg;
    for (;;) {
        int fd = accept(c->fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL; /* shut down */
        }
        const char *greeting;
        pthread_mutex_lock(&c->lock);
        greeting = c->greeting;
        pthread_mutex_unlock(&c->lock);
        if (greeting) {
            char sink[4096];
            if (send(fd, greeting, strlen(greeting), MSG_NOSIGNAL) > 0)
                while (recv(fd, sink, sizeof sink, 0) > 0)
                    ;
        } else {
            canned_answer(c, fd);
        }
        shutdown(fd, SHUT_WR);
        close(fd);
    }
}

static int canned_start(canned *c)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (c->fd < 0 || bind(c->fd, (struct sockaddr *)&a, sizeof a) || listen(c->fd, 16) ||
        getsockname(c->fd, (struct sockaddr *)&a, &len))
        return -1;
    c->port = ntohs(a.sin_port);
    snprintf(c->base, sizeof c->base, "http://127.0.0.1:%d", c->port);
    return pthread_create(&c->thread, NULL, canned_main, c);
}

static void canned_stop(canned *c)
{
    shutdown(c->fd, SHUT_RDWR);
    pthread_join(c->thread, NULL);
    close(c->fd);
    pthread_mutex_destroy(&c->lock);
}

/* Answer `path` with this raw response (kept by the caller). */
static void canned_set(canned *c, int slot, const char *path, const char *response, size_t len)
{
    pthread_mutex_lock(&c->lock);
    c->path[slot] = path;
    c->response[slot] = response;
    c->response_len[slot] = len ? len : strlen(response);
    pthread_mutex_unlock(&c->lock);
}


static void canned_options(const canned *c, maas_client_options *o, char *api, char *auth,
                           size_t n)
{
    snprintf(api, n, "%s/v1/maas", c->base);
    snprintf(auth, n, "%s/oauth2/token", c->base);
    maas_client_options_init(o, MAAS_CLIENT_OPTIONS_VERSION);
    o->client_id = "test-client";
    o->client_secret = "test-secret";
    o->cloud_account = "123456789012";
    o->api_base_url = api;
    o->auth_url = auth;
    o->max_retries = MAAS_RETRIES_OFF;
    o->connect_timeout_ms = 30000;
}

/* An HTTP response with this status and JSON body. */
static char *http_json(int status, const char *body)
{
    size_t n = strlen(body) + 256;
    char *r = malloc(n);
    snprintf(r, n,
             "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n%s",
             status, strlen(body), body);
    return r;
}

/* A token endpoint's good answer (made in main). */
static char *TOKEN_OK;

/* ---- helpers -------------------------------------------------------------- */

static void assert_no_control(const char *s)
{
    const unsigned char *p;
    for (p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f || (p[0] == 0xC2 && p[1] >= 0x80 && p[1] < 0xA0))
            fail_msg("control character 0x%02x at %td in \"%s\"", *p,
                     (const char *)p - s, s);
    }
}

#define MAX_LINES 64
static char logged[MAX_LINES][1100];
static int nlogged;

static void on_log(maas_log_level level, const char *message, void *payload)
{
    (void)level;
    (void)payload;
    if (nlogged < MAX_LINES)
        snprintf(logged[nlogged++], sizeof logged[0], "%s", message);
}

static int ignore_token(const maas_token *t, void *payload)
{
    (void)t;
    (void)payload;
    return 0;
}

static maas_model *const NO_MODEL = NULL;

/* ---- 1. plain HTTP -------------------------------------------------------- */

static maas_status new_with(const char *api, const char *auth, int allow, const char *token)
{
    maas_client_options o;
    maas_client *c = NULL;
    maas_status st;
    maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION);
    o.client_id = "id";
    o.client_secret = "secret";
    o.api_base_url = api;
    o.auth_url = auth;
    o.token = token;
    o.allow_insecure_http = allow;
    st = maas_client_new(&c, &o);
    maas_client_free(c);
    return st;
}

static void test_plain_http_refused_beyond_loopback(void **state)
{
    static const char *const loopback[] = {
        "http://127.0.0.1:1/v1/maas", "http://127.9.8.7/v1/maas", "http://[::1]:8080/v1/maas",
        "http://localhost:1/v1/maas", "http://LocalHost/v1/maas", "https://example.com/v1/maas",
    };
    static const char *const remote[] = {
        "http://example.com/v1/maas", "http://127.0.0.1.evil.example/v1/maas",
        "http://128.0.0.1/v1/maas", "http://[::2]/v1/maas", "http://10.0.0.1:8080/v1/maas",
        "http://localhost.evil.example/", "http://evil.example#@127.0.0.1/",
    };
    size_t i;
    const maas_error *e;
    (void)state;
    for (i = 0; i < sizeof loopback / sizeof loopback[0]; i++)
        if (new_with(loopback[i], "https://example.com/token", 0, NULL) != MAAS_OK)
            fail_msg("%s refused: %s", loopback[i], maas_last_error()->message);
    for (i = 0; i < sizeof remote / sizeof remote[0]; i++) {
        if (new_with(remote[i], NULL, 0, NULL) != MAAS_ERR_CONFIG)
            fail_msg("%s accepted", remote[i]);
        if (new_with(remote[i], NULL, 1, NULL) != MAAS_OK)
            fail_msg("%s refused despite allow_insecure_http: %s", remote[i],
                     maas_last_error()->message);
    }
    assert_int_equal(new_with("http://example.com/v1/maas", NULL, 0, NULL), MAAS_ERR_CONFIG);
    e = maas_last_error();
    assert_non_null(strstr(e->message, "api_base_url http://example.com/v1/maas"));
    assert_non_null(strstr(e->message, "allow_insecure_http"));
    assert_non_null(strstr(e->message, "MAAS_ALLOW_INSECURE_HTTP=1"));

    /* The token endpoint: refused, and named, when it will be used. */
    assert_int_equal(new_with(NULL, "http://auth.example/oauth2/token", 0, NULL), MAAS_ERR_CONFIG);
    assert_non_null(strstr(maas_last_error()->message, "auth_url http://auth.example/oauth2/token"));
    assert_int_equal(new_with(NULL, "http://auth.example/oauth2/token", 0, "a-token"), MAAS_OK);

    /* A password in the URL is not repeated in the message. */
    assert_int_equal(new_with("http://user:hunter2@example.com/v1/maas", NULL, 0, NULL),
                     MAAS_ERR_CONFIG);
    assert_null(strstr(maas_last_error()->message, "hunter2"));
}

static void test_plain_http_environment_and_v1(void **state)
{
    maas_client *c = NULL;
    maas_client_options o;
    (void)state;
    setenv("MAAS_CLIENT_ID", "id", 1);
    setenv("MAAS_CLIENT_SECRET", "secret", 1);
    setenv("MAAS_API_BASE_URL", "http://example.com/v1/maas", 1);
    unsetenv("MAAS_AUTH_URL");
    unsetenv("MAAS_ALLOW_INSECURE_HTTP");
    assert_int_equal(maas_client_new(&c, NULL), MAAS_ERR_CONFIG);
    setenv("MAAS_ALLOW_INSECURE_HTTP", "0", 1);
    assert_int_equal(maas_client_new(&c, NULL), MAAS_ERR_CONFIG);
    setenv("MAAS_ALLOW_INSECURE_HTTP", "1", 1);
    assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
    maas_client_free(c);
    c = NULL;
    /* A version 1 caller has no such field: the environment does not reach it. */
    assert_int_equal(maas_client_options_init(&o, 1), MAAS_OK);
    o.client_id = "id";
    o.client_secret = "secret";
    o.api_base_url = "http://example.com/v1/maas";
    o.allow_insecure_http = 1; /* past a v1 struct's end: never read */
    assert_int_equal(maas_client_new(&c, &o), MAAS_ERR_CONFIG);
    unsetenv("MAAS_ALLOW_INSECURE_HTTP");
    unsetenv("MAAS_API_BASE_URL");
    unsetenv("MAAS_CLIENT_ID");
    unsetenv("MAAS_CLIENT_SECRET");
}

/* ---- 2. server text ------------------------------------------------------- */

/* A message that clears the screen, sets the window title, rings, writes a
 * C1 CSI and forges a log line. */
#define HOSTILE "\\u001b[2J\\u001b]0;pwned\\u0007\\u009b31m ok\\nlibmaas warn: forged\\r"

static void check_escaped(const char *msg)
{
    assert_no_control(msg);
    assert_non_null(strstr(msg, "\\x1b[2J"));
    assert_non_null(strstr(msg, "\\x1b]0;pwned\\x07"));
    assert_non_null(strstr(msg, "\\u009b31m"));
    assert_non_null(strstr(msg, "\\nlibmaas warn: forged\\r"));
}

static void check_log(void)
{
    int i;
    assert_true(nlogged > 0);
    for (i = 0; i < nlogged; i++) {
        assert_no_control(logged[i]);
        assert_null(strstr(logged[i], "\nlibmaas"));
    }
    nlogged = 0;
}

/*
 * Debug logging along the whole path of a credential: two token fetches
 * (the second after a 401 to the first token), the request carrying each
 * token, the refusal. The log must show the path was taken (a token
 * fetched, a replay) and carry no secret: not the client secret, not the
 * Basic header made of it, not a token.
 */
static void test_log_reaches_token_fetch_without_secrets(void **state)
{
    canned s;
    maas_client_options o;
    maas_client *c = NULL;
    maas_model_list *l = NULL;
    char api[128], auth[128];
    int i, fetched = 0, replayed = 0;
    char *refused = http_json(401, "{\"code\":16,\"message\":\"invalid token\",\"details\":[]}");
    (void)state;
    assert_int_equal(canned_start(&s), 0);
    canned_set(&s, 0, "/oauth2/token", TOKEN_OK, 0);
    canned_set(&s, 1, "/v1/maas/models", refused, 0);
    canned_options(&s, &o, api, auth, sizeof api);
    o.log_level = MAAS_LOG_DEBUG;
    o.log_cb = on_log;
    nlogged = 0;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_models_list(&l, c), MAAS_ERR_UNAUTHENTICATED);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REQUESTS), 2);
    maas_client_free(c);
    canned_stop(&s);
    free(refused);
    assert_true(nlogged > 0);
    for (i = 0; i < nlogged; i++) {
        fetched += strstr(logged[i], "token fetched") != NULL;
        replayed += strstr(logged[i], "replaying once with a new token") != NULL;
        if (strstr(logged[i], "test-secret") || strstr(logged[i], "tok-123456") ||
            strstr(logged[i], "dGVzdC1jbGllbnQ6dGVzdC1zZWNyZXQ") /* Basic test-client:test-secret */)
            fail_msg("a secret in the log: \"%s\"", logged[i]);
    }
    if (fetched != 2 || replayed != 1)
        fail_msg("the log shows %d token fetches and %d replays, expected 2 and 1", fetched,
                 replayed);
    nlogged = 0;
}

static void test_api_error_message_escaped(void **state)
{
    canned s;
    maas_client_options o;
    maas_client *c = NULL;
    maas_model_list *l = NULL;
    char api[128], auth[128];
    char *models = http_json(400, "{\"code\":3,\"message\":\"" HOSTILE "\",\"details\":[{"
                                  "\"@type\":\"type.googleapis.com/google.protobuf.StringValue\","
                                  "\"value\":\"rid\\u001b[31m\\n\"}]}");
    (void)state;
    assert_int_equal(canned_start(&s), 0);
    canned_set(&s, 0, "/oauth2/token", TOKEN_OK, 0);
    canned_set(&s, 1, "/v1/maas/models", models, 0);
    canned_options(&s, &o, api, auth, sizeof api);
    o.log_level = MAAS_LOG_DEBUG;
    o.log_cb = on_log;
    nlogged = 0;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_models_list(&l, c), MAAS_ERR_INVALID_REQUEST);
    check_escaped(maas_last_error()->message);
    assert_string_equal(maas_last_error()->request_id, "rid\\x1b[31m\\n");
    maas_client_free(c);
    check_log();
    canned_stop(&s);
    free(models);
}

static void test_token_error_description_escaped(void **state)
{
    canned s;
    maas_client_options o;
    maas_client *c = NULL;
    char api[128], auth[128];
    char *token = http_json(401, "{\"error\":\"invalid_client\",\"error_description\":\"" HOSTILE
                                 "\"}");
    (void)state;
    assert_int_equal(canned_start(&s), 0);
    canned_set(&s, 0, "/oauth2/token", token, 0);
    canned_options(&s, &o, api, auth, sizeof api);
    o.log_level = MAAS_LOG_WARN;
    o.log_cb = on_log;
    nlogged = 0;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_client_authenticate(c), MAAS_ERR_AUTH);
    check_escaped(maas_last_error()->message);
    maas_client_free(c);
    check_log(); /* the token endpoint's failure is logged as a warning */
    canned_stop(&s);
    free(token);
}

static void test_stream_error_line_escaped(void **state)
{
    static const char models_body[] =
        "{\"models\":[{\"model_name\":\"m/x\",\"product_id\":\"p-1\",\"product_name\":\"prod\"}]}";
    static const char line[] = "{\"error\":{\"code\":13,\"message\":\"" HOSTILE "\"}}\n";
    canned s;
    maas_client_options o;
    maas_client *c = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    maas_stream *st = NULL;
    char api[128], auth[128];
    char *models = http_json(200, models_body);
    char *gen = http_json(200, line);
    (void)state;
    assert_int_equal(canned_start(&s), 0);
    canned_set(&s, 0, "/oauth2/token", TOKEN_OK, 0);
    canned_set(&s, 1, "/v1/maas/models", models, 0);
    canned_set(&s, 2, "/v1/maas/generatestream", gen, 0);
    canned_options(&s, &o, api, auth, sizeof api);
    o.log_level = MAAS_LOG_DEBUG;
    o.log_cb = on_log;
    nlogged = 0;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    r.model = "m/x";
    r.prompt = "Tell me a joke";
    assert_int_equal(maas_stream_open(&st, c, &r), MAAS_OK);
    assert_int_equal(maas_stream_run(st, ignore_token, NULL, NULL), MAAS_ERR_STREAM);
    check_escaped(maas_stream_error(st)->message);
    maas_stream_free(st);
    maas_client_free(c);
    check_log();
    canned_stop(&s);
    free(models);
    free(gen);
}

/* ---- 6. small inputs ------------------------------------------------------ */

static void test_header_over_100k_is_protocol_error(void **state)
{
    canned s;
    maas_client_options o;
    maas_client *c = NULL;
    maas_model_list *l = NULL;
    char api[128], auth[128];
    size_t big = 150 * 1024, n = big + 256;
    char *resp = malloc(n);
    int k;
    (void)state;
    k = snprintf(resp, n, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: ");
    memset(resp + k, 'a', big);
    memcpy(resp + k + big, "\r\n\r\n{}", 7);
    assert_int_equal(canned_start(&s), 0);
    canned_set(&s, 0, "/oauth2/token", TOKEN_OK, 0);
    canned_set(&s, 1, "/v1/maas/models", resp, 0);
    canned_options(&s, &o, api, auth, sizeof api);
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    if (maas_models_list(&l, c) != MAAS_ERR_PROTOCOL || !strstr(maas_last_error()->message, "header"))
        fail_msg("%s: %s", maas_status_name(maas_last_error()->status), maas_last_error()->message);
    maas_client_free(c);
    canned_stop(&s);
    free(resp);
}

/* Standard base64 decoding, enough for a test. */
static size_t unbase64(const char *in, char *out)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned acc = 0;
    int bits = 0;
    size_t o = 0;
    for (; *in && *in != '='; in++) {
        const char *p = strchr(b64, *in);
        if (!p)
            break;
        acc = (acc << 6) | (unsigned)(p - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return o;
}

static void test_basic_auth_form_encoded(void **state)
{
    canned s;
    maas_client_options o;
    maas_client *c = NULL;
    char api[128], auth[128], plain[512];
    (void)state;
    assert_int_equal(canned_start(&s), 0);
    canned_set(&s, 0, "/oauth2/token", TOKEN_OK, 0);
    canned_options(&s, &o, api, auth, sizeof api);
    o.client_id = "app:1 x/\xc3\xa9";
    o.client_secret = "s:%+&~*";
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    maas_client_free(c);
    canned_stop(&s);
    assert_int_equal(strncmp(s.authorization, "Basic ", 6), 0);
    unbase64(s.authorization + 6, plain);
    assert_string_equal(plain, "app%3A1+x%2F%C3%A9:s%3A%25%2B%26%7E*");
}

/* Tests that need the emulator get one from emu_setup (stopped by
 * emu_teardown even when the test fails). */
static emu E;

static int emu_setup(void **state)
{
    (void)state;
    return emu_start(&E, NULL);
}

static int emu_setup_colon_id(void **state)
{
    static const char *const args[] = { "--client-id", "tenant:app 7", "--client-secret",
                                        "p:w%d+", NULL };
    (void)state;
    return emu_start(&E, args);
}

static int emu_teardown(void **state)
{
    (void)state;
    return emu_stop(&E);
}

static void test_basic_auth_colon_in_id_at_the_emulator(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    (void)state;
    emu_options(&E, &o);
    o.client_id = "tenant:app 7";
    o.client_secret = "p:w%d+";
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    if (maas_client_authenticate(c) != MAAS_OK)
        fail_msg("refused: %s", maas_last_error()->message);
    maas_client_free(c);
    c = NULL;
    /* The id as the emulator reads it, not a prefix of it. */
    o.client_id = "tenant";
    o.client_secret = "app 7:p:w%d+";
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_client_authenticate(c), MAAS_ERR_AUTH);
    maas_client_free(c);
}

static void test_body_over_16mib_refused_unsent(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    size_t n = 16u * 1024u * 1024u - 100; /* the JSON around it passes the cap */
    char *prompt = malloc(n + 1);
    (void)state;
    memset(prompt, 'a', n);
    prompt[n] = '\0';
    emu_options(&E, &o);
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    r.model = "mistralai/Mistral-7B-Instruct-v0.1";
    r.prompt = prompt;
    assert_int_equal(maas_generate(c, &r, ignore_token, NULL, NULL), MAAS_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(maas_last_error()->message, "16 MiB (16777216 bytes)"));
    assert_int_equal(emu_stat(&E, "generate_requests"), 0);
    /* Just under: sent (and answered). */
    prompt[n - 200] = '\0';
    assert_int_equal(maas_generate(c, &r, ignore_token, NULL, NULL), MAAS_OK);
    assert_int_equal(emu_stat(&E, "generate_requests"), 1);
    maas_client_free(c);
    free(prompt);
}

/* A multi's stream that must wait for the catalogue is refused at maas_multi_add
 * too when its prompt alone passes the cap, not later through on_done. */
static void test_multi_body_over_16mib_refused_at_add(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    maas_multi *m = NULL;
    maas_stream *s = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    size_t n = 16u * 1024u * 1024u;
    char *prompt = malloc(n + 1);
    (void)state;
    assert_non_null(prompt);
    memset(prompt, 'a', n);
    prompt[n] = '\0';
    emu_options(&E, &o);
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    r.model = "mistralai/Mistral-7B-Instruct-v0.1"; /* by name: the catalogue is not fetched yet */
    r.prompt = prompt;
    assert_int_equal(maas_multi_add(&s, m, &r, NULL, NULL, NULL, NULL), MAAS_ERR_INVALID_ARGUMENT);
    assert_null(s);
    assert_non_null(strstr(maas_last_error()->message, "more than"));
    assert_non_null(strstr(maas_last_error()->message, "16 MiB (16777216 bytes)"));
    maas_multi_free(m);
    assert_int_equal(emu_stat(&E, "models_requests"), 0);
    assert_int_equal(emu_stat(&E, "generate_requests"), 0);
    maas_client_free(c);
    free(prompt);
}

static void test_cloud_account_invalid_utf8(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    (void)state;
    maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION);
    o.client_id = "id";
    o.client_secret = "secret";
    o.cloud_account = "12\xff" "34";
    assert_int_equal(maas_client_new(&c, &o), MAAS_ERR_CONFIG);
    assert_string_equal(maas_last_error()->message, "cloud_account is not valid UTF-8 (byte 2)");
    setenv("MAAS_CLIENT_ID", "id", 1);
    setenv("MAAS_CLIENT_SECRET", "secret", 1);
    setenv("MAAS_CLOUD_ACCOUNT", "\xc3(", 1);
    assert_int_equal(maas_client_new(&c, NULL), MAAS_ERR_CONFIG);
    assert_string_equal(maas_last_error()->message, "cloud_account is not valid UTF-8 (byte 0)");
    unsetenv("MAAS_CLOUD_ACCOUNT");
    unsetenv("MAAS_CLIENT_ID");
    unsetenv("MAAS_CLIENT_SECRET");
}

/* ---- 7. messages ---------------------------------------------------------- */

/* A loopback port nothing listens on (bound, then closed). */
static int closed_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static void test_connect_failure_names_endpoint(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    maas_model_list *l = NULL;
    char bad[128], token[4096];
    const char *m;
    (void)state;
    snprintf(bad, sizeof bad, "http://127.0.0.1:%d/oauth2/token", closed_port());
    emu_options(&E, &o);
    o.auth_url = bad;
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_models_list(&l, c), MAAS_ERR_CONNECT);
    m = maas_last_error()->message;
    if (strncmp(m, "token endpoint: ", 16))
        fail_msg("does not name the token endpoint: %s", m);
    maas_client_free(c);
    c = NULL;

    assert_int_equal(emu_fetch_token(&E, token, sizeof token), 0);
    snprintf(bad, sizeof bad, "http://127.0.0.1:%d/v1/maas", closed_port());
    emu_options(&E, &o);
    o.api_base_url = bad;
    o.token = token;
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_models_list(&l, c), MAAS_ERR_CONNECT);
    m = maas_last_error()->message;
    if (strncmp(m, "API: ", 5))
        fail_msg("does not name the API: %s", m);
    maas_client_free(c);
}

static void test_tls_to_plain_http_port_explained(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    canned s;
    char https[128];
    const char *m;
    (void)state;
    /* A plain-HTTP server that speaks first: whatever the timing, the
     * client's TLS layer reads an HTTP status line where a record belongs. */
    assert_int_equal(canned_start(&s), 0);
    pthread_mutex_lock(&s.lock);
    s.greeting = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    pthread_mutex_unlock(&s.lock);
    snprintf(https, sizeof https, "https://127.0.0.1:%d/oauth2/token", s.port);
    emu_options(&E, &o);
    o.auth_url = https;
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_client_authenticate(c), MAAS_ERR_TLS);
    m = maas_last_error()->message;
    if (!strstr(m, "wrong version number") || !strstr(m, "the server answered without TLS"))
        fail_msg("unexplained: %s", m);
    maas_client_free(c);
    canned_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_http_refused_beyond_loopback),
        cmocka_unit_test(test_plain_http_environment_and_v1),
        cmocka_unit_test(test_log_reaches_token_fetch_without_secrets),
        cmocka_unit_test(test_api_error_message_escaped),
        cmocka_unit_test(test_token_error_description_escaped),
        cmocka_unit_test(test_stream_error_line_escaped),
        cmocka_unit_test(test_header_over_100k_is_protocol_error),
        cmocka_unit_test(test_basic_auth_form_encoded),
        cmocka_unit_test_setup_teardown(test_basic_auth_colon_in_id_at_the_emulator,
                                        emu_setup_colon_id, emu_teardown),
        cmocka_unit_test_setup_teardown(test_body_over_16mib_refused_unsent, emu_setup,
                                        emu_teardown),
        cmocka_unit_test_setup_teardown(test_multi_body_over_16mib_refused_at_add, emu_setup,
                                        emu_teardown),
        cmocka_unit_test(test_cloud_account_invalid_utf8),
        cmocka_unit_test_setup_teardown(test_connect_failure_names_endpoint, emu_setup,
                                        emu_teardown),
        cmocka_unit_test_setup_teardown(test_tls_to_plain_http_port_explained, emu_setup,
                                        emu_teardown),
    };
    int rc;
    (void)NO_MODEL;
    TOKEN_OK = http_json(200, "{\"access_token\":\"tok-123456\",\"expires_in\":3600,"
                              "\"token_type\":\"Bearer\"}");
    rc = cmocka_run_group_tests_name("security", tests, NULL, NULL);
    free(TOKEN_OK);
    return rc;
}
