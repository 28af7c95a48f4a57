#pragma once
// The p-norm regularizer seen through its conjugate exponent q = p / (p - 1):
// every formula of SPEC.md uses pow(u, q - 1) and its derivative.

#include <cmath>

namespace sparsetopk::detail {

// Sign-preserving power pow(u, a) = sign(u) |u|^a of SPEC.md.
inline double signed_pow(double u, double a) {
  return u >= 0.0 ? std::pow(u, a) : -std::pow(-u, a);
}

class Regularizer {
 public:
  enum class Kind { quadratic, quartic, general };  // q = 2 (p = 2), q = 4 (p = 4/3), other

  explicit Regularizer(double p) : p_(p) {
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

  Kind kind() const { return kind_; }
  double p() const { return p_; }
  double q_minus_1() const { return a_; }

  // pow(u, q - 1)
  double power(double u) const {
    switch (kind_) {
      case Kind::quadratic: return u;
      case Kind::quartic: return u * u * u;
      default: return signed_pow(u, a_);
    }
  }
  // d/du pow(u, q - 1) = (q - 1) |u|^(q - 2), for u != 0
  double slope(double u) const {
    switch (kind_) {
      case Kind::quadratic: return 1.0;
      case Kind::quartic: return 3.0 * u * u;
      default: return a_ * std::pow(std::abs(u), a_ - 1.0);
    }
  }
  // The inverse of power: pow(y, 1 / (q - 1)) = pow(y, p - 1)
  double inverse_power(double y) const {
    switch (kind_) {
      case Kind::quadratic: return y;
      case Kind::quartic: return std::cbrt(y);
      default: return signed_pow(y, p_ - 1.0);
    }
  }

 private:
  double p_;
  double a_;
  Kind kind_;
};

}  // namespace sparsetopk::detail
