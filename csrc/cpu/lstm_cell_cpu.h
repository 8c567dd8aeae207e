// The pointwise half of one LSTM recurrence step on the CPU: parameters and
// entry points. The GEMM half is in lstm_cpu.cpp. Every buffer here is
// contiguous and allocated by the op, so strides are implied by the shapes.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace seqcls_fast::cpu {

// Step s of the forward, over the rows j < rows of the length-sorted batch.
// Row j is caller row order[j]; its time index is s, or lengths[j] - 1 - s
// when reverse. Per-step buffers are slices of the packed [N, ...] tensors.
struct LstmForwardStepParams {
  int64_t step;                   // s
  int64_t rows;                   // active rows at this step (a prefix)
  int64_t rows_next;              // active rows at step s + 1 (0 at the last step)
  int64_t batch;                  // B
  int64_t hidden;                 // H
  bool reverse;
  const int64_t* order;           // [B] sorted row -> caller row; nullptr: identity
  const int64_t* sorted_lengths;  // [B] lengths in sorted order
  void* gates;                    // [rows, 4H] in: all pre-activations; out: activated gates
  void* h_state;                  // [B, H] sorted: h_s out
  void* c_state;                  // [B, H] sorted: c_{s-1} in, c_s out
  void* output;                   // [T, B, H] h_t in caller order
  void* cell;                     // [rows, H] c_s, packed; nullptr: not kept
  void* h_prev_next;              // [rows_next, H] h_s as step s+1's h_prev; nullptr: not kept
};

// Step s of the backward (run for s = steps-1 down to 0).
struct LstmBackwardStepParams {
  int64_t step;                   // s
  int64_t rows;                   // active rows at this step (a prefix)
  int64_t batch;                  // B
  int64_t hidden;                 // H
  bool reverse;
  const int64_t* order;           // [B] sorted row -> caller row; nullptr: identity
  const int64_t* sorted_lengths;  // [B] lengths in sorted order
  const void* gates;              // [rows, 4H] activated gates from the forward
  const void* cell;               // [rows, H] c_s from the forward
  const void* cell_prev;          // [rows, H] c_{s-1} (sorted c0 at s = 0)
  const void* grad_output;        // [T, B, H] dL/d output, caller order
  void* grad_h_state;             // [B, H] sorted: dL/dh_s arriving through W_hh
  void* grad_c_state;             // [B, H] sorted: dL/dc_s in, dL/dc_{s-1} out
  void* grad_gates;               // [rows, 4H] out: dL/d pre-activations
};

void lstm_forward_step_cpu(const LstmForwardStepParams& params, c10::ScalarType dtype);
void lstm_backward_step_cpu(const LstmBackwardStepParams& params, c10::ScalarType dtype);

// One build of the kernels per CPU capability; lstm_cell_cpu.cpp picks one.
namespace generic {
void lstm_forward_step(const LstmForwardStepParams& params, c10::ScalarType dtype);
void lstm_backward_step(const LstmBackwardStepParams& params, c10::ScalarType dtype);
}  // namespace generic
namespace avx2 {
void lstm_forward_step(const LstmForwardStepParams& params, c10::ScalarType dtype);
void lstm_backward_step(const LstmBackwardStepParams& params, c10::ScalarType dtype);
}  // namespace avx2

}  // namespace seqcls_fast::cpu
