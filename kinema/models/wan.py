"""Wan 2.1 diffusion transformer (text-to-video and image-to-video).

The architecture of ``Wan-Video/Wan2.1`` ``wan/modules/model.py`` (``WanModel``), with its parameter
names, so the original safetensors load with an identity key map; diffusers checkpoints load
through :data:`kinema.checkpoints.wan.DIFFUSERS_KEYS` (the loaders and config forms live there). Numerics follow diffusers'
``WanTransformer3DModel`` (float32 results agree to float rounding). In reduced precision the
residual stream, the time path, the modulation and the norms stay float32, as in the original
model; only the linear layers and attention run in the weights' dtype.

Layout: tokens are (frames x height x width) patches flattened frame-major; each block is
adaLN-modulated self-attention with 3D RoPE, cross-attention to the text (plus CLIP image tokens
for i2v), and a GELU feed-forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import KinemaError
from ..schema import POSITIVE, check_bools, check_ints, check_numbers, int_tuple
from .attention import attention
from .layers import (
    FP32LayerNorm,
    RMSNorm,
    layer_norm_fp32,
    mlp,
    modulate,
    randn_parameter,
    timestep_embedding,
)
from .rope import apply_rope, rope_3d, wan_rope_dims

ROPE_THETA = 10000.0  # RoPE base of Wan 2.1 (original ``rope_params``)
WAN_CLIP_DIM = 1280  # CLIP ViT-H/14 feature width that the original i2v ``MLPProj(1280, dim)`` hard-codes
CLIP_NORM_EPS = 1e-5  # eps of the image MLP's LayerNorms (torch default in both the original and diffusers)


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WanTransformerConfig:
    dim: int  # model width (num_heads * head dim)
    ffn_dim: int  # hidden width of each block's feed-forward
    num_heads: int  # attention heads per layer
    num_layers: int  # transformer blocks
    patch_size: tuple[int, int, int] = (1, 2, 2)  # latent voxels (t, h, w) per token
    in_dim: int = 16  # input latent channels (36 for i2v: 16 noisy + 4 mask + 16 image latents)
    out_dim: int = 16  # output (velocity) channels
    freq_dim: int = 256  # width of the sinusoidal timestep embedding
    text_dim: int = 4096  # width of the text encoder states (UMT5-XXL)
    eps: float = 1e-6  # eps of the LayerNorms and q/k RMSNorms
    cross_attn_norm: bool = True  # affine LayerNorm (``norm3``) before cross-attention
    qk_norm: bool = True  # RMSNorm over the full width of queries and keys
    image_dim: int | None = None  # CLIP image feature width for i2v (1280); None for t2v
    rope_max_seq_len: int = 1024  # the most tokens along any one axis (t, h or w)
    text_len: int = 512  # text tokens; shorter contexts are zero-padded to this, as in the original

    def __post_init__(self) -> None:
        owner = "Wan transformer"
        object.__setattr__(self, "patch_size", int_tuple(owner, "patch_size (t, h, w)", self.patch_size, length=3))
        check_ints(owner, self, ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim", "text_dim", "rope_max_seq_len", "text_len"))
        check_numbers(owner, self, {"eps": POSITIVE})
        check_bools(owner, self, ("cross_attn_norm", "qk_norm"))
        if self.image_dim is not None:
            check_ints(owner, self, ("image_dim",))
        if self.freq_dim % 2:
            raise KinemaError(f"Wan freq_dim must be even (a sinusoidal embedding); got {self.freq_dim}")
        if self.dim % self.num_heads:
            raise KinemaError(f"Wan dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})")
        if (self.dim // self.num_heads) % 2:
            raise KinemaError(f"Wan head dim must be even for RoPE; got {self.dim // self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


# Presets: one line each, derived from the shared Wan 2.1 defaults of WanTransformerConfig.
WAN_PRESETS: dict[str, Callable[[], WanTransformerConfig]] = {
    "wan2.1-t2v-1.3b": lambda: WanTransformerConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": lambda: WanTransformerConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}
# Image-to-video (the wan-i2v family): the 14B transformer with 36 input channels and the image branch.
WAN_I2V_PRESETS: dict[str, Callable[[], WanTransformerConfig]] = {
    "wan2.1-i2v-14b": lambda: replace(WAN_PRESETS["wan2.1-t2v-14b"](), in_dim=36, image_dim=WAN_CLIP_DIM),
}


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------
class WanSelfAttention(nn.Module):
    """Self-attention with q/k RMSNorm over the full width and 3D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, S, dim), cos/sin (S, head_dim/2) -> (B, S, dim)."""
        q = rearrange(self.norm_q(self.q(x)), "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        k = rearrange(self.norm_k(self.k(x)), "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        v = rearrange(self.v(x), "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        out = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)  # (B, H, S, D)
        return self.o(rearrange(out, "b h s d -> b s (h d)"))  # (B, S, dim)


# Cross-attention keys and values of the text tokens (and of the CLIP image tokens, or None).
CrossKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


@dataclass(frozen=True)
class WanConditioning:
    """The conditioning of a batch, projected once: per block, the cross-attention keys and values.

    Made by :meth:`WanTransformer.prepare_context` and passed to ``forward`` in place of the raw
    states, so that a sampling loop does not recompute the text embedding and 2 x num_layers
    key/value projections of 512 tokens at every step. The result is bit-identical.
    """

    kv: tuple[CrossKV, ...]  # one per block

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]


class WanCrossAttention(nn.Module):
    """Cross-attention to the text tokens; for i2v, plus a second attention to the CLIP image
    tokens (its own key/value projections), the two results summed before the output projection."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, image: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.k_img = nn.Linear(dim, dim) if image else None
        self.v_img = nn.Linear(dim, dim) if image else None
        self.norm_k_img = (RMSNorm(dim, eps) if qk_norm else nn.Identity()) if image else None

    def project_context(self, context: torch.Tensor, image_context: torch.Tensor | None = None) -> CrossKV:
        """Keys and values of the conditioning tokens, which stay the same over all sampling steps.

        context (B, L, dim), image_context (B, Li, dim) or None -> (k, v, k_img, v_img), each (B, H, L, D) or None.
        """
        k = rearrange(self.norm_k(self.k(context)), "b l (h d) -> b h l d", h=self.num_heads)  # (B, H, L, D)
        v = rearrange(self.v(context), "b l (h d) -> b h l d", h=self.num_heads)  # (B, H, L, D)
        if self.k_img is None:
            return k, v, None, None
        k_img = self.norm_k_img(self.k_img(image_context))  # (B, Li, dim)
        k_img = rearrange(k_img, "b l (h d) -> b h l d", h=self.num_heads)  # (B, H, Li, D)
        v_img = rearrange(self.v_img(image_context), "b l (h d) -> b h l d", h=self.num_heads)  # (B, H, Li, D)
        return k, v, k_img, v_img

    def forward(self, x: torch.Tensor, kv: CrossKV) -> torch.Tensor:
        """x (B, S, dim), kv from :meth:`project_context` -> (B, S, dim)."""
        k, v, k_img, v_img = kv
        q = rearrange(self.norm_q(self.q(x)), "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        out = attention(q, k, v)  # (B, H, S, D)
        if k_img is not None:
            out = out + attention(q, k_img, v_img)  # (B, H, S, D)
        return self.o(rearrange(out, "b h s d -> b s (h d)"))  # (B, S, dim)


class WanBlock(nn.Module):
    """adaLN-modulated self-attention, cross-attention and feed-forward, on a float32 residual stream."""

    def __init__(self, config: WanTransformerConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.eps = eps
        self.self_attn = WanSelfAttention(dim, config.num_heads, config.qk_norm, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, config.num_heads, config.qk_norm, eps, image=config.image_dim is not None)
        self.ffn = mlp(dim, config.ffn_dim, dim, nn.GELU(approximate="tanh"))
        self.modulation = randn_parameter(1, 6, dim, divide_by=dim**0.5)  # per-block offsets of the shared time modulation

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        kv: CrossKV,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        """x (B, S, dim) float32, e (B, 1, 6, dim) float32 (one time for every token) or (B, S, 6, dim)
        (a time per token), kv (cross-attention keys/values), cos/sin (S, D/2) -> (B, S, dim) float32."""
        dtype = getattr(self.ffn[0], "compute_dtype", None) or self.ffn[0].weight.dtype  # compute dtype of the linears (a quantised layer says its own)
        mod = (self.modulation.float().unsqueeze(1) + e).unbind(dim=2)  # 6 x (B, 1 or S, dim)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod
        h = modulate(layer_norm_fp32(x, self.eps), shift_sa, scale_sa).to(dtype)  # (B, S, dim)
        x = x + self.self_attn(h, cos, sin) * gate_sa  # (B, S, dim) float32
        x = x + self.cross_attn(self.norm3(x).to(dtype), kv)  # (B, S, dim) float32
        h = modulate(layer_norm_fp32(x, self.eps), shift_ff, scale_ff).to(dtype)  # (B, S, dim)
        return x + self.ffn(h) * gate_ff  # (B, S, dim) float32


class WanHead(nn.Module):
    """Final modulated LayerNorm and linear projection to patch values."""

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.head = nn.Linear(dim, out_features)
        self.modulation = randn_parameter(1, 2, dim, divide_by=dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x (B, S, dim) float32, e (B, 1, dim) or (B, S, dim) float32 (a time per token) -> (B, S, out_features)."""
        shift, scale = (self.modulation.float().unsqueeze(1) + e.unsqueeze(2)).unbind(dim=2)  # 2 x (B, 1 or S, dim)
        return self.head(modulate(layer_norm_fp32(x, self.eps), shift, scale).to(self.head.weight.dtype))  # (B, S, out)


class WanImageEmbedding(nn.Module):
    """MLP from CLIP image features to model width (original ``MLPProj``)."""

    def __init__(self, image_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            FP32LayerNorm(image_dim, CLIP_NORM_EPS),
            nn.Linear(image_dim, image_dim),
            nn.GELU(),
            nn.Linear(image_dim, dim),
            FP32LayerNorm(dim, CLIP_NORM_EPS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Li, image_dim) -> (B, Li, dim)."""
        return self.proj(x)  # (B, Li, dim)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
class WanTransformer(nn.Module):
    """The Wan 2.1 denoiser: predicts the flow-matching velocity of a video latent.

    Parameter names are the original Wan 2.1 names (see the module docstring).
    """

    def __init__(self, config: WanTransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = mlp(c.text_dim, c.dim, c.dim, nn.GELU(approximate="tanh"))
        self.time_embedding = mlp(c.freq_dim, c.dim, c.dim, nn.SiLU())
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(WanBlock(c) for _ in range(c.num_layers))
        self.head = WanHead(c.dim, c.out_dim * math.prod(c.patch_size), c.eps)
        self.img_emb = WanImageEmbedding(c.image_dim, c.dim) if c.image_dim is not None else None

    # Dotted prefixes of the modules whose weights stay float32 whatever the load dtype (read by
    # ``kinema.checkpoints.io.load_into``; ``*`` is one component): the patch embedding (tiny, and
    # the first op on the float32 stream), the time path, the modulation tables and the norms.
    _keep_in_fp32 = (
        "patch_embedding", "time_embedding", "time_projection", "head.modulation", "img_emb.proj.0", "img_emb.proj.4",
        "blocks.*.modulation", "blocks.*.norm3",
    )  # fmt: skip

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the linear layers and attention (the load dtype)."""
        return self.text_embedding[0].weight.dtype

    def num_parameters(self) -> int:
        """Number of parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    def prepare_context(self, context: torch.Tensor, image_context: torch.Tensor | None = None) -> WanConditioning:
        """Embed and project the conditioning once, for reuse at every sampling step.

        Args:
            context: (B, L, text_dim) text states, L <= text_len; zero-padded to text_len (as the
                original model does; padding changes the result, so pass unpadded or zero-padded
                states, not states of pad tokens).
            image_context: (B, 257, image_dim) CLIP image features for i2v; None for t2v.
        """
        c = self.config
        if (image_context is None) != (self.img_emb is None):
            need = "needs image_context (CLIP features)" if self.img_emb is not None else "takes no image_context (t2v)"
            raise ValueError(f"this Wan transformer {need}")
        if context.shape[1] > c.text_len:
            raise ValueError(f"context has {context.shape[1]} tokens; the model takes at most text_len={c.text_len}")
        dtype = self.compute_dtype
        if context.shape[1] < c.text_len:
            context = F.pad(context, (0, 0, 0, c.text_len - context.shape[1]))  # (B, text_len, text_dim)
        context = self.text_embedding(context.to(dtype))  # (B, text_len, dim)
        if self.img_emb is not None:
            image_context = self.img_emb(image_context.to(dtype))  # (B, 257, dim)
        return WanConditioning(tuple(block.cross_attn.project_context(context, image_context) for block in self.blocks))

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor | WanConditioning,
        image_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the velocity.

        Args:
            x: (B, in_dim, F, H, W) latents; for i2v the mask and image latents are already
                concatenated on the channel axis. F, H, W must be multiples of patch_size.
            timestep: (B,) or () flow-matching time in [0, 1000]; or (B, F / patch_t), a time per
                latent frame (as diffusion-forcing models and Wan 2.2's TI2V take it per token):
                a video's given past frames clean or nearly so while the rest is noisier. Only a
                model trained with such times (``objective.past_share``) makes sense of them.
            context: (B, L, text_dim) text encoder states, L <= text_len; zero-padded to text_len
                (as the original model does; padding changes the result, so pass unpadded or
                zero-padded states, not states of pad tokens).
                Or a :class:`WanConditioning` from :meth:`prepare_context` (then no image_context).
            image_context: (B, 257, image_dim) CLIP image features for i2v; None for t2v.

        Returns:
            (B, out_dim, F, H, W) velocity, in x's dtype.
        """
        c = self.config
        b, _, f, h, w = x.shape
        pt, ph, pw = c.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent size (F, H, W) = {(f, h, w)} must be a multiple of the patch size {c.patch_size}")
        grid = (f // pt, h // ph, w // pw)
        if max(grid) > c.rope_max_seq_len:
            raise ValueError(f"token grid {grid} exceeds rope_max_seq_len {c.rope_max_seq_len} along an axis")
        cond = context if isinstance(context, WanConditioning) else self.prepare_context(context, image_context)
        if cond.batch_size != b:
            raise ValueError(f"conditioning has batch {cond.batch_size}, latents have {b}")

        # Patchify: the Conv3d with stride == kernel as one float32 matmul over flattened patches.
        patches = rearrange(x, "b c (f pf) (h ph) (w pw) -> b (f h w) (c pf ph pw)", pf=pt, ph=ph, pw=pw)  # (B, S, C*pt*ph*pw)
        weight = self.patch_embedding.weight.flatten(1).float()  # (dim, C*pt*ph*pw)
        tokens = F.linear(patches.float(), weight, self.patch_embedding.bias.float())  # (B, S, dim) float32 stream

        # Time: sinusoid -> MLP -> 6 modulation vectors, all float32; one set for all tokens, or per token.
        timestep = timestep.expand(b) if timestep.ndim == 0 else timestep  # (B,) or (B, F/pt)
        if timestep.ndim == 2 and timestep.shape != (b, grid[0]):
            raise ValueError(f"a time per frame must be (batch, latent frames / patch_t) = {(b, grid[0])}; got {tuple(timestep.shape)}")
        t = timestep.reshape(b, -1)  # (B, 1) or (B, F/pt)
        t_emb = timestep_embedding(t.flatten(), c.freq_dim)  # (B*T, freq_dim)
        e = self.time_embedding(t_emb.to(self.time_embedding[0].weight.dtype)).float()  # (B*T, dim)
        e6 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float()  # (B*T, 6*dim)
        e, e6 = e.unflatten(0, t.shape), e6.unflatten(0, t.shape).unflatten(2, (6, c.dim))  # (B, T, dim), (B, T, 6, dim)
        if timestep.ndim == 2:  # each latent frame's time, computed once per frame, then repeated over its tokens
            e, e6 = (v.repeat_interleave(grid[1] * grid[2], dim=1) for v in (e, e6))  # (B, S, dim), (B, S, 6, dim)

        cos, sin = rope_3d(grid, wan_rope_dims(c.head_dim), ROPE_THETA, device=x.device)  # (S, D/2) each
        for block, kv in zip(self.blocks, cond.kv):
            tokens = block(tokens, e6, kv, cos, sin)  # (B, S, dim) float32

        out = self.head(tokens, e)  # (B, S, pt*ph*pw*out_dim)
        out = rearrange(
            out, "b (f h w) (pf ph pw c) -> b c (f pf) (h ph) (w pw)", f=grid[0], h=grid[1], w=grid[2], pf=pt, ph=ph, pw=pw
        )  # (B, out_dim, F, H, W)
        return out.to(x.dtype)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The original Wan initialisation, for training from scratch (not called by ``__init__``):
        Xavier-uniform linears with zero biases, N(0, 0.02) text and time embeddings, zero head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(self.config.dim, -1))
        for m in (*self.text_embedding, *self.time_embedding):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
