/*
 * maas-emulator: the one helper thread that wakes parked connections.
 *
 * A callback that must wait (a pause between tokens, a drip, a stall, a
 * delayed first byte) suspends its connection with MHD_suspend_connection
 * and registers here: a due time in a binary min-heap and, for long waits,
 * the socket in an epoll set watching for the client hanging up (MHD does
 * not watch suspended sockets).  The thread sleeps in epoll_wait until the
 * earliest due time, a hang-up or a wake-up (eventfd), then calls
 * MHD_resume_connection outside its lock.  No thread per connection, no
 * polling.
 *
 * A parked connection cannot be closed by MHD, so a waiter stays valid
 * until it is resumed; at shutdown every waiter is resumed with `aborted`.
 *
 * SPDX-License-Identifier: MIT
 */
#include "emulator.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

static pthread_mutex_t smu = PTHREAD_MUTEX_INITIALIZER;
static struct waiter **heap;
static size_t heap_len, heap_cap;
static struct waiter *list; /* every parked waiter */
static int epfd = -1, evfd = -1;
static pthread_t thread;
static bool running;
static atomic_bool stopping;
static atomic_long suspended;

static void heap_swap(size_t a, size_t b)
{
    struct waiter *t = heap[a];
    heap[a] = heap[b];
    heap[b] = t;
    heap[a]->heap_idx = a;
    heap[b]->heap_idx = b;
}

static void heap_up(size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (heap[parent]->due <= heap[i]->due)
            break;
        heap_swap(i, parent);
        i = parent;
    }
}

static void heap_down(size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_len && heap[l]->due < heap[m]->due)
            m = l;
        if (r < heap_len && heap[r]->due < heap[m]->due)
            m = r;
        if (m == i)
            break;
        heap_swap(i, m);
        i = m;
    }
}

static bool heap_push(struct waiter *w)
{
    if (heap_len == heap_cap) {
        size_t cap = heap_cap ? heap_cap * 2 : 256;
        struct waiter **h = realloc(heap, cap * sizeof *h);
        if (!h)
            return false;
        heap = h;
        heap_cap = cap;
    }
    heap[heap_len] = w;
    w->heap_idx = heap_len++;
    heap_up(w->heap_idx);
    return true;
}

static void heap_remove(struct waiter *w)
{
    size_t i = w->heap_idx;
    if (i == SIZE_MAX)
        return;
    w->heap_idx = SIZE_MAX;
    heap_len--;
    if (i != heap_len) {
        heap[i] = heap[heap_len];
        heap[i]->heap_idx = i;
        heap_down(i);
        heap_up(heap[i]->heap_idx);
    }
}

/* Caller holds smu: take w out of every structure. */
static void detach(struct waiter *w)
{
    heap_remove(w);
    if (w->watching) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, w->fd, NULL);
        w->watching = false;
    }
    if (w->listed) {
        if (w->prev)
            w->prev->next = w->next;
        else
            list = w->next;
        if (w->next)
            w->next->prev = w->prev;
        w->prev = w->next = NULL;
        w->listed = false;
    }
}

static void wake(void)
{
    uint64_t one = 1;
    ssize_t r = write(evfd, &one, sizeof one);
    (void)r;
}

static void resume_all(struct MHD_Connection **conns, size_t n)
{
    for (size_t i = 0; i < n; i++)
        MHD_resume_connection(conns[i]);
}

static void *sched_main(void *arg)
{
    (void)arg;
    struct MHD_Connection **due = NULL;
    size_t due_cap = 0;
    struct epoll_event evs[256];
    for (;;) {
        pthread_mutex_lock(&smu);
        if (atomic_load(&stopping)) {
            size_t n = 0;
            for (struct waiter *w = list; w; w = w->next)
                n++;
            struct MHD_Connection **all = n ? calloc(n, sizeof *all) : NULL;
            size_t k = 0;
            while (list) {
                struct waiter *w = list;
                w->aborted = true;
                detach(w);
                if (all)
                    all[k++] = w->conn;
                else
                    MHD_resume_connection(w->conn); /* no memory: resume under the lock */
            }
            pthread_mutex_unlock(&smu);
            resume_all(all, k);
            free(all);
            break;
        }
        int timeout = -1;
        if (heap_len > 0) {
            uint64_t now = now_ms();
            uint64_t d = heap[0]->due;
            timeout = d <= now ? 0 : (d - now > 60000 ? 60000 : (int)(d - now));
        }
        pthread_mutex_unlock(&smu);

        int n = epoll_wait(epfd, evs, (int)(sizeof evs / sizeof evs[0]), timeout);
        if (n < 0 && errno != EINTR) {
            emu_log("epoll_wait: %s", strerror(errno));
            n = 0;
        }
        size_t nd = 0;
        pthread_mutex_lock(&smu);
        for (int i = 0; i < n; i++) {
            struct waiter *w = evs[i].data.ptr;
            if (!w) {
                uint64_t v;
                ssize_t r = read(evfd, &v, sizeof v);
                (void)r;
                continue;
            }
            if (!w->listed)
                continue;
            w->hangup = true;
            detach(w);
            if (nd == due_cap) {
                size_t cap = due_cap ? due_cap * 2 : 256;
                struct MHD_Connection **d = realloc(due, cap * sizeof *d);
                if (!d) {
                    MHD_resume_connection(w->conn);
                    continue;
                }
                due = d;
                due_cap = cap;
            }
            due[nd++] = w->conn;
        }
        uint64_t now = now_ms();
        while (heap_len > 0 && heap[0]->due <= now) {
            struct waiter *w = heap[0];
            detach(w);
            if (nd == due_cap) {
                size_t cap = due_cap ? due_cap * 2 : 256;
                struct MHD_Connection **d = realloc(due, cap * sizeof *d);
                if (!d) {
                    MHD_resume_connection(w->conn);
                    continue;
                }
                due = d;
                due_cap = cap;
            }
            due[nd++] = w->conn;
        }
        pthread_mutex_unlock(&smu);
        resume_all(due, nd);
    }
    free(due);
    return NULL;
}

bool sched_start(void)
{
    epfd = epoll_create1(EPOLL_CLOEXEC);
    evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epfd < 0 || evfd < 0)
        return false;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, evfd, &ev) != 0)
        return false;
    if (pthread_create(&thread, NULL, sched_main, NULL) != 0)
        return false;
    running = true;
    return true;
}

void sched_stop(void)
{
    atomic_store(&stopping, true);
    if (running) {
        wake();
        pthread_join(thread, NULL);
        running = false;
    }
    free(heap);
    heap = NULL;
    heap_len = heap_cap = 0;
    if (epfd >= 0)
        close(epfd);
    if (evfd >= 0)
        close(evfd);
    epfd = evfd = -1;
}

bool sched_wait(struct waiter *w, long ms, bool watch)
{
    if (atomic_load(&stopping))
        return false;
    w->hangup = false;
    w->heap_idx = SIZE_MAX;
    w->watching = false;
    MHD_suspend_connection(w->conn);
    w->suspended = true;
    atomic_fetch_add(&suspended, 1);

    pthread_mutex_lock(&smu);
    if (atomic_load(&stopping)) {
        /* The helper has finished its last sweep: resume it ourselves. */
        pthread_mutex_unlock(&smu);
        w->aborted = true;
        MHD_resume_connection(w->conn);
        return true;
    }
    w->listed = true;
    w->prev = NULL;
    w->next = list;
    if (list)
        list->prev = w;
    list = w;
    bool wake_needed = false;
    if (ms >= 0) {
        w->due = now_ms() + (uint64_t)ms;
        if (!heap_push(w)) {
            /* No memory for the timer: wait no longer than now. */
            w->due = 0;
            detach(w);
            pthread_mutex_unlock(&smu);
            MHD_resume_connection(w->conn);
            return true;
        }
        wake_needed = w->heap_idx == 0;
    } else
        w->due = UINT64_MAX;
    if (watch) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(w->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) {
            struct epoll_event ev = {.events = EPOLLRDHUP, .data.ptr = w};
            w->fd = ci->connect_fd;
            if (epoll_ctl(epfd, EPOLL_CTL_ADD, w->fd, &ev) == 0)
                w->watching = true;
        }
    }
    if (wake_needed)
        wake(); /* under the lock: sched_stop closes evfd only after the sweep */
    pthread_mutex_unlock(&smu);
    return true;
}

void sched_resumed(struct waiter *w)
{
    if (w->suspended) {
        w->suspended = false;
        atomic_fetch_sub(&suspended, 1);
    }
}

long sched_suspended(void)
{
    return atomic_load(&suspended);
}
