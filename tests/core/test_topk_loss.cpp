// The smoothed top-k sum and the top-k loss (SPEC.md, "Smoothed top-k sum",
// "Top-k loss") against an independent computation: the mask's threshold by
// bisection in long double, the sparsemax loss by its sorting formula, and
// finite differences for the gradients and the Hessian.

#include <gtest/gtest.h>

#include <sparsetopk/errors.hpp>
#include <sparsetopk/topk.hpp>
#include <sparsetopk/topk_loss.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using sparsetopk::RowState;
using sparsetopk::SoftTopkOptions;
using Row = std::vector<double>;

// The soft mask by bisection on tau: sum_i clip((x_i - tau)/l, 0, 1)^(q-1) = k
// (120 halvings of a bracket a few units wide: below long double's resolution).
std::vector<long double> bisection_mask(const Row& x, std::size_t k, double l, double p) {
  const long double q_minus_1 = 1.0L / (p - 1.0L);
  auto entry = [&](double x_i, long double tau) { return std::pow(std::clamp((x_i - tau) / l, 0.0L, 1.0L), q_minus_1); };
  std::vector<long double> m(x.size(), 0.0L);
  if (k == 0) return m;
  long double lo = *std::min_element(x.begin(), x.end()) - 2.0L * l, hi = *std::max_element(x.begin(), x.end());
  for (int iteration = 0; iteration < 120; ++iteration) {
    const long double mid = (lo + hi) / 2;
    long double sum = 0.0L;
    for (double x_i : x) sum += entry(x_i, mid);
    (sum > k ? lo : hi) = mid;
  }
  for (std::size_t i = 0; i < x.size(); ++i) m[i] = entry(x[i], (lo + hi) / 2);
  return m;
}

// topk_sum = <m, x> - (l/p) sum m^p at the bisection mask.
long double reference_sum(const Row& x, std::size_t k, double l, double p) {
  const auto m = bisection_mask(x, k, l, p);
  long double value = 0.0L;
  for (std::size_t i = 0; i < x.size(); ++i) value += m[i] * x[i] - (l / p) * std::pow(m[i], (long double)p);
  return value;
}

long double reference_loss(const Row& x, std::size_t t, std::size_t k, double l, double p) {
  Row rest = x;
  rest.erase(rest.begin() + static_cast<std::ptrdiff_t>(t));
  return reference_sum(x, k, l, p) - x[t] - reference_sum(rest, k - 1, l, p) + l / p;
}

double topk_sum(const Row& x, std::size_t k, double l, double p, Row* mask = nullptr) {
  double value = 0.0;
  Row m(x.size());
  sparsetopk::topk_sum<double>(x, x.size(), k, std::span<double>(&value, 1), SoftTopkOptions{l, p}, m);
  if (mask) *mask = m;
  return value;
}

double topk_loss(const Row& x, std::size_t t, std::size_t k, double l, double p, Row* grad = nullptr) {
  double loss = 0.0;
  const std::int64_t target = static_cast<std::int64_t>(t);
  Row g(x.size());
  sparsetopk::topk_loss<double>(x, x.size(), std::span<const std::int64_t>(&target, 1), k,
                                std::span<double>(&loss, 1), SoftTopkOptions{l, p}, g);
  if (grad) *grad = g;
  return loss;
}

Row random_row(std::mt19937_64& rng, std::size_t n, bool ties) {
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> level(-2, 2);
  Row x(n);
  for (double& v : x) v = ties ? 0.5 * level(rng) : normal(rng);
  return x;
}

double scale_of(const Row& x) {
  return 1.0 + std::accumulate(x.begin(), x.end(), 0.0, [](double s, double v) { return s + std::abs(v); });
}

struct Case {
  double l, p;
};
const Case kCases[] = {{0.1, 4.0 / 3.0}, {0.5, 2.0}, {0.3, 1.5}, {1.0, 3.0}, {2.0, 4.0 / 3.0}};

TEST(TopkSum, MatchesTheBisectionReferenceAndItsBounds) {
  std::mt19937_64 rng(1);
  for (const Case c : kCases)
    for (std::size_t n : {1, 2, 7, 40})
      for (bool ties : {false, true}) {
        const Row x = random_row(rng, n, ties);
        Row sorted = x;
        std::sort(sorted.begin(), sorted.end(), std::greater<>());
        for (std::size_t k = 0; k <= n; ++k) {
          SCOPED_TRACE("n = " + std::to_string(n) + ", k = " + std::to_string(k) + ", p = " + std::to_string(c.p));
          const double value = topk_sum(x, k, c.l, c.p);
          EXPECT_NEAR(value, static_cast<double>(reference_sum(x, k, c.l, c.p)), 1e-11 * scale_of(x));
          const double hard = std::accumulate(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(k), 0.0);
          EXPECT_LE(value, hard + 1e-12 * scale_of(x));  // SPEC.md: hard_sum - (l/p) k <= topk_sum <= hard_sum
          EXPECT_GE(value, hard - c.l / c.p * static_cast<double>(k) - 1e-12 * scale_of(x));
        }
      }
}

TEST(TopkSum, GradientIsTheMaskAndHessianTheMaskJacobian) {
  std::mt19937_64 rng(2);
  const double h = 1e-6;
  for (const Case c : kCases) {
    const Row x = random_row(rng, 12, false);
    for (std::size_t k : {1, 4, 11}) {
      Row mask;
      topk_sum(x, k, c.l, c.p, &mask);
      Row expected_mask(x.size());
      sparsetopk::soft_topk_mask<double>(x, x.size(), k, expected_mask, SoftTopkOptions{c.l, c.p});
      EXPECT_EQ(mask, expected_mask);
      for (std::size_t i = 0; i < x.size(); ++i) {  // d topk_sum / dx_i = m_i
        Row up = x, down = x;
        up[i] += h, down[i] -= h;
        EXPECT_NEAR((topk_sum(up, k, c.l, c.p) - topk_sum(down, k, c.l, c.p)) / (2 * h), mask[i], 1e-6);
      }
      // H v through the mask's JVP at the state topk_sum saved, against (m(x + h v) - m(x - h v)) / 2h.
      Row v = random_row(rng, x.size(), false), value(1), m(x.size()), hv(x.size());
      std::vector<RowState> state(1);
      sparsetopk::topk_sum<double>(x, x.size(), k, value, SoftTopkOptions{c.l, c.p}, m, state);
      sparsetopk::soft_topk_mask_jvp<double>(x, x.size(), state, SoftTopkOptions{c.l, c.p}, v, hv);
      Row up = x, down = x, m_up, m_down;
      for (std::size_t i = 0; i < x.size(); ++i) up[i] += h * v[i], down[i] -= h * v[i];
      topk_sum(up, k, c.l, c.p, &m_up);
      topk_sum(down, k, c.l, c.p, &m_down);
      for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(hv[i], (m_up[i] - m_down[i]) / (2 * h), 1e-4);
    }
  }
}

TEST(TopkLoss, MatchesTheDefinitionAndIsZeroExactlyWhenTheLabelIsFullySelected) {
  std::mt19937_64 rng(3);
  int zero = 0, positive = 0;
  for (const Case c : kCases)
    for (std::size_t n : {1, 3, 10, 25})
      for (bool ties : {false, true}) {
        const Row x = random_row(rng, n, ties);
        for (std::size_t k = 1; k <= n; ++k) {
          Row mask(n);
          sparsetopk::soft_topk_mask<double>(x, n, k, mask, SoftTopkOptions{c.l, c.p});
          for (std::size_t t = 0; t < n; t += n > 10 ? 3 : 1) {
            SCOPED_TRACE("n = " + std::to_string(n) + ", k = " + std::to_string(k) + ", t = " + std::to_string(t));
            Row grad;
            const double loss = topk_loss(x, t, k, c.l, c.p, &grad);
            EXPECT_NEAR(loss, static_cast<double>(reference_loss(x, t, k, c.l, c.p)), 1e-10 * scale_of(x));
            EXPECT_NEAR(std::accumulate(grad.begin(), grad.end(), 0.0), 0.0, 1e-12);
            if (mask[t] == 1.0) {
              ++zero;
              EXPECT_EQ(loss, 0.0);
              EXPECT_TRUE(std::all_of(grad.begin(), grad.end(), [](double g) { return g == 0.0; }));
            } else {
              ++positive;
              EXPECT_GT(loss, 0.0);
            }
            if (k == n) {
              EXPECT_EQ(loss, 0.0);
            }
          }
        }
      }
  EXPECT_GT(zero, 100);
  EXPECT_GT(positive, 100);
}

TEST(TopkLoss, GradientMatchesFiniteDifferences) {
  std::mt19937_64 rng(4);
  const double h = 1e-6;
  for (const Case c : kCases) {
    const Row x = random_row(rng, 9, false);
    for (std::size_t k : {1, 3, 5})
      for (std::size_t t : {0, 4, 8}) {
        Row grad;
        topk_loss(x, t, k, c.l, c.p, &grad);
        for (std::size_t i = 0; i < x.size(); ++i) {
          Row up = x, down = x;
          up[i] += h, down[i] -= h;
          EXPECT_NEAR((topk_loss(up, t, k, c.l, c.p) - topk_loss(down, t, k, c.l, c.p)) / (2 * h), grad[i], 1e-6)
              << "k = " << k << ", t = " << t << ", i = " << i << ", p = " << c.p;
        }
      }
  }
}

// Martins and Astudillo (2016): sparsemax(z) = (z - tau)_+, tau from the sorted
// z; L(z, t) = -z_t + (1/2) sum_{j in S} (z_j^2 - tau^2) + 1/2. topk_loss with
// k = 1, p = 2 is l L(x / l, t).
double sparsemax_loss(const Row& x, std::size_t t, double l) {
  Row z(x.size()), sorted;
  for (std::size_t i = 0; i < x.size(); ++i) z[i] = x[i] / l;
  sorted = z;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  double prefix = 0.0, tau = 0.0;
  for (std::size_t j = 0; j < sorted.size(); ++j) {
    prefix += sorted[j];
    if (1.0 + static_cast<double>(j + 1) * sorted[j] > prefix) tau = (prefix - 1.0) / static_cast<double>(j + 1);
  }
  double loss = 0.5 - z[t];
  for (double z_j : z)
    if (z_j > tau) loss += 0.5 * (z_j * z_j - tau * tau);
  return l * loss;
}

TEST(TopkLoss, WithKOneAndPTwoIsTheSparsemaxLoss) {
  std::mt19937_64 rng(5);
  for (double l : {0.1, 0.7, 3.0})
    for (std::size_t n : {2, 5, 50}) {
      const Row x = random_row(rng, n, false);
      for (std::size_t t = 0; t < n; ++t)
        EXPECT_NEAR(topk_loss(x, t, 1, l, 2.0), sparsemax_loss(x, t, l), 1e-12 * scale_of(x) / l);
    }
}

TEST(TopkLoss, BatchesFloatAndNonFiniteRows) {
  const std::size_t n = 6;
  const Row x = {0.3, -1.0, 2.0, 0.1, 0.2, 0.25, /**/ 1.0, NAN, 0.0, 0.5, 0.4, 0.3};
  const std::vector<std::int64_t> target = {3, 0};
  Row loss(2), grad(x.size());
  sparsetopk::topk_loss<double>(x, n, target, 2, loss, SoftTopkOptions{0.2, 4.0 / 3.0}, grad);
  EXPECT_NEAR(loss[0], static_cast<double>(reference_loss(Row(x.begin(), x.begin() + 6), 3, 2, 0.2, 4.0 / 3.0)),
              1e-12);
  EXPECT_TRUE(std::isnan(loss[1]));
  EXPECT_TRUE(std::all_of(grad.begin() + 6, grad.end(), [](double g) { return std::isnan(g); }));

  std::vector<float> xf(x.begin(), x.begin() + 6), loss_f(1), grad_f(6);
  sparsetopk::topk_loss<float>(xf, n, std::span<const std::int64_t>(target.data(), 1), 2, loss_f,
                               SoftTopkOptions{0.2, 4.0 / 3.0}, grad_f);
  EXPECT_NEAR(loss_f[0], loss[0], 1e-6);
  for (std::size_t i = 0; i < n; ++i) EXPECT_NEAR(grad_f[i], grad[i], 1e-6);
}

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const sparsetopk::InvalidArgument& error) {
    return error.what();
  }
  return "no error";
}

TEST(TopkLoss, BadArgumentsAreNamed) {
  const Row x = {1.0, 2.0, 3.0, 4.0};
  Row loss(2);
  const std::vector<std::int64_t> good = {0, 1}, far = {0, 2}, negative = {-1, 0};
  const auto loss_of = [&](const std::vector<std::int64_t>& target, std::size_t k, double l = 0.1) {
    return error_of([&] { sparsetopk::topk_loss<double>(x, 2, target, k, loss, SoftTopkOptions{l, 2.0}); });
  };
  EXPECT_EQ(loss_of(good, 0), "sparsetopk: k = 0 is out of range [1, n = 2]");
  EXPECT_EQ(loss_of(good, 3), "sparsetopk: k = 3 is out of range [1, n = 2]");
  EXPECT_EQ(loss_of(far, 1), "sparsetopk: target[1] = 2 is out of range [0, n = 2)");
  EXPECT_EQ(loss_of(negative, 1), "sparsetopk: target[0] = -1 is out of range [0, n = 2)");
  EXPECT_EQ(loss_of(good, 1, 0.0), "sparsetopk: l must be finite and > 0, got l = 0");
  EXPECT_EQ(loss_of({0}, 1), "sparsetopk: target.size() = 1 differs from x's rows.size() = 2");
  Row value(3);
  EXPECT_EQ(error_of([&] { sparsetopk::topk_sum<double>(x, 2, 1, value); }),
            "sparsetopk: value.size() = 3 differs from x's rows.size() = 2");
}

}  // namespace
