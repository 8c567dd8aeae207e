"""What ``seqcls-fast bench`` shows and records besides the timings: the
per-case table, the environment (machine, versions, git commit), the speedup
plot and the progress display."""
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

import seqcls_fast as sf

from .cases import Case


def format_table(result):
    width = max([len("method")] + [len(record["name"]) for record in result["methods"]])
    lines = [f"{result['label']} (mean length {result['mean_length_first_batch']:.0f}), "
             f"{result['dtype']}, {result['mode']}, {result['repeats']} repeats",
             f"  {'method':{width}s} {'status':8s} {'median ms':>10s} {'IQR ms':>19s} "
             f"{'speedup':>8s} {'peak MiB':>9s}"]
    for record in result["methods"]:
        if "median_ms" in record:
            iqr = f"{record['q1_ms']:.2f}-{record['q3_ms']:.2f}"
            speedup = (f"{record['speedup_of_ours']:.2f}x" if "speedup_of_ours" in record
                       else "-")
            peak = record["peak_memory_bytes"]
            memory = f"{peak / 2**20:.1f}" if peak is not None else "n/a"
            lines.append(f"  {record['name']:{width}s} {record['status']:8s} "
                         f"{record['median_ms']:10.2f} {iqr:>19s} {speedup:>8s} {memory:>9s}")
        else:
            lines.append(f"  {record['name']:{width}s} {record['status']:8s} {record['note']}")
        if record["status"] == "wrong" and "median_ms" in record:
            lines.append(f"  {'':{width}s} {'':8s} {record['note']}")
    probe = result.get("machine_probe")
    if probe and probe["times_ms"]:
        lines.append(f"  machine probe ({probe['what']}, before each round): median "
                     f"{probe['median_ms']:.2f} ms ({probe['median_gflops']:.0f} GFLOP/s), best "
                     f"{probe['min_ms']:.2f} ms ({probe['best_gflops']:.0f} GFLOP/s)")
    return "\n".join(lines)


def git_commit():
    root = Path(__file__).resolve().parents[3]  # the checkout: seqcls_fast/apps/bench/
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


# What selects the code paths of the CPU kernels: ours (SEQCLS_FAST_CPU_ISA,
# SEQCLS_FAST_CPU_RECURRENCE), ATen's, MKL's and oneDNN's (the AVX2
# configuration of the README sets the last three; ONNX Runtime has none).
ISA_VARIABLES = ("SEQCLS_FAST_CPU_ISA", "SEQCLS_FAST_CPU_RECURRENCE", "ATEN_CPU_CAPABILITY",
                 "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_features():
    """{flag: bool} for the vector extensions the CPU kernels choose between."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo.read(), re.M).group(1).split())
    except (OSError, AttributeError):
        return None
    return {flag: flag in flags for flag in ("avx512f", "avx2", "fma")}


def cpu_kernels():
    """The instruction set our CPU kernels use and the float32 recurrence that
    runs ("avx512", "avx2" or "steps"), ATen's CPU capability, the CPU's own
    features and the variables that chose them."""
    from seqcls_fast import _C
    return {**_C.cpu_kernel_paths(), "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_features": cpu_features(),
            "variables": {name: os.environ.get(name) for name in ISA_VARIABLES}}


def kernels_line(env):
    """One line naming the kernel paths of a CPU run (empty on CUDA)."""
    kernels = env.get("cpu_kernels")
    if not kernels:
        return ""
    forced = {k: v for k, v in kernels["variables"].items() if v}
    return (f"CPU kernels: recurrence {kernels['recurrence']}, ISA {kernels['isa']} (CPU has "
            f"{', '.join(f for f, on in (kernels['cpu_features'] or {}).items() if on) or '?'}), "
            f"ATen {kernels['aten_cpu_capability']}"
            + (f"; set: {' '.join(f'{k}={v}' for k, v in forced.items())}" if forced else ""))


def environment(device):
    commit, dirty = git_commit()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": device_name,
            "cpu_kernels": cpu_kernels() if device.type == "cpu" else None,
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


def write_memory_plot(results, path):
    """Training-step peak memory and time of every method vs sequence length
    (the long-sequence sweep): two panels, log-log."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    lines = {}
    for result in results:
        for record in result["methods"]:
            if record.get("peak_memory_bytes") is not None and "median_ms" in record:
                lines.setdefault(record["name"], []).append(
                    (result["case"]["seq_len"], record["peak_memory_bytes"] / 2**20,
                     record["median_ms"] / 1e3))
    figure, (memory, time_axes) = pyplot.subplots(1, 2, figsize=(11, 4.5))
    for name, points in sorted(lines.items()):
        points.sort()
        steps = [t for t, _, _ in points]
        memory.plot(steps, [m for _, m, _ in points], marker="o", label=name)
        time_axes.plot(steps, [s for _, _, s in points], marker="o", label=name)
    seq_lens = sorted({result["case"]["seq_len"] for result in results})
    for axes, label in ((memory, "peak memory of a training step (MiB)"),
                        (time_axes, "training step time (s, median)")):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xticks(seq_lens, [str(seq_len) for seq_len in seq_lens])
        axes.minorticks_off()
        axes.set_xlabel("sequence length T")
        axes.set_ylabel(label)
        axes.legend(fontsize=8)
    if results:
        case = results[0]["case"]
        figure.suptitle(f"training step, B={case['batch']} I={case['input_size']} "
                        f"H={case['hidden_size']}, {case['layers']} layer(s), lengths "
                        f"{case['lengths']}, {results[0]['dtype']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


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
