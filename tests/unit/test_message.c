/*
 * Unit tests of lib/message.c: stream-line mapping, finish reasons, HTTP
 * error bodies and the UTF-8-safe text copy.
 *
 * SPDX-License-Identifier: MIT
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "message.h"

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

typedef struct parsed {
    json_t *root;
    maas_msg m;
    maas_status st;
    char err[160];
} parsed;

static void parse(parsed *p, const char *text)
{
    json_error_t jerr;
    p->root = json_loads(text, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (p->root == NULL)
        fail_msg("test input is not JSON: %s: %s", jerr.text, text);
    memset(p->err, 'Z', sizeof p->err);
    p->st = maas_msg_from_json(&p->m, p->root, p->err, sizeof p->err);
}

static void done(parsed *p)
{
    json_decref(p->root);
    p->root = NULL;
}

static void expect_ok(parsed *p, const char *text, maas_msg_type type)
{
    parse(p, text);
    if (p->st != MAAS_OK)
        fail_msg("status %d (%s) for %s", (int)p->st, p->err, text);
    assert_int_equal(p->m.type, type);
    assert_string_equal(p->err, "");
}

/* An exact-size heap copy without a terminator, so ASan sees any over-read. */
static void parse_body(maas_error_body *out, const char *body, size_t len)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len)
        memcpy(copy, body, len);
    memset(out, 'Z', sizeof *out);
    maas_error_body_parse(out, copy, len);
    free(copy);
    assert_true(memchr(out->message, '\0', sizeof out->message) != NULL);
    assert_true(memchr(out->request_id, '\0', sizeof out->request_id) != NULL);
    assert_true(memchr(out->oauth_error, '\0', sizeof out->oauth_error) != NULL);
}

static int valid_utf8(const char *s)
{
    size_t n = strlen(s), i = 0;
    while (i < n) {
        size_t k = maas_utf8_char_len(s + i, n - i);
        if (k == 0)
            return 0;
        i += k;
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Stream lines                                                        */
/* ------------------------------------------------------------------ */

static void test_msg_init(void **state)
{
    maas_msg m;
    (void)state;
    memset(&m, 0xA5, sizeof m);
    maas_msg_init(&m);
    assert_int_equal(m.type, MAAS_MSG_NONE);
    assert_int_equal(m.has_token, 0);
    assert_string_equal(m.token.text, "");
    assert_int_equal(m.token.text_len, 0);
    assert_int_equal(m.token.has_logprob, 0);
    assert_string_equal(m.details.finish_reason_name, "");
    assert_string_equal(m.details.generated_text, "");
    assert_string_equal(m.details.request_id, "");
    assert_int_equal(m.details.has_seed, 0);
    assert_int_equal(m.grpc_code, -1);
    assert_string_equal(m.error_message, "");
    assert_string_equal(m.request_id, "");
}

static void test_token_guide_shape(void **state)
{
    parsed p;
    (void)state;
    expect_ok(&p,
              "{\"result\": {\"response\": {\"token\": {\"id\": 1061, \"text\": \"Data\", "
              "\"logprob\": -0.11687851, \"special\": false}, \"top_tokens\": [], "
              "\"requestID\": \"8764a8c3-0000\"}}}",
              MAAS_MSG_TOKEN);
    assert_int_equal(p.m.has_token, 1);
    assert_int_equal(p.m.token.id, 1061);
    assert_string_equal(p.m.token.text, "Data");
    assert_int_equal(p.m.token.text_len, 4);
    assert_true(p.m.token.has_logprob);
    assert_true(p.m.token.logprob == -0.11687851);
    assert_int_equal(p.m.token.special, 0);
    assert_int_equal(p.m.token.index, 0);
    assert_string_equal(p.m.request_id, "8764a8c3-0000");
    assert_string_equal(p.m.details.request_id, ""); /* TOKEN: no details */
    /* strings point into the tree */
    assert_ptr_equal(p.m.token.text,
                     json_string_value(json_object_get(
                         json_object_get(json_object_get(json_object_get(p.root, "result"),
                                                         "response"),
                                         "token"),
                         "text")));
    done(&p);
}

static void test_token_variants(void **state)
{
    parsed p;
    (void)state;

    /* no response level; requestId / request_id spellings; id absent is 0 */
    expect_ok(&p, "{\"result\":{\"token\":{\"text\":\"a\"},\"requestId\":\"R1\"}}", MAAS_MSG_TOKEN);
    assert_int_equal(p.m.token.id, 0);
    assert_string_equal(p.m.request_id, "R1");
    done(&p);
    expect_ok(&p, "{\"result\":{\"token\":{\"id\":\"77\",\"text\":\"a\"},\"request_id\":\"R2\"}}",
              MAAS_MSG_TOKEN);
    assert_int_equal(p.m.token.id, 77); /* protobuf JSON also allows quoted integers */
    assert_string_equal(p.m.request_id, "R2");
    done(&p);
    /* requestID beside response rather than inside it */
    expect_ok(&p, "{\"result\":{\"requestID\":\"R3\",\"response\":{\"token\":{\"text\":\"a\"}}}}",
              MAAS_MSG_TOKEN);
    assert_string_equal(p.m.request_id, "R3");
    done(&p);

    /* logprob absent, null, integer, and protobuf's non-finite spellings */
    expect_ok(&p, "{\"result\":{\"token\":{\"id\":1,\"text\":\"a\",\"logprob\":null,\"special\":null}}}",
              MAAS_MSG_TOKEN);
    assert_false(p.m.token.has_logprob);
    assert_false(p.m.token.special);
    done(&p);
    expect_ok(&p, "{\"result\":{\"token\":{\"id\":1,\"text\":\"a\",\"logprob\":-3,\"special\":true}}}",
              MAAS_MSG_TOKEN);
    assert_true(p.m.token.has_logprob);
    assert_true(p.m.token.logprob == -3.0);
    assert_true(p.m.token.special);
    done(&p);
    expect_ok(&p, "{\"result\":{\"token\":{\"id\":1,\"text\":\"a\",\"logprob\":\"NaN\"}}}",
              MAAS_MSG_TOKEN);
    assert_true(p.m.token.has_logprob && isnan(p.m.token.logprob));
    done(&p);
    expect_ok(&p, "{\"result\":{\"token\":{\"id\":1,\"text\":\"a\",\"logprob\":\"-Infinity\"}}}",
              MAAS_MSG_TOKEN);
    assert_true(p.m.token.has_logprob && isinf(p.m.token.logprob) && p.m.token.logprob < 0);
    done(&p);
    expect_ok(&p, "{\"result\":{\"token\":{\"id\":1,\"text\":\"a\",\"logprob\":\"Infinity\"}}}",
              MAAS_MSG_TOKEN);
    assert_true(isinf(p.m.token.logprob) && p.m.token.logprob > 0);
    done(&p);

    /* embedded NULs and the full uint32 range */
    expect_ok(&p, "{\"result\":{\"token\":{\"id\":4294967295,\"text\":\"\\u0000x\\u0000\"}}}",
              MAAS_MSG_TOKEN);
    assert_true(p.m.token.id == UINT32_MAX);
    assert_int_equal(p.m.token.text_len, 3);
    assert_memory_equal(p.m.token.text, "\0x\0", 4);
    done(&p);

    /* "details": null and "generated_text": null do not make it final */
    expect_ok(&p, "{\"result\":{\"response\":{\"token\":{\"text\":\"a\"},\"details\":null,"
                  "\"generated_text\":null,\"top_tokens\":null}}}",
              MAAS_MSG_TOKEN);
    done(&p);
}

static void test_final(void **state)
{
    parsed p;
    (void)state;

    expect_ok(&p,
              "{\"result\":{\"response\":{\"token\":{\"id\":2,\"text\":\"</s>\",\"logprob\":-0.25,"
              "\"special\":true},\"top_tokens\":[],\"requestID\":\"RID\","
              "\"generated_text\":\"Data science\\n\",\"details\":{\"finish_reason\":"
              "\"FINISH_REASON_LENGTH\",\"generated_tokens\":100,"
              "\"seed\":\"13414724236876468656\",\"extra\":{}}}}}",
              MAAS_MSG_FINAL);
    assert_true(p.m.has_token);
    assert_int_equal(p.m.token.id, 2);
    assert_true(p.m.token.special);
    assert_int_equal(p.m.details.finish_reason, MAAS_FINISH_LENGTH);
    assert_string_equal(p.m.details.finish_reason_name, "FINISH_REASON_LENGTH");
    assert_int_equal(p.m.details.generated_tokens, 100);
    assert_true(p.m.details.has_seed);
    assert_true(p.m.details.seed == UINT64_C(13414724236876468656));
    assert_string_equal(p.m.details.generated_text, "Data science\n");
    assert_int_equal(p.m.details.generated_text_len, 13);
    assert_string_equal(p.m.details.request_id, "RID");
    assert_string_equal(p.m.request_id, "RID");
    done(&p);

    /* details alone: no token, defaults everywhere */
    expect_ok(&p, "{\"result\":{\"details\":{}}}", MAAS_MSG_FINAL);
    assert_false(p.m.has_token);
    assert_string_equal(p.m.token.text, "");
    assert_int_equal(p.m.details.finish_reason, MAAS_FINISH_UNKNOWN);
    assert_string_equal(p.m.details.finish_reason_name, "");
    assert_int_equal(p.m.details.generated_tokens, 0);
    assert_false(p.m.details.has_seed);
    assert_string_equal(p.m.details.generated_text, "");
    assert_int_equal(p.m.details.generated_text_len, 0);
    assert_string_equal(p.m.details.request_id, "");
    done(&p);

    /* generated_text alone makes it final too; NUL inside it */
    expect_ok(&p, "{\"result\":{\"response\":{\"generated_text\":\"a\\u0000b\"}}}",
              MAAS_MSG_FINAL);
    assert_int_equal(p.m.details.generated_text_len, 3);
    assert_memory_equal(p.m.details.generated_text, "a\0b", 4);
    done(&p);

    /* camelCase names, decimal-string counts, integer seeds, seed edges,
       generated_text inside details (text-generation-inference's place) */
    expect_ok(&p, "{\"result\":{\"details\":{\"finishReason\":\"FINISH_REASON_STOP_SEQUENCE\","
                  "\"generatedTokens\":\"7\",\"seed\":0,\"generated_text\":\"in\"}}}",
              MAAS_MSG_FINAL);
    assert_int_equal(p.m.details.finish_reason, MAAS_FINISH_STOP_SEQUENCE);
    assert_int_equal(p.m.details.generated_tokens, 7);
    assert_true(p.m.details.has_seed);
    assert_true(p.m.details.seed == 0);
    assert_string_equal(p.m.details.generated_text, "in");
    done(&p);
    expect_ok(&p, "{\"result\":{\"generated_text\":\"outer\",\"details\":{\"generated_text\":\"in\","
                  "\"seed\":\"18446744073709551615\",\"generated_tokens\":4294967295}}}",
              MAAS_MSG_FINAL);
    assert_string_equal(p.m.details.generated_text, "outer");
    assert_true(p.m.details.seed == UINT64_MAX);
    assert_true(p.m.details.generated_tokens == UINT32_MAX);
    done(&p);
    expect_ok(&p, "{\"result\":{\"details\":{\"seed\":\"00042\",\"seed_extra\":\"x\","
                  "\"finish_reason\":\"FINISH_REASON_TIMEOUT\"}}}",
              MAAS_MSG_FINAL);
    assert_true(p.m.details.seed == 42);
    assert_int_equal(p.m.details.finish_reason, MAAS_FINISH_UNKNOWN);
    assert_string_equal(p.m.details.finish_reason_name, "FINISH_REASON_TIMEOUT");
    done(&p);
    expect_ok(&p, "{\"result\":{\"details\":{\"seed\":null,\"finish_reason\":null}}}",
              MAAS_MSG_FINAL);
    assert_false(p.m.details.has_seed);
    assert_string_equal(p.m.details.finish_reason_name, "");
    done(&p);
}

static void test_rejections(void **state)
{
    static const struct {
        const char *json, *err;
    } cases[] = {
        {"[]", "expected a JSON object, got an array"},
        {"true", "expected a JSON object, got true"},
        {"{}", "the object has neither \"result\" nor \"error\""},
        {"{\"result\":[]}", "result is not an object (got an array)"},
        {"{\"result\":{\"requestID\":\"r\",\"top_tokens\":[]}}", "result has neither token nor details"},
        {"{\"result\":{\"token\":{\"id\":-1,\"text\":\"a\"}}}", "token.id is not an unsigned 32-bit integer"},
        {"{\"result\":{\"token\":{\"id\":4294967296,\"text\":\"a\"}}}", "token.id is not an unsigned 32-bit integer"},
        {"{\"result\":{\"token\":{\"id\":\"4294967296\",\"text\":\"a\"}}}", "token.id is not an unsigned 32-bit integer"},
        {"{\"result\":{\"token\":{\"id\":1e3,\"text\":\"a\"}}}", "token.id is not an unsigned 32-bit integer"},
        {"{\"result\":{\"token\":{\"id\":1}}}", "token.text is missing"},
        {"{\"result\":{\"token\":{\"text\":[]}}}", "token.text is not a string (got an array)"},
        {"{\"result\":{\"token\":{\"text\":\"a\",\"logprob\":\"-1.5\"}}}", "token.logprob is not a number"},
        {"{\"result\":{\"token\":{\"text\":\"a\",\"logprob\":{}}}}", "token.logprob is not a number"},
        {"{\"result\":{\"token\":{\"text\":\"a\",\"special\":\"false\"}}}", "token.special is not a boolean (got a string)"},
        {"{\"result\":{\"token\":{\"text\":\"a\"},\"requestId\":1}}", "requestId is not a string (got a number)"},
        {"{\"result\":{\"details\":[]}}", "details is not an object (got an array)"},
        {"{\"result\":{\"details\":{\"finishReason\":{}}}}", "details.finish_reason is not a string (got an object)"},
        {"{\"result\":{\"details\":{\"generated_tokens\":true}}}", "details.generated_tokens is not an unsigned 32-bit integer"},
        {"{\"result\":{\"details\":{\"seed\":\"18446744073709551616\"}}}", "details.seed exceeds the unsigned 64-bit maximum 18446744073709551615"},
        {"{\"result\":{\"details\":{\"seed\":\"184467440737095516150\"}}}", "details.seed exceeds the unsigned 64-bit maximum 18446744073709551615"},
        {"{\"result\":{\"details\":{\"seed\":\"-18446744073709551616\"}}}", "details.seed is negative"},
        {"{\"result\":{\"details\":{\"seed\":-1}}}", "details.seed is negative"},
        {"{\"result\":{\"details\":{\"seed\":\"1 \"}}}", "details.seed is not a decimal integer"},
        {"{\"result\":{\"details\":{\"seed\":\"0x10\"}}}", "details.seed is not a decimal integer"},
        {"{\"result\":{\"details\":{\"seed\":\"1e5\"}}}", "details.seed is not a decimal integer"},
        {"{\"result\":{\"details\":{\"seed\":[]}}}", "details.seed is not an integer or a decimal string (got an array)"},
        {"{\"result\":{\"details\":{\"seed\":2.0}}}", "details.seed is not an integer or a decimal string (got a number)"},
        {"{\"result\":{\"generated_text\":false}}", "generated_text is not a string (got false)"},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        parsed p;
        parse(&p, cases[i].json);
        if (p.st != MAAS_ERR_PROTOCOL || strcmp(p.err, cases[i].err) != 0)
            fail_msg("case %zu (%s): status %d, error \"%s\"", i, cases[i].json, (int)p.st,
                     p.err);
        assert_int_equal(p.m.type, MAAS_MSG_NONE);
        assert_string_equal(p.m.request_id, "");
        done(&p);
    }

    /* a NULL root and a short error buffer are handled */
    {
        maas_msg m;
        char small[8];
        assert_int_equal(maas_msg_from_json(&m, NULL, small, sizeof small), MAAS_ERR_PROTOCOL);
        assert_string_equal(small, "expecte");
        assert_int_equal(maas_msg_from_json(&m, NULL, NULL, 0), MAAS_ERR_PROTOCOL);
    }
}

static void test_error_lines(void **state)
{
    parsed p;
    (void)state;

    expect_ok(&p,
              "{\"error\":{\"code\":14,\"message\":\"sorry, we are at maximum capacity. Please "
              "come back later\",\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.Debug"
              "Info\",\"value\":\"no\"},{\"@type\":\"type.googleapis.com/google.protobuf."
              "StringValue\",\"value\":\"req-1\"},{\"@type\":\"type.googleapis.com/google."
              "protobuf.StringValue\",\"value\":\"req-2\"}]}}",
              MAAS_MSG_ERROR);
    assert_int_equal(p.m.grpc_code, 14);
    assert_string_equal(p.m.error_message,
                        "sorry, we are at maximum capacity. Please come back later");
    assert_string_equal(p.m.request_id, "req-1");
    assert_false(p.m.has_token);
    done(&p);

    /* no details, no request id */
    expect_ok(&p, "{\"error\":{\"code\":5,\"message\":\"the requested model is not supported\"}}",
              MAAS_MSG_ERROR);
    assert_int_equal(p.m.grpc_code, 5);
    assert_string_equal(p.m.request_id, "");
    done(&p);

    /* never rejected for its shape: absent or ill-typed fields are empty */
    expect_ok(&p, "{\"error\":{}}", MAAS_MSG_ERROR);
    assert_int_equal(p.m.grpc_code, -1);
    assert_string_equal(p.m.error_message, "");
    done(&p);
    expect_ok(&p, "{\"error\":{\"code\":\"UNAVAILABLE\",\"message\":7,\"details\":{\"x\":1}}}",
              MAAS_MSG_ERROR);
    assert_int_equal(p.m.grpc_code, -1);
    assert_string_equal(p.m.error_message, "");
    done(&p);
    expect_ok(&p, "{\"error\":{\"code\":-3,\"details\":[5,null,{\"@type\":7},"
                  "{\"@type\":\"google.protobuf.StringValue\",\"value\":9}]}}",
              MAAS_MSG_ERROR);
    assert_int_equal(p.m.grpc_code, -1);
    assert_string_equal(p.m.request_id, "");
    done(&p);
    expect_ok(&p, "{\"error\":{\"code\":2147483648}}", MAAS_MSG_ERROR);
    assert_int_equal(p.m.grpc_code, -1);
    done(&p);
    expect_ok(&p, "{\"error\":\"upstream reset\",\"result\":{}}", MAAS_MSG_ERROR);
    assert_string_equal(p.m.error_message, "upstream reset");
    done(&p);
    /* error: null is absent, the result is used */
    expect_ok(&p, "{\"error\":null,\"result\":{\"token\":{\"text\":\"a\"}}}", MAAS_MSG_TOKEN);
    done(&p);
}

static void test_finish_reason_names(void **state)
{
    (void)state;
    assert_int_equal(maas_finish_reason_from_name("FINISH_REASON_LENGTH"), MAAS_FINISH_LENGTH);
    assert_int_equal(maas_finish_reason_from_name("FINISH_REASON_EOS_TOKEN"),
                     MAAS_FINISH_EOS_TOKEN);
    assert_int_equal(maas_finish_reason_from_name("FINISH_REASON_STOP_SEQUENCE"),
                     MAAS_FINISH_STOP_SEQUENCE);
    assert_int_equal(maas_finish_reason_from_name("length"), MAAS_FINISH_LENGTH);
    assert_int_equal(maas_finish_reason_from_name("eos_token"), MAAS_FINISH_EOS_TOKEN);
    assert_int_equal(maas_finish_reason_from_name("stop_sequence"), MAAS_FINISH_STOP_SEQUENCE);
    assert_int_equal(maas_finish_reason_from_name("FINISH_REASON_UNSPECIFIED"),
                     MAAS_FINISH_UNKNOWN);
    assert_int_equal(maas_finish_reason_from_name("finish_reason_length"), MAAS_FINISH_UNKNOWN);
    assert_int_equal(maas_finish_reason_from_name("FINISH_REASON_LENGTH "), MAAS_FINISH_UNKNOWN);
    assert_int_equal(maas_finish_reason_from_name(""), MAAS_FINISH_UNKNOWN);
    assert_int_equal(maas_finish_reason_from_name(NULL), MAAS_FINISH_UNKNOWN);
}

/* ------------------------------------------------------------------ */
/* HTTP error bodies                                                   */
/* ------------------------------------------------------------------ */

#define BODY(s) s, sizeof(s) - 1

static void test_error_body_wrapped_and_bare(void **state)
{
    maas_error_body b;
    (void)state;

    parse_body(&b, BODY("{\"error\":{\"code\":5,\"message\":\"the requested model is not "
                        "supported\",\"details\":[{\"@type\":\"type.googleapis.com/google."
                        "protobuf.StringValue\",\"value\":\"8764a8c3-aaaa\"}]}}\n"));
    assert_int_equal(b.grpc_code, 5);
    assert_string_equal(b.message, "the requested model is not supported");
    assert_string_equal(b.request_id, "8764a8c3-aaaa");
    assert_string_equal(b.oauth_error, "");

    parse_body(&b, BODY("{\"code\":3,\"message\":\"validation error: can't find requested "
                        "product\",\"details\":[]}"));
    assert_int_equal(b.grpc_code, 3);
    assert_string_equal(b.message, "validation error: can't find requested product");
    assert_string_equal(b.request_id, "");

    parse_body(&b, BODY("  {\"message\":\"Forbidden\"}  "));
    assert_int_equal(b.grpc_code, -1);
    assert_string_equal(b.message, "Forbidden");

    parse_body(&b, BODY("{\"code\":16,\"message\":\"\",\"details\":[{\"@type\":\"x/google."
                        "protobuf.StringValue\",\"value\":\"r\"}]}"));
    assert_int_equal(b.grpc_code, 16);
    assert_string_equal(b.message, "");
    assert_string_equal(b.request_id, "r");

    /* JSON of another shape: nothing to report */
    parse_body(&b, BODY("{\"foo\":1}"));
    assert_int_equal(b.grpc_code, -1);
    assert_string_equal(b.message, "");
    parse_body(&b, BODY("[1,2]"));
    assert_string_equal(b.message, "");
    parse_body(&b, BODY("\"quoted text\""));
    assert_string_equal(b.message, "quoted text");

    /* a message holding a NUL ends there */
    parse_body(&b, BODY("{\"error\":{\"code\":13,\"message\":\"in\\u0000ternal\"}}"));
    assert_int_equal(b.grpc_code, 13);
    assert_string_equal(b.message, "in");

    /* only len bytes are read: what follows is not part of the body */
    parse_body(&b, "{\"code\":4}{\"garbage", 10);
    assert_int_equal(b.grpc_code, 4);
    parse_body(&b, "Invalid Content-typeXXXXXXXX", 20);
    assert_string_equal(b.message, "Invalid Content-type");
}

static void test_error_body_oauth(void **state)
{
    maas_error_body b;
    (void)state;

    parse_body(&b, BODY("{\"error\":\"invalid_client\"}"));
    assert_int_equal(b.grpc_code, -1);
    assert_string_equal(b.oauth_error, "invalid_client");
    assert_string_equal(b.message, "invalid_client");

    parse_body(&b, BODY("{\"error\":\"invalid_grant\",\"error_description\":\"Client "
                        "authentication failed\"}"));
    assert_string_equal(b.oauth_error, "invalid_grant");
    assert_string_equal(b.message, "Client authentication failed");

    parse_body(&b, BODY("{\"error\":\"unauthorized_client\",\"error_description\":\"\"}"));
    assert_string_equal(b.message, "unauthorized_client");

    parse_body(&b, BODY("{\"error\":\"invalid_request\",\"error_description\":null}"));
    assert_string_equal(b.message, "invalid_request");

    /* an over-long OAuth error code is cut to its field */
    parse_body(&b, BODY("{\"error\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}"));
    assert_int_equal(strlen(b.oauth_error), sizeof b.oauth_error - 1);
    assert_int_equal(strlen(b.message), 76);
}

static void test_error_body_text_and_binary(void **state)
{
    maas_error_body b;
    (void)state;

    parse_body(&b, BODY("Invalid Content-type"));
    assert_int_equal(b.grpc_code, -1);
    assert_string_equal(b.message, "Invalid Content-type");
    assert_string_equal(b.request_id, "");
    assert_string_equal(b.oauth_error, "");

    parse_body(&b, BODY("\r\n  Invalid Content-type\n\n"));
    assert_string_equal(b.message, "Invalid Content-type");

    /* multi-line text becomes one line */
    parse_body(&b, BODY("<html>\r\n<body>502 Bad Gateway</body>\n</html>\n"));
    assert_string_equal(b.message, "<html>  <body>502 Bad Gateway</body> </html>");

    /* UTF-8 text is kept; a truncated JSON body is text too */
    parse_body(&b, BODY("Zugriff verweigert \xe2\x80\x93 na\xc3\xafve"));
    assert_string_equal(b.message, "Zugriff verweigert \xe2\x80\x93 na\xc3\xafve");
    parse_body(&b, BODY("{\"error\": {\"code\": 5"));
    assert_string_equal(b.message, "{\"error\": {\"code\": 5");

    /* empty, blank, NULL, binary, invalid UTF-8, control characters */
    parse_body(&b, "", 0);
    assert_string_equal(b.message, "");
    assert_int_equal(b.grpc_code, -1);
    parse_body(&b, BODY(" \r\n\t "));
    assert_string_equal(b.message, "");
    maas_error_body_parse(&b, NULL, 10);
    assert_string_equal(b.message, "");
    assert_int_equal(b.grpc_code, -1);
    parse_body(&b, BODY("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xfe"));
    assert_string_equal(b.message, "");
    parse_body(&b, BODY("bad \xc3\x28 utf8"));
    assert_string_equal(b.message, "");
    parse_body(&b, BODY("nul\0inside"));
    assert_string_equal(b.message, "");
    parse_body(&b, BODY("bell\a"));
    assert_string_equal(b.message, "");
}

static void test_error_body_long_texts(void **state)
{
    maas_error_body b;
    char body[2048], json[2400];
    size_t i, n = 0;
    (void)state;

    /* 510 ASCII bytes then "é" (2 bytes) straddling the 511-byte limit */
    for (i = 0; i < 510; i++)
        body[n++] = 'a';
    for (i = 0; i < 100; i++) {
        body[n++] = '\xc3';
        body[n++] = '\xa9';
    }
    parse_body(&b, body, n);
    assert_int_equal(strlen(b.message), 510);
    assert_true(valid_utf8(b.message));

    /* 509 bytes then a 4-byte emoji: cut before it */
    n = 0;
    for (i = 0; i < 509; i++)
        body[n++] = 'b';
    memcpy(body + n, "\xf0\x9f\x99\x82\xf0\x9f\x99\x82", 8);
    n += 8;
    snprintf(json, sizeof json, "{\"error\":{\"code\":8,\"message\":\"%.*s\"}}", (int)n, body);
    parse_body(&b, json, strlen(json));
    assert_int_equal(b.grpc_code, 8);
    assert_int_equal(strlen(b.message), 509);
    assert_true(valid_utf8(b.message));

    /* a request id longer than its field, ending in a 3-byte character */
    n = 0;
    for (i = 0; i < 126; i++)
        body[n++] = 'r';
    memcpy(body + n, "\xe2\x82\xac", 3);
    n += 3;
    snprintf(json, sizeof json,
             "{\"code\":1,\"details\":[{\"@type\":\"type.googleapis.com/google.protobuf."
             "StringValue\",\"value\":\"%.*s\"}]}",
             (int)n, body);
    parse_body(&b, json, strlen(json));
    assert_int_equal(strlen(b.request_id), 126);
    assert_true(valid_utf8(b.request_id));
}

/* ------------------------------------------------------------------ */
/* Text                                                                */
/* ------------------------------------------------------------------ */

/* Copy into a guarded buffer; check nothing past dstlen was written. */
static void copy_check(const char *src, size_t srclen, size_t dstlen, const char *want)
{
    char buf[64];
    size_t i;
    assert_true(dstlen + 8 <= sizeof buf);
    memset(buf, '#', sizeof buf);
    maas_copy_text(buf, dstlen, src, srclen);
    if (strcmp(buf, want) != 0)
        fail_msg("copy of %zu bytes into %zu: got \"%s\", want \"%s\"", srclen, dstlen, buf,
                 want);
    for (i = dstlen; i < sizeof buf; i++)
        assert_int_equal(buf[i], '#');
}

static void test_copy_text(void **state)
{
    static const char h[] = "h\xc3\xa9llo";          /* é: 2 bytes */
    static const char e[] = "a\xf0\x9f\x99\x82z";    /* emoji: 4 bytes */
    static const char c[] = "\xe2\x82\xac\xe2\x82\xac"; /* €€: 3 + 3 */
    char one[1] = {'x'};
    (void)state;

    copy_check(h, 6, 1, "");
    copy_check(h, 6, 2, "h");
    copy_check(h, 6, 3, "h"); /* half of é would fit: dropped */
    copy_check(h, 6, 4, "h\xc3\xa9");
    copy_check(h, 6, 7, h);
    copy_check(h, 6, 20, h);

    copy_check(e, 6, 2, "a");
    copy_check(e, 6, 3, "a");
    copy_check(e, 6, 4, "a");
    copy_check(e, 6, 5, "a");
    copy_check(e, 6, 6, "a\xf0\x9f\x99\x82");
    copy_check(e, 6, 7, e);

    copy_check(c, 6, 3, "");
    copy_check(c, 6, 4, "\xe2\x82\xac");
    copy_check(c, 6, 6, "\xe2\x82\xac");
    copy_check(c, 6, 7, c);

    /* a source that itself ends inside a sequence loses the partial tail */
    copy_check("ab\xe2\x82", 4, 20, "ab");
    copy_check("ab\xc3", 3, 20, "ab");
    /* stray continuation bytes are not "sequences" to cut; they are copied */
    copy_check("a\x80", 2, 20, "a\x80");
    /* srclen, not the terminator, bounds the read */
    copy_check("abcdef", 3, 20, "abc");
    copy_check("", 0, 5, "");
    copy_check(NULL, 5, 5, "");

    maas_copy_text(one, 1, "xyz", 3);
    assert_int_equal(one[0], '\0');
    maas_copy_text(one, 0, "xyz", 3); /* no room at all: untouched */
    maas_copy_text(NULL, 5, "xyz", 3);
}

static void test_utf8_char_len(void **state)
{
    (void)state;
    assert_int_equal(maas_utf8_char_len("a", 1), 1);
    assert_int_equal(maas_utf8_char_len("", 0), 0);
    assert_int_equal(maas_utf8_char_len("\xc3\xa9", 2), 2);
    assert_int_equal(maas_utf8_char_len("\xc3\xa9", 1), 0);
    assert_int_equal(maas_utf8_char_len("\xe2\x82\xac", 3), 3);
    assert_int_equal(maas_utf8_char_len("\xf0\x9f\x99\x82", 4), 4);
    assert_int_equal(maas_utf8_char_len("\xf4\x8f\xbf\xbf", 4), 4); /* U+10FFFF */
    assert_int_equal(maas_utf8_char_len("\xf4\x90\x80\x80", 4), 0); /* > U+10FFFF */
    assert_int_equal(maas_utf8_char_len("\xc0\xaf", 2), 0);         /* overlong */
    assert_int_equal(maas_utf8_char_len("\xe0\x80\xaf", 3), 0);     /* overlong */
    assert_int_equal(maas_utf8_char_len("\xed\xa0\x80", 3), 0);     /* surrogate */
    assert_int_equal(maas_utf8_char_len("\x80", 1), 0);
    assert_int_equal(maas_utf8_char_len("\xff", 1), 0);
    assert_int_equal(maas_utf8_char_len("\xe2\x28\xa1", 3), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_init),
        cmocka_unit_test(test_token_guide_shape),
        cmocka_unit_test(test_token_variants),
        cmocka_unit_test(test_final),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_error_lines),
        cmocka_unit_test(test_finish_reason_names),
        cmocka_unit_test(test_error_body_wrapped_and_bare),
        cmocka_unit_test(test_error_body_oauth),
        cmocka_unit_test(test_error_body_text_and_binary),
        cmocka_unit_test(test_error_body_long_texts),
        cmocka_unit_test(test_copy_text),
        cmocka_unit_test(test_utf8_char_len),
    };
    return cmocka_run_group_tests_name("message", tests, NULL, NULL);
}
