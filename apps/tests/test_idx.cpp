// The IDX reader on small gzip files written here, byte by byte, with zlib.
#include "data/idx.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using sparsetopk::apps::Batcher;
using sparsetopk::apps::IdxError;

class IdxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sparsetopk_test_idx_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes raw bytes through gzip, independently of the library's writer.
  std::string write_gz(const std::string& name, const std::vector<unsigned char>& bytes) const {
    const std::string p = path(name);
    gzFile f = gzopen(p.c_str(), "wb");
    EXPECT_NE(f, nullptr);
    if (!bytes.empty()) {
      EXPECT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
    }
    EXPECT_EQ(gzclose(f), Z_OK);
    return p;
  }

  static void put_u32(std::vector<unsigned char>& out, uint32_t v) {
    out.push_back(static_cast<unsigned char>(v >> 24));
    out.push_back(static_cast<unsigned char>(v >> 16));
    out.push_back(static_cast<unsigned char>(v >> 8));
    out.push_back(static_cast<unsigned char>(v));
  }

  // 3 images of 2 x 2: pixel values 0, 10, ..., 110 (and 255 in the last one).
  static std::vector<unsigned char> images_bytes(uint32_t magic = 0x803, uint32_t count = 3) {
    std::vector<unsigned char> b;
    put_u32(b, magic);
    put_u32(b, count);
    put_u32(b, 2);
    put_u32(b, 2);
    for (int i = 0; i < 12; ++i) b.push_back(static_cast<unsigned char>(i == 11 ? 255 : 10 * i));
    return b;
  }
  static std::vector<unsigned char> labels_bytes(uint32_t count = 3) {
    std::vector<unsigned char> b;
    put_u32(b, 0x801);
    put_u32(b, count);
    for (uint32_t i = 0; i < count; ++i) b.push_back(static_cast<unsigned char>(7 - i));
    return b;
  }

  template <class F>
  static std::string error_of(F&& f) {
    try {
      f();
    } catch (const IdxError& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
};

TEST_F(IdxTest, ReadsValidImagesAndLabels) {
  const auto images = sparsetopk::apps::read_idx_images(write_gz("img.gz", images_bytes()));
  EXPECT_EQ(images.count, 3);
  EXPECT_EQ(images.rows, 2);
  EXPECT_EQ(images.cols, 2);
  ASSERT_EQ(images.pixels.size(), 12u);
  EXPECT_EQ(images.pixels[0], 0);
  EXPECT_EQ(images.pixels[5], 50);
  EXPECT_EQ(images.pixels[11], 255);
  const auto labels = sparsetopk::apps::read_idx_labels(write_gz("lab.gz", labels_bytes()));
  EXPECT_EQ(labels, (std::vector<uint8_t>{7, 6, 5}));
}

TEST_F(IdxTest, LimitKeepsTheFirstExamples) {
  const auto images = sparsetopk::apps::read_idx_images(write_gz("img.gz", images_bytes()), 2);
  EXPECT_EQ(images.count, 2);
  EXPECT_EQ(images.pixels.size(), 8u);
  const auto data = sparsetopk::apps::load_dataset(write_gz("i.gz", images_bytes()), write_gz("l.gz", labels_bytes()), 1);
  EXPECT_EQ(data.size(), 1);
  EXPECT_EQ(data.features(), 4);
}

TEST_F(IdxTest, DatasetAndFloatsAreInUnitInterval) {
  const auto data = sparsetopk::apps::load_dataset(write_gz("i.gz", images_bytes()), write_gz("l.gz", labels_bytes()));
  ASSERT_EQ(data.size(), 3);
  EXPECT_EQ(data.labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(data.labels[2].item<int64_t>(), 5);
  const auto x = sparsetopk::apps::to_float(data.images);
  EXPECT_EQ(x.scalar_type(), torch::kFloat32);
  EXPECT_FLOAT_EQ(x[0][1].item<float>(), 10.0f / 255.0f);
  EXPECT_FLOAT_EQ(x[2][3].item<float>(), 1.0f);
  EXPECT_GE(x.min().item<float>(), 0.0f);
  EXPECT_LE(x.max().item<float>(), 1.0f);
}

TEST_F(IdxTest, WriterRoundTrips) {
  sparsetopk::apps::IdxImages images;
  images.count = 2;
  images.rows = 3;
  images.cols = 1;
  images.pixels = {1, 2, 3, 4, 5, 6};
  sparsetopk::apps::write_idx_images(path("w.gz"), images);
  sparsetopk::apps::write_idx_labels(path("wl.gz"), {9, 0});
  const auto back = sparsetopk::apps::read_idx_images(path("w.gz"));
  EXPECT_EQ(back.pixels, images.pixels);
  EXPECT_EQ(back.rows, 3);
  EXPECT_EQ(sparsetopk::apps::read_idx_labels(path("wl.gz")), (std::vector<uint8_t>{9, 0}));
}

TEST_F(IdxTest, MissingFileNamesTheFile) {
  const std::string p = path("nope.gz");
  const auto message = error_of([&] { sparsetopk::apps::read_idx_images(p); });
  EXPECT_NE(message.find(p), std::string::npos) << message;
  EXPECT_NE(message.find("no such file"), std::string::npos) << message;
}

TEST_F(IdxTest, BadMagicIsReported) {
  const std::string p = write_gz("bad.gz", images_bytes(0x804));
  const auto message = error_of([&] { sparsetopk::apps::read_idx_images(p); });
  EXPECT_NE(message.find(p), std::string::npos) << message;
  EXPECT_NE(message.find("bad magic number 0x00000804"), std::string::npos) << message;
  // A labels file is not an images file, and vice versa.
  EXPECT_NE(error_of([&] { sparsetopk::apps::read_idx_images(write_gz("l.gz", labels_bytes())); }).find("bad magic"),
            std::string::npos);
  EXPECT_NE(error_of([&] { sparsetopk::apps::read_idx_labels(p); }).find("bad magic"), std::string::npos);
}

TEST_F(IdxTest, TruncatedDataIsReported) {
  auto bytes = images_bytes();
  bytes.resize(bytes.size() - 3);
  const std::string p = write_gz("short.gz", bytes);
  const auto message = error_of([&] { sparsetopk::apps::read_idx_images(p); });
  EXPECT_NE(message.find(p), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;
  // Truncated inside the header, and an empty file.
  EXPECT_NE(error_of([&] { sparsetopk::apps::read_idx_images(write_gz("h.gz", {0, 0, 8, 3, 0})); }).find("truncated"),
            std::string::npos);
  EXPECT_NE(error_of([&] { sparsetopk::apps::read_idx_labels(write_gz("e.gz", {})); }).find("truncated"),
            std::string::npos);
  auto labels = labels_bytes(5);
  labels.pop_back();
  EXPECT_NE(error_of([&] { sparsetopk::apps::read_idx_labels(write_gz("ls.gz", labels)); }).find("truncated"),
            std::string::npos);
}

TEST_F(IdxTest, TrailingDataIsReported) {
  auto bytes = labels_bytes();
  bytes.push_back(1);
  EXPECT_NE(error_of([&] { sparsetopk::apps::read_idx_labels(write_gz("t.gz", bytes)); }).find("trailing data"),
            std::string::npos);
}

TEST_F(IdxTest, MismatchedCountsAreReported) {
  const std::string images = write_gz("i.gz", images_bytes());
  const std::string labels = write_gz("l.gz", labels_bytes(2));
  const auto message = error_of([&] { sparsetopk::apps::load_dataset(images, labels); });
  EXPECT_NE(message.find("mismatched counts"), std::string::npos) << message;
  EXPECT_NE(message.find(images), std::string::npos) << message;
  EXPECT_NE(message.find(labels), std::string::npos) << message;
}

TEST(Shuffle, IsASeededPermutation) {
  const auto a = sparsetopk::apps::shuffled_indices(100, 42);
  const auto b = sparsetopk::apps::shuffled_indices(100, 42);
  const auto c = sparsetopk::apps::shuffled_indices(100, 43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()).size(), 100u);
  EXPECT_EQ(*std::min_element(a.begin(), a.end()), 0);
  EXPECT_EQ(*std::max_element(a.begin(), a.end()), 99);
}

TEST(BatcherTest, VisitsEveryExampleOncePerEpochAndReshuffles) {
  sparsetopk::apps::Dataset data;
  data.images = torch::arange(10, torch::kUInt8).view({10, 1}) * 25;
  data.labels = torch::arange(10, torch::kInt64);
  Batcher batcher(data, 4, 7);
  EXPECT_EQ(batcher.batches_per_epoch(), 3);
  std::vector<int64_t> first, second;
  for (int i = 0; i < 3; ++i) {
    const auto batch = batcher.next();
    EXPECT_EQ(batch.x.scalar_type(), torch::kFloat32);
    EXPECT_EQ(batch.x.size(0), i < 2 ? 4 : 2);
    // x and y stay paired: pixel = 25 * label.
    EXPECT_TRUE(torch::allclose(batch.x.squeeze(1), batch.y.to(torch::kFloat32) * 25.0f / 255.0f));
    EXPECT_LE(batch.x.max().item<float>(), 1.0f);
    for (int64_t j = 0; j < batch.y.size(0); ++j) first.push_back(batch.y[j].item<int64_t>());
  }
  EXPECT_EQ(batcher.epoch(), 0);
  for (int i = 0; i < 3; ++i) {
    const auto batch = batcher.next();
    for (int64_t j = 0; j < batch.y.size(0); ++j) second.push_back(batch.y[j].item<int64_t>());
  }
  EXPECT_EQ(batcher.epoch(), 1);
  EXPECT_EQ(std::set<int64_t>(first.begin(), first.end()).size(), 10u);
  EXPECT_EQ(std::set<int64_t>(second.begin(), second.end()).size(), 10u);
  EXPECT_NE(first, second);
  // Same seed, same order.
  Batcher again(data, 4, 7);
  std::vector<int64_t> replay;
  for (int i = 0; i < 3; ++i) {
    const auto batch = again.next();
    for (int64_t j = 0; j < batch.y.size(0); ++j) replay.push_back(batch.y[j].item<int64_t>());
  }
  EXPECT_EQ(first, replay);
}

}  // namespace
