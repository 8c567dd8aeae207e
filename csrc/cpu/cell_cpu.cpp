// Portable build of the pointwise step kernels (ATen's Vectorized at the
// baseline ISA), and the runtime choice between it and the AVX2 build in
// cell_cpu_avx2.cpp (x86-64 only; cpu_isa(), so SEQCLS_FAST_CPU_ISA=
// baseline selects the portable build on any CPU).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "../cell.h"
#include "cell_cpu.h"
#include "recurrence_cpu.h"

namespace seqcls_fast {

template <typename T>
struct CellMath<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V exp(V x) { return x.exp(); }
  static V tanh(V x) { return x.tanh(); }
  static V relu(V x) { return at::vec::maximum(x, V(T(0))); }  // propagates NaN
  static V relu_grad(V h, V dh) { return V::blendv(V(T(0)), dh, h > V(T(0))); }
};

namespace cpu::generic {

template <typename T>
struct VecOps {
  using Vec = at::vec::Vectorized<T>;
  static constexpr int64_t size = Vec::size();
  static Vec load(const T* p, int64_t n) { return n == size ? Vec::loadu(p) : Vec::loadu(p, n); }
  static void store(const Vec& v, T* p, int64_t n) { v.store(p, static_cast<int>(n)); }
};

#define SEQCLS_CPU_KERNEL
#include "cell_cpu_kernel.h"

}  // namespace cpu::generic

namespace cpu {

void lstm_forward_step_cpu(const ForwardStep& params, c10::ScalarType dtype) {
#if defined(SEQCLS_WITH_X86_KERNELS)
  if (cpu_isa() >= CpuIsa::kAvx2) return avx2::lstm_forward_step(params, dtype);
#endif
  generic::lstm_forward_step(params, dtype);
}

void lstm_backward_step_cpu(const BackwardStep& params, c10::ScalarType dtype) {
#if defined(SEQCLS_WITH_X86_KERNELS)
  if (cpu_isa() >= CpuIsa::kAvx2) return avx2::lstm_backward_step(params, dtype);
#endif
  generic::lstm_backward_step(params, dtype);
}

void gru_forward_step_cpu(const ForwardStep& params, c10::ScalarType dtype) {
#if defined(SEQCLS_WITH_X86_KERNELS)
  if (cpu_isa() >= CpuIsa::kAvx2) return avx2::gru_forward_step(params, dtype);
#endif
  generic::gru_forward_step(params, dtype);
}

void gru_backward_step_cpu(const BackwardStep& params, c10::ScalarType dtype) {
#if defined(SEQCLS_WITH_X86_KERNELS)
  if (cpu_isa() >= CpuIsa::kAvx2) return avx2::gru_backward_step(params, dtype);
#endif
  generic::gru_backward_step(params, dtype);
}

void rnn_forward_step_cpu(const ForwardStep& params, c10::ScalarType dtype) {
#if defined(SEQCLS_WITH_X86_KERNELS)
  if (cpu_isa() >= CpuIsa::kAvx2) return avx2::rnn_forward_step(params, dtype);
#endif
  generic::rnn_forward_step(params, dtype);
}

void rnn_backward_step_cpu(const BackwardStep& params, c10::ScalarType dtype) {
#if defined(SEQCLS_WITH_X86_KERNELS)
  if (cpu_isa() >= CpuIsa::kAvx2) return avx2::rnn_backward_step(params, dtype);
#endif
  generic::rnn_backward_step(params, dtype);
}

}  // namespace cpu
}  // namespace seqcls_fast
