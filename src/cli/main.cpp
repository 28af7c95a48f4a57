// sparsetopk: the command-line front end of the library. It parses arguments
// and stdin, calls the operators of <sparsetopk/topk.hpp> one line at a time and
// prints the results; all the mathematics lives in the library.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <iostream>
#include <span>
#include <sparsetopk/sparsetopk.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

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

std::string quoted(std::string_view s) {
  std::string q(1, '\'');
  return q.append(s).append(1, '\'');
}

// A finite double from the whole token; `where` prefixes the error message.
// A leading '+' is allowed.
double parse_number(std::string_view token, const std::string& where) {
  std::string_view digits = token;
  if (digits.starts_with('+') && !digits.substr(1).starts_with('-')) digits.remove_prefix(1);
  double value = 0.0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec == std::errc::result_out_of_range)
    throw UsageError(where + quoted(token) + " is out of range");
  if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty())
    throw UsageError(where + quoted(token) + " is not a number");
  if (!std::isfinite(value)) throw UsageError(where + quoted(token) + " is not a finite number");
  return value;
}

// --p: a decimal or a fraction a/b.
double parse_p(std::string_view token) {
  const std::size_t slash = token.find('/');
  if (slash == std::string_view::npos) return parse_number(token, "--p ");
  const std::string where = "--p " + quoted(token) + ": ";
  const double num = parse_number(token.substr(0, slash), where);
  const double den = parse_number(token.substr(slash + 1), where);
  if (den == 0.0) throw UsageError("--p " + quoted(token) + " divides by zero");
  const double p = num / den;
  if (!std::isfinite(p)) throw UsageError("--p " + quoted(token) + " is not a finite number");
  return p;
}

std::size_t parse_k(std::string_view token) {
  long long k = 0;
  const auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), k);
  if (ec != std::errc() || end != token.data() + token.size() || token.empty())
    throw UsageError("--k " + quoted(token) + " is not an integer");
  if (k < 0) throw UsageError("--k must be >= 0, got " + std::string(token));
  return static_cast<std::size_t>(k);
}

Mode parse_mode(std::string_view word) {
  if (word == "mask") return Mode::mask;
  if (word == "mag") return Mode::mag;
  if (word == "hard-mask") return Mode::hard_mask;
  if (word == "hard-mag") return Mode::hard_mag;
  throw UsageError("unknown mode " + quoted(word) + " (expected mask, mag, hard-mask or hard-mag)");
}

Options parse_args(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  Options o;
  if (std::any_of(args.begin(), args.end(), [](auto a) { return a == "-h" || a == "--help"; })) {
    o.help = true;
    return o;
  }
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    if (!arg.starts_with('-')) {
      if (o.has_mode) throw UsageError("unexpected argument " + quoted(arg));
      o.mode = parse_mode(arg);
      o.has_mode = true;
      continue;
    }
    const std::size_t eq = arg.starts_with("--") ? arg.find('=') : std::string_view::npos;
    const std::string_view name = arg.substr(0, eq);
    if (name == "--vjp") {
      if (eq != std::string_view::npos) throw UsageError("--vjp takes no value");
      o.vjp = true;
      continue;
    }
    if (name != "--k" && name != "--l" && name != "--p" && name != "--solver")
      throw UsageError("unknown option " + quoted(arg));
    std::string_view value;
    if (eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      throw UsageError(std::string(name) + " needs a value");
    }
    if (name == "--k") {
      o.k = parse_k(value);
      o.has_k = true;
    } else if (name == "--l") {
      o.soft.l = parse_number(value, "--l ");
      if (!(o.soft.l > 0.0)) throw UsageError("--l must be > 0, got " + std::string(value));
    } else if (name == "--p") {
      o.soft.p = parse_p(value);
      if (!(o.soft.p > 1.0)) throw UsageError("--p must be > 1, got " + std::string(value));
    } else if (value == "auto") {
      o.soft.solver = sparsetopk::Solver::automatic;
    } else if (value == "pav") {
      o.soft.solver = sparsetopk::Solver::pav;
    } else if (value == "threshold") {
      o.soft.solver = sparsetopk::Solver::threshold;
    } else {
      throw UsageError("unknown --solver " + quoted(value) + " (expected auto, pav or threshold)");
    }
  }
  if (!o.has_mode) throw UsageError("missing mode (mask, mag, hard-mask or hard-mag); see --help");
  if (!o.has_k) throw UsageError("missing --k; see --help");
  if (o.vjp && (o.mode == Mode::hard_mask || o.mode == Mode::hard_mag))
    throw UsageError("--vjp is only valid for mask and mag, not " +
                     std::string(o.mode == Mode::hard_mask ? "hard-mask" : "hard-mag"));
  return o;
}

std::vector<Line> read_lines(std::istream& in) {
  std::vector<Line> lines;
  std::string text;
  constexpr std::string_view separators = " \t\r,";
  while (std::getline(in, text)) {
    Line line{lines.size() + 1, {}};
    const std::string where = "line " + std::to_string(line.number) + ": ";
    const std::string_view rest = text;
    for (std::size_t pos = rest.find_first_not_of(separators); pos != std::string_view::npos;) {
      const std::size_t end = std::min(rest.find_first_of(separators, pos), rest.size());
      line.values.push_back(parse_number(rest.substr(pos, end - pos), where));
      pos = rest.find_first_not_of(separators, end);
    }
    if (line.values.empty()) throw UsageError(where + "empty vector");
    lines.push_back(std::move(line));
  }
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
  sparsetopk::ActiveBlocks blocks;
  sparsetopk::Workspace workspace;
  std::vector<double> y, grad;
  const std::size_t step = o.vjp ? 2 : 1;
  for (std::size_t i = 0; i < lines.size(); i += step) {
    const std::vector<double>& x = lines[i].values;
    const std::size_t n = x.size();
    y.resize(n);
    try {
      switch (o.mode) {
        case Mode::mask:
          sparsetopk::soft_topk_mask<double>(x, n, o.k, y, o.soft, &blocks, &workspace);
          break;
        case Mode::mag:
          sparsetopk::soft_topk_mag<double>(x, n, o.k, y, o.soft, &blocks, &workspace);
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
          sparsetopk::soft_topk_mask_vjp<double>(blocks, g, grad);
        } else {
          sparsetopk::soft_topk_mag_vjp<double>(blocks, x, g, grad);
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
    const Options options = parse_args(argc, argv);
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
