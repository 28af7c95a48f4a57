// The one header kernel sources include for the CUDA dialect: under nvcc the
// CUDA runtime; otherwise the CPU harness (harness/cuda_on_cpu.hpp), which runs
// the same device code on the host for the tests. Both sides give, in
// sparsetopk::cuda:
//   check(status)                     throws std::runtime_error for a CUDA error
//   launch(kernel, grid, block, shared_bytes, stream, args...)
//                                     kernel<<<grid, block, shared_bytes, stream>>>(args...), checked
//                                     (host: runs the launch on the harness, synchronously; the stream is ignored);
//                                     above 48 KiB of dynamic shared memory it opts the kernel in first
//   SPARSETOPK_DYNAMIC_SHARED(T, name)  T* name: the block's dynamic shared memory (16-byte aligned)
//   SPARSETOPK_UNROLL                 unroll the next loop (nvcc: registers indexed by constants); host: nothing

#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#else
#include "harness/cuda_on_cpu.hpp"
#endif

namespace sparsetopk::cuda {

inline void check(cudaError_t status) {
  if (status != cudaSuccess) throw std::runtime_error(std::string("sparsetopk CUDA: ") + cudaGetErrorString(status));
}

// The dynamic shared memory a launch gets without opting in (cudaFuncSetAttribute).
constexpr std::size_t kDefaultDynamicShared = 48 * 1024;

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: the kernel takes another number of arguments");
#if defined(__CUDACC__)
  if (shared_bytes > kDefaultDynamicShared)  // above 48 KiB a kernel must opt in (up to 227 KiB on sm_90)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
  kernel<<<grid, block, shared_bytes, stream>>>(static_cast<Params>(args)...);
  check(cudaGetLastError());
#else
  (void)stream;
  harness::run([&] { kernel(static_cast<Params>(args)...); }, grid, block, shared_bytes);
#endif
}

}  // namespace sparsetopk::cuda

#if defined(__CUDACC__)
#define SPARSETOPK_UNROLL _Pragma("unroll")
#else
#define SPARSETOPK_UNROLL
#endif

#if defined(__CUDACC__)
#define SPARSETOPK_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char sparsetopk_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(sparsetopk_dynamic_shared_)
#else
#define SPARSETOPK_DYNAMIC_SHARED(T, name) \
  T* name = reinterpret_cast<T*>(::sparsetopk::cuda::harness::dynamic_shared())
#endif
