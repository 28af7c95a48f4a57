#pragma once
// One top-k over many parts (SPEC.md, "One top-k over many tensors and many
// devices"): the operators of topk.hpp applied to the concatenation of
// several spans, with one k, without concatenating them.
//
// The parts may live in one process (the default) or be spread over several
// processes, each passing its own parts; then `reduction` (below) adds up or
// gathers the few numbers each step needs across the processes, and the
// concatenation is every process's parts in rank order. The steps:
//   1. the k-th and (k+1)-th largest keys by radix selection: per pass, each
//      process counts its keys' next 8-bit digit among those matching the
//      digits chosen so far (256 counts), the counts are summed, and the
//      digit holding rank k is chosen (sizeof(T) passes: 4 float, 8 double);
//      then the largest key below the k-th (a max);
//   2. the window of keys that can lie in the straddling block (the row
//      operator's bounds around those keys): entries above it output their
//      top value, entries below it 0, and the window's entries (key, global
//      position, value) are gathered from every process, sorted, and solved
//      by the row operator's band solver, so that the outputs and the state
//      are those of the row operator on the concatenation, bitwise (also across
//      processes: the window's entries are gathered exactly);
//   3. the derivatives: the Jacobian is zero outside the band and identity on
//      unchanged entries; on the band each process needs only three reduced
//      scalars (the pivot's c and value, sum c, the pivoted spread).
// Rows that hold a non-finite value give NaN everywhere (a NaN state), as
// the row operators do. One thread: the parts are walked in order.

#include <cstddef>
#include <span>
#include <vector>

#include <sparsetopk/row_state.hpp>
#include <sparsetopk/topk.hpp>

namespace sparsetopk {

// The parts of one global row, in order (any lengths, empty ones included).
template <class T>
using ConstParts = std::span<const std::span<const T>>;
template <class T>
using Parts = std::span<const std::span<T>>;

// What the global operators need across processes. Every process calls the
// same methods in the same order, with the same sizes. The global operators'
// collectives go through it only, so a Reduction that counts is a complete
// account of what crosses the network.
class Reduction {
 public:
  virtual ~Reduction() = default;
  // This process's place among the processes: 0 <= rank() < ranks().
  virtual std::size_t rank() const = 0;
  virtual std::size_t ranks() const = 0;
  // Replaces each value by its sum (max) over every process.
  virtual void sum(std::span<double> values) = 0;
  virtual void max(std::span<double> values) = 0;
  // Every process's `values` (the same count on each), concatenated in rank order.
  virtual std::vector<double> gather(std::span<const double> values) = 0;
  // The most window entries per process that a solve gathers to every process
  // (then solved exactly as the row operator solves them: bitwise the same
  // result); a wider window is solved by reductions instead: a search for the
  // threshold equation's smooth piece (kBins = 64 sums per round), then its
  // closed form (p = 2, 4/3) or Newton's steps (2 sums per round), to the
  // solvers' tolerance.
  virtual std::size_t gather_limit() const { return 64; }
};

// One process: the sums and maxima are the values themselves.
class LocalReduction final : public Reduction {
 public:
  std::size_t rank() const override { return 0; }
  std::size_t ranks() const override { return 1; }
  void sum(std::span<double>) override {}
  void max(std::span<double>) override {}
  std::vector<double> gather(std::span<const double> values) override {
    return std::vector<double>(values.begin(), values.end());
  }
  std::size_t gather_limit() const override { return static_cast<std::size_t>(-1); }  // always: bitwise
};

// The operators. `out` has the parts of `x`, with the same sizes; k is global
// (0 <= k <= n, n the number of entries over every part of every process).
// `state`, if given, receives the global solve's RowState (the same on every
// process; its band indices are positions in the concatenation): O(1), what
// the derivatives need. `reduction`: nullptr for one process.
template <class T>
void hard_topk_mask_global(ConstParts<T> x, std::size_t k, Parts<T> out, Reduction* reduction = nullptr);
template <class T>
void hard_topk_mag_global(ConstParts<T> x, std::size_t k, Parts<T> out, Reduction* reduction = nullptr);
template <class T>
void soft_topk_mask_global(ConstParts<T> x, std::size_t k, Parts<T> out, const SoftTopkOptions& options = {},
                           RowState* state = nullptr, Reduction* reduction = nullptr);
template <class T>
void soft_topk_mag_global(ConstParts<T> x, std::size_t k, Parts<T> out, const SoftTopkOptions& options = {},
                          RowState* state = nullptr, Reduction* reduction = nullptr);

// Exact derivatives at the forward pass that left `state` (the same l and p):
// VJP grad_x = J^T g, JVP dout = J dx, part by part.
template <class T>
void soft_topk_mask_global_vjp(ConstParts<T> x, const RowState& state, const SoftTopkOptions& options,
                               ConstParts<T> g, Parts<T> grad_x, Reduction* reduction = nullptr);
template <class T>
void soft_topk_mask_global_jvp(ConstParts<T> x, const RowState& state, const SoftTopkOptions& options,
                               ConstParts<T> dx, Parts<T> dout, Reduction* reduction = nullptr);
template <class T>
void soft_topk_mag_global_vjp(ConstParts<T> x, const RowState& state, const SoftTopkOptions& options,
                              ConstParts<T> g, Parts<T> grad_x, Reduction* reduction = nullptr);
template <class T>
void soft_topk_mag_global_jvp(ConstParts<T> x, const RowState& state, const SoftTopkOptions& options,
                              ConstParts<T> dx, Parts<T> dout, Reduction* reduction = nullptr);

}  // namespace sparsetopk
