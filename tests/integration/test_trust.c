/*
 * Integration: exact trust (docs/security.md).
 *
 *   - With a CA bundle set, that bundle is the only trust: libcurl's
 *     built-in CA directory is not consulted. The test runs the client in a
 *     child process with a private mount namespace in which that directory
 *     is replaced by one the test controls, holding a CA "B" that signed the
 *     emulator's certificate. Without a bundle the client trusts the server
 *     (the control: the directory is live); with a bundle holding only CA
 *     "A" it must refuse it.
 *   - TLS 1.2 is the floor: against an `openssl s_server -tls1_1`, under an
 *     OpenSSL configuration that would still allow TLS 1.1 (the test's own,
 *     standing for a platform with a laxer policy than Debian's), plain
 *     libcurl connects (the control) and libmaas refuses with MAAS_ERR_TLS;
 *     the same server standing for an https:// proxy is refused too.
 *
 * Both need what a build machine may lack (root for the namespace, an
 * openssl binary able to serve TLS 1.1): then the test says so and skips.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "harness.h"

static char DIR_[64];
/* Tests skipped: the run then reports a skip (77) to meson, never a pass. */
static int skipped;

static void path_in(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", DIR_, name);
}

/* Every file and certificate the tests use, made with the openssl command line. */
static const char make_script[] =
    "set -e; cd \"$1\"; exec 2>/dev/null >/dev/null\n"
    "for ca in a b; do\n"
    "  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \\\n"
    "    -subj /CN=libmaas-trust-$ca -addext basicConstraints=critical,CA:TRUE \\\n"
    "    -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca-$ca.key -out ca-$ca.pem\n"
    "done\n"
    "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\\n"
    "  -subj /CN=server -keyout server.key -out server.csr\n"
    "printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=critical,CA:FALSE\\n"
    "extendedKeyUsage=serverAuth\\n' > server.ext\n"
    "openssl x509 -req -in server.csr -CA ca-b.pem -CAkey ca-b.key -set_serial 2 -days 2 \\\n"
    "  -extfile server.ext -out server.pem\n"
    "mkdir capath\n"
    "cp ca-b.pem capath/$(openssl x509 -noout -hash -in ca-b.pem).0\n"
    /* libcurl's default CA file may live in that directory: A stands in for it. */
    "cp ca-a.pem capath/default-bundle.pem\n"
    "printf 'openssl_conf = c\\n[c]\\nssl_conf = s\\n[s]\\nsystem_default = d\\n[d]\\n"
    "MinProtocol = TLSv1\\nCipherString = DEFAULT@SECLEVEL=0\\n' > lax.cnf\n";

static int make_files(void)
{
    char cmd[128];
    snprintf(DIR_, sizeof DIR_, "/tmp/maas-trust-XXXXXX");
    if (!mkdtemp(DIR_))
        return -1;
    setenv("MAAS_TRUST_SCRIPT", make_script, 1);
    snprintf(cmd, sizeof cmd, "sh -c \"$MAAS_TRUST_SCRIPT\" sh %s", DIR_);
    return system(cmd) == 0 ? 0 : -1;
}

static void remove_files(void)
{
    char cmd[128];
    if (!DIR_[0])
        return;
    snprintf(cmd, sizeof cmd, "rm -rf %s", DIR_);
    if (system(cmd) != 0)
        fprintf(stderr, "test_trust: could not remove %s\n", DIR_);
}

static maas_status authenticate(const emu *e, const char *ca_bundle)
{
    maas_client_options o;
    maas_client *c = NULL;
    maas_status st;
    emu_options(e, &o);
    o.ca_bundle = ca_bundle;
    o.connect_timeout_ms = 60000;
    o.max_retries = MAAS_RETRIES_OFF;
    st = maas_client_new(&c, &o);
    if (st == MAAS_OK)
        st = maas_client_authenticate(c);
    maas_client_free(c);
    return st;
}

/* ---- the CA bundle replaces the store -------------------------------------- */

static void test_ca_bundle_is_the_only_trust(void **state)
{
    curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
    char cert[128], key[128], ca_a[128], ca_b[128], capath[128], dflt[300];
    const char *args[] = { "--tls-cert", cert, "--tls-key", key, NULL };
    emu E;
    int fds[2], status = 0;
    ssize_t n;
    pid_t waited;
    maas_status got[4] = { MAAS_ERR_INTERNAL, MAAS_ERR_INTERNAL, MAAS_ERR_INTERNAL,
                           MAAS_ERR_INTERNAL };
    pid_t pid;
    (void)state;

    if (!vi->capath) {
        print_message("libcurl has no built-in CA directory: nothing to exclude\n");
        skipped++;
        skip();
    }
    if (geteuid() != 0) {
        print_message("a private mount namespace needs root: skipped\n");
        skipped++;
        skip();
    }
    path_in(cert, sizeof cert, "server.pem");
    path_in(key, sizeof key, "server.key");
    path_in(ca_a, sizeof ca_a, "ca-a.pem");
    path_in(ca_b, sizeof ca_b, "ca-b.pem");
    path_in(capath, sizeof capath, "capath");
    if (vi->cainfo && !strncmp(vi->cainfo, vi->capath, strlen(vi->capath)) &&
        vi->cainfo[strlen(vi->capath)] == '/') {
        /* The default bundle file sits in the directory: keep a file by its name. */
        char from[300];
        snprintf(from, sizeof from, "%s/default-bundle.pem", capath);
        snprintf(dflt, sizeof dflt, "%s%s", capath, vi->cainfo + strlen(vi->capath));
        assert_int_equal(rename(from, dflt), 0);
    }
    assert_int_equal(emu_start(&E, args), 0);
    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* The kernel ignores the file system type of a propagation change
         * and of a bind mount, but valgrind reads it as a string: NULL there
         * is an error of its own, and the child's exit would be its 99. */
        int ok = unshare(CLONE_NEWNS) == 0 &&
                 mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) == 0 &&
                 mount(capath, vi->capath, "none", MS_BIND, NULL) == 0;
        if (!ok) {
            fprintf(stderr, "test_trust: private mount namespace: %s\n", strerror(errno));
            _exit(2);
        }
        got[0] = authenticate(&E, NULL); /* the control: B is trusted through the directory */
        got[1] = authenticate(&E, ca_a); /* only A: B must not be trusted */
        got[2] = authenticate(&E, ca_b);
        setenv("MAAS_CA_BUNDLE", ca_a, 1);
        {
            maas_client *c = NULL;
            emu_export_env(&E);
            got[3] = maas_client_new(&c, NULL);
            if (got[3] == MAAS_OK)
                got[3] = maas_client_authenticate(c);
            maas_client_free(c);
        }
        _exit(write(fds[1], got, sizeof got) == (ssize_t)sizeof got ? 0 : 3);
    }
    close(fds[1]);
    n = read(fds[0], got, sizeof got);
    close(fds[0]);
    waited = waitpid(pid, &status, 0);
    /* Stopped before any assertion can leave it running. */
    assert_int_equal(emu_stop(&E), 0);
    assert_int_equal(n, (ssize_t)sizeof got);
    assert_int_equal(waited, pid);
    /* Exactly 0: under valgrind the child is checked too, and an error it
     * finds (memory, a syscall's arguments, a leak) exits with its 99. */
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the namespace child ended with %s %d (valgrind's errors exit 99)",
                 WIFEXITED(status) ? "exit" : "signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    if (got[0] != MAAS_OK)
        fail_msg("control: without a bundle the CA directory should trust B, got %s",
                 maas_status_name(got[0]));
    assert_int_equal(got[1], MAAS_ERR_TLS);
    assert_int_equal(got[2], MAAS_OK);
    assert_int_equal(got[3], MAAS_ERR_TLS);
}

/* ---- TLS 1.2 floor ------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* `openssl s_server` speaking TLS 1.1 only; its port, or 0 (and *pid 0). */
static int start_tls11_server(pid_t *pid)
{
    char cert[128], key[128], buf[512];
    size_t used = 0;
    int fds[2], port = 0;
    int64_t deadline = now_ms() + 30000;
    path_in(cert, sizeof cert, "server.pem");
    path_in(key, sizeof key, "server.key");
    *pid = 0;
    if (pipe2(fds, O_CLOEXEC))
        return 0;
    *pid = fork();
    if (*pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(fds[1], 1);
        if (null >= 0 && !getenv("MAAS_TEST_VERBOSE"))
            dup2(null, 2);
        execlp("openssl", "openssl", "s_server", "-accept", "127.0.0.1:0", "-tls1_1", "-cipher",
               "DEFAULT@SECLEVEL=0", "-cert", cert, "-key", key, "-www", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    while (!port && now_ms() < deadline && used < sizeof buf - 1) {
        struct pollfd p = { fds[0], POLLIN, 0 };
        ssize_t r;
        char *a;
        if (poll(&p, 1, 500) <= 0)
            continue;
        r = read(fds[0], buf + used, sizeof buf - 1 - used);
        if (r <= 0)
            break;
        used += (size_t)r;
        buf[used] = '\0';
        if ((a = strstr(buf, "ACCEPT 127.0.0.1:")) != NULL && strchr(a, '\n'))
            port = atoi(a + 17);
    }
    close(fds[0]);
    return port;
}

static size_t discard(char *p, size_t size, size_t n, void *userp)
{
    (void)p;
    (void)userp;
    return size * n;
}

static void test_tls_floor_is_1_2(void **state)
{
    char url[128], ca_b[128];
    pid_t pid;
    int port = start_tls11_server(&pid), status;
    CURL *h;
    CURLcode rc;
    maas_client_options o;
    maas_client *c = NULL;
    maas_status st;
    (void)state;

    path_in(ca_b, sizeof ca_b, "ca-b.pem");
    if (!port) {
        if (pid > 0) {
            kill(pid, SIGTERM);
            waitpid(pid, &status, 0);
        }
        print_message("openssl s_server -tls1_1 did not start: this platform cannot make a "
                      "TLS 1.1 server\n");
        skipped++;
        skip();
    }
    snprintf(url, sizeof url, "https://127.0.0.1:%d/oauth2/token", port);

    /* The control: libcurl without a floor of its own reaches it. */
    h = curl_easy_init();
    assert_non_null(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CAINFO, ca_b);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 60000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 120000L); /* a hang guard only */
    rc = curl_easy_perform(h);
    curl_easy_cleanup(h);
    if (rc != CURLE_OK) {
        kill(pid, SIGTERM);
        waitpid(pid, &status, 0);
        print_message("libcurl cannot speak TLS 1.1 here (%s): nothing to refuse\n",
                      curl_easy_strerror(rc));
        skipped++;
        skip();
    }

    maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION);
    o.client_id = "id";
    o.client_secret = "secret";
    o.auth_url = url;
    o.ca_bundle = ca_b;
    o.connect_timeout_ms = 60000;
    o.idle_timeout_ms = 30000; /* s_server may not answer a POST at all */
    o.max_retries = MAAS_RETRIES_OFF;
    st = maas_client_new(&c, &o);
    if (st == MAAS_OK)
        st = maas_client_authenticate(c);
    kill(pid, SIGTERM); /* before any assertion can leave it running */
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (st != MAAS_ERR_TLS)
        fail_msg("TLS 1.1 accepted: %s: %s", maas_status_name(st), maas_last_error()->message);
    maas_client_free(c);
}

/*
 * The same floor for an https:// proxy (CURLOPT_PROXY_SSLVERSION): the
 * TLS 1.1-only s_server stands in for the proxy. The control, plain libcurl
 * sending a plain-http request through it, gets s_server's status page, so
 * the handshake with the proxy succeeds without a floor. libmaas refuses the
 * handshake. Were it to accept it, its CONNECT would get no answer from
 * s_server and end at a clock (the token request's 30 s deadline).
 */
static void test_proxy_tls_floor_is_1_2(void **state)
{
    char proxy[64], ca_b[128];
    pid_t pid;
    int port = start_tls11_server(&pid), status;
    CURL *h;
    CURLcode rc;
    maas_client_options o;
    maas_client *c = NULL;
    maas_status st;
    (void)state;

    path_in(ca_b, sizeof ca_b, "ca-b.pem");
    if (!port) {
        if (pid > 0) {
            kill(pid, SIGTERM);
            waitpid(pid, &status, 0);
        }
        print_message("openssl s_server -tls1_1 did not start: this platform cannot make a "
                      "TLS 1.1 proxy\n");
        skipped++;
        skip();
    }
    snprintf(proxy, sizeof proxy, "https://127.0.0.1:%d", port);

    h = curl_easy_init();
    assert_non_null(h);
    curl_easy_setopt(h, CURLOPT_URL, "http://127.0.0.1:9/"); /* not tunnelled: s_server answers */
    curl_easy_setopt(h, CURLOPT_PROXY, proxy);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "");
    curl_easy_setopt(h, CURLOPT_PROXY_CAINFO, ca_b);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 60000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 120000L); /* a hang guard only */
    rc = curl_easy_perform(h);
    curl_easy_cleanup(h);
    if (rc != CURLE_OK) {
        kill(pid, SIGTERM);
        waitpid(pid, &status, 0);
        print_message("libcurl cannot speak TLS 1.1 to a proxy here (%s): nothing to refuse\n",
                      curl_easy_strerror(rc));
        skipped++;
        skip();
    }

    maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION);
    o.client_id = "id";
    o.client_secret = "secret";
    o.auth_url = "https://127.0.0.1:9/oauth2/token"; /* never reached: the proxy comes first */
    o.proxy = proxy;
    o.proxy_ca_bundle = ca_b;
    o.connect_timeout_ms = 60000;
    o.max_retries = MAAS_RETRIES_OFF;
    st = maas_client_new(&c, &o);
    if (st == MAAS_OK)
        st = maas_client_authenticate(c);
    kill(pid, SIGTERM); /* before any assertion can leave it running */
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (st != MAAS_ERR_TLS)
        fail_msg("TLS 1.1 accepted from the proxy: %s: %s", maas_status_name(st),
                 maas_last_error()->message);
    maas_client_free(c);
}

static int setup(void **state)
{
    char conf[128];
    (void)state;
    if (make_files())
        return -1;
    /* Must precede OpenSSL's initialisation in this process: a platform
     * whose policy still allows TLS 1.1 (Debian's own refuses it). */
    path_in(conf, sizeof conf, "lax.cnf");
    setenv("OPENSSL_CONF", conf, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    remove_files();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ca_bundle_is_the_only_trust),
        cmocka_unit_test(test_tls_floor_is_1_2),
        cmocka_unit_test(test_proxy_tls_floor_is_1_2),
    };
    int failed = cmocka_run_group_tests_name("trust", tests, setup, teardown);
    return failed ? failed : skipped ? 77 : 0;
}
