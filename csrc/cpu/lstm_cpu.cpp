// lstm_layer_forward / lstm_layer_backward on the CPU: the GEMMs through
// ATen, the pointwise step kernels from lstm_cell_cpu.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "../lstm_common.h"
#include "lstm_cell_cpu.h"

namespace seqcls_fast::cpu {
namespace {

using at::Tensor;
using c10::optional;

// Rows of `t` ([B, ...]) in the plan's sorted order; a contiguous copy.
Tensor to_sorted(const Tensor& t, const LengthPlan& plan) {
  return plan.order.defined() ? t.index_select(0, plan.order) : t.contiguous().clone();
}

// Writes sorted rows back in caller order.
Tensor from_sorted(const Tensor& sorted, const LengthPlan& plan) {
  if (!plan.order.defined()) return sorted;
  return at::empty_like(sorted).index_copy_(0, plan.order, sorted);
}

const int64_t* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<int64_t>() : nullptr;
}

void check_cpu(const Tensor& x) {
  SEQCLS_CHECK_VALUE(x.device().is_cpu(), "x must be on the CPU for the CPU kernel, got ",
                     x.device());
}

// Packed-row indices on the CPU; none when the packed rows are x's own rows.
PackedIndex packed_index(const LengthPlan& plan, bool reverse) {
  if (plan.packed_is_time_major(reverse)) return {};
  return {plan.packed_time, plan.packed_batch};
}

// Zeroes output[t, b, :] for t >= lengths[b] (the padding a PackedSequence
// does not have), touching nothing else.
void zero_padding(Tensor& output, const LengthPlan& plan) {
  if (plan.all_full) return;
  const int64_t T = output.size(0), B = output.size(1), H = output.size(2);
  const int64_t* order = plan.order.data_ptr<int64_t>();
  const int64_t* sorted = plan.sorted_lengths.data_ptr<int64_t>();
  const size_t row_bytes = H * output.element_size();
  char* base = static_cast<char*>(output.data_ptr());
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      for (int64_t t = sorted[j]; t < T; ++t) {
        std::memset(base + (t * B + order[j]) * row_bytes, 0, row_bytes);
      }
    }
  });
}

// Packed rows per input-projection chunk: large enough for an efficient
// GEMM, small enough (2 MB of float gates at H = 128) to stay in cache.
constexpr int64_t kProjectionChunkRows = 1024;

// First step of each chunk of consecutive steps holding about `rows` packed
// rows (at least one step each), then plan.steps.
std::vector<int64_t> chunk_steps(const LengthPlan& plan, int64_t rows) {
  std::vector<int64_t> starts{0};
  for (int64_t s = 1; s < plan.steps; ++s) {
    if (plan.offset[s + 1] - plan.offset[starts.back()] > rows) starts.push_back(s);
  }
  starts.push_back(plan.steps);
  return starts;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_forward_cpu(
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, bool reverse,
    bool save_activations) {
  const LstmSizes sz = check_lstm_forward_inputs(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh);
  check_cpu(x);
  const int64_t T = sz.steps_total, B = sz.batch, H = sz.hidden;
  const LengthPlan plan = make_length_plan(lengths, T, B, reverse);
  const int64_t N = plan.packed_rows;
  const auto opts = x.options();

  Tensor output = at::empty({T, B, H}, opts);
  const int64_t kept_rows = save_activations ? N : 0;
  Tensor gates = at::empty({kept_rows, 4 * H}, opts);
  Tensor cell = at::empty({kept_rows, H}, opts);
  Tensor h_prev = at::empty({kept_rows, H}, opts);
  zero_padding(output, plan);
  Tensor h_state = h0.has_value() ? to_sorted(*h0, plan) : at::zeros({B, H}, opts);
  Tensor c_state = c0.has_value() ? to_sorted(*c0, plan) : at::zeros({B, H}, opts);
  if (N == 0) return {output, h_state, c_state, gates, cell, h_prev};
  if (save_activations) h_prev.narrow(0, 0, B).copy_(h_state);

  // The input projection x W_ih^T + (b_ih + b_hh) of a chunk of steps is one
  // GEMM, done just before the chunk's recurrence so its gates are still in
  // cache when the steps read them. Without saved activations, one chunk of
  // scratch replaces the [N, 4H] buffer.
  const Tensor x_packed = pack_rows(x, N, packed_index(plan, reverse));
  const Tensor w_ih_t = w_ih.t(), w_hh_t = w_hh.t();
  const c10::optional<Tensor> bias =
      b_ih.has_value() ? c10::optional<Tensor>(*b_ih + *b_hh) : c10::nullopt;
  const std::vector<int64_t> chunk_starts = chunk_steps(plan, kProjectionChunkRows);
  Tensor scratch;
  if (!save_activations) {
    int64_t most_rows = 0;
    for (size_t c = 0; c + 1 < chunk_starts.size(); ++c) {
      most_rows = std::max(most_rows,
                           plan.offset[chunk_starts[c + 1]] - plan.offset[chunk_starts[c]]);
    }
    scratch = at::empty({most_rows, 4 * H}, opts);
  }

  LstmForwardStepParams p{};
  p.batch = B;
  p.hidden = H;
  p.reverse = reverse;
  p.order = data_or_null(plan.order);
  p.sorted_lengths = plan.sorted_lengths.data_ptr<int64_t>();
  p.h_state = h_state.data_ptr();
  p.c_state = c_state.data_ptr();
  p.output = output.data_ptr();
  for (size_t c = 0; c + 1 < chunk_starts.size(); ++c) {
    const int64_t first = chunk_starts[c], last = chunk_starts[c + 1];
    const int64_t chunk_begin = plan.offset[first];
    const int64_t chunk_rows = plan.offset[last] - chunk_begin;
    Tensor chunk_gates = save_activations ? gates.narrow(0, chunk_begin, chunk_rows)
                                          : scratch.narrow(0, 0, chunk_rows);
    const Tensor chunk_x = x_packed.narrow(0, chunk_begin, chunk_rows);
    if (bias.has_value()) {
      at::addmm_out(chunk_gates, *bias, chunk_x, w_ih_t);
    } else {
      at::mm_out(chunk_gates, chunk_x, w_ih_t);
    }
    // The recurrence on the length-sorted active prefix: per step one GEMM
    // accumulating h_{s-1} W_hh^T into the step's rows, then the fused cell.
    for (int64_t s = first; s < last; ++s) {
      const int64_t rows = plan.active[s], begin = plan.offset[s];
      Tensor gates_step = chunk_gates.narrow(0, begin - chunk_begin, rows);
      if (s > 0 || h0.has_value()) gates_step.addmm_(h_state.narrow(0, 0, rows), w_hh_t);
      p.step = s;
      p.rows = rows;
      p.rows_next = s + 1 < plan.steps ? plan.active[s + 1] : 0;
      p.gates = gates_step.data_ptr();
      p.cell = save_activations ? cell.narrow(0, begin, rows).data_ptr() : nullptr;
      p.h_prev_next = save_activations && p.rows_next > 0
                          ? h_prev.narrow(0, plan.offset[s + 1], p.rows_next).data_ptr()
                          : nullptr;
      lstm_forward_step_cpu(p, x.scalar_type());
    }
  }
  return {output, from_sorted(h_state, plan), from_sorted(c_state, plan), gates, cell, h_prev};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& x,
    const optional<Tensor>& lengths, const optional<Tensor>& c0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& gates, const Tensor& cell, const Tensor& h_prev,
    bool reverse, bool compute_grad_x) {
  const LstmSizes sz = check_lstm_forward_inputs(x, lengths, c10::nullopt, c0, w_ih, w_hh,
                                                 c10::nullopt, c10::nullopt);
  check_cpu(x);
  const int64_t T = sz.steps_total, B = sz.batch, I = sz.input_size, H = sz.hidden;
  check_shape(grad_output, {T, B, H}, "grad_output");
  check_shape(grad_h_n, {B, H}, "grad_h_n");
  check_shape(grad_c_n, {B, H}, "grad_c_n");
  SEQCLS_CHECK_VALUE(gates.dim() == 2, "gates must have shape [N, 4H], got ", gates.sizes());
  check_shape(gates, {gates.size(0), 4 * H}, "gates");
  check_shape(cell, {gates.size(0), H}, "cell");
  check_shape(h_prev, {gates.size(0), H}, "h_prev");
  // The step kernels read these through x's element type.
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{grad_output, "grad_output"},
                                {grad_h_n, "grad_h_n"}, {grad_c_n, "grad_c_n"},
                                {gates, "gates"}, {cell, "cell"}, {h_prev, "h_prev"}}) {
    check_same_kind(t, name, x, "x");
  }
  const LengthPlan plan = make_length_plan(lengths, T, B, reverse);
  const int64_t N = plan.packed_rows;
  check_shape(gates, {N, 4 * H}, "gates");
  const auto opts = x.options();

  Tensor grad_h_state = to_sorted(grad_h_n, plan);
  Tensor grad_c_state = to_sorted(grad_c_n, plan);
  if (N == 0) {
    return {at::zeros({T, B, I}, opts), grad_h_state, grad_c_state, at::zeros({4 * H, I}, opts),
            at::zeros({4 * H, H}, opts), at::zeros({4 * H}, opts)};
  }

  // 1. The recurrence backward, steps in reverse, on the active prefix.
  const Tensor gates_c = gates.contiguous(), cell_c = cell.contiguous();
  const Tensor grad_output_c = grad_output.contiguous();
  const Tensor c0_sorted = c0.has_value() ? to_sorted(*c0, plan) : at::zeros({B, H}, opts);
  Tensor grad_gates = at::empty({N, 4 * H}, opts);  // every row written below

  LstmBackwardStepParams p{};
  p.batch = B;
  p.hidden = H;
  p.reverse = reverse;
  p.order = data_or_null(plan.order);
  p.sorted_lengths = plan.sorted_lengths.data_ptr<int64_t>();
  p.grad_output = grad_output_c.data_ptr();
  p.grad_h_state = grad_h_state.data_ptr();
  p.grad_c_state = grad_c_state.data_ptr();
  for (int64_t s = plan.steps - 1; s >= 0; --s) {
    const int64_t rows = plan.active[s], begin = plan.offset[s];
    Tensor grad_gates_step = grad_gates.narrow(0, begin, rows);
    p.step = s;
    p.rows = rows;
    p.gates = gates_c.narrow(0, begin, rows).data_ptr();
    p.cell = cell_c.narrow(0, begin, rows).data_ptr();
    p.cell_prev = s == 0 ? c0_sorted.data_ptr() : cell_c.narrow(0, plan.offset[s - 1], rows).data_ptr();
    p.grad_gates = grad_gates_step.data_ptr();
    lstm_backward_step_cpu(p, x.scalar_type());
    // dL/dh_{s-1} = dG_s W_hh for the rows active at s; the others keep the
    // gradient they were given until their own last step comes up.
    Tensor grad_h_rows = grad_h_state.narrow(0, 0, rows);
    at::mm_out(grad_h_rows, grad_gates_step, w_hh);
  }

  // 2. Weight and input gradients as single GEMMs over all valid steps.
  const LstmGemmGrads g =
      lstm_gemm_grads(grad_gates, x, h_prev, w_ih, packed_index(plan, reverse), compute_grad_x);
  return {g.grad_x,    from_sorted(grad_h_state, plan), from_sorted(grad_c_state, plan),
          g.grad_w_ih, g.grad_w_hh,                     g.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(seqcls_fast, CPU, m) {
  m.impl("lstm_layer_forward", &lstm_layer_forward_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
}

}  // namespace seqcls_fast::cpu
