"""sf.LSTM against nn.LSTM + pack_padded_sequence (seqcls_fast.reference.
packed_lstm) on every device: outputs, final states and every gradient over
random, awkward and multi-block shapes and every input form; and what sf.LSTM
shares with nn.LSTM (state_dict, repr, dropout, train/eval, inference)."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import seqcls_fast as sf
from helpers import (LSTM_TOL, assert_close_named, assert_float32_within_pytorchs_own,
                     assert_matches_packed, dtype_id, forward_backward, make_native,
                     native_twin, place_lengths, random_lengths, tolerance)
from seqcls_fast.lstm import MEMORY_MODES
from seqcls_fast.reference import packed_lstm


def check_matches_packed(device, dtype, T, B, I, H, lengths, layers=1, bidirectional=False,
                         batch_first=False, bias=True, with_hx=True, memory="fast"):
    """sf.LSTM with `lengths` (None: none) against nn.LSTM on the packed batch
    (on the padded tensor without lengths): every output and gradient, in
    dtype on device, in training memory mode `memory`. Float32 on the CPU:
    the float32 rule, against nn.LSTM run in float64 on the same weights and
    inputs (helpers.assert_matches_packed)."""
    native = make_native(I, H, layers, bidirectional, batch_first, bias, dtype, device=device)
    ours = sf.LSTM.from_native(native, memory=memory)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, device=device)
    hx = None
    if with_hx:
        shape = (layers * (2 if bidirectional else 1), B, H)
        hx = tuple(torch.randn(shape, dtype=dtype, device=device) for _ in range(2))
    got = forward_backward(ours, x, lengths, hx, packed=False)
    for name in got:
        assert got[name].dtype == dtype and got[name].device.type == device.type, name
    assert_matches_packed(got, native, x, lengths, hx, device, dtype)


def _grads(outputs, inputs):
    """Gradients of a fixed random projection of outputs w.r.t. inputs."""
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum()
               for o in outputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


# ---------------------------------------------- parity with nn.LSTM + packing
# (T, B, I, H, num_layers, bidirectional)
SHAPES = [
    (7, 5, 6, 9, 1, False),   # odd H
    (1, 1, 3, 4, 1, False),   # T = 1, B = 1
    (6, 4, 5, 5, 3, True),    # 3 layers, bidirectional
    (9, 6, 4, 8, 2, True),
] + [  # B * H from 1 to well past one 256-thread block on CUDA
    (3, B, 5, H, 1, True) for H in (1, 33, 257) for B in (1, 65)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_B{}_I{}_H{}_L{}_bidir{:d}".format(*s))
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("memory", MEMORY_MODES)
def test_matches_packed_native(device, lengths_on, dtype, shape, with_hx, memory):
    T, B, I, H, layers, bidirectional = shape
    lengths = random_lengths(B, T)
    lengths[0] = T  # one full row, as in a real padded batch
    check_matches_packed(device, dtype, T, B, I, H, place_lengths(lengths, lengths_on), layers,
                         bidirectional, with_hx=with_hx, memory=memory)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("memory", MEMORY_MODES)
def test_random_shapes(device, dtype, bidirectional, layers, memory):
    check_matches_packed(device, dtype, T=9, B=6, I=5, H=7, layers=layers,
                         bidirectional=bidirectional, lengths=random_lengths(6, 9).to(device),
                         memory=memory)


# Low memory against the default mode over many rebuild chunks (the CPU
# rebuilds 1024 packed rows at a time): the same numbers, float64 to 1e-12,
# float32 on CUDA to 1e-6. Float32 on the CPU: bitwise where the persistent
# recurrence rebuilds the gates, other roundings where the per-step path
# rebuilds them with one GEMM per chunk; there the two modes agree within
# float32 nn.LSTM's own error against float64 (the float32 rule, compare_to).
# (Not each against the float64 truth: both modes sum the weight gradients
# of these 3500 rows with the same at::mm per 1024-row chunk, whose float32
# error on [24, 3] outputs reached 11x float32 nn.LSTM's in 40 random draws,
# past the rule's allowance; the two modes differed by at most 0.11 of it.)
LOW_MEMORY_TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12),
                  torch.float32: dict(rtol=1e-6, atol=1e-6)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_low_memory_equals_fast_over_many_chunks(device, dtype, bidirectional, with_lengths):
    T, B, I, H = 700, 5, 3, 6  # 3500 packed rows without lengths
    fast = sf.LSTM(I, H, num_layers=2, bidirectional=bidirectional, device=device, dtype=dtype)
    low = sf.LSTM(I, H, num_layers=2, bidirectional=bidirectional, device=device, dtype=dtype,
                  memory="low")
    low.load_state_dict(fast.state_dict())
    x = torch.randn(T, B, I, dtype=dtype, device=device)
    lengths = torch.tensor([700, 3, 650, 1, 700]).to(device) if with_lengths else None
    hx = tuple(torch.randn(2 * (2 if bidirectional else 1), B, H, dtype=dtype, device=device)
               for _ in range(2))
    want = forward_backward(fast, x, lengths, hx, packed=False)
    got = forward_backward(low, x, lengths, hx, packed=False)
    if (torch.device(device).type, dtype) == ("cpu", torch.float32):
        torch32, truth = (
            forward_backward(native_twin(fast, d), x.to(d), lengths, tuple(s.to(d) for s in hx),
                             packed=True) for d in (torch.float32, torch.float64))
        assert_float32_within_pytorchs_own([got[n] for n in truth], [torch32[n] for n in truth],
                                           list(truth.values()), list(truth),
                                           compare_to=[want[n] for n in truth])
    else:
        assert_close_named([got[n] for n in want], list(want.values()), LOW_MEMORY_TOL[dtype],
                           list(want))


def _saved_numel(lstm, x, lengths):
    """Elements autograd saves for a forward of `lstm` (a tensor saved twice
    counts twice)."""
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t,
                                                  lambda t: t):
        lstm(x, lengths=lengths)
    return sum(sizes)


def test_low_memory_keeps_cell_checkpoints_only():
    """What autograd holds per layer: fast keeps gates [N, 4H], cell [N, H]
    and h_prev [N, H]; low memory the layer output (which the caller holds
    anyway) in their place, twice, and the sorted cell state [B, H] at the
    start of each backward chunk (one chunk here)."""
    T, B, H = 9, 4, 5
    x = torch.randn(T, B, 3, requires_grad=True)
    lengths = torch.tensor([9, 2, 5, 1])
    saved = {memory: _saved_numel(sf.LSTM(3, H, memory=memory), x, lengths)
             for memory in MEMORY_MODES}
    rows = int(lengths.sum())
    assert saved["fast"] - saved["low"] == rows * 6 * H - (2 * T * B * H + B * H)


def test_auto_memory_picks_low_above_the_threshold(monkeypatch):
    """memory="auto" keeps what "fast" keeps for a small batch and what "low"
    keeps once 6H values per padded step and row pass AUTO_LOW_MEMORY_BYTES;
    the results are the same either way."""
    from seqcls_fast import lstm as lstm_module
    x = torch.randn(9, 4, 3, requires_grad=True)
    lengths = torch.tensor([9, 2, 5, 1])
    auto = sf.LSTM(3, 5, memory="auto")
    saved = {}
    for memory in ("fast", "low"):
        other = sf.LSTM(3, 5, memory=memory)
        other.load_state_dict(auto.state_dict())
        saved[memory] = _saved_numel(other, x, lengths)
    kept_fast = 6 * 5 * 9 * 4 * x.element_size()
    monkeypatch.setattr(lstm_module, "AUTO_LOW_MEMORY_BYTES", kept_fast)  # not above: fast
    assert _saved_numel(auto, x, lengths) == saved["fast"]
    monkeypatch.setattr(lstm_module, "AUTO_LOW_MEMORY_BYTES", kept_fast - 1)  # above: low
    assert _saved_numel(auto, x, lengths) == saved["low"]


def test_auto_memory_threshold_is_the_documented_one():
    # The README: "low" once 6 x H x T x B float32 values pass 128 MiB, i.e.
    # T x B above about 21800 at H=256 (21845 x 24 x 256 bytes < 128 MiB < 21846 x ...).
    from seqcls_fast.lstm import low_memory_for
    at = lambda steps, dtype: torch.empty((steps, 1, 0), dtype=dtype)  # only the sizes count
    assert not low_memory_for("auto", at(21845, torch.float32), 256)
    assert low_memory_for("auto", at(21846, torch.float32), 256)
    assert not low_memory_for("auto", at(2 * 21845, torch.bfloat16), 256)  # 2 bytes a value
    assert low_memory_for("fast", at(10**6, torch.float32), 256) is False
    assert low_memory_for("low", at(1, torch.float32), 256) is True


def test_low_memory_checkpoints_are_a_small_fraction_of_the_cells():
    T, B, H = 3000, 2, 8  # 6000 packed rows: several 1024-row chunks on the CPU
    x = torch.randn(T, B, 3, requires_grad=True)
    lengths = torch.tensor([3000, 2500])
    low = _saved_numel(sf.LSTM(3, H, memory="low"), x, lengths)
    output, inputs = T * B * H, x.numel() + 4 * H * (3 + H + 2) + B
    checkpoints = low - 2 * output - inputs
    assert 0 < checkpoints <= 8 * B * H  # a handful of [B, H] states, not 5500 rows of H


@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (1, 4, 3, 5), (6, 1, 3, 5), (5, 3, 2, 1),
                                     (4, 3, 9, 13), (3, 5, 4, 33)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_awkward_shapes(device, T, B, I, H, bidirectional):
    check_matches_packed(device, torch.float64, T, B, I, H, random_lengths(B, T).to(device),
                         bidirectional=bidirectional)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_all_lengths_equal(device, bidirectional):
    for length in (7, 4):
        check_matches_packed(device, torch.float64, T=7, B=4, I=3, H=5,
                             bidirectional=bidirectional,
                             lengths=torch.full((4,), length, dtype=torch.long, device=device))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_almost_all_lengths_one(device, bidirectional):
    lengths = torch.ones(8, dtype=torch.long)
    lengths[5] = 6
    check_matches_packed(device, torch.float64, T=6, B=8, I=3, H=4, bidirectional=bidirectional,
                         lengths=lengths.to(device))


def test_three_layers_bidirectional_float32(device):
    check_matches_packed(device, torch.float32, T=11, B=7, I=6, H=10, layers=3,
                         bidirectional=True, lengths=random_lengths(7, 11).to(device))


@pytest.mark.parametrize("batch_first", [False, True])
def test_batch_first_both_ways(device, batch_first):
    check_matches_packed(device, torch.float64, T=8, B=5, I=3, H=6, layers=2, bidirectional=True,
                         batch_first=batch_first, lengths=random_lengths(5, 8).to(device))


def test_unsorted_lengths_with_ties_and_no_bias(device):
    lengths = torch.tensor([2, 7, 2, 5, 7, 1, 5], device=device)
    check_matches_packed(device, torch.float64, T=7, B=7, I=4, H=6, bidirectional=True,
                         bias=False, lengths=lengths)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int64],
                         ids=dtype_id)
def test_lengths_any_integer_dtype(device, dtype):
    check_matches_packed(device, torch.float64, T=6, B=4, I=3, H=5,
                         lengths=torch.tensor([6, 2, 4, 1]).to(device, dtype))


def test_lengths_as_list(device):
    native = make_native(3, 4, device=device)
    ours = sf.LSTM.from_native(native)
    x = torch.randn(5, 2, 3, dtype=torch.float64, device=device)
    out, _ = ours(x, lengths=[5, 3])
    ref, _ = packed_lstm(native, x, torch.tensor([5, 3]))
    torch.testing.assert_close(out, ref, **tolerance(LSTM_TOL, device, torch.float64))


def test_outputs_past_length_are_zero(device):
    ours = sf.LSTM(3, 4, bidirectional=True, device=device, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64, device=device)
    out, _ = ours(x, lengths=torch.tensor([6, 2, 4], device=device))
    assert out[2:, 1].abs().sum() == 0 and out[4:, 2].abs().sum() == 0
    assert (out[:2, 1] != 0).all() and (out[:, 0] != 0).all()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_no_lengths_equals_native_on_the_tensor(device, bidirectional, layers):
    native = make_native(4, 6, layers, bidirectional, device=device)
    ours = sf.LSTM.from_native(native)
    x = torch.randn(7, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    out, (h, c) = ours(x)
    ref, (rh, rc) = native(x)
    tol = tolerance(LSTM_TOL, device, torch.float64)
    for a, b in [(out, ref), (h, rh), (c, rc)]:
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(_grads((out, h, c), [x, *ours.parameters()]),
                    _grads((ref, rh, rc), [x, *native.parameters()])):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("batch_first", [False, True])
def test_full_lengths_and_no_lengths_match_native_on_the_tensor(device, batch_first):
    native = make_native(4, 6, 2, True, batch_first=batch_first, device=device)
    ours = sf.LSTM.from_native(native)
    # batch_first: sf.LSTM hands the op a transposed (strided) view of x.
    x = torch.randn(*((3, 5, 4) if batch_first else (5, 3, 4)), dtype=torch.float64,
                    device=device)
    out_n, (h_n, c_n) = native(x)
    for lengths in (None, torch.full((3,), 5, device=device)):
        out_o, (h_o, c_o) = ours(x, lengths=lengths)
        for a, b in ((out_o, out_n), (h_o, h_n), (c_o, c_n)):
            torch.testing.assert_close(a, b, **tolerance(LSTM_TOL, device, torch.float64))


# ------------------------------------------------------------ other inputs
@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_sequence_in_and_out(device, enforce_sorted, bidirectional):
    native = make_native(3, 5, 2, bidirectional, device=device)
    ours = sf.LSTM.from_native(native)
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([4, 6, 1, 4])
    x = torch.randn(6, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    D = 2 if bidirectional else 1
    hx = tuple(torch.randn(2 * D, 4, 5, dtype=torch.float64, device=device) for _ in range(2))
    out, (h, c) = ours(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), hx)
    ref, (rh, rc) = native(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), hx)
    assert isinstance(out, nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, ref.batch_sizes)
    tol = tolerance(LSTM_TOL, device, torch.float64)
    for a, b in [(out.data, ref.data), (h, rh), (c, rc)]:
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(_grads((out.data, h), [x, *ours.parameters()]),
                    _grads((ref.data, rh), [x, *native.parameters()])):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched_input(device, with_hx):
    native = make_native(3, 4, 2, True, device=device)
    ours = sf.LSTM.from_native(native)
    x = torch.randn(5, 3, dtype=torch.float64, device=device)
    hx = (tuple(torch.randn(4, 4, dtype=torch.float64, device=device) for _ in range(2))
          if with_hx else None)
    out, (h, c) = ours(x, hx)
    ref, (rh, rc) = native(x, hx)
    assert out.shape == ref.shape and h.shape == rh.shape
    tol = tolerance(LSTM_TOL, device, torch.float64)
    for a, b in [(out, ref), (h, rh), (c, rc)]:
        torch.testing.assert_close(a, b, **tol)
    out, _ = ours(x, hx, lengths=3)  # unbatched with a length: the first 3 steps only
    ref, _ = native(x[:3], hx)
    torch.testing.assert_close(out[:3], ref, **tol)
    assert out[3:].abs().sum() == 0


@pytest.mark.parametrize("view", ["strided features", "feature slice", "whole rows, offset"])
def test_non_contiguous_input_and_states(device, view):
    """x as a view: features strided, or unit-stride features that are not a
    whole row of x's storage (both gathered by two-index indexing), or whole
    rows at a storage offset (gathered as rows of the storage). Outputs and
    x's gradient against nn.LSTM on the contiguous copy."""
    native = make_native(4, 5, 1, True, device=device)
    ours = sf.LSTM.from_native(native)
    big = torch.randn(6, 8, 9, dtype=torch.float64, device=device)
    x = {"strided features": big[:, ::2, 1:9:2],  # [6, 4, 4]
         "feature slice": big[:, ::2, 2:6],        # batch stride 18, not a multiple of 4
         # strides (32, 8, 1), storage offset 4
         "whole rows, offset": big.flatten()[:192].view(6, 4, 2, 4)[:, :, 1]}[view]
    assert x.shape == (6, 4, 4) and not x.is_contiguous()
    x.requires_grad_(True)
    h0 = torch.randn(4, 2, 5, dtype=torch.float64, device=device).transpose(0, 1)  # [2, 4, 5]
    c0 = torch.randn(2, 4, 5, dtype=torch.float64, device=device)
    lengths = torch.tensor([6, 3, 5, 2])
    out, (h, c) = ours(x, (h0, c0), lengths=lengths)
    x_ref = x.detach().contiguous().requires_grad_(True)
    ref, (rh, rc) = packed_lstm(native, x_ref, lengths, (h0.contiguous(), c0))
    tol = tolerance(LSTM_TOL, device, torch.float64)
    for a, b in [(out, ref), (h, rh), (c, rc)]:
        torch.testing.assert_close(a, b, **tol)
    grad_x, = torch.autograd.grad((out * out).sum() + h.sum() + c.sum(), x)
    grad_ref, = torch.autograd.grad((ref * ref).sum() + rh.sum() + rc.sum(), x_ref)
    torch.testing.assert_close(grad_x, grad_ref, **tol)


def test_empty_batch(device):
    for layers in (1, 2):
        ours = sf.LSTM(3, 4, num_layers=layers, bidirectional=True, device=device,
                       dtype=torch.float64)
        x = torch.randn(5, 0, 3, dtype=torch.float64, device=device, requires_grad=True)
        for lengths in (None, torch.zeros(0, dtype=torch.long, device=device)):
            out, (h, c) = ours(x, lengths=lengths)
            assert out.shape == (5, 0, 8) and h.shape == c.shape == (2 * layers, 0, 4)
            (out.sum() + h.sum() + c.sum()).backward()
            assert x.grad.shape == x.shape
            for p in ours.parameters():
                assert p.grad is not None and p.grad.abs().sum() == 0
            ours.zero_grad()
            x.grad = None


# ------------------------------------------------- the nn.LSTM module parts
def test_state_dict_and_repr_match_native():
    native = nn.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
    ours = sf.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
    assert repr(ours) == repr(native)
    assert list(ours.state_dict()) == list(native.state_dict())
    ours.load_state_dict(native.state_dict())  # a checkpoint loads unchanged
    for (name, a), (_, b) in zip(ours.named_parameters(), native.named_parameters()):
        assert torch.equal(a, b), name
    assert not isinstance(ours, nn.LSTM) and isinstance(ours, nn.RNNBase)


def test_from_native_keeps_mode_and_dtype():
    native = nn.LSTM(3, 4).double().eval()
    ours = sf.LSTM.from_native(native)
    assert not ours.training and ours.weight_hh_l0.dtype == torch.float64
    with pytest.raises(TypeError, match="nn.LSTM"):
        sf.LSTM.from_native(nn.GRU(3, 4))


def test_proj_size_not_implemented():
    with pytest.raises(NotImplementedError, match="proj_size"):
        sf.LSTM(3, 4, proj_size=2)
    with pytest.raises(NotImplementedError, match="proj_size"):
        sf.LSTM.from_native(nn.LSTM(3, 4, proj_size=2))


def test_dropout_between_layers_only_in_training(device):
    torch.manual_seed(0)
    ours = sf.LSTM(4, 6, num_layers=3, dropout=0.5, device=device, dtype=torch.float64)
    native = nn.LSTM(4, 6, num_layers=3, device=device, dtype=torch.float64)
    native.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64, device=device)
    lengths = torch.tensor([5, 2, 4])
    ours.eval()
    torch.testing.assert_close(ours(x, lengths=lengths)[0], packed_lstm(native, x, lengths)[0])
    ours.train()
    a, (ha, _) = ours(x, lengths=lengths)
    b, (hb, _) = ours(x, lengths=lengths)
    assert not torch.allclose(a, b)  # dropout masks differ between calls
    # The first layer sees no dropout: its final states are deterministic.
    torch.testing.assert_close(ha[0], hb[0])
    assert not torch.allclose(ha[1], hb[1])
    assert a[2:, 1].abs().sum() == 0  # padding stays zero


def test_inference_mode_and_no_grad_match_training_path(device):
    native = make_native(3, 5, 2, True, device=device)
    ours = sf.LSTM.from_native(native)
    x = torch.randn(6, 4, 3, dtype=torch.float64, device=device)
    lengths = torch.tensor([6, 1, 3, 5])
    train_out, (th, _) = ours(x.requires_grad_(), lengths=lengths)
    with torch.no_grad():
        out, (h, _) = ours(x, lengths=lengths)
    with torch.inference_mode():
        out2, _ = ours(x, lengths=lengths)
    torch.testing.assert_close(out, train_out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    torch.testing.assert_close(h, th.detach(), rtol=0, atol=0)
