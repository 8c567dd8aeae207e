// The persistent recurrence (float32), forward and backward, written once over
// the vector type V of an ISA build (recurrence_cpu_avx512.cpp: 16 lanes,
// 6-row tiles; recurrence_cpu_avx2.cpp: 8 lanes, 3-row tiles). Included
// by those files only, under their target pragma and after SEQCLS_TILE_TARGET
// is defined; they include ATen and the standard headers before the pragma (an
// inline function compiled under it could be the copy the linker keeps for
// every file) and ../cell.h after it (its templates must be compiled for the
// ISA they are instantiated with, or they are neither inlined nor called with
// the vector ABI the caller uses). Everything here has internal linkage, so
// each build keeps its own copy. A NEON build would add one more V (and its
// 32 registers allow AVX-512's 6-row tile).
//
// Worker w owns a contiguous range of V::kLanes-unit blocks and all the
// gates of them (the cell K's: i, f, g, o for the LSTM; r, z, n for the GRU).
// Forward: it reads W_hh as pack_w_hh laid it out; per step it computes, for
// every active row, its blocks' recurrent products (h_{s-1} W_hh^T by
// broadcast-FMAs over k with gates x MR accumulators in registers), adds the
// projection already in `gates` (the GRU: b_hh, then the cell takes the two
// apart), applies the shared cell math (../cell.h) in registers, writes h_s
// into the other h buffer, and meets the other workers at one barrier.
// Backward: it reads W_hh as pack_w_hh_backward laid it out; per step it sums
// dh_s = dG_{s+1} W_hh for its units (4 blocks x MR rows of accumulators,
// broadcast-FMAs over the G gate columns; the GRU's left side is the
// recurrent part of dG, and the part of dh that skips W_hh is added), adds
// the output's gradient, applies the shared cell backward in registers,
// writes dG_s of its units, and meets the others once: the next step's sums
// need every unit's dG_s. Each unit's sums run in the same order whoever owns
// it, so results do not depend on the thread count.
//
// V supplies (functions SEQCLS_TILE_TARGET): Raw (the register type), Mask,
// kLanes, kTileRows, kUnrollK (tile_product), kSplitK (forward_block),
// kExpMin, first_lanes(n), zero(), load(p), load(mask, p) (0 in masked-off
// lanes), store(mask, p, x), broadcast(f), fmadd(a, b, c), add(a, b), min(a,
// b) and max(a, b) (b when either is NaN), round(x) (to nearest), scale(p,
// n) (p 2^n), abs(x) and with_sign_of(m, x) (m >= 0 with x's sign bit); V itself wraps a Raw with + - * / for the cell. Its build
// declares CellMath<V> as TileCellMath<V>.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "../cell.h"
#include "../recurrent_step.h"
#include "recurrence_cpu.h"

namespace seqcls_fast::cpu {
namespace {

// The cell's math is inlined into the tile, with the accumulators still in
// registers: a call into a vector math library clobbers every vector
// register, and its exact division and tanh cost more than the tile's cell is
// worth (benchmarks/NOTES.md). Both functions are within a few ulp of
// float32, far inside the error of a float32 LSTM.
template <typename V>
struct TileCellMath {
  // e^x for x clamped to [V::kExpMin, 88] (NaN stays NaN): x = n ln2 + r with
  // |r| <= ln2 / 2, e^r by Cephes' expf polynomial, then 2^n by V::scale.
  // Never inf, so the cell's divisors stay in [1, 2e38].
  SEQCLS_TILE_TARGET static V exp(V x) {
    using Raw = typename V::Raw;
    Raw a = V::min(V::broadcast(88.0f), x.v);  // the NaN operand second: it is returned
    a = V::max(V::broadcast(V::kExpMin), a);
    const Raw n = V::round(V::fmadd(a, V::broadcast(1.44269504088896341f), V::zero()));
    Raw r = V::fmadd(n, V::broadcast(-0.693359375f), a);  // ln2 in two parts
    r = V::fmadd(n, V::broadcast(2.12194440e-4f), r);
    Raw p = V::broadcast(1.9875691500e-4f);
    p = V::fmadd(p, r, V::broadcast(1.3981999507e-3f));
    p = V::fmadd(p, r, V::broadcast(8.3334519073e-3f));
    p = V::fmadd(p, r, V::broadcast(4.1665795894e-2f));
    p = V::fmadd(p, r, V::broadcast(1.6666665459e-1f));
    p = V::fmadd(p, r, V::broadcast(5.0000001201e-1f));
    p = V::fmadd(p, V::fmadd(r, r, V::zero()), V::add(r, V::broadcast(1.0f)));
    return V(V::scale(p, n));
  }
  // tanh x = sign(x) (1 - 2 / (1 + e^2|x|)): saturates to +-1 exactly, and
  // its error near 0 is absolute (~1e-7), as is the rest of a float32
  // cell's. Computed on |x| so that near -1 it is as close as near +1 (half
  // an ulp of 1): the backward's 1 - tanh^2 cancels there, and a value off
  // by a few ulp of 2 (the unsigned formula at x < 0) made a GRU's weight
  // gradients err up to 8x PyTorch's float32.
  SEQCLS_TILE_TARGET static V tanh(V x) {
    const V a(V::abs(x.v));
    const V t = V(1.0f) - V(2.0f) / (V(1.0f) + exp(a + a));
    return V(V::with_sign_of(t.v, x.v));
  }
};

// A sense-reversing barrier for a fixed total weight: each participant
// arrives with the number of worker slots it runs, and the barrier opens when
// the weights sum to the total. So it is correct however ATen's parallel_for
// groups the slots into threads, provided they run concurrently (OpenMP).
class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t total) : total_(total) {}

  void arrive_and_wait(int64_t weight) {
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(weight, std::memory_order_acq_rel) + weight == total_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    // Spin (a step is microseconds); yield now and then so an oversubscribed
    // machine still makes progress.
    for (int64_t spins = 1; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins % 4096 == 0) std::this_thread::yield();
    }
  }

 private:
  const int64_t total_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<int64_t> generation_{0};
};

// Gate rows per hidden unit of cell K (cell_def.h's `gates`, as the constant
// the tile's register arrays are sized by).
template <CellKind K>
constexpr int kGates = K == CellKind::kLstm ? 4 : 3;

// One k of the register tile: acc[m][q] += a[m * lda + k] * w[q][k *
// w_stride .. + kLanes] (MR broadcasts, then one weight vector at a time:
// NQ MR accumulators + MR + 1 registers, 31 of AVX-512's 32 at MR = 6 and
// NQ = 4, 16 of AVX2's 16 at MR = 3).
template <typename V, int MR, int NQ>
SEQCLS_TILE_TARGET inline void tile_k(typename V::Raw (&acc)[MR][NQ],  // [MR][NQ] x kLanes
                                      const float* a,  // [MR, lda]: rows' left side
                                      int64_t lda,     // a's row stride
                                      const float* const (&w)[NQ],  // NQ x [.., w_stride]
                                      int64_t w_stride, int64_t k) {
  using Raw = typename V::Raw;
  const int64_t wk = k * w_stride;
  Raw ak[MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) ak[m] = V::broadcast(a[m * lda + k]);
#pragma GCC unroll 4
  for (int q = 0; q < NQ; ++q) {
    const Raw wq = V::load(w[q] + wk);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[m][q] = V::fmadd(ak[m], wq, acc[m][q]);
  }
}

// The register tile both directions run: tile_k for k in [k_begin, k_end) in
// order, the loop unrolled V::kUnrollK times (2 where the registers leave
// room for the next k's loads, else 1: AVX2's 16 are all taken).
template <typename V, int MR, int NQ>
SEQCLS_TILE_TARGET inline void tile_product(typename V::Raw (&acc)[MR][NQ],  // [MR][NQ] x kLanes
                                            const float* a,  // [MR, lda]: rows' left side
                                            int64_t lda,     // a's row stride (>= k_end)
                                            const float* const (&w)[NQ],  // NQ x [k_end, w_stride]
                                            int64_t w_stride,  // floats from k to k + 1
                                            int64_t k_begin, int64_t k_end) {
  if constexpr (MR == 1) {
    // One row has only NQ FMA chains, each waiting on its last FMA (4
    // cycles): even and odd k into two sets of accumulators, added at the end.
    typename V::Raw odd[1][NQ];
    for (int q = 0; q < NQ; ++q) odd[0][q] = V::zero();
    int64_t k = k_begin;
    for (; k + 1 < k_end; k += 2) {
      tile_k<V, 1, NQ>(acc, a, lda, w, w_stride, k);
      tile_k<V, 1, NQ>(odd, a, lda, w, w_stride, k + 1);
    }
    if (k < k_end) tile_k<V, 1, NQ>(acc, a, lda, w, w_stride, k);
    for (int q = 0; q < NQ; ++q) acc[0][q] = V::add(acc[0][q], odd[0][q]);
  } else if constexpr (V::kUnrollK == 2) {
#pragma GCC unroll 2
    for (int64_t k = k_begin; k < k_end; ++k) tile_k<V, MR, NQ>(acc, a, lda, w, w_stride, k);
  } else {
#pragma GCC unroll 1
    for (int64_t k = k_begin; k < k_end; ++k) tile_k<V, MR, NQ>(acc, a, lda, w, w_stride, k);
  }
}

// What one step's tiles share.
struct StepView {
  const ForwardRecurrence& r;
  const float* packed;   // [blocks, H, gates, kLanes]
  const float* h_in;     // [B, H] sorted: h_{s-1}
  float* h_out;          // [B, H] sorted: h_s
  const float* gates_s;  // [rows, G]: this step's rows of r.gates
  int64_t step, rows_next;
  bool product;
};

// What every cell writes for row j's units [u0, u0 + lanes): h_s, and what
// the caller keeps (output, packed h, the next step's h_prev).
template <typename V>
SEQCLS_TILE_TARGET inline void store_h(const StepView& v, int64_t j, int64_t u0,
                                       typename V::Mask mask, const V& h) {
  const ForwardRecurrence& r = v.r;
  const int64_t H = r.hidden;
  V::store(mask, v.h_out + j * H + u0, h.v);
  if (r.output != nullptr) {
    V::store(mask, static_cast<float*>(r.output) + output_offset(r, j, v.step) + u0, h.v);
  }
  if (r.h_packed != nullptr) {
    V::store(mask, static_cast<float*>(r.h_packed) + (r.offset[v.step] - r.row0 + j) * H + u0, h.v);
  }
  if (r.h_prev != nullptr && j < v.rows_next) {
    V::store(mask, static_cast<float*>(r.h_prev) + (r.offset[v.step + 1] - r.row0 + j) * H + u0,
             h.v);
  }
}

// What the backward keeps of row j's units, when it is kept: the NG
// activated gates and the cell's kept value (ForwardStep::cell).
template <typename V, int NG>
SEQCLS_TILE_TARGET inline void store_kept(const StepView& v, int64_t j, int64_t u0,
                                          typename V::Mask mask, const V (&gates)[NG],
                                          const V& kept) {
  const ForwardRecurrence& r = v.r;
  if (r.cell == nullptr) return;
  const int64_t H = r.hidden, packed_row = r.offset[v.step] - r.row0 + j;
  float* out = static_cast<float*>(r.gates) + packed_row * NG * H + u0;
  for (int g = 0; g < NG; ++g) V::store(mask, out + g * H, gates[g].v);
  V::store(mask, static_cast<float*>(r.cell) + packed_row * H + u0, kept.v);
}

// The LSTM cells of rows [j0, j0 + MR), units [u0, u0 + lanes): acc holds
// h_{s-1} W_hh^T of gates i, f, g, o; the projection (with both biases) is
// added, then the cell runs and writes c_s, h_s and what is kept.
template <typename V, int MR>
SEQCLS_TILE_TARGET inline void lstm_cells(const StepView& v, int64_t j0, int64_t u0,
                                          typename V::Mask mask,
                                          typename V::Raw (&acc)[MR][4]) {  // [MR][4] x kLanes
  const ForwardRecurrence& r = v.r;
  const int64_t H = r.hidden, G = 4 * H;
  float* c_state = static_cast<float*>(r.c_state);
  for (int m = 0; m < MR; ++m) {
    const int64_t j = j0 + m;
    const float* x = v.gates_s + j * G + u0;
    V pre[4];
    for (int g = 0; g < 4; ++g) pre[g] = V(V::add(acc[m][g], V::load(mask, x + g * H)));
    V gates[4], c, h;
    lstm_cell_forward(pre[0], pre[1], pre[2], pre[3], V(V::load(mask, c_state + j * H + u0)),
                      gates[0], gates[1], gates[2], gates[3], c, h);
    V::store(mask, c_state + j * H + u0, c.v);
    store_h<V>(v, j, u0, mask, h);
    store_kept<V, 4>(v, j, u0, mask, gates, c);
  }
}

// The GRU cells likewise: acc holds h_{s-1} W_hh^T of gates r, z, n, to
// which b_hh is added apart from the projection (x W_ih^T + b_ih); the cell
// reads h_{s-1} of its units and keeps h_{s-1} W_hn^T + b_hn.
template <typename V, int MR>
SEQCLS_TILE_TARGET inline void gru_cells(const StepView& v, int64_t j0, int64_t u0,
                                         typename V::Mask mask,
                                         typename V::Raw (&acc)[MR][3]) {  // [MR][3] x kLanes
  const ForwardRecurrence& r = v.r;
  const int64_t H = r.hidden, G = 3 * H;
  const float* bias = static_cast<const float*>(r.recurrent_bias);
  typename V::Raw b_hh[3];
  for (int g = 0; g < 3; ++g) b_hh[g] = bias ? V::load(mask, bias + g * H + u0) : V::zero();
  for (int m = 0; m < MR; ++m) {
    const int64_t j = j0 + m;
    const float* x = v.gates_s + j * G + u0;
    V rec[3];
    for (int g = 0; g < 3; ++g) rec[g] = V(V::add(acc[m][g], b_hh[g]));
    V gates[3], h;
    gru_cell_forward(V(V::load(mask, x)), V(V::load(mask, x + H)), V(V::load(mask, x + 2 * H)),
                     rec[0], rec[1], rec[2], V(V::load(mask, v.h_in + j * H + u0)), gates[0],
                     gates[1], gates[2], h);
    store_h<V>(v, j, u0, mask, h);
    store_kept<V, 3>(v, j, u0, mask, gates, rec[2]);
  }
}

// How a forward tile covers its product: whole (k = 0..H-1, then the cell),
// or in two passes over all of a block's rows (V::kSplitK): k < H/2 into
// `partial`, then the rest from it and the cell. The sums run in the same
// order either way (bitwise the same results); split, the block's half of
// W_hh stays in L1 while every row tile of the step reads it.
enum class TilePass { kWhole, kFirstHalf, kSecondHalf };

// Rows [j0, j0 + MR) of one step, units of block b, cell K: gate
// pre-activations in registers, then the cell, then every output of the step
// for those units.
template <typename V, int MR, CellKind K>
SEQCLS_TILE_TARGET void forward_tile(const StepView& v,
                                     int64_t j0,     // first sorted row of the tile, in [0, rows)
                                     int64_t b,      // unit block, in [0, ceil(H / kLanes))
                                     TilePass pass,  // kWhole unless v.product
                                     float* partial) {  // [B, gates, kLanes]: the split's sums
  using Raw = typename V::Raw;
  constexpr int NG = kGates<K>;
  constexpr int64_t kLanes = V::kLanes;
  const ForwardRecurrence& r = v.r;
  const int64_t H = r.hidden, G = NG * H, u0 = b * kLanes;
  const typename V::Mask mask = V::first_lanes(std::min<int64_t>(kLanes, H - u0));
  // Row j0 + m's sums of gate g in the split's scratch (only split passes).
  const auto partial_of = [&](int m, int g) { return partial + ((j0 + m) * NG + g) * kLanes; };
  Raw acc[MR][NG];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    for (int g = 0; g < NG; ++g) {
      acc[m][g] = pass == TilePass::kSecondHalf ? V::load(partial_of(m, g)) : V::zero();
    }
  }
  if (v.product) {
    // W_hh's rows of the block's gates, NG x kLanes floats per k.
    const float* block = v.packed + b * H * NG * kLanes;
    const float* w[NG];
    for (int g = 0; g < NG; ++g) w[g] = block + g * kLanes;
    const float* h = v.h_in + j0 * H;
    // The product first, the projection added after it: its rows come from
    // L3 or memory (a projection chunk is larger than L2), and are asked for
    // halfway through the product, late enough that the W_hh stream does not
    // evict them from L1 before they are used.
    const int64_t half = H / 2;
    if (pass != TilePass::kSecondHalf) tile_product<V, MR, NG>(acc, h, H, w, NG * kLanes, 0, half);
    if (pass == TilePass::kFirstHalf) {
      const typename V::Mask all = V::first_lanes(kLanes);
      for (int m = 0; m < MR; ++m) {
        for (int g = 0; g < NG; ++g) V::store(all, partial_of(m, g), acc[m][g]);
      }
      return;
    }
    const float* state = K == CellKind::kLstm ? static_cast<const float*>(r.c_state) : v.h_in;
    for (int m = 0; m < MR; ++m) {
      for (int g = 0; g < NG; ++g) {
        _mm_prefetch(reinterpret_cast<const char*>(v.gates_s + (j0 + m) * G + g * H + u0),
                     _MM_HINT_T0);
      }
      _mm_prefetch(reinterpret_cast<const char*>(state + (j0 + m) * H + u0), _MM_HINT_T0);
    }
    tile_product<V, MR, NG>(acc, h, H, w, NG * kLanes, half, H);
  }
  if constexpr (K == CellKind::kLstm) {
    lstm_cells<V, MR>(v, j0, u0, mask, acc);
  } else {
    gru_cells<V, MR>(v, j0, u0, mask, acc);
  }
}

// Rows [0, rows) of a step for block b in one pass: full tiles, then one
// partial tile.
template <typename V, CellKind K>
SEQCLS_TILE_TARGET void forward_rows(const StepView& v, int64_t rows, int64_t b, TilePass pass,
                                     float* partial) {
  constexpr int MR = V::kTileRows;
  static_assert(MR >= 1 && MR <= 6, "forward_rows dispatches remainders of up to 5 rows");
  int64_t j = 0;
  for (; j + MR <= rows; j += MR) forward_tile<V, MR, K>(v, j, b, pass, partial);
  switch (rows - j) {  // cases >= MR never occur
    case 5: if constexpr (MR > 5) forward_tile<V, 5, K>(v, j, b, pass, partial); break;
    case 4: if constexpr (MR > 4) forward_tile<V, 4, K>(v, j, b, pass, partial); break;
    case 3: if constexpr (MR > 3) forward_tile<V, 3, K>(v, j, b, pass, partial); break;
    case 2: if constexpr (MR > 2) forward_tile<V, 2, K>(v, j, b, pass, partial); break;
    case 1: if constexpr (MR > 1) forward_tile<V, 1, K>(v, j, b, pass, partial); break;
    default: break;
  }
}

// Rows [0, rows) of a step for block b: split in two passes where the build
// asks for it and more than one tile reads the block, else whole.
template <typename V, CellKind K>
SEQCLS_TILE_TARGET void forward_block(const StepView& v, int64_t rows, int64_t b,
                                      float* partial) {  // [B, gates, kLanes] scratch
  if (V::kSplitK && v.product && rows > V::kTileRows) {
    forward_rows<V, K>(v, rows, b, TilePass::kFirstHalf, partial);
    forward_rows<V, K>(v, rows, b, TilePass::kSecondHalf, partial);
  } else {
    forward_rows<V, K>(v, rows, b, TilePass::kWhole, partial);
  }
}

// Worker slots [slot_begin, slot_end) of `workers`: their blocks, all steps.
template <typename V, CellKind K>
SEQCLS_TILE_TARGET void run_slots(const ForwardRecurrence& r,
                                  float* h_swap,  // [B, H] sorted: the other h buffer
                                  int64_t workers, int64_t slot_begin, int64_t slot_end,
                                  SpinBarrier& barrier) {
  constexpr int64_t kLanes = V::kLanes;
  const int64_t H = r.hidden, G = kGates<K> * H, blocks = unit_blocks(H, kLanes);
  const int64_t first_block = slot_begin * blocks / workers, end_block = slot_end * blocks / workers;
  const int64_t weight = slot_end - slot_begin;
  const float* packed = static_cast<const float*>(r.w_hh_packed);
  float* h_state = static_cast<float*>(r.h_state);
  std::vector<float> partial(V::kSplitK ? r.batch * kGates<K> * kLanes : 0);  // this worker's
  for (int64_t s = r.step; s < r.end_step; ++s) {
    // Even steps of the segment read h_state and write h_swap, odd ones the
    // reverse: nobody overwrites an h_{s-1} another worker may still read.
    const bool even = (s - r.step) % 2 == 0;
    const int64_t rows = r.active[s];
    const StepView v{r,
                     packed,
                     r.h_in ? static_cast<const float*>(r.h_in) + (r.offset[s] - r.row0) * H
                     : even ? h_state
                            : h_swap,
                     even ? h_swap : h_state,
                     static_cast<const float*>(r.gates) + (r.offset[s] - r.row0) * G,
                     s,
                     s + 1 < r.steps ? r.active[s + 1] : 0,
                     s > r.step || r.product_at_first};
    for (int64_t b = first_block; b < end_block; ++b) {
      forward_block<V, K>(v, rows, b, partial.data());
    }
    barrier.arrive_and_wait(weight);
  }
  // Rows whose last step here was an even one left h in h_swap: bring their
  // units back (every worker is past its last read of h_state).
  for (int64_t s = r.step; s < r.end_step; s += 2) {
    const int64_t done_from = s + 1 < r.end_step ? r.active[s + 1] : 0;
    for (int64_t j = done_from; j < r.active[s]; ++j) {
      std::copy(h_swap + j * H + first_block * kLanes,
                h_swap + j * H + std::min(H, end_block * kLanes), h_state + j * H + first_block * kLanes);
    }
  }
}

// What one backward step's tiles share.
struct BackwardStepView {
  const BackwardRecurrence& r;
  const float* packed;           // [blocks, G, kLanes]
  const float* grad_next;        // [rows_next, G] packed: the product's left side, dG_{s+1}
                                 //   (GRU: its recurrent part dG_rec,s+1)
  float* grad_gates_s;           // [rows, G] packed: out: dG_s
  float* grad_recurrent_s;       // [rows, G] packed: out: dG_rec,s (GRU; else nullptr)
  const float* gates_s;          // [rows, G] packed: activated gates of step s
  const float* cell_s;           // [rows, H] packed: the kept value (c_s; GRU: h W_hn^T + b_hn)
  const float* cell_prev;        // [rows, H]: c_{s-1} (packed rows of s - 1, or sorted; LSTM)
  const float* h_prev_s;         // [rows, H] packed: h_{s-1} (GRU; else nullptr)
  int64_t step;
};

// The LSTM cell backward of row j for the units of one block [u0, u0 +
// lanes), given dh (the product's sum without the output's gradient): writes
// dG_s and dc_{s-1} of those units.
template <typename V>
SEQCLS_TILE_TARGET inline void lstm_backward_cell(const BackwardStepView& v, int64_t j, int64_t u0,
                                                  typename V::Mask mk, typename V::Raw dh) {
  const BackwardRecurrence& r = v.r;
  const int64_t H = r.hidden, G = 4 * H;
  const float* dout = static_cast<const float*>(r.grad_output) + grad_output_offset(r, j, v.step);
  const float* gates = v.gates_s + j * G;
  float* dgates = v.grad_gates_s + j * G;
  float* grad_c = static_cast<float*>(r.grad_c_state);
  V di, df, dgg, d_o, dc_prev;
  lstm_cell_backward(
      V(V::load(mk, gates + u0)), V(V::load(mk, gates + H + u0)), V(V::load(mk, gates + 2 * H + u0)),
      V(V::load(mk, gates + 3 * H + u0)), V(V::load(mk, v.cell_s + j * H + u0)),
      V(V::load(mk, v.cell_prev + j * H + u0)), V(V::add(dh, V::load(mk, dout + u0))),
      V(V::load(mk, grad_c + j * H + u0)), di, df, dgg, d_o, dc_prev);
  V::store(mk, dgates + u0, di.v);
  V::store(mk, dgates + H + u0, df.v);
  V::store(mk, dgates + 2 * H + u0, dgg.v);
  V::store(mk, dgates + 3 * H + u0, d_o.v);
  V::store(mk, grad_c + j * H + u0, dc_prev.v);
}

// The GRU cell backward likewise, given dh (the product's sum plus the part
// of step s+1's gradient that skipped W_hh): writes dG_s (input part), dG_rec,s
// (recurrent part) and, into grad_h_state, the part of dh_{s-1} that skips
// W_hh (dh z).
template <typename V>
SEQCLS_TILE_TARGET inline void gru_backward_cell(const BackwardStepView& v, int64_t j, int64_t u0,
                                                 typename V::Mask mk, typename V::Raw dh) {
  const BackwardRecurrence& r = v.r;
  const int64_t H = r.hidden, G = 3 * H;
  const float* dout = static_cast<const float*>(r.grad_output) + grad_output_offset(r, j, v.step);
  const float* gates = v.gates_s + j * G;
  float* dgates = v.grad_gates_s + j * G;
  float* drec = v.grad_recurrent_s + j * G;
  V d_r, d_z, d_xn, d_hn, dh_direct;
  gru_cell_backward(V(V::load(mk, gates + u0)), V(V::load(mk, gates + H + u0)),
                    V(V::load(mk, gates + 2 * H + u0)), V(V::load(mk, v.cell_s + j * H + u0)),
                    V(V::load(mk, v.h_prev_s + j * H + u0)), V(V::add(dh, V::load(mk, dout + u0))),
                    d_r, d_z, d_xn, d_hn, dh_direct);
  V::store(mk, dgates + u0, d_r.v);
  V::store(mk, dgates + H + u0, d_z.v);
  V::store(mk, dgates + 2 * H + u0, d_xn.v);
  V::store(mk, drec + u0, d_r.v);
  V::store(mk, drec + H + u0, d_z.v);
  V::store(mk, drec + 2 * H + u0, d_hn.v);
  V::store(mk, static_cast<float*>(r.grad_h_state) + j * H + u0, dh_direct.v);
}

// Rows [j0, j0 + MR) of one backward step, units of blocks [b0, b0 + 4) that
// are below end_block. product: dh = grad_next W_hh (GRU: plus what
// grad_h_state holds, the part that skipped W_hh) for rows that run step s+1
// here; else grad_h_state's. cell: then the cell backward, writing dG_s (and
// what the cell carries back); else dh is stored to grad_h_state (after the
// segment's last step, for the steps before it).
template <typename V, int MR, CellKind K>
SEQCLS_TILE_TARGET void backward_tile(const BackwardStepView& v,
                                      int64_t j0,         // first sorted row of the tile
                                      int64_t b0,         // first of up to 4 unit blocks
                                      int64_t end_block,  // the worker's block range ends here
                                      bool product, bool cell) {
  using Raw = typename V::Raw;
  constexpr int64_t kLanes = V::kLanes;
  const BackwardRecurrence& r = v.r;
  const int64_t H = r.hidden, G = kGates<K> * H;
  const int64_t nb = std::min<int64_t>(4, end_block - b0);
  typename V::Mask mask[4];
  const float* w[4];
  for (int q = 0; q < 4; ++q) {
    mask[q] = V::first_lanes(q < nb ? std::min<int64_t>(kLanes, H - (b0 + q) * kLanes) : 0);
    // Blocks past the range stream block b0's weights again and store nothing.
    w[q] = v.packed + (q < nb ? b0 + q : b0) * G * kLanes;
  }
  float* grad_h = static_cast<float*>(r.grad_h_state);
  const auto grad_h_of = [&](int m, int q) { return grad_h + (j0 + m) * H + (b0 + q) * kLanes; };
  Raw acc[MR][4];
  if (product) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      for (int q = 0; q < 4; ++q) acc[m][q] = V::zero();
    }
    tile_product<V, MR, 4>(acc, v.grad_next + j0 * G, G, w, kLanes, 0, G);
    if constexpr (K == CellKind::kGru) {
      for (int m = 0; m < MR; ++m) {
        for (int q = 0; q < 4; ++q) acc[m][q] = V::add(acc[m][q], V::load(mask[q], grad_h_of(m, q)));
      }
    }
  } else {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      for (int q = 0; q < 4; ++q) acc[m][q] = V::load(mask[q], grad_h_of(m, q));
    }
  }
  if (!cell) {
    for (int m = 0; m < MR; ++m) {
      for (int q = 0; q < nb; ++q) V::store(mask[q], grad_h_of(m, q), acc[m][q]);
    }
    return;
  }
  for (int m = 0; m < MR; ++m) {
    for (int q = 0; q < nb; ++q) {
      if constexpr (K == CellKind::kLstm) {
        lstm_backward_cell<V>(v, j0 + m, (b0 + q) * kLanes, mask[q], acc[m][q]);
      } else {
        gru_backward_cell<V>(v, j0 + m, (b0 + q) * kLanes, mask[q], acc[m][q]);
      }
    }
  }
}

// Rows [begin, end) of a backward step (or of the final product): full tiles,
// then one partial tile.
template <typename V, CellKind K>
SEQCLS_TILE_TARGET void backward_rows(const BackwardStepView& v, int64_t begin, int64_t end,
                                      int64_t b0, int64_t end_block, bool product, bool cell) {
  constexpr int MR = V::kTileRows;
  static_assert(MR >= 1 && MR <= 6, "backward_rows dispatches remainders of up to 5 rows");
  int64_t j = begin;
  for (; j + MR <= end; j += MR) backward_tile<V, MR, K>(v, j, b0, end_block, product, cell);
  switch (end - j) {  // cases >= MR never occur
    case 5: if constexpr (MR > 5) backward_tile<V, 5, K>(v, j, b0, end_block, product, cell); break;
    case 4: if constexpr (MR > 4) backward_tile<V, 4, K>(v, j, b0, end_block, product, cell); break;
    case 3: if constexpr (MR > 3) backward_tile<V, 3, K>(v, j, b0, end_block, product, cell); break;
    case 2: if constexpr (MR > 2) backward_tile<V, 2, K>(v, j, b0, end_block, product, cell); break;
    case 1: if constexpr (MR > 1) backward_tile<V, 1, K>(v, j, b0, end_block, product, cell); break;
    default: break;
  }
}

// Backward step s's view: its rows of every packed buffer.
template <CellKind K>
BackwardStepView backward_view(const BackwardRecurrence& r, int64_t s) {
  const int64_t H = r.hidden, G = kGates<K> * H, row = r.offset[s] - r.row0;
  const int64_t next_row = r.offset[s + 1] - r.row0;
  const float* cell = static_cast<const float*>(r.cell);
  float* grad_gates = static_cast<float*>(r.grad_gates);
  BackwardStepView v{r,
                     static_cast<const float*>(r.w_hh_packed),
                     grad_gates + next_row * G,
                     grad_gates + row * G,
                     nullptr,
                     static_cast<const float*>(r.gates) + row * G,
                     cell + (r.offset[s] - r.cell_row0) * H,
                     nullptr,
                     nullptr,
                     s};
  if constexpr (K == CellKind::kLstm) {
    v.cell_prev = s == r.step && r.cell_before != nullptr
                      ? static_cast<const float*>(r.cell_before)
                      : cell + (r.offset[s - 1] - r.cell_row0) * H;
  } else {
    float* grad_recurrent = static_cast<float*>(r.grad_recurrent);
    v.grad_next = grad_recurrent + next_row * G;
    v.grad_recurrent_s = grad_recurrent + row * G;
    v.h_prev_s = static_cast<const float*>(r.h_prev) + row * H;
  }
  return v;
}

// Backward worker slots [slot_begin, slot_end) of `workers`: their blocks,
// all steps, then the product for the steps before the segment.
template <typename V, CellKind K>
SEQCLS_TILE_TARGET void run_backward_slots(const BackwardRecurrence& r,
                                           int64_t workers, int64_t slot_begin, int64_t slot_end,
                                           SpinBarrier& barrier) {
  constexpr int64_t kLanes = V::kLanes;
  const int64_t blocks = unit_blocks(r.hidden, kLanes);
  const int64_t first_block = slot_begin * blocks / workers, end_block = slot_end * blocks / workers;
  const int64_t weight = slot_end - slot_begin;
  for (int64_t s = r.end_step - 1; s >= r.step; --s) {
    const int64_t rows = r.active[s];
    // Rows that run step s + 1 in this segment get dh_s from its gate
    // gradients; the others from grad_h_state (h_n's, or a later segment's).
    const int64_t rows_next = s + 1 < r.end_step ? r.active[s + 1] : 0;
    const BackwardStepView v = backward_view<K>(r, s);
    for (int64_t b0 = first_block; b0 < end_block; b0 += 4) {
      backward_rows<V, K>(v, 0, rows_next, b0, end_block, true, true);
      backward_rows<V, K>(v, rows_next, rows, b0, end_block, false, true);
    }
    barrier.arrive_and_wait(weight);
  }
  // dh_{step-1} = dG_step W_hh for the rows active at `step` (GRU: plus the
  // part that skipped W_hh, which step `step` left in grad_h_state).
  BackwardStepView v = backward_view<K>(r, r.step);
  v.grad_next = K == CellKind::kLstm ? v.grad_gates_s : v.grad_recurrent_s;
  for (int64_t b0 = first_block; b0 < end_block; b0 += 4) {
    backward_rows<V, K>(v, 0, r.active[r.step], b0, end_block, true, false);
  }
}

// The entry points of an ISA build: `workers` worker slots (1 <= workers <=
// its unit blocks), each owning a contiguous range of unit blocks.
template <typename V>
void run_forward_recurrence(const ForwardRecurrence& r, float* h_swap,
                            int64_t workers) {
  SpinBarrier barrier(workers);
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    if (r.cell_kind == CellKind::kGru) {
      run_slots<V, CellKind::kGru>(r, h_swap, workers, begin, end, barrier);
    } else {
      run_slots<V, CellKind::kLstm>(r, h_swap, workers, begin, end, barrier);
    }
  });
}

template <typename V>
void run_backward_recurrence(const BackwardRecurrence& r, int64_t workers) {
  SpinBarrier barrier(workers);
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    if (r.cell_kind == CellKind::kGru) {
      run_backward_slots<V, CellKind::kGru>(r, workers, begin, end, barrier);
    } else {
      run_backward_slots<V, CellKind::kLstm>(r, workers, begin, end, barrier);
    }
  });
}

}  // namespace
}  // namespace seqcls_fast::cpu
