/*
 * harness: start maas-emulator on an ephemeral loopback port for a test,
 * read its counters and drive its control endpoints.
 */
#ifndef MAAS_TEST_HARNESS_H
#define MAAS_TEST_HARNESS_H

#include <stddef.h>
#include <sys/types.h>
#include <maas/maas.h>

struct front;
struct CMUnitTest;

typedef struct emu {
    pid_t pid;
    char api[256];   /* MAAS_API_BASE_URL */
    char auth[256];  /* MAAS_AUTH_URL */
    char root[256];  /* MAAS_EMULATOR_URL */
    char ca[256];    /* set after emu_start for an HTTPS emulator: the CA its own requests trust */
    int stopped;     /* set by emu_stop */
    int exit_status; /* emu_stop's result: 0 for a clean shutdown */
    /*
     * MAAS_TEST_FRONT=h2: nghttpx in front of this emulator (front.h),
     * started and stopped with it; emu_options and emu_export_env aim at it.
     */
    struct front *front;
    int front_failed; /* it did not exit cleanly, or a request did not use h2 */
} emu;

/*
 * MAAS_TEST_FRONT=h2: the suite runs through a real HTTP/2 front end. Every
 * emulator it starts gets nghttpx in front of it, its clients speak h2 to
 * nghttpx, and its stop checks from nghttpx's access log that every request
 * used h2 (at least one request: a run that never went through proves
 * nothing). The emulator then sees nghttpx's connections, not the client's:
 * the connection counters below refuse to answer (-2) so that a check that
 * means nothing there cannot pass.
 */
int emu_through_front(void);
/*
 * Through a front end, drop from `tests` the cases named in `names` (each
 * with its one-line reason in `why`, same index) and print each with its
 * reason. Returns the number of tests left, or -1 if a name is not among
 * the tests (a renamed case would silently run again). Directly: n.
 */
int emu_leave_out_through_front(struct CMUnitTest *tests, size_t n, const char *const *names,
                                const char *const *why, size_t nnames);

/* Start the emulator with extra arguments (NULL-terminated list, may be NULL). 0 on success. */
int emu_start(emu *e, const char *const *args);
/*
 * SIGTERM and reap; returns its exit status (0 for a clean shutdown), or 1
 * if its front end failed (see emu_through_front).
 */
int emu_stop(emu *e);
/*
 * A suite's exit code: cmocka's, unless the emulator was never stopped or did
 * not exit cleanly (a crash, a sanitizer report at its exit), or its front
 * end failed: then nonzero.
 * cmocka reports a failing group teardown yet exits 0, so every suite that
 * stops its emulator in a teardown returns emu_suite_result(rc, &E).
 */
int emu_suite_result(int cmocka_rc, const emu *e);
/* A string from GET /emulator/stats into out ("" on failure). */
void emu_stat_string(const emu *e, const char *name, char *out, size_t outlen);
/* One counter from GET /emulator/stats, -1 on failure. */
long emu_stat(const emu *e, const char *name);
/* Poll a counter until it equals `want` or `timeout_ms` passes; returns the last value. */
long emu_wait_stat(const emu *e, const char *name, long want, long timeout_ms);
/*
 * Connections open at the emulator other than the harness's own stats
 * request, once that number equals `want` or `timeout_ms` passed.
 */
long emu_wait_connections(const emu *e, long want, long timeout_ms);
/* The same for connections to the API's listener only (not the token endpoint's). */
long emu_wait_api_connections(const emu *e, long want, long timeout_ms);
/*
 * Connection hygiene while a client is still alive (maas_client_free closes
 * everything, so checking after it proves nothing): no stream is still being
 * served (an abandoned stream's connection was closed, not kept half-read),
 * at most `max_api` kept-alive connections to the API are open. 0 if so;
 * else -1 and what was seen in `why`. Connections to the token endpoint are
 * not counted: each channel of the blocking calls may keep one.
 */
int emu_idle(const emu *e, long max_api, char *why, size_t whylen);
/* POST a control endpoint (e.g. "/emulator/reset") with a JSON body (may be NULL). HTTP status. */
long emu_post(const emu *e, const char *path, const char *json);
/* Queue a fault for the next `count` requests to `path`. */
long emu_fault(const emu *e, const char *path, const char *fault, int count);
/* A token straight from the token endpoint (for MAAS_TOKEN tests). 0 on success. */
int emu_fetch_token(const emu *e, char *out, size_t outlen);
/* Client options aimed at the emulator with its default credentials. */
void emu_options(const emu *e, maas_client_options *o);
/* Export MAAS_* environment variables aimed at the emulator. */
void emu_export_env(const emu *e);

#endif
