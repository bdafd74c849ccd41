/* The public header alone, as C99 with -pedantic -Werror: it must need nothing else. */
#include <maas/maas.h>

int main(void)
{
    maas_client_options o = MAAS_CLIENT_OPTIONS_INIT;
    maas_request r = MAAS_REQUEST_INIT;
    (void)r;
    return o.version == MAAS_CLIENT_OPTIONS_VERSION && MAAS_VERSION_NUM >= 0x000100 ? 0 : 1;
}
