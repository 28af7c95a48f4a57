#pragma once
// The operator schemas' C++ signatures and typed calls through the dispatcher,
// shared by ops.cpp (the public functions), the CPU kernels and the autograd
// kernels.
//
// What a soft forward pass leaves for its derivatives is plain tensors
// (SPEC.md, "Derivatives"; the core's ActiveBlocks in dense form):
//   c          float64, the shape of x: c_i >= 0 on the entries of the active
//              block of their slice, -1 elsewhere, NaN on a slice that held a
//              non-finite value;
//   row_state  float64, the shape of x with size 3 along dim (a 0-d x: [3]):
//              (gamma, W_B, unchanged_from) of each slice.

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace sparsetopk::torch::detail {

// soft_topk_mask(Tensor x, int k, float l, float p, int dim, str solver, int? num_iter) -> Tensor, same for
// soft_topk_mag.
using SoftSignature = at::Tensor(const at::Tensor&, int64_t, double, double, int64_t, c10::string_view,
                                 std::optional<int64_t>);
// hard_topk_mask(Tensor x, int k, int dim) -> Tensor, same for hard_topk_mag.
using HardSignature = at::Tensor(const at::Tensor&, int64_t, int64_t);
// _soft_topk_{mask,mag}_forward(...) -> (Tensor out, Tensor c, Tensor row_state)
using SoftForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, double,
                                                                             double, int64_t, c10::string_view,
                                                                             std::optional<int64_t>);
// _soft_topk_mask_{backward,jvp}(Tensor v, Tensor c, Tensor row_state, int dim) -> Tensor
using MaskProductSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
// _soft_topk_mag_{backward,jvp}(Tensor v, Tensor x, Tensor c, Tensor row_state, int dim) -> Tensor
using MagProductSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       int64_t);

at::Tensor call_soft_topk_mask(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                               c10::string_view solver, std::optional<int64_t> num_iter);
at::Tensor call_soft_topk_mag(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                              c10::string_view solver, std::optional<int64_t> num_iter);
at::Tensor call_hard_topk_mask(const at::Tensor& x, int64_t k, int64_t dim);
at::Tensor call_hard_topk_mag(const at::Tensor& x, int64_t k, int64_t dim);
std::tuple<at::Tensor, at::Tensor, at::Tensor> call_soft_topk_mask_forward(const at::Tensor& x, int64_t k, double l,
                                                                           double p, int64_t dim,
                                                                           c10::string_view solver,
                                                                           std::optional<int64_t> num_iter);
std::tuple<at::Tensor, at::Tensor, at::Tensor> call_soft_topk_mag_forward(const at::Tensor& x, int64_t k, double l,
                                                                          double p, int64_t dim,
                                                                          c10::string_view solver,
                                                                          std::optional<int64_t> num_iter);
at::Tensor call_soft_topk_mask_backward(const at::Tensor& grad, const at::Tensor& c, const at::Tensor& row_state,
                                        int64_t dim);
at::Tensor call_soft_topk_mag_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& c,
                                       const at::Tensor& row_state, int64_t dim);
at::Tensor call_soft_topk_mask_jvp(const at::Tensor& tangent, const at::Tensor& c, const at::Tensor& row_state,
                                   int64_t dim);
at::Tensor call_soft_topk_mag_jvp(const at::Tensor& tangent, const at::Tensor& x, const at::Tensor& c,
                                  const at::Tensor& row_state, int64_t dim);

}  // namespace sparsetopk::torch::detail
