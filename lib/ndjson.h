/*
 * ndjson: an incremental decoder for the newline-delimited JSON stream of
 * generatestream. It does no I/O: bytes go in with maas_ndjson_feed() in any
 * split, messages come out one at a time with maas_ndjson_next() (the hiredis
 * reader model).
 *
 *  - a line may be cut anywhere, even inside a UTF-8 sequence; one feed may
 *    hold many lines;
 *  - "\n" and "\r\n" both end a line; blank lines are skipped;
 *  - a line longer than max_line bytes (terminator excluded) fails with
 *    MAAS_ERR_LINE_TOO_LONG as soon as that is known: an unterminated line
 *    fails in the feed that takes it past the cap (the buffer never holds
 *    more than the cap plus that feed); when complete lines are still
 *    buffered ahead of it, the feed succeeds, the over-long bytes are
 *    dropped, and next() returns those lines first, then the error;
 *  - the buffer is reused: consumed bytes are compacted away, memory stays
 *    bounded by max_line plus the largest single feed;
 *  - once a call fails, every later call returns the same status;
 *  - JSON: jansson with JSON_ALLOW_NUL (text may hold U+0000, see text_len);
 *    duplicate keys are accepted, the last one wins; invalid UTF-8 and
 *    integers beyond INT64_MAX (e.g. a bare, unquoted seed) are protocol
 *    errors. Token lines are decoded by the strict scanner of scan.h first,
 *    which yields the same message without a jansson tree and declines
 *    everything else to jansson.
 */
#ifndef MAAS_LIB_NDJSON_H
#define MAAS_LIB_NDJSON_H

#include <stddef.h>
#include <jansson.h>
#include "maas/maas.h"
#include "message.h"
#include "scan.h"
#include "trim.h"

typedef struct maas_ndjson {
    char *buf;          /* pending bytes: [start, len) not yet consumed */
    size_t cap, len, start;
    size_t scanned;     /* bytes after start already known to hold no '\n' */
    size_t tail_at;     /* 0, or the index just past a '\n' known to be the last one
                           in [start, len) when feed() last looked (feed's cap check) */
    size_t nl_end;      /* 0, or the index just past the last '\n' in [0, len): a
                           complete line is buffered when nl_end > start */
    size_t max_line;
    unsigned long line_no;  /* lines seen, for error messages */
    maas_status failed; /* MAAS_OK until the first failure */
    int overflow;       /* an unterminated line past the cap was dropped in feed() while
                           complete lines were still buffered: next() delivers them, then
                           fails with MAAS_ERR_LINE_TOO_LONG */
    json_t *held;       /* tree behind the last message handed out (NULL when the
                           scanner decoded it: its strings are in buf or scan) */
    maas_scan_buf scan; /* the scanner's unescaped strings, reused line after line */
    maas_trim trim;     /* an over-long line's generated_text being cut (trim.h) */
    char err[256];      /* why it failed, "" otherwise */
} maas_ndjson;

/* max_line 0 means MAAS_DEFAULT_MAX_LINE_BYTES. Allocates nothing. */
void maas_ndjson_init(maas_ndjson *d, size_t max_line);
/* Release memory; the decoder may be initialised again. */
void maas_ndjson_cleanup(maas_ndjson *d);
/* Forget all input and any failure, keeping the buffer for reuse. */
void maas_ndjson_reset(maas_ndjson *d);

/*
 * Append bytes (copied; `data` may be reused at once). MAAS_OK,
 * MAAS_ERR_NO_MEMORY or MAAS_ERR_LINE_TOO_LONG, which are sticky; and
 * MAAS_ERR_INVALID_ARGUMENT, not sticky, for data NULL with len > 0.
 */
maas_status maas_ndjson_feed(maas_ndjson *d, const char *data, size_t len);

/*
 * Decode the next complete line. MAAS_OK: *out holds a message (valid until
 * the next call on the decoder; do not count on feed() sparing it).
 * MAAS_DONE: no complete line is buffered; feed more. On any status but
 * MAAS_OK, *out is emptied (maas_msg_init).
 * Errors: MAAS_ERR_PROTOCOL (malformed JSON or shape; maas_ndjson_error()
 * says which line and why), MAAS_ERR_LINE_TOO_LONG, MAAS_ERR_NO_MEMORY.
 */
maas_status maas_ndjson_next(maas_ndjson *d, maas_msg *out);

/*
 * End of input. If an unterminated non-blank line remains it is decoded as
 * the last line: MAAS_OK with *out; MAAS_DONE when nothing remains.
 * Call after maas_ndjson_next() returned MAAS_DONE.
 */
maas_status maas_ndjson_finish(maas_ndjson *d, maas_msg *out);

/*
 * Whether a complete non-blank line is buffered after what next() has
 * handed out: 0 means the last message came from the end of what has been
 * fed so far (maas_token.last_buffered). The '\n' it finds is not searched
 * for again by next(). 0 after a failure.
 */
int maas_ndjson_has_line(maas_ndjson *d);

/* Bytes buffered and not yet consumed. */
size_t maas_ndjson_pending(const maas_ndjson *d);

/* Why the decoder failed ("" while it has not). */
const char *maas_ndjson_error(const maas_ndjson *d);

#endif
