"""torch.export keeps working: sf.LSTM (every input form with lengths), sf.GRU
and sf.RNN, and sf.LSTMClassifier (every pooling, with an embedding, either
cell), with dynamic batch and
time dimensions, match eager on batches of other sizes than the example.
(TorchScript, torch.jit.script, is not supported: it is in maintenance and
cannot see through the Python modules.)"""
import pytest
import torch

import seqcls_fast as sf
from helpers import LSTMOutputs, export_dims


def _export(module, args, dynamic_shapes):
    return torch.export.export(module.eval(), args, dynamic_shapes=dynamic_shapes)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_export_lstm_with_lengths(batch_first, bidirectional):
    torch.manual_seed(0)
    module = LSTMOutputs(sf.LSTM(3, 4, num_layers=2, batch_first=batch_first,
                                  bidirectional=bidirectional))
    batch, steps = export_dims()
    x = torch.randn(5, 3, 3)
    if batch_first:
        x = x.transpose(0, 1).contiguous()
    shapes = {"x": {1 - int(batch_first): batch, int(batch_first): steps}, "lengths": {0: batch}}
    program = _export(module, (x, torch.tensor([5, 2, 4])), shapes)
    x2 = torch.randn(9, 7, 3)
    if batch_first:
        x2 = x2.transpose(0, 1).contiguous()
    lengths2 = torch.tensor([9, 1, 4, 9, 3, 6, 2])
    for got, want in zip(program.module()(x2, lengths2), module(x2, lengths2)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class _HOutputs(torch.nn.Module):
    """sf.GRU or sf.RNN (one state tensor) as tensors in and out."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        return self.rnn(x, lengths=lengths)


@pytest.mark.parametrize("make", [lambda: sf.GRU(3, 4, num_layers=2, bidirectional=True),
                                  lambda: sf.RNN(3, 4, num_layers=2, nonlinearity="relu",
                                                 bidirectional=True)],
                         ids=["gru", "rnn"])
def test_export_gru_and_rnn_with_lengths(make):
    torch.manual_seed(0)
    module = _HOutputs(make())
    batch, steps = export_dims()
    program = _export(module, (torch.randn(5, 3, 3), torch.tensor([5, 2, 4])),
                      {"x": {0: steps, 1: batch}, "lengths": {0: batch}})
    x2, lengths2 = torch.randn(9, 7, 3), torch.tensor([9, 1, 4, 9, 3, 6, 2])
    for got, want in zip(program.module()(x2, lengths2), module(x2, lengths2)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
def test_export_classifier(pooling, cell):
    torch.manual_seed(0)
    model = sf.LSTMClassifier(3, 4, 5, num_layers=2, bidirectional=True, pooling=pooling,
                              cell=cell)
    batch, steps = export_dims()
    program = _export(model, (torch.randn(3, 6, 3), torch.tensor([6, 2, 4])),
                      {"x": {0: batch, 1: steps}, "lengths": {0: batch}})
    x2, lengths2 = torch.randn(5, 11, 3), torch.tensor([11, 3, 7, 1, 11])
    torch.testing.assert_close(program.module()(x2, lengths2), model(x2, lengths2),
                               rtol=0, atol=0)


def test_export_classifier_with_embedding():
    torch.manual_seed(0)
    model = sf.LSTMClassifier(4, 5, 3, vocab_size=20, pooling="attention", attn_dim=6)
    batch, steps = export_dims()
    tokens = torch.randint(1, 20, (3, 6))
    program = _export(model, (tokens, torch.tensor([6, 2, 4])),
                      {"x": {0: batch, 1: steps}, "lengths": {0: batch}})
    tokens2, lengths2 = torch.randint(1, 20, (4, 9)), torch.tensor([9, 2, 5, 9])
    torch.testing.assert_close(program.module()(tokens2, lengths2), model(tokens2, lengths2),
                               rtol=0, atol=0)
