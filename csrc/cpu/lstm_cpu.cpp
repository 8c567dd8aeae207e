// lstm_layer_forward / lstm_layer_backward on the CPU: the GEMMs through
// ATen, the pointwise step kernels from lstm_cell_cpu.h.
#include <ATen/ATen.h>
#include <torch/library.h>

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

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_forward_cpu(
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, bool reverse) {
  const LstmSizes sz = check_lstm_forward_inputs(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh);
  check_cpu(x);
  const int64_t T = sz.steps_total, B = sz.batch, I = sz.input_size, H = sz.hidden;
  const LengthPlan plan = make_length_plan(lengths, T, B);
  const int64_t steps = plan.steps;

  Tensor output = at::zeros({T, B, H}, x.options());
  Tensor cell = at::zeros({T, B, H}, x.options());
  Tensor gates = at::zeros({T, B, 4 * H}, x.options());
  if (B == 0) {
    return {output, at::zeros({B, H}, x.options()), at::zeros({B, H}, x.options()), gates, cell};
  }

  // 1. Input projection of every valid step in one GEMM, both biases folded in.
  Tensor x_valid = x.narrow(0, 0, steps).reshape({steps * B, I});
  Tensor gates_valid = gates.narrow(0, 0, steps).view({steps * B, 4 * H});
  if (b_ih.has_value()) {
    at::addmm_out(gates_valid, *b_ih + *b_hh, x_valid, w_ih.t());
  } else {
    at::mm_out(gates_valid, x_valid, w_ih.t());
  }

  // 2. The recurrence on the length-sorted active prefix.
  Tensor h_state = h0.has_value() ? to_sorted(*h0, plan) : at::zeros({B, H}, x.options());
  Tensor c_state = c0.has_value() ? to_sorted(*c0, plan) : at::zeros({B, H}, x.options());
  Tensor gates_hh = at::empty({B, 4 * H}, x.options());
  const Tensor w_hh_t = w_hh.t();

  LstmForwardStepParams p{};
  p.batch = B;
  p.hidden = H;
  p.reverse = reverse;
  p.order = data_or_null(plan.order);
  p.sorted_lengths = plan.sorted_lengths.data_ptr<int64_t>();
  p.gates = gates.data_ptr();
  p.gates_hh = gates_hh.data_ptr();
  p.h_state = h_state.data_ptr();
  p.c_state = c_state.data_ptr();
  p.output = output.data_ptr();
  p.cell = cell.data_ptr();
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t rows = plan.active[s];
    Tensor hh = gates_hh.narrow(0, 0, rows);
    if (s == 0 && !h0.has_value()) {
      hh.zero_();  // h_{-1} = 0: skip the GEMM
    } else {
      at::mm_out(hh, h_state.narrow(0, 0, rows), w_hh_t);
    }
    p.step = s;
    p.rows = rows;
    lstm_forward_step_cpu(p, x.scalar_type());
  }
  return {output, from_sorted(h_state, plan), from_sorted(c_state, plan), gates, cell};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& x,
    const optional<Tensor>& lengths, const optional<Tensor>& h0, const optional<Tensor>& c0,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& output, const Tensor& gates,
    const Tensor& cell, bool reverse, bool compute_grad_x) {
  const LstmSizes sz =
      check_lstm_forward_inputs(x, lengths, h0, c0, w_ih, w_hh, c10::nullopt, c10::nullopt);
  check_cpu(x);
  const int64_t T = sz.steps_total, B = sz.batch, I = sz.input_size, H = sz.hidden;
  check_shape(grad_output, {T, B, H}, "grad_output");
  check_shape(grad_h_n, {B, H}, "grad_h_n");
  check_shape(grad_c_n, {B, H}, "grad_c_n");
  check_shape(output, {T, B, H}, "output");
  check_shape(gates, {T, B, 4 * H}, "gates");
  check_shape(cell, {T, B, H}, "cell");
  const LengthPlan plan = make_length_plan(lengths, T, B);
  const int64_t steps = plan.steps;
  const auto opts = x.options();

  Tensor grad_x = at::zeros({T, B, I}, opts);
  Tensor grad_w_ih = at::zeros({4 * H, I}, opts);
  Tensor grad_w_hh = at::zeros({4 * H, H}, opts);
  Tensor grad_bias = at::zeros({4 * H}, opts);
  if (B == 0) {
    return {grad_x, at::zeros({B, H}, opts), at::zeros({B, H}, opts), grad_w_ih, grad_w_hh,
            grad_bias};
  }

  // 1. The recurrence backward, steps in reverse, on the active prefix.
  const Tensor gates_c = gates.contiguous(), cell_c = cell.contiguous();
  const Tensor grad_output_c = grad_output.contiguous();
  Tensor grad_h_state = to_sorted(grad_h_n, plan);
  Tensor grad_c_state = to_sorted(grad_c_n, plan);
  Tensor c0_sorted = c0.has_value() ? to_sorted(*c0, plan) : at::zeros({B, H}, opts);
  Tensor grad_gates = at::zeros({steps, B, 4 * H}, opts);
  Tensor grad_gates_step = at::empty({B, 4 * H}, opts);

  LstmBackwardStepParams p{};
  p.batch = B;
  p.hidden = H;
  p.reverse = reverse;
  p.order = data_or_null(plan.order);
  p.sorted_lengths = plan.sorted_lengths.data_ptr<int64_t>();
  p.gates = gates_c.data_ptr();
  p.cell = cell_c.data_ptr();
  p.c0 = c0_sorted.data_ptr();
  p.grad_output = grad_output_c.data_ptr();
  p.grad_h_state = grad_h_state.data_ptr();
  p.grad_c_state = grad_c_state.data_ptr();
  p.grad_gates = grad_gates.data_ptr();
  p.grad_gates_step = grad_gates_step.data_ptr();
  for (int64_t s = steps - 1; s >= 0; --s) {
    const int64_t rows = plan.active[s];
    p.step = s;
    p.rows = rows;
    lstm_backward_step_cpu(p, x.scalar_type());
    // dL/dh_{s-1} = dG_s W_hh for the rows active at s; the others keep
    // the gradient they were given until their own last step comes up.
    Tensor grad_h_rows = grad_h_state.narrow(0, 0, rows);
    at::mm_out(grad_h_rows, grad_gates_step.narrow(0, 0, rows), w_hh);
  }

  // 2. Weight gradients as single GEMMs over all valid steps.
  Tensor dg = grad_gates.view({steps * B, 4 * H});
  Tensor x_valid = x.narrow(0, 0, steps).reshape({steps * B, I});
  at::mm_out(grad_w_ih, dg.t(), x_valid);
  at::sum_out(grad_bias, dg, {0});
  if (compute_grad_x) {
    Tensor grad_x_valid = grad_x.narrow(0, 0, steps).view({steps * B, I});
    at::mm_out(grad_x_valid, dg, w_ih);
  }
  // dW_hh = sum over (t, b) of dG[t, b]^T h_prev[t, b]. At step 0 h_prev is h0;
  // after that it is the output one step earlier in the row's own direction:
  // output[t-1] forward, output[t+1] in reverse. Where that neighbour lies past
  // the row's length, output is 0, and where t itself does, dG is 0, so two
  // shifted GEMMs over whole time slices are exact.
  if (steps > 1) {
    const int64_t n = (steps - 1) * B;
    Tensor dg_later = grad_gates.narrow(0, reverse ? 0 : 1, steps - 1).reshape({n, 4 * H});
    Tensor h_prev = output.narrow(0, reverse ? 1 : 0, steps - 1).reshape({n, H});
    grad_w_hh.addmm_(dg_later.t(), h_prev);
  }
  if (h0.has_value()) {
    // grad_gates_step holds step 0's gradients, in sorted order.
    grad_w_hh.addmm_(grad_gates_step.t(), to_sorted(*h0, plan));
  }
  return {grad_x,    from_sorted(grad_h_state, plan), from_sorted(grad_c_state, plan),
          grad_w_ih, grad_w_hh,                       grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(seqcls_fast, CPU, m) {
  m.impl("lstm_layer_forward", &lstm_layer_forward_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
}

}  // namespace seqcls_fast::cpu
