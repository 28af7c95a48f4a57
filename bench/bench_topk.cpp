// Speed of the operators against floors (nth_element, sort) and LibTorch's
// at::topk, on the same float32 data (bench/data.hpp), in one process.
//
// Every benchmark is named  op/solver/p/rows x n/k/threads  ("-" where a field
// does not apply) and carries the same fields as counters, which
// bench/report.py reads from the JSON output.

#include <benchmark/benchmark.h>
#include <sparsetopk/sparsetopk.hpp>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data.hpp"

#ifdef SPARSETOPK_BENCH_TORCH
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#endif

namespace {

using bench::Shape;

// Inputs and outputs of one shape, built once and shared by its benchmarks.
struct Case {
  Shape shape;
  std::vector<float> x, g, out, grad;
  std::vector<double> sorted;  // each row sorted descending, for solve_isotonic
  std::vector<double> w;       // k ones then zeros
  sparsetopk::Workspace workspace;
  std::vector<sparsetopk::RowState> row_state;  // one per row, for the VJP

  explicit Case(const Shape& s)
      : shape(s), x(bench::normal_data(s)), out(s.size()), grad(s.size()), row_state(s.rows) {
    g = bench::normal_data({s.rows, s.n + 1, s.k});  // another draw, for the cotangent
    g.resize(s.size());
  }
  void prepare_sorted() {
    if (!sorted.empty()) return;
    sorted.assign(x.begin(), x.end());
    for (std::size_t r = 0; r < shape.rows; ++r) {
      const auto row = sorted.begin() + static_cast<std::ptrdiff_t>(r * shape.n);
      std::sort(row, row + static_cast<std::ptrdiff_t>(shape.n), std::greater<>());
    }
    w.assign(shape.n, 0.0);
    std::fill(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(shape.k), 1.0);
  }
};

Case& case_for(const Shape& shape) {
  static std::map<std::string, std::unique_ptr<Case>> cache;
  auto& slot = cache[shape.label()];
  if (!slot) slot = std::make_unique<Case>(shape);
  return *slot;
}

constexpr double kL = 0.1;  // the regularization strength of every soft benchmark

void set_threads(std::size_t threads) {
  sparsetopk::set_num_threads(threads);
#ifdef SPARSETOPK_BENCH_TORCH
  at::set_num_threads(static_cast<int>(threads));
#endif
}

sparsetopk::SoftTopkOptions soft_options(double p, sparsetopk::Solver solver) {
  sparsetopk::SoftTopkOptions o;
  o.l = kL;
  o.p = p;
  o.solver = solver;
  return o;
}

std::string p_text(double p) { return p == 2.0 ? "p=2" : "p=4_3"; }

// Registers `body(state, case)`, run with `threads` threads on `shape`.
void add(const std::string& op, const std::string& solver, double p, const Shape& shape, std::size_t threads,
         std::function<void(benchmark::State&, Case&)> body, const std::string& group = "main") {
  const std::string name = op + "/" + solver + "/" + (p > 0 ? p_text(p) : "-") + "/" + std::to_string(shape.rows) +
                           "x" + std::to_string(shape.n) + "/k=" + std::to_string(shape.k) +
                           "/threads=" + std::to_string(threads) + "/" + group;
  benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
    Case& c = case_for(shape);
    set_threads(threads);
    body(state, c);
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * shape.size()));
    state.counters["rows"] = static_cast<double>(shape.rows);
    state.counters["n"] = static_cast<double>(shape.n);
    state.counters["k"] = static_cast<double>(shape.k);
    state.counters["threads"] = static_cast<double>(threads);
    state.counters["p"] = p;
  })->UseRealTime()->Unit(benchmark::kMicrosecond);
}

// ---- floors: what any exact top-k must at least do ------------------------

void floor_nth_element(benchmark::State& state, Case& c) {
  const auto [rows, n, k] = c.shape;
  std::vector<float> buffer(n);
  for (auto _ : state) {
    for (std::size_t r = 0; r < rows; ++r) {
      std::copy_n(c.x.begin() + static_cast<std::ptrdiff_t>(r * n), n, buffer.begin());
      std::nth_element(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(k - 1), buffer.end(),
                       std::greater<>());
      benchmark::DoNotOptimize(buffer[k - 1]);
    }
  }
}

void floor_sort(benchmark::State& state, Case& c) {
  const auto [rows, n, k] = c.shape;
  std::vector<float> buffer(n);
  for (auto _ : state) {
    for (std::size_t r = 0; r < rows; ++r) {
      std::copy_n(c.x.begin() + static_cast<std::ptrdiff_t>(r * n), n, buffer.begin());
      std::sort(buffer.begin(), buffer.end(), std::greater<>());
      benchmark::DoNotOptimize(buffer[k - 1]);
    }
  }
}

#ifdef SPARSETOPK_BENCH_TORCH
void torch_topk(benchmark::State& state, Case& c, bool sorted) {
  const auto [rows, n, k] = c.shape;
  const at::Tensor x = at::from_blob(c.x.data(), {static_cast<int64_t>(rows), static_cast<int64_t>(n)}, at::kFloat);
  for (auto _ : state) {
    auto result = at::topk(x, static_cast<int64_t>(k), -1, /*largest=*/true, sorted);
    benchmark::DoNotOptimize(std::get<0>(result).data_ptr());
  }
}
#endif

// ---- ours -----------------------------------------------------------------

void hard_mask(benchmark::State& state, Case& c) {
  for (auto _ : state) {
    sparsetopk::hard_topk_mask<float>(c.x, c.shape.n, c.shape.k, c.out);
    benchmark::DoNotOptimize(c.out.data());
  }
}

void soft_forward(benchmark::State& state, Case& c, bool magnitude, double p, sparsetopk::Solver solver,
                  bool save_state) {
  const auto options = soft_options(p, solver);
  const std::span<sparsetopk::RowState> row_state = save_state ? std::span(c.row_state) : std::span<sparsetopk::RowState>();
  auto forward = [&] {
    if (magnitude)
      sparsetopk::soft_topk_mag<float>(c.x, c.shape.n, c.shape.k, c.out, options, row_state, &c.workspace);
    else
      sparsetopk::soft_topk_mask<float>(c.x, c.shape.n, c.shape.k, c.out, options, row_state, &c.workspace);
  };
  forward();  // untimed: sizes the workspace once, as repeated calls would
  for (auto _ : state) {
    forward();
    benchmark::DoNotOptimize(c.out.data());
  }
}

void soft_backward(benchmark::State& state, Case& c, bool magnitude, double p) {
  const auto options = soft_options(p, sparsetopk::Solver::automatic);
  if (magnitude)
    sparsetopk::soft_topk_mag<float>(c.x, c.shape.n, c.shape.k, c.out, options, c.row_state, &c.workspace);
  else
    sparsetopk::soft_topk_mask<float>(c.x, c.shape.n, c.shape.k, c.out, options, c.row_state, &c.workspace);
  for (auto _ : state) {
    if (magnitude)
      sparsetopk::soft_topk_mag_vjp<float>(c.x, c.shape.n, c.row_state, options, c.g, c.grad);
    else
      sparsetopk::soft_topk_mask_vjp<float>(c.x, c.shape.n, c.row_state, options, c.g, c.grad);
    benchmark::DoNotOptimize(c.grad.data());
  }
}

void dykstra_forward(benchmark::State& state, Case& c, bool magnitude, std::size_t iterations) {
  sparsetopk::DykstraOptions options;
  options.l = kL;
  options.iterations = iterations;
  for (auto _ : state) {
    if (magnitude)
      sparsetopk::soft_topk_mag_dykstra<float>(c.x, c.shape.n, c.shape.k, c.out, options);
    else
      sparsetopk::soft_topk_mask_dykstra<float>(c.x, c.shape.n, c.shape.k, c.out, options);
    benchmark::DoNotOptimize(c.out.data());
  }  // (no workspace argument: its per-thread scratch is allocated on every call)
}

// The bare isotonic problem of bench/sklearn_isotonic.py: each row already
// sorted, p = 2, mask form (the projection of z = s - l w).
void isotonic(benchmark::State& state, Case& c) {
  c.prepare_sorted();
  const auto [rows, n, k] = c.shape;
  for (auto _ : state) {
    for (std::size_t r = 0; r < rows; ++r) {
      const std::span<const double> s(c.sorted.data() + r * n, n);
      auto solution = sparsetopk::solve_isotonic(s, c.w, kL, 2.0, sparsetopk::Form::mask);
      benchmark::DoNotOptimize(solution.v.data());
    }
  }
}

void register_all() {
  using sparsetopk::Solver;
  const double ps[] = {2.0, 4.0 / 3.0};
  for (const Shape& shape : bench::shapes()) {
    // Full sorts of a 10^7 row take seconds per call: PAV and Dykstra are
    // skipped there (the threshold solver is the one meant for it).
    const bool huge = shape.n >= 10000000;
    add("floor_nth_element", "-", 0, shape, 1, floor_nth_element);
    add("floor_sort", "-", 0, shape, 1, floor_sort);
    add("solve_isotonic", "pav", 2.0, shape, 1, isotonic);
    for (std::size_t threads : {1, 2}) {
#ifdef SPARSETOPK_BENCH_TORCH
      add("torch_topk", "unsorted", 0, shape, threads, [](auto& s, Case& c) { torch_topk(s, c, false); });
      add("torch_topk", "sorted", 0, shape, threads, [](auto& s, Case& c) { torch_topk(s, c, true); });
#endif
      add("hard_topk_mask", "-", 0, shape, threads, hard_mask);
      for (bool magnitude : {false, true}) {
        const std::string op = magnitude ? "soft_mag" : "soft_mask";
        for (double p : ps) {
          add(op + "_fwd", "threshold", p, shape, threads,
              [=](auto& s, Case& c) { soft_forward(s, c, magnitude, p, Solver::threshold, false); });
          add(op + "_fwd_saved", "threshold", p, shape, threads,
              [=](auto& s, Case& c) { soft_forward(s, c, magnitude, p, Solver::threshold, true); });
          if (!huge)
            add(op + "_fwd", "pav", p, shape, threads,
                [=](auto& s, Case& c) { soft_forward(s, c, magnitude, p, Solver::pav, false); });
          add(op + "_bwd", "-", p, shape, threads, [=](auto& s, Case& c) { soft_backward(s, c, magnitude, p); });
        }
        if (!huge)
          add((magnitude ? "dykstra_mag" : "dykstra_mask") + std::string("_fwd"), "iterations=100", 2.0, shape,
              threads, [=](auto& s, Case& c) { dykstra_forward(s, c, magnitude, 100); });
      }
    }
  }
  // Time per element against n at fixed k/n = 1%, one thread.
  for (const Shape& shape : bench::sweep()) {
    for (double p : ps)
      add("soft_mask_fwd", "threshold", p, shape, 1,
          [=](auto& s, Case& c) { soft_forward(s, c, false, p, Solver::threshold, false); }, "sweep");
    add("floor_nth_element", "-", 0, shape, 1, floor_nth_element, "sweep");
#ifdef SPARSETOPK_BENCH_TORCH
    add("torch_topk", "unsorted", 0, shape, 1, [](auto& s, Case& c) { torch_topk(s, c, false); }, "sweep");
#endif
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
#ifdef SPARSETOPK_BENCH_TORCH
  benchmark::AddCustomContext("libtorch", std::string("LibTorch ") + SPARSETOPK_TORCH_VERSION +
                                              " at::topk, threads set per benchmark with at::set_num_threads");
#else
  benchmark::AddCustomContext("libtorch", "not found: at::topk benchmarks skipped");
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
