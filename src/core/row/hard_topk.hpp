#pragma once
// The hard operators' rule (SPEC.md, "Hard operators"), entry by entry:
// hard_topk_mask(x, k)_i = 1 exactly where (key_i, i) is among the first k
// entries of the row's sorted order (sorted_order.hpp), so ties go to the
// lower column and exactly k entries are kept; hard_topk_mag keeps x_i there.
// A row holding a NaN is NaN everywhere. Shared by the CPU loop (topk.cpp)
// and the CUDA kernels (topk_kernels.cu), which find the k-th entry their own
// way (selection, radix passes) and then keep entries by this rule.

#include <cmath>
#include <cstddef>
#include <limits>

#include "host_device.hpp"
#include "sorted_order.hpp"
#include "sparsetopk/form.hpp"

namespace sparsetopk::detail {

// Whether entry (key_i, i) is kept, given the row's k-th entry in sorted
// order (1 <= k <= n): it is, or it comes before it.
SPARSETOPK_HOST_DEVICE inline bool hard_kept(double key, std::size_t index, const SortedEntry& kth) {
  return !sorted_before(kth.key, kth.index, key, index);
}

// Whether x_i makes its row's output NaN (only a NaN does; +-inf are keys).
template <class T>
SPARSETOPK_HOST_DEVICE bool hard_poisons_row(T x) {
  return std::isnan(x);
}

// out_i of a row without NaN: 1 (mask) or x_i (magnitude) where kept, else 0.
template <class T>
SPARSETOPK_HOST_DEVICE T hard_value(Form form, T x, bool kept) {
  return kept ? (form == Form::magnitude ? x : T(1)) : T(0);
}

// out_i of a row holding a NaN.
template <class T>
SPARSETOPK_HOST_DEVICE constexpr T hard_nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

}  // namespace sparsetopk::detail
