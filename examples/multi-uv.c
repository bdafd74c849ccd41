/*
 * multi-uv: many generations at once inside a libuv event loop. libmaas
 * reports the sockets to watch and its timer; libuv watches them and hands
 * the events back with maas_multi_socket_action().
 *
 *   multi-uv [N]     N concurrent streams (default 10)
 *
 * Configuration from the environment (MAAS_CLIENT_ID, ...). Exit status 0
 * when every stream ended with MAAS_OK.
 * SPDX-License-Identifier: MIT
 */
#include <stdio.h>
#include <stdlib.h>

#include <uv.h>
#include <maas/maas.h>

struct app {
    uv_loop_t *loop;
    uv_timer_t timer;
    maas_multi *multi;
    int finished, failures;
};

/* One poll handle per socket, attached to it with maas_multi_assign(). */
struct watch {
    uv_poll_t poll;
    int fd;
    struct app *app;
};

static void act(struct app *a, int fd, int events)
{
    size_t running;
    if (maas_multi_socket_action(a->multi, fd, events, &running) != MAAS_OK)
        fprintf(stderr, "multi-uv: %s\n", maas_last_error()->message);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct watch *w = h->data;
    int ev = 0;
    if (status < 0 || (events & UV_READABLE))
        ev |= MAAS_POLL_IN;
    if (events & UV_WRITABLE)
        ev |= MAAS_POLL_OUT;
    act(w->app, w->fd, ev);
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

static int on_socket(int fd, int what, void *payload, void *socket_payload)
{
    struct app *a = payload;
    struct watch *w = socket_payload;
    int events = 0;
    if (what == MAAS_POLL_REMOVE) {
        if (w) {
            uv_poll_stop(&w->poll);
            uv_close((uv_handle_t *)&w->poll, on_closed);
            maas_multi_assign(a->multi, fd, NULL);
        }
        return 0;
    }
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w)
            return -1;
        w->fd = fd;
        w->app = a;
        w->poll.data = w;
        uv_poll_init_socket(a->loop, &w->poll, fd);
        maas_multi_assign(a->multi, fd, w);
    }
    if (what & MAAS_POLL_IN)
        events |= UV_READABLE;
    if (what & MAAS_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&w->poll, events, on_poll);
    return 0;
}

static void on_timeout(uv_timer_t *t)
{
    act(t->data, MAAS_SOCKET_TIMEOUT, 0);
}

static int on_timer(long timeout_ms, void *payload)
{
    struct app *a = payload;
    if (timeout_ms < 0)
        uv_timer_stop(&a->timer);
    else
        uv_timer_start(&a->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static void done(maas_stream *s, maas_status st, void *payload)
{
    struct app *a = payload;
    a->finished++;
    if (st != MAAS_OK) {
        a->failures++;
        fprintf(stderr, "stream: %s: %s\n", maas_strerror(st), maas_stream_error(s)->message);
    }
    maas_stream_free(s);
    /* The last one: the multi's wake-up pipe would keep the loop alive. */
    if (a->finished == *(int *)uv_loop_get_data(a->loop))
        uv_stop(a->loop);
}

static int print_token(const maas_token *t, void *payload)
{
    (void)payload;
    if (!t->special)
        fwrite(t->text, 1, t->text_len, stdout);
    return 0;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 10, i;
    struct app a = { uv_default_loop(), { 0 }, NULL, 0, 0 };
    maas_client *c = NULL;
    maas_status st;

    if (n < 1)
        return 2;
    uv_loop_set_data(a.loop, &n);
    uv_timer_init(a.loop, &a.timer);
    a.timer.data = &a;
    st = maas_client_new(&c, NULL);
    if (st == MAAS_OK)
        st = maas_client_authenticate(c);
    if (st == MAAS_OK)
        st = maas_multi_new(&a.multi, c);
    if (st == MAAS_OK)
        st = maas_multi_set_callbacks(a.multi, on_socket, on_timer, &a);
    for (i = 0; st == MAAS_OK && i < n; i++) {
        maas_request r = MAAS_REQUEST_INIT;
        maas_stream *s;
        r.model = "mistralai/Mistral-7B-Instruct-v0.1";
        r.prompt = "Tell me a joke";
        r.max_new_tokens = 20;
        st = maas_multi_add(&s, a.multi, &r, i == 0 ? print_token : NULL, NULL, done, &a);
    }
    if (st != MAAS_OK) {
        fprintf(stderr, "multi-uv: %s: %s\n", maas_strerror(st), maas_last_error()->message);
        return 1;
    }
    uv_run(a.loop, UV_RUN_DEFAULT);
    printf("\n%d streams finished, %d failed\n", a.finished, a.failures);
    maas_multi_free(a.multi); /* removes the pipe's watcher through on_socket */
    uv_timer_stop(&a.timer);
    uv_close((uv_handle_t *)&a.timer, NULL);
    uv_run(a.loop, UV_RUN_DEFAULT); /* let the closed handles go */
    uv_loop_close(a.loop);
    maas_client_free(c);
    return a.failures || a.finished != n ? 1 : 0;
}
