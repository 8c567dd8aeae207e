// Every __global__ kernel of csrc/cuda/, launched on the CPU emulator over
// plain arrays and checked against a double-precision reference written out
// here, with no ATen: a program the sanitizers (ASan + UBSan, TSan) can build
// whole. tests/test_cuda_emu_sanitizers.py builds and runs it, and builds
// copies of the kernels with one planted bug each to show every checker
// fails on its bug.
//
// Each buffer is a std::vector of exactly the size the kernel's contract
// gives (csrc/recurrent_step.h, attention_pool_cuda_kernels.cuh), so ASan sees
// one element past it. Prints "FAIL <case>: <why>" per failed check and
// "N passed, M failed"; exits 1 if any failed. Blocks run in the order
// SEQCLS_CUDA_EMU_BLOCK_ORDER names.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/attention_pool_cuda_kernels.cuh"
#include "cuda/cell_cuda.cuh"

namespace sf = seqcls_fast::SEQCLS_CUDA_NS;
using seqcls_fast::BackwardStep;
using seqcls_fast::ForwardStep;
using seqcls_fast::PoolStep;
using seqcls_fast::OnlinePooling;

namespace {

int g_passed = 0, g_failed = 0;
std::mt19937 g_random(1234);

template <typename T>
std::vector<T> random_vector(size_t n) {
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(uniform(g_random));
  return v;
}

// One check: every element of got within tol (relative to max(1, |want|)).
template <typename T>
void expect_close(const std::string& name, const std::vector<T>& got,
                  const std::vector<double>& want) {
  const double tol = sizeof(T) == 4 ? 2e-5 : 1e-12;
  for (size_t i = 0; i < want.size(); ++i) {
    const double error = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (static_cast<double>(got[i]) != want[i] && !(error <= tol * std::fmax(1.0, std::fabs(want[i])))) {
      std::printf("FAIL %s: element %zu is %.9g, expected %.9g\n", name.c_str(), i,
                  static_cast<double>(got[i]), want[i]);
      ++g_failed;
      return;
    }
  }
  ++g_passed;
}

// Runs one case; an emulator check (barrier, shuffle, deadlock) is a failure.
template <typename Case>
void run_case(const std::string& name, const Case& body) {
  try {
    body(name);
  } catch (const seqcls_emu::KernelError& error) {
    std::printf("FAIL %s: emulator: %s\n", name.c_str(), error.what());
    ++g_failed;
  }
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

template <typename T>
std::vector<double> as_double(const std::vector<T>& v) { return {v.begin(), v.end()}; }

// A length-sorted batch: caller row order[j] of sorted row j, and its length.
struct Batch {
  int64_t steps = 6, batch = 4;
  std::vector<int64_t> order{2, 0, 3, 1}, sorted_lengths{6, 5, 3, 1};
};

// One forward step at step s over the rows still running.
template <typename T>
void check_forward_step(const std::string& name, int64_t hidden, int64_t s, bool reverse) {
  const Batch b;
  const int64_t H = hidden, B = b.batch;
  int64_t rows = 0, rows_next = 0;
  for (int64_t len : b.sorted_lengths) rows += len > s, rows_next += len > s + 1;
  auto gates = random_vector<T>(rows * 4 * H);
  auto h_state = random_vector<T>(B * H), c_state = random_vector<T>(B * H);
  auto output = random_vector<T>(b.steps * B * H);
  std::vector<T> cell(rows * H), h_prev_next(rows_next * H);
  std::vector<double> want_gates = as_double(gates), want_h = as_double(h_state),
                      want_c = as_double(c_state), want_out = as_double(output),
                      want_cell(rows * H), want_h_next(rows_next * H);
  for (int64_t j = 0; j < rows; ++j) {
    for (int64_t k = 0; k < H; ++k) {
      double* g = &want_gates[j * 4 * H + k];
      g[0] = sigmoid(g[0]), g[H] = sigmoid(g[H]), g[2 * H] = std::tanh(g[2 * H]);
      g[3 * H] = sigmoid(g[3 * H]);
      const double c = g[H] * want_c[j * H + k] + g[0] * g[2 * H], h = g[3 * H] * std::tanh(c);
      want_c[j * H + k] = want_cell[j * H + k] = c;
      want_h[j * H + k] = h;
      const int64_t t = reverse ? b.sorted_lengths[j] - 1 - s : s;
      want_out[(t * B + b.order[j]) * H + k] = h;
      if (j < rows_next) want_h_next[j * H + k] = h;
    }
  }
  ForwardStep p{};
  p.step = s, p.rows = rows, p.batch = B, p.hidden = H, p.reverse = reverse;
  p.order = b.order.data(), p.sorted_lengths = b.sorted_lengths.data(), p.rows_next = rows_next;
  p.gates = gates.data(), p.h_state = h_state.data(), p.c_state = c_state.data();
  p.output = output.data(), p.cell = cell.data();
  p.h_prev_next = rows_next > 0 ? h_prev_next.data() : nullptr;
  const unsigned blocks = static_cast<unsigned>((rows * H + sf::kStepThreads - 1) / sf::kStepThreads);
  seqcls_emu::launch(sf::lstm_forward_step_kernel<T, T>, blocks, sf::kStepThreads, 0, p);
  expect_close(name + " gates", gates, want_gates);
  expect_close(name + " h_state", h_state, want_h);
  expect_close(name + " c_state", c_state, want_c);
  expect_close(name + " output", output, want_out);
  expect_close(name + " cell", cell, want_cell);
  expect_close(name + " h_prev_next", h_prev_next, want_h_next);
}

template <typename T>
void check_backward_step(const std::string& name, int64_t hidden, int64_t s, bool reverse) {
  const Batch b;
  const int64_t H = hidden, B = b.batch;
  int64_t rows = 0;
  for (int64_t len : b.sorted_lengths) rows += len > s;
  auto gates = random_vector<T>(rows * 4 * H);
  for (size_t i = 0; i < gates.size(); ++i) {  // activated: (0, 1), g in (-1, 1)
    if ((i / H) % 4 != 2) gates[i] = static_cast<T>(0.5 + 0.4 * static_cast<double>(gates[i]));
  }
  const auto cell = random_vector<T>(rows * H), cell_prev = random_vector<T>(rows * H);
  const auto grad_output = random_vector<T>(b.steps * B * H);
  auto grad_h = random_vector<T>(B * H);  // BackwardStep::grad_h_state: the LSTM kernel only reads it
  auto grad_c = random_vector<T>(B * H);
  std::vector<T> grad_gates(rows * 4 * H);
  std::vector<double> want_dg(rows * 4 * H), want_dc = as_double(grad_c);
  for (int64_t j = 0; j < rows; ++j) {
    for (int64_t k = 0; k < H; ++k) {
      const T* g = &gates[j * 4 * H + k];
      const double i = g[0], f = g[H], gg = g[2 * H], o = g[3 * H];
      const int64_t t = reverse ? b.sorted_lengths[j] - 1 - s : s;
      const double dh = grad_h[j * H + k] + grad_output[(t * B + b.order[j]) * H + k];
      const double tc = std::tanh(static_cast<double>(cell[j * H + k]));
      const double dc = want_dc[j * H + k] + dh * o * (1 - tc * tc);
      double* d = &want_dg[j * 4 * H + k];
      d[0] = dc * gg * i * (1 - i), d[H] = dc * cell_prev[j * H + k] * f * (1 - f);
      d[2 * H] = dc * i * (1 - gg * gg), d[3 * H] = dh * tc * o * (1 - o);
      want_dc[j * H + k] = dc * f;
    }
  }
  BackwardStep p{};
  p.step = s, p.rows = rows, p.batch = B, p.hidden = H, p.reverse = reverse;
  p.order = b.order.data(), p.sorted_lengths = b.sorted_lengths.data();
  p.gates = gates.data(), p.cell = cell.data(), p.cell_prev = cell_prev.data();
  p.grad_output = grad_output.data(), p.grad_output_stride_t = B * H, p.grad_output_stride_b = H;
  p.grad_h_state = grad_h.data(), p.grad_c_state = grad_c.data(), p.grad_gates = grad_gates.data();
  const unsigned blocks = static_cast<unsigned>((rows * H + sf::kStepThreads - 1) / sf::kStepThreads);
  seqcls_emu::launch(sf::lstm_backward_step_kernel<T, T>, blocks, sf::kStepThreads, 0, p);
  expect_close(name + " grad_gates", grad_gates, want_dg);
  expect_close(name + " grad_c_state", grad_c, want_dc);
}

// One GRU forward step at step s: gates [rows, 3H] (x part), recurrent
// [rows, 3H] (h W_hh^T + b_hh), h_state in/out, the kept h_n.
template <typename T>
void check_gru_forward_step(const std::string& name, int64_t hidden, int64_t s, bool reverse) {
  const Batch b;
  const int64_t H = hidden, B = b.batch;
  int64_t rows = 0, rows_next = 0;
  for (int64_t len : b.sorted_lengths) rows += len > s, rows_next += len > s + 1;
  auto gates = random_vector<T>(rows * 3 * H);
  const auto recurrent = random_vector<T>(rows * 3 * H);
  auto h_state = random_vector<T>(B * H);
  auto output = random_vector<T>(b.steps * B * H);
  std::vector<T> kept(rows * H), h_prev_next(rows_next * H);
  std::vector<double> want_gates = as_double(gates), want_h = as_double(h_state),
                      want_out = as_double(output), want_kept(rows * H),
                      want_h_next(rows_next * H);
  for (int64_t j = 0; j < rows; ++j) {
    for (int64_t k = 0; k < H; ++k) {
      double* g = &want_gates[j * 3 * H + k];
      const T* rec = &recurrent[j * 3 * H + k];
      g[0] = sigmoid(g[0] + rec[0]), g[H] = sigmoid(g[H] + rec[H]);
      g[2 * H] = std::tanh(g[2 * H] + g[0] * rec[2 * H]);
      const double h = g[2 * H] + g[H] * (want_h[j * H + k] - g[2 * H]);
      want_h[j * H + k] = h;
      want_kept[j * H + k] = rec[2 * H];
      const int64_t t = reverse ? b.sorted_lengths[j] - 1 - s : s;
      want_out[(t * B + b.order[j]) * H + k] = h;
      if (j < rows_next) want_h_next[j * H + k] = h;
    }
  }
  ForwardStep p{};
  p.cell_kind = seqcls_fast::CellKind::kGru;
  p.step = s, p.rows = rows, p.batch = B, p.hidden = H, p.reverse = reverse;
  p.order = b.order.data(), p.sorted_lengths = b.sorted_lengths.data(), p.rows_next = rows_next;
  p.gates = gates.data(), p.recurrent = recurrent.data(), p.h_state = h_state.data();
  p.output = output.data(), p.cell = kept.data();
  p.h_prev_next = rows_next > 0 ? h_prev_next.data() : nullptr;
  const unsigned blocks = static_cast<unsigned>((rows * H + sf::kStepThreads - 1) / sf::kStepThreads);
  seqcls_emu::launch(sf::gru_forward_step_kernel<T, T>, blocks, sf::kStepThreads, 0, p);
  expect_close(name + " gates", gates, want_gates);
  expect_close(name + " h_state", h_state, want_h);
  expect_close(name + " output", output, want_out);
  expect_close(name + " kept", kept, want_kept);
  expect_close(name + " h_prev_next", h_prev_next, want_h_next);
}

// One GRU backward step: the input and recurrent parts of the gate gradients,
// and the direct part of dL/dh_{s-1} written over grad_h_state.
template <typename T>
void check_gru_backward_step(const std::string& name, int64_t hidden, int64_t s, bool reverse) {
  const Batch b;
  const int64_t H = hidden, B = b.batch;
  int64_t rows = 0;
  for (int64_t len : b.sorted_lengths) rows += len > s;
  auto gates = random_vector<T>(rows * 3 * H);
  for (size_t i = 0; i < gates.size(); ++i) {  // activated: r, z in (0, 1), n in (-1, 1)
    if ((i / H) % 3 != 2) gates[i] = static_cast<T>(0.5 + 0.4 * static_cast<double>(gates[i]));
  }
  const auto kept = random_vector<T>(rows * H), h_prev = random_vector<T>(rows * H);
  const auto grad_output = random_vector<T>(b.steps * B * H);
  auto grad_h = random_vector<T>(B * H);
  std::vector<T> grad_gates(rows * 3 * H), grad_recurrent(rows * 3 * H);
  std::vector<double> want_dg(rows * 3 * H), want_drec(rows * 3 * H), want_dh = as_double(grad_h);
  for (int64_t j = 0; j < rows; ++j) {
    for (int64_t k = 0; k < H; ++k) {
      const T* g = &gates[j * 3 * H + k];
      const double r = g[0], z = g[H], n = g[2 * H], h_n = kept[j * H + k];
      const int64_t t = reverse ? b.sorted_lengths[j] - 1 - s : s;
      const double dh = grad_h[j * H + k] + grad_output[(t * B + b.order[j]) * H + k];
      const double d_xn = dh * (1 - z) * (1 - n * n);
      const double d_r = d_xn * h_n * r * (1 - r), d_z = dh * (h_prev[j * H + k] - n) * z * (1 - z);
      double* dg = &want_dg[j * 3 * H + k];
      double* drec = &want_drec[j * 3 * H + k];
      dg[0] = drec[0] = d_r, dg[H] = drec[H] = d_z, dg[2 * H] = d_xn, drec[2 * H] = d_xn * r;
      want_dh[j * H + k] = dh * z;
    }
  }
  BackwardStep p{};
  p.cell_kind = seqcls_fast::CellKind::kGru;
  p.step = s, p.rows = rows, p.batch = B, p.hidden = H, p.reverse = reverse;
  p.order = b.order.data(), p.sorted_lengths = b.sorted_lengths.data();
  p.gates = gates.data(), p.cell = kept.data(), p.h_prev = h_prev.data();
  p.grad_output = grad_output.data(), p.grad_output_stride_t = B * H, p.grad_output_stride_b = H;
  p.grad_h_state = grad_h.data(), p.grad_gates = grad_gates.data();
  p.grad_recurrent = grad_recurrent.data();
  const unsigned blocks = static_cast<unsigned>((rows * H + sf::kStepThreads - 1) / sf::kStepThreads);
  seqcls_emu::launch(sf::gru_backward_step_kernel<T, T>, blocks, sf::kStepThreads, 0, p);
  expect_close(name + " grad_gates", grad_gates, want_dg);
  expect_close(name + " grad_recurrent", grad_recurrent, want_drec);
  expect_close(name + " grad_h_state", grad_h, want_dh);
}

// One online-pooling step over `rows` rows of a running state.
template <typename T>
void check_pool_step(const std::string& name, OnlinePooling pooling, int64_t rows, int64_t H,
                     int64_t A) {
  const int64_t B = rows + 1;
  const auto h = random_vector<T>(rows * H), keys = random_vector<T>(rows * A);
  const auto query = random_vector<T>(A);
  auto max = random_vector<T>(B), denom = random_vector<T>(B), sum = random_vector<T>(B * H);
  for (T& d : denom) d = static_cast<T>(1.5 + d);
  max[0] = -std::numeric_limits<T>::infinity(), denom[0] = 0;  // an empty state
  std::vector<double> want_max = as_double(max), want_denom = as_double(denom),
                      want_sum = as_double(sum);
  for (int64_t j = 0; j < rows; ++j) {
    double keep = 1, weight = 1;
    if (pooling == OnlinePooling::kAttention) {
      double score = 0;
      for (int64_t a = 0; a < A; ++a) score += static_cast<double>(keys[j * A + a]) * query[a];
      const double merged = std::fmax(score, want_max[j]);
      keep = std::exp(want_max[j] - merged), weight = std::exp(score - merged);
      want_denom[j] = want_denom[j] * keep + weight;
      want_max[j] = merged;
    }
    for (int64_t k = 0; k < H; ++k) want_sum[j * H + k] = want_sum[j * H + k] * keep + weight * h[j * H + k];
  }
  // Launched for all B rows, as for a plan expanded on the device: the
  // step's active count (rows) keeps row `rows` out.
  const int64_t active[1] = {rows}, offset[2] = {0, rows};
  PoolStep p{};
  p.rows = B, p.step = 0, p.active = active, p.offset = offset;
  p.hidden = H, p.key_size = A, p.pooling = pooling;
  p.h = h.data(), p.keys = keys.data(), p.query = query.data();
  p.max = max.data(), p.denom = denom.data(), p.sum = sum.data();
  seqcls_emu::launch(sf::lstm_pool_step_kernel<T, T>, static_cast<unsigned>(B),
                     sf::kPoolStepThreads, 0, p);
  expect_close(name + " max", max, want_max);
  expect_close(name + " denom", denom, want_denom);
  expect_close(name + " sum", sum, want_sum);
}

void check_zero_padding(const std::string& name, int64_t H) {
  const Batch b;
  const int64_t T = b.steps, B = b.batch;
  std::vector<uint32_t> output(T * B * H, 7u);
  std::vector<double> want(T * B * H, 7.0);
  for (int64_t j = 0; j < B; ++j) {
    for (int64_t t = b.sorted_lengths[j]; t < T; ++t) {
      for (int64_t k = 0; k < H; ++k) want[(t * B + b.order[j]) * H + k] = 0;
    }
  }
  const int threads = static_cast<int>(std::min<int64_t>(256, (H + 31) / 32 * 32));
  seqcls_emu::launch(sf::zero_output_padding_kernel<uint32_t>, static_cast<unsigned>(B), threads, 0,
                     output.data(), b.order.data(), b.sorted_lengths.data(), T, B, H);
  expect_close(name, output, want);
}

// values [B, S, D], keys [B, S, A] (or the values), query [A], lengths [B],
// contiguous; the reference softmax weights [B, S].
template <typename T>
struct PoolCase {
  int64_t B = 3, S = 13, D = 70, A = 37;
  bool keys_are_values;
  std::vector<int64_t> lengths{13, 1, 6};
  std::vector<T> values, keys, query;
  std::vector<double> weights;

  explicit PoolCase(bool same) : keys_are_values(same) {
    if (same) A = D;
    values = random_vector<T>(B * S * D);
    keys = same ? values : random_vector<T>(B * S * A);
    query = random_vector<T>(A);
    weights.assign(B * S, 0.0);
    for (int64_t b = 0; b < B; ++b) {
      double most = -INFINITY, total = 0;
      std::vector<double> score(lengths[b]);
      for (int64_t t = 0; t < lengths[b]; ++t) {
        for (int64_t a = 0; a < A; ++a) score[t] += static_cast<double>(keys[(b * S + t) * A + a]) * query[a];
        most = std::fmax(most, score[t]);
      }
      for (double& s : score) total += s = std::exp(s - most);
      for (int64_t t = 0; t < lengths[b]; ++t) weights[b * S + t] = score[t] / total;
    }
  }
  seqcls_fast::Strided3<T> strided(const std::vector<T>& v, int64_t features) const {
    return {v.data(), S * features, features, 1};
  }
};

template <typename T>
void check_attention_forward(const std::string& name, bool keys_are_values) {
  const PoolCase<T> c(keys_are_values);
  std::vector<T> pooled(c.B * c.D), weights(c.B * c.S);
  std::vector<T> workspace(c.B * c.S);
  std::vector<double> want_pooled(c.B * c.D);
  for (int64_t b = 0; b < c.B; ++b) {
    for (int64_t t = 0; t < c.lengths[b]; ++t) {
      for (int64_t d = 0; d < c.D; ++d) {
        want_pooled[b * c.D + d] += c.weights[b * c.S + t] * c.values[(b * c.S + t) * c.D + d];
      }
    }
  }
  sf::PoolForwardParams<T, T> p{};
  p.steps = static_cast<int32_t>(c.S), p.features = static_cast<int32_t>(c.D);
  p.key_size = static_cast<int32_t>(c.A), p.lengths = c.lengths.data();
  p.values = c.strided(c.values, c.D), p.keys = c.strided(c.keys, c.A);
  p.query = c.query.data(), p.query_stride = 1, p.workspace = workspace.data();
  p.pooled = pooled.data(), p.weights = weights.data();
  seqcls_emu::launch(sf::attention_pool_forward_kernel<T, T>, static_cast<unsigned>(c.B),
                     sf::kPoolThreads, 0, p);
  expect_close(name + " pooled", pooled, want_pooled);
  expect_close(name + " weights", weights, c.weights);
}

template <typename T>
void check_attention_backward(const std::string& name, bool keys_are_values) {
  const PoolCase<T> c(keys_are_values);
  const int64_t B = c.B, S = c.S, D = c.D, A = c.A;
  const auto grad_pooled = random_vector<T>(B * D), grad_weights = random_vector<T>(B * S);
  std::vector<T> weights(c.weights.begin(), c.weights.end());
  std::vector<T> workspace(B * S), grad_values(B * S * D), grad_query(A), query_rows(B * A);
  std::vector<T> grad_keys(keys_are_values ? 0 : B * S * A);
  std::vector<double> want_gv(B * S * D), want_gk(grad_keys.size()), want_gq(A);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> dw(c.lengths[b]);
    double weighted = 0;
    for (int64_t t = 0; t < c.lengths[b]; ++t) {
      dw[t] = grad_weights[b * S + t];
      for (int64_t d = 0; d < D; ++d) dw[t] += static_cast<double>(grad_pooled[b * D + d]) * c.values[(b * S + t) * D + d];
      weighted += static_cast<double>(weights[b * S + t]) * dw[t];
    }
    for (int64_t t = 0; t < c.lengths[b]; ++t) {
      const double w = weights[b * S + t], ds = w * (dw[t] - weighted);
      for (int64_t d = 0; d < D; ++d) {
        want_gv[(b * S + t) * D + d] = w * grad_pooled[b * D + d] + (keys_are_values ? ds * c.query[d] : 0.0);
      }
      for (int64_t a = 0; a < A; ++a) {
        if (!keys_are_values) want_gk[(b * S + t) * A + a] = ds * c.query[a];
        want_gq[a] += ds * c.keys[(b * S + t) * A + a];
      }
    }
  }
  sf::PoolBackwardParams<T, T> p{};
  p.steps = static_cast<int32_t>(S), p.features = static_cast<int32_t>(D);
  p.key_size = static_cast<int32_t>(A), p.lengths = c.lengths.data();
  p.values = c.strided(c.values, D), p.keys = c.strided(c.keys, A);
  p.keys_are_values = keys_are_values, p.query = c.query.data(), p.query_stride = 1;
  p.grad_pooled = grad_pooled.data(), p.grad_weights = grad_weights.data();
  p.weights = weights.data(), p.workspace = workspace.data(), p.grad_values = grad_values.data();
  p.grad_keys = keys_are_values ? nullptr : grad_keys.data(), p.grad_query_rows = query_rows.data();
  seqcls_emu::launch(sf::attention_pool_backward_kernel<T, T>, static_cast<unsigned>(B),
                     sf::kPoolThreads, 0, p);
  seqcls_emu::launch(sf::sum_rows_kernel<T, T>,
                     static_cast<unsigned>((A + sf::kReduceThreads - 1) / sf::kReduceThreads),
                     sf::kReduceThreads, 0, static_cast<const T*>(query_rows.data()),
                     grad_query.data(), B, A);
  expect_close(name + " grad_values", grad_values, want_gv);
  expect_close(name + " grad_keys", grad_keys, want_gk);
  expect_close(name + " grad_query", grad_query, want_gq);
}

template <typename T>
void check_all(const char* dtype) {
  const std::string tag = std::string(" ") + dtype;
  // H = 5: one partial block; H = 100: rows * H > 256, several blocks.
  for (int64_t H : {5, 100}) {
    for (bool reverse : {false, true}) {
      const std::string shape = " H" + std::to_string(H) + (reverse ? " reverse" : "");
      run_case("forward step" + shape + tag, [&](const std::string& n) { check_forward_step<T>(n, H, 2, reverse); });
      run_case("backward step" + shape + tag, [&](const std::string& n) { check_backward_step<T>(n, H, 2, reverse); });
      run_case("gru forward step" + shape + tag, [&](const std::string& n) { check_gru_forward_step<T>(n, H, 2, reverse); });
      run_case("gru backward step" + shape + tag, [&](const std::string& n) { check_gru_backward_step<T>(n, H, 2, reverse); });
    }
  }
  run_case("pool step attention" + tag, [&](const std::string& n) { check_pool_step<T>(n, OnlinePooling::kAttention, 3, 70, 37); });
  run_case("pool step mean" + tag, [&](const std::string& n) { check_pool_step<T>(n, OnlinePooling::kMean, 3, 150, 1); });
  for (bool same : {false, true}) {
    const std::string keys = same ? " keys=values" : " keys";
    run_case("attention forward" + keys + tag, [&](const std::string& n) { check_attention_forward<T>(n, same); });
    run_case("attention backward" + keys + tag, [&](const std::string& n) { check_attention_backward<T>(n, same); });
  }
}

// The emulator's own promises that no kernel of csrc/cuda/ exercises yet:
// dynamic shared memory poisoned before every block, and a loud error for a
// partial-mask shuffle.
__global__ void read_then_dirty_dynamic_shared(uint32_t* first_word) {
  auto* shared = static_cast<uint32_t*>(seqcls_emu::dynamic_shared_memory());
  __syncthreads();
  if (threadIdx.x == 0) first_word[blockIdx.x] = shared[0];
  __syncthreads();
  shared[threadIdx.x] = 0;  // the next block must not see this
}

__global__ void partial_mask_shuffle(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.0f, 1);
}

// A cooperative grid: every block runs at once and meets the others at
// grid_sync. Round r: each thread writes its slot of buffer r % 2, then
// reads the same slot of the next block (r + 1 blocks on) after the grid
// barrier; each block also keeps its own index in its dynamic shared memory
// across the barriers (per-block, not shared by the concurrent blocks).
__global__ void cooperative_rounds(int rounds, uint32_t* buffers, uint32_t* out) {
  using seqcls_fast::cuda_emu::grid_sync;
  auto* shared = static_cast<uint32_t*>(seqcls_emu::dynamic_shared_memory());
  const uint32_t blocks = gridDim.x, threads = blockDim.x, b = blockIdx.x, t = threadIdx.x;
  if (t == 0) shared[0] = b;
  __syncthreads();
  for (int r = 0; r < rounds; ++r) {
    uint32_t* buffer = buffers + (r % 2) * blocks * threads;
    buffer[b * threads + t] = 1000u * r + 100u * b + t + shared[0] - b;  // shared[0] == b
    grid_sync();
    const uint32_t from = (b + r + 1) % blocks;
    out[(r * blocks + b) * threads + t] = buffer[from * threads + t];
    grid_sync();  // nobody writes buffer r % 2 again before everyone read it
  }
}

__global__ void grid_sync_without_cooperative_launch(float*) {
  seqcls_fast::cuda_emu::grid_sync();
}

__global__ void block_returns_before_grid_sync(float*) {
  if (blockIdx.x == 1) return;
  seqcls_fast::cuda_emu::grid_sync();
}

// `launch` is expected to throw a KernelError whose message contains `words`.
template <typename Launch>
void expect_kernel_error(const std::string& name, const Launch& launch, const std::string& words) {
  try {
    launch();
    std::printf("FAIL %s: ran without an error\n", name.c_str());
    ++g_failed;
  } catch (const seqcls_emu::KernelError& error) {
    const bool named = std::string(error.what()).find(words) != std::string::npos;
    if (!named) std::printf("FAIL %s: %s\n", name.c_str(), error.what());
    ++(named ? g_passed : g_failed);
  }
}

void check_cooperative() {
  run_case("emulator: cooperative grid, 5 rounds of grid_sync", [](const std::string& n) {
    const int blocks = 4, threads = 48, rounds = 5;
    std::vector<uint32_t> buffers(2 * blocks * threads, 0), out(rounds * blocks * threads, 0);
    seqcls_emu::launch_cooperative(cooperative_rounds, blocks, threads, sizeof(uint32_t), rounds,
                                   buffers.data(), out.data());
    std::vector<double> want(out.size());
    for (int r = 0; r < rounds; ++r) {
      for (int b = 0; b < blocks; ++b) {
        for (int t = 0; t < threads; ++t) {
          want[(r * blocks + b) * threads + t] = 1000.0 * r + 100.0 * ((b + r + 1) % blocks) + t;
        }
      }
    }
    expect_close(n, out, want);
  });
  std::vector<float> unused(1);
  expect_kernel_error("emulator: grid_sync outside a cooperative launch", [&] {
    seqcls_emu::launch(grid_sync_without_cooperative_launch, 2, 32, 0, unused.data());
  }, "not launched cooperatively");
  expect_kernel_error("emulator: a block returns while the grid waits", [&] {
    seqcls_emu::launch_cooperative(block_returns_before_grid_sync, 3, 32, 0, unused.data());
  }, "grid_sync");
}

void check_emulator() {
  run_case("emulator: dynamic shared memory poisoned per block", [](const std::string& n) {
    std::vector<uint32_t> first_word(3, 0);
    seqcls_emu::launch(read_then_dirty_dynamic_shared, 3, 64, 64 * sizeof(uint32_t),
                       first_word.data());
    expect_close(n, first_word, std::vector<double>(3, 4294967295.0));
  });
  std::vector<float> out(32);
  try {
    seqcls_emu::launch(partial_mask_shuffle, 1, 32, 0, out.data());
    std::printf("FAIL emulator: a partial-mask shuffle ran\n");
    ++g_failed;
  } catch (const seqcls_emu::KernelError& error) {
    const bool named = std::string(error.what()).find("mask 0x0000ffff") != std::string::npos;
    if (!named) std::printf("FAIL emulator: partial-mask shuffle: %s\n", error.what());
    ++(named ? g_passed : g_failed);
  }
}

}  // namespace

int main() {
  check_emulator();
  check_cooperative();
  check_all<float>("float32");
  check_all<double>("float64");
  run_case("zero padding H40", [](const std::string& n) { check_zero_padding(n, 40); });
  run_case("zero padding H300", [](const std::string& n) { check_zero_padding(n, 300); });
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
