// Drives the built `sparsetopk` binary (path in SPARSETOPK_CLI) through a shell
// and checks its stdout, stderr and exit status.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Result {
  int status = -1;  // exit status, -1 if the process did not exit normally
  std::string out, err;
};

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string temp_file(const std::string& contents) {
  std::string path = ::testing::TempDir() + "sparsetopk_cli_XXXXXX";
  const int fd = mkstemp(path.data());
  EXPECT_GE(fd, 0) << "mkstemp " << path;
  if (fd >= 0) {
    EXPECT_EQ(write(fd, contents.data(), contents.size()), static_cast<ssize_t>(contents.size()));
    close(fd);
  }
  return path;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `sparsetopk args... < input`.
Result run(const std::vector<std::string>& args, const std::string& input) {
  const std::string in_path = temp_file(input);
  const std::string err_path = temp_file("");
  std::string command = shell_quote(SPARSETOPK_CLI);
  for (const std::string& a : args) command.append(" ").append(shell_quote(a));
  command.append(" < ").append(shell_quote(in_path)).append(" 2> ").append(shell_quote(err_path));

  Result r;
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << command;
  if (pipe != nullptr) {
    char buffer[4096];
    for (std::size_t got; (got = fread(buffer, 1, sizeof buffer, pipe)) > 0;)
      r.out.append(buffer, got);
    const int status = pclose(pipe);
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  r.err = slurp(err_path);
  std::remove(in_path.c_str());
  std::remove(err_path.c_str());
  return r;
}

// Runs a successful command and returns its stdout.
std::string ok(const std::vector<std::string>& args, const std::string& input) {
  const Result r = run(args, input);
  EXPECT_EQ(r.status, 0) << "stderr: " << r.err;
  EXPECT_EQ(r.err, "");
  return r.out;
}

std::vector<std::vector<double>> numbers(const std::string& out) {
  std::vector<std::vector<double>> rows;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream tokens(line);
    rows.emplace_back();
    for (std::string t; tokens >> t;) rows.back().push_back(std::strtod(t.c_str(), nullptr));
  }
  return rows;
}

void expect_near(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "entry " << i;
}

// Status 2, empty stdout, one stderr line starting "sparsetopk: " containing every needle.
void expect_error(const std::vector<std::string>& args, const std::string& input,
                  const std::vector<std::string>& needles) {
  std::string call;
  for (const std::string& a : args) call += " " + a;
  SCOPED_TRACE("sparsetopk" + call + " with stdin '" + input + "'");
  const Result r = run(args, input);
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err.rfind("sparsetopk: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(r.err.ends_with('\n')) << r.err;
  for (const std::string& n : needles)
    EXPECT_NE(r.err.find(n), std::string::npos) << n << " in " << r.err;
}

std::string fmt(double v) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.17g", v);
  return buffer;
}

std::string join(const std::vector<double>& v) {
  std::string s;
  for (double d : v) s.append(s.empty() ? "" : " ").append(fmt(d));
  return s.append("\n");
}

// ---- values ----

TEST(Cli, SpecExampleAllModes) {
  const std::string x = "-5 -2 3 1\n";
  EXPECT_EQ(ok({"mask", "--k", "2", "--l", "0.01", "--p", "4/3"}, x), "0 0 1 1\n");
  EXPECT_EQ(ok({"mag", "--k", "2", "--l", "0.01", "--p", "4/3"}, x), "-5 0 3 0\n");
  EXPECT_EQ(ok({"hard-mask", "--k", "2"}, x), "0 0 1 1\n");
  EXPECT_EQ(ok({"hard-mag", "--k", "2"}, x), "-5 0 3 0\n");
}

TEST(Cli, HardTiesGoToTheLowerIndex) {
  EXPECT_EQ(ok({"hard-mask", "--k", "2"}, "1 1 1\n"), "1 1 0\n");
  EXPECT_EQ(ok({"hard-mag", "--k", "2"}, "-1 1 1\n"), "-1 1 0\n");
  EXPECT_EQ(ok({"hard-mask", "--k", "1"}, "2 5 5 0\n"), "0 1 0 0\n");
}

TEST(Cli, KZeroAndKEqualsN) {
  EXPECT_EQ(ok({"hard-mask", "--k", "0"}, "3 1 2\n"), "0 0 0\n");
  EXPECT_EQ(ok({"hard-mag", "--k", "3"}, "3 -1 2\n"), "3 -1 2\n");
  expect_near(numbers(ok({"mask", "--k", "0"}, "3 1 2\n")).at(0), {0, 0, 0}, 1e-12);
  expect_near(numbers(ok({"mask", "--k", "3"}, "3 1 2\n")).at(0), {1, 1, 1}, 1e-12);
}

// p = 2, l = 1: out_i = clip(x_i - tau, 0, 1) summing to 1 gives tau = -0.25.
TEST(Cli, SoftMaskP2ByHand) {
  const auto rows = numbers(ok({"mask", "--k", "1", "--l", "1", "--p", "2"}, "0.5 0 -10\n"));
  ASSERT_EQ(rows.size(), 1u);
  expect_near(rows[0], {0.75, 0.25, 0.0}, 1e-9);
}

// p = 4/3 (q - 1 = 3): out_i = clip(x_i - tau, 0, 1)^3 with one tau, summing to k.
TEST(Cli, SoftMaskP43SatisfiesTheClosedForm) {
  const auto rows = numbers(ok({"mask", "--k", "1", "--l", "1"}, "0.5 0 -10\n"));
  ASSERT_EQ(rows.size(), 1u);
  const auto& y = rows[0];
  ASSERT_EQ(y.size(), 3u);
  EXPECT_NEAR(y[0] + y[1] + y[2], 1.0, 1e-8);
  EXPECT_EQ(y[2], 0.0);
  EXPECT_GT(y[1], 0.0);
  EXPECT_LT(y[0], 1.0);
  EXPECT_NEAR(0.5 - std::cbrt(y[0]), 0.0 - std::cbrt(y[1]), 1e-8);  // same tau
}

// p = 2, l = 1, k = 1, |x| = (2, 1.5): gamma = 7/6 and r = 2 (s - gamma) = (5/3, 2/3).
TEST(Cli, SoftMagP2ByHand) {
  const auto rows = numbers(ok({"mag", "--k", "1", "--l", "1", "--p", "2"}, "-2 1.5\n"));
  ASSERT_EQ(rows.size(), 1u);
  expect_near(rows[0], {-5.0 / 3.0, 2.0 / 3.0}, 1e-8);
}

TEST(Cli, SeparatorsAndWhitespace) {
  const std::string want = "0 0 1 1\n";
  EXPECT_EQ(ok({"hard-mask", "--k", "2"}, "-5,-2,3,1\n"), want);
  EXPECT_EQ(ok({"hard-mask", "--k", "2"}, "  -5, -2 ,3\t1  \n"), want);
  EXPECT_EQ(ok({"hard-mask", "--k", "2"}, "-5 -2 3 1\r\n"), want);
  EXPECT_EQ(ok({"hard-mask", "--k", "2"}, "-5 -2 3 1"), want);  // no final newline
  EXPECT_EQ(ok({"hard-mag", "--k", "1"}, "1e-3, -2.5E1 +7\n"), "0 -25 0\n");
}

TEST(Cli, OneOutputLinePerInputLine) {
  EXPECT_EQ(ok({"hard-mask", "--k", "1"}, "1 2\n3 2 1\n0\n-1 -2 -3 -0.5\n"),
            "0 1\n1 0 0\n1\n0 0 0 1\n");
  EXPECT_EQ(ok({"mask", "--k", "2", "--l", "0.01"}, "-5 -2 3 1\n1 2\n-5 -2 3 1\n"),
            "0 0 1 1\n1 1\n0 0 1 1\n");
}

TEST(Cli, EmptyInputGivesEmptyOutput) {
  EXPECT_EQ(ok({"mask", "--k", "3"}, ""), "");
  EXPECT_EQ(ok({"mag", "--k", "1", "--vjp"}, ""), "");
}

TEST(Cli, OptionSpellings) {
  const std::string x = "0.3 -0.1 0.2 0.25 -1\n";
  const std::string base = ok({"mask", "--k", "2"}, x);
  EXPECT_EQ(numbers(base).at(0).size(), 5u);
  EXPECT_EQ(ok({"mask", "--k", "2", "--p", "4/3"}, x), base);
  EXPECT_EQ(ok({"mask", "--k", "2", "--p", "1.3333333333333333"}, x), base);
  EXPECT_EQ(ok({"mask", "--k=2", "--p=4/3", "--l=0.1"}, x), base);
  EXPECT_EQ(ok({"--l", "0.1", "--k", "2", "mask"}, x), base);
  EXPECT_EQ(ok({"mask", "--k", "2", "--solver=auto"}, x), base);
  for (const char* solver : {"pav", "threshold"}) {  // same values, up to rounding
    expect_near(numbers(ok({"mask", "--k", "2", "--solver", solver}, x)).at(0), numbers(base).at(0),
                1e-8);
    expect_near(numbers(ok({"mag", "--k", "2", "--solver", solver}, x)).at(0),
                numbers(ok({"mag", "--k", "2"}, x)).at(0), 1e-8);
  }
  EXPECT_EQ(ok({"mag", "--k", "2", "--p", "8/4"}, x), ok({"mag", "--k", "2", "--p", "2"}, x));
  // --l and --p change the soft result.
  EXPECT_NE(ok({"mask", "--k", "2", "--l", "1"}, x), base);
  EXPECT_NE(ok({"mask", "--k", "2", "--p", "2"}, x), base);
}

// ---- --vjp ----

// p = 2 mask, l = 1 at x = (0.5, 0, -10): active {0, 1}, J = [[.5,-.5,0],[-.5,.5,0],[0,0,0]].
TEST(Cli, MaskVjpP2ByHand) {
  const std::string input =
      "0.5 0 -10\n1 0 0\n"
      "0.5, 0, -10\n0 0 1\n"
      "0.5 0 -10\n2 -1 5\n";
  const auto rows = numbers(ok({"mask", "--k", "1", "--l", "1", "--p", "2", "--vjp"}, input));
  ASSERT_EQ(rows.size(), 3u);
  expect_near(rows[0], {0.5, -0.5, 0.0}, 1e-9);
  expect_near(rows[1], {0.0, 0.0, 0.0}, 1e-9);
  expect_near(rows[2], {1.5, -1.5, 0.0}, 1e-9);
}

// p = 2 mag, l = 1, k = 1 at x = (-2, 1.5): out_0 = (4 x_0 + 2 x_1) / 3, out_1 = (2 x_0 + 4 x_1)
// / 3.
TEST(Cli, MagVjpP2ByHand) {
  const auto rows = numbers(
      ok({"mag", "--k", "1", "--l", "1", "--p", "2", "--vjp"}, "-2 1.5\n1 0\n-2 1.5\n0 1\n"));
  ASSERT_EQ(rows.size(), 2u);
  expect_near(rows[0], {4.0 / 3.0, 2.0 / 3.0}, 1e-8);
  expect_near(rows[1], {2.0 / 3.0, 4.0 / 3.0}, 1e-8);
}

// Every VJP row J^T e_i must match central differences of the forward output.
void check_vjp_against_finite_differences(const std::string& mode, const std::vector<double>& x) {
  SCOPED_TRACE(mode);
  const std::vector<std::string> common = {mode, "--k", "2", "--l", "0.5"};
  const std::size_t n = x.size();
  const double eps = 1e-4;
  std::string forward_input, vjp_input;
  std::vector<double> step(n);
  for (std::size_t j = 0; j < n; ++j) {
    std::vector<double> up = x, down = x;
    up[j] += eps;
    down[j] -= eps;
    step[j] = up[j] - down[j];
    forward_input += join(up) + join(down);
    std::vector<double> e(n, 0.0);
    e[j] = 1.0;
    vjp_input += join(x) + join(e);
  }
  const auto f = numbers(ok(common, forward_input));
  std::vector<std::string> vjp_args = common;
  vjp_args.push_back("--vjp");
  const auto vjp = numbers(ok(vjp_args, vjp_input));
  ASSERT_EQ(f.size(), 2 * n);
  ASSERT_EQ(vjp.size(), n);
  double largest = 0.0;
  for (std::size_t i = 0; i < n; ++i) {  // J^T e_i = (d out_i / d x_j)_j
    for (std::size_t j = 0; j < n; ++j) {
      const double fd = (f[2 * j][i] - f[2 * j + 1][i]) / step[j];
      EXPECT_NEAR(vjp[i][j], fd, 1e-4) << "d out_" << i << " / d x_" << j;
      largest = std::max(largest, std::abs(fd));
    }
  }
  EXPECT_GT(largest, 0.1);  // the point is not in a flat region
}

TEST(Cli, VjpMatchesFiniteDifferences) {
  check_vjp_against_finite_differences("mask", {0.3, 0.1, -0.2, 0.25, 0.05});
  check_vjp_against_finite_differences("mag", {0.3, -0.1, -0.2, 0.25, 0.05});
}

// ---- help ----

TEST(Cli, Help) {
  for (const char* flag : {"--help", "-h"}) {
    const Result r = run({flag}, "");
    EXPECT_EQ(r.status, 0);
    EXPECT_EQ(r.err, "");
    for (const char* word : {"mask", "mag", "hard-mask", "hard-mag", "--k", "--l", "--p", "--vjp",
                             "--solver", "4/3", "0.1", "%.9g"})
      EXPECT_NE(r.out.find(word), std::string::npos) << word;
  }
  EXPECT_EQ(run({"mask", "--k", "2", "--help"}, "").status, 0);
}

// ---- errors: exit 2, nothing on stdout, one line on stderr ----

TEST(CliErrors, BadNumbers) {
  const std::vector<std::string> args = {"mask", "--k", "1"};
  expect_error(args, "1 2 3\n4 5 6\n7 abc 9\n", {"line 3", "'abc'", "not a number"});
  expect_error(args, "1 2 nan\n", {"line 1", "'nan'"});
  expect_error(args, "1 2\n-inf 2\n", {"line 2", "'-inf'"});
  expect_error(args, "1 2\n1e999 2\n", {"line 2", "'1e999'"});
  expect_error(args, "1 2\n3 4x\n", {"line 2", "'4x'"});
  expect_error(args, "1 2\n3 0x10\n", {"line 2", "'0x10'"});
  expect_error(args, "1;2\n", {"line 1", "'1;2'"});
  expect_error({"hard-mag", "--k", "1"}, "1 2\n5 6\n- 1\n", {"line 3", "'-'"});
}

TEST(CliErrors, BlankLine) {
  expect_error({"mask", "--k", "1"}, "1 2\n\n3 4\n", {"line 2", "empty vector"});
  expect_error({"hard-mask", "--k", "1"}, "1 2\n , \n", {"line 2", "empty vector"});
}

TEST(CliErrors, KOutOfRange) {
  expect_error({"mask", "--k", "7"}, "1 2 3 4 5 6 7\n1 2 3 4 5\n", {"--k 7", "line 2", "n = 5"});
  expect_error({"hard-mag", "--k", "3"}, "1 2\n", {"--k 3", "line 1", "n = 2"});
  expect_error({"mag", "--k", "3", "--vjp"}, "1 2 3\n1 1 1\n1 2\n1 1\n",
               {"--k 3", "line 3", "n = 2"});
  expect_error({"mask", "--k", "-1"}, "1 2\n", {"--k", "-1"});
  expect_error({"mask", "--k=-3"}, "1 2\n", {"--k", "-3"});
  expect_error({"mask", "--k", "1.5"}, "1 2\n", {"--k", "1.5"});
  expect_error({"mask", "--k", "two"}, "1 2\n", {"--k", "two"});
  expect_error({"mask", "--k", ""}, "1 2\n", {"--k"});
}

TEST(CliErrors, BadL) {
  expect_error({"mask", "--k", "1", "--l", "-1"}, "1 2\n", {"--l must be > 0, got -1"});
  expect_error({"mask", "--k", "1", "--l", "0"}, "1 2\n", {"--l", "got 0"});
  expect_error({"mag", "--k", "1", "--l=abc"}, "1 2\n", {"--l", "abc"});
  expect_error({"mag", "--k", "1", "--l", "inf"}, "1 2\n", {"--l", "inf"});
  expect_error({"hard-mask", "--k", "1", "--l", "nan"}, "1 2\n", {"--l", "nan"});
}

TEST(CliErrors, BadP) {
  expect_error({"mask", "--k", "1", "--p", "1"}, "1 2\n", {"--p must be > 1, got 1"});
  expect_error({"mask", "--k", "1", "--p", "0.5"}, "1 2\n", {"--p", "0.5"});
  expect_error({"mask", "--k", "1", "--p", "3/4"}, "1 2\n", {"--p", "3/4"});
  expect_error({"mask", "--k", "1", "--p", "4/0"}, "1 2\n", {"--p", "4/0"});
  expect_error({"mask", "--k", "1", "--p", "4/"}, "1 2\n", {"--p", "4/"});
  expect_error({"mask", "--k", "1", "--p", "4/3/2"}, "1 2\n", {"--p", "4/3/2"});
  expect_error({"mask", "--k", "1", "--p=x"}, "1 2\n", {"--p", "x"});
}

TEST(CliErrors, BadArguments) {
  expect_error({"top", "--k", "1"}, "1 2\n", {"unknown mode", "top"});
  expect_error({"mask", "--k", "1", "--frobnicate"}, "1 2\n", {"unknown option", "--frobnicate"});
  expect_error({"mask", "--k", "1", "-x"}, "1 2\n", {"unknown option", "-x"});
  expect_error({"mask"}, "1 2\n", {"missing --k"});
  expect_error({"--k", "1"}, "1 2\n", {"missing mode"});
  expect_error({"mask", "--k"}, "1 2\n", {"--k", "needs a value"});
  expect_error({"mask", "--k", "1", "mag"}, "1 2\n", {"unexpected argument", "mag"});
  expect_error({"mask", "--k", "1", "--solver", "dykstra"}, "1 2\n", {"--solver", "dykstra"});
  expect_error({"mask", "--k", "1", "--vjp=yes"}, "1 2\n1 1\n", {"--vjp"});
}

TEST(CliErrors, Vjp) {
  expect_error({"hard-mask", "--k", "1", "--vjp"}, "1 2\n1 0\n", {"--vjp", "hard-mask"});
  expect_error({"hard-mag", "--k", "1", "--vjp"}, "1 2\n1 0\n", {"--vjp", "hard-mag"});
  // Odd number of lines: the last x has no cotangent.
  expect_error({"mask", "--k", "1", "--vjp"}, "1 2\n1 0\n3 4 5\n", {"line 3", "cotangent"});
  expect_error({"mag", "--k", "1", "--vjp"}, "1 2\n", {"line 1", "cotangent"});
  // Ragged pair: g on line 4 is shorter than x on line 3.
  expect_error({"mask", "--k", "1", "--vjp"}, "1 2\n1 0\n3 4 5\n1 0\n",
               {"line 4", "2 numbers", "line 3", "has 3"});
  expect_error({"mag", "--k", "1", "--vjp"}, "1 2\n1 0 0\n", {"line 2", "line 1"});
  expect_error({"mag", "--k", "1", "--vjp"}, "1 2\nnan 0\n", {"line 2", "'nan'"});
}

}  // namespace
