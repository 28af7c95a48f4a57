#pragma once
// A tiny synthetic 28x28 IDX dataset for the programs' smoke tests, so that
// ctest does not need the real Fashion-MNIST files: class c lights up its own
// band of two pixel rows (rows 2c + 4 and 2c + 5), plus noise.

#include "data/idx.hpp"

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace sparsetopk::apps::testing {

// Writes {split}-images-idx3-ubyte.gz and {split}-labels-idx1-ubyte.gz into dir.
inline void write_synthetic_split(const std::filesystem::path& dir, const std::string& split, int64_t count,
                                  uint64_t seed) {
  IdxImages images;
  images.count = count;
  images.rows = 28;
  images.cols = 28;
  images.pixels.resize(static_cast<size_t>(count * 784));
  std::vector<uint8_t> labels(static_cast<size_t>(count));
  std::mt19937 rng(static_cast<unsigned>(seed));
  for (int64_t i = 0; i < count; ++i) {
    const int label = static_cast<int>(i % 10);
    labels[static_cast<size_t>(i)] = static_cast<uint8_t>(label);
    for (int p = 0; p < 784; ++p) {
      const bool on = p / 28 >= label * 2 + 4 && p / 28 < label * 2 + 6;
      images.pixels[static_cast<size_t>(i * 784 + p)] = static_cast<uint8_t>((on ? 200 : 0) + rng() % 50);
    }
  }
  write_idx_images((dir / (split + "-images-idx3-ubyte.gz")).string(), images);
  write_idx_labels((dir / (split + "-labels-idx1-ubyte.gz")).string(), labels);
}

}  // namespace sparsetopk::apps::testing
