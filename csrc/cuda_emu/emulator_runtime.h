// The CUDA execution model on CPU threads, for tests: the runtime's interface
// (grids, statistics, errors). No CUDA names: code that only launches or
// reports (the Python hook in ops.cpp) includes this; kernels include
// emulator.h, which adds threadIdx, __syncthreads and the rest.
//
// A grid runs one block at a time; a block's threads are real OS threads from
// a pool kept across launches, so a thread sanitizer sees the kernel's own
// synchronisation and nothing else. A cooperative grid (run_cooperative_grid,
// CUDA's cudaLaunchCooperativeKernel) runs every block at once instead, each
// with its own barrier, warps and dynamic shared memory, so its threads can
// meet at the grid barrier (grid_sync). Static __shared__ variables are one
// instance per kernel here, shared by concurrent blocks: a cooperative
// kernel must use dynamic shared memory only. Blocks run in the order
// SEQCLS_CUDA_EMU_BLOCK_ORDER names: "forward" (default), "reverse", or
// "shuffled[:seed]" (a fixed permutation per seed); a kernel whose result
// depends on the order is wrong on a GPU, where blocks run in any order.
//
// What is checked, each a KernelError naming the source lines:
//   - a __syncthreads reached from different lines, or while threads of the
//     block have returned;
//   - a warp shuffle with a partial mask, a width other than 32, in a partial
//     warp, from different lines, or with lanes that returned;
//   - a deadlock (no thread running, none able to go on): where each waits,
//     in every block of a cooperative grid;
//   - a grid_sync in a grid not launched cooperatively, or reached from
//     different lines, or while threads of the grid have returned;
//   - a kernel that runs past SEQCLS_CUDA_EMU_WATCHDOG_S seconds (default
//     600) is reported the same way and the process aborts (a spinning
//     thread cannot be unwound);
//   - 2-D or 3-D grids and blocks, more than 1024 threads: not emulated.
// Dynamic shared memory is filled with 0xFF bytes (a NaN in every float
// type) before each block; static __shared__ variables keep the previous
// block's values, which a block-order change then exposes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>

namespace seqcls_emu {

// CUDA's dim3; only x may exceed 1 here.
struct Dim3 {
  unsigned x, y, z;
  constexpr Dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

class KernelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Stats {
  int64_t launches;              // grids run
  int64_t blocks;                // blocks run
  int64_t max_threads;           // largest block
  int64_t cooperative_launches;  // of the launches, cooperative grids
};

// Counts since the library loaded.
Stats stats();

// Whether lengths and plans count as living on the emulated device, as GPU
// lengths do (SEQCLS_CUDA_EMU_DEVICE_LENGTHS=1, read per call): the emulated
// operators then plan on the "device" and count a host copy wherever a GPU
// would make one. Every emulated tensor is a CPU tensor, so the device alone
// cannot tell; default: host lengths.
bool device_resident_lengths();

// Runs `thread_body` once on every thread of every block of `grid`, blocks
// one after another; returns when the grid is done. Launches are serialised.
// Throws KernelError when a check fails (the grid is abandoned).
void run_grid(Dim3 grid, Dim3 block, size_t dynamic_shared_bytes,
              const std::function<void()>& thread_body);

// The same with every block running at once (at most 4096 threads in all),
// blocks started in SEQCLS_CUDA_EMU_BLOCK_ORDER's order.
void run_cooperative_grid(Dim3 grid, Dim3 block, size_t dynamic_shared_bytes,
                          const std::function<void()>& thread_body);

}  // namespace seqcls_emu
