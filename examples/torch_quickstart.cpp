// The README's LibTorch example: differentiable soft top-k and a SparseLinear
// layer trained in a C++ loop.
#include <sparsetopk/torch.hpp>
#include <torch/torch.h>

#include <iostream>

namespace stt = sparsetopk::torch;

int main() {
  auto x = torch::tensor({-1.0, 0.5, 3.0, 1.0}).requires_grad_();
  auto mask = stt::soft_topk_mask(x, /*k=*/2, /*l=*/2.0);  // also soft_topk_mag, hard_topk_*
  mask[3].backward();
  std::cout << "mask " << mask << "grad " << x.grad() << '\n';

  torch::manual_seed(0);
  stt::SparseLinear layer(stt::SparseLinearOptions(32, 4).density(0.25).per(stt::SparsityScope::row));
  auto input = torch::randn({256, 32}), target = torch::mm(input, torch::randn({32, 4}));
  torch::optim::Adam optimizer(layer->parameters(), 0.02);
  for (int step = 0; step < 200; ++step) {
    optimizer.zero_grad();
    auto loss = torch::mse_loss(layer(input), target);
    loss.backward();
    optimizer.step();
    if (step % 50 == 0 || step == 199) std::cout << "step " << step << " loss " << loss.item<float>() << '\n';
  }
  std::cout << "kept per row " << layer->kept() << ", sparsity " << layer->sparsity()
            << ", nnz of to_sparse() " << layer->to_sparse()._nnz() << '\n';
}
