"""What ``seqcls-fast bench`` runs on: the benchmark shapes (:class:`Case`, the
default sweep), the dtypes it accepts, and the padded input batches built
reproducibly from a seed."""
from dataclasses import dataclass

import torch

NUM_CLASSES = 10
LENGTH_DISTRIBUTIONS = ("uniform", "upper-half", "full", "long-tail")
MODES = ("inference", "train")
CELLS = ("lstm", "gru")
DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Case:
    """One benchmark shape: a padded batch [batch, seq_len, input_size], for
    an LSTM or (cell="gru") a GRU classifier."""
    batch: int = 64
    seq_len: int = 128
    input_size: int = 128
    hidden_size: int = 256
    layers: int = 1
    bidirectional: bool = False
    lengths: str = "uniform"
    cell: str = "lstm"

    def label(self):
        direction = "bidirectional" if self.bidirectional else "unidirectional"
        cell = "" if self.cell == "lstm" else f", cell {self.cell}"
        return (f"B={self.batch} T={self.seq_len} I={self.input_size} H={self.hidden_size} "
                f"layers={self.layers} {direction}, lengths {self.lengths}{cell}")


# The default sweep: sequence length varies at B=64, I=128, H=256, plus a
# bidirectional case, single-request latency (B=1), a small batch (B=8), a
# smaller model (H=64) and a longer, narrower batch. Sized for a few minutes on
# a 2-core CPU, where packed nn.LSTM training dominates.
DEFAULT_SWEEP = (
    Case(seq_len=64),
    Case(seq_len=128),
    Case(seq_len=256),
    Case(seq_len=64, bidirectional=True),
    Case(batch=1, seq_len=256),
    Case(batch=8, seq_len=256),
    Case(seq_len=128, input_size=64, hidden_size=64),
    Case(batch=16, seq_len=512, input_size=64, hidden_size=128),
)
# Long sequences (`--sweep long`): training memory and time as T grows, few
# rows, lengths uniform in [T/2, T]. Packed nn.LSTM is skipped at a T where
# its step is predicted (linearly in T from the case before) to take more
# than LONG_SWEEP_MAX_SECONDS.
LONG_SWEEP = tuple(Case(batch=8, seq_len=steps, input_size=64, hidden_size=256,
                        lengths="upper-half") for steps in (1024, 4096, 16384))
LONG_SWEEP_MAX_SECONDS = 60.0
SWEEPS = {"default": DEFAULT_SWEEP, "long": LONG_SWEEP}

# FlashRNN takes no lengths, so it is compared on full-length batches only; on
# CUDA (the only place it runs) the sweep adds one such case.
CUDA_EXTRA_CASES = (Case(seq_len=128, lengths="full"),)


def make_lengths(case, generator):
    """[B] int64 lengths on the CPU, the longest exactly seq_len (as a padding
    data loader gives). uniform: in [T/4, T]; upper-half: in [T/2, T]; full:
    all T; long-tail: T * u^3 for u uniform in (0, 1), i.e. mostly short with
    a few long ones."""
    steps = case.seq_len
    if case.lengths in ("uniform", "upper-half"):
        shortest = max(1, steps // (4 if case.lengths == "uniform" else 2))
        lengths = torch.randint(shortest, steps + 1, (case.batch,), generator=generator)
    elif case.lengths == "full":
        lengths = torch.full((case.batch,), steps)
    elif case.lengths == "long-tail":
        u = torch.rand(case.batch, generator=generator, dtype=torch.float64)
        lengths = (steps * u ** 3).ceil().long().clamp(1, steps)
    else:
        raise ValueError(f"lengths must be one of {LENGTH_DISTRIBUTIONS}, got {case.lengths!r}")
    lengths[torch.randint(case.batch, (1,), generator=generator)] = steps
    return lengths


@dataclass
class Batch:
    """A padded batch: x [B, T, I] (zeros past each length), lengths on x's
    device and on the CPU (what pack_padded_sequence wants), class labels."""
    x: torch.Tensor
    lengths: torch.Tensor
    lengths_cpu: torch.Tensor
    labels: torch.Tensor


def make_batch(case, dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = make_lengths(case, generator)
    x = torch.randn(case.batch, case.seq_len, case.input_size, generator=generator)
    x[torch.arange(case.seq_len)[None, :] >= lengths[:, None]] = 0
    labels = torch.randint(NUM_CLASSES, (case.batch,), generator=generator)
    return Batch(x.to(device=device, dtype=dtype), lengths.to(device), lengths,
                 labels.to(device))
