#include "vit/vit.hpp"

#include "data/idx.hpp"

#include <sparsetopk/torch.hpp>

#include <cmath>
#include <fstream>
#include <stdexcept>

namespace sparsetopk::apps::vit {

namespace F = ::torch::nn::functional;

void VitConfig::validate() const {
  const auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  if (image <= 0) fail("image size must be > 0, got " + std::to_string(image));
  if (patch <= 0 || image % patch != 0)
    fail("--patch must divide the image size " + std::to_string(image) + ", got " + std::to_string(patch));
  if (width < 0 || cols() % patch != 0)
    fail("--patch must divide the image width " + std::to_string(cols()) + ", got " + std::to_string(patch));
  if (dim <= 0) fail("--dim must be > 0, got " + std::to_string(dim));
  if (depth <= 0) fail("--depth must be > 0, got " + std::to_string(depth));
  if (heads <= 0 || dim % heads != 0)
    fail("--heads must divide --dim " + std::to_string(dim) + ", got " + std::to_string(heads));
  if (mlp <= 0) fail("--mlp must be > 0, got " + std::to_string(mlp));
  if (classes <= 1) fail("classes must be > 1, got " + std::to_string(classes));
}

at::Tensor self_attention(const at::Tensor& x, const at::Tensor& w_qkv, const at::Tensor& b_qkv,
                          const at::Tensor& w_out, const at::Tensor& b_out, int64_t heads,
                          at::Tensor* probabilities) {
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2), dh = d / heads;
  // [B, T, 3, H, dh] -> [3, B, H, T, dh]
  const auto qkv = F::linear(x, w_qkv, b_qkv).reshape({b, t, 3, heads, dh}).permute({2, 0, 3, 1, 4});
  const auto q = qkv[0], k = qkv[1], v = qkv[2];
  const auto scores = ::torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(dh));
  const auto attn = ::torch::softmax(scores, -1);
  if (probabilities != nullptr) *probabilities = attn;
  const auto mixed = ::torch::matmul(attn, v).transpose(1, 2).reshape({b, t, d});
  return F::linear(mixed, w_out, b_out);
}

BlockImpl::BlockImpl(const VitConfig& c) : heads(c.heads) {
  ln1 = register_module("ln1", ::torch::nn::LayerNorm(::torch::nn::LayerNormOptions({c.dim})));
  qkv = register_module("qkv", ::torch::nn::Linear(c.dim, 3 * c.dim));
  out = register_module("out", ::torch::nn::Linear(c.dim, c.dim));
  ln2 = register_module("ln2", ::torch::nn::LayerNorm(::torch::nn::LayerNormOptions({c.dim})));
  fc1 = register_module("fc1", ::torch::nn::Linear(c.dim, c.mlp));
  fc2 = register_module("fc2", ::torch::nn::Linear(c.mlp, c.dim));
}

at::Tensor BlockImpl::forward(const at::Tensor& x, const at::Tensor* weights) {
  const auto& w_qkv = weights ? weights[0] : qkv->weight;
  const auto& w_out = weights ? weights[1] : out->weight;
  const auto& w_fc1 = weights ? weights[2] : fc1->weight;
  const auto& w_fc2 = weights ? weights[3] : fc2->weight;
  auto h = x + self_attention(ln1(x), w_qkv, qkv->bias, w_out, out->bias, heads);
  return h + F::linear(::torch::gelu(F::linear(ln2(h), w_fc1, fc1->bias)), w_fc2, fc2->bias);
}

VitImpl::VitImpl(const VitConfig& c) : config(c) {
  c.validate();
  embed = register_module("embed", ::torch::nn::Linear(c.patch * c.patch, c.dim));
  cls = register_parameter("cls", ::torch::randn({1, 1, c.dim}) * 0.02);
  pos = register_parameter("pos", ::torch::randn({1, c.patches() + 1, c.dim}) * 0.02);
  for (int64_t i = 0; i < c.depth; ++i) blocks.push_back(register_module("block" + std::to_string(i), Block(c)));
  norm = register_module("norm", ::torch::nn::LayerNorm(::torch::nn::LayerNormOptions({c.dim})));
  head = register_module("head", ::torch::nn::Linear(c.dim, c.classes));
}

at::Tensor VitImpl::forward(const at::Tensor& images, const std::vector<at::Tensor>& weights) {
  if (!weights.empty() && weights.size() != blocks.size() * 4)
    throw std::invalid_argument("Vit::forward: expected " + std::to_string(blocks.size() * 4) +
                                " substitute weights, got " + std::to_string(weights.size()));
  // Fashion-MNIST pixel mean and standard deviation.
  const auto x = (images - 0.2860) / 0.3530;
  auto h = embed(patchify(x, config.image, config.cols(), config.patch));
  h = ::torch::cat({cls.expand({h.size(0), 1, config.dim}), h}, 1) + pos;
  for (size_t i = 0; i < blocks.size(); ++i) h = blocks[i]->forward(h, weights.empty() ? nullptr : &weights[4 * i]);
  return head(norm(h.select(1, 0)));
}

std::vector<at::Tensor> VitImpl::prunable_weights() const {
  std::vector<at::Tensor> w;
  for (const auto& b : blocks)
    for (const auto& layer : {b->qkv, b->out, b->fc1, b->fc2}) w.push_back(layer->weight);
  return w;
}

std::vector<std::string> VitImpl::prunable_names() const {
  std::vector<std::string> names;
  for (size_t i = 0; i < blocks.size(); ++i)
    for (const char* layer : {"qkv", "out", "fc1", "fc2"}) names.push_back("block" + std::to_string(i) + "." + layer);
  return names;
}

void save_checkpoint(Vit& model, const std::vector<int64_t>& tag, const std::string& path) {
  ::torch::serialize::OutputArchive archive;
  model->save(archive);
  archive.write("checkpoint_tag", ::torch::tensor(tag, ::torch::kInt64));
  archive.save_to(path);
}

bool load_checkpoint(Vit& model, const std::vector<int64_t>& tag, const std::string& path,
                     std::vector<int64_t>* found_tag) {
  if (!std::ifstream(path)) throw std::runtime_error("cannot read checkpoint " + path);
  ::torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const std::exception&) {
    throw std::runtime_error("cannot read checkpoint " + path + ": not a checkpoint of this program");
  }
  at::Tensor stored;
  if (!archive.try_read("checkpoint_tag", stored))
    throw std::runtime_error("checkpoint " + path + " has no checkpoint_tag: not written by vit_finetune");
  const auto* data = stored.data_ptr<int64_t>();
  const std::vector<int64_t> file_tag(data, data + stored.numel());
  if (found_tag != nullptr) *found_tag = file_tag;
  if (file_tag != tag) return false;
  model->load(archive);
  return true;
}

int64_t kept(int64_t numel, double sparsity_percent) {
  const double density = 1.0 - sparsity_percent / 100.0;
  return std::max<int64_t>(1, static_cast<int64_t>(std::llround(density * static_cast<double>(numel))));
}

double kth_magnitude(const at::Tensor& w, int64_t k) {
  const auto magnitudes = w.detach().abs().flatten();
  return std::get<0>(::torch::kthvalue(magnitudes, magnitudes.numel() - k + 1)).item<double>();
}

at::Tensor hard_prune(const at::Tensor& w, int64_t k) {
  return sparsetopk::torch::hard_topk_mag(w.flatten(), k).view_as(w);
}

at::Tensor soft_prune(const at::Tensor& w, int64_t k, double l, double p) {
  return sparsetopk::torch::soft_topk_mag(w.flatten(), k, l, p).view_as(w);
}

double band_to_l(double band, double p, double tau) { return p == 2.0 ? band : band * std::pow(tau, 2.0 / 3.0); }

std::vector<at::Tensor> hard_pruned_weights(const Vit& model, double sparsity_percent) {
  ::torch::NoGradGuard no_grad;
  std::vector<at::Tensor> pruned;
  for (const auto& w : model->prunable_weights())
    pruned.push_back(hard_prune(w.detach(), kept(w.numel(), sparsity_percent)));
  return pruned;
}

int64_t kept_total(const std::vector<at::Tensor>& weights, double sparsity_percent) {
  int64_t k = 0;
  for (const auto& w : weights) k += kept(w.numel(), sparsity_percent);
  return k;
}

std::vector<at::Tensor> hard_pruned_weights_global(const Vit& model, double sparsity_percent) {
  ::torch::NoGradGuard no_grad;
  std::vector<at::Tensor> weights;
  for (const auto& w : model->prunable_weights()) weights.push_back(w.detach());
  return sparsetopk::torch::hard_topk_mag_global(weights, kept_total(weights, sparsity_percent));
}

std::vector<double> topk_accuracies(Vit& model, const at::Tensor& images_u8, const at::Tensor& labels,
                                    const std::vector<int64_t>& ks) {
  ::torch::NoGradGuard no_grad;
  const int64_t n = labels.size(0);
  std::vector<int64_t> hits(ks.size(), 0);
  for (int64_t start = 0; start < n; start += 1000) {
    const int64_t end = std::min(start + 1000, n);
    const auto logits = model->forward(to_float(images_u8.slice(0, start, end)));
    const auto y = labels.slice(0, start, end);
    // The label's rank: the number of classes scoring higher, or equal with a lower index.
    const auto label_score = logits.gather(1, y.unsqueeze(1));
    const auto index = ::torch::arange(logits.size(1), y.options()).unsqueeze(0);
    const auto rank = (logits.gt(label_score) | (logits.eq(label_score) & index.lt(y.unsqueeze(1)))).sum(1);
    for (size_t i = 0; i < ks.size(); ++i) hits[i] += rank.lt(ks[i]).sum().item<int64_t>();
  }
  std::vector<double> fractions;
  for (const auto h : hits) fractions.push_back(n == 0 ? 0.0 : static_cast<double>(h) / static_cast<double>(n));
  return fractions;
}

double accuracy(Vit& model, const at::Tensor& images_u8, const at::Tensor& labels,
                const std::vector<at::Tensor>& weights) {
  ::torch::NoGradGuard no_grad;
  const int64_t n = labels.size(0);
  if (n == 0) return 0;
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += 1000) {
    const int64_t end = std::min(start + 1000, n);
    const auto logits = model->forward(to_float(images_u8.slice(0, start, end)), weights);
    correct += logits.argmax(1).eq(labels.slice(0, start, end)).sum().item<int64_t>();
  }
  return static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace sparsetopk::apps::vit
