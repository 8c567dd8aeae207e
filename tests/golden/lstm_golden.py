"""Bitwise records of the LSTM operators' CPU results, to hold a refactor of the
driver to exactly what it computed before (issue 27: "outputs and gradients
bitwise unchanged, against values recorded from main before the change").

    python tests/golden/lstm_golden.py record   # writes lstm_cpu.json (main, before)
    python tests/golden/lstm_golden.py check    # exit 1 and a line per difference

Each run covers one CPU kernel path, the one SEQCLS_FAST_CPU_ISA names
(avx512, avx2, baseline), in float32 and float64: every output of
lstm_layer_forward (both directions, saved activations, inference, low
memory), lstm_layer_backward, lstm_layer_backward_recompute and
lstm_layer_pooled_forward on fixed inputs. A result is recorded as the SHA-256
of its bytes.

Bitwise equality across machines needs every library below us to compute the
same bits too, so the caller fixes them (tests/test_golden.py does):
MKL_CBWR=COMPATIBLE (MKL's reproducible code path, the same on every x86 CPU),
ATEN_CPU_CAPABILITY=avx2 (ATen's reductions, e.g. the bias gradient), two
threads (ATen splits reductions by thread). Recorded on an AMD EPYC Zen 4 with
torch 2.14.1 and g++ 12.2.
"""
import hashlib
import json
import os
import sys

import torch

import seqcls_fast  # noqa: F401  (loads the operators)

ops = torch.ops.seqcls_fast
RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lstm_cpu.json")
ENV = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2",
       "MKL_NUM_THREADS": "2"}
# (T, B, I, H, lengths): a small odd shape, and one with several unit blocks
# and rows per worker in the persistent recurrence.
SKIPPED = 3  # exit status: the CPU lacks the path asked for
SHAPES = [(37, 5, 13, 40, [37, 12, 1, 37, 20]), (20, 8, 16, 256, [20, 3, 20, 7, 1, 19, 20, 11])]


def digest(t):
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def inputs(shape, dtype):
    T, B, I, H, lengths = shape
    g = torch.Generator().manual_seed(T * 1000 + H)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
                               * scale).to(dtype)
    w = H ** -0.5
    return dict(x=r(T, B, I), lengths=torch.tensor(lengths), h0=r(B, H), c0=r(B, H),
                w_ih=r(4 * H, I, scale=w), w_hh=r(4 * H, H, scale=w), b_ih=r(4 * H, scale=w),
                b_hh=r(4 * H, scale=w), query=r(H // 2), key_w=r(H // 2, H, scale=w),
                key_b=r(H // 2, scale=w), grads=(r(T, B, H), r(B, H), r(B, H)))


def results(shape, dtype):
    """name -> tensor, for every operator output on these inputs."""
    a = inputs(shape, dtype)
    lstm = (a["x"], a["lengths"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    out = {}
    for reverse in (False, True):
        tag = "reverse" if reverse else "forward"
        fwd = ops.lstm_layer_forward(*lstm, reverse, True)
        out.update({f"{tag}/forward/{i}": t for i, t in enumerate(fwd)})
        out[f"{tag}/inference/0"] = ops.lstm_layer_forward(*lstm, reverse, False)[0]
        _, _, _, gates, cell, h_prev = fwd
        bwd = ops.lstm_layer_backward(*a["grads"], a["x"], a["lengths"], a["c0"], a["w_ih"],
                                      a["w_hh"], gates, cell, h_prev, reverse, True)
        out.update({f"{tag}/backward/{i}": t for i, t in enumerate(bwd)})
        low = ops.lstm_layer_forward(*lstm, reverse, True, None, True)
        out.update({f"{tag}/low_memory/{i}": t for i, t in enumerate(low)})
        rec = ops.lstm_layer_backward_recompute(*a["grads"], *lstm, low[0], low[4], reverse, True)
        out.update({f"{tag}/recompute/{i}": t for i, t in enumerate(rec)})
    pooled = ops.lstm_layer_pooled_forward(*lstm, "attention", a["query"], a["key_w"], a["key_b"],
                                           None, None, None)
    out.update({f"pooled_attention/{i}": t for i, t in enumerate(pooled)})
    mean = ops.lstm_layer_pooled_forward(*lstm, "mean", None, None, None, None, None, None)
    out.update({f"pooled_mean/{i}": t for i, t in enumerate(mean)})
    return out


def digests():
    """{dtype: {case/name: sha256}} for the kernel path this process runs."""
    torch.set_num_threads(2)
    return {str(dtype): {f"T{s[0]}_H{s[3]}/{name}": digest(t)
                         for s in SHAPES for name, t in results(s, dtype).items()}
            for dtype in (torch.float32, torch.float64)}


def kernel_path():
    return os.environ.get("SEQCLS_FAST_CPU_ISA", "")


def main(action):
    missing = {k: v for k, v in ENV.items() if os.environ.get(k) != v}
    if missing or not kernel_path():
        sys.exit(f"lstm_golden.py: run with {ENV} and SEQCLS_FAST_CPU_ISA set; missing {missing}")
    running = seqcls_fast._C.cpu_kernel_paths()["isa"]
    if running != kernel_path():  # the variable caps the ISA: this CPU has less
        print(f"lstm_golden.py: SKIP: {kernel_path()} asked, this CPU runs {running}")
        return SKIPPED
    got = digests()
    record = json.load(open(RECORD)) if os.path.exists(RECORD) else {}
    if action == "record":
        record[kernel_path()] = got
        with open(RECORD, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        print(f"lstm_golden.py: recorded {sum(map(len, got.values()))} results for {kernel_path()}")
        return 0
    want = record[kernel_path()]
    differ = [f"{dtype} {name}" for dtype in want for name in want[dtype]
              if got[dtype].get(name) != want[dtype][name]]
    for line in differ:
        print(f"DIFFERS {kernel_path()} {line}")
    print(f"lstm_golden.py: {kernel_path()}: {sum(map(len, want.values())) - len(differ)} equal, "
          f"{len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "check"))
