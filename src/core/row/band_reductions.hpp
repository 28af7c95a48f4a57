#pragma once
// The band of a wide window solved by reductions (SPEC.md, "Reduction used by
// fast solvers" and "One top-k over many tensors and many devices"): no sort,
// only sums over the window's entries. Each participant (a process of the
// global operators, a thread of a CUDA team) adds up the terms of its own
// entries, and a Combine adds the participants' parts:
//   1. the threshold equation F at Bins + 1 points of a bracket, and the kinks
//      in each sub-interval: one sum of 2 Bins + 1 numbers per round, until no
//      kink is left inside (the active set is fixed there);
//   2. gamma on that piece: closed form (p = 2, 4/3) from the active set's
//      moments, or Newton's steps (two sums per step);
//   3. the outputs, elementwise from gamma, and the band's ends for RowState.
// Used by the global operators (global.cpp, over processes) and the CUDA
// kernels (src/cuda/team_rows.hpp, over a team's threads). The results agree
// with the sorted window's solve (band_solve.hpp) to the solvers' tolerance,
// not bitwise: the sums are added in another order, and the entries within
// rounding of gamma are not solved again in offset form.
//
// A Combine provides, every participant calling each in the same order:
//   sum(double* values, std::size_t count): each value summed over the participants;
//   merge_block(BlockMoments& moments, double* sums, std::size_t count):
//     the moments merged, the sums summed;
//   merge_bounds(BandBounds& bounds, double& least): the bounds merged, least the minimum.
// Entries provide for_each(f), calling f(slot, key, position, value) for each
// of this participant's window entries (position: the entry's place in the row).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>

#include "band.hpp"
#include "band_solve.hpp"
#include "block_equation.hpp"
#include "host_device.hpp"
#include "regularizer.hpp"
#include "root_finding.hpp"
#include "sparsetopk/form.hpp"
#include "sparsetopk/row_state.hpp"

namespace sparsetopk::detail {

// The row's k-th and (k+1)-th largest keys as a selection found them, with the
// counts of keys above s_k and equal to it (s_next = -inf when k = n).
struct SelectedKeys {
  double s_k, s_next;
  std::size_t greater, ties;
};

// The most rounds of the search for a smooth piece (32^12 > 64^9 > 2^53: the
// bracket is down to a few ulps well before).
inline constexpr int kMaxPieceRounds = 12;

// The threshold equation of SPEC.md ("Reduction used by fast solvers") over
// the window's entries, with the terms of the entries outside it and of the
// entries tied at s_k (whose top-or-rest split the selection counted) added
// once, after the reduction:
//   mask: F(tau) = sum_i clip((x_i - tau)/l, 0, 1)^(q-1) - k, on [s_{k+1} - l, s_k];
//   magnitude: F(g) = sum_top min(h_i(g), 0) + sum_rest pow((s_i - g)_+/l, q-1),
//     h_i(g) = pow((s_i - g)/l, q-1) - g, on [g_k, s_k] (g_k: s_k's singleton value).
// Both decrease; their kinks lie where an entry enters or leaves the band.
class BandEquation {
 public:
  SPARSETOPK_HOST_DEVICE BandEquation(const BlockEquation& equation, const SelectedKeys& selected, std::size_t k,
                                      double count_above)
      : equation_(equation), s_k_(selected.s_k), ties_(static_cast<double>(selected.ties)),
        ties_top_(static_cast<double>(k - selected.greater)), owed_(static_cast<double>(k) - count_above) {}

  SPARSETOPK_HOST_DEVICE Form form() const { return equation_.form(); }
  SPARSETOPK_HOST_DEVICE double l() const { return equation_.l(); }
  SPARSETOPK_HOST_DEVICE const Regularizer& regularizer() const { return equation_.regularizer(); }
  SPARSETOPK_HOST_DEVICE double s_k() const { return s_k_; }
  SPARSETOPK_HOST_DEVICE double ties() const { return ties_; }
  SPARSETOPK_HOST_DEVICE double ties_top() const { return ties_top_; }
  SPARSETOPK_HOST_DEVICE bool ties_cross() const { return ties_ > ties_top_; }
  SPARSETOPK_HOST_DEVICE double h(double key, double g) const { return regularizer().power((key - g) / l()) - g; }
  SPARSETOPK_HOST_DEVICE double mask_term(double key, double tau) const {
    return std::clamp(regularizer().power((key - tau) / l()), 0.0, 1.0);
  }
  SPARSETOPK_HOST_DEVICE double rest_term(double key, double g) const {
    return regularizer().power(std::max(key - g, 0.0) / l());
  }
  // s_k's singleton value as the top entry it is (w = 1)
  SPARSETOPK_HOST_DEVICE double singleton(double key) const {
    return equation_.solve(std::span<const double>(&key, 1), BlockMoments::single(key, 1.0));
  }

  // An entry's term (entries tied at s_k are added by global_term).
  SPARSETOPK_HOST_DEVICE double term(double key, double t) const {
    if (form() == Form::mask) return mask_term(key, t);
    return key > s_k_ ? std::min(h(key, t), 0.0) : rest_term(key, t);
  }
  // The terms of the entries outside the window and tied at s_k, and the right side.
  SPARSETOPK_HOST_DEVICE double global_term(double t) const {
    if (form() == Form::mask) return -owed_;
    return ties_top_ * std::min(h(s_k_, t), 0.0) + (ties_ - ties_top_) * rest_term(s_k_, t);
  }
  // Whether the entry is one of the magnitude's ties at s_k (their terms: global_term).
  SPARSETOPK_HOST_DEVICE bool tied(double key) const { return form() == Form::magnitude && key == s_k_; }
  // Where the entry's term has kinks: mask x_i and x_i - l; magnitude, top: g_i; rest: s_i.
  template <class F>
  SPARSETOPK_HOST_DEVICE void kinks(double key, F&& f) const {
    if (form() == Form::mask) f(key), f(key - l());
    else f(key > s_k_ ? singleton(key) : key);
  }
  // Whether a window entry is in the block at g (mask: 0 < u < 1; magnitude:
  // top entries with h < 0, rest entries above g, ties all in when they cross).
  SPARSETOPK_HOST_DEVICE bool in_block(double key, double g) const {
    if (form() == Form::mask) {
      const double u = (key - g) / l();
      return u > 0.0 && u < 1.0;
    }
    if (key > s_k_ || (key == s_k_ && !ties_cross())) return h(key, g) < 0.0;
    return key > g;
  }

 private:
  const BlockEquation& equation_;
  double s_k_, ties_, ties_top_, owed_;
};

// Where the search for the threshold equation's smooth piece stands: the
// bracket [lo, hi] of its root (F(lo) >= 0 > F(hi)) and the rounds so far.
// `block` false: F(lo) <= 0, no entry is pulled into a block (the
// magnitude's separated case). `settled`: no kink lies inside the bracket (the
// active set is fixed there), or it is a few ulps wide, or the root was hit.
struct BandSearch {
  double lo, hi;
  int rounds;
  bool block, settled;
};

SPARSETOPK_HOST_DEVICE inline BandSearch start_band_search(const BandEquation& band, const SelectedKeys& selected) {
  const bool mask = band.form() == Form::mask;
  const bool block = mask || selected.s_k > 0.0;
  return {mask ? selected.s_next - band.l() : band.singleton(selected.s_k), selected.s_k, 0, block, !block};
}

// The j-th of the round's Bins + 1 points, from lo to hi.
template <std::size_t Bins>
SPARSETOPK_HOST_DEVICE double round_point(const BandSearch& search, std::size_t j) {
  return j == Bins ? search.hi
                   : search.lo + (search.hi - search.lo) * static_cast<double>(j) / static_cast<double>(Bins);
}

// A participant's share of a round: into sums[0, Bins] the terms of F at the
// points, into sums[Bins + 1, 2 Bins] how many kinks lie in each sub-interval.
template <std::size_t Bins, class Entries>
SPARSETOPK_HOST_DEVICE void add_round_terms(const BandEquation& equation, const Entries& entries,
                                            const BandSearch& search, double* sums) {
  const double lo = search.lo, hi = search.hi, width = hi - lo;
  double* f = sums;
  double* kinks = sums + Bins + 1;
  entries.for_each([&](std::size_t, double key, double, double) {
    if (equation.tied(key)) return;
    for (std::size_t j = 0; j <= Bins; ++j) f[j] += equation.term(key, round_point<Bins>(search, j));
    // conservatively: a kink near a sub-interval's end counts for both neighbours
    equation.kinks(key, [&](double kink) {
      if (!(kink > lo && kink < hi)) return;
      const double at = (kink - lo) / width * static_cast<double>(Bins);
      const std::size_t bin = std::min<std::size_t>(Bins - 1, static_cast<std::size_t>(at));
      kinks[bin] += 1.0;
      if (bin > 0 && at - static_cast<double>(bin) < 1e-9) kinks[bin - 1] += 1.0;
      if (bin + 1 < Bins && static_cast<double>(bin + 1) - at < 1e-9) kinks[bin + 1] += 1.0;
    });
  });
}

// The round's choice, from its sums over every participant: the
// sub-interval holding the root.
template <std::size_t Bins>
SPARSETOPK_HOST_DEVICE void choose_sub_interval(const BandEquation& equation, double* sums, BandSearch& search) {
  double* f = sums;
  const double* kinks = sums + Bins + 1;
  for (std::size_t j = 0; j <= Bins; ++j) f[j] += equation.global_term(round_point<Bins>(search, j));
  if (search.rounds++ == 0 && !(f[0] > 0.0)) {
    search.block = false, search.settled = true;
    return;
  }
  std::size_t j = 1;
  while (j < Bins && !(f[j] < 0.0)) ++j;
  const double new_lo = round_point<Bins>(search, j - 1), new_hi = round_point<Bins>(search, j);
  if (f[j - 1] == 0.0) {  // the root itself
    search.lo = search.hi = new_lo;
    search.settled = true;
    return;
  }
  search.lo = new_lo, search.hi = new_hi;
  search.settled =
      kinks[j - 1] == 0.0 || !(std::nextafter(new_lo, kInf) < new_hi) || search.rounds >= kMaxPieceRounds;
}

// Narrows the search round by round (at most kMaxPieceRounds in all), each
// round's sums added over every participant.
template <std::size_t Bins, class Entries, class Combine>
SPARSETOPK_HOST_DEVICE void narrow_by_reductions(const BandEquation& equation, const Entries& entries,
                                                 BandSearch& search, Combine& combine) {
  while (!search.settled) {
    double sums[2 * Bins + 1] = {};
    add_round_terms<Bins>(equation, entries, search, sums);
    combine.sum(sums, 2 * Bins + 1);
    choose_sub_interval<Bins>(equation, sums, search);
  }
}

// The band from a settled search: gamma on the piece, then the outputs
// (write(slot, y) for each of this participant's window entries) and the
// row's RowState (the band's ends only with `save`), the same on every
// participant. `count_above`: the entries of the row above the window;
// `above`: the window's upper bound.
template <class Entries, class Combine, class Write>
SPARSETOPK_HOST_DEVICE RowState finish_band_by_reductions(const BandEquation& band, const SelectedKeys& selected,
                                                          std::size_t k, double count_above, double above,
                                                          const BandSearch& search, const Entries& entries,
                                                          Combine& combine, Write&& write, bool save) {
  const Regularizer& regularizer = band.regularizer();
  const Form form = band.form();
  const double l = band.l(), s_k = selected.s_k, lo = search.lo, hi = search.hi;
  const bool mask = form == Form::mask, block = search.block;
  double gamma = selected.s_next, weight = 0.0;
  if (block) {
    // the active set on the piece, read at its midpoint: its moments, and what it owes
    const double mid = 0.5 * (lo + hi);
    BlockMoments moments;
    double counts[2] = {0.0, 0.0};  // saturated (mask), active top entries
    entries.for_each([&](std::size_t, double key, double, double) {
      if (band.tied(key)) return;  // added below, once
      if (band.in_block(key, mid)) {
        const BlockMoments one = BlockMoments::single(key, 0.0);
        if (moments.count == 0.0) moments = one;
        else moments.merge(one);
        if (key > s_k) counts[1] += 1.0;
      } else if (mask && key - mid >= l) {
        counts[0] += 1.0;
      }
    });
    combine.merge_block(moments, counts, 2);
    double active_top = counts[1], tie_count = 0.0;  // tie_count: the magnitude's entries tied at s_k in the block
    if (!mask) {
      const bool top_in = band.ties_cross() || band.h(s_k, mid) < 0.0;
      tie_count = band.ties_cross() ? band.ties() : (top_in ? band.ties_top() : 0.0);
      if (tie_count > 0.0) {  // tie_count entries at s_k: no spread
        const BlockMoments ties_moments{tie_count, 0.0, s_k, BlockMoments::unit_of(s_k), 0.0, 0.0};
        if (moments.count == 0.0) moments = ties_moments;
        else moments.merge(ties_moments);
      }
      if (top_in) active_top += band.ties_top();
    }
    weight = mask ? static_cast<double>(k) - count_above - counts[0] : active_top;
    moments.weight = weight;
    if (lo == hi || moments.count == 0.0) {
      gamma = lo == hi ? lo : mid;
    } else if (regularizer.kind() != Regularizer::Kind::general) {
      gamma = std::clamp(closed_form_value(form, regularizer.kind(), l, moments), lo, hi);
    } else {  // Newton, safeguarded by bisection, on sums over every participant
      const auto residual = [&](double g, double* slope) {
        double sums[2] = {0.0, 0.0};
        entries.for_each([&](std::size_t, double key, double, double) {
          if (band.tied(key) || !band.in_block(key, mid)) return;
          const double u = (key - g) / l;
          sums[0] += regularizer.power(u);
          sums[1] -= regularizer.slope(u) / l;
        });
        combine.sum(sums, 2);
        const double u = (s_k - g) / l;
        sums[0] += tie_count * regularizer.power(u) - (mask ? weight : g * weight);
        sums[1] -= tie_count * regularizer.slope(u) / l + (mask ? 0.0 : weight);
        *slope = sums[1];
        return sums[0];
      };
      gamma = find_decreasing_root(residual, lo, hi, mid);
    }
  }
  // the outputs, the band's first and last entries, and the least unchanged key
  BandBounds bounds;
  double least_unchanged = above;  // as the row operator has it: the smallest unchanged key in the window, else above
  entries.for_each([&](std::size_t slot, double key, double position, double value) {
    const bool in = block && band.in_block(key, gamma);
    double y;
    if (mask) {
      y = block ? band.mask_term(key, gamma) : (key >= s_k ? 1.0 : 0.0);
      if (y >= 1.0) least_unchanged = std::min(least_unchanged, key);
    } else if (!in) {
      const bool top = key > s_k || (key == s_k && !band.ties_cross());
      y = top ? value : 0.0;
      if (top) least_unchanged = std::min(least_unchanged, key);
    } else {
      const double u = std::max(key - gamma, 0.0);
      y = std::copysign(std::min(regularizer.power(u / l) + u, key), value);
    }
    write(slot, y);
    if (in && key - gamma > 0.0) bounds.add(key, static_cast<std::size_t>(position));
  });
  RowState state{.gamma = block ? gamma : selected.s_next, .block_weight = weight, .unchanged_from = kInf};
  if (!save) return state;
  combine.merge_bounds(bounds, least_unchanged);
  state.unchanged_from = least_unchanged;
  bounds.write(state);
  return state;
}

// The band of a wide window solved by reductions: the search, then
// finish_band_by_reductions.
template <std::size_t Bins, class Entries, class Combine, class Write>
SPARSETOPK_HOST_DEVICE RowState solve_band_by_reductions(const BlockEquation& equation, const SelectedKeys& selected,
                                                         std::size_t k, double count_above, double above,
                                                         const Entries& entries, Combine& combine, Write&& write,
                                                         bool save) {
  const BandEquation band(equation, selected, k, count_above);
  BandSearch search = start_band_search(band, selected);
  narrow_by_reductions<Bins>(band, entries, search, combine);
  return finish_band_by_reductions(band, selected, k, count_above, above, search, entries, combine, write, save);
}

}  // namespace sparsetopk::detail
