// Fuzz target: solve_isotonic (both forms) on sorted fuzzed s and
// non-increasing fuzzed w. Checks that v is non-increasing, that the blocks
// partition [0, n) in order and carry v, and that every block satisfies its
// optimality conditions (SPEC.md, "Reduction") up to a perturbation of its
// value by a tiny fraction of the scale. Unsorted or non-finite input must be
// rejected with InvalidArgument, never crash.
//
// Input layout: n, l, p, scale, flags, two bytes per entry of s, one byte per
// step of w.

#include <sparsetopk/errors.hpp>
#include <sparsetopk/isotonic.hpp>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace stk_fuzz;
using sparsetopk::Form;

struct Case {
  std::vector<double> s, w;
  double l = 1.0, p = 2.0;
  Form form = Form::mask;

  std::string describe() const {
    char head[160];
    std::snprintf(head, sizeof head, "solve_isotonic(form = %s, l = %.17g, p = %.17g)\ns = ",
                  form == Form::mask ? "mask" : "magnitude", l, p);
    return head + show(s) + "\nw = " + show(w);
  }
};

double signed_pow(double u, double a) { return u >= 0.0 ? std::pow(u, a) : -std::pow(-u, a); }

// The gradient term of entry i at block value gamma, as SPEC.md's first-order
// condition: pow((s_i - gamma)/l, q-1) - w_i (mask) or - w_i gamma (magnitude).
// Increasing it moves gamma up; the sum over a block is 0 at its value.
double term(const Case& c, std::size_t i, double gamma) {
  const double a = 1.0 / (c.p - 1.0);
  const double rhs = c.form == Form::mask ? c.w[i] : c.w[i] * gamma;
  return signed_pow((c.s[i] - gamma) / c.l, a) - rhs;
}

void check_solution(const Case& c, const sparsetopk::IsotonicSolution& sol) {
  const std::size_t n = c.s.size();
  const std::string ctx = c.describe() + "\nv = " + show(sol.v);
  if (sol.v.size() != n) fail(ctx, "v has the wrong size");
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(sol.v[i])) fail(ctx, "v[" + std::to_string(i) + "] is not finite");
  for (std::size_t i = 1; i < n; ++i)
    if (sol.v[i] > sol.v[i - 1]) fail(ctx, "v is not non-increasing at i = " + std::to_string(i));
  std::size_t expected_begin = 0;
  for (std::size_t b = 0; b < sol.blocks.size(); ++b) {
    const auto& block = sol.blocks[b];
    const std::string id = "block " + std::to_string(b) + " [" + std::to_string(block.begin) + ", " +
                           std::to_string(block.end) + ")";
    if (block.begin != expected_begin || block.end <= block.begin || block.end > n)
      fail(ctx, id + " does not continue the partition of [0, n)");
    expected_begin = block.end;
    for (std::size_t i = block.begin; i < block.end; ++i)
      if (sol.v[i] != block.value) fail(ctx, id + ": v[" + std::to_string(i) + "] differs from the block value");
    // Optimality, allowing gamma to move by delta: the block's sum of terms
    // changes sign across [gamma - delta, gamma + delta], and every prefix of
    // the block has a sum <= 0 somewhere in it (a prefix with a positive sum
    // would have a higher value of its own and split off upwards) -- each up
    // to rounding of the terms.
    const double gamma = block.value;
    double s_scale = std::abs(gamma);
    for (std::size_t i = block.begin; i < block.end; ++i) s_scale = std::max(s_scale, std::abs(c.s[i]));
    const double delta = 1e-11 * s_scale + 4.0 * DBL_MIN;  // the root finder's absolute floor is DBL_MIN
    double low_sum = 0.0, high_sum = 0.0, low_size = 0.0, high_size = 0.0;
    for (std::size_t i = block.begin; i < block.end; ++i) {
      const double t_low = term(c, i, gamma - delta), t_high = term(c, i, gamma + delta);
      low_sum += t_low;
      high_sum += t_high;
      low_size += std::abs(t_low) + std::abs(c.w[i]);
      high_size += std::abs(t_high) + std::abs(c.w[i]);
      if (i + 1 < block.end && !(high_sum <= 1e-9 * high_size)) {
        char buffer[200];
        std::snprintf(buffer, sizeof buffer, "%s: prefix up to %zu wants to split off (sum %.17g at gamma + delta, gamma = %.17g)",
                      id.c_str(), i, high_sum, gamma);
        fail(ctx, buffer);
      }
    }
    if (!(low_sum >= -1e-9 * low_size) || !(high_sum <= 1e-9 * high_size)) {
      char buffer[240];
      std::snprintf(buffer, sizeof buffer,
                    "%s: first-order condition has no root near gamma = %.17g (sum %.17g at gamma - %.3g, %.17g at gamma + %.3g)",
                    id.c_str(), gamma, low_sum, delta, high_sum, delta);
      fail(ctx, buffer);
    }
  }
  if (expected_begin != n) fail(ctx, "blocks do not cover [0, n)");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 5) return 0;
  ByteReader in(data, size);
  Case c;
  const std::size_t n = in.byte() % 65;  // n = 0 allowed
  c.l = pick(kLs, in.byte());
  c.p = pick(kPs, in.byte());
  const double scale = decode_scale(in);
  const std::uint8_t flags = in.byte();
  c.form = (flags & 1) ? Form::magnitude : Form::mask;
  const bool hostile = (flags & 0x30) == 0x30;  // unsorted and non-finite input
  c.s = decode_row(in, n, scale, hostile);
  if (!hostile) std::sort(c.s.begin(), c.s.end(), std::greater<double>());
  // w: a start value and non-negative steps down; >= 0 for the magnitude form.
  double w = (flags & 2) ? static_cast<double>(in.byte()) / 16.0 : 1.0;
  for (std::size_t i = 0; i < n; ++i) {
    c.w.push_back(w);
    const std::uint8_t step = in.byte();
    w -= step < 160 ? 0.0 : (step < 220 ? 1.0 : static_cast<double>(step - 219) / 8.0);
    if (c.form == Form::magnitude) w = std::max(w, 0.0);
  }
  const bool valid = all_finite(c.s) && std::is_sorted(c.s.begin(), c.s.end(), std::greater<double>());
  static const bool verbose = std::getenv("STK_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s\n", c.describe().c_str());
  try {
    const auto solution = sparsetopk::solve_isotonic(c.s, c.w, c.l, c.p, c.form);
    if (!valid) fail(c.describe(), "invalid input accepted");
    check_solution(c, solution);
  } catch (const sparsetopk::InvalidArgument& e) {
    if (valid) fail(c.describe(), std::string("valid input rejected: ") + e.what());
  }
  return 0;
}
