"""The methods ``seqcls-fast bench`` compares: each a full classifier (LSTM,
or GRU with ``--cell gru``, + masked attention pooling + linear head) built
from the same
:class:`Reference` weights, and the registry :data:`METHODS` of them.

The plain-PyTorch parts (packing, the masked pooling) are those of
:mod:`seqcls_fast.reference`, so the baselines exist once."""
import copy
import math
import os
import tempfile
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import seqcls_fast as sf
from seqcls_fast import reference as plain

from .cases import MODES, NUM_CLASSES, make_batch

FLASHRNN_BACKEND = "cuda_fused"


class Reference(nn.Module):
    """The weights every method starts from: ``rnn``, an nn.LSTM or (case.cell
    "gru") an nn.GRU (batch_first), the attention query and the linear head."""

    def __init__(self, case, dtype, device, seed=0):
        super().__init__()
        features = case.hidden_size * (2 if case.bidirectional else 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            native = nn.GRU if case.cell == "gru" else nn.LSTM
            self.rnn = native(case.input_size, case.hidden_size, case.layers, batch_first=True,
                              bidirectional=case.bidirectional)
            self.query = nn.Parameter(torch.randn(features) / math.sqrt(features))
            self.head = nn.Linear(features, NUM_CLASSES)
        self.to(device=device, dtype=dtype)


class Unavailable(Exception):
    """A method cannot run this case (not installed, unsupported shape); the
    message says why in one line."""


def _pooling_with_query(pooling_class, query):
    """A masked attention pooling (no projection) whose query is a copy of ``query``."""
    pool = pooling_class(query.numel(), device=query.device, dtype=query.dtype)
    with torch.no_grad():
        pool.query.copy_(query)
    return pool


def plain_pooling(query):
    """The plain-PyTorch masked attention pooling (reference.MaskedAttentionPooling:
    softmax over the valid steps, in float32 for half types) with this query."""
    return _pooling_with_query(plain.MaskedAttentionPooling, query)


class Classifier(nn.Module):
    """Base of every method: ``forward(batch) -> logits``, and
    ``rnn_gradients()``: the recurrent weight gradients under nn.LSTM's (or
    nn.GRU's) names and layouts, for the agreement check. ``known_wrong`` is None, or why this
    method is expected to disagree on this case (it is then still timed).
    ``timed_apart``: its rounds run alone, in blocks between the other
    methods' interleaved ones (measure.time_interleaved), for a library whose
    runs slow down whatever runs next in the process."""
    known_wrong = None
    timed_apart = False

    def rnn_gradients(self):
        return {name: p.grad for name, p in self.rnn.named_parameters()}


class Ours(Classifier):
    """sf.LSTMClassifier with the reference weights (in inference its top
    layer pools as it runs where that path is on: see LSTMClassifier)."""
    memory = "fast"

    def __init__(self, reference, case):
        super().__init__()
        query = reference.query
        self.model = sf.LSTMClassifier(
            case.input_size, case.hidden_size, NUM_CLASSES, num_layers=case.layers,
            bidirectional=case.bidirectional, memory=self.memory, device=query.device,
            dtype=query.dtype, cell=case.cell)
        self.model.rnn.load_state_dict(reference.rnn.state_dict())
        self.model.head.load_state_dict(reference.head.state_dict())
        with torch.no_grad():
            self.model.pool.query.copy_(query)
        self.rnn = self.model.rnn

    def forward(self, batch):
        return self.model(batch.x, batch.lengths)


class OursLowMemory(Ours):
    memory = "low"


class OursHostLengths(Ours):
    """Ours given the batch's lengths on the CPU instead of on x's device: on
    a GPU the plan is then made on the host (exact packed rows, a pinned
    upload, no synchronization either) instead of on the GPU (T x B slots; see
    README, "How it works"). On the CPU it is ours exactly, so not run."""

    def __init__(self, reference, case):
        if reference.query.device.type == "cpu":
            raise Unavailable("lengths are on the CPU already: the same as ours")
        super().__init__(reference, case)

    def forward(self, batch):
        return self.model(batch.x, batch.lengths_cpu)


class Packed(Classifier):
    """nn.LSTM (nn.GRU) on a PackedSequence (reference.packed_lstm) + the plain
    pooling."""

    def __init__(self, reference, case):
        super().__init__()
        self.rnn = copy.deepcopy(reference.rnn)
        self.pool = plain_pooling(reference.query)
        self.head = copy.deepcopy(reference.head)

    def logits(self, x, lengths_cpu, lengths):
        """The classifier on tensors: packs with ``lengths_cpu`` (packing
        wants them on the CPU), pools with ``lengths`` (on x's device)."""
        outputs, _ = plain.packed_lstm(self.rnn, x, lengths_cpu)
        pooled, _ = self.pool(outputs, lengths)
        return self.head(pooled)

    def forward(self, batch):
        return self.logits(batch.x, batch.lengths_cpu, batch.lengths)


class Padded(Packed):
    """nn.LSTM on the padded batch, lengths ignored, + the plain pooling
    (Packed's modules, without the packing)."""

    def __init__(self, reference, case):
        super().__init__(reference, case)
        if case.bidirectional:
            self.known_wrong = ("ignores lengths: the reverse direction starts in the padding "
                                "(timed anyway, for reference)")

    def forward(self, batch):
        outputs, _ = self.rnn(batch.x)
        pooled, _ = self.pool(outputs, batch.lengths)
        return self.head(pooled)


def _unidirectional_layers(reference, case, library):
    if case.cell != "lstm":
        raise Unavailable(f"compared with the LSTM only (--cell {case.cell})")
    if case.bidirectional:
        raise Unavailable(f"{library} has no bidirectional LSTM")
    return [{kind: getattr(reference.rnn, f"{kind}_l{layer}").detach()
             for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            for layer in range(case.layers)]


class FlashRNN(Classifier):
    """FlashRNN's LSTM (one head), layers stacked, on the padded batch: it takes
    no lengths, so only full-length batches are compared. Parameters are kept
    in nn.LSTM's layout; FlashRNN gets the input projection precomputed, R as
    [gates, heads, out, in] and the bias as [gates, heads, out] (gate order
    i, f, z, o, as nn.LSTM's i, f, g, o)."""

    def __init__(self, reference, case):
        super().__init__()
        if case.lengths != "full":
            raise Unavailable("FlashRNN takes no lengths: compared on full-length batches only "
                              "(--lengths full)")
        layers = _unidirectional_layers(reference, case, "FlashRNN")
        try:
            from flashrnn import flashrnn
        except ImportError as error:
            raise Unavailable(f"flashrnn is not importable ({error})") from None
        self.flashrnn = flashrnn
        self.rnn = nn.Module()
        for layer, weights in enumerate(layers):
            for kind, weight in weights.items():
                self.rnn.register_parameter(f"{kind}_l{layer}", nn.Parameter(weight.clone()))
        self.num_layers = case.layers
        self.pool = plain_pooling(reference.query)
        self.head = copy.deepcopy(reference.head)

    def forward(self, batch):
        outputs = batch.x
        batch_size, steps, _ = outputs.shape
        dtype = str(outputs.dtype).removeprefix("torch.")
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = (getattr(self.rnn, f"{kind}_l{layer}") for kind in
                                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            hidden = w_hh.size(1)
            projected = F.linear(outputs, w_ih).view(batch_size, steps, 4, 1, hidden)
            states, _last = self.flashrnn(projected, w_hh.view(4, 1, hidden, hidden),
                                          (b_ih + b_hh).view(4, 1, hidden), function="lstm",
                                          backend=FLASHRNN_BACKEND, dtype=dtype)
            outputs = states[0].reshape(batch_size, steps, hidden)   # states: h, c
        pooled, _ = self.pool(outputs, batch.lengths)
        return self.head(pooled)


def _haste_to_native(tensor):
    """Haste's [in, 4H] with gates i, g, f, o -> nn.LSTM's [4H, in], i, f, g, o."""
    i, g, f, o = tensor.chunk(4, dim=-1)
    return torch.cat([i, f, g, o], dim=-1).transpose(0, -1)


class Haste(Classifier):
    """haste_pytorch.LSTM layers stacked on the padded batch. Haste takes
    lengths for the final states only; its outputs past a length are not
    masked, which the pooling ignores (unidirectional only)."""

    def __init__(self, reference, case):
        super().__init__()
        layers = _unidirectional_layers(reference, case, "Haste")
        try:
            import haste_pytorch
        except ImportError as error:
            raise Unavailable(f"haste_pytorch is not importable ({error})") from None
        self.layers = nn.ModuleList()
        for weights in layers:
            layer = haste_pytorch.LSTM(case.input_size if not self.layers else case.hidden_size,
                                       case.hidden_size, batch_first=True)
            layer.from_native_weights(weights["weight_ih"], weights["weight_hh"],
                                      weights["bias_ih"], weights["bias_hh"])
            self.layers.append(layer.to(device=reference.query.device,
                                        dtype=reference.query.dtype))
        self.pool = plain_pooling(reference.query)
        self.head = copy.deepcopy(reference.head)

    def forward(self, batch):
        outputs = batch.x
        for layer in self.layers:
            outputs, _ = layer(outputs, lengths=batch.lengths)
        pooled, _ = self.pool(outputs, batch.lengths)
        return self.head(pooled)

    def rnn_gradients(self):
        gradients = {}
        for index, layer in enumerate(self.layers):
            gradients[f"weight_ih_l{index}"] = _haste_to_native(layer.kernel.grad)
            gradients[f"weight_hh_l{index}"] = _haste_to_native(layer.recurrent_kernel.grad)
            bias = _haste_to_native(layer.bias.grad)
            gradients[f"bias_ih_l{index}"] = gradients[f"bias_hh_l{index}"] = bias
        return gradients


class _ExportablePacked(nn.Module):
    """Packed's computation as ``forward(x, lengths) -> logits``, the signature
    the ONNX export traces (a Batch is not a tensor)."""

    def __init__(self, packed):
        super().__init__()
        self.packed = packed

    def forward(self, x, lengths):
        return self.packed.logits(x, lengths, lengths)


def _has_rnn_with_sequence_lens(graph, op_type):
    # LSTM and GRU inputs: X, W, R, B, sequence_lens, ...; an empty name is an omitted input.
    return any(node.op_type == op_type and len(node.input) > 4 and node.input[4]
               for node in graph.node)


class OnnxRuntime(Classifier):
    """Packed (nn.LSTM or nn.GRU on a PackedSequence + the plain pooling +
    head) exported by the TorchScript ONNX exporter, where the pack/pad pair
    becomes the ONNX LSTM's (GRU's) ``sequence_lens``, run by an onnxruntime CPU session (built once,
    not timed; intra-op threads as torch's, default settings). Each call
    converts the batch to numpy and back. Inference only. Timed apart: for a
    few hundred ms after one of its runs, two-thread torch work in the same
    process (ours, and oneDNN's padded nn.LSTM alike) ran 2-4x slower in about
    half the calls at B=1 on a 2-core AMD EPYC, even after its pool's threads
    had stopped using the CPU (benchmarks/NOTES.md)."""
    timed_apart = True

    def __init__(self, reference, case):
        super().__init__()
        if reference.query.device.type != "cpu":
            raise Unavailable("onnxruntime is compared on the CPU only")
        if reference.query.dtype != torch.float32:
            raise Unavailable("onnxruntime is compared in float32 only")
        try:
            import onnx
            import onnxruntime
        except ImportError as error:
            raise Unavailable(f"onnx/onnxruntime is not importable ({error})") from None
        exportable = _ExportablePacked(Packed(reference, case)).eval()
        example = make_batch(case, torch.float32, torch.device("cpu"), seed=0)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "packed.onnx")
            try:
                with warnings.catch_warnings():  # the exporter's deprecation and tracer
                    warnings.simplefilter("ignore")  # notes; the graph is checked below
                    torch.onnx.export(
                        exportable, (example.x, example.lengths_cpu), path, dynamo=False,
                        input_names=["x", "lengths"], output_names=["logits"],
                        dynamic_axes={"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                      "logits": {0: "batch"}})
            except Exception as error:
                raise Unavailable(f"TorchScript ONNX export failed: {type(error).__name__}: "
                                  f"{error}".splitlines()[0][:200]) from None
            op_type = case.cell.upper()
            if not _has_rnn_with_sequence_lens(onnx.load(path).graph, op_type):
                raise Unavailable(f"the exported graph has no {op_type} node with sequence_lens")
            self.session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"])

    def forward(self, batch):
        inputs = {"x": batch.x.detach().numpy(), "lengths": batch.lengths_cpu.numpy()}
        return torch.from_numpy(self.session.run(None, inputs)[0])


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    build: object  # (reference, case) -> Classifier; raises Unavailable
    modes: tuple = MODES  # the modes it runs in; skipped in the others

    def unavailable_in(self, mode):
        """Unavailable (why) when this method does not run in ``mode``, else
        None (also for mode None: any mode)."""
        if mode is not None and mode not in self.modes:
            return Unavailable(f"{' and '.join(self.modes)} only")
        return None


# Ours first: it is the reference of the agreement check and of every speedup.
METHODS = {
    spec.name: spec for spec in (
        MethodSpec("ours", "sf.LSTMClassifier (sf.LSTM with lengths + attention pooling)", Ours),
        MethodSpec("ours-low", "sf.LSTMClassifier(memory='low'): gates rebuilt in the backward",
                   OursLowMemory, modes=("train",)),
        MethodSpec("ours-cpu-lengths", "sf.LSTMClassifier given CPU lengths (GPU only: the plan "
                   "made on the host)", OursHostLengths),
        MethodSpec("packed", "nn.LSTM on pack_padded_sequence + PyTorch masked pooling", Packed),
        MethodSpec("padded", "nn.LSTM on the padded batch + PyTorch masked pooling", Padded),
        MethodSpec("flashrnn", "FlashRNN LSTM (no lengths) + PyTorch masked pooling", FlashRNN),
        MethodSpec("haste", "haste_pytorch.LSTM + PyTorch masked pooling", Haste),
        MethodSpec("ort", "ONNX Runtime LSTM with sequence_lens", OnnxRuntime,
                   modes=("inference",)),
    )
}
REFERENCE_METHOD = "ours"


def build_methods(reference, case, mode=None, skip=None):
    """{name: Classifier or Unavailable} for every method in METHODS; with a
    ``mode``, those that do not run in it are Unavailable, and so are those
    in ``skip`` ({name: why})."""
    built = {}
    for name, spec in METHODS.items():
        if skip and name in skip:
            built[name] = Unavailable(skip[name])
            continue
        unavailable = spec.unavailable_in(mode)
        if unavailable is not None:
            built[name] = unavailable
            continue
        try:
            built[name] = spec.build(reference, case)
        except Unavailable as reason:
            built[name] = reason
    return built
