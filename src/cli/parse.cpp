#include "parse.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <system_error>

namespace sparsetopk::cli {
namespace {

std::string quoted(std::string_view s) {
  std::string q(1, '\'');
  return q.append(s).append(1, '\'');
}

}  // namespace

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

Options parse_args(std::span<const std::string_view> args) {
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

Line parse_line(std::string_view text, std::size_t number) {
  constexpr std::string_view separators = " \t\r,";
  Line line{number, {}};
  const std::string where = "line " + std::to_string(number) + ": ";
  for (std::size_t pos = text.find_first_not_of(separators); pos != std::string_view::npos;) {
    const std::size_t end = std::min(text.find_first_of(separators, pos), text.size());
    line.values.push_back(parse_number(text.substr(pos, end - pos), where));
    pos = text.find_first_not_of(separators, end);
  }
  if (line.values.empty()) throw UsageError(where + "empty vector");
  return line;
}

}  // namespace sparsetopk::cli
