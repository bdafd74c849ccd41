/* Compiled into every cmocka program (tests/meson.build): MAAS_TEST_FILTER,
 * a cmocka glob ('*' and '?') matched against whole test names, runs only the
 * tests it matches. scripts/mutate uses it to run the one test that catches a
 * mutant instead of the whole program; unset, every test runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

__attribute__((constructor)) static void maas_test_filter(void)
{
    const char *p = getenv("MAAS_TEST_FILTER");
    if (p && *p)
        cmocka_set_test_filter(p);
}
