// The length plan of a batch: its lengths validated and sorted once, then
// handed to every layer, direction, pass and the pooling (what batch_sizes
// is to a PackedSequence, cu_seqlens to flash-attention's varlen API).
//
// As a tensor (the `plan` argument of every operator, made by the
// length_plan operator): int64 [3, B] on the CPU, pinned when the lengths
// came from a GPU so the kernels' index uploads need no synchronization:
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

// Validates lengths (any integer dtype, any device: device lengths cost one
// device-to-host copy) against T and sorts them; returns the [3, B] plan.
at::Tensor make_plan_table(const at::Tensor& lengths, int64_t steps_total);

// Checks that `plan` is a plan for B rows of at most T steps (shape, dtype,
// device, every value in range, a permutation) and returns it contiguous.
// Linear in B; no copy from a device, no sort.
at::Tensor read_plan_table(const at::Tensor& plan, int64_t steps_total, int64_t batch);

// How often plans were made from raw lengths and how many device-to-host
// copies that took, since the library was loaded (test hook:
// seqcls_fast._C.length_plan_stats()).
struct LengthPlanStats {
  int64_t plans_made;
  int64_t host_copies;
};
LengthPlanStats length_plan_stats();

}  // namespace seqcls_fast
