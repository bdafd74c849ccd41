// The non-throwing path of <maas/maas.hpp>, compiled with -fno-exceptions
// (the build passes it): only the std::error_code overloads exist, and
// they are enough for a whole program against maas-emulator. A plain main:
// a failed check prints its line and the exit status counts the failures.
#include <maas/maas.hpp>

#include <cstdio>
#include <string>
#include <system_error>
#include <vector>

#if MAAS_CXX_EXCEPTIONS
#error "this test must be compiled with -fno-exceptions"
#endif

extern "C" {
#include "harness.h"
}

namespace {

emu E;
int failed_checks;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failed_checks++;                                                          \
        }                                                                             \
    } while (0)

maas_client_options options()
{
    maas_client_options o;
    emu_options(&E, &o);
    o.max_retries = MAAS_RETRIES_OFF;
    return o;
}

maas::Request request(const char *prompt, int max_new_tokens = 10)
{
    maas::Request r;
    r.model = "mistralai/Mistral-7B-Instruct-v0.1";
    r.prompt = prompt;
    r.max_new_tokens = max_new_tokens;
    return r;
}

void run_all()
{
    std::error_code ec;
    maas_client_options bad = options();
    bad.api_base_url = "ftp://nowhere";
    maas::Client none(bad, ec);
    CHECK(ec == MAAS_ERR_CONFIG && !none);
    CHECK(ec.category() == maas::error_category());
    CHECK(maas::last_error() && maas::last_error()->status == MAAS_ERR_CONFIG);

    maas::Client c(options(), ec);
    CHECK(!ec && c);
    c.authenticate(ec);
    CHECK(!ec);

    maas::ModelList l = c.models(ec);
    CHECK(!ec && l.size() == 5);

    std::string text;
    maas::Details d = c.generate(request("Tell me a joke"),
                                 [&](std::string_view t) { text += t; }, ec);
    CHECK(!ec && d.generated_tokens == 10 && d.generated_text == text);

    // A callback returning false stops the generation: MAAS_ERR_CANCELLED.
    int n = 0;
    c.generate(request("Tell me a joke", 20), [&](const maas::Token &) { return ++n < 2; }, ec);
    CHECK(ec == MAAS_ERR_CANCELLED && n == 2);

    std::string t2 = c.generate_text(request("Tell me a joke [[fault:status=503]]"), ec);
    CHECK(ec == MAAS_ERR_UNAVAILABLE && t2.empty());
    CHECK(maas::last_error()->http_status == 503);

    maas::Stream s = c.stream(request("Tell me a joke"), ec);
    CHECK(!ec);
    int tokens = 0;
    while (s.next(ec))
        tokens++;
    CHECK(!ec && tokens == 10 && s.details() && s.details()->generated_tokens == 10);

    maas::Multi m(c, ec);
    CHECK(!ec && m);
    std::vector<maas_status> ends;
    for (int i = 0; i < 3; i++) {
        m.add(request(i == 2 ? "Tell me a joke [[fault:status=429]]" : "Tell me a joke"), nullptr,
              [&](const maas::Done &done) { ends.push_back(done.status); }, ec);
        CHECK(!ec);
    }
    do {
        m.poll(1000, ec);
        CHECK(!ec);
    } while (!ec && m.running() > 0);
    CHECK(m.size() == 0);
    CHECK(ends.size() == 3);
    int ok = 0, limited = 0;
    for (maas_status st : ends) {
        ok += st == MAAS_OK;
        limited += st == MAAS_ERR_RATE_LIMITED;
    }
    CHECK(ok == 2 && limited == 1);
    // A bad request is refused at add(): no stream, `ec` set.
    maas::Multi::Id id = m.add(request("x"), nullptr, nullptr, ec);
    CHECK(ec == MAAS_ERR_INVALID_ARGUMENT && id == 0 && m.size() == 0);
}

} // namespace

int main()
{
    if (emu_start(&E, nullptr) != 0) {
        std::fprintf(stderr, "cannot start the emulator\n");
        return 99;
    }
    run_all();
    int rc = emu_stop(&E);
    if (rc != 0) {
        std::fprintf(stderr, "the emulator did not stop cleanly (%d)\n", rc);
        failed_checks++;
    }
    if (failed_checks)
        std::fprintf(stderr, "%d checks failed\n", failed_checks);
    return failed_checks ? 1 : 0;
}
