#pragma once
// One row of each operator, computed by a team (team.hpp): the pieces a team
// does together (selection of the k-th key, the split at the window, the sort
// of the window, reductions over the row), around the core's per-row
// functions (src/core/row: window_bounds, separated_keys, solve_mask_band /
// solve_mag_band, band_state, hard_kept, the band's c_i and the Jacobian
// entries), which one thread runs where they are sequential. The CUDA kernels
// and the CPU harness run this same code. UNVERIFIED on a GPU (docs/gpu.md).

#include <climits>
#include <cmath>
#include <cstddef>
#include <limits>

#include "band.hpp"
#include "band_reductions.hpp"
#include "band_solve.hpp"
#include "block_equation.hpp"
#include "hard_topk.hpp"
#include "radix_select.hpp"
#include "saved_band.hpp"
#include "sorted_order.hpp"
#include "sparsetopk/row_state.hpp"
#include "sparsetopk/topk.hpp"
#include "team.hpp"
#include "team_row.hpp"
#include "topk_kernels.hpp"

namespace sparsetopk::cuda {

// A row's scratch in device memory: the window's keys and columns (n each),
// PAV's stack (n blocks).
struct RowScratch {
  double* keys;
  long long* index;
  detail::PavBlock* blocks;
};

// The k-th largest key (its bits, value, and rank among its ties) and the (k+1)-th.
template <class T>
struct KthKeys {
  BitsOf<T> kth;
  long long remaining;  // the k-th entry's rank among the keys equal to s_k (1-based)
  double s_k, s_next;
};

// choose_digit (radix_select.hpp) by each warp on its own, the same answer on
// every lane: lane j sums the 8 digits 255 - 8j down to 248 - 8j, a scan over
// the lanes finds the lane whose digits hold the remaining-th key, and every
// lane walks those 8 (about 20 steps, where one thread's walk over the 256
// counters takes up to 256 dependent reads of shared memory). Counts of a
// row of up to 16,384 entries fit 32 bits.
template <class U>
__device__ void warp_choose_digit(const unsigned* counts, int shift, U& prefix, long long& remaining,
                                  long long& ties) {
  constexpr int kPerLane = kRadixSize / static_cast<int>(kWarpSize);
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  const unsigned* mine = counts + kRadixSize - kPerLane * (lane + 1);  // digits in [8 (31 - lane), 8 (32 - lane))
  unsigned group = 0;
  for (int i = 0; i < kPerLane; ++i) group += mine[i];
  unsigned inclusive = group;  // the keys in the digits of lanes 0..lane
  for (int offset = 1; offset < static_cast<int>(kWarpSize); offset *= 2) {
    const unsigned before = __shfl_up_sync(kFullMask, inclusive, static_cast<unsigned>(offset));
    if (lane >= offset) inclusive += before;
  }
  const long long wanted = remaining;
  const unsigned holders = __ballot_sync(kFullMask, inclusive - group < wanted && wanted <= inclusive);
  if (holders == 0) return;  // (no digit holds it: as choose_digit, nothing changes)
  const int holder = __ffs(static_cast<int>(holders)) - 1;
  long long above = __shfl_sync(kFullMask, inclusive - group, holder);
  for (int d = kRadixSize - 1 - kPerLane * holder; d > kRadixSize - 1 - kPerLane * (holder + 1); --d) {
    const long long count = static_cast<long long>(counts[d]);
    if (above + count >= wanted) {
      prefix |= static_cast<U>(d) << shift;
      remaining = wanted - above;
      ties = count;
      return;
    }
    above += count;
  }
}

// The selection's result from the k-th key's bits: with `with_next`, the
// (k+1)-th key is a tie of s_k if one is left after the k-th (ties >
// remaining), else the largest key below s_k (a max over the team).
template <class T, class Team, class Row>
__device__ KthKeys<T> kth_keys(const Team& team, Form form, const Row& row, BitsOf<T> kth, long long remaining,
                               long long ties, bool with_next) {
  using U = BitsOf<T>;
  U next = kth;
  if (with_next && ties <= remaining) {
    U best = 0;
    row.for_each([&](long long, T x) {
      const U e = encode(key_of(form, x));
      if (e < kth && e > best) best = e;
    });
    next = team.all_reduce(best, Max{});
  }
  return {kth, remaining, static_cast<double>(decode<T>(kth)), static_cast<double>(decode<T>(next))};
}

// Radix selection over the keys' order-preserving bits (radix_select.hpp):
// one pass per 8-bit digit, the team counting the digits of the keys that
// match the prefix so far into shared memory (team.counts()); then the
// (k+1)-th key. Needs 0 < k < n.
template <class T, class Team, class Row>
__device__ KthKeys<T> select_kth_keys(const Team& team, Form form, const Row& row, long long k, bool with_next) {
  using U = BitsOf<T>;
  unsigned* counts = team.counts();
  U prefix = 0;
  long long remaining = k, ties = 0;
  for (int shift = 8 * static_cast<int>(sizeof(U)) - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (unsigned d = team.rank(); d < static_cast<unsigned>(kRadixSize); d += team.size()) counts[d] = 0;
    team.sync();
    row.for_each([&](long long, T x) {
      const U e = encode(key_of(form, x));
      if (matches_prefix(e, prefix, shift)) atomicAdd(&counts[(e >> shift) & (kRadixSize - 1)], 1u);
    });
    team.sync();
    warp_choose_digit(counts, shift, prefix, remaining, ties);  // every warp: the same digit
    team.sync();
  }
  return kth_keys<T>(team, form, row, prefix, remaining, ties, with_next);
}

// The same selection for a warp's row in registers, a bit per pass and no
// shared memory: each slot's keys that match the prefix and have the bit set
// are counted by one ballot (radix_select.hpp's choice, with two digits). It
// stops as soon as one key is left that matches the prefix, and takes that
// key's remaining bits from it: distinct keys need about log2(n) passes past
// their common leading bits, not one per bit.
template <class T>
__device__ KthKeys<T> select_kth_keys(const WarpTeam& team, Form form, const RegisterRow<T>& row, long long k,
                                      bool with_next) {
  using U = BitsOf<T>;
  U prefix = 0;
  long long remaining = k, matching = row.size();  // keys whose bits from `decided` up are the prefix's
  int decided = 8 * static_cast<int>(sizeof(U));
  while (decided > 0 && matching > 1) {
    const int bit = decided - 1;
    long long ones = 0;  // of the matching keys, those with the bit set
    row.for_each_tile([&](long long, bool inside, T x) {
      const U e = encode(key_of(form, x));
      ones += __popc(__ballot_sync(kFullMask, inside && matches_from(e, prefix, decided) && ((e >> bit) & 1u)));
    });
    if (remaining <= ones) {
      prefix |= U(1) << bit;
      matching = ones;
    } else {
      remaining -= ones;
      matching -= ones;
    }
    decided = bit;
  }
  if (decided > 0) {  // one key matches the prefix: it is the k-th
    U found = 0;
    row.for_each([&](long long, T x) {
      const U e = encode(key_of(form, x));
      if (matches_from(e, prefix, decided)) found = e;
    });
    prefix = team.all_reduce(found, Max{});
  }
  return kth_keys<T>(team, form, row, prefix, remaining, matching, with_next);
}

// The first (first = true) or last entry in sorted order among the keys equal
// to `key`, as (key with its sign of zero, column): the lowest or highest column.
template <class T, class Team, class Row>
__device__ double tied_key_at_end(const Team& team, Form form, const Row& row, double key, bool first) {
  long long found = first ? LLONG_MAX : -1;
  row.for_each([&](long long i, T x) {
    if (static_cast<double>(detail::sort_key(form, x)) == key) found = first ? (i < found ? i : found) : i;
  });
  found = first ? team.all_reduce(found, Min{}) : team.all_reduce(found, Max{});
  return static_cast<double>(detail::sort_key(form, static_cast<double>(row.data()[found])));
}

// The entry of the row first (largest key, lowest column) or last in sorted order.
struct SortedEnd {
  double key;
  long long index;
};
struct FirstInOrder {
  __device__ SortedEnd operator()(SortedEnd a, SortedEnd b) const {
    return detail::sorted_before(a.key, a.index, b.key, b.index) ? a : b;
  }
};
struct LastInOrder {
  __device__ SortedEnd operator()(SortedEnd a, SortedEnd b) const {
    return detail::sorted_before(a.key, a.index, b.key, b.index) ? b : a;
  }
};

template <class T>
__device__ T top_value(Form form, T x) {
  return form == Form::magnitude ? x : T(1);
}

// Splits the row at the window (above, below): entries with key >= above get
// their top value, those with key <= below 0, and the others go to the
// window buffer in column order. Returns the window's size; count_above the
// entries above it.
template <class T, class Team, class Row>
__device__ long long split_at_window(const Team& team, Form form, const Row& row, double above, double below,
                                     RowScratch scratch, T* out, long long& count_above) {
  long long m = 0, mine_above = 0;
  row.for_each_tile([&](long long i, bool entry, T x) {
    const double key = static_cast<double>(detail::sort_key(form, x));
    const bool inside = entry && key > below && key < above;
    unsigned total = 0;
    const unsigned slot = team.exclusive_count(inside, total);
    if (inside) {
      scratch.keys[m + slot] = key;
      scratch.index[m + slot] = i;
    } else if (entry) {
      const bool top = key >= above;
      mine_above += top;
      out[i] = top ? top_value(form, x) : T(0);
    }
    m += total;
  });
  count_above = team.all_reduce(mine_above, Sum{});
  return m;
}

// Sorts the window's m entries (key descending, ties by the lower column:
// sorted_order.hpp) in place, by a bitonic network whose comparators all put
// the earlier entry first, so that missing entries past m (as if -inf) never
// move and their comparators are skipped.
template <class Team>
__device__ void sort_window(const Team& team, RowScratch scratch, long long m) {
  long long width = 1;
  while (width < m) width *= 2;
  const auto exchange = [&](long long a, long long b) {
    if (b >= m) return;
    const double key_a = scratch.keys[a], key_b = scratch.keys[b];
    const long long index_a = scratch.index[a], index_b = scratch.index[b];
    if (detail::sorted_before(key_b, index_b, key_a, index_a)) {
      scratch.keys[a] = key_b, scratch.index[a] = index_b;
      scratch.keys[b] = key_a, scratch.index[b] = index_a;
    }
  };
  for (long long size = 2; size <= width; size *= 2) {
    const long long half = size / 2;
    for (long long c = team.rank(); c < width / 2; c += team.size()) {  // the mirror step
      const long long start = (c / half) * size, offset = c % half;
      exchange(start + offset, start + size - 1 - offset);
    }
    team.sync();
    for (long long stride = half / 2; stride > 0; stride /= 2) {
      for (long long c = team.rank(); c < width / 2; c += team.size()) {
        const long long a = (c / stride) * 2 * stride + c % stride;
        exchange(a, a + stride);
      }
      team.sync();
    }
  }
}

// A row split at its window: the window's size, the entries above it, the
// bounds, and the k-th and (k+1)-th keys (NaN for Solver::pav, which sorts the whole row).
struct WindowSplit {
  long long size, count_above;
  double above, below, s_k, s_next;
};

// Points of the threshold equation per round of the band by reductions.
constexpr std::size_t kTeamBins = 32;
static_assert(2 * kTeamBins + 1 <= kMaxSummed, "a round's sums fit one sum_each");

// band_reductions.hpp's Combine over a team: sums by sum_each; moments and
// band ends merged by all_reduce, in the order of the threads' ranks (the
// moments' merge rounds differently in the other order: each part carries
// its first rank, and the lower one goes first, so every thread gets the same).
struct BlockPart {
  detail::BlockMoments moments;
  double sums[2];
  double first_rank;
};
struct MergeBlockParts {
  __device__ BlockPart operator()(const BlockPart& a, const BlockPart& b) const {
    const BlockPart& first = a.first_rank < b.first_rank ? a : b;
    const BlockPart& second = a.first_rank < b.first_rank ? b : a;
    BlockPart merged = first;
    if (merged.moments.count == 0.0) merged.moments = second.moments;
    else if (second.moments.count > 0.0) merged.moments.merge(second.moments);
    for (int j = 0; j < 2; ++j) merged.sums[j] = first.sums[j] + second.sums[j];
    return merged;
  }
};
struct BoundsPart {
  detail::BandBounds bounds;
  double least;
};
struct MergeBoundsParts {
  __device__ BoundsPart operator()(const BoundsPart& a, const BoundsPart& b) const {
    BoundsPart merged = a;
    if (!b.bounds.empty) {
      merged.bounds.add(b.bounds.first_key, static_cast<std::size_t>(b.bounds.first_index));
      merged.bounds.add(b.bounds.last_key, static_cast<std::size_t>(b.bounds.last_index));
    }
    merged.least = a.least < b.least ? a.least : b.least;
    return merged;
  }
};

template <class Team>
struct TeamCombine {
  const Team& team;
  __device__ void sum(double* values, std::size_t count) const { team.sum_each(values, static_cast<unsigned>(count)); }
  __device__ void merge_block(detail::BlockMoments& moments, double* sums, std::size_t count) const {
    BlockPart part{moments, {0.0, 0.0}, static_cast<double>(team.rank())};
    for (std::size_t j = 0; j < count && j < 2; ++j) part.sums[j] = sums[j];
    part = team.all_reduce(part, MergeBlockParts{});
    moments = part.moments;
    for (std::size_t j = 0; j < count && j < 2; ++j) sums[j] = part.sums[j];
  }
  __device__ void merge_bounds(detail::BandBounds& bounds, double& least) const {
    const BoundsPart part = team.all_reduce(BoundsPart{bounds, least}, MergeBoundsParts{});
    bounds = part.bounds;
    least = part.least;
  }
};

// The window's entries in scratch, this thread's share (band_reductions.hpp's Entries).
template <class T, class Team>
struct TeamWindowEntries {
  const Team& team;
  RowScratch scratch;
  long long size;
  const T* row;
  template <class F>
  __device__ void for_each(F&& f) const {
    for (long long j = team.rank(); j < size; j += team.size()) {
      const long long i = scratch.index[j];
      f(static_cast<std::size_t>(j), scratch.keys[j], static_cast<double>(i), static_cast<double>(row[i]));
    }
  }
};

// A wide window (in scratch, in any order) solved by reductions over the team:
// the window's outputs and, with state, the row's RowState. `started`: the
// search's rounds so far (long rows: band_round_kernel), else none.
template <class T, class Team>
__device__ void solve_band_by_reductions(const Team& team, const detail::BlockEquation& equation, const T* row,
                                         long long k, const WindowSplit& split, RowScratch scratch, T* out,
                                         RowState* state, const detail::BandSearch* started = nullptr) {
  team.sync();
  long long greater = 0, ties = 0;  // window keys above s_k, and equal to it
  for (long long j = team.rank(); j < split.size; j += team.size()) {
    greater += scratch.keys[j] > split.s_k;
    ties += scratch.keys[j] == split.s_k;
  }
  greater = team.all_reduce(greater, Sum{}) + split.count_above;
  ties = team.all_reduce(ties, Sum{});
  const detail::SelectedKeys selected{split.s_k, split.s_next, static_cast<std::size_t>(greater),
                                      static_cast<std::size_t>(ties)};
  TeamCombine<Team> combine{team};
  const TeamWindowEntries<T, Team> entries{team, scratch, split.size, row};
  const double count_above = static_cast<double>(split.count_above);
  const detail::BandEquation band(equation, selected, static_cast<std::size_t>(k), count_above);
  detail::BandSearch search = started ? *started : detail::start_band_search(band, selected);
  detail::narrow_by_reductions<kTeamBins>(band, entries, search, combine);
  const RowState solved = detail::finish_band_by_reductions(
      band, selected, static_cast<std::size_t>(k), count_above, split.above, search, entries, combine,
      [&](std::size_t j, double y) { out[scratch.index[j]] = static_cast<T>(y); }, state != nullptr);
  if (state && team.rank() == 0) *state = solved;
  team.sync();
}

// The window's entries (in scratch, in any order) solved: by reductions when
// wide (and not Solver::pav), else sorted, then the core's band solver on one
// thread: the window's outputs and, with state, the row's RowState as
// topk.cpp's save_row records it.
template <class T, class Team>
__device__ void solve_band(const Team& team, Form form, Solver solver, const detail::BlockEquation& equation,
                           const T* row, long long k, const WindowSplit& split, RowScratch scratch, T* out,
                           RowState* state) {
  if (solver != Solver::pav && split.size > kSortedWindowLimit)
    return solve_band_by_reductions(team, equation, row, k, split, scratch, out, state);
  team.sync();
  sort_window(team, scratch, split.size);
  if (team.rank() == 0) {
    const detail::RowWindow window{static_cast<std::size_t>(split.size), static_cast<std::size_t>(k - split.count_above),
                                   split.above, split.below};
    const auto index_of = [&](std::size_t j) { return static_cast<std::size_t>(scratch.index[j]); };
    detail::BlockStack blocks{scratch.blocks};
    detail::BandBounds band;
    const auto append = [&](std::size_t i, double) {  // the key as topk.cpp takes it
      band.add(detail::sort_key(form, static_cast<double>(row[i])), i);
    };
    RowState near;
    const detail::StraddlingBlock block =
        form == Form::magnitude
            ? detail::solve_mag_band(window, scratch.keys, index_of, equation, solver, blocks, row, out,
                                     state != nullptr, append, near)
            : detail::solve_mask_band(window, scratch.keys, index_of, equation, solver, blocks, out, state != nullptr,
                                      append, near);
    if (state) {  // topk.cpp's save_row
      const detail::BandState solved = detail::band_state(block, window, scratch.keys);
      *state = near;
      state->gamma = solved.gamma;
      state->block_weight = solved.block_weight;
      state->unchanged_from = solved.unchanged_from;
      band.write(*state);
    }
  }
  team.sync();
}

// The state of a row that held a non-finite value (the core's fill_non_finite_row).
__device__ inline RowState non_finite_state() {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  return RowState{.gamma = nan, .block_weight = 0.0, .unchanged_from = nan};
}

// The state of a separated row (topk.cpp's save_separated_row): the keys of the
// last entry tied at s_k and of the first tied at s_{k+1}.
__device__ inline RowState separated_state(double last_kept, double first_dropped) {
  return RowState{.gamma = first_dropped, .block_weight = 0.0, .unchanged_from = last_kept};
}

// A row of singleton blocks only, for k = 0 or k = n: every output is its
// w_i (0, or the top value), and the state is what band_state gives the
// core's sorted row (topk.cpp): gamma the key at sorted position k (-inf for
// k = n), unchanged_from the key at position k - 1 (+inf for k = 0).
template <class T, class Team, class Row>
__device__ void soft_singleton_row(const Team& team, Form form, const Row& row, long long k, T* out,
                                   RowState* state) {
  const bool all = k == row.size();
  SortedEnd mine{-detail::kInf, LLONG_MAX};
  if (all) mine = {detail::kInf, -1};
  row.for_each([&](long long i, T x) {
    out[i] = all ? top_value(form, x) : T(0);
    const SortedEnd entry{static_cast<double>(detail::sort_key(form, x)), i};
    mine = all ? LastInOrder{}(mine, entry) : FirstInOrder{}(mine, entry);
  });
  const SortedEnd end = all ? team.all_reduce(mine, LastInOrder{}) : team.all_reduce(mine, FirstInOrder{});
  if (state && team.rank() == 0)
    *state = all ? RowState{.gamma = -detail::kInf, .block_weight = 0.0, .unchanged_from = end.key}
                 : RowState{.gamma = end.key, .block_weight = 0.0, .unchanged_from = detail::kInf};
}

// A row whose s_k and s_{k+1} are separated (separated_keys): the k entries
// with key >= s_k keep their top value, and the state is the core's
// save_separated_row (topk.cpp) with separated_window's keys.
template <class T, class Team, class Row>
__device__ void soft_separated_row(const Team& team, Form form, const Row& row, const KthKeys<T>& keys, T* out,
                                   RowState* state) {
  row.for_each([&](long long i, T x) {
    out[i] = static_cast<double>(detail::sort_key(form, x)) >= keys.s_k ? top_value(form, x) : T(0);
  });
  if (!state) return;
  // the keys of the last entry tied at s_k and the first tied at s_{k+1} (their sign of zero)
  const double last_kept = keys.s_k == 0.0 ? tied_key_at_end<T>(team, form, row, 0.0, false) : keys.s_k;
  const double first_dropped = keys.s_next == 0.0 ? tied_key_at_end<T>(team, form, row, 0.0, true) : keys.s_next;
  if (team.rank() == 0) *state = separated_state(last_kept, first_dropped);
}

// soft_topk_mask / soft_topk_mag of SPEC.md on one row, as the core's
// soft_topk_*_row (topk.cpp): out and, with state, the row's RowState.
template <class T, class Team, class Row>
__device__ void soft_row(const Team& team, Form form, Solver solver, const detail::BlockEquation& equation,
                         const Row& row, long long k, RowScratch scratch, T* out, RowState* state) {
  const long long n = row.size();
  if (n == 0) {  // no block, no threshold, no band (as the torch CPU kernels write such rows)
    if (state && team.rank() == 0)
      *state = RowState{.gamma = -detail::kInf, .block_weight = 0.0, .unchanged_from = detail::kInf};
    return;
  }
  bool non_finite = false;
  row.for_each([&](long long, T x) { non_finite |= !std::isfinite(x); });
  if (team.any(non_finite)) {  // the core's fill_non_finite_row
    row.for_each([&](long long i, T) { out[i] = T(std::numeric_limits<double>::quiet_NaN()); });
    if (state && team.rank() == 0) *state = non_finite_state();
    return;
  }
  if (k == 0 || k == n) return soft_singleton_row(team, form, row, k, out, state);
  double above = detail::kInf, below = -detail::kInf;
  double s_k = std::numeric_limits<double>::quiet_NaN(), s_next = s_k;
  if (solver != Solver::pav) {  // (pav: the core's sorted_row, the whole row is the window)
    const KthKeys<T> keys = select_kth_keys<T>(team, form, row, k, true);
    if (detail::separated_keys(equation, keys.s_k, keys.s_next))
      return soft_separated_row(team, form, row, keys, out, state);
    detail::window_bounds(equation, keys.s_k, keys.s_next, above, below);
    s_k = keys.s_k, s_next = keys.s_next;
  }
  long long count_above = 0;
  long long m = split_at_window(team, form, row, above, below, scratch, out, count_above);
  if (count_above >= k || k - count_above > m) {  // (rounded bounds, as topk.cpp: the whole row)
    above = detail::kInf, below = -detail::kInf;
    team.sync();
    m = split_at_window(team, form, row, above, below, scratch, out, count_above);
  }
  solve_band(team, form, solver, equation, row.data(), k, WindowSplit{m, count_above, above, below, s_k, s_next},
             scratch, out, state);
}

// hard_topk_mask / hard_topk_mag of SPEC.md on one row: the k-th entry in
// sorted order (its key by selection, its column the remaining-th column
// holding that key), then hard_topk.hpp's rule for every entry.
template <class T, class Team, class Row>
__device__ void hard_row(const Team& team, Form form, const Row& row, long long k, T* out) {
  const long long n = row.size();
  bool poisoned = false;
  row.for_each([&](long long, T x) { poisoned |= detail::hard_poisons_row(x); });
  if (team.any(poisoned)) {
    row.for_each([&](long long i, T) { out[i] = detail::hard_nan<T>(); });
    return;
  }
  if (k == 0 || k == n) {  // no k-th entry to compare with: none or all kept
    row.for_each([&](long long i, T x) { out[i] = detail::hard_value(form, x, k == n); });
    return;
  }
  const KthKeys<T> keys = select_kth_keys<T>(team, form, row, k, false);
  long long seen = 0, column = LLONG_MAX;  // ties of s_k before this tile; the k-th entry's column
  row.for_each_tile([&](long long i, bool entry, T x) {
    const bool tie = entry && encode(key_of(form, x)) == keys.kth;
    unsigned total = 0;
    const unsigned rank = team.exclusive_count(tie, total);
    if (tie && seen + rank + 1 == keys.remaining) column = i;
    seen += total;
  });
  column = team.all_reduce(column, Min{});
  const detail::SortedEntry kth{keys.s_k, static_cast<std::size_t>(column)};
  row.for_each([&](long long i, T x) {
    const double key = static_cast<double>(detail::sort_key(form, x));
    out[i] = detail::hard_value(form, x, detail::hard_kept(key, static_cast<std::size_t>(i), kth));
  });
}

// J^T v (transpose) or J v of one row at its saved state (SPEC.md,
// "Derivatives"): the band's c_i recomputed from x in each of the three
// passes (pivot and sum(c); the spread; the output), never stored; the
// per-entry math is saved_band.hpp's.
template <class T, class Team, class Row>
__device__ void jacobian_row(const Team& team, Form form, bool transpose, const detail::Regularizer& regularizer,
                             double l, const T* v, const Row& x, const RowState& state, T* out) {
  if (std::isnan(state.gamma)) {  // the row held a non-finite value
    x.for_each([&](long long i, T) { out[i] = T(std::numeric_limits<double>::quiet_NaN()); });
    return;
  }
  const SavedBand band(state, regularizer, l, form);
  const auto c_of = [&](long long i, T x_i) {
    return band.weight(static_cast<double>(x_i), static_cast<std::size_t>(i));
  };
  const auto t = [&](long long i, T x_i) {
    return tangent(form, static_cast<double>(x_i), static_cast<double>(v[i]));
  };
  Pivot mine = no_pivot(x.size());
  x.for_each([&](long long i, T x_i) {
    const double c_i = c_of(i, x_i);
    if (c_i >= 0.0) mine = MergePivots{}(mine, entry_pivot(c_i, i));
  });
  const Pivot pivot = team.all_reduce(mine, MergePivots{});
  const double t_d = pivot.count > 0 ? t(pivot.index, x.data()[pivot.index]) : 0.0;
  double part = 0.0;
  x.for_each([&](long long i, T x_i) {
    const double c_i = c_of(i, x_i);
    if (c_i >= 0.0) part += spread_term(form, transpose, c_i, t(i, x_i), t_d);
  });
  const double spread = team.all_reduce(part, Sum{});
  x.for_each([&](long long i, T x_i) {
    out[i] = T(product_entry(form, transpose, state, pivot, t_d, spread, c_of(i, x_i), static_cast<double>(x_i),
                             static_cast<double>(v[i])));
  });
}

}  // namespace sparsetopk::cuda
