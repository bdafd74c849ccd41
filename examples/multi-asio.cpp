// Many streams on one thread, driven by standalone asio (Debian: libasio-dev)
// through maas::Multi's event-loop hooks: each socket the multi reports is
// watched with an asio::posix::stream_descriptor, its timer is an
// asio::steady_timer, and nothing but io_context::run() waits.
//
//   maas-multi-asio [STREAMS] [PROMPT]
//
// Configured from the environment (MAAS_CLIENT_ID, ...) like every example.
// Prints one line per stream when it ends, then a summary; exits 0 when
// every stream finished and its collected text equals the server's text.
#include <asio.hpp>
#include <maas/maas.hpp>

#include <poll.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

// The sockets and the timer of one maas::Multi, on one io_context.
class AsioLoop {
public:
    explicit AsioLoop(asio::io_context &io) : io_(io), timer_(io) {}

    // Must be called before the multi reports anything (set_callbacks does at once).
    void attach(maas::Multi &multi)
    {
        multi_ = &multi;
        multi.set_callbacks(
            [this](int fd, int what, void *) { on_socket(fd, what); },
            [this](long ms) { on_timer(ms); });
    }

    // Stop watching everything, so that io_context::run() can return.
    void stop()
    {
        timer_.cancel();
        for (auto &kv : socks_)
            kv.second->desc.release(); // the fd is the multi's: never close it here
        socks_.clear();
    }

private:
    struct Sock {
        Sock(asio::io_context &io, int fd) : desc(io, fd) {}
        asio::posix::stream_descriptor desc;
        int what = 0;                 // MAAS_POLL_* the multi wants now
        bool waiting[2] = {false, false}; // a wait is pending: [0] read, [1] write
    };

    void on_socket(int fd, int what)
    {
        auto it = socks_.find(fd);
        if (what == MAAS_POLL_REMOVE) {
            if (it != socks_.end()) {
                it->second->what = 0;
                it->second->desc.release(); // cancels its waits; libcurl closes the fd
                socks_.erase(it);
            }
            return;
        }
        if (it == socks_.end())
            it = socks_.emplace(fd, std::make_shared<Sock>(io_, fd)).first;
        it->second->what = what;
        arm(fd, it->second);
    }

    void on_timer(long ms)
    {
        timer_.cancel();
        if (ms < 0)
            return;
        timer_.expires_after(std::chrono::milliseconds(ms));
        timer_.async_wait([this](const asio::error_code &ec) {
            if (!ec)
                multi_->socket_action(MAAS_SOCKET_TIMEOUT, 0);
        });
    }

    void arm(int fd, const std::shared_ptr<Sock> &s)
    {
        if ((s->what & MAAS_POLL_IN) && !s->waiting[0])
            wait(fd, s, 0);
        if ((s->what & MAAS_POLL_OUT) && !s->waiting[1])
            wait(fd, s, 1);
    }

    // asio's reactor is edge-triggered: a socket that is ready already
    // (libcurl may leave data unread) is handled at once rather than left to
    // wait for an edge that may not come. A precaution: the tests, bursts of
    // thousands of tokens included, have not needed it.
    void wait(int fd, std::shared_ptr<Sock> s, int dir)
    {
        struct pollfd p = {fd, static_cast<short>(dir ? POLLOUT : POLLIN), 0};
        s->waiting[dir] = true;
        if (::poll(&p, 1, 0) > 0) {
            asio::post(io_, [this, fd, s, dir] { fire(fd, s, dir, asio::error_code()); });
            return;
        }
        s->desc.async_wait(dir ? asio::posix::stream_descriptor::wait_write
                               : asio::posix::stream_descriptor::wait_read,
                           [this, fd, s, dir](const asio::error_code &ec) { fire(fd, s, dir, ec); });
    }

    void fire(int fd, const std::shared_ptr<Sock> &s, int dir, const asio::error_code &ec)
    {
        s->waiting[dir] = false;
        auto it = socks_.find(fd);
        // Cancelled, removed since, or replaced by a new socket with the same number.
        if (ec == asio::error::operation_aborted || it == socks_.end() || it->second != s)
            return;
        if (!(s->what & (dir ? MAAS_POLL_OUT : MAAS_POLL_IN)))
            return;
        multi_->socket_action(fd, dir ? MAAS_POLL_OUT : MAAS_POLL_IN);
        it = socks_.find(fd);
        if (it != socks_.end() && it->second == s)
            arm(fd, s);
    }

    asio::io_context &io_;
    asio::steady_timer timer_;
    maas::Multi *multi_ = nullptr;
    std::unordered_map<int, std::shared_ptr<Sock>> socks_;
};

} // namespace

int main(int argc, char **argv)
{
    const int streams = argc > 1 ? std::atoi(argv[1]) : 8;
    const std::string prompt = argc > 2 ? argv[2] : "Tell me a joke";
    if (streams < 1 || streams > 10000) {
        std::cerr << "usage: maas-multi-asio [STREAMS (1-10000)] [PROMPT]\n";
        return 2;
    }
    try {
        asio::io_context io;
        maas::Client client;    // from MAAS_CLIENT_ID, MAAS_CLIENT_SECRET, ...
        client.authenticate();  // optional: no stream waits for a token fetched aside
        AsioLoop loop(io);      // declared before the multi: it outlives the multi's last call
        maas::Multi multi(client);
        loop.attach(multi);

        std::vector<std::string> texts(static_cast<size_t>(streams));
        int left = streams, good = 0;
        for (int i = 0; i < streams; i++) {
            maas::Request r;
            r.model = "mistralai/Mistral-7B-Instruct-v0.1";
            r.prompt = prompt + " #" + std::to_string(i);
            r.max_new_tokens = 20;
            multi.add(
                r, [&texts, i](std::string_view text) { texts[static_cast<size_t>(i)] += text; },
                [&, i](const maas::Done &d) {
                    if (d && d.details->generated_text == texts[static_cast<size_t>(i)]) {
                        good++;
                        std::cout << "stream " << i << ": " << d.details->generated_tokens
                                  << " tokens, " << d.details->finish_reason_name << "\n";
                    } else if (d) {
                        std::cout << "stream " << i << ": text differs from the server's\n";
                    } else {
                        std::cout << "stream " << i << ": " << maas_strerror(d.status) << ": "
                                  << d.message << "\n";
                    }
                    if (--left == 0)
                        asio::post(io, [&] { loop.stop(); });
                });
        }
        io.run();
        std::cout << good << " of " << streams << " streams done\n";
        return good == streams ? 0 : 1;
    } catch (const maas::Error &e) {
        std::cerr << "maas-multi-asio: " << e.what() << "\n";
        return 1;
    }
}
