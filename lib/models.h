/* models: the model list (GET /models) and its parsing. */
#ifndef MAAS_LIB_MODELS_H
#define MAAS_LIB_MODELS_H

#include <stdatomic.h>

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

/* GET /models with retries and token replay; the error stays in err. Ends
 * with MAAS_ERR_CANCELLED once *cancel (may be NULL) is set, and within
 * deadline_at as maas_call takes it (0: the client's deadline_ms;
 * MAAS_UNBOUNDED: only models_timeout_ms, for a fetch aside). */
maas_status maas_models_fetch(maas_model_list **out, struct maas_client *c, atomic_int *cancel,
                              int64_t deadline_at, maas_error_rec *err);

/* The client's catalogue (fetched on first use, kept for the client's life);
 * NULL with err set on failure. Any thread; cancel and deadline_at as above. */
const maas_model_list *maas_models_catalogue(struct maas_client *c, atomic_int *cancel,
                                             int64_t deadline_at, maas_error_rec *err);
/* The catalogue if it has been fetched, else NULL: never a wait on the network. */
const maas_model_list *maas_models_cached(struct maas_client *c);

#endif
