"""The operators as operators: opcheck, float64 gradcheck, torch.compile."""
import pytest
import torch

import seqcls_fast as sf
from reference import random_lengths

ops = torch.ops.seqcls_fast


def _lstm_args(T=5, B=4, I=3, H=4, reverse=False, with_state=True, with_bias=True,
               lengths=True, dtype=torch.float64):
    g = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=True)  # noqa: E731
    return (g(T, B, I), random_lengths(B, T) if lengths else None,
            g(B, H) if with_state else None, g(B, H) if with_state else None,
            g(4 * H, I), g(4 * H, H), g(4 * H) if with_bias else None,
            g(4 * H) if with_bias else None, reverse)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_opcheck_lstm_layer(reverse, with_state, lengths):
    args = _lstm_args(reverse=reverse, with_state=with_state, lengths=lengths)
    torch.library.opcheck(ops.lstm_layer_forward, args + (True,))
    # save_activations=False is the inference call: inputs that need no grad.
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(ops.lstm_layer_forward, detached + (False,))


def test_inference_call_refuses_backward():
    args = _lstm_args()
    out = ops.lstm_layer_forward(*args, False)[0]
    with pytest.raises(RuntimeError, match="save_activations=False"):
        out.sum().backward()


@pytest.mark.parametrize("with_keys", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_opcheck_pooling(with_keys, lengths):
    B, T, D = 3, 6, 5
    values = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(B, T, 2, dtype=torch.float64, requires_grad=True) if with_keys else None
    query = torch.randn(2 if with_keys else D, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.masked_attention_pool_forward,
                          (values, keys, query, random_lengths(B, T) if lengths else None))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gradcheck_lstm_layer(reverse, with_bias):
    x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = _lstm_args(reverse=reverse,
                                                               with_bias=with_bias)
    inputs = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh) if t is not None]

    def fn(*ts):
        it = iter(ts)
        x, h0, c0, w_ih, w_hh = (next(it) for _ in range(5))
        b_ih, b_hh = (next(it), next(it)) if with_bias else (None, None)
        return sf.lstm_layer(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse)

    assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_module_with_lengths_and_states():
    lstm = sf.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 3])

    def fn(x, h0, c0):
        out, (h, c) = lstm(x, (h0, c0), lengths=lengths)
        return out, h, c

    assert torch.autograd.gradcheck(fn, (x, h0, c0))


@pytest.mark.parametrize("with_keys", [False, True])
def test_gradcheck_pooling(with_keys):
    values = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True) if with_keys else None
    query = torch.randn(2 if with_keys else 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 1, 3])
    inputs = (values, query) + ((keys,) if with_keys else ())

    def fn(values, query, keys=None):
        return sf.masked_attention_pool(values, keys, query, lengths)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_compile_fullgraph_classifier_forward_backward(bidirectional):
    torch._dynamo.reset()
    model = sf.LSTMClassifier(4, 8, 3, num_layers=2, bidirectional=bidirectional)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(6, 9, 4)
    lengths = random_lengths(6, 9)
    eager = model(x, lengths)
    out = compiled(x, lengths)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    grads_eager = torch.autograd.grad(eager.sum(), list(model.parameters()))
    grads_compiled = torch.autograd.grad(out.sum(), list(model.parameters()))
    for a, b in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
