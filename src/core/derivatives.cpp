// Exact VJP and JVP from the closed-form block Jacobians (SPEC.md, "Derivatives").

#include <cmath>
#include <limits>
#include <vector>

#include "band.hpp"
#include "jacobian.hpp"
#include "parallel.hpp"
#include "row_steps.hpp"
#include "sparsetopk/topk.hpp"
#include "validate.hpp"

namespace sparsetopk {
namespace detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// The band of row r recomputed from x and its RowState: each entry's column
// and c_i (SPEC.md, "Derivatives"), in column order, into `band` (reused).
template <class T>
void recompute_band(std::span<const T> x_row, const RowState& state, const Regularizer& regularizer, double l,
                    Form form, std::vector<BandEntry>& band) {
  band.clear();
  if (state.first_key == -kInf) return;  // no band (and no key is -inf in a finite row)
  for (std::size_t i = 0; i < x_row.size(); ++i) {
    const double key = sort_key(form, static_cast<double>(x_row[i]));
    if (key <= state.first_key && key >= state.last_key && in_band(state, key, i))
      band.push_back({i, band_weight(regularizer, l, form, state, key)});
  }
}

// Checks every span against the saved state and runs body(r, band) on each
// row, with the row's band recomputed into `band`.
template <class T, class Body>
void for_each_saved_row(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                        const SoftTopkOptions& options, Form form, std::size_t v_size, std::size_t out_size,
                        Body&& body) {
  check_l(options.l);
  check_p(options.p);
  const std::size_t rows = check_batch(x.size(), n, "x");
  check_state_rows(state.size(), rows);
  check_same_size(v_size, x.size(), "the cotangent or tangent", "x");
  check_same_size(out_size, x.size(), "the output", "x");
  const Regularizer regularizer(options.p);
  // a VJP costs about 1/30 of its forward per entry: threads pay off only on bigger batches
  const std::size_t threads = plan_threads(rows, n / 32);
  std::vector<std::vector<BandEntry>> bands(std::max<std::size_t>(threads, 1));
  parallel_for(rows, threads, [&](std::size_t begin, std::size_t end, std::size_t slot) {
    for (std::size_t r = begin; r < end; ++r) {
      if (!std::isnan(state[r].gamma))
        recompute_band(x.subspan(r * n, n), state[r], regularizer, options.l, form, bands[slot]);
      else
        bands[slot].clear();
      body(r, std::span<const BandEntry>(bands[slot]));
    }
  });
}

// The weights c of a row's band, and the entry with the largest one, the
// pivot d. For p near 1 or large p, c spans hundreds of orders of magnitude;
// the products below pivot on d so that they never subtract two nearly equal
// large numbers (differences v_j - v_d instead).
struct PivotedWeights {
  std::span<const BandEntry> band;
  std::size_t d = 0;
  double sum = 0.0;

  explicit PivotedWeights(std::span<const BandEntry> entries) : band(entries) {
    for (std::size_t a = 0; a < band.size(); ++a) {
      sum += band[a].c;
      if (band[a].c > band[d].c) d = a;
    }
  }
  double c(std::size_t a) const { return band[a].c; }
  // sum_j f(j) (value(j) - value(d))
  template <class Factor, class Value>
  double spread(Factor&& f, Value&& value) const {
    double total = 0.0;
    for (std::size_t j = 0; j < band.size(); ++j) total += f(j) * (value(j) - value(d));
    return total;
  }
};

// Mask: J_B = diag(c) - c c^T / sum(c); zero outside the band. Symmetric.
// (J v)_a = c_a (v_a - v_d) - (c_a / sum(c)) sum_j c_j (v_j - v_d).
template <class T>
void mask_jacobian_product(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                           const SoftTopkOptions& options, std::span<const T> v, std::span<T> result) {
  for_each_saved_row(x, n, state, options, Form::mask, v.size(), result.size(),
                     [&](std::size_t r, std::span<const BandEntry> band) {
    const std::span<const T> v_row = v.subspan(r * n, n);
    const std::span<T> out = result.subspan(r * n, n);
    const bool valid = !std::isnan(state[r].gamma);
    std::fill(out.begin(), out.end(), static_cast<T>(valid ? 0.0 : kNaN));
    const PivotedWeights weights(band);
    if (band.empty() || weights.sum == 0.0) return;  // every c underflowed: J = O(c) = 0
    const auto value = [&](std::size_t j) { return static_cast<double>(v_row[band[j].index]); };
    const double spread = weights.spread([&](std::size_t j) { return weights.c(j); }, value);
    for (std::size_t a = 0; a < band.size(); ++a)
      out[band[a].index] =
          static_cast<T>(mask_product(weights.c(a), value(a), value(weights.d), weights.sum, spread));
  });
}

// Magnitude, in t_i = sign(x_i) dx_i: J = diag(1 + c) (I - 1 c^T / D) with
// D = W_B + sum(c) on the band, identity on entries returned unchanged, zero
// elsewhere. Pivoted on d (m band entries):
//   (J t)_a   = (1 + c_a)(t_a - t_d) + ((1 + c_a) / D) (W_B t_d - sum_j c_j (t_j - t_d))
//   (J^T t)_a = t_a + c_a (t_a - t_d) + (c_a / D) ((W_B - m) t_d - sum_j (1 + c_j)(t_j - t_d))
template <class T>
void magnitude_jacobian_product(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                                const SoftTopkOptions& options, std::span<const T> v, std::span<T> result,
                                bool transpose) {
  for_each_saved_row(x, n, state, options, Form::magnitude, v.size(), result.size(),
                     [&](std::size_t r, std::span<const BandEntry> band) {
    const std::span<const T> x_row = x.subspan(r * n, n), v_row = v.subspan(r * n, n);
    const std::span<T> out = result.subspan(r * n, n);
    if (std::isnan(state[r].gamma)) {
      std::fill(out.begin(), out.end(), static_cast<T>(kNaN));
      return;
    }
    // entries returned unchanged: |x_i| >= unchanged_from, compared in T against
    // the least T at or above it; both loads first and & for &&, so that the
    // loop vectorizes (256x64: 5 us, against 25 us with a branch per entry)
    const T unchanged_from = least_at_or_above<T>(state[r].unchanged_from);
    for (std::size_t i = 0; i < n; ++i) {
      const T xi = x_row[i], vi = v_row[i];
      const bool unchanged = (xi != T(0)) & (std::abs(xi) >= unchanged_from);
      out[i] = unchanged ? vi : T(0);
    }
    if (band.empty()) return;
    const PivotedWeights weights(band);
    const auto sign_of = [&](std::size_t j) { return sign(static_cast<double>(x_row[band[j].index])); };
    const auto t = [&](std::size_t j) { return sign_of(j) * static_cast<double>(v_row[band[j].index]); };
    const double w_block = state[r].block_weight, denominator = w_block + weights.sum, t_d = t(weights.d);
    const double m = static_cast<double>(band.size());
    const double spread = transpose ? weights.spread([&](std::size_t j) { return 1.0 + weights.c(j); }, t)
                                    : weights.spread([&](std::size_t j) { return weights.c(j); }, t);
    const double rest = magnitude_rest(transpose, w_block, m, t_d, spread);
    for (std::size_t a = 0; a < band.size(); ++a)
      out[band[a].index] = static_cast<T>(
          sign_of(a) * magnitude_product(transpose, weights.c(a), t(a), t_d, denominator, rest));
  });
}

}  // namespace
}  // namespace detail

template <class T>
void soft_topk_mask_vjp(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                        const SoftTopkOptions& options, std::span<const T> g, std::span<T> grad_x) {
  detail::mask_jacobian_product(x, n, state, options, g, grad_x);
}
template <class T>
void soft_topk_mask_jvp(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                        const SoftTopkOptions& options, std::span<const T> dx, std::span<T> dout) {
  detail::mask_jacobian_product(x, n, state, options, dx, dout);
}
template <class T>
void soft_topk_mag_vjp(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                       const SoftTopkOptions& options, std::span<const T> g, std::span<T> grad_x) {
  detail::magnitude_jacobian_product(x, n, state, options, g, grad_x, /*transpose=*/true);
}
template <class T>
void soft_topk_mag_jvp(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                       const SoftTopkOptions& options, std::span<const T> dx, std::span<T> dout) {
  detail::magnitude_jacobian_product(x, n, state, options, dx, dout, /*transpose=*/false);
}

namespace {
template <class T>
std::vector<BandEntry> band_of_row(std::span<const T> x_row, const RowState& state, const SoftTopkOptions& options,
                                   Form form) {
  detail::check_l(options.l);
  detail::check_p(options.p);
  std::vector<BandEntry> band;
  if (!std::isnan(state.gamma))
    detail::recompute_band(x_row, state, detail::Regularizer(options.p), options.l, form, band);
  return band;
}
}  // namespace

template <class T>
std::vector<BandEntry> soft_topk_mask_band(std::span<const T> x_row, const RowState& state,
                                           const SoftTopkOptions& options) {
  return band_of_row(x_row, state, options, Form::mask);
}
template <class T>
std::vector<BandEntry> soft_topk_mag_band(std::span<const T> x_row, const RowState& state,
                                          const SoftTopkOptions& options) {
  return band_of_row(x_row, state, options, Form::magnitude);
}

#define SPARSETOPK_INSTANTIATE(T)                                                                         \
  template void soft_topk_mask_vjp<T>(std::span<const T>, std::size_t, std::span<const RowState>,         \
                                      const SoftTopkOptions&, std::span<const T>, std::span<T>);          \
  template void soft_topk_mask_jvp<T>(std::span<const T>, std::size_t, std::span<const RowState>,         \
                                      const SoftTopkOptions&, std::span<const T>, std::span<T>);          \
  template void soft_topk_mag_vjp<T>(std::span<const T>, std::size_t, std::span<const RowState>,          \
                                     const SoftTopkOptions&, std::span<const T>, std::span<T>);           \
  template void soft_topk_mag_jvp<T>(std::span<const T>, std::size_t, std::span<const RowState>,          \
                                     const SoftTopkOptions&, std::span<const T>, std::span<T>);           \
  template std::vector<BandEntry> soft_topk_mask_band<T>(std::span<const T>, const RowState&,              \
                                                         const SoftTopkOptions&);                          \
  template std::vector<BandEntry> soft_topk_mag_band<T>(std::span<const T>, const RowState&,               \
                                                        const SoftTopkOptions&);
SPARSETOPK_INSTANTIATE(float)
SPARSETOPK_INSTANTIATE(double)
#undef SPARSETOPK_INSTANTIATE

}  // namespace sparsetopk
