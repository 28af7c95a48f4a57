#pragma once
// Pruning pieces shared by apps/prune_mlp.cpp and apps/vit/vit_finetune.cpp:
// the gradual (Zhu & Gupta 2017) sparsity schedule and the magnitude
// threshold of one budget over several weight tensors.

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace sparsetopk::apps {

// The sparsity (percent) at `step` of `steps` of gradual magnitude pruning
// towards `target` (percent): target * (1 - (1 - t)^3), t = step / ramp
// capped at 1, with the ramp over the first 75% of the steps (at least 1), so
// the last quarter runs at the target.
inline double gradual_sparsity(double target, int64_t step, int64_t steps) {
  const int64_t ramp = std::max<int64_t>(1, (3 * steps) / 4);
  const double t = std::min(1.0, static_cast<double>(step) / static_cast<double>(ramp));
  return target * (1.0 - std::pow(1.0 - t, 3.0));
}

// The k-th largest |w| over all entries of all tensors of `w` (detached), the
// threshold of one budget k over them (1 <= k <= total entries).
inline double kth_magnitude_global(const std::vector<at::Tensor>& w, int64_t k) {
  std::vector<at::Tensor> magnitudes;
  for (const auto& wi : w) magnitudes.push_back(wi.detach().abs().flatten());
  const auto all = ::torch::cat(magnitudes);
  return std::get<0>(::torch::kthvalue(all, all.numel() - k + 1)).item<double>();
}

}  // namespace sparsetopk::apps
