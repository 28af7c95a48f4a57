#pragma once
// The elementwise functions that the formulas written once for a value type T
// call (the regularizer, the closed forms, a root-finding step): T = double
// here, for one row at a time, and T = at::Tensor in the ATen path
// (src/torch/generic/tensor_elementwise.hpp), for a batch of values at once.
// A template names them as Elementwise<T>::f: a traits class rather than free
// functions found by overload, because an unqualified call in a template sees
// at its definition only the overloads declared before it (and ADL on a
// Tensor looks in namespace at only), while a specialization declared later,
// in the torch layer, is found wherever the template is used. The core never
// sees torch.
//
// Conditions are the comparisons' own type (bool here, a bool tensor there),
// combined with & and |. select(c, a, b) is `c ? a : b` elementwise, both
// sides computed; branch(c, then, otherwise) calls only the side taken for
// one value, both (then selects) for a batch: for a side that is costly or
// only valid where it is taken.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "host_device.hpp"

namespace sparsetopk::detail {

template <class T>
struct Elementwise;  // specialized per value type

// Sign-preserving power pow(u, a) = sign(u) |u|^a of SPEC.md.
SPARSETOPK_HOST_DEVICE inline double signed_pow(double u, double a) {
  return u >= 0.0 ? std::pow(u, a) : -std::pow(-u, a);
}

template <>
struct Elementwise<double> {
  SPARSETOPK_HOST_DEVICE static double select(bool c, double a, double b) { return c ? a : b; }
  template <class Then, class Otherwise>
  SPARSETOPK_HOST_DEVICE static double branch(bool c, Then&& then, Otherwise&& otherwise) {
    return c ? then() : otherwise();
  }
  // `value`, in the shape of u (for a double: the value itself)
  SPARSETOPK_HOST_DEVICE static double constant(double, double value) { return value; }
  SPARSETOPK_HOST_DEVICE static double abs(double u) { return std::abs(u); }
  SPARSETOPK_HOST_DEVICE static double minimum(double a, double b) { return std::min(a, b); }
  SPARSETOPK_HOST_DEVICE static double maximum(double a, double b) { return std::max(a, b); }
  SPARSETOPK_HOST_DEVICE static double clamp(double v, double lo, double hi) { return std::clamp(v, lo, hi); }
  SPARSETOPK_HOST_DEVICE static double sqrt(double u) { return std::sqrt(u); }
  SPARSETOPK_HOST_DEVICE static double cbrt(double u) { return std::cbrt(u); }
  SPARSETOPK_HOST_DEVICE static double pow(double u, double a) { return std::pow(u, a); }
  SPARSETOPK_HOST_DEVICE static double signed_pow(double u, double a) { return detail::signed_pow(u, a); }
  SPARSETOPK_HOST_DEVICE static double hypot(double a, double b) { return std::hypot(a, b); }
  SPARSETOPK_HOST_DEVICE static double copysign(double a, double b) { return std::copysign(a, b); }
  // the next double above u
  SPARSETOPK_HOST_DEVICE static double next_up(double u) {
    return std::nextafter(u, std::numeric_limits<double>::infinity());
  }
  SPARSETOPK_HOST_DEVICE static bool is_finite(double u) { return std::isfinite(u); }
  // The bits of x >= 0 read as an unsigned integer, divided by 3, plus `bias`,
  // read back as a double (the seed of cbrt_seed, block_equation.hpp).
  SPARSETOPK_HOST_DEVICE static double bits_over_3_plus(double x, std::uint64_t bias) {
    return std::bit_cast<double>(std::bit_cast<std::uint64_t>(x) / 3 + bias);
  }
};

}  // namespace sparsetopk::detail
