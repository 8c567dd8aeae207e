// Input checks and the length plan shared by the CPU and CUDA LSTM kernels.
// Host code only; .cu files include it, so it stays on narrow ATen headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <vector>

#include "checks.h"

namespace seqcls_fast {

// Sizes of one LSTM layer-direction call, read from validated inputs.
struct LstmSizes {
  int64_t steps_total;  // T
  int64_t batch;        // B
  int64_t input_size;   // I
  int64_t hidden;       // H
};

// Checks ranks, shapes, dtypes and devices of lstm_layer_forward's inputs
// (not the values of lengths: make_length_plan does that on the host).
LstmSizes check_lstm_forward_inputs(const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
                                    const c10::optional<at::Tensor>& h0,
                                    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                                    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                    const c10::optional<at::Tensor>& b_hh);

// How the batch runs through the recurrence. Rows are visited in `order`
// (caller row indices sorted by length, descending, ties in caller order), so
// at step s the rows still running are the prefix of size active[s].
struct LengthPlan {
  at::Tensor order;                // [B] int64, CPU; empty when the order is the identity
  at::Tensor sorted_lengths;       // [B] int64, CPU; lengths in `order`
  std::vector<int64_t> active;     // [steps] rows with length > s
  int64_t steps = 0;               // longest length
  bool all_full = true;            // every row has length T (order is the identity)
};

// Builds the plan from lengths on the CPU (any integer dtype), checking every
// value lies in [1, T]. No lengths means every row runs all T steps.
LengthPlan make_length_plan(const c10::optional<at::Tensor>& lengths_cpu, int64_t steps_total,
                            int64_t batch);

}  // namespace seqcls_fast
