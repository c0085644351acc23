"""The TTV-1B design: a diffusion transformer on pixels, with a text encoder trained with it.

No VAE: the denoiser takes the noisy video itself, (B, 3, F, H, W) in [-1, 1] units, cuts it into
3D patches (a Conv3d with stride = kernel = ``patch_size``, (2, 16, 16) for TTV-1B), and predicts
the DDPM noise (or ``v``, or ``x0``: the noise process decides what the output means) per pixel.

- Text: kinema's :class:`TextTower` (token and learned position embeddings, pre-LayerNorm
  transformer layers, bidirectional attention over the prompt's real tokens, a final LayerNorm)
  lives inside the model as ``text_encoder``, so it trains with the denoiser and its weights sit
  in the same file. The prompt's vector is the mean of its states over its real tokens (rows of
  zeros, the padding, do not count), projected ``text_dim -> dim`` by ``text_proj``.
- Conditioning: a sinusoidal timestep embedding of width ``freq_dim`` -> Linear(freq_dim, 4 dim)
  -> SiLU -> Linear(4 dim, dim), plus the projected text vector: one vector c per clip, which
  modulates every block (adaLN-zero: SiLU -> Linear(dim, 6 dim) gives shift, scale and gate of the
  attention and of the feed-forward) and the final layer (shift and scale).
- Positions: a learned embedding of the spatial patch grid at ``base_size`` (16 x 16 patches for
  256-pixel frames with 16-pixel patches), added to every frame's tokens; time positions are rotary
  embeddings over the whole head inside attention (each frame group's index). Another frame size
  uses the table resized bilinearly to its patch grid (``F.interpolate``, ``align_corners=False``,
  as ViTs are fine-tuned at new resolutions): sizes are multiples of the spatial patch, frames of
  the temporal patch, and any count of frame groups works because RoPE has no table.

Blocks attend over all F/2 x H/16 x W/16 tokens at once (full spatio-temporal attention). In
reduced precision the residual stream, the time and text projections, the modulation and the
position table stay float32; the linear layers and attention run in the weights' dtype.
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
from ..schema import POSITIVE, check_ints, check_numbers, int_tuple
from .attention import attention
from .layers import (
    layer_norm_fp32,
    mlp,
    modulate,
    randn_parameter,
    timestep_embedding,
    zero_embedding,
)
from .rope import apply_rope, rope_1d

ROPE_THETA = 10000.0  # base of the time axis' rotary frequencies


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelDiTConfig:
    # the denoiser
    dim: int = 1536  # model width (num_heads * head dim)
    num_heads: int = 24  # attention heads
    num_layers: int = 24  # DiT blocks
    ffn_dim: int = 6144  # hidden width of each block's GELU feed-forward (4 x dim)
    patch_size: tuple[int, int, int] = (2, 16, 16)  # pixels (t, h, w) per token
    in_channels: int = 3  # RGB
    base_size: int = 256  # frame side (pixels) whose patch grid the learned position table holds
    freq_dim: int = 1536  # width of the sinusoidal timestep embedding
    eps: float = 1e-6  # eps of the (parameter-free) LayerNorms of the blocks and the final layer
    # the text encoder
    vocab_size: int = 50257  # byte-level BPE ids (GPT-2's vocabulary size)
    text_len: int = 256  # text positions (the learned position table)
    text_dim: int = 768  # text encoder width
    text_heads: int = 12
    text_layers: int = 6
    text_ffn_dim: int = 3072
    text_eps: float = 1e-5  # eps of the text encoder's LayerNorms (GPT-2's)

    def __post_init__(self) -> None:
        owner = "pixel DiT"
        object.__setattr__(self, "patch_size", int_tuple(owner, "patch_size (t, h, w)", self.patch_size, length=3))
        check_ints(owner, self, ("dim", "num_heads", "num_layers", "ffn_dim", "in_channels", "base_size", "freq_dim",
                                 "vocab_size", "text_len", "text_dim", "text_heads", "text_layers", "text_ffn_dim"))  # fmt: skip
        check_numbers(owner, self, {"eps": POSITIVE, "text_eps": POSITIVE})
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise KinemaError(f"pixel DiT dim ({self.dim}) must be num_heads ({self.num_heads}) times an even head width")
        if self.text_dim % self.text_heads:
            raise KinemaError(f"pixel DiT text_dim ({self.text_dim}) must be a multiple of text_heads ({self.text_heads})")
        if self.freq_dim % 2:
            raise KinemaError(f"pixel DiT freq_dim must be even (a sinusoidal embedding); got {self.freq_dim}")
        if self.base_size % self.patch_size[1] or self.base_size % self.patch_size[2]:
            raise KinemaError(f"pixel DiT base_size ({self.base_size}) must be a multiple of the spatial patch {self.patch_size[1:]}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def base_grid(self) -> tuple[int, int]:
        """The patch grid (h, w) of a ``base_size`` frame: the learned position table's shape."""
        return self.base_size // self.patch_size[1], self.base_size // self.patch_size[2]

    @property
    def out_features(self) -> int:
        """Values each token predicts: one patch of every channel."""
        return self.in_channels * math.prod(self.patch_size)


PIXEL_DIT_PRESETS: dict[str, Callable[[], PixelDiTConfig]] = {
    # The published TTV-1B: 24 blocks of 1536 (24 heads x 64), patches (2, 16, 16) of 256x256x16 clips,
    # a 6-layer 768-d text encoder over 50,257 BPE ids (see docs/models.md for its parameter table).
    "ttv-1b": lambda: PixelDiTConfig(),
    # Shapes world (configs/shapes-pixel.yaml): 64x64 clips of 8 frames, patches (2, 8, 8), a 2-layer
    # 128-d text encoder over a byte-level BPE trained on the shapes captions.
    "ttv-shapes": lambda: PixelDiTConfig(
        dim=256, num_heads=4, num_layers=6, ffn_dim=1024, patch_size=(2, 8, 8), base_size=64, freq_dim=256,
        vocab_size=512, text_len=32, text_dim=128, text_heads=2, text_layers=2, text_ffn_dim=512,
    ),
    # Tests: non-square patches, one block.
    "ttv-tiny": lambda: PixelDiTConfig(
        dim=32, num_heads=2, num_layers=2, ffn_dim=64, patch_size=(2, 4, 2), base_size=16, freq_dim=16,
        vocab_size=300, text_len=16, text_dim=16, text_heads=2, text_layers=1, text_ffn_dim=32,
    ),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The text encoder
# ------------------------------------------------------------------------------------------------
class TextLayer(nn.Module):
    """Pre-LayerNorm transformer layer: bidirectional self-attention, then a GELU feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = mlp(dim, ffn_dim, dim, nn.GELU(approximate="tanh"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D); mask (B, 1, 1, L) bool, True where a key is a real token."""
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        x = x + self.proj(rearrange(attention(q, k, v, mask), "b h l d -> b l (h d)"))
        return x + self.mlp(self.norm2(x))


class TextTower(nn.Module):
    """Token ids -> token states: embeddings, ``text_layers`` layers, a final LayerNorm.

    ``forward(ids (B, L), mask (B, L) bool)`` gives (B, L, text_dim) with zeros at padding
    positions (mask False), so the states of one prompt do not depend on how far it was padded.
    """

    def __init__(self, c: PixelDiTConfig) -> None:
        super().__init__()
        self.config = c
        self.token_embedding = zero_embedding(c.vocab_size, c.text_dim)
        self.position_embedding = zero_embedding(c.text_len, c.text_dim)
        self.layers = nn.ModuleList(TextLayer(c.text_dim, c.text_heads, c.text_ffn_dim, c.text_eps) for _ in range(c.text_layers))
        self.norm = nn.LayerNorm(c.text_dim, eps=c.text_eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, n = ids.shape
        if n > c.text_len:
            raise ValueError(f"{n} text tokens; the text encoder takes at most text_len={c.text_len}")
        if ids.numel() and not ids.is_meta and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, {c.vocab_size}); got {int(ids.min())}..{int(ids.max())}")
        mask = mask.bool()
        x = self.token_embedding(ids) + self.position_embedding.weight[:n]  # (B, L, D)
        keys = mask[:, None, None, :]  # (B, 1, 1, L)
        for layer in self.layers:
            x = layer(x, keys)
        return self.norm(x) * mask[..., None].to(x.dtype)  # (B, L, D), zero at padding


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """The 2D sin-cos position table of MAE and DiT for an (h, w) grid, (h*w, dim) float32, rows in
    raster order: the first half of the channels encodes the row, the second the column, each as
    sines then cosines of the index at frequencies 1 / 10000^(i / (dim//4)), i < dim//4 (the last
    dim % 4 channels, if any, are zero)."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / max(1, quarter))  # (dim//4,)

    def axis(n: int) -> torch.Tensor:
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega  # (n, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim/2)

    rows, cols = axis(h), axis(w)
    table = torch.cat([rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)], dim=-1)  # (h, w, 4 * dim//4)
    return F.pad(table, (0, dim - 4 * quarter)).reshape(h * w, dim).float()


def pool_text(states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of each prompt's states over its real tokens (float32 (B, D)).

    Args:
        states: (B, L, D) token states, zero at padding.
        mask: (B, L), True (or 1) at real tokens; None: the rows that are not all zero.
    """
    states = states.float()
    if mask is None:
        mask = states.abs().amax(dim=-1) > 0  # (B, L)
    weights = mask.float()[..., None]  # (B, L, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D)


# ------------------------------------------------------------------------------------------------
# The denoiser
# ------------------------------------------------------------------------------------------------
class PixelDiTBlock(nn.Module):
    """adaLN-zero DiT block: modulated full self-attention with time RoPE, then a modulated GELU FFN."""

    def __init__(self, c: PixelDiTConfig) -> None:
        super().__init__()
        self.heads, self.eps = c.num_heads, c.eps
        self.qkv = nn.Linear(c.dim, 3 * c.dim)
        self.proj = nn.Linear(c.dim, c.dim)
        self.mlp = mlp(c.dim, c.ffn_dim, c.dim, nn.GELU(approximate="tanh"))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, S, dim) float32; c (B, dim) float32; cos/sin (S, head_dim/2)."""
        dtype = self.qkv.weight.dtype
        mods = self.modulation(c.to(self.modulation[1].weight.dtype)).float()[:, None]  # (B, 1, 6 dim)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods.chunk(6, dim=-1)  # each (B, 1, dim)
        h = modulate(layer_norm_fp32(x, self.eps), shift1, scale1).to(dtype)  # (B, S, dim)
        q, k, v = rearrange(self.qkv(h), "b s (three h d) -> three b h s d", three=3, h=self.heads)  # (B, H, S, D) each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        x = x + gate1 * self.proj(rearrange(attention(q, k, v), "b h s d -> b s (h d)")).float()
        h = modulate(layer_norm_fp32(x, self.eps), shift2, scale2).to(dtype)
        return x + gate2 * self.mlp(h).float()  # (B, S, dim) float32


class PixelDiT(nn.Module):
    """The TTV-1B denoiser with its text encoder (``text_encoder``): pixels in, pixels out."""

    def __init__(self, config: PixelDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.text_encoder = TextTower(c)
        self.text_proj = nn.Linear(c.text_dim, c.dim)
        self.patch_embedding = nn.Conv3d(c.in_channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.pos_embedding = randn_parameter(c.base_grid[0] * c.base_grid[1], c.dim, divide_by=50.0)  # (h*w, dim), N(0, 0.02)
        self.time_embedding = mlp(c.freq_dim, 4 * c.dim, c.dim, nn.SiLU())
        self.blocks = nn.ModuleList(PixelDiTBlock(c) for _ in range(c.num_layers))
        self.head_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 2 * c.dim))
        self.head = nn.Linear(c.dim, c.out_features)

    # Weights that stay float32 whatever the load dtype (kinema.checkpoints.io.load_into): the
    # patch embedding and position table (the first ops on the float32 stream), the time and text
    # projections, the modulation tables and the text encoder's embeddings and norms.
    _keep_in_fp32 = (
        "patch_embedding", "pos_embedding", "time_embedding", "text_proj", "blocks.*.modulation", "head_modulation",
        "text_encoder.token_embedding", "text_encoder.position_embedding", "text_encoder.norm", "text_encoder.layers.*.norm1",
        "text_encoder.layers.*.norm2",
    )  # fmt: skip

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the linear layers and attention (the load dtype)."""
        return self.blocks[0].qkv.weight.dtype if len(self.blocks) else self.head.weight.dtype

    def num_parameters(self) -> int:
        """Number of parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) and their mask -> (B, L, text_dim) states (zero at padding), the model's dtype."""
        return self.text_encoder(ids.to(self.text_encoder.token_embedding.weight.device), mask.to(ids.device))

    def prepare_context(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The text part of the conditioning: the prompt's pooled states projected to (B, dim), float32."""
        if states.ndim != 3 or states.shape[-1] != self.config.text_dim:
            raise ValueError(f"text states must be (batch, length, {self.config.text_dim}); got {tuple(states.shape)}")
        pooled = pool_text(states, mask)  # (B, text_dim)
        return self.text_proj(pooled.to(self.text_proj.weight.dtype)).float()  # (B, dim)

    def positions(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The spatial position table for a (F', H', W') patch grid, (H'*W', dim) float32 (the learned
        table, resized bilinearly if the grid differs from ``base_grid``), and the time RoPE tables
        (F'*H'*W', head_dim/2) for the frame-major token order."""
        c = self.config
        f, h, w = grid
        table = self.pos_embedding.float()  # (h0*w0, dim)
        if (h, w) != c.base_grid:
            image = table.T.reshape(1, c.dim, *c.base_grid)  # (1, dim, h0, w0)
            table = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False).reshape(c.dim, h * w).T
        cos, sin = rope_1d(f, c.head_dim, ROPE_THETA, device=device)  # (F', D/2) each
        return table, cos.repeat_interleave(h * w, dim=0), sin.repeat_interleave(h * w, dim=0)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise process' target for every pixel.

        Args:
            x: (B, in_channels, F, H, W) noisy video; F, H, W multiples of ``patch_size``.
            timestep: (B,) or () the DDPM step the video is at (0..999).
            context: the text: (B, L, text_dim) states (zero at padding; ``mask`` (B, L) if
                given says which are real), or (B, dim) from :meth:`prepare_context`.

        Returns:
            (B, in_channels, F, H, W), in x's dtype.
        """
        c = self.config
        b, _, f, h, w = x.shape
        pt, ph, pw = c.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"video size (F, H, W) = {(f, h, w)} must be a multiple of the patch size {c.patch_size}")
        grid = (f // pt, h // ph, w // pw)
        text = context if context.ndim == 2 else self.prepare_context(context, mask)  # (B, dim)
        if text.shape != (b, c.dim):
            raise ValueError(f"text conditioning must be ({b}, {c.dim}); got {tuple(text.shape)}")

        patches = rearrange(x, "b c (f pf) (h ph) (w pw) -> b (f h w) (c pf ph pw)", pf=pt, ph=ph, pw=pw)  # (B, S, C*pt*ph*pw)
        weight = self.patch_embedding.weight.flatten(1).float()  # (dim, C*pt*ph*pw)
        tokens = F.linear(patches.float(), weight, self.patch_embedding.bias.float())  # (B, S, dim) float32 stream
        table, cos, sin = self.positions(grid, x.device)
        tokens = (tokens.unflatten(1, (grid[0], grid[1] * grid[2])) + table).flatten(1, 2)  # every frame group: the same table

        timestep = timestep.expand(b) if timestep.ndim == 0 else timestep  # (B,)
        t_emb = timestep_embedding(timestep, c.freq_dim)  # (B, freq_dim)
        cond = self.time_embedding(t_emb.to(self.time_embedding[0].weight.dtype)).float() + text  # (B, dim)

        for block in self.blocks:
            tokens = block(tokens, cond, cos, sin)  # (B, S, dim) float32

        shift, scale = self.head_modulation(cond.to(self.head_modulation[1].weight.dtype)).float()[:, None].chunk(2, dim=-1)
        out = self.head(modulate(layer_norm_fp32(tokens, c.eps), shift, scale).to(self.head.weight.dtype))  # (B, S, C*pt*ph*pw)
        out = rearrange(out, "b (f h w) (c pf ph pw) -> b c (f pf) (h ph) (w pw)", f=grid[0], h=grid[1], w=grid[2], pf=pt, ph=ph, pw=pw)
        return out.to(x.dtype)

    @torch.no_grad()
    def init_weights(self) -> None:
        """DiT's initialisation, for training from scratch (not called by ``__init__``): Xavier-uniform
        linears with zero biases, N(0, 0.02) text embeddings and time MLP, the 2D sin-cos table
        (:func:`sincos_2d`) as the learned position table's start, and zeros for every modulation
        and the output layer (each block starts as the identity: adaLN-zero).

        The position table starts from sin-cos values, as DiT's fixed table, not from N(0, 0.02):
        at 0.02 a patch token (its 384 pixel values through the patch embedding) is two orders of
        magnitude larger than its position, and the first shapes-pixel run ended with rows whose
        cosine similarity was 0.98 even between opposite corners: its blocks could hardly tell
        where a patch was, and every 8x8 patch decided alone whether it belonged to the object."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(self.config.dim, -1))
        nn.init.zeros_(self.patch_embedding.bias)
        self.pos_embedding.copy_(sincos_2d(*self.config.base_grid, self.config.dim))
        for p in (self.text_encoder.token_embedding.weight, self.text_encoder.position_embedding.weight):
            nn.init.normal_(p, std=0.02)
        for m in self.time_embedding:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        for m in (*(b.modulation[1] for b in self.blocks), self.head_modulation[1], self.head):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

