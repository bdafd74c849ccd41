/*
 * maas batch: many prompts from a JSON Lines file through one maas_multi.
 * See docs/batch.md.
 * SPDX-License-Identifier: MIT
 */
#ifndef MAAS_CLI_BATCH_H
#define MAAS_CLI_BATCH_H

#include <stdio.h>

/* The usage lines of the command, for `maas --help`. */
void maas_cli_batch_usage(FILE *f);

/* Run `maas batch ARGS...` (argv holds the arguments after "batch"); returns
 * the exit status. Installs its own SIGINT/SIGTERM handling, so it must run
 * before the caller blocks or handles those signals. */
int maas_cli_batch(int argc, char **argv);

#endif
