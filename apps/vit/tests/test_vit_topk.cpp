// Tests of vit_topk's pieces (the pairs task, label noise, the smooth top-k
// SVM of Berrada et al. against its definition over all k-subsets, top-k
// accuracy, non-square ViT inputs) and a smoke run of the program on a tiny
// synthetic IDX dataset written here.
#include "tests/run_program.hpp"
#include "tests/synthetic_mnist.hpp"
#include "data/idx.hpp"
#include "vit/pairs.hpp"
#include "vit/smooth_svm.hpp"
#include "vit/vit.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace apps = sparsetopk::apps;
namespace vit = sparsetopk::apps::vit;

TEST(Pairs, LabelIsTenTimesLeftPlusRightAndImagesSitSideBySide) {
  apps::Dataset singles{torch::arange(4 * 784, torch::kInt64).remainder(251).to(torch::kUInt8).reshape({4, 784}),
                        torch::tensor({3, 0, 9, 7}, torch::kInt64)};
  const std::vector<vit::PairIndex> pairs{{0, 2}, {2, 0}, {1, 3}, {3, 3}};
  const auto d = vit::make_pairs(singles, pairs);
  ASSERT_EQ(d.images.sizes(), (std::vector<int64_t>{4, 28 * 56}));
  EXPECT_TRUE(torch::equal(d.labels, torch::tensor({39, 93, 7, 77}, torch::kInt64)));
  EXPECT_EQ(vit::pair_label(3, 9), 39);
  const auto image = d.images[1].view({28, 56});
  EXPECT_TRUE(torch::equal(image.slice(1, 0, 28).reshape({784}), singles.images[2]));
  EXPECT_TRUE(torch::equal(image.slice(1, 28, 56).reshape({784}), singles.images[0]));
  EXPECT_THROW(vit::make_pairs(singles, {{0, 4}}), std::invalid_argument);
}

TEST(Pairs, DrawingIsDeterministicAndCoversAllClasses) {
  const auto a = vit::draw_pairs(1000, 5000, 7), b = vit::draw_pairs(1000, 5000, 7), c = vit::draw_pairs(1000, 5000, 8);
  ASSERT_EQ(a.size(), 5000u);
  bool same = true, differ = false;
  for (size_t i = 0; i < a.size(); ++i) {
    same = same && a[i].left == b[i].left && a[i].right == b[i].right;
    differ = differ || a[i].left != c[i].left;
    ASSERT_TRUE(a[i].left >= 0 && a[i].left < 1000 && a[i].right >= 0 && a[i].right < 1000);
  }
  EXPECT_TRUE(same);
  EXPECT_TRUE(differ);
  apps::Dataset singles{torch::zeros({1000, 784}, torch::kUInt8), torch::arange(1000, torch::kInt64).remainder(10)};
  const auto labels = vit::make_pairs(singles, a).labels;
  EXPECT_EQ(std::get<0>(at::_unique(labels)).numel(), 100);
}

TEST(LabelNoise, ReplacesTheRequestedFractionDeterministically) {
  const auto labels = torch::arange(10000, torch::kInt64).remainder(100);
  int64_t changed = 0;
  const auto noisy = vit::noisy_labels(labels, 0.2, 100, 3, &changed);
  EXPECT_TRUE(torch::equal(noisy, vit::noisy_labels(labels, 0.2, 100, 3)));
  EXPECT_EQ(changed, noisy.ne(labels).sum().item<int64_t>());
  // 2000 replaced, each unchanged with probability 1/100.
  EXPECT_GT(changed, 1940);
  EXPECT_LE(changed, 2000);
  EXPECT_TRUE(noisy.ge(0).all().item<bool>() && noisy.lt(100).all().item<bool>());
  EXPECT_TRUE(torch::equal(vit::noisy_labels(labels, 0, 100, 3), labels));
}

// L_{k,tau} from its definition: log-sum-exps over every k-subset.
double brute_force_svm(const std::vector<double>& s, int64_t y, int64_t k, double tau, double alpha) {
  const auto n = static_cast<int64_t>(s.size());
  double all = 0, with_label = 0;
  for (int64_t bits = 0; bits < (1 << n); ++bits) {
    if (__builtin_popcountll(static_cast<unsigned long long>(bits)) != k) continue;
    double sum = 0;
    for (int64_t j = 0; j < n; ++j)
      if (bits >> j & 1) sum += s[static_cast<size_t>(j)];
    const bool has_label = (bits >> y & 1) != 0;
    all += std::exp(((has_label ? 0.0 : alpha) + sum / static_cast<double>(k)) / tau);
    if (has_label) with_label += std::exp(sum / static_cast<double>(k) / tau);
  }
  return tau * (std::log(all) - std::log(with_label));
}

TEST(SmoothTopkSvm, MatchesTheSumOverAllKSubsets) {
  torch::manual_seed(11);
  const int64_t n = 6;
  for (const int64_t k : {1, 2, 3, 5})
    for (const double tau : {0.1, 1.0, 3.0})
      for (const double alpha : {0.0, 1.0}) {
        const auto scores = torch::randn({n, n}, torch::kFloat64) * 3;
        const auto target = torch::arange(n, torch::kInt64);  // every label once
        const auto loss = vit::smooth_topk_svm(scores, target, k, tau, alpha);
        for (int64_t r = 0; r < n; ++r) {
          const auto row = scores[r];
          const std::vector<double> s(row.data_ptr<double>(), row.data_ptr<double>() + n);
          EXPECT_NEAR(loss[r].item<double>(), brute_force_svm(s, r, k, tau, alpha), 1e-12)
              << "k " << k << " tau " << tau << " alpha " << alpha << " row " << r;
          EXPECT_GE(loss[r].item<double>(), 0);
        }
      }
}

TEST(SmoothTopkSvm, GradientMatchesCentralDifferencesAndLargeScoresStayFinite) {
  torch::manual_seed(12);
  const auto scores = (torch::randn({3, 6}, torch::kFloat64) * 2).requires_grad_();
  const auto target = torch::tensor({0, 4, 5}, torch::kInt64);
  vit::smooth_topk_svm(scores, target, 2, 0.5, 1.0).sum().backward();
  const double h = 1e-6;
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t j = 0; j < 6; ++j) {
      auto plus = scores.detach().clone(), minus = scores.detach().clone();
      plus[r][j] += h;
      minus[r][j] -= h;
      const double fd = (vit::smooth_topk_svm(plus, target, 2, 0.5, 1.0).sum().item<double>() -
                         vit::smooth_topk_svm(minus, target, 2, 0.5, 1.0).sum().item<double>()) /
                        (2 * h);
      EXPECT_NEAR(scores.grad()[r][j].item<double>(), fd, 1e-6);
    }
  // Scores whose exp overflows float64 (n = 100, k = 5, tau 0.01).
  const auto big = (torch::randn({4, 100}) * 1000).requires_grad_();
  const auto loss = vit::smooth_topk_svm(big, torch::tensor({0, 1, 2, 3}, torch::kInt64), 5, 0.01, 1.0);
  loss.sum().backward();
  EXPECT_TRUE(torch::isfinite(loss).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(big.grad()).all().item<bool>());
  EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
  EXPECT_THROW(vit::smooth_topk_svm(big, torch::tensor({0, 1, 2, 3}, torch::kInt64), 100), std::invalid_argument);
}

TEST(SmoothTopkSvm, TendsToTheTopkHingeAsTauShrinks) {
  // Label 0 scores 3rd. Top-1 hinge: max(alpha + 3, 1) - 1 = 3.
  const auto scores = torch::tensor({{1.0, 3.0, 2.5, -1.0, -2.0}}, torch::kFloat64);
  const auto y = torch::tensor({0}, torch::kInt64);
  EXPECT_NEAR(vit::smooth_topk_svm(scores, y, 1, 1e-3, 1.0).item<double>(), 3.0, 1e-2);
  // k = 3: best set without 0 {1, 2, 3}: 1 + (3 + 2.5 - 1) / 3 = 2.5; best with 0
  // {0, 1, 2}: (1 + 3 + 2.5) / 3 = 2.1667.
  EXPECT_NEAR(vit::smooth_topk_svm(scores, y, 3, 1e-3, 1.0).item<double>(), 2.5 - 6.5 / 3, 1e-2);
}

TEST(TopkAccuracies, CountLabelsAmongTheKBestAndNonSquareInputs) {
  torch::manual_seed(13);
  vit::VitConfig c;
  c.width = 56;
  c.dim = 16;
  c.depth = 1;
  c.mlp = 32;
  c.classes = 100;
  vit::Vit model(c);
  EXPECT_EQ(c.patches(), 32);
  const auto images = torch::randint(0, 256, {30, 28 * 56}, torch::kInt64).to(torch::kUInt8);
  const auto labels = torch::randint(0, 100, {30}, torch::kInt64);
  const auto acc = vit::topk_accuracies(model, images, labels, {1, 3, 5, 100});
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(apps::to_float(images));
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{30, 100}));
  const auto top5 = std::get<1>(logits.topk(5, 1));
  for (const int64_t k : {1, 3, 5}) {
    const double expected = top5.slice(1, 0, k).eq(labels.unsqueeze(1)).any(1).to(torch::kFloat64).mean().item<double>();
    EXPECT_DOUBLE_EQ(acc[k == 1 ? 0 : k == 3 ? 1 : 2], expected);
  }
  EXPECT_DOUBLE_EQ(acc[3], 1.0);
  vit::VitConfig bad = c;
  bad.width = 30;
  EXPECT_THROW(bad.validate(), std::invalid_argument);
}

// ---- smoke run of the program ----

using apps::testing::write_synthetic_split;

using sparsetopk::apps::testing::read_text;

int run(const std::string& args, const fs::path& log) {
  return sparsetopk::apps::testing::run_program(VIT_TOPK_PATH, args, log);
}

TEST(VitTopkSmoke, MethodsRunAndWriteSaneAccuracies) {
  const fs::path dir = fs::temp_directory_path() / ("sparsetopk_vit_topk_smoke_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write_synthetic_split(dir, "train", 80, 1);
  write_synthetic_split(dir, "t10k", 40, 2);
  const fs::path csv = dir / "out.csv";
  const std::string common = "--quick --data-dir " + dir.string() + " --out " + csv.string() + " --checkpoint " +
                             (dir / "single.pt").string() +
                             " --depth 1 --dim 16 --mlp 32 --pretrain-steps 4 --finetune-steps 4 --batch-size 16"
                             " --train-pairs 64 --test-pairs 50 --log-every 2 --threads 1";
  ASSERT_EQ(run(common + " --methods ce,topk5_p43,svm5 --noise 0,20 --seeds 1,2", dir / "log1.txt"), 0)
      << read_text(dir / "log1.txt");
  const std::string log1 = read_text(dir / "log1.txt");
  EXPECT_NE(log1.find("saved checkpoint"), std::string::npos) << log1;
  EXPECT_NE(log1.find("top-5"), std::string::npos) << log1;

  std::ifstream in(csv);
  std::string header;
  std::getline(in, header);
  EXPECT_EQ(header.rfind("method,loss,k,p,noise,seed,eval_split,top1,top3,top5,labels_changed,", 0), 0u) << header;
  std::map<std::string, int> rows;
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> cells;
    std::stringstream stream(line);
    for (std::string cell; std::getline(stream, cell, ',');) cells.push_back(cell);
    ASSERT_GT(cells.size(), 11u) << line;
    ++rows[cells[0] + "/" + cells[4]];
    const double top1 = std::stod(cells[7]), top3 = std::stod(cells[8]), top5 = std::stod(cells[9]);
    EXPECT_TRUE(0 <= top1 && top1 <= top3 && top3 <= top5 && top5 <= 1) << line;
    EXPECT_EQ(cells[6], "test");
    EXPECT_EQ(cells[12], "50");
    // 20% of 64 = 13 labels redrawn, each kept with probability 1/100.
    if (cells[4] == "20") {
      EXPECT_TRUE(std::stoi(cells[10]) > 0 && std::stoi(cells[10]) <= 13) << line;
    } else {
      EXPECT_EQ(cells[10], "0") << line;
    }
  }
  EXPECT_EQ(rows.size(), 6u);  // 3 methods x 2 noise levels
  for (const auto& [key, count] : rows) EXPECT_EQ(count, 2) << key;  // 2 seeds

  // The checkpoint is reused; a validation split replaces the test pairs.
  ASSERT_EQ(run(common + " --methods topk1_p2 --val-size 20 --eval val --val-pairs 30 --out " +
                    (dir / "val.csv").string() + " --checkpoint " + (dir / "val.pt").string(),
                dir / "log2.txt"),
            0)
      << read_text(dir / "log2.txt");
  EXPECT_NE(read_text(dir / "val.csv").find("topk1_p2,topk_loss,1,2,0,1,val,"), std::string::npos)
      << read_text(dir / "val.csv");
  ASSERT_EQ(run(common + " --methods ce", dir / "log3.txt"), 0) << read_text(dir / "log3.txt");
  EXPECT_NE(read_text(dir / "log3.txt").find("loaded checkpoint"), std::string::npos);

  // Bad flags name the flag.
  EXPECT_EQ(run("--methods ce,hinge", dir / "bad1.txt"), 2);
  EXPECT_NE(read_text(dir / "bad1.txt").find("hinge"), std::string::npos);
  EXPECT_EQ(run("--l -1", dir / "bad2.txt"), 2);
  EXPECT_NE(read_text(dir / "bad2.txt").find("--l"), std::string::npos);
  EXPECT_EQ(run("--noise 120", dir / "bad3.txt"), 2);
  EXPECT_NE(read_text(dir / "bad3.txt").find("--noise"), std::string::npos);
  EXPECT_EQ(run("--eval val", dir / "bad4.txt"), 2);
  EXPECT_NE(read_text(dir / "bad4.txt").find("--val-size"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
