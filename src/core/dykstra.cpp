// Soft top-k for p = 2 by Dykstra's alternating projections (SPEC.md,
// "Dykstra's algorithm (p = 2)"): the CPU loop over rows (checks, threads,
// the sort); the per-row chain, projection and map back are dykstra_chain.hpp's.

#include "sparsetopk/dykstra.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "dykstra_chain.hpp"
#include "parallel.hpp"
#include "validate.hpp"

namespace sparsetopk {
namespace detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The scratch of one thread, sized before the threads start.
struct RowScratch {
  std::vector<SortedEntry> entries;  // the row sorted by key, descending
  std::vector<double> z, a;          // the point to project and the weights, sorted order
  std::size_t window;                // the widest reachable window
  std::vector<double> chain_memory;

  RowScratch(std::size_t n, std::size_t widest)
      : entries(n), z(n), a(n), window(widest), chain_memory(dykstra_chain_doubles(widest)) {}
  DykstraScratch view() { return {z, a, DykstraChain::over(chain_memory.data(), window)}; }
};

bool finite_row(auto row) {
  return std::all_of(row.begin(), row.end(), [](auto v) { return std::isfinite(v); });
}

// Solves one row: sort, then Dykstra's chain (dykstra_chain.hpp) on the
// sorted keys, which writes `out` and the row's state.
template <class T>
void solve_row(Form form, std::span<const T> row, std::size_t k, const DykstraOptions& options, RowScratch& ws,
               std::span<T> out, RowState* state) {
  if (!finite_row(row)) {
    std::fill(out.begin(), out.end(), static_cast<T>(kNaN));
    if (state) *state = RowState{.gamma = kNaN, .block_weight = 0.0, .unchanged_from = kNaN};
    return;
  }
  const std::size_t n = row.size();
  for (std::size_t i = 0; i < n; ++i) ws.entries[i] = {sort_key(form, static_cast<double>(row[i])), i};
  std::sort(ws.entries.begin(), ws.entries.begin() + static_cast<std::ptrdiff_t>(n), descending);
  DykstraScratch scratch = ws.view();
  dykstra_row(form, std::span<const SortedEntry>(ws.entries.data(), n), row, k, options.l, options.iterations,
              scratch, out, state);
}

template <class T>
void soft_topk_dykstra(Form form, std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                       const DykstraOptions& options, std::span<RowState> state) {
  check_l(options.l);
  check_iterations(static_cast<long long>(options.iterations));
  const std::size_t rows = check_batch(x.size(), n, "x");
  check_same_size(out.size(), x.size(), "out", "x");
  check_k(k, n);
  const std::size_t threads = plan_threads(rows, n);
  if (!state.empty()) check_state_rows(state.size(), rows);
  // all allocation happens here, before the threads start
  std::vector<RowScratch> scratch(threads, RowScratch(n, widest_window(n, options.iterations)));
  parallel_for(rows, threads, [&](std::size_t begin, std::size_t end, std::size_t slot) {
    for (std::size_t r = begin; r < end; ++r)
      solve_row<T>(form, x.subspan(r * n, n), k, options, scratch[slot], out.subspan(r * n, n),
                   state.empty() ? nullptr : &state[r]);
  });
}

}  // namespace
}  // namespace detail

template <class T>
void soft_topk_mask_dykstra(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                            const DykstraOptions& options, std::span<RowState> state) {
  detail::soft_topk_dykstra<T>(Form::mask, x, n, k, out, options, state);
}

template <class T>
void soft_topk_mag_dykstra(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                           const DykstraOptions& options, std::span<RowState> state) {
  detail::soft_topk_dykstra<T>(Form::magnitude, x, n, k, out, options, state);
}

#define SPARSETOPK_INSTANTIATE(T)                                                                            \
  template void soft_topk_mask_dykstra<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>,        \
                                          const DykstraOptions&, std::span<RowState>);                             \
  template void soft_topk_mag_dykstra<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>,         \
                                         const DykstraOptions&, std::span<RowState>);
SPARSETOPK_INSTANTIATE(float)
SPARSETOPK_INSTANTIATE(double)
#undef SPARSETOPK_INSTANTIATE

std::vector<double> soft_topk_mask_dykstra(const std::vector<double>& x, std::size_t k,
                                           const DykstraOptions& options) {
  std::vector<double> out(x.size());
  soft_topk_mask_dykstra<double>(x, x.size(), k, out, options);
  return out;
}

std::vector<double> soft_topk_mag_dykstra(const std::vector<double>& x, std::size_t k,
                                          const DykstraOptions& options) {
  std::vector<double> out(x.size());
  soft_topk_mag_dykstra<double>(x, x.size(), k, out, options);
  return out;
}

}  // namespace sparsetopk
