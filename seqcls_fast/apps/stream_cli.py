"""``seqcls-fast stream``: early classification. Replays the test split
through a ``seqcls-fast train`` checkpoint with ``model.stream`` and reports
how accurate the model is after it has seen 1/steps, 2/steps, ..., all of
each sequence.

    python -m seqcls_fast stream --checkpoint out/train/JapaneseVowels/model.pt \\
        --dataset JapaneseVowels --steps 10 --out out/stream/JapaneseVowels

At step k every row has seen ceil(k / steps * length) steps of its own
sequence: rows of different lengths advance by their own amounts in one
``feed`` (``chunk_lengths``; 0 when a short row has nothing new). Data,
standardization and the checkpoint come from :mod:`seqcls_fast.apps.train`.
Prints a table and writes ``stream_metrics.json`` (keys:
:data:`STREAM_METRICS_KEYS`) and, when matplotlib is installed,
``early_classification.png`` (accuracy vs fraction seen) into ``--out``.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from seqcls_fast.data import pad_batch
from .train import (NPZ_LAYOUT, DataError, add_data_arguments, choose_device, load_checked_data,
                    load_checkpoint, model_from_checkpoint, prepare_test_split, write_json)

STREAM_METRICS_KEYS = (
    "command", "checkpoint", "dataset", "n_test", "classes", "model", "steps",
    "fractions",        # k / steps for k = 1..steps
    "mean_steps_seen",  # per fraction, over the test rows
    "accuracy", "macro_f1",  # per fraction; the last is the whole-sequence score
    "timing",           # load_seconds, stream_seconds, feed_calls, mean_feed_ms
    "device", "batch_size", "threads", "torch", "python",
)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="seqcls-fast stream",
        description="Early classification: stream the test split through a unidirectional "
                    "checkpoint of seqcls-fast train and report accuracy after 1/steps, "
                    "2/steps, ..., all of each sequence.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=NPZ_LAYOUT)
    p.add_argument("--checkpoint", required=True, help="a model.pt written by seqcls-fast train")
    add_data_arguments(
        p, dataset_help="a UEA set through aeon (as for train)",
        data_help="X_TRAIN.ts, train.ts test.ts, or a .npz (as for train; the train split is "
                  "only checked, the standardization is the checkpoint's)")
    p.add_argument("--steps", type=int, default=10,
                   help="report after 1/steps, 2/steps, ..., all of each sequence (default 10)")
    p.add_argument("--batch-size", type=int, default=256, help="rows streamed together")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--out", default=None, help="output folder (default out/stream/<name>)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        return _run(args, argv)
    except DataError as e:
        print(f"seqcls-fast stream: error: {e}", file=sys.stderr)
        return 2


def load_streaming_model(path, device):
    """(model in eval mode, checkpoint dict); DataError when the checkpoint
    is missing or cannot stream."""
    ckpt = load_checkpoint(path)
    config = ckpt["model"]
    if config.get("bidirectional"):
        raise DataError(f"--checkpoint {path}: the model is bidirectional, and streaming needs "
                        "the past only (its reverse direction reads steps not seen yet); train "
                        "one with --no-bidirectional")
    # Either impl's checkpoint loads into sf.LSTMClassifier (same parameter names).
    model = model_from_checkpoint(ckpt, impl="seqcls_fast")
    return model.to(device).eval(), ckpt


def prefix_lengths(lengths, steps):
    """[steps, N] int64: ceil(k / steps * length) for k = 1..steps, exactly
    (integer arithmetic)."""
    k = torch.arange(1, steps + 1, dtype=torch.int64)[:, None]
    return -(-k * lengths[None, :] // steps)


def sequence_lengths(sequences):
    """int64 [N]: each sequence's number of steps."""
    return torch.tensor([len(s) for s in sequences], dtype=torch.int64)


def stream_predictions(model, sequences, steps, batch_size, device, prefixes=None):
    """Class predictions [steps, N] after each fraction, fed through
    ``model.stream`` in batches; -> (predictions, feed calls, seconds).
    ``prefixes``: prefix_lengths of the sequences, when the caller has it."""
    n = len(sequences)
    if prefixes is None:
        prefixes = prefix_lengths(sequence_lengths(sequences), steps)
    preds = torch.empty(steps, n, dtype=torch.int64)
    calls, seconds = 0, 0.0
    for start in range(0, n, batch_size):
        x, _ = pad_batch(sequences[start:start + batch_size])
        x = x.to(device)
        targets = prefixes[:, start:start + x.size(0)]
        stream = model.stream(x.size(0))
        seen = torch.zeros_like(targets[0])
        for k in range(steps):
            chunk_lengths = targets[k] - seen
            width = int(chunk_lengths.max())
            # Row b's chunk is x[b, seen[b] : seen[b] + chunk_lengths[b]]; the
            # clamped steps past that are ignored by feed.
            index = (seen[:, None] + torch.arange(width)[None, :]).clamp(max=x.size(1) - 1)
            chunk = torch.gather(x, 1, index.to(device)[:, :, None].expand(-1, -1, x.size(2)))
            tic = time.perf_counter()
            logits = stream.feed(chunk, chunk_lengths)
            preds[k, start:start + x.size(0)] = logits.argmax(dim=1).cpu()
            seconds += time.perf_counter() - tic
            calls += 1
            seen = targets[k]
    return preds, calls, seconds


def _run(args, argv):
    started = time.perf_counter()
    device = choose_device(args.device, 0, False)
    model, ckpt = load_streaming_model(args.checkpoint, device)
    name, _, test_split, _, channels = load_checked_data(args)
    classes = ckpt["classes"]
    sequences, true = prepare_test_split(ckpt, args.checkpoint, test_split, channels)
    load_seconds = time.perf_counter() - started

    prefixes = prefix_lengths(sequence_lengths(sequences), args.steps)
    preds, calls, feed_seconds = stream_predictions(model, sequences, args.steps,
                                                    args.batch_size, device, prefixes)
    from sklearn.metrics import f1_score  # the [data] extra, as for train
    fractions = [k / args.steps for k in range(1, args.steps + 1)]
    accuracy = [float(np.mean(p.numpy() == true)) for p in preds]
    macro_f1 = [float(f1_score(true, p.numpy(), labels=list(range(len(classes))),
                               average="macro", zero_division=0)) for p in preds]
    seen = prefixes.double().mean(dim=1).tolist()
    result = {
        "command": "python -m seqcls_fast stream " + " ".join(argv),
        "checkpoint": args.checkpoint, "dataset": name, "n_test": len(sequences),
        "classes": classes, "model": ckpt["model"], "steps": args.steps,
        "fractions": fractions, "mean_steps_seen": seen,
        "accuracy": accuracy, "macro_f1": macro_f1,
        "timing": {"load_seconds": load_seconds, "stream_seconds": feed_seconds,
                   "feed_calls": calls, "mean_feed_ms": 1e3 * feed_seconds / calls},
        "device": str(device), "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(format_table(result))
    out_dir = args.out or os.path.join("out", "stream", name)
    write_json(out_dir, "stream_metrics.json", result, print)
    plot = write_plot(result, os.path.join(out_dir, "early_classification.png"))
    print(f"wrote {plot}" if plot else "no plot (matplotlib is not installed)")
    return 0


def format_table(result):
    lines = [f"{result['dataset']}: {result['n_test']} test sequences streamed in "
             f"{result['steps']} steps ({result['timing']['feed_calls']} feed calls, "
             f"{result['timing']['stream_seconds']:.2f} s)",
             f"  {'seen':>5s}  {'mean steps':>10s}  {'accuracy':>8s}  {'macro F1':>8s}"]
    for frac, steps, acc, f1 in zip(result["fractions"], result["mean_steps_seen"],
                                    result["accuracy"], result["macro_f1"]):
        lines.append(f"  {frac:5.0%}  {steps:10.1f}  {acc:8.4f}  {f1:8.4f}")
    return "\n".join(lines)


def write_plot(result, path):
    """Accuracy (and macro F1) vs fraction seen; the path, or None without
    matplotlib."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend state
    except ImportError:
        return None
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    percent = [100 * f for f in result["fractions"]]
    ax.plot(percent, result["accuracy"], "o-", label="accuracy")
    ax.plot(percent, result["macro_f1"], "s--", label="macro F1", alpha=0.7)
    ax.set_xlabel("% of each sequence seen")
    ax.set_ylabel("test score")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"Early classification: {result['dataset']}\n"
                 f"({result['model']['pooling']} pooling, H={result['model']['hidden_size']}, "
                 f"{result['n_test']} test sequences)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
