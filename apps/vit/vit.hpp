#pragma once
// A small vision transformer for 28x28 grey images (Fashion-MNIST), written
// with explicit weight tensors so that a forward pass can substitute pruned
// versions of the Linear weights inside the transformer blocks, and the
// per-layer and global top-k pruning helpers used by apps/vit/vit_finetune.cpp.
//
// Model: the image is cut into (28/patch)^2 non-overlapping patches (a
// (28/patch) x (width/patch) grid for images of another width), each
// patch is embedded by a Linear(patch^2, dim), a learned CLS token is
// prepended and learned position embeddings are added; then `depth` pre-LN
// blocks  x += Attn(LN(x)),  x += MLP(LN(x))  (multi-head self-attention with
// a fused qkv projection and an output projection; MLP dim -> mlp -> dim with
// GELU); a final LayerNorm and a Linear head on the CLS token.
//
// Prunable weights: the four Linear weight matrices of every block (qkv,
// attention output, MLP in, MLP out), in that order, block by block. The
// patch embedding, CLS token, position embeddings, LayerNorms, all biases and
// the head stay dense.

#include "data/idx.hpp"

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sparsetopk::apps::vit {

struct VitConfig {
  int64_t image = 28;   // images are image x image pixels (image x width if width > 0)
  int64_t width = 0;    // > 0: image columns, for non-square images (the pairs of vit_topk)
  int64_t patch = 7;    // patch side; must divide image
  int64_t dim = 64;     // token width
  int64_t depth = 4;    // transformer blocks
  int64_t heads = 4;    // attention heads; must divide dim
  int64_t mlp = 128;    // MLP hidden width
  int64_t classes = 10;

  int64_t cols() const { return width > 0 ? width : image; }
  int64_t patches() const { return (image / patch) * (cols() / patch); }
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};


// Multi-head self-attention on x [B, T, dim] with a fused qkv projection
// (w_qkv [3 dim, dim]: rows q, then k, then v) and an output projection
// (w_out [dim, dim]). No mask (every token attends to every token). If
// `probabilities` is not null it receives the attention weights [B, heads, T, T]
// (each row a softmax: non-negative, sums to 1).
at::Tensor self_attention(const at::Tensor& x, const at::Tensor& w_qkv, const at::Tensor& b_qkv,
                          const at::Tensor& w_out, const at::Tensor& b_out, int64_t heads,
                          at::Tensor* probabilities = nullptr);

struct BlockImpl : ::torch::nn::Module {
  explicit BlockImpl(const VitConfig& c);
  ::torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  ::torch::nn::Linear qkv{nullptr}, out{nullptr}, fc1{nullptr}, fc2{nullptr};
  int64_t heads;
  // weights: {qkv, out, fc1, fc2} weight tensors to use instead of the own ones.
  at::Tensor forward(const at::Tensor& x, const at::Tensor* weights = nullptr);
};
// The holder (shared pointer) type, spelled out instead of TORCH_MODULE so that
// `torch` always means ::torch even where sparsetopk::torch is visible.
class Block : public ::torch::nn::ModuleHolder<BlockImpl> {
 public:
  using ::torch::nn::ModuleHolder<BlockImpl>::ModuleHolder;
  using Impl = BlockImpl;
};

struct VitImpl : ::torch::nn::Module {
  explicit VitImpl(const VitConfig& c = {});

  // Logits [B, classes] for images [B, image * image] in [0, 1]. If `weights`
  // is not empty it replaces the prunable weights (same order and shapes as
  // prunable_weights()); everything else is the module's own parameters.
  at::Tensor forward(const at::Tensor& images, const std::vector<at::Tensor>& weights = {});

  // The prunable weights (4 per block: qkv, out, fc1, fc2), the parameters
  // themselves (not copies), and their names ("block0.qkv", ...).
  std::vector<at::Tensor> prunable_weights() const;
  std::vector<std::string> prunable_names() const;

  VitConfig config;
  ::torch::nn::Linear embed{nullptr};
  at::Tensor cls, pos;
  std::vector<Block> blocks;
  ::torch::nn::LayerNorm norm{nullptr};
  ::torch::nn::Linear head{nullptr};
};
class Vit : public ::torch::nn::ModuleHolder<VitImpl> {
 public:
  using ::torch::nn::ModuleHolder<VitImpl>::ModuleHolder;
  using Impl = VitImpl;
};

// Checkpoints: the parameters plus a tag tensor (int64) that describes how
// the network was made (config and training settings); load_checkpoint
// returns false (and leaves the model untouched) if the file's tag differs
// from `tag`, and throws std::runtime_error naming the file if it is missing
// or unreadable.
void save_checkpoint(Vit& model, const std::vector<int64_t>& tag, const std::string& path);
bool load_checkpoint(Vit& model, const std::vector<int64_t>& tag, const std::string& path,
                     std::vector<int64_t>* found_tag = nullptr);

// ---- per-layer top-k pruning ----

// Weights kept in a layer of `numel` weights at `sparsity_percent`:
// round((1 - s/100) * numel), at least 1.
int64_t kept(int64_t numel, double sparsity_percent);

// The k-th largest |w| over the whole tensor (detached).
double kth_magnitude(const at::Tensor& w, int64_t k);

// hard_topk_mag over the whole flattened tensor, reshaped back: exactly k
// non-zeros (fewer only where w itself is 0). Differentiable (gradient to the
// kept weights only).
at::Tensor hard_prune(const at::Tensor& w, int64_t k);

// soft_topk_mag over the whole flattened tensor, reshaped back. Differentiable.
at::Tensor soft_prune(const at::Tensor& w, int64_t k, double l, double p);

// The regularization l for a relative band width `band` (prune_mlp's rule,
// docs/applications.md): p = 2: l = band; otherwise l = band * tau^(2/3),
// tau the layer's k-th largest |w|.
double band_to_l(double band, double p, double tau);

// Hard-pruned copies (detached) of every prunable weight of `model`.
std::vector<at::Tensor> hard_pruned_weights(const Vit& model, double sparsity_percent);

// ---- one budget over all prunable layers (global pruning) ----

// The global budget: the sum over `weights` of kept(numel, sparsity_percent),
// so a global method keeps as many weights as the per-layer ones.
int64_t kept_total(const std::vector<at::Tensor>& weights, double sparsity_percent);

// Hard-pruned copies (detached) of every prunable weight of `model` under one
// budget: hard_topk_mag_global over all of them with K = kept_total (exactly K
// non-zeros in all, however they fall between the layers).
std::vector<at::Tensor> hard_pruned_weights_global(const Vit& model, double sparsity_percent);

// For each k of `ks`, the fraction of `images` [N, features] uint8 whose
// label (`labels` [N]) is among the k highest logits (ties broken by index),
// in batches of 1000.
std::vector<double> topk_accuracies(Vit& model, const at::Tensor& images_u8, const at::Tensor& labels,
                                    const std::vector<int64_t>& ks);

// Fraction of correct predictions over `images` [N, 784] uint8 / `labels` [N],
// in batches of 1000, with `weights` substituted as in forward.
double accuracy(Vit& model, const at::Tensor& images_u8, const at::Tensor& labels,
                const std::vector<at::Tensor>& weights = {});

}  // namespace sparsetopk::apps::vit
