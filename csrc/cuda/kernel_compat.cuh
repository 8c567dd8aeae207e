// The kernels' side of the device seam: under nvcc the CUDA names are the
// compiler's; with SEQCLS_CUDA_EMULATED (the test-only CPU emulator,
// csrc/cuda_emu/) they come from emulator.h and the kernels compile with a
// host compiler, unchanged. SEQCLS_CUDA_NS names the namespace the backend
// lives in, so the real and the emulated backend can share one library.
// Host code includes device_compat.h, which adds launch, stream and guard.
// grid_sync is the grid barrier of a cooperative launch.
#pragma once

#ifdef SEQCLS_CUDA_EMULATED
#include "../cuda_emu/emulator.h"
#define SEQCLS_CUDA_NS cuda_emu
#else
#include <cooperative_groups.h>
#define SEQCLS_CUDA_NS cuda
#endif

namespace seqcls_fast::SEQCLS_CUDA_NS {

// Every thread of a cooperatively launched grid (device_compat.h's
// launch_cooperative) waits here for all the others; the memory writes
// before it are visible to every thread after it.
#ifdef SEQCLS_CUDA_EMULATED
inline void grid_sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  __emu_grid_sync(file, line);
}
#else
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }
#endif

// The block's dynamic shared memory (the launch's shared_bytes), as T.
#ifdef SEQCLS_CUDA_EMULATED
template <typename T>
inline T* dynamic_shared() {
  return static_cast<T*>(seqcls_emu::dynamic_shared_memory());
}
#else
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char seqcls_dynamic_shared[];
  return reinterpret_cast<T*>(seqcls_dynamic_shared);
}
#endif

}  // namespace seqcls_fast::SEQCLS_CUDA_NS
