#pragma once
// Threads used for batches of rows. Results never depend on the count.

#include <cstddef>

namespace sparsetopk {

// 0 restores the default (std::thread::hardware_concurrency()).
void set_num_threads(std::size_t threads);
std::size_t num_threads();

// Caps the threads of the calls made on the constructing thread while it lives
// (limits nest: the smallest applies; 0 counts as 1). For callers with a pool of
// their own (the torch kernels run the parts of a batch on torch's threads, each
// under ThreadLimit(1)), so that the operators start no threads of theirs.
class ThreadLimit {
 public:
  explicit ThreadLimit(std::size_t limit);
  ~ThreadLimit();
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  std::size_t previous_;
};

}  // namespace sparsetopk
