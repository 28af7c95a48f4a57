#pragma once
// Long rows (more than kLongRowSize entries): each row is split into chunks of
// kChunkSize entries, one block per chunk, so that a few long rows still fill
// the GPU. A fixed number of launches, none reading anything back:
//   - selection: one launch per radix digit (4 for float, 8 for double); each
//     block counts its chunk's digits into the row's counts, and the last
//     block of the row to finish (a ticket after a fence) picks the digit;
//     the second pass also keeps its chunk's candidates (the keys whose first
//     digit is the chosen one), which the later passes read instead of the
//     row, shrinking the list as they go; the soft forward's passes also
//     find the (k+1)-th key (each digit's largest key: no pass of its own);
//   - soft forward: the split (one launch: outputs outside the window, each
//     chunk's window entries compacted in column order into the chunk's part
//     of the scratch, their count per chunk), then one block per row gathers
//     them in chunk order (so the band's sums run in the same order on every
//     run) and solves the band (solve_band, team_rows.hpp); rows of at least
//     kRoundRowSize entries first search a wide band's smooth piece across
//     the chunks' blocks (kLaunchedRounds launches of band_round_kernel);
//   - hard forward: the ties of s_k counted per chunk, then the outputs, each
//     block ranking its own ties after those of the chunks before it;
//   - derivatives: per chunk partial pivots, then partial spreads (each block
//     combining the partials of its row in chunk order: deterministic), then
//     the outputs.
// UNVERIFIED on a GPU; run on the CPU harness by kernel_selftest (docs/gpu.md).

#include <climits>
#include <cstddef>

#include "radix_select.hpp"
#include "team.hpp"
#include "team_rows.hpp"

namespace sparsetopk::cuda::long_rows {

constexpr long long kChunkSize = 16384;  // entries per block
constexpr unsigned kThreads = 256;
// The band kernel's block (one per row): it uses 176 registers per thread
// (nvcc 13, sm_90, -Xptxas -v), so a block of more than 372 threads would not
// launch; __launch_bounds__ makes nvcc keep it launchable at this size.
constexpr unsigned kBandThreads = 256;
// Rows of at least this many entries search a wide window's band across the
// chunks' blocks, kLaunchedRounds rounds (band_reductions.hpp) before the band
// kernel carries on alone: its one block would otherwise evaluate every
// window entry at kTeamBins + 1 points per round (some 3.5e5 entries for 10^7
// normal keys, k = 10^6, l = 0.1).
constexpr long long kRoundRowSize = 1LL << 21;
constexpr int kLaunchedRounds = 6;
// The sums of one round (band_reductions.hpp's add_round_terms).
constexpr unsigned kRoundSums = 2 * kTeamBins + 1;

__host__ __device__ inline long long chunks_of(long long n) { return (n + kChunkSize - 1) / kChunkSize; }

// The selection of one row, in device memory, carried from launch to launch.
struct RowSelection {
  unsigned long long counts[kRadixSize];  // the current digit's counts over the row
  unsigned long long maxima[kRadixSize];  // the current digit's largest key (bits) of each digit (soft)
  unsigned long long prefix;              // s_k's order-preserving bits, digit by digit
  unsigned long long next;                // the largest key's bits below s_k (0: none; soft)
  long long remaining;                    // the k-th entry's rank among the keys equal to s_k
  long long ties;                         // how many keys equal s_k (after the last digit)
  long long count_above, size;            // the split: entries above the window, in it
  long long zero_first, zero_last;        // the first and last column of a key equal to 0
  unsigned ticket;                        // blocks of the row done with the current launch
  int flags;                              // 1: the row holds a non-finite value (soft) or a NaN (hard)
};

// [begin, end) of the chunk blockIdx.x of a row.
struct Chunk {
  long long begin, end;
};
__device__ inline Chunk chunk_of(long long n) {
  const long long begin = static_cast<long long>(blockIdx.x) * kChunkSize;
  return {begin, begin + kChunkSize < n ? begin + kChunkSize : n};
}

// Whether this block is the last of its row's blocks to finish the launch:
// its writes before, and every other block's, are visible to it then.
__device__ inline bool last_block_of_row(RowSelection& selection) {
  __shared__ unsigned last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&selection.ticket, 1u) == gridDim.x - 1 ? 1u : 0u;
  __syncthreads();
  return last != 0;
}

template <class T>
__global__ void start_kernel(long long rows, long long k, RowSelection* selections) {
  for (long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += static_cast<long long>(gridDim.x) * blockDim.x) {
    RowSelection& s = selections[r];
    for (int d = 0; d < kRadixSize; ++d) s.counts[d] = 0, s.maxima[d] = 0;
    s.prefix = 0, s.next = 0, s.remaining = k, s.ties = 0, s.count_above = 0, s.size = 0;
    s.zero_first = LLONG_MAX, s.zero_last = -1, s.ticket = 0, s.flags = 0;
  }
}

// Where a digit pass reads its keys: the row (the first pass; and every pass
// without room for candidates), the row keeping its chunk's candidates (the
// second pass: the keys matching the first digit, in column order, into the
// chunk's part of `candidates` and their count), or the candidates (the later
// passes: every key that can still match the prefix is one of them; each
// pass keeps those that match the prefix so far, so the list shrinks with
// every digit).
enum class DigitSource { row, row_keeping_candidates, candidates };

// One radix digit (at `shift`) of the k-th key; the first pass also flags the
// row. The soft forward's passes also find the (k+1)-th key: each pass keeps
// the largest key of each digit among the keys matching the prefix, and the
// largest of those below the chosen digit is the largest key below s_k that
// first differs from it in this digit; the largest over the passes is the
// largest key below s_k (with no pass over the row of its own).
template <class T>
__global__ void digit_kernel(Form form, bool soft, const T* x, long long rows, long long n, int shift, bool first,
                             RowSelection* selections, DigitSource source, BitsOf<T>* candidates,
                             long long* candidate_counts) {
  using U = BitsOf<T>;
  __shared__ unsigned counts[kRadixSize];
  __shared__ U maxima[kRadixSize];
  const BlockTeam team(nullptr);
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    RowSelection& selection = selections[r];
    const U prefix = static_cast<U>(selection.prefix);
    for (unsigned d = threadIdx.x; d < static_cast<unsigned>(kRadixSize); d += blockDim.x) counts[d] = 0, maxima[d] = 0;
    __syncthreads();
    const Chunk chunk = chunk_of(n);
    const auto count = [&](U e) {
      if (!matches_prefix(e, prefix, shift)) return;
      const unsigned d = static_cast<unsigned>((e >> shift) & (kRadixSize - 1));
      atomicAdd(&counts[d], 1u);
      if (soft) atomicMax(&maxima[d], e);
    };
    bool bad = false;
    if (source == DigitSource::candidates) {  // compacted in place: an entry only moves towards the front
      U* mine = candidates + r * n + chunk.begin;
      const long long before = candidate_counts[r * gridDim.x + blockIdx.x];
      long long kept = 0;
      for (long long base = 0; base < before; base += blockDim.x) {
        const long long j = base + threadIdx.x;
        const U e = j < before ? mine[j] : U(0);
        const bool candidate = j < before && matches_prefix(e, prefix, shift);
        unsigned total = 0;
        const unsigned slot = team.exclusive_count(candidate, total);  // (its barriers: the tile is read)
        if (candidate) {
          mine[kept + slot] = e;
          count(e);
        }
        kept += total;
      }
      __syncthreads();  // (every thread has read the count)
      if (threadIdx.x == 0) candidate_counts[r * gridDim.x + blockIdx.x] = kept;
    } else if (source == DigitSource::row_keeping_candidates) {
      long long kept = 0;
      for (long long base = chunk.begin; base < chunk.end; base += blockDim.x) {
        const long long i = base + threadIdx.x;
        const U e = i < chunk.end ? encode(key_of(form, x[r * n + i])) : U(0);
        const bool candidate = i < chunk.end && matches_prefix(e, prefix, shift);
        unsigned total = 0;
        const unsigned slot = team.exclusive_count(candidate, total);
        if (candidate) {
          candidates[r * n + chunk.begin + kept + slot] = e;
          count(e);
        }
        kept += total;
      }
      if (threadIdx.x == 0) candidate_counts[r * gridDim.x + blockIdx.x] = kept;
    } else {
      for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x) {
        const T v = x[r * n + i];
        bad |= soft ? !std::isfinite(v) : detail::hard_poisons_row(v);
        count(encode(key_of(form, v)));
      }
    }
    if (__syncthreads_or(first && bad) && threadIdx.x == 0) atomicOr(&selection.flags, 1);
    for (unsigned d = threadIdx.x; d < static_cast<unsigned>(kRadixSize); d += blockDim.x)
      if (counts[d] != 0) {
        atomicAdd(&selection.counts[d], static_cast<unsigned long long>(counts[d]));
        if (soft) atomicMax(&selection.maxima[d], static_cast<unsigned long long>(maxima[d]));
      }
    if (last_block_of_row(selection)) {  // (the same answer on every thread of the block)
      __shared__ unsigned long long totals[kRadixSize], largest[kRadixSize];
      for (unsigned d = threadIdx.x; d < static_cast<unsigned>(kRadixSize); d += blockDim.x) {
        totals[d] = atomicExch(&selection.counts[d], 0ull);  // read, and cleared for the next digit
        largest[d] = soft ? atomicExch(&selection.maxima[d], 0ull) : 0ull;
      }
      __syncthreads();
      if (threadIdx.x == 0) {  // the digit holding the remaining-th key (radix_select.hpp)
        U chosen = prefix;
        choose_digit(totals, shift, chosen, selection.remaining, selection.ties);
        selection.prefix = chosen;
        selection.ticket = 0;
        // the largest key below the chosen digit: that of the highest digit below it holding keys
        for (int d = static_cast<int>((chosen >> shift) & (kRadixSize - 1)) - 1; soft && d >= 0; --d)
          if (totals[d] != 0) {
            if (largest[d] > selection.next) selection.next = largest[d];
            break;
          }
      }
    }
    __syncthreads();
  }
}

// s_k, s_{k+1} and what the row's soft forward does with them (every block of
// the row computes the same from the selection).
template <class T>
struct SoftPlan {
  double s_k, s_next;
  bool separated;
  double above, below;
};

template <class T>
__device__ SoftPlan<T> soft_plan(const RowSelection& selection, const detail::BlockEquation& equation) {
  using U = BitsOf<T>;
  SoftPlan<T> plan;
  plan.s_k = static_cast<double>(decode<T>(static_cast<U>(selection.prefix)));
  plan.s_next = selection.ties > selection.remaining ? plan.s_k
                                                     : static_cast<double>(decode<T>(static_cast<U>(selection.next)));
  plan.separated = detail::separated_keys(equation, plan.s_k, plan.s_next);
  plan.above = plan.s_k, plan.below = plan.s_k;  // separated: key >= s_k is kept, no window
  if (!plan.separated) detail::window_bounds(equation, plan.s_k, plan.s_next, plan.above, plan.below);
  return plan;
}

// Outputs outside the window (their top value, or 0; NaN for a non-finite
// row), the window's entries of each chunk compacted in column order into the
// chunk's part of the row's scratch ([rows, chunks] counts in window_counts),
// and for a separated row the first and last column of a zero key.
template <class T>
__global__ void split_kernel(Form form, const T* x, long long rows, long long n, double l, double p,
                             RowSelection* selections, RowScratch scratch, long long* window_counts, T* out) {
  const BlockTeam team(nullptr);
  const detail::BlockEquation equation(form, l, p);
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    RowSelection& selection = selections[r];
    const Chunk chunk = chunk_of(n);
    const T* row = x + r * n;
    T* out_row = out + r * n;
    if (selection.flags) {
      for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x)
        out_row[i] = T(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    const SoftPlan<T> plan = soft_plan<T>(selection, equation);
    long long above = 0, first_zero = LLONG_MAX, last_zero = -1, m = 0;  // m: the chunk's window entries so far
    for (long long base = chunk.begin; base < chunk.end; base += blockDim.x) {
      const long long i = base + threadIdx.x;
      const double key = i < chunk.end ? static_cast<double>(detail::sort_key(form, row[i])) : 0.0;
      const bool inside = i < chunk.end && !plan.separated && key < plan.above && key > plan.below;
      unsigned total = 0;
      const unsigned slot = team.exclusive_count(inside, total);
      if (inside) {
        scratch.keys[r * n + chunk.begin + m + slot] = key;
        scratch.index[r * n + chunk.begin + m + slot] = i;
      }
      m += total;
      if (i >= chunk.end) continue;
      if (key == 0.0) {
        if (i < first_zero) first_zero = i;
        last_zero = i;
      }
      if (plan.separated) {
        out_row[i] = key >= plan.s_k ? top_value(form, row[i]) : T(0);
      } else if (key >= plan.above) {
        ++above;
        out_row[i] = top_value(form, row[i]);
      } else {
        out_row[i] = T(0);
      }
    }
    if (threadIdx.x == 0) window_counts[r * gridDim.x + blockIdx.x] = m;
    above = team.all_reduce(above, Sum{});
    first_zero = team.all_reduce(first_zero, Min{});
    last_zero = team.all_reduce(last_zero, Max{});
    if (threadIdx.x == 0) {
      if (above != 0) atomicAdd(reinterpret_cast<unsigned long long*>(&selection.count_above),
                                static_cast<unsigned long long>(above));
      if (m != 0) atomicAdd(reinterpret_cast<unsigned long long*>(&selection.size), static_cast<unsigned long long>(m));
      if (first_zero != LLONG_MAX) atomicMin(&selection.zero_first, first_zero);
      if (last_zero >= 0) atomicMax(&selection.zero_last, last_zero);
    }
  }
}

// Whether the band kernel solves the row's window by reductions (as
// solve_band decides, from the split's counts): the rows the rounds search.
template <class T>
__device__ bool band_by_reductions(const RowSelection& selection, const SoftPlan<T>& plan, long long k) {
  const long long m = selection.size, above = selection.count_above;
  return !selection.flags && !plan.separated && above < k && k - above <= m && m > kSortedWindowLimit;
}

// One round of the search for the band's smooth piece over a long row's
// chunks: each block adds the terms of its chunk's window entries (as
// split_kernel left them), the last block of the row adds the blocks' sums in
// chunk order and narrows the row's search (searches[r]; `first`: started
// here, from the selection).
template <class T>
__global__ void band_round_kernel(Form form, const T* x, long long rows, long long n, long long k, double l,
                                  double p, RowSelection* selections, RowScratch scratch,
                                  const long long* window_counts, detail::BandSearch* searches, double* partials,
                                  bool first) {
  __shared__ double totals[kRoundSums];
  const BlockTeam team(nullptr);
  const detail::BlockEquation equation(form, l, p);
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    RowSelection& selection = selections[r];
    if (selection.flags) continue;
    const SoftPlan<T> plan = soft_plan<T>(selection, equation);
    if (!band_by_reductions(selection, plan, k)) continue;  // (the same on every block of the row)
    const detail::SelectedKeys selected{plan.s_k, plan.s_next, static_cast<std::size_t>(k - selection.remaining),
                                        static_cast<std::size_t>(selection.ties)};
    const detail::BandEquation band(equation, selected, static_cast<std::size_t>(k),
                                    static_cast<double>(selection.count_above));
    detail::BandSearch search = first ? detail::start_band_search(band, selected) : searches[r];
    if (search.settled) {
      if (first && blockIdx.x == 0 && threadIdx.x == 0) searches[r] = search;
      continue;
    }
    const Chunk chunk = chunk_of(n);
    const RowScratch chunk_scratch{scratch.keys + r * n + chunk.begin, scratch.index + r * n + chunk.begin, nullptr};
    const long long count = window_counts[r * gridDim.x + blockIdx.x];
    double sums[kRoundSums] = {};
    detail::add_round_terms<kTeamBins>(band, TeamWindowEntries<T, BlockTeam>{team, chunk_scratch, count, x + r * n},
                                       search, sums);
    team.sum_each(sums, kRoundSums);
    double* mine = partials + (r * gridDim.x + blockIdx.x) * kRoundSums;
    for (unsigned j = threadIdx.x; j < kRoundSums; j += blockDim.x) mine[j] = sums[j];
    if (last_block_of_row(selection)) {  // (volatile: the other blocks' sums, not this SM's cached lines)
      const volatile double* all = partials + r * gridDim.x * kRoundSums;
      for (unsigned j = threadIdx.x; j < kRoundSums; j += blockDim.x) {
        double total = 0.0;
        for (unsigned c = 0; c < gridDim.x; ++c) total += all[c * kRoundSums + j];
        totals[j] = total;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        detail::choose_sub_interval<kTeamBins>(band, totals, search);
        searches[r] = search;
        selection.ticket = 0;
      }
    }
    __syncthreads();
  }
}

// Moves each chunk's window entries (split_kernel) to the front of the row's
// scratch, in chunk order. Entries only move towards the front, a tile of the
// block at a time (all read, then all written), so no entry is overwritten
// before it is read.
__device__ inline void gather_chunks(const BlockTeam& team, RowScratch scratch, const long long* counts,
                                     long long chunks) {
  long long at = 0;
  for (long long c = 0; c < chunks; ++c) {
    const long long from = c * kChunkSize, count = counts[c];
    for (long long base = 0; at != from && base < count; base += team.size()) {
      const long long j = base + team.rank();
      const double key = j < count ? scratch.keys[from + j] : 0.0;
      const long long index = j < count ? scratch.index[from + j] : 0;
      team.sync();
      if (j < count) scratch.keys[at + j] = key, scratch.index[at + j] = index;
      team.sync();
    }
    at += count;
  }
}

// One block per row: the window gathered in chunk order, then solved
// (solve_band: sorted and the core's band solver, or by reductions, carrying
// on from the rounds' search where band_round_kernel ran: `searches`), the state.
template <class T>
__global__ void __launch_bounds__(kBandThreads) band_kernel(Form form, Solver solver, const T* x, long long rows, long long n, long long k, double l,
                            double p, RowSelection* selections, RowScratch scratch, const long long* window_counts,
                            const detail::BandSearch* searches, T* out, RowState* state) {
  SPARSETOPK_DYNAMIC_SHARED(unsigned, counts);
  const BlockTeam team(counts);
  const detail::BlockEquation equation(form, l, p);
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const RowSelection& selection = selections[r];
    const T* row = x + r * n;
    RowState* row_state = state ? state + r : nullptr;
    const RowScratch row_scratch{scratch.keys + r * n, scratch.index + r * n, scratch.blocks + r * n};
    if (selection.flags) {
      if (row_state && threadIdx.x == 0) *row_state = non_finite_state();
      continue;
    }
    const SoftPlan<T> plan = soft_plan<T>(selection, equation);
    if (plan.separated) {
      if (row_state && threadIdx.x == 0) {  // (the zero columns' keys: their sign of zero)
        const auto key_at = [&](long long i) { return static_cast<double>(detail::sort_key(form, row[i])); };
        *row_state = separated_state(plan.s_k == 0.0 ? key_at(selection.zero_last) : plan.s_k,
                                     plan.s_next == 0.0 ? key_at(selection.zero_first) : plan.s_next);
      }
      continue;
    }
    gather_chunks(team, row_scratch, window_counts + r * chunks_of(n), chunks_of(n));
    if (searches && band_by_reductions(selection, plan, k)) {
      const WindowSplit split{selection.size, selection.count_above, plan.above, plan.below, plan.s_k, plan.s_next};
      solve_band_by_reductions(team, equation, row, k, split, row_scratch, out + r * n, row_state, &searches[r]);
      continue;
    }
    long long m = selection.size, count_above = selection.count_above;
    double above = plan.above, below = plan.below;
    if (count_above >= k || k - count_above > m) {  // (rounded bounds, as topk.cpp: the whole row)
      above = detail::kInf, below = -detail::kInf;
      m = split_at_window(team, form, MemoryRow<T, BlockTeam>(team, row, n), above, below, row_scratch, out + r * n,
                          count_above);
    }
    solve_band(team, form, solver, equation, row, k, WindowSplit{m, count_above, above, below, plan.s_k, plan.s_next},
               row_scratch, out + r * n, row_state);
  }
}

// ---- hard ----

// How many keys of each chunk equal s_k: [rows, chunks].
template <class T>
__global__ void tie_count_kernel(Form form, const T* x, long long rows, long long n,
                                 const RowSelection* selections, long long* tie_counts) {
  const BlockTeam team(nullptr);
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const BitsOf<T> kth = static_cast<BitsOf<T>>(selections[r].prefix);
    const Chunk chunk = chunk_of(n);
    long long ties = 0;
    for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x)
      ties += encode(key_of(form, x[r * n + i])) == kth;
    ties = team.all_reduce(ties, Sum{});
    if (threadIdx.x == 0) tie_counts[r * gridDim.x + blockIdx.x] = ties;
  }
}

// hard_topk.hpp's rule: keys above s_k kept, and of the keys equal to it the
// first `remaining` in column order (the ties of the earlier chunks, then this
// chunk's in column order).
template <class T>
__global__ void hard_write_kernel(Form form, const T* x, long long rows, long long n,
                                  const RowSelection* selections, const long long* tie_counts, T* out) {
  const BlockTeam team(nullptr);
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const RowSelection& selection = selections[r];
    const Chunk chunk = chunk_of(n);
    const T* row = x + r * n;
    T* out_row = out + r * n;
    if (selection.flags) {
      for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x) out_row[i] = detail::hard_nan<T>();
      continue;
    }
    const BitsOf<T> kth = static_cast<BitsOf<T>>(selection.prefix);
    long long seen = 0;  // ties before this tile
    for (unsigned c = 0; c < blockIdx.x; ++c) seen += tie_counts[r * gridDim.x + c];
    for (long long base = chunk.begin; base < chunk.end; base += blockDim.x) {
      const long long i = base + threadIdx.x;
      const BitsOf<T> e = i < chunk.end ? encode(key_of(form, row[i])) : 0;
      const bool tie = i < chunk.end && e == kth;
      unsigned total = 0;
      const unsigned rank = team.exclusive_count(tie, total);
      if (i < chunk.end) out_row[i] = detail::hard_value(form, row[i], e > kth || (tie && seen + rank < selection.remaining));
      seen += total;
    }
  }
}

// ---- derivatives ----

template <class T>
__global__ void pivot_kernel(Form form, const T* x, const RowState* states, double l, double p, long long rows,
                             long long n, Pivot* pivots) {
  const BlockTeam team(nullptr);
  const detail::Regularizer regularizer(p);
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const SavedBand band(states[r], regularizer, l, form);
    const Chunk chunk = chunk_of(n);
    Pivot mine = no_pivot(n);
    for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x) {
      const double c_i = band.weight(static_cast<double>(x[r * n + i]), static_cast<std::size_t>(i));
      if (c_i >= 0.0) mine = MergePivots{}(mine, entry_pivot(c_i, i));
    }
    mine = team.all_reduce(mine, MergePivots{});
    if (threadIdx.x == 0) pivots[r * gridDim.x + blockIdx.x] = mine;
  }
}

// The row's pivot from its chunks' partial pivots, in chunk order.
__device__ inline Pivot row_pivot(const Pivot* pivots, long long n) {
  Pivot pivot = no_pivot(n);
  for (unsigned c = 0; c < gridDim.x; ++c) pivot = MergePivots{}(pivot, pivots[c]);
  return pivot;
}

template <class T>
__global__ void spread_kernel(Form form, bool transpose, const T* v, const T* x, const RowState* states, double l,
                              double p, long long rows, long long n, const Pivot* pivots, double* spreads) {
  const BlockTeam team(nullptr);
  const detail::Regularizer regularizer(p);
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const SavedBand band(states[r], regularizer, l, form);
    const Pivot pivot = row_pivot(pivots + r * gridDim.x, n);
    const auto t = [&](long long i) { return tangent(form, static_cast<double>(x[r * n + i]), static_cast<double>(v[r * n + i])); };
    const double t_d = pivot.count > 0 ? t(pivot.index) : 0.0;
    const Chunk chunk = chunk_of(n);
    double part = 0.0;
    for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x) {
      const double c_i = band.weight(static_cast<double>(x[r * n + i]), static_cast<std::size_t>(i));
      if (c_i >= 0.0) part += spread_term(form, transpose, c_i, t(i), t_d);
    }
    part = team.all_reduce(part, Sum{});
    if (threadIdx.x == 0) spreads[r * gridDim.x + blockIdx.x] = part;
  }
}

template <class T>
__global__ void product_kernel(Form form, bool transpose, const T* v, const T* x, const RowState* states, double l,
                               double p, long long rows, long long n, const Pivot* pivots, const double* spreads,
                               T* out) {
  const detail::Regularizer regularizer(p);
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const RowState state = states[r];
    const Chunk chunk = chunk_of(n);
    if (std::isnan(state.gamma)) {  // the row held a non-finite value
      for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x)
        out[r * n + i] = T(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    const SavedBand band(state, regularizer, l, form);
    const Pivot pivot = row_pivot(pivots + r * gridDim.x, n);
    double spread = 0.0;
    for (unsigned c = 0; c < gridDim.x; ++c) spread += spreads[r * gridDim.x + c];
    const double t_d = pivot.count > 0 ? tangent(form, static_cast<double>(x[r * n + pivot.index]),
                                                 static_cast<double>(v[r * n + pivot.index]))
                                       : 0.0;
    for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x) {
      const double x_i = static_cast<double>(x[r * n + i]);
      const double c_i = band.weight(x_i, static_cast<std::size_t>(i));
      out[r * n + i] = T(product_entry(form, transpose, state, pivot, t_d, spread, c_i, x_i,
                                       static_cast<double>(v[r * n + i])));
    }
  }
}

}  // namespace sparsetopk::cuda::long_rows
