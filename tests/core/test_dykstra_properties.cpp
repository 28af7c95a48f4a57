// Dykstra's algorithm for p = 2 (SPEC.md, "Dykstra's algorithm (p = 2)"),
// written with the implementation (test_dykstra.cpp holds the spec tests):
// agreement with the exact solver (Solver::pav) and how it improves with the
// iteration count, bitwise agreement with a plain whole-chain Dykstra (the
// library iterates only where entries can move), exactness when there is
// nothing to project, output ranges, the derivative state read off its
// solution, and error messages naming the argument and its value.

#include <sparsetopk/sparsetopk.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace {

using stk_test::Saved;
using sparsetopk::DykstraOptions;
using sparsetopk::InvalidArgument;
using sparsetopk::SoftTopkOptions;
using sparsetopk::Solver;

enum class Op { mask, mag };

sparsetopk::Form form(Op op) { return op == Op::mask ? sparsetopk::Form::mask : sparsetopk::Form::magnitude; }

std::vector<double> normal_batch(std::size_t size, unsigned seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> x(size);
  for (double& v : x) v = normal(rng);
  return x;
}

DykstraOptions dykstra_options(double l, std::size_t iterations) {
  DykstraOptions o;
  o.l = l;
  o.iterations = iterations;
  return o;
}

template <class T>
std::vector<T> dykstra(Op op, const std::vector<T>& x, std::size_t n, std::size_t k, double l, std::size_t iterations,
                       Saved* saved = nullptr) {
  std::vector<T> out(x.size());
  // the state is that of p = 2 for the derivatives
  SoftTopkOptions exact_options;
  exact_options.l = l;
  exact_options.p = 2.0;
  const std::span<sparsetopk::RowState> state =
      saved ? saved->prepare(x.size(), n, exact_options) : std::span<sparsetopk::RowState>();
  if (op == Op::mask)
    sparsetopk::soft_topk_mask_dykstra<T>(x, n, k, out, dykstra_options(l, iterations), state);
  else
    sparsetopk::soft_topk_mag_dykstra<T>(x, n, k, out, dykstra_options(l, iterations), state);
  return out;
}

std::vector<double> exact(Op op, const std::vector<double>& x, std::size_t n, std::size_t k, double l,
                          Saved* saved = nullptr) {
  return stk_test::soft(form(op), x, n, k, l, 2.0, saved, nullptr, Solver::pav);
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// Plain Dykstra on the whole sorted chain, in natural order, as SPEC.md states
// it, followed by the output map (entries never moved are singleton blocks).
// Same arithmetic as the library, which iterates only where entries can move.
std::vector<double> reference_row(Op op, const std::vector<double>& x, std::size_t k, double l,
                                  std::size_t iterations) {
  const std::size_t n = x.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  auto key = [&](std::size_t i) { return op == Op::mask ? x[i] : std::abs(x[i]); };
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) > key(b); });
  std::vector<double> s(n), a(n, 1.0), z(n);
  for (std::size_t j = 0; j < n; ++j) {
    s[j] = key(order[j]);
    const double w = j < k ? 1.0 : 0.0;
    if (op == Op::mask) {
      z[j] = s[j] - l * w;
    } else {
      a[j] = 1.0 + l * w;
      z[j] = s[j] / a[j];
    }
  }
  std::vector<double> v = z, p(n, 0.0), q(n, 0.0);
  auto project = [&](std::size_t first, std::vector<double>& corr) {
    for (std::size_t i = first; i + 1 < n; i += 2) {
      const double tb = v[i] + corr[i], tc = v[i + 1] + corr[i + 1];
      const double mean = op == Op::mask ? 0.5 * (tb + tc) : tb + (tc - tb) * (a[i + 1] / (a[i] + a[i + 1]));
      v[i] = std::max(tb, mean);
      v[i + 1] = std::min(tc, mean);
      corr[i] = tb - v[i];
      corr[i + 1] = tc - v[i + 1];
    }
  };
  for (std::size_t it = 0; it < iterations; ++it) {
    project(0, p);
    project(1, q);
  }
  std::vector<double> out(n);
  for (std::size_t j = 0; j < n; ++j) {
    const std::size_t i = order[j];
    if (op == Op::mask)
      out[i] = v[j] == z[j] ? (j < k ? 1.0 : 0.0) : std::clamp((s[j] - v[j]) / l, 0.0, 1.0);
    else
      out[i] = v[j] == z[j] ? (j < k ? x[i] : 0.0)
                            : std::copysign(std::min((1.0 + l) / l * std::max(s[j] - v[j], 0.0), s[j]), x[i]);
  }
  return out;
}

class DykstraPropertiesBothOps : public ::testing::TestWithParam<Op> {};
INSTANTIATE_TEST_SUITE_P(Ops, DykstraPropertiesBothOps, ::testing::Values(Op::mask, Op::mag),
                         [](const auto& info) { return info.param == Op::mask ? "mask" : "mag"; });

TEST_P(DykstraPropertiesBothOps, AgreesWithExactSolverWithin1e6After10000IterationsForSmallRows) {
  const Op op = GetParam();
  unsigned seed = 1;
  for (std::size_t n = 1; n <= 16; ++n)
    for (std::size_t k = 0; k <= n; ++k)
      for (double l : {0.05, 0.3, 1.0, 3.0}) {
        const std::size_t rows = 8;
        const auto x = normal_batch(rows * n, seed++);
        const auto approx = dykstra(op, x, n, k, l, 10000);
        EXPECT_LE(max_abs_diff(approx, exact(op, x, n, k, l)), 1e-6) << "n = " << n << ", k = " << k << ", l = " << l;
      }
}

TEST_P(DykstraPropertiesBothOps, ErrorShrinksAsIterationsGrow) {
  const Op op = GetParam();
  const std::size_t n = 64, k = 8, rows = 32;
  const double l = 1.0;
  const auto x = normal_batch(rows * n, 7);
  const auto reference = exact(op, x, n, k, l);
  std::vector<double> errors;
  for (std::size_t iterations : {10, 100, 1000, 10000})
    errors.push_back(max_abs_diff(dykstra(op, x, n, k, l, iterations), reference));
  EXPECT_GT(errors[0], errors[1]);
  EXPECT_GT(errors[1], errors[2]);
  EXPECT_GE(errors[2], errors[3]);
  EXPECT_LT(errors[3], 1e-9);
}

TEST_P(DykstraPropertiesBothOps, MatchesPlainDykstraOnTheWholeChain) {
  // The library iterates only on the window the iterations can reach; the
  // result must be bitwise that of iterating on every pair of the row.
  const Op op = GetParam();
  for (std::size_t n : {7, 64, 301})
    for (std::size_t k : {std::size_t{1}, n / 3, n / 2, n - 1})
      for (std::size_t iterations : {1, 3, 10, 40}) {
        const auto x = normal_batch(n, static_cast<unsigned>(n * 1000 + k * 10 + iterations), 0.2);
        const auto out = dykstra(op, x, n, k, 0.5, iterations);
        const auto expected = reference_row(op, x, k, 0.5, iterations);
        for (std::size_t i = 0; i < n; ++i)
          ASSERT_EQ(out[i], expected[i]) << "n = " << n << ", k = " << k << ", iterations = " << iterations
                                         << ", i = " << i;
      }
}

TEST_P(DykstraPropertiesBothOps, ExactWhenTheSortedProblemIsAlreadyIsotonic) {
  // A gap around the k-th entry wider than the regularization leaves z
  // non-increasing: every block is a singleton, at any iteration count.
  const Op op = GetParam();
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> top(10.0, 20.0), rest(-5.0, 5.0);
  std::bernoulli_distribution negative(0.5);
  const double l = 0.5;  // mask: gap > l; magnitude: 10 / (1 + l) > 5
  for (std::size_t n : {1, 2, 5, 16, 100})
    for (std::size_t k = 0; k <= n; k += std::max<std::size_t>(1, n / 4)) {
      std::vector<double> x(n);
      for (std::size_t i = 0; i < n; ++i) {
        x[i] = i < k ? top(rng) : rest(rng);
        if (op == Op::mag && negative(rng)) x[i] = -x[i];
      }
      std::shuffle(x.begin(), x.end(), rng);
      const auto expected = exact(op, x, n, k, l);
      const auto hard = op == Op::mask ? sparsetopk::hard_topk_mask(x, k) : sparsetopk::hard_topk_mag(x, k);
      for (std::size_t iterations : {1, 10, 1000}) {
        const auto out = dykstra(op, x, n, k, l, iterations);
        EXPECT_EQ(out, expected) << "n = " << n << ", k = " << k;
        EXPECT_EQ(out, hard) << "n = " << n << ", k = " << k;
      }
    }
}

TEST(DykstraProperties, MaskStaysInUnitIntervalAndSumsToKAtAnyIterationCount) {
  const std::size_t n = 200, rows = 16;
  const auto x = normal_batch(rows * n, 11);
  for (std::size_t k : {1, 20, 100, 199})
    for (double l : {0.1, 1.0})
      for (std::size_t iterations : {1, 3, 10, 100}) {
        const auto out = dykstra(Op::mask, x, n, k, l, iterations);
        for (std::size_t r = 0; r < rows; ++r) {
          double sum = 0.0;
          for (std::size_t i = 0; i < n; ++i) {
            const double y = out[r * n + i];
            ASSERT_GE(y, 0.0);
            ASSERT_LE(y, 1.0);
            sum += y;
          }
          EXPECT_NEAR(sum, static_cast<double>(k), 1e-9) << "k = " << k << ", l = " << l;
        }
      }
}

TEST(DykstraProperties, MagnitudeShrinksTowardZeroAndKeepsSigns) {
  const std::size_t n = 200, rows = 16;
  const auto x = normal_batch(rows * n, 12);
  for (std::size_t k : {1, 20, 100})
    for (std::size_t iterations : {1, 10, 100}) {
      const auto out = dykstra(Op::mag, x, n, k, 0.3, iterations);
      for (std::size_t i = 0; i < x.size(); ++i) {
        ASSERT_LE(std::abs(out[i]), std::abs(x[i]));
        ASSERT_GE(out[i] * x[i], 0.0);
      }
    }
}

TEST(DykstraProperties, EdgeValuesOfK) {
  const auto x = normal_batch(10, 5);
  EXPECT_EQ(sparsetopk::soft_topk_mask_dykstra(x, 0), std::vector<double>(10, 0.0));
  EXPECT_EQ(sparsetopk::soft_topk_mask_dykstra(x, 10), std::vector<double>(10, 1.0));
  EXPECT_EQ(sparsetopk::soft_topk_mag_dykstra(x, 0), std::vector<double>(10, 0.0));
  EXPECT_EQ(sparsetopk::soft_topk_mag_dykstra(x, 10), x);
  EXPECT_EQ(sparsetopk::soft_topk_mask_dykstra({2.5}, 1), std::vector<double>{1.0});
  EXPECT_TRUE(sparsetopk::soft_topk_mask_dykstra({}, 0).empty());
}

TEST_P(DykstraPropertiesBothOps, StateForDerivativesMatchesExactOnceConverged) {
  const Op op = GetParam();
  unsigned seed = 100;
  for (std::size_t n : {2, 5, 9, 16})
    for (std::size_t k = 1; k < n; ++k)
      for (double l : {0.2, 1.0}) {
        const std::size_t rows = 6;
        const auto x = normal_batch(rows * n, seed++);
        Saved approx_blocks, exact_blocks;
        dykstra(op, x, n, k, l, 10000, &approx_blocks);
        exact(op, x, n, k, l, &exact_blocks);
        for (std::size_t r = 0; r < rows; ++r) {
          EXPECT_EQ(stk_test::band_indices(form(op), approx_blocks, x, r),
                    stk_test::band_indices(form(op), exact_blocks, x, r))
              << "n = " << n << ", k = " << k << ", l = " << l << ", row " << r;
          EXPECT_NEAR(approx_blocks.state[r].gamma, exact_blocks.state[r].gamma, 1e-9);
          EXPECT_EQ(approx_blocks.state[r].block_weight, exact_blocks.state[r].block_weight);
          for (const auto& entry : stk_test::band(form(op), approx_blocks, x, r)) EXPECT_DOUBLE_EQ(entry.c, 1.0 / l);
        }
        const auto g = normal_batch(rows * n, seed++);
        const auto vjp_approx = stk_test::vjp(form(op), approx_blocks, x, g);
        const auto vjp_exact = stk_test::vjp(form(op), exact_blocks, x, g);
        EXPECT_LE(max_abs_diff(vjp_approx, vjp_exact), 1e-9) << "n = " << n << ", k = " << k << ", l = " << l;
      }
}

TEST_P(DykstraPropertiesBothOps, VjpMatchesFiniteDifferencesOfTheDykstraForwardOnceConverged) {
  const Op op = GetParam();
  const std::size_t n = 12, k = 4;
  const double l = 0.8, h = 1e-6;
  const auto x = normal_batch(n, 21);
  const auto g = normal_batch(n, 22);
  Saved blocks;
  dykstra(op, x, n, k, l, 20000, &blocks);
  const auto vjp = stk_test::vjp(form(op), blocks, x, g);
  for (std::size_t i = 0; i < n; ++i) {
    auto plus = x, minus = x;
    plus[i] += h;
    minus[i] -= h;
    const auto fp = dykstra(op, plus, n, k, l, 20000), fm = dykstra(op, minus, n, k, l, 20000);
    double directional = 0.0;
    for (std::size_t j = 0; j < n; ++j) directional += g[j] * (fp[j] - fm[j]) / (2 * h);
    EXPECT_NEAR(vjp[i], directional, 1e-5) << "i = " << i;
  }
}

TEST(DykstraProperties, FloatAgreesWithDouble) {
  const std::size_t n = 50, k = 7, rows = 4;
  const auto x = normal_batch(rows * n, 31);
  const std::vector<float> xf(x.begin(), x.end());
  for (Op op : {Op::mask, Op::mag}) {
    const auto outf = dykstra(op, xf, n, k, 0.3, 300);
    const auto outd = dykstra(op, std::vector<double>(xf.begin(), xf.end()), n, k, 0.3, 300);
    for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(outf[i], outd[i], 1e-6);
  }
}

TEST(DykstraProperties, ResultsDoNotDependOnTheThreadCount) {
  stk_test::ThreadCountGuard guard;
  const std::size_t n = 1024, k = 30, rows = 64;
  const auto x = normal_batch(rows * n, 41);
  for (Op op : {Op::mask, Op::mag}) {
    sparsetopk::set_num_threads(1);
    Saved one, two;
    const auto out1 = dykstra(op, x, n, k, 0.2, 50, &one);
    sparsetopk::set_num_threads(2);
    const auto out2 = dykstra(op, x, n, k, 0.2, 50, &two);
    EXPECT_EQ(out1, out2);
    ASSERT_EQ(one.rows(), rows);
    for (std::size_t r = 0; r < rows; ++r)
      EXPECT_TRUE(stk_test::same_bytes(std::span(one.state).subspan(r, 1), std::span(two.state).subspan(r, 1)))
          << "row " << r;
  }
}

TEST(DykstraProperties, NonFiniteRowGivesNaNAndLeavesOtherRowsAlone) {
  const std::size_t n = 6, k = 2;
  auto x = normal_batch(3 * n, 51);
  x[n + 2] = std::numeric_limits<double>::infinity();
  for (Op op : {Op::mask, Op::mag}) {
    Saved blocks;
    const auto out = dykstra(op, x, n, k, 0.5, 1000, &blocks);
    for (std::size_t i = n; i < 2 * n; ++i) EXPECT_TRUE(std::isnan(out[i]));
    EXPECT_TRUE(std::isnan(blocks.state[1].gamma));
    const auto expected = exact(op, x, n, k, 0.5);
    for (std::size_t i : {std::size_t{0}, std::size_t{1}, 2 * n, 2 * n + 3}) EXPECT_NEAR(out[i], expected[i], 1e-9);
  }
}

template <class Fn>
std::string message_of(Fn&& fn) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "(no InvalidArgument thrown)";
}

TEST(DykstraProperties, RejectsBadArgumentsNamingThem) {
  const std::vector<double> x = {1, 2, 3, 4, 5, 6};
  std::vector<double> out(6);
  auto mask = [&](std::size_t n, std::size_t k, double l, std::size_t iterations, std::size_t out_size = 6) {
    std::vector<double> o(out_size);
    sparsetopk::soft_topk_mask_dykstra<double>(x, n, k, o, dykstra_options(l, iterations));
  };
  std::string m = message_of([&] { mask(3, 1, 0.0, 10); });
  EXPECT_TRUE(stk_test::names_word(m, "l")) << m;
  EXPECT_NE(m.find("0"), std::string::npos) << m;
  m = message_of([&] { mask(3, 1, -1.0, 10); });
  EXPECT_TRUE(stk_test::names_word(m, "l") && m.find("-1") != std::string::npos) << m;
  m = message_of([&] { mask(3, 1, std::numeric_limits<double>::quiet_NaN(), 10); });
  EXPECT_TRUE(stk_test::names_word(m, "l")) << m;
  m = message_of([&] { mask(3, 1, 0.1, 0); });
  EXPECT_TRUE(stk_test::names_word(m, "iterations") && m.find("0") != std::string::npos) << m;
  m = message_of([&] { mask(3, 4, 0.1, 10); });
  EXPECT_TRUE(stk_test::names_word(m, "k") && m.find("4") != std::string::npos) << m;
  m = message_of([&] { mask(4, 1, 0.1, 10); });
  EXPECT_TRUE(stk_test::names_word(m, "n") && m.find("4") != std::string::npos) << m;
  m = message_of([&] { mask(3, 1, 0.1, 10, 5); });
  EXPECT_TRUE(stk_test::names_word(m, "out") && m.find("5") != std::string::npos) << m;
  m = message_of([&] { sparsetopk::soft_topk_mag_dykstra<double>(x, 3, 1, out, dykstra_options(-2.0, 10)); });
  EXPECT_TRUE(stk_test::names_word(m, "l") && m.find("-2") != std::string::npos) << m;
}

}  // namespace
