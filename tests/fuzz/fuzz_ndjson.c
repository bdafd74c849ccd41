/*
 * Fuzz target: the NDJSON decoder. The first byte of the input chooses how
 * the rest is split into feeds (so that every split is reachable) and the
 * second a small line cap; every message is drained and checked for the
 * decoder's invariants.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ndjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_msg(const maas_msg *m)
{
    /* Touch every byte the message points to: ASan/valgrind catch a bad pointer. */
    volatile unsigned sum = 0;
    size_t i;
    if (m->has_token)
        for (i = 0; i < m->token.text_len; i++)
            sum += (unsigned char)m->token.text[i];
    if (m->type == MAAS_MSG_FINAL) {
        for (i = 0; i < m->details.generated_text_len; i++)
            sum += (unsigned char)m->details.generated_text[i];
        sum += (unsigned)strlen(m->details.finish_reason_name);
    }
    if (m->type == MAAS_MSG_ERROR)
        sum += (unsigned)strlen(m->error_message);
    sum += (unsigned)strlen(m->request_id);
    (void)sum;
    if (m->type != MAAS_MSG_TOKEN && m->type != MAAS_MSG_FINAL && m->type != MAAS_MSG_ERROR)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    maas_ndjson d;
    maas_msg m;
    size_t step, pos = 0, max_line;
    maas_status st = MAAS_OK;

    if (size < 2)
        return 0;
    step = (size_t)data[0] % 64 + 1;          /* 1..64 bytes per feed */
    max_line = data[1] < 128 ? 0 : (size_t)data[1] * 4; /* default, or a small cap */
    data += 2;
    size -= 2;
    maas_ndjson_init(&d, max_line);
    while (pos < size && st == MAAS_OK) {
        size_t n = size - pos < step ? size - pos : step;
        st = maas_ndjson_feed(&d, (const char *)data + pos, n);
        pos += n;
        while (st == MAAS_OK) {
            maas_status r = maas_ndjson_next(&d, &m);
            if (r == MAAS_DONE)
                break;
            if (r != MAAS_OK) {
                st = r;
                break;
            }
            check_msg(&m);
        }
        /* The cap bounds what the decoder keeps (plus one feed). */
        if (maas_ndjson_pending(&d) > (max_line ? max_line : MAAS_DEFAULT_MAX_LINE_BYTES) + 2 + step)
            abort();
    }
    if (st == MAAS_OK && maas_ndjson_finish(&d, &m) == MAAS_OK)
        check_msg(&m);
    if (st != MAAS_OK) {
        /* Once failed, stays failed, with a reason. */
        if (maas_ndjson_feed(&d, "\n", 1) != st || maas_ndjson_next(&d, &m) != st)
            abort();
        if (!maas_ndjson_error(&d)[0])
            abort();
    }
    maas_ndjson_cleanup(&d);
    return 0;
}
