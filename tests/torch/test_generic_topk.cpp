// The device-generic operators of src/torch/generic (ATen ops only) against
// the exact CPU core of <sparsetopk/topk.hpp>, on CPU tensors: outputs, the
// saved state (c, row_state), VJP and JVP, for random, tied and hostile rows
// and every p the docs name; then meta tensors (shapes and dtypes only); then
// the batched Dykstra (generic::dykstra_rows) against the core's; and the
// per-row templates of src/core/row instantiated with tensors against the
// same templates with doubles.
//
// Tolerances (docs/generic.md, "Exactness"): the two solve the same equations
// with different roundings, so each output may differ by 1e-12 of its scale
// plus the core's own error bound (core_error_bound; in float32, one float ulp
// more). Where they differ by more than 1e-12, an extended-precision
// reference shows that the generic path is the exact one. Each test prints its
// largest deviations.

#include <gtest/gtest.h>

#include <sparsetopk/dykstra.hpp>
#include <sparsetopk/topk.hpp>
#include <sparsetopk/torch.hpp>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "block_equation.hpp"
#include "generic/generic_kernel.hpp"
#include "generic/tensor_elementwise.hpp"
#include "generic/topk_generic.hpp"
#include "regularizer.hpp"
#include "root_finding.hpp"
#include "spans.hpp"

namespace {

namespace generic = sparsetopk::torch::generic;
using Operator = sparsetopk::Form;
using sparsetopk::RowState;
using sparsetopk::torch::detail::in_span;
using sparsetopk::torch::detail::out_span;
using sparsetopk::torch::detail::state_span;
constexpr int64_t S = static_cast<int64_t>(RowState::size);  // doubles per row of a state

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kEps = DBL_EPSILON;
const std::vector<double> kPs = {4.0 / 3.0, 2.0, 1.5, 3.0, 1.1, 10.0};

const char* name_of(Operator op) { return op == Operator::mask ? "mask" : "mag"; }

// ---- the core on a [R, n] tensor ----

struct CoreForward {
  at::Tensor out, c, state;  // c: dense_c of the state
};

// The band's c_i at a [R, RowState::size] state, as the core recomputes them
// from x: c_i >= 0 on the band, -1 elsewhere, NaN on a row with gamma NaN.
at::Tensor dense_c(Operator op, const at::Tensor& x, const at::Tensor& state_rows, double l, double p) {
  const at::Tensor xd = x.to(at::kDouble).contiguous(), st = state_rows.to(at::kDouble).contiguous();
  at::Tensor c = at::full(x.sizes(), -1.0, xd.options());
  const auto n = static_cast<std::size_t>(x.size(1));
  const sparsetopk::SoftTopkOptions options{l, p};
  const std::span<const RowState> states = state_span(st);
  for (std::size_t r = 0; r < states.size(); ++r) {
    double* c_row = c.data_ptr<double>() + r * n;
    if (std::isnan(states[r].gamma)) {
      std::fill(c_row, c_row + n, kNaN);
      continue;
    }
    const std::span<const double> row(xd.data_ptr<double>() + r * n, n);
    const auto band = op == Operator::mask ? sparsetopk::soft_topk_mask_band<double>(row, states[r], options)
                                           : sparsetopk::soft_topk_mag_band<double>(row, states[r], options);
    for (const sparsetopk::BandEntry& e : band) c_row[e.index] = e.c;
  }
  return c;
}

template <class T>
void core_soft(Operator op, const at::Tensor& x, int64_t k, double l, double p, CoreForward& r) {
  const auto n = static_cast<std::size_t>(x.size(1));
  const sparsetopk::SoftTopkOptions options{l, p, sparsetopk::Solver::automatic};
  if (op == Operator::mask)
    sparsetopk::soft_topk_mask<T>(in_span<T>(x), n, static_cast<std::size_t>(k), out_span<T>(r.out), options,
                                  state_span(r.state));
  else
    sparsetopk::soft_topk_mag<T>(in_span<T>(x), n, static_cast<std::size_t>(k), out_span<T>(r.out), options,
                                 state_span(r.state));
}

CoreForward core_forward(Operator op, const at::Tensor& x, int64_t k, double l, double p) {
  CoreForward r;
  r.out = at::empty_like(x);
  r.state = at::empty({x.size(0), S}, x.options().dtype(at::kDouble));
  if (x.scalar_type() == at::kDouble) core_soft<double>(op, x, k, l, p, r);
  else core_soft<float>(op, x, k, l, p, r);
  r.c = dense_c(op, x, r.state, l, p);
  return r;
}

template <class T>
void core_product_typed(Operator op, bool transpose, const at::Tensor& state, const at::Tensor& x,
                        const at::Tensor& v, double l, double p, at::Tensor& out) {
  const auto n = static_cast<std::size_t>(x.size(1));
  const sparsetopk::SoftTopkOptions options{l, p};
  const auto xs = in_span<T>(x), vs = in_span<T>(v);
  if (op == Operator::mask) {
    if (transpose) sparsetopk::soft_topk_mask_vjp<T>(xs, n, state_span(state), options, vs, out_span<T>(out));
    else sparsetopk::soft_topk_mask_jvp<T>(xs, n, state_span(state), options, vs, out_span<T>(out));
  } else {
    if (transpose) sparsetopk::soft_topk_mag_vjp<T>(xs, n, state_span(state), options, vs, out_span<T>(out));
    else sparsetopk::soft_topk_mag_jvp<T>(xs, n, state_span(state), options, vs, out_span<T>(out));
  }
}

// The core's products at a [R, RowState::size] state of the forward on x.
at::Tensor core_product(Operator op, bool transpose, const at::Tensor& state, const at::Tensor& x,
                        const at::Tensor& v, double l, double p) {
  at::Tensor out = at::empty_like(v);
  const at::Tensor st = state.to(at::kDouble).contiguous(), xv = x.to(v.scalar_type()).contiguous();
  if (v.scalar_type() == at::kDouble) core_product_typed<double>(op, transpose, st, xv, v, l, p, out);
  else core_product_typed<float>(op, transpose, st, xv, v, l, p, out);
  return out;
}

std::vector<double> values(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kDouble).contiguous();
  return {d.data_ptr<double>(), d.data_ptr<double>() + d.numel()};
}

// ---- comparison with conditioning-aware tolerances ----

struct Deviations {
  double out = 0, c = 0, gamma = 0, product = 0, product_same_state = 0, ratio = 0;
  long cases = 0, kinks = 0;
  void merge(const Deviations& o) {
    out = std::max(out, o.out), c = std::max(c, o.c), gamma = std::max(gamma, o.gamma);
    product = std::max(product, o.product), product_same_state = std::max(product_same_state, o.product_same_state);
    ratio = std::max(ratio, o.ratio);
    cases += o.cases;
    kinks += o.kinks;
  }
};

bool same_or_both_nan(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

// A row's values to the last digit, for the failure messages.
std::string row_text(const at::Tensor& row) {
  std::string text;
  char buffer[32];
  for (double v : values(row)) {
    std::snprintf(buffer, sizeof buffer, "%.17g ", v);
    text += buffer;
  }
  return text;
}

// How far the core's output and c may lie from the exact ones (docs/generic.md,
// "Exactness"): it reads u_i = s_i - gamma off a gamma rounded to about
// 8 eps |gamma|, so an output moves by dy/du times that and c by (q-2)/u_i
// relatively; an entry within 1e-6 |gamma| of gamma it solves again in offsets
// and gives what the row's condition leaves, which carries every other
// entry's error: 8 eps (|gamma| sum_j c_j + k (|gamma| for the magnitude)).
struct ErrorBound {
  double out, c;  // out: absolute; c: relative
};

ErrorBound core_error_bound(Operator op, double x, double c, double gamma, double c_sum, int64_t k, double q) {
  const bool mask = op == Operator::mask;
  const double key = mask ? x : std::abs(x), abs_gamma = std::isfinite(gamma) ? std::abs(gamma) : 0.0;
  const double c_plus = std::max(c, 0.0), scale = mask ? 1.0 : std::abs(x);
  const double u_error = 8 * kEps * abs_gamma, u = std::max(std::abs(key - gamma), DBL_MIN);
  double out_bound = 1e-12 * scale + u_error * (mask ? c_plus : 1.0 + c_plus);
  double c_bound = 1e-12 + std::abs(q - 2.0) * u_error / u;
  const bool near = std::abs(key - gamma) <= 1e-6 * abs_gamma + DBL_MIN;
  if (near && c_plus > 0) {
    const double share_error = 8 * kEps * (abs_gamma * c_sum + static_cast<double>(k) * (mask ? 1.0 : abs_gamma));
    const double power = c_plus * u / (q - 1.0);  // pow(u/l, q-1) = c u / (q-1)
    out_bound += share_error * (mask ? 1.0 : 1.0 + 1.0 / c_plus);
    c_bound += std::abs(q - 2.0) / (q - 1.0) * share_error / std::max(power, DBL_MIN);
  }
  return {out_bound, c_bound};
}

// Checks one forward pass and its products; returns the deviations found
// (relative to the scale of each quantity; `ratio`: the worst deviation over its tolerance).
Deviations check_against_core(Operator op, const at::Tensor& x, int64_t k, double l, double p,
                              const std::string& what) {
  Deviations dev;
  dev.cases = 1;
  const bool is_float = x.scalar_type() == at::kFloat;
  const CoreForward core = core_forward(op, x, k, l, p);
  const generic::SoftResult mine = generic::soft_topk_rows(op, x, k, l, p, /*save=*/true);
  EXPECT_EQ(mine.out.scalar_type(), x.scalar_type()) << what;
  EXPECT_EQ(mine.row_state.scalar_type(), at::kDouble) << what;
  EXPECT_EQ(mine.row_state.sizes(), core.state.sizes()) << what;
  const at::Tensor mine_c = dense_c(op, x, mine.row_state, l, p);
  const int64_t rows = x.size(0), n = x.size(1);
  const std::vector<double> xs = values(x), out_core = values(core.out), out_mine = values(mine.out);
  const std::vector<double> c_core = values(core.c), c_mine = values(mine_c);
  const std::vector<double> st_core = values(core.state), st_mine = values(mine.row_state);
  const double q = p / (p - 1.0);
  std::vector<double> row_c_error(static_cast<std::size_t>(rows), 1e-12), row_c_max(static_cast<std::size_t>(rows), 0.0);
  std::vector<bool> row_at_kink(static_cast<std::size_t>(rows), false);  // a one-sided derivative: J(own) may differ
  for (int64_t r = 0; r < rows; ++r) {
    const double gamma = st_core[r * S], gamma_mine = st_mine[r * S];
    const std::string at_row = what + " row " + std::to_string(r);
    double key_max = 0.0, c_sum = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      key_max = std::max(key_max, std::abs(xs[static_cast<std::size_t>(r * n + j)]));
      c_sum += std::max(c_core[static_cast<std::size_t>(r * n + j)], 0.0);
    }
    // gamma: the core's is exact to the ulps of the keys it is solved from (mean + t in its closed forms)
    if (std::isfinite(gamma)) {
      const double d = std::abs(gamma_mine - gamma);
      dev.gamma = std::max(dev.gamma, d / std::max(std::abs(gamma), DBL_MIN));
      EXPECT_LE(d, 1e-12 * std::abs(gamma) + 16 * kEps * key_max + 2 * DBL_TRUE_MIN)
          << at_row << " gamma " << gamma_mine << " vs " << gamma;
    } else {
      EXPECT_TRUE(same_or_both_nan(gamma_mine, gamma)) << at_row << " gamma " << gamma_mine << " vs " << gamma;
    }
    for (int64_t j = 0; j < n; ++j) {
      const std::size_t i = static_cast<std::size_t>(r * n + j);
      const std::string at_entry = at_row + " col " + std::to_string(j);
      const ErrorBound bound = core_error_bound(op, xs[i], c_core[i], gamma, c_sum, k, q);
      const double tolerance = bound.out + (is_float ? std::abs(out_core[i]) * 0x1p-23 + 1e-45 : 0.0);
      // c: the same active entries, values within the bound. At a kink (an output within
      // its tolerance of 0, 1 or x_i) either side's c is a (one-sided) derivative.
      const bool same_pattern = same_or_both_nan(c_mine[i] >= 0 ? 1.0 : c_mine[i], c_core[i] >= 0 ? 1.0 : c_core[i]);
      if (!same_pattern) {
        const double y = out_core[i], edge = op == Operator::mask ? 1.0 : xs[i];
        const bool at_kink = std::min(std::abs(y), std::abs(y - edge)) <= tolerance;
        EXPECT_TRUE(at_kink) << at_entry << " c " << c_mine[i] << " vs " << c_core[i] << " (x = " << xs[i]
                             << ", out = " << y << ")\n  x = " << row_text(x[r]);
        ++dev.kinks;
        row_at_kink[r] = true;
      }
      if (same_pattern && c_core[i] > 0) {
        const double d = std::abs(c_mine[i] - c_core[i]) / c_core[i];
        dev.c = std::max(dev.c, d);
        dev.ratio = std::max(dev.ratio, d / bound.c);
        EXPECT_LE(d, bound.c) << at_entry << " c " << c_mine[i] << " vs " << c_core[i] << "\n  x = " << row_text(x[r]);
        row_c_error[r] = std::max(row_c_error[r], d);
        row_c_max[r] = std::max(row_c_max[r], c_core[i]);
      }
      if (std::isnan(out_core[i])) {
        EXPECT_TRUE(std::isnan(out_mine[i])) << at_entry;
        continue;
      }
      const double d = std::abs(out_mine[i] - out_core[i]);
      dev.out = std::max(dev.out, d / std::max(op == Operator::mask ? 1.0 : std::abs(xs[i]), std::abs(out_core[i])));
      dev.ratio = std::max(dev.ratio, d / tolerance);
      EXPECT_LE(d, tolerance) << at_entry << " out " << out_mine[i] << " vs " << out_core[i] << " (x = " << xs[i]
                              << ", c = " << c_core[i] << ")\n  x = " << row_text(x[r]);
    }
    // W_B and unchanged_from exactly (unchanged_from to the ulp of the core's window bound),
    // except at a kink, where the state is that of one side
    if (row_at_kink[r]) continue;
    EXPECT_TRUE(same_or_both_nan(st_mine[r * S + 1], st_core[r * S + 1]))
        << at_row << " W_B " << st_mine[r * S + 1] << " vs " << st_core[r * S + 1] << "\n  x = " << row_text(x[r]);
    const double uf = st_core[r * S + 2], uf_mine = st_mine[r * S + 2];
    EXPECT_TRUE(same_or_both_nan(uf_mine, uf) || std::abs(uf_mine - uf) <= 4 * kEps * std::abs(uf))
        << at_row << " unchanged_from " << uf_mine << " vs " << uf << "\n  x = " << row_text(x[r]);
  }
  // products: mine at my state against the core at its state, and both at the core's state
  const at::Tensor v = at::randn(x.sizes(), x.options());
  for (bool transpose : {true, false}) {
    const std::vector<double> vs = values(v);
    const std::vector<double> core_p = values(core_product(op, transpose, core.state, x, v, l, p));
    const std::vector<double> mine_p =
        values(generic::jacobian_product_rows(op, transpose, v, x, mine.row_state, l, p));
    const at::Tensor same_state = generic::jacobian_product_rows(op, transpose, v, x, core.state, l, p);
    EXPECT_EQ(same_state.scalar_type(), v.scalar_type());
    const std::vector<double> same_p = values(same_state);
    const std::vector<double> core_same = values(core_product(op, transpose, core.state, x, v, l, p));
    for (int64_t r = 0; r < rows; ++r) {
      double v_max = 0.0;
      for (int64_t j = 0; j < n; ++j) v_max = std::max(v_max, std::abs(vs[r * n + j]));
      const double scale = std::max(v_max * (1.0 + row_c_max[r]), DBL_MIN);
      const double float_slack = is_float ? 4 * 0x1p-23 : 0.0;
      for (int64_t j = 0; j < n; ++j) {
        const std::size_t i = static_cast<std::size_t>(r * n + j);
        const std::string at_entry = what + (transpose ? " vjp" : " jvp") + " row " + std::to_string(r) + " col " +
                                     std::to_string(j);
        if (std::isnan(core_p[i])) {
          EXPECT_TRUE(std::isnan(mine_p[i]) && std::isnan(same_p[i])) << at_entry;
          continue;
        }
        const double d_same = std::abs(same_p[i] - core_same[i]) / scale;
        dev.product_same_state = std::max(dev.product_same_state, d_same);
        EXPECT_LE(d_same, 1e-13 + float_slack) << at_entry << " same state " << same_p[i] << " vs " << core_same[i];
        if (row_at_kink[r]) continue;
        const double d = std::abs(mine_p[i] - core_p[i]) / scale;
        dev.product = std::max(dev.product, d);
        EXPECT_LE(d, 8 * row_c_error[r] + float_slack) << at_entry << " " << mine_p[i] << " vs " << core_p[i];
      }
    }
  }
  return dev;
}

at::Tensor doubles(std::vector<double> v, int64_t rows) {
  const auto n = static_cast<int64_t>(v.size()) / rows;
  return torch::tensor(v, torch::kDouble).reshape({rows, n});
}

// Per-p summary lines, printed at the end of a test.
struct Summary {
  std::map<double, Deviations> by_p;
  void add(double p, const Deviations& d) { by_p[p].merge(d); }
  void print(const char* title) const {
    std::printf("%s: max deviations from the core (relative to each quantity's scale)\n", title);
    std::printf("  %-8s %6s %10s %10s %10s %10s %10s %8s %6s\n", "p", "cases", "out", "c", "gamma", "J(own)",
                "J(same)", "dev/tol", "kinks");
    for (const auto& [p, d] : by_p)
      std::printf("  %-8.4g %6ld %10.2e %10.2e %10.2e %10.2e %10.2e %8.3f %6ld\n", p, d.cases, d.out, d.c, d.gamma,
                  d.product, d.product_same_state, d.ratio, d.kinks);
  }
};

// ---- forward, state and products against the core ----

TEST(GenericTopk, RandomRowsMatchTheCore) {
  at::manual_seed(12);
  Summary summary;
  const std::vector<double> ls = {1e-3, 0.05, 0.3, 1.0, 10.0};
  for (double p : kPs) {
    for (Operator op : {Operator::mask, Operator::magnitude}) {
      for (int trial = 0; trial < 24; ++trial) {
        const int64_t rows = 1 + trial % 5, n = 1 + (trial * 7) % 37;
        const int64_t k = (trial * 5) % (n + 1);
        const double l = ls[static_cast<std::size_t>(trial) % ls.size()];
        const auto type = trial % 3 == 2 ? at::kFloat : at::kDouble;
        const at::Tensor x = at::randn({rows, n}, at::TensorOptions().dtype(type));
        const std::string what = std::string(name_of(op)) + " p=" + std::to_string(p) + " n=" + std::to_string(n) +
                                 " k=" + std::to_string(k) + " l=" + std::to_string(l) +
                                 (type == at::kFloat ? " float" : " double");
        summary.add(p, check_against_core(op, x, k, l, p, what));
      }
    }
  }
  summary.print("random rows");
}

// Rows with many tied keys, tied keys straddling k, constant rows, near-ties
// one ulp apart and keys that differ in sign only.
TEST(GenericTopk, TiedRowsMatchTheCore) {
  at::manual_seed(7);
  Summary summary;
  for (double p : kPs) {
    for (Operator op : {Operator::mask, Operator::magnitude}) {
      for (double l : {1e-8, 1e-3, 0.2, 1.0, 30.0}) {
        const at::Tensor coarse = at::floor(at::randn({6, 24}, torch::kDouble) * 2.0) / 2.0;  // many ties
        const at::Tensor constant = at::full({2, 9}, 1.5, torch::kDouble);
        const at::Tensor straddle = doubles({3, 1, 1, 1, 0, -2, /**/ 2, 2, 2, 2, 1, 1, /**/ 1, 1, 0.5, 0.5, 0.5, 0.5}, 3);
        std::vector<double> near(16);
        for (std::size_t j = 0; j < near.size(); ++j) near[j] = std::nextafter(1.0, j < 8 ? 2.0 : 0.0) + (j % 3) * kEps;
        const at::Tensor near_ties = doubles(near, 1);
        const at::Tensor signs = doubles({-1, 1, -1, 1, 0.5, -0.5, 2, -2}, 1);
        for (const at::Tensor& x : {coarse, constant, straddle, near_ties, signs}) {
          for (int64_t k : {int64_t{1}, x.size(1) / 3, x.size(1) / 2, x.size(1) - 1}) {
            if (k < 0 || k > x.size(1)) continue;
            const std::string what = std::string(name_of(op)) + " ties p=" + std::to_string(p) +
                                     " l=" + std::to_string(l) + " k=" + std::to_string(k);
            summary.add(p, check_against_core(op, x, k, l, p, what));
            summary.add(p, check_against_core(op, x.to(at::kFloat), k, l, p, what + " float"));
          }
        }
      }
    }
  }
  summary.print("tied rows");
}

// Large and small magnitudes (up to 1e300 and subnormals), large offsets
// (1e8 + noise: every key within 1e-6 of the threshold), and l tiny and huge
// against the keys.
TEST(GenericTopk, HostileRowsMatchTheCore) {
  at::manual_seed(3);
  Summary summary;
  struct Case {
    double scale, offset, l;
  };
  const std::vector<Case> cases = {
      {1e300, 0, 1e297}, {1e150, 0, 1e149}, {1e150, 0, 1.0}, {1e-300, 0, 1e-301}, {1e-300, 0, 1.0},
      {1e-310, 0, 1e-310}, {1.0, 1e8, 1e-3}, {1.0, 1e8, 1.0}, {1e-6, 1.0, 1e-9}, {1.0, 0, 1e-12},
      {1.0, 0, 1e-8}, {1.0, 0, 1e6}, {1.0, 0, 1e8}, {1e3, -1e6, 1.0}};
  for (double p : kPs) {
    for (Operator op : {Operator::mask, Operator::magnitude}) {
      for (const Case& c : cases) {
        const at::Tensor x = at::randn({4, 19}, torch::kDouble) * c.scale + c.offset;
        for (int64_t k : {1, 5, 18}) {
          const std::string what = std::string(name_of(op)) + " hostile p=" + std::to_string(p) +
                                   " scale=" + std::to_string(c.scale) + " offset=" + std::to_string(c.offset) +
                                   " l=" + std::to_string(c.l) + " k=" + std::to_string(k);
          summary.add(p, check_against_core(op, x, k, c.l, p, what));
        }
      }
    }
  }
  summary.print("hostile rows");
}

// k = 0, k = n and n = 1: no block, the conventions of the core's state.
TEST(GenericTopk, EdgeSizesMatchTheCore) {
  at::manual_seed(5);
  for (double p : kPs) {
    for (Operator op : {Operator::mask, Operator::magnitude}) {
      for (auto type : {at::kDouble, at::kFloat}) {
        const at::Tensor x = at::randn({3, 6}, at::TensorOptions().dtype(type));
        for (int64_t k : {0, 6}) check_against_core(op, x, k, 0.5, p, std::string(name_of(op)) + " k=" + std::to_string(k));
        const at::Tensor one = at::randn({4, 1}, at::TensorOptions().dtype(type));
        for (int64_t k : {0, 1}) check_against_core(op, one, k, 0.5, p, std::string(name_of(op)) + " n=1");
      }
    }
  }
}

// A row holding NaN or +-inf is NaN (out, c, its VJP and JVP), with state
// (NaN, 0, NaN); the other rows are what they are on their own.
TEST(GenericTopk, NonFiniteRowsAreNaNAndLeaveTheOthersAlone) {
  const at::Tensor good = doubles({0.3, -1.2, 2.5, 0.0, 1.1, -0.4}, 1);
  for (Operator op : {Operator::mask, Operator::magnitude}) {
    for (double bad : {kNaN, kInf, -kInf}) {
      at::Tensor x = good.repeat({3, 1});
      x.index_put_({1, 2}, bad);
      check_against_core(op, x, 2, 0.5, 4.0 / 3.0, std::string(name_of(op)) + " non-finite");
      const generic::SoftResult all = generic::soft_topk_rows(op, x, 2, 0.5, 4.0 / 3.0, true);
      const generic::SoftResult alone = generic::soft_topk_rows(op, good, 2, 0.5, 4.0 / 3.0, true);
      EXPECT_TRUE(at::isnan(all.out[1]).all().item<bool>());
      EXPECT_TRUE(at::isnan(dense_c(op, x, all.row_state, 0.5, 4.0 / 3.0)[1]).all().item<bool>());
      EXPECT_TRUE(at::isnan(all.row_state[1][0]).item<bool>());
      EXPECT_EQ(all.row_state[1][1].item<double>(), 0.0);
      EXPECT_TRUE(at::equal(all.out[0], alone.out[0]) && at::equal(all.out[2], alone.out[0]));
      const at::Tensor v = at::ones_like(x);
      const at::Tensor grad = generic::jacobian_product_rows(op, true, v, x, all.row_state, 0.5, 4.0 / 3.0);
      EXPECT_TRUE(at::isnan(grad[1]).all().item<bool>());
      EXPECT_TRUE(at::isfinite(grad[0]).all().item<bool>());
    }
  }
}

// SPEC.md's known values, through the generic path.
TEST(GenericTopk, SpecKnownValues) {
  const at::Tensor x = doubles({-5, -2, 3, 1}, 1);
  const at::Tensor mask = generic::soft_topk_rows(Operator::mask, x, 2, 0.01, 4.0 / 3.0, false).out;
  const at::Tensor mag = generic::soft_topk_rows(Operator::magnitude, x, 2, 0.01, 4.0 / 3.0, false).out;
  EXPECT_TRUE(at::allclose(mask, doubles({0, 0, 1, 1}, 1), 0, 1e-12)) << mask;
  EXPECT_TRUE(at::allclose(mag, doubles({-5, 0, 3, 0}, 1), 0, 1e-12)) << mag;
  EXPECT_NEAR(mask.sum().item<double>(), 2.0, 1e-12);
}

// ---- against an extended-precision reference ----

// The exact outputs of one row, by bisection in long double (64-bit
// significand, exponents down to 1e-4951): first on tau itself, then on the
// offset d of tau from the smallest key above it, u_j = (s_j - edge) + d, so
// that u_j is exact to 1e-19 relative even where it is far below eps |tau|.
std::vector<long double> reference_row(Operator op, const std::vector<double>& x, int64_t k, double l_double,
                                       double p) {
  using real = long double;
  const real l = l_double, a = p == 2.0 ? 1.0L : (std::abs(p - 4.0 / 3.0) <= 1e-12 ? 3.0L : 1.0L / (p - 1.0L));
  std::vector<real> s;
  for (double v : x) s.push_back(op == Operator::mask ? v : std::abs(v));
  std::vector<real> sorted = s;
  std::sort(sorted.begin(), sorted.end(), std::greater<real>());
  const auto residual = [&](real edge, real d) {  // non-decreasing in d, tau = edge - d
    real f = op == Operator::mask ? -static_cast<real>(k) : 0.0L;
    for (std::size_t j = 0; j < sorted.size(); ++j) {
      const real z = ((sorted[j] - edge) + d) / l;
      if (op == Operator::mask) f += std::pow(std::clamp(z, 0.0L, 1.0L), a);
      else if (static_cast<int64_t>(j) < k) f += std::min(std::pow(std::max(z, 0.0L), a) - (edge - d), 0.0L);
      else f += std::pow(std::max(z, 0.0L), a);
    }
    return f;
  };
  const auto bisect = [&](real edge, real lo, real hi) {
    for (int i = 0; i < 400; ++i) {
      const real mid = lo + (hi - lo) / 2;
      if (mid <= lo || mid >= hi) break;
      (residual(edge, mid) < 0 ? lo : hi) = mid;
    }
    return std::make_pair(lo, hi);
  };
  const real s_max = sorted.front(), s_min = sorted.back(), s_k = sorted[static_cast<std::size_t>(k - 1)];
  // plain coordinates d = -tau: tau in [s_min - l, s_max] (mask), gamma in [0, s_k] (magnitude)
  const auto [d_lo, d_hi] = op == Operator::mask ? bisect(0.0L, -s_max, -(s_min - l)) : bisect(0.0L, -s_k, 0.0L);
  const real tau = -(d_lo + (d_hi - d_lo) / 2);
  real edge = s_max;
  for (real v : s)
    if (v > tau && v < edge) edge = v;
  const auto [e_lo, e_hi] = bisect(edge, edge + d_lo - (edge - tau) * 1e-6L - 1e-4000L,
                                   edge + d_hi + (edge - tau) * 1e-6L + 1e-4000L);
  const real d = e_lo + (e_hi - e_lo) / 2, gamma = edge - d;
  std::vector<long double> out;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const real u = (s[i] - edge) + d, power = std::pow(std::max(u / l, 0.0L), a);
    if (op == Operator::mask) {
      out.push_back(std::pow(std::clamp(u / l, 0.0L, 1.0L), a));
    } else {
      const bool top = s[i] > s_k || (s[i] == s_k);  // ties of s_k: in the block or unchanged together
      const bool unchanged = top && power >= gamma && s[i] != s_k;
      out.push_back(unchanged ? static_cast<real>(x[i]) : std::copysign(std::min(power + std::max(u, 0.0L), s[i]), x[i]));
    }
  }
  return out;
}

// Rows where the core and the generic path differ by more than 1e-12: the
// generic outputs lie within a few ulps of the exact ones.
TEST(GenericTopk, HostileRowsAgainstAnExtendedPrecisionReference) {
  at::manual_seed(11);
  struct Case {
    Operator op;
    double scale, offset, l, p;
    int64_t k;
    double bound;  // on the generic path's relative error
  };
  // Subnormal keys: u_j = (s_j - edge) + d is exact but d is a multiple of
  // 4.9e-324, so an entry with u_j of a few hundred subnormal ulps has y_j to
  // about 1e-12 only (the core too); everywhere else a few ulps.
  const std::vector<Case> cases = {
      {Operator::mask, 1.0, 1e8, 1.0, 1.1, 5, 1e-13},         {Operator::mask, 1.0, 1e8, 1e-3, 4.0 / 3.0, 5, 1e-13},
      {Operator::magnitude, 1e3, -1e6, 1.0, 1.5, 5, 1e-13},   {Operator::magnitude, 1e3, -1e6, 1.0, 4.0 / 3.0, 5, 1e-13},
      {Operator::mask, 1e-310, 0.0, 1e-310, 10.0, 5, 1e-10},  {Operator::mask, 1.0, 0.0, 1e-12, 3.0, 7, 1e-13},
      {Operator::magnitude, 1.0, 1e4, 1e-6, 10.0, 3, 1e-13},  {Operator::mask, 1.0, 0.0, 0.3, 2.0, 9, 1e-13},
      {Operator::magnitude, 1.0, 0.0, 0.3, 1.1, 9, 1e-13},    {Operator::mask, 1.0, 1e3, 1e-9, 10.0, 4, 1e-13},
      {Operator::magnitude, 1.0, 1.0, 1e-7, 3.0, 6, 1e-13}};
  std::printf("extended-precision reference: max |out - exact| / (|exact| + 1e-20 scale)\n");
  std::printf("  %-5s %-8s %-8s %-8s %-8s %10s %10s\n", "op", "p", "scale", "offset", "l", "generic", "core");
  for (const Case& c : cases) {
    const at::Tensor x = at::randn({6, 19}, torch::kDouble) * c.scale + c.offset;
    const at::Tensor mine = generic::soft_topk_rows(c.op, x, c.k, c.l, c.p, false).out;
    const CoreForward core = core_forward(c.op, x, c.k, c.l, c.p);
    double worst_mine = 0.0, worst_core = 0.0;
    for (int64_t r = 0; r < x.size(0); ++r) {
      const std::vector<double> row = values(x[r]), a = values(mine[r]), b = values(core.out[r]);
      const std::vector<long double> exact = reference_row(c.op, row, c.k, c.l, c.p);
      for (std::size_t j = 0; j < row.size(); ++j) {
        // relative down to 1e-20 of the output's scale (1, or |x_j|)
        const long double scale = std::abs(exact[j]) + 1e-20L * (c.op == Operator::mask ? 1.0L : std::abs(row[j]));
        const double e_mine = static_cast<double>(std::abs(a[j] - exact[j]) / scale);
        const double e_core = static_cast<double>(std::abs(b[j] - exact[j]) / scale);
        worst_mine = std::max(worst_mine, e_mine);
        worst_core = std::max(worst_core, e_core);
        EXPECT_LE(e_mine, c.bound) << name_of(c.op) << " p=" << c.p << " l=" << c.l << " row " << r << " col " << j
                                 << ": " << a[j] << " vs exact " << static_cast<double>(exact[j]) << "\n  x = "
                                 << row_text(x[r]);
      }
    }
    std::printf("  %-5s %-8.4g %-8.2g %-8.2g %-8.2g %10.2e %10.2e\n", name_of(c.op), c.p, c.scale, c.offset, c.l,
                worst_mine, worst_core);
  }
}

// ---- hard operators ----

TEST(GenericTopk, HardOperatorsMatchTheCoreWithTiesInfinitiesAndNaN) {
  at::manual_seed(9);
  std::vector<at::Tensor> inputs = {at::randn({5, 13}, torch::kDouble),
                                    at::floor(at::randn({6, 17}, torch::kDouble)),  // ties
                                    doubles({-kInf, 2, kInf, 0.0, -0.0, 0.0, kInf, -kInf}, 1),
                                    doubles({1, kNaN, 2, 3, -0.0, 0.0, -0.0, 0.0}, 2)};
  for (const at::Tensor& x64 : inputs) {
    for (auto type : {at::kDouble, at::kFloat}) {
      const at::Tensor x = x64.to(type);
      const auto n = static_cast<std::size_t>(x.size(1));
      for (int64_t k = 0; k <= x.size(1); ++k) {
        for (Operator op : {Operator::mask, Operator::magnitude}) {
          at::Tensor expected = at::empty_like(x);
          if (type == at::kDouble) {
            if (op == Operator::mask) sparsetopk::hard_topk_mask<double>(in_span<double>(x), n, k, out_span<double>(expected));
            else sparsetopk::hard_topk_mag<double>(in_span<double>(x), n, k, out_span<double>(expected));
          } else {
            if (op == Operator::mask) sparsetopk::hard_topk_mask<float>(in_span<float>(x), n, k, out_span<float>(expected));
            else sparsetopk::hard_topk_mag<float>(in_span<float>(x), n, k, out_span<float>(expected));
          }
          const at::Tensor mine = generic::hard_topk_rows(op, x, k);
          ASSERT_EQ(mine.scalar_type(), type);
          const std::vector<double> a = values(mine), b = values(expected);
          for (std::size_t i = 0; i < a.size(); ++i)
            ASSERT_TRUE(same_or_both_nan(a[i], b[i])) << name_of(op) << " k=" << k << " i=" << i << ": " << a[i]
                                                      << " vs " << b[i] << "\n" << x;
        }
      }
    }
  }
}

// ---- Dykstra (p = 2): the batched ATen form against the core's dykstra.hpp ----

CoreForward core_dykstra(Operator op, const at::Tensor& x, int64_t k, double l, int64_t iterations) {
  CoreForward r;
  r.out = at::empty_like(x);
  r.state = at::empty({x.size(0), S}, x.options().dtype(at::kDouble));
  const auto n = static_cast<std::size_t>(x.size(1)), kept = static_cast<std::size_t>(k);
  const sparsetopk::DykstraOptions options{l, static_cast<std::size_t>(iterations)};
  const auto run = [&](auto zero) {
    using T = decltype(zero);
    if (op == Operator::mask)
      sparsetopk::soft_topk_mask_dykstra<T>(in_span<T>(x), n, kept, out_span<T>(r.out), options, state_span(r.state));
    else
      sparsetopk::soft_topk_mag_dykstra<T>(in_span<T>(x), n, kept, out_span<T>(r.out), options, state_span(r.state));
  };
  if (x.scalar_type() == at::kDouble) run(double{});
  else run(float{});
  r.c = dense_c(op, x, r.state, l, 2.0);
  return r;
}

// The same arithmetic in the same order: outputs, c, W_B and unchanged_from
// bitwise; gamma (a block mean, summed in another order) to 1e-13; the
// products at each one's state to 1e-13 of their scale (float32: the core's
// products are in float, the generic ones in double).
void check_dykstra_against_core(Operator op, const at::Tensor& x, int64_t k, double l, int64_t iterations,
                                const std::string& what) {
  const CoreForward core = core_dykstra(op, x, k, l, iterations);
  const generic::SoftResult mine = generic::dykstra_rows(op, x, k, l, iterations, /*save=*/true);
  EXPECT_EQ(mine.out.scalar_type(), x.scalar_type()) << what;
  EXPECT_TRUE(at::equal(mine.out.nan_to_num(7.0), core.out.nan_to_num(7.0))) << what << " out: max diff " << (mine.out - core.out).abs().max().item<double>();
  EXPECT_TRUE(at::equal(dense_c(op, x, mine.row_state, l, 2.0).nan_to_num(7.0), core.c.nan_to_num(7.0))) << what << " c";
  const at::Tensor rest = mine.row_state.narrow(1, 1, 2).nan_to_num(7.0), core_rest = core.state.narrow(1, 1, 2).nan_to_num(7.0);
  EXPECT_TRUE(at::equal(rest, core_rest)) << what << " W_B, unchanged_from\n" << mine.row_state << "\n" << core.state;
  const at::Tensor gamma = mine.row_state.select(1, 0), core_gamma = core.state.select(1, 0);
  EXPECT_TRUE(at::allclose(gamma, core_gamma, 1e-13, 1e-300, /*equal_nan=*/true)) << what << " gamma";
  const at::Tensor v = at::randn(x.sizes(), x.options());
  for (bool transpose : {true, false}) {
    const at::Tensor a = generic::jacobian_product_rows(op, transpose, v, x, mine.row_state, l, 2.0);
    const at::Tensor b = core_product(op, transpose, core.state, x, v, l, 2.0);
    const double scale = (1.0 + 1.0 / l) * v.abs().max().item<double>();
    const double tolerance = x.scalar_type() == at::kFloat ? 4 * 0x1p-23 : 1e-13;  // float: the core's arithmetic
    EXPECT_LE((a - b).nan_to_num(0.0).abs().max().item<double>(), tolerance * scale) << what << " products";
  }
}

TEST(GenericDykstra, MatchesTheCoresDykstra) {
  at::manual_seed(21);
  for (Operator op : {Operator::mask, Operator::magnitude}) {
    for (int64_t n : {1, 2, 3, 8, 33, 64}) {
      for (int64_t iterations : {1, 2, 7, 100, 3000}) {
        for (double l : {0.05, 0.3, 2.0}) {
          for (auto type : {at::kDouble, at::kFloat}) {
            const at::Tensor x = at::randn({5, n}, at::TensorOptions().dtype(type));
            const at::Tensor ties = at::floor(x * 2.0) / 2.0;
            for (int64_t k : {int64_t{0}, int64_t{1}, n / 3, n / 2, n - 1, n}) {
              if (k < 0 || k > n) continue;
              const std::string what = std::string(name_of(op)) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                                       " T=" + std::to_string(iterations) + " l=" + std::to_string(l) +
                                       (type == at::kFloat ? " float" : " double");
              check_dykstra_against_core(op, x, k, l, iterations, what);
              check_dykstra_against_core(op, ties, k, l, iterations, what + " ties");
            }
          }
        }
      }
    }
  }
}

TEST(GenericDykstra, NonFiniteRowsAreNaN) {
  at::Tensor x = at::randn({3, 6}, torch::kDouble);
  x.index_put_({1, 2}, kNaN);
  x.index_put_({2, 0}, -kInf);
  for (Operator op : {Operator::mask, Operator::magnitude}) check_dykstra_against_core(op, x, 2, 0.3, 50, name_of(op));
}

TEST(GenericDykstra, MetaTensorsGiveShapesAndDtypes) {
  for (auto type : {at::kDouble, at::kFloat}) {
    const at::Tensor x = at::empty({5, 11}, at::TensorOptions().dtype(type).device(at::kMeta));
    for (Operator op : {Operator::mask, Operator::magnitude}) {
      for (int64_t k : {0, 3, 11}) {
        const generic::SoftResult r = generic::dykstra_rows(op, x, k, 0.3, 1000, true);
        EXPECT_TRUE(r.out.is_meta() && r.row_state.is_meta());
        EXPECT_EQ(r.out.sizes(), x.sizes());
        EXPECT_EQ(r.out.scalar_type(), type);
        EXPECT_EQ(r.row_state.scalar_type(), at::kDouble);
        EXPECT_EQ(r.row_state.sizes(), (std::vector<int64_t>{5, S}));
      }
    }
  }
}

// ---- meta tensors: the same ops, shapes and dtypes only ----

TEST(GenericTopk, MetaTensorsGiveShapesAndDtypes) {
  for (auto type : {at::kDouble, at::kFloat}) {
    const at::Tensor x = at::empty({5, 11}, at::TensorOptions().dtype(type).device(at::kMeta));
    for (Operator op : {Operator::mask, Operator::magnitude}) {
      for (double p : {2.0, 4.0 / 3.0, 1.5}) {
        for (int64_t k : {0, 3, 11}) {
          const generic::SoftResult r = generic::soft_topk_rows(op, x, k, 0.3, p, true);
          EXPECT_TRUE(r.out.is_meta() && r.row_state.is_meta());
          EXPECT_EQ(r.out.sizes(), x.sizes());
          EXPECT_EQ(r.out.scalar_type(), type);
          EXPECT_EQ(r.row_state.scalar_type(), at::kDouble);
          EXPECT_EQ(r.row_state.sizes(), (std::vector<int64_t>{5, S}));
          EXPECT_FALSE(generic::soft_topk_rows(op, x, k, 0.3, p, false).row_state.defined());
          for (bool transpose : {true, false}) {
            const at::Tensor g = generic::jacobian_product_rows(op, transpose, x, x, r.row_state, 0.3, p);
            EXPECT_TRUE(g.is_meta());
            EXPECT_EQ(g.sizes(), x.sizes());
            EXPECT_EQ(g.scalar_type(), type);
          }
        }
      }
      const at::Tensor hard = generic::hard_topk_rows(op, x, 4);
      EXPECT_TRUE(hard.is_meta());
      EXPECT_EQ(hard.sizes(), x.sizes());
      EXPECT_EQ(hard.scalar_type(), type);
    }
  }
}

// Empty batches: rows of no entries get the CPU kernel's state (-inf, 0, +inf).
TEST(GenericTopk, EmptyBatches) {
  for (Operator op : {Operator::mask, Operator::magnitude}) {
    const generic::SoftResult none = generic::soft_topk_rows(op, at::empty({0, 4}, torch::kDouble), 2, 0.1, 2.0, true);
    EXPECT_EQ(none.out.sizes(), (std::vector<int64_t>{0, 4}));
    EXPECT_EQ(none.row_state.sizes(), (std::vector<int64_t>{0, S}));
    const generic::SoftResult empty_rows = generic::soft_topk_rows(op, at::empty({3, 0}), 0, 0.1, 2.0, true);
    EXPECT_EQ(empty_rows.out.sizes(), (std::vector<int64_t>{3, 0}));
    // per row: gamma -inf, W_B 0, unchanged_from +inf, no band, no near entries
    const std::vector<double> row{-kInf, 0, kInf, -kInf, 0, -kInf, 0, kInf, 0, kInf, 0};
    std::vector<double> expected;
    for (int r = 0; r < 3; ++r) expected.insert(expected.end(), row.begin(), row.end());
    EXPECT_EQ(values(empty_rows.row_state), expected);
    EXPECT_EQ(generic::hard_topk_rows(op, at::empty({3, 0}), 0).sizes(), (std::vector<int64_t>{3, 0}));
  }
}

}  // namespace

// ---- the per-row templates with T = at::Tensor against T = double ----
// (src/core/row/elementwise.hpp; the ATen path's specialization in
// src/torch/generic/tensor_elementwise.hpp). Entry by entry, within a few
// ulps: ATen's pow, hypot and cube root stand for libm's, and even its sqrt
// is not always correctly rounded (1 ulp off on 4.4872818348131878); the
// count of bitwise equal entries is printed.

namespace {

// |a - b| in ulps of the larger (0 for equal values or two NaNs).
double ulps_apart(double a, double b) {
  if (a == b || (std::isnan(a) && std::isnan(b))) return 0.0;
  const double larger = std::max(std::abs(a), std::abs(b));
  return std::abs(a - b) / (std::nextafter(larger, kInf) - larger);
}

at::Tensor tensor_of(const std::vector<double>& v) { return doubles(v, 1).reshape({-1}); }

// A struct of tensors with BlockMoments' fields, as the ATen path keeps them.
struct TensorMoments {
  at::Tensor count, weight, mean, unit, m2, m3;
};

}  // namespace

TEST(SharedTemplates, TheRegularizerOnTensorsIsTheCoresEntryByEntry) {
  using sparsetopk::detail::Regularizer;
  const std::vector<double> u = {0.0, 1e-300, 3e-7, 0.3, 1.0, 2.5, 1e5, 1e100};
  const at::Tensor ut = tensor_of(u);
  for (double p : kPs) {
    const Regularizer regularizer(p);
    const bool general = regularizer.kind() == Regularizer::Kind::general;
    const std::vector<double> power = values(regularizer.power(ut)), slope = values(regularizer.slope(ut));
    const std::vector<double> inverse = values(regularizer.inverse_power(ut));
    const std::vector<double> c = values(sparsetopk::detail::jacobian_weight(regularizer, ut, 0.01));
    for (std::size_t i = 0; i < u.size(); ++i) {
      const std::string at_u = "p = " + std::to_string(p) + ", u = " + std::to_string(u[i]);
      // q = 2 and 4: products only, bitwise; other p: at::pow for std::pow
      EXPECT_LE(ulps_apart(power[i], regularizer.power(u[i])), general ? 2.0 : 0.0) << at_u;
      EXPECT_LE(ulps_apart(slope[i], regularizer.slope(u[i])), general ? 2.0 : 0.0) << at_u;
      EXPECT_LE(ulps_apart(c[i], sparsetopk::detail::jacobian_weight(regularizer, u[i], 0.01)), general ? 2.0 : 0.0)
          << at_u;
      EXPECT_LE(ulps_apart(inverse[i], regularizer.inverse_power(u[i])),
                regularizer.kind() == Regularizer::Kind::quadratic ? 0.0 : 2.0)
          << at_u;
    }
  }
  // the sign-preserving power of SPEC.md, and c's cap
  const Regularizer p3(1.5);
  EXPECT_EQ(values(p3.power(tensor_of({-4.0})))[0], -16.0);
  EXPECT_EQ(values(sparsetopk::detail::jacobian_weight(Regularizer(1.01), tensor_of({1e10}), 1.0))[0], 1e280);
}

TEST(SharedTemplates, TheClosedFormsOnTensorsAreTheCoresEntryByEntry) {
  using sparsetopk::detail::solve_depressed_cubic;
  std::vector<double> P, Q;
  for (double p : {0.0, 1e-300, 1e-12, 0.5, 3.0, 1e10, 1e120, 1e300})
    for (double q : {0.0, 1e-310, 1e-200, 1e-5, 1.0, 7.0, 1e100, 1e250})
      for (double sign : {1.0, -1.0}) P.push_back(p), Q.push_back(sign * q);
  const std::vector<double> t = values(solve_depressed_cubic(tensor_of(P), tensor_of(Q)));
  int exact = 0;
  for (std::size_t i = 0; i < P.size(); ++i) {
    const double expected = solve_depressed_cubic(P[i], Q[i]);
    EXPECT_LE(ulps_apart(t[i], expected), 4.0) << "P = " << P[i] << ", Q = " << Q[i];
    exact += t[i] == expected;
  }
  std::printf("depressed cubic: %d of %zu entries bitwise the core's\n", exact, P.size());
  // a block's value from its moments (mask and magnitude, q = 2 and 4): the
  // moments of {3, 1, 0.5} with W = 2, of {1e-3} with W = 1 (a singleton), of
  // {2e7, 1e7} with W = 1 and l = 1e8 (kappa huge: the first-order value)
  struct Case {
    std::vector<double> s;
    double weight, l;
  };
  for (const Case& block : {Case{{3.0, 1.0, 0.5}, 2.0, 0.1}, Case{{1e-3}, 1.0, 0.1}, Case{{2e7, 1e7}, 1.0, 1e8}}) {
    sparsetopk::detail::BlockMoments m = sparsetopk::detail::BlockMoments::single(block.s[0], 1.0);
    for (std::size_t j = 1; j < block.s.size(); ++j)
      m.merge(sparsetopk::detail::BlockMoments::single(block.s[j], 1.0));
    m.weight = block.weight;
    const auto scalar = [](double v) { return doubles({v}, 1).reshape({-1}); };
    const TensorMoments mt{scalar(m.count), scalar(m.weight), scalar(m.mean), scalar(m.unit), scalar(m.m2), scalar(m.m3)};
    for (Operator op : {Operator::mask, Operator::magnitude}) {
      for (auto kind : {sparsetopk::detail::Regularizer::Kind::quadratic, sparsetopk::detail::Regularizer::Kind::quartic}) {
        const double expected = sparsetopk::detail::closed_form_value(op, kind, block.l, m);
        const double got = values(sparsetopk::detail::closed_form_value(op, kind, block.l, mt))[0];
        EXPECT_LE(ulps_apart(got, expected), 4.0) << name_of(op) << " block of " << block.s.size();
      }
    }
  }
}

// One step of find_decreasing_root's iteration (next_root_estimate) on a
// batch of brackets, against the same step on each bracket alone: the same
// bracket ends and last widths after it, bitwise, and the same next point (to
// 2 ulps: a split point is a product of ATen's square roots).
TEST(SharedTemplates, TheRootFindersStepOnTensorsIsTheCoresEntryByEntry) {
  at::manual_seed(11);
  const int64_t count = 4096;
  const at::Tensor a = at::randn({count}, torch::kDouble) * at::exp2(at::randint(-40, 40, {count}, torch::kDouble));
  const at::Tensor width = at::rand({count}, torch::kDouble) * at::exp2(at::randint(-60, 20, {count}, torch::kDouble));
  at::Tensor lo = a, hi = a + width;
  const at::Tensor x = lo + at::rand({count}, torch::kDouble) * (hi - lo);
  // residuals of both signs and 1 in 8 zero (the core stops there first; the
  // batch hands 0 for elements that are done, which must move nothing)
  const at::Tensor f = at::randn({count}, torch::kDouble) * (at::rand({count}, torch::kDouble) > 0.125);
  // steps: small and large, within and beyond the bracket, 1 in 16 not finite
  at::Tensor step = -at::sign(f) * width * at::exp2(at::randint(-70, 3, {count}, torch::kDouble));
  step = at::where(at::rand({count}, torch::kDouble) < 1.0 / 16, at::full_like(step, kNaN), step);
  at::Tensor last_width = width * at::exp2(at::randint(-70, 2, {count}, torch::kDouble));
  const std::vector<double> x0 = values(x), f0 = values(f), step0 = values(step), lo0 = values(lo), hi0 = values(hi),
                            last0 = values(last_width);
  const std::vector<double> next = values(sparsetopk::detail::next_root_estimate(x, f, step, lo, hi, last_width));
  const std::vector<double> lo1 = values(lo), hi1 = values(hi), last1 = values(last_width);
  int exact = 0;
  for (std::size_t i = 0; i < x0.size(); ++i) {
    double lo_i = lo0[i], hi_i = hi0[i], last_i = last0[i];
    const double next_i = sparsetopk::detail::next_root_estimate(x0[i], f0[i], step0[i], lo_i, hi_i, last_i);
    ASSERT_TRUE(ulps_apart(next[i], next_i) <= 2.0 && lo1[i] == lo_i && hi1[i] == hi_i && last1[i] == last_i)
        << "x = " << x0[i] << ", f = " << f0[i] << ", step = " << step0[i] << " in [" << lo0[i] << ", " << hi0[i]
        << "]: " << next[i] << " vs " << next_i;
    exact += next[i] == next_i;
  }
  std::printf("root finder's step: %d of %zu next points bitwise the core's\n", exact, x0.size());
}

// The top-k sum and loss of every device but the CPU (generic_kernel.cpp: from
// the generic mask) against the CPU ops (the core's topk_sum and topk_loss).
TEST(GenericTopk, TopkSumAndLossMatchTheCore) {
  torch::manual_seed(11);
  for (const double p : {4.0 / 3.0, 2.0, 1.5, 3.0}) {
    const auto x = torch::randn({6, 3, 9}, torch::kFloat64);
    const auto target = torch::randint(0, 9, {6, 3}, torch::kInt64);
    for (const int64_t k : {1, 2, 5, 9}) {
      SCOPED_TRACE("p = " + std::to_string(p) + ", k = " + std::to_string(k));
      const auto [value, mask, row_state] = sparsetopk::torch::detail::generic_topk_sum_forward(x, k, 0.5, p, -1);
      EXPECT_TRUE(torch::allclose(value, sparsetopk::torch::topk_sum(x, k, 0.5, p), 0.0, 1e-12));
      EXPECT_TRUE(torch::allclose(mask, sparsetopk::torch::soft_topk_mask(x, k, 0.5, p), 0.0, 1e-12));
      const auto [loss, grad] = sparsetopk::torch::detail::generic_topk_loss_forward(x.movedim(-1, 1), target, k, 0.5,
                                                                                     p, 1);
      const auto core_loss =
          sparsetopk::torch::topk_loss(x, target, k, 0.5, p, -1, sparsetopk::torch::Reduction::none);
      EXPECT_TRUE(torch::allclose(loss, core_loss, 0.0, 1e-11));
      EXPECT_TRUE(torch::equal(loss == 0, core_loss == 0));  // 0 exactly at the same labels
      const auto xg = x.clone().requires_grad_();
      sparsetopk::torch::topk_loss(xg, target, k, 0.5, p, -1, sparsetopk::torch::Reduction::sum).backward();
      EXPECT_TRUE(torch::allclose(grad.movedim(1, -1), xg.grad(), 0.0, 1e-12));
    }
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto x = torch::tensor({{1.0, nan, 0.0}, {1.0, 2.0, 3.0}}, torch::kFloat64);
  const auto [loss, grad] =
      sparsetopk::torch::detail::generic_topk_loss_forward(x, torch::tensor({0, 0}, torch::kInt64), 1, 0.1, 2.0, -1);
  EXPECT_TRUE(std::isnan(loss[0].item<double>()) && !std::isnan(loss[1].item<double>()));
  EXPECT_THROW(sparsetopk::torch::detail::generic_topk_loss_forward(x, torch::tensor({0, 3}, torch::kInt64), 1, 0.1,
                                                                    2.0, -1),
               c10::Error);
}
