#include "sparsetopk/isotonic.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>

#include "pav.hpp"
#include "validate.hpp"

namespace sparsetopk {
namespace detail {

void pool_adjacent_violators(std::span<const double> s, std::span<const double> w,
                             const BlockEquation& equation, std::vector<PavBlock>& blocks, bool topk_weights) {
  blocks.clear();
  pool_adjacent_violators_into(s, w, equation, blocks, topk_weights);
}

namespace {

void check_non_increasing(std::span<const double> values, const char* name) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i]))
      throw InvalidArgument(std::string(name) + "[" + std::to_string(i) + "] = " + to_text(values[i]) +
                            " is not finite");
    if (i > 0 && values[i] > values[i - 1])
      throw InvalidArgument(std::string(name) + " must be non-increasing, but " + name + "[" +
                            std::to_string(i) + "] = " + to_text(values[i]) + " > " + name + "[" +
                            std::to_string(i - 1) + "] = " + to_text(values[i - 1]));
  }
}

}  // namespace
}  // namespace detail

IsotonicSolution solve_isotonic(std::span<const double> s, std::span<const double> w, double l, double p,
                                Form form) {
  detail::check_l(l);
  detail::check_p(p);
  detail::check_same_size(w.size(), s.size(), "w", "s");
  detail::check_non_increasing(s, "s");
  detail::check_non_increasing(w, "w");
  if (form == Form::magnitude && !w.empty() && w.back() < 0.0)
    throw InvalidArgument("the magnitude form needs w >= 0, got w[" + std::to_string(w.size() - 1) +
                          "] = " + detail::to_text(w.back()));

  std::vector<detail::PavBlock> blocks;
  blocks.reserve(s.size());
  detail::pool_adjacent_violators(s, w, detail::BlockEquation(form, l, p), blocks);

  IsotonicSolution solution;
  solution.v.resize(s.size());
  solution.blocks.reserve(blocks.size());
  for (const detail::PavBlock& block : blocks) {
    solution.blocks.push_back({block.begin, block.end, block.value});
    for (std::size_t i = block.begin; i < block.end; ++i) solution.v[i] = block.value;
  }
  return solution;
}

}  // namespace sparsetopk
