#pragma once
// The p-norm regularizer seen through its conjugate exponent q = p / (p - 1):
// every formula of SPEC.md uses pow(u, q - 1) and its derivative. Written
// once for a value u of type T: a double (the core, the CUDA kernels) or a
// tensor of them (the ATen path), elementwise (elementwise.hpp).

#include <cmath>

#include "elementwise.hpp"
#include "host_device.hpp"

namespace sparsetopk::detail {

class Regularizer {
 public:
  enum class Kind { quadratic, quartic, general };  // q = 2 (p = 2), q = 4 (p = 4/3), other

  SPARSETOPK_HOST_DEVICE explicit Regularizer(double p) : p_(p) {
    if (p == 2.0) {
      kind_ = Kind::quadratic;
      a_ = 1.0;
    } else if (std::abs(p - 4.0 / 3.0) <= 1e-12) {
      kind_ = Kind::quartic;
      a_ = 3.0;
    } else {
      kind_ = Kind::general;
      a_ = 1.0 / (p - 1.0);
    }
  }

  SPARSETOPK_HOST_DEVICE Kind kind() const { return kind_; }
  SPARSETOPK_HOST_DEVICE double p() const { return p_; }
  SPARSETOPK_HOST_DEVICE double q_minus_1() const { return a_; }

  // pow(u, q - 1)
  template <class T>
  SPARSETOPK_HOST_DEVICE T power(const T& u) const {
    switch (kind_) {
      case Kind::quadratic: return u;
      case Kind::quartic: return u * u * u;
      default: return Elementwise<T>::signed_pow(u, a_);
    }
  }
  // d/du pow(u, q - 1) = (q - 1) |u|^(q - 2), for u != 0
  template <class T>
  SPARSETOPK_HOST_DEVICE T slope(const T& u) const {
    using E = Elementwise<T>;
    switch (kind_) {
      case Kind::quadratic: return E::constant(u, 1.0);
      case Kind::quartic: return 3.0 * u * u;
      default: return a_ * E::pow(E::abs(u), a_ - 1.0);
    }
  }
  // The inverse of power: pow(y, 1 / (q - 1)) = pow(y, p - 1)
  template <class T>
  SPARSETOPK_HOST_DEVICE T inverse_power(const T& y) const {
    switch (kind_) {
      case Kind::quadratic: return y;
      case Kind::quartic: return Elementwise<T>::cbrt(y);
      default: return Elementwise<T>::signed_pow(y, p_ - 1.0);
    }
  }

 private:
  double p_;
  double a_;
  Kind kind_;
};

// The cap on a Jacobian weight c_i (p near 1 makes c span hundreds of orders
// of magnitude; the products stay finite below it).
inline constexpr double kMaxJacobianWeight = 1e280;

// c_i = ((q-1)/l) (u_i/l)^(q-2) of SPEC.md's derivatives, u_over_l = u_i/l.
// Capped so that sums over a block stay finite: for p near 1 (or large p near
// u = 0) c overflows where the Jacobian does not, and the derivatives pivot on
// the largest c, so a capped c acts as an infinitely stiff entry.
template <class T>
SPARSETOPK_HOST_DEVICE T jacobian_weight(const Regularizer& regularizer, const T& u_over_l, double l) {
  return Elementwise<T>::minimum(regularizer.slope(u_over_l) / l, kMaxJacobianWeight);
}

}  // namespace sparsetopk::detail
