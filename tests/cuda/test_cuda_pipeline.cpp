// The pieces of the CUDA kernels' pipeline, composed in plain sequential C++
// (the kernels themselves run on the CPU harness: src/cuda/kernel_selftest.cpp): the radix selection (radix_select.hpp:
// passes of digit counts over a row, then the (k+1)-th key) and the hard
// operators' k-th entry and rule (hard_topk.hpp) against sorting and the
// core's hard ops; then the soft forward's window bounds, gather, sort and
// band solve, and the RowState it records, against the core; the band the derivatives recompute from x and
// the state (saved_band.hpp) against the core's band; and the derivatives'
// per-entry math at the kernels' state against the core's VJP and JVP.

#include <gtest/gtest.h>

#include <sparsetopk/topk.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "band.hpp"        // src/core/row, through the sparsetopk_row target
#include "band_solve.hpp"
#include "hard_topk.hpp"
#include "radix_select.hpp"  // src/cuda, through the sparsetopk_cuda_row target
#include "saved_band.hpp"

namespace sparsetopk::cuda {
namespace {

const char* name(Form form) { return form == Form::magnitude ? "magnitude" : "mask"; }

template <class T>
struct Selected {
  T s_k, s_next;
  long long remaining, ties;
  BitsOf<T> prefix;
};

// the radix selection of the kernels (select_kth_keys, team_rows.hpp) for one row, 0 < k < n
template <class T>
Selected<T> select(const std::vector<T>& row, long long k, Form form) {
  using U = BitsOf<T>;
  U prefix = 0;
  long long remaining = k, ties = 0;
  for (int shift = 8 * static_cast<int>(sizeof(U)) - kRadixBits; shift >= 0; shift -= kRadixBits) {
    unsigned long long counts[kRadixSize] = {};
    for (T v : row) {
      const U e = encode(key_of(form, v));
      if (matches_prefix(e, prefix, shift)) ++counts[(e >> shift) & (kRadixSize - 1)];
    }
    choose_digit(counts, shift, prefix, remaining, ties);
  }
  U next = ties > remaining ? prefix : U(0);  // a tie of s_k is the (k+1)-th, else the largest key below
  if (ties <= remaining)
    for (T v : row) {
      const U e = encode(key_of(form, v));
      if (e < prefix && e > next) next = e;
    }
  return {decode<T>(prefix), decode<T>(next), remaining, ties, prefix};
}

template <class T>
std::vector<T> sorted_keys(const std::vector<T>& row, Form form) {
  std::vector<T> keys;
  for (T v : row) keys.push_back(key_of(form, v));
  std::sort(keys.begin(), keys.end(), std::greater<T>());
  return keys;
}

template <class T>
std::vector<std::vector<T>> test_rows() {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  std::vector<std::vector<T>> rows;
  for (int kind = 0; kind < 4; ++kind) {
    std::vector<T> row(97);
    for (std::size_t i = 0; i < row.size(); ++i) {
      double v = normal(rng);
      if (kind == 1) v = std::round(2.0 * v) / 2.0;                       // ties
      if (kind == 2) v = v * std::pow(10.0, static_cast<double>(i % 40) - 20.0);  // scales
      if (kind == 3) v = i % 3 == 0 ? -0.0 : (i % 3 == 1 ? 0.0 : v);     // signed zeros
      row[i] = static_cast<T>(v);
    }
    if (kind == 2) row[5] = std::numeric_limits<T>::infinity(), row[6] = -std::numeric_limits<T>::infinity();
    rows.push_back(row);
  }
  return rows;
}

template <class T>
void expect_bits_order_keys() {
  const T values[] = {-std::numeric_limits<T>::infinity(), T(-3.5), T(-1e-30), -std::numeric_limits<T>::denorm_min(),
                      T(0), std::numeric_limits<T>::denorm_min(), T(1e-30), T(2), std::numeric_limits<T>::infinity()};
  for (std::size_t i = 0; i < std::size(values); ++i) {
    const T back = decode<T>(encode(values[i]));
    EXPECT_EQ(std::memcmp(&back, &values[i], sizeof(T)), 0) << values[i];
    if (i > 0) {
      EXPECT_LT(encode(values[i - 1]), encode(values[i])) << values[i];
    }
  }
  EXPECT_EQ(encode(key_of(Form::mask, T(-0.0))), encode(T(0)));
  EXPECT_EQ(encode(key_of(Form::magnitude, T(-0.0))), encode(T(0)));
}

TEST(CudaPipeline, BitsOrderTheKeysAndDecodeBack) {
  expect_bits_order_keys<float>();
  expect_bits_order_keys<double>();
}

template <class T>
void expect_kth_and_next_keys() {
  for (const auto& row : test_rows<T>())
    for (Form form : {Form::mask, Form::magnitude}) {
      const std::vector<T> keys = sorted_keys(row, form);
      for (long long k : {1LL, 2LL, 10LL, 48LL, 96LL}) {
        const Selected<T> s = select(row, k, form);
        EXPECT_EQ(s.s_k, keys[k - 1]) << "k = " << k;
        EXPECT_EQ(s.s_next, keys[k]) << "k = " << k;
        const long long above = std::count_if(keys.begin(), keys.end(), [&](T v) { return v > keys[k - 1]; });
        EXPECT_EQ(s.remaining, k - above);
        EXPECT_EQ(s.ties, std::count(keys.begin(), keys.end(), keys[k - 1]));
      }
    }
}

TEST(CudaPipeline, FindsTheKthAndNextKeys) {
  expect_kth_and_next_keys<float>();
  expect_kth_and_next_keys<double>();
}

// kth_index_kernel for one row: the column of the remaining-th key equal to s_k.
template <class T>
std::size_t kth_index(const std::vector<T>& row, const Selected<T>& s, Form form) {
  long long ties = 0;
  for (std::size_t i = 0; i < row.size(); ++i)
    if (encode(key_of(form, row[i])) == s.prefix && ++ties == s.remaining) return i;
  return row.size();
}

// hard_write_kernel for one row without NaN, 0 < k < n: the core's rule
// (hard_topk.hpp) at the k-th entry the selection found.
template <class T>
std::vector<T> hard_pipeline(const std::vector<T>& row, std::size_t k, Form form) {
  const Selected<T> s = select(row, static_cast<long long>(k), form);
  const detail::SortedEntry kth{static_cast<double>(s.s_k), kth_index(row, s, form)};
  std::vector<T> out(row.size());
  for (std::size_t i = 0; i < row.size(); ++i) {
    const double key = static_cast<double>(detail::sort_key(form, row[i]));
    out[i] = detail::hard_value(form, row[i], detail::hard_kept(key, i, kth));
  }
  return out;
}

template <class T>
void expect_hard_pipeline_is_the_cores() {
  for (const auto& row : test_rows<T>())
    for (Form form : {Form::mask, Form::magnitude})
      for (std::size_t k : {1u, 7u, 50u, 96u}) {
        std::vector<T> expected(row.size());
        if (form == Form::magnitude) hard_topk_mag<T>(row, row.size(), k, expected);
        else hard_topk_mask<T>(row, row.size(), k, expected);
        const std::vector<T> out = hard_pipeline(row, k, form);
        for (std::size_t i = 0; i < row.size(); ++i) EXPECT_EQ(out[i], expected[i]) << "k = " << k << ", i = " << i;
      }
}

TEST(CudaPipeline, HardForwardIsTheCores) {
  expect_hard_pipeline_is_the_cores<float>();
  expect_hard_pipeline_is_the_cores<double>();
}

// The rule itself: at the k-th entry of a full sort, exactly the first k
// entries of the sorted order are kept, for every k.
template <class T>
void expect_hard_rule_keeps_the_first_k() {
  for (const auto& row : test_rows<T>())
    for (Form form : {Form::mask, Form::magnitude}) {
      std::vector<detail::SortedEntry> sorted;
      for (std::size_t i = 0; i < row.size(); ++i)
        sorted.push_back({static_cast<double>(detail::sort_key(form, row[i])), i});
      std::sort(sorted.begin(), sorted.end(), detail::descending);
      for (std::size_t k = 1; k <= row.size(); ++k)
        for (std::size_t j = 0; j < sorted.size(); ++j)
          ASSERT_EQ(detail::hard_kept(sorted[j].key, sorted[j].index, sorted[k - 1]), j < k) << "k = " << k;
    }
}

TEST(CudaPipeline, HardRuleKeepsTheFirstKInSortedOrder) {
  expect_hard_rule_keeps_the_first_k<float>();
  expect_hard_rule_keeps_the_first_k<double>();
}

// Only a NaN makes a row NaN (infinities are keys), as the core's hard ops do;
// kept entries are 1 (mask) or x_i (magnitude, its sign and -0 included).
TEST(CudaPipeline, HardNaNRuleAndValuesAreTheCores) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(detail::hard_poisons_row(nan));
  EXPECT_FALSE(detail::hard_poisons_row(inf));
  EXPECT_FALSE(detail::hard_poisons_row(-inf));
  EXPECT_TRUE(std::isnan(detail::hard_nan<float>()));
  for (std::size_t k : {0u, 2u, 4u})
    for (double value : hard_topk_mag(std::vector<double>{1.0, nan, -inf, 2.0}, k)) EXPECT_TRUE(std::isnan(value));
  EXPECT_EQ(detail::hard_value(Form::mask, -3.0, true), 1.0);
  EXPECT_EQ(detail::hard_value(Form::magnitude, -3.0, true), -3.0);
  EXPECT_TRUE(std::signbit(detail::hard_value(Form::magnitude, -0.0, true)));
  EXPECT_EQ(detail::hard_value(Form::magnitude, -3.0, false), 0.0);
  EXPECT_EQ(hard_topk_mask(std::vector<double>{-inf, 1.0, inf}, 2), (std::vector<double>{0.0, 1.0, 1.0}));
  EXPECT_EQ(hard_topk_mag(std::vector<double>{-inf, 1.0, inf}, 2), (std::vector<double>{-inf, 0.0, inf}));
}

// the soft forward's window bounds, split, sort and band solve (soft_row,
// team_rows.hpp) for one finite row: the outputs and the row's RowState.
template <class T>
void soft_pipeline(const std::vector<T>& row, std::size_t k, double l, double p, Form form, std::vector<T>& out,
                   RowState& state) {
  const std::size_t n = row.size();
  const detail::BlockEquation equation(form, l, p);
  double above = detail::kInf, below = -detail::kInf;
  if (k > 0 && k < n) {
    const Selected<T> s = select(row, static_cast<long long>(k), form);
    detail::window_bounds(equation, static_cast<double>(s.s_k), static_cast<double>(s.s_next), above, below);
  }
  std::vector<std::pair<double, std::size_t>> window;
  std::size_t count_above = 0;
  out.assign(n, T(0));
  for (std::size_t i = 0; i < n; ++i) {
    const double key = static_cast<double>(key_of(form, row[i]));
    if (key >= above) ++count_above, out[i] = form == Form::magnitude ? row[i] : T(1);
    else if (key > below) window.push_back({key, i});
  }
  std::sort(window.begin(), window.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<double> s;
  std::vector<std::size_t> index;
  for (const auto& [key, i] : window) s.push_back(key), index.push_back(i);
  const detail::RowWindow row_window{s.size(), k - count_above, above, below};
  std::vector<detail::PavBlock> stack(n);
  detail::BlockStack blocks{stack.data()};
  const auto index_of = [&](std::size_t j) { return index[j]; };
  detail::BandBounds band;
  const auto append = [&](std::size_t i, double) {
    band.add(detail::sort_key(form, static_cast<double>(row[i])), i);
  };
  RowState near;
  const detail::StraddlingBlock block =
      form == Form::magnitude
          ? detail::solve_mag_band(row_window, s.data(), index_of, equation, Solver::threshold, blocks, row.data(),
                                   out.data(), true, append, near)
          : detail::solve_mask_band(row_window, s.data(), index_of, equation, Solver::threshold, blocks, out.data(),
                                    true, append, near);
  const detail::BandState solved = detail::band_state(block, row_window, s.data());
  state = near;
  state.gamma = solved.gamma;
  state.block_weight = solved.block_weight;
  state.unchanged_from = solved.unchanged_from;
  band.write(state);
}

// jacobian_kernel for one row, its passes run in column order (the device
// reduces the pivot's sum and the spread over a block instead: the same
// terms, summed in another order).
template <class T>
std::vector<T> jacobian_pipeline(Form form, bool transpose, const std::vector<T>& v, const std::vector<T>& x,
                                 const RowState& state, double l, double p) {
  const std::size_t n = x.size();
  std::vector<T> out(n);
  if (std::isnan(state.gamma)) {
    std::fill(out.begin(), out.end(), std::numeric_limits<T>::quiet_NaN());
    return out;
  }
  const SavedBand band(state, detail::Regularizer(p), l, form);
  const auto c_of = [&](std::size_t i) { return band.weight(static_cast<double>(x[i]), i); };
  const auto t = [&](std::size_t i) {
    return tangent(form, static_cast<double>(x[i]), static_cast<double>(v[i]));
  };
  Pivot pivot = no_pivot(static_cast<long long>(n));
  for (std::size_t i = 0; i < n; ++i)
    if (c_of(i) >= 0.0) pivot = MergePivots{}(pivot, entry_pivot(c_of(i), static_cast<long long>(i)));
  const double t_d = pivot.count > 0 ? t(static_cast<std::size_t>(pivot.index)) : 0.0;
  double spread = 0.0;
  for (std::size_t i = 0; i < n; ++i)
    if (c_of(i) >= 0.0) spread += spread_term(form, transpose, c_of(i), t(i), t_d);
  for (std::size_t i = 0; i < n; ++i)
    out[i] = static_cast<T>(product_entry(form, transpose, state, pivot, t_d, spread, c_of(i),
                                          static_cast<double>(x[i]), static_cast<double>(v[i])));
  return out;
}

template <class T>
bool all_finite(const std::vector<T>& row) {
  return std::all_of(row.begin(), row.end(), [](T v) { return std::isfinite(v); });
}

// Both entries' doubles equal (NaN equal to NaN; -0 equal to +0).
void expect_same(double a, double b, const char* field) {
  if (std::isnan(a) || std::isnan(b)) EXPECT_TRUE(std::isnan(a) && std::isnan(b)) << field << ": " << a << " vs " << b;
  else EXPECT_EQ(a, b) << field;
}

void expect_same_state(const RowState& state, const RowState& core) {
  expect_same(state.gamma, core.gamma, "gamma");
  expect_same(state.block_weight, core.block_weight, "block_weight");
  expect_same(state.unchanged_from, core.unchanged_from, "unchanged_from");
  expect_same(state.first_key, core.first_key, "first_key");
  expect_same(state.first_index, core.first_index, "first_index");
  expect_same(state.last_key, core.last_key, "last_key");
  expect_same(state.last_index, core.last_index, "last_index");
}

constexpr double kP[] = {4.0 / 3.0, 2.0, 1.5, 3.0};
constexpr std::size_t kK[] = {0, 1, 7, 50, 96, 97};

template <class T>
void core_forward(Form form, const std::vector<T>& row, std::size_t k, double p, std::vector<T>& out,
                  RowState& state) {
  out.assign(row.size(), T(0));
  const SoftTopkOptions options{0.3, p, Solver::automatic};
  if (form == Form::magnitude) soft_topk_mag<T>(row, row.size(), k, out, options, std::span<RowState>(&state, 1));
  else soft_topk_mask<T>(row, row.size(), k, out, options, std::span<RowState>(&state, 1));
}

template <class T>
void expect_soft_pipeline_is_the_cores() {
  for (const auto& row : test_rows<T>()) {
    if (!all_finite(row)) continue;  // the kernels flag such rows first: NaN out, like the core
    for (Form form : {Form::mask, Form::magnitude})
      for (double p : kP)
        for (std::size_t k : kK) {
          SCOPED_TRACE(testing::Message() << "form = " << name(form) << ", p = " << p << ", k = " << k);
          std::vector<T> out, expected;
          RowState state, core;
          soft_pipeline(row, k, 0.3, p, form, out, state);
          core_forward(form, row, k, p, expected, core);
          for (std::size_t i = 0; i < row.size(); ++i) EXPECT_EQ(out[i], expected[i]) << "i = " << i;
          expect_same_state(state, core);
        }
  }
}

TEST(CudaPipeline, SoftForwardAndStateAreTheCores) {
  expect_soft_pipeline_is_the_cores<float>();
  expect_soft_pipeline_is_the_cores<double>();
}

// The band jacobian_kernel recomputes (SavedBand) at the core's state: the
// core's band, entry for entry, with the same c_i.
template <class T>
void expect_recomputed_band_is_the_cores() {
  for (const auto& row : test_rows<T>()) {
    if (!all_finite(row)) continue;
    for (Form form : {Form::mask, Form::magnitude})
      for (double p : kP)
        for (std::size_t k : kK) {
          SCOPED_TRACE(testing::Message() << "form = " << name(form) << ", p = " << p << ", k = " << k);
          std::vector<T> out;
          RowState state;
          core_forward(form, row, k, p, out, state);
          const SoftTopkOptions options{0.3, p, Solver::automatic};
          const std::vector<BandEntry> core = form == Form::magnitude ? soft_topk_mag_band<T>(row, state, options)
                                                                      : soft_topk_mask_band<T>(row, state, options);
          const SavedBand band(state, detail::Regularizer(p), 0.3, form);
          std::vector<BandEntry> recomputed;
          for (std::size_t i = 0; i < row.size(); ++i) {
            const double c = band.weight(static_cast<double>(row[i]), i);
            if (c >= 0.0) recomputed.push_back({i, c});
          }
          ASSERT_EQ(recomputed.size(), core.size());
          for (std::size_t j = 0; j < core.size(); ++j) {
            EXPECT_EQ(recomputed[j].index, core[j].index);
            EXPECT_EQ(recomputed[j].c, core[j].c) << "i = " << core[j].index;
          }
        }
  }
}

TEST(CudaPipeline, RecomputedBandIsTheCores) {
  expect_recomputed_band_is_the_cores<float>();
  expect_recomputed_band_is_the_cores<double>();
}

// The kernels' VJP and JVP at the kernels' state against the core's at its
// own: the same values (bitwise here, where the sums run in column order as
// in the core).
template <class T>
void expect_derivatives_are_the_cores() {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  for (const auto& row : test_rows<T>()) {
    if (!all_finite(row)) continue;
    std::vector<T> v(row.size());
    for (T& value : v) value = static_cast<T>(normal(rng));
    for (Form form : {Form::mask, Form::magnitude})
      for (double p : kP)
        for (std::size_t k : kK) {
          std::vector<T> out;
          RowState state, core;
          soft_pipeline(row, k, 0.3, p, form, out, state);
          core_forward(form, row, k, p, out, core);
          const SoftTopkOptions options{0.3, p, Solver::automatic};
          const std::span<const RowState> core_state(&core, 1);
          for (bool transpose : {true, false}) {
            SCOPED_TRACE(testing::Message() << "form = " << name(form) << ", p = " << p << ", k = " << k
                                            << ", transpose = " << transpose);
            std::vector<T> expected(row.size());
            const std::span<const T> x_span(row), v_span(v);
            if (form == Form::mask) soft_topk_mask_vjp<T>(x_span, row.size(), core_state, options, v_span, expected);
            else if (transpose) soft_topk_mag_vjp<T>(x_span, row.size(), core_state, options, v_span, expected);
            else soft_topk_mag_jvp<T>(x_span, row.size(), core_state, options, v_span, expected);
            const std::vector<T> product = jacobian_pipeline(form, transpose, v, row, state, 0.3, p);
            for (std::size_t i = 0; i < row.size(); ++i) EXPECT_EQ(product[i], expected[i]) << "i = " << i;
          }
        }
  }
}

TEST(CudaPipeline, DerivativesAreTheCores) {
  expect_derivatives_are_the_cores<float>();
  expect_derivatives_are_the_cores<double>();
}

// A row holding a non-finite value: NaN state (as the core's), NaN derivatives.
TEST(CudaPipeline, NonFiniteRowsGiveNaNDerivatives) {
  const std::vector<double> row = {1.0, std::numeric_limits<double>::infinity(), -2.0, 0.5};
  for (Form form : {Form::mask, Form::magnitude}) {
    std::vector<double> out;
    RowState core;
    core_forward(form, row, 2, 4.0 / 3.0, out, core);
    const RowState flagged{.gamma = std::numeric_limits<double>::quiet_NaN(), .block_weight = 0.0,
                           .unchanged_from = std::numeric_limits<double>::quiet_NaN()};  // non_finite_state()
    expect_same_state(flagged, core);
    for (double value : jacobian_pipeline(form, true, row, row, flagged, 0.3, 4.0 / 3.0))
      EXPECT_TRUE(std::isnan(value));
  }
}

}  // namespace
}  // namespace sparsetopk::cuda
