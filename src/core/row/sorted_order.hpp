#pragma once
// A row's sorted order (SPEC.md, step 1 and "Hard operators"): key
// descending, ties by the lower column first. Keys are x_i (mask) or |x_i|
// (magnitude), in double; -0 and +0 are the same key. Every operator and every
// path (the CPU loops, the CUDA kernels, RowState's band bounds) orders a row
// this way.

#include <cmath>
#include <cstddef>

#include "host_device.hpp"
#include "sparsetopk/form.hpp"

namespace sparsetopk::detail {

// key_i: x_i (mask) or |x_i| (magnitude).
template <class T>
SPARSETOPK_HOST_DEVICE T sort_key(Form form, T x) {
  return form == Form::magnitude ? std::abs(x) : x;
}

// Whether (key_a, a) comes before (key_b, b) in sorted order. Columns are
// std::size_t, or double where RowState stores them (exact below 2^53).
template <class Index>
SPARSETOPK_HOST_DEVICE bool sorted_before(double key_a, Index a, double key_b, Index b) {
  return key_a > key_b || (key_a == key_b && a < b);
}

// One entry of a row: its key and its column.
struct SortedEntry {
  double key;         // x_i for the mask, |x_i| for the magnitude
  std::size_t index;  // i
};

// The order as a function object over entries (so that std::sort and
// std::nth_element inline it).
struct Descending {
  SPARSETOPK_HOST_DEVICE bool operator()(const SortedEntry& a, const SortedEntry& b) const {
    return sorted_before(a.key, a.index, b.key, b.index);
  }
};
inline constexpr Descending descending;

}  // namespace sparsetopk::detail
