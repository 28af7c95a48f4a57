#pragma once
// The one refusal of second derivatives of the torch layer's autograd kernels
// (autograd/topk_kernel.cpp, autograd/derivative_kernel.cpp). The soft
// operators are differentiable once; a second derivative is never silently
// zero. (The Python package raises the same error under torch.func,
// python/sparsetopk/_registration.py.)

#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <initializer_list>
#include <memory>
#include <string>

namespace sparsetopk::torch::detail {

// `result`, routed (when grad mode is on and an input requires grad) through a
// node that raises if it is differentiated; the node's edges lead to `inputs`,
// so any second derivative through it reaches the error, whether taken with
// backward() or torch::autograd::grad.
inline at::Tensor refuse_second_derivative(const char* op, const at::Tensor& result,
                                           std::initializer_list<at::Tensor> inputs) {
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

}  // namespace sparsetopk::torch::detail
