// The CUDA kernels of topk_kernels_impl.hpp compiled as host C++ on the CPU
// harness (harness/cuda_on_cpu.hpp, through dialect.hpp): what CI runs of
// them (src/cuda/kernel_selftest.cpp, build/bin/kernel_selftest_cpu).
#include "topk_kernels_impl.hpp"

namespace sparsetopk::cuda {
SPARSETOPK_INSTANTIATE_KERNELS(float)
SPARSETOPK_INSTANTIATE_KERNELS(double)
}  // namespace sparsetopk::cuda
