/*
 * maas-emulator: the token endpoint's own faults (--token-expires-in,
 * --token-fail-after, the token-lifetime of one answer) and the seeded
 * random fault mode (--chaos SEED[:PERCENT]) that picks a fault per
 * request, token endpoint included, for a soak test.
 *
 * SPDX-License-Identifier: MIT
 */
#include "emulator.h"

#include <stdio.h>
#include <string.h>

static atomic_ulong chaos_seq;

/* A number in [0, n) from the seed and the request's sequence number. */
static uint64_t pick(uint64_t *state, uint64_t n)
{
    *state = mix64(*state + 0x9e3779b97f4a7c15ULL);
    return n ? *state % n : 0;
}

static void set_status(struct faults *f, int status, const char *retry_after)
{
    f->status = status;
    if (retry_after)
        snprintf(f->retry_after, sizeof f->retry_after, "%s", retry_after);
}

/* One request's random fault. Stream faults are those a client must survive
 * or report: the same request with the same fault always behaves the same. */
void chaos_prepare(struct request *rq)
{
    struct faults *f = &rq->f;
    uint64_t st, roll;
    if (!g_cfg.random_faults || (rq->route != ROUTE_TOKEN && rq->route != ROUTE_GENERATE))
        return;
    st = mix64(g_cfg.random_seed ^ ((uint64_t)atomic_fetch_add(&chaos_seq, 1) << 1));
    if (pick(&st, 100) >= (uint64_t)g_cfg.random_percent)
        return;
    atomic_fetch_add(&g_stats.random_faults, 1);
    roll = pick(&st, 6);
    if (rq->route == ROUTE_TOKEN) {
        switch (roll) {
        case 0: f->first_byte_delay_ms = 100 + (long)pick(&st, 1400); break;
        case 1: set_status(f, 503, NULL); break;
        case 2: set_status(f, 429, "1"); break;
        case 3: f->drop_after = 0; break;
        default: rq->token_lifetime_s = 1 + (long)pick(&st, 3); break; /* short lifetimes */
        }
        return;
    }
    switch (pick(&st, 11)) {
    case 0: set_status(f, 401, NULL); break;
    case 1: set_status(f, 429, "1"); break;
    case 2: set_status(f, 503, NULL); break;
    case 3: f->drop_after = 0; break;                            /* before the first token */
    case 4: f->drop_after = 1 + (long)pick(&st, 8); break;       /* after some tokens */
    case 5: f->stall_after = (long)pick(&st, 8); break;          /* the idle clock's */
    case 6: f->blank_lines = true; break;
    case 7: f->delay_ms = 5 + (long)pick(&st, 40); break;
    case 8: f->first_byte_delay_ms = 100 + (long)pick(&st, 1400); break;
    case 9: f->expire_token = true; break;                       /* a 401 for every holder */
    default: f->truncate_after = 1 + (long)pick(&st, 8); break;
    }
}

/* The token endpoint's answer to a good request: refused past
 * --token-fail-after tokens, else a token with its lifetime. */
bool chaos_token_refused(void)
{
    return g_cfg.token_fail_after >= 0 &&
           atomic_load(&g_stats.tokens_issued) >= g_cfg.token_fail_after;
}

long chaos_token_lifetime(const struct request *rq)
{
    return rq->token_lifetime_s > 0 ? rq->token_lifetime_s : g_cfg.token_lifetime_s;
}

json_t *chaos_expires_in(const struct request *rq)
{
    if (rq->token_lifetime_s <= 0 && g_cfg.token_expires_in >= 0)
        return json_real(g_cfg.token_expires_in);
    return json_integer((json_int_t)chaos_token_lifetime(rq));
}
