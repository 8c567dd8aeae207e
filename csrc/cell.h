// Cell math (LSTM, GRU, Elman RNN), written once; what the driver knows of
// each cell is in cell_def.h. The CPU kernels instantiate it with scalars and
// with at::vec::Vectorized<T>; the CUDA kernels with float/double in
// registers. A backend only supplies exp, tanh and the two relu functions for
// its value type through CellMath<V>; every formula below is shared, so the
// CPU tests exercise the same expressions the GPU runs.
#pragma once

#include <cmath>

#include "host_device.h"

namespace seqcls_fast {

// exp, tanh, relu(x) (max(x, 0), NaN stays NaN, as torch.relu) and
// relu_grad(h, dh) (dh where h > 0, else 0: torch's threshold_backward on
// relu's result) for a value type V. Specialised here for scalars; the CPU
// backend adds a specialisation for each of its vector types.
template <typename V>
struct CellMath;

// The relu pair for a scalar type.
template <typename T>
struct ScalarRelu {
  SEQCLS_HOST_DEVICE static T relu(T x) { return x < T(0) ? T(0) : x; }
  SEQCLS_HOST_DEVICE static T relu_grad(T h, T dh) { return h > T(0) ? dh : T(0); }
};

template <>
struct CellMath<float> : ScalarRelu<float> {
  SEQCLS_HOST_DEVICE static float exp(float x) { return ::expf(x); }
  SEQCLS_HOST_DEVICE static float tanh(float x) { return ::tanhf(x); }
};

template <>
struct CellMath<double> : ScalarRelu<double> {
  SEQCLS_HOST_DEVICE static double exp(double x) { return ::exp(x); }
  SEQCLS_HOST_DEVICE static double tanh(double x) { return ::tanh(x); }
};

// 1 / (1 + e^-x): exp overflows to inf for very negative x and the quotient
// is then exactly 0, so no branch is needed.
template <typename V>
SEQCLS_HOST_DEVICE V sigmoid(V x) {
  return V(1) / (V(1) + CellMath<V>::exp(V(0) - x));
}

// One hidden unit of one step, forward. Inputs are the pre-activations of the
// four gates (x W_ih^T + h W_hh^T + b, gate order i, f, g, o) and the previous
// cell state; outputs are the activated gates (kept for the backward), the new
// cell state and the new hidden state.
template <typename V>
SEQCLS_HOST_DEVICE void lstm_cell_forward(V pre_i, V pre_f, V pre_g, V pre_o, V c_prev,
                                          V& i, V& f, V& g, V& o, V& c, V& h) {
  i = sigmoid(pre_i);
  f = sigmoid(pre_f);
  g = CellMath<V>::tanh(pre_g);
  o = sigmoid(pre_o);
  c = f * c_prev + i * g;
  h = o * CellMath<V>::tanh(c);
}

// One hidden unit of one step, backward. dh is the total gradient reaching
// h_t (from the output at t and from step t+1 through W_hh); dc_next is the
// gradient reaching c_t from step t+1. Produces the gradients of the four
// pre-activations and of c_{t-1}. The activated gates come from the forward,
// so only tanh(c) is recomputed.
template <typename V>
SEQCLS_HOST_DEVICE void lstm_cell_backward(V i, V f, V g, V o, V c, V c_prev, V dh, V dc_next,
                                           V& d_pre_i, V& d_pre_f, V& d_pre_g, V& d_pre_o,
                                           V& dc_prev) {
  const V tanh_c = CellMath<V>::tanh(c);
  const V dc = dc_next + dh * o * (V(1) - tanh_c * tanh_c);
  d_pre_i = dc * g * i * (V(1) - i);
  d_pre_f = dc * c_prev * f * (V(1) - f);
  d_pre_g = dc * i * (V(1) - g * g);
  d_pre_o = dh * tanh_c * o * (V(1) - o);
  dc_prev = dc * f;
}

// One hidden unit of one GRU step, forward: nn.GRU's math, gate order r, z,
// n, with b_hn inside the reset product. x_* are x W_ih^T + b_ih; h_* are
// h_{t-1} W_hh^T + b_hh, kept apart from x_* (cell_def.h: recurrent_apart)
// because the new gate multiplies h_n by r. h' = (1 - z) n + z h_prev,
// written n + z (h_prev - n) as ATen's GRU cell writes it.
template <typename V>
SEQCLS_HOST_DEVICE void gru_cell_forward(V x_r, V x_z, V x_n, V h_r, V h_z, V h_n, V h_prev,
                                         V& r, V& z, V& n, V& h) {
  r = sigmoid(x_r + h_r);
  z = sigmoid(x_z + h_z);
  n = CellMath<V>::tanh(x_n + r * h_n);
  h = n + z * (h_prev - n);
}

// One hidden unit of one GRU step, backward. dh is the total gradient
// reaching h_t; r, z, n are the forward's activated gates and h_n its
// recurrent part of the new gate (h_{t-1} W_hn^T + b_hn). Produces the
// gradients of the pre-activations: d_r, d_z (shared by the input and
// recurrent parts), d_xn (input part of n) and d_hn (recurrent part:
// d_xn * r); and dh_prev_direct, the gradient reaching h_{t-1} through z
// (the one through W_hh is the driver's GEMM).
template <typename V>
SEQCLS_HOST_DEVICE void gru_cell_backward(V r, V z, V n, V h_n, V h_prev, V dh, V& d_r, V& d_z,
                                          V& d_xn, V& d_hn, V& dh_prev_direct) {
  const V dn = dh * (V(1) - z);
  d_xn = dn * (V(1) - n * n);
  d_hn = d_xn * r;
  d_r = d_xn * h_n * r * (V(1) - r);
  d_z = dh * (h_prev - n) * z * (V(1) - z);
  dh_prev_direct = dh * z;
}

// One hidden unit of one Elman RNN step (nn.RNN's), forward: the
// pre-activation x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh, activated by tanh
// or (kRelu) relu; the result is both the gate the backward keeps and h_t.
template <bool kRelu, typename V>
SEQCLS_HOST_DEVICE V rnn_cell_forward(V pre) {
  if constexpr (kRelu) {
    return CellMath<V>::relu(pre);
  } else {
    return CellMath<V>::tanh(pre);
  }
}

// Backward: the gradient of the pre-activation from h_t (the forward's
// result) and dh, the total gradient reaching h_t; dh_{t-1} is the driver's
// GEMM of it with W_hh.
template <bool kRelu, typename V>
SEQCLS_HOST_DEVICE V rnn_cell_backward(V h, V dh) {
  if constexpr (kRelu) {
    return CellMath<V>::relu_grad(h, dh);
  } else {
    return dh * (V(1) - h * h);
  }
}

}  // namespace seqcls_fast
