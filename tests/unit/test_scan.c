/*
 * Unit tests of lib/scan.c, the strict token-line scanner: every line it
 * accepts must give exactly what jansson + maas_msg_from_json() give (the
 * reference), and every line it declines must still come out of the
 * decoder as jansson's result or jansson's error.
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
#include "scan.h"

/* ------------------------------------------------------------------ */
/* The reference and the comparisons                                   */
/* ------------------------------------------------------------------ */

#define FLAGS (JSON_ALLOW_NUL | JSON_DECODE_ANY)

/* What the jansson-only decoder made of one line (as line 1 of a stream). */
typedef struct ref {
    maas_status st;
    maas_msg m;
    json_t *root;
    char err[256];
} ref;


static void ref_decode(const char *line, size_t len, ref *r)
{
    json_error_t jerr;
    char why[160];

    memset(r, 0, sizeof *r);
    maas_msg_init(&r->m);
    r->root = json_loadb(line, len, FLAGS, &jerr);
    if (r->root == NULL) {
        r->st = MAAS_ERR_PROTOCOL;
        snprintf(r->err, sizeof r->err, "line 1: invalid JSON at column %d: %s", jerr.column,
                 jerr.text);
        maas_printable(r->err);
        return;
    }
    r->st = maas_msg_from_json(&r->m, r->root, why, sizeof why);
    if (r->st != MAAS_OK) {
        snprintf(r->err, sizeof r->err, "line 1: %s", why);
        maas_printable(r->err);
        maas_msg_init(&r->m);
    }
}

static void ref_free(ref *r)
{
    json_decref(r->root);
    r->root = NULL;
}

static void assert_same_double(double a, double b)
{
    if (isnan(a) && isnan(b))
        return;
    assert_memory_equal(&a, &b, sizeof a);
}

/* Field by field, bytes for bytes. */
static void assert_same_msg(const maas_msg *a, const maas_msg *b)
{
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->has_token, b->has_token);
    assert_int_equal(a->token.id, b->token.id);
    assert_int_equal(a->token.text_len, b->token.text_len);
    assert_memory_equal(a->token.text, b->token.text, a->token.text_len + 1); /* + its NUL */
    assert_int_equal(a->token.has_logprob, b->token.has_logprob);
    assert_same_double(a->token.logprob, b->token.logprob);
    assert_int_equal(a->token.special, b->token.special);
    assert_int_equal(a->token.index, b->token.index);
    assert_string_equal(a->request_id, b->request_id);
    assert_int_equal(a->grpc_code, b->grpc_code);
    assert_string_equal(a->error_message, b->error_message);
    assert_int_equal(a->details.finish_reason, b->details.finish_reason);
    assert_string_equal(a->details.finish_reason_name, b->details.finish_reason_name);
    assert_int_equal(a->details.generated_tokens, b->details.generated_tokens);
    assert_int_equal(a->details.has_seed, b->details.has_seed);
    assert_true(a->details.seed == b->details.seed);
    assert_int_equal(a->details.generated_text_len, b->details.generated_text_len);
    assert_memory_equal(a->details.generated_text, b->details.generated_text,
                        a->details.generated_text_len);
}

/* The scanner on an exact-size heap copy of the line (over-reads show in
   ASan/valgrind). *copy must be freed by the caller after use of *m. */
static maas_scan_result scan_copy(const char *line, size_t len, maas_msg *m, maas_scan_buf *b,
                                  char **copy)
{
    *copy = malloc(len ? len : 1);
    assert_non_null(*copy);
    if (len)
        memcpy(*copy, line, len);
    return maas_scan_token_line(*copy, len, m, b);
}

/* One line through the whole decoder, fed in two pieces. */
static maas_status decode_one(maas_ndjson *d, const char *line, size_t len, maas_msg *m)
{
    maas_status st;
    maas_ndjson_reset(d);
    st = maas_ndjson_feed(d, line, len / 2);
    if (st != MAAS_OK)
        return st;
    st = maas_ndjson_feed(d, line + len / 2, len - len / 2);
    if (st != MAAS_OK)
        return st;
    st = maas_ndjson_feed(d, "\n", 1);
    if (st != MAAS_OK)
        return st;
    return maas_ndjson_next(d, m);
}

/* The decoder gives the reference's message or the reference's error.
   Framing first: a '\n' would split the line (not one line then), one
   trailing '\r' is the terminator's, and blank lines are skipped. */
static void assert_decoder_matches_ref(const char *line, size_t len)
{
    maas_ndjson d;
    maas_msg m;
    maas_status st;
    size_t i, jlen = len;
    int blank = 1;
    ref r;

    if (len > 0 && memchr(line, '\n', len) != NULL)
        return;
    if (jlen > 0 && line[jlen - 1] == '\r')
        jlen--;
    for (i = 0; i < jlen; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r')
            blank = 0;
    maas_ndjson_init(&d, 0);
    st = decode_one(&d, line, len, &m);
    if (blank) {
        assert_int_equal(st, MAAS_DONE);
        maas_ndjson_cleanup(&d);
        return;
    }
    ref_decode(line, jlen, &r);
    assert_int_equal(st, r.st);
    if (st == MAAS_OK) {
        assert_same_msg(&m, &r.m);
    } else {
        assert_string_equal(maas_ndjson_error(&d), r.err);
        assert_int_equal(m.type, MAAS_MSG_NONE);
    }
    maas_ndjson_cleanup(&d);
    ref_free(&r);
}

/* The scanner accepts the line and agrees with the reference; so does the decoder. */
static void accept_len(const char *line, size_t len, maas_msg *out_copy)
{
    maas_scan_buf b = {0};
    maas_msg m;
    char *copy;
    ref r;

    ref_decode(line, len, &r);
    if (r.st != MAAS_OK)
        fail_msg("the reference refuses %s: %s", line, r.err);
    if (scan_copy(line, len, &m, &b, &copy) != MAAS_SCAN_TOKEN)
        fail_msg("declined: %s", line);
    assert_int_equal(m.type, MAAS_MSG_TOKEN);
    assert_same_msg(&m, &r.m);
    if (out_copy != NULL)
        *out_copy = m; /* for checks on the values; strings die below */
    free(copy);
    maas_scan_buf_free(&b);
    ref_free(&r);
    assert_decoder_matches_ref(line, len);
}

static void accept_line(const char *line)
{
    accept_len(line, strlen(line), NULL);
}

/* The scanner declines the line, leaves it alone, and the decoder still
   gives jansson's message or error. */
static void decline_len(const char *line, size_t len)
{
    maas_scan_buf b = {0};
    maas_msg m;
    char *copy;

    if (scan_copy(line, len, &m, &b, &copy) != MAAS_SCAN_DECLINED)
        fail_msg("accepted: %s", line);
    assert_int_equal(m.type, MAAS_MSG_NONE);
    assert_int_equal(m.has_token, 0);
    if (len)
        assert_memory_equal(copy, line, len);
    free(copy);
    maas_scan_buf_free(&b);
    assert_decoder_matches_ref(line, len);
}

static void decline_line(const char *line)
{
    decline_len(line, strlen(line));
}

/* Accept, and also check the values against what the test expects. */
static void accept_expect(const char *line, uint32_t id, const char *text, size_t text_len,
                          const char *rid)
{
    maas_scan_buf b = {0};
    maas_msg m;
    char *copy;

    accept_line(line);
    assert_int_equal(scan_copy(line, strlen(line), &m, &b, &copy), MAAS_SCAN_TOKEN);
    assert_int_equal(m.token.id, id);
    assert_int_equal(m.token.text_len, text_len);
    assert_memory_equal(m.token.text, text, text_len);
    assert_int_equal(m.token.text[text_len], '\0');
    assert_string_equal(m.request_id, rid);
    free(copy);
    maas_scan_buf_free(&b);
}

#define R(x) "{\"result\":{\"response\":" x "}}"
#define TOK(x) R("{\"token\":" x ",\"top_tokens\":[],\"requestID\":\"r-1\"}")
#define TXT(x) TOK("{\"id\":7,\"text\":\"" x "\",\"logprob\":-0.5,\"special\":false}")
#define LP(x) TOK("{\"id\":7,\"text\":\"t\",\"logprob\":" x ",\"special\":false}")
#define LP_HEAD "{\"result\":{\"response\":{\"token\":{\"id\":7,\"text\":\"t\",\"logprob\":"
#define LP_TAIL ",\"special\":false},\"top_tokens\":[],\"requestID\":\"r-1\"}}}"
#define ID(x) TOK("{\"id\":" x ",\"text\":\"t\"}")

/* ------------------------------------------------------------------ */
/* Accepted lines                                                      */
/* ------------------------------------------------------------------ */

static const char guide_line[] =
    "{\"result\":{\"response\":{\"token\":{\"id\":1061,\"text\":\"Data\",\"logprob\":-0.11687851,"
    "\"special\":false},\"top_tokens\":[],\"requestID\":\"8764a8c3-deb2-4f1d-a60a-a47043b0e9f5\"}}}";

/* The guide prints it over several lines; one line of the stream never
   holds a newline, but the scanner takes JSON whitespace as jansson does. */
static const char guide_pretty[] =
    "{\n"
    "  \"result\": {\n"
    "    \"response\": {\n"
    "      \"token\": {\n"
    "        \"id\": 1061,\n"
    "        \"text\": \"Data\",\n"
    "        \"logprob\": -0.11687851,\n"
    "        \"special\": false\n"
    "      },\n"
    "      \"top_tokens\": [],\n"
    "      \"requestID\": \"8764a8c3-deb2-4f1d-a60a-a47043b0e9f5\"\n"
    "    }\n"
    "  }\n"
    "}";

static void test_guide_lines(void **state)
{
    maas_msg m;
    (void)state;
    accept_len(guide_line, strlen(guide_line), &m);
    assert_int_equal(m.token.id, 1061);
    assert_int_equal(m.token.text_len, 4);
    assert_true(m.token.has_logprob);
    assert_true(m.token.logprob == -0.11687851);
    assert_false(m.token.special);
    assert_int_equal(m.token.index, 0);
    accept_expect(guide_line, 1061, "Data", 4, "8764a8c3-deb2-4f1d-a60a-a47043b0e9f5");
    accept_expect(guide_pretty, 1061, "Data", 4, "8764a8c3-deb2-4f1d-a60a-a47043b0e9f5");
    /* the guide's last chunk is a final message: declined, jansson maps it */
    decline_line("{\"result\":{\"response\":{\"token\":{\"id\":330,\"text\":\" \\\"\",\"logprob\":"
                 "-4.5329647,\"special\":false},\"top_tokens\":[],\"generated_text\":\"Data and "
                 "information\\n\\n* Data is the \\\"\",\"details\":{\"finish_reason\":"
                 "\"FINISH_REASON_LENGTH\",\"generated_tokens\":250,\"seed\":"
                 "\"13414724236876468656\"},\"requestID\":\"e8fa7572-9ea8-4acc-816e-2c24ec47cd8a\"}}}");
}

/* Captured from maas-emulator with curl (docs/emulator.md), one per kind of text. */
static const char *const emulator_lines[] = {
    "{\"result\":{\"response\":{\"token\":{\"id\":3213063683,\"text\":\" is\",\"logprob\":-0.38019607,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":655135397,\"text\":\"\\\"\",\"logprob\":-1.1935908,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":2511554044,\"text\":\" 1e10\",\"logprob\":-2.3640704,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1960210183,\"text\":\" are\",\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":2621487839,\"text\":\" \xd8\xa7\xd9\x84\xd8\xb9\xd8\xb1\xd8\xa8\xd9\x8a\xd8\xa9\",\"logprob\":-0.02808451,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":3850020981,\"text\":\" back\\\\slash\",\"logprob\":-1.8399536,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":3291581183,\"text\":\" \xe6\x97\xa5\xe6\x9c\xac\",\"logprob\":-4.429917,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":3745249323,\"text\":\"\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd\",\"logprob\":-2.571436,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":2274317941,\"text\":\"\\n\\n\",\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":3771964547,\"text\":\" caf\xc3\xa9\",\"logprob\":-1.3413842,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":216339425,\"text\":\" \xe2\x80\xa8sep\",\"logprob\":-2.6987335,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":688966721,\"text\":\" brown\",\"logprob\":-0.74531532,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1939439022,\"text\":\" C:\\\\path\\\\file\",\"logprob\":-0.99839766,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1319191316,\"text\":\" tab\\there\",\"logprob\":-1.0946666,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":4239434402,\"text\":\" unit\\u001fsep\",\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":973910158,\"text\":\" \\\\n\",\"logprob\":-1.6715106,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":668889397,\"text\":\" \xf0\x9f\x99\x82\",\"logprob\":-3.4773908,\"special\":false},\"top_tokens\":[],\"requestID\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":2,\"text\":\"</s>\",\"logprob\":-0.00012207031,\"special\":true},\"top_tokens\":[],\"requestID\":\"53af3be7-b31e-4022-84b8-c4a008812845\"}}}",
};

static void test_emulator_lines(void **state)
{
    size_t i;
    (void)state;
    for (i = 0; i < sizeof emulator_lines / sizeof emulator_lines[0]; i++)
        accept_line(emulator_lines[i]);
    accept_expect(emulator_lines[5], 3850020981u, " back\\slash", 11,
                  "4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4");
    accept_expect(emulator_lines[14], 4239434402u, " unit\x1fsep", 9,
                  "4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4");
    /* the emulator's final and error lines are not token lines */
    decline_line("{\"result\":{\"response\":{\"token\":{\"id\":2,\"text\":\"</s>\",\"logprob\":"
                 "-0.00012207031,\"special\":true},\"top_tokens\":[],\"generated_text\":\"x\","
                 "\"details\":{\"finish_reason\":\"FINISH_REASON_EOS_TOKEN\",\"generated_tokens\":58,"
                 "\"seed\":\"13457008732562869140\"},\"requestID\":\"53af3be7-b31e-4022-84b8-c4a008812845\"}}}");
    decline_line("{\"error\":{\"code\":14,\"message\":\"sorry, we are at maximum capacity. Please "
                 "come back later\",\"details\":[{\"@type\":\"type.googleapis.com/google.protobuf."
                 "StringValue\",\"value\":\"4d8648fa-2ff4-40a7-89b7-bdb4a7e64ca4\"}]}}");
    decline_line("{\"result\": {\"response\": {\"token\": "); /* malformed-after */
}

static void test_escapes(void **state)
{
    (void)state;
    accept_expect(TXT("\\\""), 7, "\"", 1, "r-1");
    accept_expect(TXT("\\\\"), 7, "\\", 1, "r-1");
    accept_expect(TXT("\\/"), 7, "/", 1, "r-1");
    accept_expect(TXT("\\b"), 7, "\b", 1, "r-1");
    accept_expect(TXT("\\f"), 7, "\f", 1, "r-1");
    accept_expect(TXT("\\n"), 7, "\n", 1, "r-1");
    accept_expect(TXT("\\r"), 7, "\r", 1, "r-1");
    accept_expect(TXT("\\t"), 7, "\t", 1, "r-1");
    accept_expect(TXT("a\\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti"), 7, "a\"b\\c/d\be\ff\ng\rh\ti", 17, "r-1");
    accept_expect(TXT("\\u0041"), 7, "A", 1, "r-1");
    accept_expect(TXT("\\u007f"), 7, "\x7f", 1, "r-1");
    accept_expect(TXT("\\u0080"), 7, "\xc2\x80", 2, "r-1");
    accept_expect(TXT("\\u00e9\\u00E9"), 7, "\xc3\xa9\xc3\xa9", 4, "r-1");
    accept_expect(TXT("\\u07ff"), 7, "\xdf\xbf", 2, "r-1");
    accept_expect(TXT("\\u0800"), 7, "\xe0\xa0\x80", 3, "r-1");
    accept_expect(TXT("\\u20AC"), 7, "\xe2\x82\xac", 3, "r-1");
    accept_expect(TXT("\\u2028"), 7, "\xe2\x80\xa8", 3, "r-1");
    accept_expect(TXT("\\uffff"), 7, "\xef\xbf\xbf", 3, "r-1");
    accept_expect(TXT("\\ud83d\\ude42"), 7, "\xf0\x9f\x99\x82", 4, "r-1"); /* U+1F642 */
    accept_expect(TXT("\\uD83D\\uDC4D\\uD83C\\uDFFD"), 7, "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", 8, "r-1");
    accept_expect(TXT("\\ud800\\udc00"), 7, "\xf0\x90\x80\x80", 4, "r-1"); /* U+10000 */
    accept_expect(TXT("\\udbff\\udfff"), 7, "\xf4\x8f\xbf\xbf", 4, "r-1"); /* U+10FFFF */
    accept_expect(TXT("\\u001f"), 7, "\x1f", 1, "r-1");
    /* U+0000: allowed in values (JSON_ALLOW_NUL), a NUL byte inside text_len */
    accept_expect(TXT("\\u0000"), 7, "\0", 1, "r-1");
    accept_expect(TXT("a\\u0000b"), 7, "a\0b", 3, "r-1");
    /* escaped request ids are unescaped too; with a NUL the C string stops there, as jansson's */
    accept_expect(R("{\"token\":{\"text\":\"x\\n\"},\"requestID\":\"r\\u002d\\/2\"}"), 0, "x\n", 2, "r-/2");
    accept_expect(R("{\"requestID\":\"ab\\u0000cd\",\"token\":{\"text\":\"\\t\"}}"), 0, "\t", 1, "ab");
    /* the longest escape growth: every byte an escape */
    accept_line(TXT("\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\"));
    accept_line(TXT("\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9"));
}

static void test_utf8(void **state)
{
    (void)state;
    accept_expect(TXT("\xc2\x80"), 7, "\xc2\x80", 2, "r-1");            /* U+0080 */
    accept_expect(TXT("\xdf\xbf"), 7, "\xdf\xbf", 2, "r-1");            /* U+07FF */
    accept_expect(TXT("\xe0\xa0\x80"), 7, "\xe0\xa0\x80", 3, "r-1");    /* U+0800 */
    accept_expect(TXT("\xed\x9f\xbf"), 7, "\xed\x9f\xbf", 3, "r-1");    /* U+D7FF */
    accept_expect(TXT("\xee\x80\x80"), 7, "\xee\x80\x80", 3, "r-1");    /* U+E000 */
    accept_expect(TXT("\xef\xbf\xbf"), 7, "\xef\xbf\xbf", 3, "r-1");    /* U+FFFF */
    accept_expect(TXT("\xf0\x90\x80\x80"), 7, "\xf0\x90\x80\x80", 4, "r-1"); /* U+10000 */
    accept_expect(TXT("\xf4\x8f\xbf\xbf"), 7, "\xf4\x8f\xbf\xbf", 4, "r-1"); /* U+10FFFF */
    accept_expect(TXT("na\xc3\xafve"), 7, "na\xc3\xafve", 6, "r-1");
    accept_expect(TXT("\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x92\xbb"), 7,
                  "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x92\xbb", 11, "r-1"); /* ZWJ sequence */
    accept_expect(TXT("\x7f"), 7, "\x7f", 1, "r-1"); /* DEL is not a control character for JSON */
    accept_expect(TXT("\xe6\x97\xa5\\n\xf0\x9f\x99\x82"), 7, "\xe6\x97\xa5\n\xf0\x9f\x99\x82", 8, "r-1");
    accept_expect(R("{\"token\":{\"text\":\"\"},\"requestID\":\"\xc3\xa9t\xc3\xa9\"}"), 0, "", 0,
                  "\xc3\xa9t\xc3\xa9");
}

static void test_whitespace_and_order(void **state)
{
    (void)state;
    accept_line(" \t\r{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}} \t\r");
    accept_line("{ \"result\" : { \"response\" : { \"token\" : { \"id\" : 1 , \"text\" : \"a\" , "
                "\"logprob\" : -1.5 , \"special\" : true } , \"top_tokens\" : [ ] , "
                "\"requestID\" : \"r\" } } }");
    accept_line("{\t\"result\"\t:\t{\r\"response\"\r:\r{\n\"token\"\n:\n{\"text\":\"a\"}\t,\t"
                "\"top_tokens\":[\t\r\n ]}\n}\r}");
    /* token keys in every order */
    accept_line(TOK("{\"special\":true,\"logprob\":-2,\"text\":\"b\",\"id\":3}"));
    accept_line(TOK("{\"text\":\"b\",\"id\":3,\"special\":false,\"logprob\":-2.25}"));
    accept_line(TOK("{\"logprob\":-0.5,\"id\":3,\"text\":\"b\",\"special\":false}"));
    accept_line(TOK("{\"id\":3,\"special\":false,\"text\":\"b\",\"logprob\":-0.5}"));
    /* response keys in every order */
    accept_line(R("{\"requestID\":\"r\",\"top_tokens\":[],\"token\":{\"id\":1,\"text\":\"a\"}}"));
    accept_line(R("{\"top_tokens\":[],\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":\"r\"}"));
    accept_line(R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":\"r\",\"top_tokens\":[]}"));
}

static void test_optional_fields(void **state)
{
    maas_msg m;
    const char *s;
    (void)state;

    s = TOK("{\"text\":\"a\"}"); /* no id: protobuf's 0 */
    accept_len(s, strlen(s), &m);
    assert_int_equal(m.token.id, 0);
    assert_false(m.token.has_logprob);
    assert_false(m.token.special);
    accept_line(TOK("{\"id\":1,\"text\":\"a\",\"special\":true}"));
    accept_line(TOK("{\"id\":1,\"text\":\"a\",\"logprob\":-1}"));
    accept_line(R("{\"token\":{\"id\":1,\"text\":\"a\"}}")); /* no top_tokens, no request id */
    accept_line(R("{\"token\":{\"id\":1,\"text\":\"\"},\"requestID\":\"\"}")); /* empty strings */
    /* the three request id spellings */
    accept_expect(R("{\"token\":{\"text\":\"a\"},\"request_id\":\"s\"}"), 0, "a", 1, "s");
    accept_expect(R("{\"token\":{\"text\":\"a\"},\"requestId\":\"c\"}"), 0, "a", 1, "c");
    /* no response level (message.c takes the result as the response) */
    accept_expect("{\"result\":{\"token\":{\"id\":9,\"text\":\"z\"},\"top_tokens\":[],"
                  "\"requestID\":\"q\"}}", 9, "z", 1, "q");
    accept_line("{\"result\":{\"token\":{\"id\":9,\"text\":\"z\"}}}");
}

static void test_numbers(void **state)
{
    maas_msg m;
    const char *s;
    (void)state;

    /* ids as message.c takes them */
    accept_expect(ID("0"), 0, "t", 1, "r-1");
    accept_expect(ID("-0"), 0, "t", 1, "r-1");
    accept_expect(ID("4294967295"), UINT32_MAX, "t", 1, "r-1");
    accept_expect(ID("2147483648"), 2147483648u, "t", 1, "r-1");
    accept_expect(ID("\"42\""), 42, "t", 1, "r-1");
    accept_expect(ID("\"007\""), 7, "t", 1, "r-1");
    accept_expect(ID("\"4294967295\""), UINT32_MAX, "t", 1, "r-1");
    accept_expect(ID("\"000000000000000000000000004294967295\""), UINT32_MAX, "t", 1, "r-1");

    /* logprobs: every one bit-identical to jansson's */
    accept_line(LP("-0.11687851"));
    accept_line(LP("-4.5329647"));
    accept_line(LP("-0.00012207031"));
    accept_line(LP("0"));
    accept_line(LP("1"));
    accept_line(LP("-17"));
    accept_line(LP("0.0"));
    accept_line(LP("-0.0"));
    accept_line(LP("1e0"));
    accept_line(LP("1E+2"));
    accept_line(LP("-1.2345678e-05"));
    accept_line(LP("-9.5367432e-07"));
    accept_line(LP("123456789012345678"));
    accept_line(LP("9007199254740993"));
    accept_line(LP("-9223372036854775808"));
    accept_line(LP("9223372036854775807"));
    accept_line(LP("9007199254740993.0"));
    accept_line(LP("0.1000000000000000055511151231257827"));
    accept_line(LP("-3.4028235e+38"));
    accept_line(LP("1.7976931348623157e308"));
    accept_line(LP("2.2250738585072011e-308"));
    accept_line(LP("4.9406564584124654e-324"));
    accept_line(LP("1e-400"));  /* underflow: jansson accepts it as 0 */
    accept_line(LP("-1e-400"));
    accept_line(LP("0e999999999999"));
    accept_line(LP("1e22"));
    accept_line(LP("1e23"));
    accept_line(LP("1e-22"));
    accept_line(LP("1e-23"));
    accept_line(LP("0.000000000000000000000000000001"));
    accept_line(LP("12345678901234567890.5"));
    accept_line(LP("\"NaN\""));
    accept_line(LP("\"Infinity\""));
    accept_line(LP("\"-Infinity\""));

    /* -0 is the integer 0 for jansson: +0.0, where -0.0 keeps its sign */
    s = LP("-0");
    accept_len(s, strlen(s), &m);
    assert_false(signbit(m.token.logprob));
    s = LP("-0.0");
    accept_len(s, strlen(s), &m);
    assert_true(signbit(m.token.logprob));
    s = LP("\"NaN\"");
    accept_len(s, strlen(s), &m);
    assert_true(isnan(m.token.logprob));
    s = LP("\"-Infinity\"");
    accept_len(s, strlen(s), &m);
    assert_true(isinf(m.token.logprob) && m.token.logprob < 0);
}

/* A deterministic sweep of logprobs as float32 values print (what the
   server sends), through both paths. */
static void test_number_sweep(void **state)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    int i;
    (void)state;
    for (i = 0; i < 3000; i++) {
        char num[64], line[256];
        float f;
        uint32_t bits;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bits = (uint32_t)x;
        memcpy(&f, &bits, sizeof f);
        if (isnan(f) || isinf(f))
            continue;
        if (i % 2)
            f = -fabsf(f) * 1e-30f; /* mostly small negatives, like logprobs */
        switch (i % 6) {
        case 0: snprintf(num, sizeof num, "%.9g", (double)f); break;
        case 1: snprintf(num, sizeof num, "%.8g", (double)f); break;
        case 2: snprintf(num, sizeof num, "%.7g", (double)f); break;
        case 3: snprintf(num, sizeof num, "%.17g", (double)f); break;
        case 4: snprintf(num, sizeof num, "%.3e", (double)f); break;
        default: snprintf(num, sizeof num, "%.10f", (double)f); break;
        }
        snprintf(line, sizeof line, "%s%s%s", LP_HEAD, num, LP_TAIL);
        accept_line(line);
    }
}

/* ------------------------------------------------------------------ */
/* Declined lines                                                      */
/* ------------------------------------------------------------------ */

static const char *const declined[] = {
    /* not token lines */
    "{\"error\":{\"code\":3,\"message\":\"bad\",\"details\":[]}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}},\"error\":{\"code\":3}}",
    "{\"error\":\"invalid_client\",\"error_description\":\"x\"}",
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"details\":{\"finish_reason\":\"FINISH_REASON_LENGTH\"}}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"generated_text\":\"a\"}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"generatedText\":\"a\"}"),
    R("{\"details\":{\"generated_tokens\":1},\"requestID\":\"r\"}"),
    R("{}"),
    R("{\"top_tokens\":[],\"requestID\":\"r\"}"),
    "{}",
    "{\"result\":{}}",
    "{\"result\":null}",
    "{\"result\":5}",
    "{\"result\":{\"response\":[]}}",
    "{\"result\":{\"response\":null}}",
    "[1,2]",
    "42",
    "null",
    "\"result\"",
    "",
    " ",
    /* unknown keys, anywhere */
    "{\"x\":1,\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}},\"x\":1}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}},\"x\":1}}",
    "{\"result\":{\"x\":1,\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}",
    "{\"result\":{\"requestID\":\"outer\",\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}},\"requestID\":\"outer\"}}",
    "{\"result\":{\"token\":{\"id\":1,\"text\":\"b\"},\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}",
    R("{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"more\":null}"),
    TOK("{\"id\":1,\"text\":\"a\",\"future\":[1,{}]}"),
    TOK("{\"id\":1,\"text\":\"a\",\"Text\":\"b\"}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"RequestID\":\"r\"}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"top_tokens\":[{\"id\":1,\"text\":\"u\",\"logprob\":-1}]}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"top_tokens\":[1]}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"top_tokens\":{}}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"top_tokens\":null}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"top_tokens\":[}"),
    /* keys with escapes (jansson reads them fine; the scanner does not try) */
    TOK("{\"id\":1,\"t\\u0065xt\":\"a\"}"),
    "{\"r\\u0065sult\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}",
    TOK("{\"id\":1,\"text\":\"a\",\"\\u0000\":1}"),
    TOK("{\"id\":1,\"text\":\"a\",\"te\\\"xt\":1}"),
    /* repeated keys and request id spellings (last wins / first wins there) */
    TOK("{\"id\":1,\"text\":\"first\",\"text\":\"last\",\"id\":2}"),
    TOK("{\"id\":1,\"id\":2,\"text\":\"a\"}"),
    TOK("{\"text\":\"a\",\"logprob\":-1,\"logprob\":-2}"),
    TOK("{\"text\":\"a\",\"special\":true,\"special\":false}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"token\":{\"id\":2,\"text\":\"b\"}}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"top_tokens\":[],\"top_tokens\":[]}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":\"a\",\"requestID\":\"b\"}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":\"a\",\"request_id\":\"b\"}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestId\":\"a\",\"requestID\":\"b\"}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":\"a\",\"requestId\":5}"),
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}},\"result\":{}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}},\"response\":{}}}",
    /* nulls (absent for message.c) */
    TOK("{\"id\":null,\"text\":\"a\"}"),
    TOK("{\"id\":1,\"text\":null}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":null}"),
    TOK("{\"id\":1,\"text\":\"a\",\"special\":null}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":null}"),
    R("{\"token\":null}"),
    /* wrong types */
    R("{\"token\":5}"),
    R("{\"token\":\"a\"}"),
    R("{\"token\":[]}"),
    R("{\"token\":{}}"),
    TOK("{\"id\":1}"),
    TOK("{\"id\":1,\"text\":5}"),
    TOK("{\"id\":1,\"text\":[\"a\"]}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":\"abc\"}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":\"nan\"}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":\"-1.5\"}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":\"N\\u0061N\"}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":\"NaN\\u0000x\"}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":\"NaNx\"}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":\"+Infinity\"}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":true}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":[]}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":NaN}"),
    TOK("{\"id\":1,\"text\":\"a\",\"logprob\":-Infinity}"),
    TOK("{\"id\":1,\"text\":\"a\",\"special\":\"yes\"}"),
    TOK("{\"id\":1,\"text\":\"a\",\"special\":1}"),
    TOK("{\"id\":1,\"text\":\"a\",\"special\":True}"),
    TOK("{\"id\":1,\"text\":\"a\",\"special\":truex}"),
    TOK("{\"id\":1,\"text\":\"a\",\"special\":tru}"),
    TOK("{\"id\":1,\"text\":\"a\",\"special\":fals}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":5}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"request_id\":{}}"),
    /* ids message.c refuses, or jansson */
    ID("-1"),
    ID("1.5"),
    ID("1.0"),
    ID("1e3"),
    ID("1E3"),
    ID("-0.0"),
    ID("4294967296"),
    ID("99999999999"),
    ID("9223372036854775808"),
    ID("01"),
    ID("00"),
    ID("-"),
    ID("+1"),
    ID("0x10"),
    ID("true"),
    ID("\"abc\""),
    ID("\"-3\""),
    ID("\"-0\""),
    ID("\"\""),
    ID("\" 1\""),
    ID("\"+1\""),
    ID("\"1.0\""),
    ID("\"4294967296\""),
    ID("\"99999999999999999999999999\""),
    ID("\"\\u0031\""),
    /* numbers jansson refuses */
    LP("01"),
    LP("-01.5"),
    LP("1."),
    LP(".5"),
    LP("-"),
    LP("+1"),
    LP("1e"),
    LP("1e+"),
    LP("1.5e-"),
    LP("1.5.2"),
    LP("0x1p3"),
    LP("1e999"),
    LP("-1e400"),
    LP("1.8e308"),
    LP("9223372036854775808"),
    LP("-9223372036854775809"),
    LP("123456789012345678901234567890123456789"),
    LP("--1"),
    LP("- 1"),
    LP("1 2"),
    LP("Infinity"),
    /* strings jansson refuses */
    TXT("na\xffve"),
    TXT("\xc3"),
    TXT("\xc3("),
    TXT("\xc0\x80"),                 /* overlong NUL */
    TXT("\xc1\xbf"),                 /* overlong */
    TXT("\xe0\x80\xaf"),             /* overlong '/' */
    TXT("\xe0\x9f\xbf"),             /* overlong */
    TXT("\xed\xa0\x80"),             /* UTF-8 encoded surrogate */
    TXT("\xed\xbf\xbf"),
    TXT("\xf0\x8f\xbf\xbf"),         /* overlong */
    TXT("\xf4\x90\x80\x80"),         /* above U+10FFFF */
    TXT("\xf5\x80\x80\x80"),
    TXT("\xf8\x88\x80\x80\x80"),
    TXT("\x80"),
    TXT("\xbf"),
    TXT("\xfe"),
    TXT("\xe6\x97"),                 /* cut short */
    TXT("\xf0\x9f\x99"),
    TXT("a\tb"),
    TXT("a\nb"),
    TXT("a\rb"),
    TXT("\x1f"),
    TXT("\x01"),
    TXT("\\ud800"),                  /* lone high surrogate */
    TXT("\\ud83dx"),
    TXT("\\ud83d\\n"),
    TXT("\\ud83d\\u0041"),           /* high then not a low surrogate */
    TXT("\\ud83d\\ud83d"),
    TXT("\\udc00"),                  /* lone low surrogate */
    TXT("\\ude42\\ud83d"),
    TXT("\\u12"),
    TXT("\\u12g4"),
    TXT("\\uZZZZ"),
    TXT("\\x41"),
    TXT("\\a"),
    TXT("\\0"),
    TXT("\\'"),
    TXT("\\U0041"),
    TXT("\\"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":\"\xff\"}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":\"\\ud800\"}"),
    R("{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":\"a\tb\"}"),
    /* framing and syntax */
    "{\"result\": ",
    "{\"result\":{}} x",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}} x",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}{}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\",}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,,\"text\":\"a\"}}}}",
    "{\"result\":{\"response\":{\"token\":{,\"id\":1,\"text\":\"a\"}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1 \"text\":\"a\"}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\" 1,\"text\":\"a\"}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\"::1,\"text\":\"a\"}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":'a'}}}}",
    "{\"result\":{\"response\":{\"token\":{id:1,\"text\":\"a\"}}}}",
    "{'result':{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}",
    "\xef\xbb\xbf{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}", /* BOM */
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}\f",
    "\v{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}",
    "{\"result\"\xc2\xa0:{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}}\xff",
    "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"}}}} // comment",
};

static void test_declined(void **state)
{
    size_t i;
    (void)state;
    for (i = 0; i < sizeof declined / sizeof declined[0]; i++)
        decline_line(declined[i]);
}

/* Raw NULs: a control character for jansson, inside and outside strings. */
static void test_declined_raw_nul(void **state)
{
    static const char in_text[] = TOK("{\"id\":1,\"text\":\"a\0b\"}");
    static const char in_key[] = TOK("{\"id\":1,\"te\0xt\":\"a\"}");
    static const char after[] = TOK("{\"id\":1,\"text\":\"a\"}") "\0";
    static const char before[] = "\0" TOK("{\"id\":1,\"text\":\"a\"}");
    static const char in_rid[] = R("{\"token\":{\"text\":\"a\"},\"requestID\":\"r\0\"}");
    (void)state;
    decline_len(in_text, sizeof in_text - 1);
    decline_len(in_key, sizeof in_key - 1);
    decline_len(after, sizeof after - 1);
    decline_len(before, sizeof before - 1);
    decline_len(in_rid, sizeof in_rid - 1);
}

/* Every prefix of a token line is declined (each is cut short somewhere),
   and so is each line with one byte removed or one byte doubled, unless
   jansson accepts it too. */
static void test_mutations(void **state)
{
    const char *base = emulator_lines[4];
    size_t n = strlen(base), i;
    char *buf = malloc(n + 2);
    (void)state;
    assert_non_null(buf);
    for (i = 0; i < n; i++)
        decline_len(base, i);
    for (i = 0; i < n; i++) {
        maas_scan_buf b = {0};
        maas_msg m;
        char *copy;
        ref r;
        /* drop byte i */
        memcpy(buf, base, i);
        memcpy(buf + i, base + i + 1, n - i - 1);
        ref_decode(buf, n - 1, &r);
        if (scan_copy(buf, n - 1, &m, &b, &copy) == MAAS_SCAN_TOKEN) {
            assert_int_equal(r.st, MAAS_OK);
            assert_same_msg(&m, &r.m);
        }
        free(copy);
        ref_free(&r);
        assert_decoder_matches_ref(buf, n - 1);
        /* double byte i */
        memcpy(buf, base, i + 1);
        memcpy(buf + i + 1, base + i, n - i);
        ref_decode(buf, n + 1, &r);
        if (scan_copy(buf, n + 1, &m, &b, &copy) == MAAS_SCAN_TOKEN) {
            assert_int_equal(r.st, MAAS_OK);
            assert_same_msg(&m, &r.m);
        }
        free(copy);
        ref_free(&r);
        assert_decoder_matches_ref(buf, n + 1);
        maas_scan_buf_free(&b);
    }
    free(buf);
}

/* ------------------------------------------------------------------ */
/* Memory: no copy, no allocation per token, no tree                   */
/* ------------------------------------------------------------------ */

static void test_strings_in_place(void **state)
{
    char line[] = TOK("{\"id\":5,\"text\":\"plain\",\"logprob\":-1}");
    char esc[] = TOK("{\"id\":5,\"text\":\"a\\nb\",\"logprob\":-1}");
    maas_scan_buf b = {0};
    maas_msg m;
    (void)state;

    /* without escapes: a pointer into the line, its closing quote now a NUL */
    assert_int_equal(maas_scan_token_line(line, strlen(line), &m, &b), MAAS_SCAN_TOKEN);
    assert_true(m.token.text > line && m.token.text < line + sizeof line);
    assert_int_equal(m.token.text_len, 5);
    assert_string_equal(m.token.text, "plain");
    assert_true(m.request_id > line && m.request_id < line + sizeof line);
    assert_string_equal(m.request_id, "r-1");
    assert_null(b.p); /* nothing allocated */

    /* with escapes: in the scratch buffer, which then serves every later line */
    assert_int_equal(maas_scan_token_line(esc, strlen(esc), &m, &b), MAAS_SCAN_TOKEN);
    assert_non_null(b.p);
    assert_ptr_equal(m.token.text, b.p);
    assert_memory_equal(m.token.text, "a\nb", 4);
    assert_true(m.request_id > esc && m.request_id < esc + sizeof esc);
    {
        char *p = b.p;
        size_t cap = b.cap, i;
        for (i = 0; i < 1000; i++) {
            char again[] = TOK("{\"id\":5,\"text\":\"\\u00e9\\t\",\"logprob\":-1}");
            assert_int_equal(maas_scan_token_line(again, strlen(again), &m, &b), MAAS_SCAN_TOKEN);
            assert_ptr_equal(b.p, p);
            assert_int_equal(b.cap, cap);
            assert_memory_equal(m.token.text, "\xc3\xa9\t", 4);
        }
    }
    maas_scan_buf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.cap, 0);
}

static size_t jansson_allocs;

static void *counting_malloc(size_t n)
{
    jansson_allocs++;
    return malloc(n);
}

/* Through the decoder: token lines build no tree, a final line does, and
   the tree is released when the next (scanned) message replaces it. */
static void test_decoder_holds_no_tree(void **state)
{
    const char *in = "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"a\"},\"requestID\":\"r\"}}}\n"
                     "{\"result\":{\"response\":{\"token\":{\"id\":2,\"text\":\"b\\n\"},\"requestID\":\"r\"}}}\n"
                     "{\"result\":{\"response\":{\"token\":{\"id\":3,\"text\":\"c\"},\"details\":{},"
                     "\"requestID\":\"r\"}}}\n"
                     "{\"result\":{\"response\":{\"token\":{\"id\":4,\"text\":\"d\"},\"requestID\":\"r\"}}}\n";
    maas_ndjson d;
    maas_msg m;
    (void)state;

    json_set_alloc_funcs(counting_malloc, free);
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, in, strlen(in)), MAAS_OK);

    jansson_allocs = 0;
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 1);
    assert_true(m.token.text >= d.buf && m.token.text < d.buf + d.len);
    assert_string_equal(m.token.text, "a");
    assert_string_equal(m.request_id, "r");
    assert_null(d.held);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 2);
    assert_ptr_equal(m.token.text, d.scan.p);
    assert_string_equal(m.token.text, "b\n");
    assert_null(d.held);
    assert_int_equal(jansson_allocs, 0);

    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.type, MAAS_MSG_FINAL);
    assert_int_equal(m.token.id, 3);
    assert_non_null(d.held);
    assert_true(jansson_allocs > 0);

    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(m.token.id, 4);
    assert_null(d.held); /* released, not leaked (valgrind/ASan check) */
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_DONE);
    maas_ndjson_cleanup(&d);
    assert_null(d.scan.p);
    json_set_alloc_funcs(malloc, free);
}

/* A scanned message followed by a failure: the decoder fails as before. */
static void test_decoder_fails_after_scanned(void **state)
{
    const char *in = "{\"result\":{\"token\":{\"id\":1,\"text\":\"a\"}}}\n{\"result\":{\"token\":{\"id\":-1,\"text\":\"a\"}}}\n";
    maas_ndjson d;
    maas_msg m;
    (void)state;
    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_feed(&d, in, strlen(in)), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_OK);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_ERR_PROTOCOL);
    assert_string_equal(maas_ndjson_error(&d), "line 2: token.id is not an unsigned 32-bit integer");
    assert_int_equal(m.type, MAAS_MSG_NONE);
    maas_ndjson_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_guide_lines),
        cmocka_unit_test(test_emulator_lines),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_whitespace_and_order),
        cmocka_unit_test(test_optional_fields),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_number_sweep),
        cmocka_unit_test(test_declined),
        cmocka_unit_test(test_declined_raw_nul),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_strings_in_place),
        cmocka_unit_test(test_decoder_holds_no_tree),
        cmocka_unit_test(test_decoder_fails_after_scanned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
