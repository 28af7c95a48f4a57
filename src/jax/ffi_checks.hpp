#pragma once
// What the CPU and the CUDA handlers of sparsetopk.jax check and how they
// report it: the checks throw InvalidArgument (its message names the argument
// and the value), and `guarded` returns it, or any other exception, as an FFI
// error, which JAX raises in Python.
//
// The state of the derivatives is one RowState per row of x
// (<sparsetopk/row_state.hpp>), kept by JAX as an opaque buffer of its raw
// bytes: uint32, shape [x's leading axes..., kStateWords]. uint32 because JAX
// without x64 has no 64-bit arrays; the bytes are the core's doubles, exact
// whatever x's dtype.

#include <sparsetopk/arguments.hpp>
#include <sparsetopk/errors.hpp>
#include <sparsetopk/row_state.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <string>
#include <string_view>

#include "xla/ffi/api/ffi.h"

namespace sparsetopk::jax {

// n: the entries of each row of x, its last axis.
inline std::size_t row_length(const xla::ffi::AnyBuffer& x) {
  const auto dims = x.dimensions();
  if (dims.size() == 0) throw InvalidArgument("x must have at least one axis (sparsetopk.jax reshapes scalars)");
  return static_cast<std::size_t>(dims.back());
}


// "[3, 22]"
inline std::string shape_text(xla::ffi::AnyBuffer::Dimensions dims) {
  std::string text = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

// uint32 words per RowState in a state buffer.
inline constexpr int64_t kStateWords = static_cast<int64_t>(sizeof(RowState) / sizeof(uint32_t));
static_assert(sizeof(RowState) % sizeof(uint32_t) == 0, "a RowState is a whole number of uint32 words");

// x must be float32 or float64 (the inputs and outputs of the derivatives then share its dtype).
inline void check_float(const xla::ffi::AnyBuffer& x) {
  const auto type = x.element_type();
  if (type != xla::ffi::DataType::F32 && type != xla::ffi::DataType::F64)
    throw InvalidArgument("x must be float32 or float64 (sparsetopk.jax computes float16 and bfloat16 in float32)");
}

// x must be float32 or float64, and every one of `outputs` of its dtype.
inline void check_types(const xla::ffi::AnyBuffer& x, std::initializer_list<const xla::ffi::AnyBuffer*> outputs) {
  check_float(x);
  for (const xla::ffi::AnyBuffer* out : outputs)
    if (out->element_type() != x.element_type()) throw InvalidArgument("every output must have the dtype of x");
}

// `buffer` (named `name`) must have the dtype and the shape of x.
inline void check_like_x(const xla::ffi::AnyBuffer& x, const xla::ffi::AnyBuffer& buffer, std::string_view name) {
  if (buffer.element_type() != x.element_type())
    throw InvalidArgument(std::string(name) + " must have the dtype of x");
  const auto dims = buffer.dimensions(), x_dims = x.dimensions();
  bool same = dims.size() == x_dims.size();
  for (std::size_t i = 0; same && i < dims.size(); ++i) same = dims[i] == x_dims[i];
  if (!same)
    throw InvalidArgument(std::string(name) + " must have the shape of x, " + shape_text(x_dims) + ", got " +
                          shape_text(dims));
}

// `state` must be uint32 of shape [x's leading axes..., kStateWords].
inline void check_state(const xla::ffi::AnyBuffer& x, const xla::ffi::AnyBuffer& state) {
  const auto dims = state.dimensions(), x_dims = x.dimensions();
  std::string expected = "[";
  for (std::size_t i = 0; i + 1 < x_dims.size(); ++i) expected += std::to_string(x_dims[i]) + ", ";
  expected += std::to_string(kStateWords) + "]";
  if (state.element_type() != xla::ffi::DataType::U32)
    throw InvalidArgument("state must be uint32 (the raw bytes of one RowState per row), shape " + expected);
  bool same = dims.size() == x_dims.size() && dims.size() > 0 && dims.back() == kStateWords;
  for (std::size_t i = 0; same && i + 1 < dims.size(); ++i) same = dims[i] == x_dims[i];
  if (!same)
    throw InvalidArgument("state must have shape " + expected + " (x's leading axes, then " +
                          std::to_string(kStateWords) + " uint32 words per row), got " + shape_text(dims));
}

// k, checked by the core's rule (sparsetopk/arguments.hpp), as the core's size_t.
inline std::size_t checked_k(int64_t k, std::size_t n) {
  check_k(k, n);
  return static_cast<std::size_t>(k);
}

// Runs `body` and turns its exceptions into FFI errors. With a `target` (the
// handler's name, "sparsetopk_..."), a bad argument reads
// "<target>: <what>" instead of "sparsetopk: <what>".
template <class Body>
xla::ffi::Error guarded(Body&& body, std::string_view target = {}) {
  try {
    body();
    return xla::ffi::Error::Success();
  } catch (const InvalidArgument& e) {
    std::string what = e.what();
    constexpr std::string_view prefix = "sparsetopk: ";
    if (!target.empty() && what.starts_with(prefix)) what = std::string(target) + ": " + what.substr(prefix.size());
    return xla::ffi::Error::InvalidArgument(what);
  } catch (const std::exception& e) {
    return xla::ffi::Error::Internal((target.empty() ? std::string("sparsetopk") : std::string(target)) + ": " +
                                     e.what());
  }
}

}  // namespace sparsetopk::jax
