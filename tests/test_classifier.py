"""sf.LSTMClassifier against the same model built from nn.LSTM + packing."""
import pytest
import torch
from torch import nn

import seqcls_fast as sf
from reference import masked_attention_pool, packed_lstm, random_lengths


def reference_logits(model, x, lengths):
    """The classifier's forward written with nn.LSTM + packing and plain PyTorch."""
    native = nn.LSTM(model.lstm.input_size, model.lstm.hidden_size, model.lstm.num_layers,
                     batch_first=True, bidirectional=model.lstm.bidirectional).double()
    native.load_state_dict(model.lstm.state_dict())
    if model.embedding is not None:
        x = model.embedding(x)
    out, (h_n, _) = packed_lstm(native, x, lengths)
    if model.pooling == "attention":
        keys = torch.tanh(model.pool.proj(out)) if model.pool.proj is not None else None
        features, _ = masked_attention_pool(out, keys, model.pool.query, lengths)
    elif model.pooling == "mean":
        features = out.sum(1) / lengths.unsqueeze(1).double()
    else:
        features = torch.cat(tuple(h_n[-2:] if native.bidirectional else h_n[-1:]), dim=1)
    return model.head(features)


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_reference(pooling, bidirectional):
    model = sf.LSTMClassifier(4, 6, 3, num_layers=2, bidirectional=bidirectional,
                              pooling=pooling).double().eval()
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    lengths = random_lengths(5, 7)
    logits = model(x, lengths)
    assert logits.shape == (5, 3)
    torch.testing.assert_close(logits, reference_logits(model, x, lengths), rtol=1e-9, atol=1e-9)


def test_token_ids_with_embedding_and_additive_attention():
    model = sf.LSTMClassifier(5, 4, 2, vocab_size=11, attn_dim=3).double().eval()
    tokens = torch.randint(1, 11, (3, 6))
    lengths = torch.tensor([6, 2, 4])
    tokens[1, 2:] = 0
    tokens[2, 4:] = 0
    torch.testing.assert_close(model(tokens, lengths), reference_logits(model, tokens, lengths),
                               rtol=1e-9, atol=1e-9)


def test_gradcheck_classifier():
    model = sf.LSTMClassifier(3, 4, 2, bidirectional=True, attn_dim=3).double()
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
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
