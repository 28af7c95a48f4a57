#include "moe/moe.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace sparsetopk::apps::moe {

namespace stt = sparsetopk::torch;
namespace F = ::torch::nn::functional;

double logit_scale(const at::Tensor& logits) {
  ::torch::NoGradGuard no_grad;
  return logits.detach().std(/*dim=*/{-1}, /*unbiased=*/false).mean().item<double>();
}

at::Tensor topk_gates(const at::Tensor& logits, int64_t k) {
  const auto probs = logits.softmax(-1);
  const auto kept = stt::hard_topk_mask(logits.detach(), k);
  const auto weighted = probs * kept;
  return weighted / weighted.sum(-1, /*keepdim=*/true);
}

at::Tensor load_balancing_loss(const at::Tensor& logits, const at::Tensor& gates) {
  const int64_t e = logits.size(-1);
  const auto assigned = gates.detach().ne(0).to(logits.scalar_type()).reshape({-1, e});
  const auto f = assigned.sum(0) / assigned.sum().clamp_min(1);
  const auto mean_prob = logits.softmax(-1).reshape({-1, e}).mean(0);
  return static_cast<double>(e) * (f * mean_prob).sum();
}

ExpertImpl::ExpertImpl(int64_t d_model, int64_t d_hidden) {
  fc1 = register_module("fc1", ::torch::nn::Linear(d_model, d_hidden));
  fc2 = register_module("fc2", ::torch::nn::Linear(d_hidden, d_model));
}

at::Tensor ExpertImpl::forward(const at::Tensor& x) { return fc2(F::gelu(fc1(x))); }

MoeLayerImpl::MoeLayerImpl(const MoeConfig& config_) : config(config_) {
  if (config.k < 1 || config.k > config.num_experts)
    throw std::invalid_argument("k = " + std::to_string(config.k) + " is out of range [1, num_experts = " +
                                std::to_string(config.num_experts) + "]");
  if (!(config.l_rel > 0)) throw std::invalid_argument("l_rel must be > 0, got " + std::to_string(config.l_rel));
  if (!(config.p > 1)) throw std::invalid_argument("p must be > 1, got " + std::to_string(config.p));
  router = register_module(
      "router", stt::SoftTopKRouter(stt::SoftTopKRouterOptions(config.d_model, config.num_experts, config.k)
                                        .p(config.p)
                                        .normalize(true)
                                        .choice(config.router == RouterKind::expert ? stt::RoutingChoice::expert
                                                                                    : stt::RoutingChoice::token)));
  for (int64_t e = 0; e < config.num_experts; ++e)
    experts.push_back(register_module("expert" + std::to_string(e), Expert(config.d_model, config.d_hidden)));
  running_scale = register_buffer("running_scale", ::torch::zeros({}, ::torch::kFloat64));
}

double MoeLayerImpl::soft_l(const at::Tensor& logits) {
  double scale = running_scale.item<double>();
  if (is_training()) {
    const double measured = logit_scale(logits);
    scale = scale == 0 ? measured : config.scale_momentum * scale + (1 - config.scale_momentum) * measured;
    running_scale.fill_(scale);
  } else if (scale == 0) {
    scale = logit_scale(logits);  // never trained: measure on this batch
  }
  // Floor: l must stay > 0 even if every token's logits are equal.
  return config.l_rel * std::max(scale, 1e-6);
}

at::Tensor MoeLayerImpl::gates_for(const at::Tensor& x, const at::Tensor& logits, double* l) {
  *l = 0;
  switch (config.router) {
    case RouterKind::dense:
      return logits.softmax(-1);
    case RouterKind::topk:
      return topk_gates(logits, config.k);
    case RouterKind::soft:
    case RouterKind::expert: {
      *l = soft_l(logits);
      router->options.l(*l);  // the module's l follows the logit scale
      return router->forward(x).gates;
    }
  }
  return logits.softmax(-1);
}

at::Tensor MoeLayerImpl::dispatch(const at::Tensor& x, const at::Tensor& gates) {
  auto out = ::torch::zeros_like(x);
  const auto active = gates.detach().ne(0);
  for (int64_t e = 0; e < config.num_experts; ++e) {
    const auto rows = active.select(1, e).nonzero().squeeze(1);
    if (rows.numel() == 0) continue;
    const auto y = experts[static_cast<size_t>(e)]->forward(x.index_select(0, rows));
    const auto g = gates.select(1, e).index_select(0, rows).unsqueeze(1);
    out.index_add_(0, rows, y * g);
  }
  return out;
}

at::Tensor MoeLayerImpl::dispatch_dense(const at::Tensor& x, const at::Tensor& gates) {
  auto out = ::torch::zeros_like(x);
  for (int64_t e = 0; e < config.num_experts; ++e)
    out = out + gates.select(1, e).unsqueeze(1) * experts[static_cast<size_t>(e)]->forward(x);
  return out;
}

MoeOutput MoeLayerImpl::forward(const at::Tensor& x) {
  MoeOutput out;
  out.logits = router->gate->forward(x);
  out.gates = gates_for(x, out.logits, &out.l);
  out.y = dispatch(x, out.gates);
  return out;
}

MoeClassifierImpl::MoeClassifierImpl(const MoeConfig& config_) : config(config_) {
  embed = register_module("embed", ::torch::nn::Linear(config.patch_size(), config.d_model));
  position = register_parameter("position", ::torch::randn({config.tokens_per_image(), config.d_model}) * 0.02);
  norm_in = register_module("norm_in", ::torch::nn::LayerNorm(::torch::nn::LayerNormOptions({config.d_model})));
  moe = register_module("moe", MoeLayer(config));
  norm_out = register_module("norm_out", ::torch::nn::LayerNorm(::torch::nn::LayerNormOptions({config.d_model})));
  head = register_module("head", ::torch::nn::Linear(config.d_model, config.num_classes));
}

ClassifierOutput MoeClassifierImpl::forward(const at::Tensor& images) {
  const auto tokens = patchify(images, config.image_side, config.patch_side);  // [B, T, P]
  const int64_t b = tokens.size(0), t = tokens.size(1);
  auto h = embed(tokens) + position;                                              // [B, T, d]
  const auto flat = h.reshape({b * t, config.d_model});
  const auto routed = moe(norm_in(flat));
  h = (flat + routed.y).reshape({b, t, config.d_model});
  ClassifierOutput out;
  out.logits = head(norm_out(h.mean(1)));
  out.aux_loss = load_balancing_loss(routed.logits, routed.gates);
  out.gates = routed.gates.detach();
  out.l = routed.l;
  return out;
}

void RoutingStats::add(const at::Tensor& gates) {
  const auto active = gates.detach().ne(0);
  const auto per_token = active.sum(1);
  tokens += active.size(0);
  assignments += per_token.sum().item<int64_t>();
  zero_tokens += per_token.eq(0).sum().item<int64_t>();
  if (active.size(0) > 0) max_experts = std::max(max_experts, per_token.max().item<int64_t>());
  const auto counts = active.sum(0).to(::torch::kInt64).contiguous();
  const auto* c = counts.data_ptr<int64_t>();
  for (size_t e = 0; e < per_expert.size(); ++e) per_expert[e] += c[e];
}

std::vector<double> RoutingStats::load() const {
  std::vector<double> fractions(per_expert.size(), 0.0);
  if (assignments == 0) return fractions;
  for (size_t e = 0; e < per_expert.size(); ++e)
    fractions[e] = static_cast<double>(per_expert[e]) / static_cast<double>(assignments);
  return fractions;
}

double RoutingStats::load_min() const {
  const auto f = load();
  return f.empty() ? 0 : *std::min_element(f.begin(), f.end());
}

double RoutingStats::load_max() const {
  const auto f = load();
  return f.empty() ? 0 : *std::max_element(f.begin(), f.end());
}

double RoutingStats::load_cv() const {
  const auto f = load();
  if (f.empty()) return 0;
  double mean = 0, var = 0;
  for (const double x : f) mean += x;
  mean /= static_cast<double>(f.size());
  for (const double x : f) var += (x - mean) * (x - mean);
  var /= static_cast<double>(f.size());
  return mean == 0 ? 0 : std::sqrt(var) / mean;
}

}  // namespace sparsetopk::apps::moe
