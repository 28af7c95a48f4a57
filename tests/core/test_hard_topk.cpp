// Hard top-k operators of SPEC.md: exact k ones, tie breaking, magnitude
// definition, batches, float, argument validation.

#include <gtest/gtest.h>

#include <cmath>
#include <sparsetopk/sparsetopk.hpp>
#include <string>
#include <vector>

#include "reference.hpp"
#include "test_support.hpp"

namespace {

template <class T>
std::vector<T> hmask(const std::vector<T>& x, std::size_t n, std::size_t k) {
  std::vector<T> out(x.size());
  sparsetopk::hard_topk_mask<T>(x, n, k, out);
  return out;
}

template <class T>
std::vector<T> hmag(const std::vector<T>& x, std::size_t n, std::size_t k) {
  std::vector<T> out(x.size());
  sparsetopk::hard_topk_mag<T>(x, n, k, out);
  return out;
}

struct Batch {
  std::vector<double> x;
  std::size_t rows = 1, n = 1, k = 0;
};

// Coarse grid so that ties are frequent.
Batch gen_batch() {
  Batch b;
  b.rows = static_cast<std::size_t>(*rc::gen::inRange(1, 6));
  b.n = static_cast<std::size_t>(*rc::gen::inRange(1, 13));
  b.k = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(b.n) + 1));
  b.x = stk_test::gen_row(b.rows * b.n, -3, 3, 12);
  return b;
}

std::vector<double> row_of(const Batch& b, std::size_t r) {
  return {b.x.begin() + static_cast<std::ptrdiff_t>(r * b.n),
          b.x.begin() + static_cast<std::ptrdiff_t>((r + 1) * b.n)};
}

STK_PROP(HardTopkMask, MatchesStableSortReferenceWithTies, 200) {
  const Batch b = gen_batch();
  const auto got = hmask(b.x, b.n, b.k);
  for (std::size_t r = 0; r < b.rows; ++r) {
    const auto expected = ref::hard_mask(row_of(b, r), b.k);
    for (std::size_t i = 0; i < b.n; ++i) RC_ASSERT(got[r * b.n + i] == expected[i]);
  }
}

STK_PROP(HardTopkMask, HasExactlyKOnesPerRow, 200) {
  const Batch b = gen_batch();
  const auto got = hmask(b.x, b.n, b.k);
  for (std::size_t r = 0; r < b.rows; ++r) {
    std::size_t ones = 0;
    for (std::size_t i = 0; i < b.n; ++i) {
      const double v = got[r * b.n + i];
      RC_ASSERT(v == 0.0 || v == 1.0);
      ones += v == 1.0;
    }
    RC_ASSERT(ones == b.k);
  }
}

STK_PROP(HardTopkMag, EqualsXTimesHardMaskOfAbsoluteValues, 200) {
  const Batch b = gen_batch();
  std::vector<double> a(b.x);
  for (auto& v : a) v = std::fabs(v);
  const auto m = hmask(a, b.n, b.k);
  const auto got = hmag(b.x, b.n, b.k);
  for (std::size_t i = 0; i < b.x.size(); ++i) RC_ASSERT(got[i] == b.x[i] * m[i]);
}

STK_PROP(HardTopk, FloatEqualsDouble, 100) {
  const Batch b = gen_batch();
  const std::vector<float> xf(b.x.begin(), b.x.end());
  const std::vector<double> xd(xf.begin(), xf.end());
  const auto mf = hmask(xf, b.n, b.k);
  const auto md = hmask(xd, b.n, b.k);
  const auto gf = hmag(xf, b.n, b.k);
  const auto gd = hmag(xd, b.n, b.k);
  for (std::size_t i = 0; i < xf.size(); ++i) {
    RC_ASSERT(double(mf[i]) == md[i]);
    RC_ASSERT(double(gf[i]) == gd[i]);
  }
}

TEST(HardTopkMask, TiesGoToTheLowerIndex) {
  EXPECT_EQ(hmask(std::vector<double>{1, 1, 1, 1}, 4, 2), (std::vector<double>{1, 1, 0, 0}));
  EXPECT_EQ(hmask(std::vector<double>{0, 2, 1, 2, 2}, 5, 2), (std::vector<double>{0, 1, 0, 1, 0}));
}

TEST(HardTopkMag, TiesInMagnitudeGoToTheLowerIndex) {
  EXPECT_EQ(hmag(std::vector<double>{2, -2, 1, 2}, 4, 2), (std::vector<double>{2, -2, 0, 0}));
  EXPECT_EQ(hmag(std::vector<double>{-1, 3, 1}, 3, 2), (std::vector<double>{-1, 3, 0}));
}

TEST(HardTopk, KZeroAndKEqualToN) {
  const std::vector<double> x{0.5, -2, 3};
  EXPECT_EQ(hmask(x, 3, 0), (std::vector<double>{0, 0, 0}));
  EXPECT_EQ(hmask(x, 3, 3), (std::vector<double>{1, 1, 1}));
  EXPECT_EQ(hmag(x, 3, 0), (std::vector<double>{0, 0, 0}));
  EXPECT_EQ(hmag(x, 3, 3), x);
}

TEST(HardTopkArguments, KGreaterThanNThrowsNamingK) {
  const std::vector<double> x{1, 2, 3, 4, 5};
  std::vector<double> out(5);
  for (int op = 0; op < 2; ++op) {
    try {
      if (op == 0)
        sparsetopk::hard_topk_mask<double>(x, 5, 7, out);
      else
        sparsetopk::hard_topk_mag<double>(x, 5, 7, out);
      ADD_FAILURE() << "no exception";
    } catch (const sparsetopk::InvalidArgument& e) {
      EXPECT_TRUE(stk_test::names_word(e.what(), "k")) << e.what();
      EXPECT_NE(std::string(e.what()).find('7'), std::string::npos) << e.what();
    }
  }
}

TEST(HardTopkArguments, OutSizeMismatchThrowsNamingOut) {
  const std::vector<double> x{1, 2, 3, 4};
  std::vector<double> out(3);
  EXPECT_THROW(sparsetopk::hard_topk_mask<double>(x, 4, 2, out), sparsetopk::InvalidArgument);
  EXPECT_THROW(sparsetopk::hard_topk_mag<double>(x, 4, 2, out), sparsetopk::InvalidArgument);
  try {
    sparsetopk::hard_topk_mask<double>(x, 4, 2, out);
  } catch (const sparsetopk::InvalidArgument& e) {
    EXPECT_TRUE(stk_test::names_word(e.what(), "out")) << e.what();
  }
}

TEST(HardTopkArguments, SizeNotMultipleOfNThrows) {
  const std::vector<double> x{1, 2, 3, 4, 5};
  std::vector<double> out(5);
  EXPECT_THROW(sparsetopk::hard_topk_mask<double>(x, 2, 1, out), sparsetopk::InvalidArgument);
  EXPECT_THROW(sparsetopk::hard_topk_mag<double>(x, 2, 1, out), sparsetopk::InvalidArgument);
}

}  // namespace
