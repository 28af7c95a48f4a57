#pragma once
// Hard and soft top-k operators of SPEC.md on a batch of rows.
//
// Every function takes a row-major batch: `x` holds rows of `n` entries each
// (x.size() must be a multiple of n; n = 0 requires an empty x) and writes an
// output of the same size. Instantiated for float and double; internal
// arithmetic is done in double. Rows run in parallel (see parallel.hpp) and the
// results are bitwise identical whatever the thread count.

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include <sparsetopk/row_state.hpp>

namespace sparsetopk {

// How the isotonic problem of each row is solved.
enum class Solver {
  automatic,  // the default: `threshold`
  pav,        // sort the whole row, then Pool Adjacent Violators (SPEC.md, "Reduction")
  threshold,  // select the k-th and (k+1)-th largest (expected O(n)), then PAV on
              // the few entries that can straddle them (SPEC.md, "Top-k structure")
};
// (Dykstra's approximate iterations: dykstra.hpp. The torch operators add the
// ATen implementation: sparsetopk::torch::Solver, sparsetopk/torch.hpp.)

struct SoftTopkOptions {
  double l = 0.1;              // regularization strength, l > 0
  double p = 4.0 / 3.0;        // regularizer norm, p > 1 (q = p / (p - 1))
  Solver solver = Solver::automatic;
};

namespace detail {
struct WorkspaceAccess;  // the core's way in (src/core/workspace.hpp)
}  // namespace detail

// Scratch memory for the per-row solvers (one slot per worker thread). Pass
// the same Workspace to repeated calls to avoid all allocation after the first.
// Opaque: only the core reads or writes its slots.
class Workspace {
 public:
  Workspace();
  ~Workspace();
  Workspace(Workspace&&) noexcept;
  Workspace& operator=(Workspace&&) noexcept;

 private:
  friend struct detail::WorkspaceAccess;
  struct Slots;
  std::unique_ptr<Slots> slots_;
};

// hard_topk_mask(x, k)_i = 1 if x_i is among the k largest of its row (ties:
// lower index first), else 0. hard_topk_mag = x * hard_topk_mask(|x|, k).
template <class T>
void hard_topk_mask(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out);
template <class T>
void hard_topk_mag(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out);

// Soft top-k mask (values in [0, 1], each row sums to k) and soft top-k in
// magnitude (SPEC.md). `state`, if not empty (one RowState per row), receives
// what the derivatives need; `workspace`, if given, is reused.
template <class T>
void soft_topk_mask(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                    const SoftTopkOptions& options = {}, std::span<RowState> state = {},
                    Workspace* workspace = nullptr);
template <class T>
void soft_topk_mag(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                   const SoftTopkOptions& options = {}, std::span<RowState> state = {},
                   Workspace* workspace = nullptr);

// Exact derivatives from the closed-form block Jacobians (SPEC.md,
// "Derivatives") at the forward pass on x that left `state`, with the same l
// and p in `options` (the solver is not used): the band's c_i are recomputed
// from x. VJP: grad_x = J^T g.  JVP: dout = J dx.  The mask Jacobian is symmetric.
template <class T>
void soft_topk_mask_vjp(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                        const SoftTopkOptions& options, std::span<const T> g, std::span<T> grad_x);
template <class T>
void soft_topk_mask_jvp(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                        const SoftTopkOptions& options, std::span<const T> dx, std::span<T> dout);
template <class T>
void soft_topk_mag_vjp(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                       const SoftTopkOptions& options, std::span<const T> g, std::span<T> grad_x);
template <class T>
void soft_topk_mag_jvp(std::span<const T> x, std::size_t n, std::span<const RowState> state,
                       const SoftTopkOptions& options, std::span<const T> dx, std::span<T> dout);

// The band of one row at a saved state, for inspection: each entry's column
// and c_i, in column order.
struct BandEntry {
  std::size_t index;
  double c;
};
template <class T>
std::vector<BandEntry> soft_topk_mask_band(std::span<const T> x_row, const RowState& state,
                                           const SoftTopkOptions& options);
template <class T>
std::vector<BandEntry> soft_topk_mag_band(std::span<const T> x_row, const RowState& state,
                                          const SoftTopkOptions& options);

// One-row conveniences returning a new vector.
std::vector<double> hard_topk_mask(const std::vector<double>& x, std::size_t k);
std::vector<double> hard_topk_mag(const std::vector<double>& x, std::size_t k);
std::vector<double> soft_topk_mask(const std::vector<double>& x, std::size_t k,
                                   const SoftTopkOptions& options = {});
std::vector<double> soft_topk_mag(const std::vector<double>& x, std::size_t k,
                                  const SoftTopkOptions& options = {});

}  // namespace sparsetopk
