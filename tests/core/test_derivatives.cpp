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

using sparsetopk::Form;
using stk_test::Saved;

const double kPs[] = {4.0 / 3.0, 1.5, 2.0, 3.0};

std::string name(Form form) { return stk_test::form_name(form); }

template <class T = double>
std::vector<T> forward(Form form, const std::vector<T>& x, std::size_t n, std::size_t k, double l, double p,
                       Saved* saved = nullptr, sparsetopk::Solver solver = sparsetopk::Solver::automatic) {
  return stk_test::soft(form, x, n, k, l, p, saved, nullptr, solver);
}

using stk_test::jvp;
using stk_test::vjp;

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
std::size_t check_against_finite_differences(Form form, bool transpose, const Row& r, double p,
                                             const std::vector<double>& g) {
  const double h = 1e-6;
  Saved saved;
  const auto f0 = forward(form, r.x, r.n, r.k, r.l, p, &saved, r.solver);
  std::size_t checked = 0;
  for (std::size_t j = 0; j < r.n; ++j) {
    auto xp = r.x, xm = r.x;
    xp[j] += h;
    xm[j] -= h;
    const auto fp = forward(form, xp, r.n, r.k, r.l, p, nullptr, r.solver);
    const auto fm = forward(form, xm, r.n, r.k, r.l, p, nullptr, r.solver);
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
      const auto col = jvp(form, saved, r.x, e);
      for (std::size_t i = 0; i < r.n; ++i) {
        RC_LOG() << name(form) << " p=" << p << " J[" << i << "," << j << "] analytic " << col[i]
                 << " fd " << central[i] << "\n";
        RC_ASSERT(std::fabs(col[i] - central[i]) <= 1e-5 * (1 + std::fabs(central[i])));
      }
    } else {
      const auto grad = vjp(form, saved, r.x, g);
      const double fd = dot(g, central);
      RC_LOG() << name(form) << " p=" << p << " (J^T g)[" << j << "] analytic " << grad[j] << " fd "
               << fd << "\n";
      double scale = 1;
      for (std::size_t i = 0; i < r.n; ++i) scale += std::fabs(g[i] * central[i]);
      RC_ASSERT(std::fabs(grad[j] - fd) <= 1e-5 * scale);
    }
  }
  return checked;
}

// Every test below runs for both forms; the finite-difference checks also for
// both products (JVP, VJP).
class ByForm : public ::testing::TestWithParam<Form> {};
INSTANTIATE_TEST_SUITE_P(Derivatives, ByForm, ::testing::Values(Form::mask, Form::magnitude),
                         [](const auto& info) { return stk_test::form_name(info.param); });

class ByFormAndProduct : public ::testing::TestWithParam<std::tuple<Form, bool>> {};
INSTANTIATE_TEST_SUITE_P(Derivatives, ByFormAndProduct,
                         ::testing::Combine(::testing::Values(Form::mask, Form::magnitude), ::testing::Bool()),
                         [](const auto& info) {
                           return stk_test::form_name(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_vjp" : "_jvp");
                         });

STK_PROP_P(ByFormAndProduct, MatchesCentralFiniteDifferences, 60) {
  const auto [form, transpose] = param;
  const Row r = gen_separated_row(form == Form::magnitude);
  const auto g = gen_generic(r.n, -1, 1);
  RC_LOG() << "x=" << stk_test::show(r.x) << " k=" << r.k << " l=" << r.l
           << " solver=" << static_cast<int>(r.solver) << "\n";
  std::size_t checked = 0;
  for (double p : kPs) checked += check_against_finite_differences(form, transpose, r, p, g);
  RC_CLASSIFY(checked == 0, "no smooth coordinate");
}

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
    // no band (first_key = -inf): every entry unchanged or 0
    const std::vector<sparsetopk::RowState> state{{.gamma = 0.0, .block_weight = 0.0, .unchanged_from = c.bound}};
    std::vector<float> vjp(x.size()), jvp(x.size());
    sparsetopk::soft_topk_mag_vjp<float>(x, x.size(), state, {}, g, vjp);
    sparsetopk::soft_topk_mag_jvp<float>(x, x.size(), state, {}, g, jvp);
    for (std::size_t i = 0; i < x.size(); ++i) {
      EXPECT_EQ(vjp[i], c.expected[i]) << "bound " << c.bound << " i = " << i;
      EXPECT_EQ(jvp[i], c.expected[i]) << "bound " << c.bound << " i = " << i;
    }
  }
}

// Checks the Jacobian of x, column by column (JVP of e_j), against `expected`.
void expect_jacobian(Form form, const std::vector<double>& x, std::size_t k, double l,
                     const double (&expected)[4][4]) {
  Saved saved;
  forward(form, x, 4, k, l, 2.0, &saved);
  for (std::size_t j = 0; j < 4; ++j) {
    std::vector<double> e(4, 0.0);
    e[j] = 1;
    const auto col = jvp(form, saved, x, e);
    for (std::size_t i = 0; i < 4; ++i) EXPECT_NEAR(col[i], expected[i][j], 1e-12) << i << "," << j;
  }
}

// A row with fractional entries for p = 2, checked against SPEC.md's formula
// by hand: x = (3, -2, 1.5, 0.2), k = 2, l = 2 has tau = -0.15 and band
// {2, 3} with c = 1/2: J_B = diag(c) - c c^T / sum c = [[1/4, -1/4], [-1/4, 1/4]].
TEST(MaskDerivatives, P2JacobianOfHandCaseIsHandValue) {
  const double expected[4][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0.25, -0.25}, {0, 0, -0.25, 0.25}};
  expect_jacobian(Form::mask, {3, -2, 1.5, 0.2}, 2, 2.0, expected);
}

// Magnitude, p = 2, l = 1, x = (3, -2, 1.5, 0.2), k = 2: block {1, 2} (sorted
// |x| = 2, 1.5) with c = 1, W_B = 1: d r_i = 2 (t_i - (t_1 + t_2) / 3), t = sign(x) dx.
// d out_1 = -d r_1 with t_1 = -dx_1; d out_2 = d r_2 with t_2 = dx_2.
TEST(MagDerivatives, P2JacobianOfHandCaseIsHandValue) {
  const double a = 2.0 * (1 - 1.0 / 3), b = 2.0 / 3;
  const double expected[4][4] = {{1, 0, 0, 0}, {0, a, b, 0}, {0, b, a, 0}, {0, 0, 0, 0}};
  expect_jacobian(Form::magnitude, {3, -2, 1.5, 0.2}, 2, 1.0, expected);
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

// A random batch and its forward pass, with the state saved.
struct Solved {
  Batch b;
  Saved saved;
  std::vector<double> y;
};

Solved gen_solved(Form form) {
  Solved s{gen_batch(), {}, {}};
  s.y = forward(form, s.b.x, s.b.n, s.b.k, s.b.l, s.b.p, &s.saved, s.b.solver);
  return s;
}

STK_PROP_P(ByForm, VjpIsAdjointOfJvp, 200) {
  const Form form = param;
  const auto [b, saved, y] = gen_solved(form);
  const auto u = gen_generic(b.x.size(), -1, 1);
  const auto v = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(form, saved, b.x, v);
  const auto jtu = vjp(form, saved, b.x, u);
  double lhs = 0, rhs = 0, scale = 1;
  for (std::size_t i = 0; i < u.size(); ++i) {
    lhs += u[i] * jv[i];
    rhs += jtu[i] * v[i];
    scale += std::fabs(u[i] * jv[i]) + std::fabs(jtu[i] * v[i]);
  }
  RC_LOG() << "<u, J v> = " << lhs << ", <J^T u, v> = " << rhs << "\n";
  RC_ASSERT(std::fabs(lhs - rhs) <= 1e-10 * scale);
}

STK_PROP(MaskDerivatives, JacobianIsSymmetric, 100) {
  // SPEC.md: the mask Jacobian is symmetric, so the VJP equals the JVP.
  const auto [b, saved, y] = gen_solved(Form::mask);
  const auto v = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(Form::mask, saved, b.x, v);
  const auto jtv = vjp(Form::mask, saved, b.x, v);
  for (std::size_t i = 0; i < v.size(); ++i)
    RC_ASSERT(std::fabs(jv[i] - jtv[i]) <= 1e-12 * (1 + std::fabs(jv[i])));
}

// The largest |c_i| over every row's band.
double max_c(Form form, const Saved& saved, const std::vector<double>& x) {
  double m = 0;
  for (double c : stk_test::dense_band(form, saved, x)) m = std::max(m, std::fabs(c));
  return m;
}

STK_PROP(MaskDerivatives, JacobianRowsAndColumnsSumToZero, 200) {
  // sum(out) = k for every x, so J 1 = 0 and 1^T J = 0 (d/dt sum(out(x + t d))
  // = 0 for any d: the VJP of ones vanishes).
  const auto [b, saved, y] = gen_solved(Form::mask);
  const std::vector<double> ones(b.x.size(), 1.0);
  const double tol = 1e-12 * (1 + static_cast<double>(b.n) * max_c(Form::mask, saved, b.x));
  for (double v : jvp(Form::mask, saved, b.x, ones)) RC_ASSERT(std::fabs(v) <= tol);
  for (double v : vjp(Form::mask, saved, b.x, ones)) RC_ASSERT(std::fabs(v) <= tol);
}

// SPEC.md: outside the band the rows of J are exact. Mask: zero on saturated
// and zero entries. Magnitude: the identity on entries returned unchanged,
// zero on zero outputs.
STK_PROP_P(ByForm, AreExactOnSaturatedUnchangedAndZeroEntries, 200) {
  const Form form = param;
  const auto [b, saved, y] = gen_solved(form);
  const auto d = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(form, saved, b.x, d);
  const auto jtd = vjp(form, saved, b.x, d);
  for (std::size_t i = 0; i < y.size(); ++i) {
    double expected;
    if (y[i] == 0.0 || (form == Form::mask && y[i] == 1.0)) expected = 0.0;
    else if (form == Form::magnitude && b.x[i] != 0.0 && y[i] == b.x[i]) expected = d[i];
    else continue;
    RC_LOG() << name(form) << " i=" << i << " x=" << b.x[i] << " y=" << y[i] << " d=" << d[i] << " jvp=" << jv[i]
             << " vjp=" << jtd[i] << "\n";
    RC_ASSERT(jv[i] == expected);
    RC_ASSERT(jtd[i] == expected);
  }
}

STK_PROP_P(ByForm, BatchEqualsRowByRow, 50) {
  const Form form = param;
  const auto [b, all, y] = gen_solved(form);
  const auto d = gen_generic(b.x.size(), -1, 1);
  const auto jv = jvp(form, all, b.x, d), jtd = vjp(form, all, b.x, d);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const auto row = [&](const std::vector<double>& v) {
      return std::vector<double>(v.begin() + static_cast<std::ptrdiff_t>(r * b.n),
                                 v.begin() + static_cast<std::ptrdiff_t>((r + 1) * b.n));
    };
    const auto x = row(b.x), dr = row(d);
    Saved one;
    forward(form, x, b.n, b.k, b.l, b.p, &one, b.solver);
    RC_ASSERT(stk_test::same_bytes(one.state, std::span(all.state).subspan(r, 1)));
    RC_ASSERT(jvp(form, one, x, dr) == row(jv));
    RC_ASSERT(vjp(form, one, x, dr) == row(jtd));
  }
}

STK_PROP_P(ByForm, StateOverwritesWhatAnotherCallLeftThere, 50) {
  const Form form = param;
  Saved reused;
  const Batch big = gen_batch();
  forward(form, big.x, big.n, big.k, big.l, big.p, &reused, big.solver);
  const Batch b = gen_batch();
  forward(form, b.x, b.n, b.k, b.l, b.p, &reused, b.solver);  // its rows keep the big call's state until then
  Saved fresh;
  forward(form, b.x, b.n, b.k, b.l, b.p, &fresh, b.solver);
  RC_ASSERT(stk_test::same_bytes(reused.state, fresh.state));
  const auto d = gen_generic(b.x.size(), -1, 1);
  RC_ASSERT(jvp(form, reused, b.x, d) == jvp(form, fresh, b.x, d));
  RC_ASSERT(vjp(form, reused, b.x, d) == vjp(form, fresh, b.x, d));
}

STK_PROP_P(ByForm, FloatAgreesWithDouble, 100) {
  const Form form = param;
  const Batch b = gen_batch();
  const std::vector<float> xf(b.x.begin(), b.x.end());
  const std::vector<double> xd(xf.begin(), xf.end());
  const auto gd0 = gen_generic(b.x.size(), -1, 1);
  const std::vector<float> gf(gd0.begin(), gd0.end());
  const std::vector<double> gd(gf.begin(), gf.end());
  Saved sf, sd;
  forward(form, xf, b.n, b.k, b.l, b.p, &sf, b.solver);
  forward(form, xd, b.n, b.k, b.l, b.p, &sd, b.solver);
  const auto rf = vjp(form, sf, xf, gf);
  const auto rd = vjp(form, sd, xd, gd);
  double scale = 1;
  for (double v : rd) scale = std::max(scale, std::fabs(v));
  for (std::size_t i = 0; i < rd.size(); ++i)
    RC_ASSERT(std::fabs(double(rf[i]) - rd[i]) <= 1e-5 * scale);
}

}  // namespace
