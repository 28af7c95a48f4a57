// The CUDA kernels (UNVERIFIED on a GPU: docs/gpu.md) for float, compiled by
// nvcc; topk_kernels_double.cu builds double, in parallel. Their code is
// topk_kernels_impl.hpp, which the CPU harness also runs (topk_kernels_cpu.cpp).
#include "topk_kernels_impl.hpp"

namespace sparsetopk::cuda {
SPARSETOPK_INSTANTIATE_KERNELS(float)
}  // namespace sparsetopk::cuda
