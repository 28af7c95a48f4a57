// Published values of SPEC.md ("Known values"), the Figure 1 family and
// p = 2 cases computed by hand from SPEC.md's closed forms.

#include <gtest/gtest.h>

#include <cmath>
#include <sparsetopk/sparsetopk.hpp>
#include <vector>

#include "test_support.hpp"

namespace {

using stk_test::mag;
using stk_test::mask;

void expect_near_all(const std::vector<double>& got, const std::vector<double>& expected,
                     double tol) {
  ASSERT_EQ(got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], expected[i], tol) << "entry " << i << " of " << stk_test::show(got);
}

// ---- SPEC.md known values: x = [-5, -2, 3, 1], k = 2, l = 0.01 ------------------

const std::vector<double> kX{-5, -2, 3, 1};

TEST(KnownValues, SoftMaskP43IsZeroZeroOneOne) {
  expect_near_all(mask(kX, 4, 2, 0.01, 4.0 / 3.0), {0, 0, 1, 1}, 1e-6);
}

TEST(KnownValues, SoftMagnitudeP43IsMinusFiveZeroThreeZero) {
  expect_near_all(mag(kX, 4, 2, 0.01, 4.0 / 3.0), {-5, 0, 3, 0}, 1e-6);
}

TEST(KnownValues, SoftMaskP43ConvenienceWithDefaultPIsZeroZeroOneOne) {
  sparsetopk::SoftTopkOptions o;
  o.l = 0.01;  // p defaults to 4/3
  expect_near_all(sparsetopk::soft_topk_mask(kX, 2, o), {0, 0, 1, 1}, 1e-6);
}

TEST(KnownValues, SoftMagnitudeP43ConvenienceWithDefaultPIsMinusFiveZeroThreeZero) {
  sparsetopk::SoftTopkOptions o;
  o.l = 0.01;
  expect_near_all(sparsetopk::soft_topk_mag(kX, 2, o), {-5, 0, 3, 0}, 1e-6);
}

TEST(KnownValues, SoftMaskP43InFloatIsZeroZeroOneOne) {
  const std::vector<float> xf(kX.begin(), kX.end());
  const auto y = mask(xf, 4, 2, 0.01, 4.0 / 3.0);
  expect_near_all({y.begin(), y.end()}, {0, 0, 1, 1}, 1e-6);
}

TEST(KnownValues, SoftMagnitudeP43InFloatIsMinusFiveZeroThreeZero) {
  const std::vector<float> xf(kX.begin(), kX.end());
  const auto y = mag(xf, 4, 2, 0.01, 4.0 / 3.0);
  expect_near_all({y.begin(), y.end()}, {-5, 0, 3, 0}, 1e-6);
}

TEST(KnownValues, HardMaskIsZeroZeroOneOne) {
  EXPECT_EQ(sparsetopk::hard_topk_mask(kX, 2), (std::vector<double>{0, 0, 1, 1}));
}

TEST(KnownValues, HardMagnitudeIsMinusFiveZeroThreeZero) {
  EXPECT_EQ(sparsetopk::hard_topk_mag(kX, 2), (std::vector<double>{-5, 0, 3, 0}));
}

TEST(KnownValues, SoftMagnitudeP43ReturnsTopEntriesExactly) {
  const auto y = mag(kX, 4, 2, 0.01, 4.0 / 3.0);
  EXPECT_EQ(y[0], -5.0);
  EXPECT_EQ(y[2], 3.0);
  EXPECT_EQ(y[1], 0.0);
  EXPECT_EQ(y[3], 0.0);
}

// ---- Figure 1: k = 2, x(s) = (3, 1, -1 + s, s), f(s) = mask_2 + mask_3 ---------

std::vector<double> fig1_x(double s) { return {3, 1, -1 + s, s}; }

double fig1_soft(double s, double l, double p) {
  const auto y = mask(fig1_x(s), 4, 2, l, p);
  return y[2] + y[3];
}

double fig1_hard(double s) {
  const auto y = sparsetopk::hard_topk_mask(fig1_x(s), 2);
  return y[2] + y[3];
}

// Hard: x_3 = s beats x_1 = 1 for s > 1 (tie at s = 1 goes to index 1), x_2 =
// s - 1 beats x_0 = 3 for s > 4 (tie at s = 4 goes to index 0).
TEST(Figure1, HardSumIsZeroUpToOneThenOneUpToFourThenTwo) {
  for (double s : {-3.0, 0.0, 0.5, 1.0}) EXPECT_EQ(fig1_hard(s), 0.0) << "s=" << s;
  for (double s : {1.001, 2.0, 3.0, 3.5, 4.0}) EXPECT_EQ(fig1_hard(s), 1.0) << "s=" << s;
  for (double s : {4.001, 5.0, 10.0}) EXPECT_EQ(fig1_hard(s), 2.0) << "s=" << s;
}

// p = 2, l = 1: out_i = clip(x_i - tau, 0, 1), sum = 2. By hand:
//   s <= 0: (1, 1, 0, 0)                 f = 0
//   0..2:   tau = s/2, y1 = 1 - s/2, y3 = s/2      f = s/2
//   2..3:   tau = s - 1, (1, 0, 0, 1)    f = 1
//   3..5:   tau = (s+1)/2, y0 = (5-s)/2, y2 = (s-3)/2, y3 = 1   f = (s-1)/2
//   s >= 5: (0, 0, 1, 1)                 f = 2
double fig1_p2_expected(double s) {
  if (s <= 0) return 0;
  if (s <= 2) return s / 2;
  if (s <= 3) return 1;
  if (s <= 5) return (s - 1) / 2;
  return 2;
}

TEST(Figure1, SoftP2SumFollowsHandComputedPiecewiseLinearCurve) {
  for (double s : {-3.0, -0.5, 0.0, 0.25, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.75, 5.0, 6.0, 9.0})
    EXPECT_NEAR(fig1_soft(s, 1.0, 2.0), fig1_p2_expected(s), 1e-12) << "s=" << s;
}

TEST(Figure1, SoftP2FullOutputAtSOneIsHandValue) {
  // s = 1: x = (3, 1, 0, 1), tau = 1/2.
  expect_near_all(mask(fig1_x(1.0), 4, 2, 1.0, 2.0), {1, 0.5, 0, 0.5}, 1e-12);
}

TEST(Figure1, SoftP2FullOutputAtSFourIsHandValue) {
  // s = 4: x = (3, 1, 3, 4), tau = 5/2.
  expect_near_all(mask(fig1_x(4.0), 4, 2, 1.0, 2.0), {0.5, 0, 0.5, 1}, 1e-12);
}

TEST(Figure1, SoftP2SumIsExactlyZeroForNonPositiveS) {
  for (double s : {-3.0, -1.0, -0.5, -0.01, 0.0})
    EXPECT_EQ(fig1_soft(s, 1.0, 2.0), 0.0) << "s=" << s;
}

TEST(Figure1, SoftP43SumIsExactlyZeroForNonPositiveS) {
  // For s <= 0 every tau in [s, 0] gives (1, 1, 0, 0): entries 2 and 3 are exactly 0.
  for (double s : {-3.0, -1.0, -0.5, -0.01, 0.0}) {
    const auto y = mask(fig1_x(s), 4, 2, 1.0, 4.0 / 3.0);
    EXPECT_EQ(y[2], 0.0) << "s=" << s;
    EXPECT_EQ(y[3], 0.0) << "s=" << s;
  }
}

TEST(Figure1, SoftP43SumIsPositiveJustAboveZero) {
  for (double s : {0.05, 0.5, 1.0}) EXPECT_GT(fig1_soft(s, 1.0, 4.0 / 3.0), 0.0) << "s=" << s;
}

TEST(Figure1, SoftSumsReachTwoForLargeS) {
  // s >= 5 with l = 1: tau in [3, s - 2] gives (0, 0, 1, 1).
  for (double p : {2.0, 4.0 / 3.0})
    for (double s : {5.5, 8.0})
      EXPECT_NEAR(fig1_soft(s, 1.0, p), 2.0, 1e-12) << "s=" << s << " p=" << p;
}

TEST(Figure1, SoftP43SumIsStrictlyBetweenHardValuesInTheMiddle) {
  // Smooth curve: strictly inside (0, 2) where the hard curve jumps.
  for (double s : {1.0, 4.0}) {
    const double f = fig1_soft(s, 1.0, 4.0 / 3.0);
    EXPECT_GT(f, 0.0) << "s=" << s;
    EXPECT_LT(f, 2.0) << "s=" << s;
  }
}

// Raising x_2 and x_3 can only lower y_0 + y_1 (off-diagonal Jacobian entries
// are <= 0), so f is non-decreasing; it is also Lipschitz (continuous).
void check_fig1_continuous_non_decreasing(double l, double p) {
  const double h = 1e-3;
  double prev = fig1_soft(-2.0, l, p);
  for (double s = -2.0 + h; s <= 7.0; s += h) {
    const double f = fig1_soft(s, l, p);
    ASSERT_GE(f, prev - 1e-12) << "s=" << s;
    ASSERT_LE(f - prev, 5 * h / l) << "jump at s=" << s;
    prev = f;
  }
}

TEST(Figure1, SoftP2SumIsContinuousAndNonDecreasing) {
  check_fig1_continuous_non_decreasing(1.0, 2.0);
}
TEST(Figure1, SoftP43SumIsContinuousAndNonDecreasing) {
  check_fig1_continuous_non_decreasing(1.0, 4.0 / 3.0);
}

TEST(Figure1, SoftP2SumIsExactlyPiecewiseLinearOnDenseGrid) {
  for (int i = -200; i <= 700; ++i) {
    const double s = i / 100.0;
    ASSERT_NEAR(fig1_soft(s, 1.0, 2.0), fig1_p2_expected(s), 1e-12) << "s=" << s;
  }
}

// ---- p = 2 by hand: mask y = clip((x - tau)/l, 0, 1); magnitude r = (1+l)/l u ----

TEST(HandValuesP2, MaskWithTwoFractionalEntries) {
  // x = (3, -2, 1.5, 0.2), k = 2, l = 2: tau = -0.15, y = (1, 0, 1.65/2, 0.35/2).
  expect_near_all(mask(std::vector<double>{3, -2, 1.5, 0.2}, 4, 2, 2.0, 2.0), {1, 0, 0.825, 0.175},
                  1e-12);
}

TEST(HandValuesP2, MaskWithOneEntryAtTheThreshold) {
  // x = (3, -2, 1.5, 0.2), k = 2, l = 1: tau = 0.5, y = (1, 0, 1, 0).
  expect_near_all(mask(std::vector<double>{3, -2, 1.5, 0.2}, 4, 2, 1.0, 2.0), {1, 0, 1, 0}, 1e-12);
}

TEST(HandValuesP2, MaskWithThreeEqualEntriesSharesMass) {
  // x = (1, 1, 1), k = 1: by symmetry y = 1/3 each for any l.
  expect_near_all(mask(std::vector<double>{1, 1, 1}, 3, 1, 0.5, 2.0), {1.0 / 3, 1.0 / 3, 1.0 / 3},
                  1e-12);
}

TEST(HandValuesP2, MagnitudeWithLOne) {
  // |x| sorted (3, 2, 1.5, 0.2), w = (1, 1, 0, 0), l = 1: singletons s/(1+l w) =
  // (1.5, 1, 1.5, 0.2); positions 1, 2 pool to 3.5 / 3 = 7/6. u = (1.5, 5/6, 1/3, 0),
  // r = 2u = (3, 5/3, 2/3, 0).
  expect_near_all(mag(std::vector<double>{3, -2, 1.5, 0.2}, 4, 2, 1.0, 2.0),
                  {3, -5.0 / 3, 2.0 / 3, 0}, 1e-12);
}

TEST(HandValuesP2, MagnitudeWithLHalf) {
  // l = 1/2: pooled value 3.5 / 2.5 = 1.4, u = (1, 0.6, 0.1, 0), r = 3u.
  expect_near_all(mag(std::vector<double>{3, -2, 1.5, 0.2}, 4, 2, 0.5, 2.0), {3, -1.8, 0.3, 0},
                  1e-12);
}

TEST(HandValuesP2, MagnitudeKeepsTopEntryExactly) {
  const auto y = mag(std::vector<double>{3, -2, 1.5, 0.2}, 4, 2, 0.5, 2.0);
  EXPECT_EQ(y[0], 3.0);
  EXPECT_EQ(y[3], 0.0);
}

TEST(HandValuesP2, MagnitudeOfTwoEqualMagnitudesWithKOne) {
  // |x| = (2, 2), w = (1, 0), l = 1: pooled 4 / (2 + 1) = 4/3, u = 2/3, r = 4/3 each.
  expect_near_all(mag(std::vector<double>{-2, 2}, 2, 1, 1.0, 2.0), {-4.0 / 3, 4.0 / 3}, 1e-12);
}

TEST(HandValuesP43, MaskOfTwoEqualEntriesWithKOneIsHalf) {
  // Symmetry: y = (1/2, 1/2); with q = 4, (x - tau)/l = 2^(-1/3).
  expect_near_all(mask(std::vector<double>{0.3, 0.3}, 2, 1, 1.0, 4.0 / 3.0), {0.5, 0.5}, 1e-12);
}

TEST(HandValuesP43, MaskWithOneFractionalPairSolvesCubic) {
  // x = (10, 1, 1, -10), k = 2, l = 1, q = 4: y_0 = 1, y_3 = 0, and
  // 2 (1 - tau)^3 = 1 gives y_1 = y_2 = 1/2.
  expect_near_all(mask(std::vector<double>{10, 1, 1, -10}, 4, 2, 1.0, 4.0 / 3.0), {1, 0.5, 0.5, 0},
                  1e-12);
}

}  // namespace
