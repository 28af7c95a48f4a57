#pragma once
// What a soft forward pass leaves for its derivatives: one RowState per row.
//
// SPEC.md, "Derivatives": the Jacobian of a row is zero outside its band (the
// entries of the straddling block with a weight c_i), identity on the entries
// returned unchanged (magnitude), and on the band it needs only
//   c_i = ((q-1)/l) (u_i/l)^(q-2),  u_i = s_i - gamma,
// with s_i the entry's key (x_i for the mask, |x_i| for the magnitude). So the
// state is O(rows): gamma, W_B, where the unchanged entries start, and where
// the band starts and ends in the row's sorted order (key descending, ties by
// the lower index first). The VJP and JVP recompute each c_i from x and this.
//
// The layout is RowState::size doubles, so that frameworks keep a batch of states as a
// float64 tensor of shape [..., RowState::size] (src/torch, src/jax).

#include <cstddef>
#include <limits>

namespace sparsetopk {

struct RowState {
  // The block value gamma (the threshold tau for the mask); without a
  // multi-entry block, the (k+1)-th largest key (-inf when k = n). NaN marks a
  // row that held a non-finite value (its derivatives are NaN).
  double gamma = 0.0;
  // W_B: how many of the k top entries lie in the block.
  double block_weight = 0.0;
  // Magnitude: a non-zero entry outside the band with |x_i| >= unchanged_from
  // is returned unchanged (derivative 1). Mask: entries above are saturated.
  double unchanged_from = 0.0;
  // The band: the entries from (first_key, first_index) to (last_key,
  // last_index) in sorted order, both included. Empty: first_key = -inf.
  double first_key = -std::numeric_limits<double>::infinity();
  double first_index = 0.0;
  double last_key = -std::numeric_limits<double>::infinity();
  double last_index = 0.0;
  // Entries within rounding of gamma (|s_i - gamma| <= 1e-6 |gamma|): where
  // the forward solved them again in offset form (a double gamma does not
  // resolve their u_i), u_i = (s_i - near_key) + near_offset, and u_i = tied_u
  // for the entries tied at s_i = tied_key. +inf: none (then u_i = s_i - gamma).
  double near_key = std::numeric_limits<double>::infinity();
  double near_offset = 0.0;
  double tied_key = std::numeric_limits<double>::infinity();
  double tied_u = 0.0;

  static constexpr std::size_t size = 11;  // doubles
};
static_assert(sizeof(RowState) == RowState::size * sizeof(double), "RowState is a row of doubles");

}  // namespace sparsetopk
