/* Unit tests of the model list: parsing every shape, lookups, NULL handling. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "models.h"

static maas_status parse(const char *body, maas_model_list **l, maas_error_rec *e)
{
    maas_error_clear(e);
    return maas_models_parse(l, body, strlen(body), e);
}

static const char guide[] =
    "{ \"models\": [ { \"model_name\": \"Qwen/Qwen2.5-Coder-32B-Instruct\", \"product_id\": "
    "\"97a75a6d-7eb4-40c9-894b-8e9f5924b555\", \"product_name\": \"maas-model-qwen-2.5-coder-32b\" "
    "}, { \"model_name\": \"mistralai/Mistral-7B-Instruct-v0.1\", \"product_id\": "
    "\"269c3034-e6c7-4359-9e77-c3efedfaa778\", \"product_name\": \"maas-model-mistral-7b-v0.1\" } ] }";

static void test_parse_and_find(void **state)
{
    maas_model_list *l;
    maas_error_rec e;
    const maas_model *m;
    (void)state;
    assert_int_equal(parse(guide, &l, &e), MAAS_OK);
    assert_int_equal(maas_model_list_count(l), 2);
    m = maas_model_list_get(l, 1);
    assert_string_equal(maas_model_name(m), "mistralai/Mistral-7B-Instruct-v0.1");
    assert_string_equal(maas_model_product_name(m), "maas-model-mistral-7b-v0.1");
    assert_string_equal(maas_model_product_id(m), "269c3034-e6c7-4359-9e77-c3efedfaa778");
    assert_ptr_equal(maas_model_list_find(l, "maas-model-mistral-7b-v0.1"), m);
    assert_ptr_equal(maas_model_list_find(l, "mistralai/Mistral-7B-Instruct-v0.1"), m);
    assert_null(maas_model_list_find(l, "mistral"));
    assert_null(maas_model_list_find(l, NULL));
    assert_null(maas_model_list_get(l, 2));
    maas_model_list_free(l);
}

static void test_camel_case_and_empty(void **state)
{
    maas_model_list *l;
    maas_error_rec e;
    (void)state;
    assert_int_equal(parse("{\"models\":[{\"modelName\":\"a\",\"productId\":\"b\",\"productName\":\"c\"}]}",
                           &l, &e),
                     MAAS_OK);
    assert_string_equal(maas_model_product_id(maas_model_list_get(l, 0)), "b");
    maas_model_list_free(l);
    assert_int_equal(parse("{\"models\":[]}", &l, &e), MAAS_OK);
    assert_int_equal(maas_model_list_count(l), 0);
    assert_null(maas_model_list_get(l, 0));
    maas_model_list_free(l);
}

static void test_malformed(void **state)
{
    static const char *const bad[] = {
        "", "not json", "[]", "{}", "{\"models\":{}}", "{\"models\":[1]}",
        "{\"models\":[{\"model_name\":\"a\",\"product_id\":\"b\"}]}",
        "{\"models\":[{\"model_name\":1,\"product_id\":\"b\",\"product_name\":\"c\"}]}",
        "{\"models\":[{\"model_name\":\"a\\u0000b\",\"product_id\":\"b\",\"product_name\":\"c\"}]}",
    };
    maas_model_list *l;
    maas_error_rec e;
    size_t i;
    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        l = (maas_model_list *)&e;
        assert_int_equal(parse(bad[i], &l, &e), MAAS_ERR_PROTOCOL);
        assert_null(l);
        assert_true(e.message[0] != '\0');
    }
}

static void test_null_handling(void **state)
{
    (void)state;
    assert_int_equal(maas_model_list_count(NULL), 0);
    assert_null(maas_model_list_get(NULL, 0));
    assert_null(maas_model_list_find(NULL, "x"));
    assert_null(maas_model_name(NULL));
    assert_null(maas_model_product_name(NULL));
    assert_null(maas_model_product_id(NULL));
    maas_model_list_free(NULL);
    assert_int_equal(maas_models_list(NULL, NULL), MAAS_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_find),
        cmocka_unit_test(test_camel_case_and_empty),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_null_handling),
    };
    return cmocka_run_group_tests_name("models", tests, NULL, NULL);
}
