"""Per-chunk latency of streaming classification against re-running the
prefix, as the prefix grows.

    python benchmarks/stream_latency.py --json OUT.json [--plot OUT.png]

For B in BATCHES {1, 64} and chunks of CHUNKS {1, 8} steps (H=256 and I=64
unless --hidden-size/--input-size say otherwise, one layer, attention
pooling, float32, CPU by default): ``stream.feed`` of the next chunk
versus what a user of nn.LSTM does without streaming, re-running the native
classifier (nn.LSTM + masked attention pooling + head, from the same weights)
on the whole prefix seen so far. Both are measured at each prefix length in
one run, interleaved; the stream's figure is the median of the feeds in the
window just before the prefix, the re-run's the median of 5 calls. Results are
checked first: the stream's logits equal the re-run's.
"""
import argparse
import json
import platform
import statistics
import time

import torch

import seqcls_fast as sf
from seqcls_fast.apps.bench.report import cpu_kernels, cpu_name
from seqcls_fast.reference import NativeLSTMClassifier

PREFIXES = (8, 64, 128, 256, 512, 1024)
BATCHES = (1, 64)  # rows streamed together; one plot panel each
CHUNKS = (1, 8)    # steps per feed


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(batch, chunk, args):
    torch.manual_seed(0)
    config = dict(input_size=args.input_size, hidden_size=args.hidden_size, num_classes=10)
    model = sf.LSTMClassifier(**config).eval()
    native = NativeLSTMClassifier(**config).eval()
    native.load_state_dict(model.state_dict())
    x = torch.randn(batch, max(PREFIXES), args.input_size)
    stream = model.stream(batch)
    rows, seen, feed_times = [], 0, []
    with torch.no_grad():
        for prefix in PREFIXES:
            while seen < prefix:
                piece = x[:, seen:seen + chunk]
                feed_times.append(_time(lambda: stream.feed(piece)))
                seen += piece.shape[1]
            lengths = torch.full((batch,), seen)
            logits = stream.logits()
            rerun = native(x[:, :seen], lengths)
            error = (logits - rerun).abs().max().item()
            assert error < 1e-4, f"stream and re-run disagree by {error} at prefix {seen}"
            rerun_times = [_time(lambda: native(x[:, :seen], lengths)) for _ in range(5)]
            window = feed_times[-max(1, min(16, prefix // chunk)):]
            feed_s, rerun_s = statistics.median(window), statistics.median(rerun_times)
            rows.append({"batch": batch, "chunk": chunk, "prefix": seen, "feed_s": feed_s,
                         "rerun_s": rerun_s, "speedup": rerun_s / feed_s,
                         "max_abs_logit_difference": error})
            print(f"B={batch:3d} chunk={chunk} prefix={seen:5d}: feed {feed_s * 1e3:8.3f} ms, "
                  f"re-run {rerun_s * 1e3:9.3f} ms, {rerun_s / feed_s:8.1f}x", flush=True)
    return rows


def write_plot(rows, path, hidden_size):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(BATCHES), figsize=(11, 4), sharey=True)
    for ax, batch in zip(axes, BATCHES):
        for chunk in CHUNKS:
            sel = [r for r in rows if r["batch"] == batch and r["chunk"] == chunk]
            ax.plot([r["prefix"] for r in sel], [r["feed_s"] * 1e3 for r in sel], "o-",
                    label=f"stream.feed, {chunk}-step chunk")
            ax.plot([r["prefix"] for r in sel], [r["rerun_s"] * 1e3 for r in sel], "s--",
                    label=f"re-run nn.LSTM on prefix (+{chunk})")
        ax.set(xscale="log", yscale="log", xlabel="prefix length (steps)",
               title=f"B={batch}, H={hidden_size}, CPU")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency per chunk (ms)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--plot")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for batch in BATCHES:
        for chunk in CHUNKS:
            rows += run(batch, chunk, args)
    record = {"what": __doc__.strip().splitlines()[0], "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "cpu_name": cpu_name(),
              "cpu_kernels": cpu_kernels(), "threads": args.threads,
              "input_size": args.input_size, "hidden_size": args.hidden_size, "rows": rows}
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1)
    if args.plot:
        write_plot(rows, args.plot, args.hidden_size)


if __name__ == "__main__":
    main()
