"""Training-time augmentation of variable-length sequences, applied per
sequence as batches are collated: a random time stretch (the sequence
resampled, by linear interpolation, to a length ``exp(u)`` times its own, u
uniform in [-stretch, stretch]; variable lengths make this free for the
model) and a random per-channel gain (1 + scale * N(0, 1)). Small sets (tens
of sequences) overfit without it. Its own generator, seeded per run, makes a
run repeatable bit for bit.
"""
import math

import torch
from torch.nn import functional as F

from seqcls_fast.data import collate


class AugmentingCollate:
    """A DataLoader ``collate_fn``: each ``(sequence [T, C], label)`` item
    stretched and scaled, then :func:`seqcls_fast.data.collate`."""

    def __init__(self, stretch, scale, seed):
        if stretch < 0 or scale < 0:
            raise ValueError(f"stretch and scale must be >= 0, got {stretch} and {scale}")
        self.stretch, self.scale = float(stretch), float(scale)
        self.generator = torch.Generator().manual_seed(int(seed))

    def augment(self, sequence):
        """One sequence [T, C] -> its augmented copy [T', C]."""
        if self.stretch > 0 and sequence.size(0) > 1:
            u = (torch.rand((), generator=self.generator, dtype=torch.float64) * 2 - 1)
            steps = max(2, int(round(sequence.size(0) * math.exp(self.stretch * float(u)))))
            sequence = F.interpolate(sequence.t()[None], size=steps, mode="linear",
                                     align_corners=True)[0].t()
        if self.scale > 0:
            gain = 1 + self.scale * torch.randn(1, sequence.size(1), generator=self.generator)
            sequence = sequence * gain.to(sequence.dtype)
        return sequence.contiguous()

    def __call__(self, items):
        return collate([(self.augment(x), y) for x, y in items])
