// XLA FFI handlers of the global operators (<sparsetopk/global.hpp>) for the
// CPU platform of sparsetopk.jax: one top-k over a list of arrays, each
// handed over as its own buffer (a variadic list: ffi::RemainingArgs and
// RemainingRets), never concatenated. Python side: python/sparsetopk/jax/_global.py.
//
// Every target takes the same attributes, parts (how many arrays), ranks, k,
// l and p, and its buffers in this order:
//   args: [rank, history, count]  (ranks > 0 only: a sharded call, below)
//         [state]                 (the derivatives: the forward's RowState, uint32[22])
//         x_1 .. x_parts          (float32 or float64, any shapes, flat in practice)
//         [v_1 .. v_parts]        (the derivatives: the tangent or cotangent)
//   rets: out_1 .. out_parts
//         [state]                 (the soft forwards)
//         [kind, request]         (ranks > 0 only)
//
// ranks = 0: one process, the core's LocalReduction: bitwise the row
// operator on the concatenation (docs/global.md).
//
// ranks > 0: this device's shard of a global row spread over `ranks` devices
// (inside jax.shard_map). The core calls its Reduction from C++, but JAX's
// collectives (psum, pmax, all_gather) are ops between custom calls. So a call
// runs the engine with a ReplayReduction: the collectives already made are in
// `history` (row i: the i-th collective's result; `count` of them), replayed
// in order; at the first collective beyond them the engine stops and the call
// returns it as a request: `kind` (1 sum, 2 max, 3 gather) and its payload
// (`request`, kRequestWidth doubles, zero-padded). Python reduces the request
// across the devices, appends the result to the history and calls again, until
// a call returns kind 0: the engine ran to the end and the outputs (and state)
// are its result. Every device makes the same requests in the same order (the
// engine's contract for a Reduction). A payload never exceeds kRequestWidth
// (256 radix counts per pass, 129 sums per round, 64 window entries of 3
// values per device in a gather), whatever n.

#include <sparsetopk/arguments.hpp>
#include <sparsetopk/errors.hpp>
#include <sparsetopk/global.hpp>
#include <sparsetopk/row_state.hpp>
#include <sparsetopk/topk.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ffi_bindings.hpp"
#include "ffi_checks.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace sparsetopk::jax {
namespace {

enum class GlobalOp { soft_mask, soft_mag, hard_mask, hard_mag, mask_jvp, mask_vjp, mag_jvp, mag_vjp };

constexpr bool is_soft_forward(GlobalOp op) { return op == GlobalOp::soft_mask || op == GlobalOp::soft_mag; }
constexpr bool is_derivative(GlobalOp op) {
  return op == GlobalOp::mask_jvp || op == GlobalOp::mask_vjp || op == GlobalOp::mag_jvp || op == GlobalOp::mag_vjp;
}

constexpr const char* global_target(GlobalOp op) {
  switch (op) {
    case GlobalOp::soft_mask: return "sparsetopk_soft_topk_mask_global";
    case GlobalOp::soft_mag: return "sparsetopk_soft_topk_mag_global";
    case GlobalOp::hard_mask: return "sparsetopk_hard_topk_mask_global";
    case GlobalOp::hard_mag: return "sparsetopk_hard_topk_mag_global";
    case GlobalOp::mask_jvp: return "sparsetopk_soft_topk_mask_global_jvp";
    case GlobalOp::mask_vjp: return "sparsetopk_soft_topk_mask_global_vjp";
    case GlobalOp::mag_jvp: return "sparsetopk_soft_topk_mag_global_jvp";
    case GlobalOp::mag_vjp: return "sparsetopk_soft_topk_mag_global_vjp";
  }
  return "sparsetopk_global";
}

// The payload of one collective of a sharded call, in doubles, and the most
// collectives one call makes (python/sparsetopk/jax/_global.py has both).
constexpr std::size_t kRequestWidth = 256;
constexpr std::size_t kMaxCollectives = 64;

// Thrown by ReplayReduction at the first collective not in the history (not
// an std::exception: `guarded` never sees it).
struct Suspended {};

class ReplayReduction final : public Reduction {
 public:
  ReplayReduction(std::size_t rank, std::size_t ranks, const double* history, std::size_t count)
      : rank_(rank), ranks_(ranks), history_(history), count_(count) {}
  std::size_t rank() const override { return rank_; }
  std::size_t ranks() const override { return ranks_; }
  void sum(std::span<double> values) override { take(1, values); }
  void max(std::span<double> values) override { take(2, values); }
  std::vector<double> gather(std::span<const double> values) override {
    check_width(values.size());
    if (next_ < count_) {
      const double* row = history_ + next_++ * ranks_ * kRequestWidth;
      std::vector<double> all;
      all.reserve(ranks_ * values.size());
      for (std::size_t r = 0; r < ranks_; ++r)
        all.insert(all.end(), row + r * kRequestWidth, row + r * kRequestWidth + values.size());
      return all;
    }
    ask(3, values);
  }

  int32_t kind = 0;  // 0 while nothing is asked
  std::array<double, kRequestWidth> request{};

 private:
  void take(int32_t what, std::span<double> values) {
    check_width(values.size());
    if (next_ < count_) {
      const double* row = history_ + next_++ * ranks_ * kRequestWidth;
      std::copy(row, row + values.size(), values.begin());
      return;
    }
    ask(what, values);
  }
  [[noreturn]] void ask(int32_t what, std::span<const double> values) {
    if (next_ >= kMaxCollectives)
      throw InvalidArgument("a sharded global call needs more than " + std::to_string(kMaxCollectives) +
                            " collectives");
    kind = what;
    request.fill(0.0);
    std::copy(values.begin(), values.end(), request.begin());
    throw Suspended{};
  }
  static void check_width(std::size_t size) {
    if (size > kRequestWidth)
      throw InvalidArgument("a sharded global call asked for a collective of " + std::to_string(size) +
                            " values, more than the " + std::to_string(kRequestWidth) +
                            " it carries (the engine's fallback that gathers a whole window: rounding "
                            "outside the bounds of row_window.hpp)");
  }

  std::size_t rank_, ranks_;
  const double* history_;
  std::size_t count_, next_ = 0;
};

ffi::AnyBuffer arg_at(const ffi::RemainingArgs& args, std::size_t i) {
  auto buffer = args.get<ffi::AnyBuffer>(i);
  if (!buffer.has_value()) throw InvalidArgument("argument " + std::to_string(i) + " is not a buffer");
  return *buffer;
}

ffi::AnyBuffer ret_at(const ffi::RemainingRets& rets, std::size_t i) {
  auto buffer = rets.get<ffi::AnyBuffer>(i);
  if (!buffer.has_value()) throw InvalidArgument("result " + std::to_string(i) + " is not a buffer");
  return **buffer;
}

template <class T>
std::span<const T> in_of(const ffi::AnyBuffer& b) {
  return {static_cast<const T*>(b.untyped_data()), b.element_count()};
}

template <class T>
std::span<T> out_of(ffi::AnyBuffer& b) {
  return {static_cast<T*>(b.untyped_data()), b.element_count()};
}

struct Buffers {
  std::vector<ffi::AnyBuffer> x, v, out;
  const ffi::AnyBuffer* state_in = nullptr;
  ffi::AnyBuffer* state_out = nullptr;
};

template <class T>
void run_typed(GlobalOp op, Buffers& b, std::size_t k, const SoftTopkOptions& options, Reduction* reduction) {
  std::vector<std::span<const T>> xs, vs;
  std::vector<std::span<T>> outs;
  for (const ffi::AnyBuffer& x : b.x) xs.push_back(in_of<T>(x));
  for (const ffi::AnyBuffer& v : b.v) vs.push_back(in_of<T>(v));
  for (ffi::AnyBuffer& o : b.out) outs.push_back(out_of<T>(o));
  const ConstParts<T> x(xs), v(vs);
  const Parts<T> out(outs);
  RowState state{};
  if (b.state_in) std::memcpy(&state, b.state_in->untyped_data(), sizeof(RowState));
  switch (op) {
    case GlobalOp::soft_mask: soft_topk_mask_global<T>(x, k, out, options, &state, reduction); break;
    case GlobalOp::soft_mag: soft_topk_mag_global<T>(x, k, out, options, &state, reduction); break;
    case GlobalOp::hard_mask: hard_topk_mask_global<T>(x, k, out, reduction); break;
    case GlobalOp::hard_mag: hard_topk_mag_global<T>(x, k, out, reduction); break;
    case GlobalOp::mask_jvp: soft_topk_mask_global_jvp<T>(x, state, options, v, out, reduction); break;
    case GlobalOp::mask_vjp: soft_topk_mask_global_vjp<T>(x, state, options, v, out, reduction); break;
    case GlobalOp::mag_jvp: soft_topk_mag_global_jvp<T>(x, state, options, v, out, reduction); break;
    case GlobalOp::mag_vjp: soft_topk_mag_global_vjp<T>(x, state, options, v, out, reduction); break;
  }
  if (b.state_out) std::memcpy(b.state_out->untyped_data(), &state, sizeof(RowState));
}

void check_scalar(const ffi::AnyBuffer& b, ffi::DataType type, const char* name) {
  if (b.element_type() != type || b.element_count() != 1)
    throw InvalidArgument(std::string(name) + " must be a scalar of the right type");
}

void check_state_words(const ffi::AnyBuffer& state, const char* name) {
  if (state.element_type() != ffi::DataType::U32 || state.element_count() != static_cast<std::size_t>(kStateWords))
    throw InvalidArgument(std::string(name) + " must be uint32[" + std::to_string(kStateWords) +
                          "] (the raw bytes of one RowState)");
}

template <GlobalOp op>
ffi::Error global_handler(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t parts, int64_t ranks, int64_t k,
                          double l, double p) {
  return guarded([&] {
    if (parts < 1) throw InvalidArgument("the list of arrays must not be empty");
    if (ranks < 0) throw InvalidArgument("ranks must be >= 0");
    const std::size_t count = static_cast<std::size_t>(parts);
    const bool sharded = ranks > 0;
    const std::size_t args_expected = (sharded ? 3 : 0) + (is_derivative(op) ? 1 + 2 * count : count);
    const std::size_t rets_expected = count + (is_soft_forward(op) ? 1 : 0) + (sharded ? 2 : 0);
    if (args.size() != args_expected || rets.size() != rets_expected)
      throw InvalidArgument("expected " + std::to_string(args_expected) + " operands and " +
                            std::to_string(rets_expected) + " results, got " + std::to_string(args.size()) +
                            " and " + std::to_string(rets.size()));
    std::size_t a = 0, r = 0;
    std::size_t rank = 0, done = 0;
    const double* history = nullptr;
    if (sharded) {
      const ffi::AnyBuffer rank_buffer = arg_at(args, a++), history_buffer = arg_at(args, a++),
                           count_buffer = arg_at(args, a++);
      check_scalar(rank_buffer, ffi::DataType::S32, "rank");
      check_scalar(count_buffer, ffi::DataType::S32, "count");
      rank = static_cast<std::size_t>(*static_cast<const int32_t*>(rank_buffer.untyped_data()));
      done = static_cast<std::size_t>(*static_cast<const int32_t*>(count_buffer.untyped_data()));
      if (history_buffer.element_type() != ffi::DataType::F64 ||
          history_buffer.element_count() != kMaxCollectives * static_cast<std::size_t>(ranks) * kRequestWidth)
        throw InvalidArgument("history must be float64[" + std::to_string(kMaxCollectives) + ", ranks * " +
                              std::to_string(kRequestWidth) + "]");
      if (rank >= static_cast<std::size_t>(ranks) || done > kMaxCollectives)
        throw InvalidArgument("rank or count out of range");
      history = static_cast<const double*>(history_buffer.untyped_data());
    }
    Buffers b;
    std::optional<ffi::AnyBuffer> state_in_buffer;
    if (is_derivative(op)) {
      state_in_buffer = arg_at(args, a++);
      check_state_words(*state_in_buffer, "state");
      b.state_in = &*state_in_buffer;
    }
    for (std::size_t i = 0; i < count; ++i) b.x.push_back(arg_at(args, a++));
    if (is_derivative(op))
      for (std::size_t i = 0; i < count; ++i) b.v.push_back(arg_at(args, a++));
    for (std::size_t i = 0; i < count; ++i) b.out.push_back(ret_at(rets, r++));
    std::optional<ffi::AnyBuffer> state_out_buffer;
    if (is_soft_forward(op)) {
      state_out_buffer = ret_at(rets, r++);
      check_state_words(*state_out_buffer, "the state");
      b.state_out = &*state_out_buffer;
    }
    check_float(b.x[0]);
    std::size_t n = 0;
    for (std::size_t i = 0; i < count; ++i) {
      if (b.x[i].element_type() != b.x[0].element_type())
        throw InvalidArgument("every array must have the dtype of the first (float32 or float64)");
      if (b.out[i].element_type() != b.x[0].element_type() || b.out[i].element_count() != b.x[i].element_count())
        throw InvalidArgument("output " + std::to_string(i) + " must have the dtype and size of array " +
                              std::to_string(i));
      if (is_derivative(op) && (b.v[i].element_type() != b.x[0].element_type() ||
                                b.v[i].element_count() != b.x[i].element_count()))
        throw InvalidArgument("tangent " + std::to_string(i) + " must have the dtype and size of array " +
                              std::to_string(i));
      n += b.x[i].element_count();
    }
    if (!sharded && !is_derivative(op)) check_k(k, n);  // sharded: n is global, the engine checks k
    if (k < 0) throw InvalidArgument("k must be >= 0, got " + std::to_string(k));
    const SoftTopkOptions options{l, p, Solver::automatic};
    const bool wide = b.x[0].element_type() == ffi::DataType::F64;
    const auto run = [&](Reduction* reduction) {
      if (wide) run_typed<double>(op, b, static_cast<std::size_t>(k), options, reduction);
      else run_typed<float>(op, b, static_cast<std::size_t>(k), options, reduction);
    };
    if (!sharded) return run(nullptr);
    ReplayReduction replay(rank, static_cast<std::size_t>(ranks), history, done);
    try {
      run(&replay);
    } catch (const Suspended&) {
    }
    ffi::AnyBuffer kind = ret_at(rets, r++), request = ret_at(rets, r++);
    check_scalar(kind, ffi::DataType::S32, "kind");
    if (request.element_type() != ffi::DataType::F64 || request.element_count() != kRequestWidth)
      throw InvalidArgument("request must be float64[" + std::to_string(kRequestWidth) + "]");
    *static_cast<int32_t*>(kind.untyped_data()) = replay.kind;
    std::copy(replay.request.begin(), replay.request.end(), static_cast<double*>(request.untyped_data()));
  }, global_target(op));
}

template <GlobalOp op>
Target global_row() {
  return {global_target(op),
          SPARSETOPK_FFI_HANDLER(global_handler<op>, ffi::Ffi::Bind()
                                                         .RemainingArgs()
                                                         .RemainingRets()
                                                         .Attr<int64_t>("parts")
                                                         .Attr<int64_t>("ranks")
                                                         .Attr<int64_t>("k")
                                                         .Attr<double>("l")
                                                         .Attr<double>("p"))};
}

}  // namespace

std::vector<Target> global_targets() {
  return {global_row<GlobalOp::soft_mask>(), global_row<GlobalOp::soft_mag>(), global_row<GlobalOp::hard_mask>(),
          global_row<GlobalOp::hard_mag>(),  global_row<GlobalOp::mask_jvp>(), global_row<GlobalOp::mask_vjp>(),
          global_row<GlobalOp::mag_jvp>(),   global_row<GlobalOp::mag_vjp>()};
}

}  // namespace sparsetopk::jax
