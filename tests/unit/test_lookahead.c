/*
 * Unit tests of maas_ndjson_has_line(), behind maas_token.last_buffered:
 * after each message, is another complete line already buffered? Lines
 * coalesced in one feed say "more" on all but the last; a feed that ends
 * mid-line says "no more" on the message before the cut; blank lines are
 * not messages; and looking ahead never changes what next() returns.
 *
 * SPDX-License-Identifier: MIT
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "message.h"
#include "ndjson.h"

static char line_buf[8][160];

static const char *token_line(unsigned id)
{
    char *b = line_buf[id % 8];
    snprintf(b, sizeof line_buf[0],
             "{\"result\":{\"response\":{\"token\":{\"id\":%u,\"text\":\"t%u\",\"special\":false},"
             "\"top_tokens\":[],\"requestID\":\"r\"}}}\n",
             id, id);
    return b;
}

/* Take one message, check its id, and return what has_line() says after it. */
static int take(maas_ndjson *d, unsigned id)
{
    maas_msg m;
    assert_int_equal(maas_ndjson_next(d, &m), MAAS_OK);
    assert_int_equal(m.type, MAAS_MSG_TOKEN);
    assert_int_equal(m.token.id, id);
    return maas_ndjson_has_line(d);
}

static void feed(maas_ndjson *d, const char *s, size_t n)
{
    assert_int_equal(maas_ndjson_feed(d, s, n), MAAS_OK);
}

static void no_more(maas_ndjson *d)
{
    maas_msg m;
    assert_int_equal(maas_ndjson_next(d, &m), MAAS_DONE);
}

static void test_coalesced_lines_end_on_the_last(void **state)
{
    maas_ndjson d;
    char all[2600] = "";
    unsigned i;
    (void)state;

    maas_ndjson_init(&d, 0);
    assert_int_equal(maas_ndjson_has_line(&d), 0); /* nothing fed yet */
    for (i = 0; i < 4; i++)
        strcat(all, token_line(i));
    feed(&d, all, strlen(all));
    assert_int_equal(maas_ndjson_has_line(&d), 1);
    assert_int_equal(take(&d, 0), 1);
    assert_int_equal(maas_ndjson_has_line(&d), 1); /* asking twice changes nothing */
    assert_int_equal(take(&d, 1), 1);
    assert_int_equal(take(&d, 2), 1);
    assert_int_equal(take(&d, 3), 0);
    assert_int_equal(maas_ndjson_has_line(&d), 0);
    no_more(&d);
    maas_ndjson_cleanup(&d);
}

static void test_split_lines_end_each_read(void **state)
{
    maas_ndjson d;
    const char *l0 = token_line(0), *l1 = token_line(1), *l2 = token_line(2);
    size_t n1 = strlen(l1);
    (void)state;

    maas_ndjson_init(&d, 0);
    /* read 1: line 0 and half of line 1 */
    feed(&d, l0, strlen(l0));
    feed(&d, l1, n1 / 2);
    assert_int_equal(take(&d, 0), 0);
    no_more(&d);
    /* read 2: the rest of line 1 up to just before its '\n' */
    feed(&d, l1 + n1 / 2, n1 - n1 / 2 - 1);
    assert_int_equal(maas_ndjson_has_line(&d), 0);
    no_more(&d);
    /* read 3: its '\n' and all of line 2 */
    feed(&d, "\n", 1);
    feed(&d, l2, strlen(l2));
    assert_int_equal(take(&d, 1), 1);
    assert_int_equal(take(&d, 2), 0);
    no_more(&d);
    maas_ndjson_cleanup(&d);
}

static void test_one_line_per_read(void **state)
{
    maas_ndjson d;
    unsigned i;
    (void)state;

    maas_ndjson_init(&d, 0);
    for (i = 0; i < 20; i++) {
        const char *l = token_line(i);
        feed(&d, l, strlen(l));
        assert_int_equal(take(&d, i), 0);
        no_more(&d);
    }
    maas_ndjson_cleanup(&d);
}

static void test_blank_lines_are_not_messages(void **state)
{
    maas_ndjson d;
    char all[2600];
    (void)state;

    maas_ndjson_init(&d, 0);
    snprintf(all, sizeof all, "%s\n \r\n\t\n", token_line(0));
    feed(&d, all, strlen(all));
    assert_int_equal(take(&d, 0), 0);
    no_more(&d);

    /* blank lines between two messages: the second is still ahead */
    snprintf(all, sizeof all, "%s\r\n\n%s", token_line(1), token_line(2));
    feed(&d, all, strlen(all));
    assert_int_equal(take(&d, 1), 1);
    assert_int_equal(take(&d, 2), 0);
    no_more(&d);
    /* blank lines starting with each blank byte */
    snprintf(all, sizeof all, "%s \r\n", token_line(3));
    feed(&d, all, strlen(all));
    assert_int_equal(take(&d, 3), 0);
    no_more(&d);
    snprintf(all, sizeof all, "%s\t \n\r\n", token_line(4));
    feed(&d, all, strlen(all));
    assert_int_equal(take(&d, 4), 0);
    no_more(&d);
    /* a line that starts with blanks but has content is a message */
    snprintf(all, sizeof all, "%s %s", token_line(5), token_line(6));
    feed(&d, all, strlen(all));
    assert_int_equal(take(&d, 5), 1);
    assert_int_equal(take(&d, 6), 0);
    /* a non-blank line without its '\n' yet is not complete */
    feed(&d, "\n{\"res", 6);
    assert_int_equal(maas_ndjson_has_line(&d), 0);
    no_more(&d);
    maas_ndjson_cleanup(&d);
}

static void test_failed_decoder_has_nothing(void **state)
{
    maas_ndjson d;
    maas_msg m;
    char all[2600];
    (void)state;

    maas_ndjson_init(&d, 0);
    snprintf(all, sizeof all, "not json\n%s", token_line(0));
    feed(&d, all, strlen(all));
    assert_int_equal(maas_ndjson_has_line(&d), 1);
    assert_int_equal(maas_ndjson_next(&d, &m), MAAS_ERR_PROTOCOL);
    assert_int_equal(maas_ndjson_has_line(&d), 0);
    maas_ndjson_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_coalesced_lines_end_on_the_last),
        cmocka_unit_test(test_split_lines_end_each_read),
        cmocka_unit_test(test_one_line_per_read),
        cmocka_unit_test(test_blank_lines_are_not_messages),
        cmocka_unit_test(test_failed_decoder_has_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
