/*
 * trim: keeps a final message's generated_text from costing memory in
 * proportion to the stream's length.
 *
 * The last line of a stream repeats the whole generated text. Once a line's
 * unterminated part grows past MAAS_TRIM_AFTER bytes, ndjson.c passes the
 * rest of that line through trim_feed(), a small JSON lexer that keeps every
 * byte except the content of a "generated_text" (or "generatedText") string
 * beyond MAAS_GENERATED_TEXT_MAX bytes; the cut falls on a character
 * boundary (never inside a UTF-8 sequence, an escape or a surrogate pair),
 * and the member "_libmaas_generated_text_truncated":true is inserted after
 * the string so that the decoded details can say so. Lines that never grow
 * that long never see the lexer: it costs nothing on the hot path.
 */
#ifndef MAAS_LIB_TRIM_H
#define MAAS_LIB_TRIM_H

#include <stddef.h>

/* A line's unterminated part longer than this engages the lexer. */
#define MAAS_TRIM_AFTER (256u * 1024u)
/* The member the lexer inserts after a cut generated_text. */
#define MAAS_TRUNCATED_KEY "_libmaas_generated_text_truncated"

typedef struct maas_trim {
    int on;              /* the current line is being lexed */
    int replaying;       /* maas_trim_start: learning the state of bytes already kept */
    int in_string, escape, hex_left, high_surrogate;
    unsigned hex;        /* the \uXXXX value being read */
    int after_colon;     /* the next value belongs to cur_key */
    int in_gen;          /* inside the generated_text string */
    int dropping;        /* past the cut: content bytes are dropped */
    int cut;             /* this line's generated_text was cut */
    int inserted;        /* the truncation member was written */
    size_t gen_kept;     /* content bytes kept of the generated_text */
    char key[32], cur_key[32];
    size_t key_len;
} maas_trim;

/* Start lexing a line whose first `n` bytes (no '\n') are already kept. */
void maas_trim_start(maas_trim *t, const char *line, size_t n);

/* Room `out` needs beyond the input's length. */
#define MAAS_TRIM_EXTRA (sizeof MAAS_TRUNCATED_KEY + 8)

/*
 * Lex `len` bytes of the current line, stopping after a '\n' (which ends the
 * line and turns the lexer off). Kept bytes are written to `out` (room for
 * len + MAAS_TRIM_EXTRA bytes); *kept receives their count. Returns the
 * number of input bytes consumed.
 */
size_t maas_trim_feed(maas_trim *t, const char *data, size_t len, char *out, size_t *kept);

#endif
