#pragma once
// The band of one row (SPEC.md, "Top-k structure"): given the window of
// entries that can straddle the k-th key, sorted, solve for the single
// multi-entry block, write the window's outputs and report the band's
// entries (those with a c_i) and the near entries' offsets for RowState.
// Shared by the CPU core (topk.cpp) and the CUDA kernels (src/cuda), which
// select and sort the window themselves and then run this code, one thread
// per row, on the same sorted window.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>

#include "band.hpp"
#include "block_equation.hpp"
#include "host_device.hpp"
#include "pav.hpp"
#include "regularizer.hpp"
#include "root_finding.hpp"
#include "sparsetopk/topk.hpp"

namespace sparsetopk::detail {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

// The window, sorted by key in ws.entries[0, size) and ws.s[0, size); `top` of
// them belong to the k largest. Entries outside the window are singleton
// blocks: key >= above means one of the k largest, otherwise (key <= below) not.
struct RowWindow {
  std::size_t size, top;
  double above, below;
  // No block straddles the k-th key (separated_keys): the row's outputs are
  // written already, the window is empty, and above and below are the keys of
  // sorted positions k - 1 and k (s_k and s_{k+1}, up to the sign of a zero).
  bool separated = false;
};

// Keys beyond which no entry can be in the straddling block, given the k-th
// and (k+1)-th largest keys.
SPARSETOPK_HOST_DEVICE inline void window_bounds(const BlockEquation& equation, double s_k, double s_next, double& above,
                          double& below) {
  const double l = equation.l();
  if (equation.form() == Form::mask) {
    above = s_k + l;     // tau < s_k: saturated beyond
    below = s_next - l;  // tau >= s_{k+1} - l: zero below
  } else {
    // top entries of the block have s_i < gamma + l gamma^(p-1) with gamma < s_k;
    // the others have s_i > gamma >= the singleton value g of s_k, which is
    // above s_k - l s_k^(p-1) (pow((s_k - g)/l, q-1) = g < s_k): that bound
    // where it is close (l small against s_k), else g itself. For p = 4/3 the
    // shift l s_k^(1/3) is bounded from above without libm (a wider window).
    const Regularizer& regularizer = equation.regularizer();
    const double shift = l * (regularizer.kind() == Regularizer::Kind::quartic ? cbrt_upper_bound(s_k)
                                                                                : regularizer.inverse_power(s_k));
    above = s_k + shift;
    below = shift <= 0.25 * s_k ? s_k - shift
                                : equation.solve(std::span<const double>(&s_k, 1), BlockMoments::single(s_k, 1.0));
  }
  // The bounds are rounded: widen them by a few ulps of what they are computed
  // from, so that a key within rounding of a bound stays in the window (an
  // entry that turns out to be a singleton costs nothing there).
  const double scale = equation.form() == Form::mask ? std::abs(s_k) + std::abs(s_next) + l : above;
  above += 8.0 * DBL_EPSILON * scale;
  below -= 8.0 * DBL_EPSILON * scale;
  if (above <= s_k) above = std::nextafter(s_k, kInf);  // at least one ulp beyond (nextafter only when needed)
  if (below >= s_next) below = std::nextafter(s_next, -kInf);
}

// Whether the k-th and (k+1)-th largest keys are so far apart that every entry
// of the row is a singleton block (SPEC.md, "Top-k structure"): PAV's value
// of s_k alone (w = 1) lies above s_{k+1}'s (w = 0) by more than the rounding
// at which violates() (pav.hpp) looks closer, so PAV would pool nothing. That
// value is computed as PAV computes it where that is cheap (the mask, p = 2);
// for the magnitude with p = 4/3 (a cubic) the test is that
// h(g) = ((s_k - g)/l)^3 - g, which decreases through 0 at that value, is
// still positive at g = b, a little above s_{k+1}: then the value exceeds b.
// Other p: never (their solve is not PAV's). A false answer only means that
// the window is solved as usual.
SPARSETOPK_HOST_DEVICE inline bool separated_keys(const BlockEquation& equation, double s_k, double s_next) {
  const Regularizer::Kind kind = equation.regularizer().kind();
  if (kind == Regularizer::Kind::general || !(s_k > s_next)) return false;
  const double scale = std::max(std::abs(s_k), std::abs(s_next));
  if (equation.form() == Form::mask || kind == Regularizer::Kind::quadratic) {
    const double value = equation.solve(std::span<const double>(&s_k, 1), BlockMoments::single(s_k, 1.0));
    return value - s_next > 16.0 * DBL_EPSILON * std::max(scale, std::abs(value)) + DBL_MIN;
  }
  // b is 1e-12 s_k above s_{k+1}: far beyond the few ulps of s_k by which
  // the computed value can miss the exact one (keys below 1e-280: never)
  if (!(s_k > 1e-280)) return false;
  const double b = s_next + 1e-12 * s_k, d = (s_k - b) / equation.l();
  return d > 0.0 && d * d * d > b * (1.0 + 1e-13);  // (d^3 to 6 ulps: a margin of 1e-13)
}

// The block of the isotonic solution straddling window positions top-1 and
// top (SPEC.md, "Top-k structure"); empty ([top, top)) when every block is a
// singleton.
struct StraddlingBlock {
  std::size_t begin, end;
  double gamma;
  SPARSETOPK_HOST_DEVICE bool contains(std::size_t j) const { return j >= begin && j < end; }
};

// General p on a selected window: solve SPEC.md's scalar top-k equation for
// gamma directly (PAV would re-solve the growing block after every merge,
// O(m^2)), then read the block off gamma: the entries strictly inside the band.
// Returns false, leaving the window to PAV, where a top entry's singleton
// value lies within rounding of the magnitude's gamma: whether it joins the
// block is then below what a double gamma resolves, and PAV decides it from
// the offsets of both values from a key (violates(), pav.hpp).
SPARSETOPK_HOST_DEVICE inline bool solve_threshold_equation(const RowWindow& window, const BlockEquation& equation,
                                                            const double* s, StraddlingBlock& block) {
  const std::size_t m = window.size, top = window.top;
  const double l = equation.l(), s_k = s[top - 1], s_next = s[top];
  const Regularizer& regularizer = equation.regularizer();
  std::size_t begin = 0, end = top;
  if (equation.form() == Form::mask) {
    // sum_j clip((s_j - tau)/l, 0, 1)^(q-1) = top, with s_{k+1} - l <= tau < s_k
    const auto residual = [&](double tau, double* slope) {
      double f = -static_cast<double>(top), df = 0.0;
      for (std::size_t j = 0; j < m; ++j) {
        const double u = (s[j] - tau) / l;
        if (u >= 1.0) f += 1.0;
        else if (u > 0.0) f += regularizer.power(u), df -= regularizer.slope(u) / l;
      }
      *slope = df;
      return f;
    };
    // the output has kinks where an entry enters (tau = s_j) or saturates (tau = s_j - l)
    const auto f = [&](double tau) { double slope; return residual(tau, &slope); };
    double lo = s_next - l, hi = s_k, tau = 0.0;
    if (!narrow_to_smooth_piece(f, [&](std::size_t j) { return s[j]; }, m, lo, hi, tau) &&
        !narrow_to_smooth_piece(f, [&](std::size_t j) { return s[j] - l; }, m, lo, hi, tau))
      tau = find_decreasing_root(residual, lo, hi, 0.5 * (lo + hi));
    while (begin < m && s[begin] - tau >= l) ++begin;
    end = begin;
    while (end < m && (s[end] > tau || s[end] == s_k)) ++end;  // exactly, tau < s_k: ties of s_k are in
    // exactly, tau < s_end when f(s_end) < 0, even if tau rounded onto it: its ties are in
    if (end < m && f(s[end]) < 0.0)
      for (const double key = s[end]; end < m && s[end] == key;) ++end;
    block = end <= top ? StraddlingBlock{top, top, s_next}  // as in PAV, a block must straddle top-1 and top
                       : StraddlingBlock{std::min(begin, top - 1), end, tau};
    return true;
  }
  // sum_{j < top} min(pow((s_j - g)/l, q-1) - g, 0) + sum_{j >= top} pow((s_j - g)_+/l, q-1) = 0,
  // with g between the singleton value of s_k and s_k
  const auto residual = [&](double g, double* slope) {
    double f = 0.0, df = 0.0;
    for (std::size_t j = 0; j < m; ++j) {
      const double u = (s[j] - g) / l;
      if (j < top) {
        const double excess = regularizer.power(u) - g;
        if (excess < 0.0) f += excess, df -= regularizer.slope(u) / l + 1.0;
      } else if (u > 0.0) {
        f += regularizer.power(u), df -= regularizer.slope(u) / l;
      }
    }
    *slope = df;
    return f;
  };
  // kinks: where an entry below the top k enters (g = s_j) and where a top entry
  // leaves its singleton value (g = that value)
  const auto singleton = [&](std::size_t j) {
    return equation.solve(std::span<const double>(s + j, 1), BlockMoments::single(s[j], 1.0));
  };
  const auto f = [&](double g) { double slope; return residual(g, &slope); };
  double lo = singleton(top - 1), hi = s_k, gamma = 0.0;
  if (!narrow_to_smooth_piece(f, [&](std::size_t j) { return s[top + j]; }, m - top, lo, hi, gamma) &&
      !narrow_to_smooth_piece(f, singleton, top, lo, hi, gamma))
    gamma = find_decreasing_root(residual, lo, hi, 0.5 * (lo + hi));
  while (end < m && (s[end] > gamma || s[end] == s_k)) ++end;  // exactly, gamma < s_k: ties of s_k are in
  // exactly, gamma < s_end when f(s_end) < 0, even if gamma rounded onto it: its ties are in
  if (end < m && f(s[end]) < 0.0)
    for (const double key = s[end]; end < m && s[end] == key;) ++end;
  if (end == top) {  // no entry below the top k is pulled in: no block
    block = {top, top, s_next};
    return true;
  }
  // a top entry stays a singleton where h(g) = pow((s_j - g)/l, q-1) - g, zero at its singleton
  // value, is >= 0 at gamma; undecided where h changes sign within PAV's rounding of gamma
  const auto h = [&](std::size_t j, double g) { return regularizer.power((s[j] - g) / l) - g; };
  const auto undecided = [&](std::size_t j) {
    const double rounding = 16.0 * DBL_EPSILON * std::max(s[j], std::abs(gamma)) + DBL_MIN;
    return s[j] != s_k && h(j, gamma - rounding) >= 0.0 && h(j, gamma + rounding) <= 0.0;
  };
  while (begin < top - 1 && s[begin] != s_k && h(begin, gamma) >= 0.0) ++begin;
  if ((begin > 0 && undecided(begin - 1)) || undecided(begin)) return false;
  block = {begin, end, gamma};
  return true;
}

// The straddling block of a sorted window: PAV on it (p = 2, 4/3, or
// Solver::pav), or the threshold equation (other p, unless it leaves a
// near-tie to PAV). `blocks` is PAV's stack.
template <class Blocks>
SPARSETOPK_HOST_DEVICE StraddlingBlock solve_window(const RowWindow& window, const BlockEquation& equation,
                                                    Solver solver, const double* keys, Blocks& blocks) {
  const std::size_t m = window.size, top = window.top;
  const double next_key = top < m ? keys[top] : -kInf;
  if (top == 0 || top == m) return {top, top, next_key};
  StraddlingBlock block{top, top, next_key};
  if (solver == Solver::threshold && equation.regularizer().kind() == Regularizer::Kind::general &&
      solve_threshold_equation(window, equation, keys, block))
    return block;
  const std::span<const double> s(keys, m);
  blocks.clear();
  pool_adjacent_violators_into(s, TopkWeights{top}, equation, blocks, /*topk_weights=*/true);
  for (std::size_t b = 0; b < blocks.size(); ++b)  // the first block reaching top
    if (blocks[b].end >= top) {
      if (blocks[b].end > top) return {blocks[b].begin, blocks[b].end, blocks[b].value};
      break;
    }
  return {top, top, next_key};
}

// Entries whose key lies within rounding of the threshold gamma: a double
// gamma does not resolve u_j = s_j - gamma for them, and where pow(u, q-1)
// rises steeply from 0 (p > 2, or entries tied at |s| >> l) their outputs
// depend on digits gamma does not have: an error of eps |gamma| in u_j moves
// pow(u_j, q-1) by (q-1) eps |gamma| / u_j relatively. They are the sorted
// positions j in [begin, end) with |s_j - gamma| <= 1e-6 |gamma| (+ DBL_MIN),
// outside which that error stays below 2e-10. `resolve` solves for them again in the offset
// d of the threshold from the nearest key s_ref, u_j = (s_j - s_ref) + d,
// where s_j - s_ref is exact for nearby keys.
class NearThreshold {
 public:
  SPARSETOPK_HOST_DEVICE NearThreshold(const double* s, std::size_t begin, std::size_t end, double gamma)
      : s_(s), begin_(begin), end_(end), gamma_(gamma), tolerance_(near_tolerance(gamma)) {
    if (!std::isfinite(gamma)) return;  // k = n: no threshold
    for (std::size_t j = begin; j < end; ++j) {
      if (std::abs(s[j] - gamma) > tolerance_) continue;
      if (count_ == 0 || std::abs(s[j] - gamma) < std::abs(reference_ - gamma)) reference_ = s[j];
      min_key_ = count_ == 0 ? s[j] : std::min(min_key_, s[j]);
      max_key_ = count_ == 0 ? s[j] : std::max(max_key_, s[j]);
      ++count_;
    }
  }
  SPARSETOPK_HOST_DEVICE bool empty() const { return count_ == 0; }
  SPARSETOPK_HOST_DEVICE bool contains(std::size_t j) const { return count_ > 0 && std::abs(s_[j] - gamma_) <= tolerance_; }
  SPARSETOPK_HOST_DEVICE double count() const { return static_cast<double>(count_); }

  // Solves the near entries' share of the first-order condition,
  //   sum_j term(u_j) = owed(gamma) = clamp(a + b gamma, 0, cap * count), b >= 0
  // (the mask owes a constant; the magnitude's gamma W_B moves with gamma),
  // for gamma = s_ref - d, u_j = (s_j - s_ref) + d. term(u) rises from 0 at
  // u <= 0 and is capped at `cap`. Calls set(j, u_j, term(u_j)) for each near
  // entry. Tied near entries share owed equally (d by a fixed point: u_j = d
  // may underflow where the share does not). Records the offsets in `solved`
  // (RowState's near_* and tied_* fields), so that the derivatives recompute
  // the same u_j.
  template <class Term, class Set>
  SPARSETOPK_HOST_DEVICE void resolve(const Regularizer& regularizer, double l, double a, double b, double cap, Term&& term,
               Set&& set, RowState& solved) const {
    const auto owed = [&](double gamma) { return std::clamp(a + b * gamma, 0.0, cap * count()); };
    if (min_key_ == max_key_) {
      double share = owed(gamma_) / count();
      share = owed(reference_ - l * regularizer.inverse_power(share)) / count();
      const double u = l * regularizer.inverse_power(share);
      for (std::size_t j = begin_; j < end_; ++j)
        if (contains(j)) set(j, u, share);
      solved.near_key = solved.tied_key = reference_;
      solved.near_offset = solved.tied_u = u;
      return;
    }
    // Solved from the key nearest gamma, then again from the key nearest that
    // solution: only that key's u_j needs full precision, the others' are
    // differences of distinct keys.
    double reference = reference_, d = solve_offset(regularizer, l, reference, owed, b, cap, term);
    std::size_t nearest = begin_;
    for (std::size_t j = begin_; j < end_; ++j)
      if (contains(j) && (!contains(nearest) ||
                          std::abs(s_[j] - reference + d) < std::abs(s_[nearest] - reference + d)))
        nearest = j;
    if (s_[nearest] != reference) {
      reference = s_[nearest];
      d = solve_offset(regularizer, l, reference, owed, b, cap, term);
    }
    // The entries tied at the reference share what the others leave: their
    // u_j = d may lie below what a double resolves (p large: every positive
    // d gives far too much), where the share still is exact.
    double rest = owed(reference - d), tied = 0.0;
    for (std::size_t j = begin_; j < end_; ++j)
      if (contains(j)) s_[j] == reference ? tied += 1.0 : rest -= term(s_[j] - reference + d);
    const double share = std::clamp(rest / tied, 0.0, cap), tied_u = l * regularizer.inverse_power(share);
    for (std::size_t j = begin_; j < end_; ++j) {
      if (!contains(j)) continue;
      if (s_[j] == reference) set(j, tied_u, share);
      else set(j, s_[j] - reference + d, term(s_[j] - reference + d));
    }
    solved.near_key = solved.tied_key = reference;
    solved.near_offset = d;
    solved.tied_u = tied_u;
  }

 private:
  // The offset d from `reference` at which the near entries' terms sum to owed(reference - d).
  template <class Owed, class Term>
  SPARSETOPK_HOST_DEVICE double solve_offset(const Regularizer& regularizer, double l, double reference, Owed&& owed, double b, double cap,
                      Term&& term) const {
    const auto residual = [&](double d, double* slope) {
      double f = owed(reference - d), df = -b;
      for (std::size_t j = begin_; j < end_; ++j) {
        if (!contains(j)) continue;
        const double u = s_[j] - reference + d;
        f -= term(u);
        if (u > 0.0) df -= regularizer.slope(u / l) / l;
      }
      *slope = df;
      return f;
    };
    // at lo every term is 0; at hi every term is at least owed(reference - lo) / count
    const double lo = reference - max_key_;
    const double hi = reference - min_key_ + l * regularizer.inverse_power(std::min(owed(reference - lo) / count(), cap));
    return find_decreasing_root(residual, lo, hi, 0.5 * (lo + hi));
  }

  const double* s_;
  std::size_t begin_, end_;
  double gamma_, tolerance_;
  double reference_ = 0.0, min_key_ = 0.0, max_key_ = 0.0;
  std::size_t count_ = 0;
};

// Whether the near entries must be solved again: the first-order condition's
// sum misses what it owes, or (p > 2) a block straddles the threshold.
SPARSETOPK_HOST_DEVICE inline bool needs_resolving(const NearThreshold& near, const Regularizer& regularizer, const StraddlingBlock& block,
                     double sum, double owed) {
  if (near.empty() || !std::isfinite(sum)) return false;
  return std::abs(sum - owed) > 1e-12 * std::abs(owed) || (regularizer.p() > 2.0 && block.begin < block.end);
}

// A sum with Neumaier's compensation: its error stays within a few roundings
// of the total, where a running sum of m terms drifts by up to m roundings of
// it. The near entries take what the window's other outputs leave of what it
// owes, so that drift would land on them (a window of 77,000 entries summing
// to 24,786: some 3e-8, moving a near entry's output by 2e-10 at p = 3).
struct CompensatedSum {
  double sum = 0.0, compensation = 0.0;
  SPARSETOPK_HOST_DEVICE void add(double term) {
    const double total = sum + term;
    compensation += std::abs(sum) >= std::abs(term) ? (sum - total) + term : (term - total) + sum;
    sum = total;
  }
  SPARSETOPK_HOST_DEVICE double value() const { return sum + compensation; }
};

// (gamma, W_B, unchanged_from) of a solved row, as RowState records it.
struct BandState {
  double gamma, block_weight, unchanged_from;
};

SPARSETOPK_HOST_DEVICE inline BandState band_state(const StraddlingBlock& block, const RowWindow& window,
                                                   const double* s) {
  const std::size_t top = window.top;
  const double unchanged_from = block.begin > 0 ? s[block.begin - 1] : window.above;
  const double block_weight = static_cast<double>(std::min(top, block.end) - std::min(block.begin, top));
  return {block.gamma, block_weight, unchanged_from};
}

// The window of a soft mask row: solves the band and writes
// out[index_of(j)] = clip((s_j - tau) / l, 0, 1)^(q-1) for the window's
// entries j; with `save`, calls append(column, c) for each active entry and
// records the near entries' offsets in `solved` (RowState's near_* fields).
template <class T, class IndexOf, class Blocks, class Append>
SPARSETOPK_HOST_DEVICE StraddlingBlock solve_mask_band(const RowWindow& window, const double* s, IndexOf&& index_of,
                                                       const BlockEquation& equation, Solver solver, Blocks& blocks,
                                                       T* out, bool save, Append&& append_c, RowState& solved) {
  const StraddlingBlock block = solve_window(window, equation, solver, s, blocks);
  const Regularizer& regularizer = equation.regularizer();
  const double l = equation.l();
  const NearThreshold near(s, 0, window.size, block.gamma);
  const auto append = [&](std::size_t j, double u) {  // u = u_j / l
    if (save && u > 0.0 && u < 1.0) append_c(index_of(j), jacobian_weight(regularizer, u, l));
  };
  CompensatedSum window_sum;
  double near_sum = 0.0;
  for (std::size_t j = 0; j < window.size; ++j) {
    double y = j < window.top ? 1.0 : 0.0;  // singleton blocks: y = w exactly
    if (block.contains(j)) {
      const double u = (s[j] - block.gamma) / l;
      y = std::clamp(regularizer.power(u), 0.0, 1.0);
      if (!near.contains(j)) append(j, u);
    }
    out[index_of(j)] = static_cast<T>(y);
    window_sum.add(y);
    if (near.contains(j)) near_sum += y;
  }
  // the window's outputs sum to its share of k; the near entries take what the others leave
  const double top = static_cast<double>(window.top);
  if (needs_resolving(near, regularizer, block, window_sum.value(), top)) {
    near.resolve(regularizer, l, top - (window_sum.value() - near_sum), 0.0, 1.0,
                 [&](double u) { return std::clamp(regularizer.power(u / l), 0.0, 1.0); },
                 [&](std::size_t j, double, double y) {
                   out[index_of(j)] = static_cast<T>(y);
                   if (save && y > 0.0 && y < 1.0)  // u_j / l read back from y (it may underflow to 0)
                     append_c(index_of(j), jacobian_weight(regularizer, regularizer.inverse_power(y), l));
                 },
                 solved);
  } else {
    for (std::size_t j = 0; j < window.size; ++j)
      if (near.contains(j) && block.contains(j)) append(j, (s[j] - block.gamma) / l);
  }
  return block;
}

// The window of a soft magnitude row: out_i = sign(x_i) r_i with
// r_i = pow(u_i/l, q-1) + u_i, u_i = (|x_i| - gamma)_+, on the block; x_i
// (top) or 0 on the window's singletons. `row` is the row's input. `save`,
// append_c and `solved` as for solve_mask_band.
template <class T, class IndexOf, class Blocks, class Append>
SPARSETOPK_HOST_DEVICE StraddlingBlock solve_mag_band(const RowWindow& window, const double* s, IndexOf&& index_of,
                                                      const BlockEquation& equation, Solver solver, Blocks& blocks,
                                                      const T* row, T* out, bool save, Append&& append_c,
                                                      RowState& solved) {
  const StraddlingBlock block = solve_window(window, equation, solver, s, blocks);
  const Regularizer& regularizer = equation.regularizer();
  const double l = equation.l();
  const NearThreshold near(s, block.begin, block.end, block.gamma);
  // r_j = pow(u_j/l, q-1) + u_j, at most |x_j|
  const auto write = [&](std::size_t j, double u, double power) {
    const std::size_t index = index_of(j);
    u = std::max(u, 0.0);
    const double r_j = std::min(power + u, s[j]);
    out[index] = static_cast<T>(std::copysign(r_j, static_cast<double>(row[index])));
    if (save && (u > 0.0 || power > 0.0))  // (u_j / l read back from the power when u underflowed)
      append_c(index, jacobian_weight(regularizer, u > 0.0 ? u / l : regularizer.inverse_power(power), l));
  };
  const auto power_of = [&](double u) { return regularizer.power(std::max(u, 0.0) / l); };
  CompensatedSum power_sum;
  double near_power_sum = 0.0;
  for (std::size_t j = 0; j < window.size; ++j) {
    if (!block.contains(j)) {
      const std::size_t index = index_of(j);
      out[index] = j < window.top ? row[index] : T(0);  // singleton blocks: x_i unchanged, or 0
      continue;
    }
    const double u = std::max(s[j] - block.gamma, 0.0), power = regularizer.power(u / l);
    power_sum.add(power);
    if (near.contains(j)) near_power_sum += power;
    else write(j, u, power);
  }
  // the block's condition: sum_B pow((s_j - gamma)/l, q-1) = gamma W_B
  const double block_weight = static_cast<double>(std::min(window.top, block.end) - std::min(block.begin, window.top));
  const double owed = block.gamma * block_weight;
  if (needs_resolving(near, regularizer, block, power_sum.value(), owed)) {
    // gamma W_B less the others' powers
    near.resolve(regularizer, l, -(power_sum.value() - near_power_sum), block_weight, kInf, power_of, write, solved);
  } else {
    for (std::size_t j = block.begin; j < block.end; ++j)
      if (near.contains(j)) write(j, s[j] - block.gamma, power_of(s[j] - block.gamma));
  }
  return block;
}

}  // namespace sparsetopk::detail
