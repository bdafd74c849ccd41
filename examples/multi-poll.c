/*
 * multi-poll: many generations at once on one thread, with a plain poll(2)
 * loop driving a maas_multi through its socket and timer callbacks.
 *
 *   multi-poll [N]     N concurrent streams (default 10), same prompt
 *
 * Configuration from the environment (MAAS_CLIENT_ID, ...). Prints one line
 * per finished stream and a summary; exit status 0 when every stream ended
 * with MAAS_OK.
 * SPDX-License-Identifier: MIT
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <maas/maas.h>

struct loop {
    struct pollfd *fds;
    int nfds, cap;
    long timer_ms;            /* -1: no timer */
    struct timespec timer_set;
};

/* libmaas says which socket to watch for what. */
static int on_socket(int fd, int what, void *payload, void *socket_payload)
{
    struct loop *l = payload;
    int i;
    (void)socket_payload;
    for (i = 0; i < l->nfds && l->fds[i].fd != fd; i++)
        ;
    if (what == MAAS_POLL_REMOVE) {
        if (i < l->nfds)
            l->fds[i] = l->fds[--l->nfds];
        return 0;
    }
    if (i == l->nfds) {
        if (l->nfds == l->cap) {
            int cap = l->cap ? 2 * l->cap : 64;
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

/* libmaas says when to call maas_multi_socket_action(.., MAAS_SOCKET_TIMEOUT, ..). */
static int on_timer(long timeout_ms, void *payload)
{
    struct loop *l = payload;
    l->timer_ms = timeout_ms;
    clock_gettime(CLOCK_MONOTONIC, &l->timer_set);
    return 0;
}

static long timer_left(const struct loop *l)
{
    struct timespec now;
    long elapsed;
    if (l->timer_ms < 0)
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &now);
    elapsed = (now.tv_sec - l->timer_set.tv_sec) * 1000 + (now.tv_nsec - l->timer_set.tv_nsec) / 1000000;
    return l->timer_ms > elapsed ? l->timer_ms - elapsed : 0;
}

struct job {
    int index;
    size_t tokens, bytes;
};

static int count_token(const maas_token *t, void *payload)
{
    struct job *j = payload;
    j->tokens++;
    j->bytes += t->text_len;
    return 0;
}

static int failures, finished;

static void done(maas_stream *s, maas_status st, void *payload)
{
    struct job *j = payload;
    finished++;
    if (st == MAAS_OK) {
        printf("stream %d: %zu tokens, %zu bytes\n", j->index, j->tokens, j->bytes);
    } else {
        failures++;
        printf("stream %d: %s: %s\n", j->index, maas_strerror(st), maas_stream_error(s)->message);
    }
    maas_stream_free(s);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 10, i;
    struct loop l = { NULL, 0, 0, -1, { 0, 0 } };
    maas_client *c = NULL;
    maas_multi *m = NULL;
    struct job *jobs;
    size_t running = 1;
    maas_status st;

    if (n < 1 || !(jobs = calloc((size_t)n, sizeof *jobs)))
        return 2;
    st = maas_client_new(&c, NULL);
    /* One token fetch up front keeps even that off the loop. */
    if (st == MAAS_OK)
        st = maas_client_authenticate(c);
    if (st == MAAS_OK)
        st = maas_multi_new(&m, c);
    if (st == MAAS_OK)
        st = maas_multi_set_callbacks(m, on_socket, on_timer, &l);
    for (i = 0; st == MAAS_OK && i < n; i++) {
        maas_request r = MAAS_REQUEST_INIT;
        maas_stream *s;
        r.model = "mistralai/Mistral-7B-Instruct-v0.1";
        r.prompt = "Write a short story about a robot.";
        r.max_new_tokens = 50;
        jobs[i].index = i;
        st = maas_multi_add(&s, m, &r, count_token, NULL, done, &jobs[i]);
    }
    if (st != MAAS_OK) {
        fprintf(stderr, "multi-poll: %s: %s\n", maas_strerror(st), maas_last_error()->message);
        maas_multi_free(m);
        maas_client_free(c);
        free(jobs);
        return 1;
    }

    while (running > 0 && st == MAAS_OK) {
        long wait = timer_left(&l);
        int ready = poll(l.fds, (nfds_t)l.nfds, wait < 0 ? 1000 : (int)wait), k = 0;
        struct pollfd *fired;
        if (ready < 0)
            break;
        /* Copy what fired first: the socket callback edits l.fds while we act. */
        fired = malloc((size_t)(ready > 0 ? ready : 1) * sizeof *fired);
        if (!fired)
            break;
        for (i = 0; i < l.nfds && k < ready; i++)
            if (l.fds[i].revents)
                fired[k++] = l.fds[i];
        for (i = 0; i < k && st == MAAS_OK; i++) {
            int ev = 0;
            if (fired[i].revents & (POLLIN | POLLHUP | POLLERR))
                ev |= MAAS_POLL_IN;
            if (fired[i].revents & POLLOUT)
                ev |= MAAS_POLL_OUT;
            st = maas_multi_socket_action(m, fired[i].fd, ev, &running);
        }
        free(fired);
        if (st == MAAS_OK && timer_left(&l) == 0) {
            l.timer_ms = -1;
            st = maas_multi_socket_action(m, MAAS_SOCKET_TIMEOUT, 0, &running);
        }
    }
    printf("%d streams finished, %d failed\n", finished, failures);
    maas_multi_free(m);
    maas_client_free(c);
    free(l.fds);
    free(jobs);
    return failures || finished != n ? 1 : 0;
}
