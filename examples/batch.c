/*
 * maas batch: run every prompt of a JSON Lines file through one maas_multi,
 * write one JSON line per request, resume after a crash, back off when the
 * service pushes back. docs/batch.md is the user's page; this file says why.
 *
 * Shape of a run:
 *   1. read the output file (when there is one): the ids already answered,
 *      and whether its last line was torn by a kill;
 *   2. fetch the catalogue, then read the whole input once and check every
 *      line; any error ends the run before a single generation is sent;
 *   3. repair the output (cut a torn line; with --retry-failed, drop the
 *      failure lines through a rename), then read the input a second time
 *      and keep at most `limit` streams running in the multi.
 * Memory: the two id sets (16 bytes a slot) and one job per running stream;
 * the input is read a line at a time, twice (standard input is spooled to
 * a temporary file for that).
 * SPDX-License-Identifier: MIT
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <maas/maas.h>

#include "batch.h"

enum {
    BX_OK = 0,
    BX_INTERNAL = 1,
    BX_USAGE = 2, /* also: the input did not validate */
    BX_CONFIG = 3,
    BX_AUTH = 4,
    BX_REQUEST = 5,
    BX_FAILED = 6, /* the run ended, some requests failed */
    BX_NETWORK = 7,
    BX_INTERRUPTED = 130,
    BX_TERMINATED = 143
};

#define LINE_MAX_BYTES (16u * 1024u * 1024u) /* the service's body limit: a longer line cannot be sent */
#define ERRORS_SHOWN 20
#define MAX_ROUNDS 4                 /* a request the service pushed back is queued again 3 times */
#define SYNC_EVERY_MS 1000.0         /* the loss window on a crash of the machine */
#define PROGRESS_EVERY_MS 250.0
#define PAUSE_MAX_MS 60000.0         /* cap on a batch-wide Retry-After pause */
#define PAUSE_BASE_MS 1000.0         /* pause after a 429/503 without Retry-After, doubling */
#define PAUSE_BACKOFF_MAX_MS 30000.0
#define DECREASE_GAP_MS 1000.0       /* one multiplicative decrease per second at most */
#define CONCURRENCY_MAX 4096
/* The text kept per request. An answer is at most 2047 tokens, a few KiB;
 * beyond this a server is broken or hostile, and concurrency times this is
 * the most the answers can take. */
#define ANSWER_MAX_BYTES (4u * 1024u * 1024u)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* ---- growable text -------------------------------------------------------- */

struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (!(p = realloc(b->p, cap))) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_fmt(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(struct sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t k, i;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        k = 2, cp = s[0] & 0x1F;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        k = 3, cp = s[0] & 0x0F;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        k = 4, cp = s[0] & 0x07;
    else
        return 0;
    if (k > n)
        return 0;
    for (i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return k;
}

/* A JSON string. Bytes that are not UTF-8 (a hostile or broken server can
 * send them) become U+FFFD, so that every output line stays valid JSON. */
static void sb_json(struct sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    sb_add(b, "\"", 1);
    while (i < n) {
        unsigned char ch = u[i];
        size_t k = ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f ? utf8_len(u + i, n - i) : 0;
        if (k) {
            i += k;
            run += k;
            continue;
        }
        sb_add(b, s + i - run, run);
        run = 0;
        switch (ch) {
        case '"': sb_add(b, "\\\"", 2); break;
        case '\\': sb_add(b, "\\\\", 2); break;
        case '\n': sb_add(b, "\\n", 2); break;
        case '\r': sb_add(b, "\\r", 2); break;
        case '\t': sb_add(b, "\\t", 2); break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                char esc[6] = { '\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15] };
                sb_add(b, esc, 6);
            } else {
                sb_add(b, "\\ufffd", 6);
            }
        }
        i++;
    }
    sb_add(b, s + i - run, run);
    sb_add(b, "\"", 1);
}

/* ---- id sets -------------------------------------------------------------- */

/* FNV-1a 64: the stable hash of --shard (docs/batch.md gives it), and the
 * key of the id sets. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV_OFFSET 0xcbf29ce484222325ull

/* Open addressing on 64-bit hashes of the ids: 12 bytes a slot, whatever the
 * ids' length. Two different ids of one file share a hash with odds of about
 * n^2 / 2^65 (3e-8 for a million ids); docs/batch.md says so. */
struct idset {
    uint64_t *keys;
    uint32_t *vals;
    size_t cap, count;
};

static int idset_grow(struct idset *s)
{
    size_t cap = s->cap ? s->cap * 2 : 1024, i;
    uint64_t *keys = calloc(cap, sizeof *keys);
    uint32_t *vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    for (i = 0; i < s->cap; i++) {
        size_t j;
        if (!s->keys[i])
            continue;
        for (j = s->keys[i] & (cap - 1); keys[j]; j = (j + 1) & (cap - 1))
            ;
        keys[j] = s->keys[i];
        vals[j] = s->vals[i];
    }
    free(s->keys);
    free(s->vals);
    s->keys = keys;
    s->vals = vals;
    s->cap = cap;
    return 0;
}

/* The slot of `key`, inserted with `val` when absent (*found 0). NULL: no memory. */
static uint32_t *idset_put(struct idset *s, uint64_t key, uint32_t val, int *found)
{
    size_t j;
    key = key ? key : 1;
    if ((s->count + 1) * 2 > s->cap && idset_grow(s) != 0)
        return NULL;
    for (j = key & (s->cap - 1); s->keys[j]; j = (j + 1) & (s->cap - 1)) {
        if (s->keys[j] == key) {
            *found = 1;
            return &s->vals[j];
        }
    }
    s->keys[j] = key;
    s->vals[j] = val;
    s->count++;
    *found = 0;
    return &s->vals[j];
}

static uint32_t idset_get(const struct idset *s, uint64_t key)
{
    size_t j;
    key = key ? key : 1;
    if (!s->cap)
        return 0;
    for (j = key & (s->cap - 1); s->keys[j]; j = (j + 1) & (s->cap - 1))
        if (s->keys[j] == key)
            return s->vals[j];
    return 0;
}

static void idset_free(struct idset *s)
{
    free(s->keys);
    free(s->vals);
    memset(s, 0, sizeof *s);
}

/* ---- lines ---------------------------------------------------------------- */

struct reader {
    FILE *f;
    char *buf;
    size_t len, cap;
    unsigned long lineno;
    off_t off;        /* bytes consumed */
    off_t line_start; /* offset of the line in buf */
    int terminated;   /* the line in buf ended with '\n' */
};

enum { LINE_EOF = 0, LINE_OK = 1, LINE_LONG = 2, LINE_ERR = -1 };

/* One line without its '\n' into r->buf. A line longer than LINE_MAX_BYTES
 * is read to its end but not kept, so one huge line cannot take the memory. */
static int read_line(struct reader *r)
{
    int ch, long_line = 0;
    r->len = 0;
    r->line_start = r->off;
    r->terminated = 0;
    while ((ch = getc_unlocked(r->f)) != EOF) {
        r->off++;
        if (ch == '\n') {
            r->terminated = 1;
            break;
        }
        if (long_line)
            continue;
        if (r->len + 2 > r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 4096;
            char *p;
            if (r->len + 1 >= LINE_MAX_BYTES) {
                long_line = 1;
                continue;
            }
            if (cap > LINE_MAX_BYTES + 1)
                cap = LINE_MAX_BYTES + 1;
            if (!(p = realloc(r->buf, cap)))
                return LINE_ERR;
            r->buf = p;
            r->cap = cap;
        }
        r->buf[r->len++] = (char)ch;
    }
    if (ferror(r->f))
        return LINE_ERR;
    if (ch == EOF && r->len == 0 && !long_line && r->off == r->line_start)
        return LINE_EOF;
    r->lineno++;
    if (r->buf)
        r->buf[r->len] = '\0';
    return long_line ? LINE_LONG : LINE_OK;
}

static int blank(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

/* ---- the batch ------------------------------------------------------------ */

struct batch;

struct job {
    struct batch *b;
    char *id;                /* the id as JSON text: "\"q1\"" or "42" */
    char *prompt;
    const maas_model *model;
    int max_tokens;
    double temperature;
    unsigned rounds;         /* times the batch started it */
    unsigned attempts_before; /* HTTP attempts of the earlier rounds */
    double t_start, t_first;
    struct sbuf text;
    int too_long;            /* cancelled: the answer passed ANSWER_MAX_BYTES */
    maas_stream *s;
    struct job *prev, *next;
};

struct batch {
    /* options */
    unsigned concurrency;
    const char *model_opt;
    int max_tokens;
    double temperature;
    const char *output, *input;
    unsigned shard_i, shard_n;
    int retry_failed, progress, retries;

    maas_client *c;
    maas_model_list *list;
    const maas_model *default_model;
    maas_multi *m;
    struct reader in;
    int out_fd, out_syncable;
    double last_sync;
    size_t unsynced;
    struct sbuf line;
    struct idset answered; /* 1: answered ok, 2: answered with a failure */

    /* counts */
    size_t total, done, ok, failed, cancelled, dropped, skipped_answered, skipped_failed,
        other_shards;
    uint64_t tokens;
    size_t by_status[MAAS_ERR_INTERNAL + 1];

    struct job *running;     /* list */
    size_t nrunning;
    struct job *queue, *queue_tail; /* pushed back, to start again first */
    int input_over;

    /* AIMD and the batch-wide pause */
    double limit;
    unsigned limit_low;
    double inc_acc, last_decrease;
    double pause_until, paused_ms;
    unsigned pauses, backoff_step, decreases;
    uint64_t seen_retries;

    int stopping, cancelled_all, fatal;
    double t0, last_progress;
    int progress_shown;
};

/* ---- signals: one thread takes them and wakes the multi -------------------- */

static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;
static maas_multi *sig_multi;
static volatile sig_atomic_t sig_count;
static volatile sig_atomic_t sig_last;

static void *signal_thread(void *arg)
{
    sigset_t *set = arg;
    int sig;
    for (;;) {
        if (sigwait(set, &sig) != 0)
            continue;
        pthread_mutex_lock(&sig_lock);
        sig_last = sig;
        sig_count++;
        if (sig_multi)
            maas_multi_wakeup(sig_multi);
        pthread_mutex_unlock(&sig_lock);
    }
    return NULL;
}

/* ---- messages -------------------------------------------------------------- */

static int exit_for(maas_status st)
{
    switch (st) {
    case MAAS_ERR_CONFIG:
    case MAAS_ERR_OPTIONS_VERSION:
        return BX_CONFIG;
    case MAAS_ERR_AUTH:
    case MAAS_ERR_UNAUTHENTICATED:
    case MAAS_ERR_PERMISSION_DENIED:
        return BX_AUTH;
    case MAAS_ERR_INVALID_ARGUMENT:
    case MAAS_ERR_INVALID_REQUEST:
    case MAAS_ERR_UNKNOWN_MODEL:
    case MAAS_ERR_HTTP:
        return BX_REQUEST;
    case MAAS_ERR_RATE_LIMITED:
    case MAAS_ERR_UNAVAILABLE:
    case MAAS_ERR_SERVER:
        return 6;
    case MAAS_ERR_CONNECT:
    case MAAS_ERR_TLS:
    case MAAS_ERR_NETWORK:
    case MAAS_ERR_CONNECT_TIMEOUT:
        return BX_NETWORK;
    case MAAS_ERR_IDLE_TIMEOUT:
    case MAAS_ERR_DEADLINE:
        return 8;
    case MAAS_ERR_STREAM:
    case MAAS_ERR_TRUNCATED:
    case MAAS_ERR_PROTOCOL:
    case MAAS_ERR_LINE_TOO_LONG:
        return 9;
    default:
        return BX_INTERNAL;
    }
}

static int fail(maas_status st, const char *what)
{
    const maas_error *e = maas_last_error();
    fprintf(stderr, "maas batch: %s: %s%s%s\n", what, maas_strerror(st),
            e && e->message[0] ? ": " : "", e ? e->message : "");
    return exit_for(st);
}

/* ---- output ---------------------------------------------------------------- */

static void clear_progress(struct batch *b)
{
    if (b->progress_shown) {
        fputs("\r\033[K", stderr);
        b->progress_shown = 0;
    }
}

/* A fatal error during the run: no more starts, running streams cancelled,
 * nothing more written. */
static void stop_fatal(struct batch *b, int code)
{
    struct job *j;
    if (!b->fatal)
        b->fatal = code;
    b->stopping = 1;
    for (j = b->running; j; j = j->next)
        maas_stream_cancel(j->s);
}

static void sync_output(struct batch *b, double now)
{
    if (b->unsynced && b->out_syncable && fdatasync(b->out_fd) != 0 && errno != EINTR) {
        clear_progress(b);
        fprintf(stderr, "maas batch: output error: fdatasync: %s\n", strerror(errno));
        b->out_syncable = 0;
        stop_fatal(b, BX_INTERNAL);
    }
    b->unsynced = 0;
    b->last_sync = now;
}

/* One result line, written whole with one write(): a kill leaves at most the
 * last line torn, and the next run cuts it. */
static void emit(struct batch *b)
{
    ssize_t n;
    sb_add(&b->line, "\n", 1);
    if (b->line.oom) {
        clear_progress(b);
        fputs("maas batch: out of memory building a result line\n", stderr);
        stop_fatal(b, BX_INTERNAL);
        return;
    }
    do
        n = write(b->out_fd, b->line.p, b->line.len);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)b->line.len) {
        clear_progress(b);
        fprintf(stderr, "maas batch: output error: %s\n",
                n < 0 ? strerror(errno) : "short write (disk full?)");
        stop_fatal(b, BX_INTERNAL);
        return;
    }
    b->unsynced++;
}

static void line_ok(struct batch *b, struct job *j, const maas_details *d, double now)
{
    struct sbuf *l = &b->line;
    l->len = 0;
    l->oom = 0;
    sb_str(l, "{\"id\":");
    sb_str(l, j->id);
    sb_str(l, ",\"text\":");
    sb_json(l, j->text.p ? j->text.p : "", j->text.len);
    sb_str(l, ",\"finish_reason\":");
    sb_json(l, d->finish_reason_name, strlen(d->finish_reason_name));
    sb_fmt(l, ",\"generated_tokens\":%u,\"seed\":", (unsigned)d->generated_tokens);
    if (d->has_seed)
        sb_fmt(l, "\"%llu\"", (unsigned long long)d->seed);
    else
        sb_str(l, "null");
    sb_str(l, ",\"request_id\":");
    sb_json(l, d->request_id, strlen(d->request_id));
    sb_fmt(l, ",\"attempts\":%u,\"ttft_ms\":", j->attempts_before + d->attempts);
    if (j->t_first > 0)
        sb_fmt(l, "%.1f", j->t_first - j->t_start);
    else
        sb_str(l, "null");
    sb_fmt(l, ",\"duration_ms\":%.1f}", now - j->t_start);
    emit(b);
}

static void line_failed(struct batch *b, struct job *j, maas_status st, const maas_error *e,
                        const char *why)
{
    struct sbuf *l = &b->line;
    const char *msg = why ? why : e && e->message[0] ? e->message : maas_strerror(st);
    const char *rid = e ? e->request_id : "";
    l->len = 0;
    l->oom = 0;
    sb_str(l, "{\"id\":");
    sb_str(l, j->id);
    sb_str(l, ",\"error\":{\"status\":");
    sb_json(l, maas_status_name(st), strlen(maas_status_name(st)));
    sb_str(l, ",\"message\":");
    sb_json(l, msg, strlen(msg));
    sb_fmt(l, ",\"http_status\":%d,\"grpc_code\":%d,\"request_id\":", e ? e->http_status : 0,
           e ? e->grpc_code : -1);
    sb_json(l, rid, strlen(rid));
    sb_fmt(l, "},\"attempts\":%u}", j->attempts_before + (e ? e->attempts : 0));
    emit(b);
}

/* ---- the input's lines ------------------------------------------------------ */

struct item {
    json_t *root;
    char idbuf[32];
    const char *idtext; /* the string, or the integer in decimal */
    size_t idlen;
    int id_is_int;
    const char *prompt;
    const maas_model *model;
    int max_tokens;
    double temperature;
};

static uint64_t id_key(const struct item *it)
{
    char t = it->id_is_int ? 'i' : 's';
    return fnv1a(fnv1a(FNV_OFFSET, &t, 1), it->idtext, it->idlen);
}

static int in_shard(const struct batch *b, const struct item *it)
{
    return b->shard_n <= 1 || fnv1a(FNV_OFFSET, it->idtext, it->idlen) % b->shard_n == b->shard_i;
}

static size_t code_points(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Parse and check one line; 0, or -1 with `err` filled (it->root is then NULL). */
static int parse_item(const struct batch *b, const char *line, size_t len, struct item *it,
                      char *err, size_t errsz)
{
    json_error_t je;
    json_t *v;
    memset(it, 0, sizeof *it);
    it->root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (!it->root) {
        snprintf(err, errsz, "not valid JSON: %s (column %d)", je.text, je.column);
        return -1;
    }
    if (!json_is_object(it->root)) {
        snprintf(err, errsz, "not a JSON object");
        goto bad;
    }
    v = json_object_get(it->root, "id");
    if (json_is_string(v) && json_string_length(v) > 0) {
        it->idtext = json_string_value(v);
        it->idlen = json_string_length(v);
    } else if (json_is_integer(v)) {
        snprintf(it->idbuf, sizeof it->idbuf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        it->idtext = it->idbuf;
        it->idlen = strlen(it->idbuf);
        it->id_is_int = 1;
    } else {
        snprintf(err, errsz, v ? "\"id\" must be a non-empty string or an integer"
                               : "\"id\" is missing");
        goto bad;
    }
    v = json_object_get(it->root, "prompt");
    if (!json_is_string(v)) {
        snprintf(err, errsz, v ? "\"prompt\" must be a string" : "\"prompt\" is missing");
        goto bad;
    }
    it->prompt = json_string_value(v);
    if (strlen(it->prompt) != json_string_length(v) || code_points(it->prompt) < 2) {
        snprintf(err, errsz, strlen(it->prompt) != json_string_length(v)
                                 ? "\"prompt\" holds a NUL character"
                                 : "\"prompt\" must be at least 2 characters");
        goto bad;
    }
    it->model = b->default_model;
    v = json_object_get(it->root, "model");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v)) {
            snprintf(err, errsz, "\"model\" must be a string");
            goto bad;
        }
        it->model = maas_model_list_find(b->list, json_string_value(v));
        if (!it->model) {
            snprintf(err, errsz, "unknown model \"%.100s\" (maas models lists them)",
                     json_string_value(v));
            goto bad;
        }
    }
    it->max_tokens = b->max_tokens;
    v = json_object_get(it->root, "max_new_tokens");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 2047) {
            snprintf(err, errsz, "\"max_new_tokens\" must be an integer from 1 to 2047");
            goto bad;
        }
        it->max_tokens = (int)json_integer_value(v);
    }
    it->temperature = b->temperature;
    v = json_object_get(it->root, "temperature");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) < 1)) {
            snprintf(err, errsz, "\"temperature\" must be a number with 0 <= T < 1");
            goto bad;
        }
        it->temperature = json_number_value(v);
    }
    return 0;
bad:
    json_decref(it->root);
    it->root = NULL;
    return -1;
}

static int answered(const struct batch *b, const struct item *it)
{
    uint32_t v = idset_get(&b->answered, id_key(it));
    return v == 1 || (v == 2 && !b->retry_failed);
}

/* ---- validation: the whole input, before anything is sent ------------------ */

static int validate(struct batch *b)
{
    struct idset seen = { 0 };
    struct item it;
    char err[512];
    size_t errors = 0;
    int r, rc = BX_OK;

    while ((r = read_line(&b->in)) != LINE_EOF) {
        int found;
        uint32_t *slot;
        if (sig_count) {
            rc = sig_last == SIGTERM ? BX_TERMINATED : BX_INTERRUPTED;
            break;
        }
        if (r == LINE_ERR) {
            fprintf(stderr, "maas batch: cannot read %s: %s\n", b->input, strerror(errno));
            rc = BX_CONFIG;
            break;
        }
        if (r == LINE_LONG) {
            snprintf(err, sizeof err, "line longer than %u bytes", LINE_MAX_BYTES);
        } else if (blank(b->in.buf, b->in.len)) {
            continue;
        } else if (parse_item(b, b->in.buf, b->in.len, &it, err, sizeof err) == 0) {
            slot = idset_put(&seen, id_key(&it), (uint32_t)b->in.lineno, &found);
            if (!slot) {
                json_decref(it.root);
                fputs("maas batch: out of memory\n", stderr);
                rc = BX_INTERNAL;
                break;
            }
            if (!found) {
                if (!in_shard(b, &it))
                    b->other_shards++;
                else if (!answered(b, &it))
                    b->total++;
                else if (b->skipped_answered++, idset_get(&b->answered, id_key(&it)) == 2)
                    b->skipped_failed++;
                json_decref(it.root);
                continue;
            }
            snprintf(err, sizeof err, "duplicate id %s%.*s%s (first on line %lu)",
                     it.id_is_int ? "" : "\"", it.idlen > 100 ? 100 : (int)it.idlen, it.idtext,
                     it.id_is_int ? "" : "\"", (unsigned long)*slot);
            json_decref(it.root);
        }
        if (errors++ < ERRORS_SHOWN)
            fprintf(stderr, "%s:%lu: %s\n", b->input, b->in.lineno, err);
    }
    idset_free(&seen);
    if (rc == BX_OK && errors) {
        if (errors > ERRORS_SHOWN)
            fprintf(stderr, "... and %zu more errors\n", errors - ERRORS_SHOWN);
        fprintf(stderr, "maas batch: %zu invalid line%s in %s; nothing was sent\n", errors,
                errors == 1 ? "" : "s", b->input);
        rc = BX_USAGE;
    }
    return rc;
}

/* ---- the output file: resume ----------------------------------------------- */

/* Read the ids already answered. *good is the length up to the end of the
 * last complete line (a torn tail lies beyond it). */
static int load_output(struct batch *b, off_t *good, size_t *failures)
{
    struct reader r = { 0 };
    int rc = BX_OK, k;
    *good = 0;
    *failures = 0;
    if (!(r.f = fopen(b->output, "rb")))
        return errno == ENOENT ? BX_OK : (fprintf(stderr, "maas batch: cannot read %s: %s\n",
                                                 b->output, strerror(errno)), BX_CONFIG);
    while ((k = read_line(&r)) != LINE_EOF) {
        json_t *root, *id;
        struct item it;
        uint32_t *slot;
        int found;
        if (k == LINE_ERR) {
            fprintf(stderr, "maas batch: cannot read %s: %s\n", b->output, strerror(errno));
            rc = BX_CONFIG;
            break;
        }
        if (!r.terminated)
            break; /* torn by a kill: cut before this run writes */
        *good = r.off;
        if (k == LINE_LONG || blank(r.buf, r.len))
            goto bad;
        root = json_loadb(r.buf, r.len, 0, NULL);
        id = json_object_get(root, "id");
        memset(&it, 0, sizeof it);
        if (json_is_string(id)) {
            it.idtext = json_string_value(id);
            it.idlen = json_string_length(id);
        } else if (json_is_integer(id)) {
            snprintf(it.idbuf, sizeof it.idbuf, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
            it.idtext = it.idbuf;
            it.idlen = strlen(it.idbuf);
            it.id_is_int = 1;
        } else {
            json_decref(root);
            goto bad;
        }
        slot = idset_put(&b->answered, id_key(&it), json_object_get(root, "error") ? 2 : 1,
                         &found);
        if (slot && json_object_get(root, "error"))
            ++*failures;
        else if (slot && found)
            *slot = 1; /* a success anywhere answers the id */
        json_decref(root);
        if (!slot) {
            fputs("maas batch: out of memory\n", stderr);
            rc = BX_INTERNAL;
            break;
        }
        continue;
    bad:
        fprintf(stderr, "maas batch: %s:%lu: not a result line of maas batch; refusing to append "
                        "to it\n", b->output, r.lineno);
        rc = BX_USAGE;
        break;
    }
    fclose(r.f);
    free(r.buf);
    return rc;
}

/* Cut a torn last line; with --retry-failed, also drop the failure lines:
 * the kept lines are copied to a new file that replaces the old one by
 * rename(), so a kill at any moment leaves one file or the other. */
static int repair_output(struct batch *b, off_t good, size_t failures)
{
    struct stat st;
    if (stat(b->output, &st) != 0)
        return BX_OK;
    if (b->retry_failed && failures) {
        size_t n = strlen(b->output);
        char *tmp = malloc(n + 16);
        struct reader r = { 0 };
        int fd = -1, k, ok = 0;
        FILE *out = NULL;
        if (tmp) {
            memcpy(tmp, b->output, n);
            memcpy(tmp + n, ".tmp.XXXXXX", 12);
            fd = mkstemp(tmp);
        }
        if (fd >= 0 && (out = fdopen(fd, "wb")) && (r.f = fopen(b->output, "rb"))) {
            ok = 1;
            while (ok && (k = read_line(&r)) == LINE_OK && r.terminated) {
                json_t *root = json_loadb(r.buf, r.len, 0, NULL);
                int keep = root && !json_object_get(root, "error");
                json_decref(root);
                if (keep && (fwrite(r.buf, 1, r.len, out) != r.len || putc('\n', out) == EOF))
                    ok = 0;
            }
            ok = ok && !ferror(r.f) && fflush(out) == 0 && fsync(fileno(out)) == 0 &&
                 fchmod(fileno(out), st.st_mode & 07777) == 0 && rename(tmp, b->output) == 0;
        }
        if (!ok)
            fprintf(stderr, "maas batch: cannot rewrite %s without its failures: %s\n", b->output,
                    strerror(errno));
        if (r.f)
            fclose(r.f);
        if (out)
            fclose(out);
        else if (fd >= 0)
            close(fd);
        if (!ok && tmp && fd >= 0)
            unlink(tmp);
        free(tmp);
        free(r.buf);
        if (!ok)
            return BX_CONFIG;
        fprintf(stderr, "maas batch: %zu failure line%s removed from %s, to run again\n", failures,
                failures == 1 ? "" : "s", b->output);
        return BX_OK;
    }
    if (st.st_size > good) {
        if (truncate(b->output, good) != 0) {
            fprintf(stderr, "maas batch: cannot repair %s: %s\n", b->output, strerror(errno));
            return BX_CONFIG;
        }
        fprintf(stderr, "maas batch: %s: cut a torn last line (%lld bytes) left by an "
                        "interrupted run\n", b->output, (long long)(st.st_size - good));
    }
    return BX_OK;
}

/* ---- AIMD and the pause ------------------------------------------------------ */

/* The service pushed back: halve the concurrency (once a second at most),
 * and hold every start for the Retry-After when there is one. `final` says
 * the signal is a stream that failed with 429/503 after the library's own
 * retries, rather than one of those retries. */
static void pushback(struct batch *b, double retry_after, int final, double now)
{
    if (now - b->last_decrease >= DECREASE_GAP_MS || b->decreases == 0) {
        b->limit = floor(b->limit / 2);
        if (b->limit < 1)
            b->limit = 1;
        if ((unsigned)b->limit < b->limit_low)
            b->limit_low = (unsigned)b->limit;
        b->last_decrease = now;
        b->decreases++;
        b->inc_acc = 0;
    }
    if (final) {
        double wait;
        if (retry_after >= 0) {
            wait = retry_after * 1000.0;
        } else {
            wait = PAUSE_BASE_MS * ldexp(1.0, (int)(b->backoff_step < 10 ? b->backoff_step : 10));
            if (wait > PAUSE_BACKOFF_MAX_MS)
                wait = PAUSE_BACKOFF_MAX_MS;
            b->backoff_step++;
        }
        if (wait > PAUSE_MAX_MS)
            wait = PAUSE_MAX_MS;
        if (now + wait > b->pause_until) {
            b->paused_ms += now + wait - (b->pause_until > now ? b->pause_until : now);
            if (b->pause_until <= now)
                b->pauses++;
            b->pause_until = now + wait;
        }
    }
}

static void success(struct batch *b)
{
    b->backoff_step = 0;
    if (b->limit < b->concurrency) {
        b->inc_acc += 1.0;
        if (b->inc_acc >= b->limit) {
            b->limit += 1.0;
            b->inc_acc = 0;
        }
    }
}

/* ---- streams ------------------------------------------------------------------ */

static void job_free(struct job *j)
{
    if (!j)
        return;
    maas_stream_free(j->s);
    free(j->id);
    free(j->prompt);
    free(j->text.p);
    free(j);
}

static void unlink_running(struct batch *b, struct job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        b->running = j->next;
    if (j->next)
        j->next->prev = j->prev;
    j->prev = j->next = NULL;
    b->nrunning--;
}

static int on_token(const maas_token *t, void *payload)
{
    struct job *j = payload;
    if (j->t_first == 0)
        j->t_first = now_ms();
    if (t->special)
        return 0;
    if (t->text_len > ANSWER_MAX_BYTES - j->text.len) {
        j->too_long = 1;
        return 1; /* cancel, reported in on_done */
    }
    sb_add(&j->text, t->text, t->text_len);
    return j->text.oom;
}

static void on_done(maas_stream *s, maas_status st, void *payload)
{
    struct job *j = payload;
    struct batch *b = j->b;
    double now = now_ms();
    const maas_error *e = maas_stream_error(s);

    unlink_running(b, j);
    if (st == MAAS_OK) {
        line_ok(b, j, maas_stream_details(s), now);
        b->ok++;
        b->done++;
        b->tokens += maas_stream_details(s)->generated_tokens;
        success(b);
    } else if (st == MAAS_ERR_CANCELLED && (j->text.oom || j->too_long)) {
        maas_status why = j->too_long ? MAAS_ERR_PROTOCOL : MAAS_ERR_NO_MEMORY;
        line_failed(b, j, why, e,
                    j->too_long ? "the answer passed the 4 MiB that maas batch keeps per request"
                                : "out of memory keeping the answer");
        b->failed++;
        b->done++;
        b->by_status[why]++;
    } else if (st == MAAS_ERR_CANCELLED) {
        b->cancelled++; /* no line: the next run starts it again */
    } else if (st == MAAS_ERR_AUTH || st == MAAS_ERR_UNAUTHENTICATED ||
               st == MAAS_ERR_PERMISSION_DENIED) {
        /* Every other request would fail alike: stop, write nothing. */
        if (!b->fatal) {
            clear_progress(b);
            fprintf(stderr, "maas batch: %s: %s; stopping\n", maas_strerror(st),
                    e ? e->message : "");
        }
        b->dropped++;
        stop_fatal(b, BX_AUTH);
    } else {
        int back = st == MAAS_ERR_RATE_LIMITED || st == MAAS_ERR_UNAVAILABLE;
        if (back)
            pushback(b, e ? e->retry_after : -1, 1, now);
        if (back && j->rounds < MAX_ROUNDS && !b->stopping) {
            /* Started again after the pause, before any new line of the input. */
            j->attempts_before += e ? e->attempts : 0;
            maas_stream_free(s);
            j->s = NULL;
            j->text.len = 0;
            j->t_first = 0;
            j->next = NULL;
            if (b->queue_tail)
                b->queue_tail->next = j;
            else
                b->queue = j;
            b->queue_tail = j;
            return;
        }
        if (back && j->rounds < MAX_ROUNDS) {
            b->dropped++; /* stopping: left for the next run */
        } else {
            line_failed(b, j, st, e, NULL);
            b->failed++;
            b->done++;
            b->by_status[st <= MAAS_ERR_INTERNAL ? st : MAAS_ERR_INTERNAL]++;
        }
    }
    job_free(j);
}

/* The next request to start: one pushed back, else the next line of the
 * input in this shard not answered yet. NULL when there is none. */
static struct job *next_job(struct batch *b)
{
    struct job *j;
    char err[512];
    struct item it;
    int r;
    if (b->queue) {
        j = b->queue;
        b->queue = j->next;
        if (!b->queue)
            b->queue_tail = NULL;
        j->next = NULL;
        return j;
    }
    while (!b->input_over) {
        r = read_line(&b->in);
        if (r == LINE_EOF) {
            b->input_over = 1;
            break;
        }
        if (r == LINE_OK && blank(b->in.buf, b->in.len))
            continue;
        if (r != LINE_OK || parse_item(b, b->in.buf, b->in.len, &it, err, sizeof err) != 0) {
            clear_progress(b);
            fprintf(stderr, "maas batch: %s:%lu: the input changed since it was checked\n",
                    b->input, b->in.lineno);
            b->input_over = 1;
            stop_fatal(b, BX_USAGE);
            break;
        }
        if (!in_shard(b, &it) || answered(b, &it)) {
            json_decref(it.root);
            continue;
        }
        j = calloc(1, sizeof *j);
        if (j) {
            struct sbuf id = { 0 };
            if (it.id_is_int)
                sb_add(&id, it.idtext, it.idlen);
            else
                sb_json(&id, it.idtext, it.idlen);
            j->b = b;
            j->id = id.p;
            j->prompt = strdup(it.prompt);
            j->model = it.model;
            j->max_tokens = it.max_tokens;
            j->temperature = it.temperature;
        }
        json_decref(it.root);
        if (!j || !j->id || !j->prompt) {
            job_free(j);
            clear_progress(b);
            fputs("maas batch: out of memory\n", stderr);
            stop_fatal(b, BX_INTERNAL);
            return NULL;
        }
        return j;
    }
    return NULL;
}

static void start(struct batch *b, struct job *j)
{
    maas_request req = MAAS_REQUEST_INIT;
    maas_status st;
    req.model_info = j->model;
    req.prompt = j->prompt;
    req.max_new_tokens = j->max_tokens;
    req.temperature = j->temperature;
    j->rounds++;
    j->t_start = now_ms();
    st = maas_multi_add(&j->s, b->m, &req, on_token, NULL, on_done, j);
    if (st == MAAS_OK) {
        j->next = b->running;
        j->prev = NULL;
        if (b->running)
            b->running->prev = j;
        b->running = j;
        b->nrunning++;
        return;
    }
    j->s = NULL;
    if (st == MAAS_ERR_INVALID_ARGUMENT || st == MAAS_ERR_INVALID_REQUEST ||
        st == MAAS_ERR_UNKNOWN_MODEL) {
        line_failed(b, j, st, maas_last_error(), NULL);
        b->failed++;
        b->done++;
        b->by_status[st]++;
    } else {
        /* No token, no memory: nothing else could start either. */
        clear_progress(b);
        fail(st, "cannot start a request");
        b->dropped++;
        stop_fatal(b, exit_for(st));
    }
    job_free(j);
}

/* ---- progress and summary ---------------------------------------------------- */

static void fmt_dur(char *out, size_t n, double s)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(out, n, "%ld:%02ld", t / 60, t % 60);
}

static void show_progress(struct batch *b, double now)
{
    double el = (now - b->t0) / 1000.0;
    char e[32], eta[32] = "--:--";
    fmt_dur(e, sizeof e, el);
    if (b->done > 0 && b->total > b->done && el > 0)
        fmt_dur(eta, sizeof eta, (double)(b->total - b->done) * el / (double)b->done);
    else if (b->total <= b->done)
        snprintf(eta, sizeof eta, "0:00");
    fprintf(stderr, "\r\033[K%zu/%zu done, %zu ok, %zu failed | %.0f tokens/s | %zu running%s | "
                    "elapsed %s | ETA %s",
            b->done, b->total, b->ok, b->failed, el > 0 ? (double)b->tokens / el : 0.0,
            b->nrunning, b->pause_until > now ? " (paused)" : "", e, eta);
    fflush(stderr);
    b->progress_shown = 1;
    b->last_progress = now;
}

static void summary(struct batch *b, double now)
{
    double wall = (now - b->t0) / 1000.0;
    size_t k, shown = 0;
    clear_progress(b);
    fprintf(stderr, "maas batch: %zu of %zu requests done in %.1f s (%.1f requests/s): %zu ok, "
                    "%zu failed; %llu tokens (%.0f tokens/s)\n",
            b->done, b->total, wall, wall > 0 ? (double)b->done / wall : 0.0, b->ok, b->failed,
            (unsigned long long)b->tokens, wall > 0 ? (double)b->tokens / wall : 0.0);
    for (k = 0; k <= MAAS_ERR_INTERNAL; k++) {
        if (!b->by_status[k])
            continue;
        fprintf(stderr, "%s%s %zu", shown++ ? ", " : "  failed: ", maas_status_name((maas_status)k),
                b->by_status[k]);
    }
    if (shown)
        fputc('\n', stderr);
    if (b->skipped_answered || b->other_shards)
        fprintf(stderr, "  skipped: %zu already answered in the output (%zu of them failed: "
                        "--retry-failed runs them again), %zu in other shards\n",
                b->skipped_answered, b->skipped_failed, b->other_shards);
    fprintf(stderr, "  concurrency: %u at most, %u lowest, %u at the end; %u pause%s for the "
                    "service (%.1f s)\n",
            b->concurrency, b->limit_low, (unsigned)b->limit, b->pauses,
            b->pauses == 1 ? "" : "s", b->paused_ms / 1000.0);
    if (b->total > b->done)
        fprintf(stderr, "  not done: %zu (run the same command again to finish them)\n",
                b->total - b->done);
}

/* ---- the command -------------------------------------------------------------- */

void maas_cli_batch_usage(FILE *f)
{
    fputs("       maas batch [--concurrency N] [--model NAME] [--max-tokens N]\n"
          "                  [--temperature T] [--output FILE] [--shard I/N]\n"
          "                  [--retry-failed] [--retries N] [--no-progress] INPUT|-\n",
          f);
}

static int parse_uint(const char *opt, const char *v, unsigned long lo, unsigned long hi,
                      unsigned long *out)
{
    char *end;
    unsigned long n;
    errno = 0;
    n = strtoul(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || n < lo || n > hi) {
        fprintf(stderr, "maas batch: usage: %s needs an integer from %lu to %lu, got '%s'\n", opt,
                lo, hi, v);
        return -1;
    }
    *out = n;
    return 0;
}

static int parse_args(struct batch *b, int argc, char **argv)
{
    int i;
    for (i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long n;
        int takes = !strcmp(a, "--concurrency") || !strcmp(a, "--model") ||
                    !strcmp(a, "--max-tokens") || !strcmp(a, "--temperature") ||
                    !strcmp(a, "--output") || !strcmp(a, "--shard") || !strcmp(a, "--retries");
        if (takes && !v) {
            fprintf(stderr, "maas batch: usage: %s needs a value\n", a);
            return -1;
        }
        if (!strcmp(a, "--concurrency")) {
            if (parse_uint(a, v, 1, CONCURRENCY_MAX, &n))
                return -1;
            b->concurrency = (unsigned)n;
        } else if (!strcmp(a, "--model")) {
            b->model_opt = v;
        } else if (!strcmp(a, "--max-tokens")) {
            if (parse_uint(a, v, 1, 2047, &n))
                return -1;
            b->max_tokens = (int)n;
        } else if (!strcmp(a, "--temperature")) {
            char *end;
            double t;
            errno = 0;
            t = strtod(v, &end);
            if (errno || end == v || *end || !(t >= 0 && t < 1)) {
                fprintf(stderr, "maas batch: usage: --temperature needs 0 <= T < 1, got '%s'\n", v);
                return -1;
            }
            b->temperature = t;
        } else if (!strcmp(a, "--output")) {
            b->output = strcmp(v, "-") ? v : NULL; /* "-": standard output, no resume */
        } else if (!strcmp(a, "--shard")) {
            unsigned si, sn;
            char c;
            if (sscanf(v, "%u/%u%c", &si, &sn, &c) != 2 || sn < 1 || si >= sn || v[0] == '-') {
                fprintf(stderr, "maas batch: usage: --shard needs I/N with 0 <= I < N, got '%s'\n",
                        v);
                return -1;
            }
            b->shard_i = si;
            b->shard_n = sn;
        } else if (!strcmp(a, "--retries")) {
            if (parse_uint(a, v, 0, 100, &n))
                return -1;
            b->retries = n ? (int)n : MAAS_RETRIES_OFF;
        } else if (!strcmp(a, "--retry-failed")) {
            b->retry_failed = 1;
            continue;
        } else if (!strcmp(a, "--no-progress")) {
            b->progress = 0;
            continue;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "maas batch: usage: unknown option '%s'\n", a);
            return -1;
        } else if (b->input) {
            fputs("maas batch: usage: one INPUT only\n", stderr);
            return -1;
        } else {
            b->input = a;
            continue;
        }
        i++;
    }
    if (!b->input) {
        fputs("maas batch: usage: batch needs an INPUT file (or - for stdin)\n", stderr);
        return -1;
    }
    return 0;
}

/* Standard input is read twice (checked, then run): spool it to a file. */
static FILE *spool_stdin(void)
{
    char buf[65536];
    size_t n;
    FILE *t = tmpfile();
    if (!t)
        return NULL;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0)
        if (fwrite(buf, 1, n, t) != n) {
            fclose(t);
            return NULL;
        }
    if (ferror(stdin) || fflush(t) != 0) {
        fclose(t);
        return NULL;
    }
    rewind(t);
    return t;
}

static int setup(struct batch *b)
{
    maas_client_options o;
    maas_status st = maas_client_options_from_env(&o, MAAS_CLIENT_OPTIONS_VERSION);
    if (st != MAAS_OK)
        return fail(st, "configuration");
    o.max_retries = b->retries;
    o.user_agent_suffix = "maas-cli-batch";
    if ((st = maas_client_new(&b->c, &o)) != MAAS_OK)
        return fail(st, "configuration");
    if ((st = maas_models_list(&b->list, b->c)) != MAAS_OK)
        return fail(st, "cannot read the model catalogue");
    if (b->model_opt) {
        b->default_model = maas_model_list_find(b->list, b->model_opt);
        if (!b->default_model) {
            fprintf(stderr, "maas batch: --model: unknown model '%s' (maas models lists them); "
                            "nothing was sent\n", b->model_opt);
            return BX_USAGE;
        }
    } else if (!(b->default_model = maas_model_list_get(b->list, 0))) {
        fputs("maas batch: the service lists no models\n", stderr);
        return BX_REQUEST;
    }
    return BX_OK;
}

static void raise_fd_limit(unsigned concurrency)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)concurrency * 2 + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int run(struct batch *b)
{
    maas_status st;
    int cancel_sent = 0;
    if ((st = maas_client_authenticate(b->c)) != MAAS_OK)
        return fail(st, "authentication");
    if ((st = maas_multi_new(&b->m, b->c)) != MAAS_OK)
        return fail(st, "cannot create the multi");
    pthread_mutex_lock(&sig_lock);
    sig_multi = b->m;
    pthread_mutex_unlock(&sig_lock);

    b->limit = b->concurrency;
    b->limit_low = b->concurrency;
    b->seen_retries = maas_client_counter(b->c, MAAS_COUNTER_RETRIES);
    b->t0 = b->last_sync = now_ms();
    for (;;) {
        double now = now_ms(), wait;
        uint64_t retries;
        if (sig_count >= 1 && !b->stopping) {
            b->stopping = 1; /* first signal: no new starts, running ones finish */
            clear_progress(b);
            fprintf(stderr, "maas batch: %s: finishing the %zu running requests (SIGINT again "
                            "to cancel them)\n", sig_last == SIGTERM ? "terminated" : "interrupted",
                    b->nrunning);
        }
        if (sig_count >= 2 && !cancel_sent) {
            struct job *j;
            for (j = b->running; j; j = j->next)
                maas_stream_cancel(j->s);
            cancel_sent = 1;
        }
        retries = maas_client_counter(b->c, MAAS_COUNTER_RETRIES);
        if (retries > b->seen_retries) {
            /* The library retried a stream (429, 503, 5xx, a dropped connection):
             * slow down before streams start failing for good. */
            pushback(b, -1, 0, now);
            b->seen_retries = retries;
        }
        while (!b->stopping && b->nrunning < (size_t)b->limit && now >= b->pause_until) {
            struct job *j = next_job(b);
            if (!j)
                break;
            start(b, j);
        }
        if (b->nrunning == 0 && (b->stopping || (b->input_over && !b->queue)))
            break;
        wait = b->progress ? PROGRESS_EVERY_MS : 1000.0;
        if (b->pause_until > now && b->pause_until - now < wait)
            wait = b->pause_until - now + 1;
        st = maas_multi_poll(b->m, (int)wait, NULL);
        if (st != MAAS_OK) {
            clear_progress(b);
            fail(st, "the multi failed");
            b->fatal = BX_INTERNAL;
            break;
        }
        now = now_ms();
        if (now - b->last_sync >= SYNC_EVERY_MS)
            sync_output(b, now);
        if (b->progress && now - b->last_progress >= PROGRESS_EVERY_MS)
            show_progress(b, now);
    }
    pthread_mutex_lock(&sig_lock);
    sig_multi = NULL;
    pthread_mutex_unlock(&sig_lock);
    maas_multi_free(b->m);
    b->m = NULL;
    while (b->running) { /* only after a failed poll: the multi stopped them */
        struct job *j = b->running;
        unlink_running(b, j);
        job_free(j);
    }
    while (b->queue) {
        struct job *j = b->queue;
        b->queue = j->next;
        job_free(j);
    }
    b->queue_tail = NULL;
    sync_output(b, now_ms());
    summary(b, now_ms());
    if (b->fatal)
        return b->fatal;
    if (sig_count)
        return sig_last == SIGTERM ? BX_TERMINATED : BX_INTERRUPTED;
    /* 0 only when every id of the shard has a success line in the output. */
    return b->failed || b->skipped_failed ? BX_FAILED : BX_OK;
}

int maas_cli_batch(int argc, char **argv)
{
    static sigset_t set;
    struct batch b;
    pthread_t tid;
    off_t good = 0;
    size_t failures = 0;
    int rc;

    memset(&b, 0, sizeof b);
    b.concurrency = 16;
    b.temperature = 0.7;
    b.progress = 1;
    b.out_fd = -1;
    if (parse_args(&b, argc, argv) != 0)
        return BX_USAGE;
    b.progress = b.progress && isatty(STDERR_FILENO);

    /* Signals go to one thread, which only counts them and wakes the multi;
     * the loop acts on the count. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (pthread_create(&tid, NULL, signal_thread, &set) == 0)
        pthread_detach(tid);
    raise_fd_limit(b.concurrency);

    if (b.output && (rc = load_output(&b, &good, &failures)) != BX_OK)
        goto out;
    if ((rc = setup(&b)) != BX_OK)
        goto out;
    if (!strcmp(b.input, "-")) {
        b.input = "(stdin)";
        b.in.f = spool_stdin();
    } else {
        b.in.f = fopen(b.input, "rb");
    }
    if (!b.in.f) {
        fprintf(stderr, "maas batch: cannot read %s: %s\n", b.input, strerror(errno));
        rc = BX_CONFIG;
        goto out;
    }
    if ((rc = validate(&b)) != BX_OK)
        goto out;
    if (b.output && (rc = repair_output(&b, good, failures)) != BX_OK)
        goto out;
    if (b.output) {
        b.out_fd = open(b.output, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
        if (b.out_fd < 0) {
            fprintf(stderr, "maas batch: cannot write %s: %s\n", b.output, strerror(errno));
            rc = BX_CONFIG;
            goto out;
        }
    } else {
        b.out_fd = STDOUT_FILENO;
    }
    {
        struct stat st;
        b.out_syncable = fstat(b.out_fd, &st) == 0 && S_ISREG(st.st_mode);
    }
    rewind(b.in.f);
    b.in.lineno = 0;
    b.in.off = 0;
    rc = run(&b);
out:
    if (b.in.f)
        fclose(b.in.f);
    if (b.out_fd >= 0 && b.out_fd != STDOUT_FILENO && close(b.out_fd) != 0 && rc == BX_OK) {
        fprintf(stderr, "maas batch: output error: %s\n", strerror(errno));
        rc = BX_INTERNAL;
    }
    free(b.in.buf);
    free(b.line.p);
    idset_free(&b.answered);
    maas_model_list_free(b.list);
    maas_client_free(b.c);
    return rc;
}
