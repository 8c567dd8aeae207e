"""Second derivatives (create_graph=True: gradient penalties, Hessian-vector
products) through the LSTM, both poolings and the classifier, float64
gradgradcheck against finite differences; and the fast backward stays the one
used when no graph is asked for."""
import pytest
import torch
from torch.func import functional_call

import seqcls_fast as sf

LENGTHS = torch.tensor([4, 1, 3])


def _params(module):
    return {name: p.detach().clone().requires_grad_() for name, p in module.named_parameters()}


def test_gradgradcheck_lstm_with_lengths_states_bidirectional_two_layers(device):
    lstm = sf.LSTM(2, 3, num_layers=2, bidirectional=True).to(device, torch.float64)
    names = [n for n, _ in lstm.named_parameters()]
    x = torch.randn(4, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    c0 = torch.randn(4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)

    def f(x, h0, c0, *weights):
        out, (h_n, c_n) = functional_call(lstm, dict(zip(names, weights)), (x, (h0, c0)),
                                          {"lengths": LENGTHS})
        return out, h_n, c_n

    weights = tuple(_params(lstm).values())
    assert torch.autograd.gradgradcheck(f, (x, h0, c0, *weights))


@pytest.mark.parametrize("attn_dim", [None, 4])
def test_gradgradcheck_pooling(device, attn_dim):
    pool = sf.MaskedAttentionPooling(5, attn_dim=attn_dim).to(device, torch.float64)
    params = _params(pool)
    values = torch.randn(3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)

    def f(values, *weights):
        return functional_call(pool, dict(zip(params, weights)), (values, LENGTHS))

    assert torch.autograd.gradgradcheck(f, (values, *params.values()))


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
def test_gradgradcheck_classifier(device, pooling):
    model = sf.LSTMClassifier(2, 3, 2, bidirectional=True,
                              pooling=pooling).to(device, torch.float64)
    params = _params(model)
    x = torch.randn(3, 4, 2, dtype=torch.float64, device=device, requires_grad=True)

    def f(x, *weights):
        return functional_call(model, dict(zip(params, weights)), (x, LENGTHS))

    assert torch.autograd.gradgradcheck(f, (x, *params.values()))


def test_gradient_penalty_matches_the_native_model():
    """A WGAN-style penalty ||d logits / d x||^2, differentiated again: the same
    weight gradients as nn.LSTM + packing (the native classifier)."""
    torch.manual_seed(0)
    ours = sf.LSTMClassifier(2, 3, 2, bidirectional=True).double()
    native = sf.reference.NativeLSTMClassifier(2, 3, 2, bidirectional=True).double()
    native.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 2, dtype=torch.float64)
    grads = []
    for model in (ours, native):
        xr = x.clone().requires_grad_()
        (dx,) = torch.autograd.grad(model(xr, LENGTHS).sum(), xr, create_graph=True)
        penalty = dx.pow(2).sum()
        found = torch.autograd.grad(penalty, list(model.parameters()), allow_unused=True)
        grads.append([g if g is not None else torch.zeros_like(p)
                      for g, p in zip(found, model.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert any(g.abs().sum() > 0 for g in grads[0])  # the penalty reaches the weights


def test_first_order_backward_takes_the_fast_path(monkeypatch):
    """Without create_graph the reference recurrence is never run."""
    from seqcls_fast import reference

    def fail(*args, **kwargs):
        raise AssertionError("the differentiable path ran without create_graph")

    monkeypatch.setattr(reference, "lstm_layer", fail)
    monkeypatch.setattr(reference, "masked_attention_pool", fail)
    model = sf.LSTMClassifier(2, 3, 2, num_layers=2, bidirectional=True).double()
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    model(x, LENGTHS).sum().backward()
    assert x.grad is not None and model.head.weight.grad is not None
