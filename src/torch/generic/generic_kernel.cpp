// The kernels of every device without one of its own (CUDA and any other
// backend torch supports; CompositeExplicitAutograd): the device-generic
// implementation of topk_generic.hpp, built from ATen ops. Tensors are viewed
// as [R, n] rows along `dim` and mapped back; no solver logic lives here.
// Off the CPU the solvers are "auto" (= "generic", exact) and "dykstra"
// (p = 2, approximate); the CPU kernels call soft_topk_by_rows for "generic".

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "checks.hpp"
#include "ops.hpp"
#include "register_kernels.hpp"
#include "spans.hpp"
#include "generic_kernel.hpp"
#include "topk_generic.hpp"

namespace sparsetopk::torch::detail {

using Tensors2 = std::tuple<at::Tensor, at::Tensor>;

namespace {

SolverChoice choose_generic_solver(const char* op, c10::string_view solver, double p,
                                   std::optional<int64_t> num_iter, const at::Tensor& x) {
  const SolverChoice choice = choose_solver(op, solver, p, num_iter);
  TORCH_CHECK(choice.solver != Solver::pav && choice.solver != Solver::threshold, "sparsetopk.", op, ": solver = \"",
              std::string(solver), "\" runs on CPU tensors only; x is on ", x.device(),
              " (use \"auto\", \"generic\" or \"dykstra\")");
  return choice;
}

// t's slices along the wrapped dim as [R, n] rows in dtype `type`, contiguous.
at::Tensor as_rows(const at::Tensor& t, int64_t dim, at::ScalarType type) {
  const at::Tensor moved = t.dim() == 0 ? t.reshape({1}) : t.movedim(dim, -1);
  return moved.reshape({-1, moved.size(-1)}).to(type).contiguous();
}

// The inverse of as_rows for a tensor shaped like `like`, in dtype `type`.
at::Tensor from_rows(const at::Tensor& rows, const at::Tensor& like, int64_t dim, at::ScalarType type) {
  if (like.dim() == 0) return rows.reshape({}).to(type);
  std::vector<int64_t> moved = like.movedim(dim, -1).sizes().vec();
  return rows.reshape(moved).movedim(-1, dim).to(type).contiguous();
}

// row_state [R, RowState::size] back to x's shape with that size along dim (a 0-d x: [RowState::size]).
at::Tensor row_state_from_rows(const at::Tensor& state, const at::Tensor& x, int64_t dim) {
  if (x.dim() == 0) return state.reshape({kRowStateSize});
  std::vector<int64_t> moved = x.movedim(dim, -1).sizes().vec();
  moved.back() = kRowStateSize;
  return state.reshape(moved).movedim(-1, dim).contiguous();
}

}  // namespace

const RowsImplementation generic_rows{generic::soft_topk_rows, generic::hard_topk_rows,
                                      generic::jacobian_product_rows};

Tensors2 soft_topk_by_rows(const RowsImplementation& rows, Form form, const at::Tensor& x, int64_t k, double l,
                           double p, int64_t dim, const SolverChoice& choice, bool save) {
  const at::Tensor x_rows = as_rows(x, dim, compute_type(x.scalar_type()));
  const generic::SoftResult result = choice.solver == Solver::dykstra
                                         ? generic::dykstra_rows(form, x_rows, k, l, choice.iterations, save)
                                         : rows.soft(form, x_rows, k, l, p, save);
  at::Tensor out = from_rows(result.out, x, dim, x.scalar_type());
  if (!save) return {out, at::Tensor()};
  return {out, row_state_from_rows(result.row_state, x, dim)};
}

Tensors2 soft_topk_on_rows(const RowsImplementation& rows, Form form, const at::Tensor& x, int64_t k, double l,
                           double p, int64_t dim, c10::string_view solver, std::optional<int64_t> num_iter,
                           bool save) {
  const char* name = op_name(form, /*soft=*/true);
  check_dense_float(name, x);
  dim = wrap_dim(name, x, dim);
  check_k(name, k, slice_size(x, dim), dim);
  check_l_p(name, l, p);
  const SolverChoice choice = choose_generic_solver(name, solver, p, num_iter, x);
  return soft_topk_by_rows(rows, form, x, k, l, p, dim, choice, save);
}

at::Tensor hard_topk_on_rows(const RowsImplementation& rows, Form form, const at::Tensor& x, int64_t k,
                             int64_t dim) {
  const char* name = op_name(form, /*soft=*/false);
  check_dense_float(name, x);
  dim = wrap_dim(name, x, dim);
  check_k(name, k, slice_size(x, dim), dim);
  return from_rows(rows.hard(form, as_rows(x, dim, compute_type(x.scalar_type())), k), x, dim,
                   x.scalar_type());
}

at::Tensor jacobian_product_on_rows(const RowsImplementation& rows, Form form, bool transpose, const at::Tensor& v,
                                    const at::Tensor& x, const at::Tensor& row_state, double l, double p,
                                    int64_t dim) {
  dim = check_product(form, transpose, /*cpu=*/false, v, x, row_state, l, p, dim);
  const at::ScalarType type = compute_type(at::promote_types(v.scalar_type(), x.scalar_type()));
  const at::Tensor state_rows = v.dim() == 0 ? row_state.reshape({1, kRowStateSize})
                                             : row_state.movedim(dim, -1).reshape({-1, kRowStateSize}).contiguous();
  const at::Tensor product =
      rows.product(form, transpose, as_rows(v, dim, type), as_rows(x, dim, type), state_rows, l, p);
  return from_rows(product, v, dim, v.scalar_type());
}

// ---- the top-k sum and loss from the generic mask ----

namespace {

// x's sizes without the wrapped dim: the shape of one value per slice.
std::vector<int64_t> sizes_without(const at::Tensor& x, int64_t dim) {
  std::vector<int64_t> sizes = x.sizes().vec();
  if (x.dim() > 0) sizes.erase(sizes.begin() + dim);
  return sizes;
}

// f(y) = <y, x> - (l/p) sum y^p per row of [R, n] rows (SPEC.md), in float64.
at::Tensor regularized_value(const at::Tensor& y, const at::Tensor& x, double l, double p) {
  const at::Tensor yd = y.to(at::kDouble);
  return (yd * x.to(at::kDouble)).sum(-1) - (l / p) * yd.pow(p).sum(-1);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> generic_topk_sum_forward(const at::Tensor& x, int64_t k, double l,
                                                                        double p, int64_t dim) {
  const char* name = "topk_sum";
  check_dense_float(name, x);
  dim = wrap_dim(name, x, dim);
  check_k(name, k, slice_size(x, dim), dim);
  check_l_p(name, l, p);
  const at::Tensor rows = as_rows(x, dim, compute_type(x.scalar_type()));
  const generic::SoftResult mask = generic::soft_topk_rows(Form::mask, rows, k, l, p, /*save=*/true);
  const at::Tensor value = regularized_value(mask.out, rows, l, p).reshape(sizes_without(x, dim));
  return {value.to(x.scalar_type()), from_rows(mask.out, x, dim, x.scalar_type()),
          row_state_from_rows(mask.row_state, x, dim)};
}

std::tuple<at::Tensor, at::Tensor> generic_topk_loss_forward(const at::Tensor& scores, const at::Tensor& target,
                                                             int64_t k, double l, double p, int64_t dim) {
  const char* name = "topk_loss";
  check_dense_float(name, scores, "scores");
  TORCH_CHECK(scores.dim() >= 1, "sparsetopk.", name, ": scores must have at least one dimension (the classes), "
              "got a 0-d tensor");
  dim = wrap_dim(name, scores, dim);
  const int64_t n = scores.size(dim);
  check_k(name, k, n, dim, /*least=*/1);
  check_l_p(name, l, p);
  TORCH_CHECK(target.scalar_type() == at::kLong, "sparsetopk.", name,
              ": target must be int64 (class indices), got ", dtype_name(target.scalar_type()));
  TORCH_CHECK(target.device() == scores.device(), "sparsetopk.", name, ": target is on ", target.device(),
              " but scores is on ", scores.device());
  const std::vector<int64_t> sizes = sizes_without(scores, dim);
  TORCH_CHECK(target.sizes() == c10::IntArrayRef(sizes), "sparsetopk.", name, ": target has shape ",
              target.sizes(), " but scores of shape ", scores.sizes(), " needs one label per slice along dim = ",
              dim, ": ", c10::IntArrayRef(sizes));
  const at::Tensor labels = target.reshape({-1, 1});
  if (labels.numel() > 0 && !labels.is_meta()) {  // the labels' range
    const at::Tensor in_range = ((labels >= 0) & (labels < n)).all();
    const std::string message = c10::str("sparsetopk.", name, ": target holds a label out of range [0, n = ", n, ")");
    if (generic::reads_to_host(labels)) {
      TORCH_CHECK(in_range.item<bool>(), message);  // the CPU: an eager error, a read costs nothing there
    } else {
      // elsewhere no host sync: a device-side assertion, a kernel queued on
      // the stream that fails it; the error surfaces at the device's next
      // synchronization (on a GPU as a device-side assertion; on the CPU in
      // device mode its kernel raises this message at once)
      at::_assert_async(in_range, message);
    }
  }
  // clamped, so that where the assertion fails asynchronously no gather or scatter below reads out of bounds
  const at::Tensor t = labels.clamp(0, n - 1);
  const at::Tensor rows = as_rows(scores, dim, compute_type(scores.scalar_type()));
  const at::Tensor m = generic::soft_topk_rows(Form::mask, rows, k, l, p, /*save=*/false).out;
  // x without entry t: columns j + (j >= t) of each row; m'' = its mask (k - 1) with a 1 put back at t.
  const at::Tensor columns = at::arange(n - 1, t.options()).unsqueeze(0);
  const at::Tensor rest = columns + (columns >= t).to(at::kLong);
  at::Tensor held = at::zeros_like(m);
  if (n > 1) held.scatter_(1, rest, generic::soft_topk_rows(Form::mask, rows.gather(1, rest), k - 1, l, p, false).out);
  held.scatter_(1, t, 1.0);
  // f(m) - f(m''), over the entries where they differ (the rest cancel exactly); 0 where m_t = 1.
  const at::Tensor difference = m - held, differs = difference != 0;
  const at::Tensor loss = regularized_value(m * differs, rows, l, p) - regularized_value(held * differs, rows, l, p);
  const at::Tensor selected = m.gather(1, t) == 1;
  const at::Tensor grad = at::where(selected, at::zeros_like(difference), difference);
  const at::Tensor losses = at::where(selected.squeeze(1), at::zeros_like(loss), loss.clamp_min(0.0));
  return {losses.reshape(target.sizes()).to(scores.scalar_type()), from_rows(grad, scores, dim, scores.scalar_type())};
}

namespace {

// The ops' entry points over generic_rows (register_kernels.hpp).
Tensors2 generic_soft(Form form, const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                      c10::string_view solver, std::optional<int64_t> num_iter, bool save) {
  return soft_topk_on_rows(generic_rows, form, x, k, l, p, dim, solver, num_iter, save);
}
at::Tensor generic_hard(Form form, const at::Tensor& x, int64_t k, int64_t dim) {
  return hard_topk_on_rows(generic_rows, form, x, k, dim);
}
at::Tensor generic_product(Form form, bool transpose, const at::Tensor& v, const at::Tensor& x,
                           const at::Tensor& row_state, double l, double p, int64_t dim) {
  return jacobian_product_on_rows(generic_rows, form, transpose, v, x, row_state, l, p, dim);
}

}  // namespace
}  // namespace sparsetopk::torch::detail

// The test switch of topk_generic.hpp (set_device_mode): the ATen path treats
// CPU tensors as a device's, reading nothing back to the host. Private.
TORCH_LIBRARY_FRAGMENT(sparsetopk, m) {
  m.def("_generic_device_mode(bool enabled) -> bool", [](bool enabled) {
    return sparsetopk::torch::generic::set_device_mode(enabled);
  });
}

TORCH_LIBRARY_IMPL(sparsetopk, CompositeExplicitAutograd, m) {
  using namespace sparsetopk::torch::detail;
  register_kernels<generic_soft, generic_hard, generic_product>(m);
  m.impl("_topk_sum_forward", TORCH_FN(generic_topk_sum_forward));
  m.impl("topk_sum", [](const at::Tensor& x, int64_t k, double l, double p, int64_t dim) {
    return std::get<0>(generic_topk_sum_forward(x, k, l, p, dim));
  });
  m.impl("_topk_loss_forward", TORCH_FN(generic_topk_loss_forward));
  m.impl("topk_loss", [](const at::Tensor& scores, const at::Tensor& target, int64_t k, double l, double p,
                         int64_t dim) { return std::get<0>(generic_topk_loss_forward(scores, target, k, l, p, dim)); });
}
