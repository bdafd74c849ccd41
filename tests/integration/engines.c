/*
 * engines: one generation through any of the four engines (see engines.h).
 * Assertions use cmocka, so a broken engine fails the calling test.
 */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "engines.h"

const char *const engine_name[ENGINES] = { "maas_generate", "maas_stream_next", "multi poll",
                                           "multi event loop" };


static void take_error(struct outcome *o, const maas_error *e)
{
    if (!e)
        return;
    snprintf(o->message, sizeof o->message, "%s", e->message);
    o->attempts = e->attempts;
    o->http_status = e->http_status;
    o->grpc_code = e->grpc_code;
}

static int count_token(const maas_token *t, void *p)
{
    struct outcome *o = p;
    (void)t;
    o->tokens++;
    return o->cancel_at && o->tokens >= o->cancel_at;
}

static int take_details(const maas_details *d, void *p)
{
    (void)d;
    ((struct outcome *)p)->got_details = 1;
    return 0;
}

static void on_done(maas_stream *s, maas_status st, void *p)
{
    struct outcome *o = p;
    o->done_calls++;
    o->st = st;
    o->done = 1;
    if (st != MAAS_OK)
        take_error(o, maas_stream_error(s));
}

static void freed_while_running(struct outcome *o)
{
    o->st = MAAS_ERR_CANCELLED;
    snprintf(o->message, sizeof o->message, "freed while running");
}

/* Drive until the stream ends, is freed by the job, or ENGINE_STUCK_MS passes. */
static void drive_multi(maas_multi *m, maas_stream **s, struct engine_loop *l, struct outcome *o,
                        const struct engine_job *job, long start)
{
    size_t running = 1;
    while (!o->done && engine_now_ms() - start < ENGINE_STUCK_MS) {
        if (job && job->free_running && job->stop_after && o->tokens >= job->stop_after) {
            size_t before = (size_t)o->done_calls;
            maas_stream_free(*s);
            *s = NULL;
            /* A freed stream's on_done never runs, not even from the free. */
            assert_int_equal(o->done_calls, before);
            freed_while_running(o);
            return;
        }
        if (!l) {
            long t = maas_multi_timeout(m);
            assert_int_equal(
                maas_multi_poll(m, (int)(t < 0 ? ENGINE_STUCK_MS : t), &running), MAAS_OK);
        } else {
            engine_loop_turn(m, l, ENGINE_STUCK_MS, &running);
        }
    }
}

static void run_pull(maas_client *c, const maas_request *r, const struct engine_job *job,
                     struct outcome *o)
{
    maas_stream *s = NULL;
    const maas_token *t;
    o->st = maas_stream_open(&s, c, r);
    if (o->st != MAAS_OK) {
        take_error(o, maas_last_error());
        return;
    }
    while ((o->st = maas_stream_next(s, &t)) == MAAS_OK) {
        o->tokens++;
        if (job && job->stop_after && o->tokens >= job->stop_after) {
            if (job->free_running) {
                maas_stream_free(s);
                freed_while_running(o);
                return;
            }
            maas_stream_cancel(s);
        }
    }
    if (o->st == MAAS_DONE) {
        o->st = MAAS_OK;
        o->got_details = maas_stream_details(s) != NULL;
    } else {
        take_error(o, maas_stream_error(s));
    }
    maas_stream_free(s);
}

static void run_multi(enum engine e, maas_client *c, const maas_request *r,
                      const struct engine_job *job, struct outcome *o, long start)
{
    maas_multi *m = NULL;
    maas_stream *s = NULL;
    struct engine_loop l;
    engine_loop_init(&l);
    assert_int_equal(maas_multi_new(&m, c), MAAS_OK);
    if (e == EVENT)
        assert_int_equal(
            maas_multi_set_callbacks(m, engine_loop_socket, engine_loop_timer, &l), MAAS_OK);
    o->st = maas_multi_add(&s, m, r, count_token, take_details, on_done, o);
    if (o->st != MAAS_OK) {
        take_error(o, maas_last_error());
    } else {
        drive_multi(m, &s, e == EVENT ? &l : NULL, o, job, start);
        if (s && !o->done) {
            o->st = MAAS_ERR_INTERNAL;
            snprintf(o->message, sizeof o->message, "the multi never ended the stream");
        }
        if (s)
            assert_int_equal(o->done_calls, 1);
        maas_stream_free(s);
    }
    o->ms = engine_now_ms() - start;
    if (job && job->before_teardown)
        job->before_teardown(e, o, job->arg);
    maas_multi_free(m);
    if (e == EVENT)
        assert_int_equal(l.nfds, 0); /* every socket handed back */
    engine_loop_free(&l);
}

void engine_run(enum engine e, maas_client *c, const maas_request *r, const struct engine_job *job,
                struct outcome *o)
{
    long start = engine_now_ms();
    memset(o, 0, sizeof *o);
    /* The callback's own way to give up; PULL cancels and frees itself. */
    if (job && job->stop_after && (e == BLOCKING || !job->free_running))
        o->cancel_at = job->stop_after;
    switch (e) {
    case BLOCKING:
        o->st = maas_generate(c, r, count_token, take_details, o);
        if (o->st != MAAS_OK)
            take_error(o, maas_last_error());
        break;
    case PULL:
        run_pull(c, r, job, o);
        break;
    case POLL:
    case EVENT:
        run_multi(e, c, r, job, o, start);
        break;
    default:
        fail();
    }
    if (e == BLOCKING || e == PULL) {
        o->ms = engine_now_ms() - start;
        if (job && job->before_teardown)
            job->before_teardown(e, o, job->arg);
    }
}
