// The host side of the device seam: everything the CUDA backend's host code
// needs from the device it runs on (the current stream, a device guard, the
// device check, a checked launch and a checked cooperative launch, the
// dispatcher names it registers under),
// for a real GPU (nvcc) and for the test-only CPU emulator
// (SEQCLS_CUDA_EMULATED: kernels run on CPU threads over CPU tensors; the
// operators register as seqcls_fast_cuda_emu::* for the CPU dispatch key).
// The host code compiles under both with no other difference.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernel_compat.cuh"

#ifdef SEQCLS_CUDA_EMULATED
#define SEQCLS_CUDA_OPS seqcls_fast_cuda_emu
#define SEQCLS_CUDA_KEY CPU
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define SEQCLS_CUDA_OPS seqcls_fast
#define SEQCLS_CUDA_KEY CUDA
#endif

namespace seqcls_fast::SEQCLS_CUDA_NS {

// What a cooperative launch may use on the device (cooperative_limits()):
// blocks resident at once with one per multiprocessor (0: the device takes no
// cooperative launch), and dynamic shared memory per block.
struct CooperativeLimits {
  int64_t blocks;
  size_t shared_bytes;
};

#ifdef SEQCLS_CUDA_EMULATED

using Stream = int;  // the emulator runs each launch to completion
inline Stream current_stream() { return 0; }
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
// Where this backend's tensors live, and how an error message names it.
inline bool on_kernel_device(const c10::Device& device) { return device.is_cpu(); }
// Whether lengths on `where` live on the device (not readable by the host
// without a copy): the emulator's model (SEQCLS_CUDA_EMU_DEVICE_LENGTHS).
inline bool resident_on_device(const c10::Device& /*where*/) {
  return seqcls_emu::device_resident_lengths();
}
constexpr const char* kKernelDevice = "the CPU (the emulated CUDA backend)";
// A scratch tensor's options on the kernels' device.
inline c10::TensorOptions kernel_tensor_options(c10::ScalarType dtype) {
  return c10::TensorOptions().dtype(dtype);
}

// kernel<<<grid, block, 0, stream>>>(args...), then the launch check.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Stream /*stream*/, Args&&... args) {
  try {
    seqcls_emu::launch(kernel, grid, block, 0, std::forward<Args>(args)...);
  } catch (const seqcls_emu::KernelError& error) {
    TORCH_CHECK(false, "seqcls_fast: emulated CUDA kernel failed: ", error.what());
  }
}

// A cooperative launch (every block resident at once, so kernels may
// grid_sync), with dynamic shared memory, then the launch check.
template <typename... Params, typename... Args>
void launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                        Stream /*stream*/, Args&&... args) {
  try {
    seqcls_emu::launch_cooperative(kernel, grid, block, shared_bytes, std::forward<Args>(args)...);
  } catch (const seqcls_emu::KernelError& error) {
    TORCH_CHECK(false, "seqcls_fast: emulated CUDA kernel failed: ", error.what());
  }
}

// The emulator models a small GPU: 4 multiprocessors (its cooperative grids
// then run 4 x threads OS threads) and a GPU's default 48 KiB per block;
// SEQCLS_CUDA_EMU_SMS and SEQCLS_CUDA_EMU_SHARED_KIB model another (read per
// call, so tests can switch).
inline int64_t emulated_device_value(const char* name, int64_t fallback) {
  const char* text = std::getenv(name);
  const int64_t value = text != nullptr ? std::atoll(text) : 0;
  return value > 0 ? value : fallback;
}
inline CooperativeLimits cooperative_limits() {
  return {emulated_device_value("SEQCLS_CUDA_EMU_SMS", 4),
          static_cast<size_t>(emulated_device_value("SEQCLS_CUDA_EMU_SHARED_KIB", 48)) * 1024};
}

// Whether `kernel` fits one block per multiprocessor with these resources
// (a GPU's occupancy query; the emulator has no limit but shared_bytes).
template <typename... Params>
bool fits_one_block_per_sm(void (*)(Params...), int /*threads*/, size_t /*shared_bytes*/) {
  return true;
}

#else

using Stream = cudaStream_t;
inline Stream current_stream() { return c10::cuda::getCurrentCUDAStream(); }
using DeviceGuard = c10::cuda::CUDAGuard;
inline bool on_kernel_device(const c10::Device& device) { return device.is_cuda(); }
inline bool resident_on_device(const c10::Device& where) { return where.is_cuda(); }
constexpr const char* kKernelDevice = "a CUDA device";
inline c10::TensorOptions kernel_tensor_options(c10::ScalarType dtype) {
  return c10::TensorOptions().dtype(dtype).device(c10::Device(c10::kCUDA,
                                                              c10::cuda::current_device()));
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Stream stream, Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The current device's limits, read once per device; shared memory per
// block up to its opt-in maximum (227 KiB on Hopper), which
// allow_dynamic_shared grants a kernel.
inline CooperativeLimits read_cooperative_limits(int device) {
  int cooperative = 0, sms = 0, shared_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return {cooperative ? static_cast<int64_t>(sms) : 0, static_cast<size_t>(shared_optin)};
}

inline CooperativeLimits cooperative_limits() {
  constexpr int kDevices = 64;
  static std::once_flag once[kDevices];
  static CooperativeLimits limits[kDevices];
  const int device = c10::cuda::current_device();
  TORCH_CHECK(device >= 0 && device < kDevices, "seqcls_fast: CUDA device index ", device,
              " beyond the ", kDevices, " this backend keeps limits for");
  std::call_once(once[device], [&] { limits[device] = read_cooperative_limits(device); });
  return limits[device];
}

// Lets `kernel` launch with `shared_bytes` of dynamic shared memory (above
// the default 48 KiB a kernel must opt in).
template <typename... Params>
void allow_dynamic_shared(void (*kernel)(Params...), size_t shared_bytes) {
  if (shared_bytes <= 48 * 1024) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(shared_bytes)));
}

// Asked once per (device, kernel, threads, bytes) and kept: the rule asks on
// every operator call (the plan's access and the weights' packing).
template <typename... Params>
bool fits_one_block_per_sm(void (*kernel)(Params...), int threads, size_t shared_bytes) {
  // Kernels of one signature share this instantiation: the kernel is in the key.
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int, size_t>, bool> known;
  const auto key = std::make_tuple(c10::cuda::current_device(),
                                   reinterpret_cast<const void*>(kernel), threads, shared_bytes);
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = known.find(key);
    if (it != known.end()) return it->second;
  }
  allow_dynamic_shared(kernel, shared_bytes);
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, reinterpret_cast<const void*>(kernel), threads, shared_bytes));
  std::lock_guard<std::mutex> lock(mutex);
  return known.emplace(key, per_sm >= 1).first->second;
}

template <typename... Params, typename... Args>
void launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                        Stream stream, Args&&... args) {
  allow_dynamic_shared(kernel, shared_bytes);
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  std::apply(
      [&](auto&... param) {
        void* pointers[] = {static_cast<void*>(&param)...};
        C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid,
                                                   block, pointers, shared_bytes, stream));
      },
      params);
}

#endif

}  // namespace seqcls_fast::SEQCLS_CUDA_NS
