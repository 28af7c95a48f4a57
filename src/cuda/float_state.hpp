#pragma once
// The derivatives' state (ActiveBlocks::to_dense) rounded to float, for
// frameworks that keep it in x's dtype (sparsetopk.jax without x64), on the
// host (src/jax/ffi_handlers.cpp) and on the device (state_to_float):
//   c:              capped at kMaxFloatWeight, so that the row sums of the
//                   tangent rule stay finite in float (the core caps at 1e280);
//   unchanged_from: rounded up to the next float, so that |x_i| >=
//                   unchanged_from classifies float entries exactly as the
//                   core did in double;
//   gamma, W_B:     rounded to nearest (W_B is an integer <= k; gamma is read
//                   for NaN only).

#include <cmath>

#include "../core/host_device.hpp"

namespace sparsetopk::cuda {

constexpr double kMaxFloatWeight = 1e30;

SPARSETOPK_HOST_DEVICE inline float float_weight(double c) {
  return static_cast<float>(c < kMaxFloatWeight ? c : (c == c ? kMaxFloatWeight : c));  // NaN stays NaN
}

// The smallest float >= v (v itself if it is one; NaN and infinities stay).
SPARSETOPK_HOST_DEVICE inline float float_at_least(double v) {
  const float f = static_cast<float>(v);
  if (!(static_cast<double>(f) < v)) return f;
#ifdef __CUDA_ARCH__
  return nextafterf(f, INFINITY);
#else
  return std::nextafter(f, INFINITY);
#endif
}

}  // namespace sparsetopk::cuda
