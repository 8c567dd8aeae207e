// The persistent forward recurrence on the CPU (LstmBackend::forward_recurrence):
// the entry points of its AVX-512 build, and the spin barrier its workers meet
// at once per step.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#include "../lstm_step.h"

namespace seqcls_fast::cpu {

// A sense-reversing barrier for a fixed total weight: each participant
// arrives with the number of worker slots it runs, and the barrier opens when
// the weights sum to the total. So it is correct however ATen's parallel_for
// groups the slots into threads, provided they run concurrently (OpenMP).
class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t total) : total_(total) {}

  void arrive_and_wait(int64_t weight) {
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(weight, std::memory_order_acq_rel) + weight == total_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    // Spin (a step is microseconds); yield now and then so an oversubscribed
    // machine still makes progress.
    for (int64_t spins = 1; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins % 4096 == 0) std::this_thread::yield();
    }
  }

 private:
  const int64_t total_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<int64_t> generation_{0};
};

namespace avx512 {

// Units per block: one 512-bit vector of float.
constexpr int64_t kUnitsPerBlock = 16;

inline int64_t unit_blocks(int64_t hidden) {
  return (hidden + kUnitsPerBlock - 1) / kUnitsPerBlock;
}

// Floats of W_hh packed for the kernel: per block of 16 units, for each k,
// the four gates' 16 weights ([blocks, H, 4, 16], units past H zero).
inline int64_t packed_w_hh_floats(int64_t hidden) {
  return unit_blocks(hidden) * hidden * 4 * kUnitsPerBlock;
}

// Fills `packed` (packed_w_hh_floats(H)) from W_hh [4H, H] contiguous.
void pack_w_hh(const float* w_hh, int64_t H, float* packed);

// Runs r (r.w_hh_packed from pack_w_hh) on `workers` worker slots
// (1 <= workers <= unit_blocks(H)), each owning a contiguous range of unit
// blocks. `h_swap` [B, H] is the second buffer of h_s. float32 only; the
// caller checks the CPU has AVX-512F.
void lstm_forward_recurrence(const LstmForwardRecurrence& r, float* h_swap, int64_t workers);

}  // namespace avx512
}  // namespace seqcls_fast::cpu
