// masked_attention_pool_forward / _backward on the CPU. One task per batch
// row; every reduction runs in a fixed order in double (the pooling is a
// small part of the model's time, and sequential float sums over D in the
// hundreds lost a digit against PyTorch's own float32 error), so results are
// deterministic and each output is rounded once. Inputs are read through
// their strides.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../attention_pool_common.h"
#include "../buffers.h"

namespace seqcls_fast::cpu {
namespace {

using at::Tensor;
using c10::optional;

// sum_k a[k] b[k] in Acc. Unit strides (the usual case) sum in 4 interleaved
// partial sums, so the adds do not wait on each other and the loop
// vectorizes; the order is fixed either way.
template <typename T, typename Acc>
Acc dot(const T* a, int64_t stride_a, const T* b, int64_t stride_b, int64_t n) {
  if (stride_a != 1 || stride_b != 1) {
    Acc acc = 0;
    for (int64_t k = 0; k < n; ++k) acc += Acc(a[k * stride_a]) * Acc(b[k * stride_b]);
    return acc;
  }
  Acc part[4] = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    for (int i = 0; i < 4; ++i) part[i] += Acc(a[k + i]) * Acc(b[k + i]);
  }
  for (; k < n; ++k) part[0] += Acc(a[k]) * Acc(b[k]);
  return (part[0] + part[1]) + (part[2] + part[3]);
}

// y[k] += alpha x[k * stride] for k < n; unit stride in its own loop, which
// vectorizes.
template <typename T, typename Acc>
void add_scaled(Acc* y, Acc alpha, const T* x, int64_t stride, int64_t n) {
  if (stride == 1) {
    for (int64_t k = 0; k < n; ++k) y[k] += alpha * Acc(x[k]);
  } else {
    for (int64_t k = 0; k < n; ++k) y[k] += alpha * Acc(x[k * stride]);
  }
}

void check_cpu(const Tensor& values) {
  SEQCLS_CHECK_VALUE(values.device().is_cpu(),
                     "values must be on the CPU for the CPU kernel, got ", values.device());
  check_cpu_dtype(values, "values");
}

std::tuple<Tensor, Tensor> masked_attention_pool_forward_cpu(const Tensor& values,
                                                              const optional<Tensor>& keys,
                                                              const Tensor& query,
                                                              const optional<Tensor>& lengths,
                                                              const optional<Tensor>& plan) {
  const PoolSizes sz = check_attention_pool_inputs(values, keys, query, lengths);
  check_cpu(values);
  const int64_t B = sz.batch, T = sz.steps, D = sz.features, A = sz.key_size;
  Tensor pooled = at::zeros({B, D}, values.options());
  Tensor weights = at::zeros({B, T}, values.options());
  if (B == 0) return {pooled, weights};
  const Tensor len = pool_lengths(lengths, plan, T, B, values.device());
  const Tensor& key_tensor = keys.has_value() ? *keys : values;

  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "masked_attention_pool_forward_cpu", [&] {
    using acc_t = double;
    const Strided3<scalar_t> v = strided3<scalar_t>(values), k = strided3<scalar_t>(key_tensor);
    const scalar_t* q = query.const_data_ptr<scalar_t>();
    const int64_t q_stride = query.stride(0);
    const int64_t* len_ptr = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    scalar_t* pooled_ptr = pooled.data_ptr<scalar_t>();
    scalar_t* weights_ptr = weights.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> score(T), acc(D);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t L = len_ptr ? len_ptr[b] : T;
        acc_t max_score = -std::numeric_limits<acc_t>::infinity();
        for (int64_t t = 0; t < L; ++t) {
          score[t] = dot<scalar_t, acc_t>(k.row(b, t), k.stride_f, q, q_stride, A);
          max_score = std::max(max_score, score[t]);
        }
        acc_t total = 0;
        for (int64_t t = 0; t < L; ++t) {
          score[t] = std::exp(score[t] - max_score);
          total += score[t];
        }
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t t = 0; t < L; ++t) {
          const acc_t w = score[t] / total;
          weights_ptr[b * T + t] = static_cast<scalar_t>(w);
          const scalar_t* vr = v.row(b, t);
          add_scaled(acc.data(), w, vr, v.stride_f, D);
        }
        for (int64_t d = 0; d < D; ++d) pooled_ptr[b * D + d] = static_cast<scalar_t>(acc[d]);
      }
    });
  });
  return {pooled, weights};
}

std::tuple<Tensor, Tensor, Tensor> masked_attention_pool_backward_cpu(
    const Tensor& grad_pooled, const Tensor& grad_weights, const Tensor& values,
    const optional<Tensor>& keys, const Tensor& query, const optional<Tensor>& lengths,
    const Tensor& weights, const optional<Tensor>& plan) {
  const PoolSizes sz = check_attention_pool_inputs(values, keys, query, lengths);
  check_cpu(values);
  const int64_t B = sz.batch, T = sz.steps, D = sz.features, A = sz.key_size;
  check_attention_pool_backward_inputs(sz, grad_pooled, grad_weights, weights, values);
  // Every element written once below (the padding zeroed by the row's
  // worker): a [B, T, D] zero fill first cost ~5% of a classifier's training
  // step, mostly first-touch page faults.
  Tensor grad_values = empty_buffer({B, T, D}, values.options());
  Tensor grad_keys = keys.has_value() ? empty_buffer({B, T, A}, values.options())
                                      : at::empty({0}, values.options());
  // Each row's share of grad_query, summed over rows afterwards in a fixed order.
  Tensor grad_query_rows = at::zeros({B, A}, values.options().dtype(at::kDouble));
  if (B == 0) return {grad_values, grad_keys, at::zeros({A}, values.options())};
  const Tensor len = pool_lengths(lengths, plan, T, B, values.device());
  const Tensor& key_tensor = keys.has_value() ? *keys : values;
  const Tensor gp = grad_pooled.contiguous(), gw = grad_weights.contiguous(),
               w_all = weights.contiguous();

  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "masked_attention_pool_backward_cpu", [&] {
    using acc_t = double;
    const Strided3<scalar_t> v = strided3<scalar_t>(values), k = strided3<scalar_t>(key_tensor);
    const scalar_t* q = query.const_data_ptr<scalar_t>();
    const int64_t q_stride = query.stride(0);
    const int64_t* len_ptr = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    const scalar_t* gp_ptr = gp.const_data_ptr<scalar_t>();
    const scalar_t* gw_ptr = gw.const_data_ptr<scalar_t>();
    const scalar_t* w_ptr = w_all.const_data_ptr<scalar_t>();
    scalar_t* gv_ptr = grad_values.data_ptr<scalar_t>();
    scalar_t* gk_ptr = keys.has_value() ? grad_keys.data_ptr<scalar_t>() : nullptr;
    acc_t* gq_rows = grad_query_rows.data_ptr<acc_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> grad_score(T);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t L = len_ptr ? len_ptr[b] : T;
        const scalar_t* gpb = gp_ptr + b * D;
        // dL/dw_t = grad_pooled . v_t + grad_weights_t; softmax backward:
        // dL/ds_t = w_t (dL/dw_t - sum_u w_u dL/dw_u).
        acc_t weighted = 0;
        for (int64_t t = 0; t < L; ++t) {
          grad_score[t] = dot<scalar_t, acc_t>(gpb, 1, v.row(b, t), v.stride_f, D) +
                          acc_t(gw_ptr[b * T + t]);
          weighted += acc_t(w_ptr[b * T + t]) * grad_score[t];
        }
        for (int64_t t = 0; t < L; ++t) {
          const acc_t w = w_ptr[b * T + t];
          const acc_t ds = w * (grad_score[t] - weighted);
          scalar_t* gv = gv_ptr + (b * T + t) * D;
          if (gk_ptr != nullptr) {
            for (int64_t d = 0; d < D; ++d) gv[d] = static_cast<scalar_t>(w * acc_t(gpb[d]));
            scalar_t* gk = gk_ptr + (b * T + t) * A;
            for (int64_t a = 0; a < A; ++a) gk[a] = static_cast<scalar_t>(ds * acc_t(q[a * q_stride]));
          } else if (q_stride == 1) {  // keys are the values: their gradient adds to
                                       // grad_values (one rounding)
            for (int64_t d = 0; d < D; ++d)
              gv[d] = static_cast<scalar_t>(w * acc_t(gpb[d]) + ds * acc_t(q[d]));
          } else {
            for (int64_t d = 0; d < D; ++d)
              gv[d] = static_cast<scalar_t>(w * acc_t(gpb[d]) + ds * acc_t(q[d * q_stride]));
          }
          add_scaled(gq_rows + b * A, ds, k.row(b, t), k.stride_f, A);
        }
        std::fill(gv_ptr + (b * T + L) * D, gv_ptr + (b + 1) * T * D, scalar_t(0));
        if (gk_ptr != nullptr) std::fill(gk_ptr + (b * T + L) * A, gk_ptr + (b + 1) * T * A, scalar_t(0));
      }
    });
  });
  Tensor grad_query = grad_query_rows.sum(0).to(values.scalar_type());
  return {grad_values, grad_keys, grad_query};
}

}  // namespace

TORCH_LIBRARY_IMPL(seqcls_fast, CPU, m) {
  m.impl("masked_attention_pool_forward", &masked_attention_pool_forward_cpu);
  m.impl("masked_attention_pool_backward", &masked_attention_pool_backward_cpu);
}

}  // namespace seqcls_fast::cpu
