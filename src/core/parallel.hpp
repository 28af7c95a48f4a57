#pragma once
// Static partition of a batch of rows over worker threads. Each row is
// processed by exactly one thread with its own scratch slot, so results do not
// depend on the number of threads.

#include <cstddef>
#include <functional>

namespace sparsetopk::detail {

// Threads worth using for `rows` rows of `n` entries (at least 1).
std::size_t plan_threads(std::size_t rows, std::size_t n);

// Calls body(row_begin, row_end, slot) on `threads` contiguous chunks of
// [0, rows), slot in [0, threads); rethrows the first exception of a worker.
void parallel_for(std::size_t rows, std::size_t threads,
                  const std::function<void(std::size_t, std::size_t, std::size_t)>& body);

}  // namespace sparsetopk::detail
