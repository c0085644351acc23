"""Wan 2.1 diffusion transformer (text-to-video and image-to-video).

The architecture of ``Wan-Video/Wan2.1`` ``wan/modules/model.py`` (``WanModel``), with its parameter
names, so the original safetensors load with an identity key map; diffusers checkpoints load
through :data:`kinema.checkpoints.wan_transformer_keys.DIFFUSERS_KEYS`. Numerics follow diffusers'
``WanTransformer3DModel`` (float32 results agree to float rounding). In reduced precision the
residual stream, the time path, the modulation and the norms stay float32, as in the original
model; only the linear layers and attention run in the weights' dtype.

Layout: tokens are (frames x height x width) patches flattened frame-major; each block is
adaLN-modulated self-attention with 3D RoPE, cross-attention to the text (plus CLIP image tokens
for i2v), and a GELU feed-forward.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..checkpoints.io import build_on_meta, load_into, load_sharded_safetensors, load_weights, read_json
from ..checkpoints.wan_transformer_keys import DIFFUSERS_IGNORED_KEYS, DIFFUSERS_KEYS, ORIGINAL_KEYS
from ..errors import CheckpointError, KinemaError
from .attention import attention
from .layers import FP32LayerNorm, RMSNorm, layer_norm_fp32, mlp, modulate, randn_parameter, timestep_embedding
from .rope import apply_rope, rope_3d, wan_rope_dims

ROPE_THETA = 10000.0  # RoPE base of Wan 2.1 (original ``rope_params``)
WAN_HEAD_DIM = 128  # head width of every released Wan 2.1 model; used only to infer a config from weights
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
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3:
            raise KinemaError(f"Wan patch_size must have 3 entries (t, h, w); got {self.patch_size}")
        if self.dim % self.num_heads:
            raise KinemaError(f"Wan dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})")
        if (self.dim // self.num_heads) % 2:
            raise KinemaError(f"Wan head dim must be even for RoPE; got {self.dim // self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    # -- diffusers config.json -----------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "WanTransformerConfig":
        """From a diffusers ``WanTransformer3DModel`` config.json (missing fields take diffusers'
        defaults); fields or values kinema does not implement raise :class:`CheckpointError`."""
        name = config.get("_class_name", _DIFFUSERS_CLASS)
        if name != _DIFFUSERS_CLASS:
            raise CheckpointError(f"expected a diffusers {_DIFFUSERS_CLASS} config; got _class_name {name!r}")
        _reject_unknown(config, _DIFFUSERS_DEFAULTS, "diffusers Wan transformer")
        c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
        if c["pos_embed_seq_len"] is not None:
            raise CheckpointError(
                f"diffusers Wan config has pos_embed_seq_len={c['pos_embed_seq_len']} (first-last-frame "
                "model), which kinema does not support; use a Wan 2.1 t2v or i2v checkpoint"
            )
        if c["qk_norm"] != _DIFFUSERS_QK_NORM:
            raise CheckpointError(
                f"diffusers Wan config has qk_norm={c['qk_norm']!r}; kinema supports only {_DIFFUSERS_QK_NORM!r} "
                "(diffusers applies that norm whatever this field says)"
            )
        dim = c["num_attention_heads"] * c["attention_head_dim"]
        if (c["image_dim"] is None) != (c["added_kv_proj_dim"] is None) or c["added_kv_proj_dim"] not in (None, dim):
            raise CheckpointError(
                f"diffusers Wan config has image_dim={c['image_dim']} and added_kv_proj_dim={c['added_kv_proj_dim']}; "
                f"kinema supports both None (t2v) or image_dim set with added_kv_proj_dim == {dim} (i2v)"
            )
        return cls(
            dim=dim,
            ffn_dim=c["ffn_dim"],
            num_heads=c["num_attention_heads"],
            num_layers=c["num_layers"],
            patch_size=tuple(c["patch_size"]),
            in_dim=c["in_channels"],
            out_dim=c["out_channels"] or c["in_channels"],
            freq_dim=c["freq_dim"],
            text_dim=c["text_dim"],
            eps=c["eps"],
            cross_attn_norm=bool(c["cross_attn_norm"]),
            qk_norm=True,
            image_dim=c["image_dim"],
            rope_max_seq_len=c["rope_max_seq_len"],
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers ``WanTransformer3DModel`` config.json for this config."""
        if not self.qk_norm:
            raise CheckpointError("diffusers' WanTransformer3DModel always applies q/k norms; qk_norm=False has no such form")
        if self.text_len != 512:
            raise CheckpointError(f"diffusers' WanTransformer3DModel hard-codes 512 text tokens; text_len is {self.text_len}")
        return {
            "_class_name": _DIFFUSERS_CLASS,
            "patch_size": list(self.patch_size),
            "num_attention_heads": self.num_heads,
            "attention_head_dim": self.head_dim,
            "in_channels": self.in_dim,
            "out_channels": self.out_dim,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "cross_attn_norm": self.cross_attn_norm,
            "qk_norm": _DIFFUSERS_QK_NORM,
            "eps": self.eps,
            "image_dim": self.image_dim,
            "added_kv_proj_dim": self.dim if self.image_dim is not None else None,
            "rope_max_seq_len": self.rope_max_seq_len,
            "pos_embed_seq_len": None,
        }

    # -- original Wan config.json --------------------------------------------------------------
    @classmethod
    def from_original(cls, config: Mapping[str, Any]) -> "WanTransformerConfig":
        """From an original Wan 2.1 ``WanModel`` config.json (missing fields take ``WanModel``'s
        defaults); unsupported model types or values raise :class:`CheckpointError`."""
        _reject_unknown(config, _ORIGINAL_DEFAULTS, "original Wan transformer")
        c = {**_ORIGINAL_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
        if c["model_type"] not in ("t2v", "i2v"):
            raise CheckpointError(
                f"original Wan config has model_type {c['model_type']!r}; kinema supports 't2v' and 'i2v'"
            )
        if tuple(c["window_size"]) != (-1, -1):
            raise CheckpointError(
                f"original Wan config has window_size={c['window_size']}; kinema supports only global attention (-1, -1)"
            )
        return cls(
            dim=c["dim"],
            ffn_dim=c["ffn_dim"],
            num_heads=c["num_heads"],
            num_layers=c["num_layers"],
            patch_size=tuple(c["patch_size"]),
            in_dim=c["in_dim"],
            out_dim=c["out_dim"],
            freq_dim=c["freq_dim"],
            text_dim=c["text_dim"],
            eps=c["eps"],
            cross_attn_norm=bool(c["cross_attn_norm"]),
            qk_norm=bool(c["qk_norm"]),
            image_dim=WAN_CLIP_DIM if c["model_type"] == "i2v" else None,
            text_len=c["text_len"],
        )

    def to_original(self) -> dict[str, Any]:
        """The original Wan ``WanModel`` config.json for this config."""
        if self.image_dim not in (None, WAN_CLIP_DIM):
            raise CheckpointError(f"the original Wan i2v model hard-codes image_dim {WAN_CLIP_DIM}; got {self.image_dim}")
        if self.rope_max_seq_len != 1024:
            raise CheckpointError(f"the original Wan model hard-codes rope_max_seq_len 1024; got {self.rope_max_seq_len}")
        return {
            "_class_name": "WanModel",
            "model_type": "t2v" if self.image_dim is None else "i2v",
            "patch_size": list(self.patch_size),
            "text_len": self.text_len,
            "in_dim": self.in_dim,
            "dim": self.dim,
            "ffn_dim": self.ffn_dim,
            "freq_dim": self.freq_dim,
            "text_dim": self.text_dim,
            "out_dim": self.out_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "window_size": [-1, -1],
            "qk_norm": self.qk_norm,
            "cross_attn_norm": self.cross_attn_norm,
            "eps": self.eps,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "WanTransformerConfig":
        """Infer the config from kinema-named weights (for a single file without a config.json).

        Everything is read from tensor shapes except the head count, which shapes cannot give:
        it assumes Wan's head width of 128 (true for all released Wan 2.1 models).
        """
        try:
            patch = state["patch_embedding.weight"]  # (dim, in_dim, pt, ph, pw)
            dim, in_dim, patch_size = patch.shape[0], patch.shape[1], tuple(patch.shape[2:])
            num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
            image = state.get("img_emb.proj.0.weight")
            return cls(
                dim=dim,
                ffn_dim=state["blocks.0.ffn.0.weight"].shape[0],
                num_heads=dim // WAN_HEAD_DIM,
                num_layers=num_layers,
                patch_size=patch_size,
                in_dim=in_dim,
                out_dim=state["head.head.weight"].shape[0] // math.prod(patch_size),
                freq_dim=state["time_embedding.0.weight"].shape[1],
                text_dim=state["text_embedding.0.weight"].shape[1],
                cross_attn_norm="blocks.0.norm3.weight" in state,
                qk_norm="blocks.0.self_attn.norm_q.weight" in state,
                image_dim=None if image is None else image.shape[0],
            )
        except (KeyError, ValueError, IndexError) as e:
            raise CheckpointError(
                f"cannot infer a Wan transformer config from these weights (missing {e}); put its config.json beside them"
            ) from None


_DIFFUSERS_CLASS = "WanTransformer3DModel"
_DIFFUSERS_QK_NORM = "rms_norm_across_heads"
# diffusers WanTransformer3DModel.__init__ defaults (diffusers 0.42), used for fields a config.json omits.
_DIFFUSERS_DEFAULTS: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True, qk_norm=_DIFFUSERS_QK_NORM,
    eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None,
)  # fmt: skip
# original WanModel.__init__ defaults (Wan-Video/Wan2.1 wan/modules/model.py); its config.json
# omits patch_size, cross_attn_norm, qk_norm, text_dim and window_size (``ignore_for_config``).
_ORIGINAL_DEFAULTS: dict[str, Any] = dict(
    model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=2048, ffn_dim=8192, freq_dim=256,
    text_dim=4096, out_dim=16, num_heads=16, num_layers=32, window_size=(-1, -1), qk_norm=True,
    cross_attn_norm=True, eps=1e-6,
)  # fmt: skip


def _reject_unknown(config: Mapping[str, Any], known: Mapping[str, Any], what: str) -> None:
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise CheckpointError(f"{what} config has fields kinema does not implement: {', '.join(unknown)}")


# Presets: one line each, derived from the shared Wan 2.1 defaults of WanTransformerConfig.
WAN_PRESETS: dict[str, Callable[[], WanTransformerConfig]] = {
    "wan2.1-t2v-1.3b": lambda: WanTransformerConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": lambda: WanTransformerConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
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
        """x (B, S, dim) float32, e (B, 6, dim) float32, kv (cross-attention keys/values), cos/sin (S, D/2) -> (B, S, dim) float32."""
        dtype = self.ffn[0].weight.dtype  # compute dtype of the linears
        mod = (self.modulation.float() + e).chunk(6, dim=1)  # 6 x (B, 1, dim)
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
        """x (B, S, dim) float32, e (B, dim) float32 -> (B, S, out_features)."""
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).chunk(2, dim=1)  # 2 x (B, 1, dim)
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
            timestep: (B,) or () flow-matching time in [0, 1000].
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

        # Time: sinusoid -> MLP -> 6 modulation vectors, all float32.
        timestep = timestep.expand(b) if timestep.ndim == 0 else timestep  # (B,)
        t_emb = timestep_embedding(timestep, c.freq_dim)  # (B, freq_dim)
        e = self.time_embedding(t_emb.to(self.time_embedding[0].weight.dtype)).float()  # (B, dim)
        e6 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float()  # (B, 6*dim)
        e6 = e6.unflatten(1, (6, c.dim))  # (B, 6, dim)

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


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
WEIGHTS_STEM = "diffusion_pytorch_model"  # weights file stem in both the diffusers and the original layout
_PREFIXES = ("model.diffusion_model.",)  # prefixes of repackaged single-file checkpoints (ComfyUI)


def load_wan_transformer(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> WanTransformer:
    """Load a Wan 2.1 transformer from a diffusers or an original checkpoint.

    Args:
        path: one of
            - a diffusers ``transformer/`` directory (config.json with ``_class_name``
              ``WanTransformer3DModel`` and ``diffusion_pytorch_model*.safetensors``), or a diffusers
              pipeline directory holding one;
            - an original Wan 2.1 directory (config.json with ``model_type`` and
              ``diffusion_pytorch_model*.safetensors`` with the original keys);
            - a single weights file (original or diffusers keys, optionally prefixed with
              ``model.diffusion_model.``), with the config read from a Wan config.json beside it or,
              failing that, inferred from the weights.
        dtype: cast floating-point weights to this dtype (None keeps the file's); the modules in
            ``WanTransformer._keep_in_fp32`` stay float32.
        device: where the weights go (None: stay memory-mapped on the CPU).

    Returns:
        The model in eval mode.
    """
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        path = path / "transformer"  # a diffusers pipeline directory
    if path.is_dir():
        raw_config: dict | None = read_json(path / "config.json")
        state = load_sharded_safetensors(path, WEIGHTS_STEM)
    elif path.is_file():
        sibling = path.parent / "config.json"
        raw_config = read_json(sibling) if sibling.is_file() else None
        if raw_config is not None and not _is_wan_config(raw_config):
            raw_config = None
        state = load_weights(path)
    else:
        raise CheckpointError(f"Wan transformer checkpoint not found: {path}")

    state = _strip_prefixes(state)
    if _is_diffusers_state(state):
        state = DIFFUSERS_KEYS.to_ours({k: v for k, v in state.items() if DIFFUSERS_IGNORED_KEYS.our_key(k) is None})
    else:
        state = ORIGINAL_KEYS.to_ours(state)

    if raw_config is None:
        config = WanTransformerConfig.from_state_dict(state)
    elif raw_config.get("_class_name") == _DIFFUSERS_CLASS:
        config = WanTransformerConfig.from_diffusers(raw_config)
    elif _is_wan_config(raw_config):
        config = WanTransformerConfig.from_original(raw_config)
    else:
        raise CheckpointError(f"{path / 'config.json'} is neither a diffusers {_DIFFUSERS_CLASS} nor an original Wan config")

    model = build_on_meta(lambda: WanTransformer(config))
    return load_into(model, state, dtype=dtype, device=device, what="Wan transformer").eval()


def _is_wan_config(raw: Mapping[str, Any]) -> bool:
    return raw.get("_class_name") in (_DIFFUSERS_CLASS, "WanModel") or "model_type" in raw


def _is_diffusers_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("condition_embedder.") for k in state)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state
