#pragma once
// The operators of SPEC.md built from ATen tensor ops only (sort, gather,
// scatter, cumulative and row reductions, elementwise math), so that the same
// code runs on every device torch supports: the verified fallback for CUDA.
// No loop in here visits elements or rows; every step is a batched op on the
// whole [R, n] batch. The design is in docs/generic.md.
//
// Rows are [R, n] contiguous float32 or float64 tensors on any device; the
// caller has validated 0 <= k <= n, l > 0 and p > 1. Arithmetic is float64
// whatever the input dtype; outputs come back in the rows' dtype.

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace sparsetopk::torch::generic {

enum class Operator { mask, magnitude };

// out: [R, n] in the rows' dtype. With `save`, also the state the derivatives
// need, in the layout of the core's ActiveBlocks::to_dense:
//   c          [R, n] float64: c_i >= 0 on the entries of the row's active block
//              (SPEC.md, "Derivatives"), -1 elsewhere, NaN on a row holding a
//              NaN or an infinity;
//   row_state  [R, 3] float64: (gamma, W_B, unchanged_from) of each row.
// Otherwise c and row_state are undefined tensors.
struct SoftResult {
  at::Tensor out, c, row_state;
};

SoftResult soft_topk_rows(Operator op, const at::Tensor& rows, int64_t k, double l, double p, bool save);

// The same for p = 2 by `iterations` (>= 1) of Dykstra's alternating
// projections (SPEC.md; the batched form of the core's dykstra.hpp, with the
// same results): approximate. The state is read off the block of the result
// that straddles sorted positions k and k+1 (c_i = 1/l), so the derivatives
// below are the exact block Jacobian at the returned solution. Docs: docs/dykstra.md.
SoftResult dykstra_rows(Operator op, const at::Tensor& rows, int64_t k, double l, int64_t iterations, bool save);

// Hard top-k of SPEC.md: the k largest keys (x for the mask, |x| for the
// magnitude), ties broken by the lower index first; a row holding a NaN is NaN.
at::Tensor hard_topk_rows(Operator op, const at::Tensor& rows, int64_t k);

// J^T v (`transpose`) or J v of the soft operator at the state (c_rows,
// state_rows) its forward pass saved. x_rows, the forward input, is needed by
// the magnitude only (pass an undefined tensor for the mask). v_rows, x_rows
// and c_rows are [R, n], state_rows is [R, 3]. The result is in v's dtype.
at::Tensor jacobian_product_rows(Operator op, bool transpose, const at::Tensor& v_rows, const at::Tensor& x_rows,
                                 const at::Tensor& c_rows, const at::Tensor& state_rows);

}  // namespace sparsetopk::torch::generic
