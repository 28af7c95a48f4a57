// Soft top-k mask and magnitude operators (SPEC.md) against the bisection
// reference, optimality of the constrained primal problem, structural
// properties, batching, precision, threading and argument validation.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sparsetopk/sparsetopk.hpp>
#include <string>
#include <utility>
#include <vector>

#include "reference.hpp"
#include "test_support.hpp"

#if __has_include("row_window.hpp")
#include "row_window.hpp"
#define STK_HAVE_ROW_WINDOW 1
#else
#define STK_HAVE_ROW_WINDOW 0
#endif

namespace {

using stk_test::mag;
using stk_test::mask;

struct Row {
  std::vector<double> x;
  std::size_t k = 0;
  double l = 1, p = 2;
  sparsetopk::Solver solver = sparsetopk::Solver::automatic;
};

std::size_t gen_n(int max_n = 12) {
  return static_cast<std::size_t>(*rc::gen::inRange(1, max_n + 1));
}
std::size_t gen_k(std::size_t n) {
  return static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(n) + 1));
}

// A random row: values on a grid of [-5, 5] (ties possible), any k in [0, n].
Row gen_case(int max_n = 12) {
  Row r;
  const std::size_t n = gen_n(max_n);
  r.x = stk_test::gen_row(n, -5, 5, 2000);
  r.k = gen_k(n);
  r.l = *rc::gen::element(0.01, 0.1, 0.5, 1.0, 3.0);
  r.p = stk_test::gen_p();
  r.solver = stk_test::gen_solver();
  return r;
}

void log_case(const Row& r) {
  RC_LOG() << "x=" << stk_test::show(r.x) << " k=" << r.k << " l=" << r.l << " p=" << r.p
           << " solver=" << static_cast<int>(r.solver) << "\n";
}

// ---- against the reference ---------------------------------------------------

// Every test of this fixture runs for both forms.
using sparsetopk::Form;
class ByForm : public ::testing::TestWithParam<Form> {};
INSTANTIATE_TEST_SUITE_P(SoftTopk, ByForm, ::testing::Values(Form::mask, Form::magnitude),
                         [](const auto& info) { return stk_test::form_name(info.param); });

std::vector<double> soft(Form form, const std::vector<double>& x, std::size_t n, std::size_t k, double l, double p,
                         sparsetopk::Solver solver) {
  return stk_test::soft(form, x, n, k, l, p, nullptr, nullptr, solver);
}

// Checks a row's output against the bisection reference: within 1e-9 (relative
// for the magnitude) plus the conditioning term of holder_tol.
void expect_reference(Form form, const Row& r, const std::vector<double>& got) {
  const auto expected = form == Form::mask ? ref::soft_mask(r.x, r.k, r.l, r.p).out : ref::soft_mag(r.x, r.k, r.l, r.p).out;
  const double holder = stk_test::holder_tol(r.p, r.l, stk_test::max_abs(r.x));
  for (std::size_t i = 0; i < got.size(); ++i) {
    RC_LOG() << "i=" << i << " x=" << r.x[i] << " got " << got[i] << " expected " << expected[i] << "\n";
    const double tol = (form == Form::mask ? 1e-9 : 1e-9 * (1 + std::fabs(expected[i]))) + holder;
    RC_ASSERT(std::fabs(got[i] - expected[i]) <= tol);
  }
}

STK_PROP_P(ByForm, MatchesBisectionReference, 200) {
  const Row r = gen_case();
  log_case(r);
  expect_reference(param, r, soft(param, r.x, r.x.size(), r.k, r.l, r.p, r.solver));
}

// Long rows with many near-ties around the threshold: exercises the window
// selection of the threshold solver.
Row gen_long_case() {
  Row r;
  const auto n = static_cast<std::size_t>(*rc::gen::inRange(13, 401));
  const int steps = *rc::gen::element(20, 200, 20000);
  r.x = stk_test::gen_row(n, -2, 2, steps);
  r.k = gen_k(n);
  r.l = *rc::gen::element(0.001, 0.05, 0.5, 3.0);
  r.p = stk_test::gen_p();
  r.solver = stk_test::gen_solver();
  return r;
}

STK_PROP_P(ByForm, MatchesBisectionReferenceOnLongRows, 100) {
  const Row r = gen_long_case();
  RC_LOG() << "n=" << r.x.size() << " k=" << r.k << " l=" << r.l << " p=" << r.p
           << " solver=" << static_cast<int>(r.solver) << "\n";
  expect_reference(param, r, soft(param, r.x, r.x.size(), r.k, r.l, r.p, r.solver));
}

STK_PROP_P(ByForm, VectorConvenienceEqualsBatchApi, 50) {
  const Row r = gen_case();
  const auto batch = soft(param, r.x, r.x.size(), r.k, r.l, r.p, r.solver);
  const auto o = stk_test::options(r.l, r.p, r.solver);
  const auto conv = param == Form::mask ? sparsetopk::soft_topk_mask(r.x, r.k, o) : sparsetopk::soft_topk_mag(r.x, r.k, o);
  RC_ASSERT(conv == batch);
}

STK_PROP_P(ByForm, AllSolversAgree, 200) {
  const Row r = gen_case();
  log_case(r);
  using sparsetopk::Solver;
  const auto a = soft(param, r.x, r.x.size(), r.k, r.l, r.p, Solver::automatic);
  const auto b = soft(param, r.x, r.x.size(), r.k, r.l, r.p, Solver::pav);
  const auto c = soft(param, r.x, r.x.size(), r.k, r.l, r.p, Solver::threshold);
  for (std::size_t i = 0; i < a.size(); ++i) {
    RC_LOG() << "i=" << i << " automatic " << a[i] << " pav " << b[i] << " threshold " << c[i]
             << "\n";
    RC_ASSERT(std::fabs(a[i] - b[i]) <= 1e-12 * (1 + std::fabs(b[i])));
    RC_ASSERT(std::fabs(c[i] - b[i]) <= 1e-12 * (1 + std::fabs(b[i])));
  }
}

// ---- optimality of the constrained primal -------------------------------------
// out = argmax_{y in [0,1]^n, sum y = k} <y, x> - (l/p) sum y^p. KKT: there is tau
// with y_i = 0 => x_i <= tau, y_i = 1 => x_i - l >= tau, and 0 < y_i < 1 =>
// x_i - l y_i^(p-1) = tau.

STK_PROP(SoftTopkMask, SatisfiesKktOfConstrainedPrimal, 200) {
  const Row r = gen_case();
  log_case(r);
  const auto y = mask(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  const double tol = 1e-9 * (1 + stk_test::max_abs(r.x) + r.l);
  const double sat = 1 - 1e-12;  // outputs this close to 1 count as saturated
  std::vector<double> taus;
  double max_zero = -std::numeric_limits<double>::infinity();  // tau >= x_i for y_i = 0
  double min_one = std::numeric_limits<double>::infinity();    // tau <= x_i - l for y_i = 1
  for (std::size_t i = 0; i < y.size(); ++i) {
    RC_ASSERT(y[i] >= 0.0);
    RC_ASSERT(y[i] <= 1.0);
    if (y[i] == 0.0) {
      max_zero = std::max(max_zero, r.x[i]);
    } else if (y[i] >= sat) {
      min_one = std::min(min_one, r.x[i] - r.l);
    } else {
      taus.push_back(r.x[i] - r.l * std::pow(y[i], r.p - 1));
    }
  }
  if (!taus.empty()) {
    const auto [lo, hi] = std::minmax_element(taus.begin(), taus.end());
    RC_LOG() << "fractional taus in [" << *lo << ", " << *hi << "]\n";
    RC_ASSERT(*hi - *lo <= tol);
    const double tau = (*lo + *hi) / 2;
    RC_ASSERT(max_zero <= tau + tol);
    RC_ASSERT(min_one >= tau - tol);
  } else {
    RC_ASSERT(max_zero <= min_one + tol);
  }
}

// ---- structure of the mask -----------------------------------------------------

STK_PROP(SoftTopkMask, LiesInUnitInterval, 200) {
  const Row r = gen_case();
  for (double v : mask(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver)) {
    RC_ASSERT(v >= 0.0);
    RC_ASSERT(v <= 1.0);
  }
}

STK_PROP(SoftTopkMask, SumsToK, 200) {
  const Row r = gen_case();
  const auto y = mask(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  double sum = 0;
  for (double v : y) sum += v;
  const double tol =
      static_cast<double>(y.size()) * stk_test::holder_tol(r.p, r.l, stk_test::max_abs(r.x));
  RC_ASSERT(std::fabs(sum - static_cast<double>(r.k)) <=
            1e-10 * (1 + static_cast<double>(r.k)) + tol);
}

STK_PROP(SoftTopkMask, HasExactlyKNonzerosForSeparatedInputsAndSmallL, 100) {
  const std::size_t n = gen_n();
  const auto x = stk_test::gen_distinct_row(n, 1.0, 3.0, stk_test::gen_grid(-10, 10));
  const std::size_t k = gen_k(n);
  const double p = stk_test::gen_p();
  const auto y = mask(x, n, k, 1e-3, p, nullptr, nullptr, stk_test::gen_solver());
  RC_LOG() << "x=" << stk_test::show(x) << " k=" << k << " p=" << p << " y=" << stk_test::show(y)
           << "\n";
  RC_ASSERT(static_cast<std::size_t>(
                std::count_if(y.begin(), y.end(), [](double v) { return v != 0.0; })) == k);
}

// A random case's mask y, the reference threshold tau and a margin around it.
struct MaskAtThreshold {
  Row r;
  std::vector<double> y;
  ref::Real tau;
  double margin;
};

MaskAtThreshold gen_mask_at_threshold() {
  Row r = gen_case();
  const ref::Real tau = ref::soft_mask(r.x, r.k, r.l, r.p).tau;
  auto y = mask(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  return {std::move(r), std::move(y), tau, 1e-6 * (1 + std::fabs(static_cast<double>(tau)))};
}

STK_PROP(SoftTopkMask, IsExactlyZeroBelowThreshold, 200) {
  const auto [r, y, tau, margin] = gen_mask_at_threshold();
  for (std::size_t i = 0; i < y.size(); ++i)
    if (ref::Real(r.x[i]) < tau - margin) RC_ASSERT(y[i] == 0.0);
}

STK_PROP(SoftTopkMask, IsOneFarAboveThreshold, 200) {
  const auto [r, y, tau, margin] = gen_mask_at_threshold();
  for (std::size_t i = 0; i < y.size(); ++i)
    if (ref::Real(r.x[i]) > tau + r.l + margin) RC_ASSERT(std::fabs(y[i] - 1.0) <= 1e-12);
}

STK_PROP_P(ByForm, IsPermutationEquivariant, 100) {
  const Row r = gen_case();
  const auto perm = stk_test::gen_permutation(r.x.size());
  std::vector<double> xp(r.x.size());
  for (std::size_t i = 0; i < xp.size(); ++i) xp[i] = r.x[perm[i]];
  const auto y = soft(param, r.x, r.x.size(), r.k, r.l, r.p, r.solver);
  const auto yp = soft(param, xp, xp.size(), r.k, r.l, r.p, r.solver);
  for (std::size_t i = 0; i < xp.size(); ++i) {
    const double tol = param == Form::mask ? 1e-12 : 1e-12 * (1 + std::fabs(y[perm[i]]));
    RC_ASSERT(std::fabs(yp[i] - y[perm[i]]) <= tol);
  }
}

STK_PROP(SoftTopkMask, IsInvariantToAddingAConstant, 100) {
  const Row r = gen_case();
  const double c = stk_test::gen_grid(-4, 4, 64);  // multiples of 1/8: exact shifts
  std::vector<double> xs(r.x);
  for (auto& v : xs) v += c;
  const auto y = mask(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  const auto ys = mask(xs, xs.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  const double tol = 1e-9 + 2 * stk_test::holder_tol(r.p, r.l, stk_test::max_abs(xs));
  for (std::size_t i = 0; i < y.size(); ++i) RC_ASSERT(std::fabs(ys[i] - y[i]) <= tol);
}

STK_PROP(SoftTopkMask, IsNonDecreasingInOwnEntry, 100) {
  Row r = gen_case();
  const auto i = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(r.x.size())));
  const auto y = mask(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  r.x[i] += stk_test::gen_grid(0.001, 2, 1000);
  const auto y2 = mask(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  RC_ASSERT(y2[i] >= y[i] - 1e-12 - 2 * stk_test::holder_tol(r.p, r.l, stk_test::max_abs(r.x)));
}

STK_PROP(SoftTopkMask, TendsToHardMaskAsLVanishes, 100) {
  const std::size_t n = gen_n();
  const auto x = stk_test::gen_distinct_row(n, 0.01, 1.0, stk_test::gen_grid(-5, 5));
  const std::size_t k = gen_k(n);
  const double p = stk_test::gen_p();
  const auto hard = ref::hard_mask(x, k);
  // Below the smallest gap (0.01) the soft mask is the hard one.
  const auto y = mask(x, n, k, 1e-4, p, nullptr, nullptr, stk_test::gen_solver());
  for (std::size_t i = 0; i < n; ++i) RC_ASSERT(std::fabs(y[i] - hard[i]) <= 1e-9);
}

STK_PROP(SoftTopkMask, InnerProductWithXGrowsAsLDecreases, 100) {
  // y(l) = grad of a convex function at x / l, so <x, y(l)> is non-increasing in
  // l, and bounded by the sum of the k largest entries (the hard value).
  const Row r = gen_case();
  log_case(r);
  const auto hard = ref::hard_mask(r.x, r.k);
  double top = 0;
  for (std::size_t i = 0; i < hard.size(); ++i) top += hard[i] * r.x[i];
  double prev = -std::numeric_limits<double>::infinity();
  for (double l : {10.0, 3.0, 1.0, 0.3, 0.1, 0.01, 0.001}) {
    const auto y = mask(r.x, r.x.size(), r.k, l, r.p, nullptr, nullptr, r.solver);
    double d = 0;
    for (std::size_t i = 0; i < y.size(); ++i) d += y[i] * r.x[i];
    RC_LOG() << "l=" << l << " <x, y> - top = " << d - top << " y=" << stk_test::show(y) << "\n";
    double tol = 1e-9;
    for (double v : r.x) tol += std::fabs(v) * stk_test::holder_tol(r.p, l, stk_test::max_abs(r.x));
    RC_ASSERT(d >= prev - 2 * tol);
    RC_ASSERT(d <= top + tol);
    prev = d;
  }
}

// Gap between the top entries and the next one equal to l up to rounding: for
// p = 3 the next entry's output is sqrt(u) with u ~ 1e-16, the most sensitive
// configuration; the outputs must still sum to k and match the reference.
TEST(SoftTopkMask, SumsToKWhenAnEntrySitsAtTheThresholdForPThree) {
  const std::vector<double> x{2.045, 2.045, 1.745};
  for (auto solver : {sparsetopk::Solver::pav, sparsetopk::Solver::threshold}) {
    const auto y = mask(x, 3, 2, 0.3, 3.0, nullptr, nullptr, solver);
    EXPECT_NEAR(y[0] + y[1] + y[2], 2.0, 1e-12) << stk_test::show(y);
    const auto expected = ref::soft_mask(x, 2, 0.3, 3.0).out;
    for (std::size_t i = 0; i < 3; ++i) EXPECT_NEAR(y[i], expected[i], 1e-12) << i;
  }
}

// ---- structure of the magnitude ---------------------------------------------

STK_PROP(SoftTopkMag, ReturnsTopEntriesExactlyUnchanged, 200) {
  const Row r = gen_case();
  log_case(r);
  const auto expected = ref::soft_mag(r.x, r.k, r.l, r.p);
  const auto out = mag(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  const ref::Real q = ref::conjugate(r.p);
  // A top entry is returned unchanged when pow((s_i - gamma)/l, q-1) >= gamma.
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (!expected.top[i]) continue;
    const ref::Real u = std::fabs(ref::Real(r.x[i])) - expected.gamma;
    if (ref::spow(u / r.l, q - 1) > expected.gamma * (1 + 1e-6L) + 1e-9L) {
      RC_LOG() << "i=" << i << " x=" << r.x[i] << " out=" << out[i] << "\n";
      RC_ASSERT(out[i] == r.x[i]);
    }
  }
}

STK_PROP(SoftTopkMag, IsExactlyZeroFarBelowTheKthMagnitude, 200) {
  const Row r = gen_case();
  const auto expected = ref::soft_mag(r.x, r.k, r.l, r.p);
  const auto out = mag(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  const ref::Real margin = 1e-6L * (1 + expected.gamma);
  for (std::size_t i = 0; i < out.size(); ++i)
    if (std::fabs(ref::Real(r.x[i])) < expected.gamma - margin) RC_ASSERT(out[i] == 0.0);
}

STK_PROP(SoftTopkMag, ShrinksTowardZeroKeepingSign, 200) {
  const Row r = gen_case();
  const auto out = mag(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  for (std::size_t i = 0; i < out.size(); ++i) {
    RC_ASSERT(std::fabs(out[i]) <= std::fabs(r.x[i]));
    RC_ASSERT(out[i] * r.x[i] >= 0.0);
  }
}

STK_PROP(SoftTopkMag, IsOddInX, 100) {
  const Row r = gen_case();
  std::vector<double> neg(r.x);
  for (auto& v : neg) v = -v;
  const auto y = mag(r.x, r.x.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  const auto yn = mag(neg, neg.size(), r.k, r.l, r.p, nullptr, nullptr, r.solver);
  for (std::size_t i = 0; i < y.size(); ++i) RC_ASSERT(yn[i] == -y[i]);
}

STK_PROP(SoftTopkMag, TendsToHardMagnitudeAsLVanishes, 100) {
  const std::size_t n = gen_n();
  const auto x = stk_test::gen_distinct_row(n, 0.05, 1.0, stk_test::gen_grid(0.1, 3));
  const auto signs = *rc::gen::container<std::vector<bool>>(n, rc::gen::arbitrary<bool>());
  std::vector<double> xs(x);
  for (std::size_t i = 0; i < n; ++i) xs[i] = signs[i] ? -x[i] : x[i];
  const std::size_t k = gen_k(n);
  const double p = stk_test::gen_p();
  const auto hard = ref::hard_mag(xs, k);
  const auto y = mag(xs, n, k, 1e-6, p, nullptr, nullptr, stk_test::gen_solver());
  RC_LOG() << "x=" << stk_test::show(xs) << " k=" << k << " p=" << p << " y=" << stk_test::show(y)
           << "\n";
  for (std::size_t i = 0; i < n; ++i) RC_ASSERT(std::fabs(y[i] - hard[i]) <= 1e-9);
}

// ---- edge values of k ---------------------------------------------------------

STK_PROP_P(ByForm, KZeroGivesAllZeros, 50) {
  const Row r = gen_case();
  for (double v : soft(param, r.x, r.x.size(), 0, r.l, r.p, r.solver)) RC_ASSERT(v == 0.0);
}

STK_PROP(SoftTopkMask, KEqualToNGivesAllOnes, 50) {
  const Row r = gen_case();
  for (double v : mask(r.x, r.x.size(), r.x.size(), r.l, r.p, nullptr, nullptr, r.solver))
    RC_ASSERT(v == 1.0);
}

STK_PROP(SoftTopkMag, KEqualToNGivesX, 50) {
  const Row r = gen_case();
  RC_ASSERT(mag(r.x, r.x.size(), r.x.size(), r.l, r.p, nullptr, nullptr, r.solver) == r.x);
}

TEST(SoftTopk, EmptyBatchWithZeroRowLengthIsAccepted) {
  std::vector<double> x, out;
  EXPECT_NO_THROW(sparsetopk::soft_topk_mask<double>(x, 0, 0, out));
  EXPECT_NO_THROW(sparsetopk::soft_topk_mag<double>(x, 0, 0, out));
}

TEST(SoftTopk, EmptyBatchWithPositiveRowLengthIsAccepted) {
  std::vector<double> x, out;
  EXPECT_NO_THROW(sparsetopk::soft_topk_mask<double>(x, 5, 2, out));
  EXPECT_NO_THROW(sparsetopk::soft_topk_mag<double>(x, 5, 2, out));
}

// ---- batches, precision, threads, reuse -----------------------------------------

struct Batch {
  std::vector<double> x;
  std::size_t rows = 0, n = 0, k = 0;
  double l = 1, p = 2;
  sparsetopk::Solver solver = sparsetopk::Solver::automatic;
};

Batch gen_batch(int max_rows = 8, int max_n = 12) {
  Batch b;
  b.rows = static_cast<std::size_t>(*rc::gen::inRange(1, max_rows + 1));
  b.n = gen_n(max_n);
  b.k = gen_k(b.n);
  b.x = stk_test::gen_row(b.rows * b.n, -5, 5, 2000);
  b.l = *rc::gen::element(0.01, 0.1, 0.5, 1.0, 3.0);
  b.p = stk_test::gen_p();
  b.solver = stk_test::gen_solver();
  return b;
}

STK_PROP_P(ByForm, BatchEqualsRowByRow, 50) {
  const Batch b = gen_batch();
  stk_test::Saved all;
  const auto y = stk_test::soft(param, b.x, b.n, b.k, b.l, b.p, &all, nullptr, b.solver);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const std::vector<double> row(b.x.begin() + static_cast<std::ptrdiff_t>(r * b.n),
                                  b.x.begin() + static_cast<std::ptrdiff_t>((r + 1) * b.n));
    stk_test::Saved one;
    const auto y_row = stk_test::soft(param, row, b.n, b.k, b.l, b.p, &one, nullptr, b.solver);
    for (std::size_t i = 0; i < b.n; ++i) RC_ASSERT(y[r * b.n + i] == y_row[i]);
    RC_ASSERT(stk_test::same_bytes(std::span(all.state).subspan(r, 1), one.state));
  }
}

// float against double, for both forms (value-parameterized) with the float
// outputs within 1e-5 (relative) of the double ones on the same inputs.
STK_PROP_P(ByForm, FloatAgreesWithDouble, 100) {
  const Batch b = gen_batch();
  const std::vector<float> xf(b.x.begin(), b.x.end());
  const auto yf = stk_test::soft(param, xf, b.n, b.k, b.l, b.p, nullptr, nullptr, b.solver);
  const auto yd = soft(param, std::vector<double>(xf.begin(), xf.end()), b.n, b.k, b.l, b.p, b.solver);
  for (std::size_t i = 0; i < yf.size(); ++i)
    RC_ASSERT(std::fabs(double(yf[i]) - yd[i]) <= 1e-5 * (1 + std::fabs(yd[i])));
}

// A reused workspace and state give what fresh ones give: outputs, and a state
// of one RowState per row, each as a fresh call leaves it.
STK_PROP(SoftTopk, ReusedWorkspaceAndStateGiveSameResults, 30) {
  sparsetopk::Workspace ws;
  stk_test::Saved reused;
  for (int call = 0; call < 3; ++call) {
    const Batch b = gen_batch(16, 40);
    const Form form = *rc::gen::element(Form::mask, Form::magnitude);
    stk_test::Saved fresh;
    const auto y_fresh = stk_test::soft(form, b.x, b.n, b.k, b.l, b.p, &fresh, nullptr, b.solver);
    const auto y_reused = stk_test::soft(form, b.x, b.n, b.k, b.l, b.p, &reused, &ws, b.solver);
    RC_ASSERT(y_fresh == y_reused);
    RC_ASSERT(reused.rows() == b.rows);
    RC_ASSERT(stk_test::same_bytes(reused.state, fresh.state));
  }
}

STK_PROP(SoftTopkMask, BandGammaIsTheThreshold, 100) {
  const Row r = gen_case();
  log_case(r);
  stk_test::Saved saved;
  const auto y = mask(r.x, r.x.size(), r.k, r.l, r.p, &saved, nullptr, r.solver);
  RC_ASSERT(saved.rows() == 1u);
  const auto idx = stk_test::band_indices(Form::mask, saved, r.x, 0);
  const double q = r.p / (r.p - 1);
  // The band's entries are the fractional ones: y_i = ((x_i - gamma)/l)^(q-1).
  for (std::size_t j = 0; j < idx.size(); ++j) {
    RC_ASSERT(idx[j] < r.x.size());
    const double u = (r.x[idx[j]] - saved.state[0].gamma) / r.l;
    const double tol = 1e-9 + 2 * stk_test::holder_tol(r.p, r.l, stk_test::max_abs(r.x));
    RC_ASSERT(std::fabs(y[idx[j]] - std::pow(std::clamp(u, 0.0, 1.0), q - 1)) <= tol);
  }
  // Every fractional entry is in the band.
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (y[i] > 1e-12 && y[i] < 1 - 1e-12)
      RC_ASSERT(std::find(idx.begin(), idx.end(), i) != idx.end());
  }
}

void check_thread_invariance(bool use_mag, double p, sparsetopk::Solver solver,
                             std::size_t rows = 600, std::size_t n = 200) {
  stk_test::ThreadCountGuard guard;
  const std::size_t k = n / 5 + 1;
  std::vector<double> x(rows * n);
  std::uint64_t state = 12345;
  for (auto& v : x) {  // xorshift: reproducible pseudo-random values
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    v = static_cast<double>(state % 200001) / 20000.0 - 5.0;
  }
  std::vector<std::vector<double>> outs;
  std::vector<stk_test::Saved> states(3);
  const std::size_t counts[] = {1, 2, 5};
  for (std::size_t t = 0; t < 3; ++t) {
    sparsetopk::set_num_threads(counts[t]);
    EXPECT_EQ(sparsetopk::num_threads(), counts[t]);
    outs.push_back(use_mag ? mag(x, n, k, 0.3, p, &states[t], nullptr, solver)
                           : mask(x, n, k, 0.3, p, &states[t], nullptr, solver));
  }
  for (std::size_t t = 1; t < 3; ++t) {
    ASSERT_EQ(outs[t].size(), outs[0].size());
    EXPECT_EQ(std::memcmp(outs[t].data(), outs[0].data(), outs[0].size() * sizeof(double)), 0)
        << counts[t] << " threads differ from 1 thread";
    ASSERT_EQ(states[t].rows(), rows);
    for (std::size_t r = 0; r < rows; ++r)
      EXPECT_TRUE(stk_test::same_bytes(std::span(states[t].state).subspan(r, 1), std::span(states[0].state).subspan(r, 1)))
          << counts[t] << " threads, row " << r;
  }
}

using sparsetopk::Solver;
TEST(SoftTopkMask, ResultsAreBitwiseIdenticalForOneAndSeveralThreads) {
  check_thread_invariance(false, 4.0 / 3.0, Solver::automatic);
}
TEST(SoftTopkMag, ResultsAreBitwiseIdenticalForOneAndSeveralThreads) {
  check_thread_invariance(true, 4.0 / 3.0, Solver::automatic);
}
TEST(SoftTopkMask, ResultsAreBitwiseIdenticalAcrossThreadsForGeneralPWithPav) {
  check_thread_invariance(false, 1.5, Solver::pav, 300, 100);
}
TEST(SoftTopkMag, ResultsAreBitwiseIdenticalAcrossThreadsForGeneralPWithThreshold) {
  check_thread_invariance(true, 3.0, Solver::threshold, 300, 100);
}

TEST(Parallel, SetNumThreadsZeroRestoresDefault) {
  stk_test::ThreadCountGuard guard;
  sparsetopk::set_num_threads(3);
  EXPECT_EQ(sparsetopk::num_threads(), 3u);
  sparsetopk::set_num_threads(0);
  EXPECT_GE(sparsetopk::num_threads(), 1u);
}

// The threshold solver selects the k-th and (k+1)-th keys in one of four ways
// (src/core/row_window.hpp): an insertion buffer (k < 32), a heap
// (64 k <= n), nth_element, and a sampled bracket (n >= 2^15). On rows with
// many ties and near-ties each must give what Solver::pav gives on the sorted row.
TEST(SoftTopkSelection, EverySelectionPathAgreesWithPav) {
  struct Shape {
    std::size_t n, k;
  };
  const Shape shapes[] = {{1000, 10}, {4096, 40}, {8192, 127}, {1000, 100}, {40000, 300}, {40000, 20000}};
  std::mt19937_64 rng(5);
  for (const Shape& shape : shapes) {
    // two rows: distinct values, then ties on a grid with near-ties among them
    std::vector<double> x(2 * shape.n);
    std::normal_distribution<double> normal;
    for (std::size_t i = 0; i < shape.n; ++i) x[i] = normal(rng);
    for (std::size_t i = shape.n; i < x.size(); ++i) {
      const int grid = static_cast<int>(rng() % 401) - 200;
      x[i] = grid / 64.0 * (rng() % 4 == 0 ? 1.0 + 4e-16 * static_cast<double>(rng() % 3) : 1.0);
    }
    for (double p : {4.0 / 3.0, 2.0, 3.0}) {
      for (const bool magnitude : {false, true}) {
        const auto run = [&](sparsetopk::Solver solver) {
          return magnitude ? mag(x, shape.n, shape.k, 0.05, p, nullptr, nullptr, solver)
                           : mask(x, shape.n, shape.k, 0.05, p, nullptr, nullptr, solver);
        };
        const auto pav = run(sparsetopk::Solver::pav), threshold = run(sparsetopk::Solver::threshold);
        for (std::size_t i = 0; i < x.size(); ++i)
          ASSERT_NEAR(threshold[i], pav[i], 1e-9) << "n=" << shape.n << " k=" << shape.k << " p=" << p
                                                  << (magnitude ? " mag" : " mask") << " i=" << i;
      }
    }
  }
}

#if STK_HAVE_ROW_WINDOW
// Each selection path on its own returns exactly the k-th and (k+1)-th largest
// keys (the outputs above tolerate a slightly wrong window, this does not).
TEST(SoftTopkSelection, EverySelectionPathReturnsTheKthAndNextKeys) {
  namespace d = sparsetopk::detail;
  std::mt19937_64 rng(9);
  d::RowWorkspace ws;
  for (std::size_t n : {40u, 1000u, 5000u, 40000u}) {
    for (int trial = 0; trial < 6; ++trial) {
      std::vector<float> row(n);
      for (float& v : row) v = static_cast<float>(static_cast<int>(rng() % (trial % 2 ? 50 : 1000000)) - 500) / 7.0f;
      std::vector<float> sorted(row);
      for (float& v : sorted) v = std::abs(v);
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      for (std::size_t k : {std::size_t{1}, std::size_t{5}, std::size_t{31}, n / 64, n / 3, n - 1}) {
        if (k == 0) continue;
        const std::span<const float> r(row);
        const std::pair<double, double> expected{sorted[k - 1], sorted[k]};
        const auto magnitude = d::Magnitude{};
        if (k < d::kSmallK) {
          EXPECT_EQ(d::kth_keys_small_k(r, k, magnitude), expected) << "buffer n=" << n << " k=" << k;
        }
        EXPECT_EQ(d::kth_keys_by_heap(r, k, magnitude, ws), expected) << "heap n=" << n << " k=" << k;
        EXPECT_EQ(d::kth_keys_by_selection(r, k, magnitude, ws), expected) << "nth_element n=" << n << " k=" << k;
        EXPECT_EQ(d::kth_keys_sampled(r, k, magnitude, std::span<d::RowWorkspace>(&ws, 1)), expected)
            << "sampled n=" << n << " k=" << k;
      }
    }
  }
}

// The fixed slots of k < 8 (kth_keys_by_network) and the buffer of larger k,
// for every k up to 9 on short rows, with ties, signed zeros and negative keys.
TEST(SoftTopkSelection, SmallKSlotsReturnTheKthAndNextKeysForEveryK) {
  namespace d = sparsetopk::detail;
  std::mt19937_64 rng(13);
  for (std::size_t n : {2u, 3u, 8u, 9u, 17u, 64u}) {
    for (int trial = 0; trial < 40; ++trial) {
      std::vector<float> row(n);
      for (float& v : row) v = static_cast<float>(static_cast<int>(rng() % (trial % 2 ? 7 : 100000)) - 3) / 3.0f;
      if (trial % 4 == 1) row[rng() % n] = -0.0f;
      for (std::size_t k = 1; k < n && k <= 9; ++k) {
        const std::span<const float> r(row);
        std::vector<float> keys(row);
        std::sort(keys.begin(), keys.end(), std::greater<float>());
        EXPECT_EQ(d::kth_keys_small_k(r, k, d::Identity{}), (std::pair<double, double>{keys[k - 1], keys[k]}))
            << "identity n=" << n << " k=" << k;
        for (float& v : keys) v = std::abs(v);
        std::sort(keys.begin(), keys.end(), std::greater<float>());
        EXPECT_EQ(d::kth_keys_small_k(r, k, d::Magnitude{}), (std::pair<double, double>{keys[k - 1], keys[k]}))
            << "magnitude n=" << n << " k=" << k;
      }
    }
  }
}
#endif

// ---- rows whose k-th and (k+1)-th keys are separated --------------------------
#if STK_HAVE_ROW_WINDOW
// The threshold solver writes such a row directly, without PAV, when the
// singleton value of s_k (w = 1) lies clearly above s_{k+1} (src/core/
// band_solve.hpp, separated_keys). Near that boundary (s_{k+1} a relative
// delta from the value, either side) and with signed zeros at s_k or s_{k+1},
// every row it calls separated must come out as PAV on the sorted row gives
// it, bit for bit: outputs, saved state (the RowState, the band's c_i) and
// VJP. (Elsewhere the two solvers may differ in the last bits and in the
// RowState's unchanged_from, which is then the window's bound.) The deltas
// must straddle the boundary.

// The value of s alone in a block with w = 1 (SPEC.md, "Reduction").
long double singleton_value(bool magnitude, long double s, long double l, double p) {
  if (!magnitude) return s - l;
  if (p == 2.0) return s / (1 + l);
  long double lo = 0, hi = s;  // ((s - g)/l)^3 = g, by bisection
  for (int i = 0; i < 200; ++i) {
    const long double g = 0.5L * (lo + hi), u = (s - g) / l;
    (u * u * u > g ? lo : hi) = g;
  }
  return 0.5L * (lo + hi);
}

template <class T>
struct SolvedRows {
  std::vector<T> out, vjp;
  std::vector<double> c;  // the band, dense: c_i on its entries, -1 elsewhere
  std::vector<sparsetopk::RowState> state;
};

template <class T>
SolvedRows<T> solve_rows(bool magnitude, const std::vector<T>& x, std::size_t n, std::size_t k, double l, double p,
                         sparsetopk::Solver solver) {
  std::vector<T> g(x.size());
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<T>(std::sin(1.0 + 0.7 * static_cast<double>(i)));
  const Form form = magnitude ? Form::magnitude : Form::mask;
  stk_test::Saved saved;
  SolvedRows<T> r;
  r.out = stk_test::soft(form, x, n, k, l, p, &saved, nullptr, solver);
  r.vjp = stk_test::vjp(form, saved, x, g);
  r.c = stk_test::dense_band(form, saved, x);
  r.state = saved.state;
  return r;
}

// Whether values[r * width, (r + 1) * width) are the same bits in a and b.
template <class V>
bool same_row_bits(const std::vector<V>& a, const std::vector<V>& b, std::size_t r, std::size_t width) {
  return std::memcmp(a.data() + r * width, b.data() + r * width, width * sizeof(V)) == 0;
}

template <class T>
void check_separated_rows_match_pav() {
  namespace d = sparsetopk::detail;
  const double deltas[] = {-0.5, -1e-6, -1e-12, -1e-15, -3e-16, 0.0, 3e-16, 1e-15, 1e-14,
                           1e-13, 3e-13, 1e-12, 2e-12, 1e-11, 1e-9, 1e-6, 0.1};
  const std::size_t n = 6, k = 2;
  for (const bool magnitude : {false, true})
    for (const double p : {2.0, 4.0 / 3.0})
      for (const double l : {1e-3, 0.1, 7.0})
        for (const double s_k : {1e-3, 1.3, 2e5}) {
          // one row per delta: s_{k+1} = value (1 + delta), with entries far
          // above and below (the magnitude's: signed zeros)
          const double value = static_cast<double>(singleton_value(magnitude, s_k, l, p));
          const auto form = magnitude ? sparsetopk::Form::magnitude : sparsetopk::Form::mask;
          const double sign = magnitude ? -1.0 : 1.0;  // (the magnitude's keys are |x|)
          std::vector<T> x;
          std::vector<double> next_keys;
          for (const double delta : deltas) next_keys.push_back(value * (1.0 + delta));
          T up = static_cast<T>(value), down = up;  // and the nearest values of T (float: coarser than the deltas)
          const double key_k = static_cast<double>(static_cast<T>(s_k));  // the value as the core computes it
          next_keys.push_back(d::BlockEquation(form, l, p).solve(std::span<const double>(&key_k, 1),
                                                                d::BlockMoments::single(key_k, 1.0)));
          for (int step = 0; step < 3; ++step) {
            next_keys.push_back(static_cast<double>(up = std::nextafter(up, std::numeric_limits<T>::infinity())));
            next_keys.push_back(static_cast<double>(down = std::nextafter(down, -std::numeric_limits<T>::infinity())));
          }
          for (const double s_next : next_keys) {
            // (the mask's zeros would lie above a negative s_{k+1}: entries below it instead)
            const double below = magnitude ? 0.25 * s_next : s_next - 3.0 * std::abs(s_next) - l;
            const T row[] = {static_cast<T>(sign * (4.0 * s_k + 10.0 * l)), static_cast<T>(s_k),
                             static_cast<T>(sign * s_next), static_cast<T>(below),
                             magnitude ? T(-0.0) : static_cast<T>(2.0 * below), magnitude ? T(0.0) : static_cast<T>(3.0 * below)};
            x.insert(x.end(), row, row + n);
          }
          // the mask's signed zeros: tied at s_k (k = 3: the 2nd and 3rd
          // largest) and at s_{k+1} (k = 2), in both orders
          if (!magnitude) {
            const T zeros[][6] = {{T(5), T(-0.0), T(0.0), static_cast<T>(-1.5 * l), T(-9), T(-3)},
                                  {T(5), T(0.0), T(-0.0), static_cast<T>(-1.5 * l), T(-9), T(-3)},
                                  {T(5), static_cast<T>(1.5 * l), T(-0.0), T(0.0), T(-9), T(0.0)},
                                  {T(5), static_cast<T>(1.5 * l), T(0.0), T(-0.0), T(-9), T(-0.0)}};
            for (const auto& row : zeros) x.insert(x.end(), row, row + n);
          }
          const d::BlockEquation equation(form, l, p);
          for (const std::size_t kk : {k, k + 1}) {
            const auto pav = solve_rows(magnitude, x, n, kk, l, p, sparsetopk::Solver::pav);
            const auto threshold = solve_rows(magnitude, x, n, kk, l, p, sparsetopk::Solver::threshold);
            std::size_t separated = 0;
            for (std::size_t r = 0; r < x.size() / n; ++r) {
              std::vector<double> keys(n);
              for (std::size_t i = 0; i < n; ++i) {
                const double v = static_cast<double>(x[r * n + i]);
                keys[i] = magnitude ? std::abs(v) : v;
              }
              std::sort(keys.begin(), keys.end(), std::greater<double>());
              const std::string where = std::string(magnitude ? "mag" : "mask") + " p=" + std::to_string(p) +
                                        " l=" + std::to_string(l) + " s_k=" + std::to_string(s_k) +
                                        " k=" + std::to_string(kk) + " row " + std::to_string(r) +
                                        (sizeof(T) == 4 ? " float" : " double");
              if (!d::separated_keys(equation, keys[kk - 1], keys[kk])) {
                for (std::size_t i = r * n; i < (r + 1) * n; ++i)
                  EXPECT_NEAR(threshold.out[i], pav.out[i], 1e-12 * (1.0 + std::abs(pav.out[i]))) << where;
                continue;
              }
              ++separated;
              EXPECT_TRUE(same_row_bits(threshold.out, pav.out, r, n)) << where;
              EXPECT_TRUE(same_row_bits(threshold.c, pav.c, r, n)) << where;
              EXPECT_TRUE(same_row_bits(threshold.state, pav.state, r, 1)) << where;
              EXPECT_TRUE(same_row_bits(threshold.vjp, pav.vjp, r, n)) << where;
            }
            if (kk != k) continue;  // (k + 1: the rows are not built at its boundary)
            const std::string config = std::string(magnitude ? "mag" : "mask") + " p=" + std::to_string(p) +
                                       " l=" + std::to_string(l) + " s_k=" + std::to_string(s_k) +
                                       (sizeof(T) == 4 ? " float" : " double");
            EXPECT_GT(separated, 0u) << "no separated row: " << config;
            EXPECT_LT(separated, x.size() / n) << "every row separated, the deltas do not straddle the boundary: "
                                               << config;
          }
        }
}

// Signed zeros at s_k or s_{k+1} where the k-th key comes from nth_element
// (k >= 32), which may return either zero: the saved state still holds the
// zero that PAV's sorted row has there (the last tied at s_k, the first tied
// at s_{k+1}).
TEST(SoftTopkSeparatedRows, KeepTheSignOfTiedZerosAsPavDoes) {
  const std::size_t n = 40, k = 33;
  const double l = 0.1;
  std::vector<double> x;
  for (const bool zeros_at_kth : {true, false})
    for (const double first : {-0.0, 0.0}) {
      // 31 (zeros at s_k) or 33 (at s_{k+1}) entries above, two zeros, the rest below
      std::vector<double> row;
      for (std::size_t i = 0; i < (zeros_at_kth ? k - 2 : k); ++i) row.push_back(1.0 + 0.5 * static_cast<double>(i));
      row.push_back(first);
      row.push_back(-first);
      while (row.size() < n) row.push_back(-1.0 - static_cast<double>(row.size()));
      std::reverse(row.begin(), row.end());  // (the zeros' order still alternates between rows)
      x.insert(x.end(), row.begin(), row.end());
    }
  for (const double p : {2.0, 4.0 / 3.0}) {
    const auto pav = solve_rows(false, x, n, k, l, p, sparsetopk::Solver::pav);
    const auto threshold = solve_rows(false, x, n, k, l, p, sparsetopk::Solver::threshold);
    for (std::size_t r = 0; r < x.size() / n; ++r) {
      EXPECT_TRUE(same_row_bits(threshold.out, pav.out, r, n)) << "p=" << p << " row " << r;
      EXPECT_TRUE(same_row_bits(threshold.state, pav.state, r, 1)) << "p=" << p << " row " << r;
    }
  }
}

template <class T>
class SoftTopkSeparatedRowsIn : public ::testing::Test {};
using FloatAndDouble = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SoftTopkSeparatedRowsIn, FloatAndDouble);
TYPED_TEST(SoftTopkSeparatedRowsIn, MatchPavBitForBitAtTheBoundaryAndWithSignedZeros) {
  check_separated_rows_match_pav<TypeParam>();
}
#endif

// ---- argument validation ---------------------------------------------------------

void expect_invalid(const std::function<void()>& call, const std::vector<std::string>& names,
                    const std::string& value) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected InvalidArgument";
  } catch (const sparsetopk::InvalidArgument& e) {
    const std::string what = e.what();
    bool named = false;
    for (const auto& name : names) named = named || stk_test::names_word(what, name);
    EXPECT_TRUE(named) << "message does not name the argument: " << what;
    if (!value.empty()) {
      EXPECT_NE(what.find(value), std::string::npos) << "message lacks '" << value << "': " << what;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

const std::vector<double> kX{0.5, -1.0, 2.0, 0.25, 1.5};

template <class Fn>
void for_both_ops(Fn&& fn) {
  fn([](std::span<const double> x, std::size_t n, std::size_t k, std::span<double> out,
        const sparsetopk::SoftTopkOptions& o) {
    sparsetopk::soft_topk_mask<double>(x, n, k, out, o);
  });
  fn([](std::span<const double> x, std::size_t n, std::size_t k, std::span<double> out,
        const sparsetopk::SoftTopkOptions& o) {
    sparsetopk::soft_topk_mag<double>(x, n, k, out, o);
  });
}

TEST(SoftTopkArguments, KGreaterThanNThrowsNamingK) {
  for_both_ops([](auto op) {
    std::vector<double> out(kX.size());
    expect_invalid([&] { op(kX, 5, 7, out, {}); }, {"k"}, "7");
  });
}

// Both soft operators on kX (n = 5, k = 2) with options(l, p) throw naming `argument` and `value`.
void expect_invalid_l_p(double l, double p, const char* argument, const char* value) {
  for_both_ops([&](auto op) {
    std::vector<double> out(kX.size());
    expect_invalid([&] { op(kX, 5, 2, out, stk_test::options(l, p)); }, {argument}, value);
  });
}

TEST(SoftTopkArguments, ZeroLThrowsNamingL) { expect_invalid_l_p(0.0, 2.0, "l", "0"); }

TEST(SoftTopkArguments, NegativeLThrowsNamingLAndValue) { expect_invalid_l_p(-0.5, 2.0, "l", "-0.5"); }

TEST(SoftTopkArguments, NanLThrowsNamingL) { expect_invalid_l_p(std::nan(""), 2.0, "l", ""); }

TEST(SoftTopkArguments, POfOneThrowsNamingP) { expect_invalid_l_p(0.1, 1.0, "p", "1"); }

TEST(SoftTopkArguments, PBelowOneThrowsNamingPAndValue) { expect_invalid_l_p(0.1, 0.5, "p", "0.5"); }

TEST(SoftTopkArguments, NanPThrowsNamingP) { expect_invalid_l_p(0.1, std::nan(""), "p", ""); }

TEST(SoftTopkArguments, SizeNotMultipleOfNThrowsNamingXOrN) {
  for_both_ops([](auto op) {
    std::vector<double> out(kX.size());
    expect_invalid([&] { op(kX, 2, 1, out, {}); }, {"x", "n"}, "");
  });
}

TEST(SoftTopkArguments, ZeroNWithNonEmptyXThrowsNamingXOrN) {
  for_both_ops([](auto op) {
    std::vector<double> out(kX.size());
    expect_invalid([&] { op(kX, 0, 0, out, {}); }, {"x", "n"}, "");
  });
}

TEST(SoftTopkArguments, OutSizeMismatchThrowsNamingOut) {
  for_both_ops([](auto op) {
    std::vector<double> out(kX.size() + 1);
    expect_invalid([&] { op(kX, 5, 2, out, {}); }, {"out"}, "");
  });
}

TEST(SoftTopkArguments, ConvenienceKGreaterThanNThrowsNamingK) {
  expect_invalid([] { sparsetopk::soft_topk_mask(kX, 9); }, {"k"}, "9");
  expect_invalid([] { sparsetopk::soft_topk_mag(kX, 9); }, {"k"}, "9");
}

}  // namespace
