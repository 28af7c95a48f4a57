#pragma once
// What the CPU (ffi_handlers.cpp) and the CUDA handlers (cuda_handlers.cpp) of
// sparsetopk.jax share: the argument lists (the same targets take the same
// buffers and attributes on both platforms), and the table of targets each
// library hands to python/sparsetopk/jax/_ffi.py, which registers every row
// (so the target names are written once, in the library's table).

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

// A soft forward's attributes, after its buffers.
#define SPARSETOPK_SOFT_ATTRS \
  Attr<int64_t>("k").Attr<double>("l").Attr<double>("p").Attr<std::string_view>("solver").Attr<int64_t>("num_iter")

// The handler of `impl`, its arguments declared by `binding`: what
// XLA_FFI_DEFINE_HANDLER defines, as an expression for a row of a table. The
// binding is made once, on the first call.
#define SPARSETOPK_FFI_HANDLER(impl, binding)                   \
  +[](XLA_FFI_CallFrame* call_frame) -> XLA_FFI_Error* {        \
    static auto* handler = (binding).To(impl).release();        \
    return handler->Call(call_frame);                           \
  }

namespace sparsetopk::jax {

// One FFI target of a library: the name Python registers and calls, and its handler.
struct Target {
  const char* name;
  XLA_FFI_Handler* handler;
};

// A derivative's (x, state, v) -> out, attributes l and p, after `binding` (its contexts, if any).
template <class Binding>
auto derivative_arguments(Binding binding) {
  using xla::ffi::AnyBuffer;
  return std::move(binding)
      .template Arg<AnyBuffer>()
      .template Arg<AnyBuffer>()
      .template Arg<AnyBuffer>()
      .template Ret<AnyBuffer>()
      .template Attr<double>("l")
      .template Attr<double>("p");
}

// The global operators' targets (global_handlers.cpp), appended to the CPU table.
std::vector<Target> global_targets();

}  // namespace sparsetopk::jax

// The C function each library exports for Python: sets *targets to its table
// of targets and returns their count (python/sparsetopk/jax/_ffi.py reads it
// with ctypes).
extern "C" std::size_t sparsetopk_ffi_targets(const sparsetopk::jax::Target** targets);
