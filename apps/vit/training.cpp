#include "vit/training.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numbers>
#include <stdexcept>

namespace sparsetopk::apps::vit {

double scheduled_lr(double lr, int64_t step, int64_t steps, int64_t warmup) {
  if (step <= warmup) return lr * static_cast<double>(step) / static_cast<double>(warmup);
  const double t = static_cast<double>(step - 1 - warmup) / static_cast<double>(std::max<int64_t>(steps - warmup, 1));
  return lr * 0.5 * (1.0 + std::cos(std::numbers::pi * t));
}

void set_lr(::torch::optim::Adam& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) static_cast<::torch::optim::AdamOptions&>(group.options()).lr(lr);
}

int64_t correct(const at::Tensor& logits, const at::Tensor& y) { return logits.argmax(1).eq(y).sum().item<int64_t>(); }

double pretrain(Vit& model, const Dataset& train, int64_t steps, const PretrainSettings& s, Progress& progress) {
  ::torch::optim::Adam optimizer(model->parameters(), ::torch::optim::AdamOptions(s.lr));
  Batcher batcher(train, s.batch_size, s.seed);
  const int64_t warmup = std::max<int64_t>(1, steps / 20);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = 1; step <= steps; ++step) {
    set_lr(optimizer, scheduled_lr(s.lr, step, steps, warmup));
    const auto batch = batcher.next();
    const auto logits = model->forward(batch.x);
    const auto loss = ::torch::nn::functional::cross_entropy(logits, batch.y);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    progress.step(loss.item<double>(), static_cast<double>(correct(logits, batch.y)),
                  static_cast<double>(batch.y.size(0)));
    if (step % s.log_every == 0 || step == steps) progress.report("pretrain", step, steps);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double load_or_pretrain(Vit& model, const std::vector<int64_t>& tag, const std::string& checkpoint, bool retrain,
                        const Dataset& train, int64_t steps, const PretrainSettings& s, Progress& progress,
                        bool* loaded) {
  *loaded = false;
  if (!retrain && std::filesystem::exists(checkpoint)) {
    std::vector<int64_t> found;
    if (!load_checkpoint(model, tag, checkpoint, &found)) {
      std::string expected, got;
      for (const auto x : tag) expected += std::to_string(x) + " ";
      for (const auto x : found) got += std::to_string(x) + " ";
      throw std::invalid_argument("--checkpoint " + checkpoint +
                                  " was made with other model or pre-training settings (tag " + got + "; expected " +
                                  expected + "): pass --retrain or another --checkpoint");
    }
    *loaded = true;
    std::printf("loaded checkpoint %s\n", checkpoint.c_str());
    return 0;
  }
  progress.add_total(steps);
  const double seconds = pretrain(model, train, steps, s, progress);
  save_checkpoint(model, tag, checkpoint);
  std::printf("saved checkpoint %s (pre-training %.1fs)\n", checkpoint.c_str(), seconds);
  return seconds;
}

}  // namespace sparsetopk::apps::vit
