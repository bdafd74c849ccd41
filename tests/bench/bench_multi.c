/*
 * bench-multi: N concurrent streams on one thread, in an epoll loop driving
 * a maas_multi through its socket and timer callbacks.
 *
 *   bench-multi N [TOKENS] [DELAY_MS]     defaults: 20 tokens, 50 ms apart
 *
 * Every stream must end with MAAS_OK and deliver exactly the server's
 * generated text. Prints tokens per second, CPU, and peak RSS per stream
 * (peak minus the RSS before the streams, divided by N).
 * Configuration from the environment (MAAS_*), as scripts/bench sets it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <maas/maas.h>

struct loop {
    int ep;
    long timer_ms;
    double timer_set;
};

struct job {
    char text[1024];
    size_t len, tokens;
    int ok;
};

static long done_count, failed;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long rss_kib(void)
{
    /* VmRSS now (ru_maxrss is the peak). */
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kib = atol(line + 6);
    if (f)
        fclose(f);
    return kib;
}

static int on_socket(int fd, int what, void *payload, void *socket_payload)
{
    struct loop *l = payload;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.data.fd = fd;
    if (what == MAAS_POLL_REMOVE) {
        epoll_ctl(l->ep, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    ev.events = ((what & MAAS_POLL_IN) ? EPOLLIN : 0u) | ((what & MAAS_POLL_OUT) ? EPOLLOUT : 0u);
    /* socket_payload marks a socket already known to epoll. */
    if (epoll_ctl(l->ep, socket_payload ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0 &&
        epoll_ctl(l->ep, EPOLL_CTL_MOD, fd, &ev) != 0)
        return -1;
    return 0;
}

static int on_timer(long timeout_ms, void *payload)
{
    struct loop *l = payload;
    l->timer_ms = timeout_ms;
    l->timer_set = now_s();
    return 0;
}

static int on_token(const maas_token *t, void *payload)
{
    struct job *j = payload;
    j->tokens++;
    if (!t->special && j->len + t->text_len < sizeof j->text) {
        memcpy(j->text + j->len, t->text, t->text_len);
        j->len += t->text_len;
    }
    return 0;
}

static int on_details(const maas_details *d, void *payload)
{
    struct job *j = payload;
    j->ok = d->generated_text_len == j->len && !memcmp(d->generated_text, j->text, j->len);
    return 0;
}

static void on_done(maas_stream *s, maas_status st, void *payload)
{
    struct job *j = payload;
    done_count++;
    if (st != MAAS_OK || !j->ok) {
        if (failed++ < 5)
            fprintf(stderr, "bench-multi: a stream ended with %s: %s\n", maas_status_name(st),
                    st == MAAS_OK ? "text differs" : maas_stream_error(s)->message);
    }
    maas_stream_free(s);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000, i;
    int tokens = argc > 2 ? atoi(argv[2]) : 20, delay = argc > 3 ? atoi(argv[3]) : 50;
    struct loop l = { -1, -1, 0 };
    struct job *jobs = calloc((size_t)(n > 0 ? n : 1), sizeof *jobs);
    struct epoll_event evs[1024];
    struct rlimit rl;
    maas_client *c = NULL;
    maas_multi *m = NULL;
    size_t running = 1;
    double w0, c0, wall, cpu;
    long rss0;
    struct rusage ru;
    maas_status st;
    char prompt[128];

    if (n < 1 || !jobs)
        return 2;
    /* One socket per stream (and the emulator's): lift the soft limit. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    l.ep = epoll_create1(EPOLL_CLOEXEC);
    st = maas_client_new(&c, NULL);
    if (st == MAAS_OK)
        st = maas_client_authenticate(c);
    if (st == MAAS_OK)
        st = maas_multi_new(&m, c);
    if (st == MAAS_OK)
        st = maas_multi_set_callbacks(m, on_socket, on_timer, &l);
    rss0 = rss_kib();
    w0 = now_s();
    {
        struct rusage r0;
        getrusage(RUSAGE_SELF, &r0);
        c0 = (double)r0.ru_utime.tv_sec + r0.ru_utime.tv_usec / 1e6 + (double)r0.ru_stime.tv_sec +
             r0.ru_stime.tv_usec / 1e6;
    }
    for (i = 0; st == MAAS_OK && i < n; i++) {
        maas_request r = MAAS_REQUEST_INIT;
        maas_stream *s;
        snprintf(prompt, sizeof prompt, "bench %ld [[fault:delay=%d]]", i, delay);
        r.model = "mistralai/Mistral-7B-Instruct-v0.1";
        r.prompt = prompt;
        r.max_new_tokens = tokens;
        st = maas_multi_add(&s, m, &r, on_token, on_details, on_done, &jobs[i]);
    }
    if (st != MAAS_OK) {
        fprintf(stderr, "bench-multi: %s: %s\n", maas_strerror(st), maas_last_error()->message);
        return 1;
    }
    while (running > 0 && st == MAAS_OK) {
        long wait = l.timer_ms;
        int k, got;
        if (wait >= 0) {
            long elapsed = (long)((now_s() - l.timer_set) * 1000);
            wait = wait > elapsed ? wait - elapsed : 0;
        }
        got = epoll_wait(l.ep, evs, 1024, wait < 0 ? 1000 : (int)wait);
        if (got < 0 && errno != EINTR)
            break;
        for (k = 0; k < got && st == MAAS_OK; k++) {
            int ev = 0;
            if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                ev |= MAAS_POLL_IN;
            if (evs[k].events & EPOLLOUT)
                ev |= MAAS_POLL_OUT;
            st = maas_multi_socket_action(m, evs[k].data.fd, ev, &running);
        }
        if (st == MAAS_OK && l.timer_ms >= 0 &&
            (now_s() - l.timer_set) * 1000 >= (double)l.timer_ms) {
            l.timer_ms = -1;
            st = maas_multi_socket_action(m, MAAS_SOCKET_TIMEOUT, 0, &running);
        }
    }
    wall = now_s() - w0;
    getrusage(RUSAGE_SELF, &ru);
    cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
          ru.ru_stime.tv_usec / 1e6 - c0;
    printf("streams=%ld ok=%ld failed=%ld tokens=%ld wall=%.2f cpu=%.2f tokens_per_s=%.0f "
           "peak_rss_kib=%ld rss_per_stream_kib=%.1f\n",
           n, done_count - failed, failed, n * (long)tokens, wall, cpu,
           (double)(n * tokens) / wall, ru.ru_maxrss, (double)(ru.ru_maxrss - rss0) / (double)n);
    maas_multi_free(m);
    maas_client_free(c);
    close(l.ep);
    free(jobs);
    return failed || done_count != n ? 1 : 0;
}
