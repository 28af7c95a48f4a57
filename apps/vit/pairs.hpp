#pragma once
// The 100-class task of apps/vit/vit_topk.cpp: two 28x28 images side by
// side (28 rows, 56 columns), labelled 10 * (left class) + (right class),
// and the label noise of its training set.

#include "data/idx.hpp"

#include <cstdint>
#include <vector>

namespace sparsetopk::apps::vit {

struct PairIndex {
  int64_t left = 0, right = 0;
};

// `count` pairs of indices into a set of `singles` images, each index drawn
// uniformly and independently from std::mt19937_64(seed) (the same on every
// platform).
std::vector<PairIndex> draw_pairs(int64_t singles, int64_t count, uint64_t seed);

// The label of a pair of 10-class images.
inline int64_t pair_label(int64_t left, int64_t right) { return 10 * left + right; }

// The pair images [N, side * 2 side] uint8 (each row: the left image's row,
// then the right image's) and labels pair_label(left, right). The singles
// must be side x side images with labels in 0..9 (std::invalid_argument).
Dataset make_pairs(const Dataset& singles, const std::vector<PairIndex>& pairs, int64_t side = 28);

// Replaces round(fraction * N) labels, at positions drawn without
// replacement, by labels drawn uniformly from 0..classes-1 (which may equal
// the old one), from std::mt19937_64(seed). Returns the labels (a copy) and
// sets *changed to how many differ from the input.
at::Tensor noisy_labels(const at::Tensor& labels, double fraction, int64_t classes, uint64_t seed,
                        int64_t* changed = nullptr);

}  // namespace sparsetopk::apps::vit
