// maas::Token::last_buffered: a C++ consumer that buffers its output and
// flushes when the flag is set writes once per network read, on every path
// of the C++ layer (generate(), the range-for over a Stream, maas::Multi).
//
// A scripted server controls where the reads end: it sends the stream in
// pieces, one send() each, and sends the next piece only once the consumer
// has been handed every token of the one before. Each piece is then one
// read, so the consumer's flushes must be exactly the pieces' texts. A plain
// main, as test_cpp.cpp: a failed check prints its line and the exit status
// counts the failures.
#include <maas/maas.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

int failed_checks;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failed_checks++;                                                          \
        }                                                                             \
    } while (0)

std::string token_line(int id, const char *text)
{
    return std::string("{\"result\":{\"response\":{\"token\":{\"id\":") + std::to_string(id) +
           ",\"text\":\"" + text +
           "\",\"logprob\":-0.5,\"special\":false},\"top_tokens\":[],\"requestID\":\"rid-1\"}}}\n";
}

const char FINAL_LINE[] =
    "{\"result\":{\"response\":{\"token\":{\"id\":2,\"text\":\"</s>\",\"special\":true},"
    "\"top_tokens\":[],\"generated_text\":\"a b c d e f\",\"details\":{\"finish_reason\":"
    "\"FINISH_REASON_EOS_TOKEN\",\"generated_tokens\":7},\"requestID\":\"rid-1\"}}}\n";

// Each piece is sent once the consumer has been handed `after` tokens.
struct Piece {
    std::string bytes;
    std::size_t after;
};

const std::vector<Piece> pieces = {
    {token_line(10, "a") + token_line(11, " b") + token_line(12, " c"), 0},
    {token_line(13, " d"), 3},
    {token_line(14, " e") + token_line(15, " f") + FINAL_LINE, 4},
};
// What a consumer that flushes on last_buffered (and once at the end) writes,
// one entry per flush: one per piece. " f" is followed by the final message
// in its read, so it does not end a flush; the final token does.
const std::vector<std::string> expected_flushes = {"a b c", " d", " e f"};

class Server {
public:
    Server()
    {
        lfd_ = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t n = sizeof a;
        if (lfd_ < 0 || bind(lfd_, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 ||
            listen(lfd_, 16) != 0 || getsockname(lfd_, reinterpret_cast<sockaddr *>(&a), &n) != 0) {
            std::perror("test-cpp-flush: listening socket");
            std::exit(1);
        }
        url_ = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
        thread_ = std::thread([this] { run(); });
    }
    ~Server()
    {
        {
            std::lock_guard<std::mutex> l(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
        close(lfd_);
    }
    const std::string &url() const { return url_; }

    // A new round: nothing handed out yet.
    void reset()
    {
        std::lock_guard<std::mutex> l(mu_);
        delivered_ = 0;
        waits_timed_out_ = 0;
    }
    // The consumer was handed one more token.
    void delivered_one()
    {
        {
            std::lock_guard<std::mutex> l(mu_);
            delivered_++;
        }
        cv_.notify_all();
    }
    int waits_timed_out()
    {
        std::lock_guard<std::mutex> l(mu_);
        return waits_timed_out_;
    }

private:
    // Generous: a client that never gets there fails on its flushes, not by hanging.
    void wait_delivered(std::size_t n)
    {
        std::unique_lock<std::mutex> l(mu_);
        if (!cv_.wait_for(l, std::chrono::seconds(60), [&] { return delivered_ >= n || stop_; }))
            waits_timed_out_++;
    }

    static bool send_all(int fd, const char *p, std::size_t n)
    {
        while (n > 0) {
            ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
            if (k <= 0)
                return false;
            p += k;
            n -= static_cast<std::size_t>(k);
        }
        return true;
    }

    // Read the request head and its Content-Length body; false on a short read.
    static bool read_request(int fd, std::string &head)
    {
        char buf[4096];
        std::size_t end;
        while ((end = head.find("\r\n\r\n")) == std::string::npos) {
            ssize_t k = recv(fd, buf, sizeof buf, 0);
            if (k <= 0 || head.size() > 65536)
                return false;
            head.append(buf, static_cast<std::size_t>(k));
        }
        std::size_t want = 0, cl = head.find("\r\nContent-Length:");
        if (cl == std::string::npos)
            cl = head.find("\r\ncontent-length:");
        if (cl != std::string::npos)
            want = std::strtoul(head.c_str() + cl + 17, nullptr, 10);
        std::size_t body = head.size() - (end + 4);
        while (body < want) {
            ssize_t k = recv(fd, buf, sizeof buf, 0);
            if (k <= 0)
                return false;
            body += static_cast<std::size_t>(k);
        }
        return true;
    }

    void serve(int fd)
    {
        std::string head;
        if (!read_request(fd, head))
            return;
        if (head.find("/models ") != std::string::npos) { // the model name's lookup
            static const char models[] =
                "{\"models\":[{\"model_name\":\"m\",\"product_name\":\"p\",\"product_id\":\"x\"}]}";
            std::string answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 "Content-Length: " + std::to_string(sizeof models - 1) +
                                 "\r\nConnection: close\r\n\r\n" + models;
            send_all(fd, answer.data(), answer.size());
            return;
        }
        // No length, no chunking: the body is exactly the pieces, ended by the close.
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                                 "Connection: close\r\n\r\n";
        if (!send_all(fd, ok, sizeof ok - 1))
            return;
        for (const Piece &p : pieces) {
            wait_delivered(p.after);
            if (!send_all(fd, p.bytes.data(), p.bytes.size()))
                return;
        }
    }

    void run()
    {
        for (;;) {
            {
                std::lock_guard<std::mutex> l(mu_);
                if (stop_)
                    return;
            }
            pollfd p{lfd_, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0)
                continue;
            int fd = accept(lfd_, nullptr, nullptr);
            if (fd < 0)
                continue;
            serve(fd);
            shutdown(fd, SHUT_WR);
            close(fd);
        }
    }

    int lfd_ = -1;
    std::string url_;
    std::thread thread_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::size_t delivered_ = 0;
    int waits_timed_out_ = 0;
    bool stop_ = false;
};

Server *S;

// The consumer under test: output kept in a buffer, written out ("flushed")
// when a token has last_buffered, and once more at the end.
struct Consumer {
    std::string buffer;
    std::vector<std::string> flushes;

    void operator()(const maas::Token &t)
    {
        if (!t.special)
            buffer.append(t.text);
        if (t.last_buffered)
            flush();
        S->delivered_one();
    }
    void flush()
    {
        if (!buffer.empty())
            flushes.push_back(buffer);
        buffer.clear();
    }
    void check(const char *path)
    {
        flush(); // the stream's end
        if (flushes != expected_flushes) {
            std::fprintf(stderr, "%s: %zu flushes:", path, flushes.size());
            for (const std::string &f : flushes)
                std::fprintf(stderr, " \"%s\"", f.c_str());
            std::fprintf(stderr, " (expected one per network read: \"a b c\" \" d\" \" e f\")\n");
            failed_checks++;
        }
        CHECK(S->waits_timed_out() == 0);
    }
};

maas::Client client()
{
    maas_client_options o;
    maas_client_options_init(&o, MAAS_CLIENT_OPTIONS_VERSION);
    o.token = "static-test-token";
    o.api_base_url = S->url().c_str();
    o.cloud_account = "123456789012";
    o.max_retries = MAAS_RETRIES_OFF;
    return maas::Client(o);
}

maas::Request request() { return maas::Request{"m", "a prompt", 0}; }

void test_generate()
{
    S->reset();
    maas::Client c = client();
    Consumer out;
    maas::Details d = c.generate(request(), [&](const maas::Token &t) { out(t); });
    CHECK(d.generated_tokens == 7);
    out.check("generate()");
}

void test_range_for()
{
    S->reset();
    maas::Client c = client();
    Consumer out;
    maas::Stream s = c.stream(request());
    for (const maas::Token &t : s)
        out(t);
    CHECK(s.details() && s.details()->generated_tokens == 7);
    out.check("range-for over a Stream");
}

void test_multi()
{
    S->reset();
    maas::Client c = client();
    Consumer out;
    maas::Multi m(c);
    maas_status done = MAAS_ERR_INTERNAL;
    bool called = false;
    m.add(request(), [&](const maas::Token &t) { out(t); },
          [&](const maas::Done &d) {
              done = d.status;
              called = true;
          });
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (m.poll(1000) > 0 && std::chrono::steady_clock::now() < until) {
    }
    CHECK(called && done == MAAS_OK);
    out.check("maas::Multi");
}

} // namespace

int main()
{
    Server server;
    S = &server;
    const struct {
        const char *name;
        void (*run)();
    } tests[] = {{"generate", test_generate}, {"range_for", test_range_for}, {"multi", test_multi}};
    int failed_tests = 0, n = 0;
    for (const auto &t : tests) {
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
    std::printf("%d passed, %d failed\n", n - failed_tests, failed_tests);
    return failed_tests ? 1 : 0;
}
