/* models: the model list (GET /models) and its parsing. */
#ifndef MAAS_LIB_MODELS_H
#define MAAS_LIB_MODELS_H

#include "error.h"

struct maas_client;

struct maas_model {
    char *model_name;
    char *product_name;
    char *product_id;
};

struct maas_model_list {
    size_t count;
    struct maas_model *items;
};

/* Parse a {"models": [...]} body. MAAS_ERR_PROTOCOL (err says why) or NO_MEMORY. */
maas_status maas_models_parse(maas_model_list **out, const char *body, size_t len,
                              maas_error_rec *err);

/* GET /models with retries and token replay; the error stays in err. */
maas_status maas_models_fetch(maas_model_list **out, struct maas_client *c, maas_error_rec *err);

/* The client's catalogue (fetched on first use, kept for the client's life);
 * NULL with err set on failure. Any thread. */
const maas_model_list *maas_models_catalogue(struct maas_client *c, maas_error_rec *err);

#endif
