#pragma once
// Helpers shared by the fuzz targets: a byte reader that never runs out (it
// yields zeros past the end), decoders for rows of hostile doubles, and a
// failure report that prints the decoded case before aborting, so that a crash
// file is readable without a debugger.

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace stk_fuzz {

class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(byte() | (byte() << 8)); }
  bool empty() const { return pos_ >= size_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
inline constexpr double kInf = std::numeric_limits<double>::infinity();

// The regularization strengths and norms the targets draw from.
inline constexpr double kLs[] = {1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0, 1e4, 1e6, 1e8};
inline constexpr double kPs[] = {1.01, 1.1, 4.0 / 3.0, 1.5, 2.0, 3.0, 10.0, 100.0};

template <class Array>
double pick(const Array& values, std::uint8_t b) {
  return values[b % (sizeof(values) / sizeof(values[0]))];
}

// One entry. Most come from a grid at the row's scale (ties and exact zeros
// are frequent); the rest are copies of earlier entries (ties, also in
// magnitude), values a few ulps from an earlier one, magnitudes anywhere in
// [1e-30, 1e30], subnormals, and, if `allow_non_finite`, NaN and +-inf.
inline double decode_value(ByteReader& in, const std::vector<double>& previous, double scale,
                           bool allow_non_finite) {
  const std::uint8_t code = in.byte();
  const std::uint8_t b = in.byte();
  const std::size_t i = previous.size();
  if (code < 150) return scale * (static_cast<double>(b) - 128.0) / 8.0;
  if (code < 180) {
    if (i == 0) return 0.0;
    const double v = previous[b % i];
    return (code & 1) ? -v : v;
  }
  if (code < 195) {
    if (i == 0) return scale;
    double v = previous[b % i];
    for (int step = 0; step < 1 + (code & 3); ++step) v = std::nextafter(v, (code & 4) ? kInf : -kInf);
    return std::isfinite(v) ? v : previous[b % i];
  }
  if (code < 205) return (code & 1) ? -0.0 : 0.0;
  if (code < 235) {
    const int exponent = static_cast<int>(in.byte() % 61) - 30;  // 1e-30 .. 1e30
    const double mantissa = 1.0 + static_cast<double>(b) / 256.0;
    const double v = mantissa * std::pow(10.0, exponent);
    return (code & 1) ? -v : v;
  }
  if (code < 245 || !allow_non_finite) {
    // subnormal or near the smallest normal
    const double v = (code & 2) ? DBL_MIN * (1.0 + static_cast<double>(b)) : DBL_TRUE_MIN * (1.0 + static_cast<double>(b) * 1000.0);
    return (code & 1) ? -v : v;
  }
  if (code < 249) return kNaN;
  if (code < 253) return kInf;
  return -kInf;
}

// The row's scale: 10^e for e in [-30, 30].
inline double decode_scale(ByteReader& in) {
  return std::pow(10.0, static_cast<double>(static_cast<int>(in.byte() % 61) - 30));
}

inline std::vector<double> decode_row(ByteReader& in, std::size_t n, double scale, bool allow_non_finite) {
  std::vector<double> x;
  x.reserve(n);
  for (std::size_t i = 0; i < n; ++i) x.push_back(decode_value(in, x, scale, allow_non_finite));
  return x;
}

// The values with %.17g; a run of equal values prints as "value (xN)".
inline std::string show(std::span<const double> v) {
  std::string s = "[";
  char buffer[64];
  for (std::size_t i = 0; i < v.size();) {
    std::size_t run = 1;
    while (i + run < v.size() && std::memcmp(&v[i], &v[i + run], sizeof(double)) == 0) ++run;
    if (run > 2) std::snprintf(buffer, sizeof buffer, i ? ", %.17g (x%zu)" : "%.17g (x%zu)", v[i], run);
    else std::snprintf(buffer, sizeof buffer, i ? ", %.17g" : "%.17g", v[i]), run = 1;
    s += buffer;
    i += run;
  }
  return s + "]";
}

inline bool all_finite(std::span<const double> v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

inline double max_abs(std::span<const double> v) {
  double m = 0.0;
  for (double x : v) m = std::fmax(m, std::abs(x));
  return m;
}

// Prints the case and the violated property, then aborts (libFuzzer saves the input).
[[noreturn]] inline void fail(const std::string& context, const std::string& what) {
  std::fprintf(stderr, "\n==== sparsetopk fuzz: property violated ====\n%s\n%s\n", context.c_str(), what.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace stk_fuzz
