"""sf.MaskedAttentionPooling: attention over the valid steps of a padded batch."""
import torch

from ._ops import masked_attention_pool
from .layout import AttentionPoolingParameters
from .plan import LengthPlan


class MaskedAttentionPooling(AttentionPoolingParameters):
    """``pooled, weights = pool(outputs, lengths)``.

    outputs ``[B, T, D]`` (any strides), lengths ``[B]``, an ``sf.LengthPlan``
    or None (all T).
    Scores ``s_t = q . k_t`` with ``k_t = h_t`` (``attn_dim=None``) or
    ``k_t = tanh(W h_t + b)`` (additive attention, ``W: [attn_dim, D]``); a
    softmax over ``t < length`` only; ``pooled = sum_t alpha_t h_t``.
    Returns pooled ``[B, D]`` and weights ``[B, T]``, 0 at padding.
    """

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
