// The operator library: schemas of torch.ops.sparsetopk.*, and the public C++
// functions of <sparsetopk/torch.hpp> (typed calls through the dispatcher).
//
// Kernels live next door: cpu/topk_kernel.cpp (tensors -> core -> tensors),
// generic/generic_kernel.cpp (every other device, and solver "generic": the
// ATen-only implementation), autograd/ (torch::autograd::Function over the forward and
// backward ops, and the derivative ops' refusal of second derivatives). The fake (meta) kernels, the vmap rules and the Python-side
// autograd for torch.func are registered by the Python package
// (python/sparsetopk/_registration.py).

#include "ops.hpp"

#include <sparsetopk/torch.hpp>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "checks.hpp"

namespace sparsetopk::torch {
namespace detail {
namespace {

template <class Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace

at::Tensor call_soft_topk_mask(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                               c10::string_view solver, std::optional<int64_t> num_iter) {
  static const auto op = find_op<SoftSignature>("sparsetopk::soft_topk_mask");
  return op.call(x, k, l, p, dim, solver, num_iter);
}

at::Tensor call_soft_topk_mag(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                              c10::string_view solver, std::optional<int64_t> num_iter) {
  static const auto op = find_op<SoftSignature>("sparsetopk::soft_topk_mag");
  return op.call(x, k, l, p, dim, solver, num_iter);
}

at::Tensor call_hard_topk_mask(const at::Tensor& x, int64_t k, int64_t dim) {
  static const auto op = find_op<HardSignature>("sparsetopk::hard_topk_mask");
  return op.call(x, k, dim);
}

at::Tensor call_hard_topk_mag(const at::Tensor& x, int64_t k, int64_t dim) {
  static const auto op = find_op<HardSignature>("sparsetopk::hard_topk_mag");
  return op.call(x, k, dim);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_soft_topk_mask_forward(const at::Tensor& x, int64_t k, double l,
                                                                           double p, int64_t dim,
                                                                           c10::string_view solver,
                                                                           std::optional<int64_t> num_iter) {
  static const auto op = find_op<SoftForwardSignature>("sparsetopk::_soft_topk_mask_forward");
  return op.call(x, k, l, p, dim, solver, num_iter);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_soft_topk_mag_forward(const at::Tensor& x, int64_t k, double l,
                                                                          double p, int64_t dim,
                                                                          c10::string_view solver,
                                                                          std::optional<int64_t> num_iter) {
  static const auto op = find_op<SoftForwardSignature>("sparsetopk::_soft_topk_mag_forward");
  return op.call(x, k, l, p, dim, solver, num_iter);
}

at::Tensor call_soft_topk_mask_backward(const at::Tensor& grad, const at::Tensor& c, const at::Tensor& row_state,
                                        int64_t dim) {
  static const auto op = find_op<MaskProductSignature>("sparsetopk::_soft_topk_mask_backward");
  return op.call(grad, c, row_state, dim);
}

at::Tensor call_soft_topk_mag_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& c,
                                       const at::Tensor& row_state, int64_t dim) {
  static const auto op = find_op<MagProductSignature>("sparsetopk::_soft_topk_mag_backward");
  return op.call(grad, x, c, row_state, dim);
}

at::Tensor call_soft_topk_mask_jvp(const at::Tensor& tangent, const at::Tensor& c, const at::Tensor& row_state,
                                   int64_t dim) {
  static const auto op = find_op<MaskProductSignature>("sparsetopk::_soft_topk_mask_jvp");
  return op.call(tangent, c, row_state, dim);
}

at::Tensor call_soft_topk_mag_jvp(const at::Tensor& tangent, const at::Tensor& x, const at::Tensor& c,
                                  const at::Tensor& row_state, int64_t dim) {
  static const auto op = find_op<MagProductSignature>("sparsetopk::_soft_topk_mag_jvp");
  return op.call(tangent, x, c, row_state, dim);
}

}  // namespace detail

at::Tensor soft_topk_mask(const at::Tensor& x, int64_t k, double l, double p, int64_t dim, Solver solver,
                          std::optional<int64_t> num_iter) {
  return detail::call_soft_topk_mask(x, k, l, p, dim, detail::solver_name(solver), num_iter);
}

at::Tensor soft_topk_mag(const at::Tensor& x, int64_t k, double l, double p, int64_t dim, Solver solver,
                         std::optional<int64_t> num_iter) {
  return detail::call_soft_topk_mag(x, k, l, p, dim, detail::solver_name(solver), num_iter);
}

at::Tensor hard_topk_mask(const at::Tensor& x, int64_t k, int64_t dim) {
  return detail::call_hard_topk_mask(x, k, dim);
}

at::Tensor hard_topk_mag(const at::Tensor& x, int64_t k, int64_t dim) {
  return detail::call_hard_topk_mag(x, k, dim);
}

}  // namespace sparsetopk::torch

TORCH_LIBRARY(sparsetopk, m) {
  m.def("soft_topk_mask(Tensor x, int k, float l=0.1, float p=1.3333333333333333, int dim=-1, "
        "str solver=\"auto\", int? num_iter=None) -> Tensor");
  m.def("soft_topk_mag(Tensor x, int k, float l=0.1, float p=1.3333333333333333, int dim=-1, "
        "str solver=\"auto\", int? num_iter=None) -> Tensor");
  m.def("hard_topk_mask(Tensor x, int k, int dim=-1) -> Tensor");
  m.def("hard_topk_mag(Tensor x, int k, int dim=-1) -> Tensor");

  // The forward also returns what its derivatives need (ops.hpp); the backward
  // (J^T v) and the JVP (J v) apply the core's exact block Jacobian to it.
  // num_iter: the iterations of solver "dykstra" (None: its default); other solvers take none.
  m.def("_soft_topk_mask_forward(Tensor x, int k, float l, float p, int dim, str solver, int? num_iter=None) "
        "-> (Tensor out, Tensor c, Tensor row_state)");
  m.def("_soft_topk_mag_forward(Tensor x, int k, float l, float p, int dim, str solver, int? num_iter=None) "
        "-> (Tensor out, Tensor c, Tensor row_state)");
  m.def("_soft_topk_mask_backward(Tensor grad, Tensor c, Tensor row_state, int dim) -> Tensor");
  m.def("_soft_topk_mask_jvp(Tensor tangent, Tensor c, Tensor row_state, int dim) -> Tensor");
  m.def("_soft_topk_mag_backward(Tensor grad, Tensor x, Tensor c, Tensor row_state, int dim) -> Tensor");
  m.def("_soft_topk_mag_jvp(Tensor tangent, Tensor x, Tensor c, Tensor row_state, int dim) -> Tensor");
}
