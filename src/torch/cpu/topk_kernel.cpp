// CPU kernels: view x as a row-major batch of rows along `dim`, call the core
// of <sparsetopk/topk.hpp> on the whole batch at once, and map the result back.
// No solver logic lives here.

#include <sparsetopk/errors.hpp>
#include <sparsetopk/topk.hpp>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstddef>
#include <span>
#include <tuple>

#include "../checks.hpp"
#include "../ops.hpp"

namespace sparsetopk::torch::detail {
namespace {

// The core computes in float or double; float16 and bfloat16 go through float.
at::ScalarType compute_type(at::ScalarType type) { return type == at::kDouble ? at::kDouble : at::kFloat; }

// `t` as a contiguous tensor of dtype `type` (itself if it already is one).
// Tensor::to(..., MemoryFormat::Contiguous) is not enough: it may alias a
// permuted or expanded view whose suggested memory format is "contiguous".
at::Tensor contiguous_as(const at::Tensor& t, at::ScalarType type) {
  if (t.scalar_type() == type && t.is_contiguous()) return t;
  return at::empty(t.sizes(), t.options().dtype(type)).copy_(t);
}

// t with axis `dim` moved last, contiguous, in dtype `type`: rows of n = slice_size(t, dim) entries.
at::Tensor to_rows(const at::Tensor& t, int64_t dim, at::ScalarType type) {
  return contiguous_as(t.dim() == 0 ? t.reshape({1}) : t.movedim(dim, -1), type);
}

// The inverse of to_rows for a tensor shaped like `like`: contiguous, in like's dtype.
at::Tensor from_rows(const at::Tensor& rows, const at::Tensor& like, int64_t dim) {
  return contiguous_as(like.dim() == 0 ? rows.reshape({}) : rows.movedim(-1, dim), like.scalar_type());
}

template <class T>
std::span<const T> in_span(const at::Tensor& t) {
  return {t.data_ptr<T>(), static_cast<std::size_t>(t.numel())};
}

template <class T>
std::span<T> out_span(at::Tensor& t) {
  return {t.data_ptr<T>(), static_cast<std::size_t>(t.numel())};
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

enum class Kind { mask, magnitude };

const char* op_name(Kind kind, bool soft) {
  if (kind == Kind::mask) return soft ? "soft_topk_mask" : "hard_topk_mask";
  return soft ? "soft_topk_mag" : "hard_topk_mag";
}

at::Tensor soft_topk(Kind kind, const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                     c10::string_view solver, SavedBlocks* saved) {
  const char* op = op_name(kind, /*soft=*/true);
  check_input(op, x);
  dim = wrap_dim(op, x, dim);
  const int64_t n = slice_size(x, dim);
  check_k(op, k, n, dim);
  check_l_p(op, l, p);
  const SoftTopkOptions options{l, p, parse_solver(op, solver)};

  const at::Tensor rows = to_rows(x, dim, compute_type(x.scalar_type()));
  at::Tensor out = at::empty_like(rows);
  ActiveBlocks* blocks = saved ? &saved->blocks : nullptr;
  with_core(rows, [&](auto zero) {
    using T = decltype(zero);
    const auto row_n = static_cast<std::size_t>(n), kept = static_cast<std::size_t>(k);
    if (kind == Kind::mask) sparsetopk::soft_topk_mask<T>(in_span<T>(rows), row_n, kept, out_span<T>(out), options, blocks);
    else sparsetopk::soft_topk_mag<T>(in_span<T>(rows), row_n, kept, out_span<T>(out), options, blocks);
  });
  if (saved) {
    saved->sizes = x.sizes().vec();
    saved->dim = dim;
  }
  return from_rows(out, x, dim);
}

at::Tensor hard_topk(Kind kind, const at::Tensor& x, int64_t k, int64_t dim) {
  const char* op = op_name(kind, /*soft=*/false);
  check_input(op, x);
  dim = wrap_dim(op, x, dim);
  const int64_t n = slice_size(x, dim);
  check_k(op, k, n, dim);

  const at::Tensor rows = to_rows(x, dim, compute_type(x.scalar_type()));
  at::Tensor out = at::empty_like(rows);
  with_core(rows, [&](auto zero) {
    using T = decltype(zero);
    const auto row_n = static_cast<std::size_t>(n), kept = static_cast<std::size_t>(k);
    if (kind == Kind::mask) sparsetopk::hard_topk_mask<T>(in_span<T>(rows), row_n, kept, out_span<T>(out));
    else sparsetopk::hard_topk_mag<T>(in_span<T>(rows), row_n, kept, out_span<T>(out));
  });
  return from_rows(out, x, dim);
}

// The backward's inputs must have the forward input's shape.
void check_saved(const char* op, const at::Tensor& t, const char* name, const SavedBlocksPtr& saved) {
  check_input(op, t, name);
  TORCH_CHECK(t.sizes() == c10::IntArrayRef(saved->sizes), "sparsetopk.", op, ": ", name, " has shape ", t.sizes(),
              " but the forward input had shape ", c10::IntArrayRef(saved->sizes));
}

at::Tensor soft_topk_mask_backward_cpu(const at::Tensor& grad, const SavedBlocksPtr& saved) {
  check_saved("soft_topk_mask backward", grad, "grad", saved);
  const at::Tensor g = to_rows(grad, saved->dim, compute_type(grad.scalar_type()));
  at::Tensor grad_x = at::empty_like(g);
  with_core(g, [&](auto zero) {
    using T = decltype(zero);
    sparsetopk::soft_topk_mask_vjp<T>(saved->blocks, in_span<T>(g), out_span<T>(grad_x));
  });
  return from_rows(grad_x, grad, saved->dim);
}

at::Tensor soft_topk_mag_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const SavedBlocksPtr& saved) {
  check_saved("soft_topk_mag backward", grad, "grad", saved);
  check_saved("soft_topk_mag backward", x, "x", saved);
  const at::ScalarType type = compute_type(at::promote_types(grad.scalar_type(), x.scalar_type()));
  const at::Tensor g = to_rows(grad, saved->dim, type), x_rows = to_rows(x, saved->dim, type);
  at::Tensor grad_x = at::empty_like(g);
  with_core(g, [&](auto zero) {
    using T = decltype(zero);
    sparsetopk::soft_topk_mag_vjp<T>(saved->blocks, in_span<T>(x_rows), in_span<T>(g), out_span<T>(grad_x));
  });
  return from_rows(grad_x, grad, saved->dim);
}

at::Tensor soft_topk_mask_cpu(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                              c10::string_view solver) {
  return soft_topk(Kind::mask, x, k, l, p, dim, solver, nullptr);
}

at::Tensor soft_topk_mag_cpu(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                             c10::string_view solver) {
  return soft_topk(Kind::magnitude, x, k, l, p, dim, solver, nullptr);
}

std::tuple<at::Tensor, SavedBlocksPtr> soft_topk_mask_forward_cpu(const at::Tensor& x, int64_t k, double l,
                                                                  double p, int64_t dim, c10::string_view solver) {
  auto saved = c10::make_intrusive<SavedBlocks>();
  at::Tensor out = soft_topk(Kind::mask, x, k, l, p, dim, solver, saved.get());
  return {out, saved};
}

std::tuple<at::Tensor, SavedBlocksPtr> soft_topk_mag_forward_cpu(const at::Tensor& x, int64_t k, double l,
                                                                 double p, int64_t dim, c10::string_view solver) {
  auto saved = c10::make_intrusive<SavedBlocks>();
  at::Tensor out = soft_topk(Kind::magnitude, x, k, l, p, dim, solver, saved.get());
  return {out, saved};
}

at::Tensor hard_topk_mask_cpu(const at::Tensor& x, int64_t k, int64_t dim) {
  return hard_topk(Kind::mask, x, k, dim);
}

at::Tensor hard_topk_mag_cpu(const at::Tensor& x, int64_t k, int64_t dim) {
  return hard_topk(Kind::magnitude, x, k, dim);
}

}  // namespace
}  // namespace sparsetopk::torch::detail

TORCH_LIBRARY_IMPL(sparsetopk, CPU, m) {
  using namespace sparsetopk::torch::detail;
  m.impl("soft_topk_mask", TORCH_FN(soft_topk_mask_cpu));
  m.impl("soft_topk_mag", TORCH_FN(soft_topk_mag_cpu));
  m.impl("hard_topk_mask", TORCH_FN(hard_topk_mask_cpu));
  m.impl("hard_topk_mag", TORCH_FN(hard_topk_mag_cpu));
  m.impl("_soft_topk_mask_forward", TORCH_FN(soft_topk_mask_forward_cpu));
  m.impl("_soft_topk_mag_forward", TORCH_FN(soft_topk_mag_forward_cpu));
  m.impl("_soft_topk_mask_backward", TORCH_FN(soft_topk_mask_backward_cpu));
  m.impl("_soft_topk_mag_backward", TORCH_FN(soft_topk_mag_backward_cpu));
}
