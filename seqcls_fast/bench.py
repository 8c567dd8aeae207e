"""``seqcls-fast bench``: seqcls_fast against what people would use instead.

Every method is a full classifier, LSTM + masked attention pooling (dot-product
scores with a learned query, softmax over the valid steps) + linear head, built
from the same weights and run on the same inputs:

- ``ours``: ``sf.LSTM`` with ``lengths`` + ``sf.MaskedAttentionPooling``;
- ``packed``: ``nn.LSTM`` on a ``PackedSequence`` (``pack_padded_sequence`` with
  ``enforce_sorted=False``, then ``pad_packed_sequence``) + the pooling written
  in plain PyTorch (:class:`TorchMaskedAttentionPooling`);
- ``padded``: ``nn.LSTM`` on the padded batch + the same PyTorch pooling. It
  ignores the lengths, which is harmless for a unidirectional LSTM (outputs at
  valid steps do not depend on later steps, and the pooling only reads valid
  steps) but wrong for a bidirectional one; it is still timed then, flagged;
- ``flashrnn`` and ``haste``, when those packages are importable.

Before timing, each method's logits (and, in training, its LSTM weight
gradients) are compared with ours; a method that disagrees is reported as
wrong and not timed. The registry :data:`METHODS` and :func:`build_methods`
are what ``benchmarks/`` and the tests reuse.
"""
import argparse
import copy
import ctypes
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import seqcls_fast as sf

NUM_CLASSES = 10
LENGTH_DISTRIBUTIONS = ("uniform", "full", "long-tail")
MODES = ("inference", "train")
DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "bfloat16": torch.bfloat16, "float16": torch.float16}
# Largest |theirs - ours| / largest |ours|, per compared tensor, that still counts
# as agreeing. Gradients summed over B*T steps carry more rounding than logits;
# float32 leaves room for TF32, which cuDNN's LSTM uses by default on GPU.
TOLERANCES = {torch.float64: 1e-9, torch.float32: 1e-3,
              torch.bfloat16: 5e-2, torch.float16: 2e-2}
ROTATED_BATCHES = 3          # distinct pre-generated batches, used in turn
AUTO_REPEATS = (3, 30)       # least and most repeats when --repeats is not given
AUTO_SECONDS_PER_CASE = 4.0  # timed seconds per case and mode that auto repeats aim at
CUDA_WARMUP_ROUNDS = 1       # untimed rounds after the check (CPU: the check is the warm-up)
FLASHRNN_BACKEND = "cuda_fused"


# ------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One benchmark shape: a padded batch [batch, seq_len, input_size]."""
    batch: int = 64
    seq_len: int = 128
    input_size: int = 128
    hidden_size: int = 256
    layers: int = 1
    bidirectional: bool = False
    lengths: str = "uniform"

    def label(self):
        direction = "bidirectional" if self.bidirectional else "unidirectional"
        return (f"B={self.batch} T={self.seq_len} I={self.input_size} H={self.hidden_size} "
                f"layers={self.layers} {direction}, lengths {self.lengths}")


# The default sweep: sequence length varies, plus one bidirectional case. Sized
# for about 2 minutes on a 2-core CPU, where packed nn.LSTM training dominates.
DEFAULT_SWEEP = (
    Case(seq_len=64),
    Case(seq_len=128),
    Case(seq_len=256),
    Case(seq_len=64, bidirectional=True),
)
# FlashRNN takes no lengths, so it is compared on full-length batches only; on
# CUDA (the only place it runs) the sweep adds one such case.
CUDA_EXTRA_CASES = (Case(seq_len=128, lengths="full"),)


def make_lengths(case, generator):
    """[B] int64 lengths on the CPU, the longest exactly seq_len (as a padding
    data loader gives). uniform: in [T/4, T]; full: all T; long-tail: T * u^3
    for u uniform in (0, 1), i.e. mostly short with a few long ones."""
    steps = case.seq_len
    if case.lengths == "uniform":
        lengths = torch.randint(max(1, steps // 4), steps + 1, (case.batch,), generator=generator)
    elif case.lengths == "full":
        lengths = torch.full((case.batch,), steps)
    elif case.lengths == "long-tail":
        u = torch.rand(case.batch, generator=generator, dtype=torch.float64)
        lengths = (steps * u ** 3).ceil().long().clamp(1, steps)
    else:
        raise ValueError(f"lengths must be one of {LENGTH_DISTRIBUTIONS}, got {case.lengths!r}")
    lengths[torch.randint(case.batch, (1,), generator=generator)] = steps
    return lengths


@dataclass
class Batch:
    """A padded batch: x [B, T, I] (zeros past each length), lengths on x's
    device and on the CPU (what pack_padded_sequence wants), class labels."""
    x: torch.Tensor
    lengths: torch.Tensor
    lengths_cpu: torch.Tensor
    labels: torch.Tensor


def make_batch(case, dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = make_lengths(case, generator)
    x = torch.randn(case.batch, case.seq_len, case.input_size, generator=generator)
    x[torch.arange(case.seq_len)[None, :] >= lengths[:, None]] = 0
    labels = torch.randint(NUM_CLASSES, (case.batch,), generator=generator)
    return Batch(x.to(device=device, dtype=dtype), lengths.to(device), lengths,
                 labels.to(device))


# ----------------------------------------------------------------------- models
class TorchMaskedAttentionPooling(nn.Module):
    """Masked dot-product attention pooling in plain PyTorch: s_t = q . h_t,
    softmax over t < length (in float32 for half types), pooled = sum_t alpha_t h_t."""

    def __init__(self, query):
        super().__init__()
        self.query = nn.Parameter(query.detach().clone())

    def forward(self, outputs, lengths):
        scores = outputs @ self.query                                  # [B, T]
        steps = torch.arange(outputs.size(1), device=outputs.device)
        padding = steps[None, :] >= lengths[:, None]
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()
        weights = torch.softmax(scores.masked_fill(padding, float("-inf")), dim=1)
        weights = weights.to(outputs.dtype)
        return torch.bmm(weights.unsqueeze(1), outputs).squeeze(1), weights


class Reference(nn.Module):
    """The weights every method starts from: an nn.LSTM (batch_first), the
    attention query and the linear head."""

    def __init__(self, case, dtype, device, seed=0):
        super().__init__()
        features = case.hidden_size * (2 if case.bidirectional else 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.lstm = nn.LSTM(case.input_size, case.hidden_size, case.layers,
                                batch_first=True, bidirectional=case.bidirectional)
            self.query = nn.Parameter(torch.randn(features) / math.sqrt(features))
            self.head = nn.Linear(features, NUM_CLASSES)
        self.to(device=device, dtype=dtype)


class Unavailable(Exception):
    """A method cannot run this case (not installed, unsupported shape); the
    message says why in one line."""


class Classifier(nn.Module):
    """Base of every method: ``forward(batch) -> logits``, and
    ``lstm_gradients()``: the LSTM weight gradients under nn.LSTM's names and
    layouts, for the agreement check. ``known_wrong`` is None, or why this
    method is expected to disagree on this case (it is then still timed)."""
    known_wrong = None

    def lstm_gradients(self):
        return {name: p.grad for name, p in self.lstm.named_parameters()}


class Ours(Classifier):
    def __init__(self, reference, case):
        super().__init__()
        self.lstm = sf.LSTM.from_native(copy.deepcopy(reference.lstm))
        weight = reference.query
        self.pool = sf.MaskedAttentionPooling(weight.numel(), device=weight.device,
                                              dtype=weight.dtype)
        with torch.no_grad():
            self.pool.query.copy_(weight)
        self.head = copy.deepcopy(reference.head)

    def forward(self, batch):
        outputs, _ = self.lstm(batch.x, lengths=batch.lengths)
        pooled, _ = self.pool(outputs, batch.lengths)
        return self.head(pooled)


class Packed(Classifier):
    def __init__(self, reference, case):
        super().__init__()
        self.lstm = copy.deepcopy(reference.lstm)
        self.pool = TorchMaskedAttentionPooling(reference.query)
        self.head = copy.deepcopy(reference.head)

    def forward(self, batch):
        packed = pack_padded_sequence(batch.x, batch.lengths_cpu, batch_first=True,
                                      enforce_sorted=False)
        outputs, _ = self.lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True,
                                         total_length=batch.x.size(1))
        pooled, _ = self.pool(outputs, batch.lengths)
        return self.head(pooled)


class Padded(Classifier):
    def __init__(self, reference, case):
        super().__init__()
        self.lstm = copy.deepcopy(reference.lstm)
        self.pool = TorchMaskedAttentionPooling(reference.query)
        self.head = copy.deepcopy(reference.head)
        if case.bidirectional:
            self.known_wrong = ("ignores lengths: the reverse direction starts in the padding "
                                "(timed anyway, for reference)")

    def forward(self, batch):
        outputs, _ = self.lstm(batch.x)
        pooled, _ = self.pool(outputs, batch.lengths)
        return self.head(pooled)


def _unidirectional_layers(reference, case, library):
    if case.bidirectional:
        raise Unavailable(f"{library} has no bidirectional LSTM")
    return [{kind: getattr(reference.lstm, f"{kind}_l{layer}").detach()
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
        self.lstm = nn.Module()
        for layer, weights in enumerate(layers):
            for kind, weight in weights.items():
                self.lstm.register_parameter(f"{kind}_l{layer}", nn.Parameter(weight.clone()))
        self.num_layers = case.layers
        self.pool = TorchMaskedAttentionPooling(reference.query)
        self.head = copy.deepcopy(reference.head)

    def forward(self, batch):
        outputs = batch.x
        batch_size, steps, _ = outputs.shape
        dtype = str(outputs.dtype).removeprefix("torch.")
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = (getattr(self.lstm, f"{kind}_l{layer}") for kind in
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
        self.pool = TorchMaskedAttentionPooling(reference.query)
        self.head = copy.deepcopy(reference.head)

    def forward(self, batch):
        outputs = batch.x
        for layer in self.layers:
            outputs, _ = layer(outputs, lengths=batch.lengths)
        pooled, _ = self.pool(outputs, batch.lengths)
        return self.head(pooled)

    def lstm_gradients(self):
        gradients = {}
        for index, layer in enumerate(self.layers):
            gradients[f"weight_ih_l{index}"] = _haste_to_native(layer.kernel.grad)
            gradients[f"weight_hh_l{index}"] = _haste_to_native(layer.recurrent_kernel.grad)
            bias = _haste_to_native(layer.bias.grad)
            gradients[f"bias_ih_l{index}"] = gradients[f"bias_hh_l{index}"] = bias
        return gradients


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    build: object  # (reference, case) -> Classifier; raises Unavailable


# Ours first: it is the reference of the agreement check and of every speedup.
METHODS = {
    spec.name: spec for spec in (
        MethodSpec("ours", "sf.LSTM(lengths=) + sf.MaskedAttentionPooling", Ours),
        MethodSpec("packed", "nn.LSTM on pack_padded_sequence + PyTorch masked pooling", Packed),
        MethodSpec("padded", "nn.LSTM on the padded batch + PyTorch masked pooling", Padded),
        MethodSpec("flashrnn", "FlashRNN LSTM (no lengths) + PyTorch masked pooling", FlashRNN),
        MethodSpec("haste", "haste_pytorch.LSTM + PyTorch masked pooling", Haste),
    )
}
REFERENCE_METHOD = "ours"


def build_methods(reference, case):
    """{name: Classifier or Unavailable} for every method in METHODS."""
    built = {}
    for name, spec in METHODS.items():
        try:
            built[name] = spec.build(reference, case)
        except Unavailable as reason:
            built[name] = reason
    return built


# ------------------------------------------------------------------- one step
def set_mode(model, mode):
    model.train(mode == "train")


def run_step(model, batch, mode):
    """Inference: a forward under no_grad. Training step: zero_grad(set_to_none)
    + forward + cross-entropy + backward (no optimizer step, so every repeat
    sees the same weights). Returns the logits."""
    if mode == "inference":
        with torch.no_grad():
            return model(batch)
    model.zero_grad(set_to_none=True)
    logits = model(batch)
    F.cross_entropy(logits, batch.labels).backward()
    return logits


def relative_error(theirs, ours):
    theirs, ours = theirs.detach().double(), ours.detach().double()
    return ((theirs - ours).abs().max() / ours.abs().max().clamp_min(1e-30)).item()


def compare(theirs, ours, mode):
    """{what: relative error}: the logits, and in training every LSTM weight
    gradient (under nn.LSTM's names)."""
    logits, model = theirs
    our_logits, our_model = ours
    errors = {"logits": relative_error(logits, our_logits)}
    if mode == "train":
        our_gradients = our_model.lstm_gradients()
        for name, gradient in model.lstm_gradients().items():
            errors[f"grad {name}"] = (math.inf if gradient is None
                                      else relative_error(gradient, our_gradients[name]))
    return errors


# -------------------------------------------------------------- peak memory
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _proc_status_bytes(field):
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1)) * 1024


@contextmanager
def exact_rss_accounting(libc):
    """While inside, glibc serves every allocation of 64 KiB or more with its
    own mmap and returns it on free, so the resident set follows the live
    tensors instead of memory cached by earlier calls. Afterwards the
    threshold is set to 32 MiB, where glibc's own adaptive threshold ends up
    once large tensors have been freed."""
    libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)


def cpu_peak_growth_supported():
    return (sys.platform.startswith("linux") and _glibc() is not None
            and os.access("/proc/self/clear_refs", os.W_OK))


def measure_peak_memory(call, device):
    """(result of call(), bytes): how far memory rose above its level just
    before the call, at the call's peak. CUDA: the caching allocator's peak of
    allocated bytes. CPU (Linux, glibc): the resident set's high-water mark
    (VmHWM, reset through /proc/self/clear_refs). None where not measurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = call()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu" or not cpu_peak_growth_supported():
        return call(), None
    libc = _glibc()
    with exact_rss_accounting(libc):
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set
        before = _proc_status_bytes("VmRSS")
        result = call()
        return result, _proc_status_bytes("VmHWM") - before


# ------------------------------------------------------------------- timing
def time_call(call, device):
    """Milliseconds of one call; on CUDA between two events, synchronized."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def auto_repeats(seconds_per_round):
    least, most = AUTO_REPEATS
    return max(least, min(most, round(AUTO_SECONDS_PER_CASE / max(seconds_per_round, 1e-9))))


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third


def run_case(case, mode, dtype, device, repeats=None, progress=None):
    """Check every method against ours, then time those that agree (and those
    known to be wrong), interleaved. Returns the case's JSON-ready record."""
    reference = Reference(case, dtype, device)
    batches = [make_batch(case, dtype, device, seed) for seed in range(ROTATED_BATCHES)]
    records, runnable = {}, {}
    for name, model in build_methods(reference, case).items():
        records[name] = {"name": name, "description": METHODS[name].description,
                         "status": None, "note": None, "errors": None, "times_ms": [],
                         "peak_memory_bytes": None}
        if isinstance(model, Unavailable):
            records[name].update(status="skipped", note=str(model))
        else:
            set_mode(model, mode)
            runnable[name] = model
    seconds_per_round = check_and_measure(runnable, records, batches[0], mode, device,
                                          TOLERANCES[dtype])
    repeats = repeats or auto_repeats(seconds_per_round)
    warmup = CUDA_WARMUP_ROUNDS if device.type == "cuda" else 0
    time_interleaved(runnable, records, batches, mode, device, warmup, repeats, progress)
    summarize(records)
    lengths = batches[0].lengths_cpu.double()
    return {"case": asdict(case), "label": case.label(), "mode": mode,
            "dtype": str(dtype).removeprefix("torch."), "repeats": repeats,
            "warmup_rounds": warmup, "rotated_batches": len(batches),
            "mean_length_first_batch": lengths.mean().item(), "tolerance": TOLERANCES[dtype],
            "methods": list(records.values())}


def check_and_measure(runnable, records, batch, mode, device, tolerance):
    """One call per method on the batch: its peak memory, then its logits (and
    gradients) against ours. Removes from ``runnable`` the methods that fail or
    disagree without being known to (they are not timed). This call is also
    each method's warm-up; a tiny call before it keeps one-time library set-up
    out of the memory figure. Returns the calls' total seconds."""
    small = Batch(batch.x[:2], batch.lengths[:2], batch.lengths_cpu[:2], batch.labels[:2])
    results, seconds = {}, 0.0
    for name, model in list(runnable.items()):
        try:
            run_step(model, small, mode)
            started = time.perf_counter()
            logits, peak = measure_peak_memory(lambda: run_step(model, batch, mode), device)
            seconds += time.perf_counter() - started
        except Exception as error:  # a method that fails is reported, not fatal
            records[name].update(status="error", note=f"{type(error).__name__}: {error}"[:300])
            del runnable[name]
            continue
        records[name]["peak_memory_bytes"] = peak
        results[name] = (logits, model)
    ours = results.get(REFERENCE_METHOD)
    for name, model in list(runnable.items()):
        record = records[name]
        if ours is None:
            record.update(status="unchecked", note="ours failed: nothing to compare with")
            continue
        record["errors"] = errors = compare(results[name], ours, mode)
        worst = max(errors.values())
        if worst <= tolerance:
            record["status"] = "ok"
        elif model.known_wrong:
            record.update(status="wrong", note=model.known_wrong)
        else:
            record.update(status="wrong", note=f"{max(errors, key=errors.get)} differs from ours "
                          f"by {worst:.2e} (relative; tolerance {tolerance:.0e}); not timed")
            del runnable[name]
    return seconds


def time_interleaved(runnable, records, batches, mode, device, warmup, repeats, progress):
    """Rounds of one call per method on the same batch, the batches taken in
    turn and a different method first each round; the first ``warmup`` rounds
    are not kept."""
    names = list(runnable)
    for round_index in range(warmup + repeats if names else 0):
        batch = batches[round_index % len(batches)]
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            model = runnable[name]
            elapsed = time_call(lambda: run_step(model, batch, mode), device)
            if round_index >= warmup:
                records[name]["times_ms"].append(elapsed)
        if progress is not None:
            progress(round_index + 1, warmup + repeats)


def summarize(records):
    """Median and quartiles per method; the speedup of ours against each other
    method: the median over rounds of their time / ours, paired per round
    (same batch, same moment) so that drift of the machine cancels."""
    ours_times = records[REFERENCE_METHOD]["times_ms"]
    for record in records.values():
        times = record["times_ms"]
        if not times:
            continue
        record["median_ms"] = statistics.median(times)
        record["q1_ms"], record["q3_ms"] = quartiles(times)
        if ours_times and record["name"] != REFERENCE_METHOD:
            record["speedup_of_ours"] = statistics.median(
                theirs / mine for theirs, mine in zip(times, ours_times))


# ------------------------------------------------------------------- report
def format_table(result):
    lines = [f"{result['label']} (mean length {result['mean_length_first_batch']:.0f}), "
             f"{result['dtype']}, {result['mode']}, {result['repeats']} repeats",
             f"  {'method':9s} {'status':8s} {'median ms':>10s} {'IQR ms':>19s} "
             f"{'speedup':>8s} {'peak MiB':>9s}"]
    for record in result["methods"]:
        if "median_ms" in record:
            iqr = f"{record['q1_ms']:.2f}-{record['q3_ms']:.2f}"
            speedup = (f"{record['speedup_of_ours']:.2f}x" if "speedup_of_ours" in record
                       else "-")
            peak = record["peak_memory_bytes"]
            memory = f"{peak / 2**20:.1f}" if peak is not None else "n/a"
            lines.append(f"  {record['name']:9s} {record['status']:8s} "
                         f"{record['median_ms']:10.2f} {iqr:>19s} {speedup:>8s} {memory:>9s}")
        else:
            lines.append(f"  {record['name']:9s} {record['status']:8s} {record['note']}")
        if record["status"] == "wrong" and "median_ms" in record:
            lines.append(f"  {'':9s} {'':8s} {record['note']}")
    return "\n".join(lines)


def git_commit():
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(dirty.strip())


def cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def environment(device):
    commit, dirty = git_commit()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": device_name,
            "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "seqcls_fast_version": sf.__version__, "git_commit": commit, "git_dirty": dirty,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "platform": platform.platform()}


def write_plot(results, path):
    """Speedup of ours against each baseline vs sequence length, one line per
    (baseline, mode, rest of the case)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    lines = {}
    for result in results:
        case = dict(result["case"])
        seq_len = case.pop("seq_len")
        rest = Case(seq_len=0, **case)
        for record in result["methods"]:
            if "speedup_of_ours" in record:
                key = (record["name"], result["mode"], rest)
                lines.setdefault(key, []).append((seq_len, record["speedup_of_ours"]))
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for (name, mode, rest), points in sorted(lines.items(), key=lambda item: str(item[0])):
        points.sort()
        direction = "bidirectional" if rest.bidirectional else "unidirectional"
        axes.plot([t for t, _ in points], [s for _, s in points], marker="o",
                  linestyle="--" if mode == "inference" else "-",
                  label=f"vs {name}, {mode}, {direction}, lengths {rest.lengths}")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xscale("log", base=2)
    seq_lens = sorted({result["case"]["seq_len"] for result in results})
    axes.set_xticks(seq_lens, [str(seq_len) for seq_len in seq_lens])
    axes.minorticks_off()
    axes.set_xlabel("sequence length T")
    axes.set_ylabel("speedup of ours (their time / ours)")
    axes.set_title("seqcls_fast vs baselines (median of paired repeats)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


# ---------------------------------------------------------------------- CLI
def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="seqcls-fast bench",
        description="Time seqcls_fast against nn.LSTM (packed and padded) and other RNN "
                    "libraries, on a full LSTM + masked attention pooling + linear head. "
                    "Without shape options, runs the default sweep.")
    shape = parser.add_argument_group("your own case (defaults fill what is not given)")
    shape.add_argument("--batch", type=positive_int, help=f"batch size ({Case.batch})")
    shape.add_argument("--seq-len", type=positive_int, nargs="+",
                       help=f"padded sequence length(s) T ({Case.seq_len}); several give a sweep")
    shape.add_argument("--input-size", type=positive_int, help=f"input features ({Case.input_size})")
    shape.add_argument("--hidden-size", type=positive_int, help=f"hidden size ({Case.hidden_size})")
    shape.add_argument("--layers", type=positive_int, help=f"LSTM layers ({Case.layers})")
    shape.add_argument("--bidirectional", action="store_true", default=None,
                       help="bidirectional LSTM")
    shape.add_argument("--lengths", choices=LENGTH_DISTRIBUTIONS,
                       help="sequence lengths: uniform in [T/4, T] (default), full (all T), "
                            "long-tail (T*u^3: mostly short)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both",
                        help="inference (forward under no_grad), train (forward + "
                             "cross-entropy + backward), or both (default)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--repeats", type=positive_int,
                        help=f"timed repeats per case (default: enough for about "
                             f"{AUTO_SECONDS_PER_CASE:.0f} s per case and mode, "
                             f"{AUTO_REPEATS[0]} to {AUTO_REPEATS[1]})")
    parser.add_argument("--json", metavar="PATH", help="write the full record as JSON")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a PNG of speedup vs sequence length (needs matplotlib)")
    args = parser.parse_args(argv)

    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    args.device = device
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'seqcls_fast[report]'")
    args.dtype = DTYPES[args.dtype]
    return args


def cases_from(args):
    overrides = {field: value for field, value in (
        ("batch", args.batch), ("input_size", args.input_size),
        ("hidden_size", args.hidden_size), ("layers", args.layers),
        ("bidirectional", args.bidirectional), ("lengths", args.lengths)) if value is not None}
    if not overrides and args.seq_len is None:
        extra = CUDA_EXTRA_CASES if args.device.type == "cuda" else ()
        return list(DEFAULT_SWEEP + extra)
    return [replace(Case(**overrides), seq_len=seq_len)
            for seq_len in (args.seq_len or [Case.seq_len])]


class Progress:
    """A tqdm bar over the sweep's rounds when tqdm is installed; otherwise one
    line per case on stderr."""

    def __init__(self, total_cases):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = (tqdm(total=total_cases, unit="case", file=sys.stderr, disable=None)
                    if tqdm else None)
        self.total, self.done = total_cases, 0

    def start_case(self, description):
        if self.bar is not None:
            self.bar.set_description(description)
        else:
            print(f"[{self.done + 1}/{self.total}] {description}", file=sys.stderr, flush=True)

    def rounds(self, done, total):
        if self.bar is not None:
            self.bar.set_postfix_str(f"repeat {done}/{total}")

    def end_case(self, table):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(table + "\n")
        else:
            print(table + "\n", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    cases = cases_from(args)
    modes = MODES if args.mode == "both" else (args.mode,)
    env = environment(args.device)
    print(f"seqcls-fast bench: {env['device_name']} ({env['device']}), torch "
          f"{env['torch_version']}, {env['threads']} threads, commit {env['git_commit']}",
          flush=True)
    progress = Progress(len(cases) * len(modes))
    results = []
    started = time.perf_counter()
    try:
        for case in cases:
            for mode in modes:
                progress.start_case(f"T={case.seq_len} {mode}")
                result = run_case(case, mode, args.dtype, args.device, args.repeats,
                                  progress.rounds)
                results.append(result)
                progress.end_case(format_table(result))
    finally:
        progress.close()
    print(f"done in {time.perf_counter() - started:.0f} s. speedup: median over repeats of "
          f"(their time / ours) on the same batch, > 1 when ours is faster; peak MiB: memory "
          f"growth during one call ({'CUDA allocator' if args.device.type == 'cuda' else 'RSS'}).")
    record = {"tool": "seqcls-fast bench",
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "argv": list(argv) if argv is not None else sys.argv[1:],
              "environment": env, "elapsed_s": time.perf_counter() - started,
              "memory_meaning": ("bytes above the level just before one call, at its peak: "
                                 "CUDA allocator allocated bytes on GPU, resident set (VmHWM) "
                                 "on CPU; null where not measurable"),
              "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as out:
            json.dump(record, out, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        write_plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0
