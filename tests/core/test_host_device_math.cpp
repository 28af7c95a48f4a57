// The per-row math the CUDA kernels share with the core (SPARSETOPK_HOST_DEVICE
// functions of src/core/row: regularizer, block equation, root finder, band
// solver, Jacobian entries, Dykstra's chain), tested here on the CPU, where it
// is the core's own code.

#include <gtest/gtest.h>

#include <sparsetopk/dykstra.hpp>
#include <sparsetopk/topk.hpp>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "band_solve.hpp"
#include "dykstra_chain.hpp"
#include "jacobian.hpp"
#include "test_support.hpp"

namespace sparsetopk::detail {
namespace {

#define SPARSETOPK_TEXT(x) #x
#define SPARSETOPK_EXPANDED(x) SPARSETOPK_TEXT(x)

constexpr std::array<double, 4> kPowers = {4.0 / 3.0, 2.0, 1.5, 3.0};

TEST(HostDeviceMath, TheMarkerIsEmptyInThePlainBuild) {
  EXPECT_STREQ(SPARSETOPK_EXPANDED(SPARSETOPK_HOST_DEVICE), "");
}

TEST(HostDeviceMath, InversePowerUndoesPower) {
  for (double p : kPowers) {
    const Regularizer regularizer(p);
    for (double u : {1e-3, 0.25, 1.0, 7.5}) EXPECT_NEAR(regularizer.inverse_power(regularizer.power(u)), u, 1e-14 * u);
  }
}

TEST(HostDeviceMath, SlopeIsTheDerivativeOfPower) {
  for (double p : kPowers) {
    const Regularizer regularizer(p);
    for (double u : {0.3, 1.0, 2.0}) {
      const double h = 1e-6 * u;
      const double numeric = (regularizer.power(u + h) - regularizer.power(u - h)) / (2.0 * h);
      EXPECT_NEAR(regularizer.slope(u), numeric, 1e-7 * std::abs(numeric)) << "p = " << p << ", u = " << u;
    }
  }
}

TEST(HostDeviceMath, JacobianWeightIsCappedAt1e280) {
  const Regularizer regularizer(1.01);  // slope ~ 100 u^99: overflows near 0
  EXPECT_EQ(jacobian_weight(regularizer, 1e300, 1.0), 1e280);
  EXPECT_DOUBLE_EQ(jacobian_weight(Regularizer(2.0), 0.5, 0.25), 4.0);  // c = 1/l for p = 2
}

TEST(HostDeviceMath, DepressedCubicRootSolvesIt) {
  for (double P : {0.0, 1e-8, 1.0, 3e4})
    for (double Q : {-5.0, -1e-9, 0.0, 2.0, 1e6}) {
      const double t = solve_depressed_cubic(P, Q);
      EXPECT_NEAR(t * t * t + P * t, Q, 1e-12 * (std::abs(Q) + P * std::abs(t) + 1e-300)) << P << " " << Q;
    }
}

// Over 2e5 random (P, Q) from 1e-150 to 1e150 (and P = 0): within 2 ulps of
// the root refined in long double (measured worst: 1.7 ulps).
TEST(HostDeviceMath, DepressedCubicRootIsWithinTwoUlpsOverTheWholeRange) {
  std::mt19937_64 generator(7);
  std::uniform_real_distribution<double> decade(-150.0, 150.0), unit(0.0, 1.0);
  for (int i = 0; i < 200000; ++i) {
    const double P = unit(generator) < 0.05 ? 0.0 : std::pow(10.0, decade(generator));
    const double Q = std::pow(10.0, decade(generator)) * (unit(generator) < 0.5 ? -1.0 : 1.0);
    const double t = solve_depressed_cubic(P, Q);
    long double root = t;
    for (int step = 0; step < 6; ++step)
      root -= (root * root * root + P * root - Q) / (3 * root * root + P);
    ASSERT_LE(std::abs(static_cast<long double>(t) - root), 2 * DBL_EPSILON * std::abs(root)) << P << " " << Q;
  }
}

// The seed bound of the p = 4/3 window (window_bounds): above cbrt(x), at most
// 7.4% above it, for normal x of every exponent; libm's cbrt elsewhere.
TEST(HostDeviceMath, CbrtUpperBoundLiesJustAboveTheCubeRoot) {
  for (int exponent = -1022; exponent <= 1023; ++exponent)
    for (double mantissa = 1.0; mantissa < 2.0; mantissa += 1.0 / 512.0) {
      const double x = std::ldexp(mantissa, exponent), root = std::cbrt(x), bound = cbrt_upper_bound(x);
      ASSERT_GE(bound, root) << x;
      ASSERT_LE(bound, 1.074 * root) << x;
    }
  for (double x : {0.0, -0.0, 1e-310, DBL_TRUE_MIN, HUGE_VAL}) {
    EXPECT_EQ(cbrt_upper_bound(x), std::cbrt(x)) << x;
    EXPECT_EQ(std::signbit(cbrt_upper_bound(x)), std::signbit(x)) << x;
  }
}

// PAV leaves the value g of a top singleton (magnitude, p = 4/3) unsolved
// while deferred_value_below decides the violation test without it: its
// answers agree with the solved g, "not below" only beyond violates()'s
// rounding, and it is undecided only within 2e-12 s of g.
TEST(HostDeviceMath, DeferredSingletonValueTestAgreesWithTheSolvedValue) {
  std::mt19937_64 generator(11);
  std::uniform_real_distribution<double> decade(-6.0, 6.0), unit(0.0, 1.0);
  int undecided = 0;
  for (int i = 0; i < 100000; ++i) {
    const double s = std::pow(10.0, decade(generator)), l = s * std::pow(10.0, decade(generator) / 2.0);
    const BlockEquation equation(Form::magnitude, l, 4.0 / 3.0);
    const double g = equation.solve(std::span<const double>(&s, 1), BlockMoments::single(s, 1.0));
    // gamma anywhere around g, and within a few ulps to 1e-9 of it
    const double offset = (unit(generator) < 0.5 ? -1.0 : 1.0) * std::pow(10.0, -16.0 + 15.0 * unit(generator));
    const double gamma = unit(generator) < 0.5 ? g * (1.0 + offset) : s * unit(generator);
    const int below = deferred_value_below(equation, s, gamma);
    if (below > 0) {
      ASSERT_LT(g, gamma) << s << " " << l << " " << gamma;
    }
    if (below < 0) {
      ASSERT_GT(g - gamma, 16.0 * DBL_EPSILON * s) << s << " " << l << " " << gamma;
    }
    if (below == 0) {
      ++undecided;
      ASSERT_LE(std::abs(g - gamma), 2e-12 * s) << s << " " << l << " " << gamma;
    }
  }
  EXPECT_GT(undecided, 0);  // the near cases were reached
}

TEST(HostDeviceMath, MergedMomentsEqualTheDirectOnes) {
  const std::vector<double> s = {3.0, 2.5, 2.5, 1.0, -0.5};
  BlockMoments merged = BlockMoments::single(s[0], 1.0);
  for (std::size_t i = 1; i < s.size(); ++i) merged.merge(BlockMoments::single(s[i], i < 2 ? 1.0 : 0.0));
  const double mean = std::accumulate(s.begin(), s.end(), 0.0) / 5.0;
  double m2 = 0.0, m3 = 0.0;
  for (double v : s) m2 += (v - mean) * (v - mean), m3 += (v - mean) * (v - mean) * (v - mean);
  EXPECT_EQ(merged.count, 5.0);
  EXPECT_EQ(merged.weight, 2.0);
  EXPECT_NEAR(merged.mean, mean, 1e-15);
  EXPECT_NEAR(merged.m2 * merged.unit * merged.unit, m2, 1e-13);
  EXPECT_NEAR(merged.m3 * merged.unit * merged.unit * merged.unit, m3, 1e-13);
}

TEST(HostDeviceMath, BlockValueZeroesTheBlockResidual) {
  const std::vector<double> s = {2.0, 1.7, 1.1, 0.4};
  for (Form form : {Form::mask, Form::magnitude})
    for (double p : kPowers) {
      const BlockEquation equation(form, 0.5, p);
      BlockMoments m = BlockMoments::single(s[0], 1.0);
      for (std::size_t i = 1; i < s.size(); ++i) m.merge(BlockMoments::single(s[i], i < 2 ? 1.0 : 0.0));
      const double gamma = equation.solve(s, m);
      double slope = 0.0;
      EXPECT_NEAR(equation.residual(s, m.weight, gamma, &slope), 0.0, 1e-12) << "p = " << p;
    }
}

TEST(HostDeviceMath, SafeguardedNewtonFindsTheRoot) {
  // f(x) = 2 - x^2, decreasing on [0, 4]
  const double root = find_decreasing_root(
      [](double x, double* slope) {
        *slope = -2.0 * x;
        return 2.0 - x * x;
      },
      0.0, 4.0, 3.0);
  EXPECT_NEAR(root, std::sqrt(2.0), 4e-16 * std::sqrt(2.0));
}

TEST(HostDeviceMath, WindowBoundsEncloseTheKthAndNextKeys) {
  for (Form form : {Form::mask, Form::magnitude})
    for (double p : kPowers) {
      const BlockEquation equation(form, 0.1, p);
      double above = 0.0, below = 0.0;
      window_bounds(equation, 1.5, 1.2, above, below);
      EXPECT_GT(above, 1.5);
      EXPECT_LT(below, 1.2);
    }
}

TEST(HostDeviceMath, TopkWeightsAreOnesThenZeros) {
  const TopkWeights w{2};
  EXPECT_EQ(w[0], 1.0);
  EXPECT_EQ(w[1], 1.0);
  EXPECT_EQ(w[2], 0.0);
}


// The band solver on a whole sorted row, the way the CUDA kernels call it for
// k = 0 or k = n and the core calls it for Solver::pav: outputs, band and c.
struct BandRun {
  std::vector<double> out, c;
  BandState state;
};

BandRun run_band(bool magnitude, const std::vector<double>& x, std::size_t k, double l, double p, Solver solver) {
  const std::size_t n = x.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  const auto key = [&](std::size_t i) { return magnitude ? std::abs(x[i]) : x[i]; };
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) > key(b); });
  std::vector<double> s(n);
  for (std::size_t j = 0; j < n; ++j) s[j] = key(order[j]);
  const RowWindow window{n, k, kInf, -kInf};
  const BlockEquation equation(magnitude ? Form::magnitude : Form::mask, l, p);
  std::vector<PavBlock> stack(n);
  BlockStack blocks{stack.data()};
  BandRun run{std::vector<double>(n), std::vector<double>(n, -1.0), {}};
  const auto index_of = [&](std::size_t j) { return order[j]; };
  const auto append = [&](std::size_t i, double c) { run.c[i] = c; };
  RowState near;  // (the near entries' offsets: not compared here)
  const StraddlingBlock block =
      magnitude ? solve_mag_band(window, s.data(), index_of, equation, solver, blocks, x.data(), run.out.data(), true,
                                 append, near)
                : solve_mask_band(window, s.data(), index_of, equation, solver, blocks, run.out.data(), true, append,
                                  near);
  run.state = band_state(block, window, s.data());
  return run;
}

TEST(HostDeviceMath, BandSolverWithAFixedStackIsTheCoresPav) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  for (bool magnitude : {false, true})
    for (double p : kPowers)
      for (int trial = 0; trial < 5; ++trial) {
        std::vector<double> x(23);
        for (double& v : x) v = trial == 4 ? std::round(2.0 * normal(rng)) / 2.0 : normal(rng);  // ties in the last
        const std::size_t k = 1 + static_cast<std::size_t>(trial) * 4;
        const Form form = magnitude ? Form::magnitude : Form::mask;
        stk_test::Saved saved;
        const std::vector<double> expected = stk_test::soft(form, x, x.size(), k, 0.3, p, &saved, nullptr, Solver::pav);
        // the core's band, its c_i recomputed from x and the state
        const std::vector<double> c = stk_test::dense_band(form, saved, x);
        const BandRun run = run_band(magnitude, x, k, 0.3, p, Solver::pav);
        for (std::size_t i = 0; i < x.size(); ++i) {
          EXPECT_EQ(std::memcmp(&run.out[i], &expected[i], sizeof(double)), 0) << "out " << i << " p = " << p;
          // the same band; its c_i agree to the rounding of u_i = s_i - gamma
          // (the solver reads a near entry's u_i back from its output, the core
          // recomputes it from x_i), which c_i ~ u_i^(q-2) scales by |q - 2|
          EXPECT_EQ(run.c[i] == -1.0, c[i] == -1.0) << "band " << i << " p = " << p;
          const double key = magnitude ? std::abs(x[i]) : x[i], gamma = saved.state[0].gamma;
          const double q = p / (p - 1), u_error = 4 * DBL_EPSILON * (std::abs(key) + std::abs(gamma));
          const double tol = 1e-13 + std::abs(q - 2) * u_error / std::abs(key - gamma);
          if (c[i] != -1.0) {
            EXPECT_NEAR(run.c[i], c[i], tol * std::abs(c[i])) << "c " << i << " p = " << p;
          }
        }
        EXPECT_EQ(run.state.gamma, saved.state[0].gamma);
        EXPECT_EQ(run.state.block_weight, saved.state[0].block_weight);
        EXPECT_EQ(run.state.unchanged_from, saved.state[0].unchanged_from);
      }
}

// Dykstra's chain on one sorted row over fixed caller memory (no vector in
// sight, as a device would run it): the core's outputs and state, bitwise.
TEST(HostDeviceMath, DykstraRowOnCallerMemoryIsTheCores) {
  constexpr std::size_t n = 29;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  for (Form form : {Form::mask, Form::magnitude})
    for (std::size_t iterations : {std::size_t{1}, std::size_t{3}, std::size_t{40}})
      for (std::size_t k : {std::size_t{0}, std::size_t{1}, std::size_t{9}, n - 1, n}) {
        std::array<double, n> x;
        for (double& v : x) v = std::round(4.0 * normal(rng)) / 4.0;  // ties
        std::array<SortedEntry, n> sorted;
        for (std::size_t i = 0; i < n; ++i) sorted[i] = {sort_key(form, x[i]), i};
        std::sort(sorted.begin(), sorted.end(), descending);
        std::array<double, n> z, a, out;
        std::array<double, dykstra_chain_doubles(n)> chain_memory;
        DykstraScratch scratch{z, a, DykstraChain::over(chain_memory.data(), widest_window(n, iterations))};
        RowState state;
        dykstra_row<double>(form, sorted, x, k, 0.3, iterations, scratch, out, &state);

        const std::vector<double> row(x.begin(), x.end());
        std::vector<double> expected(n);
        RowState core;
        const DykstraOptions options{0.3, iterations};
        if (form == Form::mask) soft_topk_mask_dykstra<double>(row, n, k, expected, options, {&core, 1});
        else soft_topk_mag_dykstra<double>(row, n, k, expected, options, {&core, 1});
        EXPECT_EQ(std::memcmp(out.data(), expected.data(), n * sizeof(double)), 0) << "k = " << k;
        EXPECT_EQ(std::memcmp(&state, &core, sizeof(RowState)), 0) << "k = " << k;
      }
}

TEST(HostDeviceMath, MaskJacobianEntriesSumToZero) {
  // J_B 1 = c - c sum(c) / sum(c) = 0, so the entries of J v sum to 0 for any v
  const std::vector<double> c = {0.5, 2.0, 1.25}, v = {0.3, -1.0, 4.0};
  const double sum = 3.75;
  double spread = 0.0;
  for (std::size_t j = 0; j < c.size(); ++j) spread += c[j] * (v[j] - v[1]);
  double total = 0.0;
  for (std::size_t a = 0; a < c.size(); ++a) total += mask_product(c[a], v[a], v[1], sum, spread);
  EXPECT_NEAR(total, 0.0, 1e-14);
}

TEST(HostDeviceMath, MagnitudeJacobianIsIdentityWithoutWeights) {
  // c = 0 on the block: r = u + pow(u/l, q-1) moves like t itself (dr = t), for J and J^T
  for (bool transpose : {false, true}) {
    const double t_d = 0.7, rest = magnitude_rest(transpose, 1.0, 1.0, t_d, 0.0);
    EXPECT_DOUBLE_EQ(magnitude_product(transpose, 0.0, t_d, t_d, 1.0, rest), t_d);
  }
  EXPECT_EQ(sign(-2.0), -1.0);
  EXPECT_EQ(sign(0.0), 0.0);
}

}  // namespace
}  // namespace sparsetopk::detail
