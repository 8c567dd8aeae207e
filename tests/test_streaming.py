"""Streaming classification: after any chunking of any sequences, with resets,
``stream.feed`` gives the offline classifier's logits on each row's prefix."""
import pytest
import torch

import seqcls_fast as sf
from helpers import assert_float32_within_pytorchs_own, native_twin

POOLINGS = ["attention", "mean", "last"]
CELLS = ["lstm", "gru"]


def _model(device, dtype, layers, pooling, embedding, attn_dim=None, cell="lstm"):
    kwargs = {"vocab_size": 11} if embedding else {}
    return sf.LSTMClassifier(4, 5, 3, num_layers=layers, pooling=pooling, attn_dim=attn_dim,
                             cell=cell, **kwargs).to(device=device, dtype=dtype).eval()


def _sequences(batch, steps, embedding, dtype, device, generator):
    if embedding:
        return torch.randint(1, 11, (batch, steps), generator=generator).to(device)
    return torch.randn(batch, steps, 4, generator=generator, dtype=dtype).to(device)


def _replay(model, stream, x, generator, resets):
    """Feeds x [B, T(, I)] in random chunks (some rows waiting, some reset and
    restarted from their first step); yields each result with the offline
    model on the prefix each row has seen since its last reset, and that
    prefix (x, lengths) for the rows that have seen one."""
    batch, steps = x.shape[0], x.shape[1]
    position = torch.zeros(batch, dtype=torch.long)  # next step of each row's sequence
    results = []
    while (position < steps).any():
        if resets and torch.rand(1, generator=generator).item() < 0.2:
            rows = torch.rand(batch, generator=generator) < 0.3
            stream.reset(rows.to(x.device))
            position[rows] = 0
        wanted = torch.randint(0, 5, (batch,), generator=generator)
        take = torch.minimum(wanted, steps - position)
        width = int(take.max())
        chunk = x.new_zeros((batch, width) + tuple(x.shape[2:]))
        for b in range(batch):
            chunk[b, :take[b]] = x[b, position[b]:position[b] + take[b]]
        logits = stream.feed(chunk, take.to(x.device) if take.sum() else take)
        position += take
        results.append((logits, position.clone()))
    for logits, seen in results:
        rows = seen > 0
        assert torch.isnan(logits[~rows.to(logits.device)]).all()
        if rows.any():
            prefix = x[rows.to(x.device)], seen[rows].to(x.device)
            yield logits[rows.to(logits.device)], model(*prefix), prefix


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("seed", range(6))
def test_streamed_logits_equal_the_offline_model_float64(device, seed, cell):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers = 1 + seed % 3
    pooling = POOLINGS[seed % 3]
    embedding = seed % 2 == 1
    model = _model(device, torch.float64, layers, pooling, embedding,
                   attn_dim=3 if seed == 3 else None, cell=cell)
    x = _sequences(4, 13, embedding, torch.float64, device, generator)
    for got, want, _ in _replay(model, model.stream(4), x, generator, resets=seed >= 2):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_streamed_logits_equal_the_offline_model_float32(device, pooling, cell):
    generator = torch.Generator().manual_seed(7)
    model = _model(device, torch.float32, 2, pooling, False, cell=cell)
    x = _sequences(5, 17, False, torch.float32, device, generator)
    twin32, twin64 = native_twin(model, torch.float32), native_twin(model, torch.float64)
    for got, want, (inputs, lengths) in _replay(model, model.stream(5), x, generator,
                                                resets=True):
        if torch.device(device).type == "cuda":
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            continue
        # Not bitwise: chunks and whole prefixes run GEMMs of other shapes
        # (MKL may sum them in other orders), and the stream pools with a
        # running max. They agree within PyTorch's own float32 error on the
        # prefixes (the float32 rule, compare_to).
        with torch.no_grad():
            torch32, truth = twin32(inputs, lengths), twin64(inputs.double(), lengths)
        assert_float32_within_pytorchs_own([got], [torch32], [truth], ["logits"],
                                           compare_to=[want])


@pytest.mark.parametrize("cell", CELLS)
def test_one_step_chunks_keep_state_per_row_constant(cell):
    model = _model("cpu", torch.float64, 2, "attention", False, cell=cell)
    stream = model.stream(2)
    sizes = []
    for _ in range(20):
        stream.feed(torch.randn(2, 1, 4, dtype=torch.float64))
        sizes.append(stream.state_numel())
    # 2 layers x (h, c; the GRU: h) x B x H, seen, and the pooling state
    # (max, denom, sum)
    states = 2 if cell == "lstm" else 1
    assert set(sizes) == {2 * states * 2 * 5 + 2 + 2 + 2 + 2 * 5}


@pytest.mark.parametrize("cell", CELLS)
def test_reset_after_whole_chunks_then_partial_chunks(cell):
    """Whole chunks rebind the state, partial ones scatter into it: mixing
    them with resets still gives the offline result."""
    model = _model("cpu", torch.float64, 2, "attention", False, cell=cell)
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    stream = model.stream(2)
    stream.feed(x[:, :3])
    stream.reset([0])
    logits = stream.feed(x[:, 3:5], torch.tensor([2, 1]))
    torch.testing.assert_close(logits[0], model(x[:1, 3:5], torch.tensor([2]))[0],
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(logits[1], model(x[1:, :4], torch.tensor([4]))[0],
                               rtol=0, atol=1e-10)


def test_stream_errors():
    model = _model("cpu", torch.float32, 1, "attention", False)
    with pytest.raises(RuntimeError, match="training mode"):
        model.train().stream(2)
    model.eval()
    bidirectional = sf.LSTMClassifier(4, 5, 3, bidirectional=True).eval()
    with pytest.raises(ValueError, match="bidirectional.*reverse direction reads the future"):
        bidirectional.stream(2)
    stream = model.stream(2)
    with pytest.raises(ValueError, match=r"B = 2 rows"):
        stream.feed(torch.randn(3, 1, 4))
    with pytest.raises(ValueError, match=r"shape \[B, t, 4\]"):
        stream.feed(torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match=r"chunk_lengths must lie in \[0, t\] = \[0, 2\]"):
        stream.feed(torch.randn(2, 2, 4), torch.tensor([3, 1]))
    with pytest.raises(ValueError, match=r"chunk_lengths must lie in \[0, t\]"):
        stream.feed(torch.randn(2, 2, 4), torch.tensor([-1, 1]))
    with pytest.raises(TypeError, match="chunk dtype torch.float64 does not match"):
        stream.feed(torch.randn(2, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="chunk_lengths must be integers"):
        stream.feed(torch.randn(2, 2, 4), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 2\)"):
        stream.reset([2])
