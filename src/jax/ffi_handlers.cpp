// XLA FFI handlers (the typed API of xla/ffi/api/ffi.h) of the operators, for
// the CPU platform of sparsetopk.jax (python/sparsetopk/jax/_ffi.py registers
// them with jax.ffi.register_ffi_target).
//
// Each call hands every row of x to the core at once: rows run along the last
// axis (the Python side moves the operator's axis there) and all leading axes,
// vmapped ones included, are the batch. No math lives here: the handlers check
// the buffers, call <sparsetopk/topk.hpp> or <sparsetopk/dykstra.hpp> and
// write the state of the derivatives in the dense layout of
// ActiveBlocks::to_dense, in x's dtype:
//   c          x-shaped: c_i >= 0 on the row's active block, -1 elsewhere, NaN
//              on a row holding a non-finite value;
//   row_state  [..., 3]: (gamma, W_B, unchanged_from) of each row.
// float32 state: rounded as src/cuda/float_state.hpp says (c capped,
// unchanged_from rounded up), the same on the host and on the device.

#include <sparsetopk/dykstra.hpp>
#include <sparsetopk/errors.hpp>
#include <sparsetopk/topk.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../cuda/float_state.hpp"
#include "ffi_checks.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace sparsetopk::jax {
namespace {

enum class Operator { mask, magnitude };

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
    if (num_iter < 1) throw InvalidArgument("num_iter = " + std::to_string(num_iter) + " must be >= 1");
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
  ActiveBlocks blocks;
  Workspace workspace;
  std::vector<double> c, row_state;  // float32 state, before conversion
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

template <class T>
void solve(Operator op, std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out, const Method& method,
           ActiveBlocks* blocks) {
  if (method.dykstra) {
    if (op == Operator::mask) soft_topk_mask_dykstra(x, n, k, out, method.approximate, blocks);
    else soft_topk_mag_dykstra(x, n, k, out, method.approximate, blocks);
  } else {
    Workspace* workspace = &scratch().workspace;
    if (op == Operator::mask) soft_topk_mask(x, n, k, out, method.exact, blocks, workspace);
    else soft_topk_mag(x, n, k, out, method.exact, blocks, workspace);
  }
}

// blocks in the dense layout, in T.
template <class T>
void write_state(const ActiveBlocks& blocks, std::span<T> c, std::span<T> row_state) {
  if constexpr (std::is_same_v<T, double>) {
    blocks.to_dense(c, row_state);
  } else {
    Scratch& s = scratch();
    s.c.resize(c.size());
    s.row_state.resize(row_state.size());
    blocks.to_dense(s.c, s.row_state);
    std::transform(s.c.begin(), s.c.end(), c.begin(), cuda::float_weight);
    for (std::size_t i = 0; i < row_state.size(); i += ActiveBlocks::row_state_size) {
      row_state[i] = static_cast<float>(s.row_state[i]);          // gamma
      row_state[i + 1] = static_cast<float>(s.row_state[i + 1]);  // W_B: an integer <= k
      row_state[i + 2] = cuda::float_at_least(s.row_state[i + 2]);  // unchanged_from
    }
  }
}

template <class T>
void soft_forward_typed(Operator op, const ffi::AnyBuffer& x, std::size_t n, std::size_t k, ffi::AnyBuffer& out,
                        const Method& method, ffi::AnyBuffer* c, ffi::AnyBuffer* row_state) {
  ActiveBlocks* blocks = c ? &scratch().blocks : nullptr;
  solve<T>(op, in_span<T>(x), n, k, out_span<T>(out), method, blocks);
  if (blocks) write_state<T>(*blocks, out_span<T>(*c), out_span<T>(*row_state));
}

// The soft forward pass; with c and row_state, also the state of the derivatives.
ffi::Error soft_forward(Operator op, const ffi::AnyBuffer& x, ffi::AnyBuffer& out, ffi::AnyBuffer* c,
                        ffi::AnyBuffer* row_state, int64_t k, double l, double p, std::string_view solver,
                        int64_t num_iter) {
  return guarded([&] {
    if (c) check_types(x, {&out, c, row_state});
    else check_types(x, {&out});
    const std::size_t n = row_length(x), top = checked_k(k, n);
    const Method method = method_of(l, p, solver, num_iter);
    if (x.element_type() == ffi::DataType::F64) soft_forward_typed<double>(op, x, n, top, out, method, c, row_state);
    else soft_forward_typed<float>(op, x, n, top, out, method, c, row_state);
  });
}

template <class T>
void hard_forward_typed(Operator op, const ffi::AnyBuffer& x, std::size_t n, std::size_t k, ffi::AnyBuffer& out) {
  if (op == Operator::mask) hard_topk_mask(in_span<T>(x), n, k, out_span<T>(out));
  else hard_topk_mag(in_span<T>(x), n, k, out_span<T>(out));
}

ffi::Error hard_forward(Operator op, const ffi::AnyBuffer& x, ffi::AnyBuffer& out, int64_t k) {
  return guarded([&] {
    check_types(x, {&out});
    const std::size_t n = row_length(x), top = checked_k(k, n);
    if (x.element_type() == ffi::DataType::F64) hard_forward_typed<double>(op, x, n, top, out);
    else hard_forward_typed<float>(op, x, n, top, out);
  });
}

// ---- the handler entry points ----

template <Operator op>
ffi::Error soft(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out, int64_t k, double l, double p,
                std::string_view solver, int64_t num_iter) {
  return soft_forward(op, x, *out, nullptr, nullptr, k, l, p, solver, num_iter);
}

template <Operator op>
ffi::Error soft_with_state(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> c,
                           ffi::Result<ffi::AnyBuffer> row_state, int64_t k, double l, double p,
                           std::string_view solver, int64_t num_iter) {
  return soft_forward(op, x, *out, &*c, &*row_state, k, l, p, solver, num_iter);
}

template <Operator op>
ffi::Error hard(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out, int64_t k) {
  return hard_forward(op, x, *out, k);
}

}  // namespace
}  // namespace sparsetopk::jax

namespace {
using sparsetopk::jax::Operator;

auto soft_binding() {
  return ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>();
}
}  // namespace

#define SPARSETOPK_SOFT_ATTRS \
  Attr<int64_t>("k").Attr<double>("l").Attr<double>("p").Attr<std::string_view>("solver").Attr<int64_t>("num_iter")

XLA_FFI_DEFINE_HANDLER_SYMBOL(sparsetopk_soft_topk_mask, sparsetopk::jax::soft<Operator::mask>,
                              soft_binding().SPARSETOPK_SOFT_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(sparsetopk_soft_topk_mag, sparsetopk::jax::soft<Operator::magnitude>,
                              soft_binding().SPARSETOPK_SOFT_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(sparsetopk_soft_topk_mask_with_state, sparsetopk::jax::soft_with_state<Operator::mask>,
                              soft_binding().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().SPARSETOPK_SOFT_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(sparsetopk_soft_topk_mag_with_state,
                              sparsetopk::jax::soft_with_state<Operator::magnitude>,
                              soft_binding().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().SPARSETOPK_SOFT_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(sparsetopk_hard_topk_mask, sparsetopk::jax::hard<Operator::mask>,
                              soft_binding().Attr<int64_t>("k"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(sparsetopk_hard_topk_mag, sparsetopk::jax::hard<Operator::magnitude>,
                              soft_binding().Attr<int64_t>("k"));
