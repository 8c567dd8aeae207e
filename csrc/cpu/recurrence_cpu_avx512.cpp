// AVX-512 build of the persistent recurrence (float32, forward and backward;
// the kernels are recurrence_cpu_tile.h's): its vector type Float16
// (16 lanes, 6-row tiles in 32 zmm registers) and the cell's exp and tanh
// inlined for it. Compiled for AVX-512 by the target pragma only; the caller
// checks the CPU supports it (recurrence_cpu.cpp).
#if defined(__x86_64__) || defined(_M_X64)

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "../recurrent_step.h"
#include "recurrence_cpu.h"

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
// GCC 12's masked-load intrinsics start from _mm512_undefined_ps(), which
// -Wuninitialized reports once per inlined call (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

// Under the pragma: the cell math's templates are instantiated for this
// build's vector type and must be compiled (and inlined) for its ISA.
#include "../cell.h"

// GCC does not extend the target pragma to functions defined inside a class
// body, so those carry the attribute themselves.
#define SEQCLS_TILE_TARGET __attribute__((target("avx512f,fma")))

namespace seqcls_fast {
namespace cpu::persistent_avx512 {

// a / b as a 14-bit reciprocal refined by one Newton step (about 1 ulp for
// the cell's divisors, which are in [1, 2e38]).
SEQCLS_TILE_TARGET inline __m512 divide(__m512 a, __m512 b) {
  const __m512 y = _mm512_rcp14_ps(b);
  const __m512 r = _mm512_fmadd_ps(_mm512_fnmadd_ps(b, y, _mm512_set1_ps(1.0f)), y, y);
  return _mm512_mul_ps(a, r);
}

// One AVX-512 register of float: the arithmetic the cell needs, and the
// register-level operations the tile needs (recurrence_cpu_tile.h).
struct Float16 {
  using Raw = __m512;
  using Mask = __mmask16;
  static constexpr int64_t kLanes = cpu::persistent_avx512::kLanes;
  // 6 rows x 4 gates = 24 accumulators, 6 broadcasts and a weight vector:
  // 31 of the 32 registers.
  static constexpr int kUnrollK = 2;  // of tile_product's k loop
  // forward_block's two passes: measured slower here (its block's half of
  // W_hh, 32 KiB at H = 256, does not stay in a 32-48 KiB L1 either).
  static constexpr bool kSplitK = false;
  static constexpr int kTileRows = 6;

  Raw v;
  Float16() = default;
  SEQCLS_TILE_TARGET Float16(Raw x) : v(x) {}
  SEQCLS_TILE_TARGET Float16(float x) : v(_mm512_set1_ps(x)) {}
  SEQCLS_TILE_TARGET friend Float16 operator+(Float16 a, Float16 b) { return _mm512_add_ps(a.v, b.v); }
  SEQCLS_TILE_TARGET friend Float16 operator-(Float16 a, Float16 b) { return _mm512_sub_ps(a.v, b.v); }
  SEQCLS_TILE_TARGET friend Float16 operator*(Float16 a, Float16 b) { return _mm512_mul_ps(a.v, b.v); }
  SEQCLS_TILE_TARGET friend Float16 operator/(Float16 a, Float16 b) { return divide(a.v, b.v); }

  SEQCLS_TILE_TARGET static Mask first_lanes(int64_t n) { return static_cast<Mask>((1u << n) - 1u); }
  SEQCLS_TILE_TARGET static Raw zero() { return _mm512_setzero_ps(); }
  SEQCLS_TILE_TARGET static Raw load(const float* p) { return _mm512_loadu_ps(p); }
  SEQCLS_TILE_TARGET static Raw load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  SEQCLS_TILE_TARGET static void store(Mask m, float* p, Raw x) { _mm512_mask_storeu_ps(p, m, x); }
  SEQCLS_TILE_TARGET static Raw broadcast(float x) { return _mm512_set1_ps(x); }
  SEQCLS_TILE_TARGET static Raw fmadd(Raw a, Raw b, Raw c) { return _mm512_fmadd_ps(a, b, c); }
  SEQCLS_TILE_TARGET static Raw add(Raw a, Raw b) { return _mm512_add_ps(a, b); }
  SEQCLS_TILE_TARGET static Raw min(Raw a, Raw b) { return _mm512_min_ps(a, b); }
  SEQCLS_TILE_TARGET static Raw max(Raw a, Raw b) { return _mm512_max_ps(a, b); }
  SEQCLS_TILE_TARGET static Raw round(Raw x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // vscalefps: goes to 0 below the float range, so exp's clamp can be low.
  SEQCLS_TILE_TARGET static Raw scale(Raw p, Raw n) { return _mm512_scalef_ps(p, n); }
  SEQCLS_TILE_TARGET static Raw abs(Raw x) {
    return _mm512_castsi512_ps(
        _mm512_and_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)));
  }
  SEQCLS_TILE_TARGET static Raw with_sign_of(Raw m, Raw x) {
    const __m512i sign = _mm512_and_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
    return _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(m), sign));
  }
  static constexpr float kExpMin = -104.0f;
};

}  // namespace cpu::persistent_avx512

}  // namespace seqcls_fast

#include "recurrence_cpu_tile.h"

namespace seqcls_fast {
template <>
struct CellMath<cpu::persistent_avx512::Float16> : cpu::TileCellMath<cpu::persistent_avx512::Float16> {};
}  // namespace seqcls_fast

namespace seqcls_fast::cpu::persistent_avx512 {

void persistent_forward(const ForwardRecurrence& r, float* h_swap, int64_t workers) {
  run_forward_recurrence<Float16>(r, h_swap, workers);
}

void persistent_backward(const BackwardRecurrence& r, int64_t workers) {
  run_backward_recurrence<Float16>(r, workers);
}

}  // namespace seqcls_fast::cpu::persistent_avx512

#pragma GCC diagnostic pop
#pragma GCC pop_options

#endif  // x86-64
