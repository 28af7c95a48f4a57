#pragma once
// The per-entry formulas of SPEC.md's block Jacobians ("Derivatives"),
// pivoted on d, the active entry with the largest c (derivatives.cpp); shared
// by the CPU core and the CUDA kernels.

#include "host_device.hpp"

namespace sparsetopk::detail {

// sign(v) in {-1, 0, 1}
SPARSETOPK_HOST_DEVICE inline double sign(double v) { return static_cast<double>((v > 0.0) - (v < 0.0)); }

// Mask: (J v)_a = c_a (v_a - v_d) - (c_a / sum(c)) spread, spread = sum_j c_j (v_j - v_d).
SPARSETOPK_HOST_DEVICE inline double mask_product(double c_a, double v_a, double v_d, double sum, double spread) {
  return c_a * (v_a - v_d) - c_a / sum * spread;
}

// Magnitude, in t = sign(x) v, m active entries, spread = sum_j f_j (t_j - t_d)
// with f_j = 1 + c_j (transpose) or c_j:
//   rest = (W_B - m) t_d - spread (J^T), W_B t_d - spread (J)
SPARSETOPK_HOST_DEVICE inline double magnitude_rest(bool transpose, double block_weight, double m, double t_d,
                                                    double spread) {
  return transpose ? (block_weight - m) * t_d - spread : block_weight * t_d - spread;
}

//   (J t)_a   = (1 + c_a)(t_a - t_d) + ((1 + c_a) / D) rest
//   (J^T t)_a = t_a + c_a (t_a - t_d) + (c_a / D) rest,  D = W_B + sum(c)
SPARSETOPK_HOST_DEVICE inline double magnitude_product(bool transpose, double c_a, double t_a, double t_d,
                                                       double denominator, double rest) {
  const double ratio = denominator > 0.0 ? (transpose ? c_a : 1.0 + c_a) / denominator : 0.0;
  return transpose ? t_a + c_a * (t_a - t_d) + ratio * rest : (1.0 + c_a) * (t_a - t_d) + ratio * rest;
}

}  // namespace sparsetopk::detail
