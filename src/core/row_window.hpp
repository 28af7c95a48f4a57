#pragma once
// Which entries of a row the isotonic solve must see (SPEC.md, "Top-k
// structure"): all of them, sorted (Solver::pav), or only those near the k-th
// largest key, found by selection (Solver::threshold), optionally with a team
// of threads splitting one huge row.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>

#include "band_solve.hpp"
#include "block_equation.hpp"
#include "parallel.hpp"
#include "workspace.hpp"

namespace sparsetopk::detail {


// Sort keys: x_i for the mask, |x_i| for the magnitude (types, so calls inline).
// In the input's type as well as in double: both are exact.
struct Identity {
  template <class V>
  V operator()(V v) const { return v; }
};
struct Magnitude {
  template <class V>
  V operator()(V v) const { return std::abs(v); }
};


// Threads that may share the work of one row (team_size 1: none).
struct RowTeam {
  WorkspaceSlots* slots = nullptr;
  std::size_t size = 1;
};

// Windows this small (the usual case) are sorted by insertion: std::sort's
// calls and block moves cost more than the sort itself there.
inline constexpr std::size_t kInsertionSortSize = 16;

inline void sort_window(RowWorkspace& ws) {
  std::vector<SortedEntry>& entries = ws.entries;
  if (entries.size() <= kInsertionSortSize) {
    for (std::size_t i = 1; i < entries.size(); ++i) {
      const SortedEntry entry = entries[i];
      std::size_t j = i;
      for (; j > 0 && descending(entry, entries[j - 1]); --j) entries[j] = entries[j - 1];
      entries[j] = entry;
    }
  } else {
    std::sort(entries.begin(), entries.end(), descending);
  }
  ws.s.resize(ws.entries.size());
  for (std::size_t j = 0; j < ws.entries.size(); ++j) ws.s[j] = ws.entries[j].key;
}

template <class T, class Key>
void load_entries(std::span<const T> row, Key key, RowWorkspace& ws) {
  ws.entries.resize(row.size());
  for (std::size_t i = 0; i < row.size(); ++i) ws.entries[i] = {key(static_cast<double>(row[i])), i};
}

// Solver::pav: the whole row, sorted (SPEC.md, step 1).
template <class T, class Key>
RowWindow sorted_row(std::span<const T> row, std::size_t k, Key key, RowWorkspace& ws) {
  load_entries(row, key, ws);
  sort_window(ws);
  return {row.size(), k, kInf, -kInf};
}


// Splits row[begin, end) at the window: entries outside it get their output
// (top_value(x_i) above it, 0 below), the others go to ws.entries. Returns the
// count above. The pass over the row gathers the entries with key > below
// (the top entries and the window: few) into ws.candidates without a branch:
// every entry is written at the end, which advances only for those (the few
// true comparisons would each cost a mispredicted branch); the outputs start as 0.
template <class T, class Key, class TopValue>
std::size_t split_at_window(std::span<const T> row, std::size_t begin, std::size_t end, Key key, double above,
                            double below, RowWorkspace& ws, std::span<T> out, TopValue top_value) {
  if (ws.candidates.size() <= end - begin) ws.candidates.resize(end - begin + 1);  // (+1: the last write)
  SortedEntry* candidates = ws.candidates.data();
  std::size_t count = 0;
  for (std::size_t i = begin; i < end; ++i) {
    const double key_i = key(static_cast<double>(row[i]));
    candidates[count] = {key_i, i};
    count += key_i > below ? 1 : 0;
  }
  std::fill(out.begin() + static_cast<std::ptrdiff_t>(begin), out.begin() + static_cast<std::ptrdiff_t>(end), T(0));
  std::size_t count_above = 0;
  ws.entries.clear();
  for (std::size_t j = 0; j < count; ++j) {
    const SortedEntry entry = candidates[j];
    if (entry.key >= above) {
      ++count_above;
      out[entry.index] = top_value(row[entry.index]);
    } else {
      ws.entries.push_back(entry);
    }
  }
  return count_above;
}

// The k-th and (k+1)-th largest keys (1 <= k < n), by selection.
template <class T, class Key>
std::pair<double, double> kth_keys_by_selection(std::span<const T> row, std::size_t k, Key key, RowWorkspace& ws) {
  const std::size_t n = row.size();
  std::vector<T>& keys = ws.selection_keys<T>(n);
  for (std::size_t i = 0; i < n; ++i) keys[i] = key(row[i]);
  const auto end = keys.begin() + static_cast<std::ptrdiff_t>(n), kth = keys.begin() + static_cast<std::ptrdiff_t>(k - 1);
  std::nth_element(keys.begin(), kth, end, std::greater<T>());
  return {static_cast<double>(*kth), static_cast<double>(*std::max_element(kth + 1, end))};
}

// The k + 1 = Slots largest keys of a row in one pass, kept sorted in slots
// that start as -inf (the keys are finite); most keys are rejected by a single
// comparison, and one that enters moves every slot without a branch: slot j
// takes the larger of itself and the smaller of the key and slot j - 1 (min
// and max instructions; a key tied with a slot may swap a zero's sign, which
// no caller reads: the window bounds are arithmetic, and separated_window
// reads zeros from the row).
template <std::size_t Slots, class T, class Key>
std::pair<double, double> kth_keys_by_network(std::span<const T> row, Key key) {
  T slot[Slots];
  std::fill(slot, slot + Slots, -std::numeric_limits<T>::infinity());
  for (const T x : row) {
    const T v = key(x);
    if (!(v > slot[Slots - 1])) continue;
    for (std::size_t j = Slots - 1; j > 0; --j) slot[j] = std::max(slot[j], std::min(slot[j - 1], v));
    slot[0] = std::max(slot[0], v);
  }
  return {static_cast<double>(slot[Slots - 2]), static_cast<double>(slot[Slots - 1])};
}

// The same for small k. For k < 8 the slots are fixed at compile time; a
// loop that shifts the larger slots down instead exits on a mispredicted branch
// at every insertion, and its cost moved by 30% with the alignment of the
// code on 256x64 rows (measured over paddings of the binary), where the
// fixed slots take 0.5-0.9x its time (64x8: 0.9-0.95x). Larger k: shifted.
// (Filling the buffer from the row's first k + 1 keys and sorting them costs a
// copy and a std::sort call per row: a quarter of a row of 8.)
inline constexpr std::size_t kSmallK = 32;

template <class T, class Key>
std::pair<double, double> kth_keys_small_k(std::span<const T> row, std::size_t k, Key key) {
  switch (k) {
    case 1: return kth_keys_by_network<2>(row, key);
    case 2: return kth_keys_by_network<3>(row, key);
    case 3: return kth_keys_by_network<4>(row, key);
    case 4: return kth_keys_by_network<5>(row, key);
    case 5: return kth_keys_by_network<6>(row, key);
    case 6: return kth_keys_by_network<7>(row, key);
    case 7: return kth_keys_by_network<8>(row, key);
    default: break;
  }
  T largest[kSmallK + 1];
  std::fill(largest, largest + k + 1, -std::numeric_limits<T>::infinity());
  for (const T x : row) {
    const T v = key(x);
    if (!(v > largest[k])) continue;
    std::size_t j = k;
    for (; j > 0 && largest[j - 1] < v; --j) largest[j] = largest[j - 1];
    largest[j] = v;
  }
  return {static_cast<double>(largest[k - 1]), static_cast<double>(largest[k])};
}

// The same for k small against n (64 k <= n): the k + 1 largest keys so far in
// a min-heap, whose root most keys fail to beat (one comparison each, as for
// the buffer above, with O(log k) work for the few that do).
inline constexpr std::size_t kHeapRowsPerK = 64;

template <class T, class Key>
std::pair<double, double> kth_keys_by_heap(std::span<const T> row, std::size_t k, Key key, RowWorkspace& ws) {
  std::vector<T>& heap = ws.selection_keys<T>(k + 1);
  for (std::size_t i = 0; i <= k; ++i) heap[i] = key(row[i]);
  const auto begin = heap.begin(), end = begin + static_cast<std::ptrdiff_t>(k + 1);
  std::make_heap(begin, end, std::greater<T>());
  for (std::size_t i = k + 1; i < row.size(); ++i) {
    const T v = key(row[i]);
    if (!(v > heap[0])) continue;
    std::pop_heap(begin, end, std::greater<T>());
    *(end - 1) = v;
    std::push_heap(begin, end, std::greater<T>());
  }
  std::pop_heap(begin, end, std::greater<T>());  // the (k+1)-th largest to the back, the k-th to the root
  return {static_cast<double>(heap[0]), static_cast<double>(*(end - 1))};
}

// The same with a team of threads sharing the row (one thread is a team too):
// a deterministic sample brackets the k-th key, the team counts the keys above
// the bracket and gathers those inside, and selection runs on the (small)
// bracket only. Falls back to full selection if the sample missed.
template <class T, class Key>
std::pair<double, double> kth_keys_sampled(std::span<const T> row, std::size_t k, Key key,
                                           std::span<RowWorkspace> slots) {
  const std::size_t n = row.size(), parts = slots.size();
  // Bracket [lo, hi] around the rank of the k-th key in an evenly spaced sample.
  std::vector<double>& sample = slots[0].s;
  const std::size_t m = std::min<std::size_t>(65536, std::max<std::size_t>(1, n / 16)), stride = n / m;
  sample.resize(m);
  for (std::size_t j = 0; j < m; ++j) sample[j] = key(static_cast<double>(row[j * stride]));
  const double rank = static_cast<double>(k - 1) * static_cast<double>(m) / static_cast<double>(n);
  const double margin = 2.0 * std::sqrt(static_cast<double>(m)) + 16.0;
  const auto sample_key = [&](double position) {
    const auto at = sample.begin() + static_cast<std::ptrdiff_t>(position);
    std::nth_element(sample.begin(), at, sample.end(), std::greater<double>());
    return *at;
  };
  const double hi = rank - margin < 0.0 ? kInf : sample_key(rank - margin);
  const double lo = rank + margin >= static_cast<double>(m - 1) ? -kInf : sample_key(rank + margin);

  // Each part of the row: count the keys above, gather those inside.
  const auto split = [&](std::size_t t, std::size_t, std::size_t) {
    RowWorkspace& part = slots[t];
    std::vector<T>& inside = part.selection_keys<T>(0);
    inside.clear();
    part.count_above = 0;
    part.largest_below = -kInf;
    for (std::size_t i = n * t / parts; i < n * (t + 1) / parts; ++i) {
      const double key_i = key(static_cast<double>(row[i]));
      if (key_i > hi) ++part.count_above;
      else if (key_i >= lo) inside.push_back(static_cast<T>(key_i));
      else part.largest_below = std::max(part.largest_below, key_i);
    }
  };
  if (parts == 1) split(0, 0, 0);
  else parallel_for(parts, parts, split);

  std::size_t count_above = 0, count_inside = 0;
  double largest_below = -kInf;
  for (const RowWorkspace& part : slots) {
    count_above += part.count_above;
    count_inside += part.keys_size<T>();
    largest_below = std::max(largest_below, part.largest_below);
  }
  if (!(count_above < k && k <= count_above + count_inside)) return kth_keys_by_selection(row, k, key, slots[0]);
  std::vector<T>& inside = slots[0].selection_keys<T>(0);
  for (std::size_t t = 1; t < parts; ++t) {
    const std::vector<T>& other = slots[t].selection_keys<T>(0);
    inside.insert(inside.end(), other.begin(), other.end());
  }
  const std::size_t r = k - count_above;  // rank of s_k inside the bracket, 1-based
  const auto kth = inside.begin() + static_cast<std::ptrdiff_t>(r - 1);
  std::nth_element(inside.begin(), kth, inside.end(), std::greater<T>());
  const double s_k = static_cast<double>(*kth);
  double s_next = largest_below;
  if (r < inside.size()) s_next = std::max(s_next, static_cast<double>(*std::max_element(kth + 1, inside.end())));
  return {s_k, s_next};
}

// Rows at least this long bracket the k-th key from a sample first.
inline constexpr std::size_t kSampledRowSize = std::size_t{1} << 15;

template <class T, class Key>
std::pair<double, double> kth_keys(std::span<const T> row, std::size_t k, Key key, RowWorkspace& ws,
                                   const RowTeam& team) {
  if (team.size > 1) return kth_keys_sampled(row, k, key, std::span<RowWorkspace>(team.slots->rows.data(), team.size));
  if (k < kSmallK) return kth_keys_small_k(row, k, key);
  if (row.size() >= kSampledRowSize) return kth_keys_sampled(row, k, key, std::span<RowWorkspace>(&ws, 1));
  if (k * kHeapRowsPerK <= row.size()) return kth_keys_by_heap(row, k, key, ws);
  return kth_keys_by_selection(row, k, key, ws);
}

// A row whose k-th and (k+1)-th keys are separated (separated_keys): every
// entry is a singleton, so exactly the k entries with key >= s_k > s_{k+1}
// are kept. The window is empty; its above and below are the keys that the
// sorted window's positions top - 1 and top would hold (the last entry tied at
// s_k, the first tied at s_{k+1}: they differ from s_k, s_{k+1} in the sign
// of a zero only).
template <class T, class Key, class TopValue>
RowWindow separated_window(std::span<const T> row, double s_k, double s_next, Key key, RowWorkspace& ws,
                           std::span<T> out, TopValue top_value) {
  const std::size_t n = row.size();
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<double>(key(row[i])) >= s_k ? top_value(row[i]) : T(0);
  double last_kept = s_k, first_dropped = s_next;
  if (s_k == 0.0)
    for (std::size_t i = n; i-- > 0;)
      if (static_cast<double>(key(row[i])) == 0.0) {
        last_kept = static_cast<double>(key(row[i]));
        break;
      }
  if (s_next == 0.0)
    for (std::size_t i = 0; i < n; ++i)
      if (static_cast<double>(key(row[i])) == 0.0) {
        first_dropped = static_cast<double>(key(row[i]));
        break;
      }
  ws.entries.clear();
  ws.s.clear();
  return {0, 0, last_kept, first_dropped, /*separated=*/true};
}

// Solver::threshold (0 < k < n): select the k-th and (k+1)-th largest keys,
// which bound the straddling block, and keep only the entries that can lie in
// it. Entries outside the window get their output here.
template <class T, class Key, class TopValue>
RowWindow threshold_window(std::span<const T> row, std::size_t k, Key key, const BlockEquation& equation,
                           RowWorkspace& ws, const RowTeam& team, std::span<T> out, TopValue top_value) {
  const std::size_t n = row.size();
  const auto [s_k, s_next] = kth_keys(row, k, key, ws, team);
  if (team.size == 1 && separated_keys(equation, s_k, s_next))
    return separated_window(row, s_k, s_next, key, ws, out, top_value);
  double above, below;
  window_bounds(equation, s_k, s_next, above, below);
  std::size_t count_above = 0;
  if (team.size > 1) {
    std::vector<std::size_t> counts(team.size, 0);
    parallel_for(team.size, team.size, [&](std::size_t t, std::size_t, std::size_t) {
      counts[t] = split_at_window(row, n * t / team.size, n * (t + 1) / team.size, key, above, below,
                                  team.slots->rows[t], out, top_value);
    });
    for (std::size_t t = 0; t < team.size; ++t) {
      count_above += counts[t];
      if (t > 0) {
        const auto& other = team.slots->rows[t].entries;
        ws.entries.insert(ws.entries.end(), other.begin(), other.end());
      }
    }
  } else {
    count_above = split_at_window(row, 0, n, key, above, below, ws, out, top_value);
  }
  // In IEEE arithmetic the bounds lie beyond s_k and s_next, so at most k - 1
  // entries are above and s_k is in the window. Should that fail (a caller's
  // flush-to-zero mode, which parallel_for clears, rounds a bound one ulp from
  // 0 onto it), solve the whole sorted row, which needs no bounds.
  if (count_above >= k || k - count_above > ws.entries.size()) return sorted_row(row, k, key, ws);
  sort_window(ws);
  return {ws.entries.size(), k - count_above, above, below};
}

template <class T, class Key, class TopValue>
RowWindow select_window(std::span<const T> row, std::size_t k, Key key, Solver solver,
                        const BlockEquation& equation, RowWorkspace& ws, const RowTeam& team, std::span<T> out,
                        TopValue top_value) {
  if (solver == Solver::pav || k == 0 || k == row.size()) return sorted_row(row, k, key, ws);
  return threshold_window(row, k, key, equation, ws, team, out, top_value);
}

}  // namespace sparsetopk::detail
