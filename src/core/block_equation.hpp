#pragma once
// The first-order condition of one PAV block (SPEC.md, "Reduction") and its
// exact solution gamma:
//   mask:      sum_{i in B} pow((s_i - gamma)/l, q-1) = W_B
//   magnitude: sum_{i in B} pow((s_i - gamma)/l, q-1) = gamma * W_B
// with W_B = sum_{i in B} w_i.

#include <span>

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

  static BlockMoments single(double s, double w) { return {1.0, w, s, unit_of(s), 0.0, 0.0}; }
  static double unit_of(double s);
  void merge(const BlockMoments& b);
};

// Unique real root of t^3 + P t = Q for P >= 0, without cancellation.
double solve_depressed_cubic(double P, double Q);

class BlockEquation {
 public:
  BlockEquation(IsotonicForm form, double l, double p) : form_(form), l_(l), regularizer_(p) {}

  IsotonicForm form() const { return form_; }
  double l() const { return l_; }
  const Regularizer& regularizer() const { return regularizer_; }

  // gamma for the block whose sorted values are `s` (non-increasing).
  double solve(std::span<const double> s, const BlockMoments& m) const;

  // F(gamma) = left side - right side, decreasing in gamma; and F'(gamma).
  double residual(std::span<const double> s, double weight, double gamma, double* slope) const;

  // The same block's value as the offset d = reference - gamma from a key near
  // it, solved with u_i = (s_i - reference) + d: to the ulp of d, not of gamma
  // (s_i - reference is exact for keys within a factor 2 of the reference).
  // `gamma` is the block's value as solve() gave it, the starting point.
  double solve_offset(std::span<const double> s, const BlockMoments& m, double reference, double gamma) const;

 private:
  double solve_closed_form(const BlockMoments& m) const;
  double solve_by_newton(std::span<const double> s, const BlockMoments& m) const;
  void bracket(std::span<const double> s, const BlockMoments& m, double& lo, double& hi, double& start) const;

  IsotonicForm form_;
  double l_;
  Regularizer regularizer_;
};

}  // namespace sparsetopk::detail
