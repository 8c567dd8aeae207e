// The layer's input checks, the length plan on the device, packed-row
// gathers, and the weight GEMMs of the backward: what every backend and cell
// of the recurrent driver shares.
#include "recurrent_common.h"

#include "buffers.h"
#include "length_plan.h"
#include "recurrent_step.h"
#include "tensor_identity.h"

#include <ATen/ATen.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <string>
#include <atomic>
#include <cstring>
#include <mutex>
#include <numeric>
#include <optional>
#include <utility>

namespace seqcls_fast {

namespace {

void check_state(const c10::optional<at::Tensor>& s, const at::Tensor& x, int64_t batch,
                 int64_t hidden, const char* name) {
  if (!s.has_value()) return;
  check_same_kind(*s, name, x, "x");
  SEQCLS_CHECK_VALUE(s->dim() == 2 && s->size(0) == batch && s->size(1) == hidden, name,
                     " must have shape [B, H] = [", batch, ", ", hidden, "], got ", s->sizes());
}

}  // namespace

LayerSizes check_layer_inputs(const CellDef& cell, const at::Tensor& x,
                              const c10::optional<at::Tensor>& lengths,
                              const c10::optional<at::Tensor>& h0,
                              const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                              const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh) {
  SEQCLS_CHECK_VALUE(x.dim() == 3, "x must have shape [T, B, I], got ", x.sizes());
  SEQCLS_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x must be a floating tensor, got ",
                    x.scalar_type());
  const int64_t steps_total = x.size(0), batch = x.size(1), input_size = x.size(2);
  const int64_t gates = cell.gates;
  // "4H", "3H", or "H" for a one-gate cell, in messages.
  const std::string rows = gates == 1 ? "H" : std::to_string(gates) + "H";
  SEQCLS_CHECK_VALUE(w_hh.dim() == 2 && w_hh.size(0) % gates == 0 && w_hh.size(0) > 0 &&
                         w_hh.size(1) * gates == w_hh.size(0),
                     "w_hh must have shape [", rows, ", H], got ", w_hh.sizes());
  const int64_t hidden = w_hh.size(1);
  check_same_kind(w_ih, "w_ih", x, "x");
  check_same_kind(w_hh, "w_hh", x, "x");
  SEQCLS_CHECK_VALUE(w_ih.dim() == 2 && w_ih.size(0) == gates * hidden &&
                         w_ih.size(1) == input_size,
                     "w_ih must have shape [", rows, ", I] = [", gates * hidden, ", ",
                     input_size, "] (I from x), got ", w_ih.sizes());
  SEQCLS_CHECK_VALUE(b_ih.has_value() == b_hh.has_value(),
                     "b_ih and b_hh must be given together or not at all");
  for (const auto* b : {&b_ih, &b_hh}) {
    if (!b->has_value()) continue;
    const char* name = b == &b_ih ? "b_ih" : "b_hh";
    check_same_kind(**b, name, x, "x");
    SEQCLS_CHECK_VALUE((*b)->dim() == 1 && (*b)->size(0) == gates * hidden, name,
                       " must have shape [", rows, "] = [", gates * hidden, "], got ",
                       (*b)->sizes());
  }
  check_state(h0, x, batch, hidden, "h0");
  SEQCLS_CHECK_VALUE(cell.has_cell_state || !c0.has_value(), "c0 is only taken by a cell with a ",
                     "cell state (", cell.name, " has none)");
  check_state(c0, x, batch, hidden, "c0");
  SEQCLS_CHECK_VALUE(batch == 0 || steps_total > 0,
                     "x must have at least one time step (T >= 1), got shape ", x.sizes());
  check_lengths_form(lengths, batch, x.device());
  return {steps_total, batch, input_size, hidden};
}

LengthPlan make_length_plan(const at::Tensor& plan_table, int64_t steps_total, int64_t batch,
                            bool reverse) {
  LengthPlan plan;
  if (plan_table.defined()) {
    plan.order = plan_table[0];
    plan.sorted_lengths = plan_table[1];
    plan.lengths = plan_table[2];
  } else {
    plan.order = at::arange(batch, at::kLong);
    plan.sorted_lengths = at::full({batch}, steps_total, at::kLong);
  }
  const int64_t* order = plan.order.const_data_ptr<int64_t>();
  const int64_t* sorted = plan.sorted_lengths.const_data_ptr<int64_t>();
  plan.steps = batch > 0 ? sorted[0] : 0;
  plan.all_full = batch == 0 || sorted[batch - 1] == steps_total;
  plan.active.resize(plan.steps);
  plan.offset.assign(plan.steps + 1, 0);
  int64_t rows = batch;
  for (int64_t s = 0; s < plan.steps; ++s) {
    while (rows > 0 && sorted[rows - 1] <= s) --rows;
    plan.active[s] = rows;
    plan.offset[s + 1] = plan.offset[s] + rows;
  }
  plan.packed_rows = plan.offset[plan.steps];
  if (!plan.packed_is_time_major(reverse)) {  // else x's own rows: nothing to gather
    plan.packed_time = at::empty({plan.packed_rows}, at::kLong);
    plan.packed_batch = at::empty({plan.packed_rows}, at::kLong);
    int64_t* time = plan.packed_time.data_ptr<int64_t>();
    int64_t* row = plan.packed_batch.data_ptr<int64_t>();
    for (int64_t s = 0; s < plan.steps; ++s) {
      for (int64_t j = 0; j < plan.active[s]; ++j) {
        const int64_t q = plan.offset[s] + j;
        time[q] = step_time(reverse, sorted, j, s);
        row[q] = order[j];
      }
    }
  }
  if (plan.all_full) {
    plan.order = at::Tensor();  // identity: no gathers needed
  } else {
    plan.inverse_order = at::empty({batch}, at::kLong);
    int64_t* inverse = plan.inverse_order.data_ptr<int64_t>();
    for (int64_t j = 0; j < batch; ++j) inverse[order[j]] = j;
  }
  return plan;
}

DevicePlan make_device_plan(const LengthPlan& plan, bool reverse, const at::Device& device) {
  const int64_t B = plan.sorted_lengths.numel(), N = plan.packed_rows;
  const bool permuted = plan.order.defined();
  const bool gathered = !plan.packed_is_time_major(reverse);
  const int64_t steps = plan.steps;
  if (device.is_cpu()) {  // already where the kernels read it
    DevicePlan out;
    // Views of the plan's vectors (the BatchPlan keeps both alive together).
    const auto opts = at::TensorOptions().dtype(at::kLong);
    out.active = at::from_blob(const_cast<int64_t*>(plan.active.data()), {steps}, opts);
    out.offset = at::from_blob(const_cast<int64_t*>(plan.offset.data()), {steps + 1}, opts);
    out.sorted_lengths = plan.sorted_lengths;
    out.order = plan.order;
    out.inverse_order = plan.inverse_order;
    out.lengths = plan.lengths;
    if (gathered) {
      out.packed_time = out.scatter_time = plan.packed_time;
      out.packed_batch = plan.packed_batch;
    }
    return out;
  }
  const bool has_lengths = plan.lengths.defined();
  const int64_t total = B * (1 + (permuted ? 2 : 0) + (has_lengths ? 1 : 0)) +
                        N * (gathered ? 2 : 0) + 2 * steps + 1;
  at::Tensor host = at::empty({total}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* dst = host.data_ptr<int64_t>();
  const auto append = [&dst](const at::Tensor& t) {
    std::memcpy(dst, t.const_data_ptr<int64_t>(), t.numel() * sizeof(int64_t));
    dst += t.numel();
  };
  append(plan.sorted_lengths);
  if (permuted) {
    append(plan.order);
    append(plan.inverse_order);
  }
  if (has_lengths) append(plan.lengths);
  if (gathered) {
    append(plan.packed_time);
    append(plan.packed_batch);
  }
  std::memcpy(dst, plan.active.data(), steps * sizeof(int64_t));
  std::memcpy(dst + steps, plan.offset.data(), (steps + 1) * sizeof(int64_t));
  // Pinned source + non_blocking: the copy is ordered on the current stream
  // and the caching host allocator keeps `host` alive until it completes.
  const at::Tensor on_device = host.to(device, at::kLong, /*non_blocking=*/true);
  DevicePlan out;
  int64_t at_row = 0;
  const auto take = [&](int64_t n) {
    at::Tensor view = on_device.narrow(0, at_row, n);
    at_row += n;
    return view;
  };
  out.sorted_lengths = take(B);
  if (permuted) {
    out.order = take(B);
    out.inverse_order = take(B);
  }
  if (has_lengths) out.lengths = take(B);
  if (gathered) {
    out.packed_time = out.scatter_time = take(N);
    out.packed_batch = take(N);
  }
  out.active = take(steps);
  out.offset = take(steps + 1);
  return out;
}

namespace {

std::atomic<int64_t> g_expansions{0};

std::shared_ptr<const BatchPlan> expand(const at::Tensor& table, int64_t steps_total,
                                        int64_t batch, bool reverse, const at::Device& device) {
  ++g_expansions;
  auto made = std::make_shared<BatchPlan>();
  made->plan = make_length_plan(table, steps_total, batch, reverse);
  made->dev = make_device_plan(made->plan, reverse, device);
  return made;
}

// A device-resident table's expansion, made on the device with no host copy
// (LengthPlan::on_device): T x B slots; step s's active rows counted there.
std::shared_ptr<const BatchPlan> expand_on_device(const at::Tensor& table, int64_t steps_total,
                                                  int64_t batch, bool reverse) {
  ++g_expansions;
  auto made = std::make_shared<BatchPlan>();
  LengthPlan& plan = made->plan;
  const int64_t T = steps_total, B = batch;
  plan.steps = B > 0 ? T : 0;
  plan.active.assign(plan.steps, B);
  plan.offset.resize(plan.steps + 1);
  for (int64_t s = 0; s <= plan.steps; ++s) plan.offset[s] = s * B;
  plan.packed_rows = plan.steps * B;
  plan.all_full = B == 0;  // else unknown on the host: the padding is zeroed
  plan.on_device = true;
  DevicePlan& dev = made->dev;
  const auto opts = table.options();
  dev.order = table[0];
  dev.sorted_lengths = table[1];
  dev.lengths = table[2];
  dev.inverse_order = at::argsort(dev.order);  // a permutation's inverse, no scatter
  const at::Tensor steps = at::arange(plan.steps, opts).unsqueeze(1);                 // [T, 1]
  const at::Tensor running = dev.sorted_lengths.unsqueeze(0) > steps;                // [T, B]
  dev.active = running.sum(1).to(at::kLong);
  dev.offset = at::arange(plan.steps + 1, opts) * B;
  const at::Tensor time = reverse ? dev.sorted_lengths.unsqueeze(0) - 1 - steps
                                  : steps.expand({plan.steps, B});
  // Gathers read a slot past its row's length at the row's step 0 (x's
  // padding may hold anything, NaN too, and the GEMMs multiply it by zero);
  // grad_x's scatter writes it to a padding position of its own (time s
  // past the length, both directions): every (t, b) exactly once.
  dev.packed_time = at::where(running, time, at::zeros({}, opts)).reshape({-1});
  dev.scatter_time = at::where(running, time, steps.expand({plan.steps, B})).reshape({-1});
  dev.packed_batch = dev.order.unsqueeze(0).expand({plan.steps, B}).reshape({-1});
  dev.slots = true;
  return made;
}

// Expanded plans of the last few plan tables, while those live unmodified.
// The stream is part of the key: a device plan is uploaded on the stream
// current when it was made, and only work on that stream is ordered after it.
class PlanCache {
 public:
  std::shared_ptr<const BatchPlan> get(const at::Tensor& given, int64_t steps_total,
                                       int64_t batch, bool reverse, const at::Device& device,
                                       PlanAccess access) {
    // The plan is checked and used as a copy, so no later write to the
    // caller's tensor (from another thread, or unseen by its version
    // counter) can reach a checked plan (3B int64: cheap).
    const std::optional<TensorIdentity> identity = TensorIdentity::of(given);
    if (!identity) return checked_expansion(given, steps_total, batch, reverse, device, access);
    const Key key{steps_total, batch, reverse, access.resident && access.device_steps,
                  current_stream(device)};
    if (auto found = find(given, key)) return found;
    // Checked (a plan that is not this batch's raises, and nothing is kept).
    std::shared_ptr<const BatchPlan> made =
        checked_expansion(given, steps_total, batch, reverse, device, access);
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_) {  // another thread made it meanwhile: one entry
      if (e.key == key && e.table.matches(given)) return e.plan;
    }
    entries_.insert(entries_.begin(), Entry{*identity, key, made});
    if (entries_.size() > kEntries) entries_.pop_back();
    return made;
  }

 private:
  static constexpr size_t kEntries = 16;  // both directions of a few batches in flight
  struct Key {
    int64_t steps, batch;
    bool reverse, on_device;
    c10::Stream stream;
    bool operator==(const Key& o) const {
      return steps == o.steps && batch == o.batch && reverse == o.reverse &&
             on_device == o.on_device && stream == o.stream;
    }
  };
  struct Entry {
    TensorIdentity table;
    Key key;
    std::shared_ptr<const BatchPlan> plan;
  };

  // A copy keeps shape, dtype and values, so read_plan_table reports a bad
  // plan on it as on the tensor given (one not on the CPU it refuses as is,
  // unless it is device-resident: then checked and expanded on the device,
  // or brought to the host for host-planned steps).
  std::shared_ptr<const BatchPlan> checked_expansion(const at::Tensor& given, int64_t steps_total,
                                                     int64_t batch, bool reverse,
                                                     const at::Device& device, PlanAccess access) {
    if (access.resident && access.device_steps) {
      const at::Tensor copy = given.clone(at::MemoryFormat::Contiguous);
      return expand_on_device(read_plan_table(copy, steps_total, batch, /*resident=*/true),
                              steps_total, batch, reverse);
    }
    const at::Tensor host = access.resident                ? host_table(given)
                            : given.device().is_cpu() ? given.clone(at::MemoryFormat::Contiguous)
                                                      : given;
    return expand(read_plan_table(host, steps_total, batch), steps_total, batch, reverse, device);
  }

  // A device-resident table on the host: one copy per table while it lives
  // unmodified, however many directions and passes expand it.
  at::Tensor host_table(const at::Tensor& given) {
    const std::optional<TensorIdentity> identity = TensorIdentity::of(given);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      host_tables_.erase(std::remove_if(host_tables_.begin(), host_tables_.end(),
                                        [](const auto& e) { return e.first.expired(); }),
                         host_tables_.end());
      for (const auto& [table, host] : host_tables_) {
        if (table.matches(given)) return host;
      }
    }
    // The copy waits for the device: not under the lock other threads take.
    at::Tensor host = host_copy_of_plan(given);
    if (identity) {
      std::lock_guard<std::mutex> lock(mutex_);
      host_tables_.insert(host_tables_.begin(), {*identity, host});
      if (host_tables_.size() > kEntries) host_tables_.pop_back();
    }
    return host;
  }

  // The kept expansion of `given` for `key`, most recent first; expired
  // entries are dropped on the way.
  std::shared_ptr<const BatchPlan> find(const at::Tensor& given, const Key& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [](const Entry& e) { return e.table.expired(); }),
                   entries_.end());
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->key == key && it->table.matches(given)) {
        std::rotate(entries_.begin(), it, it + 1);
        return entries_.front().plan;
      }
    }
    return nullptr;
  }

  static c10::Stream current_stream(const at::Device& device) {
    if (device.is_cpu()) return c10::Stream(c10::Stream::DEFAULT, device);
    return c10::impl::getDeviceGuardImpl(device.type())->getStream(device);
  }

  std::mutex mutex_;
  std::vector<Entry> entries_;
  std::vector<std::pair<TensorIdentity, at::Tensor>> host_tables_;
};

}  // namespace

std::shared_ptr<const BatchPlan> batch_plan(const c10::optional<at::Tensor>& lengths,
                                            const c10::optional<at::Tensor>& plan,
                                            int64_t steps_total, int64_t batch, bool reverse,
                                            const at::Device& device, PlanAccess access) {
  if (plan.has_value()) {
    SEQCLS_CHECK_VALUE(!lengths.has_value(),
                       "lengths must be None when a plan is given (the plan carries them)");
    SEQCLS_CHECK_VALUE(!access.resident || plan->device() == device,
                       "plan must be on the CPU or on the input's device (", device, "), got ",
                       plan->device());
    static PlanCache cache;
    return cache.get(*plan, steps_total, batch, reverse, device, access);
  }
  if (!lengths.has_value()) return expand(at::Tensor(), steps_total, batch, reverse, device);
  if (access.resident && access.device_steps) {
    return expand_on_device(make_device_plan_table(*lengths, steps_total), steps_total, batch,
                            reverse);
  }
  return expand(make_plan_table(*lengths, steps_total, access.resident), steps_total, batch,
                reverse, device);
}

int64_t length_plan_expansions() { return g_expansions.load(); }

at::Tensor to_sorted(const at::Tensor& t, const DevicePlan& plan, at::ScalarType dtype) {
  // index_select already makes a new contiguous tensor; the identity order
  // needs an explicit copy (the caller mutates the result). One copy either way.
  const bool gathered = plan.order.defined();
  const at::Tensor src = gathered ? t.index_select(0, plan.order) : t;
  return src.to(dtype, /*non_blocking=*/false, /*copy=*/!gathered, at::MemoryFormat::Contiguous);
}

at::Tensor from_sorted(const at::Tensor& sorted, const DevicePlan& plan) {
  return plan.inverse_order.defined() ? sorted.index_select(0, plan.inverse_order) : sorted;
}

at::Tensor pack_rows(const at::Tensor& x, int64_t packed_rows, const DevicePlan& plan) {
  return pack_rows(x, 0, packed_rows, plan);
}

namespace {

// Where x[time[n], batch[n]] starts, counted in rows of a [R, I] view of x's
// storage (rows_view), when every x[t, b] is such a whole row (time- or
// batch-major alike); undefined otherwise. One index_select / index_copy_ of
// contiguous rows through it is several times faster on the CPU than
// indexing x with two index tensors.
at::Tensor flat_row_index(const at::Tensor& x, const at::Tensor& time, const at::Tensor& batch) {
  const int64_t I = x.size(2);
  if (x.numel() == 0 || x.stride(2) != 1 || x.stride(0) % I != 0 || x.stride(1) % I != 0) return {};
  return time * (x.stride(0) / I) + batch * (x.stride(1) / I);
}

// x's storage as [R, I] rows, from x's first element to its last (x as
// flat_row_index accepts it).
at::Tensor rows_view(const at::Tensor& x) {
  const int64_t I = x.size(2);
  const int64_t span =
      ((x.size(0) - 1) * x.stride(0) + (x.size(1) - 1) * x.stride(1)) / I + 1;
  return x.as_strided({span, I}, {I, 1});
}

}  // namespace

at::Tensor gather_rows(const at::Tensor& x, const at::Tensor& time, const at::Tensor& batch) {
  at::Tensor rows = empty_buffer({time.size(0), x.size(2)}, x.options());
  const at::Tensor flat = flat_row_index(x, time, batch);
  if (flat.defined()) return at::index_select_out(rows, rows_view(x), 0, flat);
  return at::index_out(rows, x, {time, batch});
}

at::Tensor pack_rows(const at::Tensor& x, int64_t begin, int64_t rows, const DevicePlan& plan) {
  if (!plan.packed_time.defined()) {
    return x.reshape({x.size(0) * x.size(1), x.size(2)}).narrow(0, begin, rows);
  }
  return gather_rows(x, plan.packed_time.narrow(0, begin, rows),
                     plan.packed_batch.narrow(0, begin, rows));
}

at::Tensor unrequested_grad_x(const at::Tensor& x) {
  return at::zeros({}, x.options()).expand(x.sizes());
}

void accumulate_gemm_grads(GemmGrads& grads, const at::Tensor& grad_gates,
                           const at::Tensor& grad_recurrent, int64_t begin, const at::Tensor& x,
                           const at::Tensor& h_prev, const at::Tensor& w_ih,
                           const DevicePlan& plan, bool compute_grad_x) {
  const int64_t rows = grad_gates.size(0);
  const at::Tensor x_packed = pack_rows(x, begin, rows, plan);
  const at::Tensor grad_gates_t = grad_gates.t();
  const bool apart = grad_recurrent.defined();
  const at::Tensor grad_recurrent_t = apart ? grad_recurrent.t() : grad_gates_t;
  if (!grads.grad_w_ih.defined()) {
    grads.grad_w_ih = at::mm(grad_gates_t, x_packed);
    grads.grad_w_hh = at::mm(grad_recurrent_t, h_prev);
    grads.grad_bias = grad_gates.sum(0);
    if (apart) grads.grad_recurrent_bias = grad_recurrent.sum(0);
    // Every (t, b) not written below stays 0: padding, or no gradient asked for.
    const bool every_position_written = !plan.packed_time.defined() || plan.slots;
    grads.grad_x = !compute_grad_x          ? unrequested_grad_x(x)
                   : every_position_written ? empty_buffer(x.sizes(), x.options())
                                            : zeros_buffer(x.sizes(), x.options());
  } else {
    grads.grad_w_ih.addmm_(grad_gates_t, x_packed);
    grads.grad_w_hh.addmm_(grad_recurrent_t, h_prev);
    grads.grad_bias.add_(grad_gates.sum(0));
    if (apart) grads.grad_recurrent_bias.add_(grad_recurrent.sum(0));
  }
  if (!compute_grad_x) return;
  if (!plan.packed_time.defined()) {
    at::Tensor rows_out = grads.grad_x.view({x.size(0) * x.size(1), x.size(2)}).narrow(0, begin, rows);
    at::mm_out(rows_out, grad_gates, w_ih);
  } else {
    // Every valid (t, b) is one packed row: unique indices, a deterministic
    // scatter. Slots (DevicePlan::slots) cover every (t, b) once, those past a
    // row's length with a zero gradient. grad_x is ours, contiguous: every
    // (t, b) is a whole row of its storage.
    if (grads.grad_x.numel() == 0) return;  // I = 0: nothing to write
    const at::Tensor flat = flat_row_index(grads.grad_x, plan.scatter_time.narrow(0, begin, rows),
                                           plan.packed_batch.narrow(0, begin, rows));
    TORCH_INTERNAL_ASSERT(flat.defined(), "grad_x must be contiguous");
    rows_view(grads.grad_x).index_copy_(0, flat, at::mm(grad_gates, w_ih));
  }
}

}  // namespace seqcls_fast
