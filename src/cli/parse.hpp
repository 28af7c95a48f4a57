#pragma once
// Parsing for the command-line tool: arguments and input lines. Kept apart
// from main.cpp so that it can be tested and fuzzed without a process.

#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <sparsetopk/topk.hpp>

namespace sparsetopk::cli {

// A bad argument or input line; what() is the message without "sparsetopk: ".
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Mode { mask, mag, hard_mask, hard_mag };

struct Options {
  bool help = false;
  bool has_mode = false;
  Mode mode = Mode::mask;
  bool has_k = false;
  std::size_t k = 0;
  sparsetopk::SoftTopkOptions soft;
  bool vjp = false;
};

struct Line {
  std::size_t number = 0;  // 1-based
  std::vector<double> values;
};

// A finite double from the whole token; `where` prefixes the error message.
// A leading '+' is allowed.
double parse_number(std::string_view token, const std::string& where);

// --p: a decimal or a fraction a/b.
double parse_p(std::string_view token);

// --k: a non-negative integer.
std::size_t parse_k(std::string_view token);

Mode parse_mode(std::string_view word);

// The arguments after the program name.
Options parse_args(std::span<const std::string_view> args);

// Input line `number` (1-based): numbers separated by runs of spaces, tabs,
// carriage returns and commas. Throws UsageError for an empty vector or a bad
// token.
Line parse_line(std::string_view text, std::size_t number);

}  // namespace sparsetopk::cli
