// xdan.hpp — header-only C++17 wrapper over the xdan C ABI (include/xdan.h).
//
// Model, Context and Sampler are move-only owners of the C handles; every failing call throws
// xdan::Error with the status and the library's detail message. Strings go in as
// std::string_view and come out as std::string; the C ABI's "buffer too small, retry with *len"
// protocol is handled here. Callbacks are std::function; an exception thrown from one is caught
// before it can cross the C frames and rethrown once the C call has returned.
//
// A moved-from or reset() object holds no handle: using it throws Error(XDAN_E_INVALID_ARG).
#pragma once

#include <xdan.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace xdan {

using Token = xdan_token;
using Seq = xdan_seq;

/// A failed call: the status code and the library's message (xdan_last_error()).
class Error : public std::runtime_error {
 public:
  Error(xdan_status status, std::string message)
      : std::runtime_error(std::string(xdan_status_name(status)) + ": " + message),
        status_(status),
        message_(std::move(message)) {}
  xdan_status status() const noexcept { return status_; }
  /// The library's detail alone, without the status name.
  const std::string &message() const noexcept { return message_; }

 private:
  xdan_status status_;
  std::string message_;
};

namespace detail {

// xdan_last_error() is per thread and valid until the next call on it: read it at once.
inline void check(xdan_status s, const char *op) {
  if (s == XDAN_OK) return;
  const char *detail = xdan_last_error();
  std::string msg = (detail && *detail) ? std::string(detail) : std::string("(no detail)");
  throw Error(s, std::string(op) + ": " + msg);
}

[[noreturn]] inline void closed(const char *what) {
  throw Error(XDAN_E_INVALID_ARG, std::string(what) + " is closed (moved from or reset)");
}

// Runs a string-returning C call with the retry protocol: first into a small buffer, then into
// one of the size the library reported.
template <typename F>
std::string string_out(const char *op, F &&call) {
  std::string out(256, '\0');
  size_t len = 0;
  xdan_status s = call(out.data(), out.size(), &len);
  if (s == XDAN_E_BUFFER_TOO_SMALL) {
    out.assign(len + 1, '\0');
    s = call(out.data(), out.size(), &len);
  }
  check(s, op);
  out.resize(len);
  return out;
}

struct ModelDeleter {
  void operator()(xdan_model *m) const noexcept { xdan_model_free(m); }
};
struct ContextDeleter {
  void operator()(xdan_context *c) const noexcept { xdan_context_free(c); }
};
struct SamplerDeleter {
  void operator()(xdan_sampler *s) const noexcept { xdan_sampler_free(s); }
};

// A std::function<bool(...)> called from C: exceptions are kept for the caller to rethrow.
template <typename Fn>
struct Callback {
  Fn fn;
  std::exception_ptr error;
};

inline bool progress_trampoline(float fraction, void *user) noexcept {
  auto *cb = static_cast<Callback<std::function<bool(float)>> *>(user);
  if (cb->error) return false;
  try {
    return cb->fn(fraction);
  } catch (...) {
    cb->error = std::current_exception();
    return false;
  }
}

inline bool abort_trampoline(float fraction, void *user) noexcept {
  auto *cb = static_cast<Callback<std::function<bool()>> *>(user);
  (void)fraction;
  if (cb->error) return false;
  try {
    return cb->fn();
  } catch (...) {
    cb->error = std::current_exception();
    return false;
  }
}

// The process-wide log sink. The library may call it from any thread, at any time, so the
// function lives in a static and is swapped under a lock; it is called outside the lock so that it
// may itself set a new sink.
using LogFn = std::function<void(xdan_log_level, std::string_view)>;
struct LogSink {
  std::mutex mu;
  std::shared_ptr<LogFn> fn;
};
inline LogSink &log_sink() {
  static LogSink *sink = new LogSink();  // never destroyed: library threads may log during exit
  return *sink;
}
inline void log_trampoline(xdan_log_level level, const char *message, void *) noexcept {
  std::shared_ptr<LogFn> fn;
  {
    std::lock_guard<std::mutex> lock(log_sink().mu);
    fn = log_sink().fn;
  }
  if (!fn) return;
  try {
    (*fn)(level, message ? std::string_view(message) : std::string_view());
  } catch (...) {
    // A log sink has no caller to report to; its exceptions are dropped.
  }
}

}  // namespace detail

inline uint32_t abi_version() noexcept { return xdan_abi_version(); }
inline std::string version() { return xdan_version(); }
inline bool cuda_available() noexcept { return xdan_cuda_available(); }
inline std::string status_name(xdan_status s) { return xdan_status_name(s); }

/// Sends the library's log lines to `fn` (from any thread); an empty function restores the
/// default (stderr, warnings and errors).
inline void set_log_callback(std::function<void(xdan_log_level, std::string_view)> fn) {
  auto &sink = detail::log_sink();
  if (!fn) {
    xdan_set_log_callback(nullptr, nullptr);
    std::lock_guard<std::mutex> lock(sink.mu);
    sink.fn.reset();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(sink.mu);
    sink.fn = std::make_shared<detail::LogFn>(std::move(fn));
  }
  xdan_set_log_callback(&detail::log_trampoline, nullptr);
}

/// Model loading options: the C struct, filled with the library's defaults, plus a progress
/// callback (return false to cancel; load then throws Error(XDAN_E_CANCELLED)).
struct ModelParams : xdan_model_params {
  ModelParams() noexcept : xdan_model_params() {
    xdan_model_params_init(this);
    size = sizeof(xdan_model_params);
  }
  std::function<bool(float)> on_progress;
};

struct ContextParams : xdan_context_params {
  ContextParams() noexcept : xdan_context_params() {
    xdan_context_params_init(this);
    size = sizeof(xdan_context_params);
  }
  /// Polled during step(); returning false cancels the step (Error(XDAN_E_CANCELLED)).
  std::function<bool()> abort_check;
};

struct SamplerParams : xdan_sampler_params {
  SamplerParams() noexcept : xdan_sampler_params() {
    xdan_sampler_params_init(this);
    size = sizeof(xdan_sampler_params);
  }
  static SamplerParams greedy() {
    SamplerParams p;
    p.temperature = 0.0f;
    return p;
  }
};

struct ModelInfo : xdan_model_info {
  ModelInfo() noexcept : xdan_model_info() {}
  std::string arch_name() const { return std::string(arch, strnlen_(arch, sizeof arch)); }

 private:
  static size_t strnlen_(const char *s, size_t cap) {
    size_t n = 0;
    while (n < cap && s[n] != '\0') ++n;
    return n;
  }
};

struct ChatMessage {
  std::string role;
  std::string content;
};

struct KvStats {
  uint64_t capacity_tokens = 0, used_tokens = 0, shared_tokens = 0, bytes = 0;
};

class Context;
class Sampler;

class Model {
 public:
  Model() = default;

  /// Loads a GGUF file; throws Error (e.g. XDAN_E_IO for a missing file) with the library's message.
  static Model load(const std::string &path, const ModelParams &params = ModelParams()) {
    xdan_model_params p = params;
    detail::Callback<std::function<bool(float)>> cb{params.on_progress, nullptr};
    if (cb.fn) {
      p.progress = &detail::progress_trampoline;
      p.progress_user = &cb;
    }
    xdan_model *m = nullptr;
    xdan_status s = xdan_model_load(path.c_str(), &p, &m);
    if (cb.error) {
      xdan_model_free(s == XDAN_OK ? m : nullptr);
      std::rethrow_exception(cb.error);
    }
    detail::check(s, "xdan_model_load");
    return Model(m);
  }

  explicit operator bool() const noexcept { return m_ != nullptr; }
  xdan_model *get() const noexcept { return m_.get(); }
  /// Frees the model now (contexts made from it keep working: they hold their own reference).
  void reset() noexcept { m_.reset(); }

  ModelInfo info() const {
    ModelInfo out;
    out.size = sizeof(xdan_model_info);
    detail::check(xdan_model_info_get(handle("model"), &out), "xdan_model_info_get");
    return out;
  }

  /// A GGUF metadata value as text; throws Error(XDAN_E_INVALID_ARG) when the key is absent.
  std::string meta(const std::string &key) const {
    const xdan_model *m = handle("model");
    return detail::string_out("xdan_model_meta", [&](char *buf, size_t cap, size_t *len) {
      return xdan_model_meta(m, key.c_str(), buf, cap, len);
    });
  }

  std::vector<Token> tokenize(std::string_view text, uint32_t flags = XDAN_TOKENIZE_ADD_SPECIAL) const {
    const xdan_model *m = handle("model");
    std::vector<Token> out(text.size() + 4);
    size_t n = 0;
    xdan_status s = xdan_tokenize(m, text.data(), text.size(), flags, out.data(), out.size(), &n);
    if (s == XDAN_E_BUFFER_TOO_SMALL) {
      out.resize(n);
      s = xdan_tokenize(m, text.data(), text.size(), flags, out.data(), out.size(), &n);
    }
    detail::check(s, "xdan_tokenize");
    out.resize(n);
    return out;
  }

  std::string detokenize(const std::vector<Token> &tokens, uint32_t flags = 0) const {
    return detokenize(tokens.data(), tokens.size(), flags);
  }
  std::string detokenize(const Token *tokens, size_t n, uint32_t flags = 0) const {
    const xdan_model *m = handle("model");
    return detail::string_out("xdan_detokenize", [&](char *buf, size_t cap, size_t *len) {
      return xdan_detokenize(m, tokens, n, flags, buf, cap, len);
    });
  }

  std::string token_piece(Token t) const {
    const xdan_model *m = handle("model");
    return detail::string_out("xdan_token_piece",
                              [&](char *buf, size_t cap, size_t *len) { return xdan_token_piece(m, t, buf, cap, len); });
  }

  bool is_eog(Token t) const { return xdan_token_is_eog(handle("model"), t); }

  /// Renders the model's chat template.
  std::string chat_apply(const std::vector<ChatMessage> &messages, bool add_assistant_prompt = true) const {
    const xdan_model *m = handle("model");
    std::vector<xdan_chat_message> msgs;
    msgs.reserve(messages.size());
    for (const auto &msg : messages) msgs.push_back(xdan_chat_message{msg.role.c_str(), msg.content.c_str()});
    return detail::string_out("xdan_chat_apply", [&](char *buf, size_t cap, size_t *len) {
      return xdan_chat_apply(m, msgs.data(), msgs.size(), add_assistant_prompt, buf, cap, len);
    });
  }

 private:
  explicit Model(xdan_model *m) : m_(m) {}
  xdan_model *handle(const char *what) const {
    if (!m_) detail::closed(what);
    return m_.get();
  }
  std::unique_ptr<xdan_model, detail::ModelDeleter> m_;
  friend class Context;
  friend class Sampler;
};

/// Read-only view of one sequence's logits; valid until the next step/truncate on the context.
struct Logits {
  const float *data = nullptr;
  size_t size = 0;
  const float *begin() const noexcept { return data; }
  const float *end() const noexcept { return data + size; }
  float operator[](size_t i) const noexcept { return data[i]; }
  /// Index of the largest logit (the lowest on ties, as greedy sampling picks).
  Token argmax() const noexcept {
    size_t best = 0;
    for (size_t i = 1; i < size; ++i)
      if (data[i] > data[best]) best = i;
    return static_cast<Token>(best);
  }
};

/// Tokens to append to one sequence in a step_batch.
struct SeqTokens {
  Seq seq;
  std::vector<Token> tokens;
};

class Context {
 public:
  Context() = default;

  Context(const Model &model, const ContextParams &params = ContextParams()) {
    xdan_context_params p = params;
    if (params.abort_check) {
      // Heap-held so that moving the Context keeps the pointer the library holds valid.
      abort_ = std::make_unique<detail::Callback<std::function<bool()>>>();
      abort_->fn = params.abort_check;
      p.abort_check = &detail::abort_trampoline;
      p.abort_user = abort_.get();
    }
    xdan_context *c = nullptr;
    detail::check(xdan_context_new(model.handle("model"), &p, &c), "xdan_context_new");
    c_.reset(c);
  }

  explicit operator bool() const noexcept { return c_ != nullptr; }
  xdan_context *get() const noexcept { return c_.get(); }
  void reset() noexcept {
    c_.reset();
    abort_.reset();
  }

  void step(Seq seq, const std::vector<Token> &tokens) { step(seq, tokens.data(), tokens.size()); }
  void step(Seq seq, const Token *tokens, size_t n) {
    xdan_context *c = handle();
    finish(xdan_step(c, seq, tokens, n), "xdan_step");
  }
  void step(Seq seq, Token token) { step(seq, &token, 1); }

  void step_batch(const std::vector<SeqTokens> &items) {
    std::vector<xdan_seq_tokens> raw;
    raw.reserve(items.size());
    for (const auto &it : items) raw.push_back(xdan_seq_tokens{it.seq, it.tokens.data(), it.tokens.size()});
    xdan_context *c = handle();
    finish(xdan_step_batch(c, raw.data(), raw.size()), "xdan_step_batch");
  }

  Logits logits(Seq seq) const {
    Logits out;
    detail::check(xdan_logits(handle(), seq, &out.data, &out.size), "xdan_logits");
    return out;
  }

  uint32_t seq_len(Seq seq) const { return xdan_seq_len(handle(), seq); }
  void seq_truncate(Seq seq, uint32_t len) { detail::check(xdan_seq_truncate(handle(), seq, len), "xdan_seq_truncate"); }
  void seq_clear(Seq seq) { detail::check(xdan_seq_clear(handle(), seq), "xdan_seq_clear"); }
  void seq_fork(Seq src, Seq dst) { detail::check(xdan_seq_fork(handle(), src, dst), "xdan_seq_fork"); }
  void seq_save(Seq seq, const std::string &path) {
    detail::check(xdan_seq_save(handle(), seq, path.c_str()), "xdan_seq_save");
  }
  void seq_load(Seq seq, const std::string &path) {
    detail::check(xdan_seq_load(handle(), seq, path.c_str()), "xdan_seq_load");
  }

  KvStats kv_stats() const {
    xdan_kv_stats raw{};
    raw.size = sizeof raw;
    detail::check(xdan_kv_stats_get(handle(), &raw), "xdan_kv_stats_get");
    return KvStats{raw.capacity_tokens, raw.used_tokens, raw.shared_tokens, raw.bytes};
  }

 private:
  xdan_context *handle() const {
    if (!c_) detail::closed("context");
    return c_.get();
  }
  void finish(xdan_status s, const char *op) {
    if (abort_ && abort_->error) {
      std::exception_ptr e = abort_->error;
      abort_->error = nullptr;
      std::rethrow_exception(e);
    }
    detail::check(s, op);
  }
  std::unique_ptr<xdan_context, detail::ContextDeleter> c_;
  std::unique_ptr<detail::Callback<std::function<bool()>>> abort_;
  friend class Sampler;
};

class Sampler {
 public:
  Sampler() = default;
  Sampler(const Model &model, const SamplerParams &params = SamplerParams()) {
    xdan_sampler *s = nullptr;
    detail::check(xdan_sampler_new(model.handle("model"), &params, &s), "xdan_sampler_new");
    s_.reset(s);
  }

  explicit operator bool() const noexcept { return s_ != nullptr; }
  xdan_sampler *get() const noexcept { return s_.get(); }
  /// Frees the sampler now. (clear_history() is what xdan_sampler_reset does.)
  void reset() noexcept { s_.reset(); }

  /// Picks a token from `seq`'s last logits and records it in this sampler's history.
  Token sample(Context &ctx, Seq seq) {
    Token t = 0;
    detail::check(xdan_sample(ctx.handle(), seq, handle(), &t), "xdan_sample");
    return t;
  }
  void accept(const std::vector<Token> &tokens) {
    detail::check(xdan_sampler_accept(handle(), tokens.data(), tokens.size()), "xdan_sampler_accept");
  }
  /// Forgets the recorded tokens (xdan_sampler_reset).
  void clear_history() { xdan_sampler_reset(handle()); }

 private:
  xdan_sampler *handle() const {
    if (!s_) detail::closed("sampler");
    return s_.get();
  }
  std::unique_ptr<xdan_sampler, detail::SamplerDeleter> s_;
};

}  // namespace xdan
