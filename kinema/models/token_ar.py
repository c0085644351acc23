"""Autoregressive video token model: kinema's AR-8B architecture.

A VQ tokenizer turns each (latent) frame into an (h, w) grid of codebook ids; this transformer
predicts them one at a time, in raster order within a frame and frame after frame, conditioned on
text states through cross-attention.

Layout: the tokens of a clip are flattened frame-major, raster order inside a frame. The model
input at position p is the embedding of token p-1 (a learned start-of-video vector at p = 0), so
the logits at p predict token p (teacher forcing with no shift outside the model). The (t, y, x)
of the *predicted* token rotates queries and keys (3D RoPE, absolute positions). Each layer is

- *spatial* ("S"): self-attention among the positions of the same frame, causal in raster order;
- *temporal* ("T"): self-attention over the positions of the ``window_frames - 1`` frames before
  plus the current frame up to the position itself (a sliding window of frames);

then cross-attention to the text (padding masked) and a SwiGLU feed-forward, all pre-norm RMSNorm
with grouped-query attention; a final RMSNorm and a linear head give ``vocab_size`` logits. The
residual stream, the norms and the logits are float32; the linears and attention run in the
weights' dtype (bf16; FP8 weights are handled by whoever swaps the linears).

Decoding: :meth:`TokenAR.step` takes one token at a time with an explicit :class:`TokenARCache`.
Temporal layers keep keys/values for ``window_frames`` frames in a ring buffer (the slot of the
frame that left the window is overwritten by the new frame's), spatial layers for the current frame
only, so the cache has the same size for any clip length. The cache equals the full computation
because a frame's keys/values at a layer depend only on frames already generated: stacked windows
make the receptive field ``num_temporal * (window_frames - 1)`` frames, but each cached entry was
computed with its own window when its frame was made. (For that same reason a no-cache reference
may *not* recompute only the last ``window_frames`` frames: :func:`generate` with
``use_cache=False`` recomputes from frame 0.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import KinemaError
from ..schema import POSITIVE, check_bools, check_ints, check_numbers, int_tuple
from .attention import attention
from .layers import RMSNorm, randn_embedding, randn_parameter
from .rope import apply_rope, rope_3d, wan_rope_dims

SPATIAL, TEMPORAL = "S", "T"  # the letters of TokenARConfig.layers
INIT_STD = 0.02  # std of the normal initialisation of embeddings and linears (GPT-2 / Llama practice)


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
def interleave_layers(num_spatial: int, num_temporal: int) -> str:
    """A layer pattern with the temporal layers spread evenly: layer j is temporal when
    ``floor((j+1) T / N)`` steps up (Bresenham), so it starts spatial and ends temporal.

    ``interleave_layers(24, 16)`` is ``"SSTST" * 8``; ``interleave_layers(6, 4)`` is ``"SSTST" * 2``.
    """
    n = num_spatial + num_temporal
    if num_spatial < 0 or num_temporal < 0 or n == 0:
        raise KinemaError(f"need at least one layer and no negative counts; got {num_spatial} spatial, {num_temporal} temporal")
    return "".join(TEMPORAL if (j + 1) * num_temporal // n > j * num_temporal // n else SPATIAL for j in range(n))


@dataclass(frozen=True)
class TokenARConfig:
    vocab_size: int  # codebook entries of the VQ tokenizer: token ids are 0 .. vocab_size-1
    grid: tuple[int, int]  # (h, w) tokens per frame, predicted in raster order
    dim: int  # model width
    num_heads: int  # query heads (head_dim = dim / num_heads)
    num_kv_heads: int  # key/value heads of grouped-query attention (divides num_heads)
    ffn_dim: int  # hidden width of the SwiGLU feed-forward
    layers: str  # one letter per layer, bottom to top: "S" spatial (own frame), "T" temporal (window of frames)
    text_dim: int = 4096  # width of the text encoder states
    window_frames: int = 16  # frames a temporal layer sees: the current one and window_frames - 1 before it
    eps: float = 1e-6  # eps of every RMSNorm
    rope_theta: float = 10000.0  # RoPE base
    qk_norm: bool = True  # per-head RMSNorm of queries and keys, in self- and cross-attention

    def __post_init__(self) -> None:
        owner = "token AR"
        object.__setattr__(self, "grid", int_tuple(owner, "grid (h, w)", self.grid, length=2))
        check_ints(owner, self, ("vocab_size", "dim", "num_heads", "num_kv_heads", "ffn_dim", "text_dim", "window_frames"))
        check_numbers(owner, self, {"eps": POSITIVE, "rope_theta": POSITIVE})
        check_bools(owner, self, ("qk_norm",))
        if not isinstance(self.layers, str) or not self.layers or set(self.layers) - {SPATIAL, TEMPORAL}:
            raise KinemaError(
                f"token AR layers must be a non-empty string of 'S' (spatial) and 'T' (temporal); got {self.layers!r}, "
                "e.g. interleave_layers(24, 16)"
            )
        if self.dim % self.num_heads:
            raise KinemaError(f"token AR dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise KinemaError(f"token AR num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise KinemaError(f"token AR head dim must be even for RoPE; got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_temporal(self) -> int:
        return self.layers.count(TEMPORAL)

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Rotated widths of (t, y, x) in a head: Wan's split (y = x = 2 * (head_dim // 6), t the rest)."""
        return wan_rope_dims(self.head_dim)

    @property
    def receptive_frames(self) -> int:
        """Frames that can influence a frame's logits (itself included): each temporal layer reaches
        ``window_frames - 1`` further back."""
        return self.num_temporal * (self.window_frames - 1) + 1


# Presets: one line each.
TOKEN_AR_PRESETS: dict[str, Callable[[], TokenARConfig]] = {
    # The published AR-8B: 40 layers (24 spatial + 16 temporal) of 4096, 32 heads x 128, GQA with 8
    # key/value heads (our choice), SwiGLU 9216 (our choice, 2.25 x dim), 16x16 tokens of a 16,384
    # codebook, 4096-d text, 16-frame window: 8,020,029,440 parameters.
    "ar-8b": lambda: TokenARConfig(vocab_size=16384, grid=(16, 16), dim=4096, num_heads=32, num_kv_heads=8, ffn_dim=9216, layers=interleave_layers(24, 16)),
    # Shapes world: 8x8 tokens of a 1,024 codebook, all-MiniLM-L6-v2 text (384-d), 10 layers of 256: 9,872,640 parameters.
    "ar-shapes": lambda: TokenARConfig(vocab_size=1024, grid=(8, 8), dim=256, num_heads=8, num_kv_heads=2, ffn_dim=768, layers=interleave_layers(6, 4), text_dim=384),
    # Tests: a non-square grid, GQA 4 -> 2, a 3-frame window.
    "ar-tiny": lambda: TokenARConfig(vocab_size=17, grid=(2, 3), dim=32, num_heads=4, num_kv_heads=2, ffn_dim=48, layers="STST", text_dim=8, window_frames=3),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------
class FP32RMSNorm(RMSNorm):
    """RMSNorm computed in float32 (or wider) whatever the weight's dtype; returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        return F.rms_norm(x.to(dtype), (self.dim,), self.weight.to(dtype), self.eps).to(x.dtype)  # (..., dim)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with bias-free linears."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden_dim, bias=False)
        self.up = nn.Linear(dim, hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, S, dim) -> (B, S, dim)."""
        return self.down(F.silu(self.gate(x)) * self.up(x))  # (B, S, dim)


class TokenARSelfAttention(nn.Module):
    """Grouped-query self-attention with per-head q/k RMSNorm and 3D RoPE; the mask is the caller's."""

    def __init__(self, c: TokenARConfig, kv_dim: int | None = None) -> None:
        """``kv_dim``: the width keys and values are projected from (default ``c.dim``)."""
        super().__init__()
        kv_dim = c.dim if kv_dim is None else kv_dim
        self.num_heads, self.num_kv_heads = c.num_heads, c.num_kv_heads
        self.q = nn.Linear(c.dim, c.num_heads * c.head_dim, bias=False)
        self.k = nn.Linear(kv_dim, c.num_kv_heads * c.head_dim, bias=False)
        self.v = nn.Linear(kv_dim, c.num_kv_heads * c.head_dim, bias=False)
        self.o = nn.Linear(c.num_heads * c.head_dim, c.dim, bias=False)
        self.norm_q = RMSNorm(c.head_dim, c.eps) if c.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(c.head_dim, c.eps) if c.qk_norm else nn.Identity()

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, S, dim), cos/sin (S, D/2) -> rotated q (B, H, S, D), rotated k and v (B, Hkv, S, D)."""
        q = self.norm_q(rearrange(self.q(x), "b s (h d) -> b h s d", h=self.num_heads))  # (B, H, S, D)
        k = self.norm_k(rearrange(self.k(x), "b s (h d) -> b h s d", h=self.num_kv_heads))  # (B, Hkv, S, D)
        v = rearrange(self.v(x), "b s (h d) -> b h s d", h=self.num_kv_heads)  # (B, Hkv, S, D)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, attended: torch.Tensor) -> torch.Tensor:
        """attended (B, H, S, D) -> (B, S, dim)."""
        return self.o(rearrange(attended, "b h s d -> b s (h d)"))  # (B, S, dim)


@dataclass(frozen=True)
class TokenARText:
    """The text of a batch projected once: per layer the cross-attention keys and values, and the
    padding mask. Made by :meth:`TokenAR.prepare_text`; bit-identical to projecting in ``forward``."""

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # one (k, v) per layer, each (B, Hkv, L, D)
    mask: torch.Tensor | None  # (B, 1, 1, L) bool, True for text tokens; None: no padding

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]


class TokenARCrossAttention(TokenARSelfAttention):
    """Grouped-query cross-attention to the text states (keys and values projected straight from
    text_dim, no RoPE): the self-attention's projections with another key/value width."""

    def __init__(self, c: TokenARConfig) -> None:
        super().__init__(c, kv_dim=c.text_dim)

    def project_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text (B, L, text_dim) -> keys and values, each (B, Hkv, L, D)."""
        k = self.norm_k(rearrange(self.k(text), "b l (h d) -> b h l d", h=self.num_kv_heads))  # (B, Hkv, L, D)
        v = rearrange(self.v(text), "b l (h d) -> b h l d", h=self.num_kv_heads)  # (B, Hkv, L, D)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, S, dim), kv from :meth:`project_text`, mask (B, 1, 1, L) bool or None -> (B, S, dim)."""
        q = self.norm_q(rearrange(self.q(x), "b s (h d) -> b h s d", h=self.num_heads))  # (B, H, S, D)
        return self.out(attention(q, *kv, mask=mask))  # (B, S, dim)


class TokenARBlock(nn.Module):
    """Pre-norm self-attention (spatial or temporal: the mask says which), cross-attention, SwiGLU."""

    def __init__(self, c: TokenARConfig, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.norm1 = FP32RMSNorm(c.dim, c.eps)
        self.self_attn = TokenARSelfAttention(c)
        self.norm2 = FP32RMSNorm(c.dim, c.eps)
        self.cross_attn = TokenARCrossAttention(c)
        self.norm3 = FP32RMSNorm(c.dim, c.eps)
        self.ffn = SwiGLU(c.dim, c.ffn_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        text: tuple,
        text_mask: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The whole sequence of whole frames.

        x (B, F*hw, dim) float32; cos/sin (F*hw, D/2); mask: (hw, hw) causal within a frame for a
        spatial layer (frames are folded into the batch), (F*hw, F*hw) window-causal for a temporal
        one; text (k, v) and text_mask from :class:`TokenARText`; dtype: the compute dtype (given,
        not read off a weight, which may be FP8) -> (B, F*hw, dim) float32.
        """
        q, k, v = self.self_attn.qkv(self.norm1(x).to(dtype), cos, sin)  # (B, H, S, D), (B, Hkv, S, D) x 2
        if self.kind == SPATIAL:
            frames = x.shape[1] // mask.shape[0]
            q, k, v = (rearrange(t, "b h (f s) d -> (b f) h s d", f=frames) for t in (q, k, v))  # (B*F, H or Hkv, hw, D)
            attended = rearrange(attention(q, k, v, mask), "(b f) h s d -> b h (f s) d", f=frames)  # (B, H, S, D)
        else:
            attended = attention(q, k, v, mask)  # (B, H, S, D)
        x = x + self.self_attn.out(attended)  # (B, S, dim) float32
        return self._cross_and_ffn(x, text, text_mask, dtype)  # (B, S, dim) float32

    def step(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot: int,
        keys: int,
        mask: torch.Tensor | None,
        text: tuple,
        text_mask: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """One position: x (B, 1, dim) float32, cos/sin (1, D/2); its key/value are written at
        ``slot`` of k_cache/v_cache (B, Hkv, slots, D) (in place), and it attends to the first
        ``keys`` slots where ``mask`` (1, 1, 1, keys) bool, or None (all) -> (B, 1, dim) float32."""
        q, k, v = self.self_attn.qkv(self.norm1(x).to(dtype), cos, sin)  # (B, H, 1, D), (B, Hkv, 1, D) x 2
        k_cache[:, :, slot] = k[:, :, 0]  # (B, Hkv, D)
        v_cache[:, :, slot] = v[:, :, 0]  # (B, Hkv, D)
        attended = attention(q, k_cache[:, :, :keys], v_cache[:, :, :keys], mask)  # (B, H, 1, D)
        x = x + self.self_attn.out(attended)  # (B, 1, dim) float32
        return self._cross_and_ffn(x, text, text_mask, dtype)  # (B, 1, dim) float32

    def _cross_and_ffn(self, x: torch.Tensor, text: tuple, text_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """x (B, S, dim) float32 -> (B, S, dim) float32."""
        x = x + self.cross_attn(self.norm2(x).to(dtype), text, text_mask)  # (B, S, dim) float32
        return x + self.ffn(self.norm3(x).to(dtype))  # (B, S, dim) float32


# ------------------------------------------------------------------------------------------------
# KV cache
# ------------------------------------------------------------------------------------------------
@dataclass
class TokenARCache:
    """Everything incremental decoding keeps between :meth:`TokenAR.step` calls (the modules keep
    nothing). ``step`` updates it in place: the K/V buffers, ``position`` and the frame tables.

    Made by :meth:`TokenAR.new_cache`. The K/V buffers are allocated once at their full size:
    a temporal layer's holds ``window_frames`` frames as a ring (frame t in slot ``t % window_frames``),
    a spatial layer's one frame; so the memory is the same for any clip length.
    """

    text: TokenARText  # cross-attention keys/values of the text, projected once
    k: list[torch.Tensor]  # per layer (B, Hkv, slots * hw, D); slots = window_frames (temporal) or 1 (spatial)
    v: list[torch.Tensor]  # per layer, like k
    position: int = 0  # tokens consumed so far: the position whose logits the next step returns
    frame_cos: torch.Tensor | None = field(default=None, repr=False)  # (hw, D/2) RoPE cos of the current frame
    frame_sin: torch.Tensor | None = field(default=None, repr=False)  # (hw, D/2) RoPE sin of the current frame
    # (hw, window*hw) bool: the ring's keys each position of the current frame sees
    frame_mask: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    def kv_bytes(self) -> int:
        """Bytes held by the self-attention K/V buffers."""
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def nbytes(self) -> int:
        """Bytes held by the whole cache (K/V buffers, text keys/values, frame tables)."""
        extra = [t for kv in self.text.kv for t in kv]
        extra += [t for t in (self.frame_cos, self.frame_sin, self.frame_mask) if t is not None]
        return self.kv_bytes() + sum(t.numel() * t.element_size() for t in extra)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
class TokenAR(nn.Module):
    """The autoregressive video token model: token ids and text states in, next-token logits out."""

    def __init__(self, config: TokenARConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tok_emb = randn_embedding(c.vocab_size, c.dim)  # init_weights redraws it for training
        self.start = randn_parameter(c.dim, divide_by=1 / INIT_STD)  # the input of position 0 (start of video)
        self.blocks = nn.ModuleList(TokenARBlock(c, kind) for kind in c.layers)
        self.norm_out = FP32RMSNorm(c.dim, c.eps)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)

    # Dotted prefixes of the modules whose weights stay float32 whatever the load dtype (read by
    # ``kinema.checkpoints.io.load_into``): the start vector and the norms of the float32 stream.
    _keep_in_fp32 = ("start", "blocks.*.norm1", "blocks.*.norm2", "blocks.*.norm3", "norm_out")

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the activations the linears and attention take (the load dtype): the token
        embedding's, since a linear's weight may be stored in another (FP8)."""
        return self.tok_emb.weight.dtype

    @property
    def stream_dtype(self) -> torch.dtype:
        """dtype of the residual stream and the logits: float32, or float64 for a float64 model."""
        return torch.promote_types(self.compute_dtype, torch.float32)

    def num_parameters(self) -> int:
        """Number of parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    # -- inputs ----------------------------------------------------------------------------------
    def prepare_text(self, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> TokenARText:
        """Project the text once, for reuse at every position.

        Args:
            text: (B, L, text_dim) text encoder states.
            text_mask: (B, L) bool (or 0/1), True for text tokens and False for padding; None: all
                L tokens are text. Every row needs at least one text token.
        """
        c = self.config
        if text.ndim != 3 or text.shape[-1] != c.text_dim:
            raise KinemaError(f"text must be (B, L, text_dim={c.text_dim}) states; got shape {tuple(text.shape)}")
        mask = None
        if text_mask is not None:
            if tuple(text_mask.shape) != tuple(text.shape[:2]):
                raise KinemaError(f"text_mask has shape {tuple(text_mask.shape)}; expected (B, L) = {tuple(text.shape[:2])}")
            mask = text_mask.to(device=text.device, dtype=torch.bool)
            if not bool(mask.any(dim=1).all()):
                raise KinemaError(
                    "text_mask has a row with no text token; give each sample at least one (e.g. the encoder's end token)"
                )
            mask = mask[:, None, None, :]  # (B, 1, 1, L)
        text = text.to(self.compute_dtype)  # (B, L, text_dim)
        return TokenARText(tuple(block.cross_attn.project_text(text) for block in self.blocks), mask)

    def _text(self, text: torch.Tensor | TokenARText, text_mask: torch.Tensor | None, batch: int) -> TokenARText:
        if isinstance(text, TokenARText):
            if text_mask is not None:
                raise KinemaError("pass text_mask to prepare_text, not with a TokenARText")
            prepared = text
        else:
            prepared = self.prepare_text(text, text_mask)
        if prepared.batch_size != batch:
            raise KinemaError(f"text has batch {prepared.batch_size}, tokens have {batch}; give one text per sample")
        return prepared

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        v = self.config.vocab_size
        if tokens.dtype not in (torch.int64, torch.int32):
            raise KinemaError(f"tokens must be integer codebook ids (torch.long); got {tokens.dtype}")
        if bool(((tokens < 0) | (tokens >= v)).any()):  # one host sync
            low, high = int(tokens.min()), int(tokens.max())
            raise KinemaError(f"token ids must be in [0, {v}) for this codebook; got values in [{low}, {high}]")

    # -- full computation ------------------------------------------------------------------------
    def forward(
        self, tokens: torch.Tensor, text: torch.Tensor | TokenARText, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of every position, all at once (training; the reference of :meth:`step`).

        Args:
            tokens: (B, N) long, the clip's token ids from its first token on, frame-major and raster
                order inside a frame; N is any count (a partial last frame is fine). Token p is the
                target of position p and the input of position p+1 (the last one is never read).
            text: (B, L, text_dim) text states, or a :class:`TokenARText` (then no text_mask here).
            text_mask: (B, L) True for text tokens, False for padding; None: no padding.

        Returns:
            (B, N, vocab_size) logits, float32 (float64 for a float64 model): position p predicts
            token p, so the training loss is ``cross_entropy(logits.flatten(0, 1), tokens.flatten())``.
        """
        c = self.config
        if tokens.ndim != 2 or tokens.shape[1] < 1:
            raise KinemaError(f"tokens must be (B, N) with N >= 1; got shape {tuple(tokens.shape)}")
        self._check_tokens(tokens)
        b, n = tokens.shape
        prepared = self._text(text, text_mask, b)
        hw, stream = c.tokens_per_frame, self.stream_dtype
        frames = math.ceil(n / hw)

        start = self.start.to(stream).expand(b, 1, c.dim)  # (B, 1, dim)
        x = torch.cat([start, self.tok_emb(tokens[:, :-1]).to(stream)], dim=1)  # (B, N, dim): input p = token p-1
        # Pad to whole frames: every mask is causal, so the padding (at the end) changes no real position.
        x = F.pad(x, (0, 0, 0, frames * hw - n))  # (B, F*hw, dim)
        cos, sin = rope_3d((frames, *c.grid), c.rope_dims, c.rope_theta, device=x.device)  # (F*hw, D/2) each
        masks = {SPATIAL: spatial_mask(c, x.device), TEMPORAL: temporal_mask(c, frames, x.device)}
        for block, kv in zip(self.blocks, prepared.kv):
            x = block(x, cos, sin, masks[block.kind], kv, prepared.mask, self.compute_dtype)  # (B, F*hw, dim)
        x = self.norm_out(x[:, :n]).to(self.compute_dtype)  # (B, N, dim)
        return self.head(x).to(stream)  # (B, N, vocab_size)

    # -- incremental decoding --------------------------------------------------------------------
    def new_cache(self, text: torch.Tensor | TokenARText, text_mask: torch.Tensor | None = None) -> TokenARCache:
        """An empty cache for one generation of a batch (the text is projected here, once).

        Args:
            text: (B, L, text_dim) text states, or a :class:`TokenARText`.
            text_mask: (B, L) True for text tokens; None: no padding.
        """
        c = self.config
        prepared = self._text(text, text_mask, text.batch_size if isinstance(text, TokenARText) else text.shape[0])
        b, device = prepared.batch_size, prepared.kv[0][0].device
        hw = c.tokens_per_frame
        shapes = [(b, c.num_kv_heads, (c.window_frames if kind == TEMPORAL else 1) * hw, c.head_dim) for kind in c.layers]
        k = [torch.zeros(s, dtype=self.compute_dtype, device=device) for s in shapes]  # per layer (B, Hkv, slots*hw, D)
        v = [torch.zeros(s, dtype=self.compute_dtype, device=device) for s in shapes]
        return TokenARCache(text=prepared, k=k, v=v)

    @torch.no_grad()
    def step(self, token: torch.Tensor | None, cache: TokenARCache) -> torch.Tensor:
        """Consume one token and return the logits of the next position; updates ``cache`` in place.

        Args:
            token: (B,) long, the token at ``cache.position - 1``; None at the start of the video
                (``cache.position == 0``), where the input is the start-of-video vector.
            cache: from :meth:`new_cache`, advanced by every call.

        Returns:
            (B, vocab_size) logits of position ``cache.position`` (before the call), float32
            (float64 for a float64 model); equal to ``forward``'s at that position.
        """
        c = self.config
        p, b = cache.position, cache.batch_size
        if (token is None) != (p == 0):
            raise KinemaError(
                "step takes token=None exactly at the start of the video (cache.position 0) and the previous token after it; "
                f"got {'None' if token is None else 'a token'} at position {p}"
            )
        hw, w, stream, dtype = c.tokens_per_frame, c.window_frames, self.stream_dtype, self.compute_dtype
        frame, i = divmod(p, hw)
        if i == 0:
            self._start_frame(cache, frame)
        if token is None:
            x = self.start.to(stream).expand(b, 1, c.dim)  # (B, 1, dim)
        else:
            if tuple(token.shape) != (b,):
                raise KinemaError(f"token must be (B,) = ({b},) ids; got shape {tuple(token.shape)}")
            self._check_tokens(token)
            x = self.tok_emb(token[:, None]).to(stream)  # (B, 1, dim)
        cos, sin = cache.frame_cos[i : i + 1], cache.frame_sin[i : i + 1]  # (1, D/2) each
        temporal = dict(slot=(frame % w) * hw + i, keys=w * hw, mask=cache.frame_mask[i].view(1, 1, 1, -1))  # ring of frames
        spatial = dict(slot=i, keys=i + 1, mask=None)  # this frame up to itself
        for block, k, v, kv in zip(self.blocks, cache.k, cache.v, cache.text.kv):
            where = temporal if block.kind == TEMPORAL else spatial
            x = block.step(x, cos, sin, k, v, text=kv, text_mask=cache.text.mask, dtype=dtype, **where)  # (B, 1, dim)
        cache.position = p + 1
        x = self.norm_out(x[:, 0]).to(dtype)  # (B, dim)
        return self.head(x).to(stream)  # (B, vocab_size)

    def _start_frame(self, cache: TokenARCache, frame: int) -> None:
        """Set the frame tables of ``frame``: its RoPE rows and which ring slots each position sees.
        The slot of frame ``frame - window_frames`` becomes this frame's: that frame leaves the window."""
        c = self.config
        hw, w, device = c.tokens_per_frame, c.window_frames, cache.k[0].device
        rope = rope_3d((1, *c.grid), c.rope_dims, c.rope_theta, device, start=(frame, 0, 0))  # 2 x (hw, D/2)
        cache.frame_cos, cache.frame_sin = rope
        slot = torch.arange(w * hw, device=device) // hw  # (w*hw,) ring slot of each key
        within = torch.arange(w * hw, device=device) % hw  # (w*hw,) position inside its frame
        query = torch.arange(hw, device=device)[:, None]  # (hw, 1) position of each query inside this frame
        # Slots of earlier frames are full once written (slot < frame: always, after the first window);
        # this frame's slot holds keys up to the query's own position (the rest is the old frame's).
        cache.frame_mask = torch.where(slot == frame % w, within <= query, slot < frame)  # (hw, w*hw)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialisation for training from scratch (not called by ``__init__``): N(0, 0.02)
        embeddings, start vector and linears, the output projections scaled by 1/sqrt(2 * layers)
        (GPT-2), unit norms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=INIT_STD)
            elif isinstance(m, RMSNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
        nn.init.normal_(self.start, std=INIT_STD)
        for block in self.blocks:
            for linear in (block.self_attn.o, block.cross_attn.o, block.ffn.down):
                nn.init.normal_(linear.weight, std=INIT_STD / math.sqrt(2 * len(self.blocks)))


def spatial_mask(config: TokenARConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """(hw, hw) bool: position q of a frame may attend to position k of the same frame iff k <= q."""
    hw = config.tokens_per_frame
    return torch.ones(hw, hw, dtype=torch.bool, device=device).tril()  # (hw, hw)


def temporal_mask(config: TokenARConfig, frames: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(F*hw, F*hw) bool: position q may attend to k iff k <= q and k's frame is one of the
    ``window_frames`` frames ending at q's."""
    hw = config.tokens_per_frame
    pos = torch.arange(frames * hw, device=device)  # (S,)
    q, k = pos[:, None], pos[None, :]  # (S, 1), (1, S)
    return (k <= q) & (k // hw > q // hw - config.window_frames)  # (S, S)
