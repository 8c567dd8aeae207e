// Input checks shared by the CPU and CUDA masked attention pooling kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

#include "checks.h"
#include "strided3.h"

namespace seqcls_fast {

struct PoolSizes {
  int64_t batch;     // B
  int64_t steps;     // T
  int64_t features;  // D, of values
  int64_t key_size;  // A, of keys and query (D when keys are the values)
};

PoolSizes check_attention_pool_inputs(const at::Tensor& values,
                                      const c10::optional<at::Tensor>& keys,
                                      const at::Tensor& query,
                                      const c10::optional<at::Tensor>& lengths);

// The backward's incoming gradients and saved weights: exact shapes, and
// the dtype and device of values (both kernels read them through typed
// pointers).
void check_attention_pool_backward_inputs(const PoolSizes& sizes, const at::Tensor& grad_pooled,
                                          const at::Tensor& grad_weights,
                                          const at::Tensor& weights, const at::Tensor& values);

// Each row's length as contiguous int64 [B] on `device`, from the plan when
// given, else from lengths (validated on the host); undefined when neither is
// given (every row has T steps). `resident`: lengths or plan live on the
// device (GPU lengths), read and checked there with no host copy.
at::Tensor pool_lengths(const c10::optional<at::Tensor>& lengths,
                        const c10::optional<at::Tensor>& plan, int64_t steps, int64_t batch,
                        const at::Device& device, bool resident = false);

// The strided view of a [B, T, F] tensor of element type T.
template <typename T>
Strided3<T> strided3(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}

}  // namespace seqcls_fast
