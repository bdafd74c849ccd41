/*
 * message: maps decoded JSON onto libmaas structures (see message.h).
 *
 * Liberal in what it accepts, exact in what it reports:
 *  - a JSON null counts as an absent field everywhere (grpc-gateway's
 *    EmitUnpopulated writes unset message fields as null);
 *  - unknown fields are ignored, and so is top_tokens;
 *  - the proto name (finish_reason) and the protobuf-JSON camelCase name
 *    (finishReason) are both accepted, as protojson itself does;
 *  - integers may also come as decimal strings (protojson accepts both);
 *  - every rejection names the field and the problem.
 *
 * SPDX-License-Identifier: MIT
 */
#include "message.h"
#include "trim.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if defined(__GNUC__)
#define MSG_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MSG_PRINTF(f, a)
#endif

static const char empty_text[] = "";

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* obj[key], with JSON null read as absent. */
static json_t *field(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return (v != NULL && json_is_null(v)) ? NULL : v;
}

/* The first present of obj[a], obj[b]. */
static json_t *field2(const json_t *obj, const char *a, const char *b)
{
    json_t *v = field(obj, a);
    return v != NULL ? v : field(obj, b);
}

static maas_status bad(char *err, size_t errlen, const char *fmt, ...) MSG_PRINTF(3, 4);

static maas_status bad(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return MAAS_ERR_PROTOCOL;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

typedef enum dec_result {
    DEC_OK,
    DEC_NOT_DIGITS, /* empty, or a byte that is not 0-9 */
    DEC_NEGATIVE,   /* "-" followed by digits */
    DEC_OVERFLOW    /* digits only, but > UINT64_MAX */
} dec_result;

/* A decimal unsigned integer: digits only (no sign, no blanks), up to UINT64_MAX. */
static dec_result parse_dec_u64(const char *s, size_t n, uint64_t *out)
{
    size_t i = 0;
    int negative = 0, overflow = 0;
    uint64_t v = 0;

    if (n > 0 && s[0] == '-') {
        negative = 1;
        i = 1;
    }
    if (i == n)
        return DEC_NOT_DIGITS;
    for (; i < n; i++) {
        unsigned d = (unsigned char)s[i] - (unsigned)'0';
        if (d > 9)
            return DEC_NOT_DIGITS;
        if (v > (UINT64_MAX - d) / 10)
            overflow = 1;
        else
            v = v * 10 + d;
    }
    if (negative)
        return DEC_NEGATIVE;
    if (overflow)
        return DEC_OVERFLOW;
    *out = v;
    return DEC_OK;
}

/* A uint32 as a JSON integer or a decimal string. */
static maas_status get_u32(const json_t *v, const char *name, uint32_t *out, char *err,
                           size_t errlen)
{
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x >= 0 && (unsigned long long)x <= UINT32_MAX) {
            *out = (uint32_t)x;
            return MAAS_OK;
        }
    } else if (json_is_string(v)) {
        uint64_t x;
        if (parse_dec_u64(json_string_value(v), json_string_length(v), &x) == DEC_OK &&
            x <= UINT32_MAX) {
            *out = (uint32_t)x;
            return MAAS_OK;
        }
    }
    return bad(err, errlen, "%s is not an unsigned 32-bit integer", name);
}

/* A uint64 seed as a decimal string (what the server sends) or a JSON integer. */
static maas_status get_seed(const json_t *v, uint64_t *out, char *err, size_t errlen)
{
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < 0)
            return bad(err, errlen, "details.seed is negative");
        *out = (uint64_t)x;
        return MAAS_OK;
    }
    if (json_is_string(v)) {
        switch (parse_dec_u64(json_string_value(v), json_string_length(v), out)) {
        case DEC_OK: return MAAS_OK;
        case DEC_NEGATIVE: return bad(err, errlen, "details.seed is negative");
        case DEC_OVERFLOW:
            return bad(err, errlen, "details.seed exceeds the unsigned 64-bit maximum "
                                    "18446744073709551615");
        case DEC_NOT_DIGITS: break;
        }
        return bad(err, errlen, "details.seed is not a decimal integer");
    }
    return bad(err, errlen, "details.seed is not an integer or a decimal string (got %s)",
               type_name(v));
}

/* Optional string: absent/null leaves *out untouched; a non-string is an error. */
static maas_status get_string(const json_t *obj, const char *a, const char *b,
                              const char *name, const char **out, size_t *outlen,
                              char *err, size_t errlen)
{
    json_t *v = b != NULL ? field2(obj, a, b) : field(obj, a);
    if (v == NULL)
        return MAAS_OK;
    if (!json_is_string(v))
        return bad(err, errlen, "%s is not a string (got %s)", name, type_name(v));
    *out = json_string_value(v);
    if (outlen != NULL)
        *outlen = json_string_length(v);
    return MAAS_OK;
}

/* requestID as grpc-gateway writes it (UseProtoNames keeps the proto's own
   spelling), plus the snake and camel spellings. */
static maas_status get_request_id(const json_t *obj, const char **out, char *err,
                                  size_t errlen)
{
    static const char *const names[] = {"requestID", "request_id", "requestId"};
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        json_t *v = field(obj, names[i]);
        if (v == NULL)
            continue;
        if (!json_is_string(v))
            return bad(err, errlen, "%s is not a string (got %s)", names[i], type_name(v));
        *out = json_string_value(v);
        return MAAS_OK;
    }
    return MAAS_OK;
}

/* ------------------------------------------------------------------ */
/* Stream lines                                                        */
/* ------------------------------------------------------------------ */

void maas_msg_init(maas_msg *out)
{
    memset(out, 0, sizeof *out);
    out->type = MAAS_MSG_NONE;
    out->token.text = empty_text;
    out->details.finish_reason = MAAS_FINISH_UNKNOWN;
    out->details.finish_reason_name = empty_text;
    out->details.generated_text = empty_text;
    out->details.request_id = empty_text;
    out->grpc_code = -1;
    out->error_message = empty_text;
    out->request_id = empty_text;
}

maas_finish_reason maas_finish_reason_from_name(const char *name)
{
    if (name == NULL)
        return MAAS_FINISH_UNKNOWN;
    /* The proto enum names the API sends, and the short names of
       text-generation-inference (its backend) in case they leak through. */
    if (strcmp(name, "FINISH_REASON_LENGTH") == 0 || strcmp(name, "length") == 0)
        return MAAS_FINISH_LENGTH;
    if (strcmp(name, "FINISH_REASON_EOS_TOKEN") == 0 || strcmp(name, "eos_token") == 0)
        return MAAS_FINISH_EOS_TOKEN;
    if (strcmp(name, "FINISH_REASON_STOP_SEQUENCE") == 0 || strcmp(name, "stop_sequence") == 0)
        return MAAS_FINISH_STOP_SEQUENCE;
    return MAAS_FINISH_UNKNOWN;
}

static maas_status map_token(maas_token *t, const json_t *tok, char *err, size_t errlen)
{
    json_t *v;
    maas_status st;

    if (!json_is_object(tok))
        return bad(err, errlen, "token is not an object (got %s)", type_name(tok));

    v = field(tok, "id"); /* absent: protobuf's default 0 */
    if (v != NULL && (st = get_u32(v, "token.id", &t->id, err, errlen)) != MAAS_OK)
        return st;

    v = field(tok, "text");
    if (v == NULL)
        return bad(err, errlen, "token.text is missing");
    if (!json_is_string(v))
        return bad(err, errlen, "token.text is not a string (got %s)", type_name(v));
    t->text = json_string_value(v); /* may hold NULs (JSON_ALLOW_NUL) */
    t->text_len = json_string_length(v);

    v = field(tok, "logprob");
    if (v != NULL) {
        if (json_is_number(v)) {
            t->logprob = json_number_value(v);
        } else if (json_is_string(v) && strcmp(json_string_value(v), "NaN") == 0) {
            t->logprob = NAN; /* protobuf JSON's spellings of non-finite floats */
        } else if (json_is_string(v) && strcmp(json_string_value(v), "Infinity") == 0) {
            t->logprob = INFINITY;
        } else if (json_is_string(v) && strcmp(json_string_value(v), "-Infinity") == 0) {
            t->logprob = -INFINITY;
        } else {
            return bad(err, errlen, "token.logprob is not a number");
        }
        t->has_logprob = 1;
    }

    v = field(tok, "special");
    if (v != NULL) {
        if (!json_is_boolean(v))
            return bad(err, errlen, "token.special is not a boolean (got %s)", type_name(v));
        t->special = json_is_true(v) ? 1 : 0;
    }
    return MAAS_OK;
}

static maas_status map_details(maas_details *d, const json_t *det, char *err, size_t errlen)
{
    json_t *v;
    maas_status st;

    if (!json_is_object(det))
        return bad(err, errlen, "details is not an object (got %s)", type_name(det));

    st = get_string(det, "finish_reason", "finishReason", "details.finish_reason",
                    &d->finish_reason_name, NULL, err, errlen);
    if (st != MAAS_OK)
        return st;
    d->finish_reason = maas_finish_reason_from_name(d->finish_reason_name);

    v = field2(det, "generated_tokens", "generatedTokens");
    if (v != NULL &&
        (st = get_u32(v, "details.generated_tokens", &d->generated_tokens, err, errlen)) !=
            MAAS_OK)
        return st;

    v = field(det, "seed");
    if (v != NULL) {
        if ((st = get_seed(v, &d->seed, err, errlen)) != MAAS_OK)
            return st;
        d->has_seed = 1;
    }
    return MAAS_OK;
}

static maas_status map_result(maas_msg *out, const json_t *res, char *err, size_t errlen)
{
    const json_t *resp = res;
    json_t *v, *tok, *det, *gt;
    maas_status st;

    if (!json_is_object(res))
        return bad(err, errlen, "result is not an object (got %s)", type_name(res));
    v = field(res, "response");
    if (v != NULL) {
        if (!json_is_object(v))
            return bad(err, errlen, "result.response is not an object (got %s)", type_name(v));
        resp = v;
    }

    if ((st = get_request_id(resp, &out->request_id, err, errlen)) != MAAS_OK)
        return st;
    if (resp != res && out->request_id[0] == '\0' &&
        (st = get_request_id(res, &out->request_id, err, errlen)) != MAAS_OK)
        return st;

    tok = field(resp, "token");
    det = field(resp, "details");
    gt = field2(resp, "generated_text", "generatedText");

    if (tok != NULL) {
        if ((st = map_token(&out->token, tok, err, errlen)) != MAAS_OK)
            return st;
        out->has_token = 1;
    }

    if (det == NULL && gt == NULL) {
        if (tok == NULL)
            return bad(err, errlen, "result has neither token nor details");
        out->type = MAAS_MSG_TOKEN;
        return MAAS_OK;
    }

    out->type = MAAS_MSG_FINAL;
    if (det != NULL && (st = map_details(&out->details, det, err, errlen)) != MAAS_OK)
        return st;
    /* generated_text sits beside details; text-generation-inference puts it
       inside, so look there too. */
    st = get_string(resp, "generated_text", "generatedText", "generated_text",
                    &out->details.generated_text, &out->details.generated_text_len, err,
                    errlen);
    if (st == MAAS_OK && gt == NULL && det != NULL)
        st = get_string(det, "generated_text", "generatedText", "details.generated_text",
                        &out->details.generated_text, &out->details.generated_text_len, err,
                        errlen);
    if (st != MAAS_OK)
        return st;
    /* The decoder cut an oversized generated_text and said so beside it (trim.h). */
    out->details.generated_text_truncated =
        json_is_true(json_object_get(resp, MAAS_TRUNCATED_KEY)) ||
        (det != NULL && json_is_true(json_object_get(det, MAAS_TRUNCATED_KEY)));
    out->details.request_id = out->request_id;
    return MAAS_OK;
}

/* Does s end with suffix? */
static int ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/*
 * The fields of a google.rpc.Status as grpc-gateway writes it. Never fails:
 * missing or ill-typed fields keep their empty values. A bare string (an
 * OAuth2-style error) becomes the message.
 */
static void map_status(const json_t *status, int *code, const char **msg, size_t *msglen,
                       const char **rid, size_t *ridlen)
{
    json_t *v;
    size_t i;

    if (json_is_string(status)) {
        *msg = json_string_value(status);
        *msglen = json_string_length(status);
        return;
    }
    if (!json_is_object(status))
        return;

    v = field(status, "code");
    if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= INT_MAX)
        *code = (int)json_integer_value(v);

    v = field(status, "message");
    if (json_is_string(v)) {
        *msg = json_string_value(v);
        *msglen = json_string_length(v);
    }

    v = field(status, "details");
    for (i = 0; json_is_array(v) && i < json_array_size(v); i++) {
        json_t *d = json_array_get(v, i), *type = field(d, "@type"), *value = field(d, "value");
        if (json_is_string(type) &&
            ends_with(json_string_value(type), json_string_length(type),
                      "google.protobuf.StringValue") &&
            json_is_string(value)) {
            *rid = json_string_value(value);
            *ridlen = json_string_length(value);
            return;
        }
    }
}

maas_status maas_msg_from_json(maas_msg *out, json_t *root, char *err, size_t errlen)
{
    json_t *v;
    maas_status st;

    maas_msg_init(out);
    if (err != NULL && errlen > 0)
        err[0] = '\0';

    if (root == NULL || !json_is_object(root))
        return bad(err, errlen, "expected a JSON object, got %s",
                   root != NULL ? type_name(root) : "nothing");

    v = field(root, "error");
    if (v != NULL) {
        size_t msglen = 0, ridlen = 0;
        out->type = MAAS_MSG_ERROR;
        map_status(v, &out->grpc_code, &out->error_message, &msglen, &out->request_id,
                   &ridlen);
        return MAAS_OK;
    }

    v = field(root, "result");
    if (v == NULL)
        return bad(err, errlen, "the object has neither \"result\" nor \"error\"");
    st = map_result(out, v, err, errlen);
    if (st != MAAS_OK)
        maas_msg_init(out);
    return st;
}

/* ------------------------------------------------------------------ */
/* Text                                                                */
/* ------------------------------------------------------------------ */

size_t maas_utf8_char_len(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    unsigned char lo = 0x80, hi = 0xBF;
    size_t len, i;

    if (n == 0)
        return 0;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        len = 2;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        len = 3;
        if (s[0] == 0xE0)
            lo = 0xA0; /* overlong */
        else if (s[0] == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        len = 4;
        if (s[0] == 0xF0)
            lo = 0x90; /* overlong */
        else if (s[0] == 0xF4)
            hi = 0x8F; /* > U+10FFFF */
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

void maas_printable(char *s)
{
    size_t n = strlen(s), i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c >= 0x80 ? maas_utf8_char_len(s + i, n - i) : (c >= 0x20 && c != 0x7F);
        if (k == 0) {
            s[i] = '?';
            k = 1;
        }
        i += k;
    }
}

size_t maas_copy_printable(char *dst, size_t dstlen, const char *src, size_t srclen)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0, o = 0;

    if (dst == NULL || dstlen == 0)
        return 0;
    if (src == NULL)
        srclen = 0;
    while (i < srclen) {
        unsigned char c = (unsigned char)src[i];
        char esc[8];
        size_t k, e = 0;
        if (c >= 0x20 && c < 0x7F) {
            k = 1;
        } else if (c >= 0x80 && (k = maas_utf8_char_len(src + i, srclen - i)) != 0 &&
                   !(c == 0xC2 && (unsigned char)src[i + 1] < 0xA0)) {
            /* well-formed UTF-8 and not a C1 control (U+0080..U+009F: some
               terminals act on U+009B as on ESC [) */
        } else {
            esc[e++] = '\\';
            if (c == '\n' || c == '\r' || c == '\t') {
                esc[e++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
                k = 1;
            } else if (c == 0xC2 && i + 1 < srclen &&
                       (unsigned char)src[i + 1] >= 0x80 && (unsigned char)src[i + 1] < 0xA0) {
                unsigned char c1 = (unsigned char)src[i + 1];
                memcpy(esc + e, "u00", 3);
                e += 3;
                esc[e++] = hex[c1 >> 4];
                esc[e++] = hex[c1 & 15];
                k = 2;
            } else {
                esc[e++] = 'x';
                esc[e++] = hex[c >> 4];
                esc[e++] = hex[c & 15];
                k = 1;
            }
        }
        /* Never cut a character or an escape in two. */
        if (e == 0) {
            if (o + k >= dstlen)
                break;
            memcpy(dst + o, src + i, k);
            o += k;
        } else {
            if (o + e >= dstlen)
                break;
            memcpy(dst + o, esc, e);
            o += e;
        }
        i += k;
    }
    dst[o] = '\0';
    return o;
}

void maas_copy_text(char *dst, size_t dstlen, const char *src, size_t srclen)
{
    size_t n, i, k = 0;

    if (dst == NULL || dstlen == 0)
        return;
    if (src == NULL)
        srclen = 0;
    n = srclen < dstlen - 1 ? srclen : dstlen - 1;

    /* Never end on part of a sequence: find the lead byte of the last
       sequence and drop it when fewer bytes than it announces follow it. */
    i = n;
    while (i > 0 && k < 4 && ((unsigned char)src[i - 1] & 0xC0) == 0x80) {
        i--;
        k++;
    }
    if (i > 0 && k < 4) {
        unsigned char c = (unsigned char)src[i - 1];
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (need > 1 && k + 1 < need)
            n = i - 1;
    }
    if (n > 0)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ------------------------------------------------------------------ */
/* HTTP error bodies                                                   */
/* ------------------------------------------------------------------ */

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Valid UTF-8 without control characters other than tab, CR and LF. */
static int is_printable_text(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            if ((c < 0x20 && c != '\t' && c != '\r' && c != '\n') || c == 0x7F)
                return 0;
            i++;
        } else {
            size_t k = maas_utf8_char_len(s + i, n - i);
            if (k == 0)
                return 0;
            i += k;
        }
    }
    return 1;
}

void maas_error_body_parse(maas_error_body *out, const char *body, size_t len)
{
    json_t *root, *v;
    json_error_t jerr;
    const char *msg = empty_text, *rid = empty_text;
    size_t msglen = 0, ridlen = 0;

    memset(out, 0, sizeof *out);
    out->grpc_code = -1;
    if (body == NULL)
        return;

    while (len > 0 && is_blank(body[0])) {
        body++;
        len--;
    }
    while (len > 0 && is_blank(body[len - 1]))
        len--;
    if (len == 0)
        return;

    root = json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (root == NULL) {
        /* e.g. "Invalid Content-type" (HTTP 415), a proxy's text or HTML page */
        size_t i;
        if (!is_printable_text(body, len))
            return;
        maas_copy_text(out->message, sizeof out->message, body, len);
        for (i = 0; out->message[i] != '\0'; i++)
            if (out->message[i] == '\t' || out->message[i] == '\r' || out->message[i] == '\n')
                out->message[i] = ' ';
        return;
    }

    if (json_is_string(root)) {
        msg = json_string_value(root);
        msglen = json_string_length(root);
    } else if (json_is_object(root)) {
        v = field(root, "error");
        if (json_is_string(v)) {
            /* OAuth2 (RFC 6749 5.2): {"error": "invalid_client", "error_description": ...} */
            json_t *desc = field(root, "error_description");
            maas_copy_text(out->oauth_error, sizeof out->oauth_error, json_string_value(v),
                           json_string_length(v));
            if (json_is_string(desc) && json_string_length(desc) > 0) {
                msg = json_string_value(desc);
                msglen = json_string_length(desc);
            } else {
                msg = json_string_value(v);
                msglen = json_string_length(v);
            }
        } else if (json_is_object(v)) {
            map_status(v, &out->grpc_code, &msg, &msglen, &rid, &ridlen); /* wrapped */
        } else {
            map_status(root, &out->grpc_code, &msg, &msglen, &rid, &ridlen); /* bare */
        }
    }
    maas_copy_text(out->message, sizeof out->message, msg, msglen);
    maas_copy_text(out->request_id, sizeof out->request_id, rid, ridlen);
    json_decref(root);
}
