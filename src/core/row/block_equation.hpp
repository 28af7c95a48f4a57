#pragma once
// The first-order condition of one PAV block (SPEC.md, "Reduction") and its
// exact solution gamma:
//   mask:      sum_{i in B} pow((s_i - gamma)/l, q-1) = W_B
//   magnitude: sum_{i in B} pow((s_i - gamma)/l, q-1) = gamma * W_B
// with W_B = sum_{i in B} w_i.

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cstdint>
#include <cmath>
#include <span>

#include "host_device.hpp"
#include "root_finding.hpp"

#include "regularizer.hpp"
#include "sparsetopk/isotonic.hpp"

namespace sparsetopk::detail {

// Count, weight W_B, mean and central moments of the s values of a block;
// merged with Chan's pairwise update, so no raw power sums ever cancel. The
// moments are kept in units of `unit`, a power of two with |s_i| < 2 unit
// (at least DBL_MIN), so that cubes of subnormal or huge keys neither
// underflow nor overflow:
//   m2 = sum (s_i - mean)^2 / unit^2,  m3 = sum (s_i - mean)^3 / unit^3.
struct BlockMoments {
  double count = 0.0, weight = 0.0, mean = 0.0, unit = 1.0, m2 = 0.0, m3 = 0.0;

  SPARSETOPK_HOST_DEVICE static BlockMoments single(double s, double w) { return {1.0, w, s, unit_of(s), 0.0, 0.0}; }
  SPARSETOPK_HOST_DEVICE static double unit_of(double s);
  SPARSETOPK_HOST_DEVICE void merge(const BlockMoments& b);
};

// Unique real root of t^3 + P t = Q for P >= 0, without cancellation.
SPARSETOPK_HOST_DEVICE inline double solve_depressed_cubic(double P, double Q);

class BlockEquation {
 public:
  SPARSETOPK_HOST_DEVICE BlockEquation(Form form, double l, double p) : form_(form), l_(l), regularizer_(p) {}

  SPARSETOPK_HOST_DEVICE Form form() const { return form_; }
  SPARSETOPK_HOST_DEVICE double l() const { return l_; }
  SPARSETOPK_HOST_DEVICE const Regularizer& regularizer() const { return regularizer_; }

  // gamma for the block whose sorted values are `s` (non-increasing).
  SPARSETOPK_HOST_DEVICE double solve(std::span<const double> s, const BlockMoments& m) const;

  // F(gamma) = left side - right side, decreasing in gamma; and F'(gamma).
  SPARSETOPK_HOST_DEVICE double residual(std::span<const double> s, double weight, double gamma, double* slope) const;

  // The same block's value as the offset d = reference - gamma from a key near
  // it, solved with u_i = (s_i - reference) + d: to the ulp of d, not of gamma
  // (s_i - reference is exact for keys within a factor 2 of the reference).
  // `gamma` is the block's value as solve() gave it, the starting point.
  SPARSETOPK_HOST_DEVICE double solve_offset(std::span<const double> s, const BlockMoments& m, double reference, double gamma) const;

 private:
  SPARSETOPK_HOST_DEVICE double solve_closed_form(const BlockMoments& m) const;
  SPARSETOPK_HOST_DEVICE double solve_by_newton(std::span<const double> s, const BlockMoments& m) const;
  SPARSETOPK_HOST_DEVICE void bracket(std::span<const double> s, const BlockMoments& m, double& lo, double& hi, double& start) const;

  Form form_;
  double l_;
  Regularizer regularizer_;
};

// ---- definitions (inline: the CUDA kernels compile them too) ----

SPARSETOPK_HOST_DEVICE inline double BlockMoments::unit_of(double s) {
  // 2^ilogb(s), at least DBL_MIN (zero and subnormals): s's exponent bits
  // alone, without the libm calls of ldexp(1, ilogb(s)) (a finite s or inf)
  constexpr std::uint64_t kExponentBits = 0x7ff0000000000000;
  const std::uint64_t exponent = std::bit_cast<std::uint64_t>(s) & kExponentBits;
  return exponent == 0 ? DBL_MIN : std::bit_cast<double>(exponent);
}

SPARSETOPK_HOST_DEVICE inline void BlockMoments::merge(const BlockMoments& b) {
  const double na = count, nb = b.count, n = na + nb;
  const double u = std::max(unit, b.unit), ra = unit / u, rb = b.unit / u;  // powers of two
  const double m2a = m2 * ra * ra, m3a = m3 * ra * ra * ra, m2b = b.m2 * rb * rb, m3b = b.m3 * rb * rb * rb;
  const double delta = b.mean / u - mean / u;  // at most 4 in magnitude
  m3 = m3a + m3b + delta * delta * delta * na * nb * (na - nb) / (n * n) + 3.0 * delta * (na * m2b - nb * m2a) / n;
  m2 = m2a + m2b + delta * delta * na * nb / n;
  mean = (mean / u + delta * nb / n) * u;
  unit = u;
  count = n;
  weight += b.weight;
}

// cbrt(x) for normal x > 0 within 3.2% (0.969 to 1.033 times it): the bits
// of x divided by 3, which divides the exponent by 3; the bias re-adds 2/3 of
// the exponent's, less 0.033 to centre the error.
inline constexpr std::uint64_t kCbrtSeedBias = static_cast<std::uint64_t>((1023.0 - 341.0 - 0.0330624) * 0x1p52);
// The factor that makes the seed an upper bound (1.04 * 0.969 > 1).
inline constexpr double kCbrtUpperFactor = 1.04;
SPARSETOPK_HOST_DEVICE inline double cbrt_seed(double x) {
  return std::bit_cast<double>(std::bit_cast<std::uint64_t>(x) / 3 + kCbrtSeedBias);
}

// A bound on cbrt(x) from above, at most 7.4% above it, for x >= 0 (libm's
// cbrt for zero, subnormal and infinite x): where a wider bound only costs a
// little, the seed is cheaper than cbrt's ~130 instructions.
SPARSETOPK_HOST_DEVICE inline double cbrt_upper_bound(double x) {
  if (!(x >= DBL_MIN && x <= DBL_MAX)) return std::cbrt(x);
  return kCbrtUpperFactor * cbrt_seed(x);
}

// cbrt(x) for normal x > 0 to about 1e-15 relative, without libm: the seed
// (within 3.2%), then two Halley steps (each cubes the relative error).
SPARSETOPK_HOST_DEVICE inline double approximate_cbrt(double x) {
  double y = cbrt_seed(x);
  for (int step = 0; step < 2; ++step) {
    const double y3 = y * y * y;
    y *= (y3 + 2.0 * x) / (2.0 * y3 + x);
  }
  return y;
}

SPARSETOPK_HOST_DEVICE inline double solve_depressed_cubic(double P, double Q) {
  if (Q == 0.0) return 0.0;
  // Cardano with u^3 = |Q|/2 + sqrt(Q^2/4 + P^3/27) and t = u - P/(3u), rewritten as
  // t = |Q| / (u^2 + P/3 + (P/(3u))^2): a sum of positive terms.
  const double half_q = 0.5 * std::abs(Q), third_p = P / 3.0;
  // whether the larger of |Q|/2 and (P/3)^(3/2) lies in (2^-500, 2^500), read off P/3 itself
  const bool in_range = (half_q > 0x1p-500 || third_p > 0x1p-333) && half_q < 0x1p500 && third_p < 0x1p333;
  if (!in_range) {  // squares would under- or overflow: hypot and pow
    if (P == 0.0) return std::cbrt(Q);                // (u = 0 where |Q|/2 underflows)
    const double r = std::hypot(0.5 * Q, std::pow(P / 3.0, 1.5));
    const double u = std::cbrt(0.5 * std::abs(Q) + r);
    const double v = P / (3.0 * u);
    return std::copysign(std::abs(Q) / (u * u + P / 3.0 + v * v), Q);
  }
  // (the same t with one division: v = P/(3u) = third_p/u, so t = |Q| u^2 / (u^4 + third_p u^2 + third_p^2))
  const double u = approximate_cbrt(half_q + std::sqrt(half_q * half_q + third_p * third_p * third_p)), u2 = u * u;
  double t = std::abs(Q) * u2 / (u2 * (u2 + third_p) + third_p * third_p);
  // one Newton step on t^3 + P t = |Q| takes the error of the steps above (it
  // squares it) to the rounding of the residual: within 2 ulps, its terms are positive
  const double t2 = t * t;
  t -= ((t2 + P) * t - std::abs(Q)) / (3.0 * t2 + P);
  return std::copysign(t, Q);
}

SPARSETOPK_HOST_DEVICE inline double BlockEquation::solve(std::span<const double> s, const BlockMoments& m) const {
  if (s.size() == 1) {
    // mask: pow((s - gamma)/l, q-1) = w, so gamma = s - l pow(w, p-1), exactly s or s - l for w in {0, 1}
    const double w = m.weight;
    if (form_ == Form::mask) return s[0] - l_ * (w == 0.0 || w == 1.0 ? w : regularizer_.inverse_power(w));
    if (w == 0.0) return s[0];
  }
  if (regularizer_.kind() != Regularizer::Kind::general) return solve_closed_form(m);
  return solve_by_newton(s, m);
}

SPARSETOPK_HOST_DEVICE inline double BlockEquation::solve_closed_form(const BlockMoments& m) const {
  const double n = m.count, W = m.weight, l = l_;
  const bool mask = form_ == Form::mask;
  if (regularizer_.kind() == Regularizer::Kind::quadratic) {
    return mask ? m.mean - l * W / n          // sum (s_i - gamma) / l = W
                : n * m.mean / (n + l * W);   // sum (s_i - gamma) / l = gamma W
  }
  // q = 4: with gamma = mean + t, sum (s_i - gamma)^3 = m3 - 3 t m2 - n t^3 (raw
  // moments); solved for t in units where every coefficient is at most O(1).
  if (mask) {
    // n t^3 + 3 m2 t = m3 - W l^3, in units V = max(unit, l)
    const double V = std::max(m.unit, l), r = m.unit / V, lambda = l / V;
    const double P = 3.0 * m.m2 * r * r / n, Q = (m.m3 * r * r * r - W * lambda * lambda * lambda) / n;
    return m.mean + V * solve_depressed_cubic(P, Q);
  }
  // n t^3 + (3 m2 + W l^3) t = m3 - W l^3 mean, in units of `unit`, where
  // kappa = W l^3 / unit^2 and mu = mean / unit
  const double lambda = l / m.unit, mu = m.mean / m.unit;
  const double kappa = W == 0.0 ? 0.0 : W * lambda * lambda * l;
  if (kappa > 0x1p300) {
    // gamma = sum (s_i - gamma)^3 / (W l^3) is negligible against the keys:
    // to first order the sum of the cubes of s_i / unit over kappa
    return m.unit * ((n * mu * mu * mu + 3.0 * mu * m.m2 + m.m3) / kappa);
  }
  const double P = (3.0 * m.m2 + kappa) / n, Q = (m.m3 - kappa * mu) / n;
  return m.mean + m.unit * solve_depressed_cubic(P, Q);
}

SPARSETOPK_HOST_DEVICE inline double BlockEquation::residual(std::span<const double> s, double weight, double gamma,
                               double* slope) const {
  double f = 0.0, df = 0.0;
  for (double si : s) {
    const double u = (si - gamma) / l_;
    f += regularizer_.power(u);
    df -= regularizer_.slope(u) / l_;  // infinite at u = 0 when q < 2
  }
  if (form_ == Form::mask) {
    f -= weight;
  } else {
    f -= gamma * weight;
    df -= weight;
  }
  if (slope) *slope = df;
  return f;
}

// A bracket [lo, hi] of gamma, F(lo) >= 0 >= F(hi), and a starting point.
SPARSETOPK_HOST_DEVICE inline void BlockEquation::bracket(std::span<const double> s, const BlockMoments& m, double& lo, double& hi,
                            double& start) const {
  const double s_max = s.front(), s_min = s.back();
  if (form_ == Form::mask) {
    // every term equals W / n at gamma = s_i - l pow(W / n, p - 1)
    const double shift = l_ * regularizer_.inverse_power(m.weight / m.count);
    lo = s_min - shift;
    hi = s_max - shift;
    start = m.mean - shift;
  } else {
    lo = std::min(s_min, 0.0);
    hi = std::max(s_max, 0.0);
    start = 0.5 * (lo + hi);
  }
}

SPARSETOPK_HOST_DEVICE inline double BlockEquation::solve_by_newton(std::span<const double> s, const BlockMoments& m) const {
  double lo, hi, gamma;
  bracket(s, m, lo, hi, gamma);
  return find_decreasing_root(
      [&](double g, double* slope) { return residual(s, m.weight, g, slope); }, lo, hi, gamma, /*closest_end=*/true);
}

SPARSETOPK_HOST_DEVICE inline double BlockEquation::solve_offset(std::span<const double> s, const BlockMoments& m, double reference,
                                   double gamma) const {
  double lo, hi, start;
  bracket(s, m, lo, hi, start);
  // -F(reference - d), decreasing in d
  const auto residual = [&](double d, double* slope) {
    double f = 0.0, df = 0.0;
    for (double si : s) {
      const double u = ((si - reference) + d) / l_;
      f -= regularizer_.power(u);
      df -= regularizer_.slope(u) / l_;
    }
    if (form_ == Form::mask) {
      f += m.weight;
    } else {
      f += (reference - d) * m.weight;
      df -= m.weight;
    }
    *slope = df;
    return f;
  };
  return find_decreasing_root(residual, reference - hi, reference - lo, reference - gamma, /*closest_end=*/true);
}

}  // namespace sparsetopk::detail
