#include <string.h>

#include "maas/maas.h"
#include "trim.h"

static const char inserted[] = ",\"" MAAS_TRUNCATED_KEY "\":true";

static int is_gen_key(const char *k)
{
    return !strcmp(k, "generated_text") || !strcmp(k, "generatedText");
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return 0;
}

/* Lex one byte: returns 1 to keep it, 0 to drop it; *insert set after a cut string. */
static int lex(maas_trim *t, char c, int *insert)
{
    unsigned char u = (unsigned char)c;
    if (t->in_string) {
        int keep;
        if (t->escape) {
            t->escape = 0;
            if (c == 'u') {
                t->hex_left = 4;
                t->hex = 0;
            }
            keep = !t->dropping;
        } else if (t->hex_left) {
            t->hex = (t->hex << 4) | (unsigned)hexval(c);
            if (--t->hex_left == 0)
                /* A high surrogate must stay with the low one that follows. */
                t->high_surrogate = t->hex >= 0xd800 && t->hex <= 0xdbff;
            keep = !t->dropping;
        } else if (c == '"') {
            t->in_string = 0;
            if (t->in_gen && t->cut && !t->inserted) {
                *insert = 1; /* once a line: the output bound counts on it */
                t->inserted = 1;
            }
            t->in_gen = t->dropping = 0;
            return 1;
        } else {
            /* A character or an escape starts here: the only place a cut may
             * fall (never inside a UTF-8 sequence, an escape or a surrogate pair). */
            int starts = c == '\\' || (u & 0xc0) != 0x80;
            if (t->in_gen && !t->dropping && starts && !t->high_surrogate && !t->replaying &&
                t->gen_kept >= MAAS_GENERATED_TEXT_MAX)
                t->dropping = t->cut = 1;
            if (c == '\\')
                t->escape = 1;
            else if (starts)
                t->high_surrogate = 0;
            if (!t->in_gen && c != '\\' && t->key_len < sizeof t->key - 1)
                t->key[t->key_len++] = c;
            keep = !t->dropping;
        }
        if (keep && t->in_gen)
            t->gen_kept++; /* bytes kept, escapes included */
        return keep;
    }
    switch (c) {
    case '"':
        t->in_string = 1;
        t->escape = t->hex_left = t->high_surrogate = 0;
        t->in_gen = t->after_colon && is_gen_key(t->cur_key);
        t->gen_kept = 0;
        t->key_len = 0;
        t->after_colon = 0;
        return 1;
    case ':':
        t->key[t->key_len] = '\0';
        memcpy(t->cur_key, t->key, sizeof t->cur_key);
        t->after_colon = 1;
        return 1;
    case ' ':
    case '\t':
    case '\r':
        return 1;
    default:
        t->after_colon = 0;
        return 1;
    }
}

void maas_trim_start(maas_trim *t, const char *line, size_t n)
{
    size_t i;
    int insert = 0;
    memset(t, 0, sizeof *t);
    t->on = 1;
    /* The bytes already kept are replayed for the lexer's state only: they
     * stay, so no cut may be decided among them. */
    t->replaying = 1;
    for (i = 0; i < n; i++)
        lex(t, line[i], &insert);
    t->replaying = 0;
}

size_t maas_trim_feed(maas_trim *t, const char *data, size_t len, char *out, size_t *kept)
{
    size_t i, k = 0;
    for (i = 0; i < len; i++) {
        int insert = 0;
        if (data[i] == '\n') {
            out[k++] = '\n';
            t->on = 0;
            *kept = k;
            return i + 1;
        }
        if (lex(t, data[i], &insert))
            out[k++] = data[i];
        if (insert) {
            memcpy(out + k, inserted, sizeof inserted - 1);
            k += sizeof inserted - 1;
        }
    }
    *kept = k;
    return len;
}
