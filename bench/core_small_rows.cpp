// The core's soft operators alone on the small batches of the Python
// benchmark (bench/bench_torch_small.py): the part of a call that is the
// per-row solve, without torch, its dispatcher or Python.
//
// For every shape (rows x n), k, operator and p, the forward (no state) and
// the forward that saves the state for the backward run in blocks of about
// 20 ms (one Workspace and one RowState per row reused, as the torch kernels
// do); the time per call is the fastest of `--blocks` blocks (default 15), in CPU time
// of the calling thread, so that other processes on the machine inflate it
// less. The core runs on the calling thread only (set_num_threads(1)).
//
//   core_small_rows [--blocks N] [filter]
//
// prints one line per case: shape, k, operator, p, state or not, us per call
// and us per row. `filter` keeps the lines that contain it. The same code runs
// up to 30% faster or slower with the alignment of its loops on the VM of
// docs/performance_python.md: bench/core_layout.sh runs this at six layouts.

#include <sparsetopk/parallel.hpp>
#include <sparsetopk/topk.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <span>
#include <string>
#include <vector>

#ifdef SPARSETOPK_BENCH_PADDING
// SPARSETOPK_BENCH_PADDING bytes of code in front of the core's, which the
// linker places after this file's: bench/core_layout.sh times the same core
// at several code alignments.
#define SPARSETOPK_TEXT(x) #x
#define SPARSETOPK_SKIP(bytes) ".skip " SPARSETOPK_TEXT(bytes)
extern "C" __attribute__((used, noinline)) void sparsetopk_bench_padding() { asm volatile(SPARSETOPK_SKIP(SPARSETOPK_BENCH_PADDING)); }
#endif

namespace {

double thread_cpu_us() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e6 + static_cast<double>(t.tv_nsec) * 1e-3;
}

struct Shape {
  std::size_t rows, n;
};

// The fastest block of `blocks`, in us per call.
template <class Call>
double fastest_block_us(Call&& call, int blocks) {
  double per_call = 0.0;
  std::size_t calls = 1;
  for (;;) {  // calls per block: about 20 ms
    const double start = thread_cpu_us();
    for (std::size_t i = 0; i < calls; ++i) call();
    per_call = (thread_cpu_us() - start) / static_cast<double>(calls);
    if (per_call * static_cast<double>(calls) > 2e4) break;
    calls *= 2;
  }
  for (int b = 0; b < blocks; ++b) {
    const double start = thread_cpu_us();
    for (std::size_t i = 0; i < calls; ++i) call();
    per_call = std::min(per_call, (thread_cpu_us() - start) / static_cast<double>(calls));
  }
  return per_call;
}

}  // namespace

int main(int argc, char** argv) {
  int blocks = 15;
  std::string filter;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "--blocks") == 0 && a + 1 < argc) blocks = std::atoi(argv[++a]);
    else filter = argv[a];
  }
  if (blocks < 1) {
    std::fprintf(stderr, "core_small_rows: --blocks must be at least 1, got %d\n", blocks);
    return 2;
  }
  sparsetopk::set_num_threads(1);
  const Shape shapes[] = {{8, 8}, {64, 8}, {256, 64}, {1024, 64}};
  sparsetopk::Workspace workspace;
  std::mt19937 generator(0);
  std::normal_distribution<float> normal;
  std::printf("# core alone, 1 thread, float32 standard normal, l = 0.1; fastest of %d blocks, CPU time\n", blocks);
  for (const Shape shape : shapes) {
    std::vector<float> x(shape.rows * shape.n), out(x.size());
    std::vector<sparsetopk::RowState> row_state(shape.rows);
    for (float& v : x) v = normal(generator);
    for (const std::size_t k : {std::size_t{2}, std::size_t{4}})
      for (const bool magnitude : {false, true})
        for (const double p : {4.0 / 3.0, 2.0})
          for (const bool save : {false, true}) {
            char name[128];
            std::snprintf(name, sizeof name, "%zux%zu k=%zu %s p=%s %s", shape.rows, shape.n, k,
                          magnitude ? "mag " : "mask", p == 2.0 ? "2  " : "4/3", save ? "state" : "     ");
            if (!filter.empty() && !std::strstr(name, filter.c_str())) continue;
            sparsetopk::SoftTopkOptions options;
            options.p = p;
            const std::span<sparsetopk::RowState> state = save ? std::span(row_state) : std::span<sparsetopk::RowState>();
            const auto call = [&] {
              if (magnitude) sparsetopk::soft_topk_mag<float>(x, shape.n, k, out, options, state, &workspace);
              else sparsetopk::soft_topk_mask<float>(x, shape.n, k, out, options, state, &workspace);
            };
            const double us = fastest_block_us(call, blocks);
            std::printf("%-36s %9.2f us  %7.3f us/row\n", name, us, us / static_cast<double>(shape.rows));
          }
  }
}
