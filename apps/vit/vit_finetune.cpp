// Sparse fine-tuning of a small vision transformer (apps/vit/vit.hpp) on
// Fashion-MNIST (or any IDX dataset of 28x28 images).
//
// Phase 1: train the ViT densely (Adam, linear warm-up then cosine decay),
// save it (--checkpoint; reused when it exists, was made with the same model
// and pre-training settings, and --retrain is not given) and measure its
// accuracy ("before").
// Phase 2: for every seed, sparsity and method, start again from the
// checkpoint and fine-tune the whole network for the same number of steps
// with the same optimizer (Adam, cosine-decayed lr) under a weight budget:
// each prunable weight matrix (qkv, attention output, MLP in, MLP out of every
// block) keeps k = round((1 - sparsity) * numel) weights. Methods:
//   oneshot  hard magnitude pruning of each layer once (accuracy recorded
//            right after it), then fine-tuning with the mask fixed (pruned
//            weights stay 0, gradient to kept weights only)
//   gradual  gradual magnitude pruning (Zhu & Gupta 2017): the sparsity of
//            each layer rises as s * (1 - (1 - t / (0.75 T))^3) and the
//            smallest weights are zeroed at every step; the last quarter of
//            fine-tuning runs at the target sparsity with a fixed mask
//   ste      hard top-k forward, straight-through (identity) gradient: the
//            support is re-chosen at every step from dense weights
//   soft2    soft_topk_mag(W, k, l, p = 2): exact gradient through the band
//   soft43   soft_topk_mag(W, k, l, p = 4/3)
// and the global-budget methods, one budget K = the sum of the layers' k over
// all prunable layers together (sparsetopk::torch::*_global, docs/global.md),
// so that they keep as many weights as the per-layer methods:
//   oneshot_global  one-shot global magnitude pruning of the checkpoint
//                   (torch.nn.utils.prune.global_unstructured style), then
//                   fine-tuning with the mask fixed
//   gradual_global  gradual global magnitude pruning: hard_topk_mag_global
//                   with the budget shrinking from dense to K along gradual's
//                   cubic schedule (common/pruning.hpp); pruned weights zeroed
//                   after every step
//   hard_global     hard_topk_mag_global(W, K): gradient to the kept weights
//   ste_global      hard global top-k forward, straight-through gradient
//   global43        soft_topk_mag_global(W, K, l, p = 4/3): one l for all
//                   layers, from tau = the K-th largest |w| over all of them
// Every fine-tuned network is evaluated HARD-pruned: hard_topk_mag(W, k) per
// layer, exactly k non-zeros per prunable layer; the global methods with
// hard_topk_mag_global(W, K), exactly K non-zeros over all prunable layers.
//
// l rule (same as apps/prune_mlp.cpp, docs/applications.md): --band b is a
// relative band width around tau, the layer's k-th largest |w| (re-measured,
// detached, at every step): p = 2: l = b; p = 4/3: l = b * tau^(2/3). b is
// annealed linearly to 1% of its value over fine-tuning. global43: the same
// with tau the K-th largest |w| over all prunable layers, one l for all.
//
// --val-size N holds out the last N training images: pre-training and
// fine-tuning use the others. --eval val then measures every accuracy on the
// held-out images instead of the test set: the pilot that chose --lr and
// --band used the same checkpoint as the full run, evaluated on them.
//
// Pilot (--val-size 5000 --eval val, depth 2, 95% sparsity, 150 fine-tuning
// steps of batch 128, seed 1; validation accuracy of the hard-pruned network):
//   lr      oneshot  soft43 (b = 1)
//   3e-4    0.499    0.657
//   1e-3    0.686    0.782
//   3e-3    0.752    0.810   <- chosen: best mean of the two
//   1e-2    0.756    0.769
//   at lr 3e-3, band b:  0.3     1       3
//            soft43      0.778   0.810   0.587
//            soft2       0.782   0.803   0.776   -> b = 1 for both
// The dense checkpoint scores 0.886 on these validation images, 0.139 right
// after one-shot pruning to 95%. Only the soft methods had a parameter of
// their own searched (b); gradual's schedule (ramp over 75% of the steps)
// and straight-through were not tuned.
//
// Full run (pre-training 2150 steps once, then 5 methods x 2 sparsities x
// 3 seeds of 150 steps; the checkpoint is the pilot's, trained on the same
// 55,000 images):
//   vit_finetune --val-size 5000 --pretrain-epochs 5 --checkpoint vit_dense.pt
//     --finetune-steps 150 --seeds 1,2,3 --sparsities 90,95
//     --methods oneshot,gradual,ste,soft2,soft43 --lr 3e-3 --band 1 --out vit_finetune.csv
// Short run (about 50 s): vit_finetune --quick --methods oneshot,soft43 --retrain
// Global-budget methods (docs/applications.md): the full run's flags with
//     --methods oneshot_global,gradual_global,hard_global,ste_global,global43

#include "common/args.hpp"
#include "common/csv.hpp"
#include "common/progress.hpp"
#include "common/pruning.hpp"
#include "data/idx.hpp"
#include "vit/options.hpp"
#include "vit/training.hpp"
#include "vit/vit.hpp"

#include <sparsetopk/torch.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace apps = sparsetopk::apps;
namespace vit = sparsetopk::apps::vit;
namespace stt = sparsetopk::torch;

enum class Method {
  oneshot,
  gradual,
  ste,
  soft2,
  soft43,
  oneshot_global,
  gradual_global,
  hard_global,
  ste_global,
  global43
};

const apps::NameTable<Method> kMethods{{"oneshot", Method::oneshot},
                                       {"gradual", Method::gradual},
                                       {"ste", Method::ste},
                                       {"soft2", Method::soft2},
                                       {"soft43", Method::soft43},
                                       {"oneshot_global", Method::oneshot_global},
                                       {"gradual_global", Method::gradual_global},
                                       {"hard_global", Method::hard_global},
                                       {"ste_global", Method::ste_global},
                                       {"global43", Method::global43}};

std::string name(Method m) { return apps::name_in(kMethods, m); }

bool is_soft(Method m) {
  return m == Method::soft2 || m == Method::soft43 || m == Method::global43;
}

// One budget over all prunable layers (evaluated with the global hard top-k).
bool is_global(Method m) {
  return m == Method::oneshot_global || m == Method::gradual_global || m == Method::hard_global ||
         m == Method::ste_global || m == Method::global43;
}

struct Options : vit::SharedOptions {
  std::string out = "vit_finetune.csv";
  int64_t finetune_epochs = 2;
  int64_t finetune_steps = 0;  // > 0 overrides finetune_epochs
  std::vector<uint64_t> seeds{1};
  std::vector<Method> methods{Method::oneshot, Method::gradual, Method::ste, Method::soft2, Method::soft43};
  std::vector<double> sparsities{90, 95};
  int64_t batch_size = 128;
  double lr = 3e-3;  // chosen by the pilot (see the header comment)
  double band = 1.0;
  double band2 = 0;  // > 0: the band of soft2 (default: --band)
  bool anneal = true;
};

const char* kUsage = R"(usage: vit_finetune [options]

Trains a small vision transformer densely (or loads it from --checkpoint),
then fine-tunes it under a weight budget (per layer, or one over all
prunable layers for the *_global methods) with each method and evaluates the
hard-pruned network; writes one CSV row per (method, sparsity, seed).

  --data-dir DIR        IDX gzip files {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
                        (default /usr/share/datasets/fashion-mnist)
  --out FILE            CSV output (default vit_finetune.csv)
  --checkpoint FILE     dense model; reused if it exists and matches the model
                        and pre-training settings (default: --out with .pt)
  --retrain             pre-train again even if --checkpoint exists
  --pretrain-epochs N   dense training epochs (default 5)
  --pretrain-steps N    > 0 overrides --pretrain-epochs (default 0)
  --pretrain-lr X       Adam lr of pre-training (default 1e-3)
  --pretrain-seed N     seed of the initialization and batch order (default 0)
  --finetune-epochs N   fine-tuning epochs per run (default 2)
  --finetune-steps N    > 0 overrides --finetune-epochs (default 0)
  --seeds LIST          fine-tuning seeds (batch order), comma-separated (default 1)
  --methods LIST        from oneshot,gradual,ste,soft2,soft43 (per-layer budgets;
                        the default) and oneshot_global,gradual_global,
                        hard_global,ste_global,global43 (one budget over all
                        prunable layers)
  --sparsities LIST     percent of prunable weights removed (default 90,95)
  --batch-size N        (default 128)
  --lr X                Adam lr of fine-tuning, cosine-decayed (default 3e-3)
  --band X              relative band width that sets l for soft2/soft43/global43:
                        p = 2: l = X; p = 4/3: l = X * tau^(2/3), tau the
                        k-th largest |w| of the layer (global43: of all
                        prunable layers) (default 1)
  --band2 X             the band of soft2 only (default: --band)
  --anneal 0|1          anneal the band linearly to 1% over fine-tuning (default 1)
  --patch N             patch side, divides 28 (default 7: 16 patches)
  --dim N               token width (default 64)
  --depth N             transformer blocks (default 2)
  --heads N             attention heads (default 4)
  --mlp N               MLP hidden width (default 128)
  --train-limit N       use the first N training images (default all)
  --test-limit N        use the first N test images (default all)
  --val-size N          hold out the last N training images from pre-training
                        and fine-tuning (default 0)
  --eval test|val       measure every accuracy on the test images (default) or
                        on the held-out images (needs --val-size > 0)
  --log-every N         progress line every N steps (default 100)
  --threads N           torch intra-op threads (default 1)
  --quick               5000 training / 1000 test images, 300 pre-training
                        and 100 fine-tuning steps of batch 64,
                        sparsity 90, checkpoint vit_quick.pt (explicit flags
                        override these)
  -h, --help
)";

Options parse(int argc, char** argv) {
  Options o;
  const auto apply_quick = [&] {
    apps::apply_shared_quick(o);
    o.pretrain_steps = 300;
    o.finetune_steps = 100;
    o.sparsities = {90};
    o.checkpoint = "vit_quick.pt";
  };
  const auto positive = [](const std::string& flag, int64_t x) {
    if (x <= 0) throw std::invalid_argument(flag + " must be > 0, got " + std::to_string(x));
    return x;
  };
  const auto handle_flag = [&](const std::string& flag, const std::string& value) {
    if (apps::parse_shared_flag(o, flag, value)) return true;
    if (vit::parse_vit_flag(o, flag, value)) return true;
    if (flag == "--finetune-epochs") o.finetune_epochs = apps::parse_int(flag, value);
    else if (flag == "--finetune-steps") o.finetune_steps = apps::parse_int(flag, value);
    else if (flag == "--batch-size") o.batch_size = positive(flag, apps::parse_int(flag, value));
    else if (flag == "--band") o.band = apps::parse_double(flag, value);
    else if (flag == "--band2") {
      o.band2 = apps::parse_double(flag, value);
      if (!(o.band2 > 0)) throw std::invalid_argument("--band2 must be > 0, got " + value);
    }
    else if (flag == "--anneal") o.anneal = apps::parse_int(flag, value) != 0;
    else if (flag == "--methods") o.methods = apps::parse_names(flag, value, kMethods, "method");
    else if (flag == "--sparsities") o.sparsities = apps::parse_percentages(flag, value, /*zero_allowed=*/false);
    else return false;
    return true;
  };
  apps::parse_command_line(argc, argv, kUsage, {"--retrain"}, apply_quick, handle_flag);
  if (o.seeds.empty()) throw std::invalid_argument("--seeds must not be empty");
  if (o.methods.empty()) throw std::invalid_argument("--methods must not be empty");
  if (o.sparsities.empty()) throw std::invalid_argument("--sparsities must not be empty");
  if (o.finetune_steps <= 0 && o.finetune_epochs <= 0)
    throw std::invalid_argument("--finetune-epochs (or --finetune-steps) must be > 0, got " +
                                std::to_string(o.finetune_epochs));
  if (!(o.band > 0)) throw std::invalid_argument("--band must be > 0, got " + std::to_string(o.band));
  if (!(o.lr > 0)) throw std::invalid_argument("--lr must be > 0, got " + std::to_string(o.lr));
  vit::check_vit_options(o);
  if (o.log_every <= 0) o.log_every = 1;
  if (o.checkpoint.empty()) {
    std::filesystem::path p(o.out);
    o.checkpoint = p.replace_extension(".pt").string();
  }
  return o;
}

using vit::correct;
using vit::scheduled_lr;
using vit::set_lr;

// The band of a soft method (0 for the others).
double band_of(const Options& o, Method m) {
  if (!is_soft(m)) return 0;
  return m == Method::soft2 && o.band2 > 0 ? o.band2 : o.band;
}

struct Data {
  apps::Dataset train, eval;
  std::string eval_split;  // "test" or "val"
};

struct Row {
  std::string method;
  double sparsity;
  uint64_t seed;
  double dense_acc, oneshot_acc, finetuned_acc, as_trained_acc;
  int64_t nnz, prunable, total_params, steps;
  double epochs, l_start, soft_nnz_over_k_max, train_loss, train_acc, seconds;
  std::string
      nnz_per_layer;  // non-zeros of the evaluated network per prunable layer, ';'-separated
};

// One fine-tuning run from the checkpoint.
Row finetune(const Options& o, Method m, double sparsity, uint64_t seed, const std::vector<int64_t>& tag,
             const Data& data, int64_t steps, double dense_acc, double oneshot_acc, apps::Progress& progress) {
  torch::manual_seed(seed);
  vit::Vit net(o.model);
  vit::load_checkpoint(net, tag, o.checkpoint);
  const auto weights = net->prunable_weights();
  std::vector<int64_t> ks;
  int64_t prunable = 0, k_total = 0;
  for (const auto& w : weights) {
    ks.push_back(vit::kept(w.numel(), sparsity));
    prunable += w.numel();
    k_total += ks.back();
  }
  // oneshot, oneshot_global: prune once, keep the mask.
  std::vector<at::Tensor> masks;
  if (m == Method::oneshot || m == Method::oneshot_global) {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> detached;
    for (const auto& w : weights) detached.push_back(w.detach());
    const auto global = m == Method::oneshot_global ? stt::hard_topk_mag_global(detached, k_total)
                                                    : std::vector<at::Tensor>{};
    for (size_t i = 0; i < weights.size(); ++i) {
      weights[i].copy_(m == Method::oneshot ? vit::hard_prune(weights[i], ks[i]) : global[i]);
      masks.push_back(weights[i].ne(0).to(weights[i].scalar_type()));
    }
  }
  const double p = m == Method::soft2 ? 2.0 : 4.0 / 3.0;
  const double band = band_of(o, m);
  const auto band_at = [&](int64_t step) {
    return o.anneal ? band * std::max(1.0 - static_cast<double>(step - 1) / static_cast<double>(steps), 0.01) : band;
  };
  // gradual, gradual_global: target reached at 75% of the steps.
  const auto gradual_sparsity = [&](int64_t step) {
    return apps::gradual_sparsity(sparsity, step, steps);
  };
  // The weights the forward pass uses at `step` under the global budget.
  const auto global_weights = [&](int64_t step, double* l_mean) {
    std::vector<at::Tensor> used;
    double l = 0;
    switch (m) {
      case Method::oneshot_global:
        for (size_t i = 0; i < weights.size(); ++i) used.push_back(weights[i] * masks[i]);
        break;
      case Method::gradual_global:
        used = stt::hard_topk_mag_global(weights, vit::kept_total(weights, gradual_sparsity(step)));
        break;
      case Method::hard_global:
        used = stt::hard_topk_mag_global(weights, k_total);
        break;
      case Method::ste_global: {
        std::vector<at::Tensor> detached;
        for (const auto& w : weights) detached.push_back(w.detach());
        const auto hard = stt::hard_topk_mag_global(detached, k_total);
        for (size_t i = 0; i < weights.size(); ++i)
          used.push_back(weights[i] + (hard[i] - detached[i]));
        break;
      }
      case Method::global43:
        l = vit::band_to_l(band_at(step), 4.0 / 3.0, apps::kth_magnitude_global(weights, k_total));
        used = stt::soft_topk_mag_global(weights, k_total, l, 4.0 / 3.0);
        break;
      default:  // per-layer methods: training_weights
        break;
    }
    if (l_mean != nullptr) *l_mean = l;
    return used;
  };
  // The weights the forward pass uses at `step` (band: the soft methods' band).
  const auto training_weights = [&](int64_t step, double* l_mean) {
    if (is_global(m)) return global_weights(step, l_mean);
    std::vector<at::Tensor> used;
    double l_sum = 0;
    for (size_t i = 0; i < weights.size(); ++i) {
      const auto& w = weights[i];
      switch (m) {
        case Method::oneshot:
          used.push_back(w * masks[i]);
          break;
        case Method::gradual:
          used.push_back(vit::hard_prune(w, vit::kept(w.numel(), gradual_sparsity(step))));
          break;
        case Method::ste: {
          const auto hard = vit::hard_prune(w.detach(), ks[i]);
          used.push_back(w + (hard - w.detach()));
          break;
        }
        case Method::soft2:
        case Method::soft43: {
          const double l = vit::band_to_l(band_at(step), p, vit::kth_magnitude(w, ks[i]));
          l_sum += l;
          used.push_back(vit::soft_prune(w, ks[i], l, p));
          break;
        }
        default:  // global methods: global_weights
          break;
      }
    }
    if (l_mean != nullptr) *l_mean = l_sum / static_cast<double>(weights.size());
    return used;
  };

  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(o.lr));
  apps::Batcher batcher(data.train, o.batch_size, seed);
  const std::string tag_text = name(m) + " s=" + std::to_string(static_cast<int>(sparsity)) + "% seed=" +
                               std::to_string(seed);
  const auto t0 = std::chrono::steady_clock::now();
  double l_start = 0, nnz_ratio_max = 0;
  for (int64_t step = 1; step <= steps; ++step) {
    set_lr(optimizer, scheduled_lr(o.lr, step, steps, 0));
    const auto batch = batcher.next();
    double l_mean = 0;
    const auto used = training_weights(step, &l_mean);
    if (step == 1) l_start = l_mean;
    const auto logits = net->forward(batch.x, used);
    const auto loss = torch::nn::functional::cross_entropy(logits, batch.y);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (m == Method::gradual) {
      // Zero the pruned weights, so that they stay pruned as the sparsity rises.
      torch::NoGradGuard no_grad;
      for (const auto& w : weights) w.copy_(vit::hard_prune(w, vit::kept(w.numel(), gradual_sparsity(step))));
    } else if (m == Method::gradual_global) {
      torch::NoGradGuard no_grad;
      const auto pruned =
          stt::hard_topk_mag_global(weights, vit::kept_total(weights, gradual_sparsity(step)));
      for (size_t i = 0; i < weights.size(); ++i) weights[i].copy_(pruned[i]);
    }
    progress.step(loss.item<double>(), static_cast<double>(correct(logits, batch.y)),
                  static_cast<double>(batch.y.size(0)));
    if (step % o.log_every == 0 || step == steps) {
      std::string extra;
      if (is_soft(m)) {
        int64_t nnz = 0;
        for (const auto& u : used) nnz += u.detach().ne(0).sum().item<int64_t>();
        const double ratio = static_cast<double>(nnz) / static_cast<double>(k_total);
        nnz_ratio_max = std::max(nnz_ratio_max, ratio);
        char buffer[64];
        std::snprintf(buffer, sizeof buffer, "nnz/k %.3f  l %.3g", ratio, l_mean);
        extra = buffer;
      } else if (m == Method::gradual || m == Method::gradual_global) {
        char buffer[64];
        std::snprintf(buffer, sizeof buffer, "sparsity %.1f%%", gradual_sparsity(step));
        extra = buffer;
      }
      progress.report(tag_text, step, steps, extra);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const auto hard = is_global(m) ? vit::hard_pruned_weights_global(net, sparsity)
                                 : vit::hard_pruned_weights(net, sparsity);
  int64_t nnz = 0;
  std::string nnz_per_layer;
  for (const auto& w : hard) {
    const int64_t layer_nnz = w.ne(0).sum().item<int64_t>();
    nnz += layer_nnz;
    nnz_per_layer += (nnz_per_layer.empty() ? "" : ";") + std::to_string(layer_nnz);
  }
  const double finetuned_acc = vit::accuracy(net, data.eval.images, data.eval.labels, hard);
  double as_trained_acc = finetuned_acc;
  if (is_soft(m)) {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> soft;
    for (const auto& u : training_weights(steps, nullptr)) soft.push_back(u.detach());
    as_trained_acc = vit::accuracy(net, data.eval.images, data.eval.labels, soft);
  }
  int64_t total_params = 0;
  for (const auto& param : net->parameters()) total_params += param.numel();
  std::printf("[%s] %s accuracy: dense %.4f, one-shot pruned %.4f, fine-tuned hard-pruned %.4f (as trained %.4f), "
              "nnz %lld/%lld prunable\n",
              tag_text.c_str(), data.eval_split.c_str(), dense_acc, oneshot_acc, finetuned_acc, as_trained_acc,
              static_cast<long long>(nnz), static_cast<long long>(prunable));
  std::fflush(stdout);
  return Row{name(m),
             sparsity,
             seed,
             dense_acc,
             oneshot_acc,
             finetuned_acc,
             as_trained_acc,
             nnz,
             prunable,
             total_params,
             steps,
             static_cast<double>(steps) / static_cast<double>(batcher.batches_per_epoch()),
             l_start,
             nnz_ratio_max,
             progress.last_loss(),
             progress.last_accuracy(),
             seconds,
             nnz_per_layer};
}

Data load(const Options& o) {
  Data d;
  auto train = apps::load_mnist_split(o.data_dir, "train", o.train_limit);
  if (train.features() != o.model.image * o.model.image)
    throw std::invalid_argument("expected 28x28 images, got " + std::to_string(train.features()) + " features");
  d.train = vit::hold_out(train, o.val_size, &d.eval);
  if (o.val_size > 0) d.eval_split = "val";
  if (o.eval == "test") {
    d.eval = apps::load_mnist_split(o.data_dir, "t10k", o.test_limit);
    if (d.eval.features() != train.features())
      throw std::invalid_argument("test images have " + std::to_string(d.eval.features()) + " features, training " +
                                  std::to_string(train.features()));
    d.eval_split = "test";
  }
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    torch::set_num_threads(o.threads);
    const Data data = load(o);
    const int64_t per_epoch = (data.train.size() + o.batch_size - 1) / o.batch_size;
    const int64_t pretrain_steps = o.pretrain_steps > 0 ? o.pretrain_steps : o.pretrain_epochs * per_epoch;
    const int64_t steps = o.finetune_steps > 0 ? o.finetune_steps : o.finetune_epochs * per_epoch;
    std::printf("train %lld, %s %lld images; pre-training %lld steps, fine-tuning %lld steps per run "
                "(batch %lld, %.2f epochs)\n",
                static_cast<long long>(data.train.size()), data.eval_split.c_str(),
                static_cast<long long>(data.eval.size()), static_cast<long long>(pretrain_steps),
                static_cast<long long>(steps), static_cast<long long>(o.batch_size),
                static_cast<double>(steps) / static_cast<double>(per_epoch));

    // What the checkpoint must have been made with to be reused.
    const auto& c = o.model;
    const std::vector<int64_t> tag{1,        c.image,           c.patch,         c.dim,
                                   c.depth,  c.heads,           c.mlp,           c.classes,
                                   data.train.size(), o.val_size, pretrain_steps, o.batch_size,
                                   std::llround(o.pretrain_lr * 1e9), static_cast<int64_t>(o.pretrain_seed)};
    apps::Progress progress;
    const auto runs = static_cast<int64_t>(o.seeds.size() * o.methods.size() * o.sparsities.size());
    progress.add_total(runs * steps);

    torch::manual_seed(o.pretrain_seed);
    vit::Vit model(o.model);
    bool loaded = false;
    const double pretrain_seconds =
        vit::load_or_pretrain(model, tag, o.checkpoint, o.retrain, data.train, pretrain_steps,
                              {o.pretrain_lr, o.batch_size, o.pretrain_seed, o.log_every}, progress, &loaded);
    int64_t total_params = 0, prunable = 0;
    for (const auto& p : model->parameters()) total_params += p.numel();
    for (const auto& w : model->prunable_weights()) prunable += w.numel();
    const double dense_acc = vit::accuracy(model, data.eval.images, data.eval.labels);
    std::printf("dense model: %lld parameters, %lld prunable (%zu layers); %s accuracy %.4f\n",
                static_cast<long long>(total_params), static_cast<long long>(prunable),
                model->prunable_weights().size(), data.eval_split.c_str(), dense_acc);
    // The prunable layers, for the per-layer non-zeros of the CSV: names and sizes, ';'-separated.
    std::string layer_names, layer_sizes;
    for (const auto& n : model->prunable_names())
      layer_names += (layer_names.empty() ? "" : ";") + n;
    for (const auto& w : model->prunable_weights())
      layer_sizes += (layer_sizes.empty() ? "" : ";") + std::to_string(w.numel());
    std::map<double, double> oneshot_acc, oneshot_global_acc;
    for (const double s : o.sparsities) {
      oneshot_acc[s] = vit::accuracy(model, data.eval.images, data.eval.labels, vit::hard_pruned_weights(model, s));
      oneshot_global_acc[s] = vit::accuracy(model, data.eval.images, data.eval.labels,
                                            vit::hard_pruned_weights_global(model, s));
      std::printf(
          "one-shot magnitude pruning at %.0f%%, no fine-tuning: %s accuracy %.4f (per layer), "
          "%.4f (one "
          "global threshold)\n",
          s, data.eval_split.c_str(), oneshot_acc[s], oneshot_global_acc[s]);
    }
    std::fflush(stdout);

    apps::CsvFile csv(
        o.out,
        "method,sparsity,seed,eval_split,dense_acc,oneshot_acc,finetuned_acc,as_trained_acc,nnz,"
        "prunable,total_params,steps,epochs,batch_size,lr,band,anneal,l_start,soft_nnz_over_k_max,"
        "train_loss,train_acc,seconds,pretrain_steps,pretrain_seconds,checkpoint_loaded,oneshot_"
        "global_acc,"
        "layers,prunable_per_layer,nnz_per_layer");
    for (const auto seed : o.seeds) {
      for (const double s : o.sparsities) {
        for (const auto m : o.methods) {
          const Row r = finetune(o, m, s, seed, tag, data, steps, dense_acc, oneshot_acc[s], progress);
          csv.row(r.method, r.sparsity, r.seed, data.eval_split, r.dense_acc, r.oneshot_acc,
                  r.finetuned_acc, r.as_trained_acc, r.nnz, r.prunable, r.total_params, r.steps,
                  r.epochs, o.batch_size, o.lr, band_of(o, m), o.anneal ? 1 : 0, r.l_start,
                  r.soft_nnz_over_k_max, r.train_loss, r.train_acc, r.seconds, pretrain_steps,
                  pretrain_seconds, loaded ? 1 : 0, oneshot_global_acc[s], layer_names, layer_sizes,
                  r.nnz_per_layer);
        }
      }
    }
    std::printf("wrote %s (%.1fs)\n", o.out.c_str(), progress.seconds());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vit_finetune: %s\n", e.what());
    return 2;
  }
}
