#pragma once
// Errors raised by the sparsetopk API.

#include <stdexcept>
#include <string>

namespace sparsetopk {

// A bad argument: the message names the argument and its value,
// e.g. "sparsetopk: k = 7 is out of range [0, n = 5]".
class InvalidArgument : public std::invalid_argument {
 public:
  explicit InvalidArgument(const std::string& what) : std::invalid_argument("sparsetopk: " + what) {}
};

}  // namespace sparsetopk
