/*
 * maas-emulator: the content reader behind every response body that is
 * not a plain buffer: generation streams, and any body with a byte fault
 * (split, drip, drop-after, stall-after).
 *
 * The reader keeps one pending piece of output (`out`, consumed from
 * `out_off`).  When it is empty, produce() appends the next message(s);
 * then bytes are handed to MHD: all that fits (one chunk per message),
 * or one byte per call for split/drip.  A pause suspends the connection
 * through sched.c and returns 0; MHD calls again once it is resumed.
 *
 * SPDX-License-Identifier: MIT
 */
#include "emulator.h"

#include <inttypes.h>
#include <string.h>

enum { PH_TOKENS = 0, PH_FINAL_TEXT, PH_DONE };
enum produced { P_DATA, P_WAIT, P_END, P_DROP };

static void eol(struct request *rq)
{
    if (rq->f.crlf)
        sbuf_add(&rq->out, "\r\n", 2);
    else
        sbuf_add(&rq->out, "\n", 1);
}

static void line_begin(struct request *rq)
{
    if (rq->lines > 0 && rq->f.blank_lines)
        eol(rq);
}

static void line_end(struct request *rq)
{
    eol(rq);
    rq->lines++;
}

/* {"result":{"response":{"token":{...},"top_tokens":[]   (left open) */
static void token_head(struct request *rq, uint64_t i)
{
    size_t len;
    uint32_t id;
    bool special;
    const char *text = gen_token(&rq->plan, i, &len, &id, &special);
    sbuf_addf(&rq->out, "{\"result\":{\"response\":{\"token\":{\"id\":%" PRIu32 ",\"text\":\"", id);
    sbuf_add(&rq->out, text, len);
    sbuf_add(&rq->out, "\"", 1);
    double lp;
    if (gen_logprob(&rq->plan, i, &lp))
        sbuf_addf(&rq->out, ",\"logprob\":%.8g", special ? -0.00012207031 : lp);
    sbuf_addf(&rq->out, ",\"special\":%s},\"top_tokens\":[]", special ? "true" : "false");
}

static void request_id_tail(struct request *rq)
{
    sbuf_addf(&rq->out, ",\"requestID\":\"%s\"}}}", rq->rid);
}

static enum produced produce(struct request *rq, size_t target)
{
    const struct faults *f = &rq->f;
    const uint64_t total = gen_total(&rq->plan);
    for (;;) {
        if (rq->out.oom)
            return P_DROP;
        switch (rq->phase) {
        case PH_TOKENS: {
            const uint64_t n = rq->msg_i; /* tokens sent so far */
            if (n >= total) {
                rq->phase = PH_DONE;
                continue;
            }
            long pause = f->delay_ms >= 0 ? f->delay_ms : g_cfg.token_interval_ms;
            if (n > 0 && pause > 0 && !f->coalesce && rq->delayed_for != n + 1) {
                if (rq->out.len)
                    return P_DATA;
                rq->delayed_for = n + 1;
                if (!sched_wait(&rq->w, pause, pause >= EMU_WATCH_MIN_MS))
                    return P_DROP;
                return P_WAIT;
            }
            if (f->error_after == (long)n) {
                line_begin(rq);
                sbuf_addf(&rq->out,
                          "{\"error\":{\"code\":14,\"message\":\"" EMU_CAPACITY_MSG
                          "\",\"details\":[{\"@type\":\"" EMU_STRINGVALUE_TYPE "\","
                          "\"value\":\"%s\"}]}}",
                          rq->rid);
                line_end(rq);
                rq->phase = PH_DONE;
                rq->end = "error-after";
                return P_DATA;
            }
            if (f->drop_after == (long)n) {
                if (rq->out.len)
                    return P_DATA;
                rq->end = "dropped";
                return P_DROP;
            }
            if (f->truncate_after == (long)n) {
                rq->phase = PH_DONE;
                rq->end = "truncated";
                continue;
            }
            if (f->stall_after == (long)n) {
                if (rq->out.len)
                    return P_DATA;
                if (rq->stalled) /* only a hang-up or shutdown ends a stall */
                    return P_DROP;
                rq->stalled = true;
                rq->end = "stalled";
                if (!sched_wait(&rq->w, -1, true))
                    return P_DROP;
                return P_WAIT;
            }
            if (f->malformed_after == (long)n && !rq->malformed_done) {
                rq->malformed_done = true;
                line_begin(rq);
                sbuf_adds(&rq->out, "{\"result\": {\"response\": {\"token\": ");
                line_end(rq);
                if (!f->coalesce)
                    return P_DATA;
            }
            line_begin(rq);
            token_head(rq, n);
            if (n + 1 == total) {
                sbuf_adds(&rq->out, ",\"generated_text\":\"");
                rq->phase = PH_FINAL_TEXT;
                rq->text_j = 0;
                continue;
            }
            request_id_tail(rq);
            line_end(rq);
            rq->msg_i++;
            if (!f->coalesce || rq->out.len >= target)
                return P_DATA;
            continue;
        }
        case PH_FINAL_TEXT: {
            /* generated_text is recomputed token by token, a buffer-full at a time. */
            while (rq->text_j < rq->plan.n_text && rq->out.len < target && !rq->out.oom) {
                size_t len;
                uint32_t id;
                bool special;
                const char *text = gen_token(&rq->plan, rq->text_j, &len, &id, &special);
                sbuf_add(&rq->out, text, len);
                rq->text_j++;
            }
            if (rq->text_j < rq->plan.n_text)
                return P_DATA;
            sbuf_addf(&rq->out,
                      "\",\"details\":{\"finish_reason\":\"%s\",\"generated_tokens\":%" PRIu64,
                      rq->plan.eos ? "FINISH_REASON_EOS_TOKEN" : "FINISH_REASON_LENGTH", total);
            if (rq->plan.has_seed)
                sbuf_addf(&rq->out, ",\"seed\":\"%" PRIu64 "\"", rq->plan.seed);
            sbuf_add(&rq->out, "}", 1);
            request_id_tail(rq);
            line_end(rq);
            rq->msg_i++;
            rq->phase = PH_DONE;
            rq->end = "complete";
            return P_DATA;
        }
        default:
            return rq->out.len ? P_DATA : P_END;
        }
    }
}

ssize_t body_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct request *rq = cls;
    (void)pos;
    sched_resumed(&rq->w);
    if (rq->w.aborted) {
        rq->end = "shutdown";
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (rq->w.hangup) {
        rq->end = "client-gone";
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    const bool bytewise = rq->f.split || rq->f.drip_ms >= 0;
    for (;;) {
        if (rq->out_off < rq->out.len) {
            if (rq->drip_due) {
                rq->drip_due = false;
                if (rq->f.drip_ms > 0) {
                    if (!sched_wait(&rq->w, rq->f.drip_ms, rq->f.drip_ms >= EMU_WATCH_MIN_MS))
                        return MHD_CONTENT_READER_END_WITH_ERROR;
                    return 0;
                }
            }
            size_t n = rq->out.len - rq->out_off;
            if (bytewise)
                n = 1;
            if (n > max)
                n = max;
            if (rq->kind == BODY_PLAIN) {
                /* Byte-counted faults of ordinary bodies. */
                if (rq->f.drop_after >= 0) {
                    uint64_t limit = (uint64_t)rq->f.drop_after;
                    if (rq->sent >= limit) {
                        rq->end = "dropped";
                        return MHD_CONTENT_READER_END_WITH_ERROR;
                    }
                    if (n > limit - rq->sent)
                        n = (size_t)(limit - rq->sent);
                }
                if (rq->f.stall_after >= 0) {
                    uint64_t limit = (uint64_t)rq->f.stall_after;
                    if (rq->sent >= limit) {
                        if (rq->stalled || !sched_wait(&rq->w, -1, true))
                            return MHD_CONTENT_READER_END_WITH_ERROR;
                        rq->stalled = true;
                        rq->end = "stalled";
                        return 0;
                    }
                    if (n > limit - rq->sent)
                        n = (size_t)(limit - rq->sent);
                }
            }
            memcpy(buf, rq->out.p + rq->out_off, n);
            rq->out_off += n;
            rq->sent += n;
            if (rq->f.drip_ms >= 0)
                rq->drip_due = true;
            return (ssize_t)n;
        }
        if (rq->kind == BODY_PLAIN)
            return MHD_CONTENT_READER_END_OF_STREAM;
        sbuf_reset(&rq->out);
        rq->out_off = 0;
        switch (produce(rq, max)) {
        case P_DATA:
            continue;
        case P_WAIT:
            return 0;
        case P_END:
            return MHD_CONTENT_READER_END_OF_STREAM;
        case P_DROP:
        default:
            if (!rq->end)
                rq->end = "shutdown";
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

void body_reader_free(void *cls)
{
    struct request *rq = cls;
    if (rq->kind == BODY_STREAM)
        atomic_fetch_sub(&g_stats.streams_active, 1);
    request_unref(rq);
}
