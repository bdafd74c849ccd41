/*
 * stream: generation streams. One engine, maas_stream_advance(), under the
 * pull iterator (maas_stream_next), the push interface (maas_stream_run,
 * maas_generate), the collecting convenience (maas_generate_text) and, never
 * blocking, the streams of a maas_multi (multi.c).
 *
 * An attempt is one POST to generatestream. Before any token has reached the
 * caller a failed attempt may be replayed (after a 401, with a new token) or
 * retried (connection failures, 429, 5xx); once a token has been delivered a
 * failure is final, so the caller never sees a token twice.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "auth.h"
#include "call.h"
#include "clientdata.h"
#include "clock.h"
#include "http.h"
#include "hub.h"
#include "log.h"
#include "models.h"
#include "ndjson.h"
#include "stream.h"
#include "wipe.h"

/* Monotonic seconds with the clock's resolution: a token may follow the last within a millisecond. */
static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- request validation and body --------------------------------------- */

/* Code points of valid UTF-8, or -1. */
static long utf8_length(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    long count = 0;
    while (p < end) {
        unsigned char b = *p;
        size_t need;
        uint32_t cp;
        if (b < 0x80) {
            p++;
            count++;
            continue;
        }
        if (b >= 0xc2 && b <= 0xdf) {
            need = 1;
            cp = b & 0x1f;
        } else if (b >= 0xe0 && b <= 0xef) {
            need = 2;
            cp = b & 0x0f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            need = 3;
            cp = b & 0x07;
        } else {
            return -1;
        }
        if ((size_t)(end - p) <= need)
            return -1;
        for (size_t i = 1; i <= need; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return -1;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        /* Overlong forms, surrogates and values past U+10FFFF. */
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return -1;
        p += need + 1;
        count++;
    }
    return count;
}

static maas_status check_request(const maas_request *r, maas_error_rec *err)
{
    long n;
    if (r->version == 0 || r->version > MAAS_REQUEST_VERSION)
        return maas_error_set(err, MAAS_ERR_OPTIONS_VERSION,
                              "maas_request version %u is not supported (this is libmaas %s, which "
                              "knows versions 1 to %d; initialise with MAAS_REQUEST_INIT)",
                              r->version, MAAS_VERSION_STRING, MAAS_REQUEST_VERSION);
    if (!r->prompt)
        return maas_error_set(err, MAAS_ERR_INVALID_ARGUMENT, "prompt is NULL");
    n = utf8_length(r->prompt, strlen(r->prompt));
    if (n < 0)
        return maas_error_set(err, MAAS_ERR_INVALID_ARGUMENT, "prompt is not valid UTF-8");
    if (n < 2)
        return maas_error_set(err, MAAS_ERR_INVALID_ARGUMENT,
                              "prompt must be at least 2 characters, got %ld", n);
    if (r->max_new_tokens != 0 && (r->max_new_tokens < 1 || r->max_new_tokens >= 2048))
        return maas_error_set(err, MAAS_ERR_INVALID_ARGUMENT,
                              "max_new_tokens must be in [1, 2048), got %d", r->max_new_tokens);
    /* The service compares the value as a float32: 0.99999999 rounds to 1.0f and is
     * refused there, so it is refused here, before anything is sent. */
    if (!((float)r->temperature >= 0.0f && (float)r->temperature < 1.0f))
        return maas_error_set(err, MAAS_ERR_INVALID_ARGUMENT,
                              "temperature must be in [0, 1) as a 32-bit float, got %.9g",
                              r->temperature);
    if (!r->model_info && !r->model)
        return maas_error_set(err, MAAS_ERR_INVALID_ARGUMENT,
                              "model is NULL: name a model or product, or pass model_info");
    return MAAS_OK;
}

static const maas_model *find_model(const maas_model_list *cat, const char *name,
                                    maas_error_rec *err)
{
    const maas_model *m = maas_model_list_find(cat, name);
    if (!m) {
        maas_error_clear(err); /* the catalogue's own 200 is not this failure's status */
        maas_error_set(err, MAAS_ERR_UNKNOWN_MODEL,
                       "model \"%s\" is not in the catalogue (neither a model nor a product name)",
                       name);
    }
    return m;
}

static const maas_model *resolve_model(maas_client *c, const maas_request *r, maas_error_rec *err)
{
    const maas_model_list *cat;
    if (r->model_info)
        return r->model_info;
    cat = maas_models_catalogue(c, NULL, 0, err);
    if (!cat)
        return NULL;
    return find_model(cat, r->model, err);
}

/* The service's cap on a request body. */
#define MAAS_MAX_BODY_BYTES (16u * 1024u * 1024u)

/* Wipe the prompt held by a request object before it goes (as the body is). */
static void wipe_root(json_t *root)
{
    json_t *p = json_object_get(json_object_get(root, "request"), "prompt");
    if (json_is_string(p))
        maas_wipe((char *)json_string_value(p), json_string_length(p));
    json_decref(root);
}

/* 15 significant digits print 0.9 as 0.9, as the guide's Python does. */
#define BODY_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

/* The service refuses a larger body anyway, after the whole upload. */
static maas_status too_big(size_t len, int without_model, maas_error_rec *err)
{
    return maas_error_set(err, MAAS_ERR_INVALID_ARGUMENT,
                          "the request would be %s%zu bytes, over the service's limit of "
                          "16 MiB (%u bytes): shorten the prompt",
                          without_model ? "more than " : "", len, (unsigned)MAAS_MAX_BODY_BYTES);
}

/* The body's model fields, then the body itself; takes root. */
static maas_status finish_body(maas_stream *s, json_t *root, const maas_model *m,
                               maas_error_rec *err)
{
    maas_status st = MAAS_OK;
    if (json_object_set_new(root, "model", json_string(m->model_name)) ||
        json_object_set_new(root, "productName", json_string(m->product_name)) ||
        json_object_set_new(root, "productId", json_string(m->product_id))) {
        wipe_root(root);
        return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory building the request");
    }
    s->body = json_dumps(root, BODY_FLAGS);
    wipe_root(root);
    if (!s->body)
        st = maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory building the request");
    else if ((s->body_len = strlen(s->body)) > MAAS_MAX_BODY_BYTES)
        st = too_big(s->body_len, 0, err);
    return st;
}

/* The request's own part of the body: all but the model, which may need the catalogue. */
static maas_status build_root(maas_stream *s, const maas_request *r, json_t **out,
                              maas_error_rec *err)
{
    json_t *root = NULL, *req = NULL, *params = NULL;
    json_error_t jerr;
    maas_status st = MAAS_OK;

    if (r->params_json) {
        params = json_loads(r->params_json, 0, &jerr);
        if (!params || !json_is_object(params)) {
            json_decref(params);
            return maas_error_set(err, MAAS_ERR_INVALID_ARGUMENT,
                                  "params_json is not a JSON object%s%s", params ? "" : ": ",
                                  params ? "" : jerr.text);
        }
    } else {
        params = json_object();
    }
    root = json_object();
    req = json_object();
    if (!params || !root || !req ||
        json_object_set_new(params, "max_new_tokens",
                            json_integer(r->max_new_tokens ? r->max_new_tokens
                                                           : MAAS_DEFAULT_MAX_NEW_TOKENS)) ||
        json_object_set_new(params, "temperature", json_real(r->temperature)) ||
        json_object_set_new(req, "prompt", json_string(r->prompt)) ||
        json_object_set(req, "params", params) ||
        json_object_set(root, "request", req) ||
        json_object_set_new(root, "cloudAccountId", json_string(s->c->cloud_account))) {
        st = maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory building the request");
        if (root && req && json_object_get(req, "prompt"))
            json_object_set(root, "request", req); /* so that wipe_root finds the prompt */
        json_decref(params);
        json_decref(req);
        wipe_root(root);
        return st;
    }
    json_decref(params);
    json_decref(req);
    *out = root;
    return MAAS_OK;
}

/* ---- receiving ---------------------------------------------------------- */

/* Does `p` end a line with more than blanks in it? Keeps the state of the line it leaves open. */
static int ends_message(maas_stream *s, const char *p, size_t n)
{
    const char *end = p + n;
    int found = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        for (; !s->line_has_text && p < stop; p++)
            if (*p != ' ' && *p != '\t' && *p != '\r')
                s->line_has_text = 1;
        if (!nl)
            break;
        found |= s->line_has_text;
        s->line_has_text = 0;
        p = nl + 1;
    }
    return found;
}

static size_t on_write(char *data, size_t size, size_t n, void *userp)
{
    maas_stream *s = userp;
    size_t len = size * n;
    maas_status st;

    if (!s->http_status)
        curl_easy_getinfo(s->x.easy, CURLINFO_RESPONSE_CODE, &s->http_status);
    if (s->http_status != 200) {
        size_t keep = ERROR_BODY_MAX - s->error_len;
        char *b;
        if (keep > len)
            keep = len;
        if (keep) {
            b = realloc(s->error_body, s->error_len + keep + 1);
            if (!b) {
                s->write_status = MAAS_ERR_NO_MEMORY;
                return 0;
            }
            s->error_body = b;
            memcpy(b + s->error_len, data, keep);
            s->error_len += keep;
            b[s->error_len] = '\0';
        }
        return len;
    }
    /* The idle clock measures the gap between messages, so only the end of a
     * line that holds one restarts it: a server dripping one message byte by
     * byte, or sending bare newlines as keep-alives, still trips it. */
    if (ends_message(s, data, len))
        maas_xfer_mark(&s->x);
    st = maas_ndjson_feed(&s->dec, data, len);
    if (st != MAAS_OK) {
        s->write_status = st;
        return 0;
    }
    if (s->sched)
        s->sched->ready(s);
    return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *userp)
{
    maas_stream *s = userp;
    /* The status line starts the answer and restarts the idle clock; further
     * header lines do not, so a server dripping headers forever still trips it. */
    if (size * n <= 2 && (data[0] == '\r' || data[0] == '\n'))
        s->headers_done = 1; /* the blank line: the body starts */
    if (size * n >= 5 && !memcmp(data, "HTTP/", 5)) {
        s->headers_done = 0;
        const char *sp = memchr(data, ' ', size * n);
        long code = 0;
        if (sp && (size_t)(sp - data) + 4 <= size * n)
            code = strtol(sp + 1, NULL, 10);
        /* An interim 1xx answer (102 Processing, sent every few seconds by a
         * proxy) is not the server answering: only the final status line is. */
        if (code < 100 || code >= 200)
            maas_xfer_mark(&s->x);
        /* Known from here on, so that a failure before the first body byte
         * (an idle timeout) still reports the answer's status. */
        if (code)
            s->http_status = code;
    }
    return maas_http_header_cb(data, size, n, &s->meta);
}

/* ---- attempts ------------------------------------------------------------ */

void maas_stream_drop_attempt(maas_stream *s)
{
    maas_xfer_finish(&s->x);
    if (s->auth) {
        struct curl_slist *p = s->auth;
        /* Free only this attempt's nodes (the token's, the timeout's), not the fixed headers. */
        while (p->next && p->next != s->headers)
            p = p->next;
        p->next = NULL;
        maas_http_headers_free(s->auth);
        s->auth = NULL;
    }
}

maas_status maas_stream_fail(maas_stream *s, maas_status st)
{
    maas_stream_drop_attempt(s);
    s->state = S_FAILED;
    s->err.pub.status = st;
    if (s->sent && !s->err.pub.http_status)
        s->err.pub.http_status = (int)s->http_status;
    s->err.pub.attempts = s->attempts;
    if (s->sent)
        maas_http_meta_to_error(&s->meta, &s->err); /* the last answer's rate-limit headers */
    if (!s->err.request_id[0])
        maas_error_set_request_id(&s->err, s->request_id);
    MAAS_DEBUG(s->c, "stream failed after %zu tokens, %u attempts: %s: %s", s->tokens,
               s->attempts, maas_status_name(st), s->err.message);
    return maas_error_publish(&s->err);
}

/* Wait in the multi for what its fetcher brings (the catalogue or a token). */
static maas_status wait_aside(maas_stream *s, stream_state state)
{
    maas_status st;
    s->state = state;
    st = s->sched->need(s, state == S_WAIT_CATALOGUE ? MAAS_NEED_CATALOGUE : MAAS_NEED_TOKEN);
    if (st != MAAS_OK)
        return maas_error_set(&s->err, st, "could not start a fetch aside for the %s",
                              state == S_WAIT_CATALOGUE ? "model catalogue" : "token");
    s->sched->track(s); /* its deadline */
    return MAAS_PENDING;
}

static maas_status start_attempt(maas_stream *s)
{
    maas_status st;
    CURLcode rc = CURLE_OK;

    maas_stream_drop_attempt(s);
    s->sent = 0;
    s->http_status = 0;
    /* The record holds this attempt's failure only, not an earlier call's 200. */
    maas_error_clear(&s->err);
    /* The deadline runs from the first attempt, its token fetch included. */
    if (s->attempts == 0 && s->c->deadline_ms > 0 && !s->x.deadline_at)
        s->x.deadline_at = maas_now_ms() + s->c->deadline_ms;
    /* Every attempt, the first included, takes the cache's current token (the
     * one taken at open may have expired since); a fetch it needs is
     * cancellable and within what is left of the stream's deadline. */
    if (s->ticket_ready) {
        s->ticket_ready = 0; /* fetched aside for this attempt */
    } else if (s->sched) {
        /* A multi never waits on the network: without a token at hand, the
         * stream waits (in the multi) for the one fetched aside. */
        int refresh = 0;
        maas_auth_release(&s->ticket);
        st = maas_auth_try(s->c, &s->ticket, &refresh, &s->err);
        if (st == MAAS_PENDING)
            return wait_aside(s, S_WAIT_TOKEN);
        if (st != MAAS_OK)
            return st;
        if (refresh && s->sched->need(s, MAAS_NEED_REFRESH) != MAAS_OK)
            MAAS_DEBUG(s->c, "could not start a token refresh aside; the next attempt tries again");
    } else {
        maas_auth_release(&s->ticket);
        st = maas_auth_acquire_for(s->c, &s->ticket, &s->cancel, s->x.deadline_at, &s->err);
        if (st != MAAS_OK)
            return st;
    }
    s->auth = curl_slist_append(NULL, s->ticket.header);
    if (!s->auth)
        return maas_error_set(&s->err, MAAS_ERR_NO_MEMORY, "out of memory");
    s->auth->next = s->headers;
    if (s->x.deadline_at) {
        /* Without it the service's dispatcher gives a generation its own 30 s;
         * with it, grpc-gateway bounds the call by what is left of ours. */
        int64_t left = s->x.deadline_at - maas_now_ms();
        char value[48];
        struct curl_slist *t;
        if (left <= 0)
            return maas_error_set(&s->err, MAAS_ERR_DEADLINE, "the %ld ms deadline expired",
                                  s->c->deadline_ms);
        /* gRPC allows at most 8 digits: past 27 hours, whole seconds, then
         * hours (a deadline of years is as good as none). */
        if (left <= 99999999)
            snprintf(value, sizeof value, "Grpc-Timeout: %lldm", (long long)left);
        else if (left / 1000 < 99999999)
            snprintf(value, sizeof value, "Grpc-Timeout: %lldS", (long long)(left / 1000 + 1));
        else
            snprintf(value, sizeof value, "Grpc-Timeout: %lldH",
                     left / 3600000 < 99999999 ? (long long)(left / 3600000 + 1) : 99999999LL);
        t = curl_slist_append(NULL, value);
        if (!t)
            return maas_error_set(&s->err, MAAS_ERR_NO_MEMORY, "out of memory");
        t->next = s->headers;
        s->auth->next = t;
    }

    st = maas_xfer_prepare(&s->x, &s->err);
    if (st != MAAS_OK)
        return st;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(s->x.easy, opt, val); } while (0)
    SET(CURLOPT_URL, s->url);
    SET(CURLOPT_HTTPHEADER, s->auth);
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->body_len);
    SET(CURLOPT_POSTFIELDS, s->body);
    SET(CURLOPT_PRIVATE, s); /* a multi finds the stream of a finished transfer */
#undef SET
    /* The head of the list must not lead into the fixed headers when it is freed. */
    if (rc != CURLE_OK)
        return maas_error_set(&s->err, MAAS_ERR_INTERNAL, "could not configure libcurl: %s",
                              curl_easy_strerror(rc));
    maas_ndjson_reset(&s->dec);
    maas_http_meta_init(&s->meta);
    s->http_status = 0;
    s->headers_done = 0;
    s->error_len = 0;
    s->write_status = MAAS_OK;
    if (s->attempts == 0)
        s->t_start = mono_s();
    s->line_has_text = 0;
    s->attempts++;
    maas_count(s->c, MAAS_COUNTER_API_REQUESTS, 1);
    MAAS_DEBUG(s->c, "POST %s (attempt %u)", s->url, s->attempts);
    s->x.write_fn = on_write;
    s->x.write_data = s;
    s->x.header_fn = on_header;
    s->x.header_data = s;
    s->x.api_host = 1;
    /* A blocking stream may share the client's HTTP/2 connections with other
     * threads' (hub.c); a multi's streams share their multi's. */
    if (!s->sched)
        s->x.driver = &maas_hub_driver;
    st = maas_xfer_start(&s->x, &s->err);
    if (st == MAAS_OK) {
        s->state = S_RUNNING;
        s->sent = 1;
        if (s->sched)
            s->sched->track(s); /* its idle and deadline clocks */
    }
    return st;
}

/* The backoff is over: the next attempt, with the cache's current token
 * (the one held may have expired during the wait). */
static maas_status retry_now(maas_stream *s)
{
    maas_auth_release(&s->ticket);
    maas_error_clear(&s->err);
    return start_attempt(s);
}

/*
 * The attempt failed with s->err set and nothing delivered: replay after a
 * 401, retry when worth it, or give up. MAAS_OK means a new attempt runs;
 * MAAS_PENDING (when !block) that one will after a backoff.
 */
static maas_status after_failed_attempt(maas_stream *s, maas_status st, int block)
{
    uint64_t generation = s->ticket.generation;
    int64_t delay, now;

    maas_stream_drop_attempt(s);
    s->err.pub.attempts = s->attempts;
    /* Never once a token has reached the caller; and a token fetch that failed
     * has had its own retries. */
    if (s->tokens > 0 || !s->sent || st == MAAS_ERR_CANCELLED || st == MAAS_ERR_DEADLINE)
        return st;
    if (st == MAAS_ERR_UNAUTHENTICATED && !s->replayed && maas_auth_reject(s->c, generation)) {
        s->replayed = 1;
        maas_count(s->c, MAAS_COUNTER_TOKEN_REPLAYS, 1);
        MAAS_INFO(s->c, "401 from the API: replaying once with a new token");
        maas_auth_release(&s->ticket);
        maas_error_clear(&s->err);
        return start_attempt(s);
    }
    /* Nothing was delivered, so a stream cut before its first token is retried too. */
    if (st != MAAS_ERR_TRUNCATED && !maas_retry_worth(&s->err))
        return st;
    delay = maas_retry_delay_ms(s->c, s->retries + 1, &s->err);
    /* A wait that would outlast the deadline is no retry at all. One reading
     * of the clock for the check and the wake-up time: the log line between
     * them may take any time, and a wake-up past the deadline would make a
     * multi spin on the expired deadline until the wake-up. */
    now = maas_now_ms();
    if (delay < 0 || (s->x.deadline_at && now + delay >= s->x.deadline_at))
        return st;
    s->retries++;
    maas_count(s->c, MAAS_COUNTER_RETRIES, 1);
    MAAS_INFO(s->c, "%s (%s); retry %u in %lld ms", maas_strerror(st), s->err.message, s->retries,
              (long long)delay);
    s->state = S_BACKOFF;
    s->wake_at = now + delay;
    if (!block) {
        if (s->sched)
            s->sched->track(s);
        return MAAS_PENDING;
    }
    st = maas_xfer_sleep(&s->x, s->wake_at - maas_now_ms(), &s->err);
    if (st != MAAS_OK)
        return st;
    return retry_now(s);
}

/* The transfer is over and the decoder holds no complete line. */
static maas_status transfer_ended(maas_stream *s, maas_msg *msg)
{
    maas_status st;
    if (!s->http_status) /* an empty body never reached on_write */
        curl_easy_getinfo(s->x.easy, CURLINFO_RESPONSE_CODE, &s->http_status);
    if (s->write_status != MAAS_OK) {
        if (s->write_status == MAAS_ERR_NO_MEMORY)
            return maas_error_set(&s->err, MAAS_ERR_NO_MEMORY, "out of memory reading the stream");
        return maas_error_set(&s->err, s->write_status, "%s", maas_ndjson_error(&s->dec));
    }
    if (s->x.result != CURLE_OK) {
        if (s->http_status == 200 && s->headers_done) {
            /* The server cut the stream: what arrived stays delivered. */
            char detail[CURL_ERROR_SIZE];
            maas_copy_text(detail, sizeof detail, s->x.errbuf, strlen(s->x.errbuf));
            return maas_error_set(&s->err, MAAS_ERR_TRUNCATED,
                                  "the connection was cut after %zu tokens, before the final "
                                  "message (%s)", s->tokens,
                                  detail[0] ? detail : curl_easy_strerror(s->x.result));
        }
        return maas_http_curl_error(&s->x, s->x.result, &s->err);
    }
    if (s->http_status != 200) {
        maas_http_meta_to_error(&s->meta, &s->err);
        st = maas_http_status_error(s->http_status, s->error_body, s->error_len, MAAS_EP_GENERATE,
                                    &s->err);
        return st;
    }
    st = maas_ndjson_finish(&s->dec, msg);
    if (st == MAAS_OK)
        return MAAS_OK; /* an unterminated last line */
    if (st != MAAS_DONE)
        return maas_error_set(&s->err, st, "%s", maas_ndjson_error(&s->dec));
    return maas_error_set(&s->err, MAAS_ERR_TRUNCATED,
                          "the stream ended after %zu tokens without its final message", s->tokens);
}

static char *dup_len(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        if (n)
            memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

static void keep_timings(maas_stream *s, int final_has_token)
{
    double now = mono_s();
    /* The final message may carry the stream's only token. */
    size_t tokens = s->tokens + (final_has_token ? 1 : 0);
    if (!s->t_first && final_has_token)
        s->t_first = now;
    s->details.total_time = now - s->t_start;
    s->details.time_to_first_token = s->t_first ? s->t_first - s->t_start : -1.0;
    s->details.tokens_per_second =
        tokens >= 2 && now > s->t_first ? (double)(tokens - 1) / (now - s->t_first) : 0.0;
}

static maas_status keep_details(maas_stream *s, const maas_msg *m)
{
    const maas_details *d = &m->details;
    const char *name = d->finish_reason_name ? d->finish_reason_name : "";
    s->details = *d;
    s->finish_name = dup_len(name, strlen(name));
    s->generated_text = dup_len(d->generated_text ? d->generated_text : "", d->generated_text_len);
    if (!s->finish_name || !s->generated_text)
        return maas_error_set(&s->err, MAAS_ERR_NO_MEMORY, "out of memory keeping the details");
    s->details.finish_reason_name = s->finish_name;
    s->details.generated_text = s->generated_text;
    s->details.request_id = s->request_id;
    s->details.attempts = s->attempts;
    keep_timings(s, m->has_token);
    s->details.retry_after = s->meta.retry_after;
    s->details.rate_limit_limit = s->meta.rl_limit;
    s->details.rate_limit_remaining = s->meta.rl_remaining;
    s->details.rate_limit_reset = s->meta.rl_reset;
    return MAAS_OK;
}

/*
 * Let the transfer end after the final message (its terminating chunk is
 * usually in the same packet) so that the connection can be reused. A server
 * that keeps the stream open past its final message is not waited for long:
 * the connection is closed instead.
 */
static void drain(maas_stream *s, int block)
{
    maas_error_rec ignored;
    int64_t until = maas_now_ms() + 1000;
    long saved = (long)s->x.idle_ms;
    if (!block) {
        /* A multi settles the transfer as it ends (maas_stream_settled). */
        s->x.idle_ms = 1000;
        maas_xfer_mark(&s->x);
        return;
    }
    maas_error_clear(&ignored);
    s->x.idle_ms = 1000;
    maas_xfer_mark(&s->x);
    while (!s->x.done && maas_now_ms() < until && maas_xfer_step(&s->x, &ignored) == MAAS_OK)
        ;
    s->x.idle_ms = saved;
    maas_stream_drop_attempt(s);
}

/* One decoded message: a token to hand out, the end, or the server's error. */
static maas_status take_message(maas_stream *s, maas_msg *m, const maas_token **out, int block)
{
    maas_status st;
    if (m->request_id && m->request_id[0])
        maas_copy_text(s->request_id, sizeof s->request_id, m->request_id, strlen(m->request_id));
    switch (m->type) {
    case MAAS_MSG_TOKEN:
        if (!s->tokens)
            s->t_first = mono_s();
        s->token = m->token;
        s->token.index = s->tokens++;
        s->token.last_buffered = !maas_ndjson_has_line(&s->dec);
        *out = &s->token;
        return MAAS_OK;
    case MAAS_MSG_FINAL:
        st = keep_details(s, m);
        if (st == MAAS_OK && m->has_token) {
            /* drain() feeds the decoder again, which may release this message. */
            s->final_text = dup_len(m->token.text, m->token.text_len);
            if (!s->final_text)
                st = maas_error_set(&s->err, MAAS_ERR_NO_MEMORY, "out of memory");
        }
        if (st != MAAS_OK)
            return maas_stream_fail(s, st);
        drain(s, block);
        if (m->has_token) {
            s->token = m->token;
            s->token.text = s->final_text;
            s->token.index = s->tokens++;
            s->token.last_buffered = 1; /* no token can follow it */
            *out = &s->token;
            s->state = S_FINAL_PENDING;
            return MAAS_OK;
        }
        s->state = S_DONE;
        return MAAS_DONE;
    case MAAS_MSG_ERROR: /* handled by the caller */
    case MAAS_MSG_NONE:
        break;
    }
    maas_error_set(&s->err, MAAS_ERR_INTERNAL, "the decoder produced no message");
    return maas_stream_fail(s, MAAS_ERR_INTERNAL);
}

/* An {"error": ...} line: the attempt's failure, with the server's code and words. */
static void stream_error(maas_stream *s, const maas_msg *m)
{
    s->err.pub.grpc_code = m->grpc_code;
    s->err.pub.http_status = (int)s->http_status;
    maas_error_set_request_id(&s->err, m->request_id);
    if (m->error_message && m->error_message[0])
        maas_error_set(&s->err, MAAS_ERR_STREAM, "%s", m->error_message);
    else
        maas_error_set(&s->err, MAAS_ERR_STREAM,
                       "the server sent an error line without a usable message (gRPC code %d)",
                       m->grpc_code);
}

/* ---- public ------------------------------------------------------------------ */

maas_status maas_stream_create(maas_stream **out, maas_client *client, const maas_request *request,
                               int defer, maas_error_rec *err)
{
    maas_stream *s;
    const maas_model *m = NULL;
    maas_status st;
    json_t *root = NULL;
    size_t n;

    *out = NULL;
    st = check_request(request, err);
    if (st != MAAS_OK)
        return st;
    if (!client->cloud_account)
        return maas_error_set(err, MAAS_ERR_CONFIG,
                              "no cloud account: set cloud_account (MAAS_CLOUD_ACCOUNT)");
    s = calloc(1, sizeof *s);
    if (!s)
        return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory opening a stream");
    s->c = client;
    atomic_init(&s->cancel, 0);
    s->heap_index = SIZE_MAX;
    maas_error_clear(&s->err);
    maas_ndjson_init(&s->dec, client->max_line_bytes);

    st = build_root(s, request, &root, &s->err);
    if (st != MAAS_OK)
        goto fail;
    if (defer && !request->model_info) {
        /* A multi's stream: the catalogue only if it is at hand, else it is
         * fetched aside and the body finished when it comes. */
        const maas_model_list *cat = maas_models_cached(client);
        if (cat) {
            m = find_model(cat, request->model, &s->err);
            if (!m) {
                wipe_root(root);
                st = s->err.pub.status;
                goto fail;
            }
        } else if (json_dumpb(root, NULL, 0, BODY_FLAGS) > MAAS_MAX_BODY_BYTES) {
            /* Too long already without its model: refused now, not when the
             * catalogue comes (the model's fields only add to it). */
            size_t len = json_dumpb(root, NULL, 0, BODY_FLAGS);
            wipe_root(root);
            st = too_big(len, 1, &s->err);
            goto fail;
        } else {
            s->model_name = strdup(request->model);
            if (!s->model_name) {
                wipe_root(root);
                st = maas_error_set(&s->err, MAAS_ERR_NO_MEMORY, "out of memory opening a stream");
                goto fail;
            }
            s->pending_body = root;
        }
    } else {
        m = resolve_model(client, request, &s->err);
        if (!m) {
            wipe_root(root);
            st = s->err.pub.status;
            goto fail;
        }
    }
    if (m) {
        st = finish_body(s, root, m, &s->err);
        if (st != MAAS_OK)
            goto fail;
    }
    n = strlen(client->api_base_url) + sizeof "/generatestream";
    s->url = malloc(n);
    s->headers = maas_http_headers(NULL, 1);
    if (!s->url || !s->headers) {
        st = maas_error_set(&s->err, MAAS_ERR_NO_MEMORY, "out of memory opening a stream");
        goto fail;
    }
    snprintf(s->url, n, "%s/generatestream", client->api_base_url);
    if (!defer) {
        /* Fail early on credentials; the first attempt then uses this token. */
        st = maas_auth_acquire(client, &s->ticket, &s->err);
        if (st != MAAS_OK)
            goto fail;
    }
    s->state = S_NEW;
    *out = s;
    return MAAS_OK;
fail:
    maas_error_copy(err, &s->err);
    maas_stream_free(s);
    return st;
}

maas_status maas_stream_open(maas_stream **out, maas_client *client, const maas_request *request)
{
    maas_error_rec err;
    maas_status st;

    if (!out)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!client || !request)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "%s is NULL", client ? "request" : "client");
    maas_error_clear(&err);
    st = maas_stream_create(out, client, request, 0, &err);
    if (st != MAAS_OK)
        return maas_error_publish(&err);
    /* Only now take a channel: the catalogue and token calls above borrowed
     * and returned one, so this is the one holding their warm connection. */
    st = maas_xfer_init(&(*out)->x, client, &(*out)->cancel, &err);
    if (st != MAAS_OK) {
        maas_stream_free(*out);
        *out = NULL;
        return maas_error_publish(&err);
    }
    return MAAS_OK;
}

/* A failed attempt's outcome: a new attempt runs (continue), or the stream fails. */
#define AFTER_FAILURE(s, st, block)                                                       \
    do {                                                                                   \
        maas_status after_ = after_failed_attempt((s), (st), (block));                     \
        if (after_ == MAAS_PENDING)                                                        \
            return MAAS_PENDING;                                                           \
        if (after_ != MAAS_OK)                                                             \
            return maas_stream_fail((s), after_);                                                      \
    } while (0)

maas_status maas_stream_advance(maas_stream *s, const maas_token **out, int block)
{
    maas_status st;
    maas_msg msg;

    *out = NULL;
    if (s->state != S_DONE && s->state != S_FAILED && atomic_load(&s->cancel)) {
        /* Tokens already buffered are not handed out after a cancel. */
        maas_error_set(&s->err, MAAS_ERR_CANCELLED, "the stream was cancelled");
        return maas_stream_fail(s, MAAS_ERR_CANCELLED);
    }
    switch (s->state) {
    case S_DONE:
        return MAAS_DONE;
    case S_FAILED:
        return maas_error_publish(&s->err);
    case S_FINAL_PENDING:
        s->state = S_DONE;
        return MAAS_DONE;
    case S_WAIT_CATALOGUE:
    case S_WAIT_TOKEN:
        /* Only a multi's streams wait here; what they wait for comes through
         * maas_stream_catalogue_ready / maas_stream_token_ready. */
        if (s->x.deadline_at && maas_now_ms() >= s->x.deadline_at) {
            maas_error_set(&s->err, MAAS_ERR_DEADLINE,
                           "the %ld ms deadline expired waiting for the %s", s->c->deadline_ms,
                           s->state == S_WAIT_CATALOGUE ? "model catalogue" : "token");
            return maas_stream_fail(s, MAAS_ERR_DEADLINE);
        }
        return MAAS_PENDING;
    case S_NEW:
        if (s->pending_body) {
            st = wait_aside(s, S_WAIT_CATALOGUE);
            return st == MAAS_PENDING ? st : maas_stream_fail(s, st);
        }
        st = start_attempt(s);
        if (st == MAAS_PENDING)
            return st;
        if (st != MAAS_OK)
            AFTER_FAILURE(s, st, block);
        break;
    case S_BACKOFF:
        if (maas_now_ms() < s->wake_at) {
            if (!block)
                return MAAS_PENDING;
            st = maas_xfer_sleep(&s->x, s->wake_at - maas_now_ms(), &s->err);
            if (st != MAAS_OK)
                return maas_stream_fail(s, st);
        }
        st = retry_now(s);
        if (st == MAAS_PENDING)
            return st;
        if (st != MAAS_OK)
            AFTER_FAILURE(s, st, block);
        break;
    case S_RUNNING:
        break;
    }
    /* The caller held control since the last token: that time is not the server's idleness. */
    if (block)
        maas_xfer_mark(&s->x);

    for (;;) {
        st = maas_ndjson_next(&s->dec, &msg);
        if (st == MAAS_OK && msg.type == MAAS_MSG_ERROR) {
            /* Before the first token, an UNAVAILABLE or RESOURCE_EXHAUSTED
             * line is a busy server like a 503 or 429: worth a retry. */
            stream_error(s, &msg);
            AFTER_FAILURE(s, MAAS_ERR_STREAM, block);
            continue;
        }
        if (st == MAAS_OK)
            return take_message(s, &msg, out, block);
        if (st != MAAS_DONE) {
            maas_error_set(&s->err, st, "%s", maas_ndjson_error(&s->dec));
            return maas_stream_fail(s, st);
        }
        if (s->x.done) {
            st = transfer_ended(s, &msg);
            if (st == MAAS_OK && msg.type == MAAS_MSG_ERROR) {
                stream_error(s, &msg);
                st = MAAS_ERR_STREAM;
            } else if (st == MAAS_OK) {
                return take_message(s, &msg, out, block);
            }
            AFTER_FAILURE(s, st, block);
            continue;
        }
        st = block ? maas_xfer_step(&s->x, &s->err) : maas_xfer_check(&s->x, &s->err);
        if (st != MAAS_OK) {
            AFTER_FAILURE(s, st, block);
            continue;
        }
        if (!block)
            return MAAS_PENDING;
    }
}

int64_t maas_stream_next_deadline(const maas_stream *s)
{
    int64_t d = INT64_MAX;
    if (s->state == S_BACKOFF)
        d = s->wake_at;
    else if (s->x.added && s->x.connected && s->x.idle_ms > 0)
        d = s->x.idle_since + s->x.idle_ms; /* before the connection: libcurl's connect clock */
    if ((s->state == S_BACKOFF || s->state == S_WAIT_CATALOGUE || s->state == S_WAIT_TOKEN ||
         s->x.added) &&
        s->x.deadline_at && s->x.deadline_at < d)
        d = s->x.deadline_at;
    return d;
}

int maas_stream_settled(maas_stream *s)
{
    if (s->x.added && !s->x.done && maas_xfer_check(&s->x, &s->err) == MAAS_OK)
        return 0;
    /* Done, or past the short drain clock: let the connection go back (or close). */
    maas_stream_drop_attempt(s);
    return 1;
}

void maas_stream_catalogue_ready(maas_stream *s, maas_status st, const maas_error_rec *err)
{
    const maas_model_list *cat = st == MAAS_OK ? maas_models_cached(s->c) : NULL;
    const maas_model *m;
    json_t *root = s->pending_body;
    if (s->state != S_WAIT_CATALOGUE)
        return;
    if (!cat) {
        if (st == MAAS_OK) /* cannot be: a catalogue fetched is kept for good */
            st = maas_error_set(&s->err, MAAS_ERR_INTERNAL, "the catalogue fetched is missing");
        else if (err && err->pub.status != MAAS_OK)
            maas_error_copy(&s->err, err);
        maas_stream_fail(s, s->err.pub.status != MAAS_OK ? s->err.pub.status : st);
        return;
    }
    s->pending_body = NULL;
    m = find_model(cat, s->model_name, &s->err);
    if (!m) {
        wipe_root(root);
        maas_stream_fail(s, MAAS_ERR_UNKNOWN_MODEL);
        return;
    }
    st = finish_body(s, root, m, &s->err);
    if (st != MAAS_OK) {
        maas_stream_fail(s, st);
        return;
    }
    s->state = S_NEW;
}

void maas_stream_token_ready(maas_stream *s, maas_status st, const maas_auth_ticket *t,
                             const maas_error_rec *err)
{
    if (s->state != S_WAIT_TOKEN)
        return;
    if (st != MAAS_OK) {
        /* The one fetch that every waiting stream shared failed: its outcome is theirs. */
        maas_error_copy(&s->err, err);
        s->err.pub.attempts = s->attempts;
        maas_stream_fail(s, st);
        return;
    }
    maas_auth_release(&s->ticket);
    s->ticket.header = strdup(t->header);
    s->ticket.generation = t->generation;
    if (!s->ticket.header) {
        maas_error_set(&s->err, MAAS_ERR_NO_MEMORY, "out of memory");
        maas_stream_fail(s, MAAS_ERR_NO_MEMORY);
        return;
    }
    s->ticket_ready = 1;
    s->state = S_NEW;
}

maas_status maas_stream_next(maas_stream *s, const maas_token **out)
{
    if (!out)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!s)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "stream is NULL");
    if (s->sched)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT,
                         "the stream belongs to a maas_multi: its multi drives it");
    return maas_stream_advance(s, out, 1);
}

maas_status maas_stream_run(maas_stream *s, maas_token_cb on_token, maas_details_cb on_details,
                            void *payload)
{
    const maas_token *tok;
    maas_status st;
    if (!s)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "stream is NULL");
    for (;;) {
        st = maas_stream_next(s, &tok);
        if (st == MAAS_OK) {
            if (on_token && on_token(tok, payload)) {
                maas_error_set(&s->err, MAAS_ERR_CANCELLED, "cancelled by the token callback");
                return maas_stream_fail(s, MAAS_ERR_CANCELLED);
            }
            continue;
        }
        if (st != MAAS_DONE)
            return st;
        if (on_details && on_details(&s->details, payload)) {
            maas_error_set(&s->err, MAAS_ERR_CANCELLED, "cancelled by the details callback");
            return maas_stream_fail(s, MAAS_ERR_CANCELLED);
        }
        return MAAS_OK;
    }
}

const maas_details *maas_stream_details(const maas_stream *s)
{
    return s && s->state == S_DONE ? &s->details : NULL;
}

const maas_error *maas_stream_error(const maas_stream *s)
{
    return s && s->state == S_FAILED ? &s->err.pub : NULL;
}

void maas_stream_cancel(maas_stream *s)
{
    if (!s)
        return;
    atomic_store(&s->cancel, 1);
    /* It may be waiting in the token cache (a fetch of its own or another's). */
    maas_auth_wake(s->c);
    if (s->sched)
        s->sched->cancelled(s);
    else
        maas_xfer_wakeup(&s->x);
}

void maas_stream_free(maas_stream *s)
{
    if (!s)
        return;
    if (s->sched)
        s->sched->forget(s);
    maas_stream_drop_attempt(s);
    maas_xfer_cleanup(&s->x);
    maas_auth_release(&s->ticket);
    maas_ndjson_cleanup(&s->dec);
    maas_http_headers_free(s->headers);
    free(s->url);
    if (s->body) {
        /* The prompt may be as sensitive as a secret. */
        maas_wipe(s->body, s->body_len);
        free(s->body);
    }
    if (s->pending_body)
        wipe_root(s->pending_body);
    free(s->model_name);
    free(s->error_body);
    free(s->final_text);
    free(s->finish_name);
    free(s->generated_text);
    free(s);
}

maas_status maas_generate(maas_client *client, const maas_request *request,
                          maas_token_cb on_token, maas_details_cb on_details, void *payload)
{
    maas_stream *s;
    maas_status st = maas_stream_open(&s, client, request);
    if (st != MAAS_OK)
        return st;
    st = maas_stream_run(s, on_token, on_details, payload);
    maas_stream_free(s);
    return st;
}

struct collect {
    char *buf;
    size_t len, cap;
    size_t max_bytes;       /* the client's max_text_bytes */
    size_t max_tokens;      /* max_new_tokens, plus the final special token */
    size_t tokens;
    maas_status why;        /* why the collector stopped the stream */
};

static int collect_token(const maas_token *t, void *payload)
{
    struct collect *c = payload;
    /* The service never sends more than max_new_tokens tokens and a final
     * special one; a server that does is broken, and what it sends is bounded
     * here rather than collected for ever. */
    if (++c->tokens > c->max_tokens) {
        c->why = MAAS_ERR_PROTOCOL;
        return 1;
    }
    if (t->special)
        return 0;
    if (t->text_len > c->max_bytes - c->len) {
        c->why = MAAS_ERR_TEXT_TOO_LONG;
        return 1;
    }
    if (c->len + t->text_len + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 256;
        char *b;
        while (cap < c->len + t->text_len + 1)
            cap *= 2;
        b = realloc(c->buf, cap);
        if (!b) {
            c->why = MAAS_ERR_NO_MEMORY;
            return 1;
        }
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, t->text, t->text_len);
    c->len += t->text_len;
    c->buf[c->len] = '\0';
    return 0;
}

maas_status maas_generate_text(char **out, size_t *out_len, maas_client *client,
                               const maas_request *request)
{
    struct collect col = { NULL, 0, 0, 0, 0, 0, MAAS_OK };
    maas_stream *s;
    maas_status st;

    if (!out)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = NULL;
    if (out_len)
        *out_len = 0;
    st = maas_stream_open(&s, client, request);
    if (st != MAAS_OK)
        return st;
    col.max_bytes = client->max_text_bytes;
    col.max_tokens = (size_t)(request->max_new_tokens ? request->max_new_tokens
                                                      : MAAS_DEFAULT_MAX_NEW_TOKENS) + 1;
    st = maas_stream_run(s, collect_token, NULL, &col);
    if (st == MAAS_ERR_CANCELLED && !atomic_load(&s->cancel)) {
        /* Only the collector cancels on its own, and says why. */
        if (col.why == MAAS_ERR_TEXT_TOO_LONG)
            st = maas_fail(MAAS_ERR_TEXT_TOO_LONG,
                           "the generated text exceeds max_text_bytes (%zu bytes)", col.max_bytes);
        else if (col.why == MAAS_ERR_PROTOCOL)
            st = maas_fail(MAAS_ERR_PROTOCOL,
                           "the server sent more than max_new_tokens (%zu) tokens and a final one",
                           col.max_tokens - 1);
        else
            st = maas_fail(MAAS_ERR_NO_MEMORY, "out of memory collecting the text");
    }
    maas_stream_free(s);
    if (st != MAAS_OK) {
        free(col.buf);
        return st;
    }
    if (!col.buf && !(col.buf = calloc(1, 1)))
        return maas_fail(MAAS_ERR_NO_MEMORY, "out of memory collecting the text");
    *out = col.buf;
    if (out_len)
        *out_len = col.len;
    return MAAS_OK;
}
