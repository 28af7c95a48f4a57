// The LibTorch C++ API of the global operators (<sparsetopk/torch.hpp>): typed
// calls of torch.ops.sparsetopk.*_global* through the dispatcher, and a
// torch::autograd::Function for the soft magnitude (its backward calls the
// _backward op at the saved state). One process: the ops run with group "".
// (The Python package registers its own autograd for the same ops; the C++
// functions call them below autograd, so the two do not meet.)

#include <sparsetopk/torch.hpp>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <tuple>
#include <vector>

namespace sparsetopk::torch {
namespace {

using ::torch::autograd::AutogradContext;
using ::torch::autograd::variable_list;

using GlobalForwardSignature = std::tuple<std::vector<at::Tensor>, at::Tensor>(at::TensorList, int64_t, double,
                                                                               double, c10::string_view);
using GlobalBackwardSignature = std::vector<at::Tensor>(at::TensorList, at::TensorList, const at::Tensor&, double,
                                                        double, c10::string_view);
using GlobalHardSignature = std::vector<at::Tensor>(at::TensorList, int64_t, c10::string_view);

template <class Signature>
c10::TypedOperatorHandle<Signature> global_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

class SoftTopkMagGlobalFunction : public ::torch::autograd::Function<SoftTopkMagGlobalFunction> {
 public:
  // x as a TensorList: autograd counts each of its tensors as an input (a std::vector would not be).
  static variable_list forward(AutogradContext* ctx, at::TensorList x, int64_t k, double l, double p) {
    static const auto op = global_op<GlobalForwardSignature>("sparsetopk::_soft_topk_mag_global_forward");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, state] = op.call(x, k, l, p, "");
    variable_list saved = x.vec();
    saved.push_back(state);
    ctx->save_for_backward(saved);
    ctx->saved_data["l"] = l;
    ctx->saved_data["p"] = p;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = global_op<GlobalBackwardSignature>("sparsetopk::_soft_topk_mag_global_backward");
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor state = saved.back();
    saved.pop_back();
    for (size_t i = 0; i < grad_outputs.size(); ++i)  // an unused output has no gradient
      if (!grad_outputs[i].defined()) grad_outputs[i] = at::zeros_like(saved[i]);
    variable_list grads;
    {
      at::NoGradGuard no_grad;
      grads = op.call(grad_outputs, saved, state, ctx->saved_data["l"].toDouble(), ctx->saved_data["p"].toDouble(), "");
    }
    grads.push_back(at::Tensor());  // k
    grads.push_back(at::Tensor());  // l
    grads.push_back(at::Tensor());  // p
    return grads;
  }
};

bool any_requires_grad(const std::vector<at::Tensor>& x) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor& t : x)
    if (t.requires_grad()) return true;
  return false;
}

}  // namespace

std::vector<at::Tensor> soft_topk_mag_global(const std::vector<at::Tensor>& x, int64_t k, double l, double p) {
  if (any_requires_grad(x)) return SoftTopkMagGlobalFunction::apply(at::TensorList(x), k, l, p);
  static const auto op = global_op<GlobalForwardSignature>("sparsetopk::_soft_topk_mag_global_forward");
  at::AutoDispatchBelowADInplaceOrView guard;
  return std::get<0>(op.call(x, k, l, p, ""));
}

std::vector<at::Tensor> hard_topk_mask_global(const std::vector<at::Tensor>& x, int64_t k) {
  static const auto op = global_op<GlobalHardSignature>("sparsetopk::hard_topk_mask_global");
  at::AutoDispatchBelowADInplaceOrView guard;
  std::vector<at::Tensor> detached;
  for (const at::Tensor& t : x) detached.push_back(t.detach());
  return op.call(detached, k, "");
}

std::vector<at::Tensor> hard_topk_mag_global(const std::vector<at::Tensor>& x, int64_t k) {
  std::vector<at::Tensor> magnitudes;
  for (const at::Tensor& t : x) magnitudes.push_back(t.detach().abs());
  std::vector<at::Tensor> out = hard_topk_mask_global(magnitudes, k);
  for (size_t i = 0; i < out.size(); ++i) out[i] = x[i] * out[i];  // SPEC.md: x * hard mask of |x|
  return out;
}

}  // namespace sparsetopk::torch
