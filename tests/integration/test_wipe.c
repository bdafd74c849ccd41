/*
 * Secrets are wiped before libmaas frees them. The test links the library
 * statically with every free() of its objects wrapped (-Wl,--wrap=free):
 * the wrapper scans each block about to be released for the client secret,
 * the Basic authorization value and the emulator's bearer tokens.
 */
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

void __real_free(void *p);
void __wrap_free(void *p);

static const char *const needles[] = {
    "test-secret",
    "dGVzdC1jbGllbnQ6dGVzdC1zZWNyZXQ", /* base64("test-client:test-secret") */
    "eyJhbGciOiJSUzI1NiIs",            /* the header part of every emulator token */
    "private-prompt-7f3a",             /* the prompt of test_prompt_wiped_before_free */
};
static int dirty_frees;
static int scanning;

void __wrap_free(void *p)
{
    if (p && scanning) {
        size_t n = malloc_usable_size(p), i;
        for (i = 0; i < sizeof needles / sizeof needles[0]; i++)
            if (memmem(p, n, needles[i], strlen(needles[i])))
                dirty_frees++;
    }
    __real_free(p);
}

static emu E;

static int on_token(const maas_token *t, void *payload)
{
    (void)t;
    (void)payload;
    return 0;
}

static void test_secrets_wiped_before_free(void **state)
{
    maas_client_options o;
    maas_client *c;
    maas_model_list *l = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    char *copy;
    (void)state;

    /* The wrapper does see what it looks for: a control. */
    scanning = 1;
    copy = strdup("xx test-secret xx");
    free(copy);
    assert_int_equal(dirty_frees, 1);
    dirty_frees = 0;

    emu_options(&E, &o);
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    assert_int_equal(maas_models_list(&l, c), MAAS_OK);
    r.model = "mistralai/Mistral-7B-Instruct-v0.1";
    r.prompt = "Tell me a joke";
    r.max_new_tokens = 5;
    assert_int_equal(maas_generate(c, &r, on_token, NULL, NULL), MAAS_OK);
    /* A refused token is dropped and replaced: both must be wiped. */
    assert_int_equal(emu_post(&E, "/emulator/expire-tokens", NULL), 200);
    assert_int_equal(maas_generate(c, &r, on_token, NULL, NULL), MAAS_OK);
    /* A failing token fetch, its answer cut half-way. */
    assert_int_equal(emu_post(&E, "/emulator/expire-tokens", NULL), 200);
    assert_int_equal(emu_fault(&E, "/oauth2/token", "drop-after=40", 3), 200);
    assert_int_not_equal(maas_generate(c, &r, on_token, NULL, NULL), MAAS_OK);
    maas_model_list_free(l);
    maas_client_free(c);
    scanning = 0;
    assert_int_equal(dirty_frees, 0);
}

/* The copies of a prompt the library owns (the request body) are wiped too;
 * jansson's and libcurl's own buffers are not ours to wipe (docs/security.md). */
static void test_prompt_wiped_before_free(void **state)
{
    maas_client_options o;
    maas_client *c;
    maas_request r = MAAS_REQUEST_INIT;
    maas_stream *s = NULL;
    (void)state;

    dirty_frees = 0;
    emu_options(&E, &o);
    o.max_retries = MAAS_RETRIES_OFF;
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    scanning = 1;
    r.model = "mistralai/Mistral-7B-Instruct-v0.1";
    r.prompt = "Tell me a joke, private-prompt-7f3a";
    r.max_new_tokens = 5;
    assert_int_equal(maas_generate(c, &r, on_token, NULL, NULL), MAAS_OK);
    /* A failed attempt, and a stream freed before it ran. */
    r.prompt = "Tell me [[fault:status=503]] private-prompt-7f3a";
    assert_int_not_equal(maas_generate(c, &r, on_token, NULL, NULL), MAAS_OK);
    r.prompt = "Tell me a joke, private-prompt-7f3a";
    assert_int_equal(maas_stream_open(&s, c, &r), MAAS_OK);
    maas_stream_free(s);
    scanning = 0;
    maas_client_free(c);
    assert_int_equal(dirty_frees, 0);
}

static int setup(void **state)
{
    (void)state;
    return emu_start(&E, NULL);
}

static int teardown(void **state)
{
    (void)state;
    return emu_stop(&E);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secrets_wiped_before_free),
        cmocka_unit_test(test_prompt_wiped_before_free),
    };
    /* cmocka ignores a failing teardown: the emulator's exit status is checked here. */
    return emu_suite_result(cmocka_run_group_tests_name("wipe", tests, setup, teardown),
                            &E);
}
