// Argument checks shared by every operator and backend (checks.h).
#include "checks.h"

#include <ATen/ATen.h>

namespace seqcls_fast {

void check_same_kind(const at::Tensor& t, const char* name, const at::Tensor& like,
                     const char* like_name) {
  SEQCLS_CHECK_TYPE(t.scalar_type() == like.scalar_type(), name, " must have the dtype of ",
                    like_name, " (", like.scalar_type(), "), got ", t.scalar_type());
  SEQCLS_CHECK_VALUE(t.device() == like.device(), name, " must be on the device of ", like_name,
                     " (", like.device(), "), got ", t.device());
}

void check_cpu_dtype(const at::Tensor& t, const char* name) {
  SEQCLS_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                    " must be float32 or float64 on the CPU (float16 and bfloat16 run on CUDA "
                    "only), got ", t.scalar_type());
}

void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  SEQCLS_CHECK_VALUE(t.sizes() == expected, name, " must have shape ", expected, ", got ",
                     t.sizes());
}

void check_lengths_form(const c10::optional<at::Tensor>& lengths, int64_t batch,
                        const at::Device& device) {
  if (!lengths.has_value()) return;
  const at::Tensor& l = *lengths;
  SEQCLS_CHECK_TYPE(at::isIntegralType(l.scalar_type(), /*includeBool=*/false),
                    "lengths must be an integer tensor, got ", l.scalar_type());
  SEQCLS_CHECK_VALUE(l.dim() == 1 && l.size(0) == batch, "lengths must have shape [B] = [", batch,
                     "], got ", l.sizes());
  SEQCLS_CHECK_VALUE(l.device().is_cpu() || l.device() == device,
                     "lengths must be on the CPU or on the input's device (", device, "), got ",
                     l.device());
}

at::Tensor checked_lengths_cpu(const at::Tensor& lengths_cpu, int64_t steps_total) {
  TORCH_INTERNAL_ASSERT(lengths_cpu.device().is_cpu());
  at::Tensor lengths = lengths_cpu.to(at::kLong).contiguous();
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < lengths.numel(); ++b) {
    SEQCLS_CHECK_VALUE(len[b] >= 1 && len[b] <= steps_total, "lengths must lie in [1, T] = [1, ",
                       steps_total, "], got lengths[", b, "] = ", len[b]);
  }
  return lengths;
}

}  // namespace seqcls_fast
