"""Small building blocks shared by the model families: norms, MLPs, timestep embedding, modulation.

Each block keeps the parameter names of the usual checkpoint layouts (``weight``/``bias``; MLPs are
``nn.Sequential`` so their linears are ``.0``/``.2``), so a model built from them loads real
checkpoints with plain key maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------------
# Norms
# ------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis, with an optional learned scale.

    Computed by ``F.rms_norm`` (reduction in float32 for reduced-precision inputs); the output has
    the input's dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)  # (..., dim)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input and weight dtypes; returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)  # (..., dim)


def layer_norm_fp32(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free LayerNorm over the last axis, in float32 (returns float32)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)  # (..., dim)


def rms_norm_fp32(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free RMSNorm over the last axis, in float32 (returns float32)."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps)  # (..., dim)


# ------------------------------------------------------------------------------------------------
# Parameters that are cheap to build on the meta device
# ------------------------------------------------------------------------------------------------
def randn_parameter(*shape: int, divide_by: float) -> nn.Parameter:
    """A parameter of standard-normal values divided by ``divide_by``: ``torch.randn(*shape) / divide_by``.

    On the meta device (models built before their weights load) nothing is drawn or computed:
    ``randn`` and arithmetic on meta tensors go through torch's Python references, whose first use
    imports torch._dynamo and sympy, most of a second of every model load. On a real device the
    values are bit-for-bit that quotient.
    """
    if torch.empty(0).is_meta:  # under `with torch.device("meta")`
        return nn.Parameter(torch.empty(*shape))
    return nn.Parameter(torch.randn(*shape) / divide_by)


def zero_embedding(num: int, dim: int) -> nn.Embedding:
    """An embedding table of zeros, for models whose weights come from a checkpoint or an
    ``init_weights``: ``nn.Embedding``'s own ``normal_`` init would, on the meta device, import
    torch._dynamo (see :func:`randn_parameter`)."""
    return nn.Embedding.from_pretrained(torch.zeros(num, dim), freeze=False)


def randn_embedding(num: int, dim: int) -> nn.Embedding:
    """An embedding table drawn like ``nn.Embedding``'s own init, N(0, 1), but by ``torch.randn``
    rather than ``normal_``, so that on the meta device it imports no torch._dynamo (see
    :func:`randn_parameter`)."""
    return nn.Embedding(num, dim, _weight=torch.randn(num, dim))


# ------------------------------------------------------------------------------------------------
# Feed-forwards
# ------------------------------------------------------------------------------------------------
def mlp(in_dim: int, hidden_dim: int, out_dim: int, activation: nn.Module) -> nn.Sequential:
    """``Linear -> activation -> Linear`` as a Sequential, so the linears are named ``0`` and ``2``."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), activation, nn.Linear(hidden_dim, out_dim))


# ------------------------------------------------------------------------------------------------
# Conditioning
# ------------------------------------------------------------------------------------------------
def timestep_embedding(
    t: torch.Tensor,
    dim: int,
    max_period: float = 10000.0,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, in float32.

    Frequencies ``exp(-ln(max_period) * i / (dim/2 - downscale_freq_shift))`` for ``i < dim/2``, the
    same float32 arithmetic as diffusers' ``get_timestep_embedding`` (so results match it exactly).

    Args:
        t: (N,) timesteps.
        dim: embedding width (even).
        max_period: the longest period.
        flip_sin_to_cos: order ``[cos, sin]`` (True; Wan, DiT) or ``[sin, cos]``.
        downscale_freq_shift: 0 (Wan, DiT) or 1 (DDPM/SD).

    Returns:
        (N, dim) float32.
    """
    if dim % 2:
        raise ValueError(f"timestep embedding width must be even; got {dim}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)  # (half,)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))  # (half,)
    args = t[:, None].float() * freqs[None, :]  # (N, half)
    first, second = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    return torch.cat([first, second], dim=-1)  # (N, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` (shift and scale broadcast over tokens)."""
    return x * (1 + scale) + shift
