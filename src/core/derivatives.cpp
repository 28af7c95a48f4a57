// Exact VJP and JVP from the closed-form block Jacobians (SPEC.md, "Derivatives").

#include <cmath>
#include <limits>

#include "parallel.hpp"
#include "sparsetopk/topk.hpp"
#include "validate.hpp"

namespace sparsetopk {
namespace detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double sign(double v) { return static_cast<double>((v > 0.0) - (v < 0.0)); }

// Checks every span against the saved state and runs body(r) on each row.
template <class Body>
void for_each_saved_row(const ActiveBlocks& blocks, std::size_t size, std::size_t out_size, const char* in_name,
                        Body&& body) {
  const std::size_t expected = blocks.rows() * blocks.n();
  check_same_size(size, expected, in_name, "the forward input");
  check_same_size(out_size, expected, "the output", "the forward input");
  // a VJP costs about 1/30 of its forward per entry: threads pay off only on bigger batches
  parallel_for(blocks.rows(), plan_threads(blocks.rows(), blocks.n() / 32),
               [&](std::size_t begin, std::size_t end, std::size_t) {
                 for (std::size_t r = begin; r < end; ++r) body(r);
               });
}

// Mask: J_B = diag(c) - c c^T / sum(c); zero outside the block. Symmetric.
template <class T>
void mask_jacobian_product(const ActiveBlocks& blocks, std::span<const T> v, std::span<T> result) {
  for_each_saved_row(blocks, v.size(), result.size(), "the cotangent or tangent", [&](std::size_t r) {
    const std::size_t n = blocks.n();
    const std::span<const T> v_row = v.subspan(r * n, n);
    const std::span<T> out = result.subspan(r * n, n);
    const bool valid = !std::isnan(blocks.gamma(r));
    std::fill(out.begin(), out.end(), static_cast<T>(valid ? 0.0 : kNaN));
    const auto index = blocks.index(r);
    const auto c = blocks.c(r);
    double c_sum = 0.0, c_dot_v = 0.0;
    for (std::size_t a = 0; a < index.size(); ++a) {
      c_sum += c[a];
      c_dot_v += c[a] * static_cast<double>(v_row[index[a]]);
    }
    const double mean = c_dot_v / c_sum;
    for (std::size_t a = 0; a < index.size(); ++a)
      out[index[a]] = static_cast<T>(c[a] * (static_cast<double>(v_row[index[a]]) - mean));
  });
}

// Magnitude, in t_i = sign(x_i) dx_i: J = diag(1 + c) (I - 1 c^T / (W_B + sum c))
// on the block, identity on entries returned unchanged, zero elsewhere.
template <class T>
void magnitude_jacobian_product(const ActiveBlocks& blocks, std::span<const T> x, std::span<const T> v,
                                std::span<T> result, bool transpose) {
  check_same_size(x.size(), blocks.rows() * blocks.n(), "x", "the forward input");
  for_each_saved_row(blocks, v.size(), result.size(), "the cotangent or tangent", [&](std::size_t r) {
    const std::size_t n = blocks.n();
    const std::span<const T> x_row = x.subspan(r * n, n), v_row = v.subspan(r * n, n);
    const std::span<T> out = result.subspan(r * n, n);
    if (std::isnan(blocks.gamma(r))) {
      std::fill(out.begin(), out.end(), static_cast<T>(kNaN));
      return;
    }
    const double unchanged_from = blocks.unchanged_from(r);
    for (std::size_t i = 0; i < n; ++i) {
      const double xi = static_cast<double>(x_row[i]);
      out[i] = (xi != 0.0 && std::abs(xi) >= unchanged_from) ? v_row[i] : T(0);
    }
    const auto index = blocks.index(r);
    const auto c = blocks.c(r);
    double denominator = blocks.block_weight(r), projection = 0.0;
    for (std::size_t a = 0; a < index.size(); ++a) {
      const double t = sign(static_cast<double>(x_row[index[a]])) * static_cast<double>(v_row[index[a]]);
      denominator += c[a];
      projection += (transpose ? 1.0 + c[a] : c[a]) * t;
    }
    projection /= denominator;
    for (std::size_t a = 0; a < index.size(); ++a) {
      const double s = sign(static_cast<double>(x_row[index[a]]));
      const double t = s * static_cast<double>(v_row[index[a]]);
      const double dr = transpose ? (1.0 + c[a]) * t - c[a] * projection : (1.0 + c[a]) * (t - projection);
      out[index[a]] = static_cast<T>(s * dr);
    }
  });
}

}  // namespace
}  // namespace detail

template <class T>
void soft_topk_mask_vjp(const ActiveBlocks& blocks, std::span<const T> g, std::span<T> grad_x) {
  detail::mask_jacobian_product(blocks, g, grad_x);
}
template <class T>
void soft_topk_mask_jvp(const ActiveBlocks& blocks, std::span<const T> dx, std::span<T> dout) {
  detail::mask_jacobian_product(blocks, dx, dout);
}
template <class T>
void soft_topk_mag_vjp(const ActiveBlocks& blocks, std::span<const T> x, std::span<const T> g, std::span<T> grad_x) {
  detail::magnitude_jacobian_product(blocks, x, g, grad_x, /*transpose=*/true);
}
template <class T>
void soft_topk_mag_jvp(const ActiveBlocks& blocks, std::span<const T> x, std::span<const T> dx, std::span<T> dout) {
  detail::magnitude_jacobian_product(blocks, x, dx, dout, /*transpose=*/false);
}

#define SPARSETOPK_INSTANTIATE(T)                                                                               \
  template void soft_topk_mask_vjp<T>(const ActiveBlocks&, std::span<const T>, std::span<T>);                 \
  template void soft_topk_mask_jvp<T>(const ActiveBlocks&, std::span<const T>, std::span<T>);                 \
  template void soft_topk_mag_vjp<T>(const ActiveBlocks&, std::span<const T>, std::span<const T>, std::span<T>); \
  template void soft_topk_mag_jvp<T>(const ActiveBlocks&, std::span<const T>, std::span<const T>, std::span<T>);
SPARSETOPK_INSTANTIATE(float)
SPARSETOPK_INSTANTIATE(double)
#undef SPARSETOPK_INSTANTIATE

}  // namespace sparsetopk
