/*
 * maas-emulator: issued access tokens and the HTTP authentication headers.
 *
 * Tokens look like Cognito's (three base64url parts, an `exp` claim) but
 * are opaque to the emulator: it only remembers each one with its expiry,
 * in a hash table guarded by a mutex, pruned of expired entries.
 *
 * SPDX-License-Identifier: MIT
 */
#include "emulator.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define NBUCKETS 4096

struct tok {
    char *value;
    uint64_t expires; /* now_ms() clock */
    struct tok *next;
};

static pthread_mutex_t tmu = PTHREAD_MUTEX_INITIALIZER;
static struct tok *buckets[NBUCKETS];
static uint64_t last_prune;

static size_t bucket_of(const char *s, size_t n)
{
    return (size_t)(fnv1a64(FNV64_OFFSET, s, n) % NBUCKETS);
}

void tokens_init(void)
{
    last_prune = now_ms();
}

void tokens_free(void)
{
    pthread_mutex_lock(&tmu);
    for (size_t i = 0; i < NBUCKETS; i++) {
        while (buckets[i]) {
            struct tok *t = buckets[i];
            buckets[i] = t->next;
            free(t->value);
            free(t);
        }
    }
    pthread_mutex_unlock(&tmu);
}

/* Caller holds tmu. */
static void prune_locked(uint64_t now)
{
    for (size_t i = 0; i < NBUCKETS; i++) {
        struct tok **pp = &buckets[i];
        while (*pp) {
            struct tok *t = *pp;
            if (t->expires <= now) {
                *pp = t->next;
                free(t->value);
                free(t);
            } else
                pp = &t->next;
        }
    }
    last_prune = now;
}

static void b64url(struct sbuf *b, const unsigned char *p, size_t n)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        char c[4] = {al[v >> 18], al[(v >> 12) & 63], al[(v >> 6) & 63], al[v & 63]};
        sbuf_add(b, c, 4);
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        char c[2] = {al[v >> 18], al[(v >> 12) & 63]};
        sbuf_add(b, c, 2);
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        char c[3] = {al[v >> 18], al[(v >> 12) & 63], al[(v >> 6) & 63]};
        sbuf_add(b, c, 3);
    }
}

char *token_issue(long lifetime_s)
{
    static const char header[] = "{\"alg\":\"RS256\",\"kid\":\"maas-emulator\",\"typ\":\"JWT\"}";
    char jti[37];
    uuid4(jti);
    long long iat = (long long)time(NULL);
    struct sbuf claims = {0};
    sbuf_adds(&claims, "{\"sub\":\"");
    sbuf_add_json(&claims, g_cfg.client_id, strlen(g_cfg.client_id));
    sbuf_addf(&claims,
              "\",\"token_use\":\"access\",\"scope\":\"maas/generate\",\"iss\":\"maas-emulator\","
              "\"iat\":%lld,\"exp\":%lld,\"jti\":\"%s\",\"client_id\":\"",
              iat, iat + lifetime_s, jti);
    sbuf_add_json(&claims, g_cfg.client_id, strlen(g_cfg.client_id));
    sbuf_adds(&claims, "\"}");
    unsigned char sig[64];
    random_bytes(sig, sizeof sig);

    struct sbuf t = {0};
    b64url(&t, (const unsigned char *)header, sizeof header - 1);
    sbuf_add(&t, ".", 1);
    if (claims.p)
        b64url(&t, (const unsigned char *)claims.p, claims.len);
    sbuf_add(&t, ".", 1);
    b64url(&t, sig, sizeof sig);
    bool bad = claims.oom;
    sbuf_free(&claims);
    size_t len = t.len;
    char *value = sbuf_take(&t);
    struct tok *e = calloc(1, sizeof *e);
    if (!value || !e || bad) {
        free(value);
        free(e);
        return NULL;
    }
    char *copy = strdup(value);
    if (!copy) {
        free(value);
        free(e);
        return NULL;
    }
    uint64_t now = now_ms();
    e->value = copy;
    e->expires = lifetime_s > 0 ? now + (uint64_t)lifetime_s * 1000u : 0;
    size_t bk = bucket_of(copy, len);
    pthread_mutex_lock(&tmu);
    if (now - last_prune >= 1000)
        prune_locked(now);
    e->next = buckets[bk];
    buckets[bk] = e;
    pthread_mutex_unlock(&tmu);
    return value;
}

enum token_state token_check(const char *authorization, bool expire)
{
    if (!authorization)
        return TOKEN_MISSING;
    const char *p = authorization;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
        return TOKEN_MALFORMED;
    p += 6;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0)
        return TOKEN_MALFORMED;

    enum token_state st = TOKEN_UNKNOWN;
    uint64_t now = now_ms();
    pthread_mutex_lock(&tmu);
    for (struct tok *t = buckets[bucket_of(p, n)]; t; t = t->next) {
        if (strlen(t->value) == n && memcmp(t->value, p, n) == 0) {
            if (t->expires <= now)
                st = TOKEN_EXPIRED;
            else if (expire) {
                t->expires = 0;
                st = TOKEN_EXPIRED;
            } else
                st = TOKEN_VALID;
            break;
        }
    }
    pthread_mutex_unlock(&tmu);
    return st;
}

void tokens_expire_all(void)
{
    pthread_mutex_lock(&tmu);
    for (size_t i = 0; i < NBUCKETS; i++)
        for (struct tok *t = buckets[i]; t; t = t->next)
            t->expires = 0;
    pthread_mutex_unlock(&tmu);
}

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Decode standard (or url) base64 into out; false on junk or overflow. */
static bool b64decode(const char *s, size_t n, unsigned char *out, size_t cap, size_t *outlen)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    size_t i = 0;
    for (; i < n && s[i] != '='; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return false;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    for (; i < n; i++)
        if (s[i] != '=')
            return false;
    *outlen = o;
    return true;
}

static bool same(const char *a, size_t an, const char *b)
{
    size_t bn = strlen(b);
    unsigned char diff = (unsigned char)(an != bn);
    for (size_t i = 0; i < an && i < bn; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

static bool form_decode(const char *s, size_t n, char *out, size_t outlen);

bool basic_auth_matches(const char *authorization, const char *id, const char *secret)
{
    if (!authorization)
        return false;
    const char *p = authorization;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "Basic", 5) != 0 || (p[5] != ' ' && p[5] != '\t'))
        return false;
    p += 5;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    unsigned char buf[1024];
    size_t len;
    if (!b64decode(p, n, buf, sizeof buf, &len))
        return false;
    const unsigned char *colon = memchr(buf, ':', len);
    if (!colon)
        return false;
    /* RFC 6749 section 2.3.1: both halves are form-urlencoded, so the first
     * ':' is the split and a ':' in the id arrives as %3A. */
    size_t idlen = (size_t)(colon - buf);
    char did[1024], dsecret[1024];
    if (!form_decode((const char *)buf, idlen, did, sizeof did) ||
        !form_decode((const char *)colon + 1, len - idlen - 1, dsecret, sizeof dsecret))
        return false;
    bool ok_id = same(did, strlen(did), id);
    bool ok_secret = same(dsecret, strlen(dsecret), secret);
    return ok_id && ok_secret;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decode a form-urlencoded piece into out (NUL-terminated); false if it
 * does not fit or contains a NUL. */
static bool form_decode(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '+')
            c = ' ';
        else if (c == '%' && i + 2 < n && hexval((unsigned char)s[i + 1]) >= 0 &&
                 hexval((unsigned char)s[i + 2]) >= 0) {
            c = hexval((unsigned char)s[i + 1]) * 16 + hexval((unsigned char)s[i + 2]);
            i += 2;
        }
        if (c == 0 || o + 1 >= outlen)
            return false;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return true;
}

bool form_get(const char *body, size_t n, const char *key, char *out, size_t outlen)
{
    size_t i = 0;
    while (i < n) {
        const char *amp = memchr(body + i, '&', n - i);
        size_t end = amp ? (size_t)(amp - body) : n;
        const char *eq = memchr(body + i, '=', end - i);
        size_t kend = eq ? (size_t)(eq - body) : end;
        char k[64];
        if (form_decode(body + i, kend - i, k, sizeof k) && strcmp(k, key) == 0) {
            if (!eq)
                return form_decode("", 0, out, outlen);
            return form_decode(eq + 1, end - kend - 1, out, outlen);
        }
        i = end + 1;
    }
    return false;
}
