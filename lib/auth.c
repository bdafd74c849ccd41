#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "auth.h"
#include "clientdata.h"
#include "clock.h"
#include "log.h"
#include "wipe.h"

/* Lifetime assumed when the token endpoint omits expires_in. */
#define DEFAULT_LIFETIME_S 300

static int64_t default_now(void *payload)
{
    (void)payload;
    return maas_now_ms();
}

static int has_space(const char *s)
{
    for (; *s; s++)
        if (*s == ' ')
            return 1;
    return 0;
}

static char *make_header(const char *type, const char *token)
{
    static const char prefix[] = "Authorization: ";
    size_t n = sizeof prefix - 1 + (type ? strlen(type) + 1 : 0) + strlen(token) + 1;
    char *h = malloc(n);
    if (!h)
        return NULL;
    if (type)
        snprintf(h, n, "%s%s %s", prefix, type, token);
    else
        snprintf(h, n, "%s%s", prefix, token);
    return h;
}

maas_status maas_auth_init(maas_auth *a, const char *static_token)
{
    memset(a, 0, sizeof *a);
    if (pthread_mutex_init(&a->lock, NULL))
        return MAAS_ERR_INTERNAL;
    {
        /* Timed waits count on the monotonic clock, as every clock here does. */
        pthread_condattr_t ca;
        int bad = pthread_condattr_init(&ca) || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) ||
                  pthread_cond_init(&a->cond, &ca);
        pthread_condattr_destroy(&ca);
        if (bad) {
            pthread_mutex_destroy(&a->lock);
            return MAAS_ERR_INTERNAL;
        }
    }
    a->now = default_now;
    maas_error_clear(&a->fetch_error);
    if (static_token) {
        /* "Bearer abc" (what the guide's get_auth_token returns) is used as is;
         * a bare token gets the Bearer scheme. */
        a->header = make_header(has_space(static_token) ? NULL : "Bearer", static_token);
        if (!a->header) {
            maas_auth_cleanup(a);
            return MAAS_ERR_NO_MEMORY;
        }
        a->is_static = 1;
        a->generation = 1;
    }
    return MAAS_OK;
}

void maas_auth_cleanup(maas_auth *a)
{
    maas_wipe_free(a->header);
    a->header = NULL;
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->lock);
}

static int token_chars_ok(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return 0;
    return 1;
}

maas_status maas_auth_parse_token(const char *body, size_t len, char **header,
                                  int64_t *lifetime_ms, maas_error_rec *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr), *v;
    const char *token, *type = "Bearer";
    double secs = DEFAULT_LIFETIME_S;
    maas_status st = MAAS_OK;

    if (!root || !json_is_object(root)) {
        st = maas_error_set(err, MAAS_ERR_PROTOCOL, "the token endpoint's answer is not a JSON object");
        goto out;
    }
    v = json_object_get(root, "access_token");
    if (!json_is_string(v) || !token_chars_ok(json_string_value(v))) {
        st = maas_error_set(err, MAAS_ERR_PROTOCOL,
                            "the token endpoint's answer has no usable access_token");
        goto out;
    }
    token = json_string_value(v);
    v = json_object_get(root, "token_type");
    if (v) {
        if (!json_is_string(v) || !token_chars_ok(json_string_value(v))) {
            st = maas_error_set(err, MAAS_ERR_PROTOCOL,
                                "the token endpoint's token_type is not a single word");
            goto out;
        }
        type = json_string_value(v);
    }
    v = json_object_get(root, "expires_in");
    if (json_is_number(v))
        secs = json_number_value(v);
    else if (json_is_string(v))
        secs = strtod(json_string_value(v), NULL);
    if (v && !(secs > 0 && secs <= 10 * 365 * 86400.0)) {
        st = maas_error_set(err, MAAS_ERR_PROTOCOL, "the token endpoint's expires_in is not a positive number");
        goto out;
    }
    *lifetime_ms = (int64_t)(secs * 1000.0);
    *header = make_header(type, token);
    if (!*header)
        st = maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory storing the token");
out:
    if (root) {
        /* The tree holds a copy of the token: wipe it before jansson frees it. */
        v = json_object_get(root, "access_token");
        if (json_is_string(v))
            maas_wipe((char *)json_string_value(v), json_string_length(v));
        json_decref(root);
    }
    return st;
}

static maas_status copy_ticket(maas_auth *a, maas_auth_ticket *out, maas_error_rec *err)
{
    out->header = strdup(a->header);
    out->generation = a->generation;
    if (!out->header)
        return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory");
    return MAAS_OK;
}

static int is_cancelled(atomic_int *cancel)
{
    return cancel && atomic_load(cancel);
}

/* One wait on the cache's condition (lock held), bounded by the caller's
 * clocks: MAAS_OK when woken or when it is time to look again. */
static maas_status wait_locked(maas_client *c, int64_t until, atomic_int *cancel,
                               int64_t deadline_at, maas_error_rec *err)
{
    int64_t now = maas_now_ms();
    struct timespec ts;
    if (is_cancelled(cancel))
        return maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
    if (deadline_at && now >= deadline_at)
        return maas_error_set(err, MAAS_ERR_DEADLINE, "the %ld ms deadline expired",
                              c->deadline_ms);
    if (deadline_at && (!until || deadline_at < until))
        until = deadline_at;
    /* maas_stream_cancel wakes the condition without the lock, so a wake-up
     * may slip in between the check above and the wait: look again soon. */
    if (cancel && (!until || until > now + MAAS_CANCEL_POLL_MS))
        until = now + MAAS_CANCEL_POLL_MS;
    if (!until) {
        pthread_cond_wait(&c->auth.cond, &c->auth.lock);
        return MAAS_OK;
    }
    ts.tv_sec = (time_t)(until / 1000);
    ts.tv_nsec = (long)(until % 1000) * 1000000L;
    pthread_cond_timedwait(&c->auth.cond, &c->auth.lock, &ts);
    return MAAS_OK;
}

maas_status maas_auth_sleep(maas_client *c, int64_t ms, atomic_int *cancel, int64_t deadline_at,
                            maas_error_rec *err)
{
    int64_t end = maas_now_ms() + ms;
    maas_status st = MAAS_OK;
    pthread_mutex_lock(&c->auth.lock);
    while (st == MAAS_OK && maas_now_ms() < end)
        st = wait_locked(c, end, cancel, deadline_at, err);
    pthread_mutex_unlock(&c->auth.lock);
    if (st == MAAS_OK && is_cancelled(cancel))
        st = maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
    return st;
}

void maas_auth_wake(maas_client *c)
{
    /* No lock: a cancellation may come from any thread, holding any lock;
     * a wake-up lost to the race is caught by the waiters' short timeout. */
    pthread_cond_broadcast(&c->auth.cond);
}

maas_status maas_auth_try(maas_client *c, maas_auth_ticket *out, int *refresh,
                          maas_error_rec *err)
{
    maas_auth *a = &c->auth;
    maas_status st = MAAS_PENDING;
    int64_t now;

    out->header = NULL;
    out->generation = 0;
    *refresh = 0;
    pthread_mutex_lock(&a->lock);
    now = a->now(a->now_payload);
    if (a->header && (a->is_static || now < a->refresh_at)) {
        st = copy_ticket(a, out, err);
    } else if (a->header && now < a->expires_at) {
        /* Inside the refresh window: the old token is still good. A refresh is
         * wanted unless one runs, failed a moment ago or the rate limit holds
         * it back (the conditions under which acquire would not fetch). */
        *refresh = !a->fetching && now >= a->retry_at &&
                   maas_now_ms() >= a->last_request_at + MAAS_TOKEN_REQUEST_INTERVAL_MS;
        st = copy_ticket(a, out, err);
    } else if (!a->is_static && (!c->client_id || !c->client_secret)) {
        st = maas_error_set(err, MAAS_ERR_CONFIG, "no credentials to fetch a token with");
    }
    pthread_mutex_unlock(&a->lock);
    return st;
}

maas_status maas_auth_acquire(maas_client *c, maas_auth_ticket *out, maas_error_rec *err)
{
    return maas_auth_acquire_for(c, out, NULL, 0, err);
}

maas_status maas_auth_acquire_for(maas_client *c, maas_auth_ticket *out, atomic_int *cancel,
                                  int64_t deadline_at, maas_error_rec *err)
{
    maas_auth *a = &c->auth;
    maas_status st;
    /* A failed refresh served the cached token: logged once the lock is released. */
    int served = 0;
    int64_t served_left = 0, served_retry = 0;
    char why[64 + sizeof ((maas_error_rec *)0)->message]; /* a status name and a whole message */

    out->header = NULL;
    out->generation = 0;
    pthread_mutex_lock(&a->lock);
    for (;;) {
        int64_t now = a->now(a->now_payload), lifetime = 0, t0, skew, last;
        char *header = NULL;
        int valid;

        if (a->header && (a->is_static || now < a->refresh_at)) {
            st = copy_ticket(a, out, err);
            break;
        }
        /* Inside the refresh window the old token is still good. */
        valid = a->header && now < a->expires_at;
        if (a->fetching) {
            uint64_t seen = a->fetches_done;
            /* Use it rather than wait for the thread that refreshes it. */
            if (valid) {
                st = copy_ticket(a, out, err);
                break;
            }
            st = MAAS_OK;
            a->waiters++;
            while (st == MAAS_OK && a->fetching && a->fetches_done == seen)
                st = wait_locked(c, 0, cancel, deadline_at, err);
            a->waiters--;
            if (st != MAAS_OK)
                break;
            if (a->fetches_done != seen && !a->fetch_abandoned &&
                a->fetch_error.pub.status != MAAS_OK) {
                /* The fetch this thread waited for failed: its outcome is this
                 * thread's too, rather than one more fetch per waiting thread. */
                if (a->header && a->now(a->now_payload) < a->expires_at) {
                    st = copy_ticket(a, out, err);
                    break;
                }
                maas_error_copy(err, &a->fetch_error);
                st = err->pub.status;
                break;
            }
            continue;
        }
        /* A refresh failed a moment ago, or the rate limit holds the next
         * request back: keep serving the cached token rather than wait. */
        if (valid && (now < a->retry_at ||
                      maas_now_ms() < a->last_request_at + MAAS_TOKEN_REQUEST_INTERVAL_MS)) {
            st = copy_ticket(a, out, err);
            break;
        }
        if (is_cancelled(cancel)) {
            st = maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
            break;
        }
        if (!c->client_id || !c->client_secret) {
            st = maas_error_set(err, MAAS_ERR_CONFIG, "no credentials to fetch a token with");
            break;
        }
        a->fetching = 1;
        last = a->last_request_at;
        pthread_mutex_unlock(&a->lock);

        t0 = a->now(a->now_payload);
        st = a->fetch(c, &header, &lifetime, cancel, deadline_at, &last, err);
        /* A server's tiny expires_in (1e-9) must not make every call a fetch. */
        if (lifetime < MAAS_TOKEN_LIFETIME_FLOOR_MS)
            lifetime = MAAS_TOKEN_LIFETIME_FLOOR_MS;
        /* Refresh ahead of expiry: the configured skew (5 minutes), at most a
         * quarter of the lifetime (a 2 s token is refreshed after 1.5 s). */
        skew = c->token_refresh_skew_ms;
        if (skew > lifetime / 4)
            skew = lifetime / 4;
        /* Logged outside the lock: a log callback may call back into the client. */
        if (st == MAAS_OK)
            MAAS_INFO(c, "token fetched: valid for %lld ms, refreshed after %lld ms",
                      (long long)lifetime, (long long)(lifetime - skew));

        pthread_mutex_lock(&a->lock);
        a->fetching = 0;
        a->fetches_done++;
        a->last_request_at = last;
        a->fetch_abandoned = 0;
        if (st == MAAS_OK) {
            maas_wipe_free(a->header);
            a->header = header;
            a->generation++;
            /* Lifetimes count from before the request was sent. */
            a->refresh_at = t0 + lifetime - skew;
            a->expires_at = t0 + lifetime;
            a->retry_at = 0;
            a->refresh_failures = 0;
            maas_error_clear(&a->fetch_error);
            pthread_cond_broadcast(&a->cond);
            /* The token just fetched, even if the fetch outlasted its refresh
             * time: asking again at once would loop for as long as it is slow. */
            st = copy_ticket(a, out, err);
            break;
        }
        pthread_cond_broadcast(&a->cond);
        if (st == MAAS_ERR_CANCELLED || st == MAAS_ERR_DEADLINE) {
            /* This caller's own clocks, not the token endpoint's answer: a
             * waiter with time left starts a fetch of its own. */
            a->fetch_abandoned = 1;
            break;
        }
        maas_error_copy(&a->fetch_error, err);
        now = a->now(a->now_payload);
        if (a->header && now < a->expires_at) {
            /* The refresh failed, the cached token is still valid: serve it,
             * and try again after a back-off. */
            unsigned n = a->refresh_failures < 15 ? a->refresh_failures : 15;
            int64_t backoff = (int64_t)MAAS_TOKEN_REFRESH_BACKOFF_MS << n;
            if (backoff > MAAS_TOKEN_REFRESH_BACKOFF_MAX_MS)
                backoff = MAAS_TOKEN_REFRESH_BACKOFF_MAX_MS;
            a->refresh_failures++;
            a->retry_at = now + backoff;
            served = 1;
            served_left = a->expires_at - now;
            served_retry = backoff;
            snprintf(why, sizeof why, "%s: %s", maas_strerror(st), err->message);
            maas_error_clear(err);
            st = copy_ticket(a, out, err);
        }
        break;
    }
    pthread_mutex_unlock(&a->lock);
    if (served)
        MAAS_WARN(c, "token refresh failed (%s); using the cached token, valid for %lld ms more; "
                     "next refresh in %lld ms", why, (long long)served_left,
                  (long long)served_retry);
    return st;
}

void maas_auth_release(maas_auth_ticket *t)
{
    maas_wipe_free(t->header);
    t->header = NULL;
}

int maas_auth_reject(maas_client *c, uint64_t generation)
{
    maas_auth *a = &c->auth;
    if (a->is_static)
        return 0;
    pthread_mutex_lock(&a->lock);
    /* Another thread may already have replaced the token that failed. */
    if (a->generation == generation && a->header) {
        maas_wipe_free(a->header);
        a->header = NULL;
        a->refresh_at = a->expires_at = 0;
    }
    pthread_mutex_unlock(&a->lock);
    return 1;
}

int64_t maas_auth_remaining_ms(maas_client *c)
{
    maas_auth *a = &c->auth;
    int64_t left = 0;
    pthread_mutex_lock(&a->lock);
    if (a->header && !a->is_static)
        left = a->refresh_at - a->now(a->now_payload);
    pthread_mutex_unlock(&a->lock);
    return left > 0 ? left : 0;
}
