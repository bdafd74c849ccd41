/*
 * Unit tests of the scanner's fast paths (lib/scan.c): the service's exact
 * line shape matched piece by piece, strings checked eight bytes at a time,
 * and the request id remembered from the line before. Each must read a
 * line exactly as the general path does, and decline what it declines.
 *
 * SPDX-License-Identifier: MIT
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "message.h"
#include "scan.h"

/* Scan a copy of `line` (the scanner writes into it); the copy in *keep. */
static maas_scan_result scan(const char *line, maas_msg *m, maas_scan_buf *b, char **keep)
{
    size_t n = strlen(line);
    char *copy = malloc(n + 1);
    assert_non_null(copy);
    memcpy(copy, line, n + 1);
    *keep = copy;
    return maas_scan_token_line(copy, n, m, b);
}

static const char *canon(char *out, size_t cap, const char *text, const char *rid)
{
    snprintf(out, cap,
             "{\"result\":{\"response\":{\"token\":{\"id\":1061,\"text\":\"%s\",\"logprob\":"
             "-0.11687851,\"special\":false},\"top_tokens\":[],\"requestID\":\"%s\"}}}",
             text, rid);
    return out;
}

/* The same line with a space after every ',' and ':': the general path. */
static const char *spaced(char *out, size_t cap, const char *line)
{
    size_t o = 0;
    int in_str = 0;
    for (; *line && o + 2 < cap; line++) {
        out[o++] = *line;
        if (*line == '"' && (o < 2 || out[o - 2] != '\\'))
            in_str = !in_str;
        if (!in_str && (*line == ',' || *line == ':'))
            out[o++] = ' ';
    }
    out[o] = '\0';
    return out;
}

static void same(const maas_msg *a, const maas_msg *b)
{
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->token.id, b->token.id);
    assert_int_equal(a->token.text_len, b->token.text_len);
    assert_memory_equal(a->token.text, b->token.text, a->token.text_len);
    assert_int_equal(a->token.has_logprob, b->token.has_logprob);
    assert_true(a->token.logprob == b->token.logprob);
    assert_int_equal(a->token.special, b->token.special);
    assert_string_equal(a->request_id, b->request_id);
}

/* Fast and general paths agree on every shape the fast one takes. */
static void test_fast_equals_general(void **state)
{
    static const char *const lines[] = {
        "{\"result\":{\"response\":{\"token\":{\"id\":7,\"text\":\"a\",\"logprob\":-0.5,"
        "\"special\":false},\"top_tokens\":[],\"requestID\":\"r\"}}}",
        "{\"result\":{\"response\":{\"token\":{\"id\":4294967295,\"text\":\"caf\xc3\xa9 \\u00e9\\n\","
        "\"special\":true},\"top_tokens\":[],\"requestID\":\"8764a8c3-deb2-4f1d-a60a-a47043b0e9f5\"}}}",
        "{\"result\":{\"response\":{\"token\":{\"id\":\"12\",\"text\":\"\",\"logprob\":\"-Infinity\","
        "\"special\":false},\"top_tokens\":[],\"requestID\":\"a\\\"b\"}}}",
        "{\"result\":{\"response\":{\"token\":{\"id\":-0,\"text\":\"0123456789abcdefghij\","
        "\"logprob\":-1234567890123456789012.5e-3,\"special\":false},\"top_tokens\":[],"
        "\"requestID\":\"\"}}}",
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        maas_scan_buf b1 = {0}, b2 = {0};
        maas_msg fast, slow;
        char sp[1024], *k1, *k2;
        assert_int_equal(scan(lines[i], &fast, &b1, &k1), MAAS_SCAN_TOKEN);
        assert_int_equal(scan(spaced(sp, sizeof sp, lines[i]), &slow, &b2, &k2), MAAS_SCAN_TOKEN);
        same(&fast, &slow);
        free(k1);
        free(k2);
        maas_scan_buf_free(&b1);
        maas_scan_buf_free(&b2);
    }
}

/* The fast path's prefix, then something it does not take: the general
   path decides, and declines what it must. */
static void test_near_misses_are_judged_in_full(void **state)
{
    static const struct {
        const char *line;
        maas_scan_result want;
    } cases[] = {
        /* an extra key after the canonical token */
        {"{\"result\":{\"response\":{\"token\":{\"id\":7,\"text\":\"a\",\"special\":false},"
         "\"top_tokens\":[],\"requestID\":\"r\",\"x\":1}}}", MAAS_SCAN_DECLINED},
        /* trailing bytes, then trailing whitespace (accepted by the general path) */
        {"{\"result\":{\"response\":{\"token\":{\"id\":7,\"text\":\"a\",\"special\":false},"
         "\"top_tokens\":[],\"requestID\":\"r\"}}}x", MAAS_SCAN_DECLINED},
        {"{\"result\":{\"response\":{\"token\":{\"id\":7,\"text\":\"a\",\"special\":false},"
         "\"top_tokens\":[],\"requestID\":\"r\"}}} ", MAAS_SCAN_TOKEN},
        /* keys in another order */
        {"{\"result\":{\"response\":{\"token\":{\"text\":\"a\",\"id\":7,\"special\":false},"
         "\"top_tokens\":[],\"requestID\":\"r\"}}}", MAAS_SCAN_TOKEN},
        /* a repeated logprob */
        {"{\"result\":{\"response\":{\"token\":{\"id\":7,\"text\":\"a\",\"logprob\":1,\"logprob\":2,"
         "\"special\":false},\"top_tokens\":[],\"requestID\":\"r\"}}}", MAAS_SCAN_DECLINED},
        /* "falsey", a non-empty top_tokens */
        {"{\"result\":{\"response\":{\"token\":{\"id\":7,\"text\":\"a\",\"special\":falsey},"
         "\"top_tokens\":[],\"requestID\":\"r\"}}}", MAAS_SCAN_DECLINED},
        {"{\"result\":{\"response\":{\"token\":{\"id\":7,\"text\":\"a\",\"special\":false},"
         "\"top_tokens\":[1],\"requestID\":\"r\"}}}", MAAS_SCAN_DECLINED},
        /* a leading-zero id, an id past uint32 */
        {"{\"result\":{\"response\":{\"token\":{\"id\":07,\"text\":\"a\",\"special\":false},"
         "\"top_tokens\":[],\"requestID\":\"r\"}}}", MAAS_SCAN_DECLINED},
        {"{\"result\":{\"response\":{\"token\":{\"id\":4294967296,\"text\":\"a\",\"special\":false},"
         "\"top_tokens\":[],\"requestID\":\"r\"}}}", MAAS_SCAN_DECLINED},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        maas_scan_buf b = {0};
        maas_msg m;
        char *k;
        if (scan(cases[i].line, &m, &b, &k) != cases[i].want)
            fail_msg("case %zu: %s", i, cases[i].line);
        free(k);
        maas_scan_buf_free(&b);
    }
}

/* Every kind of byte the word test must stop at, at every position of a
   long string: the outcome is the byte-by-byte one. */
static void test_word_at_a_time_strings(void **state)
{
    static const struct {
        const char *bytes;
        maas_scan_result want;
        const char *text; /* as delivered, when accepted */
    } odd[] = {
        {"\x01", MAAS_SCAN_DECLINED, NULL},    /* control character */
        {"\x1f", MAAS_SCAN_DECLINED, NULL},
        {"\\q", MAAS_SCAN_DECLINED, NULL},     /* bad escape */
        {"\xff", MAAS_SCAN_DECLINED, NULL},    /* invalid UTF-8 */
        {"\xc3", MAAS_SCAN_DECLINED, NULL},    /* cut UTF-8 */
        {"\xed\xa0\x80", MAAS_SCAN_DECLINED, NULL}, /* a surrogate */
        {"\x7f", MAAS_SCAN_TOKEN, "\x7f"},     /* DEL is plain */
        {"\xc3\xa9", MAAS_SCAN_TOKEN, "\xc3\xa9"},
        {"\\\"", MAAS_SCAN_TOKEN, "\""},
        {"\\\\", MAAS_SCAN_TOKEN, "\\"},
        {" ", MAAS_SCAN_TOKEN, " "},
    };
    size_t i, pos;
    (void)state;
    for (i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        for (pos = 0; pos < 20; pos++) {
            char text[64], want[64], line[512], *k;
            maas_scan_buf b = {0};
            maas_msg m;
            maas_scan_result r;
            memset(text, 'x', pos);
            snprintf(text + pos, sizeof text - pos, "%syyyyyyyyyyyyyyyy", odd[i].bytes);
            r = scan(canon(line, sizeof line, text, "rid"), &m, &b, &k);
            if (r != odd[i].want)
                fail_msg("byte %zu at %zu: %d, expected %d", i, pos, (int)r, (int)odd[i].want);
            if (r == MAAS_SCAN_TOKEN) {
                memset(want, 'x', pos);
                snprintf(want + pos, sizeof want - pos, "%syyyyyyyyyyyyyyyy", odd[i].text);
                assert_int_equal(m.token.text_len, strlen(want));
                assert_memory_equal(m.token.text, want, strlen(want));
            }
            free(k);
            /* the same bad byte in the request id */
            r = scan(canon(line, sizeof line, "t", text), &m, &b, &k);
            if (r != odd[i].want)
                fail_msg("rid: byte %zu at %zu: %d, expected %d", i, pos, (int)r,
                         (int)odd[i].want);
            free(k);
            maas_scan_buf_free(&b);
        }
    }
}

/* The remembered request id: taken only for the very same bytes. */
static void test_request_id_cache(void **state)
{
    maas_scan_buf b = {0};
    maas_msg m;
    char line[512], *k;
    (void)state;

    assert_int_equal(scan(canon(line, sizeof line, "a", "abcdef"), &m, &b, &k), MAAS_SCAN_TOKEN);
    assert_string_equal(m.request_id, "abcdef");
    free(k);
    /* same bytes: taken */
    assert_int_equal(scan(canon(line, sizeof line, "b", "abcdef"), &m, &b, &k), MAAS_SCAN_TOKEN);
    assert_string_equal(m.request_id, "abcdef");
    free(k);
    /* same length, other bytes: scanned anew */
    assert_int_equal(scan(canon(line, sizeof line, "c", "abcxyz"), &m, &b, &k), MAAS_SCAN_TOKEN);
    assert_string_equal(m.request_id, "abcxyz");
    free(k);
    /* the cached bytes as a prefix of a longer id, and of an invalid one */
    assert_int_equal(scan(canon(line, sizeof line, "d", "abcxyzw"), &m, &b, &k), MAAS_SCAN_TOKEN);
    assert_string_equal(m.request_id, "abcxyzw");
    free(k);
    assert_int_equal(scan(canon(line, sizeof line, "e", "abcxyzw\xff"), &m, &b, &k),
                     MAAS_SCAN_DECLINED);
    free(k);
    assert_int_equal(scan(canon(line, sizeof line, "f", "abcxyzw\x01"), &m, &b, &k),
                     MAAS_SCAN_DECLINED);
    free(k);
    /* an escaped id is never remembered, nor mistaken for its raw bytes */
    assert_int_equal(scan(canon(line, sizeof line, "g", "q\\u0041"), &m, &b, &k),
                     MAAS_SCAN_TOKEN);
    assert_string_equal(m.request_id, "qA");
    free(k);
    assert_int_equal(scan(canon(line, sizeof line, "h", "q\\u0041"), &m, &b, &k),
                     MAAS_SCAN_TOKEN);
    assert_string_equal(m.request_id, "qA");
    free(k);
    /* the remembered bytes, then anything but their closing quote */
    assert_int_equal(scan(canon(line, sizeof line, "i", "ab"), &m, &b, &k), MAAS_SCAN_TOKEN);
    free(k);
    assert_int_equal(scan("{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"j\","
                          "\"special\":false},\"top_tokens\":[],\"requestID\":\"abX}}}",
                          &m, &b, &k),
                     MAAS_SCAN_DECLINED);
    free(k);
    maas_scan_buf_free(&b);
    assert_int_equal(b.rid_len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_equals_general),
        cmocka_unit_test(test_near_misses_are_judged_in_full),
        cmocka_unit_test(test_word_at_a_time_strings),
        cmocka_unit_test(test_request_id_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
