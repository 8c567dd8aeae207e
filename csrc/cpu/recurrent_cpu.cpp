// The CPU backend of the recurrent layer driver (../recurrent_driver.h):
// padding zeroing, the LSTM, GRU and RNN cells' vectorized pointwise step
// kernels (cell_cpu.h), the persistent recurrence (recurrence_cpu.h: LSTM and
// GRU), and the online-pooling step; registers the recurrent operators for CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "../online_pool.h"
#include "../recurrent_driver.h"
#include "../tensor_identity.h"
#include "cell_cpu.h"
#include "recurrence_cpu.h"

namespace seqcls_fast::cpu {
namespace {

// Packed rows per input-projection chunk: large enough for an efficient
// GEMM, small enough (2 MB of float gates at H = 128) to stay in cache.
constexpr int64_t kProjectionChunkRows = 1024;
// Packed rows per backward chunk (its gate gradients, its weight-gradient
// GEMMs, the low-memory rebuild), for the same reasons. A change reorders the
// weight gradients' sums: results move in the last bits.
constexpr int64_t kBackwardChunkRows = 1024;

// Rows [begin, end) of one online-pooling step (PoolStep); the state
// dtype is T itself on the CPU (float or double).
template <typename T>
void pool_rows(const PoolStep& p, int64_t begin, int64_t end) {
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

// W_hh [gates * H, H] (contiguous float32) in a new tensor, in the layout of
// the persistent forward (pack_w_hh) or backward (pack_w_hh_backward) of a
// build with `lanes` units per block.
at::Tensor packed_weights(const at::Tensor& w, bool backward, int64_t lanes) {
  const int64_t H = w.size(1), gates = w.size(0) / H;
  at::Tensor packed = at::empty({backward ? packed_w_hh_backward_floats(H, gates, lanes)
                                          : packed_w_hh_floats(H, gates, lanes)},
                                w.options());
  (backward ? pack_w_hh_backward : pack_w_hh)(w.const_data_ptr<float>(), H, gates, lanes,
                                              packed.data_ptr<float>());
  return packed;
}

// W_hh packed for the persistent recurrence, kept for the last few weight
// tensors while they are alive and unmodified (same storage, same version, and
// packed for the same build's block width), so
// inference and streaming calls do not repack; a training step's update bumps
// the version and the next forward packs anew.
class PackedWeightCache {
 public:
  at::Tensor get(const at::Tensor& w_hh, int64_t lanes) {
    const at::Tensor w = w_hh.contiguous();
    const std::optional<TensorIdentity> identity = TensorIdentity::of(w_hh);
    if (!identity || !w.is_same(w_hh)) return packed_weights(w, /*backward=*/false, lanes);
    std::lock_guard<std::mutex> lock(mutex_);
    // Weights that are gone free their packed copies here.
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [](const Entry& e) { return e.weight.expired(); }),
                   entries_.end());
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->weight.matches(w_hh) && it->lanes == lanes) {
        std::rotate(entries_.begin(), it, it + 1);  // most recent first
        return entries_.front().packed;
      }
    }
    at::Tensor packed = packed_weights(w, /*backward=*/false, lanes);
    entries_.insert(entries_.begin(), Entry{*identity, lanes, packed});
    if (entries_.size() > kEntries) entries_.pop_back();
    return packed;
  }

 private:
  static constexpr size_t kEntries = 16;  // layers x directions of a few models
  struct Entry {
    TensorIdentity weight;
    int64_t lanes;
    at::Tensor packed;
  };

  std::mutex mutex_;
  std::vector<Entry> entries_;
};

PackedWeightCache& packed_weight_cache() {
  static PackedWeightCache cache;
  return cache;
}

// Workers of the persistent recurrence: one per thread, each with at least
// one block of units; one inside another parallel region, where parallel_for
// runs serially.
int64_t recurrence_workers(int64_t hidden, CpuIsa isa) {
  return at::in_parallel_region() ? 1
                                  : std::min<int64_t>(at::get_num_threads(),
                                                      unit_blocks(hidden, recurrence_lanes(isa)));
}

// The build a call of this dtype runs (kBaseline: the per-step path).
CpuIsa persistent_build(at::ScalarType dtype) { return recurrence_isa(dtype == at::kFloat); }

// The cells the persistent tile is written for (recurrence_cpu_tile.h).
bool has_tile(const CellDef& cell) {
  return cell.kind == CellKind::kLstm || cell.kind == CellKind::kGru;
}

struct CpuBackend final : RecurrentBackend {
  CpuBackend() : RecurrentBackend(kProjectionChunkRows, kBackwardChunkRows) {}

  void check_input(const at::Tensor& x, int64_t /*hidden*/) const override {
    SEQCLS_CHECK_VALUE(x.device().is_cpu(), "x must be on the CPU for the CPU kernel, got ",
                       x.device());
    check_cpu_dtype(x, "x");
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

  void forward_step(const ForwardStep& step, at::ScalarType dtype) const override {
    switch (step.cell_kind) {
      case CellKind::kLstm: return lstm_forward_step_cpu(step, dtype);
      case CellKind::kGru: return gru_forward_step_cpu(step, dtype);
      default: return rnn_forward_step_cpu(step, dtype);
    }
  }

  void backward_step(const BackwardStep& step, at::ScalarType dtype) const override {
    switch (step.cell_kind) {
      case CellKind::kLstm: return lstm_backward_step_cpu(step, dtype);
      case CellKind::kGru: return gru_backward_step_cpu(step, dtype);
      default: return rnn_backward_step_cpu(step, dtype);
    }
  }

  // The driver packs, then runs, within one op call: both ask persistent_build,
  // and the packed layout follows the build's block width and the cell's
  // gates (W_hh's rows over its columns). The tile runs the LSTM and the
  // GRU; the RNN runs per step.
  at::Tensor pack_recurrent_weights(const CellDef& cell,
                                    const at::Tensor& w_hh) const override {
    const CpuIsa isa = persistent_build(w_hh.scalar_type());
    if (isa == CpuIsa::kBaseline || !has_tile(cell)) return {};
    return packed_weight_cache().get(w_hh, recurrence_lanes(isa));
  }

  void forward_recurrence(const ForwardRecurrence& r, at::ScalarType dtype) const override {
    const CpuIsa isa = persistent_build(dtype);
    at::Tensor h_swap = at::empty({r.batch, r.hidden}, at::TensorOptions().dtype(at::kFloat));
    persistent_forward(isa, r, h_swap.data_ptr<float>(), recurrence_workers(r.hidden, isa));
  }

  at::Tensor pack_recurrent_weights_backward(const CellDef& cell,
                                             const at::Tensor& w_hh) const override {
    const CpuIsa isa = persistent_build(w_hh.scalar_type());
    if (isa == CpuIsa::kBaseline || !has_tile(cell)) return {};
    return packed_weights(w_hh.contiguous(), /*backward=*/true, recurrence_lanes(isa));
  }

  void backward_recurrence(const BackwardRecurrence& r, at::ScalarType dtype) const override {
    const CpuIsa isa = persistent_build(dtype);
    persistent_backward(isa, r, recurrence_workers(r.hidden, isa));
  }

  void pool_step(const PoolStep& step, at::ScalarType dtype) const override {
    const int64_t grain = std::max<int64_t>(1, 16384 / (2 * step.hidden + step.key_size));
    AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_pool_step_cpu", [&] {
      at::parallel_for(0, step.rows, grain,
                       [&](int64_t begin, int64_t end) { pool_rows<scalar_t>(step, begin, end); });
    });
  }
};

}  // namespace

SEQCLS_REGISTER_LSTM_BACKEND(seqcls_fast, CPU, CpuBackend)
SEQCLS_REGISTER_GRU_OPS(seqcls_fast, CPU)
SEQCLS_REGISTER_RNN_OPS(seqcls_fast, CPU)

}  // namespace seqcls_fast::cpu
