#pragma once
// Per-thread scratch memory of the row solvers (the body of Workspace).

#include <cstddef>
#include <type_traits>
#include <vector>

#include "pav.hpp"
#include "sparsetopk/topk.hpp"

namespace sparsetopk {
namespace detail {

struct SortedEntry {
  double key;         // x_i for the mask, |x_i| for the magnitude
  std::size_t index;  // i
};

struct RowWorkspace {
  std::vector<SortedEntry> entries;  // the row sorted by key, descending
  std::vector<double> s;             // the sorted keys
  std::vector<double> w;             // (1, ..., 1, 0, ..., 0) with k ones
  std::vector<PavBlock> blocks;
  std::vector<float> keys_float;     // keys in the input's type, for selection
  std::vector<double> keys_double;
  std::size_t w_ones = static_cast<std::size_t>(-1);

  void reserve(std::size_t n) {
    if (entries.size() < n) {
      entries.resize(n);
      s.resize(n);
      blocks.reserve(n);
      keys_float.resize(n);
      keys_double.resize(n);
    }
  }
  template <class T>
  std::vector<T>& selection_keys() {
    if constexpr (std::is_same_v<T, float>) return keys_float;
    else return keys_double;
  }
  // w for a row of n entries with k ones; refilled only when n or k change.
  std::span<const double> topk_weights(std::size_t n, std::size_t k) {
    if (w.size() != n || w_ones != k) {
      w.assign(n, 0.0);
      std::fill(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(k), 1.0);
      w_ones = k;
    }
    return w;
  }
};

}  // namespace detail

struct Workspace::Slots {
  std::vector<detail::RowWorkspace> rows;

  // Called before the threads start: all allocation happens here.
  void prepare(std::size_t threads, std::size_t n, std::size_t k) {
    if (rows.size() < threads) rows.resize(threads);
    for (std::size_t t = 0; t < threads; ++t) {
      rows[t].reserve(n);
      rows[t].topk_weights(n, k);
    }
  }
};

}  // namespace sparsetopk
