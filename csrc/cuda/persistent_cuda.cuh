// The persistent CUDA recurrence (RecurrentBackend::forward_recurrence and
// backward_recurrence): one cooperative launch runs a segment of steps of an
// LSTM layer-direction, the recurrent product fused with the cell (forward)
// or with the cell backward (backward: dh_s = dG_{s+1} W_hh summed for the
// block's units, which are then the columns of W_hh it keeps). The schedule is the CPU tile's
// (../cpu/recurrence_cpu_tile.h): block b owns hidden units [b U, b U + U)
// and all four gates of them, so the cell update is local; its rows of W_hh
// ([4][U][H], 16 U H bytes of float) stay in dynamic shared memory for every
// step; h_s goes through global memory (two buffers, alternating by step:
// nobody overwrites an h_{s-1} another block may still read), and the blocks
// meet once per step at grid_sync. The step's active rows and packed offset
// come from the plan on the device (active_device, offset_device): the
// kernel reads no host memory. Each (row, unit) is one thread's, its sums in
// a fixed order: results do not depend on the block order or the timing.
//
// Only dynamic shared memory (the emulator runs a cooperative grid's blocks
// at once, and a static __shared__ there would be one for all of them).
// Never run on a GPU so far: verified on the CUDA emulator (tests/
// test_cuda_emu.py, tests named persistent).
#pragma once

#include <cstdint>

#include "../cell.h"
#include "../recurrent_step.h"
#include "kernel_compat.cuh"

namespace seqcls_fast::SEQCLS_CUDA_NS {

constexpr int kPersistentThreads = 128;

// The block's rows of W_hh: w[(g * U + u) * H + k] = W_hh[g H + u0 + u][k].
template <typename scalar_t, typename acc_t>
__device__ void load_block_weights(const scalar_t* w_hh,  // [4H, H]
                                   acc_t* w,               // [4][U][H] shared
                                   int32_t H, int32_t U, int32_t u0, int32_t units) {
  const int32_t per_gate = units * H;
  for (int32_t i = threadIdx.x; i < 4 * per_gate; i += blockDim.x) {
    const int32_t g = i / per_gate, rest = i - g * per_gate, u = rest / H, k = rest - u * H;
    w[(g * U + u) * H + k] = static_cast<acc_t>(w_hh[static_cast<int64_t>(g * H + u0 + u) * H + k]);
  }
}

// Row j, unit u0 + u of step s: the product h_{s-1} W_hh^T (when `product`)
// plus the projection in `gates_row`, then the cell and every output.
template <typename scalar_t, typename acc_t>
__device__ void lstm_persistent_unit(const ForwardRecurrence& r, const acc_t* w, int32_t U,
                                     int32_t u, int32_t unit, int64_t j, int64_t s,
                                     int64_t packed_row, int64_t rows_next, bool product,
                                     const scalar_t* h_in, scalar_t* h_out) {
  const int32_t H = static_cast<int32_t>(r.hidden);
  acc_t pre[4] = {0, 0, 0, 0};
  if (product) {
    const scalar_t* h_row = h_in + j * H;
    for (int32_t k = 0; k < H; ++k) {
      const acc_t hk = static_cast<acc_t>(h_row[k]);
#pragma unroll
      for (int g = 0; g < 4; ++g) pre[g] += hk * w[(g * U + u) * H + k];
    }
  }
  scalar_t* gates = static_cast<scalar_t*>(r.gates) + packed_row * 4 * H + unit;
#pragma unroll
  for (int g = 0; g < 4; ++g) pre[g] += static_cast<acc_t>(gates[g * H]);
  acc_t* c_state = static_cast<acc_t*>(r.c_state) + j * H + unit;
  acc_t i, f, gg, o, c, h;
  lstm_cell_forward<acc_t>(pre[0], pre[1], pre[2], pre[3], *c_state, i, f, gg, o, c, h);
  *c_state = c;
  const scalar_t h_value = static_cast<scalar_t>(h);
  h_out[j * H + unit] = h_value;
  if (r.output != nullptr) static_cast<scalar_t*>(r.output)[output_offset(r, j, s) + unit] = h_value;
  if (r.h_packed != nullptr) static_cast<scalar_t*>(r.h_packed)[packed_row * H + unit] = h_value;
  if (r.cell != nullptr) {  // what the backward keeps
    gates[0] = static_cast<scalar_t>(i);
    gates[H] = static_cast<scalar_t>(f);
    gates[2 * H] = static_cast<scalar_t>(gg);
    gates[3 * H] = static_cast<scalar_t>(o);
    static_cast<acc_t*>(r.cell)[packed_row * H + unit] = c;
  }
  if (r.h_prev != nullptr && j < rows_next) {
    static_cast<scalar_t*>(r.h_prev)[(r.offset_device[s + 1] - r.row0 + j) * H + unit] = h_value;
  }
}

// Steps [r.step, r.end_step) of an LSTM layer-direction; gridDim.x blocks of
// U = units_per_block units (the last may have fewer, or none), dynamic
// shared memory 16 U H bytes (acc_t float) for the block's W_hh rows.
// r.w_hh_packed is W_hh [4H, H] in x's dtype; h_swap [B, H] the second h buffer.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPersistentThreads)
    lstm_persistent_forward_kernel(const ForwardRecurrence r, scalar_t* h_swap,
                                   int32_t units_per_block) {
  const int32_t H = static_cast<int32_t>(r.hidden), U = units_per_block;
  const int32_t u0 = static_cast<int32_t>(blockIdx.x) * U;
  const int32_t units = u0 < H ? (H - u0 < U ? H - u0 : U) : 0;
  acc_t* w = dynamic_shared<acc_t>();
  load_block_weights(static_cast<const scalar_t*>(r.w_hh_packed), w, H, U, u0, units);
  __syncthreads();
  scalar_t* h_state = static_cast<scalar_t*>(r.h_state);
  for (int64_t s = r.step; s < r.end_step; ++s) {
    const bool even = (s - r.step) % 2 == 0;
    const int64_t rows = r.active_device[s], row_base = r.offset_device[s] - r.row0;
    const int64_t rows_next = s + 1 < r.steps ? r.active_device[s + 1] : 0;
    const scalar_t* h_in = r.h_in != nullptr ? static_cast<const scalar_t*>(r.h_in) + row_base * H
                           : even            ? h_state
                                             : h_swap;
    scalar_t* h_out = even ? h_swap : h_state;
    const bool product = s > r.step || r.product_at_first;
    for (int64_t item = threadIdx.x; item < rows * units; item += blockDim.x) {
      const int64_t j = item / units;
      const int32_t u = static_cast<int32_t>(item - j * units);
      lstm_persistent_unit<scalar_t, acc_t>(r, w, U, u, u0 + u, j, s, row_base + j, rows_next,
                                            product, h_in, h_out);
    }
    grid_sync();
  }
  // Rows whose last step here was an even one left h in h_swap: bring this
  // block's units back (every block is past its last read of h_state).
  for (int64_t s = r.step; s < r.end_step; s += 2) {
    const int64_t done_from = s + 1 < r.end_step ? r.active_device[s + 1] : 0;
    const int64_t count = (r.active_device[s] - done_from) * units;
    for (int64_t item = threadIdx.x; item < count; item += blockDim.x) {
      const int64_t j = done_from + item / units;
      const int32_t unit = u0 + static_cast<int32_t>(item % units);
      h_state[j * H + unit] = h_swap[j * H + unit];
    }
  }
}

// The block's columns of W_hh: w[n * U + u] = W_hh[n][u0 + u], n < 4H.
template <typename scalar_t, typename acc_t>
__device__ void load_block_columns(const scalar_t* w_hh,  // [4H, H]
                                   acc_t* w,               // [4H][U] shared
                                   int32_t H, int32_t U, int32_t u0, int32_t units) {
  for (int32_t i = threadIdx.x; i < 4 * H * units; i += blockDim.x) {
    const int32_t n = i / units, u = i - n * units;
    w[n * U + u] = static_cast<acc_t>(w_hh[static_cast<int64_t>(n) * H + u0 + u]);
  }
}

// dh of row j, column u0 + u: grad_next [.., 4H] (dG of the row's next step)
// times W_hh's column, summed over n in order.
template <typename scalar_t, typename acc_t>
__device__ acc_t column_product(const scalar_t* grad_next_row, const acc_t* w, int32_t H,
                                int32_t U, int32_t u) {
  acc_t sum = 0;
  for (int32_t n = 0; n < 4 * H; ++n) sum += static_cast<acc_t>(grad_next_row[n]) * w[n * U + u];
  return sum;
}

// The LSTM cell backward of row j, unit `unit` at step s, given dh (without
// the output's gradient): writes dG_s of the unit's 4 gates and dc_{s-1}.
template <typename scalar_t, typename acc_t>
__device__ void lstm_persistent_cell_backward(const BackwardRecurrence& r, int64_t j, int32_t unit,
                                              int64_t s, int64_t packed_row, acc_t dh) {
  const int32_t H = static_cast<int32_t>(r.hidden);
  const scalar_t* gates = static_cast<const scalar_t*>(r.gates) + packed_row * 4 * H + unit;
  const acc_t* cell = static_cast<const acc_t*>(r.cell);
  const acc_t c = cell[(r.offset_device[s] - r.cell_row0 + j) * H + unit];
  const acc_t c_prev = s == r.step && r.cell_before != nullptr
                           ? static_cast<const acc_t*>(r.cell_before)[j * H + unit]
                           : cell[(r.offset_device[s - 1] - r.cell_row0 + j) * H + unit];
  const scalar_t* dout = static_cast<const scalar_t*>(r.grad_output) + grad_output_offset(r, j, s);
  acc_t* grad_c = static_cast<acc_t*>(r.grad_c_state) + j * H + unit;
  acc_t di, df, dg, d_o, dc_prev;
  lstm_cell_backward<acc_t>(static_cast<acc_t>(gates[0]), static_cast<acc_t>(gates[H]),
                            static_cast<acc_t>(gates[2 * H]), static_cast<acc_t>(gates[3 * H]),
                            c, c_prev, dh + static_cast<acc_t>(dout[unit]), *grad_c, di, df, dg,
                            d_o, dc_prev);
  scalar_t* dgates = static_cast<scalar_t*>(r.grad_gates) + packed_row * 4 * H + unit;
  dgates[0] = static_cast<scalar_t>(di);
  dgates[H] = static_cast<scalar_t>(df);
  dgates[2 * H] = static_cast<scalar_t>(dg);
  dgates[3 * H] = static_cast<scalar_t>(d_o);
  *grad_c = dc_prev;
}

// Steps [r.step, r.end_step) of the LSTM backward, end_step - 1 down to step;
// the launch as the forward's, dynamic shared memory 16 U H bytes (acc_t
// float) for the block's columns of W_hh. Rows that run step s + 1 here get
// dh_s from dG_{s+1}; the others from grad_h_state (h_n's, or a later
// segment's). After the last step grad_h_state holds dG_step W_hh for the
// rows active at `step` (what the steps before this segment read).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPersistentThreads)
    lstm_persistent_backward_kernel(const BackwardRecurrence r, int32_t units_per_block) {
  const int32_t H = static_cast<int32_t>(r.hidden), U = units_per_block;
  const int32_t u0 = static_cast<int32_t>(blockIdx.x) * U;
  const int32_t units = u0 < H ? (H - u0 < U ? H - u0 : U) : 0;
  acc_t* w = dynamic_shared<acc_t>();
  load_block_columns(static_cast<const scalar_t*>(r.w_hh_packed), w, H, U, u0, units);
  __syncthreads();
  const scalar_t* grad_gates = static_cast<const scalar_t*>(r.grad_gates);
  scalar_t* grad_h = static_cast<scalar_t*>(r.grad_h_state);
  for (int64_t s = r.end_step - 1; s >= r.step; --s) {
    const int64_t rows = r.active_device[s], row_base = r.offset_device[s] - r.row0;
    const int64_t rows_next = s + 1 < r.end_step ? r.active_device[s + 1] : 0;
    const int64_t next_base = s + 1 < r.end_step ? r.offset_device[s + 1] - r.row0 : 0;
    for (int64_t item = threadIdx.x; item < rows * units; item += blockDim.x) {
      const int64_t j = item / units;
      const int32_t u = static_cast<int32_t>(item - j * units), unit = u0 + u;
      const acc_t dh = j < rows_next
                           ? column_product(grad_gates + (next_base + j) * 4 * H, w, H, U, u)
                           : static_cast<acc_t>(grad_h[j * H + unit]);
      lstm_persistent_cell_backward<scalar_t, acc_t>(r, j, unit, s, row_base + j, dh);
    }
    grid_sync();
  }
  // dh_{step-1} = dG_step W_hh for the rows active at `step`.
  const int64_t first_base = r.offset_device[r.step] - r.row0;
  for (int64_t item = threadIdx.x; item < r.active_device[r.step] * units; item += blockDim.x) {
    const int64_t j = item / units;
    const int32_t u = static_cast<int32_t>(item - j * units);
    grad_h[j * H + u0 + u] = static_cast<scalar_t>(
        column_product(grad_gates + (first_base + j) * 4 * H, w, H, U, u));
  }
}

}  // namespace seqcls_fast::SEQCLS_CUDA_NS
