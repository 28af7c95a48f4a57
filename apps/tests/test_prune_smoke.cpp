// Smoke test of apps/prune_mlp: a tiny synthetic 28x28 IDX dataset written
// here, every variant for a few steps, and a check of the CSV it writes.
#include "tests/synthetic_mnist.hpp"
#include "data/idx.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

namespace fs = std::filesystem;

using sparsetopk::apps::testing::write_synthetic_split;

int count_lines(const fs::path& p) {
  std::ifstream in(p);
  int n = 0;
  for (std::string line; std::getline(in, line);) n += line.empty() ? 0 : 1;
  return n;
}

TEST(PruneMlpSmoke, AllVariantsRunAndWriteCsv) {
  const fs::path dir = fs::temp_directory_path() / ("sparsetopk_prune_smoke_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write_synthetic_split(dir, "train", 64, 1);
  write_synthetic_split(dir, "t10k", 40, 2);
  const fs::path csv = dir / "out.csv";
  const std::string command = std::string(PRUNE_MLP_PATH) + " --data-dir " + dir.string() + " --out " +
                              csv.string() +
                              " --steps 4 --batch-size 16 --log-every 2 --seeds 3 --sparsities 90,98 --threads 1"
                              " > " + (dir / "log.txt").string() + " 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  // Header + dense (2 sparsities from one run) + 4 variants x 2 sparsities.
  EXPECT_EQ(count_lines(csv), 1 + 2 + 8);
  std::ifstream in(csv);
  std::string header;
  std::getline(in, header);
  EXPECT_EQ(header.rfind("variant,sparsity,seed,", 0), 0u) << header;
  for (std::string line; std::getline(in, line);) {
    EXPECT_EQ(line.find("nan"), std::string::npos) << line;
  }
  std::ifstream log(dir / "log.txt");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("ETA"), std::string::npos) << text;
  EXPECT_NE(text.find("hard-pruned"), std::string::npos) << text;

  // A bad data dir fails with a message that names the file.
  const std::string bad = std::string(PRUNE_MLP_PATH) + " --data-dir " + (dir / "missing").string() +
                          " --steps 1 --out " + (dir / "x.csv").string() + " > " + (dir / "bad.txt").string() +
                          " 2>&1";
  EXPECT_NE(std::system(bad.c_str()), 0);
  std::ifstream bad_log(dir / "bad.txt");
  const std::string bad_text((std::istreambuf_iterator<char>(bad_log)), std::istreambuf_iterator<char>());
  EXPECT_NE(bad_text.find("no such file"), std::string::npos) << bad_text;
  fs::remove_all(dir);
}

// The global-budget variants: one k over the three layers, evaluated with the
// global hard top-k, so the network keeps exactly the sum of the per-layer k.
TEST(PruneMlpSmoke, GlobalVariantsKeepTheTotalBudget) {
  const fs::path dir = fs::temp_directory_path() / ("sparsetopk_prune_global_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write_synthetic_split(dir, "train", 64, 1);
  write_synthetic_split(dir, "t10k", 40, 2);
  const fs::path csv = dir / "out.csv";
  const std::string command =
      std::string(PRUNE_MLP_PATH) + " --data-dir " + dir.string() + " --out " + csv.string() +
      " --steps 4 --batch-size 16 --log-every 2 --seeds 3 --sparsities 90,98 --threads 1"
      " --variants dense_global,hard_global,global43,gradual_global > " +
      (dir / "log.txt").string() + " 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  // Header + dense_global (2 sparsities from one run) + 3 variants x 2 sparsities.
  EXPECT_EQ(count_lines(csv), 1 + 2 + 6);
  std::ifstream in(csv);
  std::string header;
  std::getline(in, header);
  int rows = 0;
  for (std::string line; std::getline(in, line);) {
    EXPECT_EQ(line.find("nan"), std::string::npos) << line;
    std::vector<std::string> fields;
    std::stringstream ss(line);
    for (std::string f; std::getline(ss, f, ',');) fields.push_back(f);
    ASSERT_GE(fields.size(), 17u) << line;
    // 90%: 23520 + 3000 + 100 kept weights; 98%: 4704 + 600 + 20 (columns sparsity, nnz).
    const std::string expected = std::stod(fields[1]) == 90 ? "26620" : "5324";
    EXPECT_EQ(fields[15], expected) << line;
    if (fields[0] == "global43") {
      EXPECT_GT(std::stod(fields[8]), 0) << line;  // the l used
    }
    ++rows;
  }
  EXPECT_EQ(rows, 8);
  // gradual_global reports its scheduled sparsity, at the target by the last step.
  std::ifstream log(dir / "log.txt");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("[gradual_global s=98% seed=3] step 4/4"), std::string::npos) << text;
  EXPECT_NE(text.find("sparsity 98.0%"), std::string::npos) << text;

  // A bad variant names the flag and the value.
  const std::string bad = std::string(PRUNE_MLP_PATH) + " --data-dir " + dir.string() +
                          " --variants hard_global,gradual_globl --out " +
                          (dir / "x.csv").string() + " > " + (dir / "bad.txt").string() + " 2>&1";
  EXPECT_NE(std::system(bad.c_str()), 0);
  std::ifstream bad_log(dir / "bad.txt");
  const std::string bad_text((std::istreambuf_iterator<char>(bad_log)),
                             std::istreambuf_iterator<char>());
  EXPECT_NE(bad_text.find("--variants"), std::string::npos) << bad_text;
  EXPECT_NE(bad_text.find("gradual_globl"), std::string::npos) << bad_text;
  fs::remove_all(dir);
}

}  // namespace
