"""sf.LSTM against nn.LSTM + pack_padded_sequence: outputs, final states and
every gradient, over random and awkward shapes and every input form."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import seqcls_fast as sf
from reference import make_native, packed_lstm, random_lengths

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _grads(outputs, inputs):
    """Gradients of a fixed random projection of outputs w.r.t. inputs."""
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _check_case(T, B, I, H, layers=1, bidirectional=False, batch_first=False, bias=True,
                dtype=torch.float64, lengths=None, with_hx=True):
    native = make_native(I, H, layers, bidirectional, batch_first, bias, dtype)
    ours = sf.LSTM.from_native(native)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    if lengths is None:
        lengths = random_lengths(B, T)
    hx = None
    if with_hx:
        D = 2 if bidirectional else 1
        hx = tuple(torch.randn(layers * D, B, H, dtype=dtype, requires_grad=True) for _ in range(2))
    out, (h, c) = ours(x, hx, lengths=lengths)
    ref_out, (ref_h, ref_c) = packed_lstm(native, x, lengths, hx)
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(h, ref_h, **tol)
    torch.testing.assert_close(c, ref_c, **tol)
    leaves = [x] + (list(hx) if hx else [])
    ours_g = _grads((out, h, c), leaves + list(ours.parameters()))
    ref_g = _grads((ref_out, ref_h, ref_c), leaves + list(native.parameters()))
    names = ["x"] + (["h0", "c0"] if hx else []) + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, ours_g, ref_g):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_random_shapes(dtype, bidirectional, layers):
    _check_case(T=9, B=6, I=5, H=7, layers=layers, bidirectional=bidirectional, dtype=dtype)


@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (1, 4, 3, 5), (6, 1, 3, 5), (5, 3, 2, 1),
                                     (4, 3, 9, 13), (3, 5, 4, 33)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_awkward_shapes(T, B, I, H, bidirectional):
    _check_case(T, B, I, H, bidirectional=bidirectional)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_all_lengths_equal(bidirectional):
    _check_case(T=7, B=4, I=3, H=5, bidirectional=bidirectional,
                lengths=torch.full((4,), 7, dtype=torch.long))
    _check_case(T=7, B=4, I=3, H=5, bidirectional=bidirectional,
                lengths=torch.full((4,), 4, dtype=torch.long))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_almost_all_lengths_one(bidirectional):
    lengths = torch.ones(8, dtype=torch.long)
    lengths[5] = 6
    _check_case(T=6, B=8, I=3, H=4, bidirectional=bidirectional, lengths=lengths)


def test_three_layers_bidirectional_float32():
    _check_case(T=11, B=7, I=6, H=10, layers=3, bidirectional=True, dtype=torch.float32)


@pytest.mark.parametrize("batch_first", [False, True])
def test_batch_first_both_ways(batch_first):
    _check_case(T=8, B=5, I=3, H=6, layers=2, bidirectional=True, batch_first=batch_first)


def test_unsorted_lengths_with_ties_and_no_bias():
    lengths = torch.tensor([2, 7, 2, 5, 7, 1, 5])
    _check_case(T=7, B=7, I=4, H=6, bidirectional=True, bias=False, lengths=lengths)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int64])
def test_lengths_any_integer_dtype(dtype):
    _check_case(T=6, B=4, I=3, H=5, lengths=torch.tensor([6, 2, 4, 1]).to(dtype))


def test_lengths_as_list():
    native = make_native(3, 4)
    ours = sf.LSTM.from_native(native)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, _ = ours(x, lengths=[5, 3])
    ref, _ = packed_lstm(native, x, torch.tensor([5, 3]))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_outputs_past_length_are_zero():
    ours = sf.LSTM(3, 4, bidirectional=True).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    out, _ = ours(x, lengths=torch.tensor([6, 2, 4]))
    assert out[2:, 1].abs().sum() == 0 and out[4:, 2].abs().sum() == 0
    assert (out[:2, 1] != 0).all() and (out[:, 0] != 0).all()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_no_lengths_equals_native_on_the_tensor(bidirectional, layers):
    native = make_native(4, 6, layers, bidirectional)
    ours = sf.LSTM.from_native(native)
    x = torch.randn(7, 3, 4, dtype=torch.float64, requires_grad=True)
    out, (h, c) = ours(x)
    ref, (rh, rc) = native(x)
    for a, b in [(out, ref), (h, rh), (c, rc)]:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for a, b in zip(_grads((out, h, c), [x, *ours.parameters()]),
                    _grads((ref, rh, rc), [x, *native.parameters()])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_sequence_in_and_out(enforce_sorted, bidirectional):
    native = make_native(3, 5, 2, bidirectional)
    ours = sf.LSTM.from_native(native)
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([4, 6, 1, 4])
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    D = 2 if bidirectional else 1
    hx = tuple(torch.randn(2 * D, 4, 5, dtype=torch.float64) for _ in range(2))
    out, (h, c) = ours(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), hx)
    ref, (rh, rc) = native(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), hx)
    assert isinstance(out, nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, ref.batch_sizes)
    for a, b in [(out.data, ref.data), (h, rh), (c, rc)]:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for a, b in zip(_grads((out.data, h), [x, *ours.parameters()]),
                    _grads((ref.data, rh), [x, *native.parameters()])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched_input(with_hx):
    native = make_native(3, 4, 2, True)
    ours = sf.LSTM.from_native(native)
    x = torch.randn(5, 3, dtype=torch.float64)
    hx = tuple(torch.randn(4, 4, dtype=torch.float64) for _ in range(2)) if with_hx else None
    out, (h, c) = ours(x, hx)
    ref, (rh, rc) = native(x, hx)
    assert out.shape == ref.shape and h.shape == rh.shape
    for a, b in [(out, ref), (h, rh), (c, rc)]:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    out, _ = ours(x, hx, lengths=3)  # unbatched with a length: the first 3 steps only
    ref, _ = native(x[:3], hx)
    torch.testing.assert_close(out[:3], ref, rtol=1e-9, atol=1e-9)
    assert out[3:].abs().sum() == 0


def test_non_contiguous_input_and_states():
    native = make_native(4, 5, 1, True)
    ours = sf.LSTM.from_native(native)
    big = torch.randn(6, 8, 9, dtype=torch.float64)
    x = big[:, ::2, 1:9:2]  # [6, 4, 4], strided in batch and features
    assert not x.is_contiguous()
    h0 = torch.randn(4, 2, 5, dtype=torch.float64).transpose(0, 1)  # [2, 4, 5]
    c0 = torch.randn(2, 4, 5, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 5, 2])
    out, (h, c) = ours(x, (h0, c0), lengths=lengths)
    ref, (rh, rc) = packed_lstm(native, x.contiguous(), lengths, (h0.contiguous(), c0))
    for a, b in [(out, ref), (h, rh), (c, rc)]:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


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


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    ours = sf.LSTM(4, 6, num_layers=3, dropout=0.5).double()
    native = nn.LSTM(4, 6, num_layers=3).double()
    native.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64)
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


def test_inference_mode_and_no_grad_match_training_path():
    native = make_native(3, 5, 2, True)
    ours = sf.LSTM.from_native(native)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 5])
    train_out, (th, _) = ours(x.requires_grad_(), lengths=lengths)
    with torch.no_grad():
        out, (h, _) = ours(x, lengths=lengths)
    with torch.inference_mode():
        out2, _ = ours(x, lengths=lengths)
    torch.testing.assert_close(out, train_out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    torch.testing.assert_close(h, th.detach(), rtol=0, atol=0)


def test_empty_batch():
    ours = sf.LSTM(3, 4, bidirectional=True).double()
    x = torch.randn(5, 0, 3, dtype=torch.float64, requires_grad=True)
    out, (h, c) = ours(x, lengths=torch.zeros(0, dtype=torch.long))
    assert out.shape == (5, 0, 8) and h.shape == (2, 0, 4) and c.shape == (2, 0, 4)
    (out.sum() + h.sum()).backward()
    assert x.grad.shape == x.shape
    assert ours.weight_ih_l0.grad is not None and ours.weight_ih_l0.grad.abs().sum() == 0
