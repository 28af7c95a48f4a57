#pragma once
// Argument checks shared by every entry point; each error names the argument
// and its value.

#include <charconv>
#include <cmath>
#include <cstddef>
#include <string>

#include "sparsetopk/errors.hpp"

namespace sparsetopk::detail {

// Shortest text that reads back as the same double.
inline std::string to_text(double value) {
  char buffer[32];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, end);
}

inline void check_l(double l) {
  if (!(l > 0.0) || !std::isfinite(l)) throw InvalidArgument("l must be finite and > 0, got " + to_text(l));
}

inline void check_p(double p) {
  if (!(p > 1.0) || !std::isfinite(p)) throw InvalidArgument("p must be finite and > 1, got " + to_text(p));
}

inline void check_k(std::size_t k, std::size_t n) {
  if (k > n)
    throw InvalidArgument("k = " + std::to_string(k) + " is out of range [0, n = " + std::to_string(n) + "]");
}

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
