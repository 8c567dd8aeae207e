// The ISA-neutral part of the persistent CPU recurrence: the choice of build
// (CPU features, SEQCLS_FAST_CPU_ISA, SEQCLS_FAST_CPU_RECURRENCE), the
// packing of W_hh for it, and the calls into the AVX-512 or AVX2 build.
#include "recurrence_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace seqcls_fast::cpu {
namespace {

CpuIsa detected_isa() {
#if defined(SEQCLS_WITH_X86_KERNELS)
  static const CpuIsa isa = __builtin_cpu_supports("avx512f") ? CpuIsa::kAvx512
                            : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                                ? CpuIsa::kAvx2
                                : CpuIsa::kBaseline;
  return isa;
#else
  return CpuIsa::kBaseline;
#endif
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

CpuIsa cpu_isa() {
  const CpuIsa detected = detected_isa();
  const char* cap = std::getenv("SEQCLS_FAST_CPU_ISA");
  if (cap == nullptr || *cap == '\0') return detected;
  for (CpuIsa isa : {CpuIsa::kAvx512, CpuIsa::kAvx2, CpuIsa::kBaseline}) {
    if (std::strcmp(cap, cpu_isa_name(isa)) == 0) return std::min(isa, detected);
  }
  TORCH_CHECK_VALUE(false, "SEQCLS_FAST_CPU_ISA must be avx512, avx2 or baseline (the most the "
                           "CPU kernels may use), got '", cap, "'");
}

CpuIsa recurrence_isa(bool float32) {
#if AT_PARALLEL_OPENMP
  const char* choice = std::getenv("SEQCLS_FAST_CPU_RECURRENCE");
  if (!float32 || (choice != nullptr && std::strcmp(choice, "steps") == 0)) return CpuIsa::kBaseline;
  return cpu_isa();
#else
  (void)float32;
  return CpuIsa::kBaseline;
#endif
}

int64_t recurrence_lanes(CpuIsa isa) {
  return isa == CpuIsa::kAvx512 ? persistent_avx512::kLanes : persistent_avx2::kLanes;
}

void pack_w_hh(const float* w_hh, int64_t H, int64_t gates, int64_t lanes, float* packed) {
  // packed[b][k][g][l] = W_hh[g H + lanes b + l][k], 0 past H.
  at::parallel_for(0, unit_blocks(H, lanes), 1, [&](int64_t first, int64_t end) {
    for (int64_t b = first; b < end; ++b) {
      float* block = packed + b * H * gates * lanes;
      for (int64_t g = 0; g < gates; ++g) {
        for (int64_t l = 0; l < lanes; ++l) {
          const int64_t unit = b * lanes + l;
          const float* w_row = unit < H ? w_hh + (g * H + unit) * H : nullptr;
          for (int64_t k = 0; k < H; ++k) block[(k * gates + g) * lanes + l] = w_row ? w_row[k] : 0.0f;
        }
      }
    }
  });
}

void pack_w_hh_backward(const float* w_hh, int64_t H, int64_t gates, int64_t lanes,
                        float* packed) {
  // packed[b][n][l] = W_hh[n][lanes b + l], 0 past H.
  at::parallel_for(0, unit_blocks(H, lanes), 1, [&](int64_t first, int64_t end) {
    for (int64_t b = first; b < end; ++b) {
      float* block = packed + b * gates * H * lanes;
      const int64_t valid = std::min<int64_t>(lanes, H - b * lanes);
      for (int64_t n = 0; n < gates * H; ++n) {
        const float* w_row = w_hh + n * H + b * lanes;
        float* out = block + n * lanes;
        for (int64_t l = 0; l < lanes; ++l) out[l] = l < valid ? w_row[l] : 0.0f;
      }
    }
  });
}

// (Without an x86 build the arguments are unused: it only raises.)
void persistent_forward(CpuIsa isa, [[maybe_unused]] const ForwardRecurrence& r,
                        [[maybe_unused]] float* h_swap, [[maybe_unused]] int64_t workers) {
#if defined(SEQCLS_WITH_X86_KERNELS)
  if (isa == CpuIsa::kAvx512) return persistent_avx512::persistent_forward(r, h_swap, workers);
  if (isa == CpuIsa::kAvx2) return persistent_avx2::persistent_forward(r, h_swap, workers);
#endif
  TORCH_CHECK(false, "seqcls_fast: no persistent recurrence for ", cpu_isa_name(isa));
}

void persistent_backward(CpuIsa isa, [[maybe_unused]] const BackwardRecurrence& r,
                         [[maybe_unused]] int64_t workers) {
#if defined(SEQCLS_WITH_X86_KERNELS)
  if (isa == CpuIsa::kAvx512) return persistent_avx512::persistent_backward(r, workers);
  if (isa == CpuIsa::kAvx2) return persistent_avx2::persistent_backward(r, workers);
#endif
  TORCH_CHECK(false, "seqcls_fast: no persistent recurrence for ", cpu_isa_name(isa));
}

}  // namespace seqcls_fast::cpu
