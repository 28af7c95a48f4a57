// The torch::nn modules of <sparsetopk/torch.hpp>: compositions of the
// operators with standard torch layers.

#include <sparsetopk/torch.hpp>

#include <torch/nn/init.h>
#include <torch/nn/functional/linear.h>

#include <algorithm>
#include <cmath>

#include "checks.hpp"
#include "ops.hpp"

namespace sparsetopk::torch {
namespace {

const char* scope_name(SparsityScope scope) { return scope == SparsityScope::row ? "row" : "layer"; }

// The forward of a SoftTopKMask (form mask) or SoftTopKMagnitude.
at::Tensor soft_forward(Form form, const at::Tensor& x, const SoftTopKMaskOptions& options) {
  return detail::call_soft_topk(form, x, options.k(), options.l(), options.p(), options.dim(),
                                detail::solver_name(options.solver()), options.num_iter());
}

// "sparsetopk::torch::<name>(k=.., l=.., p=.., dim=.., solver=..[, num_iter=..])".
void print_soft_module(std::ostream& stream, const char* name, const SoftTopKMaskOptions& options) {
  stream << "sparsetopk::torch::" << name << "(k=" << options.k() << ", l=" << options.l() << ", p=" << options.p()
         << ", dim=" << options.dim() << ", solver=" << detail::solver_name(options.solver());
  if (options.num_iter()) stream << ", num_iter=" << *options.num_iter();
  stream << ")";
}

}  // namespace

// ---- SoftTopKMask, SoftTopKMagnitude ----

SoftTopKMaskImpl::SoftTopKMaskImpl(const SoftTopKMaskOptions& options_) : options(options_) {}
at::Tensor SoftTopKMaskImpl::forward(const at::Tensor& x) { return soft_forward(Form::mask, x, options); }
void SoftTopKMaskImpl::pretty_print(std::ostream& stream) const {
  print_soft_module(stream, "SoftTopKMask", options);
}

SoftTopKMagnitudeImpl::SoftTopKMagnitudeImpl(const SoftTopKMagnitudeOptions& options_) : options(options_) {}
at::Tensor SoftTopKMagnitudeImpl::forward(const at::Tensor& x) { return soft_forward(Form::magnitude, x, options); }
void SoftTopKMagnitudeImpl::pretty_print(std::ostream& stream) const {
  print_soft_module(stream, "SoftTopKMagnitude", options);
}

// ---- SparseLinear ----

SparseLinearImpl::SparseLinearImpl(const SparseLinearOptions& options_) : options(options_) {
  TORCH_CHECK(options.in_features() >= 0 && options.out_features() >= 0,
              "sparsetopk.SparseLinear: in_features = ", options.in_features(), " and out_features = ",
              options.out_features(), " must be >= 0");
  TORCH_CHECK(options.density() >= 0.0 && options.density() <= 1.0,
              "sparsetopk.SparseLinear: density must be in [0, 1], got density = ", options.density());
  TORCH_CHECK(options.per() == SparsityScope::layer || options.per() == SparsityScope::row,
              "sparsetopk.SparseLinear: per = ", static_cast<int>(options.per()), " is not a SparsityScope");
  detail::check_l_p("SparseLinear", options.l(), options.p());
  reset();
}

void SparseLinearImpl::reset() {
  weight = register_parameter("weight", ::torch::empty({options.out_features(), options.in_features()}));
  if (options.bias()) bias = register_parameter("bias", ::torch::empty({options.out_features()}));
  else bias = register_parameter("bias", {}, /*requires_grad=*/false);
  // As torch::nn::Linear: U(-1/sqrt(in_features), 1/sqrt(in_features)) for both.
  if (weight.numel() > 0) ::torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined() && bias.numel() > 0) {
    const double bound = options.in_features() > 0 ? 1.0 / std::sqrt(static_cast<double>(options.in_features())) : 0.0;
    ::torch::nn::init::uniform_(bias, -bound, bound);
  }
}

int64_t SparseLinearImpl::kept() const {
  const int64_t count = options.per() == SparsityScope::row ? options.in_features()
                                                            : options.in_features() * options.out_features();
  return static_cast<int64_t>(std::floor(options.density() * static_cast<double>(count) + 0.5));
}

at::Tensor SparseLinearImpl::effective_weight() const {
  if (options.per() == SparsityScope::row)
    return soft_topk_mag(weight, kept(), options.l(), options.p(), /*dim=*/1);
  return soft_topk_mag(weight.reshape({-1}), kept(), options.l(), options.p()).view_as(weight);
}

at::Tensor SparseLinearImpl::hard_pruned_weight() const {
  const at::Tensor w = weight.detach();
  if (options.per() == SparsityScope::row) return hard_topk_mag(w, kept(), /*dim=*/1);
  return hard_topk_mag(w.reshape({-1}), kept()).view_as(w);
}

at::Tensor SparseLinearImpl::to_sparse() const { return hard_pruned_weight().to_sparse().coalesce(); }

double SparseLinearImpl::sparsity() const {
  ::torch::NoGradGuard no_grad;
  const at::Tensor w = effective_weight();
  if (w.numel() == 0) return 0.0;
  return w.eq(0).sum().item<double>() / static_cast<double>(w.numel());
}

at::Tensor SparseLinearImpl::forward(const at::Tensor& x) {
  return ::torch::nn::functional::linear(x, effective_weight(), bias);
}

void SparseLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "sparsetopk::torch::SparseLinear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features() << ", density=" << options.density()
         << ", per=" << scope_name(options.per()) << ", kept=" << kept() << ", l=" << options.l()
         << ", p=" << options.p() << ", bias=" << (options.bias() ? "true" : "false") << ")";
}

// ---- SoftTopKRouter ----

SoftTopKRouterImpl::SoftTopKRouterImpl(const SoftTopKRouterOptions& options_) : options(options_) {
  TORCH_CHECK(options.num_experts() >= 1, "sparsetopk.SoftTopKRouter: num_experts must be >= 1, got num_experts = ",
              options.num_experts());
  TORCH_CHECK(options.k() >= 1 && options.k() <= options.num_experts(), "sparsetopk.SoftTopKRouter: k = ",
              options.k(), " is out of range [1, num_experts = ", options.num_experts(), "]");
  detail::check_l_p("SoftTopKRouter", options.l(), options.p());
  reset();
}

void SoftTopKRouterImpl::reset() {
  gate = register_module(
      "gate", ::torch::nn::Linear(::torch::nn::LinearOptions(options.d_model(), options.num_experts()).bias(false)));
}

int64_t expert_capacity(int64_t k, int64_t num_experts, int64_t tokens) {
  TORCH_CHECK(num_experts >= 1 && k >= 0 && tokens >= 0, "sparsetopk.expert_capacity: got k = ", k,
              ", num_experts = ", num_experts, ", tokens = ", tokens);
  if (tokens == 0) return 0;
  const double c = static_cast<double>(k) * static_cast<double>(tokens) / static_cast<double>(num_experts);
  return std::clamp<int64_t>(static_cast<int64_t>(std::llround(c)), 1, tokens);
}

RouterOutput SoftTopKRouterImpl::forward(const at::Tensor& x) {
  const at::Tensor logits = gate->forward(x);
  if (options.choice() == RoutingChoice::expert) {
    // One soft top-k per expert along the tokens (all leading dims).
    const at::Tensor flat = logits.reshape({-1, options.num_experts()});
    const int64_t capacity = expert_capacity(options.k(), options.num_experts(), flat.size(0));
    const at::Tensor mask = soft_topk_mask(flat, capacity, options.l(), options.p(), /*dim=*/0).view_as(logits);
    const at::Tensor gates = options.normalize() ? mask * logits.softmax(-1) : mask;
    const at::Tensor expert_mask = gates.ne(0);
    const int64_t used = expert_mask.numel() == 0 ? 0 : expert_mask.sum(-1).max().item<int64_t>();
    const auto sorted = gates.detach().sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true);
    const at::Tensor top_gates = std::get<0>(sorted).narrow(-1, 0, used);
    const at::Tensor expert_indices = std::get<1>(sorted).narrow(-1, 0, used).masked_fill(top_gates.eq(0), -1);
    return {gates, expert_indices, expert_mask};
  }
  const at::Tensor mask = soft_topk_mask(logits, options.k(), options.l(), options.p());
  at::Tensor gates = mask;
  if (options.normalize()) {
    const at::Tensor weighted = mask * logits.softmax(-1);
    gates = weighted / weighted.sum(-1, /*keepdim=*/true);
  }
  const at::Tensor expert_mask = gates.ne(0);
  const int64_t used = expert_mask.numel() == 0 ? 0 : expert_mask.sum(-1).max().item<int64_t>();
  const auto sorted = gates.detach().sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true);
  const at::Tensor top_gates = std::get<0>(sorted).narrow(-1, 0, used);
  const at::Tensor expert_indices = std::get<1>(sorted).narrow(-1, 0, used).masked_fill(top_gates.eq(0), -1);
  return {gates, expert_indices, expert_mask};
}

void SoftTopKRouterImpl::pretty_print(std::ostream& stream) const {
  stream << "sparsetopk::torch::SoftTopKRouter(d_model=" << options.d_model()
         << ", num_experts=" << options.num_experts() << ", k=" << options.k() << ", l=" << options.l()
         << ", p=" << options.p() << ", normalize=" << (options.normalize() ? "true" : "false")
         << ", choice=" << (options.choice() == RoutingChoice::expert ? "expert" : "token") << ")";
}

}  // namespace sparsetopk::torch
