/* wipe: overwrite secrets (tokens, the client secret, prompts) before memory is freed. */
#ifndef MAAS_LIB_WIPE_H
#define MAAS_LIB_WIPE_H

#include <stddef.h>

/* Overwrite memory the compiler may not optimise away. */
void maas_wipe(void *p, size_t n);
/* Wipe a NUL-terminated string and free it. */
void maas_wipe_free(char *s);

#endif
