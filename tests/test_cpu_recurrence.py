"""The CPU's persistent recurrence (float32; an AVX-512 build and an AVX2
build of one kernel, for the LSTM and the GRU) and the GEMM-per-step path
(float64, other CPUs, or SEQCLS_FAST_CPU_RECURRENCE=steps): every path and
cell against the float64 reference
at the shapes where its blocking has edges, bitwise repeatability, the
low-memory backward replaying the same kernel, and its cache of packed
weights following in-place updates. Each path is selected explicitly
(SEQCLS_FAST_CPU_ISA caps the build), so one run on an AVX-512 machine tests
both builds; a build the CPU lacks is skipped, said so."""
import copy
import sys

import pytest
import torch

import seqcls_fast as sf
from helpers import (assert_float32_within_pytorchs_own, assert_matches_packed,
                     forward_backward, make_native)
from seqcls_fast import _C
from seqcls_fast.apps.bench.report import cpu_features
from seqcls_fast.reference import NativeLSTMClassifier, packed_lstm

PERSISTENT = ["avx512", "avx2"]
PATHS = PERSISTENT + ["steps"]
CELLS = ["lstm", "gru"]


# What each persistent build needs, read from the CPU, not from the library
# (test_each_path_is_the_one_that_runs checks the library's choice against it).
_NEEDS = {"avx512": {"avx512f"}, "avx2": {"avx2", "fma"}}


def _why_not(path):
    """None where `path` runs on this machine, else why not."""
    if path == "steps":
        return None
    if not sys.platform.startswith("linux"):
        return "the persistent recurrence needs the OpenMP build (Linux)"
    flags = cpu_features() or {}
    missing = {flag for flag in _NEEDS[path] if not flags.get(flag)}
    return f"this CPU lacks {', '.join(sorted(missing))}" if missing else None


def _select(monkeypatch, path):
    """Makes float32 calls run `path` (skipping where it cannot run)."""
    why = _why_not(path)
    if why:
        pytest.skip(f"{path} recurrence: {why}")
    if path == "steps":
        monkeypatch.setenv("SEQCLS_FAST_CPU_RECURRENCE", "steps")
    else:
        monkeypatch.setenv("SEQCLS_FAST_CPU_RECURRENCE", "fused")
        monkeypatch.setenv("SEQCLS_FAST_CPU_ISA", path)


# Hidden sizes around the blocks (16 units AVX-512, 8 AVX2) and the tiles (6
# rows, 3 rows) of the kernel; batches with full and partial tiles; lengths
# that retire rows mid-tile.
SHAPES = [  # (T, B, I, H)
    (9, 1, 3, 1),
    (13, 7, 5, 15),
    (11, 6, 4, 16),
    (17, 13, 8, 17),
    (6, 20, 3, 40),
    (5, 3, 2, 64),
]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    _select(monkeypatch, request.param)
    return request.param


@pytest.fixture(params=PERSISTENT)
def persistent(request, monkeypatch):
    _select(monkeypatch, request.param)
    return request.param


@pytest.fixture(params=CELLS)
def cell(request):
    return request.param


def _native(cell, input_size, hidden_size, num_layers=1, bidirectional=False,
            dtype=torch.float64):
    """An nn.LSTM (helpers.make_native) or an nn.GRU with weights fixed by seed 0."""
    if cell == "lstm":
        return make_native(input_size, hidden_size, num_layers, bidirectional, dtype=dtype)
    torch.manual_seed(0)
    return torch.nn.GRU(input_size, hidden_size, num_layers,
                        bidirectional=bidirectional).to(dtype=dtype)


def _initial_states(cell, layers, batch, hidden, dtype=torch.float64):
    """hx as forward_backward takes it: (h0, c0) for the LSTM, (h0,) for the GRU."""
    return tuple(torch.randn(layers, batch, hidden, dtype=dtype)
                 for _ in range(2 if cell == "lstm" else 1))


def test_each_path_is_the_one_that_runs(monkeypatch, cell):
    """Each path the CPU supports is the one the library reports and runs
    (every case of this file would otherwise test one path twice): the three
    sum in different orders, so some output and gradient bits differ between
    any two, while each is as close to the float64 truth as PyTorch's own
    float32."""
    native = _native(cell, 8, 64)
    x = torch.randn(30, 7, 8, dtype=torch.float64)
    lengths = torch.tensor([30, 29, 17, 17, 9, 3, 1])
    truth = forward_backward(native, x, lengths, None, packed=True)
    torch32 = forward_backward(copy.deepcopy(native).float(), x.float(), lengths, None,
                               packed=True)
    results = {}
    for path in PATHS:
        if _why_not(path):
            continue
        with monkeypatch.context() as patch:
            _select(patch, path)
            assert _C.cpu_kernel_paths()["recurrence"] == path
            got = forward_backward(_sf_from_native(native), x.float(), lengths, None,
                                   packed=False)
        assert_float32_within_pytorchs_own([got[n] for n in truth], [torch32[n] for n in truth],
                                           list(truth.values()), list(truth))
        results[path] = got
    names = list(results)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            for name in ("out", "grad_x", "grad_weight_hh_l0"):
                assert not torch.equal(results[first][name], results[second][name]), \
                    (first, second, name)


def _sf_from_native(native, **kwargs):
    """Our float32 twin of an nn.LSTM or nn.GRU."""
    ours = sf.LSTM if isinstance(native, torch.nn.LSTM) else sf.GRU
    model = ours(native.input_size, native.hidden_size, native.num_layers,
                 bidirectional=native.bidirectional, dtype=torch.float32, **kwargs)
    model.load_state_dict(native.state_dict())
    return model


def _assert_within_pytorchs_own(native, model, x, lengths, hx=None):
    """Every output and gradient of `model` (float32) within the float32
    rule of the float64 `native` on the packed batch, against float32
    nn.LSTM's own error on it (helpers.assert_matches_packed). Returns
    ours."""
    got = forward_backward(model, x.float(), lengths,
                           tuple(s.float() for s in hx) if hx else None, packed=False)
    assert_matches_packed(got, native, x, lengths, hx, "cpu", torch.float32)
    return got


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_and_backward_match_float64_reference(path, cell, shape, bidirectional):
    T, B, I, H = shape
    native = _native(cell, I, H, num_layers=2, bidirectional=bidirectional)
    model = _sf_from_native(native)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    hx = _initial_states(cell, 2 * (2 if bidirectional else 1), B, H)
    _assert_within_pytorchs_own(native, model, x, lengths, hx)


def test_inference_pooling_matches_float64_reference(path, cell):
    """LSTMClassifier under no_grad pools in its top layer's kernel (the
    fused recurrence hands the pooling a chunk of h_s at a time); its logits
    equal nn.LSTM (nn.GRU) + packing + masked attention in float64."""
    model = sf.LSTMClassifier(6, 40, 3, num_layers=2, attn_dim=8, cell=cell).eval()
    native = NativeLSTMClassifier(6, 40, 3, num_layers=2, attn_dim=8, dtype=torch.float64,
                                  cell=cell).eval()
    native.load_state_dict(model.state_dict())
    x = torch.randn(9, 300, 6)  # batch first
    lengths = torch.randint(150, 301, (9,))  # >= 1350 rows: more than one 1024-row chunk
    with torch.no_grad():
        assert model._pools_online(x)
        logits = model(x, lengths)
        want = native(x.double(), lengths)
        torch32 = copy.deepcopy(native).float()(x, lengths)
    assert_float32_within_pytorchs_own([logits], [torch32], [want], ["logits"])


def test_bitwise_repeatable_at_a_fixed_thread_count(path, cell):
    """Fixed ownership of units and no scheduling-dependent sums: the same
    call twice gives bitwise the same outputs and gradients."""
    native = _native(cell, 24, 48, num_layers=2, dtype=torch.float32)
    model = _sf_from_native(native)
    x = torch.randn(40, 11, 24)
    lengths = torch.randint(1, 41, (11,))
    hx = _initial_states(cell, 2, 11, 48, torch.float32)
    first = forward_backward(model, x, lengths, hx, packed=False)
    second = forward_backward(model, x, lengths, hx, packed=False)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_low_memory_replays_the_forward_bitwise(persistent, cell):
    """memory="low" rebuilds each chunk's gates with the forward's own kernel
    (h_{s-1} read from the output), so its gradients are bitwise the default
    mode's, over several backward chunks. (The per-step path rebuilds with one
    GEMM per chunk instead of one per step: close, not bitwise.)"""
    native = _native(cell, 5, 33, num_layers=1, dtype=torch.float32)
    fast = _sf_from_native(native)
    low = _sf_from_native(native, memory="low")
    x = torch.randn(500, 6, 5)
    lengths = torch.tensor([500, 3, 420, 1, 499, 250])
    hx = _initial_states(cell, 1, 6, 33, torch.float32)
    want = forward_backward(fast, x, lengths, hx, packed=False)
    got = forward_backward(low, x, lengths, hx, packed=False)
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("update", ["in place", "load_state_dict", "new parameter"])
def test_packed_weights_follow_weight_updates(path, cell, update):
    """Inference reuses W_hh packed by an earlier call only while the weight
    is unchanged: after each documented way of changing it (README, "How it
    works") the result is the new weights'."""
    native = _native(cell, 4, 20)
    model = _sf_from_native(native)
    x = torch.randn(12, 3, 4)
    lengths = torch.tensor([12, 5, 9])
    with torch.no_grad():
        model(x, lengths=lengths)  # packs (and caches) W_hh
        native.weight_hh_l0.mul_(-0.5)
        if update == "in place":
            model.weight_hh_l0.mul_(-0.5)
        elif update == "load_state_dict":
            model.load_state_dict(native.state_dict())
        else:
            model.weight_hh_l0 = torch.nn.Parameter(native.weight_hh_l0.to(torch.float32))
        out, _ = model(x, lengths=lengths)
        torch32, _ = packed_lstm(copy.deepcopy(native).float(), x, lengths, None)
    want, _ = packed_lstm(native, x.double(), lengths, None)
    assert_float32_within_pytorchs_own([out], [torch32], [want], ["out"])


def test_nan_input_stays_in_its_row(path, cell):
    """A NaN in one row's input makes that row's output NaN (the kernel's
    tanh passes NaN through) and leaves the other rows finite."""
    model = (sf.LSTM if cell == "lstm" else sf.GRU)(3, 20)
    x = torch.randn(7, 4, 3)
    x[2, 1, 0] = float("nan")
    with torch.no_grad():
        out, state = model(x, lengths=torch.tensor([7, 7, 6, 5]))
    h_n = state[0] if cell == "lstm" else state
    assert torch.isnan(out[2:, 1]).all() and torch.isnan(h_n[0, 1]).all()
    assert torch.isfinite(out[:, [0, 2, 3]]).all()


def test_saturating_gates_match_float64_reference(path, cell):
    """Pre-activations in the hundreds: the inline exp clamps its argument,
    so sigmoid saturates to 0 or 1 and tanh to -1 or 1 without inf / inf."""
    T, B, I, H = 7, 5, 4, 20
    native = _native(cell, I, H, num_layers=1, bidirectional=False)
    with torch.no_grad():
        for p in native.parameters():
            p.mul_(30.0)
    model = _sf_from_native(native)
    x = torch.randn(T, B, I, dtype=torch.float64) * 10.0
    lengths = torch.tensor([7, 6, 4, 2, 1])
    got = _assert_within_pytorchs_own(native, model, x, lengths)
    assert all(torch.isfinite(t).all() for t in got.values())


def test_buffers_past_the_huge_page_size_match_float64_reference(path):
    """Saved gates [N, 4H] of ~6 MB (N ~ 3100 rows), past the 4 MiB from
    which a per-call buffer is advised as huge pages (csrc/buffers.cpp). Weight
    gradients here sum ~3000 rows in float32: the float32 rule, as everywhere
    in this file."""
    T, B, I, H = 64, 64, 16, 128
    native = make_native(I, H, num_layers=1, bidirectional=False)
    model = _sf_from_native(native)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.full((B,), T)
    lengths[1::2] = torch.randint(1, T + 1, (B // 2,))
    _assert_within_pytorchs_own(native, model, x, lengths)


def test_backward_across_chunks_matches_float64_reference(path, cell):
    """The backward runs chunks of 1024 packed rows, each in one persistent
    call that ends with dG W_hh for the steps before it: ~1500 rows with rows
    retiring inside chunks, both directions, h0/c0, and H = 40 (blocks of 16
    units split 2 + 1 across workers, the last one partial)."""
    T, B, I, H = 300, 9, 5, 40
    native = _native(cell, I, H, num_layers=1, bidirectional=True)
    model = _sf_from_native(native)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    hx = _initial_states(cell, 2, B, H)
    _assert_within_pytorchs_own(native, model, x, lengths, hx)


def test_expanded_output_gradient_matches_float64_reference(path, cell):
    """out.sum() hands the backward an expanded gradient (strides 0 along T
    and B), which the kernels read in place."""
    T, B, I, H = 21, 7, 3, 24
    native = _native(cell, I, H, num_layers=1, bidirectional=True)
    model = _sf_from_native(native)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([21, 20, 13, 13, 5, 2, 1])
    grads = []
    for module, inputs in ((native, x), (copy.deepcopy(native).float(), x.float()),
                           (model, x.float())):
        inputs = inputs.detach().clone().requires_grad_(True)
        if module is model:
            out, _ = model(inputs, lengths=lengths)
        else:
            out, _ = packed_lstm(module, inputs, lengths, None)
        out.sum().backward()
        grads.append([inputs.grad] + [p.grad for p in module.parameters()])
    names = ["grad_x"] + ["grad_" + n for n, _ in model.named_parameters()]
    assert_float32_within_pytorchs_own(grads[2], grads[1], grads[0], names)


def test_state_gradients_do_not_depend_on_the_thread_count(persistent, cell):
    """Every unit's sums run in one order whoever owns it: the gradients of
    h0 (and c0), which only the persistent backward computes (no MKL GEMM),
    are bitwise the same on 1 and on 2 workers."""
    native = _native(cell, 6, 64, num_layers=1, dtype=torch.float32)
    model = _sf_from_native(native)
    x = torch.randn(50, 13, 6)
    lengths = torch.randint(1, 51, (13,))
    hx = _initial_states(cell, 1, 13, 64, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = forward_backward(model, x, lengths, hx, packed=False)
        torch.set_num_threads(2)
        two = forward_backward(model, x, lengths, hx, packed=False)
    finally:
        torch.set_num_threads(threads)
    cell_state = ("c_n", "grad_c0") if cell == "lstm" else ()
    for name in ("out", "h_n", "grad_h0") + cell_state:
        assert torch.equal(one[name], two[name]), name
