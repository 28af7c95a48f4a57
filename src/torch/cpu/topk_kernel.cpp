// CPU kernels: view x as a row-major batch of rows along `dim`, call the core
// of <sparsetopk/topk.hpp> on the whole batch at once, and map the result back.
// No solver logic lives here (solver "generic" hands the call to the ATen
// implementation, generic/generic_kernel.hpp; "dykstra" calls the core's
// dykstra.hpp). Each calling thread keeps one core Workspace, so repeated
// calls allocate only their output tensors (and row_state). When
// `dim` is the last axis of a contiguous input nothing is copied or viewed:
// these calls take microseconds on small inputs, and every extra tensor is a
// noticeable part of them.

#include <sparsetopk/dykstra.hpp>
#include <sparsetopk/errors.hpp>
#include <sparsetopk/parallel.hpp>
#include <sparsetopk/topk.hpp>
#include <sparsetopk/topk_loss.hpp>

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstddef>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "checks.hpp"
#include "generic/generic_kernel.hpp"
#include "ops.hpp"
#include "register_kernels.hpp"
#include "spans.hpp"

namespace sparsetopk::torch::detail {
namespace {

// A new contiguous CPU tensor. at::detail::empty_cpu, not at::empty: this
// runs inside the CPU kernel already, and each trip through the dispatcher
// is a noticeable part of a call on a small input.
at::Tensor new_tensor(c10::IntArrayRef sizes, at::ScalarType type) {
  return at::Tensor(at::detail::empty_cpu(sizes, type));
}

// `t` as a contiguous tensor of dtype `type` (itself if it already is one).
// Tensor::to(..., MemoryFormat::Contiguous) is not enough: it may alias a
// permuted or expanded view whose suggested memory format is "contiguous".
at::Tensor contiguous_as(const at::Tensor& t, at::ScalarType type) {
  if (t.scalar_type() == type && t.is_contiguous()) return t;
  return new_tensor(t.sizes(), type).copy_(t);
}

// Whether the slices along the (wrapped) dim of t are its rows as laid out:
// dim is the last axis of a tensor of at least one dimension. Then no view is
// needed to move it last (movedim makes one even when it moves nothing).
bool dim_is_last(const at::Tensor& t, int64_t dim) { return t.dim() >= 1 && dim == t.dim() - 1; }

// t with axis `dim` moved last, contiguous, in dtype `type`: rows of n = slice_size(t, dim) entries.
at::Tensor to_rows(const at::Tensor& t, int64_t dim, at::ScalarType type) {
  if (dim_is_last(t, dim)) return contiguous_as(t, type);
  return contiguous_as(t.dim() == 0 ? t.reshape({1}) : t.movedim(dim, -1), type);
}

// The inverse of to_rows for a tensor shaped like `like`: contiguous, in dtype `type`.
at::Tensor from_rows(const at::Tensor& rows, const at::Tensor& like, int64_t dim, at::ScalarType type) {
  if (dim_is_last(like, dim)) return contiguous_as(rows, type);
  return contiguous_as(like.dim() == 0 ? rows.reshape({}) : rows.movedim(-1, dim), type);
}

// row_state (ops.hpp) from its rows layout [..., RowState::size].
at::Tensor row_state_from_rows(const at::Tensor& rows, const at::Tensor& x, int64_t dim) {
  if (dim_is_last(x, dim)) return rows;
  return x.dim() == 0 ? rows.reshape({kRowStateSize}) : contiguous_as(rows.movedim(-1, dim), at::kDouble);
}

// Calls body(T{}) with T the C++ type of a float or double tensor; forwards the
// core's InvalidArgument (its message starts with "sparsetopk: ") as c10::Error.
template <class Body>
void with_core(const at::Tensor& rows, Body&& body) {
  try {
    if (rows.scalar_type() == at::kDouble) body(double{});
    else body(float{});
  } catch (const InvalidArgument& error) {
    TORCH_CHECK(false, error.what());
  }
}

// The core's reusable scratch, one per calling thread.
struct CoreScratch {
  Workspace workspace;
};
CoreScratch& scratch() {
  thread_local CoreScratch instance;
  return instance;
}

// The core's threads for a call: at most torch's intra-op thread count
// (torch.set_num_threads applies; a call inside one of torch's parallel regions
// is one of many already and gets one).
sparsetopk::ThreadLimit torch_thread_limit() {
  return sparsetopk::ThreadLimit(
      at::in_parallel_region() ? 1 : static_cast<std::size_t>(std::max(at::get_num_threads(), 1)));
}

// Whether at::parallel_for runs on torch's intra-op pool here: always with its
// native pool, and with its OpenMP one (torch's Linux builds) when this file is
// built with OpenMP (CMake links OpenMP::OpenMP_CXX; at run time the libgomp
// that torch loaded serves it). Otherwise at::parallel_for would run serially,
// and the core starts threads of its own instead.
#if AT_PARALLEL_NATIVE || (AT_PARALLEL_OPENMP && defined(_OPENMP))
constexpr bool kTorchPoolRunsParts = true;
#else
constexpr bool kTorchPoolRunsParts = false;
#endif

// Rows this long are each split across the core's own threads (the core's team
// of threads for a huge row, sparsetopk::detail in topk.cpp): kept for them.
constexpr int64_t kCoreTeamRowSize = int64_t{1} << 18;

// The least work worth a part on another of torch's threads: 4096 entries
// (256x64 runs in two parts with 2 threads, 64x8 in one; measured with
// bench/bench_torch_small.py, 2^8 gained nothing on 64x8). Lower than the
// 2^14 of the core's plan_threads, whose threads are started per call.
constexpr int64_t kMinEntriesPerPart = int64_t{1} << 12;

// Calls part(begin, end, scratch) on ranges of rows covering [0, rows), rows of
// n entries: in parts on torch's intra-op threads, as torch's own operators run
// (no thread started per call, none competing with torch's idle spinning ones),
// each part with its thread's CoreScratch and the core on that thread alone;
// or, without that pool or for huge rows, in one part on this thread with the
// core's threads capped at torch's count.
template <class Part>
void for_row_parts(int64_t rows, int64_t n, Part&& part) {
  if (rows <= 0) return;
  if (kTorchPoolRunsParts && n < kCoreTeamRowSize) {
    const int64_t rows_per_part = std::max<int64_t>(1, kMinEntriesPerPart / std::max<int64_t>(n, 1));
    at::parallel_for(0, rows, rows_per_part, [&](int64_t begin, int64_t end) {
      const sparsetopk::ThreadLimit alone(1);
      part(begin, end, scratch());
    });
    return;
  }
  const auto limit = torch_thread_limit();
  part(0, rows, scratch());
}

// Rows [begin, end) of a span over a batch of rows of `width` entries.
template <class T>
std::span<T> row_range(std::span<T> all, int64_t begin, int64_t end, std::size_t width) {
  return all.subspan(static_cast<std::size_t>(begin) * width, static_cast<std::size_t>(end - begin) * width);
}

// The core's soft operator (or its Dykstra, choice.iterations > 0) on a batch of rows.
template <class T>
void core_soft_topk(Form form, std::span<const T> rows, std::size_t n, std::size_t k, std::span<T> out, double l,
                    double p, const SolverChoice& choice, std::span<RowState> state, Workspace* workspace) {
  if (choice.solver == Solver::dykstra) {
    const DykstraOptions options{l, static_cast<std::size_t>(choice.iterations)};
    if (form == Form::mask) sparsetopk::soft_topk_mask_dykstra<T>(rows, n, k, out, options, state);
    else sparsetopk::soft_topk_mag_dykstra<T>(rows, n, k, out, options, state);
    return;
  }
  const SoftTopkOptions options{l, p, core_solver(choice.solver)};
  if (form == Form::mask) sparsetopk::soft_topk_mask<T>(rows, n, k, out, options, state, workspace);
  else sparsetopk::soft_topk_mag<T>(rows, n, k, out, options, state, workspace);
}

// The soft operator: (out, row_state), row_state only with `save` (else undefined).
std::tuple<at::Tensor, at::Tensor> soft_topk(Form form, const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                     c10::string_view solver, std::optional<int64_t> num_iter, bool save) {
  const char* op = op_name(form, /*soft=*/true);
  check_input(op, x);
  dim = wrap_dim(op, x, dim);
  const int64_t n = slice_size(x, dim);
  check_k(op, k, n, dim);
  check_l_p(op, l, p);
  const SolverChoice choice = choose_solver(op, solver, p, num_iter);
  if (choice.solver == Solver::generic) return soft_topk_by_rows(generic_rows, form, x, k, l, p, dim, choice, save);

  const at::Tensor rows = to_rows(x, dim, compute_type(x.scalar_type()));
  at::Tensor out = new_tensor(rows.sizes(), rows.scalar_type());
  at::Tensor state_rows;
  if (save) {
    const auto row_sizes = rows.sizes();
    at::DimVector state_sizes(row_sizes.begin(), row_sizes.end() - 1);
    state_sizes.push_back(kRowStateSize);
    state_rows = new_tensor(state_sizes, at::kDouble);
  }
  const auto row_n = static_cast<std::size_t>(n), kept = static_cast<std::size_t>(k);
  with_core(rows, [&](auto zero) {
    using T = decltype(zero);
    const int64_t batch = n > 0 ? rows.numel() / n : 0;
    for_row_parts(batch, n, [&](int64_t begin, int64_t end, CoreScratch& core) {
      const std::span<RowState> part_state = save ? row_range(state_span(state_rows), begin, end, 1)
                                                  : std::span<RowState>();
      core_soft_topk<T>(form, row_range(in_span<T>(rows), begin, end, row_n), row_n, kept,
                        row_range(out_span<T>(out), begin, end, row_n), l, p, choice, part_state, &core.workspace);
    });
  });
  at::Tensor result = from_rows(out, x, dim, x.scalar_type());
  if (!save) return {result, at::Tensor()};
  if (rows.numel() == 0 && state_rows.numel() > 0) {  // slices of 0 entries: no block, no threshold, no band
    const RowState none{.gamma = -std::numeric_limits<double>::infinity(), .block_weight = 0.0,
                        .unchanged_from = std::numeric_limits<double>::infinity()};
    std::fill(state_span(state_rows).begin(), state_span(state_rows).end(), none);
  }
  return {result, row_state_from_rows(state_rows, x, dim)};
}

at::Tensor hard_topk(Form form, const at::Tensor& x, int64_t k, int64_t dim) {
  const char* op = op_name(form, /*soft=*/false);
  check_input(op, x);
  dim = wrap_dim(op, x, dim);
  const int64_t n = slice_size(x, dim);
  check_k(op, k, n, dim);

  const at::Tensor rows = to_rows(x, dim, compute_type(x.scalar_type()));
  at::Tensor out = new_tensor(rows.sizes(), rows.scalar_type());
  const auto row_n = static_cast<std::size_t>(n), kept = static_cast<std::size_t>(k);
  with_core(rows, [&](auto zero) {
    using T = decltype(zero);
    for_row_parts(n > 0 ? rows.numel() / n : 0, n, [&](int64_t begin, int64_t end, CoreScratch&) {
      const auto in = row_range(in_span<T>(rows), begin, end, row_n);
      const auto part_out = row_range(out_span<T>(out), begin, end, row_n);
      if (form == Form::mask) sparsetopk::hard_topk_mask<T>(in, row_n, kept, part_out);
      else sparsetopk::hard_topk_mag<T>(in, row_n, kept, part_out);
    });
  });
  return from_rows(out, x, dim, x.scalar_type());
}

// J^T v (transpose) or J v of the soft operator at the forward pass on x that
// left row_state, with its l and p. The result has v's shape and dtype.
at::Tensor jacobian_product(Form form, bool transpose, const at::Tensor& v, const at::Tensor& x,
                            const at::Tensor& row_state, double l, double p, int64_t dim) {
  dim = check_product(form, transpose, /*cpu=*/true, v, x, row_state, l, p, dim);
  const at::ScalarType type = compute_type(at::promote_types(v.scalar_type(), x.scalar_type()));
  if (v.numel() == 0) return at::zeros_like(v, at::MemoryFormat::Contiguous);

  const int64_t n = slice_size(v, dim);
  const at::Tensor v_rows = to_rows(v, dim, type), x_rows = to_rows(x, dim, type);
  const at::Tensor state_rows =
      v.dim() == 0 ? row_state.reshape({1, kRowStateSize}) : to_rows(row_state, dim, at::kDouble);
  at::Tensor result = new_tensor(v_rows.sizes(), v_rows.scalar_type());
  const auto row_n = static_cast<std::size_t>(n);
  const SoftTopkOptions options{l, p};
  with_core(v_rows, [&](auto zero) {
    using T = decltype(zero);
    for_row_parts(n > 0 ? v_rows.numel() / n : 0, n, [&](int64_t begin, int64_t end, CoreScratch&) {
      const auto x_part = row_range(in_span<T>(x_rows), begin, end, row_n);
      const auto state_part = row_range(state_span(state_rows), begin, end, 1);
      const auto v_part = row_range(in_span<T>(v_rows), begin, end, row_n);
      const auto part_result = row_range(out_span<T>(result), begin, end, row_n);
      if (form == Form::mask)  // J is symmetric: J^T v = J v
        sparsetopk::soft_topk_mask_vjp<T>(x_part, row_n, state_part, options, v_part, part_result);
      else if (transpose)
        sparsetopk::soft_topk_mag_vjp<T>(x_part, row_n, state_part, options, v_part, part_result);
      else
        sparsetopk::soft_topk_mag_jvp<T>(x_part, row_n, state_part, options, v_part, part_result);
    });
  });
  return from_rows(result, v, dim, v.scalar_type());
}

// The sizes of x without the wrapped dim (a 0-d x: none): the shape of a value per slice.
std::vector<int64_t> sizes_without(const at::Tensor& x, int64_t dim) {
  std::vector<int64_t> sizes = x.sizes().vec();
  if (x.dim() > 0) sizes.erase(sizes.begin() + dim);
  return sizes;
}

// topk_sum: (value, mask, row_state); mask and row_state only with `save`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_sum(const at::Tensor& x, int64_t k, double l, double p,
                                                        int64_t dim, bool save) {
  const char* op = "topk_sum";
  check_input(op, x);
  dim = wrap_dim(op, x, dim);
  const int64_t n = slice_size(x, dim);
  check_k(op, k, n, dim);
  check_l_p(op, l, p);
  const at::Tensor rows = to_rows(x, dim, compute_type(x.scalar_type()));
  at::Tensor value = at::zeros(sizes_without(x, dim), rows.options());  // a slice of 0 entries sums to 0
  at::Tensor mask = new_tensor(rows.sizes(), rows.scalar_type());
  at::DimVector state_sizes(rows.sizes().begin(), rows.sizes().end() - 1);
  state_sizes.push_back(kRowStateSize);
  at::Tensor state_rows = save ? new_tensor(state_sizes, at::kDouble) : at::Tensor();
  const auto row_n = static_cast<std::size_t>(n), kept = static_cast<std::size_t>(k);
  const SoftTopkOptions options{l, p};
  with_core(rows, [&](auto zero) {
    using T = decltype(zero);
    for_row_parts(n > 0 ? rows.numel() / n : 0, n, [&](int64_t begin, int64_t end, CoreScratch& core) {
      sparsetopk::topk_sum<T>(row_range(in_span<T>(rows), begin, end, row_n), row_n, kept,
                              row_range(out_span<T>(value), begin, end, 1), options,
                              row_range(out_span<T>(mask), begin, end, row_n),
                              save ? row_range(state_span(state_rows), begin, end, 1) : std::span<RowState>(),
                              &core.workspace);
    });
  });
  value = value.to(x.scalar_type());
  if (!save) return {value, at::Tensor(), at::Tensor()};
  if (n == 0 && state_rows.numel() > 0) {  // as soft_topk: slices of 0 entries have no block
    const RowState none{.gamma = -std::numeric_limits<double>::infinity(), .block_weight = 0.0,
                        .unchanged_from = std::numeric_limits<double>::infinity()};
    std::fill(state_span(state_rows).begin(), state_span(state_rows).end(), none);
  }
  return {value, from_rows(mask, x, dim, x.scalar_type()), row_state_from_rows(state_rows, x, dim)};
}

at::Tensor topk_sum_kernel(const at::Tensor& x, int64_t k, double l, double p, int64_t dim) {
  return std::get<0>(topk_sum(x, k, l, p, dim, /*save=*/false));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_sum_forward_kernel(const at::Tensor& x, int64_t k, double l,
                                                                       double p, int64_t dim) {
  return topk_sum(x, k, l, p, dim, /*save=*/true);
}

// "[1, 2]": the position of flat index `flat` in a tensor of `sizes`.
std::string index_text(int64_t flat, c10::IntArrayRef sizes) {
  std::vector<int64_t> index(sizes.size());
  for (std::size_t d = sizes.size(); d-- > 0;) index[d] = flat % sizes[d], flat /= sizes[d];
  std::string text = "[";
  for (std::size_t d = 0; d < index.size(); ++d) text += (d ? ", " : "") + std::to_string(index[d]);
  return text + "]";
}

// The labels of a top-k loss: int64 on the device of scores, the shape of scores without dim, each in [0, n).
void check_target(const char* op, const at::Tensor& target, const at::Tensor& scores, int64_t dim, int64_t n) {
  TORCH_CHECK(target.scalar_type() == at::kLong, "sparsetopk.", op, ": target must be int64 (class indices), got ",
              dtype_name(target.scalar_type()));
  TORCH_CHECK(target.device() == scores.device(), "sparsetopk.", op, ": target is on ", target.device(),
              " but scores is on ", scores.device());
  const std::vector<int64_t> sizes = sizes_without(scores, dim);
  TORCH_CHECK(target.sizes() == c10::IntArrayRef(sizes), "sparsetopk.", op, ": target has shape ", target.sizes(),
              " but scores of shape ", scores.sizes(), " needs one label per slice along dim = ", dim, ": ",
              c10::IntArrayRef(sizes));
  const at::Tensor labels = target.contiguous();
  const int64_t* label = labels.data_ptr<int64_t>();
  for (int64_t r = 0; r < labels.numel(); ++r)
    apply_rules(
        op, [&] { sparsetopk::check_target(label[r], static_cast<std::size_t>(n), "target"); },
        [&] { return " (at target" + index_text(r, labels.sizes()) + ")"; });
}

// topk_loss: (loss, grad); grad only with `save`.
std::tuple<at::Tensor, at::Tensor> topk_loss(const at::Tensor& scores, const at::Tensor& target, int64_t k, double l,
                                             double p, int64_t dim, bool save) {
  const char* op = "topk_loss";
  check_input(op, scores, "scores");
  TORCH_CHECK(scores.dim() >= 1, "sparsetopk.", op, ": scores must have at least one dimension (the classes), got "
              "a 0-d tensor");
  dim = wrap_dim(op, scores, dim);
  const int64_t n = slice_size(scores, dim);
  check_k(op, k, n, dim, /*least=*/1);
  check_l_p(op, l, p);
  check_target(op, target, scores, dim, n);
  const at::Tensor rows = to_rows(scores, dim, compute_type(scores.scalar_type()));
  const at::Tensor labels = target.contiguous();
  at::Tensor loss = new_tensor(labels.sizes(), rows.scalar_type());
  at::Tensor grad = save ? new_tensor(rows.sizes(), rows.scalar_type()) : at::Tensor();
  const auto row_n = static_cast<std::size_t>(n), kept = static_cast<std::size_t>(k);
  const SoftTopkOptions options{l, p};
  const std::span<const int64_t> all_labels(labels.data_ptr<int64_t>(), static_cast<std::size_t>(labels.numel()));
  with_core(rows, [&](auto zero) {
    using T = decltype(zero);
    for_row_parts(labels.numel(), n, [&](int64_t begin, int64_t end, CoreScratch& core) {
      sparsetopk::topk_loss<T>(row_range(in_span<T>(rows), begin, end, row_n), row_n,
                               row_range(all_labels, begin, end, 1), kept, row_range(out_span<T>(loss), begin, end, 1),
                               options, save ? row_range(out_span<T>(grad), begin, end, row_n) : std::span<T>(),
                               &core.workspace);
    });
  });
  loss = loss.to(scores.scalar_type());
  if (!save) return {loss, at::Tensor()};
  return {loss, from_rows(grad, scores, dim, scores.scalar_type())};
}

at::Tensor topk_loss_kernel(const at::Tensor& scores, const at::Tensor& target, int64_t k, double l, double p,
                            int64_t dim) {
  return std::get<0>(topk_loss(scores, target, k, l, p, dim, /*save=*/false));
}

std::tuple<at::Tensor, at::Tensor> topk_loss_forward_kernel(const at::Tensor& scores, const at::Tensor& target,
                                                            int64_t k, double l, double p, int64_t dim) {
  return topk_loss(scores, target, k, l, p, dim, /*save=*/true);
}

}  // namespace
}  // namespace sparsetopk::torch::detail

TORCH_LIBRARY_IMPL(sparsetopk, CPU, m) {
  using namespace sparsetopk::torch::detail;
  register_kernels<soft_topk, hard_topk, jacobian_product>(m);
  m.impl("topk_sum", TORCH_FN(topk_sum_kernel));
  m.impl("_topk_sum_forward", TORCH_FN(topk_sum_forward_kernel));
  m.impl("topk_loss", TORCH_FN(topk_loss_kernel));
  m.impl("_topk_loss_forward", TORCH_FN(topk_loss_forward_kernel));
}
