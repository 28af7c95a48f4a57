// Writes the benchmark inputs (bench/data.hpp) as raw float32 files plus a
// manifest, so that bench/sklearn_isotonic.py times scikit-learn on exactly
// the rows the C++ benchmarks use.
//
//   sparsetopk_bench_data DIR   ->  DIR/manifest.json, DIR/x_<rows>x<n>.f32

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "data.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: sparsetopk_bench_data DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  std::ofstream manifest(dir + "/manifest.json");
  manifest << "[\n";
  bool first = true;
  for (const bench::Shape& shape : bench::shapes()) {
    const std::string file = "x_" + std::to_string(shape.rows) + "x" + std::to_string(shape.n) + ".f32";
    const auto x = bench::normal_data(shape);
    std::ofstream out(dir + "/" + file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(x.data()), static_cast<std::streamsize>(x.size() * sizeof(float)));
    if (!out) {
      std::cerr << "cannot write " << dir << "/" << file << "\n";
      return 1;
    }
    manifest << (first ? "" : ",\n") << "  {\"rows\": " << shape.rows << ", \"n\": " << shape.n
             << ", \"k\": " << shape.k << ", \"file\": \"" << file << "\"}";
    first = false;
  }
  manifest << "\n]\n";
  return manifest ? 0 : 1;
}
