#pragma once
// Training pieces shared by vit_finetune and vit_topk: the learning-rate
// schedule, dense pre-training of the ViT on single images, and the
// checkpoint that saves it (reused when its tag matches).

#include "common/progress.hpp"
#include "data/idx.hpp"
#include "vit/vit.hpp"

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sparsetopk::apps::vit {

// Cosine decay from lr to 0 over `steps`, after a linear warm-up of `warmup` steps.
double scheduled_lr(double lr, int64_t step, int64_t steps, int64_t warmup);

void set_lr(::torch::optim::Adam& optimizer, double lr);

// Correct top-1 predictions of `logits` [B, C] for labels `y` [B].
int64_t correct(const at::Tensor& logits, const at::Tensor& y);

struct PretrainSettings {
  double lr = 1e-3;
  int64_t batch_size = 128;
  uint64_t seed = 0;
  int64_t log_every = 100;
};

// Dense training with cross-entropy (Adam, warm-up over 5% of the steps then
// cosine decay); returns the seconds it took. Progress lines "[pretrain] ...".
double pretrain(Vit& model, const Dataset& train, int64_t steps, const PretrainSettings& s, Progress& progress);

// Loads `checkpoint` into `model` when it exists and `retrain` is false
// (std::invalid_argument naming --retrain if its tag differs from `tag`);
// otherwise pre-trains (adding the steps to `progress`) and saves it. Prints
// "loaded checkpoint ..." or "saved checkpoint ...". Returns the pre-training
// seconds (0 when loaded); *loaded tells which happened.
double load_or_pretrain(Vit& model, const std::vector<int64_t>& tag, const std::string& checkpoint, bool retrain,
                        const Dataset& train, int64_t steps, const PretrainSettings& s, Progress& progress,
                        bool* loaded);

}  // namespace sparsetopk::apps::vit
