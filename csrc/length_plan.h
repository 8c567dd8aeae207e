// The length plan of a batch: its lengths validated and sorted once, then
// handed to every layer, direction, pass and the pooling (what batch_sizes
// is to a PackedSequence, cu_seqlens to flash-attention's varlen API).
//
// As a tensor (the `plan` argument of every operator, made by the
// length_plan operator): int64 [3, B], on the CPU for lengths on the CPU, on
// the device for lengths on a GPU (sorted there, no host copy: the persistent
// CUDA recurrence reads it there; the per-step path copies it to the host
// once, pinned, so the kernels' index uploads need no synchronization):
//   plan[0]: sorted row -> caller row (lengths descending, ties in caller order)
//   plan[1]: lengths in sorted order
//   plan[2]: lengths in caller order
// An operator expands a table into its step layout and device copy once per
// table and direction (batch_plan, recurrent_common.h), so the layers,
// directions and passes after the first reuse them. Host code only, on
// narrow ATen headers (.cu files include it).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace seqcls_fast {

// Validates lengths (any integer dtype) against T on the host and sorts them
// there; returns the [3, B] plan on the CPU. Lengths `resident` on a device
// (by default: not on the CPU) cost one device-to-host copy, counted.
at::Tensor make_plan_table(const at::Tensor& lengths, int64_t steps_total);
at::Tensor make_plan_table(const at::Tensor& lengths, int64_t steps_total, bool resident);

// The same plan made where the lengths are, with no host copy: a stable sort
// on the device. A length outside [1, T] cannot raise here without a
// synchronization: it fails an asynchronous device assertion (PyTorch's rule
// for indices on a GPU), so the error surfaces at the next synchronization
// and no kernel after it runs; on the CPU (the emulator) it raises at once.
at::Tensor make_device_plan_table(const at::Tensor& lengths, int64_t steps_total);

// Checks that `plan` is a plan for B rows of at most T steps (shape, dtype,
// device, every value in range, a permutation) and returns it contiguous.
// Linear in B; no copy from a device, no sort. `resident`: the plan lives on
// the kernel device and its values are checked there, asynchronously (as
// make_device_plan_table's lengths); shape and dtype on the host.
at::Tensor read_plan_table(const at::Tensor& plan, int64_t steps_total, int64_t batch,
                           bool resident = false);

// A device-resident plan table on the host for code that plans its steps
// there (the per-step path): one device-to-host copy, counted.
at::Tensor host_copy_of_plan(const at::Tensor& plan);

// What carries a call's lengths: its plan table when given, else its raw
// lengths (neither: every row runs all T steps). Where that tensor lives
// decides whether host code may read the lengths without a copy.
inline const c10::optional<at::Tensor>& lengths_source(const c10::optional<at::Tensor>& lengths,
                                                       const c10::optional<at::Tensor>& plan) {
  return plan.has_value() ? plan : lengths;
}

// How often plans were made from raw lengths and how many device-to-host
// copies that took, since the library was loaded (test hook:
// seqcls_fast._C.length_plan_stats()).
struct LengthPlanStats {
  int64_t plans_made;
  int64_t host_copies;
};
LengthPlanStats length_plan_stats();

}  // namespace seqcls_fast
