// SEQCLS_HOST_DEVICE: inline functions compiled for the host and, under nvcc,
// for the device too. Kept apart from the math headers, so including it does
// not pull their templates in ahead of a file's own target pragma (the AVX2
// kernels include cell.h after theirs).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SEQCLS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SEQCLS_HOST_DEVICE inline
#endif
