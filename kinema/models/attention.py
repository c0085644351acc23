"""The one attention entry point: every model calls :func:`attention`, so a faster kernel, a
sequence-parallel wrapper or a KV cache is added in one place.

The seam for code outside ``models/``: :func:`attention_override` puts another implementation in
place of :func:`sdpa_attention` for the calls made inside a ``with`` block (a context variable:
per thread and per asyncio task, nothing global). Sequence parallelism
(:mod:`kinema.parallel.attention`) sets it around the self-attention modules it distributes; with
none set, :func:`attention` is :func:`sdpa_attention`, bit for bit.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from einops import rearrange

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]  # (q, k, v, mask) -> out

_OVERRIDE: ContextVar[AttentionFn | None] = ContextVar("kinema_attention_override", default=None)


@contextlib.contextmanager
def attention_override(fn: AttentionFn | None) -> Iterator[None]:
    """Inside the block, :func:`attention` calls ``fn(q, k, v, mask)`` (same shapes and meaning
    as :func:`sdpa_attention`) instead; None restores the plain kernel. Nests; restored on exit,
    even on error."""
    token = _OVERRIDE.set(fn)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`sdpa_attention`, or the implementation an enclosing :func:`attention_override` set."""
    fn = _OVERRIDE.get()
    if fn is not None:
        return fn(q, k, v, mask)
    return sdpa_attention(q, k, v, mask)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
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
