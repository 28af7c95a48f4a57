#pragma once
// Slow, independent reference implementations of the operators of SPEC.md,
// written for the tests only. Nothing here uses the library: every root is
// found by plain bisection in long double, and the isotonic problems are solved
// by exhaustive search over all partitions into contiguous blocks.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace ref {

using Real = long double;

// Sign-preserving power pow(u, a) = sign(u) |u|^a of SPEC.md.
inline Real spow(Real u, Real a) {
  if (u == 0) return 0;
  return u > 0 ? std::pow(u, a) : -std::pow(-u, a);
}

// q = p / (p - 1), the conjugate exponent.
inline Real conjugate(double p) {
  const Real pl = p;
  return pl / (pl - 1);
}

// Bisection of a non-increasing function f on [lo, hi] with f(lo) >= 0 >= f(hi),
// run until the bracket cannot shrink any more in long double (or is narrower
// than 1e-60). Returns the midpoint of the final bracket.
template <class F>
Real bisect_decreasing(F&& f, Real lo, Real hi) {
  for (int it = 0; it < 20000; ++it) {
    const Real mid = lo + (hi - lo) / 2;
    if (!(mid > lo && mid < hi) || hi - lo < Real(1e-60)) break;
    if (f(mid) >= 0) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo + (hi - lo) / 2;
}

// Same, but grows the initial bracket [lo, hi] until it contains a sign change.
template <class F>
Real bisect_decreasing_expand(F&& f, Real lo, Real hi) {
  Real width = std::max<Real>(hi - lo, 1);
  for (int i = 0; i < 4000 && f(lo) < 0; ++i) {
    lo -= width;
    width *= 2;
  }
  width = std::max<Real>(hi - lo, 1);
  for (int i = 0; i < 4000 && f(hi) > 0; ++i) {
    hi += width;
    width *= 2;
  }
  if (f(lo) < 0 || f(hi) > 0) throw std::runtime_error("ref: bracket not found");
  return bisect_decreasing(f, lo, hi);
}

// ----------------------------------------------------------------------------
// Hard operators: plain stable sort, ties by lower index.

inline std::vector<std::size_t> order_descending(const std::vector<double>& key) {
  std::vector<std::size_t> idx(key.size());
  std::iota(idx.begin(), idx.end(), std::size_t{0});
  std::stable_sort(idx.begin(), idx.end(),
                   [&](std::size_t a, std::size_t b) { return key[a] > key[b]; });
  return idx;
}

inline std::vector<double> hard_mask(const std::vector<double>& x, std::size_t k) {
  std::vector<double> out(x.size(), 0.0);
  const auto idx = order_descending(x);
  for (std::size_t j = 0; j < k && j < idx.size(); ++j) out[idx[j]] = 1.0;
  return out;
}

inline std::vector<double> hard_mag(const std::vector<double>& x, std::size_t k) {
  std::vector<double> a(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) a[i] = std::fabs(x[i]);
  const auto m = hard_mask(a, k);
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = x[i] * m[i];
  return out;
}

// ----------------------------------------------------------------------------
// Soft top-k mask: out_i = clip((x_i - tau)/l, 0, 1)^(q-1) with tau a root of
// sum_i clip((x_i - tau)/l, 0, 1)^(q-1) = k (SPEC.md closed form).

struct MaskResult {
  std::vector<double> out;
  Real tau = 0;  // a root (any root when the root is not unique)
};

inline Real clip01(Real u) { return u < 0 ? Real(0) : (u > 1 ? Real(1) : u); }

inline MaskResult soft_mask(const std::vector<double>& x, std::size_t k, double l, double p) {
  const std::size_t n = x.size();
  const Real q = conjugate(p);
  const Real L = l;
  MaskResult r;
  r.out.assign(n, 0.0);
  if (n == 0) return r;
  if (k == 0) {
    r.tau = *std::max_element(x.begin(), x.end());
    return r;
  }
  if (k >= n) {
    r.tau = *std::min_element(x.begin(), x.end()) - L;
    r.out.assign(n, 1.0);
    return r;
  }
  // Pass 1: tau itself.
  auto f = [&](Real tau) {
    Real sum = 0;
    for (double xi : x) sum += std::pow(clip01((Real(xi) - tau) / L), q - 1);
    return sum - Real(k);
  };
  const Real lo = Real(*std::min_element(x.begin(), x.end())) - L;
  const Real hi = Real(*std::max_element(x.begin(), x.end()));
  const Real tau0 = bisect_decreasing(f, lo, hi);
  // Pass 2: tau = a + delta with a the entry nearest tau0, so that delta (and
  // hence x_i - tau for the entries at the threshold, where the output
  // y = u^(q-1) is steepest when q < 2) keeps full relative precision.
  Real a = x[0];
  for (double xi : x)
    if (std::fabs(Real(xi) - tau0) < std::fabs(a - tau0)) a = xi;
  std::vector<Real> d(n);
  for (std::size_t i = 0; i < n; ++i) d[i] = Real(x[i]) - a;
  auto fd = [&](Real delta) {
    Real sum = 0;
    for (std::size_t i = 0; i < n; ++i) sum += std::pow(clip01((d[i] - delta) / L), q - 1);
    return sum - Real(k);
  };
  const Real delta = bisect_decreasing(fd, lo - a, hi - a);
  r.tau = a + delta;
  for (std::size_t i = 0; i < n; ++i)
    r.out[i] = static_cast<double>(std::pow(clip01((d[i] - delta) / L), q - 1));
  return r;
}

// ----------------------------------------------------------------------------
// Soft top-k in magnitude (SPEC.md "Top-k structure"): gamma >= 0 root of
//   sum_{top} min(pow((s_i - g)/l, q-1) - g, 0) + sum_{rest} pow((s_i - g)_+/l, q-1) = 0
// where top are the k largest |x|.

struct MagResult {
  std::vector<double> out;
  std::vector<bool> top;  // membership of the k largest |x|
  Real gamma = 0;
};

inline MagResult soft_mag(const std::vector<double>& x, std::size_t k, double l, double p) {
  const std::size_t n = x.size();
  const Real q = conjugate(p);
  const Real L = l;
  MagResult r;
  r.out.assign(n, 0.0);
  r.top.assign(n, false);
  if (n == 0) return r;
  std::vector<double> a_abs(n);
  for (std::size_t i = 0; i < n; ++i) a_abs[i] = std::fabs(x[i]);
  const auto idx = order_descending(a_abs);
  for (std::size_t j = 0; j < k && j < n; ++j) r.top[idx[j]] = true;
  // G as a function of g = a + delta for an anchor a (0 for the first pass).
  auto G = [&](Real a, Real delta) {
    Real sum = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const Real u = (Real(a_abs[i]) - a) - delta;  // s_i - g
      if (r.top[i]) {
        sum += std::min(spow(u / L, q - 1) - (a + delta), Real(0));
      } else {
        sum += std::pow(std::max(u, Real(0)) / L, q - 1);
      }
    }
    return sum;
  };
  const Real hi = Real(*std::max_element(a_abs.begin(), a_abs.end()));
  Real a = 0, delta = 0;
  if (G(0, 0) > 0) {
    const Real g0 = bisect_decreasing([&](Real g) { return G(0, g); }, Real(0), hi);
    // Second pass anchored at the |x_i| nearest g0 (see soft_mask).
    a = a_abs[0];
    for (double v : a_abs)
      if (std::fabs(Real(v) - g0) < std::fabs(a - g0)) a = v;
    delta = bisect_decreasing([&](Real dl) { return G(a, dl); }, -a, hi - a);
  }
  r.gamma = a + delta;
  for (std::size_t i = 0; i < n; ++i) {
    const Real u_signed = (Real(a_abs[i]) - a) - delta;
    const Real sign = x[i] < 0 ? -1 : 1;
    if (r.top[i] && spow(u_signed / L, q - 1) >= r.gamma) {
      r.out[i] = x[i];
    } else {
      const Real u = std::max(u_signed, Real(0));
      r.out[i] = static_cast<double>(sign * (std::pow(u / L, q - 1) + u));
    }
  }
  return r;
}

// ----------------------------------------------------------------------------
// Isotonic problems of SPEC.md, solved exhaustively for small n.
//   mask:      sum_i |s_i - v_i|^q / (q l^(q-1)) + w_i v_i
//   magnitude: sum_i |s_i - v_i|^q / q + (l^(q-1)/2) w_i v_i^2
// The optimum is constant on its level sets, and on each level set (a block of
// contiguous positions) the value solves the block's first-order condition
// (otherwise moving the block value slightly would decrease the objective). So
// it is the minimizer, over all partitions into contiguous blocks whose
// block-optimal values are non-increasing, of the objective.

enum class Form { mask, magnitude };

// Block value: root of the block's first-order condition (SPEC.md "Reduction").
inline Real block_value(const std::vector<double>& s, const std::vector<double>& w, std::size_t b,
                        std::size_t e, double l, double p, Form form) {
  const Real q = conjugate(p);
  const Real L = l;
  Real W = 0, smin = s[b], smax = s[b];
  for (std::size_t i = b; i < e; ++i) {
    W += w[i];
    smin = std::min<Real>(smin, s[i]);
    smax = std::max<Real>(smax, s[i]);
  }
  auto h = [&](Real g) {
    Real sum = 0;
    for (std::size_t i = b; i < e; ++i) sum += spow((Real(s[i]) - g) / L, q - 1);
    return form == Form::mask ? sum - W : sum - g * W;
  };
  return bisect_decreasing_expand(h, smin - 1, smax + 1);
}

inline Real block_objective(const std::vector<double>& s, const std::vector<double>& w,
                            std::size_t b, std::size_t e, Real g, double l, double p, Form form) {
  const Real q = conjugate(p);
  const Real L = l;
  const Real lq1 = std::pow(L, q - 1);
  Real obj = 0;
  for (std::size_t i = b; i < e; ++i) {
    const Real d = std::fabs(Real(s[i]) - g);
    if (form == Form::mask) {
      obj += std::pow(d, q) / (q * lq1) + Real(w[i]) * g;
    } else {
      obj += std::pow(d, q) / q + lq1 / 2 * Real(w[i]) * g * g;
    }
  }
  return obj;
}

struct IsotonicResult {
  std::vector<Real> v;
  Real objective = 0;
};

inline Real objective(const std::vector<double>& s, const std::vector<double>& w,
                      const std::vector<double>& v, double l, double p, Form form) {
  Real obj = 0;
  for (std::size_t i = 0; i < s.size(); ++i)
    obj += block_objective(s, w, i, i + 1, v[i], l, p, form);
  return obj;
}

inline IsotonicResult isotonic_exhaustive(const std::vector<double>& s,
                                          const std::vector<double>& w, double l, double p,
                                          Form form) {
  const std::size_t n = s.size();
  if (n > 16) throw std::runtime_error("ref: isotonic_exhaustive is for small n");
  IsotonicResult best;
  if (n == 0) return best;
  // Block values and objectives for every contiguous block [b, e).
  std::array<std::array<Real, 17>, 16> val{}, obj{};
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t e = b + 1; e <= n; ++e) {
      val[b][e] = block_value(s, w, b, e, l, p, form);
      obj[b][e] = block_objective(s, w, b, e, val[b][e], l, p, form);
    }
  }
  bool found = false;
  std::uint32_t best_cuts = 0;
  const std::uint32_t count = std::uint32_t{1} << (n - 1);
  for (std::uint32_t cuts = 0; cuts < count; ++cuts) {
    // Bit j set: a block ends after position j.
    std::size_t b = 0;
    Real prev = std::numeric_limits<Real>::infinity();
    Real total = 0;
    bool ok = true;
    for (std::size_t j = 0; j < n && ok; ++j) {
      const bool end = (j == n - 1) || ((cuts >> j) & 1u);
      if (!end) continue;
      const Real g = val[b][j + 1];
      if (g > prev) ok = false;
      prev = g;
      total += obj[b][j + 1];
      b = j + 1;
    }
    if (ok && (!found || total < best.objective)) {
      found = true;
      best.objective = total;
      best_cuts = cuts;
    }
  }
  if (!found) throw std::runtime_error("ref: no feasible partition");
  best.v.assign(n, 0);
  std::size_t b = 0;
  for (std::size_t j = 0; j < n; ++j) {
    const bool end = (j == n - 1) || ((best_cuts >> j) & 1u);
    if (!end) continue;
    for (std::size_t i = b; i <= j; ++i) best.v[i] = val[b][j + 1];
    b = j + 1;
  }
  return best;
}

}  // namespace ref
