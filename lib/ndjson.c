/*
 * ndjson: the incremental decoder of generatestream (see ndjson.h).
 *
 * Three layers, so that a faster decoder can be slotted in later:
 *   1. buffering  (feed):  append bytes, compact/grow, enforce the line cap
 *                          on the unterminated tail;
 *   2. framing    (next):  find the next complete line, strip "\r", skip
 *                          blank lines, enforce the cap on complete lines;
 *   3. decoding   (decode_line): one line (pointer, length) -> maas_msg:
 *                          the token-line scanner (scan.h) first, jansson
 *                          for whatever it declines.
 *
 * Buffer policy. Pending bytes are [start, len). When everything has been
 * consumed, start and len drop to 0 for free. Otherwise bytes move only when
 * an append does not fit: the pending bytes are first moved to the front
 * (compaction), and the buffer grows (doubling, but never past
 * max(max_line + 2 + the feed, 4 KiB) when that is enough) only if they
 * still do not fit. For a draining caller the pending bytes are just the
 * unterminated last line, and nothing can be consumed again before that
 * line ends, so each byte moves at most once: linear overall. Memory stays
 * at about max_line + the largest feed, and a few KiB for short lines.
 *
 * Scanning. next() looks for '\n' only in bytes it has not looked at yet
 * (`scanned`). feed() checks the cap of the unterminated tail only when the
 * pending bytes exceed the cap, scanning backwards from the end
 * and never into bytes already known to hold no '\n' (`scanned`) or already
 * searched by an earlier feed (`tail_at`).
 *
 * JSON. Lines are parsed by jansson with JSON_ALLOW_NUL (token text may hold
 * U+0000; text_len carries it) and JSON_DECODE_ANY (so that "[1]" or "42"
 * is reported as "not an object" rather than as a syntax error). Duplicate
 * keys are accepted and the last one wins (jansson's default, like Go's
 * encoding/json): the server never sends any, and rejecting them would cost
 * a lookup per key and force the same check on any faster decoder. Invalid
 * UTF-8 and integers beyond INT64_MAX are rejected by jansson and reported
 * as invalid JSON.
 *
 * SPDX-License-Identifier: MIT
 */
#include "ndjson.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define NDJSON_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define NDJSON_PRINTF(f, a)
#endif

#define NDJSON_MIN_CAP 4096u

/* ------------------------------------------------------------------ */
/* State                                                               */
/* ------------------------------------------------------------------ */

void maas_ndjson_init(maas_ndjson *d, size_t max_line)
{
    memset(d, 0, sizeof *d);
    d->max_line = max_line != 0 ? max_line : MAAS_DEFAULT_MAX_LINE_BYTES;
    d->failed = MAAS_OK;
    d->held = NULL;
    d->buf = NULL;
}

static void release_held(maas_ndjson *d)
{
    if (d->held != NULL) {
        json_decref(d->held);
        d->held = NULL;
    }
}

void maas_ndjson_cleanup(maas_ndjson *d)
{
    size_t max_line = d->max_line;
    release_held(d);
    free(d->buf);
    maas_scan_buf_free(&d->scan);
    maas_ndjson_init(d, max_line);
}

void maas_ndjson_reset(maas_ndjson *d)
{
    release_held(d);
    d->len = d->start = d->scanned = d->tail_at = d->nl_end = 0;
    d->line_no = 0;
    d->failed = MAAS_OK;
    d->overflow = 0;
    memset(&d->trim, 0, sizeof d->trim);
    d->err[0] = '\0';
}

size_t maas_ndjson_pending(const maas_ndjson *d)
{
    return d->len - d->start;
}

const char *maas_ndjson_error(const maas_ndjson *d)
{
    return d->err;
}


static maas_status fail(maas_ndjson *d, maas_status st, const char *fmt, ...) NDJSON_PRINTF(3, 4);

/* Enter the failed state for good: every later call returns `st`. */
static maas_status fail(maas_ndjson *d, maas_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err, sizeof d->err, fmt, ap);
    va_end(ap);
    maas_printable(d->err);
    d->failed = st;
    release_held(d);
    return st;
}

static maas_status fail_too_long(maas_ndjson *d, unsigned long line_no)
{
    return fail(d, MAAS_ERR_LINE_TOO_LONG, "line %lu exceeds the %zu-byte limit", line_no,
                d->max_line);
}

/* ------------------------------------------------------------------ */
/* Buffering                                                           */
/* ------------------------------------------------------------------ */

/* Drop the consumed prefix of length k (the caller moved or copied the rest). */
static void shifted(maas_ndjson *d, size_t k)
{
    d->len -= k;
    d->start = 0;
    d->tail_at = d->tail_at > k ? d->tail_at - k : 0;
    d->nl_end = d->nl_end > k ? d->nl_end - k : 0;
}

/* Room for n more bytes after len: compact first, grow only if that is not enough. */
static maas_status reserve(maas_ndjson *d, size_t n)
{
    size_t pending = d->len - d->start, need, newcap, bound;
    char *nb;

    if (pending == 0) {
        d->len = d->start = d->tail_at = d->nl_end = 0;
        d->scanned = 0;
    }
    if (d->cap - d->len >= n)
        return MAAS_OK;
    if (d->start > 0) {
        memmove(d->buf, d->buf + d->start, pending);
        shifted(d, d->start);
        if (d->cap - d->len >= n)
            return MAAS_OK;
    }
    if (n > SIZE_MAX - pending)
        return MAAS_ERR_NO_MEMORY;
    need = pending + n;
    newcap = d->cap != 0 ? d->cap : NDJSON_MIN_CAP;
    while (newcap < need)
        newcap = newcap <= SIZE_MAX / 2 ? newcap * 2 : need;
    /* A draining caller never needs more than the cap, a '\r' and the feed. */
    bound = d->max_line <= SIZE_MAX - 2 - n ? d->max_line + 2 + n : SIZE_MAX;
    if (bound < NDJSON_MIN_CAP)
        bound = NDJSON_MIN_CAP;
    if (newcap > bound && need <= bound)
        newcap = bound;
    nb = realloc(d->buf, newcap);
    if (nb == NULL)
        return MAAS_ERR_NO_MEMORY;
    d->buf = nb;
    d->cap = newcap;
    return MAAS_OK;
}

/* The last '\n' in s[0..n), or NULL (memrchr is a GNU extension). */
static const char *last_newline(const char *s, size_t n)
{
    while (n > 0) {
        if (s[--n] == '\n')
            return s + n;
    }
    return NULL;
}

/* After an append of [from, len): note its last '\n', searched from the end
   (for a stream of lines, a short way: once per feed, not per line). */
static void note_newline(maas_ndjson *d, size_t from)
{
    const char *nl = last_newline(d->buf + from, d->len - from);
    if (nl != NULL)
        d->nl_end = (size_t)(nl - d->buf) + 1;
}

/*
 * After an append: is the unterminated last line already over the cap?
 * A trailing '\r' may be the first half of "\r\n", so it does not count yet.
 */
static maas_status check_tail(maas_ndjson *d)
{
    size_t pending = d->len - d->start, known, from, tail, tlen;
    const char *nl;

    if (pending - (d->buf[d->len - 1] == '\r') <= d->max_line)
        return MAAS_OK; /* no line can be longer than everything pending */

    known = d->start + d->scanned; /* [start, known) holds no '\n' */
    from = d->tail_at > known ? d->tail_at : known;
    nl = last_newline(d->buf + from, d->len - from);
    if (nl != NULL) {
        tail = d->tail_at = (size_t)(nl - d->buf) + 1;
    } else if (d->tail_at > known) {
        tail = d->tail_at; /* just past the last '\n' */
    } else {
        tail = d->start; /* no '\n' pending at all */
        d->scanned = pending;
    }

    tlen = d->len - tail;
    if (tlen > 0 && d->buf[d->len - 1] == '\r')
        tlen--;
    if (tlen <= d->max_line)
        return MAAS_OK;

    if (tail == d->start)
        return fail_too_long(d, d->line_no + 1);
    /* Complete lines precede the over-long one: keep them for next(), drop
       the tail, and let next() report the failure in its place. */
    d->len = tail;
    d->overflow = 1;
    return MAAS_OK;
}

/*
 * The unterminated last line has grown past MAAS_TRIM_AFTER: from here on,
 * the rest of it goes through the lexer that cuts an oversized
 * generated_text (trim.h). Lines that never grow this long never get here.
 */
static void engage_trim(maas_ndjson *d)
{
    size_t tail = d->len;
    while (tail > d->start && d->buf[tail - 1] != '\n')
        tail--;
    if (d->len - tail > MAAS_TRIM_AFTER)
        maas_trim_start(&d->trim, d->buf + tail, d->len - tail);
}

maas_status maas_ndjson_feed(maas_ndjson *d, const char *data, size_t len)
{
    maas_status st;

    if (d->failed != MAAS_OK)
        return d->failed;
    if (len == 0)
        return MAAS_OK;
    if (data == NULL)
        return MAAS_ERR_INVALID_ARGUMENT;
    if (d->overflow)
        return MAAS_OK; /* more of a line already known to be too long */

    while (d->trim.on && len > 0) {
        /* The rest of an over-long line goes through the lexer (trim.h). */
        size_t used, kept;
        st = reserve(d, len + MAAS_TRIM_EXTRA);
        if (st != MAAS_OK)
            return fail(d, st, "out of memory buffering %zu bytes after line %lu", len,
                        d->line_no);
        used = maas_trim_feed(&d->trim, data, len, d->buf + d->len, &kept);
        d->len += kept;
        note_newline(d, d->len - kept);
        data += used;
        len -= used;
        st = check_tail(d);
        if (st != MAAS_OK || d->overflow)
            return st;
    }
    if (len == 0)
        return MAAS_OK;
    st = reserve(d, len);
    if (st != MAAS_OK)
        return fail(d, st, "out of memory buffering %zu bytes after line %lu", len,
                    d->line_no);
    memcpy(d->buf + d->len, data, len);
    d->len += len;
    note_newline(d, d->len - len);
    st = check_tail(d);
    if (st == MAAS_OK && !d->overflow && d->len - d->start > MAAS_TRIM_AFTER)
        engage_trim(d);
    return st;
}

/* ------------------------------------------------------------------ */
/* Decoding one line                                                   */
/* ------------------------------------------------------------------ */

/*
 * Decode one complete, non-blank line (terminator removed) into *out and
 * hold its tree. The single entry point for line decoding. Token lines take
 * the scanner: no tree, so nothing is held (the previous tree is already
 * released), and the message's strings point into the consumed line (which
 * the scanner may write NULs into) or into d->scan, both left alone until
 * the next call. Whatever it declines, jansson decodes, and words the error.
 */
static maas_status decode_line(maas_ndjson *d, char *line, size_t len, maas_msg *out)
{
    json_error_t jerr;
    json_t *root;
    char why[160];
    maas_status st;

    release_held(d);
    if (maas_scan_token_line(line, len, out, &d->scan) == MAAS_SCAN_TOKEN)
        return MAAS_OK;

    root = json_loadb(line, len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return fail(d, MAAS_ERR_NO_MEMORY, "line %lu: out of memory decoding JSON",
                        d->line_no);
        return fail(d, MAAS_ERR_PROTOCOL, "line %lu: invalid JSON at column %d: %s",
                    d->line_no, jerr.column, jerr.text);
    }
    st = maas_msg_from_json(out, root, why, sizeof why);
    if (st != MAAS_OK) {
        json_decref(root);
        maas_msg_init(out);
        return fail(d, st, "line %lu: %s", d->line_no, why);
    }
    d->held = root;
    return MAAS_OK;
}

static int is_blank_line(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

/* One framed line (its '\n' removed, line_no already counted): MAAS_DONE
   when blank, else the result of decoding it. */
static maas_status take_line(maas_ndjson *d, char *line, size_t len, maas_msg *out)
{
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len > d->max_line)
        return fail_too_long(d, d->line_no);
    if (is_blank_line(line, len))
        return MAAS_DONE;
    return decode_line(d, line, len, out);
}

/* ------------------------------------------------------------------ */
/* Framing                                                             */
/* ------------------------------------------------------------------ */

static maas_status next_line(maas_ndjson *d, maas_msg *out);

maas_status maas_ndjson_next(maas_ndjson *d, maas_msg *out)
{
    /* A decoded line fills every field of *out itself: empty it only otherwise. */
    maas_status st = next_line(d, out);
    if (st != MAAS_OK)
        maas_msg_init(out);
    return st;
}

static maas_status next_line(maas_ndjson *d, maas_msg *out)
{
    if (d->failed != MAAS_OK)
        return d->failed;
    release_held(d);

    for (;;) {
        size_t pending = d->len - d->start;
        char *line = NULL;
        const char *nl = NULL;
        maas_status st;

        if (pending > d->scanned && d->nl_end > d->start) {
            /* The common token line is framed by the scan that decodes it. */
            size_t len;
            if (maas_scan_token_prefix(d->buf + d->start, pending, d->max_line, &len, out,
                                       &d->scan) == MAAS_SCAN_TOKEN) {
                d->start += len + 1;
                d->scanned = 0;
                d->line_no++;
                return MAAS_OK;
            }
        }
        if (pending > d->scanned) {
            line = d->buf + d->start;
            nl = memchr(line + d->scanned, '\n', pending - d->scanned);
        }
        if (nl == NULL) {
            d->scanned = pending;
            if (d->overflow)
                return fail_too_long(d, d->line_no + 1);
            return MAAS_DONE;
        }
        d->start += (size_t)(nl - line) + 1;
        d->scanned = 0;
        d->line_no++;
        st = take_line(d, line, (size_t)(nl - line), out);
        if (st != MAAS_DONE)
            return st;
    }
}

int maas_ndjson_has_line(maas_ndjson *d)
{
    char *first = d->buf + d->start, *line = first, *end = d->buf + d->len;
    const char *from = first + d->scanned, *nl;

    if (d->failed != MAAS_OK || d->start + d->scanned >= d->len || d->nl_end <= d->start)
        return 0; /* no '\n' at or after start */
    if (*first != ' ' && *first != '\t' && *first != '\r' && *first != '\n')
        return 1; /* a line with content, and its '\n' is somewhere ahead */
    for (;;) {
        nl = memchr(from, '\n', (size_t)(end - from));
        if (nl == NULL) {
            if (line == first)
                d->scanned = d->len - d->start;
            return 0;
        }
        if (line == first) /* [start, nl) holds no '\n': next() finds this one at once */
            d->scanned = (size_t)(nl - first);
        /* next() skips blank lines: only a line with content is a message to come */
        if (!is_blank_line(line, (size_t)(nl - line)))
            return 1;
        line = (char *)nl + 1;
        from = line;
    }
}

maas_status maas_ndjson_finish(maas_ndjson *d, maas_msg *out)
{
    maas_status st = maas_ndjson_next(d, out);
    char *line;
    size_t len;

    if (st != MAAS_DONE)
        return st; /* a complete line was still buffered, or a failure */
    len = d->len - d->start;
    if (len == 0)
        return MAAS_DONE;
    line = d->buf + d->start;
    d->start = d->len;
    d->scanned = 0;
    d->line_no++;
    return take_line(d, line, len, out);
}
