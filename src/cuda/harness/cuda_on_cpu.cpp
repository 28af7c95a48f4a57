// The harness of cuda_on_cpu.hpp: launches, lanes (fibers or threads), block
// barriers, warp operations and their checks.

#include "cuda_on_cpu.hpp"

#include <sys/mman.h>
#if !defined(__x86_64__) || defined(SPARSETOPK_HARNESS_UCONTEXT)
#include <ucontext.h>
#endif
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SPARSETOPK_HARNESS_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define SPARSETOPK_HARNESS_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(SPARSETOPK_HARNESS_ASAN)
#define SPARSETOPK_HARNESS_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) && !defined(SPARSETOPK_HARNESS_TSAN)
#define SPARSETOPK_HARNESS_TSAN 1
#endif

#if defined(SPARSETOPK_HARNESS_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(SPARSETOPK_HARNESS_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

// The fibers switch stacks with the few instructions below on x86-64 (save the
// callee-saved registers and the floating-point control words on the old
// stack, load them from the new one): no system call, no setjmp/longjmp (which
// the sanitizers intercept as stack unwinding). Elsewhere: swapcontext.
#if defined(__x86_64__) && !defined(SPARSETOPK_HARNESS_UCONTEXT)
#define SPARSETOPK_HARNESS_ASM_SWITCH 1
extern "C" void sparsetopk_harness_switch_stack(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .globl sparsetopk_harness_switch_stack
    .hidden sparsetopk_harness_switch_stack
    .type sparsetopk_harness_switch_stack, @function
sparsetopk_harness_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size sparsetopk_harness_switch_stack, .-sparsetopk_harness_switch_stack
)");
#endif

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

namespace sparsetopk::cuda::harness {
namespace detail {
thread_local constinit const LaneContext* current_lane = nullptr;
}  // namespace detail

namespace {

using detail::WarpOp;

constexpr unsigned kWarp = 32;
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned long long kMaxGridX = 2147483647ULL;
constexpr unsigned kMaxGridYZ = 65535;
constexpr std::size_t kMaxSharedBytes = 232448;
#if defined(SPARSETOPK_HARNESS_ASAN)
constexpr std::size_t kStackBytes = std::size_t{1} << 20;  // ASan's redzones enlarge frames
#else
constexpr std::size_t kStackBytes = std::size_t{256} << 10;
#endif

// A context to switch to: a lane's fiber or the launching thread (the scheduler).
struct Context {
#if defined(SPARSETOPK_HARNESS_ASM_SWITCH)
  void* sp = nullptr;  // the saved stack pointer (sparsetopk_harness_switch_stack's frame)
#else
  ucontext_t uc;
#endif
  const void* stack_bottom = nullptr;
  std::size_t stack_size = 0;
#if defined(SPARSETOPK_HARNESS_TSAN)
  void* tsan_fiber = nullptr;
#endif
};

struct Lane : LaneContext {
  unsigned id = 0;  // linear thread id in the block
  bool exited = false;
  bool blocked = false;     // waiting at a barrier or a warp operation
  bool at_barrier = false;  // (__syncthreads)
  // the warp operation it waits on
  WarpOp op = WarpOp::sync;
  unsigned mask = 0;
  int arg = 0;
  int width = 0;
  int size = 0;
  std::uint64_t value = 0;
  std::uint64_t result = 0;
  Context context;           // fibers
  std::condition_variable cv;  // threads
  // ThreadSanitizer's happens-before at warp operations (threads mode): the
  // lane releases arrive_token[parity] when it arrives, the lane completing the
  // operation acquires those of the mask's lanes and releases each one's wake_token.
  unsigned warp_ops = 0;
  unsigned parity = 0;
  char arrive_token[2] = {};
  char wake_token[2] = {};
};

struct Warp {
  unsigned existing = 0;  // lanes of the block in this warp
  unsigned waiting = 0;   // lanes waiting on a warp operation
  unsigned exited = 0;
};

struct Stack {
  void* mapping = nullptr;  // guard page, then the stack
  std::size_t mapped = 0;
  void* bottom() const { return static_cast<char*>(mapping) + page_size(); }
  static std::size_t page_size() {
    static const std::size_t size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    return size;
  }
};

struct Launch {
  unsigned long long number = 0;
  Mode mode = Mode::fibers;
  dim3 grid, block;
  std::size_t shared_bytes = 0;
  void (*body)(void*) = nullptr;
  void* data = nullptr;
  unsigned threads = 0;
  std::unique_ptr<Lane[]> lanes;
  std::vector<Warp> warps;
  uint3 block_index{0, 0, 0};
  unsigned live = 0;
  unsigned blocked = 0;
  unsigned barrier_arrived = 0;
  int barrier_count = 0;
  detail::BarrierResult barrier_result{0, 0};
  unsigned char* shared = nullptr;
  bool quit = false;
  // threads
  std::mutex mutex;
  std::condition_variable start_cv, done_cv;
  unsigned long long generation = 0;
  // ThreadSanitizer's happens-before (threads mode): block start and end, __syncthreads
  unsigned long long barriers = 0;
  char start_token = 0, end_token = 0;
  char barrier_token[2] = {};
  // fibers
  Context scheduler;
};

std::mutex launch_mutex;              // one launch at a time
Launch* active = nullptr;             // the launch in progress
unsigned long long launches = 0;      // launches so far (for messages)
std::uint64_t switches = 0;           // fiber switches so far (under launch_mutex)
std::vector<Stack> stack_cache;       // fiber stacks (under launch_mutex)
thread_local Lane* self = nullptr;    // the lane running on this OS thread
thread_local bool in_kernel = false;  // (no launches from kernels)
std::atomic<int> chosen_mode{-1};

Lane& me() {
  if (!self) detail::no_lane("a block barrier or warp operation");
  return *self;
}

void set_self(Lane* lane) {
  self = lane;
  detail::current_lane = lane;
}

// ---- ThreadSanitizer in threads mode ----
// The harness's own locking would order the lanes at random for ThreadSanitizer
// (each lock hands happens-before from one lane to the next), hiding the
// kernels' races. So in threads mode the harness's bookkeeping is invisible to
// it (Quiet: no reads, writes or synchronization recorded), and happens-before
// is stated where CUDA gives it: __syncthreads, warp operations, the block's
// start and end (the blocks run one after another; __shared__ variables are
// reused by the next block).
#if defined(SPARSETOPK_HARNESS_TSAN)
extern "C" {
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
}
class Quiet {
 public:
  explicit Quiet(bool on) : on_(on) {
    if (!on_) return;
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
  }
  ~Quiet() {
    if (!on_) return;
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  }
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;

 private:
  bool on_;
};
// (inside a Quiet, threads mode only)
void happens_before_release(const Launch& launch, void* token) {
  if (launch.mode != Mode::threads) return;
  AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
  __tsan_release(token);
  AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
}
void happens_before_acquire(const Launch& launch, void* token) {
  if (launch.mode != Mode::threads) return;
  AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
  __tsan_acquire(token);
  AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
}
#else
class Quiet {
 public:
  explicit Quiet(bool) {}
};
void happens_before_release(const Launch&, void*) {}
void happens_before_acquire(const Launch&, void*) {}
#endif

// ---- errors in kernels: a message, then abort ----

std::string describe(const uint3& v) {
  char text[48];
  std::snprintf(text, sizeof text, "(%u, %u, %u)", v.x, v.y, v.z);
  return text;
}
std::string describe(const dim3& v) { return describe(uint3(v)); }
std::string hex(unsigned v) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", v);
  return text;
}
const char* name_of(WarpOp op) {
  switch (op) {
    case WarpOp::sync: return "__syncwarp";
    case WarpOp::shfl_idx: return "__shfl_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::vote: return "__ballot_sync/__any_sync/__all_sync";
  }
  return "?";
}

// What every lane of the block is doing, warp by warp.
std::string block_state(const Launch& launch) {
  std::string text;
  for (unsigned w = 0; w < launch.warps.size(); ++w) {
    const Warp& warp = launch.warps[w];
    unsigned at_barrier = 0, running = 0;
    for (unsigned l = 0; l < kWarp; ++l) {
      if (!(warp.existing >> l & 1u)) continue;
      const Lane& lane = launch.lanes[w * kWarp + l];
      if (lane.at_barrier) at_barrier |= 1u << l;
      if (!lane.exited && !lane.blocked) running |= 1u << l;
    }
    text += "\n  warp " + std::to_string(w) + ": exited " + hex(warp.exited) + ", at __syncthreads " +
            hex(at_barrier) + ", running " + hex(running) + ", in warp operations " + hex(warp.waiting);
    for (unsigned l = 0; l < kWarp; ++l) {
      if (!(warp.waiting >> l & 1u)) continue;
      const Lane& lane = launch.lanes[w * kWarp + l];
      text += "\n    lane " + std::to_string(l) + ": " + name_of(lane.op) + " mask " + hex(lane.mask);
    }
  }
  return text;
}

[[noreturn]] void fail(const Launch& launch, const Lane& lane, const std::string& what, bool with_state) {
  std::string text = "sparsetopk CUDA harness: " + what + "\n  in launch #" + std::to_string(launch.number) +
                     " (grid " + describe(launch.grid) + ", block " + describe(launch.block) + "), block " +
                     describe(launch.block_index) + ", warp " + std::to_string(lane.id / kWarp) + ", lane " +
                     std::to_string(lane.id % kWarp) + " (threadIdx " + describe(lane.thread) + ")";
  if (with_state) text += "\n  the block's lanes:" + block_state(launch);
  std::fprintf(stderr, "%s\n", text.c_str());
  std::fflush(stderr);
  std::abort();
}

[[noreturn]] void deadlock(const Launch& launch, const Lane& lane) {
  fail(launch, lane,
       "deadlock: every live thread of the block waits (__syncthreads or a warp operation) and none can proceed; "
       "the last to wait is named below",
       true);
}

// ---- fibers ----

#if defined(SPARSETOPK_HARNESS_ASAN)
void start_switch(void** fake_stack, const Context& to) {
  __sanitizer_start_switch_fiber(fake_stack, to.stack_bottom, to.stack_size);
}
void finish_switch(void* fake_stack, Context* learn_from = nullptr) {
  const void* bottom = nullptr;
  std::size_t size = 0;
  __sanitizer_finish_switch_fiber(fake_stack, &bottom, &size);
  if (learn_from) {
    learn_from->stack_bottom = bottom;
    learn_from->stack_size = size;
  }
}
#else
void start_switch(void**, const Context&) {}
void finish_switch(void*, Context* = nullptr) {}
#endif

// Leaves `from` (saved, resumed later where it left) for `to`; `to_lane`: the
// lane that runs next (nullptr: the scheduler).
void switch_context(Context& from, Context& to, Lane* to_lane) {
  ++switches;
  set_self(to_lane);
  void* fake_stack = nullptr;
#if defined(SPARSETOPK_HARNESS_TSAN)
  __tsan_switch_to_fiber(to.tsan_fiber, 0);
#endif
  start_switch(&fake_stack, to);
#if defined(SPARSETOPK_HARNESS_ASM_SWITCH)
  sparsetopk_harness_switch_stack(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
  finish_switch(fake_stack);
}

// The lane's last switch (its fiber ends).
[[noreturn]] void leave_for_good(Context& from, Context& to) {
  set_self(nullptr);
#if defined(SPARSETOPK_HARNESS_TSAN)
  __tsan_switch_to_fiber(to.tsan_fiber, 0);
#endif
#if defined(SPARSETOPK_HARNESS_ASAN)
  __sanitizer_start_switch_fiber(nullptr, to.stack_bottom, to.stack_size);
#endif
#if defined(SPARSETOPK_HARNESS_ASM_SWITCH)
  sparsetopk_harness_switch_stack(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
  std::abort();  // (never resumed)
}

// The next lane after `lane` (cyclically) that can run, or nullptr.
Lane* next_runnable(Launch& launch, const Lane& lane) {
  for (unsigned step = 1; step <= launch.threads; ++step) {
    unsigned id = lane.id + step;
    if (id >= launch.threads) id -= launch.threads;
    Lane& other = launch.lanes[id];
    if (!other.exited && !other.blocked) return &other;
  }
  return nullptr;
}

void run_lane_body(Launch& launch, Lane& lane) {
  try {
    launch.body(launch.data);
  } catch (const std::exception& error) {
    fail(launch, lane, std::string("the kernel threw: ") + error.what(), false);
  } catch (...) {
    fail(launch, lane, "the kernel threw", false);
  }
}

void on_exit(Launch& launch, Lane& lane);

// A lane's fiber: the kernel once per block, until the launch ends.
[[noreturn]] void fiber_main() {
  Lane& lane = *self;
  Launch& launch = *active;
  finish_switch(nullptr, &launch.scheduler);  // (learns the launching thread's stack)
  switch_context(lane.context, launch.scheduler, nullptr);  // primed: back until the first block
  for (;;) {
    if (launch.quit) break;
    run_lane_body(launch, lane);
    on_exit(launch, lane);
    if (launch.live == 0) {
      switch_context(lane.context, launch.scheduler, nullptr);
    } else {
      Lane* next = next_runnable(launch, lane);
      if (!next) deadlock(launch, lane);
      switch_context(lane.context, next->context, next);
    }
  }
  leave_for_good(lane.context, launch.scheduler);
}

// Blocks the calling lane until another releases it.
void wait_released(Launch& launch, Lane& lane, std::unique_lock<std::mutex>& lock) {
  if (launch.mode == Mode::threads) {
    while (lane.blocked) lane.cv.wait(lock);
    return;
  }
  Lane* next = next_runnable(launch, lane);
  if (!next) deadlock(launch, lane);
  switch_context(lane.context, next->context, next);
  if (lane.blocked) fail(launch, lane, "internal error: a lane resumed while blocked", true);
}

void release(Launch& launch, Lane& lane) {
  lane.blocked = false;
  --launch.blocked;
  if (launch.mode == Mode::threads) lane.cv.notify_one();
}

std::unique_lock<std::mutex> lock_of(Launch& launch) {
  return launch.mode == Mode::threads ? std::unique_lock<std::mutex>(launch.mutex) : std::unique_lock<std::mutex>();
}

void complete_barrier(Launch& launch) {
  ++launch.barriers;
  launch.barrier_result = {launch.barrier_count, static_cast<int>(launch.barrier_arrived)};
  launch.barrier_arrived = 0;
  launch.barrier_count = 0;
  for (unsigned id = 0; id < launch.threads; ++id) {
    Lane& lane = launch.lanes[id];
    if (lane.at_barrier) {
      lane.at_barrier = false;
      release(launch, lane);
    }
  }
}

void on_exit(Launch& launch, Lane& lane) {
  Quiet quiet(launch.mode == Mode::threads);
  auto lock = lock_of(launch);
  happens_before_release(launch, &launch.end_token);
  lane.exited = true;
  --launch.live;
  Warp& warp = launch.warps[lane.id / kWarp];
  const unsigned bit = 1u << (lane.id % kWarp);
  warp.exited |= bit;
  for (unsigned l = 0; l < kWarp; ++l) {
    if ((warp.waiting >> l & 1u) && (launch.lanes[lane.id / kWarp * kWarp + l].mask & bit))
      fail(launch, lane,
           "this lane exited while lane " + std::to_string(l) + " of its warp waits on " +
               name_of(launch.lanes[lane.id / kWarp * kWarp + l].op) + " with a mask naming it",
           true);
  }
  if (launch.barrier_arrived > 0 && launch.barrier_arrived == launch.live) {
    complete_barrier(launch);
  } else if (launch.live > 0 && launch.blocked == launch.live) {
    deadlock(launch, lane);
  }
  if (launch.live == 0 && launch.mode == Mode::threads) launch.done_cv.notify_all();
}

// ---- one launch ----

void check_shape(dim3 grid, dim3 block, std::size_t shared_bytes) {
  auto reject = [](const std::string& what) {
    throw std::runtime_error("sparsetopk CUDA harness: invalid launch: " + what);
  };
  if (block.x == 0 || block.y == 0 || block.z == 0) reject("empty block " + describe(block));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) reject("empty grid " + describe(grid));
  const unsigned long long threads = 1ULL * block.x * block.y * block.z;
  if (threads > kMaxThreads)
    reject("block " + describe(block) + " has " + std::to_string(threads) + " threads, at most " +
           std::to_string(kMaxThreads));
  if (block.z > kMaxBlockZ) reject("block.z = " + std::to_string(block.z) + ", at most " + std::to_string(kMaxBlockZ));
  if (grid.x > kMaxGridX) reject("grid.x = " + std::to_string(grid.x) + ", at most " + std::to_string(kMaxGridX));
  if (grid.y > kMaxGridYZ) reject("grid.y = " + std::to_string(grid.y) + ", at most " + std::to_string(kMaxGridYZ));
  if (grid.z > kMaxGridYZ) reject("grid.z = " + std::to_string(grid.z) + ", at most " + std::to_string(kMaxGridYZ));
  if (shared_bytes > kMaxSharedBytes)
    reject("dynamic shared memory of " + std::to_string(shared_bytes) + " bytes, at most " +
           std::to_string(kMaxSharedBytes));
}

void set_up(Launch& launch, dim3 grid, dim3 block) {
  launch.threads = block.x * block.y * block.z;
  launch.lanes = std::make_unique<Lane[]>(launch.threads);
  launch.warps.assign((launch.threads + kWarp - 1) / kWarp, Warp{});
  for (unsigned id = 0; id < launch.threads; ++id) {
    Lane& lane = launch.lanes[id];
    lane.id = id;
    lane.thread = {id % block.x, id / block.x % block.y, id / (block.x * block.y)};
    lane.block_dim = block;
    lane.grid_dim = grid;
    launch.warps[id / kWarp].existing |= 1u << (id % kWarp);
  }
}

// Readies the block at `index`: every lane live and running, shared memory poisoned.
void start_block(Launch& launch, uint3 index) {
  launch.block_index = index;
  launch.live = launch.threads;
  launch.blocked = 0;
  launch.barrier_arrived = 0;
  launch.barrier_count = 0;
  for (Warp& warp : launch.warps) {
    warp.waiting = 0;
    warp.exited = 0;
  }
  for (unsigned id = 0; id < launch.threads; ++id) {
    Lane& lane = launch.lanes[id];
    lane.block = index;
    lane.exited = false;
    lane.blocked = false;
    lane.at_barrier = false;
  }
  if (launch.shared_bytes) std::memset(launch.shared, 0xff, launch.shared_bytes);
}

template <class Each>
void for_each_block(dim3 grid, Each&& each) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) each(uint3{x, y, z});
}

// A fresh fiber on the stack [bottom, bottom + size) that starts in fiber_main.
void prepare(Context& context, void* bottom, std::size_t size) {
#if defined(SPARSETOPK_HARNESS_ASM_SWITCH)
  // The frame sparsetopk_harness_switch_stack pops, from the 16-byte aligned top down:
  // a null return address (fiber_main never returns; the unwinders stop there),
  // fiber_main (the `ret`), rbp = 0, rbx, r12..r15, then the control words.
  auto* top = reinterpret_cast<std::uint64_t*>(
      (reinterpret_cast<std::uintptr_t>(bottom) + size) & ~static_cast<std::uintptr_t>(15));
  std::uint64_t* sp = top - 9;
  std::memset(sp, 0, 9 * sizeof(std::uint64_t));
  top[-2] = reinterpret_cast<std::uint64_t>(&fiber_main);
  std::uint32_t mxcsr = 0;
  std::uint16_t fpu = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu));
  std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, sizeof mxcsr);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpu, sizeof fpu);
  context.sp = sp;
#else
  getcontext(&context.uc);
  context.uc.uc_stack.ss_sp = bottom;
  context.uc.uc_stack.ss_size = size;
  context.uc.uc_link = nullptr;
  makecontext(&context.uc, fiber_main, 0);
#endif
}

void run_fibers(Launch& launch) {
  const std::size_t page = Stack::page_size();
  while (stack_cache.size() < launch.threads) {
    Stack stack;
    stack.mapped = kStackBytes + page;
    stack.mapping =
        mmap(nullptr, stack.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stack.mapping == MAP_FAILED) throw std::runtime_error("sparsetopk CUDA harness: no memory for fiber stacks");
    mprotect(stack.mapping, page, PROT_NONE);  // the guard page (the stack grows down)
    stack_cache.push_back(stack);
  }
#if defined(SPARSETOPK_HARNESS_TSAN)
  launch.scheduler.tsan_fiber = __tsan_get_current_fiber();
#endif
  for (unsigned id = 0; id < launch.threads; ++id) {
    Lane& lane = launch.lanes[id];
    Context& context = lane.context;
    context.stack_bottom = stack_cache[id].bottom();
    context.stack_size = kStackBytes;
#if defined(SPARSETOPK_HARNESS_ASAN)
    __asan_unpoison_memory_region(stack_cache[id].bottom(), kStackBytes);
#endif
#if defined(SPARSETOPK_HARNESS_TSAN)
    context.tsan_fiber = __tsan_create_fiber(0);
#endif
    prepare(context, stack_cache[id].bottom(), kStackBytes);
    // Prime the fiber: it learns the launching thread's stack, saves its own context and comes back at once.
    switch_context(launch.scheduler, context, &lane);
  }
  set_self(nullptr);
  for_each_block(launch.grid, [&](uint3 index) {
    start_block(launch, index);
    switch_context(launch.scheduler, launch.lanes[0].context, &launch.lanes[0]);  // back when all exited
  });
  launch.quit = true;
  for (unsigned id = 0; id < launch.threads; ++id)
    switch_context(launch.scheduler, launch.lanes[id].context, &launch.lanes[id]);
  set_self(nullptr);
#if defined(SPARSETOPK_HARNESS_TSAN)
  for (unsigned id = 0; id < launch.threads; ++id) __tsan_destroy_fiber(launch.lanes[id].context.tsan_fiber);
#endif
}

void run_threads(Launch& launch) {
  std::vector<std::thread> workers;
  workers.reserve(launch.threads);
  for (unsigned id = 0; id < launch.threads; ++id) {
    workers.emplace_back([&launch, id] {
      Lane& lane = launch.lanes[id];
      set_self(&lane);
      in_kernel = true;
      unsigned long long seen = 0;
      for (;;) {
        {
          Quiet quiet(true);
          std::unique_lock<std::mutex> lock(launch.mutex);
          launch.start_cv.wait(lock, [&] { return launch.quit || launch.generation != seen; });
          if (launch.quit) break;
          seen = launch.generation;
          happens_before_acquire(launch, &launch.start_token);
        }
        run_lane_body(launch, lane);
        on_exit(launch, lane);
      }
    });
  }
  {
    Quiet quiet(true);
    std::unique_lock<std::mutex> lock(launch.mutex);
    for_each_block(launch.grid, [&](uint3 index) {
      start_block(launch, index);
      happens_before_release(launch, &launch.start_token);
      ++launch.generation;
      launch.start_cv.notify_all();
      launch.done_cv.wait(lock, [&] { return launch.live == 0; });
      happens_before_acquire(launch, &launch.end_token);
    });
    launch.quit = true;
    launch.start_cv.notify_all();
  }
  for (std::thread& worker : workers) worker.join();
}

}  // namespace

// ---- the public functions ----

Mode default_mode() {
#if defined(SPARSETOPK_HARNESS_TSAN)
  return Mode::threads;
#else
  return Mode::fibers;
#endif
}

void set_mode(Mode mode) { chosen_mode.store(static_cast<int>(mode)); }

Mode mode() {
  int chosen = chosen_mode.load();
  if (chosen < 0) {
    Mode mode = default_mode();
    if (const char* text = std::getenv("SPARSETOPK_HARNESS")) {
      const std::string value = text;
      if (value == "threads") {
        mode = Mode::threads;
      } else if (value == "fibers") {
        mode = Mode::fibers;
      } else if (!value.empty()) {
        std::fprintf(stderr, "sparsetopk CUDA harness: SPARSETOPK_HARNESS=%s is neither threads nor fibers\n", text);
      }
    }
    int expected = -1;
    chosen_mode.compare_exchange_strong(expected, static_cast<int>(mode));
    chosen = chosen_mode.load();
  }
  return static_cast<Mode>(chosen);
}

unsigned char* dynamic_shared() {
  if (!self) detail::no_lane("dynamic shared memory");
  return active->shared;
}

std::uint64_t fiber_switches() {
  std::lock_guard<std::mutex> lock(launch_mutex);
  return switches;
}

namespace detail {

[[noreturn]] void no_lane(const char* what) {
  std::fprintf(stderr, "sparsetopk CUDA harness: %s used outside a kernel launch\n", what);
  std::fflush(stderr);
  std::abort();
}

void run_erased(void (*body)(void*), void* data, dim3 grid, dim3 block, std::size_t shared_bytes) {
  if (in_kernel || self) throw std::runtime_error("sparsetopk CUDA harness: a launch from inside a kernel");
  check_shape(grid, block, shared_bytes);
  const Mode launch_mode = mode();
  std::lock_guard<std::mutex> lock(launch_mutex);
  Launch launch;
  launch.number = ++launches;
  launch.mode = launch_mode;
  launch.grid = grid;
  launch.block = block;
  launch.shared_bytes = shared_bytes;
  launch.body = body;
  launch.data = data;
  set_up(launch, grid, block);
  struct Shared {
    unsigned char* bytes = nullptr;
    ~Shared() { ::operator delete[](bytes, std::align_val_t{16}); }
  } shared;
  if (shared_bytes) {
    shared.bytes = static_cast<unsigned char*>(::operator new[](shared_bytes, std::align_val_t{16}));
    launch.shared = shared.bytes;
  }
  active = &launch;
  struct Reset {
    ~Reset() {
      active = nullptr;
      in_kernel = false;
    }
  } reset;
  if (launch_mode == Mode::threads) {
    run_threads(launch);
  } else {
    in_kernel = true;
    run_fibers(launch);
  }
}

BarrierResult block_barrier(int predicate) {
  Lane& lane = me();
  Launch& launch = *active;
  Quiet quiet(launch.mode == Mode::threads);
  auto lock = lock_of(launch);
  void* token = &launch.barrier_token[launch.barriers & 1];
  happens_before_release(launch, token);
  lane.at_barrier = true;
  lane.blocked = true;
  ++launch.blocked;
  ++launch.barrier_arrived;
  if (predicate) ++launch.barrier_count;
  if (launch.barrier_arrived == launch.live) {
    complete_barrier(launch);
  } else {
    if (launch.blocked == launch.live) deadlock(launch, lane);
    wait_released(launch, lane, lock);
  }
  happens_before_acquire(launch, token);
  return launch.barrier_result;
}

unsigned active_mask() {
  Lane& lane = me();
  Launch& launch = *active;
  Quiet quiet(launch.mode == Mode::threads);
  auto lock = lock_of(launch);
  const Warp& warp = launch.warps[lane.id / kWarp];
  return warp.existing & ~warp.exited;
}

std::uint64_t warp_op(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width, int size) {
  Lane& lane = me();
  Launch& launch = *active;
  Quiet quiet(launch.mode == Mode::threads);
  auto lock = lock_of(launch);
  const unsigned index = lane.id % kWarp;
  const unsigned base = lane.id - index;
  Warp& warp = launch.warps[lane.id / kWarp];
  const unsigned bit = 1u << index;
  if (width < 1 || width > static_cast<int>(kWarp) || (width & (width - 1)) != 0)
    fail(launch, lane, std::string(name_of(op)) + " with width " + std::to_string(width) +
                           ", not a power of 2 in 1..32", false);
  if (!(mask & bit))
    fail(launch, lane, std::string(name_of(op)) + " with mask " + hex(mask) + ", which does not name the calling lane",
         true);
  const unsigned group = mask & warp.existing;  // (lanes past the end of the block take no part)
  if (group & warp.exited)
    fail(launch, lane,
         std::string(name_of(op)) + " with mask " + hex(mask) + " naming lanes that exited: " +
             hex(group & warp.exited),
         true);
  lane.op = op;
  lane.mask = mask;
  lane.arg = arg;
  lane.width = width;
  lane.size = size;
  lane.value = value;
  lane.parity = lane.warp_ops++ & 1u;
  happens_before_release(launch, &lane.arrive_token[lane.parity]);
  lane.blocked = true;
  ++launch.blocked;
  warp.waiting |= bit;
  if (group & ~warp.waiting) {  // others of the mask still to come
    if (launch.blocked == launch.live) deadlock(launch, lane);
    wait_released(launch, lane, lock);
    happens_before_acquire(launch, &lane.wake_token[lane.parity]);
    return lane.result;
  }
  // The whole mask is here: check that all wait on the same operation, then give each its result.
  for (unsigned l = 0; l < kWarp; ++l) {
    if (!(group >> l & 1u)) continue;
    const Lane& other = launch.lanes[base + l];
    if (other.op != op || other.mask != mask || other.width != width || other.size != size)
      fail(launch, lane,
           std::string("mismatched warp operations: this lane's ") + name_of(op) + " with mask " + hex(mask) +
               " (width " + std::to_string(width) + ", " + std::to_string(size) + "-byte value), lane " +
               std::to_string(l) + "'s " + name_of(other.op) + " with mask " + hex(other.mask) + " (width " +
               std::to_string(other.width) + ", " + std::to_string(other.size) + "-byte value)",
           true);
  }
  for (unsigned l = 0; l < kWarp; ++l)
    if (group >> l & 1u) happens_before_acquire(launch, &launch.lanes[base + l].arrive_token[launch.lanes[base + l].parity]);
  std::uint64_t ballot = 0;
  if (op == WarpOp::vote) {
    for (unsigned l = 0; l < kWarp; ++l)
      if ((group >> l & 1u) && launch.lanes[base + l].value) ballot |= 1u << l;
    ballot |= static_cast<std::uint64_t>(group) << 32;
  }
  const unsigned segment = static_cast<unsigned>(width) - 1;
  for (unsigned l = 0; l < kWarp; ++l) {
    if (!(group >> l & 1u)) continue;
    Lane& other = launch.lanes[base + l];
    const long long at = l, first = at & ~static_cast<long long>(segment), last = first + segment;
    const long long offset = other.arg;  // (each lane its own srcLane, delta or laneMask)
    long long source = at;
    switch (op) {
      case WarpOp::sync: break;
      case WarpOp::vote: break;
      case WarpOp::shfl_idx: source = first + (offset & segment); break;
      case WarpOp::shfl_up: source = at - offset >= first ? at - offset : at; break;
      case WarpOp::shfl_down: source = at + offset <= last ? at + offset : at; break;
      case WarpOp::shfl_xor: {
        const long long partner = at ^ (offset & (kWarp - 1));
        source = partner <= last ? partner : at;
        break;
      }
    }
    if (op == WarpOp::vote) {
      other.result = ballot;
    } else if (op != WarpOp::sync) {
      // A source outside the mask is undefined on the device; here the lane keeps its own value.
      other.result = (group >> source & 1u) ? launch.lanes[base + source].value : other.value;
    }
    warp.waiting &= ~(1u << l);
    if (&other == &lane) {
      lane.blocked = false;
      --launch.blocked;
    } else {
      happens_before_release(launch, &other.wake_token[other.parity]);
      release(launch, other);
    }
  }
  return lane.result;
}

}  // namespace detail
}  // namespace sparsetopk::cuda::harness
