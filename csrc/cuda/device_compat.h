// The host side of the device seam: everything the CUDA backend's host code
// needs from the device it runs on (the current stream, a device guard, the
// device check, a checked launch, the dispatcher names it registers under),
// for a real GPU (nvcc) and for the test-only CPU emulator
// (SEQCLS_CUDA_EMULATED: kernels run on CPU threads over CPU tensors; the
// operators register as seqcls_fast_cuda_emu::* for the CPU dispatch key).
// The host code compiles under both with no other difference.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <utility>

#include "kernel_compat.cuh"

#ifdef SEQCLS_CUDA_EMULATED
#define SEQCLS_CUDA_OPS seqcls_fast_cuda_emu
#define SEQCLS_CUDA_KEY CPU
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define SEQCLS_CUDA_OPS seqcls_fast
#define SEQCLS_CUDA_KEY CUDA
#endif

namespace seqcls_fast::SEQCLS_CUDA_NS {

#ifdef SEQCLS_CUDA_EMULATED

using Stream = int;  // the emulator runs each launch to completion
inline Stream current_stream() { return 0; }
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
// Where this backend's tensors live, and how an error message names it.
inline bool on_kernel_device(const c10::Device& device) { return device.is_cpu(); }
constexpr const char* kKernelDevice = "the CPU (the emulated CUDA backend)";

// kernel<<<grid, block, 0, stream>>>(args...), then the launch check.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Stream /*stream*/, Args&&... args) {
  try {
    seqcls_emu::launch(kernel, grid, block, 0, std::forward<Args>(args)...);
  } catch (const seqcls_emu::KernelError& error) {
    TORCH_CHECK(false, "seqcls_fast: emulated CUDA kernel failed: ", error.what());
  }
}

#else

using Stream = cudaStream_t;
inline Stream current_stream() { return c10::cuda::getCurrentCUDAStream(); }
using DeviceGuard = c10::cuda::CUDAGuard;
inline bool on_kernel_device(const c10::Device& device) { return device.is_cuda(); }
constexpr const char* kKernelDevice = "a CUDA device";

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Stream stream, Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#endif

}  // namespace seqcls_fast::SEQCLS_CUDA_NS
