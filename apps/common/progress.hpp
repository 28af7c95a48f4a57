#pragma once
// Progress lines for long training runs: step/total, loss, accuracy,
// throughput and the ETA of the whole program (all runs), flushed at once.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace sparsetopk::apps {

class Progress {
 public:
  explicit Progress(int64_t total_steps = 0) : total_steps_(total_steps) {}
  void add_total(int64_t steps) { total_steps_ += steps; }
  double seconds() const { return seconds_since(start_); }

  // Records one training step on `examples` examples with the batch's mean
  // loss and number of correct predictions.
  void step(double loss, double correct, double examples) {
    ++done_steps_;
    window_loss_ += loss;
    window_correct_ += correct;
    window_examples_ += examples;
    window_steps_ += 1;
  }

  // Prints "[tag] step s/S  loss  acc  <extra>  samples/s  total  ETA" over
  // the steps since the previous report, then starts a new window.
  void report(const std::string& tag, int64_t step, int64_t steps, const std::string& extra = "") {
    const double window_seconds = seconds_since(window_start_);
    last_loss_ = window_loss_ / std::max(window_steps_, 1.0);
    last_accuracy_ = window_correct_ / std::max(window_examples_, 1.0);
    const double eta = seconds() / static_cast<double>(std::max<int64_t>(done_steps_, 1)) *
                       static_cast<double>(std::max<int64_t>(total_steps_ - done_steps_, 0));
    std::printf("[%s] step %lld/%lld  loss %.4f  acc %.4f%s%s  %.0f samples/s  total %lld/%lld  ETA %.0fs\n",
                tag.c_str(), static_cast<long long>(step), static_cast<long long>(steps), last_loss_, last_accuracy_,
                extra.empty() ? "" : "  ", extra.c_str(), window_examples_ / std::max(window_seconds, 1e-9),
                static_cast<long long>(done_steps_), static_cast<long long>(total_steps_), eta);
    std::fflush(stdout);
    window_loss_ = window_correct_ = window_examples_ = window_steps_ = 0;
    window_start_ = Clock::now();
  }

  double last_loss() const { return last_loss_; }
  double last_accuracy() const { return last_accuracy_; }

 private:
  using Clock = std::chrono::steady_clock;
  static double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  }
  int64_t total_steps_ = 0;
  int64_t done_steps_ = 0;
  Clock::time_point start_ = Clock::now();
  Clock::time_point window_start_ = Clock::now();
  double window_loss_ = 0, window_correct_ = 0, window_examples_ = 0, window_steps_ = 0;
  double last_loss_ = 0, last_accuracy_ = 0;
};

}  // namespace sparsetopk::apps
