// Fuzz target: the command-line parser of src/cli/parse.hpp. It must never
// crash or throw anything but UsageError, and whatever it accepts must be
// finite numbers (input lines), a finite p > 1, a finite l > 0.
//
// Input layout: one selector byte, then the text. Selector % 5: 0 an input
// line, 1 a --p value, 2 a number token, 3 a --k value, 4 an argument list
// (arguments separated by NUL bytes).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "parse.hpp"
#include "fuzz_common.hpp"

namespace {

using namespace sparsetopk::cli;
using stk_fuzz::fail;

std::string context(const char* what, std::string_view text) {
  std::string escaped;
  for (unsigned char ch : text) {
    if (ch >= 32 && ch < 127 && ch != '\\') {
      escaped += static_cast<char>(ch);
    } else {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", ch);
      escaped += buffer;
    }
  }
  return std::string(what) + " \"" + escaped + "\"";
}

// An accepted token reads back as the same double with strtod (after the
// optional leading '+'), so the parser accepts only plain decimal syntax.
void check_number(std::string_view token, double value, const std::string& ctx) {
  if (!std::isfinite(value)) fail(ctx, "accepted a non-finite number");
  std::string copy(token);
  char* end = nullptr;
  const double again = std::strtod(copy.c_str(), &end);
  if (end != copy.c_str() + copy.size() || again != value) fail(ctx, "strtod reads the accepted token differently");
}

void fuzz_line(std::string_view text) {
  const std::string ctx = context("parse_line", text);
  try {
    const Line line = parse_line(text, 7);
    if (line.number != 7 || line.values.empty()) fail(ctx, "accepted an empty line or lost its number");
    for (double v : line.values)
      if (!std::isfinite(v)) fail(ctx, "accepted a non-finite value");
  } catch (const UsageError& e) {
    if (std::string_view(e.what()).substr(0, 8) != "line 7: ") fail(ctx, "error message does not name the line");
  }
}

void fuzz_p(std::string_view text) {
  const std::string ctx = context("parse_p", text);
  try {
    const double p = parse_p(text);
    if (!std::isfinite(p)) fail(ctx, "accepted a non-finite p");
    if (text.find('/') == std::string_view::npos) check_number(text, p, ctx);
  } catch (const UsageError&) {
  }
}

void fuzz_number(std::string_view text) {
  const std::string ctx = context("parse_number", text);
  try {
    const double v = parse_number(text, "x ");
    check_number(text, v, ctx);
  } catch (const UsageError& e) {
    if (std::string_view(e.what()).substr(0, 2) != "x ") fail(ctx, "error message lost its prefix");
  }
}

void fuzz_k(std::string_view text) {
  const std::string ctx = context("parse_k", text);
  try {
    const std::size_t k = parse_k(text);
    if (std::to_string(k) != text && !(text.starts_with('0') || text.starts_with("-0"))) fail(ctx, "k does not print back as the token");
  } catch (const UsageError&) {
  }
}

void fuzz_args(std::string_view text) {
  std::vector<std::string_view> args;
  for (std::size_t pos = 0;;) {
    const std::size_t end = text.find('\0', pos);
    args.push_back(text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos));
    if (end == std::string_view::npos) break;
    pos = end + 1;
  }
  const std::string ctx = context("parse_args", text);
  try {
    const Options o = parse_args(args);
    if (o.help) return;
    if (!o.has_mode || !o.has_k) fail(ctx, "accepted arguments without a mode or --k");
    if (!(std::isfinite(o.soft.l) && o.soft.l > 0.0)) fail(ctx, "accepted a bad l");
    if (!(std::isfinite(o.soft.p) && o.soft.p > 1.0)) fail(ctx, "accepted a bad p");
    if (o.vjp && (o.mode == Mode::hard_mask || o.mode == Mode::hard_mag)) fail(ctx, "accepted --vjp with a hard mode");
  } catch (const UsageError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0: fuzz_line(text); break;
    case 1: fuzz_p(text); break;
    case 2: fuzz_number(text); break;
    case 3: fuzz_k(text); break;
    default: fuzz_args(text); break;
  }
  return 0;
}
