// Accuracy of Dykstra's algorithm (p = 2) against the exact solver
// (Solver::pav) as a function of the iteration count and n: the largest
// absolute difference of the outputs over a batch of random normal rows.
//
//   sparsetopk_dykstra_accuracy [OUT.json]   (a table on stdout; JSON rows to OUT.json)

#include <sparsetopk/sparsetopk.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "data.hpp"

namespace {

struct Result {
  std::string op;
  double l;
  std::size_t n, k, rows, iterations;
  double max_abs_error, seconds;
};

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Result> results;
  const std::size_t rows = 64;
  std::printf("%-5s %5s %5s %4s %10s %14s %10s\n", "op", "l", "n", "k", "iterations", "max_abs_error", "ms/call");
  for (const char* op : {"mask", "mag"})
    for (double l : {0.1, 1.0})
      for (std::size_t n : {8, 64, 512}) {
        const std::size_t k = n / 8;
        const auto xf = bench::normal_data({rows, n, k});
        const std::vector<double> x(xf.begin(), xf.end());
        const bool mask = std::string(op) == "mask";
        sparsetopk::SoftTopkOptions exact_options;
        exact_options.l = l;
        exact_options.p = 2.0;
        exact_options.solver = sparsetopk::Solver::pav;
        std::vector<double> exact(x.size()), approx(x.size());
        if (mask)
          sparsetopk::soft_topk_mask<double>(x, n, k, exact, exact_options);
        else
          sparsetopk::soft_topk_mag<double>(x, n, k, exact, exact_options);
        for (std::size_t iterations : {10, 100, 1000, 10000}) {
          sparsetopk::DykstraOptions options;
          options.l = l;
          options.iterations = iterations;
          const auto start = std::chrono::steady_clock::now();
          if (mask)
            sparsetopk::soft_topk_mask_dykstra<double>(x, n, k, approx, options);
          else
            sparsetopk::soft_topk_mag_dykstra<double>(x, n, k, approx, options);
          const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          const Result r{op, l, n, k, rows, iterations, max_abs_diff(approx, exact), seconds};
          std::printf("%-5s %5g %5zu %4zu %10zu %14.3g %10.3f\n", op, l, n, k, iterations, r.max_abs_error,
                      seconds * 1e3);
          results.push_back(r);
        }
      }
  if (argc > 1) {
    std::ofstream out(argv[1]);
    out << "[\n";
    for (std::size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      char line[320];
      std::snprintf(line, sizeof line,
                    "  {\"op\": \"%s\", \"l\": %g, \"n\": %zu, \"k\": %zu, \"rows\": %zu, \"iterations\": %zu, "
                    "\"max_abs_error\": %.6g, \"seconds\": %.6g}%s\n",
                    r.op.c_str(), r.l, r.n, r.k, r.rows, r.iterations, r.max_abs_error, r.seconds,
                    i + 1 < results.size() ? "," : "");
      out << line;
    }
    out << "]\n";
    if (!out) return 1;
  }
  return 0;
}
