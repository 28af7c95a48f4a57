#pragma once
// The operator schemas' C++ signatures and typed calls through the dispatcher,
// shared by ops.cpp (the public functions), the kernels of every device and
// the autograd kernels. Each family is one call indexed by sparsetopk::Form
// (mask or magnitude) instead of one function per op.
//
// What a soft forward pass leaves for its derivatives is one tensor, O(rows)
// (SPEC.md, "Derivatives"; the core's RowState, sparsetopk/row_state.hpp):
//   row_state  float64, the shape of x with size RowState::size (11) along dim
//              (a 0-d x: [11]): each slice's RowState.
// The backward and the JVP recompute the band's c_i from x, l, p and it.

#include <sparsetopk/form.hpp>
#include <sparsetopk/row_state.hpp>

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace sparsetopk::torch::detail {

inline constexpr int64_t kRowStateSize = static_cast<int64_t>(RowState::size);

// soft_topk_mask(Tensor x, int k, float l, float p, int dim, str solver, int? num_iter) -> Tensor, same for
// soft_topk_mag.
using SoftSignature = at::Tensor(const at::Tensor&, int64_t, double, double, int64_t, c10::string_view,
                                 std::optional<int64_t>);
// hard_topk_mask(Tensor x, int k, int dim) -> Tensor, same for hard_topk_mag.
using HardSignature = at::Tensor(const at::Tensor&, int64_t, int64_t);
// _soft_topk_{mask,mag}_forward(...) -> (Tensor out, Tensor row_state)
using SoftForwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, double, double, int64_t,
                                                                c10::string_view, std::optional<int64_t>);
// _soft_topk_{mask,mag}_{backward,jvp}(Tensor v, Tensor x, Tensor row_state, float l, float p, int dim) -> Tensor:
// J^T v (backward) or J v (jvp) at the forward pass on x that left row_state.
using ProductSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                                    int64_t);

// _topk_sum_forward(Tensor x, int k, float l, float p, int dim) -> (Tensor value, Tensor mask, Tensor row_state):
// the value (x's shape without dim), its gradient (the soft mask) and the mask's row_state (its Jacobian, the
// Hessian of topk_sum).
using TopkSumForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, double,
                                                                                double, int64_t);
// _topk_loss_forward(Tensor scores, Tensor target, int k, float l, float p, int dim) -> (Tensor loss, Tensor grad):
// one loss per row (target's shape) and its gradient (scores' shape).
using TopkLossForwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                                     double, double, int64_t);

at::Tensor call_topk_sum(const at::Tensor& x, int64_t k, double l, double p, int64_t dim);
at::Tensor call_topk_loss(const at::Tensor& scores, const at::Tensor& target, int64_t k, double l, double p,
                          int64_t dim);
std::tuple<at::Tensor, at::Tensor, at::Tensor> call_topk_sum_forward(const at::Tensor& x, int64_t k, double l,
                                                                      double p, int64_t dim);
std::tuple<at::Tensor, at::Tensor> call_topk_loss_forward(const at::Tensor& scores, const at::Tensor& target,
                                                          int64_t k, double l, double p, int64_t dim);

// The op names, for messages: "soft_topk_mask", "hard_topk_mag", "soft_topk_mag backward", ...
const char* op_name(Form form, bool soft);
const char* product_name(Form form, bool transpose);

at::Tensor call_soft_topk(Form form, const at::Tensor& x, int64_t k, double l, double p, int64_t dim,
                          c10::string_view solver, std::optional<int64_t> num_iter);
at::Tensor call_hard_topk(Form form, const at::Tensor& x, int64_t k, int64_t dim);
std::tuple<at::Tensor, at::Tensor> call_soft_topk_forward(Form form, const at::Tensor& x, int64_t k, double l,
                                                          double p, int64_t dim, c10::string_view solver,
                                                          std::optional<int64_t> num_iter);
// transpose: the backward (J^T v), else the JVP (J v).
at::Tensor call_jacobian_product(Form form, bool transpose, const at::Tensor& v, const at::Tensor& x,
                                 const at::Tensor& row_state, double l, double p, int64_t dim);

}  // namespace sparsetopk::torch::detail
