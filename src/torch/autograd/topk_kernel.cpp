// Autograd kernels of the dispatcher (LibTorch C++ users, TorchScript, and
// eager Python outside torch.func): torch::autograd::Function wrappers whose
// forward calls the _forward op (the output and row_state, O(rows)) and whose
// backward calls the _backward op (the core's exact VJP, which recomputes the
// band's c_i from x). First
// derivatives only (double backward raises), except hard_topk_mag whose
// backward is a product with a constant mask. The Python package routes
// torch.func transforms and forward-mode AD to its own torch.autograd.Function
// over the same ops (python/sparsetopk/_registration.py).

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "ops.hpp"
#include "second_derivative.hpp"

namespace sparsetopk::torch::detail {
namespace {

using ::torch::autograd::AutogradContext;
using ::torch::autograd::variable_list;

bool needs_grad(const at::Tensor& x) { return at::GradMode::is_enabled() && x.requires_grad(); }

// The arguments a soft operator's derivatives need besides the tensors, kept in the context.
struct SolveArguments {
  double l, p;
  int64_t dim;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["l"] = l;
    ctx->saved_data["p"] = p;
    ctx->saved_data["dim"] = dim;
  }
  static SolveArguments of(AutogradContext* ctx) {
    return {ctx->saved_data["l"].toDouble(), ctx->saved_data["p"].toDouble(), ctx->saved_data["dim"].toInt()};
  }
};

// J^T v of the soft operator of `form` at the state a forward pass saved, computed
// without recording, routed through the refusal of a further derivative (named `op`).
at::Tensor backward_product(const char* op, Form form, const at::Tensor& v, const at::Tensor& x,
                            const at::Tensor& row_state, const SolveArguments& a) {
  at::Tensor grad_x;
  {
    at::NoGradGuard no_grad;
    grad_x = call_jacobian_product(form, /*transpose=*/true, v, x, row_state, a.l, a.p, a.dim);
  }
  return refuse_second_derivative(op, grad_x, {x, v});
}

// These kernels have reverse mode only (a C++ autograd Function has no JVP):
// a tangent on x gets an error, not a silent zero. (Level 0 is the one that
// ATen's own kernels read; torch.func.jvp and forward_ad both use it.)
void refuse_forward_ad(const char* op, const at::Tensor& x) {
  TORCH_CHECK(!x._fw_grad(/*level=*/0).defined(), "sparsetopk.", op,
              ": forward-mode AD goes through the Python function sparsetopk.", op,
              " (torch.ops.sparsetopk.", op, " and the LibTorch API have reverse mode only)");
}

// The soft operators; Derived names the node in grad_fn.
template <class Derived, Form form>
class SoftTopkFunction : public ::torch::autograd::Function<Derived> {
 public:
  static constexpr Form kForm = form;

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                            const std::string& solver, std::optional<int64_t> num_iter) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, row_state] = call_soft_topk_forward(form, x, k, l, p, dim, solver, num_iter);
    ctx->save_for_backward({x, row_state});  // x: the band's c_i, and the double-backward error's edges
    SolveArguments{l, p, dim}.save(ctx);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    return {backward_product(op_name(form, /*soft=*/true), form, grad_outputs[0], saved[0], saved[1],
                             SolveArguments::of(ctx)),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class SoftTopkMaskFunction : public SoftTopkFunction<SoftTopkMaskFunction, Form::mask> {};
class SoftTopkMagFunction : public SoftTopkFunction<SoftTopkMagFunction, Form::magnitude> {};

// d hard_topk_mag / dx = the hard mask of |x| (the operator is x * mask). The
// backward grad * mask is recorded, so double backward works (and is exact:
// the mask is locally constant).
class HardTopkMagFunction : public ::torch::autograd::Function<HardTopkMagFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t k, int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = call_hard_topk(Form::magnitude, x, k, dim);
    ctx->save_for_backward({call_hard_topk(Form::mask, x.abs(), k, dim)});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    return {grad_outputs[0].mul(mask), at::Tensor(), at::Tensor()};
  }
};

// g as a slice value broadcast back along dim (a 0-d x: g itself).
at::Tensor along(const at::Tensor& g, const at::Tensor& x, int64_t dim) {
  if (x.dim() == 0) return g;
  return g.unsqueeze(dim < 0 ? dim + x.dim() : dim);
}

// The soft mask topk_sum saved, as a function of x: its backward is the mask's
// VJP at the saved row_state (SPEC.md: the Hessian of topk_sum is the mask's
// Jacobian), so a second derivative of topk_sum is exact.
class SavedMaskFunction : public ::torch::autograd::Function<SavedMaskFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mask,
                            const at::Tensor& row_state, double l, double p, int64_t dim) {
    ctx->save_for_backward({x, row_state});
    SolveArguments{l, p, dim}.save(ctx);
    return mask.clone();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    return {backward_product("topk_sum second derivative", Form::mask, grad_outputs[0], saved[0], saved[1],
                             SolveArguments::of(ctx)),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// topk_sum: d value / dx = the soft mask (SPEC.md, Danskin), whose own
// derivative (a second derivative of topk_sum) goes through SavedMaskFunction.
class TopkSumFunction : public ::torch::autograd::Function<TopkSumFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t k, double l, double p, int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [value, mask, row_state] = call_topk_sum_forward(x, k, l, p, dim);
    ctx->save_for_backward({x, mask, row_state});
    SolveArguments{l, p, dim}.save(ctx);
    return value;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const SolveArguments a = SolveArguments::of(ctx);
    // With create_graph (grad mode on here), the mask is a function of x; otherwise a constant.
    const at::Tensor mask = needs_grad(x) ? SavedMaskFunction::apply(x, saved[1], saved[2], a.l, a.p, a.dim)
                                          : saved[1];
    return {along(grad_outputs[0], x, a.dim).mul(mask), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// topk_loss: d loss / d scores = the gradient its forward op returned; differentiable once.
class TopkLossFunction : public ::torch::autograd::Function<TopkLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& scores, const at::Tensor& target, int64_t k,
                            double l, double p, int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad] = call_topk_loss_forward(scores, target, k, l, p, dim);
    ctx->save_for_backward({scores, grad});
    ctx->saved_data["dim"] = dim;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor grad_scores = along(grad_outputs[0], saved[0], ctx->saved_data["dim"].toInt()).mul(saved[1]);
    return {refuse_second_derivative("topk_loss", grad_scores, {saved[0], grad_outputs[0]}), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor topk_sum_autograd(const at::Tensor& x, int64_t k, double l, double p, int64_t dim) {
  refuse_forward_ad("topk_sum", x);
  if (needs_grad(x)) return TopkSumFunction::apply(x, k, l, p, dim);
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_topk_sum(x, k, l, p, dim);
}

at::Tensor topk_loss_autograd(const at::Tensor& scores, const at::Tensor& target, int64_t k, double l, double p,
                              int64_t dim) {
  refuse_forward_ad("topk_loss", scores);
  if (needs_grad(scores)) return TopkLossFunction::apply(scores, target, k, l, p, dim);
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_topk_loss(scores, target, k, l, p, dim);
}

// The Autograd kernel of soft_topk_mask (Function = SoftTopkMaskFunction) or soft_topk_mag.
template <class Function>
at::Tensor soft_topk_autograd(const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                              c10::string_view solver, std::optional<int64_t> num_iter) {
  refuse_forward_ad(op_name(Function::kForm, /*soft=*/true), x);
  if (needs_grad(x)) return Function::apply(x, k, l, p, dim, std::string(solver), num_iter);
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_soft_topk(Function::kForm, x, k, l, p, dim, solver, num_iter);
}

// Piecewise constant: the result never requires grad (like torch.argmax).
at::Tensor hard_topk_mask_autograd(const at::Tensor& x, int64_t k, int64_t dim) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_hard_topk(Form::mask, x, k, dim);
}

at::Tensor hard_topk_mag_autograd(const at::Tensor& x, int64_t k, int64_t dim) {
  refuse_forward_ad("hard_topk_mag", x);
  if (needs_grad(x)) return HardTopkMagFunction::apply(x, k, dim);
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_hard_topk(Form::magnitude, x, k, dim);
}

}  // namespace
}  // namespace sparsetopk::torch::detail

TORCH_LIBRARY_IMPL(sparsetopk, Autograd, m) {
  using namespace sparsetopk::torch::detail;
  m.impl("soft_topk_mask", TORCH_FN(soft_topk_autograd<SoftTopkMaskFunction>));
  m.impl("soft_topk_mag", TORCH_FN(soft_topk_autograd<SoftTopkMagFunction>));
  m.impl("hard_topk_mask", TORCH_FN(hard_topk_mask_autograd));
  m.impl("hard_topk_mag", TORCH_FN(hard_topk_mag_autograd));
  m.impl("topk_sum", TORCH_FN(topk_sum_autograd));
  m.impl("topk_loss", TORCH_FN(topk_loss_autograd));
}
