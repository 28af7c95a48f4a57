// The smoothed top-k sum and the top-k loss (SPEC.md): the soft mask of each
// row from topk.cpp, then the per-row values of row/topk_sum.hpp.

#include "sparsetopk/topk_loss.hpp"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "parallel.hpp"
#include "topk_sum.hpp"
#include "validate.hpp"

namespace sparsetopk {
namespace detail {
namespace {

// Runs body(r) for every row in parallel.
template <class Body>
void for_rows(std::size_t rows, std::size_t n, Body&& body) {
  parallel_for(rows, plan_threads(rows, n), [&](std::size_t begin, std::size_t end, std::size_t) {
    for (std::size_t r = begin; r < end; ++r) body(r);
  });
}

// x without entry target[r] in each row: rows of n - 1 entries.
template <class T>
void copy_without_targets(std::span<const T> x, std::size_t n, std::span<const std::int64_t> target,
                          std::span<T> rest) {
  for_rows(target.size(), n, [&](std::size_t r) {
    const T* row = x.data() + r * n;
    T* out = rest.data() + r * (n - 1);
    const auto t = static_cast<std::size_t>(target[r]);
    std::copy(row, row + t, out);
    std::copy(row + t + 1, row + n, out + t);
  });
}

}  // namespace
}  // namespace detail

template <class T>
void topk_sum(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> value, const SoftTopkOptions& options,
              std::span<T> mask, std::span<RowState> state, Workspace* workspace) {
  const std::size_t rows = detail::check_batch(x.size(), n, "x");
  detail::check_same_size(value.size(), rows, "value", "x's rows");
  if (!mask.empty()) detail::check_same_size(mask.size(), x.size(), "mask", "x");
  std::vector<T> own_mask;
  if (mask.empty()) {
    own_mask.resize(x.size());
    mask = own_mask;
  }
  soft_topk_mask<T>(x, n, k, mask, options, state, workspace);  // checks k, l, p and state
  detail::for_rows(rows, n, [&](std::size_t r) {
    value[r] = static_cast<T>(detail::topk_sum_value(x.data() + r * n, mask.data() + r * n, n, options.l, options.p));
  });
}

template <class T>
void topk_loss(std::span<const T> x, std::size_t n, std::span<const std::int64_t> target, std::size_t k,
               std::span<T> loss, const SoftTopkOptions& options, std::span<T> grad, Workspace* workspace) {
  const std::size_t rows = detail::check_batch(x.size(), n, "x");
  check_k(k, n, /*least=*/1);
  detail::check_same_size(target.size(), rows, "target", "x's rows");
  detail::check_same_size(loss.size(), rows, "loss", "x's rows");
  if (!grad.empty()) detail::check_same_size(grad.size(), x.size(), "grad", "x");
  for (std::size_t r = 0; r < rows; ++r) check_target(target[r], n, "target[" + std::to_string(r) + "]");
  if (rows == 0) return;
  std::vector<T> mask(x.size()), rest(rows * (n - 1)), rest_mask(rest.size());
  soft_topk_mask<T>(x, n, k, mask, options, {}, workspace);  // checks l and p
  detail::copy_without_targets(x, n, target, std::span<T>(rest));
  if (n > 1) soft_topk_mask<T>(rest, n - 1, k - 1, rest_mask, options, {}, workspace);
  detail::for_rows(rows, n, [&](std::size_t r) {
    loss[r] = static_cast<T>(detail::topk_loss_row(x.data() + r * n, mask.data() + r * n,
                                                   rest_mask.data() + r * (n - 1), n,
                                                   static_cast<std::size_t>(target[r]), options.l, options.p,
                                                   grad.empty() ? nullptr : grad.data() + r * n));
  });
}

#define SPARSETOPK_INSTANTIATE(T)                                                                                   \
  template void topk_sum<T>(std::span<const T>, std::size_t, std::size_t, std::span<T>, const SoftTopkOptions&,    \
                            std::span<T>, std::span<RowState>, Workspace*);                                         \
  template void topk_loss<T>(std::span<const T>, std::size_t, std::span<const std::int64_t>, std::size_t,          \
                             std::span<T>, const SoftTopkOptions&, std::span<T>, Workspace*);
SPARSETOPK_INSTANTIATE(float)
SPARSETOPK_INSTANTIATE(double)
#undef SPARSETOPK_INSTANTIATE

}  // namespace sparsetopk
