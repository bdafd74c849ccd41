/*
 * bench-decoder: the libmaas stream decoder against a jansson-only baseline
 * on a recorded stream of token lines in the guide's shape.
 *
 *   bench-decoder [TOKENS]       (default 1000000)
 *
 * The stream: TOKENS token lines like
 *   {"result":{"response":{"token":{"id":1061,"text":"Data","logprob":-0.11687851,
 *    "special":false},"top_tokens":[],"requestID":"8764a8c3-..."}}}
 * (mostly plain words, some with escapes, some multi-byte UTF-8, a logprob
 * on 6 tokens of 7) and the final message. Deterministic: the same bytes on
 * every run.
 *
 *  - decoder: maas_ndjson fed 4 KiB pieces, drained after each feed, every
 *    token's id, text, logprob, special and request id read, and after each
 *    token the look-ahead behind maas_token.last_buffered, as a stream does;
 *  - baseline: the same bytes split into lines, json_loadb() on each with
 *    the decoder's flags, the same fields read with jansson's getters.
 *
 * Time is CPU time of the process (CLOCK_PROCESS_CPUTIME_ID), the median
 * of 5 runs each. Both read the same values: their checksums must agree, else
 * the program exits 1. Not a test: the figures depend on the machine.
 *
 * SPDX-License-Identifier: MIT
 */
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "message.h"
#include "ndjson.h"

#define PIECE 4096
#define RUNS 5

/* ------------------------------------------------------------------ */
/* The recorded stream                                                 */
/* ------------------------------------------------------------------ */

/* Token texts as they appear inside the JSON string (already escaped). */
static const char *const plain_words[] = {
    " the", " of", " and", " to", " a", " in", " is", " that", " for", " it",
    " data", " information", " are", " often", " used", " interchangeably", " but",
    " they", " have", " distinct", " meanings", ".", ",", " Data", " refers", " set",
    " facts", " numbers", " or", " observations", " collected", " recorded", " stored",
    " way", " can", " be", " analyzed", " reference", " words", " images", " any",
    " other", " form", " content", " It", "'s", " raw", " material", " inform",
    " decisions", " answer", " questions", " solve", " problems", ":", " list",
    " customer", " names", " ages", " purchase", " history", " collection", "**",
    " Information", " on", " hand", " description", " explanation", " interpretation",
    " provides", " meaning", " context", " result", " processing", " output", " educate",
    " influence", " To", " illustrate", " difference", " consider", " example", " exam",
    " scores", " (", "e", ".g", ".,", " 90", " 80", " 95", " 70", ")", " average", " score",
    " indicating", " students", " performing", " above", " while", " summarize",
};
static const char *const escaped_words[] = {
    "\\n", "\\n\\n", " \\\"", "\\\"", " C:\\\\path", " tab\\there", " \\u001f", "\\u00e9t\\u00e9",
    " \\ud83d\\ude42", "\\r\\n",
};
static const char *const utf8_words[] = {
    " caf\xc3\xa9", " na\xc3\xafve", " \xe6\x97\xa5\xe6\x9c\xac", " \xf0\x9f\x99\x82",
    " \xc3\x9c" "ber", " r\xc3\xa9sum\xc3\xa9", " \xe2\x80\x94", " \xd8\xa7\xd9\x84\xd8\xb9",
};

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

typedef struct stream {
    char *p;
    size_t len, cap;
} stream;

static void put(stream *s, const char *data, size_t n)
{
    if (s->cap - s->len < n) {
        while (s->cap - s->len < n)
            s->cap = s->cap ? s->cap * 2 : 1 << 20;
        s->p = realloc(s->p, s->cap);
        if (s->p == NULL) {
            fprintf(stderr, "bench-decoder: out of memory\n");
            exit(2);
        }
    }
    memcpy(s->p + s->len, data, n);
    s->len += n;
}

static void build(stream *s, size_t tokens)
{
    static const char rid[] = "8764a8c3-deb2-4f1d-a60a-a47043b0e9f5";
    uint64_t r = 0x243F6A8885A308D3ull;
    char line[512];
    size_t i;
    int n;

    for (i = 0; i < tokens; i++) {
        uint64_t x = rng_next(&r);
        unsigned pick = (unsigned)(x % 100);
        const char *text;
        uint32_t id = (uint32_t)(rng_next(&r) >> 32); /* hashed ids, as the emulator's */
        char lp[32];

        if (pick < 5)
            text = escaped_words[(x >> 8) % (sizeof escaped_words / sizeof escaped_words[0])];
        else if (pick < 12)
            text = utf8_words[(x >> 8) % (sizeof utf8_words / sizeof utf8_words[0])];
        else
            text = plain_words[(x >> 8) % (sizeof plain_words / sizeof plain_words[0])];
        if (i % 7 == 6) {
            lp[0] = '\0'; /* no logprob: the field is optional */
        } else {
            /* a float32 logprob as the server prints it */
            float f = -(float)((double)(rng_next(&r) % 10000000) / 1000000.0);
            snprintf(lp, sizeof lp, ",\"logprob\":%.8g", (double)f);
        }
        n = snprintf(line, sizeof line,
                     "{\"result\":{\"response\":{\"token\":{\"id\":%" PRIu32 ",\"text\":\"%s\"%s,"
                     "\"special\":false},\"top_tokens\":[],\"requestID\":\"%s\"}}}\n",
                     id, text, lp, rid);
        put(s, line, (size_t)n);
    }
    n = snprintf(line, sizeof line,
                 "{\"result\":{\"response\":{\"token\":{\"id\":2,\"text\":\"</s>\",\"logprob\":"
                 "-0.00012207031,\"special\":true},\"top_tokens\":[],\"generated_text\":\"Data "
                 "and information\",\"details\":{\"finish_reason\":\"FINISH_REASON_EOS_TOKEN\","
                 "\"generated_tokens\":%zu,\"seed\":\"13414724236876468656\"},\"requestID\":\"%s\"}}}\n",
                 tokens + 1, rid);
    put(s, line, (size_t)n);
}

/* ------------------------------------------------------------------ */
/* The two decoders                                                    */
/* ------------------------------------------------------------------ */

typedef struct sums {
    uint64_t tokens, ids, text_bytes, text_hash, specials, rid_bytes, finals;
    double logprob;
    uint64_t read_ends; /* decoder only: tokens with maas_token.last_buffered's look-ahead */
} sums;

static void add_token(sums *c, uint32_t id, const char *text, size_t len, int has_lp, double lp,
                      int special, const char *rid)
{
    c->tokens++;
    c->ids += id;
    c->text_bytes += len;
    if (len > 0)
        c->text_hash = c->text_hash * 31 + (unsigned char)text[0] + (unsigned char)text[len - 1];
    if (has_lp)
        c->logprob += lp;
    c->specials += (unsigned)special;
    c->rid_bytes += (unsigned char)rid[0];
}

static int run_decoder(const stream *s, sums *c)
{
    maas_ndjson d;
    maas_msg m;
    maas_status st = MAAS_OK;
    size_t pos;

    memset(c, 0, sizeof *c);
    maas_ndjson_init(&d, 0);
    for (pos = 0; pos < s->len; pos += PIECE) {
        size_t n = s->len - pos < PIECE ? s->len - pos : PIECE;
        if (maas_ndjson_feed(&d, s->p + pos, n) != MAAS_OK)
            break;
        while ((st = maas_ndjson_next(&d, &m)) == MAAS_OK) {
            if (m.has_token) {
                add_token(c, m.token.id, m.token.text, m.token.text_len, m.token.has_logprob,
                          m.token.logprob, m.token.special, m.request_id);
                /* as the streams do for maas_token.last_buffered */
                c->read_ends += !maas_ndjson_has_line(&d);
            }
            if (m.type == MAAS_MSG_FINAL)
                c->finals++;
        }
        if (st != MAAS_DONE)
            break;
    }
    if (st == MAAS_DONE)
        st = maas_ndjson_finish(&d, &m);
    if (st != MAAS_DONE)
        fprintf(stderr, "bench-decoder: decoder: %s\n", maas_ndjson_error(&d));
    maas_ndjson_cleanup(&d);
    return st == MAAS_DONE ? 0 : -1;
}

static json_t *get(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_null(v) ? NULL : v;
}

static int run_baseline(const stream *s, sums *c)
{
    const char *p = s->p, *end = s->p + s->len;

    memset(c, 0, sizeof *c);
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        json_error_t err;
        json_t *root, *res, *resp, *tok, *v, *rid;

        root = json_loadb(p, len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &err);
        if (root == NULL) {
            fprintf(stderr, "bench-decoder: jansson: %s\n", err.text);
            return -1;
        }
        res = get(root, "result");
        resp = get(res, "response");
        if (resp == NULL)
            resp = res;
        tok = get(resp, "token");
        rid = get(resp, "requestID");
        if (tok != NULL) {
            json_t *text = get(tok, "text");
            v = get(tok, "logprob");
            add_token(c, (uint32_t)json_integer_value(get(tok, "id")), json_string_value(text),
                      json_string_length(text), v != NULL, json_number_value(v),
                      json_is_true(get(tok, "special")), rid ? json_string_value(rid) : "");
        }
        if (get(resp, "details") != NULL)
            c->finals++;
        json_decref(root);
        p += len + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Timing                                                              */
/* ------------------------------------------------------------------ */

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of RUNS runs: a shared machine slows some runs down, and the
   median is what a run usually costs. */
static double median_of(int (*fn)(const stream *, sums *), const stream *s, sums *c)
{
    double t[RUNS];
    int i;
    for (i = 0; i < RUNS; i++) {
        double t0 = cpu_now();
        if (fn(s, c) != 0)
            exit(1);
        t[i] = cpu_now() - t0;
    }
    qsort(t, RUNS, sizeof t[0], by_value);
    return t[RUNS / 2];
}

static void report(const char *what, const char *who, const stream *s, size_t tokens, double t)
{
    printf("%-8s %-8s %zu tokens  %.1f MB  %.3f s  %.0f MB/s  %.0f ns/token\n", what, who, tokens,
           (double)s->len / 1e6, t, (double)s->len / 1e6 / t, t * 1e9 / (double)tokens);
}

int main(int argc, char **argv)
{
    size_t tokens = 1000000;
    stream s = {NULL, 0, 0};
    sums a, b;
    double td, tb;

    if (argc > 1) {
        char *end;
        unsigned long long n = strtoull(argv[1], &end, 10);
        if (*end != '\0' || n == 0 || n > 100000000ull) {
            fprintf(stderr, "usage: bench-decoder [TOKENS]\n");
            return 2;
        }
        tokens = (size_t)n;
    }
    build(&s, tokens);
    printf("stream   %zu token lines + 1 final line, %.1f bytes per line, fed in %d-byte pieces;\n"
           "         CPU time (CLOCK_PROCESS_CPUTIME_ID), median of %d runs\n",
           tokens, (double)s.len / (double)(tokens + 1), PIECE, RUNS);

    td = median_of(run_decoder, &s, &a);
    tb = median_of(run_baseline, &s, &b);
    if (memcmp(&a, &b, offsetof(sums, logprob)) != 0 || a.logprob != b.logprob ||
        a.tokens != tokens + 1 || a.finals != 1) {
        fprintf(stderr, "bench-decoder: the decoders disagree\n");
        return 1;
    }
    report("decoder", "libmaas", &s, tokens + 1, td);
    report("baseline", "jansson", &s, tokens + 1, tb);
    printf("ratio    %.1fx (target >= 8x; libmaas >= 2000 MB/s)\n", tb / td);
    free(s.p);
    return 0;
}
