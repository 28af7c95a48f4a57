#pragma once
// Threads used for batches of rows. Results never depend on the count.

#include <cstddef>

namespace sparsetopk {

// 0 restores the default (std::thread::hardware_concurrency()).
void set_num_threads(std::size_t threads);
std::size_t num_threads();

}  // namespace sparsetopk
