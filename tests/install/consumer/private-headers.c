/*
 * A consumer that includes system headers whose names libmaas also uses
 * for private headers of its own (error.h, log.h, http.h): with libmaas's
 * flags, <error.h> must still be glibc's, so error() is declared.
 */
#include <error.h>
#include <stdio.h>

#include <maas/maas.h>

int main(void)
{
    void (*report)(int, int, const char *, ...) = error;
    printf("libmaas %s\n", maas_version());
    return report == NULL;
}
