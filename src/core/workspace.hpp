#pragma once
// Per-thread scratch memory of the row solvers (the body of Workspace).
// Buffers only grow, so once a Workspace has seen a shape, later calls of the
// same or smaller shape never allocate.

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "pav.hpp"
#include "sorted_order.hpp"
#include "sparsetopk/topk.hpp"

namespace sparsetopk {
namespace detail {

struct RowWorkspace {
  std::size_t slot = 0;              // which worker thread owns it
  std::vector<SortedEntry> entries;  // the window of the row, sorted by key, descending
  std::vector<SortedEntry> candidates;  // the entries above the window's lower bound, unsorted
  std::vector<double> s;             // the sorted keys of the window
  std::vector<double> w;             // (1, ..., 1, 0, ..., 0)
  std::vector<PavBlock> blocks;
  std::vector<float> keys_float;     // keys in the input's type, for selection
  std::vector<double> keys_double;
  std::size_t count_above = 0;       // a part of a row split across threads
  double largest_below = 0.0;

  template <class T>
  std::vector<T>& selection_keys(std::size_t n) {
    std::vector<T>& keys = [this]() -> std::vector<T>& {
      if constexpr (std::is_same_v<T, float>) return keys_float;
      else return keys_double;
    }();
    if (keys.size() < n) keys.resize(n);
    return keys;
  }
  template <class T>
  std::size_t keys_size() const {
    if constexpr (std::is_same_v<T, float>) return keys_float.size();
    else return keys_double.size();
  }
  // w for a window of m entries with `top` ones.
  std::span<const double> topk_weights(std::size_t m, std::size_t top) {
    w.resize(m);
    std::fill(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(top), 1.0);
    std::fill(w.begin() + static_cast<std::ptrdiff_t>(top), w.end(), 0.0);
    return w;
  }
};

}  // namespace detail

struct Workspace::Slots {
  std::vector<detail::RowWorkspace> rows;  // one per thread

  // Called before the threads start.
  void prepare(std::size_t threads) {
    if (rows.size() < threads) rows.resize(threads);
    for (std::size_t t = 0; t < rows.size(); ++t) rows[t].slot = t;
  }
};

namespace detail {

// The slots of a Workspace, which its public interface keeps opaque.
struct WorkspaceAccess {
  using Slots = Workspace::Slots;
  static Slots& slots(Workspace& workspace) { return *workspace.slots_; }
};
using WorkspaceSlots = WorkspaceAccess::Slots;

}  // namespace detail

}  // namespace sparsetopk
