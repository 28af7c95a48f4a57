// The LibTorch C++ API of <sparsetopk/torch.hpp>: values, layouts, gradients
// (against the core's VJP and finite differences), errors and the modules.

#include <gtest/gtest.h>

#include <sparsetopk/torch.hpp>

#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace stt = sparsetopk::torch;

namespace {

at::Tensor spec_x(at::ScalarType type = at::kDouble) {
  return torch::tensor({-5.0, -2.0, 3.0, 1.0}, torch::TensorOptions().dtype(type));
}

std::vector<double> values(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kDouble).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

void expect_near(const at::Tensor& a, const at::Tensor& b, double tol) {
  ASSERT_EQ(a.sizes(), b.sizes());
  EXPECT_TRUE(torch::allclose(a.to(at::kDouble), b.to(at::kDouble), 0.0, tol)) << a << "\nvs\n" << b;
}

std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "(no error)";
}

}  // namespace

TEST(TorchOps, SpecKnownValuesInFloatAndDouble) {
  for (auto type : {at::kFloat, at::kDouble}) {
    const double tol = type == at::kFloat ? 1e-5 : 1e-12;
    expect_near(stt::soft_topk_mask(spec_x(type), 2, 0.01), torch::tensor({0.0, 0.0, 1.0, 1.0}), tol);
    expect_near(stt::soft_topk_mag(spec_x(type), 2, 0.01), torch::tensor({-5.0, 0.0, 3.0, 0.0}), tol);
    EXPECT_EQ(values(stt::hard_topk_mask(spec_x(type), 2)), (std::vector<double>{0, 0, 1, 1}));
    EXPECT_EQ(values(stt::hard_topk_mag(spec_x(type), 2)), (std::vector<double>{-5, 0, 3, 0}));
    EXPECT_EQ(stt::soft_topk_mask(spec_x(type), 2).scalar_type(), type);
  }
}

TEST(TorchOps, RowsMatchTheCoreOneRowFunctions) {
  const at::Tensor x = torch::randn({5, 9}, torch::kDouble);
  const sparsetopk::SoftTopkOptions options{0.3, 2.0, sparsetopk::Solver::pav};
  const at::Tensor mask = stt::soft_topk_mask(x, 4, 0.3, 2.0, -1, stt::Solver::pav);
  const at::Tensor mag = stt::soft_topk_mag(x, 4, 0.3, 2.0, -1, stt::Solver::pav);
  for (int64_t r = 0; r < 5; ++r) {
    EXPECT_EQ(values(mask[r]), sparsetopk::soft_topk_mask(values(x[r]), 4, options));
    EXPECT_EQ(values(mag[r]), sparsetopk::soft_topk_mag(values(x[r]), 4, options));
  }
}

TEST(TorchOps, GenericAndDykstraSolvers) {
  const at::Tensor x = torch::randn({5, 9}, torch::kDouble);
  for (auto op : {&stt::soft_topk_mask, &stt::soft_topk_mag}) {
    const at::Tensor exact = op(x, 4, 0.3, 2.0, -1, stt::Solver::automatic, std::nullopt);
    EXPECT_TRUE(torch::allclose(op(x, 4, 0.3, 2.0, -1, sparsetopk::torch::Solver::generic, std::nullopt), exact, 1e-12, 1e-12));
    EXPECT_TRUE(torch::allclose(op(x, 4, 0.3, 2.0, -1, sparsetopk::torch::Solver::dykstra, 5000), exact, 1e-9, 1e-9));
    EXPECT_TRUE(torch::allclose(op(x, 4, 0.3, 2.0, -1, sparsetopk::torch::Solver::dykstra, std::nullopt), exact, 1e-9, 1e-9));
    const at::Tensor meta = torch::zeros({2, 3}, torch::Device("meta"));
    EXPECT_TRUE(op(meta, 1, 0.3, 2.0, -1, sparsetopk::torch::Solver::dykstra, 10).is_meta());
  }
  EXPECT_NE(error_message([&] { stt::soft_topk_mask(x, 1, 0.1, 1.5, -1, sparsetopk::torch::Solver::dykstra); }).find(
                "sparsetopk.soft_topk_mask: solver = \"dykstra\" needs p = 2, got p = 1.5"),
            std::string::npos);
  EXPECT_NE(error_message([&] { stt::soft_topk_mag(x, 1, 0.1, 2.0, -1, sparsetopk::torch::Solver::dykstra, 0); }).find(
                "sparsetopk.soft_topk_mag: num_iter must be >= 1, got num_iter = 0"),
            std::string::npos);
  EXPECT_NE(error_message([&] { stt::soft_topk_mag(x, 1, 0.1, 2.0, -1, stt::Solver::pav, 3); }).find(
                "num_iter = 3 is for solver = \"dykstra\" only, got solver = \"pav\""),
            std::string::npos);
  stt::SoftTopKMask module(stt::SoftTopKMaskOptions(2).p(2.0).solver(sparsetopk::torch::Solver::dykstra).num_iter(7));
  std::ostringstream text;
  module->pretty_print(text);
  EXPECT_EQ(text.str(), "sparsetopk::torch::SoftTopKMask(k=2, l=0.1, p=2, dim=-1, solver=dykstra, num_iter=7)");
  EXPECT_TRUE(torch::equal(module(x), stt::soft_topk_mask(x, 2, 0.1, 2.0, -1, sparsetopk::torch::Solver::dykstra, 7)));
}

TEST(TorchOps, AnyDimEqualsMovingTheDimLast) {
  const at::Tensor x = torch::randn({3, 7, 4}, torch::kDouble);
  const at::Tensor out = stt::soft_topk_mask(x, 3, 0.5, 4.0 / 3.0, 1);
  EXPECT_TRUE(out.is_contiguous());
  EXPECT_TRUE(torch::equal(out, stt::soft_topk_mask(x.movedim(1, -1).contiguous(), 3, 0.5).movedim(-1, 1)));
  EXPECT_TRUE(torch::equal(stt::hard_topk_mag(x.transpose(0, 2), 2, 0),
                           stt::hard_topk_mag(x.transpose(0, 2).contiguous(), 2, 0)));
}

TEST(TorchOps, EmptyAndHalfPrecisionTensors) {
  EXPECT_EQ(stt::soft_topk_mag(torch::empty({0, 5}), 2).sizes(), (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(stt::soft_topk_mask(torch::empty({4, 0}), 0).sizes(), (std::vector<int64_t>{4, 0}));
  for (auto type : {at::kHalf, at::kBFloat16}) {
    const at::Tensor x = torch::randn({3, 6}).to(type);
    const at::Tensor out = stt::soft_topk_mask(x, 2);
    EXPECT_EQ(out.scalar_type(), type);
    EXPECT_TRUE(torch::equal(out, stt::soft_topk_mask(x.to(at::kFloat), 2).to(type)));
  }
}

TEST(TorchOps, GradientEqualsTheCoreVjp) {
  const at::Tensor x = torch::randn({4, 8}, torch::kDouble).requires_grad_();
  const at::Tensor g = torch::randn({4, 8}, torch::kDouble);
  const sparsetopk::SoftTopkOptions options{1.0, 4.0 / 3.0};
  const std::vector<double> xs = values(x), gs = values(g);
  for (bool magnitude : {false, true}) {
    const at::Tensor y = magnitude ? stt::soft_topk_mag(x, 3, 1.0) : stt::soft_topk_mask(x, 3, 1.0);
    const at::Tensor grad = torch::autograd::grad({y}, {x}, {g})[0];

    std::vector<double> out(xs.size()), expected(xs.size());
    std::vector<sparsetopk::RowState> state(4);
    if (magnitude) {
      sparsetopk::soft_topk_mag<double>(xs, 8, 3, out, options, state);
      sparsetopk::soft_topk_mag_vjp<double>(xs, 8, state, options, gs, expected);
    } else {
      sparsetopk::soft_topk_mask<double>(xs, 8, 3, out, options, state);
      sparsetopk::soft_topk_mask_vjp<double>(xs, 8, state, options, gs, expected);
    }
    EXPECT_EQ(values(y), out);
    // The state crosses to the backward as a tensor of RowStates; the torch
    // backward may sum the band in another order: the sums may round differently.
    const std::vector<double> got = values(grad);
    ASSERT_EQ(got.size(), expected.size());
    for (std::size_t i = 0; i < got.size(); ++i)
      EXPECT_NEAR(got[i], expected[i], 1e-13 * (1.0 + std::abs(expected[i]))) << "entry " << i;
  }
}

TEST(TorchOps, GradientMatchesFiniteDifferences) {
  const at::Tensor x0 = torch::tensor({0.9, -0.4, 0.35, 1.7, -1.2, 0.05}, torch::kDouble);
  const at::Tensor g = torch::tensor({0.3, -1.0, 0.7, 0.2, 0.5, -0.4}, torch::kDouble);
  for (bool magnitude : {false, true}) {
    auto f = [&](const at::Tensor& x) {
      return magnitude ? stt::soft_topk_mag(x, 3, 0.8, 1.5, 0) : stt::soft_topk_mask(x, 3, 0.8, 1.5, 0);
    };
    const at::Tensor x = x0.clone().requires_grad_();
    const at::Tensor grad = torch::autograd::grad({f(x)}, {x}, {g})[0];
    const double h = 1e-6;
    for (int64_t i = 0; i < x0.numel(); ++i) {
      at::Tensor plus = x0.clone(), minus = x0.clone();
      plus[i] += h;
      minus[i] -= h;
      const double numeric = ((f(plus) - f(minus)) * g).sum().item<double>() / (2 * h);
      EXPECT_NEAR(grad[i].item<double>(), numeric, 1e-6) << "magnitude=" << magnitude << " i=" << i;
    }
    EXPECT_GT(grad.abs().max().item<double>(), 0.05);
  }
}

TEST(TorchOps, HardMagnitudeGradientIsTheMask) {
  const at::Tensor x = torch::randn({3, 6}, torch::kDouble).requires_grad_();
  const at::Tensor g = torch::randn({3, 6}, torch::kDouble);
  const at::Tensor grad = torch::autograd::grad({stt::hard_topk_mag(x, 2)}, {x}, {g})[0];
  EXPECT_TRUE(torch::equal(grad, g * stt::hard_topk_mask(x.detach().abs(), 2)));
  EXPECT_FALSE(stt::hard_topk_mask(x, 2).requires_grad());
}

TEST(TorchOps, NoGradAndInferenceMode) {
  const at::Tensor x = torch::randn({2, 5}).requires_grad_();
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(stt::soft_topk_mask(x, 2).requires_grad());
  }
  {
    c10::InferenceMode inference;
    const at::Tensor out = stt::soft_topk_mag(torch::randn({2, 5}), 2);
    EXPECT_TRUE(out.is_inference());
  }
  EXPECT_TRUE(stt::soft_topk_mask(x, 2).requires_grad());
}

TEST(TorchOps, DoubleBackwardThrows) {
  const at::Tensor x = torch::randn({2, 6}, torch::kDouble).requires_grad_();
  const at::Tensor y = stt::soft_topk_mask(x, 2, 1.0);
  const at::Tensor grad = torch::autograd::grad({y.pow(2).sum()}, {x}, {}, /*retain_graph=*/true,
                                                /*create_graph=*/true)[0];
  try {
    torch::autograd::grad({grad.sum()}, {x});
    FAIL() << "double backward did not throw";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("sparsetopk.soft_topk_mask: second derivatives are not implemented"), std::string::npos)
        << e.what();
  }
}

TEST(TorchOps, ErrorsNameTheArgument) {
  const at::Tensor x = torch::randn({2, 5});
  EXPECT_NE(error_message([&] { stt::soft_topk_mask(x, 6); }).find(
                "sparsetopk.soft_topk_mask: k = 6 is out of range [0, n = 5] (n = x.size(1))"),
            std::string::npos);
  EXPECT_NE(error_message([&] { stt::soft_topk_mag(x, 1, 0.0); }).find("l must be finite and > 0, got l = 0"),
            std::string::npos);
  EXPECT_NE(error_message([&] { stt::soft_topk_mag(x, 1, 0.1, 1.0); }).find("p must be finite and > 1, got p = 1"),
            std::string::npos);
  EXPECT_NE(error_message([&] { stt::hard_topk_mask(torch::arange(4), 1); }).find(
                "x must be float32, float64, float16 or bfloat16, got int64"),
            std::string::npos);
  // Off the CPU (here: meta tensors) the device-generic kernels run; the core's solvers are CPU-only.
  const at::Tensor meta = torch::zeros({2, 3}, torch::Device("meta"));
  EXPECT_EQ(stt::soft_topk_mag(meta, 1).sizes(), meta.sizes());
  EXPECT_EQ(stt::hard_topk_mag(meta, 1).device(), meta.device());
  EXPECT_NE(error_message([&] { stt::soft_topk_mask(meta, 1, 0.1, 2.0, -1, stt::Solver::pav); }).find(
                "solver = \"pav\" runs on CPU tensors only; x is on meta"),
            std::string::npos);
  EXPECT_NE(error_message([&] { stt::soft_topk_mask(meta, 4); }).find("k = 4 is out of range [0, n = 3]"),
            std::string::npos);
  EXPECT_THROW(stt::soft_topk_mask(x, 1, 0.1, 4.0 / 3.0, 2), c10::IndexError);
  EXPECT_THROW(stt::soft_topk_mask(x, 1, 0.1, 4.0 / 3.0, -1, static_cast<stt::Solver>(9)), c10::Error);
}

TEST(TorchOps, TopkSumAndLossFromCpp) {
  const auto x = torch::tensor({{2.0, 1.5, 0.2, -1.0}, {0.1, 0.3, 2.5, 1.0}}, torch::kFloat64).requires_grad_();
  const auto target = torch::tensor({1, 0}, torch::kInt64);
  // topk_sum = <m, x> - (l/p) sum m^p; here both rows have m = two ones (gaps > l).
  const auto value = stt::topk_sum(x, 2, 0.5);
  EXPECT_NEAR(value[0].item<double>(), 3.5 - 0.5 / (4.0 / 3.0) * 2, 1e-12);
  auto grad = torch::autograd::grad({value.sum()}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  EXPECT_TRUE(torch::equal(grad, stt::soft_topk_mask(x.detach(), 2, 0.5)));
  // The second derivative is the mask's Jacobian: with l = 5 every entry is in the band.
  const auto v = torch::tensor({{0.3, -1.0, 2.0, 0.5}, {1.0, 0.0, -0.5, 0.25}}, torch::kFloat64);
  const auto soft_grad = torch::autograd::grad({stt::topk_sum(x, 2, 5.0).sum()}, {x}, {}, true, true)[0];
  const auto hessian_v = torch::autograd::grad({(soft_grad * v).sum()}, {x})[0];
  const auto jacobian_v = torch::autograd::grad({(stt::soft_topk_mask(x, 2, 5.0) * v).sum()}, {x})[0];
  EXPECT_TRUE(torch::allclose(hessian_v, jacobian_v, 0.0, 1e-14));
  EXPECT_GT(hessian_v.abs().sum().item<double>(), 0.1);
  const auto losses = stt::topk_loss(x, target, 2, 0.5, 4.0 / 3.0, -1, stt::Reduction::none);
  EXPECT_EQ(losses[0].item<double>(), 0.0);       // label 1 is selected fully
  EXPECT_NEAR(losses[1].item<double>(), 0.9, 1e-12);  // f(m) - f(m''): x_3 - x_0
  EXPECT_NEAR(stt::topk_loss(x, target, 2, 0.5).item<double>(), 0.45, 1e-12);
  EXPECT_NE(error_message([&] { stt::topk_loss(x, torch::tensor({0, 4}, torch::kInt64), 2); })
                .find("sparsetopk.topk_loss: target = 4 is out of range [0, n = 4) (at target[1])"),
            std::string::npos);
}

TEST(TorchModules, SoftTopKMaskAndMagnitude) {
  stt::SoftTopKMask mask(stt::SoftTopKMaskOptions(2).l(0.01));
  stt::SoftTopKMagnitude magnitude(2);
  EXPECT_EQ(values(mask(spec_x())), (std::vector<double>{0, 0, 1, 1}));
  EXPECT_TRUE(torch::equal(magnitude(spec_x()), stt::soft_topk_mag(spec_x(), 2)));
  std::ostringstream text;
  text << *mask;
  EXPECT_EQ(text.str(), "sparsetopk::torch::SoftTopKMask(k=2, l=0.01, p=1.33333, dim=-1, solver=auto)");
}

TEST(TorchModules, SparseLinearTrainsAndExportsAHardSparseWeight) {
  torch::manual_seed(0);
  stt::SparseLinear layer(stt::SparseLinearOptions(12, 3).density(0.25).per(stt::SparsityScope::row));
  EXPECT_EQ(layer->kept(), 3);
  const at::Tensor x = torch::randn({128, 12});
  const at::Tensor y = x.narrow(1, 0, 3) * 0.5 - 0.2;
  torch::optim::Adam optimizer(layer->parameters(), torch::optim::AdamOptions(0.02));
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 150; ++step) {
    optimizer.zero_grad();
    const at::Tensor loss = (layer(x) - y).pow(2).mean();
    loss.backward();
    optimizer.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.6 * first);
  EXPECT_GT(layer->sparsity(), 0.5);
  const at::Tensor hard = layer->hard_pruned_weight();
  EXPECT_TRUE(torch::equal(hard.ne(0).sum(1), torch::full({3}, 3, torch::kLong)));
  const at::Tensor sparse = layer->to_sparse();
  EXPECT_TRUE(sparse.is_sparse());
  EXPECT_TRUE(torch::equal(sparse.to_dense(), hard));
}

TEST(TorchModules, SoftTopKRouterGivesSparseGates) {
  torch::manual_seed(0);
  stt::SoftTopKRouter router(8, 6, 2);
  const stt::RouterOutput out = router(torch::randn({16, 8}));
  EXPECT_EQ(out.gates.sizes(), (std::vector<int64_t>{16, 6}));
  EXPECT_TRUE(torch::allclose(out.gates.sum(-1), torch::ones({16})));
  EXPECT_TRUE(torch::equal(out.expert_mask, out.gates.ne(0)));
  EXPECT_EQ(out.expert_indices.size(1), out.expert_mask.sum(-1).max().item<int64_t>());
  EXPECT_TRUE(torch::equal(out.expert_indices.ge(0).sum(-1), out.expert_mask.sum(-1)));
  EXPECT_GT(out.gates.eq(0).sum().item<int64_t>(), 0);
  out.gates.pow(2).sum().backward();
  EXPECT_TRUE(router->gate->weight.grad().defined());
}

TEST(TorchModules, SoftTopKRouterExpertChoiceTakesTokensPerExpert) {
  torch::manual_seed(0);
  stt::SoftTopKRouter router(stt::SoftTopKRouterOptions(8, 4, 2).l(0.3).normalize(false).choice(
      stt::RoutingChoice::expert));
  const auto x = torch::randn({3, 10, 8});  // 30 tokens: capacity round(2 * 30 / 4) = 15
  EXPECT_EQ(stt::expert_capacity(2, 4, 30), 15);
  EXPECT_EQ(stt::expert_capacity(2, 8, 3), 1);
  EXPECT_EQ(stt::expert_capacity(8, 8, 5), 5);
  const stt::RouterOutput out = router(x);
  EXPECT_EQ(out.gates.sizes(), (std::vector<int64_t>{3, 10, 4}));
  EXPECT_TRUE(torch::allclose(out.gates.reshape({-1, 4}).sum(0), torch::full({4}, 15.0)));
  const auto logits = router->gate->forward(x).reshape({-1, 4});
  EXPECT_TRUE(torch::allclose(out.gates.reshape({-1, 4}), stt::soft_topk_mask(logits, 15, 0.3, 4.0 / 3.0, 0)));
  EXPECT_TRUE(torch::equal(out.expert_mask, out.gates.ne(0)));
  out.gates.pow(2).sum().backward();
  EXPECT_TRUE(router->gate->weight.grad().defined());
}

// The LibTorch global operators equal the row operators on the concatenation,
// forward and backward.
TEST(TorchGlobal, SoftMagnitudeEqualsTheRowOperatorOnTheConcatenation) {
  torch::manual_seed(1);
  std::vector<torch::Tensor> x{torch::randn({5, 7}, torch::kFloat64).requires_grad_(),
                               torch::randn({0}, torch::kFloat64).requires_grad_(),
                               torch::randn({13}, torch::kFloat64).requires_grad_()};
  const auto out = stt::soft_topk_mag_global(x, 11, 0.2, 4.0 / 3.0);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].sizes(), x[0].sizes());
  const auto cat = torch::cat({x[0].detach().flatten(), x[1].detach(), x[2].detach()}).requires_grad_();
  const auto expected = stt::soft_topk_mag(cat, 11, 0.2, 4.0 / 3.0);
  EXPECT_TRUE(torch::equal(torch::cat({out[0].flatten(), out[1], out[2]}).detach(), expected.detach()));
  const auto v = torch::linspace(-1, 1, cat.numel(), torch::kFloat64);
  (torch::cat({out[0].flatten(), out[1], out[2]}) * v).sum().backward();
  (expected * v).sum().backward();
  const auto grad = torch::cat({x[0].grad().flatten(), x[1].grad(), x[2].grad()});
  EXPECT_TRUE(torch::allclose(grad, cat.grad(), 1e-12, 1e-12));
}

TEST(TorchGlobal, HardMagnitudeKeepsOneBudgetAndPassesTheMaskAsGradient) {
  torch::manual_seed(2);
  std::vector<torch::Tensor> x{torch::randn({4, 6}).requires_grad_(), torch::randn({9}).requires_grad_()};
  const auto out = stt::hard_topk_mag_global(x, 10);
  const auto cat = torch::cat({x[0].detach().flatten(), x[1].detach()});
  EXPECT_TRUE(torch::equal(torch::cat({out[0].flatten(), out[1]}).detach(), stt::hard_topk_mag(cat, 10)));
  const auto mask = stt::hard_topk_mask_global({x[0], x[1]}, 33);  // every entry
  EXPECT_FALSE(mask[0].requires_grad());
  EXPECT_EQ(mask[0].sum().item<double>() + mask[1].sum().item<double>(), 33);
  (out[0].sum() + out[1].sum()).backward();
  EXPECT_EQ(x[0].grad().sum().item<double>() + x[1].grad().sum().item<double>(), 10);
}
