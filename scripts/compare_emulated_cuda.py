"""The CUDA backend on a GPU against the same backend on the CPU emulator, on
the same inputs (scripts/gpu_check.sh runs it on a GPU machine).

Each operator runs as torch.ops.seqcls_fast on CUDA tensors and as
torch.ops.seqcls_fast_cuda_emu on copies on the CPU: the same host code and
kernels, with cuBLAS against MKL for the GEMMs; each forward and the pooling
also with the lengths on the GPU (the plan made there). Writes one JSON record (the
largest difference per output, relative to the output's largest value) and
exits non-zero where a float64 output differs by more than 1e-9 or a float32
one by more than 1e-4: the emulation then missed something the hardware does.

    python scripts/compare_emulated_cuda.py OUT.json
"""
import json
import sys

import torch

import seqcls_fast  # noqa: F401  (loads the operators)

GPU, EMU = torch.ops.seqcls_fast, torch.ops.seqcls_fast_cuda_emu
LIMIT = {torch.float64: 1e-9, torch.float32: 1e-4}


def lstm_inputs(dtype, T=37, B=5, I=7, H=257):
    # nn.LSTM's weight scale, 1/sqrt(H): larger weights make the recurrence
    # chaotic, and any two summation orders then part ways.
    g = torch.Generator().manual_seed(0)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) / H ** 0.5).to(dtype)  # noqa: E731
    lengths = torch.tensor([37, 12, 1, 37, 20])
    return (r(T, B, I), lengths, r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H))


# A case's results compared: all, or only the first few (with lengths on the
# GPU the saved activations are T x B slots there, N packed rows here).
ALL = None


def cases(dtype):
    """(name, op name, args, lengths on the GPU, results compared) with CPU tensors."""
    x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh = lstm_inputs(dtype)
    lstm = (x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh)
    for reverse in (False, True):
        yield from cases_of(f"lstm_layer_forward reverse={reverse}", "lstm_layer_forward",
                            (*lstm, reverse, True), 3)
    gru = (x, lengths, h0, *(w[:3 * w.shape[0] // 4] for w in (w_ih, w_hh, b_ih, b_hh)))
    for reverse in (False, True):
        yield from cases_of(f"gru_layer_forward reverse={reverse}", "gru_layer_forward",
                            (*gru, reverse, True), 2)
    yield from _lstm_backward_and_pooling_cases(dtype, lstm, lengths)


def cases_of(name, op, args, compared_with_gpu_lengths):
    """The case with CPU lengths (every result compared), then with the
    lengths on the GPU (the plan made and expanded there: the first
    `compared_with_gpu_lengths` results compared)."""
    yield name, op, args, False, ALL
    yield f"{name} GPU lengths", op, args, True, compared_with_gpu_lengths


def _lstm_backward_and_pooling_cases(dtype, lstm, lengths):
    x, _, h0, c0, w_ih, w_hh, b_ih, b_hh = lstm
    out, h_n, c_n, gates, cell, h_prev = EMU.lstm_layer_forward(*lstm, False, True)
    grads = (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n))
    yield "lstm_layer_backward", "lstm_layer_backward", (
        *grads, x, lengths, c0, w_ih, w_hh, gates, cell, h_prev, False, True), False, ALL
    query, key_w, key_b = torch.randn(11, dtype=dtype), torch.randn(11, 257, dtype=dtype) * 0.1, \
        torch.randn(11, dtype=dtype)
    yield from cases_of("lstm_layer_pooled_forward attention", "lstm_layer_pooled_forward", (
        *lstm, "attention", query, key_w, key_b, None, None, None), ALL)
    yield from cases_of("lstm_layer_pooled_forward mean", "lstm_layer_pooled_forward", (
        *lstm, "mean", None, None, None, None, None, None), ALL)
    values, keys = torch.randn(5, 90, 70, dtype=dtype), torch.randn(5, 90, 33, dtype=dtype)
    q = torch.randn(33, dtype=dtype)
    pooled, weights = EMU.masked_attention_pool_forward(values, keys, q, lengths * 2)
    yield from cases_of("masked_attention_pool_forward", "masked_attention_pool_forward", (
        values, keys, q, lengths * 2), ALL)
    yield from cases_of("masked_attention_pool_backward", "masked_attention_pool_backward", (
        torch.randn_like(pooled), torch.randn_like(weights), values, keys, q, lengths * 2,
        weights), ALL)


def on_gpu(arg, gpu_lengths):
    """A CUDA copy of a floating input; lengths stay on the CPU unless
    gpu_lengths."""
    if isinstance(arg, torch.Tensor) and (arg.is_floating_point() or gpu_lengths):
        return arg.cuda()
    return arg


def main(path):
    torch.backends.cuda.matmul.allow_tf32 = False
    records, worst = [], 0.0
    for dtype in (torch.float64, torch.float32):
        for name, op, args, gpu_lengths, compared in cases(dtype):
            emu = getattr(EMU, op)(*args)
            gpu = getattr(GPU, op)(*(on_gpu(a, gpu_lengths) for a in args))
            for i, (a, b) in enumerate(list(zip(emu, gpu))[:compared]):
                if a.numel() == 0:
                    continue
                b = b.cpu()
                same = (a == b) | (a.isnan() & b.isnan())  # -inf == -inf: mean's unused max
                scale = max(a.nan_to_num(0, 0, 0).abs().max().item(), 1e-30)
                diff = (a - b).abs().masked_fill(same, 0).max().item() / scale
                ok = diff <= LIMIT[dtype]
                records.append(dict(case=name, dtype=str(dtype), output=i, rel_max_diff=diff, ok=ok))
                worst = max(worst, diff / LIMIT[dtype])
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  limits={str(k): v for k, v in LIMIT.items()}, records=records,
                  failed=[r for r in records if not r["ok"]])
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"compare_emulated_cuda: {len(records)} outputs, {len(result['failed'])} over the limit "
          f"(worst at {worst:.3g} of its limit)")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "compare_emulated_cuda.json"))
