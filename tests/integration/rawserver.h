/*
 * rawserver: a tiny in-process TCP server on 127.0.0.1 (ephemeral port, one
 * thread of its own) for what an HTTP server library will not do: answers
 * that are not HTTP, headers that never end, silence after accept.
 *
 * Every mode reads and discards what the client sends for as long as the
 * connection is open, and closes its side when the client goes away, so a
 * test can check that the client closed every connection it opened
 * (rawserver_wait_open(s, 0, ...)). rawserver_stop() shuts every socket down
 * and joins the thread: nothing is left for valgrind or ASan to report.
 */
#ifndef MAAS_TEST_RAWSERVER_H
#define MAAS_TEST_RAWSERVER_H

typedef enum raw_mode {
    RAW_ENDLESS_HEADER, /* "HTTP/1.1 200 OK\r\n", then header lines as fast as the socket takes them */
    RAW_SLOW_HEADER,    /* "HTTP/1.1 200 OK\r\n" at once, then "A: b\r\n" over and over,
                           one byte every 50 ms: a complete header line every 300 ms */
    RAW_ACCEPT_SILENT,  /* accepts and reads, never writes */
    RAW_GARBAGE,        /* 8 KiB of pseudo-random bytes that are not HTTP, then end of stream */
    RAW_HTTP09,         /* a JSON body without status line or headers (HTTP/0.9), then end of stream */
    RAW_INTERIM_1XX,    /* "HTTP/1.1 102 Processing" and a blank line every RAW_KEEPALIVE_MS, for ever */
    RAW_SLOW_READ,      /* reads the request body RAW_SLOW_READ_CHUNK bytes every 50 ms, then
                           answers a complete one-message stream (Content-Length) */
    RAW_NO_READ,        /* accepts, never reads nor writes (a small receive window): an
                           upload to it stalls; connections close only at rawserver_stop() */
    RAW_REDIRECT        /* "302 Found" to another path of this server, then end of stream */
} raw_mode;

#define RAW_KEEPALIVE_MS 300
#define RAW_SLOW_READ_CHUNK 65536

typedef struct rawserver rawserver;

/* Listen on 127.0.0.1, port 0, and start the thread. NULL on failure. */
rawserver *rawserver_start(raw_mode mode);
/* "http://127.0.0.1:PORT" (no trailing slash). */
const char *rawserver_url(const rawserver *s);
/* Connections accepted since the start. */
long rawserver_accepted(const rawserver *s);
/* Connections open now (closed by neither side yet). */
long rawserver_open(const rawserver *s);
/* Poll rawserver_open() until it equals `want` or `timeout_ms` passes; the last value. */
long rawserver_wait_open(const rawserver *s, long want, long timeout_ms);
/* Request heads received (a blank line seen), since the start. */
long rawserver_requests(const rawserver *s);
/* Shut every socket down, join the thread, free. NULL is a no-op. */
void rawserver_stop(rawserver *s);
const char *rawserver_mode_name(raw_mode mode);

#endif
