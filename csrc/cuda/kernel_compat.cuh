// The kernels' side of the device seam: under nvcc the CUDA names are the
// compiler's; with SEQCLS_CUDA_EMULATED (the test-only CPU emulator,
// csrc/cuda_emu/) they come from emulator.h and the kernels compile with a
// host compiler, unchanged. SEQCLS_CUDA_NS names the namespace the backend
// lives in, so the real and the emulated backend can share one library.
// Host code includes device_compat.h, which adds launch, stream and guard.
#pragma once

#ifdef SEQCLS_CUDA_EMULATED
#include "../cuda_emu/emulator.h"
#define SEQCLS_CUDA_NS cuda_emu
#else
#define SEQCLS_CUDA_NS cuda
#endif
