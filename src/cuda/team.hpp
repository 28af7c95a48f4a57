#pragma once
// A team: the threads that own one row. Every kernel of topk_kernels_impl.hpp is
// written once over a team, and runs with
//   - WarpTeam: one warp (32 lanes) per row, for rows up to kWarpRowSize entries;
//   - BlockTeam: one block per row, for longer rows.
// The operations are collective: every thread of the team calls them, in the
// same order, and gets the same result. They use only what the CPU harness
// (harness/cuda_on_cpu.hpp) runs: barriers, warp shuffles and ballots, shared
// memory, atomics.

#include <cstring>

#include "dialect.hpp"

namespace sparsetopk::cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned kWarpSize = 32;

// v of the lane whose id is this lane's xor `offset`, for any trivially
// copyable value of a multiple of 4 bytes (moved as 32-bit words).
template <class V>
__device__ V shuffle_xor(V v, int offset) {
  static_assert(sizeof(V) % 4 == 0, "shuffled values are whole 32-bit words");
  unsigned words[sizeof(V) / 4];
  memcpy(words, &v, sizeof(V));
  for (unsigned& word : words) word = __shfl_xor_sync(kFullMask, word, offset);
  memcpy(&v, words, sizeof(V));
  return v;
}

// op over the warp's 32 values, by butterfly: every lane gets op's result
// (the same on each lane, for a commutative op).
template <class V, class Op>
__device__ V warp_all_reduce(V v, Op op) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = op(v, shuffle_xor(v, offset));
  return v;
}

struct Sum {
  template <class V>
  __device__ V operator()(V a, V b) const { return a + b; }
};
struct Max {
  template <class V>
  __device__ V operator()(V a, V b) const { return a > b ? a : b; }
};
struct Min {
  template <class V>
  __device__ V operator()(V a, V b) const { return a < b ? a : b; }
};

// The most values one sum_each call adds up (the band by reductions: 2 Bins + 1).
constexpr unsigned kMaxSummed = 65;

// (its rows are in registers, team_row.hpp: it needs no shared memory)
class WarpTeam {
 public:
  __device__ unsigned rank() const { return threadIdx.x % kWarpSize; }
  __device__ unsigned size() const { return kWarpSize; }
  __device__ void sync() const { __syncwarp(kFullMask); }
  template <class V, class Op>
  __device__ V all_reduce(V v, Op op) const { return warp_all_reduce(v, op); }
  // Each of values[0, count) summed over the team, the same sum on every lane.
  __device__ void sum_each(double* values, unsigned count) const {
    for (unsigned j = 0; j < count; ++j) values[j] = warp_all_reduce(values[j], Sum{});
  }
  __device__ bool any(bool flag) const { return __any_sync(kFullMask, flag); }
  // How many threads of lower rank hold a true flag, and (total) how many in all.
  __device__ unsigned exclusive_count(bool flag, unsigned& total) const {
    const unsigned votes = __ballot_sync(kFullMask, flag);
    total = static_cast<unsigned>(__popc(votes));
    return static_cast<unsigned>(__popc(votes & ((1u << rank()) - 1u)));
  }
};

// A whole block (blockDim.x a multiple of 32, at most 1024).
class BlockTeam {
 public:
  // counts: the block's 256 radix counters in shared memory
  __device__ explicit BlockTeam(unsigned* counts) : counts_(counts) {}
  __device__ unsigned rank() const { return threadIdx.x; }
  __device__ unsigned size() const { return blockDim.x; }
  __device__ void sync() const { __syncthreads(); }
  __device__ unsigned* counts() const { return counts_; }

  // Each warp's result, then the warps' results in warp order (the same
  // order on every thread): the same value everywhere.
  template <class V, class Op>
  __device__ V all_reduce(V v, Op op) const {
    __shared__ V partial[kWarpSize];
    v = warp_all_reduce(v, op);
    if (threadIdx.x % kWarpSize == 0) partial[threadIdx.x / kWarpSize] = v;
    __syncthreads();
    V total = partial[0];
    for (unsigned w = 1; w < blockDim.x / kWarpSize; ++w) total = op(total, partial[w]);
    __syncthreads();  // (partial is reused by the next call)
    return total;
  }
  // Each of values[0, count <= kMaxSummed) summed over the block: per warp by
  // shuffles, then the warps' sums in warp order, one value per thread.
  __device__ void sum_each(double* values, unsigned count) const {
    __shared__ double partial[kWarpSize][kMaxSummed];
    __shared__ double total[kMaxSummed];
    const unsigned lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
    for (unsigned j = 0; j < count; ++j) {
      const double sum = warp_all_reduce(values[j], Sum{});
      if (lane == 0) partial[warp][j] = sum;
    }
    __syncthreads();
    for (unsigned j = threadIdx.x; j < count; j += blockDim.x) {
      double sum = partial[0][j];
      for (unsigned w = 1; w < blockDim.x / kWarpSize; ++w) sum += partial[w][j];
      total[j] = sum;
    }
    __syncthreads();
    for (unsigned j = 0; j < count; ++j) values[j] = total[j];
    __syncthreads();  // (partial and total are reused by the next call)
  }
  __device__ bool any(bool flag) const { return __syncthreads_or(flag) != 0; }
  __device__ unsigned exclusive_count(bool flag, unsigned& total) const {
    __shared__ unsigned warp_counts[kWarpSize];
    const unsigned lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
    const unsigned votes = __ballot_sync(kFullMask, flag);
    if (lane == 0) warp_counts[warp] = static_cast<unsigned>(__popc(votes));
    __syncthreads();
    unsigned before = static_cast<unsigned>(__popc(votes & ((1u << lane) - 1u)));
    total = 0;
    for (unsigned w = 0; w < blockDim.x / kWarpSize; ++w) {
      if (w < warp) before += warp_counts[w];
      total += warp_counts[w];
    }
    __syncthreads();
    return before;
  }

 private:
  unsigned* counts_;
};

}  // namespace sparsetopk::cuda
