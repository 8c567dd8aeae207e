// The CPU backend of the LSTM layer driver (../lstm_driver.h): padding
// zeroing and the vectorized pointwise step kernels (lstm_cell_cpu.h);
// registers lstm_layer_forward / lstm_layer_backward for CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "../lstm_driver.h"
#include "lstm_cell_cpu.h"

namespace seqcls_fast::cpu {
namespace {

// Packed rows per input-projection chunk: large enough for an efficient
// GEMM, small enough (2 MB of float gates at H = 128) to stay in cache.
constexpr int64_t kProjectionChunkRows = 1024;

struct CpuLstmBackend final : LstmBackend {
  CpuLstmBackend() : LstmBackend(kProjectionChunkRows) {}

  void check_input(const at::Tensor& x, int64_t /*hidden*/) const override {
    SEQCLS_CHECK_VALUE(x.device().is_cpu(), "x must be on the CPU for the CPU kernel, got ",
                       x.device());
  }

  void zero_output_padding(at::Tensor& output, const DevicePlan& plan) const override {
    const int64_t T = output.size(0), B = output.size(1), H = output.size(2);
    const int64_t* order = plan.order.const_data_ptr<int64_t>();
    const int64_t* sorted = plan.sorted_lengths.const_data_ptr<int64_t>();
    const size_t row_bytes = H * output.element_size();
    char* base = static_cast<char*>(output.data_ptr());
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        for (int64_t t = sorted[j]; t < T; ++t) {
          std::memset(base + (t * B + order[j]) * row_bytes, 0, row_bytes);
        }
      }
    });
  }

  void forward_step(const LstmForwardStep& step, at::ScalarType dtype) const override {
    lstm_forward_step_cpu(step, dtype);
  }

  void backward_step(const LstmBackwardStep& step, at::ScalarType dtype) const override {
    lstm_backward_step_cpu(step, dtype);
  }
};

}  // namespace

SEQCLS_REGISTER_LSTM_BACKEND(CPU, CpuLstmBackend)

}  // namespace seqcls_fast::cpu
