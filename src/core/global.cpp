// The operators over many parts (sparsetopk/global.hpp): select the k-th key
// by radix passes over every part, gather the window around it, and solve it
// with the row operator's band solver.

#include "sparsetopk/global.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>

#include "band.hpp"
#include "band_reductions.hpp"
#include "band_solve.hpp"
#include "block_equation.hpp"
#include "hard_topk.hpp"
#include "jacobian.hpp"
#include "row_steps.hpp"
#include "sorted_order.hpp"
#include "validate.hpp"
#include "workspace.hpp"

namespace sparsetopk {
namespace detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <class T>
void check_parts(std::size_t parts, std::size_t outs, const char* out_name) {
  if (outs != parts)
    throw InvalidArgument(std::string(out_name) + " has " + std::to_string(outs) + " part(s), but x has " +
                          std::to_string(parts));
}

// Checks that `out` has the parts of `x`, part by part.
template <class T, class U>
void check_same_parts(ConstParts<T> x, std::span<const std::span<U>> out, const char* out_name) {
  check_parts<T>(x.size(), out.size(), out_name);
  for (std::size_t p = 0; p < x.size(); ++p)
    if (out[p].size() != x[p].size())
      throw InvalidArgument(std::string(out_name) + "[" + std::to_string(p) + "].size() = " +
                            std::to_string(out[p].size()) + " differs from x[" + std::to_string(p) +
                            "].size() = " + std::to_string(x[p].size()));
}

// Where this process's entries sit in the concatenation: its first global
// position, every process's total n, and whether any process flagged its
// parts (a NaN or non-finite entry). One gather of two numbers.
struct Layout {
  std::vector<std::size_t> offsets;  // local: offsets[p] = entries before part p
  std::size_t first = 0, n = 0;
  bool flagged = false;

  std::size_t local_size() const { return offsets.back(); }
  bool owns(std::size_t position) const { return position >= first && position < first + local_size(); }
  // (part, index in it) of an owned global position
  std::pair<std::size_t, std::size_t> locate(std::size_t position) const {
    const std::size_t local = position - first;
    const auto after = std::upper_bound(offsets.begin(), offsets.end(), local);
    const std::size_t part = static_cast<std::size_t>(after - offsets.begin()) - 1;
    return {part, local - offsets[part]};
  }
};

// The scalar arguments every process must pass alike (k, l, p): their names and values.
struct Agreed {
  const char* name;
  double value;
};

// One gather: the layout, and a check that every process passed the same
// arguments (each process throws the same error, so none waits in a collective).
template <class T, class Flag>
Layout make_layout(ConstParts<T> x, Reduction& reduction, Flag flag, std::initializer_list<Agreed> agreed = {}) {
  Layout layout;
  layout.offsets.assign(1, 0);
  bool flagged = false;
  for (const std::span<const T> part : x) {
    layout.offsets.push_back(layout.offsets.back() + part.size());
    flagged = flagged || flag(part);
  }
  std::vector<double> mine = {static_cast<double>(layout.local_size()), flagged ? 1.0 : 0.0};
  for (const Agreed& a : agreed) mine.push_back(a.value);
  const std::size_t fields = mine.size();
  const std::vector<double> all = reduction.gather(mine);
  for (std::size_t r = 0; r < reduction.ranks(); ++r) {
    const double* f = all.data() + fields * r;
    if (r < reduction.rank()) layout.first += static_cast<std::size_t>(f[0]);
    layout.n += static_cast<std::size_t>(f[0]);
    layout.flagged = layout.flagged || f[1] != 0.0;
    for (std::size_t j = 0; j < agreed.size(); ++j) {
      const Agreed& a = agreed.begin()[j];
      const double theirs = f[2 + j], first = all[2 + j];  // process r's value, process 0's
      if (!(theirs == first) && !(std::isnan(theirs) && std::isnan(first)))
        throw InvalidArgument(std::string("every process must pass the same ") + a.name + ": process 0 passed " +
                              a.name + " = " + number_text(first) + ", process " + std::to_string(r) + " " + a.name +
                              " = " + number_text(theirs));
    }
  }
  return layout;
}

// Calls f(key, global position, x_i, part, index) for every local entry, in order.
template <class T, class F>
void for_each_entry(ConstParts<T> x, const Layout& layout, Form form, F&& f) {
  for (std::size_t p = 0; p < x.size(); ++p) {
    const std::span<const T> part = x[p];
    const std::size_t base = layout.first + layout.offsets[p];
    for (std::size_t i = 0; i < part.size(); ++i) f(sort_key(form, part[i]), base + i, part[i], p, i);
  }
}

// ---- Selection of the k-th largest key by radix passes ----

// Keys as unsigned integers in the same order (-0 and +0 the same key).
template <class T>
using KeyBits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

template <class T>
KeyBits<T> ordered_bits(T key) {
  using Bits = KeyBits<T>;
  constexpr Bits kSign = Bits{1} << (sizeof(T) * 8 - 1);
  const Bits bits = std::bit_cast<Bits>(key == T(0) ? T(0) : key);
  return (bits & kSign) ? Bits(~bits) : Bits(bits | kSign);
}

template <class T>
T key_of_bits(KeyBits<T> ordered) {
  using Bits = KeyBits<T>;
  constexpr Bits kSign = Bits{1} << (sizeof(T) * 8 - 1);
  return std::bit_cast<T>((ordered & kSign) ? Bits(ordered & ~kSign) : Bits(~ordered));
}

// The k-th and (k+1)-th largest keys (1 <= k <= n; s_next = -inf when k = n).
template <class T>
SelectedKeys select_kth(ConstParts<T> x, Form form, std::size_t k, std::size_t n, Reduction& reduction) {
  using Bits = KeyBits<T>;
  constexpr int kDigitBits = 8, kDigits = 1 << kDigitBits;
  Bits prefix = 0, fixed = 0;
  std::size_t rank = k;  // of s_k among the keys matching the prefix, from the top
  double ties = 0.0;
  for (int shift = static_cast<int>(sizeof(T)) * 8 - kDigitBits; shift >= 0; shift -= kDigitBits) {
    std::array<std::uint64_t, kDigits> local{};
    for (const std::span<const T> part : x)
      for (const T v : part) {
        const Bits bits = ordered_bits(sort_key(form, v));
        local[(bits >> shift) & (kDigits - 1)] += (bits & fixed) == prefix ? 1 : 0;
      }
    std::array<double, kDigits> counts;
    for (int d = 0; d < kDigits; ++d) counts[d] = static_cast<double>(local[d]);
    reduction.sum(counts);
    int digit = kDigits - 1;
    for (; digit > 0 && counts[digit] < static_cast<double>(rank); --digit) rank -= static_cast<std::size_t>(counts[digit]);
    prefix |= Bits(digit) << shift;
    fixed |= Bits(kDigits - 1) << shift;
    ties = counts[digit];
  }
  SelectedKeys selected{static_cast<double>(key_of_bits<T>(prefix)), -kInf, k - rank, static_cast<std::size_t>(ties)};
  if (selected.greater + selected.ties > k) {
    selected.s_next = selected.s_k;
  } else if (k < n) {  // the largest key below s_k
    double below = -kInf;
    for (const std::span<const T> part : x)
      for (const T v : part)
        if (ordered_bits(sort_key(form, v)) < prefix) below = std::max(below, static_cast<double>(sort_key(form, v)));
    reduction.max(std::span<double>(&below, 1));
    selected.s_next = below;
  }
  return selected;
}

// The key of the first (or last) entry in position order whose key equals
// `key` (the zero's sign the row operators read off the row: topk.cpp).
template <class T>
double edge_key_equal(ConstParts<T> x, Form form, double key, bool last, Reduction& reduction) {
  double found = 0.0, value = key;
  for (const std::span<const T> part : x)
    for (const T v : part) {
      const double key_i = static_cast<double>(sort_key(form, v));
      if (key_i != key || (found != 0.0 && !last)) continue;
      found = 1.0, value = key_i;
    }
  const double mine[2] = {found, value};
  const std::vector<double> all = reduction.gather(mine);
  double result = key;
  bool seen = false;
  for (std::size_t r = 0; r < reduction.ranks(); ++r)
    if (all[2 * r] != 0.0 && (last || !seen)) result = all[2 * r + 1], seen = true;
  return result;
}

// ---- Hard operators ----

template <Form F, class T>
void hard_global(ConstParts<T> x, std::size_t k, Parts<T> out, Reduction* given) {
  check_same_parts(x, out, "out");
  LocalReduction local;
  Reduction& reduction = given ? *given : local;
  const Layout layout = make_layout(
      x, reduction, [](std::span<const T> part) { return std::any_of(part.begin(), part.end(), hard_poisons_row<T>); },
      {{"k", static_cast<double>(k)}});
  check_k(k, layout.n);
  if (layout.flagged) {
    for (const std::span<T> part : out) std::fill(part.begin(), part.end(), hard_nan<T>());
    return;
  }
  if (k == 0 || k == layout.n) {
    for (std::size_t p = 0; p < x.size(); ++p)
      for (std::size_t i = 0; i < x[p].size(); ++i) out[p][i] = hard_value(F, x[p][i], k == layout.n);
    return;
  }
  const SelectedKeys selected = select_kth(x, F, k, layout.n, reduction);
  // kept: key > s_k, or key == s_k among the first (k - greater) ties in position order
  double ties_here = 0.0;
  for (const std::span<const T> part : x)
    for (const T v : part) ties_here += static_cast<double>(sort_key(F, v)) == selected.s_k ? 1.0 : 0.0;
  const std::vector<double> ties = reduction.gather(std::span<const double>(&ties_here, 1));
  double before = 0.0;
  for (std::size_t r = 0; r < reduction.rank(); ++r) before += ties[r];
  const double wanted = static_cast<double>(k - selected.greater);
  for (std::size_t p = 0; p < x.size(); ++p)
    for (std::size_t i = 0; i < x[p].size(); ++i) {
      const double key = static_cast<double>(sort_key(F, x[p][i]));
      bool kept = key > selected.s_k;
      if (key == selected.s_k) kept = before++ < wanted;
      out[p][i] = hard_value(F, x[p][i], kept);
    }
}

// ---- Soft operators ----

void check_global_options(const SoftTopkOptions& options) {
  check_l(options.l);
  check_p(options.p);
  if (options.solver != Solver::automatic && options.solver != Solver::threshold)
    throw InvalidArgument("solver = " + std::to_string(static_cast<int>(options.solver)) +
                          " is not available for the global operators (automatic or threshold)");
}

template <class T>
T top_value(Form form, T x) {
  return form == Form::magnitude ? x : T(1);
}

// One entry of the window: its key, global position and value (as gathered).
struct WindowEntry {
  double key, position, value;
};

// This process's share of the window, found in one pass that also writes the
// outputs outside it (key >= above: top value; key <= below: 0).
struct LocalWindow {
  std::vector<WindowEntry> entries;
  std::vector<std::pair<std::size_t, std::size_t>> places;  // (part, index) of each entry
  double count_above = 0.0;
};

template <class T>
LocalWindow collect_window(ConstParts<T> x, Parts<T> out, const Layout& layout, Form form, double above,
                           double below) {
  LocalWindow window;
  for_each_entry(x, layout, form, [&](T key, std::size_t position, T v, std::size_t p, std::size_t i) {
    const double key_i = static_cast<double>(key);
    out[p][i] = T(0);
    if (!(key_i > below)) return;
    if (key_i >= above) {
      out[p][i] = top_value(form, v);
      window.count_above += 1.0;
    } else {
      window.entries.push_back({key_i, static_cast<double>(position), static_cast<double>(v)});
      window.places.emplace_back(p, i);
    }
  });
  return window;
}

// Every process's window entries, in rank order (`widest`: the most any process holds).
std::vector<WindowEntry> gather_entries(const std::vector<WindowEntry>& mine, std::size_t widest,
                                        const std::vector<double>& sizes, Reduction& reduction) {
  std::vector<WindowEntry> entries;
  if (widest == 0) return entries;
  std::vector<double> flat(3 * widest, 0.0);  // every process sends the same count: padded
  for (std::size_t j = 0; j < mine.size(); ++j)
    flat[3 * j] = mine[j].key, flat[3 * j + 1] = mine[j].position, flat[3 * j + 2] = mine[j].value;
  const std::vector<double> all = reduction.gather(flat);
  for (std::size_t r = 0; r < reduction.ranks(); ++r) {
    const double* from = all.data() + 3 * widest * r;
    for (std::size_t j = 0; j < static_cast<std::size_t>(sizes[2 * r + 1]); ++j)
      entries.push_back({from[3 * j], from[3 * j + 1], from[3 * j + 2]});
  }
  return entries;
}

// The band by the row operator's solver on the gathered, sorted window
// (`entries`, `top` of them among the k largest): outputs and state exactly
// as the row operator on the concatenation has them.
template <class T>
void solve_gathered_window(std::vector<WindowEntry> entries, RowWindow window, Parts<T> out, const Layout& layout,
                           const BlockEquation& equation, Form form, RowState* state) {
  std::sort(entries.begin(), entries.end(), [](const WindowEntry& a, const WindowEntry& b) {
    return sorted_before(a.key, a.position, b.key, b.position);
  });
  const std::size_t m = entries.size();
  std::vector<double> s(m);
  std::vector<T> values(m), window_out(m);
  for (std::size_t j = 0; j < m; ++j) s[j] = entries[j].key, values[j] = static_cast<T>(entries[j].value);
  RowWorkspace ws;
  BandBounds band;
  RowState near;
  const auto identity = [](std::size_t j) { return j; };
  const auto append = [&](std::size_t j, double) {
    band.add(s[j], static_cast<std::size_t>(entries[j].position));
  };
  const StraddlingBlock block =
      form == Form::mask
          ? solve_mask_band(window, s.data(), identity, equation, Solver::threshold, ws.blocks, window_out.data(),
                            state != nullptr, append, near)
          : solve_mag_band(window, s.data(), identity, equation, Solver::threshold, ws.blocks, values.data(),
                           window_out.data(), state != nullptr, append, near);
  save_row(state, block, window, s.data(), band, near);
  for (std::size_t j = 0; j < m; ++j) {
    const std::size_t position = static_cast<std::size_t>(entries[j].position);
    if (!layout.owns(position)) continue;
    const auto [p, i] = layout.locate(position);
    out[p][i] = window_out[j];
  }
}

// ---- The band by reductions: what crosses between processes is O(bins) per round ----

// Sub-intervals per round of the search for a smooth piece of the threshold equation.
constexpr std::size_t kBins = 64;

// The participants of band_reductions.hpp are the processes: each sums its
// own window entries, and the Reduction adds the processes' parts (merging
// moments and bounds in rank order).
class ProcessCombine {
 public:
  explicit ProcessCombine(Reduction& reduction) : reduction_(reduction) {}
  void sum(double* values, std::size_t count) { reduction_.sum(std::span<double>(values, count)); }
  void merge_block(BlockMoments& moments, double* sums, std::size_t count) {
    std::vector<double> fields = {moments.count, moments.mean, moments.unit, moments.m2, moments.m3};
    fields.insert(fields.end(), sums, sums + count);
    const std::vector<double> all = reduction_.gather(fields);
    moments = BlockMoments{};
    std::fill(sums, sums + count, 0.0);
    for (std::size_t r = 0; r < reduction_.ranks(); ++r) {
      const double* f = all.data() + fields.size() * r;
      if (f[0] > 0.0) {
        const BlockMoments part{f[0], 0.0, f[1], f[2], f[3], f[4]};
        if (moments.count == 0.0) moments = part;
        else moments.merge(part);
      }
      for (std::size_t j = 0; j < count; ++j) sums[j] += f[5 + j];
    }
  }
  void merge_bounds(BandBounds& bounds, double& least) {
    const double fields[6] = {bounds.empty ? 0.0 : 1.0, bounds.first_key, bounds.first_index, bounds.last_key,
                              bounds.last_index, least};
    const std::vector<double> all = reduction_.gather(fields);
    bounds = BandBounds{};
    least = kInf;
    for (std::size_t r = 0; r < reduction_.ranks(); ++r) {
      const double* f = all.data() + 6 * r;
      if (f[0] != 0.0) {
        bounds.add(f[1], static_cast<std::size_t>(f[2]));
        bounds.add(f[3], static_cast<std::size_t>(f[4]));
      }
      least = std::min(least, f[5]);
    }
  }

 private:
  Reduction& reduction_;
};

// This process's window entries, for band_reductions.hpp.
struct LocalEntries {
  const std::vector<WindowEntry>& entries;
  template <class F>
  void for_each(F&& f) const {
    for (std::size_t j = 0; j < entries.size(); ++j) f(j, entries[j].key, entries[j].position, entries[j].value);
  }
};

// The band of a wide window solved by reductions (band_reductions.hpp, see
// global.hpp): the outputs of this process's window entries and the state.
template <class T>
void solve_window_by_reductions(const LocalWindow& local, Parts<T> out, double count_above, double above, std::size_t k,
                                const SelectedKeys& selected, const BlockEquation& equation, RowState* state,
                                Reduction& reduction) {
  ProcessCombine combine(reduction);
  const RowState solved = solve_band_by_reductions<kBins>(
      equation, selected, k, count_above, above, LocalEntries{local.entries}, combine,
      [&](std::size_t j, double y) {
        const auto [p, i] = local.places[j];
        out[p][i] = static_cast<T>(y);
      },
      state != nullptr);
  if (state) *state = solved;
}

template <class T>
void fill_parts(Parts<T> out, T value) {
  for (const std::span<T> part : out) std::fill(part.begin(), part.end(), value);
}

template <class T>
void soft_global(ConstParts<T> x, std::size_t k, Parts<T> out, const SoftTopkOptions& options, RowState* state,
                 Reduction* given, Form form) {
  check_same_parts(x, out, "out");
  LocalReduction local;
  Reduction& reduction = given ? *given : local;
  // (the arguments are checked after the layout's gather, which checks that
  // every process passed the same: then every process throws alike)
  const Layout layout = make_layout(x, reduction, [](std::span<const T> part) { return !all_finite(part); },
                                    {{"k", static_cast<double>(k)}, {"l", options.l}, {"p", options.p}});
  check_global_options(options);
  check_k(k, layout.n);
  const std::size_t n = layout.n;
  if (layout.flagged) {
    fill_parts(out, static_cast<T>(kNaN));
    if (state) *state = RowState{.gamma = kNaN, .block_weight = 0.0, .unchanged_from = kNaN};
    return;
  }
  if (k == 0 || k == n) {  // every entry a singleton: none or all kept (the sorted row's state)
    for (std::size_t p = 0; p < x.size(); ++p)
      for (std::size_t i = 0; i < x[p].size(); ++i) out[p][i] = k == 0 ? T(0) : top_value(form, x[p][i]);
    if (!state) return;
    if (n == 0) {
      *state = RowState{.gamma = -kInf, .block_weight = 0.0, .unchanged_from = kInf};
    } else if (k == 0) {  // gamma: the first key in sorted order
      const SelectedKeys largest = select_kth(x, form, 1, n, reduction);
      const double key = largest.s_k == 0.0 ? edge_key_equal(x, form, 0.0, false, reduction) : largest.s_k;
      *state = RowState{.gamma = key, .block_weight = 0.0, .unchanged_from = kInf};
    } else {  // unchanged_from: the last key in sorted order
      const SelectedKeys smallest = select_kth(x, form, n, n, reduction);
      const double key = smallest.s_k == 0.0 ? edge_key_equal(x, form, 0.0, true, reduction) : smallest.s_k;
      *state = RowState{.gamma = -kInf, .block_weight = 0.0, .unchanged_from = key};
    }
    return;
  }
  const BlockEquation equation(form, options.l, options.p);
  const SelectedKeys selected = select_kth(x, form, k, n, reduction);
  const double s_k = selected.s_k, s_next = selected.s_next;
  if (separated_keys(equation, s_k, s_next)) {  // every entry a singleton: the k largest kept
    for (std::size_t p = 0; p < x.size(); ++p)
      for (std::size_t i = 0; i < x[p].size(); ++i)
        out[p][i] = static_cast<double>(sort_key(form, x[p][i])) >= s_k ? top_value(form, x[p][i]) : T(0);
    const double last_kept = s_k == 0.0 ? edge_key_equal(x, form, 0.0, true, reduction) : s_k;
    const double first_dropped = s_next == 0.0 ? edge_key_equal(x, form, 0.0, false, reduction) : s_next;
    save_separated_row(state, RowWindow{0, 0, last_kept, first_dropped, true});
    return;
  }
  double above, below;
  window_bounds(equation, s_k, s_next, above, below);
  const LocalWindow window = collect_window(x, out, layout, form, above, below);
  const double sizes_here[2] = {window.count_above, static_cast<double>(window.entries.size())};
  const std::vector<double> sizes = reduction.gather(sizes_here);
  std::size_t count_above = 0, widest = 0, size = 0;
  for (std::size_t r = 0; r < reduction.ranks(); ++r) {
    count_above += static_cast<std::size_t>(sizes[2 * r]);
    widest = std::max(widest, static_cast<std::size_t>(sizes[2 * r + 1]));
    size += static_cast<std::size_t>(sizes[2 * r + 1]);
  }
  // In IEEE arithmetic the bounds lie beyond s_k and s_next (see threshold_window,
  // row_window.hpp); should that fail, solve the whole sorted row.
  if (count_above >= k || k - count_above > size) {
    const LocalWindow all = collect_window(x, out, layout, form, kInf, -kInf);
    const double all_sizes_here[2] = {0.0, static_cast<double>(all.entries.size())};
    const std::vector<double> all_sizes = reduction.gather(all_sizes_here);
    std::size_t all_widest = 0;
    for (std::size_t r = 0; r < reduction.ranks(); ++r)
      all_widest = std::max(all_widest, static_cast<std::size_t>(all_sizes[2 * r + 1]));
    return solve_gathered_window(gather_entries(all.entries, all_widest, all_sizes, reduction),
                                 RowWindow{n, k, kInf, -kInf}, out, layout, equation, form, state);
  }
  if (widest <= reduction.gather_limit())
    return solve_gathered_window(gather_entries(window.entries, widest, sizes, reduction),
                                 RowWindow{size, k - count_above, above, below}, out, layout, equation, form, state);
  solve_window_by_reductions(window, out, static_cast<double>(count_above), above, k, selected, equation, state,
                             reduction);
}

// ---- Derivatives ----

// The band's reduced scalars (SPEC.md, "Derivatives"): the pivot d (the
// entry with the largest c, the first in position order), its c and value,
// sum c, and the band's size m.
struct Pivot {
  double c = -1.0, value = 0.0, sum = 0.0, m = 0.0;
};

// body(c, value, p, i) for every local band entry, in position order;
// value(p, i) is the entry's v (mask) or t = sign(x) v (magnitude).
template <class T, class Value, class Body>
void for_each_band_entry(ConstParts<T> x, const Layout& layout, const RowState& state, const Regularizer& regularizer,
                         double l, Form form, Value&& value, Body&& body) {
  for_each_entry(x, layout, form, [&](T key_t, std::size_t position, T, std::size_t p, std::size_t i) {
    const double key = static_cast<double>(key_t);
    if (key <= state.first_key && key >= state.last_key && in_band(state, key, position))
      body(band_weight(regularizer, l, form, state, key), value(p, i), p, i);
  });
}

template <class T>
void jacobian_product(ConstParts<T> x, const RowState& state, const SoftTopkOptions& options, ConstParts<T> v,
                      Parts<T> result, Form form, bool transpose, Reduction* given) {
  check_same_parts(x, v, "the cotangent or tangent");
  check_same_parts(x, result, "the output");
  LocalReduction local;
  Reduction& reduction = given ? *given : local;
  const Layout layout = make_layout(x, reduction, [](std::span<const T>) { return false; },
                                    {{"l", options.l}, {"p", options.p}, {"the state's gamma", state.gamma}});
  check_l(options.l);
  check_p(options.p);
  if (std::isnan(state.gamma)) return fill_parts(result, static_cast<T>(kNaN));
  // outside the band: 0, or (magnitude) v on the entries returned unchanged
  const T unchanged_from = least_at_or_above<T>(state.unchanged_from);
  for (std::size_t p = 0; p < x.size(); ++p)
    for (std::size_t i = 0; i < x[p].size(); ++i) {
      const T xi = x[p][i];
      const bool unchanged = form == Form::magnitude && (xi != T(0)) & (std::abs(xi) >= unchanged_from);
      result[p][i] = unchanged ? v[p][i] : T(0);
    }
  if (state.first_key == -kInf) return;  // no band (the same on every process)
  const Regularizer regularizer(options.p);
  const auto value = [&](std::size_t p, std::size_t i) {
    const double vi = static_cast<double>(v[p][i]);
    return form == Form::magnitude ? sign(static_cast<double>(x[p][i])) * vi : vi;
  };
  Pivot mine;
  for_each_band_entry(x, layout, state, regularizer, options.l, form, value,
                      [&](double c, double value_i, std::size_t, std::size_t) {
                        mine.sum += c;
                        mine.m += 1.0;
                        if (c > mine.c) mine.c = c, mine.value = value_i;
                      });
  const double fields[4] = {mine.c, mine.value, mine.sum, mine.m};
  const std::vector<double> all = reduction.gather(fields);
  Pivot pivot;
  for (std::size_t r = 0; r < reduction.ranks(); ++r) {
    const double* f = all.data() + 4 * r;
    if (f[3] > 0.0 && f[0] > pivot.c) pivot.c = f[0], pivot.value = f[1];
    pivot.sum += f[2];
    pivot.m += f[3];
  }
  if (form == Form::mask && pivot.sum == 0.0) return;  // every c underflowed: J = O(c) = 0
  // spread = sum_j f_j (v_j - v_d), f_j = c_j (mask, J), or 1 + c_j (magnitude, J^T)
  const bool one_plus = form == Form::magnitude && transpose;
  double spread = 0.0;
  for_each_band_entry(x, layout, state, regularizer, options.l, form, value,
                      [&](double c, double value_i, std::size_t, std::size_t) {
                        spread += (one_plus ? 1.0 + c : c) * (value_i - pivot.value);
                      });
  reduction.sum(std::span<double>(&spread, 1));
  if (form == Form::mask) {
    for_each_band_entry(x, layout, state, regularizer, options.l, form, value,
                        [&](double c, double value_i, std::size_t p, std::size_t i) {
                          result[p][i] = static_cast<T>(mask_product(c, value_i, pivot.value, pivot.sum, spread));
                        });
    return;
  }
  const double w_block = state.block_weight, denominator = w_block + pivot.sum;
  const double rest = magnitude_rest(transpose, w_block, pivot.m, pivot.value, spread);
  for_each_band_entry(x, layout, state, regularizer, options.l, form, value,
                      [&](double c, double t_i, std::size_t p, std::size_t i) {
                        result[p][i] = static_cast<T>(sign(static_cast<double>(x[p][i])) *
                                                      magnitude_product(transpose, c, t_i, pivot.value,
                                                                        denominator, rest));
                      });
}

}  // namespace
}  // namespace detail

template <class T>
void hard_topk_mask_global(ConstParts<T> x, std::size_t k, Parts<T> out, Reduction* reduction) {
  detail::hard_global<Form::mask>(x, k, out, reduction);
}
template <class T>
void hard_topk_mag_global(ConstParts<T> x, std::size_t k, Parts<T> out, Reduction* reduction) {
  detail::hard_global<Form::magnitude>(x, k, out, reduction);
}
template <class T>
void soft_topk_mask_global(ConstParts<T> x, std::size_t k, Parts<T> out, const SoftTopkOptions& options,
                           RowState* state, Reduction* reduction) {
  detail::soft_global(x, k, out, options, state, reduction, Form::mask);
}
template <class T>
void soft_topk_mag_global(ConstParts<T> x, std::size_t k, Parts<T> out, const SoftTopkOptions& options,
                          RowState* state, Reduction* reduction) {
  detail::soft_global(x, k, out, options, state, reduction, Form::magnitude);
}
template <class T>
void soft_topk_mask_global_vjp(ConstParts<T> x, const RowState& state, const SoftTopkOptions& options,
                               ConstParts<T> g, Parts<T> grad_x, Reduction* reduction) {
  detail::jacobian_product(x, state, options, g, grad_x, Form::mask, true, reduction);
}
template <class T>
void soft_topk_mask_global_jvp(ConstParts<T> x, const RowState& state, const SoftTopkOptions& options,
                               ConstParts<T> dx, Parts<T> dout, Reduction* reduction) {
  detail::jacobian_product(x, state, options, dx, dout, Form::mask, false, reduction);
}
template <class T>
void soft_topk_mag_global_vjp(ConstParts<T> x, const RowState& state, const SoftTopkOptions& options,
                              ConstParts<T> g, Parts<T> grad_x, Reduction* reduction) {
  detail::jacobian_product(x, state, options, g, grad_x, Form::magnitude, true, reduction);
}
template <class T>
void soft_topk_mag_global_jvp(ConstParts<T> x, const RowState& state, const SoftTopkOptions& options,
                              ConstParts<T> dx, Parts<T> dout, Reduction* reduction) {
  detail::jacobian_product(x, state, options, dx, dout, Form::magnitude, false, reduction);
}

#define SPARSETOPK_INSTANTIATE(T)                                                                              \
  template void hard_topk_mask_global<T>(ConstParts<T>, std::size_t, Parts<T>, Reduction*);                     \
  template void hard_topk_mag_global<T>(ConstParts<T>, std::size_t, Parts<T>, Reduction*);                      \
  template void soft_topk_mask_global<T>(ConstParts<T>, std::size_t, Parts<T>, const SoftTopkOptions&,           \
                                         RowState*, Reduction*);                                                 \
  template void soft_topk_mag_global<T>(ConstParts<T>, std::size_t, Parts<T>, const SoftTopkOptions&, RowState*, \
                                        Reduction*);                                                             \
  template void soft_topk_mask_global_vjp<T>(ConstParts<T>, const RowState&, const SoftTopkOptions&,             \
                                             ConstParts<T>, Parts<T>, Reduction*);                               \
  template void soft_topk_mask_global_jvp<T>(ConstParts<T>, const RowState&, const SoftTopkOptions&,             \
                                             ConstParts<T>, Parts<T>, Reduction*);                               \
  template void soft_topk_mag_global_vjp<T>(ConstParts<T>, const RowState&, const SoftTopkOptions&,              \
                                            ConstParts<T>, Parts<T>, Reduction*);                                \
  template void soft_topk_mag_global_jvp<T>(ConstParts<T>, const RowState&, const SoftTopkOptions&,              \
                                            ConstParts<T>, Parts<T>, Reduction*);
SPARSETOPK_INSTANTIATE(float)
SPARSETOPK_INSTANTIATE(double)
#undef SPARSETOPK_INSTANTIATE

}  // namespace sparsetopk
