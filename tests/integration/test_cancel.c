/*
 * Integration: a cancellation from another thread ends a call that is
 * blocked waiting on a silent server, at once, on every engine: the blocking
 * path (maas_stream_next), a multi driven by maas_multi_poll, and a multi in
 * an application's poll(2) loop.
 *
 * Each test makes the driving thread block first (it is seen asleep in the
 * kernel, with no context switch for 100 ms), then cancels, then asserts
 * that the call returned far below the wait it was in: the blocking path
 * caps each wait at 1 s, the event loop here waits up to 10 s. Without the
 * wake-up the return would come at the end of that wait.
 *
 * A multi driven by maas_multi_poll is woken by libcurl's own timer every
 * 200 ms or so while a transfer runs, so there the test proves the cancel
 * lands, within the bound, but not that the wake-up is what delivered it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "loop.h"
#include "harness.h"

static emu E;

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"
#define STALL "Tell me a joke [[fault:stall-after=1]]"
/* Far below every wait the cancel must cut short (1 s and 10 s), wide enough
 * for a loaded machine under valgrind. */
#define CANCEL_BOUND_MS 500

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/* The thread's state letter and its voluntary context switches, from /proc. */
static int thread_state(pid_t tid, char *state, long *switches)
{
    char path[96], buf[4096], *p;
    FILE *f;
    size_t n;
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    if (!(f = fopen(path, "r")))
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (!(p = strrchr(buf, ')')) || p[1] != ' ')
        return -1;
    *state = p[2];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
    if (!(f = fopen(path, "r")))
        return -1;
    *switches = -1;
    while (fgets(buf, sizeof buf, f))
        if (sscanf(buf, "voluntary_ctxt_switches: %ld", switches) == 1)
            break;
    fclose(f);
    return *switches < 0 ? -1 : 0;
}

struct canceller {
    maas_stream *s;
    atomic_int tid;        /* the driving thread, once it is about to block */
    atomic_long cancel_at; /* when maas_stream_cancel was called */
    int blocked;           /* the driving thread was seen blocked */
};

/*
 * Wait until the driving thread has gone to sleep afresh (a context switch
 * seen, then 100 ms asleep without another), then cancel. A sleep that began
 * before we looked is not trusted: it may be about to end on its own.
 */
static void *cancel_when_blocked(void *p)
{
    struct canceller *k = p;
    long end = now_ms() + 30000, last = -1, stable_since = 0;
    int fresh = 0;
    char st;
    long sw;
    while (!atomic_load(&k->tid) && now_ms() < end)
        sched_yield();
    while (now_ms() < end) {
        struct timespec ts = { 0, 2 * 1000000L };
        if (thread_state((pid_t)atomic_load(&k->tid), &st, &sw) != 0)
            break;
        if (sw != last || st != 'S') {
            fresh = last >= 0 && sw != last;
            last = sw;
            stable_since = now_ms();
        } else if (fresh && now_ms() - stable_since >= 100) {
            k->blocked = 1;
            break;
        }
        nanosleep(&ts, NULL);
    }
    atomic_store(&k->cancel_at, now_ms());
    maas_stream_cancel(k->s);
    return NULL;
}

static void start_canceller(pthread_t *th, struct canceller *k, maas_stream *s)
{
    k->s = s;
    atomic_init(&k->tid, 0);
    atomic_init(&k->cancel_at, 0);
    k->blocked = 0;
    assert_int_equal(pthread_create(th, NULL, cancel_when_blocked, k), 0);
    atomic_store(&k->tid, (int)syscall(SYS_gettid));
}

/* The call returned within the bound after the cancel, and only after it. */
static void assert_prompt(const struct canceller *k, long returned_at)
{
    long late = returned_at - atomic_load(&k->cancel_at);
    assert_true(k->blocked);
    if (getenv("MAAS_TEST_VERBOSE"))
        print_message("cancel to return: %ld ms\n", late);
    if (late < 0 || late >= CANCEL_BOUND_MS)
        fail_msg("the call returned %ld ms after the cancel (bound %d ms)", late,
                 CANCEL_BOUND_MS);
}

static maas_client *client(void)
{
    maas_client_options o;
    maas_client *c = NULL;
    emu_options(&E, &o);
    o.idle_timeout_ms = 60000; /* only the cancel can end the stall soon */
    o.max_retries = 0;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    return c;
}

/*
 * Connection hygiene, checked while the client is alive (maas_client_free
 * closes everything anyway): nothing still served, at most `kept` idle
 * connections to the API; none at all after the free.
 */
static void finish_keeping(maas_client *c, long kept)
{
    char why[256];
    if (emu_idle(&E, kept, why, sizeof why) != 0)
        fail_msg("before maas_client_free: %s", why);
    maas_client_free(c);
    assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
}

static void finish(maas_client *c)
{
    finish_keeping(c, 1);
}

static void test_blocking_cancel_is_prompt(void **state)
{
    maas_client *c = client();
    maas_request r = MAAS_REQUEST_INIT;
    maas_stream *s = NULL;
    const maas_token *t;
    struct canceller k;
    pthread_t th;
    long back;
    (void)state;
    r.model = MISTRAL;
    r.prompt = STALL;
    r.max_new_tokens = 10;
    assert_int_equal(maas_stream_open(&s, c, &r), MAAS_OK);
    assert_int_equal(maas_stream_next(s, &t), MAAS_OK);
    start_canceller(&th, &k, s);
    /* Blocks in 1 s waits on the silent server until the cancel wakes it. */
    assert_int_equal(maas_stream_next(s, &t), MAAS_ERR_CANCELLED);
    back = now_ms();
    pthread_join(th, NULL);
    assert_prompt(&k, back);
    maas_stream_free(s);
    finish(c);
}

struct one {
    int done;
    maas_status status;
    int tokens;
};

static int on_token(const maas_token *t, void *p)
{
    struct one *o = p;
    (void)t;
    o->tokens++;
    return 0;
}

static void on_done(maas_stream *s, maas_status st, void *p)
{
    struct one *o = p;
    (void)s;
    o->done = 1;
    o->status = st;
}

static maas_stream *add(maas_multi *m, struct one *o)
{
    maas_request r = MAAS_REQUEST_INIT;
    maas_stream *s = NULL;
    r.model = MISTRAL;
    r.prompt = STALL;
    r.max_new_tokens = 10;
    assert_int_equal(maas_multi_add(&s, m, &r, on_token, NULL, on_done, o), MAAS_OK);
    return s;
}

static void test_multi_poll_cancel_is_prompt(void **state)
{
    maas_client *c = client();
    maas_multi *m = NULL;
    maas_stream *s;
    struct one o = { 0, MAAS_OK, 0 };
    struct canceller k;
    pthread_t th;
    size_t running = 1;
    long end, back = 0;
    (void)state;
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    s = add(m, &o);
    /* The canceller waits until this thread sleeps in the poll on the stall. */
    start_canceller(&th, &k, s);
    end = now_ms() + 60000;
    while (!o.done && now_ms() < end) {
        assert_int_equal(maas_multi_poll(m, 10000, &running), MAAS_OK);
        back = now_ms();
    }
    pthread_join(th, NULL);
    assert_true(o.done);
    assert_int_equal(o.status, MAAS_ERR_CANCELLED);
    assert_prompt(&k, back);
    maas_stream_free(s);
    maas_multi_free(m);
    finish(c);
}


static void test_event_loop_cancel_is_prompt(void **state)
{
    maas_client *c = client();
    maas_multi *m = NULL;
    maas_stream *s;
    struct one o = { 0, MAAS_OK, 0 };
    struct engine_loop l;
    struct canceller k;
    pthread_t th;
    size_t running = 1;
    long end, back = 0;
    int started = 0;
    (void)state;
    engine_loop_init(&l);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    assert_int_equal(maas_multi_set_callbacks(m, engine_loop_socket, engine_loop_timer, &l),
                     MAAS_OK);
    s = add(m, &o);
    end = now_ms() + 20000;
    while (!o.done && now_ms() < end) {
        /* Wait for the timer, but never more than 10 s. Once the stream
         * stalls, the loop waits on its sockets alone: libcurl's own timer
         * would wake it every 200 ms or so and hide a missing wake-up, and
         * only the wake-up pipe can end that sleep early. */
        long left = engine_loop_timer_left(&l);
        long wait = left < 0 || o.tokens > 0 ? 10000 : left;
        struct pollfd fired[16];
        int n, i, nf = 0;
        if (wait > 10000)
            wait = 10000;
        if (wait < 0)
            wait = 0;
        if (!started) {
            start_canceller(&th, &k, s);
            started = 1;
        }
        assert_true(l.nfds <= 16);
        n = poll(l.fds, (nfds_t)l.nfds, (int)wait);
        assert_true(n >= 0);
        for (i = 0; i < l.nfds && nf < n; i++)
            if (l.fds[i].revents)
                fired[nf++] = l.fds[i];
        for (i = 0; i < nf; i++) {
            int ev = 0;
            if (fired[i].revents & (POLLIN | POLLHUP | POLLERR))
                ev |= MAAS_POLL_IN;
            if (fired[i].revents & POLLOUT)
                ev |= MAAS_POLL_OUT;
            assert_int_equal(maas_multi_socket_action(m, fired[i].fd, ev, &running), MAAS_OK);
        }
        if (engine_loop_timer_left(&l) == 0 && !o.tokens) {
            l.timer_ms = -1;
            assert_int_equal(maas_multi_socket_action(m, MAAS_SOCKET_TIMEOUT, 0, &running),
                             MAAS_OK);
        }
        back = now_ms();
    }
    assert_true(started);
    pthread_join(th, NULL);
    assert_true(o.done);
    assert_int_equal(o.status, MAAS_ERR_CANCELLED);
    assert_prompt(&k, back);
    maas_stream_free(s);
    maas_multi_free(m);
    engine_loop_free(&l);
    finish(c);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_blocking_cancel_is_prompt, reset),
        cmocka_unit_test_setup(test_multi_poll_cancel_is_prompt, reset),
        cmocka_unit_test_setup(test_event_loop_cancel_is_prompt, reset),
    };
    /* cmocka ignores a failing teardown: the emulator's exit status is checked here. */
    return emu_suite_result(cmocka_run_group_tests_name("cancel", tests, group_setup,
                                                        group_teardown),
                            &E);
}
