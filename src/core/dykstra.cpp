// Soft top-k for p = 2 by Dykstra's alternating projections (SPEC.md,
// "Dykstra's algorithm (p = 2)"): sort, project z onto the non-increasing
// cone approximately, map back.

#include "sparsetopk/dykstra.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "band.hpp"
#include "parallel.hpp"
#include "validate.hpp"

namespace sparsetopk {
namespace detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

struct KeyedEntry {
  double key;         // x_i for the mask, |x_i| for the magnitude
  std::size_t index;  // i
};

bool descending(const KeyedEntry& a, const KeyedEntry& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

// One set of disjoint pairs (b_j >= c_j): each pair of t = v + corr that
// violates its constraint becomes its weighted mean, and corr = t - v. With
// unit-stride arrays and no branches the compiler vectorizes it; the Check
// variant (scalar) also reports whether anything changed.
// beta_j = a_c / (a_b + a_c) is the weight of c in the mean (1/2 unweighted).
template <bool Weighted, bool Check>
bool project_pairs(double* __restrict b, double* __restrict c, double* __restrict corr_b,
                   double* __restrict corr_c, const double* __restrict beta, std::size_t pairs) {
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

// Dykstra's iterations on the window [lo, hi) of a sorted row (lo even, so the
// first set pairs (lo, lo+1), (lo+2, lo+3), ...). The chain is stored as its
// even positions e[j] = v[lo+2j] and odd positions o[j] = v[lo+2j+1]: the
// first set pairs (e[j], o[j]), the second (o[j], e[j+1]), both unit-stride.
// p and q are the correction terms of the two sets.
struct DykstraChain {
  std::vector<double> e, o, pe, po, qe, qo;   // v and the corrections
  std::vector<double> beta_first, beta_second;  // a_{i+1} / (a_i + a_{i+1}) of each pair
  std::size_t lo = 0, size = 0;

  void reserve(std::size_t n) {
    const std::size_t half = n / 2 + 1;
    for (auto* v : {&e, &o, &pe, &po, &qe, &qo, &beta_first, &beta_second})
      if (v->size() < half) v->resize(half);
  }
  std::size_t first_pairs() const { return size / 2; }
  std::size_t second_pairs() const { return size > 0 ? (size - 1) / 2 : 0; }

  // z and a in sorted order over the whole row; the window starts at z[lo].
  void load(const double* z, const double* a, std::size_t window_lo, std::size_t window_size, bool weighted) {
    lo = window_lo;
    size = window_size;
    for (std::size_t t = 0; t < size; ++t) {
      (t % 2 ? o : e)[t / 2] = z[lo + t];
      (t % 2 ? po : pe)[t / 2] = 0.0;
      (t % 2 ? qo : qe)[t / 2] = 0.0;
    }
    if (!weighted) return;
    const double* aw = a + lo;
    for (std::size_t j = 0; j < first_pairs(); ++j) beta_first[j] = aw[2 * j + 1] / (aw[2 * j] + aw[2 * j + 1]);
    for (std::size_t j = 0; j < second_pairs(); ++j)
      beta_second[j] = aw[2 * j + 2] / (aw[2 * j + 1] + aw[2 * j + 2]);
  }

  // One iteration: both sets; with Check, whether the state (v, p, q) changed.
  template <bool Weighted, bool Check>
  bool iterate_once() {
    const bool first = project_pairs<Weighted, Check>(e.data(), o.data(), pe.data(), po.data(), beta_first.data(),
                                                      first_pairs());
    const bool second = project_pairs<Weighted, Check>(o.data(), e.data() + 1, qo.data(), qe.data() + 1,
                                                       beta_second.data(), second_pairs());
    return first || second;
  }

  // Every kCheckEvery-th iteration also checks for a fixed point: an
  // iteration that changes nothing would change nothing ever after, so
  // stopping there gives bitwise the result of all `iterations`.
  template <bool Weighted>
  void iterate(std::size_t iterations) {
    constexpr std::size_t kCheckEvery = 16;
    for (std::size_t it = 1; it <= iterations; ++it) {
      if (it % kCheckEvery != 0) {
        iterate_once<Weighted, false>();
      } else if (!iterate_once<Weighted, true>()) {
        return;
      }
    }
  }

  double value(std::size_t i) const {
    const std::size_t t = i - lo;
    return t % 2 ? o[t / 2] : e[t / 2];
  }
  // Whether the constraint v_i >= v_{i+1} (both in the window) was active, i.e.
  // enforced by averaging, in the last projection onto its pair.
  bool active(std::size_t i) const {
    const std::size_t t = i - lo, j = t / 2;
    if (t % 2 == 0) return pe[j] != 0.0 || po[j] != 0.0;
    return qo[j] != 0.0 || qe[j + 1] != 0.0;
  }
};

struct RowScratch {
  std::vector<KeyedEntry> entries;  // the row sorted by key, descending
  std::vector<double> z, a;         // the point to project and the weights, sorted order
  DykstraChain chain;

  void reserve(std::size_t n, std::size_t window) {
    if (entries.size() < n) {
      entries.resize(n);
      z.resize(n);
      a.resize(n);
    }
    chain.reserve(window);
  }
};

// The window of sorted positions the iterations can reach. z is
// non-increasing except at the pair (k-1, k), and each half-iteration moves
// only pairs with an entry already moved, so after T iterations every entry
// outside [k-1-2T, k+2T] is still exactly z_i: iterating on a window with a
// margin around that range gives bitwise the same result as the whole row.
struct Window {
  std::size_t lo, hi;
};

Window reachable_window(std::size_t n, std::size_t k, std::size_t iterations) {
  if (k == 0 || k == n) return {k, k};  // z is already non-increasing: nothing moves
  if (iterations >= n) return {0, n};
  const std::size_t reach = 2 * iterations + 2;
  const std::size_t lo = k - 1 > reach ? (k - 1 - reach) & ~std::size_t{1} : 0;
  return {lo, std::min(n, k + reach + 1)};
}

// The block straddling sorted positions k-1 and k: the maximal run of pairs
// joined by an active constraint; empty ([k, k)) if the pair (k-1, k) is free.
struct Block {
  std::size_t begin, end;
  bool contains(std::size_t j) const { return j >= begin && j < end; }
};

Block straddling_block(const DykstraChain& chain, const Window& window, std::size_t k) {
  if (window.hi - window.lo < 2 || !chain.active(k - 1)) return {k, k};
  std::size_t begin = k - 1, end = k + 1;
  while (begin > window.lo && chain.active(begin - 1)) --begin;
  while (end < window.hi && chain.active(end - 1)) ++end;
  return {begin, end};
}

bool finite_row(auto row) {
  return std::all_of(row.begin(), row.end(), [](auto v) { return std::isfinite(v); });
}

// Solves row r: sort, load z, iterate on the reachable window, map back to
// `out` and record the block for the derivatives.
template <class T, bool Magnitude>
void dykstra_row(std::size_t, std::span<const T> row, std::size_t k, const DykstraOptions& options,
                 RowScratch& ws, std::span<T> out, RowState* state) {
  if (!finite_row(row)) {
    std::fill(out.begin(), out.end(), static_cast<T>(kNaN));
    if (state) *state = RowState{.gamma = kNaN, .block_weight = 0.0, .unchanged_from = kNaN};
    return;
  }
  const std::size_t n = row.size();
  const double l = options.l;
  for (std::size_t i = 0; i < n; ++i) {
    const double xi = static_cast<double>(row[i]);
    ws.entries[i] = {Magnitude ? std::abs(xi) : xi, i};
  }
  std::sort(ws.entries.begin(), ws.entries.begin() + static_cast<std::ptrdiff_t>(n), descending);
  for (std::size_t j = 0; j < n; ++j) {
    const double s = ws.entries[j].key, w = j < k ? 1.0 : 0.0;
    if constexpr (Magnitude) {
      ws.a[j] = 1.0 + l * w;
      ws.z[j] = s / ws.a[j];
    } else {
      ws.z[j] = s - l * w;
    }
  }

  const Window window = reachable_window(n, k, options.iterations);
  DykstraChain& chain = ws.chain;
  chain.load(ws.z.data(), ws.a.data(), window.lo, window.hi - window.lo, Magnitude);
  chain.template iterate<Magnitude>(options.iterations);
  const Block block = straddling_block(chain, window, k);

  // Map back (SPEC.md steps 4-5). An entry still exactly at z_i was never
  // moved: a singleton block, whose output is exact (mask w_i; magnitude x_i
  // for the top k, else 0).
  BandBounds band;
  double block_sum = 0.0, block_weight_sum = 0.0;
  for (std::size_t j = 0; j < n; ++j) {
    const KeyedEntry& entry = ws.entries[j];
    const bool inside = j >= window.lo && j < window.hi;
    const double v = inside ? chain.value(j) : ws.z[j];
    const double s = entry.key;
    const bool in_block = block.contains(j);
    if (in_block) {
      const double a = Magnitude ? ws.a[j] : 1.0;
      block_sum += a * v;
      block_weight_sum += a;
    }
    bool is_active = false;
    if constexpr (Magnitude) {
      const T x_i = row[entry.index];
      if (v == ws.z[j]) {
        out[entry.index] = j < k ? x_i : T(0);
      } else {
        const double u = std::max(s - v, 0.0);
        const double magnitude = std::min((1.0 + l) / l * u, s);
        out[entry.index] = static_cast<T>(std::copysign(magnitude, static_cast<double>(x_i)));
        is_active = in_block && u > 0.0;
      }
    } else {
      if (v == ws.z[j]) {
        out[entry.index] = j < k ? T(1) : T(0);
      } else {
        const double u = (s - v) / l;
        out[entry.index] = static_cast<T>(std::clamp(u, 0.0, 1.0));
        is_active = in_block && u > 0.0 && u < 1.0;
      }
    }
    if (is_active) band.add(s, entry.index);  // (c_i = 1/l for q = 2)
  }
  if (!state) return;
  const bool empty = block.begin == block.end;
  const double gamma = !empty ? block_sum / block_weight_sum : (k < n ? ws.entries[k].key : -kInf);
  const double block_weight = static_cast<double>(std::min(k, block.end) - std::min(block.begin, k));
  const double unchanged_from = block.begin > 0 ? ws.entries[block.begin - 1].key : kInf;
  *state = RowState{.gamma = gamma, .block_weight = block_weight, .unchanged_from = unchanged_from};
  band.write(*state);
}

template <class T, bool Magnitude>
void soft_topk_dykstra(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                       const DykstraOptions& options, std::span<RowState> state) {
  check_l(options.l);
  check_iterations(static_cast<long long>(options.iterations));
  const std::size_t rows = check_batch(x.size(), n, "x");
  check_same_size(out.size(), x.size(), "out", "x");
  check_k(k, n);
  const std::size_t threads = plan_threads(rows, n);
  if (!state.empty()) check_state_rows(state.size(), rows);
  // The widest reachable window: 2 (2T + 2) + 3 positions, or the whole row.
  const std::size_t window = options.iterations >= n ? n : std::min(n, 4 * options.iterations + 7);
  std::vector<RowScratch> scratch(threads);  // all allocation happens here, before the threads start
  for (RowScratch& ws : scratch) ws.reserve(n, window);
  parallel_for(rows, threads, [&](std::size_t begin, std::size_t end, std::size_t slot) {
    for (std::size_t r = begin; r < end; ++r)
      dykstra_row<T, Magnitude>(r, x.subspan(r * n, n), k, options, scratch[slot], out.subspan(r * n, n),
                                state.empty() ? nullptr : &state[r]);
  });
}

}  // namespace
}  // namespace detail

template <class T>
void soft_topk_mask_dykstra(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                            const DykstraOptions& options, std::span<RowState> state) {
  detail::soft_topk_dykstra<T, false>(x, n, k, out, options, state);
}

template <class T>
void soft_topk_mag_dykstra(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                           const DykstraOptions& options, std::span<RowState> state) {
  detail::soft_topk_dykstra<T, true>(x, n, k, out, options, state);
}

#define SPARSETOPK_INSTANTIATE(T)                                                                            \
  template void soft_topk_mask_dykstra<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>,        \
                                          const DykstraOptions&, std::span<RowState>);                             \
  template void soft_topk_mag_dykstra<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>,         \
                                         const DykstraOptions&, std::span<RowState>);
SPARSETOPK_INSTANTIATE(float)
SPARSETOPK_INSTANTIATE(double)
#undef SPARSETOPK_INSTANTIATE

std::vector<double> soft_topk_mask_dykstra(const std::vector<double>& x, std::size_t k,
                                           const DykstraOptions& options) {
  std::vector<double> out(x.size());
  soft_topk_mask_dykstra<double>(x, x.size(), k, out, options);
  return out;
}

std::vector<double> soft_topk_mag_dykstra(const std::vector<double>& x, std::size_t k,
                                          const DykstraOptions& options) {
  std::vector<double> out(x.size());
  soft_topk_mag_dykstra<double>(x, x.size(), k, out, options);
  return out;
}

}  // namespace sparsetopk
