#pragma once
// The hand-written CUDA kernels (UNVERIFIED: compiled and linked, never run on
// a GPU; opt-in only, see docs/gpu.md). Plain C++ interface, no torch: the
// callers (the torch adapter src/torch/cuda/cuda_kernel.cpp, the JAX adapter
// src/jax/cuda_handlers.cpp) own every buffer, pass device pointers and the
// stream, and nothing here allocates or synchronizes with the host.
//
// Rows are [rows, n] contiguous, float or double (half types are converted to
// float by the caller). Per row:
//   1. select the k-th largest key (x for the mask, |x| for the magnitude) by
//      radix passes over its order-preserving bits, grid-wide (several blocks
//      per row for long rows, one for short ones), then the (k+1)-th;
//   2. soft ops: the core's window bounds around them (band_solve.hpp); the
//      entries inside go to a per-row buffer, the others get their output;
//      the windows are sorted (CUB segmented sort) and one thread per row runs
//      the core's band solver (solve_mask_band / solve_mag_band) on its window
//      and records the row's RowState as the core's topk.cpp does;
//   3. hard ops: the column of the k-th entry in sorted order (the
//      remaining-th key equal to s_k, by a block scan), then each entry kept
//      or not by the core's rule (hard_topk.hpp).
// Derivatives: one block per row at the saved RowState, the band's c_i
// recomputed from x (band.hpp), SPEC.md's pivoted block Jacobian (jacobian.hpp).

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include <sparsetopk/form.hpp>
#include <sparsetopk/row_state.hpp>

namespace sparsetopk::cuda {

// Per-row selection state, each array [rows] (histogram [rows, 256]); `prefix`
// and `next` hold keys' order-preserving bits, 4 bytes (float) or 8 (double).
struct Selection {
  void* prefix;                   // the k-th key's bits, built digit by digit
  void* next;                     // the (k+1)-th key's bits
  long long* remaining;           // the k-th key's rank among the keys equal to it (1-based)
  long long* ties;                // how many keys equal the k-th
  unsigned long long* histogram;  // the current radix digit's counts
  int* flags;                     // 1: the row holds a NaN (hard) or a non-finite value (soft)
};

// Scratch of the soft forward pass: per row [rows] (begin, end: [rows] int64
// offsets into the [rows, n] buffers), per entry [rows * n].
struct Window {
  double* above;            // keys >= above: among the k largest, outside the window
  double* below;            // keys <= below: zero, outside the window
  long long* count_above;
  long long* size;          // entries in the window
  long long* begin;         // r * n
  long long* end;           // r * n + size
  double* keys;             // gathered window keys, then sorted into keys_sorted
  long long* index;         // their columns, sorted into index_sorted
  double* keys_sorted;
  long long* index_sorted;
  void* blocks;             // PAV's stack: rows * n PavBlocks (general p too: its near-ties go to PAV)
};

// Bytes of one PavBlock (the PAV stack entry), for sizing Window::blocks.
std::size_t pav_block_bytes();
// Bytes of CUB scratch the segmented sort of rows * n entries needs.
std::size_t sort_scratch_bytes(long long rows, long long n);

// Fills the selection of the k-th and (k+1)-th keys (needs 0 < k < n) and the row flags.
template <class T>
void select_keys(Form form, bool soft, const T* x, long long rows, long long n, long long k,
                 const Selection& selection, cudaStream_t stream);

// Only the row flags (k = 0 or k = n: no selection).
template <class T>
void flag_rows(bool soft, const T* x, long long rows, long long n, int* flags, cudaStream_t stream);

// The scratch of the hard operators (one buffer, as SoftScratch below).
struct HardScratch {
  Selection selection;
  long long* tie_counts;  // [rows * blocks_per_row(n)]
  long long* kth_index;   // [rows]: the column of each row's k-th entry in sorted order
};
long long blocks_per_row(long long n);

// hard_topk_mask / hard_topk_mag of SPEC.md; `scratch.selection` as
// select_keys left it (or only its flags, for k = 0 and k = n).
template <class T>
void hard_forward(Form form, const T* x, long long rows, long long n, long long k, const HardScratch& scratch,
                  T* out, cudaStream_t stream);

// soft_topk_mask / soft_topk_mag of SPEC.md, and with state != nullptr each
// row's RowState [rows] as the core's soft_topk_* writes it (topk.cpp): gamma,
// W_B and unchanged_from of band_state(), the band's first and last entries;
// a row holding a non-finite value: gamma = unchanged_from = NaN; rows of
// n = 0 entries: gamma = -inf, unchanged_from = +inf, no band (as the torch
// CPU kernels write them). `selection` as select_keys or flag_rows left it.
template <class T>
void soft_forward(Form form, const T* x, long long rows, long long n, long long k, double l, double p,
                  const Selection& selection, const Window& window, void* sort_scratch, std::size_t sort_bytes,
                  T* out, RowState* state, cudaStream_t stream);

// The scratch of one soft call carved from a single device buffer of
// *_scratch_bytes(...) bytes (256-byte aligned, as every CUDA allocator gives),
// so that each adapter makes one allocation from its framework's allocator.
struct SoftScratch {
  Selection selection;
  Window window;
  void* sort;
  std::size_t sort_bytes;
};
std::size_t soft_scratch_bytes(long long rows, long long n);
SoftScratch soft_scratch(void* base, long long rows, long long n);
std::size_t hard_scratch_bytes(long long rows, long long n);
HardScratch hard_scratch(void* base, long long rows, long long n);

// J^T v (transpose) or J v at the state [rows] that the soft forward pass on x
// [rows, n] left, with its l and p: each band entry's c_i is recomputed from x
// (band.hpp), as the core's derivatives.cpp does. v, x and out are [rows, n].
template <class T>
void jacobian_product(Form form, bool transpose, const T* v, const T* x, const RowState* state, double l,
                      double p, long long rows, long long n, T* out, cudaStream_t stream);

}  // namespace sparsetopk::cuda
