/*
 * Integration: TLS verification against maas-emulator serving HTTPS.
 *
 * At start the test makes, with the openssl command line, in a mkdtemp
 * directory removed at the end: a CA, a server certificate signed by it for
 * IP:127.0.0.1 only (no DNS name: "localhost" does not match), and a second
 * CA that signed nothing. It asserts that
 *   - without a CA bundle the API and the token endpoint fail with
 *     MAAS_ERR_TLS and a message about the certificate;
 *   - ca_bundle, or MAAS_CA_BUNDLE with maas_client_new(&c, NULL), works;
 *   - the wrong CA, a CA file that cannot be read, a host name the
 *     certificate does not name: MAAS_ERR_TLS;
 *   - insecure_skip_tls_verify works without a CA;
 *   - no environment variable turns verification off.
 * Each test ends with no connection open at the emulator.
 *
 * With MAAS_TEST_FRONT=h2 the same cases run through nghttpx, which then
 * presents the emulator's certificate (harness.h): verification is the
 * client's of the front end, over h2. The emulator then counts nghttpx's
 * connections, not the client's: that check is left out there.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "harness.h"

extern char **environ;

static emu E;
static char DIR_[64];
static char CA[128], OTHER_CA[128], CERT[128], KEY[128];
/* The client's URLs (the emulator's, or its front end's) with "localhost"
 * for "127.0.0.1": not in the certificate. */
static char LOCAL_API[256], LOCAL_AUTH[256];

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"
#define PROMPT "Tell me a joke"

/* ---- certificates ---------------------------------------------------------- */

static const char *const files_made[] = {
    "ca.cnf", "ca.key", "ca.pem", "other.key", "other.pem", "server.cnf", "server-ext.cnf",
    "server.key", "server.csr", "server.pem",
};

static void path_in(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", DIR_, name);
}

static int write_file(const char *name, const char *text)
{
    char p[128];
    FILE *f;
    path_in(p, sizeof p, name);
    f = fopen(p, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* Run openssl with these arguments (NULL-terminated), in DIR_, quietly. 0 on success. */
static int openssl(const char *const *args)
{
    const char *argv[32];
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status = 0, n = 0, i, rc;
    argv[n++] = "openssl";
    for (i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (!getenv("MAAS_TEST_VERBOSE"))
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    rc = posix_spawnp(&pid, "openssl", &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "test_tls: cannot run openssl: %s\n", strerror(rc));
        return -1;
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "test_tls: openssl %s failed (status %d)\n", args[0], status);
        return -1;
    }
    return 0;
}

static int make_ca(const char *key, const char *pem, const char *cn)
{
    char cnf[512], cnf_path[128], key_path[128], pem_path[128];
    snprintf(cnf, sizeof cnf,
             "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n"
             "[dn]\nCN = %s\n"
             "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
             "keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
             cn);
    path_in(cnf_path, sizeof cnf_path, "ca.cnf");
    path_in(key_path, sizeof key_path, key);
    path_in(pem_path, sizeof pem_path, pem);
    if (write_file("ca.cnf", cnf))
        return -1;
    {
        const char *const args[] = { "req", "-x509", "-config", cnf_path, "-newkey", "ec",
                                     "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                     "-days", "2", "-keyout", key_path, "-out", pem_path, NULL };
        return openssl(args);
    }
}

static int make_certificates(void)
{
    char cnf[128], ext[128], csr[128], cakey[128];
    snprintf(DIR_, sizeof DIR_, "/tmp/maas-tls-XXXXXX");
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
    if (make_ca("ca.key", "ca.pem", "libmaas test CA") ||
        make_ca("other.key", "other.pem", "another test CA"))
        return -1;
    /* The CN is no host name: only the subjectAltName counts, and it is the IP alone. */
    if (write_file("server.cnf", "[req]\ndistinguished_name = dn\nprompt = no\n"
                                 "[dn]\nCN = maas-emulator test server\n") ||
        write_file("server-ext.cnf", "subjectAltName = IP:127.0.0.1\n"
                                     "basicConstraints = critical,CA:FALSE\n"
                                     "keyUsage = critical,digitalSignature\n"
                                     "extendedKeyUsage = serverAuth\n"
                                     "authorityKeyIdentifier = keyid\n"))
        return -1;
    {
        const char *const req[] = { "req", "-new", "-config", cnf, "-newkey", "ec", "-pkeyopt",
                                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", KEY,
                                    "-out", csr, NULL };
        const char *const sign[] = { "x509", "-req", "-in", csr, "-CA", CA, "-CAkey", cakey,
                                     "-set_serial", "2", "-days", "2", "-extfile", ext, "-out",
                                     CERT, NULL };
        if (openssl(req) || openssl(sign))
            return -1;
    }
    return 0;
}

static void remove_certificates(void)
{
    size_t i;
    char p[128];
    if (!DIR_[0])
        return;
    for (i = 0; i < sizeof files_made / sizeof files_made[0]; i++) {
        path_in(p, sizeof p, files_made[i]);
        unlink(p);
    }
    rmdir(DIR_);
    DIR_[0] = '\0';
}

/* ---- helpers ------------------------------------------------------------------- */

static void options(maas_client_options *o)
{
    emu_options(&E, o);
    /* Hang guards only: under valgrind, reading the system's CA store for the
     * first handshake alone takes seconds (and the idle clock runs meanwhile). */
    o->connect_timeout_ms = 30000;
    o->idle_timeout_ms = 60000;
    o->max_retries = MAAS_RETRIES_OFF;
}

static maas_client *client_from(const maas_client_options *o)
{
    maas_client *c = NULL;
    assert_int_equal(maas_client_new(&c, o), MAAS_OK);
    return c;
}

static void finish(maas_client *c)
{
    maas_client_free(c);
    if (!E.front)
        assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

static void expect_tls(maas_status st, const char *needle)
{
    const maas_error *e = maas_last_error();
    if (st != MAAS_ERR_TLS)
        fail_msg("%s (%s), expected MAAS_ERR_TLS", maas_status_name(st), e ? e->message : "");
    assert_non_null(e);
    assert_int_equal(e->status, MAAS_ERR_TLS);
    assert_int_equal(e->http_status, 0);
    if (getenv("MAAS_TEST_VERBOSE"))
        print_message("MAAS_ERR_TLS: %s\n", e->message);
    assert_contains(e->message, needle);
}

/* The token endpoint, the model list and a generation all work. */
static void expect_working(maas_client *c)
{
    maas_model_list *l = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(maas_models_list(&l, c), MAAS_OK);
    assert_int_equal(maas_model_list_count(l), 5);
    maas_model_list_free(l);
    r.model = MISTRAL;
    r.prompt = PROMPT;
    r.max_new_tokens = 10;
    assert_int_equal(maas_generate_text(&text, &len, c, &r), MAAS_OK);
    assert_true(len > 0);
    maas_free(text);
}

/* Authentication, then (with a static token, so that the API is the first
 * contact) the model list and a generation: each fails verification. */
static void expect_refused(const maas_client_options *base, const char *needle)
{
    maas_client_options o = *base;
    maas_client *c = client_from(&o);
    maas_model_list *l = NULL;
    maas_request r = MAAS_REQUEST_INIT;

    expect_tls(maas_client_authenticate(c), needle);
    assert_int_equal(maas_last_error()->attempts, 1);
    maas_client_free(c);

    o.client_id = NULL;
    o.client_secret = NULL;
    o.token = "a-token-never-sent";
    c = client_from(&o);
    expect_tls(maas_models_list(&l, c), needle);
    assert_null(l);
    r.model = MISTRAL;
    r.prompt = PROMPT;
    expect_tls(maas_generate(c, &r, NULL, NULL, NULL), needle);
    finish(c);
    /* Nothing got through: no token was issued, no API request was answered. */
    assert_int_equal(emu_stat(&E, "tokens_issued"), 0);
    assert_int_equal(emu_stat(&E, "models_requests"), 0);
    assert_int_equal(emu_stat(&E, "generate_requests"), 0);
}

static void replace_host(char *out, size_t n, const char *url)
{
    const char *p = strstr(url, "127.0.0.1");
    assert_non_null(p);
    snprintf(out, n, "%.*slocalhost%s", (int)(p - url), url, p + strlen("127.0.0.1"));
}

static const char *const env_names[] = {
    "MAAS_CLIENT_ID", "MAAS_CLIENT_SECRET", "MAAS_CLOUD_ACCOUNT", "MAAS_API_BASE_URL",
    "MAAS_AUTH_URL", "MAAS_TOKEN", "MAAS_CA_BUNDLE",
    /* what other tools read, and names a user might guess */
    "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_SSL_BACKEND", "MAAS_INSECURE",
    "MAAS_INSECURE_SKIP_TLS_VERIFY", "MAAS_TLS_VERIFY", "MAAS_SSL_VERIFY", "CURLOPT_SSL_VERIFYPEER",
    "CURL_INSECURE", "PYTHONHTTPSVERIFY", "NODE_TLS_REJECT_UNAUTHORIZED", "GIT_SSL_NO_VERIFY",
};

static void clear_env(void)
{
    size_t i;
    for (i = 0; i < sizeof env_names / sizeof env_names[0]; i++)
        unsetenv(env_names[i]);
}

static int group_setup(void **state)
{
    const char *args[] = { "--tls-cert", NULL, "--tls-key", NULL, NULL };
    (void)state;
    clear_env();
    if (make_certificates()) {
        remove_certificates();
        return -1;
    }
    args[1] = CERT;
    args[3] = KEY;
    if (emu_start(&E, args)) {
        remove_certificates();
        return -1;
    }
    if (strncmp(E.api, "https://127.0.0.1:", 18) != 0) {
        fprintf(stderr, "test_tls: the emulator does not serve HTTPS: %s\n", E.api);
        emu_stop(&E);
        remove_certificates();
        return -1;
    }
    /* The harness's own requests (counters, reset) trust the test CA. */
    snprintf(E.ca, sizeof E.ca, "%s", CA);
    {
        maas_client_options o;
        emu_options(&E, &o);
        replace_host(LOCAL_API, sizeof LOCAL_API, o.api_base_url);
        replace_host(LOCAL_AUTH, sizeof LOCAL_AUTH, o.auth_url);
    }
    return 0;
}

static int group_teardown(void **state)
{
    int rc;
    (void)state;
    clear_env();
    rc = emu_stop(&E);
    remove_certificates();
    return rc;
}

static int reset(void **state)
{
    (void)state;
    clear_env();
    return emu_post(&E, "/emulator/reset", NULL) == 200 ? 0 : -1;
}

/* ---- tests ------------------------------------------------------------------------- */

static void test_no_ca_bundle(void **state)
{
    maas_client_options o;
    (void)state;
    options(&o);
    expect_refused(&o, "certificate");
}

static void test_ca_bundle(void **state)
{
    maas_client_options o;
    maas_client *c;
    (void)state;
    options(&o);
    o.ca_bundle = CA;
    c = client_from(&o);
    expect_working(c);
    assert_int_equal(emu_stat(&E, "tokens_issued"), 1);
    assert_int_equal(emu_stat(&E, "generations"), 1);
    finish(c);
}

static void test_ca_bundle_from_environment(void **state)
{
    maas_client *c = NULL;
    (void)state;
    emu_export_env(&E);
    setenv("MAAS_CA_BUNDLE", CA, 1);
    assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
    expect_working(c);
    finish(c);
    /* Without it, the same environment is refused. */
    unsetenv("MAAS_CA_BUNDLE");
    assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
    expect_tls(maas_client_authenticate(c), "certificate");
    finish(c);
}

static void test_wrong_ca(void **state)
{
    maas_client_options o;
    (void)state;
    options(&o);
    o.ca_bundle = OTHER_CA;
    expect_refused(&o, "certificate");
}

static void test_unreadable_ca_file(void **state)
{
    maas_client_options o;
    char missing[160];
    (void)state;
    options(&o);
    snprintf(missing, sizeof missing, "%s/no-such-ca.pem", DIR_);
    o.ca_bundle = missing;
    /* libcurl: "error setting certificate file: <path>" (older: "... verify locations") */
    expect_refused(&o, "error setting certificate");
}

static void test_hostname_mismatch(void **state)
{
    maas_client_options o;
    (void)state;
    options(&o);
    o.ca_bundle = CA; /* a trusted certificate, for another name */
    o.api_base_url = LOCAL_API;
    o.auth_url = LOCAL_AUTH;
    expect_refused(&o, "localhost");
}

static void test_insecure_skip_verify(void **state)
{
    maas_client_options o;
    maas_client *c;
    (void)state;
    options(&o);
    o.insecure_skip_tls_verify = 1;
    c = client_from(&o);
    expect_working(c);
    finish(c);
    /* It skips the host name check too. */
    o.api_base_url = LOCAL_API;
    o.auth_url = LOCAL_AUTH;
    c = client_from(&o);
    expect_working(c);
    finish(c);
}

/*
 * libcurl (the library) reads no variable about verification: CURL_CA_BUNDLE
 * is the curl tool's, SSL_CERT_FILE/SSL_CERT_DIR are OpenSSL's default paths,
 * which libcurl uses only when built without a CA bundle of its own, and then
 * they could only add trust, never remove the check. libmaas reads
 * MAAS_CA_BUNDLE only. So: with every variable someone might try set to
 * "off" or to nonsense, an unverified connection still fails, from the
 * environment and from options; and the legitimate MAAS_CA_BUNDLE still works.
 */
static void test_environment_cannot_disable_verification(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    (void)state;
    setenv("CURL_CA_BUNDLE", "/nonexistent/ca.pem", 1);
    setenv("SSL_CERT_FILE", "/nonexistent/cert.pem", 1);
    setenv("SSL_CERT_DIR", "/nonexistent", 1);
    setenv("CURL_SSL_BACKEND", "none", 1);
    setenv("MAAS_INSECURE", "1", 1);
    setenv("MAAS_INSECURE_SKIP_TLS_VERIFY", "1", 1);
    setenv("MAAS_TLS_VERIFY", "0", 1);
    setenv("MAAS_SSL_VERIFY", "0", 1);
    setenv("CURLOPT_SSL_VERIFYPEER", "0", 1);
    setenv("CURL_INSECURE", "1", 1);
    setenv("PYTHONHTTPSVERIFY", "0", 1);
    setenv("NODE_TLS_REJECT_UNAUTHORIZED", "0", 1);
    setenv("GIT_SSL_NO_VERIFY", "1", 1);
    emu_export_env(&E);

    assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
    expect_tls(maas_client_authenticate(c), "certificate");
    finish(c);

    options(&o);
    expect_refused(&o, "certificate");

    setenv("MAAS_CA_BUNDLE", CA, 1);
    assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
    expect_working(c);
    finish(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_no_ca_bundle, reset),
        cmocka_unit_test_setup(test_ca_bundle, reset),
        cmocka_unit_test_setup(test_ca_bundle_from_environment, reset),
        cmocka_unit_test_setup(test_wrong_ca, reset),
        cmocka_unit_test_setup(test_unreadable_ca_file, reset),
        cmocka_unit_test_setup(test_hostname_mismatch, reset),
        cmocka_unit_test_setup(test_insecure_skip_verify, reset),
        cmocka_unit_test_setup(test_environment_cannot_disable_verification, reset),
    };
    /* cmocka ignores a failing teardown: the emulator's exit status is checked here. */
    return emu_suite_result(cmocka_run_group_tests_name("tls", tests, group_setup, group_teardown),
                            &E);
}
