#include "vit/pairs.hpp"

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

namespace sparsetopk::apps::vit {

std::vector<PairIndex> draw_pairs(int64_t singles, int64_t count, uint64_t seed) {
  if (singles <= 0) throw std::invalid_argument("draw_pairs: no images to pair");
  std::mt19937_64 rng(seed);
  const auto n = static_cast<uint64_t>(singles);
  std::vector<PairIndex> pairs(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (auto& p : pairs) {
    p.left = static_cast<int64_t>(rng() % n);
    p.right = static_cast<int64_t>(rng() % n);
  }
  return pairs;
}

Dataset make_pairs(const Dataset& singles, const std::vector<PairIndex>& pairs, int64_t side) {
  if (singles.features() != side * side)
    throw std::invalid_argument("make_pairs: expected " + std::to_string(side) + "x" + std::to_string(side) +
                                " images, got " + std::to_string(singles.features()) + " features");
  if (singles.size() > 0 && (singles.labels.min().item<int64_t>() < 0 || singles.labels.max().item<int64_t>() > 9))
    throw std::invalid_argument("make_pairs: labels must be in 0..9");
  std::vector<int64_t> left, right;
  for (const auto& p : pairs) {
    if (p.left < 0 || p.left >= singles.size() || p.right < 0 || p.right >= singles.size())
      throw std::invalid_argument("make_pairs: pair index out of range");
    left.push_back(p.left);
    right.push_back(p.right);
  }
  const auto l = ::torch::tensor(left, ::torch::kInt64), r = ::torch::tensor(right, ::torch::kInt64);
  const auto n = static_cast<int64_t>(pairs.size());
  const auto images = ::torch::cat({singles.images.index_select(0, l).view({n, side, side}),
                                    singles.images.index_select(0, r).view({n, side, side})},
                                   2);
  return {images.reshape({n, 2 * side * side}).contiguous(),
          singles.labels.index_select(0, l) * 10 + singles.labels.index_select(0, r)};
}

at::Tensor noisy_labels(const at::Tensor& labels, double fraction, int64_t classes, uint64_t seed, int64_t* changed) {
  if (!(fraction >= 0 && fraction <= 1)) throw std::invalid_argument("noisy_labels: fraction must be in [0, 1]");
  const int64_t n = labels.size(0);
  const auto replaced = static_cast<int64_t>(std::llround(fraction * static_cast<double>(n)));
  auto noisy = labels.clone();
  auto* data = noisy.data_ptr<int64_t>();
  const auto positions = shuffled_indices(n, seed);
  std::mt19937_64 rng(seed ^ 0x5eedULL);
  for (int64_t i = 0; i < replaced; ++i)
    data[positions[static_cast<size_t>(i)]] = static_cast<int64_t>(rng() % static_cast<uint64_t>(classes));
  if (changed != nullptr) *changed = noisy.ne(labels).sum().item<int64_t>();
  return noisy;
}

}  // namespace sparsetopk::apps::vit
