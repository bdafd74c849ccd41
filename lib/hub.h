/*
 * hub: the client's shared multi handle for blocking streams over HTTP/2.
 *
 * libcurl multiplexes streams on one connection only among the transfers
 * of one multi handle, and a multi handle may be used by one thread at a
 * time. Blocking calls on many threads each drive their own transfer, so
 * to share connections they take turns driving one multi handle: whichever
 * waiting thread finds nobody driving drives it for everybody, for one
 * round, and hands over. The bytes and headers libcurl delivers for another
 * thread's transfer are queued on that transfer and handed to its own
 * callbacks on its own thread, so a stream's decoder, clocks and callbacks
 * never run anywhere but on the thread that called it.
 *
 * Used only where it pays: for blocking streams to the API host once a
 * transfer there has negotiated HTTP/2 (HTTP/1.1 connections cannot be
 * shared, and each thread keeps its pooled channel as before).
 */
#ifndef MAAS_LIB_HUB_H
#define MAAS_LIB_HUB_H

#include "clientdata.h"
#include "error.h"
#include "http.h"

/*
 * Bytes that arrived for a stream while its thread was busy elsewhere (a
 * pull iterator's caller between two calls). HTTP/2 gives libcurl 7.88 no
 * way to hold one stream back without stalling the connection's other
 * streams, so they are kept, up to this bound; past it the stream fails.
 * The service's longest answer is a small fraction of it.
 */
#define MAAS_HUB_BACKLOG_MAX ((size_t)64 << 20)

/* The client's hub: set up with the client, freed after its last transfer. */
int maas_hub_init(maas_hub *h);
void maas_hub_cleanup(maas_hub *h);

/*
 * For a blocking stream's transfer (its `driver`): it takes each attempt
 * once the API host has answered over HTTP/2, with HTTP/2 allowed; until
 * then, and with HTTP/1.1, whose connections carry one request at a time,
 * the attempt runs on the transfer's own pooled channel.
 */
extern const maas_xfer_driver maas_hub_driver;

#endif
