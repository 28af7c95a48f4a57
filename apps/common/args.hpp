#pragma once
// Command-line parsing shared by the application programs: "--flag value" and
// "--flag=value" pairs, comma-separated lists, numbers with errors that name
// the flag and the bad value, --help and --quick, and the options that every
// program has.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
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

// A comma-separated list of seeds (each >= 0).
inline std::vector<uint64_t> parse_seeds(const std::string& flag, const std::string& value) {
  std::vector<uint64_t> seeds;
  for (const auto& s : split_list(value)) {
    const int64_t seed = parse_int(flag, s);
    if (seed < 0) throw std::invalid_argument(flag + ": seeds must be >= 0, got " + s);
    seeds.push_back(static_cast<uint64_t>(seed));
  }
  return seeds;
}

// A comma-separated list of percentages in [0, 100), or in (0, 100) unless
// `zero_allowed`.
inline std::vector<double> parse_percentages(const std::string& flag, const std::string& value, bool zero_allowed) {
  std::vector<double> percentages;
  for (const auto& s : split_list(value)) {
    const double x = parse_double(flag, s);
    if (x < 0 || (x == 0 && !zero_allowed) || x >= 100)
      throw std::invalid_argument(flag + ": must be in " + (zero_allowed ? "[" : "(") + "0, 100), got " + s);
    percentages.push_back(x);
  }
  return percentages;
}

// The names a list flag accepts and what each stands for, in the order the
// usage lists them.
template <class Value>
using NameTable = std::vector<std::pair<std::string, Value>>;

// The name of `value` in `table` ("?" if it has none).
template <class Value>
std::string name_in(const NameTable<Value>& table, Value value) {
  for (const auto& [name, v] : table)
    if (v == value) return name;
  return "?";
}

// A comma-separated list of names from `table`, as what they stand for. An
// unknown name is an error that lists the known ones:
// "--methods: unknown method 'x' (oneshot, gradual)", `noun` being "method".
template <class Value>
std::vector<Value> parse_names(const std::string& flag, const std::string& value, const NameTable<Value>& table,
                               const std::string& noun) {
  std::vector<Value> values;
  for (const auto& s : split_list(value)) {
    const auto it = std::find_if(table.begin(), table.end(), [&](const auto& entry) { return entry.first == s; });
    if (it == table.end()) {
      std::string known;
      for (const auto& [name, v] : table) known += (known.empty() ? "" : ", ") + name;
      throw std::invalid_argument(flag + ": unknown " + noun + " '" + s + "' (" + known + ")");
    }
    values.push_back(it->second);
  }
  return values;
}

// Runs an application program's command line (see flag_pairs; "--quick" is a
// switch besides `switches`): "-h"/"--help" prints `usage` and exits, every
// "--quick" calls apply_quick() before any other flag is handled (so that
// explicit flags override it wherever they appear), and every other flag goes
// to handle_flag(flag, value) in order, which returns false for a flag it does
// not know.
template <class ApplyQuick, class HandleFlag>
void parse_command_line(int argc, char** argv, const std::string& usage, std::vector<std::string> switches,
                        ApplyQuick apply_quick, HandleFlag handle_flag) {
  switches.push_back("--quick");
  const auto pairs = flag_pairs(argc, argv, switches);
  for (const auto& [flag, value] : pairs)
    if (flag == "--quick") apply_quick();
  for (const auto& [flag, value] : pairs) {
    if (flag == "--quick") continue;
    if (flag == "-h" || flag == "--help") {
      std::cout << usage;
      std::exit(0);
    }
    if (!handle_flag(flag, value)) throw std::invalid_argument("unknown option " + flag + " (see --help)");
  }
}

// The options that every program has are members of the same names of its
// Options struct: data_dir, out, seeds, lr, batch_size, train_limit,
// test_limit and log_every (--batch-size each program parses itself, the
// checks differ).

// The settings of --quick that every program shares: the first 5000 training
// and 1000 test examples, batch 64, a progress line every 50 steps.
template <class Options>
void apply_shared_quick(Options& o) {
  o.batch_size = 64;
  o.train_limit = 5000;
  o.test_limit = 1000;
  o.log_every = 50;
}

// Sets the shared option `flag` from `value`; false if `flag` is not one of them.
template <class Options>
bool parse_shared_flag(Options& o, const std::string& flag, const std::string& value) {
  if (flag == "--data-dir") o.data_dir = value;
  else if (flag == "--out") o.out = value;
  else if (flag == "--seeds") o.seeds = parse_seeds(flag, value);
  else if (flag == "--lr") o.lr = parse_double(flag, value);
  else if (flag == "--train-limit") o.train_limit = parse_int(flag, value);
  else if (flag == "--test-limit") o.test_limit = parse_int(flag, value);
  else if (flag == "--log-every") o.log_every = parse_int(flag, value);
  else return false;
  return true;
}

}  // namespace sparsetopk::apps
