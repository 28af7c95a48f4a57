// XLA FFI handlers (the typed API of xla/ffi/api/ffi.h) of the operators, for
// the CPU platform of sparsetopk.jax, and the table of its targets (at the
// end): python/sparsetopk/jax/_ffi.py reads the table through
// sparsetopk_ffi_targets (ffi_bindings.hpp) and registers every row with
// jax.ffi.register_ffi_target, so a target's name is written here only.
//
// Each call hands every row of x to the core at once: rows run along the last
// axis (the Python side moves the operator's axis there) and all leading axes,
// vmapped ones included, are the batch. No math lives here: the handlers check
// the buffers, then call <sparsetopk/topk.hpp> or <sparsetopk/dykstra.hpp>.
//
// - forward (x) -> out, and with state (x) -> (out, state): `state` holds the
//   rows' RowStates (<sparsetopk/row_state.hpp>) as raw bytes, uint32
//   [..., 2 * RowState::size] (ffi_checks.hpp): O(rows), exact for float32 and float64 x;
// - derivatives (x, state, v) -> J v (jvp) or J^T v (vjp), attributes l and p
//   (p = 2 for Dykstra's rows): the core's soft_topk_{mask,mag}_{jvp,vjp}, which
//   recompute the band's c_i from x and the state.

#include <sparsetopk/dykstra.hpp>
#include <sparsetopk/form.hpp>
#include <sparsetopk/errors.hpp>
#include <sparsetopk/row_state.hpp>
#include <sparsetopk/topk.hpp>
#include <sparsetopk/topk_loss.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ffi_bindings.hpp"
#include "ffi_checks.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace sparsetopk::jax {
namespace {

// How a soft forward pass is solved: the exact solvers of topk.hpp, or
// `num_iter` iterations of Dykstra's algorithm (p = 2).
struct Method {
  bool dykstra = false;
  SoftTopkOptions exact;
  DykstraOptions approximate;
};

Method method_of(double l, double p, std::string_view solver, int64_t num_iter) {
  Method method;
  method.exact = SoftTopkOptions{l, p, Solver::automatic};
  if (solver == "pav") {
    method.exact.solver = Solver::pav;
  } else if (solver == "threshold") {
    method.exact.solver = Solver::threshold;
  } else if (solver == "dykstra") {
    check_iterations(num_iter, "num_iter");
    method.dykstra = true;
    method.approximate = DykstraOptions{l, static_cast<std::size_t>(num_iter)};
  } else if (solver != "auto") {
    throw InvalidArgument("solver = \"" + std::string(solver) +
                          "\" is not one of \"auto\", \"pav\", \"threshold\", \"dykstra\"");
  }
  return method;
}

// Scratch of the calling thread: reused by every call it makes.
struct Scratch {
  Workspace workspace;
  std::vector<RowState> states;  // only for a state buffer not aligned for double
  std::vector<int64_t> labels;   // int32 labels of the top-k loss, widened
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

template <class T>
std::span<const T> in_span(const ffi::AnyBuffer& b) {
  return {static_cast<const T*>(b.untyped_data()), b.element_count()};
}

template <class T>
std::span<T> out_span(ffi::AnyBuffer& b) {
  return {static_cast<T*>(b.untyped_data()), b.element_count()};
}

// The rows of a state buffer (checked by check_state).
std::size_t state_rows(const ffi::AnyBuffer& state) {
  return state.element_count() / static_cast<std::size_t>(kStateWords);
}

bool aligned_for_states(const void* data) {
  return reinterpret_cast<std::uintptr_t>(data) % alignof(RowState) == 0;
}

// The RowStates of a state buffer, read in place (XLA aligns its buffers),
// or through a copy were one not aligned for double.
std::span<const RowState> states_in(const ffi::AnyBuffer& state) {
  const std::size_t rows = state_rows(state);
  if (aligned_for_states(state.untyped_data()))
    return {static_cast<const RowState*>(state.untyped_data()), rows};
  std::vector<RowState>& copy = scratch().states;
  copy.resize(rows);
  if (rows > 0) std::memcpy(copy.data(), state.untyped_data(), rows * sizeof(RowState));
  return copy;
}

// Runs write(states) on the RowStates of a state buffer, in place or through a copy.
template <class Write>
void write_states(ffi::AnyBuffer& state, Write&& write) {
  const std::size_t rows = state_rows(state);
  if (aligned_for_states(state.untyped_data())) {
    write(std::span<RowState>(static_cast<RowState*>(state.untyped_data()), rows));
    return;
  }
  std::vector<RowState>& copy = scratch().states;
  copy.assign(rows, RowState{});
  write(std::span<RowState>(copy));
  if (rows > 0) std::memcpy(state.untyped_data(), copy.data(), rows * sizeof(RowState));
}

template <class T>
void solve(Form op, std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out, const Method& method,
           std::span<RowState> state) {
  if (method.dykstra) {
    if (op == Form::mask) soft_topk_mask_dykstra(x, n, k, out, method.approximate, state);
    else soft_topk_mag_dykstra(x, n, k, out, method.approximate, state);
  } else {
    Workspace* workspace = &scratch().workspace;
    if (op == Form::mask) soft_topk_mask(x, n, k, out, method.exact, state, workspace);
    else soft_topk_mag(x, n, k, out, method.exact, state, workspace);
  }
}

template <class T>
void soft_forward_typed(Form op, const ffi::AnyBuffer& x, std::size_t n, std::size_t k, ffi::AnyBuffer& out,
                        const Method& method, ffi::AnyBuffer* state) {
  if (!state) return solve<T>(op, in_span<T>(x), n, k, out_span<T>(out), method, {});
  write_states(*state, [&](std::span<RowState> states) {
    if (n == 0) return std::fill(states.begin(), states.end(), RowState{});  // empty rows: no band
    solve<T>(op, in_span<T>(x), n, k, out_span<T>(out), method, states);
  });
}

// The soft forward pass; with `state`, also the state of the derivatives.
ffi::Error soft_forward(Form op, const ffi::AnyBuffer& x, ffi::AnyBuffer& out, ffi::AnyBuffer* state, int64_t k,
                        double l, double p, std::string_view solver, int64_t num_iter) {
  return guarded([&] {
    check_types(x, {&out});
    if (state) check_state(x, *state);
    const std::size_t n = row_length(x), top = checked_k(k, n);
    const Method method = method_of(l, p, solver, num_iter);
    if (x.element_type() == ffi::DataType::F64) soft_forward_typed<double>(op, x, n, top, out, method, state);
    else soft_forward_typed<float>(op, x, n, top, out, method, state);
  });
}

template <class T>
void hard_forward_typed(Form op, const ffi::AnyBuffer& x, std::size_t n, std::size_t k, ffi::AnyBuffer& out) {
  if (op == Form::mask) hard_topk_mask(in_span<T>(x), n, k, out_span<T>(out));
  else hard_topk_mag(in_span<T>(x), n, k, out_span<T>(out));
}

ffi::Error hard_forward(Form op, const ffi::AnyBuffer& x, ffi::AnyBuffer& out, int64_t k) {
  return guarded([&] {
    check_types(x, {&out});
    const std::size_t n = row_length(x), top = checked_k(k, n);
    if (x.element_type() == ffi::DataType::F64) hard_forward_typed<double>(op, x, n, top, out);
    else hard_forward_typed<float>(op, x, n, top, out);
  });
}

// J v (jvp) or J^T v (vjp) at the forward pass on x that left `state`.
enum class Product { jvp, vjp };

template <class T>
void derivative_typed(Form op, Product product, const ffi::AnyBuffer& x, std::span<const RowState> states,
                      const SoftTopkOptions& options, const ffi::AnyBuffer& v, ffi::AnyBuffer& out) {
  const std::size_t n = row_length(x);
  const std::span<const T> xs = in_span<T>(x), vs = in_span<T>(v);
  const std::span<T> result = out_span<T>(out);
  if (op == Form::mask) {
    if (product == Product::jvp) soft_topk_mask_jvp(xs, n, states, options, vs, result);
    else soft_topk_mask_vjp(xs, n, states, options, vs, result);
  } else {
    if (product == Product::jvp) soft_topk_mag_jvp(xs, n, states, options, vs, result);
    else soft_topk_mag_vjp(xs, n, states, options, vs, result);
  }
}

ffi::Error derivative(Form op, Product product, std::string_view target, const ffi::AnyBuffer& x,
                      const ffi::AnyBuffer& state, const ffi::AnyBuffer& v, ffi::AnyBuffer& out, double l, double p) {
  return guarded([&] {
    check_float(x);
    check_state(x, state);
    check_like_x(x, v, "v");
    check_like_x(x, out, "the output");
    if (x.element_count() == 0) return;  // nothing to write (rows of n = 0 have no band)
    const SoftTopkOptions options{l, p, Solver::automatic};
    if (x.element_type() == ffi::DataType::F64)
      derivative_typed<double>(op, product, x, states_in(state), options, v, out);
    else derivative_typed<float>(op, product, x, states_in(state), options, v, out);
  }, target);
}

// ---- the handler entry points ----

template <Form op>
ffi::Error soft(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out, int64_t k, double l, double p,
                std::string_view solver, int64_t num_iter) {
  return soft_forward(op, x, *out, nullptr, k, l, p, solver, num_iter);
}

template <Form op>
ffi::Error soft_with_state(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> state,
                           int64_t k, double l, double p, std::string_view solver, int64_t num_iter) {
  return soft_forward(op, x, *out, &*state, k, l, p, solver, num_iter);
}

template <Form op>
ffi::Error hard(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out, int64_t k) {
  return hard_forward(op, x, *out, k);
}

// The name of a derivative's target: its row of the table below, and its errors.
constexpr const char* derivative_target(Form op, Product product) {
  if (op == Form::mask)
    return product == Product::jvp ? "sparsetopk_soft_topk_mask_jvp" : "sparsetopk_soft_topk_mask_vjp";
  return product == Product::jvp ? "sparsetopk_soft_topk_mag_jvp" : "sparsetopk_soft_topk_mag_vjp";
}

template <Form op, Product product>
ffi::Error soft_derivative(ffi::AnyBuffer x, ffi::AnyBuffer state, ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out,
                           double l, double p) {
  return derivative(op, product, derivative_target(op, product), x, state, v, *out, l, p);
}

// ---- the top-k sum and loss (<sparsetopk/topk_loss.hpp>): one value per row ----

// A buffer of one value per row of x (x's leading axes), of x's dtype.
void check_per_row(const ffi::AnyBuffer& x, const ffi::AnyBuffer& buffer, std::string_view name) {
  const auto dims = buffer.dimensions(), x_dims = x.dimensions();
  bool same = buffer.element_type() == x.element_type() && dims.size() + 1 == x_dims.size();
  for (std::size_t i = 0; same && i < dims.size(); ++i) same = dims[i] == x_dims[i];
  if (!same) throw InvalidArgument(std::string(name) + " must have x's dtype and its leading axes, got " +
                                   shape_text(dims));
}

template <class T>
void topk_sum_typed(const ffi::AnyBuffer& x, std::size_t n, std::size_t k, ffi::AnyBuffer& value,
                    ffi::AnyBuffer& mask, ffi::AnyBuffer& state, const SoftTopkOptions& options) {
  write_states(state, [&](std::span<RowState> states) {
    if (n == 0) {  // rows of no entries: a sum of 0, no band
      std::fill(states.begin(), states.end(), RowState{});
      return std::fill(out_span<T>(value).begin(), out_span<T>(value).end(), T(0));
    }
    topk_sum<T>(in_span<T>(x), n, k, out_span<T>(value), options, out_span<T>(mask), states, &scratch().workspace);
  });
}

// (x) -> (value, mask, state): the value, its gradient and the mask's state (its Jacobian: the Hessian).
ffi::Error topk_sum_handler(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> value, ffi::Result<ffi::AnyBuffer> mask,
                            ffi::Result<ffi::AnyBuffer> state, int64_t k, double l, double p) {
  return guarded([&] {
    check_types(x, {&*mask});
    check_per_row(x, *value, "value");
    check_state(x, *state);
    const std::size_t n = row_length(x), top = checked_k(k, n);
    const SoftTopkOptions options{l, p, Solver::automatic};
    check_l(l), check_p(p);
    if (x.element_type() == ffi::DataType::F64) topk_sum_typed<double>(x, n, top, *value, *mask, *state, options);
    else topk_sum_typed<float>(x, n, top, *value, *mask, *state, options);
  }, "sparsetopk_topk_sum");
}

// The labels as int64 (int32 ones widened into scratch), one per row of x.
std::span<const int64_t> labels_of(const ffi::AnyBuffer& x, const ffi::AnyBuffer& target) {
  const auto type = target.element_type();
  if (type != ffi::DataType::S32 && type != ffi::DataType::S64)
    throw InvalidArgument("target must be int32 or int64 (class indices)");
  const auto dims = target.dimensions(), x_dims = x.dimensions();
  bool same = dims.size() + 1 == x_dims.size();
  for (std::size_t i = 0; same && i < dims.size(); ++i) same = dims[i] == x_dims[i];
  if (!same) throw InvalidArgument("target must have x's leading axes (one label per row), got " + shape_text(dims));
  if (type == ffi::DataType::S64) return in_span<int64_t>(target);
  const std::span<const int32_t> narrow = in_span<int32_t>(target);
  std::vector<int64_t>& wide = scratch().labels;
  wide.assign(narrow.begin(), narrow.end());
  return wide;
}

// (x, target) -> (loss, grad).
ffi::Error topk_loss_handler(ffi::AnyBuffer x, ffi::AnyBuffer target, ffi::Result<ffi::AnyBuffer> loss,
                             ffi::Result<ffi::AnyBuffer> grad, int64_t k, double l, double p) {
  return guarded([&] {
    check_types(x, {&*grad});
    check_per_row(x, *loss, "loss");
    const std::span<const int64_t> labels = labels_of(x, target);
    const std::size_t n = row_length(x);
    check_k(k, n, /*least=*/1);
    const SoftTopkOptions options{l, p, Solver::automatic};
    if (x.element_type() == ffi::DataType::F64)
      topk_loss<double>(in_span<double>(x), n, labels, static_cast<std::size_t>(k),
                        out_span<double>(*loss), options, out_span<double>(*grad), &scratch().workspace);
    else
      topk_loss<float>(in_span<float>(x), n, labels, static_cast<std::size_t>(k),
                       out_span<float>(*loss), options, out_span<float>(*grad), &scratch().workspace);
  }, "sparsetopk_topk_loss");
}

// ---- the table of targets ----

auto forward_binding() { return ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>(); }

template <Form op, Product product>
Target derivative_row() {
  return {derivative_target(op, product),
          SPARSETOPK_FFI_HANDLER((soft_derivative<op, product>), derivative_arguments(ffi::Ffi::Bind()))};
}

// The targets of the CPU platform; _ffi.py registers every row.
const Target targets[] = {
    {"sparsetopk_soft_topk_mask", SPARSETOPK_FFI_HANDLER(soft<Form::mask>, forward_binding().SPARSETOPK_SOFT_ATTRS)},
    {"sparsetopk_soft_topk_mag",
     SPARSETOPK_FFI_HANDLER(soft<Form::magnitude>, forward_binding().SPARSETOPK_SOFT_ATTRS)},
    {"sparsetopk_soft_topk_mask_with_state",
     SPARSETOPK_FFI_HANDLER(soft_with_state<Form::mask>,
                            forward_binding().Ret<ffi::AnyBuffer>().SPARSETOPK_SOFT_ATTRS)},
    {"sparsetopk_soft_topk_mag_with_state",
     SPARSETOPK_FFI_HANDLER(soft_with_state<Form::magnitude>,
                            forward_binding().Ret<ffi::AnyBuffer>().SPARSETOPK_SOFT_ATTRS)},
    {"sparsetopk_hard_topk_mask", SPARSETOPK_FFI_HANDLER(hard<Form::mask>, forward_binding().Attr<int64_t>("k"))},
    {"sparsetopk_hard_topk_mag", SPARSETOPK_FFI_HANDLER(hard<Form::magnitude>, forward_binding().Attr<int64_t>("k"))},
    derivative_row<Form::mask, Product::jvp>(),
    derivative_row<Form::mask, Product::vjp>(),
    derivative_row<Form::magnitude, Product::jvp>(),
    derivative_row<Form::magnitude, Product::vjp>(),
    {"sparsetopk_topk_sum",
     SPARSETOPK_FFI_HANDLER(topk_sum_handler, forward_binding().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                                  .Attr<int64_t>("k").Attr<double>("l").Attr<double>("p"))},
    {"sparsetopk_topk_loss",
     SPARSETOPK_FFI_HANDLER(topk_loss_handler, ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                                   .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                                   .Attr<int64_t>("k").Attr<double>("l").Attr<double>("p"))},
};

}  // namespace
}  // namespace sparsetopk::jax

extern "C" std::size_t sparsetopk_ffi_targets(const sparsetopk::jax::Target** rows) {
  // the row operators' targets, then the global operators' (global_handlers.cpp)
  static const std::vector<sparsetopk::jax::Target> all = [] {
    std::vector<sparsetopk::jax::Target> table(std::begin(sparsetopk::jax::targets), std::end(sparsetopk::jax::targets));
    const std::vector<sparsetopk::jax::Target> global = sparsetopk::jax::global_targets();
    table.insert(table.end(), global.begin(), global.end());
    return table;
  }();
  *rows = all.data();
  return all.size();
}
