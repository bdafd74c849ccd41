// The C++ layer (<maas/maas.hpp>) against maas-emulator: handles and their
// moves, the three ways to stream, callbacks that stop or throw, and every
// field of maas::Error. A plain main: each test runs in turn, a failed check
// prints its line, and the exit status counts the failures.
#include <maas/maas.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

extern "C" {
#include "harness.h"
}

namespace {

emu E;
int failed_checks;

const char *const MISTRAL = "mistralai/Mistral-7B-Instruct-v0.1";

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failed_checks++;                                                          \
        }                                                                             \
    } while (0)

// Run `f`; CHECK that it throws maas::Error and return it.
maas::Error expect_error(const std::function<void()> &f, const char *what)
{
    try {
        f();
    } catch (const maas::Error &e) {
        return e;
    }
    std::fprintf(stderr, "%s: no maas::Error was thrown\n", what);
    failed_checks++;
    return maas::Error::from(MAAS_OK, nullptr);
}

maas_client_options options()
{
    maas_client_options o;
    emu_options(&E, &o);
    return o;
}

maas::Client client() { return maas::Client(options()); }

maas::Request request(const char *prompt = "Tell me a joke", int max_new_tokens = 12)
{
    maas::Request r;
    r.model = MISTRAL;
    r.prompt = prompt;
    r.max_new_tokens = max_new_tokens;
    return r;
}

// ---- tests ------------------------------------------------------------------

void test_version()
{
    CHECK(maas::version() == MAAS_VERSION_STRING);
}

void test_models()
{
    maas::Client c = client();
    maas::ModelList list = c.models();
    CHECK(list.size() == 5);
    CHECK(!list.empty());
    std::vector<std::string> names;
    for (maas::Model m : list)
        names.emplace_back(m.name());
    CHECK(names.size() == 5);
    CHECK(names.at(2) == MISTRAL);
    CHECK(list[2].product_name() == "maas-model-mistral-7b-v0.1");
    CHECK(list[2].product_id() == "269c3034-e6c7-4359-9e77-c3efedfaa778");
    CHECK(!list[5]);
    bool out_of_range = false;
    try {
        list.at(5);
    } catch (const std::out_of_range &) {
        out_of_range = true;
    }
    CHECK(out_of_range);

    std::optional<maas::Model> by_product = list.find("maas-model-mistral-7b-v0.1");
    CHECK(by_product && by_product->name() == MISTRAL);
    CHECK(!list.find("no/such-model"));

    // A request may name its model by the list's entry.
    maas::Request r = request();
    r.model.clear();
    r.model_info = *by_product;
    CHECK(!c.generate_text(r).empty());
}

void test_generate_text_view()
{
    maas::Client c = client();
    std::string text;
    size_t calls = 0;
    maas::Details d = c.generate(request(), [&](std::string_view t) {
        text += t;
        calls++;
    });
    CHECK(calls == 12);
    CHECK(!text.empty());
    CHECK(text == d.generated_text);
    CHECK(d.finish_reason == MAAS_FINISH_LENGTH);
    CHECK(d.finish_reason_name == "FINISH_REASON_LENGTH");
    CHECK(d.generated_tokens == 12);
    CHECK(!d.seed); // greedy decoding: no seed
    CHECK(d.request_id.size() == 36);
    CHECK(d.attempts == 1);
    // The same request streams the same text.
    CHECK(c.generate_text(request()) == text);
}

void test_generate_tokens()
{
    maas::Client c = client();
    std::string text;
    size_t next_index = 0, specials = 0, with_logprob = 0;
    bool indexes_ok = true;
    maas::Request r = request("Tell me a joke", 0); // natural length: ends with </s>
    r.temperature = 0.5;
    maas::Details d = c.generate(r, [&](const maas::Token &t) {
        indexes_ok = indexes_ok && t.index == next_index++;
        if (t.special)
            specials++;
        else
            text += t.text;
        if (t.logprob)
            with_logprob++;
    });
    CHECK(indexes_ok);
    CHECK(specials == 1);
    CHECK(with_logprob > 0 && with_logprob < next_index); // every 7th token has none
    CHECK(d.finish_reason == MAAS_FINISH_EOS_TOKEN);
    CHECK(d.generated_tokens == next_index);
    CHECK(d.seed.has_value()); // sampling: the server reports its seed
    CHECK(text == d.generated_text);
}

void test_stop_by_returning_false()
{
    maas::Client c = client();
    size_t calls = 0;
    maas::Error e = expect_error([&] { c.generate(request(), [&](std::string_view) { return ++calls < 3; }); },
                                 "stop");
    CHECK(e.status() == MAAS_ERR_CANCELLED);
    CHECK(calls == 3);
    CHECK(c.generate_text(request()).size() > 0); // the client goes on
}

struct Mine {
    int value;
};

void test_exception_from_callback()
{
    maas::Client c = client();
    size_t calls = 0;
    int caught = 0;
    try {
        c.generate(request(), [&](const maas::Token &) {
            if (++calls == 2)
                throw Mine{42};
        });
    } catch (const Mine &m) {
        caught = m.value;
    }
    CHECK(caught == 42);
    CHECK(calls == 2);
    // Also through a stream's run().
    caught = 0;
    try {
        c.stream(request()).run([](std::string_view) { throw Mine{7}; });
    } catch (const Mine &m) {
        caught = m.value;
    }
    CHECK(caught == 7);
    CHECK(!c.generate_text(request()).empty());
}

void test_stream_next()
{
    maas::Client c = client();
    maas::Stream s = c.stream(request());
    CHECK(!s.details()); // not finished
    std::string text;
    size_t n = 0;
    while (std::optional<maas::Token> t = s.next()) {
        CHECK(t->index == n);
        n++;
        text += t->text;
    }
    CHECK(n == 12);
    CHECK(!s.next()); // finished stays finished
    std::optional<maas::Details> d = s.details();
    CHECK(d && d->generated_text == text && d->generated_tokens == 12);
}

void test_stream_range_for_and_run()
{
    maas::Client c = client();
    std::string a, b;
    for (const maas::Token &t : c.stream(request()))
        a += t.text;
    maas::Details d = c.stream(request()).run([&](std::string_view t) { b += t; });
    CHECK(!a.empty());
    CHECK(a == b);
    CHECK(d.generated_text == a);
}

void test_stream_failure()
{
    maas::Client c = client();
    maas::Stream s = c.stream(request("Tell me a joke [[fault:truncate-after=3]]"));
    size_t n = 0;
    maas::Error e = expect_error([&] {
        while (s.next())
            n++;
    }, "truncated");
    CHECK(n == 3);
    CHECK(e.status() == MAAS_ERR_TRUNCATED);
    CHECK(e.http_status() == 200);
    CHECK(e.request_id().size() == 36);
    // Every later call reports the same failure.
    CHECK(expect_error([&] { s.next(); }, "again").status() == MAAS_ERR_TRUNCATED);
}

void test_error_fields()
{
    maas_client_options o = options();
    o.max_retries = MAAS_RETRIES_OFF;
    maas::Client c(o);
    maas::Error e = expect_error(
        [&] { c.generate_text(request("Tell me a joke [[fault:status=503]] [[fault:retry-after=7]]")); },
        "503");
    CHECK(e.status() == MAAS_ERR_UNAVAILABLE);
    CHECK(std::string(e.status_name()) == "MAAS_ERR_UNAVAILABLE");
    CHECK(e.http_status() == 503);
    CHECK(e.grpc_code() == 14);
    CHECK(e.message() == "sorry, we are at maximum capacity. Please come back later");
    CHECK(e.request_id().size() == 36);
    CHECK(e.attempts() == 1);
    CHECK(e.retry_after() == 7.0);
    CHECK(std::string(e.what()) ==
          std::string(maas_strerror(MAAS_ERR_UNAVAILABLE)) + ": " + e.message());
    // A copy keeps everything.
    maas::Error copy = e;
    CHECK(copy.request_id() == e.request_id() && copy.status() == e.status());

    maas::Error unknown = expect_error([&] { c.generate_text({"no/such-model", "Tell me a joke"}); },
                                       "unknown model");
    CHECK(unknown.status() == MAAS_ERR_UNKNOWN_MODEL);
    CHECK(unknown.http_status() == 0);

    maas::Error invalid = expect_error([&] { c.generate_text(request("x")); }, "short prompt");
    CHECK(invalid.status() == MAAS_ERR_INVALID_ARGUMENT);
}

void test_refused_credentials()
{
    maas_client_options o = options();
    o.client_secret = "wrong-secret";
    maas::Client c(o);
    maas::Error e = expect_error([&] { c.authenticate(); }, "credentials");
    CHECK(e.status() == MAAS_ERR_AUTH);
    CHECK(e.http_status() == 401);
    CHECK(e.message().find("invalid_client") != std::string::npos);
}

void test_constructors()
{
    maas_client_options o = options();
    o.version = MAAS_CLIENT_OPTIONS_VERSION + 1;
    CHECK(expect_error([&] { maas::Client c(o); }, "version").status() == MAAS_ERR_OPTIONS_VERSION);

    // From the environment.
    emu_export_env(&E);
    maas::Client env;
    CHECK(env.models().size() == 5);
    unsetenv("MAAS_CLIENT_ID");
    unsetenv("MAAS_TOKEN");
    CHECK(expect_error([] { maas::Client none; }, "no credentials").status() == MAAS_ERR_CONFIG);
}

void test_moves()
{
    maas::Client a = client();
    maas_client *raw = a.get();
    maas::Client b(std::move(a));
    CHECK(!a && a.get() == nullptr);
    CHECK(b.get() == raw);
    CHECK(expect_error([&] { a.models(); }, "moved-from").status() == MAAS_ERR_INVALID_ARGUMENT);
    a = std::move(b); // the empty client is replaced
    CHECK(a.get() == raw && !b);
    maas::Client other = client();
    a = std::move(other); // the old client is freed (valgrind checks)
    CHECK(a && !other);

    maas::ModelList l1 = a.models();
    maas::Model m = l1[2];
    maas::ModelList l2 = std::move(l1);
    CHECK(l1.empty() && l2.size() == 5);
    CHECK(m.name() == MISTRAL); // models stay valid while a list owns them
    l2 = a.models();
    CHECK(l2.size() == 5);

    // A stream moved mid-way goes on where it was.
    maas::Stream s1 = a.stream(request());
    std::optional<maas::Token> t = s1.next();
    CHECK(t && t->index == 0);
    maas::Stream s2 = std::move(s1);
    CHECK(!s1);
    t = s2.next();
    CHECK(t && t->index == 1);
    s2 = a.stream(request()); // the half-read stream is freed
    CHECK(s2.next()->index == 0);
    CHECK(expect_error([&] { s1.next(); }, "moved-from stream").status() == MAAS_ERR_INVALID_ARGUMENT);

    // Adopting a C handle, and releasing it again.
    maas_client *c_raw = nullptr;
    maas_client_options o = options();
    CHECK(maas_client_new(&c_raw, &o) == MAAS_OK);
    maas::Client adopted(c_raw);
    CHECK(adopted.models().size() == 5);
    maas_client_free(adopted.release());
    CHECK(!adopted);
}

void test_cancel_from_another_thread()
{
    maas::Client c = client();
    maas::Stream s = c.stream(request("Tell me a joke [[fault:delay=200]]", 50));
    CHECK(s.next().has_value());
    auto start = std::chrono::steady_clock::now();
    // No sleep first: a cancel that lands before next() blocks must end it too.
    // How soon a cancel wakes a blocked call is test_cancel.c's.
    std::thread canceller([&s] { s.cancel(); });
    maas::Error e = expect_error([&] {
        while (s.next()) {
        }
    }, "cancel");
    canceller.join();
    CHECK(e.status() == MAAS_ERR_CANCELLED);
    // Well before the 49 remaining tokens at 200 ms each.
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
}

struct Test {
    const char *name;
    void (*run)();
};

const Test tests[] = {
    {"version", test_version},
    {"models", test_models},
    {"generate_text_view", test_generate_text_view},
    {"generate_tokens", test_generate_tokens},
    {"stop_by_returning_false", test_stop_by_returning_false},
    {"exception_from_callback", test_exception_from_callback},
    {"stream_next", test_stream_next},
    {"stream_range_for_and_run", test_stream_range_for_and_run},
    {"stream_failure", test_stream_failure},
    {"error_fields", test_error_fields},
    {"refused_credentials", test_refused_credentials},
    {"constructors", test_constructors},
    {"moves", test_moves},
    {"cancel_from_another_thread", test_cancel_from_another_thread},
};

} // namespace

int main()
{
    if (emu_start(&E, nullptr) != 0)
        return 1;
    int failed_tests = 0, n = 0;
    for (const Test &t : tests) {
        int before = failed_checks;
        n++;
        try {
            t.run();
        } catch (const std::exception &e) {
            std::fprintf(stderr, "%s: unexpected exception: %s\n", t.name, e.what());
            failed_checks++;
        }
        bool ok = failed_checks == before;
        failed_tests += !ok;
        std::printf("%s - %s\n", ok ? "ok" : "not ok", t.name);
    }
    int rc = emu_stop(&E);
    if (rc != 0)
        std::fprintf(stderr, "maas-emulator exited with %d\n", rc);
    std::printf("%d passed, %d failed\n", n - failed_tests, failed_tests);
    if (rc != 0)
        failed_tests++;
    return failed_tests ? 1 : 0;
}
