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

namespace sparsetopk {

// How the isotonic problem of each row is solved.
enum class Solver {
  automatic,  // the default: `threshold`
  pav,        // sort the whole row, then Pool Adjacent Violators (SPEC.md, "Reduction")
  threshold,  // select the k-th and (k+1)-th largest (expected O(n)), then PAV on
              // the few entries that can straddle them (SPEC.md, "Top-k structure")
  // Solvers of the torch operators (sparsetopk/torch.hpp) only; the functions below reject them.
  generic,    // the ATen implementation (docs/generic.md), on any device
  dykstra,    // p = 2: Dykstra's alternating projections, approximate (dykstra.hpp, docs/dykstra.md)
};

struct SoftTopkOptions {
  double l = 0.1;              // regularization strength, l > 0
  double p = 4.0 / 3.0;        // regularizer norm, p > 1 (q = p / (p - 1))
  Solver solver = Solver::automatic;
};

// What the backward pass needs, saved by a soft forward pass: for every row,
// the entries of its single active block (SPEC.md, "Top-k structure") with
// their c values, the block value gamma and W_B = sum of w over the block.
// Only the active entries are stored (no n-sized buffers per row), and storage
// is reused across calls.
class ActiveBlocks {
 public:
  std::size_t rows() const { return rows_; }
  std::size_t n() const { return n_; }
  double l() const { return l_; }
  double p() const { return p_; }

  // Row r. gamma: the value of the block straddling positions k and k+1 in
  // sorted order (the threshold tau for the mask); if the row has no
  // multi-entry block, the (k+1)-th largest key (-inf if k = n). NaN marks a
  // row that held a non-finite value.
  double gamma(std::size_t r) const { return rows_data_[r].gamma; }
  // W_B: the number of the k top entries inside the block.
  double block_weight(std::size_t r) const { return rows_data_[r].block_weight; }
  // Magnitude: non-zero entries outside the block with |x_i| >= this value are
  // returned unchanged (derivative 1). Mask: entries outside the block with
  // x_i >= this value are saturated at 1.
  double unchanged_from(std::size_t r) const { return rows_data_[r].unchanged_from; }
  // The active entries: column index in the row and c_i (SPEC.md, "Derivatives").
  std::span<const std::size_t> index(std::size_t r) const {
    const Row& row = rows_data_[r];
    return {chunks_[row.chunk].index.data() + row.first, row.size};
  }
  std::span<const double> c(std::size_t r) const {
    const Row& row = rows_data_[r];
    return {chunks_[row.chunk].c.data() + row.first, row.size};
  }

  // The same state as dense arrays, for frameworks that keep tensors between
  // the passes: `c` holds rows() * n() values, c_i (>= 0) on the entries of the
  // row's active block and -1 elsewhere (NaN on a row that held a non-finite
  // value); `row_state` holds rows() * 3 values, (gamma, block_weight,
  // unchanged_from) per row. assign_dense(n, c, row_state) is the inverse (l()
  // and p() are then NaN: the derivatives do not use them).
  static constexpr std::size_t row_state_size = 3;
  void to_dense(std::span<double> c, std::span<double> row_state) const;
  void assign_dense(std::size_t n, std::span<const double> c, std::span<const double> row_state);

  // Filled by the forward passes. Each worker thread appends the active
  // entries of its rows to its own chunk, then records the row.
  void reset(std::size_t rows, std::size_t n, double l, double p, std::size_t chunks);
  std::size_t chunk_size(std::size_t chunk) const { return chunks_[chunk].index.size(); }
  void append(std::size_t chunk, std::size_t index, double c) {
    chunks_[chunk].index.push_back(index);
    chunks_[chunk].c.push_back(c);
  }
  // Row r's entries are those appended to `chunk` since its size was `first`.
  void set_row(std::size_t r, std::size_t chunk, std::size_t first, double gamma, double block_weight,
               double unchanged_from);

 private:
  struct Row {
    double gamma = 0.0, block_weight = 0.0, unchanged_from = 0.0;
    std::size_t chunk = 0, first = 0, size = 0;
  };
  struct Chunk {
    std::vector<std::size_t> index;
    std::vector<double> c;
  };
  std::size_t rows_ = 0, n_ = 0;
  double l_ = 0.0, p_ = 0.0;
  std::vector<Row> rows_data_;
  std::vector<Chunk> chunks_;
};

// Scratch memory for the per-row solvers (one slot per worker thread). Pass
// the same Workspace to repeated calls to avoid all allocation after the first.
class Workspace {
 public:
  Workspace();
  ~Workspace();
  Workspace(Workspace&&) noexcept;
  Workspace& operator=(Workspace&&) noexcept;
  struct Slots;
  Slots& slots() { return *slots_; }

 private:
  std::unique_ptr<Slots> slots_;
};

// hard_topk_mask(x, k)_i = 1 if x_i is among the k largest of its row (ties:
// lower index first), else 0. hard_topk_mag = x * hard_topk_mask(|x|, k).
template <class T>
void hard_topk_mask(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out);
template <class T>
void hard_topk_mag(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out);

// Soft top-k mask (values in [0, 1], each row sums to k) and soft top-k in
// magnitude (SPEC.md). `blocks`, if given, receives the state for the
// derivatives; `workspace`, if given, is reused.
template <class T>
void soft_topk_mask(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                    const SoftTopkOptions& options = {}, ActiveBlocks* blocks = nullptr,
                    Workspace* workspace = nullptr);
template <class T>
void soft_topk_mag(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                   const SoftTopkOptions& options = {}, ActiveBlocks* blocks = nullptr,
                   Workspace* workspace = nullptr);

// Exact derivatives from the closed-form block Jacobians (SPEC.md,
// "Derivatives"), given the state of the forward pass on the same x.
// VJP: grad_x = J^T g.  JVP: dout = J dx.  The mask Jacobian is symmetric.
template <class T>
void soft_topk_mask_vjp(const ActiveBlocks& blocks, std::span<const T> g, std::span<T> grad_x);
template <class T>
void soft_topk_mask_jvp(const ActiveBlocks& blocks, std::span<const T> dx, std::span<T> dout);
template <class T>
void soft_topk_mag_vjp(const ActiveBlocks& blocks, std::span<const T> x, std::span<const T> g,
                       std::span<T> grad_x);
template <class T>
void soft_topk_mag_jvp(const ActiveBlocks& blocks, std::span<const T> x, std::span<const T> dx,
                       std::span<T> dout);

// One-row conveniences returning a new vector.
std::vector<double> hard_topk_mask(const std::vector<double>& x, std::size_t k);
std::vector<double> hard_topk_mag(const std::vector<double>& x, std::size_t k);
std::vector<double> soft_topk_mask(const std::vector<double>& x, std::size_t k,
                                   const SoftTopkOptions& options = {});
std::vector<double> soft_topk_mag(const std::vector<double>& x, std::size_t k,
                                  const SoftTopkOptions& options = {});

}  // namespace sparsetopk
