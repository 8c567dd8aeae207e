"""sf.GRU against nn.GRU + pack_padded_sequence (seqcls_fast.reference.
packed_lstm, which packs any native RNN): outputs, h_n and every gradient
over awkward shapes and every input form; gradcheck, gradgradcheck (through
the plain-PyTorch reference.gru_layer), opcheck, torch.compile; the pooled
last layer (gru_layer_pooled_forward); what sf.GRU shares with nn.GRU
(state_dict, repr, from_native) and its errors.

On the CPU, and on a GPU where there is one; the CUDA kernels also run on the
CUDA emulator (tests/test_cuda_emu.py::test_gru_layer)."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import seqcls_fast as sf
from helpers import (CUDA_ONLY, assert_float32_within_pytorchs_own, assert_matches_packed,
                     check_hidden_state_cell_matches_packed, dtype_id, forward_backward,
                     random_lengths)
from seqcls_fast import reference
from seqcls_fast._ops import ops
from test_ops import pooled_state_reference
from seqcls_fast.apps.bench.report import cpu_features
from seqcls_fast.errors import ShapeError, StateTypeError



def make_native_gru(input_size, hidden_size, num_layers=1, bidirectional=False,
                    batch_first=False, bias=True, dtype=torch.float64, seed=0):
    """An nn.GRU with weights fixed by `seed`."""
    torch.manual_seed(seed)
    return nn.GRU(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                  bidirectional=bidirectional).to(dtype=dtype)


def check_matches_packed(dtype, T, B, I, H, lengths, layers=1, bidirectional=False,
                         batch_first=False, bias=True, with_hx=True, memory="fast"):
    """sf.GRU against nn.GRU + packing (helpers.check_hidden_state_cell_matches_packed)."""
    native = make_native_gru(I, H, layers, bidirectional, batch_first, bias, dtype)
    check_hidden_state_cell_matches_packed(native, dtype, T, B, lengths, with_hx, memory)


# (T, B, I, H, num_layers, bidirectional)
SHAPES = [
    (7, 5, 6, 9, 1, False),   # odd H
    (1, 1, 3, 4, 1, False),   # T = 1, B = 1
    (6, 4, 5, 5, 3, True),    # 3 layers, bidirectional
    (9, 6, 4, 8, 2, True),
] + [(3, B, 5, H, 1, True) for H in (1, 33, 257) for B in (1, 65)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_B{}_I{}_H{}_L{}_bidir{:d}".format(*s))
@pytest.mark.parametrize("with_hx", [True, False], ids=["h0", "no_h0"])
def test_matches_packed_gru(dtype, shape, with_hx):
    T, B, I, H, layers, bidirectional = shape
    lengths = random_lengths(B, T, torch.Generator().manual_seed(T * 100 + B))
    check_matches_packed(dtype, T, B, I, H, lengths, layers, bidirectional, with_hx=with_hx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_each_pointwise_build_matches(monkeypatch, isa, dtype):
    """The portable build of the GRU step kernels (SEQCLS_FAST_CPU_ISA=baseline)
    and the AVX2 one (the default on any x86 CPU with AVX2) both match."""
    flags = cpu_features() or {}
    if isa == "avx2" and not (flags.get("avx2") and flags.get("fma")):
        pytest.skip("this CPU lacks AVX2 + FMA")
    monkeypatch.setenv("SEQCLS_FAST_CPU_ISA", isa)
    check_matches_packed(dtype, 8, 5, 4, 11, torch.tensor([8, 3, 5, 1, 8]), 2, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shape", [(7, 5, 6, 9, 1, False), (6, 4, 5, 5, 3, True),
                                   (1, 1, 3, 4, 1, False)],
                         ids=lambda s: "T{}_B{}_I{}_H{}_L{}_bidir{:d}".format(*s))
@pytest.mark.parametrize("with_hx", [True, False], ids=["h0", "no_h0"])
def test_low_memory_matches_packed_gru(dtype, shape, with_hx):
    """memory="low": nothing kept beyond the output, the backward rebuilds the
    gates, the recurrent part and h_prev; the same parity as "fast"."""
    T, B, I, H, layers, bidirectional = shape
    lengths = random_lengths(B, T, torch.Generator().manual_seed(T * 100 + B))
    check_matches_packed(dtype, T, B, I, H, lengths, layers, bidirectional, with_hx=with_hx,
                         memory="low")


def test_low_memory_across_backward_chunks(monkeypatch):
    """Enough packed rows for several backward chunks (1024 rows each on the
    CPU), both directions, no bias."""
    lengths = random_lengths(40, 60, torch.Generator().manual_seed(4))
    check_matches_packed(torch.float64, 60, 40, 3, 6, lengths, 1, True, bias=False,
                         memory="low")


def test_auto_memory_keeps_five_values_per_unit():
    """"auto" counts 5H values per padded step and row for the GRU (6H for the
    LSTM): 5 * 8388 * 100 * 8 * 4 bytes is just below 128 MiB, 8389 above."""
    from seqcls_fast import lstm as lstm_module
    x = torch.empty(100, 8, 3)
    assert not lstm_module.low_memory_for("auto", x, 8388, kept_per_unit=5)
    assert lstm_module.low_memory_for("auto", x, 8389, kept_per_unit=5)
    assert lstm_module.low_memory_for("auto", x, 8388)  # the LSTM's 6H: above
    assert repr(sf.GRU(3, 4, memory="low")) == "GRU(3, 4, memory='low')"


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_batch_first_bias_and_no_lengths(batch_first, bias):
    lengths = torch.tensor([6, 1, 4, 6])
    check_matches_packed(torch.float64, 6, 4, 3, 7, lengths, 2, True, batch_first, bias)
    check_matches_packed(torch.float64, 6, 4, 3, 7, None, 2, True, batch_first, bias)


def test_packed_sequence_and_unbatched_inputs():
    native = make_native_gru(3, 5, num_layers=2, bidirectional=True)
    ours = sf.GRU.from_native(native)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([2, 6, 3, 5])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    h0 = torch.randn(4, 4, 5, dtype=torch.float64)
    (got, got_h), (want, want_h) = ours(packed, h0), native(packed, h0)
    torch.testing.assert_close(got.data, want.data, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_h, want_h, rtol=1e-9, atol=1e-9)
    assert torch.equal(got.batch_sizes, want.batch_sizes)
    (got, got_h), (want, want_h) = ours(x[:, 0], h0[:, 0]), native(x[:, 0], h0[:, 0])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_h, want_h, rtol=1e-9, atol=1e-9)


def test_same_parameters_state_dict_and_repr_as_nn_gru():
    native = nn.GRU(3, 5, num_layers=2, bias=False, batch_first=True, dropout=0.5,
                    bidirectional=True)
    ours = sf.GRU(3, 5, num_layers=2, bias=False, batch_first=True, dropout=0.5,
                  bidirectional=True)
    assert repr(ours) == repr(native)
    assert ({k: v.shape for k, v in ours.state_dict().items()}
            == {k: v.shape for k, v in native.state_dict().items()})
    ours.load_state_dict(native.state_dict())  # a checkpoint loads unchanged
    assert ours.weight_ih_l0.shape == (15, 3)  # gates r, z, n


def test_eval_and_no_grad_return_the_same_numbers():
    native = make_native_gru(3, 6, num_layers=2)
    ours = sf.GRU.from_native(native).eval()
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    with torch.no_grad():
        out, h_n = ours(x, lengths=lengths)
    out_grad, h_grad = ours(x, lengths=lengths)
    assert torch.equal(out, out_grad) and torch.equal(h_n, h_grad)


@pytest.mark.parametrize("memory", ["fast", "low"])
def test_gradcheck_and_gradgradcheck(memory):
    torch.manual_seed(0)
    gru = sf.GRU(2, 3, num_layers=2, bidirectional=True, memory=memory).double()
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 1, 3])

    def f(x, h0):
        out, h_n = gru(x, h0, lengths=lengths)
        return out, h_n

    assert torch.autograd.gradcheck(f, (x, h0))
    assert torch.autograd.gradgradcheck(f, (x, h0))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, torch.tensor([5, 2, 4])], ids=["full", "lengths"])
def test_opcheck(reverse, lengths):
    torch.manual_seed(0)
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    b_ih = torch.randn(12, dtype=torch.float64, requires_grad=True)
    b_hh = torch.randn(12, dtype=torch.float64, requires_grad=True)
    args = (x, lengths, h0, w_ih, w_hh, b_ih, b_hh, reverse, True)
    torch.library.opcheck(ops.gru_layer_forward, args)
    torch.library.opcheck(ops.gru_layer_forward, (*args, None, True))  # low memory
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    out, h_n, gates, cell, h_prev = ops.gru_layer_forward(*detached)
    x_, _, h0_, w_ih_, w_hh_, b_ih_, b_hh_ = detached[:7]
    upstream = (torch.randn_like(out), torch.randn_like(h_n))
    torch.library.opcheck(ops.gru_layer_backward, (
        *upstream, x_, lengths, w_ih_, w_hh_, gates, cell, h_prev, reverse, True))
    torch.library.opcheck(ops.gru_layer_backward_recompute, (
        *upstream, x_, lengths, h0_, w_ih_, w_hh_, b_ih_, b_hh_, out, reverse, True))


# (pooling, additive keys, continue a given pooling state)
POOLED_CASES = [("attention", False, False), ("attention", True, True), ("mean", False, True),
                ("last", False, False)]


def gru_pooled_args(pooling, additive, continued, dtype):
    """gru_layer_pooled_forward's args: T 9, B 5 (lengths retire rows
    mid-batch), I 3, H 20 (a partial unit block in both CPU builds), h0."""
    g = torch.Generator().manual_seed(11)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    T, B, I, H, A = 9, 5, 3, 20, 4
    lengths = torch.tensor([9, 4, 9, 1, 6])
    keys = A if additive else H
    state = ((randn(B), randn(B).abs() + 0.5, randn(B, H)) if continued else (None,) * 3)
    # The pooling state is in the state dtype: float32 for float16/bfloat16 x.
    state_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    state = tuple(t if t is None else t.to(state_dtype) for t in state)
    return (randn(T, B, I), lengths, randn(B, H), randn(3 * H, I) * 0.4, randn(3 * H, H) * 0.4,
            randn(3 * H) * 0.4, randn(3 * H) * 0.4, pooling,
            randn(keys) if pooling == "attention" else None,
            randn(A, H) if additive else None, randn(A) if additive else None, *state)


def gru_pooled_reference(args, dtype):
    """The plain-PyTorch GRU layer (reference.gru_layer), then the pooling's
    closed form, on args cast to dtype."""
    cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args]
    x, lengths, h0, w_ih, w_hh, b_ih, b_hh, pooling, query, key_weight, key_bias, *state = cast
    with torch.no_grad():
        out, h_n = reference.gru_layer(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, False)
        return [h_n, *pooled_state_reference(out, lengths, pooling, query, key_weight, key_bias,
                                             state)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("case", POOLED_CASES, ids=lambda c: "-".join(map(str, c)))
def test_pooled_forward_matches_reference(case, dtype):
    """The GRU's fused last layer (gru_layer_pooled_forward: no output
    written, the pooling state updated per step) equals the plain-PyTorch GRU
    followed by the pooling's closed form: h_n and the pooling state, fresh
    or continued; float64 to 1e-9, float32 (the persistent CPU tile) by the
    float32 rule."""
    args = gru_pooled_args(*case, dtype)
    got = ops.gru_layer_pooled_forward(*args)
    names = ["h_n", "pool_max", "pool_denom", "pool_sum"]
    if dtype == torch.float64:
        for name, a, b in zip(names, got, gru_pooled_reference(args, dtype)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)
    else:
        assert_float32_within_pytorchs_own(got, gru_pooled_reference(args, torch.float32),
                                           gru_pooled_reference(args, torch.float64), names)


def test_pooled_forward_opcheck():
    for case in POOLED_CASES:
        torch.library.opcheck(ops.gru_layer_pooled_forward, gru_pooled_args(*case, torch.float64))


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    gru = sf.GRU(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5])

    def f(x, lengths):
        out, h_n = gru(x, lengths=lengths)
        return out.sum() + h_n.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager = f(x, lengths)
    torch.testing.assert_close(compiled(x, lengths), eager, rtol=1e-12, atol=1e-12)


def test_bad_hx_is_refused_as_nn_gru_would():
    gru = sf.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(StateTypeError, match="hx must be a Tensor h_0"):
        gru(x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(RuntimeError, match=r"h_0 must have shape .* = \(1, 2, 4\)"):
        gru(x, torch.zeros(1, 3, 4))
    with pytest.raises(ShapeError, match="input must have 3 features"):
        gru(torch.randn(5, 2, 4))
    with pytest.raises(TypeError, match="from_native expects an nn.GRU"):
        sf.GRU.from_native(nn.LSTM(3, 4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("dummy", [pytest.param(0, marks=CUDA_ONLY)])
def test_matches_packed_gru_on_cuda(dummy, dtype):
    """On a GPU: sf.GRU against nn.GRU (cuDNN) on the packed batch, every
    output and gradient within the CUDA tolerances."""
    device = torch.device("cuda")
    native = make_native_gru(5, 33, 2, True, dtype=dtype).to(device)
    ours = sf.GRU.from_native(native)
    x = torch.randn(7, 9, 5, dtype=dtype, device=device)
    hx = (torch.randn(4, 9, 33, dtype=dtype, device=device),)
    lengths = torch.tensor([7, 3, 5, 1, 7, 2, 6, 4, 5])
    got = forward_backward(ours, x, lengths.to(device), hx, packed=False)
    assert_matches_packed(got, native, x, lengths, hx, device, dtype)


def test_strided_saved_h_prev_is_read_as_given():
    """gru_layer_backward reads h_prev row by row: a non-contiguous h_prev (a
    column slice of a wider tensor) gives the results of its contiguous copy."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    w_ih, w_hh = torch.randn(12, 2, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    out, h_n, gates, cell, h_prev = ops.gru_layer_forward(x, lengths, None, w_ih, w_hh, None,
                                                          None, False, True)
    wide = torch.zeros(h_prev.size(0), 2 * h_prev.size(1), dtype=torch.float64)
    wide[:, ::2] = h_prev
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    upstream = (torch.randn_like(out), torch.randn_like(h_n))
    want = ops.gru_layer_backward(*upstream, x, lengths, w_ih, w_hh, gates, cell, h_prev, False,
                                  True)
    got = ops.gru_layer_backward(*upstream, x, lengths, w_ih, w_hh, gates, cell, strided, False,
                                 True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_empty_batch():
    gru = sf.GRU(3, 4, bidirectional=True).double()
    x = torch.randn(5, 0, 3, dtype=torch.float64, requires_grad=True)
    out, h_n = gru(x, lengths=torch.zeros(0, dtype=torch.long))
    assert out.shape == (5, 0, 8) and h_n.shape == (2, 0, 4)
    (out.sum() + h_n.sum()).backward()
    assert gru.weight_hh_l0.grad is not None and not gru.weight_hh_l0.grad.any()
