// The masked attention pooling kernels (forward, backward, the cross-row sum
// of grad_query); their host code is attention_pool_cuda.cu. No ATen, so the
// emulator's sanitizer drivers (tests/cuda_emu/) compile them alone.
//
// One block of kPoolThreads threads (kPoolWarps warps) per batch row b:
//   * a dot product over features (scores, dL/dw) is done by one warp per
//     step, its lanes over the features, reduced with shuffles;
//   * a sum over steps for each feature (pooled, grad_query) is tiled
//     [kPoolWarps steps x 32 features]: each warp sums its steps, the warps'
//     partials are combined in shared memory in warp order;
//   * block-wide max / sum go through shared memory, again in warp order.
// Every reduction has a fixed order and there are no atomics: results are
// bitwise reproducible. grad_query is first reduced per row ([B, A] partials)
// and then over rows by a second kernel, in row order. All arithmetic is in
// acc_t (float for half/bfloat16, else the storage type); per-row scores,
// exponentials and weights live in a [B, T] acc_t workspace in global memory,
// so T is unbounded.
//
// lengths: read from the batch's length plan (csrc/length_plan.h), whose
// values were checked on the host when it was made, so a bad length is a
// Python error rather than an out-of-bounds read. Given a plan, the op copies
// nothing to the host; given raw GPU lengths, it makes a plan (one small
// device-to-host copy). A persistent kernel reading lengths on the device (no
// host copy at all) will need a device-side error flag instead.
#pragma once

#include <cstdint>
#include <limits>

#include "../cell.h"
#include "../strided3.h"
#include "kernel_compat.cuh"

namespace seqcls_fast::SEQCLS_CUDA_NS {

constexpr int kWarpSize = 32;
constexpr int kPoolWarps = 8;
constexpr int kPoolThreads = kPoolWarps * kWarpSize;
constexpr int kReduceThreads = 256;

template <typename scalar_t, typename acc_t>
struct PoolForwardParams {
  int32_t steps;              // T
  int32_t features;           // D
  int32_t key_size;           // A
  const int64_t* lengths;     // [B] in [1, T]; nullptr: all T
  Strided3<scalar_t> values;  // [B, T, D]
  Strided3<scalar_t> keys;    // [B, T, A] (the values when keys is None)
  const scalar_t* query;      // [A]
  int64_t query_stride;       //   in elements
  acc_t* workspace;           // [B, T] scores, then exponentials, then weights
  scalar_t* pooled;           // [B, D] out
  scalar_t* weights;          // [B, T] out, 0 at padding
};

template <typename scalar_t, typename acc_t>
struct PoolBackwardParams {
  int32_t steps;                // T
  int32_t features;             // D
  int32_t key_size;             // A
  const int64_t* lengths;       // [B] in [1, T]; nullptr: all T
  Strided3<scalar_t> values;    // [B, T, D]
  Strided3<scalar_t> keys;      // [B, T, A] (the values when keys is None)
  bool keys_are_values;         // fold the key gradient into grad_values
  const scalar_t* query;        // [A]
  int64_t query_stride;         //   in elements
  const scalar_t* grad_pooled;  // [B, D] contiguous
  const scalar_t* grad_weights; // [B, T] contiguous
  const scalar_t* weights;      // [B, T] contiguous, the forward's weights
  acc_t* workspace;             // [B, T] dL/dw_t (with grad_weights), then dL/ds_t
  scalar_t* grad_values;        // [B, T, D] out, contiguous
  scalar_t* grad_keys;          // [B, T, A] out, contiguous; nullptr when keys_are_values
  acc_t* grad_query_rows;       // [B, A] out: each row's share of grad_query
};

// Valid steps of batch row b: lengths[b], or all T without lengths.
__device__ __forceinline__ int64_t row_length(const int64_t* lengths, int64_t b, int64_t steps) {
  return lengths != nullptr ? lengths[b] : steps;
}

struct Sum {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// Butterfly: every lane ends with the same, bitwise identical value.
template <typename T, typename Op>
__device__ __forceinline__ T warp_allreduce(T v, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Every thread of the block gets op over all threads' v, combined in a fixed
// order (warp butterflies, then warps 0, 1, ...). `shared` holds kPoolWarps.
template <typename T, typename Op>
__device__ __forceinline__ T block_allreduce(T v, Op op, T* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_allreduce(v, op);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T result = shared[0];
#pragma unroll
  for (int w = 1; w < kPoolWarps; ++w) result = op(result, shared[w]);
  __syncthreads();  // `shared` may be reused
  return result;
}

// For each of `count` features f (32 at a time), out(f) = sum over t < L of
// coeff[t] * src(t, f), warps over steps, lanes over features; the per-warp
// partials are combined in warp order. `tile` holds kPoolWarps x 32.
template <typename acc_t, typename Src, typename Out>
__device__ __forceinline__ void weighted_step_sum(int64_t L, int64_t count, const acc_t* coeff,
                                                  Src src, Out out,
                                                  acc_t (*tile)[kWarpSize]) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (int64_t f0 = 0; f0 < count; f0 += kWarpSize) {
    const int64_t f = f0 + lane;
    acc_t acc = 0;
    if (f < count) {
      for (int64_t t = warp; t < L; t += kPoolWarps) acc += coeff[t] * src(t, f);
    }
    tile[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && f < count) {
      acc_t sum = tile[0][lane];
#pragma unroll
      for (int w = 1; w < kPoolWarps; ++w) sum += tile[w][lane];
      out(f, sum);
    }
    __syncthreads();
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPoolThreads)
    attention_pool_forward_kernel(const PoolForwardParams<scalar_t, acc_t> p) {
  __shared__ acc_t reduce_buf[kPoolWarps];
  __shared__ acc_t tile[kPoolWarps][kWarpSize];
  const int64_t b = blockIdx.x;
  const int64_t T = p.steps, D = p.features, A = p.key_size;
  const int64_t L = row_length(p.lengths, b, T);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  acc_t* score = p.workspace + b * T;

  // 1. Scores s_t = k_t . q, one warp per step; their maximum.
  acc_t local_max = -std::numeric_limits<acc_t>::infinity();
  for (int64_t t = warp; t < L; t += kPoolWarps) {
    acc_t s = 0;
    for (int64_t a = lane; a < A; a += kWarpSize) {
      s += static_cast<acc_t>(p.keys(b, t, a)) * static_cast<acc_t>(p.query[a * p.query_stride]);
    }
    s = warp_allreduce(s, Sum{});
    if (lane == 0) score[t] = s;
    local_max = Max{}(local_max, s);
  }
  const acc_t max_score = block_allreduce(local_max, Max{}, reduce_buf);

  // 2. Exponentials of the max-subtracted scores, and their sum.
  acc_t local_sum = 0;
  for (int64_t t = threadIdx.x; t < L; t += kPoolThreads) {
    const acc_t e = CellMath<acc_t>::exp(score[t] - max_score);
    score[t] = e;
    local_sum += e;
  }
  const acc_t total = block_allreduce(local_sum, Sum{}, reduce_buf);

  // 3. Weights, 0 at padding; the workspace keeps them in acc_t.
  for (int64_t t = threadIdx.x; t < T; t += kPoolThreads) {
    acc_t w = 0;
    if (t < L) {
      w = score[t] / total;
      score[t] = w;
    }
    p.weights[b * T + t] = static_cast<scalar_t>(w);
  }
  __syncthreads();

  // 4. pooled = sum_t w_t v_t.
  weighted_step_sum<acc_t>(
      L, D, score,
      [&](int64_t t, int64_t d) { return static_cast<acc_t>(p.values(b, t, d)); },
      [&](int64_t d, acc_t sum) { p.pooled[b * D + d] = static_cast<scalar_t>(sum); }, tile);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPoolThreads)
    attention_pool_backward_kernel(const PoolBackwardParams<scalar_t, acc_t> p) {
  __shared__ acc_t reduce_buf[kPoolWarps];
  __shared__ acc_t tile[kPoolWarps][kWarpSize];
  const int64_t b = blockIdx.x;
  const int64_t T = p.steps, D = p.features, A = p.key_size;
  const int64_t L = row_length(p.lengths, b, T);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  acc_t* grad_score = p.workspace + b * T;
  const scalar_t* grad_pooled = p.grad_pooled + b * D;
  const scalar_t* weights = p.weights + b * T;

  // 1. dL/dw_t = grad_pooled . v_t + grad_weights_t (one warp per step), and
  // sum_t w_t dL/dw_t.
  acc_t local_weighted = 0;
  for (int64_t t = warp; t < L; t += kPoolWarps) {
    acc_t g = 0;
    for (int64_t d = lane; d < D; d += kWarpSize) {
      g += static_cast<acc_t>(grad_pooled[d]) * static_cast<acc_t>(p.values(b, t, d));
    }
    g = warp_allreduce(g, Sum{}) + static_cast<acc_t>(p.grad_weights[b * T + t]);
    if (lane == 0) {
      grad_score[t] = g;
      local_weighted += static_cast<acc_t>(weights[t]) * g;
    }
  }
  const acc_t weighted = block_allreduce(local_weighted, Sum{}, reduce_buf);

  // 2. Softmax backward: dL/ds_t = w_t (dL/dw_t - sum_u w_u dL/dw_u).
  for (int64_t t = threadIdx.x; t < L; t += kPoolThreads) {
    grad_score[t] = static_cast<acc_t>(weights[t]) * (grad_score[t] - weighted);
  }
  __syncthreads();

  // 3. grad_values[t] = w_t grad_pooled (+ dL/ds_t q when the keys are the
  // values), grad_keys[t] = dL/ds_t q; 0 at padding. Warps over steps, lanes
  // over features: coalesced writes of the contiguous outputs.
  for (int64_t t = warp; t < T; t += kPoolWarps) {
    const bool valid = t < L;
    const acc_t w = valid ? static_cast<acc_t>(weights[t]) : acc_t(0);
    const acc_t ds = valid ? grad_score[t] : acc_t(0);
    scalar_t* gv = p.grad_values + (b * T + t) * D;
    for (int64_t d = lane; d < D; d += kWarpSize) {
      acc_t g = w * static_cast<acc_t>(grad_pooled[d]);
      if (p.keys_are_values) g += ds * static_cast<acc_t>(p.query[d * p.query_stride]);
      gv[d] = static_cast<scalar_t>(g);
    }
    if (p.grad_keys != nullptr) {
      scalar_t* gk = p.grad_keys + (b * T + t) * A;
      for (int64_t a = lane; a < A; a += kWarpSize) {
        gk[a] = static_cast<scalar_t>(ds * static_cast<acc_t>(p.query[a * p.query_stride]));
      }
    }
  }

  // 4. This row's share of grad_query: sum_t dL/ds_t k_t.
  weighted_step_sum<acc_t>(
      L, A, grad_score,
      [&](int64_t t, int64_t a) { return static_cast<acc_t>(p.keys(b, t, a)); },
      [&](int64_t a, acc_t sum) { p.grad_query_rows[b * A + a] = sum; }, tile);
}

// grad_query[a] = sum_b rows[b, a], in row order: one thread per feature.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kReduceThreads)
    sum_rows_kernel(const acc_t* rows,   // [B, A]
                    scalar_t* out,       // [A]
                    int64_t batch,       // B
                    int64_t features) {  // A
  const int64_t a = static_cast<int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x;
  if (a >= features) return;
  acc_t sum = 0;
  for (int64_t b = 0; b < batch; ++b) sum += rows[b * features + a];
  out[a] = static_cast<scalar_t>(sum);
}

}  // namespace seqcls_fast::SEQCLS_CUDA_NS
