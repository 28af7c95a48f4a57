#pragma once
// Fast, differentiable and sparse top-k operators.

#include <sparsetopk/arguments.hpp>
#include <sparsetopk/dykstra.hpp>
#include <sparsetopk/errors.hpp>
#include <sparsetopk/global.hpp>
#include <sparsetopk/isotonic.hpp>
#include <sparsetopk/parallel.hpp>
#include <sparsetopk/topk.hpp>
#include <sparsetopk/topk_loss.hpp>
