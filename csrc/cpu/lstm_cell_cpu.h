// The pointwise half of one LSTM recurrence step on the CPU: entry points
// for each CPU capability. The parameters are the driver's (../recurrent_step.h).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../recurrent_step.h"

namespace seqcls_fast::cpu {

void lstm_forward_step_cpu(const ForwardStep& params, c10::ScalarType dtype);
void lstm_backward_step_cpu(const BackwardStep& params, c10::ScalarType dtype);

// One build of the kernels per CPU capability; lstm_cell_cpu.cpp picks one.
namespace generic {
void lstm_forward_step(const ForwardStep& params, c10::ScalarType dtype);
void lstm_backward_step(const BackwardStep& params, c10::ScalarType dtype);
}  // namespace generic
namespace avx2 {
void lstm_forward_step(const ForwardStep& params, c10::ScalarType dtype);
void lstm_backward_step(const BackwardStep& params, c10::ScalarType dtype);
}  // namespace avx2

}  // namespace seqcls_fast::cpu
