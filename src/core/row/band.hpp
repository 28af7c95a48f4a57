#pragma once
// The band of a row as RowState records it (sparsetopk/row_state.hpp): which
// entries it holds and their Jacobian weights c_i, recomputed from the key and
// gamma (SPEC.md, "Derivatives"). Per-entry functions, shared by the CPU core
// (topk.cpp, dykstra.cpp, derivatives.cpp) and the CUDA kernels.

#include <cfloat>
#include <cmath>
#include <cstddef>

#include "host_device.hpp"
#include "regularizer.hpp"
#include "sorted_order.hpp"
#include "sparsetopk/form.hpp"
#include "sparsetopk/row_state.hpp"

namespace sparsetopk::detail {

// Whether the entry (key, index) lies in the band of `state`.
SPARSETOPK_HOST_DEVICE inline bool in_band(const RowState& state, double key, std::size_t index) {
  const double i = static_cast<double>(index);
  return !sorted_before(key, i, state.first_key, state.first_index) &&
         !sorted_before(state.last_key, state.last_index, key, i);
}

// Keys within this distance of gamma are "near" it: a double gamma does not
// resolve their u_i = s_i - gamma (band_solve.hpp, NearThreshold). The ATen
// path uses the same rule (kNearRelative).
inline constexpr double kNearRelative = 1e-6;
SPARSETOPK_HOST_DEVICE inline double near_tolerance(double gamma) {
  return kNearRelative * std::fabs(gamma) + DBL_MIN;
}

// u_i = s_i - gamma of a band entry with key s_i, as the forward pass had it
// (in offset form near gamma, where it solved those entries again).
SPARSETOPK_HOST_DEVICE inline double band_offset(const RowState& state, double key) {
  if (key == state.tied_key) return state.tied_u;
  if (state.near_key != HUGE_VAL && std::fabs(key - state.gamma) <= near_tolerance(state.gamma))
    return (key - state.near_key) + state.near_offset;
  return key - state.gamma;
}

// c_i of a band entry with key s_i: ((q-1)/l) (u_i/l)^(q-2) (for the
// magnitude u_i >= 0), capped as the forward pass caps it.
SPARSETOPK_HOST_DEVICE inline double band_weight(const Regularizer& regularizer, double l, Form form,
                                                 const RowState& state, double key) {
  const double u = band_offset(state, key);
  return jacobian_weight(regularizer, (form == Form::magnitude ? std::fmax(u, 0.0) : u) / l, l);
}

// The first and last entries of a band, from its entries in any order.
struct BandBounds {
  bool empty = true;
  double first_key = 0.0, first_index = 0.0, last_key = 0.0, last_index = 0.0;

  SPARSETOPK_HOST_DEVICE void add(double key, std::size_t index) {
    const double i = static_cast<double>(index);
    if (empty || sorted_before(key, i, first_key, first_index)) first_key = key, first_index = i;
    if (empty || sorted_before(last_key, last_index, key, i)) last_key = key, last_index = i;
    empty = false;
  }
  SPARSETOPK_HOST_DEVICE void write(RowState& state) const {
    if (empty) {
      const RowState none{};
      state.first_key = none.first_key, state.first_index = none.first_index;
      state.last_key = none.last_key, state.last_index = none.last_index;
      return;
    }
    state.first_key = first_key, state.first_index = first_index;
    state.last_key = last_key, state.last_index = last_index;
  }
};

}  // namespace sparsetopk::detail
