#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "call.h"
#include "clientdata.h"
#include "http.h"
#include "models.h"

/* A catalogue answer larger than this is not a catalogue. */
#define MODELS_BODY_MAX (4 * 1024 * 1024)

void maas_model_list_free(maas_model_list *list)
{
    size_t i;
    if (!list)
        return;
    for (i = 0; i < list->count; i++) {
        free(list->items[i].model_name);
        free(list->items[i].product_name);
        free(list->items[i].product_id);
    }
    free(list->items);
    free(list);
}

size_t maas_model_list_count(const maas_model_list *list)
{
    return list ? list->count : 0;
}

const maas_model *maas_model_list_get(const maas_model_list *list, size_t index)
{
    if (!list || index >= list->count)
        return NULL;
    return &list->items[index];
}

const maas_model *maas_model_list_find(const maas_model_list *list, const char *name)
{
    size_t i;
    if (!list || !name)
        return NULL;
    for (i = 0; i < list->count; i++)
        if (!strcmp(list->items[i].model_name, name))
            return &list->items[i];
    for (i = 0; i < list->count; i++)
        if (!strcmp(list->items[i].product_name, name))
            return &list->items[i];
    return NULL;
}

const char *maas_model_name(const maas_model *model)
{
    return model ? model->model_name : NULL;
}

const char *maas_model_product_name(const maas_model *model)
{
    return model ? model->product_name : NULL;
}

const char *maas_model_product_id(const maas_model *model)
{
    return model ? model->product_id : NULL;
}

static char *field(json_t *entry, const char *name, const char *alt)
{
    json_t *v = json_object_get(entry, name);
    if (!v && alt)
        v = json_object_get(entry, alt);
    if (!json_is_string(v))
        return NULL;
    /* A NUL inside would make the C string lie about the value. */
    if (strlen(json_string_value(v)) != json_string_length(v))
        return NULL;
    return strdup(json_string_value(v));
}

maas_status maas_models_parse(maas_model_list **out, const char *body, size_t len,
                              maas_error_rec *err)
{
    json_error_t jerr;
    json_t *root, *arr, *e;
    maas_model_list *list;
    size_t i, n;
    maas_status st = MAAS_OK;

    *out = NULL;
    root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    if (!root)
        return maas_error_set(err, MAAS_ERR_PROTOCOL, "the model list is not valid JSON: %s",
                              jerr.text);
    arr = json_is_object(root) ? json_object_get(root, "models") : NULL;
    if (!json_is_array(arr)) {
        json_decref(root);
        return maas_error_set(err, MAAS_ERR_PROTOCOL, "the model list has no \"models\" array");
    }
    n = json_array_size(arr);
    list = calloc(1, sizeof *list);
    if (!list || (n && !(list->items = calloc(n, sizeof *list->items)))) {
        free(list);
        json_decref(root);
        return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory reading the model list");
    }
    json_array_foreach(arr, i, e) {
        struct maas_model *m = &list->items[list->count];
        if (!json_is_object(e)) {
            st = maas_error_set(err, MAAS_ERR_PROTOCOL, "models[%zu] is not an object", i);
            break;
        }
        m->model_name = field(e, "model_name", "modelName");
        m->product_name = field(e, "product_name", "productName");
        m->product_id = field(e, "product_id", "productId");
        list->count++;
        if (!m->model_name || !m->product_name || !m->product_id) {
            st = maas_error_set(err, MAAS_ERR_PROTOCOL,
                                "models[%zu] lacks a string model_name, product_name or product_id",
                                i);
            break;
        }
    }
    json_decref(root);
    if (st != MAAS_OK) {
        maas_model_list_free(list);
        return st;
    }
    *out = list;
    return MAAS_OK;
}

maas_status maas_models_fetch(maas_model_list **out, maas_client *c, atomic_int *cancel,
                              int64_t deadline_at, maas_error_rec *err)
{
    maas_fetch f;
    maas_response r;
    maas_status st;
    struct curl_slist *h;
    size_t n = strlen(c->api_base_url) + sizeof "/models";
    char *url = malloc(n);

    *out = NULL;
    h = maas_http_headers(NULL, 0);
    if (!url || !h) {
        free(url);
        maas_http_headers_free(h);
        return maas_error_set(err, MAAS_ERR_NO_MEMORY, "out of memory");
    }
    snprintf(url, n, "%s/models", c->api_base_url);
    memset(&f, 0, sizeof f);
    f.url = url;
    f.headers = h;
    f.max_body = MODELS_BODY_MAX;
    f.endpoint = MAAS_EP_MODELS;
    f.cancel = cancel;
    f.deadline_at = deadline_at;
    st = maas_call(c, &f, 1, &r, err);
    if (st == MAAS_OK) {
        st = maas_models_parse(out, r.body, r.len, err);
        maas_response_free(&r);
    }
    maas_http_headers_free(h);
    free(url);
    return st;
}

maas_status maas_models_list(maas_model_list **out, maas_client *client)
{
    maas_error_rec err;
    maas_status st;
    if (!out)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!client)
        return maas_fail(MAAS_ERR_INVALID_ARGUMENT, "client is NULL");
    maas_error_clear(&err);
    st = maas_models_fetch(out, client, NULL, 0, &err);
    if (st != MAAS_OK)
        return maas_error_publish(&err);
    return MAAS_OK;
}

const maas_model_list *maas_models_catalogue(maas_client *c, atomic_int *cancel,
                                             int64_t deadline_at, maas_error_rec *err)
{
    maas_model_list *list = NULL;
    maas_status st;
    pthread_mutex_lock(&c->catalogue_lock);
    if (!atomic_load(&c->catalogue)) {
        st = maas_models_fetch(&list, c, cancel, deadline_at, err);
        if (st == MAAS_OK)
            atomic_store(&c->catalogue, list);
    }
    list = atomic_load(&c->catalogue);
    pthread_mutex_unlock(&c->catalogue_lock);
    return list;
}

const maas_model_list *maas_models_cached(maas_client *c)
{
    /* Never behind another thread's fetch, which holds the lock for as long
     * as the network takes: the list, once set, never changes. */
    return atomic_load(&c->catalogue);
}
