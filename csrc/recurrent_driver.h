// The recurrent layer driver: a layer's forward and backward step loops
// written once for every backend and every cell (haste's ForwardPass/
// BackwardPass). The driver owns the checks, the length plan, the
// sorted/caller-order conversions, the input-projection and recurrent GEMMs
// (through ATen, so on the input's device) and the step loops; a cell
// supplies its definition (cell_def.h: gate count, cell state, whether its
// recurrent product stays apart) and a backend only what differs per device,
// through RecurrentBackend. The LSTM operators (lstm_layer_*) are the driver
// run with kLstmCell. Host code only, on narrow ATen headers (.cu files
// include it).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <tuple>

#include "recurrent_common.h"
#include "recurrent_step.h"

namespace seqcls_fast {

// The primitives a device supplies. Pointers in the step structs point to
// memory on that device; a step's `cell_kind` says which cell's kernel runs it.
struct RecurrentBackend {
  // Packed rows per input-projection GEMM: the projection of a chunk of steps
  // runs just before their recurrence (cache-sized on the CPU, where the
  // gates are then still in cache; everything at once on a GPU).
  int64_t projection_chunk_rows;
  // Packed rows per chunk of the backward: the gate gradients of a chunk of
  // steps, its weight-gradient GEMMs and (low memory) its rebuilt gates exist
  // a chunk at a time. Both memory modes chunk alike, so they sum the weight
  // gradients in the same order.
  int64_t backward_chunk_rows;

  // Device and size limits of this backend's kernels, for x [T, B, I] and H.
  virtual void check_input(const at::Tensor& x, int64_t hidden) const = 0;
  // output[t, order[j], :] = 0 for t >= sorted_lengths[j] (the padding a
  // PackedSequence does not have), nothing else; only called with padding.
  virtual void zero_output_padding(at::Tensor& output, const DevicePlan& plan) const = 0;
  // The pointwise half of one step; dtype is x's (the state dtype follows it).
  virtual void forward_step(const ForwardStep& step, at::ScalarType dtype) const = 0;
  virtual void backward_step(const BackwardStep& step, at::ScalarType dtype) const = 0;
  // The persistent recurrence: W_hh [G, H] in the layout forward_recurrence
  // reads (a backend may cache it across calls while w_hh is unchanged), or
  // undefined when this backend has none for this cell and these inputs; the
  // driver then runs each step as a GEMM and forward_step.
  virtual at::Tensor pack_recurrent_weights(const CellDef& /*cell*/,
                                            const at::Tensor& /*w_hh*/) const {
    return {};
  }
  // Runs steps [r.step, r.end_step) as one persistent kernel: the recurrent
  // GEMMs fused with the cell, one barrier per step. Only called when
  // pack_recurrent_weights gave weights.
  virtual void forward_recurrence(const ForwardRecurrence& r, at::ScalarType dtype) const;
  // The same for the backward: W_hh in the layout backward_recurrence reads
  // (packed per call: training changes it every step), or undefined; the
  // driver then runs backward_step and a GEMM per step.
  virtual at::Tensor pack_recurrent_weights_backward(const CellDef& /*cell*/,
                                                     const at::Tensor& /*w_hh*/) const {
    return {};
  }
  // Runs the backward steps of r, dh_s = dG_{s+1} W_hh fused with the cell
  // backward, one barrier per step. Only called when
  // pack_recurrent_weights_backward gave weights.
  virtual void backward_recurrence(const BackwardRecurrence& r, at::ScalarType dtype) const;
  // One online-pooling step after a forward step (lstm_layer_pooled_forward).
  virtual void pool_step(const PoolStep& step, at::ScalarType dtype) const = 0;
  // The pooling of steps [step.step, end_step) after a persistent segment,
  // row by row in step order (step.h and step.keys: the segment's packed rows
  // from its first), in one launch; false when the backend has none (the
  // driver then calls pool_step per step, which costs a GPU a launch per step).
  virtual bool pool_segment(const PoolStep& /*step*/, int64_t /*end_step*/,
                            at::ScalarType /*dtype*/) const {
    return false;
  }
  // Whether lengths or a plan table on `where` live on this backend's
  // device (GPU lengths), where host code cannot read them without a copy.
  virtual bool resident_on_device(const at::Device& /*where*/) const { return false; }
  // Whether this cell's recurrence at H in dtype runs kernels that take the
  // step plan from the device (the persistent ones): then a device-resident
  // plan is expanded there (PlanAccess), with no host copy.
  virtual bool reads_steps_on_device(const CellDef& /*cell*/, int64_t /*hidden*/,
                                     at::ScalarType /*dtype*/) const {
    return false;
  }

 protected:
  RecurrentBackend(int64_t projection_rows, int64_t backward_rows)
      : projection_chunk_rows(projection_rows), backward_chunk_rows(backward_rows) {}
  ~RecurrentBackend() = default;
};

using LstmForwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LstmBackwardResult = LstmForwardResult;
using LstmPooledForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using GruForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using GruPooledForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using RnnForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using RnnBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using GruBackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The operators' semantics (csrc/ops.cpp) on `backend`.
LstmForwardResult lstm_layer_forward(const RecurrentBackend& backend, const at::Tensor& x,
                                     const c10::optional<at::Tensor>& lengths,
                                     const c10::optional<at::Tensor>& h0,
                                     const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh,
                                     const c10::optional<at::Tensor>& b_ih,
                                     const c10::optional<at::Tensor>& b_hh, bool reverse,
                                     bool save_activations,
                                     const c10::optional<at::Tensor>& plan_table,
                                     bool low_memory);

LstmPooledForwardResult lstm_layer_pooled_forward(
    const RecurrentBackend& backend, const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& h0, const c10::optional<at::Tensor>& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, c10::string_view pooling,
    const c10::optional<at::Tensor>& query, const c10::optional<at::Tensor>& key_weight,
    const c10::optional<at::Tensor>& key_bias, const c10::optional<at::Tensor>& pool_max,
    const c10::optional<at::Tensor>& pool_denom, const c10::optional<at::Tensor>& pool_sum,
    const c10::optional<at::Tensor>& plan_table);

LstmBackwardResult lstm_layer_backward(
    const RecurrentBackend& backend, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
    const at::Tensor& grad_c_n, const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& gates, const at::Tensor& cell, const at::Tensor& h_prev, bool reverse,
    bool compute_grad_x, const c10::optional<at::Tensor>& plan_table);

LstmBackwardResult lstm_layer_backward_recompute(
    const RecurrentBackend& backend, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
    const at::Tensor& grad_c_n, const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& h0, const c10::optional<at::Tensor>& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& output, const at::Tensor& cell,
    bool reverse, bool compute_grad_x, const c10::optional<at::Tensor>& plan_table);

GruForwardResult gru_layer_forward(const RecurrentBackend& backend, const at::Tensor& x,
                                   const c10::optional<at::Tensor>& lengths,
                                   const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih,
                                   const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                   const c10::optional<at::Tensor>& b_hh, bool reverse,
                                   bool save_activations,
                                   const c10::optional<at::Tensor>& plan_table, bool low_memory);

GruPooledForwardResult gru_layer_pooled_forward(
    const RecurrentBackend& backend, const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    c10::string_view pooling, const c10::optional<at::Tensor>& query,
    const c10::optional<at::Tensor>& key_weight, const c10::optional<at::Tensor>& key_bias,
    const c10::optional<at::Tensor>& pool_max, const c10::optional<at::Tensor>& pool_denom,
    const c10::optional<at::Tensor>& pool_sum, const c10::optional<at::Tensor>& plan_table);

GruBackwardResult gru_layer_backward(const RecurrentBackend& backend, const at::Tensor& grad_output,
                                     const at::Tensor& grad_h_n, const at::Tensor& x,
                                     const c10::optional<at::Tensor>& lengths,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const at::Tensor& gates, const at::Tensor& cell,
                                     const at::Tensor& h_prev, bool reverse, bool compute_grad_x,
                                     const c10::optional<at::Tensor>& plan_table);

GruBackwardResult gru_layer_backward_recompute(
    const RecurrentBackend& backend, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
    const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const at::Tensor& output, bool reverse, bool compute_grad_x,
    const c10::optional<at::Tensor>& plan_table);

RnnForwardResult rnn_layer_forward(const RecurrentBackend& backend, const at::Tensor& x,
                                   const c10::optional<at::Tensor>& lengths,
                                   const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih,
                                   const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                   const c10::optional<at::Tensor>& b_hh,
                                   c10::string_view nonlinearity, bool reverse,
                                   bool save_activations,
                                   const c10::optional<at::Tensor>& plan_table, bool low_memory);

RnnBackwardResult rnn_layer_backward(const RecurrentBackend& backend, const at::Tensor& grad_output,
                                     const at::Tensor& grad_h_n, const at::Tensor& x,
                                     const c10::optional<at::Tensor>& lengths,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const at::Tensor& gates, const at::Tensor& h_prev,
                                     c10::string_view nonlinearity, bool reverse,
                                     bool compute_grad_x,
                                     const c10::optional<at::Tensor>& plan_table);

RnnBackwardResult rnn_layer_backward_recompute(
    const RecurrentBackend& backend, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
    const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const at::Tensor& output, c10::string_view nonlinearity, bool reverse, bool compute_grad_x,
    const c10::optional<at::Tensor>& plan_table);

// A driver entry point bound to the backend `backend()` returns (a function,
// as a base subobject cannot be a template argument): `call` has the
// operator's own signature, the entry point's without its first parameter.
// Registered with SEQCLS_REGISTER_LSTM_BACKEND below.
template <const RecurrentBackend& (*backend)(), auto entry>
struct BoundToBackend;

template <const RecurrentBackend& (*backend)(), typename Result, typename... Args,
          Result (*entry)(const RecurrentBackend&, Args...)>
struct BoundToBackend<backend, entry> {
  static Result call(Args... args) { return entry(backend(), args...); }
};

}  // namespace seqcls_fast

// Registers the LSTM operators of namespace `ns` (seqcls_fast; the CUDA
// emulator's seqcls_fast_cuda_emu) for dispatch key `key` (CPU, CUDA) on one
// default-constructed `Backend`; used once per backend file, at namespace
// scope. SEQCLS_REGISTER_GRU_OPS and SEQCLS_REGISTER_RNN_OPS after it add the
// GRU's and the Elman RNN's operators on the same backend, where it has their
// step kernels.
#define SEQCLS_REGISTER_LSTM_BACKEND(ns, key, Backend)                                            \
  namespace {                                                                                 \
  const ::seqcls_fast::RecurrentBackend& recurrent_backend_##key() {                          \
    static const Backend backend;                                                             \
    return backend;                                                                           \
  }                                                                                           \
  template <auto entry>                                                                       \
  constexpr auto driver_op_##key =                                                            \
      &::seqcls_fast::BoundToBackend<recurrent_backend_##key, entry>::call;                   \
  }                                                                                           \
  TORCH_LIBRARY_IMPL(ns, key, m) {                                                            \
    m.impl("lstm_layer_forward", driver_op_##key<&::seqcls_fast::lstm_layer_forward>);        \
    m.impl("lstm_layer_backward", driver_op_##key<&::seqcls_fast::lstm_layer_backward>);      \
    m.impl("lstm_layer_backward_recompute",                                                   \
           driver_op_##key<&::seqcls_fast::lstm_layer_backward_recompute>);                   \
    m.impl("lstm_layer_pooled_forward", driver_op_##key<&::seqcls_fast::lstm_layer_pooled_forward>); \
  }

#define SEQCLS_REGISTER_GRU_OPS(ns, key)                                                      \
  TORCH_LIBRARY_IMPL(ns, key, m) {                                                            \
    m.impl("gru_layer_forward", driver_op_##key<&::seqcls_fast::gru_layer_forward>);          \
    m.impl("gru_layer_backward", driver_op_##key<&::seqcls_fast::gru_layer_backward>);        \
    m.impl("gru_layer_backward_recompute",                                                    \
           driver_op_##key<&::seqcls_fast::gru_layer_backward_recompute>);                    \
    m.impl("gru_layer_pooled_forward", driver_op_##key<&::seqcls_fast::gru_layer_pooled_forward>); \
  }

#define SEQCLS_REGISTER_RNN_OPS(ns, key)                                                      \
  TORCH_LIBRARY_IMPL(ns, key, m) {                                                            \
    m.impl("rnn_layer_forward", driver_op_##key<&::seqcls_fast::rnn_layer_forward>);          \
    m.impl("rnn_layer_backward", driver_op_##key<&::seqcls_fast::rnn_layer_backward>);        \
    m.impl("rnn_layer_backward_recompute",                                                    \
           driver_op_##key<&::seqcls_fast::rnn_layer_backward_recompute>);                    \
  }
