// The operators of SPEC.md from batched ATen ops (design: docs/generic.md).
//
// Forward pass of a soft operator, for a batch of rows at once:
//   1. sort the keys (x for the mask, |x| for the magnitude) descending;
//   2. find the smooth piece of the threshold equation (SPEC.md, "Top-k
//      structure") that holds its root, by a binary search over the sorted
//      breakpoints of each row;
//   3. solve on that piece: closed form for p = 2 and p = 4/3, safeguarded
//      Newton for any other p;
//   4. solve again in offset form, tau = ref - d with ref the smallest key above
//      the threshold (when tau lies nearer it than 0), so that u_j = s_j - tau
//      = (s_j - ref) + d is exact where the outputs are most sensitive (what the
//      core's NearThreshold does for the entries within 1e-6 |tau| of tau);
//   5. read the outputs, the block and c off u, and scatter them back.

#include "topk_generic.hpp"

#include <ATen/ATen.h>

#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "band.hpp"
#include "block_equation.hpp"
#include "regularizer.hpp"
#include "root_finding.hpp"
#include "tensor_elementwise.hpp"

namespace sparsetopk::torch::generic {
namespace {

using at::Tensor;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// The per-row functions of src/core/row (target sparsetopk_row), written once
// for a double or a tensor (elementwise.hpp; tensor_elementwise.hpp here):
using sparsetopk::detail::Regularizer;         // pow(u, q-1), its slope and inverse
using sparsetopk::detail::closed_form_value;   // a block's value from its moments, q = 2 and 4
using sparsetopk::detail::jacobian_weight;     // c, capped
// and constants:
using sparsetopk::detail::kMaxRootIterations;  // find_decreasing_root's evaluations
using sparsetopk::detail::kNearRelative;       // near_tolerance: |s_j - gamma| <= 1e-6 |gamma| + DBL_MIN

// ---- small tensor helpers ----

// s[r, index[r]] for index [R, 1]; `fill` where index is outside [0, s.size(1)).
Tensor key_at(const Tensor& s, const Tensor& index, double fill) {
  const int64_t m = s.size(1);
  const Tensor inside = (index >= 0) & (index < m);
  return select(inside, s.gather(1, index.clamp(0, std::max<int64_t>(m - 1, 0))), fill);
}

// Column j of each row, as a [1, n] int64 tensor.
Tensor columns(int64_t n, const Tensor& like) { return at::arange(n, like.options().dtype(at::kLong)).unsqueeze(0); }

Tensor row_sum(const Tensor& t) { return t.sum({-1}, /*keepdim=*/true); }

// The first column where `flags` [R, n] holds in each row, n if none.
Tensor first_true(const Tensor& flags) {
  const Tensor any = flags.any(-1, /*keepdim=*/true);
  return select(any, flags.to(at::kByte).argmax(-1, /*keepdim=*/true), flags.size(1));
}

std::atomic<bool> device_mode{false};  // set_device_mode

// ---- the threshold equation of a batch of sorted rows ----

// A residual f(x) and its Newton step as the root finder is given them (its
// iteration is the core's, unchanged):
// - f is 0 where it lies within its rounding error, 4 eps `magnitude` (the
//   sum of its terms' magnitudes): its sign says nothing there, and 0 is what
//   stops the core's iteration at a root;
// - a step shorter than one ulp of x is one ulp (toward the root, against f's
//   sign), the least that moves x: from there the core's rule for a step below
//   its tolerance (go past the root by the tolerance) closes the bracket.
//   Without it x - step rounds to x, an end of the bracket, the Newton step is
//   refused and the iteration bisects the rest of the bracket (once Newton
//   has reached the double nearest the root from one side; or, in offsets, on
//   the ulps of d, far below the keys'): up to 50 iterations more.
// The core needs neither: its iteration runs on one row, and where it solves
// a threshold it does so in plain coordinates, whose tolerance (4 eps |tau|)
// is above the residual's rounding.
Tensor residual_to_resolution(const Tensor& f, const Tensor& magnitude, const Tensor& x, Tensor& step) {
  const Tensor x_size = magnitude_of(x), ulp = at::nextafter(x_size, at::full_like(x_size, kInf)) - x_size;
  step = select(magnitude_of(step) < ulp, at::copysign(ulp, -f), step);
  return select(magnitude_of(f) <= 4.0 * DBL_EPSILON * magnitude, 0.0, f);
}

// SPEC.md, "Top-k structure", with the threshold tau (gamma for the magnitude)
// in offset form tau = ref - d ([R, 1] each): u_j = s_j - tau is computed as
// (s_j - ref) + d, exact for keys near ref. Plain coordinates are ref = 0, d = -tau.
class ThresholdEquation {
 public:
  ThresholdEquation(Form op, Tensor s, int64_t k, double l, double p)
      : op_(op), s_(std::move(s)), is_top_(columns(s_.size(1), s_) < k), k_(k), l_(l), regularizer_(p) {}

  const Tensor& keys() const { return s_; }
  const Tensor& is_top() const { return is_top_; }
  int64_t k() const { return k_; }
  double l() const { return l_; }
  const Regularizer& regularizer() const { return regularizer_; }
  Tensor offsets(const Tensor& ref, const Tensor& d) const { return (s_ - ref) + d; }

  // F(d), non-increasing in d ([R, 1]), as the core writes the equation in
  // offsets (BlockEquation::solve_offset: the left side less the right side at
  // gamma = ref - d, negated):
  //   mask       k - sum_j clip(u_j / l, 0, 1)^(q-1)
  //   magnitude  -(sum_{j<k} min(pow(u_j/l, q-1) - gamma, 0) + sum_{j>=k} pow((u_j)_+ / l, q-1))
  // With `step` (the root finder's call), also the Newton step for d (below),
  // both to the resolution of doubles (residual_to_resolution).
  Tensor residual(const Tensor& ref, const Tensor& d, Tensor* step = nullptr) const {
    const Tensor u = offsets(ref, d);
    Tensor magnitude;
    const Tensor f = op_ == Form::mask ? mask_residual(u, step, &magnitude)
                                       : magnitude_residual(u, ref - d, step, &magnitude);
    return step ? residual_to_resolution(f, magnitude, d, *step) : f;
  }

 private:
  // Where F is smooth, F = 0 reads sum_B pow(u_j/l, q-1) = target over the
  // entries B that move (mask: 0 < u_j < l, target k less the saturated count;
  // magnitude: the block, target gamma W_B). For p other than 2 and 4/3 the
  // Newton step for d is taken on the (q-1)-th root of both sides, an equation
  // with the same root and the same sign as F but nearly linear in d
  // (pow(u, q-1) itself is steep or flat at u = 0 when p is far from 2, and the
  // core's plain F / F' crawls there); for p = 2 and 4/3 it is F / F'.
  // (`magnitude`: the sum of F's terms' magnitudes, with the step.)
  Tensor mask_residual(const Tensor& u, Tensor* step, Tensor* magnitude) const {
    const Tensor z = (u / l_).clamp(0.0, 1.0), y = regularizer_.power(z), sum = row_sum(y);
    const Tensor f = at::rsub(sum, static_cast<double>(k_));  // k - sum
    if (!step) return f;
    const Tensor moving = (z > 0) & (z < 1);
    const Tensor powers = row_sum(select(moving, y, 0.0)), target = powers + f;
    const Tensor slope = row_sum(select(moving, regularizer_.slope(z), 0.0)) / l_;
    *step = root_step(powers, slope, target, at::zeros_like(f));
    *magnitude = sum + static_cast<double>(k_);
    return f;
  }

  Tensor magnitude_residual(const Tensor& u, const Tensor& gamma, Tensor* step, Tensor* magnitude) const {
    const Tensor z = u.clamp_min(0.0) / l_, y = regularizer_.power(z), excess = y - gamma;
    const Tensor f = -row_sum(select(is_top_, excess.clamp_max(0.0), y));
    if (!step) return f;
    const Tensor top_in_block = is_top_ & (excess < 0), moving = top_in_block | (~is_top_ & (z > 0));
    const Tensor powers = row_sum(select(moving, y, 0.0)), weight = row_sum(top_in_block).to(at::kDouble);
    const Tensor slope = row_sum(select(moving, regularizer_.slope(z), 0.0)) / l_;
    const Tensor owed = gamma * weight;
    *step = root_step(powers, slope, owed, weight);
    *magnitude = powers + magnitude_of(owed);
    return f;
  }

  // Newton's step for S(d) = T(d), S = the powers (dS/dd = slope), T = target
  // (for the magnitude T = gamma W_B, dT/dd = -weight = -W_B; the mask: 0), on
  // S^(1/(q-1)) = T^(1/(q-1)), written so that no power of S overflows:
  //   a (S - T rho) / (S' + W rho),  rho = (T/S)^(1/a - 1),  a = q - 1.
  // A step that is not finite is refused by the root finder (it bisects).
  Tensor root_step(const Tensor& powers, const Tensor& slope, const Tensor& target, const Tensor& weight) const {
    if (regularizer_.kind() != Regularizer::Kind::general) return (powers - target) / (slope + weight);
    const double a = regularizer_.q_minus_1();
    const Tensor rho = at::pow(target / powers, 1.0 / a - 1.0);
    return a * (powers - target * rho) / (slope + weight * rho);
  }

  Form op_;
  Tensor s_, is_top_;
  int64_t k_;
  double l_;
  Regularizer regularizer_;
};

// ---- vectorized root finding ----

// Root of a non-increasing f on [lo, hi] (f(lo) >= 0 >= f(hi)), elementwise
// over any shape, from `start`: the core's find_decreasing_root
// (root_finding.hpp, without closest_end), batched. residual(x, &step) returns
// f(x) and sets Newton's step f(x) / f'(x) (or that of an equivalent equation
// with the same root and sign: ThresholdEquation::root_step).
// Line by line:
//   core                                          here
//   x = clamp(start, lo, hi)                      the same
//   while iteration < 200 && bracket_open(lo, hi) per element: done once the bracket closes;
//                                                 the loop ends when every element is done
//   f = residual(x, &slope); step = f / slope     f = residual(x, &step), both to the resolution
//                                                 of doubles (residual_to_resolution)
//   if f == 0 or NaN: return x                    found: x frozen, and returned
//   x = next_root_estimate(x, f, step, ...)       the same template, on every element; f = 0
//                                                 where done leaves those brackets as they are
//   return lo + 0.5 (hi - lo)                     the same where no root was found
// Elements that are done are frozen: f is handed to the step as 0 there,
// which moves neither end of their bracket (next_root_estimate moves lo only
// where f > 0, hi only where f < 0), x keeps its value and `found` is only
// ever set on elements not yet done. So an iteration after an element is done
// changes nothing it returns, and a row's result depends neither on the other
// rows nor on when the loop ends once every element is done.
// Hence, with no host sync off the CPU: on the CPU (reads_to_host) the loop
// reads `done` back before each iteration and leaves once every element is
// done, where a read costs nothing; on any other device it runs all
// kMaxRootIterations, the core's cap, and reads nothing. Both give the same
// result bit for bit (the extra iterations only recompute frozen elements).
// A smaller fixed count would not: the test corpora need up to 113
// iterations in one pass (docs/generic.md), and no bound below the cap holds
// for every row. Meta tensors run a single iteration (values are never read).
template <class Residual>
Tensor find_root(Residual&& residual, Tensor lo, Tensor hi, const Tensor& start) {
  using sparsetopk::detail::bracket_open;
  Tensor x = at::minimum(at::maximum(start, lo), hi), last_width = hi - lo;
  Tensor found = at::zeros_like(x, x.options().dtype(at::kBool));
  Tensor done = ~bracket_open(lo, hi);
  const bool early_exit = reads_to_host(x);
  const int iterations = x.is_meta() ? 1 : kMaxRootIterations;
  for (int iteration = 0; iteration < iterations; ++iteration) {
    if (early_exit && done.all().item<bool>()) break;
    Tensor step;
    const Tensor f = residual(x, &step);
    const Tensor root = ~done & ((f == 0) | is_nan(f));  // a root, or NaN: the core returns x
    found = found | root;
    done = done | root;
    const Tensor next = sparsetopk::detail::next_root_estimate(x, select(done, 0.0, f), step, lo, hi, last_width);
    done = done | ~bracket_open(lo, hi);
    x = select(done, x, next);
  }
  return select(found, x, lo + 0.5 * (hi - lo));
}

// For breakpoints [R, m] of each row in descending order and the equation's
// residual at a threshold t (F at ref = 0, d = -t: non-increasing along the
// breakpoints), the first column j with residual <= 0 (m if none). A binary
// search: ceil(log2(m + 1)) evaluations, no host sync.
Tensor first_nonpositive(const ThresholdEquation& equation, const Tensor& breakpoints) {
  const int64_t m = breakpoints.size(1);
  Tensor first = at::zeros({breakpoints.size(0), 1}, breakpoints.options().dtype(at::kLong));
  Tensor last = at::full_like(first, m);
  const Tensor zero = at::zeros({breakpoints.size(0), 1}, breakpoints.options());
  for (int64_t width = m; width > 0; width /= 2) {
    const Tensor mid = at::div(first + last, 2, "floor");
    const Tensor t = key_at(breakpoints, mid, 0.0);
    const Tensor nonpositive = equation.residual(zero, -t) <= 0, active = first < last;
    last = select(active & nonpositive, mid, last);
    first = select(active & ~nonpositive, mid + 1, first);
  }
  return first;
}

// ---- closed forms (the core's closed_form_value) ----

// A power of two near |v| (at least DBL_MIN), so that (s / unit)^3 neither overflows nor underflows.
Tensor unit_of(const Tensor& v) { return at::exp2(at::floor(at::log2(magnitude_of(v))).clamp_min(DBL_MIN_EXP - 1)); }

// Count, weight W, mean, unit and central moments (in units of `unit`) of the
// keys of a block: the fields of the core's BlockMoments, summed over the
// block of each row here (the core merges them as PAV pools).
struct BlockMoments {
  Tensor count, weight, mean, unit, m2, m3;
};

BlockMoments moments_of(const Tensor& s, const Tensor& in_block, const Tensor& weight) {
  BlockMoments m;
  m.count = row_sum(in_block).to(at::kDouble);
  m.weight = weight;
  m.mean = row_sum(select(in_block, s, 0.0)) / m.count;
  m.unit = unit_of(select(in_block, magnitude_of(s), 0.0).amax({-1}, /*keepdim=*/true));
  const Tensor deviation = select(in_block, (s - m.mean) / m.unit, 0.0);
  m.m2 = row_sum(deviation * deviation);
  m.m3 = row_sum(deviation * deviation * deviation);
  return m;
}

// ---- the threshold of each row ----

// tau = ref - d; edge: the smallest key above tau ([R, 1] each).
struct Threshold {
  Tensor ref, d, edge;
};

// `value` clamped into [lo, hi], or their midpoint where it is not a number.
Tensor into_bracket(const Tensor& value, const Tensor& lo, const Tensor& hi) {
  return select(is_nan(value), lo + 0.5 * (hi - lo), at::minimum(at::maximum(value, lo), hi));
}

// A first solution tau0 on the piece: closed form on the piece's block for
// q = 2 and q = 4, else Newton in plain coordinates.
Tensor first_solution(const ThresholdEquation& equation, Form op, const Tensor& block_begin,
                      const Tensor& block_end, const Tensor& lo, const Tensor& hi) {
  const Regularizer::Kind kind = equation.regularizer().kind();
  if (kind != Regularizer::Kind::general) {
    const Tensor& s = equation.keys();
    const Tensor column = columns(s.size(1), s);
    const Tensor W = (equation.k() - block_begin).to(at::kDouble);
    const BlockMoments m = moments_of(s, (column >= block_begin) & (column < block_end), W);
    return into_bracket(closed_form_value(op, kind, equation.l(), m), lo, hi);
  }
  const Tensor zero = at::zeros_like(lo);
  const auto residual = [&](const Tensor& d, Tensor* step) { return equation.residual(zero, d, step); };
  return -find_root(residual, -hi, -lo, -(lo + 0.5 * (hi - lo)));
}

// The root again in offset form from the key `ref`, starting at d = start.
Tensor solve_from(const ThresholdEquation& equation, const Tensor& ref, const Tensor& start, const Tensor& lo,
                  const Tensor& hi) {
  // the piece in offsets, widened by the rounding of the differences (none for nearby keys)
  const Tensor d_lo = (ref - hi) - DBL_EPSILON * magnitude_of(ref - hi);
  const Tensor d_hi = (ref - lo) + DBL_EPSILON * magnitude_of(ref - lo);
  const auto residual = [&](const Tensor& d, Tensor* step) { return equation.residual(ref, d, step); };
  return find_root(residual, d_lo, d_hi, into_bracket(start, d_lo, d_hi));
}

// Steps 3 and 4 of the file comment: tau0 on the piece, then the root again
// in offsets from the smallest key above the threshold, `edge` (the last key
// the search found the residual negative at: exact, even where u_j > 0 is
// below what a double resolves). Offsets add two numbers of one sign for every
// entry above the threshold; where tau lies nearer 0 than the edge, plain
// coordinates (ref = 0) are as exact for those entries and keep tau itself to
// full relative precision.
Threshold solve_on_piece(const ThresholdEquation& equation, Form op, const Tensor& block_begin,
                         const Tensor& block_end, const Tensor& lo, const Tensor& hi) {
  const Tensor tau0 = first_solution(equation, op, block_begin, block_end, lo, hi);
  const Tensor edge = key_at(equation.keys(), block_end - 1, 0.0);
  const Tensor ref = select(magnitude_of(tau0) > magnitude_of(edge - tau0), edge, 0.0);
  return {ref, solve_from(equation, ref, ref - tau0, lo, hi), edge};
}

// Mask: sum_j clip((s_j - tau)/l, 0, 1)^(q-1) = k with s_{k+1} - l <= tau < s_k.
// The breakpoints are the keys (an entry enters) and the keys - l (it saturates).
Threshold mask_threshold(const ThresholdEquation& equation) {
  const Tensor& s = equation.keys();
  const int64_t k = equation.k();
  const double l = equation.l();
  const Tensor entering = first_nonpositive(equation, s);       // b: s_j > tau for j < b
  const Tensor saturating = first_nonpositive(equation, s - l);  // a: s_j - tau >= l for j < a
  const Tensor lo = at::maximum(at::maximum(s.narrow(1, k, 1) - l, key_at(s, entering, -kInf)),
                                key_at(s, saturating, -kInf) - l);
  const Tensor hi = at::minimum(at::minimum(s.narrow(1, k - 1, 1), key_at(s, entering - 1, kInf)),
                                key_at(s, saturating - 1, kInf) - l);
  return solve_on_piece(equation, Form::mask, saturating, entering, lo, hi);
}

// The singleton value of each key of the magnitude, pow((s - g)/l, q-1) = g:
// where a top entry starts to move (a breakpoint of the magnitude's equation).
Tensor singleton_values(const Regularizer& regularizer, const Tensor& s, double l) {
  if (regularizer.kind() != Regularizer::Kind::general) {  // the core's BlockMoments::single(s, 1)
    const Tensor one = at::ones_like(s), zero = at::zeros_like(s);
    return closed_form_value(Form::magnitude, regularizer.kind(), l, BlockMoments{one, one, s, unit_of(s), zero, zero});
  }
  const auto residual = [&](const Tensor& g, Tensor* step) {  // pow((s - g)/l, q-1) - g, decreasing
    const Tensor z = (s - g).clamp_min(0.0) / l, y = regularizer.power(z), f = y - g;
    *step = f / -(1.0 + regularizer.slope(z) / l);
    return residual_to_resolution(f, y + magnitude_of(g), g, *step);
  };
  return find_root(residual, at::zeros_like(s), s, 0.5 * s);
}

// Magnitude: sum_{j<k} min(pow((s_j - g)/l, q-1) - g, 0) + sum_{j>=k} pow((s_j - g)_+/l, q-1) = 0
// with the singleton value of s_k <= g <= s_k. The breakpoints are the keys
// below the top k (an entry enters) and the singleton values of the top k (an
// entry leaves its value x_i).
Threshold magnitude_threshold(const ThresholdEquation& equation) {
  const Tensor& s = equation.keys();
  const int64_t k = equation.k();
  const Tensor singleton = singleton_values(equation.regularizer(), s.narrow(1, 0, k), equation.l());
  const Tensor entering = k + first_nonpositive(equation, s.narrow(1, k, s.size(1) - k));
  const Tensor leaving = first_nonpositive(equation, singleton).clamp_max(k - 1);
  const Tensor lo = at::maximum(at::maximum(singleton.narrow(1, k - 1, 1), key_at(s, entering, -kInf)),
                                key_at(singleton, leaving, -kInf));
  const Tensor hi = at::minimum(at::minimum(s.narrow(1, k - 1, 1), key_at(s, entering - 1, kInf)),
                                key_at(singleton, leaving - 1, kInf));
  return solve_on_piece(equation, Form::magnitude, leaving, entering, lo, hi);
}

// ---- outputs, block and c of the rows with 0 < k < n ----

// Sorted outputs, c and row state (gamma, W_B, unchanged_from, near_key,
// near_offset, tied_key, tied_u) of a batch, in sorted order; c (-1 off the
// band) gives the band's bounds.
struct SortedRows {
  Tensor out, c, state;
};

// The core's window bound `above` (band_solve.hpp, window_bounds): keys at or
// above it are outside the window, and it is unchanged_from when no window
// entry lies above the block.
Tensor window_above(Form op, const Regularizer& regularizer, const Tensor& s_k, const Tensor& s_next, double l) {
  Tensor above, scale;
  if (op == Form::mask) {
    above = s_k + l;
    scale = (magnitude_of(s_k) + magnitude_of(s_next)) + l;
  } else {
    above = s_k + l * (regularizer.kind() == Regularizer::Kind::quartic ? sparsetopk::detail::cbrt_upper_bound(s_k)
                                                                        : regularizer.inverse_power(s_k));
    scale = above;
  }
  above = above + 8.0 * DBL_EPSILON * scale;
  return at::maximum(above, at::nextafter(s_k, at::full_like(s_k, kInf)));
}

// (gamma, W_B, unchanged_from) of a row whose block starts at column `begin` of the sorted row.
// RowState's near_key, near_offset, tied_key, tied_u: u_j = (s_j - ref) + d near
// the threshold, and u_tied for the entries at `edge` that took a share.
Tensor near_state(const Threshold& t, const Tensor& shared, const Tensor& u_tied) {
  const Tensor any_shared = shared.any(-1, /*keepdim=*/true);
  return at::cat({t.ref, t.d, select(any_shared, t.edge, kInf), select(any_shared, u_tied, 0.0)}, 1);
}

// No entry solved again near the threshold: u_j = s_j - gamma (+inf: none).
Tensor no_near_state(const Tensor& like_column) {
  const Tensor none = at::full_like(like_column, kInf), zero = at::zeros_like(like_column);
  return at::cat({none, zero, none, zero}, 1);
}

// (gamma, W_B, unchanged_from) and the near columns of a row with a block.
Tensor block_state(const Tensor& s, int64_t k, const Tensor& gamma, const Tensor& begin, const Tensor& above,
                   const Tensor& near) {
  const Tensor key_before = key_at(s, begin - 1, kInf);  // +inf: no entry above the block
  const Tensor unchanged_from = select(key_before < above, key_before, above);
  return at::cat({gamma, (k - begin).to(at::kDouble), unchanged_from, near}, 1);
}

// The entries that take what the row's condition sum = owed leaves, shared,
// instead of y_j = pow(u_j/l, q-1): tied at the edge, within rounding of the
// threshold gamma (the core's NearThreshold), where that is the more exact of
// the two. The share carries the rounding of the others' sum, eps `scale`
// (k; gamma W_B for the magnitude); y_j carries (q-1) times the relative
// error of u_j, which grows past eps where u_j is subnormal (or where the
// condition is not met to 1e-12 at all: its root lies between two doubles).
Tensor shares_the_rest(const Tensor& s, const Tensor& edge, const Tensor& u, const Tensor& y, const Tensor& gamma,
                       const Tensor& sum, const Tensor& owed, const Regularizer& regularizer) {
  const Tensor near_edge = (s == edge) & (magnitude_of(u) <= kNearRelative * magnitude_of(gamma) + DBL_MIN);
  const Tensor unresolved = magnitude_of(sum - owed) > 1e-12 * magnitude_of(owed);
  const Tensor share_error = DBL_EPSILON * magnitude_of(owed) / y;
  const Tensor power_error = regularizer.q_minus_1() * (DBL_TRUE_MIN / magnitude_of(u) + 4.0 * DBL_EPSILON);
  return near_edge & (unresolved | (share_error <= power_error));
}

// Mask: y_j = clip(u_j / l, 0, 1)^(q-1) above the threshold; entries tied at
// the edge take k less the others' sum, shared (exact where u_j is below what
// a double resolves).
SortedRows mask_block_rows(const ThresholdEquation& equation, const Threshold& t) {
  const Tensor& s = equation.keys();
  const int64_t k = equation.k();
  const double l = equation.l();
  const Regularizer& regularizer = equation.regularizer();
  const Tensor u = equation.offsets(t.ref, t.d), gamma = t.ref - t.d, z = u / l, above = s >= t.edge;
  Tensor y = select(above, regularizer.power(z.clamp(0.0, 1.0)), 0.0);
  const Tensor shared = shares_the_rest(s, t.edge, u, y, gamma, row_sum(y), at::full_like(gamma, k), regularizer);
  const Tensor rest = static_cast<double>(k) - row_sum(select(shared, 0.0, y));
  const Tensor share = (rest / row_sum(shared)).clamp(0.0, 1.0);
  y = select(shared, share, y);
  const Tensor z_shared = regularizer.inverse_power(y);  // u_j / l read back from y (u_j = d may underflow)
  const Tensor c = select(shared, select((y > 0) & (y < 1), jacobian_weight(regularizer, z_shared, l), -1.0),
                             select(above & (z > 0) & (z < 1), jacobian_weight(regularizer, z, l), -1.0));
  // the block: from the first unsaturated entry (p = 2, 4/3: PAV also pools entries saturated exactly at it)
  const Tensor unsaturated = regularizer.kind() == Regularizer::Kind::general ? ~(u >= l) : ~(u > l);
  const Tensor begin = first_true(unsaturated).clamp_max(k - 1);
  const Tensor window_top = window_above(Form::mask, regularizer, s.narrow(1, k - 1, 1), s.narrow(1, k, 1), l);
  const Tensor near = near_state(t, shared, l * regularizer.inverse_power(share));
  return {y, c, block_state(s, k, gamma, begin, window_top, near)};
}

// Magnitude: in the block, r_j = pow(u_j/l, q-1) + u_j (at most |x_j|);
// entries tied at the edge take gamma W_B less the others' powers, shared.
SortedRows magnitude_block_rows(const ThresholdEquation& equation, const Threshold& t, const Tensor& x_sorted) {
  const Tensor& s = equation.keys();
  const Tensor& is_top = equation.is_top();
  const int64_t k = equation.k();
  const double l = equation.l();
  const Regularizer& regularizer = equation.regularizer();
  const Tensor u = equation.offsets(t.ref, t.d).clamp_min(0.0), gamma = t.ref - t.d;
  const Tensor y = regularizer.power(u / l), s_k = s.narrow(1, k - 1, 1);
  // the block: the top entries from the first one that moves (ties of s_k always; p = 2, 4/3: PAV also
  // pools those that keep their value exactly at gamma), the others with u_j > 0
  const Tensor column = columns(s.size(1), s);
  const Tensor moves = regularizer.kind() == Regularizer::Kind::general ? y < gamma : y <= gamma;
  const Tensor begin = first_true(is_top & ((s == s_k) | moves));
  const Tensor in_block = (is_top & (column >= begin)) | (~is_top & ((s >= t.edge) | (s == s_k)));
  const Tensor block_weight = (k - begin).to(at::kDouble);
  const Tensor owed = gamma * block_weight;  // the block's condition: sum_B pow(u_j/l, q-1) = gamma W_B
  const Tensor shared =
      in_block & shares_the_rest(s, t.edge, u, y, gamma, row_sum(select(in_block, y, 0.0)), owed, regularizer);
  const Tensor others = row_sum(select(in_block & ~shared, y, 0.0));
  const Tensor share = ((owed - others) / row_sum(shared)).clamp_min(0.0);
  const Tensor power_j = select(shared, share, y);
  const Tensor u_j = select(shared, l * regularizer.inverse_power(share), u);
  const Tensor r = at::minimum(power_j + u_j, s);
  const Tensor out = select(in_block, at::copysign(r, x_sorted), select(is_top, x_sorted, 0.0));
  const Tensor z_c = select(u_j > 0, u_j / l, regularizer.inverse_power(power_j));  // (u_j underflowed: from the power)
  const Tensor c = select(in_block & ((u_j > 0) | (power_j > 0)), jacobian_weight(regularizer, z_c, l), -1.0);
  const Tensor above = window_above(Form::magnitude, regularizer, s_k, s.narrow(1, k, 1), l);
  const Tensor near = near_state(t, shared, l * regularizer.inverse_power(share));
  return {out, c, block_state(s, k, gamma, begin, above, near)};
}

// Rows with no block (SPEC.md: every block a singleton): the hard operator,
// gamma = s_{k+1}, W_B = 0, unchanged_from = s_k.
SortedRows singleton_rows(Form op, const Tensor& s, int64_t k, const Tensor& x_sorted) {
  const Tensor is_top = columns(s.size(1), s) < k;
  const Tensor out = op == Form::mask ? is_top.expand_as(s).to(at::kDouble) : select(is_top, x_sorted, 0.0);
  const Tensor gamma = k < s.size(1) ? s.narrow(1, k, 1) : at::full({s.size(0), 1}, -kInf, s.options());
  const Tensor unchanged_from = k > 0 ? s.narrow(1, k - 1, 1) : at::full({s.size(0), 1}, kInf, s.options());
  const Tensor state = at::cat({gamma, at::zeros_like(gamma), unchanged_from, no_near_state(gamma)}, 1);
  return {out, at::full_like(s, -1.0), state};
}

// Whether a row has a block straddling k (else singleton_rows), as the core
// decides it: the k-th and (k+1)-th keys tie, or the residual is still negative
// at the threshold s_{k+1} (the k-th entry is not saturated there, mask, or
// does not keep its value, magnitude). For p = 2 and 4/3 the core's PAV also
// pools the two where their singleton values are equal (the residual is then
// 0 at s_{k+1}, a kink): s_k - l = s_{k+1}, or pow((s_k - s_{k+1})/l, q-1) = s_{k+1}.
Tensor has_block(const ThresholdEquation& equation, Form op) {
  const Tensor& s = equation.keys();
  const int64_t k = equation.k();
  const double l = equation.l();
  const Tensor s_k = s.narrow(1, k - 1, 1), s_next = s.narrow(1, k, 1);
  const Tensor straddles = (s_k == s_next) | (equation.residual(at::zeros_like(s_next), -s_next) > 0);
  if (equation.regularizer().kind() == Regularizer::Kind::general) return straddles;
  const Tensor pooled = op == Form::mask ? s_k - s_next == l : equation.regularizer().power((s_k - s_next) / l) == s_next;
  return straddles | pooled;
}

SortedRows soft_sorted_rows(Form op, const Tensor& s, int64_t k, double l, double p, const Tensor& x_sorted) {
  const int64_t n = s.size(1);
  if (k == 0 || k == n) return singleton_rows(op, s, k, x_sorted);
  const ThresholdEquation equation(op, s, k, l, p);
  const Threshold threshold = op == Form::mask ? mask_threshold(equation) : magnitude_threshold(equation);
  const SortedRows block = op == Form::mask ? mask_block_rows(equation, threshold)
                                                : magnitude_block_rows(equation, threshold, x_sorted);
  const SortedRows plain = singleton_rows(op, s, k, x_sorted);
  const Tensor with_block = has_block(equation, op);
  return {select(with_block, block.out, plain.out), select(with_block, block.c, plain.c),
          select(with_block, block.state, plain.state)};
}

// The RowState columns (sparsetopk/row_state.hpp) of rows with no band.
Tensor no_band(const Tensor& like_column) {
  const Tensor none = at::full_like(like_column, -kInf), zero = at::zeros_like(like_column);
  return at::cat({none, zero, none, zero}, 1);
}

// The state of rows of no entries: no block, no threshold (the CPU kernel's convention).
SoftResult empty_result(const Tensor& rows, bool save) {
  SoftResult result{at::empty_like(rows), {}};
  if (!save) return result;
  const Tensor column = at::empty({rows.size(0), 1}, rows.options().dtype(at::kDouble));
  result.row_state = at::cat({column.fill_(-kInf), at::zeros_like(column), at::full_like(column, kInf),
                              no_band(column), no_near_state(column)}, 1);
  return result;
}

// Sorted order: keys (x, or |x|) descending; -0 and +0 are the same key.
std::pair<Tensor, Tensor> sort_keys(Form op, const Tensor& x) {
  const Tensor keys = op == Form::mask ? x + 0.0 : magnitude_of(x);
  auto [s, order] = at::sort(keys, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
  return {s, order};
}

// The tensor whose [r, order[r, j]] is sorted[r, j].
Tensor unsort(const Tensor& sorted, const Tensor& order) { return at::empty_like(sorted).scatter_(1, order, sorted); }

// The band's first and last entries (RowState's last four columns): the first
// and last sorted positions where `active` holds, as (key, column); the sort
// is stable, so sorted order is RowState's (key descending, ties by column).
Tensor band_bounds(const Tensor& s, const Tensor& order, const Tensor& active) {
  const int64_t n = s.size(1);
  const Tensor first = first_true(active), any = first < n;
  const Tensor last = select(active, columns(n, s), -1).amax(-1, /*keepdim=*/true);
  const auto column_at = [&](const Tensor& j) { return order.gather(1, j.clamp(0, n - 1)).to(at::kDouble); };
  const Tensor bounds = at::cat({key_at(s, first, -kInf), column_at(first), key_at(s, last, -kInf),
                                 column_at(last)}, 1);
  return select(any, bounds, no_band(s.narrow(1, 0, 1)));
}

// A soft operator on a batch: the rows' keys sorted, `solve(s, x_sorted)`
// (SortedRows) and the result scattered back; non-finite rows are NaN, their
// state (NaN, 0, NaN). x_sorted: x in the keys' order (the magnitude only).
template <class SortedSolver>
SoftResult solve_sorted(Form op, const Tensor& rows, bool save, SortedSolver&& solve) {
  if (rows.numel() == 0) return empty_result(rows, save);
  const Tensor finite = is_finite(rows).all(-1, /*keepdim=*/true);
  const Tensor x = select(finite, rows.to(at::kDouble), 0.0);  // a non-finite row is NaN at the end
  const auto [s, order] = sort_keys(op, x);
  const Tensor x_sorted = op == Form::magnitude ? x.gather(1, order) : Tensor();
  const SortedRows sorted = solve(s, x_sorted);
  SoftResult result{select(finite, unsort(sorted.out, order), kNaN).to(rows.scalar_type()), {}};
  if (!save) return result;
  result.row_state = at::cat({sorted.state.narrow(1, 0, 3), band_bounds(s, order, sorted.c >= 0),
                              sorted.state.narrow(1, 3, 4)}, 1);
  const Tensor nan = at::full({1, 1}, kNaN, sorted.state.options());
  const Tensor non_finite_state =  // (NaN, 0, NaN), no band, no near entries
      at::cat({nan, at::zeros_like(nan), nan, no_band(nan), no_near_state(nan)}, 1);
  result.row_state = select(finite, result.row_state, non_finite_state);
  return result;
}

// ---- Dykstra's algorithm (p = 2; SPEC.md, "Dykstra's algorithm") ----
//
// The batched form of the core's (src/core/dykstra.cpp, the same arithmetic,
// so the same result): the sorted chain v is kept as its even and odd
// positions, e = v[0::2] and o = v[1::2], so that the pairs (v1>=v2, v3>=v4,
// ...) are (e_j, o_j) and (v2>=v3, v4>=v5, ...) are (o_j, e_{j+1}); pe, po
// and qo, qe are the two sets' correction terms. The whole row iterates
// (entries the iterations do not reach stay exactly where they start).

constexpr int64_t kDykstraCheckEvery = 64;  // iterations between the fixed-point checks (CPU only)

struct DykstraChain {
  Tensor e, o, pe, po, qe, qo;
  Tensor beta_first, beta_second;  // a_{i+1} / (a_i + a_{i+1}) of each pair ([1, m]); undefined: unweighted

  Tensor state() const { return at::cat({e, o, pe, po, qe, qo}, 1); }
};

// One set of pairs (b_j >= c_j) in place: t = v + corr; a violating pair
// becomes its (weighted) mean, corr = t - v (the core's project_pairs).
void project_pairs(Tensor b, Tensor c, Tensor corr_b, Tensor corr_c, const Tensor& beta) {
  const Tensor tb = b + corr_b, tc = c + corr_c;
  const Tensor mean = beta.defined() ? tb + (tc - tb) * beta : 0.5 * (tb + tc);
  at::maximum_out(b, tb, mean);  // b >= c: b = tb, c = tc; else both the mean
  at::minimum_out(c, tc, mean);
  at::sub_out(corr_b, tb, b);
  at::sub_out(corr_c, tc, c);
}

// One iteration: both sets of pairs.
void iterate_once(DykstraChain& chain) {
  const int64_t first = chain.o.size(1), second = chain.e.size(1) - 1;
  project_pairs(chain.e.narrow(1, 0, first), chain.o, chain.pe.narrow(1, 0, first), chain.po, chain.beta_first);
  project_pairs(chain.o.narrow(1, 0, second), chain.e.narrow(1, 1, second), chain.qo.narrow(1, 0, second),
                chain.qe.narrow(1, 1, second), chain.beta_second);
}

// `iterations` iterations, on the CPU stopping early at a fixed point (an
// iteration that changes nothing changes nothing after: the result is the
// same, bit for bit). Off the CPU all of them, with no host sync. Meta
// tensors run one (their values are never read).
void iterate(DykstraChain& chain, int64_t iterations) {
  if (chain.e.is_meta()) iterations = 1;
  const bool early_exit = reads_to_host(chain.e);
  for (int64_t it = 1; it <= iterations; ++it) {
    if (!early_exit || it % kDykstraCheckEvery != 0) {
      iterate_once(chain);
      continue;
    }
    const Tensor before = chain.state();
    iterate_once(chain);
    if (at::equal(before, chain.state())) return;
  }
}

// Columns [start, start + 2m) step 2 of a [R, n] tensor (or [1, n]).
Tensor every_other(const Tensor& t, int64_t start) { return t.slice(1, start, t.size(1), 2); }

DykstraChain load_chain(const Tensor& z, const Tensor& a) {
  DykstraChain chain;
  chain.e = every_other(z, 0).contiguous(), chain.o = every_other(z, 1).contiguous();
  chain.pe = at::zeros_like(chain.e), chain.qe = at::zeros_like(chain.e);
  chain.po = at::zeros_like(chain.o), chain.qo = at::zeros_like(chain.o);
  if (!a.defined()) return chain;
  const int64_t first = chain.o.size(1), second = chain.e.size(1) - 1;
  const Tensor a_even = every_other(a, 0), a_odd = every_other(a, 1);
  chain.beta_first = a_odd / (a_even.narrow(1, 0, first) + a_odd);
  chain.beta_second = a_even.narrow(1, 1, second) / (a_odd.narrow(1, 0, second) + a_even.narrow(1, 1, second));
  return chain;
}

// v in sorted order, [R, n].
Tensor chain_values(const DykstraChain& chain, int64_t n) {
  Tensor v = at::empty({chain.e.size(0), n}, chain.e.options());
  every_other(v, 0).copy_(chain.e);
  every_other(v, 1).copy_(chain.o);
  return v;
}

// Whether v_i >= v_{i+1} was active (enforced by averaging) in the last
// projection onto its pair, i = 0 .. n-2 ([R, n-1]; the core's DykstraChain::active).
Tensor active_constraints(const DykstraChain& chain, int64_t n) {
  const int64_t first = chain.o.size(1), second = chain.e.size(1) - 1;
  Tensor active = at::empty({chain.e.size(0), n - 1}, chain.e.options().dtype(at::kBool));
  every_other(active, 0).copy_((chain.pe.narrow(1, 0, first) != 0) | (chain.po != 0));
  every_other(active, 1).copy_((chain.qo.narrow(1, 0, second) != 0) | (chain.qe.narrow(1, 1, second) != 0));
  return active;
}

// The block [begin, end) straddling sorted positions k-1 and k: the maximal
// run joined by active constraints; [k, k) where v_{k-1} >= v_k is not active.
std::pair<Tensor, Tensor> straddling_block(const Tensor& active, int64_t k) {
  const int64_t edges = active.size(1);
  const Tensor column = columns(edges, active), free = ~active;
  const Tensor begin = select(free & (column < k - 1), column, -1).amax(-1, /*keepdim=*/true) + 1;
  const Tensor end = select(free & (column >= k - 1), column, edges).amin(-1, /*keepdim=*/true) + 1;
  const Tensor straddles = active.narrow(1, k - 1, 1);
  return {select(straddles, begin, k), select(straddles, end, k)};
}

// Outputs and c of the sorted rows from v (SPEC.md steps 4-5); entries still
// exactly at z_i never moved and keep the hard operator's value.
SortedRows dykstra_outputs(Form op, const Tensor& s, const Tensor& z, const Tensor& v, const Tensor& in_block,
                           int64_t k, double l, const Tensor& x_sorted) {
  const Tensor is_top = columns(s.size(1), s) < k, moved = v != z;
  Tensor out, active;
  if (op == Form::mask) {
    const Tensor u = (s - v) / l;  // y = clip((s - v) / l, 0, 1)
    out = select(moved, u.clamp(0.0, 1.0), is_top.to(at::kDouble));
    active = in_block & moved & (u > 0) & (u < 1);
  } else {
    const Tensor u = (s - v).clamp_min(0.0);  // r = (1 + l) / l u, at most |x|
    const Tensor r = at::minimum((1.0 + l) / l * u, s);
    out = select(moved, at::copysign(r, x_sorted), select(is_top, x_sorted, 0.0));
    active = in_block & moved & (u > 0);
  }
  return {out, select(active, at::full_like(s, 1.0 / l), -1.0), {}};  // c_i = 1/l for q = 2
}

// Dykstra's iterations on sorted rows (0 < k < n), and the state read off the
// block of the result: gamma its (weighted) mean, W_B its top entries.
SortedRows dykstra_block_rows(Form op, const Tensor& s, int64_t k, double l, int64_t iterations,
                              const Tensor& x_sorted) {
  const int64_t n = s.size(1);
  const Tensor w = (columns(n, s) < k).to(at::kDouble);
  const Tensor a = op == Form::mask ? Tensor() : 1.0 + l * w;  // z = s - l w, or s / (1 + l w)
  const Tensor z = op == Form::mask ? s - l * w : s / a;
  DykstraChain chain = load_chain(z, a);
  iterate(chain, iterations);
  const Tensor v = chain_values(chain, n);
  const auto [begin, end] = straddling_block(active_constraints(chain, n), k);
  const Tensor column = columns(n, s), in_block = (column >= begin) & (column < end);
  SortedRows rows = dykstra_outputs(op, s, z, v, in_block, k, l, x_sorted);
  const Tensor weight = select(in_block, a.defined() ? a.expand_as(s) : at::ones_like(s), 0.0);
  const Tensor gamma = select(end > begin, row_sum(weight * v) / row_sum(weight), s.narrow(1, k, 1));
  const Tensor block_weight = (end.clamp_max(k) - begin.clamp_max(k)).to(at::kDouble);
  rows.state = at::cat({gamma, block_weight, key_at(s, begin - 1, kInf), no_near_state(gamma)}, 1);
  return rows;
}

SortedRows dykstra_sorted_rows(Form op, const Tensor& s, int64_t k, double l, int64_t iterations,
                               const Tensor& x_sorted) {
  if (k == 0 || k == s.size(1)) return singleton_rows(op, s, k, x_sorted);  // nothing moves
  return dykstra_block_rows(op, s, k, l, iterations, x_sorted);
}

}  // namespace

bool reads_to_host(const Tensor& t) { return t.device().is_cpu() && !device_mode.load(std::memory_order_relaxed); }

bool set_device_mode(bool enabled) { return device_mode.exchange(enabled); }

SoftResult soft_topk_rows(Form op, const Tensor& rows, int64_t k, double l, double p, bool save) {
  return solve_sorted(op, rows, save, [&](const Tensor& s, const Tensor& x_sorted) {
    return soft_sorted_rows(op, s, k, l, p, x_sorted);
  });
}

SoftResult dykstra_rows(Form op, const Tensor& rows, int64_t k, double l, int64_t iterations, bool save) {
  return solve_sorted(op, rows, save, [&](const Tensor& s, const Tensor& x_sorted) {
    return dykstra_sorted_rows(op, s, k, l, iterations, x_sorted);
  });
}

at::Tensor hard_topk_rows(Form op, const Tensor& rows, int64_t k) {
  if (rows.numel() == 0) return at::empty_like(rows);
  const Tensor x = rows.to(at::kDouble);
  const Tensor order = sort_keys(op, x).second;  // stable: ties keep the lower index first
  const Tensor kept_sorted = (columns(rows.size(1), rows) < k).expand(rows.sizes()).contiguous();
  const Tensor kept = at::zeros_like(x, x.options().dtype(at::kBool)).scatter_(1, order, kept_sorted);
  const Tensor out = op == Form::mask ? kept.to(at::kDouble) : select(kept, x, 0.0);
  const Tensor has_nan = is_nan(x).any(-1, /*keepdim=*/true);
  return select(has_nan, kNaN, out).to(rows.scalar_type());
}

// The band's c_i of rows at their RowStates (SPEC.md, "Derivatives", as the
// core's band.hpp recomputes them): c_i on the band's entries, -1 elsewhere.
Tensor band_weights(Form op, const Tensor& x, const Tensor& state, double l, double p) {
  const Tensor key = op == Form::mask ? x : magnitude_of(x);
  const Tensor column = columns(x.size(1), x).to(at::kDouble);
  const Tensor gamma = state.narrow(1, 0, 1);
  const Tensor first_key = state.narrow(1, 3, 1), first_index = state.narrow(1, 4, 1);
  const Tensor last_key = state.narrow(1, 5, 1), last_index = state.narrow(1, 6, 1);
  // sorted order: key descending, ties by the lower column first
  const Tensor before_first = (key > first_key) | ((key == first_key) & (column < first_index));
  const Tensor after_last = (key < last_key) | ((key == last_key) & (column > last_index));
  const Tensor in_band = ~before_first & ~after_last;
  // u_i as the forward had it: in offset form near gamma, u_tied at tied_key (RowState, band.hpp's band_offset)
  const Tensor near_key = state.narrow(1, 7, 1), near_offset = state.narrow(1, 8, 1);
  const Tensor tied_key = state.narrow(1, 9, 1), tied_u = state.narrow(1, 10, 1);
  const Tensor near = (near_key != kInf) & (magnitude_of(key - gamma) <= kNearRelative * magnitude_of(gamma) + DBL_MIN);
  const Tensor u_i = select(key == tied_key, tied_u, select(near, (key - near_key) + near_offset, key - gamma));
  const Tensor u = op == Form::mask ? u_i / l : u_i.clamp_min(0.0) / l;
  return select(in_band, jacobian_weight(Regularizer(p), u, l), -1.0);
}

// SPEC.md, "Derivatives", with the core's pivoting (src/core/derivatives.cpp):
// d = the band entry with the largest c (first of equal ones), and sums of
// differences v_j - v_d, so that no two nearly equal large numbers subtract.
at::Tensor jacobian_product_rows(Form op, bool transpose, const Tensor& v_rows, const Tensor& x_rows,
                                 const Tensor& state_rows, double l, double p) {
  if (v_rows.numel() == 0) return at::zeros_like(v_rows);
  const Tensor v = v_rows.to(at::kDouble), x = x_rows.to(at::kDouble), state = state_rows.to(at::kDouble);
  const Tensor c = band_weights(op, x, state, l, p);
  const Tensor invalid = is_nan(state.narrow(1, 0, 1));  // gamma NaN: the row held a non-finite value
  const Tensor active = c >= 0, weight = select(active, c, 0.0), sum = row_sum(weight);
  const Tensor pivot = select(active, c, -kInf).argmax(-1, /*keepdim=*/true);
  Tensor result;
  if (op == Form::mask) {
    // J_B = diag(c) - c c^T / sum(c): (J v)_a = c_a (v_a - v_d) - (c_a / sum(c)) sum_j c_j (v_j - v_d)
    const Tensor difference = select(active, v - v.gather(1, pivot), 0.0);
    const Tensor spread = row_sum(weight * difference);
    result = select(active & (sum > 0), weight * difference - weight / sum * spread, 0.0);
  } else {
    // in t_i = sign(x_i) v_i, with D = W_B + sum(c) and m band entries:
    //   (J t)_a   = (1 + c_a)(t_a - t_d) + ((1 + c_a) / D) (W_B t_d - sum_j c_j (t_j - t_d))
    //   (J^T t)_a = t_a + c_a (t_a - t_d) + (c_a / D) ((W_B - m) t_d - sum_j (1 + c_j)(t_j - t_d))
    // identity on the entries returned unchanged, zero elsewhere
    const Tensor sign = at::sign(x);
    const Tensor block_weight = state.narrow(1, 1, 1), unchanged_from = state.narrow(1, 2, 1);
    const Tensor t = sign * v, t_d = t.gather(1, pivot), difference = select(active, t - t_d, 0.0);
    const Tensor count = row_sum(active).to(at::kDouble), denominator = block_weight + sum;
    const Tensor rest = transpose ? (block_weight - count) * t_d - row_sum((1.0 + weight) * difference)
                                  : block_weight * t_d - row_sum(weight * difference);
    const Tensor ratio = select(denominator > 0, (transpose ? weight : 1.0 + weight) / denominator, 0.0);
    const Tensor dr = transpose ? t + weight * difference + ratio * rest : (1.0 + weight) * difference + ratio * rest;
    const Tensor unchanged = (x != 0) & (magnitude_of(x) >= unchanged_from);
    result = select(active, sign * dr, select(unchanged, v, 0.0));
  }
  return select(invalid, kNaN, result).to(v_rows.scalar_type());
}

}  // namespace sparsetopk::torch::generic
