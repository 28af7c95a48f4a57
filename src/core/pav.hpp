#pragma once
// Pool Adjacent Violators for the isotonic problems of SPEC.md.

#include <cstddef>
#include <span>
#include <vector>

#include "block_equation.hpp"

namespace sparsetopk::detail {

struct PavBlock {
  std::size_t begin, end;  // sorted positions [begin, end)
  BlockMoments moments;
  double value;            // gamma
};

// Exact solution as a list of blocks, in order. `blocks` is cleared first; its
// capacity is reused, so a caller that reserved s.size() never allocates.
// `topk_weights`: w is the top-k weights (1, ..., 1, 0, ..., 0), whose tied
// keys always share a block.
void pool_adjacent_violators(std::span<const double> s, std::span<const double> w,
                             const BlockEquation& equation, std::vector<PavBlock>& blocks,
                             bool topk_weights = false);

}  // namespace sparsetopk::detail
