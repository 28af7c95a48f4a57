#pragma once
// The smooth top-k SVM loss of Berrada, Zisserman and Kumar, "Smooth Loss
// Functions for Deep Top-k Classification" (ICLR 2018), the baseline of
// apps/vit/vit_topk.cpp, written here from the paper's definition.
//
// For scores s in R^n, a label y and 1 <= k < n, the top-k hinge is a
// maximum over the k-subsets S of the classes,
//   l_k(s, y) = max_S [alpha 1(y not in S) + (1/k) sum_{j in S} s_j]
//             - max_{S containing y} (1/k) sum_{j in S} s_j,
// and its smoothing replaces each maximum by a log-sum-exp at temperature tau:
//   L_{k,tau}(s, y) = tau log sum_S exp([alpha 1(y not in S) + (1/k) s_S] / tau)
//                   - tau log sum_{S containing y} exp((1/k) s_S / tau).
// With z_j = exp(s_j / (k tau)) and e_j the elementary symmetric polynomials
// of the z's without label y's, the sums are e^(alpha/tau) e_k + z_y e_{k-1}
// and z_y e_{k-1}, so
//   L = tau [log(e^(alpha/tau) e_k + z_y e_{k-1}) - log z_y - log e_{k-1}].
// log e_0..log e_k are computed by the recursion e_j <- e_j + z_i e_{j-1}
// over the classes, in log space (log-add-exp), in float64: O(n k) and no
// overflow for any scores. L >= 0; it tends to l_k as tau -> 0.

#include <torch/types.h>

#include <cstdint>

namespace sparsetopk::apps::vit {

// The loss of every row of `scores` [B, n] against int64 labels `target` [B]:
// [B], in scores' dtype; differentiable (autograd through the recursion).
// Throws std::invalid_argument unless 1 <= k < n, tau > 0, alpha >= 0.
at::Tensor smooth_topk_svm(const at::Tensor& scores, const at::Tensor& target, int64_t k, double tau = 1.0,
                           double alpha = 1.0);

}  // namespace sparsetopk::apps::vit
