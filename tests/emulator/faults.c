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
    f->stall_after = f->drip_ms = f->delay_ms = f->first_byte_delay_ms = f->tokens = -1;
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
#undef TAKE
    if (src->status)
        dst->status = src->status;
    if (src->retry_after[0])
        memcpy(dst->retry_after, src->retry_after, sizeof dst->retry_after);
}

enum fkind { F_FLAG, F_COUNT, F_MS, F_TOKENS, F_STATUS, F_TEXT };

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
    {"tokens", F_TOKENS, OFF(tokens)},
    {"status", F_STATUS, OFF(status)},
    {"retry-after", F_TEXT, OFF(retry_after)},
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
        ok = vlen < sizeof f->retry_after;
        for (size_t i = 0; ok && i < vlen; i++)
            ok = (unsigned char)val[i] >= 0x20 && (unsigned char)val[i] < 0x7f;
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
