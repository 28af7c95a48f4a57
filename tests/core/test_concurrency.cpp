// Thread safety and determinism: the results never depend on how many threads
// the library uses, nor on other threads calling it at the same time.

#include <gtest/gtest.h>
#include <sparsetopk/sparsetopk.hpp>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "parallel.hpp"

namespace {

std::vector<float> normal_rows(std::size_t size, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(size);
  for (float& v : x) v = normal(rng);
  return x;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Forward (mask and magnitude) and both VJPs, concatenated, and the two states.
struct Passes {
  std::vector<float> values;
  std::vector<sparsetopk::RowState> mask_state, mag_state;
};

bool bitwise_equal(const std::vector<sparsetopk::RowState>& a, const std::vector<sparsetopk::RowState>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(sparsetopk::RowState)) == 0;
}
bool bitwise_equal(const Passes& a, const Passes& b) {
  return bitwise_equal(a.values, b.values) && bitwise_equal(a.mask_state, b.mask_state) &&
         bitwise_equal(a.mag_state, b.mag_state);
}

Passes forward_and_backward(const std::vector<float>& x, const std::vector<float>& g, std::size_t n, std::size_t k,
                            const sparsetopk::SoftTopkOptions& options) {
  const std::size_t size = x.size();
  Passes result{std::vector<float>(4 * size), std::vector<sparsetopk::RowState>(size / n),
                std::vector<sparsetopk::RowState>(size / n)};
  std::span<float> all(result.values);
  sparsetopk::soft_topk_mask<float>(x, n, k, all.subspan(0, size), options, result.mask_state);
  sparsetopk::soft_topk_mask_vjp<float>(x, n, result.mask_state, options, g, all.subspan(size, size));
  sparsetopk::soft_topk_mag<float>(x, n, k, all.subspan(2 * size, size), options, result.mag_state);
  sparsetopk::soft_topk_mag_vjp<float>(x, n, result.mag_state, options, g, all.subspan(3 * size, size));
  return result;
}

class ThreadCount : public ::testing::Test {
 protected:
  void TearDown() override { sparsetopk::set_num_threads(0); }
};

TEST_F(ThreadCount, ManyRowsGiveBitwiseIdenticalResultsAndGradientsForOneTwoAndFourThreads) {
  const std::size_t rows = 2048, n = 64, k = 4;
  const auto x = normal_rows(rows * n, 1), g = normal_rows(rows * n, 2);
  for (double p : {2.0, 4.0 / 3.0, 1.5}) {
    const sparsetopk::SoftTopkOptions options{.l = 0.3, .p = p};
    sparsetopk::set_num_threads(1);
    const auto one = forward_and_backward(x, g, n, k, options);
    for (std::size_t threads : {2, 4}) {
      sparsetopk::set_num_threads(threads);
      EXPECT_TRUE(bitwise_equal(one, forward_and_backward(x, g, n, k, options))) << "p = " << p << ", threads = " << threads;
    }
  }
}

TEST_F(ThreadCount, OneHugeRowSplitAcrossThreadsGivesBitwiseIdenticalResults) {
  const std::size_t n = std::size_t{1} << 19;
  const auto x = normal_rows(n, 3), g = normal_rows(n, 4);
  for (std::size_t k : {std::size_t{1}, std::size_t{5000}, n / 2, n - 1}) {
    const sparsetopk::SoftTopkOptions options{.l = 0.05};
    sparsetopk::set_num_threads(1);
    const auto one = forward_and_backward(x, g, n, k, options);
    sparsetopk::set_num_threads(2);
    const auto two = forward_and_backward(x, g, n, k, options);
    sparsetopk::set_num_threads(3);
    const auto three = forward_and_backward(x, g, n, k, options);
    EXPECT_TRUE(bitwise_equal(one, two)) << "k = " << k;
    EXPECT_TRUE(bitwise_equal(one, three)) << "k = " << k;
  }
}

TEST_F(ThreadCount, HugeRowWithHeavyTiesMatchesThePavSolverBitwise) {
  const std::size_t n = std::size_t{1} << 19;
  std::vector<float> x(n);
  std::mt19937 rng(5);
  for (float& v : x) v = static_cast<float>(rng() % 7);  // only 7 distinct values
  std::vector<float> team(n), pav(n);
  sparsetopk::set_num_threads(2);
  sparsetopk::soft_topk_mask<float>(x, n, n / 3, team, {.l = 0.5});
  sparsetopk::soft_topk_mask<float>(x, n, n / 3, pav, {.l = 0.5, .solver = sparsetopk::Solver::pav});
  EXPECT_TRUE(bitwise_equal(team, pav));
  double sum = 0.0;
  for (float v : team) sum += v;
  EXPECT_NEAR(sum, static_cast<double>(n / 3), 1e-6 * static_cast<double>(n / 3));
}

TEST_F(ThreadCount, ConcurrentCallersGetTheSameAnswersAsOneCaller) {
  const std::size_t rows = 256, n = 100, k = 7;
  const auto x = normal_rows(rows * n, 6), g = normal_rows(rows * n, 7);
  const sparsetopk::SoftTopkOptions options{.l = 0.2};
  const auto expected = forward_and_backward(x, g, n, k, options);
  std::vector<Passes> results(8);
  std::vector<std::thread> callers;
  for (std::size_t t = 0; t < results.size(); ++t)
    callers.emplace_back([&, t] {
      for (int repeat = 0; repeat < 5; ++repeat) results[t] = forward_and_backward(x, g, n, k, options);
    });
  for (auto& caller : callers) caller.join();
  for (const auto& result : results) EXPECT_TRUE(bitwise_equal(expected, result));
}

TEST_F(ThreadCount, RepeatedCallsWithOneWorkspaceAreBitwiseIdentical) {
  const std::size_t rows = 64, n = 300, k = 30;
  const auto x = normal_rows(rows * n, 8);
  sparsetopk::Workspace workspace;
  std::vector<float> first(x.size()), again(x.size());
  sparsetopk::soft_topk_mag<float>(x, n, k, first, {}, {}, &workspace);
  for (int repeat = 0; repeat < 3; ++repeat) {
    sparsetopk::soft_topk_mag<float>(x, n, k, again, {}, {}, &workspace);
    EXPECT_TRUE(bitwise_equal(first, again));
  }
}

}  // namespace

// sparsetopk::ThreadLimit (public): caps the threads of calls made on its
// thread while it lives, nests (the smallest applies, 0 counts as 1), is
// restored after, leaves other threads alone, and changes no result.
TEST_F(ThreadCount, ThreadLimitCapsNestsRestoresAndChangesNoResult) {
  using sparsetopk::detail::available_threads;
  sparsetopk::set_num_threads(4);
  ASSERT_EQ(available_threads(), 4u);
  const std::size_t n = 256, rows = 512;
  const std::vector<float> x = normal_rows(rows * n, 7), g = normal_rows(rows * n, 8);
  const sparsetopk::SoftTopkOptions options{0.1, 4.0 / 3.0, sparsetopk::Solver::automatic};
  const Passes free_result = forward_and_backward(x, g, n, 3, options);
  {
    const sparsetopk::ThreadLimit two(2);
    EXPECT_EQ(available_threads(), 2u);
    {
      const sparsetopk::ThreadLimit three(3);
      EXPECT_EQ(available_threads(), 2u) << "the smallest limit applies";
      const sparsetopk::ThreadLimit zero(0);
      EXPECT_EQ(available_threads(), 1u) << "0 counts as 1";
      EXPECT_TRUE(bitwise_equal(forward_and_backward(x, g, n, 3, options), free_result));
      std::size_t other_thread = 0;
      std::thread([&] { other_thread = available_threads(); }).join();
      EXPECT_EQ(other_thread, 4u) << "a limit is per thread";
    }
    EXPECT_EQ(available_threads(), 2u);
  }
  EXPECT_EQ(available_threads(), 4u);
}
