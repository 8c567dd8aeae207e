// The CUDA LSTM backend (../cuda/recurrent_cuda.cu), host code and kernels
// unchanged, compiled for the CPU emulator: seqcls_fast_cuda_emu::lstm_* on
// CPU tensors through the shared driver, for the tests (tests/test_cuda_emu.py).
#define SEQCLS_CUDA_EMULATED 1
#include "../cuda/recurrent_cuda.cu"
