// The pointwise half of one LSTM recurrence step on the CPU: parameters and
// entry points. The GEMM half is in lstm_cpu.cpp. Every buffer here is
// contiguous and allocated by the op, so strides are implied by the shapes.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace seqcls_fast::cpu {

// Step s of the forward, over the rows j < rows of the length-sorted batch.
// Row j is caller row order[j]; its time index is s, or lengths[j] - 1 - s
// when reverse.
struct LstmForwardStepParams {
  int64_t step;                   // s
  int64_t rows;                   // active rows at this step (a prefix)
  int64_t batch;                  // B
  int64_t hidden;                 // H
  bool reverse;
  const int64_t* order;           // [B] sorted row -> caller row; nullptr: identity
  const int64_t* sorted_lengths;  // [B] lengths in sorted order
  void* gates;                    // [T, B, 4H] in: x W_ih^T + b; out: activated gates
  const void* gates_hh;           // [B, 4H] sorted: h_{s-1} W_hh^T
  void* h_state;                  // [B, H] sorted: h_{s-1} in, h_s out
  void* c_state;                  // [B, H] sorted: c_{s-1} in, c_s out
  void* output;                   // [T, B, H] h_t in caller order
  void* cell;                     // [T, B, H] c_t in caller order
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
  const void* gates;              // [T, B, 4H] activated gates from the forward
  const void* cell;               // [T, B, H] c_t from the forward
  const void* c0;                 // [B, H] sorted initial cell state
  const void* grad_output;        // [T, B, H] dL/d output
  void* grad_h_state;             // [B, H] sorted: dL/dh_s arriving through W_hh
  void* grad_c_state;             // [B, H] sorted: dL/dc_s in, dL/dc_{s-1} out
  void* grad_gates;               // [steps, B, 4H] caller order: pre-activation grads
  void* grad_gates_step;          // [B, 4H] sorted: this step's rows, for the W_hh GEMM
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
