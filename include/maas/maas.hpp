/*
 * libmaas C++ layer: an optional, header-only C++17 wrapper over
 * <maas/maas.h>. docs/cpp.md describes it.
 *
 * SPDX-License-Identifier: MIT
 *
 *  - Client, ModelList and Stream own their C handle, free it when
 *    destroyed, and are movable but not copyable. A moved-from object holds
 *    no handle; calls that need one throw maas::Error (MAAS_ERR_INVALID_ARGUMENT).
 *  - Every failure throws maas::Error, which carries the maas_error record
 *    (status, HTTP status, gRPC code, message, request id, attempts).
 *  - Tokens are views (std::string_view) valid until the next token; Details
 *    and errors are copies that the caller keeps.
 *  - Thread rules are those of the C API: a Client may be shared between
 *    threads, a Stream is used by one thread at a time except cancel().
 *
 * Nothing here is compiled into libmaas: the C ABI is the library's only
 * ABI, and this header may change with the library version it ships with.
 */
#ifndef MAAS_MAAS_HPP
#define MAAS_MAAS_HPP

#if !defined(__cplusplus) || (__cplusplus < 201703L && (!defined(_MSVC_LANG) || _MSVC_LANG < 201703L))
#error "<maas/maas.hpp> needs C++17; C programs include <maas/maas.h>"
#endif

#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <maas/maas.h>

namespace maas {

/** The version of the library linked at run time, e.g. "0.1.0". */
inline std::string_view version() noexcept
{
    return maas_version();
}

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

/**
 * A failed call: the maas_status and the details of maas_error, copied.
 * what() reads "<maas_strerror(status)>: <message>" (or just the
 * description when there is no message).
 */
class Error : public std::runtime_error {
public:
    Error(maas_status status, int http_status, int grpc_code, std::string message,
          std::string request_id, unsigned attempts = 0, double retry_after = -1.0)
        : std::runtime_error(describe(status, message)),
          status_(status), http_status_(http_status), grpc_code_(grpc_code),
          attempts_(attempts), retry_after_(retry_after),
          info_(std::make_shared<const Info>(Info{std::move(message), std::move(request_id)}))
    {
    }

    /** An Error from a C error record; `e` NULL or about another status: the status alone. */
    static Error from(maas_status status, const maas_error *e)
    {
        if (e && e->status == status)
            return Error(status, e->http_status, e->grpc_code, e->message ? e->message : "",
                         e->request_id ? e->request_id : "", e->attempts, e->retry_after);
        return Error(status, 0, -1, std::string(), std::string());
    }

    /** The Error for `status` just returned by a call on this thread (maas_last_error()). */
    static Error last(maas_status status)
    {
        return from(status, maas_last_error());
    }

    maas_status status() const noexcept { return status_; }
    /** e.g. "MAAS_ERR_TRUNCATED" */
    const char *status_name() const noexcept { return maas_status_name(status_); }
    /** HTTP status of the last response, 0 if none arrived. */
    int http_status() const noexcept { return http_status_; }
    /** gRPC code from the server's error body, -1 if none. */
    int grpc_code() const noexcept { return grpc_code_; }
    /** The server's message or the library's description; "" if none. */
    const std::string &message() const noexcept { return info_->message; }
    /** The server's request id, "" if unknown. */
    const std::string &request_id() const noexcept { return info_->request_id; }
    /** HTTP attempts made for the failing call. */
    unsigned attempts() const noexcept { return attempts_; }
    /** Seconds from a Retry-After header, -1 if none. */
    double retry_after() const noexcept { return retry_after_; }

private:
    struct Info {
        std::string message;
        std::string request_id;
    };

    static std::string describe(maas_status status, const std::string &message)
    {
        std::string s = maas_strerror(status);
        if (!message.empty())
            s += ": " + message;
        return s;
    }

    maas_status status_;
    int http_status_;
    int grpc_code_;
    unsigned attempts_;
    double retry_after_;
    std::shared_ptr<const Info> info_; // shared: copying an exception does not throw
};

namespace detail {

inline void check(maas_status status)
{
    if (status != MAAS_OK)
        throw Error::last(status);
}

inline std::string_view view(const char *s) noexcept
{
    return s ? std::string_view(s) : std::string_view();
}

struct Free {
    void operator()(void *p) const noexcept { maas_free(p); }
};

} // namespace detail

/* ------------------------------------------------------------------ */
/* Models                                                              */
/* ------------------------------------------------------------------ */

/** A model borrowed from its ModelList: valid while the list lives. Null by default. */
class Model {
public:
    Model() noexcept = default;
    explicit Model(const maas_model *model) noexcept : m_(model) {}

    /** e.g. "mistralai/Mistral-7B-Instruct-v0.1" (NUL-terminated) */
    std::string_view name() const noexcept { return detail::view(maas_model_name(m_)); }
    /** e.g. "maas-model-mistral-7b-v0.1" (NUL-terminated) */
    std::string_view product_name() const noexcept { return detail::view(maas_model_product_name(m_)); }
    /** e.g. "269c3034-e6c7-4359-9e77-c3efedfaa778" (NUL-terminated) */
    std::string_view product_id() const noexcept { return detail::view(maas_model_product_id(m_)); }

    const maas_model *get() const noexcept { return m_; }
    explicit operator bool() const noexcept { return m_ != nullptr; }

private:
    const maas_model *m_ = nullptr;
};

/** The service's models (maas_models_list), in its order. */
class ModelList {
public:
    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = Model;
        using difference_type = std::ptrdiff_t;
        using pointer = void;
        using reference = Model;

        iterator() noexcept = default;
        Model operator*() const noexcept { return Model(maas_model_list_get(list_, index_)); }
        iterator &operator++() noexcept { ++index_; return *this; }
        iterator operator++(int) noexcept { iterator old = *this; ++index_; return old; }
        friend bool operator==(const iterator &a, const iterator &b) noexcept
        {
            return a.list_ == b.list_ && a.index_ == b.index_;
        }
        friend bool operator!=(const iterator &a, const iterator &b) noexcept { return !(a == b); }

    private:
        friend class ModelList;
        iterator(const maas_model_list *list, std::size_t index) noexcept : list_(list), index_(index) {}
        const maas_model_list *list_ = nullptr;
        std::size_t index_ = 0;
    };

    ModelList() noexcept = default;
    /** Adopt a list from the C API: this object frees it. */
    explicit ModelList(maas_model_list *owned) noexcept : l_(owned) {}
    ModelList(ModelList &&other) noexcept : l_(std::exchange(other.l_, nullptr)) {}
    ModelList &operator=(ModelList &&other) noexcept
    {
        if (this != &other) {
            maas_model_list_free(l_);
            l_ = std::exchange(other.l_, nullptr);
        }
        return *this;
    }
    ModelList(const ModelList &) = delete;
    ModelList &operator=(const ModelList &) = delete;
    ~ModelList() { maas_model_list_free(l_); }

    std::size_t size() const noexcept { return maas_model_list_count(l_); }
    bool empty() const noexcept { return size() == 0; }
    /** The model at `index`; a null Model when out of range. */
    Model operator[](std::size_t index) const noexcept { return Model(maas_model_list_get(l_, index)); }
    /** The model at `index`; std::out_of_range when out of range. */
    Model at(std::size_t index) const
    {
        if (index >= size())
            throw std::out_of_range("maas::ModelList::at: index out of range");
        return (*this)[index];
    }
    /** The model whose model name or product name is `name`, if any. */
    std::optional<Model> find(const std::string &name) const noexcept
    {
        const maas_model *m = maas_model_list_find(l_, name.c_str());
        if (!m)
            return std::nullopt;
        return Model(m);
    }

    iterator begin() const noexcept { return iterator(l_, 0); }
    iterator end() const noexcept { return iterator(l_, size()); }

    maas_model_list *get() const noexcept { return l_; }
    maas_model_list *release() noexcept { return std::exchange(l_, nullptr); }

private:
    maas_model_list *l_ = nullptr;
};

/* ------------------------------------------------------------------ */
/* Generation                                                          */
/* ------------------------------------------------------------------ */

/**
 * One generation, as maas_request: `model` (a model name or product name)
 * or `model_info`, and `prompt`. Zero values take the C defaults;
 * `params_json` "" sends none.
 */
struct Request {
    std::string model{};
    std::string prompt{};
    int max_new_tokens = 0;   /**< [1, 2048); 0: MAAS_DEFAULT_MAX_NEW_TOKENS */
    double temperature = 0.0; /**< [0, 1); 0: the server's default (0.1), not greedy */
    std::string params_json{}; /**< a JSON object merged into request.params, or "" */
    Model model_info{};        /**< takes precedence over `model` */

    /** The C request; its strings point into *this. */
    maas_request c_request() const noexcept
    {
        maas_request r = MAAS_REQUEST_INIT;
        r.model = model.empty() ? nullptr : model.c_str();
        r.model_info = model_info.get();
        r.prompt = prompt.c_str();
        r.max_new_tokens = max_new_tokens;
        r.temperature = temperature;
        r.params_json = params_json.empty() ? nullptr : params_json.c_str();
        return r;
    }
};

/** One streamed token: a view, valid during the callback or until the next Stream::next(). */
struct Token {
    std::string_view text;         /**< may hold NULs */
    std::uint32_t id = 0;          /**< vocabulary id */
    std::size_t index = 0;         /**< 0 for the first token of the stream */
    bool special = false;          /**< e.g. "</s>" */
    std::optional<double> logprob; /**< when the server sent one */

    static Token from(const maas_token &t) noexcept
    {
        Token k;
        k.text = std::string_view(t.text, t.text_len);
        k.id = t.id;
        k.index = t.index;
        k.special = t.special != 0;
        if (t.has_logprob)
            k.logprob = t.logprob;
        return k;
    }
};

/** The final details of a generation, copied. */
struct Details {
    maas_finish_reason finish_reason = MAAS_FINISH_UNKNOWN;
    std::string finish_reason_name; /**< as the server sent it, e.g. "FINISH_REASON_LENGTH" */
    std::uint32_t generated_tokens = 0;
    std::optional<std::uint64_t> seed;
    std::string generated_text;     /**< the server's text, without special tokens */
    bool generated_text_truncated = false; /**< cut at about MAAS_GENERATED_TEXT_MAX */
    std::string request_id;
    unsigned attempts = 0;          /**< HTTP attempts the generation took */

    static Details from(const maas_details &d)
    {
        Details k;
        k.finish_reason = d.finish_reason;
        k.finish_reason_name = detail::view(d.finish_reason_name);
        k.generated_tokens = d.generated_tokens;
        if (d.has_seed)
            k.seed = d.seed;
        if (d.generated_text)
            k.generated_text.assign(d.generated_text, d.generated_text_len);
        k.generated_text_truncated = d.generated_text_truncated != 0;
        k.request_id = detail::view(d.request_id);
        k.attempts = d.attempts;
        return k;
    }
};

namespace detail {

/* Call f(arg); a callback returning void goes on, one returning bool goes on while true. */
template <class F, class Arg>
bool keep_going(F &f, Arg &&arg)
{
    if constexpr (std::is_void_v<std::invoke_result_t<F &, Arg>>) {
        f(std::forward<Arg>(arg));
        return true;
    } else {
        return static_cast<bool>(f(std::forward<Arg>(arg)));
    }
}

/*
 * The C callbacks of one generation. An exception thrown by the caller's
 * callback never crosses the C library: it is kept, the generation is
 * cancelled, and the exception is rethrown once the C call has returned.
 */
template <class F>
struct Sink {
    F &on_token;
    Details details;
    std::exception_ptr error;

    bool deliver(const maas_token &t)
    {
        if constexpr (std::is_invocable_v<F &, const Token &>) {
            return keep_going(on_token, Token::from(t));
        } else {
            static_assert(std::is_invocable_v<F &, std::string_view>,
                          "the token callback takes (std::string_view) or (const maas::Token &)");
            if (t.special)
                return true;
            return keep_going(on_token, std::string_view(t.text, t.text_len));
        }
    }

    static int token_cb(const maas_token *t, void *payload) noexcept
    {
        Sink *s = static_cast<Sink *>(payload);
        try {
            return s->deliver(*t) ? 0 : 1;
        } catch (...) {
            s->error = std::current_exception();
            return 1;
        }
    }

    static int details_cb(const maas_details *d, void *payload) noexcept
    {
        Sink *s = static_cast<Sink *>(payload);
        try {
            s->details = Details::from(*d);
            return 0;
        } catch (...) {
            s->error = std::current_exception();
            return 1;
        }
    }

    Details finish(maas_status status)
    {
        if (error)
            std::rethrow_exception(error);
        if (status != MAAS_OK)
            throw Error::last(status);
        return std::move(details);
    }
};

} // namespace detail

/* ------------------------------------------------------------------ */
/* Streams                                                             */
/* ------------------------------------------------------------------ */

/**
 * A generation driven by the caller (maas_stream_*): next() token by token,
 * a range-for over the tokens, or run() with a callback.
 */
class Stream {
public:
    struct sentinel {};

    /** Single pass over the remaining tokens; ++ may throw maas::Error. */
    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = Token;
        using difference_type = std::ptrdiff_t;
        using pointer = const Token *;
        using reference = const Token &;

        const Token &operator*() const noexcept { return *token_; }
        const Token *operator->() const noexcept { return &*token_; }
        iterator &operator++()
        {
            token_ = stream_->next();
            return *this;
        }
        void operator++(int) { ++*this; }
        friend bool operator==(const iterator &it, sentinel) noexcept { return !it.token_; }
        friend bool operator!=(const iterator &it, sentinel) noexcept { return bool(it.token_); }
        friend bool operator==(sentinel, const iterator &it) noexcept { return !it.token_; }
        friend bool operator!=(sentinel, const iterator &it) noexcept { return bool(it.token_); }

    private:
        friend class Stream;
        explicit iterator(Stream *s) : stream_(s), token_(s->next()) {}
        Stream *stream_;
        std::optional<Token> token_;
    };

    Stream() noexcept = default;
    /** Adopt a stream from the C API: this object frees it. */
    explicit Stream(maas_stream *owned) noexcept : s_(owned) {}
    Stream(Stream &&other) noexcept : s_(std::exchange(other.s_, nullptr)) {}
    Stream &operator=(Stream &&other) noexcept
    {
        if (this != &other) {
            maas_stream_free(s_);
            s_ = std::exchange(other.s_, nullptr);
        }
        return *this;
    }
    Stream(const Stream &) = delete;
    Stream &operator=(const Stream &) = delete;
    /** Closes the stream, aborting it if it is still running. */
    ~Stream() { maas_stream_free(s_); }

    /**
     * The next token (valid until the next call), or std::nullopt once the
     * stream has finished; then details() is available. Throws maas::Error
     * when the stream fails, and again on every later call.
     */
    std::optional<Token> next()
    {
        const maas_token *t = nullptr;
        maas_status st = maas_stream_next(s_, &t);
        if (st == MAAS_OK)
            return Token::from(*t);
        if (st == MAAS_DONE)
            return std::nullopt;
        throw Error::last(st);
    }

    iterator begin() { return iterator(this); }
    sentinel end() const noexcept { return sentinel(); }

    /** Deliver the remaining tokens to `on_token`, as Client::generate() does. */
    template <class F>
    Details run(F &&on_token)
    {
        using Sink = detail::Sink<std::remove_reference_t<F>>;
        Sink sink{on_token, Details(), nullptr};
        maas_status st = maas_stream_run(s_, &Sink::token_cb, &Sink::details_cb, &sink);
        return sink.finish(st);
    }

    /** The final details once next() returned std::nullopt, else std::nullopt. */
    std::optional<Details> details() const
    {
        const maas_details *d = maas_stream_details(s_);
        if (!d)
            return std::nullopt;
        return Details::from(*d);
    }

    /** Cancel from any thread: a blocked next() or run() throws MAAS_ERR_CANCELLED promptly. */
    void cancel() noexcept { maas_stream_cancel(s_); }

    maas_stream *get() const noexcept { return s_; }
    maas_stream *release() noexcept { return std::exchange(s_, nullptr); }
    explicit operator bool() const noexcept { return s_ != nullptr; }

private:
    maas_stream *s_ = nullptr;
};

/* ------------------------------------------------------------------ */
/* Client                                                              */
/* ------------------------------------------------------------------ */

/** A client (maas_client): share one between threads. */
class Client {
public:
    /** Configured from the environment (MAAS_CLIENT_ID, ...), as maas_client_new(&c, NULL). */
    Client() { detail::check(maas_client_new(&c_, nullptr)); }
    /** Configured by `opts` (MAAS_CLIENT_OPTIONS_INIT, then the fields you set). */
    explicit Client(const maas_client_options &opts) { detail::check(maas_client_new(&c_, &opts)); }
    /** Adopt a client from the C API: this object frees it. */
    explicit Client(maas_client *owned) noexcept : c_(owned) {}
    Client(Client &&other) noexcept : c_(std::exchange(other.c_, nullptr)) {}
    Client &operator=(Client &&other) noexcept
    {
        if (this != &other) {
            maas_client_free(c_);
            c_ = std::exchange(other.c_, nullptr);
        }
        return *this;
    }
    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;
    ~Client() { maas_client_free(c_); }

    /** Fetch a token now if the client holds no valid one. */
    void authenticate() { detail::check(maas_client_authenticate(c_)); }

    /** One of the client's counters. */
    std::uint64_t counter(maas_counter which) const noexcept { return maas_client_counter(c_, which); }

    /** GET {base}/models. */
    ModelList models()
    {
        maas_model_list *list = nullptr;
        detail::check(maas_models_list(&list, c_));
        return ModelList(list);
    }

    /**
     * Stream one generation. `on_token` is called per token, in order, and
     * takes either (std::string_view text): the text of each non-special
     * token; or (const maas::Token &): every token, special ones included
     * (a callback that accepts both, such as a generic lambda, gets these).
     * It returns void, or bool: false stops the generation, which then
     * throws maas::Error with MAAS_ERR_CANCELLED. An exception it throws
     * cancels the generation and comes out of generate().
     */
    template <class F>
    Details generate(const Request &request, F &&on_token)
    {
        using Sink = detail::Sink<std::remove_reference_t<F>>;
        Sink sink{on_token, Details(), nullptr};
        maas_request r = request.c_request();
        maas_status st = maas_generate(c_, &r, &Sink::token_cb, &Sink::details_cb, &sink);
        return sink.finish(st);
    }

    /** Run one generation and return the text of its non-special tokens. */
    std::string generate_text(const Request &request)
    {
        char *out = nullptr;
        std::size_t len = 0;
        maas_request r = request.c_request();
        detail::check(maas_generate_text(&out, &len, c_, &r));
        std::unique_ptr<char, detail::Free> owned(out);
        return std::string(out, len);
    }

    /** Open a stream (maas_stream_open); the request is sent by its first next() or run(). */
    Stream stream(const Request &request)
    {
        maas_stream *s = nullptr;
        maas_request r = request.c_request();
        detail::check(maas_stream_open(&s, c_, &r));
        return Stream(s);
    }

    maas_client *get() const noexcept { return c_; }
    maas_client *release() noexcept { return std::exchange(c_, nullptr); }
    explicit operator bool() const noexcept { return c_ != nullptr; }

private:
    maas_client *c_ = nullptr;
};

} // namespace maas

#endif /* MAAS_MAAS_HPP */
