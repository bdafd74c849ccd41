/*
 * Unit tests of lib/ndjson.c: framing, buffering, the line cap, failure
 * stickiness, and decoding of recorded streams fed in every possible split.
 *
 * SPDX-License-Identifier: MIT
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "message.h"
#include "ndjson.h"

#ifndef MAAS_TEST_DATA
#error "MAAS_TEST_DATA must name the fixture directory"
#endif

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

typedef struct strbuf {
    char *p;
    size_t len, cap;
} strbuf;

static void sb_reserve(strbuf *b, size_t n)
{
    if (b->cap - b->len > n)
        return;
    while (b->cap - b->len <= n)
        b->cap = b->cap ? b->cap * 2 : 1024;
    b->p = realloc(b->p, b->cap);
    assert_non_null(b->p);
}

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(strbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    sb_reserve(b, 64);
    va_start(ap, fmt);
    n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    if ((size_t)n >= b->cap - b->len) {
        sb_reserve(b, (size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

static void sb_add(strbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n + 1);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* The escaping of make-fixtures.py: printable ASCII but '"' '\' as is. */
static void sb_bytes(strbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;
    char *o;
    sb_reserve(b, 4 * n + 3);
    o = b->p + b->len;
    *o++ = '"';
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            *o++ = (char)c;
        } else {
            *o++ = '\\';
            *o++ = 'x';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->p);
}

static void sb_free(strbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void dump_token(strbuf *b, const maas_token *t)
{
    sb_printf(b, "id=%" PRIu32 " special=%d logprob=", t->id, t->special);
    if (t->has_logprob)
        sb_printf(b, "%.17g", t->logprob);
    else
        sb_printf(b, "none");
    sb_printf(b, " text[%zu]=", t->text_len);
    sb_bytes(b, t->text, t->text_len);
}

/* One message in the format of the .expected fixtures. */
static void dump_msg(strbuf *b, const maas_msg *m)
{
    switch (m->type) {
    case MAAS_MSG_TOKEN:
        assert_int_equal(m->has_token, 1);
        sb_printf(b, "TOKEN ");
        dump_token(b, &m->token);
        break;
    case MAAS_MSG_FINAL:
        sb_printf(b, "FINAL has_token=%d", m->has_token);
        if (m->has_token) {
            sb_printf(b, " ");
            dump_token(b, &m->token);
        }
        sb_printf(b, " reason=%d name=", (int)m->details.finish_reason);
        sb_bytes(b, m->details.finish_reason_name, strlen(m->details.finish_reason_name));
        sb_printf(b, " gen=%" PRIu32 " seed=", m->details.generated_tokens);
        if (m->details.has_seed)
            sb_printf(b, "%" PRIu64, m->details.seed);
        else
            sb_printf(b, "none");
        sb_printf(b, " gt[%zu]=", m->details.generated_text_len);
        sb_bytes(b, m->details.generated_text, m->details.generated_text_len);
        assert_ptr_equal(m->details.request_id, m->request_id);
        break;
    case MAAS_MSG_ERROR:
        sb_printf(b, "ERROR code=%d msg=", m->grpc_code);
        sb_bytes(b, m->error_message, strlen(m->error_message));
        break;
    default:
        fail_msg("message of type %d", (int)m->type);
    }
    sb_printf(b, " rid=");
    sb_bytes(b, m->request_id, strlen(m->request_id));
    sb_printf(b, "\n");
}

static char *read_fixture(const char *name, size_t *len)
{
    char path[512];
    FILE *f;
    char *p;
    long n;

    snprintf(path, sizeof path, "%s/%s", MAAS_TEST_DATA, name);
    f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    p = malloc((size_t)n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    p[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* Deterministic PRNG (xorshift64*) for the random splits. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

/* Drain every message now available; returns the status that stopped it. */
static maas_status drain(maas_ndjson *d, strbuf *out)
{
    maas_msg m;
    maas_status st;
    while ((st = maas_ndjson_next(d, &m)) == MAAS_OK)
        dump_msg(out, &m);
    return st;
}

/*
 * Decode `data` fed as the pieces whose sizes `sizes` lists (ending when the
 * data is used up), each piece copied into its own exact-size heap block
 * that is freed right after the feed (the decoder must neither read past it
 * nor keep it). Drains after every feed unless no_drain_mask has the
 * piece's bit set. Returns the dump; a failure is appended as "STATUS ...".
 */
typedef size_t (*piece_fn)(void *state, size_t offset, size_t remaining);

static void decode_pieces(strbuf *out, const char *data, size_t len, piece_fn next_piece,
                          void *state, uint64_t no_drain_mask, size_t max_line)
{
    maas_ndjson d;
    maas_msg m;
    maas_status st = MAAS_OK;
    size_t off = 0, piece_no = 0;

    maas_ndjson_init(&d, max_line);
    while (off < len && st == MAAS_OK) {
        size_t n = next_piece(state, off, len - off);
        char *copy;
        if (n == 0 || n > len - off)
            n = len - off;
        copy = malloc(n);
        assert_non_null(copy);
        memcpy(copy, data + off, n);
        st = maas_ndjson_feed(&d, copy, n);
        free(copy);
        off += n;
        if (st == MAAS_OK && !(no_drain_mask & (1ULL << (piece_no % 64))))
            st = drain(&d, out);
        if (st == MAAS_DONE)
            st = MAAS_OK;
        piece_no++;
    }
    if (st == MAAS_OK)
        st = drain(&d, out);
    while (st == MAAS_OK || st == MAAS_DONE) {
        st = maas_ndjson_finish(&d, &m);
        if (st != MAAS_OK)
            break;
        dump_msg(out, &m);
    }
    if (st != MAAS_DONE)
        sb_printf(out, "STATUS %d %s\n", (int)st, maas_ndjson_error(&d));
    /* A finished decoder holds nothing; a failed one says why. */
    if (st == MAAS_DONE)
        assert_int_equal(maas_ndjson_pending(&d), 0);
    else
        assert_true(maas_ndjson_error(&d)[0] != '\0');
    maas_ndjson_cleanup(&d);
}

static size_t piece_whole(void *state, size_t off, size_t rem)
{
    (void)state;
    (void)off;
    return rem;
}

static size_t piece_split_at(void *state, size_t off, size_t rem)
{
    size_t at = *(size_t *)state;
    (void)rem;
    return off < at ? at - off : 0;
}

static size_t piece_one(void *state, size_t off, size_t rem)
{
    (void)state;
    (void)off;
    (void)rem;
    return 1;
}

typedef struct rand_pieces {
    uint64_t s;
    size_t max;
} rand_pieces;

static size_t piece_random(void *state, size_t off, size_t rem)
{
    rand_pieces *r = state;
    (void)off;
    (void)rem;
    return 1 + (size_t)(rng_next(&r->s) % r->max);
}

typedef struct fixture {
    char *stream, *expected;
    size_t stream_len, expected_len;
} fixture;

static void fixture_load(fixture *f, const char *base)
{
    char name[128];
    snprintf(name, sizeof name, "%s.ndjson", base);
    f->stream = read_fixture(name, &f->stream_len);
    snprintf(name, sizeof name, "%s.expected", base);
    f->expected = read_fixture(name, &f->expected_len);
}

static void fixture_free(fixture *f)
{
    free(f->stream);
    free(f->expected);
}

/* Compare one decoding with the expected dump, naming the case on failure. */
static void check_dump(const strbuf *got, const char *expected, const char *what, size_t arg)
{
    if (got->p == NULL || strcmp(got->p, expected) != 0) {
        print_error("decoding differs (%s %zu)\n--- got:\n%s--- expected:\n%s", what, arg,
                    got->p ? got->p : "", expected);
        fail();
    }
}

/* Every line terminated by "\r\n" instead of "\n". */
static char *to_crlf(const char *s, size_t n, size_t *outlen)
{
    char *o = malloc(2 * n + 1);
    size_t i, k = 0;
    assert_non_null(o);
    for (i = 0; i < n; i++) {
        if (s[i] == '\n')
            o[k++] = '\r';
        o[k++] = s[i];
    }
    o[k] = '\0';
    *outlen = k;
    return o;
}

/* ------------------------------------------------------------------ */
/* The recorded stream in every split                                  */
/* ------------------------------------------------------------------ */

static void test_stream_whole(void **state)
{
    fixture f;
    strbuf got = {0};
    maas_ndjson d;
    maas_msg m;
    size_t n = 0;
    (void)state;

    fixture_load(&f, "stream-basic");
    decode_pieces(&got, f.stream, f.stream_len, piece_whole, NULL, 0, 0);
    check_dump(&got, f.expected, "whole", 0);

    /* A few values checked by hand as well, independent of the dump format. */
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, f.stream, f.stream_len), MAAS_OK);
    while (maas_ndjson_next(&d, &m) == MAAS_OK) {
        n++;
        assert_string_equal(m.request_id, "8764a8c3-5f0e-4c7a-9d1b-2e6f3a9b0c11");
        if (n == 1) {
            assert_int_equal(m.type, MAAS_MSG_TOKEN);
            assert_int_equal(m.token.text_len, 4);
            assert_memory_equal(m.token.text, " Why", 5);
            assert_true(m.token.has_logprob);
            assert_true(m.token.logprob == -0.11687851);
            assert_false(m.token.special);
        } else if (n == 8) {
            assert_true(m.token.has_logprob);
            assert_true(m.token.logprob == 0.0);
        } else if (n == 9) {
            assert_int_equal(m.token.text_len, 1);
            assert_int_equal(m.token.text[0], '\n');
        } else if (n == 12) {
            assert_string_equal(m.token.text, " they");
            assert_false(m.token.has_logprob);
        } else if (n == 17) {
            assert_string_equal(m.token.text, " \"");
        } else if (n == 23) {
            assert_string_equal(m.token.text, " \\");
        } else if (n == 25) {
            assert_int_equal(m.token.text_len, 4);
            assert_string_equal(m.token.text, "\xc3\xafve");
        } else if (n == 27) {
            assert_string_equal(m.token.text, "\xc3\xa9");
        } else if (n == 28) {
            assert_int_equal(m.token.text_len, 5);
            assert_string_equal(m.token.text, " \xf0\x9f\x99\x82");
        } else if (n == 29) {
            assert_string_equal(m.token.text, " \xf0\x9f\x98\x80");
        } else if (n == 51) {
            assert_int_equal(m.type, MAAS_MSG_FINAL);
            assert_true(m.has_token);
            assert_true(m.token.special);
            assert_string_equal(m.token.text, "</s>");
            assert_int_equal(m.details.finish_reason, MAAS_FINISH_EOS_TOKEN);
            assert_string_equal(m.details.finish_reason_name, "FINISH_REASON_EOS_TOKEN");
            assert_int_equal(m.details.generated_tokens, 51);
            assert_true(m.details.has_seed);
            assert_true(m.details.seed == UINT64_C(13414724236876468656));
            assert_true(m.details.seed > (uint64_t)INT64_MAX);
            assert_int_equal(m.details.generated_text_len,
                             strlen(m.details.generated_text));
            assert_non_null(strstr(m.details.generated_text, "na\xc3\xafve caf\xc3\xa9"));
        }
        if (n < 51)
            assert_int_equal(m.type, MAAS_MSG_TOKEN);
    }
    assert_int_equal(n, 51);
    assert_int_equal(maas_ndjson_pending(&d), 0);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_DONE);
    maas_ndjson_cleanup(&d);

    sb_free(&got);
    fixture_free(&f);
}

/*
 * Under valgrind (the test setup sets MAAS_UNDER_VALGRIND) the sweeps take a
 * stride: memcheck looks for memory errors, which a sample of positions
 * exercises as well as all of them, while the full sweep (every position)
 * runs in the normal and the sanitizer builds.
 */
static size_t sweep_stride(void)
{
    return getenv("MAAS_UNDER_VALGRIND") ? 13 : 1;
}

static void every_split(const char *data, size_t len, const char *expected, const char *what)
{
    size_t at, stride = sweep_stride();
    for (at = 0; at <= len; at += stride) {
        strbuf got = {0};
        decode_pieces(&got, data, len, piece_split_at, &at, 0, 0);
        check_dump(&got, expected, what, at);
        sb_free(&got);
    }
}

static void test_stream_every_split(void **state)
{
    fixture f;
    (void)state;
    fixture_load(&f, "stream-basic");
    every_split(f.stream, f.stream_len, f.expected, "split at");
    fixture_free(&f);
}

static void test_stream_one_byte_at_a_time(void **state)
{
    fixture f;
    strbuf got = {0};
    (void)state;
    fixture_load(&f, "stream-basic");
    decode_pieces(&got, f.stream, f.stream_len, piece_one, NULL, 0, 0);
    check_dump(&got, f.expected, "bytewise", 1);
    sb_free(&got);
    /* and never draining until the end: many lines buffered at once */
    decode_pieces(&got, f.stream, f.stream_len, piece_one, NULL, ~0ULL, 0);
    check_dump(&got, f.expected, "bytewise without draining", 1);
    sb_free(&got);
    fixture_free(&f);
}

static void test_stream_random_pieces(void **state)
{
    fixture f;
    size_t round;
    (void)state;
    fixture_load(&f, "stream-basic");
    for (round = 0; round < 400; round += sweep_stride()) {
        strbuf got = {0};
        static const size_t maxes[] = {3, 17, 64, 200, 1000, 5000};
        rand_pieces r;
        uint64_t mask_seed = 0x9E3779B97F4A7C15ULL ^ round;
        r.s = 0x243F6A8885A308D3ULL + round * 0x100000001B3ULL;
        r.max = maxes[round % (sizeof maxes / sizeof maxes[0])];
        /* every fourth round also leaves some feeds undrained */
        decode_pieces(&got, f.stream, f.stream_len, piece_random, &r,
                      round % 4 == 3 ? rng_next(&mask_seed) : 0, 0);
        check_dump(&got, f.expected, "random round", round);
        sb_free(&got);
    }
    fixture_free(&f);
}

static void test_stream_crlf_splits(void **state)
{
    fixture f;
    size_t n, i, at, splits = 0;
    char *crlf;
    strbuf got = {0};
    (void)state;
    fixture_load(&f, "stream-basic");
    crlf = to_crlf(f.stream, f.stream_len, &n);
    assert_int_equal(n, f.stream_len + 51);
    decode_pieces(&got, crlf, n, piece_whole, NULL, 0, 0);
    check_dump(&got, f.expected, "crlf whole", 0);
    sb_free(&got);
    /* split just before, between and just after every "\r" and "\n" */
    for (i = 0; i < n; i++) {
        if (crlf[i] != '\r')
            continue;
        assert_int_equal(crlf[i + 1], '\n');
        for (at = i; at <= i + 2; at++) {
            decode_pieces(&got, crlf, n, piece_split_at, &at, 0, 0);
            check_dump(&got, f.expected, "crlf split at", at);
            sb_free(&got);
            splits++;
        }
    }
    assert_int_equal(splits, 3 * 51);
    /* and a byte at a time */
    decode_pieces(&got, crlf, n, piece_one, NULL, 0, 0);
    check_dump(&got, f.expected, "crlf bytewise", 1);
    sb_free(&got);
    free(crlf);
    fixture_free(&f);
}

static void test_stream_blank_lines(void **state)
{
    fixture f;
    strbuf in = {0}, got = {0};
    size_t i, start = 0, line = 0, round;
    static const char *const blanks[] = {"\n", "\r\n", "  \t \n", " \r\n", "\t\r\n\n"};
    (void)state;

    fixture_load(&f, "stream-basic");
    sb_add(&in, "\n\r\n", 3); /* blank lines before the first message */
    for (i = 0; i < f.stream_len; i++) {
        if (f.stream[i] != '\n')
            continue;
        sb_add(&in, f.stream + start, i - start);
        /* mix terminators: LF and CRLF */
        sb_add(&in, line % 2 ? "\r\n" : "\n", line % 2 ? 2 : 1);
        if (line % 3 == 0) {
            const char *bl = blanks[line % 5];
            sb_add(&in, bl, strlen(bl));
        }
        start = i + 1;
        line++;
    }
    sb_add(&in, "\n  \n", 4); /* and after the last */

    decode_pieces(&got, in.p, in.len, piece_whole, NULL, 0, 0);
    check_dump(&got, f.expected, "blank lines whole", 0);
    sb_free(&got);
    for (round = 0; round < 50; round++) {
        rand_pieces r = {0xB5AD4ECEDA1CE2A9ULL + round, 1 + round * 7};
        decode_pieces(&got, in.p, in.len, piece_random, &r, 0, 0);
        check_dump(&got, f.expected, "blank lines round", round);
        sb_free(&got);
    }
    sb_free(&in);
    fixture_free(&f);
}

static void test_stream_tight_cap(void **state)
{
    fixture f;
    size_t i, start = 0, longest = 0, longest_line = 0, line = 0, round;
    strbuf got = {0}, want = {0};
    (void)state;

    fixture_load(&f, "stream-basic");
    for (i = 0; i < f.stream_len; i++) {
        if (f.stream[i] != '\n')
            continue;
        line++;
        if (i - start > longest) {
            longest = i - start;
            longest_line = line;
        }
        start = i + 1;
    }
    assert_int_equal(longest_line, 51); /* the final message */

    /* A cap of exactly the longest line: everything decodes, whether drained
       after each feed or left to pile up (feed's tail check then runs on
       every call, on a buffer holding many complete lines). */
    for (round = 0; round < 60; round++) {
        rand_pieces r = {0xD1B54A32D192ED03ULL + round, 1 + round * 13};
        decode_pieces(&got, f.stream, f.stream_len, piece_random, &r,
                      round % 2 ? ~0ULL : 0x5555555555555555ULL, longest);
        check_dump(&got, f.expected, "cap = longest, round", round);
        sb_free(&got);
    }
    decode_pieces(&got, f.stream, f.stream_len, piece_one, NULL, ~0ULL, longest);
    check_dump(&got, f.expected, "cap = longest, bytewise", 0);
    sb_free(&got);

    /* One byte less: the 50 tokens, then the error naming line 51, however
       the bytes arrive. */
    sb_add(&want, f.expected, (size_t)(strrchr(f.expected, '\n') - f.expected));
    want.len = (size_t)(strrchr(want.p, '\n') - want.p) + 1;
    want.p[want.len] = '\0';
    sb_printf(&want, "STATUS %d line 51 exceeds the %zu-byte limit\n",
              (int)MAAS_ERR_LINE_TOO_LONG, longest - 1);
    for (round = 0; round < 60; round++) {
        rand_pieces r = {0x8CB92BA72F3D8DD7ULL + round, 1 + round * 13};
        decode_pieces(&got, f.stream, f.stream_len, piece_random, &r,
                      round % 2 ? ~0ULL : 0, longest - 1);
        check_dump(&got, want.p, "cap = longest - 1, round", round);
        sb_free(&got);
    }
    decode_pieces(&got, f.stream, f.stream_len, piece_whole, NULL, 0, longest - 1);
    check_dump(&got, want.p, "cap = longest - 1, whole", 0);
    sb_free(&got);
    decode_pieces(&got, f.stream, f.stream_len, piece_one, NULL, ~0ULL, longest - 1);
    check_dump(&got, want.p, "cap = longest - 1, bytewise undrained", 0);
    sb_free(&got);

    sb_free(&want);
    fixture_free(&f);
}

static void test_stream_error_fixture(void **state)
{
    fixture f;
    strbuf got = {0};
    (void)state;
    fixture_load(&f, "stream-error");
    decode_pieces(&got, f.stream, f.stream_len, piece_whole, NULL, 0, 0);
    check_dump(&got, f.expected, "error whole", 0);
    sb_free(&got);
    every_split(f.stream, f.stream_len, f.expected, "error split at");
    fixture_free(&f);
}

/* ------------------------------------------------------------------ */
/* Framing details                                                     */
/* ------------------------------------------------------------------ */

#define TOKEN_LINE(id, text) \
    "{\"result\":{\"response\":{\"token\":{\"id\":" #id ",\"text\":\"" text "\"}}}}"

static void test_many_lines_per_feed_and_split_crlf(void **state)
{
    maas_ndjson d;
    maas_msg m;
    const char *in = TOKEN_LINE(1, "a") "\r\n" TOKEN_LINE(2, "b") "\n" TOKEN_LINE(3, "c") "\r";
    (void)state;

    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, in, strlen(in)), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 1);
    assert_int_equal(m.token.text_len, 1);
    assert_string_equal(m.token.text, "a");
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 2);
    /* the third line waits for its "\n" */
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    assert_int_equal(m.type, MAAS_MSG_NONE);
    assert_int_equal(maas_ndjson_pending(&d), strlen(TOKEN_LINE(3, "c")) + 1);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE); /* again: no rescan needed */
    assert_int_equal(d.scanned, maas_ndjson_pending(&d));
    assert_int_equal(maas_ndjson_feed(&d, "\n", 1), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 3);
    assert_string_equal(m.token.text, "c");
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    assert_int_equal(maas_ndjson_pending(&d), 0);
    assert_int_equal(d.line_no, 3);
    /* all consumed: the next feed starts again at the front, nothing moved */
    assert_true(d.start > 0);
    assert_int_equal(maas_ndjson_feed(&d, "{", 1), MAAS_OK);
    assert_int_equal(d.start, 0);
    assert_int_equal(d.len, 1);
    maas_ndjson_cleanup(&d);
}

static void test_blank_only_input(void **state)
{
    maas_ndjson d;
    maas_msg m;
    const char *in = "\n\r\n   \n\t\r\n \r \n";
    (void)state;
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE); /* nothing fed yet */
    assert_int_equal(maas_ndjson_feed(&d, NULL, 0), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, in, strlen(in)), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    assert_int_equal(d.line_no, 5);
    assert_int_equal(maas_ndjson_feed(&d, " \r", 2), MAAS_OK);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_DONE); /* a blank last line */
    assert_int_equal(maas_ndjson_pending(&d), 0);
    assert_null(d.held);
    maas_ndjson_cleanup(&d);
    maas_ndjson_cleanup(&d); /* twice is harmless */
}

static void test_line_numbers_in_errors(void **state)
{
    maas_ndjson d;
    maas_msg m;
    const char *in = TOKEN_LINE(1, "a") "\r\n\r\n\n   \n{\"result\":{\"token\":{\"id\":-1,\"text\":\"x\"}}}\n";
    (void)state;
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, in, strlen(in)), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_ERR_PROTOCOL);
    assert_string_equal(maas_ndjson_error(&d),
                        "line 5: token.id is not an unsigned 32-bit integer");
    assert_int_equal(m.type, MAAS_MSG_NONE);
    maas_ndjson_cleanup(&d);
}

/* ------------------------------------------------------------------ */
/* The line cap                                                        */
/* ------------------------------------------------------------------ */

/* A valid token line of exactly n bytes (n >= 40), without terminator. */
static char *line_of(size_t n)
{
    static const char head[] = "{\"result\":{\"token\":{\"id\":7,\"text\":\"";
    static const char tail[] = "\"}}}";
    size_t h = sizeof head - 1, t = sizeof tail - 1;
    char *s = malloc(n + 1);
    assert_non_null(s);
    assert_true(n >= h + t);
    memcpy(s, head, h);
    memset(s + h, 'x', n - h - t);
    memcpy(s + n - t, tail, t);
    s[n] = '\0';
    return s;
}

static void feed_bytewise(maas_ndjson *d, const char *s, size_t n, maas_status want_last)
{
    size_t i;
    for (i = 0; i < n; i++) {
        maas_status st = maas_ndjson_feed(d, s + i, 1);
        assert_int_equal(st, i + 1 == n ? want_last : MAAS_OK);
    }
}

static void test_line_cap_exact(void **state)
{
    maas_ndjson d;
    maas_msg m;
    char *line = line_of(64);
    (void)state;

    /* exactly at the cap, LF */
    maas_ndjson_init(&d, 64);
    assert_int_equal(maas_ndjson_feed(&d, line, 64), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, "\n", 1), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 7);
    assert_int_equal(m.token.text_len, 64 - 39);
    /* exactly at the cap, CRLF, fed a byte at a time: the "\r" alone must
       not be counted against the line */
    feed_bytewise(&d, line, 64, MAAS_OK);
    feed_bytewise(&d, "\r", 1, MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    feed_bytewise(&d, "\n", 1, MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 7);
    /* the same with a complete line still buffered ahead of it, so that
       feed() has to find where the last line starts */
    assert_int_equal(maas_ndjson_feed(&d, TOKEN_LINE(5, "q") "\n", strlen(TOKEN_LINE(5, "q")) + 1),
                     MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, line, 64), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, "\r", 1), MAAS_OK);
    assert_int_equal(d.overflow, 0);
    assert_int_equal(maas_ndjson_feed(&d, "\n", 1), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 5);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 7);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    /* exactly at the cap as an unterminated last line */
    assert_int_equal(maas_ndjson_feed(&d, line, 64), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 7);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_DONE);
    maas_ndjson_cleanup(&d);
    free(line);
}

static void assert_stays_failed(maas_ndjson *d, maas_status st, const char *err)
{
    maas_msg m;
    size_t pending = maas_ndjson_pending(d);
    assert_int_equal(maas_ndjson_feed(d, "{}\n", 3), st);
    assert_int_equal(maas_ndjson_feed(d, TOKEN_LINE(1, "a") "\n", strlen(TOKEN_LINE(1, "a")) + 1),
                     st);
    assert_int_equal(maas_ndjson_next(d, &m), st);
    assert_int_equal(m.type, MAAS_MSG_NONE);
    assert_int_equal(maas_ndjson_finish(d, &m), st);
    assert_int_equal(maas_ndjson_next(d, &m), st);
    assert_int_equal(maas_ndjson_pending(d), pending); /* no work was done */
    assert_string_equal(maas_ndjson_error(d), err);
    assert_null(d->held);
}

static void test_line_cap_one_over(void **state)
{
    maas_ndjson d;
    maas_msg m;
    char *line = line_of(65);
    (void)state;

    /* terminated, in one feed: known when the line is framed */
    maas_ndjson_init(&d, 64);
    assert_int_equal(maas_ndjson_feed(&d, line, 65), MAAS_ERR_LINE_TOO_LONG);
    assert_string_equal(maas_ndjson_error(&d), "line 1 exceeds the 64-byte limit");
    maas_ndjson_cleanup(&d);

    maas_ndjson_init(&d, 64);
    {
        char *t = malloc(66);
        assert_non_null(t);
        memcpy(t, line, 65);
        t[65] = '\n';
        assert_int_equal(maas_ndjson_feed(&d, t, 66), MAAS_OK);
        free(t);
    }
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_ERR_LINE_TOO_LONG);
    assert_string_equal(maas_ndjson_error(&d), "line 1 exceeds the 64-byte limit");
    assert_stays_failed(&d, MAAS_ERR_LINE_TOO_LONG, "line 1 exceeds the 64-byte limit");
    maas_ndjson_cleanup(&d);

    /* one byte at a time: the 65th byte fails in feed */
    maas_ndjson_init(&d, 64);
    feed_bytewise(&d, TOKEN_LINE(1, "a") "\n", strlen(TOKEN_LINE(1, "a")) + 1, MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    feed_bytewise(&d, line, 64, MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    assert_int_equal(maas_ndjson_feed(&d, line + 64, 1), MAAS_ERR_LINE_TOO_LONG);
    assert_string_equal(maas_ndjson_error(&d), "line 2 exceeds the 64-byte limit");
    assert_stays_failed(&d, MAAS_ERR_LINE_TOO_LONG, "line 2 exceeds the 64-byte limit");
    maas_ndjson_cleanup(&d);

    /* a "\r" that turns out not to end the line counts after all */
    maas_ndjson_init(&d, 64);
    assert_int_equal(maas_ndjson_feed(&d, line, 64), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, "\r", 1), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, " ", 1), MAAS_ERR_LINE_TOO_LONG);
    maas_ndjson_cleanup(&d);

    /* at the cap plus a "\r" at the end of input: the "\r" ends the line */
    free(line);
    line = line_of(64);
    maas_ndjson_init(&d, 64);
    assert_int_equal(maas_ndjson_feed(&d, line, 64), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, "\r", 1), MAAS_OK);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_OK); /* the "\r" was a terminator */
    assert_int_equal(m.token.id, 7);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_DONE);
    maas_ndjson_cleanup(&d);
    free(line);
}

static void test_line_cap_unterminated_fails_in_feed(void **state)
{
    maas_ndjson d;
    maas_msg m;
    size_t max_line = 100000, fed = 0, maxcap = 0;
    char piece[4096];
    maas_status st = MAAS_OK;
    (void)state;

    /* a huge line arriving in 4 KiB pieces, drained after each: fails in the
       first feed that takes it past the cap, the buffer never larger than
       the cap plus one feed */
    memset(piece, 'x', sizeof piece);
    maas_ndjson_init(&d, max_line);
    assert_int_equal(maas_ndjson_feed(&d, "{\"result\":\"", 11), MAAS_OK);
    fed = 11;
    while (st == MAAS_OK) {
        st = maas_ndjson_feed(&d, piece, sizeof piece);
        fed += sizeof piece;
        if (d.cap > maxcap)
            maxcap = d.cap;
        if (st == MAAS_OK) {
            assert_true(fed <= max_line + 1);
            assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
        }
    }
    assert_int_equal(st, MAAS_ERR_LINE_TOO_LONG);
    assert_true(fed > max_line && fed - sizeof piece <= max_line + 1);
    assert_true(maxcap <= max_line + 2 + sizeof piece);
    assert_string_equal(maas_ndjson_error(&d), "line 1 exceeds the 100000-byte limit");
    assert_stays_failed(&d, MAAS_ERR_LINE_TOO_LONG, "line 1 exceeds the 100000-byte limit");
    maas_ndjson_cleanup(&d);

    /* the default cap applies when 0 is given */
    maas_ndjson_init(&d, 0);
    assert_int_equal(d.max_line, MAAS_DEFAULT_MAX_LINE_BYTES);
    maas_ndjson_cleanup(&d);
}

static void test_line_cap_after_complete_lines(void **state)
{
    maas_ndjson d;
    maas_msg m;
    char *big = line_of(200);
    strbuf in = {0};
    (void)state;

    /* complete lines, then an over-long unterminated one, in one feed: the
       complete lines still come out, then the error, in order */
    sb_add(&in, TOKEN_LINE(1, "a") "\n\n" TOKEN_LINE(2, "b") "\n", strlen(TOKEN_LINE(1, "a")) * 2 + 3);
    sb_add(&in, big, 200);
    maas_ndjson_init(&d, 64);
    assert_int_equal(maas_ndjson_feed(&d, in.p, in.len), MAAS_OK);
    assert_true(d.cap <= 4096);
    assert_int_equal(maas_ndjson_feed(&d, "more of it", 10), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 1);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 2);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_ERR_LINE_TOO_LONG);
    assert_string_equal(maas_ndjson_error(&d), "line 4 exceeds the 64-byte limit");
    assert_stays_failed(&d, MAAS_ERR_LINE_TOO_LONG, "line 4 exceeds the 64-byte limit");
    maas_ndjson_cleanup(&d);

    /* the same when the complete line came in an earlier, undrained feed;
       finish reports it too */
    maas_ndjson_init(&d, 64);
    assert_int_equal(maas_ndjson_feed(&d, TOKEN_LINE(1, "a") "\n", strlen(TOKEN_LINE(1, "a")) + 1),
                     MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, big, 30), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, big + 30, 170), MAAS_OK);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 1);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_ERR_LINE_TOO_LONG);
    assert_string_equal(maas_ndjson_error(&d), "line 2 exceeds the 64-byte limit");
    maas_ndjson_cleanup(&d);

    /* an over-long complete line in the middle of a feed */
    sb_free(&in);
    sb_add(&in, TOKEN_LINE(1, "a") "\n", strlen(TOKEN_LINE(1, "a")) + 1);
    sb_add(&in, big, 200);
    sb_add(&in, "\n" TOKEN_LINE(3, "c") "\n", strlen(TOKEN_LINE(3, "c")) + 2);
    maas_ndjson_init(&d, 64);
    assert_int_equal(maas_ndjson_feed(&d, in.p, in.len), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_ERR_LINE_TOO_LONG);
    assert_string_equal(maas_ndjson_error(&d), "line 2 exceeds the 64-byte limit");
    maas_ndjson_cleanup(&d);

    sb_free(&in);
    free(big);
}

/* l1 (a bytes), l2 (40 bytes) and the first `tail` bytes of a third line,
   then l1 taken: feed() has had to locate the start of the last line. */
static void setup_three_lines(maas_ndjson *d, size_t max_line, const char *l1, size_t a,
                              const char *l2, const char *y, size_t tail)
{
    maas_msg m;
    maas_ndjson_init(d, max_line);
    assert_int_equal(maas_ndjson_feed(d, l1, a), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(d, "\n", 1), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(d, l2, 40), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(d, "\n{\"result\":\"", 12), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(d, y, tail - 11), MAAS_OK);
    assert_int_equal(d->tail_at, a + 42);
    assert_int_equal(d->cap, 4096);
    assert_int_equal(maas_ndjson_next(d, &m), MAAS_OK); /* l1 */
    assert_int_equal(d->start, a + 1);
    assert_int_equal(maas_ndjson_pending(d), 41 + tail);
}

static void test_line_cap_across_compaction(void **state)
{
    maas_ndjson d;
    maas_msg m;
    char *l1 = line_of(2000), *l2 = line_of(40), *y = malloc(2500), *before;
    (void)state;
    assert_non_null(y);
    memset(y, 'y', 2500);

    /* The remembered start of the last line must follow the bytes when they
       are moved in place (the consumed 2001 bytes outnumber the 1541 to move) ... */
    setup_three_lines(&d, 3000, l1, 2000, l2, y, 1500);
    before = d.buf;
    assert_int_equal(maas_ndjson_feed(&d, y, 1000), MAAS_OK); /* 4541 > cap 4096 */
    assert_ptr_equal(d.buf, before);
    assert_int_equal(d.cap, 4096);
    assert_int_equal(d.start, 0);
    assert_int_equal(d.overflow, 0);
    assert_int_equal(maas_ndjson_feed(&d, y, 600), MAAS_OK); /* last line now 3100 bytes */
    assert_int_equal(d.tail_at, 41);
    assert_int_equal(d.overflow, 1);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK); /* l2 still comes out */
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_ERR_LINE_TOO_LONG);
    assert_string_equal(maas_ndjson_error(&d), "line 3 exceeds the 3000-byte limit");
    maas_ndjson_cleanup(&d);

    /* ... and through a move followed later by growth: cap 4060, so the
       feeds after the move are checked, and the line passes the cap on the
       feed that makes the buffer grow */
    setup_three_lines(&d, 4060, l1, 2000, l2, y, 2040);
    assert_int_equal(maas_ndjson_feed(&d, y, 1000), MAAS_OK); /* moved */
    assert_int_equal(d.cap, 4096);
    assert_int_equal(d.start, 0);
    assert_int_equal(d.tail_at, 41);
    assert_int_equal(maas_ndjson_feed(&d, y, 1000), MAAS_OK); /* 4081 bytes, line 4040 */
    assert_int_equal(d.cap, 4096);
    assert_int_equal(d.overflow, 0);
    assert_int_equal(maas_ndjson_feed(&d, y, 30), MAAS_OK); /* grows; line 4070 */
    assert_true(d.cap > 4096);
    assert_int_equal(d.tail_at, 41);
    assert_int_equal(d.overflow, 1);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_ERR_LINE_TOO_LONG);
    assert_string_equal(maas_ndjson_error(&d), "line 3 exceeds the 4060-byte limit");
    maas_ndjson_cleanup(&d);

    free(l1);
    free(l2);
    free(y);
}

/* ------------------------------------------------------------------ */
/* Malformed and edge-case lines                                       */
/* ------------------------------------------------------------------ */

typedef struct bad_case {
    const char *line;
    size_t len; /* 0: strlen */
    const char *err; /* expected maas_ndjson_error(), prefix match */
} bad_case;

#define R(x) "{\"result\":{\"response\":" x "}}"
#define TOK(x) R("{\"token\":" x "}")
#define DET(x) R("{\"details\":" x "}")

#define RAW_NUL_LINE "{\"result\":{\"token\":{\"id\":1,\"text\":\"a\0b\"}}}"

static const bad_case bad_cases[] = {
    {"{\"result\": ", 0, "line 1: invalid JSON at column 11: unexpected token near end of file"},
    {"{\"result\":{}} x", 0, "line 1: invalid JSON at column 15: end of file expected"},
    {"[1,2]", 0, "line 1: expected a JSON object, got an array"},
    {"\"result\"", 0, "line 1: expected a JSON object, got a string"},
    {"42", 0, "line 1: expected a JSON object, got a number"},
    {"null", 0, "line 1: expected a JSON object, got null"},
    {"{}", 0, "line 1: the object has neither \"result\" nor \"error\""},
    {"{\"result\":null}", 0, "line 1: the object has neither \"result\" nor \"error\""},
    {"{\"resulta\":{}}", 0, "line 1: the object has neither \"result\" nor \"error\""},
    {"{\"result\":5}", 0, "line 1: result is not an object (got a number)"},
    {"{\"result\":{\"response\":[]}}", 0, "line 1: result.response is not an object (got an array)"},
    {R("{}"), 0, "line 1: result has neither token nor details"},
    {R("{\"top_tokens\":[],\"requestID\":\"r\"}"), 0, "line 1: result has neither token nor details"},
    {TOK("5"), 0, "line 1: token is not an object (got a number)"},
    {TOK("\"a\""), 0, "line 1: token is not an object (got a string)"},
    {TOK("{\"id\":-1,\"text\":\"a\"}"), 0, "line 1: token.id is not an unsigned 32-bit integer"},
    {TOK("{\"id\":1.5,\"text\":\"a\"}"), 0, "line 1: token.id is not an unsigned 32-bit integer"},
    {TOK("{\"id\":1.0,\"text\":\"a\"}"), 0, "line 1: token.id is not an unsigned 32-bit integer"},
    {TOK("{\"id\":4294967296,\"text\":\"a\"}"), 0, "line 1: token.id is not an unsigned 32-bit integer"},
    {TOK("{\"id\":\"abc\",\"text\":\"a\"}"), 0, "line 1: token.id is not an unsigned 32-bit integer"},
    {TOK("{\"id\":\"-3\",\"text\":\"a\"}"), 0, "line 1: token.id is not an unsigned 32-bit integer"},
    {TOK("{\"id\":true,\"text\":\"a\"}"), 0, "line 1: token.id is not an unsigned 32-bit integer"},
    {TOK("{\"id\":1}"), 0, "line 1: token.text is missing"},
    {TOK("{\"id\":1,\"text\":null}"), 0, "line 1: token.text is missing"},
    {TOK("{\"id\":1,\"text\":5}"), 0, "line 1: token.text is not a string (got a number)"},
    {TOK("{\"id\":1,\"text\":\"a\",\"logprob\":\"abc\"}"), 0, "line 1: token.logprob is not a number"},
    {TOK("{\"id\":1,\"text\":\"a\",\"logprob\":\"nan\"}"), 0, "line 1: token.logprob is not a number"},
    {TOK("{\"id\":1,\"text\":\"a\",\"logprob\":true}"), 0, "line 1: token.logprob is not a number"},
    {TOK("{\"id\":1,\"text\":\"a\",\"logprob\":[]}"), 0, "line 1: token.logprob is not a number"},
    {TOK("{\"id\":1,\"text\":\"a\",\"special\":\"yes\"}"), 0, "line 1: token.special is not a boolean (got a string)"},
    {TOK("{\"id\":1,\"text\":\"a\",\"special\":1}"), 0, "line 1: token.special is not a boolean (got a number)"},
    {R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":5}"), 0, "line 1: requestID is not a string (got a number)"},
    {R("{\"token\":{\"id\":1,\"text\":\"a\"},\"request_id\":{}}"), 0, "line 1: request_id is not a string (got an object)"},
    {DET("5"), 0, "line 1: details is not an object (got a number)"},
    {DET("{\"finish_reason\":1}"), 0, "line 1: details.finish_reason is not a string (got a number)"},
    {DET("{\"generated_tokens\":-1}"), 0, "line 1: details.generated_tokens is not an unsigned 32-bit integer"},
    {DET("{\"generated_tokens\":\"x\"}"), 0, "line 1: details.generated_tokens is not an unsigned 32-bit integer"},
    {DET("{\"generated_tokens\":2.5}"), 0, "line 1: details.generated_tokens is not an unsigned 32-bit integer"},
    {DET("{\"generated_tokens\":\"4294967296\"}"), 0, "line 1: details.generated_tokens is not an unsigned 32-bit integer"},
    {DET("{\"seed\":\"-1\"}"), 0, "line 1: details.seed is negative"},
    {DET("{\"seed\":-5}"), 0, "line 1: details.seed is negative"},
    {DET("{\"seed\":\"12a\"}"), 0, "line 1: details.seed is not a decimal integer"},
    {DET("{\"seed\":\"\"}"), 0, "line 1: details.seed is not a decimal integer"},
    {DET("{\"seed\":\" 1\"}"), 0, "line 1: details.seed is not a decimal integer"},
    {DET("{\"seed\":\"+1\"}"), 0, "line 1: details.seed is not a decimal integer"},
    {DET("{\"seed\":\"-\"}"), 0, "line 1: details.seed is not a decimal integer"},
    {DET("{\"seed\":\"18446744073709551616\"}"), 0, "line 1: details.seed exceeds the unsigned 64-bit maximum 18446744073709551615"},
    {DET("{\"seed\":\"99999999999999999999999\"}"), 0, "line 1: details.seed exceeds"},
    {DET("{\"seed\":1.5}"), 0, "line 1: details.seed is not an integer or a decimal string (got a number)"},
    {DET("{\"seed\":true}"), 0, "line 1: details.seed is not an integer or a decimal string (got true)"},
    /* jansson holds integers as long long: a bare integer seed above
       INT64_MAX cannot be represented and fails as JSON */
    {DET("{\"seed\":13414724236876468656}"), 0, "line 1: invalid JSON at column 61: too big integer near '13414724236876468656'"},
    {R("{\"details\":{},\"generated_text\":5}"), 0, "line 1: generated_text is not a string (got a number)"},
    {DET("{\"generated_text\":[]}"), 0, "line 1: details.generated_text is not a string (got an array)"},
    /* bytes jansson refuses: invalid UTF-8, raw control characters, a raw NUL */
    {TOK("{\"id\":1,\"text\":\"na\xffve\"}"), 0, "line 1: invalid JSON at column 49: unable to decode byte 0xff near '\"na'"},
    {TOK("{\"id\":1,\"text\":\"\xc3\"}"), 0, "line 1: invalid JSON at column 47: unable to decode byte 0xc3"},
    {TOK("{\"id\":1,\"text\":\"\xed\xa0\x80\"}"), 0, "line 1: invalid JSON at column 47: unable to decode byte 0xed"},
    {TOK("{\"id\":1,\"text\":\"a\tb\"}"), 0, "line 1: invalid JSON at column 48: control character 0x9"},
    {RAW_NUL_LINE, sizeof RAW_NUL_LINE - 1, "line 1: invalid JSON at column 36: control character 0x0"},
    {TOK("{\"id\":1,\"text\":\"\\ud800\"}"), 0, "line 1: invalid JSON at column 54: invalid Unicode '\\uD800'"},
};

static void test_bad_lines(void **state)
{
    size_t i;
    (void)state;
    for (i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        size_t len = c->len ? c->len : strlen(c->line);
        maas_ndjson d;
        maas_msg m;
        maas_status st;
        size_t k;
        const char *err;

        maas_ndjson_init(&d, 0);
        assert_int_equal(maas_ndjson_feed(&d, c->line, len), MAAS_OK);
        assert_int_equal(maas_ndjson_feed(&d, "\n", 1), MAAS_OK);
        st = maas_ndjson_next(&d, &m);
        err = maas_ndjson_error(&d);
        if (st != MAAS_ERR_PROTOCOL || strncmp(err, c->err, strlen(c->err)) != 0) {
            print_error("case %zu: status %d, error \"%s\"; expected \"%s...\"\n", i, (int)st,
                        err, c->err);
            fail();
        }
        assert_int_equal(m.type, MAAS_MSG_NONE);
        assert_null(d.held);
        /* the reason is printable: jansson's quote of the input is sanitised */
        for (k = 0; err[k] != '\0'; k++)
            assert_true((unsigned char)err[k] >= 0x20 && (unsigned char)err[k] < 0x7F);
        {
            char saved[sizeof d.err];
            memcpy(saved, d.err, sizeof saved);
            assert_stays_failed(&d, MAAS_ERR_PROTOCOL, saved);
        }
        maas_ndjson_cleanup(&d);
    }
}

/* A line decoded alone through the whole decoder. */
static maas_status decode_one(maas_ndjson *d, const char *line, size_t len, maas_msg *m)
{
    maas_status st;
    maas_ndjson_reset(d);
    st = maas_ndjson_feed(d, line, len);
    if (st != MAAS_OK)
        return st;
    st = maas_ndjson_feed(d, "\n", 1);
    if (st != MAAS_OK)
        return st;
    return maas_ndjson_next(d, m);
}

static void test_good_edge_lines(void **state)
{
    maas_ndjson d;
    maas_msg m;
    const char *s;
    (void)state;
    maas_ndjson_init(&d, 0);

    /* embedded NUL in token text */
    s = TOK("{\"id\":5,\"text\":\"a\\u0000b\",\"special\":false}");
    assert_int_equal(decode_one(&d, s, strlen(s), &m), MAAS_OK);
    assert_int_equal(m.token.text_len, 3);
    assert_memory_equal(m.token.text, "a\0b", 4);

    /* unknown fields everywhere, no response level, top_tokens with content */
    s = "{\"x\":1,\"result\":{\"token\":{\"id\":4294967295,\"text\":\"t\",\"future\":[1,{}]},"
        "\"top_tokens\":[{\"id\":1,\"text\":\"u\",\"logprob\":-1}],\"requestId\":\"R\",\"more\":null}}";
    assert_int_equal(decode_one(&d, s, strlen(s), &m), MAAS_OK);
    assert_int_equal(m.type, MAAS_MSG_TOKEN);
    assert_true(m.token.id == UINT32_MAX);
    assert_false(m.token.has_logprob);
    assert_false(m.token.special);
    assert_string_equal(m.request_id, "R");

    /* duplicate keys: the last one wins */
    s = TOK("{\"id\":1,\"text\":\"first\",\"text\":\"last\",\"id\":2}");
    assert_int_equal(decode_one(&d, s, strlen(s), &m), MAAS_OK);
    assert_int_equal(m.token.id, 2);
    assert_string_equal(m.token.text, "last");

    /* seeds at the edges */
    s = DET("{\"seed\":\"18446744073709551615\"}");
    assert_int_equal(decode_one(&d, s, strlen(s), &m), MAAS_OK);
    assert_int_equal(m.type, MAAS_MSG_FINAL);
    assert_true(m.details.has_seed);
    assert_true(m.details.seed == UINT64_MAX);
    assert_false(m.has_token);
    s = DET("{\"seed\":\"9223372036854775808\"}");
    assert_int_equal(decode_one(&d, s, strlen(s), &m), MAAS_OK);
    assert_true(m.details.seed == UINT64_C(9223372036854775808));
    s = DET("{\"seed\":9223372036854775807,\"finish_reason\":\"FINISH_REASON_SOMETHING_NEW\"}");
    assert_int_equal(decode_one(&d, s, strlen(s), &m), MAAS_OK);
    assert_true(m.details.seed == (uint64_t)INT64_MAX);
    assert_int_equal(m.details.finish_reason, MAAS_FINISH_UNKNOWN);
    assert_string_equal(m.details.finish_reason_name, "FINISH_REASON_SOMETHING_NEW");
    maas_ndjson_cleanup(&d);
}

/* ------------------------------------------------------------------ */
/* finish, reset, memory                                               */
/* ------------------------------------------------------------------ */

static void test_finish(void **state)
{
    maas_ndjson d;
    maas_msg m;
    const char *two = TOKEN_LINE(1, "a") "\n" TOKEN_LINE(2, "b");
    (void)state;

    /* nothing at all */
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_DONE);
    maas_ndjson_cleanup(&d);

    /* a trailing unterminated line is the last message */
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, two, strlen(two)), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 1);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 2);
    assert_string_equal(m.token.text, "b");
    assert_null(d.held); /* a token line: scanned, no tree held */
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_DONE);
    assert_null(d.held);
    assert_int_equal(maas_ndjson_pending(&d), 0);
    maas_ndjson_cleanup(&d);

    /* finish without draining first still delivers everything in order */
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, two, strlen(two)), MAAS_OK);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 1);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 2);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_DONE);
    maas_ndjson_cleanup(&d);

    /* terminated input: nothing remains */
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, two, strlen(two)), MAAS_OK);
    assert_int_equal(maas_ndjson_feed(&d, "\r\n", 2), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_DONE);
    maas_ndjson_cleanup(&d);

    /* a cut-off last line is a protocol error naming its line */
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, two, strlen(two) - 3), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_ERR_PROTOCOL);
    assert_non_null(strstr(maas_ndjson_error(&d), "line 2: invalid JSON"));
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_ERR_PROTOCOL);
    maas_ndjson_cleanup(&d);
}

static void test_reset_reuses_buffer(void **state)
{
    maas_ndjson d;
    maas_msg m;
    const char *in = TOKEN_LINE(1, "a") "\n" TOKEN_LINE(2, "b") "\n{\"res";
    char *buf;
    size_t cap;
    (void)state;

    maas_ndjson_init(&d, 0);
    assert_null(d.buf);
    assert_int_equal(d.cap, 0);
    assert_int_equal(maas_ndjson_feed(&d, in, strlen(in)), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    buf = d.buf;
    cap = d.cap;
    assert_non_null(buf);
    assert_null(d.held); /* a token line: scanned, no tree held */

    maas_ndjson_reset(&d);
    assert_ptr_equal(d.buf, buf);
    assert_int_equal(d.cap, cap);
    assert_int_equal(maas_ndjson_pending(&d), 0);
    assert_null(d.held);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);

    /* a failure is forgotten and lines are counted from 1 again */
    assert_int_equal(maas_ndjson_feed(&d, "{}\n", 3), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_ERR_PROTOCOL);
    maas_ndjson_reset(&d);
    assert_string_equal(maas_ndjson_error(&d), "");
    assert_int_equal(maas_ndjson_feed(&d, in, strlen(in)), MAAS_OK);
    assert_ptr_equal(d.buf, buf);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 1);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 2);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_ERR_PROTOCOL);
    assert_non_null(strstr(maas_ndjson_error(&d), "line 3: invalid JSON"));
    maas_ndjson_cleanup(&d);
    assert_null(d.buf);
    assert_int_equal(d.cap, 0);
}

static void test_buffer_stays_bounded(void **state)
{
    enum { PIECE = 4096 };
    const size_t LINES = getenv("MAAS_UNDER_VALGRIND") ? 20000 : 100000; /* see sweep_stride() */
    strbuf in = {0};
    maas_ndjson d;
    maas_msg m;
    size_t i, off, maxcap = 0, count = 0;
    maas_status st;
    (void)state;

    for (i = 0; i < LINES; i++)
        sb_printf(&in,
                  "{\"result\":{\"response\":{\"token\":{\"id\":%zu,\"text\":\" w%zu\","
                  "\"logprob\":-0.5,\"special\":false},\"top_tokens\":[],"
                  "\"requestID\":\"8764a8c3-5f0e-4c7a-9d1b-2e6f3a9b0c11\"}}}%s",
                  i, i, i % 2 ? "\r\n" : "\n");

    maas_ndjson_init(&d, 0);
    for (off = 0; off < in.len; off += PIECE) {
        size_t n = in.len - off < PIECE ? in.len - off : PIECE;
        assert_int_equal(maas_ndjson_feed(&d, in.p + off, n), MAAS_OK);
        while ((st = maas_ndjson_next(&d, &m)) == MAAS_OK) {
            if (m.token.id != count)
                fail_msg("token %zu has id %u", count, m.token.id);
            count++;
        }
        assert_int_equal(st, MAAS_DONE);
        if (d.cap > maxcap)
            maxcap = d.cap;
        assert_true(maas_ndjson_pending(&d) < 512);
    }
    assert_int_equal(count, LINES);
    assert_int_equal(maas_ndjson_finish(&d, &m), MAAS_DONE);
    assert_int_equal(d.line_no, LINES);
    assert_true(maxcap < 64 * 1024);
    maas_ndjson_cleanup(&d);
    sb_free(&in);
}

static void test_compaction_is_lazy(void **state)
{
    maas_ndjson d;
    maas_msg m;
    char *buf;
    const char *line = TOKEN_LINE(9, "z") "\n";
    size_t n = strlen(line), h = n / 2, i, moves = 0;
    (void)state;

    /* Every feed leaves half a line pending, so the consumed prefix is never
       dropped for free: bytes are moved only when an append does not fit
       (about once per cap/n lines), and the buffer never grows. */
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, line, h), MAAS_OK);
    buf = d.buf;
    for (i = 0; i < 2000; i++) {
        size_t before = d.start;
        assert_int_equal(maas_ndjson_feed(&d, line + h, n - h), MAAS_OK);
        assert_int_equal(maas_ndjson_feed(&d, line, h), MAAS_OK);
        if (d.start < before)
            moves++;
        else
            assert_int_equal(d.start, before);
        assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
        assert_int_equal(m.token.id, 9);
        assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
        assert_int_equal(maas_ndjson_pending(&d), h);
        assert_ptr_equal(d.buf, buf); /* moved in place, never reallocated */
    }
    assert_int_equal(d.cap, 4096);
    assert_true(moves > 0);
    assert_true(moves <= 2000 * n / (4096 - 2 * n) + 1);
    maas_ndjson_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_whole),
        cmocka_unit_test(test_stream_every_split),
        cmocka_unit_test(test_stream_one_byte_at_a_time),
        cmocka_unit_test(test_stream_random_pieces),
        cmocka_unit_test(test_stream_crlf_splits),
        cmocka_unit_test(test_stream_blank_lines),
        cmocka_unit_test(test_stream_tight_cap),
        cmocka_unit_test(test_stream_error_fixture),
        cmocka_unit_test(test_many_lines_per_feed_and_split_crlf),
        cmocka_unit_test(test_blank_only_input),
        cmocka_unit_test(test_line_numbers_in_errors),
        cmocka_unit_test(test_line_cap_exact),
        cmocka_unit_test(test_line_cap_one_over),
        cmocka_unit_test(test_line_cap_unterminated_fails_in_feed),
        cmocka_unit_test(test_line_cap_after_complete_lines),
        cmocka_unit_test(test_line_cap_across_compaction),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_good_edge_lines),
        cmocka_unit_test(test_finish),
        cmocka_unit_test(test_reset_reuses_buffer),
        cmocka_unit_test(test_buffer_stays_bounded),
        cmocka_unit_test(test_compaction_is_lazy),
    };
    return cmocka_run_group_tests_name("ndjson", tests, NULL, NULL);
}
