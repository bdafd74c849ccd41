/*
 * message: maps decoded JSON onto libmaas structures. No I/O, no HTTP.
 *
 * Three wire shapes are understood, those the service's published source sends:
 *  - a stream line  {"result": {"response": {...}}}  (also {"result": {...}})
 *                   or {"error": {"code", "message", "details"}};
 *  - an HTTP error body, wrapped {"error": {...}} or bare {"code", "message", "details"},
 *    or an OAuth2 body {"error": "invalid_client", "error_description": "..."};
 *  - the model list {"models": [{"model_name", "product_id", "product_name"}]}.
 */
#ifndef MAAS_LIB_MESSAGE_H
#define MAAS_LIB_MESSAGE_H

#include <stddef.h>
#include <jansson.h>
#include "maas/maas.h"

/* Longest server message / request id kept; longer ones are cut (on a UTF-8 boundary). */
#define MAAS_MSG_TEXT_MAX 512
#define MAAS_REQUEST_ID_MAX 128

typedef enum maas_msg_type {
    MAAS_MSG_NONE = 0,
    MAAS_MSG_TOKEN = 1, /* a token, not the last message */
    MAAS_MSG_FINAL = 2, /* the last message: details (and usually a token) */
    MAAS_MSG_ERROR = 3  /* an {"error": ...} line */
} maas_msg_type;

/*
 * One decoded stream message. Every pointer refers to memory owned by the
 * decoder that produced it and stays valid until the next call on that
 * decoder (or until it is freed).
 */
typedef struct maas_msg {
    maas_msg_type type;
    int has_token;          /* always 1 for TOKEN; FINAL may lack one */
    maas_token token;       /* index is left 0: the stream numbers tokens */
    maas_details details;   /* FINAL only */
    int grpc_code;          /* ERROR: gRPC code, -1 when absent */
    const char *error_message; /* ERROR: "" when absent */
    const char *request_id; /* "requestID" of any message, or the error's details value; "" if none */
} maas_msg;

/* Set every field of `out` to its empty value: type NONE, strings "", grpc_code -1. */
void maas_msg_init(maas_msg *out);

/*
 * Map one parsed stream line onto `out`. `root` must stay alive as long as
 * `out` is used (strings point into it). On failure returns MAAS_ERR_PROTOCOL
 * and writes a specific reason naming the field into err (e.g.
 * "token.id is not an unsigned 32-bit integer").
 */
maas_status maas_msg_from_json(maas_msg *out, json_t *root, char *err, size_t errlen);

/* Parse a finish reason name; unknown names give MAAS_FINISH_UNKNOWN. */
maas_finish_reason maas_finish_reason_from_name(const char *name);

/*
 * The fields of an HTTP error body, whichever of its shapes it has. Never
 * fails: an empty or undecodable body leaves grpc_code -1 and message "" (the
 * caller then describes the HTTP status itself). A non-JSON body that is
 * printable text (e.g. "Invalid Content-type") becomes the message.
 */
typedef struct maas_error_body {
    int grpc_code;                      /* -1 when absent */
    char message[MAAS_MSG_TEXT_MAX];    /* "" when absent */
    char request_id[MAAS_REQUEST_ID_MAX]; /* "" when absent */
    char oauth_error[64];               /* OAuth2 "error" string, "" when absent */
} maas_error_body;

void maas_error_body_parse(maas_error_body *out, const char *body, size_t len);

/* Copy src into dst (size dstlen >= 1), cutting on a UTF-8 boundary; always NUL-terminates. */
void maas_copy_text(char *dst, size_t dstlen, const char *src, size_t srclen);

/*
 * Length (1..4) of the well-formed UTF-8 sequence at s[0..n), or 0 when the
 * bytes there are not one (overlong, surrogate, > U+10FFFF, cut short, n 0).
 */
size_t maas_utf8_char_len(const char *s, size_t n);

/*
 * The one gate for text that came from the network (server messages, OAuth2
 * error descriptions, request ids, stream error lines) on its way into an
 * error record or a log line: copies src into dst (size dstlen >= 1) with
 * every control character escaped (\n, \r, \t, \xHH; the C1 controls
 * U+0080..U+009F as \u00HH) and every byte that is not well-formed UTF-8 as
 * \xHH, so that no escape sequence reaches a terminal and no newline forges
 * a log line. Cut at dstlen - 1 bytes, never inside a character or an
 * escape; always NUL-terminates. Returns the length written.
 */
size_t maas_copy_printable(char *dst, size_t dstlen, const char *src, size_t srclen);

/* Make s safe to print: bytes that are not printable ASCII or part of a
 * well-formed UTF-8 sequence become '?' (jansson quotes raw input in its errors). */
void maas_printable(char *s);

#endif
