// torch.autocast("cuda") for the seqcls_fast operators.
//
// Policy, the one autocast applies to cuDNN's RNN and to matmuls: the forward
// ops run in the autocast dtype (float16 by default, or bfloat16). Their
// floating inputs on CUDA are cast to it (float64 inputs are left alone, as
// autocast does everywhere); lengths and the plan are integers and pass through. The
// kernels accumulate in float32 and keep the LSTM cell state in float32, so
// this loses no more than storage precision. Gradients flow back through the
// casts to the float32 parameters, since autocast sits above autograd in the
// dispatcher.
//
// The backward ops get no autocast kernel: they fall through to their
// kernels with the dtypes the forward saved (e.g. the float32 `cell` next to
// float16 gates), which must not be cast.
//
// Without this, sf.LSTM (sf.GRU, sf.RNN) under autocast would hand the op float32 weights and
// a float16 input from the previous layer, and MaskedAttentionPooling a
// float16 input with its float32 query: both dtype errors.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <tuple>

namespace seqcls_fast::cuda {
namespace {

using at::Tensor;
using c10::optional;

using LstmForwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&,
    const Tensor&, const Tensor&, const optional<Tensor>&, const optional<Tensor>&, bool, bool,
    const optional<Tensor>&, bool);
using LstmPooledForwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&,
    const Tensor&, const Tensor&, const optional<Tensor>&, const optional<Tensor>&,
    c10::string_view, const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&,
    const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&,
    const optional<Tensor>&);
using GruForwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&,
    const optional<Tensor>&, const optional<Tensor>&, bool, bool, const optional<Tensor>&, bool);
using GruPooledForwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&,
    const optional<Tensor>&, const optional<Tensor>&, c10::string_view, const optional<Tensor>&,
    const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&,
    const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&);
using RnnForwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&,
    const optional<Tensor>&, const optional<Tensor>&, c10::string_view, bool, bool,
    const optional<Tensor>&, bool);
using PoolForwardFn = std::tuple<Tensor, Tensor>(const Tensor&, const optional<Tensor>&,
                                                 const Tensor&, const optional<Tensor>&,
                                                 const optional<Tensor>&);

template <typename T>
T cast(at::ScalarType dtype, const T& t) {
  return at::autocast::cached_cast(dtype, t, c10::DeviceType::CUDA);
}

// The operator `name` with signature Fn (looked up once per kernel below).
template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// While alive, calls skip autocast (the casts are done); dtype is the one to cast to.
struct BelowAutocast {
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  const c10::impl::ExcludeDispatchKeyGuard guard{c10::DispatchKey::AutocastCUDA};
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_forward_autocast(
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, bool reverse,
    bool save_activations, const optional<Tensor>& plan, bool low_memory) {
  static const auto op = find_op<LstmForwardFn>("seqcls_fast::lstm_layer_forward");
  const BelowAutocast below;
  const at::ScalarType dtype = below.dtype;
  return op.call(cast(dtype, x), lengths, cast(dtype, h0), cast(dtype, c0), cast(dtype, w_ih),
                 cast(dtype, w_hh), cast(dtype, b_ih), cast(dtype, b_hh), reverse,
                 save_activations, plan, low_memory);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_forward_autocast(
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, bool reverse, bool save_activations,
    const optional<Tensor>& plan, bool low_memory) {
  static const auto op = find_op<GruForwardFn>("seqcls_fast::gru_layer_forward");
  const BelowAutocast below;
  const at::ScalarType dtype = below.dtype;
  return op.call(cast(dtype, x), lengths, cast(dtype, h0), cast(dtype, w_ih), cast(dtype, w_hh),
                 cast(dtype, b_ih), cast(dtype, b_hh), reverse, save_activations, plan,
                 low_memory);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_layer_forward_autocast(
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, c10::string_view nonlinearity, bool reverse,
    bool save_activations, const optional<Tensor>& plan, bool low_memory) {
  static const auto op = find_op<RnnForwardFn>("seqcls_fast::rnn_layer_forward");
  const BelowAutocast below;
  const at::ScalarType dtype = below.dtype;
  return op.call(cast(dtype, x), lengths, cast(dtype, h0), cast(dtype, w_ih), cast(dtype, w_hh),
                 cast(dtype, b_ih), cast(dtype, b_hh), nonlinearity, reverse, save_activations,
                 plan, low_memory);
}

// The pooling state (pool_max, pool_denom, pool_sum) is in the state dtype,
// float32 for a half or bfloat16 x, so it passes uncast like the lengths
// (here and in the GRU's below).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_pooled_forward_autocast(
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, c10::string_view pooling,
    const optional<Tensor>& query, const optional<Tensor>& key_weight,
    const optional<Tensor>& key_bias, const optional<Tensor>& pool_max,
    const optional<Tensor>& pool_denom, const optional<Tensor>& pool_sum,
    const optional<Tensor>& plan) {
  static const auto op = find_op<LstmPooledForwardFn>("seqcls_fast::lstm_layer_pooled_forward");
  const BelowAutocast below;
  const at::ScalarType dtype = below.dtype;
  return op.call(cast(dtype, x), lengths, cast(dtype, h0), cast(dtype, c0), cast(dtype, w_ih),
                 cast(dtype, w_hh), cast(dtype, b_ih), cast(dtype, b_hh), pooling,
                 cast(dtype, query), cast(dtype, key_weight), cast(dtype, key_bias), pool_max,
                 pool_denom, pool_sum, plan);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_layer_pooled_forward_autocast(
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, c10::string_view pooling, const optional<Tensor>& query,
    const optional<Tensor>& key_weight, const optional<Tensor>& key_bias,
    const optional<Tensor>& pool_max, const optional<Tensor>& pool_denom,
    const optional<Tensor>& pool_sum, const optional<Tensor>& plan) {
  static const auto op = find_op<GruPooledForwardFn>("seqcls_fast::gru_layer_pooled_forward");
  const BelowAutocast below;
  const at::ScalarType dtype = below.dtype;
  return op.call(cast(dtype, x), lengths, cast(dtype, h0), cast(dtype, w_ih), cast(dtype, w_hh),
                 cast(dtype, b_ih), cast(dtype, b_hh), pooling, cast(dtype, query),
                 cast(dtype, key_weight), cast(dtype, key_bias), pool_max, pool_denom, pool_sum,
                 plan);
}

std::tuple<Tensor, Tensor> masked_attention_pool_forward_autocast(
    const Tensor& values, const optional<Tensor>& keys, const Tensor& query,
    const optional<Tensor>& lengths, const optional<Tensor>& plan) {
  static const auto op = find_op<PoolForwardFn>("seqcls_fast::masked_attention_pool_forward");
  const BelowAutocast below;
  const at::ScalarType dtype = below.dtype;
  return op.call(cast(dtype, values), cast(dtype, keys), cast(dtype, query), lengths, plan);
}

}  // namespace

TORCH_LIBRARY_IMPL(seqcls_fast, AutocastCUDA, m) {
  m.impl("lstm_layer_forward", &lstm_layer_forward_autocast);
  m.impl("lstm_layer_pooled_forward", &lstm_layer_pooled_forward_autocast);
  m.impl("gru_layer_forward", &gru_layer_forward_autocast);
  m.impl("gru_layer_pooled_forward", &gru_layer_pooled_forward_autocast);
  m.impl("rnn_layer_forward", &rnn_layer_forward_autocast);
  m.impl("masked_attention_pool_forward", &masked_attention_pool_forward_autocast);
}

}  // namespace seqcls_fast::cuda
