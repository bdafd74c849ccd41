/*
 * scan: the strict token-line scanner (see scan.h).
 *
 * One pass over the line, a hand-written recursive descent over exactly the
 * token message's grammar. Every rule below restates what jansson (2.11 and
 * later: load.c, utf.c, strconv.c) and message.c do, and declines wherever
 * matching them would need more than a few lines:
 *
 *  - whitespace: ' ', '\t', '\n', '\r' between tokens, as jansson's lexer;
 *  - strings: bytes below 0x20 are errors for jansson ("control character"),
 *    DEL and everything from 0x20 up are allowed; bytes from 0x80 must form
 *    well-formed UTF-8 (no overlongs, surrogates or values above U+10FFFF:
 *    utf8_check_full, the same rule as maas_utf8_char_len); escapes are
 *    \" \\ \/ \b \f \n \r \t and \uXXXX (any case of hex digits), a high
 *    surrogate must be followed by an escaped low one, a lone low surrogate
 *    is an error; \u0000 is allowed in values (JSON_ALLOW_NUL) and becomes a
 *    NUL byte. Keys with escapes are declined (none of ours needs one);
 *  - integers (no '.', 'e' or 'E'): jansson reads them with strtoll and
 *    fails beyond the int64 range; "-0" is the integer 0, so a logprob of
 *    -0 is +0.0, and an id of -0 is 0. Leading zeros are a syntax error;
 *  - reals: jansson uses strtod (after replacing '.' by the locale's decimal
 *    point) and fails only on overflow (HUGE_VAL with ERANGE); underflow is
 *    accepted. Here a significand of at most 2^53 scaled by 10^-22..10^22
 *    is computed exactly (one IEEE operation on two exact operands rounds
 *    once, so it is the correctly rounded result strtod gives: Clinger's
 *    fast path, used only when FLT_EVAL_METHOD is 0), anything else goes to
 *    strtod on a stack copy and is declined when strtod does not consume it
 *    all (a locale with another decimal point) or overflows;
 *  - message.c: token.id is a JSON integer in [0, UINT32_MAX] or a string
 *    of decimal digits (leading zeros allowed) of that range; logprob is a
 *    number or one of "NaN", "Infinity", "-Infinity" (compared with strcmp:
 *    the scanner accepts only the unescaped spellings); special is a
 *    boolean; text is required; the request id is taken from the response
 *    object (and from the result only when the response has none: the
 *    scanner never sees both levels with keys of their own).
 *
 * SPDX-License-Identifier: MIT
 */
#include "scan.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define SCAN_LIKELY(x) __builtin_expect(!!(x), 1)
#define SCAN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define SCAN_LIKELY(x) (x)
#define SCAN_UNLIKELY(x) (x)
#endif

void maas_scan_buf_free(maas_scan_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->cap = 0;
    b->rid_len = 0;
}

/* ------------------------------------------------------------------ */
/* Lexing                                                              */
/* ------------------------------------------------------------------ */

/* 1 for a byte that stands for itself inside a JSON string and needs no
   further look: 0x20..0x7F except '"' and '\\'. */
static const unsigned char plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x20: '"' */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x30 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 0x50: '\\' */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x70 (DEL included) */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x80.. */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/*
 * Whether all 8 bytes at p are plain[] bytes, a word at a time (SIMD-free:
 * a 64-bit load through memcpy, any byte order). (x - n*ONES) & ~x & HIGHS
 * is nonzero exactly when some byte of x is below n (n <= 0x80), so it
 * finds control bytes (< 0x20), and on x ^ c*ONES the bytes equal to c;
 * x & HIGHS finds bytes from 0x80. A word with any of them goes to the
 * byte loop, which then stops exactly where plain[] says.
 */
static inline int word_plain(const unsigned char *p)
{
    uint64_t x, q, b;
    memcpy(&x, p, 8);
    q = x ^ (ONES * '"');
    b = x ^ (ONES * '\\');
    return (((x - ONES * 0x20) & ~x) | ((q - ONES) & ~q) | ((b - ONES) & ~b) | x) & HIGHS
               ? 0 : 1;
}

/*
 * Eight ASCII digits at p as a number, or -1 when any of the eight bytes is
 * not a digit. The bytes are assembled little-endian by shifts (compilers
 * make that one load where it is one), so the arithmetic below, which
 * combines neighbouring digits in pairs, then fours, then the eight, works
 * in any byte order.
 */
static inline int64_t eight_digits(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t x = (uint64_t)u[0] | (uint64_t)u[1] << 8 | (uint64_t)u[2] << 16 |
                 (uint64_t)u[3] << 24 | (uint64_t)u[4] << 32 | (uint64_t)u[5] << 40 |
                 (uint64_t)u[6] << 48 | (uint64_t)u[7] << 56;
    /* every byte in '0'..'9': its high nibble is 3, and adding 6 keeps it 3 */
    if ((x & UINT64_C(0xF0F0F0F0F0F0F0F0)) != UINT64_C(0x3030303030303030) ||
        ((x + UINT64_C(0x0606060606060606)) & UINT64_C(0xF0F0F0F0F0F0F0F0)) !=
            UINT64_C(0x3030303030303030))
        return -1;
    x -= UINT64_C(0x3030303030303030);
    x = (x * 10 + (x >> 8)) & UINT64_C(0x00FF00FF00FF00FF);           /* pairs */
    x = (x * 100 + (x >> 16)) & UINT64_C(0x0000FFFF0000FFFF);         /* fours */
    return (int64_t)((x * 10000 + (x >> 32)) & UINT64_C(0xFFFFFFFF)); /* eight */
}

typedef struct scanner {
    const char *line; /* start of the line (offsets are relative to it) */
    const char *p;    /* next byte to read */
    const char *end;  /* one past the last byte */
} scanner;

/* A string value as found in the line. */
typedef struct strval {
    size_t off;   /* first byte after the opening quote */
    size_t len;   /* raw bytes up to the closing quote */
    int escaped;  /* holds at least one backslash escape */
} strval;

static inline int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Servers write no whitespace: one test for that case, inline. */
static inline void skip_ws(scanner *s)
{
    if (SCAN_LIKELY(s->p < s->end && (unsigned char)*s->p > ' '))
        return;
    while (s->p < s->end && is_ws(*s->p))
        s->p++;
}

/* Skip whitespace, then take the byte c. */
static int expect(scanner *s, char c)
{
    skip_ws(s);
    if (s->p >= s->end || *s->p != c)
        return 0;
    s->p++;
    return 1;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The value of 4 hex digits at p (at least 4 bytes readable), or -1. */
static long hex4(const char *p)
{
    long v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        char c = p[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/*
 * A string value at s->p (its opening quote): validate it as jansson would,
 * note where it lies and whether it holds escapes. 0 to decline.
 */
static int scan_string(scanner *s, strval *out)
{
    const unsigned char *p = (const unsigned char *)s->p + 1;
    const unsigned char *e = (const unsigned char *)s->end;
    const unsigned char *start = p;
    int escaped = 0;

    for (;;) {
        unsigned char c;
        /* Eight plain bytes at a time (see word_plain), then byte by byte
           from the first word that holds anything else. */
        while (e - p >= 8 && word_plain(p))
            p += 8;
        while (p < e && plain[*p])
            p++;
        if (SCAN_UNLIKELY(p >= e))
            return 0; /* unterminated */
        c = *p;
        if (SCAN_LIKELY(c == '"'))
            break;
        if (c == '\\') {
            if (e - p < 2)
                return 0;
            switch (p[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p += 2;
                break;
            case 'u': {
                long u, u2;
                if (e - p < 6 || (u = hex4((const char *)p + 2)) < 0)
                    return 0;
                p += 6;
                if (u >= 0xDC00 && u <= 0xDFFF)
                    return 0; /* lone low surrogate */
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (e - p < 6 || p[0] != '\\' || p[1] != 'u')
                        return 0; /* lone high surrogate */
                    u2 = hex4((const char *)p + 2);
                    if (u2 < 0xDC00 || u2 > 0xDFFF)
                        return 0;
                    p += 6;
                }
                break;
            }
            default:
                return 0; /* invalid escape */
            }
            escaped = 1;
        } else if (c < 0x20) {
            return 0; /* raw control character */
        } else {
            size_t k = maas_utf8_char_len((const char *)p, (size_t)(e - p));
            if (k == 0)
                return 0; /* invalid UTF-8 */
            p += k;
        }
    }
    out->off = (size_t)((const char *)start - s->line);
    out->len = (size_t)(p - start);
    out->escaped = escaped;
    s->p = (const char *)p + 1;
    return 1;
}

/* Write the UTF-8 form of code point u (valid, not a surrogate) at o. */
static char *put_utf8(char *o, unsigned long u)
{
    if (u < 0x80) {
        *o++ = (char)u;
    } else if (u < 0x800) {
        *o++ = (char)(0xC0 | (u >> 6));
        *o++ = (char)(0x80 | (u & 0x3F));
    } else if (u < 0x10000) {
        *o++ = (char)(0xE0 | (u >> 12));
        *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
        *o++ = (char)(0x80 | (u & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (u >> 18));
        *o++ = (char)(0x80 | ((u >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
        *o++ = (char)(0x80 | (u & 0x3F));
    }
    return o;
}

/* Unescape n raw bytes already validated by scan_string() into dst (room
   for n + 1 bytes: escapes never grow) and NUL-terminate. Returns the length. */
static size_t unescape(char *dst, const char *src, size_t n)
{
    const char *end = src + n;
    char *o = dst;

    while (src < end) {
        const char *bs = memchr(src, '\\', (size_t)(end - src));
        size_t run = bs != NULL ? (size_t)(bs - src) : (size_t)(end - src);
        memcpy(o, src, run);
        o += run;
        src += run;
        if (bs == NULL)
            break;
        switch (src[1]) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned long u = (unsigned long)hex4(src + 2);
            if (u >= 0xD800 && u <= 0xDBFF) {
                unsigned long lo = (unsigned long)hex4(src + 8);
                u = ((u - 0xD800) << 10) + (lo - 0xDC00) + 0x10000;
                src += 6;
            }
            o = put_utf8(o, u);
            src += 4;
            break;
        }
        default: *o++ = src[1]; break; /* " \ / */
        }
        src += 2;
    }
    *o = '\0';
    return (size_t)(o - dst);
}

/* ------------------------------------------------------------------ */
/* Keys                                                                */
/* ------------------------------------------------------------------ */

enum key {
    K_UNKNOWN = 0,
    K_RESULT = 1 << 0,
    K_RESPONSE = 1 << 1,
    K_TOKEN = 1 << 2,
    K_TOP_TOKENS = 1 << 3,
    K_REQUEST_ID = 1 << 4, /* any of the three spellings */
    K_ID = 1 << 5,
    K_TEXT = 1 << 6,
    K_LOGPROB = 1 << 7,
    K_SPECIAL = 1 << 8
};

#define KEY_IS(k, n, lit) ((n) == sizeof(lit) - 1 && memcmp((k), (lit), sizeof(lit) - 1) == 0)

static enum key classify(const char *k, size_t n)
{
    switch (n) {
    case 2: return KEY_IS(k, n, "id") ? K_ID : K_UNKNOWN;
    case 4: return KEY_IS(k, n, "text") ? K_TEXT : K_UNKNOWN;
    case 5: return KEY_IS(k, n, "token") ? K_TOKEN : K_UNKNOWN;
    case 6: return KEY_IS(k, n, "result") ? K_RESULT : K_UNKNOWN;
    case 7:
        if (KEY_IS(k, n, "logprob"))
            return K_LOGPROB;
        return KEY_IS(k, n, "special") ? K_SPECIAL : K_UNKNOWN;
    case 8: return KEY_IS(k, n, "response") ? K_RESPONSE : K_UNKNOWN;
    case 9:
        return KEY_IS(k, n, "requestID") || KEY_IS(k, n, "requestId") ? K_REQUEST_ID
                                                                        : K_UNKNOWN;
    case 10:
        if (KEY_IS(k, n, "top_tokens"))
            return K_TOP_TOKENS;
        return KEY_IS(k, n, "request_id") ? K_REQUEST_ID : K_UNKNOWN;
    default: return K_UNKNOWN;
    }
}

/*
 * `"key" :` at s->p (after whitespace): which key it is. Keys holding a
 * backslash or that are not ours give K_UNKNOWN (declined by the caller).
 */
static enum key scan_key(scanner *s)
{
    const char *p, *k;
    skip_ws(s);
    if (s->p >= s->end || *s->p != '"')
        return K_UNKNOWN;
    k = p = s->p + 1;
    while (p < s->end && *p != '"' && *p != '\\')
        p++;
    if (p >= s->end || *p != '"')
        return K_UNKNOWN;
    s->p = p + 1;
    if (!expect(s, ':'))
        return K_UNKNOWN;
    skip_ws(s);
    return classify(k, (size_t)(p - k));
}

/* After a member: 1 and past ',' for another member, 2 and past '}' at the
   end of the object, 0 to decline. */
static int next_member(scanner *s)
{
    skip_ws(s);
    if (s->p < s->end) {
        char c = *s->p++;
        if (c == ',')
            return 1;
        if (c == '}')
            return 2;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Values                                                              */
/* ------------------------------------------------------------------ */

/* A literal (true, false) at s->p. */
static int take_lit(scanner *s, const char *lit, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
        return 0;
    s->p += n;
    return 1;
}

/* token.id: a JSON integer in [0, UINT32_MAX] ("-0" is 0), or a string of
   decimal digits in that range (get_u32 with parse_dec_u64). */
static int scan_id(scanner *s, uint32_t *out)
{
    const char *p = s->p, *e = s->end, *first;
    uint64_t v = 0;
    int neg = 0;

    if (p >= e)
        return 0;
    if (*p == '"') {
        first = ++p;
        while (p < e && is_digit(*p)) {
            if (v <= UINT32_MAX)
                v = v * 10 + (uint64_t)(*p - '0');
            p++;
        }
        if (p == first || p >= e || *p != '"' || v > UINT32_MAX)
            return 0;
        s->p = p + 1;
        *out = (uint32_t)v;
        return 1;
    }
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (p >= e || !is_digit(*p))
        return 0;
    if (*p == '0') {
        p++;
    } else {
        const char *lim = e - p > 11 ? p + 11 : e;
        unsigned d;
        int64_t d8;
        if (lim - p >= 8 && (d8 = eight_digits(p)) >= 0) {
            v = (uint64_t)d8;
            p += 8;
        }
        while (p < lim && (d = (unsigned)(unsigned char)*p - '0') < 10) {
            v = v * 10 + d;
            p++;
        }
    }
    /* a real (message.c refuses it), a leading zero (a syntax error), a
       negative or too large integer: all declined */
    if (p < e && (is_digit(*p) || *p == '.' || *p == 'e' || *p == 'E'))
        return 0;
    if (v > UINT32_MAX || (neg && v != 0))
        return 0;
    s->p = p;
    *out = (uint32_t)v;
    return 1;
}

#define TWO_POW_53 (UINT64_C(1) << 53)

static const double pow10_exact[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* strtod on a copy, declined where jansson would fail or read otherwise. */
static int slow_strtod(const char *p, size_t n, double *out)
{
    char buf[128], *end;
    double v;
    int saved = errno;

    if (n >= sizeof buf)
        return 0;
    memcpy(buf, p, n);
    buf[n] = '\0';
    errno = 0;
    v = strtod(buf, &end);
    if (end != buf + n || ((v == HUGE_VAL || v == -HUGE_VAL) && errno == ERANGE)) {
        errno = saved;
        return 0;
    }
    errno = saved;
    *out = v;
    return 1;
}

/* A JSON number as json_number_value() gives it. */
static int scan_number(scanner *s, double *out)
{
    const char *p = s->p, *e = s->end, *start = s->p;
    uint64_t w = 0;     /* significand, while it has at most 19 digits */
    int digits = 0;     /* significant digits in w */
    int overflow = 0;   /* more than 19 significant digits */
    long exp10 = 0;     /* from the fraction and the exponent */
    int neg = 0, real = 0;

#define TAKE_DIGIT(c)                                                  \
    do {                                                               \
        if (digits < 19) {                                             \
            w = w * 10 + (uint64_t)((c) - '0');                        \
            if (w != 0)                                                \
                digits++;                                              \
        } else {                                                       \
            overflow = 1;                                              \
        }                                                              \
    } while (0)

/* The digits that surely fit (digits stays <= 19) without TAKE_DIGIT's
   test per digit: the same w and digits. TAKE_DIGIT goes on from there. */
#define TAKE_RUN()                                                                   \
    do {                                                                             \
        const char *lim_ = e - p > 19 - digits ? p + (19 - digits) : e;              \
        unsigned d_;                                                                 \
        int64_t d8_;                                                                 \
        while (lim_ - p >= 8 && (d8_ = eight_digits(p)) >= 0) {                      \
            if (w != 0) {                                                            \
                digits += 8;                                                         \
            } else {                                                                 \
                for (d_ = 0; d_ < 8 && p[d_] == '0'; d_++)                          \
                    ;                                                                \
                digits += 8 - (int)d_; /* from the first digit that is not 0 */     \
            }                                                                        \
            w = w * 100000000u + (uint64_t)d8_;                                      \
            p += 8;                                                                  \
        }                                                                            \
        while (p < lim_ && (d_ = (unsigned)(unsigned char)*p - '0') < 10) {          \
            w = w * 10 + d_;                                                         \
            digits += w != 0;                                                        \
            p++;                                                                     \
        }                                                                            \
    } while (0)

    if (p < e && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= e || !is_digit(*p))
        return 0;
    if (*p == '0') {
        p++;
        if (p < e && is_digit(*p))
            return 0; /* leading zero */
    } else {
        TAKE_RUN();
        while (p < e && is_digit(*p)) {
            TAKE_DIGIT(*p);
            p++;
        }
    }
    if (p < e && *p == '.') {
        real = 1;
        p++;
        if (p >= e || !is_digit(*p))
            return 0;
        {
            const char *b = p;
            TAKE_RUN();
            exp10 -= (long)(p - b);
        }
        while (p < e && is_digit(*p)) {
            TAKE_DIGIT(*p);
            exp10--;
            p++;
        }
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        long x = 0;
        int xneg = 0;
        real = 1;
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            xneg = *p++ == '-';
        if (p >= e || !is_digit(*p))
            return 0;
        while (p < e && is_digit(*p)) {
            if (x < 100000)
                x = x * 10 + (*p - '0');
            p++;
        }
        exp10 += xneg ? -x : x;
    }
#undef TAKE_DIGIT
#undef TAKE_RUN
    s->p = p;

    if (!real) {
        /* jansson: strtoll, failing beyond the int64 range; then a double */
        if (overflow)
            return 0;
        if (neg) {
            if (w > (uint64_t)INT64_MAX + 1)
                return 0;
            *out = w == (uint64_t)INT64_MAX + 1 ? (double)INT64_MIN : (double)-(int64_t)w;
        } else {
            if (w > (uint64_t)INT64_MAX)
                return 0;
            *out = (double)(int64_t)w;
        }
        return 1;
    }
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    if (!overflow && w <= TWO_POW_53 && exp10 >= -22 && exp10 <= 22) {
        double v = (double)w;
        if (exp10 < 0)
            v /= pow10_exact[-exp10];
        else
            v *= pow10_exact[exp10];
        *out = neg ? -v : v;
        return 1;
    }
#endif
    return slow_strtod(start, (size_t)(p - start), out);
}

/* token.logprob: a number or a protojson non-finite spelling. */
static int scan_logprob(scanner *s, double *out)
{
    if (s->p < s->end && *s->p == '"') {
        if (take_lit(s, "\"NaN\"", 5)) {
            *out = NAN;
            return 1;
        }
        if (take_lit(s, "\"Infinity\"", 10)) {
            *out = INFINITY;
            return 1;
        }
        if (take_lit(s, "\"-Infinity\"", 11)) {
            *out = -INFINITY;
            return 1;
        }
        return 0;
    }
    return scan_number(s, out);
}

/* ------------------------------------------------------------------ */
/* Objects                                                             */
/* ------------------------------------------------------------------ */

typedef struct fields {
    uint32_t id;
    strval text;
    double logprob;
    int has_logprob;
    int special;
    strval rid;
    int has_rid;
} fields;

static int scan_token(scanner *s, fields *f)
{
    unsigned seen = 0;
    int more;

    if (s->p >= s->end || *s->p != '{')
        return 0;
    s->p++;
    do {
        enum key k = scan_key(s); /* "{}" lands here too, and is declined */
        if (k == K_UNKNOWN || (seen & (unsigned)k))
            return 0;
        seen |= (unsigned)k;
        switch (k) {
        case K_ID:
            if (!scan_id(s, &f->id))
                return 0;
            break;
        case K_TEXT:
            if (s->p >= s->end || *s->p != '"' || !scan_string(s, &f->text))
                return 0;
            break;
        case K_LOGPROB:
            if (!scan_logprob(s, &f->logprob))
                return 0;
            f->has_logprob = 1;
            break;
        case K_SPECIAL:
            if (take_lit(s, "true", 4))
                f->special = 1;
            else if (!take_lit(s, "false", 5))
                return 0;
            break;
        default:
            return 0;
        }
    } while ((more = next_member(s)) == 1);
    return more == 2 && (seen & K_TEXT);
}

/* The response object, or the result object when level is 0 (which may
   instead hold just "response"). */
static int scan_response(scanner *s, fields *f, int level)
{
    unsigned seen = 0;
    int more;

    if (s->p >= s->end || *s->p != '{')
        return 0;
    s->p++;
    do {
        enum key k = scan_key(s);
        if (k == K_UNKNOWN || (seen & (unsigned)k))
            return 0;
        seen |= (unsigned)k;
        switch (k) {
        case K_TOKEN:
            if (!scan_token(s, f))
                return 0;
            break;
        case K_TOP_TOKENS:
            if (s->p >= s->end || *s->p != '[')
                return 0;
            s->p++;
            if (!expect(s, ']'))
                return 0;
            break;
        case K_REQUEST_ID:
            if (s->p >= s->end || *s->p != '"' || !scan_string(s, &f->rid))
                return 0;
            f->has_rid = 1;
            break;
        case K_RESPONSE:
            if (level != 0 || !scan_response(s, f, 1))
                return 0;
            break;
        default:
            return 0;
        }
    } while ((more = next_member(s)) == 1);
    if (more != 2)
        return 0;
    if (seen & K_RESPONSE)
        return seen == K_RESPONSE; /* the result holds nothing else */
    return (seen & K_TOKEN) != 0;
}

/* Take the literal bytes lit[0..n) at s->p, with no whitespace around. */
#define TAKE_LIT(s, lit)                                                                  \
    ((size_t)((s)->end - (s)->p) >= sizeof(lit) - 1 &&                                   \
     memcmp((s)->p, (lit), sizeof(lit) - 1) == 0 && ((s)->p += sizeof(lit) - 1, 1))

/*
 * The line exactly as the service writes it: no whitespace, keys in its
 * order, "logprob" optional,
 *   {"result":{"response":{"token":{"id":N,"text":"..","logprob":X,"special":B},
 *    "top_tokens":[],"requestID":".."}}}
 * Each piece of structure is one fixed-size comparison instead of a key
 * lexed and classified; values go through the same functions as in
 * scan_line(), so what this accepts it reads exactly as scan_line() would.
 * Any difference, however harmless, returns 0 and scan_line() starts over.
 */
static int canonical_body(scanner *s, fields *f, maas_scan_buf *cache)
{
    size_t n;

    if (!TAKE_LIT(s, "{\"result\":{\"response\":{\"token\":{\"id\":") || !scan_id(s, &f->id) ||
        !TAKE_LIT(s, ",\"text\":\"") )
        return 0;
    s->p--; /* scan_string starts at the opening quote */
    if (!scan_string(s, &f->text))
        return 0;
    if (TAKE_LIT(s, ",\"logprob\":")) {
        if (!scan_logprob(s, &f->logprob))
            return 0;
        f->has_logprob = 1;
    }
    if (!TAKE_LIT(s, ",\"special\":"))
        return 0;
    if (TAKE_LIT(s, "false"))
        f->special = 0;
    else if (TAKE_LIT(s, "true"))
        f->special = 1;
    else
        return 0;
    if (!TAKE_LIT(s, "},\"top_tokens\":[],\"requestID\":\""))
        return 0;
    n = cache->rid_len;
    if (n != 0 && (size_t)(s->end - s->p) > n && s->p[n] == '"' &&
        memcmp(s->p, cache->rid, n) == 0) {
        /* The bytes of the last request id validated, up to its closing quote. */
        f->rid.off = (size_t)(s->p - s->line);
        f->rid.len = n;
        f->rid.escaped = 0;
        s->p += n + 1;
    } else {
        s->p--;
        if (!scan_string(s, &f->rid))
            return 0;
        if (!f->rid.escaped && f->rid.len != 0 && f->rid.len <= sizeof cache->rid) {
            memcpy(cache->rid, s->line + f->rid.off, f->rid.len);
            cache->rid_len = f->rid.len;
        }
    }
    f->has_rid = 1;
    return TAKE_LIT(s, "}}}");
}

static int scan_canonical(scanner *s, fields *f, maas_scan_buf *cache)
{
    return canonical_body(s, f, cache) && s->p == s->end;
}

static int scan_line(scanner *s, fields *f)
{
    skip_ws(s);
    if (s->p >= s->end || *s->p != '{')
        return 0;
    s->p++;
    if (scan_key(s) != K_RESULT || !scan_response(s, f, 0) || !expect(s, '}'))
        return 0;
    skip_ws(s);
    return s->p == s->end;
}

/* ------------------------------------------------------------------ */
/* Entry point                                                         */
/* ------------------------------------------------------------------ */

static int reserve(maas_scan_buf *b, size_t need)
{
    size_t cap;
    char *p;
    if (b->cap >= need)
        return 1;
    cap = b->cap != 0 ? b->cap : 64;
    while (cap < need)
        cap = cap <= SIZE_MAX / 2 ? cap * 2 : need;
    p = realloc(b->p, cap);
    if (p == NULL)
        return 0;
    b->p = p;
    b->cap = cap;
    return 1;
}

/* A scanned string, NUL-terminated: in place, or unescaped at scratch[*used]. */
static const char *deliver(char *line, const strval *v, maas_scan_buf *scratch, size_t *used,
                           size_t *len)
{
    char *dst;
    if (!v->escaped) {
        line[v->off + v->len] = '\0'; /* its closing quote */
        *len = v->len;
        return line + v->off;
    }
    dst = scratch->p + *used;
    *len = unescape(dst, line + v->off, v->len);
    *used += *len + 1;
    return dst;
}

/* Fill *out from the fields of a scanned line (the strings delivered now). */
static maas_scan_result take_fields(char *line, const fields *fp, maas_msg *out,
                                    maas_scan_buf *scratch)
{
    const fields f = *fp;
    size_t need = 0, used = 0, n;

    /* Room for the unescaped strings before any is written: one growth at most. */
    if (f.text.escaped)
        need += f.text.len + 1;
    if (f.has_rid && f.rid.escaped)
        need += f.rid.len + 1;
    if (need != 0 && !reserve(scratch, need))
        goto declined; /* jansson will say it is out of memory */

    maas_msg_init(out);
    out->type = MAAS_MSG_TOKEN;
    out->has_token = 1;
    out->token.id = f.id;
    out->token.text = deliver(line, &f.text, scratch, &used, &out->token.text_len);
    out->token.logprob = f.logprob;
    out->token.has_logprob = f.has_logprob;
    out->token.special = f.special;
    if (f.has_rid)
        out->request_id = deliver(line, &f.rid, scratch, &used, &n);
    return MAAS_SCAN_TOKEN;

declined:
    maas_msg_init(out);
    return MAAS_SCAN_DECLINED;
}

maas_scan_result maas_scan_token_line(char *line, size_t len, maas_msg *out,
                                      maas_scan_buf *scratch)
{
    scanner s;
    fields f;

    memset(&f, 0, sizeof f);
    s.line = s.p = line;
    s.end = line + len;
    if (!scan_canonical(&s, &f, scratch)) {
        memset(&f, 0, sizeof f);
        s.p = line;
        if (!scan_line(&s, &f)) {
            maas_msg_init(out);
            return MAAS_SCAN_DECLINED;
        }
    }
    return take_fields(line, &f, out, scratch);
}

maas_scan_result maas_scan_token_prefix(char *buf, size_t n, size_t max_len, size_t *line_len,
                                        maas_msg *out, maas_scan_buf *scratch)
{
    scanner s;
    fields f;

    memset(&f, 0, sizeof f);
    s.line = s.p = buf;
    s.end = buf + n;
    /* scan_canonical() ends by asking for the end of its input right after
       "}}}": here that is wherever the '\n' is, found by the scan itself. */
    if (!canonical_body(&s, &f, scratch) || s.p >= s.end || *s.p != '\n' ||
        (size_t)(s.p - buf) > max_len)
        return MAAS_SCAN_DECLINED;
    *line_len = (size_t)(s.p - buf);
    return take_fields(buf, &f, out, scratch);
}
