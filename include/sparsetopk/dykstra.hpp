#pragma once
// Soft top-k for p = 2 by Dykstra's alternating projections (SPEC.md,
// "Dykstra's algorithm (p = 2)"): an approximate alternative to the exact
// solvers of topk.hpp whose inner loop is a few vector operations.
//
// For p = 2 the isotonic problem of each sorted row is a projection onto the
// non-increasing cone:
//   mask:      z = s - l w, Euclidean norm;
//   magnitude: z = s / (1 + l w), norm weighted by a_i = 1 + l w_i.
// The chain v_1 >= ... >= v_n is split into the pairs (v1>=v2, v3>=v4, ...)
// and (v2>=v3, v4>=v5, ...); each set is projected onto in closed form (a
// violating pair becomes its weighted mean), alternately, with Dykstra's
// correction terms, for a fixed number of iterations (one iteration = both
// sets). The result is then mapped back to outputs as SPEC.md steps 4-5 do.
//
// Accuracy: exact when z is already non-increasing (no pair ever moves), and
// it converges to the exact solution as iterations grow; the error after a
// fixed count grows with the size of the block straddling the k-th entry (see
// docs/performance.md, "Dykstra accuracy"). Entries the iterations never reach
// keep their exact values (1 or 0, x_i or 0).

#include <cstddef>
#include <span>
#include <vector>

#include <sparsetopk/topk.hpp>

namespace sparsetopk {

struct DykstraOptions {
  double l = 0.1;                // regularization strength, l > 0 (p is 2)
  std::size_t iterations = 100;  // >= 1
};

// Same batch layout, validation and output conventions as soft_topk_mask /
// soft_topk_mag with p = 2 (topk.hpp). `state`, if not empty, receives the
// block read off the approximate solution (the run of pairs around sorted
// positions k-1, k whose ordering constraint was active in the last projection
// onto it, i.e. the numerically equal run of v), so soft_topk_mask_vjp /
// soft_topk_mag_vjp apply (with p = 2); they are exact once the iterations
// have converged.
template <class T>
void soft_topk_mask_dykstra(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                            const DykstraOptions& options = {}, std::span<RowState> state = {});
template <class T>
void soft_topk_mag_dykstra(std::span<const T> x, std::size_t n, std::size_t k, std::span<T> out,
                           const DykstraOptions& options = {}, std::span<RowState> state = {});

// One-row conveniences returning a new vector.
std::vector<double> soft_topk_mask_dykstra(const std::vector<double>& x, std::size_t k,
                                           const DykstraOptions& options = {});
std::vector<double> soft_topk_mag_dykstra(const std::vector<double>& x, std::size_t k,
                                          const DykstraOptions& options = {});

}  // namespace sparsetopk
