// The operator library: schemas of torch.ops.sparsetopk.*, the public C++
// functions of <sparsetopk/torch.hpp> (typed calls through the dispatcher), and
// the kernel every non-CPU backend gets (a clear error).
//
// Kernels live next door: cpu/topk_kernel.cpp (tensors -> core -> tensors) and
// autograd/topk_kernel.cpp (torch::autograd::Function around the core VJPs).

#include "ops.hpp"

#include <sparsetopk/torch.hpp>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/custom_class.h>
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
                               c10::string_view solver) {
  static const auto op = find_op<SoftSignature>("sparsetopk::soft_topk_mask");
  return op.call(x, k, l, p, dim, solver);
}

at::Tensor call_soft_topk_mag(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                              c10::string_view solver) {
  static const auto op = find_op<SoftSignature>("sparsetopk::soft_topk_mag");
  return op.call(x, k, l, p, dim, solver);
}

at::Tensor call_hard_topk_mask(const at::Tensor& x, int64_t k, int64_t dim) {
  static const auto op = find_op<HardSignature>("sparsetopk::hard_topk_mask");
  return op.call(x, k, dim);
}

at::Tensor call_hard_topk_mag(const at::Tensor& x, int64_t k, int64_t dim) {
  static const auto op = find_op<HardSignature>("sparsetopk::hard_topk_mag");
  return op.call(x, k, dim);
}

std::tuple<at::Tensor, SavedBlocksPtr> call_soft_topk_mask_forward(const at::Tensor& x, int64_t k, double l,
                                                                   double p, int64_t dim, c10::string_view solver) {
  static const auto op = find_op<SoftForwardSignature>("sparsetopk::_soft_topk_mask_forward");
  return op.call(x, k, l, p, dim, solver);
}

std::tuple<at::Tensor, SavedBlocksPtr> call_soft_topk_mag_forward(const at::Tensor& x, int64_t k, double l,
                                                                  double p, int64_t dim, c10::string_view solver) {
  static const auto op = find_op<SoftForwardSignature>("sparsetopk::_soft_topk_mag_forward");
  return op.call(x, k, l, p, dim, solver);
}

at::Tensor call_soft_topk_mask_backward(const at::Tensor& grad, const SavedBlocksPtr& saved) {
  static const auto op = find_op<MaskBackwardSignature>("sparsetopk::_soft_topk_mask_backward");
  return op.call(grad, saved);
}

at::Tensor call_soft_topk_mag_backward(const at::Tensor& grad, const at::Tensor& x, const SavedBlocksPtr& saved) {
  static const auto op = find_op<MagBackwardSignature>("sparsetopk::_soft_topk_mag_backward");
  return op.call(grad, x, saved);
}

}  // namespace detail

at::Tensor soft_topk_mask(const at::Tensor& x, int64_t k, double l, double p, int64_t dim, Solver solver) {
  return detail::call_soft_topk_mask(x, k, l, p, dim, detail::solver_name(solver));
}

at::Tensor soft_topk_mag(const at::Tensor& x, int64_t k, double l, double p, int64_t dim, Solver solver) {
  return detail::call_soft_topk_mag(x, k, l, p, dim, detail::solver_name(solver));
}

at::Tensor hard_topk_mask(const at::Tensor& x, int64_t k, int64_t dim) {
  return detail::call_hard_topk_mask(x, k, dim);
}

at::Tensor hard_topk_mag(const at::Tensor& x, int64_t k, int64_t dim) {
  return detail::call_hard_topk_mag(x, k, dim);
}

}  // namespace sparsetopk::torch

namespace {

using sparsetopk::torch::SavedBlocks;
using sparsetopk::torch::detail::SavedBlocksPtr;

// Only CPU kernels exist: any other backend (CUDA, meta, sparse layouts, ...)
// lands here and gets an error naming the device or layout.
[[noreturn]] void reject(const char* op, const at::Tensor& x, const char* name = "x") {
  sparsetopk::torch::detail::check_input(op, x, name);
  TORCH_CHECK(false, "sparsetopk.", op, ": no kernel for ", name, " on ", x.device(), " with layout ", x.layout());
}

}  // namespace

TORCH_LIBRARY(sparsetopk, m) {
  m.class_<SavedBlocks>("ActiveBlocks")
      .def("rows", [](const SavedBlocksPtr& self) { return static_cast<int64_t>(self->blocks.rows()); })
      .def("n", [](const SavedBlocksPtr& self) { return static_cast<int64_t>(self->blocks.n()); });

  m.def("soft_topk_mask(Tensor x, int k, float l=0.1, float p=1.3333333333333333, int dim=-1, "
        "str solver=\"auto\") -> Tensor");
  m.def("soft_topk_mag(Tensor x, int k, float l=0.1, float p=1.3333333333333333, int dim=-1, "
        "str solver=\"auto\") -> Tensor");
  m.def("hard_topk_mask(Tensor x, int k, int dim=-1) -> Tensor");
  m.def("hard_topk_mag(Tensor x, int k, int dim=-1) -> Tensor");

  // Used by the autograd kernels: the forward also returns the state its
  // backward needs; the backward applies the exact VJP of the core.
  m.def("_soft_topk_mask_forward(Tensor x, int k, float l, float p, int dim, str solver) "
        "-> (Tensor, __torch__.torch.classes.sparsetopk.ActiveBlocks)");
  m.def("_soft_topk_mag_forward(Tensor x, int k, float l, float p, int dim, str solver) "
        "-> (Tensor, __torch__.torch.classes.sparsetopk.ActiveBlocks)");
  m.def("_soft_topk_mask_backward(Tensor grad, __torch__.torch.classes.sparsetopk.ActiveBlocks blocks) -> Tensor");
  m.def("_soft_topk_mag_backward(Tensor grad, Tensor x, __torch__.torch.classes.sparsetopk.ActiveBlocks blocks) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(sparsetopk, CompositeExplicitAutograd, m) {
  m.impl("soft_topk_mask", [](const at::Tensor& x, int64_t, double, double, int64_t, c10::string_view) -> at::Tensor {
    reject("soft_topk_mask", x);
  });
  m.impl("soft_topk_mag", [](const at::Tensor& x, int64_t, double, double, int64_t, c10::string_view) -> at::Tensor {
    reject("soft_topk_mag", x);
  });
  m.impl("hard_topk_mask", [](const at::Tensor& x, int64_t, int64_t) -> at::Tensor { reject("hard_topk_mask", x); });
  m.impl("hard_topk_mag", [](const at::Tensor& x, int64_t, int64_t) -> at::Tensor { reject("hard_topk_mag", x); });
  m.impl("_soft_topk_mask_forward",
         [](const at::Tensor& x, int64_t, double, double, int64_t,
            c10::string_view) -> std::tuple<at::Tensor, SavedBlocksPtr> { reject("soft_topk_mask", x); });
  m.impl("_soft_topk_mag_forward",
         [](const at::Tensor& x, int64_t, double, double, int64_t,
            c10::string_view) -> std::tuple<at::Tensor, SavedBlocksPtr> { reject("soft_topk_mag", x); });
  m.impl("_soft_topk_mask_backward",
         [](const at::Tensor& grad, const SavedBlocksPtr&) -> at::Tensor { reject("soft_topk_mask backward", grad, "grad"); });
  m.impl("_soft_topk_mag_backward", [](const at::Tensor& grad, const at::Tensor&, const SavedBlocksPtr&) -> at::Tensor {
    reject("soft_topk_mag backward", grad, "grad");
  });
}
