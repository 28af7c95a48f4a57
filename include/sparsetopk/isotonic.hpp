#pragma once
// The two isotonic problems of SPEC.md, solved exactly by Pool Adjacent Violators.
//
//   mask:      v = argmin_{v_1 >= ... >= v_n} sum_i |s_i - v_i|^q / (q l^(q-1)) + w_i v_i
//   magnitude: v = argmin_{v_1 >= ... >= v_n} sum_i |s_i - v_i|^q / q + (l^(q-1)/2) w_i v_i^2
//
// with q = p / (p - 1), s sorted non-increasing and w non-increasing (w >= 0 for
// the magnitude form, which is convex only then).

#include <cstddef>
#include <span>
#include <vector>

#include <sparsetopk/form.hpp>

namespace sparsetopk {

// A maximal run [begin, end) of sorted positions sharing the value `value`.
struct IsotonicBlock {
  std::size_t begin = 0;
  std::size_t end = 0;
  double value = 0.0;
  std::size_t size() const { return end - begin; }
};

struct IsotonicSolution {
  std::vector<double> v;               // the solution, non-increasing
  std::vector<IsotonicBlock> blocks;   // partition of [0, n) in order
};

// Exact solution for any p > 1 and l > 0: block values in closed form for
// p = 2 and p = 4/3 (O(n) overall), by a safeguarded Newton iteration otherwise.
// Throws InvalidArgument if s is not non-increasing, w is not non-increasing,
// sizes differ, l <= 0, p <= 1, or any value is not finite.
IsotonicSolution solve_isotonic(std::span<const double> s, std::span<const double> w,
                                double l, double p, Form form);

}  // namespace sparsetopk
