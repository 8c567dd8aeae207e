// The persistent CUDA recurrence (RecurrentBackend::forward_recurrence and
// backward_recurrence): one cooperative launch runs a segment of steps of an
// LSTM or GRU layer-direction, the recurrent product fused with the cell
// (forward) or with the cell backward (backward: dh_s = dG_{s+1} W_hh summed
// for the block's units, which are then the columns of W_hh it keeps). The
// schedule is the CPU tile's (../cpu/recurrence_cpu_tile.h): block b owns
// hidden units [b U, b U + U) and all the gates of them (G = 4 for the LSTM,
// 3 for the GRU), so the cell update is local; its rows (backward: columns)
// of W_hh, G U H values of acc_t, stay in dynamic shared memory for every
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
// test_cuda_emu.py).
#pragma once

#include <cstdint>

#include "../cell.h"
#include "../recurrent_step.h"
#include "kernel_compat.cuh"

namespace seqcls_fast::SEQCLS_CUDA_NS {

// Threads per block. The emulator runs a cooperative grid's threads as OS
// threads meeting at every grid_sync, so it launches one warp per block: the
// kernels stride over their (row, unit) items by blockDim.x either way.
#ifdef SEQCLS_CUDA_EMULATED
constexpr int kPersistentThreads = 32;
#else
constexpr int kPersistentThreads = 128;
#endif

// Gate rows per unit of the cells the persistent kernels run.
template <CellKind K>
constexpr int kPersistentGates = K == CellKind::kLstm ? 4 : 3;

// The block's rows of W_hh, k-major: w[(k * G + g) * U + u] = W_hh[g H + u0 +
// u][k] (threads of one k and g read neighbouring words: no bank conflicts).
template <int G, typename scalar_t, typename acc_t>
__device__ void load_block_rows(const scalar_t* w_hh,  // [G H, H]
                                acc_t* w,               // [H][G][U] shared
                                int32_t H, int32_t U, int32_t u0, int32_t units) {
  const int32_t per_gate = units * H;
  for (int32_t i = threadIdx.x; i < G * per_gate; i += blockDim.x) {
    const int32_t g = i / per_gate, rest = i - g * per_gate, u = rest / H, k = rest - u * H;
    w[(k * G + g) * U + u] = static_cast<acc_t>(w_hh[static_cast<int64_t>(g * H + u0 + u) * H + k]);
  }
}

// The block's columns of W_hh: w[n * U + u] = W_hh[n][u0 + u], n < G H.
template <int G, typename scalar_t, typename acc_t>
__device__ void load_block_columns(const scalar_t* w_hh,  // [G H, H]
                                   acc_t* w,               // [G H][U] shared
                                   int32_t H, int32_t U, int32_t u0, int32_t units) {
  for (int32_t i = threadIdx.x; i < G * H * units; i += blockDim.x) {
    const int32_t n = i / units, u = i - n * units;
    w[n * U + u] = static_cast<acc_t>(w_hh[static_cast<int64_t>(n) * H + u0 + u]);
  }
}

// What every cell writes of row j, unit `unit` at step s: h_s, the output,
// the packed h (pooling) and the next step's h_prev.
template <typename scalar_t>
__device__ void store_persistent_h(const ForwardRecurrence& r, int64_t j, int32_t unit, int64_t s,
                                   int64_t packed_row, int64_t rows_next, scalar_t h,
                                   scalar_t* h_out) {
  const int32_t H = static_cast<int32_t>(r.hidden);
  h_out[j * H + unit] = h;
  if (r.output != nullptr) static_cast<scalar_t*>(r.output)[output_offset(r, j, s) + unit] = h;
  if (r.h_packed != nullptr) static_cast<scalar_t*>(r.h_packed)[packed_row * H + unit] = h;
  if (r.h_prev != nullptr && j < rows_next) {
    static_cast<scalar_t*>(r.h_prev)[(r.offset_device[s + 1] - r.row0 + j) * H + unit] = h;
  }
}

// Row j, unit u0 + u of step s: the products h_{s-1} W_hh^T of the unit's G
// gates (when `product`), then the cell on them and the projection, and
// every output.
template <CellKind K, typename scalar_t, typename acc_t>
__device__ void persistent_unit(const ForwardRecurrence& r, const acc_t* w, int32_t U, int32_t u,
                                int32_t unit, int64_t j, int64_t s, int64_t packed_row,
                                int64_t rows_next, bool product, const scalar_t* h_in,
                                scalar_t* h_out) {
  constexpr int G = kPersistentGates<K>;
  const int32_t H = static_cast<int32_t>(r.hidden);
  acc_t acc[G] = {};
  if (product) {
    const scalar_t* h_row = h_in + j * H;
    for (int32_t k = 0; k < H; ++k) {
      const acc_t hk = static_cast<acc_t>(h_row[k]);
#pragma unroll
      for (int g = 0; g < G; ++g) acc[g] += hk * w[(k * G + g) * U + u];
    }
  }
  scalar_t* gates = static_cast<scalar_t*>(r.gates) + packed_row * G * H + unit;
  acc_t out[G], kept, h;
  if constexpr (K == CellKind::kLstm) {
#pragma unroll
    for (int g = 0; g < G; ++g) acc[g] += static_cast<acc_t>(gates[g * H]);
    acc_t* c_state = static_cast<acc_t*>(r.c_state) + j * H + unit;
    lstm_cell_forward<acc_t>(acc[0], acc[1], acc[2], acc[3], *c_state, out[0], out[1], out[2],
                             out[3], kept, h);
    *c_state = kept;
  } else {  // GRU: b_hh joins the product, apart from the projection
    const scalar_t* b_hh = static_cast<const scalar_t*>(r.recurrent_bias);
#pragma unroll
    for (int g = 0; g < G; ++g) acc[g] += b_hh != nullptr ? static_cast<acc_t>(b_hh[g * H + unit]) : acc_t(0);
    gru_cell_forward<acc_t>(static_cast<acc_t>(gates[0]), static_cast<acc_t>(gates[H]),
                            static_cast<acc_t>(gates[2 * H]), acc[0], acc[1], acc[2],
                            static_cast<acc_t>(h_in[j * H + unit]), out[0], out[1], out[2], h);
    kept = acc[2];  // h_{s-1} W_hn^T + b_hn
  }
  store_persistent_h(r, j, unit, s, packed_row, rows_next, static_cast<scalar_t>(h), h_out);
  if (r.cell != nullptr) {  // what the backward keeps
#pragma unroll
    for (int g = 0; g < G; ++g) gates[g * H] = static_cast<scalar_t>(out[g]);
    static_cast<acc_t*>(r.cell)[packed_row * H + unit] = kept;
  }
}

// The block's units [u0, u0 + units) of U, for blocks of U = units_per_block.
struct BlockUnits {
  int32_t u0, units;
};

__device__ inline BlockUnits block_units(int64_t hidden, int32_t units_per_block) {
  const int32_t H = static_cast<int32_t>(hidden);
  const int32_t u0 = static_cast<int32_t>(blockIdx.x) * units_per_block;
  return {u0, u0 < H ? (H - u0 < units_per_block ? H - u0 : units_per_block) : 0};
}

// Steps [r.step, r.end_step) of a layer-direction of cell K; gridDim.x
// blocks of U = units_per_block units (the last may have fewer, or none),
// dynamic shared memory G U H acc_t for the block's W_hh rows. r.w_hh_packed
// is W_hh [G H, H] in x's dtype; h_swap [B, H] the second h buffer.
template <CellKind K, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_forward_kernel(const ForwardRecurrence r, scalar_t* h_swap,
                              int32_t units_per_block) {
  const int32_t H = static_cast<int32_t>(r.hidden), U = units_per_block;
  const BlockUnits mine = block_units(r.hidden, U);
  acc_t* w = dynamic_shared<acc_t>();
  load_block_rows<kPersistentGates<K>>(static_cast<const scalar_t*>(r.w_hh_packed), w, H, U,
                                       mine.u0, mine.units);
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
    for (int64_t item = threadIdx.x; item < rows * mine.units; item += blockDim.x) {
      const int64_t j = item / mine.units;
      const int32_t u = static_cast<int32_t>(item - j * mine.units);
      persistent_unit<K, scalar_t, acc_t>(r, w, U, u, mine.u0 + u, j, s, row_base + j, rows_next,
                                          product, h_in, h_out);
    }
    grid_sync();
  }
  // Rows whose last step here was an even one left h in h_swap: bring this
  // block's units back (every block is past its last read of h_state).
  for (int64_t s = r.step; s < r.end_step; s += 2) {
    const int64_t done_from = s + 1 < r.end_step ? r.active_device[s + 1] : 0;
    const int64_t count = (r.active_device[s] - done_from) * mine.units;
    for (int64_t item = threadIdx.x; item < count; item += blockDim.x) {
      const int64_t j = done_from + item / mine.units;
      const int32_t unit = mine.u0 + static_cast<int32_t>(item % mine.units);
      h_state[j * H + unit] = h_swap[j * H + unit];
    }
  }
}

// dh of row j, column u0 + u: grad_next_row [G H] (the row's next-step
// gradient the product reads) times W_hh's column, summed over n in order.
template <int G, typename scalar_t, typename acc_t>
__device__ acc_t column_product(const scalar_t* grad_next_row, const acc_t* w, int32_t H,
                                int32_t U, int32_t u) {
  acc_t sum = 0;
  for (int32_t n = 0; n < G * H; ++n) sum += static_cast<acc_t>(grad_next_row[n]) * w[n * U + u];
  return sum;
}

// The cell backward of row j, unit `unit` at step s, given dh (without the
// output's gradient): writes dG_s of the unit's gates and what the cell
// carries back (the LSTM's dc_{s-1}; the GRU's dG_rec,s and, into
// grad_h_state, the part of dh_{s-1} that skips W_hh).
template <CellKind K, typename scalar_t, typename acc_t>
__device__ void persistent_cell_backward(const BackwardRecurrence& r, int64_t j, int32_t unit,
                                         int64_t s, int64_t packed_row, acc_t dh) {
  constexpr int G = kPersistentGates<K>;
  const int32_t H = static_cast<int32_t>(r.hidden);
  const scalar_t* gates = static_cast<const scalar_t*>(r.gates) + packed_row * G * H + unit;
  const acc_t* cell = static_cast<const acc_t*>(r.cell);
  const acc_t kept = cell[(r.offset_device[s] - r.cell_row0 + j) * H + unit];
  const scalar_t* dout = static_cast<const scalar_t*>(r.grad_output) + grad_output_offset(r, j, s);
  dh += static_cast<acc_t>(dout[unit]);
  scalar_t* dgates = static_cast<scalar_t*>(r.grad_gates) + packed_row * G * H + unit;
  if constexpr (K == CellKind::kLstm) {
    const acc_t c_prev = s == r.step && r.cell_before != nullptr
                             ? static_cast<const acc_t*>(r.cell_before)[j * H + unit]
                             : cell[(r.offset_device[s - 1] - r.cell_row0 + j) * H + unit];
    acc_t* grad_c = static_cast<acc_t*>(r.grad_c_state) + j * H + unit;
    acc_t d[4], dc_prev;
    lstm_cell_backward<acc_t>(static_cast<acc_t>(gates[0]), static_cast<acc_t>(gates[H]),
                              static_cast<acc_t>(gates[2 * H]), static_cast<acc_t>(gates[3 * H]),
                              kept, c_prev, dh, *grad_c, d[0], d[1], d[2], d[3], dc_prev);
#pragma unroll
    for (int g = 0; g < 4; ++g) dgates[g * H] = static_cast<scalar_t>(d[g]);
    *grad_c = dc_prev;
  } else {
    const acc_t h_prev = static_cast<acc_t>(
        static_cast<const scalar_t*>(r.h_prev)[packed_row * H + unit]);
    acc_t d_r, d_z, d_xn, d_hn, direct;
    gru_cell_backward<acc_t>(static_cast<acc_t>(gates[0]), static_cast<acc_t>(gates[H]),
                             static_cast<acc_t>(gates[2 * H]), kept, h_prev, dh, d_r, d_z, d_xn,
                             d_hn, direct);
    scalar_t* drec = static_cast<scalar_t*>(r.grad_recurrent) + packed_row * G * H + unit;
    dgates[0] = drec[0] = static_cast<scalar_t>(d_r);
    dgates[H] = drec[H] = static_cast<scalar_t>(d_z);
    dgates[2 * H] = static_cast<scalar_t>(d_xn);
    drec[2 * H] = static_cast<scalar_t>(d_hn);
    static_cast<scalar_t*>(r.grad_h_state)[j * H + unit] = static_cast<scalar_t>(direct);
  }
}

// The gradient the product reads: dG (LSTM) or its recurrent part (GRU).
template <CellKind K, typename scalar_t>
__device__ const scalar_t* product_gradient(const BackwardRecurrence& r) {
  return static_cast<const scalar_t*>(K == CellKind::kLstm ? r.grad_gates : r.grad_recurrent);
}

// Steps [r.step, r.end_step) of the backward of cell K, end_step - 1 down to
// step; the launch as the forward's, dynamic shared memory G U H acc_t for
// the block's columns of W_hh. Rows that run step s + 1 here get dh_s from
// its gradients (the GRU adds what grad_h_state holds: the part that skipped
// W_hh); the others from grad_h_state (h_n's, or a later segment's). After
// the last step grad_h_state holds dh_{step-1} for the rows active at `step`
// (what the steps before this segment read).
template <CellKind K, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_backward_kernel(const BackwardRecurrence r, int32_t units_per_block) {
  constexpr int G = kPersistentGates<K>;
  const int32_t H = static_cast<int32_t>(r.hidden), U = units_per_block;
  const BlockUnits mine = block_units(r.hidden, U);
  acc_t* w = dynamic_shared<acc_t>();
  load_block_columns<G>(static_cast<const scalar_t*>(r.w_hh_packed), w, H, U, mine.u0,
                        mine.units);
  __syncthreads();
  const scalar_t* grad_product = product_gradient<K, scalar_t>(r);
  scalar_t* grad_h = static_cast<scalar_t*>(r.grad_h_state);
  constexpr bool kAddSkipped = K != CellKind::kLstm;
  for (int64_t s = r.end_step - 1; s >= r.step; --s) {
    const int64_t rows = r.active_device[s], row_base = r.offset_device[s] - r.row0;
    const int64_t rows_next = s + 1 < r.end_step ? r.active_device[s + 1] : 0;
    const int64_t next_base = s + 1 < r.end_step ? r.offset_device[s + 1] - r.row0 : 0;
    for (int64_t item = threadIdx.x; item < rows * mine.units; item += blockDim.x) {
      const int64_t j = item / mine.units;
      const int32_t u = static_cast<int32_t>(item - j * mine.units), unit = mine.u0 + u;
      acc_t dh = static_cast<acc_t>(grad_h[j * H + unit]);
      if (j < rows_next) {
        const acc_t product =
            column_product<G>(grad_product + (next_base + j) * G * H, w, H, U, u);
        dh = kAddSkipped ? product + dh : product;
      }
      persistent_cell_backward<K, scalar_t, acc_t>(r, j, unit, s, row_base + j, dh);
    }
    grid_sync();
  }
  // dh_{step-1} = dG_step W_hh (GRU: plus the part step `step` left in
  // grad_h_state) for the rows active at `step`.
  const int64_t first_base = r.offset_device[r.step] - r.row0;
  for (int64_t item = threadIdx.x; item < r.active_device[r.step] * mine.units;
       item += blockDim.x) {
    const int64_t j = item / mine.units;
    const int32_t u = static_cast<int32_t>(item - j * mine.units), unit = mine.u0 + u;
    const acc_t product = column_product<G>(grad_product + (first_base + j) * G * H, w, H, U, u);
    grad_h[j * H + unit] = static_cast<scalar_t>(
        kAddSkipped ? product + static_cast<acc_t>(grad_h[j * H + unit]) : product);
  }
}

}  // namespace seqcls_fast::SEQCLS_CUDA_NS
