// Pruning during training: an MLP 784-300-100-10 on Fashion-MNIST (or any IDX
// dataset of 28x28 images) whose three weight matrices each go through a top-k
// in magnitude that keeps a fraction of the layer's weights. The trained
// parameters are dense; the forward pass uses the top-k'd weights. Variants:
//   dense   no top-k during training; magnitude-pruned once after training
//   hard    hard_topk_mag(W, k): gradient only to the kept weights
//   ste     hard top-k forward, straight-through (identity) gradient backward
//   soft2   soft_topk_mag(W, k, l, p = 2)
//   soft43  soft_topk_mag(W, k, l, p = 4/3)
// and the global-budget variants, one k = sum of the layers' k over all three
// weight matrices together (sparsetopk::torch::*_global, docs/global.md):
//   dense_global   no top-k during training; one-shot global magnitude pruning
//                  after training (torch.nn.utils.prune.global_unstructured style)
//   hard_global    hard_topk_mag_global({W1, W2, W3}, K)
//   global43       soft_topk_mag_global({W1, W2, W3}, K, l, p = 4/3)
//   gradual_global gradual global magnitude pruning (Zhu & Gupta 2017):
//                  hard_topk_mag_global({W1, W2, W3}, K_t) with the budget K_t
//                  shrinking from dense to K along the cubic schedule of
//                  common/pruning.hpp (target reached at 75% of the steps);
//                  gradient to the kept weights, and the pruned ones are zeroed
//                  after every step so that they stay pruned
// Every variant is evaluated on the test set with the HARD mask applied
// (W -> hard_topk_mag(W, k) per layer, or hard_topk_mag_global for the global
// variants; biases kept): the truly sparse network.
//
// Choice of l (see docs/applications.md): l sets the relative width of the
// band of magnitudes around the k-th one, tau, that the soft operator shrinks
// and lets gradients flow through. For p = 2 the band is scale free: a kept
// weight pools with a pruned one when tau_pruned > tau_kept / (1 + l), so
// l = band. For p = 4/3 (q = 4) the onset is at a relative gap of
// l / tau^(2/3), so l = band * tau^(2/3). tau is re-measured every step
// (detached) for each layer; for global43, tau is the K-th largest |w| over all
// three layers and one l serves them all. The band is annealed linearly during training,
// band_t = band * max(1 - t / steps, 0.01) (off with --anneal 0), so that the
// weights the network ends up trained with are close to the hard-pruned ones
// it is evaluated with. Default band = 1.

#include "common/args.hpp"
#include "common/csv.hpp"
#include "common/progress.hpp"
#include "common/pruning.hpp"
#include "data/idx.hpp"

#include <sparsetopk/torch.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace stt = sparsetopk::torch;
namespace apps = sparsetopk::apps;

enum class Variant {
  dense,
  hard,
  ste,
  soft2,
  soft43,
  dense_global,
  hard_global,
  global43,
  gradual_global
};

const apps::NameTable<Variant> kVariants{{"dense", Variant::dense},
                                         {"hard", Variant::hard},
                                         {"ste", Variant::ste},
                                         {"soft2", Variant::soft2},
                                         {"soft43", Variant::soft43},
                                         {"dense_global", Variant::dense_global},
                                         {"hard_global", Variant::hard_global},
                                         {"global43", Variant::global43},
                                         {"gradual_global", Variant::gradual_global}};

std::string name(Variant v) { return apps::name_in(kVariants, v); }

// One budget over all layers (evaluated with the global hard top-k).
bool is_global(Variant v) {
  return v == Variant::dense_global || v == Variant::hard_global || v == Variant::global43 ||
         v == Variant::gradual_global;
}
// Trained without a top-k, pruned once afterwards.
bool is_dense(Variant v) { return v == Variant::dense || v == Variant::dense_global; }
bool is_soft(Variant v) { return v == Variant::soft2 || v == Variant::soft43 || v == Variant::global43; }

struct Options {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string out = "prune_mlp.csv";
  int64_t epochs = 1;
  int64_t steps = 0;  // > 0 overrides epochs
  std::vector<uint64_t> seeds{1};
  std::vector<Variant> variants{Variant::dense, Variant::hard, Variant::ste, Variant::soft2, Variant::soft43};
  std::vector<double> sparsities{90, 95, 98, 99};  // percent of weights removed
  int64_t batch_size = 128;
  double lr = 1e-3;
  double band = 1.0;
  bool anneal = true;
  int64_t train_limit = -1;
  int64_t test_limit = -1;
  int64_t log_every = 100;
  int threads = 1;
};

const char* kUsage = R"(usage: prune_mlp [options]

Trains an MLP 784-300-100-10 whose weight matrices go through a top-k in
magnitude, evaluates the hard-pruned network on the test set, writes a CSV.

  --data-dir DIR      IDX gzip files {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
                      (default /usr/share/datasets/fashion-mnist)
  --out FILE          CSV output (default prune_mlp.csv)
  --epochs N          training epochs (default 1)
  --steps N           training steps; > 0 overrides --epochs (default 0)
  --seeds LIST        comma-separated seeds (default 1)
  --variants LIST     from dense,hard,ste,soft2,soft43 (per-layer budgets) and
                      dense_global,hard_global,global43,gradual_global (one
                      budget over the three layers) (default: the per-layer ones)
  --sparsities LIST   percent of weights removed, e.g. 90,95,98,99 (default)
  --batch-size N      (default 128)
  --lr X              Adam learning rate (default 1e-3)
  --band X            relative band width that sets l for the soft variants:
                      p = 2: l = X; p = 4/3: l = X * tau^(2/3), tau the k-th
                      largest |w| of the layer (global43: of all layers)
                      (default 1)
  --anneal 0|1        anneal the band linearly to 1% of --band over training
                      (default 1)
  --train-limit N     use the first N training examples (default all)
  --test-limit N      use the first N test examples (default all)
  --log-every N       progress line every N steps (default 100)
  --threads N         torch intra-op threads (default 1: on a shared machine
                      more threads can be several times slower)
  --quick             100 steps of batch 64 on 5000 training / 1000 test
                      examples, sparsity 90 (the per-layer variants: about 20 s
                      on an idle 2-core machine)
  -h, --help
)";

Options parse(int argc, char** argv) {
  Options o;
  const auto apply_quick = [&] {
    apps::apply_shared_quick(o);
    o.steps = 100;
    o.sparsities = {90};
  };
  const auto handle_flag = [&](const std::string& flag, const std::string& value) {
    if (apps::parse_shared_flag(o, flag, value)) return true;
    if (flag == "--epochs") o.epochs = apps::parse_int(flag, value);
    else if (flag == "--steps") o.steps = apps::parse_int(flag, value);
    else if (flag == "--batch-size") o.batch_size = apps::parse_int(flag, value);
    else if (flag == "--band") o.band = apps::parse_double(flag, value);
    else if (flag == "--anneal") o.anneal = apps::parse_int(flag, value) != 0;
    else if (flag == "--threads") o.threads = static_cast<int>(apps::parse_int(flag, value));
    else if (flag == "--variants") o.variants = apps::parse_names(flag, value, kVariants, "variant");
    else if (flag == "--sparsities") o.sparsities = apps::parse_percentages(flag, value, /*zero_allowed=*/true);
    else return false;
    return true;
  };
  apps::parse_command_line(argc, argv, kUsage, {}, apply_quick, handle_flag);
  if (o.seeds.empty() || o.variants.empty() || o.sparsities.empty())
    throw std::invalid_argument("--seeds, --variants and --sparsities must not be empty");
  if (o.batch_size <= 0) throw std::invalid_argument("--batch-size must be > 0");
  if (o.steps <= 0 && o.epochs <= 0) throw std::invalid_argument("--epochs (or --steps) must be > 0");
  if (o.band <= 0) throw std::invalid_argument("--band must be > 0");
  if (o.lr <= 0) throw std::invalid_argument("--lr must be > 0");
  if (o.log_every <= 0) o.log_every = 1;
  return o;
}

struct Mlp : torch::nn::Module {
  Mlp() {
    fc1 = register_module("fc1", torch::nn::Linear(784, 300));
    fc2 = register_module("fc2", torch::nn::Linear(300, 100));
    fc3 = register_module("fc3", torch::nn::Linear(100, 10));
  }
  std::vector<torch::nn::Linear> layers() const { return {fc1, fc2, fc3}; }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};

int64_t kept(const at::Tensor& w, double sparsity_percent) {
  const double density = 1.0 - sparsity_percent / 100.0;
  return std::max<int64_t>(1, static_cast<int64_t>(std::llround(density * static_cast<double>(w.numel()))));
}

// The k-th largest |w| of the layer (detached).
double kth_magnitude(const at::Tensor& w, int64_t k) {
  const auto magnitudes = w.detach().abs().flatten();
  return std::get<0>(torch::kthvalue(magnitudes, magnitudes.numel() - k + 1)).item<double>();
}

double regularization(Variant v, double band, double tau) {
  return v == Variant::soft2 ? band : band * std::pow(tau, 2.0 / 3.0);
}

// The weight the forward pass uses during training; *l receives the l used.
at::Tensor training_weight(const at::Tensor& w, Variant v, int64_t k, double band, double* l) {
  *l = 0;
  const auto flat = w.flatten();
  switch (v) {
    case Variant::dense:
    case Variant::dense_global:  // the global variants: training_weights()
    case Variant::hard_global:
    case Variant::global43:
    case Variant::gradual_global:
      return w;
    case Variant::hard:
      return stt::hard_topk_mag(flat, k).view_as(w);
    case Variant::ste: {
      const auto hard = stt::hard_topk_mag(flat.detach(), k).view_as(w);
      return w + (hard - w.detach());  // forward: hard; backward: identity
    }
    case Variant::soft2:
    case Variant::soft43: {
      *l = v == Variant::soft2 ? band : regularization(v, band, kth_magnitude(w, k));
      const double p = v == Variant::soft2 ? 2.0 : 4.0 / 3.0;
      return stt::soft_topk_mag(flat, k, *l, p).view_as(w);
    }
  }
  return w;
}

// The weights the forward pass uses during training, for every layer; *l receives the l used per layer.
std::vector<at::Tensor> training_weights(const std::vector<at::Tensor>& w, Variant v, const std::vector<int64_t>& ks,
                                         double band, double* l) {
  if (!is_global(v)) {
    std::vector<at::Tensor> out;
    for (size_t i = 0; i < w.size(); ++i) out.push_back(training_weight(w[i], v, ks[i], band, &l[i]));
    return out;
  }
  int64_t k = 0;
  for (const int64_t ki : ks) k += ki;
  for (size_t i = 0; i < w.size(); ++i) l[i] = 0;
  switch (v) {
    case Variant::hard_global:
    case Variant::gradual_global:  // ks: the budget of this step
      return stt::hard_topk_mag_global(w, k);
    case Variant::global43: {
      const double tau = apps::kth_magnitude_global(w, k);
      const double l_global = band * std::pow(tau, 2.0 / 3.0);
      for (size_t i = 0; i < w.size(); ++i) l[i] = l_global;
      return stt::soft_topk_mag_global(w, k, l_global, 4.0 / 3.0);
    }
    default:
      return w;
  }
}

at::Tensor forward(const Mlp& net, const std::vector<at::Tensor>& weights, const at::Tensor& x) {
  const auto layers = net.layers();
  auto h = torch::relu(torch::nn::functional::linear(x, weights[0], layers[0]->bias));
  h = torch::relu(torch::nn::functional::linear(h, weights[1], layers[1]->bias));
  return torch::nn::functional::linear(h, weights[2], layers[2]->bias);
}

double accuracy(const Mlp& net, const std::vector<at::Tensor>& weights, const apps::Dataset& test) {
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  for (int64_t start = 0; start < test.size(); start += 2000) {
    const int64_t end = std::min(start + 2000, test.size());
    const auto x = apps::to_float(test.images.slice(0, start, end));
    const auto logits = forward(net, weights, x);
    correct += logits.argmax(1).eq(test.labels.slice(0, start, end)).sum().item<int64_t>();
  }
  return static_cast<double>(correct) / static_cast<double>(test.size());
}

struct Row {
  std::string variant;
  double sparsity;
  uint64_t seed;
  int64_t steps;
  double epochs;
  double l[3];
  double train_loss, train_acc, test_acc_hard, test_acc_train_weights;
  int64_t nnz, total;
  double soft_nnz_ratio;  // soft variants: nnz of the training weights / kept
  double seconds;
};

// Trains one network; returns one row per requested sparsity (dense: all of
// them from one training run; other variants: the one they were trained at).
std::vector<Row> run(const Options& o, Variant v, double sparsity, const std::vector<double>& eval_sparsities,
                     uint64_t seed, const apps::Dataset& train, const apps::Dataset& test, apps::Progress& progress,
                     int64_t steps) {
  torch::manual_seed(seed);
  Mlp net;
  torch::optim::Adam optimizer(net.parameters(), torch::optim::AdamOptions(o.lr));
  apps::Batcher batcher(train, o.batch_size, seed);
  const auto layers = net.layers();
  std::vector<int64_t> ks;
  std::vector<at::Tensor> params;
  for (const auto& layer : layers) {
    ks.push_back(kept(layer->weight, sparsity));
    params.push_back(layer->weight);
  }

  // gradual_global: the per-layer k at the scheduled sparsity of `step`, summed into one budget.
  const auto gradual_ks = [&](int64_t step) {
    std::vector<int64_t> k;
    for (const auto& w : params)
      k.push_back(kept(w, apps::gradual_sparsity(sparsity, step, steps)));
    return k;
  };

  const auto t0 = std::chrono::steady_clock::now();
  double last_loss = 0, last_acc = 0, l_used[3] = {0, 0, 0}, soft_ratio = 0;
  const std::string tag = name(v) + (is_dense(v) ? std::string("") : " s=" + std::to_string(static_cast<int>(sparsity)) + "%") +
                          " seed=" + std::to_string(seed);
  for (int64_t step = 1; step <= steps; ++step) {
    const auto batch = batcher.next();
    const double band =
        o.anneal ? o.band * std::max(1.0 - static_cast<double>(step - 1) / static_cast<double>(steps), 0.01) : o.band;
    const std::vector<int64_t> ks_now = v == Variant::gradual_global ? gradual_ks(step) : ks;
    const std::vector<at::Tensor> weights = training_weights(params, v, ks_now, band, l_used);
    const auto logits = forward(net, weights, batch.x);
    const auto loss = torch::nn::functional::cross_entropy(logits, batch.y);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (v == Variant::gradual_global) {
      // Zero the pruned weights, so that they stay pruned as the budget shrinks.
      torch::NoGradGuard no_grad;
      int64_t k_now = 0;
      for (const int64_t ki : ks_now) k_now += ki;
      const auto pruned = stt::hard_topk_mag_global(params, k_now);
      for (size_t i = 0; i < params.size(); ++i) params[i].copy_(pruned[i]);
    }

    progress.step(loss.item<double>(), static_cast<double>(logits.argmax(1).eq(batch.y).sum().item<int64_t>()),
                  static_cast<double>(batch.y.size(0)));
    if (step % o.log_every == 0 || step == steps) {
      const bool soft = is_soft(v);
      if (soft) {
        int64_t nnz = 0, k_total = 0;
        for (size_t i = 0; i < weights.size(); ++i) {
          nnz += weights[i].detach().ne(0).sum().item<int64_t>();
          k_total += ks[i];
        }
        soft_ratio = static_cast<double>(nnz) / static_cast<double>(k_total);
      }
      std::string extra = soft ? "nnz/k " + std::to_string(soft_ratio).substr(0, 5) : "";
      if (v == Variant::gradual_global) {
        char buffer[32];
        std::snprintf(buffer, sizeof buffer, "sparsity %.1f%%",
                      apps::gradual_sparsity(sparsity, step, steps));
        extra = buffer;
      }
      progress.report(tag, step, steps, extra);
      last_loss = progress.last_loss();
      last_acc = progress.last_accuracy();
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // "As trained": the training operator with the band of the last step.
  const double final_band = o.anneal ? o.band * std::max(1.0 / static_cast<double>(steps), 0.01) : o.band;
  std::vector<Row> rows;
  for (const double s : eval_sparsities) {
    std::vector<at::Tensor> hard, as_trained;
    int64_t nnz = 0, total = 0;
    {
      torch::NoGradGuard no_grad;
      std::vector<at::Tensor> w;
      std::vector<int64_t> k;
      for (const auto& layer : layers) {
        w.push_back(layer->weight.detach());
        k.push_back(kept(w.back(), s));
      }
      int64_t k_total = 0;
      for (const int64_t ki : k) k_total += ki;
      if (is_global(v)) {
        hard = stt::hard_topk_mag_global(w, k_total);
      } else {
        for (size_t i = 0; i < w.size(); ++i) hard.push_back(stt::hard_topk_mag(w[i].flatten(), k[i]).view_as(w[i]));
      }
      for (size_t i = 0; i < w.size(); ++i) {
        nnz += hard[i].ne(0).sum().item<int64_t>();
        total += w[i].numel();
      }
      double unused[3] = {0, 0, 0};
      for (auto& t : training_weights(w, v, k, final_band, unused)) as_trained.push_back(t.detach());
    }
    Row row{name(v), s, seed, steps, static_cast<double>(steps) / static_cast<double>(batcher.batches_per_epoch()),
            {l_used[0], l_used[1], l_used[2]}, last_loss, last_acc, accuracy(net, hard, test),
            accuracy(net, as_trained, test), nnz, total, soft_ratio, seconds};
    std::printf("[%s] test accuracy at %.0f%% sparsity: hard-pruned %.4f, as trained %.4f, nnz %lld/%lld\n",
                tag.c_str(), s, row.test_acc_hard, row.test_acc_train_weights, static_cast<long long>(nnz),
                static_cast<long long>(total));
    rows.push_back(row);
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    torch::set_num_threads(o.threads);
    const auto train = apps::load_mnist_split(o.data_dir, "train", o.train_limit);
    const auto test = apps::load_mnist_split(o.data_dir, "t10k", o.test_limit);
    if (train.features() != 784 || test.features() != 784)
      throw std::invalid_argument("expected 28x28 images, got " + std::to_string(train.features()) + " features");
    const int64_t per_epoch = (train.size() + o.batch_size - 1) / o.batch_size;
    const int64_t steps = o.steps > 0 ? o.steps : o.epochs * per_epoch;
    std::printf("train %lld, test %lld examples; %lld steps per run (batch %lld, %.2f epochs)\n",
                static_cast<long long>(train.size()), static_cast<long long>(test.size()),
                static_cast<long long>(steps), static_cast<long long>(o.batch_size),
                static_cast<double>(steps) / static_cast<double>(per_epoch));

    apps::CsvFile csv(o.out,
                      "variant,sparsity,seed,steps,epochs,batch_size,lr,band,l_fc1,l_fc2,l_fc3,train_loss,train_acc,"
                      "test_acc_hard,test_acc_as_trained,nnz,total_weights,soft_nnz_over_k,seconds,anneal");

    apps::Progress progress;
    for (const auto v : o.variants)
      progress.add_total(steps * static_cast<int64_t>(o.seeds.size()) *
                         (is_dense(v) ? 1 : static_cast<int64_t>(o.sparsities.size())));

    const auto write = [&](const std::vector<Row>& rows) {
      for (const auto& r : rows)
        csv.row(r.variant, r.sparsity, r.seed, r.steps, r.epochs, o.batch_size, o.lr, o.band, r.l[0], r.l[1], r.l[2],
                r.train_loss, r.train_acc, r.test_acc_hard, r.test_acc_train_weights, r.nnz, r.total,
                r.soft_nnz_ratio, r.seconds, o.anneal ? 1 : 0);
    };
    for (const auto seed : o.seeds) {
      for (const auto v : o.variants) {
        if (is_dense(v)) {
          // One dense training run, magnitude-pruned afterwards at every sparsity.
          write(run(o, v, 0, o.sparsities, seed, train, test, progress, steps));
        } else {
          for (const double s : o.sparsities) write(run(o, v, s, {s}, seed, train, test, progress, steps));
        }
      }
    }
    std::printf("wrote %s (%.1fs)\n", o.out.c_str(), progress.seconds());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prune_mlp: %s\n", e.what());
    return 2;
  }
}
