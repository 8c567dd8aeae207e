// Input checks, the length plan and the backward's weight GEMMs, shared by
// every backend and cell of the recurrent driver. Host code only; .cu files
// include it, so it stays on narrow ATen headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cell_def.h"
#include "checks.h"

namespace seqcls_fast {

// Sizes of one layer-direction call, read from validated inputs.
struct LayerSizes {
  int64_t steps_total;  // T
  int64_t batch;        // B
  int64_t input_size;   // I
  int64_t hidden;       // H
};

// Checks ranks, shapes, dtypes and devices of a layer's inputs for `cell`
// (weights [gates * H, .]; c0 only for a cell with a cell state), not the
// values of lengths: make_length_plan does that on the host.
LayerSizes check_layer_inputs(const CellDef& cell, const at::Tensor& x,
                              const c10::optional<at::Tensor>& lengths,
                              const c10::optional<at::Tensor>& h0,
                              const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                              const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh);

// How the batch runs through the recurrence. Rows are visited in `order`
// (caller row indices sorted by length, descending, ties in caller order), so
// at step s the rows still running are the prefix of size active[s]. Their
// per-step data is stored packed, step after step, as in a PackedSequence:
// packed row offset[s] + j is step s of sorted row j.
struct LengthPlan {
  at::Tensor order;                // [B] int64, CPU; undefined when the order is the identity
  at::Tensor inverse_order;        // [B] int64, CPU: caller row -> sorted row; undefined likewise
  at::Tensor sorted_lengths;       // [B] int64, CPU; lengths in `order`
  at::Tensor lengths;              // [B] int64, CPU; lengths in caller order; undefined
                                   //   without a plan table (every row runs all T steps)
  std::vector<int64_t> active;     // [steps] rows with length > s
  std::vector<int64_t> offset;     // [steps + 1] first packed row of each step; offset[steps] = N
  at::Tensor packed_time;          // [N] int64, CPU: time index of each packed row;
                                   //   undefined when packed_is_time_major (x's own rows)
  at::Tensor packed_batch;         // [N] int64, CPU: caller row of each packed row; likewise
  int64_t steps = 0;               // longest length
  int64_t packed_rows = 0;         // N = sum of lengths
  bool all_full = true;            // every row has length T (order is the identity)
  // A plan expanded on the device (PlanAccess::device_steps): the host knows
  // T and B only, so the packed layout is T x B slots, step s at rows
  // [s B, s B + B) (active[s] = B, offset[s] = s B, N = T B, steps = T); the
  // rows still running are the DevicePlan's exact active[s], and the other
  // slots hold nothing the backward adds (zero gradients, zero h_prev). The
  // order, lengths and packed indices exist only in the DevicePlan.
  bool on_device = false;

  // Packed row q of a forward pass over full rows is x.view(T * B, I)[q]: no gather needed.
  bool packed_is_time_major(bool reverse) const { return all_full && !reverse; }
};

// The step plan of one direction from a length plan table (length_plan.h;
// undefined: every row runs all T steps).
LengthPlan make_length_plan(const at::Tensor& plan_table, int64_t steps_total, int64_t batch,
                            bool reverse);

// The parts of a LengthPlan the kernels read, on the input's device: on a GPU
// views of one int64 tensor that arrives in a single host-to-device copy (from
// pinned memory, ordered on the current stream, no synchronization); on the
// CPU the LengthPlan's own tensors. order /
// inverse_order are undefined when the sorted order is the identity;
// packed_time / packed_batch when the packed rows are x's own time-major rows
// (a forward pass over full rows).
struct DevicePlan {
  at::Tensor active;          // [steps] LengthPlan::active (read by persistent kernels;
                              //   exact, where the LengthPlan's is an upper bound)
  at::Tensor offset;          // [steps + 1] LengthPlan::offset
  at::Tensor order;           // [B] sorted row -> caller row
  at::Tensor inverse_order;   // [B] caller row -> sorted row
  at::Tensor sorted_lengths;  // [B]
  at::Tensor lengths;         // [B] caller order (as LengthPlan::lengths)
  at::Tensor packed_time;     // [N] time index of each packed row
  at::Tensor packed_batch;    // [N] caller row of each packed row
  // [N] where grad_x's scatter writes each packed row: packed_time itself,
  // except for T x B slots (LengthPlan::on_device), where packed_time sends a
  // slot past its row's length to the row's step 0 (a valid x row, for
  // gathers) and scatter_time to a padding position of its own (time s), so
  // the scatter writes every (t, b) once, zeros in the padding.
  at::Tensor scatter_time;
  bool slots = false;
};

DevicePlan make_device_plan(const LengthPlan& plan, bool reverse, const at::Device& device);

// A batch's plan for one direction on one device, expanded once: the step
// layout and what the kernels read on the device.
struct BatchPlan {
  LengthPlan plan;
  DevicePlan dev;
};

// How an operator call may read its plan.
struct PlanAccess {
  // The lengths or plan table live on the kernel device (GPU lengths): host
  // code cannot read them without a copy.
  bool resident = false;
  // Its kernels take the step plan from the device (the persistent CUDA
  // recurrence): a resident plan is then made and expanded there, with no
  // host copy (LengthPlan::on_device); otherwise it is copied to the host
  // once per table (counted: length_plan_stats).
  bool device_steps = false;
};

// The plan of one operator call, from what it was handed: a plan table
// (an sf.LengthPlan's) is checked, expanded and uploaded once per (table,
// T, B, direction, device, stream and access), then kept while the table
// lives unmodified (TensorIdentity), so every later layer, direction and
// pass of the batch costs a lookup; raw lengths are planned for this call
// alone (length_plan.h); neither: every row runs all T steps.
std::shared_ptr<const BatchPlan> batch_plan(const c10::optional<at::Tensor>& lengths,
                                            const c10::optional<at::Tensor>& plan,
                                            int64_t steps_total, int64_t batch, bool reverse,
                                            const at::Device& device, PlanAccess access = {});

// How many times a plan was expanded (make_length_plan) since the library
// loaded (test hook: seqcls_fast._C.length_plan_stats()).
int64_t length_plan_expansions();

// A contiguous copy of `t` ([B, ...], caller order) in sorted order and `dtype`.
at::Tensor to_sorted(const at::Tensor& t, const DevicePlan& plan, at::ScalarType dtype);

// Sorted rows back in caller order.
at::Tensor from_sorted(const at::Tensor& sorted, const DevicePlan& plan);

// x [T, B, I] -> [n, I]: row k is x[time[k], batch[k]] (time, batch: [n]
// int64 on x's device). A new tensor.
at::Tensor gather_rows(const at::Tensor& x, const at::Tensor& time, const at::Tensor& batch);

// x [T, B, I] -> its rows in packed order, [N, I]; or packed rows
// [begin, begin + rows) only.
at::Tensor pack_rows(const at::Tensor& x, int64_t packed_rows, const DevicePlan& plan);
at::Tensor pack_rows(const at::Tensor& x, int64_t begin, int64_t rows, const DevicePlan& plan);

// The gradients that are GEMMs over valid steps, from the pre-activation
// gradients grad_gates [rows, G] of packed rows [begin, begin + rows) and
// those rows' h_prev [rows, H]: grad_w_ih += dG^T X, grad_w_hh += dG^T H_prev,
// The grad_x a backward returns when compute_grad_x is false: zeros of x's
// shape as a broadcast of one element (its strides 0), since autograd drops
// it; a [T, B, I] buffer zero-filled per call cost ~5% of a training step.
at::Tensor unrequested_grad_x(const at::Tensor& x);

// grad_bias += sum of dG, and (when compute_grad_x) grad_x [T, B, I] at those
// rows = dG W_ih (zeros past each length). For a cell whose recurrent product
// stays apart, grad_recurrent [rows, G] is dL/d(h W_hh^T + b_hh): then
// grad_w_hh += dG_rec^T H_prev and grad_recurrent_bias += sum of dG_rec
// (undefined otherwise). The first call allocates; calls for every packed
// row, in any order of disjoint ranges, give the whole.
struct GemmGrads {
  at::Tensor grad_x, grad_w_ih, grad_w_hh, grad_bias, grad_recurrent_bias;
};
void accumulate_gemm_grads(GemmGrads& grads, const at::Tensor& grad_gates,
                           const at::Tensor& grad_recurrent, int64_t begin, const at::Tensor& x,
                           const at::Tensor& h_prev, const at::Tensor& w_ih,
                           const DevicePlan& plan, bool compute_grad_x);

}  // namespace seqcls_fast
