/*
 * front: nghttpx in front of maas-emulator (see front.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "front.h"

extern char **environ;

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int spawn_wait(const char *const *argv)
{
    pid_t pid;
    int status;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "front: cannot run %s: %s\n", argv[0], strerror(rc));
        return -1;
    }
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "front: %s failed\n", argv[0]);
        return -1;
    }
    return 0;
}

/*
 * A loopback port nothing listened on a moment ago. Another process may
 * take it before nghttpx binds it: front_start then tries another.
 */
static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int accepting(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/*
 * Whether nghttpx's error log says it listens on `port` ("Listening on
 * 127.0.0.1:PORT"): a connection that succeeds proves only that something
 * listens there, perhaps whoever took the port first.
 */
static int log_says_listening(const char *errlog, int port)
{
    char want[64], line[1024];
    int found = 0;
    FILE *f = fopen(errlog, "r");
    snprintf(want, sizeof want, "Listening on 127.0.0.1:%d,", port);
    while (f && !found && fgets(line, sizeof line, f))
        found = strstr(line, want) != NULL;
    if (f)
        fclose(f);
    return found;
}

/* Whether the error log shows that the bind failed for want of the port. */
static int log_says_port_taken(const char *errlog)
{
    char line[1024];
    int taken = 0;
    FILE *f = fopen(errlog, "r");
    while (f && !taken && fgets(line, sizeof line, f))
        taken = strstr(line, "Address already in use") != NULL;
    if (f)
        fclose(f);
    return taken;
}

/* nghttpx's error log to stderr: the files are removed at front_stop. */
static void print_log(const char *errlog)
{
    char line[1024];
    FILE *f = fopen(errlog, "r");
    while (f && fgets(line, sizeof line, f))
        fprintf(stderr, "front: nghttpx: %s", line);
    if (f)
        fclose(f);
}

/* The port of an emulator URL ("http://127.0.0.1:PORT/..."). */
static int url_port(const char *url)
{
    const char *p = strrchr(url + strlen("http://"), ':');
    return p ? atoi(p + 1) : -1;
}

/*
 * nghttpx on a fresh port, until it listens there: 0; 1 if the port was
 * taken before it bound it (nghttpx has exited); -1 on any other failure.
 */
static int start_once(front *f, int api_port, int token_port)
{
    char frontend[64], api_backend[64], token_backend[80], accesslog[160], errorlog[160];
    char streams[64];
    /* The emulator's own certificate is trusted by no one on the hop from
     * the front to it: that hop is the test's, not the client's. */
    int tls = f->tls_cert[0] != '\0';
    const char *nghttpx = getenv("MAAS_NGHTTPX");
    pid_t parent = getpid();
    f->port = free_port();
    if (f->port < 0)
        return -1;
    snprintf(frontend, sizeof frontend, "--frontend=127.0.0.1,%d", f->port);
    /* The API is the catch-all backend; the token endpoint is its own. */
    snprintf(api_backend, sizeof api_backend, "--backend=127.0.0.1,%d%s", api_port,
             tls ? ";;tls" : "");
    snprintf(token_backend, sizeof token_backend, "--backend=127.0.0.1,%d;/oauth2/%s", token_port,
             tls ? ";tls" : "");
    snprintf(accesslog, sizeof accesslog, "--accesslog-file=%s", f->log);
    snprintf(errorlog, sizeof errorlog, "--errorlog-file=%s", f->errlog);
    snprintf(streams, sizeof streams, "--frontend-http2-max-concurrent-streams=%d",
             f->max_streams > 0 ? f->max_streams : 100);
    const char *const argv[] = {
        /* Not the system's /etc/nghttpx/nghttpx.conf: Debian's listens on
         * port 3000 besides ours, so two fronts at once (two suites, two
         * mutants) collided there and the second exited at start. */
        nghttpx && *nghttpx ? nghttpx : "nghttpx", "--conf=/dev/null", frontend, api_backend,
        token_backend, "--workers=1", "--no-ocsp", accesslog, errorlog,
        "--accesslog-format=$remote_port $alpn $status $method $path",
        "--frontend-read-timeout=120s", "--backend-read-timeout=120s", streams,
        tls ? f->tls_key : f->key, tls ? f->tls_cert : f->cert, tls ? "--insecure" : NULL, NULL
    };
    f->pid = fork();
    if (f->pid < 0) {
        f->pid = 0;
        return -1;
    }
    if (f->pid == 0) {
        /* A test that dies, or fails between emu_start and emu_stop and
         * exits, takes its front end along: a front left behind would
         * hold its port and its backends' for the suites after it. */
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        if (null >= 0)
            dup2(null, 1);
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "front: cannot run %s (Debian package nghttp2-proxy): %s\n", argv[0],
                strerror(errno));
        _exit(127);
    }
    for (long end = now_ms() + 20000; now_ms() < end;) {
        struct timespec ts = { 0, 20 * 1000000L };
        int status;
        if (log_says_listening(f->errlog, f->port) && accepting(f->port))
            return 0;
        if (waitpid(f->pid, &status, WNOHANG) == f->pid) {
            f->pid = 0;
            if (log_says_port_taken(f->errlog))
                return 1;
            fprintf(stderr, "front: nghttpx exited at start\n");
            return -1;
        }
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "front: nghttpx did not listen on port %d within 20 s\n", f->port);
    kill(f->pid, SIGKILL);
    waitpid(f->pid, NULL, 0);
    f->pid = 0;
    return -1;
}

int front_start(front *f, const emu *e)
{
    int api_port = url_port(e->api), token_port = url_port(e->auth);
    snprintf(f->dir, sizeof f->dir, "/tmp/maas-h2-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->key, sizeof f->key, "%s/key.pem", f->dir);
    snprintf(f->cert, sizeof f->cert, "%s/cert.pem", f->dir);
    snprintf(f->log, sizeof f->log, "%s/access.log", f->dir);
    snprintf(f->errlog, sizeof f->errlog, "%s/error.log", f->dir);
    {
        const char *const argv[] = { "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                     "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f->key,
                                     "-out", f->cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                                     "-addext", "subjectAltName=IP:127.0.0.1", NULL };
        if (spawn_wait(argv))
            return -1;
    }
    if (api_port < 0 || token_port < 0)
        return -1;
    /* The port is chosen before nghttpx binds it (nghttpx takes no port 0):
     * whoever takes it in between makes nghttpx fail at start, and the next
     * attempt chooses another. */
    for (int attempt = 0;; attempt++) {
        int r = start_once(f, api_port, token_port);
        if (r == 0)
            break;
        if (r < 0 || attempt == 4) {
            print_log(f->errlog);
            return -1;
        }
        fprintf(stderr, "front: port %d was taken before nghttpx bound it: trying another\n",
                f->port);
        unlink(f->errlog);
    }
    snprintf(f->api, sizeof f->api, "https://127.0.0.1:%d/v1/maas", f->port);
    snprintf(f->auth, sizeof f->auth, "https://127.0.0.1:%d/oauth2/token", f->port);
    return 0;
}

/*
 * SIGQUIT (nghttpx's graceful shutdown: it exits 0 once its connections
 * are closed; SIGTERM would kill it at once) and reap within 20 s: 0 for a
 * clean exit.
 */
int front_stop(front *f)
{
    int status = 0, rc = 0;
    if (f->pid > 0) {
        struct timespec ts = { 0, 20 * 1000000L };
        long end = now_ms() + 20000;
        pid_t r;
        kill(f->pid, SIGQUIT);
        while ((r = waitpid(f->pid, &status, WNOHANG)) == 0 && now_ms() < end)
            nanosleep(&ts, NULL);
        if (r == 0) {
            fprintf(stderr, "front: nghttpx still running 20 s after SIGQUIT\n");
            kill(f->pid, SIGKILL);
            waitpid(f->pid, &status, 0);
            rc = -1;
        } else if (r != f->pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
            rc = -1;
        }
        f->pid = 0;
    }
    if (f->dir[0]) {
        FILE *log = fopen(f->log, "r");
        char line[1024];
        f->requests = f->h2_requests = 0;
        while (log && fgets(line, sizeof line, log)) {
            char alpn[32];
            if (sscanf(line, "%*d %31s", alpn) != 1)
                continue;
            f->requests++;
            f->h2_requests += !strcmp(alpn, "h2");
        }
        if (log)
            fclose(log);
        unlink(f->key);
        unlink(f->cert);
        unlink(f->log);
        unlink(f->errlog);
        rmdir(f->dir);
        f->dir[0] = '\0';
    }
    return rc;
}


void front_options(const front *f, maas_client_options *o)
{
    o->api_base_url = f->api;
    o->auth_url = f->auth;
    if (!f->tls_cert[0])
        o->ca_bundle = f->cert;
}
