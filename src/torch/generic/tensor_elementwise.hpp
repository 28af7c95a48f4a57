#pragma once
// The elementwise functions of src/core/row/elementwise.hpp for at::Tensor,
// so that the per-row formulas written once over a value type (the
// regularizer, the closed forms, the root finder's step) run on a batch of
// values in the ATen path. Every function works on meta tensors too.

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

#include "elementwise.hpp"

namespace sparsetopk::torch::generic {

// ---- ATen ops without a C++ Meta kernel ----
// at::where, abs, isnan and isfinite have their Meta implementations in Python
// only (torch._meta_registrations). On meta tensors these wrappers give the
// result's shape and dtype, so that every other step runs there as it is.

inline at::Tensor select(const at::Tensor& condition, const at::Tensor& a, const at::Tensor& b) {
  if (!condition.is_meta()) return at::where(condition, a, b);
  return at::empty(at::infer_size(at::infer_size(condition.sizes(), a.sizes()), b.sizes()),
                   a.options().dtype(at::result_type(a, b)));
}
inline at::Tensor select(const at::Tensor& condition, const at::Tensor& a, const at::Scalar& b) {
  if (!condition.is_meta()) return at::where(condition, a, b);
  return at::empty(at::infer_size(condition.sizes(), a.sizes()), a.options().dtype(at::result_type(a, b)));
}
inline at::Tensor select(const at::Tensor& condition, const at::Scalar& a, const at::Tensor& b) {
  if (!condition.is_meta()) return at::where(condition, a, b);
  return at::empty(at::infer_size(condition.sizes(), b.sizes()), b.options().dtype(at::result_type(a, b)));
}
inline at::Tensor magnitude_of(const at::Tensor& t) { return t.is_meta() ? at::empty_like(t) : at::abs(t); }
inline at::Tensor is_nan(const at::Tensor& t) {
  return t.is_meta() ? at::empty_like(t, t.options().dtype(at::kBool)) : at::isnan(t);
}
inline at::Tensor is_finite(const at::Tensor& t) {
  return t.is_meta() ? at::empty_like(t, t.options().dtype(at::kBool)) : at::isfinite(t);
}

// y^(1/3) for y >= 0, to the last ulp or so: pow(y, 1/3) then one Newton
// step (not at 0 and infinity, where pow is exact).
inline at::Tensor cube_root(const at::Tensor& y) {
  const at::Tensor c = at::pow(y, 1.0 / 3.0);
  return select((c > 0) & (c < std::numeric_limits<double>::infinity()), c - (c - y / (c * c)) / 3.0, c);
}

}  // namespace sparsetopk::torch::generic

namespace sparsetopk::detail {

template <>
struct Elementwise<at::Tensor> {
  using Tensor = at::Tensor;

  static Tensor select(const Tensor& c, const Tensor& a, const Tensor& b) { return torch::generic::select(c, a, b); }
  static Tensor select(const Tensor& c, const Tensor& a, double b) { return torch::generic::select(c, a, b); }
  static Tensor select(const Tensor& c, double a, const Tensor& b) { return torch::generic::select(c, a, b); }
  template <class Then, class Otherwise>
  static Tensor branch(const Tensor& c, Then&& then, Otherwise&& otherwise) {
    return torch::generic::select(c, then(), otherwise());
  }
  static Tensor constant(const Tensor& u, double value) { return at::full_like(u, value); }
  static Tensor abs(const Tensor& u) { return torch::generic::magnitude_of(u); }
  static Tensor minimum(const Tensor& a, const Tensor& b) { return at::minimum(a, b); }
  static Tensor minimum(const Tensor& a, double b) { return a.clamp_max(b); }
  static Tensor maximum(const Tensor& a, const Tensor& b) { return at::maximum(a, b); }
  static Tensor maximum(const Tensor& a, double b) { return a.clamp_min(b); }
  static Tensor clamp(const Tensor& v, const Tensor& lo, const Tensor& hi) { return at::minimum(at::maximum(v, lo), hi); }
  static Tensor sqrt(const Tensor& u) { return at::sqrt(u); }
  static Tensor cbrt(const Tensor& u) { return at::copysign(torch::generic::cube_root(abs(u)), u); }
  static Tensor pow(const Tensor& u, double a) { return at::pow(u, a); }
  static Tensor signed_pow(const Tensor& u, double a) { return at::copysign(at::pow(abs(u), a), u); }
  static Tensor hypot(const Tensor& a, const Tensor& b) { return at::hypot(a, b); }
  static Tensor copysign(const Tensor& a, const Tensor& b) { return at::copysign(a, b); }
  static Tensor next_up(const Tensor& u) { return at::nextafter(u, at::full_like(u, std::numeric_limits<double>::infinity())); }
  static Tensor is_finite(const Tensor& u) { return torch::generic::is_finite(u); }
  // x >= 0 (float64): its bits as an integer (nonnegative: the sign bit is
  // clear), divided by 3, plus bias, read back as doubles
  static Tensor bits_over_3_plus(const Tensor& x, std::uint64_t bias) {
    const Tensor bits = x.contiguous().view(at::kLong);
    return (at::div(bits, 3, "floor") + static_cast<int64_t>(bias)).view(at::kDouble);
  }
};

}  // namespace sparsetopk::detail
