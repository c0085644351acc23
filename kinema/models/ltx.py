"""LTX-Video diffusion transformer: kinema's Spectro-2B architecture (text- and image-to-video).

The architecture of ``Lightricks/LTX-Video`` ``Transformer3DModel`` as released (diffusers:
``LTXVideoTransformer3DModel``). Parameter names follow :mod:`kinema.models.wan`; diffusers
checkpoints and the original single-file releases load through :mod:`kinema.checkpoints.ltx`. Numerics follow diffusers (float32 results agree to
float rounding). In reduced precision the residual stream, the time path, the modulation and the
norms stay float32; only the linear layers and attention run in the weights' dtype.

Layout: the patch size is 1, so every latent voxel of a (B, 128, F, H, W) latent is a token,
flattened frame-major. Each block is an RMSNorm + adaLN-modulated self-attention with RoPE over
fractional (t, h, w) positions (rotating the full width, across heads), a cross-attention to the
text without a norm before it (padded text tokens masked by an additive bias), and an RMSNorm +
modulated GELU feed-forward. Timesteps may be given per token: image-to-video gives the tokens of
the conditioning frame timestep 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import KinemaError
from ..schema import POSITIVE, check_ints, check_numbers
from .attention import attention
from .layers import (
    RMSNorm,
    layer_norm_fp32,
    mlp,
    modulate,
    randn_parameter,
    rms_norm_fp32,
    timestep_embedding,
)
from .rope import apply_rope

ROPE_THETA = 10000.0  # RoPE base (original ``positional_embedding_theta``; fixed in diffusers)
ROPE_BASE_POSITIONS = (20, 2048, 2048)  # (t, h, w) positions are divided by these (original ``positional_embedding_max_pos``)
TIME_FREQ_DIM = 256  # width of the sinusoidal timestep embedding (PixArt-alpha ``AdaLayerNormSingle``)
QK_NORM_EPS = 1e-5  # eps of the q/k RMSNorms (hard-coded in both the original and diffusers)
OUT_NORM_EPS = 1e-6  # eps of the final LayerNorm (hard-coded, independent of ``eps``)
MASK_BIAS = -10000.0  # logit bias of padded text tokens: both implementations turn the 0/1 mask into (1 - mask) * -10000
FFN_MULT = 4  # feed-forward width / model width in both external formats (their FeedForward's ``mult``)
TIMESTEP_SCALE = 1000  # the original multiplies its [0, 1] time by this (``timestep_scale_multiplier``); kinema takes [0, 1000]


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LTXTransformerConfig:
    dim: int  # model width (num_heads * head dim); also the text width inside the model
    ffn_dim: int  # hidden width of each block's feed-forward (4 * dim in both external formats)
    num_heads: int  # attention heads per layer
    num_layers: int  # transformer blocks
    in_dim: int = 128  # input latent channels (patch size 1: one token per latent voxel)
    out_dim: int = 128  # output (velocity) channels
    text_dim: int = 4096  # width of the text encoder states (T5-XXL), projected to dim by an MLP
    eps: float = 1e-6  # eps of the blocks' parameter-free RMSNorms

    def __post_init__(self) -> None:
        check_ints("LTX transformer", self, ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim"))
        check_numbers("LTX transformer", self, {"eps": POSITIVE})
        if self.dim % self.num_heads:
            raise KinemaError(f"LTX dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})")
        if self.dim % 2:
            raise KinemaError(f"LTX dim must be even for RoPE (it rotates the full width); got {self.dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


# Presets: one line each, derived from the LTX-Video defaults of LTXTransformerConfig.
LTX_PRESETS: dict[str, Callable[[], LTXTransformerConfig]] = {
    "spectro-2b": lambda: LTXTransformerConfig(dim=2048, ffn_dim=8192, num_heads=32, num_layers=28),
}


# ------------------------------------------------------------------------------------------------
# Positions
# ------------------------------------------------------------------------------------------------
def ltx_rope_scale(frame_rate: float, temporal_compression: int, spatial_compression: int) -> tuple[float, float, float]:
    """The ``rope_scale`` of a latent decoded at ``frame_rate``: latent index -> (seconds, pixels, pixels).

    What diffusers' LTX pipelines pass as ``rope_interpolation_scale``. LTX-Video's VAE compresses
    8 frames (temporal) and 32 pixels (spatial) into one latent voxel.
    """
    return temporal_compression / frame_rate, spatial_compression, spatial_compression


def ltx_positions(grid: tuple[int, int, int], rope_scale: tuple[float, float, float], device=None) -> torch.Tensor:
    """Fractional RoPE positions of a latent token grid: ``index * scale / ROPE_BASE_POSITIONS``.

    Args:
        grid: (F, H, W) latent size.
        rope_scale: (t, h, w) scale of each axis' index (see :func:`ltx_rope_scale`).

    Returns:
        (1, F*H*W, 3) float32, frame-major.
    """
    axes = [
        torch.arange(n, dtype=torch.float32, device=device) * s / base
        for n, s, base in zip(grid, rope_scale, ROPE_BASE_POSITIONS)
    ]  # 3 x (n,): the same float32 arithmetic as diffusers' grid * scale / base
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, 3)  # (1, N, 3)


def ltx_rope(positions: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of LTX's RoPE over the full model width.

    ``dim // 6`` frequencies ``theta^linspace(0, 1) * pi / 2`` per axis, applied to ``2 * p - 1``
    for each fractional position p; the angles are interleaved (t, h, w) per frequency, and the
    ``dim % 6`` leftover channels at the front are not rotated (angle 0), as in the original.

    Args:
        positions: (B, N, 3) fractional (t, h, w) positions.
        dim: rotated width (the model width; even).

    Returns:
        (cos, sin), each (B, N, dim/2) float32, one angle per interleaved channel pair.
    """
    freqs = ROPE_THETA ** torch.linspace(0.0, 1.0, dim // 6, dtype=torch.float32, device=positions.device)  # (K,)
    freqs = freqs * math.pi / 2.0  # (K,)
    angles = freqs * (positions.float().unsqueeze(-1) * 2 - 1)  # (B, N, 3, K)
    angles = rearrange(angles, "b n a k -> b n (k a)")  # (B, N, 3K): axes interleaved per frequency
    angles = F.pad(angles, ((dim % 6) // 2, 0))  # (B, N, dim/2): leading pairs rotate by 0
    return angles.cos(), angles.sin()


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------
class _QKNormAttention(nn.Module):
    """The projections of LTX-Video's attentions: q, k, v, o and RMSNorms of q and k over the full width."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, QK_NORM_EPS)
        self.norm_k = RMSNorm(dim, QK_NORM_EPS)


class LTXSelfAttention(_QKNormAttention):
    """Self-attention with q/k RMSNorm and RoPE, both over the full width (before the head split)."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, S, dim), cos/sin (B or 1, S, dim/2) -> (B, S, dim)."""
        q = apply_rope(self.norm_q(self.q(x)), cos, sin)  # (B, S, dim)
        k = apply_rope(self.norm_k(self.k(x)), cos, sin)  # (B, S, dim)
        q = rearrange(q, "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        k = rearrange(k, "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        v = rearrange(self.v(x), "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        out = attention(q, k, v)  # (B, H, S, D)
        return self.o(rearrange(out, "b h s d -> b s (h d)"))  # (B, S, dim)


class LTXCrossAttention(_QKNormAttention):
    """Cross-attention to the (projected) text tokens, with q/k RMSNorm over the full width."""

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, L, dim) -> keys and values, each (B, H, L, D); the same at every sampling step."""
        k = rearrange(self.norm_k(self.k(context)), "b l (h d) -> b h l d", h=self.num_heads)  # (B, H, L, D)
        v = rearrange(self.v(context), "b l (h d) -> b h l d", h=self.num_heads)  # (B, H, L, D)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
        """x (B, S, dim), kv from :meth:`project_context`, bias (B, 1, 1, L) or None -> (B, S, dim)."""
        q = rearrange(self.norm_q(self.q(x)), "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        out = attention(q, *kv, mask=bias)  # (B, H, S, D)
        return self.o(rearrange(out, "b h s d -> b s (h d)"))  # (B, S, dim)


@dataclass(frozen=True)
class LTXConditioning:
    """The text conditioning of a batch, projected once: per block, the cross-attention keys and
    values, and the attention bias of the padding.

    Made by :meth:`LTXTransformer.prepare_context` and passed to ``forward`` in place of the raw
    states, so that a sampling loop does not recompute them at every step (bit-identical result).
    """

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # one (k, v) per block, each (B, H, L, D)
    bias: torch.Tensor | None  # (B, 1, 1, L): 0 for text tokens, MASK_BIAS for padding; None: no padding

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]


class LTXBlock(nn.Module):
    """adaLN-modulated self-attention, cross-attention and feed-forward, on a float32 residual stream."""

    def __init__(self, config: LTXTransformerConfig) -> None:
        super().__init__()
        dim = config.dim
        self.eps = config.eps
        self.self_attn = LTXSelfAttention(dim, config.num_heads)
        self.cross_attn = LTXCrossAttention(dim, config.num_heads)
        self.ffn = mlp(dim, config.ffn_dim, dim, nn.GELU(approximate="tanh"))
        self.modulation = nn.Parameter(torch.randn(6, dim) / dim**0.5)  # per-block offsets of the shared time modulation

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        bias: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        """x (B, S, dim) float32, e (B, T, 6, dim) float32 with T = 1 or S, kv/bias (text), cos/sin (B or 1, S, dim/2)
        -> (B, S, dim) float32."""
        dtype = self.ffn[0].weight.dtype  # compute dtype of the linears
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.float() + e).unbind(2)  # 6 x (B, T, dim)
        h = modulate(rms_norm_fp32(x, self.eps), shift_sa, scale_sa).to(dtype)  # (B, S, dim)
        x = x + self.self_attn(h, cos, sin) * gate_sa  # (B, S, dim) float32
        x = x + self.cross_attn(x.to(dtype), kv, bias)  # (B, S, dim) float32
        h = modulate(rms_norm_fp32(x, self.eps), shift_ff, scale_ff).to(dtype)  # (B, S, dim)
        return x + self.ffn(h) * gate_ff  # (B, S, dim) float32


class LTXHead(nn.Module):
    """Final modulated LayerNorm and linear projection to latent channels."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.head = nn.Linear(dim, out_dim)
        self.modulation = randn_parameter(2, dim, divide_by=dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x (B, S, dim) float32, e (B, T, dim) float32 with T = 1 or S -> (B, S, out_dim)."""
        shift, scale = (self.modulation.float() + e.unsqueeze(2)).unbind(2)  # 2 x (B, T, dim)
        return self.head(modulate(layer_norm_fp32(x, OUT_NORM_EPS), shift, scale).to(self.head.weight.dtype))  # (B, S, out_dim)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
class LTXTransformer(nn.Module):
    """The LTX-Video denoiser: predicts the flow-matching velocity of a video latent."""

    def __init__(self, config: LTXTransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embedding = nn.Linear(c.in_dim, c.dim)
        self.text_embedding = mlp(c.text_dim, c.dim, c.dim, nn.GELU(approximate="tanh"))
        self.time_embedding = mlp(TIME_FREQ_DIM, c.dim, c.dim, nn.SiLU())
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(LTXBlock(c) for _ in range(c.num_layers))
        self.head = LTXHead(c.dim, c.out_dim)

    # Dotted prefixes of the modules whose weights stay float32 whatever the load dtype (read by
    # ``kinema.checkpoints.io.load_into``; ``*`` is one component): the patch embedding (tiny, and
    # the first op on the float32 stream), the time path and the modulation tables.
    _keep_in_fp32 = ("patch_embedding", "time_embedding", "time_projection", "head.modulation", "blocks.*.modulation")

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the linear layers and attention (the load dtype)."""
        return self.text_embedding[0].weight.dtype

    def num_parameters(self) -> int:
        """Number of parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    def prepare_context(self, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> LTXConditioning:
        """Embed and project the text once, for reuse at every sampling step.

        Args:
            context: (B, L, text_dim) text encoder states (T5-XXL), padded to a common L.
            context_mask: (B, L), 1 (or True) for real tokens and 0 for padding; None attends to all
                L tokens. Padding gets the logit bias ``(1 - mask) * MASK_BIAS``, exactly as the
                original and diffusers apply it.
        """
        if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise ValueError(f"context_mask has shape {tuple(context_mask.shape)}; expected (B, L) = {tuple(context.shape[:2])}")
        dtype = self.compute_dtype
        context = self.text_embedding(context.to(dtype))  # (B, L, dim)
        bias = None
        if context_mask is not None:
            bias = ((1 - context_mask.to(dtype)) * MASK_BIAS)[:, None, None, :]  # (B, 1, 1, L)
        return LTXConditioning(tuple(block.cross_attn.project_context(context) for block in self.blocks), bias)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor | LTXConditioning,
        context_mask: torch.Tensor | None = None,
        *,
        rope_scale: tuple[float, float, float] | None = None,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the velocity.

        Args:
            x: (B, in_dim, F, H, W) latents (unpacked; patch size 1).
            timestep: flow-matching time in [0, 1000], one per sample, () or (B,), or one per token,
                (B, F*H*W) frame-major or (B, F, H, W) (image-to-video: 0 on the conditioning
                frame's tokens, as diffusers' ``LTXImageToVideoPipeline`` passes ``t * (1 - mask)``).
            context: (B, L, text_dim) text encoder states, or an :class:`LTXConditioning` from
                :meth:`prepare_context` (then no context_mask here).
            context_mask: (B, L) 1 for text tokens, 0 for padding; None attends to all tokens.
            rope_scale: (t, h, w) scale from latent index to RoPE coordinate: diffusers'
                ``rope_interpolation_scale``, ``ltx_rope_scale(frame_rate, 8, 32)`` for LTX-Video's VAE.
            coords: instead of rope_scale, (B, 3, F*H*W) per-token (t, h, w) coordinates in the
                units of rope_scale (seconds, pixels, pixels): diffusers' ``video_coords``, as
                LTX-Video 0.9.5+'s condition pipeline and the original pipeline make them.

        Returns:
            (B, out_dim, F, H, W) velocity, in x's dtype.
        """
        c = self.config
        b, _, f, h, w = x.shape
        n = f * h * w
        if isinstance(context, LTXConditioning):
            if context_mask is not None:
                raise ValueError("pass context_mask to prepare_context, not with an LTXConditioning")
            cond = context
        else:
            cond = self.prepare_context(context, context_mask)
        if cond.batch_size != b:
            raise ValueError(f"conditioning has batch {cond.batch_size}, latents have {b}")

        # Positions: one table for the whole batch from rope_scale, or one per sample from coords.
        if (rope_scale is None) == (coords is None):
            raise ValueError("pass exactly one of rope_scale (e.g. ltx_rope_scale(frame_rate, 8, 32)) or coords")
        if coords is not None:
            if tuple(coords.shape) != (b, 3, n):
                raise ValueError(f"coords has shape {tuple(coords.shape)}; expected (B, 3, F*H*W) = {(b, 3, n)}")
            base = torch.tensor(ROPE_BASE_POSITIONS, dtype=torch.float32, device=x.device)  # (3,)
            positions = coords.float().transpose(1, 2) / base  # (B, N, 3)
        else:
            positions = ltx_positions((f, h, w), rope_scale, device=x.device)  # (1, N, 3)
        cos, sin = ltx_rope(positions, c.dim)  # (B or 1, N, dim/2) each

        # Time: sinusoid -> MLP -> 6 modulation vectors, all float32, per sample or per token.
        if timestep.numel() == 1:
            timestep = timestep.reshape(1).expand(b)  # (B,)
        if timestep.shape[0] != b or timestep.numel() not in (b, b * n):
            raise ValueError(
                f"timestep has shape {tuple(timestep.shape)}; expected (), (B,), (B, F*H*W) or (B, F, H, W) with B={b}"
            )
        t = timestep.reshape(b, -1)  # (B, T), T = 1 or N
        t_emb = timestep_embedding(t.flatten(), TIME_FREQ_DIM)  # (B*T, 256)
        e = self.time_embedding(t_emb.to(self.time_embedding[0].weight.dtype)).float()  # (B*T, dim)
        e6 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float()  # (B*T, 6*dim)
        e6 = e6.view(b, -1, 6, c.dim)  # (B, T, 6, dim)
        e = e.view(b, -1, c.dim)  # (B, T, dim)

        tokens = rearrange(x, "b c f h w -> b (f h w) c")  # (B, N, in_dim)
        tokens = self.patch_embedding(tokens.to(self.patch_embedding.weight.dtype)).float()  # (B, N, dim) float32 stream
        for block, kv in zip(self.blocks, cond.kv):
            tokens = block(tokens, e6, kv, cond.bias, cos, sin)  # (B, N, dim) float32

        out = self.head(tokens, e)  # (B, N, out_dim)
        out = rearrange(out, "b (f h w) c -> b c f h w", f=f, h=h, w=w)  # (B, out_dim, F, H, W)
        return out.to(x.dtype)

    @torch.no_grad()
    def init_weights(self, embedding_std: float = 0.02) -> None:
        """The original LTX-Video initialisation (``Transformer3DModel.initialize``, mode
        ``ltx_video``), for training from scratch (not called by ``__init__``): Xavier-uniform linears
        with zero biases, N(0, embedding_std) time and text embeddings, and zero attention outputs,
        feed-forward outputs and head, so every block starts as the identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # (the original re-initialises the text MLP's first linear twice, evidently meaning both)
        for linear in (self.time_embedding[0], self.time_embedding[2], self.time_projection[1], *self.text_embedding[::2]):
            nn.init.normal_(linear.weight, std=embedding_std)
        for block in self.blocks:
            for linear in (block.self_attn.o, block.cross_attn.o, block.ffn[2]):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.head.head.weight)
        nn.init.zeros_(self.head.head.bias)
