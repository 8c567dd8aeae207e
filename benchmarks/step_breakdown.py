"""Where one training step of ``seqcls-fast bench``'s classifier (ours: the
recurrent layer + masked attention pooling + linear head + cross-entropy)
spends its time, phase by phase: the recurrent forward, the pooling forward,
the head and loss, then in the backward the head's, the pooling's and the
recurrent layer's (timed between tensor hooks on the pooled features and on
the layer's output, which fire as autograd reaches them). Wall time of each
phase, median over steps, with the step's total; the bench's case and
weights (``--cell``, B=64 T=256 I=128 H=256 by default).

    python benchmarks/step_breakdown.py --cell gru --json benchmarks/results/OUT.json

The phases add up to the step; the op-level profiler is not used because on
this project's 2-core machines its per-op attribution moved by several
milliseconds between runs of the same step (benchmarks/NOTES.md).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import seqcls_fast as sf
from seqcls_fast.apps.bench import methods
from seqcls_fast.apps.bench.cases import make_batch
from seqcls_fast.apps.bench.cli import cases_from, parse_args
from seqcls_fast.apps.bench.report import environment

PHASES = ("rnn_forward", "pool_forward", "head_and_loss", "head_backward", "pool_backward",
          "rnn_backward")


def timed_step(model, batch):
    """One training step of ``model`` (an sf.LSTMClassifier in train mode),
    split into PHASES; returns {phase: ms, "step": ms}."""
    model.zero_grad(set_to_none=True)
    reached = {}

    def when_reached(name):
        def hook(grad):
            reached[name] = time.perf_counter()
        return hook

    t0 = time.perf_counter()
    plan = sf.LengthPlan.of(batch.lengths, batch.x.size(1), batch.x.size(0), batch.x.device,
                            "step_breakdown")
    outputs, _ = model.rnn(batch.x, lengths=plan)
    t1 = time.perf_counter()
    features, _ = model.pool(outputs, plan)
    t2 = time.perf_counter()
    loss = F.cross_entropy(model.head(features), batch.labels)
    t3 = time.perf_counter()
    outputs.register_hook(when_reached("outputs"))
    features.register_hook(when_reached("features"))
    loss.backward()
    t4 = time.perf_counter()
    seconds = (t1 - t0, t2 - t1, t3 - t2, reached["features"] - t3,
               reached["outputs"] - reached["features"], t4 - reached["outputs"])
    result = {name: s * 1e3 for name, s in zip(PHASES, seconds)}
    result["step"] = (t4 - t0) * 1e3
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("lstm", "gru"), default="gru")
    parser.add_argument("--shape", type=int, nargs=4, default=[64, 256, 128, 256],
                        metavar=("B", "T", "I", "H"))
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    B, T, I, H = args.shape
    case = cases_from(parse_args(["--cell", args.cell, "--batch", str(B), "--seq-len", str(T),
                                  "--input-size", str(I), "--hidden-size", str(H)]))[0]
    device = torch.device("cpu")
    ours = methods.Ours(methods.Reference(case, torch.float32, device), case)
    model = ours.model.train()
    batch = make_batch(case, torch.float32, device, seed=0)
    for _ in range(3):  # warm-up
        timed_step(model, batch)
    steps = [timed_step(model, batch) for _ in range(args.steps)]
    medians = {name: statistics.median(s[name] for s in steps) for name in (*PHASES, "step")}
    for name, ms in medians.items():
        print(f"{name:14s} {ms:8.2f} ms")
    record = {"tool": "benchmarks/step_breakdown.py", "case": case.label(),
              "environment": environment(device), "steps": args.steps,
              "median_ms": medians, "every_step_ms": steps}
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
