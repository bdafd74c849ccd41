/*
 * rawserver: see rawserver.h. One thread, one poll() loop over the listening
 * socket, a stop pipe and the accepted connections; nonblocking sockets, no
 * busy loop (a connection asks for POLLOUT only while it has bytes to write
 * now, and slow-header sleeps in poll until its next byte is due).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* accept4, pipe2 */
#endif
#include "rawserver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RAW_MAX_CONNS 64
#define RAW_DRIP_MS 50
#define RAW_GARBAGE_BYTES (8 * 1024)

struct conn {
    int fd;
    int head_seen;          /* the request's blank line arrived: time to answer */
    char tail[4];           /* last bytes read, to find "\r\n\r\n" across reads */
    size_t tail_len;
    char out[8192];         /* bytes ready to send: [out_off, out_len) */
    size_t out_len, out_off;
    int finished;           /* the whole answer is out (garbage, http09): FIN sent */
    unsigned long lines;    /* endless-header: header lines produced */
    unsigned long dripped;  /* slow-header: bytes sent after the status line */
    int64_t next_drip;      /* slow-header: when the next byte is due (keep-alive modes:
                               the next keep-alive; slow-read: the next read) */
    char head[8192];        /* slow-read: the request head, to find its Content-Length */
    size_t head_len;
    long long body_left;    /* slow-read: request body bytes not read yet */
};

struct rawserver {
    raw_mode mode;
    int lfd;
    int stop_pipe[2];
    pthread_t thread;
    int started;
    char url[64];
    atomic_long accepted, open, requests;
    struct conn conns[RAW_MAX_CONNS];
    size_t nconns;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *rawserver_mode_name(raw_mode mode)
{
    switch (mode) {
    case RAW_ENDLESS_HEADER: return "endless-header";
    case RAW_SLOW_HEADER: return "slow-header";
    case RAW_ACCEPT_SILENT: return "accept-silent";
    case RAW_GARBAGE: return "garbage";
    case RAW_HTTP09: return "http09";
    case RAW_INTERIM_1XX: return "interim-1xx";
    case RAW_SLOW_READ: return "slow-read";
    case RAW_NO_READ: return "no-read";
    case RAW_REDIRECT: return "redirect";
    }
    return "?";
}

static void conn_close(rawserver *s, size_t i)
{
    close(s->conns[i].fd);
    s->conns[i] = s->conns[--s->nconns];
    atomic_fetch_sub(&s->open, 1);
}

static void add(struct conn *c, const void *p, size_t n)
{
    if (n > sizeof c->out - c->out_len)
        n = sizeof c->out - c->out_len;
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

/* The request's head is complete: prepare the answer of the mode. */
static void answer_begins(rawserver *s, struct conn *c)
{
    static const char status[] = "HTTP/1.1 200 OK\r\n";
    static const char body09[] =
        "{\"models\": [], \"note\": \"an HTTP/0.9 answer: no status line, no headers\"}\n";
    static const char redirect[] = "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n"
                                   "Content-Length: 0\r\nConnection: close\r\n\r\n";
    uint32_t x = 0x9e3779b9u;
    size_t i;

    switch (s->mode) {
    case RAW_ENDLESS_HEADER:
    case RAW_SLOW_HEADER:
        add(c, status, sizeof status - 1);
        c->next_drip = mono_ms() + RAW_DRIP_MS;
        break;
    case RAW_ACCEPT_SILENT:
        break;
    case RAW_GARBAGE:
        /* xorshift32: the same bytes every run; never starts like "HTTP/". */
        for (i = 0; i < RAW_GARBAGE_BYTES && i < sizeof c->out; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            c->out[i] = (char)(x >> 24);
        }
        c->out[0] = (char)0x89;
        c->out_len = i;
        break;
    case RAW_HTTP09:
        add(c, body09, sizeof body09 - 1);
        break;
    case RAW_INTERIM_1XX:
        c->next_drip = mono_ms(); /* the first keep-alive at once */
        break;
    case RAW_SLOW_READ:
        c->next_drip = mono_ms() + RAW_DRIP_MS;
        break;
    case RAW_NO_READ:
        break;
    case RAW_REDIRECT:
        add(c, redirect, sizeof redirect - 1);
        break;
    }
}

/* slow-read: the whole request is in; a stream of one final message, on a connection
 * that is not reused (one request per connection is all this mode reads). */
static void answer_slow_read(struct conn *c)
{
    static const char msg[] =
        "{\"result\":{\"response\":{\"token\":{\"id\":2,\"text\":\"</s>\",\"logprob\":-0.5,"
        "\"special\":true},\"top_tokens\":[],\"generated_text\":\"read\",\"details\":{"
        "\"finish_reason\":\"FINISH_REASON_EOS_TOKEN\",\"generated_tokens\":1},"
        "\"requestID\":\"0b8f1c1e-5d6a-4f0e-9a43-6c1f3e9b2a77\"}}}\n";
    char head[160];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n", sizeof msg - 1);
    add(c, head, (size_t)n);
    add(c, msg, sizeof msg - 1);
}

/* slow-read: the head is complete at c->head[0, end): how much body follows. */
static long long content_length(const struct conn *c, size_t end)
{
    size_t i;
    for (i = 0; i + 15 < end; i++)
        if (!strncasecmp(c->head + i, "\r\nContent-Length:", 17))
            return strtoll(c->head + i + 17, NULL, 10);
    return 0;
}

/* Top up the output of the endless modes. */
static void refill(rawserver *s, struct conn *c, int64_t now)
{
    static const char drip[] = "A: b\r\n";
    char line[128];
    if (!c->head_seen || c->out_off < c->out_len)
        return;
    c->out_len = c->out_off = 0;
    if (s->mode == RAW_ENDLESS_HEADER) {
        while (sizeof c->out - c->out_len >= sizeof line) {
            int n = snprintf(line, sizeof line,
                             "X-Endless-%08lu: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
                             c->lines++);
            add(c, line, (size_t)n);
        }
    } else if (s->mode == RAW_SLOW_HEADER && now >= c->next_drip) {
        add(c, &drip[c->dripped++ % (sizeof drip - 1)], 1);
        c->next_drip = now + RAW_DRIP_MS;
    } else if (s->mode == RAW_INTERIM_1XX && now >= c->next_drip) {
        static const char interim[] = "HTTP/1.1 102 Processing\r\n\r\n";
        add(c, interim, sizeof interim - 1);
        c->next_drip = now + RAW_KEEPALIVE_MS;
    }
}

/* slow-read: the head at once, then the body a chunk per RAW_DRIP_MS. 0: the client left. */
static int conn_read_slow(struct conn *c, rawserver *s)
{
    static char sink[RAW_SLOW_READ_CHUNK];
    ssize_t r;
    if (!c->head_seen) {
        char *end;
        r = recv(c->fd, c->head + c->head_len, sizeof c->head - c->head_len - 1, MSG_DONTWAIT);
        if (r == 0)
            return 0;
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 1 : 0;
        c->head_len += (size_t)r;
        c->head[c->head_len] = '\0';
        end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
        if (!end)
            return c->head_len < sizeof c->head - 1;
        c->head_seen = 1;
        atomic_fetch_add(&s->requests, 1);
        c->body_left = content_length(c, (size_t)(end - c->head)) -
                       (long long)(c->head_len - (size_t)(end + 4 - c->head));
        answer_begins(s, c);
    } else if (c->body_left > 0) {
        int64_t now = mono_ms();
        if (now < c->next_drip)
            return 1;
        c->next_drip = now + RAW_DRIP_MS;
        r = recv(c->fd, sink, (size_t)(c->body_left < RAW_SLOW_READ_CHUNK ? c->body_left
                                                                         : RAW_SLOW_READ_CHUNK),
                 MSG_DONTWAIT);
        if (r == 0)
            return 0;
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 1 : 0;
        c->body_left -= r;
    } else {
        r = recv(c->fd, sink, sizeof sink, MSG_DONTWAIT);
        if (r == 0)
            return 0;
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 1 : 0;
        return 1;
    }
    if (c->head_seen && c->body_left <= 0 && !c->finished) {
        c->finished = 1; /* answered once; the connection stays for the client to close */
        answer_slow_read(c);
    }
    return 1;
}

/* Read and discard; notice the end of the request head. 0: the client left. */
static int conn_read(rawserver *s, struct conn *c)
{
    char buf[4096];
    if (s->mode == RAW_SLOW_READ)
        return conn_read_slow(c, s);
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r == 0)
            return 0;
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 1 : 0;
        if (!c->head_seen) {
            /* Look for "\r\n\r\n" in what was kept of the last read plus this one. */
            char scan[sizeof c->tail + sizeof buf];
            size_t n = c->tail_len, k;
            memcpy(scan, c->tail, c->tail_len);
            memcpy(scan + n, buf, (size_t)r);
            n += (size_t)r;
            for (k = 0; k + 4 <= n; k++)
                if (!memcmp(scan + k, "\r\n\r\n", 4))
                    break;
            if (k + 4 <= n) {
                c->head_seen = 1;
                atomic_fetch_add(&s->requests, 1);
                answer_begins(s, c);
            } else {
                c->tail_len = n < 3 ? n : 3;
                memcpy(c->tail, scan + n - c->tail_len, c->tail_len);
            }
        }
    }
}

/* Send what is ready. 0: the client is gone. */
static int conn_write(rawserver *s, struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 1 : 0;
        c->out_off += (size_t)w;
    }
    if ((s->mode == RAW_GARBAGE || s->mode == RAW_HTTP09 || s->mode == RAW_REDIRECT) &&
        c->head_seen && !c->finished) {
        /* End of the answer: FIN, then keep reading until the client closes
         * (closing now, with unread request bytes, would send a reset). */
        shutdown(c->fd, SHUT_WR);
        c->finished = 1;
    }
    return 1;
}

static void accept_all(rawserver *s)
{
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        if (s->nconns == RAW_MAX_CONNS) {
            close(fd);
            continue;
        }
        memset(&s->conns[s->nconns], 0, sizeof s->conns[0]);
        s->conns[s->nconns++].fd = fd;
        atomic_fetch_add(&s->accepted, 1);
        atomic_fetch_add(&s->open, 1);
    }
}

static void *serve(void *arg)
{
    rawserver *s = arg;
    struct pollfd pfd[RAW_MAX_CONNS + 2];
    for (;;) {
        int64_t now = mono_ms(), wake = -1;
        size_t i, n = 0;
        int timeout;

        for (i = 0; i < s->nconns; i++) {
            struct conn *c = &s->conns[i];
            refill(s, c, now);
            if ((s->mode == RAW_SLOW_HEADER || s->mode == RAW_INTERIM_1XX) && c->head_seen && c->out_off >= c->out_len &&
                (wake < 0 || c->next_drip < wake))
                wake = c->next_drip;
            if (s->mode == RAW_SLOW_READ && c->head_seen && c->body_left > 0 &&
                (wake < 0 || c->next_drip < wake))
                wake = c->next_drip;
        }
        pfd[n++] = (struct pollfd){ s->stop_pipe[0], POLLIN, 0 };
        pfd[n++] = (struct pollfd){ s->lfd, POLLIN, 0 };
        for (i = 0; i < s->nconns; i++) {
            struct conn *c = &s->conns[i];
            short ev = POLLIN;
            /* slow-read: the body waits in the socket until its next read is due. */
            if (s->mode == RAW_SLOW_READ && c->head_seen && c->body_left > 0 && now < c->next_drip)
                ev = 0;
            if (s->mode == RAW_NO_READ)
                ev = 0;
            if (c->out_off < c->out_len ||
                ((s->mode == RAW_GARBAGE || s->mode == RAW_HTTP09) && c->head_seen && !c->finished))
                ev |= POLLOUT;
            pfd[n++] = (struct pollfd){ c->fd, ev, 0 };
        }
        timeout = wake < 0 ? -1 : (wake > now ? (int)(wake - now) : 0);
        if (poll(pfd, n, timeout) < 0 && errno != EINTR)
            break;
        if (pfd[0].revents)
            break;
        /* Connections first (their indices match pfd), in reverse: closing moves the last one. */
        for (i = s->nconns; i-- > 0;) {
            struct conn *c = &s->conns[i];
            short re = pfd[2 + i].revents;
            int alive = 1;
            if (re & (POLLIN | POLLHUP | POLLERR))
                alive = conn_read(s, c);
            if (alive && (re & POLLERR))
                alive = 0;
            if (alive && (re & POLLOUT || c->out_off < c->out_len))
                alive = conn_write(s, c);
            if (!alive)
                conn_close(s, i);
        }
        if (pfd[1].revents & POLLIN)
            accept_all(s);
    }
    while (s->nconns > 0) {
        shutdown(s->conns[s->nconns - 1].fd, SHUT_RDWR);
        conn_close(s, s->nconns - 1);
    }
    return NULL;
}

rawserver *rawserver_start(raw_mode mode)
{
    rawserver *s = calloc(1, sizeof *s);
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    int one = 1;

    if (!s)
        return NULL;
    s->mode = mode;
    s->stop_pipe[0] = s->stop_pipe[1] = -1;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s->lfd < 0)
        goto fail;
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (mode == RAW_SLOW_READ || mode == RAW_NO_READ) {
        /* A small window: the request waits in the client's socket, as on a slow uplink. */
        int small = 16384;
        setsockopt(s->lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    }
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (bind(s->lfd, (struct sockaddr *)&a, sizeof a) || listen(s->lfd, 16) ||
        getsockname(s->lfd, (struct sockaddr *)&a, &alen))
        goto fail;
    snprintf(s->url, sizeof s->url, "http://127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
    if (pipe2(s->stop_pipe, O_CLOEXEC | O_NONBLOCK))
        goto fail;
    if (pthread_create(&s->thread, NULL, serve, s))
        goto fail;
    s->started = 1;
    return s;
fail:
    rawserver_stop(s);
    return NULL;
}

const char *rawserver_url(const rawserver *s)
{
    return s->url;
}

long rawserver_accepted(const rawserver *s)
{
    return atomic_load(&((rawserver *)s)->accepted);
}

long rawserver_open(const rawserver *s)
{
    return atomic_load(&((rawserver *)s)->open);
}

long rawserver_requests(const rawserver *s)
{
    return atomic_load(&((rawserver *)s)->requests);
}

long rawserver_wait_open(const rawserver *s, long want, long timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    struct timespec ts = { 0, 5 * 1000000L };
    long v;
    while ((v = rawserver_open(s)) != want && mono_ms() < end)
        nanosleep(&ts, NULL);
    return v;
}

void rawserver_stop(rawserver *s)
{
    if (!s)
        return;
    if (s->started) {
        ssize_t w = write(s->stop_pipe[1], "x", 1);
        (void)w;
        pthread_join(s->thread, NULL);
    }
    if (s->lfd >= 0)
        close(s->lfd);
    if (s->stop_pipe[0] >= 0)
        close(s->stop_pipe[0]);
    if (s->stop_pipe[1] >= 0)
        close(s->stop_pipe[1]);
    free(s);
}
