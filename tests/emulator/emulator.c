/*
 * maas-emulator: a local server speaking the MaaS API, as the service's
 * published source defines it, for tests, demos and offline work.
 * docs/emulator.md is its guide.
 *
 * This file: the command line, the daemon's start and its clean shutdown.
 *
 * SPDX-License-Identifier: MIT
 */
#include "emulator.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

struct emu_config g_cfg;
struct emu_stats g_stats;

static const char usage[] =
    "usage: maas-emulator [--host ADDR] [--port N] [--token-port N]\n"
    "                     [--client-id ID] [--client-secret S]\n"
    "                     [--cloud-account ACC] [--token-lifetime SECONDS]\n"
    "                     [--token-delay-ms N] [--token-interval-ms N] [--fault SPEC]...\n"
    "                     [--random-fault PERCENT:SPEC[+SPEC...]]... [--random-seed N]\n"
    "                     [--token-expires-in X] [--token-fail-after K]\n"
    "                     [--chaos SEED[:PERCENT]]\n"
    "                     [--tls-cert PEM --tls-key PEM] [--quiet] [--help] [--version]\n"
    "                     [--allow-non-loopback]\n"
    "\n"
    "A local server for the Intel Tiber AI Cloud MaaS API: GET /v1/maas/models and\n"
    "POST /v1/maas/generatestream on one port, POST /oauth2/token on a second one\n"
    "(the service has them on two hosts), /emulator/ control endpoints on both.\n"
    "Once listening it prints MAAS_API_BASE_URL, MAAS_AUTH_URL and\n"
    "MAAS_EMULATOR_URL lines on stdout, then serves until SIGINT or SIGTERM.\n"
    "\n"
    "  --host ADDR              address to listen on (default 127.0.0.1)\n"
    "  --port N                 the API's port, 0 for an ephemeral one (default 0)\n"
    "  --token-port N           the token endpoint's port, 0 for an ephemeral one\n"
    "                           (default 0)\n"
    "  --client-id ID           accepted client id (default test-client)\n"
    "  --client-secret S        accepted client secret (default test-secret)\n"
    "  --cloud-account ACC      the caller's cloudAccountId (default 123456789012)\n"
    "  --token-lifetime SECONDS expires_in of issued tokens (default 3600)\n"
    "  --token-delay-ms N       pause before the token endpoint answers (default 0)\n"
    "  --token-interval-ms N    pause between streamed tokens (default 0)\n"
    "  --fault SPEC             a fault for every generation, e.g. split, delay=50\n"
    "  --random-fault P:SPEC    SPEC (faults joined by +) on P percent of generations,\n"
    "                           drawn per request, e.g. 5:status=429+retry-after=1\n"
    "  --random-seed N          seed of those draws (default: from the clock)\n"
    "  --token-expires-in X     expires_in sent with tokens (any positive number, 1e-9\n"
    "                           included); they stay valid for --token-lifetime\n"
    "  --token-fail-after K     after K tokens issued, the token endpoint answers 503\n"
    "  --chaos SEED[:PERCENT]   a random fault, of any kind, for PERCENT (default 30) of\n"
    "                           the token and generation requests, chosen from SEED\n"
    "  --tls-cert PEM, --tls-key PEM   serve HTTPS with this certificate and key\n"
    "  --quiet                  no per-request log lines on stderr\n"
    "  --allow-non-loopback     listen on an address that is not loopback. Unsafe: the\n"
    "                           /emulator/ control endpoints have no authentication\n"
    "\n"
    "Faults, directives ([[fault:NAME=VALUE]] in a prompt) and control endpoints:\n"
    "see docs/emulator.md or man maas-emulator.\n";

static void die_usage(const char *fmt, ...) EMU_PRINTF(1, 2);

static void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("maas-emulator: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (see --help)\n", stderr);
    va_end(ap);
    exit(2);
}

static long num_arg(const char *opt, const char *s, long min, long max)
{
    long v;
    if (!parse_long(s, strlen(s), min, max, &v)) {
        fprintf(stderr, "maas-emulator: %s wants a whole number in [%ld, %ld], not \"%s\"\n",
                opt, min, max, s);
        exit(2);
    }
    return v;
}

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "maas-emulator: cannot read %s: %s\n", path, strerror(errno));
        exit(2);
    }
    struct sbuf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0 && b.len < (1u << 20))
        sbuf_add(&b, chunk, n);
    fclose(fp);
    char *s = sbuf_take(&b);
    if (!s) {
        fprintf(stderr, "maas-emulator: out of memory reading %s\n", path);
        exit(2);
    }
    return s;
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) EMU_PRINTF(2, 0);

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        msg[--len] = '\0';
    /* Connections the emulator closes on purpose (drop-after, a client gone
     * during a pause, shutdown) and clients hanging up mid-answer are in the
     * request's own log line (end=..., conn=...). */
    if (strncmp(msg, "Closing connection (application", 31) == 0 ||
        strncmp(msg, "Application reported internal error", 35) == 0 ||
        strncmp(msg, "Failed to send the ", 19) == 0)
        return;
    emu_log("libmicrohttpd: %s", msg);
    static atomic_bool hinted;
    if ((strstr(msg, "open files") || strstr(msg, "resource limit") ||
         strstr(msg, "too many") || strstr(msg, "Too many") || strstr(msg, "accept")) &&
        !atomic_exchange(&hinted, true)) {
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        emu_log("cannot accept more connections: the open-file limit is %llu "
                "(%ld connections open); raise it with `ulimit -n`",
                (unsigned long long)rl.rlim_cur, atomic_load(&g_stats.connections_open));
    }
}

/* Resolve --host into a socket address; false if it is not an address. */
static bool resolve_host(const char *host, struct sockaddr_storage *ss, socklen_t *len, bool *v6)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    const char *h = strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
    if (inet_pton(AF_INET, h, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)g_cfg.port);
        *len = sizeof *in4;
        *v6 = false;
        return true;
    }
    char bare[INET6_ADDRSTRLEN + 2];
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']' && hl - 2 < sizeof bare) {
        memcpy(bare, h + 1, hl - 2);
        bare[hl - 2] = '\0';
        h = bare;
    }
    if (inet_pton(AF_INET6, h, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)g_cfg.port);
        *len = sizeof *in6;
        *v6 = true;
        return true;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return false;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    *v6 = res->ai_family == AF_INET6;
    if (*v6)
        in6->sin6_port = htons((uint16_t)g_cfg.port);
    else
        in4->sin_port = htons((uint16_t)g_cfg.port);
    freeaddrinfo(res);
    return true;
}

enum {
    OPT_HOST = 256, OPT_PORT, OPT_TOKEN_PORT, OPT_ID, OPT_SECRET, OPT_ACCOUNT, OPT_LIFETIME, OPT_TOKEN_DELAY,
    OPT_INTERVAL, OPT_FAULT, OPT_RANDOM_FAULT, OPT_RANDOM_SEED, OPT_CERT, OPT_KEY, OPT_QUIET, OPT_HELP, OPT_VERSION,
    OPT_ALLOW_REMOTE,
    OPT_EXPIRES_IN, OPT_FAIL_AFTER, OPT_RANDOM,
};

static bool g_allow_remote;

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
    return false;
}

/* The token endpoint's and the random faults' options (chaos.c); false: not one. */
static bool chaos_option(int c, const char *arg)
{
    char *end;
    switch (c) {
    case OPT_EXPIRES_IN:
        g_cfg.token_expires_in = strtod(arg, &end);
        if (end == arg || *end || !(g_cfg.token_expires_in > 0 && g_cfg.token_expires_in < 1e12))
            die_usage("--token-expires-in must be a positive number (got \"%s\")", arg);
        return true;
    case OPT_FAIL_AFTER:
        g_cfg.token_fail_after = num_arg("--token-fail-after", arg, 0, 1000000000L);
        return true;
    case OPT_RANDOM: {
        unsigned long long seed = strtoull(arg, &end, 10);
        long pct = 30;
        if (end == arg || (*end && *end != ':'))
            die_usage("--chaos wants SEED[:PERCENT] (got \"%s\")", arg);
        if (*end == ':')
            pct = num_arg("--chaos PERCENT", end + 1, 0, 100);
        g_cfg.random_faults = true;
        g_cfg.random_seed = seed;
        g_cfg.random_percent = pct;
        return true;
    }
    default:
        return false;
    }
}

static void parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"token-port", required_argument, NULL, OPT_TOKEN_PORT},
        {"client-id", required_argument, NULL, OPT_ID},
        {"client-secret", required_argument, NULL, OPT_SECRET},
        {"cloud-account", required_argument, NULL, OPT_ACCOUNT},
        {"token-lifetime", required_argument, NULL, OPT_LIFETIME},
        {"token-delay-ms", required_argument, NULL, OPT_TOKEN_DELAY},
        {"token-interval-ms", required_argument, NULL, OPT_INTERVAL},
        {"fault", required_argument, NULL, OPT_FAULT},
        {"random-fault", required_argument, NULL, OPT_RANDOM_FAULT},
        {"random-seed", required_argument, NULL, OPT_RANDOM_SEED},
        {"tls-cert", required_argument, NULL, OPT_CERT},
        {"tls-key", required_argument, NULL, OPT_KEY},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {"allow-non-loopback", no_argument, NULL, OPT_ALLOW_REMOTE},
        {"token-expires-in", required_argument, NULL, OPT_EXPIRES_IN},
        {"token-fail-after", required_argument, NULL, OPT_FAIL_AFTER},
        {"chaos", required_argument, NULL, OPT_RANDOM},
        {NULL, 0, NULL, 0},
    };
    const char *cert = NULL, *key = NULL;
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, ":", opts, NULL);
        if (c == -1)
            break;
        char err[200];
        if (chaos_option(c, optarg))
            continue;
        switch (c) {
        case OPT_HOST:
            g_cfg.host = optarg;
            break;
        case OPT_PORT:
            g_cfg.port = (unsigned)num_arg("--port", optarg, 0, 65535);
            break;
        case OPT_TOKEN_PORT:
            g_cfg.token_port = (unsigned)num_arg("--token-port", optarg, 0, 65535);
            break;
        case OPT_ID:
            if (!optarg[0])
                die_usage("--client-id must not be empty");
            g_cfg.client_id = optarg;
            break;
        case OPT_SECRET:
            if (!optarg[0])
                die_usage("--client-secret must not be empty");
            g_cfg.client_secret = optarg;
            break;
        case OPT_ACCOUNT:
            if (!optarg[0])
                die_usage("--cloud-account must not be empty");
            g_cfg.cloud_account = optarg;
            break;
        case OPT_LIFETIME:
            g_cfg.token_lifetime_s = num_arg("--token-lifetime", optarg, 1, 315360000L);
            break;
        case OPT_TOKEN_DELAY:
            g_cfg.token_delay_ms = num_arg("--token-delay-ms", optarg, 0, EMU_MAX_MS);
            break;
        case OPT_INTERVAL:
            g_cfg.token_interval_ms = num_arg("--token-interval-ms", optarg, 0, EMU_MAX_MS);
            break;
        case OPT_FAULT:
            if (!faults_parse_spec(&g_cfg.cli_faults, optarg, strlen(optarg), err, sizeof err))
                die_usage("--fault: %s", err);
            break;
        case OPT_RANDOM_FAULT:
            if (!faults_random_add(optarg, err, sizeof err))
                die_usage("--random-fault: %s", err);
            break;
        case OPT_RANDOM_SEED:
            faults_random_seed((uint64_t)num_arg("--random-seed", optarg, 0, 2147483647L));
            break;
        case OPT_CERT:
            cert = optarg;
            break;
        case OPT_KEY:
            key = optarg;
            break;
        case OPT_QUIET:
            g_quiet = true;
            break;
        case OPT_ALLOW_REMOTE:
            g_allow_remote = true;
            break;
        case OPT_HELP:
            fputs(usage, stdout);
            exit(0);
        case OPT_VERSION:
            printf("maas-emulator %s (libmicrohttpd %s, jansson %s)\n", EMU_VERSION,
                   MHD_get_version(), jansson_version_str());
            exit(0);
        case ':':
            die_usage("option %s needs a value", argv[optind - 1]);
            break;
        default:
            die_usage("unknown option %s", argv[optind - 1]);
            break;
        }
    }
    if (optind < argc)
        die_usage("unexpected argument \"%s\"", argv[optind]);
    if ((cert == NULL) != (key == NULL))
        die_usage("--tls-cert and --tls-key go together");
    if (cert) {
        if (!MHD_is_feature_supported(MHD_FEATURE_TLS))
            die_usage("this libmicrohttpd was built without TLS");
        g_cfg.tls_cert = read_file(cert);
        g_cfg.tls_key = read_file(key);
    }
}

/* One MHD daemon on `addr` at `port` (0: an ephemeral one); NULL and errno
 * set if it cannot listen. */
static struct MHD_Daemon *start_listener(unsigned flags, const struct sockaddr_storage *addr,
                                         unsigned port, enum listener which, unsigned limit,
                                         struct MHD_OptionItem *tls)
{
    struct sockaddr_storage a = *addr;
    if (a.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&a)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)&a)->sin_port = htons((uint16_t)port);
    errno = 0;
    return MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, EMU_LISTENER(which),
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&a,
        MHD_OPTION_CONNECTION_LIMIT, limit,
        MHD_OPTION_CONNECTION_TIMEOUT, 0u,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32 * 1024), /* ~31 KiB writes */
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, EMU_LISTENER(which),
        MHD_OPTION_ARRAY, tls,
        MHD_OPTION_END);
}

/* scheme://host:port of a listener, the port it was given if 0 was asked. */
static void listener_url(struct MHD_Daemon *d, unsigned asked, char *out, size_t n)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = info ? info->port : asked;
    bool brackets = strchr(g_cfg.host, ':') && g_cfg.host[0] != '[';
    snprintf(out, n, "%s://%s%s%s:%u", g_cfg.tls_cert ? "https" : "http", brackets ? "[" : "",
             g_cfg.host, brackets ? "]" : "", port);
}

int main(int argc, char **argv)
{
    g_cfg.host = "127.0.0.1";
    g_cfg.client_id = "test-client";
    g_cfg.client_secret = "test-secret";
    g_cfg.cloud_account = "123456789012";
    g_cfg.token_lifetime_s = 3600;
    g_cfg.token_expires_in = -1;
    g_cfg.token_fail_after = -1;
    faults_init(&g_cfg.cli_faults);
    faults_random_seed((uint64_t)time(NULL) * 2654435761u);
    parse_args(argc, argv);

    struct sockaddr_storage addr;
    socklen_t addrlen;
    bool v6;
    if (!resolve_host(g_cfg.host, &addr, &addrlen, &v6)) {
        fprintf(stderr, "maas-emulator: --host \"%s\" is not an address\n", g_cfg.host);
        return 2;
    }
    if (!is_loopback(&addr) && !g_allow_remote) {
        fprintf(stderr,
                "maas-emulator: --host %s is not a loopback address: anyone who can reach it "
                "could use the unauthenticated /emulator/ control endpoints; pass "
                "--allow-non-loopback to listen there anyway\n",
                g_cfg.host);
        return 2;
    }

    /* Thousands of streams need thousands of descriptors. */
    struct rlimit rl;
    unsigned limit = 20000;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
            getrlimit(RLIMIT_NOFILE, &rl);
        }
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)limit + 64)
            limit = rl.rlim_cur > 96 ? (unsigned)(rl.rlim_cur - 64) : 32;
        g_cfg.nofile = rl.rlim_cur == RLIM_INFINITY ? 0 : (unsigned long long)rl.rlim_cur;
    }
    g_cfg.conn_limit = limit;
    if (limit < 4096)
        fprintf(stderr,
                "maas-emulator: warning: the open-file limit (%llu) allows only %u concurrent "
                "connections; raise it with `ulimit -n` for large tests\n",
                g_cfg.nofile, limit);

    /* Signals are taken by sigwait() in this thread only. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (!gen_init() || !sched_start()) {
        fprintf(stderr, "maas-emulator: cannot start: %s\n", strerror(errno));
        return 1;
    }
    tokens_init();

    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                         MHD_USE_ERROR_LOG;
    const char *poller;
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL)) {
        flags |= MHD_USE_EPOLL;
        poller = "epoll";
    } else if (MHD_is_feature_supported(MHD_FEATURE_POLL)) {
        flags |= MHD_USE_POLL;
        poller = "poll";
    } else {
        flags |= MHD_USE_AUTO;
        poller = "auto";
    }
    if (v6)
        flags |= MHD_USE_IPv6;
    struct MHD_OptionItem tls[3] = {{MHD_OPTION_END, 0, NULL}};
    if (g_cfg.tls_cert) {
        flags |= MHD_USE_TLS;
        tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, g_cfg.tls_key};
        tls[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, g_cfg.tls_cert};
        tls[2] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    }
    /* The API and the token endpoint each on a listener of its own, as the
     * service has them on two hosts: a client opens a connection to each,
     * and a token request sent to the API (or the reverse) is a 404. */
    struct MHD_Daemon *d = start_listener(flags, &addr, g_cfg.port, LISTENER_API, limit, tls);
    struct MHD_Daemon *td = d ? start_listener(flags, &addr, g_cfg.token_port, LISTENER_TOKEN,
                                               limit, tls)
                              : NULL;
    if (!d || !td) {
        int e = errno;
        fprintf(stderr, "maas-emulator: cannot listen on %s port %u%s%s\n", g_cfg.host,
                d ? g_cfg.token_port : g_cfg.port, e ? ": " : "", e ? strerror(e) : "");
        if (d)
            MHD_stop_daemon(d);
        sched_stop();
        gen_free();
        tokens_free();
        return 1;
    }
    char base[300], token_base[300];
    listener_url(d, g_cfg.port, base, sizeof base);
    listener_url(td, g_cfg.token_port, token_base, sizeof token_base);
    printf("MAAS_API_BASE_URL=%s/v1/maas\n", base);
    printf("MAAS_AUTH_URL=%s/oauth2/token\n", token_base);
    printf("MAAS_EMULATOR_URL=%s\n", base);
    fflush(stdout);
    if (!g_quiet)
        emu_log("%s listening on %s (%s, up to %u connections)", EMU_VERSION, base, poller, limit);

    for (;;) {
        int sig = 0;
        if (sigwait(&sigs, &sig) == 0 && (sig == SIGINT || sig == SIGTERM))
            break;
    }
    if (!g_quiet)
        emu_log("shutting down");

    /* No new connections; wake every parked one (it ends with an error);
     * wait until MHD has taken them all back, then stop. */
    MHD_socket ls = MHD_quiesce_daemon(d), tls_ls = MHD_quiesce_daemon(td);
    sched_stop();
    uint64_t until = now_ms() + 5000;
    while (sched_suspended() > 0 && now_ms() < until) {
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (sched_suspended() > 0) {
        emu_log("%ld connections still suspended; exiting without cleanup", sched_suspended());
        fflush(stderr);
        _exit(0);
    }
    MHD_stop_daemon(d);
    MHD_stop_daemon(td);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    if (tls_ls != MHD_INVALID_SOCKET)
        close(tls_ls);
    fault_queue_clear();
    tokens_free();
    gen_free();
    free(g_cfg.tls_cert);
    free(g_cfg.tls_key);
    return 0;
}
