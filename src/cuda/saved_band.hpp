#pragma once
// The per-entry pieces of the CUDA kernels' derivatives (jacobian_kernel in
// topk_kernels.cu), written once for both sides so that the CPU runs them
// (tests/core/test_cuda_pipeline.cpp) against the core's derivatives.cpp:
// which entries of a row lie in the band its RowState records and their c_i,
// recomputed from x (band.hpp); the pivot d; and each entry of J v or J^T v
// (SPEC.md, "Derivatives"; jacobian.hpp). UNVERIFIED on a GPU (docs/gpu.md).
//
// The per-row functions come by name from src/core/row (the sparsetopk_row target).

#include <cmath>
#include <cstddef>
#include <limits>

#include "band.hpp"
#include "host_device.hpp"
#include "jacobian.hpp"
#include "regularizer.hpp"
#include "sorted_order.hpp"
#include "sparsetopk/form.hpp"
#include "sparsetopk/row_state.hpp"

namespace sparsetopk::cuda {

// The band of a row at its saved state, entry by entry, as the core's
// recompute_band (derivatives.cpp) finds it: the key is x_i (mask) or |x_i|
// (magnitude), in double.
class SavedBand {
 public:
  SPARSETOPK_HOST_DEVICE SavedBand(const RowState& state, const detail::Regularizer& regularizer, double l,
                                   Form form)
      : state_(state), regularizer_(regularizer), l_(l), form_(form),
        any_(state.first_key != -std::numeric_limits<double>::infinity()) {}

  // c_i of entry i (>= 0; 0 where it underflowed), or -1 outside the band.
  SPARSETOPK_HOST_DEVICE double weight(double x_i, std::size_t i) const {
    const double key = detail::sort_key(form_, x_i);
    if (!any_ || !detail::in_band(state_, key, i)) return -1.0;
    return detail::band_weight(regularizer_, l_, form_, state_, key);
  }

 private:
  RowState state_;
  detail::Regularizer regularizer_;
  double l_;
  Form form_;
  bool any_;
};

// The pivot d of a band (the entry with the largest c, the first in column
// order of equal ones, as derivatives.cpp picks it), with sum(c) and the
// band's size m.
struct Pivot {
  double c;
  long long index;
  double sum;
  long long count;
};

// No entry yet (n: an index after every column).
SPARSETOPK_HOST_DEVICE inline Pivot no_pivot(long long n) {
  return {-std::numeric_limits<double>::infinity(), n, 0.0, 0};
}
SPARSETOPK_HOST_DEVICE inline Pivot entry_pivot(double c, long long index) { return {c, index, c, 1}; }

struct MergePivots {
  SPARSETOPK_HOST_DEVICE Pivot operator()(const Pivot& a, const Pivot& b) const {
    const bool first = a.c > b.c || (a.c == b.c && a.index < b.index);
    return {first ? a.c : b.c, first ? a.index : b.index, a.sum + b.sum, a.count + b.count};
  }
};

// t_i = sign(x_i) v_i (magnitude), v_i (mask).
SPARSETOPK_HOST_DEVICE inline double tangent(Form form, double x_i, double v_i) {
  return form == Form::magnitude ? detail::sign(x_i) * v_i : v_i;
}

// A band entry's term of spread = sum_j f_j (t_j - t_d), f_j = 1 + c_j (magnitude, J^T) or c_j.
SPARSETOPK_HOST_DEVICE inline double spread_term(Form form, bool transpose, double c_j, double t_j, double t_d) {
  return (form == Form::magnitude && transpose ? 1.0 + c_j : c_j) * (t_j - t_d);
}

// Entry i of J v or J^T v, given its c_i (-1 outside the band), x_i and v_i,
// and the row's pivot, t_d and spread. Outside the band: 0 (mask); v_i for a
// magnitude entry returned unchanged, else 0.
SPARSETOPK_HOST_DEVICE inline double product_entry(Form form, bool transpose, const RowState& state,
                                                   const Pivot& pivot, double t_d, double spread, double c_i,
                                                   double x_i, double v_i) {
  if (form == Form::mask)
    return c_i >= 0.0 && pivot.sum > 0.0 ? detail::mask_product(c_i, v_i, t_d, pivot.sum, spread) : 0.0;
  if (c_i < 0.0) return x_i != 0.0 && std::abs(x_i) >= state.unchanged_from ? v_i : 0.0;
  const double m = static_cast<double>(pivot.count), denominator = state.block_weight + pivot.sum;
  const double rest = detail::magnitude_rest(transpose, state.block_weight, m, t_d, spread);
  return detail::sign(x_i) *
         detail::magnitude_product(transpose, c_i, tangent(Form::magnitude, x_i, v_i), t_d, denominator, rest);
}

}  // namespace sparsetopk::cuda
