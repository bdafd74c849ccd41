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
 *    MAAS_ERR_LINE_TOO_LONG as soon as that is known, without buffering it;
 *  - the buffer is reused: consumed bytes are compacted away, memory stays
 *    bounded by max_line plus the largest single feed;
 *  - once a call fails, every later call returns the same status.
 */
#ifndef MAAS_LIB_NDJSON_H
#define MAAS_LIB_NDJSON_H

#include <stddef.h>
#include <jansson.h>
#include "maas/maas.h"
#include "message.h"

typedef struct maas_ndjson {
    char *buf;          /* pending bytes: [start, len) not yet consumed */
    size_t cap, len, start;
    size_t scanned;     /* bytes after start already known to hold no '\n' */
    size_t max_line;
    unsigned long line_no;  /* lines seen, for error messages */
    maas_status failed; /* MAAS_OK until the first failure */
    json_t *held;       /* tree behind the last message handed out */
    char err[256];      /* why it failed, "" otherwise */
} maas_ndjson;

/* max_line 0 means MAAS_DEFAULT_MAX_LINE_BYTES. Allocates nothing. */
void maas_ndjson_init(maas_ndjson *d, size_t max_line);
/* Release memory; the decoder may be initialised again. */
void maas_ndjson_cleanup(maas_ndjson *d);
/* Forget all input and any failure, keeping the buffer for reuse. */
void maas_ndjson_reset(maas_ndjson *d);

/* Append bytes. MAAS_OK, MAAS_ERR_NO_MEMORY or MAAS_ERR_LINE_TOO_LONG. */
maas_status maas_ndjson_feed(maas_ndjson *d, const char *data, size_t len);

/*
 * Decode the next complete line. MAAS_OK: *out holds a message (valid until
 * the next call). MAAS_DONE: no complete line is buffered; feed more.
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

/* Bytes buffered and not yet consumed. */
size_t maas_ndjson_pending(const maas_ndjson *d);

/* Why the decoder failed ("" while it has not). */
const char *maas_ndjson_error(const maas_ndjson *d);

#endif
