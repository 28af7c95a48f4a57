// The global operators over a list of tensors (sparsetopk/global.hpp): their
// schemas, their CPU kernels,
// and the core's Reduction over a c10d ProcessGroup for `group` (the group's
// name; "" for one process). The fake kernels and the autograd formulas are
// registered by the Python package (python/sparsetopk/_global.py).

#include <sparsetopk/global.hpp>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checks.hpp"
#include "spans.hpp"

namespace sparsetopk::torch::detail {
namespace {

// What the global operators sent through their collectives in this process,
// since the last reset: collectives and bytes this rank contributed (the
// payload; a ring all-reduce moves about twice that over the wire).
std::atomic<std::int64_t> traffic_collectives{0}, traffic_bytes{0};

// The core's Reduction over a ProcessGroup: every collective is blocking.
class GroupReduction final : public sparsetopk::Reduction {
 public:
  explicit GroupReduction(c10::intrusive_ptr<c10d::ProcessGroup> group) : group_(std::move(group)) {}
  std::size_t rank() const override { return static_cast<std::size_t>(group_->getRank()); }
  std::size_t ranks() const override { return static_cast<std::size_t>(group_->getSize()); }
  void sum(std::span<double> values) override { all_reduce(values, c10d::ReduceOp::SUM); }
  void max(std::span<double> values) override { all_reduce(values, c10d::ReduceOp::MAX); }
  std::vector<double> gather(std::span<const double> values) override {
    std::vector<at::Tensor> input{tensor_of(values)};
    std::vector<std::vector<at::Tensor>> output(1);
    for (std::size_t r = 0; r < ranks(); ++r) output[0].push_back(at::empty_like(input[0]));
    count(values.size());
    group_->allgather(output, input)->wait();
    std::vector<double> all;
    all.reserve(values.size() * ranks());
    for (const at::Tensor& part : output[0]) all.insert(all.end(), part.data_ptr<double>(), part.data_ptr<double>() + part.numel());
    return all;
  }

 private:
  static at::Tensor tensor_of(std::span<const double> values) {
    at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::kDouble);
    std::copy(values.begin(), values.end(), t.data_ptr<double>());
    return t;
  }
  static void count(std::size_t values) {
    traffic_collectives += 1;
    traffic_bytes += static_cast<std::int64_t>(values * sizeof(double));
  }
  void all_reduce(std::span<double> values, c10d::ReduceOp op) {
    std::vector<at::Tensor> tensors{tensor_of(values)};
    c10d::AllreduceOptions options;
    options.reduceOp = op;
    count(values.size());
    group_->allreduce(tensors, options)->wait();
    std::copy(tensors[0].data_ptr<double>(), tensors[0].data_ptr<double>() + values.size(), values.begin());
  }
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
};

// The reduction for `group`: nullptr (one process) for "".
struct GroupChoice {
  std::optional<GroupReduction> reduction;
  sparsetopk::Reduction* get() { return reduction ? &*reduction : nullptr; }
};

GroupChoice choose_group(const char* op, c10::string_view group) {
  GroupChoice choice;
  if (group.empty()) return choice;
  c10::intrusive_ptr<c10d::ProcessGroup> resolved;
  try {
    resolved = c10d::resolve_process_group(std::string(group));
  } catch (const std::exception& error) {
    TORCH_CHECK(false, "sparsetopk.", op, ": group = \"", std::string(group),
                "\" is not a registered process group: ", error.what());
  }
  choice.reduction.emplace(std::move(resolved));
  return choice;
}

// Every tensor of `tensors` (called `name`): on the CPU, dense, float32 or
// float64 like the first one (`like`, its dtype). Contiguous views of them.
std::vector<at::Tensor> check_list(const char* op, at::TensorList tensors, const char* name,
                                   std::optional<at::ScalarType> like = std::nullopt) {
  TORCH_CHECK(!tensors.empty(), "sparsetopk.", op, ": ", name, " is an empty list; pass at least one tensor");
  const at::ScalarType type = like.value_or(tensors[0].scalar_type());
  std::vector<at::Tensor> result;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const std::string entry = std::string(name) + "[" + std::to_string(i) + "]";
    TORCH_CHECK(t.device().is_cpu(), "sparsetopk.", op, ": ", entry, " is on ", t.device(),
                "; the global operators run on the CPU only (move the tensors to the CPU)");
    TORCH_CHECK(t.layout() == at::kStrided, "sparsetopk.", op, ": ", entry,
                " must be a dense (strided) tensor, got layout ", t.layout());
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "sparsetopk.", op, ": ", entry,
                " must be float32 or float64, got ", dtype_name(t.scalar_type()));
    TORCH_CHECK(t.scalar_type() == type, "sparsetopk.", op, ": ", entry, " is ", dtype_name(t.scalar_type()),
                " but x[0] is ", dtype_name(type), "; every tensor must have the same dtype");
    result.push_back(t.contiguous());
  }
  return result;
}

template <class T>
std::vector<std::span<const T>> const_parts(const std::vector<at::Tensor>& tensors) {
  std::vector<std::span<const T>> parts;
  for (const at::Tensor& t : tensors) parts.push_back(in_span<T>(t));
  return parts;
}

template <class T>
std::vector<std::span<T>> out_parts(std::vector<at::Tensor>& tensors) {
  std::vector<std::span<T>> parts;
  for (at::Tensor& t : tensors) parts.push_back(out_span<T>(t));
  return parts;
}

std::vector<at::Tensor> empty_like_all(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : tensors) out.push_back(at::empty_like(t, at::MemoryFormat::Contiguous));
  return out;
}

// Runs a core call, reporting its InvalidArgument as "sparsetopk.<op>: ...".
// The core checks k, l and p after a first gather that checks every process
// passed the same, so that a bad argument fails on every process alike.
template <class Call>
void run_core(const char* op, Call&& call) {
  apply_rules(op, call, [] { return std::string(" (n: the entries of every tensor in x, over every process)"); });
}

// Calls f(T{}) with T the C++ type of `type` (float32 or float64, checked before).
template <class F>
void dispatch_float(at::ScalarType type, F&& f) {
  if (type == at::kDouble) f(double{});
  else f(float{});
}

const char* soft_name(Form form) { return form == Form::mask ? "soft_topk_mask_global" : "soft_topk_mag_global"; }

std::tuple<std::vector<at::Tensor>, at::Tensor> soft_forward(Form form, at::TensorList x_list, int64_t k, double l,
                                                            double p, c10::string_view group) {
  const char* op = soft_name(form);
  const std::vector<at::Tensor> x = check_list(op, x_list, "x");
  TORCH_CHECK(k >= 0, "sparsetopk.", op, ": k = ", k, " must be >= 0");
  GroupChoice reduction = choose_group(op, group);
  std::vector<at::Tensor> out = empty_like_all(x);
  at::Tensor state = at::zeros({static_cast<int64_t>(RowState::size)}, at::kDouble);
  RowState* saved = reinterpret_cast<RowState*>(state.data_ptr<double>());
  const SoftTopkOptions options{.l = l, .p = p};
  dispatch_float(x[0].scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto in = const_parts<scalar_t>(x);
    const auto outs = out_parts<scalar_t>(out);
    run_core(op, [&] {
      if (form == Form::mask)
        soft_topk_mask_global<scalar_t>(in, static_cast<std::size_t>(k), outs, options, saved, reduction.get());
      else
        soft_topk_mag_global<scalar_t>(in, static_cast<std::size_t>(k), outs, options, saved, reduction.get());
    });
  });
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = out[i].view(x_list[i].sizes());
  return {out, state};
}

std::vector<at::Tensor> soft_product(Form form, bool transpose, at::TensorList v_list, at::TensorList x_list,
                                     const at::Tensor& state, double l, double p, c10::string_view group) {
  const char* op = form == Form::mask ? (transpose ? "soft_topk_mask_global backward" : "soft_topk_mask_global jvp")
                                      : (transpose ? "soft_topk_mag_global backward" : "soft_topk_mag_global jvp");
  const char* v_name = transpose ? "grad" : "tangent";
  const std::vector<at::Tensor> x = check_list(op, x_list, "x");
  const std::vector<at::Tensor> v = check_list(op, v_list, v_name, x[0].scalar_type());
  TORCH_CHECK(v.size() == x.size(), "sparsetopk.", op, ": ", v_name, " has ", v.size(), " tensor(s) but x has ",
              x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    TORCH_CHECK(v[i].sizes() == x[i].sizes(), "sparsetopk.", op, ": ", v_name, "[", i, "] has shape ", v[i].sizes(),
                " but x[", i, "] has shape ", x[i].sizes());
  check_saved(op, state, "state", x[0], "x[0]", {static_cast<int64_t>(RowState::size)});
  GroupChoice reduction = choose_group(op, group);
  const at::Tensor saved_tensor = state.contiguous();
  const RowState& saved = *reinterpret_cast<const RowState*>(saved_tensor.data_ptr<double>());
  std::vector<at::Tensor> out = empty_like_all(x);
  const SoftTopkOptions options{.l = l, .p = p};
  dispatch_float(x[0].scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto in = const_parts<scalar_t>(x), vin = const_parts<scalar_t>(v);
    const auto outs = out_parts<scalar_t>(out);
    run_core(op, [&] {
      auto product = form == Form::mask ? (transpose ? soft_topk_mask_global_vjp<scalar_t> : soft_topk_mask_global_jvp<scalar_t>)
                                        : (transpose ? soft_topk_mag_global_vjp<scalar_t> : soft_topk_mag_global_jvp<scalar_t>);
      product(in, saved, options, vin, outs, reduction.get());
    });
  });
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = out[i].view(x_list[i].sizes());
  return out;
}

std::vector<at::Tensor> hard(Form form, at::TensorList x_list, int64_t k, c10::string_view group) {
  const char* op = form == Form::mask ? "hard_topk_mask_global" : "hard_topk_mag_global";
  const std::vector<at::Tensor> x = check_list(op, x_list, "x");
  TORCH_CHECK(k >= 0, "sparsetopk.", op, ": k = ", k, " must be >= 0");
  GroupChoice reduction = choose_group(op, group);
  std::vector<at::Tensor> out = empty_like_all(x);
  dispatch_float(x[0].scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto in = const_parts<scalar_t>(x);
    const auto outs = out_parts<scalar_t>(out);
    run_core(op, [&] {
      if (form == Form::mask) hard_topk_mask_global<scalar_t>(in, static_cast<std::size_t>(k), outs, reduction.get());
      else hard_topk_mag_global<scalar_t>(in, static_cast<std::size_t>(k), outs, reduction.get());
    });
  });
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = out[i].view(x_list[i].sizes());
  return out;
}

}  // namespace
}  // namespace sparsetopk::torch::detail

// The traffic counters, for tests and benchmarks (ctypes: python/sparsetopk/_global.py).
extern "C" __attribute__((visibility("default"))) void sparsetopk_global_traffic(std::int64_t* collectives,
                                                                                  std::int64_t* bytes) {
  *collectives = sparsetopk::torch::detail::traffic_collectives.load();
  *bytes = sparsetopk::torch::detail::traffic_bytes.load();
}
extern "C" __attribute__((visibility("default"))) void sparsetopk_global_traffic_reset() {
  sparsetopk::torch::detail::traffic_collectives = 0;
  sparsetopk::torch::detail::traffic_bytes = 0;
}

TORCH_LIBRARY_FRAGMENT(sparsetopk, m) {
  // One top-k over every entry of every tensor of x (and of every process of
  // `group`, a ProcessGroup's name; "" for this process only). The forward ops
  // also return the solve's RowState (float64[11]), the state of the derivative ops.
  m.def("_soft_topk_mask_global_forward(Tensor[] x, int k, float l, float p, str group=\"\") "
        "-> (Tensor[] out, Tensor state)");
  m.def("_soft_topk_mag_global_forward(Tensor[] x, int k, float l, float p, str group=\"\") "
        "-> (Tensor[] out, Tensor state)");
  m.def("_soft_topk_mask_global_backward(Tensor[] grad, Tensor[] x, Tensor state, float l, float p, "
        "str group=\"\") -> Tensor[]");
  m.def("_soft_topk_mask_global_jvp(Tensor[] tangent, Tensor[] x, Tensor state, float l, float p, "
        "str group=\"\") -> Tensor[]");
  m.def("_soft_topk_mag_global_backward(Tensor[] grad, Tensor[] x, Tensor state, float l, float p, "
        "str group=\"\") -> Tensor[]");
  m.def("_soft_topk_mag_global_jvp(Tensor[] tangent, Tensor[] x, Tensor state, float l, float p, "
        "str group=\"\") -> Tensor[]");
  m.def("hard_topk_mask_global(Tensor[] x, int k, str group=\"\") -> Tensor[]");
  m.def("hard_topk_mag_global(Tensor[] x, int k, str group=\"\") -> Tensor[]");
}

// The CPU kernels (the fake kernels cover Meta and torch.compile; autograd is
// registered from Python, which also refuses other devices by name first).
TORCH_LIBRARY_IMPL(sparsetopk, CPU, m) {
  using namespace sparsetopk::torch::detail;
  using sparsetopk::Form;
  m.impl("_soft_topk_mask_global_forward",
         [](at::TensorList x, int64_t k, double l, double p, c10::string_view group) {
           return soft_forward(Form::mask, x, k, l, p, group);
         });
  m.impl("_soft_topk_mag_global_forward",
         [](at::TensorList x, int64_t k, double l, double p, c10::string_view group) {
           return soft_forward(Form::magnitude, x, k, l, p, group);
         });
  m.impl("_soft_topk_mask_global_backward", [](at::TensorList v, at::TensorList x, const at::Tensor& state, double l,
                                               double p, c10::string_view group) {
    return soft_product(Form::mask, true, v, x, state, l, p, group);
  });
  m.impl("_soft_topk_mask_global_jvp", [](at::TensorList v, at::TensorList x, const at::Tensor& state, double l,
                                          double p, c10::string_view group) {
    return soft_product(Form::mask, false, v, x, state, l, p, group);
  });
  m.impl("_soft_topk_mag_global_backward", [](at::TensorList v, at::TensorList x, const at::Tensor& state, double l,
                                              double p, c10::string_view group) {
    return soft_product(Form::magnitude, true, v, x, state, l, p, group);
  });
  m.impl("_soft_topk_mag_global_jvp", [](at::TensorList v, at::TensorList x, const at::Tensor& state, double l,
                                         double p, c10::string_view group) {
    return soft_product(Form::magnitude, false, v, x, state, l, p, group);
  });
  m.impl("hard_topk_mask_global",
         [](at::TensorList x, int64_t k, c10::string_view group) { return hard(Form::mask, x, k, group); });
  m.impl("hard_topk_mag_global",
         [](at::TensorList x, int64_t k, c10::string_view group) { return hard(Form::magnitude, x, k, group); });
}
