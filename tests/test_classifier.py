"""sf.LSTMClassifier against the same model written with nn.LSTM + packing
and the plain-PyTorch pooling of seqcls_fast.reference, on every device."""
import pytest
import torch
from torch import nn

import seqcls_fast as sf
from helpers import LSTM_TOL, random_lengths, tolerance
from seqcls_fast.reference import (NativeLSTMClassifier, masked_attention_pool, masked_mean_pool,
                                   packed_lstm)


def reference_logits(model, x, lengths):
    """The classifier's forward written with nn.LSTM + packing and plain PyTorch."""
    weight = model.lstm.weight_ih_l0
    native = nn.LSTM(model.lstm.input_size, model.lstm.hidden_size, model.lstm.num_layers,
                     batch_first=True, bidirectional=model.lstm.bidirectional,
                     device=weight.device, dtype=weight.dtype)
    native.load_state_dict(model.lstm.state_dict())
    if model.embedding is not None:
        x = model.embedding(x)
    out, (h_n, _) = packed_lstm(native, x, lengths)
    if model.pooling == "attention":
        keys = torch.tanh(model.pool.proj(out)) if model.pool.proj is not None else None
        features, _ = masked_attention_pool(out, keys, model.pool.query, lengths)
    elif model.pooling == "mean":
        features = masked_mean_pool(out, lengths)
    else:
        features = torch.cat(tuple(h_n[-2:] if native.bidirectional else h_n[-1:]), dim=1)
    return model.head(features)


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_reference(device, pooling, bidirectional):
    settings = dict(num_layers=2, bidirectional=bidirectional, pooling=pooling, device=device,
                    dtype=torch.float64)
    model = sf.LSTMClassifier(4, 6, 3, **settings).eval()
    x = torch.randn(5, 7, 4, dtype=torch.float64, device=device)
    lengths = random_lengths(5, 7).to(device)
    logits = model(x, lengths)
    assert logits.shape == (5, 3)
    tol = tolerance(LSTM_TOL, device, torch.float64)
    torch.testing.assert_close(logits, reference_logits(model, x, lengths), **tol)
    native = NativeLSTMClassifier(4, 6, 3, **settings).eval()
    native.load_state_dict(model.state_dict())  # the same parameter names
    torch.testing.assert_close(logits, native(x, lengths), **tol)


@pytest.mark.parametrize("pooling", ["attention", "additive", "mean", "last"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_inference_pools_online_and_matches_reference(device, pooling, num_layers, with_lengths):
    """Without gradients a unidirectional model on the CPU pools in its top
    layer (lstm_layer_pooled_forward); the logits still equal the reference."""
    model = sf.LSTMClassifier(4, 6, 3, num_layers=num_layers,
                              pooling="attention" if pooling == "additive" else pooling,
                              attn_dim=5 if pooling == "additive" else None, device=device,
                              dtype=torch.float64).eval()
    x = torch.randn(5, 7, 4, dtype=torch.float64, device=device)
    lengths = random_lengths(5, 7).to(device) if with_lengths else None
    with torch.no_grad():
        assert model._pools_online(x) == (torch.device(device).type == "cpu")
        logits = model(x, lengths)
        ref = reference_logits(model, x, lengths if with_lengths else torch.full((5,), 7))
    assert not model._pools_online(x)  # a gradient is wanted: the separate pooling
    torch.testing.assert_close(logits, ref, **tolerance(LSTM_TOL, device, torch.float64))
    with torch.inference_mode():
        torch.testing.assert_close(model(x, lengths), logits, rtol=0, atol=0)


def test_token_ids_with_embedding_and_additive_attention(device):
    model = sf.LSTMClassifier(5, 4, 2, vocab_size=11, attn_dim=3, device=device,
                              dtype=torch.float64).eval()
    tokens = torch.randint(1, 11, (3, 6), device=device)
    lengths = torch.tensor([6, 2, 4], device=device)
    tokens[1, 2:] = 0
    tokens[2, 4:] = 0
    torch.testing.assert_close(model(tokens, lengths), reference_logits(model, tokens, lengths),
                               **tolerance(LSTM_TOL, device, torch.float64))


@pytest.mark.parametrize("memory", ["fast", "low"])
def test_gradcheck_classifier(device, memory):
    model = sf.LSTMClassifier(3, 4, 2, num_layers=2, bidirectional=True, attn_dim=3,
                              device=device, dtype=torch.float64, memory=memory)
    x = torch.randn(3, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    lengths = torch.tensor([5, 2, 4], device=device)
    params = list(model.parameters())

    def fn(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(
                model, dict(zip([n for n, _ in model.named_parameters()], ps))):
            return model(x, lengths)

    assert torch.autograd.gradcheck(fn, (x, *[p.detach().requires_grad_() for p in params]))


def test_trains_a_separable_problem():
    """A few steps of Adam must fit a task whose label is where the peak is."""
    torch.manual_seed(0)
    model = sf.LSTMClassifier(1, 16, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    x = torch.randn(64, 12, 1) * 0.1
    lengths = torch.randint(4, 13, (64,))
    labels = torch.randint(0, 2, (64,))
    x[labels == 1, 0, 0] += 3.0
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x, lengths), labels)
        loss.backward()
        opt.step()
    accuracy = (model(x, lengths).argmax(1) == labels).float().mean()
    assert accuracy > 0.95


def test_bad_pooling_name():
    with pytest.raises(ValueError, match="pooling"):
        sf.LSTMClassifier(3, 4, 2, pooling="max")


# ---------------------------------------------------------------- cell="gru"
@pytest.mark.parametrize("pooling", ["attention", "additive", "mean", "last"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("memory", ["fast", "low"])
def test_gru_cell_matches_native(device, pooling, bidirectional, memory):
    """cell="gru": sf.GRU in the classifier (submodule ``gru``) against the
    same model on nn.GRU + packing: logits and every parameter's gradient, in
    training and without gradients (then a unidirectional model's top layer
    pools online: gru_layer_pooled_forward)."""
    settings = dict(num_layers=2, bidirectional=bidirectional, cell="gru",
                    pooling="attention" if pooling == "additive" else pooling,
                    attn_dim=5 if pooling == "additive" else None, device=device,
                    dtype=torch.float64)
    model = sf.LSTMClassifier(4, 6, 3, memory=memory, **settings)
    native = NativeLSTMClassifier(4, 6, 3, **settings)
    assert list(model.state_dict()) == list(native.state_dict())
    assert isinstance(model.gru, sf.GRU) and model.rnn is model.gru
    native.load_state_dict(model.state_dict())
    x = torch.randn(5, 7, 4, dtype=torch.float64, device=device)
    lengths = random_lengths(5, 7, torch.Generator().manual_seed(2)).to(device)
    labels = torch.tensor([0, 2, 1, 1, 0], device=device)
    tol = tolerance(LSTM_TOL, device, torch.float64)
    for m in (model, native):
        nn.functional.cross_entropy(m(x, lengths), labels).backward()
    torch.testing.assert_close(model(x, lengths), native(x, lengths), **tol)
    for (name, p), (_, q) in zip(model.named_parameters(), native.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, **tol, msg=name)
    with torch.no_grad():
        assert model._pools_online(x) == (not bidirectional)
        torch.testing.assert_close(model.eval()(x, lengths), native.eval()(x, lengths), **tol)


def test_unknown_cell_is_refused():
    with pytest.raises(ValueError, match=r"cell must be one of \('lstm', 'gru'\), got 'rnn'"):
        sf.LSTMClassifier(3, 4, 2, cell="rnn")
