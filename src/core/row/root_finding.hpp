#pragma once
// A safeguarded Newton iteration for a decreasing function on a bracket.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "elementwise.hpp"
#include "host_device.hpp"

namespace sparsetopk::detail {

// The most evaluations of find_decreasing_root (it stops at machine precision
// well before on any bracket of doubles).
inline constexpr int kMaxRootIterations = 200;

inline constexpr double kInfinity = std::numeric_limits<double>::infinity();

// The iteration of find_decreasing_root is written once for one root (T =
// double) or a batch of independent ones (T = at::Tensor, elementwise: the
// ATen path's find_root, src/torch/generic), from these three pieces.

// Machine precision at the bracket [lo, hi], which shrinks with it (relative
// down to the subnormals: a root near 1e-306 is resolved like one near 1).
template <class T>
SPARSETOPK_HOST_DEVICE T root_tolerance(const T& lo, const T& hi) {
  using E = Elementwise<T>;
  return 4.0 * DBL_EPSILON * E::maximum(E::abs(lo), E::abs(hi)) + DBL_TRUE_MIN;
}

// Whether the bracket [lo, hi] is still wider than the machine precision.
template <class T>
SPARSETOPK_HOST_DEVICE auto bracket_open(const T& lo, const T& hi) {
  return (Elementwise<T>::next_up(lo) < hi) & (hi - lo > root_tolerance(lo, hi));
}

// The point that splits [lo, hi]: the midpoint, or the geometric mean when
// the bracket lies on one side of 0 (an end may be 0) and spans orders of magnitude, so that a
// root many decades closer to 0 than the bracket's far end (large p: tau at
// -1e-84 in [-1, -1e-308]) is found in O(log decades) steps, not O(decades).
// Across a sign change, 0; then one end is 0, and the root's decade is found as above.
template <class T>
SPARSETOPK_HOST_DEVICE T bisect(const T& lo, const T& hi) {
  using E = Elementwise<T>;
  const T lo_up = E::maximum(lo, DBL_MIN), hi_down = E::minimum(hi, -DBL_MIN);
  return E::select((lo < 0.0) & (hi > 0.0), 0.0,
                   E::select((lo >= 0.0) & (hi > 16.0 * lo_up), E::sqrt(lo_up) * E::sqrt(hi),
                             E::select((hi <= 0.0) & (lo < 16.0 * hi_down), -E::sqrt(-hi_down) * E::sqrt(-lo),
                                       lo + 0.5 * (hi - lo))));
}

// One step of the safeguarded Newton iteration on a bracket [lo, hi] of a
// non-increasing f, f(lo) >= 0 >= f(hi), at the point x inside it, given f(x)
// (nonzero: a zero is the root) and Newton's step f(x) / f'(x). The end of the
// bracket on f(x)'s side moves to x. The next point is Newton's x - step where
// that stays inside the bracket and the step is less than half the last one
// (`last_width`, updated), else the split point; never an end of the bracket.
template <class T>
SPARSETOPK_HOST_DEVICE T next_root_estimate(const T& x, const T& f, const T& step, T& lo, T& hi, T& last_width) {
  using E = Elementwise<T>;
  lo = E::select(f > 0.0, x, lo);
  hi = E::select(f < 0.0, x, hi);
  const T newton = x - step, length = E::abs(step), tolerance = root_tolerance(lo, hi);
  const auto take_newton = E::is_finite(step) & (newton > lo) & (newton < hi) & (length < 0.5 * last_width);
  // A step below the tolerance is no proof of convergence when the slope is
  // steep (p large): overshoot slightly so the bracket closes from both sides.
  const T newton_point =
      E::select(length > tolerance, newton, E::clamp(newton - E::copysign(tolerance, step), lo, hi));
  const T next = E::select(take_newton, newton_point, bisect(lo, hi));
  last_width = E::select(take_newton, length, hi - lo);
  return E::select((next > lo) & (next < hi), next, lo + 0.5 * (hi - lo));  // never evaluate an end twice
}

// Root of a non-increasing f on [lo, hi] with f(lo) >= 0 >= f(hi), starting at
// `start`. residual(x, &slope) returns f(x) and sets slope = f'(x). Newton
// steps that leave the bracket or do not halve it fall back to bisection; it
// stops at machine precision, after at most 200 evaluations (202 with closest_end).
// With `closest_end`, the bracket is closed to two adjacent doubles and yields
// whichever end has the smaller residual (at most two more evaluations)
// instead of its midpoint: a block equation with a steep f (p large), whose
// value must order correctly against its neighbors' to the ulp.
template <class Residual>
SPARSETOPK_HOST_DEVICE double find_decreasing_root(Residual&& residual, double lo, double hi, double start, bool closest_end = false) {
  const auto open = [closest_end](double a, double b) {
    return closest_end ? std::nextafter(a, kInfinity) < b : bracket_open(a, b);
  };
  double x = std::clamp(start, lo, hi), last_width = hi - lo;
  double f_lo = kInfinity, f_hi = -kInfinity;  // residuals at lo and hi, where evaluated
  for (int iteration = 0; iteration < kMaxRootIterations && open(lo, hi); ++iteration) {
    double slope = 0.0;
    const double f = residual(x, &slope);
    if (f == 0.0 || std::isnan(f)) return x;  // a root, or NaN
    (f > 0.0 ? f_lo : f_hi) = f;
    x = next_root_estimate(x, f, f / slope, lo, hi, last_width);
  }
  if (!closest_end) return lo + 0.5 * (hi - lo);
  double slope = 0.0;
  if (!std::isfinite(f_lo)) f_lo = residual(lo, &slope);
  if (!std::isfinite(f_hi)) f_hi = residual(hi, &slope);
  if (f_lo >= 0.0 && f_hi <= 0.0) return f_lo <= -f_hi ? lo : hi;
  return lo + 0.5 * (hi - lo);
}

}  // namespace sparsetopk::detail

namespace sparsetopk::detail {

// Narrows the bracket [lo, hi] of a non-increasing f (f(lo) >= 0 >= f(hi)) to
// lie between two consecutive breakpoints b(0) >= b(1) >= ... >= b(count - 1),
// where f is smooth, by binary search (O(log count) evaluations). Returns true
// with `root` set when f vanishes exactly at a breakpoint (a kink of f).
template <class F, class Breakpoint>
SPARSETOPK_HOST_DEVICE bool narrow_to_smooth_piece(F&& f, Breakpoint&& b, std::size_t count, double& lo, double& hi, double& root) {
  std::size_t first = 0, last = count;  // find the first j with f(b(j)) >= 0
  while (first < last) {
    const std::size_t mid = first + (last - first) / 2;
    if (f(b(mid)) >= 0.0) last = mid;
    else first = mid + 1;
  }
  if (first < count) {
    const double point = b(first);
    if (point > lo && point < hi) lo = point;
    if (f(point) == 0.0 && point >= lo && point <= hi) {
      root = point;
      return true;
    }
  }
  if (first > 0) hi = std::min(hi, std::max(lo, b(first - 1)));
  return false;
}

}  // namespace sparsetopk::detail
