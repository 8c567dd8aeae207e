"""A small forward + backward through every CUDA kernel, for compute-sanitizer
(scripts/gpu_check.sh runs it under memcheck, racecheck and synccheck).

Covers: all four dtypes, both directions, unsorted lengths on the CPU and on
the GPU, no lengths, h0/c0 given and not, inference (save_activations=False),
odd H, T = 1, an empty batch, pooling with and without keys, strided inputs,
and T > the pooling block size; the classifier (LSTM and GRU) in training
(both memory modes, GPU and CPU lengths), inference (the fused pooled forward, every pooling) and streaming;
each LSTM case on both recurrences: the persistent kernels (cooperative
grids, where the fallback rule allows: all shapes here) and the per-step
path (SEQCLS_FAST_CUDA_RECURRENCE=steps). Exits non-zero on any error.
"""
import os

import torch

import seqcls_fast as sf

ops = torch.ops.seqcls_fast
dev = torch.device("cuda")


def lstm_case(dtype, T, B, I, H, lengths, with_state, reverse):
    g = lambda *s: torch.randn(*s, device=dev).to(dtype).requires_grad_(True)  # noqa: E731
    x = g(T, B, I)
    h0, c0 = (g(B, H), g(B, H)) if with_state else (None, None)
    w_ih, w_hh, b_ih, b_hh = g(4 * H, I), g(4 * H, H), g(4 * H), g(4 * H)
    out, h_n, c_n = sf.lstm_layer(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse)
    (out.float().square().sum() + h_n.float().sum() + c_n.float().sum()).backward()
    with torch.no_grad():  # the inference call
        ops.lstm_layer_forward(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, False)


def pool_case(dtype, B, T, D, A, lengths, with_keys):
    values = torch.randn(T, B, D, device=dev).to(dtype).transpose(0, 1).requires_grad_(True)
    keys = (torch.randn(B, T, A + 2, device=dev).to(dtype)[..., :A].requires_grad_(True)
            if with_keys else None)
    query = torch.randn(A if with_keys else D, device=dev).to(dtype).requires_grad_(True)
    pooled, weights = sf.masked_attention_pool(values, keys, query, lengths)
    (pooled.float().square().sum() + weights.float().sum()).backward()


def main():
    for recurrence in ("", "steps"):  # the persistent kernels, then the per-step path
        os.environ["SEQCLS_FAST_CUDA_RECURRENCE"] = recurrence
        run_cases()
    torch.cuda.synchronize()
    print("cuda_sanitize_case: ok")


def run_cases():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for reverse in (False, True):
            lengths = torch.tensor([3, 6, 1, 6, 4])
            lstm_case(dtype, 6, 5, 4, 7, lengths, True, reverse)
            lstm_case(dtype, 6, 5, 4, 7, lengths.to(dev), False, reverse)
            lstm_case(dtype, 6, 5, 4, 7, None, True, reverse)
            lstm_case(dtype, 1, 1, 3, 5, torch.tensor([1]), False, reverse)
            lstm_case(dtype, 4, 0, 3, 5, None, False, reverse)
        for with_keys in (False, True):
            pool_case(dtype, 3, 9, 7, 5, torch.tensor([9, 2, 5]), with_keys)
            pool_case(dtype, 3, 9, 7, 5, torch.tensor([9, 2, 5], device=dev), with_keys)
            pool_case(dtype, 2, 300, 40, 33, torch.tensor([300, 130]), with_keys)
            pool_case(dtype, 2, 5, 3, 2, None, with_keys)
            pool_case(dtype, 0, 5, 3, 2, None, with_keys)
    # The modules end to end: training (both memory modes), then inference
    # pooling as the top layer runs (lstm_layer_pooled_forward) and streaming.
    x, lengths = torch.randn(5, 7, 4, device=dev), torch.tensor([7, 3, 1, 7, 2], device=dev)
    # Lengths on the GPU: the plan is made and expanded on the GPU for the
    # persistent kernels (T x B slots), the pooling of a segment is one launch.
    for cell in ("lstm", "gru"):
        for memory in ("fast", "low"):
            model = sf.LSTMClassifier(4, 6, 3, num_layers=2, bidirectional=True, device=dev,
                                      memory=memory, cell=cell)
            model(x, lengths).sum().backward()
            model(x, lengths.cpu()).sum().backward()
    for pooling, attn_dim in (("attention", None), ("attention", 5), ("mean", None),
                              ("last", None)):
        with torch.no_grad():
            sf.LSTMClassifier(4, 6, 3, pooling=pooling, attn_dim=attn_dim, device=dev,
                              cell="gru").eval()(x, lengths)
        model = sf.LSTMClassifier(4, 6, 3, num_layers=2, pooling=pooling, attn_dim=attn_dim,
                                  device=dev).eval()
        with torch.no_grad():
            model(x, lengths)
            stream = model.stream(5)
            stream.feed(x[:, :3], torch.tensor([3, 3, 1, 3, 2]))
            stream.feed(x[:, 3:], torch.tensor([4, 0, 0, 4, 0]))


if __name__ == "__main__":
    main()
