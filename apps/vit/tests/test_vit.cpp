// Tests of the small ViT (apps/vit/vit.hpp) and a smoke run of vit_finetune
// on a tiny synthetic IDX dataset written here.
#include "tests/run_program.hpp"
#include "tests/synthetic_mnist.hpp"
#include "common/pruning.hpp"
#include "data/idx.hpp"
#include "vit/vit.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace vit = sparsetopk::apps::vit;

vit::VitConfig small_config() {
  vit::VitConfig c;
  c.dim = 16;
  c.depth = 2;
  c.heads = 4;
  c.mlp = 32;
  return c;
}

TEST(Patchify, PixelGoesToItsPatchInRowMajorOrder) {
  const auto images = torch::arange(2 * 784, torch::kFloat32).reshape({2, 784});
  const auto patches = sparsetopk::apps::patchify(images, 28, 7);
  ASSERT_EQ(patches.sizes(), (std::vector<int64_t>{2, 16, 49}));
  for (int64_t r : {0, 6, 7, 13, 27})
    for (int64_t c : {0, 5, 7, 20, 27}) {
      const int64_t patch = (r / 7) * 4 + c / 7, within = (r % 7) * 7 + c % 7;
      EXPECT_EQ(patches[1][patch][within].item<float>(), images[1][r * 28 + c].item<float>()) << r << "," << c;
    }
}

TEST(SelfAttention, ShapesAndSoftmaxRowsSumToOne) {
  torch::manual_seed(0);
  const int64_t b = 3, t = 5, d = 8, heads = 2;
  const auto x = torch::randn({b, t, d});
  at::Tensor probabilities;
  const auto y = vit::self_attention(x, torch::randn({3 * d, d}), torch::randn({3 * d}), torch::randn({d, d}),
                                     torch::randn({d}), heads, &probabilities);
  EXPECT_EQ(y.sizes(), x.sizes());
  ASSERT_EQ(probabilities.sizes(), (std::vector<int64_t>{b, heads, t, t}));
  EXPECT_TRUE(probabilities.ge(0).all().item<bool>());
  EXPECT_TRUE(torch::allclose(probabilities.sum(-1), torch::ones({b, heads, t}), 1e-5, 1e-6));
}

TEST(SelfAttention, MatchesPerHeadReference) {
  torch::manual_seed(1);
  const int64_t t = 4, d = 6, heads = 2, dh = 3;
  const auto x = torch::randn({1, t, d}, torch::kFloat64);
  const auto w_qkv = torch::randn({3 * d, d}, torch::kFloat64), b_qkv = torch::randn({3 * d}, torch::kFloat64);
  const auto w_out = torch::randn({d, d}, torch::kFloat64), b_out = torch::randn({d}, torch::kFloat64);
  const auto y = vit::self_attention(x, w_qkv, b_qkv, w_out, b_out, heads);
  const auto qkv = torch::matmul(x[0], w_qkv.t()) + b_qkv;  // [t, 3d]
  std::vector<at::Tensor> head_outputs;
  for (int64_t h = 0; h < heads; ++h) {
    const auto q = qkv.slice(1, h * dh, (h + 1) * dh);
    const auto k = qkv.slice(1, d + h * dh, d + (h + 1) * dh);
    const auto v = qkv.slice(1, 2 * d + h * dh, 2 * d + (h + 1) * dh);
    head_outputs.push_back(torch::matmul(torch::softmax(torch::matmul(q, k.t()) / std::sqrt(3.0), -1), v));
  }
  const auto expected = torch::matmul(torch::cat(head_outputs, 1), w_out.t()) + b_out;
  EXPECT_TRUE(torch::allclose(y[0], expected, 1e-10, 1e-12));
}

TEST(SelfAttention, PermutingTokensPermutesOutputs) {
  torch::manual_seed(2);
  const int64_t d = 8;
  const auto x = torch::randn({2, 5, d});
  const auto w_qkv = torch::randn({3 * d, d}), b_qkv = torch::randn({3 * d});
  const auto w_out = torch::randn({d, d}), b_out = torch::randn({d});
  const auto perm = torch::tensor({3, 0, 4, 1, 2}, torch::kInt64);
  const auto y = vit::self_attention(x, w_qkv, b_qkv, w_out, b_out, 2);
  const auto y_perm = vit::self_attention(x.index_select(1, perm), w_qkv, b_qkv, w_out, b_out, 2);
  EXPECT_TRUE(torch::allclose(y.index_select(1, perm), y_perm, 1e-5, 1e-5));
}

TEST(Vit, ShapesAndPrunableWeights) {
  torch::manual_seed(3);
  vit::Vit model(small_config());
  const auto logits = model->forward(torch::rand({5, 784}));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{5, 10}));
  const auto weights = model->prunable_weights();
  ASSERT_EQ(weights.size(), 8u);
  EXPECT_EQ(model->prunable_names()[0], "block0.qkv");
  EXPECT_EQ(model->prunable_names()[7], "block1.fc2");
  EXPECT_EQ(weights[0].sizes(), (std::vector<int64_t>{48, 16}));
  EXPECT_EQ(weights[1].sizes(), (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(weights[2].sizes(), (std::vector<int64_t>{32, 16}));
  EXPECT_EQ(weights[3].sizes(), (std::vector<int64_t>{16, 32}));
  // The prunable weights are the parameters themselves.
  EXPECT_TRUE(weights[0].is_same(model->blocks[0]->qkv->weight));
  EXPECT_THROW(model->forward(torch::rand({1, 784}), {weights[0]}), std::invalid_argument);
}

TEST(Vit, ConfigErrorsNameTheField) {
  vit::VitConfig c;
  c.patch = 5;
  try {
    c.validate();
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("--patch"), std::string::npos) << e.what();
  }
  c = {};
  c.heads = 3;
  EXPECT_THROW(c.validate(), std::invalid_argument);
}

TEST(Vit, ForwardWithOwnWeightsEqualsPlainForward) {
  torch::manual_seed(4);
  vit::Vit model(small_config());
  const auto x = torch::rand({4, 784});
  EXPECT_TRUE(torch::equal(model->forward(x), model->forward(x, model->prunable_weights())));
}

TEST(Vit, PrunedForwardEqualsForwardWithHardPrunedParameters) {
  torch::manual_seed(5);
  vit::Vit model(small_config());
  const auto x = torch::rand({4, 784});
  const auto pruned = vit::hard_pruned_weights(model, 90);
  const auto substituted = model->forward(x, pruned);
  {
    torch::NoGradGuard no_grad;
    const auto weights = model->prunable_weights();
    for (size_t i = 0; i < weights.size(); ++i) weights[i].copy_(pruned[i]);
  }
  EXPECT_TRUE(torch::allclose(substituted, model->forward(x), 1e-6, 1e-6));
}

TEST(Pruning, HardPruneKeepsExactlyKLargestPerLayer) {
  torch::manual_seed(6);
  vit::Vit model(small_config());
  for (const double s : {90.0, 95.0}) {
    const auto pruned = vit::hard_pruned_weights(model, s);
    const auto weights = model->prunable_weights();
    for (size_t i = 0; i < weights.size(); ++i) {
      const int64_t k = vit::kept(weights[i].numel(), s);
      EXPECT_EQ(pruned[i].ne(0).sum().item<int64_t>(), k);
      // Kept entries are unchanged and at least as large as every pruned one.
      const auto kept_mask = pruned[i].ne(0);
      EXPECT_TRUE(torch::equal(pruned[i].masked_select(kept_mask), weights[i].detach().masked_select(kept_mask)));
      const double smallest_kept = pruned[i].abs().masked_select(kept_mask).min().item<double>();
      const double largest_pruned = weights[i].detach().abs().masked_select(~kept_mask).max().item<double>();
      EXPECT_GE(smallest_kept, largest_pruned);
      EXPECT_DOUBLE_EQ(vit::kth_magnitude(weights[i], k), smallest_kept);
    }
  }
  EXPECT_EQ(vit::kept(768, 90), 77);
  EXPECT_EQ(vit::kept(768, 95), 38);
  EXPECT_EQ(vit::kept(10, 99.9), 1);
}

TEST(Pruning, SoftPruneIsSparseAndTendsToHardAsLShrinks) {
  torch::manual_seed(7);
  const auto w = torch::randn({32, 16});
  const int64_t k = vit::kept(w.numel(), 90);
  const auto hard = vit::hard_prune(w, k);
  const auto soft = vit::soft_prune(w, k, 1e-6, 4.0 / 3.0);
  EXPECT_TRUE(torch::allclose(soft, hard, 1e-3, 1e-3));
  const auto wide = vit::soft_prune(w, k, 0.5, 2.0);
  EXPECT_LT(wide.ne(0).sum().item<int64_t>(), w.numel());  // still sparse
  EXPECT_GE(wide.ne(0).sum().item<int64_t>(), k);
}

TEST(Pruning, GradientFlowsThroughSubstitutedSoftWeights) {
  torch::manual_seed(8);
  vit::Vit model(small_config());
  std::vector<at::Tensor> used;
  for (const auto& w : model->prunable_weights()) {
    const int64_t k = vit::kept(w.numel(), 90);
    used.push_back(vit::soft_prune(w, k, vit::band_to_l(1.0, 4.0 / 3.0, vit::kth_magnitude(w, k)), 4.0 / 3.0));
  }
  model->forward(torch::rand({4, 784}), used).sum().backward();
  for (const auto& w : model->prunable_weights()) {
    ASSERT_TRUE(w.grad().defined());
    const int64_t with_gradient = w.grad().ne(0).sum().item<int64_t>();
    EXPECT_GT(with_gradient, 0);
    EXPECT_LT(with_gradient, w.numel());  // weights below the band get none
  }
}

TEST(Pruning, BandToL) {
  EXPECT_DOUBLE_EQ(vit::band_to_l(0.5, 2.0, 0.3), 0.5);
  EXPECT_NEAR(vit::band_to_l(0.5, 4.0 / 3.0, 0.125), 0.5 * 0.25, 1e-15);
}

TEST(Pruning, GradualScheduleIsCubicAndReachesTheTargetAt75Percent) {
  EXPECT_DOUBLE_EQ(sparsetopk::apps::gradual_sparsity(90, 0, 100), 0.0);
  EXPECT_DOUBLE_EQ(sparsetopk::apps::gradual_sparsity(90, 75, 100), 90.0);
  EXPECT_DOUBLE_EQ(sparsetopk::apps::gradual_sparsity(90, 100, 100), 90.0);
  EXPECT_NEAR(sparsetopk::apps::gradual_sparsity(90, 25, 100), 90.0 * (1 - std::pow(2.0 / 3.0, 3)),
              1e-12);
  double last = 0;
  for (int64_t step = 1; step <= 100; ++step) {
    const double s = sparsetopk::apps::gradual_sparsity(90, step, 100);
    EXPECT_GE(s, last) << step;
    last = s;
  }
  EXPECT_DOUBLE_EQ(sparsetopk::apps::gradual_sparsity(50, 1, 1),
                   50.0);  // a ramp of at least one step
}

TEST(Pruning, GlobalBudgetIsTheSumOfTheLayersAndKeepsTheLargestOverall) {
  torch::manual_seed(5);
  vit::Vit net(small_config());
  const auto weights = net->prunable_weights();
  const int64_t k = vit::kept_total(weights, 90);
  int64_t expected = 0;
  for (const auto& w : weights) expected += vit::kept(w.numel(), 90);
  EXPECT_EQ(k, expected);
  const auto pruned = vit::hard_pruned_weights_global(net, 90);
  ASSERT_EQ(pruned.size(), weights.size());
  int64_t nnz = 0;
  double smallest_kept = 1e30, largest_pruned = 0;
  for (size_t i = 0; i < pruned.size(); ++i) {
    EXPECT_FALSE(pruned[i].requires_grad());
    EXPECT_EQ(pruned[i].sizes(), weights[i].sizes());
    const auto kept = pruned[i].ne(0);
    nnz += kept.sum().item<int64_t>();
    const auto magnitude = weights[i].detach().abs();
    if (kept.any().item<bool>())
      smallest_kept = std::min(smallest_kept, magnitude.masked_select(kept).min().item<double>());
    if ((~kept).any().item<bool>())
      largest_pruned =
          std::max(largest_pruned, magnitude.masked_select(~kept).max().item<double>());
    EXPECT_TRUE(
        torch::equal(pruned[i].masked_select(kept), weights[i].detach().masked_select(kept)));
  }
  EXPECT_EQ(nnz, k);
  EXPECT_GE(smallest_kept, largest_pruned);
  EXPECT_DOUBLE_EQ(sparsetopk::apps::kth_magnitude_global(weights, k), smallest_kept);
}

TEST(Checkpoint, RoundTripRestoresTheOutputs) {
  const fs::path path = fs::temp_directory_path() / ("sparsetopk_vit_ckpt_" + std::to_string(::getpid()) + ".pt");
  torch::manual_seed(9);
  vit::Vit a(small_config());
  const auto x = torch::rand({3, 784});
  vit::save_checkpoint(a, {1, 2, 3}, path.string());
  torch::manual_seed(10);
  vit::Vit b(small_config());
  EXPECT_FALSE(torch::allclose(a->forward(x), b->forward(x)));
  // A different tag: not loaded, b unchanged.
  const auto before = b->forward(x);
  std::vector<int64_t> found;
  EXPECT_FALSE(vit::load_checkpoint(b, {1, 2, 4}, path.string(), &found));
  EXPECT_EQ(found, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_TRUE(torch::equal(before, b->forward(x)));
  ASSERT_TRUE(vit::load_checkpoint(b, {1, 2, 3}, path.string()));
  EXPECT_TRUE(torch::equal(a->forward(x), b->forward(x)));
  fs::remove(path);
  EXPECT_THROW(vit::load_checkpoint(b, {1, 2, 3}, path.string()), std::runtime_error);
}

// ---- smoke run of the program ----

using sparsetopk::apps::testing::write_synthetic_split;

using sparsetopk::apps::testing::read_text;

int run(const std::string& args, const fs::path& log) {
  return sparsetopk::apps::testing::run_program(VIT_FINETUNE_PATH, args, log);
}

TEST(VitFinetuneSmoke, AllMethodsRunWriteCsvAndReuseTheCheckpoint) {
  const fs::path dir = fs::temp_directory_path() / ("sparsetopk_vit_smoke_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write_synthetic_split(dir, "train", 64, 1);
  write_synthetic_split(dir, "t10k", 40, 2);
  const fs::path csv = dir / "out.csv", checkpoint = dir / "dense.pt";
  const std::string common = "--data-dir " + dir.string() + " --out " + csv.string() + " --checkpoint " +
                             checkpoint.string() +
                             " --depth 1 --dim 16 --mlp 32 --pretrain-steps 4 --finetune-steps 4 --batch-size 16"
                             " --log-every 2 --seeds 3 --sparsities 90,95 --threads 1";
  ASSERT_EQ(run(common, dir / "log1.txt"), 0) << read_text(dir / "log1.txt");
  EXPECT_TRUE(fs::exists(checkpoint));
  const std::string log1 = read_text(dir / "log1.txt");
  EXPECT_NE(log1.find("saved checkpoint"), std::string::npos) << log1;
  EXPECT_NE(log1.find("ETA"), std::string::npos) << log1;
  EXPECT_NE(log1.find("[pretrain] step 4/4"), std::string::npos) << log1;
  EXPECT_NE(log1.find("fine-tuned hard-pruned"), std::string::npos) << log1;

  std::ifstream in(csv);
  std::string header;
  std::getline(in, header);
  EXPECT_EQ(header.rfind("method,sparsity,seed,eval_split,dense_acc,oneshot_acc,finetuned_acc,", 0), 0u) << header;
  int rows = 0;
  for (std::string line; std::getline(in, line);) {
    ++rows;
    EXPECT_EQ(line.find("nan"), std::string::npos) << line;
    // nnz == kept weights: 4 layers of a block with dim 16, mlp 32: 768 + 256 + 512 + 512.
    std::vector<std::string> cells;
    std::stringstream stream(line);
    for (std::string cell; std::getline(stream, cell, ',');) cells.push_back(cell);
    ASSERT_GT(cells.size(), 9u) << line;
    const int64_t expected = cells[1] == "90" ? 77 + 26 + 51 + 51 : 38 + 13 + 26 + 26;
    EXPECT_EQ(cells[8], std::to_string(expected)) << line;
    EXPECT_EQ(cells[9], "2048") << line;
  }
  EXPECT_EQ(rows, 5 * 2);  // 5 methods x 2 sparsities x 1 seed

  // Second run: the checkpoint is reused.
  ASSERT_EQ(run(common + " --methods soft43 --sparsities 90", dir / "log2.txt"), 0) << read_text(dir / "log2.txt");
  EXPECT_NE(read_text(dir / "log2.txt").find("loaded checkpoint"), std::string::npos);

  // Other model settings with the same checkpoint: a clear error, exit status 2.
  EXPECT_EQ(run(common + " --depth 2", dir / "log3.txt"), 2);
  EXPECT_NE(read_text(dir / "log3.txt").find("--retrain"), std::string::npos) << read_text(dir / "log3.txt");

  // A validation split carved from the training images: accuracies on it.
  const std::string val = "--data-dir " + dir.string() + " --out " + (dir / "val.csv").string() +
                          " --checkpoint " + (dir / "val.pt").string() +
                          " --depth 1 --dim 16 --mlp 32 --pretrain-steps 2 --finetune-steps 2 --batch-size 16"
                          " --methods oneshot --sparsities 90 --val-size 24 --eval val";
  ASSERT_EQ(run(val, dir / "log4.txt"), 0) << read_text(dir / "log4.txt");
  EXPECT_NE(read_text(dir / "log4.txt").find("train 40, val 24 images"), std::string::npos)
      << read_text(dir / "log4.txt");
  EXPECT_NE(read_text(dir / "val.csv").find("oneshot,90,1,val,"), std::string::npos) << read_text(dir / "val.csv");
  EXPECT_EQ(run("--eval val", dir / "bad0.txt"), 2);
  EXPECT_NE(read_text(dir / "bad0.txt").find("--val-size"), std::string::npos);

  // Bad flags name the flag and the value.
  EXPECT_EQ(run("--methods oneshot,magic", dir / "bad1.txt"), 2);
  EXPECT_NE(read_text(dir / "bad1.txt").find("magic"), std::string::npos);
  EXPECT_EQ(run("--lr abc", dir / "bad2.txt"), 2);
  EXPECT_NE(read_text(dir / "bad2.txt").find("--lr"), std::string::npos);
  EXPECT_EQ(run("--data-dir " + (dir / "missing").string(), dir / "bad3.txt"), 2);
  EXPECT_NE(read_text(dir / "bad3.txt").find("no such file"), std::string::npos) << read_text(dir / "bad3.txt");
  fs::remove_all(dir);
}

// The global-budget methods: one K = the sum of the per-layer k over all
// prunable layers, evaluated with the global hard top-k, so the network keeps
// exactly K weights in all, split between the layers by magnitude.
TEST(VitFinetuneSmoke, GlobalMethodsKeepTheTotalBudget) {
  const fs::path dir =
      fs::temp_directory_path() / ("sparsetopk_vit_global_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write_synthetic_split(dir, "train", 64, 1);
  write_synthetic_split(dir, "t10k", 40, 2);
  const fs::path csv = dir / "out.csv";
  const std::string common =
      "--data-dir " + dir.string() + " --out " + csv.string() + " --checkpoint " +
      (dir / "dense.pt").string() +
      " --depth 1 --dim 16 --mlp 32 --pretrain-steps 4 --finetune-steps 8 --batch-size 16"
      " --log-every 2 --seeds 3 --sparsities 90,95 --threads 1";
  const std::string methods =
      " --methods oneshot_global,gradual_global,hard_global,ste_global,global43";
  ASSERT_EQ(run(common + methods, dir / "log.txt"), 0) << read_text(dir / "log.txt");
  const std::string log = read_text(dir / "log.txt");
  EXPECT_NE(log.find("(one global threshold)"), std::string::npos) << log;
  EXPECT_NE(log.find("[gradual_global s=95% seed=3] step 8/8"), std::string::npos) << log;
  EXPECT_NE(log.find("sparsity 95.0%"), std::string::npos) << log;

  std::ifstream in(csv);
  std::string header;
  std::getline(in, header);
  std::vector<std::string> columns;
  {
    std::stringstream stream(header);
    for (std::string c; std::getline(stream, c, ',');) columns.push_back(c);
  }
  const auto column = [&](const std::string& name) {
    const auto it = std::find(columns.begin(), columns.end(), name);
    EXPECT_NE(it, columns.end()) << name << " not in " << header;
    return static_cast<size_t>(it - columns.begin());
  };
  const size_t method = column("method"), sparsity = column("sparsity"), nnz = column("nnz"),
               per_layer = column("nnz_per_layer"), l_start = column("l_start"),
               global_acc = column("oneshot_global_acc"), finetuned = column("finetuned_acc");
  std::map<std::string, int> rows;
  for (std::string line; std::getline(in, line);) {
    EXPECT_EQ(line.find("nan"), std::string::npos) << line;
    std::vector<std::string> cells;
    std::stringstream stream(line);
    for (std::string cell; std::getline(stream, cell, ',');) cells.push_back(cell);
    ASSERT_EQ(cells.size(), columns.size()) << line;
    ++rows[cells[method]];
    // K = the per-layer budgets summed (768, 256, 512, 512 weights): 77 + 26 + 51 + 51, 38 + 13 +
    // 26 + 26.
    const int64_t expected = cells[sparsity] == "90" ? 205 : 103;
    EXPECT_EQ(cells[nnz], std::to_string(expected)) << line;
    int64_t sum = 0, layers = 0;
    std::stringstream parts(cells[per_layer]);
    for (std::string part; std::getline(parts, part, ';'); ++layers) sum += std::stoll(part);
    EXPECT_EQ(layers, 4) << line;
    EXPECT_EQ(sum, expected) << line;
    EXPECT_EQ(cells[column("layers")], "block0.qkv;block0.out;block0.fc1;block0.fc2") << line;
    EXPECT_EQ(cells[column("prunable_per_layer")], "768;256;512;512") << line;
    for (const size_t c : {global_acc, finetuned}) {
      EXPECT_GE(std::stod(cells[c]), 0.0) << line;
      EXPECT_LE(std::stod(cells[c]), 1.0) << line;
    }
    if (cells[method] == "global43") {
      EXPECT_GT(std::stod(cells[l_start]), 0.0) << line;
    }
  }
  EXPECT_EQ(rows, (std::map<std::string, int>{{"oneshot_global", 2},
                                              {"gradual_global", 2},
                                              {"hard_global", 2},
                                              {"ste_global", 2},
                                              {"global43", 2}}));

  // A bad method names the flag and the value.
  EXPECT_EQ(run(common + " --methods hard_global,global44", dir / "bad.txt"), 2);
  const std::string bad = read_text(dir / "bad.txt");
  EXPECT_NE(bad.find("--methods"), std::string::npos) << bad;
  EXPECT_NE(bad.find("global44"), std::string::npos) << bad;
  fs::remove_all(dir);
}

}  // namespace
