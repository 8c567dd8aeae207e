// Allocation of the large buffers the operators make on every call (outputs,
// saved activations, scratch). Host code only; .cu files may include it.
#pragma once

#include <ATen/core/Tensor.h>

namespace seqcls_fast {

// at::empty, and on Linux CPUs a buffer of 4 MiB or more is advised to the
// kernel as transparent-huge-page memory before anything touches it, as
// PyTorch's own THP_MEM_ALLOC_ENABLE does for every allocation. A fresh
// buffer of tens of MB otherwise takes a page fault per 4 KiB on first touch,
// which costs about as much as the kernel that fills it
// (benchmarks/NOTES.md). Advice only: the system's THP setting decides.
at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);

// empty_buffer filled with zeros.
at::Tensor zeros_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace seqcls_fast
