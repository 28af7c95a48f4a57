#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "sparsetopk/parallel.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace sparsetopk {
namespace {
std::atomic<std::size_t> configured_threads{0};
}  // namespace

void set_num_threads(std::size_t threads) { configured_threads = threads; }

std::size_t num_threads() {
  const std::size_t configured = configured_threads;
  if (configured > 0) return configured;
  // Read once: std::thread::hardware_concurrency() reads /sys (glibc's
  // get_nprocs, several microseconds), and every call of an operator asks.
  static const std::size_t hardware = std::max<std::size_t>(1, std::thread::hardware_concurrency());
  return hardware;
}

namespace detail {
namespace {
thread_local std::size_t thread_limit = 0;  // 0: no ThreadLimit on this thread
}  // namespace

std::size_t available_threads() {
  const std::size_t all = num_threads();
  return thread_limit > 0 ? std::min(all, thread_limit) : all;
}


#if defined(__x86_64__) || defined(__i386__)
constexpr unsigned kFlushToZero = 1u << 15, kDenormalsAreZero = 1u << 6;  // MXCSR bits
GradualUnderflow::GradualUnderflow() : saved_(_mm_getcsr()) {
  _mm_setcsr(static_cast<unsigned>(saved_) & ~(kFlushToZero | kDenormalsAreZero));
}
GradualUnderflow::~GradualUnderflow() { _mm_setcsr(static_cast<unsigned>(saved_)); }
#elif defined(__aarch64__)
constexpr unsigned long long kFlushToZero = 1ull << 24;  // FPCR.FZ
GradualUnderflow::GradualUnderflow() {
  unsigned long long fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  saved_ = fpcr;
  fpcr &= ~kFlushToZero;
  __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr));
}
GradualUnderflow::~GradualUnderflow() { __asm__ __volatile__("msr fpcr, %0" : : "r"(saved_)); }
#else
GradualUnderflow::GradualUnderflow() : saved_(0) {}
GradualUnderflow::~GradualUnderflow() = default;
#endif

std::size_t plan_threads(std::size_t rows, std::size_t n) {
  constexpr std::size_t kMinEntriesPerThread = 1 << 14;  // below this a thread costs more than it saves
  const std::size_t by_work = std::max<std::size_t>(1, rows * std::max<std::size_t>(n, 1) / kMinEntriesPerThread);
  return std::max<std::size_t>(1, std::min({available_threads(), rows, by_work}));
}

void parallel_for(std::size_t rows, std::size_t threads,
                  const std::function<void(std::size_t, std::size_t, std::size_t)>& body) {
  const GradualUnderflow caller_mode;
  if (threads <= 1 || rows <= 1) {
    if (rows > 0) body(0, rows, 0);
    return;
  }
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto run = [&](std::size_t slot) {
    const GradualUnderflow worker_mode;  // (a new thread starts with its creator's mode; made sure)
    const std::size_t begin = rows * slot / threads, end = rows * (slot + 1) / threads;
    try {
      if (begin < end) body(begin, end, slot);
    } catch (...) {
      std::lock_guard lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(threads - 1);
  for (std::size_t slot = 1; slot < threads; ++slot) workers.emplace_back(run, slot);
  run(0);
  for (std::thread& worker : workers) worker.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace detail

ThreadLimit::ThreadLimit(std::size_t limit) : previous_(detail::thread_limit) {
  limit = std::max<std::size_t>(limit, 1);
  detail::thread_limit = previous_ > 0 ? std::min(previous_, limit) : limit;
}

ThreadLimit::~ThreadLimit() { detail::thread_limit = previous_; }

}  // namespace sparsetopk
