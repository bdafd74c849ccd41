/*
 * hub: blocking streams of many threads on one multi handle, so that they
 * share HTTP/2 connections (hub.h says why and when).
 *
 * Rules, all under hub->lock:
 * - `driving` is set while one thread is inside libcurl with the multi
 *   handle; nobody else calls libcurl on it or on its easy handles then.
 * - A thread that must add or remove a transfer counts itself in `want`,
 *   wakes the driver, and waits for the multi handle; while anyone wants it
 *   no thread starts a new round of driving.
 * - The driver's callbacks for any transfer (its own included) only queue:
 *   records in the transfer's inbox, flags for its connection and upload
 *   progress, `hub_done` when libcurl finished it. The transfer's own thread
 *   takes them and runs its callbacks, clocks and decoder itself.
 * - A finished transfer is taken off the multi handle by the driver that
 *   saw it finish, so its thread may then read its easy handle freely.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "clock.h"
#include "http.h"
#include "hub.h"

enum { REC_BODY = 'B', REC_HEADER = 'H' };

/* A condition variable whose timed waits run on the monotonic clock. */
static int cond_init(pthread_cond_t *cond)
{
    pthread_condattr_t ca;
    int bad = pthread_condattr_init(&ca) || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) ||
              pthread_cond_init(cond, &ca);
    pthread_condattr_destroy(&ca);
    return bad ? -1 : 0;
}

int maas_hub_init(maas_hub *h)
{
    memset(h, 0, sizeof *h);
    if (pthread_mutex_init(&h->lock, NULL))
        return -1;
    if (cond_init(&h->cond)) {
        pthread_mutex_destroy(&h->lock);
        return -1;
    }
    return 0;
}

void maas_hub_cleanup(maas_hub *h)
{
    /* Every transfer was finished before its client could be freed. */
    if (h->multi)
        curl_multi_cleanup(h->multi);
    h->multi = NULL;
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
}

static int cancelled(const maas_xfer *x)
{
    return x->cancel && atomic_load(x->cancel);
}

/* The multi handle for this thread alone (hub->lock held, and held again on return). */
static void take(maas_hub *h)
{
    h->want++;
    while (h->driving) {
        curl_multi_wakeup(h->multi);
        pthread_cond_wait(&h->cond, &h->lock);
    }
    h->want--;
    h->driving = 1;
}

/*
 * Hand the multi handle over (the driver, hub->lock held): to those that
 * want it, else to one thread waiting for its stream, which drives next.
 * Waking one, not all: with many threads each write would otherwise wake
 * every one of them.
 */
static void give(maas_hub *h)
{
    maas_xfer *y;
    if (h->want) {
        h->driving = 0;
        pthread_cond_broadcast(&h->cond);
        return;
    }
    for (y = h->xfers; y && !y->hub_waiting; y = y->hub_next)
        ;
    h->driving = 0;
    if (y)
        pthread_cond_signal(&y->hub_cond);
}

/* ---- the driver's callbacks: queue only ------------------------------- */

static size_t queue(maas_xfer *x, char kind, const char *data, size_t len)
{
    maas_hub *h = x->hub;
    size_t need;
    pthread_mutex_lock(&h->lock);
    need = x->inbox_len + 1 + sizeof len + len;
    if (need > MAAS_HUB_BACKLOG_MAX + 64) {
        x->hub_overflow = 1;
        len = 0; /* cut the transfer: libcurl fails it with a write error */
    } else {
        if (need > x->inbox_cap) {
            size_t cap = x->inbox_cap ? x->inbox_cap * 2 : 16384;
            char *b;
            while (cap < need)
                cap *= 2;
            b = realloc(x->inbox, cap);
            if (!b) {
                x->hub_overflow = 2;
                pthread_mutex_unlock(&h->lock);
                return 0;
            }
            x->inbox = b;
            x->inbox_cap = cap;
        }
        x->inbox[x->inbox_len] = kind;
        memcpy(x->inbox + x->inbox_len + 1, &len, sizeof len);
        memcpy(x->inbox + x->inbox_len + 1 + sizeof len, data, len);
        x->inbox_len = need;
    }
    pthread_cond_signal(&x->hub_cond);
    pthread_mutex_unlock(&h->lock);
    return len;
}

static size_t queue_body(char *data, size_t size, size_t n, void *userp)
{
    size_t len = size * n;
    return queue(userp, REC_BODY, data, len) == len ? len : 0;
}

static size_t queue_header(char *data, size_t size, size_t n, void *userp)
{
    size_t len = size * n;
    return queue(userp, REC_HEADER, data, len) == len ? len : 0;
}

static int queue_progress(void *userp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                          curl_off_t ulnow)
{
    maas_xfer *x = userp;
    (void)dltotal;
    (void)dlnow;
    pthread_mutex_lock(&x->hub->lock);
    if (ulnow != x->hub_ulnow || ultotal != x->hub_ultotal) {
        x->hub_ulnow = ulnow;
        x->hub_ultotal = ultotal;
        x->hub_progress = 1;
        pthread_cond_signal(&x->hub_cond);
    }
    pthread_mutex_unlock(&x->hub->lock);
    return 0;
}

#if LIBCURL_VERSION_NUM >= 0x075000
static int queue_connected(void *userp, char *ip, char *local_ip, int primary_port,
                           int local_port)
{
    maas_xfer *x = userp;
    (void)ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    pthread_mutex_lock(&x->hub->lock);
    x->hub_connected = 1;
    pthread_cond_signal(&x->hub_cond);
    pthread_mutex_unlock(&x->hub->lock);
    return CURL_PREREQFUNC_OK;
}
#endif

/* ---- adding and removing ---------------------------------------------- */

static void unlink_xfer(maas_hub *h, maas_xfer *x)
{
    maas_xfer **p;
    for (p = &h->xfers; *p; p = &(*p)->hub_next)
        if (*p == x) {
            *p = x->hub_next;
            break;
        }
    x->hub_next = NULL;
}

/* Off the multi handle (driving): count its connections, learn its protocol.
 * The caller marks it removed, under hub->lock. */
static void remove_xfer(maas_hub *h, maas_xfer *x)
{
    long conns = 0;
    if (curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &conns) == CURLE_OK && conns > 0)
        maas_count(x->client, MAAS_COUNTER_CONNECTIONS, (uint64_t)conns);
    maas_xfer_learn_protocol(x);
    /* An unfinished HTTP/2 stream is reset; its connection stays for the others. */
    curl_multi_remove_handle(h->multi, x->easy);
    unlink_xfer(h, x);
}

static int takes(const maas_xfer *x)
{
    return !x->external && x->client->http_version != MAAS_HTTP_1_1 &&
           atomic_load(&x->client->http.api_h2);
}

static maas_status start(maas_xfer *x, maas_error_rec *err)
{
    maas_hub *h = &x->client->hub;
    CURLcode rc = CURLE_OK;
    CURLMcode mc;

    x->inbox_len = 0;
    x->hub_done = x->hub_removed = x->hub_overflow = 0;
    x->hub_connected = x->hub_progress = 0;
    x->hub_ulnow = x->hub_ultotal = 0;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(x->easy, opt, val); } while (0)
    SET(CURLOPT_WRITEFUNCTION, queue_body);
    SET(CURLOPT_WRITEDATA, x);
    SET(CURLOPT_HEADERFUNCTION, queue_header);
    SET(CURLOPT_HEADERDATA, x);
    SET(CURLOPT_XFERINFOFUNCTION, queue_progress);
    SET(CURLOPT_XFERINFODATA, x);
#if LIBCURL_VERSION_NUM >= 0x075000
    if (x->connected == 0) {
        SET(CURLOPT_PREREQFUNCTION, queue_connected);
        SET(CURLOPT_PREREQDATA, x);
    }
#endif
#undef SET
    if (rc != CURLE_OK)
        return maas_error_set(err, MAAS_ERR_INTERNAL, "could not configure libcurl: %s",
                              curl_easy_strerror(rc));
    if (cond_init(&x->hub_cond))
        return maas_error_set(err, MAAS_ERR_INTERNAL, "could not create a condition variable");
    x->hub = h;
    pthread_mutex_lock(&h->lock);
    x->hub_cond_live = 1;
    x->hub_waiting = 0;
    if (!h->multi) {
        h->multi = curl_multi_init();
        if (h->multi)
            curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    }
    if (!h->multi) {
        x->hub_cond_live = 0;
        pthread_mutex_unlock(&h->lock);
        pthread_cond_destroy(&x->hub_cond);
        x->hub = NULL;
        return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory creating a curl multi handle");
    }
    take(h);
    pthread_mutex_unlock(&h->lock);
    maas_http_cap_connections(x->client, h->multi);
    mc = curl_multi_add_handle(h->multi, x->easy);
    pthread_mutex_lock(&h->lock);
    if (mc == CURLM_OK) {
        x->hub_next = h->xfers;
        h->xfers = x;
    } else {
        x->hub_cond_live = 0;
    }
    give(h);
    pthread_mutex_unlock(&h->lock);
    if (mc != CURLM_OK) {
        pthread_cond_destroy(&x->hub_cond);
        x->hub = NULL;
        return maas_error_set(err, MAAS_ERR_INTERNAL, "curl_multi_add_handle: %s",
                              curl_multi_strerror(mc));
    }
    return MAAS_OK;
}

static void finish(maas_xfer *x)
{
    maas_hub *h = x->hub;
    pthread_mutex_lock(&h->lock);
    if (!x->hub_removed) {
        take(h);
        pthread_mutex_unlock(&h->lock);
        remove_xfer(h, x);
        pthread_mutex_lock(&h->lock);
        x->hub_removed = 1;
        give(h);
    }
    x->hub_cond_live = 0;
    pthread_mutex_unlock(&h->lock);
    pthread_cond_destroy(&x->hub_cond);
    free(x->inbox);
    free(x->spare);
    x->inbox = x->spare = NULL;
    x->inbox_len = x->inbox_cap = x->spare_cap = 0;
    x->hub = NULL;
}

/* From any thread: the client's hub, not x->hub, which its thread may be changing. */
static void wakeup(maas_xfer *x)
{
    maas_hub *h = &x->client->hub;
    pthread_mutex_lock(&h->lock);
    if (x->hub_cond_live)
        pthread_cond_signal(&x->hub_cond);
    if (h->multi)
        curl_multi_wakeup(h->multi);
    pthread_mutex_unlock(&h->lock);
}

/* ---- handing over, driving, waiting ----------------------------------- */

static int has_news(const maas_xfer *x)
{
    return x->inbox_len || x->hub_connected > x->connected || x->hub_progress ||
           (x->hub_done && x->hub_removed);
}

/* Run the transfer's own callbacks on what was queued (hub->lock held, released inside). */
static void hand_over(maas_xfer *x)
{
    maas_hub *h = x->hub;
    char *buf = x->inbox, *p, *end;
    size_t len = x->inbox_len, cap = x->inbox_cap;
    int connected = x->hub_connected && !x->connected, progress = x->hub_progress;
    int finished = x->hub_done && x->hub_removed, overflow = x->hub_overflow;
    CURLcode result = x->hub_result;
    curl_off_t ulnow = x->hub_ulnow, ultotal = x->hub_ultotal;

    /* Two buffers, swapped: the driver fills one while this thread reads the other. */
    x->inbox = x->spare;
    x->inbox_cap = x->spare_cap;
    x->inbox_len = 0;
    x->spare = NULL;
    x->spare_cap = 0;
    x->hub_progress = 0;
    pthread_mutex_unlock(&h->lock);

    if (connected)
        maas_xfer_connected(x);
    if (progress)
        maas_xfer_progress(x, ultotal, ulnow);
    for (p = buf, end = buf + len; p < end && !x->done;) {
        char kind = *p;
        size_t n, got;
        memcpy(&n, p + 1, sizeof n);
        p += 1 + sizeof n;
        if (kind == REC_HEADER)
            got = x->header_fn(p, 1, n, x->header_data);
        else
            got = x->write_fn(p, 1, n, x->write_data);
        p += n;
        if (got != n) {
            /* The callback refused the bytes, as it would have inside libcurl. */
            x->done = 1;
            x->result = CURLE_WRITE_ERROR;
        }
    }
    if (!x->done && finished) {
        x->done = 1;
        x->result = result;
        if (overflow == 1)
            snprintf(x->errbuf, sizeof x->errbuf,
                     "more than %zu MiB of the answer arrived while the caller held control "
                     "(an HTTP/2 stream cannot be held back alone)",
                     MAAS_HUB_BACKLOG_MAX >> 20);
        else if (overflow)
            snprintf(x->errbuf, sizeof x->errbuf, "out of memory keeping the answer for its caller");
    }

    pthread_mutex_lock(&h->lock);
    if (!x->spare) {
        x->spare = buf;
        x->spare_cap = cap;
    } else {
        free(buf);
    }
}

/* One round for everybody: perform, note what finished, wait for activity (driving). */
static void drive(maas_hub *h, maas_xfer *x, int64_t wait_ms)
{
    int running = 0, left = 0, news;
    CURLMsg *msg;

    pthread_mutex_unlock(&h->lock);
    curl_multi_perform(h->multi, &running);
    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        maas_xfer *y;
        if (msg->msg != CURLMSG_DONE)
            continue;
        for (y = h->xfers; y && y->easy != msg->easy_handle; y = y->hub_next)
            ;
        if (!y)
            continue;
        {
            CURLcode result = msg->data.result;
            remove_xfer(h, y); /* msg is gone from here on */
            pthread_mutex_lock(&h->lock);
            y->hub_done = y->hub_removed = 1;
            y->hub_result = result;
            pthread_cond_signal(&y->hub_cond);
            pthread_mutex_unlock(&h->lock);
        }
    }
    pthread_mutex_lock(&h->lock);
    news = has_news(x) || h->want;
    pthread_mutex_unlock(&h->lock);
    if (!news && !cancelled(x))
        curl_multi_poll(h->multi, NULL, 0, (int)wait_ms, NULL);
    pthread_mutex_lock(&h->lock);
    give(h);
}

static maas_status step(maas_xfer *x, maas_error_rec *err)
{
    maas_hub *h = x->hub;
    maas_status st = MAAS_OK;
    int64_t wait_ms = 0;

    pthread_mutex_lock(&h->lock);
    for (;;) {
        if (has_news(x)) {
            hand_over(x);
            break;
        }
        if (cancelled(x)) {
            st = maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
            break;
        }
        st = maas_xfer_next_wait(x, &wait_ms, err);
        if (st != MAAS_OK)
            break;
        if (!h->driving && !h->want) {
            h->driving = 1;
            drive(h, x, wait_ms);
            continue;
        }
        {
            struct timespec ts;
            int64_t until = maas_now_ms() + wait_ms;
            ts.tv_sec = (time_t)(until / 1000);
            ts.tv_nsec = (long)(until % 1000) * 1000000L;
            x->hub_waiting = 1;
            pthread_cond_timedwait(&x->hub_cond, &h->lock, &ts);
            x->hub_waiting = 0;
        }
    }
    pthread_mutex_unlock(&h->lock);
    return st;
}

const maas_xfer_driver maas_hub_driver = { takes, start, step, finish, wakeup };
