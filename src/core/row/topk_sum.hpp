#pragma once
// The value behind the soft mask, per row (SPEC.md, "Smoothed top-k sum" and
// "Top-k loss"): f(y) = <y, x> - (l/p) sum_i y_i^p at the mask y = m, and the
// loss as a difference of two such values.

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "host_device.hpp"

namespace sparsetopk::detail {

// y^p for y in [0, 1]: exact at the mask's usual values 0 and 1.
SPARSETOPK_HOST_DEVICE inline double mask_power(double y, double p) {
  return y == 0.0 || y == 1.0 ? y : std::pow(y, p);
}

// topk_sum of one row: <m, x> - (l/p) sum_i m_i^p, m its soft mask.
template <class T>
SPARSETOPK_HOST_DEVICE double topk_sum_value(const T* x, const T* m, std::size_t n, double l, double p) {
  double linear = 0.0, power = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double m_i = static_cast<double>(m[i]);
    if (m_i == 0.0) continue;
    linear += m_i * static_cast<double>(x[i]);
    power += mask_power(m_i, p);
  }
  return linear - (l / p) * power;
}

// topk_loss of one row with label t, from m = soft_topk_mask(x, k) and
// m_rest = soft_topk_mask(x_{-t}, k - 1) (n - 1 entries, x without entry t).
// The loss is f(m) - f(m'') with m'' = m_rest with a 1 inserted at t (the best
// selection that holds t fully; SPEC.md): summed over the entries where m and
// m'' differ only, so that the entries both select fully (the top ones, whose
// x may be large) cancel exactly. Writes the gradient m - m'' into `grad` if
// not null. 0 exactly where m_t = 1 (then m'' = m); never negative (a rounding
// below 0 reads 0); NaN where the row held NaN or inf.
template <class T>
SPARSETOPK_HOST_DEVICE double topk_loss_row(const T* x, const T* m, const T* m_rest, std::size_t n, std::size_t t,
                                            double l, double p, T* grad) {
  if (static_cast<double>(m[t]) == 1.0) {
    if (grad)
      for (std::size_t i = 0; i < n; ++i) grad[i] = T(0);
    return 0.0;
  }
  double loss = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double m_i = static_cast<double>(m[i]);
    const double other = i == t ? 1.0 : static_cast<double>(m_rest[i < t ? i : i - 1]);  // m''_i
    const double difference = m_i - other;
    if (grad) grad[i] = static_cast<T>(difference);
    if (difference != 0.0 || std::isnan(difference))
      loss += difference * static_cast<double>(x[i]) - (l / p) * (mask_power(m_i, p) - mask_power(other, p));
  }
  return loss < 0.0 ? 0.0 : loss;
}

}  // namespace sparsetopk::detail
