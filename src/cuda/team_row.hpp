#pragma once
// A team's row (team.hpp): where the entries of the row a team works on live,
// and the two ways its threads visit them. team_rows.hpp's row functions are
// written over either kind:
//   - MemoryRow: the row in memory (x itself, or its copy in shared memory),
//     thread `rank` taking columns rank, rank + size, ...;
//   - RegisterRow: a warp's row of up to kWarpRowSize entries held in
//     registers, lane j holding columns j, j + 32, ... (the same columns as
//     MemoryRow's for a warp), read from x once, coalesced.
// Both give:
//   for_each(f)       f(i, x_i) for each of this thread's entries;
//   for_each_tile(f)  f(i, inside, x_i) for each tile of team-size consecutive
//                     columns, in column order, on every thread of the team
//                     (inside: i < n), so f may call the team's collectives;
//   data()            the row in memory, for what one thread reads at random
//                     (the band solver on the window's columns).
// UNVERIFIED on a GPU (docs/gpu.md); run on the CPU harness.

#include "dialect.hpp"
#include "team.hpp"
#include "topk_kernels.hpp"

namespace sparsetopk::cuda {

template <class T, class Team>
class MemoryRow {
 public:
  __device__ MemoryRow(const Team& team, const T* data, long long n)
      : team_(team), data_(data), n_(n) {}
  __device__ long long size() const { return n_; }
  __device__ const T* data() const { return data_; }
  template <class F>
  __device__ void for_each(F&& f) const {
    for (long long i = team_.rank(); i < n_; i += team_.size()) f(i, data_[i]);
  }
  template <class F>
  __device__ void for_each_tile(F&& f) const {
    for (long long base = 0; base < n_; base += team_.size()) {
      const long long i = base + team_.rank();
      f(i, i < n_, i < n_ ? data_[i] : T(0));
    }
  }

 private:
  const Team& team_;
  const T* data_;
  long long n_;
};

template <class T>
class RegisterRow {
 public:
  static constexpr int kSlots = static_cast<int>(kWarpRowSize / kWarpSize);
  // (every lane of the warp, n <= kWarpRowSize)
  __device__ RegisterRow(const WarpTeam& team, const T* data, long long n)
      : data_(data), n_(n), lane_(team.rank()) {
    SPARSETOPK_UNROLL
    for (int s = 0; s < kSlots; ++s) {
      const long long i = column(s);
      values_[s] = i < n ? data[i] : T(0);
    }
  }
  __device__ long long size() const { return n_; }
  __device__ const T* data() const { return data_; }
  template <class F>
  __device__ void for_each(F&& f) const {
    SPARSETOPK_UNROLL
    for (int s = 0; s < kSlots; ++s) {
      if (tile_start(s) >= n_) break;
      const long long i = column(s);
      if (i < n_) f(i, values_[s]);
    }
  }
  template <class F>
  __device__ void for_each_tile(F&& f) const {
    SPARSETOPK_UNROLL
    for (int s = 0; s < kSlots; ++s) {
      if (tile_start(s) >= n_) break;
      const long long i = column(s);
      f(i, i < n_, values_[s]);
    }
  }

 private:
  __device__ static long long tile_start(int s) { return static_cast<long long>(s) * kWarpSize; }
  __device__ long long column(int s) const { return tile_start(s) + lane_; }

  T values_[kSlots];
  const T* data_;
  long long n_;
  unsigned lane_;
};

}  // namespace sparsetopk::cuda
