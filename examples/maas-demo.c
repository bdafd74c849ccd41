/*
 * maas-demo: the product guide's demonstrate_all_apis() in C.
 *
 * The same four sections, prompts and parameter sets as the guide's Python
 * script, with two differences that are the point of libmaas: one client
 * (so one token for the whole run instead of one per call), and the token
 * itself is never printed.
 *
 * Configuration comes from the environment (MAAS_CLIENT_ID, ...);
 * MAAS_DEMO_PAUSE_MS is the pause between generations (the guide sleeps
 * 2 s; default here 0). Exit status 0 when every step succeeded, 1 otherwise.
 * SPDX-License-Identifier: MIT
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <maas/maas.h>

static const char *const test_prompts[] = {
    "Write a poem about programming, in four lines and two stanzas, which uses iambic "
    "pentameter in rhyming couplets.",
    /* "What are the key principles of a good AI application?" */
};

static const struct {
    int max_tokens;
    double temperature;
} parameter_sets[] = {
    { 50, 0.2 },
    { 50, 0.8 },
    { 200, 0.5 },
};

static void rule(int n)
{
    while (n-- > 0)
        putchar('-');
    putchar('\n');
}

static void pause_ms(long ms)
{
    struct timespec ts;
    if (ms <= 0)
        return;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static const char *last_message(maas_status st)
{
    const maas_error *e = maas_last_error();
    return e && e->message[0] ? e->message : maas_strerror(st);
}

/* Print each token as it arrives; special tokens such as </s> are not text.
   Flush when the tokens received so far are all out: once per network read. */
static int print_token(const maas_token *t, void *payload)
{
    (void)payload;
    if (!t->special)
        fwrite(t->text, 1, t->text_len, stdout);
    if (t->last_buffered)
        fflush(stdout);
    return 0;
}

static int print_details(const maas_details *d, void *payload)
{
    (void)payload;
    printf("\n\nCompletion Details:\n");
    printf("- Tokens generated: %u\n", (unsigned)d->generated_tokens);
    printf("- Finish reason: %s\n", d->finish_reason_name);
    if (d->has_seed)
        printf("- Seed: %llu\n", (unsigned long long)d->seed);
    return 0;
}

int main(void)
{
    maas_client *client = NULL;
    maas_model_list *models = NULL;
    maas_status st;
    const char *pause_env = getenv("MAAS_DEMO_PAUSE_MS");
    long pause = pause_env ? strtol(pause_env, NULL, 10) : 0;
    int failures = 0;
    size_t i;

    printf("=== Intel MaaS API Complete Demo ===\n\n");

    /* Section 1: Authentication Demo */
    printf("1. Authentication Test\n");
    rule(50);
    st = maas_client_new(&client, NULL);
    if (st == MAAS_OK)
        st = maas_client_authenticate(client);
    if (st == MAAS_OK) {
        printf("Authentication successful\n");
        /* The guide prints the first 50 characters of the token; a secret
         * has no business on a terminal, so only its lifetime is shown. */
        printf("Token: <redacted>, cached for %llu s\n",
               (unsigned long long)(maas_client_counter(client, MAAS_COUNTER_TOKEN_EXPIRES_IN_MS) /
                                    1000));
    } else {
        printf("Authentication failed: %s\n", last_message(st));
        failures++;
    }
    printf("\n\n");

    /* Section 2: Model Listing Demo */
    printf("2. Available Models\n");
    rule(50);
    st = client ? maas_models_list(&models, client) : MAAS_ERR_CONFIG;
    if (st == MAAS_OK) {
        printf("Found %zu available models:\n", maas_model_list_count(models));
        for (i = 0; i < maas_model_list_count(models); i++) {
            const maas_model *m = maas_model_list_get(models, i);
            printf("\nModel: %s\n", maas_model_name(m));
            printf("Product ID: %s\n", maas_model_product_id(m));
            printf("Product Name: %s\n", maas_model_product_name(m));
        }
    } else {
        printf("Failed to list models: %s\n", client ? last_message(st) : "no client");
        failures++;
    }
    printf("\n\n");

    /* Section 3: Text Generation Demo */
    printf("3. Text Generation Tests\n");
    rule(50);
    for (i = 0; i < maas_model_list_count(models); i++) {
        const maas_model *m = maas_model_list_get(models, i);
        maas_request req = MAAS_REQUEST_INIT;
        printf("\nTesting %s\n", maas_model_name(m));
        rule(30);
        printf("Prompt: %s\n\n", test_prompts[0]);
        req.model_info = m;
        req.prompt = test_prompts[0];
        req.max_new_tokens = 100;
        req.temperature = 0.9;
        printf("Response:\n");
        fflush(stdout);
        st = maas_generate(client, &req, print_token, print_details, NULL);
        if (st == MAAS_OK) {
            printf("\n\n");
            pause_ms(pause);
        } else {
            printf("\n✗ Generation failed: %s\n", last_message(st));
            failures++;
        }
    }

    /* Section 4: Parameter variation Demo */
    printf("\n4. Parameter Variation Test\n");
    rule(50);
    if (maas_model_list_count(models) == 0) {
        printf("✗ Generation failed: no model to test\n");
        failures++;
    }
    for (i = 0; i < sizeof parameter_sets / sizeof parameter_sets[0] &&
                maas_model_list_count(models) > 0;
         i++) {
        maas_request req = MAAS_REQUEST_INIT;
        printf("\nTesting with parameters:\n");
        printf("- Max tokens: %d\n", parameter_sets[i].max_tokens);
        printf("- Temperature: %g\n", parameter_sets[i].temperature);
        req.model_info = maas_model_list_get(models, 0);
        req.prompt = "Write a short story about a robot.";
        req.max_new_tokens = parameter_sets[i].max_tokens;
        req.temperature = parameter_sets[i].temperature;
        printf("\nResponse:\n");
        fflush(stdout);
        st = maas_generate(client, &req, print_token, NULL, NULL);
        if (st == MAAS_OK) {
            printf("\n\n");
            pause_ms(pause);
        } else {
            printf("\n✗ Generation failed: %s\n", last_message(st));
            failures++;
        }
    }

    maas_model_list_free(models);
    maas_client_free(client);
    return failures ? 1 : 0;
}
