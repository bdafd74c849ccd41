/*
 * libmaas: a C client for the Intel Tiber AI Cloud "Model as a Service"
 * text-generation API.
 *
 * SPDX-License-Identifier: MIT
 *
 * This is the only public header. It is C99 and C++ clean and exports
 * nothing but maas_* functions and MAAS_* macros.
 *
 * Conventions (shared by every function below):
 *  - out-parameters come first and are named `out`;
 *  - every handle has its own free function and free(NULL) is a no-op;
 *  - callbacks take `void *payload` last;
 *  - every failing call returns a maas_status and leaves the details
 *    (HTTP status, gRPC code, server message, request id, attempts) where
 *    the caller can read them without a race: maas_last_error() on the
 *    calling thread, and maas_stream_error() for a stream.
 */
#ifndef MAAS_MAAS_H
#define MAAS_MAAS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Version                                                             */
/* ------------------------------------------------------------------ */

#define MAAS_VERSION_MAJOR 0
#define MAAS_VERSION_MINOR 1
#define MAAS_VERSION_PATCH 0
#define MAAS_VERSION_STRING "0.1.0"
/** MAAS_VERSION_NUM: 0xMMmmpp, comparable with >= like LIBCURL_VERSION_NUM. */
#define MAAS_VERSION_NUM                                                  \
    ((MAAS_VERSION_MAJOR << 16) | (MAAS_VERSION_MINOR << 8) | MAAS_VERSION_PATCH)

#if defined(_WIN32) && defined(MAAS_BUILDING_DLL)
#define MAAS_EXPORT __declspec(dllexport)
#elif defined(__GNUC__) && (__GNUC__ >= 4)
#define MAAS_EXPORT __attribute__((visibility("default")))
#else
#define MAAS_EXPORT
#endif

/** Version of the library linked at run time, e.g. "0.1.0". */
MAAS_EXPORT const char *maas_version(void);

/* ------------------------------------------------------------------ */
/* Status codes                                                        */
/* ------------------------------------------------------------------ */

/**
 * Every call's result. Values are never renumbered; new ones are appended.
 * docs/errors.md says which failure yields which status.
 */
typedef enum maas_status {
    MAAS_OK = 0,                   /**< success */
    MAAS_DONE = 1,                 /**< maas_stream_next(): the stream has finished normally */
    MAAS_ERR_INVALID_ARGUMENT = 2, /**< a caller-supplied value is out of range or missing */
    MAAS_ERR_NO_MEMORY = 3,        /**< an allocation failed */
    MAAS_ERR_CONFIG = 4,           /**< configuration is missing or unusable (credentials, URL, environment) */
    MAAS_ERR_OPTIONS_VERSION = 5,  /**< an options/request struct carries a version this library does not know */
    MAAS_ERR_CONNECT = 6,          /**< could not resolve or connect to the server */
    MAAS_ERR_TLS = 7,              /**< TLS handshake or certificate verification failed */
    MAAS_ERR_CONNECT_TIMEOUT = 8,  /**< the connect clock expired */
    MAAS_ERR_IDLE_TIMEOUT = 9,     /**< no complete message arrived within the idle clock */
    MAAS_ERR_DEADLINE = 10,        /**< the overall deadline expired */
    MAAS_ERR_NETWORK = 11,         /**< the connection failed or was dropped mid-transfer */
    MAAS_ERR_AUTH = 12,            /**< the token endpoint refused the credentials */
    MAAS_ERR_UNAUTHENTICATED = 13, /**< the API refused the token (HTTP 401), also after one refresh */
    MAAS_ERR_PERMISSION_DENIED = 14, /**< HTTP 403 (e.g. cloud account not the caller's) */
    MAAS_ERR_INVALID_REQUEST = 15, /**< the server rejected the request (HTTP 400 validation) */
    MAAS_ERR_UNKNOWN_MODEL = 16,   /**< the model or product is not in the catalogue */
    MAAS_ERR_RATE_LIMITED = 17,    /**< HTTP 429 (RESOURCE_EXHAUSTED) */
    MAAS_ERR_UNAVAILABLE = 18,     /**< HTTP 503 (UNAVAILABLE: no capacity) */
    MAAS_ERR_SERVER = 19,          /**< another HTTP 5xx from the server */
    MAAS_ERR_HTTP = 20,            /**< another unexpected HTTP status (e.g. 415) */
    MAAS_ERR_STREAM = 21,          /**< the server sent an {"error": ...} line inside a 200 stream */
    MAAS_ERR_TRUNCATED = 22,       /**< the stream ended without its final message */
    MAAS_ERR_PROTOCOL = 23,        /**< a response could not be decoded (malformed JSON or shape) */
    MAAS_ERR_LINE_TOO_LONG = 24,   /**< a streamed line exceeded the configured maximum */
    MAAS_ERR_CANCELLED = 25,       /**< the caller cancelled the stream */
    MAAS_ERR_INTERNAL = 26,        /**< a bug in libmaas or a dependency; please report */
    MAAS_ERR_PROXY = 27,           /**< the proxy refused the tunnel (its answer in http_status,
                                        e.g. 407 or 403) or did not answer as a proxy */
    MAAS_ERR_TEXT_TOO_LONG = 28    /**< maas_generate_text(): the text passed max_text_bytes */
} maas_status;

/** A static English description of `status`; never NULL. */
MAAS_EXPORT const char *maas_strerror(maas_status status);

/** The symbolic name of `status`, e.g. "MAAS_ERR_TRUNCATED"; never NULL. */
MAAS_EXPORT const char *maas_status_name(maas_status status);

/**
 * Details of a failure. Owned by the library: read it, never free it, and
 * never allocate one (fields may be appended in minor releases).
 */
typedef struct maas_error {
    maas_status status;     /**< same value the failing call returned */
    int http_status;        /**< HTTP status of the last response, 0 if none arrived */
    int grpc_code;          /**< gRPC code from the server's error body, -1 if none */
    const char *message;    /**< server message or library description; never NULL, "" if none */
    const char *request_id; /**< server request id (UUID), "" if unknown */
    unsigned int attempts;  /**< HTTP attempts made for the failing call (retries and a
                                 401 replay included) */
    double retry_after;     /**< seconds from a Retry-After header, -1 if none */
    /* Appended in 0.2: the rate-limit headers of the last response (docs/errors.md). */
    long rate_limit_limit;     /**< X-RateLimit-Limit, -1 if absent or not a number */
    long rate_limit_remaining; /**< X-RateLimit-Remaining, -1 if absent or not a number */
    double rate_limit_reset;   /**< X-RateLimit-Reset as seconds from the answer, -1 if absent */
} maas_error;

/**
 * The last failure of a maas_* call on the calling thread, or NULL when the
 * thread has not seen one. Valid until the next maas_* call on this thread.
 * It never needs memory, so out-of-memory is still reported.
 */
MAAS_EXPORT const maas_error *maas_last_error(void);

/* ------------------------------------------------------------------ */
/* Logging                                                             */
/* ------------------------------------------------------------------ */

typedef enum maas_log_level {
    MAAS_LOG_OFF = 0,
    MAAS_LOG_WARN = 1,
    MAAS_LOG_INFO = 2,
    MAAS_LOG_DEBUG = 3
} maas_log_level;

/**
 * A log sink. `message` is one line without a trailing newline; secrets and
 * tokens are never part of it.
 */
typedef void (*maas_log_cb)(maas_log_level level, const char *message, void *payload);

/* ------------------------------------------------------------------ */
/* Client                                                              */
/* ------------------------------------------------------------------ */

typedef struct maas_client maas_client;

#define MAAS_CLIENT_OPTIONS_VERSION 2

/** Default API base URL. */
#define MAAS_DEFAULT_API_BASE_URL "https://us-region-2-sdk-api.cloud.intel.com/v1/maas"
/** Default OAuth2 token endpoint. */
#define MAAS_DEFAULT_AUTH_URL "https://client-token.api.idcservice.net/oauth2/token"
#define MAAS_DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define MAAS_DEFAULT_IDLE_TIMEOUT_MS 60000L
#define MAAS_DEFAULT_MAX_LINE_BYTES (8u * 1024u * 1024u)
#define MAAS_DEFAULT_MAX_RETRIES 2
/** Set max_retries to this value to disable retries. */
#define MAAS_RETRIES_OFF (-1)
/** Whole-call limit of one token request, retries included (docs/reliability.md). */
#define MAAS_DEFAULT_TOKEN_TIMEOUT_MS 30000L
/** Whole-call limit of one GET /models, retries included (docs/reliability.md). */
#define MAAS_DEFAULT_MODELS_TIMEOUT_MS 30000L
/** Most text maas_generate_text() collects before it fails with MAAS_ERR_TEXT_TOO_LONG. */
#define MAAS_DEFAULT_MAX_TEXT_BYTES (16u * 1024u * 1024u)

/**
 * The HTTP version a client asks for (maas_client_options.http_version).
 * Over https://, HTTP/2 is negotiated with the server (ALPN) and a server
 * that does not offer it gets HTTP/1.1 in every mode: the version is the
 * server's choice among those offered. Plain http:// (loopback, or with
 * allow_insecure_http) always uses HTTP/1.1: no HTTP/2 without TLS.
 */
typedef enum maas_http_version {
    MAAS_HTTP_AUTO = 0, /**< offer HTTP/2 and HTTP/1.1 over TLS (the default) */
    MAAS_HTTP_1_1 = 1,  /**< HTTP/1.1 only: HTTP/2 is not offered */
    MAAS_HTTP_2 = 2     /**< as MAAS_HTTP_AUTO: HTTP/2 offered, HTTP/1.1 the fallback */
} maas_http_version;

/**
 * Client configuration. Initialise with MAAS_CLIENT_OPTIONS_INIT or
 * maas_client_options_init(); every field left zero takes its documented
 * default. Strings are copied by maas_client_new(). Fields are only ever
 * appended, and `version` tells the library which of them you know.
 */
typedef struct maas_client_options {
    unsigned int version;        /**< MAAS_CLIENT_OPTIONS_VERSION */
    const char *client_id;       /**< OAuth2 client id; NULL when `token` is set */
    const char *client_secret;   /**< OAuth2 client secret; copied, wiped from memory when freed */
    const char *cloud_account;   /**< cloudAccountId sent with every generation */
    const char *api_base_url;    /**< NULL: MAAS_DEFAULT_API_BASE_URL */
    const char *auth_url;        /**< NULL: MAAS_DEFAULT_AUTH_URL */
    const char *token;           /**< a bearer token used as is, no token endpoint */
    const char *ca_bundle;       /**< PEM file of the only CAs trusted (the system store and
                                      libcurl's CA directory are then not used); NULL: the
                                      system store */
    long connect_timeout_ms;     /**< 0: MAAS_DEFAULT_CONNECT_TIMEOUT_MS */
    long idle_timeout_ms;        /**< longest gap between messages; 0: default; <0: none */
    long deadline_ms;            /**< whole-request limit; 0 or <0: none. A generation sends
                                      what is left of it as Grpc-Timeout */
    int max_retries;             /**< 0: MAAS_DEFAULT_MAX_RETRIES; MAAS_RETRIES_OFF: none */
    long retry_base_ms;          /**< first backoff; 0: 500 */
    long retry_max_ms;           /**< backoff cap; 0: 8000 */
    long retry_after_max_ms;     /**< cap on a server's Retry-After; 0: 30000 */
    long token_refresh_skew_ms;  /**< refresh this long before expiry (0: 5 min); never more
                                      than a quarter of the token's lifetime */
    size_t max_line_bytes;       /**< cap on one streamed line; 0: MAAS_DEFAULT_MAX_LINE_BYTES */
    maas_log_level log_level;    /**< 0: off (MAAS_LOG from the environment still applies) */
    maas_log_cb log_cb;          /**< NULL: log to stderr */
    void *log_payload;           /**< passed to log_cb */
    const char *user_agent_suffix; /**< appended to the User-Agent; at most 64 bytes, no
                                        control characters */
    int insecure_skip_tls_verify;  /**< nonzero disables TLS verification. Insecure: tests only */
    /* Version 2. */
    const char *proxy;             /**< HTTP(S) proxy URL, e.g. "http://proxy:3128" (credentials
                                        as "http://user:pass@proxy:3128"); NULL: the standard
                                        variables (HTTPS_PROXY, NO_PROXY, ... read by libcurl);
                                        "": no proxy at all, the variables ignored */
    const char *proxy_ca_bundle;   /**< PEM file of the CAs to trust for an https:// proxy,
                                        exactly those; NULL: as ca_bundle */
    long token_timeout_ms;       /**< whole token request, retries included; 0:
                                      MAAS_DEFAULT_TOKEN_TIMEOUT_MS; <0: none. Never longer
                                      than deadline_ms */
    long models_timeout_ms;      /**< whole GET /models, retries included; 0:
                                      MAAS_DEFAULT_MODELS_TIMEOUT_MS; <0: none. Never longer
                                      than deadline_ms */
    size_t max_text_bytes;       /**< most text maas_generate_text() collects; 0:
                                      MAAS_DEFAULT_MAX_TEXT_BYTES */
    int allow_insecure_http;       /**< nonzero accepts an http:// api_base_url or auth_url
                                        to a host that is not loopback (127.0.0.0/8, ::1,
                                        localhost). INSECURE: the client secret and the
                                        tokens then cross the network in clear text. 0
                                        (default): such a URL fails with MAAS_ERR_CONFIG.
                                        From the environment: MAAS_ALLOW_INSECURE_HTTP=1 */
    int http_version;              /**< a maas_http_version; 0: MAAS_HTTP_AUTO. Concurrent
                                        streams of one maas_multi, and the blocking calls
                                        of all threads, share HTTP/2 connections.
                                        From the environment: MAAS_HTTP_VERSION=auto, 1.1
                                        or 2 */
} maas_client_options;

/**
 * Static initialiser, C and C++: the version and every other field zero.
 * Spelled out so that -Wmissing-field-initializers stays quiet.
 */
#define MAAS_CLIENT_OPTIONS_INIT                                               \
    { MAAS_CLIENT_OPTIONS_VERSION, NULL, NULL, NULL, NULL, NULL, NULL, NULL,  \
      0L, 0L, 0L, 0, 0L, 0L, 0L, 0L, 0u, MAAS_LOG_OFF, NULL, NULL, NULL, 0,   \
      NULL, NULL, 0L, 0L, 0u, 0, 0 }

/**
 * Zero `opts` and set its version. Returns MAAS_ERR_OPTIONS_VERSION for a
 * version this library does not know.
 */
MAAS_EXPORT maas_status maas_client_options_init(maas_client_options *opts, unsigned int version);

/**
 * Create a client. `opts` NULL reads everything from the environment
 * (MAAS_CLIENT_ID, MAAS_CLIENT_SECRET, MAAS_CLOUD_ACCOUNT, MAAS_API_BASE_URL,
 * MAAS_AUTH_URL, MAAS_TOKEN, MAAS_CA_BUNDLE, MAAS_PROXY_CA_BUNDLE,
 * MAAS_ALLOW_INSECURE_HTTP, MAAS_HTTP_VERSION, MAAS_LOG). MAAS_ERR_CONFIG for
 * missing credentials, an http_version that is not a maas_http_version, a string with a control character or invalid UTF-8, a URL
 * that is not http(s), and an http:// URL to a host that is not loopback
 * unless allow_insecure_http is set. With `opts`, the environment is not
 * read except MAAS_LOG when opts->log_level is 0, and the standard proxy
 * variables (HTTPS_PROXY, https_proxy, NO_PROXY, no_proxy, ...), which
 * libcurl reads when opts->proxy is NULL (docs/configuration.md, "Proxies").
 * No network traffic happens here.
 */
MAAS_EXPORT maas_status maas_client_new(maas_client **out, const maas_client_options *opts);

/**
 * Initialise `opts` for `version` (as maas_client_options_init() does) and
 * fill it from the environment: the variables maas_client_new(.., NULL)
 * reads. Strings point into the environment; use them before it changes.
 */
MAAS_EXPORT maas_status maas_client_options_from_env(maas_client_options *opts,
                                                     unsigned int version);

/** Free a client, closing its connections and wiping its secrets. NULL is a no-op. */
MAAS_EXPORT void maas_client_free(maas_client *client);

/**
 * Make sure the client holds a valid token, fetching one if needed (at most
 * one request per token lifetime). Not needed before other calls: they do
 * it themselves.
 */
MAAS_EXPORT maas_status maas_client_authenticate(maas_client *client);

/** Counters a client keeps; read with maas_client_counter(). */
typedef enum maas_counter {
    MAAS_COUNTER_TOKEN_REQUESTS = 0, /**< requests sent to the token endpoint */
    MAAS_COUNTER_API_REQUESTS = 1,   /**< HTTP attempts sent to the API (retries included) */
    MAAS_COUNTER_CONNECTIONS = 2,    /**< new connections opened (a low number means reuse) */
    MAAS_COUNTER_RETRIES = 3,        /**< attempts that were retries */
    MAAS_COUNTER_TOKEN_REPLAYS = 4,  /**< requests replayed after a 401 with a fresh token */
    MAAS_COUNTER_TOKEN_EXPIRES_IN_MS = 5 /**< ms until the cached token's refresh; 0 if none */
} maas_counter;

/** Read one counter. Thread-safe; unknown counters read 0. */
MAAS_EXPORT uint64_t maas_client_counter(const maas_client *client, maas_counter which);

/* ------------------------------------------------------------------ */
/* Models                                                              */
/* ------------------------------------------------------------------ */

typedef struct maas_model_list maas_model_list;
/** A model borrowed from its list: valid until the list is freed. */
typedef struct maas_model maas_model;

/** GET {base}/models. */
MAAS_EXPORT maas_status maas_models_list(maas_model_list **out, maas_client *client);
MAAS_EXPORT size_t maas_model_list_count(const maas_model_list *list);
/** The model at `index`, NULL when out of range. */
MAAS_EXPORT const maas_model *maas_model_list_get(const maas_model_list *list, size_t index);
/** The model whose model name or product name equals `name`, else NULL. */
MAAS_EXPORT const maas_model *maas_model_list_find(const maas_model_list *list, const char *name);
MAAS_EXPORT void maas_model_list_free(maas_model_list *list);

/** e.g. "mistralai/Mistral-7B-Instruct-v0.1" */
MAAS_EXPORT const char *maas_model_name(const maas_model *model);
/** e.g. "maas-model-mistral-7b-v0.1" */
MAAS_EXPORT const char *maas_model_product_name(const maas_model *model);
/** e.g. "269c3034-e6c7-4359-9e77-c3efedfaa778" */
MAAS_EXPORT const char *maas_model_product_id(const maas_model *model);

/* ------------------------------------------------------------------ */
/* Generation                                                          */
/* ------------------------------------------------------------------ */

#define MAAS_REQUEST_VERSION 1
/** max_new_tokens used when the request leaves it 0 (the product guide's default). */
#define MAAS_DEFAULT_MAX_NEW_TOKENS 250

/**
 * One generation. Initialise with MAAS_REQUEST_INIT. Either `model_info`
 * (from a model list) or `model` must be set; `model` may be a model name
 * or a product name and is resolved through the client's catalogue (fetched
 * once per client).
 *
 * What the service does with it: `prompt` is the user's plain text. The
 * server wraps it in the model's own chat template, after a system prompt
 * of its own (which takes part of the model's input budget), so do not add
 * a template yourself: it would be applied twice. A prompt the service's
 * safety check rejects is not an error: it gets a normal stream, a short
 * refusal ending with an end-of-sequence token (MAAS_FINISH_EOS_TOKEN).
 */
typedef struct maas_request {
    unsigned int version;          /**< MAAS_REQUEST_VERSION */
    const char *model;             /**< model name or product name */
    const maas_model *model_info;  /**< takes precedence over `model` */
    const char *prompt;            /**< at least 2 characters, valid UTF-8 */
    int max_new_tokens;            /**< [1, 2048); 0: MAAS_DEFAULT_MAX_NEW_TOKENS */
    double temperature;            /**< [0, 1); 0: the server's default (0.1), not greedy */
    const char *params_json;       /**< NULL or a JSON object merged into request.params
                                        (forward compatibility); the two fields above win */
} maas_request;

/** Static initialiser: the version and every other field zero. */
#define MAAS_REQUEST_INIT { MAAS_REQUEST_VERSION, NULL, NULL, NULL, 0, 0.0, NULL }

/** Why a generation stopped. Unknown names map to MAAS_FINISH_UNKNOWN. */
typedef enum maas_finish_reason {
    MAAS_FINISH_UNKNOWN = 0,
    MAAS_FINISH_LENGTH = 1,        /**< FINISH_REASON_LENGTH: max_new_tokens reached */
    MAAS_FINISH_EOS_TOKEN = 2,     /**< FINISH_REASON_EOS_TOKEN: the model ended */
    MAAS_FINISH_STOP_SEQUENCE = 3  /**< FINISH_REASON_STOP_SEQUENCE */
} maas_finish_reason;

/** One streamed token. Valid only during the callback, or until the next maas_stream_next(). */
typedef struct maas_token {
    uint32_t id;            /**< vocabulary id */
    const char *text;       /**< NUL-terminated, but may hold NULs: use text_len */
    size_t text_len;
    double logprob;         /**< valid when has_logprob */
    int has_logprob;
    int special;            /**< nonzero for special tokens such as "</s>" */
    size_t index;           /**< 0 for the first token of the stream */
    int last_buffered;      /**< nonzero when no further complete line had arrived
                                 when this token was handed out: the last token of
                                 what the network has delivered so far, the moment
                                 to flush buffered output (once per read instead of
                                 once per token). Also set on the final message's
                                 token. A token followed in the same read by the
                                 final message has it 0: flush at the stream's end
                                 too. */
} maas_token;

/** The final message's details. Valid until the stream is freed / during the callback. */
typedef struct maas_details {
    maas_finish_reason finish_reason;
    const char *finish_reason_name; /**< as the server sent it, e.g. "FINISH_REASON_LENGTH" */
    uint32_t generated_tokens;
    uint64_t seed;                  /**< valid when has_seed; may exceed INT64_MAX */
    int has_seed;
    const char *generated_text;     /**< the server's text (without special tokens); "" if absent;
                                         cut after about MAAS_GENERATED_TEXT_MAX bytes */
    size_t generated_text_len;
    const char *request_id;         /**< "" if the server sent none */
    unsigned int attempts;          /**< HTTP attempts this generation took (retries and a
                                         401 replay included) */
    int generated_text_truncated;   /**< nonzero when generated_text was longer than
                                         MAAS_GENERATED_TEXT_MAX and was cut there */
    /* Appended in 0.2: timings, on the monotonic clock, from the start of the
     * generation's first HTTP attempt (retries and their waits included). */
    double time_to_first_token;     /**< seconds until the first token was decoded; -1 if the
                                         stream had no token */
    double total_time;              /**< seconds until the final message was decoded */
    double tokens_per_second;       /**< tokens after the first, divided by the seconds between
                                         the first token and the final message; 0 with fewer than
                                         2 tokens */
    /* The rate-limit headers of the answer that carried the stream. */
    double retry_after;             /**< seconds from a Retry-After header, -1 if none */
    long rate_limit_limit;          /**< X-RateLimit-Limit, -1 if absent or not a number */
    long rate_limit_remaining;      /**< X-RateLimit-Remaining, -1 if absent or not a number */
    double rate_limit_reset;        /**< X-RateLimit-Reset as seconds from the answer, -1 if
                                         absent */
} maas_details;

/**
 * generated_text in maas_details is kept up to about this many bytes (as
 * they are on the wire, escapes included; the cut falls at most one network
 * read later), so that a stream's memory does not grow with its length: the
 * server repeats the whole text in its final message. The tokens themselves
 * are never cut.
 */
#define MAAS_GENERATED_TEXT_MAX (256u * 1024u)

/** Called once per token, in order. Return 0 to continue, nonzero to cancel. */
typedef int (*maas_token_cb)(const maas_token *token, void *payload);
/** Called once with the final details. Return 0; nonzero marks the stream cancelled. */
typedef int (*maas_details_cb)(const maas_details *details, void *payload);

/**
 * Stream a generation through callbacks: on_token per token (may be NULL),
 * then on_details once (may be NULL). Blocks until the stream ends.
 * Returns MAAS_OK after the final message; on failure maas_last_error()
 * holds the details. Tokens already delivered stay delivered.
 */
MAAS_EXPORT maas_status maas_generate(maas_client *client, const maas_request *request,
                                      maas_token_cb on_token, maas_details_cb on_details,
                                      void *payload);

/**
 * Convenience: stream a generation and collect the text of its non-special
 * tokens. `*out` is NUL-terminated and released with maas_free(); `out_len`
 * may be NULL. On failure `*out` is NULL. At most the client's
 * max_text_bytes are collected (MAAS_ERR_TEXT_TOO_LONG past them), and a
 * stream of more than max_new_tokens tokens and a final one fails with
 * MAAS_ERR_PROTOCOL.
 */
MAAS_EXPORT maas_status maas_generate_text(char **out, size_t *out_len, maas_client *client,
                                           const maas_request *request);

/** Release memory returned by libmaas (maas_generate_text). NULL is a no-op. */
MAAS_EXPORT void maas_free(void *ptr);

/* ------------------------------------------------------------------ */
/* Streams: the pull iterator over the same engine                     */
/* ------------------------------------------------------------------ */

typedef struct maas_stream maas_stream;

/**
 * Prepare a generation stream. Fetches a token and resolves the model if
 * needed; the HTTP request starts with the first maas_stream_next() or
 * maas_stream_run(). A stream is used by one thread at a time, except for
 * maas_stream_cancel().
 */
MAAS_EXPORT maas_status maas_stream_open(maas_stream **out, maas_client *client,
                                         const maas_request *request);

/**
 * Block until the next token. Returns MAAS_OK with `*out` set (valid until
 * the next call), MAAS_DONE once after the final message (then
 * maas_stream_details() is available), or an error status; after MAAS_DONE
 * or an error, further calls return the same status.
 */
MAAS_EXPORT maas_status maas_stream_next(maas_stream *stream, const maas_token **out);

/**
 * Push interface on an opened stream: call on_token per remaining token and
 * on_details once, as maas_generate() does.
 */
MAAS_EXPORT maas_status maas_stream_run(maas_stream *stream, maas_token_cb on_token,
                                        maas_details_cb on_details, void *payload);

/** The final details once maas_stream_next() returned MAAS_DONE, else NULL. */
MAAS_EXPORT const maas_details *maas_stream_details(const maas_stream *stream);

/** The stream's failure, or NULL while it has none. Valid until the stream is freed. */
MAAS_EXPORT const maas_error *maas_stream_error(const maas_stream *stream);

/**
 * Cancel from any thread (or from a callback): a blocked maas_stream_next()
 * or maas_stream_run() returns MAAS_ERR_CANCELLED promptly and the connection
 * is closed, not reused.
 */
MAAS_EXPORT void maas_stream_cancel(maas_stream *stream);

/** Close and free a stream, aborting it if still running. NULL is a no-op. */
MAAS_EXPORT void maas_stream_free(maas_stream *stream);

/* ------------------------------------------------------------------ */
/* Many streams on one thread                                          */
/* ------------------------------------------------------------------ */

/**
 * A set of streams driven together by one thread: started without waiting,
 * advanced by maas_multi_perform() + maas_multi_poll(), or plugged into an
 * application's own event loop with the socket and timer callbacks below (in
 * the manner of libcurl's multi-socket interface). One thread at a time
 * drives a multi; maas_multi_wakeup() and maas_stream_cancel() may be called
 * from any thread.
 */
typedef struct maas_multi maas_multi;

/**
 * Called once when a stream of a multi ends: MAAS_OK after its final
 * message, else its failure (maas_stream_error() has the details). The
 * stream has left the multi; it may be freed here or later.
 */
typedef void (*maas_done_cb)(maas_stream *stream, maas_status status, void *payload);

/** A multi for `client`, which must outlive it. */
MAAS_EXPORT maas_status maas_multi_new(maas_multi **out, maas_client *client);

/**
 * Free a multi. A fetch aside under way is cut short (never waited for).
 * Streams not yet done are stopped (their connections closed,
 * no callback called) and end with MAAS_ERR_CANCELLED, unless their final
 * message had already arrived; they must still be freed with
 * maas_stream_free(). NULL is a no-op.
 */
MAAS_EXPORT void maas_multi_free(maas_multi *multi);

/**
 * Start a stream in the multi without waiting for the network: the request
 * is checked, the model resolved and a token taken. A catalogue or token the
 * client does not hold yet is fetched aside by the multi's own thread while
 * the stream waits in the multi (so are the tokens of 401 replays); no
 * maas_multi_* call waits on the network, and a failed fetch (an unknown
 * model, refused credentials) ends each waiting stream through on_done.
 * maas_client_authenticate() first saves the first streams that wait. Its callbacks run from
 * inside maas_multi_perform() / maas_multi_poll() /
 * maas_multi_socket_action(): on_token per token (nonzero cancels),
 * on_details once, then on_done once. Any callback may be NULL. `*out`
 * stays valid until maas_stream_free(). When the stream cannot start (a bad
 * request, no credentials), the call fails and no callback is called.
 */
MAAS_EXPORT maas_status maas_multi_add(maas_stream **out, maas_multi *multi,
                                       const maas_request *request, maas_token_cb on_token,
                                       maas_details_cb on_details, maas_done_cb on_done,
                                       void *payload);

/**
 * Do whatever can be done now without waiting: read what arrived, call the
 * callbacks, start due retries, fire expired clocks. `running` (may be NULL)
 * receives the number of streams not yet done.
 */
MAAS_EXPORT maas_status maas_multi_perform(maas_multi *multi, size_t *running);

/**
 * Wait up to `timeout_ms` (and no longer than the next clock of a stream)
 * for network activity or maas_multi_wakeup(), then do the work as
 * maas_multi_perform() does. `timeout_ms` 0 or less does not wait.
 * `running` as there.
 */
MAAS_EXPORT maas_status maas_multi_poll(maas_multi *multi, int timeout_ms, size_t *running);

/**
 * From any thread: cut a maas_multi_poll() short, or, in event-loop mode,
 * make the multi's wake-up pipe readable (see maas_multi_set_callbacks()).
 */
MAAS_EXPORT void maas_multi_wakeup(maas_multi *multi);

/** Milliseconds until the multi needs driving even without activity; -1 when never. */
MAAS_EXPORT long maas_multi_timeout(maas_multi *multi);

/* Event-loop integration. */

#define MAAS_POLL_IN 1     /**< wait for the socket to be readable */
#define MAAS_POLL_OUT 2    /**< wait for the socket to be writable */
#define MAAS_POLL_INOUT 3  /**< both */
#define MAAS_POLL_REMOVE 4 /**< stop watching the socket */
/** The `fd` to pass to maas_multi_socket_action() when the timer fires. */
#define MAAS_SOCKET_TIMEOUT (-1)

/**
 * Told which socket to watch for what (MAAS_POLL_*). `socket_payload` is
 * what maas_multi_assign() attached to the socket, NULL at first. Return 0:
 * nonzero aborts the multi for good (libcurl's rule); every later call on it
 * then fails.
 */
typedef int (*maas_socket_cb)(int fd, int what, void *payload, void *socket_payload);
/**
 * Told when to call maas_multi_socket_action(multi, MAAS_SOCKET_TIMEOUT, 0, ..):
 * in `timeout_ms` milliseconds (0: at once); -1 removes the timer. Return 0.
 */
typedef int (*maas_timer_cb)(long timeout_ms, void *payload);

/**
 * Switch the multi to event-loop mode: from now on it reports sockets and
 * its timer through these callbacks and is driven by
 * maas_multi_socket_action() instead of perform/poll. Call once, before
 * adding streams. The first socket reported (at once, from inside this call)
 * is the multi's wake-up pipe: watch it like the others, so that
 * maas_stream_cancel() and maas_multi_wakeup() from other threads reach the
 * loop.
 */
MAAS_EXPORT maas_status maas_multi_set_callbacks(maas_multi *multi, maas_socket_cb on_socket,
                                                 maas_timer_cb on_timer, void *payload);

/** Attach an application pointer to a socket, handed back to the socket callback. */
MAAS_EXPORT maas_status maas_multi_assign(maas_multi *multi, int fd, void *socket_payload);

/**
 * The event loop saw `events` (MAAS_POLL_IN / MAAS_POLL_OUT, or 0 when it
 * cannot tell) on `fd`, or the timer fired (fd MAAS_SOCKET_TIMEOUT): do the
 * work, calling the stream callbacks. `running` as in maas_multi_perform().
 */
MAAS_EXPORT maas_status maas_multi_socket_action(maas_multi *multi, int fd, int events,
                                                 size_t *running);

#ifdef __cplusplus
}
#endif

#endif /* MAAS_MAAS_H */
