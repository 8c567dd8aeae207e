"""The CUDA backend (csrc/cuda/: host code and kernels, unchanged) on the CPU
emulator (csrc/cuda_emu/), as torch.ops.seqcls_fast_cuda_emu on CPU tensors:

- every sample of every operator (tests/samples.py) in each dtype the CUDA
  backend supports, against the plain-PyTorch references: float64 within the
  CUDA tolerances (and against the CPU backend), float32 by the float32 rule,
  float16 / bfloat16 within twice PyTorch's own error in that dtype;
- larger shapes: launches of several blocks with a partial last one, H = 257,
  D = 45 (not a multiple of 32), T = 100, and pooled inference streamed in chunks;
- bitwise the same results whatever order the blocks run in
  (SEQCLS_CUDA_EMU_BLOCK_ORDER), as a GPU may run them in any order;
- every emulated call launches emulated kernels (cuda_emu_stats), so a silent
  fallback to the CPU backend fails.

The emulator's own checks (barriers, shuffles, deadlocks) are tested elsewhere.
"""
import functools

import pytest
import torch

import samples
import seqcls_fast
from helpers import (LSTM_TOL, POOL_TOL, assert_close_named, assert_matches_reference,
                     cast_floats, deterministic_with_nan_filled_buffers, dtype_id, sample_named,
                     tolerance)
from samples import (Sample, lstm_layer_backward_recompute_samples, lstm_layer_backward_samples,
                     lstm_layer_forward_samples, lstm_layer_pooled_forward_samples,
                     masked_attention_pool_backward_samples,
                     masked_attention_pool_forward_samples)
from seqcls_fast._build import read_build_record
from seqcls_fast.reference import masked_attention_pool
from test_cuda import _rel_err
from test_ops import (LSTM_BACKWARD_NAMES, native_layer, native_layer_backward,
                      native_layer_forward, pooled_state_reference, run_native_layer)

_record = read_build_record()
if _record is not None and _record.get("cuda_emu", True) is False:  # no key: an older build
    pytest.skip("seqcls_fast was built without the CUDA emulator (SEQCLS_FAST_CUDA_EMU=0)",
                allow_module_level=True)

pytestmark = pytest.mark.cuda_emu

EMU = torch.ops.seqcls_fast_cuda_emu
CPU_OPS = torch.ops.seqcls_fast
LOW_PRECISION = [torch.float16, torch.bfloat16]
DTYPES = [torch.float64, torch.float32, *LOW_PRECISION]
EXACT = [torch.float64, torch.float32]  # the larger shapes: not every dtype, for time
STATE_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}  # else x's dtype
F64 = torch.float64
LOW_PRECISION_FLOOR = 1e-4  # test_cuda's floor on the relative error

FORWARD_NAMES = ("output", "h_n", "c_n", "gates", "cell", "h_prev")
POOLED_NAMES = ("h_n", "c_n", "pool_max", "pool_denom", "pool_sum")
POOL_FORWARD_NAMES = ("pooled", "weights")
POOL_BACKWARD_NAMES = ("grad_values", "grad_keys", "grad_query")


# ------------------------------------------------------------------ helpers
def emu_stats():
    return seqcls_fast._C.cuda_emu_stats()


def run_emulated(op, *args):
    """EMU.<op>(*args), failing unless it launched emulated kernels: a call
    that fell back to the CPU backend launches none."""
    before = emu_stats()["launches"]
    result = getattr(EMU, op)(*args)
    assert emu_stats()["launches"] > before, f"{op}: no emulated kernel launched"
    return result


class Judge:
    """Judges emulated results in `dtype` against reference(d), PyTorch's own
    computation in dtype d, the inputs cast to d.

    float64: within the CUDA tolerance; float32: by the float32 rule (the
    emulated op runs ATen's CPU GEMMs, so CPU float32 is the yardstick); both
    at each call. float16/bfloat16: test_cuda's rule, relative error (norm)
    against the float64 truth at most twice PyTorch's own in that dtype plus
    a small floor, judged in finish() over all calls' tensors of one name
    together: test_cuda applies it to thousands of elements, and one sample's
    few dozen hold too few roundings for a 2x comparison (a wrong value still
    errs far more: one element off by 0.05 among the bfloat16 outputs fails)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.low_precision = {}  # name -> [(ours, PyTorch's, truth)], finite truth only

    def __call__(self, got, reference, table, names):
        if self.dtype not in LOW_PRECISION:  # ("cpu", float32): the float32 rule
            device = "cuda" if self.dtype == F64 else "cpu"
            assert_matches_reference(got, reference, device, self.dtype, table, names)
            return
        for name, g, n, t in zip(names, got, reference(self.dtype), reference(F64), strict=True):
            g, n, t = (a.detach().double() for a in (g, n, t))
            assert g.shape == t.shape, (name, g.shape, t.shape)
            finite = torch.isfinite(t)  # an empty pool's -inf max: reproduced exactly
            assert torch.equal(g[~finite], t[~finite]), f"{name}: non-finite truth not reproduced"
            self.low_precision.setdefault(name, []).append((g[finite], n[finite], t[finite]))

    def finish(self):
        for name, triples in self.low_precision.items():
            ours, theirs, truth = (torch.cat(parts) for parts in zip(*triples))
            ours_err, theirs_err = _rel_err(ours, truth), _rel_err(theirs, truth)
            assert ours_err <= 2 * theirs_err + LOW_PRECISION_FLOOR, (name, ours_err, theirs_err)


def assert_same_as_cpu_backend(got, expected, table, names):
    """float64: the emulated CUDA backend agrees with the CPU backend."""
    assert_close_named(got, expected, tolerance(table, "cuda", F64), names)


def cached_reference(fn, *args):
    """d -> fn(*args, d), each dtype computed once (several calls compare with it)."""
    return functools.cache(lambda dtype: fn(*args, dtype))


def native_pooled_forward(args, dtype):
    """test_ops' reference for lstm_layer_pooled_forward: packed nn.LSTM, then
    the pooling's closed form, on args cast to dtype."""
    x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, pooling, query, key_weight, key_bias, *state = \
        cast_floats(args, dtype)
    out, h_n, c_n = run_native_layer(native_layer(w_ih, w_hh, b_ih, b_hh, False), x, lengths,
                                     h0, c0, False)
    return (h_n, c_n, *pooled_state_reference(out.detach(), lengths, pooling, query, key_weight,
                                              key_bias, state))


def native_pool_backward(sample, dtype):
    """test_ops' reference for masked_attention_pool_backward: autograd through
    masked_attention_pool, in dtype; the gradients of the given inputs."""
    grad_pooled, grad_weights = cast_floats(sample.args[:2], dtype)
    values, keys, query, lengths = (
        t.requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        for t in cast_floats(sample.forward.args, dtype))
    leaves = [t for t in (values, keys, query) if t is not None]
    return torch.autograd.grad(masked_attention_pool(values, keys, query, lengths), leaves,
                               (grad_pooled, grad_weights))


def with_state_dtype(args, dtype):
    """Pooled-forward args with a given pooling state in the state dtype
    (float32 for half/bfloat16 x), as the op requires."""
    state_dtype = STATE_DTYPE.get(dtype, dtype)
    return args[:12] + tuple(s if s is None else s.to(state_dtype) for s in args[12:])


@pytest.fixture
def saved_by_emulated_forward(monkeypatch, dtype):
    """In float16/bfloat16, which the CPU backend lacks, samples.py builds the
    backward samples' saved activations (and the pool's weights) with the
    emulated forward. Float64/float32 keep the CPU forward's, for time: the
    same layout (ops.cpp), and the emulated forward is held to the references."""
    if dtype in LOW_PRECISION:
        monkeypatch.setattr(samples, "ops", EMU)


def representative(sample_list, dtype):
    """Every sample in float64/float32; every third in float16/bfloat16, for
    time (an emulated block takes milliseconds). The low-precision paths are
    the same for every sample, and [1::3] of each samples.py list still holds
    every option: lengths or none, state, bias, reverse, compute_grad_x, each
    pooling fresh and continued, keys, strides."""
    return sample_list if dtype not in LOW_PRECISION else sample_list[1::3]


# ------------------------------------------------- samples.py, every dtype
@pytest.fixture(params=["persistent", "steps"])
def recurrence(request, monkeypatch):
    """Which LSTM recurrence the emulated backend runs: the persistent kernel
    (cooperative grids; every samples.py shape fits the fallback rule) or the
    per-step path (a GEMM and a step kernel per step), forced."""
    if request.param == "steps":
        monkeypatch.setenv("SEQCLS_FAST_CUDA_RECURRENCE", "steps")
    else:
        monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    return request.param


def run_on(recurrence, op, *args):
    """run_emulated, failing unless `recurrence` is the path that ran (a
    cooperative grid exactly for the persistent one, when there are rows)."""
    before = cooperative_launches()
    result = run_emulated(op, *args)
    has_rows = args[0].numel() > 0
    assert (cooperative_launches() > before) == (recurrence == "persistent" and has_rows), op
    return result


FORWARD_MODES = {"save_activations": (True,), "inference": (False,),
                 "low_memory": (True, None, True)}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lstm_layer_forward_samples(recurrence, dtype):
    judge = Judge(dtype)
    for sample in representative(lstm_layer_forward_samples("cpu", dtype), dtype):
        reference = cached_reference(native_layer_forward, sample.args)
        for mode, extra in FORWARD_MODES.items():
            with sample_named(f"{sample.name}-{mode}"):
                got = run_on(recurrence, "lstm_layer_forward", *sample.args, *extra)
                judge(got[:3], reference, LSTM_TOL, FORWARD_NAMES[:3])
                assert got[4].dtype == STATE_DTYPE.get(dtype, dtype)  # the saved cell states
                if dtype == F64:  # saved activations too: one layout for both backends
                    assert_same_as_cpu_backend(
                        got, CPU_OPS.lstm_layer_forward(*sample.args, *extra), LSTM_TOL,
                        FORWARD_NAMES)
    judge.finish()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lstm_layer_backward_samples(recurrence, dtype, saved_by_emulated_forward):
    judge = Judge(dtype)
    for sample in representative(lstm_layer_backward_samples("cpu", dtype), dtype):
        with sample_named(sample.name):
            got = run_on(recurrence, "lstm_layer_backward", *sample.args)
            first = 0 if sample.args[-1] else 1  # compute_grad_x
            judge(got[first:], lambda d: native_layer_backward(sample, d)[first:], LSTM_TOL,
                  LSTM_BACKWARD_NAMES[first:])
            if first:  # no grad_x asked for: documented all zeros
                assert got[0].shape == sample.forward.args[0].shape and not got[0].any()
            if dtype == F64:
                assert_same_as_cpu_backend(got, CPU_OPS.lstm_layer_backward(*sample.args),
                                           LSTM_TOL, LSTM_BACKWARD_NAMES)
    judge.finish()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lstm_layer_backward_recompute_samples(recurrence, dtype, saved_by_emulated_forward):
    """From the emulated low-memory forward, against nn.LSTM autograd itself.
    The CPU backend reads these checkpoints too: below 1024 packed rows both
    backends keep one chunk."""
    judge = Judge(dtype)
    for sample in representative(lstm_layer_backward_recompute_samples("cpu", dtype), dtype):
        with sample_named(sample.name):
            got = run_on(recurrence, "lstm_layer_backward_recompute", *sample.args)
            first = 0 if sample.args[-1] else 1  # compute_grad_x
            judge(got[first:], lambda d: native_layer_backward(sample.forward, d)[first:],
                  LSTM_TOL, LSTM_BACKWARD_NAMES[first:])
            if first:  # no grad_x asked for: documented all zeros
                assert not got[0].any()
            if dtype == F64:
                assert_same_as_cpu_backend(
                    got, CPU_OPS.lstm_layer_backward_recompute(*sample.args), LSTM_TOL,
                    LSTM_BACKWARD_NAMES)
    judge.finish()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lstm_layer_pooled_forward_samples(dtype):
    """Every pooling, with and without attention keys, fresh or continuing a
    pooling state (samples.py alternates)."""
    judge = Judge(dtype)
    for sample in representative(lstm_layer_pooled_forward_samples("cpu", dtype), dtype):
        with sample_named(sample.name):
            args = with_state_dtype(sample.args, dtype)
            got = run_emulated("lstm_layer_pooled_forward", *args)
            judge(got, lambda d: native_pooled_forward(args, d), LSTM_TOL, POOLED_NAMES)
            assert got[2].dtype == STATE_DTYPE.get(dtype, dtype)
            if dtype == F64:
                assert_same_as_cpu_backend(got, CPU_OPS.lstm_layer_pooled_forward(*args),
                                           LSTM_TOL, POOLED_NAMES)
    judge.finish()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_masked_attention_pool_forward_samples(dtype):
    judge = Judge(dtype)
    for sample in representative(masked_attention_pool_forward_samples("cpu", dtype), dtype):
        with sample_named(sample.name):
            got = run_emulated("masked_attention_pool_forward", *sample.args)
            judge(got, lambda d: masked_attention_pool(*cast_floats(sample.args, d)), POOL_TOL,
                  POOL_FORWARD_NAMES)
            if dtype == F64:
                assert_same_as_cpu_backend(
                    got, CPU_OPS.masked_attention_pool_forward(*sample.args), POOL_TOL,
                    POOL_FORWARD_NAMES)
    judge.finish()


def judge_pool_backward(judge, sample, got):
    """The gradients of the given inputs against autograd; without keys
    grad_keys is empty (folded into grad_values)."""
    with_keys = sample.forward.args[1] is not None
    grad_values, grad_keys, grad_query = got
    names = ["grad_values"] + (["grad_keys"] if with_keys else []) + ["grad_query"]
    mine = [grad_values] + ([grad_keys] if with_keys else []) + [grad_query]
    judge(mine, lambda d: native_pool_backward(sample, d), POOL_TOL, names)
    if not with_keys:
        assert grad_keys.numel() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_masked_attention_pool_backward_samples(dtype, saved_by_emulated_forward):
    judge = Judge(dtype)
    for sample in representative(masked_attention_pool_backward_samples("cpu", dtype), dtype):
        with sample_named(sample.name):
            got = run_emulated("masked_attention_pool_backward", *sample.args)
            judge_pool_backward(judge, sample, got)
            if dtype == F64:
                assert_same_as_cpu_backend(
                    got, CPU_OPS.masked_attention_pool_backward(*sample.args), POOL_TOL,
                    POOL_BACKWARD_NAMES)
    judge.finish()


# ------------------------------------------------------------ larger shapes
# The step kernels run 256 threads over rows * H: at H = 257 a step of 3, 2
# or 1 rows is 4, 3 or 2 blocks, the last one partial. T = 100 (one partial
# block a step, at H = 60, for time): a long recurrence, long padding.
# The pool-step kernel is one block of 128 threads per row: H = 257 and
# A = 130 leave a partial round of each. Lengths unsorted, a length-1 row.
def large_lstm_args(steps, batch, inputs, hidden, lengths, reverse, dtype):
    """lstm_layer_forward's args (no save_activations), weights at nn.LSTM's
    scale so the gates do not saturate at H = 257."""
    scale = hidden ** -0.5

    def randn(*shape, s=1.0):
        return (torch.randn(*shape, dtype=F64) * s).to(dtype)

    return (randn(steps, batch, inputs), torch.tensor(lengths), randn(batch, hidden),
            randn(batch, hidden), randn(4 * hidden, inputs, s=scale),
            randn(4 * hidden, hidden, s=scale), randn(4 * hidden, s=scale),
            randn(4 * hidden, s=scale), reverse)


LARGE_LSTM = {
    "T12_B3_H257": dict(steps=12, batch=3, inputs=5, hidden=257, lengths=[7, 12, 1]),
    "T100_B3_H60": dict(steps=100, batch=3, inputs=4, hidden=60, lengths=[37, 100, 64]),
}


def run_lstm_forward_backward(args):
    """The emulated forward (saved activations, then low-memory) and both
    backwards, each backward from its own forward, with random upstream
    gradients. Returns (results by name, the lstm_layer_backward Sample)."""
    x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse = args
    forward = run_emulated("lstm_layer_forward", *args, True)
    upstream = tuple(torch.randn(t.shape, dtype=F64).to(t.dtype) for t in forward[:3])
    backward = Sample("backward", (*upstream, x, lengths, c0, w_ih, w_hh, *forward[3:], reverse,
                                   True), Sample("forward", args))
    low_memory = run_emulated("lstm_layer_forward", *args, True, None, True)
    recompute_args = (*upstream, x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, low_memory[0],
                      low_memory[4], reverse, True)
    return dict(forward=forward, low_memory=low_memory,
                backward=run_emulated("lstm_layer_backward", *backward.args),
                recompute=run_emulated("lstm_layer_backward_recompute", *recompute_args),
                recompute_args=recompute_args), backward


# reverse at H = 257 only, for time
@pytest.mark.parametrize("case,reverse", [("T12_B3_H257", False), ("T12_B3_H257", True),
                                          ("T100_B3_H60", False)],
                         ids=["T12_B3_H257-forward", "T12_B3_H257-reverse", "T100_B3_H60-forward"])
@pytest.mark.parametrize("dtype", EXACT, ids=dtype_id)
def test_large_lstm_layer(dtype, case, reverse):
    args = large_lstm_args(**LARGE_LSTM[case], reverse=reverse, dtype=dtype)
    got, backward = run_lstm_forward_backward(args)
    forward_ref = cached_reference(native_layer_forward, args)
    backward_ref = cached_reference(native_layer_backward, backward)
    judge = Judge(dtype)
    for mode in ("forward", "low_memory"):
        with sample_named(mode):
            judge(got[mode][:3], forward_ref, LSTM_TOL, FORWARD_NAMES[:3])
    for mode in ("backward", "recompute"):
        with sample_named(mode):
            judge(got[mode], backward_ref, LSTM_TOL, LSTM_BACKWARD_NAMES)
    if dtype == F64:  # N < 1024 packed rows: one checkpoint chunk in both backends
        assert_same_as_cpu_backend(got["forward"], CPU_OPS.lstm_layer_forward(*args, True),
                                   LSTM_TOL, FORWARD_NAMES)
        assert_same_as_cpu_backend(got["backward"], CPU_OPS.lstm_layer_backward(*backward.args),
                                   LSTM_TOL, LSTM_BACKWARD_NAMES)
        assert_same_as_cpu_backend(
            got["recompute"], CPU_OPS.lstm_layer_backward_recompute(*got["recompute_args"]),
            LSTM_TOL, LSTM_BACKWARD_NAMES)


POOLINGS = {  # (pooling, key size A or None for keys = h, continue a random state)
    "attention_keys": ("attention", 130, True),
    "attention": ("attention", None, False),
    "mean": ("mean", None, True),
    "last": ("last", None, False),
}


def large_pooled_args(case, pooling, dtype):
    """lstm_layer_pooled_forward's args at a LARGE_LSTM shape (forward direction)."""
    x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = large_lstm_args(**LARGE_LSTM[case],
                                                                   reverse=False, dtype=dtype)
    kind, key_size, continued = POOLINGS[pooling]
    batch, hidden = x.shape[1], w_hh.shape[1]
    attention = kind == "attention"
    query = torch.randn(key_size or hidden, dtype=dtype) if attention else None
    key_weight = torch.randn(key_size, hidden, dtype=dtype) / hidden ** 0.5 if key_size else None
    key_bias = torch.randn(key_size, dtype=dtype) if key_size else None
    state = ((torch.randn(batch, dtype=dtype), torch.rand(batch, dtype=dtype) + 0.5,
              torch.randn(batch, hidden, dtype=dtype)) if continued else (None, None, None))
    return (x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, kind, query, key_weight, key_bias, *state)


# At H = 257 only: the pool-step kernel runs per step (T = 100 adds only
# time, ~10 ms a block of 128 threads).
@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("dtype", EXACT, ids=dtype_id)
def test_large_lstm_layer_pooled_forward(dtype, pooling):
    args = large_pooled_args("T12_B3_H257", pooling, dtype)
    got = run_emulated("lstm_layer_pooled_forward", *args)
    Judge(dtype)(got, lambda d: native_pooled_forward(args, d), LSTM_TOL, POOLED_NAMES)
    if dtype == F64:
        assert_same_as_cpu_backend(got, CPU_OPS.lstm_layer_pooled_forward(*args), LSTM_TOL,
                                   POOLED_NAMES)


@pytest.mark.parametrize("pooling", ["attention_keys", "mean"])
@pytest.mark.parametrize("dtype", EXACT, ids=dtype_id)
def test_pooled_forward_streamed_in_two_chunks(dtype, pooling):
    """Streaming: the second call continues the first's LSTM and pooling
    states, and ends where one call over the whole sequence ends (the
    reference: one pass, fresh state). No lengths: every row runs both chunks."""
    args = large_pooled_args("T12_B3_H257", pooling, dtype)
    x, _, h0, c0, w_ih, w_hh, b_ih, b_hh, kind, query, key_weight, key_bias = args[:12]
    whole = (x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, kind, query, key_weight, key_bias,
             None, None, None)
    weights = (w_ih, w_hh, b_ih, b_hh, kind, query, key_weight, key_bias)
    h_n, c_n, *state = run_emulated("lstm_layer_pooled_forward", x[:5], None, h0, c0, *weights,
                                    None, None, None)
    got = run_emulated("lstm_layer_pooled_forward", x[5:], None, h_n, c_n, *weights, *state)
    Judge(dtype)(got, lambda d: native_pooled_forward(whole, d), LSTM_TOL, POOLED_NAMES)


# Attention pooling: one block of 256 threads per row, features in chunks of
# 32 (D = 45: one full chunk and a partial one), 8 warps over T = 100 steps;
# grad_query's row sum has 256 threads per block over A = 300: 2 blocks.
LARGE_POOL = dict(batch=3, steps=100, features=45, key_size=300, lengths=[100, 1, 57])


def large_pool_forward_sample(with_keys, dtype):
    """masked_attention_pool_forward's args, strided as the samples: values a
    transposed view, keys a slice."""
    B, T, D, A = (LARGE_POOL[k] for k in ("batch", "steps", "features", "key_size"))

    def randn(*shape):
        return torch.randn(*shape, dtype=F64).to(dtype)

    values = randn(T, B, D).transpose(0, 1)
    keys = randn(B, T, A + 5)[..., :A] if with_keys else None
    query = randn(A if with_keys else D) / (A if with_keys else D) ** 0.5
    return Sample("large", (values, keys, query, torch.tensor(LARGE_POOL["lengths"])))


@pytest.mark.parametrize("with_keys", [False, True], ids=["no_keys", "keys"])
@pytest.mark.parametrize("dtype", EXACT, ids=dtype_id)
def test_large_masked_attention_pool(dtype, with_keys):
    forward = large_pool_forward_sample(with_keys, dtype)
    judge = Judge(dtype)
    got = run_emulated("masked_attention_pool_forward", *forward.args)
    judge(got, lambda d: masked_attention_pool(*cast_floats(forward.args, d)), POOL_TOL,
          POOL_FORWARD_NAMES)
    upstream = tuple(torch.randn(t.shape, dtype=F64).to(dtype) for t in got)
    backward = Sample("large", (*upstream, *forward.args, got[1]), forward)
    got_backward = run_emulated("masked_attention_pool_backward", *backward.args)
    judge_pool_backward(judge, backward, got_backward)
    if dtype == F64:
        assert_same_as_cpu_backend(got, CPU_OPS.masked_attention_pool_forward(*forward.args),
                                   POOL_TOL, POOL_FORWARD_NAMES)
        assert_same_as_cpu_backend(got_backward,
                                   CPU_OPS.masked_attention_pool_backward(*backward.args),
                                   POOL_TOL, POOL_BACKWARD_NAMES)


# ------------------------------------------------------------- block order
def run_every_kernel(lstm_args, pooled_args, pool_forward):
    """Every emulated operator once on the multi-block shapes: the flat list
    of every tensor they return."""
    results, _ = run_lstm_forward_backward(lstm_args)
    pooled = run_emulated("lstm_layer_pooled_forward", *pooled_args)
    pool = run_emulated("masked_attention_pool_forward", *pool_forward.args)
    grads = torch.Generator().manual_seed(5)
    upstream = [torch.randn(t.shape, dtype=t.dtype, generator=grads) for t in pool]
    pool_backward = run_emulated("masked_attention_pool_backward", *upstream,
                                 *pool_forward.args, pool[1])
    return [t for name in ("forward", "low_memory", "backward", "recompute")
            for t in results[name]] + [*pooled, *pool, *pool_backward]


def test_block_order_changes_no_bit(monkeypatch):
    """Forward, reverse and shuffled block orders give bitwise the same
    results (no kernel reads what another block writes in the same launch)."""
    dtype = torch.float32
    lstm_args = large_lstm_args(**LARGE_LSTM["T12_B3_H257"], reverse=False, dtype=dtype)
    pooled_args = large_pooled_args("T12_B3_H257", "attention_keys", dtype)
    pool_forward = large_pool_forward_sample(True, dtype)
    by_order = {}
    for order in ("forward", "reverse", "shuffled:1"):
        monkeypatch.setenv("SEQCLS_CUDA_EMU_BLOCK_ORDER", order)
        before = emu_stats()
        torch.manual_seed(0)  # the same upstream gradients each time
        by_order[order] = run_every_kernel(lstm_args, pooled_args, pool_forward)
        after = emu_stats()
        # Several blocks per launch on average: the orders differ.
        assert after["blocks"] - before["blocks"] > 2 * (after["launches"] - before["launches"])
    for order, results in by_order.items():
        assert len(results) == len(by_order["forward"])
        for i, (a, b) in enumerate(zip(results, by_order["forward"])):
            assert torch.equal(a, b), f"{order}: result {i} differs from the forward order's"
    # The order is read at every launch: a bad one reaches the emulator.
    monkeypatch.setenv("SEQCLS_CUDA_EMU_BLOCK_ORDER", "sideways")
    with pytest.raises(RuntimeError, match="SEQCLS_CUDA_EMU_BLOCK_ORDER"):
        EMU.masked_attention_pool_forward(*pool_forward.args)


# ------------------------------------------------------------------ the GRU
GRU_NAMES = ("output", "h_n", "grad_x", "grad_h0", "grad_w_ih", "grad_w_hh", "grad_b_ih",
             "grad_b_hh")


def hidden_state_case(seed, gates):
    """A layer's inputs in float64 for a cell of `gates` gates whose only
    state is h (several step blocks: B * H = 333 > 256, lengths that retire
    rows mid-batch): (x, lengths, h0, [w_ih, w_hh, b_ih, b_hh], its upstream
    gradients [of the output, of h_n])."""
    g = torch.Generator().manual_seed(seed)
    T, B, I, H = 9, 9, 4, 37
    x = torch.randn(T, B, I, dtype=F64, generator=g)
    lengths = torch.tensor([9, 3, 7, 1, 9, 2, 5, 8, 4])
    h0 = torch.randn(B, H, dtype=F64, generator=g)
    weights = [torch.randn(shape, dtype=F64, generator=g) * 0.3
               for shape in ((gates * H, I), (gates * H, H), (gates * H,), (gates * H,))]
    upstream = [torch.randn(T, B, H, dtype=F64, generator=g),
                torch.randn(B, H, dtype=F64, generator=g)]
    return x, lengths, h0, weights, upstream


def gru_case():
    return hidden_state_case(seed=3, gates=3)


def gru_reference(case, reverse, dtype):
    """The outputs and gradients of reference.gru_layer (plain PyTorch, autograd) in dtype."""
    x, lengths, h0, weights, upstream = case
    leaves = [t.to(dtype).requires_grad_(True) for t in (x, h0, *weights)]
    out, h_n = seqcls_fast.reference.gru_layer(leaves[0], lengths, leaves[1], *leaves[2:], reverse)
    grads = torch.autograd.grad((out, h_n), leaves, [u.to(dtype) for u in upstream])
    return [out, h_n, *grads]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_gru_layer(recurrence, dtype, reverse):
    """gru_layer_forward and gru_layer_backward (and the low-memory pair,
    gru_layer_backward_recompute) on the emulated CUDA backend against the
    plain-PyTorch GRU, every output and gradient; float64 also against the
    CPU backend."""
    case = gru_case()
    x, lengths, h0 = cast_floats(case[:3], dtype)
    w_ih, w_hh, b_ih, b_hh = cast_floats(case[3], dtype)
    grad_out, grad_h_n = cast_floats(case[4], dtype)
    forward = run_on(recurrence, "gru_layer_forward", x, lengths, h0, w_ih, w_hh, b_ih, b_hh,
                     reverse, True)
    out, h_n, gates, cell, h_prev = forward
    assert cell.dtype == STATE_DTYPE.get(dtype, dtype)
    backward = run_on(recurrence, "gru_layer_backward", grad_out, grad_h_n, x, lengths, w_ih,
                      w_hh, gates, cell, h_prev, reverse, True)
    got = [out, h_n, *backward]
    reference = cached_reference(gru_reference, case, reverse)
    judge = Judge(dtype)
    judge(got, reference, LSTM_TOL, GRU_NAMES)
    # Low memory: the forward keeps nothing, the backward rebuilds from the output.
    low = run_on(recurrence, "gru_layer_forward", x, lengths, h0, w_ih, w_hh, b_ih, b_hh,
                 reverse, True, None, True)
    assert [t.size(0) for t in low[2:]] == [0, 0, 0]
    rebuilt = run_on(recurrence, "gru_layer_backward_recompute", grad_out, grad_h_n, x, lengths,
                     h0, w_ih, w_hh, b_ih, b_hh, low[0], reverse, True)
    judge([low[0], low[1], *rebuilt], reference, LSTM_TOL, GRU_NAMES)
    judge.finish()
    if dtype == F64:
        on_cpu = CPU_OPS.gru_layer_forward(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, reverse, True)
        assert_same_as_cpu_backend(forward, on_cpu, LSTM_TOL, ("output", "h_n", "gates", "cell",
                                                               "h_prev"))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_gru_layer_pooled(recurrence, dtype):
    """gru_layer_pooled_forward on the emulated CUDA backend (the forward
    step kernels, then the online pooling step per step, no output written)
    against the plain-PyTorch GRU and the pooling's closed form, every pooling,
    fresh and continued; float64 also against the CPU backend."""
    from test_gru import POOLED_CASES, gru_pooled_args, gru_pooled_reference
    names = ("h_n", "pool_max", "pool_denom", "pool_sum")
    judge = Judge(dtype)
    for case in POOLED_CASES:
        with sample_named("-".join(map(str, case))):
            args = gru_pooled_args(*case, dtype)
            got = run_on(recurrence, "gru_layer_pooled_forward", *args)
            judge(got, lambda d, args=args: gru_pooled_reference(args, d), LSTM_TOL, names)
            assert got[1].dtype == STATE_DTYPE.get(dtype, dtype)
            if dtype == F64:
                assert_same_as_cpu_backend(got, CPU_OPS.gru_layer_pooled_forward(*args), LSTM_TOL,
                                           names)
    judge.finish()


# ------------------------------------------------------------------ the RNN
RNN_NAMES = ("output", "h_n", "grad_x", "grad_h0", "grad_w_ih", "grad_w_hh", "grad_bias")


def rnn_reference(case, reverse, nonlinearity, dtype):
    """The outputs and gradients of reference.rnn_layer (plain PyTorch,
    autograd) in dtype; one bias gradient (b_ih's, equal to b_hh's)."""
    x, lengths, h0, weights, upstream = case
    leaves = [t.to(dtype).requires_grad_(True) for t in (x, h0, *weights)]
    out, h_n = seqcls_fast.reference.rnn_layer(leaves[0], lengths, leaves[1], *leaves[2:],
                                               nonlinearity, reverse)
    grads = torch.autograd.grad((out, h_n), leaves, [u.to(dtype) for u in upstream])
    return [out, h_n, *grads[:-1]]


def rnn_case(nonlinearity):
    """An RNN layer's inputs and upstream gradients (hidden_state_case). For
    relu, b_hh puts each unit's pre-activations well to one side of relu's
    kink (+-3, alternating units): in half precision a pre-activation within
    rounding of 0 may land on either side, which changes its row's gradients
    by O(1) in ours and in PyTorch's own half-precision computation alike, so
    no error bound could judge it (test_rnn_layer checks the premise)."""
    x, lengths, h0, weights, upstream = hidden_state_case(seed=5, gates=1)
    if nonlinearity == "relu":  # W_hh smaller too: active units' h grows to ~3
        H = h0.shape[1]
        weights[1] = weights[1] * 0.1
        weights[3] = weights[3] + 3.0 * (1 - 2 * (torch.arange(H) % 2)).to(F64)
    return x, lengths, h0, weights, upstream


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_rnn_layer(dtype, reverse, nonlinearity):
    """rnn_layer_forward and rnn_layer_backward (and the low-memory pair) on
    the emulated CUDA backend against the plain-PyTorch RNN, every output and
    gradient; float64 also against the CPU backend."""
    case = rnn_case(nonlinearity)
    x, lengths, h0 = cast_floats(case[:3], dtype)
    w_ih, w_hh, b_ih, b_hh = cast_floats(case[3], dtype)
    grad_out, grad_h_n = cast_floats(case[4], dtype)
    forward = run_emulated("rnn_layer_forward", x, lengths, h0, w_ih, w_hh, b_ih, b_hh,
                           nonlinearity, reverse, True)
    out, h_n, gates, h_prev = forward
    backward = run_emulated("rnn_layer_backward", grad_out, grad_h_n, x, lengths, w_ih, w_hh,
                            gates, h_prev, nonlinearity, reverse, True)
    reference = cached_reference(rnn_reference, case, reverse, nonlinearity)
    if nonlinearity == "relu":  # rnn_case's premise: every unit on relu's side of the truth
        assert torch.equal(out > 0, reference(F64)[0] > 0)
    judge = Judge(dtype)
    judge([out, h_n, *backward], reference, LSTM_TOL, RNN_NAMES)
    low = run_emulated("rnn_layer_forward", x, lengths, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity,
                       reverse, True, None, True)
    assert [t.size(0) for t in low[2:]] == [0, 0]
    rebuilt = run_emulated("rnn_layer_backward_recompute", grad_out, grad_h_n, x, lengths, h0,
                           w_ih, w_hh, b_ih, b_hh, low[0], nonlinearity, reverse, True)
    judge([low[0], low[1], *rebuilt], reference, LSTM_TOL, RNN_NAMES)
    judge.finish()
    if dtype == F64:
        on_cpu = CPU_OPS.rnn_layer_forward(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity,
                                           reverse, True)
        assert_same_as_cpu_backend(forward, on_cpu, LSTM_TOL, ("output", "h_n", "gates",
                                                               "h_prev"))


# ------------------------------------------------ the persistent recurrence
def cooperative_launches():
    return emu_stats()["cooperative_launches"]


def runs_persistent(hidden, dtype, cell="lstm"):
    """The fallback rule of recurrent_cuda.cu (README, "How it works") for the
    emulator's device (4 multiprocessors, 48 KiB of dynamic shared memory per
    block): the LSTM or the GRU, one block per multiprocessor (at most H),
    each block's G U H weights (G = 4, 3) in float (double for float64), U =
    ceil(H / blocks)."""
    if cell not in ("lstm", "gru"):
        return False
    blocks = min(hidden, 4)
    units = -(-hidden // blocks)
    acc_bytes = 8 if dtype == F64 else 4
    gates = 4 if cell == "lstm" else 3
    return gates * units * hidden * acc_bytes <= 48 * 1024


def test_persistent_recurrence_is_bitwise_repeatable_across_block_orders(monkeypatch):
    """Each (row, unit) is one thread's, its sums in a fixed order: the
    persistent forward and backward (saved activations, the low-memory
    backward that replays the forward, the pooled forward) are bitwise the
    same whatever order the blocks start in, and run after run."""
    monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    args = large_lstm_args(**LARGE_LSTM["T100_B3_H60"], reverse=True, dtype=torch.float32)
    pooled_args = large_pooled_args("T100_B3_H60", "attention_keys", torch.float32)
    runs = []
    for order in ("forward", "reverse", "shuffled:3", "shuffled:3"):
        monkeypatch.setenv("SEQCLS_CUDA_EMU_BLOCK_ORDER", order)
        before = cooperative_launches()
        torch.manual_seed(0)
        results, _ = run_lstm_forward_backward(args)
        pooled = run_emulated("lstm_layer_pooled_forward", *pooled_args)
        # forward (x2), the backward, the low-memory replay and backward, pooled
        assert cooperative_launches() - before >= 6
        runs.append([t for name in ("forward", "low_memory", "backward", "recompute")
                     for t in results[name]] + list(pooled))
    for order, results in zip(("reverse", "shuffled:3", "shuffled:3 again"), runs[1:]):
        for i, (a, b) in enumerate(zip(results, runs[0], strict=True)):
            assert torch.equal(a, b), f"{order}: result {i} differs from the forward order's"


@pytest.mark.parametrize("dtype", EXACT, ids=dtype_id)
def test_persistent_at_h257_on_a_larger_emulated_device(monkeypatch, dtype):
    """H = 257 on the persistent kernels: an emulated device of 16
    multiprocessors with Hopper's 227 KiB per block (SEQCLS_CUDA_EMU_SMS,
    _SHARED_KIB) holds 17 units' W_hh rows per block (70 KiB in float, 140 in
    double); forward, backward and the low-memory pair in both directions
    against nn.LSTM."""
    monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    monkeypatch.setenv("SEQCLS_CUDA_EMU_SMS", "16")
    monkeypatch.setenv("SEQCLS_CUDA_EMU_SHARED_KIB", "227")
    for reverse in (False, True):
        args = large_lstm_args(**LARGE_LSTM["T12_B3_H257"], reverse=reverse, dtype=dtype)
        before = cooperative_launches()
        got, backward = run_lstm_forward_backward(args)
        assert cooperative_launches() - before >= 5, "not the persistent path"
        judge = Judge(dtype)
        forward_ref = cached_reference(native_layer_forward, args)
        backward_ref = cached_reference(native_layer_backward, backward)
        for mode in ("forward", "low_memory"):
            with sample_named(f"{mode}-reverse{reverse:d}"):
                judge(got[mode][:3], forward_ref, LSTM_TOL, FORWARD_NAMES[:3])
        for mode in ("backward", "recompute"):
            with sample_named(f"{mode}-reverse{reverse:d}"):
                judge(got[mode], backward_ref, LSTM_TOL, LSTM_BACKWARD_NAMES)
        judge.finish()


@pytest.mark.parametrize("case", [("lstm", 60, torch.float32), ("lstm", 60, F64),
                                  ("lstm", 257, torch.float32), ("lstm", 90, F64),
                                  ("gru", 20, torch.float32), ("gru", 60, F64),
                                  ("gru", 130, torch.float32), ("rnn", 20, torch.float32),
                                  ("steps", 20, torch.float32)],
                         ids=lambda c: f"{c[0]}-H{c[1]}-{dtype_id(c[2])}")
def test_persistent_fallback_rule(monkeypatch, case):
    """The persistent kernel runs exactly where the documented rule says
    (runs_persistent), else the per-step path, with the same results: W_hh
    rows past 48 KiB per block (the LSTM at H = 257 in float32 or 90 in
    float64, the GRU at 130 in float32, on the emulator's 4
    multiprocessors), the RNN (not built for it) and
    SEQCLS_FAST_CUDA_RECURRENCE=steps fall back."""
    cell, hidden, dtype = case
    if cell == "steps":
        monkeypatch.setenv("SEQCLS_FAST_CUDA_RECURRENCE", "steps")
    else:
        monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    gates = {"gru": 3, "rnn": 1}.get(cell, 4)
    g = torch.Generator().manual_seed(hidden)
    x = torch.randn(6, 3, 4, dtype=F64, generator=g).to(dtype)
    lengths = torch.tensor([6, 2, 5])
    weights = [(torch.randn(shape, dtype=F64, generator=g) * hidden ** -0.5).to(dtype)
               for shape in ((gates * hidden, 4), (gates * hidden, hidden), (gates * hidden,),
                             (gates * hidden,))]
    before = cooperative_launches()
    if cell in ("gru", "rnn"):
        op = f"{cell}_layer_forward"
        extra = ("tanh",) if cell == "rnn" else ()
        got = run_emulated(op, x, lengths, None, *weights, *extra, False, False)
        want = getattr(CPU_OPS, op)(x.double(), lengths, None, *(w.double() for w in weights),
                                    *extra, False, False)
    else:
        got = run_emulated("lstm_layer_forward", x, lengths, None, None, *weights, False, False)
        want = CPU_OPS.lstm_layer_forward(x.double(), lengths, None, None,
                                          *(w.double() for w in weights), False, False)
    ran_persistent = cooperative_launches() > before
    assert ran_persistent == (cell != "steps" and runs_persistent(hidden, dtype, cell))
    torch.testing.assert_close(got[0].double(), want[0], **tolerance(LSTM_TOL, "cuda", dtype))



# ---------------------------------------- lengths on the device (no host copy)
def training_step_case(cell):
    """A bidirectional layer of `cell` with attention pooling over its
    outputs, in float64: inputs, per-direction weights, the pooling query and
    the upstream gradients of the pooled features and of h_n. Lengths retire
    rows mid-batch, one row runs all T steps, one runs 1."""
    g = torch.Generator().manual_seed(11)
    T, B, I, H = 8, 5, 3, 6
    gates = 4 if cell == "lstm" else 3
    randn = lambda *shape: torch.randn(*shape, dtype=F64, generator=g)  # noqa: E731
    return dict(
        x=randn(T, B, I), lengths=torch.tensor([3, 8, 1, 5, 8]), h0=randn(B, H),
        c0=randn(B, H) if cell == "lstm" else None,
        weights=[[randn(*shape) * 0.3 for shape in ((gates * H, I), (gates * H, H),
                                                     (gates * H,), (gates * H,))]
                 for _ in range(2)],
        query=randn(2 * H), grad_pooled=randn(B, 2 * H), grad_h_n=randn(B, H))


def emulated_training_step(cell, case, lengths_arg, plan, low_memory=False):
    """One training step of training_step_case's model on the emulated ops,
    as the modules run it: both directions forward (saved activations, or
    with low_memory the checkpoints the backward rebuilds from), the pooling
    forward and backward, both directions backward. Returns pooled, then h_n
    of each direction, then grad_x, grad_h0 and the weight gradients (both
    directions, sorted as the reference's)."""
    x, h0, c0 = case["x"], case["h0"], case["c0"]
    states = (h0, c0) if cell == "lstm" else (h0,)
    forward = [run_emulated(f"{cell}_layer_forward", x, lengths_arg, *states, *w, reverse, True,
                            plan, low_memory)
               for reverse, w in ((False, case["weights"][0]), (True, case["weights"][1]))]
    values = torch.cat([f[0] for f in forward], dim=2).transpose(0, 1)  # [B, T, 2H]
    pooled, weights = run_emulated("masked_attention_pool_forward", values, None, case["query"],
                                   lengths_arg, plan)
    grad_values, _, _ = run_emulated("masked_attention_pool_backward", case["grad_pooled"],
                                     torch.zeros_like(weights), values, None, case["query"],
                                     lengths_arg, weights, plan)
    H = h0.shape[1]
    grad_x, grads = torch.zeros_like(x), []
    for direction, f in enumerate(forward):
        grad_out = grad_values.transpose(0, 1)[..., direction * H:(direction + 1) * H]
        weights_here = case["weights"][direction]
        w_ih, w_hh = weights_here[:2]
        reverse = bool(direction)
        if cell == "lstm":
            upstream = (grad_out, case["grad_h_n"], torch.zeros_like(h0))
            got = (run_emulated("lstm_layer_backward_recompute", *upstream, x, lengths_arg, h0,
                                c0, *weights_here, f[0], f[4], reverse, True, plan)
                   if low_memory else
                   run_emulated("lstm_layer_backward", *upstream, x, lengths_arg, c0, w_ih, w_hh,
                                *f[3:], reverse, True, plan))
            grad_x += got[0]
            grads += [got[1], got[2], got[3], got[4], got[5], got[5]]
        else:
            got = (run_emulated("gru_layer_backward_recompute", grad_out, case["grad_h_n"], x,
                                lengths_arg, h0, *weights_here, f[0], reverse, True, plan)
                   if low_memory else
                   run_emulated("gru_layer_backward", grad_out, case["grad_h_n"], x, lengths_arg,
                                w_ih, w_hh, *f[2:], reverse, True, plan))
            grad_x += got[0]
            grads += list(got[1:])
    return [pooled, forward[0][1], forward[1][1], grad_x, *grads]


def reference_training_step(cell, case):
    """emulated_training_step's results from plain PyTorch (reference.*_layer,
    masked attention pooling, autograd), in float64."""
    lengths = case["lengths"]
    x = case["x"].clone().requires_grad_(True)
    per_direction = []
    for direction in range(2):
        states = [s.clone().requires_grad_(True) for s in (case["h0"], case["c0"]) if s is not None]
        weights = [w.clone().requires_grad_(True) for w in case["weights"][direction]]
        layer = seqcls_fast.reference.lstm_layer if cell == "lstm" else seqcls_fast.reference.gru_layer
        out, h_n, *_ = layer(x, lengths, *states, *weights, bool(direction))
        per_direction.append((out, h_n, states, weights))
    values = torch.cat([p[0] for p in per_direction], dim=2).transpose(0, 1)
    pooled, _ = masked_attention_pool(values, None, case["query"], lengths)
    loss = (pooled * case["grad_pooled"]).sum() + sum((p[1] * case["grad_h_n"]).sum()
                                                     for p in per_direction)
    leaves = [x] + [t for p in per_direction for t in (*p[2], *p[3])]
    grads = torch.autograd.grad(loss, leaves)
    return [pooled.detach(), per_direction[0][1].detach(), per_direction[1][1].detach(), *grads]


@pytest.mark.parametrize("memory", ["fast", "low"])
@pytest.mark.parametrize("given", ["plan", "lengths"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_training_step_with_device_lengths_makes_no_host_copy(monkeypatch, cell, given,
                                                                         memory):
    """Lengths on the device (SEQCLS_CUDA_EMU_DEVICE_LENGTHS=1, the
    emulator's model of GPU lengths): a training step (both directions'
    persistent forward and backward, or the low-memory forward and the
    backward that replays it, and the attention pooling) plans and runs on
    the device: zero host copies counted (length_plan_stats), the step plan
    expanded there (T x B slots), and every result as plain PyTorch's in
    float64."""
    monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    monkeypatch.setenv("SEQCLS_CUDA_EMU_DEVICE_LENGTHS", "1")
    case = training_step_case(cell)
    T, B = case["x"].shape[:2]
    before, launches = seqcls_fast._C.length_plan_stats(), cooperative_launches()
    plan = EMU.length_plan(case["lengths"], T, B) if given == "plan" else None
    # Every uninitialized buffer NaN (torch.utils.deterministic), and x's
    # padding NaN: a slot the kernels leave unwritten, or padding the GEMMs
    # read (times a zero gradient), shows.
    padding = torch.arange(T)[:, None] >= case["lengths"][None, :]
    nan_padded = dict(case, x=case["x"].masked_fill(padding[:, :, None], float("nan")))
    with deterministic_with_nan_filled_buffers():
        got = emulated_training_step(cell, nan_padded,
                                     case["lengths"] if given == "lengths" else None, plan,
                                     low_memory=memory == "low")
    after = seqcls_fast._C.length_plan_stats()
    assert after["host_copies"] == before["host_copies"]
    # Made on the device: once (a plan), or by each of the 6 calls (raw lengths).
    assert after["plans_made"] - before["plans_made"] == (1 if given == "plan" else 6)
    # forward and backward, both directions (low memory: and the replay)
    assert cooperative_launches() - launches == (4 if memory == "fast" else 6)
    want = reference_training_step(cell, case)
    names = [f"result{i}" for i in range(len(want))]
    assert_close_named(got, want, tolerance(LSTM_TOL, "cuda", F64), names)


def test_device_plan_layout_holds_the_packed_rows_in_its_slots(monkeypatch):
    """A device plan's saved activations are T x B slots, step s of sorted
    row j at s B + j; the running slots, in order, are the host plan's packed
    rows (the same kernel; the input projection's GEMM over T B rows instead
    of N may round differently), the others zero h_prev."""
    monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    case = training_step_case("lstm")
    x, lengths = case["x"], case["lengths"]
    T, B = x.shape[:2]
    args = (x, None, case["h0"], case["c0"], *case["weights"][0], True, True)
    host = run_emulated("lstm_layer_forward", *args, EMU.length_plan(lengths, T, B))
    monkeypatch.setenv("SEQCLS_CUDA_EMU_DEVICE_LENGTHS", "1")
    device = run_emulated("lstm_layer_forward", *args, EMU.length_plan(lengths, T, B))
    sorted_lengths = torch.sort(lengths, descending=True, stable=True).values
    running = (sorted_lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)).reshape(-1)
    assert device[3].shape[0] == T * B and host[3].shape[0] == int(lengths.sum())
    for name, h, d in zip(("gates", "cell", "h_prev"), host[3:], device[3:]):
        torch.testing.assert_close(d[running], h, **tolerance(LSTM_TOL, "cuda", F64), msg=name)
    assert not device[5][~running].any()


def test_device_lengths_on_the_per_step_path_cross_to_the_host_once(monkeypatch):
    """Where the kernels plan on the host (the per-step path here, forced),
    a device plan is copied to the host once per batch (counted), however
    many directions and passes read it; results as plain PyTorch's."""
    monkeypatch.setenv("SEQCLS_FAST_CUDA_RECURRENCE", "steps")
    monkeypatch.setenv("SEQCLS_CUDA_EMU_DEVICE_LENGTHS", "1")
    case = training_step_case("gru")
    T, B = case["x"].shape[:2]
    before = seqcls_fast._C.length_plan_stats()["host_copies"]
    got = emulated_training_step("gru", case, None, EMU.length_plan(case["lengths"], T, B))
    assert seqcls_fast._C.length_plan_stats()["host_copies"] - before == 1
    want = reference_training_step("gru", case)
    assert_close_named(got, want, tolerance(LSTM_TOL, "cuda", F64),
                       [f"result{i}" for i in range(len(want))])


def test_bad_device_lengths_and_plans_raise(monkeypatch):
    """Lengths and plans on the device are checked there (a GPU raises at the
    next synchronization, the emulator at once), naming what is wrong."""
    monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    monkeypatch.setenv("SEQCLS_CUDA_EMU_DEVICE_LENGTHS", "1")
    case = training_step_case("lstm")
    x = case["x"]
    T, B = x.shape[:2]
    args = (case["h0"], case["c0"], *case["weights"][0], False, True)
    for bad in ([3, 8, 0, 5, 8], [3, 9, 1, 5, 8]):
        with pytest.raises(RuntimeError, match=r"lengths must lie in \[1, T\] = \[1, 8\]"):
            EMU.length_plan(torch.tensor(bad), T, B)
        with pytest.raises(RuntimeError, match=r"lengths must lie in \[1, T\]"):
            EMU.lstm_layer_forward(x, torch.tensor(bad), *args)
    plan = EMU.length_plan(case["lengths"], T, B)
    for row, column, value in ((0, 0, 0), (1, 0, 7), (2, 1, 2)):  # a repeated row, a wrong length
        broken = plan.clone()
        broken[row, column] = value
        with pytest.raises(RuntimeError, match="plan is not a length plan of this batch"):
            EMU.lstm_layer_forward(x, None, *args, broken)


@pytest.mark.parametrize("pooling", ["attention_keys", "mean", "last"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_pooled_inference_with_device_lengths_makes_no_host_copy(monkeypatch, cell,
                                                                           pooling):
    """The fused pooled forward on a plan expanded on the device pools each
    step's running rows only (the pool step reads the step's active rows
    there): no host copy, and the pooling state and final states are the
    host plan's (the same kernels; the projection GEMM over T B rows may
    round differently). Uninitialized buffers are NaN-filled."""
    monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    case = training_step_case(cell)
    x, lengths = case["x"], case["lengths"]
    T, B, H = x.shape[0], x.shape[1], case["h0"].shape[1]
    g = torch.Generator().manual_seed(5)
    mode = "attention" if pooling == "attention_keys" else pooling
    attention = mode == "attention"
    query = torch.randn(4, dtype=F64, generator=g) if attention else None
    key_weight = torch.randn(4, H, dtype=F64, generator=g) if attention else None
    key_bias = torch.randn(4, dtype=F64, generator=g) if attention else None
    states = (case["h0"], case["c0"]) if cell == "lstm" else (case["h0"],)
    args = (x, None, *states, *case["weights"][0], mode, query, key_weight, key_bias, None, None,
            None)
    op = f"{cell}_layer_pooled_forward"
    host = run_emulated(op, *args, EMU.length_plan(lengths, T, B))
    monkeypatch.setenv("SEQCLS_CUDA_EMU_DEVICE_LENGTHS", "1")
    before = seqcls_fast._C.length_plan_stats()["host_copies"]
    launches = cooperative_launches()
    with deterministic_with_nan_filled_buffers():
        device = run_emulated(op, *args, EMU.length_plan(lengths, T, B))
    assert seqcls_fast._C.length_plan_stats()["host_copies"] == before
    assert cooperative_launches() > launches
    names = [f"result{i}" for i in range(len(host))]
    assert_close_named(device, host, tolerance(LSTM_TOL, "cuda", F64), names)


@pytest.mark.parametrize("pooling", ["attention_keys", "mean"])
def test_persistent_pooled_forward_pools_a_segment_in_one_launch(monkeypatch, pooling):
    """After a persistent segment the pooling of all its steps is one launch
    (pool_segment_kernel: each row's steps in order), not one per step, which
    would cost a GPU a launch per step: the pooled forward of 100 steps makes
    a handful of launches, and pools as the per-step path does."""
    monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    args = large_pooled_args("T100_B3_H60", pooling, torch.float32)
    before = emu_stats()
    got = run_emulated("lstm_layer_pooled_forward", *args)
    after = emu_stats()
    assert after["cooperative_launches"] - before["cooperative_launches"] == 1
    assert after["launches"] - before["launches"] <= 4  # padding, recurrence, pooling
    monkeypatch.setenv("SEQCLS_FAST_CUDA_RECURRENCE", "steps")
    per_step = run_emulated("lstm_layer_pooled_forward", *args)
    assert_close_named(got, per_step, tolerance(LSTM_TOL, "cuda", torch.float32), POOLED_NAMES)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_empty_batch_with_device_lengths(monkeypatch, cell):
    """B = 0 with device lengths: nothing to launch (a GPU refuses a grid of
    0 blocks, and so does the emulator), empty results of the right shapes."""
    monkeypatch.delenv("SEQCLS_FAST_CUDA_RECURRENCE", raising=False)
    monkeypatch.setenv("SEQCLS_CUDA_EMU_DEVICE_LENGTHS", "1")
    T, I, H = 5, 3, 4
    gates = 4 if cell == "lstm" else 3
    x, lengths = torch.randn(T, 0, I, dtype=F64), torch.zeros(0, dtype=torch.long)
    weights = [torch.randn(gates * H, n, dtype=F64) for n in (I, H)]
    states = (None, None) if cell == "lstm" else (None,)
    plan = EMU.length_plan(lengths, T, 0)
    forward = getattr(EMU, f"{cell}_layer_forward")(x, None, *states, *weights, None, None, True,
                                                    True, plan)
    assert forward[0].shape == (T, 0, H) and forward[1].shape == (0, H)
    grad_out, grad_h = torch.zeros(T, 0, H, dtype=F64), torch.zeros(0, H, dtype=F64)
    if cell == "lstm":
        grads = EMU.lstm_layer_backward(grad_out, grad_h, grad_h, x, None, None, *weights,
                                        *forward[3:], True, True, plan)
    else:
        grads = EMU.gru_layer_backward(grad_out, grad_h, x, None, *weights, *forward[2:], True,
                                       True, plan)
    assert grads[0].shape == x.shape and not grads[-3].any()
