#pragma once
// Running an application program from its smoke test: a file's text, and the
// exit status of the program run with arguments, its output going to a log.

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <sys/wait.h>

namespace sparsetopk::apps::testing {

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Runs "program args > log 2>&1" in a shell; the exit status, -1 if it did not exit.
inline int run_program(const std::string& program, const std::string& args, const std::filesystem::path& log) {
  const std::string command = program + " " + args + " > " + log.string() + " 2>&1";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace sparsetopk::apps::testing
