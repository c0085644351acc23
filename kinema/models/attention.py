"""The one attention entry point: every model calls :func:`attention`, so a faster kernel, a
sequence-parallel wrapper or a KV cache is added in one place."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention (softmax scale ``head_dim ** -0.5``).

    Args:
        q: (B, H, Sq, D) queries.
        k: (B, H, Sk, D) keys.
        v: (B, H, Sk, Dv) values.
        mask: None, or broadcastable to (B, H, Sq, Sk): bool (True = may attend) or an additive
            float bias in q's dtype.

    Returns:
        (B, H, Sq, Dv), in q's dtype.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Sq, Dv)
