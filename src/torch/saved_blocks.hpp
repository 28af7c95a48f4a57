#pragma once
// The state a soft forward pass leaves for its backward pass, passed between
// the two as a TorchScript custom class (__torch__.torch.classes.sparsetopk.ActiveBlocks).

#include <sparsetopk/topk.hpp>

#include <ATen/core/ivalue.h>

#include <cstdint>
#include <vector>

namespace sparsetopk::torch {

struct SavedBlocks : ::torch::CustomClassHolder {
  ActiveBlocks blocks;         // the core's state for the rows of x along `dim`
  std::vector<int64_t> sizes;  // x.sizes() of the forward input
  int64_t dim = 0;             // the forward's dim, wrapped to [0, x.dim())
};

}  // namespace sparsetopk::torch
