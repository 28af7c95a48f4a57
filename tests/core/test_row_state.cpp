// The state a soft forward pass saves for its derivatives: one RowState per
// row (row_state.hpp), from which the derivatives recompute the band and its
// c_i (topk.hpp, soft_topk_*_band). Hand-computed values, SPEC.md's formula
// for c_i, the documented fallbacks (no block, k = 0, k = n), the unchanged /
// saturated split, non-finite rows, the state as plain doubles, and the size
// of the state span.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <sparsetopk/sparsetopk.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "reference.hpp"
#include "test_support.hpp"

namespace {

using sparsetopk::Form;
using sparsetopk::RowState;
using sparsetopk::Solver;
using stk_test::Saved;

const Solver kSolvers[] = {Solver::automatic, Solver::pav, Solver::threshold};
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

const char* name(Form form) { return form == Form::mask ? "mask" : "mag"; }

// A row whose state and band are known by hand.
struct HandCase {
  const char* name;
  Form form;
  std::vector<double> x;
  std::size_t k;
  double l, p;
  double gamma, block_weight;
  double first_key, first_index, last_key, last_index;  // the band in sorted order
  std::vector<std::size_t> band;                          // its columns
  double c;                                               // every band entry's c_i
};

void PrintTo(const HandCase& hand, std::ostream* os) { *os << hand.name; }

const double kCbrtHalf = std::cbrt(0.5);
const HandCase kHandCases[] = {
    // mask, p = 2, l = 2: tau = -0.15, band {2, 3} with c = 1/l = 0.5, one top
    // entry (index 2) in the block
    {"mask_p2", Form::mask, {3, -2, 1.5, 0.2}, 2, 2.0, 2.0, -0.15, 1.0, 1.5, 2, 0.2, 3, {2, 3}, 0.5},
    // magnitude, p = 2, l = 1: gamma = 7/6, band {1, 2} (|x| = 2 top, 1.5
    // rest: keys are |x|), c = 1, W_B = 1
    {"magnitude_p2", Form::magnitude, {3, -2, 1.5, 0.2}, 2, 1.0, 2.0, 7.0 / 6.0, 1.0, 2.0, 1, 1.5, 2, {1, 2}, 1.0},
    // mask, p = 4/3: c_i = ((q-1)/l) u_i^(q-2) = 3 u_i^2 / l with u_i = (x_i -
    // tau)/l; l = 1: u = 2^(-1/3) for the tied entries 1, 2 (the band runs
    // from the lower index to the higher)
    {"mask_p43", Form::mask, {10, 1, 1, -10}, 2, 1.0, 4.0 / 3.0, 1 - kCbrtHalf, 1.0, 1.0, 1, 1.0, 2, {1, 2},
     3 * kCbrtHalf * kCbrtHalf},
};

class HandCases : public ::testing::TestWithParam<HandCase> {};
INSTANTIATE_TEST_SUITE_P(RowState, HandCases, ::testing::ValuesIn(kHandCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_P(HandCases, StateAndBandHaveHandValues) {
  const HandCase& hand = GetParam();
  for (Solver solver : kSolvers) {
    Saved saved;
    stk_test::soft(hand.form, hand.x, hand.x.size(), hand.k, hand.l, hand.p, &saved, nullptr, solver);
    ASSERT_EQ(saved.rows(), 1u);
    const RowState& s = saved.state[0];
    EXPECT_NEAR(s.gamma, hand.gamma, 1e-12);
    EXPECT_EQ(s.block_weight, hand.block_weight);
    EXPECT_EQ(s.first_key, hand.first_key);
    EXPECT_EQ(s.first_index, hand.first_index);
    EXPECT_EQ(s.last_key, hand.last_key);
    EXPECT_EQ(s.last_index, hand.last_index);
    EXPECT_EQ(stk_test::band_indices(hand.form, saved, hand.x, 0), hand.band);
    for (const auto& entry : stk_test::band(hand.form, saved, hand.x, 0)) EXPECT_NEAR(entry.c, hand.c, 1e-12);
  }
}

TEST(RowState, IsOneRowOfSevenDoublesWithAnEmptyBandByDefault) {
  static_assert(sizeof(RowState) == RowState::size * sizeof(double));
  static_assert(std::is_trivially_copyable_v<RowState>);
  const RowState none{};
  EXPECT_EQ(none.first_key, -kInf);
  EXPECT_EQ(none.last_key, -kInf);
  // a default state's band is empty whatever the row
  const std::vector<double> x{3, -2, 1.5, 0.2};
  EXPECT_TRUE(sparsetopk::soft_topk_mask_band<double>(x, none, {}).empty());
  EXPECT_TRUE(sparsetopk::soft_topk_mag_band<double>(x, none, {}).empty());
}

// ---- the state span --------------------------------------------------------

template <class Call>
void expect_state_named(Call&& call, const std::string& what) {
  try {
    call();
    ADD_FAILURE() << what << ": no exception";
  } catch (const sparsetopk::InvalidArgument& e) {
    EXPECT_TRUE(stk_test::names_word(e.what(), "state")) << what << ": " << e.what();
  } catch (...) {
    ADD_FAILURE() << what << ": not an InvalidArgument";
  }
}

TEST(RowState, ForwardFillsOneStatePerRow) {
  const std::size_t rows = 5, n = 4;
  std::vector<double> x(rows * n);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.9 * static_cast<double>(i));
  for (Form form : {Form::mask, Form::magnitude}) {
    // every field of every row is written over what was there
    std::vector<RowState> state(rows, RowState{kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, kNaN});
    std::vector<double> out(x.size());
    if (form == Form::mask) sparsetopk::soft_topk_mask<double>(x, n, 2, out, {}, state);
    else sparsetopk::soft_topk_mag<double>(x, n, 2, out, {}, state);
    for (std::size_t r = 0; r < rows; ++r) {
      EXPECT_FALSE(std::isnan(state[r].gamma)) << name(form) << " row " << r;
      EXPECT_FALSE(std::isnan(state[r].block_weight)) << name(form) << " row " << r;
      EXPECT_FALSE(std::isnan(state[r].unchanged_from)) << name(form) << " row " << r;
      EXPECT_FALSE(std::isnan(state[r].first_key)) << name(form) << " row " << r;
      EXPECT_FALSE(std::isnan(state[r].first_index)) << name(form) << " row " << r;
      EXPECT_FALSE(std::isnan(state[r].last_key)) << name(form) << " row " << r;
      EXPECT_FALSE(std::isnan(state[r].last_index)) << name(form) << " row " << r;
    }
  }
}

TEST(RowState, StateSpanOfTheWrongSizeIsAnInvalidArgumentNamingState) {
  const std::size_t rows = 3, n = 4;
  const std::vector<double> x(rows * n, 0.5), g(rows * n, 1.0);
  std::vector<double> out(x.size());
  for (std::size_t size : {std::size_t{1}, rows - 1, rows + 1, rows * n}) {
    std::vector<RowState> state(size);
    const std::string what = "state of " + std::to_string(size) + " rows for " + std::to_string(rows);
    expect_state_named([&] { sparsetopk::soft_topk_mask<double>(x, n, 2, out, {}, state); }, "mask, " + what);
    expect_state_named([&] { sparsetopk::soft_topk_mag<double>(x, n, 2, out, {}, state); }, "mag, " + what);
    expect_state_named([&] { sparsetopk::soft_topk_mask_dykstra<double>(x, n, 2, out, {}, state); },
                       "mask dykstra, " + what);
    expect_state_named([&] { sparsetopk::soft_topk_mag_dykstra<double>(x, n, 2, out, {}, state); },
                       "mag dykstra, " + what);
    expect_state_named([&] { sparsetopk::soft_topk_mask_vjp<double>(x, n, state, {}, g, out); }, "mask vjp, " + what);
    expect_state_named([&] { sparsetopk::soft_topk_mask_jvp<double>(x, n, state, {}, g, out); }, "mask jvp, " + what);
    expect_state_named([&] { sparsetopk::soft_topk_mag_vjp<double>(x, n, state, {}, g, out); }, "mag vjp, " + what);
    expect_state_named([&] { sparsetopk::soft_topk_mag_jvp<double>(x, n, state, {}, g, out); }, "mag jvp, " + what);
  }
  // the derivatives need the state: an empty one is the wrong size too
  expect_state_named([&] { sparsetopk::soft_topk_mask_vjp<double>(x, n, {}, {}, g, out); }, "mask vjp, no state");
  expect_state_named([&] { sparsetopk::soft_topk_mag_vjp<double>(x, n, {}, {}, g, out); }, "mag vjp, no state");
}

// ---- fallbacks: no block, k = 0, k = n ----------------------------------------

struct Batch {
  std::vector<double> x;
  std::size_t rows = 1, n = 1, k = 0;
  double l = 1, p = 2;
  Solver solver = Solver::automatic;
  Form form = Form::mask;
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
  b.form = *rc::gen::element(Form::mask, Form::magnitude);
  return b;
}

std::vector<double> keys_of(Form form, std::vector<double> row) {
  if (form == Form::magnitude)
    for (auto& v : row) v = std::fabs(v);
  return row;
}

// Without a multi-entry block, gamma is the (k+1)-th largest key (-inf if k =
// n) and the band is empty.
STK_PROP(RowState, GammaWithoutBlockIsTheNextLargestKeyAndTheBandIsEmpty, 100) {
  const auto n = static_cast<std::size_t>(*rc::gen::inRange(1, 12));
  const auto k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(n) + 1));
  const Form form = *rc::gen::element(Form::mask, Form::magnitude);
  // Keys at least 1 apart and l = 1e-3: every block is a singleton.
  auto x = stk_test::gen_distinct_row(n, 1.0, 2.0, form == Form::magnitude ? 1.0 : stk_test::gen_grid(-5, 5));
  if (form == Form::magnitude)
    for (auto& v : x)
      if (*rc::gen::arbitrary<bool>()) v = -v;
  Saved saved;
  stk_test::soft(form, x, n, k, 1e-3, stk_test::gen_p(), &saved, nullptr, stk_test::gen_solver());
  auto keys = keys_of(form, x);
  std::sort(keys.begin(), keys.end(), std::greater<>());
  const double expected = k == n ? -kInf : keys[k];
  const RowState& s = saved.state[0];
  RC_LOG() << "x=" << stk_test::show(x) << " k=" << k << " " << name(form) << " gamma=" << s.gamma << "\n";
  RC_ASSERT(s.gamma == expected);
  RC_ASSERT(s.first_key == -kInf);
  RC_ASSERT(stk_test::band(form, saved, x, 0).empty());
  RC_ASSERT(s.block_weight == 0.0);
}

// k = 0: every output is 0, gamma is the largest key (w = 0: v = s, no
// block), the band is empty and the derivatives are exactly 0. Ties allowed.
STK_PROP(RowState, KZeroHasTheLargestKeyAnEmptyBandAndZeroDerivatives, 100) {
  Batch b = gen_batch();
  b.k = 0;
  Saved saved;
  const auto y = stk_test::soft(b.form, b.x, b.n, 0, b.l, b.p, &saved, nullptr, b.solver);
  const auto d = stk_test::gen_row(b.x.size(), -1, 1, 9973);
  const auto jv = stk_test::jvp(b.form, saved, b.x, d), jtd = stk_test::vjp(b.form, saved, b.x, d);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const auto keys = keys_of(b.form, {b.x.begin() + static_cast<std::ptrdiff_t>(r * b.n),
                                       b.x.begin() + static_cast<std::ptrdiff_t>((r + 1) * b.n)});
    RC_ASSERT(saved.state[r].gamma == *std::max_element(keys.begin(), keys.end()));
    RC_ASSERT(stk_test::band(b.form, saved, b.x, r).empty());
  }
  for (std::size_t i = 0; i < y.size(); ++i) {
    RC_ASSERT(y[i] == 0.0);
    RC_ASSERT(jv[i] == 0.0);
    RC_ASSERT(jtd[i] == 0.0);
  }
}

// k = n: gamma is -inf and the band empty; the mask is 1 with a zero Jacobian,
// the magnitude returns x with the identity Jacobian (0 on zero entries).
STK_PROP(RowState, KEqualToNHasNoThresholdAndAnEmptyBand, 100) {
  Batch b = gen_batch();
  b.k = b.n;
  if (*rc::gen::arbitrary<bool>()) b.x[*rc::gen::inRange<std::size_t>(0, b.x.size())] = 0.0;
  Saved saved;
  const auto y = stk_test::soft(b.form, b.x, b.n, b.n, b.l, b.p, &saved, nullptr, b.solver);
  const auto d = stk_test::gen_row(b.x.size(), -1, 1, 9973);
  const auto jv = stk_test::jvp(b.form, saved, b.x, d), jtd = stk_test::vjp(b.form, saved, b.x, d);
  for (std::size_t r = 0; r < b.rows; ++r) {
    RC_ASSERT(saved.state[r].gamma == -kInf);
    RC_ASSERT(saved.state[r].block_weight == 0.0);
    RC_ASSERT(stk_test::band(b.form, saved, b.x, r).empty());
  }
  for (std::size_t i = 0; i < y.size(); ++i) {
    const bool mask = b.form == Form::mask;
    RC_ASSERT(y[i] == (mask ? 1.0 : b.x[i]));
    const double expected = mask || b.x[i] == 0.0 ? 0.0 : d[i];
    RC_ASSERT(jv[i] == expected);
    RC_ASSERT(jtd[i] == expected);
  }
}

// ---- the band and its c_i ---------------------------------------------------------

// SPEC.md, "Derivatives": c_i = ((q-1)/l) (u_i/l)^(q-2), u_i = s_i - gamma, on
// every band entry strictly inside (mask: 0 < u_i < l; magnitude: u_i > 0),
// with s_i = x_i (mask) or |x_i| (magnitude).
STK_PROP(RowState, BandWeightsFollowTheSpecFormula, 150) {
  const Batch b = gen_batch();
  Saved saved;
  stk_test::soft(b.form, b.x, b.n, b.k, b.l, b.p, &saved, nullptr, b.solver);
  const double q = b.p / (b.p - 1);
  std::size_t inside = 0;
  for (std::size_t r = 0; r < b.rows; ++r) {
    std::size_t previous = 0;
    const auto band = stk_test::band(b.form, saved, b.x, r);
    for (std::size_t j = 0; j < band.size(); ++j) {
      const std::size_t i = band[j].index;
      RC_ASSERT(i < b.n);
      RC_ASSERT(j == 0 || i > previous);  // column order
      previous = i;
      const double key = b.form == Form::mask ? b.x[r * b.n + i] : std::fabs(b.x[r * b.n + i]);
      const double u = (key - saved.state[r].gamma) / b.l;
      if (u <= 0.0 || (b.form == Form::mask && u >= 1.0)) continue;
      ++inside;
      const double expected = (q - 1) / b.l * std::pow(u, q - 2);
      RC_LOG() << name(b.form) << " row " << r << " i=" << i << " c=" << band[j].c << " expected " << expected << "\n";
      RC_ASSERT(std::fabs(band[j].c - expected) <= 1e-8 * (1 + std::fabs(expected)));
    }
  }
  RC_CLASSIFY(inside > 0, "band entries inside");
}

// The band holds the entries from (first_key, first_index) to (last_key,
// last_index) in sorted order (key descending, ties by the lower index).
STK_PROP(RowState, BandIsTheSortedRunBetweenItsFirstAndLastEntries, 100) {
  const Batch b = gen_batch();
  Saved saved;
  stk_test::soft(b.form, b.x, b.n, b.k, b.l, b.p, &saved, nullptr, b.solver);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const RowState& s = saved.state[r];
    const auto indices = stk_test::band_indices(b.form, saved, b.x, r);
    const auto keys = keys_of(b.form, {b.x.begin() + static_cast<std::ptrdiff_t>(r * b.n),
                                       b.x.begin() + static_cast<std::ptrdiff_t>((r + 1) * b.n)});
    const auto before = [&](double key_a, double a, double key_b, double b_index) {
      return key_a > key_b || (key_a == key_b && a < b_index);
    };
    for (std::size_t i = 0; i < b.n; ++i) {
      const double at = static_cast<double>(i);
      const bool inside = s.first_key != -kInf && !before(keys[i], at, s.first_key, s.first_index) &&
                          !before(s.last_key, s.last_index, keys[i], at);
      RC_ASSERT(inside == (std::find(indices.begin(), indices.end(), i) != indices.end()));
    }
    if (!indices.empty()) {
      RC_ASSERT(keys[static_cast<std::size_t>(s.first_index)] == s.first_key);
      RC_ASSERT(keys[static_cast<std::size_t>(s.last_index)] == s.last_key);
    }
  }
}

STK_PROP(RowState, MagnitudeEntriesOutsideTheBandAreUnchangedExactlyFromTheThreshold, 100) {
  Batch b = gen_batch();
  b.form = Form::magnitude;
  Saved saved;
  const auto y = stk_test::mag(b.x, b.n, b.k, b.l, b.p, &saved, nullptr, b.solver);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const auto indices = stk_test::band_indices(b.form, saved, b.x, r);
    for (std::size_t i = 0; i < b.n; ++i) {
      const double xi = b.x[r * b.n + i], yi = y[r * b.n + i];
      if (std::find(indices.begin(), indices.end(), i) != indices.end() || xi == 0.0) continue;
      RC_LOG() << "r=" << r << " i=" << i << " x=" << xi << " out=" << yi
               << " unchanged_from=" << saved.state[r].unchanged_from << "\n";
      if (std::fabs(xi) >= saved.state[r].unchanged_from) {
        RC_ASSERT(yi == xi);
      } else {
        RC_ASSERT(yi == 0.0);
      }
    }
  }
}

STK_PROP(RowState, MaskEntriesOutsideTheBandAreSaturatedExactlyFromTheThreshold, 100) {
  const Batch b = gen_batch();
  Saved saved;
  const auto y = stk_test::mask(b.x, b.n, b.k, b.l, b.p, &saved, nullptr, b.solver);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const auto indices = stk_test::band_indices(Form::mask, saved, b.x, r);
    for (std::size_t i = 0; i < b.n; ++i) {
      const double xi = b.x[r * b.n + i], yi = y[r * b.n + i];
      if (std::find(indices.begin(), indices.end(), i) != indices.end()) continue;
      RC_LOG() << "r=" << r << " i=" << i << " x=" << xi << " out=" << yi
               << " unchanged_from=" << saved.state[r].unchanged_from << "\n";
      RC_ASSERT(yi == (xi >= saved.state[r].unchanged_from ? 1.0 : 0.0));
    }
  }
}

STK_PROP(RowState, BlockWeightCountsTopEntriesInTheBand, 100) {
  // With distinct keys, W_B = number of band entries among the hard top k.
  const auto n = static_cast<std::size_t>(*rc::gen::inRange(2, 12));
  const auto k = static_cast<std::size_t>(*rc::gen::inRange<int>(1, static_cast<int>(n)));
  const auto x = stk_test::gen_distinct_row(n, 0.01, 0.5, stk_test::gen_grid(-2, 2));
  const double l = *rc::gen::element(0.3, 1.0, 3.0);
  Saved saved;
  stk_test::mask(x, n, k, l, stk_test::gen_p(), &saved, nullptr, stk_test::gen_solver());
  const auto hard = ref::hard_mask(x, k);
  double top_in_band = 0;
  for (std::size_t i : stk_test::band_indices(Form::mask, saved, x, 0)) top_in_band += hard[i];
  RC_ASSERT(saved.state[0].block_weight == top_in_band);
}

// ---- derivatives from the state ------------------------------------------------

// The VJP from the saved state (the band's c_i recomputed from x) is the
// gradient of <g, out(x)>, by central differences, on a row with entries in
// the band, saturated or unchanged, and zero. Coordinates within the step of
// a kink (p = 2) are skipped; most are checked.
TEST(RowState, VjpFromTheStateMatchesFiniteDifferences) {
  const std::vector<double> x{1.9, -0.7, 1.25, 0.31, 0.93, -0.42, 2.6, 0.05};
  const std::vector<double> g{0.3, -1.1, 0.8, 0.45, -0.25, 1.3, -0.6, 0.9};
  const std::size_t n = x.size(), k = 3;
  const double h = 1e-6;
  for (Form form : {Form::mask, Form::magnitude})
    for (double p : {4.0 / 3.0, 1.5, 2.0, 3.0}) {
      const double l = 0.8;
      Saved saved;
      const auto y = stk_test::soft(form, x, n, k, l, p, &saved);
      ASSERT_FALSE(stk_test::band(form, saved, x, 0).empty()) << name(form) << " p = " << p;
      const auto grad = stk_test::vjp(form, saved, x, g);
      const auto value = [&](const std::vector<double>& at) {
        const auto out = stk_test::soft(form, at, n, k, l, p);
        double total = 0;
        for (std::size_t i = 0; i < n; ++i) total += g[i] * out[i];
        return total;
      };
      std::size_t checked = 0;
      for (std::size_t j = 0; j < n; ++j) {
        auto xp = x, xm = x;
        xp[j] += h;
        xm[j] -= h;
        const double f0 = value(x), fp = value(xp), fm = value(xm);
        const double right = (fp - f0) / h, left = (f0 - fm) / h, central = (fp - fm) / (2 * h);
        if (std::fabs(right - left) > 1e-4 * (1 + std::fabs(central))) continue;  // a kink
        ++checked;
        EXPECT_NEAR(grad[j], central, 1e-6 * (1 + std::fabs(central))) << name(form) << " p = " << p << " j = " << j;
      }
      EXPECT_GE(checked, n - 2) << name(form) << " p = " << p;
    }
}

// A state kept as plain doubles (a float64 tensor of shape [rows, 7] in the
// frameworks) and copied back gives bitwise the same derivatives.
STK_PROP(RowState, StateKeptAsDoublesGivesTheSameDerivatives, 100) {
  const Batch b = gen_batch();
  Saved saved;
  stk_test::soft(b.form, b.x, b.n, b.k, b.l, b.p, &saved, nullptr, b.solver);
  std::vector<double> doubles(saved.rows() * RowState::size);
  std::memcpy(doubles.data(), saved.state.data(), doubles.size() * sizeof(double));
  Saved restored = saved;
  std::fill(restored.state.begin(), restored.state.end(), RowState{});
  std::memcpy(static_cast<void*>(restored.state.data()), doubles.data(), doubles.size() * sizeof(double));
  RC_ASSERT(stk_test::same_bytes(restored.state, saved.state));
  const auto d = stk_test::gen_row(b.x.size(), -1, 1, 9973);
  RC_ASSERT(stk_test::vjp(b.form, restored, b.x, d) == stk_test::vjp(b.form, saved, b.x, d));
  RC_ASSERT(stk_test::jvp(b.form, restored, b.x, d) == stk_test::jvp(b.form, saved, b.x, d));
}

// ---- non-finite rows -------------------------------------------------------------

TEST(RowState, NonFiniteRowHasNaNGammaNaNDerivativesAndLeavesOtherRowsUnchanged) {
  const std::vector<double> good{0.3, -1.0, 2.0, 1.1};
  for (double bad_value : {kNaN, kInf, -kInf})
    for (Form form : {Form::mask, Form::magnitude}) {
      const std::vector<double> bad{0.3, bad_value, 2.0, 1.1};
      std::vector<double> x(good);
      x.insert(x.end(), bad.begin(), bad.end());
      x.insert(x.end(), good.begin(), good.end());
      const std::vector<double> g{0.5, -0.25, 1.0, 0.75, 0.5, -0.25, 1.0, 0.75, 0.5, -0.25, 1.0, 0.75};
      Saved saved, one;
      const auto y = stk_test::soft(form, x, 4, 2, 0.8, 2.0, &saved);
      const auto y1 = stk_test::soft(form, good, 4, 2, 0.8, 2.0, &one);
      const std::string what = std::string(name(form)) + " with " + std::to_string(bad_value);
      ASSERT_EQ(saved.rows(), 3u);
      EXPECT_TRUE(std::isnan(saved.state[1].gamma)) << what;
      EXPECT_TRUE(stk_test::band(form, saved, x, 1).empty()) << what;
      EXPECT_TRUE(stk_test::same_bytes(std::span(saved.state).subspan(0, 1), one.state)) << what;
      EXPECT_TRUE(stk_test::same_bytes(std::span(saved.state).subspan(2, 1), one.state)) << what;
      const std::vector<double> g1(g.begin(), g.begin() + 4);
      for (const bool transpose : {false, true}) {
        const auto d = stk_test::derivative(form, transpose, saved, x, g);
        const auto d1 = stk_test::derivative(form, transpose, one, good, g1);
        for (std::size_t i = 0; i < 4; ++i) {
          EXPECT_TRUE(std::isnan(d[4 + i])) << what << " i = " << i;
          EXPECT_EQ(d[i], d1[i]) << what << " i = " << i;
          EXPECT_EQ(d[8 + i], d1[i]) << what << " i = " << i;
        }
      }
      for (std::size_t i = 0; i < 4; ++i) {
        EXPECT_TRUE(std::isnan(y[4 + i])) << what << " i = " << i;
        EXPECT_EQ(y[i], y1[i]) << what << " i = " << i;
        EXPECT_EQ(y[8 + i], y1[i]) << what << " i = " << i;
      }
    }
}

}  // namespace
