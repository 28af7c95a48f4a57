#pragma once
// The operator schemas' C++ signatures and typed calls through the dispatcher,
// shared by ops.cpp (the public functions), the CPU kernels and the autograd
// kernels.

#include "saved_blocks.hpp"

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <tuple>

namespace sparsetopk::torch::detail {

using SavedBlocksPtr = c10::intrusive_ptr<SavedBlocks>;

// soft_topk_mask(Tensor x, int k, float l, float p, int dim, str solver) -> Tensor, same for soft_topk_mag.
using SoftSignature = at::Tensor(const at::Tensor&, int64_t, double, double, int64_t, c10::string_view);
// hard_topk_mask(Tensor x, int k, int dim) -> Tensor, same for hard_topk_mag.
using HardSignature = at::Tensor(const at::Tensor&, int64_t, int64_t);
// _soft_topk_{mask,mag}_forward: the output and the state for the backward pass.
using SoftForwardSignature = std::tuple<at::Tensor, SavedBlocksPtr>(const at::Tensor&, int64_t, double, double,
                                                                    int64_t, c10::string_view);
// _soft_topk_mask_backward(Tensor grad, ActiveBlocks blocks) -> Tensor
using MaskBackwardSignature = at::Tensor(const at::Tensor&, const SavedBlocksPtr&);
// _soft_topk_mag_backward(Tensor grad, Tensor x, ActiveBlocks blocks) -> Tensor
using MagBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const SavedBlocksPtr&);

at::Tensor call_soft_topk_mask(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                               c10::string_view solver);
at::Tensor call_soft_topk_mag(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                              c10::string_view solver);
at::Tensor call_hard_topk_mask(const at::Tensor& x, int64_t k, int64_t dim);
at::Tensor call_hard_topk_mag(const at::Tensor& x, int64_t k, int64_t dim);
std::tuple<at::Tensor, SavedBlocksPtr> call_soft_topk_mask_forward(const at::Tensor& x, int64_t k, double l,
                                                                   double p, int64_t dim, c10::string_view solver);
std::tuple<at::Tensor, SavedBlocksPtr> call_soft_topk_mag_forward(const at::Tensor& x, int64_t k, double l,
                                                                  double p, int64_t dim, c10::string_view solver);
at::Tensor call_soft_topk_mask_backward(const at::Tensor& grad, const SavedBlocksPtr& saved);
at::Tensor call_soft_topk_mag_backward(const at::Tensor& grad, const at::Tensor& x, const SavedBlocksPtr& saved);

}  // namespace sparsetopk::torch::detail
