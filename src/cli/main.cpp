// sparsetopk: the command-line front end of the library. It parses arguments
// and stdin, calls the operators of <sparsetopk/topk.hpp> one line at a time and
// prints the results; all the mathematics lives in the library.

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <iostream>
#include <span>
#include <sparsetopk/sparsetopk.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "parse.hpp"

namespace {

constexpr const char* kUsage = R"(usage: sparsetopk MODE --k K [--l L] [--p P] [--solver S] [--vjp]

Applies a top-k operator to every vector read from stdin, one vector a line.

Modes:
  mask        soft top-k mask: values in [0, 1] summing to k, sparse
  mag         soft top-k in magnitude: keeps the k largest |x_i|, zeroes the rest
  hard-mask   hard top-k mask: 1 on the k largest entries (ties: lower index first)
  hard-mag    hard top-k in magnitude: x_i on the k largest |x_i|, else 0

Options (also accepted as --name=value):
  --k K       number of entries to keep, 0 <= K <= n for every line (required)
  --l L       regularization strength, L > 0 (default 0.1)
  --p P       regularizer norm, P > 1, a decimal or a fraction such as 4/3
              (default 4/3)
  --solver S  auto, pav (sort, then Pool Adjacent Violators) or threshold
              (selection, then PAV on the straddling entries); default auto
  --vjp       soft modes only: input lines come in pairs, a vector x then a
              cotangent g of the same length; each pair prints J^T g, the
              vector-Jacobian product of the operator at x
  -h, --help  print this help and exit
--l, --p and --solver only affect the soft modes (mask, mag).

Input: numbers separated by any run of spaces, tabs and commas; leading and
trailing separators are ignored. Blank lines, non-numbers, nan and inf are
errors. Empty input gives empty output.

Output: one line per input line (per pair with --vjp), numbers printed with
printf %.9g separated by spaces (a negative zero is printed as 0).

Errors: all input is read and checked before anything is printed; on any error
nothing goes to stdout, a one-line message starting with "sparsetopk: " goes to
stderr and the exit status is 2.
)";

using sparsetopk::cli::Line;
using sparsetopk::cli::Mode;
using sparsetopk::cli::Options;
using sparsetopk::cli::UsageError;

std::vector<Line> read_lines(std::istream& in) {
  std::vector<Line> lines;
  std::string text;
  while (std::getline(in, text)) lines.push_back(sparsetopk::cli::parse_line(text, lines.size() + 1));
  return lines;
}

void check_lines(const Options& o, const std::vector<Line>& lines) {
  const std::size_t step = o.vjp ? 2 : 1;
  for (std::size_t i = 0; i < lines.size(); i += step) {
    const Line& x = lines[i];
    if (o.k > x.values.size())
      throw UsageError("--k " + std::to_string(o.k) + " is out of range for line " +
                       std::to_string(x.number) + " with n = " + std::to_string(x.values.size()));
    if (!o.vjp) continue;
    if (i + 1 == lines.size())
      throw UsageError("line " + std::to_string(x.number) +
                       ": missing the cotangent line that must follow x with --vjp");
    const Line& g = lines[i + 1];
    if (g.values.size() != x.values.size())
      throw UsageError("line " + std::to_string(g.number) + ": cotangent has " +
                       std::to_string(g.values.size()) + " numbers but x on line " +
                       std::to_string(x.number) + " has " + std::to_string(x.values.size()));
  }
}

void append_row(std::string& out, std::span<const double> row) {
  char buffer[64];
  for (std::size_t i = 0; i < row.size(); ++i) {
    const double v = row[i] == 0.0 ? 0.0 : row[i];  // print -0 as 0
    std::snprintf(buffer, sizeof buffer, i == 0 ? "%.9g" : " %.9g", v);
    out += buffer;
  }
  out += '\n';
}

// Runs the operator on every line (or x, g pair) and returns the whole output.
std::string compute(const Options& o, const std::vector<Line>& lines) {
  std::string out;
  sparsetopk::RowState row_state;  // what a soft line's VJP needs
  sparsetopk::Workspace workspace;
  std::vector<double> y, grad;
  const std::size_t step = o.vjp ? 2 : 1;
  for (std::size_t i = 0; i < lines.size(); i += step) {
    const std::vector<double>& x = lines[i].values;
    const std::size_t n = x.size();
    y.resize(n);
    const std::span<sparsetopk::RowState> state(&row_state, n == 0 ? 0 : 1);  // one row, or none
    try {
      switch (o.mode) {
        case Mode::mask:
          sparsetopk::soft_topk_mask<double>(x, n, o.k, y, o.soft, state, &workspace);
          break;
        case Mode::mag:
          sparsetopk::soft_topk_mag<double>(x, n, o.k, y, o.soft, state, &workspace);
          break;
        case Mode::hard_mask:
          sparsetopk::hard_topk_mask<double>(x, n, o.k, y);
          break;
        case Mode::hard_mag:
          sparsetopk::hard_topk_mag<double>(x, n, o.k, y);
          break;
      }
      if (o.vjp) {
        const std::vector<double>& g = lines[i + 1].values;
        grad.resize(n);
        if (o.mode == Mode::mask) {
          sparsetopk::soft_topk_mask_vjp<double>(x, n, state, o.soft, g, grad);
        } else {
          sparsetopk::soft_topk_mag_vjp<double>(x, n, state, o.soft, g, grad);
        }
      }
    } catch (const sparsetopk::InvalidArgument& e) {
      std::string_view what = e.what();
      if (what.starts_with("sparsetopk: ")) what.remove_prefix(12);
      throw UsageError("line " + std::to_string(lines[i].number) + ": " + std::string(what));
    }
    append_row(out, o.vjp ? grad : y);
  }
  return out;
}

void print_error(std::string message) {
  std::replace(message.begin(), message.end(), '\n', ' ');  // always one line
  std::fprintf(stderr, "sparsetopk: %s\n", message.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string_view> args(argv + 1, argv + argc);
    const Options options = sparsetopk::cli::parse_args(args);
    if (options.help) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::ios::sync_with_stdio(false);
    const std::vector<Line> lines = read_lines(std::cin);
    check_lines(options, lines);
    const std::string out = compute(options, lines);
    std::fwrite(out.data(), 1, out.size(), stdout);
    if (std::fflush(stdout) != 0) {
      print_error("cannot write the output");
      return 1;
    }
    return 0;
  } catch (const UsageError& e) {
    print_error(e.what());
    return 2;
  } catch (const std::exception& e) {
    print_error(std::string("internal error: ") + e.what());
    return 1;
  }
}
