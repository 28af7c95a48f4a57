// XLA FFI handlers of sparsetopk.jax for the CUDA platform, over the kernels
// of src/cuda. UNVERIFIED: compiled and linked, never run on a GPU (no
// session has had one); python/sparsetopk/jax/_ffi.py registers the rows of
// the table at the end (sparsetopk_ffi_targets, ffi_bindings.hpp) only on
// opt-in (SPARSETOPK_JAX_CUDA_KERNELS=1), see docs/jax.md.
//
// The same targets, attributes and layouts as the CPU handlers
// (ffi_handlers.cpp): rows along the last axis, every leading axis a batch
// row; the state of the derivatives is one RowState per row
// (<sparsetopk/row_state.hpp>) as raw bytes, uint32 [..., 2 * RowState::size], exact with or
// without x64; the derivatives (x, state, v) -> J v or J^T v recompute the
// band's c_i from x. Everything runs on XLA's stream; the scratch comes from
// XLA's allocator; nothing synchronizes with the host. Solver "dykstra" has
// no kernel here (an error says so).

#include <cuda_runtime_api.h>

#include <sparsetopk/errors.hpp>
#include <sparsetopk/form.hpp>
#include <sparsetopk/row_state.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

#include "ffi_bindings.hpp"
#include "topk_kernels.hpp"
#include "ffi_checks.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace sparsetopk::jax::cuda_platform {
namespace {

using Stream = ffi::PlatformStream<cudaStream_t>;

struct Rows {
  long long count = 0, n = 0;
};

Rows rows_of(const ffi::AnyBuffer& x) {
  const auto n = static_cast<long long>(row_length(x));
  long long count = 1;  // the product of the leading axes (also for n = 0)
  const auto dims = x.dimensions();
  for (std::size_t i = 0; i + 1 < dims.size(); ++i) count *= static_cast<long long>(dims[i]);
  return {count, n};
}

void check_l_p(double l, double p) {
  if (!(std::isfinite(l) && l > 0.0)) throw InvalidArgument("l must be finite and > 0, got l = " + std::to_string(l));
  if (!(std::isfinite(p) && p > 1.0)) throw InvalidArgument("p must be finite and > 1, got p = " + std::to_string(p));
}

void check_solver(std::string_view solver) {
  if (solver == "dykstra") throw InvalidArgument("solver = \"dykstra\" has no CUDA kernel (use the CPU)");
  if (solver != "auto" && solver != "pav" && solver != "threshold")
    throw InvalidArgument("solver = \"" + std::string(solver) + "\" is not one of \"auto\", \"pav\", \"threshold\"");
}

void* allocate(ffi::ScratchAllocator& scratch, std::size_t bytes) {
  const auto pointer = scratch.Allocate(std::max<std::size_t>(bytes, 1), 256);
  if (!pointer.has_value()) throw std::runtime_error("XLA's scratch allocator failed for " + std::to_string(bytes) + " bytes");
  return *pointer;
}

// The kernels' solver for the handler's solver argument: "pav" sorts the whole
// row; "auto" and "threshold" select the window first (as the core).
Solver kernel_solver(std::string_view solver) { return solver == "pav" ? Solver::pav : Solver::threshold; }

template <class T>
void soft_typed(Form form, Solver solver, cudaStream_t stream, ffi::ScratchAllocator& scratch,
                const ffi::AnyBuffer& x, Rows rows, ffi::AnyBuffer& out, ffi::AnyBuffer* state, int64_t k, double l,
                double p) {
  RowState* states = state ? static_cast<RowState*>(state->untyped_data()) : nullptr;
  cuda::soft_forward<T>(form, solver, static_cast<const T*>(x.untyped_data()), rows.count, rows.n, k, l, p,
                        allocate(scratch, cuda::soft_scratch_bytes(rows.count, rows.n)),
                        static_cast<T*>(out.untyped_data()), states, stream);
}

template <class T>
void hard_typed(Form form, cudaStream_t stream, ffi::ScratchAllocator& scratch, const ffi::AnyBuffer& x, Rows rows,
                ffi::AnyBuffer& out, int64_t k) {
  cuda::hard_forward<T>(form, static_cast<const T*>(x.untyped_data()), rows.count, rows.n, k,
                        allocate(scratch, cuda::hard_scratch_bytes(rows.count, rows.n)),
                        static_cast<T*>(out.untyped_data()), stream);
}

ffi::Error soft(Form form, cudaStream_t stream, ffi::ScratchAllocator& scratch, const ffi::AnyBuffer& x,
                ffi::AnyBuffer& out, ffi::AnyBuffer* state, int64_t k, double l, double p, std::string_view solver) {
  return guarded([&] {
    check_types(x, {&out});
    if (state) check_state(x, *state);
    const Rows rows = rows_of(x);
    checked_k(k, static_cast<std::size_t>(rows.n));
    check_l_p(l, p);
    check_solver(solver);
    if (rows.count == 0) return;
    if (x.element_type() == ffi::DataType::F64)
      soft_typed<double>(form, kernel_solver(solver), stream, scratch, x, rows, out, state, k, l, p);
    else soft_typed<float>(form, kernel_solver(solver), stream, scratch, x, rows, out, state, k, l, p);
  });
}

template <Form form>
ffi::Error soft_entry(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                      ffi::Result<ffi::AnyBuffer> out, int64_t k, double l, double p, std::string_view solver,
                      int64_t /*num_iter*/) {
  return soft(form, stream, scratch, x, *out, nullptr, k, l, p, solver);
}

template <Form form>
ffi::Error soft_with_state_entry(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                                 ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> state, int64_t k,
                                 double l, double p, std::string_view solver, int64_t /*num_iter*/) {
  return soft(form, stream, scratch, x, *out, &*state, k, l, p, solver);
}

template <Form form>
ffi::Error hard_entry(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                      ffi::Result<ffi::AnyBuffer> out, int64_t k) {
  return guarded([&] {
    check_types(x, {&*out});
    const Rows rows = rows_of(x);
    checked_k(k, static_cast<std::size_t>(rows.n));
    if (rows.count * rows.n == 0) return;
    if (x.element_type() == ffi::DataType::F64) hard_typed<double>(form, stream, scratch, x, rows, *out, k);
    else hard_typed<float>(form, stream, scratch, x, rows, *out, k);
  });
}

// J^T v (vjp: transpose) or J v (jvp) at the state the forward pass on x left,
// with its l and p. The mask's J is symmetric: its jvp and vjp are one product.
template <Form form, bool transpose>
ffi::Error product_entry(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x, ffi::AnyBuffer state,
                         ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out, double l, double p) {
  return guarded([&] {
    check_types(x, {&v, &*out});
    check_like_x(x, v, "v");  // (the dtypes: check_types)
    check_like_x(x, *out, "the output");
    check_state(x, state);
    check_l_p(l, p);
    const Rows rows = rows_of(x);
    if (rows.count * rows.n == 0) return;
    const RowState* states = static_cast<const RowState*>(state.untyped_data());
    void* buffer = allocate(scratch, cuda::jacobian_scratch_bytes(rows.count, rows.n));
    if (x.element_type() == ffi::DataType::F64)
      cuda::jacobian_product<double>(form, transpose, static_cast<const double*>(v.untyped_data()),
                                     static_cast<const double*>(x.untyped_data()), states, l, p, rows.count, rows.n,
                                     buffer, static_cast<double*>(out->untyped_data()), stream);
    else
      cuda::jacobian_product<float>(form, transpose, static_cast<const float*>(v.untyped_data()),
                                    static_cast<const float*>(x.untyped_data()), states, l, p, rows.count, rows.n,
                                    buffer, static_cast<float*>(out->untyped_data()), stream);
  });
}

auto cuda_binding() {
  return ffi::Ffi::Bind().Ctx<Stream>().Ctx<ffi::ScratchAllocator>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>();
}

auto product_binding() { return derivative_arguments(ffi::Ffi::Bind().Ctx<Stream>().Ctx<ffi::ScratchAllocator>()); }

// The targets of the CUDA platform: the names of the CPU's (ffi_handlers.cpp);
// _ffi.py registers every row on opt-in.
const Target targets[] = {
    {"sparsetopk_soft_topk_mask", SPARSETOPK_FFI_HANDLER(soft_entry<Form::mask>, cuda_binding().SPARSETOPK_SOFT_ATTRS)},
    {"sparsetopk_soft_topk_mag", SPARSETOPK_FFI_HANDLER(soft_entry<Form::magnitude>, cuda_binding().SPARSETOPK_SOFT_ATTRS)},
    {"sparsetopk_soft_topk_mask_with_state",
     SPARSETOPK_FFI_HANDLER(soft_with_state_entry<Form::mask>, cuda_binding().Ret<ffi::AnyBuffer>().SPARSETOPK_SOFT_ATTRS)},
    {"sparsetopk_soft_topk_mag_with_state",
     SPARSETOPK_FFI_HANDLER(soft_with_state_entry<Form::magnitude>, cuda_binding().Ret<ffi::AnyBuffer>().SPARSETOPK_SOFT_ATTRS)},
    {"sparsetopk_soft_topk_mask_jvp", SPARSETOPK_FFI_HANDLER((product_entry<Form::mask, false>), product_binding())},
    {"sparsetopk_soft_topk_mask_vjp", SPARSETOPK_FFI_HANDLER((product_entry<Form::mask, true>), product_binding())},
    {"sparsetopk_soft_topk_mag_jvp", SPARSETOPK_FFI_HANDLER((product_entry<Form::magnitude, false>), product_binding())},
    {"sparsetopk_soft_topk_mag_vjp", SPARSETOPK_FFI_HANDLER((product_entry<Form::magnitude, true>), product_binding())},
    {"sparsetopk_hard_topk_mask", SPARSETOPK_FFI_HANDLER(hard_entry<Form::mask>, cuda_binding().Attr<int64_t>("k"))},
    {"sparsetopk_hard_topk_mag", SPARSETOPK_FFI_HANDLER(hard_entry<Form::magnitude>, cuda_binding().Attr<int64_t>("k"))},
};

}  // namespace
}  // namespace sparsetopk::jax::cuda_platform

extern "C" std::size_t sparsetopk_ffi_targets(const sparsetopk::jax::Target** rows) {
  *rows = sparsetopk::jax::cuda_platform::targets;
  return std::size(sparsetopk::jax::cuda_platform::targets);
}
