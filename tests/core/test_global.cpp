// The global operators (sparsetopk/global.hpp) against the row operators on
// the concatenation of their parts: outputs, state and derivatives, in one
// process (bitwise) and over simulated processes (threads exchanging through
// a Reduction, as torch.distributed would).

#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sparsetopk/sparsetopk.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

using sparsetopk::Form;
using sparsetopk::RowState;
using sparsetopk::SoftTopkOptions;

const double kPs[] = {4.0 / 3.0, 2.0, 1.5, 3.0};

// A global row split into parts: owned vectors, and spans over them.
template <class T>
struct Split {
  std::vector<std::vector<T>> parts;
  std::vector<std::span<const T>> in() const { return {parts.begin(), parts.end()}; }
  std::vector<std::span<T>> out(std::vector<std::vector<T>>& buffers) const {
    buffers.clear();
    for (const auto& part : parts) buffers.emplace_back(part.size());
    return {buffers.begin(), buffers.end()};
  }
  std::vector<T> concat(const std::vector<std::vector<T>>& of) const {
    std::vector<T> all;
    for (const auto& part : of) all.insert(all.end(), part.begin(), part.end());
    return all;
  }
};

// Random cut points, empty parts included.
template <class T>
Split<T> split(const std::vector<T>& x, std::size_t parts, std::mt19937& rng) {
  std::vector<std::size_t> cuts{0, x.size()};
  for (std::size_t c = 1; c < parts; ++c) cuts.push_back(std::uniform_int_distribution<std::size_t>(0, x.size())(rng));
  std::sort(cuts.begin(), cuts.end());
  Split<T> result;
  for (std::size_t c = 0; c + 1 < cuts.size(); ++c)
    result.parts.emplace_back(x.begin() + static_cast<std::ptrdiff_t>(cuts[c]),
                              x.begin() + static_cast<std::ptrdiff_t>(cuts[c + 1]));
  return result;
}

// Rows of three kinds: continuous values, small integers (ties across parts,
// signed zeros), and values packed within l of each other (wide bands).
template <class T>
std::vector<T> random_row(std::size_t n, int kind, std::mt19937& rng) {
  std::vector<T> x(n);
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> small(-3, 3);
  for (auto& v : x) {
    if (kind == 0) v = static_cast<T>(normal(rng));
    else if (kind == 1) v = static_cast<T>(small(rng) == 0 && (rng() & 1) ? -0.0 : small(rng) * 0.25);
    else v = static_cast<T>(1.0 + 0.01 * normal(rng));
  }
  return x;
}

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0 || (std::isnan(a) && std::isnan(b));
}

void expect_same_state(const RowState& a, const RowState& b) {
  const double* x = &a.gamma;
  const double* y = &b.gamma;
  for (std::size_t f = 0; f < RowState::size; ++f) EXPECT_TRUE(same_bits(x[f], y[f])) << "field " << f << ": " << x[f] << " vs " << y[f];
}

template <class T>
void soft_row(Form form, const std::vector<T>& x, std::size_t k, std::vector<T>& out, const SoftTopkOptions& o,
              RowState& state) {
  out.assign(x.size(), T(0));
  const std::size_t n = x.size();
  if (form == Form::mask) sparsetopk::soft_topk_mask<T>(x, n, k, out, o, std::span<RowState>(&state, n ? 1 : 0));
  else sparsetopk::soft_topk_mag<T>(x, n, k, out, o, std::span<RowState>(&state, n ? 1 : 0));
  if (n == 0) state = RowState{.gamma = -std::numeric_limits<double>::infinity(), .block_weight = 0.0,
                               .unchanged_from = std::numeric_limits<double>::infinity()};
}

template <class T>
void soft_global(Form form, const Split<T>& x, std::size_t k, std::vector<std::vector<T>>& out, const SoftTopkOptions& o,
                 RowState& state, sparsetopk::Reduction* reduction = nullptr) {
  const auto in = x.in();
  const auto outs = x.out(out);
  if (form == Form::mask) sparsetopk::soft_topk_mask_global<T>(in, k, outs, o, &state, reduction);
  else sparsetopk::soft_topk_mag_global<T>(in, k, outs, o, &state, reduction);
}

template <class T>
void row_product(Form form, bool transpose, const std::vector<T>& x, const RowState& state, const SoftTopkOptions& o,
                 const std::vector<T>& v, std::vector<T>& result) {
  result.assign(x.size(), T(0));
  const std::span<const RowState> s(&state, 1);
  const std::size_t n = x.size();
  if (n == 0) return;  // no row: no state to pass
  if (form == Form::mask) (transpose ? sparsetopk::soft_topk_mask_vjp<T> : sparsetopk::soft_topk_mask_jvp<T>)(x, n, s, o, v, result);
  else (transpose ? sparsetopk::soft_topk_mag_vjp<T> : sparsetopk::soft_topk_mag_jvp<T>)(x, n, s, o, v, result);
}

template <class T>
void global_product(Form form, bool transpose, const Split<T>& x, const RowState& state, const SoftTopkOptions& o,
                    const Split<T>& v, std::vector<std::vector<T>>& result, sparsetopk::Reduction* reduction = nullptr) {
  const auto outs = x.out(result);
  const auto in = x.in(), vin = v.in();
  if (form == Form::mask)
    (transpose ? sparsetopk::soft_topk_mask_global_vjp<T> : sparsetopk::soft_topk_mask_global_jvp<T>)(in, state, o, vin, outs, reduction);
  else
    (transpose ? sparsetopk::soft_topk_mag_global_vjp<T> : sparsetopk::soft_topk_mag_global_jvp<T>)(in, state, o, vin, outs, reduction);
}

// Splits v at the same cut points as x.
template <class T>
Split<T> split_like(const Split<T>& x, const std::vector<T>& v) {
  Split<T> result;
  std::size_t at = 0;
  for (const auto& part : x.parts) {
    result.parts.emplace_back(v.begin() + static_cast<std::ptrdiff_t>(at), v.begin() + static_cast<std::ptrdiff_t>(at + part.size()));
    at += part.size();
  }
  return result;
}

template <class T>
void check_one_process(unsigned seed) {
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 400; ++trial) {
    const int kind = trial % 3;
    const std::size_t n = std::uniform_int_distribution<std::size_t>(0, trial % 7 == 0 ? 3000 : 40)(rng);
    const std::vector<T> x = random_row<T>(n, kind, rng);
    const std::size_t k = trial % 11 == 0 ? 0 : trial % 13 == 0 ? n : std::uniform_int_distribution<std::size_t>(0, n)(rng);
    const Split<T> parts = split(x, std::uniform_int_distribution<std::size_t>(1, 6)(rng), rng);
    std::normal_distribution<double> normal;
    std::vector<T> v(n);
    for (auto& e : v) e = static_cast<T>(normal(rng));
    const Split<T> v_parts = split_like(parts, v);
    for (const Form form : {Form::mask, Form::magnitude})
      for (const double p : kPs) {
        const SoftTopkOptions o{.l = kind == 2 ? 0.05 : 0.3, .p = p};
        SCOPED_TRACE(testing::Message() << "trial " << trial << " n " << n << " k " << k << " parts "
                                        << parts.parts.size() << " p " << p << " mag " << (form == Form::magnitude));
        std::vector<T> row_out;
        RowState row_state, global_state;
        soft_row(form, x, k, row_out, o, row_state);
        std::vector<std::vector<T>> global_out;
        soft_global(form, parts, k, global_out, o, global_state);
        const std::vector<T> joined = parts.concat(global_out);
        for (std::size_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(joined[i], row_out[i])) << "entry " << i << ": " << joined[i] << " vs " << row_out[i];
        expect_same_state(global_state, row_state);
        for (const bool transpose : {true, false}) {
          std::vector<T> row_d;
          std::vector<std::vector<T>> global_d;
          row_product(form, transpose, x, row_state, o, v, row_d);
          global_product(form, transpose, parts, global_state, o, v_parts, global_d);
          const std::vector<T> joined_d = parts.concat(global_d);
          for (std::size_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(joined_d[i], row_d[i])) << (transpose ? "vjp" : "jvp") << " entry " << i << ": " << joined_d[i] << " vs " << row_d[i];
        }
      }
  }
}

TEST(GlobalOneProcess, SoftEqualsRowOperatorOnConcatenationDouble) { check_one_process<double>(1); }
TEST(GlobalOneProcess, SoftEqualsRowOperatorOnConcatenationFloat) { check_one_process<float>(2); }

TEST(GlobalOneProcess, HardEqualsRowOperatorOnConcatenation) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 300; ++trial) {
    const std::size_t n = std::uniform_int_distribution<std::size_t>(0, 50)(rng);
    std::vector<double> x = random_row<double>(n, trial % 2, rng);
    if (n > 2 && trial % 5 == 0) x[1] = std::numeric_limits<double>::infinity(), x[2] = -x[1];
    if (n > 0 && trial % 17 == 0) x[n / 2] = std::numeric_limits<double>::quiet_NaN();
    const std::size_t k = std::uniform_int_distribution<std::size_t>(0, n)(rng);
    const Split<double> parts = split(x, std::uniform_int_distribution<std::size_t>(1, 5)(rng), rng);
    for (const Form form : {Form::mask, Form::magnitude}) {
      std::vector<double> row_out(n);
      if (form == Form::mask) sparsetopk::hard_topk_mask<double>(x, n, k, row_out);
      else sparsetopk::hard_topk_mag<double>(x, n, k, row_out);
      if (n == 0) row_out.clear();
      std::vector<std::vector<double>> out;
      const auto outs = parts.out(out);
      if (form == Form::mask) sparsetopk::hard_topk_mask_global<double>(parts.in(), k, outs);
      else sparsetopk::hard_topk_mag_global<double>(parts.in(), k, outs);
      const std::vector<double> joined = parts.concat(out);
      for (std::size_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(joined[i], row_out[i])) << "trial " << trial << " entry " << i;
    }
  }
}

// Processes simulated by threads: each collective writes every rank's values
// into a shared board between two barriers.
class ThreadReduction final : public sparsetopk::Reduction {
 public:
  struct Board {
    explicit Board(std::size_t ranks) : barrier(static_cast<std::ptrdiff_t>(ranks)), values(ranks) {}
    std::barrier<> barrier;
    std::vector<std::vector<double>> values;
  };
  ThreadReduction(Board& board, std::size_t rank, std::size_t gather_limit)
      : board_(board), rank_(rank), gather_limit_(gather_limit) {}
  std::size_t gather_limit() const override { return gather_limit_; }
  std::size_t rank() const override { return rank_; }
  std::size_t ranks() const override { return board_.values.size(); }
  void sum(std::span<double> values) override {
    combine(values, [](double a, double b) { return a + b; });
  }
  void max(std::span<double> values) override {
    combine(values, [](double a, double b) { return std::max(a, b); });
  }
  std::vector<double> gather(std::span<const double> values) override {
    board_.values[rank_].assign(values.begin(), values.end());
    board_.barrier.arrive_and_wait();
    std::vector<double> all;
    for (const auto& v : board_.values) all.insert(all.end(), v.begin(), v.end());
    board_.barrier.arrive_and_wait();
    return all;
  }

 private:
  template <class Op>
  void combine(std::span<double> values, Op op) {
    const std::vector<double> all = gather(values);
    for (std::size_t j = 0; j < values.size(); ++j) {
      double total = all[j];
      for (std::size_t r = 1; r < ranks(); ++r) total = op(total, all[r * values.size() + j]);
      values[j] = total;
    }
  }
  Board& board_;
  std::size_t rank_, gather_limit_;
};

// The same row over 2-4 simulated processes: each holds some of the parts.
// `gather_limit`: 0 solves every band by reductions, SIZE_MAX gathers every
// window (then the result is bitwise the one-process result).
void check_processes(std::size_t gather_limit, unsigned seed) {
  const bool exact = gather_limit == static_cast<std::size_t>(-1);
  std::mt19937 rng(seed);
  double worst_out = 0.0, worst_vjp = 0.0, worst_gamma = 0.0;
  for (int trial = 0; trial < 90; ++trial) {
    const std::size_t ranks = 2 + trial % 3;
    const std::size_t n = std::uniform_int_distribution<std::size_t>(0, trial % 5 == 0 ? 3000 : 200)(rng);
    const int kind = trial % 3;
    const std::vector<double> x = random_row<double>(n, kind, rng);
    const std::size_t k = std::uniform_int_distribution<std::size_t>(0, n)(rng);
    std::vector<double> v(n);
    std::normal_distribution<double> normal;
    for (auto& e : v) e = normal(rng);
    const Split<double> by_rank = split(x, ranks, rng);  // then each rank's share split again
    for (const Form form : {Form::mask, Form::magnitude}) {
      const SoftTopkOptions o{.l = kind == 2 ? 0.02 : 0.3, .p = kPs[trial % 4]};
      SCOPED_TRACE(testing::Message() << "trial " << trial << " n " << n << " k " << k << " ranks " << ranks << " p "
                                      << o.p << " mag " << (form == Form::magnitude));
      const Split<double> whole{{x}};
      std::vector<std::vector<double>> expected, expected_vjp;
      RowState expected_state;
      soft_global(form, whole, k, expected, o, expected_state);
      global_product(form, true, whole, expected_state, o, Split<double>{{v}}, expected_vjp);
      ThreadReduction::Board board(ranks);
      std::vector<std::vector<std::vector<double>>> out(ranks), vjp(ranks);
      std::vector<Split<double>> shares(ranks), v_shares(ranks);
      std::vector<RowState> states(ranks);
      std::size_t at = 0;
      for (std::size_t r = 0; r < ranks; ++r) {
        const std::vector<double>& share = by_rank.parts[r];
        std::mt19937 local(static_cast<unsigned>(trial * 10 + r));
        shares[r] = split(share, 1 + r % 3, local);
        v_shares[r] = split_like(shares[r], std::vector<double>(v.begin() + static_cast<std::ptrdiff_t>(at), v.begin() + static_cast<std::ptrdiff_t>(at + share.size())));
        at += share.size();
      }
      std::vector<std::thread> threads;
      for (std::size_t r = 0; r < ranks; ++r)
        threads.emplace_back([&, r] {
          ThreadReduction reduction(board, r, gather_limit);
          soft_global(form, shares[r], k, out[r], o, states[r], &reduction);
          global_product(form, true, shares[r], states[r], o, v_shares[r], vjp[r], &reduction);
        });
      for (auto& t : threads) t.join();
      std::vector<double> joined, joined_vjp;
      for (std::size_t r = 0; r < ranks; ++r) {
        const auto a = shares[r].concat(out[r]), b = shares[r].concat(vjp[r]);
        joined.insert(joined.end(), a.begin(), a.end());
        joined_vjp.insert(joined_vjp.end(), b.begin(), b.end());
        if (exact) expect_same_state(states[r], expected_state);
        else expect_same_state(states[r], states[0]);  // every process holds the same state
      }
      if (!exact && std::isfinite(expected_state.gamma))
        worst_gamma = std::max(worst_gamma, std::abs(states[0].gamma - expected_state.gamma) / (1.0 + std::abs(expected_state.gamma)));
      for (std::size_t i = 0; i < n; ++i) {
        if (exact) {
          ASSERT_TRUE(same_bits(joined[i], expected[0][i])) << "entry " << i;
        }
        worst_out = std::max(worst_out, std::abs(joined[i] - expected[0][i]));
        worst_vjp = std::max(worst_vjp, std::abs(joined_vjp[i] - expected_vjp[0][i]) / (1.0 + std::abs(expected_vjp[0][i])));
      }
    }
  }
  // (gamma is not unique where no entry is strictly inside the band: the outputs are)
  std::printf("gather limit %zu: max |out - row| %.3g, max relative VJP difference %.3g, gamma %.3g\n", gather_limit,
              worst_out, worst_vjp, worst_gamma);
  EXPECT_LE(worst_out, 1e-12);
  EXPECT_LE(worst_vjp, 1e-9);
}

TEST(GlobalProcesses, GatheredWindowsGiveTheOneProcessResultBitwise) { check_processes(static_cast<std::size_t>(-1), 4); }
TEST(GlobalProcesses, BandsByReductionsAgreeToTolerance) { check_processes(0, 5); }
TEST(GlobalProcesses, DefaultLimitAgreesToTolerance) { check_processes(64, 6); }

TEST(GlobalErrors, ProcessesPassingDifferentArgumentsAllFail) {
  ThreadReduction::Board board(2);
  std::vector<std::string> messages(2);
  std::vector<std::thread> threads;
  for (std::size_t r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      ThreadReduction reduction(board, r, 64);
      const std::vector<double> a{1, 2, 3};
      std::vector<double> o(3);
      const std::vector<std::span<const double>> in{a};
      const std::vector<std::span<double>> out{o};
      try {
        sparsetopk::soft_topk_mag_global<double>(in, 3 + r, out, {.l = r == 0 ? 0.1 : -1.0}, nullptr, &reduction);
      } catch (const sparsetopk::InvalidArgument& e) {
        messages[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const std::string& m : messages)
    EXPECT_EQ(m, "sparsetopk: every process must pass the same k: process 0 passed k = 3, process 1 k = 4");
}

TEST(GlobalErrors, NameTheArgumentAndValue) {
  const std::vector<double> a{1, 2}, b{3};
  const std::vector<std::span<const double>> in{a, b};
  std::vector<double> oa(2), ob(1), bad(2);
  const std::vector<std::span<double>> out{oa, ob}, wrong{oa, bad}, short_out{oa};
  EXPECT_THROW(
      {
        try {
          sparsetopk::soft_topk_mask_global<double>(in, 4, out);
        } catch (const sparsetopk::InvalidArgument& e) {
          EXPECT_STREQ(e.what(), "sparsetopk: k = 4 is out of range [0, n = 3]");
          throw;
        }
      },
      sparsetopk::InvalidArgument);
  try {
    sparsetopk::soft_topk_mag_global<double>(in, 1, wrong);
    ADD_FAILURE();
  } catch (const sparsetopk::InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "sparsetopk: out[1].size() = 2 differs from x[1].size() = 1");
  }
  try {
    sparsetopk::hard_topk_mag_global<double>(in, 1, short_out);
    ADD_FAILURE();
  } catch (const sparsetopk::InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "sparsetopk: out has 1 part(s), but x has 2");
  }
  EXPECT_THROW(sparsetopk::soft_topk_mag_global<double>(in, 1, out, {.l = -1.0}), sparsetopk::InvalidArgument);
  EXPECT_THROW(sparsetopk::soft_topk_mag_global<double>(in, 1, out, {.solver = sparsetopk::Solver::pav}),
               sparsetopk::InvalidArgument);
}

}  // namespace
