/*
 * call: whole requests with a bounded body (the token endpoint, GET
 * /models): attempts, retries with backoff under one deadline, the
 * Authorization header and the replay after a 401; the retry policy that
 * streams share; and the token request itself, which the token cache asks
 * for through its fetch hook (the client installs maas_call_token there).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "call.h"
#include "clientdata.h"
#include "clock.h"
#include "http.h"
#include "log.h"
#include "wipe.h"

/* A token answer larger than this is not a token answer. */
#define TOKEN_BODY_MAX (64 * 1024)

/* ---- retries ---------------------------------------------------------- */

int maas_retry_worth(const maas_error_rec *err)
{
    switch (err->pub.status) {
    case MAAS_ERR_CONNECT:
    case MAAS_ERR_CONNECT_TIMEOUT:
    case MAAS_ERR_RATE_LIMITED:
    case MAAS_ERR_UNAVAILABLE:
    case MAAS_ERR_NETWORK:
    case MAAS_ERR_IDLE_TIMEOUT:
        return 1;
    case MAAS_ERR_SERVER:
        return err->pub.http_status == 500 || err->pub.http_status == 502 ||
               err->pub.http_status == 504;
    case MAAS_ERR_STREAM:
        /* RESOURCE_EXHAUSTED and UNAVAILABLE in a 200 stream, as 429 and 503 are. */
        return err->pub.grpc_code == 8 || err->pub.grpc_code == 14;
    default:
        return 0;
    }
}

static double jitter(void)
{
    /* A per-thread xorshift: retries of many threads must not move in lockstep. */
    static _Thread_local uint64_t s;
    if (!s)
        s = (uint64_t)maas_now_ms() ^ ((uint64_t)(uintptr_t)&s << 16) ^ 0x9e3779b97f4a7c15ull;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return 0.75 + 0.25 * (double)(s >> 11) / (double)(1ull << 53);
}

int64_t maas_retry_delay_ms(const maas_client *c, unsigned retry, const maas_error_rec *err)
{
    double d;
    if ((int)retry > c->max_retries)
        return -1;
    if (err->pub.retry_after >= 0) {
        d = err->pub.retry_after * 1000.0;
        return d > (double)c->retry_after_max_ms ? c->retry_after_max_ms : (int64_t)d;
    }
    d = (double)c->retry_base_ms * ldexp(1.0, (int)retry - 1);
    if (d > (double)c->retry_max_ms)
        d = (double)c->retry_max_ms;
    return (int64_t)(d * jitter());
}

/* ---- whole calls ------------------------------------------------------ */

maas_status maas_call(maas_client *c, const maas_fetch *f, int with_auth, maas_response *out,
                      maas_error_rec *err)
{
    unsigned attempts = 0, retries = 0;
    int replayed = 0, unbounded = f->deadline_at == MAAS_UNBOUNDED;
    maas_status st;
    maas_fetch one = *f;

    /* A bounded body has a bound in time too: the idle clock alone would let a
     * server trickling a byte at a time, or never answering, hold the call for
     * (idle clock x attempts). Within the caller's own deadline: the client's
     * deadline_ms from now, or the deadline_at it gives (a stream's token
     * fetch, a call's own token), which already lies within it; none with
     * MAAS_UNBOUNDED (a fetch aside, and the calls it makes in turn). */
    one.deadline_ms = f->endpoint == MAAS_EP_TOKEN    ? c->token_timeout_ms
                      : f->endpoint == MAAS_EP_MODELS ? c->models_timeout_ms
                                                      : 0;
    if (!f->deadline_at && c->deadline_ms > 0 &&
        (one.deadline_ms <= 0 || c->deadline_ms < one.deadline_ms))
        one.deadline_ms = c->deadline_ms;
    one.deadline_at = one.deadline_ms > 0 ? maas_now_ms() + one.deadline_ms : 0;
    /* What is left of the caller's deadline, whose length is the client's deadline_ms. */
    if (f->deadline_at && !unbounded && (!one.deadline_at || f->deadline_at < one.deadline_at)) {
        one.deadline_at = f->deadline_at;
        one.deadline_ms = c->deadline_ms;
    }
    for (;;) {
        maas_auth_ticket ticket = { NULL, 0 };
        struct curl_slist *auth = NULL;
        int64_t delay;

        if (f->last_request_at) {
            /* The rate limit: never two requests closer than min_interval_ms. */
            int64_t gap = *f->last_request_at ? *f->last_request_at + f->min_interval_ms - maas_now_ms() : 0;
            if (gap > 0) {
                st = maas_auth_sleep(c, gap, f->cancel, one.deadline_at, err);
                if (st != MAAS_OK)
                    return st;
            }
            *f->last_request_at = maas_now_ms();
        }

        one.headers = f->headers;
        if (with_auth) {
            /* A fetch done aside for a maas_multi is cancellable: so is its token. */
            st = maas_auth_acquire_for(c, &ticket, f->cancel, one.deadline_at, err);
            if (st != MAAS_OK)
                return st;
            /* The token goes first, in a node of its own that is wiped after use. */
            auth = curl_slist_append(NULL, ticket.header);
            if (!auth) {
                maas_auth_release(&ticket);
                return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory");
            }
            auth->next = f->headers;
            one.headers = auth;
        }
        attempts++;
        maas_count(c, f->endpoint == MAAS_EP_TOKEN ? MAAS_COUNTER_TOKEN_REQUESTS
                                                   : MAAS_COUNTER_API_REQUESTS, 1);
        MAAS_DEBUG(c, "%s %s (attempt %u)", f->post_body ? "POST" : "GET", f->url, attempts);
        st = maas_http_fetch(c, &one, out, err);
        if (auth) {
            auth->next = NULL;
            maas_http_headers_free(auth);
        }
        if (st == MAAS_OK) {
            MAAS_DEBUG(c, "HTTP %ld, %zu bytes", out->status, out->len);
            if (out->status >= 200 && out->status < 300) {
                maas_auth_release(&ticket);
                err->pub.attempts = attempts;
                return MAAS_OK;
            }
            if (with_auth && out->status == 401 && !replayed &&
                maas_auth_reject(c, ticket.generation)) {
                /* The token was refused: drop it, fetch a new one, replay once. */
                replayed = 1;
                maas_count(c, MAAS_COUNTER_TOKEN_REPLAYS, 1);
                MAAS_INFO(c, "401 from the API: replaying once with a new token");
                maas_auth_release(&ticket);
                maas_response_free(out);
                continue;
            }
            st = maas_http_status_error(out->status, out->body, out->len, f->endpoint, err);
            maas_http_meta_to_error(&out->meta, err);
            maas_response_free(out);
        }
        maas_auth_release(&ticket);
        err->pub.attempts = attempts;
        /* These calls are idempotent: a cut answer may be asked for again. */
        if (!maas_retry_worth(err))
            return st;
        delay = maas_retry_delay_ms(c, retries + 1, err);
        if (delay >= 0 && f->last_request_at &&
            *f->last_request_at + f->min_interval_ms - maas_now_ms() > delay)
            delay = *f->last_request_at + f->min_interval_ms - maas_now_ms();
        /* A wait that would outlast the deadline is no retry at all. */
        if (delay < 0 || (one.deadline_at && maas_now_ms() + delay >= one.deadline_at))
            return st;
        retries++;
        MAAS_INFO(c, "%s (%s); retry %u in %lld ms", maas_strerror(st), err->message, retries,
                  (long long)delay);
        maas_count(c, MAAS_COUNTER_RETRIES, 1);
        if (f->cancel) {
            /* A stream's fetch: a cancellation wakes this wait. */
            maas_error_clear(err);
            st = maas_auth_sleep(c, delay, f->cancel, one.deadline_at, err);
            if (st != MAAS_OK)
                return st;
        } else {
            maas_sleep_ms(delay);
        }
        maas_error_clear(err);
    }
}

/* ---- the token request ------------------------------------------------ */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* s form-urlencoded (the HTML byte serializer) into out; returns the length. */
static size_t form_encode(unsigned char *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '*' || c == '-' || c == '.' || c == '_') {
            out[o++] = c;
        } else if (c == ' ') {
            out[o++] = '+';
        } else {
            out[o++] = '%';
            out[o++] = (unsigned char)hex[c >> 4];
            out[o++] = (unsigned char)hex[c & 15];
        }
    }
    return o;
}

/*
 * "Authorization: Basic base64(id:secret)", id and secret form-urlencoded
 * first (RFC 6749 section 2.3.1), so that a ':' in the id cannot move the
 * split; wiped by the caller.
 */
static char *basic_header(const char *id, const char *secret)
{
    static const char prefix[] = "Authorization: Basic ";
    size_t il = strlen(id), sl = strlen(secret), n = 3 * il + 1 + 3 * sl;
    size_t outlen = sizeof prefix - 1 + 4 * ((n + 2) / 3) + 1;
    unsigned char *plain = malloc(n);
    char *out = malloc(outlen), *o;
    size_t i;
    if (!plain || !out) {
        free(plain);
        free(out);
        return NULL;
    }
    il = form_encode(plain, id);
    plain[il] = ':';
    n = il + 1 + form_encode(plain + il + 1, secret);
    memcpy(out, prefix, sizeof prefix - 1);
    o = out + sizeof prefix - 1;
    for (i = 0; i + 2 < n; i += 3) {
        *o++ = b64[plain[i] >> 2];
        *o++ = b64[((plain[i] & 3) << 4) | (plain[i + 1] >> 4)];
        *o++ = b64[((plain[i + 1] & 15) << 2) | (plain[i + 2] >> 6)];
        *o++ = b64[plain[i + 2] & 63];
    }
    if (i < n) {
        *o++ = b64[plain[i] >> 2];
        if (i + 1 < n) {
            *o++ = b64[((plain[i] & 3) << 4) | (plain[i + 1] >> 4)];
            *o++ = b64[(plain[i + 1] & 15) << 2];
        } else {
            *o++ = b64[(plain[i] & 3) << 4];
            *o++ = '=';
        }
        *o++ = '=';
    }
    *o = '\0';
    maas_wipe(plain, 3 * strlen(id) + 1 + 3 * strlen(secret));
    free(plain);
    return out;
}

maas_status maas_call_token(maas_client *c, char **header, int64_t *lifetime_ms, atomic_int *cancel,
                            int64_t deadline_at, int64_t *last_request_at, maas_error_rec *err)
{
    static const char form[] = "grant_type=client_credentials";
    maas_fetch f;
    maas_response r;
    struct curl_slist *h = NULL, *t;
    char *basic = basic_header(c->client_id, c->client_secret);
    maas_status st;

    if (!basic)
        return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory");
    h = curl_slist_append(NULL, basic);
    maas_wipe_free(basic);
    if (h && (t = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded")))
        h = t;
    else
        goto oom;
    if ((t = curl_slist_append(h, "Accept: application/json")))
        h = t;
    else
        goto oom;

    memset(&f, 0, sizeof f);
    f.url = c->auth_url;
    f.post_body = form;
    f.post_len = sizeof form - 1;
    f.headers = h;
    f.max_body = TOKEN_BODY_MAX;
    f.endpoint = MAAS_EP_TOKEN;
    f.cancel = cancel;
    f.deadline_at = deadline_at;
    f.min_interval_ms = MAAS_TOKEN_REQUEST_INTERVAL_MS;
    f.last_request_at = last_request_at;
    st = maas_call(c, &f, 0, &r, err);
    maas_http_headers_free(h);
    if (st != MAAS_OK) {
        MAAS_WARN(c, "token endpoint: %s: %s", maas_strerror(st), err->message);
        return st;
    }
    st = maas_auth_parse_token(r.body, r.len, header, lifetime_ms, err);
    maas_response_free(&r); /* wipes the answer */
    return st;
oom:
    maas_http_headers_free(h);
    return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory");
}
