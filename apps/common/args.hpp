#pragma once
// Command-line parsing shared by the application programs: "--flag value" and
// "--flag=value" pairs, comma-separated lists, numbers with errors that name
// the flag and the bad value.

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sparsetopk::apps {

inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream stream(s);
  std::string part;
  while (std::getline(stream, part, ','))
    if (!part.empty()) parts.push_back(part);
  return parts;
}

inline double parse_double(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    const double x = std::stod(value, &used);
    if (used != value.size() || !std::isfinite(x)) throw std::invalid_argument("");
    return x;
  } catch (const std::exception&) {
    throw std::invalid_argument(flag + ": not a number: '" + value + "'");
  }
}

inline int64_t parse_int(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    const long long x = std::stoll(value, &used);
    if (used != value.size()) throw std::invalid_argument("");
    return x;
  } catch (const std::exception&) {
    throw std::invalid_argument(flag + ": not an integer: '" + value + "'");
  }
}

// The command line as (flag, value) pairs. Flags listed in `switches` take no
// value (their value is ""); "-h"/"--help" is always a switch.
inline std::vector<std::pair<std::string, std::string>> flag_pairs(int argc, char** argv,
                                                                   const std::vector<std::string>& switches = {}) {
  std::vector<std::pair<std::string, std::string>> pairs;
  const std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i], value;
    bool is_switch = flag == "-h" || flag == "--help";
    for (const auto& s : switches) is_switch = is_switch || flag == s;
    if (!is_switch) {
      if (const auto eq = flag.find('='); eq != std::string::npos) {
        value = flag.substr(eq + 1);
        flag = flag.substr(0, eq);
      } else {
        if (i + 1 >= args.size()) throw std::invalid_argument(flag + ": missing value");
        value = args[++i];
      }
    }
    if (flag.rfind("--", 0) != 0 && flag != "-h") throw std::invalid_argument("unexpected argument '" + flag + "'");
    pairs.emplace_back(flag, value);
  }
  return pairs;
}

}  // namespace sparsetopk::apps
