/*
 * loop: a poll(2) event loop for a multi's socket and timer callbacks (loop.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "loop.h"

long engine_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- a poll(2) event loop for the multi's callbacks ---------------------------------- */

void engine_loop_init(struct engine_loop *l)
{
    memset(l, 0, sizeof *l);
    l->timer_ms = -1;
}

void engine_loop_free(struct engine_loop *l)
{
    free(l->fds);
    l->fds = NULL;
    l->nfds = l->cap = 0;
}

int engine_loop_socket(int fd, int what, void *payload, void *socket_payload)
{
    struct engine_loop *l = payload;
    int i;
    (void)socket_payload;
    l->socket_calls++;
    for (i = 0; i < l->nfds && l->fds[i].fd != fd; i++)
        ;
    if (what == MAAS_POLL_REMOVE) {
        if (i < l->nfds)
            l->fds[i] = l->fds[--l->nfds];
        return 0;
    }
    if (i == l->nfds) {
        if (l->nfds == l->cap) {
            int cap = l->cap ? 2 * l->cap : 16;
            struct pollfd *f = realloc(l->fds, (size_t)cap * sizeof *f);
            if (!f)
                return -1;
            l->fds = f;
            l->cap = cap;
        }
        l->nfds++;
    }
    l->fds[i].fd = fd;
    l->fds[i].events = (short)(((what & MAAS_POLL_IN) ? POLLIN : 0) |
                               ((what & MAAS_POLL_OUT) ? POLLOUT : 0));
    l->fds[i].revents = 0;
    return 0;
}

int engine_loop_timer(long timeout_ms, void *payload)
{
    struct engine_loop *l = payload;
    l->timer_calls++;
    l->timer_ms = timeout_ms;
    l->timer_set = engine_now_ms();
    return 0;
}

long engine_loop_timer_left(const struct engine_loop *l)
{
    long left;
    if (l->timer_ms < 0)
        return -1;
    left = l->timer_set + l->timer_ms - engine_now_ms();
    return left > 0 ? left : 0;
}

void engine_loop_turn(maas_multi *m, struct engine_loop *l, long max_wait_ms, size_t *running)
{
    long wait = engine_loop_timer_left(l);
    struct pollfd *fired = NULL;
    int n, i, k = 0;
    n = poll(l->fds, (nfds_t)l->nfds, (int)(wait < 0 ? max_wait_ms : wait));
    assert_true(n >= 0);
    if (n > 0) {
        /* Copy what fired first: the socket callback edits l->fds while the multi acts. */
        fired = malloc((size_t)l->nfds * sizeof *fired);
        assert_non_null(fired);
        for (i = 0; i < l->nfds; i++)
            if (l->fds[i].revents)
                fired[k++] = l->fds[i];
    }
    for (i = 0; i < k; i++) {
        int ev = 0;
        if (fired[i].revents & (POLLIN | POLLHUP | POLLERR))
            ev |= MAAS_POLL_IN;
        if (fired[i].revents & POLLOUT)
            ev |= MAAS_POLL_OUT;
        assert_int_equal(maas_multi_socket_action(m, fired[i].fd, ev, running), MAAS_OK);
    }
    free(fired);
    /* A wait that ended with nothing ready is taken as the timer firing, as
     * most loops do: early is harmless, the multi tells the timer again. */
    if (n == 0 || engine_loop_timer_left(l) == 0) {
        l->timer_ms = -1;
        assert_int_equal(maas_multi_socket_action(m, MAAS_SOCKET_TIMEOUT, 0, running), MAAS_OK);
    }
}

