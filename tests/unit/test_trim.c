/*
 * Unit tests of the cut of an oversized generated_text (trim.h), through the
 * decoder as the stream uses it: whatever the split, the text kept is a
 * prefix of the server's, cut on a character boundary, flagged, and the
 * members after it survive.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ndjson.h"

/* A final line whose generated_text is `unit` repeated to about `bytes` bytes. */
static char *final_line(const char *key, const char *unit, size_t bytes, size_t *len)
{
    static const char head[] = "{\"result\":{\"response\":{\"token\":{\"id\":2,\"text\":\"x\","
                               "\"special\":false},\"top_tokens\":[],\"";
    static const char tail[] = "\",\"details\":{\"finish_reason\":\"FINISH_REASON_LENGTH\","
                               "\"generated_tokens\":7,\"seed\":\"42\"},\"requestID\":\"rid\"}}}\n";
    size_t ul = strlen(unit), reps = bytes / ul + 1, n = 0, i;
    char *s = malloc(sizeof head + strlen(key) + 3 + reps * ul + sizeof tail);
    assert_non_null(s);
    memcpy(s, head, sizeof head - 1);
    n = sizeof head - 1;
    memcpy(s + n, key, strlen(key));
    n += strlen(key);
    memcpy(s + n, "\":\"", 3);
    n += 3;
    for (i = 0; i < reps; i++, n += ul)
        memcpy(s + n, unit, ul);
    memcpy(s + n, tail, sizeof tail);
    *len = n + sizeof tail - 1;
    return s;
}

/* Decode `line` fed in pieces of `piece` bytes; the final message's details out. */
static void decode(const char *line, size_t len, size_t piece, maas_msg *m, maas_ndjson *d)
{
    size_t at = 0;
    maas_status st = MAAS_DONE;
    maas_ndjson_init(d, 0);
    while (at < len) {
        size_t n = len - at < piece ? len - at : piece;
        assert_int_equal(maas_ndjson_feed(d, line + at, n), MAAS_OK);
        at += n;
        /* The buffer holds the kept line, not the whole one. */
        assert_true(maas_ndjson_pending(d) < MAAS_TRIM_AFTER + MAAS_GENERATED_TEXT_MAX + 64 * 1024);
        st = maas_ndjson_next(d, m);
        if (st == MAAS_OK)
            break;
        assert_int_equal(st, MAAS_DONE);
    }
    assert_int_equal(st, MAAS_OK);
    assert_int_equal(m->type, MAAS_MSG_FINAL);
}

/* Whether `text` (len bytes) is `unit` (ulen bytes, decoded) repeated and cut
 * on a character boundary: never before a UTF-8 continuation byte. */
static int is_repeated_prefix(const char *text, size_t len, const char *unit, size_t ulen)
{
    size_t i;
    for (i = 0; i < len; i++)
        if (text[i] != unit[i % ulen])
            return 0;
    return ((unsigned char)unit[len % ulen] & 0xC0) != 0x80;
}

/* `decoded` is what `unit` is once its JSON escapes are read. */
static void check_cut(const char *key, const char *unit, const char *decoded, size_t piece)
{
    size_t len;
    char *line = final_line(key, unit, 3 * 1024 * 1024, &len);
    const char *gen_start = strstr(line, key) + strlen(key) + 3;
    maas_ndjson d;
    maas_msg m;
    decode(line, len, piece, &m, &d);
    assert_true(m.details.generated_text_truncated);
    /* The cap counts the bytes on the wire: escapes decode to fewer. */
    assert_true(m.details.generated_text_len >= (strchr(unit, '\\') ? 1 : MAAS_GENERATED_TEXT_MAX));
    assert_true(m.details.generated_text_len <= MAAS_GENERATED_TEXT_MAX + 64 * 1024);
    /* What follows the cut text is intact. */
    assert_int_equal(m.details.generated_tokens, 7);
    assert_int_equal(m.details.seed, 42);
    assert_string_equal(m.details.finish_reason_name, "FINISH_REASON_LENGTH");
    assert_string_equal(m.request_id, "rid");
    assert_int_equal(m.token.id, 2);
    if (!strchr(unit, '\\')) {
        /* Without escapes the kept text is byte for byte a prefix of the sent one. */
        assert_memory_equal(m.details.generated_text, gen_start, m.details.generated_text_len);
    }
    /* With them, a prefix of the decoded text, never half a character. */
    assert_true(is_repeated_prefix(m.details.generated_text, m.details.generated_text_len,
                                   decoded, strlen(decoded)));
    maas_ndjson_cleanup(&d);
    free(line);
}

static void test_plain_text_cut(void **state)
{
    (void)state;
    check_cut("generated_text", "lorem ipsum ", "lorem ipsum ", 4096);
    check_cut("generated_text", "lorem ipsum ", "lorem ipsum ", 16384 + 7);
    check_cut("generatedText", "camel ", "camel ", 4096);
}

static void test_cut_on_character_boundaries(void **state)
{
    (void)state;
    /* Multi-byte UTF-8 (jansson would reject half a sequence)... */
    /* ...started at each of its characters, so that the cap falls on every
     * byte of a sequence in one run or another, not only where 256 KiB
     * happens to fall. */
    static const char mb[] = "na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82 ";
    char rot[sizeof mb];
    size_t r, n = sizeof mb - 1;
    for (r = 0; r < n; r++) {
        if (((unsigned char)mb[r] & 0xc0) == 0x80)
            continue;
        memcpy(rot, mb + r, n - r);
        memcpy(rot + n - r, mb, r);
        rot[n] = '\0';
        check_cut("generated_text", rot, rot, 4093);
    }
    /* ...escapes, \u escapes and surrogate pairs (never split). */
    check_cut("generated_text", "a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00 ",
              "a\"b\\c\n\xc3\xa9\xf0\x9f\x98\x80 ", 4091);
    check_cut("generated_text", "\\ud83d\\ude00", "\xf0\x9f\x98\x80", 1);
}

static void test_short_text_untouched(void **state)
{
    size_t len;
    char *line = final_line("generated_text", "short ", 1000, &len);
    maas_ndjson d;
    maas_msg m;
    (void)state;
    decode(line, len, 4096, &m, &d);
    assert_false(m.details.generated_text_truncated);
    /* final_line() wrote 1000 / 6 + 1 units: all of them, unchanged. */
    assert_int_equal(m.details.generated_text_len, (1000 / 6 + 1) * 6);
    assert_true(is_repeated_prefix(m.details.generated_text, m.details.generated_text_len,
                                   "short ", 6));
    maas_ndjson_cleanup(&d);
    free(line);
}

static void test_long_token_text_kept(void **state)
{
    /* Only generated_text is cut: a long token (under the cap) arrives whole. */
    const size_t n = 1024 * 1024;
    char *line = malloc(n + 200), *p;
    size_t len;
    maas_ndjson d;
    maas_msg m;
    maas_status st = MAAS_DONE;
    (void)state;
    assert_non_null(line);
    p = line + sprintf(line, "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"");
    memset(p, 'q', n);
    p += n;
    p += sprintf(p, "\",\"special\":false},\"requestID\":\"r\"}}}\n");
    len = (size_t)(p - line);
    maas_ndjson_init(&d, 0);
    for (size_t at = 0; at < len && st != MAAS_OK; at += 4096) {
        assert_int_equal(maas_ndjson_feed(&d, line + at, len - at < 4096 ? len - at : 4096), MAAS_OK);
        st = maas_ndjson_next(&d, &m);
    }
    assert_int_equal(st, MAAS_OK);
    assert_int_equal(m.type, MAAS_MSG_TOKEN);
    assert_int_equal(m.token.text_len, n);
    assert_true(is_repeated_prefix(m.token.text, m.token.text_len, "q", 1));
    maas_ndjson_cleanup(&d);
    free(line);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_text_cut),
        cmocka_unit_test(test_cut_on_character_boundaries),
        cmocka_unit_test(test_short_text_untouched),
        cmocka_unit_test(test_long_token_text_kept),
    };
    return cmocka_run_group_tests_name("trim", tests, NULL, NULL);
}
