// The operators of SPEC.md: sort each row, solve its isotonic problem, map back.

#include "sparsetopk/topk.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>

#include "block_equation.hpp"
#include "parallel.hpp"
#include "root_finding.hpp"
#include "row_window.hpp"
#include "sparsetopk/parallel.hpp"
#include "validate.hpp"
#include "workspace.hpp"

namespace sparsetopk {

void ActiveBlocks::reset(std::size_t rows, std::size_t n, double l, double p, std::size_t chunks) {
  rows_ = rows;
  n_ = n;
  l_ = l;
  p_ = p;
  rows_data_.assign(rows, Row{});
  if (chunks_.size() < chunks) chunks_.resize(chunks);
  for (Chunk& chunk : chunks_) {
    chunk.index.clear();
    chunk.c.clear();
  }
}

void ActiveBlocks::set_row(std::size_t r, std::size_t chunk, std::size_t first, double gamma, double block_weight,
                           double unchanged_from) {
  rows_data_[r] = {gamma, block_weight, unchanged_from, chunk, first, chunk_size(chunk) - first};
}

void ActiveBlocks::to_dense(std::span<double> c, std::span<double> row_state) const {
  detail::check_same_size(c.size(), rows_ * n_, "c", "rows * n of the saved state");
  detail::check_same_size(row_state.size(), rows_ * row_state_size, "row_state", "rows * 3 of the saved state");
  for (std::size_t r = 0; r < rows_; ++r) {
    const Row& row = rows_data_[r];
    const std::span<double> c_row = c.subspan(r * n_, n_);
    std::fill(c_row.begin(), c_row.end(), std::isnan(row.gamma) ? std::numeric_limits<double>::quiet_NaN() : -1.0);
    const auto active = index(r);
    const auto weights = this->c(r);
    for (std::size_t a = 0; a < active.size(); ++a) c_row[active[a]] = weights[a];
    row_state[r * row_state_size] = row.gamma;
    row_state[r * row_state_size + 1] = row.block_weight;
    row_state[r * row_state_size + 2] = row.unchanged_from;
  }
}

void ActiveBlocks::assign_dense(std::size_t n, std::span<const double> c, std::span<const double> row_state) {
  const std::size_t rows = detail::check_batch(c.size(), n, "c");
  detail::check_same_size(row_state.size(), rows * row_state_size, "row_state", "3 * the rows of c");
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  reset(rows, n, kNaN, kNaN, 1);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t first = chunk_size(0);
    const std::span<const double> c_row = c.subspan(r * n, n);
    for (std::size_t i = 0; i < n; ++i)
      if (c_row[i] >= 0.0) append(0, i, c_row[i]);
    const double* state = row_state.data() + r * row_state_size;
    set_row(r, 0, first, state[0], state[1], state[2]);
  }
}

Workspace::Workspace() : slots_(std::make_unique<Slots>()) {}
Workspace::~Workspace() = default;
Workspace::Workspace(Workspace&&) noexcept = default;
Workspace& Workspace::operator=(Workspace&&) noexcept = default;

namespace detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <class T>
bool all_finite(std::span<const T> row) {
  bool finite = true;
  for (T v : row) finite &= (v - v == T(0));  // false for NaN and +-inf; no early exit, so it vectorizes
  return finite;
}

template <class T>
bool any_nan(std::span<const T> row) {
  return std::any_of(row.begin(), row.end(), [](T v) { return std::isnan(v); });
}

// Rows this long, fewer than the threads, are each split across the threads.
constexpr std::size_t kTeamRowSize = std::size_t{1} << 18;

// Checks the batch, then calls row_fn(r, x_row, out_row, scratch, team) for
// every row: rows in parallel, or one huge row after another with a team.
template <class T, class RowFn>
void for_each_row(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                  Workspace* workspace, std::size_t available, RowFn&& row_fn) {
  const std::size_t rows = check_batch(x.size(), n, "x");
  check_same_size(out.size(), x.size(), "out", "x");
  check_k(k, n);
  std::optional<Workspace> local;
  Workspace::Slots& slots = (workspace ? *workspace : local.emplace()).slots();
  if (n >= kTeamRowSize && rows < available) {
    slots.prepare(available);
    const RowTeam team{&slots, available};
    for (std::size_t r = 0; r < rows; ++r) row_fn(r, x.subspan(r * n, n), out.subspan(r * n, n), slots.rows[0], team);
    return;
  }
  const std::size_t threads = std::min(available, plan_threads(rows, n));
  slots.prepare(threads);
  parallel_for(rows, threads, [&](std::size_t begin, std::size_t end, std::size_t slot) {
    for (std::size_t r = begin; r < end; ++r)
      row_fn(r, x.subspan(r * n, n), out.subspan(r * n, n), slots.rows[slot], RowTeam{});
  });
}

constexpr Identity identity;
constexpr Magnitude magnitude;

template <class T, class Key>
void hard_topk_row(std::span<const T> row, std::size_t k, Key key, bool keep_value, RowWorkspace& ws,
                   std::span<T> out) {
  if (any_nan(row)) {
    std::fill(out.begin(), out.end(), static_cast<T>(kNaN));
    return;
  }
  std::fill(out.begin(), out.end(), T(0));
  load_entries(row, key, ws);
  const auto first = ws.entries.begin(), kth = first + static_cast<std::ptrdiff_t>(k);
  if (k < row.size()) std::nth_element(first, kth, ws.entries.end(), descending);
  for (auto e = first; e != kth; ++e) out[e->index] = keep_value ? row[e->index] : T(1);
}

// The block of the isotonic solution straddling window positions top-1 and
// top (SPEC.md, "Top-k structure"); empty ([top, top)) when every block is a
// singleton.
struct StraddlingBlock {
  std::size_t begin, end;
  double gamma;
  bool contains(std::size_t j) const { return j >= begin && j < end; }
};

// General p on a selected window: solve SPEC.md's scalar top-k equation for
// gamma directly (PAV would re-solve the growing block after every merge,
// O(m^2)), then read the block off gamma: the entries strictly inside the band.
StraddlingBlock solve_threshold_equation(const RowWindow& window, const BlockEquation& equation,
                                         const RowWorkspace& ws) {
  const std::size_t m = window.size, top = window.top;
  const double* s = ws.s.data();
  const double l = equation.l(), s_k = s[top - 1], s_next = s[top];
  const Regularizer& regularizer = equation.regularizer();
  std::size_t begin = 0, end = top;
  if (equation.form() == IsotonicForm::mask) {
    // sum_j clip((s_j - tau)/l, 0, 1)^(q-1) = top, with s_{k+1} - l <= tau < s_k
    const auto residual = [&](double tau, double* slope) {
      double f = -static_cast<double>(top), df = 0.0;
      for (std::size_t j = 0; j < m; ++j) {
        const double u = (s[j] - tau) / l;
        if (u >= 1.0) f += 1.0;
        else if (u > 0.0) f += regularizer.power(u), df -= regularizer.slope(u) / l;
      }
      *slope = df;
      return f;
    };
    // the output has kinks where an entry enters (tau = s_j) or saturates (tau = s_j - l)
    const auto f = [&](double tau) { double slope; return residual(tau, &slope); };
    double lo = s_next - l, hi = s_k, tau = 0.0;
    if (!narrow_to_smooth_piece(f, [&](std::size_t j) { return s[j]; }, m, lo, hi, tau) &&
        !narrow_to_smooth_piece(f, [&](std::size_t j) { return s[j] - l; }, m, lo, hi, tau))
      tau = find_decreasing_root(residual, lo, hi, 0.5 * (lo + hi));
    while (begin < m && s[begin] - tau >= l) ++begin;
    end = begin;
    while (end < m && (s[end] > tau || s[end] == s_k)) ++end;  // exactly, tau < s_k: ties of s_k are in
    // exactly, tau < s_end when f(s_end) < 0, even if tau rounded onto it: its ties are in
    if (end < m && f(s[end]) < 0.0)
      for (const double key = s[end]; end < m && s[end] == key;) ++end;
    if (end <= top) return {top, top, s_next};  // as in PAV, a block must straddle top-1 and top
    return {std::min(begin, top - 1), end, tau};
  }
  // sum_{j < top} min(pow((s_j - g)/l, q-1) - g, 0) + sum_{j >= top} pow((s_j - g)_+/l, q-1) = 0,
  // with g between the singleton value of s_k and s_k
  const auto residual = [&](double g, double* slope) {
    double f = 0.0, df = 0.0;
    for (std::size_t j = 0; j < m; ++j) {
      const double u = (s[j] - g) / l;
      if (j < top) {
        const double excess = regularizer.power(u) - g;
        if (excess < 0.0) f += excess, df -= regularizer.slope(u) / l + 1.0;
      } else if (u > 0.0) {
        f += regularizer.power(u), df -= regularizer.slope(u) / l;
      }
    }
    *slope = df;
    return f;
  };
  // kinks: where an entry below the top k enters (g = s_j) and where a top entry
  // leaves its singleton value (g = that value)
  const auto singleton = [&](std::size_t j) {
    return equation.solve(std::span<const double>(s + j, 1), BlockMoments::single(s[j], 1.0));
  };
  const auto f = [&](double g) { double slope; return residual(g, &slope); };
  double lo = singleton(top - 1), hi = s_k, gamma = 0.0;
  if (!narrow_to_smooth_piece(f, [&](std::size_t j) { return s[top + j]; }, m - top, lo, hi, gamma) &&
      !narrow_to_smooth_piece(f, singleton, top, lo, hi, gamma))
    gamma = find_decreasing_root(residual, lo, hi, 0.5 * (lo + hi));
  while (end < m && (s[end] > gamma || s[end] == s_k)) ++end;  // exactly, gamma < s_k: ties of s_k are in
  // exactly, gamma < s_end when f(s_end) < 0, even if gamma rounded onto it: its ties are in
  if (end < m && f(s[end]) < 0.0)
    for (const double key = s[end]; end < m && s[end] == key;) ++end;
  if (end == top) return {top, top, s_next};  // no entry below the top k is pulled in: no block
  while (begin < top - 1 && s[begin] != s_k && regularizer.power((s[begin] - gamma) / l) >= gamma) ++begin;
  return {begin, end, gamma};
}

StraddlingBlock solve_window(const RowWindow& window, const BlockEquation& equation, Solver solver,
                             RowWorkspace& ws) {
  const std::size_t m = window.size, top = window.top;
  const double next_key = top < m ? ws.s[top] : -kInf;
  if (top == 0 || top == m) return {top, top, next_key};
  if (solver == Solver::threshold && equation.regularizer().kind() == Regularizer::Kind::general)
    return solve_threshold_equation(window, equation, ws);
  const std::span<const double> s(ws.s.data(), m);
  pool_adjacent_violators(s, ws.topk_weights(m, top), equation, ws.blocks, /*topk_weights=*/true);
  const auto block = std::find_if(ws.blocks.begin(), ws.blocks.end(),
                                  [top](const PavBlock& b) { return b.end >= top; });
  if (block->end > top) return {block->begin, block->end, block->value};
  return {top, top, next_key};
}

// Records the state of row r for the derivatives.
void save_row(ActiveBlocks* blocks, std::size_t r, std::size_t first, const StraddlingBlock& block,
              const RowWindow& window, const RowWorkspace& ws) {
  if (!blocks) return;
  const std::size_t top = window.top;
  const double unchanged_from = block.begin > 0 ? ws.s[block.begin - 1] : window.above;
  const double block_weight = static_cast<double>(std::min(top, block.end) - std::min(block.begin, top));
  blocks->set_row(r, ws.slot, first, block.gamma, block_weight, unchanged_from);
}

template <class T>
void fill_non_finite_row(std::span<T> out, ActiveBlocks* blocks, std::size_t r, std::size_t slot) {
  std::fill(out.begin(), out.end(), static_cast<T>(kNaN));
  if (blocks) blocks->set_row(r, slot, blocks->chunk_size(slot), kNaN, 0.0, kNaN);
}

// Entries whose key lies within rounding of the threshold gamma: a double
// gamma does not resolve u_j = s_j - gamma for them, and where pow(u, q-1)
// rises steeply from 0 (p > 2, or entries tied at |s| >> l) their outputs
// depend on digits gamma does not have: an error of eps |gamma| in u_j moves
// pow(u_j, q-1) by (q-1) eps |gamma| / u_j relatively. They are the sorted
// positions j in [begin, end) with |s_j - gamma| <= 1e-6 |gamma| (+ DBL_MIN),
// outside which that error stays below 2e-10. `resolve` solves for them again in the offset
// d of the threshold from the nearest key s_ref, u_j = (s_j - s_ref) + d,
// where s_j - s_ref is exact for nearby keys.
class NearThreshold {
 public:
  NearThreshold(const RowWorkspace& ws, std::size_t begin, std::size_t end, double gamma)
      : ws_(ws), begin_(begin), end_(end), gamma_(gamma), tolerance_(1e-6 * std::abs(gamma) + DBL_MIN) {
    if (!std::isfinite(gamma)) return;  // k = n: no threshold
    for (std::size_t j = begin; j < end; ++j) {
      if (std::abs(ws.s[j] - gamma) > tolerance_) continue;
      if (count_ == 0 || std::abs(ws.s[j] - gamma) < std::abs(reference_ - gamma)) reference_ = ws.s[j];
      min_key_ = count_ == 0 ? ws.s[j] : std::min(min_key_, ws.s[j]);
      max_key_ = count_ == 0 ? ws.s[j] : std::max(max_key_, ws.s[j]);
      ++count_;
    }
  }
  bool empty() const { return count_ == 0; }
  bool contains(std::size_t j) const { return count_ > 0 && std::abs(ws_.s[j] - gamma_) <= tolerance_; }
  double count() const { return static_cast<double>(count_); }

  // Solves the near entries' share of the first-order condition,
  //   sum_j term(u_j) = owed(gamma) = clamp(a + b gamma, 0, cap * count), b >= 0
  // (the mask owes a constant; the magnitude's gamma W_B moves with gamma),
  // for gamma = s_ref - d, u_j = (s_j - s_ref) + d. term(u) rises from 0 at
  // u <= 0 and is capped at `cap`. Calls set(j, u_j, term(u_j)) for each near
  // entry. Tied near entries share owed equally (d by a fixed point: u_j = d
  // may underflow where the share does not).
  template <class Term, class Set>
  void resolve(const Regularizer& regularizer, double l, double a, double b, double cap, Term&& term,
               Set&& set) const {
    const auto owed = [&](double gamma) { return std::clamp(a + b * gamma, 0.0, cap * count()); };
    if (min_key_ == max_key_) {
      double share = owed(gamma_) / count();
      share = owed(reference_ - l * regularizer.inverse_power(share)) / count();
      for (std::size_t j = begin_; j < end_; ++j)
        if (contains(j)) set(j, l * regularizer.inverse_power(share), share);
      return;
    }
    // Solved from the key nearest gamma, then again from the key nearest that
    // solution: only that key's u_j needs full precision, the others' are
    // differences of distinct keys.
    double reference = reference_, d = solve_offset(regularizer, l, reference, owed, b, cap, term);
    std::size_t nearest = begin_;
    for (std::size_t j = begin_; j < end_; ++j)
      if (contains(j) && (!contains(nearest) ||
                          std::abs(ws_.s[j] - reference + d) < std::abs(ws_.s[nearest] - reference + d)))
        nearest = j;
    if (ws_.s[nearest] != reference) {
      reference = ws_.s[nearest];
      d = solve_offset(regularizer, l, reference, owed, b, cap, term);
    }
    // The entries tied at the reference share what the others leave: their
    // u_j = d may lie below what a double resolves (p large: every positive
    // d gives far too much), where the share still is exact.
    double rest = owed(reference - d), tied = 0.0;
    for (std::size_t j = begin_; j < end_; ++j)
      if (contains(j)) ws_.s[j] == reference ? tied += 1.0 : rest -= term(ws_.s[j] - reference + d);
    const double share = std::clamp(rest / tied, 0.0, cap);
    for (std::size_t j = begin_; j < end_; ++j) {
      if (!contains(j)) continue;
      if (ws_.s[j] == reference) set(j, l * regularizer.inverse_power(share), share);
      else set(j, ws_.s[j] - reference + d, term(ws_.s[j] - reference + d));
    }
  }

 private:
  // The offset d from `reference` at which the near entries' terms sum to owed(reference - d).
  template <class Owed, class Term>
  double solve_offset(const Regularizer& regularizer, double l, double reference, Owed&& owed, double b, double cap,
                      Term&& term) const {
    const auto residual = [&](double d, double* slope) {
      double f = owed(reference - d), df = -b;
      for (std::size_t j = begin_; j < end_; ++j) {
        if (!contains(j)) continue;
        const double u = ws_.s[j] - reference + d;
        f -= term(u);
        if (u > 0.0) df -= regularizer.slope(u / l) / l;
      }
      *slope = df;
      return f;
    };
    // at lo every term is 0; at hi every term is at least owed(reference - lo) / count
    const double lo = reference - max_key_;
    const double hi = reference - min_key_ + l * regularizer.inverse_power(std::min(owed(reference - lo) / count(), cap));
    return find_decreasing_root(residual, lo, hi, 0.5 * (lo + hi));
  }

  const RowWorkspace& ws_;
  std::size_t begin_, end_;
  double gamma_, tolerance_;
  double reference_ = 0.0, min_key_ = 0.0, max_key_ = 0.0;
  std::size_t count_ = 0;
};

// Whether the near entries must be solved again: the first-order condition's
// sum misses what it owes, or (p > 2) a block straddles the threshold.
bool needs_resolving(const NearThreshold& near, const Regularizer& regularizer, const StraddlingBlock& block,
                     double sum, double owed) {
  if (near.empty() || !std::isfinite(sum)) return false;
  return std::abs(sum - owed) > 1e-12 * std::abs(owed) || (regularizer.p() > 2.0 && block.begin < block.end);
}

// c_i = ((q-1)/l) (u_i/l)^(q-2) of SPEC.md's derivatives, u_over_l = u_i/l.
// Capped so that sums over a block stay finite: for p near 1 (or large p near
// u = 0) c overflows where the Jacobian does not, and the derivatives pivot on
// the largest c, so a capped c acts as an infinitely stiff entry.
double jacobian_weight(const Regularizer& regularizer, double u_over_l, double l) {
  constexpr double kMaxWeight = 1e280;
  return std::min(regularizer.slope(u_over_l) / l, kMaxWeight);
}

// out_i = clip((x_i - tau) / l, 0, 1)^(q-1), tau the block value.
template <class T>
void soft_topk_mask_row(std::size_t r, std::span<const T> row, std::size_t k, const BlockEquation& equation,
                        Solver solver, RowWorkspace& ws, const RowTeam& team, std::span<T> out,
                        ActiveBlocks* blocks) {
  if (!all_finite(row)) return fill_non_finite_row(out, blocks, r, ws.slot);
  const RowWindow window = select_window(row, k, identity, solver, equation, ws, team, out, [](T) { return T(1); });
  const StraddlingBlock block = solve_window(window, equation, solver, ws);
  const Regularizer& regularizer = equation.regularizer();
  const double l = equation.l();
  const std::size_t first = blocks ? blocks->chunk_size(ws.slot) : 0;
  const NearThreshold near(ws, 0, window.size, block.gamma);
  const auto append = [&](std::size_t j, double u) {  // u = u_j / l
    if (blocks && u > 0.0 && u < 1.0) blocks->append(ws.slot, ws.entries[j].index, jacobian_weight(regularizer, u, l));
  };
  double window_sum = 0.0, near_sum = 0.0;
  for (std::size_t j = 0; j < window.size; ++j) {
    const SortedEntry& e = ws.entries[j];
    double y = j < window.top ? 1.0 : 0.0;  // singleton blocks: y = w exactly
    if (block.contains(j)) {
      const double u = (e.key - block.gamma) / l;
      y = std::clamp(regularizer.power(u), 0.0, 1.0);
      if (!near.contains(j)) append(j, u);
    }
    out[e.index] = static_cast<T>(y);
    window_sum += y;
    if (near.contains(j)) near_sum += y;
  }
  // the window's outputs sum to its share of k; the near entries take what the others leave
  const double top = static_cast<double>(window.top);
  if (needs_resolving(near, regularizer, block, window_sum, top)) {
    near.resolve(regularizer, l, top - (window_sum - near_sum), 0.0, 1.0,
                 [&](double u) { return std::clamp(regularizer.power(u / l), 0.0, 1.0); },
                 [&](std::size_t j, double, double y) {
                   out[ws.entries[j].index] = static_cast<T>(y);
                   if (blocks && y > 0.0 && y < 1.0)  // u_j / l read back from y (it may underflow to 0)
                     blocks->append(ws.slot, ws.entries[j].index,
                                    jacobian_weight(regularizer, regularizer.inverse_power(y), l));
                 });
  } else {
    for (std::size_t j = 0; j < window.size; ++j)
      if (near.contains(j) && block.contains(j)) append(j, (ws.s[j] - block.gamma) / l);
  }
  save_row(blocks, r, first, block, window, ws);
}

// out_i = sign(x_i) r_i with r_i = pow(u_i/l, q-1) + u_i, u_i = (|x_i| - gamma)_+.
template <class T>
void soft_topk_mag_row(std::size_t r, std::span<const T> row, std::size_t k, const BlockEquation& equation,
                       Solver solver, RowWorkspace& ws, const RowTeam& team, std::span<T> out,
                       ActiveBlocks* blocks) {
  if (!all_finite(row)) return fill_non_finite_row(out, blocks, r, ws.slot);
  const RowWindow window = select_window(row, k, magnitude, solver, equation, ws, team, out, [](T v) { return v; });
  const StraddlingBlock block = solve_window(window, equation, solver, ws);
  const Regularizer& regularizer = equation.regularizer();
  const double l = equation.l();
  const std::size_t first = blocks ? blocks->chunk_size(ws.slot) : 0;
  const NearThreshold near(ws, block.begin, block.end, block.gamma);
  // r_j = pow(u_j/l, q-1) + u_j, at most |x_j|
  const auto write = [&](std::size_t j, double u, double power) {
    const SortedEntry& e = ws.entries[j];
    u = std::max(u, 0.0);
    const double r_j = std::min(power + u, e.key);
    out[e.index] = static_cast<T>(std::copysign(r_j, static_cast<double>(row[e.index])));
    if (blocks && (u > 0.0 || power > 0.0))  // (u_j / l read back from the power when u underflowed)
      blocks->append(ws.slot, e.index, jacobian_weight(regularizer, u > 0.0 ? u / l : regularizer.inverse_power(power), l));
  };
  const auto power_of = [&](double u) { return regularizer.power(std::max(u, 0.0) / l); };
  double power_sum = 0.0, near_power_sum = 0.0;
  for (std::size_t j = 0; j < window.size; ++j) {
    const SortedEntry& e = ws.entries[j];
    if (!block.contains(j)) {
      out[e.index] = j < window.top ? row[e.index] : T(0);  // singleton blocks: x_i unchanged, or 0
      continue;
    }
    const double u = std::max(e.key - block.gamma, 0.0), power = regularizer.power(u / l);
    power_sum += power;
    if (near.contains(j)) near_power_sum += power;
    else write(j, u, power);
  }
  // the block's condition: sum_B pow((s_j - gamma)/l, q-1) = gamma W_B
  const double block_weight = static_cast<double>(std::min(window.top, block.end) - std::min(block.begin, window.top));
  const double owed = block.gamma * block_weight;
  if (needs_resolving(near, regularizer, block, power_sum, owed)) {
    // gamma W_B less the others' powers
    near.resolve(regularizer, l, -(power_sum - near_power_sum), block_weight, kInf, power_of, write);
  } else {
    for (std::size_t j = block.begin; j < block.end; ++j)
      if (near.contains(j)) write(j, ws.s[j] - block.gamma, power_of(ws.s[j] - block.gamma));
  }
  save_row(blocks, r, first, block, window, ws);
}

void check_soft_options(const SoftTopkOptions& options) {
  check_l(options.l);
  check_p(options.p);
  if (options.solver == Solver::generic || options.solver == Solver::dykstra)
    throw InvalidArgument(std::string("solver = ") + (options.solver == Solver::generic ? "generic" : "dykstra") +
                          " is a solver of the torch operators only (soft_topk_*_dykstra: dykstra.hpp)");
  if (options.solver != Solver::automatic && options.solver != Solver::pav && options.solver != Solver::threshold)
    throw InvalidArgument("solver = " + std::to_string(static_cast<int>(options.solver)) + " is not a known solver");
}

template <class T, class RowSolver>
void soft_topk(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out, const SoftTopkOptions& options,
               ActiveBlocks* blocks, Workspace* workspace, IsotonicForm form, RowSolver row_solver) {
  check_soft_options(options);
  const BlockEquation equation(form, options.l, options.p);
  const Solver solver = options.solver == Solver::pav ? Solver::pav : Solver::threshold;
  const std::size_t threads = available_threads();  // read once: the chunks of `blocks` follow it
  if (blocks) blocks->reset(check_batch(x.size(), n, "x"), n, options.l, options.p, threads);
  for_each_row(x, n, k, out, workspace, threads,
               [&](std::size_t r, std::span<const T> row, std::span<T> out_row, RowWorkspace& ws,
                   const RowTeam& team) { row_solver(r, row, k, equation, solver, ws, team, out_row, blocks);
               });
}

}  // namespace
}  // namespace detail

template <class T>
void hard_topk_mask(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out) {
  detail::for_each_row(x, n, k, out, nullptr, detail::available_threads(), [k](std::size_t, auto row, auto out_row, auto& ws, const auto&) {
    detail::hard_topk_row(row, k, detail::identity, false, ws, out_row);
  });
}

template <class T>
void hard_topk_mag(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out) {
  detail::for_each_row(x, n, k, out, nullptr, detail::available_threads(), [k](std::size_t, auto row, auto out_row, auto& ws, const auto&) {
    detail::hard_topk_row(row, k, detail::magnitude, true, ws, out_row);
  });
}

template <class T>
void soft_topk_mask(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                    const SoftTopkOptions& options, ActiveBlocks* blocks, Workspace* workspace) {
  detail::soft_topk(x, n, k, out, options, blocks, workspace, IsotonicForm::mask, detail::soft_topk_mask_row<T>);
}

template <class T>
void soft_topk_mag(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                   const SoftTopkOptions& options, ActiveBlocks* blocks, Workspace* workspace) {
  detail::soft_topk(x, n, k, out, options, blocks, workspace, IsotonicForm::magnitude,
                    detail::soft_topk_mag_row<T>);
}

#define SPARSETOPK_INSTANTIATE(T)                                                                        \
  template void hard_topk_mask<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>);           \
  template void hard_topk_mag<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>);            \
  template void soft_topk_mask<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>,            \
                                  const SoftTopkOptions&, ActiveBlocks*, Workspace*);                    \
  template void soft_topk_mag<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>,             \
                                 const SoftTopkOptions&, ActiveBlocks*, Workspace*);
SPARSETOPK_INSTANTIATE(float)
SPARSETOPK_INSTANTIATE(double)
#undef SPARSETOPK_INSTANTIATE

namespace {
template <class Operator>
std::vector<double> one_row(const std::vector<double>& x, Operator op) {
  std::vector<double> out(x.size());
  op(std::span<const double>(x), x.size(), std::span<double>(out));
  return out;
}
}  // namespace

std::vector<double> hard_topk_mask(const std::vector<double>& x, std::size_t k) {
  return one_row(x, [k](auto in, std::size_t n, auto out) { hard_topk_mask<double>(in, n, k, out); });
}
std::vector<double> hard_topk_mag(const std::vector<double>& x, std::size_t k) {
  return one_row(x, [k](auto in, std::size_t n, auto out) { hard_topk_mag<double>(in, n, k, out); });
}
std::vector<double> soft_topk_mask(const std::vector<double>& x, std::size_t k, const SoftTopkOptions& options) {
  return one_row(x, [&](auto in, std::size_t n, auto out) { soft_topk_mask<double>(in, n, k, out, options); });
}
std::vector<double> soft_topk_mag(const std::vector<double>& x, std::size_t k, const SoftTopkOptions& options) {
  return one_row(x, [&](auto in, std::size_t n, auto out) { soft_topk_mag<double>(in, n, k, out, options); });
}

}  // namespace sparsetopk
