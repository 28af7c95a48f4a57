// Autograd kernels of the derivative ops (_soft_topk_{mask,mag}_{backward,jvp}):
// they compute below autograd and, when an input requires grad, route the
// result through a node that raises if it is differentiated
// (second_derivative.hpp).

#include <torch/library.h>

#include "ops.hpp"
#include "second_derivative.hpp"

namespace sparsetopk::torch::detail {
namespace {

template <Form form, bool transpose>
at::Tensor product_autograd(const at::Tensor& v, const at::Tensor& x, const at::Tensor& row_state, double l,
                            double p, int64_t dim) {
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = call_jacobian_product(form, transpose, v, x, row_state, l, p, dim);
  }
  return refuse_second_derivative(product_name(form, transpose), result, {v, x, row_state});
}

}  // namespace
}  // namespace sparsetopk::torch::detail

TORCH_LIBRARY_IMPL(sparsetopk, Autograd, m) {
  using namespace sparsetopk::torch::detail;
  using sparsetopk::Form;
  m.impl("_soft_topk_mask_backward", TORCH_FN((product_autograd<Form::mask, true>)));
  m.impl("_soft_topk_mask_jvp", TORCH_FN((product_autograd<Form::mask, false>)));
  m.impl("_soft_topk_mag_backward", TORCH_FN((product_autograd<Form::magnitude, true>)));
  m.impl("_soft_topk_mag_jvp", TORCH_FN((product_autograd<Form::magnitude, false>)));
}
