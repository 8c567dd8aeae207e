// The CPU backend of the LSTM layer driver (../lstm_driver.h): padding
// zeroing, the vectorized pointwise step kernels (lstm_cell_cpu.h) and the
// online-pooling step; registers the LSTM operators for CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../lstm_driver.h"
#include "../online_pool.h"
#include "lstm_cell_cpu.h"

namespace seqcls_fast::cpu {
namespace {

// Packed rows per input-projection chunk and per backward chunk: large
// enough for an efficient GEMM, small enough (2 MB of float gates at H = 128)
// to stay in cache.
constexpr int64_t kProjectionChunkRows = 1024;

// Rows [begin, end) of one online-pooling step (LstmPoolStep); the state
// dtype is T itself on the CPU (float or double).
template <typename T>
void pool_rows(const LstmPoolStep& p, int64_t begin, int64_t end) {
  const int64_t H = p.hidden, A = p.key_size;
  const T* h = static_cast<const T*>(p.h);
  T* sum = static_cast<T*>(p.sum);
  for (int64_t j = begin; j < end; ++j) {
    const T* h_row = h + j * H;
    T* acc = sum + j * H;
    if (p.pooling == OnlinePooling::kMean) {
      for (int64_t k = 0; k < H; ++k) acc[k] += h_row[k];
      continue;
    }
    const T* key = static_cast<const T*>(p.keys) + j * A;
    const T* query = static_cast<const T*>(p.query);
    T score = 0;
    for (int64_t a = 0; a < A; ++a) score += key[a] * query[a];
    T keep, weight;
    online_softmax_merge(score, static_cast<T*>(p.max)[j], static_cast<T*>(p.denom)[j], keep,
                         weight);
    for (int64_t k = 0; k < H; ++k) acc[k] = acc[k] * keep + weight * h_row[k];
  }
}

struct CpuLstmBackend final : LstmBackend {
  CpuLstmBackend() : LstmBackend(kProjectionChunkRows, kProjectionChunkRows) {}

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

  void pool_step(const LstmPoolStep& step, at::ScalarType dtype) const override {
    const int64_t grain = std::max<int64_t>(1, 16384 / (2 * step.hidden + step.key_size));
    AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_pool_step_cpu", [&] {
      at::parallel_for(0, step.rows, grain,
                       [&](int64_t begin, int64_t end) { pool_rows<scalar_t>(step, begin, end); });
    });
  }
};

}  // namespace

SEQCLS_REGISTER_LSTM_BACKEND(CPU, CpuLstmBackend)

}  // namespace seqcls_fast::cpu
