/*
 * bench-latency: time to first token through libmaas, minus the same
 * through libcurl alone, with a warm connection and (for libmaas) a cached
 * token. The two are measured alternately, and the medians compared.
 *
 *   bench-latency [ROUNDS]     (default 500)
 *
 * Configuration from the environment (MAAS_*), as scripts/bench sets it.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <maas/maas.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- libcurl alone: POST, note when the first complete line is in ---- */

struct first {
    double at; /* 0 until the first line */
};

static size_t first_line(char *d, size_t s, size_t n, void *p)
{
    struct first *f = p;
    /* The rest is read too, so that the connection stays warm for the next round. */
    if (!f->at && memchr(d, '\n', s * n))
        f->at = now_us();
    return s * n;
}

/* ---- cancellation from another thread: from maas_stream_cancel() to the blocked call's return ---- */

struct canceller {
    maas_stream *s;
    double at;
    long delay_ms;
};

static size_t first_line_sink(char *d, size_t s, size_t n, void *p)
{
    (void)d;
    (void)p;
    return s * n;
}

static void *cancel_after_a_while(void *p)
{
    struct canceller *k = p;
    /* let the other thread block in its wait */
    struct timespec ts = { 0, (k->delay_ms ? k->delay_ms : 20) * 1000000L };
    nanosleep(&ts, NULL);
    k->at = now_us();
    maas_stream_cancel(k->s);
    return NULL;
}

static double cancel_latency_us(maas_client *c)
{
    maas_request r = MAAS_REQUEST_INIT;
    const maas_token *t;
    maas_stream *s;
    struct canceller k;
    pthread_t th;
    double back;
    r.model = "mistralai/Mistral-7B-Instruct-v0.1";
    r.prompt = "cancel [[fault:stall-after=1]]";
    r.max_new_tokens = 10;
    if (maas_stream_open(&s, c, &r) != MAAS_OK || maas_stream_next(s, &t) != MAAS_OK)
        return -1;
    k.s = s;
    k.delay_ms = 0;
    pthread_create(&th, NULL, cancel_after_a_while, &k);
    if (maas_stream_next(s, &t) != MAAS_ERR_CANCELLED)
        back = -1;
    else
        back = now_us() - k.at;
    pthread_join(th, NULL);
    maas_stream_free(s);
    return back;
}

/* Queue an emulator fault (POST /emulator/faults); 0 on success. */
static int queue_fault(const char *path, const char *fault)
{
    const char *root = getenv("MAAS_EMULATOR_URL");
    char url[512], body[256];
    CURL *h;
    long code = 0;
    if (!root)
        return -1;
    snprintf(url, sizeof url, "%s/emulator/faults", root);
    snprintf(body, sizeof body, "{\"path\":\"%s\",\"fault\":\"%s\",\"count\":1}", path, fault);
    h = curl_easy_init();
    if (!h)
        return -1;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, first_line_sink);
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(h);
    return code == 200 ? 0 : -1;
}

/* The same cancel while the stream waits in a token fetch: a 401 makes it
 * replay, and the token endpoint holds the new token back for 5 s (the
 * cancel comes 300 ms in, in the rate limit's wait or the fetch). */
static double cancel_in_token_fetch_us(maas_client *c)
{
    maas_request r = MAAS_REQUEST_INIT;
    const maas_token *t;
    maas_stream *s;
    struct canceller k;
    pthread_t th;
    double back;
    r.model = "mistralai/Mistral-7B-Instruct-v0.1";
    r.prompt = "cancel in a token fetch";
    r.max_new_tokens = 10;
    if (maas_stream_open(&s, c, &r) != MAAS_OK)
        return -1;
    if (queue_fault("/v1/maas/generatestream", "status=401") ||
        queue_fault("/oauth2/token", "first-byte-delay=5000")) {
        maas_stream_free(s);
        return -1;
    }
    k.s = s;
    k.delay_ms = 300;
    pthread_create(&th, NULL, cancel_after_a_while, &k);
    if (maas_stream_next(s, &t) != MAAS_ERR_CANCELLED)
        back = -1;
    else
        back = now_us() - k.at;
    pthread_join(th, NULL);
    maas_stream_free(s);
    return back;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 500, i;
    double *lib = calloc((size_t)rounds, sizeof *lib), *raw = calloc((size_t)rounds, sizeof *raw);
    maas_client *c = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    const maas_token *t;
    maas_stream *s;
    CURL *h;
    struct curl_slist *hdr = NULL;
    char url[512], auth[4096], body[1024];
    const char *base = getenv("MAAS_API_BASE_URL"), *token = getenv("MAAS_BENCH_TOKEN");

    if (!lib || !raw || rounds < 1 || !base || !token) {
        fprintf(stderr, "bench-latency: needs MAAS_API_BASE_URL and MAAS_BENCH_TOKEN\n");
        return 2;
    }
    snprintf(url, sizeof url, "%s/generatestream", base);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    snprintf(body, sizeof body,
             "{\"model\":\"mistralai/Mistral-7B-Instruct-v0.1\",\"request\":{\"prompt\":\"latency\","
             "\"params\":{\"max_new_tokens\":2,\"temperature\":0.0}},\"cloudAccountId\":\"%s\","
             "\"productName\":\"maas-model-mistral-7b-v0.1\","
             "\"productId\":\"269c3034-e6c7-4359-9e77-c3efedfaa778\"}",
             getenv("MAAS_CLOUD_ACCOUNT") ? getenv("MAAS_CLOUD_ACCOUNT") : "");
    hdr = curl_slist_append(hdr, auth);
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, first_line);

    if (maas_client_new(&c, NULL) != MAAS_OK)
        return 1;
    r.model = "mistralai/Mistral-7B-Instruct-v0.1";
    r.prompt = "latency";
    r.max_new_tokens = 2;

    for (i = -20; i < rounds; i++) { /* 20 rounds of warm-up */
        struct first f = { 0 };
        double t0;
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &f);
        t0 = now_us();
        if (curl_easy_perform(h) != CURLE_OK || !f.at) {
            fprintf(stderr, "bench-latency: the libcurl request failed\n");
            return 1;
        }
        if (i >= 0)
            raw[i] = f.at - t0;

        t0 = now_us();
        if (maas_stream_open(&s, c, &r) != MAAS_OK || maas_stream_next(s, &t) != MAAS_OK) {
            fprintf(stderr, "bench-latency: %s\n", maas_last_error()->message);
            return 1;
        }
        if (i >= 0)
            lib[i] = now_us() - t0;
        while (maas_stream_next(s, &t) == MAAS_OK) /* finish it: the connection stays warm */
            ;
        maas_stream_free(s);
    }
    qsort(lib, (size_t)rounds, sizeof *lib, cmp);
    qsort(raw, (size_t)rounds, sizeof *raw, cmp);
    printf("first_token_us libmaas_median=%.1f curl_median=%.1f added_median=%.1f "
           "libmaas_p90=%.1f curl_p90=%.1f rounds=%d\n",
           lib[rounds / 2], raw[rounds / 2], lib[rounds / 2] - raw[rounds / 2],
           lib[rounds * 9 / 10], raw[rounds * 9 / 10], rounds);
    {
        /* A measurement, not a synchronisation: the sleep only makes it likely
         * that the stream is blocked when the cancel comes. */
        double cancel[21];
        int k;
        for (k = 0; k < 21; k++)
            if ((cancel[k] = cancel_latency_us(c)) < 0) {
                fprintf(stderr, "bench-latency: the cancel did not end the stream\n");
                return 1;
            }
        qsort(cancel, 21, sizeof *cancel, cmp);
        printf("cancel_from_another_thread_us median=%.1f max=%.1f rounds=21\n", cancel[10],
               cancel[20]);
        if (getenv("MAAS_EMULATOR_URL")) {
            for (k = 0; k < 7; k++)
                if ((cancel[k] = cancel_in_token_fetch_us(c)) < 0) {
                    fprintf(stderr, "bench-latency: the cancel did not end the token fetch\n");
                    return 1;
                }
            qsort(cancel, 7, sizeof *cancel, cmp);
            printf("cancel_in_token_fetch_us median=%.1f max=%.1f rounds=7\n", cancel[3],
                   cancel[6]);
        }
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    maas_client_free(c);
    free(lib);
    free(raw);
    return 0;
}
