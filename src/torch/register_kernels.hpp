#pragma once
// One device's kernels of the ten ops (ops.cpp's schemas), registered from its
// three entry points, each indexed by sparsetopk::Form:
//   soft(form, x, k, l, p, dim, solver, num_iter, save) -> (out, row_state)
//     (row_state undefined without `save`);
//   hard(form, x, k, dim) -> out;
//   product(form, transpose, v, x, row_state, l, p, dim) -> J^T v or J v.
// Used inside TORCH_LIBRARY_IMPL(sparsetopk, <key>, m) by the CPU, the generic
// (CompositeExplicitAutograd) and the CUDA kernels.

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <sparsetopk/form.hpp>

#include <cstdint>
#include <optional>
#include <tuple>

namespace sparsetopk::torch::detail {

template <auto soft, Form form>
at::Tensor soft_kernel(const at::Tensor& x, int64_t k, double l, double p, int64_t dim, c10::string_view solver,
                       std::optional<int64_t> num_iter) {
  return std::get<0>(soft(form, x, k, l, p, dim, solver, num_iter, /*save=*/false));
}

template <auto soft, Form form>
std::tuple<at::Tensor, at::Tensor> soft_forward_kernel(const at::Tensor& x, int64_t k, double l, double p,
                                                       int64_t dim, c10::string_view solver,
                                                       std::optional<int64_t> num_iter) {
  return soft(form, x, k, l, p, dim, solver, num_iter, /*save=*/true);
}

template <auto hard, Form form>
at::Tensor hard_kernel(const at::Tensor& x, int64_t k, int64_t dim) {
  return hard(form, x, k, dim);
}

// transpose: the backward (v is grad), else the JVP (v is tangent).
template <auto product, Form form, bool transpose>
at::Tensor product_kernel(const at::Tensor& v, const at::Tensor& x, const at::Tensor& row_state, double l, double p,
                          int64_t dim) {
  return product(form, transpose, v, x, row_state, l, p, dim);
}

template <auto soft, auto hard, auto product>
void register_kernels(::torch::Library& m) {
  m.impl("soft_topk_mask", TORCH_FN((soft_kernel<soft, Form::mask>)));
  m.impl("soft_topk_mag", TORCH_FN((soft_kernel<soft, Form::magnitude>)));
  m.impl("hard_topk_mask", TORCH_FN((hard_kernel<hard, Form::mask>)));
  m.impl("hard_topk_mag", TORCH_FN((hard_kernel<hard, Form::magnitude>)));
  m.impl("_soft_topk_mask_forward", TORCH_FN((soft_forward_kernel<soft, Form::mask>)));
  m.impl("_soft_topk_mag_forward", TORCH_FN((soft_forward_kernel<soft, Form::magnitude>)));
  m.impl("_soft_topk_mask_backward", TORCH_FN((product_kernel<product, Form::mask, true>)));
  m.impl("_soft_topk_mask_jvp", TORCH_FN((product_kernel<product, Form::mask, false>)));
  m.impl("_soft_topk_mag_backward", TORCH_FN((product_kernel<product, Form::magnitude, true>)));
  m.impl("_soft_topk_mag_jvp", TORCH_FN((product_kernel<product, Form::magnitude, false>)));
}

}  // namespace sparsetopk::torch::detail
