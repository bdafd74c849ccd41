/* clock: the monotonic and wall clocks, one place to read them (and to fake them in tests). */
#ifndef MAAS_LIB_CLOCK_H
#define MAAS_LIB_CLOCK_H

#include <errno.h>
#include <stdint.h>
#include <time.h>

/* A wait that can be cancelled but that nothing wakes (a token fetch of a
 * stream, a waiter in the token cache) looks at its flag at least this often
 * (maas_stream_cancel also wakes the token cache's waiters at once). */
#define MAAS_CANCEL_POLL_MS 20

/*
 * A deadline_at meaning "no deadline, not even the client's deadline_ms":
 * a fetch made aside for a multi's streams, each of which keeps a deadline
 * of its own (a fetch cut at the first one's would fail the later ones
 * early). The call's own timeout (token_timeout_ms, models_timeout_ms)
 * still bounds it. Later than any real monotonic time.
 */
#define MAAS_UNBOUNDED INT64_MAX

static inline int64_t maas_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void maas_sleep_ms(int64_t ms)
{
    struct timespec ts;
    if (ms <= 0)
        return;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

#endif
