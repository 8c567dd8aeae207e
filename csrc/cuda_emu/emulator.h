// The CUDA names a kernel uses, on the CPU emulator (emulator_runtime.h):
// the qualifiers, threadIdx/blockIdx/blockDim/gridDim, __syncthreads, the
// grid barrier of a cooperative launch, the warp shuffles the kernels in
// csrc/cuda/ call, dynamic shared memory, and `launch` / `launch_cooperative`. Only what those kernels use: anything else fails to compile, or
// (a partial-mask shuffle, say) throws at run time. Included through
// csrc/cuda/kernel_compat.cuh when SEQCLS_CUDA_EMULATED is defined.
#pragma once

#include <cstddef>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emulator_runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One instance per kernel instantiation, shared by the block's threads; blocks
// never overlap, so it serves each block in turn.
#define __shared__ static

using dim3 = seqcls_emu::Dim3;

extern thread_local seqcls_emu::Dim3 threadIdx;
extern thread_local seqcls_emu::Dim3 blockIdx;
extern thread_local seqcls_emu::Dim3 blockDim;
extern thread_local seqcls_emu::Dim3 gridDim;

namespace seqcls_emu {

// The block barrier, the grid barrier (cooperative grids only) and the warp
// exchange behind the CUDA names below.
void block_barrier(const char* file, int line);
void grid_barrier(const char* file, int line);
// Lane l receives `in` of lane src_lane(l) (every lane passes its own choice).
void warp_exchange(unsigned mask, int width, const void* in, void* out, size_t bytes, int src_lane,
                   const char* what, const char* file, int line);
// This block's dynamic shared memory (run_grid's dynamic_shared_bytes).
void* dynamic_shared_memory();

template <typename T>
T shuffle(unsigned mask, T value, int src_lane, int width, const char* what, const char* file,
          int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a 1-8 byte value");
  T out;
  warp_exchange(mask, width, &value, &out, sizeof(T), src_lane, what, file, line);
  return out;
}

inline int lane_id() { return static_cast<int>(threadIdx.x % 32); }

// kernel<<<grid, block, dynamic_shared_bytes>>>(args...): the arguments are
// copied once, as CUDA copies them to the device, and every thread reads
// that copy.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), Dim3 grid, Dim3 block, size_t dynamic_shared_bytes,
            Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  run_grid(grid, block, dynamic_shared_bytes, [&] { std::apply(kernel, params); });
}

// cudaLaunchCooperativeKernel: the same, every block running at once.
template <typename... Params, typename... Args>
void launch_cooperative(void (*kernel)(Params...), Dim3 grid, Dim3 block,
                        size_t dynamic_shared_bytes, Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  run_cooperative_grid(grid, block, dynamic_shared_bytes, [&] { std::apply(kernel, params); });
}

}  // namespace seqcls_emu

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  seqcls_emu::block_barrier(file, line);
}

// cooperative_groups::this_grid().sync() (kernel_compat.cuh's grid_sync).
inline void __emu_grid_sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  seqcls_emu::grid_barrier(file, line);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return seqcls_emu::shuffle(mask, value, seqcls_emu::lane_id() ^ lane_mask, width,
                             "__shfl_xor_sync", file, line);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32,
                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  const int lane = seqcls_emu::lane_id(), src = lane + static_cast<int>(delta);
  return seqcls_emu::shuffle(mask, value, src < width ? src : lane, width, "__shfl_down_sync",
                             file, line);
}
