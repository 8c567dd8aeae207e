// The persistent recurrence on the CPU (RecurrentBackend::forward_recurrence and
// backward_recurrence): which build runs (the CPU's features, capped by
// SEQCLS_FAST_CPU_ISA), the layouts of its packed W_hh, and the entry points
// of its AVX-512 and AVX2 builds (recurrence_cpu_tile.h, written once).
#pragma once

#include <cstdint>

#include "../recurrent_step.h"

namespace seqcls_fast::cpu {

// The instruction sets this library has kernels for, in order.
enum class CpuIsa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The best the CPU supports, capped by SEQCLS_FAST_CPU_ISA (avx512, avx2 or
// baseline; read on every call, so tests can switch it). A value that is not
// one of those raises, naming the variable.
CpuIsa cpu_isa();
const char* cpu_isa_name(CpuIsa isa);

// Which recurrence a call with this dtype runs: the persistent one of
// cpu_isa()'s build (float32, AVX2 or AVX-512, ATen's OpenMP backend: its
// parallel_for runs the worker slots concurrently, which the per-step barrier
// needs), or kBaseline for a GEMM per step (other dtypes and CPUs, or
// SEQCLS_FAST_CPU_RECURRENCE=steps).
CpuIsa recurrence_isa(bool float32);

// Units per block of the build: one vector of float.
int64_t recurrence_lanes(CpuIsa isa);

inline int64_t unit_blocks(int64_t hidden, int64_t lanes) { return (hidden + lanes - 1) / lanes; }

// The layouts below are for W_hh [gates * H, H] contiguous, `gates` gate rows
// per unit (the cell's: 4 for the LSTM, 3 for the GRU).
//
// Floats of W_hh packed for the forward: per block of `lanes` units, for each
// k, the gates' weights ([blocks, H, gates, lanes], units past H zero).
inline int64_t packed_w_hh_floats(int64_t hidden, int64_t gates, int64_t lanes) {
  return unit_blocks(hidden, lanes) * hidden * gates * lanes;
}
// Fills `packed` (packed_w_hh_floats(H, gates, lanes)) from W_hh.
void pack_w_hh(const float* w_hh, int64_t H, int64_t gates, int64_t lanes, float* packed);

// Floats of W_hh packed for the backward: per block of `lanes` units (columns
// of W_hh), for each of the gates * H rows, the block's weights ([blocks,
// gates * H, lanes], units past H zero).
inline int64_t packed_w_hh_backward_floats(int64_t hidden, int64_t gates, int64_t lanes) {
  return unit_blocks(hidden, lanes) * gates * hidden * lanes;
}
// Fills `packed` (packed_w_hh_backward_floats(H, gates, lanes)) from W_hh.
void pack_w_hh_backward(const float* w_hh, int64_t H, int64_t gates, int64_t lanes,
                        float* packed);

// Runs r (its cell's; r.w_hh_packed from pack_w_hh with the build's lanes) on
// `workers` worker slots (1 <= workers <= the build's unit_blocks(H)), each
// owning a contiguous range of unit blocks. `h_swap` [B, H] is the second
// buffer of h_s. isa is kAvx2 or kAvx512 and supported by the CPU (cpu_isa()).
void persistent_forward(CpuIsa isa, const ForwardRecurrence& r, float* h_swap, int64_t workers);
// The backward likewise (r.w_hh_packed from pack_w_hh_backward).
void persistent_backward(CpuIsa isa, const BackwardRecurrence& r, int64_t workers);

// The builds themselves (x86-64 only), and their units per block.
namespace persistent_avx512 {
constexpr int64_t kLanes = 16;  // one zmm register of float
void persistent_forward(const ForwardRecurrence& r, float* h_swap, int64_t workers);
void persistent_backward(const BackwardRecurrence& r, int64_t workers);
}  // namespace persistent_avx512
namespace persistent_avx2 {
constexpr int64_t kLanes = 8;  // one ymm register of float
void persistent_forward(const ForwardRecurrence& r, float* h_swap, int64_t workers);
void persistent_backward(const BackwardRecurrence& r, int64_t workers);
}  // namespace persistent_avx2

}  // namespace seqcls_fast::cpu
