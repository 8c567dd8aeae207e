// One recurrence step of a layer of any cell (cell_def.h): the parameters the
// shared driver (recurrent_driver.cpp) fills once per step and every backend's
// pointwise step kernel reads (the LSTM's: csrc/cpu/cell_cpu_kernel.h,
// csrc/cuda/cell_cuda.cuh).
// Plain data with untyped pointers, so one struct serves every dtype and both
// compilers; a kernel casts to its element type. No ATen: .cu files include it.
//
// Step s covers rows j < rows of the length-sorted batch (the rows still
// running). Sorted row j is caller row order[j]; its time index is s, or
// sorted_lengths[j] - 1 - s when reverse. "packed" buffers are the step's
// slice of the op's [N, ...] tensors; "sorted" buffers are indexed by j.
// Every buffer except grad_output is contiguous and allocated by the op.
// G is the cell's gates * H (4H for the LSTM, 3H for the GRU). The cell
// state c is the LSTM's (CellDef::has_cell_state); `cell`, the one value per
// unit a step keeps beside its gates, is the LSTM's c_s and the GRU's
// recurrent part of the new gate, h_{s-1} W_hn^T + b_hn. `recurrent` and
// `grad_recurrent` are for cells whose recurrent product stays apart (GRU).
#pragma once

#include <cstdint>

#include "cell_def.h"
#include "host_device.h"

namespace seqcls_fast {

// What every step of a pass shares, and which rows it runs.
struct StepRows {
  CellKind cell_kind;             // which cell's kernel runs the step
  int64_t step;                   // s (the backward runs s = steps-1 down to 0)
  int64_t rows;                   // active rows at step s
  int64_t batch;                  // B
  int64_t hidden;                 // H
  bool reverse;
  const int64_t* order;           // [B] sorted row -> caller row; nullptr: identity
  const int64_t* sorted_lengths;  // [B] lengths in sorted order
};

struct ForwardStep : StepRows {
  int64_t rows_next;              // active rows at step s + 1; 0 at the last step
  void* gates;                    // [rows, G] packed; in: pre-activations (with the recurrent
                                  //   product, or without it when `recurrent` is given), out:
                                  //   activated gates
  const void* recurrent;          // [rows, G] packed: h_{s-1} W_hh^T + b_hh; nullptr: in gates
  void* h_state;                  // [B, H] sorted; in: h_{s-1} (GRU), out: h_s
  void* c_state;                  // [B, H] sorted, state dtype; in: c_{s-1}, out: c_s
  void* output;                   // [T, B, H] caller order; out: h_s at (t, order[j]);
                                  //   nullptr: not written (pooled inference)
  void* cell;                     // [rows, H] packed, state dtype; out: the kept value (c_s,
                                  //   GRU: h_{s-1} W_hn^T + b_hn); nullptr: not kept
  void* h_prev_next;              // [rows_next, H] packed; out: h_s as step s+1's h_prev;
                                  //   nullptr: not kept
};

struct BackwardStep : StepRows {
  const void* gates;              // [rows, G] packed; activated gates (forward's or rebuilt)
  const void* cell;               // [rows, H] packed, state dtype; the forward's kept value
                                  //   (c_s, GRU: h_{s-1} W_hn^T + b_hn), saved or rebuilt
  const void* cell_prev;          // [rows, H] c_{s-1}, state dtype: packed, or sorted [B, H]
                                  //   (c0 at s = 0; the checkpoint at a rebuilt chunk's start);
                                  //   LSTM only
  const void* h_prev;             // [rows, H] packed: h_{s-1} (GRU; nullptr for the LSTM)
  const void* grad_output;        // [T, B, H] caller order; dL/d output; unit stride along H
  int64_t grad_output_stride_t;   //   its stride along T in elements (0 when expanded)
  int64_t grad_output_stride_b;   //   its stride along B in elements (0 when expanded)
  void* grad_h_state;             // [B, H] sorted; in: dL/dh_s arriving through W_hh (or h_n);
                                  //   GRU: out: the part of dL/dh_{s-1} that skips W_hh (dh z)
  void* grad_c_state;             // [B, H] sorted, state dtype; in: dL/dc_s, out: dL/dc_{s-1}
                                  //   (LSTM only)
  void* grad_gates;               // [rows, G] packed; out: dL/d pre-activations (with
                                  //   `grad_recurrent`: of the input projection's part)
  void* grad_recurrent;           // [rows, G] packed; out: dL/d(h_{s-1} W_hh^T + b_hh); or
                                  //   nullptr (the same as grad_gates)
};

// What both persistent recurrences share: the rows a segment of steps runs
// (the plan's per-step rows and offsets) and the packed W_hh.
struct RecurrenceRows : StepRows {  // step: the segment's first (lowest) step; rows: unused
  int64_t end_step;               // one past the segment's last (highest) step
  const int64_t* active;          // [steps] host; active rows per step
  const int64_t* offset;          // [steps + 1] host; packed row of each step's first row
  const int64_t* active_device;   // [steps] the same on the kernel's device (DevicePlan)
  const int64_t* offset_device;   // [steps + 1] likewise
  int64_t row0;                   // packed row at which the segment's packed buffers start
  const void* w_hh_packed;        // W_hh in the backend's layout (pack_recurrent_weights or
                                  //   pack_recurrent_weights_backward)
};

// Steps [step, end_step) of the forward run by one persistent kernel, the
// recurrent product h_{s-1} W_hh^T fused with the cell (RecurrentBackend::
// forward_recurrence). Workers own hidden units, all the gates of them, so
// the cell update is local; they exchange h_s through memory and meet once
// per step. The input projection of every step is already in `gates`. Every
// output is what ForwardStep writes for each step in turn.
struct ForwardRecurrence : RecurrenceRows {  // row0: where every "packed" buffer starts
  int64_t steps;                  // the plan's step count (for the step after the last)
  bool product_at_first;          // false: h_{step-1} is zero (step 0 without h0), no product
  void* gates;                    // [.., G] packed; in: x W_ih^T + b; out: activated gates
                                  //   when cell is kept
  const void* recurrent_bias;     // [G]: b_hh, added to the product kept apart (GRU); or
                                  //   nullptr (none, or it is in `gates`)
  const void* h_in;               // [.., H] packed: h_{s-1} of each row, read instead of the
                                  //   recurrence's (replaying a forward whose h is known); or nullptr
  void* h_state;                  // [B, H] sorted; in: h_{step-1}, out: h of each row's last step
  void* c_state;                  // [B, H] sorted, state dtype; in/out like h_state
  void* output;                   // [T, B, H] caller order, or nullptr (as ForwardStep)
  void* cell;                     // [.., H] packed, state dtype; out: c_s; or nullptr
  void* h_prev;                   // [.., H] packed; out: h_s at step s+1's rows; or nullptr
  void* h_packed;                 // [.., H] packed; out: h_s; or nullptr
};

// Steps [step, end_step) of the backward (run end_step - 1 down to step) by
// one persistent kernel: dL/dh_s = dG_{s+1} W_hh fused with the cell
// backward that consumes it (RecurrentBackend::backward_recurrence). Workers own
// hidden units: the columns of W_hh whose dh they sum and the same units'
// gates whose gradients they write, so dh never leaves its worker; they
// meet once per step, when every gate gradient of step s is written. Every
// step writes what BackwardStep writes; after the last one (s = step),
// grad_h_state holds dG_step W_hh for the rows active at `step` (GRU:
// dG_rec,step W_hh plus the part that skips W_hh; what the steps before
// this segment read).
struct BackwardRecurrence : RecurrenceRows {  // row0: where gates and grad_gates start
  int64_t cell_row0;              // packed row at which cell starts
  const void* gates;              // [.., G] packed; activated gates
  const void* cell;               // [.., H] packed, state dtype; the kept value (as BackwardStep)
  const void* cell_before;        // [B, H] sorted, state dtype: c_{step-1}; nullptr: it is
                                  //   cell's rows of step - 1 (LSTM only)
  const void* h_prev;             // [.., H] packed from row0: h_{s-1} (GRU; else nullptr)
  const void* grad_output;        // as BackwardStep
  int64_t grad_output_stride_t;
  int64_t grad_output_stride_b;
  void* grad_h_state;             // [B, H] sorted; in: dL/dh_{end_step-1} of every row (and
                                  //   h_n's for rows that end inside); out: see above
  void* grad_c_state;             // [B, H] sorted, state dtype; in/out as BackwardStep
  void* grad_gates;               // [.., G] packed; out: dL/d pre-activations (GRU: of the
                                  //   input projection's part)
  void* grad_recurrent;           // [.., G] packed from row0; out: dL/d(h_{s-1} W_hh^T + b_hh)
                                  //   (GRU; else nullptr)
};

// What lstm_layer_pooled_forward accumulates over the last layer's outputs.
enum class OnlinePooling : int32_t { kLast = 0, kMean = 1, kAttention = 2 };

// One step of online pooling over the h_s a forward step just wrote for its
// active rows (the math is online_pool.h's). Attention: score_j = keys_j .
// query, merged into the running max, denominator and weighted sum of h;
// mean: sum += h_s. The state is sorted and in the state dtype.
struct PoolStep {
  int64_t rows;                   // active rows at this step (an upper bound for a
                                  //   plan expanded on the device: LengthPlan::on_device)
  int64_t step;                   // s
  const int64_t* active;          // [steps] the plan's active rows on the kernels' device
                                  //   (DevicePlan): exact
  const int64_t* offset;          // [steps + 1] its packed-row offsets there
  int64_t hidden;                 // H
  int64_t key_size;               // A: keys_j's size (H when the keys are h_s)
  OnlinePooling pooling;          // kMean or kAttention
  const void* h;                  // [rows, H] sorted; h_s
  const void* keys;               // [rows, A] sorted; attention keys of h_s
  const void* query;              // [A]; attention query
  void* max;                      // [B] sorted, state dtype; running max of the scores
  void* denom;                    // [B] sorted, state dtype; sum exp(score - max)
  void* sum;                      // [B, H] sorted, state dtype; sum exp(score - max) h (mean: sum h)
};

// Time index of sorted row j at step s: the one place this formula lives.
SEQCLS_HOST_DEVICE int64_t step_time(bool reverse, const int64_t* sorted_lengths, int64_t j,
                                     int64_t s) {
  return reverse ? sorted_lengths[j] - 1 - s : s;
}

// Step addressing, written once for every backend and the persistent tiles:
// the caller row of sorted row j, and where row j's step s lives in the
// [T, B, H] output and in grad_output (offsets in elements, of unit 0).
SEQCLS_HOST_DEVICE int64_t caller_row(const StepRows& p, int64_t j) {
  return p.order != nullptr ? p.order[j] : j;
}

SEQCLS_HOST_DEVICE int64_t output_offset(const StepRows& p, int64_t j, int64_t s) {
  return (step_time(p.reverse, p.sorted_lengths, j, s) * p.batch + caller_row(p, j)) * p.hidden;
}

// p: a backward step or recurrence (grad_output's strides are theirs).
template <typename Backward>
SEQCLS_HOST_DEVICE int64_t grad_output_offset(const Backward& p, int64_t j, int64_t s) {
  return step_time(p.reverse, p.sorted_lengths, j, s) * p.grad_output_stride_t +
         caller_row(p, j) * p.grad_output_stride_b;
}

}  // namespace seqcls_fast
