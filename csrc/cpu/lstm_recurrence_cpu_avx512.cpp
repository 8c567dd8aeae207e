// AVX-512 build of the persistent recurrence (float32), forward and backward.
// Worker w owns a contiguous range of 16-unit blocks and all four gates of
// them. Forward: it reads W_hh as pack_w_hh laid it out; per step it
// computes, for every active row, its blocks' gate pre-activations (the
// projection already in `gates` plus h_{s-1} W_hh^T, broadcast-FMAs over k
// with 4 x MR accumulators in registers), applies the shared cell math
// (../cell.h) in registers, writes h_s into the other h buffer, and meets the
// other workers at one barrier. Backward: it reads W_hh as pack_w_hh_backward
// laid it out; per step it sums dh_s = dG_{s+1} W_hh for its units (4 blocks
// x MR rows of accumulators, broadcast-FMAs over the 4H gate columns), adds
// the output's gradient, applies the shared cell backward in registers,
// writes dG_s of its units, and meets the others once: the next step's sums
// need every unit's dG_s. Each unit's sums run in the same order whoever owns
// it, so results do not depend on the thread count. Compiled for AVX-512 by
// the target pragma only; the caller checks the CPU supports it.
#if defined(__x86_64__) || defined(_M_X64)

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "lstm_recurrence_cpu.h"

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
// GCC 12's masked-load intrinsics start from _mm512_undefined_ps(), which
// -Wuninitialized reports once per inlined call (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "../cell.h"

// GCC does not extend the target pragma to functions defined inside a class
// body, so those carry the attribute themselves.
#define SEQCLS_AVX512 __attribute__((target("avx512f,fma")))

namespace seqcls_fast {
namespace cpu::avx512 {

// The cell's math is inlined into the tile, with the 24 accumulators still
// in registers: a call into a vector math library clobbers every zmm
// register, and its exact division and tanh cost more than the tile's cell
// is worth (benchmarks/NOTES.md). Both functions below are within a few ulp
// of float32, far inside the error of a float32 LSTM.

// a / b as a 14-bit reciprocal refined by one Newton step (about 1 ulp for
// the cell's divisors, which are in [1, 2e38]: exp below never returns inf).
SEQCLS_AVX512 inline __m512 divide(__m512 a, __m512 b) {
  const __m512 y = _mm512_rcp14_ps(b);
  const __m512 r = _mm512_fmadd_ps(_mm512_fnmadd_ps(b, y, _mm512_set1_ps(1.0f)), y, y);
  return _mm512_mul_ps(a, r);
}

// e^x for x clamped to [-104, 88] (NaN stays NaN): x = n ln2 + r with
// |r| <= ln2 / 2, e^r by Cephes' expf polynomial, then 2^n by vscalefps,
// which goes to 0 below the float range.
SEQCLS_AVX512 inline __m512 exp_clamped(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);  // the NaN operand second: it is returned
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// One AVX-512 register of float: just the arithmetic the cell needs.
struct Float16 {
  __m512 v;
  Float16() = default;
  SEQCLS_AVX512 Float16(__m512 x) : v(x) {}
  SEQCLS_AVX512 Float16(float x) : v(_mm512_set1_ps(x)) {}
  SEQCLS_AVX512 friend Float16 operator+(Float16 a, Float16 b) { return _mm512_add_ps(a.v, b.v); }
  SEQCLS_AVX512 friend Float16 operator-(Float16 a, Float16 b) { return _mm512_sub_ps(a.v, b.v); }
  SEQCLS_AVX512 friend Float16 operator*(Float16 a, Float16 b) { return _mm512_mul_ps(a.v, b.v); }
  SEQCLS_AVX512 friend Float16 operator/(Float16 a, Float16 b) { return divide(a.v, b.v); }
};

}  // namespace cpu::avx512

template <>
struct CellMath<cpu::avx512::Float16> {
  SEQCLS_AVX512 static cpu::avx512::Float16 exp(cpu::avx512::Float16 x) {
    return cpu::avx512::exp_clamped(x.v);
  }
  // tanh x = 1 - 2 / (1 + e^2x): saturates to +-1 exactly, and its error
  // near 0 is absolute (~1e-7), as is the rest of a float32 cell's.
  SEQCLS_AVX512 static cpu::avx512::Float16 tanh(cpu::avx512::Float16 x) {
    using cpu::avx512::Float16;
    return Float16(1.0f) - Float16(2.0f) / (Float16(1.0f) + exp(x + x));
  }
};

namespace cpu::avx512 {
namespace {

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

constexpr int64_t kLanes = kUnitsPerBlock;
// Rows per register tile: 6 rows x 4 gates = 24 accumulators, plus the four
// weight vectors and a broadcast, within the 32 registers.
constexpr int64_t kTileRows = 6;

// The register tile both directions run: acc[m][q] += a[m * lda + k] *
// w[q][k * w_stride .. + 16] for k in [k_begin, k_end) in order (one
// broadcast per row and k, four weight vectors per k).
template <int MR>
SEQCLS_AVX512 inline void tile_product(__m512 (&acc)[MR][4],       // [MR][4] x 16 lanes
                                       const float* a,              // [MR, lda]: rows' left side
                                       int64_t lda,                 // a's row stride (>= k_end)
                                       const float* const (&w)[4],  // 4 x [k_end, w_stride]
                                       int64_t w_stride,            // floats from k to k + 1
                                       int64_t k_begin, int64_t k_end) {
#pragma GCC unroll 2
  for (int64_t k = k_begin; k < k_end; ++k) {
    const int64_t wk = k * w_stride;
    const __m512 w0 = _mm512_loadu_ps(w[0] + wk), w1 = _mm512_loadu_ps(w[1] + wk),
                 w2 = _mm512_loadu_ps(w[2] + wk), w3 = _mm512_loadu_ps(w[3] + wk);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512 ak = _mm512_set1_ps(a[m * lda + k]);
      acc[m][0] = _mm512_fmadd_ps(ak, w0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(ak, w1, acc[m][1]);
      acc[m][2] = _mm512_fmadd_ps(ak, w2, acc[m][2]);
      acc[m][3] = _mm512_fmadd_ps(ak, w3, acc[m][3]);
    }
  }
}

// What one step's tiles share.
struct StepView {
  const LstmForwardRecurrence& r;
  const float* packed;   // [blocks, H, 4, 16]
  const float* h_in;     // [B, H] sorted: h_{s-1}
  float* h_out;          // [B, H] sorted: h_s
  const float* gates_s;  // [rows, 4H]: this step's rows of r.gates
  int64_t step, rows_next;
  bool product;
};

// Rows [j0, j0 + MR) of one step, units of block b: gate pre-activations in
// registers, then the cell, then every output of the step for those units.
template <int MR>
SEQCLS_AVX512 void forward_tile(const StepView& v,
                                int64_t j0,  // first sorted row of the tile, in [0, rows)
                                int64_t b) {  // 16-unit block, in [0, ceil(H / 16))
  const LstmForwardRecurrence& r = v.r;
  const int64_t H = r.hidden, G = 4 * H, u0 = b * kLanes;
  const int64_t lanes = std::min<int64_t>(kLanes, H - u0);
  const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1u);
  const float* gates_in = v.gates_s + j0 * G + u0;  // the tile's projection rows
  float* c_state = static_cast<float*>(r.c_state);
  __m512 acc[MR][4];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    for (int g = 0; g < 4; ++g) acc[m][g] = _mm512_setzero_ps();
  }
  if (v.product) {
    // W_hh's rows of the block's four gates, 4 x 16 floats per k.
    const float* block = v.packed + b * H * 4 * kLanes;
    const float* const w[4] = {block, block + kLanes, block + 2 * kLanes, block + 3 * kLanes};
    const float* h = v.h_in + j0 * H;
    // The product first, the projection added after it: its rows come from
    // L3 or memory (a projection chunk is larger than L2), and are asked for
    // halfway through the product, late enough that the W_hh stream does not
    // evict them from L1 before they are used.
    const int64_t half = H / 2;
    tile_product<MR>(acc, h, H, w, 4 * kLanes, 0, half);
    for (int m = 0; m < MR; ++m) {
      for (int g = 0; g < 4; ++g) {
        _mm_prefetch(reinterpret_cast<const char*>(gates_in + m * G + g * H), _MM_HINT_T0);
      }
      _mm_prefetch(reinterpret_cast<const char*>(c_state + (j0 + m) * H + u0), _MM_HINT_T0);
    }
    tile_product<MR>(acc, h, H, w, 4 * kLanes, half, H);
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    for (int g = 0; g < 4; ++g) {
      acc[m][g] = _mm512_add_ps(acc[m][g], _mm512_maskz_loadu_ps(mask, gates_in + m * G + g * H));
    }
  }
  const int64_t packed_row = r.offset[v.step] - r.row0;  // of the step's row 0
  for (int m = 0; m < MR; ++m) {
    const int64_t j = j0 + m;
    Float16 i, f, g, o, c, h;
    lstm_cell_forward(Float16(acc[m][0]), Float16(acc[m][1]), Float16(acc[m][2]),
                      Float16(acc[m][3]), Float16(_mm512_maskz_loadu_ps(mask, c_state + j * H + u0)),
                      i, f, g, o, c, h);
    _mm512_mask_storeu_ps(c_state + j * H + u0, mask, c.v);
    _mm512_mask_storeu_ps(v.h_out + j * H + u0, mask, h.v);
    if (r.output != nullptr) {
      const int64_t caller_row = r.order ? r.order[j] : j;
      const int64_t t = step_time(r.reverse, r.sorted_lengths, j, v.step);
      _mm512_mask_storeu_ps(static_cast<float*>(r.output) + (t * r.batch + caller_row) * H + u0,
                            mask, h.v);
    }
    if (r.h_packed != nullptr) {
      _mm512_mask_storeu_ps(static_cast<float*>(r.h_packed) + (packed_row + j) * H + u0, mask, h.v);
    }
    if (r.cell != nullptr) {  // everything the backward keeps
      float* gates = static_cast<float*>(r.gates) + (packed_row + j) * G + u0;
      _mm512_mask_storeu_ps(gates, mask, i.v);
      _mm512_mask_storeu_ps(gates + H, mask, f.v);
      _mm512_mask_storeu_ps(gates + 2 * H, mask, g.v);
      _mm512_mask_storeu_ps(gates + 3 * H, mask, o.v);
      _mm512_mask_storeu_ps(static_cast<float*>(r.cell) + (packed_row + j) * H + u0, mask, c.v);
    }
    if (r.h_prev != nullptr && j < v.rows_next) {
      _mm512_mask_storeu_ps(static_cast<float*>(r.h_prev) + (r.offset[v.step + 1] - r.row0 + j) * H + u0,
                            mask, h.v);
    }
  }
}

SEQCLS_AVX512 void forward_block(const StepView& v, int64_t rows, int64_t b) {
  int64_t j = 0;
  for (; j + kTileRows <= rows; j += kTileRows) forward_tile<kTileRows>(v, j, b);
  switch (rows - j) {
    case 5: forward_tile<5>(v, j, b); break;
    case 4: forward_tile<4>(v, j, b); break;
    case 3: forward_tile<3>(v, j, b); break;
    case 2: forward_tile<2>(v, j, b); break;
    case 1: forward_tile<1>(v, j, b); break;
    default: break;
  }
}

// Worker slots [slot_begin, slot_end) of `workers`: their blocks, all steps.
void run_slots(const LstmForwardRecurrence& r,
               float* h_swap,  // [B, H] sorted: the other h buffer
               int64_t workers, int64_t slot_begin, int64_t slot_end, SpinBarrier& barrier) {
  const int64_t H = r.hidden, blocks = unit_blocks(H);
  const int64_t first_block = slot_begin * blocks / workers, end_block = slot_end * blocks / workers;
  const int64_t weight = slot_end - slot_begin;
  const float* packed = static_cast<const float*>(r.w_hh_packed);
  float* h_state = static_cast<float*>(r.h_state);
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
                     static_cast<const float*>(r.gates) + (r.offset[s] - r.row0) * 4 * H,
                     s,
                     s + 1 < r.steps ? r.active[s + 1] : 0,
                     s > r.step || r.product_at_first};
    for (int64_t b = first_block; b < end_block; ++b) forward_block(v, rows, b);
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
  const LstmBackwardRecurrence& r;
  const float* packed;           // [blocks, 4H, 16]
  const float* grad_gates_next;  // [rows_next, 4H] packed: dG_{s+1}, the product's left side
  float* grad_gates_s;           // [rows, 4H] packed: out: dG_s
  const float* gates_s;          // [rows, 4H] packed: activated gates of step s
  const float* cell_s;           // [rows, H] packed: c_s
  const float* cell_prev;        // [rows, H]: c_{s-1} (packed rows of s - 1, or sorted)
  int64_t step;
};

// Rows [j0, j0 + MR) of one backward step, units of blocks [b0, b0 + 4) that
// are below end_block. product: dh = dG_{s+1} W_hh (else grad_h_state's, for
// rows that have no step s+1 here). cell: then the cell backward, writing dG_s
// and dc_{s-1}; else dh is stored to grad_h_state (after the segment's last
// step, for the steps before it).
template <int MR>
SEQCLS_AVX512 void backward_tile(const BackwardStepView& v,
                                 int64_t j0,         // first sorted row of the tile
                                 int64_t b0,         // first of up to 4 16-unit blocks
                                 int64_t end_block,  // the worker's block range ends here
                                 bool product, bool cell) {
  const LstmBackwardRecurrence& r = v.r;
  const int64_t H = r.hidden, G = 4 * H;
  const int64_t nb = std::min<int64_t>(4, end_block - b0);
  __mmask16 mask[4];
  const float* w[4];
  for (int q = 0; q < 4; ++q) {
    const int64_t lanes = q < nb ? std::min<int64_t>(kLanes, H - (b0 + q) * kLanes) : 0;
    mask[q] = static_cast<__mmask16>((1u << lanes) - 1u);
    // Blocks past the range stream block b0's weights again and store nothing.
    w[q] = v.packed + (q < nb ? b0 + q : b0) * G * kLanes;
  }
  float* grad_h = static_cast<float*>(r.grad_h_state);
  const float* grad_output = static_cast<const float*>(r.grad_output);
  float* grad_c = static_cast<float*>(r.grad_c_state);
  auto grad_output_row = [&](int64_t j) {
    const int64_t caller_row = r.order ? r.order[j] : j;
    return grad_output + step_time(r.reverse, r.sorted_lengths, j, v.step) * r.grad_output_stride_t +
           caller_row * r.grad_output_stride_b;
  };
  __m512 acc[MR][4];
  if (product) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      for (int q = 0; q < 4; ++q) acc[m][q] = _mm512_setzero_ps();
    }
    tile_product<MR>(acc, v.grad_gates_next + j0 * G, G, w, kLanes, 0, G);
  } else {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      for (int q = 0; q < 4; ++q) {
        acc[m][q] = _mm512_maskz_loadu_ps(mask[q], grad_h + (j0 + m) * H + (b0 + q) * kLanes);
      }
    }
  }
  if (!cell) {
    for (int m = 0; m < MR; ++m) {
      for (int q = 0; q < nb; ++q) {
        _mm512_mask_storeu_ps(grad_h + (j0 + m) * H + (b0 + q) * kLanes, mask[q], acc[m][q]);
      }
    }
    return;
  }
  for (int m = 0; m < MR; ++m) {
    const int64_t j = j0 + m;
    const float* dout = grad_output_row(j);
    const float* gates = v.gates_s + j * G;
    float* dgates = v.grad_gates_s + j * G;
    for (int q = 0; q < nb; ++q) {
      const int64_t u0 = (b0 + q) * kLanes;
      const __mmask16 mk = mask[q];
      Float16 di, df, dgg, d_o, dc_prev;
      lstm_cell_backward(
          Float16(_mm512_maskz_loadu_ps(mk, gates + u0)),
          Float16(_mm512_maskz_loadu_ps(mk, gates + H + u0)),
          Float16(_mm512_maskz_loadu_ps(mk, gates + 2 * H + u0)),
          Float16(_mm512_maskz_loadu_ps(mk, gates + 3 * H + u0)),
          Float16(_mm512_maskz_loadu_ps(mk, v.cell_s + j * H + u0)),
          Float16(_mm512_maskz_loadu_ps(mk, v.cell_prev + j * H + u0)),
          Float16(_mm512_add_ps(acc[m][q], _mm512_maskz_loadu_ps(mk, dout + u0))),
          Float16(_mm512_maskz_loadu_ps(mk, grad_c + j * H + u0)), di, df, dgg, d_o, dc_prev);
      _mm512_mask_storeu_ps(dgates + u0, mk, di.v);
      _mm512_mask_storeu_ps(dgates + H + u0, mk, df.v);
      _mm512_mask_storeu_ps(dgates + 2 * H + u0, mk, dgg.v);
      _mm512_mask_storeu_ps(dgates + 3 * H + u0, mk, d_o.v);
      _mm512_mask_storeu_ps(grad_c + j * H + u0, mk, dc_prev.v);
    }
  }
}

// Rows [begin, end) of a backward step (or of the final product), tiles of
// kTileRows rows and then the remainder.
SEQCLS_AVX512 void backward_rows(const BackwardStepView& v, int64_t begin, int64_t end, int64_t b0,
                                 int64_t end_block, bool product, bool cell) {
  int64_t j = begin;
  for (; j + kTileRows <= end; j += kTileRows) {
    backward_tile<kTileRows>(v, j, b0, end_block, product, cell);
  }
  switch (end - j) {
    case 5: backward_tile<5>(v, j, b0, end_block, product, cell); break;
    case 4: backward_tile<4>(v, j, b0, end_block, product, cell); break;
    case 3: backward_tile<3>(v, j, b0, end_block, product, cell); break;
    case 2: backward_tile<2>(v, j, b0, end_block, product, cell); break;
    case 1: backward_tile<1>(v, j, b0, end_block, product, cell); break;
    default: break;
  }
}

// Backward worker slots [slot_begin, slot_end) of `workers`: their blocks,
// all steps, then the product for the steps before the segment.
void run_backward_slots(const LstmBackwardRecurrence& r, int64_t workers, int64_t slot_begin,
                        int64_t slot_end, SpinBarrier& barrier) {
  const int64_t H = r.hidden, G = 4 * H, blocks = unit_blocks(H);
  const int64_t first_block = slot_begin * blocks / workers, end_block = slot_end * blocks / workers;
  const int64_t weight = slot_end - slot_begin;
  const float* gates = static_cast<const float*>(r.gates);
  const float* cell = static_cast<const float*>(r.cell);
  float* grad_gates = static_cast<float*>(r.grad_gates);
  auto view = [&](int64_t s) {
    const int64_t row = r.offset[s] - r.row0;
    const float* prev = s == r.step && r.cell_before != nullptr
                            ? static_cast<const float*>(r.cell_before)
                            : cell + (r.offset[s - 1] - r.cell_row0) * H;
    return BackwardStepView{r,
                            static_cast<const float*>(r.w_hh_packed),
                            grad_gates + (r.offset[s + 1] - r.row0) * G,
                            grad_gates + row * G,
                            gates + row * G,
                            cell + (r.offset[s] - r.cell_row0) * H,
                            prev,
                            s};
  };
  for (int64_t s = r.end_step - 1; s >= r.step; --s) {
    const int64_t rows = r.active[s];
    // Rows that run step s + 1 in this segment get dh_s from its gate
    // gradients; the others from grad_h_state (h_n's, or a later segment's).
    const int64_t rows_next = s + 1 < r.end_step ? r.active[s + 1] : 0;
    const BackwardStepView v = view(s);
    for (int64_t b0 = first_block; b0 < end_block; b0 += 4) {
      backward_rows(v, 0, rows_next, b0, end_block, true, true);
      backward_rows(v, rows_next, rows, b0, end_block, false, true);
    }
    barrier.arrive_and_wait(weight);
  }
  // dh_{step-1} = dG_step W_hh for the rows active at `step`.
  BackwardStepView v = view(r.step);
  v.grad_gates_next = v.grad_gates_s;
  for (int64_t b0 = first_block; b0 < end_block; b0 += 4) {
    backward_rows(v, 0, r.active[r.step], b0, end_block, true, false);
  }
}

}  // namespace

void pack_w_hh_backward(const float* w_hh, int64_t H, float* packed) {
  // packed[b][n][l] = W_hh[n][16 b + l], 0 past H.
  at::parallel_for(0, unit_blocks(H), 1, [&](int64_t first, int64_t end) {
    for (int64_t b = first; b < end; ++b) {
      float* block = packed + b * 4 * H * kLanes;
      const int64_t lanes = std::min<int64_t>(kLanes, H - b * kLanes);
      for (int64_t n = 0; n < 4 * H; ++n) {
        const float* w_row = w_hh + n * H + b * kLanes;
        float* out = block + n * kLanes;
        for (int64_t l = 0; l < kLanes; ++l) out[l] = l < lanes ? w_row[l] : 0.0f;
      }
    }
  });
}

void lstm_backward_recurrence(const LstmBackwardRecurrence& r, int64_t workers) {
  SpinBarrier barrier(workers);
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    run_backward_slots(r, workers, begin, end, barrier);
  });
}

void pack_w_hh(const float* w_hh, int64_t H, float* packed) {
  // packed[b][k][g][l] = W_hh[g H + 16 b + l][k], 0 past H.
  at::parallel_for(0, unit_blocks(H), 1, [&](int64_t first, int64_t end) {
    for (int64_t b = first; b < end; ++b) {
      float* block = packed + b * H * 4 * kLanes;
      for (int64_t g = 0; g < 4; ++g) {
        for (int64_t l = 0; l < kLanes; ++l) {
          const int64_t unit = b * kLanes + l;
          const float* w_row = unit < H ? w_hh + (g * H + unit) * H : nullptr;
          for (int64_t k = 0; k < H; ++k) block[(k * 4 + g) * kLanes + l] = w_row ? w_row[k] : 0.0f;
        }
      }
    }
  });
}

void lstm_forward_recurrence(const LstmForwardRecurrence& r, float* h_swap, int64_t workers) {
  SpinBarrier barrier(workers);
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    run_slots(r, h_swap, workers, begin, end, barrier);
  });
}

}  // namespace cpu::avx512
}  // namespace seqcls_fast

#pragma GCC diagnostic pop
#pragma GCC pop_options

#endif  // x86-64
