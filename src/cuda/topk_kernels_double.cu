// The CUDA kernels for double (see topk_kernels.cu), compiled by nvcc.
#define SPARSETOPK_KERNELS_SECOND_FILE
#include "topk_kernels_impl.hpp"

namespace sparsetopk::cuda {
SPARSETOPK_INSTANTIATE_KERNELS(double)
}  // namespace sparsetopk::cuda
