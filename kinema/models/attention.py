"""The one attention entry point: every model calls :func:`attention`, so a faster kernel, a
sequence-parallel wrapper or a KV cache is added in one place."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention (softmax scale ``head_dim ** -0.5``), with grouped-query
    attention when keys and values have fewer heads than the queries.

    Args:
        q: (B, H, Sq, D) queries.
        k: (B, Hkv, Sk, D) keys; Hkv divides H, and query head h reads key/value head
            ``h // (H / Hkv)`` (the convention of Llama's ``repeat_kv`` and SDPA's ``enable_gqa``).
        v: (B, Hkv, Sk, Dv) values.
        mask: None, or broadcastable to (B, H, Sq, Sk): bool (True = may attend) or an additive
            float bias in q's dtype.

    Returns:
        (B, H, Sq, Dv), in q's dtype.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads == kv_heads:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Sq, Dv)
    if heads % kv_heads:
        raise ValueError(f"grouped-query attention needs the key/value heads ({kv_heads}) to divide the query heads ({heads})")
    # The G = H / Hkv query heads sharing a key/value head become G times more queries of that head:
    # no copy of the keys and values, and any SDPA kernel that takes a mask takes this.
    g, sq = heads // kv_heads, q.shape[2]
    q = rearrange(q, "b (hk g) s d -> b hk (g s) d", g=g)  # (B, Hkv, G*Sq, D)
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))  # (b, h, sq, Sk), each axis full or 1
        mb, mh, msq, sk = mask.shape
        if mh == 1 and msq > 1:  # one mask for all heads: tile it over the G query groups
            mask = mask.expand(mb, 1, sq, sk).repeat(1, 1, g, 1)  # (b, 1, G*Sq, Sk)
        elif mh > 1:  # a mask per query head
            mask = rearrange(mask.expand(mb, heads, sq, sk), "b (hk g) s k -> b hk (g s) k", g=g)  # (b, Hkv, G*Sq, Sk)
        # else (b, 1, 1, Sk) broadcasts over the grouped queries as it is
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, Hkv, G*Sq, Dv)
    return rearrange(out, "b hk (g s) d -> b (hk g) s d", g=g)  # (B, H, Sq, Dv)
