// The CUDA attention pooling (../cuda/attention_pool_cuda.cu), host code and
// kernels unchanged, compiled for the CPU emulator: seqcls_fast_cuda_emu::
// masked_attention_pool_* on CPU tensors, for the tests (tests/test_cuda_emu.py).
#define SEQCLS_CUDA_EMULATED 1
#include "../cuda/attention_pool_cuda.cu"
