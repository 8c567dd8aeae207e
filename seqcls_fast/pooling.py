"""sf.MaskedAttentionPooling: attention over the valid steps of a padded batch."""
import math

import torch
from torch import nn

from ._ops import masked_attention_pool
from .plan import LengthPlan


class MaskedAttentionPooling(nn.Module):
    """``pooled, weights = pool(outputs, lengths)``.

    outputs ``[B, T, D]`` (any strides), lengths ``[B]``, an ``sf.LengthPlan``
    or None (all T).
    Scores ``s_t = q . k_t`` with ``k_t = h_t`` (``attn_dim=None``) or
    ``k_t = tanh(W h_t + b)`` (additive attention, ``W: [attn_dim, D]``); a
    softmax over ``t < length`` only; ``pooled = sum_t alpha_t h_t``.
    Returns pooled ``[B, D]`` and weights ``[B, T]``, 0 at padding.
    """

    def __init__(self, hidden_size, attn_dim=None, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.hidden_size = hidden_size
        self.attn_dim = attn_dim
        self.proj = nn.Linear(hidden_size, attn_dim, **factory) if attn_dim else None
        key_size = attn_dim or hidden_size
        self.query = nn.Parameter(torch.empty(key_size, **factory))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.query, std=1.0 / math.sqrt(self.query.numel()))
        if self.proj is not None:
            self.proj.reset_parameters()

    def extra_repr(self):
        return f"hidden_size={self.hidden_size}, attn_dim={self.attn_dim}"

    def forward(self, outputs, lengths=None):
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 3:
            shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs)
            raise ValueError(f"MaskedAttentionPooling: outputs must have shape [B, T, D], got {shape}")
        if outputs.size(2) != self.hidden_size:
            raise ValueError(f"MaskedAttentionPooling: outputs must have D = hidden_size = "
                             f"{self.hidden_size} features, got {outputs.size(2)}")
        plan = LengthPlan.of(lengths, outputs.size(1), outputs.size(0), outputs.device,
                             "MaskedAttentionPooling")
        keys = torch.tanh(self.proj(outputs)) if self.proj is not None else None
        return masked_attention_pool(outputs, keys, self.query, None,
                                     plan.table if plan is not None else None)
