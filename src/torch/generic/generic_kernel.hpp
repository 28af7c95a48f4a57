#pragma once
// The device-generic soft operators on tensors of any shape (the kernels of
// generic_kernel.cpp), for the CPU kernels too: solver "generic" on a CPU
// tensor runs the same ATen implementation as every other device.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

#include "../checks.hpp"
#include "topk_generic.hpp"

namespace sparsetopk::torch::detail {

// The soft operator along the wrapped `dim` of x, by the ATen implementation
// (choice.solver dykstra: Dykstra's iterations, else the exact solver); with
// `save` also (c, row_state) of ops.hpp, else undefined tensors. The caller
// has checked x, dim, k, l, p and the choice.
std::tuple<at::Tensor, at::Tensor, at::Tensor> generic_soft_topk(generic::Operator op, const at::Tensor& x,
                                                                 int64_t k, double l, double p, int64_t dim,
                                                                 const SolverChoice& choice, bool save);

}  // namespace sparsetopk::torch::detail
