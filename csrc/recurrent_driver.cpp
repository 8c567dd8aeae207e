// The recurrent layer driver (see recurrent_driver.h): checks, plan, GEMMs and
// the forward and backward step loops, once for every backend and cell; the
// LSTM and GRU operators at the end of each part run it with kLstmCell and
// kGruCell.
#include "recurrent_driver.h"

#include "buffers.h"
#include "length_plan.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace seqcls_fast {
void RecurrentBackend::forward_recurrence(const ForwardRecurrence& /*r*/,
                                     at::ScalarType /*dtype*/) const {
  TORCH_CHECK(false, "seqcls_fast: forward_recurrence called on a backend without one");
}

void RecurrentBackend::backward_recurrence(const BackwardRecurrence& /*r*/,
                                      at::ScalarType /*dtype*/) const {
  TORCH_CHECK(false, "seqcls_fast: backward_recurrence called on a backend without one");
}

namespace {

using at::Tensor;
using c10::optional;

// First step of each chunk of consecutive steps holding about `rows` packed
// rows (at least one step each), then plan.steps.
std::vector<int64_t> chunk_steps(const LengthPlan& plan, int64_t rows) {
  std::vector<int64_t> starts{0};
  for (int64_t s = 1; s < plan.steps; ++s) {
    if (plan.offset[s + 1] - plan.offset[starts.back()] > rows) starts.push_back(s);
  }
  starts.push_back(plan.steps);
  return starts;
}

// Rows of the checkpointed cell states for chunk starts `starts` (from
// chunk_steps; empty when N = 0): B per chunk.
int64_t checkpoint_rows(const std::vector<int64_t>& starts, int64_t batch) {
  return starts.empty() ? 0 : static_cast<int64_t>(starts.size() - 1) * batch;
}

int64_t largest_chunk(const LengthPlan& plan, const std::vector<int64_t>& starts) {
  int64_t most = 0;
  for (size_t c = 0; c + 1 < starts.size(); ++c) {
    most = std::max(most, plan.offset[starts[c + 1]] - plan.offset[starts[c]]);
  }
  return most;
}

// The fields every step of a pass shares (step and rows are set per step).
StepRows step_rows(const CellDef& cell_def, const DevicePlan& dev, int64_t batch, int64_t hidden,
                   bool reverse) {
  StepRows rows{};
  rows.cell_kind = cell_def.kind;
  rows.batch = batch;
  rows.hidden = hidden;
  rows.reverse = reverse;
  rows.order = dev.order.defined() ? dev.order.const_data_ptr<int64_t>() : nullptr;
  rows.sorted_lengths = dev.sorted_lengths.const_data_ptr<int64_t>();
  return rows;
}

// The fields of a persistent recurrence that every segment of a pass shares:
// the pass's step fields and the plan's rows.
RecurrenceRows recurrence_rows(const StepRows& step, const LengthPlan& plan,
                               const DevicePlan& dev, const Tensor& w_hh_packed) {
  RecurrenceRows r{};
  static_cast<StepRows&>(r) = step;
  r.active = plan.active.data();
  r.offset = plan.offset.data();
  r.active_device = dev.active.const_data_ptr<int64_t>();
  r.offset_device = dev.offset.const_data_ptr<int64_t>();
  r.w_hh_packed = w_hh_packed.defined() ? w_hh_packed.const_data_ptr() : nullptr;
  return r;
}

// The forward's, with the states and output its step parameters point to.
ForwardRecurrence forward_recurrence_rows(const ForwardStep& step, const LengthPlan& plan,
                                          const DevicePlan& dev, const Tensor& w_hh_packed) {
  ForwardRecurrence r{};
  static_cast<RecurrenceRows&>(r) = recurrence_rows(step, plan, dev, w_hh_packed);
  r.steps = plan.steps;
  r.h_state = step.h_state;
  r.c_state = step.c_state;
  r.output = step.output;
  return r;
}

// The backward's, with its upstream gradients; grad_h_state is written too
// (after each chunk: dG W_hh for the chunk before).
BackwardRecurrence backward_recurrence_rows(const BackwardStep& step, const LengthPlan& plan,
                                            const DevicePlan& dev, const Tensor& w_hh_packed,
                                            Tensor& grad_h_state) {
  BackwardRecurrence r{};
  static_cast<RecurrenceRows&>(r) = recurrence_rows(step, plan, dev, w_hh_packed);
  r.grad_output = step.grad_output;
  r.grad_output_stride_t = step.grad_output_stride_t;
  r.grad_output_stride_b = step.grad_output_stride_b;
  r.grad_h_state = grad_h_state.data_ptr();
  r.grad_c_state = step.grad_c_state;
  return r;
}

// The bias added to every step's input projection: b_ih + b_hh when the
// whole recurrent product joins the projection, else b_ih (b_hh then goes
// with the recurrent product). One function, so the low-memory rebuild adds
// bitwise the forward's bias.
optional<Tensor> projection_bias(const CellDef& cell_def, const optional<Tensor>& b_ih,
                                 const optional<Tensor>& b_hh) {
  if (!b_ih.has_value() || cell_def.recurrent_apart) return b_ih;
  return *b_ih + *b_hh;
}

// W_hh packed for the backend's persistent recurrence, or undefined (a GEMM
// per step).
Tensor packed_recurrent_weights(const RecurrentBackend& backend, const CellDef& cell_def,
                                const Tensor& w_hh, bool backward = false) {
  return backward ? backend.pack_recurrent_weights_backward(cell_def, w_hh)
                  : backend.pack_recurrent_weights(cell_def, w_hh);
}

// A persistent kernel's b_hh (ForwardRecurrence::recurrent_bias): its
// contiguous values for a cell that keeps the recurrent product apart, else
// undefined (b_hh is then in the projection's bias, or there is none).
Tensor recurrent_bias_of(const CellDef& cell_def, const optional<Tensor>& b_hh) {
  return cell_def.recurrent_apart && b_hh.has_value() ? b_hh->contiguous() : Tensor();
}

const void* data_or_null(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

// out = rows weight_t (+ bias when defined), into a buffer the driver owns:
// the input projection (forward and low-memory rebuild) and attention keys.
void linear_out(Tensor& out, const Tensor& rows, const Tensor& weight_t, const Tensor& bias) {
  if (bias.defined()) {
    at::addmm_out(out, bias, rows, weight_t);
  } else {
    at::mm_out(out, rows, weight_t);
  }
}

// Address of row `row` of a contiguous 2-D tensor: a step's slice, without a
// Tensor per step.
void* row_ptr(const Tensor& t, int64_t row) {
  return static_cast<char*>(t.data_ptr()) + row * t.stride(0) * t.element_size();
}

// A saved cell tensor [rows, H]: the state dtype of x (float32 for
// half/bfloat16 x), on x's device.
void check_cell(const Tensor& cell, const Tensor& x, int64_t hidden) {
  SEQCLS_CHECK_VALUE(cell.dim() == 2 && cell.size(1) == hidden, "cell must have shape [rows, H] ",
                     "with H = ", hidden, ", got ", cell.sizes());
  const at::ScalarType state = at::toOpMathType(x.scalar_type());
  SEQCLS_CHECK_TYPE(cell.scalar_type() == state, "cell must have dtype ", state,
                    " (the forward's cell state for x of dtype ", x.scalar_type(), "), got ",
                    cell.scalar_type());
  SEQCLS_CHECK_VALUE(cell.device() == x.device(), "cell must be on the device of x (",
                     x.device(), "), got ", cell.device());
}

// The saved activations lstm_layer_backward / gru_layer_backward read,
// checked against the contract in ops.cpp: gates and h_prev in x's dtype,
// cell in the state dtype, N = sum(lengths) rows, all on x's device.
void check_saved(const CellDef& cell_def, const Tensor& gates, const Tensor& cell,
                 const Tensor& h_prev, const Tensor& x, int64_t hidden) {
  SEQCLS_CHECK_VALUE(gates.dim() == 2, "gates must have shape [N, ", cell_def.gates, "H], got ",
                     gates.sizes());
  const int64_t rows = gates.size(0);
  check_shape(gates, {rows, cell_def.gates * hidden}, "gates");
  check_shape(h_prev, {rows, hidden}, "h_prev");
  check_same_kind(gates, "gates", x, "x");
  check_same_kind(h_prev, "h_prev", x, "x");
  if (!cell_def.keeps_value) return;  // the RNN's op takes no cell
  check_shape(cell, {rows, hidden}, "cell");
  check_cell(cell, x, hidden);
}

// What a forward keeps for its backward.
enum class Keep {
  kNothing,      // inference
  kEveryStep,    // gates, cell and h_prev of every packed row (*_layer_backward)
  kCheckpoints,  // the sorted cell state [B, H] at the start of every backward chunk, for
                 // a cell that has one (*_layer_backward_recompute rebuilds the rest)
};

// The forward recurrence both forward operators run, on sorted states
// (h_state, c_state updated in place). `output` undefined: not written;
// `gates` [N, G] holds every packed row's gates with Keep::kEveryStep (else a
// chunk of scratch is used); `cell` (a cell with a cell state) [N, H] or, with
// kCheckpoints, [C * B, H] for the C chunks of `checkpoint_steps`; `pool`
// non-null: online pooling after each step.
struct ForwardPass {
  const CellDef& cell_def;
  const Tensor& x;
  const LengthPlan& plan;
  const DevicePlan& dev;
  bool has_h0, reverse;
  Keep keep;
  std::vector<int64_t> checkpoint_steps;  // kCheckpoints: the backward's chunk starts
  Tensor output, gates, cell, h_prev;
};

// Packed row `row` of the per-unit values a forward keeps for its backward
// (ForwardStep::cell), or nullptr (inference, low memory, a cell that keeps
// none).
void* kept_cell_row(const ForwardPass& f, int64_t row) {
  return f.keep == Keep::kEveryStep && f.cell_def.keeps_value ? row_ptr(f.cell, row) : nullptr;
}

struct PoolPass {
  OnlinePooling pooling;
  Tensor query, key_weight_t, key_bias;  // key_weight_t [H, A] (undefined: keys are h)
  Tensor max, denom, sum;                // sorted state, updated in place
};

// One forward's step machinery, shared by its segments: the per-step and
// persistent parameters, and the online pooling's.
struct ForwardRunner {
  const RecurrentBackend& backend;
  ForwardPass& f;
  at::ScalarType dtype;
  Tensor h_state, w_hh_t, w_hh_packed;  // w_hh_packed undefined: a GEMM per step
  Tensor recurrent, recurrent_bias;     // recurrent_apart: [B, G] a step's h W_hh^T + b_hh
  ForwardStep step{};
  ForwardRecurrence fused{};
  const PoolPass* pool = nullptr;  // set when pooling (attention or mean)
  Tensor keys;     // [max(B, rows), A] tanh(h W^T + b) of a step's or segment's rows; or
                   //   undefined (the keys are h)
  Tensor h_chunk;  // [rows, H] a persistent segment's h_s, to pool
  PoolStep pool_step{};
};

// The online pooling's parameters and buffers, for segments of up to
// `most_rows` rows.
void prepare_pooling(ForwardRunner& run, const PoolPass& pool, int64_t batch, int64_t most_rows) {
  const auto opts = run.f.x.options();
  const int64_t H = run.h_state.size(1);
  run.pool = &pool;
  if (pool.key_weight_t.defined()) {
    run.keys = at::empty({std::max(batch, most_rows), pool.key_weight_t.size(1)}, opts);
  }
  if (run.w_hh_packed.defined()) run.h_chunk = at::empty({most_rows, H}, opts);
  run.fused.h_packed = run.h_chunk.defined() ? run.h_chunk.data_ptr() : nullptr;
  PoolStep& q = run.pool_step;
  q.hidden = H;
  q.pooling = pool.pooling;
  q.key_size = run.keys.defined() ? run.keys.size(1) : H;
  q.query = pool.query.defined() ? pool.query.const_data_ptr() : nullptr;
  q.max = pool.max.data_ptr();
  q.denom = pool.denom.data_ptr();
  q.sum = pool.sum.data_ptr();
  q.active = run.f.dev.active.const_data_ptr<int64_t>();
  q.offset = run.f.dev.offset.const_data_ptr<int64_t>();
}

// The attention keys of h_rows, when they are not h: one GEMM.
void compute_keys(ForwardRunner& run, const Tensor& h_rows) {
  if (!run.keys.defined()) return;
  Tensor keys_rows = run.keys.narrow(0, 0, h_rows.size(0));
  linear_out(keys_rows, h_rows, run.pool->key_weight_t, run.pool->key_bias);
  keys_rows.tanh_();
}

// Pools one step's h_s: `rows` rows from row `row` of h_rows (and of the
// keys). Pointers, not a Tensor per step: at B = 1 two narrows a step cost
// as much as the step's recurrence.
void pool_rows(ForwardRunner& run, const Tensor& h_rows, int64_t row, int64_t s, int64_t rows) {
  PoolStep& q = run.pool_step;
  q.rows = rows;
  q.step = s;
  q.h = row_ptr(h_rows, row);
  q.keys = run.keys.defined() ? row_ptr(run.keys, row) : q.h;
  run.backend.pool_step(q, run.dtype);
}

// Pools steps [seg, seg_end) of a persistent segment from its packed h_rows
// in one backend call, where the backend has one.
bool pool_segment(ForwardRunner& run, const Tensor& h_rows, int64_t seg, int64_t seg_end) {
  PoolStep q = run.pool_step;
  q.rows = run.f.plan.active[seg];
  q.step = seg;
  q.h = h_rows.const_data_ptr();
  q.keys = run.keys.defined() ? run.keys.const_data_ptr() : q.h;
  return run.backend.pool_segment(q, seg_end, run.dtype);
}

// The recurrent product h_{s-1} W_hh^T of step s's rows, added to its gates'
// pre-activations, or, for a cell that keeps it apart, with b_hh in its own
// buffer (run.step.recurrent). No product when h_{s-1} is zero (step 0
// without h0) and nothing keeps it apart.
void add_recurrent_product(ForwardRunner& run, Tensor& gates_step, int64_t s, int64_t rows) {
  const Tensor h_rows = run.h_state.narrow(0, 0, rows);
  if (run.recurrent.defined()) {
    Tensor recurrent_rows = run.recurrent.narrow(0, 0, rows);
    linear_out(recurrent_rows, h_rows, run.w_hh_t, run.recurrent_bias);
    run.step.recurrent = recurrent_rows.const_data_ptr();
  } else if (s > 0 || run.f.has_h0) {
    gates_step.addmm_(h_rows, run.w_hh_t);
  }
}

// Steps [seg, seg_end) of the recurrence on the length-sorted active prefix,
// their pre-activations in chunk_gates (from packed row chunk_begin): one
// persistent kernel where the backend has one, else per step one GEMM
// accumulating h_{s-1} W_hh^T into the step's rows, then the fused cell.
void run_segment(ForwardRunner& run, const Tensor& chunk_gates, int64_t chunk_begin, int64_t seg,
                 int64_t seg_end) {
  ForwardPass& f = run.f;
  const LengthPlan& plan = f.plan;
  const bool every_step = f.keep == Keep::kEveryStep;
  if (run.w_hh_packed.defined()) {
    ForwardRecurrence& r = run.fused;
    r.step = seg;
    r.end_step = seg_end;
    r.row0 = plan.offset[seg];
    r.gates = row_ptr(chunk_gates, plan.offset[seg] - chunk_begin);
    r.product_at_first = seg > 0 || f.has_h0;
    r.cell = kept_cell_row(f, plan.offset[seg]);
    r.h_prev = every_step ? row_ptr(f.h_prev, plan.offset[seg]) : nullptr;
    run.backend.forward_recurrence(r, run.dtype);
    if (run.pool == nullptr) return;
    const Tensor h_rows = run.h_chunk.narrow(0, 0, plan.offset[seg_end] - plan.offset[seg]);
    compute_keys(run, h_rows);  // one GEMM for the segment
    if (pool_segment(run, h_rows, seg, seg_end)) return;
    for (int64_t s = seg; s < seg_end; ++s) {
      pool_rows(run, h_rows, plan.offset[s] - plan.offset[seg], s, plan.active[s]);
    }
    return;
  }
  ForwardStep& p = run.step;
  for (int64_t s = seg; s < seg_end; ++s) {
    const int64_t rows = plan.active[s], begin = plan.offset[s];
    Tensor gates_step = chunk_gates.narrow(0, begin - chunk_begin, rows);
    add_recurrent_product(run, gates_step, s, rows);
    p.step = s;
    p.rows = rows;
    p.rows_next = s + 1 < plan.steps ? plan.active[s + 1] : 0;
    p.gates = gates_step.data_ptr();
    p.cell = kept_cell_row(f, begin);
    p.h_prev_next = every_step && p.rows_next > 0 ? row_ptr(f.h_prev, plan.offset[s + 1])
                                                  : nullptr;
    run.backend.forward_step(p, run.dtype);
    if (run.pool == nullptr) continue;
    const Tensor h_rows = run.h_state.narrow(0, 0, rows);
    compute_keys(run, h_rows);
    pool_rows(run, h_rows, 0, s, rows);
  }
}

void run_forward(const RecurrentBackend& backend, ForwardPass& f, Tensor& h_state, Tensor& c_state,
                 const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
                 const optional<Tensor>& b_hh, PoolPass* pool) {
  const LengthPlan& plan = f.plan;
  const int64_t B = h_state.size(0), H = h_state.size(1), N = plan.packed_rows;
  const bool every_step = f.keep == Keep::kEveryStep;
  if (every_step) f.h_prev.narrow(0, 0, B).copy_(h_state);

  // The input projection x W_ih^T + bias (projection_bias) of a chunk of
  // steps is one GEMM, done just before the chunk's recurrence. Without saved
  // activations one chunk of scratch replaces the [N, G] buffer.
  const Tensor x_packed = pack_rows(f.x, N, f.dev);
  const Tensor w_ih_t = w_ih.t();
  const optional<Tensor> bias = projection_bias(f.cell_def, b_ih, b_hh);
  const std::vector<int64_t> chunk_starts = chunk_steps(plan, backend.projection_chunk_rows);
  const int64_t most_rows = largest_chunk(plan, chunk_starts);
  Tensor scratch =
      every_step ? Tensor() : empty_buffer({most_rows, f.cell_def.gates * H}, f.x.options());

  ForwardRunner run{backend, f, f.x.scalar_type(), h_state, w_hh.t()};
  run.w_hh_packed = packed_recurrent_weights(backend, f.cell_def, w_hh);
  if (f.cell_def.recurrent_apart) {
    if (!run.w_hh_packed.defined()) run.recurrent = at::empty({B, f.cell_def.gates * H}, f.x.options());
    run.recurrent_bias = recurrent_bias_of(f.cell_def, b_hh);
  }
  ForwardStep& p = run.step;
  static_cast<StepRows&>(p) = step_rows(f.cell_def, f.dev, B, H, f.reverse);
  p.h_state = h_state.data_ptr();
  p.c_state = c_state.defined() ? c_state.data_ptr() : nullptr;
  p.output = f.output.defined() ? f.output.data_ptr() : nullptr;
  run.fused = forward_recurrence_rows(p, plan, f.dev, run.w_hh_packed);
  run.fused.recurrent_bias = data_or_null(run.recurrent_bias);
  if (pool != nullptr && pool->pooling != OnlinePooling::kLast) {
    prepare_pooling(run, *pool, B, most_rows);
  }
  // Per chunk, its projection, then its steps in segments that start at the
  // chunk and at each checkpoint inside it (where c_{s-1} is kept first).
  size_t checkpoint = 0;
  const std::vector<int64_t>& kept = f.checkpoint_steps;
  for (size_t c = 0; c + 1 < chunk_starts.size(); ++c) {
    const int64_t first = chunk_starts[c], last = chunk_starts[c + 1];
    const int64_t chunk_begin = plan.offset[first];
    const int64_t chunk_rows = plan.offset[last] - chunk_begin;
    Tensor chunk_gates = every_step ? f.gates.narrow(0, chunk_begin, chunk_rows)
                                    : scratch.narrow(0, 0, chunk_rows);
    linear_out(chunk_gates, x_packed.narrow(0, chunk_begin, chunk_rows), w_ih_t,
               bias.value_or(Tensor()));
    for (int64_t seg = first; seg < last;) {
      if (checkpoint + 1 < kept.size() && seg == kept[checkpoint]) {  // every row's state
        const int64_t at_row = static_cast<int64_t>(checkpoint++) * B;
        if (f.cell_def.has_cell_state) f.cell.narrow(0, at_row, B).copy_(c_state);
      }
      const int64_t seg_end =
          checkpoint + 1 < kept.size() ? std::min(last, kept[checkpoint]) : last;
      run_segment(run, chunk_gates, chunk_begin, seg, seg_end);
      seg = seg_end;
    }
  }
}

OnlinePooling parse_pooling(c10::string_view pooling) {
  if (pooling == "attention") return OnlinePooling::kAttention;
  if (pooling == "mean") return OnlinePooling::kMean;
  SEQCLS_CHECK_VALUE(pooling == "last", "pooling must be \"attention\", \"mean\" or \"last\", got \"",
                     std::string(pooling), "\"");
  return OnlinePooling::kLast;
}

// The pooling arguments of lstm_layer_pooled_forward, checked.
void check_pool_inputs(OnlinePooling pooling, const Tensor& x, int64_t batch, int64_t hidden,
                          const optional<Tensor>& query, const optional<Tensor>& key_weight,
                          const optional<Tensor>& key_bias, const optional<Tensor>& pool_max,
                          const optional<Tensor>& pool_denom, const optional<Tensor>& pool_sum) {
  int64_t key_size = hidden;
  if (pooling == OnlinePooling::kAttention) {
    SEQCLS_CHECK_VALUE(query.has_value(), "pooling=\"attention\" needs a query");
    if (key_weight.has_value()) {
      check_same_kind(*key_weight, "key_weight", x, "x");
      SEQCLS_CHECK_VALUE(key_weight->dim() == 2 && key_weight->size(1) == hidden,
                         "key_weight must have shape [A, H] with H = ", hidden, ", got ",
                         key_weight->sizes());
      key_size = key_weight->size(0);
    }
    check_same_kind(*query, "query", x, "x");
    check_shape(*query, {key_size}, "query");
  } else {
    SEQCLS_CHECK_VALUE(!query.has_value() && !key_weight.has_value(),
                       "query and key_weight are only taken with pooling=\"attention\"");
  }
  SEQCLS_CHECK_VALUE(!key_bias.has_value() || key_weight.has_value(),
                     "key_bias is only taken with key_weight");
  if (key_bias.has_value()) {
    check_same_kind(*key_bias, "key_bias", x, "x");
    check_shape(*key_bias, {key_size}, "key_bias");
  }
  SEQCLS_CHECK_VALUE(pool_max.has_value() == pool_denom.has_value() &&
                         pool_max.has_value() == pool_sum.has_value(),
                     "pool_max, pool_denom and pool_sum must be given together or not at all");
  if (pool_max.has_value()) {
    const at::ScalarType state = at::toOpMathType(x.scalar_type());
    const std::pair<const Tensor*, const char*> states[] = {
        {&*pool_max, "pool_max"}, {&*pool_denom, "pool_denom"}, {&*pool_sum, "pool_sum"}};
    for (const auto& [t, name] : states) {
      SEQCLS_CHECK_TYPE(t->scalar_type() == state, name, " must have dtype ", state,
                        " (the state dtype for x of dtype ", x.scalar_type(), "), got ",
                        t->scalar_type());
      SEQCLS_CHECK_VALUE(t->device() == x.device(), name, " must be on the device of x (",
                         x.device(), "), got ", t->device());
    }
    check_shape(*pool_max, {batch}, "pool_max");
    check_shape(*pool_denom, {batch}, "pool_denom");
    check_shape(*pool_sum, {batch, hidden}, "pool_sum");
  }
}

// How a call may read its plan (PlanAccess): resident when its lengths or
// plan table live on the backend's device; steps on the device when the
// backend's kernels for this cell read them there (every pass then does:
// forward, pooled, both backwards and the low-memory rebuild).
PlanAccess plan_access(const RecurrentBackend& backend, const CellDef& cell_def, const Tensor& x,
                       int64_t hidden, const optional<Tensor>& lengths,
                       const optional<Tensor>& plan_table) {
  const optional<Tensor>& given = lengths_source(lengths, plan_table);
  if (!given.has_value() || !backend.resident_on_device(given->device())) return {};
  return {true, backend.reads_steps_on_device(cell_def, hidden, x.scalar_type())};
}

// A forward's pass and buffers for `keep`: the output [T, B, H] (not for
// pooled inference), and what the backward reads (Keep) in the layout of
// ForwardPass.
ForwardPass forward_pass(const CellDef& cell_def, const RecurrentBackend& backend, const Tensor& x,
                         const LayerSizes& sz, const LengthPlan& plan, const DevicePlan& dev,
                         bool has_h0, bool reverse, Keep keep, bool write_output) {
  const int64_t T = sz.steps_total, B = sz.batch, H = sz.hidden, N = plan.packed_rows;
  const auto opts = x.options();
  const auto state_opts = opts.dtype(at::toOpMathType(x.scalar_type()));
  std::vector<int64_t> checkpoints;
  if (keep == Keep::kCheckpoints && N > 0) checkpoints = chunk_steps(plan, backend.backward_chunk_rows);
  const int64_t gate_rows = keep == Keep::kEveryStep ? N : 0;
  // kept per step: c_s or the GRU's h W_hn^T + b_hn; per checkpoint: c.
  const int64_t cell_rows = keep == Keep::kEveryStep ? (cell_def.keeps_value ? N : 0)
                            : keep == Keep::kCheckpoints && cell_def.has_cell_state
                                ? checkpoint_rows(checkpoints, B)
                                : 0;
  ForwardPass f{cell_def, x, plan, dev, has_h0, reverse, keep, std::move(checkpoints)};
  if (!write_output) return f;
  f.output = empty_buffer({T, B, H}, opts);
  f.gates = empty_buffer({gate_rows, cell_def.gates * H}, opts);
  f.cell = empty_buffer({cell_rows, H}, state_opts);
  // Slots of a device plan past their row's length are never written, but
  // the backward's GEMMs read them (times a zero gradient): zeros, not NaN.
  f.h_prev = plan.on_device ? zeros_buffer({gate_rows, H}, opts) : empty_buffer({gate_rows, H}, opts);
  if (!plan.all_full) backend.zero_output_padding(f.output, dev);
  return f;
}

// A sorted initial state [B, H] with `options` (its dtype): the caller's, or zeros.
Tensor initial_state(const optional<Tensor>& given, const DevicePlan& dev,
                     const at::TensorOptions& options, const LayerSizes& sz) {
  return given.has_value() ? to_sorted(*given, dev, options.dtype().toScalarType())
                           : at::zeros({sz.batch, sz.hidden}, options);
}

// The cell state c of a cell that has one (else undefined), sorted.
Tensor initial_cell_state(const CellDef& cell_def, const optional<Tensor>& c0,
                          const DevicePlan& dev, const Tensor& x, const LayerSizes& sz) {
  if (!cell_def.has_cell_state) return Tensor();
  return initial_state(c0, dev, x.options().dtype(at::toOpMathType(x.scalar_type())), sz);
}

}  // namespace

namespace {

// A layer's forward for any cell: the output [T, B, H], h_n and (cells with
// a cell state) c_n in caller order, and what the backward reads.
struct LayerForward {
  Tensor output, h_n, c_n, gates, cell, h_prev;
};

LayerForward layer_forward(const CellDef& cell_def, const RecurrentBackend& backend,
                           const Tensor& x, const optional<Tensor>& lengths,
                           const optional<Tensor>& h0, const optional<Tensor>& c0,
                           const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
                           const optional<Tensor>& b_hh, bool reverse, Keep keep,
                           const optional<Tensor>& plan_table) {
  const LayerSizes sz = check_layer_inputs(cell_def, x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh);
  backend.check_input(x, sz.hidden);
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  const PlanAccess access = plan_access(backend, cell_def, x, sz.hidden, lengths, plan_table);
  const std::shared_ptr<const BatchPlan> planned =
      batch_plan(lengths, plan_table, sz.steps_total, sz.batch, reverse, x.device(), access);
  const LengthPlan& plan = planned->plan;
  const DevicePlan& dev = planned->dev;
  ForwardPass f = forward_pass(cell_def, backend, x, sz, plan, dev, h0.has_value(), reverse, keep,
                               /*write_output=*/true);
  Tensor h_state = initial_state(h0, dev, x.options(), sz);
  Tensor c_state = initial_cell_state(cell_def, c0, dev, x, sz);
  // N = 0 exactly when B = 0 (lengths are >= 1).
  if (plan.packed_rows > 0) run_forward(backend, f, h_state, c_state, w_ih, w_hh, b_ih, b_hh, nullptr);
  return {f.output,
          from_sorted(h_state, dev),
          c_state.defined() ? from_sorted(c_state.to(x.scalar_type()), dev) : Tensor(),
          std::move(f.gates),
          std::move(f.cell),
          std::move(f.h_prev)};
}

}  // namespace

LstmForwardResult lstm_layer_forward(const RecurrentBackend& backend, const Tensor& x,
                                     const optional<Tensor>& lengths, const optional<Tensor>& h0,
                                     const optional<Tensor>& c0, const Tensor& w_ih,
                                     const Tensor& w_hh, const optional<Tensor>& b_ih,
                                     const optional<Tensor>& b_hh, bool reverse,
                                     bool save_activations, const optional<Tensor>& plan_table,
                                     bool low_memory) {
  const Keep keep = !save_activations ? Keep::kNothing
                    : low_memory        ? Keep::kCheckpoints
                                        : Keep::kEveryStep;
  LayerForward out = layer_forward(kLstmCell, backend, x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                   reverse, keep, plan_table);
  return {std::move(out.output), std::move(out.h_n),  std::move(out.c_n),
          std::move(out.gates),  std::move(out.cell), std::move(out.h_prev)};
}

GruForwardResult gru_layer_forward(const RecurrentBackend& backend, const Tensor& x,
                                   const optional<Tensor>& lengths, const optional<Tensor>& h0,
                                   const Tensor& w_ih, const Tensor& w_hh,
                                   const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
                                   bool reverse, bool save_activations,
                                   const optional<Tensor>& plan_table, bool low_memory) {
  // Low memory keeps nothing: the backward rebuilds everything from the output.
  const Keep keep = !save_activations ? Keep::kNothing
                    : low_memory        ? Keep::kCheckpoints
                                        : Keep::kEveryStep;
  LayerForward out = layer_forward(kGruCell, backend, x, lengths, h0, c10::nullopt, w_ih, w_hh,
                                   b_ih, b_hh, reverse, keep, plan_table);
  return {std::move(out.output), std::move(out.h_n), std::move(out.gates), std::move(out.cell),
          std::move(out.h_prev)};
}

namespace {

// What a pooled forward returns: the final states (c undefined for a cell
// without one) and the pooling state, in caller order.
struct PooledForward {
  Tensor h_n, c_n, max, denom, sum;
};

// The pooled forward of any cell (lstm_layer_pooled_forward's semantics):
// one forward layer that writes no output and pools it as it runs.
PooledForward layer_pooled_forward(
    const CellDef& cell_def, const RecurrentBackend& backend, const Tensor& x,
    const optional<Tensor>& lengths, const optional<Tensor>& h0, const optional<Tensor>& c0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, c10::string_view pooling, const optional<Tensor>& query,
    const optional<Tensor>& key_weight, const optional<Tensor>& key_bias,
    const optional<Tensor>& pool_max, const optional<Tensor>& pool_denom,
    const optional<Tensor>& pool_sum, const optional<Tensor>& plan_table) {
  const LayerSizes sz = check_layer_inputs(cell_def, x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh);
  backend.check_input(x, sz.hidden);
  const int64_t T = sz.steps_total, B = sz.batch, H = sz.hidden;
  const OnlinePooling mode = parse_pooling(pooling);
  check_pool_inputs(mode, x, B, H, query, key_weight, key_bias, pool_max, pool_denom, pool_sum);
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  const at::ScalarType dtype = x.scalar_type(), state_dtype = at::toOpMathType(dtype);
  const auto opts = x.options();
  const auto state_opts = opts.dtype(state_dtype);
  const PlanAccess access =
      plan_access(backend, cell_def, x, H, lengths, plan_table);
  const std::shared_ptr<const BatchPlan> planned =
      batch_plan(lengths, plan_table, T, B, false, x.device(), access);
  const LengthPlan& plan = planned->plan;
  const DevicePlan& dev = planned->dev;

  ForwardPass f = forward_pass(cell_def, backend, x, sz, plan, dev, h0.has_value(), false,
                               Keep::kNothing, /*write_output=*/false);
  Tensor h_state = initial_state(h0, dev, opts, sz);
  Tensor c_state = initial_cell_state(cell_def, c0, dev, x, sz);
  PoolPass pool{mode,
                mode == OnlinePooling::kAttention ? query->contiguous() : Tensor(),
                key_weight.has_value() ? key_weight->t().contiguous() : Tensor(),
                key_bias.has_value() ? *key_bias : Tensor(),
                pool_max.has_value() ? to_sorted(*pool_max, dev, state_dtype)
                                     : at::full({B}, -std::numeric_limits<double>::infinity(),
                                                state_opts),
                pool_denom.has_value() ? to_sorted(*pool_denom, dev, state_dtype)
                                       : at::zeros({B}, state_opts),
                initial_state(pool_sum, dev, state_opts, sz)};
  if (plan.packed_rows > 0) run_forward(backend, f, h_state, c_state, w_ih, w_hh, b_ih, b_hh, &pool);
  return {from_sorted(h_state, dev),
          c_state.defined() ? from_sorted(c_state.to(dtype), dev) : Tensor(),
          from_sorted(pool.max, dev), from_sorted(pool.denom, dev), from_sorted(pool.sum, dev)};
}

}  // namespace

LstmPooledForwardResult lstm_layer_pooled_forward(
    const RecurrentBackend& backend, const Tensor& x, const optional<Tensor>& lengths,
    const optional<Tensor>& h0, const optional<Tensor>& c0, const Tensor& w_ih,
    const Tensor& w_hh, const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
    c10::string_view pooling, const optional<Tensor>& query, const optional<Tensor>& key_weight,
    const optional<Tensor>& key_bias, const optional<Tensor>& pool_max,
    const optional<Tensor>& pool_denom, const optional<Tensor>& pool_sum,
    const optional<Tensor>& plan_table) {
  PooledForward r = layer_pooled_forward(kLstmCell, backend, x, lengths, h0, c0, w_ih, w_hh, b_ih,
                                         b_hh, pooling, query, key_weight, key_bias, pool_max,
                                         pool_denom, pool_sum, plan_table);
  return {std::move(r.h_n), std::move(r.c_n), std::move(r.max), std::move(r.denom),
          std::move(r.sum)};
}

GruPooledForwardResult gru_layer_pooled_forward(
    const RecurrentBackend& backend, const Tensor& x, const optional<Tensor>& lengths,
    const optional<Tensor>& h0, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, c10::string_view pooling,
    const optional<Tensor>& query, const optional<Tensor>& key_weight,
    const optional<Tensor>& key_bias, const optional<Tensor>& pool_max,
    const optional<Tensor>& pool_denom, const optional<Tensor>& pool_sum,
    const optional<Tensor>& plan_table) {
  PooledForward r = layer_pooled_forward(kGruCell, backend, x, lengths, h0, c10::nullopt, w_ih,
                                         w_hh, b_ih, b_hh, pooling, query, key_weight, key_bias,
                                         pool_max, pool_denom, pool_sum, plan_table);
  return {std::move(r.h_n), std::move(r.max), std::move(r.denom), std::move(r.sum)};
}

namespace {

// The upstream gradients of a backward call, checked against x [T, B, I] and
// H (grad_c_n undefined: a cell without a cell state).
void check_upstream(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                    const Tensor& x, int64_t hidden) {
  const int64_t T = x.size(0), B = x.size(1);
  check_shape(grad_output, {T, B, hidden}, "grad_output");
  check_shape(grad_h_n, {B, hidden}, "grad_h_n");
  // The step kernels read these through x's element type.
  check_same_kind(grad_output, "grad_output", x, "x");
  check_same_kind(grad_h_n, "grad_h_n", x, "x");
  if (!grad_c_n.defined()) return;
  check_shape(grad_c_n, {B, hidden}, "grad_c_n");
  check_same_kind(grad_c_n, "grad_c_n", x, "x");
}

// Where the backward gets each chunk's activated gates, kept values (`cell`)
// and h_prev: the forward's saved ones (gates [N, G], cell [N, H], h_prev
// [N, H]), or, when `output` is defined (low memory), rebuilt chunk by chunk
// from x, the layer's output [T, B, H], h0 and (a cell with a cell state) the
// chunk's checkpointed c: h_prev of step s is the output at step s - 1 (h0 at
// s = 0), the gates' pre-activations are two GEMMs with no recurrence, and
// replaying the forward's pointwise step over the chunk gives the activated
// gates and the kept values (c_s = f c_{s-1} + i g needs no GEMM; the GRU
// needs only h_prev).
struct GateSource {
  Tensor gates, cell, h_prev;  // saved (fast)
  Tensor output, h0;           // low memory; h0 sorted [B, H], undefined: zeros
  Tensor checkpoints;          // low memory, cell state: [C * B, H] sorted c at each chunk start
  optional<Tensor> bias;       // low memory: the projection's (projection_bias)
  Tensor recurrent_bias;       // low memory, recurrent_apart: b_hh (undefined: none)
  bool rebuilds() const { return output.defined(); }
};

// h_prev of packed rows [begin, begin + rows) from the output (low memory).
Tensor rebuild_h_prev(const GateSource& src, const DevicePlan& dev, int64_t begin, int64_t rows,
                      int64_t batch, bool reverse) {
  const Tensor& out = src.output;
  const int64_t H = out.size(2);
  std::vector<Tensor> parts;
  if (begin < batch) {  // step 0's rows start from h0
    parts.push_back(src.h0.defined() ? src.h0.narrow(0, begin, batch - begin)
                                     : at::zeros({batch - begin, H}, out.options()));
  }
  const int64_t first = std::max(begin, batch), count = begin + rows - first;
  if (count > 0) {
    if (!dev.packed_time.defined()) {  // time-major: packed row q - B is step s - 1's
      parts.push_back(out.reshape({out.size(0) * batch, H}).narrow(0, first - batch, count));
    } else {  // the same (row, time -+ 1) of the output
      const Tensor time = dev.packed_time.narrow(0, first, count);
      Tensor previous = reverse ? time + 1 : time - 1;
      // A slot past its row's length (DevicePlan::slots) reads any valid
      // output row: its gradient is zero, and only running rows are replayed.
      if (dev.slots) previous.clamp_(0, out.size(0) - 1);
      parts.push_back(gather_rows(out, previous, dev.packed_batch.narrow(0, first, count)));
    }
  }
  return parts.size() == 1 ? parts[0].contiguous() : at::cat(parts);
}

// What every chunk of one backward shares: its inputs, the step parameters
// (per step and persistent) and, in low memory, the rebuild's scratch.
struct BackwardPass {
  const CellDef& cell_def;
  const RecurrentBackend& backend;
  const LengthPlan& plan;
  const DevicePlan& dev;
  const GateSource& src;
  at::ScalarType dtype;
  int64_t batch;
  bool reverse;
  Tensor x_source, w_ih_t, w_hh, w_hh_t, w_hh_packed_backward;
  Tensor c0_sorted, saved_gates, saved_cell, saved_h_prev;  // saved activations (fast)
  Tensor gates_scratch, cell_scratch, c_replay, h_replay, w_hh_packed;  // rebuild (low memory)
  Tensor recurrent_scratch;              //   and its recurrent product (recurrent_apart)
  ForwardStep replay{};                  // the rebuild's forward, per step
  ForwardRecurrence fused_replay{};      //   or persistent
  BackwardStep step{};                   // the recurrence backward, per step
  BackwardRecurrence fused{};            //   or persistent
  Tensor grad_h_state, grad_c_state;         // sorted, updated chunk by chunk
};

// One chunk's activated gates, cell states and h_prev (packed rows [begin,
// begin + rows)).
struct ChunkActivations {
  Tensor gates, cell, h_prev;
  int64_t cell_begin = 0;             // packed row of cell's first row
  const void* cell_before = nullptr;  // c_{first-1}, sorted [B, H]; nullptr: cell's rows
};

// The low-memory rebuild's buffers and replay parameters, for chunks of up
// to `most` rows.
void prepare_rebuild(BackwardPass& b, int64_t most) {
  const auto opts = b.x_source.options();
  const at::ScalarType state_dtype = at::toOpMathType(b.dtype);
  const int64_t B = b.batch, H = b.w_hh.size(1);
  b.gates_scratch = empty_buffer({most, b.cell_def.gates * H}, opts);
  if (b.cell_def.recurrent_apart) {
    b.recurrent_scratch = empty_buffer({most, b.cell_def.gates * H}, opts);
  }
  b.cell_scratch = at::empty({most, H}, opts.dtype(state_dtype));
  b.c_replay = at::empty({B, H}, opts.dtype(state_dtype));
  // The replay's h: the LSTM's is unused (the output holds it); the GRU's
  // step reads h_{s-1} there and overwrites it, so each step gets a copy.
  b.h_replay = at::empty({B, H}, opts);
  static_cast<StepRows&>(b.replay) = step_rows(b.cell_def, b.dev, B, H, b.reverse);
  b.replay.h_state = b.h_replay.data_ptr();
  b.replay.c_state = b.c_replay.data_ptr();
  b.w_hh_packed = packed_recurrent_weights(b.backend, b.cell_def, b.w_hh);
  b.fused_replay = forward_recurrence_rows(b.replay, b.plan, b.dev, b.w_hh_packed);
  b.fused_replay.recurrent_bias = data_or_null(b.src.recurrent_bias);
}

// The forward's pointwise steps [first, last) replayed over a rebuilt
// chunk whose gates hold the input projection (packed rows from `begin`):
// the recurrent product from the rebuilt h_prev (one GEMM for the chunk;
// kept apart with b_hh for a recurrent_apart cell), then per step the cell.
void replay_steps(BackwardPass& b, ChunkActivations& a, int64_t first, int64_t last,
                  int64_t begin) {
  const LengthPlan& plan = b.plan;
  Tensor recurrent;
  if (b.cell_def.recurrent_apart) {
    recurrent = b.recurrent_scratch.narrow(0, 0, a.gates.size(0));
    linear_out(recurrent, a.h_prev, b.w_hh_t, b.src.recurrent_bias);
  } else {
    a.gates.addmm_(a.h_prev, b.w_hh_t);
  }
  for (int64_t s = first; s < last; ++s) {  // pre-activations -> gates, and the kept values
    const int64_t row = plan.offset[s] - begin, active = plan.active[s];
    b.replay.step = s;
    b.replay.rows = active;
    b.replay.gates = row_ptr(a.gates, row);
    b.replay.cell = row_ptr(a.cell, row);
    if (recurrent.defined()) {
      b.replay.recurrent = row_ptr(recurrent, row);
      b.h_replay.narrow(0, 0, active).copy_(a.h_prev.narrow(0, row, active));
    }
    b.backend.forward_step(b.replay, b.dtype);
  }
}

// Chunk c (steps [first, last)) rebuilt from x, the output and (a cell with
// a cell state) the chunk's checkpoint: the input projection, then the
// forward's recurrence replayed with h_{s-1} read from the output.
ChunkActivations rebuilt_chunk(BackwardPass& b, size_t c, int64_t first, int64_t last) {
  const LengthPlan& plan = b.plan;
  const int64_t begin = plan.offset[first], rows = plan.offset[last] - begin, B = b.batch;
  ChunkActivations a;
  a.h_prev = rebuild_h_prev(b.src, b.dev, begin, rows, B, b.reverse);
  a.gates = b.gates_scratch.narrow(0, 0, rows);
  linear_out(a.gates, pack_rows(b.x_source, begin, rows, b.dev), b.w_ih_t,
             b.src.bias.value_or(Tensor()));
  a.cell = b.cell_scratch;
  a.cell_begin = begin;
  if (b.cell_def.has_cell_state) {
    const Tensor checkpoint = b.src.checkpoints.narrow(0, static_cast<int64_t>(c) * B, B);
    a.cell_before = checkpoint.const_data_ptr();
    b.c_replay.copy_(checkpoint);
  }
  if (b.w_hh_packed.defined()) {
    // The forward's own kernel: the rebuilt gates and cells are bitwise the forward's.
    ForwardRecurrence& r = b.fused_replay;
    r.step = first;
    r.end_step = last;
    r.row0 = begin;
    r.product_at_first = first > 0 || b.src.h0.defined();
    r.gates = a.gates.data_ptr();
    r.h_in = a.h_prev.const_data_ptr();
    r.cell = a.cell.data_ptr();
    b.backend.forward_recurrence(r, b.dtype);
    return a;
  }
  replay_steps(b, a, first, last, begin);
  return a;
}

// Chunk steps [first, last) from the forward's saved activations.
ChunkActivations saved_chunk(const BackwardPass& b, int64_t first, int64_t last) {
  const int64_t begin = b.plan.offset[first], rows = b.plan.offset[last] - begin;
  ChunkActivations a;
  a.gates = b.saved_gates.narrow(0, begin, rows);
  a.cell = b.saved_cell;
  a.h_prev = b.saved_h_prev.narrow(0, begin, rows);
  a.cell_before = first == 0 && b.c0_sorted.defined() ? b.c0_sorted.const_data_ptr() : nullptr;
  return a;
}

// Step s's pointwise backward (the step parameters of b.step), then dL/dh_{s-1}
// for the rows active at s: dG_s W_hh, or (a cell that keeps its recurrent
// product apart) what the kernel left there plus dG_rec,s W_hh. The other
// rows keep the gradient they were given until their own last step comes up.
void backward_step_rows(BackwardPass& b, const ChunkActivations& a, Tensor& grad_gates,
                        Tensor& grad_recurrent, int64_t s, int64_t first) {
  const LengthPlan& plan = b.plan;
  const int64_t begin = plan.offset[first], active = plan.active[s], row = plan.offset[s];
  Tensor grad_gates_step = grad_gates.narrow(0, row - begin, active);
  BackwardStep& p = b.step;
  p.step = s;
  p.rows = active;
  p.gates = row_ptr(a.gates, row - begin);
  p.cell = b.cell_def.keeps_value ? row_ptr(a.cell, row - a.cell_begin) : nullptr;
  if (b.cell_def.has_cell_state) {
    p.cell_prev = s == first && a.cell_before != nullptr
                      ? a.cell_before
                      : row_ptr(a.cell, plan.offset[s - 1] - a.cell_begin);
  }
  p.grad_gates = grad_gates_step.data_ptr();
  Tensor grad_h_rows = b.grad_h_state.narrow(0, 0, active);
  if (!grad_recurrent.defined()) {
    b.backend.backward_step(p, b.dtype);
    at::mm_out(grad_h_rows, grad_gates_step, b.w_hh);
    return;
  }
  Tensor grad_recurrent_step = grad_recurrent.narrow(0, row - begin, active);
  p.h_prev = row_ptr(a.h_prev, row - begin);
  p.grad_recurrent = grad_recurrent_step.data_ptr();
  b.backend.backward_step(p, b.dtype);
  grad_h_rows.addmm_(grad_recurrent_step, b.w_hh);
}

// The recurrence backward of steps [first, last): the chunk's gate gradients
// (grad_gates [rows, G], and grad_recurrent for a cell that keeps its
// recurrent product apart, else undefined), and grad_h_state / grad_c_state
// carried to step first - 1.
void recurrence_backward(BackwardPass& b, const ChunkActivations& a, Tensor& grad_gates,
                         Tensor& grad_recurrent, int64_t first, int64_t last) {
  if (b.w_hh_packed_backward.defined()) {  // the chunk's steps in one persistent call
    BackwardRecurrence& r = b.fused;
    r.step = first;
    r.end_step = last;
    r.row0 = b.plan.offset[first];
    r.cell_row0 = a.cell_begin;
    r.gates = a.gates.const_data_ptr();
    r.cell = data_or_null(a.cell);
    r.cell_before = a.cell_before;
    r.grad_gates = grad_gates.data_ptr();
    if (grad_recurrent.defined()) {
      r.h_prev = a.h_prev.const_data_ptr();
      r.grad_recurrent = grad_recurrent.data_ptr();
    }
    b.backend.backward_recurrence(r, b.dtype);
    return;
  }
  for (int64_t s = last - 1; s >= first; --s) {  // steps in reverse, on the active prefix
    backward_step_rows(b, a, grad_gates, grad_recurrent, s, first);
  }
}

// The per-step and persistent backward parameters every chunk shares.
void prepare_recurrence_backward(BackwardPass& b, const Tensor& grad_out) {
  BackwardStep& p = b.step;
  static_cast<StepRows&>(p) = step_rows(b.cell_def, b.dev, b.batch, b.w_hh.size(1), b.reverse);
  p.grad_output = grad_out.const_data_ptr();
  p.grad_output_stride_t = grad_out.stride(0);
  p.grad_output_stride_b = grad_out.stride(1);
  p.grad_h_state = b.grad_h_state.data_ptr();
  p.grad_c_state = b.grad_c_state.defined() ? b.grad_c_state.data_ptr() : nullptr;
  // The persistent backward, where the backend has one: every step of a
  // chunk in one call.
  b.w_hh_packed_backward = packed_recurrent_weights(b.backend, b.cell_def, b.w_hh,
                                                    /*backward=*/true);
  b.fused = backward_recurrence_rows(p, b.plan, b.dev, b.w_hh_packed_backward, b.grad_h_state);
}

// A layer's gradients for any cell: x's, h0's, c0's (cells with a cell
// state) and the weight GEMMs' (GemmGrads), in caller order.
struct LayerGrads {
  Tensor grad_x, grad_h0, grad_c0;
  GemmGrads gemm;
};

// The gradients of a layer with no packed rows (B = 0): zeros.
LayerGrads no_rows_grads(const CellDef& cell_def, const BackwardPass& b, const Tensor& x,
                         bool compute_grad_x, int64_t hidden) {
  const auto opts = x.options();
  const int64_t G = cell_def.gates * hidden;
  const Tensor bias = at::zeros({G}, opts);
  return {compute_grad_x ? at::zeros(x.sizes(), opts) : unrequested_grad_x(x), b.grad_h_state,
          b.grad_c_state.defined() ? b.grad_c_state.to(x.scalar_type()) : Tensor(),
          GemmGrads{Tensor(), at::zeros({G, x.size(2)}, opts), at::zeros({G, hidden}, opts), bias,
                    cell_def.recurrent_apart ? at::zeros({G}, opts) : Tensor()}};
}

// grad_c_n undefined: a cell without a cell state.
LayerGrads run_backward(const CellDef& cell_def, const RecurrentBackend& backend,
                        const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                        const Tensor& x, const LengthPlan& plan, const DevicePlan& dev,
                        const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
                        const GateSource& src, bool reverse, bool compute_grad_x) {
  const int64_t B = x.size(1), H = w_hh.size(1), G = cell_def.gates * H;
  const at::ScalarType dtype = x.scalar_type(), state_dtype = at::toOpMathType(dtype);
  const auto opts = x.options();
  BackwardPass b{cell_def, backend, plan, dev, src, dtype, B, reverse};
  b.grad_h_state = to_sorted(grad_h_n, dev, dtype);
  if (grad_c_n.defined()) b.grad_c_state = to_sorted(grad_c_n, dev, state_dtype);
  if (plan.packed_rows == 0) return no_rows_grads(cell_def, b, x, compute_grad_x, H);
  // Full time-major rows are viewed, not gathered, by pack_rows: a transposed
  // (batch_first) x would be copied whole by every chunk's view, so once here.
  b.x_source = plan.packed_is_time_major(reverse) ? x.contiguous() : x;
  b.w_ih_t = w_ih.t();
  b.w_hh = w_hh;
  b.w_hh_t = w_hh.t();
  // Chunks of steps, last first: only a chunk of gate gradients (and of
  // rebuilt gates) exists at a time.
  const std::vector<int64_t> chunk_starts = chunk_steps(plan, backend.backward_chunk_rows);
  const int64_t most = largest_chunk(plan, chunk_starts);
  if (src.rebuilds()) {
    prepare_rebuild(b, most);
  } else {
    const LayerSizes sz{x.size(0), B, x.size(2), H};
    b.c0_sorted = initial_cell_state(cell_def, c0, dev, x, sz);  // undefined without c
    // The kernels index every saved tensor as contiguous rows (the GRU's
    // step reads h_prev too): an expanded or strided one is copied here.
    b.saved_gates = src.gates.contiguous();
    b.saved_cell = src.cell.defined() ? src.cell.contiguous() : Tensor();  // none: the RNN
    b.saved_h_prev = src.h_prev.contiguous();
  }
  // grad_output is read through its T and B strides (an expanded or sliced
  // gradient needs no copy) as long as H is unit-stride.
  const Tensor grad_out = grad_output.stride(2) == 1 || H == 1 ? grad_output
                                                               : grad_output.contiguous();
  prepare_recurrence_backward(b, grad_out);
  Tensor grad_gates = empty_buffer({most, G}, opts);  // every (running) row written below
  Tensor grad_recurrent = cell_def.recurrent_apart ? empty_buffer({most, G}, opts) : Tensor();
  GemmGrads grads;
  for (size_t c = chunk_starts.size() - 1; c-- > 0;) {
    const int64_t first = chunk_starts[c], last = chunk_starts[c + 1];
    const int64_t begin = plan.offset[first], rows = plan.offset[last] - begin;
    const ChunkActivations a =
        src.rebuilds() ? rebuilt_chunk(b, c, first, last) : saved_chunk(b, first, last);
    Tensor chunk_grad_gates = grad_gates.narrow(0, 0, rows);
    Tensor chunk_grad_recurrent =
        grad_recurrent.defined() ? grad_recurrent.narrow(0, 0, rows) : Tensor();
    if (plan.on_device) {  // slots past their row's length: a zero gradient for the GEMMs
      chunk_grad_gates.zero_();
      if (chunk_grad_recurrent.defined()) chunk_grad_recurrent.zero_();
    }
    recurrence_backward(b, a, chunk_grad_gates, chunk_grad_recurrent, first, last);
    // Weight and input gradients: GEMMs over the chunk's valid steps.
    accumulate_gemm_grads(grads, chunk_grad_gates, chunk_grad_recurrent, begin, b.x_source,
                          a.h_prev, w_ih, dev, compute_grad_x);
  }
  Tensor grad_c0 =
      b.grad_c_state.defined() ? from_sorted(b.grad_c_state.to(dtype), dev) : Tensor();
  return {grads.grad_x, from_sorted(b.grad_h_state, dev), std::move(grad_c0), grads};
}

// The LSTM backward operators' results: one bias gradient (b_ih's and b_hh's
// are the same).
LstmBackwardResult lstm_result(LayerGrads g) {
  return {std::move(g.grad_x),        std::move(g.grad_h0),        std::move(g.grad_c0),
          std::move(g.gemm.grad_w_ih), std::move(g.gemm.grad_w_hh), std::move(g.gemm.grad_bias)};
}

// The upstream gradients of a backward call (grad_c_n undefined: a cell
// without a cell state) and the forward's saved activations.
struct Upstream {
  const Tensor &grad_output, &grad_h_n, &grad_c_n;
};
struct Saved {
  const Tensor &gates, &cell, &h_prev;
};

// A backward from the forward's saved activations, for any cell: checks,
// plan, then run_backward.
LayerGrads saved_backward(const CellDef& cell_def, const RecurrentBackend& backend,
                          const Upstream& up, const Tensor& x, const optional<Tensor>& lengths,
                          const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
                          const Saved& saved, bool reverse, bool compute_grad_x,
                          const optional<Tensor>& plan_table) {
  const LayerSizes sz = check_layer_inputs(cell_def, x, lengths, c10::nullopt, c0, w_ih, w_hh,
                                           c10::nullopt, c10::nullopt);
  backend.check_input(x, sz.hidden);
  const int64_t T = sz.steps_total, B = sz.batch, H = sz.hidden;
  check_upstream(up.grad_output, up.grad_h_n, up.grad_c_n, x, H);
  check_saved(cell_def, saved.gates, saved.cell, saved.h_prev, x, H);
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  const PlanAccess access =
      plan_access(backend, cell_def, x, H, lengths, plan_table);
  const std::shared_ptr<const BatchPlan> planned =
      batch_plan(lengths, plan_table, T, B, reverse, x.device(), access);
  check_shape(saved.gates, {planned->plan.packed_rows, cell_def.gates * H}, "gates");
  GateSource src{saved.gates, saved.cell, saved.h_prev, Tensor(), Tensor(), Tensor(),
                 c10::nullopt, Tensor()};
  return run_backward(cell_def, backend, up.grad_output, up.grad_h_n, up.grad_c_n, x,
                      planned->plan, planned->dev, c0, w_ih, w_hh, src, reverse, compute_grad_x);
}

// The GRU backward operators' results: b_ih's and b_hh's gradients apart.
GruBackwardResult gru_result(LayerGrads g) {
  return {std::move(g.grad_x),         std::move(g.grad_h0),
          std::move(g.gemm.grad_w_ih), std::move(g.gemm.grad_w_hh),
          std::move(g.gemm.grad_bias), std::move(g.gemm.grad_recurrent_bias)};
}

}  // namespace

LstmBackwardResult lstm_layer_backward(const RecurrentBackend& backend, const Tensor& grad_output,
                                       const Tensor& grad_h_n, const Tensor& grad_c_n,
                                       const Tensor& x, const optional<Tensor>& lengths,
                                       const optional<Tensor>& c0, const Tensor& w_ih,
                                       const Tensor& w_hh, const Tensor& gates, const Tensor& cell,
                                       const Tensor& h_prev, bool reverse, bool compute_grad_x,
                                       const optional<Tensor>& plan_table) {
  return lstm_result(saved_backward(kLstmCell, backend, {grad_output, grad_h_n, grad_c_n}, x,
                                    lengths, c0, w_ih, w_hh, {gates, cell, h_prev}, reverse,
                                    compute_grad_x, plan_table));
}

LstmBackwardResult lstm_layer_backward_recompute(
    const RecurrentBackend& backend, const Tensor& grad_output, const Tensor& grad_h_n,
    const Tensor& grad_c_n, const Tensor& x, const optional<Tensor>& lengths,
    const optional<Tensor>& h0, const optional<Tensor>& c0, const Tensor& w_ih,
    const Tensor& w_hh, const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
    const Tensor& output, const Tensor& cell, bool reverse, bool compute_grad_x,
    const optional<Tensor>& plan_table) {
  const CellDef& cell_def = kLstmCell;
  const LayerSizes sz = check_layer_inputs(cell_def, x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh);
  backend.check_input(x, sz.hidden);
  const int64_t T = sz.steps_total, B = sz.batch, H = sz.hidden;
  check_upstream(grad_output, grad_h_n, grad_c_n, x, H);
  check_shape(output, {T, B, H}, "output");
  check_same_kind(output, "output", x, "x");
  check_cell(cell, x, H);  // [C * B, H]: the low-memory forward's checkpoints
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  const PlanAccess access =
      plan_access(backend, cell_def, x, H, lengths, plan_table);
  const std::shared_ptr<const BatchPlan> planned =
      batch_plan(lengths, plan_table, T, B, reverse, x.device(), access);
  const LengthPlan& plan = planned->plan;
  const DevicePlan& dev = planned->dev;
  const std::vector<int64_t> chunks =
      plan.packed_rows > 0 ? chunk_steps(plan, backend.backward_chunk_rows) : std::vector<int64_t>{};
  check_shape(cell, {checkpoint_rows(chunks, B), H}, "cell");
  GateSource src{Tensor(),
                 Tensor(),
                 Tensor(),
                 output.contiguous(),
                 h0.has_value() ? to_sorted(*h0, dev, x.scalar_type()) : Tensor(),
                 cell.contiguous(),
                 projection_bias(cell_def, b_ih, b_hh),
                 Tensor()};
  return lstm_result(run_backward(cell_def, backend, grad_output, grad_h_n, grad_c_n, x, plan, dev,
                                  c0, w_ih, w_hh, src, reverse, compute_grad_x));
}

GruBackwardResult gru_layer_backward(const RecurrentBackend& backend, const Tensor& grad_output,
                                     const Tensor& grad_h_n, const Tensor& x,
                                     const optional<Tensor>& lengths, const Tensor& w_ih,
                                     const Tensor& w_hh, const Tensor& gates, const Tensor& cell,
                                     const Tensor& h_prev, bool reverse, bool compute_grad_x,
                                     const optional<Tensor>& plan_table) {
  return gru_result(saved_backward(kGruCell, backend, {grad_output, grad_h_n, Tensor()}, x,
                                   lengths, c10::nullopt, w_ih, w_hh, {gates, cell, h_prev},
                                   reverse, compute_grad_x, plan_table));
}

namespace {

// The low-memory backward of a cell without a cell state (GRU, RNN): checks,
// plan, then run_backward rebuilding each chunk from the output.
LayerGrads stateless_backward_recompute(
    const CellDef& cell_def, const RecurrentBackend& backend, const Tensor& grad_output,
    const Tensor& grad_h_n, const Tensor& x, const optional<Tensor>& lengths,
    const optional<Tensor>& h0, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const Tensor& output,
    bool reverse, bool compute_grad_x, const optional<Tensor>& plan_table) {
  const LayerSizes sz =
      check_layer_inputs(cell_def, x, lengths, h0, c10::nullopt, w_ih, w_hh, b_ih, b_hh);
  backend.check_input(x, sz.hidden);
  const int64_t T = sz.steps_total, B = sz.batch, H = sz.hidden;
  check_upstream(grad_output, grad_h_n, Tensor(), x, H);
  check_shape(output, {T, B, H}, "output");
  check_same_kind(output, "output", x, "x");
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  const PlanAccess access =
      plan_access(backend, cell_def, x, H, lengths, plan_table);
  const std::shared_ptr<const BatchPlan> planned =
      batch_plan(lengths, plan_table, T, B, reverse, x.device(), access);
  const DevicePlan& dev = planned->dev;
  GateSource src{Tensor(),
                 Tensor(),
                 Tensor(),
                 output.contiguous(),
                 h0.has_value() ? to_sorted(*h0, dev, x.scalar_type()) : Tensor(),
                 Tensor(),
                 projection_bias(cell_def, b_ih, b_hh),
                 recurrent_bias_of(cell_def, b_hh)};
  return run_backward(cell_def, backend, grad_output, grad_h_n, Tensor(), x, planned->plan, dev,
                      c10::nullopt, w_ih, w_hh, src, reverse, compute_grad_x);
}

// The RNN's definition for nn.RNN's nonlinearity argument.
const CellDef& rnn_cell(c10::string_view nonlinearity) {
  SEQCLS_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu",
                     "nonlinearity must be \"tanh\" or \"relu\", got \"", std::string(nonlinearity),
                     "\"");
  return nonlinearity == "relu" ? kRnnReluCell : kRnnTanhCell;
}

// The RNN backward operators' results: one bias gradient, as the LSTM's.
RnnBackwardResult rnn_result(LayerGrads g) {
  return {std::move(g.grad_x), std::move(g.grad_h0), std::move(g.gemm.grad_w_ih),
          std::move(g.gemm.grad_w_hh), std::move(g.gemm.grad_bias)};
}

}  // namespace

GruBackwardResult gru_layer_backward_recompute(
    const RecurrentBackend& backend, const Tensor& grad_output, const Tensor& grad_h_n,
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, const Tensor& output, bool reverse, bool compute_grad_x,
    const optional<Tensor>& plan_table) {
  return gru_result(stateless_backward_recompute(kGruCell, backend, grad_output, grad_h_n, x,
                                                 lengths, h0, w_ih, w_hh, b_ih, b_hh, output,
                                                 reverse, compute_grad_x, plan_table));
}

RnnForwardResult rnn_layer_forward(const RecurrentBackend& backend, const Tensor& x,
                                   const optional<Tensor>& lengths, const optional<Tensor>& h0,
                                   const Tensor& w_ih, const Tensor& w_hh,
                                   const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
                                   c10::string_view nonlinearity, bool reverse,
                                   bool save_activations, const optional<Tensor>& plan_table,
                                   bool low_memory) {
  // Low memory keeps nothing: the backward rebuilds everything from the output.
  const Keep keep = !save_activations ? Keep::kNothing
                    : low_memory        ? Keep::kCheckpoints
                                        : Keep::kEveryStep;
  LayerForward out = layer_forward(rnn_cell(nonlinearity), backend, x, lengths, h0, c10::nullopt,
                                   w_ih, w_hh, b_ih, b_hh, reverse, keep, plan_table);
  return {std::move(out.output), std::move(out.h_n), std::move(out.gates),
          std::move(out.h_prev)};
}

RnnBackwardResult rnn_layer_backward(const RecurrentBackend& backend, const Tensor& grad_output,
                                     const Tensor& grad_h_n, const Tensor& x,
                                     const optional<Tensor>& lengths, const Tensor& w_ih,
                                     const Tensor& w_hh, const Tensor& gates,
                                     const Tensor& h_prev, c10::string_view nonlinearity,
                                     bool reverse, bool compute_grad_x,
                                     const optional<Tensor>& plan_table) {
  return rnn_result(saved_backward(rnn_cell(nonlinearity), backend,
                                   {grad_output, grad_h_n, Tensor()}, x, lengths, c10::nullopt,
                                   w_ih, w_hh, {gates, Tensor(), h_prev}, reverse,
                                   compute_grad_x, plan_table));
}

RnnBackwardResult rnn_layer_backward_recompute(
    const RecurrentBackend& backend, const Tensor& grad_output, const Tensor& grad_h_n,
    const Tensor& x, const optional<Tensor>& lengths, const optional<Tensor>& h0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, const Tensor& output, c10::string_view nonlinearity,
    bool reverse, bool compute_grad_x, const optional<Tensor>& plan_table) {
  return rnn_result(stateless_backward_recompute(rnn_cell(nonlinearity), backend, grad_output,
                                                 grad_h_n, x, lengths, h0, w_ih, w_hh, b_ih,
                                                 b_hh, output, reverse, compute_grad_x,
                                                 plan_table));
}

}  // namespace seqcls_fast
