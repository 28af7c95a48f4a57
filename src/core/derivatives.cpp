// Exact VJP and JVP from the closed-form block Jacobians (SPEC.md, "Derivatives").

#include <cmath>
#include <limits>

#include "jacobian.hpp"
#include "parallel.hpp"
#include "sparsetopk/topk.hpp"
#include "validate.hpp"

namespace sparsetopk {
namespace detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The least T at or above v (v itself for double; for float, v rounded up).
template <class T>
T least_at_or_above(double v) {
  T t = static_cast<T>(v);
  if (static_cast<double>(t) < v) t = std::nextafter(t, std::numeric_limits<T>::infinity());
  return t;
}

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

// The weights c of a row's active entries, and the entry with the largest one,
// the pivot d. For p near 1 or large p, c spans hundreds of orders of
// magnitude; the products below pivot on d so that they never subtract two
// nearly equal large numbers (differences v_j - v_d instead).
struct PivotedWeights {
  std::span<const double> c;
  std::size_t d = 0;
  double sum = 0.0;

  explicit PivotedWeights(std::span<const double> weights) : c(weights) {
    for (std::size_t a = 0; a < c.size(); ++a) {
      sum += c[a];
      if (c[a] > c[d]) d = a;
    }
  }
  // sum_j f(j) (value(j) - value(d))
  template <class Factor, class Value>
  double spread(Factor&& f, Value&& value) const {
    double total = 0.0;
    for (std::size_t j = 0; j < c.size(); ++j) total += f(j) * (value(j) - value(d));
    return total;
  }
};

// Mask: J_B = diag(c) - c c^T / sum(c); zero outside the block. Symmetric.
// (J v)_a = c_a (v_a - v_d) - (c_a / sum(c)) sum_j c_j (v_j - v_d).
template <class T>
void mask_jacobian_product(const ActiveBlocks& blocks, std::span<const T> v, std::span<T> result) {
  for_each_saved_row(blocks, v.size(), result.size(), "the cotangent or tangent", [&](std::size_t r) {
    const std::size_t n = blocks.n();
    const std::span<const T> v_row = v.subspan(r * n, n);
    const std::span<T> out = result.subspan(r * n, n);
    const bool valid = !std::isnan(blocks.gamma(r));
    std::fill(out.begin(), out.end(), static_cast<T>(valid ? 0.0 : kNaN));
    const auto index = blocks.index(r);
    const PivotedWeights weights(blocks.c(r));
    if (index.empty() || weights.sum == 0.0) return;  // every c underflowed: J = O(c) = 0
    const auto value = [&](std::size_t j) { return static_cast<double>(v_row[index[j]]); };
    const auto& c = weights.c;
    const double spread = weights.spread([&](std::size_t j) { return c[j]; }, value);
    for (std::size_t a = 0; a < index.size(); ++a)
      out[index[a]] = static_cast<T>(mask_product(c[a], value(a), value(weights.d), weights.sum, spread));
  });
}

// Magnitude, in t_i = sign(x_i) dx_i: J = diag(1 + c) (I - 1 c^T / D) with
// D = W_B + sum(c) on the block, identity on entries returned unchanged, zero
// elsewhere. Pivoted on d (m active entries):
//   (J t)_a   = (1 + c_a)(t_a - t_d) + ((1 + c_a) / D) (W_B t_d - sum_j c_j (t_j - t_d))
//   (J^T t)_a = t_a + c_a (t_a - t_d) + (c_a / D) ((W_B - m) t_d - sum_j (1 + c_j)(t_j - t_d))
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
    // entries returned unchanged: |x_i| >= unchanged_from, compared in T against
    // the least T at or above it; both loads first and & for &&, so that the
    // loop vectorizes (256x64: 5 us, against 25 us with a branch per entry)
    const T unchanged_from = least_at_or_above<T>(blocks.unchanged_from(r));
    for (std::size_t i = 0; i < n; ++i) {
      const T xi = x_row[i], vi = v_row[i];
      const bool unchanged = (xi != T(0)) & (std::abs(xi) >= unchanged_from);
      out[i] = unchanged ? vi : T(0);
    }
    const auto index = blocks.index(r);
    if (index.empty()) return;
    const PivotedWeights weights(blocks.c(r));
    const auto& c = weights.c;
    const auto sign_of = [&](std::size_t j) { return sign(static_cast<double>(x_row[index[j]])); };
    const auto t = [&](std::size_t j) { return sign_of(j) * static_cast<double>(v_row[index[j]]); };
    const double w_block = blocks.block_weight(r), denominator = w_block + weights.sum, t_d = t(weights.d);
    const double m = static_cast<double>(index.size());
    const double spread = transpose ? weights.spread([&](std::size_t j) { return 1.0 + c[j]; }, t)
                                    : weights.spread([&](std::size_t j) { return c[j]; }, t);
    const double rest = magnitude_rest(transpose, w_block, m, t_d, spread);
    for (std::size_t a = 0; a < index.size(); ++a)
      out[index[a]] = static_cast<T>(sign_of(a) * magnitude_product(transpose, c[a], t(a), t_d, denominator, rest));
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
