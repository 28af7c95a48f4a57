// Closed-form derivatives of SPEC.md ("Derivatives"): JVP and VJP against
// central finite differences of the forward pass, adjointness, J 1 = 0 for the
// mask, and the exact zero / identity rows.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sparsetopk/sparsetopk.hpp>
#include <vector>

#include "reference.hpp"
#include "test_support.hpp"

namespace {

using sparsetopk::ActiveBlocks;

const double kPs[] = {4.0 / 3.0, 1.5, 2.0, 3.0};

enum class Op { mask, mag };

const char* name(Op op) { return op == Op::mask ? "mask" : "mag"; }

template <class T = double>
std::vector<T> forward(Op op, const std::vector<T>& x, std::size_t n, std::size_t k, double l,
                       double p, ActiveBlocks* blocks = nullptr,
                       sparsetopk::Solver solver = sparsetopk::Solver::automatic) {
  return op == Op::mask ? stk_test::mask(x, n, k, l, p, blocks, nullptr, solver)
                        : stk_test::mag(x, n, k, l, p, blocks, nullptr, solver);
}

template <class T = double>
std::vector<T> jvp(Op op, const ActiveBlocks& b, const std::vector<T>& x,
                   const std::vector<T>& dx) {
  std::vector<T> out(dx.size());
  if (op == Op::mask) {
    sparsetopk::soft_topk_mask_jvp<T>(b, dx, out);
  } else {
    sparsetopk::soft_topk_mag_jvp<T>(b, x, dx, out);
  }
  return out;
}

template <class T = double>
std::vector<T> vjp(Op op, const ActiveBlocks& b, const std::vector<T>& x, const std::vector<T>& g) {
  std::vector<T> out(g.size());
  if (op == Op::mask) {
    sparsetopk::soft_topk_mask_vjp<T>(b, g, out);
  } else {
    sparsetopk::soft_topk_mag_vjp<T>(b, x, g, out);
  }
  return out;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// "Generic" values on a fine prime grid, so that no entry sits exactly on a kink.
std::vector<double> gen_generic(std::size_t count, double lo, double hi) {
  return stk_test::gen_row(count, lo, hi, 999983);
}

double gen_l() { return stk_test::gen_grid(0.2, 2.0, 9973); }

// Single row with well separated values (gaps >= 0.05), random signs for the
// magnitude, 1 <= k < n.
struct Row {
  std::vector<double> x;
  std::size_t n = 2, k = 1;
  double l = 1;
  sparsetopk::Solver solver = sparsetopk::Solver::automatic;
};

Row gen_separated_row(bool magnitudes) {
  Row r;
  r.n = static_cast<std::size_t>(*rc::gen::inRange(2, 11));
  r.k = static_cast<std::size_t>(*rc::gen::inRange<int>(1, static_cast<int>(r.n)));
  if (magnitudes) {
    // Distinct magnitudes >= 0.05 with random signs.
    r.x = stk_test::gen_distinct_row(r.n, 0.05, 0.8, stk_test::gen_grid(0.05, 1, 99991));
    const auto signs = *rc::gen::container<std::vector<bool>>(r.n, rc::gen::arbitrary<bool>());
    for (std::size_t i = 0; i < r.n; ++i)
      if (signs[i]) r.x[i] = -r.x[i];
  } else {
    r.x = stk_test::gen_distinct_row(r.n, 0.05, 0.8, stk_test::gen_grid(-3, 0, 99991));
  }
  for (auto& v : r.x) v += (v < 0 ? -1e-7 : 1e-7) * std::sqrt(2.0);  // off the generator's grid
  r.l = gen_l();
  r.solver = stk_test::gen_solver();
  return r;
}

// Compares J e_j (JVP) or (J^T g)_j (VJP) with central differences of the forward,
// for every coordinate j that is not within the step of a kink. A kink is
// detected when the one-sided differences disagree. Returns the number of
// coordinates checked.
std::size_t check_against_finite_differences(Op op, bool transpose, const Row& r, double p,
                                             const std::vector<double>& g) {
  const double h = 1e-6;
  ActiveBlocks blocks;
  const auto f0 = forward(op, r.x, r.n, r.k, r.l, p, &blocks, r.solver);
  std::size_t checked = 0;
  for (std::size_t j = 0; j < r.n; ++j) {
    auto xp = r.x, xm = r.x;
    xp[j] += h;
    xm[j] -= h;
    const auto fp = forward(op, xp, r.n, r.k, r.l, p, nullptr, r.solver);
    const auto fm = forward(op, xm, r.n, r.k, r.l, p, nullptr, r.solver);
    std::vector<double> central(r.n);
    bool kink = false;
    for (std::size_t i = 0; i < r.n; ++i) {
      const double right = (fp[i] - f0[i]) / h, left = (f0[i] - fm[i]) / h;
      central[i] = (fp[i] - fm[i]) / (2 * h);
      if (std::fabs(right - left) > 1e-4 * (1 + std::fabs(central[i]))) kink = true;
    }
    if (kink) continue;
    ++checked;
    if (!transpose) {
      std::vector<double> e(r.n, 0.0);
      e[j] = 1;
      const auto col = jvp(op, blocks, r.x, e);
      for (std::size_t i = 0; i < r.n; ++i) {
        RC_LOG() << name(op) << " p=" << p << " J[" << i << "," << j << "] analytic " << col[i]
                 << " fd " << central[i] << "\n";
        RC_ASSERT(std::fabs(col[i] - central[i]) <= 1e-5 * (1 + std::fabs(central[i])));
      }
    } else {
      const auto grad = vjp(op, blocks, r.x, g);
      const double fd = dot(g, central);
      RC_LOG() << name(op) << " p=" << p << " (J^T g)[" << j << "] analytic " << grad[j] << " fd "
               << fd << "\n";
      double scale = 1;
      for (std::size_t i = 0; i < r.n; ++i) scale += std::fabs(g[i] * central[i]);
      RC_ASSERT(std::fabs(grad[j] - fd) <= 1e-5 * scale);
    }
  }
  return checked;
}

void check_fd(Op op, bool transpose) {
  const Row r = gen_separated_row(op == Op::mag);
  const auto g = gen_generic(r.n, -1, 1);
  RC_LOG() << "x=" << stk_test::show(r.x) << " k=" << r.k << " l=" << r.l
           << " solver=" << static_cast<int>(r.solver) << "\n";
  std::size_t checked = 0;
  for (double p : kPs) checked += check_against_finite_differences(op, transpose, r, p, g);
  RC_CLASSIFY(checked == 0, "no smooth coordinate");
}

STK_PROP(MaskDerivatives, JvpMatchesCentralFiniteDifferences, 60) { check_fd(Op::mask, false); }
STK_PROP(MaskDerivatives, VjpMatchesCentralFiniteDifferences, 60) { check_fd(Op::mask, true); }
STK_PROP(MagDerivatives, JvpMatchesCentralFiniteDifferences, 60) { check_fd(Op::mag, false); }
STK_PROP(MagDerivatives, VjpMatchesCentralFiniteDifferences, 60) { check_fd(Op::mag, true); }

// A row with fractional entries for p = 2, l = 1, checked against SPEC.md's
// formula by hand: x = (3, -2, 1.5, 0.2), k = 2, l = 2 has tau = -0.15 and
// active entries {2, 3} with c = 1/2: J_B = diag(c) - c c^T / sum c = [[1/4, -1/4], [-1/4, 1/4]].
// The magnitude VJP/JVP pass the cotangent through where |x_i| >= unchanged_from
// (float rows compare in float against the least float at or above it): a bound
// between two floats, one below the least positive float, and none (+inf).
TEST(MagDerivatives, UnchangedEntriesFollowTheSavedBoundInFloat) {
  const float one = 1.0f, above_one = std::nextafter(1.0f, 2.0f), tiny = std::numeric_limits<float>::denorm_min();
  const std::vector<float> x = {one, -above_one, tiny, 0.0f, -0.5f};
  const std::vector<float> g = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  struct Case {
    double bound;
    std::vector<float> expected;
  };
  const double between = 0.5 * (1.0 + static_cast<double>(above_one));
  for (const Case& c : {Case{between, {0.0f, 2.0f, 0.0f, 0.0f, 0.0f}}, Case{1.0, {1.0f, 2.0f, 0.0f, 0.0f, 0.0f}},
                        Case{1e-50, {1.0f, 2.0f, 3.0f, 0.0f, 5.0f}}, Case{HUGE_VAL, {0.0f, 0.0f, 0.0f, 0.0f, 0.0f}}}) {
    ActiveBlocks blocks;  // no block: every entry unchanged or 0
    blocks.assign_dense(x.size(), std::vector<double>(x.size(), -1.0), std::vector<double>{0.0, 0.0, c.bound});
    std::vector<float> vjp(x.size()), jvp(x.size());
    sparsetopk::soft_topk_mag_vjp<float>(blocks, x, g, vjp);
    sparsetopk::soft_topk_mag_jvp<float>(blocks, x, g, jvp);
    for (std::size_t i = 0; i < x.size(); ++i) {
      EXPECT_EQ(vjp[i], c.expected[i]) << "bound " << c.bound << " i = " << i;
      EXPECT_EQ(jvp[i], c.expected[i]) << "bound " << c.bound << " i = " << i;
    }
  }
}

TEST(MaskDerivatives, P2JacobianOfHandCaseIsHandValue) {
  const std::vector<double> x{3, -2, 1.5, 0.2};
  ActiveBlocks blocks;
  stk_test::mask(x, 4, 2, 2.0, 2.0, &blocks);
  const double expected[4][4] = {
      {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0.25, -0.25}, {0, 0, -0.25, 0.25}};
  for (std::size_t j = 0; j < 4; ++j) {
    std::vector<double> e(4, 0.0);
    e[j] = 1;
    const auto col = jvp(Op::mask, blocks, x, e);
    for (std::size_t i = 0; i < 4; ++i) EXPECT_NEAR(col[i], expected[i][j], 1e-12) << i << "," << j;
  }
}

// Magnitude, p = 2, l = 1, x = (3, -2, 1.5, 0.2), k = 2: block {1, 2} (sorted
// |x| = 2, 1.5) with c = 1, W_B = 1: d r_i = 2 (t_i - (t_1 + t_2) / 3), t = sign(x) dx.
TEST(MagDerivatives, P2JacobianOfHandCaseIsHandValue) {
  const std::vector<double> x{3, -2, 1.5, 0.2};
  ActiveBlocks blocks;
  stk_test::mag(x, 4, 2, 1.0, 2.0, &blocks);
  // d out_1 = -d r_1 with t_1 = -dx_1; d out_2 = d r_2 with t_2 = dx_2.
  const double a = 2.0 * (1 - 1.0 / 3), b = 2.0 / 3;
  const double expected[4][4] = {{1, 0, 0, 0}, {0, a, b, 0}, {0, b, a, 0}, {0, 0, 0, 0}};
  for (std::size_t j = 0; j < 4; ++j) {
    std::vector<double> e(4, 0.0);
    e[j] = 1;
    const auto col = jvp(Op::mag, blocks, x, e);
    for (std::size_t i = 0; i < 4; ++i) EXPECT_NEAR(col[i], expected[i][j], 1e-12) << i << "," << j;
  }
}

// ---- random batches -----------------------------------------------------------

struct Batch {
  std::vector<double> x;
  std::size_t rows = 1, n = 1, k = 0;
  double l = 1, p = 2;
  sparsetopk::Solver solver = sparsetopk::Solver::automatic;
};

Batch gen_batch() {
  Batch b;
  b.rows = static_cast<std::size_t>(*rc::gen::inRange(1, 7));
  b.n = static_cast<std::size_t>(*rc::gen::inRange(1, 13));
  b.k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(b.n) + 1));
  b.x = gen_generic(b.rows * b.n, -3, 3);
  b.l = gen_l();
  b.p = stk_test::gen_p();
  b.solver = stk_test::gen_solver();
  return b;
}

void check_adjoint(Op op) {
  const Batch b = gen_batch();
  ActiveBlocks blocks;
  forward(op, b.x, b.n, b.k, b.l, b.p, &blocks, b.solver);
  const auto u = gen_generic(b.x.size(), -1, 1);
  const auto v = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(op, blocks, b.x, v);
  const auto jtu = vjp(op, blocks, b.x, u);
  double lhs = 0, rhs = 0, scale = 1;
  for (std::size_t i = 0; i < u.size(); ++i) {
    lhs += u[i] * jv[i];
    rhs += jtu[i] * v[i];
    scale += std::fabs(u[i] * jv[i]) + std::fabs(jtu[i] * v[i]);
  }
  RC_LOG() << "<u, J v> = " << lhs << ", <J^T u, v> = " << rhs << "\n";
  RC_ASSERT(std::fabs(lhs - rhs) <= 1e-10 * scale);
}

STK_PROP(MaskDerivatives, VjpIsAdjointOfJvp, 200) { check_adjoint(Op::mask); }
STK_PROP(MagDerivatives, VjpIsAdjointOfJvp, 200) { check_adjoint(Op::mag); }

STK_PROP(MaskDerivatives, JacobianIsSymmetric, 100) {
  // SPEC.md: the mask Jacobian is symmetric, so the VJP equals the JVP.
  const Batch b = gen_batch();
  ActiveBlocks blocks;
  forward(Op::mask, b.x, b.n, b.k, b.l, b.p, &blocks, b.solver);
  const auto v = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(Op::mask, blocks, b.x, v);
  const auto jtv = vjp(Op::mask, blocks, b.x, v);
  for (std::size_t i = 0; i < v.size(); ++i)
    RC_ASSERT(std::fabs(jv[i] - jtv[i]) <= 1e-12 * (1 + std::fabs(jv[i])));
}

double max_c(const ActiveBlocks& blocks) {
  double m = 0;
  for (std::size_t r = 0; r < blocks.rows(); ++r)
    for (double c : blocks.c(r)) m = std::max(m, std::fabs(c));
  return m;
}

STK_PROP(MaskDerivatives, JacobianRowsSumToZero, 200) {
  // sum(out) = k for every x, so J 1 = 0 (and 1^T J = 0).
  const Batch b = gen_batch();
  ActiveBlocks blocks;
  forward(Op::mask, b.x, b.n, b.k, b.l, b.p, &blocks, b.solver);
  const std::vector<double> ones(b.x.size(), 1.0);
  const auto j1 = jvp(Op::mask, blocks, b.x, ones);
  const double tol = 1e-12 * (1 + static_cast<double>(b.n) * max_c(blocks));
  for (double v : j1) RC_ASSERT(std::fabs(v) <= tol);
}

STK_PROP(MaskDerivatives, JacobianColumnsSumToZero, 200) {
  const Batch b = gen_batch();
  ActiveBlocks blocks;
  forward(Op::mask, b.x, b.n, b.k, b.l, b.p, &blocks, b.solver);
  // d/dt sum(out(x + t d)) = 0 for any d: 1^T J = 0, i.e. vjp of ones vanishes.
  const std::vector<double> ones(b.x.size(), 1.0);
  const auto jt1 = vjp(Op::mask, blocks, b.x, ones);
  const double tol = 1e-12 * (1 + static_cast<double>(b.n) * max_c(blocks));
  for (double v : jt1) RC_ASSERT(std::fabs(v) <= tol);
}

STK_PROP(MaskDerivatives, AreExactlyZeroOnSaturatedAndZeroEntries, 200) {
  const Batch b = gen_batch();
  ActiveBlocks blocks;
  const auto y = forward(Op::mask, b.x, b.n, b.k, b.l, b.p, &blocks, b.solver);
  const auto d = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(Op::mask, blocks, b.x, d);
  const auto jtd = vjp(Op::mask, blocks, b.x, d);
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (y[i] == 0.0 || y[i] == 1.0) {
      RC_LOG() << "i=" << i << " y=" << y[i] << " jvp=" << jv[i] << " vjp=" << jtd[i] << "\n";
      RC_ASSERT(jv[i] == 0.0);
      RC_ASSERT(jtd[i] == 0.0);
    }
  }
}

STK_PROP(MagDerivatives, AreExactlyIdentityOnEntriesReturnedUnchanged, 200) {
  const Batch b = gen_batch();
  ActiveBlocks blocks;
  const auto y = forward(Op::mag, b.x, b.n, b.k, b.l, b.p, &blocks, b.solver);
  const auto d = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(Op::mag, blocks, b.x, d);
  const auto jtd = vjp(Op::mag, blocks, b.x, d);
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (b.x[i] != 0.0 && y[i] == b.x[i]) {
      RC_LOG() << "i=" << i << " x=" << b.x[i] << " d=" << d[i] << " jvp=" << jv[i]
               << " vjp=" << jtd[i] << "\n";
      RC_ASSERT(jv[i] == d[i]);
      RC_ASSERT(jtd[i] == d[i]);
    }
  }
}

STK_PROP(MagDerivatives, AreExactlyZeroOnZeroOutputs, 200) {
  const Batch b = gen_batch();
  ActiveBlocks blocks;
  const auto y = forward(Op::mag, b.x, b.n, b.k, b.l, b.p, &blocks, b.solver);
  const auto d = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(Op::mag, blocks, b.x, d);
  const auto jtd = vjp(Op::mag, blocks, b.x, d);
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (y[i] == 0.0) {
      RC_ASSERT(jv[i] == 0.0);
      RC_ASSERT(jtd[i] == 0.0);
    }
  }
}

STK_PROP(MaskDerivatives, ActiveCValuesFollowSpecFormula, 100) {
  // c_i = ((q-1)/l) ((x_i - gamma)/l)^(q-2) for the active entries.
  const Batch b = gen_batch();
  ActiveBlocks blocks;
  forward(Op::mask, b.x, b.n, b.k, b.l, b.p, &blocks, b.solver);
  const double q = b.p / (b.p - 1);
  RC_ASSERT(blocks.rows() == b.rows);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const auto idx = blocks.index(r);
    const auto c = blocks.c(r);
    RC_ASSERT(idx.size() == c.size());
    for (std::size_t j = 0; j < idx.size(); ++j) {
      const double u = (b.x[r * b.n + idx[j]] - blocks.gamma(r)) / b.l;
      const double expected = (q - 1) / b.l * std::pow(u, q - 2);
      RC_ASSERT(std::fabs(c[j] - expected) <= 1e-8 * (1 + std::fabs(expected)));
    }
  }
}

STK_PROP(MaskDerivatives, JvpOfBatchEqualsRowByRow, 50) {
  const Batch b = gen_batch();
  ActiveBlocks all;
  forward(Op::mask, b.x, b.n, b.k, b.l, b.p, &all, b.solver);
  const auto d = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(Op::mask, all, b.x, d);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const auto off = static_cast<std::ptrdiff_t>(r * b.n);
    const std::vector<double> x(b.x.begin() + off,
                                b.x.begin() + off + static_cast<std::ptrdiff_t>(b.n));
    const std::vector<double> dr(d.begin() + off,
                                 d.begin() + off + static_cast<std::ptrdiff_t>(b.n));
    ActiveBlocks one;
    forward(Op::mask, x, b.n, b.k, b.l, b.p, &one, b.solver);
    const auto jr = jvp(Op::mask, one, x, dr);
    for (std::size_t i = 0; i < b.n; ++i) RC_ASSERT(jr[i] == jv[r * b.n + i]);
  }
}

STK_PROP(MagDerivatives, VjpOfBatchEqualsRowByRow, 50) {
  const Batch b = gen_batch();
  ActiveBlocks all;
  forward(Op::mag, b.x, b.n, b.k, b.l, b.p, &all, b.solver);
  const auto g = gen_generic(b.x.size(), -1, 1);
  const auto grad = vjp(Op::mag, all, b.x, g);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const auto off = static_cast<std::ptrdiff_t>(r * b.n);
    const std::vector<double> x(b.x.begin() + off,
                                b.x.begin() + off + static_cast<std::ptrdiff_t>(b.n));
    const std::vector<double> gr(g.begin() + off,
                                 g.begin() + off + static_cast<std::ptrdiff_t>(b.n));
    ActiveBlocks one;
    forward(Op::mag, x, b.n, b.k, b.l, b.p, &one, b.solver);
    const auto jr = vjp(Op::mag, one, x, gr);
    for (std::size_t i = 0; i < b.n; ++i) RC_ASSERT(jr[i] == grad[r * b.n + i]);
  }
}

STK_PROP(Derivatives, BlocksReusedAfterALargerCallGiveSameResults, 50) {
  const Op op = *rc::gen::element(Op::mask, Op::mag);
  ActiveBlocks reused;
  const Batch big = gen_batch();
  forward(op, big.x, big.n, big.k, big.l, big.p, &reused, big.solver);
  const Batch b = gen_batch();
  forward(op, b.x, b.n, b.k, b.l, b.p, &reused, b.solver);
  ActiveBlocks fresh;
  forward(op, b.x, b.n, b.k, b.l, b.p, &fresh, b.solver);
  const auto d = gen_generic(b.x.size(), -1, 1);
  RC_ASSERT(jvp(op, reused, b.x, d) == jvp(op, fresh, b.x, d));
  RC_ASSERT(vjp(op, reused, b.x, d) == vjp(op, fresh, b.x, d));
}

STK_PROP(Derivatives, FloatAgreesWithDouble, 100) {
  const Op op = *rc::gen::element(Op::mask, Op::mag);
  const Batch b = gen_batch();
  const std::vector<float> xf(b.x.begin(), b.x.end());
  const std::vector<double> xd(xf.begin(), xf.end());
  const auto gd0 = gen_generic(b.x.size(), -1, 1);
  const std::vector<float> gf(gd0.begin(), gd0.end());
  const std::vector<double> gd(gf.begin(), gf.end());
  ActiveBlocks bf, bd;
  forward(op, xf, b.n, b.k, b.l, b.p, &bf, b.solver);
  forward(op, xd, b.n, b.k, b.l, b.p, &bd, b.solver);
  const auto rf = vjp(op, bf, xf, gf);
  const auto rd = vjp(op, bd, xd, gd);
  double scale = 1;
  for (double v : rd) scale = std::max(scale, std::fabs(v));
  for (std::size_t i = 0; i < rd.size(); ++i)
    RC_ASSERT(std::fabs(double(rf[i]) - rd[i]) <= 1e-5 * scale);
}

}  // namespace
