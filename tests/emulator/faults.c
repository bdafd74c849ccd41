/*
 * maas-emulator: fault specs ("NAME" or "NAME=VALUE"), the [[fault:...]]
 * prompt directives and the per-path queue filled by POST /emulator/faults.
 *
 * SPDX-License-Identifier: MIT
 */
#include "emulator.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void faults_init(struct faults *f)
{
    memset(f, 0, sizeof *f);
    f->error_after = f->drop_after = f->truncate_after = f->malformed_after = -1;
    f->stall_after = f->drip_ms = f->delay_ms = f->first_byte_delay_ms = f->end_delay_ms = f->tokens = -1;
    f->long_line = f->deep_nesting = -1;
    f->keepalive_blank_ms = -1;
}

bool faults_any_body(const struct faults *f)
{
    return f->split || f->drip_ms >= 0 || f->drop_after >= 0 || f->stall_after >= 0;
}

void faults_merge(struct faults *dst, const struct faults *src)
{
    dst->split |= src->split;
    dst->coalesce |= src->coalesce;
    dst->crlf |= src->crlf;
    dst->blank_lines |= src->blank_lines;
    dst->expire_token |= src->expire_token;
    dst->endless_line |= src->endless_line;
    dst->invalid_utf8 |= src->invalid_utf8;
    dst->nul_byte |= src->nul_byte;
    dst->no_answer |= src->no_answer;
    dst->silent_after_headers |= src->silent_after_headers;
    dst->wrong_type |= src->wrong_type;
#define TAKE(field)                                                                         \
    do {                                                                                    \
        if (src->field >= 0)                                                                \
            dst->field = src->field;                                                        \
    } while (0)
    TAKE(error_after);
    TAKE(drop_after);
    TAKE(truncate_after);
    TAKE(malformed_after);
    TAKE(stall_after);
    TAKE(drip_ms);
    TAKE(delay_ms);
    TAKE(first_byte_delay_ms);
    TAKE(tokens);
    TAKE(long_line);
    TAKE(deep_nesting);
    TAKE(keepalive_blank_ms);
#undef TAKE
    if (src->status)
        dst->status = src->status;
#define TAKE_TEXT(field)                                                                    \
    do {                                                                                    \
        if (src->field[0])                                                                  \
            memcpy(dst->field, src->field, sizeof dst->field);                              \
    } while (0)
    TAKE_TEXT(retry_after);
    TAKE_TEXT(rate_limit);
    TAKE_TEXT(bad_id);
    TAKE_TEXT(bad_logprob);
    TAKE_TEXT(bad_generated_tokens);
    TAKE_TEXT(bad_seed);
#undef TAKE_TEXT
}

/* wrong-type=FIELD names and their bits. */
static const struct {
    const char *name;
    unsigned bit;
} wrong_types[] = {
    {"result", WT_RESULT},
    {"response", WT_RESPONSE},
    {"token", WT_TOKEN},
    {"id", WT_ID},
    {"text", WT_TEXT},
    {"logprob", WT_LOGPROB},
    {"special", WT_SPECIAL},
    {"details", WT_DETAILS},
    {"finish_reason", WT_FINISH_REASON},
    {"generated_tokens", WT_GENERATED_TOKENS},
    {"seed", WT_SEED},
    {"generated_text", WT_GENERATED_TEXT},
    {"requestID", WT_REQUEST_ID},
    {"error", WT_ERROR},
    {"code", WT_CODE},
    {"message", WT_MESSAGE},
};

static bool is_printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

static bool name_is(const char *s, size_t n, const char *name)
{
    return strlen(name) == n && memcmp(s, name, n) == 0;
}

/* bad-value=FIELD:VALUE: the field's slot, or NULL for an unknown field. */
static char *bad_value_slot(struct faults *f, const char *name, size_t n)
{
    if (name_is(name, n, "id"))
        return f->bad_id;
    if (name_is(name, n, "logprob"))
        return f->bad_logprob;
    if (name_is(name, n, "generated_tokens"))
        return f->bad_generated_tokens;
    if (name_is(name, n, "seed"))
        return f->bad_seed;
    return NULL;
}

enum fkind { F_FLAG, F_COUNT, F_MS, F_TOKENS, F_STATUS, F_TEXT, F_SIZE, F_WRONG_TYPE, F_BAD_VALUE };

struct fdef {
    const char *name;
    enum fkind kind;
    size_t off; /* offset of the bool / long / int / char[] field */
};

#define OFF(field) offsetof(struct faults, field)
static const struct fdef defs[] = {
    {"split", F_FLAG, OFF(split)},
    {"coalesce", F_FLAG, OFF(coalesce)},
    {"crlf", F_FLAG, OFF(crlf)},
    {"blank-lines", F_FLAG, OFF(blank_lines)},
    {"expire-token", F_FLAG, OFF(expire_token)},
    {"error-after", F_COUNT, OFF(error_after)},
    {"drop-after", F_COUNT, OFF(drop_after)},
    {"truncate-after", F_COUNT, OFF(truncate_after)},
    {"malformed-after", F_COUNT, OFF(malformed_after)},
    {"stall-after", F_COUNT, OFF(stall_after)},
    {"drip", F_MS, OFF(drip_ms)},
    {"delay", F_MS, OFF(delay_ms)},
    {"first-byte-delay", F_MS, OFF(first_byte_delay_ms)},
    {"end-delay", F_MS, OFF(end_delay_ms)},
    {"tokens", F_TOKENS, OFF(tokens)},
    {"status", F_STATUS, OFF(status)},
    {"retry-after", F_TEXT, OFF(retry_after)},
    {"rate-limit", F_TEXT, OFF(rate_limit)},
    {"long-line", F_SIZE, OFF(long_line)},
    {"endless-line", F_FLAG, OFF(endless_line)},
    {"deep-nesting", F_SIZE, OFF(deep_nesting)},
    {"invalid-utf8", F_FLAG, OFF(invalid_utf8)},
    {"nul-byte", F_FLAG, OFF(nul_byte)},
    {"no-answer", F_FLAG, OFF(no_answer)},
    {"silent-after-headers", F_FLAG, OFF(silent_after_headers)},
    {"keepalive-blank", F_MS, OFF(keepalive_blank_ms)},
    {"wrong-type", F_WRONG_TYPE, OFF(wrong_type)},
    {"bad-value", F_BAD_VALUE, 0},
};
#undef OFF

static bool status_allowed(long code)
{
    static const int ok[] = {400, 401, 403, 404, 429, 500, 502, 503, 504};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (ok[i] == code)
            return true;
    return false;
}

bool faults_parse_spec(struct faults *f, const char *spec, size_t n, char *err, size_t errlen)
{
    const char *eq = memchr(spec, '=', n);
    size_t nlen = eq ? (size_t)(eq - spec) : n;
    const char *val = eq ? eq + 1 : NULL;
    size_t vlen = eq ? n - nlen - 1 : 0;
    int shown = nlen > 64 ? 64 : (int)nlen;

    const struct fdef *d = NULL;
    for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++)
        if (strlen(defs[i].name) == nlen && memcmp(defs[i].name, spec, nlen) == 0)
            d = &defs[i];
    if (!d) {
        snprintf(err, errlen, "unknown emulator fault: %.*s", shown, spec);
        return false;
    }
    char *field = (char *)f + d->off;
    if (d->kind == F_FLAG) {
        if (val) {
            snprintf(err, errlen, "emulator fault %s takes no value", d->name);
            return false;
        }
        *(bool *)field = true;
        return true;
    }
    if (!val || vlen == 0) {
        snprintf(err, errlen, "emulator fault %s needs a value (%s=VALUE)", d->name, d->name);
        return false;
    }
    long v = 0;
    bool ok = true;
    unsigned bit = 0;
    char *slot = NULL;
    const char *colon = NULL;
    switch (d->kind) {
    case F_COUNT:
        ok = parse_long(val, vlen, 0, 1000000000L, &v);
        break;
    case F_MS:
        ok = parse_long(val, vlen, 0, EMU_MAX_MS, &v);
        break;
    case F_TOKENS:
        ok = parse_long(val, vlen, 1, EMU_MAX_TOKENS_FAULT, &v);
        break;
    case F_STATUS:
        ok = parse_long(val, vlen, 100, 999, &v) && status_allowed(v);
        break;
    case F_TEXT:
        ok = vlen < sizeof f->retry_after && is_printable(val, vlen);
        break;
    case F_SIZE:
        ok = parse_long(val, vlen, 1, EMU_MAX_LONG_LINE, &v);
        break;
    case F_WRONG_TYPE:
        ok = false;
        for (size_t i = 0; !ok && i < sizeof wrong_types / sizeof wrong_types[0]; i++)
            if (name_is(val, vlen, wrong_types[i].name)) {
                bit = wrong_types[i].bit;
                ok = true;
            }
        break;
    case F_BAD_VALUE:
        /* FIELD:VALUE, VALUE any printable ASCII (not checked as JSON: a broken
         * literal such as NaN is a legitimate hostile input). */
        colon = memchr(val, ':', vlen);
        slot = colon ? bad_value_slot(f, val, (size_t)(colon - val)) : NULL;
        ok = slot && vlen - (size_t)(colon - val) - 1 > 0 &&
             vlen - (size_t)(colon - val) - 1 < EMU_BAD_VALUE_MAX && is_printable(val, vlen);
        break;
    case F_FLAG:
        break;
    }
    if (!ok) {
        int vs = vlen > 64 ? 64 : (int)vlen;
        snprintf(err, errlen, "invalid value for emulator fault %s: %.*s", d->name, vs, val);
        return false;
    }
    switch (d->kind) {
    case F_STATUS:
        *(int *)field = (int)v;
        break;
    case F_TEXT:
        memcpy(field, val, vlen);
        field[vlen] = '\0';
        break;
    case F_WRONG_TYPE:
        *(unsigned *)field |= bit;
        break;
    case F_BAD_VALUE: {
        size_t n1 = vlen - (size_t)(colon - val) - 1;
        memcpy(slot, colon + 1, n1);
        slot[n1] = '\0';
        break;
    }
    default:
        *(long *)field = v;
        break;
    }
    return true;
}

bool faults_parse_prompt(struct faults *f, const char *text, size_t n, char *err, size_t errlen)
{
    static const char open[] = "[[fault:";
    const size_t olen = sizeof open - 1;
    size_t i = 0;
    while (i + olen <= n) {
        const char *p = memmem(text + i, n - i, open, olen);
        if (!p)
            break;
        size_t start = (size_t)(p - text) + olen;
        const char *q = memmem(text + start, n - start, "]]", 2);
        if (!q)
            break;
        size_t end = (size_t)(q - text);
        if (!faults_parse_spec(f, text + start, end - start, err, errlen))
            return false;
        i = end + 2;
    }
    return true;
}

/* ---- queue ---- */

struct qentry {
    enum route path;
    struct faults f;
    long remaining;
    struct qentry *next;
};

static pthread_mutex_t qmu = PTHREAD_MUTEX_INITIALIZER;
static struct qentry *qhead;

bool fault_queue_push(enum route path, const struct faults *f, long count)
{
    struct qentry *e = calloc(1, sizeof *e);
    if (!e)
        return false;
    e->path = path;
    e->f = *f;
    e->remaining = count;
    pthread_mutex_lock(&qmu);
    struct qentry **pp = &qhead;
    while (*pp)
        pp = &(*pp)->next;
    *pp = e;
    pthread_mutex_unlock(&qmu);
    return true;
}

void fault_queue_take(enum route path, struct faults *f)
{
    pthread_mutex_lock(&qmu);
    struct qentry **pp = &qhead;
    while (*pp) {
        struct qentry *e = *pp;
        if (e->path == path) {
            faults_merge(f, &e->f);
            if (--e->remaining <= 0) {
                *pp = e->next;
                free(e);
                continue;
            }
        }
        pp = &e->next;
    }
    pthread_mutex_unlock(&qmu);
}

void fault_queue_clear(void)
{
    pthread_mutex_lock(&qmu);
    while (qhead) {
        struct qentry *e = qhead;
        qhead = e->next;
        free(e);
    }
    pthread_mutex_unlock(&qmu);
}

/* ---- random faults (--random-fault PERCENT:SPEC[+SPEC...]) ------------------ */

/* Each generation draws once per entry: a fault that hits some attempts and
 * not others, as a busy service does, for clients that retry and resume. */
#define RANDOM_FAULTS_MAX 16
static struct {
    double percent;
    struct faults f;
} g_random[RANDOM_FAULTS_MAX];
static int g_nrandom;
static uint64_t g_rstate = 0x9e3779b97f4a7c15ull;
static pthread_mutex_t rmu = PTHREAD_MUTEX_INITIALIZER;

void faults_random_seed(uint64_t seed)
{
    g_rstate = seed ? seed : 0x9e3779b97f4a7c15ull;
}

bool faults_random_add(const char *arg, char *err, size_t errlen)
{
    char *end;
    double pct = strtod(arg, &end);
    if (end == arg || *end != ':' || !(pct >= 0 && pct <= 100)) {
        snprintf(err, errlen, "want PERCENT:SPEC with 0 <= PERCENT <= 100, got \"%s\"", arg);
        return false;
    }
    if (g_nrandom == RANDOM_FAULTS_MAX) {
        snprintf(err, errlen, "at most %d random faults", RANDOM_FAULTS_MAX);
        return false;
    }
    faults_init(&g_random[g_nrandom].f);
    for (const char *p = end + 1;;) {
        size_t n = strcspn(p, "+");
        if (!faults_parse_spec(&g_random[g_nrandom].f, p, n, err, errlen))
            return false;
        if (!p[n])
            break;
        p += n + 1;
    }
    g_random[g_nrandom++].percent = pct;
    return true;
}

void faults_random_take(struct faults *f)
{
    for (int i = 0; i < g_nrandom; i++) {
        uint64_t x;
        pthread_mutex_lock(&rmu);
        g_rstate ^= g_rstate << 13;
        g_rstate ^= g_rstate >> 7;
        g_rstate ^= g_rstate << 17;
        x = g_rstate;
        pthread_mutex_unlock(&rmu);
        if ((double)(x >> 11) / (double)(1ull << 53) * 100.0 < g_random[i].percent)
            faults_merge(f, &g_random[i].f);
    }
}
