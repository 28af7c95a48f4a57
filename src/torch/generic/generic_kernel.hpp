#pragma once
// The tensor adapters of generic_kernel.cpp (checks, [R, n] rows along dim and
// back, the saved state's layout) around any implementation of the rows
// functions of topk_generic.hpp: the device-generic one, or the CUDA kernels
// of src/torch/cuda, which reuse them. The CPU kernels use them for solver
// "generic" (the same ATen implementation as every other device).

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "checks.hpp"
#include "topk_generic.hpp"

namespace sparsetopk::torch::detail {

struct RowsImplementation {
  generic::SoftResult (*soft)(Form, const at::Tensor& rows, int64_t k, double l, double p, bool save);
  at::Tensor (*hard)(Form, const at::Tensor& rows, int64_t k);
  at::Tensor (*product)(Form, bool transpose, const at::Tensor& v_rows, const at::Tensor& x_rows,
                        const at::Tensor& state_rows, double l, double p);
};

extern const RowsImplementation generic_rows;

// The soft operator along the wrapped `dim` of x by `rows` (choice.solver
// dykstra: the ATen Dykstra iterations, whatever `rows`; else rows.soft); with
// `save` also row_state (ops.hpp), else an undefined tensor. The caller has
// checked x, dim, k, l, p and the choice.
std::tuple<at::Tensor, at::Tensor> soft_topk_by_rows(const RowsImplementation& rows, Form form, const at::Tensor& x,
                                                     int64_t k, double l, double p, int64_t dim,
                                                     const SolverChoice& choice, bool save);

// The ops' checks, then rows in and out: (out, row_state), row_state undefined
// without `save`. Off the CPU the solvers are "auto" (= "generic", exact) and
// "dykstra" (p = 2, approximate).
std::tuple<at::Tensor, at::Tensor> soft_topk_on_rows(const RowsImplementation& rows, Form form, const at::Tensor& x,
                                                     int64_t k, double l, double p, int64_t dim,
                                                     c10::string_view solver, std::optional<int64_t> num_iter,
                                                     bool save);
at::Tensor hard_topk_on_rows(const RowsImplementation& rows, Form form, const at::Tensor& x, int64_t k, int64_t dim);
at::Tensor jacobian_product_on_rows(const RowsImplementation& rows, Form form, bool transpose, const at::Tensor& v,
                                    const at::Tensor& x, const at::Tensor& row_state, double l, double p,
                                    int64_t dim);

// The top-k sum and loss (SPEC.md) from the generic soft mask, for every
// device: (value, mask, row_state) and (loss, grad) as the ops'
// _topk_sum_forward and _topk_loss_forward. They check their arguments.
std::tuple<at::Tensor, at::Tensor, at::Tensor> generic_topk_sum_forward(const at::Tensor& x, int64_t k, double l,
                                                                        double p, int64_t dim);
std::tuple<at::Tensor, at::Tensor> generic_topk_loss_forward(const at::Tensor& scores, const at::Tensor& target,
                                                             int64_t k, double l, double p, int64_t dim);

}  // namespace sparsetopk::torch::detail
