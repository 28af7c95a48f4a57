// The CPU harness of the CUDA dialect (src/cuda/dialect.hpp,
// src/cuda/harness/cuda_on_cpu.hpp): every primitive in both modes (fibers,
// threads) against hand-computed expectations, the launch checks, and the
// errors that abort (death tests, fibers mode).

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "dialect.hpp"  // src/cuda, through the sparsetopk_cuda_harness target

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#endif
#if defined(ASAN) || defined(TSAN)
#define SANITIZED 1
#endif

namespace sparsetopk::cuda {
namespace {

namespace harness = sparsetopk::cuda::harness;
using harness::Mode;

constexpr unsigned kFull = 0xffffffffu;

class Harness : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    saved_ = harness::mode();
    harness::set_mode(GetParam());
  }
  void TearDown() override { harness::set_mode(saved_); }
  bool fast() const {  // (big cases only where lanes are cheap)
#if defined(SANITIZED)
    return false;
#else
    return GetParam() == Mode::fibers;
#endif
  }

 private:
  Mode saved_ = Mode::fibers;
};

INSTANTIATE_TEST_SUITE_P(Modes, Harness, ::testing::Values(Mode::fibers, Mode::threads),
                         [](const ::testing::TestParamInfo<Mode>& info) {
                           return info.param == Mode::fibers ? std::string("fibers") : std::string("threads");
                         });

unsigned linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
unsigned linear_block() { return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z); }
unsigned block_threads() { return blockDim.x * blockDim.y * blockDim.z; }

// ---- indices ----

struct Seen {
  unsigned thread[3], block[3], block_dim[3], grid_dim[3];
};

__global__ void indices_kernel(Seen* out) {
  Seen& seen = out[linear_block() * block_threads() + linear_thread()];
  seen = {{threadIdx.x, threadIdx.y, threadIdx.z},
          {blockIdx.x, blockIdx.y, blockIdx.z},
          {blockDim.x, blockDim.y, blockDim.z},
          {gridDim.x, gridDim.y, gridDim.z}};
}

TEST_P(Harness, IndicesOver3DGridsAndBlocks) {
  const dim3 grid(3, 2, 2), block(4, 3, 5);
  std::vector<Seen> out(3 * 2 * 2 * 4 * 3 * 5);
  launch(indices_kernel, grid, block, 0, nullptr, out.data());
  std::size_t i = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 5; ++tz)
          for (unsigned ty = 0; ty < 3; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx, ++i) {
              const Seen& seen = out[i];
              EXPECT_EQ(seen.thread[0], tx);
              EXPECT_EQ(seen.thread[1], ty);
              EXPECT_EQ(seen.thread[2], tz);
              EXPECT_EQ(seen.block[0], bx);
              EXPECT_EQ(seen.block[1], by);
              EXPECT_EQ(seen.block[2], bz);
              EXPECT_EQ(seen.block_dim[0], 4u);
              EXPECT_EQ(seen.block_dim[1], 3u);
              EXPECT_EQ(seen.block_dim[2], 5u);
              EXPECT_EQ(seen.grid_dim[0], 3u);
              EXPECT_EQ(seen.grid_dim[1], 2u);
              EXPECT_EQ(seen.grid_dim[2], 2u);
            }
}

// ---- block barriers ----

__global__ void barrier_kernel(int* out, int rounds) {
  __shared__ int values[256];
  const unsigned t = threadIdx.x;
  values[t] = static_cast<int>(t) * 3;
  for (int round = 0; round < rounds; ++round) {
    __syncthreads();
    const int next = values[(t + 1) % blockDim.x] + 1;  // written by another thread before the barrier
    __syncthreads();
    values[t] = next;
  }
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = values[t];
}

TEST_P(Harness, BarrierOrdersWritesBeforeReads) {
  const unsigned threads = 256, blocks = 3;
  const int rounds = 5;
  std::vector<int> out(threads * blocks);
  launch(barrier_kernel, blocks, threads, 0, nullptr, out.data(), rounds);
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < threads; ++t)
      EXPECT_EQ(out[b * threads + t], static_cast<int>((t + rounds) % threads) * 3 + rounds) << b << " " << t;
}

__global__ void barrier_reductions_kernel(int* out) {
  const unsigned t = threadIdx.x;
  const int count = __syncthreads_count(t % 3 == 0);
  const int any = __syncthreads_or(t == 57);
  const int none = __syncthreads_or(0);
  const int all = __syncthreads_and(t < 100);
  const int not_all = __syncthreads_and(t != 5);
  if (t == 0) {
    out[0] = count;
    out[1] = any;
    out[2] = none;
    out[3] = all;
    out[4] = not_all;
  }
}

TEST_P(Harness, SyncthreadsCountOrAnd) {
  std::vector<int> out(5, -1);
  launch(barrier_reductions_kernel, 1, 100, 0, nullptr, out.data());
  EXPECT_EQ(out[0], 34);
  EXPECT_EQ(out[1], 1);
  EXPECT_EQ(out[2], 0);
  EXPECT_EQ(out[3], 1);
  EXPECT_EQ(out[4], 0);
}

__global__ void exited_threads_kernel(int* out) {
  const unsigned t = threadIdx.x;
  if (t % 2 == 1) return;  // exited threads count as arrived
  __shared__ int flags[64];
  flags[t / 2] = 1;
  __syncthreads();
  const int count = __syncthreads_count(1);
  int sum = 0;
  for (int i = 0; i < 32; ++i) sum += flags[i];
  out[t / 2] = sum * 100 + count;
}

TEST_P(Harness, ExitedThreadsCountAsArrived) {
  std::vector<int> out(32, -1);
  launch(exited_threads_kernel, 1, 64, 0, nullptr, out.data());
  for (int value : out) EXPECT_EQ(value, 32 * 100 + 32);
}

// ---- shared memory ----

__global__ void shared_per_block_kernel(unsigned* out, unsigned* poisoned, unsigned* aligned) {
  __shared__ unsigned block_value;
  SPARSETOPK_DYNAMIC_SHARED(double, scratch);
  const unsigned t = threadIdx.x;
  if (t == 0) block_value = blockIdx.x * 1000 + 7;
  // never written in this block: all bytes 0xFF
  unsigned char bytes[sizeof(double)];
  std::memcpy(bytes, &scratch[t], sizeof bytes);
  bool all_ff = std::isnan(scratch[t]);
  for (unsigned char byte : bytes) all_ff = all_ff && byte == 0xff;
  poisoned[blockIdx.x * blockDim.x + t] = all_ff ? 1 : 0;
  if (t == 0) aligned[blockIdx.x] = reinterpret_cast<std::uintptr_t>(scratch) % 16 == 0 ? 1 : 0;
  __syncthreads();
  scratch[t] = blockIdx.x + 0.5;
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] =
      block_value * 10 + (scratch[(t + 1) % blockDim.x] == blockIdx.x + 0.5 ? 1 : 0);
}

TEST_P(Harness, SharedMemoryPerBlockAndPoisoned) {
  const unsigned threads = 64, blocks = 4;
  std::vector<unsigned> out(threads * blocks), poisoned(threads * blocks), aligned(blocks);
  launch(shared_per_block_kernel, blocks, threads, threads * sizeof(double), nullptr, out.data(), poisoned.data(),
         aligned.data());
  for (unsigned b = 0; b < blocks; ++b) {
    EXPECT_EQ(aligned[b], 1u);
    for (unsigned t = 0; t < threads; ++t) {
      EXPECT_EQ(out[b * threads + t], (b * 1000 + 7) * 10 + 1) << b << " " << t;
      EXPECT_EQ(poisoned[b * threads + t], 1u) << b << " " << t;
    }
  }
}

__global__ void no_dynamic_shared_kernel(int* out) {
  SPARSETOPK_DYNAMIC_SHARED(int, none);
  if (threadIdx.x == 0) *out = none == nullptr ? 1 : 0;
}

TEST_P(Harness, NoDynamicSharedMemoryIsNull) {
  int out = -1;
  launch(no_dynamic_shared_kernel, 1, 32, 0, nullptr, &out);
  EXPECT_EQ(out, 1);
}

// ---- shuffles ----

enum class Kind { idx, up, down, bfly };

template <class T>
T value_of(unsigned lane) {
  if constexpr (std::is_same_v<T, unsigned long long>) {
    return (1ULL << 40) * (lane + 1) + lane;
  } else {
    return static_cast<T>(static_cast<int>(lane) * 10 - 7) + static_cast<T>(std::is_floating_point_v<T> ? 0.25 : 0);
  }
}

constexpr Kind kKinds[] = {Kind::idx, Kind::up, Kind::down, Kind::bfly};
constexpr int kWidths[] = {32, 16, 8, 4, 2, 1};
constexpr int kArgs[] = {0, 1, 3, 5, 16};
constexpr int kCases = 4 * 6 * 5;

// Every kind x width x argument, one after another: out[case * blockDim.x + thread]
template <class T>
__global__ void shuffle_kernel(T* out) {
  const unsigned lane = threadIdx.x % warpSize;
  const T mine = value_of<T>(lane);
  int c = 0;
  for (Kind kind : kKinds)
    for (int width : kWidths)
      for (int arg : kArgs) {
        T got{};
        switch (kind) {
          case Kind::idx: got = __shfl_sync(kFull, mine, static_cast<int>(lane) * 7 + arg, width); break;
          case Kind::up: got = __shfl_up_sync(kFull, mine, static_cast<unsigned>(arg), width); break;
          case Kind::down: got = __shfl_down_sync(kFull, mine, static_cast<unsigned>(arg), width); break;
          case Kind::bfly: got = __shfl_xor_sync(kFull, mine, arg, width); break;
        }
        out[c++ * blockDim.x + threadIdx.x] = got;
      }
}

// The lane whose value `lane` gets, by the CUDA programming guide's rules.
unsigned expected_source(Kind kind, unsigned lane, int arg, int width) {
  const unsigned w = static_cast<unsigned>(width), base = lane / w * w;
  switch (kind) {
    case Kind::idx: return base + (lane * 7 + static_cast<unsigned>(arg)) % w;
    case Kind::up: return lane - base >= static_cast<unsigned>(arg) ? lane - arg : lane;
    case Kind::down: return lane - base + arg < w ? lane + arg : lane;
    case Kind::bfly: {
      const unsigned partner = lane ^ static_cast<unsigned>(arg);
      return partner < base + w ? partner : lane;  // earlier groups yes, later groups no
    }
  }
  return lane;
}

template <class T>
void check_shuffles() {
  std::vector<T> out(kCases * 64);
  launch(shuffle_kernel<T>, 1, 64, 0, nullptr, out.data());
  int c = 0;
  for (Kind kind : kKinds)
    for (int width : kWidths)
      for (int arg : kArgs) {
        for (unsigned t = 0; t < 64; ++t) {
          const unsigned lane = t % 32;
          EXPECT_EQ(out[c * 64 + t], value_of<T>(expected_source(kind, lane, arg, width)))
              << "kind " << static_cast<int>(kind) << " width " << width << " arg " << arg << " lane " << lane;
        }
        ++c;
      }
}

TEST_P(Harness, ShufflesInt) { check_shuffles<int>(); }
TEST_P(Harness, ShufflesFloat) { check_shuffles<float>(); }
TEST_P(Harness, ShufflesDouble) { check_shuffles<double>(); }
TEST_P(Harness, ShufflesUnsignedLongLong) { check_shuffles<unsigned long long>(); }

__global__ void partial_shuffle_kernel(int* out) {
  const unsigned lane = threadIdx.x % warpSize;
  if (lane % 2 == 1) return;  // only the even lanes: mask 0x55555555
  out[lane] = __shfl_sync(0x55555555u, static_cast<int>(lane) * 2, static_cast<int>((lane + 2) % 32));
  __syncwarp(0x55555555u);
}

TEST_P(Harness, ShuffleWithAPartialMask) {
  std::vector<int> out(32, -1);
  launch(partial_shuffle_kernel, 1, 32, 0, nullptr, out.data());
  for (unsigned lane = 0; lane < 32; ++lane)
    EXPECT_EQ(out[lane], lane % 2 ? -1 : static_cast<int>((lane + 2) % 32) * 2) << lane;
}

// ---- votes ----

__global__ void vote_kernel(unsigned* out) {
  const unsigned lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
  unsigned* mine = out + (warp * 32 + lane) * 8;
  mine[0] = __ballot_sync(kFull, lane % 3 == 0);
  mine[1] = static_cast<unsigned>(__any_sync(kFull, lane == 31));
  mine[2] = static_cast<unsigned>(__any_sync(kFull, 0));
  mine[3] = static_cast<unsigned>(__all_sync(kFull, 1));
  mine[4] = static_cast<unsigned>(__all_sync(kFull, lane != 3));
  const unsigned active = __activemask();  // (before a sync: no lane of the warp has exited yet)
  __syncwarp();
  mine[5] = active;
  if (lane % 2 == 0) {  // the even lanes only
    mine[6] = __ballot_sync(0x55555555u, lane % 4 == 0);
    mine[7] = static_cast<unsigned>(__all_sync(0x55555555u, lane % 2 == 0)) * 10 +
              static_cast<unsigned>(__any_sync(0x55555555u, lane == 1));
  }
}

TEST_P(Harness, BallotAnyAllWithFullAndPartialMasks) {
  // 40 threads: warp 1 has 8 lanes; its full masks name lanes past the block's end, which take no part
  std::vector<unsigned> out(64 * 8, 12345);
  launch(vote_kernel, 1, 40, 0, nullptr, out.data());
  for (unsigned t = 0; t < 40; ++t) {
    const unsigned lane = t % 32;
    const bool partial = t >= 32;
    const unsigned* mine = out.data() + t * 8;
    EXPECT_EQ(mine[0], partial ? 0x49u : 0x49249249u) << t;
    EXPECT_EQ(mine[1], partial ? 0u : 1u) << t;
    EXPECT_EQ(mine[2], 0u) << t;
    EXPECT_EQ(mine[3], 1u) << t;
    EXPECT_EQ(mine[4], 0u) << t;
    EXPECT_EQ(mine[5], partial ? 0xffu : kFull) << t;
    if (lane % 2 == 0) {
      EXPECT_EQ(mine[6], partial ? 0x11u : 0x11111111u) << t;
      EXPECT_EQ(mine[7], 10u) << t;
    }
  }
}

// ---- reductions ----

__global__ void warp_sum_kernel(const long long* in, long long* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  long long value = i < n ? in[i] : 0;
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(kFull, value, static_cast<unsigned>(offset));
  if (threadIdx.x % 32 == 0 && i < n) out[i / 32] = value;
}

__global__ void block_sum_kernel(const double* in, double* total, int n) {
  __shared__ double warp_sums[32];
  double value = 0;
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < n;
       i += static_cast<int>(blockDim.x * gridDim.x))
    value += in[i];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(kFull, value, offset);
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < blockDim.x / 32 ? warp_sums[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(kFull, value, static_cast<unsigned>(offset));
    if (lane == 0) atomicAdd(total, value);
  }
}

TEST_P(Harness, WarpAndBlockReductions) {
  const int n = 5000;
  std::vector<long long> in(n);
  for (int i = 0; i < n; ++i) in[i] = (i * 7919LL) % 1013 - 500 + (1LL << 35);
  std::vector<long long> warp_sums((n + 31) / 32);
  launch(warp_sum_kernel, (n + 127) / 128, 128, 0, nullptr, in.data(), warp_sums.data(), n);
  for (std::size_t w = 0; w < warp_sums.size(); ++w) {
    const auto first = in.begin() + static_cast<std::ptrdiff_t>(w * 32);
    const auto last = in.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(n, w * 32 + 32));
    EXPECT_EQ(warp_sums[w], std::accumulate(first, last, 0LL)) << w;
  }
  std::vector<double> values(n);
  for (int i = 0; i < n; ++i) values[i] = static_cast<double>((i * 31) % 97) - 40.0;  // (exact sums)
  double total = 0;
  launch(block_sum_kernel, 7, 256, 0, nullptr, values.data(), &total, n);
  EXPECT_EQ(total, std::accumulate(values.begin(), values.end(), 0.0));
}

// ---- atomics ----

struct Counters {
  int count = 0;
  unsigned unsigned_count = 0;
  unsigned long long big = 0;
  float float_sum = 0;
  double double_sum = 0;
  int down = 1000000;
  unsigned long long max = 0;
  unsigned long long min = ~0ULL;
  long long signed_max = -5;
  int int_min = 0;
  unsigned bits_or = 0;
  unsigned bits_and = ~0u;
  unsigned bits_xor = 0;
  unsigned long long cas_sum = 0;
  unsigned wrapping = 0;
  int exchanged = 0;
};

__global__ void atomics_kernel(Counters* c) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&c->count, 1);
  atomicAdd(&c->unsigned_count, 2u);
  atomicAdd(&c->big, 1ULL << 33);
  atomicAdd(&c->float_sum, 0.5f);
  atomicAdd(&c->double_sum, 0.25);
  atomicSub(&c->down, 3);
  atomicMax(&c->max, (i * 2654435761ULL) % 1000003ULL);
  atomicMin(&c->min, (i * 2654435761ULL) % 1000003ULL + 17);
  atomicMax(&c->signed_max, static_cast<long long>(i) - 100);
  atomicMin(&c->int_min, -static_cast<int>(i));
  atomicOr(&c->bits_or, 1u << (i % 32));
  atomicAnd(&c->bits_and, ~(1u << (i % 16)));
  atomicXor(&c->bits_xor, i);
  // (the first read atomic too: a plain read racing with the atomics is a data race to ThreadSanitizer)
  unsigned long long old = atomicAdd(&c->cas_sum, 0ULL), assumed;
  do {  // an add by compare-and-swap
    assumed = old;
    old = atomicCAS(&c->cas_sum, assumed, assumed + i);
  } while (old != assumed);
  atomicInc(&c->wrapping, 9u);
  atomicExch(&c->exchanged, 42);
  __threadfence();
}

TEST_P(Harness, AtomicsFromManyBlocks) {
  const unsigned blocks = 50, threads = 96, n = blocks * threads;
  Counters c;
  launch(atomics_kernel, blocks, threads, 0, nullptr, &c);
  unsigned long long max = 0, min = ~0ULL, cas = 0;
  unsigned x = 0;
  for (unsigned i = 0; i < n; ++i) {
    max = std::max(max, (i * 2654435761ULL) % 1000003ULL);
    min = std::min(min, (i * 2654435761ULL) % 1000003ULL + 17);
    cas += i;
    x ^= i;
  }
  EXPECT_EQ(c.count, static_cast<int>(n));
  EXPECT_EQ(c.unsigned_count, 2 * n);
  EXPECT_EQ(c.big, (1ULL << 33) * n);
  EXPECT_EQ(c.float_sum, 0.5f * static_cast<float>(n));
  EXPECT_EQ(c.double_sum, 0.25 * n);
  EXPECT_EQ(c.down, 1000000 - 3 * static_cast<int>(n));
  EXPECT_EQ(c.max, max);
  EXPECT_EQ(c.min, min);
  EXPECT_EQ(c.signed_max, static_cast<long long>(n) - 101);
  EXPECT_EQ(c.int_min, -static_cast<int>(n - 1));
  EXPECT_EQ(c.bits_or, ~0u);
  EXPECT_EQ(c.bits_and, 0xffff0000u);
  EXPECT_EQ(c.bits_xor, x);
  EXPECT_EQ(c.cas_sum, cas);
  EXPECT_EQ(c.wrapping, n % 10);
  EXPECT_EQ(c.exchanged, 42);
}

// ---- bit intrinsics and reinterpretations (host-callable: no launch) ----

TEST(HarnessIntrinsics, BitsAndReinterpretations) {
  EXPECT_EQ(__popc(0xf0f0u), 8);
  EXPECT_EQ(__popcll(~0ULL), 64);
  EXPECT_EQ(__ffs(0), 0);
  EXPECT_EQ(__ffs(8), 4);
  EXPECT_EQ(__ffsll(1LL << 40), 41);
  EXPECT_EQ(__clz(0), 32);
  EXPECT_EQ(__clz(1), 31);
  EXPECT_EQ(__clz(-1), 0);
  EXPECT_EQ(__clzll(0), 64);
  EXPECT_EQ(__clzll(1LL << 40), 23);
  EXPECT_EQ(__brev(1u), 0x80000000u);
  EXPECT_EQ(__brev(0x12345678u), 0x1e6a2c48u);
  EXPECT_EQ(__brevll(1ULL), 1ULL << 63);
  EXPECT_EQ(__brevll(0x0000000100000003ULL), 0xc000000080000000ULL);
  EXPECT_EQ(__double_as_longlong(1.0), 0x3ff0000000000000LL);
  EXPECT_EQ(__longlong_as_double(0x4000000000000000LL), 2.0);
  EXPECT_EQ(__float_as_uint(1.0f), 0x3f800000u);
  EXPECT_EQ(__uint_as_float(0x40000000u), 2.0f);
  EXPECT_EQ(__float_as_int(-2.0f), static_cast<int>(0xc0000000u));
  EXPECT_EQ(__int_as_float(0x3f800000), 1.0f);
  const double x = 3.5;
  EXPECT_EQ(__ldg(&x), 3.5);
  EXPECT_NO_THROW(check(cudaSuccess));
  EXPECT_THROW(check(cudaErrorInvalidValue), std::runtime_error);
}

// ---- the launch checks ----

__global__ void count_kernel(unsigned long long* count) { atomicAdd(count, 1ULL); }

std::string launch_error(dim3 grid, dim3 block, std::size_t shared_bytes) {
  unsigned long long count = 0;
  try {
    launch(count_kernel, grid, block, shared_bytes, nullptr, &count);
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "";
}

TEST_P(Harness, LaunchShapesAreChecked) {
  EXPECT_NE(launch_error(dim3(1, 70000), 1, 0).find("65535"), std::string::npos);
  EXPECT_NE(launch_error(dim3(1, 1, 70000), 1, 0).find("65535"), std::string::npos);
  EXPECT_NE(launch_error(dim3(2147483648u), 1, 0).find("2147483647"), std::string::npos);
  EXPECT_NE(launch_error(1, 1025, 0).find("1024"), std::string::npos);
  EXPECT_EQ(launch_error(1, dim3(32, 2, 2), 0), "");  // 128 threads: fine
  EXPECT_NE(launch_error(1, dim3(1, 1, 65), 0).find("64"), std::string::npos);
  EXPECT_NE(launch_error(1, 32, 300000).find("232448"), std::string::npos);
  EXPECT_NE(launch_error(dim3(0), 32, 0).find("empty grid"), std::string::npos);
  EXPECT_NE(launch_error(1, dim3(32, 0), 0).find("empty block"), std::string::npos);
  EXPECT_EQ(launch_error(1, 1024, 232448), "");
}

TEST_P(Harness, GridOf65535BlocksInY) {
  const unsigned rows = fast() ? 65535 : 3000;
  unsigned long long count = 0;
  const auto start = std::chrono::steady_clock::now();
  launch(count_kernel, dim3(1, rows), 1, 0, nullptr, &count);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(count, rows);
  std::printf("[ harness ] %u blocks of 1 thread in %.3f s\n", rows, seconds);
}

// ---- the row-style workload: one warp per row, ~40 warp syncs per row ----

__global__ void rows_kernel(const double* x, double* out, int n) {
  const unsigned lane = threadIdx.x;
  const double* row = x + static_cast<std::size_t>(blockIdx.x) * static_cast<std::size_t>(n);
  double values[4];
  for (int j = 0; j < 4; ++j) values[j] = row[lane + 32 * static_cast<unsigned>(j)];
  double result = 0;
  for (int pass = 0; pass < 8; ++pass) {  // 8 passes x 5 shuffles = 40 warp syncs
    double partial = values[pass % 4];
    for (int offset = 16; offset > 0; offset /= 2) partial += __shfl_xor_sync(kFull, partial, offset);
    result += partial;
  }
  if (lane == 0) out[blockIdx.x] = result;
}

TEST_P(Harness, RowsWithOneWarpEach) {
  const int rows = fast() ? 70000 : 100, n = 128;
  std::vector<double> x(static_cast<std::size_t>(rows) * n), out(rows);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(i % 113);
  const std::uint64_t switches_before = harness::fiber_switches();
  const auto start = std::chrono::steady_clock::now();
  launch(rows_kernel, rows, 32, 0, nullptr, x.data(), out.data(), n);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::uint64_t switches = harness::fiber_switches() - switches_before;
  for (int r = 0; r < rows; r += 997) {
    double expected = 0;
    for (int pass = 0; pass < 8; ++pass)
      for (int lane = 0; lane < 32; ++lane) expected += x[static_cast<std::size_t>(r) * n + lane + 32 * (pass % 4)];
    EXPECT_EQ(out[r], expected) << r;
  }
  std::printf("[ harness ] %d rows x 32 lanes x 40 warp shuffles in %.3f s", rows, seconds);
  if (GetParam() == Mode::fibers)
    std::printf(": %llu fiber switches, %.1f million per second", static_cast<unsigned long long>(switches),
                static_cast<double>(switches) / seconds / 1e6);
  std::printf("\n");
}

// ---- errors that abort (fibers mode) ----

class HarnessDeathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    saved_ = harness::mode();
    harness::set_mode(Mode::fibers);
  }
  void TearDown() override { harness::set_mode(saved_); }

 private:
  Mode saved_ = Mode::fibers;
};

__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x == 0) return;  // lane 0 exits; the others shuffle with a mask naming it
  out[threadIdx.x] = __shfl_sync(kFull, static_cast<int>(threadIdx.x), 0);
}

TEST_F(HarnessDeathTest, ShuffleNamingAnExitedLane) {
  std::vector<int> out(32);
  EXPECT_DEATH(launch(exited_lane_kernel, 1, 32, 0, nullptr, out.data()), "exited.*\n.*block \\(0, 0, 0\\), warp 0");
}

__global__ void exits_while_named_kernel(int* out) {
  if (threadIdx.x == 1) return;  // lane 0 (first to run) already waits on it
  out[threadIdx.x] = __shfl_sync(kFull, static_cast<int>(threadIdx.x), 1);
}

TEST_F(HarnessDeathTest, LaneExitsWhileAShuffleNamesIt) {
  std::vector<int> out(32);
  EXPECT_DEATH(launch(exits_while_named_kernel, 1, 32, 0, nullptr, out.data()),
               "exited while lane 0 of its warp waits on __shfl_sync");
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x == 0) {
    __syncthreads();  // lane 0 at the block barrier, the others at a warp sync that needs lane 0
  } else {
    __syncwarp(kFull);
  }
  out[threadIdx.x] = 1;
}

TEST_F(HarnessDeathTest, DivergentSyncthreadsDeadlocks) {
  std::vector<int> out(64);
  EXPECT_DEATH(launch(divergent_barrier_kernel, 1, 64, 0, nullptr, out.data()), "deadlock");
}

__global__ void mismatched_masks_kernel(int* out) {
  const unsigned mask = threadIdx.x == 1 ? 0x3u : 0xfu;
  if (threadIdx.x < 4) out[threadIdx.x] = __shfl_sync(mask, 1, 0);
}

TEST_F(HarnessDeathTest, MismatchedMasks) {
  std::vector<int> out(32);
  EXPECT_DEATH(launch(mismatched_masks_kernel, 1, 32, 0, nullptr, out.data()), "mismatched warp operations");
}

// ---- the sanitizers see into the lanes ----

#if defined(ASAN)
__global__ void stack_overflow_kernel(int* out, int k) {
  int local[8];
  for (int i = 0; i < 8; ++i) local[i] = i + static_cast<int>(threadIdx.x);
  __syncwarp();  // (the lanes switch here)
  int* volatile p = local;  // (through an opaque pointer: for ASan, not UBSan's bounds checks)
  out[threadIdx.x] = p[k];
  __syncwarp();
}

TEST_F(HarnessDeathTest, AddressSanitizerInFibers) {
  std::vector<int> out(4);
  launch(stack_overflow_kernel, 1, 4, 0, nullptr, out.data(), 7);
  EXPECT_EQ(out[3], 10);
  EXPECT_DEATH(launch(stack_overflow_kernel, 1, 4, 0, nullptr, out.data(), 8), "stack-buffer-overflow");
}
#endif

#if defined(TSAN)
__global__ void racy_kernel(int* out) {
  __shared__ int value;
  if (threadIdx.x == 1) value = 5;  // no __syncthreads between the write and the read
  if (threadIdx.x == 0) *out = value;
}

__global__ void synchronized_kernel(int* out) {
  __shared__ int value;
  if (threadIdx.x == 1) value = 5;
  __syncthreads();
  if (threadIdx.x == 0) *out = value;
}

TEST_F(HarnessDeathTest, ThreadSanitizerInThreads) {
  harness::set_mode(Mode::threads);
  int out = 0;
  for (int i = 0; i < 5; ++i) launch(synchronized_kernel, 1, 2, 0, nullptr, &out);
  EXPECT_EQ(out, 5);
  // (TSan exits with 66 once it has reported, at the race with halt_on_error=1, else at exit)
  EXPECT_EXIT(
      {
        for (int i = 0; i < 5; ++i) launch(racy_kernel, 1, 2, 0, nullptr, &out);
        std::exit(0);
      },
      ::testing::ExitedWithCode(66), "data race");
}
#endif

}  // namespace
}  // namespace sparsetopk::cuda
