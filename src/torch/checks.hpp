#pragma once
// Argument checks of the torch operators. Every message starts with
// "sparsetopk.<op>: " and names the argument and its value.

#include <sparsetopk/arguments.hpp>
#include <sparsetopk/errors.hpp>
#include <sparsetopk/topk.hpp>
#include <sparsetopk/torch.hpp>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ops.hpp"

namespace sparsetopk::torch::detail {

inline std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    default: return c10::toString(type);
  }
}

// A dense tensor of a floating dtype the operators accept, on any device.
inline void check_dense_float(const char* op, const at::Tensor& x, const char* name = "x") {
  TORCH_CHECK(x.layout() == at::kStrided, "sparsetopk.", op, ": ", name, " must be a dense (strided) tensor, got layout ",
              x.layout());
  const at::ScalarType type = x.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, "sparsetopk.",
              op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", dtype_name(type));
}

// The same, on the CPU (the core's kernels).
inline void check_input(const char* op, const at::Tensor& x, const char* name = "x") {
  TORCH_CHECK(x.device().is_cpu(), "sparsetopk.", op, ": only CPU tensors are supported, got ", name, " on ",
              x.device());
  check_dense_float(op, x, name);
}

// Returns dim wrapped to [0, max(x.dim(), 1)); a 0-d tensor counts as one entry.
inline int64_t wrap_dim(const char* op, const at::Tensor& x, int64_t dim) {
  const int64_t ndim = std::max<int64_t>(x.dim(), 1);
  TORCH_CHECK_INDEX(dim >= -ndim && dim < ndim, "sparsetopk.", op, ": dim = ", dim, " is out of range for x with ",
                    x.dim(), " dimension(s) (expected a value in [", -ndim, ", ", ndim - 1, "])");
  return dim < 0 ? dim + ndim : dim;
}

// The number of entries of every slice along the wrapped dim.
inline int64_t slice_size(const at::Tensor& x, int64_t dim) { return x.dim() == 0 ? 1 : x.size(dim); }

// The core's message without its "sparsetopk: " (the torch messages name the op instead).
inline const char* core_message(const InvalidArgument& error) {
  constexpr std::string_view prefix = "sparsetopk: ";
  const std::string_view what = error.what();
  return what.starts_with(prefix) ? error.what() + prefix.size() : error.what();
}

// Applies the core's rules on scalar arguments (sparsetopk/arguments.hpp),
// reporting a broken one as "sparsetopk.<op>: <the core's message><where>",
// where `where` (called only then) says where the value came from.
template <class Rules, class Where>
void apply_rules(const char* op, Rules&& rules, Where&& where) {
  try {
    rules();
  } catch (const InvalidArgument& error) {
    TORCH_CHECK(false, "sparsetopk.", op, ": ", core_message(error), where());
  }
}

// least: 1 for the top-k loss, else 0.
inline void check_k(const char* op, int64_t k, int64_t n, int64_t dim, unsigned least = 0) {
  apply_rules(
      op, [&] { sparsetopk::check_k(k, static_cast<std::size_t>(n), least); },
      [&] { return " (n = x.size(" + std::to_string(dim) + "))"; });
}

inline void check_l_p(const char* op, double l, double p) {
  apply_rules(
      op, [&] { sparsetopk::check_l(l), sparsetopk::check_p(p); }, [] { return std::string(); });
}

// The sizes of x with size `size` along the wrapped dim (a 0-d x: {size}).
inline std::vector<int64_t> sizes_along(const at::Tensor& x, int64_t dim, int64_t size) {
  if (x.dim() == 0) return {size};
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes[static_cast<std::size_t>(dim)] = size;
  return sizes;
}

// A tensor the forward pass saved (c or row_state, ops.hpp): float64, on the
// device of `like`, of the given sizes.
inline void check_saved(const char* op, const at::Tensor& t, const char* name, const at::Tensor& like,
                        const char* like_name, c10::IntArrayRef sizes) {
  TORCH_CHECK(t.device() == like.device(), "sparsetopk.", op, ": ", name, " is on ", t.device(), " but ", like_name,
              " is on ", like.device());
  TORCH_CHECK(t.layout() == at::kStrided, "sparsetopk.", op, ": ", name, " must be a dense (strided) tensor, got layout ",
              t.layout());
  TORCH_CHECK(t.scalar_type() == at::kDouble, "sparsetopk.", op, ": ", name, " must be float64, got ",
              dtype_name(t.scalar_type()));
  TORCH_CHECK(t.sizes() == sizes, "sparsetopk.", op, ": ", name, " has shape ", t.sizes(), " but ", like_name,
              " needs ", sizes);
}

// The checks of a derivative op of `form` (transpose: the backward, whose v is
// "grad"; else the JVP, whose v is "tangent") on v, x, row_state, l and p; with
// `cpu`, v and x must be CPU tensors (the core's kernels). Returns dim wrapped.
inline int64_t check_product(Form form, bool transpose, bool cpu, const at::Tensor& v, const at::Tensor& x,
                             const at::Tensor& row_state, double l, double p, int64_t dim) {
  const char* op = product_name(form, transpose);
  const char* v_name = transpose ? "grad" : "tangent";
  const auto check_tensor = cpu ? check_input : check_dense_float;
  check_tensor(op, v, v_name);
  dim = wrap_dim(op, v, dim);
  check_tensor(op, x, "x");
  TORCH_CHECK(x.sizes() == v.sizes(), "sparsetopk.", op, ": x has shape ", x.sizes(), " but ", v_name,
              " has shape ", v.sizes());
  TORCH_CHECK(x.device() == v.device(), "sparsetopk.", op, ": x is on ", x.device(), " but ", v_name, " is on ",
              v.device());
  check_saved(op, row_state, "row_state", v, v_name, sizes_along(v, dim, kRowStateSize));
  check_l_p(op, l, p);
  return dim;
}

// The torch operators' solver choice (a superset of the core's sparsetopk::Solver).
using Solver = sparsetopk::torch::Solver;

// The core's solver for a choice that runs the core's exact solvers.
inline sparsetopk::Solver core_solver(Solver solver) {
  if (solver == Solver::pav) return sparsetopk::Solver::pav;
  if (solver == Solver::threshold) return sparsetopk::Solver::threshold;
  return sparsetopk::Solver::automatic;
}

inline Solver parse_solver(const char* op, c10::string_view name) {
  if (name == "auto") return Solver::automatic;
  if (name == "pav") return Solver::pav;
  if (name == "threshold") return Solver::threshold;
  if (name == "generic") return Solver::generic;
  if (name == "dykstra") return Solver::dykstra;
  TORCH_CHECK(name != "cuda_kernel", "sparsetopk.", op, ": solver = \"cuda_kernel\" (the UNVERIFIED CUDA kernels, "
              "docs/gpu.md) needs a CUDA tensor and libsparsetopk_torch_cuda.so");
  TORCH_CHECK(false, "sparsetopk.", op, ": solver = \"", std::string(name),
              "\" is not one of \"auto\", \"pav\", \"threshold\", \"generic\", \"dykstra\"");
}

inline const char* solver_name(Solver solver) {
  switch (solver) {
    case Solver::automatic: return "auto";
    case Solver::pav: return "pav";
    case Solver::threshold: return "threshold";
    case Solver::generic: return "generic";
    case Solver::dykstra: return "dykstra";
  }
  TORCH_CHECK(false, "sparsetopk: solver = ", static_cast<int>(solver), " is not a known sparsetopk::torch::Solver");
}

// Dykstra's iterations when num_iter is not given: enough for a max error of
// 1e-3 on standard-normal rows of n = 1024 with l = 0.3 (docs/dykstra.md).
constexpr int64_t kDykstraDefaultIterations = 10000;

// A soft operator's solver and, for Dykstra, its iteration count (0 otherwise).
struct SolverChoice {
  Solver solver;
  int64_t iterations;
};

// The solver named `name`, checked against p and num_iter: "dykstra" needs
// p = 2 and takes num_iter >= 1 (default kDykstraDefaultIterations); the
// others take no num_iter.
inline SolverChoice choose_solver(const char* op, c10::string_view name, double p, std::optional<int64_t> num_iter) {
  const Solver solver = parse_solver(op, name);
  if (solver != Solver::dykstra) {
    TORCH_CHECK(!num_iter.has_value(), "sparsetopk.", op, ": num_iter = ", num_iter.value_or(0),
                " is for solver = \"dykstra\" only, got solver = \"", std::string(name), "\"");
    return {solver, 0};
  }
  TORCH_CHECK(p == 2.0, "sparsetopk.", op, ": solver = \"dykstra\" needs p = 2, got p = ", p);
  apply_rules(op, [&] { sparsetopk::check_iterations(num_iter.value_or(1), "num_iter"); }, [] { return std::string(); });
  return {solver, num_iter.value_or(kDykstraDefaultIterations)};
}

}  // namespace sparsetopk::torch::detail
