#pragma once
// LibTorch bindings: the operators of <sparsetopk/topk.hpp> on torch tensors,
// differentiable (first derivatives), and modules built on them.
//
// Link against the `sparsetopk_torch` library (libsparsetopk_torch.so). It
// also registers the operators as torch.ops.sparsetopk.* for TorchScript and
// Python. Tensors may have any shape: the operator is applied to every slice
// along `dim`. float32 and float64 are computed natively, float16 and bfloat16
// in float32 and returned in their own dtype. CPU tensors run the core
// (Solver::automatic, pav, threshold; Solver::dykstra: dykstra.hpp); tensors
// on other devices, and Solver::generic on the CPU, run the ATen
// implementation (docs/generic.md; Solver::dykstra: docs/dykstra.md). Solver
// here is the torch operators' choice, a superset of the core's
// sparsetopk::Solver. Errors are
// c10::Error (c10::IndexError for a bad `dim`) with messages that name the
// argument and its value.

#include <sparsetopk/topk.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace sparsetopk::torch {

// How a soft operator is solved: the core's exact solvers, the ATen
// implementation, or Dykstra's iterations.
enum class Solver {
  automatic,  // the core's default on CPU tensors, `generic` on other devices
  pav,        // the core's sparsetopk::Solver::pav (CPU)
  threshold,  // the core's sparsetopk::Solver::threshold (CPU)
  generic,    // the ATen implementation (docs/generic.md), on any device
  dykstra,    // p = 2: Dykstra's alternating projections, approximate (dykstra.hpp, docs/dykstra.md)
};

// Soft top-k mask along `dim` (SPEC.md): values in [0, 1] summing to k,
// exactly 1 far above the k-th largest entry and exactly 0 below it.
// Differentiable; requires 0 <= k <= x.size(dim), l > 0, p > 1.
// Solver::dykstra needs p = 2 and runs num_iter >= 1 iterations (unset: its
// default, docs/dykstra.md); the other solvers take no num_iter.
at::Tensor soft_topk_mask(const at::Tensor& x, int64_t k, double l = 0.1, double p = 4.0 / 3.0,
                          int64_t dim = -1, Solver solver = Solver::automatic,
                          std::optional<int64_t> num_iter = std::nullopt);

// Soft top-k in magnitude along `dim` (SPEC.md): entries well inside the k
// largest |x_i| come back unchanged, entries well outside are exactly 0, a band
// around the k-th magnitude is shrunk. Differentiable. Solver and num_iter as above.
at::Tensor soft_topk_mag(const at::Tensor& x, int64_t k, double l = 0.1, double p = 4.0 / 3.0,
                         int64_t dim = -1, Solver solver = Solver::automatic,
                         std::optional<int64_t> num_iter = std::nullopt);

// Hard top-k mask: 1 on the k largest entries along `dim` (ties: lower index
// first), else 0. Not differentiable: the result never requires grad.
at::Tensor hard_topk_mask(const at::Tensor& x, int64_t k, int64_t dim = -1);

// Hard top-k in magnitude: x_i on the k largest |x_i| along `dim`, else 0.
// Its gradient is the hard mask (x_i kept: 1, else 0).
at::Tensor hard_topk_mag(const at::Tensor& x, int64_t k, int64_t dim = -1);

// The smoothed sum of the k largest entries along `dim` (SPEC.md, "Smoothed
// top-k sum"): x with dim reduced. Its gradient is soft_topk_mask(x, k, l, p,
// dim) and its second derivative (the mask's Jacobian) is exact. CPU tensors.
at::Tensor topk_sum(const at::Tensor& x, int64_t k, double l = 0.1, double p = 4.0 / 3.0, int64_t dim = -1);

// ---- one top-k over several tensors (SPEC.md, "One top-k over many tensors";
// docs/global.md), in this process: the row operator on the concatenation of
// the flattened tensors, returned in their shapes, nothing concatenated.
// Non-empty lists of CPU tensors, all float32 or all float64;
// 0 <= k <= total entries.

// Soft top-k in magnitude over all entries of x with one k. Differentiable
// (first derivatives, every tensor).
std::vector<at::Tensor> soft_topk_mag_global(const std::vector<at::Tensor>& x, int64_t k, double l = 0.1,
                                             double p = 4.0 / 3.0);

// Hard top-k mask over all entries of x (ties: the lower position in the
// concatenation first). Never requires grad.
std::vector<at::Tensor> hard_topk_mask_global(const std::vector<at::Tensor>& x, int64_t k);

// Hard top-k in magnitude: x_j * hard_topk_mask_global(|x|, k)_j, whose
// gradient is that mask.
std::vector<at::Tensor> hard_topk_mag_global(const std::vector<at::Tensor>& x, int64_t k);

// How topk_loss reduces its per-slice losses.
enum class Reduction { mean, sum, none };

// The top-k loss (SPEC.md, "Top-k loss") of the scores along `dim` (the
// classes) against int64 labels `target` (scores' shape without dim): 0
// exactly where the label is safely among the k best scores. 1 <= k <= n.
// Differentiable once in scores. CPU tensors.
at::Tensor topk_loss(const at::Tensor& scores, const at::Tensor& target, int64_t k, double l = 0.1,
                     double p = 4.0 / 3.0, int64_t dim = -1, Reduction reduction = Reduction::mean);

// ---- modules ----

struct SoftTopKMaskOptions {
  /* implicit */ SoftTopKMaskOptions(int64_t k) : k_(k) {}
  TORCH_ARG(int64_t, k);
  TORCH_ARG(double, l) = 0.1;
  TORCH_ARG(double, p) = 4.0 / 3.0;
  TORCH_ARG(int64_t, dim) = -1;
  TORCH_ARG(Solver, solver) = Solver::automatic;
  TORCH_ARG(std::optional<int64_t>, num_iter) = std::nullopt;  // Solver::dykstra only
};

// y = soft_topk_mask(x, k, l, p, dim, solver, num_iter). No parameters.
class SoftTopKMaskImpl : public ::torch::nn::Cloneable<SoftTopKMaskImpl> {
 public:
  explicit SoftTopKMaskImpl(const SoftTopKMaskOptions& options);
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  SoftTopKMaskOptions options;
};

class SoftTopKMask : public ::torch::nn::ModuleHolder<SoftTopKMaskImpl> {
 public:
  using ::torch::nn::ModuleHolder<SoftTopKMaskImpl>::ModuleHolder;
  using Impl = SoftTopKMaskImpl;
};

using SoftTopKMagnitudeOptions = SoftTopKMaskOptions;

// y = soft_topk_mag(x, k, l, p, dim, solver, num_iter). No parameters.
class SoftTopKMagnitudeImpl : public ::torch::nn::Cloneable<SoftTopKMagnitudeImpl> {
 public:
  explicit SoftTopKMagnitudeImpl(const SoftTopKMagnitudeOptions& options);
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  SoftTopKMagnitudeOptions options;
};

class SoftTopKMagnitude : public ::torch::nn::ModuleHolder<SoftTopKMagnitudeImpl> {
 public:
  using ::torch::nn::ModuleHolder<SoftTopKMagnitudeImpl>::ModuleHolder;
  using Impl = SoftTopKMagnitudeImpl;
};

// Which weights compete for the kept slots of a SparseLinear layer.
enum class SparsityScope {
  layer,  // all out_features * in_features weights together
  row,    // each output row (in_features weights) separately
};

struct SparseLinearOptions {
  SparseLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  // Fraction of the weights kept: k = floor(density * count + 1/2), count the
  // number of weights in the layer or in a row (see `per`). In [0, 1].
  TORCH_ARG(double, density) = 0.1;
  TORCH_ARG(SparsityScope, per) = SparsityScope::layer;
  // Regularization of the soft top-k in magnitude, in the units of the weights
  // (initialized in +-1/sqrt(in_features)): the default shrinks a narrow band.
  TORCH_ARG(double, l) = 0.01;
  TORCH_ARG(double, p) = 4.0 / 3.0;
  TORCH_ARG(bool, bias) = true;
};

// A linear layer y = x W_s^T + b whose weight W_s = soft_topk_mag(W, k) keeps
// the k largest-magnitude weights of the layer (or of every row) and is exactly
// zero on most of the others; the dense W is the trained parameter. The weight
// and bias are initialized like torch::nn::Linear.
class SparseLinearImpl : public ::torch::nn::Cloneable<SparseLinearImpl> {
 public:
  explicit SparseLinearImpl(const SparseLinearOptions& options);
  SparseLinearImpl(int64_t in_features, int64_t out_features)
      : SparseLinearImpl(SparseLinearOptions(in_features, out_features)) {}
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  // Weights kept per group (the layer, or one row).
  int64_t kept() const;
  // W_s, the soft-pruned weight the forward pass uses (differentiable).
  at::Tensor effective_weight() const;
  // The hard-pruned weight hard_topk_mag(W, k) (per layer or per row): exactly
  // `kept()` non-zero weights per group (fewer only where W itself is 0).
  // Dense layout, detached.
  at::Tensor hard_pruned_weight() const;
  // hard_pruned_weight() as a coalesced sparse COO tensor.
  at::Tensor to_sparse() const;
  // Fraction of exactly-zero entries of effective_weight().
  double sparsity() const;

  SparseLinearOptions options;
  at::Tensor weight;  // [out_features, in_features], dense
  at::Tensor bias;    // [out_features], or undefined without bias
};

class SparseLinear : public ::torch::nn::ModuleHolder<SparseLinearImpl> {
 public:
  using ::torch::nn::ModuleHolder<SparseLinearImpl>::ModuleHolder;
  using Impl = SparseLinearImpl;
};

// Who chooses in a SoftTopKRouter.
enum class RoutingChoice {
  token,   // each token takes a soft top-k of the experts (k experts per token)
  expert,  // each expert takes a soft top-k of the tokens (expert choice)
};

struct SoftTopKRouterOptions {
  SoftTopKRouterOptions(int64_t d_model, int64_t num_experts, int64_t k)
      : d_model_(d_model), num_experts_(num_experts), k_(k) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, k);  // 1 <= k <= num_experts
  TORCH_ARG(double, l) = 0.1;
  TORCH_ARG(double, p) = 4.0 / 3.0;
  // true: gates = m * softmax(z) / sum(m * softmax(z)), rows sum to 1.
  // false: gates = m, the soft mask itself, rows sum to k.
  TORCH_ARG(bool, normalize) = true;
  // token: the above. expert: m = soft_topk_mask(z, c, l, p) along the tokens
  // (every leading dim of x flattened), one soft top-k per expert, with
  // capacity c = clamp(round(k * tokens / num_experts), 1, tokens): k experts
  // per token on average. Gates: normalize, m * softmax(z) (not renormalized:
  // a token may get no expert); else m.
  TORCH_ARG(RoutingChoice, choice) = RoutingChoice::token;
};

// Expert choice: the capacity, tokens per expert, of a batch of `tokens` tokens.
int64_t expert_capacity(int64_t k, int64_t num_experts, int64_t tokens);

struct RouterOutput {
  at::Tensor gates;           // [..., num_experts], >= 0, exactly 0 for unused experts
  at::Tensor expert_indices;  // [..., m] int64: the used experts, largest gate first, padded with -1
  at::Tensor expert_mask;     // [..., num_experts] bool: gates != 0
};

// Mixture-of-experts router: logits z = x A^T (no bias), soft top-k mask
// m = soft_topk_mask(z, k, l, p) over the experts; see `normalize` for the
// gates. A token uses exactly k experts unless logits sit in the band of
// width ~l around its k-th largest logit, where the mask is fractional and a
// few more experts share the load. m is the number of experts used by the
// busiest token. With choice = expert, each expert takes a soft top-k of the
// tokens instead (see SoftTopKRouterOptions::choice): a token's routing then
// depends on the other tokens of the batch.
class SoftTopKRouterImpl : public ::torch::nn::Cloneable<SoftTopKRouterImpl> {
 public:
  explicit SoftTopKRouterImpl(const SoftTopKRouterOptions& options);
  SoftTopKRouterImpl(int64_t d_model, int64_t num_experts, int64_t k)
      : SoftTopKRouterImpl(SoftTopKRouterOptions(d_model, num_experts, k)) {}
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  RouterOutput forward(const at::Tensor& x);

  SoftTopKRouterOptions options;
  ::torch::nn::Linear gate{nullptr};
};

class SoftTopKRouter : public ::torch::nn::ModuleHolder<SoftTopKRouterImpl> {
 public:
  using ::torch::nn::ModuleHolder<SoftTopKRouterImpl>::ModuleHolder;
  using Impl = SoftTopKRouterImpl;
};

}  // namespace sparsetopk::torch
