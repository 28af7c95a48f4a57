// Prints the soft top-k mask of SPEC.md's example; exits 1 if it is wrong.
#include <sparsetopk/sparsetopk.hpp>

#include <cmath>
#include <cstdio>

int main() {
  const std::vector<double> x{-5, -2, 3, 1};
  const std::vector<double> mask = sparsetopk::soft_topk_mask(x, 2, {.l = 0.01});
  const double expected[] = {0, 0, 1, 1};
  for (std::size_t i = 0; i < x.size(); ++i) {
    std::printf("%g ", mask[i]);
    if (std::abs(mask[i] - expected[i]) > 1e-9) return 1;
  }
  std::printf("\n");
  return 0;
}
