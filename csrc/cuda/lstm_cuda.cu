// lstm_layer_forward / lstm_layer_backward on CUDA: the GEMMs through ATen
// (cuBLAS), the pointwise step kernels from lstm_cell_cuda.cuh. Same
// semantics and the same packed layout of gates / cell / h_prev as the CPU
// kernels in csrc/cpu/lstm_cpu.cpp (see the schema comments in csrc/ops.cpp).
//
// Host work per call: lengths are copied to the host at most once (not at
// all when they are already on the CPU), the LengthPlan is built there, and
// the index vectors the device needs go up in one host-to-device copy from
// pinned memory. The step loop then only enqueues work: no synchronization.
//
// dtypes: float32, float64, float16, bfloat16. For half/bfloat16 the cell
// state carried across steps and the saved `cell` are float32 (acc_t), as
// the fake kernel in seqcls_fast/_ops.py declares; h, the gates and every
// GEMM operand stay in the storage dtype.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "../lstm_common.h"
#include "lstm_cell_cuda.cuh"

namespace seqcls_fast::cuda {
namespace {

using at::Tensor;
using c10::optional;

void check_cuda(const Tensor& t, const char* name) {
  SEQCLS_CHECK_VALUE(t.device().is_cuda(), name, " must be on a CUDA device for the CUDA kernel, got ",
                     t.device());
}

// The step kernels index a step's [rows, 4H] slice with 32-bit integers.
void check_index_range(int64_t batch, int64_t hidden) {
  SEQCLS_CHECK_VALUE(batch * 4 * hidden < std::numeric_limits<int32_t>::max(),
                     "B * 4H must be below 2^31 for the CUDA kernel, got B = ", batch, ", H = ",
                     hidden);
}

// lengths on the host: the caller's tensor when it is already there, else
// one device-to-host copy (the only synchronization of the op).
optional<Tensor> lengths_on_host(const optional<Tensor>& lengths) {
  if (!lengths.has_value() || lengths->device().is_cpu()) return lengths;
  return lengths->to(at::kCPU);
}

// The parts of a LengthPlan the device needs, all views of one int64 tensor
// uploaded with a single copy. order / inverse_order are undefined when the
// sorted order is the identity; packed_time / packed_batch when the packed
// rows are simply x.view(T * B, I) (forward over full rows).
struct DevicePlan {
  Tensor order;           // [B] sorted row -> caller row
  Tensor inverse_order;   // [B] caller row -> sorted row
  Tensor sorted_lengths;  // [B]
  Tensor packed_time;     // [N] time index of each packed row
  Tensor packed_batch;    // [N] caller row of each packed row
};

DevicePlan upload_plan(const LengthPlan& plan, bool reverse, const at::Device& device) {
  const int64_t B = plan.sorted_lengths.numel(), N = plan.packed_rows;
  const bool permuted = plan.order.defined();
  const bool gathered = !plan.packed_is_time_major(reverse);
  const int64_t total = B * (permuted ? 3 : 1) + N * (gathered ? 2 : 0);
  Tensor host = at::empty({total}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* dst = host.data_ptr<int64_t>();
  const auto append = [&dst](const Tensor& t) {
    std::memcpy(dst, t.const_data_ptr<int64_t>(), t.numel() * sizeof(int64_t));
    dst += t.numel();
  };
  append(plan.sorted_lengths);
  if (permuted) {
    append(plan.order);
    const int64_t* order = plan.order.const_data_ptr<int64_t>();
    for (int64_t j = 0; j < B; ++j) dst[order[j]] = j;
    dst += B;
  }
  if (gathered) {
    append(plan.packed_time);
    append(plan.packed_batch);
  }
  // Pinned source + non_blocking: the copy is ordered on the current stream
  // and the caching host allocator keeps `host` alive until it completes.
  const Tensor dev = host.to(device, at::kLong, /*non_blocking=*/true);
  DevicePlan out;
  int64_t at_row = 0;
  const auto take = [&](int64_t n) {
    Tensor view = dev.narrow(0, at_row, n);
    at_row += n;
    return view;
  };
  out.sorted_lengths = take(B);
  if (permuted) {
    out.order = take(B);
    out.inverse_order = take(B);
  }
  if (gathered) {
    out.packed_time = take(N);
    out.packed_batch = take(N);
  }
  return out;
}

// A contiguous copy of `t` ([B, H], caller order) in sorted order and `dtype`;
// the op mutates it.
Tensor sorted_copy(const Tensor& t, const DevicePlan& dev, at::ScalarType dtype) {
  Tensor out = at::empty(t.sizes(), t.options().dtype(dtype));
  out.copy_(dev.order.defined() ? t.index_select(0, dev.order) : t);
  return out;
}

// Sorted rows back in caller order (a gather through the inverse permutation).
Tensor from_sorted(const Tensor& sorted, const DevicePlan& dev) {
  return dev.inverse_order.defined() ? sorted.index_select(0, dev.inverse_order) : sorted;
}

// Packed-row indices on the device; none when the packed rows are x's own rows.
PackedIndex packed_index(const DevicePlan& dev) { return {dev.packed_time, dev.packed_batch}; }

void zero_output_padding(Tensor& output, const LengthPlan& plan, const DevicePlan& dev) {
  if (plan.all_full) return;
  const int64_t T = output.size(0), B = output.size(1), H = output.size(2);
  const int threads = static_cast<int>(std::min<int64_t>(256, (H + 31) / 32 * 32));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* order = dev.order.defined() ? dev.order.const_data_ptr<int64_t>() : nullptr;
  const int64_t* sorted = dev.sorted_lengths.const_data_ptr<int64_t>();
  const auto launch = [&](auto word) {
    using word_t = decltype(word);
    zero_output_padding_kernel<word_t><<<static_cast<unsigned int>(B), threads, 0, stream>>>(
        static_cast<word_t*>(output.data_ptr()), order, sorted, T, B, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (output.element_size()) {
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 8: launch(uint64_t{}); break;
    default: TORCH_INTERNAL_ASSERT(false, "unexpected element size ", output.element_size());
  }
}

unsigned int step_blocks(int64_t rows, int64_t hidden) {
  return static_cast<unsigned int>((rows * hidden + kStepThreads - 1) / kStepThreads);
}

template <typename T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_forward_cuda(
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, bool reverse,
    bool save_activations) {
  const LstmSizes sz = check_lstm_forward_inputs(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh);
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t T = sz.steps_total, B = sz.batch, H = sz.hidden;
  check_index_range(B, H);
  const at::ScalarType dtype = x.scalar_type();
  const auto opts = x.options();
  const at::ScalarType state_dtype = at::toOpMathType(dtype);
  const auto state_opts = opts.dtype(state_dtype);
  if (B == 0) {  // nothing to run; every output is empty
    return {at::empty({T, 0, H}, opts),         at::empty({0, H}, opts),
            at::empty({0, H}, opts),            at::empty({0, 4 * H}, opts),
            at::empty({0, H}, state_opts),       at::empty({0, H}, opts)};
  }
  const LengthPlan plan = make_length_plan(lengths_on_host(lengths), T, B, reverse);
  const DevicePlan dev = upload_plan(plan, reverse, x.device());
  const int64_t N = plan.packed_rows;  // >= B > 0: every length is at least 1

  Tensor output = at::empty({T, B, H}, opts);
  const int64_t kept_rows = save_activations ? N : 0;
  Tensor gates = at::empty({kept_rows, 4 * H}, opts);
  Tensor cell = at::empty({kept_rows, H}, state_opts);
  Tensor h_prev = at::empty({kept_rows, H}, opts);
  // Inference returns no gates: they live in scratch.
  Tensor gates_work = save_activations ? gates : at::empty({N, 4 * H}, opts);
  zero_output_padding(output, plan, dev);
  Tensor h_state = h0.has_value() ? sorted_copy(*h0, dev, dtype) : at::zeros({B, H}, opts);
  Tensor c_state = c0.has_value() ? sorted_copy(*c0, dev, state_dtype)
                                  : at::zeros({B, H}, state_opts);

  // 1. Input projection of every valid step in one GEMM, both biases folded in.
  Tensor gates_valid = gates_work.narrow(0, 0, N);
  const Tensor x_packed = pack_rows(x, N, packed_index(dev));
  if (b_ih.has_value()) {
    at::addmm_out(gates_valid, b_ih->add(*b_hh), x_packed, w_ih.t());
  } else {
    at::mm_out(gates_valid, x_packed, w_ih.t());
  }
  if (save_activations) h_prev.narrow(0, 0, B).copy_(h_state);

  // 2. The recurrence on the length-sorted active prefix: per step one GEMM
  // accumulating h_{s-1} W_hh^T into that step's packed gate rows, then the
  // fused cell kernel, both on the current stream.
  const Tensor w_hh_t = w_hh.t();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "lstm_layer_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    LstmForwardStepParams<scalar_t, acc_t> p{};
    p.hidden = static_cast<int32_t>(H);
    p.batch = B;
    p.reverse = reverse;
    p.order = ptr_or_null<int64_t>(dev.order);
    p.sorted_lengths = dev.sorted_lengths.data_ptr<int64_t>();
    p.h_state = h_state.data_ptr<scalar_t>();
    p.c_state = c_state.data_ptr<acc_t>();
    p.output = output.data_ptr<scalar_t>();
    scalar_t* const gates_base = gates_work.data_ptr<scalar_t>();
    acc_t* const cell_base = save_activations ? cell.data_ptr<acc_t>() : nullptr;
    scalar_t* const h_prev_base = save_activations ? h_prev.data_ptr<scalar_t>() : nullptr;
    for (int64_t s = 0; s < plan.steps; ++s) {
      const int64_t rows = plan.active[s], begin = plan.offset[s];
      if (s > 0 || h0.has_value()) {
        Tensor gates_step = gates_work.narrow(0, begin, rows);
        gates_step.addmm_(h_state.narrow(0, 0, rows), w_hh_t);
      }
      p.step = s;
      p.rows = static_cast<int32_t>(rows);
      p.rows_next = s + 1 < plan.steps ? static_cast<int32_t>(plan.active[s + 1]) : 0;
      p.gates = gates_base + begin * 4 * H;
      p.cell = cell_base != nullptr ? cell_base + begin * H : nullptr;
      p.h_prev_next = h_prev_base != nullptr && p.rows_next > 0
                          ? h_prev_base + plan.offset[s + 1] * H
                          : nullptr;
      lstm_forward_step_kernel<scalar_t, acc_t>
          <<<step_blocks(rows, H), kStepThreads, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {output,
          from_sorted(h_state, dev),
          from_sorted(c_state.to(dtype), dev),
          gates,
          cell,
          h_prev};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& x,
    const optional<Tensor>& lengths, const optional<Tensor>& c0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& gates, const Tensor& cell, const Tensor& h_prev,
    bool reverse, bool compute_grad_x) {
  const LstmSizes sz = check_lstm_forward_inputs(x, lengths, c10::nullopt, c0, w_ih, w_hh,
                                                 c10::nullopt, c10::nullopt);
  check_cuda(x, "x");
  const int64_t T = sz.steps_total, B = sz.batch, I = sz.input_size, H = sz.hidden;
  check_shape(grad_output, {T, B, H}, "grad_output");
  check_shape(grad_h_n, {B, H}, "grad_h_n");
  check_shape(grad_c_n, {B, H}, "grad_c_n");
  SEQCLS_CHECK_VALUE(gates.dim() == 2, "gates must have shape [N, 4H], got ", gates.sizes());
  check_shape(gates, {gates.size(0), 4 * H}, "gates");
  check_shape(cell, {gates.size(0), H}, "cell");
  check_shape(h_prev, {gates.size(0), H}, "h_prev");
  // The kernels read these through typed pointers: dtypes must be exact.
  check_same_kind(grad_output, "grad_output", x, "x");
  check_same_kind(grad_h_n, "grad_h_n", x, "x");
  check_same_kind(grad_c_n, "grad_c_n", x, "x");
  check_same_kind(gates, "gates", x, "x");
  check_same_kind(h_prev, "h_prev", x, "x");
  const at::ScalarType dtype = x.scalar_type();
  const at::ScalarType state_dtype = at::toOpMathType(dtype);
  SEQCLS_CHECK_TYPE(cell.scalar_type() == state_dtype, "cell must have dtype ", state_dtype,
                    " (the forward's cell state for x of dtype ", dtype, "), got ",
                    cell.scalar_type());
  SEQCLS_CHECK_VALUE(cell.device() == x.device(), "cell must be on the device of x (",
                     x.device(), "), got ", cell.device());
  const c10::cuda::CUDAGuard device_guard(x.device());
  check_index_range(B, H);
  const auto opts = x.options();
  const auto state_opts = opts.dtype(state_dtype);

  if (B == 0) {
    return {at::zeros({T, 0, I}, opts),   at::empty({0, H}, opts),      at::empty({0, H}, opts),
            at::zeros({4 * H, I}, opts),  at::zeros({4 * H, H}, opts),  at::zeros({4 * H}, opts)};
  }
  const LengthPlan plan = make_length_plan(lengths_on_host(lengths), T, B, reverse);
  const DevicePlan dev = upload_plan(plan, reverse, x.device());
  const int64_t N = plan.packed_rows;
  check_shape(gates, {N, 4 * H}, "gates");

  Tensor grad_h_state = sorted_copy(grad_h_n, dev, dtype);
  Tensor grad_c_state = sorted_copy(grad_c_n, dev, state_dtype);
  const Tensor gates_c = gates.contiguous(), cell_c = cell.contiguous();
  const Tensor h_prev_c = h_prev.contiguous();
  // Read through its T and B strides (an expanded or sliced gradient needs no
  // copy) as long as H is unit-stride.
  const Tensor grad_out = grad_output.stride(2) == 1 || H == 1 ? grad_output
                                                               : grad_output.contiguous();
  const Tensor c0_sorted =
      c0.has_value() ? sorted_copy(*c0, dev, state_dtype) : at::zeros({B, H}, state_opts);
  Tensor grad_gates = at::empty({N, 4 * H}, opts);  // every row written below

  // 1. The recurrence backward, steps in reverse, on the active prefix.
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "lstm_layer_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    LstmBackwardStepParams<scalar_t, acc_t> p{};
    p.hidden = static_cast<int32_t>(H);
    p.batch = B;
    p.reverse = reverse;
    p.order = ptr_or_null<int64_t>(dev.order);
    p.sorted_lengths = dev.sorted_lengths.data_ptr<int64_t>();
    p.grad_output = grad_out.const_data_ptr<scalar_t>();
    p.grad_output_stride_t = grad_out.stride(0);
    p.grad_output_stride_b = grad_out.stride(1);
    p.grad_h_state = grad_h_state.const_data_ptr<scalar_t>();
    p.grad_c_state = grad_c_state.data_ptr<acc_t>();
    const scalar_t* const gates_base = gates_c.const_data_ptr<scalar_t>();
    const acc_t* const cell_base = cell_c.const_data_ptr<acc_t>();
    scalar_t* const grad_gates_base = grad_gates.data_ptr<scalar_t>();
    for (int64_t s = plan.steps - 1; s >= 0; --s) {
      const int64_t rows = plan.active[s], begin = plan.offset[s];
      p.step = s;
      p.rows = static_cast<int32_t>(rows);
      p.gates = gates_base + begin * 4 * H;
      p.cell = cell_base + begin * H;
      p.cell_prev = s == 0 ? c0_sorted.const_data_ptr<acc_t>()
                           : cell_base + plan.offset[s - 1] * H;
      p.grad_gates = grad_gates_base + begin * 4 * H;
      lstm_backward_step_kernel<scalar_t, acc_t>
          <<<step_blocks(rows, H), kStepThreads, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // dL/dh_{s-1} = dG_s W_hh for the rows active at s; the others keep the
      // gradient they were given until their own last step comes up.
      Tensor grad_h_rows = grad_h_state.narrow(0, 0, rows);
      at::mm_out(grad_h_rows, grad_gates.narrow(0, begin, rows), w_hh);
    }
  });

  // 2. Weight and input gradients as single GEMMs over all valid steps.
  const LstmGemmGrads g = lstm_gemm_grads(grad_gates, x, h_prev_c.narrow(0, 0, N), w_ih,
                                          packed_index(dev), compute_grad_x);
  return {g.grad_x,    from_sorted(grad_h_state, dev), from_sorted(grad_c_state.to(dtype), dev),
          g.grad_w_ih, g.grad_w_hh,                    g.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(seqcls_fast, CUDA, m) {
  m.impl("lstm_layer_forward", &lstm_layer_forward_cuda);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cuda);
}

}  // namespace seqcls_fast::cuda
