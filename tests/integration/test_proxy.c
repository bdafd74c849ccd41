/*
 * Integration: reaching the service through a real HTTP proxy, tinyproxy,
 * which the test starts and stops itself: an ephemeral loopback port, its
 * own configuration and log in a mkdtemp directory. The emulator serves
 * HTTPS with a certificate of a CA made here (as in test_tls.c), so that
 * TLS through the proxy's CONNECT tunnel is verified end to end.
 *
 * The proxy's log ("Request (file descriptor N): CONNECT host:port ...")
 * is the witness of what it saw: every request through it, and nothing
 * when NO_PROXY sends the client around it.
 *
 * The test harness sets NO_PROXY for loopback and unsets the proxy
 * variables; every test here sets the environment it wants itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

extern char **environ;

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"
#define PROMPT "Tell me a joke about proxies"
#define SECRET "test-secret"

static emu E;      /* HTTPS */
static emu PLAIN;  /* plain HTTP, to show that even it is tunnelled */
static char DIR_[64];
static char CA[128], OTHER_CA[128], CERT[128], KEY[128];

/* ---- certificates (a CA, a server certificate for IP:127.0.0.1, another CA) ---- */

static void path_in(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", DIR_, name);
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* Run a program (NULL-terminated argv) quietly; 0 when it exits 0. */
static int run_quiet(const char *const *argv)
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status = 0, rc;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (!getenv("MAAS_TEST_VERBOSE"))
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    rc = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return -1;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static int make_ca(const char *name, const char *cn)
{
    char cnf[512], cnf_path[128], key[128], pem[128], file[64];
    snprintf(cnf, sizeof cnf,
             "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n"
             "[dn]\nCN = %s\n[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
             "keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n", cn);
    path_in(cnf_path, sizeof cnf_path, "ca.cnf");
    snprintf(file, sizeof file, "%s.key", name);
    path_in(key, sizeof key, file);
    snprintf(file, sizeof file, "%s.pem", name);
    path_in(pem, sizeof pem, file);
    if (write_file(cnf_path, cnf))
        return -1;
    {
        const char *const argv[] = { "openssl", "req", "-x509", "-config", cnf_path, "-newkey",
                                     "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                     "-days", "2", "-keyout", key, "-out", pem, NULL };
        return run_quiet(argv);
    }
}

static int make_certificates(void)
{
    char cnf[128], ext[128], csr[128], cakey[128];
    snprintf(DIR_, sizeof DIR_, "/tmp/maas-proxy-XXXXXX");
    if (!mkdtemp(DIR_))
        return -1;
    path_in(CA, sizeof CA, "ca.pem");
    path_in(OTHER_CA, sizeof OTHER_CA, "other.pem");
    path_in(CERT, sizeof CERT, "server.pem");
    path_in(KEY, sizeof KEY, "server.key");
    path_in(cnf, sizeof cnf, "server.cnf");
    path_in(ext, sizeof ext, "server-ext.cnf");
    path_in(csr, sizeof csr, "server.csr");
    path_in(cakey, sizeof cakey, "ca.key");
    if (make_ca("ca", "libmaas proxy test CA") || make_ca("other", "another test CA"))
        return -1;
    if (write_file(cnf, "[req]\ndistinguished_name = dn\nprompt = no\n"
                        "[dn]\nCN = maas-emulator test server\n") ||
        write_file(ext, "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical,CA:FALSE\n"
                        "keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n"))
        return -1;
    {
        const char *const req[] = { "openssl", "req", "-new", "-config", cnf, "-newkey", "ec",
                                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                    "-keyout", KEY, "-out", csr, NULL };
        const char *const sign[] = { "openssl", "x509", "-req", "-in", csr, "-CA", CA, "-CAkey",
                                     cakey, "-set_serial", "2", "-days", "2", "-extfile", ext,
                                     "-out", CERT, NULL };
        if (run_quiet(req) || run_quiet(sign))
            return -1;
    }
    return 0;
}

static void remove_dir(const char *dir)
{
    static const char *const names[] = { "ca.cnf", "ca.key", "ca.pem", "other.key", "other.pem",
                                         "server.cnf", "server-ext.cnf", "server.key",
                                         "server.csr", "server.pem", "tinyproxy.conf",
                                         "tinyproxy.log", "tinyproxy.pid" };
    char p[160];
    size_t i;
    if (!dir[0])
        return;
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* ---- tinyproxy ------------------------------------------------------------------ */

typedef struct proxy {
    pid_t pid;
    int port;
    char dir[64];
    char log[128];
    char url[64];     /* http://127.0.0.1:PORT */
    long log_seen;    /* bytes of the log before the current test */
} proxy;

static proxy P;     /* an open proxy */
static proxy AUTH;  /* wants credentials: 407 */
static proxy DENY;  /* CONNECT to port 443 only: 403 */

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/* A loopback port nobody listens on right now (the kernel's choice). */
static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (!bind(fd, (struct sockaddr *)&a, sizeof a) &&
        !getsockname(fd, (struct sockaddr *)&a, &len))
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int accepts(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    if (fd < 0)
        return 0;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static void proxy_stop(proxy *p)
{
    int status;
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    p->pid = 0;
    remove_dir(p->dir);
    p->dir[0] = '\0';
}

/*
 * Start tinyproxy with `extra` appended to a minimal configuration. The
 * port is chosen free just before, so another program may take it in
 * between: then tinyproxy exits and the next attempt takes another port.
 */
static int proxy_start(proxy *p, const char *extra)
{
    const char *bin = getenv("MAAS_TINYPROXY");
    int attempt;
    memset(p, 0, sizeof *p);
    if (!bin || !*bin) {
        fprintf(stderr, "test_proxy: MAAS_TINYPROXY is not set (install tinyproxy)\n");
        return -1;
    }
    for (attempt = 0; attempt < 5; attempt++) {
        char conf[1024], conf_path[128];
        const char *argv[] = { bin, "-d", "-c", conf_path, NULL };
        long deadline;
        int status;
        snprintf(p->dir, sizeof p->dir, "/tmp/maas-tinyproxy-XXXXXX");
        if (!mkdtemp(p->dir))
            return -1;
        p->port = free_port();
        snprintf(p->url, sizeof p->url, "http://127.0.0.1:%d", p->port);
        snprintf(p->log, sizeof p->log, "%s/tinyproxy.log", p->dir);
        snprintf(conf_path, sizeof conf_path, "%s/tinyproxy.conf", p->dir);
        snprintf(conf, sizeof conf,
                 "Port %d\nListen 127.0.0.1\nTimeout 120\nLogFile \"%s\"\nLogLevel Info\n"
                 "MaxClients 50\nDisableViaHeader Yes\n%s\n",
                 p->port, p->log, extra ? extra : "");
        if (write_file(conf_path, conf))
            return -1;
        p->pid = fork();
        if (p->pid == 0) {
            /* A test that crashes must not leave its proxy behind. */
            int null = open("/dev/null", O_RDWR);
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            execv(bin, (char *const *)argv);
            _exit(127);
        }
        if (p->pid < 0) {
            p->pid = 0;
            fprintf(stderr, "test_proxy: cannot run %s\n", bin);
            remove_dir(p->dir);
            return -1;
        }
        /* Ready when it accepts; gone when it could not listen. */
        deadline = now_ms() + 20000;
        while (now_ms() < deadline) {
            struct timespec ts = { 0, 10 * 1000000L };
            if (accepts(p->port))
                return 0;
            if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
                p->pid = 0;
                break;
            }
            nanosleep(&ts, NULL);
        }
        proxy_stop(p);
    }
    fprintf(stderr, "test_proxy: tinyproxy did not start\n");
    return -1;
}

/* The log written since the last proxy_mark(), NUL-terminated; free() it. */
static char *proxy_log_new(const proxy *p)
{
    FILE *f = fopen(p->log, "r");
    char *buf;
    long size;
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    if (size < p->log_seen)
        size = p->log_seen;
    buf = calloc(1, (size_t)(size - p->log_seen) + 1);
    if (buf) {
        fseek(f, p->log_seen, SEEK_SET);
        buf[fread(buf, 1, (size_t)(size - p->log_seen), f)] = '\0';
    }
    fclose(f);
    return buf;
}

static void proxy_mark(proxy *p)
{
    struct stat st;
    p->log_seen = stat(p->log, &st) == 0 ? (long)st.st_size : 0;
}

/*
 * Requests the proxy received since the mark: all of them, and how many were
 * a CONNECT to each of `targets` (host:port, NULL-terminated).
 */
static void proxy_requests(const proxy *p, int *all, int *connects, const char *const *targets)
{
    char *log = proxy_log_new(p), *line, *save = NULL;
    size_t i;
    *all = 0;
    for (i = 0; targets[i]; i++)
        connects[i] = 0;
    assert_non_null(log);
    for (line = strtok_r(log, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        int matched = 0;
        if (!strstr(line, "]: Request ("))
            continue;
        (*all)++;
        for (i = 0; targets[i] && !matched; i++) {
            char want[160];
            snprintf(want, sizeof want, "CONNECT %s ", targets[i]);
            if (strstr(line, want)) {
                connects[i]++;
                matched = 1;
            }
        }
        if (!matched && getenv("MAAS_TEST_VERBOSE"))
            print_message("not a CONNECT to the API or the token endpoint: %s\n", line);
    }
    free(log);
}

/* ---- helpers ---------------------------------------------------------------------- */

static const char *const proxy_vars[] = {
    "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
    "NO_PROXY", "no_proxy", "MAAS_PROXY_CA_BUNDLE", "MAAS_CA_BUNDLE",
};

static void clear_env(void)
{
    size_t i;
    for (i = 0; i < sizeof proxy_vars / sizeof proxy_vars[0]; i++)
        unsetenv(proxy_vars[i]);
}

/* host:port of an emulator URL, as a CONNECT names it. */
static void authority(const char *url, char *out, size_t n)
{
    const char *h = strstr(url, "://");
    assert_non_null(h);
    h += 3;
    snprintf(out, n, "%.*s", (int)strcspn(h, "/"), h);
}

static void options(const emu *e, maas_client_options *o)
{
    emu_options(e, o);
    o->connect_timeout_ms = 30000;
    o->idle_timeout_ms = 60000;
    o->max_retries = MAAS_RETRIES_OFF;
    o->ca_bundle = CA;
}

static maas_client *client_from(const maas_client_options *o)
{
    maas_client *c = NULL;
    if (maas_client_new(&c, o) != MAAS_OK)
        fail_msg("maas_client_new: %s", maas_last_error()->message);
    return c;
}

static void finish(maas_client *c)
{
    maas_client_free(c);
    assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

static void expect_ok(maas_status st)
{
    if (st != MAAS_OK)
        fail_msg("%s: %s", maas_status_name(st), maas_last_error()->message);
}

/* A token, the model list and a generation all work. */
static void expect_working(maas_client *c)
{
    maas_model_list *l = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    char *text = NULL;
    size_t len = 0;
    expect_ok(maas_client_authenticate(c));
    expect_ok(maas_models_list(&l, c));
    assert_int_equal(maas_model_list_count(l), 5);
    maas_model_list_free(l);
    r.model = MISTRAL;
    r.prompt = PROMPT;
    r.max_new_tokens = 10;
    expect_ok(maas_generate_text(&text, &len, c, &r));
    assert_true(len > 0);
    maas_free(text);
}

enum { TO_API = 1, TO_TOKEN = 2, TO_BOTH = 3 };

/*
 * Every request the proxy saw since the mark was a CONNECT to the emulator
 * `e`'s API or its token endpoint (two listeners, as the service has two
 * hosts), with at least one tunnel to each host in `to` and none to the other.
 */
static void expect_proxied(const proxy *p, const emu *e, int to)
{
    int all, connects[2];
    char api[128], auth[128];
    const char *const targets[] = { api, auth, NULL };
    authority(e->api, api, sizeof api);
    authority(e->auth, auth, sizeof auth);
    proxy_requests(p, &all, connects, targets);
    if (connects[0] + connects[1] != all || !connects[0] != !(to & TO_API) ||
        !connects[1] != !(to & TO_TOKEN))
        fail_msg("the proxy saw %d requests, %d of them CONNECT %s (the API) and %d CONNECT %s "
                 "(the token endpoint); wanted only CONNECTs, to %s",
                 all, connects[0], api, connects[1], auth,
                 to == TO_BOTH ? "both" : to == TO_API ? "the API only" : "the token endpoint only");
}

static void expect_not_proxied(const proxy *p)
{
    int all, connects[1];
    const char *const none[] = { NULL };
    proxy_requests(p, &all, connects, none);
    assert_int_equal(all, 0);
}

/* The proxy's log holds none of the secrets the client used. */
static void expect_log_clean(const proxy *p, const char *token)
{
    char *log = proxy_log_new(p);
    assert_non_null(log);
    if (strstr(log, SECRET) || (token && *token && strstr(log, token)) ||
        strstr(log, "Authorization") || strstr(log, PROMPT))
        fail_msg("the proxy's log holds a secret, a token or the prompt:\n%s", log);
    free(log);
}

/* ---- setup --------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    const char *args[] = { "--tls-cert", NULL, "--tls-key", NULL, NULL };
    (void)state;
    clear_env();
    if (make_certificates()) {
        remove_dir(DIR_);
        return -1;
    }
    args[1] = CERT;
    args[3] = KEY;
    if (emu_start(&E, args)) {
        remove_dir(DIR_);
        return -1;
    }
    snprintf(E.ca, sizeof E.ca, "%s", CA);
    if (strncmp(E.api, "https://127.0.0.1:", 18) != 0 || emu_start(&PLAIN, NULL)) {
        emu_stop(&E);
        remove_dir(DIR_);
        return -1;
    }
    if (proxy_start(&P, NULL) || proxy_start(&AUTH, "BasicAuth proxyuser proxy-pass-123") ||
        proxy_start(&DENY, "ConnectPort 443")) {
        proxy_stop(&P);
        proxy_stop(&AUTH);
        emu_stop(&PLAIN);
        emu_stop(&E);
        remove_dir(DIR_);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    int rc;
    (void)state;
    clear_env();
    proxy_stop(&P);
    proxy_stop(&AUTH);
    proxy_stop(&DENY);
    rc = emu_stop(&PLAIN);
    rc |= emu_stop(&E);
    remove_dir(DIR_);
    DIR_[0] = '\0';
    return rc;
}

static int reset(void **state)
{
    (void)state;
    clear_env();
    proxy_mark(&P);
    proxy_mark(&AUTH);
    proxy_mark(&DENY);
    return emu_post(&E, "/emulator/reset", NULL) == 200 &&
                   emu_post(&PLAIN, "/emulator/reset", NULL) == 200
               ? 0
               : -1;
}

/* ---- tests ------------------------------------------------------------------------------ */

/* The `proxy` option: every request goes through CONNECT, TLS verified inside it. */
static void test_proxy_option(void **state)
{
    maas_client_options o;
    maas_client *c;
    (void)state;
    options(&E, &o);
    o.proxy = P.url;
    c = client_from(&o);
    expect_working(c);
    finish(c);
    /* The token endpoint and the API: at least one tunnel, and nothing but tunnels. */
    expect_proxied(&P, &E, TO_BOTH);
    expect_log_clean(&P, NULL);
    assert_int_equal(emu_stat(&E, "tokens_issued"), 1);
    assert_int_equal(emu_stat(&E, "generations"), 1);
}

/* The tunnel does not weaken verification: the server's certificate is still checked. */
static void test_tls_verified_end_to_end(void **state)
{
    maas_client_options o;
    maas_client *c;
    maas_status st;
    (void)state;
    options(&E, &o);
    o.proxy = P.url;
    o.ca_bundle = OTHER_CA;
    c = client_from(&o);
    st = maas_client_authenticate(c);
    assert_int_equal(st, MAAS_ERR_TLS);
    assert_contains(maas_last_error()->message, "certificate");
    finish(c);
    /* It went through the proxy, which could not stand in for the server. */
    expect_proxied(&P, &E, TO_TOKEN);
    assert_int_equal(emu_stat(&E, "tokens_issued"), 0);
}

/* Even a plain-HTTP base URL is tunnelled: the proxy never receives a request to read. */
static void test_plain_http_is_tunnelled(void **state)
{
    maas_client_options o;
    maas_client *c;
    char token[4096];
    (void)state;
    options(&PLAIN, &o);
    o.ca_bundle = NULL;
    o.proxy = P.url;
    c = client_from(&o);
    expect_working(c);
    maas_client_free(c);
    expect_proxied(&P, &PLAIN, TO_BOTH);
    expect_log_clean(&P, NULL);

    /* A static token too. */
    assert_int_equal(emu_fetch_token(&PLAIN, token, sizeof token), 0);
    proxy_mark(&P);
    options(&PLAIN, &o);
    o.ca_bundle = NULL;
    o.client_id = o.client_secret = NULL;
    o.token = token;
    o.proxy = P.url;
    c = client_from(&o);
    {
        maas_model_list *l = NULL;
        expect_ok(maas_models_list(&l, c));
        maas_model_list_free(l);
    }
    maas_client_free(c);
    expect_proxied(&P, &PLAIN, TO_API);
    expect_log_clean(&P, token);
}

/* HTTPS_PROXY and https_proxy, read by libcurl, with maas_client_new(&c, NULL). */
static void test_https_proxy_variables(void **state)
{
    static const char *const names[] = { "HTTPS_PROXY", "https_proxy" };
    size_t i;
    (void)state;
    for (i = 0; i < 2; i++) {
        maas_client *c = NULL;
        clear_env();
        proxy_mark(&P);
        emu_export_env(&E);
        setenv("MAAS_CA_BUNDLE", CA, 1);
        setenv(names[i], P.url, 1);
        assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
        expect_working(c);
        finish(c);
        expect_proxied(&P, &E, TO_BOTH);
        expect_log_clean(&P, NULL);
    }
}

/* NO_PROXY and no_proxy send the client around the proxy: it sees nothing. */
static void test_no_proxy_bypass(void **state)
{
    static const char *const names[] = { "NO_PROXY", "no_proxy" };
    size_t i;
    (void)state;
    for (i = 0; i < 2; i++) {
        maas_client_options o;
        maas_client *c;
        clear_env();
        proxy_mark(&P);
        setenv("HTTPS_PROXY", P.url, 1);
        setenv(names[i], "127.0.0.1", 1);
        options(&E, &o);
        c = client_from(&o);
        expect_working(c);
        finish(c);
        expect_not_proxied(&P);
    }
    /* And without it, the same client goes through the proxy (the check above can fail). */
    {
        maas_client_options o;
        maas_client *c;
        clear_env();
        proxy_mark(&P);
        setenv("HTTPS_PROXY", P.url, 1);
        options(&E, &o);
        c = client_from(&o);
        expect_working(c);
        finish(c);
        expect_proxied(&P, &E, TO_BOTH);
    }
}

/* An explicit `proxy` wins over the variables; "" means none at all. */
static void test_option_overrides_variables(void **state)
{
    maas_client_options o;
    maas_client *c;
    char dead[64];
    (void)state;
    /* The variables name a proxy that is not there: "" ignores them. */
    snprintf(dead, sizeof dead, "http://127.0.0.1:%d", free_port());
    setenv("HTTPS_PROXY", dead, 1);
    setenv("https_proxy", dead, 1);
    options(&E, &o);
    o.proxy = "";
    c = client_from(&o);
    expect_working(c);
    finish(c);
    expect_not_proxied(&P);

    /* NO_PROXY in the environment does not undo an explicit proxy. */
    setenv("NO_PROXY", "127.0.0.1,localhost", 1);
    setenv("no_proxy", "127.0.0.1,localhost", 1);
    options(&E, &o);
    o.proxy = P.url;
    c = client_from(&o);
    expect_working(c);
    finish(c);
    expect_proxied(&P, &E, TO_BOTH);
}

static void expect_refused(const proxy *p, maas_status st, int http_status)
{
    const maas_error *e = maas_last_error();
    char where[64];
    if (st != MAAS_ERR_PROXY)
        fail_msg("%s (%s), expected MAAS_ERR_PROXY", maas_status_name(st), e->message);
    assert_int_equal(e->status, MAAS_ERR_PROXY);
    assert_int_equal(e->http_status, http_status);
    if (getenv("MAAS_TEST_VERBOSE"))
        print_message("MAAS_ERR_PROXY: %s\n", e->message);
    snprintf(where, sizeof where, "proxy at 127.0.0.1:%d", p->port);
    assert_contains(e->message, where);
    snprintf(where, sizeof where, "HTTP %d", http_status);
    assert_contains(e->message, where);
    assert_int_equal(e->attempts, 1); /* a refusal is not retried */
}

/* A proxy that wants credentials: 407, named; with them in the URL, it works. */
static void test_proxy_requires_credentials(void **state)
{
    proxy *const auth = &AUTH;
    maas_client_options o;
    maas_client *c;
    maas_stream *s = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    const maas_token *t;
    char url[128];
    (void)state;
    options(&E, &o);
    o.max_retries = 2;
    o.proxy = auth->url;
    c = client_from(&o);
    expect_refused(auth, maas_client_authenticate(c), 407);
    maas_client_free(c);

    /* A stream (static token, so that the generation is the first request). */
    options(&E, &o);
    o.client_id = o.client_secret = NULL;
    o.token = "a-token-never-sent-in-clear";
    o.proxy = auth->url;
    c = client_from(&o);
    r.model_info = NULL;
    r.model = MISTRAL;
    r.prompt = PROMPT;
    {
        maas_model_list *l = NULL;
        expect_refused(auth, maas_models_list(&l, c), 407);
        assert_null(l);
    }
    maas_client_free(c);

    /* Wrong credentials: refused, and the password is in no message. */
    snprintf(url, sizeof url, "http://proxyuser:wrong-pass-456@127.0.0.1:%d", auth->port);
    options(&E, &o);
    o.proxy = url;
    c = client_from(&o);
    /* tinyproxy answers wrong credentials with 401 rather than 407: its own status. */
    expect_refused(auth, maas_client_authenticate(c), 401);
    assert_null(strstr(maas_last_error()->message, "wrong-pass-456"));
    assert_null(strstr(maas_last_error()->message, "proxyuser"));
    maas_client_free(c);

    /* The right ones. */
    snprintf(url, sizeof url, "http://proxyuser:proxy-pass-123@127.0.0.1:%d", auth->port);
    options(&E, &o);
    o.proxy = url;
    c = client_from(&o);
    expect_working(c);
    assert_int_equal(maas_stream_open(&s, c, &r), MAAS_OK);
    while (maas_stream_next(s, &t) == MAAS_OK)
        ;
    assert_non_null(maas_stream_details(s));
    maas_stream_free(s);
    finish(c);
    expect_proxied(auth, &E, TO_BOTH);
    expect_log_clean(auth, "a-token-never-sent-in-clear");
}

/* A proxy that refuses the destination: 403, its own status, for a stream too. */
static void test_proxy_forbids_destination(void **state)
{
    proxy *const deny = &DENY;
    maas_client_options o;
    maas_client *c;
    maas_stream *s = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    (void)state;
    /* CONNECT only to port 443: the emulator's port is refused. */
    options(&E, &o);
    o.proxy = deny->url;
    c = client_from(&o);
    expect_refused(deny, maas_client_authenticate(c), 403);
    maas_client_free(c);

    options(&E, &o);
    o.client_id = o.client_secret = NULL;
    o.token = "another-token";
    o.proxy = deny->url;
    c = client_from(&o);
    r.model_info = NULL;
    r.model = MISTRAL;
    r.prompt = PROMPT;
    /* The catalogue request is refused first. */
    expect_refused(deny, maas_stream_open(&s, c, &r), 403);
    assert_null(s);
    maas_client_free(c);
    assert_int_equal(emu_stat(&E, "tokens_issued"), 0);
    assert_int_equal(emu_stat(&E, "models_requests"), 0);
}

/*
 * proxy_ca_bundle: the CAs trusted for an https:// proxy, exactly those.
 * The HTTPS emulator stands in for an HTTPS proxy here: the TLS handshake
 * with it is the proxy's, and its answer to CONNECT (not a proxy's) is a
 * refusal. So: the right proxy CA (and a wrong server CA) gets as far as
 * the refusal; the wrong proxy CA (and the right server CA) fails TLS.
 */
static void test_proxy_ca_bundle(void **state)
{
    maas_client_options o;
    maas_client *c;
    maas_status st;
    char https_proxy[160];
    const maas_error *e;
    (void)state;
    {
        char at[128];
        authority(E.root, at, sizeof at);
        snprintf(https_proxy, sizeof https_proxy, "https://%s", at);
    }

    options(&E, &o);
    o.proxy = https_proxy;
    o.proxy_ca_bundle = CA;
    o.ca_bundle = OTHER_CA;
    c = client_from(&o);
    st = maas_client_authenticate(c);
    e = maas_last_error();
    if (st != MAAS_ERR_PROXY)
        fail_msg("%s: %s, expected MAAS_ERR_PROXY", maas_status_name(st), e->message);
    assert_true(e->http_status >= 400);
    maas_client_free(c);

    options(&E, &o);
    o.proxy = https_proxy;
    o.proxy_ca_bundle = OTHER_CA;
    o.ca_bundle = CA; /* would do, were it used for the proxy */
    c = client_from(&o);
    st = maas_client_authenticate(c);
    if (st != MAAS_ERR_TLS)
        fail_msg("%s: %s, expected MAAS_ERR_TLS", maas_status_name(st),
                 maas_last_error()->message);
    maas_client_free(c);

    /* MAAS_PROXY_CA_BUNDLE, from the environment. */
    emu_export_env(&E);
    setenv("MAAS_CA_BUNDLE", OTHER_CA, 1);
    setenv("MAAS_PROXY_CA_BUNDLE", CA, 1);
    setenv("HTTPS_PROXY", https_proxy, 1);
    c = NULL;
    assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
    assert_int_equal(maas_client_authenticate(c), MAAS_ERR_PROXY);
    maas_client_free(c);
    assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
    assert_int_equal(emu_stat(&E, "tokens_issued"), 0);
}

/* A proxy URL that is not one, or holds a control character: a clear error, no value shown. */
static void test_bad_proxy_option(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    (void)state;
    options(&E, &o);
    o.proxy = "ftp://user:hunter2@proxy:21";
    assert_int_equal(maas_client_new(&c, &o), MAAS_ERR_CONFIG);
    assert_null(c);
    assert_contains(maas_last_error()->message, "proxy must start with http:// or https://");
    assert_null(strstr(maas_last_error()->message, "hunter2"));
    o.proxy = "http://proxy:3128\r\nX: y";
    assert_int_equal(maas_client_new(&c, &o), MAAS_ERR_CONFIG);
    assert_contains(maas_last_error()->message, "proxy contains a control character");
    o.proxy = NULL;
    o.proxy_ca_bundle = "/tmp/x\n.pem";
    assert_int_equal(maas_client_new(&c, &o), MAAS_ERR_CONFIG);
    assert_contains(maas_last_error()->message, "proxy_ca_bundle");
}

/* A version-1 caller's struct ends before `proxy`: it is never read. */
static void test_version_1_options_ignore_proxy(void **state)
{
    maas_client_options o;
    maas_client *c;
    char dead[64];
    (void)state;
    snprintf(dead, sizeof dead, "http://127.0.0.1:%d", free_port());
    options(&E, &o);
    o.version = 1;
    o.proxy = dead;       /* beyond a version-1 struct: must be ignored */
    o.proxy_ca_bundle = "/nonexistent.pem";
    c = client_from(&o);
    expect_working(c);
    finish(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_proxy_option, reset),
        cmocka_unit_test_setup(test_tls_verified_end_to_end, reset),
        cmocka_unit_test_setup(test_plain_http_is_tunnelled, reset),
        cmocka_unit_test_setup(test_https_proxy_variables, reset),
        cmocka_unit_test_setup(test_no_proxy_bypass, reset),
        cmocka_unit_test_setup(test_option_overrides_variables, reset),
        cmocka_unit_test_setup(test_proxy_requires_credentials, reset),
        cmocka_unit_test_setup(test_proxy_forbids_destination, reset),
        cmocka_unit_test_setup(test_proxy_ca_bundle, reset),
        cmocka_unit_test_setup(test_bad_proxy_option, reset),
        cmocka_unit_test_setup(test_version_1_options_ignore_proxy, reset),
    };
    return cmocka_run_group_tests_name("proxy", tests, group_setup, group_teardown);
}
