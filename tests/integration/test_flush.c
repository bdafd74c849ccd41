/*
 * Integration: maas_token.last_buffered on every engine (maas_generate's
 * callbacks, the pull iterator, the multi) against a scripted server that
 * controls where the network reads end. The server sends the stream in
 * pieces, one send() each, and sends the next piece only once the client
 * has handed the test every token of the one before: so each piece is one
 * read, and the flag must be set exactly on the token that ends a piece
 * (and on the final message's token), never on the others.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <maas/maas.h>

/* ---- the stream ----------------------------------------------------------- */

#define TOKEN_LINE(id, text)                                                                  \
    "{\"result\":{\"response\":{\"token\":{\"id\":" #id ",\"text\":\"" text "\","             \
    "\"logprob\":-0.5,\"special\":false},\"top_tokens\":[],\"requestID\":\"rid-1\"}}}\n"

#define FINAL_LINE                                                                            \
    "{\"result\":{\"response\":{\"token\":{\"id\":2,\"text\":\"</s>\",\"special\":true},"      \
    "\"top_tokens\":[],\"generated_text\":\"a b c d e f\",\"details\":{\"finish_reason\":"    \
    "\"FINISH_REASON_EOS_TOKEN\",\"generated_tokens\":7},\"requestID\":\"rid-1\"}}}\n"

/* Each piece is sent once the client has delivered `after` tokens. */
typedef struct piece {
    const char *bytes;
    size_t after;
} piece;

static const piece pieces[] = {
    {TOKEN_LINE(10, "a") TOKEN_LINE(11, " b") TOKEN_LINE(12, " c"), 0},
    {TOKEN_LINE(13, " d"), 3},
    {TOKEN_LINE(14, " e") "\n" TOKEN_LINE(15, " f") FINAL_LINE, 4},
};
/* last_buffered per token, in order: a piece's last token, and the final
   message's; " f" is followed by the final message in its read. */
static const int expected[] = {0, 0, 1, 1, 0, 0, 1};
#define NTOK (sizeof expected / sizeof expected[0])

/* One token per piece, each sent once the one before was handed out. */
#define NSLOW 30
static piece slow_pieces[NSLOW + 1];
static char slow_lines[NSLOW][200];

/* The script the server plays: `pieces` unless a test says otherwise. */
static const piece *script = pieces;
static size_t script_len = sizeof pieces / sizeof pieces[0];

/* ---- the scripted server -------------------------------------------------- */

typedef struct server {
    int lfd;
    char url[64];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t delivered; /* tokens the client handed to the test */
    int stop;
    int waits_timed_out;
} server;

static server S;

static void delivered_one(void)
{
    pthread_mutex_lock(&S.mu);
    S.delivered++;
    pthread_cond_broadcast(&S.cv);
    pthread_mutex_unlock(&S.mu);
}

/* Wait for the client, generously: a client that never gets there fails the
   test on its flags, not by hanging. */
static void wait_delivered(size_t n)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    pthread_mutex_lock(&S.mu);
    while (S.delivered < n && !S.stop) {
        if (pthread_cond_timedwait(&S.cv, &S.mu, &until) != 0) {
            S.waits_timed_out++;
            break;
        }
    }
    pthread_mutex_unlock(&S.mu);
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Read a request head and its Content-Length body; the head in `head`. */
static int read_request(int fd, char *head, size_t cap)
{
    size_t len = 0, body = 0, want;
    char *end = NULL, *cl;
    while (end == NULL) {
        ssize_t k;
        if (len + 1 >= cap)
            return -1;
        k = recv(fd, head + len, cap - 1 - len, 0);
        if (k <= 0)
            return -1;
        len += (size_t)k;
        head[len] = '\0';
        end = strstr(head, "\r\n\r\n");
    }
    cl = strcasestr(head, "\r\ncontent-length:");
    want = cl ? strtoul(cl + 17, NULL, 10) : 0;
    body = len - (size_t)(end + 4 - head);
    while (body < want) {
        char sink[4096];
        ssize_t k = recv(fd, sink, sizeof sink, 0);
        if (k <= 0)
            return -1;
        body += (size_t)k;
    }
    return 0;
}

static void serve(int fd)
{
    static const char models[] =
        "{\"models\":[{\"model_name\":\"m\",\"product_name\":\"p\",\"product_id\":\"x\"}]}";
    char head[16384], out[512];
    size_t i;

    if (read_request(fd, head, sizeof head) != 0)
        return;
    if (strstr(head, "/models ") != NULL) {
        int n = snprintf(out, sizeof out,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                         strlen(models), models);
        send_all(fd, out, (size_t)n);
        return;
    }
    /* No length, no chunking: the body is exactly the pieces, ended by the close. */
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                             "Connection: close\r\n\r\n";
    if (send_all(fd, ok, sizeof ok - 1) != 0)
        return;
    for (i = 0; i < script_len; i++) {
        wait_delivered(script[i].after);
        if (send_all(fd, script[i].bytes, strlen(script[i].bytes)) != 0)
            return;
    }
}

static void *server_main(void *arg)
{
    (void)arg;
    for (;;) {
        struct pollfd p = {S.lfd, POLLIN, 0};
        int fd, stop;
        pthread_mutex_lock(&S.mu);
        stop = S.stop;
        pthread_mutex_unlock(&S.mu);
        if (stop)
            break;
        if (poll(&p, 1, 100) <= 0)
            continue;
        fd = accept(S.lfd, NULL, NULL);
        if (fd < 0)
            continue;
        serve(fd);
        shutdown(fd, SHUT_WR);
        close(fd);
    }
    return NULL;
}

static int setup(void **state)
{
    struct sockaddr_in a;
    socklen_t n = sizeof a;
    (void)state;
    memset(&S, 0, sizeof S);
    pthread_mutex_init(&S.mu, NULL);
    pthread_cond_init(&S.cv, NULL);
    S.lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(S.lfd >= 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(S.lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(S.lfd, 16), 0);
    assert_int_equal(getsockname(S.lfd, (struct sockaddr *)&a, &n), 0);
    snprintf(S.url, sizeof S.url, "http://127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
    assert_int_equal(pthread_create(&S.thread, NULL, server_main, NULL), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pthread_mutex_lock(&S.mu);
    S.stop = 1;
    pthread_cond_broadcast(&S.cv);
    pthread_mutex_unlock(&S.mu);
    pthread_join(S.thread, NULL);
    close(S.lfd);
    pthread_cond_destroy(&S.cv);
    pthread_mutex_destroy(&S.mu);
    return 0;
}

/* ---- the client side ------------------------------------------------------ */

typedef struct seen {
    size_t n;
    int flags[NTOK + 4];
    unsigned ids[NTOK + 4];
} seen;

static int record(const maas_token *t, void *payload)
{
    seen *s = payload;
    if (s->n < NTOK + 4) {
        s->flags[s->n] = t->last_buffered != 0;
        s->ids[s->n] = t->id;
    }
    s->n++;
    delivered_one();
    return 0;
}

static maas_client *new_client(void)
{
    maas_client_options o;
    maas_client *c = NULL;
    assert_int_equal(maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION), MAAS_OK);
    o.token = "static-test-token";
    o.api_base_url = S.url;
    o.cloud_account = "123456789012";
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    return c;
}

static void fresh_round(maas_request *r)
{
    pthread_mutex_lock(&S.mu);
    S.delivered = 0;
    S.waits_timed_out = 0;
    pthread_mutex_unlock(&S.mu);
    r->model = "m";
    r->prompt = "a prompt";
}

static void check(const seen *s)
{
    size_t i;
    assert_int_equal(s->n, NTOK);
    for (i = 0; i < NTOK; i++) {
        if (s->flags[i] != expected[i])
            fail_msg("token %zu (id %u): last_buffered %d, expected %d", i, s->ids[i],
                     s->flags[i], expected[i]);
    }
    assert_int_equal(S.waits_timed_out, 0);
}

/* The status, with the library's words when it is not the one expected. */
static void expect_status(maas_status got, maas_status want)
{
    if (got != want)
        fail_msg("%s (expected %s): %s", maas_status_name(got), maas_status_name(want),
                 maas_last_error()->message);
}

static void test_callbacks(void **state)
{
    maas_client *c = new_client();
    maas_request r = MAAS_REQUEST_INIT;
    seen s;
    (void)state;
    memset(&s, 0, sizeof s);
    fresh_round(&r);
    expect_status(maas_generate(c, &r, record, NULL, &s), MAAS_OK);
    check(&s);
    maas_client_free(c);
}

static void test_pull_iterator(void **state)
{
    maas_client *c = new_client();
    maas_request r = MAAS_REQUEST_INIT;
    maas_stream *st = NULL;
    const maas_token *t;
    maas_status rc;
    seen s;
    (void)state;
    memset(&s, 0, sizeof s);
    fresh_round(&r);
    expect_status(maas_stream_open(&st, c, &r), MAAS_OK);
    while ((rc = maas_stream_next(st, &t)) == MAAS_OK)
        record(t, &s);
    assert_int_equal(rc, MAAS_DONE);
    check(&s);
    maas_stream_free(st);
    maas_client_free(c);
}

typedef struct box {
    seen s; /* first: record() takes the box as its seen */
    maas_status done;
} box;

static void on_done(maas_stream *st, maas_status status, void *payload)
{
    (void)st;
    ((box *)payload)->done = status;
}

static void test_multi(void **state)
{
    maas_client *c = new_client();
    maas_request r = MAAS_REQUEST_INIT;
    maas_multi *m = NULL;
    maas_stream *st = NULL;
    box b;
    size_t running = 1;
    int rounds = 0;
    (void)state;
    memset(&b, 0, sizeof b);
    b.done = (maas_status)-1000; /* not called yet */
    fresh_round(&r);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    expect_status(maas_multi_add(&st, m, &r, record, NULL, on_done, &b), MAAS_OK);
    while (running > 0 && rounds++ < 600)
        assert_int_equal(maas_multi_poll(m, 1000, &running), MAAS_OK);
    assert_int_equal(running, 0);
    assert_int_equal(b.done, MAAS_OK);
    check(&b.s);
    maas_stream_free(st);
    maas_multi_free(m);
    maas_client_free(c);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * A token is handed out as soon as its line has arrived, not when the next
 * packet or the transfer's 1 s poll clock wakes the blocking loop. The server
 * sends each line only after the one before was handed out, so nothing else
 * wakes the loop: a client that waited for its poll clock would take at least
 * NSLOW - 1 seconds. The bound is half that, far above what the exchange
 * costs on a loaded machine under valgrind.
 */
static void test_each_token_handed_out_on_arrival(void **state)
{
    maas_client *c = new_client();
    maas_request r = MAAS_REQUEST_INIT;
    maas_stream *st = NULL;
    const maas_token *t;
    maas_status rc;
    double t0;
    seen s;
    size_t i, n = 0;
    (void)state;

    for (i = 0; i < NSLOW; i++) {
        snprintf(slow_lines[i], sizeof slow_lines[i],
                 "{\"result\":{\"response\":{\"token\":{\"id\":%zu,\"text\":\"w%zu \","
                 "\"special\":false},\"top_tokens\":[],\"requestID\":\"rid-2\"}}}\n",
                 i + 100, i);
        slow_pieces[i].bytes = slow_lines[i];
        slow_pieces[i].after = i;
    }
    slow_pieces[NSLOW].bytes = FINAL_LINE;
    slow_pieces[NSLOW].after = NSLOW;
    script = slow_pieces;
    script_len = NSLOW + 1;

    memset(&s, 0, sizeof s);
    fresh_round(&r);
    expect_status(maas_stream_open(&st, c, &r), MAAS_OK);
    t0 = now_s();
    while ((rc = maas_stream_next(st, &t)) == MAAS_OK) {
        if (n < NSLOW)
            assert_int_equal(t->last_buffered, 1); /* each came alone */
        n++;
        delivered_one();
    }
    assert_int_equal(rc, MAAS_DONE);
    assert_int_equal(n, NSLOW + 1);
    if (now_s() - t0 >= (NSLOW - 1) / 2.0)
        fail_msg("%d lines, each sent after the last was handed out, took %.1f s: "
                 "tokens waited for the poll clock", NSLOW, now_s() - t0);
    assert_int_equal(S.waits_timed_out, 0);
    script = pieces;
    script_len = sizeof pieces / sizeof pieces[0];
    maas_stream_free(st);
    maas_client_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pull_iterator, setup, teardown),
        cmocka_unit_test_setup_teardown(test_multi, setup, teardown),
        cmocka_unit_test_setup_teardown(test_each_token_handed_out_on_arrival, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
