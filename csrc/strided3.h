// Strided3: a [B, T, F] tensor read through its strides (in elements), the
// view both attention pooling backends take of values and keys. No ATen, so
// CUDA kernels (and the emulator's sanitizer drivers) include it;
// attention_pool_common.h makes one from a Tensor.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace seqcls_fast {

template <typename T>
struct Strided3 {
  const T* data;
  int64_t stride_b, stride_t, stride_f;

  SEQCLS_HOST_DEVICE const T& operator()(int64_t b, int64_t t, int64_t f) const {
    return data[b * stride_b + t * stride_t + f * stride_f];
  }
  // Element (b, t, 0): row (b, t) read at stride stride_f.
  SEQCLS_HOST_DEVICE const T* row(int64_t b, int64_t t) const {
    return data + b * stride_b + t * stride_t;
  }
};

}  // namespace seqcls_fast
