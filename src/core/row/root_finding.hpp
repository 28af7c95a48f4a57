#pragma once
// A safeguarded Newton iteration for a decreasing function on a bracket.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "host_device.hpp"

namespace sparsetopk::detail {

// The most evaluations of find_decreasing_root (it stops at machine precision
// well before on any bracket of doubles). Shared with the ATen path.
inline constexpr int kMaxRootIterations = 200;

// The point that splits [lo, hi]: the midpoint, or the geometric mean when
// the bracket lies on one side of 0 (an end may be 0) and spans orders of magnitude, so that a
// root many decades closer to 0 than the bracket's far end (large p: tau at
// -1e-84 in [-1, -1e-308]) is found in O(log decades) steps, not O(decades).
inline constexpr double kInfinity = std::numeric_limits<double>::infinity();

SPARSETOPK_HOST_DEVICE inline double bisect(double lo, double hi) {
  if (lo < 0.0 && hi > 0.0) return 0.0;  // then one end is 0, and the root's decade is found as below
  if (lo >= 0.0 && hi > 16.0 * std::max(lo, DBL_MIN)) return std::sqrt(std::max(lo, DBL_MIN)) * std::sqrt(hi);
  if (hi <= 0.0 && lo < 16.0 * std::min(hi, -DBL_MIN)) return -std::sqrt(-std::min(hi, -DBL_MIN)) * std::sqrt(-lo);
  return lo + 0.5 * (hi - lo);
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
  // machine precision at the current bracket, which shrinks with it (relative
  // down to the subnormals: a root near 1e-306 is resolved like one near 1)
  const auto tolerance_at = [](double a, double b) {
    return 4.0 * DBL_EPSILON * std::max(std::abs(a), std::abs(b)) + DBL_TRUE_MIN;
  };
  const auto open = [closest_end, &tolerance_at](double a, double b) {
    return std::nextafter(a, kInfinity) < b && (closest_end || b - a > tolerance_at(a, b));
  };
  double x = std::clamp(start, lo, hi), last_width = hi - lo;
  double f_lo = kInfinity, f_hi = -kInfinity;  // residuals at lo and hi, where evaluated
  for (int iteration = 0; iteration < kMaxRootIterations && open(lo, hi); ++iteration) {
    double slope = 0.0;
    const double f = residual(x, &slope);
    if (f == 0.0) return x;
    if (f > 0.0) lo = x, f_lo = f;
    else if (f < 0.0) hi = x, f_hi = f;
    else return x;  // NaN
    const double step = f / slope, tolerance = tolerance_at(lo, hi);
    const double newton = x - step;
    if (std::isfinite(step) && newton > lo && newton < hi && std::abs(step) < 0.5 * last_width) {
      last_width = std::abs(step);
      // A step below the tolerance is no proof of convergence when the slope is
      // steep (p large): overshoot slightly so the bracket closes from both sides.
      x = std::abs(step) > tolerance ? newton : std::clamp(newton - std::copysign(tolerance, step), lo, hi);
    } else {
      last_width = hi - lo;
      x = bisect(lo, hi);
    }
    if (!(x > lo && x < hi)) x = lo + 0.5 * (hi - lo);  // never evaluate an end twice
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
