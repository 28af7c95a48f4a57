#include "idx.hpp"

#include <zlib.h>

#include <torch/torch.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>
#include <utility>

namespace sparsetopk::apps {
namespace {

constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;

std::string hex(uint32_t value) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "0x%08X", value);
  return buffer;
}

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw IdxError("idx: " + path + ": " + problem);
}

// A gzFile that closes itself.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    if (!std::filesystem::exists(path)) fail(path, "no such file");
    file_ = gzopen(path.c_str(), "rb");
    if (file_ == nullptr) fail(path, "cannot open for reading");
  }
  ~GzReader() {
    if (file_ != nullptr) gzclose(file_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads exactly `size` bytes; `what` names the part being read in errors.
  void read(void* data, size_t size, const std::string& what) {
    auto* bytes = static_cast<unsigned char*>(data);
    size_t done = 0;
    while (done < size) {
      const size_t chunk = std::min<size_t>(size - done, size_t{1} << 30);
      const int got = gzread(file_, bytes + done, static_cast<unsigned>(chunk));
      if (got < 0) {
        int code = 0;
        const char* message = gzerror(file_, &code);
        fail(path_, "read error in " + what + ": " + (message ? message : "unknown zlib error"));
      }
      if (got == 0) {
        fail(path_, "truncated: " + what + " needs " + std::to_string(size) + " bytes, only " +
                        std::to_string(done) + " present");
      }
      done += static_cast<size_t>(got);
    }
  }

  uint32_t read_u32(const std::string& what) {
    std::array<unsigned char, 4> b{};
    read(b.data(), b.size(), what);
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
  }

  bool at_end() {
    unsigned char byte = 0;
    return gzread(file_, &byte, 1) == 0;
  }

 private:
  std::string path_;
  gzFile file_ = nullptr;
};

class GzWriter {
 public:
  explicit GzWriter(const std::string& path) : path_(path) {
    file_ = gzopen(path.c_str(), "wb");
    if (file_ == nullptr) fail(path, "cannot open for writing");
  }
  ~GzWriter() {
    if (file_ != nullptr) gzclose(file_);
  }
  GzWriter(const GzWriter&) = delete;
  GzWriter& operator=(const GzWriter&) = delete;

  void write(const void* data, size_t size) {
    if (size == 0) return;
    if (gzwrite(file_, data, static_cast<unsigned>(size)) != static_cast<int>(size)) {
      fail(path_, "write error");
    }
  }
  void write_u32(uint32_t value) {
    const std::array<unsigned char, 4> b{static_cast<unsigned char>(value >> 24),
                                         static_cast<unsigned char>(value >> 16),
                                         static_cast<unsigned char>(value >> 8),
                                         static_cast<unsigned char>(value)};
    write(b.data(), b.size());
  }
  void close() {
    const int status = gzclose(file_);
    file_ = nullptr;
    if (status != Z_OK) fail(path_, "error closing the file");
  }

 private:
  std::string path_;
  gzFile file_ = nullptr;
};

void check_magic(const std::string& path, uint32_t magic, uint32_t expected, const char* kind) {
  if (magic != expected) {
    fail(path, std::string("bad magic number ") + hex(magic) + ", expected " + hex(expected) +
                   " (" + kind + ")");
  }
}

int64_t kept_count(int64_t count, int64_t limit) { return limit >= 0 ? std::min(count, limit) : count; }

}  // namespace

IdxImages read_idx_images(const std::string& path, int64_t limit) {
  GzReader reader(path);
  check_magic(path, reader.read_u32("the magic number"), kImagesMagic, "unsigned-byte images, 3 dimensions");
  IdxImages images;
  const uint32_t count = reader.read_u32("the header");
  const uint32_t rows = reader.read_u32("the header");
  const uint32_t cols = reader.read_u32("the header");
  if (rows == 0 || cols == 0 || rows > 65536 || cols > 65536) {
    fail(path, "implausible image size " + std::to_string(rows) + " x " + std::to_string(cols));
  }
  images.rows = rows;
  images.cols = cols;
  images.count = kept_count(count, limit);
  images.pixels.resize(static_cast<size_t>(images.count * images.rows * images.cols));
  reader.read(images.pixels.data(), images.pixels.size(),
              "the pixels of " + std::to_string(images.count) + " images");
  if (images.count == count && !reader.at_end()) {
    fail(path, "trailing data after " + std::to_string(count) + " images");
  }
  return images;
}

std::vector<uint8_t> read_idx_labels(const std::string& path, int64_t limit) {
  GzReader reader(path);
  check_magic(path, reader.read_u32("the magic number"), kLabelsMagic, "unsigned-byte labels, 1 dimension");
  const uint32_t count = reader.read_u32("the header");
  std::vector<uint8_t> labels(static_cast<size_t>(kept_count(count, limit)));
  reader.read(labels.data(), labels.size(), std::to_string(labels.size()) + " labels");
  if (static_cast<int64_t>(labels.size()) == count && !reader.at_end()) {
    fail(path, "trailing data after " + std::to_string(count) + " labels");
  }
  return labels;
}

void write_idx_images(const std::string& path, const IdxImages& images) {
  if (images.count < 0 || images.rows <= 0 || images.cols <= 0 ||
      images.pixels.size() != static_cast<size_t>(images.count * images.rows * images.cols)) {
    fail(path, "write_idx_images: pixels.size() = " + std::to_string(images.pixels.size()) +
                   " does not match count * rows * cols");
  }
  GzWriter writer(path);
  writer.write_u32(kImagesMagic);
  writer.write_u32(static_cast<uint32_t>(images.count));
  writer.write_u32(static_cast<uint32_t>(images.rows));
  writer.write_u32(static_cast<uint32_t>(images.cols));
  writer.write(images.pixels.data(), images.pixels.size());
  writer.close();
}

void write_idx_labels(const std::string& path, const std::vector<uint8_t>& labels) {
  GzWriter writer(path);
  writer.write_u32(kLabelsMagic);
  writer.write_u32(static_cast<uint32_t>(labels.size()));
  writer.write(labels.data(), labels.size());
  writer.close();
}

Dataset load_dataset(const std::string& images_path, const std::string& labels_path, int64_t limit) {
  IdxImages images = read_idx_images(images_path);
  std::vector<uint8_t> labels = read_idx_labels(labels_path);
  if (images.count != static_cast<int64_t>(labels.size())) {
    throw IdxError("idx: mismatched counts: " + images_path + " holds " + std::to_string(images.count) +
                   " images but " + labels_path + " holds " + std::to_string(labels.size()) + " labels");
  }
  const int64_t n = kept_count(images.count, limit);
  const int64_t features = images.rows * images.cols;
  Dataset data;
  data.images = torch::from_blob(images.pixels.data(), {images.count, features}, torch::kUInt8)
                    .slice(0, 0, n)
                    .clone();
  data.labels = torch::from_blob(labels.data(), {images.count}, torch::kUInt8)
                    .slice(0, 0, n)
                    .to(torch::kInt64);
  return data;
}

Dataset load_mnist_split(const std::string& dir, const std::string& split, int64_t limit) {
  return load_dataset(dir + "/" + split + "-images-idx3-ubyte.gz", dir + "/" + split + "-labels-idx1-ubyte.gz",
                      limit);
}

at::Tensor to_float(const at::Tensor& images_u8) { return images_u8.to(torch::kFloat32).div_(255.0f); }

std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    // Modulo bias is below 2^-40 for any realistic n; the order is the same
    // on every platform (unlike std::uniform_int_distribution).
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

Batcher::Batcher(const Dataset& data, int64_t batch_size, uint64_t seed)
    : data_(data), batch_size_(batch_size), seed_(seed) {
  if (batch_size <= 0) throw std::invalid_argument("Batcher: batch_size must be > 0, got " + std::to_string(batch_size));
  if (data.size() == 0) throw std::invalid_argument("Batcher: the dataset is empty");
}

int64_t Batcher::batches_per_epoch() const { return (data_.size() + batch_size_ - 1) / batch_size_; }

void Batcher::reshuffle() {
  ++epoch_;
  order_ = shuffled_indices(data_.size(), seed_ * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch_));
  position_ = 0;
}

Batcher::Batch Batcher::next() {
  if (epoch_ < 0 || position_ >= data_.size()) reshuffle();
  const int64_t end = std::min(position_ + batch_size_, data_.size());
  auto index = torch::from_blob(order_.data() + position_, {end - position_}, torch::kInt64);
  position_ = end;
  return {to_float(data_.images.index_select(0, index)), data_.labels.index_select(0, index)};
}

at::Tensor patchify(const at::Tensor& images, int64_t rows, int64_t cols, int64_t patch) {
  if (patch <= 0 || rows % patch != 0 || cols % patch != 0)
    throw std::invalid_argument("patchify: patch side " + std::to_string(patch) + " does not divide image side " +
                                (rows == cols ? std::to_string(rows)
                                              : std::to_string(rows) + "x" + std::to_string(cols)));
  if (images.dim() != 2 || images.size(1) != rows * cols)
    throw std::invalid_argument("patchify: expected [B, " + std::to_string(rows * cols) + "] images");
  const int64_t b = images.size(0), n = rows / patch, m = cols / patch;
  // [B, row block, row in patch, col block, col in patch] -> [B, row block, col block, row, col]
  return images.reshape({b, n, patch, m, patch})
      .permute({0, 1, 3, 2, 4})
      .reshape({b, n * m, patch * patch});
}

at::Tensor patchify(const at::Tensor& images, int64_t side, int64_t patch) {
  return patchify(images, side, side, patch);
}

}  // namespace sparsetopk::apps
