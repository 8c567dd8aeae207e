// The CUDA backend of the recurrent layer driver (../recurrent_driver.h):
// device and index-range checks, padding zeroing, the LSTM and GRU cells'
// pointwise step kernels (cell_cuda.cuh) and the online-pooling step, all on the current
// stream; registers the LSTM and GRU operators for CUDA (under the CPU emulator, for
// seqcls_fast_cuda_emu on the CPU: device_compat.h). Lengths on the GPU are
// planned on the GPU for the persistent kernels (no host copy); the per-step
// path copies them to the host once per batch and uploads its step plan with
// one asynchronous copy; the step loop only enqueues work.
//
// dtypes: float32, float64, float16, bfloat16. For half/bfloat16 the cell
// state and the saved `cell` are float32 (acc_t); h, the gates and every GEMM
// operand stay in the storage dtype.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "../recurrent_driver.h"
#include "device_compat.h"
#include "cell_cuda.cuh"
#include "persistent_cuda.cuh"

namespace seqcls_fast::SEQCLS_CUDA_NS {
namespace {

unsigned int step_blocks(int64_t rows, int64_t hidden) {
  return static_cast<unsigned int>((rows * hidden + kStepThreads - 1) / kStepThreads);
}

// Launches the step kernel `kernel_for(scalar_t{})` returns for x's dtype (the
// four the backend supports) on the current stream, and checks the launch.
template <typename Step, typename KernelFor>
void launch_step(at::ScalarType dtype, unsigned int blocks, int threads, const Step& step,
                 const KernelFor& kernel_for) {
  const Stream stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seqcls_fast_cuda_step", [&] {
    launch(kernel_for(scalar_t{}), blocks, threads, stream, step);
  });
}

// The persistent recurrence's launch (persistent_cuda.cuh) for a layer, or
// blocks = 0 for the per-step path. The rule (README, "How it works"): the
// LSTM or the GRU, the device takes cooperative launches,
// SEQCLS_FAST_CUDA_RECURRENCE is not "steps", and with one block per
// multiprocessor (at most H blocks) each block's rows of W_hh, G U H values
// of acc_t (G = 4 for the LSTM, 3 for the GRU; float, or double for float64)
// for U = ceil(H / blocks) units, fit the device's dynamic shared memory per
// block (its opt-in maximum: 227 KiB on an H200, an LSTM's H up to 1320 in
// float32, 924 in float64 on its 132 multiprocessors; the emulator models 4
// multiprocessors and 48 KiB), and both kernels fit one block per
// multiprocessor. The backward keeps the same bytes (the block's columns of
// W_hh instead of its rows): one rule serves both.
struct PersistentLaunch {
  unsigned int blocks = 0;
  int32_t units = 0;  // per block
  size_t shared_bytes = 0;
};

// The launch shape for H on this device: U from one block per
// multiprocessor, then only the blocks that own units; shared_bytes the
// block's G U H values of acc_t.
template <CellKind K, typename T>
PersistentLaunch persistent_shape(int64_t hidden, const CooperativeLimits& limits) {
  if (limits.blocks == 0 || hidden == 0) return {};
  const int64_t most = std::min<int64_t>(hidden, limits.blocks);
  const int64_t units = (hidden + most - 1) / most;
  const int64_t blocks = (hidden + units - 1) / units;
  const size_t shared = static_cast<size_t>(kPersistentGates<K> * units * hidden) *
                        sizeof(at::opmath_type<T>);
  return {static_cast<unsigned int>(blocks), static_cast<int32_t>(units), shared};
}

// The rule's device half: the shape, if its shared memory fits and both
// kernels fit one block per multiprocessor.
template <CellKind K, typename T>
PersistentLaunch persistent_launch(int64_t hidden) {
  using Acc = at::opmath_type<T>;
  const CooperativeLimits limits = cooperative_limits();
  const PersistentLaunch shape = persistent_shape<K, T>(hidden, limits);
  if (shape.blocks == 0 || shape.shared_bytes > limits.shared_bytes ||
      !fits_one_block_per_sm(persistent_forward_kernel<K, T, Acc>, kPersistentThreads,
                             shape.shared_bytes) ||
      !fits_one_block_per_sm(persistent_backward_kernel<K, T, Acc>, kPersistentThreads,
                             shape.shared_bytes)) {
    return {};
  }
  return shape;
}

bool has_persistent_kernels(const CellDef& cell) {
  return cell.kind == CellKind::kLstm || cell.kind == CellKind::kGru;
}

// The rule, asked once per call when the driver packs the weights.
PersistentLaunch persistent_launch(const CellDef& cell, int64_t hidden, at::ScalarType dtype) {
  const char* choice = std::getenv("SEQCLS_FAST_CUDA_RECURRENCE");
  if (!has_persistent_kernels(cell) || (choice != nullptr && std::strcmp(choice, "steps") == 0)) {
    return {};
  }
  PersistentLaunch launch;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seqcls_fast_persistent", [&] {
    launch = cell.kind == CellKind::kLstm ? persistent_launch<CellKind::kLstm, scalar_t>(hidden)
                                          : persistent_launch<CellKind::kGru, scalar_t>(hidden);
  });
  return launch;
}

// The shape a launch uses, once the rule chose the persistent path (the
// driver only calls forward/backward_recurrence after packing the weights):
// no occupancy queries per segment.
template <typename T>
PersistentLaunch launch_shape(CellKind cell, int64_t hidden) {
  const CooperativeLimits limits = cooperative_limits();
  const PersistentLaunch shape = cell == CellKind::kLstm
                                     ? persistent_shape<CellKind::kLstm, T>(hidden, limits)
                                     : persistent_shape<CellKind::kGru, T>(hidden, limits);
  TORCH_INTERNAL_ASSERT(shape.blocks > 0, "seqcls_fast: persistent recurrence not available");
  return shape;
}

struct CudaBackend final : RecurrentBackend {
  // One input-projection GEMM for every valid step: a GPU has no cache to
  // fit. The backward runs 64K packed rows at a time (64 MB of float gate
  // gradients at H = 256): GEMMs large enough to fill the GPU.
  CudaBackend() : RecurrentBackend(std::numeric_limits<int64_t>::max(), int64_t{1} << 16) {}

  void check_input(const at::Tensor& x, int64_t hidden) const override {
    SEQCLS_CHECK_VALUE(on_kernel_device(x.device()), "x must be on ", kKernelDevice,
                       " for the CUDA kernel, got ", x.device());
    // The step kernels index a step's rows with 32-bit integers (B * 4H bounds
    // the LSTM's [rows, 4H] gates, and the GRU's [rows, 3H] too).
    const int64_t batch = x.size(1);
    SEQCLS_CHECK_VALUE(batch * 4 * hidden < std::numeric_limits<int32_t>::max(),
                       "B * 4H must be below 2^31 for the CUDA kernel, got B = ", batch,
                       ", H = ", hidden);
  }

  void zero_output_padding(at::Tensor& output, const DevicePlan& plan) const override {
    const int64_t T = output.size(0), B = output.size(1), H = output.size(2);
    const int threads = static_cast<int>(std::min<int64_t>(256, (H + 31) / 32 * 32));
    const Stream stream = current_stream();
    const int64_t* order = plan.order.defined() ? plan.order.const_data_ptr<int64_t>() : nullptr;
    const int64_t* sorted = plan.sorted_lengths.const_data_ptr<int64_t>();
    const auto zero_words = [&](auto word) {
      using word_t = decltype(word);
      launch(zero_output_padding_kernel<word_t>, static_cast<unsigned int>(B), threads, stream,
             static_cast<word_t*>(output.data_ptr()), order, sorted, T, B, H);
    };
    switch (output.element_size()) {
      case 2: zero_words(uint16_t{}); break;
      case 4: zero_words(uint32_t{}); break;
      case 8: zero_words(uint64_t{}); break;
      default: TORCH_INTERNAL_ASSERT(false, "unexpected element size ", output.element_size());
    }
  }

  void forward_step(const ForwardStep& step, at::ScalarType dtype) const override {
    const CellKind cell = step.cell_kind;
    launch_step(dtype, step_blocks(step.rows, step.hidden), kStepThreads, step, [cell](auto tag) {
      using T = decltype(tag);
      using Acc = at::opmath_type<T>;
      switch (cell) {
        case CellKind::kLstm: return lstm_forward_step_kernel<T, Acc>;
        case CellKind::kGru: return gru_forward_step_kernel<T, Acc>;
        case CellKind::kRnnRelu: return rnn_forward_step_kernel<T, Acc, true>;
        default: return rnn_forward_step_kernel<T, Acc, false>;
      }
    });
  }

  void backward_step(const BackwardStep& step, at::ScalarType dtype) const override {
    const CellKind cell = step.cell_kind;
    launch_step(dtype, step_blocks(step.rows, step.hidden), kStepThreads, step, [cell](auto tag) {
      using T = decltype(tag);
      using Acc = at::opmath_type<T>;
      switch (cell) {
        case CellKind::kLstm: return lstm_backward_step_kernel<T, Acc>;
        case CellKind::kGru: return gru_backward_step_kernel<T, Acc>;
        case CellKind::kRnnRelu: return rnn_backward_step_kernel<T, Acc, true>;
        default: return rnn_backward_step_kernel<T, Acc, false>;
      }
    });
  }

  // W_hh as given (contiguous): each block of the persistent kernel loads
  // its rows into shared memory; or undefined (the per-step path).
  at::Tensor pack_recurrent_weights(const CellDef& cell, const at::Tensor& w_hh) const override {
    if (persistent_launch(cell, w_hh.size(1), w_hh.scalar_type()).blocks == 0) return {};
    return w_hh.contiguous();
  }

  void forward_recurrence(const ForwardRecurrence& r, at::ScalarType dtype) const override {
    const at::Tensor h_swap = at::empty({r.batch, r.hidden}, kernel_tensor_options(dtype));
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seqcls_fast_persistent", [&] {
      using Acc = at::opmath_type<scalar_t>;
      const PersistentLaunch shape = launch_shape<scalar_t>(r.cell_kind, r.hidden);
      const auto kernel = r.cell_kind == CellKind::kLstm
                              ? persistent_forward_kernel<CellKind::kLstm, scalar_t, Acc>
                              : persistent_forward_kernel<CellKind::kGru, scalar_t, Acc>;
      launch_cooperative(kernel, shape.blocks, kPersistentThreads, shape.shared_bytes, stream, r,
                         h_swap.data_ptr<scalar_t>(), shape.units);
    });
  }

  // The backward's weights: W_hh as given too (each block loads its columns).
  at::Tensor pack_recurrent_weights_backward(const CellDef& cell,
                                             const at::Tensor& w_hh) const override {
    return pack_recurrent_weights(cell, w_hh);
  }

  void backward_recurrence(const BackwardRecurrence& r, at::ScalarType dtype) const override {
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seqcls_fast_persistent", [&] {
      using Acc = at::opmath_type<scalar_t>;
      const PersistentLaunch shape = launch_shape<scalar_t>(r.cell_kind, r.hidden);
      const auto kernel = r.cell_kind == CellKind::kLstm
                              ? persistent_backward_kernel<CellKind::kLstm, scalar_t, Acc>
                              : persistent_backward_kernel<CellKind::kGru, scalar_t, Acc>;
      launch_cooperative(kernel, shape.blocks, kPersistentThreads, shape.shared_bytes, stream, r,
                         shape.units);
    });
  }

  bool resident_on_device(const at::Device& where) const override {
    return SEQCLS_CUDA_NS::resident_on_device(where);
  }

  // The persistent kernels read the active rows and offsets on the device.
  bool reads_steps_on_device(const CellDef& cell, int64_t hidden,
                             at::ScalarType dtype) const override {
    return persistent_launch(cell, hidden, dtype).blocks > 0;
  }

  // One block per row running at the segment's first step.
  bool pool_segment(const PoolStep& step, int64_t end_step,
                    at::ScalarType dtype) const override {
    if (step.rows == 0) return true;
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seqcls_fast_pool_segment", [&] {
      launch(pool_segment_kernel<scalar_t, at::opmath_type<scalar_t>>,
             static_cast<unsigned int>(step.rows), kPoolStepThreads, stream, step, end_step);
    });
    return true;
  }

  // One block per active row.
  void pool_step(const PoolStep& step, at::ScalarType dtype) const override {
    launch_step(dtype, static_cast<unsigned int>(step.rows), kPoolStepThreads, step, [](auto tag) {
      using T = decltype(tag);
      return lstm_pool_step_kernel<T, at::opmath_type<T>>;
    });
  }
};

}  // namespace

SEQCLS_REGISTER_LSTM_BACKEND(SEQCLS_CUDA_OPS, SEQCLS_CUDA_KEY, CudaBackend)
SEQCLS_REGISTER_GRU_OPS(SEQCLS_CUDA_OPS, SEQCLS_CUDA_KEY)
SEQCLS_REGISTER_RNN_OPS(SEQCLS_CUDA_OPS, SEQCLS_CUDA_KEY)

}  // namespace seqcls_fast::SEQCLS_CUDA_NS
