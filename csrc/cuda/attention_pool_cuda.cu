// masked_attention_pool_forward / _backward on CUDA: the host code (checks,
// buffers, launches) of the kernels in attention_pool_cuda_kernels.cuh, which
// documents the schedule. Same semantics as the CPU kernels in
// csrc/cpu/attention_pool_cpu.cpp (see csrc/ops.cpp), not the same rounding:
// these accumulate in acc_t (float for float32 and below), the CPU in double. Compiled by nvcc, and
// by the host compiler for the CPU emulator (csrc/cuda_emu/), through
// device_compat.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>

#include "../attention_pool_common.h"
#include "../length_plan.h"
#include "attention_pool_cuda_kernels.cuh"
#include "device_compat.h"

namespace seqcls_fast::SEQCLS_CUDA_NS {
namespace {

using at::Tensor;
using c10::optional;

// Whether the lengths or plan given live on the device (GPU lengths): read
// there with no host copy. CPU lengths and plans are read on the host.
bool lengths_resident(const optional<Tensor>& lengths, const optional<Tensor>& plan) {
  const optional<Tensor>& given = lengths_source(lengths, plan);
  return given.has_value() && resident_on_device(given->device());
}

// The kernels index T, D and A as int32 (the params structs above).
void check_cuda(const Tensor& values, const PoolSizes& sz) {
  SEQCLS_CHECK_VALUE(on_kernel_device(values.device()), "values must be on ", kKernelDevice,
                     " for the CUDA kernel, got ", values.device());
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  SEQCLS_CHECK_VALUE(sz.steps <= kMax && sz.features <= kMax && sz.key_size <= kMax,
                     "values and keys must have T, D and A below 2^31 for the CUDA kernel, got T = ",
                     sz.steps, ", D = ", sz.features, ", A = ", sz.key_size);
}

std::tuple<Tensor, Tensor> masked_attention_pool_forward_cuda(const Tensor& values,
                                                               const optional<Tensor>& keys,
                                                               const Tensor& query,
                                                               const optional<Tensor>& lengths,
                                                               const optional<Tensor>& plan) {
  const PoolSizes sz = check_attention_pool_inputs(values, keys, query, lengths);
  check_cuda(values, sz);
  const DeviceGuard device_guard(values.device());
  const int64_t B = sz.batch, T = sz.steps, D = sz.features, A = sz.key_size;
  Tensor pooled = at::empty({B, D}, values.options());
  Tensor weights = at::empty({B, T}, values.options());
  if (B == 0) return {pooled, weights};
  const Tensor len =
      pool_lengths(lengths, plan, T, B, values.device(), lengths_resident(lengths, plan));
  const Tensor& key_tensor = keys.has_value() ? *keys : values;
  const at::ScalarType acc_dtype = at::toOpMathType(values.scalar_type());
  Tensor workspace = at::empty({B, T}, values.options().dtype(acc_dtype));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, values.scalar_type(), "masked_attention_pool_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        PoolForwardParams<scalar_t, acc_t> p{};
        p.steps = static_cast<int32_t>(T);
        p.features = static_cast<int32_t>(D);
        p.key_size = static_cast<int32_t>(A);
        p.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
        p.values = strided3<scalar_t>(values);
        p.keys = strided3<scalar_t>(key_tensor);
        p.query = query.const_data_ptr<scalar_t>();
        p.query_stride = query.stride(0);
        p.workspace = workspace.data_ptr<acc_t>();
        p.pooled = pooled.data_ptr<scalar_t>();
        p.weights = weights.data_ptr<scalar_t>();
        launch(attention_pool_forward_kernel<scalar_t, acc_t>, static_cast<unsigned int>(B),
               kPoolThreads, current_stream(), p);
      });
  return {pooled, weights};
}

std::tuple<Tensor, Tensor, Tensor> masked_attention_pool_backward_cuda(
    const Tensor& grad_pooled, const Tensor& grad_weights, const Tensor& values,
    const optional<Tensor>& keys, const Tensor& query, const optional<Tensor>& lengths,
    const Tensor& weights, const optional<Tensor>& plan) {
  const PoolSizes sz = check_attention_pool_inputs(values, keys, query, lengths);
  check_cuda(values, sz);
  const int64_t B = sz.batch, T = sz.steps, D = sz.features, A = sz.key_size;
  check_attention_pool_backward_inputs(sz, grad_pooled, grad_weights, weights, values);
  const DeviceGuard device_guard(values.device());
  Tensor grad_values = at::empty({B, T, D}, values.options());
  Tensor grad_keys = at::empty({keys.has_value() ? B * T * A : 0}, values.options());
  if (keys.has_value()) grad_keys = grad_keys.view({B, T, A});
  if (B == 0) return {grad_values, grad_keys, at::zeros({A}, values.options())};
  const Tensor len =
      pool_lengths(lengths, plan, T, B, values.device(), lengths_resident(lengths, plan));
  const Tensor& key_tensor = keys.has_value() ? *keys : values;
  const Tensor gp = grad_pooled.contiguous(), gw = grad_weights.contiguous(),
               w_all = weights.contiguous();
  const at::ScalarType acc_dtype = at::toOpMathType(values.scalar_type());
  Tensor workspace = at::empty({B, T}, values.options().dtype(acc_dtype));
  Tensor grad_query_rows = at::empty({B, A}, values.options().dtype(acc_dtype));
  Tensor grad_query = at::empty({A}, values.options());
  const Stream stream = current_stream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, values.scalar_type(), "masked_attention_pool_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        PoolBackwardParams<scalar_t, acc_t> p{};
        p.steps = static_cast<int32_t>(T);
        p.features = static_cast<int32_t>(D);
        p.key_size = static_cast<int32_t>(A);
        p.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
        p.values = strided3<scalar_t>(values);
        p.keys = strided3<scalar_t>(key_tensor);
        p.keys_are_values = !keys.has_value();
        p.query = query.const_data_ptr<scalar_t>();
        p.query_stride = query.stride(0);
        p.grad_pooled = gp.const_data_ptr<scalar_t>();
        p.grad_weights = gw.const_data_ptr<scalar_t>();
        p.weights = w_all.const_data_ptr<scalar_t>();
        p.workspace = workspace.data_ptr<acc_t>();
        p.grad_values = grad_values.data_ptr<scalar_t>();
        p.grad_keys = keys.has_value() ? grad_keys.data_ptr<scalar_t>() : nullptr;
        p.grad_query_rows = grad_query_rows.data_ptr<acc_t>();
        launch(attention_pool_backward_kernel<scalar_t, acc_t>, static_cast<unsigned int>(B),
               kPoolThreads, stream, p);
        if (A > 0) {
          launch(sum_rows_kernel<scalar_t, acc_t>,
                 static_cast<unsigned int>((A + kReduceThreads - 1) / kReduceThreads),
                 kReduceThreads, stream, grad_query_rows.const_data_ptr<acc_t>(),
                 grad_query.data_ptr<scalar_t>(), B, A);
        }
      });
  return {grad_values, grad_keys, grad_query};
}

}  // namespace

TORCH_LIBRARY_IMPL(SEQCLS_CUDA_OPS, SEQCLS_CUDA_KEY, m) {
  m.impl("masked_attention_pool_forward", &masked_attention_pool_forward_cuda);
  m.impl("masked_attention_pool_backward", &masked_attention_pool_backward_cuda);
}

}  // namespace seqcls_fast::SEQCLS_CUDA_NS
