// solve_isotonic (SPEC.md "Reduction") against an exhaustive reference, its
// block structure, the KKT conditions of the constrained problem, hand-computed
// values and argument validation.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sparsetopk/sparsetopk.hpp>
#include <string>
#include <vector>

#include "reference.hpp"
#include "test_support.hpp"

namespace {

using sparsetopk::Form;
using sparsetopk::solve_isotonic;

struct Case {
  std::vector<double> s, w;
  double l = 1, p = 2;
  Form form = Form::mask;
};

ref::Form to_ref(Form f) {
  return f == Form::mask ? ref::Form::mask : ref::Form::magnitude;
}

// s sorted non-increasing (ties possible); w non-increasing: either the 0/1
// top-k vector or general values (>= 0 for the magnitude form).
Case gen_case(Form form, std::size_t max_n = 12) {
  Case c;
  c.form = form;
  const auto n = static_cast<std::size_t>(*rc::gen::inRange<int>(1, static_cast<int>(max_n) + 1));
  c.s = stk_test::gen_row(n, -5, 5, 2000);
  std::sort(c.s.begin(), c.s.end(), std::greater<>());
  const bool topk_w = *rc::gen::arbitrary<bool>();
  if (topk_w) {
    const auto k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(n) + 1));
    c.w.assign(n, 0.0);
    std::fill(c.w.begin(), c.w.begin() + static_cast<std::ptrdiff_t>(k), 1.0);
  } else {
    const double lo = form == Form::mask ? -2.0 : 0.0;
    c.w = stk_test::gen_row(n, lo, 2.0, 400);
    std::sort(c.w.begin(), c.w.end(), std::greater<>());
  }
  c.l = *rc::gen::element(0.05, 0.2, 0.5, 1.0, 2.5);
  c.p = stk_test::gen_p();
  return c;
}

std::string describe(const Case& c) {
  return "s=" + stk_test::show(c.s) + " w=" + stk_test::show(c.w) + " l=" + std::to_string(c.l) +
         " p=" + std::to_string(c.p) + (c.form == Form::mask ? " mask" : " magnitude");
}

// Derivative of the objective term of entry i at value v, divided by a positive
// constant (1 for the mask form, l^(q-1) for the magnitude form).
double term_gradient(const Case& c, std::size_t i, double v) {
  const ref::Real q = ref::conjugate(c.p);
  const ref::Real r = ref::spow((ref::Real(c.s[i]) - v) / c.l, q - 1);
  if (c.form == Form::mask) return static_cast<double>(ref::Real(c.w[i]) - r);
  return static_cast<double>(ref::Real(c.w[i]) * v - r);
}

void check_matches_reference(Form form) {
  const Case c = gen_case(form);
  RC_LOG() << describe(c) << "\n";
  const auto sol = solve_isotonic(c.s, c.w, c.l, c.p, c.form);
  const auto expected = ref::isotonic_exhaustive(c.s, c.w, c.l, c.p, to_ref(c.form));
  RC_ASSERT(sol.v.size() == c.s.size());
  for (std::size_t i = 0; i < c.s.size(); ++i) {
    const double e = static_cast<double>(expected.v[i]);
    RC_LOG() << "i=" << i << " got " << sol.v[i] << " expected " << e << "\n";
    RC_ASSERT(std::fabs(sol.v[i] - e) <= 1e-9 * (1 + std::fabs(e)));
  }
}

// KKT of min sum_i f_i(v_i) s.t. v_1 >= ... >= v_n: with g_i = f_i'(v_i), the
// multipliers mu_j = g_1 + ... + g_j of the constraints v_j >= v_{j+1} must be
// >= 0, and 0 wherever the constraint is slack (v_j > v_{j+1}), in particular at
// every block end. Checked block by block from the library's blocks.
void check_kkt(Form form) {
  const Case c = gen_case(form);
  RC_LOG() << describe(c) << "\n";
  const auto sol = solve_isotonic(c.s, c.w, c.l, c.p, c.form);
  const std::size_t n = c.s.size();
  RC_ASSERT(sol.v.size() == n);
  for (std::size_t i = 0; i + 1 < n; ++i) RC_ASSERT(sol.v[i] >= sol.v[i + 1]);
  double scale = 1;
  for (std::size_t i = 0; i < n; ++i)
    scale +=
        std::fabs(term_gradient(c, i, sol.v[i])) + std::fabs(c.w[i]) * (1 + std::fabs(sol.v[i]));
  // For p > 2 the gradient term pow(u, q-1) is only Hoelder continuous at u = 0,
  // so a v correct to a few ulps can leave a residual of that size.
  const double tol =
      1e-9 * scale +
      static_cast<double>(n) *
          stk_test::holder_tol(c.p, c.l, stk_test::max_abs(sol.v) + stk_test::max_abs(c.s));
  double mu = 0;
  for (std::size_t i = 0; i < n; ++i) {
    mu += term_gradient(c, i, sol.v[i]);
    RC_LOG() << "mu_" << i << " = " << mu << "\n";
    RC_ASSERT(mu >= -tol);
    if (i + 1 == n || sol.v[i] > sol.v[i + 1]) RC_ASSERT(std::fabs(mu) <= tol);
  }
}

// ---- against the exhaustive reference ------------------------------------

STK_PROP(Isotonic, MaskFormMatchesExhaustiveReference, 100) {
  check_matches_reference(Form::mask);
}

STK_PROP(Isotonic, MagnitudeFormMatchesExhaustiveReference, 100) {
  check_matches_reference(Form::magnitude);
}

// ---- block structure -------------------------------------------------------

STK_PROP(Isotonic, BlocksPartitionAllPositionsInOrder, 100) {
  const Case c = gen_case(*rc::gen::element(Form::mask, Form::magnitude));
  const auto sol = solve_isotonic(c.s, c.w, c.l, c.p, c.form);
  RC_ASSERT(!sol.blocks.empty());
  std::size_t next = 0;
  for (const auto& b : sol.blocks) {
    RC_ASSERT(b.begin == next);
    RC_ASSERT(b.end > b.begin);
    RC_ASSERT(b.size() == b.end - b.begin);
    next = b.end;
  }
  RC_ASSERT(next == c.s.size());
}

STK_PROP(Isotonic, SolutionEqualsBlockValueInsideEachBlock, 100) {
  const Case c = gen_case(*rc::gen::element(Form::mask, Form::magnitude));
  const auto sol = solve_isotonic(c.s, c.w, c.l, c.p, c.form);
  for (const auto& b : sol.blocks) {
    RC_ASSERT(b.end <= sol.v.size());
    for (std::size_t i = b.begin; i < b.end; ++i) RC_ASSERT(sol.v[i] == b.value);
  }
}

STK_PROP(Isotonic, BlockValuesAreNonIncreasing, 100) {
  const Case c = gen_case(*rc::gen::element(Form::mask, Form::magnitude));
  const auto sol = solve_isotonic(c.s, c.w, c.l, c.p, c.form);
  for (std::size_t j = 0; j + 1 < sol.blocks.size(); ++j)
    RC_ASSERT(sol.blocks[j].value >= sol.blocks[j + 1].value);
  for (std::size_t i = 0; i + 1 < sol.v.size(); ++i) RC_ASSERT(sol.v[i] >= sol.v[i + 1]);
}

STK_PROP(Isotonic, EachBlockValueSolvesItsFirstOrderCondition, 100) {
  const Case c = gen_case(*rc::gen::element(Form::mask, Form::magnitude));
  const auto sol = solve_isotonic(c.s, c.w, c.l, c.p, c.form);
  for (const auto& b : sol.blocks) {
    double sum = 0, scale = 1;
    for (std::size_t i = b.begin; i < b.end; ++i) {
      const double g = term_gradient(c, i, b.value);
      sum += g;
      scale += std::fabs(g) + std::fabs(c.w[i]) * (1 + std::fabs(b.value));
    }
    const double holder =
        static_cast<double>(b.size()) *
        stk_test::holder_tol(c.p, c.l, stk_test::max_abs(c.s) + std::fabs(b.value));
    RC_ASSERT(std::fabs(sum) <= 1e-9 * scale + holder);
  }
}

// ---- optimality ------------------------------------------------------------

STK_PROP(Isotonic, MaskFormSatisfiesKkt, 100) { check_kkt(Form::mask); }

STK_PROP(Isotonic, MagnitudeFormSatisfiesKkt, 100) { check_kkt(Form::magnitude); }

STK_PROP(Isotonic, ObjectiveIsNoWorseThanPerturbedFeasiblePoints, 50) {
  const Case c = gen_case(*rc::gen::element(Form::mask, Form::magnitude));
  const auto sol = solve_isotonic(c.s, c.w, c.l, c.p, c.form);
  const auto f = to_ref(c.form);
  const ref::Real best = ref::objective(c.s, c.w, sol.v, c.l, c.p, f);
  // Move one block value up or down while staying feasible.
  for (std::size_t j = 0; j < sol.blocks.size(); ++j) {
    for (double delta : {-1e-3, 1e-3}) {
      auto v = sol.v;
      const auto& b = sol.blocks[j];
      const double nv = b.value + delta;
      if (j > 0 && nv > sol.blocks[j - 1].value) continue;
      if (j + 1 < sol.blocks.size() && nv < sol.blocks[j + 1].value) continue;
      for (std::size_t i = b.begin; i < b.end; ++i) v[i] = nv;
      const ref::Real other = ref::objective(c.s, c.w, v, c.l, c.p, f);
      RC_ASSERT(other >= best - 1e-12L * (1 + std::fabs(best)));
    }
  }
}

// ---- hand-computed values (p = 2: block means) ------------------------------

// The hand examples' problem: s = (3, 2.5, 1, 0), w = (1, 1, 0, 0), p = 2.
auto solve_hand_example(double l, Form form) {
  return solve_isotonic(std::vector<double>{3, 2.5, 1, 0}, std::vector<double>{1, 1, 0, 0}, l, 2.0, form);
}

void expect_solution(const std::vector<double>& v, const std::vector<double>& expected) {
  ASSERT_EQ(v.size(), expected.size());
  for (std::size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(v[i], expected[i], 1e-12) << i;
}

TEST(Isotonic, MaskFormP2HandValuesWithoutPooling) {
  // Unconstrained optimum v_i = s_i - l w_i = (2, 1.5, 1, 0) is already sorted.
  const auto sol = solve_hand_example(1.0, Form::mask);
  expect_solution(sol.v, {2, 1.5, 1, 0});
  EXPECT_EQ(sol.blocks.size(), 4u);
}

TEST(Isotonic, MaskFormP2HandValuesWithPooling) {
  // s - l w = (1, 0.5, 1, 0): positions 1 and 2 pool to their mean 0.75.
  const auto sol = solve_hand_example(2.0, Form::mask);
  expect_solution(sol.v, {1, 0.75, 0.75, 0});
  ASSERT_EQ(sol.blocks.size(), 3u);
  EXPECT_EQ(sol.blocks[1].begin, 1u);
  EXPECT_EQ(sol.blocks[1].end, 3u);
  EXPECT_NEAR(sol.blocks[1].value, 0.75, 1e-12);
}

TEST(Isotonic, MagnitudeFormP2HandValuesWithPooling) {
  // Singleton values s_i / (1 + l w_i) = (1, 5/6, 1, 0) for l = 2; positions 1
  // and 2 pool to sum(s) / (|B| + l W_B) = 3.5 / 4 = 0.875.
  expect_solution(solve_hand_example(2.0, Form::magnitude).v, {1, 0.875, 0.875, 0});
}

TEST(Isotonic, MagnitudeFormP2HandValuesWithoutPooling) {
  // l = 1: s_i / (1 + w_i) = (1.5, 1.25, 1, 0).
  expect_solution(solve_hand_example(1.0, Form::magnitude).v, {1.5, 1.25, 1, 0});
}

TEST(Isotonic, MaskFormP43SingletonIsShiftedByL) {
  // One entry, w = 1: ((s - v)/l)^3 = 1, so v = s - l.
  const auto sol = solve_isotonic(std::vector<double>{0.7}, std::vector<double>{1}, 0.25, 4.0 / 3.0,
                                  Form::mask);
  ASSERT_EQ(sol.v.size(), 1u);
  EXPECT_NEAR(sol.v[0], 0.45, 1e-12);
}

TEST(Isotonic, MaskFormP43PooledPairSolvesCubic) {
  // s = (1, 1), w = (1, 0), l = 1, q = 4: 2 (1 - g)^3 = 1, g = 1 - 2^(-1/3).
  const auto sol = solve_isotonic(std::vector<double>{1, 1}, std::vector<double>{1, 0}, 1.0,
                                  4.0 / 3.0, Form::mask);
  ASSERT_EQ(sol.v.size(), 2u);
  const double g = 1 - std::cbrt(0.5);
  EXPECT_NEAR(sol.v[0], g, 1e-12);
  EXPECT_NEAR(sol.v[1], g, 1e-12);
}

TEST(Isotonic, EmptyInputGivesEmptySolution) {
  const auto sol =
      solve_isotonic(std::vector<double>{}, std::vector<double>{}, 1.0, 2.0, Form::mask);
  EXPECT_TRUE(sol.v.empty());
  EXPECT_TRUE(sol.blocks.empty());
}

// ---- argument validation ---------------------------------------------------

// Expects InvalidArgument whose message names `name` (as a word) and contains `value`.
void expect_invalid(const std::function<void()>& call, const std::string& name,
                    const std::string& value) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected InvalidArgument naming " << name;
  } catch (const sparsetopk::InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_TRUE(stk_test::names_word(what, name))
        << "message does not name '" << name << "': " << what;
    if (!value.empty()) {
      EXPECT_NE(what.find(value), std::string::npos) << "message lacks '" << value << "': " << what;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

const std::vector<double> kS{3, 2, 1};
const std::vector<double> kW{1, 0, 0};

TEST(IsotonicArguments, UnsortedSThrowsNamingS) {
  expect_invalid(
      [] {
        solve_isotonic(std::vector<double>{1, 2, 0}, kW, 1.0, 2.0, Form::mask);
      },
      "s", "");
}

TEST(IsotonicArguments, IncreasingWThrowsNamingW) {
  expect_invalid(
      [] {
        solve_isotonic(kS, std::vector<double>{0, 0, 1}, 1.0, 2.0, Form::mask);
      },
      "w", "");
}

TEST(IsotonicArguments, SizeMismatchThrowsNamingW) {
  expect_invalid(
      [] {
        solve_isotonic(kS, std::vector<double>{1, 0}, 1.0, 2.0, Form::magnitude);
      },
      "w", "");
}

TEST(IsotonicArguments, ZeroLThrowsNamingL) {
  expect_invalid([] { solve_isotonic(kS, kW, 0.0, 2.0, Form::mask); }, "l", "0");
}

TEST(IsotonicArguments, NegativeLThrowsNamingLAndValue) {
  expect_invalid([] { solve_isotonic(kS, kW, -0.5, 2.0, Form::mask); }, "l", "-0.5");
}

TEST(IsotonicArguments, NanLThrowsNamingL) {
  expect_invalid([] { solve_isotonic(kS, kW, std::nan(""), 2.0, Form::mask); }, "l", "");
}

TEST(IsotonicArguments, POfOneThrowsNamingP) {
  expect_invalid([] { solve_isotonic(kS, kW, 1.0, 1.0, Form::mask); }, "p", "1");
}

TEST(IsotonicArguments, PBelowOneThrowsNamingPAndValue) {
  expect_invalid([] { solve_isotonic(kS, kW, 1.0, 0.5, Form::magnitude); }, "p", "0.5");
}

TEST(IsotonicArguments, NanPThrowsNamingP) {
  expect_invalid([] { solve_isotonic(kS, kW, 1.0, std::nan(""), Form::mask); }, "p", "");
}

TEST(IsotonicArguments, NanInSThrowsNamingS) {
  expect_invalid(
      [] {
        solve_isotonic(std::vector<double>{3, std::nan(""), 1}, kW, 1.0, 2.0, Form::mask);
      },
      "s", "");
}

TEST(IsotonicArguments, InfinityInSThrowsNamingS) {
  const double inf = std::numeric_limits<double>::infinity();
  expect_invalid(
      [&] {
        solve_isotonic(std::vector<double>{inf, 2, 1}, kW, 1.0, 2.0, Form::mask);
      },
      "s", "");
}

TEST(IsotonicArguments, NegativeWInMagnitudeFormThrowsNamingW) {
  // The magnitude problem is convex only for w >= 0 (isotonic.hpp).
  expect_invalid(
      [] {
        solve_isotonic(kS, std::vector<double>{1, 0, -0.5}, 1.0, 2.0, Form::magnitude);
      },
      "w", "-0.5");
}

TEST(IsotonicArguments, NanInWThrowsNamingW) {
  expect_invalid(
      [] {
        solve_isotonic(kS, std::vector<double>{1, std::nan(""), 0}, 1.0, 2.0, Form::mask);
      },
      "w", "");
}

}  // namespace
