// The length plan (length_plan.h) and the length_plan operator, one kernel
// for every device (the work is on the host).
#include "length_plan.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <vector>

#include "checks.h"

namespace seqcls_fast {
namespace {

std::atomic<int64_t> g_plans_made{0};
std::atomic<int64_t> g_host_copies{0};

// length_plan(lengths, steps, batch, device): lengths [B] of any integer
// dtype, on the CPU or on `device` (default: wherever they are).
at::Tensor length_plan_op(const at::Tensor& lengths, int64_t steps, int64_t batch,
                          std::optional<at::Device> device) {
  check_lengths_form(lengths, batch, device.value_or(lengths.device()));
  SEQCLS_CHECK_VALUE(steps >= 1 || batch == 0, "steps must be at least 1, got ", steps);
  return make_plan_table(lengths, steps);
}

}  // namespace

at::Tensor make_plan_table(const at::Tensor& lengths, int64_t steps_total) {
  ++g_plans_made;
  at::Tensor host = lengths;
  if (!lengths.device().is_cpu()) {
    ++g_host_copies;
    host = lengths.to(at::kCPU);  // the one synchronization of a batch
  }
  const at::Tensor checked = checked_lengths_cpu(host, steps_total);
  const int64_t B = checked.numel();
  const bool pinned = !lengths.device().is_cpu();
  at::Tensor table = at::empty({3, B}, at::TensorOptions().dtype(at::kLong).pinned_memory(pinned));
  int64_t* order = table.data_ptr<int64_t>();
  int64_t* sorted = order + B;
  int64_t* caller = order + 2 * B;
  const int64_t* len = checked.const_data_ptr<int64_t>();
  std::copy(len, len + B, caller);
  std::iota(order, order + B, int64_t{0});
  std::stable_sort(order, order + B, [len](int64_t a, int64_t b) { return len[a] > len[b]; });
  for (int64_t j = 0; j < B; ++j) sorted[j] = len[order[j]];
  return table;
}

at::Tensor read_plan_table(const at::Tensor& plan, int64_t steps_total, int64_t batch) {
  SEQCLS_CHECK_TYPE(plan.scalar_type() == at::kLong, "plan must be an int64 tensor (from "
                    "seqcls_fast.LengthPlan), got ", plan.scalar_type());
  SEQCLS_CHECK_VALUE(plan.device().is_cpu(), "plan must be on the CPU, got ", plan.device());
  SEQCLS_CHECK_VALUE(plan.dim() == 2 && plan.size(0) == 3 && plan.size(1) == batch,
                     "plan must have shape [3, B] = [3, ", batch, "], got ", plan.sizes());
  const at::Tensor table = plan.contiguous();
  const int64_t* order = table.const_data_ptr<int64_t>();
  const int64_t* sorted = order + batch;
  const int64_t* caller = order + 2 * batch;
  std::vector<bool> seen(batch, false);
  for (int64_t j = 0; j < batch; ++j) {
    const int64_t r = order[j];
    SEQCLS_CHECK_VALUE(r >= 0 && r < batch && !seen[r] && caller[r] == sorted[j] &&
                           sorted[j] >= 1 && sorted[j] <= steps_total &&
                           (j == 0 || sorted[j] <= sorted[j - 1]),
                       "plan is not a length plan of this batch (B = ", batch, ", T = ",
                       steps_total, "): make it with seqcls_fast.LengthPlan(lengths, T)");
    seen[r] = true;
  }
  return table;
}

LengthPlanStats length_plan_stats() { return {g_plans_made.load(), g_host_copies.load()}; }

TORCH_LIBRARY_IMPL(seqcls_fast, CompositeExplicitAutograd, m) {
  m.impl("length_plan", &length_plan_op);
}
#ifdef SEQCLS_WITH_CUDA_EMU
TORCH_LIBRARY_IMPL(seqcls_fast_cuda_emu, CompositeExplicitAutograd, m) {
  m.impl("length_plan", &length_plan_op);
}
#endif

}  // namespace seqcls_fast
