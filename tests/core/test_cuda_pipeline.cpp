// The CUDA kernels' pipeline (src/cuda/topk_kernels.cu), run on the CPU
// the way the kernels compose it: the radix selection (radix_select.hpp:
// passes of digit counts over a row, then the (k+1)-th key) and the hard
// operators' tie rule against sorting and the core's hard ops; then the soft
// forward's window bounds, gather, sort and band solve against the core.

#include <gtest/gtest.h>

#include <sparsetopk/topk.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../../src/core/band_solve.hpp"
#include "../../src/cuda/radix_select.hpp"
#include "test_support.hpp"

namespace sparsetopk::cuda {
namespace {

template <class T>
struct Selected {
  T s_k, s_next;
  long long remaining, ties;
  BitsOf<T> prefix;
};

// select_keys of topk_kernels.cu for one row, 0 < k < n
template <class T>
Selected<T> select(const std::vector<T>& row, long long k, bool magnitude) {
  using U = BitsOf<T>;
  U prefix = 0;
  long long remaining = k, ties = 0;
  for (int shift = 8 * static_cast<int>(sizeof(U)) - kRadixBits; shift >= 0; shift -= kRadixBits) {
    unsigned long long counts[kRadixSize] = {};
    for (T v : row) {
      const U e = encode(key_of(magnitude, v));
      if (matches_prefix(e, prefix, shift)) ++counts[(e >> shift) & (kRadixSize - 1)];
    }
    choose_digit(counts, shift, prefix, remaining, ties);
  }
  U next = ties > remaining ? prefix : U(0);  // a tie of s_k is the (k+1)-th, else the largest key below
  if (ties <= remaining)
    for (T v : row) {
      const U e = encode(key_of(magnitude, v));
      if (e < prefix && e > next) next = e;
    }
  return {decode<T>(prefix), decode<T>(next), remaining, ties, prefix};
}

template <class T>
std::vector<T> sorted_keys(const std::vector<T>& row, bool magnitude) {
  std::vector<T> keys;
  for (T v : row) keys.push_back(key_of(magnitude, v));
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
  EXPECT_EQ(encode(key_of(false, T(-0.0))), encode(T(0)));
}

TEST(CudaPipeline, BitsOrderTheKeysAndDecodeBack) {
  expect_bits_order_keys<float>();
  expect_bits_order_keys<double>();
}

template <class T>
void expect_kth_and_next_keys() {
  for (const auto& row : test_rows<T>())
    for (bool magnitude : {false, true}) {
      const std::vector<T> keys = sorted_keys(row, magnitude);
      for (long long k : {1LL, 2LL, 10LL, 48LL, 96LL}) {
        const Selected<T> s = select(row, k, magnitude);
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

// hard_write_kernel's rule: keys above s_k, and the first `remaining` keys equal to it in index order
template <class T>
void expect_hard_rule_is_the_cores() {
  for (const auto& row : test_rows<T>())
    for (bool magnitude : {false, true})
      for (std::size_t k : {1u, 7u, 50u, 96u}) {
        const Selected<T> s = select(row, static_cast<long long>(k), magnitude);
        std::vector<T> out(row.size()), expected(row.size());
        long long ties_before = 0;
        for (std::size_t i = 0; i < row.size(); ++i) {
          const auto e = encode(key_of(magnitude, row[i]));
          const bool tie = e == s.prefix, kept = e > s.prefix || (tie && ties_before < s.remaining);
          ties_before += tie;
          out[i] = kept ? (magnitude ? row[i] : T(1)) : T(0);
        }
        if (magnitude) hard_topk_mag<T>(row, row.size(), k, expected);
        else hard_topk_mask<T>(row, row.size(), k, expected);
        for (std::size_t i = 0; i < row.size(); ++i) EXPECT_EQ(out[i], expected[i]) << "k = " << k << ", i = " << i;
      }
}

TEST(CudaPipeline, HardTieRuleIsTheCores) {
  expect_hard_rule_is_the_cores<float>();
  expect_hard_rule_is_the_cores<double>();
}


// bounds_kernel, gather_kernel, the segmented sort and band_kernel for one finite row.
template <class T>
void soft_pipeline(const std::vector<T>& row, std::size_t k, double l, double p, bool magnitude, std::vector<T>& out,
                   std::vector<double>& c, detail::BandState& state) {
  const std::size_t n = row.size();
  const detail::BlockEquation equation(magnitude ? Form::magnitude : Form::mask, l, p);
  double above = detail::kInf, below = -detail::kInf;
  if (k > 0 && k < n) {
    const Selected<T> s = select(row, static_cast<long long>(k), magnitude);
    detail::window_bounds(equation, static_cast<double>(s.s_k), static_cast<double>(s.s_next), above, below);
  }
  std::vector<std::pair<double, std::size_t>> window;
  std::size_t count_above = 0;
  c.assign(n, -1.0);
  out.assign(n, T(0));
  for (std::size_t i = 0; i < n; ++i) {
    const double key = static_cast<double>(key_of(magnitude, row[i]));
    if (key >= above) ++count_above, out[i] = magnitude ? row[i] : T(1);
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
  const auto append = [&](std::size_t i, double weight) { c[i] = weight; };
  const detail::StraddlingBlock block =
      magnitude ? detail::solve_mag_band(row_window, s.data(), index_of, equation, Solver::threshold, blocks,
                                         row.data(), out.data(), true, append)
                : detail::solve_mask_band(row_window, s.data(), index_of, equation, Solver::threshold, blocks,
                                          out.data(), true, append);
  state = detail::band_state(block, row_window, s.data());
}

template <class T>
void expect_soft_pipeline_is_the_cores() {
  for (const auto& row : test_rows<T>()) {
    bool finite = true;
    for (T v : row) finite &= std::isfinite(v);
    if (!finite) continue;  // the kernels flag such rows first: NaN out, like the core
    for (bool magnitude : {false, true})
      for (double p : {4.0 / 3.0, 2.0, 1.5, 3.0})
        for (std::size_t k : {0u, 1u, 7u, 50u, 96u, 97u}) {
          std::vector<T> out, expected(row.size());
          std::vector<double> c;
          detail::BandState state{};
          soft_pipeline(row, k, 0.3, p, magnitude, out, c, state);
          const Form form = magnitude ? Form::magnitude : Form::mask;
          stk_test::Saved saved;
          expected = stk_test::soft(form, row, row.size(), k, 0.3, p, &saved);
          // the core's band, its c_i recomputed from the row and the state
          const std::vector<double> c_core = stk_test::dense_band(form, saved, row);
          for (std::size_t i = 0; i < row.size(); ++i) {
            EXPECT_EQ(out[i], expected[i]) << "p = " << p << ", k = " << k << ", i = " << i;
            EXPECT_EQ(c[i], c_core[i]) << "p = " << p << ", k = " << k << ", i = " << i;
          }
          EXPECT_EQ(state.gamma, saved.state[0].gamma);
          EXPECT_EQ(state.block_weight, saved.state[0].block_weight);
          EXPECT_EQ(state.unchanged_from, saved.state[0].unchanged_from);
        }
  }
}

TEST(CudaPipeline, SoftForwardIsTheCores) {
  expect_soft_pipeline_is_the_cores<float>();
  expect_soft_pipeline_is_the_cores<double>();
}

}  // namespace
}  // namespace sparsetopk::cuda
