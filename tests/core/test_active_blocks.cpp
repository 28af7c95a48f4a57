// The state saved by the soft forward passes for the derivatives
// (ActiveBlocks, topk.hpp): hand-computed values, the documented fallbacks,
// the unchanged / saturated split, and non-finite rows.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sparsetopk/sparsetopk.hpp>
#include <vector>

#include "reference.hpp"
#include "test_support.hpp"

namespace {

using sparsetopk::ActiveBlocks;
using sparsetopk::Solver;

const Solver kSolvers[] = {Solver::automatic, Solver::pav, Solver::threshold};

// x = (3, -2, 1.5, 0.2), k = 2, p = 2, l = 2 (mask): tau = -0.15, active {2, 3}
// with c = 1/l = 0.5, one top entry (index 2) in the block.
TEST(ActiveBlocks, MaskP2HandCaseHasHandValues) {
  for (Solver solver : kSolvers) {
    ActiveBlocks b;
    stk_test::mask(std::vector<double>{3, -2, 1.5, 0.2}, 4, 2, 2.0, 2.0, &b, nullptr, solver);
    ASSERT_EQ(b.rows(), 1u);
    EXPECT_EQ(b.n(), 4u);
    EXPECT_EQ(b.l(), 2.0);
    EXPECT_EQ(b.p(), 2.0);
    EXPECT_NEAR(b.gamma(0), -0.15, 1e-12);
    EXPECT_EQ(b.block_weight(0), 1.0);
    std::vector<std::size_t> idx(b.index(0).begin(), b.index(0).end());
    std::sort(idx.begin(), idx.end());
    EXPECT_EQ(idx, (std::vector<std::size_t>{2, 3}));
    for (double c : b.c(0)) EXPECT_NEAR(c, 0.5, 1e-12);
  }
}

// Magnitude, l = 1: gamma = 7/6, block {1, 2} (|x| = 2 top, 1.5 rest), c = 1, W_B = 1.
TEST(ActiveBlocks, MagnitudeP2HandCaseHasHandValues) {
  for (Solver solver : kSolvers) {
    ActiveBlocks b;
    stk_test::mag(std::vector<double>{3, -2, 1.5, 0.2}, 4, 2, 1.0, 2.0, &b, nullptr, solver);
    ASSERT_EQ(b.rows(), 1u);
    EXPECT_NEAR(b.gamma(0), 7.0 / 6.0, 1e-12);
    EXPECT_EQ(b.block_weight(0), 1.0);
    std::vector<std::size_t> idx(b.index(0).begin(), b.index(0).end());
    std::sort(idx.begin(), idx.end());
    EXPECT_EQ(idx, (std::vector<std::size_t>{1, 2}));
    for (double c : b.c(0)) EXPECT_NEAR(c, 1.0, 1e-12);
  }
}

// Mask, p = 4/3: c_i = ((q-1)/l) u_i^(q-2) = 3 u_i^2 / l with u_i = (x_i - tau)/l.
// x = (10, 1, 1, -10), k = 2, l = 1: u = 2^(-1/3) for entries 1, 2.
TEST(ActiveBlocks, MaskP43HandCaseHasHandValues) {
  ActiveBlocks b;
  stk_test::mask(std::vector<double>{10, 1, 1, -10}, 4, 2, 1.0, 4.0 / 3.0, &b);
  const double u = std::cbrt(0.5);
  EXPECT_NEAR(b.gamma(0), 1 - u, 1e-12);
  EXPECT_EQ(b.block_weight(0), 1.0);
  ASSERT_EQ(b.index(0).size(), 2u);
  for (double c : b.c(0)) EXPECT_NEAR(c, 3 * u * u, 1e-12);
}

// Without a multi-entry block, gamma is the (k+1)-th largest key (-inf if k = n).
STK_PROP(ActiveBlocks, GammaWithoutBlockIsTheNextLargestKey, 100) {
  const auto n = static_cast<std::size_t>(*rc::gen::inRange(1, 12));
  const auto k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(n) + 1));
  const bool use_mag = *rc::gen::arbitrary<bool>();
  // Keys at least 1 apart and l = 1e-3: every block is a singleton.
  auto x = stk_test::gen_distinct_row(n, 1.0, 2.0, use_mag ? 1.0 : stk_test::gen_grid(-5, 5));
  if (use_mag)
    for (auto& v : x)
      if (*rc::gen::arbitrary<bool>()) v = -v;
  ActiveBlocks b;
  const Solver solver = stk_test::gen_solver();
  const double p = stk_test::gen_p();
  if (use_mag) {
    stk_test::mag(x, n, k, 1e-3, p, &b, nullptr, solver);
  } else {
    stk_test::mask(x, n, k, 1e-3, p, &b, nullptr, solver);
  }
  std::vector<double> keys(x);
  if (use_mag)
    for (auto& v : keys) v = std::fabs(v);
  std::sort(keys.begin(), keys.end(), std::greater<>());
  const double expected = k == n ? -std::numeric_limits<double>::infinity() : keys[k];
  RC_LOG() << "x=" << stk_test::show(x) << " k=" << k << (use_mag ? " mag" : " mask")
           << " gamma=" << b.gamma(0) << "\n";
  RC_ASSERT(b.gamma(0) == expected);
  RC_ASSERT(b.index(0).empty());
  RC_ASSERT(b.block_weight(0) == 0.0);
}

struct Batch {
  std::vector<double> x;
  std::size_t rows = 1, n = 1, k = 0;
  double l = 1, p = 2;
  Solver solver = Solver::automatic;
};

Batch gen_batch() {
  Batch b;
  b.rows = static_cast<std::size_t>(*rc::gen::inRange(1, 6));
  b.n = static_cast<std::size_t>(*rc::gen::inRange(1, 13));
  b.k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(b.n) + 1));
  b.x = stk_test::gen_row(b.rows * b.n, -3, 3, 99991);
  b.l = *rc::gen::element(0.05, 0.3, 1.0, 3.0);
  b.p = stk_test::gen_p();
  b.solver = stk_test::gen_solver();
  return b;
}

bool in_block(const ActiveBlocks& b, std::size_t r, std::size_t i) {
  const auto idx = b.index(r);
  return std::find(idx.begin(), idx.end(), i) != idx.end();
}

STK_PROP(ActiveBlocks, MagnitudeEntriesOutsideBlockAreUnchangedExactlyFromThreshold, 100) {
  const Batch bt = gen_batch();
  ActiveBlocks b;
  const auto y = stk_test::mag(bt.x, bt.n, bt.k, bt.l, bt.p, &b, nullptr, bt.solver);
  for (std::size_t r = 0; r < bt.rows; ++r) {
    for (std::size_t i = 0; i < bt.n; ++i) {
      const double xi = bt.x[r * bt.n + i], yi = y[r * bt.n + i];
      if (in_block(b, r, i) || xi == 0.0) continue;
      RC_LOG() << "r=" << r << " i=" << i << " x=" << xi << " out=" << yi
               << " unchanged_from=" << b.unchanged_from(r) << "\n";
      if (std::fabs(xi) >= b.unchanged_from(r)) {
        RC_ASSERT(yi == xi);
      } else {
        RC_ASSERT(yi == 0.0);
      }
    }
  }
}

STK_PROP(ActiveBlocks, MaskEntriesOutsideBlockAreSaturatedExactlyFromThreshold, 100) {
  const Batch bt = gen_batch();
  ActiveBlocks b;
  const auto y = stk_test::mask(bt.x, bt.n, bt.k, bt.l, bt.p, &b, nullptr, bt.solver);
  for (std::size_t r = 0; r < bt.rows; ++r) {
    for (std::size_t i = 0; i < bt.n; ++i) {
      const double xi = bt.x[r * bt.n + i], yi = y[r * bt.n + i];
      if (in_block(b, r, i)) continue;
      RC_LOG() << "r=" << r << " i=" << i << " x=" << xi << " out=" << yi
               << " unchanged_from=" << b.unchanged_from(r) << "\n";
      RC_ASSERT(yi == (xi >= b.unchanged_from(r) ? 1.0 : 0.0));
    }
  }
}

STK_PROP(ActiveBlocks, BlockWeightCountsTopEntriesInTheBlock, 100) {
  // With distinct keys, W_B = number of active entries among the hard top k.
  const auto n = static_cast<std::size_t>(*rc::gen::inRange(2, 12));
  const auto k = static_cast<std::size_t>(*rc::gen::inRange<int>(1, static_cast<int>(n)));
  const auto x = stk_test::gen_distinct_row(n, 0.01, 0.5, stk_test::gen_grid(-2, 2));
  const double l = *rc::gen::element(0.3, 1.0, 3.0);
  const double p = stk_test::gen_p();
  ActiveBlocks b;
  stk_test::mask(x, n, k, l, p, &b, nullptr, stk_test::gen_solver());
  const auto hard = ref::hard_mask(x, k);
  double top_in_block = 0;
  for (std::size_t i : b.index(0)) top_in_block += hard[i];
  RC_ASSERT(b.block_weight(0) == top_in_block);
}

STK_PROP(ActiveBlocks, DenseFormRoundTripsAndGivesTheSameDerivatives, 100) {
  // to_dense then assign_dense keeps every row's state, and the VJP and JVP of
  // the restored state equal those of the original (up to the order of sums).
  const auto n = static_cast<std::size_t>(*rc::gen::inRange(1, 12));
  const auto rows = static_cast<std::size_t>(*rc::gen::inRange(1, 4));
  const auto k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(n) + 1));
  std::vector<double> x;
  for (std::size_t r = 0; r < rows; ++r) {
    const auto row = stk_test::gen_distinct_row(n, 0.01, 0.5, stk_test::gen_grid(-2, 2));
    x.insert(x.end(), row.begin(), row.end());
  }
  const double l = *rc::gen::element(0.3, 1.0, 3.0), p = stk_test::gen_p();
  const bool use_mag = *rc::gen::arbitrary<bool>();
  ActiveBlocks b, restored;
  if (use_mag) stk_test::mag(x, n, k, l, p, &b);
  else stk_test::mask(x, n, k, l, p, &b);
  std::vector<double> c(rows * n), state(rows * ActiveBlocks::row_state_size);
  b.to_dense(c, state);
  restored.assign_dense(n, c, state);
  RC_ASSERT(restored.rows() == rows);
  for (std::size_t r = 0; r < rows; ++r) {
    RC_ASSERT(restored.gamma(r) == b.gamma(r));
    RC_ASSERT(restored.block_weight(r) == b.block_weight(r));
    RC_ASSERT(restored.unchanged_from(r) == b.unchanged_from(r));
    RC_ASSERT(restored.index(r).size() == b.index(r).size());
  }
  std::vector<double> g(x.size()), out(x.size()), out_restored(x.size());
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::sin(1.7 * static_cast<double>(i) + 0.3);
  for (bool vjp : {true, false}) {
    if (use_mag) {
      (vjp ? sparsetopk::soft_topk_mag_vjp<double> : sparsetopk::soft_topk_mag_jvp<double>)(b, x, g, out);
      (vjp ? sparsetopk::soft_topk_mag_vjp<double> : sparsetopk::soft_topk_mag_jvp<double>)(restored, x, g,
                                                                                             out_restored);
    } else {
      sparsetopk::soft_topk_mask_vjp<double>(b, g, out);
      sparsetopk::soft_topk_mask_vjp<double>(restored, g, out_restored);
    }
    for (std::size_t i = 0; i < g.size(); ++i) RC_ASSERT(std::abs(out[i] - out_restored[i]) <= 1e-12 * (1 + std::abs(out[i])));
  }
}

TEST(ActiveBlocks, DenseFormMarksNonFiniteRowsWithNaN) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> x{0.3, -1.0, 2.0, 1.1, 0.3, nan, 2.0, 1.1};
  ActiveBlocks b;
  stk_test::mask(x, 4, 2, 0.8, 2.0, &b);
  std::vector<double> c(8), state(6);
  b.to_dense(c, state);
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_TRUE(c[i] == -1.0 || c[i] > 0.0) << i;
    EXPECT_TRUE(std::isnan(c[4 + i])) << i;
  }
  EXPECT_TRUE(std::isnan(state[3]));
  EXPECT_THROW(b.to_dense(std::span<double>(c.data(), 7), state), sparsetopk::InvalidArgument);
}

TEST(ActiveBlocks, NonFiniteRowIsMarkedAndLeavesOtherRowsUnchanged) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> good{0.3, -1.0, 2.0, 1.1}, bad{0.3, nan, 2.0, 1.1};
  std::vector<double> x(good);
  x.insert(x.end(), bad.begin(), bad.end());
  x.insert(x.end(), good.begin(), good.end());
  for (bool use_mag : {false, true}) {
    ActiveBlocks b, one;
    const auto y =
        use_mag ? stk_test::mag(x, 4, 2, 0.8, 2.0, &b) : stk_test::mask(x, 4, 2, 0.8, 2.0, &b);
    const auto y1 = use_mag ? stk_test::mag(good, 4, 2, 0.8, 2.0, &one)
                            : stk_test::mask(good, 4, 2, 0.8, 2.0, &one);
    ASSERT_EQ(b.rows(), 3u);
    EXPECT_TRUE(std::isnan(b.gamma(1)));
    EXPECT_EQ(b.gamma(0), one.gamma(0));
    EXPECT_EQ(b.gamma(2), one.gamma(0));
    for (std::size_t i = 0; i < 4; ++i) {
      EXPECT_EQ(y[i], y1[i]) << i;
      EXPECT_EQ(y[8 + i], y1[i]) << i;
    }
  }
}

}  // namespace
