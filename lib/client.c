#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <curl/curl.h>

#include "auth.h"
#include "call.h"
#include "clientdata.h"
#include "http.h"
#include "hub.h"
#include "log.h"
#include "models.h"
#include "wipe.h"

const char *maas_version(void)
{
    return MAAS_VERSION_STRING;
}

void maas_free(void *ptr)
{
    free(ptr);
}

/*
 * The size of the options struct as a caller built against `version` knows
 * it: fields are only appended, so a newer library must never read or write
 * past what an older caller allocated. 0 for unknown versions.
 */
static size_t options_size(unsigned int version)
{
    switch (version) {
    case 1:
        return offsetof(maas_client_options, insecure_skip_tls_verify) + sizeof(int);
    case 2:
        return offsetof(maas_client_options, http_version) + sizeof(int);
    default:
        return 0;
    }
}

static maas_status version_error(unsigned int version)
{
    return maas_fail(MAAS_ERR_OPTIONS_VERSION,
                     "maas_client_options version %u is not supported (this is libmaas %s, "
                     "which knows versions 1 to %d)",
                     version, MAAS_VERSION_STRING, MAAS_CLIENT_OPTIONS_VERSION);
}

maas_status maas_client_options_init(maas_client_options *opts, unsigned int version)
{
    size_t n = options_size(version);
    if (!opts)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "opts is NULL");
    if (!n)
        return version_error(version);
    memset(opts, 0, n);
    opts->version = version;
    return MAAS_OK;
}

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

maas_status maas_client_options_from_env(maas_client_options *opts, unsigned int version)
{
    /* Every field set below exists since version 1, but for those tested on version. */
    maas_status st = maas_client_options_init(opts, version);
    if (st != MAAS_OK)
        return st;
    opts->client_id = env("MAAS_CLIENT_ID");
    opts->client_secret = env("MAAS_CLIENT_SECRET");
    opts->cloud_account = env("MAAS_CLOUD_ACCOUNT");
    opts->api_base_url = env("MAAS_API_BASE_URL");
    opts->auth_url = env("MAAS_AUTH_URL");
    opts->token = env("MAAS_TOKEN");
    opts->ca_bundle = env("MAAS_CA_BUNDLE");
    opts->log_level = maas_log_level_from_env();
    if (version >= 2) {
        const char *v = env("MAAS_ALLOW_INSECURE_HTTP");
        /* The proxy itself comes from HTTPS_PROXY and friends, which libcurl reads. */
        opts->proxy_ca_bundle = env("MAAS_PROXY_CA_BUNDLE");
        opts->allow_insecure_http = v && !strcmp(v, "1");
        v = env("MAAS_HTTP_VERSION");
        if (!v || !strcmp(v, "auto"))
            opts->http_version = MAAS_HTTP_AUTO;
        else if (!strcmp(v, "1.1"))
            opts->http_version = MAAS_HTTP_1_1;
        else if (!strcmp(v, "2"))
            opts->http_version = MAAS_HTTP_2;
        else
            opts->http_version = -1; /* refused by maas_client_new, naming the variable */
    }
    return MAAS_OK;
}

/* curl_global_init is not thread-safe on every libcurl version: do it once. */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_OK;
static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_ALL);
}

static char *dup_or_null(const char *s, int *oom)
{
    char *d;
    if (!s)
        return NULL;
    d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

static int url_ok(const char *u)
{
    return !strncmp(u, "http://", 7) || !strncmp(u, "https://", 8);
}

/* A host name as libcurl's URL parser reads it: 127.0.0.0/8, ::1 or localhost. */
static int host_is_loopback(const char *host)
{
    unsigned char a4[4], a6[16];
    char buf[64];
    size_t n = strlen(host);
    if (!strcasecmp(host, "localhost") || !strcasecmp(host, "localhost."))
        return 1;
    if (inet_pton(AF_INET, host, a4) == 1)
        return a4[0] == 127;
    if (n >= 2 && n < sizeof buf && host[0] == '[' && host[n - 1] == ']') {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        if (inet_pton(AF_INET6, buf, a6) == 1) {
            static const unsigned char lo6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
            static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
            return !memcmp(a6, lo6, 16) || (!memcmp(a6, v4mapped, 12) && a6[12] == 127);
        }
    }
    return 0;
}

/*
 * Credentials must not cross the network in clear text: an http:// URL is
 * refused unless its host is loopback (where the emulator lives) or the
 * caller opted in. The host is read by libcurl's own parser, the one that
 * will connect, so "http://127.0.0.1.evil.example" or "http://a@127.0.0.1@b"
 * are judged by the host libcurl would really contact.
 */
static maas_status check_plain_http(const char *name, const char *env_name, const char *url,
                                    int allowed)
{
    CURLU *u;
    char *host = NULL, *shown = NULL;
    int loopback;
    maas_status st = MAAS_OK;
    if (!url || strncmp(url, "http://", 7) || allowed)
        return MAAS_OK;
    u = curl_url();
    if (!u)
        return maas_fail(MAAS_ERR_NO_MEMORY, "out of memory parsing %s", name);
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        curl_url_cleanup(u);
        return maas_fail(MAAS_ERR_CONFIG, "%s (%s) is not a URL libcurl can parse", name, env_name);
    }
    loopback = host_is_loopback(host);
    if (!loopback) {
        /* Name the URL without a user:password part it may carry. */
        curl_url_set(u, CURLUPART_USER, NULL, 0);
        curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
        if (curl_url_get(u, CURLUPART_URL, &shown, 0) != CURLUE_OK)
            shown = NULL;
        st = maas_fail(MAAS_ERR_CONFIG,
                       "%s %s is plain HTTP to a host that is not loopback: the credentials "
                       "and tokens would cross the network in clear text. Use https://, or "
                       "set allow_insecure_http (MAAS_ALLOW_INSECURE_HTTP=1) to accept the risk",
                       name, shown ? shown : "(unprintable)");
    }
    curl_free(shown);
    curl_free(host);
    curl_url_cleanup(u);
    return st;
}

static maas_status check_string(const char *name, const char *v, maas_error_rec *err)
{
    size_t i, n, k;
    if (!v)
        return MAAS_OK;
    n = strlen(v);
    for (i = 0; i < n; i += k) {
        unsigned char ch = (unsigned char)v[i];
        if (ch < 0x20 || ch == 0x7f)
            return maas_error_set(err, MAAS_ERR_CONFIG,
                                  "%s contains a control character", name);
        k = maas_utf8_char_len(v + i, n - i);
        if (!k) /* it would be sent in JSON, which must be UTF-8 */
            return maas_error_set(err, MAAS_ERR_CONFIG,
                                  "%s is not valid UTF-8 (byte %zu)", name, i);
    }
    return MAAS_OK;
}

static void client_destroy(maas_client *c)
{
    if (!c)
        return;
    maas_model_list_free(atomic_load(&c->catalogue));
    /* Before the share handle its connections used. */
    if (c->hub_ready)
        maas_hub_cleanup(&c->hub);
    if (c->http_ready)
        maas_http_cleanup(&c->http);
    if (c->auth_ready)
        maas_auth_cleanup(&c->auth);
    pthread_mutex_destroy(&c->catalogue_lock);
    free(c->client_id);
    maas_wipe_free(c->client_secret);
    free(c->cloud_account);
    free(c->api_base_url);
    free(c->auth_url);
    free(c->ca_bundle);
    maas_wipe_free(c->proxy); /* may hold the proxy's password */
    free(c->proxy_ca_bundle);
    maas_wipe(c, sizeof *c);
    free(c);
}

maas_status maas_client_new(maas_client **out, const maas_client_options *caller)
{
    maas_client_options copy, *opts = &copy;
    maas_client *c;
    maas_error_rec err;
    maas_status st;
    int oom = 0;
    size_t n;

    if (!out)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!caller) {
        st = maas_client_options_from_env(&copy, MAAS_CLIENT_OPTIONS_VERSION);
        if (st != MAAS_OK)
            return st;
    } else {
        /* Read only the fields the caller's version has; the rest stay zero (defaults). */
        size_t known = options_size(caller->version);
        if (!known)
            return version_error(caller->version);
        memset(&copy, 0, sizeof copy);
        memcpy(&copy, caller, known);
    }

    maas_error_clear(&err);
    if ((st = check_string("client_id", opts->client_id, &err)) ||
        (st = check_string("cloud_account", opts->cloud_account, &err)) ||
        (st = check_string("api_base_url", opts->api_base_url, &err)) ||
        (st = check_string("auth_url", opts->auth_url, &err)) ||
        (st = check_string("ca_bundle", opts->ca_bundle, &err)) ||
        (st = check_string("client_secret", opts->client_secret, &err)) ||
        (st = check_string("token", opts->token, &err)) ||
        (st = check_string("user_agent_suffix", opts->user_agent_suffix, &err)) ||
        (st = check_string("proxy", opts->proxy, &err)) ||
        (st = check_string("proxy_ca_bundle", opts->proxy_ca_bundle, &err)))
        return maas_error_publish(&err);
    /* Named without its value: a proxy URL may carry a password. */
    if (opts->proxy && opts->proxy[0] && !url_ok(opts->proxy))
        return maas_fail(MAAS_ERR_CONFIG, "proxy must start with http:// or https://");
    if (opts->user_agent_suffix && strlen(opts->user_agent_suffix) > 64)
        return maas_fail(MAAS_ERR_CONFIG, "user_agent_suffix is longer than 64 bytes");
    if (!opts->token && (!opts->client_id || !opts->client_secret))
        return maas_fail(MAAS_ERR_CONFIG,
                         "no credentials: set client_id and client_secret "
                         "(MAAS_CLIENT_ID, MAAS_CLIENT_SECRET) or a token (MAAS_TOKEN)");
    if (opts->api_base_url && !url_ok(opts->api_base_url))
        return maas_fail(MAAS_ERR_CONFIG, "api_base_url must start with http:// or https://");
    if (opts->auth_url && !url_ok(opts->auth_url))
        return maas_fail(MAAS_ERR_CONFIG, "auth_url must start with http:// or https://");
    if ((st = check_plain_http("api_base_url", "MAAS_API_BASE_URL", opts->api_base_url,
                               opts->allow_insecure_http)) != MAAS_OK ||
        (!opts->token &&
         (st = check_plain_http("auth_url", "MAAS_AUTH_URL", opts->auth_url,
                                opts->allow_insecure_http)) != MAAS_OK))
        return st;
    if (opts->http_version < MAAS_HTTP_AUTO || opts->http_version > MAAS_HTTP_2)
        return maas_fail(MAAS_ERR_CONFIG,
                         "http_version must be MAAS_HTTP_AUTO, MAAS_HTTP_1_1 or MAAS_HTTP_2 "
                         "(MAAS_HTTP_VERSION=auto, 1.1 or 2), got %d", opts->http_version);
    if (opts->max_retries < MAAS_RETRIES_OFF)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "max_retries must be >= -1, got %d",
                         opts->max_retries);

    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK)
        return maas_fail(MAAS_ERR_INTERNAL, "curl_global_init failed: %s",
                         curl_easy_strerror(global_rc));

    c = calloc(1, sizeof *c);
    if (!c)
        return maas_fail(MAAS_ERR_NO_MEMORY, "out of memory creating a client");
    if (pthread_mutex_init(&c->catalogue_lock, NULL)) {
        free(c);
        return maas_fail(MAAS_ERR_INTERNAL, "pthread_mutex_init failed");
    }

    c->client_id = dup_or_null(opts->client_id, &oom);
    c->client_secret = dup_or_null(opts->client_secret, &oom);
    c->cloud_account = dup_or_null(opts->cloud_account, &oom);
    c->api_base_url = dup_or_null(opts->api_base_url ? opts->api_base_url
                                                     : MAAS_DEFAULT_API_BASE_URL, &oom);
    c->auth_url = dup_or_null(opts->auth_url ? opts->auth_url : MAAS_DEFAULT_AUTH_URL, &oom);
    c->ca_bundle = dup_or_null(opts->ca_bundle, &oom);
    c->proxy = dup_or_null(opts->proxy, &oom);
    c->proxy_ca_bundle = dup_or_null(opts->proxy_ca_bundle, &oom);
    if (oom) {
        client_destroy(c);
        return maas_fail(MAAS_ERR_NO_MEMORY, "out of memory creating a client");
    }
    /* "https://host/v1/maas/" and "https://host/v1/maas" mean the same base. */
    n = strlen(c->api_base_url);
    while (n > 0 && c->api_base_url[n - 1] == '/')
        c->api_base_url[--n] = '\0';

    c->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms
                                                         : MAAS_DEFAULT_CONNECT_TIMEOUT_MS;
    c->idle_timeout_ms = opts->idle_timeout_ms == 0 ? MAAS_DEFAULT_IDLE_TIMEOUT_MS
                                                    : opts->idle_timeout_ms;
    c->deadline_ms = opts->deadline_ms > 0 ? opts->deadline_ms : 0;
    c->max_retries = opts->max_retries == 0 ? MAAS_DEFAULT_MAX_RETRIES
                     : opts->max_retries < 0 ? 0 : opts->max_retries;
    c->retry_base_ms = opts->retry_base_ms > 0 ? opts->retry_base_ms : 500;
    c->retry_max_ms = opts->retry_max_ms > 0 ? opts->retry_max_ms : 8000;
    c->retry_after_max_ms = opts->retry_after_max_ms > 0 ? opts->retry_after_max_ms : 30000;
    c->token_refresh_skew_ms = opts->token_refresh_skew_ms > 0 ? opts->token_refresh_skew_ms
                                                               : 5 * 60 * 1000;
    c->max_line_bytes = opts->max_line_bytes ? opts->max_line_bytes : MAAS_DEFAULT_MAX_LINE_BYTES;
    c->token_timeout_ms = opts->token_timeout_ms == 0 ? MAAS_DEFAULT_TOKEN_TIMEOUT_MS
                          : opts->token_timeout_ms < 0 ? 0 : opts->token_timeout_ms;
    c->models_timeout_ms = opts->models_timeout_ms == 0 ? MAAS_DEFAULT_MODELS_TIMEOUT_MS
                           : opts->models_timeout_ms < 0 ? 0 : opts->models_timeout_ms;
    c->max_text_bytes = opts->max_text_bytes ? opts->max_text_bytes : MAAS_DEFAULT_MAX_TEXT_BYTES;
    c->insecure = opts->insecure_skip_tls_verify != 0;
    c->http_version = opts->http_version;
    c->log.level = opts->log_level != MAAS_LOG_OFF ? opts->log_level : maas_log_level_from_env();
    c->log.cb = opts->log_cb;
    c->log.payload = opts->log_payload;

    st = maas_auth_init(&c->auth, opts->token); /* cleans up after itself on failure */
    if (st != MAAS_OK) {
        client_destroy(c);
        return maas_fail(st, "could not initialise the token cache");
    }
    c->auth.fetch = maas_call_token;
    c->auth_ready = 1;
    c->http_ready = 1; /* maas_http_init leaves a state maas_http_cleanup can undo */
    st = maas_http_init(c, &err);
    if (st != MAAS_OK) {
        client_destroy(c);
        return maas_error_publish(&err);
    }
    if (maas_hub_init(&c->hub)) {
        client_destroy(c);
        return maas_fail(MAAS_ERR_INTERNAL, "could not set up the shared multi handle");
    }
    c->hub_ready = 1;
    if (opts->user_agent_suffix) {
        size_t used = strlen(c->http.user_agent);
        snprintf(c->http.user_agent + used, sizeof c->http.user_agent - used, " %s",
                 opts->user_agent_suffix);
    }
    if (c->insecure)
        MAAS_WARN(c, "TLS verification is disabled (insecure_skip_tls_verify)");
    MAAS_DEBUG(c, "client created: api %s, auth %s, %s", c->api_base_url,
               c->auth.is_static ? "(static token)" : c->auth_url,
               c->cloud_account ? "cloud account set" : "no cloud account");
    *out = c;
    return MAAS_OK;
}

void maas_client_free(maas_client *client)
{
    client_destroy(client);
}

maas_status maas_client_authenticate(maas_client *client)
{
    maas_auth_ticket t;
    maas_error_rec err;
    maas_status st;
    if (!client)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "client is NULL");
    maas_error_clear(&err);
    st = maas_auth_acquire(client, &t, &err);
    if (st != MAAS_OK)
        return maas_error_publish(&err);
    maas_auth_release(&t);
    return MAAS_OK;
}

uint64_t maas_client_counter(const maas_client *client, maas_counter which)
{
    if (!client)
        return 0;
    if (which == MAAS_COUNTER_TOKEN_EXPIRES_IN_MS) {
        int64_t ms = maas_auth_remaining_ms((maas_client *)client);
        return ms > 0 ? (uint64_t)ms : 0;
    }
    if ((unsigned)which >= MAAS_COUNTER_SLOTS)
        return 0;
    return atomic_load_explicit(&((maas_client *)client)->counters[which], memory_order_relaxed);
}
