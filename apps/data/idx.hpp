#pragma once
// Reading (and, for tests, writing) gzip-compressed IDX files, the format of
// MNIST and Fashion-MNIST, and a seeded shuffling batcher over them.
//
// IDX: a big-endian header (two zero bytes, a type byte, the number of
// dimensions d, then d uint32 sizes) followed by the data. Only unsigned bytes
// (type 0x08) are supported: images are magic 0x00000803 (count, rows, cols),
// labels are magic 0x00000801 (count). Every error throws IdxError, whose
// message names the file and the problem.

#include <torch/types.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sparsetopk::apps {

class IdxError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct IdxImages {
  int64_t count = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> pixels;  // count * rows * cols, row-major
};

// Reads an images file (magic 0x00000803). At most `limit` images are read
// when limit >= 0 (the header must still be valid).
IdxImages read_idx_images(const std::string& path, int64_t limit = -1);

// Reads a labels file (magic 0x00000801). At most `limit` labels when limit >= 0.
std::vector<uint8_t> read_idx_labels(const std::string& path, int64_t limit = -1);

// Writes gzip IDX files (used by the tests and the smoke test to make small
// synthetic datasets). pixels.size() must be count * rows * cols.
void write_idx_images(const std::string& path, const IdxImages& images);
void write_idx_labels(const std::string& path, const std::vector<uint8_t>& labels);

// An in-memory labelled image set.
struct Dataset {
  at::Tensor images;  // [N, rows * cols] uint8
  at::Tensor labels;  // [N] int64
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  int64_t features() const { return images.defined() ? images.size(1) : 0; }
};

// Reads an images file and a labels file and checks that the counts agree.
// limit >= 0 keeps the first `limit` examples.
Dataset load_dataset(const std::string& images_path, const std::string& labels_path,
                     int64_t limit = -1);

// Fashion-MNIST / MNIST file names inside `dir`: split is "train" or "t10k".
Dataset load_mnist_split(const std::string& dir, const std::string& split, int64_t limit = -1);

// Images as float32 in [0, 1] (pixel / 255), shape [N, rows * cols].
at::Tensor to_float(const at::Tensor& images_u8);

// Square images [B, side * side] (row-major) as [B, (side / patch)^2, patch^2]:
// non-overlapping patch x patch tiles in row-major order, each row-major.
// Throws std::invalid_argument when patch does not divide side or the shape is wrong.
at::Tensor patchify(const at::Tensor& images, int64_t side, int64_t patch);
// The same for rows x cols images [B, rows * cols]: [B, (rows / patch) *
// (cols / patch), patch^2], patches row-major over the (rows / patch) x
// (cols / patch) grid.
at::Tensor patchify(const at::Tensor& images, int64_t rows, int64_t cols, int64_t patch);

// Seeded shuffling batcher: every epoch visits each example once, in an order
// drawn from a std::mt19937_64 seeded with (seed, epoch), so runs are
// reproducible across platforms. The last batch of an epoch may be smaller.
class Batcher {
 public:
  Batcher(const Dataset& data, int64_t batch_size, uint64_t seed);

  struct Batch {
    at::Tensor x;  // [B, features] float32 in [0, 1]
    at::Tensor y;  // [B] int64
  };
  // The next batch; starts (and reshuffles for) a new epoch when needed.
  Batch next();

  int64_t epoch() const { return epoch_; }  // epochs started so far - 1
  int64_t batches_per_epoch() const;

 private:
  void reshuffle();

  Dataset data_;
  int64_t batch_size_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  int64_t position_ = 0;
  std::vector<int64_t> order_;
};

// A permutation of 0..n-1 from a Fisher-Yates shuffle driven by mt19937_64(seed).
std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed);

}  // namespace sparsetopk::apps
