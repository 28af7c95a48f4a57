// Tests of the mixture-of-experts pieces (apps/moe/moe.hpp) and a smoke run
// of the moe_router program on a tiny synthetic IDX dataset.
#include "tests/synthetic_mnist.hpp"
#include "data/idx.hpp"
#include "moe/moe.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace {

namespace moe = sparsetopk::apps::moe;
namespace fs = std::filesystem;

moe::MoeConfig small_config(moe::RouterKind kind) {
  moe::MoeConfig c;
  c.d_model = 12;
  c.d_hidden = 10;
  c.num_experts = 6;
  c.k = 2;
  c.router = kind;
  return c;
}

TEST(Patchify, TokensAreSevenBySevenPatchesInRowMajorOrder) {
  const auto images = torch::arange(2 * 784, torch::kFloat32).reshape({2, 784});
  const auto tokens = sparsetopk::apps::patchify(images, 28, 7);
  ASSERT_EQ(tokens.sizes(), (std::vector<int64_t>{2, 16, 49}));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t r = 0; r < 28; r += 3)
      for (int64_t c = 0; c < 28; c += 5) {
        const int64_t token = (r / 7) * 4 + c / 7, within = (r % 7) * 7 + c % 7;
        EXPECT_EQ(tokens[b][token][within].item<float>(), images[b][r * 28 + c].item<float>());
      }
}

TEST(Patchify, RejectsAPatchThatDoesNotDivideTheImage) {
  EXPECT_THROW(sparsetopk::apps::patchify(torch::zeros({1, 784}), 28, 5), std::invalid_argument);
}

TEST(TopkGates, KeepTheKLargestSoftmaxWeightsRenormalized) {
  torch::manual_seed(1);
  const auto logits = torch::randn({30, 8}, torch::kFloat64);
  const auto gates = moe::topk_gates(logits, 2);
  EXPECT_TRUE(gates.ne(0).sum(1).eq(2).all().item<bool>());
  EXPECT_TRUE(torch::allclose(gates.sum(1), torch::ones({30}, torch::kFloat64)));
  const auto top = logits.topk(2, 1);
  const auto probs = std::get<0>(top).softmax(1);  // renormalized softmax over the kept = softmax of their logits
  EXPECT_TRUE(torch::allclose(gates.gather(1, std::get<1>(top)), probs));
}

TEST(LoadBalancingLoss, IsOneWhenRoutingIsUniform) {
  const auto logits = torch::zeros({8, 4});
  const auto gates = torch::eye(4).repeat({2, 1});  // every expert gets 2 of 8 tokens
  EXPECT_NEAR(moe::load_balancing_loss(logits, gates).item<double>(), 1.0, 1e-6);
  const auto skewed = torch::zeros({8, 4}).index_fill_(1, torch::tensor({0}), 1.0);  // all to expert 0
  EXPECT_GT(moe::load_balancing_loss(torch::randn({8, 4}).index_fill_(1, torch::tensor({0}), 5.0), skewed).item<double>(),
            2.0);
}

TEST(RoutingStats, CountsExpertsPerTokenAndLoad) {
  moe::RoutingStats stats(4);
  stats.add(torch::tensor({{0.5, 0.5, 0.0, 0.0}, {0.2, 0.3, 0.5, 0.0}, {0.0, 1.0, 0.0, 0.0}}));
  EXPECT_EQ(stats.tokens, 3);
  EXPECT_EQ(stats.assignments, 6);
  EXPECT_DOUBLE_EQ(stats.mean_experts(), 2.0);
  EXPECT_EQ(stats.max_experts, 3);
  const auto load = stats.load();
  EXPECT_DOUBLE_EQ(load[0], 2.0 / 6);
  EXPECT_DOUBLE_EQ(load[1], 3.0 / 6);
  EXPECT_DOUBLE_EQ(load[3], 0.0);
  EXPECT_DOUBLE_EQ(stats.load_min(), 0.0);
  EXPECT_DOUBLE_EQ(stats.load_max(), 0.5);
  // load = (2, 3, 1, 0) / 6: mean 1/4, population std sqrt(5/4)/6.
  EXPECT_NEAR(stats.load_cv(), std::sqrt(5.0 / 4.0) / 6.0 / 0.25, 1e-12);
}

// The sparse dispatch (each expert on its routed tokens only) equals the dense
// sum_e g_e * expert_e(x), in value and in gradient, for every router.
TEST(MoeLayer, SparseDispatchEqualsDenseComputation) {
  for (const auto kind : {moe::RouterKind::topk, moe::RouterKind::soft, moe::RouterKind::dense}) {
    torch::manual_seed(2);
    auto config = small_config(kind);
    config.l_rel = 1.0;  // wide band: some tokens use more than k experts
    moe::MoeLayer layer(config);
    layer->to(torch::kFloat64);
    const auto x = torch::randn({40, config.d_model}, torch::kFloat64);
    const auto logits = layer->router->gate->forward(x);
    double l = 0;
    const auto gates = layer->gates_for(x, logits, &l);
    const auto w = torch::randn({40, config.d_model}, torch::kFloat64);

    const auto sparse = layer->dispatch(x, gates);
    const auto grads_sparse = torch::autograd::grad({(sparse * w).sum()}, layer->parameters(), {}, true, false, true);
    const auto dense = layer->dispatch_dense(x, gates);
    const auto grads_dense = torch::autograd::grad({(dense * w).sum()}, layer->parameters(), {}, false, false, true);
    EXPECT_TRUE(torch::allclose(sparse, dense, 1e-12, 1e-12));
    ASSERT_EQ(grads_sparse.size(), grads_dense.size());
    for (size_t i = 0; i < grads_sparse.size(); ++i) {
      ASSERT_EQ(grads_sparse[i].defined(), grads_dense[i].defined());
      if (grads_sparse[i].defined()) {
        EXPECT_TRUE(torch::allclose(grads_sparse[i], grads_dense[i], 1e-10, 1e-12));
      }
    }
  }
}

TEST(MoeLayer, SparseRoutersEvaluateOnlyTheirExperts) {
  torch::manual_seed(3);
  for (const auto kind : {moe::RouterKind::topk, moe::RouterKind::soft}) {
    auto config = small_config(kind);
    config.l_rel = 1.0;
    moe::MoeLayer layer(config);
    const auto out = layer->forward(torch::randn({200, config.d_model}));
    const auto used = out.gates.ne(0).sum(1);
    EXPECT_TRUE(used.ge(config.k).all().item<bool>());  // a soft mask sums to k, entries <= 1
    EXPECT_TRUE(torch::allclose(out.gates.sum(1), torch::ones({200})));
    if (kind == moe::RouterKind::topk) {
      EXPECT_TRUE(used.eq(config.k).all().item<bool>());
    } else {
      EXPECT_TRUE(used.gt(config.k).any().item<bool>()) << "band too narrow to test";
    }
    EXPECT_TRUE(used.lt(config.num_experts).any().item<bool>());
  }
}

TEST(MoeLayer, SoftRouterTendsToTopkAsLShrinks) {
  torch::manual_seed(4);
  auto config = small_config(moe::RouterKind::soft);
  config.l_rel = 1e-5;
  moe::MoeLayer layer(config);
  const auto x = torch::randn({100, config.d_model}, torch::kFloat64);
  layer->to(torch::kFloat64);
  const auto out = layer->forward(x);
  const auto reference = moe::topk_gates(out.logits, config.k);
  EXPECT_TRUE(torch::allclose(out.gates, reference, 1e-4, 1e-4));
}

// Gradients reach the router through the soft gates, and they are the true
// derivative: central differences on the router weights, in float64, with a
// band wide enough that many masks are fractional (p = 4/3 is C^1).
TEST(MoeLayer, RouterGradientThroughSoftGatesMatchesFiniteDifferences) {
  for (const double p : {4.0 / 3.0, 2.0}) {
    torch::manual_seed(5);
    auto config = small_config(moe::RouterKind::soft);
    config.l_rel = 1.0;
    config.p = p;
    moe::MoeLayer layer(config);
    layer->to(torch::kFloat64);
    const auto x = torch::randn({30, config.d_model}, torch::kFloat64);
    const auto w = torch::randn({30, config.d_model}, torch::kFloat64);
    layer->train();
    layer->forward(x);  // sets the running logit scale
    layer->eval();      // freezes it, so l is the same in every evaluation below
    const auto loss_of = [&] { return (layer->forward(x).y * w).sum(); };

    const auto out = layer->forward(x);
    ASSERT_TRUE(out.gates.ne(0).sum(1).gt(config.k).any().item<bool>());
    auto& weight = layer->router->gate->weight;
    const auto grad = torch::autograd::grad({(out.y * w).sum()}, {weight})[0];
    EXPECT_GT(grad.abs().max().item<double>(), 1e-6);
    torch::NoGradGuard no_grad;
    const double eps = 1e-6;
    for (int64_t e = 0; e < config.num_experts; ++e)
      for (int64_t j = 0; j < config.d_model; j += 5) {
        const double saved = weight[e][j].item<double>();
        weight[e][j].fill_(saved + eps);
        const double up = loss_of().item<double>();
        weight[e][j].fill_(saved - eps);
        const double down = loss_of().item<double>();
        weight[e][j].fill_(saved);
        EXPECT_NEAR(grad[e][j].item<double>(), (up - down) / (2 * eps), 1e-5 * (1 + std::abs(up)))
            << "p " << p << " expert " << e << " input " << j;
      }
  }
}

TEST(MoeLayer, RunningScaleIsUpdatedInTrainingAndFrozenInEvaluation) {
  torch::manual_seed(6);
  auto config = small_config(moe::RouterKind::soft);
  config.l_rel = 0.5;
  moe::MoeLayer layer(config);
  const auto x = torch::randn({50, config.d_model});
  const double l1 = layer->forward(x).l;
  const double scale = layer->running_scale.item<double>();
  EXPECT_NEAR(l1, 0.5 * scale, 1e-12);
  EXPECT_NEAR(scale, moe::logit_scale(layer->router->gate->forward(x)), 1e-6);
  layer->eval();
  const double l2 = layer->forward(torch::randn({50, config.d_model}) * 10).l;
  EXPECT_DOUBLE_EQ(l2, l1);
  EXPECT_DOUBLE_EQ(layer->running_scale.item<double>(), scale);
}

TEST(MoeClassifier, ForwardShapesAndBackward) {
  for (const auto kind : {moe::RouterKind::topk, moe::RouterKind::soft, moe::RouterKind::expert,
                          moe::RouterKind::dense}) {
    torch::manual_seed(7);
    moe::MoeConfig config;
    config.router = kind;
    moe::MoeClassifier net(config);
    const auto out = net->forward(torch::rand({3, 784}));
    EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{3, 10}));
    EXPECT_EQ(out.gates.sizes(), (std::vector<int64_t>{3 * 16, 8}));
    (out.logits.sum() + out.aux_loss).backward();
    const auto& router_grad = net->moe->router->gate->weight.grad();
    ASSERT_TRUE(router_grad.defined());
    EXPECT_TRUE(router_grad.isfinite().all().item<bool>());
    EXPECT_GT(router_grad.abs().sum().item<double>(), 0);
  }
}

// Expert choice: each expert's soft mask over the tokens sums to its capacity,
// round(k * tokens / experts), and the gates are that mask times the softmax.
TEST(MoeLayer, ExpertChoiceGivesEveryExpertItsCapacity) {
  torch::manual_seed(5);
  moe::MoeLayer layer(small_config(moe::RouterKind::expert));
  const auto x = torch::randn({30, 12});
  const auto out = layer->forward(x);
  ASSERT_GT(out.l, 0);
  const auto mask = out.gates / out.logits.softmax(-1);
  EXPECT_TRUE(torch::allclose(mask.sum(0), torch::full({6}, 10.0), 1e-4, 1e-4));  // 2 * 30 / 6
  moe::RoutingStats stats(6);
  stats.add(out.gates);
  EXPECT_EQ(stats.tokens, 30);
  EXPECT_GE(stats.zero_expert_fraction(), 0.0);
  EXPECT_LE(stats.zero_expert_fraction(), 1.0);
}

TEST(RoutingStats, CountsTokensWithNoExpert) {
  moe::RoutingStats stats(3);
  stats.add(torch::tensor({{0.5, 0.5, 0.0}, {0.0, 0.0, 0.0}, {0.0, 1.0, 0.0}, {0.0, 0.0, 0.0}}));
  EXPECT_EQ(stats.zero_tokens, 2);
  EXPECT_DOUBLE_EQ(stats.zero_expert_fraction(), 0.5);
}

// ---- smoke run of the program ----

using sparsetopk::apps::testing::write_synthetic_split;

std::vector<std::string> read_lines(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

int exit_status(int system_result) { return WIFEXITED(system_result) ? WEXITSTATUS(system_result) : -1; }

class MoeRouterSmoke : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() / ("sparsetopk_moe_smoke_" + std::to_string(::getpid()) + "_" +
                                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir);
    write_synthetic_split(dir, "train", 64, 1);
    write_synthetic_split(dir, "t10k", 40, 2);
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string command(const std::string& args, const std::string& log) const {
    return std::string(MOE_ROUTER_PATH) + " --data-dir " + dir.string() + " " + args + " > " + (dir / log).string() +
           " 2>&1";
  }
  fs::path dir;
};

TEST_F(MoeRouterSmoke, AllRoutersRunAndWriteCsv) {
  const fs::path csv = dir / "out.csv";
  const std::string cmd = command("--out " + csv.string() +
                                      " --steps 4 --batch-size 16 --log-every 2 --seeds 3 --routers topk,soft,soft2,dense,topk3,expert"
                                      " --eval-batch 16 --threads 1",
                                  "log.txt");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << '\n' << read_text(dir / "log.txt");
  const auto lines = read_lines(csv);
  ASSERT_EQ(lines.size(), 1u + 6u);
  EXPECT_EQ(lines[0].rfind("router,p,l_rel,seed,", 0), 0u) << lines[0];
  const std::vector<std::string> routers{"topk", "soft", "soft2", "dense", "topk3", "expert"};
  for (size_t i = 1; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i].rfind(routers[i - 1] + ",", 0), 0u) << lines[i];
    EXPECT_EQ(lines[i].find("nan"), std::string::npos) << lines[i];
    EXPECT_NE(lines[i].find(",test,40,"), std::string::npos) << lines[i];
  }
  EXPECT_NE(lines[5].find(",3,8,"), std::string::npos) << "topk3 has k = 3: " << lines[5];
  EXPECT_NE(lines[0].find(",zero_expert_fraction,"), std::string::npos) << lines[0];
  const std::string text = read_text(dir / "log.txt");
  EXPECT_NE(text.find("ETA"), std::string::npos) << text;
  EXPECT_NE(text.find("experts/token"), std::string::npos) << text;
  EXPECT_NE(text.find("test accuracy"), std::string::npos) << text;
}

TEST_F(MoeRouterSmoke, ValidationSplitComesFromTheTrainingImages) {
  const fs::path csv = dir / "val.csv";
  const std::string cmd =
      command("--out " + csv.string() + " --steps 2 --batch-size 16 --routers soft --validation 24", "log.txt");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << '\n' << read_text(dir / "log.txt");
  const auto lines = read_lines(csv);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[1].find(",40,validation,24,"), std::string::npos) << lines[1];  // 64 - 24 train, 24 validation
}

TEST_F(MoeRouterSmoke, BadArgumentsExitWithStatus2AndNameTheFlag) {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"--routers topk,bogus", "bogus"},
      {"--routers topk9", "topk9"},
      {"--routers topk0", "topk0"},
      {"--soft-l -1", "--soft-l"},
      {"--k 9", "--k"},
      {"--batch-size x", "--batch-size"},
      {"--frobnicate 1", "--frobnicate"},
  };
  for (const auto& [args, expected] : cases) {
    const int status = std::system(command(args + " --steps 1 --out " + (dir / "x.csv").string(), "bad.txt").c_str());
    EXPECT_EQ(exit_status(status), 2) << args;
    EXPECT_NE(read_text(dir / "bad.txt").find(expected), std::string::npos) << args << ": " << read_text(dir / "bad.txt");
  }
  const int status =
      std::system(command("--data-dir " + (dir / "missing").string() + " --steps 1 --out " + (dir / "x.csv").string(),
                          "missing.txt")
                      .c_str());
  EXPECT_EQ(exit_status(status), 2);
  EXPECT_NE(read_text(dir / "missing.txt").find("no such file"), std::string::npos) << read_text(dir / "missing.txt");
}

}  // namespace
