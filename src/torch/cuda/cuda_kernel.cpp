// The CUDA dispatch key's kernels, in libsparsetopk_torch_cuda.so (loaded by
// the Python package only where torch is a CUDA build; docs/gpu.md).
//
// UNVERIFIED and opt-in: the hand-written kernels (topk_kernels.cu) have been
// compiled and linked but never run on a GPU. Unless a call opts in, every op
// takes the device-generic path exactly as before (the same function the
// CompositeExplicitAutograd registration calls). Opting in:
//   - a soft forward with solver = "cuda_kernel";
//   - every op (solver "auto", the hard ops, backward and JVP) after
//     torch.ops.sparsetopk._use_cuda_kernels(True), or with the environment
//     variable SPARSETOPK_CUDA_KERNELS=1 at load time.
// The kernels run on the current CUDA stream, under a device guard for the
// tensor's device, and never synchronize with the host.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../generic/generic_kernel.hpp"
#include "../../cuda/topk_kernels.hpp"

namespace sparsetopk::torch::detail {
namespace {

using at::Tensor;
using generic::Operator;

constexpr const char* kKernelSolver = "cuda_kernel";

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

template <class T>
void select_or_flag(bool magnitude, bool soft, const Tensor& rows, int64_t k, const cuda::Selection& selection,
                    cudaStream_t stream) {
  const int64_t r = rows.size(0), n = rows.size(1);
  const T* x = rows.data_ptr<T>();
  if (k > 0 && k < n) cuda::select_keys<T>(magnitude, soft, x, r, n, k, selection, stream);
  else cuda::flag_rows<T>(soft, x, r, n, selection.flags, stream);
}

template <class T>
generic::SoftResult soft_rows_as(Operator op, const Tensor& rows, int64_t k, double l, double p, bool save) {
  const bool magnitude = op == Operator::magnitude;
  const int64_t r = rows.size(0), n = rows.size(1);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const Tensor scratch = scratch_bytes(rows, cuda::soft_scratch_bytes(r, n));
  const cuda::SoftScratch parts = cuda::soft_scratch(scratch.data_ptr(), r, n);
  select_or_flag<T>(magnitude, /*soft=*/true, rows, k, parts.selection, stream);
  const auto doubles = rows.options().dtype(at::kDouble);
  generic::SoftResult result{at::empty_like(rows), {}, {}};
  if (save) result.c = at::empty({r, n}, doubles), result.row_state = at::empty({r, 3}, doubles);
  cuda::soft_forward<T>(magnitude, rows.data_ptr<T>(), r, n, k, l, p, parts.selection, parts.window, parts.sort,
                        parts.sort_bytes, result.out.data_ptr<T>(), save ? result.c.data_ptr<double>() : nullptr,
                        save ? result.row_state.data_ptr<double>() : nullptr, stream);
  return result;
}

generic::SoftResult soft_rows(Operator op, const Tensor& rows, int64_t k, double l, double p, bool save) {
  if (rows.numel() == 0) return generic::soft_topk_rows(op, rows, k, l, p, save);  // nothing to launch
  const c10::cuda::CUDAGuard guard(rows.device());
  if (rows.scalar_type() == at::kDouble) return soft_rows_as<double>(op, rows, k, l, p, save);
  return soft_rows_as<float>(op, rows, k, l, p, save);
}

template <class T>
Tensor hard_rows_as(Operator op, const Tensor& rows, int64_t k) {
  const bool magnitude = op == Operator::magnitude;
  const int64_t r = rows.size(0), n = rows.size(1);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const Tensor scratch = scratch_bytes(rows, cuda::hard_scratch_bytes(r, n));
  const cuda::HardScratch parts = cuda::hard_scratch(scratch.data_ptr(), r, n);
  select_or_flag<T>(magnitude, /*soft=*/false, rows, k, parts.selection, stream);
  Tensor out = at::empty_like(rows);
  cuda::hard_forward<T>(magnitude, rows.data_ptr<T>(), r, n, k, parts.selection, parts.tie_counts,
                        out.data_ptr<T>(), stream);
  return out;
}

Tensor hard_rows(Operator op, const Tensor& rows, int64_t k) {
  if (rows.numel() == 0) return at::empty_like(rows);
  const c10::cuda::CUDAGuard guard(rows.device());
  return rows.scalar_type() == at::kDouble ? hard_rows_as<double>(op, rows, k) : hard_rows_as<float>(op, rows, k);
}

template <class T>
Tensor product_rows_as(Operator op, bool transpose, const Tensor& v, const Tensor& x, const Tensor& c,
                       const Tensor& state) {
  Tensor out = at::empty_like(v);
  cuda::jacobian_product<T>(op == Operator::magnitude, transpose, v.data_ptr<T>(),
                            x.defined() ? x.data_ptr<T>() : nullptr, c.data_ptr<double>(), state.data_ptr<double>(),
                            v.size(0), v.size(1), out.data_ptr<T>(), at::cuda::getCurrentCUDAStream());
  return out;
}

Tensor product_rows(Operator op, bool transpose, const Tensor& v, const Tensor& x, const Tensor& c,
                    const Tensor& state) {
  if (v.numel() == 0) return at::zeros_like(v);
  const c10::cuda::CUDAGuard guard(v.device());
  return v.scalar_type() == at::kDouble ? product_rows_as<double>(op, transpose, v, x, c, state)
                                        : product_rows_as<float>(op, transpose, v, x, c, state);
}

const RowsImplementation cuda_rows{soft_rows, hard_rows, product_rows};

std::tuple<Tensor, Tensor, Tensor> soft_op(Operator op, const Tensor& x, int64_t k, double l, double p, int64_t dim,
                                           c10::string_view solver, std::optional<int64_t> num_iter, bool save) {
  // The kernels solve exactly ("cuda_kernel" checks as "auto"); "dykstra" stays on the ATen iterations.
  if (soft_uses_kernels(solver)) return soft_topk_on_rows(cuda_rows, op, x, k, l, p, dim, "auto", num_iter, save);
  return soft_topk(op, x, k, l, p, dim, solver, num_iter, save);  // the verified device-generic path
}

Tensor hard_op(Operator op, const Tensor& x, int64_t k, int64_t dim) {
  if (kernels_enabled().load()) return hard_topk_on_rows(cuda_rows, op, x, k, dim);
  return hard_topk(op, x, k, dim);
}

Tensor product_op(Operator op, bool transpose, const Tensor& v, const Tensor* x, const Tensor& c,
                  const Tensor& row_state, int64_t dim) {
  if (kernels_enabled().load()) return jacobian_product_on_rows(cuda_rows, op, transpose, v, x, c, row_state, dim);
  return jacobian_product(op, transpose, v, x, c, row_state, dim);
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
  using sparsetopk::torch::generic::Operator;
  using Tensor = at::Tensor;
  m.impl("soft_topk_mask", [](const Tensor& x, int64_t k, double l, double p, int64_t dim, c10::string_view solver,
                              std::optional<int64_t> num_iter) {
    return std::get<0>(soft_op(Operator::mask, x, k, l, p, dim, solver, num_iter, false));
  });
  m.impl("soft_topk_mag", [](const Tensor& x, int64_t k, double l, double p, int64_t dim, c10::string_view solver,
                              std::optional<int64_t> num_iter) {
    return std::get<0>(soft_op(Operator::magnitude, x, k, l, p, dim, solver, num_iter, false));
  });
  m.impl("hard_topk_mask", [](const Tensor& x, int64_t k, int64_t dim) { return hard_op(Operator::mask, x, k, dim); });
  m.impl("hard_topk_mag",
         [](const Tensor& x, int64_t k, int64_t dim) { return hard_op(Operator::magnitude, x, k, dim); });
  m.impl("_soft_topk_mask_forward", [](const Tensor& x, int64_t k, double l, double p, int64_t dim,
                                       c10::string_view solver, std::optional<int64_t> num_iter) {
    return soft_op(Operator::mask, x, k, l, p, dim, solver, num_iter, true);
  });
  m.impl("_soft_topk_mag_forward", [](const Tensor& x, int64_t k, double l, double p, int64_t dim,
                                       c10::string_view solver, std::optional<int64_t> num_iter) {
    return soft_op(Operator::magnitude, x, k, l, p, dim, solver, num_iter, true);
  });
  m.impl("_soft_topk_mask_backward", [](const Tensor& grad, const Tensor& c, const Tensor& row_state, int64_t dim) {
    return product_op(Operator::mask, true, grad, nullptr, c, row_state, dim);
  });
  m.impl("_soft_topk_mask_jvp", [](const Tensor& tangent, const Tensor& c, const Tensor& row_state, int64_t dim) {
    return product_op(Operator::mask, false, tangent, nullptr, c, row_state, dim);
  });
  m.impl("_soft_topk_mag_backward",
         [](const Tensor& grad, const Tensor& x, const Tensor& c, const Tensor& row_state, int64_t dim) {
           return product_op(Operator::magnitude, true, grad, &x, c, row_state, dim);
         });
  m.impl("_soft_topk_mag_jvp",
         [](const Tensor& tangent, const Tensor& x, const Tensor& c, const Tensor& row_state, int64_t dim) {
           return product_op(Operator::magnitude, false, tangent, &x, c, row_state, dim);
         });
}
