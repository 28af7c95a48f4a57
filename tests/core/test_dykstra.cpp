// Dykstra's alternating projections for p = 2 (SPEC.md "Dykstra's algorithm"):
// convergence to the exact operators, exactness when nothing violates,
// derivatives from its saved state, threads, argument validation.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <sparsetopk/dykstra.hpp>
#include <sparsetopk/sparsetopk.hpp>
#include <string>
#include <vector>

#include "reference.hpp"
#include "test_support.hpp"

namespace {

sparsetopk::DykstraOptions dopts(double l, std::size_t iterations) {
  sparsetopk::DykstraOptions o;
  o.l = l;
  o.iterations = iterations;
  return o;
}

// The state for the derivatives, if asked for, is that of p = 2 (soft_topk_*_vjp with p = 2).
std::span<sparsetopk::RowState> state_of(stk_test::Saved* saved, const std::vector<double>& x, std::size_t n,
                                         double l) {
  return saved ? saved->prepare(x.size(), n, stk_test::options(l, 2.0)) : std::span<sparsetopk::RowState>();
}

std::vector<double> dmask(const std::vector<double>& x, std::size_t n, std::size_t k, double l,
                          std::size_t it, stk_test::Saved* saved = nullptr) {
  std::vector<double> out(x.size());
  sparsetopk::soft_topk_mask_dykstra<double>(x, n, k, out, dopts(l, it), state_of(saved, x, n, l));
  return out;
}

std::vector<double> dmag(const std::vector<double>& x, std::size_t n, std::size_t k, double l,
                         std::size_t it, stk_test::Saved* saved = nullptr) {
  std::vector<double> out(x.size());
  sparsetopk::soft_topk_mag_dykstra<double>(x, n, k, out, dopts(l, it), state_of(saved, x, n, l));
  return out;
}

struct Row {
  std::vector<double> x;
  std::size_t k = 0;
  double l = 1;
};

Row gen_row() {
  Row r;
  const auto n = static_cast<std::size_t>(*rc::gen::inRange(1, 11));
  r.x = stk_test::gen_row(n, -3, 3, 99991);
  r.k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(n) + 1));
  r.l = *rc::gen::element(0.1, 0.5, 1.0, 3.0);
  return r;
}

class DykstraByForm : public ::testing::TestWithParam<sparsetopk::Form> {};
INSTANTIATE_TEST_SUITE_P(Dykstra, DykstraByForm, ::testing::Values(sparsetopk::Form::mask, sparsetopk::Form::magnitude),
                         [](const auto& info) { return stk_test::form_name(info.param); });

// Within 1e-7 of the exact p = 2 operator (relative for the magnitude).
STK_PROP_P(DykstraByForm, ConvergesToTheExactP2Operator, 60) {
  const bool mask = param == sparsetopk::Form::mask;
  const Row r = gen_row();
  const auto y = mask ? dmask(r.x, r.x.size(), r.k, r.l, 20000) : dmag(r.x, r.x.size(), r.k, r.l, 20000);
  const auto expected = mask ? ref::soft_mask(r.x, r.k, r.l, 2.0).out : ref::soft_mag(r.x, r.k, r.l, 2.0).out;
  RC_LOG() << "x=" << stk_test::show(r.x) << " k=" << r.k << " l=" << r.l << "\ngot "
           << stk_test::show(y) << "\nexpected " << stk_test::show(expected) << "\n";
  for (std::size_t i = 0; i < y.size(); ++i)
    RC_ASSERT(std::fabs(y[i] - expected[i]) <= 1e-7 * (mask ? 1.0 : 1 + std::fabs(expected[i])));
}

// The k largest entries exceed the rest by at least l: z = s - l w is already
// non-increasing, so one iteration gives the exact (hard) mask.
STK_PROP(DykstraMask, IsExactAfterOneIterationWhenNothingViolates, 100) {
  const auto n = static_cast<std::size_t>(*rc::gen::inRange(1, 13));
  const auto k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(n) + 1));
  const double l = *rc::gen::element(0.1, 0.5, 1.0, 3.0);
  std::vector<double> x(n);
  for (std::size_t i = 0; i < n; ++i)
    x[i] = i < k ? l + stk_test::gen_grid(0, 5, 1000) : -stk_test::gen_grid(0, 5, 1000);
  const auto perm = stk_test::gen_permutation(n);
  std::vector<double> xp(n);
  for (std::size_t i = 0; i < n; ++i) xp[i] = x[perm[i]];
  const auto y = dmask(xp, n, k, l, 1);
  const auto expected = ref::soft_mask(xp, k, l, 2.0).out;
  for (std::size_t i = 0; i < n; ++i) RC_ASSERT(std::fabs(y[i] - expected[i]) <= 1e-12);
}

// |top| >= (1 + l) |rest|: z = s / (1 + l w) is non-increasing.
STK_PROP(DykstraMag, IsExactAfterOneIterationWhenNothingViolates, 100) {
  const auto n = static_cast<std::size_t>(*rc::gen::inRange(1, 13));
  const auto k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(n) + 1));
  const double l = *rc::gen::element(0.1, 0.5, 1.0, 3.0);
  std::vector<double> x(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double m =
        i < k ? (1 + l) * (1 + stk_test::gen_grid(0, 3, 1000)) : stk_test::gen_grid(0, 1, 1000);
    x[i] = *rc::gen::arbitrary<bool>() ? -m : m;
  }
  const auto y = dmag(x, n, k, l, 1);
  const auto expected = ref::soft_mag(x, k, l, 2.0).out;
  for (std::size_t i = 0; i < n; ++i)
    RC_ASSERT(std::fabs(y[i] - expected[i]) <= 1e-12 * (1 + std::fabs(x[i])));
}

TEST(DykstraMask, KnownValuesAreZeroZeroOneOne) {
  const auto y = dmask({-5, -2, 3, 1}, 4, 2, 0.01, 100);
  const std::vector<double> expected{0, 0, 1, 1};
  for (std::size_t i = 0; i < 4; ++i) EXPECT_NEAR(y[i], expected[i], 1e-6) << i;
}

TEST(DykstraMask, HandCaseConvergesToHandValue) {
  // p = 2 hand case of test_known_values: (1, 0, 0.825, 0.175).
  const auto y = dmask({3, -2, 1.5, 0.2}, 4, 2, 2.0, 1000);
  const std::vector<double> expected{1, 0, 0.825, 0.175};
  for (std::size_t i = 0; i < 4; ++i) EXPECT_NEAR(y[i], expected[i], 1e-9) << i;
}

TEST(DykstraMag, HandCaseConvergesToHandValue) {
  const auto y = dmag({3, -2, 1.5, 0.2}, 4, 2, 1.0, 1000);
  const std::vector<double> expected{3, -5.0 / 3, 2.0 / 3, 0};
  for (std::size_t i = 0; i < 4; ++i) EXPECT_NEAR(y[i], expected[i], 1e-9) << i;
}

TEST(Dykstra, VectorConvenienceEqualsBatchApi) {
  const std::vector<double> x{0.4, -1.1, 2.0, 0.35, 1.7, -0.2};
  EXPECT_EQ(sparsetopk::soft_topk_mask_dykstra(x, 3, dopts(0.7, 50)), dmask(x, 6, 3, 0.7, 50));
  EXPECT_EQ(sparsetopk::soft_topk_mag_dykstra(x, 3, dopts(0.7, 50)), dmag(x, 6, 3, 0.7, 50));
}

// Once converged, the block read off the solution gives the exact derivatives.
STK_PROP(Dykstra, ConvergedBlocksGiveExactVjp, 60) {
  const Row r = gen_row();
  const bool use_mag = *rc::gen::arbitrary<bool>();
  const std::size_t n = r.x.size();
  stk_test::Saved approx, exact;
  if (use_mag) {
    dmag(r.x, n, r.k, r.l, 20000, &approx);
    stk_test::mag(r.x, n, r.k, r.l, 2.0, &exact);
  } else {
    dmask(r.x, n, r.k, r.l, 20000, &approx);
    stk_test::mask(r.x, n, r.k, r.l, 2.0, &exact);
  }
  const auto g = stk_test::gen_row(n, -1, 1, 99991);
  const auto form = use_mag ? sparsetopk::Form::magnitude : sparsetopk::Form::mask;
  const auto ga = stk_test::vjp(form, approx, r.x, g), ge = stk_test::vjp(form, exact, r.x, g);
  RC_LOG() << "x=" << stk_test::show(r.x) << " k=" << r.k << " l=" << r.l
           << (use_mag ? " mag" : " mask") << "\ndykstra " << stk_test::show(ga) << "\nexact "
           << stk_test::show(ge) << "\n";
  for (std::size_t i = 0; i < n; ++i)
    RC_ASSERT(std::fabs(ga[i] - ge[i]) <= 1e-5 * (1 + std::fabs(ge[i])));
}

TEST(Dykstra, ResultsAreBitwiseIdenticalForOneAndSeveralThreads) {
  stk_test::ThreadCountGuard guard;
  const std::size_t rows = 300, n = 100, k = 21;
  std::vector<double> x(rows * n);
  std::uint64_t state = 987654321;
  for (auto& v : x) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    v = static_cast<double>(state % 100001) / 10000.0 - 5.0;
  }
  stk_test::Saved sm1, sg1, sm3, sg3;
  sparsetopk::set_num_threads(1);
  const auto m1 = dmask(x, n, k, 0.5, 200, &sm1);
  const auto g1 = dmag(x, n, k, 0.5, 200, &sg1);
  sparsetopk::set_num_threads(3);
  const auto m3 = dmask(x, n, k, 0.5, 200, &sm3);
  const auto g3 = dmag(x, n, k, 0.5, 200, &sg3);
  EXPECT_EQ(std::memcmp(m1.data(), m3.data(), m1.size() * sizeof(double)), 0);
  EXPECT_EQ(std::memcmp(g1.data(), g3.data(), g1.size() * sizeof(double)), 0);
  EXPECT_TRUE(stk_test::same_bytes(sm1.state, sm3.state));
  EXPECT_TRUE(stk_test::same_bytes(sg1.state, sg3.state));
}

void expect_invalid(const std::function<void()>& call, const std::string& name) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected InvalidArgument naming " << name;
  } catch (const sparsetopk::InvalidArgument& e) {
    EXPECT_TRUE(stk_test::names_word(e.what(), name))
        << "message does not name '" << name << "': " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

const std::vector<double> kX{0.5, -1.0, 2.0, 0.25};

TEST(DykstraArguments, ZeroIterationsThrowsNamingIterations) {
  expect_invalid([] { dmask(kX, 4, 2, 0.5, 0); }, "iterations");
  expect_invalid([] { dmag(kX, 4, 2, 0.5, 0); }, "iterations");
}

TEST(DykstraArguments, NonPositiveLThrowsNamingL) {
  expect_invalid([] { dmask(kX, 4, 2, 0.0, 10); }, "l");
  expect_invalid([] { dmag(kX, 4, 2, -1.0, 10); }, "l");
}

TEST(DykstraArguments, KGreaterThanNThrowsNamingK) {
  expect_invalid([] { dmask(kX, 4, 5, 0.5, 10); }, "k");
  expect_invalid([] { dmag(kX, 4, 5, 0.5, 10); }, "k");
}

TEST(DykstraArguments, OutSizeMismatchThrowsNamingOut) {
  std::vector<double> out(3);
  expect_invalid([&] { sparsetopk::soft_topk_mask_dykstra<double>(kX, 4, 2, out, dopts(0.5, 10)); },
                 "out");
  expect_invalid([&] { sparsetopk::soft_topk_mag_dykstra<double>(kX, 4, 2, out, dopts(0.5, 10)); },
                 "out");
}

}  // namespace
