#pragma once
// What the CPU and the CUDA handlers of sparsetopk.jax check and how they
// report it: the checks throw InvalidArgument (its message names the argument
// and the value), and `guarded` returns it, or any other exception, as an FFI
// error, which JAX raises in Python.

#include <sparsetopk/errors.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace sparsetopk::jax {

// n: the entries of each row of x, its last axis.
inline std::size_t row_length(const xla::ffi::AnyBuffer& x) {
  const auto dims = x.dimensions();
  if (dims.size() == 0) throw InvalidArgument("x must have at least one axis (sparsetopk.jax reshapes scalars)");
  return static_cast<std::size_t>(dims.back());
}

inline void check_types(const xla::ffi::AnyBuffer& x, std::initializer_list<const xla::ffi::AnyBuffer*> outputs) {
  const auto type = x.element_type();
  if (type != xla::ffi::DataType::F32 && type != xla::ffi::DataType::F64)
    throw InvalidArgument("x must be float32 or float64 (sparsetopk.jax computes float16 and bfloat16 in float32)");
  for (const xla::ffi::AnyBuffer* out : outputs)
    if (out->element_type() != type) throw InvalidArgument("every output must have the dtype of x");
}

inline std::size_t checked_k(int64_t k, std::size_t n) {
  if (k < 0 || static_cast<std::size_t>(k) > n)
    throw InvalidArgument("k = " + std::to_string(k) + " is out of range [0, n = " + std::to_string(n) + "]");
  return static_cast<std::size_t>(k);
}

// Runs `body` and turns its exceptions into FFI errors.
template <class Body>
xla::ffi::Error guarded(Body&& body) {
  try {
    body();
    return xla::ffi::Error::Success();
  } catch (const InvalidArgument& e) {
    return xla::ffi::Error::InvalidArgument(e.what());
  } catch (const std::exception& e) {
    return xla::ffi::Error::Internal(std::string("sparsetopk: ") + e.what());
  }
}

}  // namespace sparsetopk::jax
