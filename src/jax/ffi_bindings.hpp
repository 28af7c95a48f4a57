#pragma once
// The argument lists the CPU (ffi_handlers.cpp) and the CUDA handlers
// (cuda_handlers.cpp) of sparsetopk.jax share: the same targets take the same
// buffers and attributes on both platforms (python/sparsetopk/jax/_ffi.py).

#include <cstdint>
#include <string_view>
#include <utility>

#include "xla/ffi/api/ffi.h"

// A soft forward's attributes, after its buffers.
#define SPARSETOPK_SOFT_ATTRS \
  Attr<int64_t>("k").Attr<double>("l").Attr<double>("p").Attr<std::string_view>("solver").Attr<int64_t>("num_iter")

namespace sparsetopk::jax {

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

}  // namespace sparsetopk::jax
