// The README's C++ example: soft top-k of one row, and a batch with its VJP.
#include <sparsetopk/sparsetopk.hpp>

#include <cstdio>
#include <vector>

int main() {
  const std::vector<double> x{0.5, -2.0, 1.2, 0.45, 1.0};
  const auto mask = sparsetopk::soft_topk_mask(x, 2, {.l = 1.0, .p = 4.0 / 3.0});
  const auto mag = sparsetopk::soft_topk_mag(x, 2, {.l = 1.0, .p = 2.0});
  for (double v : mask) std::printf("%.4f ", v);
  std::printf("  <- soft mask, sums to k = 2\n");
  for (double v : mag) std::printf("%.4f ", v);
  std::printf("  <- soft magnitude\n");

  // Batches: rows of n = 5 in one buffer; the forward saves one RowState per
  // row, from which the VJP (given x and the same l, p) recomputes what it needs.
  std::vector<float> batch{0.5f, -2.0f, 1.2f, 0.45f, 1.0f, 3, 2, 1.5f, 0, -1}, out(10), grad(10);
  const std::vector<float> g{1, 0, 0, 0, 0, 0, 1, 0, 0, 0};
  const sparsetopk::SoftTopkOptions options{.l = 1.0};
  std::vector<sparsetopk::RowState> state(2);
  sparsetopk::soft_topk_mask<float>(batch, 5, 2, out, options, state);
  sparsetopk::soft_topk_mask_vjp<float>(batch, 5, state, options, g, grad);
  for (float v : grad) std::printf("%.4f ", v);
  std::printf("  <- J^T g per row\n");
}
