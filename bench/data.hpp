#pragma once
// The benchmark inputs: float32 rows drawn from a standard normal with a fixed
// seed, so every benchmark (and bench/sklearn_isotonic.py, which reads the
// files written by sparsetopk_bench_data) sees the same values.

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace bench {

struct Shape {
  std::size_t rows, n, k;
  std::string label() const { return std::to_string(rows) + "x" + std::to_string(n) + "/k" + std::to_string(k); }
  std::size_t size() const { return rows * n; }
};

// The shapes of docs/performance.md.
inline const std::vector<Shape>& shapes() {
  static const std::vector<Shape> all = {{4096, 64, 2},      {4096, 256, 8},        {256, 1000, 10},
                                         {16, 65536, 1024},  {1, 1000000, 10000},   {1, 10000000, 1000000}};
  return all;
}

// Scaling sweep at fixed k/n = 1% and about 10^6 entries per call (one row
// of 10^7 at the end), for the time-per-element plot.
inline const std::vector<Shape>& sweep() {
  static const std::vector<Shape> all = {{1000, 1000, 10},    {100, 10000, 100},       {10, 100000, 1000},
                                         {1, 1000000, 10000}, {1, 10000000, 100000}};
  return all;
}

constexpr std::uint64_t kSeed = 20230302;

inline std::vector<float> normal_data(const Shape& shape) {
  std::mt19937_64 rng(kSeed + shape.rows * 1000003 + shape.n);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(shape.size());
  for (float& v : x) v = normal(rng);
  return x;
}

}  // namespace bench
