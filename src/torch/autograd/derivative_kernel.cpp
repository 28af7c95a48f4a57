// Autograd kernels of the derivative ops (_soft_topk_{mask,mag}_{backward,jvp}):
// they compute below autograd and, when an input requires grad, route the
// result through a node that raises if it is differentiated. The soft
// operators are differentiable once; a second derivative is never silently
// zero. (The Python package wraps the same ops in a torch.autograd.Function
// with the same error for torch.func, python/sparsetopk/_registration.py.)

#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <memory>
#include <string>

#include "../ops.hpp"

namespace sparsetopk::torch::detail {
namespace {

at::Tensor not_differentiable(const char* op, const at::Tensor& result, std::initializer_list<at::Tensor> inputs) {
  if (!at::GradMode::is_enabled()) return result;
  ::torch::autograd::variable_list wrapped{result};
  for (const at::Tensor& input : inputs)
    if (input.defined() && input.requires_grad()) wrapped.push_back(input);
  if (wrapped.size() == 1) return result;
  auto error = std::make_shared<::torch::autograd::DelayedError>(
      std::string("sparsetopk.") + op +
          ": second derivatives are not implemented (the soft operators are differentiable once)",
      0);
  return (*error)(std::move(wrapped))[0];
}

at::Tensor mask_backward_autograd(const at::Tensor& grad, const at::Tensor& c, const at::Tensor& row_state,
                                  int64_t dim) {
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = call_soft_topk_mask_backward(grad, c, row_state, dim);
  }
  return not_differentiable("soft_topk_mask backward", result, {grad, c, row_state});
}

at::Tensor mask_jvp_autograd(const at::Tensor& tangent, const at::Tensor& c, const at::Tensor& row_state,
                             int64_t dim) {
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = call_soft_topk_mask_jvp(tangent, c, row_state, dim);
  }
  return not_differentiable("soft_topk_mask jvp", result, {tangent, c, row_state});
}

at::Tensor mag_backward_autograd(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& c,
                                 const at::Tensor& row_state, int64_t dim) {
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = call_soft_topk_mag_backward(grad, x, c, row_state, dim);
  }
  return not_differentiable("soft_topk_mag backward", result, {grad, x, c, row_state});
}

at::Tensor mag_jvp_autograd(const at::Tensor& tangent, const at::Tensor& x, const at::Tensor& c,
                            const at::Tensor& row_state, int64_t dim) {
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = call_soft_topk_mag_jvp(tangent, x, c, row_state, dim);
  }
  return not_differentiable("soft_topk_mag jvp", result, {tangent, x, c, row_state});
}

}  // namespace
}  // namespace sparsetopk::torch::detail

TORCH_LIBRARY_IMPL(sparsetopk, Autograd, m) {
  using namespace sparsetopk::torch::detail;
  m.impl("_soft_topk_mask_backward", TORCH_FN(mask_backward_autograd));
  m.impl("_soft_topk_mask_jvp", TORCH_FN(mask_jvp_autograd));
  m.impl("_soft_topk_mag_backward", TORCH_FN(mag_backward_autograd));
  m.impl("_soft_topk_mag_jvp", TORCH_FN(mag_jvp_autograd));
}
