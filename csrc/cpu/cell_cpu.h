// The pointwise half of one recurrence step on the CPU, per cell (LSTM, GRU, RNN):
// entry points for each CPU capability. The parameters are the driver's (../recurrent_step.h).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../recurrent_step.h"

namespace seqcls_fast::cpu {

void lstm_forward_step_cpu(const ForwardStep& params, c10::ScalarType dtype);
void lstm_backward_step_cpu(const BackwardStep& params, c10::ScalarType dtype);
void gru_forward_step_cpu(const ForwardStep& params, c10::ScalarType dtype);
void gru_backward_step_cpu(const BackwardStep& params, c10::ScalarType dtype);
// The Elman RNN's (tanh or relu, by the step's cell_kind).
void rnn_forward_step_cpu(const ForwardStep& params, c10::ScalarType dtype);
void rnn_backward_step_cpu(const BackwardStep& params, c10::ScalarType dtype);

// One build of the kernels per CPU capability; cell_cpu.cpp picks one.
#define SEQCLS_CELL_CPU_ENTRY_POINTS                                        \
  void lstm_forward_step(const ForwardStep& params, c10::ScalarType dtype);  \
  void lstm_backward_step(const BackwardStep& params, c10::ScalarType dtype); \
  void gru_forward_step(const ForwardStep& params, c10::ScalarType dtype);   \
  void gru_backward_step(const BackwardStep& params, c10::ScalarType dtype);  \
  void rnn_forward_step(const ForwardStep& params, c10::ScalarType dtype);   \
  void rnn_backward_step(const BackwardStep& params, c10::ScalarType dtype);
namespace generic {
SEQCLS_CELL_CPU_ENTRY_POINTS
}  // namespace generic
namespace avx2 {
SEQCLS_CELL_CPU_ENTRY_POINTS
}  // namespace avx2
#undef SEQCLS_CELL_CPU_ENTRY_POINTS

}  // namespace seqcls_fast::cpu
