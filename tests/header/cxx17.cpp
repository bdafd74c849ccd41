// The C++ layer alone, as C++17 with -Wall -Wextra -pedantic -Werror: it
// must need nothing but the standard library and <maas/maas.h>, and its
// templates must instantiate cleanly. Nothing here talks to a server.
#include <maas/maas.hpp>

#include <string>
#include <string_view>
#include <type_traits>

static_assert(!std::is_copy_constructible_v<maas::Client>, "Client is move-only");
static_assert(!std::is_copy_assignable_v<maas::Client>, "Client is move-only");
static_assert(std::is_nothrow_move_constructible_v<maas::Client>, "Client moves without throwing");
static_assert(std::is_nothrow_move_assignable_v<maas::Client>, "Client moves without throwing");
static_assert(!std::is_copy_constructible_v<maas::ModelList>, "ModelList is move-only");
static_assert(std::is_nothrow_move_constructible_v<maas::ModelList>, "ModelList moves without throwing");
static_assert(std::is_nothrow_move_assignable_v<maas::ModelList>, "ModelList moves without throwing");
static_assert(!std::is_copy_constructible_v<maas::Stream>, "Stream is move-only");
static_assert(std::is_nothrow_move_constructible_v<maas::Stream>, "Stream moves without throwing");
static_assert(std::is_nothrow_move_assignable_v<maas::Stream>, "Stream moves without throwing");
static_assert(std::is_nothrow_copy_constructible_v<maas::Error>, "copying an Error does not throw");
static_assert(std::is_base_of_v<std::runtime_error, maas::Error>, "Error is a std::runtime_error");

// Every kind of callback generate() and run() accept, instantiated.
[[maybe_unused]] static void instantiate(maas::Client &c, maas::Stream &s)
{
    maas::Request r{"mistralai/Mistral-7B-Instruct-v0.1", "Tell me a joke", 16};
    std::string text;
    c.generate(r, [&text](std::string_view t) { text += t; });
    c.generate(r, [](std::string_view t) { return t.size() < 100; });
    c.generate(r, [](const maas::Token &t) { return !t.special; });
    s.run([&text](const maas::Token &t) { text += t.text; });
    for (const maas::Token &t : s)
        text += t.text;
    while (auto t = s.next())
        text += t->text;
}

int main()
{
    // Moved-from and default objects hold no handle and free nothing.
    maas::Client c(static_cast<maas_client *>(nullptr));
    maas::Client d(std::move(c));
    maas::ModelList l;
    maas::Stream s;
    maas::Request r;
    maas_request cr = r.c_request();
    maas::Error e = maas::Error::from(MAAS_ERR_TRUNCATED, nullptr);
    bool ok = !c && !d && l.empty() && l.begin() == l.end() && !s && !s.details()
              && cr.version == MAAS_REQUEST_VERSION && cr.model == nullptr && cr.params_json == nullptr
              && e.status() == MAAS_ERR_TRUNCATED && e.grpc_code() == -1 && e.request_id().empty()
              && std::string(e.what()) == maas_strerror(MAAS_ERR_TRUNCATED)
              && maas::version() == MAAS_VERSION_STRING;
    return ok ? 0 : 1;
}
