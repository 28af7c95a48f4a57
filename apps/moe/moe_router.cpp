// Sparse mixture of experts on Fashion-MNIST (or any IDX dataset of 28x28
// images): a small token model (16 patches of 7x7 -> embedding -> one MoE
// layer with 8 expert MLPs, k = 2 -> mean pooling -> classifier, see
// apps/moe/moe.hpp), trained with each router and evaluated on the test set
// (or on a validation split carved from the training images, --validation).
// Routers:
//   topk   softmax over the router logits, hard top-k, gates renormalized over
//          the k kept experts (Switch / GShard / Mixtral style)
//   topkN  the same with k = N (e.g. topk3, a baseline of about the soft
//          router's cost)
//   soft   SoftTopKRouter, p = 4/3: soft top-k mask times softmax, renormalized
//   soft2  the same with p = 2
//   expert SoftTopKRouter with choice = expert, p = 4/3: each expert takes a
//          soft top-k of the batch's tokens, capacity k * tokens / experts
//          (expert choice; --k is then the mean experts per token)
//   dense  softmax over all experts, every expert evaluated (cost reference)
// Every router dispatches sparsely: an expert runs only on the tokens whose
// gate for it is non-zero. Per (router, seed) one CSV row: accuracy, experts
// evaluated per token (mean, max), load across experts, time per step.
//
// Choice of l (soft routers): l = l_rel * s, s the running (EMA, detached)
// mean over tokens of the standard deviation of a token's router logits
// across experts; frozen at evaluation. l_rel (--soft-l) was chosen with a
// pilot on a validation split of the training images (--validation 10000,
// 300 steps of batch 128, seed 1; l_rel 0.25 / 0.5 / 1: validation accuracy
// 0.8255 / 0.8322 / 0.8330 at 2.30 / 2.88 / 3.87 experts per token, top-2
// 0.8303 at 2): 0.5, the smallest l_rel that did not lose accuracy to top-2
// there; the differences are within one seed's noise.

#include "common/args.hpp"
#include "common/csv.hpp"
#include "common/progress.hpp"
#include "data/idx.hpp"
#include "moe/moe.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace apps = sparsetopk::apps;
namespace moe = sparsetopk::apps::moe;

struct RouterChoice {
  std::string name;
  moe::RouterKind kind;
  double p;
  int64_t k = 0;  // > 0: this router's own k (topkN); 0: --k
};

const std::vector<RouterChoice> kRouters{{"topk", moe::RouterKind::topk, 0},
                                         {"soft", moe::RouterKind::soft, 4.0 / 3.0},
                                         {"soft2", moe::RouterKind::soft, 2.0},
                                         {"expert", moe::RouterKind::expert, 4.0 / 3.0},
                                         {"dense", moe::RouterKind::dense, 0}};

struct Options {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string out = "moe_router.csv";
  int64_t epochs = 3;
  int64_t steps = 0;  // > 0 overrides epochs
  std::vector<uint64_t> seeds{1};
  std::vector<RouterChoice> routers{kRouters[0], kRouters[1], kRouters[3]};
  int64_t batch_size = 128;
  double lr = 1e-3;
  double aux_loss = 0.01;
  double soft_l = 0.5;
  int64_t k = 2;
  int64_t experts = 8;
  int64_t train_limit = -1;
  int64_t test_limit = -1;
  int64_t validation = 0;
  int64_t eval_batch = 1000;
  int64_t log_every = 100;
  int threads = 1;
};

const char* kUsage = R"(usage: moe_router [options]

Trains a small mixture-of-experts token model (16 patches of 7x7 -> embedding
d = 64 -> one MoE layer of 8 expert MLPs 64-128-64, top-k routing -> mean
pooling -> classifier) with each router, evaluates it on the test set and
writes one CSV row per (router, seed): accuracy, experts evaluated per token,
load across experts, time per step.

  --data-dir DIR      IDX gzip files {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
                      (default /usr/share/datasets/fashion-mnist)
  --out FILE          CSV output (default moe_router.csv)
  --epochs N          training epochs (default 3)
  --steps N           training steps; > 0 overrides --epochs (default 0)
  --seeds LIST        comma-separated seeds (default 1)
  --routers LIST      from topk,topkN,soft,soft2,expert,dense (default topk,soft,dense):
                      topk = softmax + hard top-k, gates renormalized;
                      topkN = the same with k = N (e.g. topk3: a baseline
                      of about the cost of the soft router);
                      soft = SoftTopKRouter p = 4/3; soft2 = the same, p = 2;
                      expert = SoftTopKRouter, choice = expert, p = 4/3:
                      each expert takes a soft top-k of the batch's tokens,
                      capacity k * tokens / experts (at evaluation too, over
                      the evaluation batch);
                      dense = softmax over all experts, all evaluated
  --batch-size N      images per step (16 tokens each; default 128)
  --lr X              Adam learning rate (default 1e-3)
  --aux-loss X        coefficient of the load-balancing loss
                      E * sum_e f_e P_e, same for every router (default 0.01;
                      0 disables)
  --soft-l X          soft routers: l = X * s, s the running mean over tokens
                      of the std of a token's router logits (default 0.5)
  --k N               experts per token of topk and soft (default 2)
  --experts N         number of experts (default 8)
  --train-limit N     use the first N training examples (default all)
  --test-limit N      use the first N test examples (default all)
  --validation N      hold out the last N training examples (after
                      --train-limit) and evaluate on them instead of the test
                      set: for choosing settings (default 0: test set)
  --eval-batch N      images per evaluation batch (default 1000)
  --log-every N       progress line every N steps (default 100)
  --threads N         torch intra-op threads (default 1: on a shared machine
                      more threads can be several times slower)
  --quick             100 steps of batch 64 on 5000 training / 1000 test
                      examples (topk,soft,dense: about 50 s on a busy
                      2-core machine, load 4.5; all five routers about 80 s)
  -h, --help
)";

std::vector<RouterChoice> parse_routers(const std::string& value) {
  std::vector<RouterChoice> routers;
  for (const auto& s : apps::split_list(value)) {
    const auto it = std::find_if(kRouters.begin(), kRouters.end(), [&](const RouterChoice& r) { return r.name == s; });
    if (it != kRouters.end()) {
      routers.push_back(*it);
    } else if (s.size() > 4 && s.rfind("topk", 0) == 0 && s.find_first_not_of("0123456789", 4) == std::string::npos &&
               s.size() < 8) {
      const int64_t n = std::stoll(s.substr(4));  // topkN: hard top-N
      if (n < 1) throw std::invalid_argument("--routers: " + s + " needs N >= 1");
      routers.push_back({s, moe::RouterKind::topk, 0, n});
    } else {
      throw std::invalid_argument("--routers: unknown router '" + s + "' (topk, topkN, soft, soft2, expert, dense)");
    }
  }
  return routers;
}

Options parse(int argc, char** argv) {
  Options o;
  const auto apply_quick = [&] {
    apps::apply_shared_quick(o);
    o.steps = 100;
  };
  const auto handle_flag = [&](const std::string& flag, const std::string& value) {
    if (apps::parse_shared_flag(o, flag, value)) return true;
    if (flag == "--epochs") o.epochs = apps::parse_int(flag, value);
    else if (flag == "--steps") o.steps = apps::parse_int(flag, value);
    else if (flag == "--batch-size") o.batch_size = apps::parse_int(flag, value);
    else if (flag == "--aux-loss") o.aux_loss = apps::parse_double(flag, value);
    else if (flag == "--soft-l") o.soft_l = apps::parse_double(flag, value);
    else if (flag == "--k") o.k = apps::parse_int(flag, value);
    else if (flag == "--experts") o.experts = apps::parse_int(flag, value);
    else if (flag == "--validation") o.validation = apps::parse_int(flag, value);
    else if (flag == "--eval-batch") o.eval_batch = apps::parse_int(flag, value);
    else if (flag == "--threads") o.threads = static_cast<int>(apps::parse_int(flag, value));
    else if (flag == "--routers") o.routers = parse_routers(value);
    else return false;
    return true;
  };
  apps::parse_command_line(argc, argv, kUsage, {}, apply_quick, handle_flag);
  if (o.seeds.empty() || o.routers.empty()) throw std::invalid_argument("--seeds and --routers must not be empty");
  if (o.batch_size <= 0) throw std::invalid_argument("--batch-size must be > 0, got " + std::to_string(o.batch_size));
  if (o.steps <= 0 && o.epochs <= 0) throw std::invalid_argument("--epochs (or --steps) must be > 0");
  if (!(o.lr > 0)) throw std::invalid_argument("--lr must be > 0");
  if (!(o.aux_loss >= 0)) throw std::invalid_argument("--aux-loss must be >= 0");
  if (!(o.soft_l > 0)) throw std::invalid_argument("--soft-l must be > 0");
  if (o.experts < 1) throw std::invalid_argument("--experts must be >= 1, got " + std::to_string(o.experts));
  if (o.k < 1 || o.k > o.experts)
    throw std::invalid_argument("--k must be in [1, --experts = " + std::to_string(o.experts) + "], got " +
                                std::to_string(o.k));
  for (const auto& r : o.routers)
    if (r.k > o.experts)
      throw std::invalid_argument("--routers: " + r.name + " needs 1 <= N <= --experts = " + std::to_string(o.experts));
  if (o.validation < 0) throw std::invalid_argument("--validation must be >= 0");
  if (o.eval_batch <= 0) throw std::invalid_argument("--eval-batch must be > 0");
  if (o.threads <= 0) throw std::invalid_argument("--threads must be > 0, got " + std::to_string(o.threads));
  if (o.log_every <= 0) o.log_every = 1;
  return o;
}

apps::Dataset slice(const apps::Dataset& d, int64_t begin, int64_t end) {
  return {d.images.slice(0, begin, end), d.labels.slice(0, begin, end)};
}

std::string fixed(double x, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, x);
  return buffer;
}

struct Row {
  std::string router;
  double p = 0, l_rel = 0;
  uint64_t seed = 0;
  int64_t k = 0;
  int64_t steps = 0;
  double epochs = 0;
  double train_loss = 0, train_acc = 0, eval_acc = 0;
  moe::RoutingStats eval_routing, train_routing;  // train: the last logging interval
  double l_final = 0;
  double ms_per_step = 0, ms_per_eval_batch = 0, seconds = 0;
};

struct Evaluation {
  double accuracy = 0;
  moe::RoutingStats routing;
  double ms_per_batch = 0;
  double l = 0;
};

Evaluation evaluate(moe::MoeClassifier& net, const apps::Dataset& data, int64_t batch, int64_t experts) {
  torch::NoGradGuard no_grad;
  net->eval();
  Evaluation ev;
  ev.routing = moe::RoutingStats(experts);
  int64_t correct = 0, batches = 0;
  double seconds = 0;
  for (int64_t start = 0; start < data.size(); start += batch) {
    const int64_t end = std::min(start + batch, data.size());
    const auto x = apps::to_float(data.images.slice(0, start, end));
    const auto t0 = std::chrono::steady_clock::now();
    const auto out = net->forward(x);
    const auto predicted = out.logits.argmax(1);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    correct += predicted.eq(data.labels.slice(0, start, end)).sum().item<int64_t>();
    ev.routing.add(out.gates);
    ev.l = out.l;
    ++batches;
  }
  net->train();
  ev.accuracy = data.size() == 0 ? 0 : static_cast<double>(correct) / static_cast<double>(data.size());
  ev.ms_per_batch = batches == 0 ? 0 : 1000.0 * seconds / static_cast<double>(batches);
  return ev;
}

Row run(const Options& o, const RouterChoice& choice, uint64_t seed, const apps::Dataset& train,
        const apps::Dataset& eval, apps::Progress& progress, int64_t steps) {
  torch::manual_seed(seed);
  moe::MoeConfig config;
  config.num_experts = o.experts;
  config.k = choice.k > 0 ? choice.k : o.k;
  config.router = choice.kind;
  config.l_rel = o.soft_l;
  if (choice.kind == moe::RouterKind::soft || choice.kind == moe::RouterKind::expert) config.p = choice.p;
  moe::MoeClassifier net(config);
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(o.lr));
  apps::Batcher batcher(train, o.batch_size, seed);
  const bool soft = choice.kind == moe::RouterKind::soft || choice.kind == moe::RouterKind::expert;

  Row row;
  row.router = choice.name;
  row.k = config.k;
  row.p = soft ? choice.p : 0;
  row.l_rel = soft ? o.soft_l : 0;
  row.seed = seed;
  row.steps = steps;
  const std::string tag = choice.name + " seed=" + std::to_string(seed);
  moe::RoutingStats window(o.experts);
  double step_seconds = 0, last_l = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = 1; step <= steps; ++step) {
    const auto batch = batcher.next();
    const auto s0 = std::chrono::steady_clock::now();
    const auto out = net->forward(batch.x);
    auto loss = torch::nn::functional::cross_entropy(out.logits, batch.y);
    if (o.aux_loss > 0) loss = loss + o.aux_loss * out.aux_loss;
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    const double loss_value = loss.item<double>();
    step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();

    window.add(out.gates);
    last_l = out.l;
    progress.step(loss_value, static_cast<double>(out.logits.argmax(1).eq(batch.y).sum().item<int64_t>()),
                  static_cast<double>(batch.y.size(0)));
    if (step % o.log_every == 0 || step == steps) {
      std::string extra = "experts/token " + fixed(window.mean_experts(), 2) + " (max " +
                          std::to_string(window.max_experts) + ")  load cv " + fixed(window.load_cv(), 2);
      if (soft) extra += "  l " + fixed(last_l, 3);
      progress.report(tag, step, steps, extra);
      row.train_loss = progress.last_loss();
      row.train_acc = progress.last_accuracy();
      row.train_routing = window;
      window = moe::RoutingStats(o.experts);
    }
  }
  row.ms_per_step = 1000.0 * step_seconds / static_cast<double>(steps);
  row.epochs = static_cast<double>(steps) / static_cast<double>(batcher.batches_per_epoch());

  const auto ev = evaluate(net, eval, o.eval_batch, o.experts);
  row.eval_acc = ev.accuracy;
  row.eval_routing = ev.routing;
  row.ms_per_eval_batch = ev.ms_per_batch;
  row.l_final = ev.l;
  row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[%s] %s accuracy %.4f  experts/token %.3f (max %lld, none %.4f)  load min %.3f max %.3f cv %.3f  "
              "%.2f ms/step  %.2f ms/eval batch%s\n",
              tag.c_str(), o.validation > 0 ? "validation" : "test", row.eval_acc, ev.routing.mean_experts(),
              static_cast<long long>(ev.routing.max_experts), ev.routing.zero_expert_fraction(), ev.routing.load_min(), ev.routing.load_max(),
              ev.routing.load_cv(), row.ms_per_step, row.ms_per_eval_batch,
              soft ? (" (l at evaluation " + fixed(row.l_final, 4) + ")").c_str() : "");
  std::fflush(stdout);
  return row;
}

std::string join_load(const std::vector<double>& f) {
  std::string s;
  for (size_t i = 0; i < f.size(); ++i) {
    if (i > 0) s += ';';
    s += fixed(f[i], 5);
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    torch::set_num_threads(o.threads);
    auto train = apps::load_mnist_split(o.data_dir, "train", o.train_limit);
    if (train.features() != 784)
      throw std::invalid_argument("expected 28x28 images, got " + std::to_string(train.features()) + " features");
    apps::Dataset eval;
    std::string eval_set = "test";
    if (o.validation > 0) {
      if (o.validation >= train.size())
        throw std::invalid_argument("--validation " + std::to_string(o.validation) + " must be < the " +
                                    std::to_string(train.size()) + " training examples");
      eval = slice(train, train.size() - o.validation, train.size());
      train = slice(train, 0, train.size() - o.validation);
      eval_set = "validation";
    } else {
      eval = apps::load_mnist_split(o.data_dir, "t10k", o.test_limit);
      if (eval.features() != 784)
        throw std::invalid_argument("expected 28x28 test images, got " + std::to_string(eval.features()) + " features");
    }
    const int64_t per_epoch = (train.size() + o.batch_size - 1) / o.batch_size;
    const int64_t steps = o.steps > 0 ? o.steps : o.epochs * per_epoch;
    std::printf("train %lld, %s %lld examples; %lld steps per run (batch %lld, %.2f epochs); %zu router(s) x %zu seed(s)\n",
                static_cast<long long>(train.size()), eval_set.c_str(), static_cast<long long>(eval.size()),
                static_cast<long long>(steps), static_cast<long long>(o.batch_size),
                static_cast<double>(steps) / static_cast<double>(per_epoch), o.routers.size(), o.seeds.size());

    apps::CsvFile csv(o.out,
                      "router,p,l_rel,seed,steps,epochs,batch_size,lr,aux_loss,k,experts,train_examples,eval_set,"
                      "eval_examples,train_loss,train_acc,eval_acc,experts_per_token_mean,experts_per_token_max,"
                      "train_experts_per_token_mean,train_experts_per_token_max,load_min,load_max,load_cv,load,"
                      "train_load_cv,l_final,ms_per_step,ms_per_eval_batch,eval_batch,seconds,threads,zero_expert_fraction,"
                      "train_zero_expert_fraction");

    apps::Progress progress;
    progress.add_total(steps * static_cast<int64_t>(o.seeds.size() * o.routers.size()));
    for (const auto seed : o.seeds) {
      for (const auto& router : o.routers) {
        const Row r = run(o, router, seed, train, eval, progress, steps);
        csv.row(r.router, r.p, r.l_rel, r.seed, r.steps, r.epochs, o.batch_size, o.lr, o.aux_loss, r.k, o.experts,
                train.size(), eval_set, eval.size(), r.train_loss, r.train_acc, r.eval_acc,
                r.eval_routing.mean_experts(), r.eval_routing.max_experts, r.train_routing.mean_experts(),
                r.train_routing.max_experts, r.eval_routing.load_min(), r.eval_routing.load_max(),
                r.eval_routing.load_cv(), join_load(r.eval_routing.load()), r.train_routing.load_cv(), r.l_final,
                r.ms_per_step, r.ms_per_eval_batch, o.eval_batch, r.seconds, o.threads,
                r.eval_routing.zero_expert_fraction(), r.train_routing.zero_expert_fraction());
      }
    }
    std::printf("wrote %s (%.1fs)\n", o.out.c_str(), progress.seconds());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_router: %s\n", e.what());
    return 2;
  }
}
