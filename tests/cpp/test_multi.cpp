// maas::Multi (lambdas, RAII, exceptions from callbacks, cancel), the
// random-access ModelList iterators, a Request that outlives its
// ModelList, and the std::error_code overloads with the "maas" category,
// against maas-emulator. A plain main, as test_cpp.cpp: a failed check
// prints its line and the exit status counts the failures.
#include <maas/maas.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <map>

#include <poll.h>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
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

maas_client_options options()
{
    maas_client_options o;
    emu_options(&E, &o);
    o.max_retries = MAAS_RETRIES_OFF;
    return o;
}

maas::Request request(const std::string &prompt, int max_new_tokens = 10)
{
    maas::Request r;
    r.model = MISTRAL;
    r.prompt = prompt;
    r.max_new_tokens = max_new_tokens;
    return r;
}

// Drive until the C multi says every stream has ended (the clocks of the
// streams bound it); then each must have left the Multi too.
void drain(maas::Multi &m)
{
    do
        m.poll(1000);
    while (m.running() > 0);
    CHECK(m.size() == 0);
}

void test_random_access_iterators()
{
    static_assert(std::is_same_v<std::iterator_traits<maas::ModelList::iterator>::iterator_category,
                                 std::random_access_iterator_tag>);
    maas::Client c(options());
    maas::ModelList l = c.models();
    CHECK(l.size() == 5);
    auto b = l.begin(), e = l.end();
    CHECK(e - b == 5);
    CHECK(std::distance(b, e) == 5);
    CHECK(b[2].name() == l[2].name());
    CHECK((b + 3)->name() == l[3].name());
    CHECK((3 + b) == (e - 2));
    CHECK(b < e && e > b && b <= b && e >= e);
    auto it = e;
    it -= 5;
    CHECK(it == b);
    --e;
    CHECK(e->name() == l[4].name());
    // Algorithms that need random access.
    std::vector<std::string> names;
    for (auto i = l.end(); i != l.begin();)
        names.emplace_back((*--i).name());
    CHECK(names.size() == 5 && names.front() == std::string(l[4].name()));
    auto found = std::find_if(l.begin(), l.end(),
                              [](const maas::Model &m) { return m.name() == MISTRAL; });
    CHECK(found != l.end() && found->name() == MISTRAL);
    std::vector<maas::Model> copy(l.begin(), l.end());
    CHECK(copy.size() == 5 && copy[1] == l[1]);
}

// A Request (and any Model) keeps its list alive: no dangling after the ModelList goes.
void test_request_outlives_model_list()
{
    maas::Client c(options());
    maas::Request r = request("Tell me a joke");
    r.model.clear();
    maas::Model kept;
    {
        maas::ModelList l = c.models();
        r.model_info = *std::find_if(l.begin(), l.end(),
                                     [](const maas::Model &m) { return m.name() == MISTRAL; });
        kept = l[0];
        CHECK(r.model_info.owns_list());
        // release() refuses while Models share the list.
        CHECK(l.release() == nullptr);
        CHECK(l.get() != nullptr);
    }
    CHECK(r.model_info.name() == MISTRAL);
    CHECK(!kept.name().empty());
    std::string text = c.generate_text(r);
    CHECK(!text.empty());
    // Without any Model alive, release() hands the C list over.
    maas::ModelList l2 = c.models();
    maas_model_list *raw = l2.release();
    CHECK(raw != nullptr && l2.get() == nullptr);
    maas_model_list_free(raw);
    // A Model made from a C pointer borrows, as in C.
    maas::ModelList l3 = c.models();
    maas::Model borrowed(maas_model_list_get(l3.get(), 0));
    CHECK(!borrowed.owns_list() && borrowed == l3[0]);
}

void test_error_category()
{
    std::error_code ec = MAAS_ERR_TLS;
    CHECK(ec == MAAS_ERR_TLS);
    CHECK(ec.category() == maas::error_category());
    CHECK(std::string(ec.category().name()) == "maas");
    CHECK(ec.message() == maas_strerror(MAAS_ERR_TLS));
    CHECK(make_error_code(MAAS_ERR_PROXY).value() == MAAS_ERR_PROXY);

    maas_client_options o = options();
    o.client_id = nullptr;
    o.token = nullptr;
    maas::Client bad(o, ec);
    CHECK(ec == MAAS_ERR_CONFIG && !bad);

    maas::Client c(options(), ec);
    CHECK(!ec && c);
    maas::Request r = request("Tell me a joke [[fault:status=429]] [[fault:rate-limit=9,0,5]]");
    std::string text = c.generate_text(r, ec);
    CHECK(ec == MAAS_ERR_RATE_LIMITED && text.empty());
    CHECK(maas::last_error() && maas::last_error()->rate_limit_limit == 9);
    maas::Stream s = c.stream(request("Tell me a joke [[fault:truncate-after=2]]"), ec);
    CHECK(!ec && s);
    int tokens = 0;
    while (s.next(ec))
        tokens++;
    CHECK(tokens == 2 && ec == MAAS_ERR_TRUNCATED);
    CHECK(s.error() && s.error()->status == MAAS_ERR_TRUNCATED);
}

void test_multi_lambdas()
{
    maas::Client c(options());
    maas::Multi m(c);
    std::vector<std::string> texts(5);
    std::vector<maas::Done> dones;
    for (int i = 0; i < 5; i++)
        m.add(request("Tell me a joke #" + std::to_string(i)),
              [&texts, i](std::string_view t) { texts[static_cast<size_t>(i)] += t; },
              [&dones](const maas::Done &d) { dones.push_back(d); });
    CHECK(m.size() == 5);
    drain(m);
    CHECK(m.size() == 0 && m.running() == 0);
    CHECK(dones.size() == 5);
    for (const maas::Done &d : dones) {
        CHECK(d && d.status == MAAS_OK && !d.code());
        CHECK(d.details && d.details->generated_tokens == 10);
        CHECK(d.details && !d.details->request_id.empty());
    }
    // Every collected text is one of the server's.
    for (const std::string &t : texts) {
        bool found = false;
        for (const maas::Done &d : dones)
            found = found || (d.details && d.details->generated_text == t);
        CHECK(found);
    }
}

void test_multi_failures_and_cancel()
{
    maas::Client c(options());
    maas::Multi m(c);
    std::vector<maas::Done> dones(3);
    int tokens_b = 0;
    m.add(request("Tell me a joke [[fault:status=503]] [[fault:rate-limit=4,1,2]]"), nullptr,
          [&](const maas::Done &d) { dones[0] = d; });
    // false from the token callback cancels the stream.
    m.add(request("Tell me a joke", 20),
          [&](const maas::Token &) { return ++tokens_b < 3; },
          [&](const maas::Done &d) { dones[1] = d; });
    maas::Multi::Id slow = m.add(request("Tell me a joke [[fault:delay=200]]", 50), nullptr,
                                 [&](const maas::Done &d) { dones[2] = d; });
    CHECK(m.cancel(slow));
    drain(m);
    CHECK(dones[0].status == MAAS_ERR_UNAVAILABLE && dones[0].http_status == 503);
    CHECK(!dones[0].message.empty() && !dones[0].details);
    CHECK(dones[1].status == MAAS_ERR_CANCELLED && tokens_b == 3);
    CHECK(dones[2].status == MAAS_ERR_CANCELLED);
    CHECK(!m.cancel(slow)); // it has ended
}

// An exception from a callback cancels its stream and comes out of the driving call.
void test_multi_exception()
{
    maas::Client c(options());
    maas::Multi m(c);
    maas_status seen = MAAS_OK;
    m.add(request("Tell me a joke", 20),
          [](std::string_view) { throw std::runtime_error("from the token callback"); },
          [&](const maas::Done &d) { seen = d.status; });
    bool thrown = false;
    try {
        for (int i = 0; i < 120; i++)
            m.poll(1000); // until the exception comes out
    } catch (const std::runtime_error &e) {
        thrown = std::string(e.what()) == "from the token callback";
    }
    CHECK(thrown);
    drain(m);
    CHECK(seen == MAAS_ERR_CANCELLED && m.size() == 0);
}

// Destroying a Multi with streams still running stops and frees them (no callback).
void test_multi_raii()
{
    int done_calls = 0;
    {
        maas::Client c(options());
        {
            maas::Multi m(c);
            for (int i = 0; i < 3; i++)
                m.add(request("Tell me a joke [[fault:delay=500]]", 50), nullptr,
                      [&](const maas::Done &) { done_calls++; });
            for (int i = 0; i < 100 && emu_stat(&E, "streams_active") < 3; i++)
                m.poll(100);
            CHECK(emu_stat(&E, "streams_active") == 3);
        }
        CHECK(done_calls == 0);
    }
    // The client's pooled connections are gone with it; the streams' were cut by the Multi.
    CHECK(emu_wait_connections(&E, 0, 10000) == 0);
}

// The event-loop hooks as std::function, driving a poll(2) loop.
void test_multi_hooks()
{
    // The hooks' state is declared before the Multi: its destructor still
    // reports the sockets it stops watching.
    std::map<int, int> watched; // fd -> MAAS_POLL_*
    long timer = -1;
    bool timer_told = false;
    maas::Client c(options());
    maas::Multi m(c);
    m.set_callbacks(
        [&](int fd, int what, void *) {
            if (what == MAAS_POLL_REMOVE)
                watched.erase(fd);
            else
                watched[fd] = what;
        },
        [&](long ms) {
            timer = ms;
            timer_told = true;
        });
    CHECK(watched.size() == 1); // the wake-up pipe, at once
    maas::Done done;
    bool ended = false;
    m.add(request("Tell me a joke"), nullptr, [&](const maas::Done &d) {
        done = d;
        ended = true;
    });
    // Bounded by a clock, not by the Multi's own count, which a bug could keep up.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!ended && std::chrono::steady_clock::now() < deadline) {
        std::vector<struct pollfd> fds;
        for (auto &w : watched)
            fds.push_back({w.first, static_cast<short>(((w.second & MAAS_POLL_IN) ? POLLIN : 0) |
                                                       ((w.second & MAAS_POLL_OUT) ? POLLOUT : 0)),
                           0});
        int wait = timer < 0 || timer > 1000 ? 1000 : static_cast<int>(timer);
        int n = ::poll(fds.data(), fds.size(), wait);
        if (n == 0) {
            timer = -1;
            m.socket_action(MAAS_SOCKET_TIMEOUT, 0);
            continue;
        }
        for (auto &p : fds)
            if (p.revents)
                m.socket_action(p.fd, ((p.revents & (POLLIN | POLLHUP | POLLERR)) ? MAAS_POLL_IN : 0) |
                                          ((p.revents & POLLOUT) ? MAAS_POLL_OUT : 0));
    }
    CHECK(done && done.details);
    CHECK(timer_told);
    // A hook that throws aborts the multi, and the exception comes out.
    maas::Multi m2(c);
    bool thrown = false;
    try {
        m2.set_callbacks([](int, int, void *) { throw std::logic_error("hook"); }, nullptr);
    } catch (const std::logic_error &) {
        thrown = true;
    }
    CHECK(thrown);
}

} // namespace

int main()
{
    if (emu_start(&E, nullptr) != 0) {
        std::fprintf(stderr, "cannot start the emulator\n");
        return 99;
    }
    test_random_access_iterators();
    test_request_outlives_model_list();
    test_error_category();
    test_multi_lambdas();
    test_multi_failures_and_cancel();
    test_multi_exception();
    test_multi_raii();
    test_multi_hooks();
    int rc = emu_stop(&E);
    if (rc != 0) {
        std::fprintf(stderr, "the emulator did not stop cleanly (%d)\n", rc);
        failed_checks++;
    }
    if (failed_checks)
        std::fprintf(stderr, "%d checks failed\n", failed_checks);
    return failed_checks ? 1 : 0;
}
