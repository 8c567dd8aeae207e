"""ONNX export (seqcls_fast.onnx_export): sf.LSTM and sf.LSTMClassifier go
through torch.onnx.export(dynamo=True) with the translation table, lengths a
graph input, batch and time dynamic; onnxruntime on batches of other sizes than
the example matches eager (within PyTorch's own float32 error), and the graph
holds one ONNX LSTM node per layer and direction reading sequence_lens, with no
Loop or Scan."""
import subprocess
import sys

import pytest
import torch

import seqcls_fast as sf
from helpers import (LSTMOutputs, assert_float32_within_pytorchs_own, cast_floats, export_dims,
                     native_twin, random_lengths)
from seqcls_fast.onnx_export import onnx_translation_table

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx")
pytest.importorskip("onnxscript", reason="ONNX export tests need onnxscript")
onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime")

BATCH, STEPS = export_dims()


def _export(module, args, dynamic_shapes, path):
    torch.onnx.export(module.eval(), args, str(path), dynamo=True,
                      custom_translation_table=onnx_translation_table(),
                      dynamic_shapes=dynamic_shapes)
    return str(path)


def _outputs(module, args):
    with torch.no_grad():
        out = module(*args)
    return list(out) if isinstance(out, tuple) else [out]


def _run(path, module, args):
    """The ONNX file's outputs in onnxruntime and the module's in eager, on args."""
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
    return [torch.from_numpy(g) for g in got], _outputs(module, args)


def _assert_matches_eager(path, module, args):
    """onnxruntime's float32 outputs on args agree with eager's within
    PyTorch's own float32 error on them (the float32 rule, compare_to: the
    native twin of the module in float32 against it in float64). Not
    bitwise: onnxruntime's LSTM and MatMul kernels sum in their own orders."""
    got, want = _run(path, module, args)
    assert len(got) == len(want)
    torch32 = _outputs(native_twin(module, torch.float32), args)
    truth = _outputs(native_twin(module, torch.float64), cast_floats(args, torch.float64))
    assert_float32_within_pytorchs_own(got, torch32, truth,
                                       [f"output {i}" for i in range(len(got))], compare_to=want)


def _nodes(path):
    model = onnx.load(path)
    nodes = list(model.graph.node)
    for function in model.functions:
        nodes.extend(function.node)
    return nodes


def _assert_lstm_nodes(path, count, with_lengths=True, op_type="LSTM"):
    """``count`` ONNX LSTM (op_type) nodes, each reading sequence_lens (input
    4) when with_lengths, and no loop of any kind; the model passes the ONNX
    checker."""
    onnx.checker.check_model(onnx.load(path), full_check=True)
    nodes = _nodes(path)
    assert not [n.op_type for n in nodes if n.op_type in ("Loop", "Scan", "If")]
    lstms = [n for n in nodes if n.op_type == op_type]
    assert len(lstms) == count
    for node in lstms:
        has_lengths = len(node.input) > 4 and node.input[4] != ""
        assert has_lengths == with_lengths


def _batch(steps, batch, features, seed):
    """A padded batch with random lengths in [1, steps], one of each extreme."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, features, generator=generator)
    lengths = random_lengths(batch, steps, generator)
    lengths[0], lengths[1] = steps, 1
    return x, lengths


class _LSTMWithStates(LSTMOutputs):
    def forward(self, x, lengths, h0, c0):
        out, (h_n, c_n) = self.lstm(x, (h0, c0), lengths=lengths)
        return out, h_n, c_n


class _LSTMNoLengths(LSTMOutputs):
    def forward(self, x):
        out, (h_n, c_n) = self.lstm(x)
        return out, h_n, c_n


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_with_lengths(tmp_path, num_layers, bidirectional):
    torch.manual_seed(0)
    module = LSTMOutputs(sf.LSTM(3, 4, num_layers=num_layers, bidirectional=bidirectional))
    path = _export(module, _batch(5, 3, 3, seed=1), {"x": {0: STEPS, 1: BATCH},
                                                     "lengths": {0: BATCH}}, tmp_path / "m.onnx")
    _assert_lstm_nodes(path, num_layers * (2 if bidirectional else 1))
    _assert_matches_eager(path, module, _batch(9, 7, 3, seed=2))


def test_lstm_batch_first_with_initial_states(tmp_path):
    torch.manual_seed(0)
    module = _LSTMWithStates(sf.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True))

    def args(steps, batch, seed):
        x, lengths = _batch(steps, batch, 3, seed)
        return (x.transpose(0, 1).contiguous(), lengths,
                torch.randn(4, batch, 4), torch.randn(4, batch, 4))

    path = _export(module, args(5, 3, seed=1),
                   {"x": {0: BATCH, 1: STEPS}, "lengths": {0: BATCH}, "h0": {1: BATCH},
                    "c0": {1: BATCH}}, tmp_path / "m.onnx")
    _assert_lstm_nodes(path, 4)
    for node in (n for n in _nodes(path) if n.op_type == "LSTM"):
        assert node.input[5] != "" and node.input[6] != ""  # initial_h, initial_c
    _assert_matches_eager(path, module, args(8, 6, seed=2))


def test_lstm_without_lengths(tmp_path):
    torch.manual_seed(0)
    module = _LSTMNoLengths(sf.LSTM(3, 4, bidirectional=True))
    path = _export(module, (torch.randn(5, 3, 3),), {"x": {0: STEPS, 1: BATCH}},
                   tmp_path / "m.onnx")
    _assert_lstm_nodes(path, 2, with_lengths=False)
    _assert_matches_eager(path, module, (torch.randn(9, 7, 3),))


class _GRUOutputs(torch.nn.Module):
    """sf.GRU or sf.RNN (hx one tensor) as the exporters want it."""

    def __init__(self, gru):
        super().__init__()
        self.gru = gru

    def forward(self, x, lengths):
        return self.gru(x, lengths=lengths)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_with_lengths(tmp_path, num_layers, bidirectional):
    """sf.GRU: one ONNX GRU node per layer and direction, linear_before_reset=1."""
    torch.manual_seed(0)
    module = _GRUOutputs(sf.GRU(3, 4, num_layers=num_layers, bidirectional=bidirectional))
    path = _export(module, _batch(5, 3, 3, seed=1), {"x": {0: STEPS, 1: BATCH},
                                                     "lengths": {0: BATCH}}, tmp_path / "m.onnx")
    _assert_lstm_nodes(path, num_layers * (2 if bidirectional else 1), op_type="GRU")
    for node in (n for n in _nodes(path) if n.op_type == "GRU"):
        assert {a.name: a.i for a in node.attribute}["linear_before_reset"] == 1
    _assert_matches_eager(path, module, _batch(9, 7, 3, seed=2))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_with_lengths(tmp_path, nonlinearity, bidirectional):
    """sf.RNN: one ONNX RNN node per layer and direction, its activation the
    module's nonlinearity."""
    torch.manual_seed(0)
    module = _GRUOutputs(sf.RNN(3, 4, num_layers=2, nonlinearity=nonlinearity,
                                bidirectional=bidirectional))
    path = _export(module, _batch(5, 3, 3, seed=1), {"x": {0: STEPS, 1: BATCH},
                                                     "lengths": {0: BATCH}}, tmp_path / "m.onnx")
    _assert_lstm_nodes(path, 2 * (2 if bidirectional else 1), op_type="RNN")
    for node in (n for n in _nodes(path) if n.op_type == "RNN"):
        activations = {a.name: list(a.strings) for a in node.attribute}["activations"]
        assert activations == [nonlinearity.capitalize().encode()]
    _assert_matches_eager(path, module, _batch(9, 7, 3, seed=2))


def test_gru_classifier(tmp_path):
    torch.manual_seed(0)
    model = sf.LSTMClassifier(3, 4, 5, num_layers=2, bidirectional=True, cell="gru")

    def args(steps, batch, seed):
        x, lengths = _batch(steps, batch, 3, seed)
        return x.transpose(0, 1).contiguous(), lengths

    path = _export(model, args(6, 3, seed=1), {"x": {0: BATCH, 1: STEPS}, "lengths": {0: BATCH}},
                   tmp_path / "m.onnx")
    _assert_lstm_nodes(path, 4, op_type="GRU")
    _assert_matches_eager(path, model, args(11, 5, seed=2))


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
def test_classifier(tmp_path, pooling):
    torch.manual_seed(0)
    model = sf.LSTMClassifier(3, 4, 5, num_layers=2, bidirectional=True, pooling=pooling)

    def args(steps, batch, seed):
        x, lengths = _batch(steps, batch, 3, seed)
        return x.transpose(0, 1).contiguous(), lengths

    path = _export(model, args(6, 3, seed=1), {"x": {0: BATCH, 1: STEPS}, "lengths": {0: BATCH}},
                   tmp_path / "m.onnx")
    _assert_lstm_nodes(path, 4)
    _assert_matches_eager(path, model, args(11, 5, seed=2))


def test_classifier_with_embedding_and_additive_attention(tmp_path):
    torch.manual_seed(0)
    model = sf.LSTMClassifier(4, 5, 3, vocab_size=20, pooling="attention", attn_dim=6)

    def args(steps, batch, seed):
        _, lengths = _batch(steps, batch, 1, seed)
        tokens = torch.randint(1, 20, (batch, steps), generator=torch.Generator().manual_seed(seed))
        return tokens, lengths

    path = _export(model, args(6, 3, seed=1), {"x": {0: BATCH, 1: STEPS}, "lengths": {0: BATCH}},
                   tmp_path / "m.onnx")
    _assert_lstm_nodes(path, 1)
    _assert_matches_eager(path, model, args(9, 4, seed=2))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("pooling", ["attention", "additive", "mean", "last"])
def test_classifier_exported_without_grad_pools_online(tmp_path, pooling, cell):
    """Exported under no_grad, a unidirectional classifier's top layer is
    lstm_layer_pooled_forward (gru_layer_pooled_forward): its translation
    gives the eager logits."""
    torch.manual_seed(0)
    model = sf.LSTMClassifier(3, 4, 5, num_layers=2, attn_dim=6 if pooling == "additive" else None,
                              pooling="attention" if pooling == "additive" else pooling,
                              cell=cell).eval()

    def args(steps, batch, seed):
        x, lengths = _batch(steps, batch, 3, seed)
        return x.transpose(0, 1).contiguous(), lengths

    with torch.no_grad():
        assert model._pools_online(args(6, 3, seed=1)[0])
        path = _export(model, args(6, 3, seed=1),
                       {"x": {0: BATCH, 1: STEPS}, "lengths": {0: BATCH}}, tmp_path / "m.onnx")
    _assert_lstm_nodes(path, 2, op_type=cell.upper())
    if model.pooling == "attention":  # the closed form, not the masked-softmax translation
        assert "Softmax" not in [n.op_type for n in _nodes(path)]
    _assert_matches_eager(path, model, args(11, 5, seed=2))


class _Plan(torch.nn.Module):
    def forward(self, x, lengths):
        return sf.LengthPlan(lengths, x.size(0), x.size(1)).table


def test_length_plan_rows_match_eager_with_ties(tmp_path):
    """Rows 0 and 1 (TopK) equal the plan's stable descending sort."""
    module = _Plan()
    path = _export(module, _batch(5, 3, 1, seed=1), {"x": {0: STEPS, 1: BATCH},
                                                     "lengths": {0: BATCH}}, tmp_path / "m.onnx")
    x, _ = _batch(6, 9, 1, seed=2)
    lengths = torch.tensor([6, 1, 3, 6, 3, 1, 2, 6, 3])
    got, want = _run(path, module, (x, lengths))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_importing_needs_no_onnx():
    code = ("import sys, seqcls_fast, seqcls_fast.onnx_export; "
            "print([m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
