// Argument checks shared by every operator and backend. Host code only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>

// Errors surface in Python as ValueError / TypeError naming the argument.
#define SEQCLS_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, "seqcls_fast: ", __VA_ARGS__)
#define SEQCLS_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "seqcls_fast: ", __VA_ARGS__)

namespace seqcls_fast {

// Same dtype and device as `like` (named `like_name` in the message).
void check_same_kind(const at::Tensor& t, const char* name, const at::Tensor& like,
                     const char* like_name);

// The CPU kernels' dtypes: float32 or float64 (float16 and bfloat16 run on
// CUDA only).
void check_cpu_dtype(const at::Tensor& t, const char* name);

// Exact shape.
void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name);

// lengths: a 1-D integer tensor of size B on the CPU or on `device`.
void check_lengths_form(const c10::optional<at::Tensor>& lengths, int64_t batch,
                        const at::Device& device);

// lengths (already on the CPU) as a contiguous int64 tensor, every value
// checked to lie in [1, T].
at::Tensor checked_lengths_cpu(const at::Tensor& lengths_cpu, int64_t steps_total);

}  // namespace seqcls_fast
