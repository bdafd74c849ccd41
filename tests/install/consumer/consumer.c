/*
 * A program built against libmaas as its users build it (pkg-config, static,
 * a meson subproject, CMake): stream a short generation from the server that
 * the environment names (MAAS_CLIENT_ID, ..., MAAS_API_BASE_URL) and print
 * its text. Exit status 0 only when text arrived and the header and the
 * library agree on the version.
 */
#include <stdio.h>
#include <string.h>

#include <maas/maas.h>

struct got {
    size_t bytes;
    char finish[64];
};

static int on_token(const maas_token *t, void *payload)
{
    struct got *g = payload;
    if (!t->special) {
        fwrite(t->text, 1, t->text_len, stdout);
        g->bytes += t->text_len;
    }
    return 0;
}

static int on_details(const maas_details *d, void *payload)
{
    struct got *g = payload;
    snprintf(g->finish, sizeof g->finish, "%s", d->finish_reason_name);
    return 0;
}

int main(void)
{
    maas_client *client = NULL;
    maas_request req = MAAS_REQUEST_INIT;
    struct got got = { 0, "" };
    maas_status st;

    if (strcmp(maas_version(), MAAS_VERSION_STRING) != 0) {
        fprintf(stderr, "consumer: header %s, library %s\n", MAAS_VERSION_STRING, maas_version());
        return 2;
    }
    st = maas_client_new(&client, NULL);
    if (st == MAAS_OK) {
        req.model = "mistralai/Mistral-7B-Instruct-v0.1";
        req.prompt = "Tell me a joke";
        req.max_new_tokens = 16;
        st = maas_generate(client, &req, on_token, on_details, &got);
    }
    putchar('\n');
    if (st != MAAS_OK) {
        fprintf(stderr, "consumer: %s: %s\n", maas_status_name(st), maas_last_error()->message);
    } else if (got.bytes == 0) {
        fprintf(stderr, "consumer: no text arrived\n");
        st = MAAS_ERR_INTERNAL;
    } else {
        fprintf(stderr, "consumer: %zu bytes, %s, libmaas %s\n", got.bytes, got.finish,
                maas_version());
    }
    maas_client_free(client);
    return st != MAAS_OK;
}
