#pragma once
// Shared helpers for the core tests: a bounded, reproducible rapidcheck runner
// for GoogleTest, input generators and comparison helpers.

#include <gtest/gtest.h>
#include <rapidcheck.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <regex>
#include <span>
#include <sstream>
#include <string>
#include <vector>

namespace stk_test {

// Runs a rapidcheck property inside the current GoogleTest test with at most
// `max_success` cases. The seed is derived from the test name so that runs are
// reproducible; RC_PARAMS (seed=..., max_success=...) still overrides both.
template <class Testable>
void check_property(int max_success, Testable&& testable) {
  using namespace rc::detail;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  TestMetadata metadata;
  metadata.id = std::string(info->test_suite_name()) + "/" + info->name();
  metadata.description = info->name();
  TestParams params = configuration().testParams;
  const char* env = std::getenv("RC_PARAMS");
  const std::string env_str = env ? env : "";
  if (env_str.find("seed") == std::string::npos) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the test id
    for (unsigned char ch : metadata.id) h = (h ^ ch) * 1099511628211ull;
    params.seed = h;
  }
  if (env_str.find("max_success") == std::string::npos) params.maxSuccess = max_success;
  const auto result = checkTestable(std::forward<Testable>(testable), metadata, params);
  if (!result.template is<SuccessResult>()) {
    std::ostringstream ss;
    printResultMessage(result, ss);
    FAIL() << ss.str();
  }
}

// ---- generators ------------------------------------------------------------

// A value in [lo, hi] on a grid of `steps` points (shrinks towards lo).
inline double gen_grid(double lo, double hi, int steps = 100000) {
  const int i = *rc::gen::inRange(0, steps + 1);
  return lo + (hi - lo) * static_cast<double>(i) / steps;
}

// A row of n values in [lo, hi] (ties possible).
inline std::vector<double> gen_row(std::size_t n, double lo, double hi, int steps = 100000) {
  std::vector<double> x(n);
  for (auto& v : x) v = gen_grid(lo, hi, steps);
  return x;
}

// A uniformly random permutation of 0..n-1 (Fisher-Yates with generated indices).
inline std::vector<std::size_t> gen_permutation(std::size_t n) {
  std::vector<std::size_t> perm(n);
  std::iota(perm.begin(), perm.end(), std::size_t{0});
  for (std::size_t i = n; i > 1; --i) {
    const auto j = static_cast<std::size_t>(*rc::gen::inRange<int>(0, static_cast<int>(i)));
    std::swap(perm[i - 1], perm[j]);
  }
  return perm;
}

// n distinct values, consecutive sorted values at least `min_gap` apart (and at
// most `max_gap`), starting near `start`, in random order.
inline std::vector<double> gen_distinct_row(std::size_t n, double min_gap, double max_gap,
                                            double start) {
  std::vector<double> sorted(n);
  double v = start;
  for (std::size_t i = 0; i < n; ++i) {
    sorted[i] = v;
    v += gen_grid(min_gap, max_gap, 1000);
  }
  const auto perm = gen_permutation(n);
  std::vector<double> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = sorted[perm[i]];
  return x;
}

// One of the exponents the tests exercise.
inline double gen_p() { return *rc::gen::element(4.0 / 3.0, 1.5, 2.0, 3.0); }

// ---- comparison helpers ----------------------------------------------------

// Intrinsic conditioning of the soft outputs: for p > 2 (q - 1 < 1) the output
// u^(q-1) at an entry with u = (x_i - tau)/l near 0 is only Hoelder continuous,
// so a threshold known to a few ulps of max|x| already moves the output by
// about (ulps / l)^(q-1). A double implementation cannot do better, so
// comparisons of outputs add this term (0 for p <= 2).
inline double holder_tol(double p, double l, double xmax) {
  const double q1 = 1.0 / (p - 1);  // q - 1
  if (q1 >= 1) return 0.0;
  return std::pow(8 * 2.3e-16 * (1 + xmax) / l, q1);
}

inline double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double v : a) m = std::max(m, std::fabs(v));
  return m;
}

// True if the message contains `name` as a whole word (not as part of another word).
inline bool names_word(const std::string& message, const std::string& name) {
  const std::regex re("(^|[^A-Za-z0-9_])" + name + "([^A-Za-z0-9_]|$)");
  return std::regex_search(message, re);
}

inline std::string show(const std::vector<double>& v) {
  std::ostringstream ss;
  ss.precision(17);
  ss << "[";
  for (std::size_t i = 0; i < v.size(); ++i) ss << (i ? ", " : "") << v[i];
  ss << "]";
  return ss.str();
}

}  // namespace stk_test

// A rapidcheck property as a GoogleTest test run for at most MaxSuccess cases.
#define STK_PROP(Suite, Name, MaxSuccess)                                                      \
  static void stkProperty_##Suite##_##Name();                                                  \
  TEST(Suite, Name) { ::stk_test::check_property(MaxSuccess, &stkProperty_##Suite##_##Name); } \
  static void stkProperty_##Suite##_##Name()

// A rapidcheck property as a value-parameterized GoogleTest test (TEST_P on
// Fixture, a ::testing::TestWithParam): the body sees the parameter as `param`.
#define STK_PROP_P(Fixture, Name, MaxSuccess)                                                      \
  static void stkProperty_##Fixture##_##Name(const Fixture::ParamType& param);                     \
  TEST_P(Fixture, Name) {                                                                          \
    ::stk_test::check_property(MaxSuccess, [param = GetParam()] { stkProperty_##Fixture##_##Name(param); }); \
  }                                                                                                \
  static void stkProperty_##Fixture##_##Name([[maybe_unused]] const Fixture::ParamType& param)

// ---- thin wrappers over the batch API -------------------------------------

#include <sparsetopk/sparsetopk.hpp>

namespace stk_test {

inline sparsetopk::SoftTopkOptions options(
    double l, double p, sparsetopk::Solver solver = sparsetopk::Solver::automatic) {
  sparsetopk::SoftTopkOptions o;
  o.l = l;
  o.p = p;
  o.solver = solver;
  return o;
}

// One of the exact solvers.
inline sparsetopk::Solver gen_solver() {
  return *rc::gen::element(sparsetopk::Solver::automatic, sparsetopk::Solver::pav,
                           sparsetopk::Solver::threshold);
}

// What a soft forward pass saved for its derivatives: one RowState per row,
// with the row length and the options the VJP and JVP take besides x.
struct Saved {
  std::vector<sparsetopk::RowState> state;
  std::size_t n = 0;
  sparsetopk::SoftTopkOptions options;

  std::size_t rows() const { return state.size(); }
  // Sized for `size` entries of rows of n; rows already there keep their
  // contents (the forward pass must overwrite them).
  std::span<sparsetopk::RowState> prepare(std::size_t size, std::size_t row_length,
                                          const sparsetopk::SoftTopkOptions& o) {
    n = row_length;
    options = o;
    state.resize(row_length == 0 ? 0 : size / row_length);
    return state;
  }
};

template <class T>
std::vector<T> soft(sparsetopk::Form form, const std::vector<T>& x, std::size_t n, std::size_t k, double l,
                    double p, Saved* saved = nullptr, sparsetopk::Workspace* ws = nullptr,
                    sparsetopk::Solver solver = sparsetopk::Solver::automatic) {
  std::vector<T> out(x.size());
  const auto o = options(l, p, solver);
  const std::span<sparsetopk::RowState> state = saved ? saved->prepare(x.size(), n, o) : std::span<sparsetopk::RowState>();
  if (form == sparsetopk::Form::mask) sparsetopk::soft_topk_mask<T>(x, n, k, out, o, state, ws);
  else sparsetopk::soft_topk_mag<T>(x, n, k, out, o, state, ws);
  return out;
}

template <class T>
std::vector<T> mask(const std::vector<T>& x, std::size_t n, std::size_t k, double l, double p,
                    Saved* saved = nullptr, sparsetopk::Workspace* ws = nullptr,
                    sparsetopk::Solver solver = sparsetopk::Solver::automatic) {
  return soft(sparsetopk::Form::mask, x, n, k, l, p, saved, ws, solver);
}

template <class T>
std::vector<T> mag(const std::vector<T>& x, std::size_t n, std::size_t k, double l, double p,
                   Saved* saved = nullptr, sparsetopk::Workspace* ws = nullptr,
                   sparsetopk::Solver solver = sparsetopk::Solver::automatic) {
  return soft(sparsetopk::Form::magnitude, x, n, k, l, p, saved, ws, solver);
}

// J^T g (transpose) or J v at the forward pass on x that left `saved`.
template <class T>
std::vector<T> derivative(sparsetopk::Form form, bool transpose, const Saved& saved, const std::vector<T>& x,
                          const std::vector<T>& v) {
  std::vector<T> out(v.size());
  const std::span<const sparsetopk::RowState> state(saved.state);
  if (form == sparsetopk::Form::mask) {
    (transpose ? sparsetopk::soft_topk_mask_vjp<T> : sparsetopk::soft_topk_mask_jvp<T>)(x, saved.n, state,
                                                                                         saved.options, v, out);
  } else {
    (transpose ? sparsetopk::soft_topk_mag_vjp<T> : sparsetopk::soft_topk_mag_jvp<T>)(x, saved.n, state,
                                                                                       saved.options, v, out);
  }
  return out;
}
template <class T>
std::vector<T> vjp(sparsetopk::Form form, const Saved& saved, const std::vector<T>& x, const std::vector<T>& g) {
  return derivative(form, /*transpose=*/true, saved, x, g);
}
template <class T>
std::vector<T> jvp(sparsetopk::Form form, const Saved& saved, const std::vector<T>& x, const std::vector<T>& dx) {
  return derivative(form, /*transpose=*/false, saved, x, dx);
}

// The band of row r (soft_topk_*_band): columns and c_i, in column order.
template <class T>
std::vector<sparsetopk::BandEntry> band(sparsetopk::Form form, const Saved& saved, const std::vector<T>& x,
                                        std::size_t r) {
  const std::span<const T> row = std::span<const T>(x).subspan(r * saved.n, saved.n);
  return form == sparsetopk::Form::mask ? sparsetopk::soft_topk_mask_band<T>(row, saved.state[r], saved.options)
                                        : sparsetopk::soft_topk_mag_band<T>(row, saved.state[r], saved.options);
}

// The band's columns of row r, in column order.
template <class T>
std::vector<std::size_t> band_indices(sparsetopk::Form form, const Saved& saved, const std::vector<T>& x,
                                      std::size_t r) {
  std::vector<std::size_t> indices;
  for (const auto& entry : band(form, saved, x, r)) indices.push_back(entry.index);
  return indices;
}

// Every row's band as one dense array: c_i on the band's entries, -1 elsewhere.
template <class T>
std::vector<double> dense_band(sparsetopk::Form form, const Saved& saved, const std::vector<T>& x) {
  std::vector<double> c(x.size(), -1.0);
  for (std::size_t r = 0; r < saved.rows(); ++r)
    for (const auto& entry : band(form, saved, x, r)) c[r * saved.n + entry.index] = entry.c;
  return c;
}

// Whether two states hold the same bytes (NaN included).
inline bool same_bytes(std::span<const sparsetopk::RowState> a, std::span<const sparsetopk::RowState> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}

// Names the instances of a test parameterized on the form: "mask", "magnitude".
inline std::string form_name(sparsetopk::Form form) { return form == sparsetopk::Form::mask ? "mask" : "magnitude"; }
inline std::string form_name(const ::testing::TestParamInfo<sparsetopk::Form>& info) { return form_name(info.param); }

// Restores the thread count on scope exit.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(sparsetopk::num_threads()) {}
  ~ThreadCountGuard() { sparsetopk::set_num_threads(saved_); }
  ThreadCountGuard(const ThreadCountGuard&) = delete;
  ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;

 private:
  std::size_t saved_;
};

}  // namespace stk_test

// How GoogleTest prints a Form parameter (found by argument-dependent lookup).
namespace sparsetopk {
inline void PrintTo(Form form, std::ostream* os) { *os << stk_test::form_name(form); }
}  // namespace sparsetopk
