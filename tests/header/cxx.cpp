// The public header alone, as C++ with -Wall -Wextra -pedantic -Werror.
#include <maas/maas.h>

int main()
{
    maas_client_options o = MAAS_CLIENT_OPTIONS_INIT;
    maas_request r = MAAS_REQUEST_INIT;
    static_cast<void>(r);
    // Linking proves the declarations are extern "C".
    return o.version == MAAS_CLIENT_OPTIONS_VERSION && maas_version() != nullptr ? 0 : 1;
}
