"""Per-kernel times of one LSTM layer on the CPU against its FLOP floor: the
forward (persistent recurrence, and the per-step GEMM path for comparison),
its input-projection GEMM alone, the recurrence alone (I = 1, so the
projection is negligible) and the backward (persistent, and the per-step
path). One shape, lengths uniform in
[T/4, T]; calls interleaved, medians of repeats.

    python benchmarks/cpu_kernel_breakdown.py --json benchmarks/results/cpu-kernel-breakdown.json
"""
import argparse
import json
import os
import statistics
import time

import torch

import seqcls_fast  # noqa: F401  (registers the operators)

ops = torch.ops.seqcls_fast


def layer_inputs(T, B, I, H, lengths):
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(T, B, I, generator=g), lengths=lengths,
                w_ih=torch.randn(4 * H, I, generator=g) * 0.1,
                w_hh=torch.randn(4 * H, H, generator=g) * 0.1,
                b_ih=torch.randn(4 * H, generator=g) * 0.1, b_hh=torch.randn(4 * H, generator=g) * 0.1)


def forward(a, save, path):
    os.environ["SEQCLS_FAST_CPU_RECURRENCE"] = path
    return ops.lstm_layer_forward(a["x"], a["lengths"], None, None, a["w_ih"], a["w_hh"],
                                  a["b_ih"], a["b_hh"], False, save, None, False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--shape", type=int, nargs=4, default=[256, 64, 128, 256],
                        metavar=("T", "B", "I", "H"))
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    T, B, I, H = args.shape
    lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=torch.Generator().manual_seed(1))
    N = int(lengths.sum())
    a = layer_inputs(T, B, I, H, lengths)
    a1 = layer_inputs(T, B, 1, H, lengths)
    saved = forward(a, True, "fused")
    grad_out = torch.randn(T, B, H)
    zeros = torch.zeros(B, H)
    x_packed = torch.randn(N, I)
    w_ih_t, bias = a["w_ih"].t(), a["b_ih"] + a["b_hh"]
    projected = torch.empty(N, 4 * H)  # reused, as the forward reuses its chunk buffer

    def backward(path):
        os.environ["SEQCLS_FAST_CPU_RECURRENCE"] = path
        out, h_n, c_n, gates, cell, h_prev = saved
        ops.lstm_layer_backward(grad_out, zeros, zeros, a["x"], lengths, None, a["w_ih"],
                                a["w_hh"], gates, cell, h_prev, False, True, None)

    calls = {
        "forward inference, persistent recurrence": (lambda: forward(a, False, "fused"),
                                                     2 * N * 4 * H * (I + H)),
        "forward inference, per-step GEMM path": (lambda: forward(a, False, "steps"),
                                                  2 * N * 4 * H * (I + H)),
        "input projection GEMM alone (MKL addmm)": (lambda: torch.addmm(bias, x_packed, w_ih_t, out=projected),
                                                    2 * N * 4 * H * I),
        "recurrence alone (I = 1), persistent": (lambda: forward(a1, False, "fused"),
                                                 2 * N * 4 * H * H),
        "recurrence alone (I = 1), per-step GEMM path": (lambda: forward(a1, False, "steps"),
                                                         2 * N * 4 * H * H),
        "forward keeping activations (training)": (lambda: forward(a, True, "fused"),
                                                   2 * N * 4 * H * (I + H)),
        "backward, persistent (dG W_hh + cell fused; weight GEMMs)": (lambda: backward("fused"),
                                                                      2 * 2 * N * 4 * H * (I + H)),
        "backward, per-step path (MKL dG W_hh, cell; weight GEMMs)": (lambda: backward("steps"),
                                                                      2 * 2 * N * 4 * H * (I + H)),
    }
    times = {name: [] for name in calls}
    with torch.no_grad():
        for round_ in range(args.repeats + 2):
            for name, (call, _) in calls.items():
                start = time.perf_counter()
                call()
                if round_ >= 2:
                    times[name].append(time.perf_counter() - start)
    os.environ.pop("SEQCLS_FAST_CPU_RECURRENCE")
    rows = []
    for name, (_, flops) in calls.items():
        median = statistics.median(times[name])
        rows.append(dict(kernel=name, flops=flops, median_ms=median * 1e3,
                         gflops=flops / median / 1e9))
        print(f"{name:55s} {flops / 1e9:6.2f} GFLOP {median * 1e3:8.2f} ms "
              f"{flops / median / 1e9:6.0f} GFLOP/s")
    record = dict(what="per-kernel medians of one LSTM layer, float32", shape=dict(T=T, B=B, I=I, H=H),
                  packed_rows=N, threads=torch.get_num_threads(), torch=torch.__version__,
                  repeats=args.repeats, rows=rows)
    with open(args.json, "w") as out:
        json.dump(record, out, indent=1)


if __name__ == "__main__":
    main()
