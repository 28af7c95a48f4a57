#pragma once
// Pool Adjacent Violators for the isotonic problems of SPEC.md.

#include <cstddef>
#include <span>
#include <vector>

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "block_equation.hpp"
#include "host_device.hpp"

namespace sparsetopk::detail {

struct PavBlock {
  std::size_t begin, end;  // sorted positions [begin, end)
  BlockMoments moments;
  double value;            // gamma (not yet solved while `deferred`)
  bool deferred = false;   // a top singleton whose value is not needed yet (defers_value)
};

// Exact solution as a list of blocks, in order. `blocks` is cleared first; its
// capacity is reused, so a caller that reserved s.size() never allocates.
// `topk_weights`: w is the top-k weights (1, ..., 1, 0, ..., 0), whose tied
// keys always share a block; then the values of singleton blocks of the top
// entries may be left unsolved (PavBlock::deferred; the caller reads the
// value of the block that straddles the drop in w only).
void pool_adjacent_violators(std::span<const double> s, std::span<const double> w,
                             const BlockEquation& equation, std::vector<PavBlock>& blocks,
                             bool topk_weights = false);

// Whether `previous` must pool with the block after it: its value lies below
// `last`'s. Values in order but within rounding of each other near a key
// (near-ties: the exact values may differ by less than an ulp of gamma, p
// large or |s| >> l) are compared again as offsets from that key, to the ulp
// of the offset. Across a drop in w, blocks whose values are still equal are
// pooled (that never changes v), and, for the top-k weights (w in {1, 0}),
// so are blocks whose boundary keys tie: tied entries always share a block of
// the top-k solution (the primal problem is symmetric in them and strictly
// convex). For general w tied keys may be split.
template <class Weights>
SPARSETOPK_HOST_DEVICE bool violates(const PavBlock& previous, const PavBlock& last, std::span<const double> s, const Weights& w,
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

// For the top-k weights, PAV's value g of a top singleton (w = 1) matters only
// in the violation test against a block after it (top singletons never
// violate each other: their values follow their keys). For the magnitude with
// p = 4/3, g is a cubic's root; it is left unsolved until a test needs it.
SPARSETOPK_HOST_DEVICE inline bool defers_value(const BlockEquation& equation, double w, bool topk_weights) {
  return topk_weights && w == 1.0 && equation.form() == Form::magnitude &&
         equation.regularizer().kind() == Regularizer::Kind::quartic;
}

// Whether that g of the key s lies below a later block's value gamma, without
// g: h(g') = ((s - g')/l)^3 - g' decreases through 0 at g', so h >= 0 at
// gamma + 1e-12 s means g lies above gamma by far more than violates()'s
// rounding (16 ulps), and h < 0 at gamma - 1e-12 s means g lies below it.
// Returns +1 (below: pool), -1 (not below), 0 (undecided: solve for g). h is
// trusted where it exceeds 1e-13 of its terms (the cube is good to a few ulps).
SPARSETOPK_HOST_DEVICE inline int deferred_value_below(const BlockEquation& equation, double s, double gamma) {
  if (!(s > 1e-100 && gamma > 1e-100)) return 0;
  const double margin = 1e-12 * s, l = equation.l();
  const auto h_sign = [&](double g) {
    const double d = (s - g) / l, cube = d * d * d, h = cube - g, trusted = 1e-13 * (std::abs(cube) + std::abs(g));
    return h > trusted ? 1 : (h < -trusted ? -1 : 0);
  };
  if (h_sign(gamma + margin) > 0) return -1;
  if (h_sign(gamma - margin) < 0) return 1;
  return 0;
}

// violates() for blocks of which either may be deferred: solves a deferred
// value only where deferred_value_below leaves the test undecided.
template <class Weights>
SPARSETOPK_HOST_DEVICE bool violates_deferred(PavBlock& previous, PavBlock& last, std::span<const double> s,
                                              const Weights& w, const BlockEquation& equation, bool pool_tied_keys) {
  if (previous.deferred && last.deferred) return false;
  const auto solve = [&](PavBlock& b) {
    b.value = equation.solve(s.subspan(b.begin, 1), b.moments);
    b.deferred = false;
  };
  if (previous.deferred) {
    // (violates()'s rule for keys tied across the drop in w first: it needs no value)
    const bool w_drops = w[previous.begin] > w[last.end - 1];
    if (w_drops && pool_tied_keys && s[previous.end - 1] == s[last.begin]) return true;
    const int below = deferred_value_below(equation, s[previous.begin], last.value);
    if (below != 0) return below > 0;
    solve(previous);
  }
  if (last.deferred) solve(last);
  return violates(previous, last, s, w, equation, pool_tied_keys);
}

// The same into any stack of blocks (std::vector, or the CUDA kernels' fixed
// buffer: push_back, pop_back, back, size, operator[]), which the caller
// has emptied, for any weights indexable like w (a span, or TopkWeights).
template <class Weights, class Blocks>
SPARSETOPK_HOST_DEVICE void pool_adjacent_violators_into(std::span<const double> s, const Weights& w, const BlockEquation& equation,
                                  Blocks& blocks, bool topk_weights) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    const BlockMoments single = BlockMoments::single(s[i], w[i]);
    if (defers_value(equation, w[i], topk_weights)) blocks.push_back({i, i + 1, single, 0.0, /*deferred=*/true});
    else blocks.push_back({i, i + 1, single, equation.solve(s.subspan(i, 1), single)});
    // v must be non-increasing: pool while the previous block lies below the last.
    while (blocks.size() > 1 &&
           violates_deferred(blocks[blocks.size() - 2], blocks.back(), s, w, equation, topk_weights)) {
      PavBlock& merged = blocks[blocks.size() - 2];
      merged.moments.merge(blocks.back().moments);
      merged.end = blocks.back().end;
      blocks.pop_back();
      merged.value = equation.solve(s.subspan(merged.begin, merged.end - merged.begin), merged.moments);
      merged.deferred = false;
    }
  }
}

// PAV's stack in a buffer the caller owns, big enough for the window (the
// interface pool_adjacent_violators_into uses): the CUDA kernels keep one per row.
struct BlockStack {
  PavBlock* data;
  std::size_t count = 0;
  SPARSETOPK_HOST_DEVICE void clear() { count = 0; }
  SPARSETOPK_HOST_DEVICE void push_back(const PavBlock& b) { data[count++] = b; }
  SPARSETOPK_HOST_DEVICE void pop_back() { --count; }
  SPARSETOPK_HOST_DEVICE PavBlock& back() { return data[count - 1]; }
  SPARSETOPK_HOST_DEVICE PavBlock& operator[](std::size_t i) { return data[i]; }
  SPARSETOPK_HOST_DEVICE std::size_t size() const { return count; }
};

// w = (1, ..., 1, 0, ..., 0) with `top` ones, without storing it.
struct TopkWeights {
  std::size_t top;
  SPARSETOPK_HOST_DEVICE double operator[](std::size_t i) const { return i < top ? 1.0 : 0.0; }
};

}  // namespace sparsetopk::detail
