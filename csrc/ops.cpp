// Operator schemas, declared once. Each backend registers its kernels for
// these names in its own file (csrc/cpu/*.cpp, csrc/cuda/*.cu) with
// TORCH_LIBRARY_IMPL; Python adds fake (meta) kernels and autograd in
// seqcls_fast/_ops.py.
//
// Layout conventions shared by every backend:
//   LSTM and GRU ops are time-major: x [T, B, I], output [T, B, H]. One call
//   runs one layer in one direction. `lengths` [B] (any integer dtype, on the CPU or on x's device)
//   gives each row's valid steps, 1 <= lengths[b] <= T; None means all T.
//   With reverse=true each row runs from its own last valid step down to 0.
//   `plan` (optional, every operator): the batch's length plan from
//   length_plan (csrc/length_plan.h), made once per batch and passed instead
//   of lengths (which must then be None) so no call validates, sorts or
//   copies lengths to the host again.
//   Weights use nn.LSTM's layout and gate order (i, f, g, o): w_ih [4H, I],
//   w_hh [4H, H], b_ih/b_hh [4H]; the GRU's nn.GRU's (r, z, n): [3H, .].
#include <Python.h>
#include <torch/library.h>

#include "cpu/recurrence_cpu.h"
#include "length_plan.h"
#include "ops.h"
#include "recurrent_common.h"
#ifdef SEQCLS_WITH_CUDA_EMU
#include "cuda_emu/emulator_runtime.h"
#endif

namespace {

void define_gru_operators(torch::Library& m);
void define_pooling_operators(torch::Library& m);

}  // namespace

void seqcls_fast::define_operators(torch::Library& m) {
  // lengths [B] (any integer dtype, on the CPU or on `device`, the input's)
  // validated against `steps` and `batch` and sorted: the plan [3, B] int64
  // where the lengths are (csrc/length_plan.h): on the CPU, or on the GPU
  // with no host copy (checked there by an asynchronous device assertion).
  m.def("length_plan(Tensor lengths, SymInt steps, SymInt batch, Device? device=None) -> Tensor");
  // Returns (output [T,B,H], h_n [B,H], c_n [B,H], gates [N,4H], cell [N,H],
  // h_prev [N,H]) with N = sum(lengths) (T*B without lengths, and for a plan
  // on the GPU that the persistent recurrence expands there: T x B slots,
  // step s of sorted row j at row s*B + j; README "How it works"); output is 0
  // past each row's length. The last three are what the backward needs, in
  // the packed layout of a PackedSequence: step s of the recurrence holds rows
  // offset[s] .. offset[s] + active[s] - 1 (the rows still running, sorted by
  // length, descending, ties in caller order). gates holds the activated
  // gates (i, f, g, o), cell c_t (float32 for half/bfloat16 x), and h_prev the
  // hidden state each step started from (h0 at the first step). With
  // save_activations=false (inference) all three are empty (0 rows).
  // With low_memory=true (and save_activations) gates and h_prev are empty
  // and cell [C*B, H] holds the sorted cell state [B, H] at the start of each
  // of the backward's C chunks of steps (about 1024 packed rows each on the
  // CPU, 64K on CUDA): the backward is lstm_layer_backward_recompute.
  m.def(
      "lstm_layer_forward(Tensor x, Tensor? lengths, Tensor? h0, Tensor? c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool reverse, "
      "bool save_activations, Tensor? plan=None, bool low_memory=False) -> (Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor)");
  // The last layer of a unidirectional classifier in inference: one forward
  // layer (as lstm_layer_forward with reverse=false) that never writes its
  // [T, B, H] output but pools it as it runs. pooling: "attention" (scores
  // keys_t . query with keys_t = h_t, or tanh(key_weight h_t + key_bias) when
  // key_weight [A, H] is given; query [A]), "mean" or "last" (nothing pooled).
  // The pooling state continues a previous call's (streaming) or starts empty
  // when pool_max/pool_denom/pool_sum are None: per row the running max of the
  // scores [B], the softmax denominator sum exp(s - max) [B], and the sum
  // [B, H] of exp(s - max) h_t (attention) or of h_t (mean); all in the state
  // dtype (float32 for half/bfloat16 x). Returns (h_n, c_n, pool_max,
  // pool_denom, pool_sum); attention pooled = pool_sum / pool_denom, mean
  // pooled = pool_sum / lengths.
  m.def(
      "lstm_layer_pooled_forward(Tensor x, Tensor? lengths, Tensor? h0, Tensor? c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, str pooling, Tensor? query, "
      "Tensor? key_weight, Tensor? key_bias, Tensor? pool_max, Tensor? pool_denom, "
      "Tensor? pool_sum, Tensor? plan=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x [T,B,I], grad_h0 [B,H], grad_c0 [B,H], grad_w_ih [4H,I],
  // grad_w_hh [4H,H], grad_bias [4H]); grad_bias is the gradient of b_ih and
  // of b_hh alike. grad_x is all zeros when compute_grad_x is false (the
  // input needs no gradient, e.g. the first layer fed by data), as a broadcast
  // of one zero (strides 0: nothing is filled).
  m.def(
      "lstm_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, "
      "Tensor x, Tensor? lengths, Tensor? c0, Tensor w_ih, Tensor w_hh, "
      "Tensor gates, Tensor cell, Tensor h_prev, bool reverse, bool compute_grad_x, "
      "Tensor? plan=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // lstm_layer_backward's results for a forward run with low_memory=true:
  // the gates are rebuilt from x, the forward's output [T,B,H], h0 and the
  // biases (h_prev of step s is the output at step s-1), a chunk of steps at a
  // time, with two GEMMs per chunk and no recurrence; the cell states by
  // replaying the pointwise forward step from the chunk's checkpoint in cell
  // [C*B, H] (as that forward returned it).
  m.def(
      "lstm_layer_backward_recompute(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, "
      "Tensor x, Tensor? lengths, Tensor? h0, Tensor? c0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor output, Tensor cell, bool reverse, "
      "bool compute_grad_x, Tensor? plan=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  define_gru_operators(m);
  define_pooling_operators(m);
}

namespace {

void define_gru_operators(torch::Library& m) {
  // One GRU layer-direction (nn.GRU's math, gate order r, z, n, b_hn inside
  // the reset product), on the same plan and packed layout as the LSTM's.
  // Returns (output [T,B,H], h_n [B,H], gates [N,3H], cell [N,H], h_prev
  // [N,H]): gates holds the activated r, z, n; cell the recurrent part of the
  // new gate, h_prev W_hn^T + b_hn; h_prev as the LSTM's. With
  // save_activations=false, or low_memory=true (the backward is then
  // gru_layer_backward_recompute, which rebuilds all three from the output),
  // the last three are empty (0 rows).
  m.def(
      "gru_layer_forward(Tensor x, Tensor? lengths, Tensor? h0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool reverse, bool save_activations, Tensor? plan=None, "
      "bool low_memory=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x [T,B,I], grad_h0 [B,H], grad_w_ih [3H,I], grad_w_hh
  // [3H,H], grad_b_ih [3H], grad_b_hh [3H]); grad_x as lstm_layer_backward's.
  m.def(
      "gru_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor x, Tensor? lengths, "
      "Tensor w_ih, Tensor w_hh, Tensor gates, Tensor cell, Tensor h_prev, bool reverse, "
      "bool compute_grad_x, Tensor? plan=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  // gru_layer_backward's results for a forward run with low_memory=true: h_prev
  // of step s is the output at step s-1 (h0 at s = 0), the gates' input and
  // recurrent parts two GEMMs per chunk of steps, the activations a replay of
  // the pointwise step.
  m.def(
      "gru_layer_backward_recompute(Tensor grad_output, Tensor grad_h_n, Tensor x, "
      "Tensor? lengths, Tensor? h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor output, bool reverse, bool compute_grad_x, Tensor? plan=None) -> (Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor)");
  // lstm_layer_pooled_forward for the GRU: the last layer of a unidirectional
  // classifier in inference, pooling its output as it runs, with the same
  // pooling arguments and state. Returns (h_n, pool_max, pool_denom, pool_sum).
  m.def(
      "gru_layer_pooled_forward(Tensor x, Tensor? lengths, Tensor? h0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, str pooling, Tensor? query, Tensor? key_weight, "
      "Tensor? key_bias, Tensor? pool_max, Tensor? pool_denom, Tensor? pool_sum, "
      "Tensor? plan=None) -> (Tensor, Tensor, Tensor, Tensor)");
  // One Elman RNN layer-direction (nn.RNN's: h' = act(x W_ih^T + b_ih +
  // h W_hh^T + b_hh), nonlinearity "tanh" or "relu"), on the same plan and
  // packed layout. Returns (output [T,B,H], h_n [B,H], gates [N,H], h_prev
  // [N,H]): gates holds each step's activated value (h_s, all the backward
  // needs); h_prev as the LSTM's; both empty (0 rows) without
  // save_activations or with low_memory (then rnn_layer_backward_recompute).
  m.def(
      "rnn_layer_forward(Tensor x, Tensor? lengths, Tensor? h0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, str nonlinearity, bool reverse, bool save_activations, "
      "Tensor? plan=None, bool low_memory=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x [T,B,I], grad_h0 [B,H], grad_w_ih [H,I], grad_w_hh [H,H],
  // grad_bias [H]); grad_bias is b_ih's and b_hh's alike; grad_x as
  // lstm_layer_backward's.
  m.def(
      "rnn_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor x, Tensor? lengths, "
      "Tensor w_ih, Tensor w_hh, Tensor gates, Tensor h_prev, str nonlinearity, bool reverse, "
      "bool compute_grad_x, Tensor? plan=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // rnn_layer_backward's results for a forward run with low_memory=true,
  // rebuilt from the output as gru_layer_backward_recompute does.
  m.def(
      "rnn_layer_backward_recompute(Tensor grad_output, Tensor grad_h_n, Tensor x, "
      "Tensor? lengths, Tensor? h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor output, str nonlinearity, bool reverse, bool compute_grad_x, Tensor? plan=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

void define_pooling_operators(torch::Library& m) {
  // values [B,T,D], keys [B,T,A] (None: keys are the values), query [A].
  // scores s[b,t] = keys[b,t] . query over t < lengths[b]; weights = masked
  // softmax of s (0 at padding); pooled[b] = sum_t weights[b,t] values[b,t].
  // Returns (pooled [B,D], weights [B,T]). Any strides are accepted.
  m.def(
      "masked_attention_pool_forward(Tensor values, Tensor? keys, Tensor query, "
      "Tensor? lengths, Tensor? plan=None) -> (Tensor, Tensor)");
  // Returns (grad_values [B,T,D], grad_keys [B,T,A], grad_query [A]). When keys
  // is None the key gradient is folded into grad_values and grad_keys is an
  // empty tensor.
  m.def(
      "masked_attention_pool_backward(Tensor grad_pooled, Tensor grad_weights, "
      "Tensor values, Tensor? keys, Tensor query, Tensor? lengths, Tensor weights, "
      "Tensor? plan=None) -> (Tensor, Tensor, Tensor)");
}

}  // namespace

TORCH_LIBRARY(seqcls_fast, m) { seqcls_fast::define_operators(m); }
#ifdef SEQCLS_WITH_CUDA_EMU
// The same operators for the CUDA backend compiled for the CPU emulator
// (csrc/cuda_emu/, tests only): CPU tensors, CUDA kernels on CPU threads.
TORCH_LIBRARY(seqcls_fast_cuda_emu, m) { seqcls_fast::define_operators(m); }
#endif

namespace {

// Test hook: {"plans_made": n, "host_copies": n, "expansions": n} since the
// library loaded.
PyObject* length_plan_stats(PyObject* /*self*/, PyObject* /*args*/) {
  const seqcls_fast::LengthPlanStats stats = seqcls_fast::length_plan_stats();
  return Py_BuildValue("{s:L,s:L,s:L}", "plans_made", static_cast<long long>(stats.plans_made),
                       "host_copies", static_cast<long long>(stats.host_copies), "expansions",
                       static_cast<long long>(seqcls_fast::length_plan_expansions()));
}

// {"isa": ..., "recurrence": ...}: the instruction set the CPU kernels use
// now, and the recurrence a float32 call runs ("avx512", "avx2", or "steps"
// for a GEMM per step); the benchmark records them beside its timings.
PyObject* cpu_kernel_paths(PyObject* /*self*/, PyObject* /*args*/) {
  using seqcls_fast::cpu::CpuIsa;
  try {
    const CpuIsa recurrence = seqcls_fast::cpu::recurrence_isa(/*float32=*/true);
    return Py_BuildValue("{s:s,s:s}", "isa", seqcls_fast::cpu::cpu_isa_name(seqcls_fast::cpu::cpu_isa()),
                         "recurrence", recurrence == CpuIsa::kBaseline
                                           ? "steps"
                                           : seqcls_fast::cpu::cpu_isa_name(recurrence));
  } catch (const c10::Error& error) {
    PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    return nullptr;
  }
}

#ifdef SEQCLS_WITH_CUDA_EMU
// {"launches": n, "blocks": n, "max_threads": n, "cooperative_launches": n}:
// the CUDA emulator's work since the library loaded (tests check that
// emulated kernels really ran, and which path).
PyObject* cuda_emu_stats(PyObject* /*self*/, PyObject* /*args*/) {
  const seqcls_emu::Stats stats = seqcls_emu::stats();
  return Py_BuildValue("{s:L,s:L,s:L,s:L}", "launches", static_cast<long long>(stats.launches),
                       "blocks", static_cast<long long>(stats.blocks), "max_threads",
                       static_cast<long long>(stats.max_threads), "cooperative_launches",
                       static_cast<long long>(stats.cooperative_launches));
}
#endif

PyMethodDef methods[] = {
    {"cpu_kernel_paths", cpu_kernel_paths, METH_NOARGS,
     "The instruction set of the CPU kernels and the float32 recurrence that runs now."},
    {"length_plan_stats", length_plan_stats, METH_NOARGS,
     "How many length plans were made from raw lengths, how many device-to-host copies "
     "of lengths that took, and how many times a plan was expanded into its step layout, "
     "since the library was loaded."},
#ifdef SEQCLS_WITH_CUDA_EMU
    {"cuda_emu_stats", cuda_emu_stats, METH_NOARGS,
     "Grids, blocks and the largest block the CUDA emulator has run since the library loaded."},
#endif
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// An importable module so `import seqcls_fast._C` loads the library and runs
// the registrations above; it binds one test hook and no operators.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
