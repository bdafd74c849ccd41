#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clientdata.h"
#include "clock.h"
#include "http.h"
#include "log.h"
#include "message.h"
#include "wipe.h"

/* Request bytes the kernel may hold unsent (TCP_NOTSENT_LOWAT): enough to keep a fast link busy. */
#define MAAS_UNSENT_MAX (128 * 1024)

/* ---- share handle and channel pool ---------------------------------- */

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *userp)
{
    maas_http *http = userp;
    (void)h;
    (void)access;
    pthread_mutex_lock(&http->locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *userp)
{
    maas_http *http = userp;
    (void)h;
    pthread_mutex_unlock(&http->locks[data]);
}

maas_status maas_http_init(maas_client *c, maas_error_rec *err)
{
    maas_http *h = &c->http;
    curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
    int i;

    for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&h->locks[i], NULL);
    pthread_mutex_init(&h->pool_lock, NULL);
    snprintf(h->user_agent, sizeof h->user_agent, "libmaas/%s libcurl/%s", MAAS_VERSION_STRING,
             vi && vi->version ? vi->version : "unknown");

    h->share = curl_share_init();
    if (!h->share)
        return maas_error_set(err, MAAS_ERR_NO_MEMORY, "curl_share_init failed");
    /* DNS and TLS sessions may be shared between threads; the connection
     * cache may not (libcurl's rule), hence the channel pool. */
    if (curl_share_setopt(h->share, CURLSHOPT_LOCKFUNC, share_lock) ||
        curl_share_setopt(h->share, CURLSHOPT_UNLOCKFUNC, share_unlock) ||
        curl_share_setopt(h->share, CURLSHOPT_USERDATA, h) ||
        curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) ||
        curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION))
        return maas_error_set(err, MAAS_ERR_INTERNAL, "could not configure the curl share handle");
    return MAAS_OK;
}

static void channel_free(maas_channel *ch)
{
    if (!ch)
        return;
    if (ch->easy)
        curl_easy_cleanup(ch->easy);
    if (ch->multi)
        curl_multi_cleanup(ch->multi);
    free(ch);
}

void maas_http_cleanup(maas_http *h)
{
    int i;
    maas_channel *ch, *next;
    for (ch = h->pool; ch; ch = next) {
        next = ch->next;
        channel_free(ch);
    }
    h->pool = NULL;
    if (h->share)
        curl_share_cleanup(h->share);
    h->share = NULL;
    for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&h->locks[i]);
    pthread_mutex_destroy(&h->pool_lock);
}

static maas_channel *channel_get(maas_client *c)
{
    maas_http *h = &c->http;
    maas_channel *ch;
    pthread_mutex_lock(&h->pool_lock);
    ch = h->pool;
    if (ch) {
        h->pool = ch->next;
        h->pooled--;
    }
    pthread_mutex_unlock(&h->pool_lock);
    if (ch) {
        ch->next = NULL;
        return ch;
    }
    ch = calloc(1, sizeof *ch);
    if (!ch)
        return NULL;
    ch->multi = curl_multi_init();
    ch->easy = curl_easy_init();
    if (!ch->multi || !ch->easy) {
        channel_free(ch);
        return NULL;
    }
    return ch;
}

static void channel_put(maas_client *c, maas_channel *ch)
{
    maas_http *h = &c->http;
    if (!ch)
        return;
    pthread_mutex_lock(&h->pool_lock);
    if (h->pooled < MAAS_CHANNEL_POOL_MAX) {
        ch->next = h->pool;
        h->pool = ch;
        h->pooled++;
        ch = NULL;
    }
    pthread_mutex_unlock(&h->pool_lock);
    channel_free(ch);
}

/* ---- easy handle options -------------------------------------------- */

maas_status maas_http_setup(maas_client *c, CURL *easy, char *errbuf, maas_error_rec *err)
{
    CURLcode rc = CURLE_OK;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(easy, opt, val); } while (0)
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_SHARE, c->http.share);
    SET(CURLOPT_USERAGENT, c->http.user_agent);
    SET(CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_TCP_KEEPIDLE, 30L);
    SET(CURLOPT_TCP_KEEPINTVL, 15L);
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    /* HTTP/2 where the server offers it by ALPN (the service's front end
     * does), HTTP/1.1 otherwise and on plain http://. PIPEWAIT: a transfer
     * started while another connects to the same host waits to learn whether
     * that connection multiplexes, rather than opening one of its own. Only
     * where HTTP/2 can be: on plain http:// libcurl 7.88 would hold the
     * waiting transfer until the other one ends, and a multi's streams would
     * run one after the other. */
    SET(CURLOPT_HTTP_VERSION, c->http_version == MAAS_HTTP_1_1 ? (long)CURL_HTTP_VERSION_1_1
                                                               : (long)CURL_HTTP_VERSION_2TLS);
    SET(CURLOPT_PIPEWAIT, c->http_version != MAAS_HTTP_1_1 &&
                                  !strncasecmp(c->api_base_url, "https://", 8)
                              ? 1L
                              : 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SET(CURLOPT_SSL_VERIFYPEER, c->insecure ? 0L : 1L);
    SET(CURLOPT_SSL_VERIFYHOST, c->insecure ? 0L : 2L);
    /* TLS 1.2 at least, whatever the system's OpenSSL policy would allow,
     * to the server and to an https:// proxy alike. */
    SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    SET(CURLOPT_PROXY_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (c->ca_bundle) {
        /* Exactly this bundle: libcurl's built-in CA directory would add the
         * system's CAs to it. */
        SET(CURLOPT_CAINFO, c->ca_bundle);
        SET(CURLOPT_CAPATH, (char *)NULL);
        SET(CURLOPT_PROXY_CAINFO, c->ca_bundle);
        SET(CURLOPT_PROXY_CAPATH, (char *)NULL);
    }
    /* Proxies (docs/configuration.md): always a CONNECT tunnel, so that a
     * proxy never receives a request (and its token) it could read, and the
     * proxy's own answer to CONNECT never passes for the server's. */
    SET(CURLOPT_HTTPPROXYTUNNEL, 1L);
    SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    if (c->proxy) {
        /* Given explicitly, it is used for every request: no variable applies. */
        SET(CURLOPT_PROXY, c->proxy);
        SET(CURLOPT_NOPROXY, "");
    }
    if (c->proxy_ca_bundle) {
        SET(CURLOPT_PROXY_CAINFO, c->proxy_ca_bundle);
        SET(CURLOPT_PROXY_CAPATH, (char *)NULL); /* exactly that bundle, not the system's too */
    }
    SET(CURLOPT_ERRORBUFFER, errbuf);
#undef SET
    if (rc != CURLE_OK)
        return maas_error_set(err, rc == CURLE_OUT_OF_MEMORY ? MAAS_ERR_NO_MEMORY : MAAS_ERR_INTERNAL,
                              "could not configure libcurl: %s", curl_easy_strerror(rc));
    errbuf[0] = '\0';
    return MAAS_OK;
}

struct curl_slist *maas_http_headers(const char *auth_header, int json_body)
{
    struct curl_slist *h = NULL, *t;
    static const char *const fixed[] = {
        "Accept: application/json",
        /* A large prompt must not wait for a 100-continue round trip. */
        "Expect:",
    };
    size_t i;
    if (auth_header) {
        h = curl_slist_append(h, auth_header);
        if (!h)
            return NULL;
    }
    if (json_body) {
        /* The service wants exactly this value: "; charset=utf-8" gets a 415. */
        t = curl_slist_append(h, "Content-Type: application/json");
        if (!t)
            goto fail;
        h = t;
    }
    for (i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        t = curl_slist_append(h, fixed[i]);
        if (!t)
            goto fail;
        h = t;
    }
    return h;
fail:
    maas_http_headers_free(h);
    return NULL;
}

void maas_http_headers_free(struct curl_slist *h)
{
    struct curl_slist *p;
    for (p = h; p; p = p->next)
        if (p->data)
            maas_wipe(p->data, strlen(p->data));
    curl_slist_free_all(h);
}

static void trim_value(const char *v, size_t n, char *out, size_t outlen)
{
    while (n && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, v, n);
    out[n] = '\0';
}

void maas_http_meta_init(maas_http_meta *m)
{
    m->retry_after = -1.0;
    m->rl_limit = -1;
    m->rl_remaining = -1;
    m->rl_reset = -1.0;
}

void maas_http_meta_to_error(const maas_http_meta *m, maas_error_rec *err)
{
    err->pub.retry_after = m->retry_after;
    err->pub.rate_limit_limit = m->rl_limit;
    err->pub.rate_limit_remaining = m->rl_remaining;
    err->pub.rate_limit_reset = m->rl_reset;
}

/* A non-negative decimal count, or -1: a header is the server's word, not a number we trust. */
static long parse_count(const char *v)
{
    char *end;
    long n;
    if (*v < '0' || *v > '9')
        return -1;
    errno = 0;
    n = strtol(v, &end, 10);
    if (errno || *end)
        return -1;
    return n;
}

double maas_http_parse_rate_reset(const char *value, time_t now)
{
    const char *p = value;
    double total = 0.0;
    int parts = 0;
    if (!value || *value < '0' || *value > '9')
        return -1.0;
    /* Services disagree: delta seconds, a Unix time, or a Go duration ("6m0s"). */
    while (*p) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || !isfinite(v) || v < 0)
            return -1.0;
        p = end;
        if (!*p && !parts) {
            /* A bare number this large is a point in time, not a wait. */
            if (v >= 1e9)
                return v > (double)now ? v - (double)now : 0.0;
            return v;
        }
        if (!strncmp(p, "ms", 2)) {
            total += v / 1000.0;
            p += 2;
        } else if (*p == 'h') {
            total += v * 3600.0;
            p++;
        } else if (*p == 'm') {
            total += v * 60.0;
            p++;
        } else if (*p == 's') {
            total += v;
            p++;
        } else {
            return -1.0;
        }
        parts++;
    }
    return total;
}

size_t maas_http_header_cb(char *data, size_t size, size_t n, void *userp)
{
    maas_http_meta *m = userp;
    size_t len = size * n;
    char value[128];
    /* A new status line starts a new response: forget the previous one's headers. */
    if (len >= 5 && !strncmp(data, "HTTP/", 5)) {
        maas_http_meta_init(m);
    } else if (len > 12 && !strncasecmp(data, "Retry-After:", 12)) {
        trim_value(data + 12, len - 12, value, sizeof value);
        m->retry_after = maas_http_parse_retry_after(value, time(NULL));
    } else if (len > 12 && !strncasecmp(data, "X-RateLimit-", 12)) {
        const char *h = data + 12;
        size_t rest = len - 12;
        if (rest > 6 && !strncasecmp(h, "Limit:", 6)) {
            trim_value(h + 6, rest - 6, value, sizeof value);
            m->rl_limit = parse_count(value);
        } else if (rest > 10 && !strncasecmp(h, "Remaining:", 10)) {
            trim_value(h + 10, rest - 10, value, sizeof value);
            m->rl_remaining = parse_count(value);
        } else if (rest > 6 && !strncasecmp(h, "Reset:", 6)) {
            trim_value(h + 6, rest - 6, value, sizeof value);
            m->rl_reset = maas_http_parse_rate_reset(value, time(NULL));
        }
    }
    return len;
}

double maas_http_parse_retry_after(const char *value, time_t now)
{
    const char *p = value;
    char *end;
    double secs;
    time_t when;
    if (!value || !*value)
        return -1.0;
    if (*p >= '0' && *p <= '9') {
        secs = strtod(p, &end);
        while (*end == ' ')
            end++;
        if (*end != '\0' || !isfinite(secs) || secs < 0)
            return -1.0;
        return secs;
    }
    when = curl_getdate(value, NULL);
    if (when == (time_t)-1)
        return -1.0;
    return when > now ? (double)(when - now) : 0.0;
}

/* ---- transfers ------------------------------------------------------- */

maas_status maas_xfer_init(maas_xfer *x, maas_client *c, atomic_int *cancel, maas_error_rec *err)
{
    memset(x, 0, sizeof *x);
    x->client = c;
    x->cancel = cancel;
    x->idle_ms = c->idle_timeout_ms;
    x->deadline_at = c->deadline_ms > 0 ? maas_now_ms() + c->deadline_ms : 0;
    x->ch = channel_get(c);
    if (!x->ch)
        return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory creating a curl handle");
    return MAAS_OK;
}

void maas_xfer_init_external(maas_xfer *x, maas_client *c, atomic_int *cancel, maas_channel *ch)
{
    memset(x, 0, sizeof *x);
    x->client = c;
    x->cancel = cancel;
    x->idle_ms = c->idle_timeout_ms;
    x->ch = ch;
    x->external = 1;
}

void maas_xfer_cleanup(maas_xfer *x)
{
    if (!x->ch)
        return;
    maas_xfer_finish(x);
    if (x->external) {
        /* A multi stream's own easy handle; the multi handle is not ours. */
        curl_easy_cleanup(x->ch->easy);
        x->ch->easy = NULL;
        x->ch = NULL;
        x->easy = NULL;
        return;
    }
    /* Nothing of this request may linger on the pooled handle. */
    curl_easy_reset(x->ch->easy);
    channel_put(x->client, x->ch);
    x->ch = NULL;
    x->easy = NULL;
}

#if LIBCURL_VERSION_NUM >= 0x075000
/* Connected (TLS included), the request about to go: the idle clock starts. */
static int on_connected(void *userp, char *ip, char *local_ip, int primary_port, int local_port)
{
    (void)ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    maas_xfer_connected(userp);
    return CURL_PREREQFUNC_OK;
}
#endif

void maas_xfer_connected(maas_xfer *x)
{
    x->connected = 1;
    maas_xfer_mark(x);
    if (x->on_armed)
        x->on_armed(x->armed_payload);
}

/*
 * libcurl counts the body as sent once the kernel took it, and a socket
 * buffer holds megabytes that a slow uplink takes many seconds to send:
 * keeping little unsent data in the kernel makes the upload progress
 * libcurl reports follow the wire, so the idle clock measures the server.
 */
static int on_socket_open(void *userp, curl_socket_t fd, curlsocktype purpose)
{
    (void)userp;
#ifdef TCP_NOTSENT_LOWAT
    if (purpose == CURLSOCKTYPE_IPCXN) {
        int lowat = MAAS_UNSENT_MAX;
        setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
    }
#else
    (void)fd;
    (void)purpose;
#endif
    return CURL_SOCKOPT_OK;
}

/* A slow uplink is not a silent server: every bit of the request body that
 * goes out restarts the idle clock, and its last bit starts the wait for the
 * answer. */
static int on_progress(void *userp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    maas_xfer_progress(userp, ultotal, ulnow);
    return 0;
}

void maas_xfer_progress(maas_xfer *x, curl_off_t ultotal, curl_off_t ulnow)
{
    if ((int64_t)ulnow > x->up_seen) {
        x->up_seen = (int64_t)ulnow;
        maas_xfer_mark(x);
    }
    x->sending = ultotal > 0 && ulnow < ultotal;
}

maas_status maas_xfer_prepare(maas_xfer *x, maas_error_rec *err)
{
    maas_status st;
    maas_xfer_finish(x);
    curl_easy_reset(x->ch->easy);
    x->easy = x->ch->easy;
    x->done = 0;
    x->result = CURLE_OK;
    st = maas_http_setup(x->client, x->easy, x->errbuf, err);
#if LIBCURL_VERSION_NUM >= 0x075000
    x->connected = 0;
    if (st == MAAS_OK && (curl_easy_setopt(x->easy, CURLOPT_PREREQFUNCTION, on_connected) ||
                          curl_easy_setopt(x->easy, CURLOPT_PREREQDATA, x)))
        x->connected = 1; /* cannot tell: let the idle clock run from the start */
#else
    x->connected = 1;
#endif
    x->up_seen = 0;
    x->sending = 0;
    if (st == MAAS_OK && (curl_easy_setopt(x->easy, CURLOPT_XFERINFOFUNCTION, on_progress) ||
                          curl_easy_setopt(x->easy, CURLOPT_XFERINFODATA, x) ||
                          curl_easy_setopt(x->easy, CURLOPT_NOPROGRESS, 0L) ||
                          curl_easy_setopt(x->easy, CURLOPT_SOCKOPTFUNCTION, on_socket_open)))
        st = maas_error_set(err, MAAS_ERR_INTERNAL, "could not set the progress callback");
    return st;
}

void maas_http_cap_connections(maas_client *c, CURLM *multi)
{
    int h2 = c->http_version != MAAS_HTTP_1_1 && atomic_load(&c->http.api_h2);
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, h2 ? (long)MAAS_MAX_HOST_CONNECTIONS : 0L);
}

maas_status maas_xfer_start(maas_xfer *x, maas_error_rec *err)
{
    CURLMcode mc;
    CURLcode rc = CURLE_OK;
    if (x->driver && x->driver->takes(x)) {
        maas_status st = x->driver->start(x, err);
        if (st == MAAS_OK) {
            x->added = 1;
            x->done = 0;
            x->idle_since = maas_now_ms();
        }
        return st;
    }
    if (x->write_fn && (rc = curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, x->write_fn)) == CURLE_OK)
        rc = curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x->write_data);
    if (x->header_fn && rc == CURLE_OK &&
        (rc = curl_easy_setopt(x->easy, CURLOPT_HEADERFUNCTION, x->header_fn)) == CURLE_OK)
        rc = curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, x->header_data);
    if (rc != CURLE_OK)
        return maas_error_set(err, MAAS_ERR_INTERNAL, "could not configure libcurl: %s",
                              curl_easy_strerror(rc));
    /* A multi's stream: its multi handle learns the cap with its streams. */
    if (x->external && x->api_host)
        maas_http_cap_connections(x->client, x->ch->multi);
    mc = curl_multi_add_handle(x->ch->multi, x->easy);
    if (mc == CURLM_RECURSIVE_API_CALL)
        return maas_error_set(err, MAAS_ERR_INVALID_ARGUMENT,
                              "called from inside a socket or timer callback");
    if (mc != CURLM_OK)
        return maas_error_set(err, MAAS_ERR_INTERNAL, "curl_multi_add_handle: %s",
                              curl_multi_strerror(mc));
    x->added = 1;
    x->done = 0;
    x->idle_since = maas_now_ms();
    return MAAS_OK;
}

void maas_xfer_learn_protocol(maas_xfer *x)
{
    long v = 0;
    if (x->api_host && curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &v) == CURLE_OK && v)
        atomic_store(&x->client->http.api_h2, v == CURL_HTTP_VERSION_2_0);
}

void maas_xfer_finish(maas_xfer *x)
{
    long conns = 0;
    if (!x->added)
        return;
    if (x->hub) {
        x->driver->finish(x);
        x->added = 0;
        return;
    }
    maas_xfer_learn_protocol(x);
    if (curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &conns) == CURLE_OK && conns > 0)
        maas_count(x->client, MAAS_COUNTER_CONNECTIONS, (uint64_t)conns);
    /* Removing an unfinished transfer makes libcurl close its connection,
     * so an abandoned stream never leaves a half-read connection behind. */
    curl_multi_remove_handle(x->ch->multi, x->easy);
    x->added = 0;
}

void maas_xfer_mark(maas_xfer *x)
{
    x->idle_since = maas_now_ms();
    x->marks++;
}

void maas_xfer_wakeup(maas_xfer *x)
{
    if (x->ch && x->ch->multi)
        curl_multi_wakeup(x->ch->multi);
    if (x->driver)
        x->driver->wakeup(x);
}

static int cancelled(const maas_xfer *x)
{
    return x->cancel && atomic_load(x->cancel);
}

/* The deadline: MAAS_ERR_DEADLINE once past it, else *w shortened not to pass it. */
static maas_status within_deadline(const maas_xfer *x, int64_t now, int64_t *w,
                                   maas_error_rec *err)
{
    if (!x->deadline_at)
        return MAAS_OK;
    if (now >= x->deadline_at) {
        if (x->deadline_what)
            return maas_error_set(err, MAAS_ERR_DEADLINE, "the %ld ms deadline of %s expired",
                                  x->deadline_ms, x->deadline_what);
        return maas_error_set(err, MAAS_ERR_DEADLINE, "the %ld ms deadline expired",
                              x->deadline_ms ? x->deadline_ms : x->client->deadline_ms);
    }
    if (x->deadline_at - now < *w)
        *w = x->deadline_at - now;
    return MAAS_OK;
}

/* How long the next wait may last, or an expired clock's status. */
maas_status maas_xfer_next_wait(const maas_xfer *x, int64_t *wait_ms, maas_error_rec *err)
{
    int64_t now = maas_now_ms(), w = 1000;
    maas_status st = within_deadline(x, now, &w, err);
    if (st != MAAS_OK)
        return st;
    /* The idle clock waits for the connection: connecting and the TLS
     * handshake are the connect clock's. */
    if (x->idle_ms > 0 && x->added && x->connected) {
        int64_t left = x->idle_since + x->idle_ms - now;
        if (left <= 0 && x->sending)
            return maas_error_set(err, MAAS_ERR_IDLE_TIMEOUT,
                                  "the request body made no progress for %ld ms (idle timeout)",
                                  (long)x->idle_ms);
        if (left <= 0)
            return maas_error_set(err, MAAS_ERR_IDLE_TIMEOUT,
                                  "no message from the server for %ld ms (idle timeout)",
                                  (long)x->idle_ms);
        if (left < w)
            w = left;
    }
    *wait_ms = w;
    return MAAS_OK;
}

maas_status maas_xfer_check(maas_xfer *x, maas_error_rec *err)
{
    int64_t wait_ms;
    if (cancelled(x))
        return maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
    return maas_xfer_next_wait(x, &wait_ms, err);
}

maas_status maas_xfer_step(maas_xfer *x, maas_error_rec *err)
{
    int running = 0, left = 0;
    int64_t wait_ms = 0;
    unsigned long marks = x->marks;
    CURLMcode mc;
    CURLMsg *msg;
    maas_status st;

    if (cancelled(x))
        return maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
    if (x->hub)
        return x->driver->step(x, err);
    mc = curl_multi_perform(x->ch->multi, &running);
    if (mc != CURLM_OK)
        return maas_error_set(err, MAAS_ERR_INTERNAL, "curl_multi_perform: %s",
                              curl_multi_strerror(mc));
    while ((msg = curl_multi_info_read(x->ch->multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == x->easy) {
            x->done = 1;
            x->result = msg->data.result;
        }
    }
    if (x->done)
        return MAAS_OK;
    if (cancelled(x))
        return maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
    /* A line end arrived in this perform: the caller has a message to take
     * now, not after the next packet or the poll's clock. */
    if (x->marks != marks)
        return MAAS_OK;
    st = maas_xfer_next_wait(x, &wait_ms, err);
    if (st != MAAS_OK)
        return st;
    if (x->poll_ms > 0 && wait_ms > x->poll_ms)
        wait_ms = x->poll_ms;
    mc = curl_multi_poll(x->ch->multi, NULL, 0, (int)wait_ms, NULL);
    if (mc != CURLM_OK)
        return maas_error_set(err, MAAS_ERR_INTERNAL, "curl_multi_poll: %s",
                              curl_multi_strerror(mc));
    if (cancelled(x))
        return maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
    return MAAS_OK;
}

maas_status maas_xfer_sleep(maas_xfer *x, int64_t ms, maas_error_rec *err)
{
    int64_t end = maas_now_ms() + ms, now;
    while ((now = maas_now_ms()) < end) {
        int64_t w = end - now;
        maas_status st;
        if (cancelled(x))
            return maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
        st = within_deadline(x, now, &w, err);
        if (st != MAAS_OK)
            return st;
        /* An empty multi handle waits the time out, and curl_multi_wakeup cuts it short. */
        curl_multi_poll(x->ch->multi, NULL, 0, (int)(w > 1000 ? 1000 : w), NULL);
    }
    if (cancelled(x))
        return maas_error_set(err, MAAS_ERR_CANCELLED, "the stream was cancelled");
    return MAAS_OK;
}

/* ---- failures --------------------------------------------------------- */

static const char *proxy_reason(long code)
{
    switch (code) {
    case 403: return "forbidden";
    case 407: return "proxy authentication required";
    case 502: return "bad gateway";
    case 503: return "service unavailable";
    case 504: return "gateway timeout";
    default: return "refused";
    }
}

/*
 * The proxy answered CONNECT with an error. It is named by the address
 * connected to, never by the proxy URL, which may carry a password.
 */
static maas_status proxy_refused(const maas_xfer *x, long code, maas_error_rec *err)
{
    char *ip = NULL, *url = NULL;
    long port = 0;
    char target[256] = "the server";
    CURLU *u;
    curl_easy_getinfo(x->easy, CURLINFO_PRIMARY_IP, &ip);
    curl_easy_getinfo(x->easy, CURLINFO_PRIMARY_PORT, &port);
    curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
    if (url && (u = curl_url()) != NULL) {
        char *host = NULL, *p = NULL;
        if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_PORT, &p, CURLU_DEFAULT_PORT) == CURLUE_OK)
            snprintf(target, sizeof target, "%s:%s", host, p);
        curl_free(host);
        curl_free(p);
        curl_url_cleanup(u);
    }
    err->pub.http_status = (int)code;
    return maas_error_set(err, MAAS_ERR_PROXY,
                          "the proxy at %s:%ld refused the tunnel to %s: HTTP %ld (%s)",
                          ip && *ip ? ip : "?", port, target, code, proxy_reason(code));
}

maas_status maas_http_curl_error(const maas_xfer *x, CURLcode rc, maas_error_rec *err)
{
    maas_status st;
    const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
    long connect_code = 0;
    if (x->easy && curl_easy_getinfo(x->easy, CURLINFO_HTTP_CONNECTCODE, &connect_code) ==
                       CURLE_OK && connect_code >= 300)
        return proxy_refused(x, connect_code, err);
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_PROXY:
        return maas_error_set(err, MAAS_ERR_PROXY, "proxy: %s", detail);
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
        st = MAAS_ERR_CONNECT;
        break;
    case CURLE_OPERATION_TIMEDOUT:
        /* The only libcurl clock set is the connect clock (TLS handshake included). */
        st = MAAS_ERR_CONNECT_TIMEOUT;
        break;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
    case CURLE_SSL_INVALIDCERTSTATUS:
        st = MAAS_ERR_TLS;
        break;
    case CURLE_OUT_OF_MEMORY: {
        /* libcurl before 8.6 says "out of memory", without a word more, of one
         * response header over its 100 KiB cap: once a status line has
         * arrived, a broken server is far likelier than a lack of memory. */
        long code = 0;
        if (strstr(detail, "header") ||
            (x->easy && curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK &&
             code > 0))
            return maas_error_set(err, MAAS_ERR_PROTOCOL,
                                  "a response header is over libcurl's 100 KiB limit (or memory "
                                  "ran out while reading the headers: %s)", detail);
        st = MAAS_ERR_NO_MEMORY;
        break;
    }
    case CURLE_URL_MALFORMAT:
        st = MAAS_ERR_CONFIG;
        break;
    case CURLE_UNSUPPORTED_PROTOCOL: {
        /* libcurl says this of an http:// URL's answer that is not HTTP too
         * (HTTP/0.9, garbage): once connected, it is the server's fault. */
        char *ip = NULL;
        if (x->easy && curl_easy_getinfo(x->easy, CURLINFO_PRIMARY_IP, &ip) == CURLE_OK && ip &&
            *ip)
            return maas_error_set(err, MAAS_ERR_PROTOCOL, "the server's answer is not HTTP (%s)",
                                  detail);
        st = MAAS_ERR_CONFIG;
        break;
    }
    case CURLE_WEIRD_SERVER_REPLY:
        return maas_error_set(err, MAAS_ERR_PROTOCOL, "the server's answer is not HTTP (%s)",
                              detail);
    default:
        /* Headers without end are a broken server, not a broken network (libcurl 8.6
         * names them CURLE_TOO_LARGE; before, a receive error saying so). */
        if (strstr(detail, "Too large response headers"))
            return maas_error_set(err, MAAS_ERR_PROTOCOL, "%s", detail);
        st = MAAS_ERR_NETWORK;
        break;
    }
    if (st == MAAS_ERR_CONNECT || st == MAAS_ERR_CONNECT_TIMEOUT || st == MAAS_ERR_TLS) {
        /* Which of the two configured URLs is wrong: the only question a
         * connect failure raises. */
        char *url = NULL;
        const maas_client *c = x->client;
        int token = c && x->easy &&
                    curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url) == CURLE_OK && url &&
                    c->auth_url && !strcmp(url, c->auth_url);
        /* OpenSSL's words for a server that answered in plain text. */
        const char *hint = st == MAAS_ERR_TLS && strstr(detail, "wrong version number")
                               ? " (the server answered without TLS: is that port a "
                                 "plain-HTTP one, or the wrong port?)"
                               : "";
        return maas_error_set(err, st, "%s: %s%s", token ? "token endpoint" : "API", detail, hint);
    }
    return maas_error_set(err, st, "%s", detail);
}

static int contains(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

maas_status maas_http_status_error(long http_status, const char *body, size_t len,
                                   maas_endpoint ep, maas_error_rec *err)
{
    maas_error_body eb;
    maas_status st;
    maas_error_body_parse(&eb, body, len);
    err->pub.http_status = (int)http_status;
    err->pub.grpc_code = eb.grpc_code;
    maas_error_set_request_id(err, eb.request_id);

    if (ep == MAAS_EP_TOKEN && (http_status == 400 || http_status == 401 || http_status == 403))
        st = MAAS_ERR_AUTH;
    else if (http_status == 401)
        st = MAAS_ERR_UNAUTHENTICATED;
    else if (http_status == 403)
        st = MAAS_ERR_PERMISSION_DENIED;
    else if (http_status == 400)
        st = ep == MAAS_EP_GENERATE && contains(eb.message, "can't find requested product")
                 ? MAAS_ERR_UNKNOWN_MODEL
                 : MAAS_ERR_INVALID_REQUEST;
    else if (http_status == 404)
        /* NotFound from generatestream is the model; anywhere else, a wrong URL. */
        st = ep == MAAS_EP_GENERATE && eb.grpc_code == 5 ? MAAS_ERR_UNKNOWN_MODEL : MAAS_ERR_HTTP;
    else if (http_status == 429)
        st = MAAS_ERR_RATE_LIMITED;
    else if (http_status == 503)
        st = MAAS_ERR_UNAVAILABLE;
    else if (http_status >= 500 && http_status <= 599)
        st = MAAS_ERR_SERVER;
    else
        st = MAAS_ERR_HTTP;

    /* OAuth2 answers carry a code and maybe a description: keep both. */
    if (eb.oauth_error[0] && eb.message[0] && strcmp(eb.oauth_error, eb.message))
        return maas_error_set(err, st, "%s: %s", eb.oauth_error, eb.message);
    if (eb.message[0])
        return maas_error_set(err, st, "%s", eb.message);
    if (eb.oauth_error[0])
        return maas_error_set(err, st, "%s", eb.oauth_error);
    return maas_error_set(err, st, "HTTP %ld from the %s", http_status,
                          ep == MAAS_EP_TOKEN ? "token endpoint" : "server");
}

/* ---- whole requests --------------------------------------------------- */

struct fetch_sink {
    maas_xfer *x;
    maas_response *r;
    size_t max;
    size_t cap;
    int too_big;
    int no_memory;
};

static size_t fetch_write(char *data, size_t size, size_t n, void *userp)
{
    struct fetch_sink *s = userp;
    size_t len = size * n;
    maas_response *r = s->r;
    maas_xfer_mark(s->x);
    if (r->len + len > s->max) {
        s->too_big = 1;
        return 0;
    }
    if (r->len + len + 1 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        char *b;
        while (cap < r->len + len + 1)
            cap *= 2;
        /* Not realloc: the old block may hold part of a token answer, and
         * realloc would free it unwiped. calloc: a block that libcurl freed
         * unwiped (its request buffer held the Basic value) is not carried
         * along in the unused tail of ours. */
        b = calloc(1, cap);
        if (!b) {
            s->no_memory = 1;
            return 0;
        }
        if (r->body) {
            memcpy(b, r->body, r->len);
            maas_wipe(r->body, r->len);
            free(r->body);
        }
        r->body = b;
        s->cap = cap;
    }
    memcpy(r->body + r->len, data, len);
    r->len += len;
    r->body[r->len] = '\0';
    return len;
}

void maas_response_free(maas_response *r)
{
    if (!r)
        return;
    /* Token answers pass through here too: wipe whatever the body was. */
    if (r->body)
        maas_wipe(r->body, r->len);
    free(r->body);
    r->body = NULL;
    r->len = 0;
}

maas_status maas_http_fetch(maas_client *c, const maas_fetch *f, maas_response *out,
                            maas_error_rec *err)
{
    maas_xfer x;
    struct fetch_sink sink;
    maas_status st;
    CURLcode rc = CURLE_OK;

    memset(out, 0, sizeof *out);
    maas_http_meta_init(&out->meta);
    st = maas_xfer_init(&x, c, f->cancel, err);
    if (st != MAAS_OK)
        return st;
    x.deadline_at = f->deadline_at;
    x.deadline_ms = f->deadline_ms;
    x.deadline_what = f->endpoint == MAAS_EP_TOKEN ? "the token request" : "GET /models";
    /* A stream's cancellation wakes the stream's channel, not this one. */
    if (f->cancel)
        x.poll_ms = MAAS_CANCEL_POLL_MS;
    memset(&sink, 0, sizeof sink);
    sink.x = &x;
    sink.r = out;
    sink.max = f->max_body;

    st = maas_xfer_prepare(&x, err);
    if (st != MAAS_OK)
        goto done;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(x.easy, opt, val); } while (0)
    SET(CURLOPT_URL, f->url);
    SET(CURLOPT_HTTPHEADER, f->headers);
    if (f->post_body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)f->post_len);
        SET(CURLOPT_POSTFIELDS, f->post_body);
    }
#undef SET
    if (rc != CURLE_OK) {
        st = maas_error_set(err, MAAS_ERR_INTERNAL, "could not configure libcurl: %s",
                            curl_easy_strerror(rc));
        goto done;
    }
    x.write_fn = fetch_write;
    x.write_data = &sink;
    x.header_fn = maas_http_header_cb;
    x.header_data = &out->meta;
    /* The catalogue comes from the API host: how it answered tells the streams. */
    x.api_host = f->endpoint != MAAS_EP_TOKEN;
    st = maas_xfer_start(&x, err);
    while (st == MAAS_OK && !x.done)
        st = maas_xfer_step(&x, err);
    if (st != MAAS_OK)
        goto done;
    curl_easy_getinfo(x.easy, CURLINFO_RESPONSE_CODE, &out->status);
    err->pub.http_status = (int)out->status;
    if (sink.too_big)
        st = maas_error_set(err, MAAS_ERR_PROTOCOL, "the response exceeds %zu bytes", f->max_body);
    else if (sink.no_memory)
        st = maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory reading a response");
    else if (x.result != CURLE_OK)
        st = maas_http_curl_error(&x, x.result, err);
done:
    maas_http_meta_to_error(&out->meta, err);
    maas_xfer_cleanup(&x);
    if (st != MAAS_OK)
        maas_response_free(out);
    return st;
}
