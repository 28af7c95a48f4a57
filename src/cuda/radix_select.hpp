#pragma once
// The radix selection of the CUDA kernels (topk_kernels.cu), written once for
// both sides so that its logic is tested on the CPU
// (tests/core/test_cuda_pipeline.cpp): keys' order-preserving bits, the digit of
// one pass, and the key test of a pass. The CUDA kernels are UNVERIFIED on a
// GPU (docs/gpu.md); this header's logic is verified on the CPU harness only.

#include <cmath>
#include <cstring>

#include "host_device.hpp"  // src/core/row, through the sparsetopk_row target
#include "sorted_order.hpp"
#include "sparsetopk/form.hpp"

namespace sparsetopk::cuda {

constexpr int kRadixBits = 8;
constexpr int kRadixSize = 1 << kRadixBits;

template <class T>
struct Bits;
template <>
struct Bits<float> {
  using type = unsigned int;
};
template <>
struct Bits<double> {
  using type = unsigned long long;
};
template <class T>
using BitsOf = typename Bits<T>::type;

// key_i (sorted_order.hpp's sort_key), -0 made +0 (they are the same key)
template <class T>
SPARSETOPK_HOST_DEVICE T key_of(Form form, T x) {
  return detail::sort_key(form, x) + T(0);
}

// Unsigned bits ordered as the keys: flip every bit of a negative key, the sign bit of the others.
template <class T>
SPARSETOPK_HOST_DEVICE BitsOf<T> encode(T v) {
  using U = BitsOf<T>;
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  U b;
  memcpy(&b, &v, sizeof(U));
  return (b & sign) ? ~b : b | sign;
}

template <class T>
SPARSETOPK_HOST_DEVICE T decode(BitsOf<T> e) {
  using U = BitsOf<T>;
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  const U b = (e & sign) ? e & ~sign : ~e;
  T v;
  memcpy(&v, &b, sizeof(U));
  return v;
}

// Whether e's bits from bit `from` up equal the prefix's (always, from the width up).
template <class U>
SPARSETOPK_HOST_DEVICE bool matches_from(U e, U prefix, int from) {
  return from >= static_cast<int>(8 * sizeof(U)) || (e >> from) == (prefix >> from);
}

// Whether e's bits above the digit at `shift` equal the prefix's (always, on the first pass).
template <class U>
SPARSETOPK_HOST_DEVICE bool matches_prefix(U e, U prefix, int shift) {
  return matches_from(e, prefix, shift + kRadixBits);
}

// One pass's choice, from the counts of its digits among the keys matching
// the prefix: the digit holding the remaining-th largest of them goes into the
// prefix, `remaining` becomes that key's rank within the digit, `ties` the
// digit's count (after the last pass: how many keys equal the k-th).
template <class U, class Count>
SPARSETOPK_HOST_DEVICE void choose_digit(const Count* counts, int shift, U& prefix, long long& remaining,
                                         long long& ties) {
  long long above = 0;
  for (int d = kRadixSize - 1; d >= 0; --d) {
    const long long count = static_cast<long long>(counts[d]);
    if (above + count >= remaining) {
      prefix |= static_cast<U>(d) << shift;
      remaining -= above;
      ties = count;
      return;
    }
    above += count;
  }
}

}  // namespace sparsetopk::cuda
