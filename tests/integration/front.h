/*
 * front: nghttpx (Debian's nghttp2-proxy) in front of maas-emulator, as the
 * service's front end: TLS with ALPN h2 and http/1.1, a self-signed
 * certificate made with the openssl command in a temporary directory, the
 * API as the catch-all backend and the token endpoint as its own. It logs
 * each request as "$remote_port $alpn $status $method $path", so that a
 * test can see the client's connections and protocol from the server side.
 */
#ifndef MAAS_TEST_FRONT_H
#define MAAS_TEST_FRONT_H

#include <sys/types.h>
#include <maas/maas.h>
#include "harness.h"

typedef struct front {
    pid_t pid;
    int port;
    char dir[64];
    char key[128], cert[128], log[128], errlog[128];
    char api[128], auth[128]; /* https:// URLs through the front end */
    long log_seen;            /* for the caller's reading of the access log */
    int requests, h2_requests; /* set by front_stop: requests logged, of which over h2 */
    /*
     * Set before front_start when the emulator serves HTTPS with this
     * certificate and key: the front presents them as its own (a test of
     * verification trusts what it would trust directly), speaks TLS to the
     * emulator and leaves the client's CA bundle alone.
     */
    char tls_cert[128], tls_key[128];
    /* Set before front_start, > 0: the streams it allows on one client
     * connection at once (SETTINGS_MAX_CONCURRENT_STREAMS; nghttpx's own
     * default is 100). */
    int max_streams;
} front;

/*
 * Start nghttpx ($MAAS_NGHTTPX, else nghttpx on PATH) in front of `e`: 0
 * once its error log says it listens on its port (another port if the one
 * chosen was taken before it bound it), within 20 s. It dies with the
 * calling process.
 */
int front_start(front *f, const emu *e);
/*
 * SIGQUIT (graceful), reap within 20 s, count the requests in the access
 * log (requests, h2_requests), remove the files: 0 for a clean exit.
 */
int front_stop(front *f);
/* Aim client options at the front end: its URLs, and its certificate as the
 * only CA unless it presents the emulator's own (tls_cert). */
void front_options(const front *f, maas_client_options *o);

#endif
