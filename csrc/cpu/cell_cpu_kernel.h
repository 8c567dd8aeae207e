// Vectorized pointwise step kernels of the LSTM, GRU and Elman RNN cells (cell.h's math
// over the step parameters of recurrent_step.h). Included once per CPU capability
// (cell_cpu.cpp: generic, cell_cpu_avx2.cpp: AVX2+FMA). The
// including file opens namespace seqcls_fast::cpu::<capability> and defines
// there, for T in {float, double}:
//   VecOps<T>::Vec            a vector type with + - * / and broadcast from T
//   VecOps<T>::size           its width
//   VecOps<T>::load(p, n)     n <= size elements from p (rest unspecified)
//   VecOps<T>::store(v, p, n) n <= size elements to p
// and CellMath<Vec> (exp, tanh) in namespace seqcls_fast, and the macro
// SEQCLS_CPU_KERNEL (function attributes for this build, e.g. its target).
// Rows run in parallel; each row is processed in vector-width chunks of its
// H units. The row loops are named functions, not lambdas, so they carry the
// build's target.

namespace {

template <typename T>
using Vec = typename VecOps<T>::Vec;

template <typename T>
SEQCLS_CPU_KERNEL inline Vec<T> load(const T* p, int64_t n) {
  return VecOps<T>::load(p, n);
}
template <typename T>
SEQCLS_CPU_KERNEL inline void store(const Vec<T>& v, T* p, int64_t n) {
  VecOps<T>::store(v, p, n);
}

// Rows per parallel task: about 16K elements of work each (a row is the
// cell's gates x H), so small batches stay on one thread instead of paying
// for a fork.
inline int64_t row_grain(int64_t row_elements) {
  return std::max<int64_t>(1, 16384 / row_elements);
}

// Runs `rows(p, begin, end)` over the step's rows in parallel.
template <typename Step>
void parallel_rows(const Step& p, void (*rows)(const Step&, int64_t, int64_t)) {
  at::parallel_for(0, p.rows, row_grain(cell_def_of(p.cell_kind).gates * p.hidden),
                   [&](int64_t begin, int64_t end) { rows(p, begin, end); });
}

template <typename T>
SEQCLS_CPU_KERNEL void forward_rows(const ForwardStep& p, int64_t begin, int64_t end) {
  const int64_t H = p.hidden, G = 4 * H;
  T* gates = static_cast<T*>(p.gates);
  T* h_state = static_cast<T*>(p.h_state);
  T* c_state = static_cast<T*>(p.c_state);
  T* output = static_cast<T*>(p.output);
  T* cell = static_cast<T*>(p.cell);
  T* h_prev_next = static_cast<T*>(p.h_prev_next);
  for (int64_t j = begin; j < end; ++j) {
    T* g = gates + j * G;
    T* h_row = h_state + j * H;
    T* c_row = c_state + j * H;
    T* out_row = output ? output + output_offset(p, j, p.step) : nullptr;
    T* cell_row = cell ? cell + j * H : nullptr;
    T* h_next_row = h_prev_next && j < p.rows_next ? h_prev_next + j * H : nullptr;
    for (int64_t k = 0; k < H; k += VecOps<T>::size) {
      const int64_t n = std::min<int64_t>(VecOps<T>::size, H - k);
      Vec<T> i, f, gg, o, c, h;
      lstm_cell_forward(load(g + k, n), load(g + H + k, n), load(g + 2 * H + k, n),
                        load(g + 3 * H + k, n), load(c_row + k, n), i, f, gg, o, c, h);
      store(i, g + k, n);
      store(f, g + H + k, n);
      store(gg, g + 2 * H + k, n);
      store(o, g + 3 * H + k, n);
      store(c, c_row + k, n);
      store(h, h_row + k, n);
      if (out_row) store(h, out_row + k, n);
      if (cell_row) store(c, cell_row + k, n);
      if (h_next_row) store(h, h_next_row + k, n);
    }
  }
}

template <typename T>
SEQCLS_CPU_KERNEL void backward_rows(const BackwardStep& p, int64_t begin, int64_t end) {
  const int64_t H = p.hidden, G = 4 * H;
  const T* gates = static_cast<const T*>(p.gates);
  const T* cell = static_cast<const T*>(p.cell);
  const T* cell_prev = static_cast<const T*>(p.cell_prev);
  const T* grad_output = static_cast<const T*>(p.grad_output);
  const T* grad_h = static_cast<const T*>(p.grad_h_state);
  T* grad_c = static_cast<T*>(p.grad_c_state);
  T* grad_gates = static_cast<T*>(p.grad_gates);
  for (int64_t j = begin; j < end; ++j) {
    const T* g = gates + j * G;
    const T* c_row = cell + j * H;
    const T* c_prev_row = cell_prev + j * H;
    const T* dout_row = grad_output + grad_output_offset(p, j, p.step);
    const T* dh_row = grad_h + j * H;
    T* dc_row = grad_c + j * H;
    T* dg = grad_gates + j * G;
    for (int64_t k = 0; k < H; k += VecOps<T>::size) {
      const int64_t n = std::min<int64_t>(VecOps<T>::size, H - k);
      Vec<T> di, df, dgg, dout, dc_prev;
      lstm_cell_backward(load(g + k, n), load(g + H + k, n), load(g + 2 * H + k, n),
                         load(g + 3 * H + k, n), load(c_row + k, n), load(c_prev_row + k, n),
                         load(dh_row + k, n) + load(dout_row + k, n), load(dc_row + k, n), di, df,
                         dgg, dout, dc_prev);
      store(di, dg + k, n);
      store(df, dg + H + k, n);
      store(dgg, dg + 2 * H + k, n);
      store(dout, dg + 3 * H + k, n);
      store(dc_prev, dc_row + k, n);
    }
  }
}

template <typename T>
SEQCLS_CPU_KERNEL void gru_forward_rows(const ForwardStep& p, int64_t begin, int64_t end) {
  const int64_t H = p.hidden, G = 3 * H;
  T* gates = static_cast<T*>(p.gates);
  const T* recurrent = static_cast<const T*>(p.recurrent);
  T* h_state = static_cast<T*>(p.h_state);
  T* output = static_cast<T*>(p.output);
  T* kept = static_cast<T*>(p.cell);
  T* h_prev_next = static_cast<T*>(p.h_prev_next);
  for (int64_t j = begin; j < end; ++j) {
    T* g = gates + j * G;
    const T* rec = recurrent + j * G;
    T* h_row = h_state + j * H;
    T* out_row = output ? output + output_offset(p, j, p.step) : nullptr;
    T* kept_row = kept ? kept + j * H : nullptr;
    T* h_next_row = h_prev_next && j < p.rows_next ? h_prev_next + j * H : nullptr;
    for (int64_t k = 0; k < H; k += VecOps<T>::size) {
      const int64_t n = std::min<int64_t>(VecOps<T>::size, H - k);
      const Vec<T> h_n = load(rec + 2 * H + k, n);
      Vec<T> r, z, nn, h;
      gru_cell_forward(load(g + k, n), load(g + H + k, n), load(g + 2 * H + k, n),
                       load(rec + k, n), load(rec + H + k, n), h_n, load(h_row + k, n), r, z, nn,
                       h);
      store(r, g + k, n);
      store(z, g + H + k, n);
      store(nn, g + 2 * H + k, n);
      store(h, h_row + k, n);
      if (out_row) store(h, out_row + k, n);
      if (kept_row) store(h_n, kept_row + k, n);
      if (h_next_row) store(h, h_next_row + k, n);
    }
  }
}

template <typename T>
SEQCLS_CPU_KERNEL void gru_backward_rows(const BackwardStep& p, int64_t begin, int64_t end) {
  const int64_t H = p.hidden, G = 3 * H;
  const T* gates = static_cast<const T*>(p.gates);
  const T* kept = static_cast<const T*>(p.cell);
  const T* h_prev = static_cast<const T*>(p.h_prev);
  const T* grad_output = static_cast<const T*>(p.grad_output);
  T* grad_h = static_cast<T*>(p.grad_h_state);
  T* grad_gates = static_cast<T*>(p.grad_gates);
  T* grad_recurrent = static_cast<T*>(p.grad_recurrent);
  for (int64_t j = begin; j < end; ++j) {
    const T* g = gates + j * G;
    const T* h_n_row = kept + j * H;
    const T* h_prev_row = h_prev + j * H;
    const T* dout_row = grad_output + grad_output_offset(p, j, p.step);
    T* dh_row = grad_h + j * H;
    T* dg = grad_gates + j * G;
    T* dr = grad_recurrent + j * G;
    for (int64_t k = 0; k < H; k += VecOps<T>::size) {
      const int64_t n = std::min<int64_t>(VecOps<T>::size, H - k);
      Vec<T> d_r, d_z, d_xn, d_hn, dh_direct;
      gru_cell_backward(load(g + k, n), load(g + H + k, n), load(g + 2 * H + k, n),
                        load(h_n_row + k, n), load(h_prev_row + k, n),
                        load(dh_row + k, n) + load(dout_row + k, n), d_r, d_z, d_xn, d_hn,
                        dh_direct);
      store(d_r, dg + k, n);
      store(d_z, dg + H + k, n);
      store(d_xn, dg + 2 * H + k, n);
      store(d_r, dr + k, n);
      store(d_z, dr + H + k, n);
      store(d_hn, dr + 2 * H + k, n);
      store(dh_direct, dh_row + k, n);
    }
  }
}

// The Elman RNN's forward step: gates [rows, H] in: the pre-activations,
// out: h_s (the activated gate); h_state, output and h_prev_next as the LSTM's.
template <typename T, bool kRelu>
SEQCLS_CPU_KERNEL void rnn_forward_rows(const ForwardStep& p, int64_t begin, int64_t end) {
  const int64_t H = p.hidden;
  T* gates = static_cast<T*>(p.gates);
  T* h_state = static_cast<T*>(p.h_state);
  T* output = static_cast<T*>(p.output);
  T* h_prev_next = static_cast<T*>(p.h_prev_next);
  for (int64_t j = begin; j < end; ++j) {
    T* g = gates + j * H;
    T* h_row = h_state + j * H;
    T* out_row = output ? output + output_offset(p, j, p.step) : nullptr;
    T* h_next_row = h_prev_next && j < p.rows_next ? h_prev_next + j * H : nullptr;
    for (int64_t k = 0; k < H; k += VecOps<T>::size) {
      const int64_t n = std::min<int64_t>(VecOps<T>::size, H - k);
      const Vec<T> h = rnn_cell_forward<kRelu>(load(g + k, n));
      store(h, g + k, n);
      store(h, h_row + k, n);
      if (out_row) store(h, out_row + k, n);
      if (h_next_row) store(h, h_next_row + k, n);
    }
  }
}

// Its backward step: dG_s = act'(h_s) (dh + the output's gradient).
template <typename T, bool kRelu>
SEQCLS_CPU_KERNEL void rnn_backward_rows(const BackwardStep& p, int64_t begin, int64_t end) {
  const int64_t H = p.hidden;
  const T* gates = static_cast<const T*>(p.gates);
  const T* grad_output = static_cast<const T*>(p.grad_output);
  const T* grad_h = static_cast<const T*>(p.grad_h_state);
  T* grad_gates = static_cast<T*>(p.grad_gates);
  for (int64_t j = begin; j < end; ++j) {
    const T* g = gates + j * H;
    const T* dout_row = grad_output + grad_output_offset(p, j, p.step);
    const T* dh_row = grad_h + j * H;
    T* dg = grad_gates + j * H;
    for (int64_t k = 0; k < H; k += VecOps<T>::size) {
      const int64_t n = std::min<int64_t>(VecOps<T>::size, H - k);
      store(rnn_cell_backward<kRelu>(load(g + k, n), load(dh_row + k, n) + load(dout_row + k, n)),
            dg + k, n);
    }
  }
}

}  // namespace

void lstm_forward_step(const ForwardStep& params, c10::ScalarType dtype) {
  AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_forward_step_cpu",
                             [&] { parallel_rows(params, &forward_rows<scalar_t>); });
}

void lstm_backward_step(const BackwardStep& params, c10::ScalarType dtype) {
  AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_backward_step_cpu",
                             [&] { parallel_rows(params, &backward_rows<scalar_t>); });
}

void gru_forward_step(const ForwardStep& params, c10::ScalarType dtype) {
  AT_DISPATCH_FLOATING_TYPES(dtype, "gru_forward_step_cpu",
                             [&] { parallel_rows(params, &gru_forward_rows<scalar_t>); });
}

void gru_backward_step(const BackwardStep& params, c10::ScalarType dtype) {
  AT_DISPATCH_FLOATING_TYPES(dtype, "gru_backward_step_cpu",
                             [&] { parallel_rows(params, &gru_backward_rows<scalar_t>); });
}

void rnn_forward_step(const ForwardStep& params, c10::ScalarType dtype) {
  const bool relu = params.cell_kind == CellKind::kRnnRelu;
  AT_DISPATCH_FLOATING_TYPES(dtype, "rnn_forward_step_cpu", [&] {
    parallel_rows(params, relu ? &rnn_forward_rows<scalar_t, true>
                               : &rnn_forward_rows<scalar_t, false>);
  });
}

void rnn_backward_step(const BackwardStep& params, c10::ScalarType dtype) {
  const bool relu = params.cell_kind == CellKind::kRnnRelu;
  AT_DISPATCH_FLOATING_TYPES(dtype, "rnn_backward_step_cpu", [&] {
    parallel_rows(params, relu ? &rnn_backward_rows<scalar_t, true>
                               : &rnn_backward_rows<scalar_t, false>);
  });
}
