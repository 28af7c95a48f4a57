#pragma once
// The kernels of topk_kernels.hpp and their launches, written once: included
// by topk_kernels.cu (nvcc, for the GPU: UNVERIFIED, never run on one) and by
// topk_kernels_cpu.cpp (host C++ on the CPU harness, harness/cuda_on_cpu.hpp,
// run by CI). Each op is one launch; each row is a team's (team_rows.hpp).
//
// Per-row math is the core's, compiled for the device (SPARSETOPK_HOST_DEVICE)
// through the sparsetopk_row target (src/core/row). nvcc builds it with
// -fmad=false so that the device rounds as the core does (no contracted
// a * b + c); device pow/cbrt may still differ from glibc in the last ulp.

#include <algorithm>
#include <cstddef>

#include "block_equation.hpp"
#include "long_rows.hpp"
#include "pav.hpp"
#include "regularizer.hpp"
#include "team.hpp"
#include "team_rows.hpp"
#include "topk_kernels.hpp"

namespace sparsetopk::cuda {
namespace {

constexpr unsigned kWarpsPerBlock = 4;     // warp rows: 4 rows per block of 128 threads
constexpr unsigned kBlockThreads = 256;    // block rows
constexpr long long kMaxBlocks = 8192;     // grid.x; rows beyond are looped (grid-stride)

// ---- the team of the calling thread and its rows ----

// Bytes of one team's copy of its row in shared memory (16-byte aligned pieces).
template <class T>
__host__ __device__ std::size_t row_bytes(long long n) {
  return (static_cast<std::size_t>(n) * sizeof(T) + 15) / 16 * 16;
}

// Warp teams: warp w of block b takes rows b * kWarpsPerBlock + w, then every
// gridDim.x * kWarpsPerBlock-th row after it, and holds each in registers
// (RegisterRow). Block teams: block b takes rows b, b + gridDim.x, ..., each
// copied once into the block's shared memory after its radix counters (where
// the launch made room: staged_shape) and read from there by every later pass
// (the selection's 4 or 8, the split, the band).
template <class Team>
struct TeamRows;

template <>
struct TeamRows<WarpTeam> {
  __device__ static WarpTeam team(unsigned*) { return WarpTeam(); }
  __device__ static long long first() {
    return static_cast<long long>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  }
  __device__ static long long stride() { return static_cast<long long>(gridDim.x) * kWarpsPerBlock; }
  template <class T>
  __device__ static RegisterRow<T> row(const WarpTeam& team, unsigned*, const T* x_row, long long n) {
    return RegisterRow<T>(team, x_row, n);
  }
};

template <>
struct TeamRows<BlockTeam> {
  __device__ static BlockTeam team(unsigned* counts) { return BlockTeam(counts); }
  __device__ static long long first() { return blockIdx.x; }
  __device__ static long long stride() { return gridDim.x; }
  template <class T>
  __device__ static MemoryRow<T, BlockTeam> row(const BlockTeam& team, unsigned* counts, const T* x_row,
                                                long long n) {
    T* staging = reinterpret_cast<T*>(counts + kRadixSize);
    team.sync();  // (every thread is done with the block's previous row)
    for (long long i = team.rank(); i < n; i += team.size()) staging[i] = x_row[i];
    team.sync();
    return MemoryRow<T, BlockTeam>(team, staging, n);
  }
};

// ---- kernels ----

template <class T, class Team>
__global__ void soft_kernel(Form form, Solver solver, const T* x, long long rows, long long n, long long k, double l,
                            double p, RowScratch scratch, T* out, RowState* state) {
  SPARSETOPK_DYNAMIC_SHARED(unsigned, counts);
  const Team team = TeamRows<Team>::team(counts);
  const detail::BlockEquation equation(form, l, p);
  for (long long r = TeamRows<Team>::first(); r < rows; r += TeamRows<Team>::stride()) {
    const RowScratch row_scratch{scratch.keys + r * n, scratch.index + r * n, scratch.blocks + r * n};
    soft_row(team, form, solver, equation, TeamRows<Team>::row(team, counts, x + r * n, n), k, row_scratch,
             out + r * n, state ? state + r : nullptr);
  }
}

template <class T, class Team>
__global__ void hard_kernel(Form form, const T* x, long long rows, long long n, long long k, T* out) {
  SPARSETOPK_DYNAMIC_SHARED(unsigned, counts);
  const Team team = TeamRows<Team>::team(counts);
  for (long long r = TeamRows<Team>::first(); r < rows; r += TeamRows<Team>::stride())
    hard_row(team, form, TeamRows<Team>::row(team, counts, x + r * n, n), k, out + r * n);
}

// x is read three times: block teams stage it in shared memory; warp teams
// read it from x (L1-resident: at most 8 KiB a row), not from registers, whose
// loops nvcc unrolls: three unrolled copies of the band's c_i (a pow for
// general p) per slot made this kernel 140,000 lines of PTX.
template <class T>
__device__ MemoryRow<T, WarpTeam> jacobian_x(const WarpTeam& team, unsigned*, const T* x_row, long long n) {
  return MemoryRow<T, WarpTeam>(team, x_row, n);
}
template <class T>
__device__ MemoryRow<T, BlockTeam> jacobian_x(const BlockTeam& team, unsigned* counts, const T* x_row, long long n) {
  return TeamRows<BlockTeam>::row(team, counts, x_row, n);
}

template <class T, class Team>
__global__ void jacobian_kernel(Form form, bool transpose, const T* v, const T* x, const RowState* states, double l,
                                double p, long long rows, long long n, T* out) {
  SPARSETOPK_DYNAMIC_SHARED(unsigned, counts);
  const Team team = TeamRows<Team>::team(counts);
  const detail::Regularizer regularizer(p);
  for (long long r = TeamRows<Team>::first(); r < rows; r += TeamRows<Team>::stride())
    jacobian_row(team, form, transpose, regularizer, l, v + r * n, jacobian_x(team, counts, x + r * n, n), states[r],
                 out + r * n);
}

// ---- launch shapes ----

struct Shape {
  dim3 grid, block;
  std::size_t shared_bytes;  // block rows: the radix counters (256), then the row
};

bool warp_rows(long long n) { return n <= kWarpRowSize; }
bool long_row_chunks(long long n) { return n > long_rows::kChunkSize; }  // long rows: a block per chunk

// Long rows: grid (chunks, rows up to 65535: the rest looped); per row scalars: blocks of 256.
dim3 chunk_grid(long long rows, long long n) {
  return dim3(static_cast<unsigned>(long_rows::chunks_of(n)), static_cast<unsigned>(std::min<long long>(rows, 65535)));
}
dim3 per_row_grid(long long rows) {
  return dim3(static_cast<unsigned>(std::min<long long>((rows + long_rows::kThreads - 1) / long_rows::kThreads, kMaxBlocks)));
}

// The launch of warp teams (no shared memory) or block teams (their radix
// counters; the long rows' band kernel, a block per row, takes this shape too).
Shape shape_of(long long rows, long long n) {
  if (warp_rows(n)) {
    const long long blocks = std::min((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks);
    return {dim3(static_cast<unsigned>(blocks)), dim3(kWarpsPerBlock * kWarpSize), 0};
  }
  return {dim3(static_cast<unsigned>(std::min(rows, kMaxBlocks))), dim3(kBlockThreads), kRadixSize * sizeof(unsigned)};
}

// The shape of a warp- or block-team launch: warp rows need no shared memory
// (their rows are in registers); block rows get room after the counters for
// the row (T), which they stage in shared memory: up to 128 KiB for rows of
// 16,384 doubles (above 48 KiB, launch() opts the kernel in to the larger
// dynamic shared memory).
template <class T>
Shape staged_shape(long long rows, long long n) {
  Shape shape = shape_of(rows, n);
  if (!warp_rows(n)) shape.shared_bytes += row_bytes<T>(n);
  return shape;
}

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

RowScratch carve_soft(Carver& carver, long long rows, long long n) {
  RowScratch scratch;
  scratch.keys = carver.take<double>(rows * n);
  scratch.index = carver.take<long long>(rows * n);
  scratch.blocks = carver.take<detail::PavBlock>(rows * n);
  return scratch;
}

// The selections of long rows (none for shorter ones).
long_rows::RowSelection* carve_selections(Carver& carver, long long rows, long long n) {
  return long_row_chunks(n) ? carver.take<long_rows::RowSelection>(rows) : nullptr;
}
// How many window entries each chunk of a long row holds: [rows, chunks] (none for shorter rows).
long long* carve_window_counts(Carver& carver, long long rows, long long n) {
  return long_row_chunks(n) ? carver.take<long long>(rows * long_rows::chunks_of(n)) : nullptr;
}
// The band's search across chunks (rows of at least kRoundRowSize entries):
// each row's search, and its chunks' sums of a round [rows, chunks, kRoundSums].
struct RoundScratch {
  detail::BandSearch* searches;
  double* partials;
};
RoundScratch carve_rounds(Carver& carver, long long rows, long long n) {
  if (n < long_rows::kRoundRowSize) return {nullptr, nullptr};
  return {carver.take<detail::BandSearch>(rows), carver.take<double>(rows * long_rows::chunks_of(n) * long_rows::kRoundSums)};
}

// Room for the selection's candidates (long_rows::DigitSource): [rows, n]
// keys' bits and [rows, chunks] counts; none: every pass reads the row.
template <class T>
struct Candidates {
  BitsOf<T>* keys;
  long long* counts;
};

template <class T>
struct HardScratch {
  long_rows::RowSelection* selections;
  long long* tie_counts;  // [rows, chunks]
  Candidates<T> candidates;
};
template <class T>
HardScratch<T> carve_hard(Carver& carver, long long rows, long long n) {
  if (!long_row_chunks(n)) return {nullptr, nullptr, {nullptr, nullptr}};
  auto* selections = carver.take<long_rows::RowSelection>(rows);
  auto* tie_counts = carver.take<long long>(rows * long_rows::chunks_of(n));
  auto* keys = carver.take<BitsOf<T>>(rows * n);
  return {selections, tie_counts, {keys, carver.take<long long>(rows * long_rows::chunks_of(n))}};
}

struct ProductScratch {
  Pivot* pivots;    // [rows, chunks]
  double* spreads;  // [rows, chunks]
};
ProductScratch carve_product(Carver& carver, long long rows, long long n) {
  if (!long_row_chunks(n)) return {nullptr, nullptr};
  const long long parts = rows * long_rows::chunks_of(n);
  return {carver.take<Pivot>(parts), carver.take<double>(parts)};
}

// The k-th key of every long row by radix digits over the chunks (and for
// `soft` the (k+1)-th: digit_kernel); flags the rows as `soft` asks.
template <class T>
void select_long_rows(Form form, bool soft, const T* x, long long rows, long long n, long long k,
                      long_rows::RowSelection* selections, Candidates<T> candidates, cudaStream_t stream) {
  using U = BitsOf<T>;
  using long_rows::DigitSource;
  launch(long_rows::start_kernel<T>, per_row_grid(rows), dim3(long_rows::kThreads), 0, stream, rows, k, selections);
  const dim3 grid = chunk_grid(rows, n), block(long_rows::kThreads);
  const int top = 8 * static_cast<int>(sizeof(U)) - kRadixBits;
  for (int shift = top; shift >= 0; shift -= kRadixBits) {
    const DigitSource source = !candidates.keys   ? DigitSource::row
                               : shift == top     ? DigitSource::row
                               : shift == top - kRadixBits ? DigitSource::row_keeping_candidates
                                                           : DigitSource::candidates;
    launch(long_rows::digit_kernel<T>, grid, block, 0, stream, form, soft, x, rows, n, shift, shift == top,
           selections, source, candidates.keys, candidates.counts);
  }
}

}  // namespace

#if !defined(SPARSETOPK_KERNELS_SECOND_FILE)  // (defined once, in the file that builds float)
std::size_t soft_scratch_bytes(long long rows, long long n) {
  Carver carver(nullptr);
  carve_soft(carver, rows, n);
  carve_selections(carver, rows, n);
  carve_window_counts(carver, rows, n);
  carve_rounds(carver, rows, n);
  return std::max<std::size_t>(carver.used(), 256);
}

std::size_t hard_scratch_bytes(long long rows, long long n) {
  Carver carver(nullptr);
  carve_hard<double>(carver, rows, n);  // (the widest keys: enough for float too)
  return std::max<std::size_t>(carver.used(), 256);
}

std::size_t jacobian_scratch_bytes(long long rows, long long n) {
  Carver carver(nullptr);
  carve_product(carver, rows, n);
  return std::max<std::size_t>(carver.used(), 256);
}
#endif

template <class T>
void soft_forward(Form form, Solver solver, const T* x, long long rows, long long n, long long k, double l, double p,
                  void* scratch, T* out, RowState* state, cudaStream_t stream) {
  if (rows == 0) return;
  Carver carver(scratch);
  const RowScratch parts = carve_soft(carver, rows, n);
  long_rows::RowSelection* selections = carve_selections(carver, rows, n);
  long long* window_counts = carve_window_counts(carver, rows, n);
  const RoundScratch rounds = carve_rounds(carver, rows, n);
  const Solver row_solver = solver == Solver::pav ? Solver::pav : Solver::threshold;  // as the core's soft_topk
  const Shape shape = shape_of(rows, n);
  if (long_row_chunks(n) && row_solver == Solver::threshold && k > 0 && k < n) {  // a block per chunk
    // (the candidates in the window's scratch, which the split overwrites after the selection)
    const Candidates<T> candidates{reinterpret_cast<BitsOf<T>*>(parts.keys), window_counts};
    select_long_rows(form, /*soft=*/true, x, rows, n, k, selections, candidates, stream);
    launch(long_rows::split_kernel<T>, chunk_grid(rows, n), dim3(long_rows::kThreads), 0, stream, form, x, rows, n,
           l, p, selections, parts, window_counts, out);
    if (rounds.searches)  // the search for a wide band's piece across the chunks' blocks
      for (int round = 0; round < long_rows::kLaunchedRounds; ++round)
        launch(long_rows::band_round_kernel<T>, chunk_grid(rows, n), dim3(long_rows::kThreads), 0, stream, form, x,
               rows, n, k, l, p, selections, parts, static_cast<const long long*>(window_counts), rounds.searches,
               rounds.partials, round == 0);
    // (a block per row: its window may be wide, solved by reductions over the block)
    launch(long_rows::band_kernel<T>, shape.grid, dim3(long_rows::kBandThreads), shape.shared_bytes, stream, form, row_solver, x,
           rows, n, k, l, p, selections, parts, static_cast<const long long*>(window_counts),
           static_cast<const detail::BandSearch*>(rounds.searches), out, state);
  } else if (warp_rows(n)) {
    const Shape staged = staged_shape<T>(rows, n);
    launch(soft_kernel<T, WarpTeam>, staged.grid, staged.block, staged.shared_bytes, stream, form, row_solver, x, rows,
           n, k, l, p, parts, out, state);
  } else {
    const Shape staged = staged_shape<T>(rows, n);
    launch(soft_kernel<T, BlockTeam>, staged.grid, staged.block, staged.shared_bytes, stream, form, row_solver, x,
           rows, n, k, l, p, parts, out, state);
  }
}

template <class T>
void hard_forward(Form form, const T* x, long long rows, long long n, long long k, void* scratch, T* out,
                  cudaStream_t stream) {
  if (rows == 0 || n == 0) return;
  Carver carver(scratch);
  const HardScratch<T> parts = carve_hard<T>(carver, rows, n);
  if (long_row_chunks(n) && k > 0 && k < n) {
    select_long_rows(form, /*soft=*/false, x, rows, n, k, parts.selections, parts.candidates, stream);
    const dim3 grid = chunk_grid(rows, n), block(long_rows::kThreads);
    launch(long_rows::tie_count_kernel<T>, grid, block, 0, stream, form, x, rows, n,
           static_cast<const long_rows::RowSelection*>(parts.selections), parts.tie_counts);
    launch(long_rows::hard_write_kernel<T>, grid, block, 0, stream, form, x, rows, n,
           static_cast<const long_rows::RowSelection*>(parts.selections),
           static_cast<const long long*>(parts.tie_counts), out);
  } else {
    const Shape staged = staged_shape<T>(rows, n);
    if (warp_rows(n))
      launch(hard_kernel<T, WarpTeam>, staged.grid, staged.block, staged.shared_bytes, stream, form, x, rows, n, k, out);
    else
      launch(hard_kernel<T, BlockTeam>, staged.grid, staged.block, staged.shared_bytes, stream, form, x, rows, n, k,
             out);
  }
}

template <class T>
void jacobian_product(Form form, bool transpose, const T* v, const T* x, const RowState* state, double l, double p,
                      long long rows, long long n, void* scratch, T* out, cudaStream_t stream) {
  if (rows == 0 || n == 0) return;
  Carver carver(scratch);
  const ProductScratch parts = carve_product(carver, rows, n);
  if (long_row_chunks(n)) {  // partial pivots, partial spreads, then the outputs
    const dim3 grid = chunk_grid(rows, n), block(long_rows::kThreads);
    launch(long_rows::pivot_kernel<T>, grid, block, 0, stream, form, x, state, l, p, rows, n, parts.pivots);
    launch(long_rows::spread_kernel<T>, grid, block, 0, stream, form, transpose, v, x, state, l, p, rows, n,
           static_cast<const Pivot*>(parts.pivots), parts.spreads);
    launch(long_rows::product_kernel<T>, grid, block, 0, stream, form, transpose, v, x, state, l, p, rows, n,
           static_cast<const Pivot*>(parts.pivots), static_cast<const double*>(parts.spreads), out);
  } else {
    const Shape staged = staged_shape<T>(rows, n);
    if (warp_rows(n))
      launch(jacobian_kernel<T, WarpTeam>, staged.grid, staged.block, staged.shared_bytes, stream, form, transpose, v,
             x, state, l, p, rows, n, out);
    else
      launch(jacobian_kernel<T, BlockTeam>, staged.grid, staged.block, staged.shared_bytes, stream, form, transpose, v,
             x, state, l, p, rows, n, out);
  }
}

// Each including file instantiates the types it builds (SPARSETOPK_INSTANTIATE_KERNELS):
// nvcc builds float and double in two files, so that they compile in parallel.
#define SPARSETOPK_INSTANTIATE_KERNELS(T)                                                                          \
  template void soft_forward<T>(Form, Solver, const T*, long long, long long, long long, double, double, void*, T*, \
                                RowState*, cudaStream_t);                                                          \
  template void hard_forward<T>(Form, const T*, long long, long long, long long, void*, T*, cudaStream_t);          \
  template void jacobian_product<T>(Form, bool, const T*, const T*, const RowState*, double, double, long long,    \
                                    long long, void*, T*, cudaStream_t);

}  // namespace sparsetopk::cuda
