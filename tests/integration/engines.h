/*
 * engines: one generation through any of the four ways an application runs
 * one, so that a suite states a case once and tests it on every path:
 *
 *   BLOCKING  maas_generate() and its token callback
 *   PULL      maas_stream_open() / maas_stream_next()
 *   POLL      a maas_multi driven by maas_multi_poll()
 *   EVENT     a maas_multi driven by an event loop (poll(2) here) through
 *             the socket and timer callbacks and maas_multi_socket_action()
 *
 * A multi is driven as an application drives it: it waits as long as the
 * multi says, and "no timer" means "until a socket is ready", which a
 * silent server never is (capped at ENGINE_STUCK_MS, then the run fails
 * as "never ended").
 */
#ifndef MAAS_TEST_ENGINES_H
#define MAAS_TEST_ENGINES_H

#include <stddef.h>
#include <maas/maas.h>
#include "loop.h"

enum engine { BLOCKING, PULL, POLL, EVENT, ENGINES };
extern const char *const engine_name[ENGINES];

#define ENGINE_STUCK_MS 45000L

/* How one generation ended. */
struct outcome {
    maas_status st;
    char message[512];
    unsigned attempts;
    int http_status;
    int grpc_code;
    long ms;             /* from the call (or the add) to the end */
    size_t tokens;       /* tokens handed to the consumer */
    int got_details;     /* the final message was delivered */
    int done;            /* a multi's on_done ran (once) */
    int done_calls;      /* how many times it ran: more than one is a bug */
    size_t cancel_at;    /* internal: the token callback cancels at this count */
};

/* What the consumer does besides reading to the end. */
struct engine_job {
    /*
     * Give up after this many tokens (0: read to the end). By default the
     * token callback returns nonzero (BLOCKING, POLL, EVENT) or the reader
     * calls maas_stream_cancel() (PULL); the outcome is MAAS_ERR_CANCELLED.
     */
    size_t stop_after;
    /*
     * Give up by freeing the running stream instead (PULL, POLL, EVENT;
     * BLOCKING cancels from its callback, its only way): the outcome is
     * MAAS_ERR_CANCELLED with "freed while running", and a multi's on_done
     * must not run for it.
     */
    int free_running;
    /*
     * Called once the stream has ended and been freed while its client and
     * (for POLL and EVENT) its multi are still alive: where a suite checks
     * what is left open. May be NULL.
     */
    void (*before_teardown)(enum engine e, const struct outcome *o, void *arg);
    void *arg;
};

/* One generation of `r` on `c` through engine `e`. `job` may be NULL. */
void engine_run(enum engine e, maas_client *c, const maas_request *r, const struct engine_job *job,
                struct outcome *o);

#endif
