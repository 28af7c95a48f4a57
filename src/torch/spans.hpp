#pragma once
// Contiguous CPU tensors as the core's spans (<sparsetopk/topk.hpp> takes rows
// of entries and one RowState per row): the CPU kernels' views, also used by
// the tests that call the core on tensors.

#include <sparsetopk/row_state.hpp>

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <span>

namespace sparsetopk::torch::detail {

// The dtype the core computes a tensor of `type` in: float64 as is, every other float type in float32.
inline at::ScalarType compute_type(at::ScalarType type) { return type == at::kDouble ? at::kDouble : at::kFloat; }

// The entries of a contiguous tensor of C++ type T.
template <class T>
std::span<const T> in_span(const at::Tensor& t) {
  return {t.data_ptr<T>(), static_cast<std::size_t>(t.numel())};
}

template <class T>
std::span<T> out_span(at::Tensor& t) {
  return {t.data_ptr<T>(), static_cast<std::size_t>(t.numel())};
}

// The RowStates of a [..., RowState::size] float64 tensor (contiguous).
inline std::span<RowState> state_span(at::Tensor& t) {
  return {reinterpret_cast<RowState*>(t.data_ptr<double>()), static_cast<std::size_t>(t.numel()) / RowState::size};
}
inline std::span<const RowState> state_span(const at::Tensor& t) {
  return {reinterpret_cast<const RowState*>(t.data_ptr<double>()),
          static_cast<std::size_t>(t.numel()) / RowState::size};
}

}  // namespace sparsetopk::torch::detail
