/*
 * maas: a command-line client for the MaaS API, configured from the
 * environment (MAAS_CLIENT_ID, MAAS_CLIENT_SECRET, MAAS_CLOUD_ACCOUNT, ...).
 *
 *   maas models [--json] [--timeout SECONDS]
 *   maas generate [options] PROMPT|-
 *
 * Exit status: 0 success, 2 usage, and one code per error class (see usage()).
 * SPDX-License-Identifier: MIT
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <maas/maas.h>

#include "batch.h"

enum exit_code {
    EXIT_OK = 0,
    EXIT_INTERNAL = 1,
    EXIT_USAGE = 2,
    EXIT_CONFIG = 3,
    EXIT_AUTH = 4,
    EXIT_REQUEST = 5,
    EXIT_SERVICE = 6,
    EXIT_NETWORK = 7,
    EXIT_TIMEOUT = 8,
    EXIT_STREAM = 9,
    EXIT_INTERRUPTED = 130
};

static void usage(FILE *f)
{
    fputs("usage: maas models [--json] [--timeout SECONDS]\n"
          "       maas generate [--model NAME] [--max-tokens N] [--temperature T]\n"
          "                     [--idle-timeout SECONDS] [--timeout SECONDS]\n"
          "                     [--connect-timeout SECONDS] [--retries N]\n"
          "                     [--json] [--details] [--] PROMPT|-\n",
          f);
    maas_cli_batch_usage(f);
    fputs("       maas --help | --version\n"
          "\n"
          "Commands:\n"
          "  models     list the models, one per line: model name, product name, product id\n"
          "             (--json: {\"models\": [...]} with the service's field names;\n"
          "             --timeout S: deadline for the whole call, default 30)\n"
          "  generate   stream a generation; the text of non-special tokens goes to stdout\n"
          "             as it arrives. PROMPT '-' reads the prompt from stdin; after '--'\n"
          "             a prompt may start with '-'.\n"
          "  batch      run every prompt of a JSON Lines file (docs/batch.md), one result\n"
          "             line per request; resumable, rate-aware; exit 6 if any failed.\n"
          "\n"
          "Options of generate:\n"
          "  --model NAME          model name or product name (default: the first listed model)\n"
          "  --max-tokens N        max_new_tokens, 1 to 2047 (default 250)\n"
          "  --temperature T       0 <= T < 1 (default 0.7)\n"
          "  --idle-timeout S      longest wait for the next message (default 60, 0: none)\n"
          "  --timeout S           deadline for the whole generation (default none)\n"
          "  --connect-timeout S   connect timeout (default 10)\n"
          "  --retries N           retries before the first token (default 2, 0: none)\n"
          "  --json                one JSON object per event on stdout\n"
          "  --details             finish reason, token count, seed, timings and rate-limit\n"
          "                        headers on stderr at the end (rate limits after a failure too)\n"
          "\n"
          "Options of every command:\n"
          "  --http1.1             HTTP/1.1 only (MAAS_HTTP_VERSION=1.1)\n"
          "  --http2               HTTP/2 where the server offers it, the default\n"
          "                        (MAAS_HTTP_VERSION=2)\n"
          "\n"
          "Environment: MAAS_CLIENT_ID, MAAS_CLIENT_SECRET, MAAS_CLOUD_ACCOUNT,\n"
          "  MAAS_API_BASE_URL, MAAS_AUTH_URL, MAAS_TOKEN, MAAS_CA_BUNDLE,\n"
          "  MAAS_HTTP_VERSION, MAAS_LOG.\n"
          "\n"
          "Exit status: 0 success; 1 internal error; 2 usage; 3 configuration;\n"
          "  4 authentication or permission; 5 request rejected (invalid, unknown model);\n"
          "  6 service busy or failing (429, 5xx); 7 network or TLS; 8 timeout;\n"
          "  9 stream error (error line, truncated, malformed); 130 interrupted.\n",
          f);
}

static int exit_code_for(maas_status st)
{
    switch (st) {
    case MAAS_OK:
    case MAAS_DONE:
        return EXIT_OK;
    case MAAS_ERR_CONFIG:
    case MAAS_ERR_OPTIONS_VERSION:
        return EXIT_CONFIG;
    case MAAS_ERR_AUTH:
    case MAAS_ERR_UNAUTHENTICATED:
    case MAAS_ERR_PERMISSION_DENIED:
        return EXIT_AUTH;
    case MAAS_ERR_INVALID_ARGUMENT:
    case MAAS_ERR_INVALID_REQUEST:
    case MAAS_ERR_UNKNOWN_MODEL:
    case MAAS_ERR_HTTP:
        return EXIT_REQUEST;
    case MAAS_ERR_RATE_LIMITED:
    case MAAS_ERR_UNAVAILABLE:
    case MAAS_ERR_SERVER:
        return EXIT_SERVICE;
    case MAAS_ERR_CONNECT:
    case MAAS_ERR_TLS:
    case MAAS_ERR_NETWORK:
    case MAAS_ERR_CONNECT_TIMEOUT:
    case MAAS_ERR_PROXY:
        return EXIT_NETWORK;
    case MAAS_ERR_IDLE_TIMEOUT:
    case MAAS_ERR_DEADLINE:
        return EXIT_TIMEOUT;
    case MAAS_ERR_STREAM:
    case MAAS_ERR_TRUNCATED:
    case MAAS_ERR_PROTOCOL:
    case MAAS_ERR_LINE_TOO_LONG:
    case MAAS_ERR_TEXT_TOO_LONG: /* maas_generate_text() only; named so -Wswitch stays quiet */
        return EXIT_STREAM;
    case MAAS_ERR_CANCELLED:
        return EXIT_INTERRUPTED;
    case MAAS_ERR_NO_MEMORY:
    case MAAS_ERR_INTERNAL:
        return EXIT_INTERNAL;
    }
    return EXIT_INTERNAL;
}

/* Length of the well-formed UTF-8 sequence at s[0..n), 0 if there is none. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = s[0] < 0x80 ? 1 : s[0] >= 0xC2 && s[0] <= 0xDF ? 2
                 : s[0] >= 0xE0 && s[0] <= 0xEF ? 3 : s[0] >= 0xF0 && s[0] <= 0xF4 ? 4 : 0;
    size_t i;
    if (!len || n < len)
        return 0;
    if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] > 0x9F) ||
        (s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] > 0x8F))
        return 0;
    for (i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

/*
 * Write text that came from the server so that a terminal shows it and does
 * not act on it: control characters (C0, DEL, the C1 range U+0080..U+009F)
 * and bytes that are not UTF-8 become \n, \r, \t, \xHH or \u00HH. With
 * `lines`, newline and tab pass (generated text keeps its layout).
 */
static void put_safe(FILE *f, const char *str, size_t n, int lines)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, k;
    while (i < n) {
        unsigned char c = s[i];
        if (lines && (c == '\n' || c == '\t')) {
            fputc(c, f);
            i++;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            fputc('\\', f);
            fputc(c == '\n' ? 'n' : c == '\r' ? 'r' : 't', f);
            i++;
        } else if (c == 0xC2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] < 0xA0) {
            fprintf(f, "\\u00%c%c", hex[s[i + 1] >> 4], hex[s[i + 1] & 15]);
            i += 2;
        } else if (c < 0x20 || c == 0x7F || !(k = utf8_len(s + i, n - i))) {
            fprintf(f, "\\x%c%c", hex[c >> 4], hex[c & 15]);
            i++;
        } else {
            fwrite(s + i, 1, k, f);
            i += k;
        }
    }
}

static void puts_safe(FILE *f, const char *s)
{
    put_safe(f, s, strlen(s), 0);
}

/* One line: "maas: <class>: <message> (HTTP 429, gRPC 8, request id, 3 attempts)". */
static int report(maas_status st, const maas_error *e)
{
    char extra[256] = "";
    size_t n = 0, cls = strlen(maas_strerror(st));
    const char *msg = e && e->message[0] ? e->message : "";
    /* The server's "permission denied: ..." after our "permission denied: ". */
    if (!strncasecmp(msg, maas_strerror(st), cls) && msg[cls] == ':' && msg[cls + 1] == ' ')
        msg += cls + 2;
    if (e && e->http_status)
        n += (size_t)snprintf(extra + n, sizeof extra - n, "%sHTTP %d", n ? ", " : "",
                              e->http_status);
    if (e && e->grpc_code >= 0 && n < sizeof extra)
        n += (size_t)snprintf(extra + n, sizeof extra - n, "%sgRPC %d", n ? ", " : "",
                              e->grpc_code);
    if (e && e->request_id[0] && n < sizeof extra)
        n += (size_t)snprintf(extra + n, sizeof extra - n, "%srequest %s", n ? ", " : "",
                              e->request_id);
    if (e && e->attempts > 1 && n < sizeof extra)
        n += (size_t)snprintf(extra + n, sizeof extra - n, "%s%u attempts", n ? ", " : "",
                              e->attempts);
    if (n >= sizeof extra)
        n = sizeof extra - 1;
    fprintf(stderr, "maas: %s%s", maas_strerror(st), msg[0] ? ": " : "");
    puts_safe(stderr, msg);
    fputs(n ? " (" : "", stderr);
    put_safe(stderr, extra, n, 0);
    fputs(n ? ")\n" : "\n", stderr);
    return exit_code_for(st);
}

static int fail_last(maas_status st)
{
    return report(st, maas_last_error());
}

static void json_string(FILE *f, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;
    fputc('"', f);
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                fprintf(f, "\\u00%c%c", hex[ch >> 4], hex[ch & 15]);
            } else if (ch == 0xC2 && i + 1 < len && (unsigned char)s[i + 1] >= 0x80 &&
                       (unsigned char)s[i + 1] < 0xA0) {
                /* a C1 control: some terminals act on U+009B as on ESC [ */
                ch = (unsigned char)s[++i];
                fprintf(f, "\\u00%c%c", hex[ch >> 4], hex[ch & 15]);
            } else {
                fputc(ch, f);
            }
        }
    }
    fputc('"', f);
}

static int parse_number(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end;
    double d;
    errno = 0;
    d = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(d) || d < lo || d > hi) {
        fprintf(stderr, "maas: usage: %s needs a number in [%g, %g], got '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = d;
    return 0;
}

/* Seconds to milliseconds, rounding up: 0.0004 s is 1 ms, not "0: the default". */
static long to_ms(double seconds)
{
    return (long)ceil(seconds * 1000.0);
}

static maas_status make_client(maas_client **out, long connect_ms, long idle_ms, long deadline_ms,
                               int retries)
{
    maas_client_options o;
    maas_status st = maas_client_options_from_env(&o, MAAS_CLIENT_OPTIONS_VERSION);
    if (st != MAAS_OK)
        return st;
    o.connect_timeout_ms = connect_ms;
    o.idle_timeout_ms = idle_ms;
    o.deadline_ms = deadline_ms;
    if (deadline_ms > 0)
        o.models_timeout_ms = deadline_ms; /* a longer --timeout lifts the 30 s default too */
    o.max_retries = retries;
    o.user_agent_suffix = "maas-cli";
    return maas_client_new(out, &o);
}

/* ---- models --------------------------------------------------------------- */

static int cmd_models(int argc, char **argv)
{
    int json = 0, i, rc = EXIT_OK;
    double timeout = 0;
    maas_client *c = NULL;
    maas_model_list *list = NULL;
    maas_status st;
    size_t k;

    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            if (parse_number(argv[i], argv[i + 1], 0.001, 86400 * 7, &timeout))
                return EXIT_USAGE;
            i++;
        } else {
            fprintf(stderr, "maas: usage: unknown argument to models: '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    st = make_client(&c, 0, 0, timeout > 0 ? to_ms(timeout) : 0, 0);
    if (st != MAAS_OK)
        return fail_last(st);
    st = maas_models_list(&list, c);
    if (st != MAAS_OK) {
        rc = fail_last(st);
        goto out;
    }
    if (json)
        fputs("{\"models\":[", stdout);
    for (k = 0; k < maas_model_list_count(list); k++) {
        const maas_model *m = maas_model_list_get(list, k);
        if (json) {
            fputs(k ? ",{\"model_name\":" : "{\"model_name\":", stdout);
            json_string(stdout, maas_model_name(m), strlen(maas_model_name(m)));
            fputs(",\"product_id\":", stdout);
            json_string(stdout, maas_model_product_id(m), strlen(maas_model_product_id(m)));
            fputs(",\"product_name\":", stdout);
            json_string(stdout, maas_model_product_name(m), strlen(maas_model_product_name(m)));
            fputc('}', stdout);
        } else {
            puts_safe(stdout, maas_model_name(m));
            fputc('\t', stdout);
            puts_safe(stdout, maas_model_product_name(m));
            fputc('\t', stdout);
            puts_safe(stdout, maas_model_product_id(m));
            fputc('\n', stdout);
        }
    }
    if (json)
        fputs("]}\n", stdout);
out:
    maas_model_list_free(list);
    maas_client_free(c);
    return rc;
}

/* ---- generate ------------------------------------------------------------ */

struct gen_state {
    int json;
    int wrote_text;
    int write_failed;
    int tty; /* stdout is a terminal: escape control characters in the text */
};

static int on_token(const maas_token *t, void *payload)
{
    struct gen_state *g = payload;
    if (g->json) {
        printf("{\"type\":\"token\",\"index\":%zu,\"id\":%u,\"text\":", t->index, (unsigned)t->id);
        json_string(stdout, t->text, t->text_len);
        if (t->has_logprob && isfinite(t->logprob))
            printf(",\"logprob\":%.9g", t->logprob);
        printf(",\"special\":%s}\n", t->special ? "true" : "false");
    } else if (!t->special) {
        /* The text is the user's content, byte for byte, in a pipe or a file;
         * a terminal would obey the escape sequences a prompt can coax out of
         * a model, so there they are shown, not run. */
        if (g->tty)
            put_safe(stdout, t->text, t->text_len, 1);
        else
            fwrite(t->text, 1, t->text_len, stdout);
        g->wrote_text = 1;
    }
    /* Flush once per network read, not per token (stdout is fully buffered:
     * cmd_generate). A closed pipe (maas generate ... | head) cancels the stream. */
    if ((t->last_buffered && fflush(stdout) != 0) || ferror(stdout)) {
        g->write_failed = 1;
        return 1;
    }
    return 0;
}

/* The rate-limit headers of an answer, one "name: value" line each; nothing for those absent. */
static void print_rate(FILE *f, double retry_after, long limit, long remaining, double reset)
{
    if (limit >= 0)
        fprintf(f, "rate_limit_limit: %ld\n", limit);
    if (remaining >= 0)
        fprintf(f, "rate_limit_remaining: %ld\n", remaining);
    if (reset >= 0)
        fprintf(f, "rate_limit_reset: %.3f s\n", reset);
    if (retry_after >= 0)
        fprintf(f, "retry_after: %.3f s\n", retry_after);
}

static void print_details(FILE *f, const maas_details *d, int json)
{
    if (json) {
        fprintf(f, "{\"type\":\"details\",\"finish_reason\":");
        json_string(f, d->finish_reason_name, strlen(d->finish_reason_name));
        fprintf(f, ",\"generated_tokens\":%u", (unsigned)d->generated_tokens);
        if (d->has_seed)
            fprintf(f, ",\"seed\":\"%llu\"", (unsigned long long)d->seed);
        fputs(",\"request_id\":", f);
        json_string(f, d->request_id, strlen(d->request_id));
        fputs(",\"generated_text\":", f);
        json_string(f, d->generated_text, d->generated_text_len);
        if (d->generated_text_truncated)
            fputs(",\"generated_text_truncated\":true", f);
        fprintf(f, ",\"total_time\":%.6f,\"tokens_per_second\":%.3f", d->total_time,
                d->tokens_per_second);
        if (d->time_to_first_token >= 0)
            fprintf(f, ",\"time_to_first_token\":%.6f", d->time_to_first_token);
        if (d->rate_limit_limit >= 0)
            fprintf(f, ",\"rate_limit_limit\":%ld", d->rate_limit_limit);
        if (d->rate_limit_remaining >= 0)
            fprintf(f, ",\"rate_limit_remaining\":%ld", d->rate_limit_remaining);
        if (d->rate_limit_reset >= 0)
            fprintf(f, ",\"rate_limit_reset\":%.3f", d->rate_limit_reset);
        if (d->retry_after >= 0)
            fprintf(f, ",\"retry_after\":%.3f", d->retry_after);
        fputs("}\n", f);
    } else {
        fputs("finish_reason: ", f);
        puts_safe(f, d->finish_reason_name[0] ? d->finish_reason_name : "(none)");
        fprintf(f, "\ngenerated_tokens: %u\n", (unsigned)d->generated_tokens);
        if (d->has_seed)
            fprintf(f, "seed: %llu\n", (unsigned long long)d->seed);
        if (d->request_id[0]) {
            fputs("request_id: ", f);
            puts_safe(f, d->request_id);
            fputc('\n', f);
        }
        if (d->time_to_first_token >= 0)
            fprintf(f, "time_to_first_token: %.3f s\n", d->time_to_first_token);
        fprintf(f, "total_time: %.3f s\ntokens_per_second: %.1f\n", d->total_time,
                d->tokens_per_second);
        print_rate(f, d->retry_after, d->rate_limit_limit, d->rate_limit_remaining,
                   d->rate_limit_reset);
    }
}

/* The service's cap on a request body: a longer prompt cannot be sent. */
#define PROMPT_MAX (16u * 1024u * 1024u)

/* Free a copy of the prompt, wiped first: it may be as private as a secret. */
static void free_prompt(char *p)
{
    if (p) {
        volatile char *v = p;
        while (*v)
            *v++ = 0;
        free(p);
    }
}

/*
 * The prompt from stdin, at most PROMPT_MAX bytes; NULL with a usage message
 * printed for a NUL byte (C strings would cut the prompt there) or a prompt
 * over the cap, and *io_error set for a read error or out of memory.
 */
static char *read_stdin(int *io_error)
{
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap), *b, *nul;
    *io_error = 1;
    if (!buf)
        return NULL;
    while ((n = fread(buf + len, 1, cap - len - 1, stdin)) > 0) {
        len += n;
        if (len > PROMPT_MAX) {
            /* Stop reading: a larger prompt is refused whatever follows. */
            buf[len] = '\0';
            free_prompt(buf);
            *io_error = 0;
            fprintf(stderr, "maas: usage: the prompt on stdin is larger than the service's "
                            "limit of 16 MiB (%u bytes)\n", PROMPT_MAX);
            return NULL;
        }
        if (cap - len - 1 == 0) {
            b = realloc(buf, cap * 2);
            if (!b) {
                buf[len] = '\0';
                free_prompt(buf);
                return NULL;
            }
            buf = b;
            cap *= 2;
        }
    }
    buf[len] = '\0';
    if (ferror(stdin)) {
        free_prompt(buf);
        return NULL;
    }
    if ((nul = memchr(buf, '\0', len)) != NULL) {
        fprintf(stderr, "maas: usage: the prompt on stdin contains a NUL byte (at byte %zu)\n",
                (size_t)(nul - buf));
        memset(buf, 0, len);
        free(buf);
        *io_error = 0;
        return NULL;
    }
    /* "echo prompt | maas generate -" should not send echo's newline. */
    if (len && buf[len - 1] == '\n')
        len--;
    buf[len] = '\0';
    return buf;
}

/* Characters (code points) in a UTF-8 string: what the service's 2-character minimum counts. */
static size_t count_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* SIGINT/SIGTERM cancel the running stream from a thread of their own. */
static maas_stream *volatile running_stream;
static pthread_mutex_t running_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int interrupted;

static void *signal_thread(void *arg)
{
    sigset_t *set = arg;
    int sig;
    for (;;) {
        if (sigwait(set, &sig) != 0)
            continue;
        pthread_mutex_lock(&running_lock);
        interrupted = 1;
        if (!running_stream)
            _exit(EXIT_INTERRUPTED); /* nothing to cancel cleanly: leave now */
        maas_stream_cancel(running_stream);
        pthread_mutex_unlock(&running_lock);
    }
    return NULL;
}

static int cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *prompt_arg = NULL;
    double max_tokens = 0, temperature = 0.7, idle = -1, timeout = -1, connect = -1, retries = -1;
    struct gen_state g = { 0, 0, 0, 0 };
    int details = 0, i, rc = EXIT_OK;
    maas_client *c = NULL;
    maas_model_list *list = NULL;
    maas_stream *s = NULL;
    maas_request req = MAAS_REQUEST_INIT;
    char *prompt = NULL;
    maas_status st;

    /* Tokens are flushed per network read (on_token): one write per read,
     * not per token, on a terminal as on a pipe or a file. */
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);

    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--") && !prompt_arg && i + 2 == argc) {
            prompt_arg = argv[++i];
            continue;
        }
        int takes = !strcmp(a, "--model") || !strcmp(a, "--max-tokens") ||
                    !strcmp(a, "--temperature") || !strcmp(a, "--idle-timeout") ||
                    !strcmp(a, "--timeout") || !strcmp(a, "--connect-timeout") ||
                    !strcmp(a, "--retries");
        if (takes && !v) {
            fprintf(stderr, "maas: usage: %s needs a value\n", a);
            return EXIT_USAGE;
        }
        if (!strcmp(a, "--model")) {
            model = v;
        } else if (!strcmp(a, "--max-tokens")) {
            if (parse_number(a, v, 1, 2047, &max_tokens) || max_tokens != floor(max_tokens))
                return EXIT_USAGE;
        } else if (!strcmp(a, "--temperature")) {
            char *end;
            errno = 0;
            temperature = strtod(v, &end);
            if (errno || end == v || *end || !(temperature >= 0 && temperature < 1)) {
                fprintf(stderr, "maas: usage: --temperature needs a number with 0 <= T < 1, "
                                "got '%s'\n", v);
                return EXIT_USAGE;
            }
        } else if (!strcmp(a, "--idle-timeout")) {
            if (parse_number(a, v, 0, 86400, &idle))
                return EXIT_USAGE;
        } else if (!strcmp(a, "--timeout")) {
            if (parse_number(a, v, 0, 86400 * 7, &timeout))
                return EXIT_USAGE;
        } else if (!strcmp(a, "--connect-timeout")) {
            if (parse_number(a, v, 0.001, 3600, &connect))
                return EXIT_USAGE;
        } else if (!strcmp(a, "--retries")) {
            if (parse_number(a, v, 0, 100, &retries) || retries != floor(retries))
                return EXIT_USAGE;
        } else if (!strcmp(a, "--json")) {
            g.json = 1;
            continue;
        } else if (!strcmp(a, "--details")) {
            details = 1;
            continue;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "maas: usage: unknown option '%s'\n", a);
            return EXIT_USAGE;
        } else if (prompt_arg) {
            fprintf(stderr, "maas: usage: one PROMPT only (quote it)\n");
            return EXIT_USAGE;
        } else {
            prompt_arg = a;
            continue;
        }
        i++;
    }
    if (!prompt_arg) {
        fprintf(stderr, "maas: usage: generate needs a PROMPT (or - for stdin)\n");
        return EXIT_USAGE;
    }
    if (!strcmp(prompt_arg, "-")) {
        int io_error;
        prompt = read_stdin(&io_error);
        if (!prompt && !io_error)
            return EXIT_USAGE;
        if (!prompt) {
            fprintf(stderr, "maas: configuration error: could not read the prompt from stdin\n");
            return EXIT_CONFIG;
        }
    } else if (!(prompt = strdup(prompt_arg))) {
        return report(MAAS_ERR_NO_MEMORY, NULL);
    }
    /* The service's own rule, checked before any token or catalogue request. */
    if (count_chars(prompt) < 2) {
        fprintf(stderr, "maas: usage: the prompt must be at least 2 characters, got %zu\n",
                count_chars(prompt));
        free_prompt(prompt);
        return EXIT_USAGE;
    }
    g.tty = isatty(STDOUT_FILENO);

    st = make_client(&c, connect > 0 ? to_ms(connect) : 0,
                     idle < 0 ? 0 : idle == 0 ? -1 : to_ms(idle),
                     timeout <= 0 ? 0 : to_ms(timeout),
                     retries < 0 ? 0 : retries == 0 ? MAAS_RETRIES_OFF : (int)retries);
    if (st != MAAS_OK) {
        rc = fail_last(st);
        goto out;
    }
    req.prompt = prompt;
    req.max_new_tokens = (int)max_tokens;
    req.temperature = temperature;
    if (model) {
        req.model = model;
    } else {
        /* Without --model: the first model the service lists. */
        st = maas_models_list(&list, c);
        if (st != MAAS_OK) {
            rc = fail_last(st);
            goto out;
        }
        req.model_info = maas_model_list_get(list, 0);
        if (!req.model_info) {
            fprintf(stderr, "maas: unknown model: the service lists no models\n");
            rc = EXIT_REQUEST;
            goto out;
        }
    }
    st = maas_stream_open(&s, c, &req);
    if (st != MAAS_OK) {
        rc = fail_last(st);
        goto out;
    }
    pthread_mutex_lock(&running_lock);
    running_stream = s;
    if (interrupted)
        maas_stream_cancel(s);
    pthread_mutex_unlock(&running_lock);

    st = maas_stream_run(s, on_token, NULL, &g);

    pthread_mutex_lock(&running_lock);
    running_stream = NULL;
    pthread_mutex_unlock(&running_lock);

    if (g.wrote_text && !g.write_failed)
        fputc('\n', stdout);
    fflush(stdout);
    if (st == MAAS_OK) {
        const maas_details *d = maas_stream_details(s);
        if (g.json && d)
            print_details(stdout, d, 1);
        if (details && d)
            print_details(stderr, d, 0);
    } else if (g.write_failed) {
        fprintf(stderr, "maas: output error: %s\n", strerror(errno));
        rc = EXIT_INTERNAL;
    } else {
        const maas_error *e = maas_stream_error(s);
        if (g.json && e) {
            printf("{\"type\":\"error\",\"status\":\"%s\",\"http_status\":%d,\"grpc_code\":%d,"
                   "\"message\":",
                   maas_status_name(st), e->http_status, e->grpc_code);
            json_string(stdout, e->message, strlen(e->message));
            fputs(",\"request_id\":", stdout);
            json_string(stdout, e->request_id, strlen(e->request_id));
            fputs("}\n", stdout);
            fflush(stdout);
        }
        if (st == MAAS_ERR_CANCELLED && interrupted) {
            fputs("maas: cancelled: interrupted\n", stderr);
            rc = EXIT_INTERRUPTED;
        } else {
            rc = report(st, e ? e : maas_last_error());
            if (!e)
                e = maas_last_error();
            if (details && e)
                print_rate(stderr, e->retry_after, e->rate_limit_limit, e->rate_limit_remaining,
                           e->rate_limit_reset);
        }
    }
out:
    maas_stream_free(s);
    maas_model_list_free(list);
    maas_client_free(c);
    free_prompt(prompt);
    return rc;
}

/*
 * No core dump and no ptrace attach by other users: a dump would hold the
 * client secret, the token and the prompt (docs/security.md).
 */
static void no_core_dumps(void)
{
    struct rlimit rl = { 0, 0 };
    setrlimit(RLIMIT_CORE, &rl);
#ifdef __linux__
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#endif
}

/*
 * --http1.1 and --http2, for every command: taken out of argv (before any
 * "--") and handed to the library as MAAS_HTTP_VERSION, which every
 * command's client reads. The new argc.
 */
static int take_http_version(int argc, char **argv)
{
    int i, k = 2;
    for (i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            while (i < argc)
                argv[k++] = argv[i++];
            break;
        }
        if (!strcmp(argv[i], "--http1.1"))
            setenv("MAAS_HTTP_VERSION", "1.1", 1);
        else if (!strcmp(argv[i], "--http2"))
            setenv("MAAS_HTTP_VERSION", "2", 1);
        else
            argv[k++] = argv[i];
    }
    argv[k] = NULL;
    return k;
}

int main(int argc, char **argv)
{
    static sigset_t set;
    pthread_t tid;

    no_core_dumps();
    if (argc < 2) {
        fputs("maas: usage: a command is needed: models or generate (try maas --help)\n", stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("maas %s (libmaas %s)\n", MAAS_VERSION_STRING, maas_version());
        return EXIT_OK;
    }
    argc = take_http_version(argc, argv);
    if (!strcmp(argv[1], "batch")) /* before the signal thread below: it has its own */
        return maas_cli_batch(argc - 2, argv + 2);
    /* Signals are taken by one thread, so a cancel never runs inside a handler. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (pthread_create(&tid, NULL, signal_thread, &set) == 0)
        pthread_detach(tid);

    if (!strcmp(argv[1], "models"))
        return cmd_models(argc - 2, argv + 2);
    if (!strcmp(argv[1], "generate"))
        return cmd_generate(argc - 2, argv + 2);
    fprintf(stderr, "maas: usage: unknown command '%s' (try maas --help)\n", argv[1]);
    return EXIT_USAGE;
}
