/*
 * Integration: the library against maas-emulator on loopback, through every
 * fault the emulator injects. Each test asserts the exact status, the
 * message, the number of token requests, and that no connection stays open.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

static emu E;

#define MISTRAL "mistralai/Mistral-7B-Instruct-v0.1"
#define PROMPT "Tell me a joke"

/* ---- helpers ------------------------------------------------------------- */

struct collected {
    char text[1 << 16];
    size_t len;
    size_t tokens;
    size_t specials;
    size_t next_index;
    int index_ok;
    int cancel_after; /* cancel once this many tokens arrived; 0: never */
    maas_details details;
    char details_text[1 << 16];
    char finish[64];
    char request_id[128];
    int got_details;
};

static int on_token(const maas_token *t, void *p)
{
    struct collected *c = p;
    if (t->index != c->next_index)
        c->index_ok = 0;
    c->next_index++;
    c->tokens++;
    if (t->special) {
        c->specials++;
    } else if (c->len + t->text_len < sizeof c->text) {
        memcpy(c->text + c->len, t->text, t->text_len);
        c->len += t->text_len;
    }
    return c->cancel_after && (int)c->tokens >= c->cancel_after;
}

static int on_details(const maas_details *d, void *p)
{
    struct collected *c = p;
    c->details = *d;
    snprintf(c->details_text, sizeof c->details_text, "%.*s", (int)d->generated_text_len,
             d->generated_text);
    snprintf(c->finish, sizeof c->finish, "%s", d->finish_reason_name);
    snprintf(c->request_id, sizeof c->request_id, "%s", d->request_id);
    c->got_details = 1;
    return 0;
}

static struct collected *collected_new(void)
{
    struct collected *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->index_ok = 1;
    return c;
}

static maas_client *client_with(void (*tweak)(maas_client_options *))
{
    maas_client_options o;
    maas_client *c = NULL;
    emu_options(&E, &o);
    o.retry_base_ms = 10; /* keep retrying tests fast */
    if (tweak)
        tweak(&o);
    assert_int_equal(maas_client_new(&c, &o), MAAS_OK);
    return c;
}

static maas_status gen(maas_client *c, const char *prompt, int max_tokens, struct collected *col)
{
    maas_request r = MAAS_REQUEST_INIT;
    r.model = MISTRAL;
    r.prompt = prompt;
    r.max_new_tokens = max_tokens;
    r.temperature = 0.5;
    return maas_generate(c, &r, on_token, on_details, col);
}

/*
 * Connection hygiene, checked while the client is alive (maas_client_free
 * closes everything anyway): nothing still served, at most `kept` idle
 * connections to the API; none at all after the free.
 */
static void finish_keeping(maas_client *c, long kept)
{
    char why[256];
    /* Through a front end the emulator sees nghttpx's connections, which
     * outlive the client's: nothing of the client's to count there. */
    if (E.front) {
        maas_client_free(c);
        return;
    }
    if (emu_idle(&E, kept, why, sizeof why) != 0)
        fail_msg("before maas_client_free: %s", why);
    maas_client_free(c);
    assert_int_equal(emu_wait_connections(&E, 0, 5000), 0);
}

static void finish(maas_client *c)
{
    finish_keeping(c, 1);
}

static int group_setup(void **state)
{
    (void)state;
    return emu_start(&E, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    return emu_stop(&E);
}

static int reset(void **state)
{
    (void)state;
    return emu_post(&E, "/emulator/reset", NULL) == 200 ? 0 : -1;
}

/* ---- the happy path -------------------------------------------------------- */

static void test_models(void **state)
{
    maas_client *c = client_with(NULL);
    maas_model_list *l = NULL;
    const maas_model *m;
    (void)state;
    assert_int_equal(maas_models_list(&l, c), MAAS_OK);
    assert_int_equal(maas_model_list_count(l), 5);
    assert_string_equal(maas_model_name(maas_model_list_get(l, 0)),
                        "Qwen/Qwen2.5-Coder-32B-Instruct");
    m = maas_model_list_find(l, "maas-model-mistral-7b-v0.1");
    assert_non_null(m);
    assert_string_equal(maas_model_name(m), MISTRAL);
    assert_string_equal(maas_model_product_id(m), "269c3034-e6c7-4359-9e77-c3efedfaa778");
    assert_ptr_equal(maas_model_list_find(l, MISTRAL), m);
    assert_null(maas_model_list_find(l, "no-such-model"));
    assert_null(maas_model_list_get(l, 5));
    maas_model_list_free(l);
    maas_model_list_free(NULL);
    assert_int_equal(emu_stat(&E, "token_requests"), 1);
    finish(c);
}

static void test_generate_text_matches_details(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    (void)state;
    assert_int_equal(gen(c, PROMPT, 10, col), MAAS_OK);
    assert_true(col->got_details);
    assert_int_equal(col->tokens, 10);
    assert_true(col->index_ok);
    assert_int_equal(col->details.finish_reason, MAAS_FINISH_LENGTH);
    assert_string_equal(col->finish, "FINISH_REASON_LENGTH");
    assert_int_equal(col->details.generated_tokens, 10);
    assert_true(col->details.has_seed);
    assert_int_equal(strlen(col->request_id), 36);
    assert_int_equal(col->details.attempts, 1);
    /* What the callbacks saw is exactly what the server says it generated. */
    assert_int_equal(col->len, col->details.generated_text_len);
    assert_memory_equal(col->text, col->details_text, col->len);
    free(col);
    finish(c);
}

static void test_eos_finish(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    (void)state;
    /* The emulator's natural length is at most 99 tokens: 2047 ends with </s>. */
    assert_int_equal(gen(c, PROMPT, 2047, col), MAAS_OK);
    assert_int_equal(col->details.finish_reason, MAAS_FINISH_EOS_TOKEN);
    assert_int_equal(col->specials, 1);
    assert_int_equal(col->details.generated_tokens, col->tokens);
    assert_int_equal(col->len, col->details.generated_text_len);
    assert_memory_equal(col->text, col->details_text, col->len);
    free(col);
    finish(c);
}

static void test_one_token_and_one_connection(void **state)
{
    maas_client *c = client_with(NULL);
    maas_model_list *l = NULL;
    int i;
    (void)state;
    assert_int_equal(maas_models_list(&l, c), MAAS_OK);
    for (i = 0; i < 10; i++) {
        struct collected *col = collected_new();
        assert_int_equal(gen(c, PROMPT, 5, col), MAAS_OK);
        free(col);
    }
    maas_model_list_free(l);
    /* The guide's script asks for a token before every call; libmaas once. */
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REQUESTS), 1);
    assert_int_equal(emu_stat(&E, "token_requests"), 1);
    assert_int_equal(emu_stat(&E, "generations"), 10);
    /* Keep-alive: the catalogue and ten streams on one connection to the
     * API, the token on one to the token endpoint (another host, as the
     * service has it). */
    assert_int_equal(emu_stat(&E, "connections_opened"), 1);
    assert_int_equal(emu_stat(&E, "token_connections_opened"), 1);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_CONNECTIONS), 2);
    finish(c);
}

static void ua_suffix(maas_client_options *o) { o->user_agent_suffix = "my-tool/1.2"; }

static void test_user_agent(void **state)
{
    maas_client *c = client_with(ua_suffix);
    struct collected *col = collected_new();
    char ua[256], want[64];
    (void)state;
    assert_int_equal(gen(c, PROMPT, 2, col), MAAS_OK);
    emu_stat_string(&E, "last_user_agent", ua, sizeof ua);
    snprintf(want, sizeof want, "libmaas/%s libcurl/", maas_version());
    assert_memory_equal(ua, want, strlen(want));
    assert_non_null(strstr(ua, " my-tool/1.2"));
    free(col);
    finish(c);
}

static void test_pull_iterator(void **state)
{
    maas_client *c = client_with(NULL);
    maas_stream *s = NULL;
    maas_request r = MAAS_REQUEST_INIT;
    const maas_token *t;
    const maas_details *d;
    size_t n = 0;
    maas_status st;
    (void)state;
    r.model = "maas-model-llama-3.1-8b"; /* a product name works too */
    r.prompt = PROMPT;
    r.max_new_tokens = 7;
    assert_int_equal(maas_stream_open(&s, c, &r), MAAS_OK);
    assert_null(maas_stream_details(s));
    while ((st = maas_stream_next(s, &t)) == MAAS_OK) {
        assert_int_equal(t->index, n);
        n++;
    }
    assert_int_equal(st, MAAS_DONE);
    assert_null(t);
    assert_int_equal(n, 7);
    d = maas_stream_details(s);
    assert_non_null(d);
    assert_int_equal(d->generated_tokens, 7);
    assert_null(maas_stream_error(s));
    /* After the end, the end again. */
    assert_int_equal(maas_stream_next(s, &t), MAAS_DONE);
    maas_stream_free(s);
    maas_stream_free(NULL);
    finish(c);
}

static void test_generate_text(void **state)
{
    maas_client *c = client_with(NULL);
    maas_request r = MAAS_REQUEST_INIT;
    struct collected *col = collected_new();
    char *text = NULL;
    size_t len = 0;
    (void)state;
    r.model = MISTRAL;
    r.prompt = PROMPT;
    r.max_new_tokens = 30;
    r.temperature = 0.5;
    assert_int_equal(maas_generate_text(&text, &len, c, &r), MAAS_OK);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    /* Deterministic emulator: the same request streams the same text. */
    assert_int_equal(gen(c, PROMPT, 30, col), MAAS_OK);
    assert_int_equal(col->len, len);
    assert_memory_equal(col->text, text, len);
    maas_free(text);
    free(col);
    finish(c);
}

/* ---- framing faults: the same text whatever the split ------------------------ */

static void check_framing(const char *fault)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    char prompt[128];
    snprintf(prompt, sizeof prompt, "Tell me a joke [[fault:%s]]", fault);
    /* At most the emulator's shortest natural length: the stream ends on LENGTH. */
    assert_int_equal(gen(c, prompt, 20, col), MAAS_OK);
    assert_int_equal(col->tokens, 20);
    assert_int_equal(col->details.finish_reason, MAAS_FINISH_LENGTH);
    assert_int_equal(col->len, col->details.generated_text_len);
    assert_memory_equal(col->text, col->details_text, col->len);
    free(col);
    finish(c);
}

static void test_split_every_byte(void **state) { (void)state; check_framing("split"); }
static void test_coalesced(void **state) { (void)state; check_framing("coalesce"); }
static void test_crlf(void **state) { (void)state; check_framing("crlf"); }
static void test_blank_lines(void **state) { (void)state; check_framing("blank-lines"); }

/* ---- stream failures ------------------------------------------------------------ */

static void test_mid_stream_error(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    const maas_error *e;
    (void)state;
    assert_int_equal(gen(c, "Tell me a joke [[fault:error-after=3]]", 20, col), MAAS_ERR_STREAM);
    assert_int_equal(col->tokens, 3);
    assert_false(col->got_details);
    e = maas_last_error();
    assert_non_null(e);
    assert_int_equal(e->status, MAAS_ERR_STREAM);
    assert_int_equal(e->http_status, 200);
    assert_int_equal(e->grpc_code, 14);
    assert_string_equal(e->message, "sorry, we are at maximum capacity. Please come back later");
    assert_int_equal(strlen(e->request_id), 36);
    assert_int_equal(e->attempts, 1); /* tokens reached the caller: no retry */
    free(col);
    finish(c);
}

static void test_dropped_connection(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    const maas_error *e;
    (void)state;
    assert_int_equal(gen(c, "Tell me a joke [[fault:drop-after=5]]", 20, col), MAAS_ERR_TRUNCATED);
    assert_int_equal(col->tokens, 5);
    e = maas_last_error();
    assert_non_null(strstr(e->message, "cut after 5 tokens"));
    assert_int_equal(e->attempts, 1);
    free(col);
    finish(c);
}

static void test_truncated_stream(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    const maas_error *e;
    (void)state;
    assert_int_equal(gen(c, "Tell me a joke [[fault:truncate-after=4]]", 20, col),
                     MAAS_ERR_TRUNCATED);
    assert_int_equal(col->tokens, 4);
    assert_false(col->got_details);
    e = maas_last_error();
    assert_non_null(strstr(e->message, "without its final message"));
    free(col);
    finish(c);
}

static void test_cut_before_first_token_is_retried(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    (void)state;
    /* The directive applies to every attempt: all three are cut before an answer. */
    assert_int_equal(gen(c, "Tell me a joke [[fault:drop-after=0]]", 20, col), MAAS_ERR_NETWORK);
    assert_int_equal(col->tokens, 0);
    assert_int_equal(maas_last_error()->attempts, 3);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_RETRIES), 2);
    /* libcurl itself resends once when a reused keep-alive connection dies
     * before answering (it cannot tell that from a stale connection): the
     * server sees the first attempt twice. */
    assert_int_equal(emu_stat(&E, "generate_requests"), 4);
    free(col);
    finish(c);
}

static void test_malformed_line(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    const maas_error *e;
    (void)state;
    assert_int_equal(gen(c, "Tell me a joke [[fault:malformed-after=2]]", 20, col),
                     MAAS_ERR_PROTOCOL);
    assert_int_equal(col->tokens, 2);
    e = maas_last_error();
    assert_non_null(strstr(e->message, "line 3"));
    free(col);
    finish(c);
}

static void small_lines(maas_client_options *o) { o->max_line_bytes = 100; }

static void test_line_too_long(void **state)
{
    maas_client *c = client_with(small_lines);
    struct collected *col = collected_new();
    (void)state;
    assert_int_equal(gen(c, PROMPT, 5, col), MAAS_ERR_LINE_TOO_LONG);
    assert_int_equal(col->tokens, 0);
    assert_non_null(strstr(maas_last_error()->message, "100"));
    free(col);
    finish(c);
}

/* ---- HTTP errors ----------------------------------------------------------------- */

static void no_retries(maas_client_options *o) { o->max_retries = MAAS_RETRIES_OFF; }

static void check_status(const char *fault, maas_status want, int http, int grpc)
{
    maas_client *c = client_with(no_retries);
    struct collected *col = collected_new();
    const maas_error *e;
    char prompt[128];
    snprintf(prompt, sizeof prompt, "Tell me a joke [[fault:%s]]", fault);
    assert_int_equal(gen(c, prompt, 5, col), want);
    e = maas_last_error();
    assert_int_equal(e->status, want);
    assert_int_equal(e->http_status, http);
    assert_int_equal(e->grpc_code, grpc);
    assert_true(e->message[0] != '\0');
    assert_int_equal(e->attempts, 1);
    assert_int_equal(col->tokens, 0);
    free(col);
    finish(c);
}

static void test_http_429(void **state) { (void)state; check_status("status=429", MAAS_ERR_RATE_LIMITED, 429, 8); }
static void test_http_500(void **state) { (void)state; check_status("status=500", MAAS_ERR_SERVER, 500, 13); }
static void test_http_503(void **state) { (void)state; check_status("status=503", MAAS_ERR_UNAVAILABLE, 503, 14); }
static void test_http_403(void **state) { (void)state; check_status("status=403", MAAS_ERR_PERMISSION_DENIED, 403, 7); }
static void test_http_404(void **state) { (void)state; check_status("status=404", MAAS_ERR_UNKNOWN_MODEL, 404, 5); }
static void test_http_400(void **state) { (void)state; check_status("status=400", MAAS_ERR_INVALID_REQUEST, 400, 3); }

static void test_retry_after_reported(void **state)
{
    maas_client *c = client_with(no_retries);
    struct collected *col = collected_new();
    (void)state;
    assert_int_equal(gen(c, "Tell me a joke [[fault:status=429]] [[fault:retry-after=7]]", 5, col),
                     MAAS_ERR_RATE_LIMITED);
    assert_true(fabs(maas_last_error()->retry_after - 7.0) < 1e-9);
    free(col);
    finish(c);
}

static void test_retries_then_success(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    (void)state;
    assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "status=503", 2), 200);
    assert_int_equal(gen(c, PROMPT, 5, col), MAAS_OK);
    assert_int_equal(col->tokens, 5);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_RETRIES), 2);
    assert_int_equal(col->details.attempts, 3); /* reported with the result too */
    assert_int_equal(emu_stat(&E, "generate_requests"), 3);
    free(col);
    finish(c);
}

static void test_models_retried(void **state)
{
    maas_client *c = client_with(NULL);
    maas_model_list *l = NULL;
    (void)state;
    assert_int_equal(emu_fault(&E, "/v1/maas/models", "status=502", 1), 200);
    assert_int_equal(maas_models_list(&l, c), MAAS_OK);
    assert_int_equal(maas_model_list_count(l), 5);
    assert_int_equal(emu_stat(&E, "models_requests"), 2);
    maas_model_list_free(l);
    finish(c);
}

static void test_models_error_shape(void **state)
{
    maas_client *c = client_with(no_retries);
    maas_model_list *l = NULL;
    const maas_error *e;
    (void)state;
    assert_int_equal(emu_fault(&E, "/v1/maas/models", "status=503", 1), 200);
    assert_int_equal(maas_models_list(&l, c), MAAS_ERR_UNAVAILABLE);
    assert_null(l);
    e = maas_last_error();
    assert_int_equal(e->grpc_code, 14); /* from the bare Status body */
    assert_string_equal(e->message, "sorry, we are at maximum capacity. Please come back later");
    finish(c);
}

/* ---- tokens ------------------------------------------------------------------------ */

static void test_refused_token_is_replayed_once(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    (void)state;
    assert_int_equal(maas_client_authenticate(c), MAAS_OK);
    /* The server forgets every token: the next call gets a 401, fetches a new one, replays. */
    assert_int_equal(emu_post(&E, "/emulator/expire-tokens", NULL), 200);
    assert_int_equal(gen(c, PROMPT, 5, col), MAAS_OK);
    assert_int_equal(col->tokens, 5);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REQUESTS), 2);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REPLAYS), 1);
    assert_int_equal(emu_stat(&E, "token_requests"), 2);
    free(col);
    finish(c);
}

static void test_persistent_401(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    const maas_error *e;
    (void)state;
    /* Every attempt's token is refused: one replay, then the failure. */
    assert_int_equal(gen(c, "Tell me a joke [[fault:expire-token]]", 5, col),
                     MAAS_ERR_UNAUTHENTICATED);
    e = maas_last_error();
    assert_int_equal(e->http_status, 401);
    assert_int_equal(e->grpc_code, 16);
    assert_int_equal(e->attempts, 2);
    assert_int_equal(emu_stat(&E, "token_requests"), 2);
    free(col);
    finish(c);
}

static void bad_secret(maas_client_options *o) { o->client_secret = "wrong-secret"; }

static void test_refused_credentials(void **state)
{
    maas_client *c = client_with(bad_secret);
    struct collected *col = collected_new();
    const maas_error *e;
    (void)state;
    assert_int_equal(gen(c, PROMPT, 5, col), MAAS_ERR_AUTH);
    e = maas_last_error();
    assert_int_equal(e->http_status, 401);
    assert_non_null(strstr(e->message, "invalid_client"));
    /* The secret is not in the error. */
    assert_null(strstr(e->message, "wrong-secret"));
    assert_int_equal(emu_stat(&E, "generate_requests"), 0);
    assert_int_equal(emu_stat(&E, "token_requests"), 1);
    free(col);
    finish(c);
}

static char static_token[4096];
static void use_static_token(maas_client_options *o)
{
    o->client_id = NULL;
    o->client_secret = NULL;
    o->token = static_token;
}

static void test_static_token(void **state)
{
    maas_client *c;
    struct collected *col = collected_new();
    (void)state;
    assert_int_equal(emu_fetch_token(&E, static_token, sizeof static_token), 0);
    c = client_with(use_static_token);
    assert_int_equal(gen(c, PROMPT, 5, col), MAAS_OK);
    assert_int_equal(maas_client_counter(c, MAAS_COUNTER_TOKEN_REQUESTS), 0);
    assert_int_equal(emu_stat(&E, "token_requests"), 1); /* the harness's own */
    /* A refused static token is not replaced: UNAUTHENTICATED after one attempt. */
    assert_int_equal(emu_post(&E, "/emulator/expire-tokens", NULL), 200);
    assert_int_equal(gen(c, PROMPT, 5, col), MAAS_ERR_UNAUTHENTICATED);
    assert_int_equal(maas_last_error()->attempts, 1);
    free(col);
    finish(c);
}

/* ---- the caller's mistakes: caught before sending --------------------------------------- */

static void check_invalid(int max_tokens, double temperature, const char *prompt, const char *model,
                          maas_status want, const char *needle)
{
    maas_client *c = client_with(NULL);
    maas_request r = MAAS_REQUEST_INIT;
    r.model = model;
    r.prompt = prompt;
    r.max_new_tokens = max_tokens;
    r.temperature = temperature;
    assert_int_equal(maas_generate(c, &r, NULL, NULL, NULL), want);
    assert_non_null(strstr(maas_last_error()->message, needle));
    assert_int_equal(emu_stat(&E, "generate_requests"), 0);
    finish(c);
}

static void test_invalid_max_tokens(void **state)
{
    (void)state;
    check_invalid(2048, 0.5, PROMPT, MISTRAL, MAAS_ERR_INVALID_ARGUMENT, "max_new_tokens");
    check_invalid(-1, 0.5, PROMPT, MISTRAL, MAAS_ERR_INVALID_ARGUMENT, "max_new_tokens");
}

static void test_invalid_temperature(void **state)
{
    (void)state;
    check_invalid(5, 1.0, PROMPT, MISTRAL, MAAS_ERR_INVALID_ARGUMENT, "temperature");
    check_invalid(5, -0.1, PROMPT, MISTRAL, MAAS_ERR_INVALID_ARGUMENT, "temperature");
    check_invalid(5, NAN, PROMPT, MISTRAL, MAAS_ERR_INVALID_ARGUMENT, "temperature");
    /* Below 1 as a double, 1.0 as the service's float32: refused before sending. */
    check_invalid(5, 0.99999999, PROMPT, MISTRAL, MAAS_ERR_INVALID_ARGUMENT, "temperature");
}

static void test_invalid_prompt(void **state)
{
    (void)state;
    check_invalid(5, 0.5, "a", MISTRAL, MAAS_ERR_INVALID_ARGUMENT, "prompt");
    check_invalid(5, 0.5, "\xff\xfe", MISTRAL, MAAS_ERR_INVALID_ARGUMENT, "UTF-8");
    check_invalid(5, 0.5, NULL, MISTRAL, MAAS_ERR_INVALID_ARGUMENT, "prompt");
}

static void test_unknown_model(void **state)
{
    (void)state;
    check_invalid(5, 0.5, PROMPT, "gpt-17", MAAS_ERR_UNKNOWN_MODEL, "gpt-17");
}

static void test_params_json(void **state)
{
    maas_client *c = client_with(NULL);
    maas_request r = MAAS_REQUEST_INIT;
    struct collected *col = collected_new();
    (void)state;
    r.model = MISTRAL;
    r.prompt = PROMPT;
    r.max_new_tokens = 6;
    r.params_json = "{\"top_k\": 5, \"max_new_tokens\": 900}";
    /* Unknown params pass through (the server ignores them); the checked field wins. */
    assert_int_equal(maas_generate(c, &r, on_token, on_details, col), MAAS_OK);
    assert_int_equal(col->tokens, 6);
    r.params_json = "[1, 2]";
    assert_int_equal(maas_generate(c, &r, NULL, NULL, NULL), MAAS_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(maas_last_error()->message, "params_json"));
    free(col);
    finish(c);
}

static void test_options_version(void **state)
{
    maas_client_options o;
    maas_client *c = (maas_client *)&o;
    (void)state;
    emu_options(&E, &o);
    o.version = 0;
    assert_int_equal(maas_client_new(&c, &o), MAAS_ERR_OPTIONS_VERSION);
    assert_null(c);
    o.version = MAAS_CLIENT_OPTIONS_VERSION + 1;
    assert_int_equal(maas_client_new(&c, &o), MAAS_ERR_OPTIONS_VERSION);
    assert_non_null(strstr(maas_last_error()->message, "version"));
    assert_int_equal(maas_client_options_init(&o, 99), MAAS_ERR_OPTIONS_VERSION);
}

static void test_environment(void **state)
{
    maas_client *c = NULL;
    struct collected *col = collected_new();
    (void)state;
    emu_export_env(&E);
    assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
    assert_int_equal(gen(c, PROMPT, 3, col), MAAS_OK);
    maas_client_free(c);
    unsetenv("MAAS_CLIENT_SECRET");
    assert_int_equal(maas_client_new(&c, NULL), MAAS_ERR_CONFIG);
    assert_non_null(strstr(maas_last_error()->message, "MAAS_CLIENT_SECRET"));
    setenv("MAAS_CLIENT_SECRET", "test-secret", 1);
    unsetenv("MAAS_CLOUD_ACCOUNT");
    assert_int_equal(maas_client_new(&c, NULL), MAAS_OK);
    assert_int_equal(gen(c, PROMPT, 3, col), MAAS_ERR_CONFIG);
    assert_non_null(strstr(maas_last_error()->message, "MAAS_CLOUD_ACCOUNT"));
    setenv("MAAS_CLOUD_ACCOUNT", "123456789012", 1);
    free(col);
    finish(c);
}

static void wrong_account(maas_client_options *o) { o->cloud_account = "999999999999"; }

static void test_foreign_cloud_account(void **state)
{
    maas_client *c = client_with(wrong_account);
    struct collected *col = collected_new();
    (void)state;
    assert_int_equal(gen(c, PROMPT, 3, col), MAAS_ERR_PERMISSION_DENIED);
    assert_int_equal(maas_last_error()->http_status, 403);
    free(col);
    finish(c);
}

/* ---- clocks and cancellation --------------------------------------------------------- */

static void short_idle(maas_client_options *o)
{
    o->idle_timeout_ms = 300;
    o->max_retries = MAAS_RETRIES_OFF;
}

static void test_stall_trips_idle_clock(void **state)
{
    maas_client *c = client_with(short_idle);
    struct collected *col = collected_new();
    (void)state;
    assert_int_equal(gen(c, "Tell me a joke [[fault:stall-after=3]]", 20, col),
                     MAAS_ERR_IDLE_TIMEOUT);
    assert_int_equal(col->tokens, 3);
    assert_non_null(strstr(maas_last_error()->message, "300 ms"));
    free(col);
    finish(c);
}

static void test_drip_trips_idle_clock(void **state)
{
    maas_client *c = client_with(short_idle);
    struct collected *col = collected_new();
    (void)state;
    /* Bytes keep arriving every 20 ms, but no whole message within 300 ms. */
    assert_int_equal(gen(c, "Tell me a joke [[fault:drip=20]]", 20, col), MAAS_ERR_IDLE_TIMEOUT);
    assert_int_equal(col->tokens, 0);
    free(col);
    finish(c);
}

static void short_deadline(maas_client_options *o) { o->deadline_ms = 400; }

static void test_deadline(void **state)
{
    maas_client *c = client_with(short_deadline);
    struct collected *col = collected_new();
    (void)state;
    /* A token every 100 ms keeps the idle clock happy; the deadline still ends it. */
    assert_int_equal(gen(c, "Tell me a joke [[fault:delay=100]]", 50, col), MAAS_ERR_DEADLINE);
    assert_true(col->tokens >= 1 && col->tokens < 50);
    free(col);
    finish(c);
}

static void deadline_and_retries(maas_client_options *o)
{
    o->deadline_ms = 1000;
    o->max_retries = 5;
    o->retry_base_ms = 10;
    o->retry_max_ms = 10;
}

static void test_deadline_spans_retries(void **state)
{
    maas_client *c = client_with(deadline_and_retries);
    struct collected *col = collected_new();
    (void)state;
    /* Every attempt answers 503 after 400 ms. The 1 s deadline counts from
     * the first attempt: it ends the third, before the retries run out. */
    assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "first-byte-delay=400", 10), 200);
    assert_int_equal(emu_fault(&E, "/v1/maas/generatestream", "status=503", 10), 200);
    assert_int_equal(gen(c, PROMPT, 5, col), MAAS_ERR_DEADLINE);
    assert_true(maas_last_error()->attempts >= 1 && maas_last_error()->attempts <= 3);
    assert_int_equal(col->tokens, 0);
    free(col);
    finish(c);
}

static void test_cancel_from_callback(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    (void)state;
    col->cancel_after = 3;
    /* All 30 tokens arrive in one write: buffered, yet none is handed out after the cancel. */
    assert_int_equal(gen(c, "Tell me a joke [[fault:coalesce]]", 30, col), MAAS_ERR_CANCELLED);
    assert_int_equal(col->tokens, 3);
    assert_false(col->got_details);
    assert_string_equal(maas_last_error()->message, "cancelled by the token callback");
    free(col);
    finish(c);
}

static void test_cancel_from_callback_closes_connection(void **state)
{
    maas_client *c = client_with(NULL);
    struct collected *col = collected_new();
    (void)state;
    col->cancel_after = 3;
    assert_int_equal(gen(c, "Tell me a joke [[fault:delay=20]]", 100, col), MAAS_ERR_CANCELLED);
    assert_int_equal(col->tokens, 3);
    /* Checked before maas_client_free, which would close it anyway: the abandoned
     * stream's connection is closed, not left half-read in the pool. */
    assert_int_equal(emu_wait_api_connections(&E, 0, 5000), 0);
    assert_int_equal(emu_wait_stat(&E, "streams_active", 0, 5000), 0);
    free(col);
    finish(c);
}

struct canceller {
    maas_stream *s;
};

static void *cancel_soon(void *p)
{
    struct canceller *k = p;
    maas_stream_cancel(k->s);
    return NULL;
}

static void test_cancel_from_another_thread(void **state)
{
    maas_client *c = client_with(NULL);
    maas_request r = MAAS_REQUEST_INIT;
    maas_stream *s = NULL;
    const maas_token *t;
    struct canceller k;
    pthread_t th;
    (void)state;
    r.model = MISTRAL;
    r.prompt = "Tell me a joke [[fault:stall-after=1]]";
    r.max_new_tokens = 10;
    assert_int_equal(maas_stream_open(&s, c, &r), MAAS_OK);
    assert_int_equal(maas_stream_next(s, &t), MAAS_OK);
    /* The next call blocks on a stalled server until the other thread cancels. */
    k.s = s;
    assert_int_equal(pthread_create(&th, NULL, cancel_soon, &k), 0);
    assert_int_equal(maas_stream_next(s, &t), MAAS_ERR_CANCELLED);
    pthread_join(th, NULL);
    assert_int_equal(maas_stream_error(s)->status, MAAS_ERR_CANCELLED);
    maas_stream_free(s);
    finish(c);
}

int main(void)
{
    /* What means nothing through a front end (docs/testing.md). */
    static const char *const left_out[] = {
        "test_one_token_and_one_connection",
        "test_dropped_connection",
        "test_cut_before_first_token_is_retried",
        "test_cancel_from_callback_closes_connection",
    };
    static const char *const why[] = {
        "counts the emulator's connections, which through the front are nghttpx's pooled ones",
        "the emulator's cut reaches the client as nghttpx's RST_STREAM, "
        "before which 0 to all of the tokens sent arrive",
        "nghttpx answers 502 for a backend that closed before answering: "
        "the client never sees the drop",
        "counts the emulator's connections, which through the front are nghttpx's",
    };
    struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_models, reset),
        cmocka_unit_test_setup(test_generate_text_matches_details, reset),
        cmocka_unit_test_setup(test_eos_finish, reset),
        cmocka_unit_test_setup(test_one_token_and_one_connection, reset),
        cmocka_unit_test_setup(test_user_agent, reset),
        cmocka_unit_test_setup(test_pull_iterator, reset),
        cmocka_unit_test_setup(test_generate_text, reset),
        cmocka_unit_test_setup(test_split_every_byte, reset),
        cmocka_unit_test_setup(test_coalesced, reset),
        cmocka_unit_test_setup(test_crlf, reset),
        cmocka_unit_test_setup(test_blank_lines, reset),
        cmocka_unit_test_setup(test_mid_stream_error, reset),
        cmocka_unit_test_setup(test_dropped_connection, reset),
        cmocka_unit_test_setup(test_truncated_stream, reset),
        cmocka_unit_test_setup(test_cut_before_first_token_is_retried, reset),
        cmocka_unit_test_setup(test_malformed_line, reset),
        cmocka_unit_test_setup(test_line_too_long, reset),
        cmocka_unit_test_setup(test_http_429, reset),
        cmocka_unit_test_setup(test_http_500, reset),
        cmocka_unit_test_setup(test_http_503, reset),
        cmocka_unit_test_setup(test_http_403, reset),
        cmocka_unit_test_setup(test_http_404, reset),
        cmocka_unit_test_setup(test_http_400, reset),
        cmocka_unit_test_setup(test_retry_after_reported, reset),
        cmocka_unit_test_setup(test_retries_then_success, reset),
        cmocka_unit_test_setup(test_models_retried, reset),
        cmocka_unit_test_setup(test_models_error_shape, reset),
        cmocka_unit_test_setup(test_refused_token_is_replayed_once, reset),
        cmocka_unit_test_setup(test_persistent_401, reset),
        cmocka_unit_test_setup(test_refused_credentials, reset),
        cmocka_unit_test_setup(test_static_token, reset),
        cmocka_unit_test_setup(test_invalid_max_tokens, reset),
        cmocka_unit_test_setup(test_invalid_temperature, reset),
        cmocka_unit_test_setup(test_invalid_prompt, reset),
        cmocka_unit_test_setup(test_unknown_model, reset),
        cmocka_unit_test_setup(test_params_json, reset),
        cmocka_unit_test_setup(test_options_version, reset),
        cmocka_unit_test_setup(test_environment, reset),
        cmocka_unit_test_setup(test_foreign_cloud_account, reset),
        cmocka_unit_test_setup(test_stall_trips_idle_clock, reset),
        cmocka_unit_test_setup(test_drip_trips_idle_clock, reset),
        cmocka_unit_test_setup(test_deadline, reset),
        cmocka_unit_test_setup(test_deadline_spans_retries, reset),
        cmocka_unit_test_setup(test_cancel_from_callback, reset),
        cmocka_unit_test_setup(test_cancel_from_callback_closes_connection, reset),
        cmocka_unit_test_setup(test_cancel_from_another_thread, reset),
    };
    int n = emu_leave_out_through_front(tests, sizeof tests / sizeof tests[0], left_out, why,
                                        sizeof left_out / sizeof left_out[0]);
    if (n < 0)
        return 1;
    /* cmocka ignores a failing teardown: the emulator's exit status is checked here. */
    return emu_suite_result(_cmocka_run_group_tests(emu_through_front() ? "generate over h2"
                                                                          : "generate",
                                                    tests, (size_t)n, group_setup,
                                                    group_teardown),
                            &E);
}
