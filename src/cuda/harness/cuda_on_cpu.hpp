// The CUDA dialect on the host: enough of the CUDA execution model for the
// kernels of src/cuda to compile as plain C++ (g++, clang) and run on the CPU,
// so that tests (and ASan, UBSan, TSan) exercise their device code without a
// GPU. Kernel sources do not include this header directly: they include
// "dialect.hpp", which picks this header or <cuda_runtime.h>.
//
// Execution model (sparsetopk::cuda::harness::run):
//  - one launch at a time process-wide (a global mutex); the grid's blocks run
//    one after another, in order of linear block id;
//  - within a block every CUDA thread is a lane of its own: a cooperative fiber
//    on the launching thread (Mode::fibers, the default) or a std::thread
//    (Mode::threads, the default under ThreadSanitizer, so that TSan sees the
//    kernels' real data races); SPARSETOPK_HARNESS=threads|fibers overrides;
//  - __shared__ is `static`: as blocks never overlap, a function-local static
//    is exactly the block's shared variable;
//  - warps are 32 consecutive linear thread ids (x fastest); a warp operation
//    with `mask` waits for every lane named in mask to reach a warp operation
//    of the same kind with the same mask (lanes past the end of the block are
//    ignored; a lane in mask that exited, or one waiting with another mask or
//    kind, is an error: a message naming the launch, block, warp and lane on
//    stderr, then abort);
//  - __syncthreads waits for the block's live threads; exited threads count as
//    arrived (Volta+ semantics);
//  - all live lanes blocked with none able to proceed is a deadlock: reported
//    like a warp error (stderr, abort);
//  - a block's dynamic shared memory (16-byte aligned) is filled with 0xFF
//    bytes before the block starts (NaN as doubles), so that reads of never
//    written shared memory show;
//  - launch shapes are checked as the device does (block of 1..1024 threads,
//    block.z <= 64, grid.x <= 2^31-1, grid.y and grid.z <= 65535, dynamic
//    shared memory <= 232448 bytes): std::runtime_error from run.
// A kernel that throws terminates the process (the message on stderr).

#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>  // (before __noinline__ is defined: libstdc++ spells __attribute__((__noinline__)))
#include <type_traits>
#include <utility>

// ---- the qualifiers ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static
// __restrict__: g++'s and clang's own.

inline constexpr int warpSize = 32;

// ---- vector types ----
struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

// ---- the runtime API, as far as the host side of the kernels needs it ----
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

const char* cudaGetErrorString(cudaError_t error);
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
// Host memory stands for device memory: the asynchronous copies are synchronous.
inline cudaError_t cudaMemsetAsync(void* p, int value, std::size_t count, cudaStream_t = nullptr) {
  if (count) std::memset(p, value, count);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int value, std::size_t count) { return cudaMemsetAsync(p, value, count); }
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t count, cudaMemcpyKind,
                                   cudaStream_t = nullptr) {
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t count, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, count, kind);
}

namespace sparsetopk::cuda::harness {

enum class Mode { fibers, threads };
void set_mode(Mode mode);  // for the launches that follow
Mode mode();               // the current mode (first call: SPARSETOPK_HARNESS, else the build's default)
Mode default_mode();       // the build's default (threads under ThreadSanitizer, else fibers)

// The running lane's view of the launch.
struct LaneContext {
  uint3 thread;
  uint3 block;
  dim3 block_dim;
  dim3 grid_dim;
};

namespace detail {
// The lane running on this OS thread (set by the harness at every switch).
extern thread_local constinit const LaneContext* current_lane;
void run_erased(void (*body)(void*), void* data, dim3 grid, dim3 block, std::size_t shared_bytes);
[[noreturn]] void no_lane(const char* what);

enum class WarpOp : unsigned char { sync, shfl_idx, shfl_up, shfl_down, shfl_xor, vote };
// The warp operation `op` of the calling lane over `mask`; value: the lane's
// operand (its bits; a predicate for vote), arg: srcLane, delta or laneMask,
// width: the shuffle's segment, size: the operand's bytes. Returns the
// shuffled value's bits or the ballot.
std::uint64_t warp_op(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width, int size);
// __syncthreads: the count of live threads whose predicate was non-zero (or:
// count > 0, and: count == threads that arrived).
struct BarrierResult {
  int count;
  int arrived;
};
BarrierResult block_barrier(int predicate);
unsigned active_mask();
}  // namespace detail

inline const LaneContext& lane() {
  const LaneContext* context = detail::current_lane;
  if (!context) [[unlikely]]
    detail::no_lane("threadIdx/blockIdx/blockDim/gridDim");
  return *context;
}

// The running block's dynamic shared memory (16-byte aligned; nullptr where the launch asked for none).
unsigned char* dynamic_shared();

// Runs `kernel` (a callable taking no arguments) as a launch of grid x block
// with shared_bytes of dynamic shared memory, synchronously. Throws
// std::runtime_error for a launch shape the device would reject.
template <class Kernel>
void run(Kernel&& kernel, dim3 grid, dim3 block, std::size_t shared_bytes) {
  using K = std::remove_reference_t<Kernel>;
  detail::run_erased([](void* data) { (*static_cast<K*>(data))(); },
                     const_cast<void*>(static_cast<const void*>(std::addressof(kernel))), grid, block, shared_bytes);
}

// Fiber switches since the process started (for measurements).
std::uint64_t fiber_switches();

}  // namespace sparsetopk::cuda::harness

#define threadIdx (::sparsetopk::cuda::harness::lane().thread)
#define blockIdx (::sparsetopk::cuda::harness::lane().block)
#define blockDim (::sparsetopk::cuda::harness::lane().block_dim)
#define gridDim (::sparsetopk::cuda::harness::lane().grid_dim)

// ---- block barriers ----
inline void __syncthreads() { ::sparsetopk::cuda::harness::detail::block_barrier(1); }
inline int __syncthreads_count(int predicate) {
  return ::sparsetopk::cuda::harness::detail::block_barrier(predicate).count;
}
inline int __syncthreads_or(int predicate) {
  return ::sparsetopk::cuda::harness::detail::block_barrier(predicate).count > 0 ? 1 : 0;
}
inline int __syncthreads_and(int predicate) {
  auto result = ::sparsetopk::cuda::harness::detail::block_barrier(predicate);
  return result.count == result.arrived ? 1 : 0;
}

// ---- warp operations ----
namespace sparsetopk::cuda::harness::detail {
template <class T>
std::uint64_t bits_of(T value) {
  static_assert(std::is_trivially_copyable_v<T> && (sizeof(T) == 4 || sizeof(T) == 8),
                "warp shuffles take trivially copyable types of 4 or 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}
template <class T>
T from_bits(std::uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}
template <class T>
T shuffle(WarpOp op, unsigned mask, T value, int arg, int width) {
  return from_bits<T>(warp_op(op, mask, bits_of(value), arg, width, static_cast<int>(sizeof(T))));
}
}  // namespace sparsetopk::cuda::harness::detail

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  using namespace ::sparsetopk::cuda::harness::detail;
  warp_op(WarpOp::sync, mask, 0, 0, warpSize, 0);
}
template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  using namespace ::sparsetopk::cuda::harness::detail;
  return shuffle(WarpOp::shfl_idx, mask, var, src_lane, width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {
  using namespace ::sparsetopk::cuda::harness::detail;
  return shuffle(WarpOp::shfl_up, mask, var, static_cast<int>(delta), width);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {
  using namespace ::sparsetopk::cuda::harness::detail;
  return shuffle(WarpOp::shfl_down, mask, var, static_cast<int>(delta), width);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  using namespace ::sparsetopk::cuda::harness::detail;
  return shuffle(WarpOp::shfl_xor, mask, var, lane_mask, width);
}
// (vote: the ballot in the low 32 bits, the lanes that took part in the high 32)
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  using namespace ::sparsetopk::cuda::harness::detail;
  return static_cast<unsigned>(warp_op(WarpOp::vote, mask, predicate != 0, 0, warpSize, 0));
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0 ? 1 : 0; }
inline int __all_sync(unsigned mask, int predicate) {
  using namespace ::sparsetopk::cuda::harness::detail;
  std::uint64_t vote = warp_op(WarpOp::vote, mask, predicate != 0, 0, warpSize, 0);
  return static_cast<unsigned>(vote) == static_cast<unsigned>(vote >> 32) ? 1 : 0;
}
inline unsigned __activemask() { return ::sparsetopk::cuda::harness::detail::active_mask(); }

// ---- bit intrinsics ----
inline int __popc(unsigned int x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline unsigned int __brev(unsigned int x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(static_cast<unsigned int>(x))) << 32) |
         __brev(static_cast<unsigned int>(x >> 32));
}

// ---- reinterpretation and loads ----
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
inline float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
template <class T>
T __ldg(const T* p) {
  return *p;
}

// ---- atomics (std::atomic_ref: real atomics in threads mode, seen by TSan) ----
namespace sparsetopk::cuda::harness::detail {
template <class T>
std::atomic_ref<T> atomic(T* address) {
  return std::atomic_ref<T>(*address);
}
template <class T>
T atomic_max(T* address, T value) {
  auto ref = atomic(address);
  T old = ref.load();
  while (old < value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <class T>
T atomic_min(T* address, T value) {
  auto ref = atomic(address);
  T old = ref.load();
  while (value < old && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <class T>
T atomic_cas(T* address, T compare, T value) {
  atomic(address).compare_exchange_strong(compare, value);
  return compare;  // the old value either way
}
}  // namespace sparsetopk::cuda::harness::detail

#define SPARSETOPK_HARNESS_ATOMIC_(name, op, type)                           \
  inline type name(type* address, type value) {                            \
    return ::sparsetopk::cuda::harness::detail::atomic(address).op(value); \
  }
SPARSETOPK_HARNESS_ATOMIC_(atomicAdd, fetch_add, int)
SPARSETOPK_HARNESS_ATOMIC_(atomicAdd, fetch_add, unsigned int)
SPARSETOPK_HARNESS_ATOMIC_(atomicAdd, fetch_add, unsigned long long)
SPARSETOPK_HARNESS_ATOMIC_(atomicAdd, fetch_add, float)
SPARSETOPK_HARNESS_ATOMIC_(atomicAdd, fetch_add, double)
SPARSETOPK_HARNESS_ATOMIC_(atomicSub, fetch_sub, int)
SPARSETOPK_HARNESS_ATOMIC_(atomicSub, fetch_sub, unsigned int)
SPARSETOPK_HARNESS_ATOMIC_(atomicOr, fetch_or, int)
SPARSETOPK_HARNESS_ATOMIC_(atomicOr, fetch_or, unsigned int)
SPARSETOPK_HARNESS_ATOMIC_(atomicOr, fetch_or, unsigned long long)
SPARSETOPK_HARNESS_ATOMIC_(atomicAnd, fetch_and, int)
SPARSETOPK_HARNESS_ATOMIC_(atomicAnd, fetch_and, unsigned int)
SPARSETOPK_HARNESS_ATOMIC_(atomicAnd, fetch_and, unsigned long long)
SPARSETOPK_HARNESS_ATOMIC_(atomicXor, fetch_xor, int)
SPARSETOPK_HARNESS_ATOMIC_(atomicXor, fetch_xor, unsigned int)
SPARSETOPK_HARNESS_ATOMIC_(atomicXor, fetch_xor, unsigned long long)
SPARSETOPK_HARNESS_ATOMIC_(atomicExch, exchange, int)
SPARSETOPK_HARNESS_ATOMIC_(atomicExch, exchange, unsigned int)
SPARSETOPK_HARNESS_ATOMIC_(atomicExch, exchange, unsigned long long)
SPARSETOPK_HARNESS_ATOMIC_(atomicExch, exchange, float)
#undef SPARSETOPK_HARNESS_ATOMIC_

#define SPARSETOPK_HARNESS_ATOMIC_(name, impl, type) \
  inline type name(type* address, type value) { return ::sparsetopk::cuda::harness::detail::impl(address, value); }
SPARSETOPK_HARNESS_ATOMIC_(atomicMax, atomic_max, int)
SPARSETOPK_HARNESS_ATOMIC_(atomicMax, atomic_max, unsigned int)
SPARSETOPK_HARNESS_ATOMIC_(atomicMax, atomic_max, long long)
SPARSETOPK_HARNESS_ATOMIC_(atomicMax, atomic_max, unsigned long long)
SPARSETOPK_HARNESS_ATOMIC_(atomicMin, atomic_min, int)
SPARSETOPK_HARNESS_ATOMIC_(atomicMin, atomic_min, unsigned int)
SPARSETOPK_HARNESS_ATOMIC_(atomicMin, atomic_min, long long)
SPARSETOPK_HARNESS_ATOMIC_(atomicMin, atomic_min, unsigned long long)
#undef SPARSETOPK_HARNESS_ATOMIC_

inline int atomicCAS(int* address, int compare, int value) {
  return ::sparsetopk::cuda::harness::detail::atomic_cas(address, compare, value);
}
inline unsigned int atomicCAS(unsigned int* address, unsigned int compare, unsigned int value) {
  return ::sparsetopk::cuda::harness::detail::atomic_cas(address, compare, value);
}
inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare,
                                    unsigned long long value) {
  return ::sparsetopk::cuda::harness::detail::atomic_cas(address, compare, value);
}
// atomicInc/atomicDec: ((old >= limit) ? 0 : old + 1), ((old == 0 || old > limit) ? limit : old - 1)
inline unsigned int atomicInc(unsigned int* address, unsigned int limit) {
  auto ref = ::sparsetopk::cuda::harness::detail::atomic(address);
  unsigned int old = ref.load();
  while (!ref.compare_exchange_weak(old, old >= limit ? 0u : old + 1u)) {
  }
  return old;
}
inline unsigned int atomicDec(unsigned int* address, unsigned int limit) {
  auto ref = ::sparsetopk::cuda::harness::detail::atomic(address);
  unsigned int old = ref.load();
  while (!ref.compare_exchange_weak(old, (old == 0u || old > limit) ? limit : old - 1u)) {
  }
  return old;
}

namespace sparsetopk::cuda::harness::detail {
inline void fence() {
#if defined(__SANITIZE_THREAD__)
#define SPARSETOPK_HARNESS_TSAN_FENCE_ 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SPARSETOPK_HARNESS_TSAN_FENCE_ 1
#endif
#endif
#if defined(SPARSETOPK_HARNESS_TSAN_FENCE_)
  // (ThreadSanitizer does not model fences: a sequentially consistent read-modify-write instead)
  static std::atomic<int> fence_word{0};
  fence_word.fetch_add(0, std::memory_order_seq_cst);
#undef SPARSETOPK_HARNESS_TSAN_FENCE_
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}
}  // namespace sparsetopk::cuda::harness::detail

inline void __threadfence() { ::sparsetopk::cuda::harness::detail::fence(); }
inline void __threadfence_block() { ::sparsetopk::cuda::harness::detail::fence(); }
inline void __threadfence_system() { ::sparsetopk::cuda::harness::detail::fence(); }
