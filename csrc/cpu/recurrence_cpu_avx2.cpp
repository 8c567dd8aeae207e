// AVX2 + FMA build of the persistent recurrence (float32, forward and
// backward; the kernels are recurrence_cpu_tile.h's): its vector type
// Float8 (8 lanes, 3-row tiles in 16 ymm registers) and the cell's exp and
// tanh inlined for it. Compiled for AVX2 + FMA by the target pragma only; the
// caller checks the CPU supports them (recurrence_cpu.cpp).
#if defined(__x86_64__) || defined(_M_X64)

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "../recurrent_step.h"
#include "recurrence_cpu.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

// Under the pragma: the cell math's templates are instantiated for this
// build's vector type and must be compiled (and inlined) for its ISA.
#include "../cell.h"

// GCC does not extend the target pragma to functions defined inside a class
// body, so those carry the attribute themselves.
#define SEQCLS_TILE_TARGET __attribute__((target("avx2,fma")))

namespace seqcls_fast {
namespace cpu::persistent_avx2 {

// a / b as a 12-bit reciprocal refined by one Newton step (~2 ulp). The
// cell's divisors are in [1, 2e38]; past 2^126 the reciprocal flushes to 0,
// which is within 1e-38 of the quotient.
SEQCLS_TILE_TARGET inline __m256 divide(__m256 a, __m256 b) {
  const __m256 y = _mm256_rcp_ps(b);
  const __m256 r = _mm256_fmadd_ps(_mm256_fnmadd_ps(b, y, _mm256_set1_ps(1.0f)), y, y);
  return _mm256_mul_ps(a, r);
}

// The lanes a partial block loads and stores. AVX2's masked store is slow on
// AMD CPUs (microcoded), so full blocks take the plain load and store.
struct Lanes {
  __m256i bits;  // sign bit set in each lane to load or store
  bool full;
};

// One AVX2 register of float: the arithmetic the cell needs, and the
// register-level operations the tile needs (recurrence_cpu_tile.h).
struct Float8 {
  using Raw = __m256;
  using Mask = Lanes;
  static constexpr int64_t kLanes = cpu::persistent_avx2::kLanes;
  // 3 rows x 4 gates = 12 accumulators, 3 broadcasts and a weight vector:
  // all 16 registers.
  static constexpr int kUnrollK = 1;  // of tile_product's k loop
  // forward_block's two passes: a block's half of W_hh (16 KiB at H = 256)
  // stays in L1 across the step's row tiles; recurrence 15-20% faster.
  static constexpr bool kSplitK = true;
  static constexpr int kTileRows = 3;

  Raw v;
  Float8() = default;
  SEQCLS_TILE_TARGET Float8(Raw x) : v(x) {}
  SEQCLS_TILE_TARGET Float8(float x) : v(_mm256_set1_ps(x)) {}
  SEQCLS_TILE_TARGET friend Float8 operator+(Float8 a, Float8 b) { return _mm256_add_ps(a.v, b.v); }
  SEQCLS_TILE_TARGET friend Float8 operator-(Float8 a, Float8 b) { return _mm256_sub_ps(a.v, b.v); }
  SEQCLS_TILE_TARGET friend Float8 operator*(Float8 a, Float8 b) { return _mm256_mul_ps(a.v, b.v); }
  SEQCLS_TILE_TARGET friend Float8 operator/(Float8 a, Float8 b) { return divide(a.v, b.v); }

  SEQCLS_TILE_TARGET static Mask first_lanes(int64_t n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return {_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)), lane), n == kLanes};
  }
  SEQCLS_TILE_TARGET static Raw zero() { return _mm256_setzero_ps(); }
  SEQCLS_TILE_TARGET static Raw load(const float* p) { return _mm256_loadu_ps(p); }
  SEQCLS_TILE_TARGET static Raw load(Mask m, const float* p) {
    return m.full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m.bits);
  }
  SEQCLS_TILE_TARGET static void store(Mask m, float* p, Raw x) {
    if (m.full) {
      _mm256_storeu_ps(p, x);
    } else {
      _mm256_maskstore_ps(p, m.bits, x);
    }
  }
  SEQCLS_TILE_TARGET static Raw broadcast(float x) { return _mm256_set1_ps(x); }
  SEQCLS_TILE_TARGET static Raw fmadd(Raw a, Raw b, Raw c) { return _mm256_fmadd_ps(a, b, c); }
  SEQCLS_TILE_TARGET static Raw add(Raw a, Raw b) { return _mm256_add_ps(a, b); }
  SEQCLS_TILE_TARGET static Raw min(Raw a, Raw b) { return _mm256_min_ps(a, b); }
  SEQCLS_TILE_TARGET static Raw max(Raw a, Raw b) { return _mm256_max_ps(a, b); }
  SEQCLS_TILE_TARGET static Raw round(Raw x) {
    return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // p 2^n with 2^n built in the exponent field: exp's clamp keeps n in
  // [-126, 127], a normal float. (The clamp changes nothing the cell can see:
  // sigmoid and tanh are 0, 1 or -1 in float32 well before either end.)
  SEQCLS_TILE_TARGET static Raw scale(Raw p, Raw n) {
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
  }
  SEQCLS_TILE_TARGET static Raw abs(Raw x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
  SEQCLS_TILE_TARGET static Raw with_sign_of(Raw m, Raw x) {
    return _mm256_or_ps(m, _mm256_and_ps(_mm256_set1_ps(-0.0f), x));
  }
  static constexpr float kExpMin = -87.0f;
};

}  // namespace cpu::persistent_avx2

}  // namespace seqcls_fast

#include "recurrence_cpu_tile.h"

namespace seqcls_fast {
template <>
struct CellMath<cpu::persistent_avx2::Float8> : cpu::TileCellMath<cpu::persistent_avx2::Float8> {};
}  // namespace seqcls_fast

namespace seqcls_fast::cpu::persistent_avx2 {

void persistent_forward(const ForwardRecurrence& r, float* h_swap, int64_t workers) {
  run_forward_recurrence<Float8>(r, h_swap, workers);
}

void persistent_backward(const BackwardRecurrence& r, int64_t workers) {
  run_backward_recurrence<Float8>(r, workers);
}

}  // namespace seqcls_fast::cpu::persistent_avx2

#pragma GCC pop_options

#endif  // x86-64
