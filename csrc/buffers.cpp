// Large per-call buffers (buffers.h).
#include "buffers.h"

#include <ATen/ATen.h>

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace seqcls_fast {

at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#ifdef __linux__
  constexpr uintptr_t kHugePage = uintptr_t{1} << 21;
  const size_t bytes = t.nbytes();
  if (t.device().is_cpu() && bytes >= 2 * kHugePage) {
    // The whole 2 MiB pages inside the buffer, nothing outside it. A kernel
    // without THP refuses the advice and keeps ordinary pages: nothing to report.
    const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
    if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return t;
}

at::Tensor zeros_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return empty_buffer(sizes, options).zero_();
}

}  // namespace seqcls_fast
