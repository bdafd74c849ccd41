/* wipe: memory that held a secret is overwritten before it is freed. */
#include <stdlib.h>
#include <string.h>

#include "wipe.h"

void maas_wipe(void *p, size_t n)
{
    /* A volatile pointer keeps the compiler from dropping a store to memory about to be freed. */
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

void maas_wipe_free(char *s)
{
    if (!s)
        return;
    maas_wipe(s, strlen(s));
    free(s);
}
