/*
 * Fuzz target: the token-line scanner against the reference. The input is
 * one line. Whenever the scanner accepts it, jansson (with the decoder's
 * flags) and maas_msg_from_json() must accept it too and give identical
 * fields: text bytes and length, id, logprob bit for bit (or both NaN),
 * has_logprob, special, request_id. When it declines, the line must be
 * untouched and the message empty. The line then goes through the whole
 * decoder, which must give the reference's message or the reference's
 * error. Any difference is an abort().
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "message.h"
#include "ndjson.h"
#include "scan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FLAGS (JSON_ALLOW_NUL | JSON_DECODE_ANY)

static void check(int ok)
{
    if (!ok)
        abort();
}

static int same_double(double a, double b)
{
    return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}

static int same_msg(const maas_msg *a, const maas_msg *b)
{
    return a->type == b->type && a->has_token == b->has_token && a->token.id == b->token.id &&
           a->token.text_len == b->token.text_len &&
           memcmp(a->token.text, b->token.text, a->token.text_len + 1) == 0 &&
           a->token.has_logprob == b->token.has_logprob &&
           same_double(a->token.logprob, b->token.logprob) &&
           a->token.special == b->token.special && a->token.index == b->token.index &&
           strcmp(a->request_id, b->request_id) == 0 && a->grpc_code == b->grpc_code &&
           strcmp(a->error_message, b->error_message) == 0 &&
           a->details.finish_reason == b->details.finish_reason &&
           strcmp(a->details.finish_reason_name, b->details.finish_reason_name) == 0 &&
           a->details.generated_tokens == b->details.generated_tokens &&
           a->details.has_seed == b->details.has_seed && a->details.seed == b->details.seed &&
           a->details.generated_text_len == b->details.generated_text_len &&
           memcmp(a->details.generated_text, b->details.generated_text,
                  a->details.generated_text_len) == 0;
}


/* The jansson-only decoding of line 1: status, message (root kept alive), error text. */
static maas_status reference(const char *line, size_t len, maas_msg *m, json_t **root,
                             char *err, size_t errlen)
{
    json_error_t jerr;
    char why[160];
    maas_status st;

    maas_msg_init(m);
    *root = json_loadb(line, len, FLAGS, &jerr);
    if (*root == NULL) {
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return MAAS_ERR_NO_MEMORY;
        snprintf(err, errlen, "line 1: invalid JSON at column %d: %s", jerr.column, jerr.text);
        maas_printable(err);
        return MAAS_ERR_PROTOCOL;
    }
    st = maas_msg_from_json(m, *root, why, sizeof why);
    if (st != MAAS_OK) {
        snprintf(err, errlen, "line 1: %s", why);
        maas_printable(err);
        maas_msg_init(m);
    }
    return st;
}

static int is_blank(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *line = (const char *)data;
    maas_scan_buf scratch = {0};
    maas_msg sm, rm, dm;
    maas_scan_result sr;
    maas_status rst;
    json_t *root;
    char err[256];
    char *copy;
    int pass;

    if (size > 1 << 20)
        return 0;
    copy = malloc(size ? size : 1); /* exact size: over-reads are caught */
    check(copy != NULL);

    /* A request id remembered from an earlier line, as in a real stream:
       inputs with the same id take the remembered path. */
    {
        char seed[] = "{\"result\":{\"response\":{\"token\":{\"id\":1,\"text\":\"s\","
                      "\"special\":false},\"top_tokens\":[],"
                      "\"requestID\":\"8764a8c3-deb2-4f1d-a60a-a47043b0e9f5\"}}}";
        check(maas_scan_token_line(seed, sizeof seed - 1, &sm, &scratch) == MAAS_SCAN_TOKEN);
    }

    /* Twice: the second time with the scratch buffer already grown. */
    for (pass = 0; pass < 2; pass++) {
        if (size)
            memcpy(copy, data, size);
        sr = maas_scan_token_line(copy, size, &sm, &scratch);
        if (sr == MAAS_SCAN_DECLINED) {
            check(size == 0 || memcmp(copy, data, size) == 0);
            check(sm.type == MAAS_MSG_NONE && !sm.has_token && sm.token.text_len == 0 &&
                  sm.request_id[0] == '\0');
            break;
        }
        check(sr == MAAS_SCAN_TOKEN);
        rst = reference(line, size, &rm, &root, err, sizeof err);
        check(rst == MAAS_OK);
        check(rm.type == MAAS_MSG_TOKEN);
        check(same_msg(&sm, &rm));
        json_decref(root);
    }
    free(copy);
    maas_scan_buf_free(&scratch);

    /* The whole decoder on the same line: the reference's result, always. */
    if (size == 0 || memchr(line, '\n', size) == NULL) {
        maas_ndjson d;
        maas_status dst;
        size_t jlen = size;

        if (jlen > 0 && line[jlen - 1] == '\r')
            jlen--; /* the terminator's */
        maas_ndjson_init(&d, 0);
        dst = maas_ndjson_feed(&d, line, size);
        if (dst == MAAS_OK)
            dst = maas_ndjson_feed(&d, "\n", 1);
        check(dst == MAAS_OK);
        dst = maas_ndjson_next(&d, &dm);
        if (is_blank(line, jlen)) {
            check(dst == MAAS_DONE);
        } else {
            rst = reference(line, jlen, &rm, &root, err, sizeof err);
            if (rst != MAAS_ERR_NO_MEMORY) {
                check(dst == rst);
                if (dst == MAAS_OK)
                    check(same_msg(&dm, &rm));
                else
                    check(strcmp(maas_ndjson_error(&d), err) == 0 && dm.type == MAAS_MSG_NONE);
            }
            json_decref(root);
        }
        maas_ndjson_cleanup(&d);
    }
    return 0;
}
