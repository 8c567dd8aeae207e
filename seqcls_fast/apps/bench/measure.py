"""One benchmark case, measured: every method checked against ours (logits,
and in training the LSTM weight gradients), then those that agree timed in
interleaved rounds, summarized as medians, quartiles and paired speedups."""
import math
import statistics
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from .cases import Batch, make_batch
from .memory import measure_peak_memory
from .methods import METHODS, REFERENCE_METHOD, Reference, Unavailable, build_methods

# Largest |theirs - ours| / largest |ours|, per compared tensor, that still counts
# as agreeing. Gradients summed over B*T steps carry more rounding than logits;
# float32 leaves room for TF32, which cuDNN's LSTM uses by default on GPU.
TOLERANCES = {torch.float64: 1e-9, torch.float32: 1e-3,
              torch.bfloat16: 5e-2, torch.float16: 2e-2}
ROTATED_BATCHES = 3          # distinct pre-generated batches, used in turn
AUTO_REPEATS = (3, 30)       # least and most repeats when --repeats is not given
AUTO_SECONDS_PER_CASE = 4.0  # timed seconds per case and mode that auto repeats aim at
CUDA_WARMUP_ROUNDS = 1       # untimed rounds after the check (CPU: the check is the warm-up)
# On the CPU, after every timed call: wait until the process is idle, i.e. its
# CPU time (all threads) grows by less than IDLE_FRACTION of one core over an
# IDLE_WINDOW_S window, for at most IDLE_LIMIT_S. A library whose threads spin
# after returning (ONNX Runtime's pool; OpenMP's workers, briefly) then cannot
# share the cores with the next method's timed call.
IDLE_WINDOW_S = 0.005
IDLE_FRACTION = 0.1
IDLE_LIMIT_S = 2.0
# A method timed apart (ONNX Runtime) runs blocks of its rounds between the
# others' blocks, each followed by this much rest before anything else is timed.
APART_REST_S = 1.0
APART_BLOCK = 3  # rounds per block: theirs alternate with the others' blocks
# On the CPU, before each round: a fixed FMA-bound GEMM (PROBE_SIZE^3,
# float32, torch's threads), timed, so the record shows what the machine
# delivered while the round ran. Shared CPUs switch within seconds between
# states up to ~1.7x apart (another tenant on the cores' SMT siblings, presumably:
# benchmarks/NOTES.md), and FMA-bound methods slow more than overhead-bound
# ones, so a ratio is read with the probe beside it.
PROBE_SIZE = 512
PROBE_RULE = (f"on the CPU, each round starts with machine_probe: one {PROBE_SIZE}^3 float32 "
              f"torch.mm on torch's threads, timed (the same work every round: its time "
              f"shows what the cores delivered then)")
IDLE_RULE = (f"on the CPU, each timed call starts once the process's CPU time (all threads, "
             f"time.process_time) grows by < {IDLE_FRACTION:g} core over {IDLE_WINDOW_S * 1e3:g} "
             f"ms (at most {IDLE_LIMIT_S:g} s): spinning pool threads never share the cores with "
             f"another method's call. Methods marked timed_apart (ort) are not interleaved call "
             f"by call: blocks of {APART_BLOCK} of their rounds (same batches) alternate with "
             f"blocks of the other methods' interleaved rounds, each of theirs followed by "
             f"{APART_REST_S:g} s of rest, since right after an ORT run "
             f"two-thread torch work in the process ran 2-4x slower at B=1 in about half the calls")


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
        our_gradients = our_model.rnn_gradients()
        for name, gradient in model.rnn_gradients().items():
            errors[f"grad {name}"] = (math.inf if gradient is None
                                      else relative_error(gradient, our_gradients[name]))
    return errors


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


# --------------------------------------------------------------- one case
def run_case(case, mode, dtype, device, repeats=None, progress=None, skip=None):
    """Check every method against ours, then time those that agree (and those
    known to be wrong), interleaved; the methods in ``skip`` ({name: why})
    are reported as skipped. Returns the case's JSON-ready record."""
    reference = Reference(case, dtype, device)
    batches = [make_batch(case, dtype, device, seed) for seed in range(ROTATED_BATCHES)]
    records, runnable = {}, {}
    for name, model in build_methods(reference, case, mode, skip).items():
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
    probe = MachineProbe() if device.type == "cpu" else None
    time_interleaved(runnable, records, batches, mode, device, warmup, repeats, progress, probe)
    summarize(records)
    lengths = batches[0].lengths_cpu.double()
    return {"case": asdict(case), "label": case.label(), "mode": mode,
            "dtype": str(dtype).removeprefix("torch."), "repeats": repeats,
            "warmup_rounds": warmup, "rotated_batches": len(batches),
            "mean_length_first_batch": lengths.mean().item(), "tolerance": TOLERANCES[dtype],
            "machine_probe": probe.summary() if probe is not None else None,
            "methods": list(records.values())}


class MachineProbe:
    """PROBE_RULE: the same GEMM before every round, its times kept."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.a, self.b = (torch.randn(PROBE_SIZE, PROBE_SIZE, generator=generator)
                          for _ in range(2))
        self.out = torch.empty(PROBE_SIZE, PROBE_SIZE)
        torch.mm(self.a, self.b, out=self.out)  # untimed: MKL's set-up
        self.times_ms = []

    def measure(self):
        self.times_ms.append(time_call(lambda: torch.mm(self.a, self.b, out=self.out),
                                       torch.device("cpu")))

    def summary(self):
        """times_ms, their median and minimum, and the GFLOP/s those stand for."""
        times = self.times_ms
        flops = 2 * PROBE_SIZE ** 3
        median, best = (statistics.median(times), min(times)) if times else (None, None)
        return {"what": f"{PROBE_SIZE}^3 float32 torch.mm, {torch.get_num_threads()} threads",
                "times_ms": times, "median_ms": median, "min_ms": best,
                "median_gflops": flops / median / 1e6 if median else None,
                "best_gflops": flops / best / 1e6 if best else None}


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


def wait_until_idle():
    """Blocks until no thread of this process keeps a core busy (IDLE_RULE).
    Returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < IDLE_LIMIT_S:
        used = time.process_time()
        time.sleep(IDLE_WINDOW_S)
        if time.process_time() - used < IDLE_FRACTION * IDLE_WINDOW_S:
            break
    return time.perf_counter() - started


def time_interleaved(runnable, records, batches, mode, device, warmup, repeats, progress,
                     probe=None):
    """Rounds of one call per method on the same batch, the batches taken in
    turn and a different method first each round; the first ``warmup`` rounds
    are not kept. Methods marked ``timed_apart`` run the same rounds alone,
    in blocks of APART_BLOCK rounds that alternate with the others' (so slow
    drift of the machine still falls on both), each block followed by
    APART_REST_S of rest. On the CPU, each timed call starts on an idle
    process (wait_until_idle; the waits are recorded per method as
    idle_wait_ms). ``probe`` (a MachineProbe, or None) is measured before each
    kept round of each group."""
    together = [name for name, model in runnable.items() if not model.timed_apart]
    apart = [name for name, model in runnable.items() if model.timed_apart]
    rounds = warmup + repeats
    block = APART_BLOCK if apart else max(rounds, 1)
    if apart:  # their check (the warm-up) ran last, just before these rounds
        time.sleep(APART_REST_S)
    for first in range(0, rounds, block):
        span = range(first, min(first + block, rounds))
        for names in [together] + [[name] for name in apart]:
            for round_index in span if names else ():
                if probe is not None and round_index >= warmup:
                    wait_until_idle()
                    probe.measure()
                batch = batches[round_index % len(batches)]
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    time_one(runnable[name], records[name], batch, mode, device,
                             keep=round_index >= warmup)
            if names is not together:
                time.sleep(APART_REST_S)
        if progress is not None:
            progress(span[-1] + 1, rounds)


def time_one(model, record, batch, mode, device, keep):
    """One timed call of `model` (after an untimed one in inference), its
    time (and the idle wait before it) appended to `record` when `keep`."""
    if mode == "inference":  # untimed: thread pools and caches warm, as when serving
        run_step(model, batch, mode)
    if device.type == "cpu":
        waited = wait_until_idle()
        if keep:
            record.setdefault("idle_wait_ms", []).append(waited * 1e3)
    elapsed = time_call(lambda: run_step(model, batch, mode), device)
    if keep:
        record["times_ms"].append(elapsed)


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
