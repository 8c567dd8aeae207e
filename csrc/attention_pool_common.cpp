// Masked attention pooling: argument checks and the per-row lengths, shared by
// the CPU and CUDA kernels.
#include "attention_pool_common.h"

#include <ATen/ATen.h>

#include "length_plan.h"
#include "recurrent_common.h"

namespace seqcls_fast {

PoolSizes check_attention_pool_inputs(const at::Tensor& values,
                                      const c10::optional<at::Tensor>& keys,
                                      const at::Tensor& query,
                                      const c10::optional<at::Tensor>& lengths) {
  SEQCLS_CHECK_VALUE(values.dim() == 3, "values must have shape [B, T, D], got ", values.sizes());
  SEQCLS_CHECK_TYPE(at::isFloatingType(values.scalar_type()),
                    "values must be a floating tensor, got ", values.scalar_type());
  const int64_t B = values.size(0), T = values.size(1), D = values.size(2);
  int64_t A = D;
  if (keys.has_value()) {
    check_same_kind(*keys, "keys", values, "values");
    SEQCLS_CHECK_VALUE(keys->dim() == 3 && keys->size(0) == B && keys->size(1) == T,
                       "keys must have shape [B, T, A] = [", B, ", ", T, ", A], got ",
                       keys->sizes());
    A = keys->size(2);
  }
  check_same_kind(query, "query", values, "values");
  SEQCLS_CHECK_VALUE(query.dim() == 1 && query.size(0) == A, "query must have shape [", A,
                     "] (the feature size of ", keys.has_value() ? "keys" : "values", "), got ",
                     query.sizes());
  SEQCLS_CHECK_VALUE(B == 0 || T > 0,
                     "values must have at least one time step (T >= 1), got shape ",
                     values.sizes());
  check_lengths_form(lengths, B, values.device());
  return {B, T, D, A};
}

void check_attention_pool_backward_inputs(const PoolSizes& sizes, const at::Tensor& grad_pooled,
                                          const at::Tensor& grad_weights,
                                          const at::Tensor& weights, const at::Tensor& values) {
  check_shape(grad_pooled, {sizes.batch, sizes.features}, "grad_pooled");
  check_shape(grad_weights, {sizes.batch, sizes.steps}, "grad_weights");
  check_shape(weights, {sizes.batch, sizes.steps}, "weights");
  check_same_kind(grad_pooled, "grad_pooled", values, "values");
  check_same_kind(grad_weights, "grad_weights", values, "values");
  check_same_kind(weights, "weights", values, "values");
}

at::Tensor pool_lengths(const c10::optional<at::Tensor>& lengths,
                        const c10::optional<at::Tensor>& plan, int64_t steps, int64_t batch,
                        const at::Device& device, bool resident) {
  // A plan table: its forward-direction expansion, which the recurrent
  // layers already made and uploaded for this batch. Raw lengths: planned
  // here, only their caller-order row uploaded.
  // A resident plan's device expansion is the one the persistent layers made.
  const PlanAccess access{resident, /*device_steps=*/true};
  if (plan.has_value()) {
    return batch_plan(lengths, plan, steps, batch, /*reverse=*/false, device, access)->dev.lengths;
  }
  if (!lengths.has_value()) return at::Tensor();
  if (resident) return make_device_plan_table(*lengths, steps)[2];
  return make_plan_table(*lengths, steps)[2].to(device, at::kLong, /*non_blocking=*/true);
}

}  // namespace seqcls_fast
