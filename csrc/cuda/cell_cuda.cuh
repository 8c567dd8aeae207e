// The pointwise half of one recurrence step on the GPU, for the LSTM, the GRU
// and the Elman RNN, and the online-pooling step and padding zeroing: the
// kernels. The
// parameters are the driver's (../recurrent_step.h); the GEMMs are the driver's
// too (cuBLAS through ATen). No ATen here: the emulator's sanitizer drivers
// (tests/cuda_emu/) compile these kernels alone.
//
// One thread per (row, hidden unit) of the step's active prefix. The math is
// cell.h's (lstm_cell_*, gru_cell_*, rnn_cell_*), evaluated
// in acc_t (float for half/bfloat16 storage, else the storage type). Buffers
// marked "packed" are slices of the op's [N, ...] tensors starting at the
// step's first packed row; "sorted" buffers are indexed by sorted row j.
// Every buffer except grad_output is contiguous and allocated by the op, so
// its strides are implied by the shape in its comment. Indices inside a step
// fit in 32 bits (the host checks B * 4H < 2^31); offsets into the [T, B, H]
// tensors are 64-bit.
#pragma once

#include <cstdint>

#include "../cell.h"
#include "../recurrent_step.h"
#include "../online_pool.h"
#include "kernel_compat.cuh"

namespace seqcls_fast::SEQCLS_CUDA_NS {

constexpr int kStepThreads = 256;

// The thread with flat index idx < rows * H owns hidden unit k of sorted row
// j (where that row's step lives in [T, B, ...] tensors: recurrent_step.h).
struct StepUnit {
  int32_t j, k;
};

__device__ __forceinline__ StepUnit step_unit(int32_t idx, int32_t hidden) {
  const int32_t j = idx / hidden;
  return {j, idx - j * hidden};
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kStepThreads)
    lstm_forward_step_kernel(const ForwardStep p) {
  const int32_t H = static_cast<int32_t>(p.hidden);
  const int32_t idx = static_cast<int32_t>(blockIdx.x) * kStepThreads + threadIdx.x;
  if (idx >= static_cast<int32_t>(p.rows) * H) return;
  const auto [j, k] = step_unit(idx, H);
  acc_t* const c_state = static_cast<acc_t*>(p.c_state);

  scalar_t* g = static_cast<scalar_t*>(p.gates) + static_cast<int64_t>(j) * 4 * H + k;
  acc_t i, f, gg, o, c, h;
  lstm_cell_forward<acc_t>(static_cast<acc_t>(g[0]), static_cast<acc_t>(g[H]),
                           static_cast<acc_t>(g[2 * H]), static_cast<acc_t>(g[3 * H]),
                           c_state[idx], i, f, gg, o, c, h);
  g[0] = static_cast<scalar_t>(i);
  g[H] = static_cast<scalar_t>(f);
  g[2 * H] = static_cast<scalar_t>(gg);
  g[3 * H] = static_cast<scalar_t>(o);
  const scalar_t h_out = static_cast<scalar_t>(h);
  c_state[idx] = c;  // row j of a [*, H] buffer: element j * H + k == idx
  static_cast<scalar_t*>(p.h_state)[idx] = h_out;
  if (p.output != nullptr) static_cast<scalar_t*>(p.output)[output_offset(p, j, p.step) + k] = h_out;
  if (p.cell != nullptr) static_cast<acc_t*>(p.cell)[idx] = c;
  if (p.h_prev_next != nullptr && j < p.rows_next) static_cast<scalar_t*>(p.h_prev_next)[idx] = h_out;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kStepThreads)
    lstm_backward_step_kernel(const BackwardStep p) {
  const int32_t H = static_cast<int32_t>(p.hidden);
  const int32_t idx = static_cast<int32_t>(blockIdx.x) * kStepThreads + threadIdx.x;
  if (idx >= static_cast<int32_t>(p.rows) * H) return;
  const auto [j, k] = step_unit(idx, H);
  const auto* grad_output = static_cast<const scalar_t*>(p.grad_output);
  const auto* cell = static_cast<const acc_t*>(p.cell);
  const auto* cell_prev = static_cast<const acc_t*>(p.cell_prev);
  auto* grad_c_state = static_cast<acc_t*>(p.grad_c_state);

  const scalar_t* g = static_cast<const scalar_t*>(p.gates) + static_cast<int64_t>(j) * 4 * H + k;
  const acc_t dh = static_cast<acc_t>(static_cast<const scalar_t*>(p.grad_h_state)[idx]) +
                   static_cast<acc_t>(grad_output[grad_output_offset(p, j, p.step) + k]);
  acc_t di, df, dg, d_o, dc_prev;
  lstm_cell_backward<acc_t>(static_cast<acc_t>(g[0]), static_cast<acc_t>(g[H]),
                            static_cast<acc_t>(g[2 * H]), static_cast<acc_t>(g[3 * H]),
                            cell[idx], cell_prev[idx], dh, grad_c_state[idx], di, df, dg, d_o,
                            dc_prev);
  scalar_t* dgates = static_cast<scalar_t*>(p.grad_gates) + static_cast<int64_t>(j) * 4 * H + k;
  dgates[0] = static_cast<scalar_t>(di);
  dgates[H] = static_cast<scalar_t>(df);
  dgates[2 * H] = static_cast<scalar_t>(dg);
  dgates[3 * H] = static_cast<scalar_t>(d_o);
  grad_c_state[idx] = dc_prev;
}

// The GRU's forward step: gates [rows, 3H] pre-activations x W_ih^T + b_ih
// in, activated r, z, n out; recurrent [rows, 3H] h_{s-1} W_hh^T + b_hh;
// h_state in: h_{s-1}, out: h_s; cell (kept) out: h_{s-1} W_hn^T + b_hn.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kStepThreads)
    gru_forward_step_kernel(const ForwardStep p) {
  const int32_t H = static_cast<int32_t>(p.hidden);
  const int32_t idx = static_cast<int32_t>(blockIdx.x) * kStepThreads + threadIdx.x;
  if (idx >= static_cast<int32_t>(p.rows) * H) return;
  const auto [j, k] = step_unit(idx, H);
  const int64_t gate0 = static_cast<int64_t>(j) * 3 * H + k;
  scalar_t* g = static_cast<scalar_t*>(p.gates) + gate0;
  const scalar_t* rec = static_cast<const scalar_t*>(p.recurrent) + gate0;
  scalar_t* const h_state = static_cast<scalar_t*>(p.h_state);
  const acc_t h_n = static_cast<acc_t>(rec[2 * H]);
  acc_t r, z, n, h;
  gru_cell_forward<acc_t>(static_cast<acc_t>(g[0]), static_cast<acc_t>(g[H]),
                          static_cast<acc_t>(g[2 * H]), static_cast<acc_t>(rec[0]),
                          static_cast<acc_t>(rec[H]), h_n, static_cast<acc_t>(h_state[idx]), r,
                          z, n, h);
  g[0] = static_cast<scalar_t>(r);
  g[H] = static_cast<scalar_t>(z);
  g[2 * H] = static_cast<scalar_t>(n);
  const scalar_t h_out = static_cast<scalar_t>(h);
  h_state[idx] = h_out;  // row j of a [*, H] buffer: element j * H + k == idx
  if (p.output != nullptr) static_cast<scalar_t*>(p.output)[output_offset(p, j, p.step) + k] = h_out;
  if (p.cell != nullptr) static_cast<acc_t*>(p.cell)[idx] = h_n;
  if (p.h_prev_next != nullptr && j < p.rows_next) static_cast<scalar_t*>(p.h_prev_next)[idx] = h_out;
}

// The GRU's backward step: grad_gates [rows, 3H] gets the input part's
// gradients, grad_recurrent [rows, 3H] the recurrent part's, and grad_h_state
// (in: dL/dh_s through W_hh) the part of dL/dh_{s-1} that skips W_hh.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kStepThreads)
    gru_backward_step_kernel(const BackwardStep p) {
  const int32_t H = static_cast<int32_t>(p.hidden);
  const int32_t idx = static_cast<int32_t>(blockIdx.x) * kStepThreads + threadIdx.x;
  if (idx >= static_cast<int32_t>(p.rows) * H) return;
  const auto [j, k] = step_unit(idx, H);
  const int64_t gate0 = static_cast<int64_t>(j) * 3 * H + k;
  const scalar_t* g = static_cast<const scalar_t*>(p.gates) + gate0;
  auto* grad_h = static_cast<scalar_t*>(p.grad_h_state);
  const acc_t dh = static_cast<acc_t>(grad_h[idx]) +
                   static_cast<acc_t>(static_cast<const scalar_t*>(
                       p.grad_output)[grad_output_offset(p, j, p.step) + k]);
  acc_t d_r, d_z, d_xn, d_hn, dh_direct;
  gru_cell_backward<acc_t>(static_cast<acc_t>(g[0]), static_cast<acc_t>(g[H]),
                           static_cast<acc_t>(g[2 * H]), static_cast<const acc_t*>(p.cell)[idx],
                           static_cast<acc_t>(static_cast<const scalar_t*>(p.h_prev)[idx]), dh,
                           d_r, d_z, d_xn, d_hn, dh_direct);
  scalar_t* dg = static_cast<scalar_t*>(p.grad_gates) + gate0;
  scalar_t* drec = static_cast<scalar_t*>(p.grad_recurrent) + gate0;
  dg[0] = drec[0] = static_cast<scalar_t>(d_r);
  dg[H] = drec[H] = static_cast<scalar_t>(d_z);
  dg[2 * H] = static_cast<scalar_t>(d_xn);
  drec[2 * H] = static_cast<scalar_t>(d_hn);
  grad_h[idx] = static_cast<scalar_t>(dh_direct);
}

// The Elman RNN's forward step (tanh or, kRelu, relu): gates [rows, H]
// pre-activations in (with the recurrent product and both biases), h_s out;
// h_state, output and h_prev_next as the LSTM's. Nothing else is kept.
template <typename scalar_t, typename acc_t, bool kRelu>
__global__ void __launch_bounds__(kStepThreads)
    rnn_forward_step_kernel(const ForwardStep p) {
  const int32_t H = static_cast<int32_t>(p.hidden);
  const int32_t idx = static_cast<int32_t>(blockIdx.x) * kStepThreads + threadIdx.x;
  if (idx >= static_cast<int32_t>(p.rows) * H) return;
  const auto [j, k] = step_unit(idx, H);
  scalar_t* g = static_cast<scalar_t*>(p.gates);  // [rows, H]: element idx is (j, k)
  const scalar_t h_out = static_cast<scalar_t>(rnn_cell_forward<kRelu>(static_cast<acc_t>(g[idx])));
  g[idx] = h_out;
  static_cast<scalar_t*>(p.h_state)[idx] = h_out;
  if (p.output != nullptr) static_cast<scalar_t*>(p.output)[output_offset(p, j, p.step) + k] = h_out;
  if (p.h_prev_next != nullptr && j < p.rows_next) static_cast<scalar_t*>(p.h_prev_next)[idx] = h_out;
}

// Its backward step: grad_gates [rows, H] = act'(h_s) (dh + dL/d output).
template <typename scalar_t, typename acc_t, bool kRelu>
__global__ void __launch_bounds__(kStepThreads)
    rnn_backward_step_kernel(const BackwardStep p) {
  const int32_t H = static_cast<int32_t>(p.hidden);
  const int32_t idx = static_cast<int32_t>(blockIdx.x) * kStepThreads + threadIdx.x;
  if (idx >= static_cast<int32_t>(p.rows) * H) return;
  const auto [j, k] = step_unit(idx, H);
  const acc_t dh = static_cast<acc_t>(static_cast<const scalar_t*>(p.grad_h_state)[idx]) +
                   static_cast<acc_t>(static_cast<const scalar_t*>(
                       p.grad_output)[grad_output_offset(p, j, p.step) + k]);
  const acc_t h = static_cast<acc_t>(static_cast<const scalar_t*>(p.gates)[idx]);
  static_cast<scalar_t*>(p.grad_gates)[idx] = static_cast<scalar_t>(rnn_cell_backward<kRelu>(h, dh));
}

constexpr int kPoolStepThreads = 128;

// Row j's online-pooling step on its h_s (h_row [H]) and keys (key [A]),
// by the whole block: the block reduces score = key . query in acc_t, one
// thread merges it into the row's (max, denom) with online_pool.h's rule,
// then every thread rescales its units of the row's weighted sum. Mean
// pooling only adds h_s. Ends with the block's threads past every read of
// its shared values, so the block may pool its next step at once.
template <typename scalar_t, typename acc_t>
__device__ void pool_row_step(const PoolStep& p, int64_t j, const scalar_t* h_row,
                              const scalar_t* key) {
  const int64_t H = p.hidden, A = p.key_size;
  acc_t* acc = static_cast<acc_t*>(p.sum) + j * H;
  if (p.pooling == OnlinePooling::kMean) {
    for (int64_t k = threadIdx.x; k < H; k += kPoolStepThreads) acc[k] += static_cast<acc_t>(h_row[k]);
    return;
  }
  const scalar_t* query = static_cast<const scalar_t*>(p.query);
  acc_t dot = 0;
  for (int64_t a = threadIdx.x; a < A; a += kPoolStepThreads) {
    dot += static_cast<acc_t>(key[a]) * static_cast<acc_t>(query[a]);
  }
  for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_down_sync(0xffffffffu, dot, offset);
  __shared__ acc_t warp_dots[kPoolStepThreads / 32];
  __shared__ acc_t keep_weight[2];
  if (threadIdx.x % 32 == 0) warp_dots[threadIdx.x / 32] = dot;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t score = 0;
    for (int w = 0; w < kPoolStepThreads / 32; ++w) score += warp_dots[w];
    online_softmax_merge(score, static_cast<acc_t*>(p.max)[j], static_cast<acc_t*>(p.denom)[j],
                         keep_weight[0], keep_weight[1]);
  }
  __syncthreads();
  const acc_t keep = keep_weight[0], weight = keep_weight[1];
  for (int64_t k = threadIdx.x; k < H; k += kPoolStepThreads) {
    acc[k] = acc[k] * keep + weight * static_cast<acc_t>(h_row[k]);
  }
  __syncthreads();  // keep_weight is read: the next step may overwrite it
}

// One online-pooling step (PoolStep), one block per row (the step's active
// rows, as the device counts them).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPoolStepThreads) lstm_pool_step_kernel(const PoolStep p) {
  const int64_t j = blockIdx.x;
  if (j >= p.active[p.step]) return;  // past its length (rows: an upper bound); the whole block
  pool_row_step<scalar_t, acc_t>(p, j, static_cast<const scalar_t*>(p.h) + j * p.hidden,
                                 static_cast<const scalar_t*>(p.keys) + j * p.key_size);
}

// The pooling of steps [p.step, end_step) of a persistent segment, in one
// launch: block j pools row j's steps in order (as the per-step kernel
// would, the same sums) until its row stops. p.h and p.keys hold the
// segment's packed rows from packed row p.offset[p.step].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPoolStepThreads)
    pool_segment_kernel(const PoolStep p, int64_t end_step) {
  const int64_t j = blockIdx.x, base = p.offset[p.step];
  for (int64_t s = p.step; s < end_step && j < p.active[s]; ++s) {  // uniform in the block
    const int64_t row = p.offset[s] - base + j;
    pool_row_step<scalar_t, acc_t>(p, j, static_cast<const scalar_t*>(p.h) + row * p.hidden,
                                   static_cast<const scalar_t*>(p.keys) + row * p.key_size);
  }
}

// output[t, order[j], :] = 0 for t >= sorted_lengths[j]: the padding a
// PackedSequence does not have. One block per sorted row; only padding is
// written. word_t is an unsigned type of the element's size (zero is all-zero
// bits in every floating dtype), so one instantiation serves several dtypes.
template <typename word_t>
__global__ void zero_output_padding_kernel(word_t* output,                 // [T, B, H]
                                           const int64_t* order,           // [B]; nullptr: identity
                                           const int64_t* sorted_lengths,  // [B]
                                           int64_t steps_total,            // T
                                           int64_t batch,                  // B
                                           int64_t hidden) {               // H
  const int64_t j = blockIdx.x;
  const int64_t r = order != nullptr ? order[j] : j;
  for (int64_t t = sorted_lengths[j]; t < steps_total; ++t) {
    word_t* row = output + (t * batch + r) * hidden;
    for (int64_t k = threadIdx.x; k < hidden; k += blockDim.x) row[k] = word_t(0);
  }
}

}  // namespace seqcls_fast::SEQCLS_CUDA_NS
