#pragma once
// Static partition of a batch of rows over worker threads. Each row is
// processed by exactly one thread with its own scratch slot, so results do not
// depend on the number of threads.

#include <cstddef>
#include <functional>

#include "sparsetopk/parallel.hpp"

namespace sparsetopk::detail {

// The threads a call made on this thread may use: sparsetopk::num_threads(),
// or fewer while a sparsetopk::ThreadLimit lives on this thread.
std::size_t available_threads();

// Threads worth using for `rows` rows of `n` entries (at least 1, at most
// available_threads()).
std::size_t plan_threads(std::size_t rows, std::size_t n);

// IEEE 754 gradual underflow on this thread while it lives: clears the
// flush-to-zero and denormals-are-zero modes (x86 MXCSR FTZ/DAZ, AArch64 FPCR
// FZ) that a caller may have set (XLA's CPU runtime does;
// torch.set_flush_denormal(True) does), and restores the caller's mode. The
// solvers compare and divide near subnormal values (a threshold one ulp above
// 0, for instance) and are exact only with subnormals kept.
class GradualUnderflow {
 public:
  GradualUnderflow();
  ~GradualUnderflow();
  GradualUnderflow(const GradualUnderflow&) = delete;
  GradualUnderflow& operator=(const GradualUnderflow&) = delete;

 private:
  unsigned long long saved_;
};

// Calls body(row_begin, row_end, slot) on `threads` contiguous chunks of
// [0, rows), slot in [0, threads); rethrows the first exception of a worker.
// Every chunk runs under GradualUnderflow.
void parallel_for(std::size_t rows, std::size_t threads,
                  const std::function<void(std::size_t, std::size_t, std::size_t)>& body);

}  // namespace sparsetopk::detail
