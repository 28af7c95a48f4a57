#include "sparsetopk/isotonic.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>

#include "pav.hpp"
#include "validate.hpp"

namespace sparsetopk {
namespace detail {
namespace {

// Whether `previous` must pool with the block after it: its value lies below
// `last`'s. Values in order but within rounding of each other near a key
// (near-ties: the exact values may differ by less than an ulp of gamma, p
// large or |s| >> l) are compared again as offsets from that key, to the ulp
// of the offset. Across a drop in w, blocks whose values are still equal are
// pooled (that never changes v), and, for the top-k weights (w in {1, 0}),
// so are blocks whose boundary keys tie: tied entries always share a block of
// the top-k solution (the primal problem is symmetric in them and strictly
// convex). For general w tied keys may be split.
bool violates(const PavBlock& previous, const PavBlock& last, std::span<const double> s, std::span<const double> w,
              const BlockEquation& equation, bool pool_tied_keys) {
  if (previous.value < last.value) return true;
  const double key_above = s[previous.end - 1], key_below = s[last.begin];
  const bool w_drops = w[previous.begin] > w[last.end - 1];
  if (w_drops && pool_tied_keys && key_above == key_below) return true;
  const double gamma = previous.value;
  const double reference = std::abs(key_above - gamma) <= std::abs(key_below - gamma) ? key_above : key_below;
  const double rounding = 16.0 * DBL_EPSILON * std::max(std::abs(reference), std::abs(gamma)) + DBL_MIN;
  if (previous.value - last.value <= rounding && std::abs(reference - gamma) <= 0.25 * std::abs(gamma)) {
    const auto offset = [&](const PavBlock& b) {
      return equation.solve_offset(s.subspan(b.begin, b.end - b.begin), b.moments, reference, b.value);
    };
    const double d_previous = offset(previous), d_last = offset(last);
    return d_previous > d_last || (d_previous == d_last && w_drops);
  }
  return w_drops && previous.value == last.value;
}

}  // namespace

void pool_adjacent_violators(std::span<const double> s, std::span<const double> w,
                             const BlockEquation& equation, std::vector<PavBlock>& blocks, bool topk_weights) {
  blocks.clear();
  for (std::size_t i = 0; i < s.size(); ++i) {
    const BlockMoments single = BlockMoments::single(s[i], w[i]);
    blocks.push_back({i, i + 1, single, equation.solve(s.subspan(i, 1), single)});
    // v must be non-increasing: pool while the previous block lies below the last.
    while (blocks.size() > 1 && violates(blocks[blocks.size() - 2], blocks.back(), s, w, equation, topk_weights)) {
      PavBlock& merged = blocks[blocks.size() - 2];
      merged.moments.merge(blocks.back().moments);
      merged.end = blocks.back().end;
      blocks.pop_back();
      merged.value = equation.solve(s.subspan(merged.begin, merged.end - merged.begin), merged.moments);
    }
  }
}

namespace {

void check_non_increasing(std::span<const double> values, const char* name) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i]))
      throw InvalidArgument(std::string(name) + "[" + std::to_string(i) + "] = " + to_text(values[i]) +
                            " is not finite");
    if (i > 0 && values[i] > values[i - 1])
      throw InvalidArgument(std::string(name) + " must be non-increasing, but " + name + "[" +
                            std::to_string(i) + "] = " + to_text(values[i]) + " > " + name + "[" +
                            std::to_string(i - 1) + "] = " + to_text(values[i - 1]));
  }
}

}  // namespace
}  // namespace detail

IsotonicSolution solve_isotonic(std::span<const double> s, std::span<const double> w, double l, double p,
                                IsotonicForm form) {
  detail::check_l(l);
  detail::check_p(p);
  detail::check_same_size(w.size(), s.size(), "w", "s");
  detail::check_non_increasing(s, "s");
  detail::check_non_increasing(w, "w");
  if (form == IsotonicForm::magnitude && !w.empty() && w.back() < 0.0)
    throw InvalidArgument("the magnitude form needs w >= 0, got w[" + std::to_string(w.size() - 1) +
                          "] = " + detail::to_text(w.back()));

  std::vector<detail::PavBlock> blocks;
  blocks.reserve(s.size());
  detail::pool_adjacent_violators(s, w, detail::BlockEquation(form, l, p), blocks);

  IsotonicSolution solution;
  solution.v.resize(s.size());
  solution.blocks.reserve(blocks.size());
  for (const detail::PavBlock& block : blocks) {
    solution.blocks.push_back({block.begin, block.end, block.value});
    for (std::size_t i = block.begin; i < block.end; ++i) solution.v[i] = block.value;
  }
  return solution;
}

}  // namespace sparsetopk
