// The CUDA kernels of topk_kernels.hpp. UNVERIFIED: this code has been
// compiled (sm_90 + PTX) and linked, but has never run on a GPU; it is opt-in
// only (docs/gpu.md) until scripts/gpu-check.sh has passed on one.
//
// Per-row math is the core's, compiled for the device (SPARSETOPK_HOST_DEVICE):
// window_bounds, solve_mask_band / solve_mag_band, band_state (band_solve.hpp),
// the band's bounds and c_i (band.hpp) and the Jacobian entries (jacobian.hpp),
// reached by name through the sparsetopk_row CMake target (src/core/row). Built
// with -fmad=false so that the device evaluates them with the core's roundings
// (no contracted a * b + c); device pow/cbrt may still differ from the host's
// libm in the last ulp.

#include "topk_kernels.hpp"

#include "radix_select.hpp"
#include "saved_band.hpp"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "band.hpp"
#include "band_solve.hpp"
#include "hard_topk.hpp"
#include "jacobian.hpp"

namespace sparsetopk::cuda {
namespace {

using detail::BlockEquation;
using detail::PavBlock;
using detail::RowWindow;
using detail::StraddlingBlock;

constexpr int kThreads = 256;                // threads per block
constexpr long long kItemsPerBlock = 16384;  // entries per block in the grid-wide passes
constexpr int kMaxGridRows = 65535;          // gridDim.y; longer batches loop
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void check(cudaError_t status) {
  if (status != cudaSuccess) throw std::runtime_error(std::string("sparsetopk CUDA kernel: ") + cudaGetErrorString(status));
}

// atomicAdd on a signed 64-bit counter (two's complement: the unsigned sum); returns the old value
__device__ long long add_to(long long* counter, long long value) {
  return static_cast<long long>(
      atomicAdd(reinterpret_cast<unsigned long long*>(counter), static_cast<unsigned long long>(value)));
}

// ---- launch shapes: blockIdx.x splits a row, blockIdx.y (looped) picks it ----

long long chunks_of(long long n) { return std::max(1LL, (n + kItemsPerBlock - 1) / kItemsPerBlock); }

dim3 row_grid(long long rows, long long n) {
  return dim3(static_cast<unsigned>(chunks_of(n)), static_cast<unsigned>(std::min<long long>(rows, kMaxGridRows)));
}
dim3 per_row_grid(long long rows) { return dim3(static_cast<unsigned>((rows + kThreads - 1) / kThreads)); }

// [begin, end) of the part of a row that block blockIdx.x covers
struct Chunk {
  long long begin, end;
};
__device__ Chunk chunk_of(long long n) {
  const long long size = (n + gridDim.x - 1) / gridDim.x;
  const long long begin = std::min(n, static_cast<long long>(blockIdx.x) * size);
  return {begin, std::min(n, begin + size)};
}

// ---- row flags ----

template <class T>
__global__ void flag_kernel(bool soft, const T* x, long long rows, long long n, int* flags) {
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const Chunk part = chunk_of(n);
    bool bad = false;
    for (long long i = part.begin + threadIdx.x; i < part.end; i += blockDim.x) {
      const T v = x[r * n + i];
      bad |= soft ? !isfinite(v) : detail::hard_poisons_row(v);  // soft: NaN or +-inf; hard: NaN only
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(&flags[r], 1);
  }
}

// ---- radix selection of the k-th largest key ----

// Counts the radix digit at `shift` of the keys whose higher bits equal the prefix.
template <class T>
__global__ void histogram_kernel(Form form, const T* x, long long rows, long long n, int shift,
                                 const BitsOf<T>* prefix, unsigned long long* histogram) {
  using U = BitsOf<T>;
  __shared__ unsigned int counts[kRadixSize];
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int d = threadIdx.x; d < kRadixSize; d += blockDim.x) counts[d] = 0;
    __syncthreads();
    const Chunk part = chunk_of(n);
    for (long long i = part.begin + threadIdx.x; i < part.end; i += blockDim.x) {
      const U e = encode(key_of(form, x[r * n + i]));
      if (matches_prefix(e, prefix[r], shift)) atomicAdd(&counts[(e >> shift) & (kRadixSize - 1)], 1u);
    }
    __syncthreads();
    for (int d = threadIdx.x; d < kRadixSize; d += blockDim.x)
      if (counts[d] != 0) atomicAdd(&histogram[r * kRadixSize + d], static_cast<unsigned long long>(counts[d]));
    __syncthreads();
  }
}

// One thread per row: the digit holding the remaining-th largest key, appended to the prefix.
template <class U>
__global__ void choose_digit_kernel(long long rows, int shift, U* prefix, long long* remaining, long long* ties,
                                    unsigned long long* histogram) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  unsigned long long* counts = histogram + r * kRadixSize;
  choose_digit(counts, shift, prefix[r], remaining[r], ties[r]);
  for (int d = 0; d < kRadixSize; ++d) counts[d] = 0;  // for the next digit
}

// The largest key below the k-th (the (k+1)-th) where no tie of the k-th is left for it.
template <class T>
__global__ void next_key_kernel(Form form, const T* x, long long rows, long long n, const BitsOf<T>* prefix,
                                const long long* remaining, const long long* ties, BitsOf<T>* next) {
  using U = BitsOf<T>;
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    if (ties[r] > remaining[r]) continue;  // s_{k+1} = s_k, set by the caller's initial copy
    const Chunk part = chunk_of(n);
    U best = 0;
    for (long long i = part.begin + threadIdx.x; i < part.end; i += blockDim.x) {
      const U e = encode(key_of(form, x[r * n + i]));
      if (e < prefix[r] && e > best) best = e;
    }
    using Reduce = cub::BlockReduce<U, kThreads>;
    __shared__ typename Reduce::TempStorage storage;
    best = Reduce(storage).Reduce(best, [](U a, U b) { return a > b ? a : b; });
    if (threadIdx.x == 0 && best != 0) atomicMax(&next[r], best);
    __syncthreads();
  }
}

template <class U>
__global__ void start_selection_kernel(long long rows, long long k, U* prefix, U* next, long long* remaining,
                                       long long* ties, int* flags) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  prefix[r] = 0;
  next[r] = 0;
  remaining[r] = k;
  ties[r] = 0;
  flags[r] = 0;
}

template <class U>
__global__ void copy_kernel(long long rows, const U* from, U* to, const long long* remaining, const long long* ties) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < rows && ties[r] > remaining[r]) to[r] = from[r];  // a tie of s_k is the (k+1)-th
}

// ---- hard operators ----

// How many keys equal s_k in each block's part of its row.
template <class T>
__global__ void tie_count_kernel(Form form, const T* x, long long rows, long long n, const BitsOf<T>* prefix,
                                 long long* tie_counts) {
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const Chunk part = chunk_of(n);
    long long count = 0;
    for (long long i = part.begin + threadIdx.x; i < part.end; i += blockDim.x)
      count += encode(key_of(form, x[r * n + i])) == prefix[r];
    using Reduce = cub::BlockReduce<long long, kThreads>;
    __shared__ typename Reduce::TempStorage storage;
    count = Reduce(storage).Sum(count);
    if (threadIdx.x == 0) tie_counts[r * gridDim.x + blockIdx.x] = count;
    __syncthreads();
  }
}

// The column of each row's k-th entry in sorted order: the remaining-th key
// equal to s_k in column order, found by the one block whose part of the row
// holds it (a scan over its tiles).
template <class T>
__global__ void kth_index_kernel(Form form, const T* x, long long rows, long long n, const BitsOf<T>* prefix,
                                 const long long* remaining, const long long* tie_counts, long long* kth_index) {
  using Scan = cub::BlockScan<long long, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    long long ties_before = 0;  // in the row's earlier blocks
    for (unsigned b = 0; b < blockIdx.x; ++b) ties_before += tie_counts[r * gridDim.x + b];
    const long long wanted = remaining[r] - 1;  // its rank among the ties, from 0
    if (wanted < ties_before || wanted >= ties_before + tie_counts[r * gridDim.x + blockIdx.x]) continue;
    const Chunk part = chunk_of(n);
    for (long long tile = part.begin; tile < part.end; tile += blockDim.x) {
      const long long i = tile + threadIdx.x;
      const bool tie = i < part.end && encode(key_of(form, x[r * n + i])) == prefix[r];
      long long rank = 0, tile_ties = 0;  // ties before this entry in the tile, ties in the tile
      Scan(storage).ExclusiveSum(static_cast<long long>(tie), rank, tile_ties);
      __syncthreads();
      if (tie && ties_before + rank == wanted) kth_index[r] = i;
      ties_before += tile_ties;
    }
  }
}

// out_i by the core's rule (hard_topk.hpp) at the row's k-th entry (s_k, its
// column); NaN rows are NaN. take: -1 none kept (k = 0), 1 all (k = n), 0 by the rule.
template <class T>
__global__ void hard_write_kernel(Form form, const T* x, long long rows, long long n, int take,
                                  const BitsOf<T>* prefix, const long long* kth_index, const int* flags, T* out) {
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const Chunk part = chunk_of(n);
    detail::SortedEntry kth{0.0, 0};
    if (take == 0) kth = {static_cast<double>(decode<T>(prefix[r])), static_cast<std::size_t>(kth_index[r])};
    for (long long i = part.begin + threadIdx.x; i < part.end; i += blockDim.x) {
      const T v = x[r * n + i];
      const double key = static_cast<double>(detail::sort_key(form, v));
      const bool kept = take > 0 || (take == 0 && detail::hard_kept(key, static_cast<std::size_t>(i), kth));
      out[r * n + i] = flags[r] ? detail::hard_nan<T>() : detail::hard_value(form, v, kept);
    }
  }
}

// ---- soft operators ----

// One thread per row: the core's window bounds around s_k and s_{k+1}.
template <class T>
__global__ void bounds_kernel(Form form, long long rows, long long n, long long k, double l, double p,
                              const BitsOf<T>* prefix, const BitsOf<T>* next, Window window) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  window.count_above[r] = 0;
  window.size[r] = 0;
  window.begin[r] = r * n;
  if (k == 0 || k == n) {  // the core's whole sorted row
    window.above[r] = detail::kInf;
    window.below[r] = -detail::kInf;
    return;
  }
  const BlockEquation equation(form, l, p);
  const double s_k = static_cast<double>(decode<T>(prefix[r])), s_next = static_cast<double>(decode<T>(next[r]));
  detail::window_bounds(equation, s_k, s_next, window.above[r], window.below[r]);
}

// Entries outside the window get their output (1 or x_i above, 0 below); the
// others go to the row's window buffer, in no particular order (sorted next).
template <class T>
__global__ void gather_kernel(Form form, const T* x, long long rows, long long n, const int* flags, Window window,
                              T* out) {
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const Chunk part = chunk_of(n);
    const double above = window.above[r], below = window.below[r];
    long long count_above = 0;
    for (long long i = part.begin + threadIdx.x; i < part.end; i += blockDim.x) {
      const long long at = r * n + i;
      if (flags[r]) {  // a row holding a NaN or an infinity is NaN
        out[at] = T(kNaN);
        continue;
      }
      const double key = static_cast<double>(key_of(form, x[at]));
      if (key >= above) {
        ++count_above;
        out[at] = form == Form::magnitude ? x[at] : T(1);
      } else {
        out[at] = T(0);
        if (key > below) {
          const long long slot = add_to(&window.size[r], 1);
          window.keys[r * n + slot] = key;
          window.index[r * n + slot] = i;
        }
      }
    }
    using Reduce = cub::BlockReduce<long long, kThreads>;
    __shared__ typename Reduce::TempStorage storage;
    count_above = Reduce(storage).Sum(count_above);
    if (threadIdx.x == 0 && count_above != 0) add_to(&window.count_above[r], count_above);
    __syncthreads();
  }
}

__global__ void segment_end_kernel(long long rows, Window window) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < rows) window.end[r] = window.begin[r] + window.size[r];
}

// One thread per row: the core's band solver on the row's sorted window, and
// the row's RowState as the core's topk.cpp records it (save_row): gamma, W_B
// and unchanged_from of band_state(), the band's bounds from the entries the
// solver reports.
template <class T>
__global__ void band_kernel(Form form, const T* x, long long rows, long long n, long long k, double l, double p,
                            const int* flags, Window window, T* out, RowState* states) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  RowState* state = states ? states + r : nullptr;
  if (flags[r]) {  // as the core's fill_non_finite_row
    if (state) *state = RowState{.gamma = kNaN, .block_weight = 0.0, .unchanged_from = kNaN};
    return;
  }
  const long long m = window.size[r];
  // CUB leaves segments of one entry where they were
  const double* s = (m >= 2 ? window.keys_sorted : window.keys) + r * n;
  const long long* index = (m >= 2 ? window.index_sorted : window.index) + r * n;
  const RowWindow row_window{static_cast<std::size_t>(m), static_cast<std::size_t>(k - window.count_above[r]),
                             window.above[r], window.below[r]};
  const BlockEquation equation(form, l, p);
  detail::BlockStack blocks{window.blocks ? static_cast<PavBlock*>(window.blocks) + r * n : nullptr};
  const auto index_of = [index](std::size_t j) { return static_cast<std::size_t>(index[j]); };
  const T* row = x + r * n;
  detail::BandBounds band;
  const auto append = [row, form, &band](std::size_t i, double) {  // the key as the core's topk.cpp takes it
    band.add(detail::sort_key(form, static_cast<double>(row[i])), i);
  };
  RowState near;  // the near entries' offsets, if the solver resolved them
  const StraddlingBlock block =
      form == Form::magnitude
          ? detail::solve_mag_band(row_window, s, index_of, equation, Solver::threshold, blocks, row, out + r * n,
                                   state != nullptr, append, near)
          : detail::solve_mask_band(row_window, s, index_of, equation, Solver::threshold, blocks, out + r * n,
                                    state != nullptr, append, near);
  if (!state) return;
  const detail::BandState solved = detail::band_state(block, row_window, s);
  *state = near;
  state->gamma = solved.gamma;
  state->block_weight = solved.block_weight;
  state->unchanged_from = solved.unchanged_from;
  band.write(*state);
}

// Rows of n = 0 entries: no block, no threshold, no band.
__global__ void empty_rows_kernel(long long rows, RowState* states) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < rows) states[r] = RowState{.gamma = -detail::kInf, .block_weight = 0.0, .unchanged_from = detail::kInf};
}

// ---- derivatives: one block per row ----

// J^T v or J v of each row at its saved state: the band's c_i recomputed from x
// at each of the three passes (pivot, spread, output), never stored; the
// per-entry math is saved_band.hpp's (tested on the CPU against the core).
template <class T>
__global__ void jacobian_kernel(Form form, bool transpose, const T* v, const T* x, const RowState* states,
                                double l, double p, long long rows, long long n, T* out) {
  using PivotReduce = cub::BlockReduce<Pivot, kThreads>;
  using SumReduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename PivotReduce::TempStorage pivot_storage;
  __shared__ typename SumReduce::TempStorage sum_storage;
  __shared__ Pivot pivot;
  __shared__ double spread;
  const detail::Regularizer regularizer(p);
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* v_row = v + r * n;
    const T* x_row = x + r * n;
    T* out_row = out + r * n;
    const RowState state = states[r];
    if (isnan(state.gamma)) {  // the row held a non-finite value
      for (long long i = threadIdx.x; i < n; i += blockDim.x) out_row[i] = T(kNaN);
      continue;
    }
    const SavedBand band(state, regularizer, l, form);
    const auto c_of = [&](long long i) {
      return band.weight(static_cast<double>(x_row[i]), static_cast<std::size_t>(i));
    };
    const auto t = [&](long long i) {
      return tangent(form, static_cast<double>(x_row[i]), static_cast<double>(v_row[i]));
    };
    Pivot mine = no_pivot(n);
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
      const double c_i = c_of(i);
      if (c_i >= 0.0) mine = MergePivots{}(mine, entry_pivot(c_i, i));
    }
    const Pivot all = PivotReduce(pivot_storage).Reduce(mine, MergePivots{});
    if (threadIdx.x == 0) pivot = all;
    __syncthreads();
    const double t_d = pivot.count > 0 ? t(pivot.index) : 0.0;
    double part = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
      const double c_i = c_of(i);
      if (c_i >= 0.0) part += spread_term(form, transpose, c_i, t(i), t_d);
    }
    const double total = SumReduce(sum_storage).Sum(part);
    if (threadIdx.x == 0) spread = total;
    __syncthreads();
    for (long long i = threadIdx.x; i < n; i += blockDim.x)
      out_row[i] = T(product_entry(form, transpose, state, pivot, t_d, spread, c_of(i),
                                   static_cast<double>(x_row[i]), static_cast<double>(v_row[i])));
    __syncthreads();
  }
}

}  // namespace

// ---- host side: launches on `stream`, no allocation, no synchronization ----

std::size_t pav_block_bytes() { return sizeof(PavBlock); }

std::size_t sort_scratch_bytes(long long rows, long long n) {
  std::size_t bytes = 0;
  check(cub::DeviceSegmentedSort::SortPairsDescending(nullptr, bytes, static_cast<const double*>(nullptr),
                                                      static_cast<double*>(nullptr),
                                                      static_cast<const long long*>(nullptr),
                                                      static_cast<long long*>(nullptr), rows * n, rows,
                                                      static_cast<const long long*>(nullptr),
                                                      static_cast<const long long*>(nullptr)));
  return bytes;
}

long long blocks_per_row(long long n) { return chunks_of(n); }

namespace {

// Hands out consecutive 256-byte aligned pieces of one buffer (base nullptr: only counts).
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <class U>
  U* take(long long count) {
    U* piece = base_ ? reinterpret_cast<U*>(base_ + used_) : nullptr;
    used_ += (static_cast<std::size_t>(count) * sizeof(U) + 255) / 256 * 256;
    return piece;
  }
  std::size_t used() const { return used_; }

 private:
  char* base_;
  std::size_t used_ = 0;
};

Selection carve_selection(Carver& carver, long long rows) {
  Selection s;
  s.prefix = carver.take<unsigned long long>(rows);
  s.next = carver.take<unsigned long long>(rows);
  s.remaining = carver.take<long long>(rows);
  s.ties = carver.take<long long>(rows);
  s.histogram = carver.take<unsigned long long>(rows * 256);
  s.flags = carver.take<int>(rows);
  return s;
}

HardScratch carve_hard(Carver& carver, long long rows, long long n) {
  HardScratch s;
  s.selection = carve_selection(carver, rows);
  s.tie_counts = carver.take<long long>(rows * blocks_per_row(n));
  s.kth_index = carver.take<long long>(rows);
  return s;
}

SoftScratch carve_soft(void* base, long long rows, long long n) {
  Carver carver(base);
  SoftScratch s;
  s.selection = carve_selection(carver, rows);
  Window& w = s.window;
  w.above = carver.take<double>(rows);
  w.below = carver.take<double>(rows);
  w.count_above = carver.take<long long>(rows);
  w.size = carver.take<long long>(rows);
  w.begin = carver.take<long long>(rows);
  w.end = carver.take<long long>(rows);
  w.keys = carver.take<double>(rows * n);
  w.index = carver.take<long long>(rows * n);
  w.keys_sorted = carver.take<double>(rows * n);
  w.index_sorted = carver.take<long long>(rows * n);
  // (every p: solve_threshold_equation leaves general p's near-ties to PAV)
  w.blocks = carver.take<char>(rows * n * static_cast<long long>(pav_block_bytes()));
  s.sort_bytes = std::max<std::size_t>(sort_scratch_bytes(rows, n), 1);
  s.sort = carver.take<char>(static_cast<long long>(s.sort_bytes));
  if (!base) s.sort_bytes = carver.used();  // (counting pass: the total)
  return s;
}

}  // namespace

std::size_t soft_scratch_bytes(long long rows, long long n) {
  return carve_soft(nullptr, rows, n).sort_bytes;
}

SoftScratch soft_scratch(void* base, long long rows, long long n) { return carve_soft(base, rows, n); }

std::size_t hard_scratch_bytes(long long rows, long long n) {
  Carver carver(nullptr);
  carve_hard(carver, rows, n);
  return carver.used();
}

HardScratch hard_scratch(void* base, long long rows, long long n) {
  Carver carver(base);
  return carve_hard(carver, rows, n);
}

template <class T>
void flag_rows(bool soft, const T* x, long long rows, long long n, int* flags, cudaStream_t stream) {
  check(cudaMemsetAsync(flags, 0, sizeof(int) * rows, stream));
  flag_kernel<T><<<row_grid(rows, n), kThreads, 0, stream>>>(soft, x, rows, n, flags);
  check(cudaGetLastError());
}

template <class T>
void select_keys(Form form, bool soft, const T* x, long long rows, long long n, long long k,
                 const Selection& selection, cudaStream_t stream) {
  using U = BitsOf<T>;
  U* prefix = static_cast<U*>(selection.prefix);
  U* next = static_cast<U*>(selection.next);
  start_selection_kernel<U><<<per_row_grid(rows), kThreads, 0, stream>>>(rows, k, prefix, next, selection.remaining,
                                                                          selection.ties, selection.flags);
  check(cudaMemsetAsync(selection.histogram, 0, sizeof(unsigned long long) * kRadixSize * rows, stream));
  flag_kernel<T><<<row_grid(rows, n), kThreads, 0, stream>>>(soft, x, rows, n, selection.flags);
  for (int shift = 8 * static_cast<int>(sizeof(U)) - kRadixBits; shift >= 0; shift -= kRadixBits) {
    histogram_kernel<T><<<row_grid(rows, n), kThreads, 0, stream>>>(form, x, rows, n, shift, prefix,
                                                                      selection.histogram);
    choose_digit_kernel<U><<<per_row_grid(rows), kThreads, 0, stream>>>(rows, shift, prefix, selection.remaining,
                                                                         selection.ties, selection.histogram);
  }
  copy_kernel<U><<<per_row_grid(rows), kThreads, 0, stream>>>(rows, prefix, next, selection.remaining, selection.ties);
  next_key_kernel<T><<<row_grid(rows, n), kThreads, 0, stream>>>(form, x, rows, n, prefix, selection.remaining,
                                                                   selection.ties, next);
  check(cudaGetLastError());
}

template <class T>
void hard_forward(Form form, const T* x, long long rows, long long n, long long k, const HardScratch& scratch,
                  T* out, cudaStream_t stream) {
  using U = BitsOf<T>;
  const Selection& selection = scratch.selection;
  const U* prefix = static_cast<const U*>(selection.prefix);
  const int take = k == 0 ? -1 : (k == n ? 1 : 0);
  if (take == 0) {
    tie_count_kernel<T><<<row_grid(rows, n), kThreads, 0, stream>>>(form, x, rows, n, prefix, scratch.tie_counts);
    kth_index_kernel<T><<<row_grid(rows, n), kThreads, 0, stream>>>(form, x, rows, n, prefix, selection.remaining,
                                                                      scratch.tie_counts, scratch.kth_index);
  }
  hard_write_kernel<T><<<row_grid(rows, n), kThreads, 0, stream>>>(form, x, rows, n, take, prefix,
                                                                     scratch.kth_index, selection.flags, out);
  check(cudaGetLastError());
}

template <class T>
void soft_forward(Form form, const T* x, long long rows, long long n, long long k, double l, double p,
                  const Selection& selection, const Window& window, void* sort_scratch, std::size_t sort_bytes,
                  T* out, RowState* state, cudaStream_t stream) {
  using U = BitsOf<T>;
  if (rows == 0) return;
  if (n == 0) {  // nothing to solve (nor to sort: no launch with zero items)
    if (state) empty_rows_kernel<<<per_row_grid(rows), kThreads, 0, stream>>>(rows, state);
    check(cudaGetLastError());
    return;
  }
  bounds_kernel<T><<<per_row_grid(rows), kThreads, 0, stream>>>(form, rows, n, k, l, p,
                                                                  static_cast<const U*>(selection.prefix),
                                                                  static_cast<const U*>(selection.next), window);
  gather_kernel<T><<<row_grid(rows, n), kThreads, 0, stream>>>(form, x, rows, n, selection.flags, window, out);
  segment_end_kernel<<<per_row_grid(rows), kThreads, 0, stream>>>(rows, window);
  check(cudaGetLastError());
  std::size_t bytes = sort_bytes;
  check(cub::DeviceSegmentedSort::SortPairsDescending(sort_scratch, bytes, window.keys, window.keys_sorted,
                                                      window.index, window.index_sorted, rows * n, rows,
                                                      window.begin, window.end, stream));
  band_kernel<T><<<per_row_grid(rows), kThreads, 0, stream>>>(form, x, rows, n, k, l, p, selection.flags, window,
                                                                out, state);
  check(cudaGetLastError());
}

template <class T>
void jacobian_product(Form form, bool transpose, const T* v, const T* x, const RowState* state, double l,
                      double p, long long rows, long long n, T* out, cudaStream_t stream) {
  if (rows == 0 || n == 0) return;
  const unsigned grid = static_cast<unsigned>(std::min<long long>(rows, 1LL << 20));
  jacobian_kernel<T><<<grid, kThreads, 0, stream>>>(form, transpose, v, x, state, l, p, rows, n, out);
  check(cudaGetLastError());
}

#define SPARSETOPK_INSTANTIATE(T)                                                                                   \
  template void flag_rows<T>(bool, const T*, long long, long long, int*, cudaStream_t);                           \
  template void select_keys<T>(Form, bool, const T*, long long, long long, long long, const Selection&,             \
                               cudaStream_t);                                                                       \
  template void hard_forward<T>(Form, const T*, long long, long long, long long, const HardScratch&, T*,          \
                                cudaStream_t);                                                                      \
  template void soft_forward<T>(Form, const T*, long long, long long, long long, double, double, const Selection&, \
                                const Window&, void*, std::size_t, T*, RowState*, cudaStream_t);                    \
  template void jacobian_product<T>(Form, bool, const T*, const T*, const RowState*, double, double, long long,    \
                                    long long, T*, cudaStream_t);
SPARSETOPK_INSTANTIATE(float)
SPARSETOPK_INSTANTIATE(double)
#undef SPARSETOPK_INSTANTIATE

}  // namespace sparsetopk::cuda
