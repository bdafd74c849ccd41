#include <stdio.h>
#include <maas/maas.h>

static int print(const maas_token *t, void *payload) {
    (void)payload;                              /* no state needed here */
    if (!t->special) fwrite(t->text, 1, t->text_len, stdout);
    return 0;                                   /* nonzero would cancel */
}

int main(void) {
    maas_client *c;
    maas_request r = MAAS_REQUEST_INIT;
    maas_status st = maas_client_new(&c, NULL);   /* MAAS_CLIENT_ID, ... */
    if (st == MAAS_OK) {
        r.model = "mistralai/Mistral-7B-Instruct-v0.1";
        r.prompt = "Tell me a joke";
        st = maas_generate(c, &r, print, NULL, NULL);
    }
    if (st != MAAS_OK)
        fprintf(stderr, "\n%s: %s\n", maas_strerror(st), maas_last_error()->message);
    maas_client_free(c);
    return st != MAAS_OK;
}
