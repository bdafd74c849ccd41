/*
 * bench-stream: one generation end to end through the callback API.
 *
 *   bench-stream N      stream N tokens (the emulator's tokens=N fault, sent
 *                       coalesced so that the server is not the bottleneck)
 *
 * Configuration from the environment (MAAS_*), as scripts/bench sets it.
 * Prints one line: tokens, bytes, wall seconds, CPU seconds, ns of CPU per
 * token, peak RSS. The token is fetched and the connection warmed before
 * the clock starts, so the figures are the stream's own.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include <maas/maas.h>

struct count {
    size_t tokens, bytes;
};

static int on_token(const maas_token *t, void *payload)
{
    struct count *c = payload;
    c->tokens++;
    c->bytes += t->text_len;
    return 0;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static double wall_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    maas_client *c = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    struct count warm = { 0, 0 }, count = { 0, 0 };
    char prompt[128];
    double w0, c0, wall, cpu;
    struct rusage ru;
    maas_status st;

    if (n < 1)
        return 2;
    st = maas_client_new(&c, NULL);
    r.model = "mistralai/Mistral-7B-Instruct-v0.1";
    r.prompt = "warm up";
    r.max_new_tokens = 1;
    if (st == MAAS_OK)
        st = maas_generate(c, &r, on_token, NULL, &warm); /* token, catalogue, connection */
    snprintf(prompt, sizeof prompt, "bench [[fault:tokens=%ld]] [[fault:coalesce]]", n);
    r.prompt = prompt;
    w0 = wall_seconds();
    c0 = cpu_seconds();
    if (st == MAAS_OK)
        st = maas_generate(c, &r, on_token, NULL, &count);
    wall = wall_seconds() - w0;
    cpu = cpu_seconds() - c0;
    if (st != MAAS_OK) {
        fprintf(stderr, "bench-stream: %s: %s\n", maas_strerror(st), maas_last_error()->message);
        maas_client_free(c);
        return 1;
    }
    getrusage(RUSAGE_SELF, &ru);
    printf("libmaas tokens=%zu bytes=%zu wall=%.3f cpu=%.3f ns_per_token=%.0f peak_rss_kib=%ld\n",
           count.tokens, count.bytes, wall, cpu, cpu * 1e9 / (double)count.tokens, ru.ru_maxrss);
    maas_client_free(c);
    return count.tokens == (size_t)n ? 0 : 1;
}
