"""Self-attention over a token sequence split across processes: Ulysses, ring attention, and the two
combined (USP, as xDiT's ``xFuserLongContextAttention`` arranges them).

The sequence (padded to a multiple of the group size P) is cut in P equal contiguous chunks: the
rank at sequence index s holds tokens ``[s * C, (s + 1) * C)``, C = S_padded / P, of q, k and v.

- **Ulysses** (DeepSpeed-Ulysses): an all-to-all turns (B, H, C, D) into (B, H/u, u*C, D), each
  rank then attends over the whole sequence for H/u of the heads, and a second all-to-all turns
  the result back. Needs the group's size u to divide the heads (and the key/value heads).
- **Ring attention**: each rank keeps its queries; the key/value chunks travel round the ring (P2P
  ``batch_isend_irecv``, overlapped with the compute); every chunk's partial result is merged by
  its log-sum-exp in float32 (the online softmax):
  ``lse = logaddexp(lse_a, lse_b)``, ``out = out_a exp(lse_a - lse) + out_b exp(lse_b - lse)``.
- **USP**: the P ranks of a sequence group as a (ring r) x (ulysses u) grid, u * r = P: the
  all-to-all runs inside groups of u consecutive ranks, which then hold u consecutive chunks (one
  contiguous block of u*C tokens), and the ring runs across those groups over such blocks.

Padding keys (positions >= the real length S) are cut off the key blocks before attending, so
the result equals single-process attention over the S real tokens; the padded query rows give
values nobody reads (the caller drops them). Queries, keys and values are (B, H, C, D) chunks as
:func:`kinema.models.attention.sdpa_attention` takes them, with the same softmax scale.

Built on ``torch.distributed``'s own collectives (all_to_all_single, P2P), not on xDiT/xfuser or
yunchang (neither is installed here). Inference only: no gradients flow through the collectives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from einops import rearrange

from ..errors import KinemaError
from ..models.attention import sdpa_attention


@dataclass(frozen=True)
class SequenceMesh:
    """This rank's place in a sequence-parallel group of ``ulysses * ring`` ranks (made by
    :func:`kinema.parallel.plan.parallelize`). Sequence index ``s = ring_index * ulysses + ulysses_index``."""

    ulysses: int  # ranks of the all-to-all group (consecutive ranks)
    ring: int  # ranks of the ring (one per ulysses group)
    index: int  # this rank's sequence index s: it holds token chunk s
    ulysses_group: dist.ProcessGroup | None  # None when ulysses == 1
    ring_group: dist.ProcessGroup | None  # None when ring == 1
    ring_ranks: tuple[int, ...]  # global ranks of this rank's ring, in ring order
    sequence_group: dist.ProcessGroup | None  # all P ranks (gathering the tokens back); None when P == 1

    @property
    def size(self) -> int:
        return self.ulysses * self.ring

    @property
    def ring_index(self) -> int:
        return self.index // self.ulysses


# ------------------------------------------------------------------------------------------------
# Ulysses: all-to-all between heads and tokens
# ------------------------------------------------------------------------------------------------
def heads_to_tokens(x: torch.Tensor, u: int, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, H, C, D) chunk of all heads -> (B, H/u, u*C, D): this rank's heads over the group's u chunks."""
    send = rearrange(x, "b (u h) c d -> u b h c d", u=u).contiguous()  # piece i goes to group rank i
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i]: group rank i's chunk of this rank's heads
    return rearrange(recv, "u b h c d -> b h (u c) d")  # (B, H/u, u*C, D)


def tokens_to_heads(x: torch.Tensor, u: int, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, H/u, u*C, D) -> (B, H, C, D): the inverse of :func:`heads_to_tokens`."""
    send = rearrange(x, "b h (u c) d -> u b h c d", u=u).contiguous()  # chunk i goes back to group rank i
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i]: head group i of this rank's chunk
    return rearrange(recv, "u b h c d -> b (u h) c d")  # (B, H, C, D)


# ------------------------------------------------------------------------------------------------
# One block of keys: output and log-sum-exp
# ------------------------------------------------------------------------------------------------
def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q over one block of keys, with each row's log-sum-exp of the scaled
    logits (what merging blocks needs).

    Args:
        q: (B, H, Lq, D); k: (B, Hkv, Lk, D); v: (B, Hkv, Lk, Dv); Hkv divides H (grouped queries
            read key/value head ``h // (H / Hkv)``, as :func:`~kinema.models.attention.sdpa_attention`).

    Returns:
        (out (B, H, Lq, Dv) in q's dtype or float32, lse (B, H, Lq) float32).

    The fused kernels that report the log-sum-exp (PyTorch's CPU flash kernel; CUDA's flash kernel
    in half precision, its memory-efficient kernel in float32) run when they take the inputs, else
    the same maths in plain float32 (the same result to rounding).
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"grouped-query attention needs the key/value heads ({kv_heads}) to divide the query heads ({heads})")
    g = heads // kv_heads
    if g > 1:  # the G query heads sharing a key/value head as G times more queries of it
        q = rearrange(q, "b (hk g) s d -> b hk (g s) d", g=g)  # (B, Hkv, G*Lq, D)
    out, lse = _fused_with_lse(q, k, v)
    if g > 1:
        out = rearrange(out, "b hk (g s) d -> b (hk g) s d", g=g)  # (B, H, Lq, Dv)
        lse = rearrange(lse, "b hk (g s) -> b (hk g) s", g=g)  # (B, H, Lq)
    return out, lse.float()


def _fused_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    lq = q.shape[2]
    try:
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
            return out, lse
        if q.device.type == "cuda":
            if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] == v.shape[-1]:
                res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)
                return res[0], res[1]
            res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)
            return res[0], res[1][..., :lq]  # its log-sum-exp rows may be padded past Lq
    except (RuntimeError, NotImplementedError):
        pass  # a kernel that does not take these inputs (head size, dtype, alignment): the plain maths below
    return _plain_with_lse(q, k, v)


def _plain_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference maths in float32: (out (B, H, Lq, Dv), lse (B, H, Lq))."""
    logits = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * q.shape[-1] ** -0.5  # (B, H, Lq, Lk)
    lse = torch.logsumexp(logits, dim=-1)  # (B, H, Lq)
    out = torch.einsum("bhqk,bhkd->bhqd", torch.exp(logits - lse[..., None]), v.float())  # (B, H, Lq, Dv)
    return out, lse


# ------------------------------------------------------------------------------------------------
# Ring attention
# ------------------------------------------------------------------------------------------------
def merge_blocks(out: torch.Tensor, lse: torch.Tensor, o: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the keys of two blocks from each block's own: outputs (B, H, L, Dv) and
    log-sum-exps (B, H, L), weighted by their share of the softmax mass, in float32."""
    merged = torch.logaddexp(lse, l)  # (B, H, L)
    out = out.float() * torch.exp(lse - merged)[..., None] + o.float() * torch.exp(l - merged)[..., None]
    return out, merged


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mesh: SequenceMesh, length: int) -> torch.Tensor:
    """Attention of this rank's block of queries over all the ring's key blocks.

    Args:
        q: (B, H, L, D), k: (B, Hkv, L, D), v: (B, Hkv, L, Dv): this rank's block, tokens
            ``[i * L, (i + 1) * L)`` of the padded sequence, i = ``mesh.ring_index``.
        length: real tokens S; keys at positions >= S are padding and take no part.

    Returns:
        (B, H, L, Dv) in q's dtype.
    """
    r, me, block = mesh.ring, mesh.ring_index, q.shape[2]
    send_to, recv_from = mesh.ring_ranks[(me + 1) % r], mesh.ring_ranks[(me - 1) % r]
    out = lse = None
    k_cur, v_cur = k.contiguous(), v.contiguous()
    for step in range(r):
        pending = []
        if step < r - 1:  # pass the block on while this one is computed
            k_next, v_next = torch.empty_like(k_cur), torch.empty_like(v_cur)
            ops = [
                dist.P2POp(dist.isend, k_cur, send_to, mesh.ring_group),
                dist.P2POp(dist.isend, v_cur, send_to, mesh.ring_group),
                dist.P2POp(dist.irecv, k_next, recv_from, mesh.ring_group),
                dist.P2POp(dist.irecv, v_next, recv_from, mesh.ring_group),
            ]
            pending = dist.batch_isend_irecv(ops)
        source = (me - step) % r  # the block held now: tokens [source * L, (source + 1) * L)
        real = min(block, length - source * block)  # its keys that are not padding
        if real > 0:
            o, l = attention_with_lse(q, k_cur[:, :, :real], v_cur[:, :, :real])  # (B, H, L, Dv), (B, H, L)
            out, lse = (o.float(), l) if out is None else merge_blocks(out, lse, o, l)
        for work in pending:
            work.wait()
        if step < r - 1:
            k_cur, v_cur = k_next, v_next
    return out.to(q.dtype)  # block 0 always holds a real key, so every rank merged at least one block


# ------------------------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------------------------
def sequence_parallel_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, mesh: SequenceMesh, length: int
) -> torch.Tensor:
    """Self-attention of this rank's chunk of the sequence (USP: Ulysses inside, ring across).

    Args:
        q: (B, H, C, D), k: (B, Hkv, C, D), v: (B, Hkv, C, Dv): chunk ``mesh.index`` of the padded
            sequence of P * C tokens.
        mask: must be None: no family's self-attention over video tokens uses one.
        length: real tokens S (<= P * C); the padding keys take no part.

    Returns:
        (B, H, C, Dv) in q's dtype: this chunk's rows of the attention over all S tokens.
    """
    if mask is not None:
        raise KinemaError("sequence-parallel attention takes no mask (no family's self-attention over video tokens uses one)")
    u = mesh.ulysses
    if u > 1:
        if q.shape[1] % u or k.shape[1] % u:
            raise KinemaError(f"Ulysses over {u} ranks needs the heads ({q.shape[1]}) and key/value heads ({k.shape[1]}) divisible by {u}")
        q, k, v = (heads_to_tokens(t, u, mesh.ulysses_group) for t in (q, k, v))  # (B, H/u, u*C, D) each
    if mesh.ring > 1:
        out = ring_attention(q, k, v, mesh, length)  # (B, H/u, u*C, Dv)
    else:  # the whole padded sequence is here: cut the padding keys off
        out = sdpa_attention(q, k[:, :, :length], v[:, :, :length])  # (B, H/u, P*C, Dv)
    if u > 1:
        out = tokens_to_heads(out, u, mesh.ulysses_group)  # (B, H, C, Dv)
    return out
