// The CUDA dispatch key's kernels, in libsparsetopk_torch_cuda.so (loaded by
// the Python package only where torch is a CUDA build; docs/gpu.md).
//
// UNVERIFIED and opt-in: the hand-written kernels (topk_kernels.cu) have been
// compiled and linked but never run on a GPU. Unless a call opts in, every op
// takes the device-generic path exactly as before (generic_rows, through the
// same tensor adapters of generic_kernel.hpp). Opting in:
//   - a soft forward with solver = "cuda_kernel";
//   - every op (solver "auto", the hard ops, backward and JVP) after
//     torch.ops.sparsetopk._use_cuda_kernels(True), or with the environment
//     variable SPARSETOPK_CUDA_KERNELS=1 at load time.
// The kernels run on the current CUDA stream, under a device guard for the
// tensor's device, and never synchronize with the host. The state is the
// ops' row_state (ops.hpp): one RowState per row, [R, 7] float64 here; the
// derivatives recompute the band's c_i from x.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <sparsetopk/form.hpp>
#include <sparsetopk/row_state.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>

#include "generic/generic_kernel.hpp"
#include "register_kernels.hpp"
#include "topk_kernels.hpp"

namespace sparsetopk::torch::detail {
namespace {

using at::Tensor;

constexpr const char* kKernelSolver = "cuda_kernel";
constexpr int64_t kStateSize = static_cast<int64_t>(RowState::size);

bool enabled_by_environment() {
  const char* value = std::getenv("SPARSETOPK_CUDA_KERNELS");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

std::atomic<bool>& kernels_enabled() {
  static std::atomic<bool> enabled{enabled_by_environment()};
  return enabled;
}

bool soft_uses_kernels(c10::string_view solver) {
  return solver == kKernelSolver || (solver == "auto" && kernels_enabled().load());
}

// One byte tensor on rows' device holding a call's scratch (topk_kernels.hpp's layout).
Tensor scratch_bytes(const Tensor& rows, std::size_t bytes) {
  return at::empty({static_cast<int64_t>(std::max<std::size_t>(bytes, 1))}, rows.options().dtype(at::kByte));
}

// The RowStates of a contiguous float64 [R, 7] tensor (generic_kernel.hpp's state_rows).
RowState* states_of(Tensor& state_rows) { return reinterpret_cast<RowState*>(state_rows.data_ptr<double>()); }
const RowState* states_of(const Tensor& state_rows) {
  return reinterpret_cast<const RowState*>(state_rows.data_ptr<double>());
}

template <class T>
generic::SoftResult soft_rows_as(Form form, const Tensor& rows, int64_t k, double l, double p, bool save) {
  const int64_t r = rows.size(0), n = rows.size(1);
  const Tensor scratch = scratch_bytes(rows, cuda::soft_scratch_bytes(r, n));
  generic::SoftResult result{at::empty_like(rows), {}};
  if (save) result.row_state = at::empty({r, kStateSize}, rows.options().dtype(at::kDouble));
  cuda::soft_forward<T>(form, sparsetopk::Solver::automatic, rows.data_ptr<T>(), r, n, k, l, p, scratch.data_ptr(),
                        result.out.data_ptr<T>(), save ? states_of(result.row_state) : nullptr,
                        at::cuda::getCurrentCUDAStream());
  return result;
}

generic::SoftResult soft_rows(Form form, const Tensor& rows, int64_t k, double l, double p, bool save) {
  if (rows.numel() == 0) return generic::soft_topk_rows(form, rows, k, l, p, save);  // nothing to launch
  const c10::cuda::CUDAGuard guard(rows.device());
  if (rows.scalar_type() == at::kDouble) return soft_rows_as<double>(form, rows, k, l, p, save);
  return soft_rows_as<float>(form, rows, k, l, p, save);
}

template <class T>
Tensor hard_rows_as(Form form, const Tensor& rows, int64_t k) {
  Tensor out = at::empty_like(rows);
  const Tensor scratch = scratch_bytes(rows, cuda::hard_scratch_bytes(rows.size(0), rows.size(1)));
  cuda::hard_forward<T>(form, rows.data_ptr<T>(), rows.size(0), rows.size(1), k, scratch.data_ptr(),
                        out.data_ptr<T>(), at::cuda::getCurrentCUDAStream());
  return out;
}

Tensor hard_rows(Form form, const Tensor& rows, int64_t k) {
  if (rows.numel() == 0) return at::empty_like(rows);
  const c10::cuda::CUDAGuard guard(rows.device());
  return rows.scalar_type() == at::kDouble ? hard_rows_as<double>(form, rows, k) : hard_rows_as<float>(form, rows, k);
}

// v, x: [R, n] contiguous in T; state: [R, 7] contiguous float64.
template <class T>
Tensor product_rows_as(Form form, bool transpose, const Tensor& v, const Tensor& x, const Tensor& state, double l,
                       double p) {
  Tensor out = at::empty_like(v);
  const Tensor scratch = scratch_bytes(v, cuda::jacobian_scratch_bytes(v.size(0), v.size(1)));
  cuda::jacobian_product<T>(form, transpose, v.data_ptr<T>(), x.data_ptr<T>(), states_of(state), l, p, v.size(0),
                            v.size(1), scratch.data_ptr(), out.data_ptr<T>(), at::cuda::getCurrentCUDAStream());
  return out;
}

// The kernels take v and x in one type: the wider of the two (float or double,
// as the core's CPU kernels), the result back in v's dtype. x in a wider type
// keeps the keys the forward pass compared.
Tensor product_rows(Form form, bool transpose, const Tensor& v_rows, const Tensor& x_rows, const Tensor& state_rows,
                    double l, double p) {
  if (v_rows.numel() == 0) return at::zeros_like(v_rows);
  const c10::cuda::CUDAGuard guard(v_rows.device());
  const at::ScalarType type =
      at::promote_types(v_rows.scalar_type(), x_rows.scalar_type()) == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor v = v_rows.to(type).contiguous(), x = x_rows.to(type).contiguous();
  const Tensor state = state_rows.to(at::kDouble).contiguous();
  TORCH_CHECK(state.dim() == 2 && state.size(0) == v.size(0) && state.size(1) == kStateSize,
              "sparsetopk: the CUDA kernels' state_rows must be [", v.size(0), ", ", kStateSize, "], got ",
              state.sizes());
  const Tensor out = type == at::kDouble ? product_rows_as<double>(form, transpose, v, x, state, l, p)
                                         : product_rows_as<float>(form, transpose, v, x, state, l, p);
  return out.to(v_rows.scalar_type());
}

const RowsImplementation cuda_rows{soft_rows, hard_rows, product_rows};

std::tuple<Tensor, Tensor> soft_op(Form form, const Tensor& x, int64_t k, double l, double p, int64_t dim,
                                   c10::string_view solver, std::optional<int64_t> num_iter, bool save) {
  // The kernels solve exactly ("cuda_kernel" checks as "auto"); "dykstra" stays on the ATen iterations.
  if (soft_uses_kernels(solver)) return soft_topk_on_rows(cuda_rows, form, x, k, l, p, dim, "auto", num_iter, save);
  return soft_topk_on_rows(generic_rows, form, x, k, l, p, dim, solver, num_iter, save);  // the verified path
}

Tensor hard_op(Form form, const Tensor& x, int64_t k, int64_t dim) {
  return hard_topk_on_rows(kernels_enabled().load() ? cuda_rows : generic_rows, form, x, k, dim);
}

Tensor product_op(Form form, bool transpose, const Tensor& v, const Tensor& x, const Tensor& row_state, double l,
                  double p, int64_t dim) {
  return jacobian_product_on_rows(kernels_enabled().load() ? cuda_rows : generic_rows, form, transpose, v, x,
                                  row_state, l, p, dim);
}

}  // namespace
}  // namespace sparsetopk::torch::detail

TORCH_LIBRARY_FRAGMENT(sparsetopk, m) {
  // Turns the UNVERIFIED CUDA kernels on or off for every op on CUDA tensors; returns the previous setting.
  m.def("_use_cuda_kernels(bool enabled) -> bool", [](bool enabled) {
    return sparsetopk::torch::detail::kernels_enabled().exchange(enabled);
  });
}

TORCH_LIBRARY_IMPL(sparsetopk, CUDA, m) {
  using namespace sparsetopk::torch::detail;
  register_kernels<soft_op, hard_op, product_op>(m);
}
