// kernel_selftest: the CUDA kernels (topk_kernels.hpp) against the CPU core,
// torch- and JAX-free. Built twice:
//   - kernel_selftest_cpu: the kernels as host C++ on the CPU harness
//     (harness/cuda_on_cpu.hpp), in CI, also under ASan+UBSan and TSan;
//   - kernel_selftest: the kernels built by nvcc, on a GPU (scripts/gpu-check.sh).
//
//   kernel_selftest[_cpu] --check [--small | --smoke] [--case SUBSTRING]
//
// For every case (shape, k, data, dtype, p, solver, form) it runs the soft
// forward with state, its VJP and JVP, and the hard forward, and compares
// each with the core's (sparsetopk/topk.hpp) on the same input. Differences
// are in ulps of the dtype at the row's scale (the largest |value| of the
// core's row): |kernel - core| / (eps * scale). It prints one line per case
// with the largest difference of each array and a final "N passed, M failed";
// the exit status is 0 when every case passed.
//
// Tolerances (ulps of the row's scale), per p: the kernels run the core's
// own per-row code, so outputs and RowState differ only where the device's
// pow/cbrt differ from glibc (on the CPU harness: not at all); the
// derivatives sum over the band in another order than the core (a team
// reduction against a loop in column order). Rows of more than
// kSortedWindowLimit entries may have a window that wide, which the kernels
// solve by reductions (the core's band_reductions.hpp) where the core sorts
// it: their outputs agree to 1e-11 of the row's scale for p = 2 and 4/3 (in
// double), and their RowState may say the same differently (a near-zero
// gamma of either sign, an entry at u = 0 in or out of the band): it is
// checked through the VJP and JVP, which read it. For other p the core
// solves the entries within 1e-6 |gamma| of gamma again so that the window's
// outputs sum to k exactly, which moves such an entry's u by up to the
// rounding of gamma times the slope of the equation over that entry's
// (steep where pow(u, q - 1) rises from 0: p > 2); the kernels do not. On a
// 2.2e6-entry row at p = 3 (a window of 77,000) the two differ by 3e-11 in
// one output and 1e-8 in the derivatives, and a long-double evaluation of
// the equation puts the kernels' threshold within 4e-16 of the root and the
// core's near entry's 1.4e-14 off: here the core is the less exact one.
// So for other p: outputs to 1e-9, derivatives to 1e-7 of the row's scale.

#include <algorithm>
#include <chrono>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <sparsetopk/row_state.hpp>
#include <sparsetopk/topk.hpp>

#include "topk_kernels.hpp"

namespace {

using sparsetopk::Form;
using sparsetopk::RowState;
using sparsetopk::Solver;

// ---- device memory: cudaMalloc on the GPU, host memory on the harness ----

#ifdef SPARSETOPK_SELFTEST_GPU
void check(cudaError_t status) {
  if (status != cudaSuccess) throw std::runtime_error(std::string("CUDA: ") + cudaGetErrorString(status));
}
#endif

template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t count) : count_(count) {
#ifdef SPARSETOPK_SELFTEST_GPU
    check(cudaMalloc(reinterpret_cast<void**>(&data_), std::max<std::size_t>(count, 1) * sizeof(T)));
#else
    host_.resize(std::max<std::size_t>(count, 1));
    data_ = host_.data();
#endif
  }
  ~DeviceArray() {
#ifdef SPARSETOPK_SELFTEST_GPU
    cudaFree(data_);
#endif
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() { return data_; }
  void upload(const std::vector<T>& from) {
#ifdef SPARSETOPK_SELFTEST_GPU
    check(cudaMemcpy(data_, from.data(), count_ * sizeof(T), cudaMemcpyHostToDevice));
#else
    std::copy(from.begin(), from.end(), host_.begin());
#endif
  }
  std::vector<T> download() const {
    std::vector<T> to(count_);
#ifdef SPARSETOPK_SELFTEST_GPU
    check(cudaDeviceSynchronize());
    check(cudaMemcpy(to.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
#else
    std::copy(host_.begin(), host_.begin() + static_cast<std::ptrdiff_t>(count_), to.begin());
#endif
    return to;
  }

 private:
  std::size_t count_;
  T* data_ = nullptr;
#ifndef SPARSETOPK_SELFTEST_GPU
  std::vector<T> host_;
#endif
};

void synchronize() {
#ifdef SPARSETOPK_SELFTEST_GPU
  check(cudaDeviceSynchronize());
#endif
}

// ---- cases ----

enum class Data { normal, ties, hostile };
const char* data_name(Data d) { return d == Data::normal ? "normal" : d == Data::ties ? "ties" : "hostile"; }

struct Case {
  long long rows, n, k;
  Data data;
  bool dbl;  // double, else float
  double p, l;
  Solver solver;
  std::string name() const {
    char buffer[160];
    std::snprintf(buffer, sizeof buffer, "%lldx%lld k=%lld %s %s p=%.4g l=%g%s", rows, n, k, data_name(data),
                  dbl ? "double" : "float", p, l, solver == Solver::pav ? " pav" : "");
    return buffer;
  }
};

// Rows of normal keys; ties: integers in [-3, 3] with zeros of both signs;
// hostile: normal rows, every 7th with a NaN, every 11th with an infinity,
// every 13th at scale 1e30 and every 17th at 1e-30.
template <class T>
std::vector<T> make_input(const Case& c, unsigned seed) {
  std::mt19937_64 random(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> small(-3, 3), column(0, static_cast<int>(std::max(c.n - 1, 0LL)));
  std::vector<T> x(static_cast<std::size_t>(c.rows * c.n));
  for (long long r = 0; r < c.rows; ++r) {
    const double scale = c.data == Data::hostile && r % 13 == 5 ? 1e30 : c.data == Data::hostile && r % 17 == 3 ? 1e-30 : 1.0;
    for (long long i = 0; i < c.n; ++i) {
      double v = normal(random) * scale;
      if (c.data == Data::ties) {
        const int q = small(random);
        v = q == 0 ? (random() % 2 ? -0.0 : 0.0) : q;
      }
      x[static_cast<std::size_t>(r * c.n + i)] = static_cast<T>(v);
    }
    if (c.data == Data::hostile && c.n > 0) {
      if (r % 7 == 2) x[static_cast<std::size_t>(r * c.n + column(random))] = std::numeric_limits<T>::quiet_NaN();
      if (r % 11 == 4)
        x[static_cast<std::size_t>(r * c.n + column(random))] = (r % 2 ? -1 : 1) * std::numeric_limits<T>::infinity();
    }
  }
  return x;
}

// ---- differences in ulps ----

// The largest |a_i - b_i| / (eps * scale of b's row); NaN against NaN is 0,
// NaN against a number infinite.
template <class T>
double row_ulps(std::span<const T> a, std::span<const T> b, long long n) {
  const double eps = std::numeric_limits<T>::epsilon();
  double worst = 0.0;
  for (std::size_t r = 0; n > 0 && r * static_cast<std::size_t>(n) < b.size(); ++r) {
    const auto row = b.subspan(r * n, static_cast<std::size_t>(n));
    double scale = 0.0;
    for (T v : row)
      if (std::isfinite(v)) scale = std::max(scale, std::abs(static_cast<double>(v)));
    if (scale == 0.0) scale = 1.0;
    for (long long i = 0; i < n; ++i) {
      const double x = a[r * n + i], y = b[r * n + i];
      if (std::isnan(x) || std::isnan(y)) {
        if (std::isnan(x) != std::isnan(y)) return std::numeric_limits<double>::infinity();
        continue;
      }
      if (x == y) continue;
      worst = std::max(worst, std::abs(x - y) / (eps * scale));
    }
  }
  return worst;
}

// RowState field by field, in double ulps of the larger magnitude.
double state_ulps(const std::vector<RowState>& a, const std::vector<RowState>& b) {
  double worst = 0.0;
  for (std::size_t r = 0; r < b.size(); ++r) {
    double fa[RowState::size], fb[RowState::size];
    std::memcpy(fa, &a[r], sizeof fa);
    std::memcpy(fb, &b[r], sizeof fb);
    for (std::size_t f = 0; f < RowState::size; ++f) {
      if (std::isnan(fa[f]) || std::isnan(fb[f])) {
        if (std::isnan(fa[f]) != std::isnan(fb[f])) return std::numeric_limits<double>::infinity();
        continue;
      }
      if (fa[f] == fb[f]) continue;
      if (!std::isfinite(fa[f]) || !std::isfinite(fb[f])) return std::numeric_limits<double>::infinity();
      worst = std::max(worst, std::abs(fa[f] - fb[f]) / (DBL_EPSILON * std::max(std::abs(fa[f]), std::abs(fb[f]))));
    }
  }
  return worst;
}

// Tolerances in ulps of the row's scale, per p (see the top of the file and docs/gpu.md).
struct Tolerance {
  double forward, derivative;
  bool state = true;  // whether RowState is compared field by field (at `forward`)
};
// The derivatives' sums over the band run in another order than the core's,
// so their rounding grows with the band: the derivative tolerance is for rows of
// up to 1024 entries and grows in proportion beyond.
Tolerance tolerance_for(double p, long long n, Solver solver, double eps) {
  const double terms = std::max(1.0, static_cast<double>(n) / 1024.0);
  Tolerance tolerance = p == 2.0                           ? Tolerance{4.0, 64.0 * terms}
                        : std::abs(p - 4.0 / 3.0) < 1e-12 ? Tolerance{64.0, 1024.0 * terms}
                                                          : Tolerance{256.0, 4096.0 * terms};
  if (n > sparsetopk::cuda::kSortedWindowLimit && solver != Solver::pav) {  // windows by reductions
    const bool steep = p != 2.0 && std::abs(p - 4.0 / 3.0) >= 1e-12;
    tolerance.forward = std::max(tolerance.forward, (steep ? 1e-9 : 1e-11) / eps);
    if (steep) tolerance.derivative = std::max(tolerance.derivative, 1e-7 / eps);
    tolerance.state = false;
  }
  return tolerance;
}

// ---- one case ----

struct Result {
  double out = 0, state = 0, vjp = 0, jvp = 0, hard = 0;
  double seconds = 0;  // the kernels' time (soft forward, VJP, JVP, hard), synchronized
};

template <class T>
Result run_case(const Case& c, Form form, unsigned seed) {
  const std::size_t size = static_cast<std::size_t>(c.rows * c.n), rows = static_cast<std::size_t>(c.rows);
  const std::vector<T> x = make_input<T>(c, seed);
  std::mt19937_64 random(seed + 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<T> v(size);
  for (T& value : v) value = static_cast<T>(normal(random));
  const sparsetopk::SoftTopkOptions options{.l = c.l, .p = c.p, .solver = c.solver};
  const std::size_t n = static_cast<std::size_t>(c.n), k = static_cast<std::size_t>(c.k);

  // the core
  std::vector<T> out(size), vjp(size), jvp(size), hard(size);
  std::vector<RowState> state(rows);
  const std::span<const T> xs(x), vs(v);
  if (form == Form::mask) {
    sparsetopk::soft_topk_mask<T>(xs, n, k, out, options, state);
    sparsetopk::soft_topk_mask_vjp<T>(xs, n, state, options, vs, vjp);
    sparsetopk::soft_topk_mask_jvp<T>(xs, n, state, options, vs, jvp);
    sparsetopk::hard_topk_mask<T>(xs, n, k, hard);
  } else {
    sparsetopk::soft_topk_mag<T>(xs, n, k, out, options, state);
    sparsetopk::soft_topk_mag_vjp<T>(xs, n, state, options, vs, vjp);
    sparsetopk::soft_topk_mag_jvp<T>(xs, n, state, options, vs, jvp);
    sparsetopk::hard_topk_mag<T>(xs, n, k, hard);
  }

  // the kernels, on outputs poisoned beforehand (an entry never written shows)
  DeviceArray<T> d_x(size), d_v(size), d_out(size), d_vjp(size), d_jvp(size), d_hard(size);
  DeviceArray<RowState> d_state(rows);
  DeviceArray<unsigned char> d_scratch(sparsetopk::cuda::soft_scratch_bytes(c.rows, c.n));
  DeviceArray<unsigned char> d_hard_scratch(sparsetopk::cuda::hard_scratch_bytes(c.rows, c.n));
  DeviceArray<unsigned char> d_product_scratch(sparsetopk::cuda::jacobian_scratch_bytes(c.rows, c.n));
  d_x.upload(x);
  d_v.upload(v);
  const std::vector<T> poison(size, std::numeric_limits<T>::max());
  for (DeviceArray<T>* a : {&d_out, &d_vjp, &d_jvp, &d_hard}) a->upload(poison);
  RowState poisoned;
  std::memset(static_cast<void*>(&poisoned), 0xff, sizeof poisoned);
  d_state.upload(std::vector<RowState>(rows, poisoned));
  synchronize();
  const auto start = std::chrono::steady_clock::now();
  sparsetopk::cuda::soft_forward<T>(form, c.solver, d_x.get(), c.rows, c.n, c.k, c.l, c.p, d_scratch.get(),
                                    d_out.get(), d_state.get(), nullptr);
  sparsetopk::cuda::jacobian_product<T>(form, true, d_v.get(), d_x.get(), d_state.get(), c.l, c.p, c.rows, c.n,
                                        d_product_scratch.get(), d_vjp.get(), nullptr);
  sparsetopk::cuda::jacobian_product<T>(form, false, d_v.get(), d_x.get(), d_state.get(), c.l, c.p, c.rows, c.n,
                                        d_product_scratch.get(), d_jvp.get(), nullptr);
  sparsetopk::cuda::hard_forward<T>(form, d_x.get(), c.rows, c.n, c.k, d_hard_scratch.get(), d_hard.get(), nullptr);
  synchronize();
  Result result;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.out = row_ulps<T>(d_out.download(), out, c.n);
  result.state = state_ulps(d_state.download(), state);
  result.vjp = row_ulps<T>(d_vjp.download(), vjp, c.n);
  result.jvp = row_ulps<T>(d_jvp.download(), jvp, c.n);
  result.hard = row_ulps<T>(d_hard.download(), hard, c.n);
  return result;
}

// The case lists: every case (--check), a small set (--small, for compute-sanitizer
// and AddressSanitizer), and a smoke set (--smoke, for the harness's real threads
// and ThreadSanitizer, where each launch starts a thread per CUDA thread).
enum class Cases { all, small, smoke };

std::vector<Case> smoke_cases() {
  std::vector<Case> some;
  for (const Data data : {Data::normal, Data::hostile})
    for (bool dbl : {false, true}) {
      some.push_back({5, 40, 3, data, dbl, 4.0 / 3.0, 0.1, Solver::automatic});
      some.push_back({3, 1500, 10, data, dbl, 3.0, 0.1, Solver::automatic});
    }
  some.push_back({2, 60, 6, Data::ties, false, 2.0, 0.1, Solver::pav});
  some.push_back({1, 4000, 800, Data::normal, true, 3.0, 1.0, Solver::automatic});  // a window by reductions
  // a long row (two chunks' blocks: the digit passes' tickets, candidates and maxima across blocks)
  some.push_back({1, 16385, 1000, Data::normal, true, 4.0 / 3.0, 0.1, Solver::automatic});
  return some;
}

std::vector<Case> cases(Cases which) {
  if (which == Cases::smoke) return smoke_cases();
  const bool small = which == Cases::small;
  std::vector<Case> all;
  const double ps[] = {4.0 / 3.0, 2.0, 1.5, 3.0};
  // every p, both dtypes, the three kinds of data, on the warp rows (n <= 1024) and block rows
  struct Shape {
    long long rows, n, k;
  };
  const std::vector<Shape> shapes = small ? std::vector<Shape>{{5, 40, 3}, {3, 1500, 10}}
                                          : std::vector<Shape>{{500, 100, 10},  {501, 100, 1},   {64, 64, 0},
                                                               {64, 64, 1},     {64, 64, 63},    {64, 64, 64},
                                                               {6, 3000, 0},    {6, 3000, 1},    {6, 3000, 2999},
                                                               {6, 3000, 3000}, {40, 1024, 100}, {7, 1025, 100},
                                                               {3, 16385, 100}};
  for (const Shape& s : shapes)
    for (Data data : {Data::normal, Data::ties, Data::hostile})
      for (bool dbl : {false, true})
        for (double p : ps) all.push_back({s.rows, s.n, s.k, data, dbl, p, 0.1, Solver::automatic});
  // the whole row sorted (Solver::pav), and a large l (wide windows; in rows of
  // 6000 wider than kSortedWindowLimit: solved by reductions)
  for (bool dbl : {false, true})
    for (double p : ps) {
      all.push_back({small ? 4LL : 100LL, 200, 20, Data::normal, dbl, p, 0.1, Solver::pav});
      all.push_back({small ? 4LL : 50LL, 300, 30, Data::normal, dbl, p, 10.0, Solver::automatic});
      all.push_back({small ? 1LL : 4LL, 6000, 1500, small ? Data::normal : Data::ties, dbl, p, 1.0, Solver::automatic});
      if (!small) all.push_back({4, 6000, 1500, Data::normal, dbl, p, 1.0, Solver::automatic});
    }
  if (small) return all;
  // the large ones: many rows (the grid loops), two long rows, one very long row
  // (70000 warp rows cost the CPU harness about 15 s per form: two cases only)
  all.push_back({70000, 16, 4, Data::normal, false, 4.0 / 3.0, 0.1, Solver::automatic});
  for (double p : {4.0 / 3.0, 2.0}) {
    all.push_back({2, 40000, 1000, Data::normal, false, p, 0.1, Solver::automatic});
    all.push_back({2, 40000, 1000, Data::ties, true, p, 0.1, Solver::automatic});
    all.push_back({1, 1000000, 10000, Data::normal, false, p, 0.1, Solver::automatic});
  }
  all.push_back({70000, 16, 4, Data::hostile, true, 1.5, 0.1, Solver::automatic});
  // long rows (a block per chunk of 16384): hostile rows, ties across chunks, k at the
  // chunks' border, k = 0 and k = n (a block per row), pav. (Hostile long rows at p = 4/3 only:
  // the core's magnitude solve for general p is quadratic in the window, and a row at scale
  // 1e-30 is all window: 23 x 40000 at p = 1.5 takes the core ~110 s per such row.)
  all.push_back({23, 40000, 7, Data::hostile, true, 4.0 / 3.0, 0.1, Solver::automatic});
  all.push_back({4, 33000, 16500, Data::ties, false, 3.0, 0.1, Solver::automatic});
  all.push_back({4, 33000, 16500, Data::ties, true, 4.0 / 3.0, 0.5, Solver::automatic});
  all.push_back({2, 16385, 16384, Data::normal, true, 2.0, 0.1, Solver::automatic});
  all.push_back({3, 20000, 0, Data::normal, false, 4.0 / 3.0, 0.1, Solver::automatic});
  all.push_back({3, 20000, 20000, Data::ties, true, 4.0 / 3.0, 0.1, Solver::automatic});
  all.push_back({2, 20000, 500, Data::normal, true, 3.0, 0.1, Solver::pav});
  all.push_back({1, 1000000, 10000, Data::normal, true, 3.0, 0.1, Solver::automatic});
  // rows of 2.2e6 (at least kRoundRowSize): the wide band searched across the chunks' blocks
  all.push_back({1, 2200000, 220000, Data::normal, false, 4.0 / 3.0, 0.1, Solver::automatic});
  all.push_back({1, 2200000, 220000, Data::ties, true, 2.0, 0.1, Solver::automatic});
  all.push_back({1, 2200000, 220000, Data::normal, true, 3.0, 0.1, Solver::automatic});
  // warp rows shorter than a warp, one past it, and of 2 entries (the register rows' ballot
  // selection). (Each case's seed is its place in this list: new cases go last, so that the
  // earlier ones keep their inputs.)
  for (const Shape& s : std::vector<Shape>{{20, 2, 1}, {20, 31, 30}, {20, 33, 17}})
    for (Data data : {Data::normal, Data::ties, Data::hostile})
      for (bool dbl : {false, true})
        for (double p : ps) all.push_back({s.rows, s.n, s.k, data, dbl, p, 0.1, Solver::automatic});
  return all;
}

int usage(const char* program) {
  std::fprintf(stderr, "usage: %s --check [--small | --smoke] [--case SUBSTRING]\n", program);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  bool check = false;
  Cases which = Cases::all;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--check") check = true;
    else if (arg == "--small") which = Cases::small;
    else if (arg == "--smoke") which = Cases::smoke;
    else if (arg == "--case" && i + 1 < argc) filter = argv[++i];
    else return usage(argv[0]);
  }
  if (!check) return usage(argv[0]);
  int passed = 0, failed = 0;
  unsigned seed = 1;
  double worst_forward = 0, worst_derivative = 0;
  for (const Case& c : cases(which)) {
    for (Form form : {Form::mask, Form::magnitude}) {
      const std::string name = c.name() + (form == Form::mask ? " mask" : " mag");
      ++seed;
      if (!filter.empty() && name.find(filter) == std::string::npos) continue;
      try {
        const Result r = c.dbl ? run_case<double>(c, form, seed) : run_case<float>(c, form, seed);
        const Tolerance tolerance =
            tolerance_for(c.p, c.n, c.solver, c.dbl ? DBL_EPSILON : static_cast<double>(FLT_EPSILON));
        const bool ok = r.out <= tolerance.forward && (r.state <= tolerance.forward || !tolerance.state) &&
                        r.hard == 0.0 &&
                        r.vjp <= tolerance.derivative && r.jvp <= tolerance.derivative;
        worst_forward = std::max({worst_forward, r.out, tolerance.state ? r.state : 0.0});
        worst_derivative = std::max({worst_derivative, r.vjp, r.jvp});
        std::printf("%s %s: out %.3g, state %.3g%s, vjp %.3g, jvp %.3g, hard %.3g ulps (tolerance %g / %g) %.3f s\n",
                    ok ? "ok  " : "FAIL", name.c_str(), r.out, r.state, tolerance.state ? "" : " (not compared)",
                    r.vjp, r.jvp, r.hard, tolerance.forward, tolerance.derivative, r.seconds);
        (ok ? passed : failed)++;
      } catch (const std::exception& error) {
        std::printf("FAIL %s: %s\n", name.c_str(), error.what());
        ++failed;
      }
      std::fflush(stdout);
    }
  }
  std::printf("largest differences: forward %.3g ulps, derivatives %.3g ulps\n", worst_forward, worst_derivative);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 && passed > 0 ? 0 : 1;
}
