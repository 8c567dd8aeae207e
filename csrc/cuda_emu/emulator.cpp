// The CPU emulator's runtime (emulator_runtime.h): the worker pool that runs
// one block at a time (or, cooperative, every block of the grid at once), the
// checked block and grid barriers and warp exchange, the deadlock check and
// the watchdog. Every wait is a mutex + condition
// variable, so a thread sanitizer sees exactly the barriers the kernel
// executes; the bookkeeping the checks read is relaxed atomics, which order
// nothing.
#include "emulator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

thread_local seqcls_emu::Dim3 threadIdx;
thread_local seqcls_emu::Dim3 blockIdx;
thread_local seqcls_emu::Dim3 blockDim;
thread_local seqcls_emu::Dim3 gridDim;

namespace seqcls_emu {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
// Threads of a cooperative grid, all running at once (OS threads).
constexpr int kMaxCooperativeThreads = 4096;
constexpr auto kPoll = std::chrono::milliseconds(100);
constexpr std::memory_order kRelaxed = std::memory_order_relaxed;

// Thrown on a kernel thread to unwind it once its block has failed.
struct AbandonBlock {};

// A barrier among `size` threads that checks they all arrive from one line.
// The last to arrive wakes each waiter on the waiter's own condition
// variable (ThreadPlace): one shared one had all of them queue on its mutex.
struct ThreadPlace;

struct CheckedBarrier {
  std::mutex m;
  std::vector<ThreadPlace*> waiting;    // threads of this round asleep
  int size = 0, arrived = 0, returned = 0;
  std::atomic<uint64_t> generation{0};  // completed rounds; stored under m, with release
  const char* file = nullptr;           // where this round's first thread arrived
  int line = 0;

  void reset(int n) {
    size = n;
    arrived = returned = 0;
    waiting.clear();
    generation.store(0, kRelaxed);
    file = nullptr;
    line = 0;
  }
};

struct Warp {
  CheckedBarrier barrier;
  // Alternating slot sets: a lane writes set g % 2 at exchange g, which every
  // lane finished reading before exchange g - 1 could complete.
  alignas(8) unsigned char slots[2][kWarp][8];
};

enum Where : int { kRunning, kAtBarrier, kAtShuffle, kReturned };

// Where a thread is, for the deadlock check and its report; and where it
// sleeps at a barrier.
struct ThreadPlace {
  std::mutex m;
  std::condition_variable cv;
  std::atomic<int> where{kRunning};
  std::atomic<const char*> file{nullptr};
  std::atomic<int> line{0};
  std::atomic<const CheckedBarrier*> barrier{nullptr};
  std::atomic<uint64_t> generation{0};  // the round it waits to complete
};

// A launch's failure: the first error, and a flag every waiting thread polls.
struct Failure {
  std::atomic<bool> failed{false};
  std::mutex m;
  std::string error;
};

struct Launch;

struct Block {
  int threads = 0;
  unsigned index = 0;  // blockIdx.x
  CheckedBarrier barrier;
  std::unique_ptr<Warp[]> warps = std::make_unique<Warp[]>(kMaxThreads / kWarp);
  std::unique_ptr<ThreadPlace[]> places = std::make_unique<ThreadPlace[]>(kMaxThreads);
  std::vector<unsigned char> dynamic_shared;
  Failure own_failure;
  Failure* failure = &own_failure;  // a cooperative grid's blocks share the launch's
  Launch* launch = nullptr;         // the cooperative grid this block belongs to, or none
};

// A cooperative grid: its blocks (all running at once), the grid barrier
// among all their threads, and their shared failure.
struct Launch {
  std::vector<std::unique_ptr<Block>> blocks;
  CheckedBarrier grid_barrier;
  Failure failure;
};

Block g_block;  // the block running now outside cooperative grids: they never overlap
thread_local Block* t_block = &g_block;  // the block of the calling kernel thread

std::atomic<int64_t> g_launches{0}, g_blocks{0}, g_max_threads{0}, g_cooperative{0};

std::string location(const char* file, int line) {
  const char* slash = std::strrchr(file, '/');
  return std::string(slash != nullptr ? slash + 1 : file) + ":" + std::to_string(line);
}

void record_error(Block& b, const std::string& message) {
  Failure& f = *b.failure;
  {
    const std::lock_guard<std::mutex> lock(f.m);
    if (f.error.empty()) f.error = message;
  }
  f.failed.store(true);
}

bool failed(const Block& b) { return b.failure->failed.load(kRelaxed); }

[[noreturn]] void fail(Block& b, const std::string& message) {
  record_error(b, message);
  throw AbandonBlock{};
}

int this_thread() { return static_cast<int>(threadIdx.x); }

// "threads 0-31: __syncthreads at f.cu:12; threads 32-255: returned".
std::string describe_threads(const Block& b) {
  const auto place_of = [&](int t) {
    const ThreadPlace& p = b.places[t];
    switch (p.where.load(kRelaxed)) {
      case kRunning: return std::string("running");
      case kReturned: return std::string("returned");
      case kAtBarrier: return "__syncthreads at " + location(p.file.load(kRelaxed), p.line.load(kRelaxed));
      default: return "a warp shuffle at " + location(p.file.load(kRelaxed), p.line.load(kRelaxed));
    }
  };
  std::string out;
  for (int first = 0; first < b.threads;) {
    const std::string here = place_of(first);
    int last = first;
    while (last + 1 < b.threads && place_of(last + 1) == here) ++last;
    if (!out.empty()) out += "; ";
    out += "threads " + std::to_string(first) +
           (last > first ? "-" + std::to_string(last) : std::string()) + ": " + here;
    first = last + 1;
  }
  return out;
}

// True when no thread of the block can move: each returned, or waits for a
// round that has not completed.
bool block_is_stuck(const Block& b) {
  for (int t = 0; t < b.threads; ++t) {
    const ThreadPlace& p = b.places[t];
    const int where = p.where.load(kRelaxed);
    if (where == kRunning) return false;
    if (where == kReturned) continue;
    const CheckedBarrier* waits_on = p.barrier.load(kRelaxed);
    if (waits_on->generation.load(kRelaxed) != p.generation.load(kRelaxed)) return false;
  }
  return true;
}

// The same for every block that may wake b's threads: its cooperative grid's.
bool is_stuck(const Block& b) {
  if (b.launch == nullptr) return block_is_stuck(b);
  for (const auto& other : b.launch->blocks) {
    if (!block_is_stuck(*other)) return false;
  }
  return true;
}

// describe_threads of b, or of every block of its cooperative grid.
std::string describe_grid(const Block& b) {
  if (b.launch == nullptr) return describe_threads(b);
  std::string out;
  for (const auto& other : b.launch->blocks) {
    out += (out.empty() ? "block " : " | block ") + std::to_string(other->index) + ": " +
           describe_threads(*other);
  }
  return out;
}

// One thread's arrival at `bar` from file:line; `before` runs under the
// barrier's lock with the round's number (the warp exchange writes its slot
// there). Returns that number once every thread of the group has arrived.
template <typename Before>
uint64_t arrive(Block& b, CheckedBarrier& bar, Where where, const char* what, const char* file,
                int line, const Before& before) {
  if (failed(b)) throw AbandonBlock{};
  const int t = this_thread();
  std::unique_lock<std::mutex> lock(bar.m);
  if (bar.returned > 0) {
    fail(b, std::string(what) + " at " + location(file, line) + " reached by thread " +
                std::to_string(t) + " after " + std::to_string(bar.returned) +
                " threads of its group returned (" + describe_threads(b) + ")");
  }
  if (bar.arrived == 0) {
    bar.file = file;
    bar.line = line;
  } else if (bar.line != line || std::strcmp(bar.file, file) != 0) {
    fail(b, std::string("divergent ") + what + ": thread " + std::to_string(t) + " at " +
                location(file, line) + ", other threads at " + location(bar.file, bar.line));
  }
  const uint64_t round = bar.generation.load(kRelaxed);
  before(round);
  if (++bar.arrived == bar.size) {
    bar.arrived = 0;
    // Release: a waiter that sees the new round without sleeping still sees
    // every write made before any thread arrived (the arrivals' lock of m).
    bar.generation.store(round + 1, std::memory_order_release);
    std::vector<ThreadPlace*> sleeping;
    sleeping.swap(bar.waiting);
    lock.unlock();
    for (ThreadPlace* waiter : sleeping) {
      const std::lock_guard<std::mutex> wake(waiter->m);
      waiter->cv.notify_one();
    }
    return round;
  }
  ThreadPlace& place = b.places[t];
  bar.waiting.push_back(&place);
  place.file.store(file, kRelaxed);
  place.line.store(line, kRelaxed);
  place.barrier.store(&bar, kRelaxed);
  place.generation.store(round, kRelaxed);
  place.where.store(where, kRelaxed);
  lock.unlock();
  std::unique_lock<std::mutex> sleep(place.m);
  int stuck_polls = 0;
  while (bar.generation.load(std::memory_order_acquire) == round) {
    place.cv.wait_for(sleep, kPoll);
    if (bar.generation.load(std::memory_order_acquire) != round) break;
    if (failed(b)) throw AbandonBlock{};
    // Twice in a row, so a thread just released but not yet scheduled is not
    // taken for a stuck one.
    stuck_polls = is_stuck(b) ? stuck_polls + 1 : 0;
    if (stuck_polls >= 2) fail(b, "deadlock: " + describe_grid(b));
  }
  place.where.store(kRunning, kRelaxed);
  return round;
}

void thread_returned(Block& b, int t) {
  const auto leave = [&](CheckedBarrier& bar, const char* what) {
    const std::lock_guard<std::mutex> lock(bar.m);
    ++bar.returned;
    if (bar.arrived > 0) {
      record_error(b, "thread " + std::to_string(t) + " returned while " +
                          std::to_string(bar.arrived) + " threads wait at " + what + " at " +
                          location(bar.file, bar.line));
    }
  };
  leave(b.barrier, "__syncthreads");
  leave(b.warps[t / kWarp].barrier, "a warp shuffle");
  if (b.launch != nullptr) leave(b.launch->grid_barrier, "grid_sync");
  b.places[t].where.store(kReturned, kRelaxed);
}

void run_thread(Block& b, int t, const std::function<void()>& body) {
  try {
    body();
  } catch (const AbandonBlock&) {
  } catch (const std::exception& e) {
    record_error(b, "thread " + std::to_string(t) + " threw: " + e.what());
  } catch (...) {
    record_error(b, "thread " + std::to_string(t) + " threw");
  }
  thread_returned(b, t);
}

double watchdog_seconds() {
  const char* text = std::getenv("SEQCLS_CUDA_EMU_WATCHDOG_S");
  const double seconds = text != nullptr ? std::atof(text) : 0.0;
  return seconds > 0 ? seconds : 600.0;
}

// OS threads kept across launches; worker w runs CUDA thread w % threads of
// block w / threads of the blocks run together (one, or a cooperative grid's
// all). Each worker sleeps on its own condition variable, so a launch wakes
// exactly its threads (one shared one woke every worker, and they queued on
// its mutex: 5.7 ms for an empty 256-thread block, against about 1 ms here).
class Pool {
 public:
  void run_blocks(const std::vector<Block*>& blocks, int threads,
                  const std::function<void()>& body, Dim3 grid, Dim3 block) {
    const int total = static_cast<int>(blocks.size()) * threads;
    while (static_cast<int>(workers_.size()) < total) {
      workers_.push_back(std::make_unique<Worker>());
      std::thread(&Pool::work, this, static_cast<int>(workers_.size()) - 1,
                  workers_.back().get())
          .detach();
    }
    // Read by the workers after they take their own mutex below.
    body_ = &body;
    blocks_ = &blocks;
    threads_ = threads;
    grid_ = grid;
    block_ = block;
    remaining_.store(total);
    for (int id = 0; id < total; ++id) {
      Worker& w = *workers_[id];
      const std::lock_guard<std::mutex> lock(w.m);
      w.go = true;
      w.cv.notify_one();
    }
    std::unique_lock<std::mutex> lock(done_m_);
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration<double>(watchdog_seconds());
    while (remaining_.load() > 0) {
      if (done_.wait_until(lock, deadline) == std::cv_status::timeout && remaining_.load() > 0) {
        std::fprintf(stderr,
                     "seqcls_fast CUDA emulator: block %u still running after "
                     "SEQCLS_CUDA_EMU_WATCHDOG_S = %g s: %s; aborting\n",
                     blocks[0]->index, watchdog_seconds(), describe_grid(*blocks[0]).c_str());
        std::abort();
      }
    }
  }

 private:
  struct Worker {
    std::mutex m;
    std::condition_variable cv;
    bool go = false;
  };

  void work(int id, Worker* worker) {
    Worker& w = *worker;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(w.m);
        w.cv.wait(lock, [&] { return w.go; });
        w.go = false;
      }
      Block& b = *(*blocks_)[id / threads_];
      const int t = id % threads_;
      t_block = &b;
      threadIdx = Dim3(static_cast<unsigned>(t));
      blockIdx = Dim3(b.index);
      blockDim = block_;
      gridDim = grid_;
      run_thread(b, t, *body_);
      // The last thread out tells the host; the counter's acquire-release
      // chain orders every thread's writes before the host's next read.
      if (remaining_.fetch_sub(1) == 1) {
        const std::lock_guard<std::mutex> lock(done_m_);
        done_.notify_all();
      }
    }
  }

  std::vector<std::unique_ptr<Worker>> workers_;  // grown by the host only, between launches
  std::mutex done_m_;
  std::condition_variable done_;
  std::atomic<int> remaining_{0};
  const std::function<void()>* body_ = nullptr;
  const std::vector<Block*>* blocks_ = nullptr;
  int threads_ = 1;
  Dim3 grid_, block_;
};

Pool& pool() {
  static Pool* const pool = new Pool;  // never destroyed: its threads are detached
  return *pool;
}

// The order blocks run in: SEQCLS_CUDA_EMU_BLOCK_ORDER (see emulator_runtime.h).
std::vector<unsigned> block_order(unsigned blocks) {
  std::vector<unsigned> order(blocks);
  std::iota(order.begin(), order.end(), 0u);
  const char* text = std::getenv("SEQCLS_CUDA_EMU_BLOCK_ORDER");
  const std::string name = text != nullptr ? text : "forward";
  if (name == "forward" || name.empty()) return order;
  if (name == "reverse") {
    std::reverse(order.begin(), order.end());
    return order;
  }
  if (name.rfind("shuffled", 0) == 0) {
    uint64_t seed = 0;
    if (name.size() > 8) {
      if (name[8] != ':' || name.size() == 9 ||
          name.find_first_not_of("0123456789", 9) != std::string::npos) {
        throw KernelError("SEQCLS_CUDA_EMU_BLOCK_ORDER must be forward, reverse, shuffled or "
                          "shuffled:SEED (a decimal seed), got \"" + name + "\"");
      }
      seed = std::stoull(name.substr(9));
    }
    std::mt19937_64 random(seed);
    std::shuffle(order.begin(), order.end(), random);
    return order;
  }
  throw KernelError("SEQCLS_CUDA_EMU_BLOCK_ORDER must be forward, reverse, shuffled or "
                    "shuffled:SEED, got \"" + name + "\"");
}

void reset_block(Block& b, unsigned index, int threads, size_t dynamic_shared_bytes) {
  b.index = index;
  b.threads = threads;
  b.barrier.reset(threads);
  for (int w = 0; w * kWarp < threads; ++w) b.warps[w].barrier.reset(std::min(kWarp, threads - w * kWarp));
  for (int t = 0; t < threads; ++t) b.places[t].where.store(kRunning, kRelaxed);
  b.dynamic_shared.assign(dynamic_shared_bytes, 0xFF);  // NaN in every float type
  b.own_failure.failed.store(false);
  b.own_failure.error.clear();
}

// The checks every launch makes of its shape.
void check_shape(Dim3 grid, Dim3 block) {
  if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1) {
    throw KernelError("only 1-D grids and blocks are emulated");
  }
  if (block.x < 1 || block.x > static_cast<unsigned>(kMaxThreads)) {
    throw KernelError("blockDim.x must be in [1, 1024], got " + std::to_string(block.x));
  }
  if (grid.x < 1) throw KernelError("gridDim.x must be at least 1, got 0");
}

void count_launch(Dim3 grid, int threads) {
  g_launches.fetch_add(1);
  g_blocks.fetch_add(grid.x);
  int64_t most = g_max_threads.load();
  while (threads > most && !g_max_threads.compare_exchange_weak(most, threads)) {
  }
}

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

Stats stats() {
  return {g_launches.load(), g_blocks.load(), g_max_threads.load(), g_cooperative.load()};
}

bool device_resident_lengths() {
  const char* text = std::getenv("SEQCLS_CUDA_EMU_DEVICE_LENGTHS");
  return text != nullptr && std::string(text) == "1";
}

void* dynamic_shared_memory() { return t_block->dynamic_shared.data(); }

void block_barrier(const char* file, int line) {
  arrive(*t_block, t_block->barrier, kAtBarrier, "__syncthreads", file, line, [](uint64_t) {});
}

void grid_barrier(const char* file, int line) {
  Block& b = *t_block;
  if (b.launch == nullptr) {
    fail(b, "grid_sync at " + location(file, line) + " in a kernel not launched cooperatively "
            "(launch_cooperative): its blocks do not run at once");
  }
  arrive(b, b.launch->grid_barrier, kAtBarrier, "grid_sync", file, line, [](uint64_t) {});
}

void warp_exchange(unsigned mask, int width, const void* in, void* out, size_t bytes, int src_lane,
                   const char* what, const char* file, int line) {
  Block& b = *t_block;
  const int t = this_thread();
  Warp& warp = b.warps[t / kWarp];
  const std::string at = std::string(what) + " at " + location(file, line);
  if (mask != 0xffffffffu) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", mask);
    fail(b, at + " with mask " + hex + ": only the full-warp mask 0xffffffff is emulated");
  }
  if (width != kWarp) fail(b, at + " with width " + std::to_string(width) + ": only 32 is emulated");
  if (warp.barrier.size != kWarp) {
    fail(b, at + " in a partial warp of " + std::to_string(warp.barrier.size) +
                " threads (blockDim.x = " + std::to_string(b.threads) + "): not emulated");
  }
  if (src_lane < 0 || src_lane >= kWarp) {
    fail(b, at + ": thread " + std::to_string(t) + " reads lane " + std::to_string(src_lane));
  }
  const int lane = t % kWarp;
  const uint64_t round = arrive(b, warp.barrier, kAtShuffle, what, file, line, [&](uint64_t r) {
    std::memcpy(warp.slots[r % 2][lane], in, bytes);
  });
  std::memcpy(out, warp.slots[round % 2][src_lane], bytes);
}

void run_grid(Dim3 grid, Dim3 block, size_t dynamic_shared_bytes,
              const std::function<void()>& thread_body) {
  const std::lock_guard<std::mutex> serialise(launch_mutex());
  check_shape(grid, block);
  const std::vector<unsigned> order = block_order(grid.x);
  const int threads = static_cast<int>(block.x);
  const std::vector<Block*> one{&g_block};
  for (unsigned index : order) {
    reset_block(g_block, index, threads, dynamic_shared_bytes);
    pool().run_blocks(one, threads, thread_body, grid, block);
    if (failed(g_block)) {
      throw KernelError(g_block.own_failure.error + " (block " + std::to_string(index) + " of " +
                        std::to_string(grid.x) + ", " + std::to_string(threads) + " threads)");
    }
  }
  count_launch(grid, threads);
}

void run_cooperative_grid(Dim3 grid, Dim3 block, size_t dynamic_shared_bytes,
                          const std::function<void()>& thread_body) {
  const std::lock_guard<std::mutex> serialise(launch_mutex());
  check_shape(grid, block);
  const int threads = static_cast<int>(block.x);
  const int64_t total = static_cast<int64_t>(grid.x) * threads;
  if (total > kMaxCooperativeThreads) {
    throw KernelError("a cooperative grid of " + std::to_string(grid.x) + " x " +
                      std::to_string(threads) + " threads: the emulator runs at most " +
                      std::to_string(kMaxCooperativeThreads) + " at once");
  }
  Launch launch;
  launch.grid_barrier.reset(static_cast<int>(total));
  std::vector<Block*> blocks;
  // Blocks start in SEQCLS_CUDA_EMU_BLOCK_ORDER's order: their threads are
  // woken in it, so an order-dependent kernel still shows it.
  for (unsigned index : block_order(grid.x)) {
    launch.blocks.push_back(std::make_unique<Block>());
    Block& b = *launch.blocks.back();
    reset_block(b, index, threads, dynamic_shared_bytes);
    b.failure = &launch.failure;
    b.launch = &launch;
    blocks.push_back(&b);
  }
  pool().run_blocks(blocks, threads, thread_body, grid, block);
  if (launch.failure.failed.load()) {
    throw KernelError(launch.failure.error + " (cooperative grid of " + std::to_string(grid.x) +
                      " blocks of " + std::to_string(threads) + " threads)");
  }
  count_launch(grid, threads);
  g_cooperative.fetch_add(1);
}

}  // namespace seqcls_emu
