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

// Count, weight W_B and central moments of the s values of a block; merged
// with Chan's pairwise update, so no raw power sums ever cancel.
struct BlockMoments {
  double count = 0.0, weight = 0.0, mean = 0.0, m2 = 0.0, m3 = 0.0;

  static BlockMoments single(double s, double w) { return {1.0, w, s, 0.0, 0.0}; }
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

 private:
  double solve_closed_form(const BlockMoments& m) const;
  double solve_by_newton(std::span<const double> s, const BlockMoments& m) const;

  IsotonicForm form_;
  double l_;
  Regularizer regularizer_;
};

}  // namespace sparsetopk::detail
