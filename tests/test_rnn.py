"""sf.RNN (nn.RNN's drop-in, tanh and relu) against nn.RNN +
pack_padded_sequence (seqcls_fast.reference.packed_lstm, which packs any
native RNN): outputs, h_n and every gradient over awkward shapes and every
input form, both nonlinearities; gradcheck, gradgradcheck (through the
plain-PyTorch reference.rnn_layer), opcheck, torch.compile; what sf.RNN shares
with nn.RNN (state_dict, repr, from_native) and its errors.

On the CPU, and on a GPU where there is one; the CUDA kernels also run on the
CUDA emulator (tests/test_cuda_emu.py::test_rnn_layer)."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import seqcls_fast as sf
from helpers import (CUDA_ONLY, assert_matches_packed, check_hidden_state_cell_matches_packed,
                     dtype_id, forward_backward, random_lengths)
from seqcls_fast._ops import ops
from seqcls_fast.apps.bench.report import cpu_features
from seqcls_fast.errors import ShapeError, StateTypeError

NONLINEARITIES = ["tanh", "relu"]


def make_native_rnn(input_size, hidden_size, num_layers=1, nonlinearity="tanh",
                    bidirectional=False, batch_first=False, bias=True, dtype=torch.float64,
                    seed=0):
    """An nn.RNN with weights fixed by `seed`."""
    torch.manual_seed(seed)
    return nn.RNN(input_size, hidden_size, num_layers, nonlinearity=nonlinearity, bias=bias,
                  batch_first=batch_first, bidirectional=bidirectional).to(dtype=dtype)


def check_matches_packed(dtype, T, B, I, H, lengths, nonlinearity, layers=1, bidirectional=False,
                         batch_first=False, bias=True, with_hx=True, memory="fast"):
    """sf.RNN against nn.RNN + packing (helpers.check_hidden_state_cell_matches_packed)."""
    native = make_native_rnn(I, H, layers, nonlinearity, bidirectional, batch_first, bias, dtype)
    check_hidden_state_cell_matches_packed(native, dtype, T, B, lengths, with_hx, memory)


# (T, B, I, H, num_layers, bidirectional)
SHAPES = [
    (7, 5, 6, 9, 1, False),   # odd H
    (1, 1, 3, 4, 1, False),   # T = 1, B = 1
    (6, 4, 5, 5, 3, True),    # 3 layers, bidirectional
] + [(3, B, 5, H, 1, True) for H in (1, 33, 257) for B in (1, 65)]


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_B{}_I{}_H{}_L{}_bidir{:d}".format(*s))
@pytest.mark.parametrize("with_hx", [True, False], ids=["h0", "no_h0"])
def test_matches_packed_rnn(dtype, shape, with_hx, nonlinearity):
    T, B, I, H, layers, bidirectional = shape
    lengths = random_lengths(B, T, torch.Generator().manual_seed(T * 100 + B))
    check_matches_packed(dtype, T, B, I, H, lengths, nonlinearity, layers, bidirectional,
                         with_hx=with_hx)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_each_pointwise_build_matches(monkeypatch, isa, dtype, nonlinearity):
    """The portable build of the RNN step kernels (SEQCLS_FAST_CPU_ISA=baseline)
    and the AVX2 one (the default on any x86 CPU with AVX2) both match."""
    flags = cpu_features() or {}
    if isa == "avx2" and not (flags.get("avx2") and flags.get("fma")):
        pytest.skip("this CPU lacks AVX2 + FMA")
    monkeypatch.setenv("SEQCLS_FAST_CPU_ISA", isa)
    check_matches_packed(dtype, 8, 5, 4, 11, torch.tensor([8, 3, 5, 1, 8]), nonlinearity, 2,
                         True)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("with_hx", [True, False], ids=["h0", "no_h0"])
def test_low_memory_matches_packed_rnn(dtype, with_hx, nonlinearity):
    """memory="low": nothing kept beyond the output, the backward rebuilds
    the activations and h_prev; the same parity as "fast"."""
    check_matches_packed(dtype, 6, 4, 5, 5, torch.tensor([6, 2, 5, 1]), nonlinearity, 3, True,
                         with_hx=with_hx, memory="low")


def test_low_memory_across_backward_chunks():
    """Enough packed rows for several backward chunks (1024 rows each on the
    CPU), both directions, no bias."""
    lengths = random_lengths(40, 60, torch.Generator().manual_seed(4))
    check_matches_packed(torch.float64, 60, 40, 3, 6, lengths, "tanh", 1, True, bias=False,
                         memory="low")


def test_auto_memory_keeps_two_values_per_unit():
    """"auto" counts 2H values per padded step and row for the RNN (h and
    h_prev): 2 * 20971 * 100 * 8 * 4 bytes is just below 128 MiB, 20972 above."""
    from seqcls_fast import lstm as lstm_module
    x = torch.empty(100, 8, 3)
    assert not lstm_module.low_memory_for("auto", x, 20971, kept_per_unit=2)
    assert lstm_module.low_memory_for("auto", x, 20972, kept_per_unit=2)
    assert repr(sf.RNN(3, 4, memory="low")) == "RNN(3, 4, memory='low')"


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_batch_first_bias_and_no_lengths(batch_first, bias):
    lengths = torch.tensor([6, 1, 4, 6])
    for nonlinearity in NONLINEARITIES:
        check_matches_packed(torch.float64, 6, 4, 3, 7, lengths, nonlinearity, 2, True,
                             batch_first, bias)
        check_matches_packed(torch.float64, 6, 4, 3, 7, None, nonlinearity, 2, True, batch_first,
                             bias)


def test_packed_sequence_and_unbatched_inputs():
    native = make_native_rnn(3, 5, num_layers=2, nonlinearity="relu", bidirectional=True)
    ours = sf.RNN.from_native(native)
    assert ours.nonlinearity == "relu"
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


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_same_parameters_state_dict_and_repr_as_nn_rnn(nonlinearity):
    settings = dict(num_layers=2, nonlinearity=nonlinearity, bias=False, batch_first=True,
                    dropout=0.5, bidirectional=True)
    native, ours = nn.RNN(3, 5, **settings), sf.RNN(3, 5, **settings)
    assert repr(ours) == repr(native)
    assert ours.nonlinearity == native.nonlinearity and ours.mode == native.mode
    assert ({k: v.shape for k, v in ours.state_dict().items()}
            == {k: v.shape for k, v in native.state_dict().items()})
    ours.load_state_dict(native.state_dict())  # a checkpoint loads unchanged
    assert ours.weight_ih_l0.shape == (5, 3)
    # nn.RNN's positional order: nonlinearity fourth.
    assert sf.RNN(3, 5, 2, "relu").nonlinearity == "relu"


def test_relu_passes_nan_through_and_keeps_other_rows():
    """relu(NaN) is NaN, as torch.relu: a NaN in one row's input makes that
    row's output NaN and leaves the other rows finite."""
    model = sf.RNN(3, 6, nonlinearity="relu")
    x = torch.randn(7, 4, 3)
    x[2, 1, 0] = float("nan")
    with torch.no_grad():
        out, h_n = model(x, lengths=torch.tensor([7, 7, 6, 5]))
    assert torch.isnan(out[2:, 1]).all() and torch.isnan(h_n[0, 1]).all()
    assert torch.isfinite(out[:, [0, 2, 3]]).all()


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("memory", ["fast", "low"])
def test_gradcheck_and_gradgradcheck(memory, nonlinearity):
    torch.manual_seed(0)
    rnn = sf.RNN(2, 3, num_layers=2, nonlinearity=nonlinearity, bidirectional=True,
                 memory=memory).double()
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 1, 3])

    def f(x, h0):
        out, h_n = rnn(x, h0, lengths=lengths)
        return out, h_n

    assert torch.autograd.gradcheck(f, (x, h0))
    assert torch.autograd.gradgradcheck(f, (x, h0))


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, torch.tensor([5, 2, 4])], ids=["full", "lengths"])
def test_opcheck(reverse, lengths, nonlinearity):
    torch.manual_seed(0)
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    b_ih = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b_hh = torch.randn(4, dtype=torch.float64, requires_grad=True)
    args = (x, lengths, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse, True)
    torch.library.opcheck(ops.rnn_layer_forward, args)
    torch.library.opcheck(ops.rnn_layer_forward, (*args, None, True))  # low memory
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    out, h_n, gates, h_prev = ops.rnn_layer_forward(*detached)
    x_, _, h0_, w_ih_, w_hh_, b_ih_, b_hh_ = detached[:7]
    upstream = (torch.randn_like(out), torch.randn_like(h_n))
    torch.library.opcheck(ops.rnn_layer_backward, (
        *upstream, x_, lengths, w_ih_, w_hh_, gates, h_prev, nonlinearity, reverse, True))
    torch.library.opcheck(ops.rnn_layer_backward_recompute, (
        *upstream, x_, lengths, h0_, w_ih_, w_hh_, b_ih_, b_hh_, out, nonlinearity, reverse,
        True))


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    rnn = sf.RNN(3, 4, num_layers=2, nonlinearity="relu", bidirectional=True).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5])

    def f(x, lengths):
        out, h_n = rnn(x, lengths=lengths)
        return out.sum() + h_n.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager = f(x, lengths)
    torch.testing.assert_close(compiled(x, lengths), eager, rtol=1e-12, atol=1e-12)


def test_bad_arguments_are_refused_as_nn_rnn_would():
    rnn = sf.RNN(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        sf.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(StateTypeError, match="hx must be a Tensor h_0"):
        rnn(x, (torch.zeros(1, 2, 4),))
    with pytest.raises(RuntimeError, match=r"h_0 must have shape .* = \(1, 2, 4\)"):
        rnn(x, torch.zeros(1, 3, 4))
    with pytest.raises(ShapeError, match="input must have 3 features"):
        rnn(torch.randn(5, 2, 4))
    with pytest.raises(TypeError, match="from_native expects an nn.RNN"):
        sf.RNN.from_native(nn.GRU(3, 4))
    w_ih, w_hh = torch.randn(4, 3), torch.randn(4, 4)
    with pytest.raises(ValueError, match='nonlinearity must be "tanh" or "relu", got "gelu"'):
        ops.rnn_layer_forward(x, None, None, w_ih, w_hh, None, None, "gelu", False, False)
    with pytest.raises(ValueError, match=r"w_ih must have shape \[H, I\] = \[4, 3\]"):
        ops.rnn_layer_forward(x, None, None, torch.randn(8, 3), w_hh, None, None, "tanh", False,
                              False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("dummy", [pytest.param(0, marks=CUDA_ONLY)])
def test_matches_packed_rnn_on_cuda(dummy, dtype):
    """On a GPU: sf.RNN against nn.RNN (cuDNN) on the packed batch, every
    output and gradient within the CUDA tolerances."""
    device = torch.device("cuda")
    for nonlinearity in NONLINEARITIES:
        native = make_native_rnn(5, 33, 2, nonlinearity, True, dtype=dtype).to(device)
        ours = sf.RNN.from_native(native)
        x = torch.randn(7, 9, 5, dtype=dtype, device=device)
        hx = (torch.randn(4, 9, 33, dtype=dtype, device=device),)
        lengths = torch.tensor([7, 3, 5, 1, 7, 2, 6, 4, 5])
        got = forward_backward(ours, x, lengths.to(device), hx, packed=False)
        assert_matches_packed(got, native, x, lengths, hx, device, dtype)


def test_empty_batch():
    rnn = sf.RNN(3, 4, bidirectional=True).double()
    x = torch.randn(5, 0, 3, dtype=torch.float64, requires_grad=True)
    out, h_n = rnn(x, lengths=torch.zeros(0, dtype=torch.long))
    assert out.shape == (5, 0, 8) and h_n.shape == (2, 0, 4)
    (out.sum() + h_n.sum()).backward()
    assert rnn.weight_hh_l0.grad is not None and not rnn.weight_hh_l0.grad.any()
