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

#include <sparsetopk/form.hpp>

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace sparsetopk::torch::generic {

// out: [R, n] in the rows' dtype. With `save`, also the state the derivatives
// need: row_state [R, RowState::size] float64, each row's sparsetopk::RowState
// (sparsetopk/row_state.hpp: gamma, W_B, unchanged_from, and the band's first
// and last entries in sorted order), as the core writes it. Otherwise
// row_state is an undefined tensor.
struct SoftResult {
  at::Tensor out, row_state;
};

SoftResult soft_topk_rows(Form form, const at::Tensor& rows, int64_t k, double l, double p, bool save);

// The same for p = 2 by `iterations` (>= 1) of Dykstra's alternating
// projections (SPEC.md; the batched form of the core's dykstra.hpp, with the
// same results): approximate. The state is read off the block of the result
// that straddles sorted positions k and k+1 (c_i = 1/l), so the derivatives
// below are the exact block Jacobian at the returned solution. Docs: docs/dykstra.md.
SoftResult dykstra_rows(Form form, const at::Tensor& rows, int64_t k, double l, int64_t iterations, bool save);

// Hard top-k of SPEC.md: the k largest keys (x for the mask, |x| for the
// magnitude), ties broken by the lower index first; a row holding a NaN is NaN.
at::Tensor hard_topk_rows(Form form, const at::Tensor& rows, int64_t k);

// J^T v (`transpose`) or J v of the soft operator at the state_rows [R, RowState::size] its
// forward pass on x_rows saved, with the same l and p: the band's c_i are
// recomputed from x_rows. v_rows and x_rows are [R, n]; the result is in v's dtype.
at::Tensor jacobian_product_rows(Form form, bool transpose, const at::Tensor& v_rows, const at::Tensor& x_rows,
                                 const at::Tensor& state_rows, double l, double p);

// Whether the ATen path may read values of `t` back to the host: on the CPU
// only, where a read costs nothing (the root finder's early exit, topk_loss's
// eager label check). On every other device it reads nothing (no host sync:
// the root finder runs its full count, checks are device-side assertions),
// and neither does it on the CPU in device mode (below). Meta tensors: false.
bool reads_to_host(const at::Tensor& t);

// Device mode, a switch for tests (the private op
// torch.ops.sparsetopk._generic_device_mode(bool)): while on, the ATen path
// treats CPU tensors as it treats a device's (reads_to_host is false), so that
// a CPU test can check that it calls no synchronizing op. Process-wide;
// returns the previous setting.
bool set_device_mode(bool enabled);

}  // namespace sparsetopk::torch::generic
