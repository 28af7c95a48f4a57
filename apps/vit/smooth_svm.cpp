#include "vit/smooth_svm.hpp"

#include <torch/torch.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace sparsetopk::apps::vit {

at::Tensor smooth_topk_svm(const at::Tensor& scores, const at::Tensor& target, int64_t k, double tau, double alpha) {
  if (scores.dim() != 2) throw std::invalid_argument("smooth_topk_svm: scores must be [B, n]");
  const int64_t n = scores.size(1);
  if (k < 1 || k >= n)
    throw std::invalid_argument("smooth_topk_svm: k must be in [1, " + std::to_string(n - 1) + "], got " +
                                std::to_string(k));
  if (!(tau > 0)) throw std::invalid_argument("smooth_topk_svm: tau must be > 0");
  if (!(alpha >= 0)) throw std::invalid_argument("smooth_topk_svm: alpha must be >= 0");
  if (target.dim() != 1 || target.size(0) != scores.size(0))
    throw std::invalid_argument("smooth_topk_svm: target must be [B]");
  // A finite stand-in for log 0: its exp is 0 in float64, and it keeps the
  // log-add-exp gradients finite where both arguments are "log 0".
  constexpr double kLogZero = -1e30;
  const auto x = scores.to(::torch::kFloat64) / (static_cast<double>(k) * tau);  // log z
  const auto label = ::torch::one_hot(target, n).to(::torch::kBool);
  const auto x_rest = x.masked_fill(label, kLogZero);  // the label's z set to 0
  const int64_t b = x.size(0);
  std::vector<at::Tensor> log_e(static_cast<size_t>(k + 1));
  log_e[0] = ::torch::zeros({b}, x.options());
  for (int64_t j = 1; j <= k; ++j) log_e[static_cast<size_t>(j)] = ::torch::full({b}, kLogZero, x.options());
  for (int64_t i = 0; i < n; ++i) {
    const auto xi = x_rest.select(1, i);
    for (int64_t j = std::min<int64_t>(i + 1, k); j >= 1; --j) {
      auto& e = log_e[static_cast<size_t>(j)];
      e = ::torch::logaddexp(e, xi + log_e[static_cast<size_t>(j - 1)]);
    }
  }
  const auto x_label = x.gather(1, target.unsqueeze(1)).squeeze(1);
  const auto& log_ek = log_e[static_cast<size_t>(k)];
  const auto& log_ek1 = log_e[static_cast<size_t>(k - 1)];
  const auto with_label = x_label + log_ek1;
  const auto all = ::torch::logaddexp(alpha / tau + log_ek, with_label);
  return (tau * (all - with_label)).to(scores.scalar_type());
}

}  // namespace sparsetopk::apps::vit
