#pragma once
// Steps of a row's solve that the row operators (topk.cpp, derivatives.cpp)
// and the global operators over many parts (global.cpp) share: the finiteness
// test, what a solved row records in its RowState, and the magnitude's
// "returned unchanged" bound in the input's type.

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>

#include "band.hpp"
#include "band_solve.hpp"
#include "sparsetopk/row_state.hpp"

namespace sparsetopk::detail {

// Whether no entry is NaN or +-inf (all exponent bits set): adding one unit of
// the exponent field to the exponent bits carries into the sign bit exactly
// then. Integer operations and no early exit, so it vectorizes.
template <class T>
bool all_finite(std::span<const T> row) {
  using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  constexpr int kMantissaBits = std::numeric_limits<T>::digits - 1;
  constexpr Bits kExponent = ((Bits{1} << (sizeof(T) * 8 - 1)) - 1) & ~((Bits{1} << kMantissaBits) - 1);
  constexpr Bits kExponentUnit = Bits{1} << kMantissaBits, kSign = Bits{1} << (sizeof(T) * 8 - 1);
  Bits carries = 0;
  for (T v : row) carries |= (std::bit_cast<Bits>(v) & kExponent) + kExponentUnit;
  return (carries & kSign) == 0;
}

// Records the state of a solved window for the derivatives: gamma, W_B,
// unchanged_from, and the band (the entries given a c_i). `s` holds the
// window's sorted keys; `near` the near entries' offsets the band solver recorded.
inline void save_row(RowState* state, const StraddlingBlock& block, const RowWindow& window, const double* s,
                     const BandBounds& band, const RowState& near) {
  if (!state) return;
  const BandState solved = band_state(block, window, s);
  *state = near;
  state->gamma = solved.gamma;
  state->block_weight = solved.block_weight;
  state->unchanged_from = solved.unchanged_from;
  band.write(*state);
}

// The same for a row of singleton blocks only (a separated window): what
// band_state gives for the empty block {top, top, s_{k+1}}.
inline void save_separated_row(RowState* state, const RowWindow& window) {
  if (state) *state = RowState{.gamma = window.below, .block_weight = 0.0, .unchanged_from = window.above};
}

// The least T at or above v (v itself for double; for float, v rounded up).
template <class T>
T least_at_or_above(double v) {
  T t = static_cast<T>(v);
  if (static_cast<double>(t) < v) t = std::nextafter(t, std::numeric_limits<T>::infinity());
  return t;
}

}  // namespace sparsetopk::detail
