// The persistent recurrence on the CPU (LstmBackend::forward_recurrence and
// backward_recurrence): the entry points of its AVX-512 build and the layouts
// of its packed W_hh.
#pragma once

#include <cstdint>

#include "../lstm_step.h"

namespace seqcls_fast::cpu {

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

// Floats of W_hh packed for the backward: per block of 16 units (columns of
// W_hh), for each of the 4H rows, the block's 16 weights ([blocks, 4H, 16],
// units past H zero).
inline int64_t packed_w_hh_backward_floats(int64_t hidden) {
  return unit_blocks(hidden) * 4 * hidden * kUnitsPerBlock;
}

// Fills `packed` (packed_w_hh_backward_floats(H)) from W_hh [4H, H] contiguous.
void pack_w_hh_backward(const float* w_hh, int64_t H, float* packed);

// Runs r (r.w_hh_packed from pack_w_hh_backward) on `workers` worker slots
// (1 <= workers <= unit_blocks(H)) as lstm_forward_recurrence does. float32
// only; the caller checks the CPU has AVX-512F.
void lstm_backward_recurrence(const LstmBackwardRecurrence& r, int64_t workers);

}  // namespace avx512
}  // namespace seqcls_fast::cpu
