/*
 * scan: a strict scanner for the one line shape that makes up nearly all of
 * a generatestream answer, the token message
 *
 *   {"result":{"response":{"token":{"id":1061,"text":"Data","logprob":-0.11687851,
 *    "special":false},"top_tokens":[],"requestID":"8764a8c3-..."}}}
 *
 * It decodes such a line straight into a maas_msg, without building a
 * jansson tree and without allocating (once its scratch buffer has grown).
 * It is an accelerator, never a judge: anything it does not fully
 * understand is declined, and the caller hands the line to jansson and
 * maas_msg_from_json(), which stay the reference (and word the error when
 * the line is bad). What it accepts it maps exactly as they would; the
 * fuzz target fuzz_scan.c checks that field by field.
 *
 * Accepted: the top-level object with the single key "result"; the result
 * object either holding the single key "response" or being the response
 * itself (message.c accepts both); in the response object "token",
 * "top_tokens" (only as an empty array) and one request id spelling
 * ("requestID", "request_id" or "requestId") as a string; in the token
 * object "id" (a JSON integer, or a decimal string, that fits a uint32),
 * "text" (required), "logprob" (a number, or the protojson strings "NaN",
 * "Infinity", "-Infinity") and "special" (true or false); keys in any order,
 * JSON whitespace anywhere JSON allows it.
 *
 * Declined: any other key (details, generated_text, error, unknown fields),
 * a repeated key or two request id spellings in one object, keys with
 * escapes, null, a non-empty top_tokens, values of another type than the
 * above, invalid UTF-8, raw control characters, bad escapes and lone
 * surrogates, integers jansson would reject or message.c would refuse,
 * numbers that overflow a double, and anything else.
 */
#ifndef MAAS_LIB_SCAN_H
#define MAAS_LIB_SCAN_H

#include <stddef.h>
#include "message.h"

#define MAAS_SCAN_RID_CACHE 64

/* Scratch space for unescaped strings, owned by the caller and reused from
   line to line. Zero-initialise; free with maas_scan_buf_free(). It grows
   only for a line with escaped strings longer than any before (by doubling,
   so to less than twice that line's length), never per token. */
typedef struct maas_scan_buf {
    char *p;
    size_t cap;
    /* The last request id the scanner validated (unescaped, at most
       MAAS_SCAN_RID_CACHE bytes): the service repeats one on every line,
       and the same bytes need no second look. rid_len 0: none. */
    size_t rid_len;
    char rid[MAAS_SCAN_RID_CACHE];
} maas_scan_buf;

void maas_scan_buf_free(maas_scan_buf *b);

typedef enum maas_scan_result {
    MAAS_SCAN_DECLINED = 0, /* not understood (or not a token line): ask jansson */
    MAAS_SCAN_TOKEN = 1     /* *out holds a MAAS_MSG_TOKEN message */
} maas_scan_result;

/*
 * Scan one complete line (terminator removed). MAAS_SCAN_TOKEN: *out is
 * filled as maas_msg_from_json() would fill it (type MAAS_MSG_TOKEN,
 * has_token, token id/text/text_len/logprob/has_logprob/special, request_id;
 * token.index 0). Strings without escapes point into `line` itself: their
 * closing quote is overwritten with a NUL so that they are NUL-terminated
 * as maas_token.text promises (the line is no longer valid JSON then).
 * Strings with escapes are unescaped into `scratch`. Either way they stay
 * valid while `line` and `scratch` are left alone.
 * MAAS_SCAN_DECLINED: `line` is untouched and *out is emptied
 * (maas_msg_init); the scratch buffer may have grown.
 */
maas_scan_result maas_scan_token_line(char *line, size_t len, maas_msg *out,
                                      maas_scan_buf *scratch);

/*
 * The framing and the scan in one pass, for the line at the start of `buf`
 * (n bytes buffered, the line's '\n' not yet looked for): only a token line
 * exactly in the service's shape (no whitespace, its key order) directly
 * followed by '\n', at most max_len bytes long. Such a line holds no other
 * '\n' (strings refuse raw control bytes), so it ends where memchr would
 * have found it. MAAS_SCAN_TOKEN: *line_len is the line's length ('\n'
 * excluded) and *out as maas_scan_token_line() gives it. MAAS_SCAN_DECLINED:
 * `buf` and *out are untouched; frame the line and call
 * maas_scan_token_line().
 */
maas_scan_result maas_scan_token_prefix(char *buf, size_t n, size_t max_len, size_t *line_len,
                                        maas_msg *out, maas_scan_buf *scratch);

#endif
