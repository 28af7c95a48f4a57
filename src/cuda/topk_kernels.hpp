#pragma once
// The hand-written CUDA kernels (UNVERIFIED on a GPU: compiled and linked,
// run on the CPU harness (harness/cuda_on_cpu.hpp) in CI, never on a device;
// opt-in only, see docs/gpu.md). Plain C++ interface, no torch: the callers
// (the torch adapter src/torch/cuda/cuda_kernel.cpp, the JAX adapter
// src/jax/cuda_handlers.cpp, src/cuda/kernel_selftest.cpp) own every
// buffer, pass device pointers and the stream, and nothing here allocates or
// synchronizes with the host.
//
// Rows are [rows, n] contiguous, float or double (half types are converted to
// float by the caller). Each op is ONE launch for rows of up to 16384 entries:
// a team of threads per row (team.hpp) — a warp for rows of up to
// kWarpRowSize entries, a block for longer ones — runs the whole row
// (team_rows.hpp): radix selection of the
// k-th and (k+1)-th keys, the core's window bounds, the split, and the band:
// a window of up to kSortedWindowLimit entries by a bitonic sort and the
// core's band solver (solve_mask_band / solve_mag_band) on one thread, which
// records the row's RowState as the core's topk.cpp does; a wider one by
// reductions over the team (the core's band_reductions.hpp, as the global
// operators solve a window spread over processes: to the solvers' tolerance). The derivatives: the same teams, the band's c_i
// recomputed from x at the saved RowState (saved_band.hpp). Longer rows get a
// block per chunk of 16384 entries and a fixed few launches (long_rows.hpp).
//
// Built twice from topk_kernels_impl.hpp: by nvcc (topk_kernels.cu, the
// library sparsetopk_cuda_kernels) and as host C++ on the harness
// (topk_kernels_cpu.cpp, sparsetopk_cuda_kernels_cpu, for the tests).

#include <cstddef>

#include <sparsetopk/form.hpp>
#include <sparsetopk/row_state.hpp>
#include <sparsetopk/topk.hpp>

// cudaStream_t: the CUDA runtime's, or the CPU harness's where the kernels are
// built for it (sparsetopk_cuda_kernels_cpu defines SPARSETOPK_CUDA_HARNESS).
#if defined(SPARSETOPK_CUDA_HARNESS)
#include "harness/cuda_on_cpu.hpp"
#else
#include <cuda_runtime_api.h>
#endif

namespace sparsetopk::cuda {

// Rows of up to this many entries get a warp each; longer rows a block.
constexpr long long kWarpRowSize = 1024;
// Windows (the entries that can share the straddling block) wider than this
// are solved by reductions over the team, not sorted (Solver::pav: always sorted).
constexpr long long kSortedWindowLimit = 2048;

// Bytes of device scratch a soft forward over [rows, n] needs: per entry
// its window key and column and a PAV stack entry (used by the rows whose
// window holds them). Pass a buffer of at least this size, 256-byte aligned
// (every CUDA allocator's alignment).
std::size_t soft_scratch_bytes(long long rows, long long n);

// soft_topk_mask / soft_topk_mag of SPEC.md on every row, and with state !=
// nullptr each row's RowState [rows] as the core's soft_topk_* writes it
// (topk.cpp): gamma, W_B and unchanged_from of band_state(), the band's
// first and last entries; a row holding a non-finite value: NaN outputs,
// gamma = unchanged_from = NaN; rows of n = 0 entries: gamma = -inf,
// unchanged_from = +inf, no band (as the torch CPU kernels write them).
// solver: automatic or threshold (select, then the window), or pav (the
// whole row sorted), as the core.
template <class T>
void soft_forward(Form form, Solver solver, const T* x, long long rows, long long n, long long k, double l,
                  double p, void* scratch, T* out, RowState* state, cudaStream_t stream);

// hard_topk_mask / hard_topk_mag of SPEC.md on every row, with a scratch
// buffer of hard_scratch_bytes(rows, n) bytes (used by long rows only: the
// selection's state, and 8 bytes per entry for its candidates).
std::size_t hard_scratch_bytes(long long rows, long long n);
template <class T>
void hard_forward(Form form, const T* x, long long rows, long long n, long long k, void* scratch, T* out,
                  cudaStream_t stream);

// J^T v (transpose) or J v at the state [rows] that the soft forward pass on x
// [rows, n] left, with its l and p: each band entry's c_i is recomputed from x
// (band.hpp), as the core's derivatives.cpp does. v, x and out are [rows, n];
// scratch: jacobian_scratch_bytes(rows, n) bytes (long rows' partial sums).
std::size_t jacobian_scratch_bytes(long long rows, long long n);
template <class T>
void jacobian_product(Form form, bool transpose, const T* v, const T* x, const RowState* state, double l,
                      double p, long long rows, long long n, void* scratch, T* out, cudaStream_t stream);

}  // namespace sparsetopk::cuda
