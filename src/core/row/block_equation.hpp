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
#include <type_traits>

#include "elementwise.hpp"
#include "host_device.hpp"
#include "regularizer.hpp"
#include "root_finding.hpp"
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
template <class T>
SPARSETOPK_HOST_DEVICE T cbrt_seed(const T& x) {
  return Elementwise<T>::bits_over_3_plus(x, kCbrtSeedBias);
}

// A bound on cbrt(x) from above, at most 7.4% above it, for x >= 0 (libm's
// cbrt for zero, subnormal and infinite x): where a wider bound only costs a
// little, the seed is cheaper than cbrt's ~130 instructions.
template <class T>
SPARSETOPK_HOST_DEVICE T cbrt_upper_bound(const T& x) {
  using E = Elementwise<T>;
  return E::branch((x >= DBL_MIN) & (x <= DBL_MAX), [&] { return T(kCbrtUpperFactor * cbrt_seed(x)); },
                   [&] { return E::cbrt(x); });
}

// cbrt(x) for normal x > 0 to about 1e-15 relative, without libm: the seed
// (within 3.2%), then two Halley steps (each cubes the relative error).
template <class T>
SPARSETOPK_HOST_DEVICE T approximate_cbrt(const T& x) {
  T y = cbrt_seed(x);
  for (int step = 0; step < 2; ++step) {
    const T y3 = y * y * y;
    y = y * ((y3 + 2.0 * x) / (2.0 * y3 + x));
  }
  return y;
}

// Unique real root of t^3 + P t = Q for P >= 0, without cancellation.
template <class T>
SPARSETOPK_HOST_DEVICE T solve_depressed_cubic(const T& P, const T& Q) {
  using E = Elementwise<T>;
  // Cardano with u^3 = |Q|/2 + sqrt(Q^2/4 + P^3/27) and t = u - P/(3u), rewritten as
  // t = |Q| / (u^2 + P/3 + (P/(3u))^2): a sum of positive terms.
  const T abs_q = E::abs(Q), half_q = 0.5 * abs_q, third_p = P / 3.0;
  // whether the larger of |Q|/2 and (P/3)^(3/2) lies in (2^-500, 2^500), read off P/3 itself
  const auto in_range = ((half_q > 0x1p-500) | (third_p > 0x1p-333)) & (half_q < 0x1p500) & (third_p < 0x1p333);
  const auto within = [&] {
    // (the same t with one division: v = P/(3u) = third_p/u, so t = |Q| u^2 / (u^4 + third_p u^2 + third_p^2))
    const T u = approximate_cbrt(half_q + E::sqrt(half_q * half_q + third_p * third_p * third_p)), u2 = u * u;
    const T t = abs_q * u2 / (u2 * (u2 + third_p) + third_p * third_p);
    // one Newton step on t^3 + P t = |Q| takes the error of the steps above (it
    // squares it) to the rounding of the residual: within 2 ulps, its terms are positive
    const T t2 = t * t;
    return E::copysign(t - ((t2 + P) * t - abs_q) / (3.0 * t2 + P), Q);
  };
  const auto beyond = [&] {  // squares would under- or overflow: hypot and pow
    const T r = E::hypot(0.5 * Q, E::pow(P / 3.0, 1.5));
    const T u = E::cbrt(0.5 * abs_q + r);
    const T v = P / (3.0 * u);
    // (u = 0 where |Q|/2 underflows and P = 0: then t = cbrt(Q))
    return E::select(P == 0.0, E::cbrt(Q), E::copysign(abs_q / (u * u + P / 3.0 + v * v), Q));
  };
  return E::select(Q == 0.0, 0.0, E::branch(in_range, within, beyond));
}

// gamma of a block from its moments `m` (count, weight W, mean, unit, m2, m3
// as BlockMoments holds them), for q = 2 (linear) and q = 4 (a cubic):
// SPEC.md, "Reduction". For one block (BlockMoments: T = double) or a batch
// (a struct of tensors with the same fields: T = at::Tensor).
template <class Moments>
SPARSETOPK_HOST_DEVICE auto closed_form_value(Form form, Regularizer::Kind kind, double l, const Moments& m) {
  using T = std::decay_t<decltype(m.mean)>;
  using E = Elementwise<T>;
  const T &n = m.count, &W = m.weight;
  const bool mask = form == Form::mask;
  if (kind == Regularizer::Kind::quadratic) {
    return mask ? T(m.mean - l * W / n)          // sum (s_i - gamma) / l = W
                : T(n * m.mean / (n + l * W));   // sum (s_i - gamma) / l = gamma W
  }
  // q = 4: with gamma = mean + t, sum (s_i - gamma)^3 = m3 - 3 t m2 - n t^3 (raw
  // moments); solved for t in units where every coefficient is at most O(1).
  if (mask) {
    // n t^3 + 3 m2 t = m3 - W l^3, in units V = max(unit, l)
    const T V = E::maximum(m.unit, l), r = m.unit / V, lambda = l / V;
    const T P = 3.0 * m.m2 * r * r / n, Q = (m.m3 * r * r * r - W * lambda * lambda * lambda) / n;
    return T(m.mean + V * solve_depressed_cubic(P, Q));
  }
  // n t^3 + (3 m2 + W l^3) t = m3 - W l^3 mean, in units of `unit`, where
  // kappa = W l^3 / unit^2 and mu = mean / unit
  const T lambda = l / m.unit, mu = m.mean / m.unit;
  const T kappa = E::select(W == 0.0, 0.0, W * lambda * lambda * l);
  return E::branch(
      kappa > 0x1p300,
      // gamma = sum (s_i - gamma)^3 / (W l^3) is negligible against the keys:
      // to first order the sum of the cubes of s_i / unit over kappa
      [&] { return T(m.unit * ((n * mu * mu * mu + 3.0 * mu * m.m2 + m.m3) / kappa)); },
      [&] {
        const T P = (3.0 * m.m2 + kappa) / n, Q = (m.m3 - kappa * mu) / n;
        return T(m.mean + m.unit * solve_depressed_cubic(P, Q));
      });
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
  return closed_form_value(form_, regularizer_.kind(), l_, m);
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
