#pragma once
// Dykstra's alternating projections for p = 2 (SPEC.md, "Dykstra's algorithm
// (p = 2)") on one sorted row, over memory the caller owns: the point z to
// project, the chain of pairs iterated on the reachable window, the block
// straddling sorted positions k-1 and k, and the map back to outputs and
// RowState. The caller sorts the row (dykstra.cpp); nothing here allocates,
// sorts or throws.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>

#include "band.hpp"
#include "host_device.hpp"
#include "sorted_order.hpp"
#include "sparsetopk/form.hpp"
#include "sparsetopk/row_state.hpp"

namespace sparsetopk::detail {

// One set of disjoint pairs (b_j >= c_j): each pair of t = v + corr that
// violates its constraint becomes its weighted mean, and corr = t - v. With
// unit-stride arrays and no branches the compiler vectorizes it; the Check
// variant (scalar) also reports whether anything changed.
// beta_j = a_c / (a_b + a_c) is the weight of c in the mean (1/2 unweighted).
template <bool Weighted, bool Check>
SPARSETOPK_HOST_DEVICE bool project_pairs(double* __restrict__ b, double* __restrict__ c,
                                          double* __restrict__ corr_b, double* __restrict__ corr_c,
                                          const double* __restrict__ beta, std::size_t pairs) {
  bool changed = false;
  for (std::size_t j = 0; j < pairs; ++j) {
    const double tb = b[j] + corr_b[j], tc = c[j] + corr_c[j];
    // Both forms return tb exactly when tb == tc, so ties never move.
    const double mean = Weighted ? tb + (tc - tb) * beta[j] : 0.5 * (tb + tc);
    // A violating pair (tb < tc) has tb <= mean <= tc; otherwise mean <= tb and
    // mean >= tc. So max / min select without a branch.
    const double vb = std::max(tb, mean), vc = std::min(tc, mean);
    if constexpr (Check)
      changed = changed || vb != b[j] || vc != c[j] || tb - vb != corr_b[j] || tc - vc != corr_c[j];
    b[j] = vb;
    c[j] = vc;
    corr_b[j] = tb - vb;
    corr_c[j] = tc - vc;
  }
  return changed;
}

// Doubles of caller memory that a chain over a window of `window` positions needs.
SPARSETOPK_HOST_DEVICE constexpr std::size_t dykstra_chain_doubles(std::size_t window) {
  return 8 * (window / 2 + 1);
}

// Dykstra's iterations on the window [lo, hi) of a sorted row (lo even, so the
// first set pairs (lo, lo+1), (lo+2, lo+3), ...). The chain is stored as its
// even positions e[j] = v[lo+2j] and odd positions o[j] = v[lo+2j+1]: the
// first set pairs (e[j], o[j]), the second (o[j], e[j+1]), both unit-stride.
// p and q are the correction terms of the two sets. The arrays are views of
// caller memory (over()).
struct DykstraChain {
  double *e, *o, *pe, *po, *qe, *qo;       // v and the corrections
  double *beta_first, *beta_second;        // a_{i+1} / (a_i + a_{i+1}) of each pair
  std::size_t lo = 0, size = 0;

  // A chain over windows of up to `window` positions, in dykstra_chain_doubles(window) doubles.
  SPARSETOPK_HOST_DEVICE static DykstraChain over(double* memory, std::size_t window) {
    const std::size_t half = window / 2 + 1;
    const auto part = [memory, half](std::size_t i) { return memory + i * half; };
    return {part(0), part(1), part(2), part(3), part(4), part(5), part(6), part(7)};
  }

  SPARSETOPK_HOST_DEVICE std::size_t first_pairs() const { return size / 2; }
  SPARSETOPK_HOST_DEVICE std::size_t second_pairs() const { return size > 0 ? (size - 1) / 2 : 0; }

  // z and a in sorted order over the whole row; the window starts at z[lo].
  SPARSETOPK_HOST_DEVICE void load(const double* z, const double* a, std::size_t window_lo, std::size_t window_size,
                                   bool weighted) {
    lo = window_lo;
    size = window_size;
    const double* zw = z + lo;
    for (std::size_t j = 0; 2 * j < size; ++j) e[j] = zw[2 * j], pe[j] = 0.0, qe[j] = 0.0;
    for (std::size_t j = 0; 2 * j + 1 < size; ++j) o[j] = zw[2 * j + 1], po[j] = 0.0, qo[j] = 0.0;
    if (!weighted) return;
    const double* aw = a + lo;
    for (std::size_t j = 0; j < first_pairs(); ++j) beta_first[j] = aw[2 * j + 1] / (aw[2 * j] + aw[2 * j + 1]);
    for (std::size_t j = 0; j < second_pairs(); ++j)
      beta_second[j] = aw[2 * j + 2] / (aw[2 * j + 1] + aw[2 * j + 2]);
  }

  // One iteration: both sets; with Check, whether the state (v, p, q) changed.
  template <bool Weighted, bool Check>
  SPARSETOPK_HOST_DEVICE bool iterate_once() {
    const bool first = project_pairs<Weighted, Check>(e, o, pe, po, beta_first, first_pairs());
    const bool second = project_pairs<Weighted, Check>(o, e + 1, qo, qe + 1, beta_second, second_pairs());
    return first || second;
  }

  // Every kCheckEvery-th iteration also checks for a fixed point: an
  // iteration that changes nothing would change nothing ever after, so
  // stopping there gives bitwise the result of all `iterations`.
  template <bool Weighted>
  SPARSETOPK_HOST_DEVICE void iterate(std::size_t iterations) {
    constexpr std::size_t kCheckEvery = 16;
    for (std::size_t it = 1; it <= iterations; ++it) {
      if (it % kCheckEvery != 0) {
        iterate_once<Weighted, false>();
      } else if (!iterate_once<Weighted, true>()) {
        return;
      }
    }
  }

  SPARSETOPK_HOST_DEVICE double value(std::size_t i) const {
    const std::size_t t = i - lo;
    return t % 2 ? o[t / 2] : e[t / 2];
  }
  // Whether the constraint v_i >= v_{i+1} (both in the window) was active, i.e.
  // enforced by averaging, in the last projection onto its pair.
  SPARSETOPK_HOST_DEVICE bool active(std::size_t i) const {
    const std::size_t t = i - lo, j = t / 2;
    if (t % 2 == 0) return pe[j] != 0.0 || po[j] != 0.0;
    return qo[j] != 0.0 || qe[j + 1] != 0.0;
  }
};

// The window of sorted positions the iterations can reach. z is
// non-increasing except at the pair (k-1, k), and each half-iteration moves
// only pairs with an entry already moved, so after T iterations every entry
// outside [k-1-2T, k+2T] is still exactly z_i: iterating on a window with a
// margin around that range gives bitwise the same result as the whole row.
struct DykstraWindow {
  std::size_t lo, hi;
};

SPARSETOPK_HOST_DEVICE inline DykstraWindow reachable_window(std::size_t n, std::size_t k, std::size_t iterations) {
  if (k == 0 || k == n) return {k, k};  // z is already non-increasing: nothing moves
  if (iterations >= n) return {0, n};
  const std::size_t reach = 2 * iterations + 2;
  const std::size_t lo = k - 1 > reach ? (k - 1 - reach) & ~std::size_t{1} : 0;
  return {lo, std::min(n, k + reach + 1)};
}

// The widest reachable window over rows of n: 2 (2T + 2) + 3 positions, or the whole row.
SPARSETOPK_HOST_DEVICE inline std::size_t widest_window(std::size_t n, std::size_t iterations) {
  return iterations >= n ? n : std::min(n, 4 * iterations + 7);
}

// The block straddling sorted positions k-1 and k: the maximal run of pairs
// joined by an active constraint; empty ([k, k)) if the pair (k-1, k) is free.
struct DykstraBlock {
  std::size_t begin, end;
  SPARSETOPK_HOST_DEVICE bool contains(std::size_t j) const { return j >= begin && j < end; }
};

SPARSETOPK_HOST_DEVICE inline DykstraBlock straddling_block(const DykstraChain& chain, const DykstraWindow& window,
                                                            std::size_t k) {
  if (window.hi - window.lo < 2 || !chain.active(k - 1)) return {k, k};
  std::size_t begin = k - 1, end = k + 1;
  while (begin > window.lo && chain.active(begin - 1)) --begin;
  while (end < window.hi && chain.active(end - 1)) ++end;
  return {begin, end};
}

// The point to project, from the sorted keys s and w = (1, ..., 1, 0, ..., 0):
// mask z = s - l w; magnitude a = 1 + l w, z = s / a (a is left alone for the mask).
SPARSETOPK_HOST_DEVICE inline void dykstra_point(Form form, std::span<const SortedEntry> sorted, std::size_t k,
                                                 double l, std::span<double> z, std::span<double> a) {
  for (std::size_t j = 0; j < sorted.size(); ++j) {
    const double s = sorted[j].key, w = j < k ? 1.0 : 0.0;
    if (form == Form::magnitude) {
      a[j] = 1.0 + l * w;
      z[j] = s / a[j];
    } else {
      z[j] = s - l * w;
    }
  }
}

// The output of a sorted entry with key s, point z and value v (SPEC.md steps
// 4-5 for q = 2). An entry still exactly at z was never moved: a singleton
// block, whose output is exact (mask w_i; magnitude x_i for the top k, else
// 0). `interior`: whether its u lies where the output moves with it (c_i = 1/l).
template <class T>
SPARSETOPK_HOST_DEVICE T dykstra_output(Form form, double l, double s, double z, double v, bool top, T x_i,
                                        bool& interior) {
  interior = false;
  if (form == Form::magnitude) {
    if (v == z) return top ? x_i : T(0);
    const double u = std::max(s - v, 0.0);
    const double magnitude = std::min((1.0 + l) / l * u, s);
    interior = u > 0.0;
    return static_cast<T>(std::copysign(magnitude, static_cast<double>(x_i)));
  }
  if (v == z) return top ? T(1) : T(0);
  const double u = (s - v) / l;
  interior = u > 0.0 && u < 1.0;
  return static_cast<T>(std::clamp(u, 0.0, 1.0));
}

// The row's RowState from its block (gamma: the block's weighted mean of v,
// or s_{k+1} for an empty block) and its band.
SPARSETOPK_HOST_DEVICE inline RowState dykstra_state(std::span<const SortedEntry> sorted, std::size_t k,
                                                     const DykstraBlock& block, double block_sum,
                                                     double block_weight_sum, const BandBounds& band) {
  const std::size_t n = sorted.size();
  const bool empty = block.begin == block.end;
  const double gamma = !empty ? block_sum / block_weight_sum : (k < n ? sorted[k].key : -HUGE_VAL);
  const double block_weight = static_cast<double>(std::min(k, block.end) - std::min(block.begin, k));
  const double unchanged_from = block.begin > 0 ? sorted[block.begin - 1].key : HUGE_VAL;
  RowState state{.gamma = gamma, .block_weight = block_weight, .unchanged_from = unchanged_from};
  band.write(state);
  return state;
}

// The scratch of one row of n: the point z and the weights a (n doubles
// each), and a chain over at least widest_window(n, iterations) positions.
struct DykstraScratch {
  std::span<double> z, a;
  DykstraChain chain;
};

// Solves one finite row: `sorted` its entries in sorted order, `row` its x.
// Writes out and, if given, the row's state for the derivatives.
template <class T>
SPARSETOPK_HOST_DEVICE void dykstra_row(Form form, std::span<const SortedEntry> sorted, std::span<const T> row,
                                        std::size_t k, double l, std::size_t iterations, DykstraScratch& scratch,
                                        std::span<T> out, RowState* state) {
  const std::size_t n = sorted.size();
  const bool weighted = form == Form::magnitude;
  const std::span<double> z = scratch.z, a = scratch.a;
  DykstraChain& chain = scratch.chain;
  dykstra_point(form, sorted, k, l, z, a);
  const DykstraWindow window = reachable_window(n, k, iterations);
  chain.load(z.data(), a.data(), window.lo, window.hi - window.lo, weighted);
  if (weighted) chain.iterate<true>(iterations);
  else chain.iterate<false>(iterations);
  const DykstraBlock block = straddling_block(chain, window, k);

  BandBounds band;
  double block_sum = 0.0, block_weight_sum = 0.0;
  for (std::size_t j = 0; j < n; ++j) {
    const SortedEntry& entry = sorted[j];
    const double v = j >= window.lo && j < window.hi ? chain.value(j) : z[j];
    const bool in_block = block.contains(j);
    if (in_block) {
      const double a_j = weighted ? a[j] : 1.0;
      block_sum += a_j * v;
      block_weight_sum += a_j;
    }
    bool interior;
    out[entry.index] = dykstra_output(form, l, entry.key, z[j], v, j < k, row[entry.index], interior);
    if (in_block && interior) band.add(entry.key, entry.index);  // (c_i = 1/l for q = 2)
  }
  if (state) *state = dykstra_state(sorted, k, block, block_sum, block_weight_sum, band);
}

}  // namespace sparsetopk::detail
