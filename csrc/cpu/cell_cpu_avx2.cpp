// AVX2+FMA build of the pointwise step kernels. Only the functions in this
// file are compiled for AVX2 (the target pragma), and cell_cpu.cpp calls
// them only after checking the CPU supports it, so the library still runs on
// older x86-64 CPUs. exp and tanh come from SLEEF's AVX2 routines (1-ULP
// accuracy), which libtorch_cpu exports for ATen's own kernels.
#if defined(__x86_64__) || defined(_M_X64)

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "cell_cpu.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

// Included here so the shared cell math is instantiated for AVX2 and inlined.
#include "../cell.h"

extern "C" {
__m256 Sleef_expf8_u10avx2(__m256);
__m256 Sleef_tanhf8_u10avx2(__m256);
__m256d Sleef_expd4_u10avx2(__m256d);
__m256d Sleef_tanhd4_u10avx2(__m256d);
}

// GCC does not extend the target pragma to functions defined inside a class
// body, so those carry the attribute themselves.
#define SEQCLS_AVX2 __attribute__((target("avx2,fma")))

namespace seqcls_fast {
namespace cpu::avx2 {

// Thin value types over one AVX register: just the arithmetic the cell needs.
struct Float8 {
  __m256 v;
  Float8() = default;
  SEQCLS_AVX2 Float8(__m256 x) : v(x) {}
  SEQCLS_AVX2 Float8(float x) : v(_mm256_set1_ps(x)) {}
  SEQCLS_AVX2 friend Float8 operator+(Float8 a, Float8 b) { return _mm256_add_ps(a.v, b.v); }
  SEQCLS_AVX2 friend Float8 operator-(Float8 a, Float8 b) { return _mm256_sub_ps(a.v, b.v); }
  SEQCLS_AVX2 friend Float8 operator*(Float8 a, Float8 b) { return _mm256_mul_ps(a.v, b.v); }
  SEQCLS_AVX2 friend Float8 operator/(Float8 a, Float8 b) { return _mm256_div_ps(a.v, b.v); }
};

struct Double4 {
  __m256d v;
  Double4() = default;
  SEQCLS_AVX2 Double4(__m256d x) : v(x) {}
  SEQCLS_AVX2 Double4(double x) : v(_mm256_set1_pd(x)) {}
  SEQCLS_AVX2 friend Double4 operator+(Double4 a, Double4 b) { return _mm256_add_pd(a.v, b.v); }
  SEQCLS_AVX2 friend Double4 operator-(Double4 a, Double4 b) { return _mm256_sub_pd(a.v, b.v); }
  SEQCLS_AVX2 friend Double4 operator*(Double4 a, Double4 b) { return _mm256_mul_pd(a.v, b.v); }
  SEQCLS_AVX2 friend Double4 operator/(Double4 a, Double4 b) { return _mm256_div_pd(a.v, b.v); }
};

// Masks with the first n lanes set, for partial loads/stores (the sign bit
// of each lane selects it).
inline __m256i first_floats(int64_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)), lane);
}
inline __m256i first_doubles(int64_t n) {
  const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), lane);
}

template <typename T>
struct VecOps;

template <>
struct VecOps<float> {
  using Vec = Float8;
  static constexpr int64_t size = 8;
  SEQCLS_AVX2 static Vec load(const float* p, int64_t n) {
    return n == size ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first_floats(n));
  }
  SEQCLS_AVX2 static void store(const Vec& v, float* p, int64_t n) {
    if (n == size) {
      _mm256_storeu_ps(p, v.v);
    } else {
      _mm256_maskstore_ps(p, first_floats(n), v.v);
    }
  }
};

template <>
struct VecOps<double> {
  using Vec = Double4;
  static constexpr int64_t size = 4;
  SEQCLS_AVX2 static Vec load(const double* p, int64_t n) {
    return n == size ? _mm256_loadu_pd(p) : _mm256_maskload_pd(p, first_doubles(n));
  }
  SEQCLS_AVX2 static void store(const Vec& v, double* p, int64_t n) {
    if (n == size) {
      _mm256_storeu_pd(p, v.v);
    } else {
      _mm256_maskstore_pd(p, first_doubles(n), v.v);
    }
  }
};

}  // namespace cpu::avx2

template <>
struct CellMath<cpu::avx2::Float8> {
  SEQCLS_AVX2 static cpu::avx2::Float8 exp(cpu::avx2::Float8 x) { return Sleef_expf8_u10avx2(x.v); }
  SEQCLS_AVX2 static cpu::avx2::Float8 tanh(cpu::avx2::Float8 x) { return Sleef_tanhf8_u10avx2(x.v); }
  // max_ps returns its second operand when either is NaN: x, as torch.relu.
  SEQCLS_AVX2 static cpu::avx2::Float8 relu(cpu::avx2::Float8 x) {
    return _mm256_max_ps(_mm256_setzero_ps(), x.v);
  }
  SEQCLS_AVX2 static cpu::avx2::Float8 relu_grad(cpu::avx2::Float8 h, cpu::avx2::Float8 dh) {
    return _mm256_and_ps(_mm256_cmp_ps(h.v, _mm256_setzero_ps(), _CMP_GT_OQ), dh.v);
  }
};

template <>
struct CellMath<cpu::avx2::Double4> {
  SEQCLS_AVX2 static cpu::avx2::Double4 exp(cpu::avx2::Double4 x) { return Sleef_expd4_u10avx2(x.v); }
  SEQCLS_AVX2 static cpu::avx2::Double4 tanh(cpu::avx2::Double4 x) { return Sleef_tanhd4_u10avx2(x.v); }
  SEQCLS_AVX2 static cpu::avx2::Double4 relu(cpu::avx2::Double4 x) {
    return _mm256_max_pd(_mm256_setzero_pd(), x.v);
  }
  SEQCLS_AVX2 static cpu::avx2::Double4 relu_grad(cpu::avx2::Double4 h, cpu::avx2::Double4 dh) {
    return _mm256_and_pd(_mm256_cmp_pd(h.v, _mm256_setzero_pd(), _CMP_GT_OQ), dh.v);
  }
};

namespace cpu::avx2 {
#define SEQCLS_CPU_KERNEL SEQCLS_AVX2
#include "cell_cpu_kernel.h"
}  // namespace cpu::avx2

}  // namespace seqcls_fast

#pragma GCC pop_options

#endif  // x86-64
