"""Rotary position embeddings (RoPE), 1D and 3D, as real cos/sin tables.

Convention: the head dimension is rotated in interleaved pairs ``(x[2i], x[2i+1])`` (as in the
original Wan, Flux and diffusers' ``repeat_interleave_real=True``). Tables hold one angle per pair,
shape (S, D/2). Angles are computed in float64 and rounded to float32 once, exactly like diffusers'
``get_1d_rotary_pos_embed(..., freqs_dtype=torch.float64)``, so the numerics match it bit for bit.
The tables are small and are built on the fly (once per forward, shared by all blocks): no buffers,
so a model built on the meta device needs nothing rebuilt.
"""

from __future__ import annotations

import torch


def rope_1d(
    n: int, dim: int, theta: float = 10000.0, device: torch.device | str | None = None, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the RoPE angles ``p * theta^(-2i/dim)`` for positions ``start <= p < start + n``.

    Args:
        n: number of positions (start .. start+n-1).
        dim: rotated width (even); gives dim/2 frequencies.
        theta: base of the frequencies.
        device: where the returned tables go (computed in float64 on the CPU first).
        start: the first position; rows equal those of a table from 0, bit for bit (a slice of a
            longer table without building it).

    Returns:
        (cos, sin), each (n, dim/2) float32.
    """
    if dim % 2:
        raise ValueError(f"RoPE width must be even; got {dim}")
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # (dim/2,)
    angles = torch.outer(torch.arange(start, start + n, dtype=torch.float64), freqs)  # (n, dim/2)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def rope_3d(
    grid: tuple[int, int, int],
    dims: tuple[int, int, int],
    theta: float = 10000.0,
    device: torch.device | str | None = None,
    start: tuple[int, int, int] = (0, 0, 0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for a (frames, height, width) token grid, flattened frame-major.

    The head dimension is split into three parts of widths ``dims`` (t, h, w); each part rotates
    by its own axis' position.

    Args:
        grid: (F, H, W) tokens along each axis.
        dims: rotated widths for the t, h and w axes (each even; they sum to the head dim).
        theta: base of the frequencies.
        device: where the tables go.
        start: (t, h, w) position of the grid's first token (a window of a larger grid, e.g.
            the frames after the first ``start[0]``); equal, bit for bit, to slicing a table from 0.

    Returns:
        (cos, sin), each (F*H*W, sum(dims)/2) float32.
    """
    f, h, w = grid
    tables = [rope_1d(n, d, theta, device, s) for n, d, s in zip(grid, dims, start)]  # 3 x ((n, d/2), (n, d/2))
    out = []
    for which in (0, 1):  # cos, then sin
        ft, ht, wt = (t[which] for t in tables)
        full = torch.cat(
            [
                ft[:, None, None, :].expand(f, h, w, -1),  # (F, H, W, dt/2)
                ht[None, :, None, :].expand(f, h, w, -1),  # (F, H, W, dh/2)
                wt[None, None, :, :].expand(f, h, w, -1),  # (F, H, W, dw/2)
            ],
            dim=-1,
        )  # (F, H, W, D/2)
        out.append(full.reshape(f * h * w, -1))  # (S, D/2)
    return out[0], out[1]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x``'s last axis by the angles whose cos/sin are given.

    Computed in float32 (the tables' dtype) and returned in ``x``'s dtype, as diffusers does.

    Args:
        x: (..., S, D) queries or keys.
        cos, sin: (S, D/2) tables (or anything broadcastable to (..., S, D/2)).

    Returns:
        (..., S, D), x's dtype.
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (..., S, D/2) each: even and odd elements
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (..., S, D/2, 2), promoted to float32
    return out.flatten(-2).to(x.dtype)  # (..., S, D)


def wan_rope_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of the head dimension over (t, h, w): h = w = 2 * (head_dim // 6), t takes the rest
    (128 -> 44/42/42), as in the original ``rope_params`` and diffusers' ``WanRotaryPosEmbed``."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw
