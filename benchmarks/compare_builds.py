"""Before/after timing of two builds of seqcls_fast on the CPU, in one run.

    python benchmarks/compare_builds.py --before DIR --after DIR [--rounds N] --json OUT
        [--batch 64 --seq-len 256 --input-size 128 --hidden-size 256]

DIR is a source tree with its extension built in place. Each round runs one
child process per build (order alternating), each timing the same cases on
the same seeded inputs after a warm-up; the record holds every per-round
median and the after/before ratio of the medians. Used to show a refactor
did not make the CPU path slower. A child that fails stops the run: its
stderr is printed and the exit status is non-zero.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from seqcls_fast.apps.bench.report import ISA_VARIABLES

# argv: threads, layers, bidirectional (0/1), repeats, B, T, I, H
CHILD = r"""
import json, sys, time, torch
import seqcls_fast as sf
torch.set_num_threads(int(sys.argv[1]))
B, T, I, H = (int(v) for v in sys.argv[5:9])
g = torch.Generator().manual_seed(0)
x = torch.randn(B, T, I, generator=g)
lengths = torch.randint(T // 4, T + 1, (B,), generator=g); lengths[0] = T
torch.manual_seed(0)
model = sf.LSTMClassifier(I, H, 10, num_layers=int(sys.argv[2]), bidirectional=sys.argv[3] == "1")
labels = torch.randint(10, (B,), generator=g)
def inference():
    with torch.no_grad():
        model(x, lengths)
def train():
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x, lengths), labels).backward()
out = {}
for name, fn in (("inference", inference), ("train", train)):
    fn()
    times = []
    for _ in range(int(sys.argv[4])):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    out[name] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--batch", type=int, default=64, help="B (default 64)")
    ap.add_argument("--seq-len", type=int, default=256, help="T (default 256)")
    ap.add_argument("--input-size", type=int, default=128, help="I (default 128)")
    ap.add_argument("--hidden-size", type=int, default=256, help="H (default 256)")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    builds = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    shape = {"B": args.batch, "T": args.seq_len, "I": args.input_size, "H": args.hidden_size}
    rounds = []
    for r in range(args.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        result = {}
        for which in order:
            env = dict(os.environ, PYTHONPATH=builds[which])
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.threads), str(args.layers),
                 "1" if args.bidirectional else "0", str(args.repeats),
                 *(str(shape[k]) for k in ("B", "T", "I", "H"))],
                cwd=builds[which], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                sys.exit(f"compare_builds: the {which} build ({builds[which]}) failed in round "
                         f"{r} with exit status {proc.returncode}")
            result[which] = json.loads(proc.stdout.strip().splitlines()[-1])
        rounds.append(result)
        print(f"round {r}: {result}", flush=True)
    summary = {}
    for mode in ("inference", "train"):
        before = statistics.median(x["before"][mode] for x in rounds)
        after = statistics.median(x["after"][mode] for x in rounds)
        summary[mode] = {"before_s": before, "after_s": after, "after_over_before": after / before}
    record = {"command": " ".join(sys.argv), "case": {
              **shape, "layers": args.layers, "bidirectional": args.bidirectional,
              "lengths": "uniform [T/4, T]"}, "threads": args.threads,
              "builds": {k: subprocess.run(["git", "-C", v, "rev-parse", "HEAD"],
                                          capture_output=True, text=True).stdout.strip()
                         for k, v in builds.items()},
              "torch": __import__("torch").__version__,
              # what chose the CPU code paths the children ran (they inherit these)
              "isa_variables": {name: os.environ.get(name) for name in ISA_VARIABLES},
              "rounds": rounds, "summary": summary}
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
