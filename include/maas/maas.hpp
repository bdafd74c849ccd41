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
 *    Every call that can fail also has an overload taking a trailing
 *    std::error_code & (category maas::error_category(), values
 *    maas_status) that never throws maas::Error: the one path available
 *    when exceptions are off (-fno-exceptions, or MAAS_CXX_EXCEPTIONS
 *    defined to 0), where the throwing overloads are not declared.
 *  - maas::Multi drives many streams on one thread, with lambdas for the
 *    stream callbacks and std::function hooks for an event loop.
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
#include <functional>
#include <iterator>
#include <list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

#include <maas/maas.h>

/*
 * 1 when the throwing API is available. Defaults to whether the compiler
 * has exceptions on; define it to 0 to keep to the error_code overloads.
 */
#ifndef MAAS_CXX_EXCEPTIONS
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS) || (defined(_MSC_VER) && defined(_CPPUNWIND))
#define MAAS_CXX_EXCEPTIONS 1
#else
#define MAAS_CXX_EXCEPTIONS 0
#endif
#endif

namespace maas {

/** The error category of maas_status values: name() "maas", message() maas_strerror(). */
class ErrorCategory final : public std::error_category {
public:
    const char *name() const noexcept override { return "maas"; }
    std::string message(int value) const override
    {
        return maas_strerror(static_cast<maas_status>(value));
    }
    std::error_condition default_error_condition(int value) const noexcept override
    {
        return std::error_condition(value, *this);
    }
};

/** The one instance of the category. */
inline const std::error_category &error_category() noexcept
{
    static const ErrorCategory category;
    return category;
}

} // namespace maas

/* Found by argument-dependent lookup for maas_status, a global enum. */
inline std::error_code make_error_code(maas_status status) noexcept
{
    return std::error_code(static_cast<int>(status), maas::error_category());
}

namespace std {
/* `std::error_code ec = MAAS_ERR_TLS;` and `ec == MAAS_ERR_TLS` work. */
template <>
struct is_error_code_enum<maas_status> : true_type {
};
} // namespace std

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

/** The failure record of the last failing call on this thread (maas_last_error()), or NULL. */
inline const maas_error *last_error() noexcept
{
    return maas_last_error();
}

namespace detail {

#if MAAS_CXX_EXCEPTIONS
inline void check(maas_status status)
{
    if (status != MAAS_OK)
        throw Error::last(status);
}
#endif

/* The error_code overloads' report: `ec` cleared on success. Returns status == MAAS_OK. */
inline bool report(maas_status status, std::error_code &ec) noexcept
{
    if (status == MAAS_OK)
        ec.clear();
    else
        ec = make_error_code(status);
    return status == MAAS_OK;
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

/**
 * A model of a ModelList. A Model taken from a ModelList shares the
 * ownership of the C list: it (and a Request holding it) stays valid after
 * the ModelList object is gone. A Model made from a bare C pointer borrows
 * it, as the C API does. Null by default.
 */
class Model {
public:
    Model() noexcept = default;
    /** Borrow a C model: valid until its C list is freed. */
    explicit Model(const maas_model *model) noexcept : m_(std::shared_ptr<const maas_model>(), model) {}
    /** A model that keeps its list alive (what ModelList hands out). */
    Model(std::shared_ptr<const maas_model> model) noexcept : m_(std::move(model)) {}

    /** e.g. "mistralai/Mistral-7B-Instruct-v0.1" (NUL-terminated) */
    std::string_view name() const noexcept { return detail::view(maas_model_name(get())); }
    /** e.g. "maas-model-mistral-7b-v0.1" (NUL-terminated) */
    std::string_view product_name() const noexcept { return detail::view(maas_model_product_name(get())); }
    /** e.g. "269c3034-e6c7-4359-9e77-c3efedfaa778" (NUL-terminated) */
    std::string_view product_id() const noexcept { return detail::view(maas_model_product_id(get())); }

    const maas_model *get() const noexcept { return m_.get(); }
    explicit operator bool() const noexcept { return m_ != nullptr; }
    /** Whether this Model keeps its list alive (false when made from a C pointer, or null). */
    bool owns_list() const noexcept { return m_.use_count() > 0; }
    friend bool operator==(const Model &a, const Model &b) noexcept { return a.get() == b.get(); }
    friend bool operator!=(const Model &a, const Model &b) noexcept { return a.get() != b.get(); }

private:
    std::shared_ptr<const maas_model> m_; // aliases the list's ownership, or owns nothing
};

/** The service's models (maas_models_list), in its order: a random-access range of Model. */
class ModelList {
public:
    /**
     * A random-access iterator over the list (an array). Its reference type
     * is Model itself, a handle returned by value (as C++20's
     * std::random_access_iterator allows), so `*it` cannot be assigned to.
     */
    class iterator {
    public:
        using iterator_category = std::random_access_iterator_tag;
        using value_type = Model;
        using difference_type = std::ptrdiff_t;
        using reference = Model;
        struct pointer {
            Model m;
            const Model *operator->() const noexcept { return &m; }
        };

        iterator() noexcept = default;
        Model operator*() const noexcept { return list_->model(index_); }
        pointer operator->() const noexcept { return pointer{**this}; }
        Model operator[](difference_type n) const noexcept { return *(*this + n); }

        iterator &operator++() noexcept { ++index_; return *this; }
        iterator operator++(int) noexcept { iterator old = *this; ++index_; return old; }
        iterator &operator--() noexcept { --index_; return *this; }
        iterator operator--(int) noexcept { iterator old = *this; --index_; return old; }
        iterator &operator+=(difference_type n) noexcept { index_ = static_cast<std::size_t>(static_cast<difference_type>(index_) + n); return *this; }
        iterator &operator-=(difference_type n) noexcept { return *this += -n; }
        friend iterator operator+(iterator it, difference_type n) noexcept { return it += n; }
        friend iterator operator+(difference_type n, iterator it) noexcept { return it += n; }
        friend iterator operator-(iterator it, difference_type n) noexcept { return it -= n; }
        friend difference_type operator-(const iterator &a, const iterator &b) noexcept
        {
            return static_cast<difference_type>(a.index_) - static_cast<difference_type>(b.index_);
        }
        friend bool operator==(const iterator &a, const iterator &b) noexcept
        {
            return a.list_ == b.list_ && a.index_ == b.index_;
        }
        friend bool operator!=(const iterator &a, const iterator &b) noexcept { return !(a == b); }
        friend bool operator<(const iterator &a, const iterator &b) noexcept { return a - b < 0; }
        friend bool operator>(const iterator &a, const iterator &b) noexcept { return b < a; }
        friend bool operator<=(const iterator &a, const iterator &b) noexcept { return !(b < a); }
        friend bool operator>=(const iterator &a, const iterator &b) noexcept { return !(a < b); }

    private:
        friend class ModelList;
        iterator(const ModelList *list, std::size_t index) noexcept : list_(list), index_(index) {}
        const ModelList *list_ = nullptr;
        std::size_t index_ = 0;
    };
    using const_iterator = iterator;
    using value_type = Model;
    using size_type = std::size_t;
    using difference_type = std::ptrdiff_t;

    ModelList() noexcept = default;
    /**
     * Adopt a list from the C API: freed once neither this object nor any
     * Model taken from it is left. Allocates the shared ownership: if that
     * throws std::bad_alloc, the list is freed first.
     */
    explicit ModelList(maas_model_list *owned)
        : l_(owned ? std::shared_ptr<maas_model_list>(owned, Deleter()) : nullptr)
    {
    }
    ModelList(ModelList &&other) noexcept = default;
    ModelList &operator=(ModelList &&other) noexcept = default;
    ModelList(const ModelList &) = delete;
    ModelList &operator=(const ModelList &) = delete;
    ~ModelList() = default;

    std::size_t size() const noexcept { return maas_model_list_count(l_.get()); }
    bool empty() const noexcept { return size() == 0; }
    /** The model at `index`; a null Model when out of range. */
    Model operator[](std::size_t index) const noexcept { return model(index); }
#if MAAS_CXX_EXCEPTIONS
    /** The model at `index`; std::out_of_range when out of range. */
    Model at(std::size_t index) const
    {
        if (index >= size())
            throw std::out_of_range("maas::ModelList::at: index out of range");
        return (*this)[index];
    }
#endif
    /** The model whose model name or product name is `name`, if any. */
    std::optional<Model> find(const std::string &name) const noexcept
    {
        const maas_model *m = maas_model_list_find(l_.get(), name.c_str());
        if (!m)
            return std::nullopt;
        return Model(std::shared_ptr<const maas_model>(l_, m));
    }

    iterator begin() const noexcept { return iterator(this, 0); }
    iterator end() const noexcept { return iterator(this, size()); }

    maas_model_list *get() const noexcept { return l_.get(); }
    /**
     * Give the C list back to the caller, who frees it. Only while no Model
     * taken from it is alive (they share it): otherwise NULL, and nothing
     * changes.
     */
    maas_model_list *release() noexcept
    {
        if (!l_ || l_.use_count() != 1)
            return nullptr;
        maas_model_list *raw = l_.get();
        std::get_deleter<Deleter>(l_)->released = true;
        l_.reset();
        return raw;
    }

private:
    struct Deleter {
        bool released = false;
        void operator()(maas_model_list *l) const noexcept
        {
            if (!released)
                maas_model_list_free(l);
        }
    };

    Model model(std::size_t index) const noexcept
    {
        const maas_model *m = maas_model_list_get(l_.get(), index);
        if (!m)
            return Model();
        return Model(std::shared_ptr<const maas_model>(l_, m));
    }

    std::shared_ptr<maas_model_list> l_;
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
    /** The last token of what the network has delivered so far (also the
        final message's): flush buffered output here, once per read rather
        than once per token, and once more when the stream ends. */
    bool last_buffered = false;

    static Token from(const maas_token &t) noexcept
    {
        Token k;
        k.text = std::string_view(t.text, t.text_len);
        k.id = t.id;
        k.index = t.index;
        k.special = t.special != 0;
        if (t.has_logprob)
            k.logprob = t.logprob;
        k.last_buffered = t.last_buffered != 0;
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

/* Deliver a C token to a callback taking (const Token &) or (std::string_view). */
template <class F>
bool deliver(F &on_token, const maas_token &t)
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

/*
 * Run a callback of the caller's from a C callback. With exceptions on,
 * an exception never crosses the C library: it is kept in `error`, and the
 * caller's C call is told to stop (false); it is rethrown once the C call
 * has returned.
 */
template <class Body>
bool guarded(std::exception_ptr &error, Body &&body) noexcept
{
#if MAAS_CXX_EXCEPTIONS
    try {
        return body();
    } catch (...) {
        error = std::current_exception();
        return false;
    }
#else
    (void)error;
    return body();
#endif
}

/* The C callbacks of one generation. */
template <class F>
struct Sink {
    F &on_token;
    Details details;
    std::exception_ptr error;

    static int token_cb(const maas_token *t, void *payload) noexcept
    {
        Sink *s = static_cast<Sink *>(payload);
        return guarded(s->error, [&] { return deliver(s->on_token, *t); }) ? 0 : 1;
    }

    static int details_cb(const maas_details *d, void *payload) noexcept
    {
        Sink *s = static_cast<Sink *>(payload);
        return guarded(s->error, [&] {
                   s->details = Details::from(*d);
                   return true;
               })
                   ? 0
                   : 1;
    }

#if MAAS_CXX_EXCEPTIONS
    Details finish(maas_status status)
    {
        if (error)
            std::rethrow_exception(error);
        if (status != MAAS_OK)
            throw Error::last(status);
        return std::move(details);
    }
#endif

    Details finish(maas_status status, std::error_code &ec)
    {
        report(status, ec);
        return status == MAAS_OK ? std::move(details) : Details();
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
#if MAAS_CXX_EXCEPTIONS
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
#endif

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

#if MAAS_CXX_EXCEPTIONS
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
#endif

    /**
     * next() without exceptions: a token; or std::nullopt with `ec` clear
     * once the stream has finished; or std::nullopt with `ec` set to the
     * failure (error() has its details), again on every later call.
     */
    std::optional<Token> next(std::error_code &ec) noexcept
    {
        const maas_token *t = nullptr;
        maas_status st = maas_stream_next(s_, &t);
        ec.clear();
        if (st == MAAS_OK)
            return Token::from(*t);
        if (st != MAAS_DONE)
            ec = make_error_code(st);
        return std::nullopt;
    }

    /** run() without maas::Error: the details, or empty Details with `ec` set. */
    template <class F>
    Details run(F &&on_token, std::error_code &ec)
    {
        using Sink = detail::Sink<std::remove_reference_t<F>>;
        Sink sink{on_token, Details(), nullptr};
        maas_status st = maas_stream_run(s_, &Sink::token_cb, &Sink::details_cb, &sink);
#if MAAS_CXX_EXCEPTIONS
        if (sink.error)
            std::rethrow_exception(sink.error); // the callback's own exception
#endif
        return sink.finish(st, ec);
    }

    /** The final details once next() returned std::nullopt, else std::nullopt. */
    std::optional<Details> details() const
    {
        const maas_details *d = maas_stream_details(s_);
        if (!d)
            return std::nullopt;
        return Details::from(*d);
    }

    /** The stream's failure (maas_stream_error), or NULL while it has none. */
    const maas_error *error() const noexcept { return maas_stream_error(s_); }

    /** Cancel from any thread: a blocked next() or run() fails with MAAS_ERR_CANCELLED promptly. */
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
#if MAAS_CXX_EXCEPTIONS
    /** Configured from the environment (MAAS_CLIENT_ID, ...), as maas_client_new(&c, NULL). */
    Client() { detail::check(maas_client_new(&c_, nullptr)); }
    /** Configured by `opts` (MAAS_CLIENT_OPTIONS_INIT, then the fields you set). */
    explicit Client(const maas_client_options &opts) { detail::check(maas_client_new(&c_, &opts)); }
#endif
    /** From the environment, without exceptions: on failure `ec` is set and no handle is held. */
    explicit Client(std::error_code &ec) noexcept { detail::report(maas_client_new(&c_, nullptr), ec); }
    /** Configured by `opts`, without exceptions. */
    Client(const maas_client_options &opts, std::error_code &ec) noexcept
    {
        detail::report(maas_client_new(&c_, &opts), ec);
    }
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

    /** One of the client's counters. */
    std::uint64_t counter(maas_counter which) const noexcept { return maas_client_counter(c_, which); }

#if MAAS_CXX_EXCEPTIONS
    /** Fetch a token now if the client holds no valid one. */
    void authenticate() { detail::check(maas_client_authenticate(c_)); }

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
        std::error_code ec;
        std::string text = generate_text(request, ec);
        if (ec)
            throw Error::last(static_cast<maas_status>(ec.value()));
        return text;
    }

    /** Open a stream (maas_stream_open); the request is sent by its first next() or run(). */
    Stream stream(const Request &request)
    {
        maas_stream *s = nullptr;
        maas_request r = request.c_request();
        detail::check(maas_stream_open(&s, c_, &r));
        return Stream(s);
    }
#endif

    /* The same without exceptions: `ec` set (maas::last_error() has the details) on failure. */

    void authenticate(std::error_code &ec) noexcept { detail::report(maas_client_authenticate(c_), ec); }

    /** An empty list with `ec` set on failure. */
    ModelList models(std::error_code &ec)
    {
        maas_model_list *list = nullptr;
        if (!detail::report(maas_models_list(&list, c_), ec))
            return ModelList();
        return ModelList(list);
    }

    /** As generate() above; a callback returning false (or a failure) sets `ec`. */
    template <class F>
    Details generate(const Request &request, F &&on_token, std::error_code &ec)
    {
        using Sink = detail::Sink<std::remove_reference_t<F>>;
        Sink sink{on_token, Details(), nullptr};
        maas_request r = request.c_request();
        maas_status st = maas_generate(c_, &r, &Sink::token_cb, &Sink::details_cb, &sink);
#if MAAS_CXX_EXCEPTIONS
        if (sink.error)
            std::rethrow_exception(sink.error); // the callback's own exception
#endif
        return sink.finish(st, ec);
    }

    /** "" with `ec` set on failure. */
    std::string generate_text(const Request &request, std::error_code &ec)
    {
        char *out = nullptr;
        std::size_t len = 0;
        maas_request r = request.c_request();
        if (!detail::report(maas_generate_text(&out, &len, c_, &r), ec))
            return std::string();
        std::unique_ptr<char, detail::Free> owned(out);
        return std::string(out, len);
    }

    /** A Stream holding no handle, with `ec` set, on failure. */
    Stream stream(const Request &request, std::error_code &ec) noexcept
    {
        maas_stream *s = nullptr;
        maas_request r = request.c_request();
        detail::report(maas_stream_open(&s, c_, &r), ec);
        return Stream(s);
    }

    maas_client *get() const noexcept { return c_; }
    maas_client *release() noexcept { return std::exchange(c_, nullptr); }
    explicit operator bool() const noexcept { return c_ != nullptr; }

private:
    maas_client *c_ = nullptr;
};

/* ------------------------------------------------------------------ */
/* Many streams on one thread                                          */
/* ------------------------------------------------------------------ */

/** How a stream of a Multi ended, handed to its on_done callback. */
struct Done {
    maas_status status = MAAS_OK;  /**< MAAS_OK after the final message, else the failure */
    std::optional<Details> details; /**< the final details, when status is MAAS_OK */
    std::string message;           /**< the failure's message (maas_error), "" on success */
    int http_status = 0;           /**< the failure's HTTP status, 0 if none */
    std::string request_id;        /**< the request id, "" if unknown */

    std::error_code code() const noexcept { return make_error_code(status); }
    explicit operator bool() const noexcept { return status == MAAS_OK; }
};

/**
 * Many streams driven together by one thread (maas_multi_*): add()
 * streams with lambdas, then drive them with perform()/poll(), or from an
 * event loop through set_callbacks() and socket_action(). The Multi owns
 * its streams: each is freed after its on_done callback, and those still
 * running when the Multi is destroyed are stopped and freed (no callback).
 * Not movable (the C callbacks hold its address); the Client must outlive it.
 *
 * Callbacks run inside the driving calls. With exceptions on, an exception
 * thrown by a stream callback cancels that stream, and one thrown by an
 * event-loop hook aborts the multi (libcurl's rule); either is rethrown
 * from the driving call once it has returned.
 */
class Multi {
public:
    /** An identifier of a stream of this Multi, for cancel(). */
    using Id = std::uint64_t;
    /** Watch `fd` for `what` (MAAS_POLL_IN, _OUT, _INOUT, or _REMOVE to stop). */
    using SocketHook = std::function<void(int fd, int what, void *socket_payload)>;
    /** Call socket_action(MAAS_SOCKET_TIMEOUT, 0) in `timeout_ms` (0: soon); -1: no timer. */
    using TimerHook = std::function<void(long timeout_ms)>;

#if MAAS_CXX_EXCEPTIONS
    explicit Multi(Client &client) { detail::check(maas_multi_new(&m_, client.get())); }
#endif
    /** Without exceptions: `ec` set and no handle on failure. */
    Multi(Client &client, std::error_code &ec) noexcept
    {
        detail::report(maas_multi_new(&m_, client.get()), ec);
    }
    Multi(const Multi &) = delete;
    Multi &operator=(const Multi &) = delete;
    /** Stops and frees the streams still running (no callback), then the multi. */
    ~Multi()
    {
        maas_multi_free(m_);
        for (Entry &e : entries_)
            maas_stream_free(e.stream);
    }

#if MAAS_CXX_EXCEPTIONS
    /**
     * Start a stream. `on_token` as for Client::generate() ((std::string_view)
     * or (const Token &), returning void or bool: false cancels the stream);
     * `on_done(const maas::Done &)` once at the end. Either may be nullptr.
     */
    template <class OnToken, class OnDone>
    Id add(const Request &request, OnToken on_token, OnDone on_done)
    {
        std::error_code ec;
        Id id = add(request, std::move(on_token), std::move(on_done), ec);
        if (ec)
            throw Error::last(static_cast<maas_status>(ec.value()));
        return id;
    }

    /** Do what can be done without waiting; returns the streams still running. */
    std::size_t perform() { return drive(maas_multi_perform(m_, &running_)); }
    /** Wait up to `timeout_ms` for activity, then perform(). */
    std::size_t poll(int timeout_ms) { return drive(maas_multi_poll(m_, timeout_ms, &running_)); }
    /** The event loop saw `events` on `fd` (or the timer fired: MAAS_SOCKET_TIMEOUT, 0). */
    std::size_t socket_action(int fd, int events)
    {
        return drive(maas_multi_socket_action(m_, fd, events, &running_));
    }
    /** Switch to event-loop mode (before adding streams); the wake-up pipe is reported at once. */
    void set_callbacks(SocketHook on_socket, TimerHook on_timer)
    {
        std::error_code ec;
        set_callbacks(std::move(on_socket), std::move(on_timer), ec);
        if (hook_error_)
            std::rethrow_exception(std::exchange(hook_error_, nullptr));
        if (ec)
            throw Error::last(static_cast<maas_status>(ec.value()));
    }
#endif

    /* The same without exceptions: `ec` set on failure. */

    template <class OnToken, class OnDone>
    Id add(const Request &request, OnToken on_token, OnDone on_done, std::error_code &ec)
    {
        entries_.emplace_back();
        Entry &e = entries_.back();
        e.owner = this;
        e.id = ++last_id_;
        e.self = std::prev(entries_.end());
        if constexpr (!std::is_same_v<OnToken, std::nullptr_t>)
            e.on_token = [f = std::move(on_token)](const maas_token &t) mutable {
                return detail::deliver(f, t);
            };
        if constexpr (!std::is_same_v<OnDone, std::nullptr_t>)
            e.on_done = std::move(on_done);
        maas_request r = request.c_request();
        if (!detail::report(maas_multi_add(&e.stream, m_, &r, &Multi::token_cb,
                                           &Multi::details_cb, &Multi::done_cb, &e),
                            ec)) {
            entries_.pop_back();
            return 0;
        }
        return e.id;
    }

    std::size_t perform(std::error_code &ec) noexcept { return drive(maas_multi_perform(m_, &running_), ec); }
    std::size_t poll(int timeout_ms, std::error_code &ec) noexcept
    {
        return drive(maas_multi_poll(m_, timeout_ms, &running_), ec);
    }
    std::size_t socket_action(int fd, int events, std::error_code &ec) noexcept
    {
        return drive(maas_multi_socket_action(m_, fd, events, &running_), ec);
    }
    void set_callbacks(SocketHook on_socket, TimerHook on_timer, std::error_code &ec) noexcept
    {
        on_socket_ = std::move(on_socket);
        on_timer_ = std::move(on_timer);
        detail::report(maas_multi_set_callbacks(m_, &Multi::socket_cb, &Multi::timer_cb, this), ec);
    }

    /** Attach a pointer of the application's to a socket, handed back to the socket hook. */
    void assign(int fd, void *socket_payload, std::error_code &ec) noexcept
    {
        detail::report(maas_multi_assign(m_, fd, socket_payload), ec);
    }
    /** Cancel a stream from the driving thread; false when it has already ended. */
    bool cancel(Id id) noexcept
    {
        for (Entry &e : entries_)
            if (e.id == id) {
                maas_stream_cancel(e.stream);
                return true;
            }
        return false;
    }
    /** From any thread: cut a poll() short, or make the wake-up pipe readable. */
    void wakeup() noexcept { maas_multi_wakeup(m_); }
    /** Milliseconds until the multi needs driving without activity; -1: never. */
    long timeout() noexcept { return maas_multi_timeout(m_); }
    /** Streams not yet done, as the last driving call counted them. */
    std::size_t running() const noexcept { return running_; }
    /** Streams added and not yet ended (their on_done not yet called). */
    std::size_t size() const noexcept { return entries_.size(); }

    maas_multi *get() const noexcept { return m_; }
    explicit operator bool() const noexcept { return m_ != nullptr; }

private:
    struct Entry {
        Multi *owner = nullptr;
        Id id = 0;
        maas_stream *stream = nullptr;
        std::function<bool(const maas_token &)> on_token;
        std::function<void(const Done &)> on_done;
        std::list<Entry>::iterator self;
    };

    static int token_cb(const maas_token *t, void *payload) noexcept
    {
        Entry *e = static_cast<Entry *>(payload);
        if (!e->on_token)
            return 0;
        return detail::guarded(e->owner->stream_error_, [&] { return e->on_token(*t); }) ? 0 : 1;
    }

    static int details_cb(const maas_details *, void *) noexcept { return 0; }

    static void done_cb(maas_stream *stream, maas_status status, void *payload) noexcept
    {
        Entry *e = static_cast<Entry *>(payload);
        Multi *m = e->owner;
        if (e->on_done)
            detail::guarded(m->stream_error_, [&] {
                Done d;
                d.status = status;
                if (const maas_details *det = maas_stream_details(stream)) {
                    d.details = Details::from(*det);
                    d.request_id = detail::view(det->request_id);
                }
                if (const maas_error *err = maas_stream_error(stream)) {
                    d.message = detail::view(err->message);
                    d.http_status = err->http_status;
                    d.request_id = detail::view(err->request_id);
                }
                e->on_done(d);
                return true;
            });
        /* The stream has left the multi: free it, and its entry. */
        maas_stream_free(stream);
        m->entries_.erase(e->self);
    }

    static int socket_cb(int fd, int what, void *payload, void *socket_payload) noexcept
    {
        Multi *m = static_cast<Multi *>(payload);
        if (!m->on_socket_)
            return 0;
        return detail::guarded(m->hook_error_, [&] {
                   m->on_socket_(fd, what, socket_payload);
                   return true;
               })
                   ? 0
                   : 1;
    }

    static int timer_cb(long timeout_ms, void *payload) noexcept
    {
        Multi *m = static_cast<Multi *>(payload);
        if (!m->on_timer_)
            return 0;
        return detail::guarded(m->hook_error_, [&] {
                   m->on_timer_(timeout_ms);
                   return true;
               })
                   ? 0
                   : 1;
    }

#if MAAS_CXX_EXCEPTIONS
    std::size_t drive(maas_status st)
    {
        if (hook_error_)
            std::rethrow_exception(std::exchange(hook_error_, nullptr));
        if (stream_error_)
            std::rethrow_exception(std::exchange(stream_error_, nullptr));
        detail::check(st);
        return running_;
    }
#endif

    std::size_t drive(maas_status st, std::error_code &ec) noexcept
    {
        detail::report(st, ec);
        return running_;
    }

    maas_multi *m_ = nullptr;
    std::list<Entry> entries_;
    Id last_id_ = 0;
    std::size_t running_ = 0;
    SocketHook on_socket_;
    TimerHook on_timer_;
    std::exception_ptr stream_error_, hook_error_;
};

} // namespace maas

#endif /* MAAS_MAAS_HPP */
