/*
 * Unit: the version-2 fields of maas_client_options (the token and /models
 * call deadlines, maas_generate_text's cap): their defaults, their values,
 * and a version-1 caller, whose struct ends before them, read no further.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "clientdata.h"

/* A 0.1.0 caller allocated exactly this much: ASan and valgrind catch a read past it. */
static const size_t V1_SIZE = offsetof(maas_client_options, insecure_skip_tls_verify) + sizeof(int);

static void test_version_1_gets_the_defaults(void **state)
{
    maas_client_options full;
    void *o = malloc(V1_SIZE);
    maas_client *c = NULL;
    (void)state;
    assert_non_null(o);
    memset(&full, 0xff, sizeof full); /* past version 1: garbage the library must not read */
    memset(&full, 0, V1_SIZE);
    full.version = 1;
    full.token = "static";
    memcpy(o, &full, V1_SIZE);
    assert_int_equal(maas_client_new(&c, o), MAAS_OK);
    assert_int_equal(c->token_timeout_ms, MAAS_DEFAULT_TOKEN_TIMEOUT_MS);
    assert_int_equal(c->models_timeout_ms, MAAS_DEFAULT_MODELS_TIMEOUT_MS);
    assert_int_equal(c->max_text_bytes, MAAS_DEFAULT_MAX_TEXT_BYTES);
    maas_client_free(c);
    free(o);
}

static void test_version_2_fields(void **state)
{
    maas_client_options o;
    maas_client *c = NULL;
    (void)state;
    assert_int_equal(maas_client_options_init(&o, 2), MAAS_OK);
    o.token = "static";
    o.token_timeout_ms = 1234;
    o.models_timeout_ms = -1; /* none */
    o.max_text_bytes = 77;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(c->token_timeout_ms, 1234);
    assert_int_equal(c->models_timeout_ms, 0);
    assert_int_equal(c->max_text_bytes, 77);
    maas_client_free(c);

    /* Zero: the defaults; the static initialiser knows the new fields. */
    {
        maas_client_options init = MAAS_CLIENT_OPTIONS_INIT;
        assert_int_equal(init.version, 2);
        init.token = "static";
        assert_int_equal(maas_client_new(&c, &init), MAAS_OK);
        assert_int_equal(c->token_timeout_ms, 30000);
        assert_int_equal(c->models_timeout_ms, 30000);
        assert_int_equal(c->max_text_bytes, 16u * 1024u * 1024u);
        maas_client_free(c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_1_gets_the_defaults),
        cmocka_unit_test(test_version_2_fields),
    };
    return cmocka_run_group_tests_name("options-v2", tests, NULL, NULL);
}
