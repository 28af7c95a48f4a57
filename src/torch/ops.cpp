// The operator library: schemas of torch.ops.sparsetopk.*, and the public C++
// functions of <sparsetopk/torch.hpp> (typed calls through the dispatcher).
//
// Kernels live next door: cpu/topk_kernel.cpp (tensors -> core -> tensors),
// generic/generic_kernel.cpp (every other device, and solver "generic": the
// ATen-only implementation), autograd/ (torch::autograd::Function over the
// forward and backward ops, and the derivative ops' refusal of second
// derivatives). The fake (meta) kernels, the vmap rules and the Python-side
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

// One handle per Form (and per product), looked up once.
template <class Signature>
struct OpTable {
  c10::TypedOperatorHandle<Signature> mask, magnitude;
  const c10::TypedOperatorHandle<Signature>& operator[](Form form) const {
    return form == Form::mask ? mask : magnitude;
  }
};

template <class Signature>
OpTable<Signature> table(const char* mask, const char* magnitude) {
  return {find_op<Signature>(mask), find_op<Signature>(magnitude)};
}

}  // namespace

const char* op_name(Form form, bool soft) {
  if (form == Form::mask) return soft ? "soft_topk_mask" : "hard_topk_mask";
  return soft ? "soft_topk_mag" : "hard_topk_mag";
}

const char* product_name(Form form, bool transpose) {
  if (form == Form::mask) return transpose ? "soft_topk_mask backward" : "soft_topk_mask jvp";
  return transpose ? "soft_topk_mag backward" : "soft_topk_mag jvp";
}

at::Tensor call_soft_topk(Form form, const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                          c10::string_view solver, std::optional<int64_t> num_iter) {
  static const auto ops = table<SoftSignature>("sparsetopk::soft_topk_mask", "sparsetopk::soft_topk_mag");
  return ops[form].call(x, k, l, p, dim, solver, num_iter);
}

at::Tensor call_hard_topk(Form form, const at::Tensor& x, int64_t k, int64_t dim) {
  static const auto ops = table<HardSignature>("sparsetopk::hard_topk_mask", "sparsetopk::hard_topk_mag");
  return ops[form].call(x, k, dim);
}

std::tuple<at::Tensor, at::Tensor> call_soft_topk_forward(Form form, const at::Tensor& x, int64_t k, double l,
                                                          double p, int64_t dim, c10::string_view solver,
                                                          std::optional<int64_t> num_iter) {
  static const auto ops =
      table<SoftForwardSignature>("sparsetopk::_soft_topk_mask_forward", "sparsetopk::_soft_topk_mag_forward");
  return ops[form].call(x, k, l, p, dim, solver, num_iter);
}

at::Tensor call_jacobian_product(Form form, bool transpose, const at::Tensor& v, const at::Tensor& x,
                                 const at::Tensor& row_state, double l, double p, int64_t dim) {
  static const auto backward =
      table<ProductSignature>("sparsetopk::_soft_topk_mask_backward", "sparsetopk::_soft_topk_mag_backward");
  static const auto jvp = table<ProductSignature>("sparsetopk::_soft_topk_mask_jvp", "sparsetopk::_soft_topk_mag_jvp");
  return (transpose ? backward : jvp)[form].call(v, x, row_state, l, p, dim);
}

at::Tensor call_topk_sum(const at::Tensor& x, int64_t k, double l, double p, int64_t dim) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, int64_t, double, double, int64_t)>("sparsetopk::topk_sum");
  return op.call(x, k, l, p, dim);
}

at::Tensor call_topk_loss(const at::Tensor& scores, const at::Tensor& target, int64_t k, double l, double p,
                          int64_t dim) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double, double, int64_t)>("sparsetopk::topk_loss");
  return op.call(scores, target, k, l, p, dim);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_topk_sum_forward(const at::Tensor& x, int64_t k, double l,
                                                                      double p, int64_t dim) {
  static const auto op = find_op<TopkSumForwardSignature>("sparsetopk::_topk_sum_forward");
  return op.call(x, k, l, p, dim);
}

std::tuple<at::Tensor, at::Tensor> call_topk_loss_forward(const at::Tensor& scores, const at::Tensor& target,
                                                          int64_t k, double l, double p, int64_t dim) {
  static const auto op = find_op<TopkLossForwardSignature>("sparsetopk::_topk_loss_forward");
  return op.call(scores, target, k, l, p, dim);
}

}  // namespace detail

at::Tensor soft_topk_mask(const at::Tensor& x, int64_t k, double l, double p, int64_t dim, Solver solver,
                          std::optional<int64_t> num_iter) {
  return detail::call_soft_topk(Form::mask, x, k, l, p, dim, detail::solver_name(solver), num_iter);
}

at::Tensor soft_topk_mag(const at::Tensor& x, int64_t k, double l, double p, int64_t dim, Solver solver,
                         std::optional<int64_t> num_iter) {
  return detail::call_soft_topk(Form::magnitude, x, k, l, p, dim, detail::solver_name(solver), num_iter);
}

at::Tensor hard_topk_mask(const at::Tensor& x, int64_t k, int64_t dim) {
  return detail::call_hard_topk(Form::mask, x, k, dim);
}

at::Tensor hard_topk_mag(const at::Tensor& x, int64_t k, int64_t dim) {
  return detail::call_hard_topk(Form::magnitude, x, k, dim);
}

at::Tensor topk_sum(const at::Tensor& x, int64_t k, double l, double p, int64_t dim) {
  return detail::call_topk_sum(x, k, l, p, dim);
}

at::Tensor topk_loss(const at::Tensor& scores, const at::Tensor& target, int64_t k, double l, double p, int64_t dim,
                     Reduction reduction) {
  const at::Tensor losses = detail::call_topk_loss(scores, target, k, l, p, dim);
  switch (reduction) {
    case Reduction::mean: return losses.mean();
    case Reduction::sum: return losses.sum();
    case Reduction::none: return losses;
  }
  TORCH_CHECK(false, "sparsetopk.topk_loss: reduction = ", static_cast<int>(reduction),
              " is not a sparsetopk::torch::Reduction");
}

}  // namespace sparsetopk::torch

TORCH_LIBRARY(sparsetopk, m) {
  m.def("soft_topk_mask(Tensor x, int k, float l=0.1, float p=1.3333333333333333, int dim=-1, "
        "str solver=\"auto\", int? num_iter=None) -> Tensor");
  m.def("soft_topk_mag(Tensor x, int k, float l=0.1, float p=1.3333333333333333, int dim=-1, "
        "str solver=\"auto\", int? num_iter=None) -> Tensor");
  m.def("hard_topk_mask(Tensor x, int k, int dim=-1) -> Tensor");
  m.def("hard_topk_mag(Tensor x, int k, int dim=-1) -> Tensor");

  // The forward also returns what its derivatives need: each slice's RowState
  // (ops.hpp); the backward (J^T v) and the JVP (J v) apply the core's exact
  // block Jacobian at it, recomputing the band's c_i from x, l and p.
  // num_iter: the iterations of solver "dykstra" (None: its default); other solvers take none.
  m.def("_soft_topk_mask_forward(Tensor x, int k, float l, float p, int dim, str solver, int? num_iter=None) "
        "-> (Tensor out, Tensor row_state)");
  m.def("_soft_topk_mag_forward(Tensor x, int k, float l, float p, int dim, str solver, int? num_iter=None) "
        "-> (Tensor out, Tensor row_state)");
  // The smoothed top-k sum and the top-k loss (SPEC.md): x (scores) with dim reduced. Their forward ops
  // also return the gradient (topk_sum: the soft mask, with its row_state for the Hessian).
  m.def("topk_sum(Tensor x, int k, float l=0.1, float p=1.3333333333333333, int dim=-1) -> Tensor");
  m.def("_topk_sum_forward(Tensor x, int k, float l, float p, int dim) -> (Tensor value, Tensor mask, "
        "Tensor row_state)");
  m.def("topk_loss(Tensor scores, Tensor target, int k, float l=0.1, float p=1.3333333333333333, int dim=-1) "
        "-> Tensor");
  m.def("_topk_loss_forward(Tensor scores, Tensor target, int k, float l, float p, int dim) -> (Tensor loss, "
        "Tensor grad)");
  m.def("_soft_topk_mask_backward(Tensor grad, Tensor x, Tensor row_state, float l, float p, int dim) -> Tensor");
  m.def("_soft_topk_mask_jvp(Tensor tangent, Tensor x, Tensor row_state, float l, float p, int dim) -> Tensor");
  m.def("_soft_topk_mag_backward(Tensor grad, Tensor x, Tensor row_state, float l, float p, int dim) -> Tensor");
  m.def("_soft_topk_mag_jvp(Tensor tangent, Tensor x, Tensor row_state, float l, float p, int dim) -> Tensor");
}
