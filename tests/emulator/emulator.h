/*
 * maas-emulator: a local server speaking the MaaS wire protocol
 * (docs/emulator.md).  Shared declarations of its modules:
 *
 *   emulator.c  command line, start-up, signals, shutdown
 *   server.c    libmicrohttpd handlers: routing, auth, validation, responses
 *   body.c      the content reader: token stream generator and byte faults
 *   gen.c       model catalogue, deterministic token generator
 *   faults.c    fault specs, prompt directives, the per-path fault queue
 *   auth.c      OAuth2 token table, Basic/Bearer header parsing
 *   sched.c     one helper thread resuming suspended connections
 *   util.c      buffers, JSON escaping, UTF-8, hashing, randomness, logging
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef MAAS_EMULATOR_H
#define MAAS_EMULATOR_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <microhttpd.h>

#define EMU_VERSION "0.1.0"
#define EMU_MAX_BODY ((size_t)16 * 1024 * 1024) /* request bodies above this: 413 */
#define EMU_MAX_TOKENS_FAULT 10000000L          /* tokens=N upper bound */
#define EMU_MAX_MS 3600000L                     /* upper bound of every *_ms value */
#define EMU_WATCH_MIN_MS 200                    /* waits this long also watch for hang-ups */
#define EMU_MAX_LONG_LINE (256L * 1024 * 1024)  /* long-line=N and deep-nesting=N upper bound */
#define EMU_BAD_VALUE_MAX 128                   /* bad-value: VALUE below this many bytes */
#define EMU_FAULT_LINE 1                        /* the token index hostile content goes to */

/* The service's friendly text for UNAVAILABLE, and the type of error details. */
#define EMU_CAPACITY_MSG "sorry, we are at maximum capacity. Please come back later"
#define EMU_STRINGVALUE_TYPE "type.googleapis.com/google.protobuf.StringValue"

#if defined(__GNUC__)
#define EMU_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define EMU_PRINTF(f, a)
#endif

/* ------------------------------------------------------------------ */
/* util.c                                                              */
/* ------------------------------------------------------------------ */

/* A growable byte buffer.  On allocation failure `oom` is set and further
 * appends are ignored; callers check `oom` once at the end. */
struct sbuf {
    char *p;
    size_t len;
    size_t cap;
    bool oom;
};

void sbuf_free(struct sbuf *b);
void sbuf_reset(struct sbuf *b);
void sbuf_add(struct sbuf *b, const void *data, size_t n);
void sbuf_adds(struct sbuf *b, const char *s);
void sbuf_addf(struct sbuf *b, const char *fmt, ...) EMU_PRINTF(2, 3);
/* Append s[0..n) as the inside of a JSON string literal (no quotes). */
void sbuf_add_json(struct sbuf *b, const char *s, size_t n);
/* Detach the contents as a NUL-terminated malloc'd string (NULL on OOM). */
char *sbuf_take(struct sbuf *b);

uint64_t now_ms(void);
void random_bytes(void *out, size_t n);
void uuid4(char out[37]);
bool utf8_valid(const unsigned char *s, size_t n);
size_t utf8_runes(const char *s, size_t n);
/* Make a NUL-terminated string valid UTF-8 in place (bad bytes become '?'). */
void utf8_sanitize(char *s);
uint64_t fnv1a64(uint64_t h, const void *data, size_t n);
#define FNV64_OFFSET 0xcbf29ce484222325ULL
uint32_t fnv1a32(const char *s);
uint64_t mix64(uint64_t x);
/* Parse a whole decimal string into [min, max]; false on any junk. */
bool parse_long(const char *s, size_t n, long min, long max, long *out);

extern bool g_quiet;
void emu_log(const char *fmt, ...) EMU_PRINTF(1, 2);
void emu_vlog(const char *fmt, va_list ap) EMU_PRINTF(1, 0);

/* ------------------------------------------------------------------ */
/* configuration and counters (emulator.c)                             */
/* ------------------------------------------------------------------ */

/* Faults; every field has an "off" value (false, -1, 0 or ""). */
struct faults {
    bool split;
    bool coalesce;
    bool crlf;
    bool blank_lines;
    bool expire_token;
    long error_after;     /* tokens; -1 off */
    long drop_after;      /* tokens (stream) or body bytes (other bodies); -1 off */
    long truncate_after;  /* tokens; -1 off */
    long malformed_after; /* tokens; -1 off */
    long stall_after;     /* tokens (stream) or body bytes; -1 off */
    long drip_ms;         /* -1 off */
    long delay_ms;        /* -1 off */
    long first_byte_delay_ms; /* -1 off */
    long end_delay_ms;    /* streams: pause before the terminating chunk; -1 off */
    long tokens;          /* -1 off */
    int status;           /* 0 off */
    char retry_after[128];/* "" off */
    char rate_limit[128]; /* "LIMIT,REMAINING,RESET": X-RateLimit-* headers; "" off */
    /* hostile stream content (docs/emulator.md, "Hostile content") */
    bool endless_line;
    bool invalid_utf8;
    bool nul_byte;
    bool no_answer;       /* every path: the request is read, never answered */
    bool silent_after_headers; /* streams: 200, headers, then nothing (error answers unaffected) */
    long keepalive_blank_ms;   /* streams: a bare newline every N ms, never a message; -1 off */
    long long_line;       /* bytes of token 1's text; -1 off */
    long deep_nesting;    /* array levels of an unknown field on token 1's line; -1 off */
    unsigned wrong_type;  /* WT_* bits; 0 off */
    /* bad-value=FIELD:VALUE, VALUE inserted verbatim; "" off */
    char bad_id[EMU_BAD_VALUE_MAX];
    char bad_logprob[EMU_BAD_VALUE_MAX];
    char bad_generated_tokens[EMU_BAD_VALUE_MAX];
    char bad_seed[EMU_BAD_VALUE_MAX];
};

/* wrong-type=FIELD: which fields get a value of the wrong type. */
enum wrong_type {
    WT_RESULT = 1u << 0,
    WT_RESPONSE = 1u << 1,
    WT_TOKEN = 1u << 2,
    WT_ID = 1u << 3,
    WT_TEXT = 1u << 4,
    WT_LOGPROB = 1u << 5,
    WT_SPECIAL = 1u << 6,
    WT_DETAILS = 1u << 7,
    WT_FINISH_REASON = 1u << 8,
    WT_GENERATED_TOKENS = 1u << 9,
    WT_SEED = 1u << 10,
    WT_GENERATED_TEXT = 1u << 11,
    WT_REQUEST_ID = 1u << 12,
    WT_ERROR = 1u << 13,
    WT_CODE = 1u << 14,
    WT_MESSAGE = 1u << 15,
};

struct emu_config {
    const char *host;
    unsigned port;
    unsigned token_port;
    const char *client_id;
    const char *client_secret;
    const char *cloud_account;
    long token_lifetime_s;
    long token_delay_ms;
    long token_interval_ms;
    struct faults cli_faults;
    char *tls_cert;
    char *tls_key;
    double token_expires_in;      /* < 0: the lifetime; else the expires_in sent (chaos.c) */
    long token_fail_after;        /* < 0: off; else tokens issued before every answer is 503 */
    bool random_faults;           /* --chaos SEED[:PERCENT] */
    uint64_t random_seed;
    long random_percent;
    unsigned conn_limit;          /* MHD_OPTION_CONNECTION_LIMIT */
    unsigned long long nofile;    /* RLIMIT_NOFILE soft limit in force */
};
extern struct emu_config g_cfg;

struct emu_stats {
    atomic_long token_requests;
    atomic_long tokens_issued;
    atomic_long models_requests;
    atomic_long generations;
    atomic_long generate_requests;
    atomic_long unauthorized;
    atomic_long connections_opened;       /* that carried an API request */
    atomic_long token_connections_opened; /* that carried a token request */
    atomic_long connections_open;         /* on both listeners */
    atomic_long token_connections_open;   /* on the token endpoint's listener */
    atomic_long streams_active;
    atomic_long random_faults;
};
extern struct emu_stats g_stats;

/* ------------------------------------------------------------------ */
/* faults.c                                                            */
/* ------------------------------------------------------------------ */

enum route {
    ROUTE_UNKNOWN = 0,
    ROUTE_TOKEN,
    ROUTE_MODELS,
    ROUTE_GENERATE,
    ROUTE_EMU_STATS,
    ROUTE_EMU_RESET,
    ROUTE_EMU_EXPIRE,
    ROUTE_EMU_FAULTS,
};

void faults_init(struct faults *f);
bool faults_any_body(const struct faults *f); /* split, drip, drop or stall set */
/* Parse one "NAME" or "NAME=VALUE" (length n) and merge it into f.
 * On failure returns false and writes a message ("unknown emulator fault:
 * NAME", ...) into err. */
bool faults_parse_spec(struct faults *f, const char *spec, size_t n, char *err, size_t errlen);
/* Merge every [[fault:...]] directive found in text. */
bool faults_parse_prompt(struct faults *f, const char *text, size_t n, char *err, size_t errlen);
/* Fields set in src override dst. */
void faults_merge(struct faults *dst, const struct faults *src);

bool fault_queue_push(enum route path, const struct faults *f, long count);
/* Merge into f one use of every queued entry for path. */
void fault_queue_take(enum route path, struct faults *f);
void fault_queue_clear(void);
/* --random-fault PERCENT:SPEC[+SPEC...]: each generation gets SPEC with that chance. */
bool faults_random_add(const char *arg, char *err, size_t errlen);
void faults_random_seed(uint64_t seed);
void faults_random_take(struct faults *f);

/* ------------------------------------------------------------------ */
/* auth.c                                                              */
/* ------------------------------------------------------------------ */

enum token_state { TOKEN_MISSING, TOKEN_MALFORMED, TOKEN_UNKNOWN, TOKEN_EXPIRED, TOKEN_VALID };

void tokens_init(void);
void tokens_free(void);
/* A new opaque JWT-shaped token valid for lifetime_s (0: already expired). */
char *token_issue(long lifetime_s);
/* Check an Authorization header value ("Bearer <token>"); when expire is
 * set, a valid token is marked expired and reported so. */
enum token_state token_check(const char *authorization, bool expire);
void tokens_expire_all(void);
/* Does the Authorization header carry Basic id:secret? */
bool basic_auth_matches(const char *authorization, const char *id, const char *secret);
/* Form-urlencoded field lookup: copies the decoded value of key. */
bool form_get(const char *body, size_t n, const char *key, char *out, size_t outlen);

/* ------------------------------------------------------------------ */
/* gen.c                                                               */
/* ------------------------------------------------------------------ */

struct model_entry {
    const char *model_name;
    const char *product_id;
    const char *product_name;
};
extern const struct model_entry g_models[];
extern const size_t g_nmodels;

/* What a stream will produce; a function of its inputs only. */
struct gen_plan {
    uint64_t hash;
    uint64_t n_text;    /* non-special tokens */
    bool eos;           /* followed by one special </s> token */
    uint64_t seed;
    bool has_seed;
};

bool gen_init(void);
void gen_free(void);
void gen_plan_make(struct gen_plan *p, const char *model, size_t model_len, const char *prompt,
                   size_t prompt_len, bool has_temperature, float temperature, bool has_max,
                   uint32_t max_new_tokens, long tokens_fault);
static inline uint64_t gen_total(const struct gen_plan *p) { return p->n_text + (p->eos ? 1 : 0); }
/* Token i: JSON-escaped text, its length, its id; special for the EOS token. */
const char *gen_token(const struct gen_plan *p, uint64_t i, size_t *len, uint32_t *id,
                      bool *special);
/* logprob of token i, false when omitted (every 7th token). */
bool gen_logprob(const struct gen_plan *p, uint64_t i, double *out);

/* ------------------------------------------------------------------ */
/* sched.c                                                             */
/* ------------------------------------------------------------------ */

/* A connection parked by MHD_suspend_connection, waiting for a time or a
 * client hang-up.  Embedded in a request; only sched.c touches the links. */
struct waiter {
    struct MHD_Connection *conn;
    uint64_t due;       /* UINT64_MAX: no timer */
    size_t heap_idx;    /* SIZE_MAX: not in the heap */
    struct waiter *prev, *next;
    bool listed;
    bool watching;
    int fd;
    bool suspended;     /* MHD thread only */
    bool hangup;        /* set before resume: the client went away */
    bool aborted;       /* set before resume: the emulator is shutting down */
};

bool sched_start(void);
/* Resume every parked connection (aborted = true) and join the thread. */
void sched_stop(void);
/* From an MHD callback: suspend w->conn and resume it after ms (ms < 0:
 * never) or when the client hangs up (if watch).  False: shutting down,
 * nothing was suspended. */
bool sched_wait(struct waiter *w, long ms, bool watch);
/* At every callback entry for a request that may have been parked. */
void sched_resumed(struct waiter *w);
long sched_suspended(void);

/* ------------------------------------------------------------------ */
/* server.c / body.c                                                   */
/* ------------------------------------------------------------------ */

enum body_kind { BODY_PLAIN, BODY_STREAM };

/* A string field of a request (JSON strings may hold NULs: keep lengths). */
struct str {
    char *p; /* NULL: absent or null */
    size_t n;
};

/* The generatestream body, decoded the way protojson would. */
struct gen_req {
    bool decoded;
    char decode_err[200];
    struct str model, prompt, account, product_name, product_id;
    bool has_request, has_params, has_max, has_temp;
    uint32_t max_new_tokens;
    float temperature;
};

struct request {
    int refs;                 /* con_cls + response; MHD thread only */
    enum route route;
    struct MHD_Connection *conn;
    char method[16];
    char path[96];
    char rid[37];
    uint64_t t0;
    struct sbuf in;           /* request body */
    size_t in_total;
    bool too_large;
    bool prepared;            /* faults gathered, waits decided */
    bool waited;              /* first-byte/token delay already taken */
    bool answered;
    unsigned status;
    struct faults f;
    struct waiter w;
    /* a decoded generation request */
    struct gen_req g;
    bool fault_bad;           /* a fault spec did not parse: fault_err says why */
    char fault_err[160];
    enum MHD_RequestTerminationCode toe;
    /* the body being sent (body.c) */
    enum body_kind kind;
    struct sbuf out;
    size_t out_off;
    uint64_t sent;            /* body bytes handed to MHD */
    bool drip_due;            /* a drip pause precedes the next byte */
    bool stalled;
    struct gen_plan plan;
    uint64_t msg_i;           /* token messages produced */
    uint64_t delayed_for;     /* msg_i + 1 whose pause was taken */
    uint64_t lines;
    uint64_t text_j;          /* generated_text cursor in the final message */
    int phase;
    bool malformed_done;
    bool keepalive_sent;      /* keepalive-blank: the newline is out, the pause is next */
    bool end_delayed;         /* end-delay: the pause before the terminating chunk is over */
    /* a long run of generated bytes (long-line, endless-line, deep-nesting) */
    uint64_t fill_left;       /* bytes still to produce */
    uint64_t fill_pos;        /* position in the text pattern */
    bool fill_endless;        /* never ends */
    char fill_byte;           /* '[' or ']'; 0: the text pattern */
    int fill_next;            /* phase once the run is over */
    const char *end;          /* how the body ended, for the log */
    long token_lifetime_s;    /* > 0: this token answer's lifetime (chaos.c) */
};

/* chaos.c */
void chaos_prepare(struct request *rq);
bool chaos_token_refused(void);
long chaos_token_lifetime(const struct request *rq);
json_t *chaos_expires_in(const struct request *rq);

/* body.c */
ssize_t body_reader(void *cls, uint64_t pos, char *buf, size_t max);
void body_reader_free(void *cls);
/* server.c */
void request_unref(struct request *rq);
/* The cls of on_request: which listener took the connection. The token
 * endpoint has its own, as the service's token host is not its API host. */
enum listener { LISTENER_API = 1, LISTENER_TOKEN = 2 };
#define EMU_LISTENER(l) ((void *)(intptr_t)(l))
enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                           const char *method, const char *version, const char *upload_data,
                           size_t *upload_data_size, void **con_cls);
void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                  enum MHD_RequestTerminationCode toe);
void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                   enum MHD_ConnectionNotificationCode toe);

#endif
