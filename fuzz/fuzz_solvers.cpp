// Fuzz target: the soft top-k operators (mask and magnitude) with Solver::pav
// and Solver::threshold, their VJP/JVP, and the hard operators, on hostile rows
// (ties, zeros, magnitudes 1e-30..1e30, subnormals, occasionally NaN/+-inf).
//
// Input layout: n, k, l, p, scale, flags, then two bytes per entry (see
// fuzz_common.hpp), then bytes seeding the tangent vectors. Every property
// below aborts with a readable report when violated.

#include <sparsetopk/sparsetopk.hpp>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace stk_fuzz;
using sparsetopk::BandEntry;
using sparsetopk::RowState;
using sparsetopk::Solver;
using sparsetopk::SoftTopkOptions;

enum class Op { mask, mag };

struct Case {
  std::vector<double> x;
  std::size_t k = 0;
  double l = 1.0, p = 2.0;
  std::vector<double> u, v;  // cotangent and tangent for the adjoint check
  bool batch_check = false;
  bool finite = true;
  double scale = 0.0;  // max |x|

  std::string describe() const {
    char head[160];
    std::snprintf(head, sizeof head, "n = %zu, k = %zu, l = %.17g, p = %.17g\nx = ", x.size(), k, l, p);
    return head + show(x);
  }
};

const char* name(Op op) { return op == Op::mask ? "soft_topk_mask" : "soft_topk_mag"; }
const char* name(Solver s) { return s == Solver::pav ? "pav" : "threshold"; }

struct Result {
  std::vector<double> out, vjp, jvp;
  std::vector<RowState> state = std::vector<RowState>(1);  // the one row's
  std::vector<BandEntry> band;                               // recomputed from x and state
};

Result run_soft(const Case& c, Op op, Solver solver) {
  Result r;
  const std::size_t n = c.x.size();
  r.out.resize(n);
  r.vjp.resize(n);
  r.jvp.resize(n);
  const SoftTopkOptions options{c.l, c.p, solver};
  const std::span<const double> x(c.x);
  if (op == Op::mask) {
    sparsetopk::soft_topk_mask<double>(x, n, c.k, r.out, options, r.state);
    sparsetopk::soft_topk_mask_vjp<double>(x, n, r.state, options, c.u, r.vjp);
    sparsetopk::soft_topk_mask_jvp<double>(x, n, r.state, options, c.v, r.jvp);
    r.band = sparsetopk::soft_topk_mask_band<double>(x, r.state[0], options);
  } else {
    sparsetopk::soft_topk_mag<double>(x, n, c.k, r.out, options, r.state);
    sparsetopk::soft_topk_mag_vjp<double>(x, n, r.state, options, c.u, r.vjp);
    sparsetopk::soft_topk_mag_jvp<double>(x, n, r.state, options, c.v, r.jvp);
    r.band = sparsetopk::soft_topk_mag_band<double>(x, r.state[0], options);
  }
  return r;
}

std::string where(const Case& c, Op op, Solver solver, const std::vector<double>& out) {
  return c.describe() + "\n" + name(op) + " with Solver::" + name(solver) + "\nout = " + show(out);
}

std::string entry(const char* what, std::size_t i, double expected_or_bound, double got) {
  char buffer[200];
  std::snprintf(buffer, sizeof buffer, "%s at i = %zu: expected %.17g, got %.17g", what, i, expected_or_bound, got);
  return buffer;
}

// k-th and (k+1)-th largest keys (1-based), -inf/+inf when out of range.
void kth_keys(std::vector<double> keys, std::size_t k, double& s_k, double& s_next) {
  std::sort(keys.begin(), keys.end(), std::greater<double>());
  s_k = k >= 1 ? keys[k - 1] : kInf;
  s_next = k < keys.size() ? keys[k] : -kInf;
}

double signed_pow(double u, double a) { return u >= 0.0 ? std::pow(u, a) : -std::pow(-u, a); }

// The singleton magnitude value of key s with w = 1: gamma0 with
// pow((s - gamma0)/l, q-1) = gamma0; by bisection (an independent computation).
double singleton_magnitude_gamma(double s, double l, double p) {
  const double a = 1.0 / (p - 1.0);
  double lo = 0.0, hi = s;
  for (int i = 0; i < 400 && lo < hi; ++i) {
    const double mid = lo + 0.5 * (hi - lo);
    if (mid <= lo || mid >= hi) break;
    if (signed_pow((s - mid) / l, a) - mid > 0.0) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Equal keys get equal outputs (the operators are permutation-equivariant
// and their outputs unique), up to `tolerance` (an entry returned unchanged
// and a tied one computed in the block may differ by rounding).
void check_ties(const std::string& ctx, const std::vector<double>& keys, const std::vector<double>& out_keys,
                double tolerance) {
  for (std::size_t i = 0; i < keys.size(); ++i)
    for (std::size_t j = i + 1; j < keys.size(); ++j)
      if (keys[i] == keys[j] && !(std::abs(out_keys[i] - out_keys[j]) <= tolerance)) {
        char buffer[200];
        std::snprintf(buffer, sizeof buffer, "tied keys x[%zu] and x[%zu] got different outputs %.17g and %.17g", i, j,
                      out_keys[i], out_keys[j]);
        fail(ctx, buffer);
      }
}

std::vector<double> magnitudes(const std::vector<double>& x) {
  std::vector<double> a(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) a[i] = std::abs(x[i]);
  return a;
}

bool in_band(const std::vector<BandEntry>& band, std::size_t i) {
  return std::any_of(band.begin(), band.end(), [i](const BandEntry& entry) { return entry.index == i; });
}

void check_non_finite_row(const Case& c, Op op, Solver solver, const Result& r) {
  for (std::size_t i = 0; i < c.x.size(); ++i) {
    if (!std::isnan(r.out[i])) fail(where(c, op, solver, r.out), entry("non-finite row: output must be NaN", i, kNaN, r.out[i]));
    if (!std::isnan(r.vjp[i])) fail(where(c, op, solver, r.out), entry("non-finite row: VJP must be NaN", i, kNaN, r.vjp[i]));
    if (!std::isnan(r.jvp[i])) fail(where(c, op, solver, r.out), entry("non-finite row: JVP must be NaN", i, kNaN, r.jvp[i]));
  }
  if (!std::isnan(r.state[0].gamma)) fail(where(c, op, solver, r.out), "non-finite row: RowState gamma must be NaN");
  if (!r.band.empty()) fail(where(c, op, solver, r.out), "non-finite row: the band must be empty");
}

void check_mask(const Case& c, Solver solver, const Result& r) {
  const std::size_t n = c.x.size();
  const std::string ctx = where(c, Op::mask, solver, r.out);
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double y = r.out[i];
    if (!(y >= 0.0 && y <= 1.0)) fail(ctx, entry("mask outside [0, 1]", i, 0.5, y));
    sum += y;
  }
  const double k = static_cast<double>(c.k);
  const double tolerance = 1e-6;
  if (!(std::abs(sum - k) <= tolerance * k)) {
    char buffer[120];
    std::snprintf(buffer, sizeof buffer, "mask sum: expected %.17g (within %g k), got %.17g", k, tolerance, sum);
    fail(ctx, buffer);
  }
  // Exact structure: tau lies in [s_{k+1} - l, s_k), so entries at or below
  // s_{k+1} - l are exactly 0 and entries at or above s_k + l exactly 1.
  double s_k, s_next;
  kth_keys(c.x, c.k, s_k, s_next);
  const double margin = 8.0 * DBL_EPSILON * c.scale;
  for (std::size_t i = 0; i < n; ++i) {
    if (c.x[i] <= s_next - c.l - margin && r.out[i] != 0.0) fail(ctx, entry("mask entry far below the threshold", i, 0.0, r.out[i]));
    if (c.x[i] >= s_k + c.l + margin && r.out[i] != 1.0) fail(ctx, entry("mask entry far above the threshold", i, 1.0, r.out[i]));
    if (!in_band(r.band, i) && r.out[i] != 0.0 && r.out[i] != 1.0)
      fail(ctx, entry("mask entry outside the band is neither 0 nor 1", i, 0.0, r.out[i]));
  }
  check_ties(ctx, c.x, r.out, 1e-9);
}

void check_mag(const Case& c, Solver solver, const Result& r) {
  const std::size_t n = c.x.size();
  const std::string ctx = where(c, Op::mag, solver, r.out);
  std::vector<double> keys(n);
  for (std::size_t i = 0; i < n; ++i) keys[i] = std::abs(c.x[i]);
  double s_k, s_next;
  kth_keys(keys, c.k, s_k, s_next);
  // gamma lies in [gamma0(s_k), s_{k+1}]: keys at or below gamma0(s_k) give 0,
  // keys with pow((s_i - s_{k+1})/l, q-1) >= s_{k+1} come back unchanged.
  const double zero_below = c.k == 0 ? kInf : (c.k == n ? -kInf : singleton_magnitude_gamma(s_k, c.l, c.p));
  const double unchanged_from = c.k == n ? -kInf : (c.k == 0 ? kInf : s_next + c.l * std::pow(s_next, c.p - 1.0));
  const double slack = 16.0 * DBL_EPSILON * (c.k > 0 ? s_k : 0.0) + 4.0 * DBL_MIN;  // DBL_MIN: the root finder's floor
  for (std::size_t i = 0; i < n; ++i) {
    const double xi = c.x[i], yi = r.out[i], ai = std::abs(xi);
    if (!(std::abs(yi) <= ai)) fail(ctx, entry("|out_i| > |x_i|", i, xi, yi));
    if (yi != 0.0 && std::signbit(yi) != std::signbit(xi)) fail(ctx, entry("sign not preserved", i, xi, yi));
    // gamma is computed to about eps s_k absolutely (the block equation is
    // solved around the keys' mean), so "far" allows for that too, and an
    // entry "unchanged" may move by rounding at the row's scale (16 eps M,
    // plus the root finder's DBL_MIN floor).
    if (ai < zero_below * (1.0 - 1e-9) - slack && yi != 0.0) fail(ctx, entry("magnitude entry far below gamma is not 0", i, 0.0, yi));
    if (ai > unchanged_from * (1.0 + 1e-9) + slack && yi != xi &&
        !(std::abs(yi - xi) <= 16.0 * DBL_EPSILON * c.scale + 4.0 * DBL_MIN))
      fail(ctx, entry("magnitude entry far above the block is not unchanged", i, xi, yi));
    if (!in_band(r.band, i) && yi != 0.0 && yi != xi)
      fail(ctx, entry("magnitude entry outside the band is neither 0 nor x_i", i, xi, yi));
  }
  check_ties(ctx, keys, magnitudes(r.out), 1e-9 * c.scale + 4.0 * DBL_MIN);
}

void check_derivatives(const Case& c, Op op, Solver solver, const Result& r) {
  const std::size_t n = c.x.size();
  const std::string ctx = where(c, op, solver, r.out) + "\nu = " + show(c.u) + "\nv = " + show(c.v) +
                          "\nJ^T u = " + show(r.vjp) + "\nJ v = " + show(r.jvp);
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(r.vjp[i])) fail(ctx, entry("VJP not finite for a finite row", i, 0.0, r.vjp[i]));
    if (!std::isfinite(r.jvp[i])) fail(ctx, entry("JVP not finite for a finite row", i, 0.0, r.jvp[i]));
  }
  // <u, J v> = <J^T u, v>, up to rounding of terms bounded by `size`.
  double u_jv = 0.0, jtu_v = 0.0, size = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    u_jv += c.u[i] * r.jvp[i];
    jtu_v += r.vjp[i] * c.v[i];
    size += std::abs(c.u[i] * r.jvp[i]) + std::abs(r.vjp[i] * c.v[i]);
  }
  double c_sum = 0.0;
  for (const BandEntry& entry : r.band) c_sum += entry.c;
  size += (static_cast<double>(n) + 2.0 * c_sum) * max_abs(c.u) * max_abs(c.v);
  if (!(std::abs(u_jv - jtu_v) <= 1e-12 * size)) {
    char buffer[200];
    std::snprintf(buffer, sizeof buffer, "adjoint: <u, J v> = %.17g but <J^T u, v> = %.17g (scale %.3g)", u_jv, jtu_v, size);
    fail(ctx, buffer);
  }
}

// Solvers agree: within 1e-6 (mask) or 1e-6 max|x| (magnitude) when
// l >= 1e-6 max|x|; otherwise both outputs are finite (checked above).
void check_agreement(const Case& c, Op op, const Result& pav, const Result& threshold) {
  if (c.l < 1e-6 * c.scale) return;
  const double relative = 1e-6;
  // The magnitude is accurate to about DBL_MIN absolutely (the root finder's floor).
  const double tolerance = op == Op::mask ? relative : relative * c.scale + 4.0 * DBL_MIN;
  for (std::size_t i = 0; i < c.x.size(); ++i) {
    if (!(std::abs(pav.out[i] - threshold.out[i]) <= tolerance))
      fail(c.describe() + "\n" + name(op) + "\npav       = " + show(pav.out) + "\nthreshold = " + show(threshold.out),
           entry("solvers disagree (pav value expected)", i, pav.out[i], threshold.out[i]));
  }
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0 || (std::isnan(a) && std::isnan(b)); }

// Rows are independent: a row next to a NaN row gives the same output and VJP
// as on its own, bit for bit, and the NaN row gives NaN.
void check_batch(const Case& c, Op op, Solver solver, const Result& single) {
  const std::size_t n = c.x.size();
  std::vector<double> bad = c.x;
  bad[n / 2] = kNaN;
  for (int order = 0; order < 2; ++order) {
    std::vector<double> x, u;
    const std::vector<double>* rows[2] = {order ? &bad : &c.x, order ? &c.x : &bad};
    for (const auto* row : rows) x.insert(x.end(), row->begin(), row->end());
    u.insert(u.end(), c.u.begin(), c.u.end());
    u.insert(u.end(), c.u.begin(), c.u.end());
    std::vector<double> out(2 * n), grad(2 * n);
    std::vector<RowState> state(2);
    const SoftTopkOptions options{c.l, c.p, solver};
    if (op == Op::mask) {
      sparsetopk::soft_topk_mask<double>(x, n, c.k, out, options, state);
      sparsetopk::soft_topk_mask_vjp<double>(x, n, state, options, u, grad);
    } else {
      sparsetopk::soft_topk_mag<double>(x, n, c.k, out, options, state);
      sparsetopk::soft_topk_mag_vjp<double>(x, n, state, options, u, grad);
    }
    const std::size_t good = order ? n : 0, nan_row = order ? 0 : n;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string ctx = where(c, op, solver, single.out) + "\nbatch with a NaN row, order " + std::to_string(order);
      if (!same_bits(out[good + i], single.out[i])) fail(ctx, entry("row next to a NaN row changed", i, single.out[i], out[good + i]));
      if (!same_bits(grad[good + i], single.vjp[i])) fail(ctx, entry("VJP of a row next to a NaN row changed", i, single.vjp[i], grad[good + i]));
      if (!std::isnan(out[nan_row + i])) fail(ctx, entry("NaN row not NaN in a batch", i, kNaN, out[nan_row + i]));
      if (!std::isnan(grad[nan_row + i])) fail(ctx, entry("NaN row VJP not NaN in a batch", i, kNaN, grad[nan_row + i]));
    }
  }
}

// Hard operators: NaN rows give NaN; otherwise exactly the k largest keys
// (lower index first among ties; infinities ordered normally).
void check_hard(const Case& c) {
  const std::size_t n = c.x.size();
  const bool has_nan = std::any_of(c.x.begin(), c.x.end(), [](double v) { return std::isnan(v); });
  for (int magnitude = 0; magnitude < 2; ++magnitude) {
    std::vector<double> out(n);
    if (magnitude) sparsetopk::hard_topk_mag<double>(c.x, n, c.k, out);
    else sparsetopk::hard_topk_mask<double>(c.x, n, c.k, out);
    const std::string ctx = c.describe() + (magnitude ? "\nhard_topk_mag" : "\nhard_topk_mask") + "\nout = " + show(out);
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t{0});
    auto key = [&](std::size_t i) { return magnitude ? std::abs(c.x[i]) : c.x[i]; };
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) > key(b); });
    std::vector<double> expected(n, 0.0);
    for (std::size_t j = 0; j < c.k; ++j) expected[order[j]] = magnitude ? c.x[order[j]] : 1.0;
    for (std::size_t i = 0; i < n; ++i) {
      if (has_nan) {
        if (!std::isnan(out[i])) fail(ctx, entry("hard op: NaN row must give NaN", i, kNaN, out[i]));
      } else if (!same_bits(out[i], expected[i]) && !(out[i] == expected[i])) {
        fail(ctx, entry("hard op", i, expected[i], out[i]));
      }
    }
  }
}

// float32: never crashes; a finite row gives a finite mask in [0, 1] and a
// magnitude output with |out_i| <= |x_i|.
void check_float(const Case& c, Op op, Solver solver) {
  const std::size_t n = c.x.size();
  std::vector<float> x(n), out(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(c.x[i]);
  bool finite = true;
  for (float v : x) finite &= std::isfinite(v);
  const SoftTopkOptions options{c.l, c.p, solver};
  if (op == Op::mask) sparsetopk::soft_topk_mask<float>(x, n, c.k, out, options);
  else sparsetopk::soft_topk_mag<float>(x, n, c.k, out, options);
  for (std::size_t i = 0; i < n; ++i) {
    const std::string ctx = c.describe() + "\nfloat32 " + name(op) + " Solver::" + name(solver);
    if (!finite) {
      if (!std::isnan(out[i])) fail(ctx, entry("float32 non-finite row: output must be NaN", i, kNaN, out[i]));
      continue;
    }
    if (!std::isfinite(out[i])) fail(ctx, entry("float32 output not finite", i, 0.0, out[i]));
    if (op == Op::mask && !(out[i] >= 0.0f && out[i] <= 1.0f)) fail(ctx, entry("float32 mask outside [0, 1]", i, 0.5, out[i]));
    if (op == Op::mag && !(std::abs(out[i]) <= std::abs(x[i]))) fail(ctx, entry("float32 |out_i| > |x_i|", i, x[i], out[i]));
  }
}

Case decode(const std::uint8_t* data, std::size_t size) {
  ByteReader in(data, size);
  Case c;
  const std::size_t n = 1 + in.byte() % 64;
  c.k = in.byte() % (n + 1);
  c.l = pick(kLs, in.byte());
  c.p = pick(kPs, in.byte());
  const double scale = decode_scale(in);
  const std::uint8_t flags = in.byte();
  const bool allow_non_finite = (flags & 7) == 0;
  c.batch_check = (flags & 8) != 0;
  c.x = decode_row(in, n, scale, allow_non_finite);
  // Tangents: the remaining bytes mixed into a small LCG.
  std::uint64_t state = 0x9E3779B97F4A7C15ull ^ size;
  auto next = [&]() {
    state = state * 6364136223846793005ull + 1442695040888963407ull + in.byte();
    return static_cast<double>(static_cast<std::int64_t>(state >> 11) % 2001 - 1000) / 1000.0;
  };
  for (std::size_t i = 0; i < n; ++i) c.u.push_back(next());
  for (std::size_t i = 0; i < n; ++i) c.v.push_back(next());
  c.finite = all_finite(c.x);
  c.scale = max_abs(c.x);
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 6) return 0;
  const Case c = decode(data, size);
  static const bool verbose = std::getenv("STK_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s\nbatch check %d\n", c.describe().c_str(), c.batch_check ? 1 : 0);
  check_hard(c);
  for (Op op : {Op::mask, Op::mag}) {
    const Result pav = run_soft(c, op, Solver::pav);
    const Result threshold = run_soft(c, op, Solver::threshold);
    for (const auto* r : {&pav, &threshold}) {
      const Solver solver = r == &pav ? Solver::pav : Solver::threshold;
      if (!c.finite) {
        check_non_finite_row(c, op, solver, *r);
        continue;
      }
      for (std::size_t i = 0; i < c.x.size(); ++i)
        if (!std::isfinite(r->out[i])) fail(where(c, op, solver, r->out), entry("output not finite for a finite row", i, 0.0, r->out[i]));
      if (op == Op::mask) check_mask(c, solver, *r);
      else check_mag(c, solver, *r);
      check_derivatives(c, op, solver, *r);
    }
    if (c.finite) check_agreement(c, op, pav, threshold);
    if (c.batch_check) check_batch(c, op, Solver::threshold, threshold);
    check_float(c, op, c.batch_check ? Solver::pav : Solver::threshold);
  }
  return 0;
}
