/*
 * multi: many streams on one thread. One curl multi handle, every stream's
 * own easy handle in it, a ready list of streams with bytes to decode, and
 * a min-heap of the streams' clocks (idle, deadline, retry backoff).
 */
#ifndef MAAS_LIB_MULTI_H
#define MAAS_LIB_MULTI_H

#include "maas/maas.h"

/* For stream.c: the stream got bytes / has clocks to watch / was cancelled / is freed. */
void maas_multi_mark_ready(maas_stream *s);
void maas_multi_track(maas_stream *s);
void maas_multi_note_cancel(struct maas_multi *m);
void maas_multi_forget(maas_stream *s);

#endif
