// The operator schemas, written once (ops.cpp) and defined in two namespaces:
// seqcls_fast, and seqcls_fast_cuda_emu where the CUDA emulator is built.
#pragma once

#include <torch/library.h>

namespace seqcls_fast {

// m.def of every operator, with the contract's comments (ops.cpp).
void define_operators(torch::Library& m);

}  // namespace seqcls_fast
