#pragma once
// A small sparse mixture-of-experts token model for 28x28 images, and the
// routers compared by apps/moe/moe_router.cpp:
//
//   image [784] -> 16 patches of 7x7 (tokens of 49 values)
//     -> linear embedding (d_model) + learned position embedding
//     -> h = h + MoE(LayerNorm(h))              (one residual MoE layer)
//     -> mean over tokens -> LayerNorm -> linear classifier
//
// The MoE layer has `num_experts` expert MLPs d_model -> d_hidden -> d_model
// (GELU) and a router z = h A^T (no bias, one row of logits per token). The
// gates g (one row per token, >= 0, sum 1) come from one of:
//   dense  g = softmax(z): every expert evaluated (the cost reference);
//   topk   softmax(z), keep the k largest, renormalize over them
//          (Switch / GShard / Mixtral style);
//   soft   sparsetopk::torch::SoftTopKRouter: m = soft_topk_mask(z, k, l, p),
//          g = m * softmax(z) / sum(m * softmax(z)). A token evaluates the
//          experts with m != 0: k of them, or more when logits fall in the
//          band of width ~l around its k-th largest logit.
//   expert SoftTopKRouter with choice = expert (expert choice, Zhou et al.
//          2022): each expert takes m = soft_topk_mask(z[:, e], c, l, p) over
//          the batch's tokens, capacity c = round(k * tokens / num_experts),
//          g = m * softmax(z) (not renormalized). A token may get any number
//          of experts, none included, and its routing depends on the other
//          tokens of the batch (at evaluation too: the evaluation batch).
//
// Dispatch is sparse for every router: each expert runs only on the tokens
// whose gate for it is non-zero (nonzero + index_select), and its output,
// times the gate, is scattered back with index_add_.
//
// l for the soft router is relative to the scale of the logits, which drifts
// during training: l = l_rel * s, where s is an exponential moving average
// (momentum 0.9, updated on every training forward, detached) of the mean over
// tokens of the standard deviation of a token's logits across experts. s is a
// buffer, frozen at evaluation, like BatchNorm's running statistics, so a
// token's routing at test time does not depend on the other tokens.

#include "data/idx.hpp"

#include <sparsetopk/torch.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sparsetopk::apps::moe {

enum class RouterKind { dense, topk, soft, expert };

struct MoeConfig {
  int64_t image_side = 28;
  int64_t patch_side = 7;
  int64_t d_model = 64;
  int64_t d_hidden = 128;
  int64_t num_experts = 8;
  int64_t k = 2;
  int64_t num_classes = 10;
  RouterKind router = RouterKind::topk;
  double l_rel = 0.5;       // soft: l = l_rel * (running logit scale)
  double p = 4.0 / 3.0;     // soft: p of the soft top-k mask
  double scale_momentum = 0.9;

  int64_t tokens_per_image() const { return (image_side / patch_side) * (image_side / patch_side); }
  int64_t patch_size() const { return patch_side * patch_side; }
};


// Mean over tokens of the standard deviation of each token's logits across
// experts (biased), detached: the scale that l is relative to.
double logit_scale(const at::Tensor& logits);

// Gates of the hard top-k router: softmax(z), kept on the k largest logits
// (ties: lower index first), renormalized over them. Differentiable through
// the softmax of the kept experts.
at::Tensor topk_gates(const at::Tensor& logits, int64_t k);

// Load-balancing auxiliary loss (Switch Transformer, Fedus et al. 2021),
// applied identically to every router: E * sum_e f_e * P_e, with f_e the
// fraction of token-expert assignments (gates != 0) that go to expert e
// (not differentiable) and P_e the mean over tokens of softmax(z)_e. Equal to
// 1 when both are uniform; constant (no gradient) for the dense router.
at::Tensor load_balancing_loss(const at::Tensor& logits, const at::Tensor& gates);

struct ExpertImpl : ::torch::nn::Module {
  ExpertImpl(int64_t d_model, int64_t d_hidden);
  at::Tensor forward(const at::Tensor& x);
  ::torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
class Expert : public ::torch::nn::ModuleHolder<ExpertImpl> {
 public:
  using ::torch::nn::ModuleHolder<ExpertImpl>::ModuleHolder;
  using Impl = ExpertImpl;
};

struct MoeOutput {
  at::Tensor y;       // [T, d_model]
  at::Tensor logits;  // [T, num_experts] router logits
  at::Tensor gates;   // [T, num_experts], rows sum to 1, 0 for experts not evaluated
  double l = 0;       // soft router: the l used (0 otherwise)
};

// The MoE layer alone, on a flat batch of tokens [T, d_model].
struct MoeLayerImpl : ::torch::nn::Module {
  explicit MoeLayerImpl(const MoeConfig& config);
  MoeOutput forward(const at::Tensor& x);

  // The l the soft router uses now (training: after updating the running
  // scale with `logits`; evaluation: from the frozen running scale).
  double soft_l(const at::Tensor& logits);
  at::Tensor gates_for(const at::Tensor& x, const at::Tensor& logits, double* l);

  // Sparse dispatch: sum_e gates[:, e] * expert_e(x), evaluating expert e only
  // on the rows with gates[:, e] != 0.
  at::Tensor dispatch(const at::Tensor& x, const at::Tensor& gates);
  // The same sum computed densely (every expert on every token); for tests.
  at::Tensor dispatch_dense(const at::Tensor& x, const at::Tensor& gates);

  MoeConfig config;
  sparsetopk::torch::SoftTopKRouter router{nullptr};  // its `gate` gives the logits for every router kind
  std::vector<Expert> experts;
  at::Tensor running_scale;  // buffer: running logit scale (soft router); 0 = not yet measured
};
class MoeLayer : public ::torch::nn::ModuleHolder<MoeLayerImpl> {
 public:
  using ::torch::nn::ModuleHolder<MoeLayerImpl>::ModuleHolder;
  using Impl = MoeLayerImpl;
};

struct ClassifierOutput {
  at::Tensor logits;      // [B, num_classes]
  at::Tensor aux_loss;    // scalar load-balancing loss of the MoE layer
  at::Tensor gates;       // [B * tokens, num_experts], detached
  double l = 0;
};

struct MoeClassifierImpl : ::torch::nn::Module {
  explicit MoeClassifierImpl(const MoeConfig& config);
  ClassifierOutput forward(const at::Tensor& images);  // images [B, 784] float in [0, 1]

  MoeConfig config;
  ::torch::nn::Linear embed{nullptr};
  at::Tensor position;  // [tokens, d_model]
  ::torch::nn::LayerNorm norm_in{nullptr}, norm_out{nullptr};
  MoeLayer moe{nullptr};
  ::torch::nn::Linear head{nullptr};
};
class MoeClassifier : public ::torch::nn::ModuleHolder<MoeClassifierImpl> {
 public:
  using ::torch::nn::ModuleHolder<MoeClassifierImpl>::ModuleHolder;
  using Impl = MoeClassifierImpl;
};

// Routing statistics accumulated over batches of gates.
struct RoutingStats {
  explicit RoutingStats(int64_t num_experts = 0) : per_expert(static_cast<size_t>(num_experts), 0) {}
  void add(const at::Tensor& gates);  // [T, E]
  double mean_experts() const { return tokens == 0 ? 0 : static_cast<double>(assignments) / static_cast<double>(tokens); }
  std::vector<double> load() const;  // fraction of the assignments per expert (sums to 1)
  double load_min() const;
  double load_max() const;
  double load_cv() const;  // coefficient of variation std/mean of load() (population std)
  // The fraction of tokens that no expert evaluates (gates all 0).
  double zero_expert_fraction() const {
    return tokens == 0 ? 0 : static_cast<double>(zero_tokens) / static_cast<double>(tokens);
  }

  int64_t tokens = 0;
  int64_t assignments = 0;
  int64_t max_experts = 0;
  int64_t zero_tokens = 0;
  std::vector<int64_t> per_expert;
};

}  // namespace sparsetopk::apps::moe
