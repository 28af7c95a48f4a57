#pragma once
// The CSV output of the application programs: the header line when the file
// is opened, then one line per row, each flushed at once so that the rows of
// the runs done so far are on disk while the program goes on.

#include <fstream>
#include <stdexcept>
#include <string>

namespace sparsetopk::apps {

class CsvFile {
 public:
  // `columns`: the header line without its newline, e.g. "variant,sparsity,seed".
  CsvFile(const std::string& path, const std::string& columns) : stream_(path) {
    if (!stream_) throw std::runtime_error("cannot write " + path);
    stream_ << columns << '\n';
  }

  // Writes the values (as `std::ostream <<` prints them) separated by commas.
  template <class... Values>
  void row(const Values&... values) {
    const char* separator = "";
    ((stream_ << separator << values, separator = ","), ...);
    stream_ << '\n';
    stream_.flush();
  }

 private:
  std::ofstream stream_;
};

}  // namespace sparsetopk::apps
