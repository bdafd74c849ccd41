/*
 * multi: many streams on one thread (maas_multi_* in maas/maas.h). The
 * streams tell it of their events through the maas_stream_sched table below.
 *
 * Work happens in pump(), after libcurl has returned from perform or
 * socket_action: finished transfers are noted, cancelled streams and streams
 * with new bytes are advanced (their callbacks called), and streams whose
 * clock is due are advanced too. Callbacks therefore never run inside a
 * libcurl callback, and a stream's bytes are decoded right after they came.
 *
 * Clocks live in a min-heap keyed by each stream's earliest deadline. The
 * idle clock moves later with every message, and the heap is not told: an
 * entry that comes due early is simply put back with the stream's real
 * deadline. So a token costs no heap work; a stream costs one heap operation
 * per idle period.
 *
 * No maas_multi_* call waits on the network. A stream that needs the model
 * catalogue or a token that the client does not hold yet waits in the multi
 * (S_WAIT_CATALOGUE, S_WAIT_TOKEN) while the multi's fetcher, one thread of
 * its own started on first need, fetches it through the client's blocking
 * calls; the result is handed to every stream waiting for it at once (one
 * fetch serves them all, its failure ends each of them) on the multi's own
 * thread, after a maas_multi_wakeup(). Why a thread rather than one more
 * transfer in the multi: the token cache is shared with the client's blocking
 * calls on other threads, and its rules (one fetch at a time, waiters served
 * by it, a rate limit, a back-off after a failed refresh, the 401 drop) live
 * in one place, in their blocking form; libcurl resolves names on a thread
 * of its own for the same reason.
 */
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "call.h"
#include "clientdata.h"
#include "clock.h"
#include "http.h"
#include "log.h"
#include "models.h"
#include "stream.h"

/* The multi's fetcher. The multi's thread sets want_*; the fetcher posts
 * results; both under lock. */
struct fetcher {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    int started;
    int stop;
    int want_catalogue, want_token;
    atomic_int cancel;            /* the multi is being freed: cut the fetch short */
    int catalogue_posted, token_posted;
    maas_status catalogue_st, token_st;
    maas_error_rec catalogue_err, token_err;
    maas_auth_ticket token;       /* the posted token (token_st == MAAS_OK) */
};

struct maas_multi {
    maas_client *c;
    CURLM *cm;
    maas_stream *streams;         /* every stream of the multi until freed */
    size_t running;               /* streams whose on_done has not been called */
    maas_stream *ready_head, *ready_tail;
    maas_stream **heap;
    int64_t *keys;
    size_t heap_len, heap_cap;
    atomic_int cancels;           /* maas_stream_cancel() calls not yet looked at */
    maas_socket_cb on_socket;
    maas_timer_cb on_timer;
    void *cb_payload;
    int64_t curl_due;             /* when libcurl wants a timeout action; INT64_MAX: never */
    int64_t told_due;             /* what the application's timer was last set to */
    int wake[2];                  /* event-loop mode: a pipe other threads write to */
    void *wake_payload;           /* what the application assigned to wake[0] */
    int ever_added;               /* streams were added: the mode is fixed */
    int aborted;                  /* the socket callback refused: libcurl gave the multi up */
    struct fetcher f;
    atomic_int posted;            /* the fetcher posted a result not yet handed out */
};

/* ---- the ready list --------------------------------------------------------- */

static void maas_multi_mark_ready(maas_stream *s)
{
    maas_multi *m = s->sched_data;
    if (!m || s->ready || s->finished)
        return;
    s->ready = 1;
    s->rnext = NULL;
    s->rprev = m->ready_tail;
    if (m->ready_tail)
        m->ready_tail->rnext = s;
    else
        m->ready_head = s;
    m->ready_tail = s;
}

static void unready(maas_multi *m, maas_stream *s)
{
    if (!s->ready)
        return;
    if (s->rprev)
        s->rprev->rnext = s->rnext;
    else
        m->ready_head = s->rnext;
    if (s->rnext)
        s->rnext->rprev = s->rprev;
    else
        m->ready_tail = s->rprev;
    s->rprev = s->rnext = NULL;
    s->ready = 0;
}

/* ---- the clock heap ------------------------------------------------------------ */

static void heap_set(maas_multi *m, size_t i, maas_stream *s, int64_t key)
{
    m->heap[i] = s;
    m->keys[i] = key;
    s->heap_index = i;
}

static void sift_up(maas_multi *m, size_t i)
{
    maas_stream *s = m->heap[i];
    int64_t key = m->keys[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (m->keys[parent] <= key)
            break;
        heap_set(m, i, m->heap[parent], m->keys[parent]);
        i = parent;
    }
    heap_set(m, i, s, key);
}

static void sift_down(maas_multi *m, size_t i)
{
    maas_stream *s = m->heap[i];
    int64_t key = m->keys[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= m->heap_len)
            break;
        if (child + 1 < m->heap_len && m->keys[child + 1] < m->keys[child])
            child++;
        if (m->keys[child] >= key)
            break;
        heap_set(m, i, m->heap[child], m->keys[child]);
        i = child;
    }
    heap_set(m, i, s, key);
}

static void heap_remove(maas_multi *m, maas_stream *s)
{
    size_t i = s->heap_index, last;
    if (i == SIZE_MAX)
        return;
    s->heap_index = SIZE_MAX;
    last = --m->heap_len;
    if (i == last)
        return;
    heap_set(m, i, m->heap[last], m->keys[last]);
    sift_up(m, i);
    sift_down(m, m->heap[i]->heap_index);
}

/* Put the stream in the heap at its current earliest deadline (or take it out). */
static void maas_multi_track(maas_stream *s)
{
    maas_multi *m = s->sched_data;
    int64_t key;
    if (!m)
        return;
    key = s->finished ? INT64_MAX : maas_stream_next_deadline(s);
    if (key == INT64_MAX) {
        heap_remove(m, s);
        return;
    }
    if (s->heap_index != SIZE_MAX) {
        m->keys[s->heap_index] = key;
        sift_up(m, s->heap_index);
        sift_down(m, s->heap_index);
        return;
    }
    if (m->heap_len == m->heap_cap) {
        size_t cap = m->heap_cap ? m->heap_cap * 2 : 64;
        maas_stream **h = realloc(m->heap, cap * sizeof *h);
        int64_t *k;
        if (!h)
            return; /* the stream's clocks are still checked when it next has bytes */
        m->heap = h;
        k = realloc(m->keys, cap * sizeof *k);
        if (!k)
            return;
        m->keys = k;
        m->heap_cap = cap;
    }
    m->heap_len++;
    heap_set(m, m->heap_len - 1, s, key);
    sift_up(m, m->heap_len - 1);
}

/* ---- the application's timer ---------------------------------------------------- */

static int64_t next_due(const maas_multi *m)
{
    int64_t due = m->curl_due;
    /* Streams still ready when pump() stopped its rounds: due at once. */
    if (m->ready_head)
        return maas_now_ms();
    if (m->heap_len && m->keys[0] < due)
        due = m->keys[0];
    return due;
}

static void tell_timer(maas_multi *m)
{
    int64_t due, now;
    if (!m->on_timer)
        return;
    due = next_due(m);
    if (due == m->told_due)
        return;
    m->told_due = due;
    now = maas_now_ms();
    m->on_timer(due == INT64_MAX ? -1L : due <= now ? 0L : (long)(due - now), m->cb_payload);
}

static int curl_timer(CURLM *cm, long timeout_ms, void *userp)
{
    maas_multi *m = userp;
    (void)cm;
    m->curl_due = timeout_ms < 0 ? INT64_MAX : maas_now_ms() + timeout_ms;
    tell_timer(m);
    return 0;
}

static int curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    maas_multi *m = userp;
    int rc;
    (void)easy;
    /* CURL_POLL_* and MAAS_POLL_* share their values (checked below). */
    rc = m->on_socket ? m->on_socket((int)fd, what, m->cb_payload, socketp) : 0;
    if (rc != 0)
        m->aborted = 1; /* libcurl stops the whole multi: say so from now on */
    return rc;
}

#if CURL_POLL_IN != MAAS_POLL_IN || CURL_POLL_OUT != MAAS_POLL_OUT || \
    CURL_POLL_INOUT != MAAS_POLL_INOUT || CURL_POLL_REMOVE != MAAS_POLL_REMOVE
#error "MAAS_POLL_* must equal CURL_POLL_*"
#endif

/* ---- the fetcher ---------------------------------------------------------------- */

static void *fetcher_main(void *payload)
{
    maas_multi *m = payload;
    struct fetcher *f = &m->f;

    pthread_mutex_lock(&f->lock);
    for (;;) {
        int catalogue, token;
        maas_status cst = MAAS_OK, tst = MAAS_OK;
        maas_error_rec cerr, terr;
        maas_auth_ticket t = { NULL, 0 };

        while (!f->stop && !f->want_catalogue && !f->want_token)
            pthread_cond_wait(&f->cond, &f->lock);
        if (f->stop)
            break;
        catalogue = f->want_catalogue;
        token = f->want_token;
        f->want_catalogue = f->want_token = 0;
        pthread_mutex_unlock(&f->lock);

        maas_error_clear(&cerr);
        maas_error_clear(&terr);
        /* Not bounded by the client's deadline_ms: each waiting stream keeps
         * its own clock, and the call's own timeout (models_timeout_ms,
         * token_timeout_ms) bounds the fetch. */
        if (catalogue && !maas_models_catalogue(m->c, &f->cancel, MAAS_UNBOUNDED, &cerr))
            cst = cerr.pub.status;
        if (token)
            tst = maas_auth_acquire_for(m->c, &t, &f->cancel, MAAS_UNBOUNDED, &terr);

        pthread_mutex_lock(&f->lock);
        /* Streams that asked while this fetch ran are served by its result:
         * hand_out gives it to every stream waiting when it is handed out. */
        if (catalogue) {
            f->want_catalogue = 0;
            f->catalogue_posted = 1;
            f->catalogue_st = cst;
            maas_error_copy(&f->catalogue_err, &cerr);
        }
        if (token) {
            f->want_token = 0;
            maas_auth_release(&f->token);
            f->token = t;
            f->token_posted = 1;
            f->token_st = tst;
            maas_error_copy(&f->token_err, &terr);
        }
        atomic_store(&m->posted, 1);
        maas_multi_wakeup(m);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

static maas_status maas_multi_need(maas_stream *s, maas_need what)
{
    maas_multi *m = s->sched_data;
    struct fetcher *f = &m->f;
    maas_status st = MAAS_OK;

    pthread_mutex_lock(&f->lock);
    if (what == MAAS_NEED_CATALOGUE)
        f->want_catalogue = 1;
    else
        f->want_token = 1;
    if (!f->started) {
        int rc = pthread_create(&f->thread, NULL, fetcher_main, m);
        if (rc == 0)
            f->started = 1;
        else
            st = rc == EAGAIN || rc == ENOMEM ? MAAS_ERR_NO_MEMORY : MAAS_ERR_INTERNAL;
    }
    pthread_cond_signal(&f->cond);
    pthread_mutex_unlock(&f->lock);
    return st;
}

/* Hand what the fetcher brought to every stream waiting for it. */
static void hand_out(maas_multi *m)
{
    struct fetcher *f = &m->f;
    int catalogue, token;
    maas_status cst, tst;
    maas_error_rec cerr, terr;
    maas_auth_ticket t = { NULL, 0 };
    maas_stream *s;

    pthread_mutex_lock(&f->lock);
    catalogue = f->catalogue_posted;
    token = f->token_posted;
    cst = f->catalogue_st;
    tst = f->token_st;
    maas_error_copy(&cerr, &f->catalogue_err);
    maas_error_copy(&terr, &f->token_err);
    t = f->token;
    f->token.header = NULL;
    f->catalogue_posted = f->token_posted = 0;
    pthread_mutex_unlock(&f->lock);

    for (s = m->streams; s; s = s->next) {
        if (s->finished)
            continue;
        if (catalogue && s->state == S_WAIT_CATALOGUE) {
            maas_stream_catalogue_ready(s, cst, &cerr);
            maas_multi_mark_ready(s);
        }
        if (token && s->state == S_WAIT_TOKEN) {
            maas_stream_token_ready(s, tst, &t, &terr);
            maas_multi_mark_ready(s);
        }
    }
    maas_auth_release(&t);
}

static void fetcher_stop(maas_multi *m)
{
    struct fetcher *f = &m->f;
    pthread_mutex_lock(&f->lock);
    f->stop = 1;
    atomic_store(&f->cancel, 1);
    pthread_cond_signal(&f->cond);
    pthread_mutex_unlock(&f->lock);
    if (f->started) {
        /* The fetch sees the cancellation within MAAS_CANCEL_POLL_MS, or at
         * once where it waits in the token cache. */
        maas_auth_wake(m->c);
        pthread_join(f->thread, NULL);
    }
    maas_auth_release(&f->token);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->lock);
}

/* ---- advancing streams ---------------------------------------------------------- */

static void finish(maas_multi *m, maas_stream *s, maas_status st)
{
    unready(m, s);
    heap_remove(m, s);
    s->finished = 1;
    m->running--;
    if (s->on_done)
        s->on_done(s, st, s->payload); /* the stream may be freed in there */
}

/* Hand out everything the stream has now; finish it when it is over. */
static void dispatch(maas_multi *m, maas_stream *s)
{
    const maas_token *tok;
    maas_status st;

    unready(m, s);
    if (s->finished)
        return;
    for (;;) {
        st = maas_stream_advance(s, &tok, 0);
        if (st == MAAS_OK) {
            if (s->on_token && s->on_token(tok, s->payload)) {
                /* Buffered tokens are not handed out after this. */
                maas_error_set(&s->err, MAAS_ERR_CANCELLED, "cancelled by the token callback");
                finish(m, s, maas_stream_fail(s, MAAS_ERR_CANCELLED));
                return;
            }
            continue;
        }
        if (st == MAAS_PENDING) {
            maas_multi_track(s);
            return;
        }
        if (st == MAAS_DONE) {
            if (!s->details_reported) {
                s->details_reported = 1;
                if (s->on_details && s->on_details(&s->details, s->payload)) {
                    maas_error_set(&s->err, MAAS_ERR_CANCELLED, "cancelled by the details callback");
                    finish(m, s, maas_stream_fail(s, MAAS_ERR_CANCELLED));
                    return;
                }
            }
            /* The final message is in; wait (briefly) for the transfer to end so
             * that its connection can serve the next stream. */
            if (!maas_stream_settled(s)) {
                maas_multi_track(s);
                return;
            }
            finish(m, s, MAAS_OK);
            return;
        }
        finish(m, s, st);
        return;
    }
}

static void pump(maas_multi *m)
{
    CURLMsg *msg;
    int left;
    size_t rounds;

    /* Callbacks may start or cancel streams; a few rounds settle what they did. */
    for (rounds = 0; rounds < 8; rounds++) {
        int64_t now;
        int worked = 0;

        if (atomic_exchange(&m->posted, 0))
            hand_out(m);

        while ((msg = curl_multi_info_read(m->cm, &left)) != NULL) {
            maas_stream *s = NULL;
            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            if (!s)
                continue;
            s->x.done = 1;
            s->x.result = msg->data.result;
            maas_multi_mark_ready(s);
        }
        if (atomic_exchange(&m->cancels, 0) > 0) {
            maas_stream *s;
            for (s = m->streams; s; s = s->next)
                if (!s->finished && atomic_load(&s->cancel))
                    maas_multi_mark_ready(s);
        }
        while (m->ready_head) {
            dispatch(m, m->ready_head);
            worked = 1;
        }
        now = maas_now_ms();
        while (m->heap_len && m->keys[0] <= now) {
            maas_stream *s = m->heap[0];
            int64_t real = maas_stream_next_deadline(s);
            if (real > now) {
                /* Put back at its real deadline: the idle clock moved on. */
                m->keys[0] = real;
                sift_down(m, 0);
                continue;
            }
            heap_remove(m, s);
            dispatch(m, s);
            worked = 1;
        }
        if (!worked && !m->ready_head && atomic_load(&m->cancels) == 0)
            break;
    }
    tell_timer(m);
}

/* ---- public ------------------------------------------------------------------- */

maas_status maas_multi_new(maas_multi **out, maas_client *client)
{
    maas_multi *m;
    if (!out)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!client)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "client is NULL");
    m = calloc(1, sizeof *m);
    if (!m)
        return maas_fail(MAAS_ERR_NO_MEMORY, "out of memory creating a multi");
    m->c = client;
    m->wake[0] = m->wake[1] = -1;
    m->curl_due = INT64_MAX;
    m->told_due = INT64_MAX;
    atomic_init(&m->cancels, 0);
    atomic_init(&m->posted, 0);
    atomic_init(&m->f.cancel, 0);
    maas_error_clear(&m->f.catalogue_err);
    maas_error_clear(&m->f.token_err);
    if (pthread_mutex_init(&m->f.lock, NULL) != 0 || pthread_cond_init(&m->f.cond, NULL) != 0) {
        free(m);
        return maas_fail(MAAS_ERR_NO_MEMORY, "out of memory creating a multi");
    }
    m->cm = curl_multi_init();
    /* Streams to one host share HTTP/2 connections (libcurl's default since
     * 7.62, stated here because the multi's scale rests on it). */
    if (m->cm)
        curl_multi_setopt(m->cm, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    if (!m->cm) {
        fetcher_stop(m);
        free(m);
        return maas_fail(MAAS_ERR_NO_MEMORY, "out of memory creating a curl multi handle");
    }
    *out = m;
    return MAAS_OK;
}

void maas_multi_free(maas_multi *m)
{
    maas_stream *s, *next;
    if (!m)
        return;
    /* First: the fetcher writes to the wake-up pipe and the multi handle. */
    fetcher_stop(m);
    for (s = m->streams; s; s = next) {
        next = s->next;
        /* Out of the multi for good: its easy handle leaves while the multi lives. */
        maas_stream_drop_attempt(s);
        if (!s->finished && s->state != S_FAILED && s->state != S_DONE) {
            maas_error_set(&s->err, MAAS_ERR_CANCELLED, "its maas_multi was freed");
            s->err.pub.status = MAAS_ERR_CANCELLED;
            s->state = S_FAILED;
        }
        s->sched = NULL;
        s->sched_data = NULL;
        s->own.multi = NULL;
        s->prev = s->next = NULL;
        s->heap_index = SIZE_MAX;
        s->ready = 0;
    }
    curl_multi_cleanup(m->cm);
    if (m->wake[0] >= 0) {
        if (m->on_socket)
            m->on_socket(m->wake[0], MAAS_POLL_REMOVE, m->cb_payload, m->wake_payload);
        close(m->wake[0]);
        close(m->wake[1]);
    }
    free(m->heap);
    free(m->keys);
    free(m);
}

static void maas_multi_forget(maas_stream *s)
{
    maas_multi *m = s->sched_data;
    unready(m, s);
    heap_remove(m, s);
    maas_stream_drop_attempt(s);
    if (!s->finished)
        m->running--;
    if (s->prev)
        s->prev->next = s->next;
    else
        m->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->sched = NULL;
    s->sched_data = NULL;
}

static void maas_multi_note_cancel(maas_stream *s)
{
    maas_multi *m = s->sched_data;
    atomic_fetch_add(&m->cancels, 1);
    maas_multi_wakeup(m);
}

/* The attempt's idle clock started (inside libcurl): pump() puts the stream in
 * the clock heap, so that a server that never answers is noticed. */
static void armed(void *payload)
{
    maas_multi_mark_ready(payload);
}

static const maas_stream_sched multi_sched = {
    maas_multi_mark_ready, maas_multi_track, maas_multi_note_cancel, maas_multi_forget,
    maas_multi_need
};

maas_status maas_multi_add(maas_stream **out, maas_multi *m, const maas_request *request,
                           maas_token_cb on_token, maas_details_cb on_details, maas_done_cb on_done,
                           void *payload)
{
    maas_error_rec err;
    maas_stream *s;
    const maas_token *tok;
    maas_status st;

    if (!out)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!m || !request)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "%s is NULL", m ? "request" : "multi");
    maas_error_clear(&err);
    st = maas_stream_create(&s, m->c, request, 1, &err);
    if (st != MAAS_OK)
        return maas_error_publish(&err);
    s->own.multi = m->cm;
    s->own.easy = curl_easy_init();
    if (!s->own.easy) {
        maas_stream_free(s);
        return maas_fail(MAAS_ERR_NO_MEMORY, "out of memory creating a curl handle");
    }
    maas_xfer_init_external(&s->x, m->c, &s->cancel, &s->own);
    /* The deadline runs from here: the waits for a catalogue or a token
     * fetched aside are the stream's time too. */
    if (m->c->deadline_ms > 0)
        s->x.deadline_at = maas_now_ms() + m->c->deadline_ms;
    s->x.on_armed = armed;
    s->x.armed_payload = s;
    s->on_token = on_token;
    s->on_details = on_details;
    s->on_done = on_done;
    s->payload = payload;
    s->sched = &multi_sched;
    s->sched_data = m;
    m->ever_added = 1;
    s->next = m->streams;
    if (m->streams)
        m->streams->prev = s;
    m->streams = s;
    m->running++;

    /* The first attempt starts now; only its failure to start is reported here. */
    st = maas_stream_advance(s, &tok, 0);
    if (st != MAAS_PENDING) {
        maas_error_rec copy;
        maas_error_copy(&copy, &s->err);
        maas_stream_free(s);
        return maas_error_publish(&copy);
    }
    maas_multi_track(s);
    tell_timer(m);
    *out = s;
    return MAAS_OK;
}

static maas_status curl_failed(CURLMcode mc)
{
    switch (mc) {
    case CURLM_OUT_OF_MEMORY:
        return maas_fail(MAAS_ERR_NO_MEMORY, "out of memory in libcurl's multi handle");
    case CURLM_BAD_SOCKET:
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "that socket is not one of the multi's");
    case CURLM_RECURSIVE_API_CALL:
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT,
                         "called from inside a socket or timer callback");
    case CURLM_ABORTED_BY_CALLBACK:
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT,
                         "the socket callback returned nonzero: the multi is aborted");
    default:
        return maas_fail(MAAS_ERR_INTERNAL, "libcurl multi: %s", curl_multi_strerror(mc));
    }
}

maas_status maas_multi_perform(maas_multi *m, size_t *running)
{
    int still = 0;
    CURLMcode mc;
    if (!m)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "multi is NULL");
    if (m->on_socket)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT,
                         "the multi is in event-loop mode: use maas_multi_socket_action");
    mc = curl_multi_perform(m->cm, &still);
    if (mc != CURLM_OK)
        return curl_failed(mc);
    pump(m);
    if (running)
        *running = m->running;
    return MAAS_OK;
}

long maas_multi_timeout(maas_multi *m)
{
    long curl_ms = -1;
    int64_t due, now = maas_now_ms();
    if (!m)
        return -1;
    if (!m->on_socket && curl_multi_timeout(m->cm, &curl_ms) == CURLM_OK && curl_ms >= 0)
        m->curl_due = now + curl_ms;
    else if (!m->on_socket)
        m->curl_due = INT64_MAX;
    due = next_due(m);
    if (due == INT64_MAX)
        return -1;
    return due <= now ? 0 : (long)(due - now);
}

maas_status maas_multi_poll(maas_multi *m, int timeout_ms, size_t *running)
{
    long ours;
    CURLMcode mc;
    if (!m)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "multi is NULL");
    if (m->on_socket)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT,
                         "the multi is in event-loop mode: use maas_multi_socket_action");
    ours = maas_multi_timeout(m);
    if (ours >= 0 && ours < timeout_ms)
        timeout_ms = (int)ours;
    if (timeout_ms > 0 && !m->ready_head) {
        mc = curl_multi_poll(m->cm, NULL, 0, timeout_ms, NULL);
        if (mc != CURLM_OK)
            return curl_failed(mc);
    }
    return maas_multi_perform(m, running);
}

void maas_multi_wakeup(maas_multi *m)
{
    if (!m)
        return;
    if (m->wake[1] >= 0) {
        /* Event-loop mode: the loop watches the pipe's other end. A full pipe
         * already has the loop's attention. */
        ssize_t w;
        do
            w = write(m->wake[1], "", 1);
        while (w < 0 && errno == EINTR);
    } else {
        curl_multi_wakeup(m->cm);
    }
}

maas_status maas_multi_set_callbacks(maas_multi *m, maas_socket_cb on_socket,
                                     maas_timer_cb on_timer, void *payload)
{
    if (!m || !on_socket || !on_timer)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "multi, on_socket and on_timer are required");
    if (m->ever_added || m->on_socket)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT,
                         "set the callbacks once, before adding any stream");
    /* Another thread's maas_stream_cancel() or maas_multi_wakeup() must reach
     * the application's loop: it watches this pipe like any other socket. */
    if (pipe2(m->wake, O_NONBLOCK | O_CLOEXEC) != 0) {
        m->wake[0] = m->wake[1] = -1;
        return maas_fail(MAAS_ERR_INTERNAL, "pipe2: %s", strerror(errno));
    }
    if (curl_multi_setopt(m->cm, CURLMOPT_SOCKETFUNCTION, curl_socket) ||
        curl_multi_setopt(m->cm, CURLMOPT_SOCKETDATA, m) ||
        curl_multi_setopt(m->cm, CURLMOPT_TIMERFUNCTION, curl_timer) ||
        curl_multi_setopt(m->cm, CURLMOPT_TIMERDATA, m)) {
        close(m->wake[0]);
        close(m->wake[1]);
        m->wake[0] = m->wake[1] = -1;
        return maas_fail(MAAS_ERR_INTERNAL, "could not set libcurl's multi callbacks");
    }
    if (on_socket(m->wake[0], MAAS_POLL_IN, payload, NULL) != 0) {
        /* Back to perform/poll mode, as if nothing happened. */
        curl_multi_setopt(m->cm, CURLMOPT_SOCKETFUNCTION, NULL);
        curl_multi_setopt(m->cm, CURLMOPT_TIMERFUNCTION, NULL);
        close(m->wake[0]);
        close(m->wake[1]);
        m->wake[0] = m->wake[1] = -1;
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "the socket callback refused the wake-up pipe");
    }
    m->on_socket = on_socket;
    m->on_timer = on_timer;
    m->cb_payload = payload;
    return MAAS_OK;
}

maas_status maas_multi_assign(maas_multi *m, int fd, void *socket_payload)
{
    CURLMcode mc;
    if (!m)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "multi is NULL");
    if (fd >= 0 && fd == m->wake[0]) {
        m->wake_payload = socket_payload; /* libcurl does not know this one */
        return MAAS_OK;
    }
    mc = curl_multi_assign(m->cm, (curl_socket_t)fd, socket_payload);
    return mc == CURLM_OK ? MAAS_OK : curl_failed(mc);
}

maas_status maas_multi_socket_action(maas_multi *m, int fd, int events, size_t *running)
{
    int still = 0, mask = 0;
    CURLMcode mc;
    if (!m)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "multi is NULL");
    if (!m->on_socket)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT,
                         "the multi is not in event-loop mode: use maas_multi_perform/poll");
    if (m->aborted)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT,
                         "the socket callback returned nonzero: the multi is aborted");
    if (events & MAAS_POLL_IN)
        mask |= CURL_CSELECT_IN;
    if (events & MAAS_POLL_OUT)
        mask |= CURL_CSELECT_OUT;
    if (fd >= 0 && fd == m->wake[0]) {
        char drain[64];
        while (read(fd, drain, sizeof drain) > 0)
            ;
    } else {
        long curl_ms = -1;
        if (fd == MAAS_SOCKET_TIMEOUT)
            m->told_due = INT64_MAX; /* the timer fired: the next one must be told again */
        mc = curl_multi_socket_action(m->cm, fd == MAAS_SOCKET_TIMEOUT ? CURL_SOCKET_TIMEOUT
                                                                       : (curl_socket_t)fd,
                                      mask, &still);
        if (mc != CURLM_OK)
            return curl_failed(mc);
        /* libcurl calls the timer callback only when its timeout changes, and
         * the timer may have fired for one of our clocks rather than its own:
         * ask it where its deadline stands now, so that a spent one is never
         * kept (a busy loop) and a pending one never lost (a hang). */
        if (curl_multi_timeout(m->cm, &curl_ms) == CURLM_OK)
            m->curl_due = curl_ms < 0 ? INT64_MAX : maas_now_ms() + curl_ms;
    }
    pump(m);
    if (running)
        *running = m->running;
    return MAAS_OK;
}
