#pragma once
// The smoothed top-k sum and the top-k loss of SPEC.md on a batch of rows
// (row-major, rows of n entries, as in topk.hpp). Instantiated for float and
// double; sums are accumulated in double.

#include <cstddef>
#include <cstdint>
#include <span>

#include <sparsetopk/row_state.hpp>
#include <sparsetopk/topk.hpp>

namespace sparsetopk {

// topk_sum(x, k) = <m, x> - (l/p) sum_i m_i^p with m = soft_topk_mask(x, k)
// (SPEC.md, "Smoothed top-k sum"), one value per row into `value`, k in [0, n].
// Its gradient is m: `mask`, if not empty (the size of x), receives it;
// `state`, if not empty (one per row), the mask's RowState, at which
// soft_topk_mask_jvp (topk.hpp) is the Hessian-vector product: the Hessian of
// topk_sum is the mask's Jacobian.
template <class T>
void topk_sum(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> value,
              const SoftTopkOptions& options = {}, std::span<T> mask = {}, std::span<RowState> state = {},
              Workspace* workspace = nullptr);

// topk_loss(x, t, k) = topk_sum(x, k) - x_t - topk_sum(x_{-t}, k - 1) + l/p
// (SPEC.md, "Top-k loss"), t = target[r] in [0, n) the label of row r, k in
// [1, n]: one loss per row into `loss`, >= 0, and exactly 0 where
// soft_topk_mask(x, k)_t = 1. `grad`, if not empty (the size of x), receives
// its gradient soft_topk_mask(x, k) - e_t - pad_t(soft_topk_mask(x_{-t}, k - 1)),
// which sums to 0 and is 0 outside the label and the entries near the k-th rank.
template <class T>
void topk_loss(std::span<const T> x, std::size_t n, std::span<const std::int64_t> target, std::size_t k,
               std::span<T> loss, const SoftTopkOptions& options = {}, std::span<T> grad = {},
               Workspace* workspace = nullptr);

}  // namespace sparsetopk
