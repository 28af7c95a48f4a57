#pragma once
// Command-line options shared by vit_finetune and vit_topk (beside those of
// common/args.hpp): the model's shape, the pre-training and its checkpoint,
// the held-out validation split and the threads. Each program's Options
// derives from SharedOptions.

#include "common/args.hpp"
#include "data/idx.hpp"
#include "vit/vit.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace sparsetopk::apps::vit {

struct SharedOptions {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string checkpoint;  // default: --out with the extension replaced by .pt
  bool retrain = false;
  VitConfig model = [] {
    VitConfig c;
    c.depth = 2;  // 4 blocks train about half as fast on a shared 2-core machine
    return c;
  }();
  int64_t pretrain_epochs = 5;
  int64_t pretrain_steps = 0;  // > 0 overrides pretrain_epochs
  double pretrain_lr = 1e-3;
  uint64_t pretrain_seed = 0;
  int64_t train_limit = -1;
  int64_t test_limit = -1;
  int64_t val_size = 0;
  std::string eval = "test";  // or "val"
  int64_t log_every = 100;
  int threads = 1;
};

// Sets the shared option `flag` from `value`; false if `flag` is not one of them.
inline bool parse_vit_flag(SharedOptions& o, const std::string& flag, const std::string& value) {
  const auto positive = [&](int64_t x) {
    if (x <= 0) throw std::invalid_argument(flag + " must be > 0, got " + std::to_string(x));
    return x;
  };
  if (flag == "--checkpoint") o.checkpoint = value;
  else if (flag == "--retrain") o.retrain = true;
  else if (flag == "--pretrain-epochs") o.pretrain_epochs = parse_int(flag, value);
  else if (flag == "--pretrain-steps") o.pretrain_steps = parse_int(flag, value);
  else if (flag == "--pretrain-lr") o.pretrain_lr = parse_double(flag, value);
  else if (flag == "--pretrain-seed") {
    const int64_t s = parse_int(flag, value);
    if (s < 0) throw std::invalid_argument("--pretrain-seed must be >= 0, got " + value);
    o.pretrain_seed = static_cast<uint64_t>(s);
  } else if (flag == "--patch") o.model.patch = positive(parse_int(flag, value));
  else if (flag == "--dim") o.model.dim = positive(parse_int(flag, value));
  else if (flag == "--depth") o.model.depth = positive(parse_int(flag, value));
  else if (flag == "--heads") o.model.heads = positive(parse_int(flag, value));
  else if (flag == "--mlp") o.model.mlp = positive(parse_int(flag, value));
  else if (flag == "--val-size") {
    o.val_size = parse_int(flag, value);
    if (o.val_size < 0) throw std::invalid_argument("--val-size must be >= 0, got " + value);
  } else if (flag == "--eval") {
    if (value != "test" && value != "val") throw std::invalid_argument("--eval: expected test or val, got '" + value + "'");
    o.eval = value;
  } else if (flag == "--threads") o.threads = static_cast<int>(positive(parse_int(flag, value)));
  else return false;
  return true;
}

// The checks of the shared options once every flag is read.
inline void check_vit_options(const SharedOptions& o) {
  if (o.pretrain_steps <= 0 && o.pretrain_epochs <= 0)
    throw std::invalid_argument("--pretrain-epochs (or --pretrain-steps) must be > 0, got " +
                                std::to_string(o.pretrain_epochs));
  if (!(o.pretrain_lr > 0))
    throw std::invalid_argument("--pretrain-lr must be > 0, got " + std::to_string(o.pretrain_lr));
  o.model.validate();
  if (o.eval == "val" && o.val_size <= 0) throw std::invalid_argument("--eval val needs --val-size > 0");
}

// The training images without their last `val_size` (which go to *held_out);
// all of them when val_size is 0. std::invalid_argument naming --val-size
// unless val_size < the number of images.
inline Dataset hold_out(const Dataset& train, int64_t val_size, Dataset* held_out) {
  if (val_size <= 0) return train;
  const int64_t n = train.size();
  if (val_size >= n)
    throw std::invalid_argument("--val-size " + std::to_string(val_size) + " must be < the " + std::to_string(n) +
                                " training images");
  *held_out = {train.images.slice(0, n - val_size, n), train.labels.slice(0, n - val_size, n)};
  return {train.images.slice(0, 0, n - val_size), train.labels.slice(0, 0, n - val_size)};
}

}  // namespace sparsetopk::apps::vit
