#pragma once
// SPARSETOPK_HOST_DEVICE marks the per-row math that the CUDA kernels
// (src/cuda) run too: __host__ __device__ under nvcc, nothing in the
// plain C++ build of the core, whose code and results it leaves unchanged.
// Such functions use only std:: math, std::min/max/clamp (constexpr: nvcc's
// --expt-relaxed-constexpr) and std::span over memory the caller owns.

#if defined(__CUDACC__)
#define SPARSETOPK_HOST_DEVICE __host__ __device__
#else
#define SPARSETOPK_HOST_DEVICE
#endif
