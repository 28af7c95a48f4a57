#pragma once
// Argument checks shared by every entry point; each error names the argument
// and its value.

#include <cstddef>
#include <string>

#include "sparsetopk/arguments.hpp"
#include "sparsetopk/errors.hpp"

namespace sparsetopk::detail {

// The scalar rules are the public ones (sparsetopk/arguments.hpp).
using sparsetopk::check_k;
using sparsetopk::check_l;
using sparsetopk::check_p;
inline std::string to_text(double value) { return number_text(value); }

// A row-major batch of rows of n entries; returns the number of rows.
inline std::size_t check_batch(std::size_t size, std::size_t n, const char* name) {
  if (n == 0) {
    if (size != 0) throw InvalidArgument(std::string(name) + ".size() = " + std::to_string(size) + " but n = 0");
    return 0;
  }
  if (size % n != 0)
    throw InvalidArgument(std::string(name) + ".size() = " + std::to_string(size) +
                          " is not a multiple of n = " + std::to_string(n));
  return size / n;
}

inline void check_same_size(std::size_t size, std::size_t expected, const char* name, const char* other) {
  if (size != expected)
    throw InvalidArgument(std::string(name) + ".size() = " + std::to_string(size) + " differs from " + other +
                          ".size() = " + std::to_string(expected));
}

// One RowState per row of x (row_state.hpp).
inline void check_state_rows(std::size_t states, std::size_t rows) {
  if (states != rows)
    throw InvalidArgument("state holds " + std::to_string(states) + " RowState(s), but x has " +
                          std::to_string(rows) + " row(s): one RowState per row");
}

}  // namespace sparsetopk::detail
