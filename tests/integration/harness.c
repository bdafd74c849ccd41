#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "front.h"
#include "harness.h"

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

static void take(char *dst, size_t n, const char *line, const char *key)
{
    size_t k = strlen(key);
    if (!strncmp(line, key, k) && line[k] == '=') {
        snprintf(dst, n, "%s", line + k + 1);
        dst[strcspn(dst, "\r\n")] = '\0';
    }
}

int emu_start(emu *e, const char *const *args)
{
    const char *path = getenv("MAAS_EMULATOR");
    const char *argv[64];
    int fds[2], n = 0, i;
    char buf[2048];
    size_t used = 0;
    long deadline = now_ms() + 15000;

    memset(e, 0, sizeof *e);
    if (!path) {
        fprintf(stderr, "harness: MAAS_EMULATOR is not set\n");
        return -1;
    }
    argv[n++] = path;
    argv[n++] = "--port";
    argv[n++] = "0";
    if (!getenv("MAAS_EMULATOR_VERBOSE"))
        argv[n++] = "--quiet";
    for (i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    if (pipe2(fds, O_CLOEXEC))
        return -1;
    e->pid = fork();
    if (e->pid < 0)
        return -1;
    if (e->pid == 0) {
        /* A test that dies (an abort on the first failure) takes its emulator along. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fds[1], 1);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    /* The emulator prints its URLs once it listens. */
    while (!e->root[0] && now_ms() < deadline) {
        struct pollfd p = { fds[0], POLLIN, 0 };
        ssize_t r;
        char *nl;
        if (poll(&p, 1, 500) <= 0)
            continue;
        r = read(fds[0], buf + used, sizeof buf - 1 - used);
        if (r <= 0)
            break;
        used += (size_t)r;
        buf[used] = '\0';
        while ((nl = strchr(buf, '\n')) != NULL) {
            *nl = '\0';
            take(e->api, sizeof e->api, buf, "MAAS_API_BASE_URL");
            take(e->auth, sizeof e->auth, buf, "MAAS_AUTH_URL");
            take(e->root, sizeof e->root, buf, "MAAS_EMULATOR_URL");
            used -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, used + 1);
        }
    }
    close(fds[0]);
    if (!e->root[0]) {
        fprintf(stderr, "harness: the emulator did not start\n");
        emu_stop(e);
        return -1;
    }
    if (emu_through_front()) {
        e->front = calloc(1, sizeof *e->front);
        for (i = 0; e->front && args && args[i] && args[i + 1]; i++) {
            if (!strcmp(args[i], "--tls-cert"))
                snprintf(e->front->tls_cert, sizeof e->front->tls_cert, "%s", args[i + 1]);
            if (!strcmp(args[i], "--tls-key"))
                snprintf(e->front->tls_key, sizeof e->front->tls_key, "%s", args[i + 1]);
        }
        if (!e->front || front_start(e->front, e) != 0) {
            fprintf(stderr, "harness: nghttpx did not start in front of the emulator\n");
            emu_stop(e);
            return -1;
        }
    }
    return 0;
}

int emu_through_front(void)
{
    const char *v = getenv("MAAS_TEST_FRONT");
    return v && !strcmp(v, "h2");
}

int emu_leave_out_through_front(struct CMUnitTest *tests, size_t n, const char *const *names,
                                const char *const *why, size_t nnames)
{
    size_t kept = n;
    if (!emu_through_front())
        return (int)n;
    for (size_t i = 0; i < nnames; i++) {
        size_t j;
        for (j = 0; j < kept && strcmp(tests[j].name, names[i]); j++)
            ;
        if (j == kept) {
            fprintf(stderr, "harness: no test %s to leave out\n", names[i]);
            return -1;
        }
        printf("left out through the h2 front end: %s: %s\n", names[i], why[i]);
        memmove(&tests[j], &tests[j + 1], (kept - j - 1) * sizeof tests[0]);
        kept--;
    }
    fflush(stdout);
    return (int)kept;
}

/* Stop the front end first (gracefully: its log is complete), then judge its log. */
static void stop_front(emu *e)
{
    front *f = e->front;
    if (!f)
        return;
    if (front_stop(f) != 0) {
        fprintf(stderr, "harness: nghttpx did not exit cleanly\n");
        e->front_failed = 1;
    }
    printf("harness: %d requests through nghttpx, %d of them over h2\n", f->requests,
           f->h2_requests);
    fflush(stdout);
    if (f->requests == 0 || f->h2_requests != f->requests) {
        fprintf(stderr, "harness: not every request through the front end used h2\n");
        e->front_failed = 1;
    }
    free(f);
    e->front = NULL;
}

int emu_stop(emu *e)
{
    int status = 0;
    stop_front(e);
    if (e->pid <= 0)
        return -1;
    kill(e->pid, SIGTERM);
    while (waitpid(e->pid, &status, 0) < 0 && errno == EINTR)
        ;
    e->pid = 0;
    e->stopped = 1;
    e->exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return e->exit_status ? e->exit_status : e->front_failed;
}

int emu_suite_result(int cmocka_rc, const emu *e)
{
    if (!e->stopped) {
        fprintf(stderr, "harness: the emulator was never stopped\n");
        return cmocka_rc ? cmocka_rc : 1;
    }
    if (e->exit_status != 0) {
        fprintf(stderr, "harness: the emulator exited with status %d\n", e->exit_status);
        return cmocka_rc ? cmocka_rc : 1;
    }
    if (e->front_failed)
        return cmocka_rc ? cmocka_rc : 1;
    return cmocka_rc;
}

struct body {
    char buf[65536];
    size_t len;
};

static size_t sink(char *d, size_t s, size_t n, void *p)
{
    struct body *b = p;
    size_t len = s * n, room = sizeof b->buf - 1 - b->len;
    if (len > room)
        len = room;
    memcpy(b->buf + b->len, d, len);
    b->len += len;
    b->buf[b->len] = '\0';
    return s * n;
}

static long request(const emu *e, const char *url, const char *post, const char *ctype,
                    const char *userpwd, struct body *out)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = NULL;
    long code = -1;
    char ct[128];
    if (!h)
        return -1;
    out->len = 0;
    out->buf[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    if (e->ca[0])
        curl_easy_setopt(h, CURLOPT_CAINFO, e->ca);
    if (post) {
        snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
        hdr = curl_slist_append(hdr, ct);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, post);
    }
    if (userpwd)
        curl_easy_setopt(h, CURLOPT_USERPWD, userpwd);
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return code;
}

long emu_stat(const emu *e, const char *name)
{
    struct body b;
    char url[300];
    json_t *root, *v;
    long out = -1;
    snprintf(url, sizeof url, "%s/emulator/stats", e->root);
    if (request(e, url, NULL, NULL, NULL, &b) != 200)
        return -1;
    root = json_loads(b.buf, 0, NULL);
    v = json_object_get(root, name);
    if (json_is_integer(v))
        out = (long)json_integer_value(v);
    json_decref(root);
    return out;
}

void emu_stat_string(const emu *e, const char *name, char *out, size_t outlen)
{
    struct body b;
    char url[300];
    json_t *root, *v;
    out[0] = '\0';
    snprintf(url, sizeof url, "%s/emulator/stats", e->root);
    if (request(e, url, NULL, NULL, NULL, &b) != 200)
        return;
    root = json_loads(b.buf, 0, NULL);
    v = json_object_get(root, name);
    if (json_is_string(v))
        snprintf(out, outlen, "%s", json_string_value(v));
    json_decref(root);
}

long emu_wait_stat(const emu *e, const char *name, long want, long timeout_ms)
{
    long end = now_ms() + timeout_ms, v;
    struct timespec ts = { 0, 5 * 1000000L };
    /* Server-side counters change asynchronously (a closed socket is noticed
     * when the server next polls it): wait for the condition, bounded. */
    while ((v = emu_stat(e, name)) != want && now_ms() < end)
        nanosleep(&ts, NULL);
    return v;
}

/* Counting the emulator's connections means nothing through a front end. */
static int counts_through_front(const emu *e)
{
    if (!e->front)
        return 0;
    fprintf(stderr, "harness: the emulator's connections are nghttpx's through a front end: "
                    "leave this check out there\n");
    return 1;
}

long emu_wait_connections(const emu *e, long want, long timeout_ms)
{
    if (counts_through_front(e))
        return -2;
    /* The stats request is itself an open connection while it is answered. */
    long v = emu_wait_stat(e, "connections_open", want + 1, timeout_ms);
    return v < 0 ? v : v - 1;
}

long emu_wait_api_connections(const emu *e, long want, long timeout_ms)
{
    if (counts_through_front(e))
        return -2;
    long v = emu_wait_stat(e, "api_connections_open", want + 1, timeout_ms);
    return v < 0 ? v : v - 1;
}

int emu_idle(const emu *e, long max_api, char *why, size_t whylen)
{
    if (counts_through_front(e)) {
        snprintf(why, whylen, "connections counted through a front end");
        return -1;
    }
    long streams = emu_wait_stat(e, "streams_active", 0, 5000);
    long api = emu_wait_api_connections(e, 0, 0);
    /* A connection closes asynchronously: give one that is closing time. */
    if (api > max_api)
        api = emu_wait_api_connections(e, max_api, 5000);
    if (streams != 0 || api < 0 || api > max_api) {
        snprintf(why, whylen,
                 "%ld streams still served, %ld connections open to the API (at most %ld kept "
                 "alive)",
                 streams, api, max_api);
        return -1;
    }
    return 0;
}

long emu_post(const emu *e, const char *path, const char *json)
{
    struct body b;
    char url[512];
    snprintf(url, sizeof url, "%s%s", e->root, path);
    return request(e, url, json ? json : "{}", "application/json", NULL, &b);
}

long emu_fault(const emu *e, const char *path, const char *fault, int count)
{
    char body[512];
    snprintf(body, sizeof body, "{\"path\":\"%s\",\"fault\":\"%s\",\"count\":%d}", path, fault,
             count);
    return emu_post(e, "/emulator/faults", body);
}

int emu_fetch_token(const emu *e, char *out, size_t outlen)
{
    struct body b;
    json_t *root, *v;
    int rc = -1;
    if (request(e, e->auth, "grant_type=client_credentials", "application/x-www-form-urlencoded",
                "test-client:test-secret", &b) != 200)
        return -1;
    root = json_loads(b.buf, 0, NULL);
    v = json_object_get(root, "access_token");
    if (json_is_string(v)) {
        snprintf(out, outlen, "%s", json_string_value(v));
        rc = 0;
    }
    json_decref(root);
    return rc;
}

void emu_options(const emu *e, maas_client_options *o)
{
    maas_client_options_init(o, MAAS_CLIENT_OPTIONS_VERSION);
    o->client_id = "test-client";
    o->client_secret = "test-secret";
    o->cloud_account = "123456789012";
    o->api_base_url = e->api;
    o->auth_url = e->auth;
    if (e->front)
        front_options(e->front, o);
}

void emu_export_env(const emu *e)
{
    setenv("MAAS_CLIENT_ID", "test-client", 1);
    setenv("MAAS_CLIENT_SECRET", "test-secret", 1);
    setenv("MAAS_CLOUD_ACCOUNT", "123456789012", 1);
    setenv("MAAS_API_BASE_URL", e->front ? e->front->api : e->api, 1);
    setenv("MAAS_AUTH_URL", e->front ? e->front->auth : e->auth, 1);
    if (e->front)
        setenv("MAAS_CA_BUNDLE", e->front->cert, 1);
    unsetenv("MAAS_TOKEN");
}
