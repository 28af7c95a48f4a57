// The operators of SPEC.md: sort each row, solve its isotonic problem, map back.

#include "sparsetopk/topk.hpp"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cstdint>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <type_traits>

#include "band.hpp"
#include "band_solve.hpp"
#include "block_equation.hpp"
#include "hard_topk.hpp"
#include "parallel.hpp"
#include "root_finding.hpp"
#include "row_steps.hpp"
#include "row_window.hpp"
#include "sparsetopk/parallel.hpp"
#include "validate.hpp"
#include "workspace.hpp"

namespace sparsetopk {

Workspace::Workspace() : slots_(std::make_unique<Slots>()) {}
Workspace::~Workspace() = default;
Workspace::Workspace(Workspace&&) noexcept = default;
Workspace& Workspace::operator=(Workspace&&) noexcept = default;

namespace detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

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
  detail::WorkspaceSlots& slots = detail::WorkspaceAccess::slots(workspace ? *workspace : local.emplace());
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

// SPEC.md's hard operators on one row: its k-th entry in sorted order by
// selection, then hard_topk.hpp's rule for every entry.
template <Form F, class T>
void hard_topk_row(std::span<const T> row, std::size_t k, RowWorkspace& ws, std::span<T> out) {
  if (std::any_of(row.begin(), row.end(), hard_poisons_row<T>)) {
    std::fill(out.begin(), out.end(), hard_nan<T>());
    return;
  }
  const std::size_t n = row.size();
  if (k == 0 || k == n) {  // no k-th entry to compare with: none or all kept
    for (std::size_t i = 0; i < n; ++i) out[i] = hard_value(F, row[i], k == n);
    return;
  }
  load_entries(row, [](double v) { return sort_key(F, v); }, ws);
  const auto kth = ws.entries.begin() + static_cast<std::ptrdiff_t>(k - 1);
  std::nth_element(ws.entries.begin(), kth, ws.entries.end(), descending);
  for (std::size_t i = 0; i < n; ++i)
    out[i] = hard_value(F, row[i], hard_kept(static_cast<double>(sort_key(F, row[i])), i, *kth));
}

template <class T>
void fill_non_finite_row(std::span<T> out, RowState* state) {
  std::fill(out.begin(), out.end(), static_cast<T>(kNaN));
  if (state) *state = RowState{.gamma = kNaN, .block_weight = 0.0, .unchanged_from = kNaN};
}

// out_i = clip((x_i - tau) / l, 0, 1)^(q-1), tau the block value.
template <class T>
void soft_topk_mask_row(std::span<const T> row, std::size_t k, const BlockEquation& equation, Solver solver,
                        RowWorkspace& ws, const RowTeam& team, std::span<T> out, RowState* state) {
  if (!all_finite(row)) return fill_non_finite_row(out, state);
  const RowWindow window = select_window(row, k, identity, solver, equation, ws, team, out, [](T) { return T(1); });
  if (window.separated) return save_separated_row(state, window);
  BandBounds band;
  RowState near;
  const StraddlingBlock block = solve_mask_band(
      window, ws.s.data(), [&](std::size_t j) { return ws.entries[j].index; }, equation, solver, ws.blocks,
      out.data(), state != nullptr, [&](std::size_t i, double) { band.add(static_cast<double>(row[i]), i); }, near);
  save_row(state, block, window, ws.s.data(), band, near);
}

// out_i = sign(x_i) r_i with r_i = pow(u_i/l, q-1) + u_i, u_i = (|x_i| - gamma)_+.
template <class T>
void soft_topk_mag_row(std::span<const T> row, std::size_t k, const BlockEquation& equation, Solver solver,
                       RowWorkspace& ws, const RowTeam& team, std::span<T> out, RowState* state) {
  if (!all_finite(row)) return fill_non_finite_row(out, state);
  const RowWindow window = select_window(row, k, magnitude, solver, equation, ws, team, out, [](T v) { return v; });
  if (window.separated) return save_separated_row(state, window);
  BandBounds band;
  RowState near;
  const StraddlingBlock block = solve_mag_band(
      window, ws.s.data(), [&](std::size_t j) { return ws.entries[j].index; }, equation, solver, ws.blocks,
      row.data(), out.data(), state != nullptr,
      [&](std::size_t i, double) { band.add(std::abs(static_cast<double>(row[i])), i); }, near);
  save_row(state, block, window, ws.s.data(), band, near);
}

void check_soft_options(const SoftTopkOptions& options) {
  check_l(options.l);
  check_p(options.p);
  if (options.solver != Solver::automatic && options.solver != Solver::pav && options.solver != Solver::threshold)
    throw InvalidArgument("solver = " + std::to_string(static_cast<int>(options.solver)) + " is not a known solver");
}

template <class T, class RowSolver>
void soft_topk(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out, const SoftTopkOptions& options,
               std::span<RowState> state, Workspace* workspace, Form form, RowSolver row_solver) {
  check_soft_options(options);
  const BlockEquation equation(form, options.l, options.p);
  const Solver solver = options.solver == Solver::pav ? Solver::pav : Solver::threshold;
  const bool save = !state.empty();
  if (save) check_state_rows(state.size(), check_batch(x.size(), n, "x"));
  for_each_row(x, n, k, out, workspace, available_threads(),
               [&](std::size_t r, std::span<const T> row, std::span<T> out_row, RowWorkspace& ws,
                   const RowTeam& team) {
                 row_solver(row, k, equation, solver, ws, team, out_row, save ? &state[r] : nullptr);
               });
}

}  // namespace
}  // namespace detail

template <class T>
void hard_topk_mask(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out) {
  detail::for_each_row(x, n, k, out, nullptr, detail::available_threads(), [k](std::size_t, auto row, auto out_row, auto& ws, const auto&) {
    detail::hard_topk_row<Form::mask>(row, k, ws, out_row);
  });
}

template <class T>
void hard_topk_mag(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out) {
  detail::for_each_row(x, n, k, out, nullptr, detail::available_threads(), [k](std::size_t, auto row, auto out_row, auto& ws, const auto&) {
    detail::hard_topk_row<Form::magnitude>(row, k, ws, out_row);
  });
}

template <class T>
void soft_topk_mask(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                    const SoftTopkOptions& options, std::span<RowState> state, Workspace* workspace) {
  detail::soft_topk(x, n, k, out, options, state, workspace, Form::mask, detail::soft_topk_mask_row<T>);
}

template <class T>
void soft_topk_mag(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                   const SoftTopkOptions& options, std::span<RowState> state, Workspace* workspace) {
  detail::soft_topk(x, n, k, out, options, state, workspace, Form::magnitude,
                    detail::soft_topk_mag_row<T>);
}

#define SPARSETOPK_INSTANTIATE(T)                                                                        \
  template void hard_topk_mask<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>);           \
  template void hard_topk_mag<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>);            \
  template void soft_topk_mask<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>,            \
                                  const SoftTopkOptions&, std::span<RowState>, Workspace*);                    \
  template void soft_topk_mag<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>,             \
                                 const SoftTopkOptions&, std::span<RowState>, Workspace*);
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
