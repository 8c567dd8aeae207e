"""The ``seqcls-fast bench`` command line: options, the cases they select, and
the run over them (tables on stdout, optionally a JSON record and a plot)."""
import argparse
import datetime
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from .cases import (CELLS, CUDA_EXTRA_CASES, DTYPES, LENGTH_DISTRIBUTIONS,
                    LONG_SWEEP_MAX_SECONDS, MODES, SWEEPS, Case)
from .measure import AUTO_REPEATS, AUTO_SECONDS_PER_CASE, IDLE_RULE, PROBE_RULE, run_case
from .report import (Progress, environment, format_table, kernels_line, write_memory_plot,
                     write_plot)


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
    parser.add_argument("--cell", choices=CELLS, default="lstm",
                        help="the recurrent cell of every method's classifier: lstm (default) "
                             "or gru (nn.GRU baselines, ONNX Runtime's GRU)")
    shape.add_argument("--lengths", choices=LENGTH_DISTRIBUTIONS,
                       help="sequence lengths: uniform in [T/4, T] (default), upper-half "
                            "(in [T/2, T]), full (all T), long-tail (T*u^3: mostly short)")
    parser.add_argument("--sweep", choices=tuple(SWEEPS), default="default",
                        help="the cases run without shape options: default (T = 64..256 at "
                             "B=64, and a bidirectional case), or long (training memory and "
                             "time at T = 1024, 4096, 16384, B=8, I=64, H=256, lengths in "
                             "[T/2, T]; a method predicted to take over "
                             f"{LONG_SWEEP_MAX_SECONDS:.0f} s per step is skipped; --plot "
                             "draws memory and time against T)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--mode", choices=(*MODES, "both"),
                        help="inference (forward under no_grad), train (forward + "
                             "cross-entropy + backward), or both (default; train for "
                             "--sweep long)")
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
    if args.mode is None:
        args.mode = "train" if args.sweep == "long" else "both"
    return args


def cases_from(args):
    overrides = {field: value for field, value in (
        ("batch", args.batch), ("input_size", args.input_size),
        ("hidden_size", args.hidden_size), ("layers", args.layers),
        ("bidirectional", args.bidirectional), ("lengths", args.lengths)) if value is not None}
    if not overrides and args.seq_len is None:
        extra = CUDA_EXTRA_CASES if args.device.type == "cuda" and args.sweep == "default" else ()
        return [replace(case, cell=args.cell) for case in SWEEPS[args.sweep] + extra]
    return [replace(Case(**overrides), seq_len=seq_len, cell=args.cell)
            for seq_len in (args.seq_len or [Case.seq_len])]


def too_slow(results, case, mode):
    """{method: why} for the methods whose step at ``case`` is predicted,
    linearly in T from their median at the previous T of this mode, to take
    more than LONG_SWEEP_MAX_SECONDS (or that were skipped for that already)."""
    previous = [r for r in results if r["mode"] == mode]
    if not previous:
        return None
    last = previous[-1]
    skip = {}
    for record in last["methods"]:
        note = record.get("note") or ""
        if record["status"] == "skipped" and note.startswith("predicted"):
            skip[record["name"]] = note
        elif "median_ms" in record:
            predicted = record["median_ms"] / 1e3 * case.seq_len / last["case"]["seq_len"]
            if predicted > LONG_SWEEP_MAX_SECONDS:
                skip[record["name"]] = (
                    f"predicted {predicted:.0f} s per step at T={case.seq_len} (linear in T from "
                    f"{record['median_ms'] / 1e3:.1f} s at T={last['case']['seq_len']}), over "
                    f"{LONG_SWEEP_MAX_SECONDS:.0f} s")
    return skip


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    cases = cases_from(args)
    modes = MODES if args.mode == "both" else (args.mode,)
    env = environment(args.device)
    print(f"seqcls-fast bench: {env['device_name']} ({env['device']}), torch "
          f"{env['torch_version']}, {env['threads']} threads, commit {env['git_commit']}",
          flush=True)
    if kernels_line(env):
        print(kernels_line(env), flush=True)
    progress = Progress(len(cases) * len(modes))
    results = []
    started = time.perf_counter()
    try:
        for case in cases:
            for mode in modes:
                progress.start_case(f"T={case.seq_len} {mode}")
                skip = too_slow(results, case, mode) if args.sweep == "long" else None
                result = run_case(case, mode, args.dtype, args.device, args.repeats,
                                  progress.rounds, skip)
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
              "timing": IDLE_RULE,
              "machine_probe": PROBE_RULE,
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
        (write_memory_plot if args.sweep == "long" else write_plot)(results, args.plot)
        print(f"wrote {args.plot}")
    return 0
