"""A lower bound on this CPU's FP32 FMA peak, for the "% peak" columns: the
rate of a large single-precision GEMM (torch.mm, MKL on x86), which runs
close to the FMA limit, at 1 thread and at all threads.

    python benchmarks/cpu_fma_peak.py --json benchmarks/results/cpu-fma-peak.json
"""
import argparse
import json
import platform
import statistics
import time

import torch


def sgemm_gflops(threads, size=2048, repeats=9):
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    record = {
        "what": "median GFLOP/s of torch.mm on 2048x2048 float32 (a lower bound on the FMA peak)",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "gflops": {str(n): sgemm_gflops(n) for n in sorted({1, threads})},
    }
    torch.set_num_threads(threads)
    with open(args.json, "w") as out:
        json.dump(record, out, indent=1)
    print(record["gflops"])


if __name__ == "__main__":
    main()
