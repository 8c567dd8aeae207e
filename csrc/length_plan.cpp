// The length plan (length_plan.h) and the length_plan operator, one kernel
// for every device (on the host for CPU lengths, ATen ops on the device for
// device lengths).
#include "length_plan.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <string>
#include <vector>

#include "checks.h"
#ifdef SEQCLS_WITH_CUDA_EMU
#include "cuda_emu/emulator_runtime.h"
#endif

namespace seqcls_fast {
namespace {

std::atomic<int64_t> g_plans_made{0};
std::atomic<int64_t> g_host_copies{0};

// length_plan(lengths, steps, batch, device): lengths [B] of any integer
// dtype, on the CPU or on `device` (default: wherever they are). `resident`:
// whether lengths not on the CPU count as on a device (the emulated backend
// models device lengths on CPU tensors: lengths_resident below).
at::Tensor plan_of_lengths(const at::Tensor& lengths, int64_t steps, int64_t batch,
                           std::optional<at::Device> device, bool resident) {
  check_lengths_form(lengths, batch, device.value_or(lengths.device()));
  SEQCLS_CHECK_VALUE(steps >= 1 || batch == 0, "steps must be at least 1, got ", steps);
  return resident ? make_device_plan_table(lengths, steps) : make_plan_table(lengths, steps);
}

at::Tensor length_plan_op(const at::Tensor& lengths, int64_t steps, int64_t batch,
                          std::optional<at::Device> device) {
  return plan_of_lengths(lengths, steps, batch, device, !lengths.device().is_cpu());
}

#ifdef SEQCLS_WITH_CUDA_EMU
at::Tensor emulated_length_plan_op(const at::Tensor& lengths, int64_t steps, int64_t batch,
                                   std::optional<at::Device> device) {
  return plan_of_lengths(lengths, steps, batch, device, seqcls_emu::device_resident_lengths());
}
#endif

// One bool on the device: every check holds. Raises (asynchronously on a GPU)
// with `message` otherwise.
void assert_on_device(const at::Tensor& all_hold, const std::string& message) {
  at::_assert_async(all_hold, message);
}

// read_plan_table's checks as device ops (no host copy): the order a
// permutation, the sorted lengths its rows' lengths, descending, in [1, T].
void check_plan_on_device(const at::Tensor& table, int64_t steps_total, int64_t batch,
                          const std::string& message) {
  if (batch == 0) return;
  const at::Tensor order = table[0], sorted = table[1], caller = table[2];
  // A permutation sorts to 0 .. B-1 (a sort, not a scatter: no atomics, and
  // nothing that synchronizes in deterministic mode).
  at::Tensor ok = at::eq(std::get<0>(at::sort(order)), at::arange(batch, table.options()));
  const at::Tensor safe_order = order.clamp(0, batch - 1);
  ok = at::logical_and(ok, caller.index_select(0, safe_order) == sorted);
  ok = at::logical_and(ok, at::logical_and(sorted >= 1, sorted <= steps_total));
  ok = ok.all();
  if (batch > 1) {
    ok = at::logical_and(ok, (sorted.narrow(0, 0, batch - 1) >= sorted.narrow(0, 1, batch - 1)).all());
  }
  assert_on_device(ok, message);
}

}  // namespace

at::Tensor make_plan_table(const at::Tensor& lengths, int64_t steps_total) {
  return make_plan_table(lengths, steps_total, !lengths.device().is_cpu());
}

at::Tensor make_plan_table(const at::Tensor& lengths, int64_t steps_total, bool resident) {
  ++g_plans_made;
  at::Tensor host = lengths;
  if (resident) {
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

at::Tensor make_device_plan_table(const at::Tensor& lengths, int64_t steps_total) {
  ++g_plans_made;
  const at::Tensor len = lengths.to(at::kLong).contiguous();
  assert_on_device(at::logical_and(len >= 1, len <= steps_total).all(),
                   "seqcls_fast: lengths must lie in [1, T] = [1, " +
                       std::to_string(steps_total) + "] (checked on the device)");
  // Descending, ties in caller order: the host plan's order exactly.
  const auto [sorted, order] = at::sort(len, /*stable=*/true, /*dim=*/0, /*descending=*/true);
  return at::stack({order, sorted, len});
}

at::Tensor host_copy_of_plan(const at::Tensor& plan) {
  ++g_host_copies;
  return plan.to(at::kCPU, plan.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

at::Tensor read_plan_table(const at::Tensor& plan, int64_t steps_total, int64_t batch,
                           bool resident) {
  SEQCLS_CHECK_TYPE(plan.scalar_type() == at::kLong, "plan must be an int64 tensor (from "
                    "seqcls_fast.LengthPlan), got ", plan.scalar_type());
  SEQCLS_CHECK_VALUE(resident || plan.device().is_cpu(), "plan must be on the CPU, got ",
                     plan.device());
  SEQCLS_CHECK_VALUE(plan.dim() == 2 && plan.size(0) == 3 && plan.size(1) == batch,
                     "plan must have shape [3, B] = [3, ", batch, "], got ", plan.sizes());
  const at::Tensor table = plan.contiguous();
  const std::string not_a_plan = "plan is not a length plan of this batch (B = " +
                                 std::to_string(batch) + ", T = " + std::to_string(steps_total) +
                                 "): make it with seqcls_fast.LengthPlan(lengths, T)";
  if (resident) {
    check_plan_on_device(table, steps_total, batch, not_a_plan);
    return table;
  }
  const int64_t* order = table.const_data_ptr<int64_t>();
  const int64_t* sorted = order + batch;
  const int64_t* caller = order + 2 * batch;
  std::vector<bool> seen(batch, false);
  for (int64_t j = 0; j < batch; ++j) {
    const int64_t r = order[j];
    SEQCLS_CHECK_VALUE(r >= 0 && r < batch && !seen[r] && caller[r] == sorted[j] &&
                           sorted[j] >= 1 && sorted[j] <= steps_total &&
                           (j == 0 || sorted[j] <= sorted[j - 1]),
                       not_a_plan);
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
  m.impl("length_plan", &emulated_length_plan_op);
}
#endif

}  // namespace seqcls_fast
