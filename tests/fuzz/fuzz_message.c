/*
 * Fuzz target: the mapping of decoded JSON onto libmaas structures: a
 * stream message, an HTTP error body (any shape) and the model list.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "error.h"
#include "message.h"
#include "models.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *root;
    maas_msg m;
    maas_error_body eb;
    maas_model_list *list = NULL;
    maas_error_rec err;
    char why[256];
    size_t i;

    why[0] = '\0';
    root = json_loadb((const char *)data, size, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (root) {
        if (maas_msg_from_json(&m, root, why, sizeof why) == MAAS_OK) {
            if (m.has_token && m.token.text_len && !m.token.text)
                abort();
        } else if (!why[0]) {
            abort(); /* a rejection always says why */
        }
        json_decref(root);
    }

    maas_error_body_parse(&eb, (const char *)data, size);
    if (strlen(eb.message) >= sizeof eb.message || strlen(eb.request_id) >= sizeof eb.request_id)
        abort();

    maas_error_clear(&err);
    if (maas_models_parse(&list, (const char *)data, size, &err) == MAAS_OK) {
        for (i = 0; i < maas_model_list_count(list); i++) {
            const maas_model *mo = maas_model_list_get(list, i);
            if (!maas_model_name(mo) || !maas_model_product_name(mo) || !maas_model_product_id(mo))
                abort();
        }
        maas_model_list_free(list);
    } else if (!err.message[0] || list) {
        abort();
    }
    return 0;
}
