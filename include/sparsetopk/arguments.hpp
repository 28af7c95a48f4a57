#pragma once
// The rules on the operators' scalar arguments (SPEC.md: l > 0, p > 1,
// 0 <= k <= n; Dykstra: at least one iteration), written once. The core's
// entry points apply them; so do the adapters (torch, JAX) before work that
// does not reach the core (the ATen path, empty inputs), adding where the
// value came from. Each throws InvalidArgument naming the argument and its value.

#include <sparsetopk/errors.hpp>

#include <charconv>
#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>

namespace sparsetopk {

// Shortest text that reads back as the same double ("0.1", "1e-300", "inf", "nan").
inline std::string number_text(double value) {
  char buffer[32];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, end);
}

// The regularization strength: finite and > 0.
inline void check_l(double l) {
  if (!(l > 0.0) || !std::isfinite(l)) throw InvalidArgument("l must be finite and > 0, got l = " + number_text(l));
}

// The exponent of the p-norm regularizer: finite and > 1.
inline void check_p(double p) {
  if (!(p > 1.0) || !std::isfinite(p)) throw InvalidArgument("p must be finite and > 1, got p = " + number_text(p));
}

// The number of entries kept in a row of n: least <= k <= n (least = 1 for the
// top-k loss). Any integer type, so that an adapter's negative k is reported
// as given.
template <class Integer>
void check_k(Integer k, std::size_t n, unsigned least = 0) {
  static_assert(std::is_integral_v<Integer>, "k is an integer");
  bool below = false;
  if constexpr (std::is_signed_v<Integer>) below = k < static_cast<long long>(least);
  else below = k < least;
  if (below || static_cast<unsigned long long>(k) > n)
    throw InvalidArgument("k = " + std::to_string(k) + " is out of range [" + std::to_string(least) +
                          ", n = " + std::to_string(n) + "]");
}

// The label of a row of n scores: 0 <= target < n (`name`: "target[r]").
inline void check_target(long long target, std::size_t n, const std::string& name) {
  if (target < 0 || static_cast<unsigned long long>(target) >= n)
    throw InvalidArgument(name + " = " + std::to_string(target) + " is out of range [0, n = " + std::to_string(n) +
                          ")");
}

// Dykstra's iteration count: at least 1 (`name`: what the caller's API calls it).
inline void check_iterations(long long iterations, const char* name = "iterations") {
  if (iterations < 1)
    throw InvalidArgument(std::string(name) + " must be >= 1, got " + name + " = " + std::to_string(iterations));
}

}  // namespace sparsetopk
