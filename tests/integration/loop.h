/*
 * loop: an application's event loop for a maas_multi in event-loop mode,
 * as the EVENT engine (engines.h) runs it and as suites that drive a multi
 * themselves use it: poll(2) over the sockets the multi's socket callback
 * hands it and the one timer its timer callback sets. Set up with
 * maas_multi_set_callbacks(m, engine_loop_socket, engine_loop_timer, &loop).
 * engine_loop_turn asserts with cmocka; the callbacks do not.
 */
#ifndef MAAS_TEST_LOOP_H
#define MAAS_TEST_LOOP_H

#include <poll.h>
#include <stddef.h>
#include <maas/maas.h>

struct engine_loop {
    struct pollfd *fds; /* grown as the socket callback adds sockets */
    int nfds, cap;
    long timer_ms;      /* -1: no timer */
    long timer_set;     /* engine_now_ms() when it was set */
    int socket_calls, timer_calls;
};

void engine_loop_init(struct engine_loop *l);
void engine_loop_free(struct engine_loop *l);
int engine_loop_socket(int fd, int what, void *payload, void *socket_payload);
int engine_loop_timer(long timeout_ms, void *payload);
/* ms until the timer is due (0: due now), -1 when none is set. */
long engine_loop_timer_left(const struct engine_loop *l);
/*
 * One turn: wait for a socket or the timer (with no timer, at most
 * max_wait_ms), hand what fired to the multi, then the timer if it is due
 * or nothing fired.
 */
void engine_loop_turn(maas_multi *m, struct engine_loop *l, long max_wait_ms, size_t *running);

/* Milliseconds on the monotonic clock. */
long engine_now_ms(void);

#endif
