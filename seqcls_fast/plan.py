"""sf.LengthPlan: a batch's lengths validated and sorted once, for every
layer, direction, pass and the pooling to share (what ``batch_sizes`` is to a
PackedSequence).

``sf.LSTM``, ``sf.MaskedAttentionPooling`` and ``sf.LSTMClassifier`` accept a
plan wherever they accept ``lengths``; given raw lengths they make one plan per
call. Making it is the only place lengths are validated and sorted.

Lengths on a GPU are planned on the GPU, with no host copy and no
synchronization: the persistent CUDA recurrence reads the plan there. A length
outside [1, T] is then caught by an asynchronous device assertion (as PyTorch
catches a bad index on a GPU): the error surfaces at the next synchronization,
and no kernel after it runs. Pass lengths on the CPU for an immediate error.
The per-step CUDA path (shapes outside the persistent rule) copies a GPU
plan to the host once per batch.
"""
import torch

from ._ops import ops


class LengthPlan:
    """``plan = sf.LengthPlan(lengths, steps)``: lengths ``[B]`` (any integer
    dtype, any device; a list works) for a padded batch of ``steps`` time steps
    (``batch``: B, checked, default the size of lengths; ``device``: the
    input's, where lengths may be besides the CPU, default wherever they are).

    ``plan.lengths`` is the lengths tensor as given, ``plan.steps`` the padded
    length T, ``plan.table`` the ``[3, B]`` int64 tensor the operators read
    (sorted order, sorted lengths, lengths in caller order): on the CPU for
    lengths on the CPU, on the GPU for lengths there.
    """

    def __init__(self, lengths, steps, batch=None, device=None):
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(lengths)
        if batch is None:
            batch = lengths.shape[0] if lengths.dim() > 0 else 1
        self.lengths = lengths
        self.steps = steps  # an int, or a symbolic size under torch.export / compile
        self.table = ops.length_plan(lengths, steps, batch, device)

    @property
    def batch_size(self):
        return self.table.shape[1]

    def __repr__(self):
        return f"LengthPlan(batch_size={self.batch_size}, steps={self.steps})"

    @classmethod
    def of(cls, lengths, steps, batch, device, where):
        """``lengths`` as a plan for a padded batch [B, T] on ``device``: a
        LengthPlan is checked against T and B and returned as is, raw lengths
        (on the CPU or on ``device``) are planned; None stays None. ``where``
        names the caller in errors."""
        if lengths is None:
            return None
        if isinstance(lengths, LengthPlan):
            if (lengths.steps, lengths.batch_size) != (steps, batch):
                raise ValueError(f"{where}: the LengthPlan was made for (T, B) = "
                                 f"({lengths.steps}, {lengths.batch_size}), the input has "
                                 f"({steps}, {batch})")
            return lengths
        return cls(lengths, steps, batch, device)
